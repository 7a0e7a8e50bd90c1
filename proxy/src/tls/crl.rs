//! Certificate revocation lists (`--crl`): read once at start-up, checked against the CA
//! bundle, and handed to rustls' WebPKI verifiers.
//!
//! A listener does not start with a CRL file that is unreadable or holds no CRL, one that
//! rustls' own CRL parser would reject, one that no CA of `--ca` signed, or one whose
//! nextUpdate has passed (unless `--allow-expired-crl`). A CA of the bundle without a CRL is
//! allowed: its certificates are not checked for revocation, and the start-up log says so.
//!
//! What this is not: fetching CRLs (distribution points) or OCSP. A new CRL takes effect at
//! the next start.

use std::fs;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::OID_X509_EXT_ISSUER_DISTRIBUTION_POINT;
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::time::ASN1Time;

use super::file_error;
use crate::Error;

/// The CRLs of one listener, checked and ready for rustls.
#[derive(Debug, Default)]
pub struct Crls {
    pub ders: Vec<CertificateRevocationListDer<'static>>,
    /// Refuse a peer whose issuer's CRL has passed its nextUpdate, also while running (off
    /// with `--allow-expired-crl`).
    pub enforce_expiration: bool,
}

/// One CRL that passed the checks, with what the start-up log says about it.
struct Checked {
    path: PathBuf,
    der: CertificateRevocationListDer<'static>,
    /// Index into the CA bundle of the CA that signed it.
    ca: usize,
    revoked: usize,
    next_update: ASN1Time,
    expired: bool,
    /// Issuer name and issuing distribution point (raw DER): rustls consults the first CRL
    /// that matches a certificate's issuer and distribution point, so two CRLs with the same
    /// scope would hide the second.
    scope: (Vec<u8>, Option<Vec<u8>>),
}

