//! Key pairs: generation (ECDSA P-256, Ed25519, RSA-3072), serial numbers, and private keys
//! encrypted at rest as PKCS#8 PBES2 (PBKDF2-HMAC-SHA256 + AES-256-CBC), the format
//! `openssl pkey` reads with the password.

use pkcs8::der::pem::LineEnding;
use pkcs8::pkcs5::pbes2;
use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo, SecretDocument};
use rcgen::{KeyPair, SerialNumber, SignatureAlgorithm};
use ring::rand::SecureRandom;

use crate::PkiError;

/// PBKDF2 rounds for an encrypted key: OWASP's 2023 figure for PBKDF2-HMAC-SHA256. Costs
/// about a third of a second per unlock, which a CA operator pays once per command.
const PBKDF2_ROUNDS: u32 = 600_000;

/// Key algorithm of a new key pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    Ed25519,
    Rsa3072,
}

impl KeyAlgorithm {
    pub const ALL: [KeyAlgorithm; 3] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa3072,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
        }
    }

    pub fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            KeyAlgorithm::Rsa3072 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// A fresh key pair. ring cannot generate RSA keys, so RSA comes from the `rsa` crate
    /// (generation only; ring signs with it).
    pub fn generate(self) -> Result<KeyPair, PkiError> {
        match self {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::Ed25519 => {
                Ok(KeyPair::generate_for(self.signature_algorithm())?)
            }
            KeyAlgorithm::Rsa3072 => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 3072)
                    .map_err(|e| PkiError::Key(format!("generating an RSA key: {e}")))?;
                let der = key
                    .to_pkcs8_der()
                    .map_err(|e| PkiError::Key(format!("encoding an RSA key: {e}")))?;
                let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes());
                Ok(KeyPair::from_pkcs8_der_and_sign_algo(
                    &der,
                    &rcgen::PKCS_RSA_SHA256,
                )?)
            }
        }
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KeyAlgorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("unknown key type {s:?} (ecdsa-p256, ed25519, rsa-3072)"))
    }
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    Ok(bytes)
}

/// A random positive serial with 126 bits of entropy. The top byte is forced into
/// 0x40..=0x7f so the DER INTEGER is always 16 bytes: positive, minimal, no leading zero.
pub(crate) fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = random_bytes::<16>()?;
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A private key as stored in a file.
pub enum StoredKey {
    /// PKCS#8 DER, not encrypted.
    Plain(Vec<u8>),
    /// EncryptedPrivateKeyInfo DER: needs a password.
    Encrypted(Vec<u8>),
}

impl StoredKey {
    /// Reads a PEM private key (`PRIVATE KEY` or `ENCRYPTED PRIVATE KEY`). `what` names the
    /// file in errors.
    pub fn from_pem(pem: &str, what: &std::path::Path) -> Result<StoredKey, PkiError> {
        let bad = |reason: String| PkiError::Input {
            path: what.to_owned(),
            reason,
        };
        let (label, doc) = SecretDocument::from_pem(pem)
            .map_err(|e| bad(format!("not a PEM private key ({e})")))?;
        match label {
            "PRIVATE KEY" => Ok(StoredKey::Plain(doc.as_bytes().to_vec())),
            "ENCRYPTED PRIVATE KEY" => Ok(StoredKey::Encrypted(doc.as_bytes().to_vec())),
            other => Err(bad(format!(
                "PEM block {other:?} is not a PKCS#8 private key (expected PRIVATE KEY or ENCRYPTED PRIVATE KEY)"
            ))),
        }
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self, StoredKey::Encrypted(_))
    }

    /// The key pair; `password` is used only for an encrypted key. A wrong password shows as
    /// a padding error in the last AES block, which is what we report it as.
    pub fn unlock(
        &self,
        password: Option<&[u8]>,
        what: &std::path::Path,
    ) -> Result<KeyPair, PkiError> {
        let pkcs8 = match self {
            StoredKey::Plain(der) => der.clone(),
            StoredKey::Encrypted(der) => {
                let info = EncryptedPrivateKeyInfo::try_from(der.as_slice()).map_err(|e| {
                    PkiError::Input {
                        path: what.to_owned(),
                        reason: format!("corrupt encrypted key ({e})"),
                    }
                })?;
                let password = password.ok_or_else(|| PkiError::Input {
                    path: what.to_owned(),
                    reason: "the key is encrypted and no password was given".into(),
                })?;
                info.decrypt(password)
                    .map_err(|_| PkiError::WrongPassword {
                        path: what.to_owned(),
                    })?
                    .as_bytes()
                    .to_vec()
            }
        };
        KeyPair::try_from(pkcs8.as_slice()).map_err(|e| PkiError::Input {
            path: what.to_owned(),
            reason: format!("not a usable private key ({e})"),
        })
    }
}

