//! `replink-bench`: replink and its peers (HAProxy, nginx stream, stunnel, socat) side by side,
//! in one run, on the same loopback topology and certificates. See BENCHMARKING.md for what each
//! figure means.
//!
//! client → forward end (plaintext in, mTLS out) → reverse end (mTLS in) → upstream

mod corpus;
mod load;
mod measure;
mod report;
mod tunnel;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use load::Direction;
use report::Report;
use tunnel::{Kind, Pair, PEERS};

#[derive(Parser)]
#[command(about = "replink vs HAProxy, nginx, stunnel and socat, side by side")]
struct Args {
    /// GiB per bulk measurement.
    #[arg(long, default_value_t = 1.0)]
    gib: f64,
    /// Repetitions of each bulk and PING measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Idle connections for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Also run replink at zstd level -5 (besides off, 1 and the fastest level).
    #[arg(long)]
    zstd_minus5: bool,
    /// Small and fast: 0.25 GiB, 1 repetition, 200 idle connections, shorter PING and
    /// connection runs.
    #[arg(long)]
    quick: bool,
    /// Which measurements to run (comma-separated): bulk, ping, conns, idle.
    #[arg(long, value_delimiter = ',', default_value = "bulk,ping,conns,idle")]
    only: Vec<String>,
    /// Where to write the machine-readable report.
    #[arg(long, default_value = "target/bench-report.json")]
    json: PathBuf,
}

/// The fastest zstd level worth running. replink accepts down to zstd's ZSTD_minCLevel
/// (-131072), but on pgbench -T WAL every level from about -1000 down stores the bytes as they
/// are (x1.000, `zstd -b --fast=N`); -100 is the fastest that still saves about a tenth.
const FASTEST_MEANINGFUL: i32 = -100;

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

/// Sum of `key=N` over the `closed` lines of a replink log.
fn log_sum(log: &str, key: &str) -> u64 {
    closed_lines(log)
        .iter()
        .filter_map(|l| field(l, key)?.parse::<u64>().ok())
        .sum()
}

/// The `closed` lines of a replink log, colours stripped.
fn closed_lines(log: &str) -> Vec<String> {
    let strip = regex::Regex::new("\x1b\\[[0-9;]*m").ok();
    log.lines()
        .filter(|l| l.contains("closed"))
        .map(|l| {
            strip
                .as_ref()
                .map_or(l.to_string(), |s| s.replace_all(l, "").into_owned())
        })
        .collect()
}

/// (resumed, all) handshakes a forward end's log reports, for the tunnels that say: replink's
/// `closed` lines carry `resumed=true|false`; stunnel (at `debug = info`) logs "previous
/// session reused" or "new session negotiated" per connection.
fn handshakes(k: Kind, log: &str) -> Option<(usize, usize)> {
    match k {
        Kind::Replink { .. } => {
            let lines = closed_lines(log);
            let resumed = lines
                .iter()
                .filter(|l| field(l, "resumed") == Some("true"))
                .count();
            Some((resumed, lines.len()))
        }
        Kind::Stunnel => {
            let resumed = log.matches("previous session reused").count();
            Some((
                resumed,
                resumed + log.matches("new session negotiated").count(),
            ))
        }
        _ => None,
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()
}

/// The last lines of both ends' logs that are not routine, for an error message.
fn log_tails(pair: &Pair) -> String {
    let tail = |text: String| {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains(" INFO ") && !l.contains("LOG5"))
            .collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    };
    format!(
        "forward log:\n{}\nreverse log:\n{}",
        tail(pair.forward.log_text()),
        tail(pair.reverse.log_text())
    )
}

/// The machine: cores, CPU model, memory, kernel.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1048576.0);
    format!(
        "{} cores ({model}), {mem_gib:.0} GiB, kernel {}",
        sh_out("nproc", &[]),
        sh_out("uname", &["-r"])
    )
}

