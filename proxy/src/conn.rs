//! One connection from accept to close, for each listener mode.
//!
//! ```text
//! reverse: accept -> [libpq preamble] -> [bpf: first bytes, kernel refuses unknown SNI]
//!          -> read ClientHello -> [bpf: compare] -> route by SNI
//!          -> [passthrough route: connect upstream, ClientHello, bytes both ways; see
//!              `passthrough`] -> rustls handshake
//!          -> [postgres client: postgres route?] -> connect upstream -> relay
//! forward: accept -> connect remote -> rustls handshake (SNI, ALPN offer) -> relay
//! ```
//! The libpq preamble (SSLRequest, GSSENCRequest, or a plaintext StartupMessage to refuse) is
//! read only when the listener has a `postgres` route; see `pg`.
//! Every connection ends in exactly one log line: `closed` with its byte counts, or `refused`
//! with the reason.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use replink_ebpf::{parse_client_hello, HelloError, Parse, SniTable};
use rustls::{AlertDescription, ContentType};

use crate::authz::PeerIdentity;
use crate::bpf::{BpfCheck, BpfOutcome, Early, Progress, Userspace};
use crate::buffers::{read_more, SMALL};
use crate::config::{Endpoint, RouteKind, Target};
use crate::passthrough::{self, InKernel, PassPath};
use crate::pg::{self, Next, Preamble, PreambleLog};
use crate::relay::{relay, ConnError, RelayOptions, Traffic};
use crate::tls::handshake::Established;
use crate::tls::record::{self, Sealer};
use crate::tls::{handshake, ALPN_POSTGRESQL, ALPN_ZSTD};
use crate::worker::{ModeState, RouteEntry, Shared};

/// What the log line says about a connection besides its outcome.
#[derive(Default)]
struct ConnInfo {
    route: Option<String>,
    peer_subject: Option<String>,
    compressed: bool,
    resumed: bool,
    upstream: Option<String>,
    /// The ALPN protocol selected, for the log.
    alpn: Option<String>,
    /// The negotiated cipher suite, for the log.
    cipher: Option<rustls::CipherSuite>,
    /// How a client of a listener with `postgres` routes began (`pg_preamble=`).
    preamble: Option<PreambleLog>,
    /// What the BPF classifier said (`bpf=`).
    bpf: BpfOutcome,
    /// Upstream endpoints that did not answer before the one used (failover).
    failed_over: u32,
    /// How long the TLS handshake took (for the latency histogram).
    handshake_seconds: Option<f64>,
    /// A passthrough route's path (`passthrough=kernel|userspace`).
    passthrough: Option<PassPath>,
    /// The TLS handshake completed and the route accepted the client (a failure after this is
    /// not a refusal).
    established: bool,
}

impl ConnInfo {
    fn note_handshake(&mut self, est: &Established) {
        self.peer_subject = est.peer_subject.clone();
        self.alpn = est
            .alpn
            .as_deref()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        self.compressed = est.alpn.as_deref() == Some(ALPN_ZSTD);
        self.cipher = Some(est.suite);
        self.resumed = est.resumed;
    }
}

