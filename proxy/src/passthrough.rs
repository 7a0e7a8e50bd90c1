//! Passthrough routes (`--route NAME=HOST:PORT:passthrough`): TLS is not terminated. The
//! client's ClientHello (read and parsed only to route) goes first to the upstream, then bytes
//! flow both ways unchanged, half-closes and resets passed on.
//!
//! Two paths, chosen per connection ([`PassPath`], the `passthrough=` log value):
//! - **kernel**, with `--bpf-classifier` and the client socket still in its sockhash: the two
//!   sockets are paired in the classifier's `pairs` map *before* the ClientHello is written to
//!   the upstream, so the server's answer and everything after it moves in the kernel
//!   (`bpf_sk_redirect_hash` in the verdict program) without reaching userspace. A TLS client
//!   sends nothing between its ClientHello and the server's answer, so no byte can overtake
//!   the ClientHello. The caveat: TLS 1.3 0-RTT early data sent right behind the ClientHello
//!   is already in the client socket's receive queue when the pairing is made; it is read and
//!   written here, and a byte the client sends meanwhile could overtake it (replink's own
//!   ends never send early data). The kernel does not carry FIN or RST: userspace still reads
//!   both sockets, sees their end (read 0, or a reset), and passes it on — a FIN only once the
//!   other socket has taken every byte the kernel moved to it (`sys::tcp_bytes_taken`), so a
//!   FIN never overtakes data still in the kernel's redirect queue.
//! - **userspace**, otherwise: plain read/write copies both ways.
//!
//! `--idle-timeout` applies here too: a watchdog looks at the bytes moved both ways (written
//! here, and the classifier's count of what the kernel moved) every quarter of the limit, and
//! resets both sockets once nothing moved for the whole limit (`reason=idle_timeout`).

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use crate::bpf::BpfCheck;
use crate::buffers::SMALL;
use crate::relay::{ConnError, Traffic};
use crate::sys;

/// How long a FIN may wait for the kernel to hand the last redirected bytes to the other
/// socket before the connection is reset instead.
const FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// Which path a passthrough connection took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassPath {
    Kernel,
    Userspace,
}

impl std::fmt::Display for PassPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PassPath::Kernel => "kernel",
            PassPath::Userspace => "userspace",
        })
    }
}

/// The client socket's place in the classifier, when it is still in the sockhash.
pub struct InKernel<'a> {
    pub check: &'a BpfCheck,
    pub cookie: u64,
}

/// One direction's end of the pairing: the cookie the kernel counts its bytes under.
#[derive(Clone, Copy)]
struct Moved<'a> {
    check: &'a BpfCheck,
    from: u64,
    /// What `sys::tcp_bytes_taken` said of the destination socket before anything was
    /// written to it: Linux counts the SYN of an actively opened socket (the upstream's) as one
    /// byte acknowledged, and a FIN let out one byte early can overtake the last data byte.
    to_base: u64,
}

