//! Drives a rustls unbuffered connection through the handshake over a monoio socket, then
//! turns it into a [`KernelConnection`] plus the traffic secrets.
//!
//! Bytes that arrive behind the peer's last handshake flight (the first application records)
//! are handed on untouched in [`Established::leftover`]: they start at a record boundary and
//! belong to the record layer.

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

use crate::buffers::read_more;
use crate::relay::ConnError;

/// A completed handshake: what the record layer needs to take over.
pub struct Established {
    pub version: ProtocolVersion,
    /// The negotiated suite (`cipher=` in the log).
    pub suite: rustls::CipherSuite,
    pub tx: (u64, ConnectionTrafficSecrets),
    pub rx: (u64, ConnectionTrafficSecrets),
    pub kernel: Kernel,
    /// The ALPN protocol the server selected, if any.
    pub alpn: Option<Vec<u8>>,
    /// Subject of the peer's leaf certificate.
    pub peer_subject: Option<String>,
    /// The peer's leaf certificate (for `allow` rules).
    pub peer_cert: Option<rustls_pki_types::CertificateDer<'static>>,
    /// A TLS 1.3 session was resumed (no certificate exchange, cheaper for both ends).
    pub resumed: bool,
    /// Received TLS bytes not yet consumed (a whole number of records, maybe a partial last one).
    pub leftover: Vec<u8>,
    /// Application data rustls already decrypted while finishing the handshake.
    pub early_plaintext: Vec<u8>,
    /// The peer's close_notify arrived right behind its last flight: its direction is over
    /// once `early_plaintext` is delivered.
    pub peer_closed: bool,
}

/// The post-handshake half of rustls: key updates and (client side) session tickets.
pub enum Kernel {
    Server(KernelConnection<ServerConnectionData>),
    Client(KernelConnection<ClientConnectionData>),
}

impl Kernel {
    pub fn update_tx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Server(k) => k.update_tx_secret(),
            Kernel::Client(k) => k.update_tx_secret(),
        }
    }

    pub fn update_rx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Server(k) => k.update_rx_secret(),
            Kernel::Client(k) => k.update_rx_secret(),
        }
    }

    /// Stores a TLS 1.3 NewSessionTicket so later connections resume; a server never gets one.
    pub fn handle_new_session_ticket(&mut self, payload: &[u8]) -> Result<(), rustls::Error> {
        match self {
            Kernel::Client(k) => k.handle_new_session_ticket(payload),
            Kernel::Server(_) => Err(rustls::Error::General(
                "client sent a NewSessionTicket".into(),
            )),
        }
    }
}

/// The two unbuffered connection types, seen through one interface.
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// What to do after one `process_tls_records` step, computed while rustls holds the buffers.
enum Step {
    Continue,
    Transmit,
    Read,
    Done,
    Failed(rustls::Error),
    PeerClosed,
    Closed,
}

/// Appends the pending handshake bytes to `out`, growing it as rustls asks.
fn encode_into<Data>(
    state: &mut rustls::unbuffered::EncodeTlsData<'_, Data>,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    loop {
        let used = out.len();
        out.resize(out.capacity().max(used + 4096), 0);
        match state.encode(&mut out[used..]) {
            Ok(n) => {
                out.truncate(used + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(e)) => {
                out.truncate(used);
                out.reserve(e.required_size);
            }
            Err(e) => {
                out.truncate(used);
                return Err(rustls::Error::General(format!("encoding handshake: {e}")));
            }
        }
    }
}

