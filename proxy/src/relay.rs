//! The relay: after the handshake, two pumps move bytes between the TLS leg and the plaintext
//! leg, one per direction, on the connection's own core.
//!
//! ```text
//!   plaintext leg --read--> [zstd] --seal--> TLS leg        (SealPump)
//!   plaintext leg <--write-- [unzstd] <--open-- TLS leg     (OpenPump)
//! ```
//!
//! With kernel TLS (`--ktls`, where the kernel has it) the TLS leg reads and writes plaintext
//! and the kernel seals and opens the records: the pumps skip `Sealer`/`Opener` and send or
//! receive only the other record types (alerts, KeyUpdate, NewSessionTicket) themselves. The
//! receive side switches once the records rustls' handshake had already read are used up,
//! at a record boundary.
//!
//! End of stream on one side ends only that direction on the other (TCP FIN ↔ TLS
//! close_notify), so half-closing protocols (rsync, Postgres COPY) work. A reset, a TLS error,
//! a missing close_notify or a corrupt zstd stream fails the whole connection and resets both
//! legs, so an application never mistakes a broken link for a short, complete transfer.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBuf;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, HandshakeType, ProtocolVersion,
};

use crate::buffers::{self, read_at_most, read_more, BIG, SMALL};
use crate::codec::{CodecError, Sink, ZstdDecoder, ZstdEncoder};
use crate::ktls::{CryptoInfo, Direction};
use crate::sys;
use crate::tls::handshake::{Established, Kernel};
use crate::tls::record::{self, Opener, RecordError, Sealer, MAX_PLAINTEXT};

/// How long a direction waits with nothing to read before it ends its zstd frame and gives its
/// zstd context and record buffer back.
const QUIET_AFTER: Duration = Duration::from_millis(500);

/// How long the open side may still run, after the seal side failed on the TLS socket, to read
/// a fatal alert the peer sent before resetting.
const ALERT_GRACE: Duration = Duration::from_millis(100);

/// Why a connection ended badly. `reason()` is the short word the log and counters use.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("TLS-side socket: {0}")]
    Downstream(std::io::Error),
    #[error("plaintext-side socket: {0}")]
    Plain(std::io::Error),
    #[error("connecting to {target}: {err}")]
    Connect { target: String, err: std::io::Error },
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    #[error("TLS record: {0}")]
    Record(#[from] RecordError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("peer closed the connection during the handshake")]
    HandshakeEof,
    #[error("peer closed the connection without sending anything")]
    Empty,
    #[error("peer closed TCP without a TLS close_notify (truncated)")]
    Truncated,
    #[error("peer sent alert {0:?}")]
    PeerAlert(AlertDescription),
    #[error("peer sent an unexpected {0:?} message")]
    Unexpected(HandshakeType),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("bad ClientHello: {0}")]
    BadHello(String),
    #[error("no route for SNI {0:?}")]
    UnknownSni(Option<String>),
    #[error("PostgreSQL {0} in plaintext (TLS is required)")]
    PgPlaintext(crate::pg::Plaintext),
    #[error("bad PostgreSQL preamble: {0}")]
    PgPreamble(#[from] crate::pg::PreambleError),
    #[error("route {0} is not a postgres route, and the client speaks PostgreSQL")]
    NotPostgresRoute(String),
    #[error("kernel TLS: {0}")]
    Kernel(String),
    #[error("no allow rule of route {0} matches the client certificate")]
    AccessDenied(String),
    #[error(
        "route {0} is passthrough, and the client began with libpq's SSLRequest (replink \
         answered it; a passthrough upstream would not get it): use a :postgres route"
    )]
    LibpqOnPassthrough(String),
}

impl From<rustls::Error> for ConnError {
    fn from(e: rustls::Error) -> Self {
        ConnError::Tls(e)
    }
}

impl ConnError {
    pub fn reason(&self) -> &'static str {
        match self {
            ConnError::Downstream(_) => "tls_socket_error",
            ConnError::Plain(_) => "plain_socket_error",
            ConnError::Connect { .. } => "upstream_connect_failed",
            ConnError::Tls(e) => crate::tls::refusal_reason(e),
            ConnError::Record(_) => "tls_record_error",
            ConnError::Codec(_) => "zstd_error",
            ConnError::HandshakeEof => "handshake_eof",
            ConnError::Empty => "empty",
            ConnError::Truncated => "truncated",
            ConnError::PeerAlert(_) => "peer_alert",
            ConnError::Unexpected(_) => "protocol",
            ConnError::Timeout(what) => match *what {
                "handshake" => "handshake_timeout",
                "idle" => "idle_timeout",
                _ => "timeout",
            },
            ConnError::BadHello(_) => "bad_client_hello",
            ConnError::UnknownSni(_) => "unknown_sni",
            ConnError::PgPlaintext(_) => "pg_plaintext_refused",
            ConnError::PgPreamble(_) => "pg_bad_preamble",
            ConnError::NotPostgresRoute(_) => "not_postgres_route",
            ConnError::Kernel(_) => "ktls_error",
            ConnError::AccessDenied(_) => "access_denied",
            ConnError::LibpqOnPassthrough(_) => "libpq_on_passthrough",
        }
    }
}

