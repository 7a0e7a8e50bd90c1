//! `show`: what a certificate, CSR or CRL file says, for a human.

use std::fmt::Write as _;
use std::path::Path;

use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::{fingerprint, fmt_time, hex_serial, PkiError};

/// The DER of the first PEM block labelled `label`, or the bytes themselves if they are not
/// PEM. The error is the reason, for the caller to attach the file name to.
pub(crate) fn pem_or_der(bytes: &[u8], label: &str) -> Result<Vec<u8>, String> {
    if !looks_like_pem(bytes) {
        return Ok(bytes.to_vec());
    }
    let blocks = pem::parse_many(bytes).map_err(|e| format!("corrupt PEM ({e})"))?;
    blocks
        .into_iter()
        .find(|b| b.tag() == label)
        .map(|b| b.into_contents())
        .ok_or_else(|| format!("no {label} PEM block"))
}

/// The serial (INTEGER content bytes) of the certificate in `path`, PEM or DER.
pub fn cert_serial(path: &Path) -> Result<Vec<u8>, PkiError> {
    let bad = |reason: String| PkiError::Input {
        path: path.to_owned(),
        reason,
    };
    let der = pem_or_der(&crate::files::read_file(path)?, "CERTIFICATE").map_err(bad)?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| bad(format!("not a valid certificate ({e})")))?;
    Ok(cert.raw_serial().to_vec())
}

pub(crate) fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.trim_ascii_start().starts_with(b"-----BEGIN ")
}

/// Describes every certificate, CSR and CRL in the file at `path`.
pub fn describe_file(path: &Path) -> Result<String, PkiError> {
    let bytes = crate::files::read_file(path)?;
    let bad = |reason: String| PkiError::Input {
        path: path.to_owned(),
        reason,
    };
    let blocks: Vec<(String, Vec<u8>)> = if looks_like_pem(&bytes) {
        pem::parse_many(&bytes)
            .map_err(|e| bad(format!("corrupt PEM ({e})")))?
            .into_iter()
            .map(|b| (b.tag().to_owned(), b.into_contents()))
            .collect()
    } else {
        vec![(String::new(), bytes)]
    };
    if blocks.is_empty() {
        return Err(bad("no PEM blocks found".into()));
    }
    let mut out = String::new();
    let total = blocks.len();
    for (i, (label, der)) in blocks.iter().enumerate() {
        if total > 1 {
            let _ = writeln!(out, "[{} of {total}]", i + 1);
        }
        let text = match label.as_str() {
            "CERTIFICATE" => describe_cert(der),
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => describe_csr(der),
            "X509 CRL" => describe_crl(der),
            "" => describe_cert(der)
                .or_else(|_| describe_csr(der))
                .or_else(|_| describe_crl(der))
                .map_err(|_| "not a certificate, CSR or CRL in DER or PEM".to_owned()),
            l if l.contains("PRIVATE KEY") => Ok(format!("Private key ({l}): not shown\n")),
            other => Err(format!(
                "PEM block {other:?} is not a certificate, CSR or CRL"
            )),
        }
        .map_err(bad)?;
        out.push_str(&text);
    }
    Ok(out)
}

fn line(out: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "  {key:<19} {value}");
}

fn describe_cert(der: &[u8]) -> Result<String, String> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("not a valid certificate, corrupt or truncated ({e})"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".into());
    }
    let mut out = String::from("Certificate\n");
    line(&mut out, "Subject:", cert.subject());
    line(&mut out, "Issuer:", cert.issuer());
    line(&mut out, "Serial:", hex_serial(cert.raw_serial()));
    let nb = cert.validity().not_before.to_datetime();
    let na = cert.validity().not_after.to_datetime();
    let now = time::OffsetDateTime::now_utc();
    let state = if now > na {
        format!("EXPIRED {} days ago", (now - na).whole_days())
    } else if now < nb {
        "NOT YET VALID".to_owned()
    } else {
        format!("expires in {} days", (na - now).whole_days())
    };
    line(
        &mut out,
        "Valid:",
        format!("{} to {} ({state})", fmt_time(nb), fmt_time(na)),
    );
    line(&mut out, "Key:", key_text(cert.public_key()));
    line(
        &mut out,
        "Self-signed:",
        if cert.subject() == cert.issuer() {
            "yes"
        } else {
            "no"
        },
    );
    extensions(
        &mut out,
        cert.extensions().iter().map(|e| e.parsed_extension()),
    );
    line(&mut out, "SHA-256 fingerprint:", fingerprint(der));
    Ok(out)
}

