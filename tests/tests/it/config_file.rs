//! Service mode: `replink run --config FILE` and `replink check --config FILE`.

use std::path::Path;
use std::time::Duration;

use replink_tests::*;

/// A config with one reverse listener (`ROUTE` to `upstream`) and one forward listener to
/// it, on the given ports.
fn two_listeners(pki: &Pki, reverse_port: u16, forward_port: u16, upstream: &str) -> String {
    let p = &pki.files;
    let path = |p: &Path| p.display().to_string();
    format!(
        r#"log_level = "info"

[[listener]]
name = "primary-side"
mode = "reverse"
listen = "127.0.0.1:{reverse_port}"
cert = "{server_cert}"
key = "{server_key}"
ca = "{ca}"
workers = 1
connect_timeout = "2s"

[[listener.route]]
sni = "{ROUTE}"
target = "{upstream}"
allow = ["cn:replink-demo-client"]

[[listener]]
name = "replica-side"
mode = "forward"
listen = "127.0.0.1:{forward_port}"
target = "127.0.0.1:{reverse_port}"
sni = "{ROUTE}"
cert = "{client_cert}"
key = "{client_key}"
ca = "{ca}"
workers = 1
rekey_after = "1MiB"
session_resumption = "on"
"#,
        server_cert = path(&p.server_cert),
        server_key = path(&p.server_key),
        client_cert = path(&p.client_cert),
        client_key = path(&p.client_key),
        ca = path(&p.ca_pem),
    )
}

fn check(config: &Path) -> CmdOutput {
    run_cmd(
        s(replink_bin()),
        &["check", "--config", s(config)],
        Input::Null,
        Duration::from_secs(30),
    )
}

