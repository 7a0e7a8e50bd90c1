//! Per-route `allow` rules: which client certificates may reach which route.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use replink_pki::LeafSpec;
use replink_tests::*;

/// SHA-256 of a certificate's SubjectPublicKeyInfo, computed by OpenSSL (the oracle for
/// `spki-sha256:`).
fn spki_sha256(cert: &std::path::Path) -> String {
    let out = run_cmd(
        "sh",
        &[
            "-c",
            &format!(
                "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform DER | sha256sum",
                s(cert)
            ),
        ],
        Input::Null,
        Duration::from_secs(20),
    );
    assert!(out.success(), "{}", out.text());
    out.stdout_text()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A table of three client certificates (all signed by the CA) × routes with one kind of rule
/// each: a match carries a byte-exact transfer; no match is refused after the handshake with
/// the `access_denied` alert (the forward end logs it), a `refused reason=access_denied` line
/// naming the certificate, and no byte to the upstream. A route without rules takes all
/// three; rules of one route do not leak to another.
#[test]
fn allow_rules_table() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let spec = |cn: &str| LeafSpec::client(cn);
    let a = pki.issue_client_with(
        "replica-a",
        &LeafSpec {
            dns_names: vec!["a.replica.test".into()],
            uris: vec!["spiffe://repl.test/replica/a".into()],
            org_unit: Some("db".into()),
            ..spec("replica-a")
        },
    );
    let b = pki.issue_client_with(
        "replica-b",
        &LeafSpec {
            uris: vec!["spiffe://repl.test/replica/b".into()],
            ..spec("replica-b")
        },
    );
    let c = pki.issue_client("signed-but-unlisted");
    let pin_a = spki_sha256(&a.cert);

    // (route, rules, which of a/b/c may pass)
    let table: Vec<(&str, Vec<String>, [bool; 3])> = vec![
        (
            "cn.repl.test",
            vec!["cn:replica-a".into()],
            [true, false, false],
        ),
        ("ou.repl.test", vec!["ou:db".into()], [true, false, false]),
        (
            "dns.repl.test",
            vec!["dns:A.Replica.test".into()],
            [true, false, false],
        ),
        (
            "uri.repl.test",
            vec!["uri:spiffe://repl.test/replica/b".into()],
            [false, true, false],
        ),
        (
            "spki.repl.test",
            vec![format!("spki-sha256:{pin_a}")],
            [true, false, false],
        ),
        (
            "any-of.repl.test",
            vec![
                "cn:nobody".into(),
                "uri:spiffe://repl.test/replica/b".into(),
                "cn:signed-but-unlisted".into(),
            ],
            [false, true, true],
        ),
        ("open.repl.test", vec![], [true, true, true]),
    ];
    let mut extra = Vec::new();
    for (route, rules, _) in &table {
        extra.push("--route".to_string());
        extra.push(format!("{route}={}", server.addr()));
        for rule in rules {
            extra.push("--allow".to_string());
            extra.push(format!("{route}={rule}"));
        }
    }
    let opts = PairOptions {
        extra_reverse: extra,
        ..PairOptions::default()
    };
    let reverse = start_reverse(&pki, &[], &opts);
    let clients = [
        ("replica-a", &a),
        ("replica-b", &b),
        ("signed-but-unlisted", &c),
    ];
    let mut denied = 0;
    let mut allowed_count = 0;
    let mut seed = run_seed() ^ 0xa11;
    for (route, rules, expect) in &table {
        for ((name, id), allowed) in clients.iter().zip(expect) {
            let forward = start_forward_as(
                &pki,
                (id.cert.as_path(), id.key.as_path()),
                reverse.addr(),
                route,
                &PairOptions::default(),
            );
            if *allowed {
                allowed_count += 1;
                seed += 1;
                let report = run_transfer(forward.addr(), Transfer::new(seed, 64 << 10, 64 << 10));
                verify_transfer(&server, &report)
                    .unwrap_or_else(|e| panic!("{name} on {route} {rules:?}: {e}"));
            } else {
                denied += 1;
                let mut conn = TcpStream::connect(forward.addr()).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let _ = conn.write_all(&[0x5a; 256]);
                let mut buf = [0u8; 64];
                let n = conn.read(&mut buf).unwrap_or(0);
                assert_eq!(n, 0, "{name} on {route}: bytes came back");
                reverse.wait_count(r#"refused .*reason="access_denied""#, denied);
                forward.wait_count("AccessDenied", 1);
                let line = reverse
                    .conn_lines()
                    .into_iter()
                    .rfind(|l| l.get("reason") == Some("access_denied"))
                    .unwrap();
                assert_eq!(line.get("route"), Some(*route), "{}", line.raw);
                let subject = line.get("peer_cert").unwrap_or_default();
                assert!(subject.contains(&format!("CN={name}")), "{}", line.raw);
            }
        }
    }
    // The refused clients' bytes never reached the upstream: it saw the allowed transfers
    // only (256 bytes of junk would have made a record of their own).
    assert_eq!(server.finished(), allowed_count);
}

/// `--allow` for a route that does not exist, or a malformed rule, stops start-up with the
/// reason.
#[test]
fn bad_allow_flags_stop_start_up() {
    let pki = Pki::new();
    let opts = |extra: &[&str]| PairOptions {
        extra_reverse: strings(extra),
        ..PairOptions::default()
    };
    let up = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let p = &pki.files;
    for (extra, needle) in [
        (
            vec!["--allow", "other.repl.test=cn:x"],
            "no --route for other.repl.test",
        ),
        (
            vec!["--allow", &format!("{ROUTE}=email:x@y")],
            "unknown kind \"email\"",
        ),
        (
            vec!["--allow", &format!("{ROUTE}=spki-sha256:abc")],
            "expected 64 hex digits",
        ),
    ] {
        let args = reverse_command(
            &pki,
            (&p.server_cert, &p.server_key),
            &[(ROUTE, up)],
            &opts(&extra),
        );
        let (_, stderr) = run_replink_expect_failure(&args);
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}
