//! The `replink` command: flags in, a running listener (or the demo) out.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod demo;
mod sample;
mod status;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use replink::authz::AllowRule;
use replink::config::{
    parse_duration, Cipher, ForwardTarget, Route, SessionResumption, Target, TlsFiles,
};
use replink::config_file::{self, NamedListener, ServiceConfig};
use replink::{BpfClassifier, Compression, IoDriver, Ktls, ListenerConfig, Mode, ProxyHandle};

#[derive(Parser)]
#[command(
    name = "replink",
    version,
    about = "mTLS + zstd tunnel for database replication links"
)]
struct Cli {
    /// Log lines as text (for terminals) or JSON (one object per line, for collectors).
    /// The level comes from REPLINK_LOG (e.g. `debug`), else the config file's `log_level`,
    /// else `info`.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "REPLINK_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// mTLS in, routed by SNI to plaintext targets (the primary's side).
    ReverseProxy {
        /// Address to listen on for mTLS connections.
        #[arg(long)]
        listen: SocketAddr,
        /// SNI=HOST:PORT[,HOST:PORT…][:postgres|:passthrough]; repeat for more routes. Several
        /// targets are tried in order (primary, then backups); a host name is resolved again at
        /// each connect. SNI may be a wildcard
        /// (*.repl.example.com), matched after exact names. `:postgres` marks a PostgreSQL
        /// upstream that libpq may also reach directly (SSLRequest, or direct TLS with ALPN
        /// `postgresql`), with its own client certificate. `:passthrough` marks a TLS upstream:
        /// the client's TLS goes to it unterminated (no client certificate at replink).
        #[arg(long = "route", required = true)]
        routes: Vec<Route>,
        /// SNI=RULE: only clients whose certificate matches a rule may use the route SNI
        /// (exactly as given to --route); repeatable. RULE is cn:NAME, ou:NAME, dns:NAME,
        /// uri:URI (SPIFFE IDs) or spki-sha256:HEX. A route without rules takes any
        /// certificate the CA signed.
        #[arg(long = "allow", value_name = "SNI=RULE")]
        allows: Vec<RouteAllow>,
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
        /// The remote replink reverse proxy, HOST:PORT; several (comma-separated) are tried in
        /// order.
        #[arg(long)]
        target: Target,
        /// SNI to send: selects the route at the reverse end.
        #[arg(long)]
        sni: String,
        /// Name the server certificate must carry, when it differs from --sni.
        #[arg(long)]
        server_name: Option<String>,
        /// Resume TLS 1.3 sessions with the reverse end's tickets (on), or make every
        /// connection a full mTLS handshake (off).
        #[arg(long, default_value = "on", value_name = "on|off")]
        session_resumption: SessionResumption,
        #[command(flatten)]
        common: Common,
    },
    /// Throwaway PKI, both ends on loopback, a WAL-like sample pushed through, figures printed.
    Demo(demo::DemoArgs),
    /// Service mode: every listener of a config file (TOML; see README "Service mode").
    Run {
        /// The config file (default: $REPLINK_CONFIG).
        #[arg(long, env = "REPLINK_CONFIG")]
        config: PathBuf,
        /// Reload when the config file or a certificate, key, CA or CRL file it names
        /// changes (checked every 2 s), as SIGHUP does.
        #[arg(long)]
        watch: bool,
    },
    /// Asks a running replink's admin listener and prints a summary of its links.
    Status {
        /// The admin address (`--admin` / `admin =` of the running replink).
        #[arg(long, env = "REPLINK_ADMIN", default_value = "127.0.0.1:9601")]
        admin: SocketAddr,
    },
    /// Checks a config file (syntax, keys, values, certificates, keys, CRLs, routes) and
    /// prints the effective config; exit 1 with every error found.
    Check {
        /// The config file (default: $REPLINK_CONFIG).
        #[arg(long, env = "REPLINK_CONFIG")]
        config: PathBuf,
    },
}

/// `--allow SNI=RULE`.
#[derive(Clone)]
struct RouteAllow {
    sni: String,
    rule: AllowRule,
}

impl std::str::FromStr for RouteAllow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (sni, rule) = s
            .split_once('=')
            .ok_or_else(|| format!("--allow {s:?} is not SNI=RULE"))?;
        Ok(RouteAllow {
            sni: sni.to_owned(),
            rule: rule.parse()?,
        })
    }
}

