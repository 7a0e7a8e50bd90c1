use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use replink_tests::*;

fn start_fails(args: &[String]) -> String {
    let out = Command::new(replink_bin())
        .args(args)
        .output()
        .expect("replink runs");
    assert!(
        !out.status.success(),
        "replink {} started but should not",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn reverse_args(pki: &Pki, key: &str, cert: &str) -> Vec<String> {
    strings(&[
        "reverse-proxy",
        "--listen",
        "127.0.0.1:0",
        "--route",
        "pg.repl.test=127.0.0.1:1",
        "--cert",
        cert,
        "--key",
        key,
        "--ca",
        s(&pki.pki.ca_pem),
    ])
}

#[test]
fn world_readable_key_is_refused_with_the_fix() {
    let pki = Pki::new();
    let key = pki.dir().join("loose.key");
    std::fs::copy(&pki.pki.server_key, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = start_fails(&reverse_args(&pki, s(&key), s(&pki.pki.server_cert)));
    assert!(
        err.contains("loose.key") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn missing_and_wrong_files_are_named() {
    let pki = Pki::new();
    let err = start_fails(&reverse_args(
        &pki,
        s(&pki.pki.server_key),
        "/nonexistent/server.pem",
    ));
    assert!(err.contains("/nonexistent/server.pem"), "{err}");
    // A key that does not belong to the certificate.
    let err = start_fails(&reverse_args(
        &pki,
        s(&pki.pki.client_key),
        s(&pki.pki.server_cert),
    ));
    assert!(
        err.contains("client.key") && err.contains("does not match"),
        "{err}"
    );
    // A certificate file with no certificate in it.
    let err = start_fails(&reverse_args(
        &pki,
        s(&pki.pki.server_key),
        s(&pki.pki.server_key),
    ));
    assert!(err.contains("no CERTIFICATE"), "{err}");
}

#[test]
fn bad_flags_are_explained() {
    let pki = Pki::new();
    let mut args = reverse_args(&pki, s(&pki.pki.server_key), s(&pki.pki.server_cert));
    args[4] = "not-a-route".into();
    let err = start_fails(&args);
    assert!(
        err.contains("not-a-route") && err.contains("SNI=HOST:PORT"),
        "{err}"
    );
    let mut args = reverse_args(&pki, s(&pki.pki.server_key), s(&pki.pki.server_cert));
    args.extend(strings(&["--zstd-level", "99"]));
    let err = start_fails(&args);
    assert!(err.contains("--zstd-level 99"), "{err}");
}
