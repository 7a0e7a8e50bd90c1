//! The operator's certificate authority, kept in a directory:
//!
//! ```text
//! ca-certs/
//!   ca.pem        the CA certificate (0644)
//!   ca.key        its key, PKCS#8 encrypted under the CA password (0600)
//!   crlnumber     the number the next CRL gets (decimal)
//!   issued/       a copy of every certificate signed, named by serial (hex)
//! ```
//!
//! [`CaDir::create`] makes one; [`CaLocation::find`] + [`CaLocation::unlock`] open it;
//! [`CaDir::plan`] reviews a CSR into a [`SigningPlan`] that [`CaDir::sign`] carries out;
//! [`CaDir::revocation_list`] issues CRLs.

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    IsCa, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;

use crate::files::{read_file, read_text, OutputSet};
use crate::keys::{encrypt_key_pem, random_serial, KeyAlgorithm, StoredKey};
use crate::request::{LeafUsage, ParsedRequest, Subject};
use crate::{fmt_time, hex_serial, PkiError};

/// Allowance for clocks that run behind ours: certificates are valid from five minutes ago.
const BACKDATE: Duration = Duration::minutes(5);

/// The files of a CA directory.
#[derive(Clone, Debug)]
pub struct CaPaths {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub crl_number: PathBuf,
    pub issued: PathBuf,
}

impl CaPaths {
    pub fn new(dir: &Path) -> CaPaths {
        CaPaths {
            dir: dir.to_owned(),
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
            crl_number: dir.join("crlnumber"),
            issued: dir.join("issued"),
        }
    }
}

/// What a new CA is.
#[derive(Clone, Debug)]
pub struct CaSpec {
    pub subject: Subject,
    pub valid_days: u32,
    pub algorithm: KeyAlgorithm,
}

/// The result of [`CaDir::create`].
pub struct CreatedCa {
    pub paths: CaPaths,
    pub fingerprint: String,
    pub not_after: OffsetDateTime,
}

/// A CA directory found on disk, key not yet unlocked.
pub struct CaLocation {
    pub paths: CaPaths,
    cert_der: Vec<u8>,
    key: StoredKey,
}

/// An unlocked CA.
pub struct CaDir {
    pub paths: CaPaths,
    cert_der: Vec<u8>,
    cert: rcgen::Certificate,
    key: KeyPair,
    not_after: OffsetDateTime,
    subject_text: String,
}

impl CaDir {
    /// Creates `dir` (if needed) with a new self-signed CA. `password` None stores the key
    /// unencrypted (the caller warns). Refuses to replace an existing CA unless `force`.
    pub fn create(
        dir: &Path,
        spec: &CaSpec,
        password: Option<&[u8]>,
        force: bool,
    ) -> Result<CreatedCa, PkiError> {
        if spec.valid_days == 0 {
            return Err(PkiError::Name {
                name: spec.valid_days.to_string(),
                reason: "--valid-days must be at least 1".into(),
            });
        }
        let paths = CaPaths::new(dir);
        let key = spec.algorithm.generate()?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = spec.subject.to_dn()?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        let not_after = now + Duration::days(i64::from(spec.valid_days));
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        let key_pem = match password {
            Some(pw) => encrypt_key_pem(&key, pw)?,
            None => crate::keys::key_pem(&key)?,
        };
        create_dir(dir, 0o700)?;
        create_dir(&paths.issued, 0o700)?;
        let mut out = OutputSet::new();
        out.public(&paths.cert, cert.pem(), force);
        out.private(&paths.key, key_pem, force);
        out.public(&paths.crl_number, "1\n", force);
        out.commit()?;
        Ok(CreatedCa {
            fingerprint: crate::fingerprint(cert.der()),
            not_after,
            paths,
        })
    }

