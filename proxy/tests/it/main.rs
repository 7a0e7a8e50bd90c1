//! In-process tests of the `replink` library against real rustls peers: what the end-to-end
//! suite in `tests/` cannot see from outside (KeyUpdate in both directions, session tickets
//! issued by our record layer, both io drivers).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use replink::config::{Route, TlsFiles};
use replink::{Compression, IoDriver, ListenerConfig, Mode, ProxyHandle};
use replink_pki::ThrowawayPki;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const SNI: &str = "pg.repl.test";

/// Echoes every connection until EOF, then half-closes.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn reverse(pki: &ThrowawayPki, upstream: SocketAddr, driver: IoDriver) -> ProxyHandle {
    reverse_with(pki, upstream, driver, false)
}

fn reverse_with(
    pki: &ThrowawayPki,
    upstream: SocketAddr,
    driver: IoDriver,
    tls12: bool,
) -> ProxyHandle {
    replink::start(reverse_config(pki, upstream, driver, tls12), "reverse").unwrap()
}

fn reverse_config(
    pki: &ThrowawayPki,
    upstream: SocketAddr,
    driver: IoDriver,
    tls12: bool,
) -> ListenerConfig {
    let route: Route = format!("{SNI}={upstream}").parse().unwrap();
    ListenerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        mode: Mode::Reverse {
            routes: vec![route],
        },
        tls: TlsFiles {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            ca: pki.ca_pem.clone(),
            tls12,
            ciphers: Vec::new(),
            crls: Vec::new(),
            allow_expired_crl: false,
        },
        compression: Compression::Zstd { level: 1 },
        workers: 1,
        io_driver: driver,
        ktls: replink::Ktls::Off,
        bpf_classifier: replink::BpfClassifier::Off,
        connect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: None,
        keepalive: true,
        max_connections: 100,
        rekey_after: None,
    }
}

fn client_config(pki: &ThrowawayPki) -> Arc<ClientConfig> {
    client_config_for(pki, &[&rustls::version::TLS13])
}

fn client_config_for(
    pki: &ThrowawayPki,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<_> = CertificateDer::pem_file_iter(&pki.client_cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.client_key).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .unwrap(),
    )
}

fn connect(
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
) -> StreamOwned<ClientConnection, TcpStream> {
    let conn = ClientConnection::new(config.clone(), ServerName::try_from(SNI).unwrap()).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    StreamOwned::new(conn, sock)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// Writes `data`, asking for a KeyUpdate (update_requested) every `every` bytes, and checks the
/// echo: our reverse end must follow the client's new keys and answer with a KeyUpdate of its
/// own that the rustls client accepts.
fn key_updates_both_ways(driver: IoDriver) {
    let dir = tempfile::tempdir().unwrap();
    let pki = ThrowawayPki::mint(dir.path(), &[SNI]).unwrap();
    let proxy = reverse(&pki, echo_server(), driver);
    let config = client_config(&pki);
    let mut tls = connect(&config, proxy.local_addr);
    let data = pattern(6 << 20, 7);
    let mut echoed = Vec::with_capacity(data.len());
    for chunk in data.chunks(512 * 1024) {
        tls.write_all(chunk).unwrap();
        // KeyUpdate with update_requested: our end must rekey its receive side and answer
        // with a KeyUpdate before the echoed bytes, which rustls must then accept.
        tls.conn.refresh_traffic_keys().unwrap();
        tls.flush().unwrap();
        let mut back = vec![0u8; chunk.len()];
        tls.read_exact(&mut back).unwrap();
        echoed.extend_from_slice(&back);
    }
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "{} unexpected bytes after the echo",
        rest.len()
    );
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "echo differs from what was sent");
}

#[test]
fn key_updates_both_ways_io_uring() {
    key_updates_both_ways(IoDriver::IoUring);
}

#[test]
fn key_updates_both_ways_epoll() {
    key_updates_both_ways(IoDriver::Epoll);
}

/// The tickets our server side sends during the handshake let a rustls client resume.
#[test]
fn session_tickets_resume() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ThrowawayPki::mint(dir.path(), &[SNI]).unwrap();
    let proxy = reverse(&pki, echo_server(), IoDriver::Auto);
    let config = client_config(&pki);
    for round in 0..3 {
        let mut tls = connect(&config, proxy.local_addr);
        tls.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        tls.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        let kind = tls.conn.handshake_kind();
        if round == 0 {
            assert_eq!(kind, Some(HandshakeKind::Full));
        } else {
            assert_eq!(
                kind,
                Some(HandshakeKind::Resumed),
                "round {round} did not resume"
            );
        }
        tls.conn.send_close_notify();
        let _ = tls.flush();
    }
}

/// TLS 1.2 is refused by default and works with `--tls12` (records sealed by our TLS 1.2 path).
#[test]
fn tls12_only_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ThrowawayPki::mint(dir.path(), &[SNI]).unwrap();
    let upstream = echo_server();
    let config = client_config_for(&pki, &[&rustls::version::TLS12]);
    let strict = reverse(&pki, upstream, IoDriver::Auto);
    let mut tls = connect(&config, strict.local_addr);
    assert!(
        tls.write_all(b"x")
            .and_then(|_| tls.flush())
            .and_then(|_| tls.read(&mut [0u8; 1]))
            .is_err(),
        "TLS 1.2 must be refused by default"
    );
    let lenient = reverse_with(&pki, upstream, IoDriver::Auto, true);
    let mut tls = connect(&config, lenient.local_addr);
    let data = pattern(300_000, 3);
    tls.write_all(&data).unwrap();
    let mut back = vec![0u8; data.len()];
    tls.read_exact(&mut back).unwrap();
    assert!(back == data);
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