fn describe_csr(der: &[u8]) -> Result<String, String> {
    let (_, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| format!("not a valid CSR, corrupt or truncated ({e})"))?;
    let mut out = String::from("Certificate signing request\n");
    let info = &csr.certification_request_info;
    line(&mut out, "Subject:", &info.subject);
    line(&mut out, "Key:", key_text(&info.subject_pki));
    line(
        &mut out,
        "Signature:",
        match csr.verify_signature() {
            Ok(()) => "valid (self-signed by the requested key)".to_owned(),
            Err(e) => format!("DOES NOT VERIFY ({e})"),
        },
    );
    if let Some(exts) = csr.requested_extensions() {
        extensions(&mut out, exts);
    }
    line(&mut out, "SHA-256 of the CSR:", fingerprint(der));
    Ok(out)
}

fn describe_crl(der: &[u8]) -> Result<String, String> {
    let (_, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| format!("not a valid CRL, corrupt or truncated ({e})"))?;
    let mut out = String::from("Certificate revocation list\n");
    line(&mut out, "Issuer:", crl.issuer());
    line(
        &mut out,
        "CRL number:",
        crl.crl_number()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "(none)".into()),
    );
    line(
        &mut out,
        "This update:",
        fmt_time(crl.last_update().to_datetime()),
    );
    let next = match crl.next_update() {
        Some(t) => {
            let t = t.to_datetime();
            if t < time::OffsetDateTime::now_utc() {
                format!("{} (EXPIRED)", fmt_time(t))
            } else {
                fmt_time(t)
            }
        }
        None => "(none)".into(),
    };
    line(&mut out, "Next update:", next);
    let revoked: Vec<_> = crl.iter_revoked_certificates().collect();
    line(&mut out, "Revoked:", revoked.len());
    for r in revoked {
        let reason = r
            .reason_code()
            .map(|(_, c)| format!(" ({c})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    {}  since {}{reason}",
            hex_serial(r.raw_serial()),
            fmt_time(r.revocation_date.to_datetime())
        );
    }
    line(&mut out, "SHA-256:", fingerprint(der));
    Ok(out)
}

fn key_text(spki: &SubjectPublicKeyInfo<'_>) -> String {
    use x509_parser::public_key::PublicKey;
    let oid = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(PublicKey::RSA(k)) => format!("RSA {} bits", k.key_size()),
        Ok(PublicKey::EC(_)) => {
            let curve = ec_curve(spki);
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => "ECDSA P-256".into(),
                "1.3.132.0.34" => "ECDSA P-384".into(),
                other => format!("EC curve {other}"),
            }
        }
        _ if oid == "1.3.101.112" => "Ed25519".into(),
        _ => format!("algorithm {oid}"),
    }
}

/// The named curve of an EC key, as a dotted OID.
pub(crate) fn ec_curve(spki: &SubjectPublicKeyInfo<'_>) -> String {
    spki.algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string())
        .unwrap_or_default()
}

fn general_name(n: &GeneralName<'_>) -> String {
    match n {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::IPAddress(b) => match b.len() {
            4 => format!("IP:{}", std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3])),
            16 => <[u8; 16]>::try_from(*b)
                .map(|a| format!("IP:{}", std::net::Ipv6Addr::from(a)))
                .unwrap_or_default(),
            _ => "IP:(malformed)".into(),
        },
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::RFC822Name(m) => format!("email:{m}"),
        other => other.to_string(),
    }
}

fn extensions<'a>(out: &mut String, exts: impl Iterator<Item = &'a ParsedExtension<'a>>) {
    for ext in exts {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                let names: Vec<String> = san.general_names.iter().map(general_name).collect();
                line(out, "Names (SAN):", names.join(", "));
            }
            ParsedExtension::BasicConstraints(bc) => line(
                out,
                "CA:",
                match (bc.ca, bc.path_len_constraint) {
                    (true, Some(n)) => format!("yes (path length {n})"),
                    (true, None) => "yes".into(),
                    (false, _) => "no".into(),
                },
            ),
            ParsedExtension::KeyUsage(ku) => line(out, "Key usage:", ku),
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let mut v = Vec::new();
                if eku.server_auth {
                    v.push("serverAuth".to_owned());
                }
                if eku.client_auth {
                    v.push("clientAuth".to_owned());
                }
                if eku.any {
                    v.push("any".to_owned());
                }
                v.extend(eku.other.iter().map(|o| o.to_id_string()));
                line(out, "Extended key usage:", v.join(", "));
            }
            ParsedExtension::CRLDistributionPoints(dps) => {
                let mut uris = Vec::new();
                for dp in dps.iter() {
                    if let Some(x509_parser::extensions::DistributionPointName::FullName(names)) =
                        &dp.distribution_point
                    {
                        uris.extend(names.iter().map(general_name));
                    }
                }
                line(out, "CRL distribution:", uris.join(", "));
            }
            ParsedExtension::SubjectKeyIdentifier(k) => {
                line(out, "Subject key id:", hex_serial(k.0))
            }
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                if let Some(k) = &a.key_identifier {
                    line(out, "Authority key id:", hex_serial(k.0))
                }
            }
            _ => {}
        }
    }
}
