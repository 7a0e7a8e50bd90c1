//! The few socket calls monoio and socket2 do not offer for a borrowed fd.
//!
//! Kept in one module so the unsafe code that talks to the kernel is in one place.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// Bytes waiting in the socket's receive queue (`FIONREAD`); 0 on error.
pub fn bytes_readable(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: `fd` belongs to a socket the caller keeps open for the duration of the call, and
    // FIONREAD writes one c_int through the pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut libc::c_int) };
    if rc == 0 && n > 0 {
        n as usize
    } else {
        0
    }
}

/// Makes the next close of `fd` send a TCP reset instead of a FIN (SO_LINGER with timeout 0):
/// how a reset on one leg is passed on to the other.
pub fn reset_on_close(fd: RawFd) {
    set_linger(fd, 1);
}

/// SO_LINGER with `onoff` and a timeout of 0.
fn set_linger(fd: RawFd, onoff: libc::c_int) {
    let linger = libc::linger {
        l_onoff: onoff,
        l_linger: 0,
    };
    // SAFETY: `fd` is a socket the caller keeps open for the duration of the call; the option
    // value points at a live `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Undoes [`reset_on_close`]: the next close of `fd` sends a FIN after the data queued
/// (SO_LINGER off, the default).
pub fn close_gracefully(fd: RawFd) {
    set_linger(fd, 0);
}

/// Attaches the TCP upper-layer protocol `name` (e.g. `"tls"`) to a connected TCP socket
/// (`setsockopt(IPPROTO_TCP, TCP_ULP)`). The kernel answers ENOENT when it has no such ULP
/// (for `tls`: no `CONFIG_TLS`, or the module is not loaded).
pub fn set_tcp_ulp(fd: BorrowedFd<'_>, name: &str) -> std::io::Result<()> {
    // SAFETY: `fd` is borrowed, so the socket stays open for the duration of the call; the
    // option value points at `name`'s bytes, valid for the length passed (the kernel copies at
    // most that many and needs no terminating NUL).
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_ULP,
            name.as_ptr() as *const libc::c_void,
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The process's effective user id (whose files it may trust as its own).
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Gives free heap pages back to the kernel (glibc keeps freed zstd contexts resident
/// otherwise, so an idle compressed link would still cost its contexts' memory).
pub fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists and returns whole free
    // pages to the kernel; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The fd of a socket type that offers only `AsRawFd` (monoio's `TcpStream`), borrowed for as
/// long as the socket, for APIs that take `AsFd` (the BPF classifier's sockhash).
pub fn borrow_fd<S: AsRawFd>(socket: &S) -> BorrowedFd<'_> {
    // SAFETY: the fd belongs to `socket`, which owns it and keeps it open while borrowed: the
    // returned lifetime is tied to `&socket`, so the fd cannot be closed while it is in use.
    unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) }
}

/// `setsockopt(SOL_TLS, TLS_TX | TLS_RX)` and the `SOL_TLS` control messages (linux/tls.h).
pub mod tls {
    use std::io;
    use std::os::fd::RawFd;

    /// Option names at `SOL_TLS`.
    pub const TLS_TX: libc::c_int = 1;
    pub const TLS_RX: libc::c_int = 2;
    /// cmsg types at `SOL_TLS`: the content type of a record to send / of a record received.
    const TLS_SET_RECORD_TYPE: libc::c_int = 1;
    const TLS_GET_RECORD_TYPE: libc::c_int = 2;
    /// TLS 1.3's application_data content type (a record without a control message).
    const APPLICATION_DATA: u8 = 23;