/// A ClientHello that arrives one byte per TCP segment is reassembled and routed.
#[test]
fn client_hello_one_byte_per_segment() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ThrowawayPki::mint(dir.path(), &[SNI]).unwrap();
    let proxy = reverse(&pki, echo_server(), IoDriver::Auto);
    let config = client_config(&pki);
    let mut conn = ClientConnection::new(config, ServerName::try_from(SNI).unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let sock = TcpStream::connect(proxy.local_addr).unwrap();
    sock.set_nodelay(true).unwrap();
    for b in &hello {
        (&sock).write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    tls.write_all(b"split hello").unwrap();
    let mut back = [0u8; 11];
    tls.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"split hello");
}

/// A client reset reaches the upstream as a reset (not a clean end of stream).
#[test]
fn reset_propagates_as_reset() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ThrowawayPki::mint(dir.path(), &[SNI]).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = l.local_addr().unwrap();
    let proxy = reverse(&pki, upstream, IoDriver::Auto);
    let config = client_config(&pki);
    let mut tls = connect(&config, proxy.local_addr);
    tls.write_all(b"some bytes").unwrap();
    tls.flush().unwrap();
    let (mut up, _) = l.accept().unwrap();
    up.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = [0u8; 10];
    up.read_exact(&mut got).unwrap();
    // SO_LINGER 0 then close: the client's kernel sends RST.
    socket2::SockRef::from(tls.get_ref())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(tls);
    let mut rest = Vec::new();
    let err = up
        .read_to_end(&mut rest)
        .expect_err("a reset must not look like a clean end of stream");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

/// A TLS client that sends its last bytes and close_notify, then closes its socket without
/// waiting for ours (libpq's way), ends cleanly when the upstream has nothing more for it; when
/// the upstream still sends, those bytes are lost and the connection counts as failed.
#[test]
fn client_leaving_after_its_close_notify() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ThrowawayPki::mint(dir.path(), &[SNI]).unwrap();
    let config = client_config(&pki);
    for (upstream_tail, want_failed) in [(0usize, 0u64), (1 << 20, 1)] {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = reverse(&pki, l.local_addr().unwrap(), IoDriver::Auto);
        let mut tls = connect(&config, proxy.local_addr);
        // Take in the server's session tickets first, as a real client does while it reads:
        // a socket closed with unread bytes sends a RST instead of a FIN, and a RST can destroy
        // the close_notify still in flight, which rightly fails the connection.
        tls.sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut none = [0u8; 1];
        let quiet = tls.read(&mut none);
        assert!(
            matches!(&quiet, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "the server sent application data first: {quiet:?}"
        );
        tls.write_all(b"X\0\0\0\x04").unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        drop(tls);
        let (mut up, _) = l.accept().unwrap();
        up.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::new();
        up.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"X\0\0\0\x04");
        let _ = up.write_all(&vec![7u8; upstream_tail]);
        drop(up);
        let stats = &proxy.stats;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while stats.established.load(Ordering::Relaxed) == 0
            || stats.active.load(Ordering::Relaxed) > 0
        {
            assert!(std::time::Instant::now() < deadline, "{stats:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            stats.failed.load(Ordering::Relaxed),
            want_failed,
            "upstream sent {upstream_tail} bytes after the client left: {stats:?}"
        );
    }
}

/// `replink demo`, the README's first command, runs and verifies its checksums.
#[test]
fn demo_runs_and_checksums_match() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_replink"))
        .args(["demo", "--size-mib", "32"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("match").count(), 2, "{text}");
    assert!(
        text.contains("compression zstd") && text.contains("compression off"),
        "{text}"
    );
}

/// `--idle-timeout`: a link silent in both directions is closed (as a reset upstream); one
/// that keeps talking is not.
#[test]
fn idle_timeout_closes_only_silent_links() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ThrowawayPki::mint(dir.path(), &[SNI]).unwrap();
    let mut config = reverse_config(&pki, echo_server(), IoDriver::Auto, false);
    config.idle_timeout = Some(Duration::from_millis(800));
    let proxy = replink::start(config, "reverse").unwrap();
    let client = client_config(&pki);
    let mut busy = connect(&client, proxy.local_addr);
    let mut silent = connect(&client, proxy.local_addr);
    silent.write_all(b"hi").unwrap();
    let mut two = [0u8; 2];
    silent.read_exact(&mut two).unwrap();
    for _ in 0..8 {
        busy.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        busy.read_exact(&mut b).unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    // 2 s later: the busy link is alive, the silent one was cut.
    busy.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    busy.read_exact(&mut b).unwrap();
    // Closed by the proxy: EOF or an error at once, not a read that merely times out.
    silent
        .sock
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut rest = [0u8; 1];
    match silent.read(&mut rest) {
        Ok(0) => {}
        Ok(n) => panic!("the silent link got {n} bytes instead of being closed"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the silent link is still open: {e}"
        ),
    }
}

/// `--max-connections`: connections beyond the limit are closed at once; the others work.
#[test]
fn max_connections_refuses_the_excess() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ThrowawayPki::mint(dir.path(), &[SNI]).unwrap();
    let mut config = reverse_config(&pki, echo_server(), IoDriver::Auto, false);
    config.max_connections = 2;
    config.workers = 1;
    let proxy = replink::start(config, "reverse").unwrap();
    let client = client_config(&pki);
    let mut ok = Vec::new();
    for _ in 0..2 {
        let mut c = connect(&client, proxy.local_addr);
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        ok.push(c);
    }
    let mut third = connect(&client, proxy.local_addr);
    let _ = third.write_all(b"x");
    let mut b = [0u8; 1];
    assert!(
        third.read_exact(&mut b).is_err(),
        "the third connection must be refused"
    );
    assert!(
        proxy
            .stats
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    for c in &mut ok {
        c.write_all(b"y").unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"y");
    }
}
