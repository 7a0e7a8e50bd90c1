//! The relay: after the handshake, two pumps move bytes between the TLS leg and the plaintext
//! leg, one per direction, on the connection's own core.
//!
//! ```text
//!   plaintext leg --read--> [zstd] --seal--> TLS leg        (SealPump)
//!   plaintext leg <--write-- [unzstd] <--open-- TLS leg     (OpenPump)
//! ```
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
use rustls::{AlertDescription, ContentType, HandshakeType};

use crate::buffers::{self, read_more, BIG, SMALL};
use crate::codec::{CodecError, Sink, ZstdDecoder, ZstdEncoder};
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
}

fn add(c: &Cell<u64>, n: usize) {
    c.set(c.get() + n as u64);
}

/// State both pumps touch: rustls' key schedule, a pending KeyUpdate request, activity time.
struct Link {
    kernel: RefCell<Kernel>,
    peer_wants_key_update: Cell<bool>,
    /// `plain_to_tls` when the TLS peer's close_notify was read: bytes counted after it were
    /// sent to a peer that had already finished.
    plain_sent_at_peer_close: Cell<Option<u64>>,
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
    let sealer = Sealer::new(est.version, est.tx.0, est.tx.1)?;
    let opener = Opener::new(est.version, est.rx.0, est.rx.1)?;
    let link = Rc::new(Link {
        kernel: RefCell::new(est.kernel),
        peer_wants_key_update: Cell::new(false),
        plain_sent_at_peer_close: Cell::new(None),
        last_activity: Cell::new(Instant::now()),
        idle_timeout: opts.idle_timeout,
        traffic,
    });
    let plain_fd = plain.as_raw_fd();
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
        };
        let down = OpenPump {
            src: &mut tls_r,
            dst: &mut plain_w,
            opener,
            decoder: opts.compress.map(|_| ZstdDecoder::new()),
            link,
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

/// Seals plaintext into TLS records laid out back to back in one buffer, in place.
struct RecordWriter {
    sealer: Sealer,
    out: Vec<u8>,
    used: usize,
    /// Start of the record slot being filled, and how many payload bytes it has.
    open: Option<(usize, usize)>,
}

impl RecordWriter {
    fn new(sealer: Sealer) -> Self {
        RecordWriter {
            sealer,
            out: Vec::new(),
            used: 0,
            open: None,
        }
    }

    fn slot_len(&self) -> usize {
        self.sealer.prefix_len() + MAX_PLAINTEXT + self.sealer.suffix_len()
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
                let len = self.sealer.seal_in_place(
                    ContentType::ApplicationData,
                    &mut self.out[start..],
                    fill,
                )?;
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
    fn push_record(&mut self, typ: ContentType, payload: &[u8]) -> Result<(), ConnError> {
        self.seal_open()?;
        let start = self.used;
        let prefix = self.sealer.prefix_len();
        self.ensure(start + prefix + payload.len() + self.sealer.suffix_len());
        self.out[start + prefix..start + prefix + payload.len()].copy_from_slice(payload);
        let len = self
            .sealer
            .seal_in_place(typ, &mut self.out[start..], payload.len())?;
        self.used = start + len;
        Ok(())
    }

    fn key_update(&mut self, kernel: &RefCell<Kernel>) -> Result<(), ConnError> {
        self.push_record(ContentType::Handshake, &record::key_update_message(false))?;
        let (seq, secrets) = kernel.borrow_mut().update_tx_secret()?;
        self.sealer.rekey(seq, secrets)?;
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
        let prefix = self.sealer.prefix_len();
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
}

impl SealPump<'_> {
    async fn flush_out(&mut self) -> Result<(), ConnError> {
        Self::write_pending(&mut self.out, self.dst, &self.link).await
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
            if n == 0 {
                if let Some(enc) = self.encoder.as_mut() {
                    enc.end_frame(&mut self.out)?;
                }
                let close_notify = record::alert_payload(false, AlertDescription::CloseNotify);
                self.out.push_record(ContentType::Alert, &close_notify)?;
                let mut sent = self.flush_out().await;
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
            if self.link.peer_wants_key_update.replace(false) || self.out.sealer.wants_key_update()
            {
                self.out.key_update(&self.link.kernel)?;
            }
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

struct OpenPump<'a> {
    src: &'a mut OwnedReadHalf<TcpStream>,
    dst: &'a mut OwnedWriteHalf<TcpStream>,
    opener: Opener,
    decoder: Option<ZstdDecoder>,
    link: Rc<Link>,
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
                self.link
                    .plain_sent_at_peer_close
                    .set(Some(self.link.traffic.plain_to_tls.get()));
                if self.decoder.as_ref().is_some_and(|d| d.in_frame()) {
                    return Err(CodecError::Truncated.into());
                }
                self.dst.shutdown().await.map_err(ConnError::Plain)?;
                return Ok(());
            }
            // Keep the partial record that follows, at the front.
            let len = inbuf.len();
            inbuf.copy_within(pos..len, 0);
            inbuf.truncate(len - pos);
            if out.capacity() >= BIG && inbuf.is_empty() {
                buffers::give_back(std::mem::take(&mut out));
            }
            let need = record::Opener::record_len_hint(&inbuf)
                .map_or(SMALL, |l| l.saturating_sub(inbuf.len()).max(4096));
            let (res, b) = {
                let mut read = pin!(read_more(self.src, inbuf, need));
                loop {
                    let holding = self.decoder.as_ref().is_some_and(|d| d.holds_context());
                    let wait = if holding {
                        Some(QUIET_AFTER)
                    } else {
                        self.link.idle_timeout
                    };
                    let Some(t) = wait else {
                        break (&mut read).await;
                    };
                    monoio::select! {
                        r = &mut read => break r,
                        _ = monoio::time::sleep(t) => {
                            // Quiet: the zstd context goes back between frames.
                            if let Some(d) = self.decoder.as_mut() {
                                d.release();
                            }
                            if let Some(limit) = self.link.idle_timeout {
                                if self.link.last_activity.get().elapsed() >= limit {
                                    return Err(ConnError::Timeout("idle"));
                                }
                            }
                        }
                    }
                }
            };
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
                    self.opener.rekey(seq, secrets)?;
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
