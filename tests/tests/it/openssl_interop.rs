//! A stock TLS client, `openssl s_client`, straight at the reverse end: no forward end and no
//! `replink-zstd/1` ALPN, so the route's bytes must pass through unchanged.

use replink_tests::*;

/// 4 MiB of random bytes from s_client's stdin come back exactly (the route echoes them),
/// and the reverse end logs an uncompressed connection with exact byte counts.
#[test]
fn s_client_gets_the_exact_bytes_back() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let mut reverse = start_reverse(&pki, &[(ROUTE, server.addr())], &PairOptions::default());
    let t = Transfer::new(run_seed() ^ 0x55c1, 4 << 20, 0).echo();
    let input = pki.dir().join("s_client.in");
    std::fs::write(&input, t.upload_bytes()).expect("write stdin file");
    let p = &pki.files;
    // -quiet implies -ign_eof: s_client keeps reading after its stdin ends, until the
    // server's close_notify (the echo route half-closes once it has echoed everything).
    let out = s_client(
        reverse.addr(),
        ROUTE,
        &p.ca_pem,
        Some((&p.client_cert, &p.client_key)),
        &["-verify_return_error", "-quiet"],
        Input::File(&input),
        patience(),
    );
    assert!(!out.timed_out(), "`{}` hung:\n{}", out.command, out.stderr);
    let want = t.expected_down_bytes();
    let first_diff = out.stdout.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        out.stdout.len() == want.len() && first_diff.is_none(),
        "`{}`: got {} bytes (want {}), first difference at {first_diff:?}; stderr:\n{}",
        out.command,
        out.stdout.len(),
        want.len(),
        out.stderr
    );
    let rec = server
        .record(t.seed, patience())
        .expect("the route saw the connection end");
    assert_eq!(
        (rec.received, rec.first_mismatch, rec.eof_after, rec.sent),
        (t.up, None, true, t.up),
        "what the route got from s_client"
    );
    reverse.wait_count(r#"closed.*reason="?done"#, 1);
    let l = &reverse.conn_lines()[0];
    assert_eq!(
        l.get("zstd"),
        Some("false"),
        "no ALPN, no compression: {}",
        l.raw
    );
    assert_eq!(l.get("route"), Some(ROUTE), "{}", l.raw);
    assert_eq!(l.num("tls_to_plain"), HEADER_LEN as u64 + t.up, "{}", l.raw);
    assert_eq!(l.num("plain_to_tls"), t.up, "{}", l.raw);
    assert!(
        l.get("peer_cert")
            .is_some_and(|c| c.contains("replink-demo-client")),
        "peer_cert names the client certificate: {}",
        l.raw
    );
    reverse.assert_running();
}

/// s_client with TLS 1.2 forced is refused (protocol_version alert) by default, and carries
/// exact bytes once the reverse end allows TLS 1.2 with `--tls12`.
#[test]
fn s_client_tls12_only_with_flag() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let p = &pki.files;
    let t = Transfer::new(run_seed() ^ 0x7112, 256 << 10, 0)
        .compressible(true)
        .echo();
    let input = pki.dir().join("tls12.in");
    std::fs::write(&input, t.upload_bytes()).expect("write stdin file");
    let try_tls12 = |reverse: &ReplinkProcess| {
        s_client(
            reverse.addr(),
            ROUTE,
            &p.ca_pem,
            Some((&p.client_cert, &p.client_key)),
            &["-verify_return_error", "-tls1_2", "-ign_eof"],
            Input::File(&input),
            patience(),
        )
    };
    let strict = start_reverse(&pki, &[(ROUTE, server.addr())], &PairOptions::default());
    let out = try_tls12(&strict);
    eprintln!("--- default (TLS 1.3 only):\n{}", out.text());
    assert!(
        out.text().contains("alert protocol version") && !out.text().contains("New, TLSv1.2"),
        "TLS 1.2 must be refused by default:\n{}",
        out.text()
    );
    strict.wait_count(r#"\brefused\b.*reason="?protocol_version\b"#, 1);

    let opts = PairOptions {
        extra_reverse: strings(&["--tls12"]),
        ..PairOptions::default()
    };
    let lenient = start_reverse(&pki, &[(ROUTE, server.addr())], &opts);
    let out = try_tls12(&lenient);
    eprintln!("--- with --tls12:\n{}", out.text());
    assert!(
        out.text().contains("New, TLSv1.2, Cipher is ECDHE"),
        "TLS 1.2 with --tls12:\n{}",
        out.text()
    );
    // Session details come before the data, and s_client prints "closed" after it.
    let want = t.expected_down_bytes();
    let tail = (0..=64).find(|k| {
        out.stdout.len() >= want.len() + k
            && out.stdout[out.stdout.len() - k - want.len()..out.stdout.len() - k] == want[..]
    });
    assert!(
        tail.is_some(),
        "the echo over TLS 1.2 is not at the end of s_client's output ({} bytes)",
        out.stdout.len()
    );
    lenient.wait_count(r#"\bclosed\b.*reason="?done"#, 1);
}
