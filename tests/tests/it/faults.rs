//! Fault injection (issue 7): each fault hits one connection while an unrelated byte-exact
//! transfer ([`Unrelated`]: 128 MiB up, trickled so it is never idle, 32 MiB down) runs
//! through the same reverse end, and the same forward end unless the fault needs one of its
//! own; each case asserts the faulty connection's outcome (what its peers saw, the `closed` or
//! `refused` line and its reason) and the unrelated transfer's SHA-256 on both ends.
//!
//! | fault (issue 7)                              | test                                                     | outcome asserted |
//! |----------------------------------------------|----------------------------------------------------------|------------------|
//! | upstream refuses / is absent                 | `upstream_down::closed_upstream_port_closes_the_client_quickly`, `upstream_down::target_lists_fail_over_in_order` | client closed < 3 s, `upstream_connect_failed`, `internal_error` alert; live route intact |
//! | upstream stalls: connect timeout             | [`upstream_that_never_answers_the_syn_hits_the_connect_timeout`] | client closed after `--connect-timeout`, `upstream_connect_failed` + `connect timed out` |
//! | upstream stalls: idle timeout                | [`silent_upstream_hits_the_idle_timeout`] (and `proxy/tests/it` `idle_timeout_closes_only_silent_links`) | client closed after 1 s, `idle_timeout`, upstream sees a reset; the trickling transfer not cut |
//! | upstream resets mid-stream                   | `resets::upstream_reset_reaches_the_client_as_a_reset`   | client gets ECONNRESET; unrelated intact |
//! | client resets mid-stream                     | `resets::client_reset_reaches_the_upstream_as_a_reset`   | upstream gets a reset; unrelated intact |
//! | slow reader: client                          | [`client_that_stops_reading_holds_memory_bounded`]       | RSS growth bounded while 512 MiB wait; then exact |
//! | slow reader: upstream                        | [`upstream_that_stops_reading_holds_memory_bounded`]     | same, the other way |
//! | slowloris ClientHello, a byte a second       | [`slowloris_client_hello_hits_the_handshake_timeout`]    | closed at ~3 s before the hello is whole, `refused` `handshake_timeout` |
//! | 5000 simultaneous half-open connections      | [`five_thousand_half_open_connections`]                  | all accepted (under the default `--max-connections` 10000), all cut by `handshake_timeout`, fds back to baseline, new connection exact |
//! | fd exhaustion (`RLIMIT_NOFILE` low)          | [`file_descriptor_exhaustion`]                           | `accept failed` once per worker then `accept recovered`, CPU low (no spin), a connection queued meanwhile served exact after recovery |
//! | zstd frame with a huge window                | [`zstd_frame_with_a_huge_window_is_refused`]             | client gets an error, `zstd_error` (frame requires too much memory), RSS bounded |
//! | decompression bomb                           | [`zstd_bomb_is_streamed_at_the_upstreams_pace`]          | 32 KiB → 1 GiB streamed exact at the reader's pace, RSS bounded |
//! | truncated zstd frame + close_notify          | [`truncated_zstd_frame_fails_loudly`]                    | `zstd_error` (ended inside a frame), upstream sees a reset |
//! | TLS record with a bad MAC                    | [`tls_record_with_a_bad_mac_fails_loudly`]               | `tls_record_error`, upstream reset (no corrupt byte delivered), client error |
//! | kill -9 of either end during a transfer      | [`kill_9_of_the_forward_end`], [`kill_9_of_the_reverse_end`], `replication::rsync_tree_through_the_pair_and_a_cut_transfer_fails_loudly` | every application on both sides sees an error (reset), none a clean short end; rsync fails, a re-run completes |
//! | `--max-connections`                           | `proxy/tests/it` `max_connections_refuses_the_excess`   | the excess closed at once (`refused` `max_connections`) |
//!
//! The unrelated transfer cannot survive a kill -9 of the process carrying it: those two
//! cases check that every transfer in flight fails loudly instead. Memory is VmRSS from
//! `/proc`, sampled every 50 ms against a baseline taken before the faulty connection; the
//! bound ([`RSS_BOUND_KIB`]) is 16 MiB, measured growth is 0.1-5 MiB.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use replink_tests::*;

/// The ALPN of replink's zstd streams (proxy/src/tls).
const ALPN_ZSTD: &[u8] = b"replink-zstd/1";

