//! Clients that must not get through, and configurations that must not start.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use replink_tests::*;

fn try_client(
    reverse: &ReplinkProcess,
    servername: &str,
    cert: Option<(&Path, &Path)>,
    ca: &Path,
) -> CmdOutput {
    let out = s_client(
        reverse.addr(),
        servername,
        ca,
        cert,
        &["-quiet"],
        Input::Bytes(b"hello\n"),
        Duration::from_secs(20),
    );
    assert!(!out.timed_out(), "`{}` hung:\n{}", out.command, out.text());
    eprintln!("--- {}:\n{}", out.command, out.text());
    out
}

/// Reads until the peer closes; panics if it does not within `limit`.
fn expect_closed(mut conn: TcpStream, limit: Duration, what: &str) -> usize {
    conn.set_read_timeout(Some(limit)).expect("timeout");
    let started = Instant::now();
    let mut got = 0;
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: still open after {:?}", started.elapsed())
            }
            // A reset is a close too.
            Err(_) => return got,
        }
    }
}

/// Each bad client is refused with the matching TLS alert and exactly one `refused` line
/// with the right reason, while a transfer through the same pair is in flight (paused half
/// way through its upload) and completes intact afterwards.
#[test]
fn bad_clients_are_refused_while_a_transfer_carries_on() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let (mut reverse, mut forward) = start_pair(&pki, server.addr(), &PairOptions::default());
    let long = Transfer::new(run_seed() ^ 0x7e, 48 << 20, 48 << 20).compressible(true);
    let (resume, paused) = std::sync::mpsc::channel();
    let addr = forward.addr();
    let long_thread = std::thread::spawn(move || run_transfer_paused(addr, long, 16 << 20, paused));

    let p = &pki.files;
    let x = &pki.extra;
    let out = try_client(&reverse, ROUTE, None, &p.ca_pem);
    assert!(
        out.text().contains("certificate required"),
        "no client certificate:\n{}",
        out.text()
    );
    let out = try_client(
        &reverse,
        ROUTE,
        Some((&x.other_ca_client_cert, &x.other_ca_client_key)),
        &p.ca_pem,
    );
    assert!(
        out.text().contains("unknown ca"),
        "another CA's certificate:\n{}",
        out.text()
    );
    let out = try_client(
        &reverse,
        ROUTE,
        Some((&x.expired_client_cert, &x.expired_client_key)),
        &p.ca_pem,
    );
    assert!(
        out.text().contains("certificate expired"),
        "expired certificate:\n{}",
        out.text()
    );
    let out = try_client(
        &reverse,
        "nope.other.test",
        Some((&p.client_cert, &p.client_key)),
        &p.ca_pem,
    );
    assert!(
        out.text().contains("unrecognized name"),
        "unknown SNI:\n{}",
        out.text()
    );
    // 10 KiB of garbage: closed, not answered with data.
    let mut g = TcpStream::connect(reverse.addr()).expect("connect");
    let garbage: Vec<u8> = (0..10_240u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = g.write_all(&garbage);
    let answered = expect_closed(g, Duration::from_secs(10), "garbage connection");
    assert!(
        answered <= 7,
        "garbage got {answered} bytes back (an alert is at most 7)"
    );

    assert!(
        !long_thread.is_finished(),
        "the paused transfer ended early: {:?}",
        long_thread.join().map(|r| verify_transfer(&server, &r))
    );
    for reason in [
        "no_client_cert",
        "unknown_ca",
        "cert_expired",
        "unknown_sni",
        "bad_client_hello",
    ] {
        reverse.wait_count(&format!(r#"\brefused\b.*reason="?{reason}\b"#), 1);
    }
    assert_eq!(reverse.count(r"\brefused\b"), 5, "{}", reverse.log());

    resume.send(()).expect("transfer waits");
    let report = long_thread.join().expect("transfer thread");
    verify_transfer(&server, &report).expect("the concurrent transfer is intact");
    forward.wait_count(r#"closed.*reason="?done"#, 1);
    reverse.wait_count(r#"closed.*reason="?done"#, 1);
    assert_eq!(forward.count(r"\brefused\b"), 0, "{}", forward.log());
    reverse.assert_running();
    forward.assert_running();
}

/// A client that starts a handshake and goes silent is cut at the handshake timeout.
#[test]
fn silent_client_hits_the_handshake_timeout() {
    let pki = Pki::new();
    let echo = EchoServer::start();
    let opts = PairOptions {
        extra_reverse: strings(&["--handshake-timeout", "1s"]),
        ..PairOptions::default()
    };
    let mut reverse = start_reverse(&pki, &[(ROUTE, echo.addr())], &opts);
    let mut c = TcpStream::connect(reverse.addr()).expect("connect");
    c.write_all(&[0x16, 3, 1]).expect("send a record header");
    let started = Instant::now();
    expect_closed(c, Duration::from_secs(10), "silent client");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "closed after {took:?}, want ~1s"
    );
    reverse.wait_count(r#"\brefused\b.*reason="?handshake_timeout\b"#, 1);
    reverse.assert_running();
}

fn reverse_args(pki: &Pki, cert: &Path, key: Option<&Path>) -> Vec<String> {
    let mut args = strings(&[
        "reverse-proxy",
        "--listen",
        "127.0.0.1:0",
        "--route",
        "pg.repl.test=127.0.0.1:1",
        "--cert",
        s(cert),
        "--ca",
        s(&pki.files.ca_pem),
    ]);
    if let Some(key) = key {
        args.extend(strings(&["--key", s(key)]));
    }
    args
}

fn copy_with_mode(from: &Path, to: &Path, mode: u32) {
    std::fs::copy(from, to).expect("copy");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A private key readable by others stops the process, naming the file and the fix.
#[test]
fn world_readable_key_is_refused_with_the_fix() {
    let pki = Pki::new();
    let key = pki.dir().join("loose-server.key");
    copy_with_mode(&pki.files.server_key, &key, 0o644);
    let (_, err) =
        run_replink_expect_failure(&reverse_args(&pki, &pki.files.server_cert, Some(&key)));
    assert!(
        err.contains("loose-server.key") && err.contains("chmod 600"),
        "{err}"
    );

    // The same for a combined key+cert file used without --key.
    let combined = pki.dir().join("loose-combined.pem");
    copy_with_mode(&pki.extra.combined_client_pem, &combined, 0o644);
    let args = strings(&[
        "forward-proxy",
        "--listen",
        "127.0.0.1:0",
        "--target",
        "127.0.0.1:1",
        "--sni",
        ROUTE,
        "--cert",
        s(&combined),
        "--ca",
        s(&pki.files.ca_pem),
    ]);
    let (_, err) = run_replink_expect_failure(&args);
    assert!(
        err.contains("loose-combined.pem") && err.contains("chmod 600"),
        "{err}"
    );
    // With mode 0600 the same file is accepted (the failure above was the mode).
    std::fs::set_permissions(&combined, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut ok = ReplinkProcess::spawn(&args);
    ok.assert_running();
}

/// Missing and wrong files are named in the error.
#[test]
fn missing_and_wrong_files_are_named() {
    let pki = Pki::new();
    let missing = pki.dir().join("no-such-dir").join("server.pem");
    let (_, err) =
        run_replink_expect_failure(&reverse_args(&pki, &missing, Some(&pki.files.server_key)));
    assert!(err.contains(s(&missing)), "{err}");

    let missing_key = pki.dir().join("absent.key");
    let (_, err) = run_replink_expect_failure(&reverse_args(
        &pki,
        &pki.files.server_cert,
        Some(&missing_key),
    ));
    assert!(err.contains(s(&missing_key)), "{err}");

    // A key that does not belong to the certificate.
    let (_, err) = run_replink_expect_failure(&reverse_args(
        &pki,
        &pki.files.server_cert,
        Some(&pki.files.client_key),
    ));
    assert!(
        err.contains("client.key") && err.contains("does not match"),
        "{err}"
    );
    // A certificate file with no certificate in it.
    let (_, err) = run_replink_expect_failure(&reverse_args(
        &pki,
        &pki.files.server_key,
        Some(&pki.files.server_key),
    ));
    assert!(err.contains("no CERTIFICATE"), "{err}");
}

/// Malformed flags are explained.
#[test]
fn bad_flags_are_explained() {
    let pki = Pki::new();
    let mut args = reverse_args(&pki, &pki.files.server_cert, Some(&pki.files.server_key));
    args[4] = "not-a-route".into();
    let (_, err) = run_replink_expect_failure(&args);
    assert!(
        err.contains("not-a-route") && err.contains("SNI=HOST:PORT"),
        "{err}"
    );
    let mut args = reverse_args(&pki, &pki.files.server_cert, Some(&pki.files.server_key));
    args.extend(strings(&["--zstd-level", "99"]));
    let (_, err) = run_replink_expect_failure(&args);
    assert!(err.contains("--zstd-level 99"), "{err}");
}

/// A client that sends a real ClientHello (rustls', from the corpus), reads the server's
/// flight and then sends garbage where its next records should be: it gets an alert or a
/// close, never a crashed worker. With one worker, a transfer through the same reverse end
/// still works afterwards, and nothing panicked.
#[test]
fn garbage_after_the_client_hello_does_not_crash_a_worker() {
    use rand::{RngCore, SeedableRng};
    let pki = Pki::new();
    let server = StreamServer::start();
    let opts = PairOptions {
        workers: 1,
        ..PairOptions::default()
    };
    let (reverse, forward) = start_pair(&pki, server.addr(), &opts);
    let hello = std::fs::read(workspace_root().join("ebpf/corpus/routed-rustls-exact.bin"))
        .expect("corpus ClientHello");
    let mut rng = rand::rngs::StdRng::seed_from_u64(run_seed() ^ 0x6a7b);
    for round in 0..20 {
        let mut c = TcpStream::connect(reverse.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&hello).unwrap();
        let mut buf = [0u8; 16384];
        let n = c.read(&mut buf).unwrap_or(0);
        assert!(n > 0, "round {round}: no server flight:\n{}", reverse.log());
        let mut junk = vec![0u8; 64 + (round * 37) % 400];
        rng.fill_bytes(&mut junk);
        if round % 2 == 0 {
            // Looks like a record header first, so the record layer gets further.
            junk[..3].copy_from_slice(&[0x17, 0x03, 0x03]);
        }
        let _ = c.write_all(&junk);
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    }
    let t = Transfer::new(run_seed() ^ 0x6a7c, 1 << 20, 1 << 20);
    verify_transfer(&server, &run_transfer(forward.addr(), t)).unwrap();
    assert_eq!(reverse.count("panicked"), 0, "{}", reverse.log());
}
