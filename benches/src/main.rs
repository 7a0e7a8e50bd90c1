//! `replink-bench`: replink and HAProxy side by side, in one run, on the same loopback
//! topology and certificates. See BENCHMARKING.md for what each figure means.
//!
//! client → forward end (plaintext in, mTLS out) → reverse end (mTLS in) → upstream

mod corpus;
mod load;
mod measure;
mod tunnel;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tunnel::Kind;

#[derive(Parser)]
#[command(about = "replink vs HAProxy, side by side: CPU-s/GiB, PING latency, idle memory")]
struct Args {
    /// GiB per bulk measurement.
    #[arg(long, default_value_t = 2.0)]
    gib: f64,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Idle connections for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Small and fast: 0.25 GiB, 1 repetition, 200 idle connections.
    #[arg(long)]
    quick: bool,
    /// Where to write the machine-readable report.
    #[arg(long, default_value = "target/bench-report.json")]
    json: PathBuf,
}

/// Client threads opening connections in the new-connection measurement.
const CONN_THREADS: usize = 4;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

fn build_replink() -> Result<PathBuf> {
    let ok = replink_tests::nested_cargo(&["build", "--release", "-p", "replink"])
        .status()?
        .success();
    if !ok {
        bail!("building replink failed");
    }
    Ok(workspace().join("target/release/replink"))
}

fn sh_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Sum of `key=N` over the `closed` lines of a replink log, from line `skip` on.
fn log_sum(log: &str, key: &str) -> u64 {
    let re = regex::Regex::new(&format!(r"{key}=(\d+)")).ok();
    let strip = regex::Regex::new("\x1b\\[[0-9;]*m").ok();
    log.lines()
        .filter(|l| l.contains("closed"))
        .filter_map(|l| {
            let l = strip
                .as_ref()
                .map_or(l.to_string(), |s| s.replace_all(l, "").into_owned());
            re.as_ref()?.captures(&l)?[1].parse::<u64>().ok()
        })
        .sum()
}

#[derive(Default)]
struct Report {
    rows: Vec<(String, String, f64, String)>,
}

impl Report {
    fn add(&mut self, section: &str, tunnel: &str, value: f64, unit: &str) {
        println!("  {section:<33} {tunnel:<16} {value:>10.2} {unit}");
        self.rows
            .push((section.into(), tunnel.into(), value, unit.into()));
    }

