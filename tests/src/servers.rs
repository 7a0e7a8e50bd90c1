//! Test upstreams and the matching client.
//!
//! Stream protocol, per connection: the client sends a [`HEADER_LEN`]-byte header — seed
//! (u64 LE), `up_len` (u64 LE), `down_len` (u64 LE), [`flags`] (u8) — then `up_len` bytes
//! from `Gen::new(seed, compressible)` in random-size writes, then half-closes, while reading
//! until EOF. The server, at the same time, sends `down_len` bytes from
//! `Gen::new(seed ^ DOWN_SALT, compressible)` in random-size writes and half-closes, while
//! reading exactly `up_len` bytes and then expecting EOF. Each side hashes (SHA-256) and
//! compares what it receives with the regenerated stream; the server files a
//! [`ServerRecord`] under the seed.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::{chunk_len, hex, patience, Gen};

/// Length of the stream header.
pub const HEADER_LEN: usize = 25;
/// XORed into the seed for the server's (downstream) bytes.
pub const DOWN_SALT: u64 = 0xd0d0_d0d0_5eed_0001;
const MAX_CHUNK: usize = 1 << 20;

/// Header flags.
pub mod flags {
    /// Both payloads are text-like (compressible) instead of random.
    pub const COMPRESSIBLE: u8 = 1;
    /// The server sends back the upload (`down_len` is ignored) instead of its own stream,
    /// and half-closes once it has echoed `up_len` bytes, without waiting for the client's
    /// EOF: for clients that never half-close (`openssl s_client -quiet`).
    pub const ECHO: u8 = 2;
    /// The server sends the first half of its stream (`down_len / 2` bytes, see
    /// [`super::Transfer::reset_at`]), then resets the connection (SO_LINGER 0) without
    /// reading the upload: the client must see a reset, never a clean EOF.
    pub const RESET: u8 = 4;
}

/// One transfer: what the client sends and expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub seed: u64,
    pub up: u64,
    pub down: u64,
    pub flags: u8,
}

impl Transfer {
    pub fn new(seed: u64, up: u64, down: u64) -> Transfer {
        Transfer {
            seed,
            up,
            down,
            flags: 0,
        }
    }

    pub fn compressible(mut self, yes: bool) -> Transfer {
        if yes {
            self.flags |= flags::COMPRESSIBLE;
        } else {
            self.flags &= !flags::COMPRESSIBLE;
        }
        self
    }

    pub fn echo(mut self) -> Transfer {
        self.flags |= flags::ECHO;
        self
    }

    /// The server resets the connection part way (see [`flags::RESET`]).
    pub fn reset(mut self) -> Transfer {
        self.flags |= flags::RESET;
        self
    }

    pub fn is_reset(&self) -> bool {
        self.flags & flags::RESET != 0
    }

    /// With [`flags::RESET`]: how many downstream bytes the server writes before its reset
    /// (the client may get fewer: the reset drops what is still queued).
    pub fn reset_at(&self) -> u64 {
        self.down / 2
    }

    pub fn is_compressible(&self) -> bool {
        self.flags & flags::COMPRESSIBLE != 0
    }

    pub fn is_echo(&self) -> bool {
        self.flags & flags::ECHO != 0
    }

    /// Bytes the client should receive.
    pub fn expected_down(&self) -> u64 {
        if self.is_echo() {
            self.up
        } else {
            self.down
        }
    }

    pub fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&self.seed.to_le_bytes());
        h[8..16].copy_from_slice(&self.up.to_le_bytes());
        h[16..24].copy_from_slice(&self.down.to_le_bytes());
        h[24] = self.flags;
        h
    }

    fn parse(h: &[u8; HEADER_LEN]) -> Transfer {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Transfer {
            seed: word(0),
            up: word(8),
            down: word(16),
            flags: h[24],
        }
    }

    /// The upload: header then payload, as one buffer (for tools fed from a file).
    pub fn upload_bytes(&self) -> Vec<u8> {
        let mut v = self.header().to_vec();
        let start = v.len();
        v.resize(start + self.up as usize, 0);
        Gen::new(self.seed, self.is_compressible()).fill(&mut v[start..]);
        v
    }

    /// The bytes the client should receive, as one buffer.
    pub fn expected_down_bytes(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.expected_down() as usize];
        if self.is_echo() {
            Gen::new(self.seed, self.is_compressible()).fill(&mut v);
        } else {
            Gen::new(self.seed ^ DOWN_SALT, self.is_compressible()).fill(&mut v);
        }
        v
    }
}