/// Attaches each `--allow` to its route.
fn attach_allows(routes: &mut [Route], allows: Vec<RouteAllow>) -> anyhow::Result<()> {
    for a in allows {
        let route = routes
            .iter_mut()
            .find(|r| r.pattern.to_string() == a.sni)
            .with_context(|| format!("--allow {}={}: no --route for {}", a.sni, a.rule, a.sni))?;
        route.allow.0.push(a.rule);
    }
    Ok(())
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
    /// Kernel TLS: auto (use it where the kernel has it, with key updates: Linux 6.13 or
    /// later; start-up logs `ktls=available|unavailable`), on (refuse to start without it),
    /// off (records sealed and opened in userspace).
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
    /// Reload when a certificate, key, CA or CRL file changes (checked every 2 s), as SIGHUP
    /// does.
    #[arg(long)]
    watch: bool,
    /// Print this command line as a config file for `replink run --config` and exit.
    #[arg(long)]
    print_config: bool,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address (keep it on
    /// loopback, e.g. 127.0.0.1:9601; `replink status --admin ADDR` reads it).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// On SIGTERM or SIGINT: stop accepting, wait this long for connections to end, then
    /// close the rest.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
    /// AEADs to offer or accept, in order of preference (default: aes128-gcm,aes256-gcm,
    /// chacha20-poly1305). A client's order decides.
    #[arg(long, value_delimiter = ',', value_name = "AEAD,…")]
    ciphers: Vec<Cipher>,
    /// Ask for fresh TLS 1.3 keys in both directions after this many bytes sent under one key
    /// (e.g. 64GiB; default: only near the cipher's record limit, every 2^23 records).
    #[arg(long, value_parser = replink::config::parse_size, value_name = "SIZE")]
    rekey_after: Option<u64>,
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
                ciphers: self.ciphers,
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
            rekey_after: self.rekey_after,
        }
    }
}

fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REPLINK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
}

/// A quick-mode command line as a one-listener service: printed as a config file
/// (`--print-config`), or served.
fn quick(
    kind: &str,
    common: Common,
    listen: SocketAddr,
    mode: Mode,
    tune: impl FnOnce(&mut ListenerConfig),
) -> anyhow::Result<()> {
    let (print_config, watch) = (common.print_config, common.watch);
    let (shutdown_timeout, admin) = (common.shutdown_timeout, common.admin);
    let mut config = common.into_config(listen, mode);
    tune(&mut config);
    let service = ServiceConfig {
        log_level: None,
        shutdown_timeout,
        admin,
        listeners: vec![NamedListener {
            name: kind.to_owned(),
            config,
        }],
    };
    if print_config {
        print!("{}", config_file::render(&service));
        return Ok(());
    }
    serve(service.clone(), Source::Flags(service), watch)
}

/// Where a reload (SIGHUP) reads the configuration from.
#[derive(Clone)]
enum Source {
    File(PathBuf),
    /// The command line: the same settings, with certificates, keys, CAs and CRLs read again.
    Flags(ServiceConfig),
}

/// Reads the configuration again and applies it to every listener, after checking all of it.
fn reload(handles: &[(String, ProxyHandle)], source: &Source) -> anyhow::Result<()> {
    let service = match source {
        Source::File(path) => config_file::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        Source::Flags(service) => service.clone(),
    };
    let mut now: Vec<&str> = handles.iter().map(|(n, _)| n.as_str()).collect();
    let mut new: Vec<&str> = service.listeners.iter().map(|l| l.name.as_str()).collect();
    now.sort_unstable();
    new.sort_unstable();
    if now != new {
        anyhow::bail!(
            "listeners were added, removed or renamed ({} -> {}): that needs a restart",
            now.join(", "),
            new.join(", ")
        );
    }
    // Every listener's new state is built (and checked) before any is applied: all or nothing.
    let mut prepared = Vec::new();
    for l in service.listeners {
        let Some((_, handle)) = handles.iter().find(|(n, _)| *n == l.name) else {
            continue;
        };
        let next = handle
            .prepare_reload(l.config)
            .with_context(|| format!("listener {:?}", l.name))?;
        prepared.push((handle, next));
    }
    for (handle, next) in prepared {
        handle.apply(next);
    }
    Ok(())
}

