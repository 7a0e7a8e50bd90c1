//! Kernel TLS (kTLS): the start-up probe behind `--ktls`, and handing a connection's record
//! layer to the kernel once rustls has finished the handshake.
//!
//! [`check`] probes the kernel at start-up (a loopback connection, `TCP_ULP "tls"`, then keys
//! set twice on it: kernels before 6.13 refuse a second key, so TLS 1.3 KeyUpdate, which a
//! link that lives for months needs, would break there) and applies `--ktls`. Per connection,
//! `relay` attaches the ULP and installs each direction's [`CryptoInfo`] (built from the
//! secrets rustls' `dangerous_into_kernel_connection()` gave) with `setsockopt(SOL_TLS,
//! TLS_TX/TLS_RX)`; from then on the socket reads and writes plaintext and the kernel seals
//! and opens the records. Records other than application data (alerts, KeyUpdate,
//! NewSessionTicket) go through `sys::tls::{send_record, recv_record}`.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};

use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

use crate::config::Ktls;
use crate::sys::tls::{TLS_RX, TLS_TX};
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

/// Attaches the `tls` ULP to one end of a fresh loopback TCP connection (the kernel refuses
/// the ULP on a socket that is not established), then installs a throwaway TLS 1.3
/// AES-128-GCM key for each direction and a second one for sending: the key update.
pub fn probe() -> KtlsSupport {
    match try_tls_ulp() {
        Ok(()) => KtlsSupport::Available,
        Err(reason) => KtlsSupport::Unavailable { reason },
    }
}

/// "No such file or directory (os error 2)": the errno's words are enough.
fn words(e: &std::io::Error) -> String {
    let text = e.to_string();
    text.split_once(" (os error ")
        .map_or(&*text, |(words, _)| words)
        .to_owned()
}

fn try_tls_ulp() -> Result<(), String> {
    let setup = |e: std::io::Error| format!("loopback connection for the probe: {e}");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(setup)?;
    let client = TcpStream::connect(listener.local_addr().map_err(setup)?).map_err(setup)?;
    let _server = listener.accept().map_err(setup)?;
    sys::set_tcp_ulp(client.as_fd(), "tls").map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => format!(
            "TCP_ULP tls: {} (kernel without CONFIG_TLS or module not loaded)",
            words(&e)
        ),
        _ => format!("TCP_ULP tls: {}", words(&e)),
    })?;
    let info = CryptoInfo::probe_key();
    let fd = client.as_raw_fd();
    info.install(fd, Direction::Tx, 0)
        .map_err(|e| format!("TLS_TX (TLS 1.3, AES-128-GCM): {}", words(&e)))?;
    info.install(fd, Direction::Rx, 0)
        .map_err(|e| format!("TLS_RX (TLS 1.3, AES-128-GCM): {}", words(&e)))?;
    info.install(fd, Direction::Tx, 0).map_err(|e| {
        format!(
            "a second TLS_TX key: {} (the kernel cannot take TLS 1.3 key updates; Linux 6.13 \
             or later can)",
            words(&e)
        )
    })
}

/// Applies `--ktls`: `off` probes nothing; `auto` probes and logs `ktls=available` or
/// `ktls=unavailable reason="…"`; `on` also refuses to start when the kernel lacks kTLS.
/// Returns whether connections should move to kernel TLS.
pub fn check(wanted: Ktls) -> Result<bool, Error> {
    if wanted == Ktls::Off {
        return Ok(false);
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
    Ok(support == KtlsSupport::Available)
}

/// Which half of the connection a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Tx,
    Rx,
}

impl Direction {
    fn optname(self) -> libc::c_int {
        match self {
            Direction::Tx => TLS_TX,
            Direction::Rx => TLS_RX,
        }
    }
}

// linux/tls.h: versions and cipher types of `struct tls_crypto_info`.
const TLS_1_2_VERSION: u16 = 0x0303;
const TLS_1_3_VERSION: u16 = 0x0304;
const TLS_CIPHER_AES_GCM_128: u16 = 51;
const TLS_CIPHER_AES_GCM_256: u16 = 52;
const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

/// One direction's keys as the kernel takes them: a `tls12_crypto_info_aes_gcm_128`,
/// `…_aes_gcm_256` or `…_chacha20_poly1305` (the names say TLS 1.2; the `version` field
/// decides), laid out byte by byte: `version`, `cipher_type` (host order), `iv`, `key`,
/// `salt`, `rec_seq` (big-endian). The record sequence number is filled in at install time.
pub struct CryptoInfo {
    bytes: Vec<u8>,
    /// Offset of `rec_seq` (the last 8 bytes).
    seq_at: usize,
    /// Bytes a record adds to its plaintext on the wire (header, nonce, type, tag).
    pub overhead: usize,
    pub tls13: bool,
}

