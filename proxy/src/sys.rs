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
    let linger = libc::linger {
        l_onoff: 1,
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

/// Bytes an application has handed to a TCP socket that TCP has taken so far: acknowledged by
/// the peer (`tcpi_bytes_acked`) plus still in the send queue (`SIOCOUTQ`). `None` on error.
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
