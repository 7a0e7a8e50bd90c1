//! `--crl`: certificate revocation lists on both ends, and the CRLs that must stop start-up.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration as StdDuration;

use replink_tests::*;
use time::{Duration, OffsetDateTime};

/// Writes `NAME` in the PKI's dir: a CRL of `ca` revoking `serials`, whose nextUpdate is
/// `next_update_in` from now (negative: already expired).
fn write_crl(
    pki: &Pki,
    ca: &replink_pki::Ca,
    name: &str,
    serials: &[&[u8]],
    next_update_in: Duration,
) -> PathBuf {
    let now = OffsetDateTime::now_utc();
    let next_update = now + next_update_in;
    let this_update = now.min(next_update) - Duration::hours(1);
    let pem = ca
        .crl_pem(serials, 1, this_update, next_update)
        .expect("sign CRL");
    let path = pki.dir().join(name);
    std::fs::write(&path, pem).expect("write CRL");
    path
}

fn with_crl(crl: &Path) -> Vec<String> {
    strings(&["--crl", s(crl)])
}

/// Connects to a forward end, sends a line and reads until the connection ends; panics if
/// any byte comes back or it stays open.
fn expect_no_data(forward: SocketAddr, what: &str) {
    let mut c = TcpStream::connect(forward).expect("the forward end accepts");
    c.set_read_timeout(Some(patience())).expect("timeout");
    let _ = c.write_all(b"ping\n");
    let mut buf = [0u8; 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => panic!("{what}: {n} bytes came back"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: still open after {:?}", patience())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset is a close too.
            Err(_) => return,
        }
    }
}

/// `ping` through a forward end in front of an echo route comes back.
fn expect_echo(forward: SocketAddr) {
    let mut c = TcpStream::connect(forward).expect("the forward end accepts");
    c.set_read_timeout(Some(patience())).expect("timeout");
    c.write_all(b"ping\n").expect("send");
    c.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("echo");
    assert_eq!(got, b"ping\n");
}

/// A reverse end with the PKI's server identity and `extra` flags, routing to a closed port
/// (these tests only start it, or expect it not to start).
fn reverse_args(pki: &Pki, extra: &[String]) -> Vec<String> {
    let p = &pki.files;
    let opts = PairOptions {
        extra_reverse: extra.to_vec(),
        ..PairOptions::default()
    };
    let closed = SocketAddr::from(([127, 0, 0, 1], 1));
    reverse_command(
        pki,
        (&p.server_cert, &p.server_key),
        &[(ROUTE, closed)],
        &opts,
    )
}

