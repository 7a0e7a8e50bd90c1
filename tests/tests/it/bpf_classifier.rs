//! `--bpf-classifier on`: the in-kernel SNI classifier on the reverse end's accept path. Needs
//! root (or CAP_BPF) and a build with clang, as in CI.
//!
//! Clients connect straight to the reverse end: the sock_ops program puts each accepted socket
//! into the sockhash as its handshake completes, so no connection is `bpf=late` any more (that
//! outcome is gone) even though clients send their ClientHello right behind the handshake ACK.

use std::time::Duration;

use replink_tests::*;

const EXACT: &str = "exact.repl.test";
const WILDCARD: &str = "*.repl.test";

/// Two routes (exact, then wildcard); forward ends through each carry exact bytes, and every
/// connection is classified by the kernel (`bpf=route`, never `late` or `unseen`), in
/// agreement with the userspace parse. `openssl s_client` with an unknown SNI and without SNI
/// is refused on the kernel's word before any userspace parsing (`bpf=no_route`, `no_sni`),
/// gets the `unrecognized_name` alert, and the counters (`bpf_counters`) say so.
#[test]
fn kernel_classifies_every_connection_and_refuses_unknown_sni() {
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
    reverse.wait_count(r"bpf_classifier=loaded.*routes=2", 1);
    let addr = reverse.addr();

    let seed = run_seed() ^ 0xb9f;
    let mut routed = 0;
    for (i, sni) in [EXACT, "a.repl.test", EXACT, "b.repl.test", EXACT]
        .into_iter()
        .enumerate()
    {
        let forward = start_forward(&pki, addr, sni, &PairOptions::default());
        let t = Transfer::new(seed + i as u64, 1 << 20, 2 << 20).compressible(i % 2 == 0);
        let report = run_transfer(forward.addr(), t);
        verify_transfer(&server, &report).unwrap_or_else(|e| panic!("--sni {sni}: {e}"));
        routed += 1;
    }

    let p = &pki.files;
    let identity = Some((p.client_cert.as_path(), p.client_key.as_path()));
    let out = s_client(
        addr,
        "db.other.test",
        &p.ca_pem,
        identity,
        &[],
        Input::Bytes(b"hello\n"),
        Duration::from_secs(20),
    );
    assert!(!out.timed_out(), "`{}` hung:\n{}", out.command, out.text());
    assert!(
        out.text().contains("unrecognized name"),
        "`{}` did not get the unrecognized_name alert:\n{}",
        out.command,
        out.text()
    );
    let ca = p.ca_pem.to_string_lossy().into_owned();
    let out = run_cmd(
        "openssl",
        &[
            "s_client",
            "-connect",
            &addr.to_string(),
            "-noservername",
            "-CAfile",
            &ca,
        ],
        Input::Bytes(b"hello\n"),
        Duration::from_secs(20),
    );
    assert!(!out.timed_out(), "`{}` hung:\n{}", out.command, out.text());
    assert!(out.text().contains("unrecognized name"), "{}", out.text());

    reverse.wait_count(r#"closed.*reason="?done"#, routed);
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
        (EXACT, "route"),
        (WILDCARD, "route"),
        (EXACT, "route"),
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
    // The counters agree with the connections (logged once a second when they change).
    let want_counters = format!(
        "routed={WILDCARD}:2,{EXACT}:3 reasons=no_route:1,no_sni:1 passthrough_bytes= \
         refused_in_kernel=2 mismatches=0"
    );
    assert_eventually!(
        reverse
            .lines_matching("bpf_counters")
            .last()
            .is_some_and(|l| l.contains(&want_counters)),
        "no bpf_counters line with {want_counters}:\n{}",
        reverse.log()
    );
    assert_eq!(
        reverse.count("bpf_classifier_mismatch|bpf_classifier_error"),
        0,
        "{}",
        reverse.log()
    );
    reverse.assert_running();
}

/// The sock_ops program is attached only while the reverse end runs: its program id (logged
/// at start) is gone from the kernel once the process is killed. Two reverse ends side by side
/// each classify their own connections.
#[test]
fn two_reverse_ends_do_not_interfere_and_nothing_stays_attached() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let opts = PairOptions {
        extra_reverse: strings(&["--bpf-classifier", "on"]),
        ..PairOptions::default()
    };
    let mut first = start_reverse(&pki, &[(EXACT, server.addr())], &opts);
    let second = start_reverse(&pki, &[(EXACT, server.addr())], &opts);
    let id = |r: &ReplinkProcess| -> u32 {
        r.wait_count("bpf_classifier=loaded", 1);
        let line = r.lines_matching("bpf_classifier=loaded").remove(0);
        let digits = line
            .split("sock_ops_id=")
            .nth(1)
            .unwrap_or_else(|| panic!("no sock_ops_id in {line}"));
        digits
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let (a, b) = (id(&first), id(&second));
    assert_ne!(a, b);
    assert!(replink_ebpf::program_loaded(a) && replink_ebpf::program_loaded(b));
    let seed = run_seed() ^ 0x5c0;
    for (i, r) in [&first, &second].into_iter().enumerate() {
        let forward = start_forward(&pki, r.addr(), EXACT, &PairOptions::default());
        let report = run_transfer(forward.addr(), Transfer::new(seed + i as u64, 65536, 65536));
        verify_transfer(&server, &report).expect("transfer");
        r.wait_count(r#"closed.*bpf=route.*reason="?done"#, 1);
    }
    first.kill();
    assert_eventually!(
        !replink_ebpf::program_loaded(a),
        "sock_ops program {a} still loaded after its replink was killed"
    );
    assert!(replink_ebpf::program_loaded(b));
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