/// Hashes received bytes and compares them, as they come, with the regenerated stream.
struct Checker {
    gen: Gen,
    expect: Vec<u8>,
    hash: Sha256,
    count: u64,
    first_mismatch: Option<u64>,
}

impl Checker {
    fn new(gen: Gen) -> Checker {
        Checker {
            gen,
            expect: vec![0u8; MAX_CHUNK],
            hash: Sha256::new(),
            count: 0,
            first_mismatch: None,
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.hash.update(data);
        for piece in data.chunks(MAX_CHUNK) {
            if self.first_mismatch.is_none() {
                let want = &mut self.expect[..piece.len()];
                self.gen.fill(want);
                if want != piece {
                    let at = want
                        .iter()
                        .zip(piece)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    self.first_mismatch = Some(self.count + at as u64);
                }
            }
            self.count += piece.len() as u64;
        }
    }

    fn digest(self) -> [u8; 32] {
        self.hash.finalize().into()
    }
}

/// What the stream server saw on one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRecord {
    /// Payload bytes received after the header (including any past `up_len`).
    pub received: u64,
    pub sha256: [u8; 32],
    /// Offset of the first byte that differs from the expected upload.
    pub first_mismatch: Option<u64>,
    /// EOF came right after `up_len` bytes.
    pub eof_after: bool,
    pub read_error: Option<String>,
    /// Bytes sent back.
    pub sent: u64,
    pub write_error: Option<String>,
}

type Records = Arc<(Mutex<HashMap<u64, ServerRecord>>, Condvar)>;

/// The stream-protocol upstream (see the module doc): one thread per connection plus one for
/// its sending side.
pub struct StreamServer {
    addr: SocketAddr,
    records: Records,
}