/// RSS growth allowed for one faulty connection: fixed per-connection buffers and zstd
/// contexts (a few MiB), far below what the fault would pile up otherwise.
const RSS_BOUND_KIB: u64 = 16 << 10;

/// A pair on `PairOptions` in front of a [`SplitUpstream`] whose marked connections go to
/// `fault`.
struct Rig {
    pki: Pki,
    server: StreamServer,
    reverse: ReplinkProcess,
    forward: ReplinkProcess,
}

fn rig(opts: PairOptions, fault: impl Fn(TcpStream) + Send + Sync + 'static) -> Rig {
    let pki = Pki::new();
    let server = StreamServer::start();
    let upstream = SplitUpstream::start(server.addr(), fault);
    let (reverse, forward) = start_pair(&pki, upstream.addr(), &opts);
    Rig {
        pki,
        server,
        reverse,
        forward,
    }
}

fn reverse_opts(extra: &[&str]) -> PairOptions {
    PairOptions {
        extra_reverse: strings(extra),
        ..PairOptions::default()
    }
}

/// Reads until the peer closes: `Ok(bytes)` on EOF, `Err(kind)` on an error; panics if it
/// stays open past `limit`.
fn wait_closed(conn: &mut TcpStream, limit: Duration, what: &str) -> Result<usize, ErrorKind> {
    conn.set_read_timeout(Some(limit)).expect("timeout");
    let mut got = 0;
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: still open after {limit:?}")
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.kind()),
        }
    }
}

/// Both ends' RSS at one moment, to measure growth against.
struct RssBaseline {
    pids: [u32; 2],
    base: [u64; 2],
}

impl Rig {
    /// The reverse and forward end's RSS now.
    fn rss_baseline(&self) -> RssBaseline {
        let pids = [self.reverse.pid(), self.forward.pid()];
        RssBaseline {
            pids,
            base: pids.map(ProcStats::rss_kib),
        }
    }
}

impl RssBaseline {
    /// The highest RSS growth (KiB over the baseline) of each end, sampled every 50 ms for
    /// `span`.
    fn peak_growth(&self, span: Duration) -> Vec<u64> {
        let mut peak = vec![0u64; self.pids.len()];
        let end = Instant::now() + span;
        while Instant::now() < end {
            for (i, pid) in self.pids.iter().enumerate() {
                peak[i] = peak[i].max(ProcStats::rss_kib(*pid).saturating_sub(self.base[i]));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    }
}

#[track_caller]
fn assert_bounded(what: &str, growth: &[u64]) {
    eprintln!("{what}: RSS growth (KiB) reverse, forward: {growth:?}");
    for g in growth {
        assert!(
            *g < RSS_BOUND_KIB,
            "{what}: RSS grew by {g} KiB (bound {RSS_BOUND_KIB} KiB)"
        );
    }
}

/// Compares what arrives with a [`Gen`] stream; the offset of the first difference.
struct Compare {
    gen: Gen,
    want: Vec<u8>,
    at: u64,
    first_mismatch: Option<u64>,
}

impl Compare {
    fn new(gen: Gen) -> Compare {
        Compare {
            gen,
            want: vec![0u8; 1 << 20],
            at: 0,
            first_mismatch: None,
        }
    }

    fn update(&mut self, got: &[u8]) {
        let want = &mut self.want[..got.len()];
        self.gen.fill(want);
        if self.first_mismatch.is_none() && want != got {
            let i = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(0);
            self.first_mismatch = Some(self.at + i as u64);
        }
        self.at += got.len() as u64;
    }
}

/// An upstream whose accept queue is full: SYNs to it are dropped, a connect never completes.
/// Returns the listening socket and the connections that fill its queue (keep both alive).
fn listener_that_drops_syns() -> (socket2::Socket, Vec<TcpStream>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    sock.listen(0).expect("listen");
    let addr = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("addr");
    let mut fill = Vec::new();
    for _ in 0..16 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(c) => fill.push(c),
            Err(e) if e.kind() == ErrorKind::TimedOut => return (sock, fill, addr),
            Err(e) => panic!("connect to the stalled listener: {e}"),
        }
    }
    panic!("the accept queue of a listen(0) socket never filled");
}