/// Starts every listener, then the admin endpoint, then waits for a signal.
fn serve(service: ServiceConfig, source: Source, watch: bool) -> anyhow::Result<()> {
    if watch {
        watch_files(&source)?;
    }
    let mut handles = Vec::new();
    let mut watched = Vec::new();
    for l in &service.listeners {
        let workers = l.config.workers;
        let compression = l.config.compression;
        let handle = replink::start(l.config.clone(), &l.name)
            .with_context(|| format!("listener {:?} did not start", l.name))?;
        tracing::info!(
            addr = %handle.local_addr,
            listener = %l.name,
            workers,
            driver = %handle.driver,
            compression = ?compression,
            "listening"
        );
        watched.push(replink::admin::Watched::new(&l.name, &handle));
        handles.push((l.name.clone(), handle));
    }
    if let Some(addr) = service.admin {
        let bound = replink::admin::start(addr, watched).context("admin listener")?;
        tracing::info!(addr = %bound, "admin listening (/metrics, /healthz, /readyz)");
    }
    supervise(&handles, service.shutdown_timeout, &source)
}

/// The files a reload reads: the config file (service mode) and every listener's
/// certificate, key, CA bundle and CRLs.
fn watched_files(source: &Source) -> Vec<PathBuf> {
    let (mut files, service) = match source {
        Source::File(path) => (vec![path.clone()], config_file::load(path).ok()),
        Source::Flags(service) => (Vec::new(), Some(service.clone())),
    };
    for l in service.iter().flat_map(|s| &s.listeners) {
        let t = &l.config.tls;
        files.extend([t.cert.clone(), t.key.clone(), t.ca.clone()]);
        files.extend(t.crls.iter().cloned());
    }
    files.sort();
    files.dedup();
    files
}

/// `--watch`: a thread that polls the files' size and modification time every 2 s and, once
/// a change has held still for one more poll (a certificate and its key are written one
/// after the other), raises SIGHUP on this process: the reload path is the signal's.
fn watch_files(source: &Source) -> anyhow::Result<()> {
    use std::time::SystemTime;
    type Seen = Vec<(PathBuf, Option<(u64, SystemTime)>)>;
    let look = |files: &[PathBuf]| -> Seen {
        files
            .iter()
            .map(|f| {
                let meta = std::fs::metadata(f).ok();
                let stamp = meta.and_then(|m| Some((m.len(), m.modified().ok()?)));
                (f.clone(), stamp)
            })
            .collect()
    };
    let source = source.clone();
    let mut seen = look(&watched_files(&source));
    std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            let mut pending: Option<Seen> = None;
            loop {
                std::thread::sleep(Duration::from_secs(2));
                let now = look(&watched_files(&source));
                match pending.take() {
                    Some(previous) if previous == now => {
                        tracing::info!("watched files changed: reloading");
                        let _ = signal_hook::low_level::raise(signal_hook::consts::SIGHUP);
                        seen = now;
                    }
                    _ if now != seen => pending = Some(now),
                    _ => {}
                }
            }
        })
        .context("starting the file watcher")?;
    Ok(())
}

/// Tells systemd (`Type=notify`) how the service is doing, when it runs under it.
fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abstract_name) => UnixAddr::from_abstract_name(abstract_name.as_bytes()),
        None => UnixAddr::from_pathname(&path),
    };
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(state.as_bytes(), &addr?));
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = %path, state, "sd_notify failed");
    }
}

