//! libpq's TLS, for the connections replink-pg makes itself: the `sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey` and `sslsni` parameters of a connection string, read with libpq's
//! meaning, and a rustls client config built from them.
//!
//! The same string goes unchanged into `CREATE SUBSCRIPTION … CONNECTION` and to pg_dump, where
//! libpq reads it; here it must mean the same thing. So a string that reaches a replink
//! `:postgres` route with libpq's own TLS (`sslmode=verify-full sslrootcert=… sslcert=…
//! sslkey=…`, `host` = the route's name, sent as SNI) works for replink-pg too.
//!
//! - [`SslMode`] and [`SslParams`]: the parameters, parsed once.
//! - [`LibpqTls`] ([`connect`]): tokio-postgres' `MakeTlsConnect` over rustls (ring), with
//!   handshake failures turned into sentences that say what to fix ([`TlsFailure`]).
//!
//! As in libpq: without a CA file (`sslrootcert`, default `~/.postgresql/root.crt`) the server
//! certificate is not checked under `prefer`/`require`; with one, its chain is (`require`
//! becomes `verify-ca`); `verify-full` checks the host name too. No TLS over Unix sockets.
//! Where replink-pg differs: an `sslrootcert` or `sslcert` that the string names but that does
//! not exist is an error, not silently skipped; `allow` tries TLS first (as `prefer`); a failed
//! handshake under `allow`/`prefer` is an error, not a retry in plaintext (a replink route
//! never offers plaintext anyway). Not read: `sslcrl`, `sslpassword`, `sslcertmode`,
//! `ssl_min_protocol_version` (tokio-postgres refuses them as unknown options).

pub mod connect;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

pub use connect::{LibpqTls, TlsFailure};

/// The libpq parameters this module reads; they are taken out of a connection string before
/// the rest goes to tokio-postgres' parser, which does not know them all.
pub const PARAMS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslsni"];

/// ALPN protocol of PostgreSQL over TLS: libpq 17 offers it, and a replink `:postgres` route
/// (or a PostgreSQL 17 server, for direct TLS) selects it.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// libpq tries plaintext first, then TLS; replink-pg tries TLS first (as `prefer`).
    Allow,
    /// TLS when the server offers it (libpq's default).
    #[default]
    Prefer,
    Require,
    /// TLS, and the server's certificate chain checked against `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name `host`.
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode {other:?}: libpq knows disable, allow, prefer, require, \
                     verify-ca and verify-full"
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the connection fails rather than go on without TLS.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    /// tokio-postgres' mode: it knows only disable, prefer and require; the checks of the
    /// verify modes are the certificate verifier's.
    pub fn for_tokio_postgres(self) -> postgres::config::SslMode {
        use postgres::config::SslMode as Pg;
        match self {
            SslMode::Disable => Pg::Disable,
            SslMode::Allow | SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }
}

/// The TLS parameters of one connection string, as written (files not read yet). Empty values
/// count as not given, as in libpq; the last of a repeated key wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SslParams {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `sslsni` (default 1): send the host name as SNI. replink routes by it.
    pub sni: bool,
}