/// Runs one accepted connection to its end and logs it. Never panics on peer input: every
/// failure is a `ConnError`.
pub async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let start = Instant::now();
    let traffic = Rc::new(Traffic::default());
    let mut info = ConnInfo::default();
    let _active = active_guard(&shared);
    set_socket_options(&stream, &shared);
    let result = match &shared.mode {
        ModeState::Reverse { .. } => reverse(stream, peer, &shared, &traffic, &mut info).await,
        ModeState::Forward { .. } => forward(stream, &shared, &traffic, &mut info).await,
    };
    shared.stats.record(
        &traffic,
        info.established,
        result.as_ref().err().map(|e| e.reason()),
        start.elapsed().as_secs_f64(),
        info.handshake_seconds,
    );
    if let (Some(route), true) = (&info.route, info.established) {
        shared
            .stats
            .record_route(route, info.upstream.as_deref(), &traffic, result.is_ok());
    }
    let t = &*traffic;
    let dur_ms = start.elapsed().as_millis() as u64;
    let route = info.route.as_deref().unwrap_or("-");
    let subject = info.peer_subject.as_deref().unwrap_or("-");
    let upstream = info.upstream.as_deref().unwrap_or("-");
    let alpn = info.alpn.as_deref().unwrap_or("-");
    let cipher = info.cipher.map(|c| format!("{c:?}"));
    let cipher = cipher.as_deref().unwrap_or("-");
    let pg_preamble = info.preamble.unwrap_or(pg::NOT_SNIFFED);
    let passthrough = info
        .passthrough
        .map_or_else(|| "-".to_string(), |p| p.to_string());
    match &result {
        Ok(()) => tracing::info!(
            %peer, route, peer_cert = subject, upstream, zstd = info.compressed, resumed = info.resumed,
            alpn, %pg_preamble, bpf = %info.bpf, cipher, ktls = t.ktls(), ktls_fallback = t.ktls_fallback.get().unwrap_or("-"), failed_over = info.failed_over, passthrough,
            plain_to_tls = t.plain_to_tls.get(), wire_out = t.wire_out.get(),
            wire_in = t.wire_in.get(), tls_to_plain = t.tls_to_plain.get(),
            duration_ms = dur_ms, reason = "done", "closed"
        ),
        // A bare TCP connect and close (a health check, a port scan): counted, logged at
        // debug only, like HAProxy's `dontlognull`.
        Err(e @ ConnError::Empty) => tracing::debug!(
            %peer, reason = e.reason(), duration_ms = dur_ms, "refused"
        ),
        Err(e) if !info.established => tracing::warn!(
            %peer, route, peer_cert = subject, %pg_preamble, bpf = %info.bpf,
            reason = e.reason(), error = %e, duration_ms = dur_ms, "refused"
        ),
        Err(e) => tracing::warn!(
            %peer, route, peer_cert = subject, upstream, zstd = info.compressed, resumed = info.resumed,
            alpn, %pg_preamble, bpf = %info.bpf, cipher, ktls = t.ktls(), ktls_fallback = t.ktls_fallback.get().unwrap_or("-"), failed_over = info.failed_over, passthrough,
            plain_to_tls = t.plain_to_tls.get(), wire_out = t.wire_out.get(),
            wire_in = t.wire_in.get(), tls_to_plain = t.tls_to_plain.get(),
            duration_ms = dur_ms, reason = e.reason(), error = %e, "closed"
        ),
    }
}

fn set_socket_options(stream: &TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    if shared.config.keepalive {
        let _ = stream.set_tcp_keepalive(
            Some(Duration::from_secs(60)),
            Some(Duration::from_secs(10)),
            Some(6),
        );
    }
}

async fn with_deadline<T>(
    deadline: Instant,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, ConnError>>,
) -> Result<T, ConnError> {
    let left = deadline.saturating_duration_since(Instant::now());
    match monoio::time::timeout(left, fut).await {
        Ok(r) => r,
        Err(_) => Err(ConnError::Timeout(what)),
    }
}

/// Tries the target's endpoints in order (primary, then backups), each address of each with
/// the connect timeout; a name is resolved now, off the worker thread. Returns the stream and
/// the endpoint that answered; `info.failed_over` counts the endpoints that did not.
async fn connect<'t>(
    target: &'t Target,
    timeout: Duration,
    shared: &Shared,
    info: &mut ConnInfo,
) -> Result<(TcpStream, &'t Endpoint), ConnError> {
    let mut last = None;
    for endpoint in &target.endpoints {
        let addrs = match endpoint.literal {
            Some(addr) => vec![addr],
            None => match resolve(endpoint, timeout).await {
                Ok(addrs) => addrs,
                Err(e) => {
                    last = Some(e);
                    info.failed_over += 1;
                    continue;
                }
            },
        };
        for addr in addrs {
            match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
                Ok(Ok(s)) => {
                    set_socket_options(&s, shared);
                    return Ok((s, endpoint));
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ))
                }
            }
        }
        info.failed_over += 1;
    }
    Err(ConnError::Connect {
        target: target.spec.clone(),
        err: last.unwrap_or_else(|| std::io::Error::other("no address")),
    })
}

/// Resolves a name on the runtime's blocking pool (getaddrinfo blocks), within `timeout`.
async fn resolve(endpoint: &Endpoint, timeout: Duration) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    let (host, port) = (endpoint.host.clone(), endpoint.port);
    let lookup = monoio::spawn_blocking(move || {
        (host.as_str(), port)
            .to_socket_addrs()
            .map(|a| a.collect::<Vec<_>>())
    });
    match monoio::time::timeout(timeout, lookup).await {
        Ok(Ok(Ok(addrs))) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(Ok(_))) => Err(std::io::Error::other(format!(
            "{} resolves to no address",
            endpoint.host
        ))),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err(std::io::Error::other("the resolver thread failed")),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("resolving {} timed out", endpoint.host),
        )),
    }
}

