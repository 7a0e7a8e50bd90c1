//! The Postgres-aware reverse listener: routes marked `:postgres` take libpq itself (psql 15
//! with `sslmode=verify-full` and a client certificate, no forward end), by SSLRequest or by
//! direct TLS with ALPN `postgresql`; a plaintext StartupMessage gets a Postgres ErrorResponse
//! and never reaches the server.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use replink_tests::*;

/// A stream route on the same listener as the postgres route (the server certificate covers
/// `*.repl.test`).
const STREAM_ROUTE: &str = "stream.repl.test";
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

/// A cluster that logs every connection it receives (`connection received: host=…`), so a
/// test can tell that a refused client never reached it.
fn cluster() -> PgCluster {
    PgCluster::start(&PgOptions {
        conf: vec!["log_connections = on".into()],
        ..PgOptions::default()
    })
}

/// How many TCP connections the server has received (replink connects from 127.0.0.1; the
/// harness's own psql uses the Unix socket).
fn tcp_connections_received(pg: &PgCluster) -> usize {
    std::fs::read_to_string(pg.dir().join("server.log"))
        .unwrap_or_default()
        .matches("connection received: host=127.0.0.1")
        .count()
}

/// A reverse end with `--route` for each of `routes` (`SNI=HOST:PORT[:postgres]`).
fn reverse_with_routes(pki: &Pki, routes: &[String], extra: &[&str]) -> ReplinkProcess {
    let mut extra_reverse: Vec<String> = routes
        .iter()
        .flat_map(|r| ["--route".to_string(), r.clone()])
        .collect();
    extra_reverse.extend(strings(extra));
    start_reverse(
        pki,
        &[],
        &PairOptions {
            extra_reverse,
            ..PairOptions::default()
        },
    )
}

fn pg_route(pg: &PgCluster) -> String {
    format!("{ROUTE}={}:postgres", pg.addr())
}

/// A PKI, a cluster, and a reverse end with the cluster as postgres route `pg.repl.test`, then
/// `more_routes`, and `extra` flags.
fn pg_behind_reverse(more_routes: &[String], extra: &[&str]) -> (Pki, PgCluster, ReplinkProcess) {
    let pki = Pki::new();
    let pg = cluster();
    let mut routes = vec![pg_route(&pg)];
    routes.extend_from_slice(more_routes);
    let reverse = reverse_with_routes(&pki, &routes, extra);
    (pki, pg, reverse)
}

/// libpq's connection string for `host` (sent as SNI and checked against the server
/// certificate) at `hostaddr=127.0.0.1 port=PORT`, with `identity` as client certificate and
/// key, or none.
fn conninfo(
    pki: &Pki,
    port: u16,
    host: &str,
    sslmode: &str,
    identity: Option<(&Path, &Path)>,
) -> String {
    let absent = pki.dir().join("absent");
    let (cert, key) = identity.unwrap_or((&absent, &absent));
    format!(
        "sslmode={sslmode} sslrootcert='{}' sslcert='{}' sslkey='{}' hostaddr=127.0.0.1 \
         host={host} port={port} user=postgres dbname=postgres connect_timeout=10",
        s(&pki.files.ca_pem),
        s(cert),
        s(key),
    )
}

/// The verify-full connection string of the PKI's client, straight at the reverse end.
fn verify_full(pki: &Pki, reverse: &ReplinkProcess, host: &str) -> String {
    let p = &pki.files;
    conninfo(
        pki,
        reverse.addr().port(),
        host,
        "verify-full",
        Some((&p.client_cert, &p.client_key)),
    )
}

/// `psql -XAtq -v ON_ERROR_STOP=1 -d CONNINFO ARGS…` (libpq of the installed server), with
/// the password in the environment and `HOME` in `home` (the PKI dir, so no `~/.postgresql`
/// certificate is picked up).
fn psql(home: &Path, conninfo: &str, args: &[&str], input: Input<'_>) -> CmdOutput {
    let mut argv = vec![
        format!("HOME={}", s(home)),
        format!("PGPASSWORD={PG_PASSWORD}"),
        s(&pg_bin_dir().join("psql")).to_string(),
    ];
    argv.extend(strings(&["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", conninfo]));
    argv.extend(strings(args));
    let out = run_cmd("env", &argv, input, patience());
    assert!(!out.timed_out(), "`{}` hung:\n{}", out.command, out.text());
    out
}