    /// Hands the kernel the keys of one direction (`info` is a `tls12_crypto_info_*`).
    pub fn set_crypto(fd: RawFd, direction: libc::c_int, info: &[u8]) -> io::Result<()> {
        // SAFETY: `fd` is a socket the caller keeps open for the call; `info` is valid for
        // the length passed, and the kernel copies at most that many bytes.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_TLS,
                direction,
                info.as_ptr() as *const libc::c_void,
                info.len() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Reads back the crypto info of one direction (its `rec_seq` is the next record's
    /// sequence number). Returns the length the kernel wrote.
    pub fn crypto(fd: RawFd, direction: libc::c_int, buf: &mut [u8]) -> io::Result<usize> {
        let mut len = buf.len() as libc::socklen_t;
        // SAFETY: `fd` is a socket the caller keeps open for the call; `buf` is writable for
        // `len` bytes, and the kernel writes at most `len` and stores the length it wrote.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_TLS,
                direction,
                buf.as_mut_ptr() as *mut libc::c_void,
                &mut len,
            )
        };
        if rc == 0 {
            Ok(len as usize)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Control-message buffer: room for one cmsg with a one-byte payload, aligned for
    /// `cmsghdr`.
    #[repr(C, align(8))]
    struct Control([u8; 32]);

    /// Receives one record's payload from a kTLS socket without blocking, with its content
    /// type: how records other than application data (alerts, KeyUpdate, NewSessionTicket)
    /// are read (a plain read of one fails with EIO). Returns (content type, length); length
    /// 0 with type 23 is end of stream.
    pub fn recv_record(fd: RawFd, buf: &mut [u8]) -> io::Result<(u8, usize)> {
        let mut control = Control([0; 32]);
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.0.len() as _;
        // SAFETY: `fd` is a socket the caller keeps open for the call; `msg` points at one
        // iovec covering `buf` (writable for its length) and at `control` (writable for the
        // length given); both outlive the call. MSG_DONTWAIT: never blocks the worker.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut typ = APPLICATION_DATA;
        // SAFETY: `msg` was filled by recvmsg: msg_control/msg_controllen describe the cmsgs
        // the kernel wrote into `control`, which is still alive; the CMSG_* macros only walk
        // within them, and CMSG_DATA of a cmsg of length CMSG_LEN(1) holds one byte.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_TLS
                    && (*cmsg).cmsg_type == TLS_GET_RECORD_TYPE
                    && (*cmsg).cmsg_len as usize >= libc::CMSG_LEN(1) as usize
                {
                    typ = *libc::CMSG_DATA(cmsg);
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Ok((typ, n as usize))
    }

    /// Sends one record of content type `typ` (alert, handshake) through a kTLS socket,
    /// without blocking. Returns the payload bytes the kernel took (all, or an error).
    pub fn send_record(fd: RawFd, typ: u8, payload: &[u8]) -> io::Result<usize> {
        let mut control = Control([0; 32]);
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: CMSG_SPACE(1) is 24 on Linux x86-64 (and at most 32 anywhere a cmsghdr is
        // 16 bytes), so the cmsg fits in `control`; CMSG_FIRSTHDR of a msghdr whose control
        // buffer is that large is non-null and points into `control`, CMSG_DATA at its byte.
        unsafe {
            msg.msg_controllen = libc::CMSG_SPACE(1) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_TLS;
            (*cmsg).cmsg_type = TLS_SET_RECORD_TYPE;
            (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
            *libc::CMSG_DATA(cmsg) = typ;
        }
        // SAFETY: `fd` is a socket the caller keeps open for the call; `msg` points at
        // `payload` (read-only for the kernel despite the *mut in iovec) and at `control`,
        // both alive for the call. MSG_DONTWAIT: never blocks the worker.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// `TCP_INFO` of a socket; `None` on error.
fn tcp_info(fd: RawFd) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain integers, so all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is a socket the caller keeps open for the call; the kernel writes at most
    // `len` bytes into `info`, a live local of that size, and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

/// Whether a TCP socket has reached `TCP_CLOSE`: reset by its peer, or closed by FINs both
/// ways (which needs our FIN). `false` when `TCP_INFO` cannot be read.
pub fn tcp_closed(fd: RawFd) -> bool {
    // TCP_CLOSE in the kernel's enum of TCP states (include/net/tcp_states.h), which libc
    // does not export.
    const TCP_CLOSE: u8 = 7;
    tcp_info(fd).is_some_and(|info| info.tcpi_state == TCP_CLOSE)
}

/// Whether a read of 0 from `fd` was a reset rather than the peer's end of stream. The kernel
/// reports a socket's reset once, to whichever call comes first: when a write took it
/// (EPIPE/ECONNRESET), the read gets 0. Until our own FIN went out (`our_fin`) the socket
/// cannot have reached `TCP_CLOSE` cleanly, so `TCP_CLOSE` then means a reset.
pub fn eof_was_reset(fd: RawFd, our_fin: bool) -> bool {
    !our_fin && tcp_closed(fd)
}

/// Bytes an application has handed to a TCP socket that TCP has taken so far: acknowledged by
/// the peer (`tcpi_bytes_acked`) plus still in the send queue (`SIOCOUTQ`). `None` on error.
/// On an actively opened socket Linux counts its SYN as one byte acknowledged: compare with a
/// reading taken before the first write, not with zero.
/// The passthrough path compares it with what it expects before it sends a FIN, so a FIN
/// never overtakes bytes the kernel is still moving between sockets.
pub fn tcp_bytes_taken(fd: RawFd) -> Option<u64> {
    let info = tcp_info(fd)?;
    let mut queued: libc::c_int = 0;
    // SAFETY: `fd` is a socket the caller keeps open for the call; SIOCOUTQ (= TIOCOUTQ)
    // writes one c_int through the pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued as *mut libc::c_int) };
    if rc != 0 || queued < 0 {
        return None;
    }
    Some(info.tcpi_bytes_acked + queued as u64)
}

/// In-order bytes a TCP socket has received from its peer (`tcpi_bytes_received`), whoever
/// took them (a read, or a BPF redirect). `None` on error.
pub fn tcp_bytes_received(fd: RawFd) -> Option<u64> {
    tcp_info(fd).map(|info| info.tcpi_bytes_received)
}
