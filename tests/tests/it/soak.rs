//! Soak (issue 7): four reverse+forward pairs at once — compression zstd/off × io driver
//! io_uring/epoll, 2 workers each end — under many concurrent connections for
//! `REPLINK_SOAK_SECONDS` (default 120; `scripts/soak.sh 4h` runs hours). Each connection has
//! log-uniform sizes (0 B .. 32 MiB each way), random write sizes, both directions at once and
//! half-closes in whichever order the sizes give; one in ten is reset (SO_LINGER 0) part way,
//! by the client or by the upstream. Clean connections must be byte-exact both ways (SHA-256);
//! a reset must reach the other end as a reset, never as a clean EOF. Every second the RSS and
//! fd count of each replink process is sampled: after a warm-up they must stay flat, and the
//! fds must return to their baseline once the load stops. Both ends' `closed` lines must
//! account for every connection (clean ones `reason=done` with exact byte counts).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};
use replink_tests::*;

const MIB: u64 = 1 << 20;
/// One connection in this many is reset by the client, one in this many by the upstream.
const RESET_ONE_IN: u32 = 20;
/// How long an upstream may still be receiving after the client finished (see
/// `Kind::Clean`): a stall, not slowness, past it.
const UPSTREAM_DRAIN: Duration = Duration::from_secs(120);
/// Largest write of a resetting client.
const MAX_CHUNK: usize = 1 << 20;

/// Seconds of load: `REPLINK_SOAK_SECONDS`, default 120 (the test then takes about 2.5 min).
fn soak_seconds() -> u64 {
    env_number("REPLINK_SOAK_SECONDS", 120).max(12)
}

/// Connections in flight per pair: `REPLINK_SOAK_CONNS`, default 24 (96 over the four pairs).
fn conns_per_pair() -> usize {
    env_number("REPLINK_SOAK_CONNS", 24).max(1) as usize
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
        Err(_) => default,
    }
}

/// 0 B .. 32 MiB - 1, log-uniform.
fn log_uniform_size(rng: &mut StdRng) -> u64 {
    let e: f64 = rng.gen_range(0.0..=25.0);
    e.exp2() as u64 - 1
}

/// How a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Clean,
    /// The client resets after this many payload bytes of its upload.
    ClientReset(u64),
    /// The upstream resets half way through its stream ([`flags::RESET`]).
    UpstreamReset,
}

/// What one pair's load saw, for the checks after it and the summary.
#[derive(Default)]
struct Tally {
    connections: u64,
    bytes: u64,
    clean: u64,
    client_resets: u64,
    upstream_resets: u64,
    /// Client resets whose connection never reached the upstream (reset before the tunnel
    /// was up): nothing to check there.
    resets_unseen_upstream: u64,
    mismatches: Vec<String>,
    failures: Vec<String>,
    /// Expected forward `closed` lines: (client address, Some((plain_to_tls, tls_to_plain)) for
    /// a clean connection, None for a reset) → count. Keyed by address because the forward
    /// end logs the client's port (ports are reused over a long run, hence counts).
    forward_lines: BTreeMap<(String, Option<(u64, u64)>), usize>,
    /// Expected reverse `reason=done` lines: (tls_to_plain, plain_to_tls) → count.
    reverse_done: BTreeMap<(u64, u64), usize>,
    /// Client resets, checked against the upstream's records once the load stops.
    /// (seed, bytes the client sent, client address).
    client_reset_seeds: Vec<(u64, u64, String)>,
    /// What each reset connection was, by client address: for a log line that does not fit.
    reset_notes: BTreeMap<String, Vec<String>>,
}

impl Tally {
    fn problem(&mut self, text: String) {
        // A report mentioning different bytes is corruption; anything else a failure.
        if text.contains("differ") || text.contains("sha256") {
            self.mismatches.push(text);
        } else {
            self.failures.push(text);
        }
    }
}

/// One pair of the matrix with its upstream and its tally.
struct Pair {
    name: String,
    server: StreamServer,
    reverse: ReplinkProcess,
    forward: ReplinkProcess,
    tally: Mutex<Tally>,
}