/// One process serves both listeners of the file; a two-way transfer through them is
/// byte-exact, and each listener logs `listening` with its name. `check` on the same file
/// says OK and prints both listeners with their defaults filled in.
#[test]
fn run_serves_every_listener_of_the_file() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let (reverse_port, forward_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replink.toml");
    let text = two_listeners(&pki, reverse_port, forward_port, &server.addr().to_string());
    std::fs::write(&file, text).unwrap();

    let out = check(&file);
    assert!(out.success(), "{}", out.text());
    let stdout = out.stdout_text();
    for needle in [
        ": OK, 2 listener(s)",
        "name = \"primary-side\"",
        "name = \"replica-side\"",
        "handshake_timeout = \"10s\"",
        "connect_timeout = \"2s\"",
        "rekey_after = 1048576",
        "session_resumption = \"on\"",
        "kind = \"stream\"",
        "allow = [\"cn:replink-demo-client\"]",
    ] {
        assert!(stdout.contains(needle), "{needle}:\n{stdout}");
    }

    let service = ReplinkProcess::spawn(&strings(&["run", "--config", s(&file)]));
    service.wait_count("listening", 2);
    assert_eq!(
        service.count("listener=primary-side"),
        1,
        "{}",
        service.log()
    );
    assert_eq!(
        service.count("listener=replica-side"),
        1,
        "{}",
        service.log()
    );
    let forward = std::net::SocketAddr::from(([127, 0, 0, 1], forward_port));
    let report = run_transfer(forward, Transfer::new(run_seed() ^ 0xc0f, 3 << 20, 3 << 20));
    verify_transfer(&server, &report).unwrap();
    service.wait_count(r#"closed .*reason="done""#, 2);
}

/// Each bad file is refused by `check` (exit 1) and by `run`, with `FILE:LINE:COLUMN: key:
/// reason` for every error in it, not only the first.
#[test]
fn check_reports_every_error_with_its_line() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let good = two_listeners(&pki, free_port(), free_port(), "127.0.0.1:9");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "syntax",
            "[[listener]\nmode = \"reverse\"\n".into(),
            vec![":1:"],
        ),
        (
            "empty",
            String::new(),
            vec![":1:1: listener: no [[listener]] table"],
        ),
        (
            "unknown keys",
            good.replace("workers = 1\nconnect", "wrokers = 1\nconnect")
                .replace("log_level", "colour = \"blue\"\nlog_level"),
            vec![
                ":1:1: colour: unknown key",
                "listener[0].wrokers: unknown key (known here: name, mode, listen",
            ],
        ),
        (
            "bad values",
            good.replace(
                "connect_timeout = \"2s\"",
                "connect_timeout = \"2 fortnights\"",
            )
            .replace("rekey_after = \"1MiB\"", "rekey_after = \"1 MeB\"")
            .replace("workers = 1\nrekey", "workers = \"one\"\nrekey")
            .replace(
                "session_resumption = \"on\"",
                "session_resumption = \"yes\"",
            ),
            vec![
                "listener[0].connect_timeout: \"2 fortnights\": unknown unit",
                "listener[1].workers: expected an integer, found string",
                "listener[1].rekey_after: \"1 MeB\": unknown unit",
                "listener[1].session_resumption: unknown --session-resumption \"yes\"",
            ],
        ),
        (
            "route and mode",
            good.replace("mode = \"forward\"", "mode = \"sideways\"")
                .replace("cn:replink-demo-client", "email:x@y")
                .replace(
                    &format!("sni = \"{ROUTE}\"\ntarget = \"127.0.0.1:9\""),
                    "sni = \"bad name\"\ntarget = \"127.0.0.1\"\nkind = \"mysql\"",
                ),
            vec![
                "listener[0].route[0].sni: ",
                "listener[0].route[0].target: target \"127.0.0.1\" has no port",
                "listener[0].route[0].kind: unknown route kind \"mysql\"",
                "listener[0].route[0].allow[0]: allow rule \"email:x@y\": unknown kind",
                "listener[1].mode: \"sideways\": expected \"reverse\" or \"forward\"",
            ],
        ),
        (
            "missing and misplaced",
            good.replace("sni = \"pg.repl.test\"\ncert", "cert")
                .replace(
                    "name = \"primary-side\"",
                    "name = \"primary-side\"\nserver_name = \"x\"",
                ),
            vec![
                "listener[0].server_name: only for mode = \"forward\"",
                "listener[1].sni: missing",
            ],
        ),
    ];
    for (name, text, expected) in cases {
        let file = dir.path().join(format!("{}.toml", name.replace(' ', "-")));
        std::fs::write(&file, &text).unwrap();
        let out = check(&file);
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(1),
            "{name}: {}",
            out.text()
        );
        let stderr = strip_ansi(&out.stderr);
        for needle in &expected {
            let needle = format!(
                "{}{needle}",
                if needle.starts_with(':') {
                    s(&file)
                } else {
                    ""
                }
            );
            assert!(
                stderr.contains(&needle),
                "{name}: {needle:?} not in:\n{stderr}"
            );
        }
        if expected.len() > 1 {
            assert!(
                stderr.contains(&format!("{} errors in", expected.len()))
                    || stderr.matches(s(&file)).count() > expected.len(),
                "{name}: not every error was reported:\n{stderr}"
            );
        }
        let (_, stderr) = run_replink_expect_failure(&strings(&["run", "--config", s(&file)]));
        assert!(
            stderr.contains(expected[0].trim_start_matches(':')),
            "{name}: run said:\n{stderr}"
        );
    }
}

/// A key file others can read is refused by `check`, naming the file and the `chmod`; so is
/// one another user owns. (The tests run as root, which can chown.)
#[test]
fn check_refuses_a_readable_key() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("open.key");
    std::fs::copy(&pki.files.server_key, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = two_listeners(&pki, free_port(), free_port(), "127.0.0.1:9")
        .replace(s(&pki.files.server_key), s(&key));
    let file = dir.path().join("replink.toml");
    std::fs::write(&file, text).unwrap();
    let out = check(&file);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{}", out.text());
    let stderr = strip_ansi(&out.stderr);
    assert!(stderr.contains("listener \"primary-side\""), "{stderr}");
    assert!(
        stderr.contains(&format!("run: chmod 600 {}", s(&key))),
        "{stderr}"
    );
}