/// Carries a passthrough connection to its end: `hello` (the client's bytes read so far) to
/// the upstream first, then both ways. Counts client → upstream bytes as `wire_in` and
/// `tls_to_plain`, upstream → client as `wire_out` and `plain_to_tls`.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    hello: Vec<u8>,
    route: u32,
    kernel: Option<InKernel<'_>>,
    idle_timeout: Option<Duration>,
    traffic: &Traffic,
) -> (PassPath, Result<(), ConnError>) {
    let fds = (client.as_raw_fd(), upstream.as_raw_fd());
    // Each socket's `tcp_bytes_taken` before anything is written to it (see `Moved::to_base`).
    let base = |fd| sys::tcp_bytes_taken(fd).unwrap_or(0);
    let paired = kernel.and_then(|k| match k.check.pair(k.cookie, &upstream, route) {
        Ok(up) => Some((k.check, k.cookie, up, (base(fds.0), base(fds.1)))),
        Err(e) => {
            tracing::warn!(error = %e, "bpf_classifier_error");
            k.check.release(k.cookie);
            None
        }
    });
    let path = if paired.is_some() {
        PassPath::Kernel
    } else {
        PassPath::Userspace
    };
    // Halves borrowed by the pumps and put together again at the end: dropping a monoio write
    // half shuts the write side down (a FIN), which must not go out after a reset.
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut up_rd, mut up_wr) = upstream.into_split();
    // After the pairing: the upstream's answer then goes back in the kernel.
    let hello_len = hello.len() as u64;
    let (res, _) = up_wr.write_all(hello).await;
    let result = match res {
        Err(e) => Err(ConnError::Plain(e)),
        Ok(_) => {
            let aborted = Cell::new(false);
            let moved_here = Cell::new(0u64);
            // Whether our FIN went out on the client's socket, and on the upstream's.
            let fins = (Cell::new(false), Cell::new(false));
            let up = pump(
                &mut client_rd,
                &mut up_wr,
                hello_len,
                fds,
                paired.map(|(check, c, _, (_, up_base))| Moved {
                    check,
                    from: c,
                    to_base: up_base,
                }),
                (ConnError::Downstream, ConnError::Plain),
                Flags {
                    aborted: &aborted,
                    moved: &moved_here,
                    from_fin: &fins.0,
                    to_fin: &fins.1,
                },
            );
            let down = pump(
                &mut up_rd,
                &mut client_wr,
                0,
                (fds.1, fds.0),
                paired.map(|(check, _, u, (client_base, _))| Moved {
                    check,
                    from: u,
                    to_base: client_base,
                }),
                (ConnError::Plain, ConnError::Downstream),
                Flags {
                    aborted: &aborted,
                    moved: &moved_here,
                    from_fin: &fins.1,
                    to_fin: &fins.0,
                },
            );
            let moved = || {
                moved_here.get()
                    + paired.map_or(0, |(check, c, u, _)| {
                        check.paired_bytes(c) + check.paired_bytes(u)
                    })
            };
            let mut pumps = std::pin::pin!(async { monoio::join!(up, down) });
            let idle = std::pin::pin!(idle_watch(idle_timeout, moved));
            let mut timed_out = false;
            let (up, down) = monoio::select! {
                both = &mut pumps => both,
                _ = idle => {
                    // Ends both pumps: their reads see the shutdown, and no FIN goes out.
                    timed_out = true;
                    aborted.set(true);
                    reset_both(fds.0, fds.1);
                    pumps.await
                }
            };
            add(&traffic.wire_in, hello_len + up.1);
            add(&traffic.tls_to_plain, hello_len + up.1);
            add(&traffic.wire_out, down.1);
            add(&traffic.plain_to_tls, down.1);
            if timed_out {
                Err(ConnError::Timeout("idle"))
            } else {
                up.0.and(down.0)
            }
        }
    };
    if let Some((check, client, up, _)) = paired {
        let (to_up, to_client) = check.unpair(client, up);
        add(&traffic.wire_in, to_up);
        add(&traffic.tls_to_plain, to_up);
        add(&traffic.wire_out, to_client);
        add(&traffic.plain_to_tls, to_client);
    }
    // Closed whole: with SO_LINGER 0 set after a failure, a reset and no FIN.
    drop(client_rd.reunite(client_wr));
    drop(up_rd.reunite(up_wr));
    (path, result)
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

/// Returns once `moved()` stayed the same for `limit` (checked every quarter of it); never
/// without a limit.
async fn idle_watch(limit: Option<Duration>, moved: impl Fn() -> u64) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    let step = (limit / 4).max(Duration::from_millis(10));
    let mut last = moved();
    let mut since = Instant::now();
    loop {
        monoio::time::sleep(step).await;
        let now = moved();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= limit {
            return;
        }
    }
}