impl SslParams {
    /// From the `(key, value)` pairs of [`PARAMS`] (other keys are not expected here).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<SslParams, String> {
        let mut params = SslParams {
            sni: true,
            ..SslParams::default()
        };
        let path = |v: &str| (!v.is_empty()).then(|| PathBuf::from(v));
        for (key, value) in pairs {
            match key {
                "sslmode" => {
                    params.mode = if value.is_empty() {
                        SslMode::default()
                    } else {
                        SslMode::parse(value)?
                    }
                }
                "sslrootcert" if value == "system" => {
                    return Err("sslrootcert=system (the system's trusted roots) is not \
                                supported by replink-pg: name a CA file"
                        .into())
                }
                "sslrootcert" => params.root_cert = path(value),
                "sslcert" => params.cert = path(value),
                "sslkey" => params.key = path(value),
                "sslsni" => {
                    params.sni = match value {
                        "" | "1" => true,
                        "0" => false,
                        other => return Err(format!("invalid sslsni {other:?}: 0 or 1")),
                    }
                }
                other => return Err(format!("{other} is not a TLS parameter")),
            }
        }
        Ok(params)
    }

    /// The files to use: the ones named, else libpq's defaults under `~/.postgresql` when they
    /// exist (`home` is the home directory, when there is one).
    pub fn files(&self, home: Option<&Path>) -> Result<TlsFiles, String> {
        let default = |name: &str| home.map(|h| h.join(".postgresql").join(name));
        let named_or_default = |named: &Option<PathBuf>, param: &str, name: &str| match named {
            Some(path) if path.exists() => Ok(Some(path.clone())),
            Some(path) => Err(format!("{param} {} does not exist", path.display())),
            None => Ok(default(name).filter(|p| p.exists())),
        };
        let root_cert = named_or_default(&self.root_cert, "sslrootcert", "root.crt")?;
        if root_cert.is_none() && matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            return Err(format!(
                "sslmode={} checks the server's certificate, so it needs the CA that signed it: \
                 add sslrootcert=FILE{}, or use sslmode=require to skip the check",
                self.mode.as_str(),
                match default("root.crt") {
                    Some(p) => format!(" (the default, {}, does not exist)", p.display()),
                    None => String::new(),
                }
            ));
        }
        let cert = named_or_default(&self.cert, "sslcert", "postgresql.crt")?;
        let key = match &cert {
            None => None,
            Some(cert) => {
                let key = self
                    .key
                    .clone()
                    .or_else(|| default("postgresql.key"))
                    .ok_or_else(|| {
                        format!(
                            "sslcert {} is given but no sslkey (and there is no home \
                             directory for the default ~/.postgresql/postgresql.key)",
                            cert.display()
                        )
                    })?;
                if !key.exists() {
                    return Err(format!(
                        "sslcert {} is given but its key, sslkey {}, does not exist",
                        cert.display(),
                        key.display()
                    ));
                }
                Some(key)
            }
        };
        Ok(TlsFiles {
            root_cert,
            client: cert.zip(key),
        })
    }
}

/// The files a TLS connection uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub root_cert: Option<PathBuf>,
    /// Client certificate (chain) and its key.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// A file of a connection string that cannot be used: which parameter, which file, why.
#[derive(Debug)]
pub struct FileProblem {
    pub param: &'static str,
    pub path: PathBuf,
    pub problem: String,
}