/// Waits until a tunnel's ends have no child processes left (socat's per-connection children
/// exit up to its 0.5 s `-t` after the close, and their CPU time reaches the parent's
/// `cutime` only once reaped), at most 3 s.
fn settle(pair: &Pair) {
    std::thread::sleep(Duration::from_millis(200));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while pair
        .pids()
        .iter()
        .map(|p| measure::tree_size(*p))
        .sum::<usize>()
        > 2
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Everything the measurements share.
struct Bench {
    args: Args,
    replink: PathBuf,
    certs: tunnel::Certs,
    tunnels: Vec<Kind>,
    report: Report,
}

impl Bench {
    fn start(&self, k: Kind, upstream: SocketAddr, tag: &str, resume: bool) -> Result<Pair> {
        tunnel::start(
            k,
            &self.certs,
            &self.replink,
            upstream,
            &format!("{tag}-{}", k.name()),
            resume,
        )
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
    let ws = workspace().display().to_string();
    let mut sha = sh_out("git", &["-C", &ws, "rev-parse", "--short", "HEAD"]);
    if !sh_out(
        "git",
        &["-C", &ws, "status", "--porcelain", "--untracked-files=no"],
    )
    .is_empty()
    {
        sha.push_str("+uncommitted");
    }
    let machine = machine();
    let date = sh_out("date", &["-u", "+%Y-%m-%dT%H:%MZ"]);
    println!("replink-bench at {sha} on {machine}, {date}");
    let wal = corpus::load(&workspace(), &replink)?;
    let rdb = corpus::load_rdb(&workspace())?;
    println!(
        "bulk payload: {} ({:.1} MiB, replayed); RDB row: {} ({:.1} MiB)",
        wal.source,
        wal.bytes.len() as f64 / 1048576.0,
        rdb.source,
        rdb.bytes.len() as f64 / 1048576.0
    );
    let mut tunnels = vec![
        Kind::Replink { zstd: None },
        Kind::Replink { zstd: Some(1) },
        Kind::Replink {
            zstd: Some(FASTEST_MEANINGFUL),
        },
    ];
    if args.zstd_minus5 {
        tunnels.push(Kind::Replink { zstd: Some(-5) });
    }
    tunnels.extend(PEERS);
    let mut b = Bench {
        args,
        replink,
        certs,
        tunnels,
        report: Report::default(),
    };
    let only = b.args.only.clone();
    let run = |phase: &str| only.iter().any(|p| p == phase);
    let took =
        |start: std::time::Instant| println!("(took {:.0} s)", start.elapsed().as_secs_f64());
    let start = std::time::Instant::now();
    if run("bulk") {
        bulk(&mut b, &wal, &rdb)?;
        took(start);
    }
    let redis = load::redis()?;
    let start = std::time::Instant::now();
    if run("ping") {
        ping(&mut b, redis.1)?;
        took(start);
    }
    let start = std::time::Instant::now();
    if run("conns") {
        connections(&mut b, redis.1)?;
        took(start);
    }
    drop(redis);
    let start = std::time::Instant::now();
    if run("idle") {
        idle(&mut b)?;
        took(start);
    }
    targets(&mut b.report);

    b.report.print_tables(&b.tunnels);
    let json = b.report.json(&[
        ("git_sha", sha),
        ("machine", machine),
        ("date", date),
        ("payload", wal.source.clone()),
        ("rdb_payload", rdb.source.clone()),
        (
            "settings",
            format!(
                "gib={} repeat={} idle={} quick={}",
                b.args.gib, b.args.repeat, b.args.idle, b.args.quick
            ),
        ),
    ]);
    let json_path = workspace().join(&b.args.json);
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    println!("\nreport: {}", json_path.display());
    Ok(())
}

/// Bulk: 1 and 4 streams, up and down, through every tunnel; replink's bytes on the wire;
/// zstd's own cost next to replink's; then zstd-1 on the RDB.
fn bulk(b: &mut Bench, wal: &corpus::Corpus, rdb: &corpus::Corpus) -> Result<()> {
    let total = (b.args.gib * (1u64 << 30) as f64) as u64;
    let gib = total as f64 / (1u64 << 30) as f64;
    let modes = [
        (Direction::Up, 1),
        (Direction::Down, 1),
        (Direction::Up, 4),
        (Direction::Down, 4),
    ];
    println!(
        "\n== bulk: {gib:.2} GiB through each tunnel, 1 and 4 streams, up (client → upstream) and down, median of {}",
        b.args.repeat
    );
    let corpus = Arc::new(wal.bytes.clone());
    let sink = load::sink()?;
    let source = load::source(corpus.clone())?;
    for (dir, streams) in modes {
        let upstream = if dir == Direction::Up { sink } else { source };
        let direct = measure::median(
            (0..b.args.repeat)
                .map(|_| {
                    load::bulk_streams(upstream, &corpus, total, streams, dir)
                        .map(|s| total as f64 / s / 1e6)
                })
                .collect::<Result<Vec<_>>>()?,
        );
        let mode = format!("{} x{streams}", dir.name());
        b.report
            .add(&format!("bulk MB/s {mode}"), "direct", direct, "MB/s");
    }
    // One pair per tunnel and direction (each in front of its own upstream).
    let mut pairs = Vec::new();
    for k in &b.tunnels {
        let up = b.start(*k, sink, "bulk-up", true)?;
        let down = b.start(*k, source, "bulk-down", true)?;
        pairs.push((*k, up, down));
    }
    for (_, up, down) in &pairs {
        // Warm-up.
        load::bulk_streams(up.listen, &corpus, total.min(256 << 20), 1, Direction::Up)?;
        load::bulk_streams(
            down.listen,
            &corpus,
            total.min(256 << 20),
            1,
            Direction::Down,
        )?;
    }
    let mut cpu: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut mbs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut inproc: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..b.args.repeat {
        // Round-robin so that noise from the shared machine spreads over all tunnels.
        for (dir, streams) in modes {
            for (k, up, down) in &pairs {
                let pair = if dir == Direction::Up { up } else { down };
                let [fwd, rev] = pair.pids();
                let before = [measure::cpu_of(&[fwd])?, measure::cpu_of(&[rev])?];
                let secs = load::bulk_streams(pair.listen, &corpus, total, streams, dir)?;
                settle(pair);
                let used = [
                    measure::cpu_of(&[fwd])? - before[0],
                    measure::cpu_of(&[rev])? - before[1],
                ];
                let key = format!("{} x{streams}|{}", dir.name(), k.name());
                cpu.entry(key.clone())
                    .or_default()
                    .push((used[0] + used[1]) / gib);
                cpu.entry(format!("{key}|forward"))
                    .or_default()
                    .push(used[0] / gib);
                cpu.entry(format!("{key}|reverse"))
                    .or_default()
                    .push(used[1] / gib);
                mbs.entry(key).or_default().push(total as f64 / secs / 1e6);
            }
        }
        for k in &b.tunnels {
            if let Kind::Replink { zstd: Some(level) } = k {
                // zstd as replink drives it, in this process, in the same rotation.
                let c = corpus::zstd_inprocess_cpu(&corpus, *level, total)?;
                inproc.entry(k.name()).or_default().push(c);
            }
        }
    }
    for (dir, streams) in modes {
        let mode = format!("{} x{streams}", dir.name());
        for k in &b.tunnels {
            let key = format!("{mode}|{}", k.name());
            b.report.add(
                &format!("bulk MB/s {mode}"),
                &k.name(),
                measure::median(mbs[&key].clone()),
                "MB/s",
            );
            b.report.add(
                &format!("bulk CPU-s/GiB {mode}"),
                &k.name(),
                measure::median(cpu[&key].clone()),
                "CPU-s/GiB",
            );
        }
        for end in ["forward", "reverse"] {
            for k in &b.tunnels {
                b.report.add(
                    &format!("bulk CPU-s/GiB {mode}, {end} end"),
                    &k.name(),
                    measure::median(cpu[&format!("{mode}|{}|{end}", k.name())].clone()),
                    "CPU-s/GiB",
                );
            }
        }
    }
    println!("\n-- bytes on the wire (replink's closed lines) and zstd's own cost");
    for (k, up, down) in &pairs {
        let Kind::Replink { zstd } = k else {
            continue;
        };
        let up_log = up.forward.log_text();
        let down_log = down.forward.log_text();
        let name = k.name();
        // Up: what the forward end wrote to TLS over the plaintext it read; down: what it read
        // from TLS over the plaintext it wrote.
        let up_ratio =
            log_sum(&up_log, "wire_out") as f64 / log_sum(&up_log, "plain_to_tls").max(1) as f64;
        let down_ratio =
            log_sum(&down_log, "wire_in") as f64 / log_sum(&down_log, "tls_to_plain").max(1) as f64;
        b.report
            .add("wire/plain up (replink)", &name, up_ratio, "ratio");
        b.report
            .add("wire/plain down (replink)", &name, down_ratio, "ratio");
        let Some(level) = zstd else {
            continue;
        };
        let lib = measure::median(inproc.get(&name).cloned().unwrap_or_default());
        let ours = b
            .report
            .get("bulk CPU-s/GiB up x1", &name)
            .unwrap_or(f64::NAN);
        codec_rows(&mut b.report, "", &name, &corpus, *level, ours, lib)?;
    }
    drop(pairs);

    println!("\n-- zstd level 1 on the Redis RDB, 1 stream up");
    let rdb_corpus = Arc::new(rdb.bytes.clone());
    let k = Kind::Replink { zstd: Some(1) };
    let pair = b.start(k, sink, "bulk-rdb", true)?;
    load::bulk_streams(
        pair.listen,
        &rdb_corpus,
        total.min(256 << 20),
        1,
        Direction::Up,
    )?;
    let (mut cpu, mut mbs, mut lib) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..b.args.repeat {
        let before = measure::cpu_of(&pair.pids())?;
        let secs = load::bulk_streams(pair.listen, &rdb_corpus, total, 1, Direction::Up)?;
        settle(&pair);
        cpu.push((measure::cpu_of(&pair.pids())? - before) / gib);
        mbs.push(total as f64 / secs / 1e6);
        lib.push(corpus::zstd_inprocess_cpu(&rdb_corpus, 1, total)?);
    }
    let log = pair.forward.log_text();
    let name = k.name();
    let (cpu, lib) = (measure::median(cpu), measure::median(lib));
    b.report
        .add("RDB bulk MB/s up x1", &name, measure::median(mbs), "MB/s");
    b.report
        .add("RDB bulk CPU-s/GiB up x1", &name, cpu, "CPU-s/GiB");
    b.report.add(
        "RDB wire/plain (replink)",
        &name,
        log_sum(&log, "wire_out") as f64 / log_sum(&log, "plain_to_tls").max(1) as f64,
        "ratio",
    );
    codec_rows(&mut b.report, "RDB ", &name, &rdb_corpus, 1, cpu, lib)
}

/// zstd's own figures on `corpus` at `level` next to a replink tunnel's (`ours`: its CPU-s/GiB,
/// 1 stream up; `lib`: the in-process codec's, measured in the same rotation).
fn codec_rows(
    r: &mut Report,
    prefix: &str,
    name: &str,
    corpus: &[u8],
    level: i32,
    ours: f64,
    lib: f64,
) -> Result<()> {
    let (codec, zsize) = corpus::zstd_codec(corpus, level)?;
    let ratio = zsize as f64 / corpus.len() as f64;
    r.add(
        &format!("{prefix}wire/plain (zstd CLI)"),
        name,
        ratio,
        "ratio",
    );
    r.add(
        &format!("{prefix}zstd -b codec CPU-s/GiB"),
        name,
        codec,
        "CPU-s/GiB",
    );
    r.add(
        &format!("{prefix}zstd in-process CPU-s/GiB"),
        name,
        lib,
        "CPU-s/GiB",
    );
    r.add(
        &format!("{prefix}beyond zstd -b, up x1"),
        name,
        ours - codec,
        "CPU-s/GiB",
    );
    r.add(
        &format!("{prefix}beyond in-process zstd, up x1"),
        name,
        ours - lib,
        "CPU-s/GiB",
    );
    Ok(())
}

/// redis-benchmark PING at -c 1 (latency) and -c 50 (throughput), direct and through each
/// tunnel, every repetition visiting all in turn.
fn ping(b: &mut Bench, redis: SocketAddr) -> Result<()> {
    println!(
        "\n== redis PING through each tunnel (redis-benchmark, PING_MBULK), median of {}",
        b.args.repeat
    );
    let n_ping = if b.args.quick { 5_000 } else { 10_000 };
    let pairs: Vec<_> = b
        .tunnels
        .iter()
        .map(|k| b.start(*k, redis, "ping", true))
        .collect::<Result<_>>()?;
    let targets: Vec<(String, SocketAddr)> = std::iter::once(("direct".into(), redis))
        .chain(
            b.tunnels
                .iter()
                .zip(&pairs)
                .map(|(k, p)| (k.name(), p.listen)),
        )
        .collect();
    for (_, addr) in &targets {
        let _ = load::ping(*addr, 1, 2000)?; // warm-up
    }
    let mut runs: BTreeMap<String, Vec<load::PingFigures>> = BTreeMap::new();
    let mut c50: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..b.args.repeat {
        for (name, addr) in &targets {
            runs.entry(name.clone())
                .or_default()
                .push(load::ping(*addr, 1, n_ping)?);
            c50.entry(name.clone())
                .or_default()
                .push(load::ping(*addr, 50, n_ping * 2)?.rps);
        }
    }
    let med = |name: &str, f: fn(&load::PingFigures) -> f64| {
        measure::median(
            runs.get(name)
                .map_or_else(Vec::new, |v| v.iter().map(f).collect()),
        )
    };
    let (d_p50, d_mean) = (med("direct", |f| f.p50_us), med("direct", |f| f.mean_us));
    for (name, _) in &targets {
        b.report
            .add("PING c=1 p50", name, med(name, |f| f.p50_us), "µs");
        b.report
            .add("PING c=1 mean", name, med(name, |f| f.mean_us), "µs");
        b.report
            .add("PING c=1 p99", name, med(name, |f| f.p99_us), "µs");
        if name != "direct" {
            b.report.add(
                "PING c=1 p50 added",
                name,
                med(name, |f| f.p50_us) - d_p50,
                "µs",
            );
            b.report.add(
                "PING c=1 mean added",
                name,
                med(name, |f| f.mean_us) - d_mean,
                "µs",
            );
        }
        b.report.add(
            "PING c=50",
            name,
            measure::median(c50.get(name).cloned().unwrap_or_default()),
            "req/s",
        );
    }
    Ok(())
}

/// New connections per second (connect, PING, PONG, close) with and without TLS session
/// resumption on the forward end, and both ends' CPU per connection.
fn connections(b: &mut Bench, redis: SocketAddr) -> Result<()> {
    println!(
        "\n== new connections: connect, PING, PONG, close, {CONN_THREADS} client threads, with and without session resumption"
    );
    let secs = if b.args.quick { 1.5 } else { 3.0 };
    let made = load::connections(redis, secs, CONN_THREADS)?;
    b.report
        .add("new conns/s", "direct", made as f64 / secs, "conn/s");
    for k in b.tunnels.clone() {
        for resume in [false, true] {
            let (rate, cpu) = if resume {
                ("new conns/s resumed", "CPU-ms/conn resumed")
            } else {
                ("new conns/s full handshake", "CPU-ms/conn full handshake")
            };
            if resume && !k.can_resume() {
                let why = "forks a process with a fresh TLS context per connection";
                b.report.na(rate, &k.name(), "conn/s", why);
                b.report.na(cpu, &k.name(), "CPU-ms", why);
                continue;
            }
            let pair = b.start(
                k,
                redis,
                if resume { "conn-resume" } else { "conn-full" },
                resume,
            )?;
            let _ = load::connections(pair.listen, 0.3, 1)?; // warm-up (and a first ticket)
            settle(&pair);
            let before_log = handshakes(k, &pair.forward.log_text());
            let before = measure::cpu_of(&pair.pids())?;
            let made = load::connections(pair.listen, secs, CONN_THREADS)?;
            settle(&pair);
            let used = measure::cpu_of(&pair.pids())? - before;
            b.report.add(rate, &k.name(), made as f64 / secs, "conn/s");
            b.report
                .add(cpu, &k.name(), used * 1000.0 / made.max(1) as f64, "CPU-ms");
            // replink and stunnel say per connection whether they resumed: check the claim.
            if let (Some((r0, n0)), Some((r1, n1))) =
                (before_log, handshakes(k, &pair.forward.log_text()))
            {
                let (resumed, total) = (r1 - r0, n1 - n0);
                let figure = if resume {
                    "resumed share (log), resumed"
                } else {
                    "resumed share (log), full"
                };
                b.report.add(
                    figure,
                    &k.name(),
                    resumed as f64 / total.max(1) as f64,
                    "ratio",
                );
                if !resume && resumed > 0 {
                    bail!(
                        "{}: {resumed} connections resumed with resumption off",
                        k.name()
                    );
                }
            }
        }
    }
    Ok(())
}

/// Memory per idle connection: each end's PSS (with its children's) grown over N connections
/// held open after one small exchange each.
fn idle(b: &mut Bench) -> Result<()> {
    println!(
        "\n== idle memory: {} connections held open after one small exchange each (PSS of each end, children included)",
        b.args.idle
    );
    for k in b.tunnels.clone() {
        let holder = load::holder()?;
        let pair = b.start(k, holder.addr, "idle", true)?;
        drop(load::open_idle(pair.listen, &holder, 20)?); // warm-up
        std::thread::sleep(Duration::from_secs(1));
        settle(&pair);
        if let Ok(mut v) = holder.held.lock() {
            v.clear();
        }
        let before: Vec<u64> = pair
            .pids()
            .iter()
            .map(|p| measure::pss_tree_kib(*p))
            .collect::<Result<_>>()?;
        let conns = load::open_idle(pair.listen, &holder, b.args.idle)
            .with_context(|| format!("{}: {}", k.name(), log_tails(&pair)))?;
        // replink ends zstd frames and releases buffers after 0.5 s of quiet.
        std::thread::sleep(Duration::from_millis(2500));
        let after: Vec<u64> = pair
            .pids()
            .iter()
            .map(|p| measure::pss_tree_kib(*p))
            .collect::<Result<_>>()?;
        let per = |i: usize| (after[i] as f64 - before[i] as f64) / b.args.idle as f64;
        b.report
            .add("idle KiB/conn forward", &k.name(), per(0), "KiB");
        b.report
            .add("idle KiB/conn reverse", &k.name(), per(1), "KiB");
        b.report
            .add("idle KiB/conn both ends", &k.name(), per(0) + per(1), "KiB");
        drop(conns);
        if let Ok(mut v) = holder.held.lock() {
            v.clear();
        };
    }
    Ok(())
}

/// The issue's targets, against this run's figures.
fn targets(r: &mut Report) {
    let off = "replink-off";
    let z1 = "replink-zstd1";
    r.target(
        "compression off: CPU-s/GiB both ends, 1 stream up",
        "bulk CPU-s/GiB up x1",
        off,
        1.45,
        true,
    );
    r.target(
        "compression off: CPU-s/GiB both ends, 1 stream down",
        "bulk CPU-s/GiB down x1",
        off,
        1.45,
        true,
    );
    // zstd's own cost measured as replink's is (CPU time, same rotation); `zstd -b` reports
    // wall-clock speed, which a busy machine inflates, so it is a row but not the target.
    r.target(
        "zstd-1, pgbench -T WAL: CPU-s/GiB beyond zstd (in-process)",
        "beyond in-process zstd, up x1",
        z1,
        0.6,
        true,
    );
    for t in [off, z1] {
        r.target(
            "PING c=1 p50 added, µs",
            "PING c=1 p50 added",
            t,
            45.0,
            true,
        );
    }
    for t in [off, z1] {
        r.target(
            "full mTLS handshakes/s (no resumption)",
            "new conns/s full handshake",
            t,
            2000.0,
            false,
        );
        r.target(
            "new connections/s with resumption",
            "new conns/s resumed",
            t,
            4000.0,
            false,
        );
    }
    r.target(
        "idle KiB per compressed connection, both ends",
        "idle KiB/conn both ends",
        z1,
        256.0,
        true,
    );
}