/// An upstream that never completes the TCP handshake: the client of the forward end is closed
/// once the reverse end's `--connect-timeout` (1 s) runs out, not before, with
/// `upstream_connect_failed` and `connect timed out`; the forward end logs the reverse end's
/// internal_error alert.
#[test]
fn upstream_that_never_answers_the_syn_hits_the_connect_timeout() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let (_stalled, _fill, stalled) = listener_that_drops_syns();
    let opts = reverse_opts(&["--connect-timeout", "1s"]);
    let mut reverse = start_reverse(
        &pki,
        &[(ROUTE, server.addr()), ("stall.repl.test", stalled)],
        &opts,
    );
    let forward = start_forward(&pki, reverse.addr(), ROUTE, &opts);
    let stall_fwd = start_forward(&pki, reverse.addr(), "stall.repl.test", &opts);
    let unrelated = Unrelated::start(forward.addr(), 0xc0);

    let started = Instant::now();
    let mut c = TcpStream::connect(stall_fwd.addr()).expect("connect");
    let _ = c.write_all(b"hello");
    let end = wait_closed(&mut c, patience(), "client of a stalled upstream");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?} ({end:?}): before the connect timeout"
    );
    reverse.wait_count(
        r#"route="?stall\.repl\.test"?\s.*reason="?upstream_connect_failed\b.*connect timed out"#,
        1,
    );
    stall_fwd.wait_count(r#"closed.*reason="?peer_alert\b.*InternalError"#, 1);
    unrelated.finish(&server);
    reverse.wait_count(r#"closed.*route="?pg\.repl\.test"?\s.*reason="?done"#, 1);
    reverse.assert_running();
}

/// `--idle-timeout 1s` on the reverse end; an upstream that accepts and says nothing, a client
/// that says nothing after its first bytes: cut after the timeout (`idle_timeout`), the
/// upstream sees a reset; the trickling unrelated transfer is never idle and is not cut.
#[test]
fn silent_upstream_hits_the_idle_timeout() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let r = rig(reverse_opts(&["--idle-timeout", "1s"]), move |mut conn| {
        let end = read_to_end_with(&mut conn, |_| {});
        let _ = tx.lock().expect("lock").send(end);
    });
    let unrelated = Unrelated::start(r.forward.addr(), 0x1d);
    let started = Instant::now();
    let mut c = TcpStream::connect(r.forward.addr()).expect("connect");
    c.write_all(FAULT_MARK).expect("mark");
    let end = wait_closed(&mut c, patience(), "idle connection");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "cut after {took:?} ({end:?}): before the idle timeout"
    );
    let upstream_end = rx.recv_timeout(patience()).expect("the upstream's end");
    assert!(
        matches!(
            upstream_end,
            StreamEnd::Error(0, ErrorKind::ConnectionReset)
        ),
        "the upstream saw {upstream_end:?}, want a reset"
    );
    r.reverse
        .wait_count(r#"closed.*reason="?idle_timeout\b"#, 1);
    unrelated.finish(&r.server);
}

/// A client that stops reading while the upstream sends 512 MiB: the server blocks, both
/// ends' RSS stays within [`RSS_BOUND_KIB`] of what it was before the connection, and once
/// the client reads, every byte arrives in order.
#[test]
fn client_that_stops_reading_holds_memory_bounded() {
    let r = rig(PairOptions::default(), |_| {});
    let unrelated = Unrelated::start(r.forward.addr(), 0x51);
    std::thread::sleep(Duration::from_millis(500));
    let rss = r.rss_baseline();
    let t = Transfer::new(run_seed() ^ 0x5107, 0, 512 << 20);
    let mut c = TcpStream::connect(r.forward.addr()).expect("connect");
    c.write_all(&t.header()).expect("header");
    c.shutdown(std::net::Shutdown::Write).expect("half-close");
    let growth = rss.peak_growth(Duration::from_secs(3));
    assert!(
        r.server.record(t.seed, Duration::ZERO).is_none(),
        "the server sent 512 MiB to a client that does not read"
    );
    assert_bounded("client not reading", &growth);
    c.set_read_timeout(Some(patience())).expect("timeout");
    let mut cmp = Compare::new(Gen::new(t.seed ^ DOWN_SALT, false));
    let end = read_to_end_with(&mut c, |b| cmp.update(b));
    assert_eq!(end, StreamEnd::Eof(t.down), "the client's download");
    assert_eq!(cmp.first_mismatch, None, "the client's download differs");
    let rec = r.server.record(t.seed, patience()).expect("server record");
    assert!(rec.write_error.is_none() && rec.sent == t.down, "{rec:?}");
    unrelated.finish(&r.server);
}