impl StreamServer {
    pub fn start() -> StreamServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let records: Records = Arc::new((Mutex::new(HashMap::new()), Condvar::new()));
        let rec = records.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let rec = rec.clone();
                std::thread::spawn(move || serve_stream(conn, rec));
            }
        });
        StreamServer { addr, records }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The record for `seed`, waiting up to `wait` for the connection to finish.
    pub fn record(&self, seed: u64, wait: Duration) -> Option<ServerRecord> {
        let deadline = Instant::now() + wait;
        let (lock, cv) = &*self.records;
        let mut map = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = map.get(&seed) {
                return Some(r.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            map = cv
                .wait_timeout(map, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Drops the record for `seed` (a long run checks each record once and forgets it, so
    /// the map stays small).
    pub fn forget(&self, seed: u64) {
        self.records
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seed);
    }

    /// How many connections have finished (with a readable header), not counting forgotten
    /// records.
    pub fn finished(&self) -> usize {
        self.records.0.lock().map(|m| m.len()).unwrap_or(0)
    }
}

fn serve_stream(mut conn: TcpStream, records: Records) {
    // A stalled peer fails the connection instead of hanging the test.
    let _ = conn.set_read_timeout(Some(patience()));
    let _ = conn.set_write_timeout(Some(patience()));
    let mut header = [0u8; HEADER_LEN];
    if conn.read_exact(&mut header).is_err() {
        return;
    }
    let t = Transfer::parse(&header);
    if t.is_reset() {
        return serve_reset(conn, t, records);
    }
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let (echo_tx, echo_rx) = mpsc::sync_channel::<Vec<u8>>(8);
    let sender = std::thread::spawn(move || -> (u64, Option<String>) {
        let mut sent = 0u64;
        let result = if t.is_echo() {
            echo_rx.iter().try_for_each(|chunk| {
                writer.write_all(&chunk)?;
                sent += chunk.len() as u64;
                Ok(())
            })
        } else {
            let mut rng = StdRng::seed_from_u64(t.seed ^ 0x5e4d);
            let mut g = Gen::new(t.seed ^ DOWN_SALT, t.is_compressible());
            let mut buf = vec![0u8; MAX_CHUNK];
            (|| {
                while sent < t.down {
                    let n = (chunk_len(&mut rng, MAX_CHUNK) as u64).min(t.down - sent) as usize;
                    g.fill(&mut buf[..n]);
                    writer.write_all(&buf[..n])?;
                    sent += n as u64;
                }
                Ok(())
            })()
        };
        let result = result.and_then(|()| writer.shutdown(Shutdown::Write));
        (sent, result.err().map(|e: std::io::Error| e.to_string()))
    });
    let mut check = Checker::new(Gen::new(t.seed, t.is_compressible()));
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut read_error = None;
    let mut eof_after = false;
    let mut echo_tx = t.is_echo().then_some(echo_tx);
    // Exactly up_len bytes, then EOF.
    loop {
        let want = if check.count < t.up {
            (t.up - check.count).min(MAX_CHUNK as u64) as usize
        } else {
            // The echo is complete: let the sender half-close.
            echo_tx = None;
            MAX_CHUNK
        };
        match conn.read(&mut buf[..want]) {
            Ok(0) => {
                eof_after = check.count == t.up;
                break;
            }
            Ok(n) => {
                check.update(&buf[..n]);
                if let Some(tx) = &echo_tx {
                    if check.count <= t.up && tx.send(buf[..n].to_vec()).is_err() {
                        echo_tx = None;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                read_error = Some(format!("after {} bytes: {e}", check.count));
                break;
            }
        }
    }
    drop(echo_tx);
    let (sent, write_error) = sender.join().unwrap_or((0, Some("sender panicked".into())));
    let record = ServerRecord {
        received: check.count,
        first_mismatch: check.first_mismatch,
        sha256: check.digest(),
        eof_after,
        read_error,
        sent,
        write_error,
    };
    file_record(&records, t.seed, record);
}

/// [`flags::RESET`]: half the downstream in random-size writes, then an RST.
fn serve_reset(mut conn: TcpStream, t: Transfer, records: Records) {
    let mut rng = StdRng::seed_from_u64(t.seed ^ 0x5e4d);
    let mut g = Gen::new(t.seed ^ DOWN_SALT, t.is_compressible());
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut sent = 0u64;
    let mut write_error = None;
    while sent < t.reset_at() {
        let n = (chunk_len(&mut rng, MAX_CHUNK) as u64).min(t.reset_at() - sent) as usize;
        g.fill(&mut buf[..n]);
        if let Err(e) = conn.write_all(&buf[..n]) {
            write_error = Some(format!("after {sent} bytes: {e}"));
            break;
        }
        sent += n as u64;
    }
    if let Err(e) = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO)) {
        write_error = Some(format!("SO_LINGER 0: {e}"));
    }
    drop(conn);
    let record = ServerRecord {
        received: 0,
        sha256: Sha256::new().finalize().into(),
        first_mismatch: None,
        eof_after: false,
        read_error: None,
        sent,
        write_error,
    };
    file_record(&records, t.seed, record);
}

fn file_record(records: &Records, seed: u64, record: ServerRecord) {
    let (lock, cv) = &**records;
    lock.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(seed, record);
    cv.notify_all();
}

/// What the client side of one transfer saw.
#[derive(Clone, Debug)]
pub struct ClientReport {
    pub transfer: Transfer,
    /// The client socket's local address (the `peer=` of the forward end's log line).
    pub local_addr: Option<SocketAddr>,
    /// Payload bytes sent (after the header).
    pub sent: u64,
    pub sent_sha256: [u8; 32],
    pub write_error: Option<String>,
    pub received: u64,
    pub received_sha256: [u8; 32],
    /// SHA-256 of the expected stream over the same length.
    pub expected_sha256: [u8; 32],
    /// Offset of the first received byte that differs from the expected stream.
    pub first_mismatch: Option<u64>,
    pub read_error: Option<String>,
    pub elapsed: Duration,
}

/// Runs `t` through `addr` (both directions at once, random write sizes, half-close).
pub fn run_transfer(addr: SocketAddr, t: Transfer) -> ClientReport {
    transfer_inner(addr, t, None)
}

/// Like [`run_transfer`], but the upload stops after `pause_at` payload bytes until `resume`
/// gets a message (or its sender is dropped): the connection is certainly in flight then.
pub fn run_transfer_paused(
    addr: SocketAddr,
    t: Transfer,
    pause_at: u64,
    resume: mpsc::Receiver<()>,
) -> ClientReport {
    transfer_inner(addr, t, Some(Brake::PauseAt(pause_at, resume)))
}

/// Like [`run_transfer`], but the upload trickles (one write of at most 32 KiB per `every`)
/// until `resume` gets a message (or its sender is dropped), then runs at full speed: the
/// connection is in flight and never idle until then.
pub fn run_transfer_paced(
    addr: SocketAddr,
    t: Transfer,
    every: Duration,
    resume: mpsc::Receiver<()>,
) -> ClientReport {
    transfer_inner(addr, t, Some(Brake::Pace(every, resume)))
}

/// How [`transfer_inner`] holds its upload back.
enum Brake {
    PauseAt(u64, mpsc::Receiver<()>),
    Pace(Duration, mpsc::Receiver<()>),
}

/// Largest write while [`Brake::Pace`] holds.
const PACED_CHUNK: u64 = 32 << 10;

fn transfer_inner(addr: SocketAddr, t: Transfer, pause: Option<Brake>) -> ClientReport {
    let started = Instant::now();
    let mut report = ClientReport {
        transfer: t,
        local_addr: None,
        sent: 0,
        sent_sha256: [0; 32],
        write_error: None,
        received: 0,
        received_sha256: [0; 32],
        expected_sha256: [0; 32],
        first_mismatch: None,
        read_error: None,
        elapsed: Duration::ZERO,
    };
    let conn = match TcpStream::connect(addr) {
        Ok(c) => c,
        Err(e) => {
            report.write_error = Some(format!("connect {addr}: {e}"));
            report.read_error = report.write_error.clone();
            return report;
        }
    };
    report.local_addr = conn.local_addr().ok();
    let _ = conn.set_read_timeout(Some(patience()));
    let _ = conn.set_write_timeout(Some(patience()));
    let mut writer = conn.try_clone().expect("clone socket");
    let sender = std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let mut sent = 0u64;
        let mut rng = StdRng::seed_from_u64(t.seed ^ 0xc11e);
        let mut g = Gen::new(t.seed, t.is_compressible());
        let mut buf = vec![0u8; MAX_CHUNK];
        let mut pause = pause;
        let result = (|| -> std::io::Result<()> {
            writer.write_all(&t.header())?;
            while sent < t.up {
                match &pause {
                    Some(Brake::PauseAt(at, rx)) if sent >= *at => {
                        let _ = rx.recv();
                        pause = None;
                    }
                    Some(Brake::Pace(every, rx)) => match rx.try_recv() {
                        Err(mpsc::TryRecvError::Empty) => std::thread::sleep(*every),
                        _ => pause = None,
                    },
                    _ => {}
                }
                let mut n = (chunk_len(&mut rng, MAX_CHUNK) as u64).min(t.up - sent);
                match &pause {
                    Some(Brake::PauseAt(at, _)) => n = n.min(at - sent),
                    Some(Brake::Pace(..)) => n = n.min(PACED_CHUNK),
                    None => {}
                }
                let n = n as usize;
                g.fill(&mut buf[..n]);
                writer.write_all(&buf[..n])?;
                hash.update(&buf[..n]);
                sent += n as u64;
            }
            writer.shutdown(Shutdown::Write)
        })();
        (
            sent,
            hash.finalize().into(),
            result.err().map(|e| format!("after {sent} bytes: {e}")),
        )
    });
    let down_gen = || {
        if t.is_echo() {
            Gen::new(t.seed, t.is_compressible())
        } else {
            Gen::new(t.seed ^ DOWN_SALT, t.is_compressible())
        }
    };
    let mut check = Checker::new(down_gen());
    // The hash of the whole expected stream, from a second generator, as bytes arrive.
    let mut expected = Expected {
        gen: down_gen(),
        hash: Sha256::new(),
        left: t.expected_down(),
    };
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut want = vec![0u8; MAX_CHUNK];
    let mut reader = conn;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                check.update(&buf[..n]);
                expected.more(n, &mut want);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                report.read_error = Some(format!("after {} bytes: {e}", check.count));
                break;
            }
        }
    }
    while expected.left > 0 {
        expected.more(MAX_CHUNK, &mut want);
    }
    report.received = check.count;
    report.first_mismatch = check.first_mismatch;
    report.received_sha256 = check.digest();
    report.expected_sha256 = expected.hash.finalize().into();
    match sender.join() {
        Ok((sent, sha, err)) => {
            report.sent = sent;
            report.sent_sha256 = sha;
            report.write_error = err;
        }
        Err(_) => report.write_error = Some("sender panicked".into()),
    }
    report.elapsed = started.elapsed();
    report
}

