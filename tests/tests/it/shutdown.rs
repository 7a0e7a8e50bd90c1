//! SIGTERM: stop accepting, drain, exit.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use replink_tests::*;

/// SIGTERM to the reverse end in the middle of a transfer: it stops accepting at once (a new
/// connection is refused by the kernel) but the transfer in flight finishes byte-exact, and
/// then the process exits 0 with `drained`.
#[test]
fn sigterm_drains_connections_in_flight() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let (mut reverse, forward) = start_pair(&pki, server.addr(), &PairOptions::default());
    let t = Transfer::new(run_seed() ^ 0x51, 8 << 20, 8 << 20);
    let (resume, paused) = std::sync::mpsc::channel();
    let addr = forward.addr();
    let client = std::thread::spawn(move || run_transfer_paused(addr, t, 2 << 20, paused));
    // The client has sent its first 2 MiB and waits: the connection is up at both ends.
    std::thread::sleep(Duration::from_millis(800));
    reverse.signal("TERM");
    reverse.wait_count(r"draining .*active=1", 1);
    let refused = TcpStream::connect_timeout(&reverse.addr(), Duration::from_secs(5));
    assert!(
        refused.is_err(),
        "a new connection was accepted while draining"
    );
    assert_eq!(
        reverse.wait_exit(Duration::from_millis(300)),
        None,
        "exited before draining"
    );
    resume.send(()).unwrap();
    let report = client.join().unwrap();
    verify_transfer(&server, &report).unwrap();
    let status = reverse
        .wait_exit(Duration::from_secs(20))
        .expect("exits after draining");
    assert!(status.success(), "{status}\n{}", reverse.log());
    assert_eq!(reverse.count("drained"), 1, "{}", reverse.log());
}

/// With a connection that does not end, the process exits at `--shutdown-timeout` and says how
/// many connections it closed; the stalled client sees its connection fail, not hang.
#[test]
fn shutdown_timeout_closes_what_is_left() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let opts = PairOptions {
        extra_forward: strings(&["--shutdown-timeout", "1s"]),
        ..PairOptions::default()
    };
    let (_reverse, mut forward) = start_pair(&pki, server.addr(), &opts);
    let t = Transfer::new(run_seed() ^ 0x52, 8 << 20, 8 << 20);
    let (_resume, paused) = std::sync::mpsc::channel::<()>();
    let addr = forward.addr();
    let client = std::thread::spawn(move || run_transfer_paused(addr, t, 1 << 20, paused));
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    forward.signal("TERM");
    let status = forward
        .wait_exit(Duration::from_secs(10))
        .expect("exits at the timeout");
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        forward.count(r"shutdown: closing the connections still open active=1"),
        1,
        "{}",
        forward.log()
    );
    drop(_resume);
    let report = client.join().unwrap();
    assert!(
        verify_transfer(&server, &report).is_err(),
        "a cut transfer passed as complete"
    );
}