/// A StartupMessage (protocol 3.0) for user and database `postgres`.
fn startup_message() -> Vec<u8> {
    let params = b"user\0postgres\0database\0postgres\0\0";
    let mut m = ((8 + params.len()) as u32).to_be_bytes().to_vec();
    m.extend_from_slice(&196_608u32.to_be_bytes());
    m.extend_from_slice(params);
    m
}

/// Whether `bytes` hold AuthenticationSASL offering SCRAM-SHA-256 ('R', length, 10,
/// mechanisms): the server's first answer to a StartupMessage over TCP.
fn has_sasl_request(bytes: &[u8]) -> bool {
    let needle = b"\0\0\0\x0aSCRAM-SHA-256\0";
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .is_some_and(|at| at >= 5 && bytes[at - 5] == b'R')
}

fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(patience())).expect("timeout");
    c
}

/// Reads until the peer closes (EOF or reset); panics if it does not within [`patience`].
fn read_to_close(conn: &mut TcpStream, what: &str) -> Vec<u8> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: still open after {:?}", started.elapsed())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return got,
        }
    }
}

/// Reads exactly one byte: an answer to SSLRequest or GSSENCRequest.
fn read_answer(conn: &mut TcpStream) -> u8 {
    let mut b = [0u8; 1];
    conn.read_exact(&mut b).expect("a one-byte answer");
    b[0]
}

