//! `replink demo`: the whole tunnel on loopback in one command.
//!
//! Mints a throwaway PKI, starts a reverse and a forward end in this process (their worker
//! threads are named `reverse-N` / `forward-N`, so their CPU time can be read apart from the
//! load generator's), pushes a WAL-like sample through with compression on and then off,
//! verifies SHA-256 end to end, and prints throughput, CPU time and bytes on the wire.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use replink::config::{ForwardTarget, Route, SessionResumption, Target, TlsFiles};
use replink::{Compression, IoDriver, ListenerConfig, Mode, ProxyHandle};
use replink_pki::ThrowawayPki;
use sha2::{Digest, Sha256};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// MiB to push through in each pass.
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    /// Worker threads per end.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// zstd level for the compressed pass.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    zstd_level: i32,
    /// io driver: auto, io-uring, epoll.
    #[arg(long, default_value = "auto")]
    io_driver: IoDriver,
    /// Kernel TLS on both ends: auto, on, off (see `reverse-proxy --help`).
    #[arg(long, default_value = "auto", value_name = "auto|on|off")]
    ktls: replink::Ktls,
    /// Ask for fresh TLS 1.3 keys after this many bytes under one key (e.g. 64MiB).
    #[arg(long, value_parser = replink::config::parse_size, value_name = "SIZE")]
    rekey_after: Option<u64>,
    /// Write the sample (one pass worth) to this file and exit, e.g. to measure `zstd -b1` on it.
    #[arg(long)]
    write_sample: Option<std::path::PathBuf>,
}

const SNI: &str = "demo.repl.test";

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.write_sample {
        let sample = crate::sample::wal_like((args.size_mib << 20) as usize);
        std::fs::write(path, sample).with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let pki = ThrowawayPki::mint(dir.path(), &[SNI]).context("minting the throwaway PKI")?;
    println!(
        "replink demo: throwaway CA and certificates in {}",
        dir.path().display()
    );
    let sample = crate::sample::wal_like(32 << 20);
    let total = args.size_mib << 20;
    println!(
        "sample: {} MiB of synthetic Postgres-WAL-like records per pass (zstd level {} on, then off)\n",
        args.size_mib, args.zstd_level
    );
    println!(
        "{:<12} {:>10} {:>12} {:>14} {:>12} {:>8} {:>8}  sha256",
        "pass", "MB/s", "CPU-s/GiB", "wire bytes", "ratio", "driver", "records"
    );
    for compression in [
        Compression::Zstd {
            level: args.zstd_level,
        },
        Compression::Off,
    ] {
        let tag = match compression {
            Compression::Zstd { .. } => "zstd",
            Compression::Off => "off",
        };
        let pass = one_pass(&args, &pki, compression, &sample, total)
            .with_context(|| format!("pass with compression {tag}"))?;
        println!(
            "{:<12} {:>10.0} {:>12.2} {:>14} {:>11.2}x {:>8} {:>8}  {}",
            format!("compression {tag}"),
            total as f64 / pass.seconds / 1e6,
            pass.cpu_seconds / (total as f64 / (1u64 << 30) as f64),
            pass.wire_bytes,
            total as f64 / pass.wire_bytes.max(1) as f64,
            pass.driver,
            if pass.ktls { "kernel" } else { "rustls" },
            if pass.checksum_ok {
                "match"
            } else {
                "MISMATCH"
            },
        );
        if !pass.checksum_ok {
            bail!("checksum mismatch: the tunnel corrupted data");
        }
    }
    println!("\nCPU-s/GiB counts both ends' worker threads (user+system), not the load generator.");
    Ok(())
}

struct Pass {
    seconds: f64,
    cpu_seconds: f64,
    wire_bytes: u64,
    checksum_ok: bool,
    driver: String,
    /// The connection's records were sealed and opened by kernel TLS.
    ktls: bool,
}

