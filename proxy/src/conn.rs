//! One connection from accept to close, for each listener mode.
//!
//! ```text
//! reverse: accept -> read ClientHello -> route by SNI -> rustls handshake -> connect upstream -> relay
//! forward: accept -> connect remote -> rustls handshake (SNI, ALPN offer) -> relay
//! ```
//! Every connection ends in exactly one log line: `closed` with its byte counts, or `refused`
//! with the reason.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use replink_ebpf::{parse_client_hello, HelloError, Parse};
use rustls::{AlertDescription, ContentType};

use crate::buffers::{read_more, SMALL};
use crate::config::Target;
use crate::relay::{relay, ConnError, RelayOptions, Traffic};
use crate::tls::handshake::Established;
use crate::tls::record::{self, Sealer};
use crate::tls::{handshake, ALPN_ZSTD};
use crate::worker::{ModeState, Shared};

/// What the log line says about a connection besides its outcome.
#[derive(Default)]
struct ConnInfo {
    route: Option<String>,
    peer_subject: Option<String>,
    compressed: bool,
    resumed: bool,
    upstream: Option<String>,
    /// The TLS handshake completed (a failure after this is not a refusal).
    established: bool,
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
        ModeState::Reverse { .. } => reverse(stream, &shared, &traffic, &mut info).await,
        ModeState::Forward { .. } => forward(stream, &shared, &traffic, &mut info).await,
    };
    shared
        .stats
        .record(&traffic, info.established, result.is_ok());
    let t = &*traffic;
    let dur_ms = start.elapsed().as_millis() as u64;
    let route = info.route.as_deref().unwrap_or("-");
    let subject = info.peer_subject.as_deref().unwrap_or("-");
    let upstream = info.upstream.as_deref().unwrap_or("-");
    match &result {
        Ok(()) => tracing::info!(
            %peer, route, peer_cert = subject, upstream, zstd = info.compressed, resumed = info.resumed,
            plain_to_tls = t.plain_to_tls.get(), wire_out = t.wire_out.get(),
            wire_in = t.wire_in.get(), tls_to_plain = t.tls_to_plain.get(),
            duration_ms = dur_ms, reason = "done", "closed"
        ),
        Err(e) if !info.established => {
            tracing::warn!(%peer, route, reason = e.reason(), error = %e, duration_ms = dur_ms, "refused")
        }
        Err(e) => tracing::warn!(
            %peer, route, peer_cert = subject, upstream, zstd = info.compressed, resumed = info.resumed,
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

/// Tries the target's addresses in order, each with the connect timeout.
async fn connect(
    target: &Target,
    timeout: Duration,
    shared: &Shared,
) -> Result<TcpStream, ConnError> {
    let mut last = None;
    for addr in &target.addrs {
        match monoio::time::timeout(timeout, TcpStream::connect_addr(*addr)).await {
            Ok(Ok(s)) => {
                set_socket_options(&s, shared);
                return Ok(s);
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
    Err(ConnError::Connect {
        target: target.spec.clone(),
        err: last.unwrap_or_else(|| std::io::Error::other("no address")),
    })
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
async fn read_client_hello(
    sock: &mut TcpStream,
) -> Result<(Vec<u8>, replink_ebpf::ClientHello), ConnError> {
    let mut buf = Vec::with_capacity(SMALL);
    loop {
        match parse_client_hello(&buf) {
            Ok(Parse::Complete(hello)) => return Ok((buf, hello)),
            Ok(Parse::Incomplete { needed_at_least }) => {
                let need = needed_at_least.saturating_sub(buf.len()).max(1024);
                let (res, b) = read_more(sock, buf, need).await;
                buf = b;
                if res.map_err(ConnError::Downstream)? == 0 {
                    return Err(ConnError::HandshakeEof);
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

async fn reverse(
    mut client: TcpStream,
    shared: &Shared,
    traffic: &Rc<Traffic>,
    info: &mut ConnInfo,
) -> Result<(), ConnError> {
    let ModeState::Reverse { routes, tls } = &shared.mode else {
        return Ok(());
    };
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let (incoming, hello) =
        with_deadline(deadline, "handshake", read_client_hello(&mut client)).await?;
    let Some(route) = hello.server_name.as_deref().and_then(|n| routes.lookup(n)) else {
        send_plain_alert(&mut client, AlertDescription::UnrecognisedName).await;
        return Err(ConnError::UnknownSni(hello.server_name));
    };
    info.route = Some(route.name.clone());
    let offer_zstd =
        route.compress.is_some() && hello.alpn.iter().any(|p| p.as_slice() == ALPN_ZSTD);
    let config = if offer_zstd {
        tls.with_zstd.clone()
    } else {
        tls.plain.clone()
    };
    let est = with_deadline(
        deadline,
        "handshake",
        handshake::accept(config, &mut client, incoming),
    )
    .await?;
    info.peer_subject = est.peer_subject.clone();
    info.compressed = est.alpn.as_deref() == Some(ALPN_ZSTD);
    info.resumed = est.resumed;
    info.established = true;
    let upstream = match connect(&route.target, shared.config.connect_timeout, shared).await {
        Ok(u) => u,
        Err(e) => {
            // Tell the client in TLS why it is being closed: a bare FIN after the handshake
            // would read as a truncated stream. internal_error: a failure unrelated to the
            // peer makes it impossible to continue (RFC 8446, 6.2).
            send_sealed_alert(&mut client, est, AlertDescription::InternalError).await;
            return Err(e);
        }
    };
    info.upstream = Some(route.target.spec.clone());
    let opts = RelayOptions {
        compress: if info.compressed {
            route.compress
        } else {
            None
        },
        idle_timeout: shared.config.idle_timeout,
    };
    relay(client, upstream, est, &opts, traffic.clone()).await
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
    let mut remote = connect(target, shared.config.connect_timeout, shared).await?;
    info.upstream = Some(target.spec.clone());
    let est = with_deadline(
        deadline,
        "handshake",
        handshake::connect(tls.clone(), server_name.clone(), &mut remote),
    )
    .await?;
    info.peer_subject = est.peer_subject.clone();
    info.compressed = est.alpn.as_deref() == Some(ALPN_ZSTD);
    info.resumed = est.resumed;
    info.established = true;
    let opts = RelayOptions {
        compress: if info.compressed { *compress } else { None },
        idle_timeout: shared.config.idle_timeout,
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