/// The expected downstream, hashed as the real one arrives.
struct Expected {
    gen: Gen,
    hash: Sha256,
    left: u64,
}

impl Expected {
    fn more(&mut self, n: usize, scratch: &mut [u8]) {
        let n = (n as u64).min(self.left) as usize;
        self.gen.fill(&mut scratch[..n]);
        self.hash.update(&scratch[..n]);
        self.left -= n as u64;
    }
}

/// Whether a socket read by one thread and written by another ended with a reset, from the
/// two threads' errors (`read_error` `None` meaning EOF); else what was seen instead. The
/// kernel reports a reset once, to whichever call comes first; the other then sees EOF (a
/// read) or EPIPE (a write). ECONNRESET on either proves a reset that no FIN preceded (after
/// a FIN the kernel reports a reset as EPIPE): so a read's EOF with a write's ECONNRESET is a
/// reset, and a read's EOF with a write's EPIPE is a clean end of stream, then a reset.
pub fn ended_with_reset(
    read_error: &Option<String>,
    write_error: &Option<String>,
) -> Result<(), String> {
    let reset = |e: &String| e.contains("os error 104");
    match (read_error, write_error) {
        (Some(e), _) if reset(e) => Ok(()),
        (None, Some(w)) if reset(w) => Ok(()),
        (Some(e), _) => Err(format!("read failed, not with a reset: {e}")),
        (None, w) => Err(format!("clean EOF, then writes saw {w:?}")),
    }
}