/// Two clients of the same CA against one reverse end with a CRL that lists one of them: the
/// listed client's connections are refused with `certificate_revoked` (in the log, and as the
/// TLS alert that its forward end logs and `openssl s_client` prints) and reach no upstream,
/// while the other client's transfer, in flight the whole time, arrives byte-exact.
#[test]
fn revoked_client_is_refused_while_another_transfers() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let revoked = pki.issue_client("revoked-client");
    let kept = pki.issue_client("kept-client");
    let crl = write_crl(
        &pki,
        pki.files.ca(),
        "ca.crl.pem",
        &[&revoked.serial],
        Duration::days(7),
    );
    let opts = PairOptions {
        extra_reverse: with_crl(&crl),
        ..PairOptions::default()
    };
    let mut reverse = start_reverse(&pki, &[(ROUTE, server.addr())], &opts);
    reverse.wait_count(
        r#"revocation list loaded.*ca="?CN=replink throwaway CA"?.*revoked_serials=1\b"#,
        1,
    );
    let revoked_fwd = start_forward_as(
        &pki,
        (&revoked.cert, &revoked.key),
        reverse.addr(),
        ROUTE,
        &opts,
    );
    let kept_fwd = start_forward_as(&pki, (&kept.cert, &kept.key), reverse.addr(), ROUTE, &opts);

    let long = Transfer::new(run_seed() ^ 0xc71, 24 << 20, 24 << 20).compressible(true);
    let (resume, paused) = std::sync::mpsc::channel();
    let addr = kept_fwd.addr();
    let long_thread = std::thread::spawn(move || run_transfer_paused(addr, long, 8 << 20, paused));

    // Through the forward end: the transfer protocol, so the upstream would file a record
    // for this seed if a single byte reached it. The upload is large so that the forward end
    // is still writing when the reverse end resets the connection behind its alert: the log
    // must name the alert, not the reset.
    let refused_seed = run_seed() ^ 0xdead_0c71;
    let report = run_transfer(
        revoked_fwd.addr(),
        Transfer::new(refused_seed, 16 << 20, 64 << 10),
    );
    assert_eq!(report.received, 0, "the revoked client got data back");
    revoked_fwd.wait_count(r#"reason="?peer_alert\b.*CertificateRevoked"#, 1);
    // Straight from openssl: the alert on the wire.
    let out = s_client(
        reverse.addr(),
        ROUTE,
        &pki.files.ca_pem,
        Some((&revoked.cert, &revoked.key)),
        &["-quiet"],
        Input::Bytes(b"hello\n"),
        StdDuration::from_secs(20),
    );
    assert!(!out.timed_out(), "`{}` hung:\n{}", out.command, out.text());
    assert!(
        out.text().contains("certificate revoked"),
        "openssl with the revoked certificate:\n{}",
        out.text()
    );
    reverse.wait_count(r#"\brefused\b.*reason="?certificate_revoked\b"#, 2);

    assert!(
        !long_thread.is_finished(),
        "the paused transfer ended early: {:?}",
        long_thread.join().map(|r| verify_transfer(&server, &r))
    );
    resume.send(()).expect("transfer waits");
    let report = long_thread.join().expect("transfer thread");
    verify_transfer(&server, &report).expect("the other client's transfer is intact");
    reverse.wait_count(r#"closed.*peer_cert="?CN=kept-client"?.*reason="?done"#, 1);
    assert_eq!(reverse.count(r"\brefused\b"), 2, "{}", reverse.log());
    assert!(
        server.record(refused_seed, StdDuration::ZERO).is_none(),
        "the revoked client's bytes reached the upstream"
    );
    assert_eq!(
        server.finished(),
        1,
        "only the kept client reached the upstream"
    );
    reverse.assert_running();
}

/// A forward end with a CRL that lists the server certificate refuses that server
/// (`certificate_revoked`, and the reverse end logs the alert); the same forward end accepts
/// the PKI's other server certificate.
#[test]
fn forward_end_refuses_a_revoked_server_certificate() {
    let pki = Pki::new();
    let echo = EchoServer::start();
    let server = pki.issue_server("revoked-server", &[ROUTE], &[IpAddr::from([127, 0, 0, 1])]);
    let crl = write_crl(
        &pki,
        pki.files.ca(),
        "ca.crl.pem",
        &[&server.serial],
        Duration::days(7),
    );
    let opts = PairOptions {
        extra_forward: with_crl(&crl),
        ..PairOptions::default()
    };
    let routes = [(ROUTE, echo.addr())];
    let revoked_reverse = start_reverse_as(&pki, (&server.cert, &server.key), &routes, &opts);
    let forward = start_forward(&pki, revoked_reverse.addr(), ROUTE, &opts);
    expect_no_data(forward.addr(), "a revoked server");
    forward.wait_count(r#"\brefused\b.*reason="?certificate_revoked\b"#, 1);
    revoked_reverse.wait_count(
        r#"\brefused\b.*reason="?peer_alert\b.*CertificateRevoked"#,
        1,
    );

    let good_reverse = start_reverse(&pki, &routes, &opts);
    let forward = start_forward(&pki, good_reverse.addr(), ROUTE, &opts);
    expect_echo(forward.addr());
    forward.wait_count(r#"closed.*reason="?done"#, 1);
}

/// An expired CRL stops start-up, naming the file, the time and both ways out; with
/// `--allow-expired-crl` the process starts, still refuses what the CRL lists, and serves the
/// rest.
#[test]
fn expired_crl_stops_start_up_unless_allowed() {
    let pki = Pki::new();
    let echo = EchoServer::start();
    let revoked = pki.issue_client("revoked-client");
    let crl = write_crl(
        &pki,
        pki.files.ca(),
        "stale.crl.pem",
        &[&revoked.serial],
        -Duration::hours(2),
    );
    let (_, err) = run_replink_expect_failure(&reverse_args(&pki, &with_crl(&crl)));
    for want in [
        "stale.crl.pem",
        "expired at",
        "replink-pki generate-crl",
        "--allow-expired-crl",
    ] {
        assert!(err.contains(want), "want {want:?} in: {err}");
    }

    let mut extra = with_crl(&crl);
    extra.push("--allow-expired-crl".into());
    let opts = PairOptions {
        extra_reverse: extra,
        ..PairOptions::default()
    };
    let mut reverse = start_reverse(&pki, &[(ROUTE, echo.addr())], &opts);
    reverse.wait_count(r"revocation list expired; used anyway", 1);
    let fwd = start_forward(&pki, reverse.addr(), ROUTE, &PairOptions::default());
    expect_echo(fwd.addr());
    let revoked_fwd = start_forward_as(
        &pki,
        (&revoked.cert, &revoked.key),
        reverse.addr(),
        ROUTE,
        &PairOptions::default(),
    );
    expect_no_data(revoked_fwd.addr(), "a client in the expired CRL");
    reverse.wait_count(r#"\brefused\b.*reason="?certificate_revoked\b"#, 1);
    reverse.assert_running();

    // --allow-expired-crl alone is a mistake worth a message.
    let (_, err) =
        run_replink_expect_failure(&reverse_args(&pki, &strings(&["--allow-expired-crl"])));
    assert!(err.contains("--crl"), "{err}");
}

/// A CRL that passes its nextUpdate while the process runs fails closed: new handshakes with
/// certificates of that CA are refused with `crl_expired`.
#[test]
fn crl_expiring_while_running_fails_closed() {
    let pki = Pki::new();
    let echo = EchoServer::start();
    // The first test of a run builds the binary; the CRL's few seconds start after that.
    replink_bin();
    let valid_for = Duration::seconds(3);
    let crl = write_crl(&pki, pki.files.ca(), "short.crl.pem", &[], valid_for);
    let expires = std::time::Instant::now() + StdDuration::try_from(valid_for).expect("positive");
    let opts = PairOptions {
        extra_reverse: with_crl(&crl),
        ..PairOptions::default()
    };
    let reverse = start_reverse(&pki, &[(ROUTE, echo.addr())], &opts);
    // Past nextUpdate (CRL times have whole seconds). A forward end started only now has no
    // session ticket, so it makes a full handshake.
    std::thread::sleep(expires.saturating_duration_since(std::time::Instant::now()));
    std::thread::sleep(StdDuration::from_millis(1500));
    let fwd = start_forward(&pki, reverse.addr(), ROUTE, &PairOptions::default());
    expect_no_data(fwd.addr(), "a client whose CA's CRL has expired");
    reverse.wait_count(r#"\brefused\b.*reason="?crl_expired\b"#, 1);
}

/// A CRL that no CA of `--ca` signed, and files that are not CRLs, stop start-up with the
/// file and the reason, on either end.
#[test]
fn foreign_and_corrupt_crls_stop_start_up() {
    let pki = Pki::new();
    let other = replink_pki::Ca::new("some other CA").expect("CA");
    let foreign = write_crl(&pki, &other, "foreign.crl.pem", &[], Duration::days(7));
    let (_, err) = run_replink_expect_failure(&reverse_args(&pki, &with_crl(&foreign)));
    assert!(
        err.contains("foreign.crl.pem")
            && err.contains("not signed by any CA certificate")
            && err.contains("CN=some other CA"),
        "{err}"
    );
    let forward = forward_command(
        &pki,
        (&pki.files.client_cert, &pki.files.client_key),
        SocketAddr::from(([127, 0, 0, 1], 1)),
        ROUTE,
        &PairOptions {
            extra_forward: with_crl(&foreign),
            ..PairOptions::default()
        },
    );
    let (_, err) = run_replink_expect_failure(&forward);
    assert!(
        err.contains("foreign.crl.pem") && err.contains("not signed by any CA certificate"),
        "{err}"
    );

    // The same good CRL in DER starts; cut short it does not. Nor do random bytes, or a
    // certificate passed as a CRL.
    let good = write_crl(&pki, pki.files.ca(), "good.crl.pem", &[], Duration::days(7));
    let good_der = pki.dir().join("good.crl");
    let out = run_cmd(
        "openssl",
        &[
            "crl",
            "-in",
            s(&good),
            "-outform",
            "DER",
            "-out",
            s(&good_der),
        ],
        Input::Null,
        patience(),
    );
    assert!(out.success(), "`{}`:\n{}", out.command, out.text());
    let mut started = ReplinkProcess::spawn(&reverse_args(&pki, &with_crl(&good_der)));
    started.assert_running();
    let der = std::fs::read(&good_der).expect("read DER CRL");
    let truncated = pki.dir().join("truncated.crl");
    std::fs::write(&truncated, &der[..der.len() - 20]).expect("write");
    let noise = pki.dir().join("noise.crl");
    std::fs::write(&noise, b"\x30\x82\x01\x00 this is not a CRL at all").expect("write");
    for (file, want) in [
        (&truncated, "not a CRL"),
        (&noise, "not a CRL"),
        (
            &pki.files.server_cert,
            "no `-----BEGIN X509 CRL-----` section",
        ),
    ] {
        let (_, err) = run_replink_expect_failure(&reverse_args(&pki, &with_crl(file)));
        assert!(err.contains(s(file)) && err.contains(want), "{err}");
    }
}
