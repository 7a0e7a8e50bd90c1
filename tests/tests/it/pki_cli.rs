//! `replink-pki` checked by tools we did not write: everything it emits is read and verified
//! by OpenSSL, a CSR made by `openssl req` is signed and verifies, the interactive prompts
//! work on a real pseudo-terminal, and bad input gets its own error with nothing written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use replink_tests::{replink_pki_bin, run_cmd, running_as_root, CmdOutput, Input};

const T: Duration = Duration::from_secs(60);
const PASSWORD: &str = "correct horse battery";

fn pki(args: &[&str]) -> CmdOutput {
    run_cmd(pki_path(), args, Input::Null, T)
}

fn pki_path() -> &'static str {
    replink_pki_bin().to_str().expect("UTF-8 path")
}

fn openssl(args: &[&str]) -> CmdOutput {
    run_cmd("openssl", args, Input::Null, T)
}

#[track_caller]
fn ok(out: CmdOutput) -> CmdOutput {
    assert!(out.success(), "`{}` failed:\n{}", out.command, out.text());
    out
}

/// Asserts exit code `code` and that the output mentions every one of `needles`.
#[track_caller]
fn fails_with(out: CmdOutput, code: i32, needles: &[&str]) {
    let text = out.text();
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(code),
        "`{}` should exit {code}:\n{text}",
        out.command
    );
    for n in needles {
        assert!(
            text.contains(n),
            "`{}` output lacks {n:?}:\n{text}",
            out.command
        );
    }
    assert!(!text.contains("panicked"), "{text}");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A working directory with a password file and paths for the five-command workflow.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let w = Work {
            dir: tempfile::tempdir().unwrap(),
        };
        let pw = w.p("pw");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        w
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.p(name).to_str().unwrap().to_owned()
    }

    fn create_ca(&self, key_type: &str) {
        ok(pki(&[
            "create-ca",
            "--valid-days",
            "1825",
            "--dn-common-name",
            "MyInstance Replication Root CA",
            "--key-type",
            key_type,
            "-o",
            &self.s("ca-certs"),
            "--password-file",
            &self.s("pw"),
        ]));
    }

    fn create(&self, kind: &str, cn: &str, key_type: &str, extra: &[&str]) {
        let dir = self.s(&format!("{kind}-certs"));
        let mut args = vec![
            match kind {
                "server" => "create-server",
                _ => "create-client",
            },
            "--valid-days",
            "365",
            "--dn-common-name",
            cn,
            "--key-type",
            key_type,
            "-o",
            &dir,
        ];
        args.extend_from_slice(extra);
        ok(pki(&args));
    }

    fn sign(&self, kind: &str, csr: &str, out: &str, extra: &[&str]) -> CmdOutput {
        let cmd = format!("sign-{kind}-csr");
        let (ca, csr, out, pw) = (self.s("ca-certs"), self.s(csr), self.s(out), self.s("pw"));
        let mut args = vec![
            cmd.as_str(),
            "--valid-days",
            "365",
            "--ca-dir",
            &ca,
            "--input-csr",
            &csr,
            "--output",
            &out,
            "--password-file",
            &pw,
        ];
        args.extend_from_slice(extra);
        pki(&args)
    }

    /// `sign-server-csr --yes` of `server-certs/server.csr` to `out.pem` with another CA
    /// directory and password file (or none).
    fn sign_server_csr_with(&self, ca_dir: &str, password_file: Option<&str>) -> CmdOutput {
        let (csr, out) = (self.s("server-certs/server.csr"), self.s("out.pem"));
        let mut args = vec![
            "sign-server-csr",
            "--ca-dir",
            ca_dir,
            "--input-csr",
            &csr,
            "--output",
            &out,
            "--yes",
        ];
        if let Some(pw) = password_file {
            args.extend(["--password-file", pw]);
        }
        pki(&args)
    }

    fn five_commands(&self, key_type: &str) {
        self.create_ca(key_type);
        self.create(
            "server",
            "Primary",
            key_type,
            &[
                "-d",
                "*.repl.example.com",
                "-d",
                "pg.repl.test",
                "--ip-address",
                "203.0.113.7",
                "--ip-address",
                "127.0.0.1",
            ],
        );
        self.create("client", "replica-zurich", key_type, &[]);
        ok(self.sign(
            "server",
            "server-certs/server.csr",
            "server.pem",
            &["--yes"],
        ));
        ok(self.sign(
            "client",
            "client-certs/client.csr",
            "client.pem",
            &["--yes"],
        ));
    }

    fn serial(&self, cert: &str) -> String {
        let out = ok(openssl(&[
            "x509",
            "-noout",
            "-serial",
            "-in",
            &self.s(cert),
        ]));
        out.stdout_text()
            .trim()
            .trim_start_matches("serial=")
            .to_owned()
    }
}

