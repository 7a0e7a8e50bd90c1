//! In-memory minting for `replink demo` and the test suites: a CA, leaf certificates and
//! a throwaway PKI written to a directory. The operator's workflow is in [`crate::authority`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::files::{write_private_file, write_public_file};
use crate::keys::{random_serial, KeyAlgorithm};
use crate::request::LeafUsage;
use crate::PkiError;

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate's serial number, big-endian bytes.
    pub serial: Vec<u8>,
}

/// Everything that varies between leaf certificates.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// URI subject alternative names (SPIFFE IDs).
    pub uris: Vec<String>,
    /// Subject organizational unit.
    pub org_unit: Option<String>,
    pub usage: LeafUsage,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub algorithm: KeyAlgorithm,
}

impl LeafSpec {
    fn new(common_name: &str, usage: LeafUsage) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            common_name: common_name.to_owned(),
            dns_names: Vec::new(),
            ips: Vec::new(),
            uris: Vec::new(),
            org_unit: None,
            usage,
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(365),
            algorithm: KeyAlgorithm::default(),
        }
    }

    pub fn server(common_name: &str) -> Self {
        Self::new(common_name, LeafUsage::Server)
    }

    pub fn client(common_name: &str) -> Self {
        Self::new(common_name, LeafUsage::Client)
    }
}

/// A subject alternative name's IA5 string.
fn ia5(name: &str) -> Result<rcgen::Ia5String, PkiError> {
    name.to_owned()
        .try_into()
        .map_err(|e: rcgen::Error| PkiError::Name {
            name: name.to_owned(),
            reason: e.to_string(),
        })
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A certificate authority held in memory.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    /// A self-signed CA valid from yesterday for ten years.
    pub fn new(common_name: &str) -> Result<Ca, PkiError> {
        let key = KeyAlgorithm::EcdsaP256.generate()?;
        let mut params = CertificateParams::default();
        let now = OffsetDateTime::now_utc();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn issue_server(
        &self,
        common_name: &str,
        dns_names: &[&str],
        ips: &[IpAddr],
    ) -> Result<Identity, PkiError> {
        let mut spec = LeafSpec::server(common_name);
        spec.dns_names = dns_names.iter().map(|s| s.to_string()).collect();
        spec.ips = ips.to_vec();
        self.issue_with(&spec)
    }

    pub fn issue_client(&self, common_name: &str) -> Result<Identity, PkiError> {
        self.issue_with(&LeafSpec::client(common_name))
    }

    pub fn issue_with(&self, spec: &LeafSpec) -> Result<Identity, PkiError> {
        let key = spec.algorithm.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&spec.common_name);
        if let Some(ou) = &spec.org_unit {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, ou.as_str());
        }
        for uri in &spec.uris {
            params.subject_alt_names.push(SanType::URI(ia5(uri)?));
        }
        for name in &spec.dns_names {
            params.subject_alt_names.push(SanType::DnsName(ia5(name)?));
        }
        params
            .subject_alt_names
            .extend(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![spec.usage.eku()];
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        let serial = random_serial()?;
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial.to_bytes(),
        })
    }

    /// A CRL (PEM) signed by this CA that revokes `serials` (big-endian bytes) as of
    /// `this_update`, valid until `next_update` (tests pass a past `next_update` for an
    /// expired CRL).
    pub fn crl_pem(
        &self,
        serials: &[&[u8]],
        crl_number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String, PkiError> {
        let params = rcgen::CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: this_update,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: self.cert.params().key_identifier_method.clone(),
        };
        Ok(params.signed_by(&self.cert, &self.key)?.pem()?)
    }
}

/// A complete throwaway PKI in one directory, for `replink demo` and the tests.
pub struct ThrowawayPki {
    pub dir: PathBuf,
    pub ca_pem: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    ca: Ca,
}

/// Identities that tests use to check refusals and file-format tolerance.
pub struct TestIdentities {
    pub other_ca_pem: PathBuf,
    pub other_ca_client_cert: PathBuf,
    pub other_ca_client_key: PathBuf,
    pub expired_client_cert: PathBuf,
    pub expired_client_key: PathBuf,
    /// Client key and certificate in one PEM file, key first.
    pub combined_client_pem: PathBuf,
    /// An unrelated CA certificate followed by the real CA certificate.
    pub ca_bundle_pem: PathBuf,
}