/// Checks both ends of a finished transfer: the client got exactly the expected bytes and
/// then EOF, and the server got exactly what the client sent and then EOF. Waits up to
/// [`patience`] for the server's record.
pub fn verify_transfer(server: &StreamServer, c: &ClientReport) -> Result<(), String> {
    let t = c.transfer;
    let who = format!(
        "seed {} (up {} B, down {} B, flags {}, client {:?})",
        t.seed, t.up, t.down, t.flags, c.local_addr
    );
    let mut problems = Vec::new();
    if let Some(e) = &c.write_error {
        problems.push(format!("client send failed: {e}"));
    }
    if let Some(e) = &c.read_error {
        problems.push(format!("client receive failed: {e}"));
    }
    if c.received != t.expected_down() {
        problems.push(format!(
            "client received {} bytes, expected {}",
            c.received,
            t.expected_down()
        ));
    }
    if let Some(at) = c.first_mismatch {
        problems.push(format!("client's received bytes differ from offset {at}"));
    }
    if c.received_sha256 != c.expected_sha256 {
        problems.push(format!(
            "client received sha256 {} != expected {}",
            hex(&c.received_sha256),
            hex(&c.expected_sha256)
        ));
    }
    match server.record(t.seed, patience()) {
        None => problems.push(format!(
            "server never finished the connection within {:?}",
            patience()
        )),
        Some(r) => {
            if let Some(e) = &r.read_error {
                problems.push(format!("server receive failed: {e}"));
            }
            if let Some(e) = &r.write_error {
                problems.push(format!("server send failed: {e}"));
            }
            if r.received != t.up {
                problems.push(format!(
                    "server received {} bytes, client sent {} of {}",
                    r.received, c.sent, t.up
                ));
            }
            if !r.eof_after {
                problems.push("server did not see EOF right after the upload".into());
            }
            if let Some(at) = r.first_mismatch {
                problems.push(format!("server's received bytes differ from offset {at}"));
            }
            if r.sha256 != c.sent_sha256 {
                problems.push(format!(
                    "server received sha256 {} != client sent {}",
                    hex(&r.sha256),
                    hex(&c.sent_sha256)
                ));
            }
            if r.sent != t.expected_down() {
                problems.push(format!(
                    "server sent {} bytes, expected {}",
                    r.sent,
                    t.expected_down()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{who}: {}", problems.join("; ")))
    }
}

/// An echo upstream: each connection gets its bytes back; EOF is answered with a half-close.
pub struct EchoServer {
    addr: SocketAddr,
}

impl EchoServer {
    pub fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(patience()));
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => return,
                        }
                    }
                    let _ = conn.shutdown(Shutdown::Write);
                });
            }
        });
        EchoServer { addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

#[cfg(test)]
mod tests {
    //! The checks must catch a relay that corrupts, truncates, or turns a half-close into a
    //! full close: a faulty TCP relay between client and stream server.

    use super::*;

    #[derive(Clone, Copy, Debug)]
    enum Fault {
        None,
        /// Flip one bit at this offset of the upstream (client→server) direction.
        FlipUp(u64),
        /// Flip one bit at this offset of the downstream direction.
        FlipDown(u64),
        /// Forward only this many downstream bytes, then half-close.
        TruncateDown(u64),
        /// On EOF from the client, close both directions (no half-close).
        NoHalfClose,
    }

    fn pump(
        mut from: TcpStream,
        mut to: TcpStream,
        flip: Option<u64>,
        limit: Option<u64>,
        full_close: bool,
    ) {
        let mut buf = vec![0u8; 64 << 10];
        let mut pos = 0u64;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &mut buf[..n];
            if let Some(at) = flip {
                if (pos..pos + n as u64).contains(&at) {
                    chunk[(at - pos) as usize] ^= 0x20;
                }
            }
            let n = limit.map_or(n, |l| (l.saturating_sub(pos) as usize).min(n));
            if n == 0 || to.write_all(&chunk[..n]).is_err() {
                break;
            }
            pos += n as u64;
        }
        if full_close {
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        } else {
            let _ = to.shutdown(Shutdown::Write);
        }
    }

    fn faulty_relay(upstream: SocketAddr, fault: Fault) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let server = TcpStream::connect(upstream).expect("upstream");
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (flip_up, flip_down, limit_down, full) = match fault {
                    Fault::None => (None, None, None, false),
                    Fault::FlipUp(at) => (Some(at + HEADER_LEN as u64), None, None, false),
                    Fault::FlipDown(at) => (None, Some(at), None, false),
                    Fault::TruncateDown(l) => (None, None, Some(l), false),
                    Fault::NoHalfClose => (None, None, None, true),
                };
                std::thread::spawn(move || pump(client, server, flip_up, None, full));
                std::thread::spawn(move || pump(s2, c2, flip_down, limit_down, false));
            }
        });
        addr
    }

    #[test]
    fn checks_catch_a_faulty_relay() {
        let server = StreamServer::start();
        let cases = [
            (Fault::None, true),
            (Fault::FlipUp(1_000_000), false),
            (Fault::FlipDown(12_345), false),
            (Fault::TruncateDown(2_000_000), false),
            (Fault::NoHalfClose, false),
        ];
        for (i, (fault, ok)) in cases.into_iter().enumerate() {
            for compressible in [false, true] {
                let relay = faulty_relay(server.addr(), fault);
                let seed = 10 * i as u64 + compressible as u64;
                // Small upload, big download: the client half-closes long before the end.
                let t = Transfer::new(seed, 3 << 20, 6 << 20).compressible(compressible);
                let t = if matches!(fault, Fault::NoHalfClose) {
                    Transfer::new(seed, 1000, 6 << 20).compressible(compressible)
                } else {
                    t
                };
                let r = run_transfer(relay, t);
                let v = verify_transfer(&server, &r);
                assert_eq!(
                    v.is_ok(),
                    ok,
                    "{fault:?} compressible={compressible}: {v:?}"
                );
            }
        }
        // Echo mode too.
        let relay = faulty_relay(server.addr(), Fault::FlipDown(77));
        let r = run_transfer(relay, Transfer::new(99, 1 << 20, 0).echo());
        let err = verify_transfer(&server, &r).expect_err("flipped echo");
        assert!(err.contains("differ from offset 77"), "{err}");
        let relay = faulty_relay(server.addr(), Fault::None);
        let r = run_transfer(relay, Transfer::new(98, 1 << 20, 0).echo());
        verify_transfer(&server, &r).expect("clean echo");
    }
}
