//! Certificate signing requests: making one (key + CSR for a server or a client) and reading
//! one for review (signature checked, requested names and rights extracted).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, PublicKeyData, SanType,
    SignatureAlgorithm,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::keys::KeyAlgorithm;
use crate::PkiError;

/// What a leaf certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafUsage {
    Server,
    Client,
}

impl LeafUsage {
    pub fn name(self) -> &'static str {
        match self {
            LeafUsage::Server => "server",
            LeafUsage::Client => "client",
        }
    }

    pub(crate) fn eku(self) -> ExtendedKeyUsagePurpose {
        match self {
            LeafUsage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            LeafUsage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }
    }
}

/// The subject of a new certificate or request.
#[derive(Clone, Debug, Default)]
pub struct Subject {
    pub common_name: String,
    pub organization: Option<String>,
    pub organizational_unit: Option<String>,
}

impl Subject {
    pub fn new(common_name: &str) -> Subject {
        Subject {
            common_name: common_name.to_owned(),
            ..Subject::default()
        }
    }

    pub(crate) fn to_dn(&self) -> Result<DistinguishedName, PkiError> {
        if self.common_name.trim().is_empty() {
            return Err(PkiError::Name {
                name: self.common_name.clone(),
                reason: "the common name must not be empty".into(),
            });
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.common_name.as_str());
        if let Some(o) = &self.organization {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        if let Some(ou) = &self.organizational_unit {
            dn.push(DnType::OrganizationalUnitName, ou.as_str());
        }
        Ok(dn)
    }
}

/// Checks a DNS name for a certificate: letters, digits and hyphens in labels of 1..=63,
/// at most 253 characters, and `*` only as the whole left-most label.
pub fn check_dns_name(name: &str) -> Result<(), PkiError> {
    let bad = |reason: &str| {
        Err(PkiError::Name {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    let body = name.strip_suffix('.').unwrap_or(name);
    if body.is_empty() || body.len() > 253 {
        return bad("a DNS name has 1 to 253 characters");
    }
    for (i, label) in body.split('.').enumerate() {
        if label == "*" && i == 0 && body.contains('.') {
            continue;
        }
        if label.is_empty() || label.len() > 63 {
            return bad("each label (between dots) has 1 to 63 characters");
        }
        if label.contains('*') {
            return bad("a wildcard is allowed only as the whole left-most label (*.example.com)");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label cannot start or end with '-'");
        }
    }
    Ok(())
}

/// Everything a new request says.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    pub usage: LeafUsage,
    pub subject: Subject,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub uris: Vec<String>,
    pub algorithm: KeyAlgorithm,
}

/// A new key and the CSR for it, both PEM.
pub struct NewRequest {
    pub key_pem: String,
    pub csr_pem: String,
}

/// Generates a key and a CSR asking for `spec` (with the matching extended key usage, so the
/// CA can tell a server request from a client one).
pub fn new_request(spec: &RequestSpec) -> Result<NewRequest, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = spec.subject.to_dn()?;
    if spec.usage == LeafUsage::Server && spec.dns_names.is_empty() && spec.ips.is_empty() {
        return Err(PkiError::Name {
            name: spec.subject.common_name.clone(),
            reason: "a server certificate needs at least one DNS name (-d) or IP address (--ip-address): TLS clients check those, not the common name".into(),
        });
    }
    for name in &spec.dns_names {
        check_dns_name(name)?;
        params
            .subject_alt_names
            .push(SanType::DnsName(name.as_str().try_into().map_err(
                |e: rcgen::Error| PkiError::Name {
                    name: name.clone(),
                    reason: e.to_string(),
                },
            )?));
    }
    params
        .subject_alt_names
        .extend(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    for uri in &spec.uris {
        if !uri.contains(':') || uri.chars().any(|c| c.is_whitespace()) {
            return Err(PkiError::Name {
                name: uri.clone(),
                reason:
                    "a URI SAN looks like scheme:rest without spaces (spiffe://trust-domain/path)"
                        .into(),
            });
        }
        params
            .subject_alt_names
            .push(SanType::URI(uri.as_str().try_into().map_err(
                |e: rcgen::Error| PkiError::Name {
                    name: uri.clone(),
                    reason: e.to_string(),
                },
            )?));
    }
    params.extended_key_usages = vec![spec.usage.eku()];
    let key = spec.algorithm.generate()?;
    let csr = params.serialize_request(&key)?;
    Ok(NewRequest {
        key_pem: crate::keys::key_pem(&key)?,
        csr_pem: csr.pem()?,
    })
}

/// A subject public key taken from a CSR, in the form rcgen signs.
pub(crate) struct RequestedKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
    pub(crate) description: String,
}

impl PublicKeyData for RequestedKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &SignatureAlgorithm {
        self.alg
    }
}

/// A CSR read from a file, its signature verified, its contents extracted for review.
pub struct ParsedRequest {
    pub path: PathBuf,
    pub(crate) subject: DistinguishedName,
    /// The subject as text (`CN=…, O=…`).
    pub subject_text: String,
    pub(crate) sans: Vec<SanType>,
    /// The SANs as text (`DNS:…`, `IP:…`, `URI:…`).
    pub san_text: Vec<String>,
    /// What the request's extended key usage asks for, if it has one.
    pub requested_server: bool,
    pub requested_client: bool,
    pub has_eku: bool,
    /// basicConstraints CA:TRUE, or key usage keyCertSign/cRLSign.
    pub asks_for_ca: bool,
    /// Requested things that will not be copied into the certificate.
    pub ignored: Vec<String>,
    pub(crate) key: RequestedKey,
}

impl ParsedRequest {
    /// Reads a CSR (PEM `CERTIFICATE REQUEST` / `NEW CERTIFICATE REQUEST`, or DER).
    pub fn read(path: &Path) -> Result<ParsedRequest, PkiError> {
        let bytes = crate::files::read_file(path)?;
        let bad = |reason: String| PkiError::Input {
            path: path.to_owned(),
            reason,
        };
        let der = if crate::inspect::looks_like_pem(&bytes) {
            let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes)
                .map_err(|e| bad(format!("corrupt PEM ({e})")))?;
            if !pem.label.contains("CERTIFICATE REQUEST") {
                return Err(bad(format!(
                    "holds a {:?} PEM block, not a CERTIFICATE REQUEST",
                    pem.label
                )));
            }
            pem.contents
        } else {
            bytes
        };
        let (rest, csr) = X509CertificationRequest::from_der(&der)
            .map_err(|e| bad(format!("not a valid CSR, corrupt or truncated ({e})")))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after the CSR".into()));
        }
        csr.verify_signature().map_err(|e| {
            bad(format!(
                "the CSR's signature does not verify ({e}): it was altered or corrupted after it was made"
            ))
        })?;
        Self::from_parsed(path, &csr)
    }

    fn from_parsed(path: &Path, csr: &X509CertificationRequest<'_>) -> Result<Self, PkiError> {
        let bad = |reason: String| PkiError::Input {
            path: path.to_owned(),
            reason,
        };
        let info = &csr.certification_request_info;
        let subject = dn_from_name(&info.subject).map_err(bad)?;
        let mut parsed = ParsedRequest {
            path: path.to_owned(),
            subject,
            subject_text: info.subject.to_string(),
            sans: Vec::new(),
            san_text: Vec::new(),
            requested_server: false,
            requested_client: false,
            has_eku: false,
            asks_for_ca: false,
            ignored: Vec::new(),
            key: requested_key(path, &info.subject_pki)?,
        };
        for ext in csr.requested_extensions().into_iter().flatten() {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        parsed.add_san(name);
                    }
                }
                ParsedExtension::BasicConstraints(bc) => {
                    if bc.ca {
                        parsed.asks_for_ca = true;
                    }
                }
                ParsedExtension::KeyUsage(ku) => {
                    if ku.key_cert_sign() || ku.crl_sign() {
                        parsed.asks_for_ca = true;
                    }
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    parsed.has_eku = true;
                    parsed.requested_server |= eku.server_auth || eku.any;
                    parsed.requested_client |= eku.client_auth || eku.any;
                }
                other => parsed.ignored.push(
                    format!("requested extension {other:?}")
                        .chars()
                        .take(80)
                        .collect(),
                ),
            }
        }
        Ok(parsed)
    }

    fn add_san(&mut self, name: &GeneralName<'_>) {
        let (san, text) = match name {
            GeneralName::DNSName(d) => match (*d).try_into() {
                Ok(ia5) => (SanType::DnsName(ia5), format!("DNS:{d}")),
                Err(_) => return self.ignored.push(format!("DNS name {d:?} (not IA5)")),
            },
            GeneralName::URI(u) => match (*u).try_into() {
                Ok(ia5) => (SanType::URI(ia5), format!("URI:{u}")),
                Err(_) => return self.ignored.push(format!("URI {u:?} (not IA5)")),
            },
            GeneralName::RFC822Name(m) => match (*m).try_into() {
                Ok(ia5) => (SanType::Rfc822Name(ia5), format!("email:{m}")),
                Err(_) => return self.ignored.push(format!("email {m:?} (not IA5)")),
            },
            GeneralName::IPAddress(bytes) => match ip_from_bytes(bytes) {
                Some(ip) => (SanType::IpAddress(ip), format!("IP:{ip}")),
                None => return self.ignored.push("IP address SAN of odd length".into()),
            },
            other => {
                return self
                    .ignored
                    .push(format!("subject alternative name {other}"))
            }
        };
        self.sans.push(san);
        self.san_text.push(text);
    }

    /// The DNS-name text of the common name, if it reads like one (for a server CSR that
    /// carries its name only there, as an `openssl req` made without -addext does).
    pub(crate) fn common_name_as_dns(&self) -> Option<String> {
        let cn = self.subject.iter().find_map(|(t, v)| match (t, v) {
            (DnType::CommonName, rcgen::DnValue::Utf8String(s)) => Some(s.clone()),
            (DnType::CommonName, rcgen::DnValue::PrintableString(s)) => Some(s.to_string()),
            _ => None,
        })?;
        (cn.contains('.') && check_dns_name(&cn).is_ok()).then_some(cn)
    }

    pub fn key_description(&self) -> &str {
        &self.key.description
    }
}