#[test]
fn five_commands_emit_what_openssl_accepts_for_every_key_type() {
    for key_type in ["ecdsa-p256", "ed25519", "rsa-3072"] {
        let w = Work::new();
        w.five_commands(key_type);
        let ca = w.s("ca-certs/ca.pem");
        let v = ok(openssl(&[
            "verify",
            "-CAfile",
            &ca,
            &w.s("server.pem"),
            &w.s("client.pem"),
        ]));
        assert!(v.stdout_text().contains("server.pem: OK"), "{}", v.text());
        // Purposes: the server certificate is for servers only, the client's for clients.
        ok(openssl(&[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            &ca,
            &w.s("server.pem"),
        ]));
        ok(openssl(&[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            &ca,
            &w.s("client.pem"),
        ]));
        assert!(!openssl(&[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            &ca,
            &w.s("server.pem")
        ])
        .success());
        assert!(!openssl(&[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            &ca,
            &w.s("client.pem")
        ])
        .success());

        let text = ok(openssl(&[
            "x509",
            "-noout",
            "-text",
            "-in",
            &w.s("server.pem"),
        ]))
        .text();
        for want in [
            "Subject: CN = Primary",
            "DNS:*.repl.example.com",
            "DNS:pg.repl.test",
            "IP Address:203.0.113.7",
            "TLS Web Server Authentication",
            "CA:FALSE",
        ] {
            assert!(
                text.contains(want),
                "{key_type}: server cert lacks {want}:\n{text}"
            );
        }
        let ca_text = ok(openssl(&["x509", "-noout", "-text", "-in", &ca])).text();
        assert!(
            ca_text.contains("CA:TRUE") && ca_text.contains("Certificate Sign, CRL Sign"),
            "{ca_text}"
        );
        for csr in ["server-certs/server.csr", "client-certs/client.csr"] {
            let out = ok(openssl(&[
                "req",
                "-noout",
                "-text",
                "-verify",
                "-in",
                &w.s(csr),
            ]));
            assert!(
                out.text().contains("verify OK")
                    || out
                        .text()
                        .contains("Certificate request self-signature verify OK"),
                "{}",
                out.text()
            );
        }

        // The CA key is encrypted: openssl opens it with the password and only with it.
        let key = w.s("ca-certs/ca.key");
        let head = std::fs::read_to_string(&key).unwrap();
        assert!(
            head.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{head}"
        );
        ok(openssl(&[
            "pkey",
            "-noout",
            "-in",
            &key,
            "-passin",
            &format!("file:{}", w.s("pw")),
        ]));
        assert!(!openssl(&[
            "pkey",
            "-noout",
            "-in",
            &key,
            "-passin",
            "pass:not the password"
        ])
        .success());
        for k in ["server-certs/server.key", "client-certs/client.key"] {
            ok(openssl(&[
                "pkey",
                "-noout",
                "-in",
                &w.s(k),
                "-passin",
                "pass:",
            ]));
        }

        // Modes: secrets 0600, public files 0644.
        for f in [
            "ca-certs/ca.key",
            "server-certs/server.key",
            "client-certs/client.key",
        ] {
            assert_eq!(mode(&w.p(f)), 0o600, "{f}");
        }
        for f in [
            "ca-certs/ca.pem",
            "server-certs/server.csr",
            "client-certs/client.csr",
            "server.pem",
        ] {
            assert_eq!(mode(&w.p(f)), 0o644, "{f}");
        }
        // Serials are at least 64 bits (ours: 16 bytes) and different.
        let (a, b) = (w.serial("server.pem"), w.serial("client.pem"));
        assert!(a.len() >= 16 && a != b, "{a} {b}");
        assert!(
            w.p(&format!("ca-certs/issued/{a}.pem")).exists(),
            "issued/ record of {a}"
        );

        // show describes all three kinds of file.
        let shown = ok(pki(&[
            "show",
            &w.s("server.pem"),
            &w.s("client-certs/client.csr"),
            &ca,
        ]))
        .stdout_text();
        for want in [
            "Certificate\n",
            "Certificate signing request",
            "DNS:*.repl.example.com",
            &format!("Serial:             {a}"),
            "SHA-256 fingerprint:",
            "valid (self-signed by the requested key)",
        ] {
            assert!(shown.contains(want), "show lacks {want:?}:\n{shown}");
        }
    }
}

