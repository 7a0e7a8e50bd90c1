//! TLS: rustls configuration from PEM files, the handshake driver, and the record layer that
//! takes over once the handshake is done.
//!
//! rustls runs the handshake through its unbuffered API; afterwards the connection is turned
//! into a [`rustls::kernel::KernelConnection`] and records are sealed and opened by
//! [`record`] (the software twin of kernel TLS: the same secrets can be handed to the kernel).

pub mod crl;
pub mod handshake;
pub mod record;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::{Cipher, TlsFiles};
use crate::Error;

/// ALPN protocol that turns on zstd stream compression in both directions.
pub const ALPN_ZSTD: &[u8] = b"replink-zstd/1";

/// ALPN protocol of PostgreSQL over TLS (libpq 17 offers it, and with `sslnegotiation=direct`
/// requires the server to select it).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// ring provider with AES-128-GCM first (the fastest AEAD on x86 with AES-NI, as the peers
/// use), or only the AEADs of `--ciphers`, in its order.
fn provider(ciphers: &[Cipher]) -> Arc<CryptoProvider> {
    use rustls::CipherSuite::*;
    let default = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::Chacha20Poly1305,
    ];
    let order = if ciphers.is_empty() {
        &default[..]
    } else {
        ciphers
    };
    let aead = |suite| match suite {
        TLS13_AES_128_GCM_SHA256
        | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(Cipher::Aes128Gcm),
        TLS13_AES_256_GCM_SHA384
        | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(Cipher::Aes256Gcm),
        TLS13_CHACHA20_POLY1305_SHA256
        | TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(Cipher::Chacha20Poly1305),
        _ => None,
    };
    let rank = |s: &rustls::SupportedCipherSuite| {
        aead(s.suite()).and_then(|a| order.iter().position(|c| *c == a))
    };
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.retain(|s| rank(s).is_some());
    // Stable: TLS 1.3 suites (listed first by ring) stay ahead of TLS 1.2 ones of the same rank.
    p.cipher_suites.sort_by_key(|s| rank(s));
    Arc::new(p)
}

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS13_AND_12: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if tls12 {
        &TLS13_AND_12
    } else {
        &TLS13_ONLY
    }
}

fn file_error(path: &Path, reason: impl ToString) -> Error {
    Error::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads all certificates of a PEM file (other sections, such as a key, are skipped).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let data = fs::read(path).map_err(|e| file_error(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE section found"));
    }
    Ok(certs)
}

/// Reads the private key, refusing a file that group or others can read, or that another user
/// owns (they could replace it).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let meta = fs::metadata(path).map_err(|e| file_error(path, e))?;
    let uid = crate::sys::effective_uid();
    if meta.uid() != uid {
        return Err(file_error(
            path,
            format!(
                "private key is owned by uid {}, not by this process's user (uid {uid}); \
                 run: chown {uid} {}",
                meta.uid(),
                path.display()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(file_error(
            path,
            format!(
                "private key is readable by group or others (mode {:o}); run: chmod 600 {}",
                meta.mode() & 0o777,
                path.display()
            ),
        ));
    }
    let data = fs::read(path).map_err(|e| file_error(path, e))?;
    PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| file_error(path, format!("no usable private key: {e}")))
}

/// The `--ca` bundle as trust anchors, and the `--crl` files checked against it.
fn load_trust(files: &TlsFiles) -> Result<(Arc<RootCertStore>, crl::Crls), Error> {
    let cas = load_certs(&files.ca)?;
    let mut roots = RootCertStore::empty();
    for cert in &cas {
        roots
            .add(cert.clone())
            .map_err(|e| file_error(&files.ca, format!("CA certificate rejected: {e}")))?;
    }
    let crls = crl::load(&files.crls, files.allow_expired_crl, &files.ca, &cas)?;
    Ok((Arc::new(roots), crls))
}

/// The server configs of a reverse listener, one per ALPN answer: the zstd ALPN for a replink
/// forward end, `postgresql` for libpq on a `postgres` route, and no ALPN at all (so a plain TLS
/// client that offers other protocols, or none, still connects). rustls refuses a client whose
/// offer misses every protocol of the config, hence one config per answer, chosen from the
/// ClientHello.
pub struct ServerConfigs {
    pub with_zstd: Arc<ServerConfig>,
    pub postgres: Arc<ServerConfig>,
    pub plain: Arc<ServerConfig>,
}

pub fn server_configs(files: &TlsFiles) -> Result<ServerConfigs, Error> {
    let provider = provider(&files.ciphers);
    let (roots, crls) = load_trust(files)?;
    // A CA without a CRL is not an error (allow_unknown_revocation_status); a CA with one is
    // checked on every full handshake.
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls.ders)
        .allow_unknown_revocation_status();
    if crls.enforce_expiration {
        builder = builder.enforce_revocation_expiration();
    }
    let verifier = builder
        .build()
        .map_err(|e| file_error(&files.ca, format!("cannot verify clients with it: {e}")))?;
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut base = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(files.tls12))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| file_error(&files.key, format!("key does not match certificate: {e}")))?;
    base.enable_secret_extraction = true;
    base.ticketer = rustls::crypto::ring::Ticketer::new()?;
    base.send_tls13_tickets = 2;
    base.max_early_data_size = 0;
    let plain = Arc::new(base.clone());
    let mut postgres = base.clone();
    postgres.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    base.alpn_protocols = vec![ALPN_ZSTD.to_vec()];
    Ok(ServerConfigs {
        with_zstd: Arc::new(base),
        postgres: Arc::new(postgres),
        plain,
    })
}