    /// Reviews `csr` for signing as a `usage` certificate valid for `valid_days`: refuses a
    /// request for CA rights, a request for the other usage, a server request without names,
    /// and an expired CA. Picks the serial.
    pub fn plan(
        &self,
        csr: &ParsedRequest,
        usage: LeafUsage,
        valid_days: u32,
        crl_urls: &[String],
    ) -> Result<SigningPlan, PkiError> {
        let refuse = |reason: String| PkiError::Refused {
            path: csr.path.clone(),
            reason,
        };
        let now = OffsetDateTime::now_utc();
        self.check_valid(now)?;
        if csr.asks_for_ca {
            return Err(refuse(
                "the CSR asks for CA rights (basicConstraints CA:TRUE or keyCertSign/cRLSign); replink-pki signs only server and client certificates".into(),
            ));
        }
        let (this, other) = match usage {
            LeafUsage::Server => (csr.requested_server, csr.requested_client),
            LeafUsage::Client => (csr.requested_client, csr.requested_server),
        };
        if csr.has_eku && !this {
            let other_usage = match usage {
                LeafUsage::Server => LeafUsage::Client,
                LeafUsage::Client => LeafUsage::Server,
            };
            return Err(refuse(format!(
                "this is a {} CSR (it asks for TLS {} authentication{}); sign it with sign-{}-csr",
                other_usage.name(),
                other_usage.name(),
                if other { "" } else { " only" },
                other_usage.name(),
            )));
        }
        if valid_days == 0 {
            return Err(refuse("--valid-days must be at least 1".into()));
        }
        let mut sans = csr.sans.clone();
        let mut san_text = csr.san_text.clone();
        let mut notes = Vec::new();
        if usage == LeafUsage::Server
            && !sans
                .iter()
                .any(|s| matches!(s, SanType::DnsName(_) | SanType::IpAddress(_)))
        {
            match csr.common_name_as_dns() {
                Some(cn) => {
                    notes.push(format!(
                        "the CSR has no DNS or IP name; its common name {cn} becomes the DNS name"
                    ));
                    sans.push(SanType::DnsName(cn.as_str().try_into()?));
                    san_text.push(format!("DNS:{cn}"));
                }
                None => {
                    return Err(refuse(
                        "a server certificate needs a DNS name or IP address and the CSR has none (make it with -d NAME or --ip-address, or openssl req -addext subjectAltName=DNS:NAME)".into(),
                    ))
                }
            }
        }
        let not_before = now - BACKDATE;
        let mut not_after = now + Duration::days(i64::from(valid_days));
        if not_after > self.not_after {
            notes.push(format!(
                "validity shortened to the CA's own expiry ({})",
                fmt_time(self.not_after)
            ));
            not_after = self.not_after;
        }
        let serial = self.fresh_serial()?;
        let rsa = csr.key.description.starts_with("RSA");
        let mut key_usage = vec![KeyUsagePurpose::DigitalSignature];
        if rsa {
            key_usage.push(KeyUsagePurpose::KeyEncipherment);
        }
        notes.extend(csr.ignored.iter().map(|i| format!("not copied: {i}")));
        Ok(SigningPlan {
            usage,
            subject_text: csr.subject_text.clone(),
            subject: csr.subject.clone(),
            sans,
            san_text,
            key_description: csr.key.description.clone(),
            not_before,
            not_after,
            serial,
            key_usage,
            crl_urls: crl_urls.to_vec(),
            issuer_text: self.subject_text.clone(),
            notes,
        })
    }