/// Byte counts of one connection, kept outside the pumps so a cancelled pump still reports.
#[derive(Default, Debug)]
pub struct Traffic {
    /// Plaintext read from the plaintext leg and sent sealed.
    pub plain_to_tls: Cell<u64>,
    /// TLS bytes written for it.
    pub wire_out: Cell<u64>,
    /// TLS bytes read from the TLS leg.
    pub wire_in: Cell<u64>,
    /// Plaintext delivered to the plaintext leg.
    pub tls_to_plain: Cell<u64>,
    /// The kernel sealed (`ktls_tx`) / opened (`ktls_rx`) this connection's records.
    pub ktls_tx: Cell<bool>,
    pub ktls_rx: Cell<bool>,
    /// Why a direction stayed in userspace although kTLS was on (`ktls_fallback=`).
    pub ktls_fallback: Cell<Option<&'static str>>,
}

impl Traffic {
    /// The `ktls=` value of the log line.
    pub fn ktls(&self) -> &'static str {
        match (self.ktls_tx.get(), self.ktls_rx.get()) {
            (true, true) => "tx+rx",
            (true, false) => "tx",
            (false, true) => "rx",
            (false, false) => "off",
        }
    }
}

fn add(c: &Cell<u64>, n: usize) {
    c.set(c.get() + n as u64);
}

/// State both pumps touch: rustls' key schedule, a pending KeyUpdate request, activity time.
struct Link {
    kernel: RefCell<Kernel>,
    version: ProtocolVersion,
    /// The TLS leg's socket, for the kTLS socket options and control records.
    tls_fd: RawFd,
    /// The plaintext leg's socket: it resets on close until its clean half-close.
    plain_fd: RawFd,
    /// Directions the kernel seals or opens.
    ktx: RefCell<Option<KernelKeys>>,
    krx: RefCell<Option<KernelKeys>>,
    peer_wants_key_update: Cell<bool>,
    /// `plain_to_tls` when the TLS peer's close_notify was read: bytes counted after it were
    /// sent to a peer that had already finished.
    plain_sent_at_peer_close: Cell<Option<u64>>,
    /// The plaintext leg's write side is being shut (our FIN): from then on that socket may
    /// reach `TCP_CLOSE` cleanly, by FINs both ways.
    plain_fin: Cell<bool>,
    last_activity: Cell<Instant>,
    idle_timeout: Option<Duration>,
    traffic: Rc<Traffic>,
}

impl Link {
    fn touch(&self) {
        self.last_activity.set(Instant::now());
    }

    /// Whether `e`, on the TLS leg while sending our close_notify, is only the peer having
    /// left: it sent its own close_notify and closed its socket (libpq and OpenSSL clients
    /// do, without waiting for ours, as RFC 8446 6.1 allows), and nothing but our
    /// close_notify was sent since, so no application byte was lost.
    fn peer_left_before_our_close(&self, e: &std::io::Error) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset, NotConnected};
        matches!(e.kind(), BrokenPipe | ConnectionReset | NotConnected)
            && self.plain_sent_at_peer_close.get() == Some(self.traffic.plain_to_tls.get())
    }
}

pub struct RelayOptions {
    pub compress: Option<i32>,
    pub idle_timeout: Option<Duration>,
    /// Move the record layer to the kernel (checked at start-up: the kernel has kTLS).
    pub ktls: bool,
    /// Ask for fresh keys both ways after this many plaintext bytes sent under one key
    /// (TLS 1.3; besides the automatic update near the cipher's record limit).
    pub rekey_after: Option<u64>,
}

/// One direction's keys in the kernel, and how many records earlier keys carried (for the
/// wire byte count: the kernel's records are not seen).
struct KernelKeys {
    info: CryptoInfo,
    /// `rec_seq` when `info` was installed.
    installed_at: u64,
    records_before: u64,
}

impl KernelKeys {
    fn install(
        fd: RawFd,
        dir: Direction,
        version: ProtocolVersion,
        seq: u64,
        secrets: &ConnectionTrafficSecrets,
        records_before: u64,
    ) -> std::io::Result<KernelKeys> {
        let info = CryptoInfo::new(version, secrets).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::Unsupported, "cipher not offloadable")
        })?;
        info.install(fd, dir, seq)?;
        Ok(KernelKeys {
            info,
            installed_at: seq,
            records_before,
        })
    }

    /// Records sealed or opened under this key.
    fn records_now(&self, fd: RawFd, dir: Direction) -> u64 {
        self.info
            .next_seq(fd, dir)
            .map_or(0, |seq| seq.saturating_sub(self.installed_at))
    }

    /// Records of this direction since the switch to the kernel.
    fn records_total(&self, fd: RawFd, dir: Direction) -> u64 {
        self.records_before + self.records_now(fd, dir)
    }

    /// A KeyUpdate: the next key takes over at `seq`.
    fn rekey(
        &mut self,
        fd: RawFd,
        dir: Direction,
        version: ProtocolVersion,
        seq: u64,
        secrets: &ConnectionTrafficSecrets,
    ) -> Result<(), ConnError> {
        let before = self.records_total(fd, dir);
        *self = KernelKeys::install(fd, dir, version, seq, secrets, before)
            .map_err(|e| ConnError::Kernel(format!("installing the new {dir:?} key: {e}")))?;
        Ok(())
    }
}