#[test]
fn csrs_made_by_openssl_req_are_signed_and_verify() {
    let w = Work::new();
    w.create_ca("ecdsa-p256");
    let ca = w.s("ca-certs/ca.pem");
    // A server CSR with a SAN, an RSA client CSR with no extensions at all, and a server CSR
    // whose only name is its CN (as `openssl req` makes it by default).
    let reqs: [(&str, &[&str]); 3] = [
        (
            "srv",
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-subj",
                "/O=Example/CN=db.example.com",
                "-addext",
                "subjectAltName=DNS:db.example.com,IP:10.0.0.5",
            ],
        ),
        ("cli", &["-newkey", "rsa:2048", "-subj", "/CN=replica-1"]),
        (
            "cn",
            &["-newkey", "ed25519", "-subj", "/CN=only-cn.example.com"],
        ),
    ];
    for (name, extra) in reqs {
        let (key, csr) = (w.s(&format!("{name}.key")), w.s(&format!("{name}.csr")));
        let mut args = vec!["req", "-new", "-nodes", "-keyout", &key, "-out", &csr];
        args.extend_from_slice(extra);
        ok(openssl(&args));
    }
    let out = ok(w.sign(
        "server",
        "srv.csr",
        "srv.pem",
        &[
            "--yes",
            "--chain",
            "--crl-url",
            "http://crl.example/root.crl",
        ],
    ));
    assert!(
        out.text().contains("DNS:db.example.com, IP:10.0.0.5"),
        "{}",
        out.text()
    );
    ok(w.sign("client", "cli.csr", "cli.pem", &["--yes"]));
    let out = ok(w.sign("server", "cn.csr", "cn.pem", &["--yes"]));
    assert!(
        out.text()
            .contains("its common name only-cn.example.com becomes the DNS name"),
        "{}",
        out.text()
    );

    ok(openssl(&[
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        &ca,
        &w.s("srv.pem"),
        &w.s("cn.pem"),
    ]));
    ok(openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        &ca,
        &w.s("cli.pem"),
    ]));
    let text = ok(openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        &w.s("srv.pem"),
    ]))
    .text();
    assert!(
        text.contains("Subject: O = Example, CN = db.example.com"),
        "{text}"
    );
    assert!(text.contains("URI:http://crl.example/root.crl"), "{text}");
    assert!(
        ok(openssl(&["x509", "-noout", "-text", "-in", &w.s("cn.pem")]))
            .text()
            .contains("DNS:only-cn.example.com")
    );
    let cli = ok(openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        &w.s("cli.pem"),
    ]))
    .text();
    assert!(
        cli.contains("Key Encipherment") && cli.contains("TLS Web Client Authentication"),
        "{cli}"
    );
    // --chain: leaf then CA.
    let chain = std::fs::read_to_string(w.p("srv.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(chain.ends_with(&std::fs::read_to_string(w.p("ca-certs/ca.pem")).unwrap()));
}

#[test]
fn crls_are_numbered_appended_and_enforced_by_openssl() {
    let w = Work::new();
    w.five_commands("ecdsa-p256");
    w.create("client", "replica-2", "ecdsa-p256", &["--force"]);
    ok(w.sign(
        "client",
        "client-certs/client.csr",
        "client2.pem",
        &["--yes"],
    ));
    let ca = w.s("ca-certs/ca.pem");
    let crl = w.s("revoked.crl");
    let serial1 = w.serial("client.pem");
    ok(pki(&[
        "generate-crl",
        "--ca-dir",
        &w.s("ca-certs"),
        "--serial",
        &serial1,
        "--reason",
        "keyCompromise",
        "--output",
        &crl,
        "--password-file",
        &w.s("pw"),
    ]));
    let text = ok(openssl(&["crl", "-noout", "-text", "-in", &crl])).text();
    assert!(
        text.contains(&format!("Serial Number: {serial1}")),
        "{text}"
    );
    assert!(
        text.contains("X509v3 CRL Number: \n                1") || text.contains("CRL Number:"),
        "{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    let sig = ok(openssl(&["crl", "-noout", "-in", &crl, "-CAfile", &ca])).text();
    assert!(sig.contains("verify OK"), "{sig}");

    let check = |cert: &str| {
        openssl(&[
            "verify",
            "-crl_check",
            "-CRLfile",
            &crl,
            "-CAfile",
            &ca,
            &w.s(cert),
        ])
    };
    let revoked = check("client.pem");
    assert!(
        !revoked.success() && revoked.text().contains("certificate revoked"),
        "{}",
        revoked.text()
    );
    ok(check("client2.pem"));
    ok(check("server.pem"));

    // Append the second client by certificate file: the CRL keeps the first, number 2.
    ok(pki(&[
        "generate-crl",
        "--ca-dir",
        &w.s("ca-certs"),
        "--cert",
        &w.s("client2.pem"),
        "--append-to",
        &crl,
        "--output",
        &crl,
        "--password-file",
        &w.s("pw"),
    ]));
    let text = ok(openssl(&["crl", "-noout", "-text", "-in", &crl])).text();
    let serial2 = w.serial("client2.pem");
    assert!(text.contains(&serial1) && text.contains(&serial2), "{text}");
    let shown = ok(pki(&["show", &crl])).stdout_text();
    assert!(
        shown.contains("CRL number:         2") && shown.contains("Revoked:            2"),
        "{shown}"
    );
    assert!(!check("client2.pem").success());
    ok(check("server.pem"));

    // A fresh CRL (no append) still gets the next number from the CA directory.
    let crl3 = w.s("fresh.crl");
    ok(pki(&[
        "generate-crl",
        "--ca-dir",
        &w.s("ca-certs"),
        "--output",
        &crl3,
        "--password-file",
        &w.s("pw"),
    ]));
    assert!(ok(pki(&["show", &crl3]))
        .stdout_text()
        .contains("CRL number:         3"));
    // A CRL of another CA cannot be appended to.
    let other = Work::new();
    other.create_ca("ed25519");
    let crl_other = other.s("other.crl");
    ok(pki(&[
        "generate-crl",
        "--ca-dir",
        &other.s("ca-certs"),
        "--output",
        &crl_other,
        "--password-file",
        &other.s("pw"),
    ]));
    fails_with(
        pki(&[
            "generate-crl",
            "--ca-dir",
            &w.s("ca-certs"),
            "--append-to",
            &crl_other,
            "--output",
            &w.s("x.crl"),
            "--password-file",
            &w.s("pw"),
        ]),
        1,
        &["not signed by this CA"],
    );
    assert!(!w.p("x.crl").exists());
}

#[test]
fn bad_input_gets_its_own_error_and_writes_nothing() {
    let w = Work::new();
    w.five_commands("ecdsa-p256");
    let listing = || {
        let mut v: Vec<String> = walk(w.dir.path());
        v.sort();
        v
    };
    let before = listing();

    // A CSR asking for CA rights.
    ok(openssl(&[
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-keyout",
        &w.s("ca-req.key"),
        "-out",
        &w.s("ca-req.csr"),
        "-subj",
        "/CN=sub.example.com",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "subjectAltName=DNS:sub.example.com",
    ]));
    let before_ca = listing();
    fails_with(
        w.sign("server", "ca-req.csr", "out.pem", &["--yes"]),
        1,
        &["asks for CA rights"],
    );
    // Server and client CSRs signed as the other.
    fails_with(
        w.sign("server", "client-certs/client.csr", "out.pem", &["--yes"]),
        1,
        &["client CSR", "sign-client-csr"],
    );
    fails_with(
        w.sign("client", "server-certs/server.csr", "out.pem", &["--yes"]),
        1,
        &["server CSR", "sign-server-csr"],
    );
    // A CSR whose signature does not verify: flip one bit inside the signature.
    let mut der = pem_body(&std::fs::read_to_string(w.p("server-certs/server.csr")).unwrap());
    let n = der.len();
    der[n - 5] ^= 0x01;
    std::fs::write(w.p("bad-sig.csr"), &der).unwrap();
    fails_with(
        w.sign("server", "bad-sig.csr", "out.pem", &["--yes"]),
        1,
        &["bad-sig.csr", "signature does not verify"],
    );
    // A truncated PEM.
    let pem = std::fs::read_to_string(w.p("server-certs/server.csr")).unwrap();
    std::fs::write(w.p("short.csr"), &pem[..pem.len() / 2]).unwrap();
    fails_with(
        w.sign("server", "short.csr", "out.pem", &["--yes"]),
        1,
        &["short.csr", "corrupt"],
    );
    // A wrong password.
    let wrong = w.p("wrong-pw");
    std::fs::write(&wrong, "not the password\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    fails_with(
        w.sign_server_csr_with(&w.s("ca-certs"), Some(&wrong.to_string_lossy())),
        1,
        &["ca.key", "wrong password"],
    );
    // A password file others can read.
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).unwrap();
    fails_with(
        w.sign_server_csr_with(&w.s("ca-certs"), Some(&wrong.to_string_lossy())),
        1,
        &["chmod 600"],
    );
    // An unreadable input (a directory where a file should be).
    fails_with(
        w.sign("server", "server-certs", "out.pem", &["--yes"]),
        1,
        &["server-certs", "cannot read"],
    );
    // A file this user may not read (root reads everything, so run as nobody).
    if running_as_root() {
        let private = w.p("private.pem");
        std::fs::copy(w.p("server.pem"), &private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        let shown = run_cmd(
            "setpriv",
            &[
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                pki_path(),
                "show",
                &w.s("private.pem"),
            ],
            Input::Null,
            T,
        );
        fails_with(
            shown,
            1,
            &["private.pem", "cannot read", "Permission denied"],
        );
        std::fs::remove_file(&private).unwrap();
    }
    // Not a CA directory; a CA directory without its key.
    fails_with(
        w.sign_server_csr_with(&w.s("server-certs"), None),
        1,
        &["not a CA directory", "ca.pem is missing"],
    );
    let keyless = w.p("keyless");
    std::fs::create_dir(&keyless).unwrap();
    std::fs::copy(w.p("ca-certs/ca.pem"), keyless.join("ca.pem")).unwrap();
    fails_with(
        w.sign_server_csr_with(&keyless.to_string_lossy(), None),
        1,
        &["ca.key is missing"],
    );
    assert!(!w.p("out.pem").exists(), "nothing written after refusals");
    std::fs::remove_dir_all(&keyless).unwrap();
    std::fs::remove_file(&wrong).unwrap();
    for f in ["bad-sig.csr", "short.csr", "ca-req.key", "ca-req.csr"] {
        std::fs::remove_file(w.p(f)).unwrap();
    }
    assert_eq!(
        listing(),
        before,
        "the refusals left files behind (CA dir listing with the CA-rights CSR: {before_ca:?})"
    );

    // Existing outputs are not overwritten without --force, and stay as they were.
    let old = std::fs::read(w.p("server.pem")).unwrap();
    fails_with(
        w.sign(
            "server",
            "server-certs/server.csr",
            "server.pem",
            &["--yes"],
        ),
        1,
        &["server.pem", "already exists", "--force"],
    );
    assert_eq!(std::fs::read(w.p("server.pem")).unwrap(), old);
    fails_with(
        pki(&[
            "create-server",
            "--dn-common-name",
            "x",
            "-d",
            "x.example",
            "-o",
            &w.s("server-certs"),
        ]),
        1,
        &["already exists"],
    );
    fails_with(
        pki(&[
            "create-ca",
            "--dn-common-name",
            "x",
            "-o",
            &w.s("ca-certs"),
            "--password-file",
            &w.s("pw"),
        ]),
        1,
        &["ca.pem", "already exists"],
    );
    assert_eq!(listing(), before);
    // Bad names and a too-short password.
    fails_with(
        pki(&[
            "create-server",
            "--dn-common-name",
            "x",
            "-d",
            "bad name.example",
            "-o",
            &w.s("n"),
        ]),
        1,
        &["bad name.example"],
    );
    fails_with(
        pki(&["create-server", "--dn-common-name", "x", "-o", &w.s("n")]),
        1,
        &["at least one DNS name"],
    );
    let short = w.p("short-pw");
    std::fs::write(&short, "abc\n").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    fails_with(
        pki(&[
            "create-ca",
            "--dn-common-name",
            "x",
            "-o",
            &w.s("ca2"),
            "--password-file",
            &short.to_string_lossy(),
        ]),
        1,
        &["at least 8 characters"],
    );
    assert!(!w.p("ca2").exists());
    // Usage errors exit 2.
    fails_with(
        pki(&["sign-server-csr", "--input-csr", "x"]),
        2,
        &["--ca-dir"],
    );
    fails_with(
        pki(&[
            "create-ca",
            "--dn-common-name",
            "x",
            "-o",
            "y",
            "--password",
            "secret",
        ]),
        2,
        &["--password"],
    );
}

#[test]
fn an_expired_ca_refuses_to_sign() {
    let w = Work::new();
    w.create("server", "Primary", "ecdsa-p256", &["-d", "p.example"]);
    // A CA whose validity ended yesterday, made directly with rcgen (the CLI cannot).
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "old CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(400);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let cert = params.self_signed(&key).unwrap();
    let dir = w.p("old-ca");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
    replink_pki::write_private_file(&dir.join("ca.key"), key.serialize_pem().as_bytes(), false)
        .unwrap();
    fails_with(
        w.sign_server_csr_with(&dir.to_string_lossy(), None),
        1,
        &["expired on"],
    );
    assert!(!w.p("out.pem").exists());
}

#[test]
fn interactive_prompts_on_a_terminal() {
    use rexpect::session::spawn_command;
    let w = Work::new();
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(pki_path());
        cmd.args(args);
        spawn_command(cmd, Some(30_000)).expect("spawn in a pty")
    };
    // create-ca in DIR, answering the two password prompts.
    let new_ca_on_tty = |dir: &str, repeat: &str| {
        let mut p = run(&["create-ca", "--dn-common-name", "Tty CA", "-o", dir]);
        answer(&mut p, "New CA key password: ", PASSWORD);
        answer(&mut p, "Repeat the password: ", repeat);
        p
    };
    let exit_code = |p: &mut rexpect::session::PtySession| match p.process.wait().expect("wait") {
        rexpect::process::wait::WaitStatus::Exited(_, code) => code,
        other => panic!("not a normal exit: {other:?}"),
    };

    // create-ca asks twice; different answers create nothing.
    let mut p = new_ca_on_tty(&w.s("bad-ca"), "something else");
    p.exp_string("the two passwords differ").unwrap();
    p.exp_eof().unwrap();
    assert_eq!(exit_code(&mut p), 1);
    assert!(!w.p("bad-ca/ca.key").exists());

    let mut p = new_ca_on_tty(&w.s("ca-certs"), PASSWORD);
    let out = p.exp_eof().unwrap();
    assert!(!out.contains(PASSWORD), "the password was echoed: {out}");
    assert_eq!(exit_code(&mut p), 0, "{out}");
    ok(openssl(&[
        "pkey",
        "-noout",
        "-in",
        &w.s("ca-certs/ca.key"),
        "-passin",
        &format!("pass:{PASSWORD}"),
    ]));

    w.create("client", "replica-tty", "ecdsa-p256", &[]);
    let sign_args = [
        "sign-client-csr",
        "--ca-dir",
        &w.s("ca-certs"),
        "--input-csr",
        &w.s("client-certs/client.csr"),
        "--output",
        &w.s("client.pem"),
    ];
    // Answering anything but YES signs nothing.
    let mut p = run(&sign_args);
    answer(&mut p, "Password for", PASSWORD);
    p.exp_string("Subject:            CN=replica-tty").unwrap();
    p.exp_string("Extended key usage: clientAuth").unwrap();
    answer(&mut p, "Type YES to sign: ", "yes please");
    p.exp_string("not signed").unwrap();
    p.exp_eof().unwrap();
    assert_eq!(exit_code(&mut p), 1);
    assert!(!w.p("client.pem").exists());
    // A wrong password at the prompt.
    let mut p = run(&sign_args);
    answer(&mut p, "Password for", "wrong password");
    p.exp_string("wrong password").unwrap();
    p.exp_eof().unwrap();
    assert_eq!(exit_code(&mut p), 1);
    // YES signs.
    let mut p = run(&sign_args);
    answer(&mut p, "Password for", PASSWORD);
    answer(&mut p, "Type YES to sign: ", "YES");
    p.exp_string("Signed: ").unwrap();
    p.exp_eof().unwrap();
    assert_eq!(exit_code(&mut p), 0);
    ok(openssl(&[
        "verify",
        "-CAfile",
        &w.s("ca-certs/ca.pem"),
        &w.s("client.pem"),
    ]));

    // Without a terminal and without --password-file: a clear error, not a hang.
    let out = run_cmd(
        "setsid",
        &[
            pki_path(),
            "create-ca",
            "--dn-common-name",
            "x",
            "-o",
            &w.s("no-tty"),
        ],
        Input::Null,
        T,
    );
    fails_with(out, 1, &["no terminal", "--password-file"]);
    // From a script, the answer may come on stdin.
    w.create("server", "srv", "ecdsa-p256", &["-d", "srv.example"]);
    let args = [
        "sign-server-csr",
        "--ca-dir",
        &w.s("ca-certs"),
        "--input-csr",
        &w.s("server-certs/server.csr"),
        "--output",
        &w.s("srv.pem"),
        "--password-file",
        &w.s("pw"),
    ];
    std::fs::write(w.p("pw"), format!("{PASSWORD}\n")).unwrap();
    fails_with(
        run_cmd(pki_path(), &args, Input::Null, T),
        1,
        &["no answer", "--yes"],
    );
    ok(run_cmd(pki_path(), &args, Input::Bytes(b"YES\n"), T));
    // --no-password warns loudly.
    let out = ok(pki(&[
        "create-ca",
        "--dn-common-name",
        "x",
        "-o",
        &w.s("plain-ca"),
        "--no-password",
    ]));
    assert!(out.text().contains("UNENCRYPTED"), "{}", out.text());
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        out.push(p.to_string_lossy().into_owned());
        if p.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

/// Waits for `prompt` on the terminal, then types `line`.
fn answer(p: &mut rexpect::session::PtySession, prompt: &str, line: &str) {
    p.exp_string(prompt)
        .unwrap_or_else(|e| panic!("waiting for {prompt:?}: {e}"));
    p.send_line(line).unwrap();
}

fn pem_body(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let out = run_cmd("base64", &["-d"], Input::Bytes(b64.as_bytes()), T);
    assert!(out.success());
    out.stdout
}

/// The issue's end-to-end case: the five commands make the certificates with which `replink`
/// reverse and forward ends carry data; then `generate-crl` revokes the first client, and the
/// reverse end restarted with `--crl` refuses it while a second client of the same CA works.
#[test]
fn five_commands_make_a_working_tunnel_and_a_crl_cuts_one_client_off() {
    use replink_tests::{
        run_transfer, verify_transfer, ReplinkProcess, StreamServer, Transfer, ROUTE,
    };
    use std::io::{Read, Write};

    let w = Work::new();
    w.five_commands("ecdsa-p256");
    ok(pki(&[
        "create-client",
        "--dn-common-name",
        "replica-geneva",
        "-o",
        &w.s("client2-certs"),
    ]));
    ok(w.sign(
        "client",
        "client2-certs/client.csr",
        "client2.pem",
        &["--yes"],
    ));

    let server = StreamServer::start();
    let reverse = |crl: Option<&str>| {
        let mut args: Vec<String> = ["reverse-proxy", "--listen", "127.0.0.1:0", "--route"]
            .map(String::from)
            .into();
        args.push(format!("{ROUTE}={}", server.addr()));
        for (flag, file) in [
            ("--cert", "server.pem"),
            ("--key", "server-certs/server.key"),
            ("--ca", "ca-certs/ca.pem"),
        ] {
            args.push(flag.into());
            args.push(w.s(file));
        }
        if let Some(crl) = crl {
            args.push("--crl".into());
            args.push(w.s(crl));
        }
        ReplinkProcess::spawn(&args)
    };
    let forward = |target: std::net::SocketAddr, cert: &str, key: &str| {
        let mut args: Vec<String> = [
            "forward-proxy",
            "--listen",
            "127.0.0.1:0",
            "--sni",
            ROUTE,
            "--target",
        ]
        .map(String::from)
        .into();
        args.push(target.to_string());
        for (flag, file) in [
            ("--cert", cert),
            ("--key", key),
            ("--ca", "ca-certs/ca.pem"),
        ] {
            args.push(flag.into());
            args.push(w.s(file));
        }
        ReplinkProcess::spawn(&args)
    };

    let rev = reverse(None);
    let fwd = forward(rev.addr(), "client.pem", "client-certs/client.key");
    let report = run_transfer(
        fwd.addr(),
        Transfer::new(0x5eed_0001, 4 << 20, 4 << 20).compressible(true),
    );
    verify_transfer(&server, &report).expect("data through the certificates replink-pki made");
    drop(fwd);
    drop(rev);

    let serial = w.serial("client.pem");
    ok(pki(&[
        "generate-crl",
        "--ca-dir",
        &w.s("ca-certs"),
        "--serial",
        &serial,
        "--output",
        &w.s("revoked.crl"),
        "--password-file",
        &w.s("pw"),
    ]));
    let rev = reverse(Some("revoked.crl"));
    let revoked = forward(rev.addr(), "client.pem", "client-certs/client.key");
    let good = forward(rev.addr(), "client2.pem", "client2-certs/client.key");

    let mut c = std::net::TcpStream::connect(revoked.addr()).expect("the forward end accepts");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(&Transfer::new(0x5eed_0002, 1000, 1000).header());
    let mut buf = [0u8; 64];
    let asked = std::time::Instant::now();
    match c.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{n} bytes reached a revoked client"),
    }
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the revoked client hung for {:?}",
        asked.elapsed()
    );
    rev.wait_count(r"refused.*certificate_revoked", 1);
    let report = run_transfer(good.addr(), Transfer::new(0x5eed_0003, 4 << 20, 4 << 20));
    verify_transfer(&server, &report).expect("the unrevoked client carries on");
    assert_eq!(
        rev.count(r"refused.*certificate_revoked"),
        1,
        "{}",
        rev.log()
    );
}