/// The PKCS#8 DER of `key` in the form every tool reads: version 1, without the optional
/// public key. (ring writes Ed25519 keys as version 2 with the public key, which OpenSSL 3.0
/// cannot decode; ring, rustls and rcgen read either.)
fn portable_pkcs8(key: &KeyPair) -> Result<Vec<u8>, PkiError> {
    use pkcs8::der::Encode;
    let der = key.serialize_der();
    let mut info = PrivateKeyInfo::try_from(der.as_slice())
        .map_err(|e| PkiError::Key(format!("re-reading the new key: {e}")))?;
    info.public_key = None;
    info.to_der()
        .map_err(|e| PkiError::Key(format!("encoding the key: {e}")))
}

/// `key` as an unencrypted `PRIVATE KEY` PEM (for server and client keys, which a proxy
/// loads unattended, and a CA created with --no-password).
pub fn key_pem(key: &KeyPair) -> Result<String, PkiError> {
    Ok(crate::authority::pem_block(
        "PRIVATE KEY",
        &portable_pkcs8(key)?,
    ))
}

/// `key` as an `ENCRYPTED PRIVATE KEY` PEM under `password`.
pub fn encrypt_key_pem(key: &KeyPair, password: &[u8]) -> Result<String, PkiError> {
    let der = portable_pkcs8(key)?;
    let info = PrivateKeyInfo::try_from(der.as_slice())
        .map_err(|e| PkiError::Key(format!("re-reading the new key: {e}")))?;
    let salt = random_bytes::<16>()?;
    let iv = random_bytes::<16>()?;
    let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ROUNDS, &salt, &iv)
        .map_err(|e| PkiError::Key(format!("PBES2 parameters: {e}")))?;
    let encrypted = info
        .encrypt_with_params(params, password)
        .map_err(|e| PkiError::Key(format!("encrypting the key: {e}")))?;
    let pem = encrypted
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .map_err(|e| PkiError::Key(format!("encoding the key: {e}")))?;
    Ok(pem.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_algorithm_round_trips_through_an_encrypted_pem() {
        for alg in KeyAlgorithm::ALL {
            let key = alg.generate().unwrap();
            let pem = encrypt_key_pem(&key, b"correct horse").unwrap();
            assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
            let plain = StoredKey::from_pem(&key_pem(&key).unwrap(), Path::new("k")).unwrap();
            let plain = plain.unlock(None, Path::new("k")).unwrap();
            assert_eq!(
                plain.public_key_der(),
                key.public_key_der(),
                "{}",
                alg.name()
            );
            let stored = StoredKey::from_pem(&pem, Path::new("k")).unwrap();
            assert!(stored.is_encrypted());
            let back = stored
                .unlock(Some(b"correct horse"), Path::new("k"))
                .unwrap();
            assert_eq!(
                back.public_key_der(),
                key.public_key_der(),
                "{}",
                alg.name()
            );
            let err = stored.unlock(Some(b"wrong"), Path::new("k")).err().unwrap();
            assert!(matches!(err, PkiError::WrongPassword { .. }), "{err}");
        }
    }

    #[test]
    fn serials_are_sixteen_positive_bytes() {
        for _ in 0..100 {
            let s = random_serial().unwrap().to_bytes();
            assert_eq!(s.len(), 16);
            assert!((0x40..=0x7f).contains(&s[0]));
        }
    }
}
