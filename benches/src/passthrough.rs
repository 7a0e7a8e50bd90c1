//! `replink-bench-passthrough`: a `:passthrough` route through the BPF redirect
//! (`--bpf-classifier on`, `passthrough=kernel`) and through userspace copies (the same route
//! without the classifier), side by side in one run; and the cost of a flood of connections
//! with unknown SNI to an established bulk stream, with the classifier on and off. See
//! BENCHMARKING.md ("Passthrough and the classifier").
//!
//! client → reverse end (`:passthrough`) → upstream (a sink for bulk, an echo for latency).
//! The client sends a ClientHello from the corpus, then raw bytes: passthrough never looks.

#[path = "measure.rs"]
#[allow(dead_code)]
mod measure;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use replink_tests::{Pki, ReplinkProcess};

#[derive(Parser)]
#[command(about = "passthrough: BPF redirect vs userspace; unknown-SNI flood vs a bulk stream")]
struct Args {
    /// GiB per bulk measurement.
    #[arg(long, default_value_t = 1.0)]
    gib: f64,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Round trips per latency measurement.
    #[arg(long, default_value_t = 20_000)]
    pings: usize,
    /// Threads opening unknown-SNI connections in the flood.
    #[arg(long, default_value_t = 2)]
    flood_threads: usize,
    /// Unknown-SNI connections per second the flood aims at (all threads together; paced, so
    /// both modes face the same load).
    #[arg(long, default_value_t = 2000.0)]
    flood_rate: f64,
}

const SNI: &str = "pg.repl.test";

fn corpus(name: &str) -> Result<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../ebpf/corpus/{name}.bin"));
    std::fs::read(&path).with_context(|| path.display().to_string())
}

/// Busy jiffies of the whole machine (user+nice+system+irq+softirq), in seconds: the kernel
/// path's redirect work runs in softirq and kworkers, which no process's CPU time shows.
fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("/proc/stat is empty")?;
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum::<u64>();
    Ok(busy as f64 / 100.0)
}

/// An upstream: each connection is drained (bulk) or echoed (latency).
fn upstream(echo: bool) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                // The "server's answer" a TLS client waits for before it sends more.
                if conn.write_all(b"S").is_err() {
                    return;
                }
                let mut buf = vec![0; 256 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) if echo => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                    }
                }
                let _ = conn.shutdown(Shutdown::Write);
            });
        }
    });
    Ok(addr)
}

fn reverse(pki: &Pki, upstream: SocketAddr, bpf: bool) -> ReplinkProcess {
    let mut args: Vec<String> = ["reverse-proxy", "--listen", "127.0.0.1:0", "--route"]
        .map(String::from)
        .to_vec();
    args.push(format!("{SNI}={upstream}:passthrough"));
    args.extend(pki.server_args());
    if bpf {
        args.extend(["--bpf-classifier", "on"].map(String::from));
    }
    let p = ReplinkProcess::spawn(&args);
    if bpf {
        p.wait_count("bpf_classifier=loaded", 1);
    }
    p
}

/// A passthrough connection past its ClientHello, as a TLS client would be: hello sent, the
/// server's first byte awaited before anything else is sent.
fn open(addr: SocketAddr, hello: &[u8]) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.write_all(hello)?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer)?;
    Ok(s)
}

/// Sends `total` bytes client → upstream (sink); returns seconds.
fn bulk(addr: SocketAddr, hello: &[u8], total: u64) -> Result<f64> {
    let mut s = open(addr, hello)?;
    let chunk = vec![0x5a; 256 * 1024];
    let start = Instant::now();
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    Ok(start.elapsed().as_secs_f64())
}

