//! Resets propagate as resets, in both directions: a connection that dies must not look like
//! one that ended cleanly (a replica must not take a cut WAL stream for a complete one).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};
use replink_tests::*;

/// The client resets half way through its upload: the upstream sees a reset (a read error),
/// not a clean EOF; both ends log the connection as failed; a transfer through the same pair
/// meanwhile is intact.
#[test]
fn client_reset_reaches_the_upstream_as_a_reset() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let (mut reverse, mut forward) = start_pair(&pki, server.addr(), &PairOptions::default());
    let unrelated = Unrelated::start(forward.addr(), 0x4e5e8);
    let t = Transfer::new(run_seed() ^ 0x4e5e7, 1 << 30, 0);
    let mut c = TcpStream::connect(forward.addr()).expect("connect");
    c.write_all(&t.header()).expect("header");
    let mut g = Gen::new(t.seed, false);
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..4 {
        g.fill(&mut buf);
        c.write_all(&buf).expect("send");
    }
    // Let the bytes reach the upstream before the reset overtakes them.
    std::thread::sleep(Duration::from_millis(300));
    reset(c);
    let rec = server
        .record(t.seed, patience())
        .expect("the upstream connection ends");
    // The reset reaches the upstream's read, or its write (the read then gets 0).
    assert!(
        ended_with_reset(&rec.read_error, &rec.write_error).is_ok() && !rec.eof_after,
        "upstream saw a clean end instead of a reset: {rec:?}"
    );
    assert!(rec.first_mismatch.is_none(), "{rec:?}");
    for p in [&forward, &reverse] {
        p.wait_count(r"\bclosed\b", 1);
        assert_eq!(
            p.count(r#"\bclosed\b.*reason="?done"#),
            0,
            "a reset logged as a clean close by `{}`:\n{}",
            p.command_line(),
            p.log()
        );
    }
    unrelated.finish(&server);
    reverse.assert_running();
    forward.assert_running();
}

/// The upstream resets after sending some bytes: the client of the forward end gets the error
/// (ECONNRESET), not a clean EOF; a transfer through the same pair meanwhile is intact.
#[test]
fn upstream_reset_reaches_the_client_as_a_reset() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    let done_tx = std::sync::Mutex::new(done_tx);
    let upstream = SplitUpstream::start(server.addr(), move |mut conn| {
        let mut hello = [0u8; 5];
        conn.read_exact(&mut hello).expect("client's bytes");
        conn.write_all(b"partial answer").expect("answer");
        std::thread::sleep(Duration::from_millis(300));
        reset(conn);
        let _ = done_tx.lock().map(|tx| tx.send(()));
    });
    let (mut reverse, mut forward) = start_pair(&pki, upstream.addr(), &PairOptions::default());
    let unrelated = Unrelated::start(forward.addr(), 0x4e5e9);
    let mut c = TcpStream::connect(forward.addr()).expect("connect");
    c.set_read_timeout(Some(patience())).expect("timeout");
    c.write_all(FAULT_MARK).expect("send");
    c.write_all(b"hello").expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        match c.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    done.recv_timeout(patience())
        .expect("the upstream reset its connection");
    match end {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!(
            "client saw {other:?} after {:?}, want a reset",
            String::from_utf8_lossy(&got)
        ),
    }
    assert!(
        b"partial answer".starts_with(&got),
        "bytes before the reset: {got:?}"
    );
    let _ = c.shutdown(Shutdown::Both);
    for p in [&forward, &reverse] {
        p.wait_count(r"\bclosed\b", 1);
        assert_eq!(p.count(r#"\bclosed\b.*reason="?done"#), 0, "{}", p.log());
    }
    unrelated.finish(&server);
    reverse.assert_running();
    forward.assert_running();
}

/// Regression (found by the soak test): the upstream resets while replink is still writing the
/// client's upload to it. The kernel reports a reset once: when that write takes it, the read
/// of the same socket gets 0 instead, which replink took for the upstream's clean end of
/// stream and passed on as close_notify, so the client saw a clean EOF after a short count and
/// the forward end logged `reason=done`. Each connection here must end as a reset at the
/// client, and neither end may log it as done.
#[test]
fn reset_taken_by_a_write_is_not_a_clean_eof() {
    let pki = Pki::new();
    let server = StreamServer::start();
    for io_driver in ["io-uring", "epoll"] {
        let (mut reverse, mut forward) = start_pair_on(&pki, server.addr(), "off", io_driver);
        // The race needs replink's write to the upstream in flight when the reset comes, and
        // its read of the same socket to run after it: many small connections, 16 at a time,
        // uploads from nothing to 1 MiB (which the upstream never reads).
        const CONNS: u64 = 160;
        let mut rng = StdRng::seed_from_u64(run_seed() ^ 0x7a4e);
        let plan: Vec<Transfer> = (0..CONNS)
            .map(|i| {
                let up = rng.gen_range(0..1u64 << 20);
                let down = rng.gen_range(0..64u64 << 10);
                Transfer::new(run_seed() ^ (0x7a4e << 16) ^ i, up, down).reset()
            })
            .collect();
        for batch in plan.chunks(16) {
            let handles: Vec<_> = batch
                .iter()
                .map(|&t| {
                    let addr = forward.addr();
                    std::thread::spawn(move || run_transfer(addr, t))
                })
                .collect();
            for h in handles {
                let r = h.join().expect("transfer thread");
                let t = r.transfer;
                if let Err(e) = ended_with_reset(&r.read_error, &r.write_error) {
                    panic!(
                        "[{io_driver}] seed {} (up {} B): the client got {e} after {} of {} \
                         bytes, not a reset (REPLINK_TEST_SEED={})",
                        t.seed,
                        t.up,
                        r.received,
                        t.reset_at(),
                        run_seed()
                    );
                }
                assert!(
                    r.received <= t.reset_at() && r.first_mismatch.is_none(),
                    "{r:?}"
                );
            }
        }
        for p in [&forward, &reverse] {
            p.wait_count(r"\bclosed\b", CONNS as usize);
            assert_eq!(
                p.count(r#"\bclosed\b.*reason="?done"#),
                0,
                "[{io_driver}] a reset logged as a clean close by `{}`:\n{}",
                p.command_line(),
                p.log()
            );
        }
        reverse.assert_running();
        forward.assert_running();
    }
}
