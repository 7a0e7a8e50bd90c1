//! Running outside tools (openssl, redis-cli, …) with a deadline.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Standard input for [`run_cmd`].
pub enum Input<'a> {
    Null,
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// What a command did.
#[derive(Debug)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub command: String,
    /// None when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stdout then stderr, as text.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout_text(), self.stderr)
    }

    /// Panics, with the command line and its output, unless it exited 0.
    #[track_caller]
    pub fn assert_ok(self) -> CmdOutput {
        assert!(
            self.success(),
            "`{}` failed:\n{}",
            self.command,
            self.text()
        );
        self
    }

    /// Panics unless it exited with `code` and its output mentions every one of `needles`.
    #[track_caller]
    pub fn assert_exit(self, code: i32, needles: &[&str]) -> CmdOutput {
        assert_eq!(
            self.status.and_then(|s| s.code()),
            Some(code),
            "`{}` should exit {code}:\n{}",
            self.command,
            self.text()
        );
        self.assert_says(needles);
        self
    }

    /// Panics unless the output (stdout and stderr) mentions every one of `needles`.
    #[track_caller]
    pub fn assert_says(&self, needles: &[&str]) {
        let text = self.text();
        for needle in needles {
            assert!(
                text.contains(needle),
                "`{}`: no {needle:?} in:\n{text}",
                self.command
            );
        }
    }
}

/// Quotes one argument for a copy-pasteable command line.
pub(crate) fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Runs `program args…`, feeding `input`, killing it after `timeout`.
pub fn run_cmd<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    input: Input<'_>,
    timeout: Duration,
) -> CmdOutput {
    let command = std::iter::once(program.to_string())
        .chain(
            args.iter()
                .map(|a| shell_quote(&a.as_ref().to_string_lossy())),
        )
        .collect::<Vec<_>>()
        .join(" ");
    let stdin = match &input {
        Input::Null => Stdio::null(),
        Input::Bytes(_) => Stdio::piped(),
        Input::File(p) => Stdio::from(
            std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display())),
        ),
    };
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("`{command}` does not start: {e}"));
    let feeder = match (input, child.stdin.take()) {
        (Input::Bytes(data), Some(mut w)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                let _ = w.write_all(&data);
            }))
        }
        _ => None,
    };
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = started + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let elapsed = started.elapsed();
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    CmdOutput {
        command,
        status,
        stdout,
        stderr,
        elapsed,
    }
}

/// `openssl s_client -connect ADDR -servername NAME -CAfile CA [-cert C -key K] EXTRA…`,
/// fed `input`, killed after `timeout`.
pub fn s_client(
    connect: std::net::SocketAddr,
    servername: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    extra: &[&str],
    input: Input<'_>,
    timeout: Duration,
) -> CmdOutput {
    let mut args: Vec<String> = vec![
        "s_client".into(),
        "-connect".into(),
        connect.to_string(),
        "-servername".into(),
        servername.into(),
        "-CAfile".into(),
        ca.to_string_lossy().into_owned(),
    ];
    if let Some((cert, key)) = identity {
        args.push("-cert".into());
        args.push(cert.to_string_lossy().into_owned());
        args.push("-key".into());
        args.push(key.to_string_lossy().into_owned());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    run_cmd("openssl", &args, input, timeout)
}