/// A fatal alert sealed under the connection's keys, for a failure right after the handshake.
async fn send_sealed_alert(sock: &mut TcpStream, est: Established, desc: AlertDescription) {
    let Ok(mut sealer) = Sealer::new(est.version, est.tx.0, est.tx.1) else {
        return;
    };
    let mut out = Vec::new();
    let payload = record::alert_payload(true, desc);
    if sealer
        .seal_append(ContentType::Alert, &payload, &mut out)
        .is_ok()
    {
        let _ = sock.write_all(out).await;
    }
}

/// A plaintext TLS alert record, for refusals before any keys exist.
async fn send_plain_alert(sock: &mut TcpStream, desc: AlertDescription) {
    let record = vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, u8::from(desc)];
    let _ = sock.write_all(record).await;
}

/// Reads until the whole ClientHello is in, which may take several TCP segments and records.
/// `buf` holds what was read already (the start of the first record, after a libpq preamble).
async fn read_client_hello(
    sock: &mut TcpStream,
    mut buf: Vec<u8>,
    fresh: bool,
) -> Result<(Vec<u8>, replink_ebpf::ClientHello), ConnError> {
    loop {
        match parse_client_hello(&buf) {
            Ok(Parse::Complete(hello)) => return Ok((buf, hello)),
            Ok(Parse::Incomplete { needed_at_least }) => {
                let need = needed_at_least.saturating_sub(buf.len()).max(1024);
                let (res, b) = read_more(sock, buf, need).await;
                buf = b;
                match unless_kernel_not_ready(res).map_err(ConnError::Downstream)? {
                    Some(0) => {
                        return Err(if buf.is_empty() && fresh {
                            ConnError::Empty
                        } else {
                            ConnError::HandshakeEof
                        })
                    }
                    Some(_) => {}
                    None => monoio::time::sleep(Duration::from_millis(1)).await,
                }
            }
            Err(HelloError::NotTls) => return Err(ConnError::BadHello("not TLS".into())),
            Err(e) => {
                send_plain_alert(sock, AlertDescription::DecodeError).await;
                return Err(ConnError::BadHello(e.to_string()));
            }
        }
    }
}