/// The reverse end's one `closed`/`refused` line for `reason`, once it is logged.
#[track_caller]
fn line_with_reason(reverse: &ReplinkProcess, message: &str, reason: &str) -> LogLine {
    reverse.wait_count(&format!(r#"\b{message}\b.*\breason="?{reason}\b"#), 1);
    reverse
        .conn_lines()
        .into_iter()
        .find(|l| l.message == message && l.get("reason") == Some(reason))
        .unwrap_or_else(|| panic!("no {message} line with reason={reason}:\n{}", reverse.log()))
}

/// psql 15 with `sslmode=verify-full`, its client certificate and `host=pg.repl.test
/// hostaddr=127.0.0.1` runs queries and a 4 MiB COPY each way straight through the reverse
/// end; the server sees a plaintext connection from replink; the reverse end logs
/// `pg_preamble=ssl_request` with the client certificate and no zstd.
#[test]
fn psql_verify_full_connects_through_the_reverse_end() {
    let (pki, pg, mut reverse) = pg_behind_reverse(&[], &[]);
    let info = verify_full(&pki, &reverse, ROUTE);

    // 4096 rows of 1 KiB of hex, loaded with COPY FROM STDIN from a psql script.
    let mut gen = Gen::new(run_seed() ^ 0x9c0b, false);
    let mut rows = Vec::new();
    let mut copy_text = String::new();
    for id in 1..=4096 {
        let mut raw = [0u8; 512];
        gen.fill(&mut raw);
        let data = hex(&raw);
        copy_text.push_str(&format!("{id}\t{data}\n"));
        rows.push(data);
    }
    let want_sha = hex(&Sha256::digest(rows.join("\n").as_bytes()));
    let script = pki.dir().join("load.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE TABLE payload (id int PRIMARY KEY, data text NOT NULL);\n\
             COPY payload FROM STDIN;\n{copy_text}\\.\n\
             SELECT encode(sha256(convert_to(string_agg(data, E'\\n' ORDER BY id), 'UTF8')), 'hex') FROM payload;\n\
             SELECT client_addr, ssl FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) WHERE pid = pg_backend_pid();\n"
        ),
    )
    .expect("write script");
    let out = psql(pki.dir(), &info, &["-f", s(&script)], Input::Null).assert_ok();
    let lines: Vec<String> = out.stdout_text().lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [want_sha.clone(), "127.0.0.1|f".to_string()],
        "the server's SHA-256 of what COPY loaded, then how it sees the connection: from \
         127.0.0.1 without TLS (replink ended the client's TLS)\n{}",
        out.text()
    );

    // And back: COPY TO STDOUT gives the same bytes.
    let out = psql(
        pki.dir(),
        &info,
        &["-c", "COPY payload TO STDOUT"],
        Input::Null,
    )
    .assert_ok();
    assert!(
        out.stdout == copy_text.as_bytes(),
        "COPY TO STDOUT: {} bytes (want {}), SHA-256 {} (want {})",
        out.stdout.len(),
        copy_text.len(),
        hex(&Sha256::digest(&out.stdout)),
        hex(&Sha256::digest(copy_text.as_bytes()))
    );
    assert_eq!(pg.sql("postgres", "SELECT count(*) FROM payload"), "4096");
    assert_eq!(
        tcp_connections_received(&pg),
        2,
        "one server connection per psql"
    );

    reverse.wait_count(r#"\bclosed\b.*reason="?done"#, 2);
    for l in reverse.conn_lines() {
        assert_eq!(l.get("route"), Some(ROUTE), "{}", l.raw);
        assert_eq!(l.get("pg_preamble"), Some("ssl_request"), "{}", l.raw);
        assert_eq!(
            l.get("zstd"),
            Some("false"),
            "libpq gets no zstd: {}",
            l.raw
        );
        assert_eq!(
            l.get("alpn"),
            Some("-"),
            "libpq 15 offers no ALPN: {}",
            l.raw
        );
        assert_eq!(
            l.get("upstream"),
            Some(pg.addr().to_string().as_str()),
            "{}",
            l.raw
        );
        assert!(
            l.get("peer_cert")
                .is_some_and(|c| c.contains("replink-demo-client")),
            "{}",
            l.raw
        );
        assert!(
            l.num("tls_to_plain") > 4_000_000 || l.num("plain_to_tls") > 4_000_000,
            "one way or the other, the COPY went through: {}",
            l.raw
        );
    }
    assert_eq!(reverse.count(r"\brefused\b"), 0, "{}", reverse.log());
    reverse.assert_running();
}

/// No client certificate: refused in TLS (certificate_required). `sslmode=disable`: psql shows
/// replink's ErrorResponse ("requires TLS"). `sslmode=prefer` (psql's default) without a
/// certificate is refused in TLS and does not retry in plaintext (in TLS 1.3 the refusal comes
/// after libpq's side of the handshake, too late for its fallback). A GSSENCRequest is answered
/// `N`, then an SSLRequest `S` (libpq 15 without Kerberos credentials never sends one, so a raw
/// socket does); a plaintext CancelRequest gets the ErrorResponse too. The server receives no
/// connection at all.
#[test]
fn clients_without_tls_or_certificate_never_reach_the_server() {
    let (pki, pg, mut reverse) = pg_behind_reverse(&[], &[]);
    let port = reverse.addr().port();

    // psql with `sslmode` and `identity` fails, saying `needle`.
    let refused = |sslmode: &str, identity: Option<(&Path, &Path)>, needle: &str| {
        let info = conninfo(&pki, port, ROUTE, sslmode, identity);
        let out = psql(pki.dir(), &info, &["-c", "SELECT 1"], Input::Null);
        eprintln!("--- sslmode={sslmode}:\n{}", out.text());
        assert!(
            !out.success() && out.text().contains(needle),
            "{}",
            out.text()
        );
    };
    refused("require", None, "certificate required");
    let l = line_with_reason(&reverse, "refused", "no_client_cert");
    assert_eq!(l.get("pg_preamble"), Some("ssl_request"), "{}", l.raw);

    let p = &pki.files;
    let identity = Some((p.client_cert.as_path(), p.client_key.as_path()));
    refused(
        "disable",
        identity,
        "FATAL:  replink: this server requires TLS",
    );
    let l = line_with_reason(&reverse, "refused", "pg_plaintext_refused");
    assert_eq!(l.get("pg_preamble"), Some("startup"), "{}", l.raw);

    refused("prefer", None, "certificate required");
    reverse.wait_count(r#"\brefused\b.*reason="?no_client_cert\b"#, 2);
    reverse.wait_count(r#"\brefused\b.*reason="?pg_plaintext_refused\b"#, 1);

    // GSSENCRequest -> N, then SSLRequest -> S; the client leaves before its ClientHello.
    let mut c = connect(reverse.addr());
    c.write_all(&GSSENC_REQUEST).expect("send GSSENCRequest");
    assert_eq!(read_answer(&mut c), b'N', "GSSENCRequest is declined");
    c.write_all(&SSL_REQUEST).expect("send SSLRequest");
    assert_eq!(read_answer(&mut c), b'S', "then SSLRequest is accepted");
    drop(c);
    let l = line_with_reason(&reverse, "refused", "handshake_eof");
    assert_eq!(
        l.get("pg_preamble"),
        Some("gssenc_then_ssl_request"),
        "{}",
        l.raw
    );

    // GSSENCRequest -> N, then a plaintext StartupMessage -> ErrorResponse, closed.
    let mut c = connect(reverse.addr());
    c.write_all(&GSSENC_REQUEST).expect("send GSSENCRequest");
    assert_eq!(read_answer(&mut c), b'N');
    c.write_all(&startup_message())
        .expect("send StartupMessage");
    let answer = read_to_close(&mut c, "plaintext startup after GSSENC");
    assert_eq!(answer.first(), Some(&b'E'), "an ErrorResponse: {answer:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("SFATAL") && text.contains("C28000") && text.contains("requires TLS"),
        "{text:?}"
    );

    // A plaintext CancelRequest (what libpq 15's PQcancel sends) is refused likewise.
    let mut c = connect(reverse.addr());
    let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    cancel.extend_from_slice(&[0, 0, 0x30, 0x39, 1, 2, 3, 4]);
    c.write_all(&cancel).expect("send CancelRequest");
    let answer = read_to_close(&mut c, "plaintext cancel");
    assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");

    reverse.wait_count(r#"\brefused\b.*reason="?pg_plaintext_refused\b"#, 3);
    reverse.wait_count(r#"\brefused\b.*pg_preamble=gssenc_then_startup\b"#, 1);
    reverse.wait_count(r#"\brefused\b.*pg_preamble=cancel_request\b"#, 1);
    assert!(
        reverse.conn_lines().iter().all(|l| l.message == "refused"),
        "{}",
        reverse.log()
    );
    assert_eq!(reverse.count(r#"upstream="?127"#), 0, "{}", reverse.log());
    assert_eq!(
        tcp_connections_received(&pg),
        0,
        "the server saw a connection:\n{}",
        pg.log_tail()
    );
    reverse.assert_running();
}

/// Direct TLS as PostgreSQL 17 does it (`sslnegotiation=direct`: ClientHello first, ALPN
/// `postgresql`), here from `openssl s_client`: the reverse end selects `postgresql`, and a
/// StartupMessage gets the server's AuthenticationSASL. Without ALPN the same works (any TLS
/// client may use a postgres route).
#[test]
fn direct_tls_with_alpn_postgresql_reaches_the_server() {
    let (pki, pg, mut reverse) = pg_behind_reverse(&[], &[]);
    let p = &pki.files;
    // Startup, then Terminate while the server waits for the SASL response: it answers with
    // an error and closes, which ends s_client (-ign_eof waits for that).
    let mut input = startup_message();
    input.extend_from_slice(&[b'X', 0, 0, 0, 4]);
    // s_client offering `alpn`, whose output must say `negotiated` and hold the server's
    // AuthenticationSASL.
    let direct = |alpn: Option<&str>, negotiated: &str| {
        let mut extra = vec!["-ign_eof", "-nocommands", "-verify_return_error"];
        if let Some(a) = alpn {
            extra.extend(["-alpn", a]);
        }
        let out = s_client(
            reverse.addr(),
            ROUTE,
            &p.ca_pem,
            Some((&p.client_cert, &p.client_key)),
            &extra,
            Input::Bytes(&input),
            patience(),
        );
        assert!(!out.timed_out(), "`{}` hung:\n{}", out.command, out.stderr);
        assert!(out.stdout_text().contains(negotiated), "{}", out.text());
        assert!(
            has_sasl_request(&out.stdout),
            "no AuthenticationSASL from the server:\n{}",
            out.text()
        );
    };

    direct(Some("postgresql"), "ALPN protocol: postgresql");
    reverse.wait_count(r#"\bclosed\b.*alpn="?postgresql\b"#, 1);
    let l = &reverse.conn_lines()[0];
    assert_eq!(l.get("pg_preamble"), Some("direct_tls"), "{}", l.raw);
    assert_eq!(l.get("zstd"), Some("false"), "{}", l.raw);
    assert_eq!(l.get("route"), Some(ROUTE), "{}", l.raw);

    direct(None, "No ALPN negotiated");
    reverse.wait_count(r#"\bclosed\b.*alpn="?-"?\s"#, 1);
    assert_eq!(tcp_connections_received(&pg), 2, "{}", pg.log_tail());
    assert_eq!(reverse.count(r"\brefused\b"), 0, "{}", reverse.log());
    reverse.assert_running();
}

/// A PostgreSQL client (SSLRequest, or ALPN `postgresql`) on a route not marked `postgres` is
/// refused after the handshake (alert no_application_protocol, `not_postgres_route`) and its
/// upstream never sees it; a plain TLS client still gets that route. The postgres route still
/// serves a replink forward end, compressed: psql through forward -> reverse.
#[test]
fn postgres_clients_only_reach_postgres_routes_and_forward_ends_still_work() {
    let stream_upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
    stream_upstream.set_nonblocking(true).expect("nonblocking");
    let stream_route = format!(
        "{STREAM_ROUTE}={}",
        stream_upstream.local_addr().expect("addr")
    );
    let (pki, _pg, mut reverse) = pg_behind_reverse(&[stream_route], &[]);

    let out = psql(
        pki.dir(),
        &verify_full(&pki, &reverse, STREAM_ROUTE),
        &["-c", "SELECT 1"],
        Input::Null,
    );
    eprintln!("--- psql to a stream route:\n{}", out.text());
    assert!(!out.success(), "{}", out.text());
    let l = line_with_reason(&reverse, "refused", "not_postgres_route");
    assert_eq!(l.get("route"), Some(STREAM_ROUTE), "{}", l.raw);
    assert_eq!(l.get("pg_preamble"), Some("ssl_request"), "{}", l.raw);
    assert!(
        l.get("peer_cert")
            .is_some_and(|c| c.contains("replink-demo-client")),
        "{}",
        l.raw
    );

    let p = &pki.files;
    let out = s_client(
        reverse.addr(),
        STREAM_ROUTE,
        &p.ca_pem,
        Some((&p.client_cert, &p.client_key)),
        &["-alpn", "postgresql", "-ign_eof", "-nocommands"],
        Input::Bytes(&startup_message()),
        patience(),
    );
    eprintln!(
        "--- s_client -alpn postgresql to a stream route:\n{}",
        out.text()
    );
    assert!(
        out.text().contains("no application protocol"),
        "{}",
        out.text()
    );
    reverse.wait_count(
        r#"\brefused\b.*pg_preamble=direct_tls\b.*reason="?not_postgres_route\b"#,
        1,
    );
    assert!(
        matches!(stream_upstream.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the stream route's upstream was connected"
    );

    // Without ALPN the stream route is served as ever.
    stream_upstream.set_nonblocking(false).expect("blocking");
    let upstream = std::thread::spawn(move || {
        let (mut conn, _) = stream_upstream.accept().expect("the stream route connects");
        conn.set_read_timeout(Some(patience())).expect("timeout");
        let mut got = [0u8; 13];
        conn.read_exact(&mut got).expect("s_client's bytes");
        got
    });
    let out = s_client(
        reverse.addr(),
        STREAM_ROUTE,
        &p.ca_pem,
        Some((&p.client_cert, &p.client_key)),
        &["-quiet"],
        Input::Bytes(b"plain stream\n"),
        patience(),
    );
    assert!(!out.timed_out(), "`{}` hung:\n{}", out.command, out.stderr);
    assert_eq!(
        &upstream.join().expect("upstream thread"),
        b"plain stream\n"
    );
    reverse.wait_count(
        r#"\bclosed\b.*route="?stream\.repl\.test"?\s.*pg_preamble=direct_tls\b"#,
        1,
    );

    // psql in plaintext to a forward end, which carries it to the postgres route with zstd.
    let forward = start_forward(&pki, reverse.addr(), ROUTE, &PairOptions::default());
    let via_forward = format!(
        "sslmode=disable host=127.0.0.1 port={} user=postgres dbname=postgres",
        forward.addr().port()
    );
    let out = psql(
        pki.dir(),
        &via_forward,
        &[
            "-c",
            "SELECT count(*) FROM generate_series(1, 100000) AS g(i) WHERE i % 7 = 0",
        ],
        Input::Null,
    )
    .assert_ok();
    assert_eq!(out.stdout_text().trim(), "14285");
    reverse.wait_count(
        r#"\bclosed\b.*route="?pg\.repl\.test"?\s.*reason="?done"#,
        1,
    );
    let l = reverse
        .conn_lines()
        .into_iter()
        .find(|l| l.message == "closed" && l.get("route") == Some(ROUTE))
        .expect("the forward end's line");
    assert_eq!(l.get("zstd"), Some("true"), "{}", l.raw);
    assert_eq!(l.get("alpn"), Some("replink-zstd/1"), "{}", l.raw);
    assert_eq!(l.get("pg_preamble"), Some("direct_tls"), "{}", l.raw);
    reverse.assert_running();
}

/// Bytes before TLS that no PostgreSQL client sends — text, an oversized length, a malformed
/// SSLRequest, data pipelined behind an SSLRequest — are closed unanswered with
/// `pg_bad_preamble`, a stalled preamble at the handshake timeout; a psql session that is
/// open meanwhile carries on, and new ones connect.
#[test]
fn garbage_before_tls_is_closed_and_logged() {
    let (pki, pg, mut reverse) = pg_behind_reverse(&[], &["--handshake-timeout", "2s"]);
    let info = verify_full(&pki, &reverse, ROUTE);

    // A session that spans the garbage: connected before, querying after.
    let session = {
        let (home, info) = (pki.dir().to_path_buf(), info.clone());
        std::thread::spawn(move || {
            let queries = ["-c", "SELECT pg_sleep(3)", "-c", "SELECT 'still here'"];
            psql(&home, &info, &queries, Input::Null)
        })
    };
    assert_eventually!(tcp_connections_received(&pg) == 1, "the session connects");

    let cases: [(&str, Vec<u8>); 4] = [
        (
            "text",
            b"GET / HTTP/1.1\r\nHost: pg.repl.test\r\n\r\n".to_vec(),
        ),
        ("oversized length", vec![0, 0, 0x40, 0, 0, 3, 0, 0]),
        (
            "SSLRequest of 16 bytes",
            vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2f, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        (
            "data behind SSLRequest",
            [&SSL_REQUEST[..], &[0x16, 3, 1, 0, 200]].concat(),
        ),
    ];
    for (what, bytes) in &cases {
        let mut c = connect(reverse.addr());
        c.write_all(bytes).expect("send");
        let answer = read_to_close(&mut c, what);
        assert!(answer.is_empty(), "{what}: got {answer:?}");
    }
    // Only four bytes of an oversized length: refused without waiting for more.
    let mut c = connect(reverse.addr());
    c.write_all(&[0x7f, 0xff, 0xff, 0xff]).expect("send");
    let started = Instant::now();
    assert!(read_to_close(&mut c, "4-byte oversized length").is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    reverse.wait_count(
        r#"\brefused\b.*pg_preamble=bad\b.*reason="?pg_bad_preamble\b"#,
        5,
    );

    // Three bytes, then silence: cut at the handshake timeout.
    let mut c = connect(reverse.addr());
    c.write_all(&[0, 0, 0]).expect("send");
    let started = Instant::now();
    read_to_close(&mut c, "stalled preamble");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    let l = line_with_reason(&reverse, "refused", "handshake_timeout");
    assert_eq!(l.get("pg_preamble"), Some("incomplete"), "{}", l.raw);

    let out = session.join().expect("session thread");
    assert!(
        out.success() && out.stdout_text().contains("still here"),
        "{}",
        out.text()
    );
    let out = psql(pki.dir(), &info, &["-c", "SELECT 'new'"], Input::Null).assert_ok();
    assert_eq!(out.stdout_text().trim(), "new");
    reverse.wait_count(r#"\bclosed\b.*reason="?done"#, 2);
    assert_eq!(reverse.count(r"\brefused\b"), 6, "{}", reverse.log());
    assert_eq!(tcp_connections_received(&pg), 2, "{}", pg.log_tail());
    reverse.assert_running();
}