async fn drive<C: Unbuffered>(
    conn: &mut C,
    sock: &mut TcpStream,
    mut incoming: Vec<u8>,
) -> Result<Drove, ConnError> {
    let mut out = Vec::with_capacity(4096);
    let mut early = Vec::new();
    let mut peer_closed = false;
    loop {
        let mut discard;
        let step = {
            let status = conn.process(&mut incoming);
            discard = status.discard;
            match status.state {
                Err(e) => Step::Failed(e),
                Ok(ConnectionState::EncodeTlsData(mut s)) => match encode_into(&mut s, &mut out) {
                    Ok(()) => Step::Continue,
                    Err(e) => Step::Failed(e),
                },
                Ok(ConnectionState::TransmitTlsData(s)) => {
                    // rustls only records that the bytes left; they are written right below,
                    // before rustls is asked for anything else.
                    s.done();
                    Step::Transmit
                }
                Ok(ConnectionState::BlockedHandshake) => Step::Read,
                Ok(ConnectionState::WriteTraffic(_)) => Step::Done,
                Ok(ConnectionState::ReadTraffic(mut s)) => {
                    let mut failed = None;
                    while let Some(record) = s.next_record() {
                        match record {
                            Ok(r) => {
                                early.extend_from_slice(r.payload);
                                discard += r.discard;
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    failed.map_or(Step::Continue, Step::Failed)
                }
                Ok(ConnectionState::PeerClosed) => Step::PeerClosed,
                Ok(ConnectionState::Closed) => Step::Closed,
                Ok(other) => Step::Failed(rustls::Error::General(format!(
                    "unexpected handshake state {other:?}"
                ))),
            }
        };
        incoming.drain(..discard);
        match step {
            Step::Continue => {}
            Step::Transmit => {
                let (res, buf) = sock.write_all(out).await;
                out = buf;
                res.map_err(ConnError::Downstream)?;
                out.clear();
            }
            Step::Read => {
                let (res, buf) = read_more(sock, incoming, 16 * 1024).await;
                incoming = buf;
                if res.map_err(ConnError::Downstream)? == 0 {
                    return Err(ConnError::HandshakeEof);
                }
            }
            Step::Done => {
                if !out.is_empty() {
                    let (res, _) = sock.write_all(out).await;
                    res.map_err(ConnError::Downstream)?;
                }
                return Ok(Drove {
                    leftover: incoming,
                    early_plaintext: early,
                    peer_closed,
                });
            }
            // A close_notify right behind the peer's last flight (a short request, then FIN)
            // is a half-close after a good handshake; before the handshake completes, the
            // next step blocks on a read that sees EOF and fails as it should.
            Step::PeerClosed => peer_closed = true,
            Step::Closed => return Err(ConnError::HandshakeEof),
            Step::Failed(e) => {
                // A record that did not deframe or decrypt is still in `incoming`: processing
                // it again would fail again and make rustls queue a second fatal alert, which
                // it asserts against (a ClientHello followed by garbage killed the worker in
                // debug builds). Such a peer gets the connection closed; the others get the
                // alert rustls queued.
                let unparsable = matches!(
                    e,
                    rustls::Error::InvalidMessage(_)
                        | rustls::Error::DecryptError
                        | rustls::Error::PeerSentOversizedRecord
                        | rustls::Error::InappropriateMessage { .. }
                        | rustls::Error::InappropriateHandshakeMessage { .. }
                );
                if !unparsable {
                    send_pending_alert(conn, sock, out, incoming).await;
                }
                return Err(ConnError::Tls(e));
            }
        }
    }
}

/// After a handshake error rustls has queued the matching alert; send it before closing so the
/// peer learns why (a best effort: the connection is failing anyway).
///
/// `incoming` must be the buffer of the failed step (after its discard), not an empty one:
/// rustls' handshake deframer may still hold ranges into it (the rest of the peer's flight
/// behind the message that failed), and indexing an empty buffer with them panics inside
/// rustls.
async fn send_pending_alert<C: Unbuffered>(
    conn: &mut C,
    sock: &mut TcpStream,
    mut out: Vec<u8>,
    mut incoming: Vec<u8>,
) {
    out.clear();
    // EncodeTlsData (the alert), then TransmitTlsData, then stop: a further `process` would
    // parse the rest of the peer's bytes again, fail again and try to queue a second fatal
    // alert, which rustls asserts against (a garbage record after a valid ClientHello did
    // exactly that and killed the worker).
    for _ in 0..2 {
        // Belt and braces for a peer that put an unparsable record behind a handshake message
        // that failed: rustls would hit its debug assertion against a second fatal alert.
        // Caught here instead of unwinding the worker; the alert is then just not sent.
        let processed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let status = conn.process(&mut incoming);
            let discard = status.discard;
            let more = match status.state {
                Ok(ConnectionState::EncodeTlsData(mut s)) => encode_into(&mut s, &mut out).is_ok(),
                Ok(ConnectionState::TransmitTlsData(s)) => {
                    s.done();
                    false
                }
                _ => false,
            };
            (more, discard)
        }));
        let Ok((more, discard)) = processed else {
            return;
        };
        incoming.drain(..discard.min(incoming.len()));
        if !more {
            break;
        }
    }
    if !out.is_empty() {
        let _ = sock.write_all(out).await;
    }
}

/// What the handshake loop leaves behind for the record layer.
struct Drove {
    leftover: Vec<u8>,
    early_plaintext: Vec<u8>,
    peer_closed: bool,
}

/// Server side. `incoming` already holds the ClientHello the router read.
pub async fn accept(
    config: std::sync::Arc<rustls::ServerConfig>,
    sock: &mut TcpStream,
    incoming: Vec<u8>,
) -> Result<Established, ConnError> {
    let mut conn = UnbufferedServerConnection::new(config).map_err(ConnError::Tls)?;
    let drove = drive(&mut conn, sock, incoming).await?;
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let peer_cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    let peer_subject = peer_cert.as_ref().map(super::subject_of);
    let (secrets, kernel) = conn
        .dangerous_into_kernel_connection()
        .map_err(ConnError::Tls)?;
    Ok(Established {
        version: kernel.protocol_version(),
        suite: kernel.negotiated_cipher_suite().suite(),
        tx: secrets.tx,
        rx: secrets.rx,
        kernel: Kernel::Server(kernel),
        alpn,
        peer_subject,
        peer_cert,
        resumed,
        leftover: drove.leftover,
        early_plaintext: drove.early_plaintext,
        peer_closed: drove.peer_closed,
    })
}

/// Client side.
pub async fn connect(
    config: std::sync::Arc<rustls::ClientConfig>,
    server_name: rustls_pki_types::ServerName<'static>,
    sock: &mut TcpStream,
) -> Result<Established, ConnError> {
    let mut conn = UnbufferedClientConnection::new(config, server_name).map_err(ConnError::Tls)?;
    let drove = drive(&mut conn, sock, Vec::with_capacity(16 * 1024)).await?;
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let peer_cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    let peer_subject = peer_cert.as_ref().map(super::subject_of);
    let (secrets, kernel) = conn
        .dangerous_into_kernel_connection()
        .map_err(ConnError::Tls)?;
    Ok(Established {
        version: kernel.protocol_version(),
        suite: kernel.negotiated_cipher_suite().suite(),
        tx: secrets.tx,
        rx: secrets.rx,
        kernel: Kernel::Client(kernel),
        alpn,
        peer_subject,
        peer_cert,
        resumed,
        leftover: drove.leftover,
        early_plaintext: drove.early_plaintext,
        peer_closed: drove.peer_closed,
    })
}