impl Pair {
    fn start(pki: &Pki, compression: &'static str, io_driver: &'static str) -> Pair {
        let server = StreamServer::start();
        let (reverse, forward) = start_pair_on(pki, server.addr(), compression, io_driver);
        Pair {
            name: format!("{compression}/{io_driver}"),
            server,
            reverse,
            forward,
            tally: Mutex::new(Tally::default()),
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs connections one after another until `until`.
    fn load(&self, worker: u64, until: Instant) {
        let mut rng = StdRng::seed_from_u64(run_seed() ^ worker.wrapping_mul(0x9e37_79b9));
        while Instant::now() < until {
            let (up, down) = (log_uniform_size(&mut rng), log_uniform_size(&mut rng));
            let t = Transfer::new(rng.gen(), up, down).compressible(rng.gen_bool(0.5));
            let kind = match rng.gen_range(0..RESET_ONE_IN * 10) {
                n if n < 10 => Kind::ClientReset(rng.gen_range(0..up.max(1))),
                n if n < 20 => Kind::UpstreamReset,
                _ => Kind::Clean,
            };
            self.connection(t, kind);
        }
    }

    fn connection(&self, t: Transfer, kind: Kind) {
        let addr = self.forward.addr();
        let who = |peer: Option<SocketAddr>| {
            format!(
                "[{}] seed {} (up {} B, down {} B, flags {}, {kind:?}, client {peer:?})",
                self.name, t.seed, t.up, t.down, t.flags
            )
        };
        match kind {
            Kind::Clean => {
                let r = run_transfer(addr, t);
                // The client is done once its upload is in its socket buffer; megabytes may
                // still be queued along the tunnel, at the pace of a loaded debug build.
                // verify_transfer then waits `patience()` more.
                let _ = self.server.record(t.seed, UPSTREAM_DRAIN);
                let verdict = verify_transfer(&self.server, &r);
                self.server.forget(t.seed);
                let mut tally = self.tally();
                tally.connections += 1;
                tally.clean += 1;
                tally.bytes += r.sent + r.received;
                let peer = r.local_addr.map(|a| a.to_string()).unwrap_or_default();
                let counts = (HEADER_LEN as u64 + t.up, t.down);
                *tally.forward_lines.entry((peer, Some(counts))).or_default() += 1;
                *tally.reverse_done.entry(counts).or_default() += 1;
                if let Err(e) = verdict {
                    tally.problem(e);
                }
            }
            Kind::UpstreamReset => {
                let t = t.reset();
                let r = run_transfer(addr, t);
                let server_side = self.server.record(t.seed, patience());
                self.server.forget(t.seed);
                let mut problems = Vec::new();
                if let Err(e) = ended_with_reset(&r.read_error, &r.write_error) {
                    problems.push(format!(
                        "client: {e} after {} of {} bytes, not a reset",
                        r.received, t.down
                    ));
                }
                if r.received > t.reset_at() {
                    problems.push(format!(
                        "client received {} bytes, the upstream sent {} before its reset",
                        r.received,
                        t.reset_at()
                    ));
                }
                if let Some(at) = r.first_mismatch {
                    problems.push(format!("client's received bytes differ from offset {at}"));
                }
                match server_side {
                    None => problems.push("the upstream never saw the connection".into()),
                    Some(rec) if rec.sent != t.reset_at() => problems.push(format!(
                        "the upstream sent {} bytes before its reset, not {}: {:?}",
                        rec.sent,
                        t.reset_at(),
                        rec.write_error
                    )),
                    Some(_) => {}
                }
                let mut tally = self.tally();
                tally.connections += 1;
                tally.upstream_resets += 1;
                tally.bytes += r.sent + r.received;
                let peer = r.local_addr.map(|a| a.to_string()).unwrap_or_default();
                *tally.forward_lines.entry((peer.clone(), None)).or_default() += 1;
                let note = format!(
                    "{}: client sent {}, received {}, {:?}",
                    who(r.local_addr),
                    r.sent,
                    r.received,
                    r.read_error
                );
                tally.reset_notes.entry(peer).or_default().push(note);
                if !problems.is_empty() {
                    tally.problem(format!("{}: {}", who(r.local_addr), problems.join("; ")));
                }
            }
            Kind::ClientReset(at) => {
                let r = client_reset(addr, t, at);
                let mut tally = self.tally();
                tally.connections += 1;
                tally.client_resets += 1;
                tally.bytes += r.sent + r.received;
                let peer = r.peer.map(|a| a.to_string()).unwrap_or_default();
                *tally.forward_lines.entry((peer.clone(), None)).or_default() += 1;
                tally
                    .client_reset_seeds
                    .push((t.seed, r.sent, peer.clone()));
                let note = format!(
                    "{}: client sent {}, received {}, then reset",
                    who(r.peer),
                    r.sent,
                    r.received
                );
                tally.reset_notes.entry(peer).or_default().push(note);
                if let Some(e) = r.problem {
                    tally.problem(format!("{}: {e}", who(r.peer)));
                }
            }
        }
    }

    /// After the load: each client reset that reached the upstream ended there with a reset
    /// (a read error), with a prefix of what the client sent, never with a clean EOF.
    fn check_client_resets(&self) {
        let seeds = std::mem::take(&mut self.tally().client_reset_seeds);
        // A reset that reached the upstream is filed there once the reverse end has passed
        // it on; one shared deadline for the stragglers (most are long filed).
        let deadline = Instant::now() + Duration::from_secs(3);
        for (seed, sent, peer) in seeds {
            let rec = self
                .server
                .record(seed, deadline.saturating_duration_since(Instant::now()));
            self.server.forget(seed);
            let mut tally = self.tally();
            let Some(rec) = rec else {
                tally.resets_unseen_upstream += 1;
                continue;
            };
            let who = format!("[{}] client reset, seed {seed}", self.name);
            let note = format!("{who}: the upstream saw {rec:?}");
            tally.reset_notes.entry(peer).or_default().push(note);
            if let Err(e) = ended_with_reset(&rec.read_error, &rec.write_error) {
                tally.problem(format!(
                    "{who}: upstream: {e} after {} bytes (client sent {sent}), not a reset",
                    rec.received
                ));
            }
            if rec.received > sent {
                tally.problem(format!(
                    "{who}: upstream received {} bytes, the client sent {sent}",
                    rec.received
                ));
            }
            if let Some(at) = rec.first_mismatch {
                tally.problem(format!(
                    "{who}: upstream's received bytes differ from offset {at}"
                ));
            }
        }
    }

    /// Both ends' connection lines against the tally: the problems found.
    fn check_logs(&self) -> Vec<String> {
        let tally = self.tally();
        let (connections, clean) = (tally.connections as usize, tally.clean as usize);
        // Every connection gets one line at the forward end (a reset early enough is
        // `refused`, before the tunnel is up); at the reverse end every clean one is `done`.
        assert_eventually!(
            self.forward.conn_lines().len() >= connections
                && self.reverse.count(r#"\bclosed\b.*reason="?done"#) >= clean,
            "[{}] want {connections} connection lines at the forward end and {clean} `done` at \
             the reverse end, have {} and {}",
            self.name,
            self.forward.conn_lines().len(),
            self.reverse.count(r#"\bclosed\b.*reason="?done"#)
        );
        let mut problems = Vec::new();
        let mut forward: BTreeMap<(String, Option<(u64, u64)>), usize> = BTreeMap::new();
        for l in self.forward.conn_lines() {
            let counts = (l.get("reason") == Some("done"))
                .then(|| (l.num("plain_to_tls"), l.num("tls_to_plain")));
            let peer = l.get("peer").unwrap_or("-").to_string();
            *forward.entry((peer, counts)).or_default() += 1;
        }
        if forward != tally.forward_lines {
            let peers: std::collections::BTreeSet<&String> = tally
                .forward_lines
                .iter()
                .chain(&forward)
                .filter(|(k, n)| tally.forward_lines.get(k) != forward.get(k) || **n == 0)
                .map(|((peer, _), _)| peer)
                .collect();
            let notes: Vec<&String> = peers
                .iter()
                .filter_map(|p| tally.reset_notes.get(*p))
                .flatten()
                .take(20)
                .collect();
            problems.push(format!(
                "[{}] forward lines (peer, done with (plain_to_tls, tls_to_plain) or not) \
                 differ from the clients': {}\nresets from those clients: {notes:#?}",
                self.name,
                map_diff(&tally.forward_lines, &forward)
            ));
        }
        let mut reverse_done: BTreeMap<(u64, u64), usize> = BTreeMap::new();
        let mut reverse_other = 0;
        for l in self.reverse.conn_lines() {
            if l.get("reason") == Some("done") {
                *reverse_done
                    .entry((l.num("tls_to_plain"), l.num("plain_to_tls")))
                    .or_default() += 1;
            } else {
                reverse_other += 1;
            }
        }
        if reverse_done != tally.reverse_done {
            problems.push(format!(
                "[{}] reverse `done` lines (tls_to_plain, plain_to_tls) differ from the clean \
                 connections: {}",
                self.name,
                map_diff(&tally.reverse_done, &reverse_done)
            ));
        }
        let resets = (tally.client_resets + tally.upstream_resets) as usize;
        if reverse_other > resets {
            problems.push(format!(
                "[{}] {reverse_other} failed lines at the reverse end for {resets} resets",
                self.name
            ));
        }
        for p in [&self.forward, &self.reverse] {
            // Anything at WARN or above must be a reset connection's line.
            let odd = p.lines_matching(r"panic|ERROR|WARN");
            let odd: Vec<&String> = odd
                .iter()
                .filter(|l| {
                    l.contains("panic")
                        || !LogLine::parse(l)
                            .is_some_and(|l| l.message == "closed" || l.message == "refused")
                })
                .collect();
            if !odd.is_empty() {
                problems.push(format!(
                    "`{}` logged:\n{}",
                    p.command_line(),
                    odd.iter()
                        .take(20)
                        .map(|l| l.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                ));
            }
        }
        problems
    }
}

/// What differs between two count maps (first few entries each way).
fn map_diff<K: Ord + std::fmt::Debug>(
    want: &BTreeMap<K, usize>,
    have: &BTreeMap<K, usize>,
) -> String {
    let missing: Vec<String> = want
        .iter()
        .filter(|(k, n)| have.get(k) != Some(n))
        .take(10)
        .map(|(k, n)| format!("{k:?}: want {n}, have {}", have.get(k).unwrap_or(&0)))
        .collect();
    let extra: Vec<String> = have
        .iter()
        .filter(|(k, _)| !want.contains_key(k))
        .take(10)
        .map(|(k, n)| format!("{k:?}: want 0, have {n}"))
        .collect();
    [missing, extra].concat().join("; ")
}

/// What a resetting client saw.
struct ClientResetReport {
    peer: Option<SocketAddr>,
    sent: u64,
    received: u64,
    problem: Option<String>,
}

/// Sends the header and `at` payload bytes of `t` in random-size writes (draining, and
/// checking, whatever has come back in between), then resets the connection (SO_LINGER 0).
fn client_reset(addr: SocketAddr, t: Transfer, at: u64) -> ClientResetReport {
    let mut report = ClientResetReport {
        peer: None,
        sent: 0,
        received: 0,
        problem: None,
    };
    let mut conn = match TcpStream::connect(addr) {
        Ok(c) => c,
        Err(e) => {
            report.problem = Some(format!("connect {addr}: {e}"));
            return report;
        }
    };
    report.peer = conn.local_addr().ok();
    let _ = conn.set_write_timeout(Some(patience()));
    let mut rng = StdRng::seed_from_u64(t.seed ^ 0xc11e);
    let mut up = Gen::new(t.seed, t.is_compressible());
    let mut down = Gen::new(t.seed ^ DOWN_SALT, t.is_compressible());
    let (mut buf, mut want) = (vec![0u8; MAX_CHUNK], vec![0u8; MAX_CHUNK]);
    let (mut sent, mut received, mut eof) = (0u64, 0u64, false);
    let mut run = || -> Result<(), String> {
        conn.write_all(&t.header())
            .map_err(|e| format!("header: {e}"))?;
        loop {
            // Drain what the upstream sent so far, without blocking.
            conn.set_nonblocking(true).map_err(|e| e.to_string())?;
            while !eof {
                match conn.read(&mut buf) {
                    // The upstream's whole stream, then its half-close: fine.
                    Ok(0) if received == t.down => eof = true,
                    Ok(0) => return Err(format!("clean EOF after {received} of {} bytes", t.down)),
                    Ok(n) => {
                        down.fill(&mut want[..n]);
                        if let Some(i) = want[..n].iter().zip(&buf[..n]).position(|(a, b)| a != b) {
                            return Err(format!(
                                "client's received bytes differ from offset {}",
                                received + i as u64
                            ));
                        }
                        received += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("read after {received} bytes: {e}")),
                }
            }
            conn.set_nonblocking(false).map_err(|e| e.to_string())?;
            if sent == at {
                return Ok(());
            }
            let n = (chunk_len(&mut rng, MAX_CHUNK) as u64).min(at - sent) as usize;
            up.fill(&mut buf[..n]);
            conn.write_all(&buf[..n])
                .map_err(|e| format!("write after {sent} bytes: {e}"))?;
            sent += n as u64;
        }
    };
    let result = run();
    report.problem = result.err();
    report.sent = sent;
    report.received = received;
    if let Err(e) = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO)) {
        report.problem = Some(format!("SO_LINGER 0: {e}"));
    }
    report
}

/// One replink process's RSS and fd count, once a second.
struct Series {
    name: String,
    pid: u32,
    /// (seconds since the load started, RSS KiB, open fds).
    samples: Vec<(f64, u64, u64)>,
    baseline_fds: u64,
}

fn fd_count(pid: u32) -> Option<u64> {
    ProcStats::try_fds(pid).map(|n| n as u64)
}

/// `values` cut into at most `buckets` runs, each shown by its maximum: a compact trend.
fn compact(values: &[u64], buckets: usize) -> String {
    let per = values.len().div_ceil(buckets).max(1);
    values
        .chunks(per)
        .map(|c| c.iter().max().copied().unwrap_or(0).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Flat after the warm-up: the maximum over the last third of the loaded window is at most
/// `margin(first)` above the maximum over the first third. Returns the problem, if any.
fn flat(what: &str, window: &[u64], margin: impl Fn(u64) -> u64) -> Option<String> {
    let third = window.len() / 3;
    let first = window[..third].iter().max().copied()?;
    let last = window[window.len() - third..].iter().max().copied()?;
    (last > first + margin(first)).then(|| {
        format!(
            "{what} grew: max {last} over the last third of the load, {first} over the first \
             (margin {})",
            margin(first)
        )
    })
}

#[test]
fn soak() {
    let seconds = soak_seconds();
    let conns = conns_per_pair();
    eprintln!(
        "soak: {seconds} s of load, {conns} connections in flight per pair, \
         REPLINK_TEST_SEED={}",
        run_seed()
    );
    let pki = Pki::new();
    let pairs: Vec<Arc<Pair>> = [
        ("zstd", "io-uring"),
        ("zstd", "epoll"),
        ("off", "io-uring"),
        ("off", "epoll"),
    ]
    .into_iter()
    .map(|(c, d)| Arc::new(Pair::start(&pki, c, d)))
    .collect();

    let mut series: Vec<Series> = pairs
        .iter()
        .flat_map(|p| {
            [("forward", &p.forward), ("reverse", &p.reverse)].map(|(end, proc_)| {
                let pid = proc_.pid();
                Series {
                    name: format!("{} {end}", p.name),
                    pid,
                    samples: Vec::new(),
                    baseline_fds: fd_count(pid).expect("/proc/PID/fd of a running replink"),
                }
            })
        })
        .collect();
    let sampling = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let sampler = {
        let pids: Vec<u32> = series.iter().map(|s| s.pid).collect();
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut out: Vec<Vec<(f64, u64, u64)>> = vec![Vec::new(); pids.len()];
            while sampling.load(Ordering::Relaxed) {
                let at = started.elapsed().as_secs_f64();
                for (pid, v) in pids.iter().zip(&mut out) {
                    if let (Some(rss), Some(fds)) = (ProcStats::try_rss_kib(*pid), fd_count(*pid)) {
                        v.push((at, rss, fds));
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            out
        })
    };

    let until = started + Duration::from_secs(seconds);
    let workers: Vec<_> = pairs
        .iter()
        .enumerate()
        .flat_map(|(i, pair)| {
            (0..conns).map(move |w| {
                let pair = pair.clone();
                let worker = ((i as u64) << 32) | w as u64;
                std::thread::spawn(move || pair.load(worker, until))
            })
        })
        .collect();
    for w in workers {
        w.join().expect("load thread");
    }
    let drained = started.elapsed();
    eprintln!("soak: load stopped at {drained:?} (the last connections finished)");

    let mut problems = Vec::new();
    for p in &pairs {
        problems.extend(p.check_logs());
    }
    for p in &pairs {
        p.check_client_resets();
    }
    // Every connection is closed: the fds go back to where they were before the load.
    for s in &series {
        assert_eventually!(
            fd_count(s.pid).is_some_and(|n| n <= s.baseline_fds),
            "{} (pid {}) has {:?} fds after the load, {} before it",
            s.name,
            s.pid,
            fd_count(s.pid),
            s.baseline_fds
        );
    }
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler thread");
    for (s, v) in series.iter_mut().zip(samples) {
        s.samples = v;
    }

    // Flat after the warm-up (a quarter of the load), over the loaded window only.
    let warm_up = seconds as f64 / 4.0;
    eprintln!("soak: RSS (MiB) and fds per process, max per bucket, load from 0 s to {seconds} s:");
    for s in &series {
        let rss: Vec<u64> = s.samples.iter().map(|x| x.1 / 1024).collect();
        let fds: Vec<u64> = s.samples.iter().map(|x| x.2).collect();
        eprintln!("  {:<20} rss {}", s.name, compact(&rss, 40));
        eprintln!("  {:<20} fds {}", "", compact(&fds, 40));
        let window: Vec<&(f64, u64, u64)> = s
            .samples
            .iter()
            .filter(|x| x.0 >= warm_up && x.0 <= seconds as f64)
            .collect();
        assert!(
            window.len() >= 6,
            "{}: only {} samples in the loaded window",
            s.name,
            window.len()
        );
        let rss_w: Vec<u64> = window.iter().map(|x| x.1).collect();
        let fds_w: Vec<u64> = window.iter().map(|x| x.2).collect();
        // RSS: a quarter of the early peak plus 16 MiB; fds: in flight per process is at
        // most two per connection, so a sixth plus 8 absorbs scheduling, while a leaked fd
        // per connection grows by hundreds.
        problems.extend(flat(&format!("{} RSS KiB", s.name), &rss_w, |f| {
            f / 4 + (16 << 10)
        }));
        problems.extend(flat(&format!("{} fds", s.name), &fds_w, |f| f / 6 + 8));
    }

    let mut total = Tally::default();
    let mut failures = Vec::new();
    eprintln!(
        "soak summary (REPLINK_TEST_SEED={}, {seconds} s of load):",
        run_seed()
    );
    for p in &pairs {
        let t = p.tally();
        eprintln!(
            "  {:<14} {} connections ({} clean, {} client resets of which {} never reached the \
             upstream, {} upstream resets), {} MiB, {} mismatches, {} other failures",
            p.name,
            t.connections,
            t.clean,
            t.client_resets,
            t.resets_unseen_upstream,
            t.upstream_resets,
            t.bytes / MIB,
            t.mismatches.len(),
            t.failures.len()
        );
        total.connections += t.connections;
        total.bytes += t.bytes;
        total.client_resets += t.client_resets;
        total.upstream_resets += t.upstream_resets;
        failures.extend(t.mismatches.iter().chain(&t.failures).cloned());
        total.mismatches.extend(t.mismatches.iter().cloned());
    }
    for s in &series {
        let rss = s.samples.iter().map(|x| x.1);
        let fds = s.samples.iter().map(|x| x.2);
        eprintln!(
            "  {:<20} pid {:>7}: RSS {}..{} MiB, fds {}..{} (baseline {})",
            s.name,
            s.pid,
            rss.clone().min().unwrap_or(0) / 1024,
            rss.max().unwrap_or(0) / 1024,
            fds.clone().min().unwrap_or(0),
            fds.max().unwrap_or(0),
            s.baseline_fds
        );
    }
    eprintln!(
        "  total: {} connections, {} MiB, {} resets ({} client, {} upstream), {} mismatches, \
         {} failures, in {:?}",
        total.connections,
        total.bytes / MIB,
        total.client_resets + total.upstream_resets,
        total.client_resets,
        total.upstream_resets,
        total.mismatches.len(),
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty() && problems.is_empty(),
        "{} connections failed (REPLINK_TEST_SEED={} replays the sizes):\n{}\n\
         {} other problems:\n{}",
        failures.len(),
        run_seed(),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        problems.len(),
        problems.join("\n")
    );
    for p in &pairs {
        assert!(
            p.tally().connections >= conns as u64,
            "[{}] only {} connections",
            p.name,
            p.tally().connections
        );
    }
    for p in pairs {
        let Ok(mut p) = Arc::try_unwrap(p) else {
            panic!("a load thread still holds a pair");
        };
        p.forward.assert_running();
        p.reverse.assert_running();
    }
}
