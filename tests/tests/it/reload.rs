//! SIGHUP: reloading certificates, CRLs and routes without dropping connections.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use replink_tests::*;

/// Hundreds of reloads of both ends while four transfers run through them: every transfer
/// finishes byte-exact, each SIGHUP is logged as `reloaded`, none failed, and connections
/// made after the reloads work.
#[test]
fn reloads_under_live_transfers_drop_nothing() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let (reverse, forward) = start_pair(&pki, server.addr(), &PairOptions::default());
    let seed = run_seed() ^ 0x4e10;
    let addr = forward.addr();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let t = Transfer::new(seed + i, 24 << 20, 24 << 20).compressible(i % 2 == 0);
            std::thread::spawn(move || run_transfer(addr, t))
        })
        .collect();
    const RELOADS: usize = 200;
    for _ in 0..RELOADS {
        reverse.signal("HUP");
        forward.signal("HUP");
        std::thread::sleep(Duration::from_millis(5));
    }
    for c in clients {
        verify_transfer(&server, &c.join().unwrap()).unwrap();
    }
    reverse.wait_count("reloaded", RELOADS);
    forward.wait_count("reloaded", RELOADS);
    assert_eq!(reverse.count("reload failed"), 0, "{}", reverse.log());
    assert_eq!(forward.count("reload failed"), 0, "{}", forward.log());
    let t = Transfer::new(seed + 9, 1 << 20, 1 << 20);
    verify_transfer(&server, &run_transfer(forward.addr(), t)).unwrap();
}

/// The serial of the certificate a TLS server at `addr` presents for `sni`, as OpenSSL reads
/// it (upper-case hex).
fn served_serial(pki: &Pki, addr: SocketAddr, sni: &str) -> String {
    let p = &pki.files;
    let out = s_client(
        addr,
        sni,
        &p.ca_pem,
        Some((p.client_cert.as_path(), p.client_key.as_path())),
        &[],
        Input::Null,
        Duration::from_secs(20),
    );
    let pem = out.stdout_text();
    let start = pem
        .find("-----BEGIN CERTIFICATE-----")
        .expect("server certificate");
    let end = pem
        .find("-----END CERTIFICATE-----")
        .expect("end of certificate")
        + 25;
    let x = run_cmd(
        "openssl",
        &["x509", "-noout", "-serial"],
        Input::Bytes(&pem.as_bytes()[start..end]),
        Duration::from_secs(20),
    );
    x.stdout_text()
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Certificate rotation, revocation and a bad reload, in service mode (`run --config`):
/// - the server certificate files are replaced and SIGHUP'd: new handshakes get the new
///   certificate while a connection made before carries on to a byte-exact end;
/// - a CRL listing one client is added to the file: that client's new connections are refused
///   (`certificate_revoked`), another client of the same CA still gets through;
/// - a reload that cannot load (the key made group-readable) logs `reload failed`, counts in
///   `/metrics`, and the previous configuration keeps serving.
#[test]
fn rotation_revocation_and_a_failed_reload() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    let first = pki.issue_server("first", &[ROUTE], &[]);
    let second = pki.issue_server("second", &[ROUTE], &[]);
    let install = |from: &replink_tests::IssuedFiles| {
        std::fs::copy(&from.cert, &cert).unwrap();
        std::fs::copy(&from.key, &key).unwrap();
    };
    install(&first);
    let (port, admin) = (free_port(), SocketAddr::from(([127, 0, 0, 1], free_port())));
    let file = dir.path().join("replink.toml");
    let config = |crls: &str| {
        format!(
            r#"admin = "{admin}"
[[listener]]
name = "primary-side"
mode = "reverse"
listen = "127.0.0.1:{port}"
cert = "{cert}"
key = "{key}"
ca = "{ca}"
crls = [{crls}]
workers = 1

[[listener.route]]
sni = "{ROUTE}"
target = "{upstream}"
"#,
            cert = s(&cert),
            key = s(&key),
            ca = s(&pki.files.ca_pem),
            upstream = server.addr(),
        )
    };
    std::fs::write(&file, config("")).unwrap();
    let reverse = ReplinkProcess::spawn(&strings(&["run", "--config", s(&file)]));
    assert_eq!(
        served_serial(&pki, reverse.addr(), ROUTE),
        hex(&first.serial)
    );

    // A connection through the old certificate, paused in the middle of its transfer.
    let forward = start_forward(&pki, reverse.addr(), ROUTE, &PairOptions::default());
    let t = Transfer::new(run_seed() ^ 0x707, 8 << 20, 8 << 20);
    let (resume, paused) = std::sync::mpsc::channel();
    let addr = forward.addr();
    let old = std::thread::spawn(move || run_transfer_paused(addr, t, 2 << 20, paused));
    std::thread::sleep(Duration::from_millis(500));

    install(&second);
    reverse.signal("HUP");
    reverse.wait_count("reloaded", 1);
    assert_eq!(
        served_serial(&pki, reverse.addr(), ROUTE),
        hex(&second.serial)
    );
    resume.send(()).unwrap();
    verify_transfer(&server, &old.join().unwrap()).unwrap();

    // Revocation by reload.
    let revoked = pki.issue_client("revoked");
    let now = time::OffsetDateTime::now_utc();
    let crl = pki
        .files
        .ca()
        .crl_pem(
            &[&revoked.serial],
            1,
            now - time::Duration::hours(1),
            now + time::Duration::days(7),
        )
        .unwrap();
    let crl_path = dir.path().join("ca.crl");
    std::fs::write(&crl_path, crl).unwrap();
    std::fs::write(&file, config(&format!("\"{}\"", s(&crl_path)))).unwrap();
    reverse.signal("HUP");
    reverse.wait_count("reloaded", 2);
    let cut = start_forward_as(
        &pki,
        (revoked.cert.as_path(), revoked.key.as_path()),
        reverse.addr(),
        ROUTE,
        &PairOptions::default(),
    );
    let report = run_transfer(
        cut.addr(),
        Transfer::new(run_seed() ^ 0x708, 1 << 16, 1 << 16),
    );
    assert!(
        verify_transfer(&server, &report).is_err(),
        "a revoked client got through"
    );
    reverse.wait_count(r#"refused .*reason="certificate_revoked""#, 1);
    let t = Transfer::new(run_seed() ^ 0x709, 1 << 20, 1 << 20);
    verify_transfer(&server, &run_transfer(forward.addr(), t)).unwrap();

    // A reload that cannot load keeps what runs.
    make_group_readable(&key);
    reverse.signal("HUP");
    reverse.wait_count("reload failed", 1);
    let line = reverse.lines_matching("reload failed").remove(0);
    assert!(line.contains("chmod 600"), "{line}");
    let t = Transfer::new(run_seed() ^ 0x70a, 1 << 20, 1 << 20);
    verify_transfer(&server, &run_transfer(forward.addr(), t)).unwrap();
    let metrics = http_get(admin, "/metrics");
    assert!(
        metrics.contains("replink_reloads_total{result=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("replink_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("replink_last_reload_success 0"),
        "{metrics}"
    );
}

fn make_group_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640)).unwrap();
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text
}