/// Round trips of 16 bytes through an echo upstream: (p50, p99) in microseconds.
fn ping(addr: SocketAddr, hello: &[u8], n: usize) -> Result<(f64, f64)> {
    let mut s = open(addr, hello)?;
    let msg = [0x42u8; 16];
    let mut back = [0u8; 16];
    let mut lat = Vec::with_capacity(n);
    for i in 0..n + 500 {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        if i >= 500 {
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((lat[lat.len() / 2], lat[lat.len() * 99 / 100]))
}

/// Unknown-SNI connections from `threads` threads until `stop`; returns how many completed.
fn flood(
    addr: SocketAddr,
    hello: Vec<u8>,
    threads: usize,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> Arc<AtomicU64> {
    let done = Arc::new(AtomicU64::new(0));
    let every = Duration::from_secs_f64(threads as f64 / rate);
    for _ in 0..threads {
        let (hello, stop, done) = (hello.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                next += every;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let Ok(mut s) = TcpStream::connect(addr) else {
                    continue;
                };
                let _ = s.write_all(&hello);
                let mut buf = [0u8; 64];
                // The alert, then the close.
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    done
}

/// The last `closed`/`refused` lines of a replink, for an error message.
fn log_tail(p: &ReplinkProcess) -> String {
    let log = p.log();
    let tail: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("closed") || l.contains("refused"))
        .rev()
        .take(3)
        .collect();
    format!(
        "a bulk transfer failed; replink's last lines:\n{}",
        tail.join("\n")
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    let total = (args.gib * (1u64 << 30) as f64) as u64;
    let hello = corpus("routed-rustls-exact")?;
    let unknown = corpus("no-route-rustls")?;
    let pki = Pki::new();
    let sink = upstream(false)?;
    let echo = upstream(true)?;
    println!(
        "replink passthrough benchmark, git {}, {} GiB x {} (median), {} pings",
        std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        args.gib,
        args.repeat,
        args.pings
    );

    // Both paths side by side: each repetition runs kernel then userspace.
    let mut rows = Vec::new();
    for bpf in [true, false] {
        rows.push((bpf, reverse(&pki, sink, bpf), reverse(&pki, echo, bpf)));
    }
    let mut results: Vec<[Vec<f64>; 5]> = vec![Default::default(), Default::default()];
    for _ in 0..args.repeat {
        for (i, (_, sink_rev, echo_rev)) in rows.iter().enumerate() {
            let cpu0 = measure::cpu_seconds(sink_rev.pid())?;
            let busy0 = machine_busy_seconds()?;
            let secs = bulk(sink_rev.addr(), &hello, total).with_context(|| log_tail(sink_rev))?;
            let cpu = measure::cpu_seconds(sink_rev.pid())? - cpu0;
            let busy = machine_busy_seconds()? - busy0;
            let (p50, p99) = ping(echo_rev.addr(), &hello, args.pings)?;
            let r = &mut results[i];
            r[0].push(cpu / args.gib);
            r[1].push(busy / args.gib);
            r[2].push(args.gib * 1024.0 / secs);
            r[3].push(p50);
            r[4].push(p99);
        }
    }
    let med: Vec<[f64; 5]> = results
        .into_iter()
        .map(|r| r.map(measure::median))
        .collect();
    println!("\npassthrough, 1 connection client -> upstream, then 16-byte echo round trips");
    println!(
        "{:<26} {:>14} {:>16} {:>10} {:>9} {:>9}",
        "path", "replink CPU-s/GiB", "machine CPU-s/GiB", "MiB/s", "p50 us", "p99 us"
    );
    for (i, name) in ["kernel (--bpf-classifier on)", "userspace (classifier off)"]
        .iter()
        .enumerate()
    {
        let m = med[i];
        println!(
            "{name:<26} {:>14.3} {:>16.3} {:>10.0} {:>9.1} {:>9.1}",
            m[0], m[1], m[2], m[3], m[4]
        );
    }
    let ratio = |j: usize| med[1][j] / med[0][j];
    println!(
        "userspace / kernel: replink CPU {:.1}x, machine CPU {:.2}x, p50 {:.2}x (>1: kernel better)",
        ratio(0),
        ratio(1),
        ratio(3)
    );
    drop(rows);

    // Flood of unknown SNI against a bulk stream, classifier on and off.
    println!(
        "\nbulk stream ({} GiB) with and without a flood of unknown-SNI connections ({} threads, aiming at {}/s)",
        args.gib, args.flood_threads, args.flood_rate
    );
    for bpf in [true, false] {
        let rev = reverse(&pki, sink, bpf);
        let mut quiet = Vec::new();
        let mut flooded = Vec::new();
        let mut rates = Vec::new();
        for _ in 0..args.repeat {
            let secs = bulk(rev.addr(), &hello, total).with_context(|| log_tail(&rev))?;
            quiet.push(args.gib * 1024.0 / secs);
            let stop = Arc::new(AtomicBool::new(false));
            let done = flood(
                rev.addr(),
                unknown.clone(),
                args.flood_threads,
                args.flood_rate,
                stop.clone(),
            );
            std::thread::sleep(Duration::from_millis(300));
            let n0 = done.load(Ordering::Relaxed);
            let t0 = Instant::now();
            let secs = bulk(rev.addr(), &hello, total).with_context(|| {
                let log = rev.log();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                format!(
                    "bulk during the flood; replink log tail:\n{}",
                    tail.join("\n")
                )
            })?;
            let rate = (done.load(Ordering::Relaxed) - n0) as f64 / t0.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            flooded.push(args.gib * 1024.0 / secs);
            rates.push(rate);
            std::thread::sleep(Duration::from_millis(300));
        }
        let (q, f, r) = (
            measure::median(quiet),
            measure::median(flooded),
            measure::median(rates),
        );
        println!(
            "classifier {:<3}: quiet {q:>7.0} MiB/s, flooded {f:>7.0} MiB/s ({:+.1}%), flood {r:.0} conn/s refused ({})",
            if bpf { "on" } else { "off" },
            (f / q - 1.0) * 100.0,
            if bpf { "in the kernel's word" } else { "by the userspace parser" }
        );
    }
    Ok(())
}
