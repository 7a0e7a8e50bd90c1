use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use replink_tests::*;

/// `openssl s_client` (no ALPN, no forward end) reaches a route and exchanges exact bytes.
#[test]
fn openssl_s_client_gets_exact_bytes() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let reverse = start_reverse(&pki, &[(ROUTE, server.addr)], &PairOptions::default());
    let (seed, up, down) = (4242u64, 3u64 << 20, 2u64 << 20);
    let mut input = Vec::new();
    input.extend_from_slice(&seed.to_le_bytes());
    input.extend_from_slice(&up.to_le_bytes());
    input.extend_from_slice(&down.to_le_bytes());
    input.push(FLAG_SEQUENTIAL);
    let mut payload = vec![0u8; up as usize];
    Gen::new(seed, false).fill(&mut payload);
    input.extend_from_slice(&payload);
    let p = &pki.pki;
    let connect = reverse.addr.to_string();
    let (_, stdout, stderr) = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            ROUTE,
            "-cert",
            s(&p.client_cert),
            "-key",
            s(&p.client_key),
            "-CAfile",
            s(&p.ca_pem),
            "-verify_return_error",
            "-quiet",
        ],
        Some(&input),
        60,
    );
    let mut want = vec![0u8; down as usize];
    Gen::new(seed ^ 0xd0d0, false).fill(&mut want);
    assert_eq!(stdout.len(), want.len(), "s_client stderr: {stderr}");
    assert!(stdout == want, "bytes from the route differ");
    check_upstream(&server, seed, up, false).expect("s_client's bytes arrive intact");
    assert_eq!(
        reverse.count("zstd=false"),
        1,
        "a client without the ALPN gets plaintext"
    );
}

/// A redis-server in a temp dir (kept alive by the third field).
struct Redis(Child, SocketAddr, #[allow(dead_code)] tempfile::TempDir);

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server from Debian's redis-server package");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        eventually("redis answers", || {
            redis_cli(addr, &["PING"]).trim() == "PONG"
        });
        Redis(child, addr, dir)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_cli(addr: SocketAddr, args: &[&str]) -> String {
    let port = addr.port().to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port];
    all.extend_from_slice(args);
    let (_, out, _) = run("redis-cli", &all, None, 30);
    String::from_utf8_lossy(&out).into_owned()
}

/// Real Redis through the pair gives the same answers as direct.
#[test]
fn redis_through_the_tunnel() {
    let pki = Pki::new();
    let redis = Redis::start();
    let (_reverse, forward) = start_pair(&pki, redis.1, &PairOptions::default());
    assert_eq!(
        redis_cli(forward.addr, &["SET", "greeting", "hello through replink"]).trim(),
        "OK"
    );
    assert_eq!(
        redis_cli(redis.1, &["GET", "greeting"]).trim(),
        "hello through replink"
    );
    let port = forward.addr.port().to_string();
    let (ok, out, err) = run(
        "redis-benchmark",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "set,get,lpush",
            "-n",
            "20000",
            "-r",
            "10000",
            "-c",
            "10",
            "-q",
        ],
        None,
        120,
    );
    assert!(ok, "redis-benchmark failed: {err}");
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("SET") && out.contains("requests per second"),
        "{out}"
    );
    let direct = redis_cli(redis.1, &["DBSIZE"]);
    let tunneled = redis_cli(forward.addr, &["DBSIZE"]);
    assert_eq!(direct, tunneled);
    assert!(
        direct.trim().parse::<u64>().unwrap() > 1000,
        "benchmark wrote keys: {direct}"
    );
    let digest_direct = redis_cli(redis.1, &["DEBUG", "DIGEST"]);
    assert_eq!(digest_direct, redis_cli(forward.addr, &["DEBUG", "DIGEST"]));
    let (ok, _, err) = run(
        "redis-benchmark",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "ping",
            "-n",
            "20000",
            "-c",
            "50",
            "-q",
        ],
        None,
        120,
    );
    assert!(ok, "redis-benchmark ping failed: {err}");
}

/// Wildcard route, a combined key+cert PEM without --key, and a CA bundle file.
#[test]
fn wildcard_route_combined_pem_and_ca_bundle() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let bundle = s(&pki.extra.ca_bundle_pem).to_string();
    let p = &pki.pki;
    let mut args = strings(&["reverse-proxy", "--listen", "127.0.0.1:0", "--workers", "1"]);
    args.push("--route".into());
    args.push(format!("*.repl.test={}", server.addr));
    args.extend(strings(&[
        "--cert",
        s(&p.server_cert),
        "--key",
        s(&p.server_key),
        "--ca",
        &bundle,
    ]));
    let reverse = Replink::start(&args);
    let mut args = strings(&[
        "forward-proxy",
        "--listen",
        "127.0.0.1:0",
        "--sni",
        "a.repl.test",
        "--workers",
        "1",
    ]);
    args.push("--target".into());
    args.push(reverse.addr.to_string());
    args.extend(strings(&[
        "--cert",
        s(&pki.extra.combined_client_pem),
        "--ca",
        s(&p.ca_pem),
    ]));
    let forward = Replink::start(&args);
    transfer(forward.addr, 9, 1 << 20, 1 << 20, true).expect("transfer via wildcard route");
    check_upstream(&server, 9, 1 << 20, true).unwrap();
    eventually("logged with the wildcard route", || {
        reverse.count(r#"closed.*route="?\*\.repl\.test"#) == 1
    });
}

/// An absent upstream: the client is closed at once (not left hanging), the failure is logged
/// with the route, and the next connection to a live route works.
#[test]
fn absent_upstream_closes_client_and_is_logged() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let reverse = start_reverse(
        &pki,
        &[("dead.repl.test", dead), (ROUTE, server.addr)],
        &PairOptions::default(),
    );
    let dead_fwd = start_forward(
        &pki,
        reverse.addr,
        "dead.repl.test",
        &PairOptions::default(),
    );
    let live_fwd = start_forward(&pki, reverse.addr, ROUTE, &PairOptions::default());
    let started = std::time::Instant::now();
    let r = transfer(dead_fwd.addr, 5, 1000, 1000, false);
    assert!(
        r.is_err(),
        "a transfer to an absent upstream cannot succeed"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "client was left hanging"
    );
    eventually("connect failure logged", || {
        reverse.count(r#"route="?dead\.repl\.test.*reason="?upstream_connect_failed"#) == 1
    });
    transfer(live_fwd.addr, 6, 1 << 16, 1 << 16, false).expect("the live route still works");
}