    fn get(&self, section: &str, tunnel: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.0 == section && r.1 == tunnel)
            .map(|r| r.2)
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.gib = 0.25;
        args.repeat = 1;
        args.idle = 200;
    }
    let _ = rlimit::increase_nofile_limit(65_536);
    let replink = build_replink()?;
    let dir = tempfile::tempdir()?;
    let certs = tunnel::certs(dir.path())?;
    let sha = sh_out(
        "git",
        &[
            "-C",
            &workspace().display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let machine = format!(
        "{} cores, kernel {}",
        sh_out("nproc", &[]),
        sh_out("uname", &["-r"])
    );
    println!("replink-bench at {sha} on {machine}");
    let corpus = corpus::load(&workspace(), &replink)?;
    println!(
        "bulk payload: {} ({:.1} MiB, replayed)",
        corpus.source,
        corpus.bytes.len() as f64 / 1048576.0
    );
    let mut report = Report::default();
    let tunnels = [
        Kind::Replink { zstd: None },
        Kind::Replink { zstd: Some(1) },
        Kind::Replink { zstd: Some(-5) },
        Kind::Haproxy,
        Kind::Nginx,
    ];
    let total = (args.gib * (1u64 << 30) as f64) as u64;
    let gib = total as f64 / (1u64 << 30) as f64;

    println!(
        "\n== bulk: 1 stream, {gib:.2} GiB through each tunnel, median of {}",
        args.repeat
    );
    let sink = load::sink()?;
    let direct = measure::median(
        (0..args.repeat)
            .map(|_| load::bulk(sink, &corpus.bytes, total).map(|s| total as f64 / s / 1e6))
            .collect::<Result<Vec<_>>>()?,
    );
    report.add("bulk MB/s", "direct", direct, "MB/s");
    let pairs: Vec<_> = tunnels
        .iter()
        .map(|k| tunnel::start(*k, &certs, &replink, sink, &format!("bulk-{}", k.name())))
        .collect::<Result<_>>()?;
    let mut cpu: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut mbs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut stream: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut inproc: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for pair in &pairs {
        load::bulk(pair.listen, &corpus.bytes, total.min(256 << 20))?; // warm-up
    }
    for _ in 0..args.repeat {
        // Round-robin so that noise from the shared machine spreads over all tunnels.
        for (k, pair) in tunnels.iter().zip(&pairs) {
            let before = measure::cpu_of(&pair.pids())?;
            let secs = load::bulk(pair.listen, &corpus.bytes, total)?;
            std::thread::sleep(Duration::from_millis(200));
            let used = measure::cpu_of(&pair.pids())? - before;
            cpu.entry(k.name()).or_default().push(used / gib);
            mbs.entry(k.name())
                .or_default()
                .push(total as f64 / secs / 1e6);
            if let Kind::Replink { zstd: Some(level) } = k {
                // The zstd CLI on the same bytes, in the same rotation, counted the same way.
                let c = corpus::zstd_stream_cpu(&corpus.bytes, *level, total)?;
                stream.entry(k.name()).or_default().push(c);
                let c = corpus::zstd_inprocess_cpu(&corpus.bytes, *level, total)?;
                inproc.entry(k.name()).or_default().push(c);
            }
        }
    }
    for k in &tunnels {
        report.add(
            "bulk MB/s",
            &k.name(),
            measure::median(mbs[&k.name()].clone()),
            "MB/s",
        );
        report.add(
            "bulk CPU-s/GiB both ends",
            &k.name(),
            measure::median(cpu[&k.name()].clone()),
            "CPU-s/GiB",
        );
    }
    for (k, pair) in tunnels.iter().zip(&pairs) {
        if let Kind::Replink { zstd: Some(level) } = k {
            let log = pair.forward.log_text();
            let plain = log_sum(&log, "plain_to_tls");
            let wire = log_sum(&log, "wire_out");
            let (codec, zsize) = corpus::zstd_codec(&corpus.bytes, *level)?;
            report.add(
                "wire/plain (replink)",
                &k.name(),
                wire as f64 / plain.max(1) as f64,
                "ratio",
            );
            report.add(
                "wire/plain (zstd CLI)",
                &k.name(),
                zsize as f64 / corpus.bytes.len() as f64,
                "ratio",
            );
            report.add("zstd codec CPU-s/GiB", &k.name(), codec, "CPU-s/GiB");
            let ours = report
                .get("bulk CPU-s/GiB both ends", &k.name())
                .unwrap_or(f64::NAN);
            report.add(
                "CPU-s/GiB beyond codec",
                &k.name(),
                ours - codec,
                "CPU-s/GiB",
            );
            let lib = measure::median(inproc.get(&k.name()).cloned().unwrap_or_default());
            report.add("zstd in-process CPU-s/GiB", &k.name(), lib, "CPU-s/GiB");
            report.add(
                "CPU-s/GiB beyond in-process zstd",
                &k.name(),
                ours - lib,
                "CPU-s/GiB",
            );
            let piped = measure::median(stream.get(&k.name()).cloned().unwrap_or_default());
            report.add("zstd|zstd -d CPU-s/GiB", &k.name(), piped, "CPU-s/GiB");
            report.add(
                "CPU-s/GiB beyond zstd|zstd -d",
                &k.name(),
                ours - piped,
                "CPU-s/GiB",
            );
        }
    }
    drop(pairs);

    println!(
        "\n== redis PING through each tunnel (redis-benchmark, PING_MBULK), median of {}",
        args.repeat
    );
    let redis = load::redis()?;
    let n_ping = if args.quick { 10_000 } else { 50_000 };
    let pairs: Vec<_> = tunnels
        .iter()
        .map(|k| tunnel::start(*k, &certs, &replink, redis.1, &format!("ping-{}", k.name())))
        .collect::<Result<_>>()?;
    // (name, address, tunnel pids): direct first, then each tunnel; every repetition visits
    // all of them in turn so that noise from the shared machine spreads over all.
    let targets: Vec<(String, std::net::SocketAddr, Vec<u32>)> =
        std::iter::once(("direct".into(), redis.1, Vec::new()))
            .chain(
                tunnels
                    .iter()
                    .zip(&pairs)
                    .map(|(k, p)| (k.name(), p.listen, p.pids().to_vec())),
            )
            .collect();
    for (_, addr, _) in &targets {
        let _ = load::ping(*addr, 1, 2000)?; // warm-up
    }
    let mut runs: BTreeMap<String, Vec<load::PingFigures>> = BTreeMap::new();
    for _ in 0..args.repeat {
        for (name, addr, _) in &targets {
            runs.entry(name.clone())
                .or_default()
                .push(load::ping(*addr, 1, n_ping)?);
        }
    }
    let med = |name: &str, f: fn(&load::PingFigures) -> f64| {
        measure::median(
            runs.get(name)
                .map_or_else(Vec::new, |v| v.iter().map(f).collect()),
        )
    };
    let (d_p50, d_mean) = (med("direct", |f| f.p50_us), med("direct", |f| f.mean_us));
    for (name, addr, _) in &targets {
        report.add("PING c=1 p50", name, med(name, |f| f.p50_us), "µs");
        report.add("PING c=1 mean", name, med(name, |f| f.mean_us), "µs");
        report.add("PING c=1 p99", name, med(name, |f| f.p99_us), "µs");
        if name != "direct" {
            report.add(
                "PING c=1 p50 added",
                name,
                med(name, |f| f.p50_us) - d_p50,
                "µs",
            );
            report.add(
                "PING c=1 mean added",
                name,
                med(name, |f| f.mean_us) - d_mean,
                "µs",
            );
        }
        report.add(
            "PING c=50",
            name,
            load::ping(*addr, 50, n_ping * 2)?.rps,
            "req/s",
        );
    }

    println!(
        "\n== new connections: connect, PING, PONG, close, {} client threads (tunnels resume TLS sessions)",
        CONN_THREADS
    );
    let conn_secs = if args.quick { 2.0 } else { 5.0 };
    for (name, addr, pids) in &targets {
        let before = measure::cpu_of(pids)?;
        let made = load::connections(*addr, conn_secs, CONN_THREADS)?;
        std::thread::sleep(Duration::from_millis(200));
        let used = measure::cpu_of(pids)? - before;
        report.add("new conns/s", name, made as f64 / conn_secs, "conn/s");
        if !pids.is_empty() {
            report.add(
                "CPU-ms per new conn both ends",
                name,
                used * 1000.0 / made.max(1) as f64,
                "CPU-ms",
            );
        }
    }
    drop(pairs);
    drop(redis);

    println!(
        "\n== idle memory: {} connections held open after one small exchange each",
        args.idle
    );
    for k in &tunnels {
        let holder = load::holder()?;
        let pair = tunnel::start(
            *k,
            &certs,
            &replink,
            holder.addr,
            &format!("idle-{}", k.name()),
        )?;
        drop(load::open_idle(pair.listen, &holder, 20)?); // warm-up
        std::thread::sleep(Duration::from_secs(1));
        if let Ok(mut v) = holder.held.lock() {
            v.clear();
        }
        let before: Vec<u64> = pair
            .pids()
            .iter()
            .map(|p| measure::rss_kib(*p))
            .collect::<Result<_>>()?;
        let conns = load::open_idle(pair.listen, &holder, args.idle)?;
        // replink ends zstd frames and releases buffers after 0.5 s of quiet.
        std::thread::sleep(Duration::from_millis(2500));
        let after: Vec<u64> = pair
            .pids()
            .iter()
            .map(|p| measure::rss_kib(*p))
            .collect::<Result<_>>()?;
        let per = |i: usize| (after[i] as f64 - before[i] as f64) / args.idle as f64;
        report.add("idle KiB/conn forward", &k.name(), per(0), "KiB");
        report.add("idle KiB/conn reverse", &k.name(), per(1), "KiB");
        drop(conns);
    }

    println!("\n== ratios replink/peer (lower is better for CPU, latency, memory)");
    let mut json = String::new();
    let _ = write!(
        json,
        "{{\"git_sha\":\"{sha}\",\"machine\":\"{machine}\",\"payload\":\"{}\",\"rows\":[",
        corpus.source
    );
    for (i, (section, tunnel, value, unit)) in report.rows.iter().enumerate() {
        let _ = write!(json, "{}{{\"figure\":\"{section}\",\"tunnel\":\"{tunnel}\",\"value\":{value:.4},\"unit\":\"{unit}\"}}", if i > 0 { "," } else { "" });
    }
    json.push_str("]}\n");
    for section in [
        "bulk CPU-s/GiB both ends",
        "bulk MB/s",
        "PING c=1 p50 added",
        "PING c=1 mean added",
        "PING c=50",
        "new conns/s",
        "CPU-ms per new conn both ends",
        "idle KiB/conn forward",
        "idle KiB/conn reverse",
    ] {
        for peer in ["haproxy", "nginx"] {
            let Some(h) = report.get(section, peer) else {
                continue;
            };
            for k in &tunnels[..3] {
                if let Some(v) = report.get(section, &k.name()) {
                    println!("  {section:<33} {:<16} {:>6.2}x {peer}", k.name(), v / h);
                }
            }
        }
    }
    let json_path = workspace().join(&args.json);
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    println!("\nreport: {}", json_path.display());
    Ok(())
}