fn file_problem(param: &'static str, path: &Path, problem: impl ToString) -> FileProblem {
    FileProblem {
        param,
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

/// All certificates of a PEM file (other sections, such as a key, are skipped).
fn load_certs(
    param: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, FileProblem> {
    let data =
        fs::read(path).map_err(|e| file_problem(param, path, format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_problem(param, path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_problem(
            param,
            path,
            "holds no PEM CERTIFICATE section",
        ));
    }
    Ok(certs)
}

/// The private key, refused as libpq refuses it: when group or others may read it (0600 at
/// most when it belongs to us, 0640 when it belongs to root; a key owned by someone else is
/// not checked, as in libpq). PEM: PKCS#8, SEC1 or PKCS#1; not encrypted.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileProblem> {
    let problem = |p: String| file_problem("sslkey", path, p);
    let meta = fs::metadata(path).map_err(|e| problem(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(problem("is not a regular file".into()));
    }
    let mode = meta.mode() & 0o777;
    let too_open = if meta.uid() == rustix::process::geteuid().as_raw() {
        mode & 0o077 != 0
    } else if meta.uid() == 0 {
        mode & 0o037 != 0
    } else {
        false
    };
    if too_open {
        return Err(problem(format!(
            "group or others can read it (mode {mode:04o}); a private key must be 0600 or less \
             when it belongs to the current user, 0640 or less when it belongs to root: run \
             chmod 600 {}",
            path.display()
        )));
    }
    let data = fs::read(path).map_err(|e| problem(format!("cannot read it: {e}")))?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| {
        if data.windows(b"ENCRYPTED".len()).any(|w| w == b"ENCRYPTED") {
            problem(
                "the key is encrypted, and replink-pg does not take sslpassword: decrypt it \
                 (openssl pkey -in KEY -out KEY.plain)"
                    .into(),
            )
        } else {
            problem(format!(
                "no usable private key (PEM PKCS#8, SEC1 or PKCS#1): {e}"
            ))
        }
    })
}

/// How the server's certificate is checked, by libpq's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCheck {
    /// No CA file under `allow`/`prefer`/`require`: anything goes (libpq's SSL_VERIFY_NONE).
    None,
    /// `verify-ca`, or a lower mode with a CA file: the chain, not the name.
    Chain,
    /// `verify-full`: the chain and the host name.
    ChainAndName,
}

impl ServerCheck {
    fn of(mode: SslMode, has_root_cert: bool) -> ServerCheck {
        match (mode, has_root_cert) {
            (SslMode::VerifyFull, _) => ServerCheck::ChainAndName,
            (_, true) => ServerCheck::Chain,
            (_, false) => ServerCheck::None,
        }
    }
}

/// The rustls client config for `params` and `files`, and what the messages of a failed
/// handshake need to know.
pub fn client_config(params: &SslParams, files: &TlsFiles) -> Result<LibpqTls, FileProblem> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let check = ServerCheck::of(params.mode, files.root_cert.is_some());
    let roots = match &files.root_cert {
        None => None,
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs("sslrootcert", path)? {
                roots.add(cert).map_err(|e| {
                    file_problem("sslrootcert", path, format!("CA certificate rejected: {e}"))
                })?;
            }
            Some(Arc::new(roots))
        }
    };
    let verifier = Arc::new(LibpqServerVerifier {
        roots,
        check_name: check == ServerCheck::ChainAndName,
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        // Fails only for a provider without cipher suites or key exchange groups for TLS 1.2
        // and 1.3; ring's default provider has both, and this code does not change it.
        .expect("ring's default provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            let certs = load_certs("sslcert", cert_path)?;
            let key = load_key(key_path)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                file_problem(
                    "sslkey",
                    key_path,
                    format!("cannot be used with sslcert {}: {e}", cert_path.display()),
                )
            })?
        }
    };
    config.enable_sni = params.sni;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(LibpqTls::new(
        Arc::new(config),
        connect::Context {
            mode: params.mode,
            root_cert: files.root_cert.clone(),
            cert: files.client.as_ref().map(|(cert, _)| cert.clone()),
            sni: params.sni,
        },
    ))
}

