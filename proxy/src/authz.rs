//! Who may reach which route: per-route `allow` rules matched against the client certificate.
//!
//! A route without rules takes any client whose certificate chains to the CA (and is not
//! revoked): the CA is the policy. With rules, the client needs at least one match, else it is
//! refused with the `access_denied` alert and a `refused reason=access_denied` line. Rules:
//!
//! | rule | matches |
//! |---|---|
//! | `cn:NAME` | a subject common name, exactly |
//! | `ou:NAME` | a subject organizational unit, exactly |
//! | `dns:NAME` | a DNS subject alternative name, exactly (case-insensitive) |
//! | `uri:URI` | a URI subject alternative name, exactly (SPIFFE IDs: `uri:spiffe://…`) |
//! | `spki-sha256:HEX` | the SHA-256 of the certificate's SubjectPublicKeyInfo (64 hex digits, colons allowed; `openssl x509 -pubkey -noout \| openssl pkey -pubin -outform DER \| sha256sum`) |

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// One `allow` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowRule {
    Cn(String),
    Ou(String),
    Dns(String),
    Uri(String),
    SpkiSha256([u8; 32]),
}

impl FromStr for AllowRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, value) = s.split_once(':').ok_or_else(|| {
            format!("allow rule {s:?} is not KIND:VALUE (cn:, ou:, dns:, uri:, spki-sha256:)")
        })?;
        if value.is_empty() {
            return Err(format!("allow rule {s:?} has an empty value"));
        }
        match kind {
            "cn" => Ok(AllowRule::Cn(value.to_owned())),
            "ou" => Ok(AllowRule::Ou(value.to_owned())),
            "dns" => Ok(AllowRule::Dns(value.to_ascii_lowercase())),
            "uri" => Ok(AllowRule::Uri(value.to_owned())),
            "spki-sha256" => {
                let hex: String = value.chars().filter(|c| *c != ':').collect();
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| {
                        hex.get(i..i + 2)
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                    })
                    .collect::<Option<Vec<u8>>>();
                bytes
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(AllowRule::SpkiSha256)
                    .ok_or_else(|| format!("allow rule {s:?}: expected 64 hex digits (SHA-256)"))
            }
            _ => Err(format!(
                "allow rule {s:?}: unknown kind {kind:?} (cn, ou, dns, uri, spki-sha256)"
            )),
        }
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowRule::Cn(v) => write!(f, "cn:{v}"),
            AllowRule::Ou(v) => write!(f, "ou:{v}"),
            AllowRule::Dns(v) => write!(f, "dns:{v}"),
            AllowRule::Uri(v) => write!(f, "uri:{v}"),
            AllowRule::SpkiSha256(h) => {
                f.write_str("spki-sha256:")?;
                h.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

/// What the rules look at in a client certificate.
#[derive(Debug, Default)]
pub struct PeerIdentity {
    pub common_names: Vec<String>,
    pub org_units: Vec<String>,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    pub spki_sha256: [u8; 32],
}

impl PeerIdentity {
    /// Reads a DER certificate (already verified by the handshake).
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("client certificate does not parse: {e}"))?;
        let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
            attr.as_str().map(str::to_owned).ok()
        };
        let subject = cert.subject();
        let mut id = PeerIdentity {
            common_names: subject.iter_common_name().filter_map(text).collect(),
            org_units: subject
                .iter_organizational_unit()
                .filter_map(text)
                .collect(),
            spki_sha256: Sha256::digest(cert.public_key().raw).into(),
            ..PeerIdentity::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => id.dns_names.push(d.to_ascii_lowercase()),
                    GeneralName::URI(u) => id.uris.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(id)
    }
}

/// A route's rules: empty allows every certificate the CA signed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<AllowRule>);

impl AllowList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn permits(&self, id: &PeerIdentity) -> bool {
        self.is_empty()
            || self.0.iter().any(|rule| match rule {
                AllowRule::Cn(v) => id.common_names.iter().any(|c| c == v),
                AllowRule::Ou(v) => id.org_units.iter().any(|o| o == v),
                AllowRule::Dns(v) => id.dns_names.iter().any(|d| d == v),
                AllowRule::Uri(v) => id.uris.iter().any(|u| u == v),
                AllowRule::SpkiSha256(h) => &id.spki_sha256 == h,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_print() {
        for text in [
            "cn:replica-1",
            "ou:db",
            "dns:r1.example.com",
            "uri:spiffe://x/y",
        ] {
            assert_eq!(text.parse::<AllowRule>().unwrap().to_string(), text);
        }
        let pin = format!("spki-sha256:{}", "ab".repeat(32));
        assert_eq!(pin.parse::<AllowRule>().unwrap().to_string(), pin);
        let colons = format!("spki-sha256:{}", vec!["AB"; 32].join(":"));
        assert_eq!(colons.parse::<AllowRule>().unwrap().to_string(), pin);
        assert_eq!(
            "dns:R1.Example.COM".parse::<AllowRule>().unwrap(),
            AllowRule::Dns("r1.example.com".into())
        );
        for bad in [
            "cn",
            "cn:",
            "email:a@b",
            "spki-sha256:abcd",
            "spki-sha256:zz",
        ] {
            assert!(bad.parse::<AllowRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn permits_any_matching_rule() {
        let id = PeerIdentity {
            common_names: vec!["replica-1".into()],
            org_units: vec!["db".into()],
            dns_names: vec!["r1.example.com".into()],
            uris: vec!["spiffe://example.org/replica".into()],
            spki_sha256: [7; 32],
        };
        let list = |rules: &[&str]| AllowList(rules.iter().map(|r| r.parse().unwrap()).collect());
        assert!(list(&[]).permits(&id));
        assert!(list(&["cn:replica-2", "cn:replica-1"]).permits(&id));
        assert!(list(&["ou:db"]).permits(&id));
        assert!(list(&["dns:R1.example.com"]).permits(&id));
        assert!(list(&["uri:spiffe://example.org/replica"]).permits(&id));
        assert!(list(&[&format!("spki-sha256:{}", "07".repeat(32))]).permits(&id));
        assert!(!list(&["cn:replica"]).permits(&id));
        assert!(!list(&["uri:spiffe://example.org/other", "ou:web"]).permits(&id));
        assert!(!list(&[&format!("spki-sha256:{}", "08".repeat(32))]).permits(&id));
    }
}