/// Runs both directions until both have ended (cleanly or not). `traffic` is filled as bytes
/// move.
pub async fn relay(
    tls: TcpStream,
    plain: TcpStream,
    est: Established,
    opts: &RelayOptions,
    traffic: Rc<Traffic>,
) -> Result<(), ConnError> {
    let tls_fd = tls.as_raw_fd();
    let version = est.version;
    // The send side moves to the kernel now (the handshake's last flight is written); the
    // receive side once the records already read are used up (`OpenPump`).
    let (ktx, krx_pending) = if opts.ktls {
        offload(&tls, &est, &traffic)
    } else {
        (None, None)
    };
    let sealer = match ktx {
        Some(_) => None,
        None => Some(Sealer::new(est.version, est.tx.0, est.tx.1)?),
    };
    let opener = Opener::new(est.version, est.rx.0, est.rx.1)?;
    let plain_fd = plain.as_raw_fd();
    // Until the TLS peer's close_notify is passed on as a FIN, any close of the plaintext leg
    // is a failure, also the kernel's when this process dies (kill -9, OOM): make it a reset,
    // so the application never reads a clean end of a cut stream. `finish_closed` undoes it.
    sys::reset_on_close(plain_fd);
    let link = Rc::new(Link {
        kernel: RefCell::new(est.kernel),
        version,
        tls_fd,
        plain_fd,
        ktx: RefCell::new(ktx),
        krx: RefCell::new(None),
        peer_wants_key_update: Cell::new(false),
        plain_sent_at_peer_close: Cell::new(None),
        plain_fin: Cell::new(false),
        last_activity: Cell::new(Instant::now()),
        idle_timeout: opts.idle_timeout,
        traffic,
    });
    let (mut tls_r, mut tls_w) = tls.into_split();
    let (mut plain_r, mut plain_w) = plain.into_split();
    let result = {
        let up = SealPump {
            src: &mut plain_r,
            src_fd: plain_fd,
            dst: &mut tls_w,
            out: RecordWriter::new(sealer),
            encoder: opts.compress.map(ZstdEncoder::new),
            link: link.clone(),
            rekey_after: opts.rekey_after,
            sent_under_key: 0,
            writes_since_check: 0,
        };
        let down = OpenPump {
            src: &mut tls_r,
            dst: &mut plain_w,
            opener,
            rx_pending: krx_pending,
            decoder: opts.compress.map(|_| ZstdDecoder::new()),
            link: link.clone(),
        };
        let mut up = pin!(up.run());
        let mut down = pin!(down.run(est.leftover, est.early_plaintext, est.peer_closed));
        let (up_first, first) = monoio::select! {
            r = &mut up => (true, r),
            r = &mut down => (false, r),
        };
        match first {
            Ok(()) if up_first => down.await,
            Ok(()) => up.await,
            // A peer that refuses us after the handshake (a TLS 1.3 server checking our client
            // certificate) sends a fatal alert and closes with our data unread, so its kernel
            // resets the connection. Our write may see that reset before our read sees the
            // alert, which is already in the receive buffer: let the open side read it, so
            // the log says `CertificateRevoked` rather than "connection reset".
            Err(e @ ConnError::Downstream(_)) if up_first => {
                match monoio::time::timeout(ALERT_GRACE, down.as_mut()).await {
                    Ok(Err(alert @ ConnError::PeerAlert(_))) => Err(alert),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
        // The pumps are dropped here, cancelling whatever they still had in flight.
    };
    link.count_kernel_records();
    if result.is_err() {
        // Pass the failure on as resets, so neither application sees a clean end. The halves
        // are reunited first: monoio's write half sends a FIN (shutdown) when dropped, which
        // the peer would read as a clean end of stream before the reset.
        for (r, w) in [(tls_r, tls_w), (plain_r, plain_w)] {
            if let Ok(stream) = r.reunite(w) {
                sys::reset_on_close(stream.as_raw_fd());
            }
        }
    }
    result
}

/// Attaches the kernel's TLS to the socket and gives it the sending key. Returns the send
/// side's keys and the receive side's, to install once the handshake's leftover records are
/// opened. Anything the kernel refuses leaves the connection in userspace (logged at debug:
/// the start-up probe already said whether kTLS works).
fn offload(
    tls: &TcpStream,
    est: &Established,
    traffic: &Traffic,
) -> (Option<KernelKeys>, Option<CryptoInfo>) {
    let Some(rx) = CryptoInfo::new(est.version, &est.rx.1) else {
        tracing::debug!("ktls: cipher not offloadable, records stay in userspace");
        traffic.ktls_fallback.set(Some("cipher"));
        return (None, None);
    };
    let fd = tls.as_raw_fd();
    if let Err(e) = sys::set_tcp_ulp(sys::borrow_fd(tls), "tls") {
        tracing::debug!(error = %e, "ktls: TCP_ULP tls refused, records stay in userspace");
        // ENOTCONN: the peer had already half-closed (the ULP needs an established socket).
        traffic.ktls_fallback.set(Some(match e.raw_os_error() {
            Some(libc::ENOTCONN) => "not_established",
            _ => "ulp_refused",
        }));
        return (None, None);
    }
    match KernelKeys::install(fd, Direction::Tx, est.version, est.tx.0, &est.tx.1, 0) {
        Ok(keys) => {
            traffic.ktls_tx.set(true);
            (Some(keys), Some(rx))
        }
        Err(e) => {
            // The ULP without keys passes bytes through unchanged: userspace both ways.
            tracing::debug!(error = %e, "ktls: TLS_TX refused, records stay in userspace");
            traffic.ktls_fallback.set(Some("tx_refused"));
            (None, None)
        }
    }
}

impl Link {
    /// Adds what the kernel's records added to the plaintext to the wire counts (once, at the
    /// end: the record counts come from the kernel's sequence numbers).
    fn count_kernel_records(&self) {
        let t = &self.traffic;
        if let Some(k) = self.ktx.borrow().as_ref() {
            let records = k.records_total(self.tls_fd, Direction::Tx);
            add(
                &t.wire_out,
                (records as usize).saturating_mul(k.info.overhead),
            );
        }
        if let Some(k) = self.krx.borrow().as_ref() {
            let records = k.records_total(self.tls_fd, Direction::Rx);
            add(
                &t.wire_in,
                (records as usize).saturating_mul(k.info.overhead),
            );
        }
    }
}

/// Seals plaintext into TLS records laid out back to back in one buffer, in place; with
/// kernel TLS (no `Sealer`) it only gathers plaintext for the kernel to seal.
struct RecordWriter {
    sealer: Option<Sealer>,
    out: Vec<u8>,
    used: usize,
    /// Start of the record slot being filled, and how many payload bytes it has.
    open: Option<(usize, usize)>,
}

impl RecordWriter {
    fn new(sealer: Option<Sealer>) -> Self {
        RecordWriter {
            sealer,
            out: Vec::new(),
            used: 0,
            open: None,
        }
    }

    fn prefix_len(&self) -> usize {
        self.sealer.as_ref().map_or(0, |s| s.prefix_len())
    }

    fn slot_len(&self) -> usize {
        self.prefix_len() + MAX_PLAINTEXT + self.sealer.as_ref().map_or(0, |s| s.suffix_len())
    }

    fn ensure(&mut self, end: usize) {
        // Grows only to a high-water mark; the zero fill happens once per growth, not per record.
        if self.out.len() < end {
            self.out.resize(end, 0);
        }
    }

    fn seal_open(&mut self) -> Result<(), ConnError> {
        if let Some((start, fill)) = self.open.take() {
            if fill > 0 {
                let len = match self.sealer.as_mut() {
                    Some(sealer) => sealer.seal_in_place(
                        ContentType::ApplicationData,
                        &mut self.out[start..],
                        fill,
                    )?,
                    None => fill,
                };
                self.used = start + len;
            }
        }
        Ok(())
    }

    fn push_plain(&mut self, mut data: &[u8]) -> Result<(), ConnError> {
        while !data.is_empty() {
            let space = self.space()?;
            let n = space.len().min(data.len());
            space[..n].copy_from_slice(&data[..n]);
            self.advance(n)?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Seals one non-application record (alert, KeyUpdate) after what is already queued.
    /// Userspace records only: with kernel TLS such records go out through `sendmsg`.
    fn push_record(&mut self, typ: ContentType, payload: &[u8]) -> Result<(), ConnError> {
        self.seal_open()?;
        let Some(sealer) = self.sealer.as_mut() else {
            return Err(ConnError::Kernel(
                "a control record queued for the kernel's send side".into(),
            ));
        };
        let start = self.used;
        let prefix = sealer.prefix_len();
        let end = start + prefix + payload.len() + sealer.suffix_len();
        if self.out.len() < end {
            self.out.resize(end, 0);
        }
        self.out[start + prefix..start + prefix + payload.len()].copy_from_slice(payload);
        let len = sealer.seal_in_place(typ, &mut self.out[start..], payload.len())?;
        self.used = start + len;
        Ok(())
    }

    /// Userspace send side: the KeyUpdate record, then the next key.
    fn key_update(&mut self, kernel: &RefCell<Kernel>, requested: bool) -> Result<(), ConnError> {
        self.push_record(
            ContentType::Handshake,
            &record::key_update_message(requested),
        )?;
        let (seq, secrets) = kernel.borrow_mut().update_tx_secret()?;
        if let Some(sealer) = self.sealer.as_mut() {
            sealer.rekey(seq, secrets)?;
        }
        Ok(())
    }

    fn pending(&self) -> usize {
        self.used
    }

    /// Frees the buffer while the direction is idle.
    fn release(&mut self) {
        if self.used == 0 && self.open.is_none() {
            self.out = Vec::new();
        }
    }

    fn holds_memory(&self) -> bool {
        self.out.capacity() > 0
    }
}

impl Sink for RecordWriter {
    type Error = ConnError;

    fn space(&mut self) -> Result<&mut [u8], ConnError> {
        let prefix = self.prefix_len();
        let (start, fill) = match self.open {
            Some(o) => o,
            None => {
                let start = self.used;
                self.ensure(start + self.slot_len());
                self.open = Some((start, 0));
                (start, 0)
            }
        };
        Ok(&mut self.out[start + prefix + fill..start + prefix + MAX_PLAINTEXT])
    }

    fn advance(&mut self, n: usize) -> Result<(), ConnError> {
        if let Some((start, fill)) = self.open {
            let fill = fill + n;
            self.open = Some((start, fill));
            if fill >= MAX_PLAINTEXT {
                self.seal_open()?;
            }
        }
        Ok(())
    }
}

struct SealPump<'a> {
    src: &'a mut OwnedReadHalf<TcpStream>,
    src_fd: RawFd,
    dst: &'a mut OwnedWriteHalf<TcpStream>,
    out: RecordWriter,
    encoder: Option<ZstdEncoder>,
    link: Rc<Link>,
    rekey_after: Option<u64>,
    /// Plaintext sent under the current key (for `rekey_after`).
    sent_under_key: u64,
    /// Writes since the kernel's record count was last read.
    writes_since_check: u32,
}

/// With kernel TLS, how many writes pass between two looks at the kernel's record count: a
/// write makes at most a few records of each 16 KiB it carries, so the count cannot run far
/// past `KEY_UPDATE_AFTER` (2^23) before the next look, and the AES-GCM limit (2^24.5) is
/// far beyond that.
const RECORD_CHECK_EVERY: u32 = 256;

impl SealPump<'_> {
    async fn flush_out(&mut self) -> Result<(), ConnError> {
        Self::write_pending(&mut self.out, self.dst, &self.link).await
    }

    /// Sends an alert or handshake record after everything queued: sealed in the record
    /// buffer in userspace, or through `sendmsg` with its record type under kernel TLS.
    async fn send_control(&mut self, typ: ContentType, payload: &[u8]) -> Result<(), ConnError> {
        if self.out.sealer.is_some() {
            self.out.push_record(typ, payload)?;
            return self.flush_out().await;
        }
        self.flush_out().await?;
        send_kernel_record(self.link.tls_fd, typ, payload)
            .await
            .map_err(ConnError::Downstream)?;
        add(&self.link.traffic.wire_out, payload.len());
        Ok(())
    }

    /// Whether the current key has carried enough records to be replaced (TLS 1.3), or the
    /// connection must end (TLS 1.2, which has no KeyUpdate).
    fn near_record_limit(&mut self) -> Result<bool, ConnError> {
        if let Some(sealer) = self.out.sealer.as_ref() {
            return Ok(sealer.wants_key_update());
        }
        self.writes_since_check += 1;
        if self.writes_since_check < RECORD_CHECK_EVERY {
            return Ok(false);
        }
        self.writes_since_check = 0;
        let ktx = self.link.ktx.borrow();
        let Some(k) = ktx.as_ref() else {
            return Ok(false);
        };
        let records = k.records_now(self.link.tls_fd, Direction::Tx);
        if k.info.tls13 {
            Ok(records >= record::KEY_UPDATE_AFTER)
        } else if records >= record::TLS12_RECORD_LIMIT {
            Err(RecordError::Exhausted.into())
        } else {
            Ok(false)
        }
    }

    /// Sends a KeyUpdate and switches to the next key (`requested`: the peer must update its
    /// own in turn).
    async fn key_update(&mut self, requested: bool) -> Result<(), ConnError> {
        if self.out.sealer.is_some() {
            return self.out.key_update(&self.link.kernel, requested);
        }
        let msg = record::key_update_message(requested);
        self.send_control(ContentType::Handshake, &msg).await?;
        let (seq, secrets) = self.link.kernel.borrow_mut().update_tx_secret()?;
        let link = &*self.link;
        match link.ktx.borrow_mut().as_mut() {
            Some(k) => k.rekey(link.tls_fd, Direction::Tx, link.version, seq, &secrets),
            None => Err(ConnError::Kernel("send side has no kernel keys".into())),
        }
    }

    async fn run(mut self) -> Result<(), ConnError> {
        let mut buf: Vec<u8> = Vec::with_capacity(SMALL);
        loop {
            buf.clear();
            let (res, b) = {
                let mut read = pin!(read_more(self.src, buf, 0));
                loop {
                    let frame_open = self.encoder.as_ref().is_some_and(|e| e.holds_context());
                    // Something to give back once the link goes quiet: a zstd frame and its
                    // context, or the record buffer.
                    let holding = frame_open || self.out.holds_memory();
                    let wait = if holding {
                        Some(QUIET_AFTER)
                    } else {
                        self.link.idle_timeout
                    };
                    let Some(wait) = wait else {
                        break (&mut read).await;
                    };
                    monoio::select! {
                        r = &mut read => break r,
                        _ = monoio::time::sleep(wait) => {
                            // The read has been pending for QUIET_AFTER: the link is quiet.
                            if frame_open {
                                if let Some(enc) = self.encoder.as_mut() {
                                    enc.end_frame(&mut self.out)?;
                                }
                                Self::write_pending(&mut self.out, self.dst, &self.link).await?;
                            }
                            self.out.release();
                            if let Some(t) = self.link.idle_timeout {
                                if self.link.last_activity.get().elapsed() >= t {
                                    return Err(ConnError::Timeout("idle"));
                                }
                            }
                        }
                    }
                }
            };
            buf = b;
            let n = res.map_err(ConnError::Plain)?;
            if n == 0 && sys::eof_was_reset(self.src_fd, self.link.plain_fin.get()) {
                // A close_notify now would pass the reset on as a clean end (found by the
                // soak test).
                return Err(ConnError::Plain(std::io::ErrorKind::ConnectionReset.into()));
            }
            if n == 0 {
                if let Some(enc) = self.encoder.as_mut() {
                    enc.end_frame(&mut self.out)?;
                }
                let close_notify = record::alert_payload(false, AlertDescription::CloseNotify);
                let mut sent = self.send_control(ContentType::Alert, &close_notify).await;
                if sent.is_ok() {
                    sent = self.dst.shutdown().await.map_err(ConnError::Downstream);
                }
                return match sent {
                    Err(ConnError::Downstream(e)) if self.link.peer_left_before_our_close(&e) => {
                        Ok(())
                    }
                    other => other,
                };
            }
            self.link.touch();
            add(&self.link.traffic.plain_to_tls, n);
            let requested = self.link.version == ProtocolVersion::TLSv1_3
                && self
                    .rekey_after
                    .is_some_and(|after| self.sent_under_key >= after);
            let answer = self.link.peer_wants_key_update.replace(false);
            if requested || answer || self.near_record_limit()? {
                self.key_update(requested).await?;
                self.sent_under_key = 0;
            }
            self.sent_under_key += n as u64;
            let filled = n == buf.capacity();
            match self.encoder.as_mut() {
                Some(enc) => {
                    enc.compress(&buf[..n], &mut self.out)?;
                    // Flush on idle: only when nothing more is waiting, so bulk transfers get
                    // full blocks and a lone request is not held back.
                    if !filled || sys::bytes_readable(self.src_fd) == 0 {
                        enc.flush(&mut self.out)?;
                    }
                }
                // Kernel TLS without zstd: the read buffer goes to the kernel as it is.
                None if self.out.sealer.is_none() => {
                    self.flush_out().await?;
                    let (res, b) = self.dst.write_all(buf.slice(0..n)).await;
                    buf = b.into_inner();
                    res.map_err(ConnError::Downstream)?;
                    add(&self.link.traffic.wire_out, n);
                }
                None => self.out.push_plain(&buf[..n])?,
            }
            self.flush_out().await?;
            if filled {
                if buf.capacity() < BIG {
                    buf = buffers::take_big();
                }
            } else {
                if n < SMALL / 2 && buf.capacity() >= BIG {
                    buffers::give_back(std::mem::replace(&mut buf, Vec::with_capacity(SMALL)));
                }
            }
        }
    }

    async fn write_pending(
        out: &mut RecordWriter,
        dst: &mut OwnedWriteHalf<TcpStream>,
        link: &Link,
    ) -> Result<(), ConnError> {
        out.seal_open()?;
        let used = out.pending();
        if used == 0 {
            return Ok(());
        }
        let buf = std::mem::take(&mut out.out);
        let (res, slice) = dst.write_all(buf.slice(0..used)).await;
        out.out = slice.into_inner();
        out.used = 0;
        res.map_err(ConnError::Downstream)?;
        add(&link.traffic.wire_out, used);
        Ok(())
    }
}

/// Sends one non-application record through a kTLS socket. `sendmsg` with its record type is
/// not an io_uring operation monoio offers; it is tried without blocking and, while the send
/// buffer is full, retried after a short sleep (such records are rare: KeyUpdate, alerts).
async fn send_kernel_record(fd: RawFd, typ: ContentType, payload: &[u8]) -> std::io::Result<()> {
    let mut wait = Duration::from_millis(1);
    loop {
        match sys::tls::send_record(fd, u8::from(typ), payload) {
            Ok(n) if n == payload.len() => return Ok(()),
            Ok(n) => {
                return Err(std::io::Error::other(format!(
                    "the kernel took {n} of {} bytes of a {typ:?} record",
                    payload.len()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                monoio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(50));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

struct OpenPump<'a> {
    src: &'a mut OwnedReadHalf<TcpStream>,
    dst: &'a mut OwnedWriteHalf<TcpStream>,
    opener: Opener,
    /// The receive key for the kernel, installed once the records the handshake had already
    /// read are opened here (`None`: userspace to the end, or already in the kernel).
    rx_pending: Option<CryptoInfo>,
    decoder: Option<ZstdDecoder>,
    link: Rc<Link>,
}

/// What a record other than application data meant, read from a kTLS socket.
enum Control {
    /// Handled (a KeyUpdate, a ticket), or nothing was there yet.
    Handled,
    /// close_notify.
    Closed,
    /// Application data after all (the record at the head changed between the read and the
    /// `recvmsg`).
    Data(Vec<u8>),
}

/// Waits for the receive side's `read`; whenever the link has been quiet for a while, gives the
/// zstd context and the big output buffer back, and ends the connection once it has been idle
/// for the idle timeout.
async fn wait_quietly<T>(
    read: impl std::future::Future<Output = T>,
    decoder: &mut Option<ZstdDecoder>,
    link: &Link,
    out: &mut Vec<u8>,
) -> Result<T, ConnError> {
    let mut read = pin!(read);
    loop {
        let holding = decoder.as_ref().is_some_and(|d| d.holds_context());
        let wait = if holding {
            Some(QUIET_AFTER)
        } else {
            link.idle_timeout
        };
        let Some(t) = wait else {
            return Ok((&mut read).await);
        };
        monoio::select! {
            r = &mut read => return Ok(r),
            _ = monoio::time::sleep(t) => {
                // Quiet: the zstd context goes back between frames.
                if let Some(d) = decoder.as_mut() {
                    d.release();
                }
                if out.is_empty() && out.capacity() >= BIG {
                    buffers::give_back(std::mem::take(out));
                }
                if let Some(limit) = link.idle_timeout {
                    if link.last_activity.get().elapsed() >= limit {
                        return Err(ConnError::Timeout("idle"));
                    }
                }
            }
        }
    }
}

/// A kTLS socket's read error, in the record layer's words where it has them.
fn kernel_read_error(e: std::io::Error) -> ConnError {
    match e.raw_os_error() {
        Some(libc::EBADMSG) => RecordError::BadRecordMac.into(),
        Some(libc::EMSGSIZE) => RecordError::RecordOverflow.into(),
        Some(libc::EKEYEXPIRED) => {
            ConnError::Kernel("a read came between a KeyUpdate and its new key".into())
        }
        _ => ConnError::Downstream(e),
    }
}

impl OpenPump<'_> {
    async fn write_plain(
        &mut self,
        buf: Vec<u8>,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<u8>, ConnError> {
        if range.is_empty() {
            return Ok(buf);
        }
        let n = range.len();
        let (res, slice) = self.dst.write_all(buf.slice(range)).await;
        let buf = slice.into_inner();
        res.map_err(ConnError::Plain)?;
        add(&self.link.traffic.tls_to_plain, n);
        Ok(buf)
    }

    /// Decompresses `input` into `out`, writing `out` to the plaintext leg whenever it fills.
    async fn inflate(&mut self, input: &[u8], mut out: Vec<u8>) -> Result<Vec<u8>, ConnError> {
        let mut input = input;
        loop {
            let Some(dec) = self.decoder.as_mut() else {
                return Ok(out);
            };
            let used = dec.decompress(input, &mut out)?;
            input = &input[used..];
            if out.len() == out.capacity() {
                let len = out.len();
                out = self.write_plain(out, 0..len).await?;
                out.clear();
                continue;
            }
            if input.is_empty() {
                return Ok(out);
            }
        }
    }

    async fn run(
        mut self,
        mut inbuf: Vec<u8>,
        early: Vec<u8>,
        peer_closed: bool,
    ) -> Result<(), ConnError> {
        let mut out: Vec<u8> = Vec::new();
        if !early.is_empty() {
            if self.decoder.is_some() {
                out = buffers::take_big();
                out = self.inflate(&early, out).await?;
            } else {
                let len = early.len();
                self.write_plain(early, 0..len).await?;
            }
        }
        add(&self.link.traffic.wire_in, inbuf.len());
        let mut closed = peer_closed;
        loop {
            // Open every whole record in the buffer. Plain payloads are moved down to `wpos`
            // (always behind the read position, as a payload is shorter than its record).
            let mut pos = 0;
            let mut wpos = 0;
            while !closed {
                let Some(opened) = self.opener.open_in_place(&mut inbuf[pos..])? else {
                    break;
                };
                let payload = pos + opened.payload.start..pos + opened.payload.end;
                match opened.content_type {
                    ContentType::ApplicationData => {
                        if self.decoder.is_some() {
                            if out.capacity() < BIG {
                                out = buffers::take_big();
                            }
                            out = self.inflate(&inbuf[payload], out).await?;
                        } else {
                            inbuf.copy_within(payload.clone(), wpos);
                            wpos += payload.len();
                        }
                    }
                    ContentType::Handshake => self.post_handshake(&inbuf[payload])?,
                    ContentType::Alert => {
                        let p = &inbuf[payload];
                        let desc = AlertDescription::from(p.get(1).copied().unwrap_or(0));
                        if desc == AlertDescription::CloseNotify {
                            closed = true;
                        } else {
                            return Err(ConnError::PeerAlert(desc));
                        }
                    }
                    ContentType::ChangeCipherSpec => {}
                    other => return Err(RecordError::UnexpectedContentType(u8::from(other)).into()),
                }
                pos += opened.record_len;
            }
            if wpos > 0 {
                inbuf = self.write_plain(inbuf, 0..wpos).await?;
            }
            if !out.is_empty() {
                let len = out.len();
                out = self.write_plain(out, 0..len).await?;
                out.clear();
            }
            if closed {
                return self.finish_closed().await;
            }
            // Keep the partial record that follows, at the front.
            let len = inbuf.len();
            inbuf.copy_within(pos..len, 0);
            inbuf.truncate(len - pos);
            if out.capacity() >= BIG && inbuf.is_empty() {
                buffers::give_back(std::mem::take(&mut out));
            }
            // Kernel TLS takes over at a record boundary: with nothing left over, now;
            // otherwise after reading exactly the rest of the partial record.
            let mut exact = None;
            if self.rx_pending.is_some() {
                if inbuf.is_empty() && self.switch_rx() {
                    return self.run_kernel(inbuf, out).await;
                }
                exact = Some(match record::Opener::record_len_hint(&inbuf) {
                    Some(l) => l.saturating_sub(inbuf.len()).max(1),
                    None => 5 - inbuf.len().min(4),
                });
            }
            let need = record::Opener::record_len_hint(&inbuf)
                .map_or(SMALL, |l| l.saturating_sub(inbuf.len()).max(4096));
            let src = &mut *self.src;
            let read = async move {
                match exact {
                    Some(max) => read_at_most(src, inbuf, max).await,
                    None => read_more(src, inbuf, need).await,
                }
            };
            let (res, b) = wait_quietly(read, &mut self.decoder, &self.link, &mut out).await?;
            inbuf = b;
            let n = res.map_err(ConnError::Downstream)?;
            if n == 0 {
                return Err(ConnError::Truncated);
            }
            self.link.touch();
            add(&self.link.traffic.wire_in, n);
            // Grow for bulk, shrink back when the link calms down.
            if inbuf.len() == inbuf.capacity() && inbuf.capacity() < BIG {
                let mut big = buffers::take_big();
                big.extend_from_slice(&inbuf);
                inbuf = big;
            } else if n < SMALL / 2 && inbuf.capacity() > SMALL && inbuf.len() < SMALL / 2 {
                // Also catches the handshake's buffer, which grows past SMALL on the client
                // side (the server's flight plus its tickets) and would otherwise stay with
                // an idle link for good.
                let mut small = Vec::with_capacity(SMALL);
                small.extend_from_slice(&inbuf);
                buffers::give_back(std::mem::replace(&mut inbuf, small));
            }
        }
    }

    /// The peer's close_notify: its direction ends, cleanly unless a zstd frame was cut.
    async fn finish_closed(&mut self) -> Result<(), ConnError> {
        self.link
            .plain_sent_at_peer_close
            .set(Some(self.link.traffic.plain_to_tls.get()));
        if self.decoder.as_ref().is_some_and(|d| d.in_frame()) {
            return Err(CodecError::Truncated.into());
        }
        // A clean end: the FIN goes out, and a later close no longer resets what was sent.
        sys::close_gracefully(self.link.plain_fd);
        // Before the shutdown: once our FIN may be out, `TCP_CLOSE` is no sign of a reset.
        self.link.plain_fin.set(true);
        self.dst.shutdown().await.map_err(ConnError::Plain)?;
        Ok(())
    }

    /// Installs the receive key in the kernel at the next record's number. On a refusal the
    /// records stay in userspace (logged at debug).
    fn switch_rx(&mut self) -> bool {
        let Some(info) = self.rx_pending.take() else {
            return false;
        };
        let seq = self.opener.seq();
        let link = &*self.link;
        match info.install(link.tls_fd, Direction::Rx, seq) {
            Ok(()) => {
                *link.krx.borrow_mut() = Some(KernelKeys {
                    info,
                    installed_at: seq,
                    records_before: 0,
                });
                link.traffic.ktls_rx.set(true);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "ktls: TLS_RX refused, records stay in userspace");
                link.traffic.ktls_fallback.set(Some("rx_refused"));
                false
            }
        }
    }

    /// Hands `buf[..n]` (plaintext from the kernel) on, through zstd when it is on.
    async fn deliver(
        &mut self,
        buf: Vec<u8>,
        n: usize,
        mut out: Vec<u8>,
    ) -> Result<(Vec<u8>, Vec<u8>), ConnError> {
        if self.decoder.is_none() {
            return Ok((self.write_plain(buf, 0..n).await?, out));
        }
        if out.capacity() < BIG {
            out = buffers::take_big();
        }
        out = self.inflate(&buf[..n], out).await?;
        if !out.is_empty() {
            let len = out.len();
            out = self.write_plain(out, 0..len).await?;
            out.clear();
        }
        Ok((buf, out))
    }

    /// The receive side under kernel TLS: reads are plaintext; a record of another type makes
    /// the read fail with EIO and is then fetched with its type (`recvmsg`).
    async fn run_kernel(mut self, mut buf: Vec<u8>, mut out: Vec<u8>) -> Result<(), ConnError> {
        loop {
            buf.clear();
            let read = read_more(&mut *self.src, buf, SMALL);
            let (res, b) = wait_quietly(read, &mut self.decoder, &self.link, &mut out).await?;
            buf = b;
            match res {
                Ok(0) => return Err(ConnError::Truncated),
                Ok(n) => {
                    self.link.touch();
                    add(&self.link.traffic.wire_in, n);
                    (buf, out) = self.deliver(buf, n, out).await?;
                    // Grow for bulk, shrink back when the link calms down.
                    if n == buf.capacity() && buf.capacity() < BIG {
                        buf = buffers::take_big();
                    } else if n < SMALL / 2 && buf.capacity() >= BIG {
                        buffers::give_back(std::mem::replace(&mut buf, Vec::with_capacity(SMALL)));
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EIO) => match self.control_record()? {
                    Control::Handled => {}
                    Control::Closed => return self.finish_closed().await,
                    Control::Data(data) => {
                        let n = data.len();
                        (_, out) = self.deliver(data, n, out).await?;
                    }
                },
                Err(e) => return Err(kernel_read_error(e)),
            }
        }
    }

    /// Fetches the record at the head of a kTLS socket's queue with its content type.
    fn control_record(&mut self) -> Result<Control, ConnError> {
        // Rare (a KeyUpdate, a ticket, the close): a buffer of its own, for one record.
        let mut rec = vec![0u8; MAX_PLAINTEXT + 256];
        let (typ, n) = match sys::tls::recv_record(self.link.tls_fd, &mut rec) {
            Ok(r) => r,
            // Nothing whole there yet: the next read waits for it.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(Control::Handled)
            }
            Err(e) => return Err(kernel_read_error(e)),
        };
        self.link.touch();
        add(&self.link.traffic.wire_in, n);
        rec.truncate(n);
        match ContentType::from(typ) {
            ContentType::ApplicationData if n == 0 => Err(ConnError::Truncated),
            ContentType::ApplicationData => Ok(Control::Data(rec)),
            ContentType::Alert => {
                let desc = AlertDescription::from(rec.get(1).copied().unwrap_or(0));
                if desc == AlertDescription::CloseNotify {
                    Ok(Control::Closed)
                } else {
                    Err(ConnError::PeerAlert(desc))
                }
            }
            ContentType::Handshake => {
                self.post_handshake(&rec)?;
                Ok(Control::Handled)
            }
            other => Err(RecordError::UnexpectedContentType(u8::from(other)).into()),
        }
    }

    /// Post-handshake messages: KeyUpdate (both sides) and NewSessionTicket (client side).
    fn post_handshake(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        for msg in record::handshake_messages(payload) {
            let (typ, body) = msg?;
            match typ {
                HandshakeType::KeyUpdate => {
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(ConnError::Unexpected(typ)),
                    };
                    let (seq, secrets) = self.link.kernel.borrow_mut().update_rx_secret()?;
                    let link = &*self.link;
                    if let Some(k) = link.krx.borrow_mut().as_mut() {
                        k.rekey(link.tls_fd, Direction::Rx, link.version, seq, &secrets)?;
                    } else {
                        if self.rx_pending.is_some() {
                            self.rx_pending = CryptoInfo::new(link.version, &secrets);
                        }
                        self.opener.rekey(seq, secrets)?;
                    }
                    if requested {
                        self.link.peer_wants_key_update.set(true);
                    }
                }
                HandshakeType::NewSessionTicket => {
                    self.link
                        .kernel
                        .borrow_mut()
                        .handle_new_session_ticket(body)?;
                }
                other => return Err(ConnError::Unexpected(other)),
            }
        }
        Ok(())
    }
}
