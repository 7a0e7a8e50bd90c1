//! The one socket call the classifier needs that socket2 does not offer, fenced here with the
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
