//! replink-pki: certificates for replink's mutual TLS.
//!
//! Two things live here:
//! - the operator's certificate authority workflow behind the `replink-pki` binary: a CA in a
//!   directory with its key encrypted at rest ([`authority`]), keys and CSRs for servers and
//!   clients ([`request`]), review-and-sign, CRLs, and `show` ([`inspect`]);
//! - in-memory minting for `replink demo` and the tests ([`Ca`], [`ThrowawayPki`]).
//!
//! It never opens a socket. Every file it writes goes through [`files`]: secrets at 0600 from
//! the first byte, multi-file outputs all-or-nothing, nothing overwritten unless asked.
//!
//! Main types: [`authority::CaDir`], [`request::ParsedRequest`], [`authority::SigningPlan`],
//! [`Ca`], [`ThrowawayPki`].

#![forbid(unsafe_code)]

use std::path::PathBuf;

pub mod authority;
pub mod files;
pub mod inspect;
pub mod keys;
mod mint;
pub mod request;

pub use files::{write_private_file, write_public_file};
pub use keys::KeyAlgorithm;
pub use mint::{Ca, Identity, LeafSpec, TestIdentities, ThrowawayPki};
pub use request::LeafUsage;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Key(String),
    /// The file system: cannot read, cannot write, already exists.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// A file whose contents are wrong: corrupt PEM, not a CSR, bad signature.
    #[error("{}: {reason}", path.display())]
    Input { path: PathBuf, reason: String },
    #[error("{}: wrong password (or the key file is corrupt)", path.display())]
    WrongPassword { path: PathBuf },
    #[error("{}: not a CA directory: {reason}", dir.display())]
    NotCaDir { dir: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    /// A request this CA will not sign.
    #[error("refusing {}: {reason}", path.display())]
    Refused { path: PathBuf, reason: String },
    #[error("invalid name {name:?}: {reason}")]
    Name { name: String, reason: String },
    #[error("no randomness available from the operating system")]
    Random,
}

/// `2026-11-25 20:07:43 UTC`.
pub fn fmt_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A serial (or key id) as upper-case hex without separators, as `openssl x509 -serial`
/// prints it, so it can be pasted into `generate-crl --serial`.
pub fn hex_serial(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes[start..].iter().map(|b| format!("{b:02X}")).collect()
}

/// Parses a serial typed by an operator (`5A3F…`, `5a:3f:…`, `0x5a3f…`) into the content
/// bytes of the DER INTEGER (minimal, positive).
pub fn parse_serial(text: &str) -> Result<Vec<u8>, PkiError> {
    let bad = |reason: &str| PkiError::Name {
        name: text.to_owned(),
        reason: reason.to_owned(),
    };
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let digits: String = t.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(
            "a serial is hexadecimal (as replink-pki show prints it)",
        ));
    }
    if digits.len() > 40 {
        return Err(bad("a serial has at most 20 bytes"));
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let mut bytes: Vec<u8> = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).map_err(|_| bad("not hex")))
        .collect::<Result<_, _>>()?;
    while bytes.len() > 1 && bytes[0] == 0 {
        bytes.remove(0);
    }
    if bytes[0] & 0x80 != 0 {
        bytes.insert(0, 0);
    }
    Ok(bytes)
}

/// SHA-256 of `der`, colon-separated upper-case hex (as `openssl x509 -fingerprint -sha256`).
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_parse_in_every_spelling_and_print_back() {
        let want = vec![0x5a, 0x3f, 0x01];
        for s in ["5A3F01", "5a:3f:01", "0x5a3f01", "005A3F01"] {
            assert_eq!(parse_serial(s).unwrap(), want, "{s}");
        }
        assert_eq!(parse_serial("FF").unwrap(), vec![0, 0xff]);
        assert_eq!(hex_serial(&[0, 0xff]), "FF");
        assert!(parse_serial("xyz").is_err());
        assert!(parse_serial("").is_err());
    }
}
