//! The socket calls the classifier needs that socket2 does not offer, fenced here with the
//! crate's other unsafe code (`layout`).

use std::os::fd::{AsFd, AsRawFd};

/// `setsockopt(SO_RCVLOWAT, 1)`: 1 is the default, so the only effect wanted is the kernel's
/// `tcp_data_ready()` call that `tcp_set_rcvlowat()` makes, which runs the sockhash's stream
/// parser over bytes that were queued before the socket had a `struct socket` (see
/// `Classifier::accepted`).
pub(crate) fn kick_data_ready(socket: &impl AsFd) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the fd is borrowed from a live socket for the duration of the call; the option
    // value points at a live c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `tcpi_bytes_received` of a TCP socket (`TCP_INFO`): bytes TCP has received, whether or not
/// anything has parsed or read them.
pub(crate) fn bytes_received(socket: &impl AsFd) -> std::io::Result<u64> {
    // SAFETY: tcp_info is plain integers, so all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is borrowed from a live socket for the call; the kernel writes at most
    // `len` bytes into `info`, a live local of that size, and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        Ok(info.tcpi_bytes_received)
    } else {
        Err(std::io::Error::last_os_error())
    }
}