/// Runs until SIGTERM or SIGINT, then drains: the listeners stop accepting, connections get
/// `shutdown_timeout` to end, and whatever is left is closed when the process exits. A second
/// signal ends the wait at once.
fn supervise(
    handles: &[(String, ProxyHandle)],
    shutdown_timeout: Duration,
    source: &Source,
) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("installing signal handlers")?;
    sd_notify("READY=1");
    let mut got = None;
    for sig in signals.forever() {
        if sig == SIGHUP {
            sd_notify("RELOADING=1");
            match reload(handles, source) {
                Ok(()) => {
                    replink::admin::note_reload(true);
                    tracing::info!("reloaded")
                }
                Err(e) => {
                    replink::admin::note_reload(false);
                    tracing::warn!(error = %format!("{e:#}"), "reload failed; the previous configuration stays in use")
                }
            }
            sd_notify("READY=1");
            continue;
        }
        got = Some(sig);
        break;
    }
    let signal = match got {
        Some(SIGINT) => "SIGINT",
        _ => "SIGTERM",
    };
    sd_notify("STOPPING=1");
    let active = |hs: &[(String, ProxyHandle)]| hs.iter().map(|(_, h)| h.active()).sum::<u64>();
    tracing::info!(signal, active = active(handles), timeout = ?shutdown_timeout, "draining");
    for (_, h) in handles {
        h.stop_accepting();
    }
    let deadline = std::time::Instant::now() + shutdown_timeout;
    loop {
        let left = active(handles);
        if left == 0 {
            tracing::info!("drained");
            return Ok(());
        }
        if std::time::Instant::now() >= deadline || signals.pending().next().is_some() {
            tracing::warn!(
                active = left,
                "shutdown: closing the connections still open"
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `replink run`: every listener of the file.
fn run_service(path: &std::path::Path, log_format: LogFormat, watch: bool) -> anyhow::Result<()> {
    let service = config_file::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    init_logging(service.log_level.as_deref().unwrap_or("info"), log_format);
    serve(service, Source::File(path.to_owned()), watch).with_context(|| path.display().to_string())
}

/// `replink check`: the file, then what `start` would load for each listener.
fn check_service(path: &std::path::Path) -> anyhow::Result<()> {
    let service = match config_file::load(path) {
        Ok(s) => s,
        Err(e) => {
            let n = e.errors.len();
            anyhow::bail!(
                "{e}\n{n} error{} in {}",
                if n == 1 { "" } else { "s" },
                path.display()
            );
        }
    };
    let mut failed = Vec::new();
    for l in &service.listeners {
        if let Err(e) = replink::check(&l.config) {
            failed.push(format!("{}: listener {:?}: {e}", path.display(), l.name));
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("\n"));
    }
    println!(
        "# {}: OK, {} listener(s). Effective config:",
        path.display(),
        service.listeners.len()
    );
    print!("{}", config_file::render(&service));
    Ok(())
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo prints its own report; per-connection lines would only interleave with it.
    // `run` sets up logging once its file (and `log_level`) is read.
    match &cli.command {
        Command::Run { .. } => {}
        Command::Demo(_) | Command::Check { .. } => init_logging("warn", cli.log_format),
        _ => init_logging("info", cli.log_format),
    }
    match cli.command {
        Command::ReverseProxy {
            listen,
            mut routes,
            allows,
            bpf_classifier,
            common,
        } => {
            attach_allows(&mut routes, allows)?;
            quick("reverse", common, listen, Mode::Reverse { routes }, |c| {
                c.bpf_classifier = bpf_classifier
            })
        }
        Command::ForwardProxy {
            listen,
            target,
            sni,
            server_name,
            session_resumption,
            common,
        } => {
            let target = ForwardTarget {
                target,
                sni,
                server_name,
                resumption: session_resumption,
            };
            quick("forward", common, listen, Mode::Forward(target), |_| {})
        }
        Command::Demo(args) => demo::run(args),
        Command::Run { config, watch } => run_service(&config, cli.log_format, watch),
        Command::Check { config } => check_service(&config),
        Command::Status { admin } => status::print(admin),
    }
}

/// `REPLINK_GENERATE_DOCS=DIR`: writes shell completions (bash, zsh, fish) and the man page
/// for this command into DIR and exits (`scripts/release.sh` packs them).
fn generate_docs() -> Option<std::io::Result<()>> {
    use clap::CommandFactory;
    let dir = std::path::PathBuf::from(std::env::var_os("REPLINK_GENERATE_DOCS")?);
    let write = || {
        let mut cmd = Cli::command();
        let name = cmd.get_name().to_owned();
        std::fs::create_dir_all(&dir)?;
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            clap_complete::generate_to(shell, &mut cmd, &name, &dir)?;
        }
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.1")), page)
    };
    Some(write())
}

fn main() {
    if let Some(done) = generate_docs() {
        if let Err(e) = done {
            eprintln!("replink: generating docs: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run() {
        eprintln!("replink: {e:#}");
        std::process::exit(1);
    }
}
