//! The throwaway PKI fixture.

use std::path::Path;

use replink_pki::{TestIdentities, ThrowawayPki};

use crate::{s, strings, ROUTE};

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
        let p = &self.files;
        strings(&[
            "--cert",
            s(&p.server_cert),
            "--key",
            s(&p.server_key),
            "--ca",
            s(&p.ca_pem),
        ])
    }

    /// `--cert --key --ca` for a forward proxy.
    pub fn client_args(&self) -> Vec<String> {
        let p = &self.files;
        strings(&[
            "--cert",
            s(&p.client_cert),
            "--key",
            s(&p.client_key),
            "--ca",
            s(&p.ca_pem),
        ])
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