/// Reads `paths` (PEM, possibly several CRLs per file, or DER), checks each CRL against the CA
/// certificates `cas` read from `ca_path`, and logs which CAs have a CRL.
pub fn load(
    paths: &[PathBuf],
    allow_expired: bool,
    ca_path: &Path,
    cas: &[CertificateDer<'_>],
) -> Result<Crls, Error> {
    let mut crls = Crls {
        ders: Vec::new(),
        enforce_expiration: !allow_expired,
    };
    if paths.is_empty() {
        return Ok(crls);
    }
    let cas = cas
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der.as_ref())
                .map(|(_, cert)| cert)
                .map_err(|e| file_error(ca_path, format!("unparsable CA certificate: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let now = ASN1Time::now();
    let mut checked: Vec<Checked> = Vec::new();
    for path in paths {
        let ders = read_crl_file(path)?;
        let count = ders.len();
        for (i, der) in ders.into_iter().enumerate() {
            let which = |reason: String| {
                if count > 1 {
                    file_error(path, format!("CRL {} of {count}: {reason}", i + 1))
                } else {
                    file_error(path, reason)
                }
            };
            let crl = check(path, der, &cas, ca_path, now, allow_expired).map_err(which)?;
            if let Some(earlier) = checked.iter().find(|c| c.scope == crl.scope) {
                return Err(which(format!(
                    "{} already has a CRL (from {}); rustls would consult only the first, \
                     so pass only the current one",
                    subject(&cas[crl.ca]),
                    earlier.path.display()
                )));
            }
            checked.push(crl);
        }
    }
    log_coverage(&checked, &cas);
    crls.ders = checked.into_iter().map(|c| c.der).collect();
    Ok(crls)
}

/// The CRLs of one file: every `X509 CRL` section of a PEM file, or the whole file as DER.
fn read_crl_file(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let data = fs::read(path).map_err(|e| file_error(path, e))?;
    if !data.windows(11).any(|w| w == b"-----BEGIN ") {
        return Ok(vec![CertificateRevocationListDer::from(data)]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("bad PEM: {e}")))?;
    if crls.is_empty() {
        return Err(file_error(
            path,
            "no `-----BEGIN X509 CRL-----` section found (not a CRL)",
        ));
    }
    Ok(crls)
}

fn subject(cert: &X509Certificate<'_>) -> String {
    cert.subject().to_string()
}

/// Everything start-up checks about one CRL; the error is the reason, without the file name.
fn check(
    path: &Path,
    der: CertificateRevocationListDer<'static>,
    cas: &[X509Certificate<'_>],
    ca_path: &Path,
    now: ASN1Time,
    allow_expired: bool,
) -> Result<Checked, String> {
    let (rest, crl) = x509_parser::parse_x509_crl(der.as_ref())
        .map_err(|e| format!("not a CRL (neither PEM nor DER): {e}"))?;
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes of trailing data after the CRL",
            rest.len()
        ));
    }
    let issuer = crl.issuer().to_string();
    // rustls' parser refuses a CRL without nextUpdate (RFC 5280 5.1.2.5 makes it mandatory);
    // say so plainly instead of through its error name.
    let Some(next_update) = crl.next_update() else {
        return Err(format!(
            "the CRL from {issuer} has no nextUpdate, which rustls requires (RFC 5280 5.1.2.5)"
        ));
    };
    webpki::OwnedCertRevocationList::from_der(der.as_ref())
        .map_err(|e| format!("rustls cannot use this CRL: {}", webpki_reason(&e)))?;
    let ca = signer(&crl, cas, ca_path)?;
    let expired = next_update < now;
    if expired && !allow_expired {
        return Err(format!(
            "the CRL from {issuer} expired at {next_update} (its nextUpdate): issue a fresh one \
             with `replink-pki generate-crl`, or start with --allow-expired-crl to use it anyway"
        ));
    }
    let idp = crl
        .extensions()
        .iter()
        .find(|e| e.oid == OID_X509_EXT_ISSUER_DISTRIBUTION_POINT)
        .map(|e| e.value.to_vec());
    Ok(Checked {
        path: path.to_owned(),
        ca,
        revoked: crl.iter_revoked_certificates().count(),
        next_update,
        expired,
        scope: (crl.issuer().as_raw().to_vec(), idp),
        der,
    })
}

/// The CA of the bundle that signed `crl`: its subject must be the CRL's issuer (rustls
/// matches them by name), its key must verify the signature, and its key usage, when present,
/// must allow signing CRLs (rustls checks that on every handshake).
fn signer(
    crl: &CertificateRevocationList<'_>,
    cas: &[X509Certificate<'_>],
    ca_path: &Path,
) -> Result<usize, String> {
    let issuer = crl.issuer();
    let named: Vec<usize> = (0..cas.len())
        .filter(|&i| cas[i].subject().as_raw() == issuer.as_raw())
        .collect();
    let Some(&ca) = named
        .iter()
        .find(|&&i| crl.verify_signature(cas[i].public_key()).is_ok())
    else {
        return Err(if named.is_empty() {
            format!(
                "the CRL is not signed by any CA certificate in {} (the CRL's issuer is {issuer})",
                ca_path.display()
            )
        } else {
            format!(
                "the CRL names {issuer}, a CA in {}, but its signature does not verify with \
                 that CA's key (a CRL of another CA with the same name, or a damaged file)",
                ca_path.display()
            )
        });
    };
    if let Ok(Some(usage)) = cas[ca].key_usage() {
        if !usage.value.crl_sign() {
            return Err(format!(
                "CA {issuer} in {} may not sign CRLs (its keyUsage lacks cRLSign)",
                ca_path.display()
            ));
        }
    }
    Ok(ca)
}

/// webpki's error names, with the fix for the ones an operator meets.
fn webpki_reason(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnsupportedCrlVersion => {
            "only version 2 CRLs are supported (with `openssl ca -gencrl`, set crlnumber so \
             the CRL carries extensions)"
                .into()
        }
        webpki::Error::MalformedExtensions => {
            "the CRL has no extensions (RFC 5280 requires a CRL number and an authority key \
             identifier)"
                .into()
        }
        webpki::Error::UnsupportedDeltaCrl => "delta CRLs are not supported".into(),
        webpki::Error::UnsupportedIndirectCrl => "indirect CRLs are not supported".into(),
        other => format!("{other}"),
    }
}

/// One line per CA of the bundle: the CRL that covers it, or that none does.
fn log_coverage(checked: &[Checked], cas: &[X509Certificate<'_>]) {
    for (i, ca) in cas.iter().enumerate() {
        let ca_subject = subject(ca);
        let mut covered = false;
        for crl in checked.iter().filter(|c| c.ca == i) {
            covered = true;
            let file = crl.path.display().to_string();
            let next_update = crl.next_update.to_string();
            if crl.expired {
                tracing::warn!(
                    ca = %ca_subject, file, revoked_serials = crl.revoked, next_update,
                    "revocation list expired; used anyway (--allow-expired-crl)"
                );
            } else {
                tracing::info!(
                    ca = %ca_subject, file, revoked_serials = crl.revoked, next_update,
                    "revocation list loaded"
                );
            }
        }
        if !covered {
            tracing::info!(
                ca = %ca_subject,
                "no revocation list for this CA: its certificates are not checked for revocation"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replink_pki::Ca;
    use time::{Duration, OffsetDateTime};

    fn crl_der(pem: &str) -> Vec<u8> {
        CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn ca_der(ca: &Ca) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap()
    }

    fn crl(ca: &Ca, serials: &[&[u8]], next_update_in: Duration) -> String {
        let now = OffsetDateTime::now_utc();
        ca.crl_pem(serials, 1, now - Duration::hours(1), now + next_update_in)
            .unwrap()
    }

    struct Setup {
        dir: tempfile::TempDir,
        a: Ca,
        b: Ca,
        cas: Vec<CertificateDer<'static>>,
    }

    impl Setup {
        fn new() -> Setup {
            let a = Ca::new("CA a").unwrap();
            let b = Ca::new("CA b").unwrap();
            let cas = vec![ca_der(&a), ca_der(&b)];
            Setup {
                dir: tempfile::tempdir().unwrap(),
                a,
                b,
                cas,
            }
        }

        fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
            let path = self.dir.path().join(name);
            fs::write(&path, contents).unwrap();
            path
        }

        fn load(&self, paths: &[PathBuf], allow_expired: bool) -> Result<Crls, String> {
            let ca_path = self.dir.path().join("ca.pem");
            load(paths, allow_expired, &ca_path, &self.cas).map_err(|e| e.to_string())
        }
    }

    #[test]
    fn pem_with_two_crls_and_der() {
        let s = Setup::new();
        let two = format!(
            "{}{}",
            crl(&s.a, &[&[1, 2, 3]], Duration::days(7)),
            crl(&s.b, &[&[4], &[5]], Duration::days(7))
        );
        let pem = s.write("two.pem", two.as_bytes());
        let crls = s.load(std::slice::from_ref(&pem), false).unwrap();
        assert_eq!(crls.ders.len(), 2);
        assert!(crls.enforce_expiration);

        let der = s.write("a.crl", &crl_der(&crl(&s.a, &[], Duration::days(7))));
        let crls = s.load(std::slice::from_ref(&der), true).unwrap();
        assert_eq!(crls.ders.len(), 1);
        assert!(!crls.enforce_expiration);

        // The same CA twice (across files) is refused: rustls would read only the first.
        let err = s.load(&[pem, der.clone()], false).unwrap_err();
        assert!(
            err.contains("a.crl") && err.contains("already has a CRL"),
            "{err}"
        );
    }

    #[test]
    fn refusals_name_the_file_and_the_reason() {
        let s = Setup::new();
        let other = Ca::new("CA a").unwrap(); // same name as a, different key
        let stranger = Ca::new("stranger").unwrap();
        let cases: Vec<(PathBuf, &str)> = vec![
            (s.write("garbage.crl", b"\x30\x03abc"), "not a CRL"),
            (
                s.write("cert.pem", s.a.cert_pem().as_bytes()),
                "no `-----BEGIN X509 CRL-----`",
            ),
            (
                s.write(
                    "stranger.pem",
                    crl(&stranger, &[], Duration::days(1)).as_bytes(),
                ),
                "not signed by any CA certificate",
            ),
            (
                s.write("forged.pem", crl(&other, &[], Duration::days(1)).as_bytes()),
                "does not verify",
            ),
            (
                s.write(
                    "expired.pem",
                    crl(&s.a, &[], -Duration::minutes(5)).as_bytes(),
                ),
                "expired at",
            ),
        ];
        for (path, want) in &cases {
            let err = s.load(std::slice::from_ref(path), false).unwrap_err();
            assert!(
                err.contains(path.to_str().unwrap()) && err.contains(want),
                "{want}: {err}"
            );
        }
        let err = s
            .load(&[s.dir.path().join("absent.crl")], false)
            .unwrap_err();
        assert!(err.contains("absent.crl"), "{err}");
        // An expired CRL is accepted when asked for.
        assert!(s.load(&[cases[4].0.clone()], true).is_ok());
    }
}