    /// Signs `plan` for the key in `csr`; the certificate (PEM) is also recorded in `issued/`.
    pub fn sign(&self, plan: &SigningPlan, csr: &ParsedRequest) -> Result<String, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = plan.subject.clone();
        params.subject_alt_names = plan.sans.clone();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = plan.key_usage.clone();
        params.extended_key_usages = vec![plan.usage.eku()];
        params.not_before = plan.not_before;
        params.not_after = plan.not_after;
        params.serial_number = Some(SerialNumber::from_slice(&plan.serial));
        params.use_authority_key_identifier_extension = true;
        if !plan.crl_urls.is_empty() {
            params.crl_distribution_points = vec![CrlDistributionPoint {
                uris: plan.crl_urls.clone(),
            }];
        }
        let cert = params.signed_by(&csr.key, &self.cert, &self.key)?;
        Ok(cert.pem())
    }

    /// Where [`sign`](Self::sign)'s certificate is recorded.
    pub fn issued_path(&self, serial: &[u8]) -> PathBuf {
        self.paths
            .issued
            .join(format!("{}.pem", hex_serial(serial)))
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem_block("CERTIFICATE", &self.cert_der)
    }

    fn check_valid(&self, now: OffsetDateTime) -> Result<(), PkiError> {
        if now > self.not_after {
            return Err(PkiError::Ca {
                path: self.paths.cert.clone(),
                reason: format!(
                    "the CA certificate expired on {}; create a new CA (and distribute its ca.pem)",
                    fmt_time(self.not_after)
                ),
            });
        }
        Ok(())
    }

    fn fresh_serial(&self) -> Result<Vec<u8>, PkiError> {
        loop {
            let serial = random_serial()?.to_bytes();
            if !self.issued_path(&serial).exists() {
                return Ok(serial);
            }
        }
    }

    /// Whether a certificate with this serial was signed from this directory.
    pub fn has_issued(&self, serial: &[u8]) -> bool {
        self.issued_path(serial).exists()
    }

    /// Builds a CRL revoking `revoke` plus, with `append`, every entry of an earlier CRL of
    /// this CA. Its number is one more than both the `crlnumber` file and the earlier CRL.
    pub fn revocation_list(
        &self,
        revoke: &[Revocation],
        append: Option<&Path>,
        valid_days: u32,
    ) -> Result<NewCrl, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.check_valid(now)?;
        let mut entries: Vec<Revocation> = Vec::new();
        let mut number = self.next_crl_number()?;
        if let Some(path) = append {
            let earlier = self.read_own_crl(path)?;
            number = number.max(earlier.number + 1);
            entries = earlier.entries;
        }
        let mut added = Vec::new();
        for r in revoke {
            if entries.iter().any(|e| e.serial == r.serial) {
                continue;
            }
            entries.push(r.clone());
            added.push(r.serial.clone());
        }
        if valid_days == 0 {
            return Err(PkiError::Name {
                name: "0".into(),
                reason: "--valid-days must be at least 1".into(),
            });
        }
        let next_update = (now + Duration::days(i64::from(valid_days))).min(self.not_after);
        let params = CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: entries
                .iter()
                .map(|e| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&e.serial),
                    revocation_time: e.time,
                    reason_code: e.reason,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: self.cert.params().key_identifier_method.clone(),
        };
        let crl = params.signed_by(&self.cert, &self.key)?;
        Ok(NewCrl {
            pem: crl.pem()?,
            number,
            next_update,
            entries,
            added,
        })
    }

    /// Records that CRL `number` was issued (the next one gets `number + 1`).
    pub fn record_crl_number(&self, number: u64) -> Result<(), PkiError> {
        let mut out = OutputSet::new();
        out.public(&self.paths.crl_number, format!("{}\n", number + 1), true);
        out.commit()
    }

    fn next_crl_number(&self) -> Result<u64, PkiError> {
        match std::fs::read_to_string(&self.paths.crl_number) {
            Ok(text) => text.trim().parse().map_err(|_| PkiError::Input {
                path: self.paths.crl_number.clone(),
                reason: format!("expected a decimal number, found {:?}", text.trim()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(1),
            Err(e) => Err(PkiError::File {
                path: self.paths.crl_number.clone(),
                reason: format!("cannot read: {e}"),
            }),
        }
    }

    fn read_own_crl(&self, path: &Path) -> Result<EarlierCrl, PkiError> {
        let bad = |reason: String| PkiError::Input {
            path: path.to_owned(),
            reason,
        };
        let der = crate::inspect::pem_or_der(&read_file(path)?, "X509 CRL")
            .map_err(|r| bad(r.to_string()))?;
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
            .map_err(|e| bad(format!("not a valid CRL, corrupt or truncated ({e})")))?;
        let (_, ca) = x509_parser::parse_x509_certificate(&self.cert_der)
            .map_err(|e| bad(format!("re-reading the CA certificate: {e}")))?;
        crl.verify_signature(ca.public_key())
            .map_err(|_| bad("this CRL was not signed by this CA".into()))?;
        let number = crl
            .crl_number()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        let entries = crl
            .iter_revoked_certificates()
            .map(|r| Revocation {
                serial: r.raw_serial().to_vec(),
                reason: r.reason_code().and_then(|(_, c)| reason_from_code(c.0)),
                time: r.revocation_date.to_datetime(),
            })
            .collect();
        Ok(EarlierCrl { number, entries })
    }
}

impl CaLocation {
    /// Finds the CA in `dir`, with errors that say what is missing.
    pub fn find(dir: &Path) -> Result<CaLocation, PkiError> {
        let paths = CaPaths::new(dir);
        let not_ca = |reason: String| PkiError::NotCaDir {
            dir: dir.to_owned(),
            reason,
        };
        if !dir.is_dir() {
            return Err(not_ca("no such directory".into()));
        }
        if !paths.cert.exists() {
            return Err(not_ca(
                "ca.pem is missing (make a CA with replink-pki create-ca -o DIR)".into(),
            ));
        }
        if !paths.key.exists() {
            return Err(not_ca(
                "ca.key is missing: this directory has the CA certificate but not its key, so it cannot sign".into(),
            ));
        }
        crate::files::check_private(&paths.key)?;
        let cert_der = crate::inspect::pem_or_der(&read_file(&paths.cert)?, "CERTIFICATE")
            .map_err(|reason| PkiError::Input {
                path: paths.cert.clone(),
                reason: reason.to_string(),
            })?;
        let key = StoredKey::from_pem(&read_text(&paths.key)?, &paths.key)?;
        Ok(CaLocation {
            paths,
            cert_der,
            key,
        })
    }

    pub fn key_is_encrypted(&self) -> bool {
        self.key.is_encrypted()
    }

    /// Decrypts the key and checks that it belongs to the certificate, which must be a CA.
    pub fn unlock(self, password: Option<&[u8]>) -> Result<CaDir, PkiError> {
        let key = self.key.unlock(password, &self.paths.key)?;
        let ca_err = |reason: String| PkiError::Ca {
            path: self.paths.cert.clone(),
            reason,
        };
        let (_, x509) = x509_parser::parse_x509_certificate(&self.cert_der)
            .map_err(|e| ca_err(format!("not a valid certificate ({e})")))?;
        if x509.public_key().raw != key.public_key_der().as_slice() {
            return Err(ca_err(format!(
                "{} is not the key of this certificate",
                self.paths.key.display()
            )));
        }
        if !x509.is_ca() {
            return Err(ca_err(
                "not a CA certificate (basicConstraints CA:TRUE missing)".into(),
            ));
        }
        let not_after = x509.validity().not_after.to_datetime();
        let subject_text = x509.subject().to_string();
        let params = CertificateParams::from_ca_cert_der(&self.cert_der.clone().into())
            .map_err(|e| ca_err(format!("cannot sign with it ({e})")))?;
        // rcgen signs with the issuer's parameters (name, key identifier), not its DER, so a
        // re-signed copy stands in for the original.
        let cert = params.self_signed(&key)?;
        Ok(CaDir {
            paths: self.paths,
            cert_der: self.cert_der,
            cert,
            key,
            not_after,
            subject_text,
        })
    }
}

/// A reviewed request, ready to sign; its `Display` is what the operator confirms.
pub struct SigningPlan {
    pub usage: LeafUsage,
    pub subject_text: String,
    subject: rcgen::DistinguishedName,
    sans: Vec<SanType>,
    pub san_text: Vec<String>,
    pub key_description: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Serial, big-endian.
    pub serial: Vec<u8>,
    key_usage: Vec<KeyUsagePurpose>,
    pub crl_urls: Vec<String>,
    pub issuer_text: String,
    pub notes: Vec<String>,
}

impl fmt::Display for SigningPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = (self.not_after - self.not_before).whole_days();
        writeln!(f, "Certificate to sign ({}):", self.usage.name())?;
        writeln!(f, "  Subject:            {}", self.subject_text)?;
        writeln!(f, "  Issuer:             {}", self.issuer_text)?;
        writeln!(f, "  Serial:             {}", hex_serial(&self.serial))?;
        writeln!(
            f,
            "  Valid:              {} to {} ({days} days)",
            fmt_time(self.not_before),
            fmt_time(self.not_after)
        )?;
        writeln!(f, "  Key:                {}", self.key_description)?;
        let sans = if self.san_text.is_empty() {
            "(none)".to_owned()
        } else {
            self.san_text.join(", ")
        };
        writeln!(f, "  Names (SAN):        {sans}")?;
        let ku: Vec<&str> = self
            .key_usage
            .iter()
            .map(|k| match k {
                KeyUsagePurpose::DigitalSignature => "digitalSignature",
                KeyUsagePurpose::KeyEncipherment => "keyEncipherment",
                _ => "other",
            })
            .collect();
        writeln!(f, "  Key usage:          {}", ku.join(", "))?;
        writeln!(
            f,
            "  Extended key usage: {}",
            match self.usage {
                LeafUsage::Server => "serverAuth (TLS server)",
                LeafUsage::Client => "clientAuth (TLS client)",
            }
        )?;
        writeln!(f, "  CA:                 no")?;
        if !self.crl_urls.is_empty() {
            writeln!(f, "  CRL distribution:   {}", self.crl_urls.join(", "))?;
        }
        for n in &self.notes {
            writeln!(f, "  Note: {n}")?;
        }
        Ok(())
    }
}