impl CryptoInfo {
    /// `None` for a cipher the kernel's TLS does not carry (none that rustls offers here).
    pub fn new(version: ProtocolVersion, secrets: &ConnectionTrafficSecrets) -> Option<Self> {
        let (tls13, version) = match version {
            ProtocolVersion::TLSv1_3 => (true, TLS_1_3_VERSION),
            ProtocolVersion::TLSv1_2 => (false, TLS_1_2_VERSION),
            _ => return None,
        };
        // The kernel's AES-GCM `salt` is the implicit first 4 bytes of the 12-byte nonce and
        // `iv` the other 8; ChaCha20-Poly1305 takes all 12 as `iv` and has no salt.
        let (cipher, key, salt, iv, overhead) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                let (salt, iv) = iv.as_ref().split_at(4);
                (TLS_CIPHER_AES_GCM_128, key.as_ref(), salt, iv, 8)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                let (salt, iv) = iv.as_ref().split_at(4);
                (TLS_CIPHER_AES_GCM_256, key.as_ref(), salt, iv, 8)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (
                TLS_CIPHER_CHACHA20_POLY1305,
                key.as_ref(),
                &[][..],
                iv.as_ref(),
                0,
            ),
            _ => return None,
        };
        let mut bytes = Vec::with_capacity(4 + iv.len() + key.len() + salt.len() + 8);
        bytes.extend_from_slice(&version.to_ne_bytes());
        bytes.extend_from_slice(&cipher.to_ne_bytes());
        bytes.extend_from_slice(iv);
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(salt);
        let seq_at = bytes.len();
        bytes.extend_from_slice(&[0; 8]);
        // Header (5) and tag (16); TLS 1.3 adds the inner content type, TLS 1.2 AES-GCM its
        // explicit nonce.
        let overhead = 5 + 16 + if tls13 { 1 } else { overhead };
        Some(CryptoInfo {
            bytes,
            seq_at,
            overhead,
            tls13,
        })
    }

    /// A fixed TLS 1.3 AES-128-GCM key for the start-up probe (never used on a connection).
    fn probe_key() -> Self {
        let mut bytes = Vec::with_capacity(40);
        bytes.extend_from_slice(&TLS_1_3_VERSION.to_ne_bytes());
        bytes.extend_from_slice(&TLS_CIPHER_AES_GCM_128.to_ne_bytes());
        bytes.extend_from_slice(&[0x5a; 8 + 16 + 4 + 8]);
        CryptoInfo {
            bytes,
            seq_at: 32,
            overhead: 22,
            tls13: true,
        }
    }

    /// Hands the key to the kernel for one direction, the next record being number `seq`.
    pub fn install(&self, fd: RawFd, dir: Direction, seq: u64) -> std::io::Result<()> {
        let mut bytes = self.bytes.clone();
        bytes[self.seq_at..].copy_from_slice(&seq.to_be_bytes());
        let result = sys::tls::set_crypto(fd, dir.optname(), &bytes);
        // The copy held key material: do not leave it in freed memory.
        bytes.fill(0);
        result
    }

    /// The number of the next record the kernel will seal or open in this direction.
    pub fn next_seq(&self, fd: RawFd, dir: Direction) -> std::io::Result<u64> {
        let mut buf = vec![0u8; self.bytes.len()];
        let n = sys::tls::crypto(fd, dir.optname(), &mut buf)?;
        let seq = buf
            .get(self.seq_at..self.seq_at + 8)
            .filter(|_| n == self.bytes.len())
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_be_bytes);
        buf.fill(0);
        seq.ok_or_else(|| std::io::Error::other(format!("TLS crypto info of {n} bytes")))
    }
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        self.bytes.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the kernel, the probe answers (and names TCP_ULP when it says no).
    #[test]
    fn probe_answers() {
        match probe() {
            KtlsSupport::Available => {}
            KtlsSupport::Unavailable { reason } => assert!(
                reason.starts_with("TCP_ULP tls: ")
                    || reason.starts_with("TLS_TX")
                    || reason.starts_with("TLS_RX")
                    || reason.starts_with("a second TLS_TX key"),
                "{reason}"
            ),
        }
        assert!(!check(Ktls::Off).unwrap());
    }

    /// The byte layouts match linux/tls.h's structs (their sizes are what the kernel checks
    /// `optlen` against), with the nonce split into salt and iv where AES-GCM wants it.
    #[test]
    fn crypto_info_layouts() {
        use rustls::crypto::cipher::{AeadKey, Iv};
        let iv: [u8; 12] = std::array::from_fn(|i| i as u8);
        // (An AES-128 key cannot be made outside rustls: the VM test covers that layout.)
        let key = || AeadKey::from([0xab; 32]);
        let aes256 = ConnectionTrafficSecrets::Aes256Gcm {
            key: key(),
            iv: Iv::new(iv),
        };
        let info = CryptoInfo::new(ProtocolVersion::TLSv1_2, &aes256).unwrap();
        assert_eq!(info.bytes.len(), 56);
        assert_eq!(info.bytes[..4], [0x03, 0x03, 52, 0]);
        assert_eq!(info.bytes[4..12], iv[4..]);
        assert_eq!(info.bytes[12..44], [0xab; 32]);
        assert_eq!(info.bytes[44..48], iv[..4]);
        assert_eq!((info.seq_at, info.overhead), (48, 29));

        let chacha = ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: key(),
            iv: Iv::new(iv),
        };
        let info = CryptoInfo::new(ProtocolVersion::TLSv1_3, &chacha).unwrap();
        assert_eq!(info.bytes.len(), 56);
        assert_eq!(info.bytes[4..16], iv);
        assert_eq!((info.seq_at, info.overhead), (48, 22));
    }
}