/// `--print-config` turns a quick-mode command line into a config file that `check` accepts
/// and `run` serves.
#[test]
fn print_config_output_runs() {
    let pki = Pki::new();
    let server = StreamServer::start();
    let port = free_port();
    let mut args = reverse_command(
        &pki,
        (&pki.files.server_cert, &pki.files.server_key),
        &[(ROUTE, server.addr())],
        &PairOptions::default(),
    );
    let listen = args.iter().position(|a| a == "127.0.0.1:0").unwrap();
    args[listen] = format!("127.0.0.1:{port}");
    // A fast level below -7: the file accepts every level the flag does (zstd's own range).
    args.extend(strings(&[
        "--idle-timeout",
        "90s",
        "--zstd-level=-1000",
        "--print-config",
    ]));
    let out = run_cmd(
        s(replink_bin()),
        &args,
        Input::Null,
        Duration::from_secs(30),
    );
    assert!(out.success(), "{}", out.text());
    let printed = out.stdout_text();
    assert!(printed.contains("idle_timeout = \"90s\""), "{printed}");
    assert!(printed.contains("zstd_level = -1000"), "{printed}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("printed.toml");
    std::fs::write(&file, &printed).unwrap();
    let checked = check(&file);
    assert!(checked.success(), "{printed}\n{}", checked.text());
    let service = ReplinkProcess::spawn(&strings(&["run", "--config", s(&file)]));
    let forward = start_forward(&pki, service.addr(), ROUTE, &PairOptions::default());
    let report = run_transfer(
        forward.addr(),
        Transfer::new(run_seed() ^ 0x9c, 1 << 20, 1 << 20),
    );
    verify_transfer(&server, &report).unwrap();
}

/// `log_level` in the file sets the level (`warn`: no `listening` line) and `--log-format
/// json` writes one JSON object per line: a garbage client's `refused` line parses, with its
/// level and reason as fields.
#[test]
fn log_level_from_the_file_and_json_lines() {
    let pki = Pki::new();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replink.toml");
    let text = two_listeners(&pki, port, free_port(), "127.0.0.1:9")
        .replace("log_level = \"info\"", "log_level = \"warn\"");
    std::fs::write(&file, text).unwrap();
    let log = dir.path().join("log.jsonl");
    let mut child = std::process::Command::new(replink_bin())
        .args(["--log-format", "json", "run", "--config", s(&file)])
        .env_remove("REPLINK_LOG")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + patience();
    let mut conn = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("replink run did not listen: {e}"),
        }
    };
    use std::io::{Read, Write};
    let _ = conn.write_all(b"hello, not TLS\r\n\r\n");
    let _ = conn.read(&mut [0u8; 64]);
    let deadline = std::time::Instant::now() + patience();
    while !std::fs::read_to_string(&log).unwrap().contains("refused") {
        assert!(std::time::Instant::now() < deadline, "no refused line");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().all(|l| l["message"] != "listening"),
        "info lines at log_level warn:\n{text}"
    );
    let refused = lines
        .iter()
        .find(|l| l["message"] == "refused")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(refused["level"], "WARN", "{text}");
    assert_eq!(refused["reason"], "bad_client_hello", "{text}");
}

/// The example configs in `deploy/` pass `replink check` once their paths point at real
/// files and their example host names at this host: they stay in step with the code.
#[test]
fn deploy_examples_pass_check() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let p = &pki.files;
    for (name, from) in [
        ("server.pem", &p.server_cert),
        ("server.key", &p.server_key),
        ("client.pem", &p.client_cert),
        ("client.key", &p.client_key),
        ("ca.pem", &p.ca_pem),
    ] {
        std::fs::copy(from, dir.path().join(name)).unwrap();
    }
    let now = time::OffsetDateTime::now_utc();
    let crl = p
        .ca()
        .crl_pem(
            &[],
            1,
            now - time::Duration::hours(1),
            now + time::Duration::days(7),
        )
        .unwrap();
    std::fs::write(dir.path().join("ca.crl"), crl).unwrap();
    let root = replink_tests::workspace_root();
    for example in ["primary.toml", "replica.toml"] {
        let text = std::fs::read_to_string(root.join("deploy").join(example)).unwrap();
        let text = text
            .replace("/etc/replink/", &format!("{}/", s(dir.path())))
            .replace("primary.example.com", "127.0.0.1")
            .replace("primary-b.example.com", "127.0.0.1");
        let file = dir.path().join(example);
        std::fs::write(&file, text).unwrap();
        let out = check(&file);
        assert!(out.success(), "deploy/{example}: {}", out.text());
    }
}