/// `--watch`: replacing the certificate and key files is enough; within a few seconds the
/// change is seen, the reverse end reloads, and new handshakes get the new certificate.
#[test]
fn watch_reloads_rotated_files() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("s.pem"), dir.path().join("s.key"));
    let first = pki.issue_server("w-first", &[ROUTE], &[]);
    let second = pki.issue_server("w-second", &[ROUTE], &[]);
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let opts = PairOptions {
        extra_reverse: strings(&["--watch"]),
        ..PairOptions::default()
    };
    let args = reverse_command(&pki, (&cert, &key), &[(ROUTE, server.addr())], &opts);
    let reverse = ReplinkProcess::spawn(&args);
    assert_eq!(
        served_serial(&pki, reverse.addr(), ROUTE),
        hex(&first.serial)
    );
    std::fs::copy(&second.key, &key).unwrap();
    std::fs::copy(&second.cert, &cert).unwrap();
    reverse.wait_count("watched files changed: reloading", 1);
    reverse.wait_count("reloaded", 1);
    assert_eq!(
        served_serial(&pki, reverse.addr(), ROUTE),
        hex(&second.serial)
    );
    assert_eq!(reverse.count("reload failed"), 0, "{}", reverse.log());
}

/// With the BPF classifier loaded, a reload keeps it (its sock_ops program owns the port):
/// connections after a SIGHUP are still classified in the kernel (`bpf=route`), and the
/// kernel's per-route counter shows in `/metrics`.
#[test]
fn reload_keeps_the_bpf_classifier() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let opts = PairOptions {
        extra_reverse: strings(&["--bpf-classifier", "on", "--admin", &admin.to_string()]),
        ..PairOptions::default()
    };
    let (reverse, forward) = start_pair(&pki, server.addr(), &opts);
    reverse.signal("HUP");
    reverse.wait_count("reloaded", 1);
    let t = Transfer::new(run_seed() ^ 0xb9f1, 1 << 20, 1 << 20);
    verify_transfer(&server, &run_transfer(forward.addr(), t)).unwrap();
    reverse.wait_count(r#"closed .*reason="done""#, 1);
    let line = &reverse.conn_lines()[0];
    assert_eq!(line.get("bpf"), Some("route"), "{}", line.raw);
    // The kernel's own per-route counter, through /metrics.
    let metrics = http_get(admin, "/metrics");
    let needle =
        format!("replink_bpf_classified_total{{listener=\"reverse\",route=\"{ROUTE}\"}} 1");
    assert!(metrics.contains(&needle), "{needle}\n{metrics}");
    assert!(
        metrics.contains("replink_bpf_mismatches_total{listener=\"reverse\"} 0"),
        "{metrics}"
    );
}