/// One revoked certificate.
#[derive(Clone, Debug)]
pub struct Revocation {
    /// Serial as the INTEGER's content bytes.
    pub serial: Vec<u8>,
    pub reason: Option<RevocationReason>,
    pub time: OffsetDateTime,
}

/// A CRL made by [`CaDir::revocation_list`].
pub struct NewCrl {
    pub pem: String,
    pub number: u64,
    pub next_update: OffsetDateTime,
    pub entries: Vec<Revocation>,
    /// Serials this CRL adds to the earlier one.
    pub added: Vec<Vec<u8>>,
}

struct EarlierCrl {
    number: u64,
    entries: Vec<Revocation>,
}

/// Reason names on the command line, as RFC 5280 spells them.
pub const REASONS: [(&str, RevocationReason); 7] = [
    ("unspecified", RevocationReason::Unspecified),
    ("keyCompromise", RevocationReason::KeyCompromise),
    ("caCompromise", RevocationReason::CaCompromise),
    ("affiliationChanged", RevocationReason::AffiliationChanged),
    ("superseded", RevocationReason::Superseded),
    (
        "cessationOfOperation",
        RevocationReason::CessationOfOperation,
    ),
    ("privilegeWithdrawn", RevocationReason::PrivilegeWithdrawn),
];

fn reason_from_code(code: u8) -> Option<RevocationReason> {
    use RevocationReason::*;
    Some(match code {
        0 => Unspecified,
        1 => KeyCompromise,
        2 => CaCompromise,
        3 => AffiliationChanged,
        4 => Superseded,
        5 => CessationOfOperation,
        6 => CertificateHold,
        8 => RemoveFromCrl,
        9 => PrivilegeWithdrawn,
        10 => AaCompromise,
        _ => return None,
    })
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(PkiError::File {
            path: dir.to_owned(),
            reason: format!("cannot create directory: {e}"),
        }),
    }
}

pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
