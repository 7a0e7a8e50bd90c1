//! `--bpf-classifier on`: the in-kernel SNI classifier beside the userspace parse on the
//! reverse end's accept path. Needs root (or CAP_BPF) and a build with clang, as in CI.
//!
//! Clients reach the reverse end through [`late_relay`]: a client's ClientHello usually
//! follows its handshake ACK so closely that it is queued before the reverse end accepts the
//! socket and puts it under the classifier (`bpf=late`), so the relay holds the first bytes
//! back until the reverse end has accepted.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use replink_tests::*;

const EXACT: &str = "exact.repl.test";
const WILDCARD: &str = "*.repl.test";

/// Two routes (exact, then wildcard); a forward end through each carries exact bytes, and
/// `openssl s_client` with an unknown SNI and without SNI is refused. Each connection's line
/// says what the kernel decided (`bpf=`), and the kernel never disagrees with userspace.
#[test]
fn kernel_classification_agrees_with_userspace() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let opts = PairOptions {
        extra_reverse: strings(&["--bpf-classifier", "on"]),
        ..PairOptions::default()
    };
    let mut reverse = start_reverse(
        &pki,
        &[(EXACT, server.addr()), (WILDCARD, server.addr())],
        &opts,
    );
    reverse.wait_count(r"bpf_classifier=loaded\s+routes=2", 1);
    let relay = late_relay(reverse.addr());

    let seed = run_seed() ^ 0xb9f;
    for (i, sni) in [EXACT, "a.repl.test"].into_iter().enumerate() {
        let forward = start_forward(&pki, relay, sni, &PairOptions::default());
        let t = Transfer::new(seed + i as u64, 1 << 20, 2 << 20).compressible(i == 0);
        let report = run_transfer(forward.addr(), t);
        verify_transfer(&server, &report).unwrap_or_else(|e| panic!("--sni {sni}: {e}"));
    }

    let p = &pki.files;
    let identity = Some((p.client_cert.as_path(), p.client_key.as_path()));
    let out = s_client(
        relay,
        "db.other.test",
        &p.ca_pem,
        identity,
        &["-quiet"],
        Input::Bytes(b"hello\n"),
        Duration::from_secs(20),
    );
    assert!(!out.timed_out(), "`{}` hung:\n{}", out.command, out.text());
    let ca = p.ca_pem.to_string_lossy().into_owned();
    let out = run_cmd(
        "openssl",
        &[
            "s_client",
            "-connect",
            &relay.to_string(),
            "-noservername",
            "-CAfile",
            &ca,
            "-quiet",
        ],
        Input::Bytes(b"hello\n"),
        Duration::from_secs(20),
    );
    assert!(!out.timed_out(), "`{}` hung:\n{}", out.command, out.text());

    reverse.wait_count(r#"closed.*reason="?done"#, 2);
    reverse.wait_count(r#"\brefused\b.*reason="?unknown_sni\b"#, 2);
    let bpf: Vec<(String, String)> = reverse
        .conn_lines()
        .iter()
        .map(|l| {
            (
                l.get("route").unwrap_or("-").to_string(),
                l.get("bpf").unwrap_or("<missing>").to_string(),
            )
        })
        .collect();
    let want = [
        (EXACT, "route"),
        (WILDCARD, "route"),
        ("-", "no_route"),
        ("-", "no_sni"),
    ];
    assert_eq!(
        bpf.iter()
            .map(|(r, b)| (r.as_str(), b.as_str()))
            .collect::<Vec<_>>(),
        want,
        "route and bpf= of each connection, in order:\n{}",
        reverse.log()
    );

    // Straight at the reverse end, the ClientHello is usually queued by the time it accepts.
    let direct = start_forward(&pki, reverse.addr(), EXACT, &PairOptions::default());
    let report = run_transfer(direct.addr(), Transfer::new(seed + 9, 4096, 4096));
    verify_transfer(&server, &report).expect("direct --sni exact.repl.test");
    reverse.wait_count(r#"closed.*reason="?done"#, 3);
    let lines = reverse.conn_lines();
    let last = lines.last().expect("the direct connection's line");
    assert!(
        matches!(last.get("bpf"), Some("route" | "late" | "unseen")),
        "{}",
        last.raw
    );
    assert_eq!(
        reverse.count("bpf_classifier_mismatch|bpf_classifier_error"),
        0,
        "{}",
        reverse.log()
    );
    reverse.assert_running();
}

/// A TCP relay to `target` that connects, waits 100 ms (the reverse end accepts meanwhile),
/// then copies both ways, passing half-closes on.
fn late_relay(target: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
    let addr = listener.local_addr().expect("relay address");
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(target) else {
                    return;
                };
                std::thread::sleep(Duration::from_millis(100));
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    })
                };
                let up = pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let down = pipe(server, client);
                let _ = (up.join(), down.join());
            });
        }
    });
    addr
}

/// On a listener with a `:postgres` route the classifier is not used (libpq's SSLRequest
/// comes before the ClientHello): `on` refuses to start and says why, `auto` logs
/// `bpf_classifier=unavailable` and serves.
#[test]
fn not_with_postgres_routes() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let pg_route = format!("{EXACT}={}:postgres", server.addr());
    let args = |mode: &str| {
        let mut args = strings(&["reverse-proxy", "--listen", "127.0.0.1:0", "--route"]);
        args.push(pg_route.clone());
        args.extend(pki.server_args());
        args.extend(strings(&["--bpf-classifier", mode]));
        args
    };
    let (_, stderr) = run_replink_expect_failure(&args("on"));
    assert!(
        stderr.contains("--bpf-classifier on, but the classifier cannot be used")
            && stderr.contains("postgres routes"),
        "{stderr}"
    );
    let reverse = ReplinkProcess::spawn(&args("auto"));
    assert_eq!(
        reverse.count(r"bpf_classifier=unavailable.*postgres routes"),
        1,
        "{}",
        reverse.log()
    );
}
