use std::io::Write;
use std::net::TcpStream;

use replink_tests::*;

fn s_client(reverse: &Replink, servername: &str, cert: Option<(&str, &str)>, ca: &str) -> String {
    let connect = reverse.addr.to_string();
    let mut args = vec![
        "s_client",
        "-connect",
        &connect,
        "-servername",
        servername,
        "-CAfile",
        ca,
        "-quiet",
    ];
    if let Some((c, k)) = cert {
        args.extend(["-cert", c, "-key", k]);
    }
    let (_, stdout, stderr) = run("openssl", &args, Some(b"hello\n"), 20);
    format!("{}{}", String::from_utf8_lossy(&stdout), stderr)
}

/// Each bad client is refused with the matching alert and one `refused` log line, while a
/// transfer through the same reverse end completes intact.
#[test]
fn bad_clients_are_refused_and_others_carry_on() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let (reverse, forward) = start_pair(&pki, server.addr, &PairOptions::default());
    let addr = forward.addr;
    let long = std::thread::spawn(move || transfer(addr, 77, 48 << 20, 48 << 20, false));

    let p = &pki.pki;
    let x = &pki.extra;
    let ca = s(&p.ca_pem);
    let out = s_client(&reverse, ROUTE, None, ca);
    assert!(
        out.contains("certificate required"),
        "no client cert: {out}"
    );
    let out = s_client(
        &reverse,
        ROUTE,
        Some((s(&x.other_ca_client_cert), s(&x.other_ca_client_key))),
        ca,
    );
    assert!(out.contains("unknown ca"), "other CA: {out}");
    let out = s_client(
        &reverse,
        ROUTE,
        Some((s(&x.expired_client_cert), s(&x.expired_client_key))),
        ca,
    );
    assert!(out.contains("certificate expired"), "expired: {out}");
    let out = s_client(
        &reverse,
        "nope.other.test",
        Some((s(&p.client_cert), s(&p.client_key))),
        ca,
    );
    assert!(out.contains("unrecognized name"), "unknown SNI: {out}");

    // Garbage: the connection is closed, nothing else notices.
    let mut g = TcpStream::connect(reverse.addr).unwrap();
    let garbage: Vec<u8> = (0..10_240u32).map(|i| (i * 7 + 3) as u8).collect();
    let _ = g.write_all(&garbage);
    g.set_read_timeout(Some(patience())).unwrap();
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut g, &mut sink);
    assert!(
        sink.len() < 16,
        "garbage got a reply of {} bytes",
        sink.len()
    );

    long.join()
        .unwrap()
        .expect("the concurrent transfer survives");
    check_upstream(&server, 77, 48 << 20, false).expect("upstream bytes intact");
    eventually("refusals logged", || {
        reverse.count(r#"refused.*reason="?no_client_cert"#) == 1
            && reverse.count(r#"refused.*reason="?unknown_ca"#) == 1
            && reverse.count(r#"refused.*reason="?cert_expired"#) == 1
            && reverse.count(r#"refused.*reason="?unknown_sni"#) == 1
            && reverse.count(r#"refused.*reason="?bad_client_hello"#) == 1
    });
}

/// A client that sends nothing is cut at the handshake timeout.
#[test]
fn silent_client_hits_handshake_timeout() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let opts = PairOptions {
        extra_reverse: strings(&["--handshake-timeout", "1s"]),
        ..PairOptions::default()
    };
    let reverse = start_reverse(&pki, &[(ROUTE, server.addr)], &opts);
    let mut c = TcpStream::connect(reverse.addr).unwrap();
    c.write_all(&[0x16, 3, 1]).unwrap();
    c.set_read_timeout(Some(patience())).unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut c, &mut buf);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    eventually("timeout logged", || {
        reverse.count(r#"refused.*reason="?handshake_timeout"#) == 1
    });
}
