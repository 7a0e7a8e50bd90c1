//! Kernel TLS (kTLS): the start-up probe behind `--ktls`.
//!
//! kTLS lets the kernel seal and open TLS records on the socket itself, once the handshake is
//! done in userspace. The secrets are already at hand: `tls::handshake` ends with rustls'
//! `dangerous_into_kernel_connection()`, whose secrets feed `tls::record` today and would feed
//! `setsockopt(SOL_TLS, TLS_TX/TLS_RX)` instead.
//!
//! What this module does today: [`probe`] finds out whether the kernel has the `tls` upper
//! layer protocol (a connected loopback pair, `setsockopt(TCP_ULP, "tls")` on one end), and
//! [`check`] applies `--ktls` to the answer and logs it. The data path stays in userspace
//! whatever the answer: the offload itself is not implemented yet.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsFd;

use crate::config::Ktls;
use crate::{sys, Error};

/// Whether the running kernel can take TLS records over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KtlsSupport {
    Available,
    /// `reason` says why, in words for the operator (the errno and its usual cause).
    Unavailable {
        reason: String,
    },
}

/// Attaches the `tls` ULP to one end of a fresh loopback TCP connection. The socket must be
/// connected: the kernel refuses the ULP on a socket that is not established.
pub fn probe() -> KtlsSupport {
    match try_tls_ulp() {
        Ok(()) => KtlsSupport::Available,
        Err(reason) => KtlsSupport::Unavailable { reason },
    }
}

fn try_tls_ulp() -> Result<(), String> {
    let setup = |e: std::io::Error| format!("loopback connection for the probe: {e}");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(setup)?;
    let client = TcpStream::connect(listener.local_addr().map_err(setup)?).map_err(setup)?;
    let _server = listener.accept().map_err(setup)?;
    sys::set_tcp_ulp(client.as_fd(), "tls").map_err(|e| {
        let text = e.to_string();
        // "No such file or directory (os error 2)": the errno's words are enough.
        let text = text
            .split_once(" (os error ")
            .map_or(&*text, |(words, _)| words);
        match e.raw_os_error() {
            Some(libc::ENOENT) => {
                format!("TCP_ULP tls: {text} (kernel without CONFIG_TLS or module not loaded)")
            }
            _ => format!("TCP_ULP tls: {text}"),
        }
    })
}

/// Applies `--ktls`: `off` probes nothing; `auto` probes and logs `ktls=available` or
/// `ktls=unavailable reason="…"`; `on` also refuses to start when the kernel lacks kTLS.
/// Returns the probe's answer (`None` for `off`).
pub fn check(wanted: Ktls) -> Result<Option<KtlsSupport>, Error> {
    if wanted == Ktls::Off {
        return Ok(None);
    }
    let support = probe();
    match (&support, wanted) {
        (KtlsSupport::Unavailable { reason }, Ktls::On) => {
            return Err(Error::Kernel(format!(
                "--ktls on, but kernel TLS is unavailable: {reason}"
            )))
        }
        (KtlsSupport::Unavailable { reason }, _) => {
            tracing::info!(reason = ?reason, "ktls=unavailable")
        }
        (KtlsSupport::Available, _) => tracing::info!("ktls=available"),
    }
    Ok(Some(support))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the kernel, the probe answers (and names TCP_ULP when it says no).
    #[test]
    fn probe_answers() {
        match probe() {
            KtlsSupport::Available => {}
            KtlsSupport::Unavailable { reason } => {
                assert!(reason.starts_with("TCP_ULP tls: "), "{reason}")
            }
        }
        assert_eq!(check(Ktls::Off).unwrap(), None);
    }
}