impl ThrowawayPki {
    /// Mints a CA, a server certificate for `server_names` (DNS SANs, the first is the CN;
    /// plus IP 127.0.0.1) and a client certificate, and writes them into `dir`.
    pub fn mint(dir: &Path, server_names: &[&str]) -> Result<ThrowawayPki, PkiError> {
        let ca = Ca::new("replink throwaway CA")?;
        let cn = server_names.first().copied().unwrap_or("localhost");
        let server = ca.issue_server(cn, server_names, &[IpAddr::from([127, 0, 0, 1])])?;
        let client = ca.issue_client("replink-demo-client")?;
        let pki = ThrowawayPki {
            dir: dir.to_owned(),
            ca_pem: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            ca,
        };
        write_public_file(&pki.ca_pem, pki.ca.cert_pem().as_bytes(), false)?;
        write_public_file(&pki.server_cert, server.cert_pem.as_bytes(), false)?;
        write_private_file(&pki.server_key, server.key_pem.as_bytes(), false)?;
        write_public_file(&pki.client_cert, client.cert_pem.as_bytes(), false)?;
        write_private_file(&pki.client_key, client.key_pem.as_bytes(), false)?;
        Ok(pki)
    }

    /// The CA, to issue more certificates.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    pub fn mint_test_extras(&self) -> Result<TestIdentities, PkiError> {
        let d = &self.dir;
        let other = Ca::new("some other CA")?;
        let other_client = other.issue_client("intruder")?;
        let mut expired = LeafSpec::client("expired-client");
        let now = OffsetDateTime::now_utc();
        expired.not_before = now - Duration::days(30);
        expired.not_after = now - Duration::days(1);
        let expired = self.ca.issue_with(&expired)?;
        let combined = self.ca.issue_client("combined-client")?;
        let ids = TestIdentities {
            other_ca_pem: d.join("other-ca.pem"),
            other_ca_client_cert: d.join("other-client.pem"),
            other_ca_client_key: d.join("other-client.key"),
            expired_client_cert: d.join("expired-client.pem"),
            expired_client_key: d.join("expired-client.key"),
            combined_client_pem: d.join("combined-client.pem"),
            ca_bundle_pem: d.join("ca-bundle.pem"),
        };
        write_public_file(&ids.other_ca_pem, other.cert_pem().as_bytes(), true)?;
        write_public_file(
            &ids.other_ca_client_cert,
            other_client.cert_pem.as_bytes(),
            true,
        )?;
        write_private_file(
            &ids.other_ca_client_key,
            other_client.key_pem.as_bytes(),
            true,
        )?;
        write_public_file(&ids.expired_client_cert, expired.cert_pem.as_bytes(), true)?;
        write_private_file(&ids.expired_client_key, expired.key_pem.as_bytes(), true)?;
        let combined_pem = format!("{}{}", combined.key_pem, combined.cert_pem);
        write_private_file(&ids.combined_client_pem, combined_pem.as_bytes(), true)?;
        let bundle = format!("{}{}", other.cert_pem(), self.ca.cert_pem());
        write_public_file(&ids.ca_bundle_pem, bundle.as_bytes(), true)?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn openssl_verify(ca: &Path, cert: &Path) -> (bool, String) {
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(ca)
            .arg(cert)
            .output()
            .expect("openssl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    #[test]
    fn throwaway_pki_is_valid_for_openssl_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ThrowawayPki::mint(dir.path(), &["pg.repl.test", "*.repl.test"]).unwrap();
        for key in [&pki.server_key, &pki.client_key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        assert!(openssl_verify(&pki.ca_pem, &pki.server_cert).0);
        assert!(openssl_verify(&pki.ca_pem, &pki.client_cert).0);
        let eku = Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-ext",
                "extendedKeyUsage,subjectAltName",
                "-in",
            ])
            .arg(&pki.server_cert)
            .output()
            .unwrap();
        let eku = String::from_utf8_lossy(&eku.stdout);
        assert!(eku.contains("TLS Web Server Authentication"), "{eku}");
        assert!(
            eku.contains("DNS:*.repl.test") && eku.contains("IP Address:127.0.0.1"),
            "{eku}"
        );

        let ids = pki.mint_test_extras().unwrap();
        let (ok, text) = openssl_verify(&pki.ca_pem, &ids.expired_client_cert);
        assert!(!ok && text.contains("expired"), "{text}");
        let (ok, _) = openssl_verify(&pki.ca_pem, &ids.other_ca_client_cert);
        assert!(!ok, "another CA's certificate must not verify");
        assert!(openssl_verify(&ids.ca_bundle_pem, &pki.client_cert).0);
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        ThrowawayPki::mint(dir.path(), &["a.test"]).unwrap();
        let err = ThrowawayPki::mint(dir.path(), &["a.test"]).err().unwrap();
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    }
}