/// An upstream that stops reading while the client sends 512 MiB: the client blocks, RSS
/// stays bounded, and once the upstream reads it gets every byte and a clean EOF.
#[test]
fn upstream_that_stops_reading_holds_memory_bounded() {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let seed = run_seed() ^ 0x5108;
    const UP: u64 = 512 << 20;
    let r = rig(PairOptions::default(), move |mut conn| {
        let _ = go_rx.lock().expect("lock").recv();
        let _ = conn.set_read_timeout(Some(patience()));
        let mut cmp = Compare::new(Gen::new(seed, false));
        let end = read_to_end_with(&mut conn, |b| cmp.update(b));
        let _ = tx.lock().expect("lock").send((end, cmp.first_mismatch));
    });
    let unrelated = Unrelated::start(r.forward.addr(), 0x52);
    std::thread::sleep(Duration::from_millis(500));
    let rss = r.rss_baseline();
    let sent = Arc::new(AtomicU64::new(0));
    let mut c = TcpStream::connect(r.forward.addr()).expect("connect");
    let counter = sent.clone();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        c.write_all(FAULT_MARK)?;
        let mut g = Gen::new(seed, false);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..UP >> 20 {
            g.fill(&mut buf);
            c.write_all(&buf)?;
            counter.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        c.shutdown(std::net::Shutdown::Write)?;
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).map(|_| ())
    });
    let growth = rss.peak_growth(Duration::from_secs(3));
    let stuck_at = sent.load(Ordering::Relaxed);
    assert!(
        stuck_at < UP / 4,
        "the client could send {stuck_at} B to an upstream that does not read"
    );
    assert_bounded("upstream not reading", &growth);
    go_tx.send(()).expect("upstream waits");
    let (end, mismatch) = rx.recv_timeout(patience() * 2).expect("upstream's end");
    assert_eq!(end, StreamEnd::Eof(UP), "the upstream's upload");
    assert_eq!(mismatch, None, "the upstream's upload differs");
    sender.join().expect("sender").expect("the client's side");
    unrelated.finish(&r.server);
}

/// A real ClientHello sent a byte a second: refused at `--handshake-timeout` (3 s) with
/// `handshake_timeout`; the connection is closed, not left open.
#[test]
fn slowloris_client_hello_hits_the_handshake_timeout() {
    let r = rig(reverse_opts(&["--handshake-timeout", "3s"]), |_| {});
    let unrelated = Unrelated::start(r.forward.addr(), 0x510);
    let config = tls_client_config(&r.pki, &[ALPN_ZSTD]);
    let name = rustls::pki_types::ServerName::try_from(ROUTE).expect("name");
    let mut client = rustls::ClientConnection::new(config, name).expect("client");
    let mut hello = Vec::new();
    client.write_tls(&mut hello).expect("ClientHello");
    let mut c = TcpStream::connect(r.reverse.addr()).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let started = Instant::now();
    let mut sent = 0;
    let closed = loop {
        if sent < hello.len() && c.write_all(&hello[sent..sent + 1]).is_ok() {
            sent += 1;
        }
        let mut b = [0u8; 64];
        match c.read(&mut b) {
            Ok(0) => break "EOF".to_string(),
            Ok(n) => panic!("{n} bytes of answer to {sent} bytes of ClientHello"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => break e.to_string(),
        }
        assert!(
            started.elapsed() < patience(),
            "a slowloris client still connected after {sent} bytes"
        );
    };
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500) && sent < hello.len(),
        "closed ({closed}) after {took:?} and {sent} of {} bytes",
        hello.len()
    );
    r.reverse
        .wait_count(r#"\brefused\b.*reason="?handshake_timeout\b"#, 1);
    unrelated.finish(&r.server);
}