/// The subject of a CSR in rcgen's form: every attribute kept, values as UTF-8 strings.
fn dn_from_name(name: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for attr in name.iter_attributes() {
        let oid = attr.attr_type();
        let value = attr
            .as_str()
            .map_err(|_| format!("subject attribute {oid} is not a string"))?;
        let ty = match oid.to_id_string().as_str() {
            "2.5.4.3" => DnType::CommonName,
            "2.5.4.6" => DnType::CountryName,
            "2.5.4.7" => DnType::LocalityName,
            "2.5.4.8" => DnType::StateOrProvinceName,
            "2.5.4.10" => DnType::OrganizationName,
            "2.5.4.11" => DnType::OrganizationalUnitName,
            _ => {
                let arcs: Vec<u64> = oid
                    .iter()
                    .ok_or_else(|| format!("subject attribute {oid} has an unsupported type"))?
                    .collect();
                DnType::CustomDnType(arcs)
            }
        };
        dn.push(ty, rcgen::DnValue::Utf8String(value.to_owned()));
    }
    Ok(dn)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn requested_key(
    path: &Path,
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<RequestedKey, PkiError> {
    use x509_parser::public_key::PublicKey;
    let refuse = |reason: String| PkiError::Refused {
        path: path.to_owned(),
        reason,
    };
    let raw = spki.subject_public_key.data.to_vec();
    let parsed = spki
        .parsed()
        .map_err(|e| refuse(format!("the public key cannot be read ({e})")))?;
    let (alg, description): (&'static SignatureAlgorithm, String) = match parsed {
        PublicKey::EC(point) => {
            let curve = crate::inspect::ec_curve(spki);
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => (&rcgen::PKCS_ECDSA_P256_SHA256, "ECDSA P-256".into()),
                "1.3.132.0.34" => (&rcgen::PKCS_ECDSA_P384_SHA384, "ECDSA P-384".into()),
                _ => {
                    return Err(refuse(format!(
                        "EC key on curve {curve} ({} bits) is not supported (P-256 or P-384)",
                        point.key_size()
                    )))
                }
            }
        }
        PublicKey::RSA(rsa) => {
            let bits = rsa.key_size();
            if bits < 2048 {
                return Err(refuse(format!(
                    "RSA key of {bits} bits is too weak (2048 at least; 3072 recommended)"
                )));
            }
            (&rcgen::PKCS_RSA_SHA256, format!("RSA {bits}"))
        }
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
            (&rcgen::PKCS_ED25519, "Ed25519".into())
        }
        _ => {
            return Err(refuse(format!(
                "key algorithm {} is not supported (ECDSA P-256/P-384, Ed25519, RSA)",
                spki.algorithm.algorithm.to_id_string()
            )))
        }
    };
    Ok(RequestedKey {
        raw,
        alg,
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_name_rules() {
        for ok in [
            "a.example",
            "*.repl.example.com",
            "db-1.x",
            "localhost",
            "x.y.",
        ] {
            check_dns_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "*",
            "a.*.b",
            "-a.b",
            "a b.c",
            "a..b",
            "foo*.b",
            &"a".repeat(64),
        ] {
            assert!(check_dns_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_new_request_reads_back_with_its_names_and_usage() {
        let dir = tempfile::tempdir().unwrap();
        for usage in [LeafUsage::Server, LeafUsage::Client] {
            let spec = RequestSpec {
                usage,
                subject: Subject::new("Primary"),
                dns_names: vec!["*.repl.example.com".into()],
                ips: vec!["203.0.113.7".parse().unwrap()],
                uris: vec!["spiffe://repl/primary".into()],
                algorithm: KeyAlgorithm::EcdsaP256,
            };
            let new = new_request(&spec).unwrap();
            let p = dir.path().join(format!("{}.csr", usage.name()));
            std::fs::write(&p, &new.csr_pem).unwrap();
            let csr = ParsedRequest::read(&p).unwrap();
            assert_eq!(csr.subject_text, "CN=Primary");
            assert_eq!(
                csr.san_text,
                [
                    "DNS:*.repl.example.com",
                    "IP:203.0.113.7",
                    "URI:spiffe://repl/primary"
                ]
            );
            assert_eq!(csr.requested_server, usage == LeafUsage::Server);
            assert_eq!(csr.requested_client, usage == LeafUsage::Client);
            assert!(!csr.asks_for_ca);
        }
    }
}