/// The client config of a forward listener. `server_name` pins the name checked in the server
/// certificate when it differs from the SNI (socat's `commonname`); without `resume`, no
/// session is kept, so every connection is a full handshake.
pub fn client_config(
    files: &TlsFiles,
    offer_zstd: bool,
    server_name: Option<&str>,
    resume: bool,
) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider(&files.ciphers);
    let (roots, crls) = load_trust(files)?;
    let mut builder = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls.ders)
        .allow_unknown_revocation_status();
    if crls.enforce_expiration {
        builder = builder.enforce_revocation_expiration();
    }
    let webpki = builder
        .build()
        .map_err(|e| file_error(&files.ca, format!("cannot verify servers with it: {e}")))?;
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(files.tls12))?;
    let builder = match server_name {
        Some(name) => {
            let name = ServerName::try_from(name.to_owned())
                .map_err(|e| Error::Config(format!("--server-name {name:?}: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedNameVerifier { webpki, name }))
        }
        None => builder.with_webpki_verifier(webpki),
    };
    let mut config = builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| file_error(&files.key, format!("key does not match certificate: {e}")))?;
    config.enable_secret_extraction = true;
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    if offer_zstd {
        config.alpn_protocols = vec![ALPN_ZSTD.to_vec()];
    }
    Ok(Arc::new(config))
}

/// Full WebPKI verification, but against a fixed name instead of the SNI.
#[derive(Debug)]
struct PinnedNameVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for PinnedNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sni: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The subject of a peer's leaf certificate, for logs.
pub fn subject_of(cert: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, c)) => c.subject().to_string(),
        Err(_) => "<unparsable certificate>".into(),
    }
}

/// The notAfter (Unix seconds) of the first certificate in a PEM file.
pub fn leaf_not_after(path: &Path) -> Option<i64> {
    let cert = load_certs(path).ok()?.into_iter().next()?;
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(c.validity().not_after.timestamp())
}

/// Sorts a rustls error into the short reason the connection log and counters use.
pub fn refusal_reason(e: &rustls::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match e {
        E::NoCertificatesPresented => "no_client_cert",
        E::InvalidCertificate(C::UnknownIssuer) => "unknown_ca",
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "cert_expired",
        E::InvalidCertificate(C::Revoked) => "certificate_revoked",
        E::InvalidCertificate(
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. },
        ) => "crl_expired",
        E::InvalidCertificate(C::UnknownRevocationStatus) => "revocation_unknown",
        E::InvalidCertRevocationList(_) => "bad_crl",
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "name_mismatch"
        }
        E::InvalidCertificate(_) => "bad_cert",
        E::AlertReceived(_) => "peer_alert",
        E::NoApplicationProtocol => "no_alpn",
        E::PeerIncompatible(
            rustls::PeerIncompatible::SupportedVersionsExtensionRequired
            | rustls::PeerIncompatible::Tls12NotOffered
            | rustls::PeerIncompatible::Tls12NotOfferedOrEnabled
            | rustls::PeerIncompatible::ServerDoesNotSupportTls12Or13
            | rustls::PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig,
        ) => "protocol_version",
        E::PeerIncompatible(_) => "incompatible",
        _ => "protocol",
    }
}