/// A read of a socket in the BPF classifier's sockhash says EAGAIN (even through io_uring)
/// while bytes wait for the kernel's stream parser to run from its work queue (see
/// `Classifier::accepted`): that is "nothing read yet, try again shortly" (`None`). Other
/// errors pass through.
fn unless_kernel_not_ready(res: std::io::Result<usize>) -> std::io::Result<Option<usize>> {
    match res {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads libpq's plaintext preamble (see `pg`): answers a GSSENCRequest `N` and an SSLRequest
/// `S`. Returns the bytes the TLS ClientHello starts with (none after an SSLRequest), or
/// `PgPlaintext` for a plaintext StartupMessage or CancelRequest, which the caller answers
/// with [`refuse_plaintext`].
async fn read_pg_preamble(
    sock: &mut TcpStream,
    preamble: &mut Preamble,
) -> Result<Vec<u8>, ConnError> {
    // Every decision needs at most 8 bytes past two 8-byte requests, so this one buffer is
    // never outgrown: a client cannot make the preamble allocate.
    let mut buf = Vec::with_capacity(SMALL);
    // A GSSENCRequest was answered: the client is no longer one that sent nothing.
    let mut answered = false;
    loop {
        match preamble.next(&buf)? {
            Next::Read => {
                let (res, b) = read_more(sock, buf, 64).await;
                let fresh = b.is_empty() && !answered;
                buf = b;
                if res.map_err(ConnError::Downstream)? == 0 {
                    return Err(if fresh {
                        ConnError::Empty
                    } else {
                        ConnError::HandshakeEof
                    });
                }
            }
            Next::RefuseGssEnc => {
                answered = true;
                let (res, _) = sock.write_all(pg::ANSWER_NO).await;
                res.map_err(ConnError::Downstream)?;
            }
            Next::StartTls => {
                let (res, _) = sock.write_all(pg::ANSWER_TLS).await;
                res.map_err(ConnError::Downstream)?;
                buf.clear();
                return Ok(buf);
            }
            Next::DirectTls => {
                buf.drain(..preamble.consumed());
                return Ok(buf);
            }
            Next::RefusePlaintext(what) => return Err(ConnError::PgPlaintext(what)),
        }
    }
}

/// Most a refused plaintext client may still send, and how long it gets (from the
/// ErrorResponse to its close), before the connection is closed anyway.
const DRAIN_LIMIT: usize = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Sends a plaintext client the ErrorResponse, then waits briefly for it to close. Closing
/// with its StartupMessage still unread would send a reset, which can overtake the error on
/// the client's side and leave it with "connection reset" instead of the reason.
async fn refuse_plaintext(sock: &mut TcpStream) {
    refuse_gently(sock, pg::plaintext_refusal().to_vec()).await;
}

/// Sends `last` (a refusal), closes our side and reads what the client still sends until it
/// closes, for at most `DRAIN_TIME` and `DRAIN_LIMIT` bytes.
async fn refuse_gently(sock: &mut TcpStream, last: Vec<u8>) {
    let refuse = async {
        let (res, _) = sock.write_all(last).await;
        if res.is_err() || sock.shutdown().await.is_err() {
            return;
        }
        let mut buf = Vec::with_capacity(4096);
        let mut left = DRAIN_LIMIT;
        while left > 0 {
            buf.clear();
            let (res, b) = read_more(sock, buf, 4096).await;
            buf = b;
            match res {
                Ok(n) if n > 0 => left = left.saturating_sub(n),
                _ => return,
            }
        }
    };
    let _ = monoio::time::timeout(DRAIN_TIME, refuse).await;
}

async fn reverse(
    mut client: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    traffic: &Rc<Traffic>,
    info: &mut ConnInfo,
) -> Result<(), ConnError> {
    let ModeState::Reverse {
        routes,
        tls,
        sniff_postgres,
        bpf,
    } = &shared.mode
    else {
        return Ok(());
    };
    // Before the first read, so the kernel sees the ClientHello (never with a libpq preamble).
    let watched = bpf.as_ref().map(|b| b.watch(&client));
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let mut preamble = Preamble::new();
    let start = if *sniff_postgres {
        let start = with_deadline(
            deadline,
            "handshake",
            read_pg_preamble(&mut client, &mut preamble),
        )
        .await;
        info.preamble = Some(preamble.log_value());
        if let Err(ConnError::PgPlaintext(_)) = &start {
            refuse_plaintext(&mut client).await;
        }
        start?
    } else {
        Vec::with_capacity(SMALL)
    };
    // Nothing was exchanged yet unless a libpq preamble was read.
    let fresh = !*sniff_postgres;
    let read = with_deadline(deadline, "handshake", async {
        let start = match (bpf, &watched) {
            (Some(check), Some(Ok(cookie))) => {
                kernel_first(&mut client, check, *cookie, start, info).await?
            }
            _ => start,
        };
        read_client_hello(&mut client, start, fresh).await
    })
    .await;
    let user = userspace_verdict(&read, routes);
    // A passthrough connection keeps its socket in the sockhash, to be paired.
    let pass = matches!(&read, Ok((_, h)) if h
        .server_name
        .as_deref()
        .and_then(|n| routes.lookup(n))
        .is_some_and(|r| r.kind == RouteKind::Passthrough));
    let mut in_kernel = None;
    if let (Some(check), Some(watched)) = (bpf, watched) {
        if info.bpf == BpfOutcome::Off {
            let cookie = watched.as_ref().ok().copied();
            info.bpf = check.finish(watched, user, peer, pass);
            if let (true, Some(cookie), BpfOutcome::Kernel(_)) = (pass, cookie, info.bpf) {
                in_kernel = Some(InKernel { check, cookie });
            }
        }
    }
    let (incoming, hello) = read?;
    let Some(route) = hello.server_name.as_deref().and_then(|n| routes.lookup(n)) else {
        send_plain_alert(&mut client, AlertDescription::UnrecognisedName).await;
        return Err(ConnError::UnknownSni(hello.server_name));
    };
    info.route = Some(route.name.clone());
    if route.kind == RouteKind::Passthrough {
        // libpq's SSLRequest was answered here, so a PostgreSQL upstream would get a
        // ClientHello where it expects the SSLRequest: refused, with the reason, rather than
        // failing at the upstream.
        if preamble.is_libpq() {
            if let Some(k) = in_kernel {
                k.check.release(k.cookie);
            }
            send_plain_alert(&mut client, AlertDescription::HandshakeFailure).await;
            return Err(ConnError::LibpqOnPassthrough(route.name.clone()));
        }
        // No TLS at replink: the upstream terminates it (and authenticates the client).
        let connected = connect(&route.target, shared.config.connect_timeout, shared, info).await;
        let (upstream, endpoint) = match connected {
            Ok(u) => u,
            Err(e) => {
                if let Some(k) = in_kernel {
                    k.check.release(k.cookie);
                }
                send_plain_alert(&mut client, AlertDescription::InternalError).await;
                return Err(e);
            }
        };
        info.upstream = Some(endpoint.spec.clone());
        info.established = true;
        let (path, result) = passthrough::relay(
            client,
            upstream,
            incoming,
            route.id,
            in_kernel,
            shared.config.idle_timeout,
            traffic,
        )
        .await;
        info.passthrough = Some(path);
        return result;
    }
    let offers = |p: &[u8]| hello.alpn.iter().any(|a| a.as_slice() == p);
    // libpq speaks PostgreSQL inside TLS, never replink's zstd framing.
    let libpq = preamble.is_libpq() || offers(ALPN_POSTGRESQL);
    let postgres_route = route.kind == RouteKind::Postgres;
    let config = if libpq && postgres_route && offers(ALPN_POSTGRESQL) {
        tls.postgres.clone()
    } else if !libpq && route.compress.is_some() && offers(ALPN_ZSTD) {
        tls.with_zstd.clone()
    } else {
        tls.plain.clone()
    };
    let hs_start = Instant::now();
    let est = with_deadline(
        deadline,
        "handshake",
        handshake::accept(config, &mut client, incoming),
    )
    .await?;
    info.handshake_seconds = Some(hs_start.elapsed().as_secs_f64());
    info.note_handshake(&est);
    if !route.allow.is_empty() {
        let permitted = est
            .peer_cert
            .as_ref()
            .and_then(|c| PeerIdentity::from_der(c.as_ref()).ok())
            .is_some_and(|id| route.allow.permits(&id));
        if !permitted {
            send_sealed_alert(&mut client, est, AlertDescription::AccessDenied).await;
            return Err(ConnError::AccessDenied(route.name.clone()));
        }
    }
    if libpq && !postgres_route {
        // Checked after the handshake, so a client without a valid certificate learns nothing
        // about the route beyond what unknown_sni already tells.
        send_sealed_alert(&mut client, est, AlertDescription::NoApplicationProtocol).await;
        return Err(ConnError::NotPostgresRoute(route.name.clone()));
    }
    info.established = true;
    let (upstream, endpoint) =
        match connect(&route.target, shared.config.connect_timeout, shared, info).await {
            Ok(u) => u,
            Err(e) => {
                // Tell the client in TLS why it is being closed: a bare FIN after the handshake
                // would read as a truncated stream. internal_error: a failure unrelated to the
                // peer makes it impossible to continue (RFC 8446, 6.2).
                send_sealed_alert(&mut client, est, AlertDescription::InternalError).await;
                return Err(e);
            }
        };
    info.upstream = Some(endpoint.spec.clone());
    let opts = RelayOptions {
        compress: if info.compressed {
            route.compress
        } else {
            None
        },
        idle_timeout: shared.config.idle_timeout,
        ktls: shared.ktls,
        rekey_after: shared.config.rekey_after,
    };
    relay(client, upstream, est, &opts, traffic.clone()).await
}

/// Waits for the kernel's classifier to have seen the client's first TLS record (its verdict
/// runs before the bytes reach the receive queue), then: no route, no SNI or a malformed
/// ClientHello is refused here, before any read, parsing or TLS work, with the alert userspace
/// would send (`unrecognized_name`; `decode_error` for a malformed one), and `info.bpf` set.
/// Otherwise returns `buf` for the userspace parse.
///
/// Kernel finding (6.18): nothing is read before the classification is there, and the
/// parser is kicked at most once, and only for bytes that stayed unparsed (see
/// `Classifier::kick`). A read while bytes wait for the parser says EAGAIN and runs the parser
/// again; a second parser run while passed bytes are unread moves TCP's `copied_seq` past them
/// (a defect of `tcp_bpf_strp_read_sock`), and once the socket leaves the sockhash the
/// client's next flight is read from the wrong offset (seen as a corrupt record in the
/// handshake, about 1 connection in 100 before this).
async fn kernel_first(
    sock: &mut TcpStream,
    check: &BpfCheck,
    cookie: u64,
    buf: Vec<u8>,
    info: &mut ConnInfo,
) -> Result<Vec<u8>, ConnError> {
    // Bytes that arrived before `accept` need one kick (only once they have stayed unparsed
    // for a moment: a kick while the parser is busy would run it twice); the parser then runs
    // from a kernel work queue, usually within microseconds: a few turns of the runtime
    // first, then millisecond naps (a client may also just be slow).
    let mut turns = 0;
    let mut unparsed_since: Option<Instant> = None;
    let mut kicked = false;
    loop {
        match check.progress(sock, cookie) {
            Progress::Classified => break,
            Progress::Failed => return Ok(buf),
            Progress::Waiting => unparsed_since = None,
            Progress::Unparsed if kicked => {}
            Progress::Unparsed => match unparsed_since {
                None => unparsed_since = Some(Instant::now()),
                Some(t) if t.elapsed() >= KICK_AFTER => {
                    check.kick(sock);
                    kicked = true;
                }
                Some(_) => {}
            },
        }
        if turns < 32 {
            turns += 1;
            YieldOnce(false).await;
        } else {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let reason = match check.early(cookie) {
        Early::Parse => return Ok(buf),
        Early::Refuse(reason) => reason,
    };
    info.bpf = BpfOutcome::Kernel(reason);
    let alert = |desc: AlertDescription| vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, u8::from(desc)];
    if reason != replink_ebpf::Reason::Malformed {
        refuse_gently(sock, alert(AlertDescription::UnrecognisedName)).await;
        return Err(ConnError::UnknownSni(None));
    }
    refuse_gently(sock, alert(AlertDescription::DecodeError)).await;
    Err(ConnError::BadHello(
        "malformed ClientHello (in-kernel classifier)".into(),
    ))
}

/// How long received bytes must stay unclassified before they count as stuck from before
/// `accept` (the parser, when it runs in softirq, takes microseconds).
const KICK_AFTER: Duration = Duration::from_micros(500);

/// Gives the runtime one turn (other tasks, completions) and comes back.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// The userspace parse's verdict, in the classifier's terms (the route id is its index).
fn userspace_verdict(
    read: &Result<(Vec<u8>, replink_ebpf::ClientHello), ConnError>,
    routes: &SniTable<RouteEntry>,
) -> Userspace {
    match read {
        Ok((_, hello)) => match hello.server_name.as_deref() {
            None => Userspace::NoSni,
            Some(name) => routes
                .lookup(name)
                .map_or(Userspace::NoRoute, |r| Userspace::Routed(r.id)),
        },
        Err(ConnError::BadHello(_)) => Userspace::Malformed,
        Err(_) => Userspace::Undecided,
    }
}

async fn forward(
    client: TcpStream,
    shared: &Shared,
    traffic: &Rc<Traffic>,
    info: &mut ConnInfo,
) -> Result<(), ConnError> {
    let ModeState::Forward {
        target,
        tls,
        server_name,
        compress,
    } = &shared.mode
    else {
        return Ok(());
    };
    info.route = Some(target.spec.clone());
    let deadline = Instant::now() + shared.config.connect_timeout + shared.config.handshake_timeout;
    let (mut remote, endpoint) =
        connect(target, shared.config.connect_timeout, shared, info).await?;
    info.upstream = Some(endpoint.spec.clone());
    let hs_start = Instant::now();
    let est = with_deadline(
        deadline,
        "handshake",
        handshake::connect(tls.clone(), server_name.clone(), &mut remote),
    )
    .await?;
    info.handshake_seconds = Some(hs_start.elapsed().as_secs_f64());
    info.note_handshake(&est);
    info.established = true;
    let opts = RelayOptions {
        compress: if info.compressed { *compress } else { None },
        idle_timeout: shared.config.idle_timeout,
        ktls: shared.ktls,
        rekey_after: shared.config.rekey_after,
    };
    relay(remote, client, est, &opts, traffic.clone()).await
}

/// Used by `Stats`: a connection counts as active from accept to close.
pub fn active_guard(shared: &Shared) -> ActiveGuard<'_> {
    shared.stats.active.fetch_add(1, Ordering::Relaxed);
    ActiveGuard(shared)
}

pub struct ActiveGuard<'a>(&'a Shared);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}
