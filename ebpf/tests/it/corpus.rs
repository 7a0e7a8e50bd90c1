//! The shared ClientHello corpus (`ebpf/corpus/*.bin`): each file's name starts with the
//! outcome both parsers must reach, with the routes of [`routes`]. `regenerate_corpus` (ignored)
//! writes the files again from the builders here.

use std::path::PathBuf;
use std::sync::Arc;

use replink_ebpf::{parse_client_hello, Parse, Reason, SniTable};

/// The routes the corpus's names are classified against.
pub fn routes() -> SniTable<u32> {
    let mut t = SniTable::new();
    for (pattern, id) in [
        ("pg.repl.test", 1),
        ("*.repl.test", 2),
        ("only.exact.test", 3),
    ] {
        t.insert(pattern.parse().unwrap(), id).unwrap();
    }
    t
}

pub struct Case {
    pub name: String,
    pub bytes: Vec<u8>,
    /// From the file name.
    pub label: Reason,
}

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

pub fn load() -> Vec<Case> {
    let mut cases: Vec<Case> = std::fs::read_dir(dir())
        .expect("ebpf/corpus")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_str().unwrap().to_owned();
            let label = label(&name).unwrap_or_else(|| panic!("{name}: unknown outcome prefix"));
            Case {
                bytes: std::fs::read(&p).unwrap(),
                name,
                label,
            }
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        cases.len() >= 10,
        "corpus went missing: {} cases",
        cases.len()
    );
    cases
}

pub fn case(name: &str) -> Case {
    load()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no corpus case {name}"))
}

fn label(name: &str) -> Option<Reason> {
    [
        ("routed-", Reason::Routed),
        ("no-route-", Reason::NoRoute),
        ("no-sni-", Reason::NoSni),
        ("malformed-", Reason::Malformed),
        ("fragmented-", Reason::Fragmented),
        ("limit-", Reason::Limit),
    ]
    .into_iter()
    .find(|(prefix, _)| name.starts_with(prefix))
    .map(|(_, r)| r)
}

/// What the userspace parser makes of `bytes`, in the classifier's terms: (reason, route,
/// server name length). A ClientHello the kernel leaves to userspace (`Fragmented`, `Limit`)
/// must parse completely here.
pub fn oracle(case: &Case, routes: &SniTable<u32>) -> (Reason, Option<u32>, u16) {
    let hello = match parse_client_hello(&case.bytes) {
        Err(_) => return (Reason::Malformed, None, 0),
        Ok(Parse::Incomplete { .. }) => panic!("{}: incomplete ClientHello in corpus", case.name),
        Ok(Parse::Complete(hello)) => hello,
    };
    let first_record = 5 + u16::from_be_bytes([case.bytes[3], case.bytes[4]]) as usize;
    if hello.record_bytes > first_record {
        return (Reason::Fragmented, None, 0);
    }
    if case.label == Reason::Limit {
        return (Reason::Limit, None, 0);
    }
    match hello.server_name {
        None => (Reason::NoSni, None, 0),
        Some(name) => {
            let len = name.len() as u16;
            match routes.lookup(&name) {
                Some(&id) => (Reason::Routed, Some(id), len),
                None => (Reason::NoRoute, None, len),
            }
        }
    }
}

#[test]
fn the_userspace_parser_agrees_with_the_corpus_labels() {
    let routes = routes();
    let mut seen = std::collections::BTreeSet::new();
    for case in load() {
        let (reason, ..) = oracle(&case, &routes);
        assert_eq!(reason, case.label, "{}", case.name);
        seen.insert(reason);
    }
    assert_eq!(seen.len(), 6, "every outcome has a case: {seen:?}");
}

// --- builders -------------------------------------------------------------------------------

fn u16be(n: usize) -> [u8; 2] {
    (n as u16).to_be_bytes()
}

/// A TLS record of `typ` around `body`.
fn record(typ: u8, body: &[u8]) -> Vec<u8> {
    let mut r = vec![typ, 3, 1];
    r.extend_from_slice(&u16be(body.len()));
    r.extend_from_slice(body);
    r
}

/// A ClientHello handshake message with these extensions (`None`: no extensions block).
fn hello_message(extensions: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(32);
    body.extend_from_slice(&[0x17; 32]); // session_id
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]); // cipher_suites
    body.extend_from_slice(&[1, 0]); // compression_methods
    if let Some(exts) = extensions {
        let mut block = Vec::new();
        for (typ, data) in exts {
            block.extend_from_slice(&typ.to_be_bytes());
            block.extend_from_slice(&u16be(data.len()));
            block.extend_from_slice(data);
        }
        body.extend_from_slice(&u16be(block.len()));
        body.extend_from_slice(&block);
    }
    let mut msg = vec![1, 0];
    msg.extend_from_slice(&u16be(body.len()));
    msg.extend_from_slice(&body);
    msg
}

/// server_name extension data with these (type, name) entries.
fn sni(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in entries {
        list.push(*kind);
        list.extend_from_slice(&u16be(name.len()));
        list.extend_from_slice(name);
    }
    let mut data = u16be(list.len()).to_vec();
    data.extend_from_slice(&list);
    data
}

