//! Wildcard SNI routes, a key+certificate PEM without `--key`, and a CA bundle.

use replink_tests::*;

/// Route `*.repl.test`, reverse trusting a CA bundle (another CA first, then ours); one
/// forward end with `--sni a.repl.test`, another with `--sni b.repl.test` and a combined
/// key+cert PEM as `--cert` with no `--key`. Both carry exact bytes; an exact route wins
/// over the wildcard; a name outside the wildcard is refused.
#[test]
fn wildcard_route_combined_pem_and_ca_bundle() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let exact = EchoServer::start();
    let p = &pki.files;
    let mut args = strings(&["reverse-proxy", "--listen", "127.0.0.1:0", "--workers", "1"]);
    args.extend([
        "--route".into(),
        format!("*.repl.test={}", server.addr()),
        "--route".into(),
        format!("exact.repl.test={}", exact.addr()),
    ]);
    args.extend(strings(&[
        "--cert",
        s(&p.server_cert),
        "--key",
        s(&p.server_key),
        "--ca",
        s(&pki.extra.ca_bundle_pem),
    ]));
    let mut reverse = ReplinkProcess::spawn(&args);

    let forward_a = start_forward(&pki, reverse.addr(), "a.repl.test", &PairOptions::default());
    let mut args = strings(&[
        "forward-proxy",
        "--listen",
        "127.0.0.1:0",
        "--sni",
        "b.repl.test",
        "--workers",
        "1",
        "--target",
    ]);
    args.push(reverse.addr().to_string());
    args.extend(strings(&[
        "--cert",
        s(&pki.extra.combined_client_pem),
        "--ca",
        s(&p.ca_pem),
    ]));
    let forward_b = ReplinkProcess::spawn(&args);

    let seed = run_seed() ^ 0x3c;
    let ta = Transfer::new(seed, 3 << 20, 5 << 20).compressible(true);
    let tb = Transfer::new(seed + 1, 5 << 20, 3 << 20);
    let (a, b) = (forward_a.addr(), forward_b.addr());
    let ha = std::thread::spawn(move || run_transfer(a, ta));
    let hb = std::thread::spawn(move || run_transfer(b, tb));
    let ra = ha.join().expect("transfer a");
    let rb = hb.join().expect("transfer b");
    verify_transfer(&server, &ra).expect("--sni a.repl.test through *.repl.test");
    verify_transfer(&server, &rb).expect("combined PEM client through *.repl.test");

    // The exact route takes precedence over the wildcard.
    let forward_exact = start_forward(
        &pki,
        reverse.addr(),
        "exact.repl.test",
        &PairOptions::default(),
    );
    let mut c = std::net::TcpStream::connect(forward_exact.addr()).expect("connect");
    c.set_read_timeout(Some(patience())).expect("timeout");
    std::io::Write::write_all(&mut c, b"exact route\n").expect("send");
    c.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut c, &mut back).expect("echo back");
    assert_eq!(
        back, b"exact route\n",
        "the exact route's echo server answers"
    );

    // A name the wildcard does not cover.
    let forward_other = start_forward(
        &pki,
        reverse.addr(),
        "a.other.test",
        &PairOptions::default(),
    );
    let r = run_transfer(forward_other.addr(), Transfer::new(seed + 2, 100, 100));
    assert!(
        r.received == 0,
        "a.other.test must not reach a route: {r:?}"
    );

    reverse.wait_count(r#"closed.*route="?\*\.repl\.test"?\s.*reason="?done"#, 2);
    reverse.wait_count(r#"closed.*route="?exact\.repl\.test"?\s.*reason="?done"#, 1);
    reverse.wait_count(r#"\brefused\b.*reason="?unknown_sni\b"#, 1);
    assert_eq!(
        reverse.count(r#"closed.*peer_cert=.*combined-client"#),
        1,
        "the combined-PEM client is logged by its certificate:\n{}",
        reverse.log()
    );
    reverse.assert_running();
}
