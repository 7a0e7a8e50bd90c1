//! A real redis-server behind the pair: redis-cli and redis-benchmark through the forward end
//! must see the same database as a direct client.

use std::net::SocketAddr;
use std::time::Duration;

use replink_tests::*;

fn port_args(addr: SocketAddr) -> Vec<String> {
    redis_port_args(addr)
}

fn cli(addr: SocketAddr, args: &[&str]) -> String {
    redis_cli(addr, args)
}

/// Runs redis-benchmark through `addr`; returns (test name, requests per second) pairs.
fn benchmark(addr: SocketAddr, args: &[&str]) -> Vec<(String, f64)> {
    let mut all = port_args(addr);
    all.extend(strings(args));
    all.push("-q".into());
    let out = run_cmd(
        "redis-benchmark",
        &all,
        Input::Null,
        Duration::from_secs(120),
    );
    assert!(out.success(), "`{}` failed:\n{}", out.command, out.text());
    let re = regex::Regex::new(r"^(\S+): ([\d.]+) requests per second").expect("regex");
    let results: Vec<(String, f64)> = out
        .stdout_text()
        .split(['\r', '\n'])
        .filter_map(|l| re.captures(l.trim()))
        .map(|c| (c[1].to_string(), c[2].parse().unwrap_or(0.0)))
        .collect();
    assert!(
        !results.is_empty() && results.iter().all(|(_, rps)| *rps > 0.0),
        "`{}` reported no throughput:\n{}",
        out.command,
        out.text()
    );
    results
}

fn is_digest(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) && s != "0".repeat(40)
}

#[test]
fn redis_through_the_pair_matches_direct() {
    let pki = Pki::new();
    let redis = RedisServer::start();
    let (mut reverse, mut forward) = start_pair(&pki, redis.addr, &PairOptions::default());
    let (direct, tunnel) = (redis.addr, forward.addr());

    // Small values.
    assert_eq!(
        cli(tunnel, &["SET", "greeting", "hello through replink"]),
        "OK"
    );
    assert_eq!(cli(direct, &["GET", "greeting"]), "hello through replink");
    assert_eq!(cli(tunnel, &["GET", "greeting"]), "hello through replink");
    let d = cli(direct, &["DEBUG", "DIGEST-VALUE", "greeting"]);
    assert!(is_digest(&d), "DEBUG DIGEST-VALUE gives a digest: {d:?}");
    assert_eq!(cli(tunnel, &["DEBUG", "DIGEST-VALUE", "greeting"]), d);

    // An 8 MiB value (binary-safe, from stdin) in through the tunnel, compared directly.
    let value_file = pki.dir().join("big-value");
    let t = Transfer::new(run_seed() ^ 0x4ed15, 8 << 20, 0);
    let value = &t.upload_bytes()[HEADER_LEN..];
    std::fs::write(&value_file, value).expect("write value");
    let mut args = port_args(tunnel);
    args.extend(strings(&["-x", "SET", "big"]));
    let out = run_cmd(
        "redis-cli",
        &args,
        Input::File(&value_file),
        Duration::from_secs(60),
    );
    assert_eq!(out.stdout_text().trim(), "OK", "{}", out.text());
    assert_eq!(cli(direct, &["STRLEN", "big"]), value.len().to_string());
    let d = cli(direct, &["DEBUG", "DIGEST-VALUE", "big"]);
    assert!(is_digest(&d), "{d:?}");
    assert_eq!(cli(tunnel, &["DEBUG", "DIGEST-VALUE", "big"]), d);
    // And out again through the tunnel, byte for byte.
    let mut args_raw = port_args(tunnel);
    args_raw.extend(strings(&["GET", "big"]));
    let out = run_cmd("redis-cli", &args_raw, Input::Null, Duration::from_secs(60));
    // redis-cli adds one newline after a raw reply.
    assert!(
        out.stdout.len() == value.len() + 1 && &out.stdout[..value.len()] == value,
        "GET big through the tunnel: {} bytes back, want {}",
        out.stdout.len(),
        value.len() + 1
    );
    assert_eq!(cli(tunnel, &["DEL", "big"]), "1");

    // Bulk writes through the tunnel.
    let results = benchmark(tunnel, &["-t", "set", "-n", "20000", "-r", "10000"]);
    eprintln!("through the pair: {results:?}");
    let size_direct = cli(direct, &["DBSIZE"]);
    let keys: u64 = size_direct.parse().expect("DBSIZE is a number");
    assert!(keys > 5000, "redis-benchmark -r 10000 wrote {keys} keys");
    assert_eq!(cli(tunnel, &["DBSIZE"]), size_direct);
    let digest = cli(direct, &["DEBUG", "DIGEST"]);
    assert!(is_digest(&digest), "DEBUG DIGEST: {digest:?}");
    assert_eq!(cli(tunnel, &["DEBUG", "DIGEST"]), digest);

    // Many small requests on 10 connections.
    let results = benchmark(tunnel, &["-t", "ping,get", "-n", "20000", "-c", "10"]);
    eprintln!("through the pair: {results:?}");
    assert!(
        results.iter().any(|(n, _)| n.starts_with("PING"))
            && results.iter().any(|(n, _)| n == "GET"),
        "{results:?}"
    );
    assert_eq!(
        cli(tunnel, &["DEBUG", "DIGEST"]),
        digest,
        "GETs changed nothing"
    );

    // Every connection through the pair ended cleanly and was compressed end to end.
    assert_eq!(forward.count(r"\brefused\b"), 0, "{}", forward.log());
    assert_eq!(reverse.count(r"\brefused\b"), 0, "{}", reverse.log());
    let closed = forward.count(r"\bclosed\b");
    assert!(closed >= 20, "only {closed} connections logged");
    assert_eq!(forward.count(r"\bclosed\b.*zstd=true"), closed);
    reverse.assert_running();
    forward.assert_running();
}
