//! The admin listener: `/metrics` (parsed by a Prometheus text-format parser), `/healthz`,
//! `/readyz`, and `replink status`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use replink_tests::*;

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).expect("admin listener");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP answer");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let hits: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .collect();
    assert_eq!(hits.len(), 1, "{name} {labels:?}: {hits:?}");
    hits[0]
}

fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
}

/// After a transfer and an unknown-SNI refusal, `/metrics` parses as Prometheus text and
/// its counters equal what the connection lines and the client saw: bytes each way, one
/// done and one refused connection with its reason, the handshake and duration histograms'
/// counts. `/healthz` is 200. `/readyz` is 503 naming the route whose upstream is down on the
/// reverse end, 200 on the forward end; `replink status` prints the summary and exits 1
/// and 0 accordingly.
#[test]
fn metrics_match_the_bytes_moved() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (radmin, fadmin) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let opts = PairOptions {
        extra_reverse: strings(&["--admin", &radmin.to_string()]),
        extra_forward: strings(&["--admin", &fadmin.to_string()]),
        ..PairOptions::default()
    };
    let reverse = start_reverse(
        &pki,
        &[(ROUTE, server.addr()), ("dead.repl.test", dead)],
        &opts,
    );
    let forward = start_forward(&pki, reverse.addr(), ROUTE, &opts);
    let t = Transfer::new(run_seed() ^ 0x3e7, 3 << 20, 5 << 20).compressible(true);
    let report = run_transfer(forward.addr(), t);
    verify_transfer(&server, &report).unwrap();
    reverse.wait_count("closed", 1);
    forward.wait_count("closed", 1);

    let p = &pki.files;
    let out = s_client(
        reverse.addr(),
        "nobody.repl.test",
        &p.ca_pem,
        Some((p.client_cert.as_path(), p.client_key.as_path())),
        &["-quiet"],
        Input::Bytes(b"x"),
        Duration::from_secs(20),
    );
    assert!(!out.timed_out(), "{}", out.text());
    reverse.wait_count(r#"refused .*reason="unknown_sni""#, 1);

    let m = scrape(radmin);
    let rl = [("listener", "reverse")];
    let line = &reverse.conn_lines()[0];
    let by = |d: &str| sample(&m, "replink_bytes_total", &[rl[0], ("direction", d)]);
    assert_eq!(by("plain_out"), line.num("tls_to_plain") as f64);
    assert_eq!(by("plain_in"), line.num("plain_to_tls") as f64);
    assert_eq!(by("wire_in"), line.num("wire_in") as f64);
    assert_eq!(by("wire_out"), line.num("wire_out") as f64);
    // The client's payload plus the stream header reached the upstream; the upstream's came
    // back.
    assert_eq!(by("plain_out"), (report.sent + HEADER_LEN as u64) as f64);
    assert_eq!(by("plain_in"), report.received as f64);
    assert!(sample(&m, "replink_compression_ratio", &rl) > 1.5);
    assert_eq!(sample(&m, "replink_connections_open", &rl), 0.0);
    let total = |o| sample(&m, "replink_connections_total", &[rl[0], ("outcome", o)]);
    assert_eq!(
        (total("done"), total("failed"), total("refused")),
        (1.0, 0.0, 1.0)
    );
    let errors = sample(
        &m,
        "replink_connection_errors_total",
        &[rl[0], ("reason", "unknown_sni")],
    );
    assert_eq!(errors, 1.0);
    let expiry = sample(&m, "replink_certificate_expiry_timestamp_seconds", &rl);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now + 300.0 * 86400.0, "{expiry}");
    let hist_count = |name: &str| {
        m.samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("listener") == Some("reverse"))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                other => panic!("{name}: {other:?}"),
            })
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(hist_count("replink_connection_duration_seconds"), 2.0);
    assert_eq!(hist_count("replink_handshake_duration_seconds"), 1.0);

    let up = server.addr().to_string();
    let route = [rl[0], ("route", ROUTE)];
    let upstream_info = [route[0], route[1], ("upstream", up.as_str())];
    assert_eq!(
        sample(&m, "replink_route_upstream_info", &upstream_info),
        1.0
    );
    let rdone = [route[0], route[1], ("outcome", "done")];
    assert_eq!(sample(&m, "replink_route_connections_total", &rdone), 1.0);
    let rout = [route[0], route[1], ("direction", "plain_out")];
    assert_eq!(
        sample(&m, "replink_route_bytes_total", &rout),
        by("plain_out")
    );

    let fm = scrape(fadmin);
    let fl = [("listener", "forward")];
    let fby = |d: &str| sample(&fm, "replink_bytes_total", &[fl[0], ("direction", d)]);
    assert_eq!(fby("plain_in"), (report.sent + HEADER_LEN as u64) as f64);
    // The reverse end does not count the records rustls already opened while finishing the
    // handshake (their plaintext is counted, their wire size is not known): close, not equal.
    let (fwd, rev) = (fby("wire_out"), by("wire_in"));
    assert!(fwd >= rev && fwd - rev < 16.0 * 1024.0, "{fwd} vs {rev}");

    assert_eq!(http_get(radmin, "/healthz").0, 200);
    let (code, body) = http_get(radmin, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("dead.repl.test: no upstream reachable"),
        "{body}"
    );
    assert!(!body.contains(ROUTE), "{body}");
    assert_eq!(http_get(fadmin, "/readyz").0, 200);
    assert_eq!(http_get(radmin, "/nope").0, 404);

    let status = |admin: SocketAddr| {
        run_cmd(
            s(replink_bin()),
            &["status", "--admin", &admin.to_string()],
            Input::Null,
            Duration::from_secs(30),
        )
    };
    let out = status(radmin);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{}", out.text());
    let text = out.stdout_text();
    assert!(text.contains("listener reverse"), "{text}");
    let route_line = format!("route {ROUTE} -> {up}: 1 done, 0 failed");
    assert!(text.contains(&route_line), "{text}");
    assert!(
        text.contains("closed 1 done, 0 failed, 2 refused"),
        "{text}"
    );
    // The forward end's /readyz connected to the reverse end and closed: an `empty`
    // refusal, counted but not logged above debug.
    assert!(text.contains("errors: empty 1, unknown_sni 1"), "{text}");
    assert_eq!(reverse.count("reason=\"empty\""), 0, "{}", reverse.log());
    assert!(out.stderr.contains("not ready"), "{}", out.stderr);
    let out = status(fadmin);
    assert!(out.success(), "{}", out.text());
    assert!(out.stdout_text().contains("ready"), "{}", out.text());
}