fn alpn(protocols: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for p in protocols {
        list.push(p.len() as u8);
        list.extend_from_slice(p);
    }
    let mut data = u16be(list.len()).to_vec();
    data.extend_from_slice(&list);
    data
}

fn one_record(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    record(0x16, &hello_message(Some(exts)))
}

/// A real ClientHello from rustls (TLS 1.3 and 1.2, ALPN replink-zstd/1).
fn rustls_hello(server_name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"replink-zstd/1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let name = |n: &[u8]| (0u16, sni(&[(0, n)]));
    let long_label = [b'a'; 64];
    let mut long_name = Vec::new();
    for _ in 0..63 {
        long_name.extend_from_slice(b"abc.");
    }
    long_name.extend_from_slice(b"test"); // 256 bytes
    let many: Vec<(u16, Vec<u8>)> = (0..40u16)
        .map(|i| (100 + i, vec![]))
        .chain([name(b"pg.repl.test")])
        .collect();
    let split_msg = hello_message(Some(&[name(b"pg.repl.test")]));
    let (a, b) = split_msg.split_at(40);
    let mut fragmented = record(0x16, a);
    fragmented.extend_from_slice(&record(0x16, b));

    vec![
        ("routed-rustls-exact", rustls_hello("pg.repl.test")),
        ("routed-rustls-wildcard", rustls_hello("redis.repl.test")),
        ("routed-rustls-exact-only", rustls_hello("only.exact.test")),
        ("no-route-rustls", rustls_hello("db.example.org")),
        (
            "no-route-wildcard-two-labels",
            rustls_hello("a.b.repl.test"),
        ),
        ("no-route-wildcard-parent", rustls_hello("repl.test")),
        ("no-sni-rustls-ip", rustls_hello("192.0.2.7")),
        (
            "routed-upper-case-trailing-dot",
            one_record(&[name(b"PG.Repl.TEST.")]),
        ),
        (
            "routed-sni-after-alpn",
            one_record(&[
                (16, alpn(&[b"postgresql"])),
                (0x2b, vec![2, 3, 4]),
                name(b"files.repl.test"),
            ]),
        ),
        (
            "routed-skips-unknown-name-type",
            one_record(&[(0, sni(&[(7, b"xx"), (0, b"pg.repl.test")]))]),
        ),
        ("routed-underscore", one_record(&[name(b"pg_1.repl.test")])),
        ("no-sni-no-extensions", record(0x16, &hello_message(None))),
        (
            "no-sni-other-extensions",
            one_record(&[(16, alpn(&[b"h2"]))]),
        ),
        (
            "no-sni-only-other-name-types",
            one_record(&[(0, sni(&[(1, b"x")]))]),
        ),
        (
            "malformed-not-tls",
            b"GET / HTTP/1.1\r\nHost: pg.repl.test\r\n\r\n".to_vec(),
        ),
        (
            "malformed-not-client-hello",
            record(0x16, &[2, 0, 0, 2, 3, 3]),
        ),
        ("malformed-alert-record", record(0x15, &[2, 40])),
        ("malformed-bad-char", one_record(&[name(b"pg repl.test")])),
        (
            "malformed-empty-label",
            one_record(&[name(b"pg..repl.test")]),
        ),
        ("malformed-long-label", one_record(&[name(&long_label)])),
        ("malformed-long-name", one_record(&[name(&long_name)])),
        ("malformed-empty-name", one_record(&[name(b"")])),
        ("malformed-only-dot", one_record(&[name(b".")])),
        (
            "malformed-two-host-names",
            one_record(&[(0, sni(&[(0, b"a.test"), (0, b"b.test")]))]),
        ),
        (
            "malformed-duplicate-extension",
            one_record(&[
                (16, alpn(&[b"h2"])),
                name(b"pg.repl.test"),
                (16, alpn(&[b"h2"])),
            ]),
        ),
        (
            "malformed-sni-list-short",
            one_record(&[(0, vec![0, 20, 0, 0, 2, b'a', b'b'])]),
        ),
        (
            "malformed-sni-trailing-bytes",
            one_record(&[(0, {
                let mut d = sni(&[(0, b"pg.repl.test")]);
                d.push(0);
                d
            })]),
        ),
        ("malformed-extension-overruns", {
            let mut r = one_record(&[name(b"pg.repl.test")]);
            let n = r.len();
            r[n - 19] = 0xff; // high byte of the server_name extension's length
            r
        }),
        ("fragmented-two-records", fragmented),
        ("limit-forty-extensions", one_record(&many)),
    ]
}

#[test]
#[ignore = "writes ebpf/corpus/; run when the builders change"]
fn regenerate_corpus() {
    let dir = dir();
    for old in std::fs::read_dir(&dir).unwrap() {
        let path = old.unwrap().path();
        if path.extension().is_some_and(|e| e == "bin") {
            std::fs::remove_file(path).unwrap();
        }
    }
    for (name, bytes) in cases() {
        std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
    }
}