fn config(
    args: &DemoArgs,
    pki: &ThrowawayPki,
    mode: Mode,
    compression: Compression,
    client: bool,
) -> ListenerConfig {
    let (cert, key) = if client {
        (pki.client_cert.clone(), pki.client_key.clone())
    } else {
        (pki.server_cert.clone(), pki.server_key.clone())
    };
    ListenerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        mode,
        tls: TlsFiles {
            cert,
            key,
            ca: pki.ca_pem.clone(),
            tls12: false,
            ciphers: Vec::new(),
            crls: Vec::new(),
            allow_expired_crl: false,
        },
        compression,
        workers: args.workers,
        io_driver: args.io_driver,
        ktls: args.ktls,
        bpf_classifier: replink::BpfClassifier::Off,
        connect_timeout: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: None,
        keepalive: true,
        max_connections: 100,
        rekey_after: args.rekey_after,
    }
}

fn one_pass(
    args: &DemoArgs,
    pki: &ThrowawayPki,
    compression: Compression,
    sample: &[u8],
    total: u64,
) -> anyhow::Result<Pass> {
    let sink = TcpListener::bind("127.0.0.1:0")?;
    let sink_addr = sink.local_addr()?;
    let sink_thread = std::thread::spawn(move || -> std::io::Result<(u64, [u8; 32])> {
        let (mut s, _) = sink.accept()?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = s.read(&mut buf)?;
            if k == 0 {
                break;
            }
            hasher.update(&buf[..k]);
            n += k as u64;
        }
        Ok((n, hasher.finalize().into()))
    });
    let route: Route = format!("{SNI}={sink_addr}")
        .parse()
        .map_err(anyhow::Error::msg)?;
    let reverse = replink::start(
        config(
            args,
            pki,
            Mode::Reverse {
                routes: vec![route],
            },
            compression,
            false,
        ),
        "reverse",
    )?;
    let target: Target = reverse
        .local_addr
        .to_string()
        .parse()
        .map_err(anyhow::Error::msg)?;
    let forward = replink::start(
        config(
            args,
            pki,
            Mode::Forward(ForwardTarget {
                target,
                sni: SNI.into(),
                server_name: None,
                resumption: SessionResumption::On,
            }),
            compression,
            true,
        ),
        "forward",
    )?;
    let cpu_before = worker_cpu_seconds()?;
    let start = Instant::now();
    let mut conn = TcpStream::connect(forward.local_addr)?;
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    while sent < total {
        let k = (total - sent).min(sample.len() as u64) as usize;
        conn.write_all(&sample[..k])?;
        hasher.update(&sample[..k]);
        sent += k as u64;
    }
    conn.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)?;
    let (received, digest) = sink_thread
        .join()
        .map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
    let seconds = start.elapsed().as_secs_f64();
    wait_closed(&forward)?;
    let cpu_seconds = worker_cpu_seconds()? - cpu_before;
    let sent_digest: [u8; 32] = hasher.finalize().into();
    Ok(Pass {
        seconds,
        cpu_seconds,
        wire_bytes: forward.stats.wire_out.load(Ordering::Relaxed),
        checksum_ok: received == total && digest == sent_digest,
        driver: forward.driver.to_string(),
        ktls: forward.stats.ktls.load(Ordering::Relaxed) > 0,
    })
}

/// The byte counters are published when the connection closes, a moment after the data is in.
fn wait_closed(h: &ProxyHandle) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.stats.established.load(Ordering::Relaxed) == 0
        || h.stats.active.load(Ordering::Relaxed) > 0
    {
        if Instant::now() > deadline {
            bail!("the forward end did not close the connection");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// user+system seconds of this process's replink worker threads (and io_uring workers).
fn worker_cpu_seconds() -> anyhow::Result<f64> {
    // /proc reports times in USER_HZ ticks, which is 100 on Linux.
    const TICKS: f64 = 100.0;
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let path = entry?.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        // io_uring's own workers (iou-wrk-*) run on behalf of the proxy threads: count them.
        if !(comm.starts_with("reverse-")
            || comm.starts_with("forward-")
            || comm.starts_with("iou-wrk"))
        {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat"))?;
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = fields.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
        total += utime + stime;
    }
    Ok(total as f64 / TICKS)
}
