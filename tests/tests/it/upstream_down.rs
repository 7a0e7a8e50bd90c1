//! A route whose upstream is down.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use replink_tests::*;

/// A route to a closed port: each client of the forward end is closed at once (EOF or reset,
/// not left hanging), the reverse end logs `upstream_connect_failed` for the route and sends
/// an internal_error alert that the forward end logs, and a
/// transfer on a live route through the same reverse end carries on.
#[test]
fn closed_upstream_port_closes_the_client_quickly() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let opts = PairOptions::default();
    let mut reverse = start_reverse(
        &pki,
        &[("dead.repl.test", dead), (ROUTE, server.addr())],
        &opts,
    );
    let mut dead_fwd = start_forward(&pki, reverse.addr(), "dead.repl.test", &opts);
    let live_fwd = start_forward(&pki, reverse.addr(), ROUTE, &opts);

    let live = Transfer::new(run_seed() ^ 0xdead, 24 << 20, 24 << 20).compressible(true);
    let (resume, paused) = std::sync::mpsc::channel();
    let addr = live_fwd.addr();
    let live_thread = std::thread::spawn(move || run_transfer_paused(addr, live, 8 << 20, paused));

    const ATTEMPTS: usize = 3;
    for i in 0..ATTEMPTS {
        let started = Instant::now();
        let mut c = TcpStream::connect(dead_fwd.addr()).expect("the forward end accepts");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = c.write_all(b"*1\r\n$4\r\nPING\r\n");
        let mut buf = [0u8; 1024];
        let outcome = loop {
            match c.read(&mut buf) {
                Ok(0) => break "EOF".to_string(),
                Ok(n) => panic!("attempt {i}: {n} bytes from a route with no upstream"),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!(
                        "attempt {i}: client left hanging for {:?}",
                        started.elapsed()
                    )
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break format!("{e}"),
            }
        };
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "attempt {i}: closed ({outcome}) only after {took:?}"
        );
    }
    reverse.wait_count(
        r#"route="?dead\.repl\.test"?\s.*reason="?upstream_connect_failed\b"#,
        ATTEMPTS,
    );
    // The reverse end says why in TLS (a fatal internal_error alert, not a bare FIN that would
    // read as truncation), and the forward end logs it.
    dead_fwd.wait_count(r#"closed.*reason="?peer_alert\b.*InternalError"#, ATTEMPTS);
    assert!(
        !live_thread.is_finished(),
        "the live transfer ended early: {:?}",
        live_thread.join().map(|r| verify_transfer(&server, &r))
    );
    resume.send(()).expect("transfer waits");
    let report = live_thread.join().expect("transfer thread");
    verify_transfer(&server, &report).expect("the live route carries on");
    reverse.wait_count(r#"closed.*route="?pg\.repl\.test"?\s.*reason="?done"#, 1);

    // Once the upstream is up, the same route works.
    let listener = std::net::TcpListener::bind(dead).expect("the dead port is free again");
    let upstream = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.write_all(b"up now").expect("greet");
    });
    let mut c = TcpStream::connect(dead_fwd.addr()).expect("connect");
    c.set_read_timeout(Some(patience())).expect("timeout");
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("read");
    assert_eq!(got, b"up now");
    upstream.join().expect("upstream thread");
    reverse.assert_running();
    dead_fwd.assert_running();
}

/// Failover: a route's target list is tried in order. With the primary's port closed, the
/// backup carries a byte-exact transfer and the connection's line names it, with
/// `failed_over=1`; a forward end whose first remote appliance is down does the same. A route
/// whose every upstream is down refuses its client promptly (`upstream_connect_failed`,
/// `failed_over=2`).
#[test]
fn target_lists_fail_over_in_order() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dead2 = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let opts = PairOptions {
        extra_reverse: strings(&[
            "--route",
            &format!("{ROUTE}={dead},{}", server.addr()),
            "--route",
            &format!("down.repl.test={dead},{dead2}"),
        ]),
        ..PairOptions::default()
    };
    let reverse = start_reverse(&pki, &[], &opts);
    let identity = (
        pki.files.client_cert.as_path(),
        pki.files.client_key.as_path(),
    );
    let mut args = forward_command(&pki, identity, reverse.addr(), ROUTE, &opts);
    let at = args.iter().position(|a| a == "--target").unwrap() + 1;
    args[at] = format!("{dead2},{}", reverse.addr());
    let forward = ReplinkProcess::spawn(&args);

    let t = Transfer::new(run_seed() ^ 0xfa11, 4 << 20, 4 << 20).compressible(true);
    let report = run_transfer(forward.addr(), t);
    verify_transfer(&server, &report).unwrap();
    reverse.wait_count(r#"closed .*reason="done""#, 1);
    forward.wait_count(r#"closed .*reason="done""#, 1);
    let line = &reverse.conn_lines()[0];
    assert_eq!(
        line.get("upstream"),
        Some(&*server.addr().to_string()),
        "{}",
        line.raw
    );
    assert_eq!(line.num("failed_over"), 1, "{}", line.raw);
    let line = &forward.conn_lines()[0];
    assert_eq!(
        line.get("upstream"),
        Some(&*reverse.addr().to_string()),
        "{}",
        line.raw
    );
    assert_eq!(line.num("failed_over"), 1, "{}", line.raw);

    let down = start_forward(
        &pki,
        reverse.addr(),
        "down.repl.test",
        &PairOptions::default(),
    );
    let started = Instant::now();
    let mut c = TcpStream::connect(down.addr()).expect("the forward end accepts");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(b"hello");
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "bytes from a route with no upstream");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    reverse.wait_count(r#"reason="upstream_connect_failed""#, 1);
    let refused = reverse
        .conn_lines()
        .into_iter()
        .find(|l| l.get("reason") == Some("upstream_connect_failed"))
        .unwrap();
    assert_eq!(refused.num("failed_over"), 2, "{}", refused.raw);
}
