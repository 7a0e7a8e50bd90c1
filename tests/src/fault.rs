//! Tools for fault injection (`tests/it/faults.rs`): a transfer kept in flight while a fault
//! hits another connection ([`Unrelated`]), an upstream that hands marked connections to a
//! fault and relays the others to the [`StreamServer`] ([`SplitUpstream`]), a process's memory,
//! file descriptors and CPU time from `/proc` ([`ProcStats`]), and a rustls client for talking
//! to a reverse end directly ([`tls_client_config`]).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{patience, run_seed, run_transfer_paced, verify_transfer, ClientReport};
use crate::{Pki, StreamServer, Transfer};

/// The first bytes of a connection that [`SplitUpstream`] gives to its fault.
pub const FAULT_MARK: &[u8; 6] = b"FAULT:";

/// A byte-exact transfer kept moving (a trickled upload, so never idle) through some address
/// while a fault hits another connection; [`Unrelated::finish`] lets it run to the end and
/// checks both ends.
pub struct Unrelated {
    resume: mpsc::Sender<()>,
    thread: JoinHandle<ClientReport>,
    seed: u64,
}

impl Unrelated {
    /// Starts a transfer of 128 MiB up and 32 MiB down, compressible or not by `salt`.
    pub fn start(addr: SocketAddr, salt: u64) -> Unrelated {
        let seed = run_seed() ^ salt;
        let t = Transfer::new(seed, 128 << 20, 32 << 20).compressible(salt & 1 == 0);
        let (resume, paced) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            run_transfer_paced(addr, t, Duration::from_millis(20), paced)
        });
        Unrelated {
            resume,
            thread,
            seed,
        }
    }

    /// Panics if the transfer already ended (the fault must not have cut it); then lets the
    /// upload run at full speed and checks both ends byte for byte.
    #[track_caller]
    pub fn finish(self, server: &StreamServer) {
        assert!(
            !self.thread.is_finished(),
            "the unrelated transfer (seed {}) ended during the fault: {:?}",
            self.seed,
            self.thread.join().map(|r| verify_transfer(server, &r))
        );
        let _ = self.resume.send(());
        let report = self.thread.join().expect("transfer thread");
        if let Err(e) = verify_transfer(server, &report) {
            panic!("the unrelated transfer is not intact: {e}");
        }
    }
}

/// An upstream in front of a [`StreamServer`]: a connection whose first bytes are
/// [`FAULT_MARK`] goes to `fault` (on its own thread, mark consumed); any other is relayed to
/// the stream server both ways (half-closes passed on), so a transfer and a fault can share
/// one route.
pub struct SplitUpstream {
    addr: SocketAddr,
}

impl SplitUpstream {
    pub fn start(
        stream_server: SocketAddr,
        fault: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> SplitUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let fault = Arc::new(fault);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let fault = fault.clone();
                std::thread::spawn(move || {
                    let mut first = [0u8; FAULT_MARK.len()];
                    if conn.read_exact(&mut first).is_err() {
                        return;
                    }
                    if &first == FAULT_MARK {
                        return fault(conn);
                    }
                    let Ok(mut server) = TcpStream::connect(stream_server) else {
                        return reset(conn);
                    };
                    if server.write_all(&first).is_err() {
                        return reset(conn);
                    }
                    let (c2, s2) = match (conn.try_clone(), server.try_clone()) {
                        (Ok(c), Ok(s)) => (c, s),
                        _ => return reset(conn),
                    };
                    let up = std::thread::spawn(move || pipe(conn, server));
                    pipe(s2, c2);
                    let _ = up.join();
                });
            }
        });
        SplitUpstream { addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Copies `from` to `to` until EOF (then half-closes `to`) or an error (then resets both).
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    reset(to);
}

/// Closes `s` with an RST (SO_LINGER 0).
pub fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// How a reader's stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// A clean EOF (FIN) after this many bytes.
    Eof(u64),
    /// A read error (a reset, mostly) after this many bytes.
    Error(u64, ErrorKind),
}

impl StreamEnd {
    pub fn bytes(&self) -> u64 {
        match self {
            StreamEnd::Eof(n) | StreamEnd::Error(n, _) => *n,
        }
    }
}

/// Reads `conn` to its end (at most [`patience`] per read), calling `check` on each piece.
pub fn read_to_end_with(conn: &mut impl Read, mut check: impl FnMut(&[u8])) -> StreamEnd {
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return StreamEnd::Eof(n),
            Ok(k) => {
                check(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return StreamEnd::Error(n, e.kind()),
        }
    }
}

/// What `/proc/PID` says about a process.
pub struct ProcStats;

impl ProcStats {
    /// Resident memory in KiB (`VmRSS`).
    pub fn rss_kib(pid: u32) -> u64 {
        Self::try_rss_kib(pid).unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
    }

    /// Open file descriptors.
    pub fn fds(pid: u32) -> usize {
        Self::try_fds(pid).unwrap_or_else(|| panic!("no /proc/{pid}/fd"))
    }

    /// [`rss_kib`](Self::rss_kib), or `None` once the process is gone.
    pub fn try_rss_kib(pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// [`fds`](Self::fds), or `None` once the process is gone.
    pub fn try_fds(pid: u32) -> Option<usize> {
        Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
    }

    /// User + system CPU time.
    pub fn cpu(pid: u32) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
        let ticks: u64 =
            f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }
}

/// A rustls client configuration with the PKI's client identity, TLS 1.3, offering `alpn`.
pub fn tls_client_config(pki: &Pki, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let p = &pki.files;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&p.ca_pem).expect("CA file") {
        roots
            .add(c.expect("CA certificate"))
            .expect("CA certificate");
    }
    let certs: Vec<_> = CertificateDer::pem_file_iter(&p.client_cert)
        .expect("client cert file")
        .map(|c| c.expect("client certificate"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(&p.client_key).expect("client key");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .expect("client identity");
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` for `sni` with `config`, handshake done (reads time out after
/// [`patience`]).
pub fn tls_connect(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("server name");
    let conn = rustls::ClientConnection::new(config.clone(), name).expect("client connection");
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(patience())).expect("timeout");
    sock.set_write_timeout(Some(patience())).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("TLS handshake with the reverse end");
    }
    tls
}
