//! The throwaway PKI fixture.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use replink_pki::{Identity, TestIdentities, ThrowawayPki};

use crate::{s, strings, ROUTE};

/// A certificate and key written into the PKI's dir by [`Pki::issue_client`] or
/// [`Pki::issue_server`], with the certificate's serial (for CRLs).
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub serial: Vec<u8>,
}

/// A throwaway PKI for one test: CA, server certificate for `pg.repl.test` and `*.repl.test`
/// (+ IP 127.0.0.1), client certificate, and the bad identities. Lives in a temp dir that is
/// removed when this value drops.
pub struct Pki {
    pub files: ThrowawayPki,
    pub extra: TestIdentities,
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = ThrowawayPki::mint(dir.path(), &[ROUTE, "*.repl.test"]).expect("mint PKI");
        let extra = files.mint_test_extras().expect("mint test identities");
        Pki { files, extra, dir }
    }

    /// The temp dir holding the PKI files (tests may put more files there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `--cert --key --ca` for a reverse proxy.
    pub fn server_args(&self) -> Vec<String> {
        self.identity_args(&self.files.server_cert, &self.files.server_key)
    }

    /// `--cert --key --ca` for a forward proxy.
    pub fn client_args(&self) -> Vec<String> {
        self.identity_args(&self.files.client_cert, &self.files.client_key)
    }

    /// `--cert CERT --key KEY --ca` (this PKI's CA) for either end.
    pub fn identity_args(&self, cert: &Path, key: &Path) -> Vec<String> {
        strings(&[
            "--cert",
            s(cert),
            "--key",
            s(key),
            "--ca",
            s(&self.files.ca_pem),
        ])
    }

    /// A fresh client certificate from this PKI's CA, written to `NAME.pem` and `NAME.key`
    /// (mode 0600) in [`Pki::dir`].
    pub fn issue_client(&self, name: &str) -> IssuedFiles {
        let id = self.files.ca().issue_client(name).expect("issue client");
        self.write_identity(name, id)
    }

    /// A client certificate made to `spec` (extra names, OU, validity…), written like
    /// [`Pki::issue_client`].
    pub fn issue_client_with(&self, name: &str, spec: &replink_pki::LeafSpec) -> IssuedFiles {
        let id = self.files.ca().issue_with(spec).expect("issue client");
        self.write_identity(name, id)
    }

    /// A fresh server certificate for `dns_names` and `ips`, written like
    /// [`Pki::issue_client`].
    pub fn issue_server(&self, name: &str, dns_names: &[&str], ips: &[IpAddr]) -> IssuedFiles {
        let id = self
            .files
            .ca()
            .issue_server(name, dns_names, ips)
            .expect("issue server");
        self.write_identity(name, id)
    }

    fn write_identity(&self, name: &str, id: Identity) -> IssuedFiles {
        let cert = self.dir().join(format!("{name}.pem"));
        let key = self.dir().join(format!("{name}.key"));
        replink_pki::write_public_file(&cert, id.cert_pem.as_bytes(), false).expect("write cert");
        replink_pki::write_private_file(&key, id.key_pem.as_bytes(), false).expect("write key");
        IssuedFiles {
            cert,
            key,
            serial: id.serial,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
