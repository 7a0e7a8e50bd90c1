//! The `replink` command: flags in, a running listener (or the demo) out.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod demo;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use replink::config::{parse_duration, ForwardTarget, Route, Target, TlsFiles};
use replink::{BpfClassifier, Compression, IoDriver, Ktls, ListenerConfig, Mode};

#[derive(Parser)]
#[command(
    name = "replink",
    version,
    about = "mTLS + zstd tunnel for database replication links"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// mTLS in, routed by SNI to plaintext targets (the primary's side).
    ReverseProxy {
        /// Address to listen on for mTLS connections.
        #[arg(long)]
        listen: SocketAddr,
        /// SNI=HOST:PORT[:postgres|:passthrough]; repeat for more routes. SNI may be a wildcard
        /// (*.repl.example.com), matched after exact names. `:postgres` marks a PostgreSQL
        /// upstream that libpq may also reach directly (SSLRequest, or direct TLS with ALPN
        /// `postgresql`), with its own client certificate. `:passthrough` marks a TLS upstream:
        /// the client's TLS goes to it unterminated (no client certificate at replink).
        #[arg(long = "route", required = true)]
        routes: Vec<Route>,
        /// Experimental: the in-kernel SNI classifier, checked against the userspace parse
        /// (routing stays in userspace). off; auto (load it when possible: root or CAP_BPF, a
        /// build with clang; else one warning); on (refuse to start without it). Logs
        /// `bpf_classifier=loaded|unavailable`, and `bpf=` on each connection's line. Not used
        /// on a listener with `:postgres` routes.
        #[arg(long, default_value = "off", value_name = "off|auto|on")]
        bpf_classifier: BpfClassifier,
        #[command(flatten)]
        common: Common,
    },
    /// Plaintext in, mTLS out to a reverse proxy (the replica's side).
    ForwardProxy {
        /// Address to listen on for plaintext connections (keep it on loopback).
        #[arg(long)]
        listen: SocketAddr,
        /// The remote replink reverse proxy, HOST:PORT.
        #[arg(long)]
        target: Target,
        /// SNI to send: selects the route at the reverse end.
        #[arg(long)]
        sni: String,
        /// Name the server certificate must carry, when it differs from --sni.
        #[arg(long)]
        server_name: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Throwaway PKI, both ends on loopback, a WAL-like sample pushed through, figures printed.
    Demo(demo::DemoArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressionFlag {
    Zstd,
    Off,
}

#[derive(Args)]
struct Common {
    /// Certificate PEM (leaf first; may also hold the key).
    #[arg(long)]
    cert: PathBuf,
    /// Private key PEM (mode 0600); defaults to the --cert file.
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA bundle PEM that the peer's certificate must chain to.
    #[arg(long)]
    ca: PathBuf,
    /// Certificate revocation list (PEM, possibly several, or DER) signed by a CA of --ca;
    /// repeatable. Peers whose certificate it lists are refused with `certificate_revoked`.
    #[arg(long = "crl", value_name = "FILE")]
    crls: Vec<PathBuf>,
    /// Use a --crl whose nextUpdate has passed (default: refuse to start, and refuse that CA's
    /// peers once its CRL expires while running).
    #[arg(long, requires = "crls")]
    allow_expired_crl: bool,
    /// Stream compression, negotiated with the peer through ALPN.
    #[arg(long, value_enum, default_value = "zstd")]
    compression: CompressionFlag,
    /// zstd level: 1 (default) .. 22, or negative for the fastest levels.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    zstd_level: i32,
    /// Worker threads, each with its own listener and io ring (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// io driver: auto (io_uring, else epoll), io-uring, epoll.
    #[arg(long, default_value = "auto")]
    io_driver: IoDriver,
    /// Kernel TLS: auto (probe and report `ktls=available|unavailable` at start-up), on (also
    /// refuse to start without it), off (no probe). The offload itself is not enabled yet:
    /// records are sealed and opened in userspace in every mode.
    #[arg(long, default_value = "auto", value_name = "auto|on|off")]
    ktls: Ktls,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Close a connection idle this long in both directions (default: never; replication
    /// links idle for hours).
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// Turn off TCP keepalive on both legs.
    #[arg(long)]
    no_keepalive: bool,
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Also allow TLS 1.2 (default: TLS 1.3 only).
    #[arg(long)]
    tls12: bool,
}

impl Common {
    fn into_config(self, listen: SocketAddr, mode: Mode) -> ListenerConfig {
        let workers = self
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        ListenerConfig {
            listen,
            mode,
            tls: TlsFiles {
                key: self.key.unwrap_or_else(|| self.cert.clone()),
                cert: self.cert,
                ca: self.ca,
                tls12: self.tls12,
                crls: self.crls,
                allow_expired_crl: self.allow_expired_crl,
            },
            compression: match self.compression {
                CompressionFlag::Off => Compression::Off,
                CompressionFlag::Zstd => Compression::Zstd {
                    level: self.zstd_level,
                },
            },
            workers,
            io_driver: self.io_driver,
            ktls: self.ktls,
            bpf_classifier: BpfClassifier::Off,
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            keepalive: !self.no_keepalive,
            max_connections: self.max_connections,
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REPLINK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn serve(config: ListenerConfig, kind: &str) -> anyhow::Result<()> {
    let workers = config.workers;
    let compression = config.compression;
    let handle = replink::start(config, kind).with_context(|| format!("{kind} did not start"))?;
    tracing::info!(
        addr = %handle.local_addr,
        workers,
        driver = %handle.driver,
        compression = ?compression,
        "listening"
    );
    handle.wait();
    Ok(())
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo prints its own report; per-connection lines would only interleave with it.
    init_logging(if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    });
    match cli.command {
        Command::ReverseProxy {
            listen,
            routes,
            bpf_classifier,
            common,
        } => serve(
            ListenerConfig {
                bpf_classifier,
                ..common.into_config(listen, Mode::Reverse { routes })
            },
            "reverse",
        ),
        Command::ForwardProxy {
            listen,
            target,
            sni,
            server_name,
            common,
        } => serve(
            common.into_config(
                listen,
                Mode::Forward(ForwardTarget {
                    target,
                    sni,
                    server_name,
                }),
            ),
            "forward",
        ),
        Command::Demo(args) => demo::run(args),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("replink: {e:#}");
        std::process::exit(1);
    }
}