/// One direction: reads `from` (everything, in userspace; in the kernel path only what was
/// queued before the pairing) and writes it to `to`; at `from`'s end of stream, shuts `to`'s
/// write side once `to` has taken every byte (`already` + written here + moved by the kernel);
/// on an error, resets both sockets (and wakes the other direction). Returns the bytes
/// written here besides `already`. `errs` names the sockets' errors: (`from`'s, `to`'s).
async fn pump<R: AsyncReadRent, W: AsyncWriteRent>(
    from: &mut R,
    to: &mut W,
    already: u64,
    (from_fd, to_fd): (RawFd, RawFd),
    kernel: Option<Moved<'_>>,
    errs: (IoErr, IoErr),
    Flags {
        aborted,
        moved,
        from_fin,
        to_fin,
    }: Flags<'_>,
) -> (Result<(), ConnError>, u64) {
    let (read_err, write_err) = errs;
    let mut copied = 0u64;
    let mut buf = Vec::with_capacity(SMALL);
    let failed = loop {
        buf.clear();
        let (res, b) = from.read(buf).await;
        buf = b;
        match res {
            // A socket in the sockhash reports a reset as end of stream (tcp_bpf's recvmsg
            // checks "done" before the socket error): the error is still pending there.
            Ok(0) => {
                break pending_error(from_fd)
                    .or_else(|| {
                        sys::eof_was_reset(from_fd, from_fin.get())
                            .then(|| std::io::ErrorKind::ConnectionReset.into())
                    })
                    .map(read_err);
            }
            Ok(n) => {
                let (res, b) = to.write_all(buf).await;
                buf = b;
                if let Err(e) = res {
                    break Some(write_err(e));
                }
                copied += n as u64;
                add(moved, n as u64);
            }
            // A socket in the sockhash says EAGAIN while bytes wait for the stream parser's
            // work queue (see `Classifier::accepted`): they come shortly.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                monoio::time::sleep(Duration::from_millis(1)).await
            }
            Err(e) => break Some(read_err(e)),
        }
    };
    if let Some(e) = failed {
        aborted.set(true);
        reset_both(from_fd, to_fd);
        return (Err(e), copied);
    }
    if aborted.get() {
        // The other direction failed and woke this one: no FIN, the resets go out at close.
        return (
            Err(ConnError::Timeout("passthrough (other direction failed)")),
            copied,
        );
    }
    if let Some(k) = kernel {
        // The read saw the end of stream, but the verdict program may not have moved the last
        // bytes yet (the stream parser runs from a work queue): first wait until every byte
        // `from` received was either read here or moved by the kernel.
        let counted = || already + copied + k.check.paired_bytes(k.from);
        let flushed = match all_taken(from_fd, counted).await {
            Some(want) => flushed(to_fd, k.to_base + want).await,
            None => false,
        };
        if !flushed {
            aborted.set(true);
            reset_both(from_fd, to_fd);
            return (Err(ConnError::Timeout("passthrough flush")), copied);
        }
    }
    // Before the shutdown: once our FIN may be out, `TCP_CLOSE` on `to` is no sign of a reset.
    to_fin.set(true);
    let res = to.shutdown().await;
    (res.map_err(write_err), copied)
}

/// What the two directions share: a failure (so the other stops without a FIN), the bytes
/// moved (for the idle watchdog), and whether our FIN went out on each socket.
struct Flags<'a> {
    aborted: &'a Cell<bool>,
    moved: &'a Cell<u64>,
    /// Our FIN went out on `from` (the other direction ended cleanly).
    from_fin: &'a Cell<bool>,
    to_fin: &'a Cell<bool>,
}

/// Which socket an I/O error belongs to: `ConnError::Downstream` (the client's) or `Plain`.
type IoErr = fn(std::io::Error) -> ConnError;

/// The socket's pending error (`SO_ERROR`), taken.
fn pending_error(fd: RawFd) -> Option<std::io::Error> {
    socket2::SockRef::from(&sys::borrow_fd(&fd))
        .take_error()
        .ok()
        .flatten()
}

/// Waits until `counted()` (bytes read from `fd` plus bytes the kernel moved from it) covers
/// everything `fd` received before its FIN; returns that count, or `None` past the flush
/// limit.
async fn all_taken(fd: RawFd, counted: impl Fn() -> u64) -> Option<u64> {
    let mut n = 0;
    let covered = within_flush_limit(|| {
        // The FIN takes a sequence number, and TCP counts it as one byte received.
        let received = sys::tcp_bytes_received(fd)?.saturating_sub(1);
        n = counted();
        Some(n >= received)
    })
    .await;
    covered.then_some(n)
}

/// Waits until the socket has taken `want` bytes in all (see `sys::tcp_bytes_taken`).
async fn flushed(fd: RawFd, want: u64) -> bool {
    within_flush_limit(|| sys::tcp_bytes_taken(fd).map(|n| n >= want)).await
}

/// Polls `done` every millisecond: true once it says so, false when it fails (`None`) or
/// [`FLUSH_LIMIT`] passes.
async fn within_flush_limit(mut done: impl FnMut() -> Option<bool>) -> bool {
    let deadline = Instant::now() + FLUSH_LIMIT;
    loop {
        match done() {
            Some(true) => return true,
            None => return false,
            Some(false) if Instant::now() >= deadline => return false,
            Some(false) => monoio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Makes both sockets close with a reset, and ends pending reads on them so the other
/// direction stops too (shutting the read side sends nothing; a write-side shutdown would
/// send the FIN that must not go out).
fn reset_both(a: RawFd, b: RawFd) {
    for fd in [a, b] {
        sys::reset_on_close(fd);
        let _ = socket2::SockRef::from(&sys::borrow_fd(&fd)).shutdown(std::net::Shutdown::Read);
    }
}