/// libpq's server certificate check. Built from rustls' own pieces rather than by wrapping
/// `WebPkiServerVerifier` and forgiving its name error: `verify-ca` calls the chain check
/// alone, so no ordering inside rustls decides what a forgiven error skipped.
#[derive(Debug)]
struct LibpqServerVerifier {
    /// `None`: no CA file and a mode that does not need one; the certificate is not checked.
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for LibpqServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            // libpq's sslmode=prefer/require without a root certificate: encryption without
            // authentication of the server, as the user asked.
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if self.check_name {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    // The handshake signatures are checked in every mode: they prove the server holds the key
    // of the certificate it sent, which costs nothing to check.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Result<SslParams, String> {
        SslParams::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn defaults_are_libpqs() {
        let p = params(&[]).unwrap();
        assert_eq!(p.mode, SslMode::Prefer);
        assert!(p.sni);
        assert_eq!((p.root_cert, p.cert, p.key), (None, None, None));
    }

    #[test]
    fn every_sslmode_and_sslsni() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Allow),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
            ("", SslMode::Prefer),
        ] {
            assert_eq!(params(&[("sslmode", text)]).unwrap().mode, mode);
            assert_eq!(mode.as_str(), if text.is_empty() { "prefer" } else { text });
        }
        let err = params(&[("sslmode", "verify_full")]).unwrap_err();
        assert!(err.contains("invalid sslmode \"verify_full\""), "{err}");
        assert!(err.contains("verify-full"), "{err}");
        assert!(!params(&[("sslsni", "0")]).unwrap().sni);
        assert!(params(&[("sslsni", "1")]).unwrap().sni);
        assert!(params(&[("sslsni", "yes")]).is_err());
        assert!(params(&[("sslrootcert", "system")])
            .unwrap_err()
            .contains("not supported"));
    }

    #[test]
    fn the_last_value_wins_and_empty_means_unset() {
        let p = params(&[
            ("sslmode", "require"),
            ("sslmode", "verify-ca"),
            ("sslcert", "/a.pem"),
            ("sslcert", ""),
            ("sslkey", "/k"),
        ])
        .unwrap();
        assert_eq!(p.mode, SslMode::VerifyCa);
        assert_eq!(p.cert, None);
        assert_eq!(p.key, Some(PathBuf::from("/k")));
    }

    #[test]
    fn require_with_a_ca_file_checks_the_chain_as_libpq_does() {
        assert_eq!(ServerCheck::of(SslMode::Require, false), ServerCheck::None);
        assert_eq!(ServerCheck::of(SslMode::Require, true), ServerCheck::Chain);
        assert_eq!(ServerCheck::of(SslMode::Prefer, true), ServerCheck::Chain);
        assert_eq!(ServerCheck::of(SslMode::VerifyCa, true), ServerCheck::Chain);
        assert_eq!(
            ServerCheck::of(SslMode::VerifyFull, true),
            ServerCheck::ChainAndName
        );
    }

    /// A CA, a server certificate for `pg.repl.test` it signed, and its key pair.
    struct TestPki {
        ca_pem: String,
        leaf: CertificateDer<'static>,
        leaf_key_pem: String,
        leaf_pem: String,
    }

    fn test_pki(ca_name: &str) -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["pg.repl.test".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        TestPki {
            ca_pem: ca.pem(),
            leaf: leaf.der().clone(),
            leaf_pem: leaf.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        }
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn verifier(ca_pem: &str, check_name: bool) -> LibpqServerVerifier {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        LibpqServerVerifier {
            roots: Some(Arc::new(roots)),
            check_name,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    #[test]
    fn verify_ca_checks_the_chain_but_not_the_name() {
        let pki = test_pki("test CA");
        let other = test_pki("other CA");
        let name = |n: &str| ServerName::try_from(n.to_owned()).unwrap();
        let check = |v: &LibpqServerVerifier, n: &str| {
            v.verify_server_cert(&pki.leaf, &[], &name(n), &[], UnixTime::now())
        };
        let ca_only = verifier(&pki.ca_pem, false);
        assert!(check(&ca_only, "pg.repl.test").is_ok());
        assert!(check(&ca_only, "elsewhere.test").is_ok());
        let full = verifier(&pki.ca_pem, true);
        assert!(check(&full, "pg.repl.test").is_ok());
        assert!(matches!(
            check(&full, "elsewhere.test"),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
                    | rustls::CertificateError::NotValidForName
            ))
        ));
        // The wrong CA fails in both modes, name or not.
        for check_name in [false, true] {
            assert!(matches!(
                check(&verifier(&other.ca_pem, check_name), "pg.repl.test"),
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ));
        }
    }

    #[test]
    fn files_named_or_in_the_home_directory() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let verify_full = params(&[("sslmode", "verify-full")]).unwrap();
        let err = verify_full.files(Some(home)).unwrap_err();
        assert!(err.contains("add sslrootcert=FILE"), "{err}");
        assert!(
            err.contains(".postgresql/root.crt, does not exist"),
            "{err}"
        );
        // Without a CA file, prefer and require go on unchecked, as in libpq.
        let none = params(&[]).unwrap().files(Some(home)).unwrap();
        assert_eq!((none.root_cert, none.client), (None, None));

        let pki = test_pki("test CA");
        let pgdir = home.join(".postgresql");
        fs::create_dir(&pgdir).unwrap();
        let root = write(&pgdir, "root.crt", &pki.ca_pem, 0o644);
        let cert = write(&pgdir, "postgresql.crt", &pki.leaf_pem, 0o644);
        let err = params(&[]).unwrap().files(Some(home)).unwrap_err();
        assert!(err.contains("postgresql.key, does not exist"), "{err}");
        let key = write(&pgdir, "postgresql.key", &pki.leaf_key_pem, 0o600);
        let found = verify_full.files(Some(home)).unwrap();
        assert_eq!(found.root_cert, Some(root.clone()));
        assert_eq!(found.client, Some((cert.clone(), key.clone())));

        let missing = params(&[("sslrootcert", "/nonexistent/ca.pem")]).unwrap();
        let err = missing.files(Some(home)).unwrap_err();
        assert_eq!(err, "sslrootcert /nonexistent/ca.pem does not exist");
        let missing = params(&[("sslcert", "/nonexistent/c.pem")]).unwrap();
        assert!(missing
            .files(None)
            .unwrap_err()
            .contains("sslcert /nonexistent"));
    }

    #[test]
    fn client_config_from_files_and_their_problems() {
        let dir = tempfile::tempdir().unwrap();
        let pki = test_pki("test CA");
        let ca = write(dir.path(), "ca.pem", &pki.ca_pem, 0o644);
        let cert = write(dir.path(), "client.pem", &pki.leaf_pem, 0o644);
        let key = write(dir.path(), "client.key", &pki.leaf_key_pem, 0o600);
        let p = params(&[("sslmode", "verify-full")]).unwrap();
        let files = TlsFiles {
            root_cert: Some(ca.clone()),
            client: Some((cert.clone(), key.clone())),
        };
        assert!(client_config(&p, &files).is_ok());

        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let e = client_config(&p, &files).unwrap_err();
        assert_eq!(e.param, "sslkey");
        assert!(
            e.problem.contains(&format!("chmod 600 {}", key.display())),
            "{}",
            e.problem
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

        let bad = write(
            dir.path(),
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\nxx",
            0o644,
        );
        let e = client_config(
            &p,
            &TlsFiles {
                root_cert: Some(bad.clone()),
                client: None,
            },
        )
        .unwrap_err();
        assert_eq!((e.param, e.path), ("sslrootcert", bad));
        assert!(e.problem.contains("bad PEM"), "{}", e.problem);

        let empty = write(dir.path(), "empty.pem", "nothing here\n", 0o644);
        let e = client_config(
            &p,
            &TlsFiles {
                root_cert: Some(empty),
                client: None,
            },
        )
        .unwrap_err();
        assert!(e.problem.contains("no PEM CERTIFICATE"), "{}", e.problem);

        let other_key = write(
            dir.path(),
            "other.key",
            &test_pki("other CA").leaf_key_pem,
            0o600,
        );
        let e = client_config(
            &p,
            &TlsFiles {
                root_cert: Some(ca),
                client: Some((cert, other_key)),
            },
        )
        .unwrap_err();
        assert!(
            e.problem.contains("cannot be used with sslcert"),
            "{}",
            e.problem
        );
    }

    #[test]
    fn encrypted_keys_are_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let key = write(
            dir.path(),
            "enc.key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
            0o600,
        );
        let e = load_key(&key).unwrap_err();
        assert!(e.problem.contains("sslpassword"), "{}", e.problem);
    }
}