/// `prlimit ARGS` (util-linux): reads or sets another process's limits.
fn prlimit(args: &[String]) -> String {
    let out = run_cmd("prlimit", args, Input::Null, Duration::from_secs(10));
    assert!(out.success(), "prlimit: {}", out.text());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pid`'s open-file limit, (soft, hard).
fn nofile(pid: u32) -> (u64, u64) {
    let out = prlimit(&strings(&[
        "--pid",
        &pid.to_string(),
        "--nofile",
        "--output",
        "SOFT,HARD",
        "--noheadings",
    ]));
    let v: Vec<u64> = out
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(u64::MAX))
        .collect();
    (v[0], v[1])
}

fn set_nofile(pid: u32, soft: u64, hard: u64) {
    prlimit(&strings(&[
        "--pid",
        &pid.to_string(),
        &format!("--nofile={soft}:{hard}"),
    ]));
}

/// Raises `pid`'s open-file limit (soft and hard) to at least `n`.
fn raise_nofile(pid: u32, n: u64) {
    let (soft, hard) = nofile(pid);
    set_nofile(pid, soft.max(n), hard.max(n));
}

/// 5000 connections that complete the TCP handshake and send nothing: the reverse end accepts
/// them all (its fd count rises by 5000), cuts every one at the handshake timeout (5000
/// `refused` lines), goes back to its baseline fd count, and serves a new connection; the
/// unrelated transfer is intact.
#[test]
fn five_thousand_half_open_connections() {
    const N: usize = 5000;
    let r = rig(reverse_opts(&["--handshake-timeout", "6s"]), |_| {});
    raise_nofile(std::process::id(), 3 * N as u64);
    raise_nofile(r.reverse.pid(), 3 * N as u64);
    let unrelated = Unrelated::start(r.forward.addr(), 0x5000);
    std::thread::sleep(Duration::from_millis(500));
    let pid = r.reverse.pid();
    let base = ProcStats::fds(pid);
    let conns: Vec<TcpStream> = (0..N)
        .map(|i| {
            TcpStream::connect(r.reverse.addr())
                .unwrap_or_else(|e| panic!("half-open connection {i}: {e}"))
        })
        .collect();
    let opened = Instant::now();
    assert_eventually!(
        ProcStats::fds(pid) >= base + N,
        "the reverse end holds {} fds, baseline {base}: not all {N} accepted",
        ProcStats::fds(pid)
    );
    for (i, mut c) in conns.into_iter().enumerate() {
        let _ = wait_closed(&mut c, patience(), &format!("half-open connection {i}"));
    }
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_secs(5),
        "the half-open connections were closed after {took:?}, before the handshake timeout"
    );
    r.reverse
        .wait_count(r#"\brefused\b.*reason="?handshake_timeout\b"#, N);
    assert_eventually!(
        ProcStats::fds(pid) <= base,
        "the reverse end holds {} fds, baseline {base}",
        ProcStats::fds(pid)
    );
    let t = Transfer::new(run_seed() ^ 0x5001, 1 << 20, 1 << 20);
    verify_transfer(&r.server, &run_transfer(r.forward.addr(), t)).expect("a new connection");
    unrelated.finish(&r.server);
}

/// The reverse end's RLIMIT_NOFILE lowered to 24 fds above what it uses: silent connections
/// fill it, accept fails and backs off instead of spinning (CPU time over 2 s stays low; one
/// `accept failed` line per worker, then `accept recovered`, not a line per retry), a transfer
/// started meanwhile waits in the accept queue, the unrelated transfer carries on; once the
/// silent connections close, the waiting transfer and a new one complete byte-exact.
#[test]
fn file_descriptor_exhaustion() {
    let mut r = rig(PairOptions::default(), |_| {});
    let unrelated = Unrelated::start(r.forward.addr(), 0xfd);
    std::thread::sleep(Duration::from_millis(500));
    let pid = r.reverse.pid();
    let limit = ProcStats::fds(pid) as u64 + 24;
    set_nofile(pid, limit, nofile(pid).1);
    let hogs: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(r.reverse.addr()).expect("connect"))
        .collect();
    assert_eventually!(
        r.reverse.count(r"accept failed.*Too many open files") >= 1,
        "no `accept failed` line with {} fds open, limit {limit}",
        ProcStats::fds(pid)
    );
    let t = Transfer::new(run_seed() ^ 0xfd1, 2 << 20, 2 << 20);
    let addr = r.forward.addr();
    let waiting = std::thread::spawn(move || run_transfer(addr, t));
    let cpu = ProcStats::cpu(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = ProcStats::cpu(pid) - cpu;
    assert!(
        spent < Duration::from_millis(800),
        "the reverse end used {spent:?} of CPU in 2 s while out of fds"
    );
    assert!(
        !waiting.is_finished(),
        "a connection was served while the reverse end had no fd: {:?}",
        waiting.join().map(|c| verify_transfer(&r.server, &c))
    );
    r.reverse.assert_running();
    drop(hogs);
    let report = waiting.join().expect("transfer thread");
    verify_transfer(&r.server, &report).expect("the transfer that waited for an fd");
    // One line when the failures start and one when they end, per worker (2), not one per
    // retry (every 50 ms).
    let failed = r.reverse.count(r"accept failed");
    assert!(
        (1..=2).contains(&failed),
        "{failed} `accept failed` lines for a few seconds out of fds"
    );
    assert_eventually!(
        r.reverse.count(r"accept recovered failures=\d+") == failed,
        "`accept recovered` lines: {:?}",
        r.reverse.lines_matching("accept")
    );
    let t = Transfer::new(run_seed() ^ 0xfd2, 2 << 20, 2 << 20);
    verify_transfer(&r.server, &run_transfer(r.forward.addr(), t)).expect("a new transfer");
    unrelated.finish(&r.server);
}

/// zstd frame pieces (RFC 8878): frame header without content size, with a window of
/// 2^`window_log`.
fn zstd_frame_header(window_log: u8) -> Vec<u8> {
    let mut v = 0xFD2F_B528u32.to_le_bytes().to_vec();
    v.push(0x00);
    v.push((window_log - 10) << 3);
    v
}

fn zstd_raw_block(data: &[u8], last: bool) -> Vec<u8> {
    let h = last as u32 | (data.len() as u32) << 3;
    let mut v = h.to_le_bytes()[..3].to_vec();
    v.extend_from_slice(data);
    v
}

/// A block of `len` (at most 128 KiB) copies of `byte`: 4 bytes on the wire.
fn zstd_rle_block(byte: u8, len: u32, last: bool) -> Vec<u8> {
    let h = last as u32 | 1 << 1 | len << 3;
    let mut v = h.to_le_bytes()[..3].to_vec();
    v.push(byte);
    v
}

const RLE_LEN: u32 = 128 << 10;

/// A TLS client with ALPN `replink-zstd/1` straight to the reverse end.
fn zstd_client(r: &Rig) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tls = tls_connect(
        &tls_client_config(&r.pki, &[ALPN_ZSTD]),
        r.reverse.addr(),
        ROUTE,
    );
    assert_eq!(
        tls.conn.alpn_protocol(),
        Some(ALPN_ZSTD),
        "zstd not negotiated"
    );
    tls
}

/// A frame declaring a 2 GiB window (windowLog 31): the connection is closed with
/// `zstd_error` naming the window, and the reverse end never allocates it.
#[test]
fn zstd_frame_with_a_huge_window_is_refused() {
    let r = rig(PairOptions::default(), |_| {});
    let unrelated = Unrelated::start(r.forward.addr(), 0x2a);
    std::thread::sleep(Duration::from_millis(500));
    let rss = r.rss_baseline();
    let mut tls = zstd_client(&r);
    let mut frame = zstd_frame_header(31);
    frame.extend(zstd_raw_block(FAULT_MARK, false));
    for _ in 0..64 {
        frame.extend(zstd_rle_block(b'A', RLE_LEN, false));
    }
    tls.write_all(&frame).expect("send the frame");
    tls.flush().expect("flush");
    let mut rest = Vec::new();
    let end = tls.read_to_end(&mut rest);
    assert!(end.is_err(), "a clean close after a refused frame: {end:?}");
    r.reverse
        .wait_count(r#"closed.*reason="?zstd_error\b.*(?i:memory|window)"#, 1);
    let growth = rss.peak_growth(Duration::from_millis(200));
    assert_bounded("huge window", &growth);
    unrelated.finish(&r.server);
}

/// A decompression bomb: 32 KiB of zstd (RLE blocks) that expand to 1 GiB, sent at once to
/// an upstream that reads nothing for 2 s. The reverse end streams it at the upstream's pace
/// (ARCHITECTURE.md: bounded memory, window capped at 8 MiB): RSS stays bounded, then the
/// upstream gets exactly 1 GiB and a clean EOF.
#[test]
fn zstd_bomb_is_streamed_at_the_upstreams_pace() {
    const BLOCKS: u64 = 8192;
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let r = rig(PairOptions::default(), move |mut conn| {
        let _ = go_rx.lock().expect("lock").recv();
        let _ = conn.set_read_timeout(Some(patience()));
        let mut others = 0u64;
        let end = read_to_end_with(&mut conn, |b| {
            others += b.iter().filter(|&&x| x != b'A').count() as u64
        });
        let _ = tx.lock().expect("lock").send((end, others));
    });
    let unrelated = Unrelated::start(r.forward.addr(), 0xb0);
    std::thread::sleep(Duration::from_millis(500));
    let rss = r.rss_baseline();
    let mut tls = zstd_client(&r);
    let mut bomb = zstd_frame_header(17);
    bomb.extend(zstd_raw_block(FAULT_MARK, false));
    for i in 0..BLOCKS {
        bomb.extend(zstd_rle_block(b'A', RLE_LEN, i + 1 == BLOCKS));
    }
    assert!(bomb.len() < 40 << 10, "{} B", bomb.len());
    tls.write_all(&bomb).expect("send the bomb");
    tls.conn.send_close_notify();
    tls.flush().expect("flush");
    let growth = rss.peak_growth(Duration::from_secs(2));
    assert_bounded("decompression bomb", &growth);
    go_tx.send(()).expect("upstream waits");
    let (end, others) = rx.recv_timeout(patience() * 2).expect("upstream's end");
    assert_eq!(
        end,
        StreamEnd::Eof(BLOCKS * RLE_LEN as u64),
        "the bomb's bytes"
    );
    assert_eq!(others, 0, "bytes other than the RLE byte");
    r.reverse.wait_count(r#"closed.*reason="?done"#, 1);
    unrelated.finish(&r.server);
}

/// A zstd frame cut short, then close_notify: the upstream gets a reset after the bytes
/// decoded so far (never a clean EOF), the line says `zstd_error` (ended inside a frame).
#[test]
fn truncated_zstd_frame_fails_loudly() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let r = rig(PairOptions::default(), move |mut conn| {
        let _ = conn.set_read_timeout(Some(patience()));
        let end = read_to_end_with(&mut conn, |_| {});
        let _ = tx.lock().expect("lock").send(end);
    });
    let unrelated = Unrelated::start(r.forward.addr(), 0x7c);
    let mut tls = zstd_client(&r);
    let mut frame = zstd_frame_header(17);
    frame.extend(zstd_raw_block(FAULT_MARK, false));
    for _ in 0..16 {
        frame.extend(zstd_rle_block(b'A', RLE_LEN, false));
    }
    tls.write_all(&frame).expect("send");
    tls.conn.send_close_notify();
    tls.flush().expect("flush");
    let end = rx.recv_timeout(patience()).expect("upstream's end");
    assert!(
        matches!(end, StreamEnd::Error(n, ErrorKind::ConnectionReset) if n <= 16 * RLE_LEN as u64),
        "the upstream saw {end:?}, want a reset"
    );
    r.reverse
        .wait_count(r#"closed.*reason="?zstd_error\b.*ended inside a frame"#, 1);
    unrelated.finish(&r.server);
}

/// A TCP relay between the forward and the reverse end that flips one bit in the body of the
/// first TLS application-data record past 1 MiB of connection number `victim` (0-based, in
/// accept order), forward to reverse; other connections pass untouched.
fn bit_flipping_relay(to: SocketAddr, victim: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut from) = conn else { continue };
            let index = count.fetch_add(1, Ordering::SeqCst);
            let Ok(mut up) = TcpStream::connect(to) else {
                continue;
            };
            let (Ok(c2), Ok(u2)) = (from.try_clone(), up.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || copy_then_close(u2, c2));
            std::thread::spawn(move || {
                let mut pos = 0u64;
                let mut flip = index == victim;
                let mut head = [0u8; 5];
                while from.read_exact(&mut head).is_ok() {
                    let len = u16::from_be_bytes([head[3], head[4]]) as usize;
                    let mut body = vec![0u8; len];
                    if from.read_exact(&mut body).is_err() {
                        break;
                    }
                    if flip && head[0] == 23 && pos >= 1 << 20 && len > 0 {
                        body[len / 2] ^= 0x01;
                        flip = false;
                    }
                    if up.write_all(&head).is_err() || up.write_all(&body).is_err() {
                        break;
                    }
                    pos += 5 + len as u64;
                }
                let _ = up.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, accepted)
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// A bit flipped in an application-data record: the reverse end closes the connection with
/// `tls_record_error`, the upstream sees a reset (not a clean EOF), the client an error; the
/// unrelated transfer through the same relay and pair is intact.
#[test]
fn tls_record_with_a_bad_mac_fails_loudly() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let opts = PairOptions::default();
    let reverse = start_reverse(&pki, &[(ROUTE, server.addr())], &opts);
    let (relay, accepted) = bit_flipping_relay(reverse.addr(), 1);
    let forward = start_forward(&pki, relay, ROUTE, &opts);
    let unrelated = Unrelated::start(forward.addr(), 0xbad);
    assert_eventually!(accepted.load(Ordering::SeqCst) == 1);
    let t = Transfer::new(run_seed() ^ 0xbad1, 16 << 20, 1 << 20);
    let report = run_transfer(forward.addr(), t);
    assert!(
        report.read_error.is_some() || report.write_error.is_some(),
        "the client saw no error: {report:?}"
    );
    let rec = server.record(t.seed, patience()).expect("server record");
    // The kernel reports the reset once: to the upstream's read, or to its write (the read
    // then gets 0), whichever comes first (see `ended_with_reset`).
    assert!(
        ended_with_reset(&rec.read_error, &rec.write_error).is_ok()
            && !rec.eof_after
            && rec.first_mismatch.is_none(),
        "the upstream saw {rec:?}, want a reset and no corrupt byte"
    );
    reverse.wait_count(r#"closed.*reason="?tls_record_error\b"#, 1);
    unrelated.finish(&server);
}

/// Which end [`kill_9_mid_transfer`] kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Forward,
    Reverse,
}

/// Two transfers in flight through a pair, a two-way one (the client still uploading) and a
/// download (the client only reading); then SIGKILL of `end`. Every application on either
/// side must see an error (a reset; a reset is reported once per socket, to the reader or the
/// writer, whichever asks first), never a clean end with a short count; the surviving end
/// logs both connections as failed.
fn kill_9_mid_transfer(end: End, salt: u64) {
    let r = rig(PairOptions::default(), |_| {});
    let seed = run_seed() ^ salt;
    let addr = r.forward.addr();
    let running: Vec<_> = [
        Transfer::new(seed, 1 << 30, 1 << 30),
        Transfer::new(seed ^ 1, 0, 4 << 30),
    ]
    .into_iter()
    .map(|t| (t, std::thread::spawn(move || run_transfer(addr, t))))
    .collect();
    std::thread::sleep(Duration::from_secs(1));
    let (mut killed, survivor) = match end {
        End::Forward => (r.forward, r.reverse),
        End::Reverse => (r.reverse, r.forward),
    };
    killed.kill();
    for (t, h) in running {
        let c = h.join().expect("transfer thread");
        let rec = r.server.record(t.seed, patience()).expect("server record");
        let who = format!(
            "{end:?} killed, seed {}: client {c:?}\nserver {rec:?}",
            t.seed
        );
        assert!(
            c.read_error.is_some() || c.write_error.is_some(),
            "the client saw a clean end: {who}"
        );
        assert!(
            rec.read_error.is_some() || rec.write_error.is_some(),
            "the upstream saw a clean end: {who}"
        );
        assert!(
            c.received < t.expected_down() && rec.sent < t.down,
            "the transfer completed despite the kill: {who}"
        );
    }
    survivor.wait_count(r"\bclosed\b", 2);
    assert_eq!(
        survivor.count(r#"closed.*reason="?done"#),
        0,
        "{}",
        survivor.log()
    );
}

/// SIGKILL of the forward end mid-transfer: see [`kill_9_mid_transfer`]. The reverse end takes
/// the TLS leg closed without close_notify as a failure and resets its upstreams.
#[test]
fn kill_9_of_the_forward_end() {
    kill_9_mid_transfer(End::Forward, 0x9f);
}

/// SIGKILL of the reverse end mid-transfer: see [`kill_9_mid_transfer`]. The forward end takes
/// the cut TLS leg as a failure and resets its clients.
#[test]
fn kill_9_of_the_reverse_end() {
    kill_9_mid_transfer(End::Reverse, 0x9e);
}
