//! Running `replink` and reading its log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::cmd::shell_quote;
use crate::{patience, replink_bin, strings, strip_ansi, Pki};

/// The route most tests use.
pub const ROUTE: &str = "pg.repl.test";

/// Lines of the log printed when a test fails.
const LOG_TAIL: usize = 60;

/// A running `replink` process: started by [`ReplinkProcess::spawn`], killed on drop. Its
/// stderr goes to a file in its own temp dir; when dropped during a panic it prints its
/// command line and the tail of that log.
pub struct ReplinkProcess {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    command: String,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl ReplinkProcess {
    /// Starts `replink ARGS` and waits (up to [`patience`]) for `listening addr=…`.
    pub fn spawn(args: &[String]) -> ReplinkProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let log_path = dir.path().join("replink.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let command = std::iter::once("replink".to_string())
            .chain(args.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ");
        let child = Command::new(replink_bin())
            .args(args)
            .env("REPLINK_LOG", "info")
            .env("NO_COLOR", "1")
            // The BPF classifier's counters, logged when they change (tests wait for them).
            .env("REPLINK_BPF_COUNTERS_SECS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("`{command}` does not start: {e}"));
        let mut p = ReplinkProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_path,
            command,
            args: args.to_vec(),
            _dir: dir,
        };
        static RE: OnceLock<regex::Regex> = OnceLock::new();
        let re = RE.get_or_init(|| regex::Regex::new(r"listening addr=(\S+)").expect("regex"));
        let deadline = Instant::now() + patience();
        loop {
            if let Some(m) = re.captures(&p.log()) {
                p.addr = m[1]
                    .parse()
                    .unwrap_or_else(|e| panic!("listening address {:?}: {e}", &m[1]));
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("`{}` exited ({status}) before listening", p.command);
            }
            assert!(
                Instant::now() < deadline,
                "`{}` did not log `listening` within {:?}",
                p.command,
                patience()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process (SIGKILL, as a crash would) and starts the same command again on
    /// the same address, so peers configured with that address reconnect to it.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut args = self.args.clone();
        if let Some(i) = args.iter().position(|a| a == "--listen") {
            if let Some(listen) = args.get_mut(i + 1) {
                *listen = self.addr.to_string();
            }
        }
        *self = ReplinkProcess::spawn(&args);
    }

    /// Kills the process (SIGKILL) without starting it again.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`"TERM"`, `"INT"`, `"HUP"`) to the process.
    pub fn signal(&self, signal: &str) {
        let out = crate::run_cmd(
            "kill",
            &[format!("-{signal}"), self.pid().to_string()],
            crate::Input::Null,
            Duration::from_secs(10),
        );
        assert!(out.success(), "kill -{signal}: {}", out.text());
    }

    /// Waits up to `limit` for the process to exit; its status, or None if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its command line, shell-quoted.
    pub fn command_line(&self) -> &str {
        &self.command
    }

    /// Its stderr so far, without colour codes.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    /// Log lines matching the regex `pattern`.
    pub fn lines_matching(&self, pattern: &str) -> Vec<String> {
        let re = regex::Regex::new(pattern).expect("valid regex");
        self.log()
            .lines()
            .filter(|l| re.is_match(l))
            .map(str::to_string)
            .collect()
    }

    /// How many log lines match the regex `pattern`.
    pub fn count(&self, pattern: &str) -> usize {
        self.lines_matching(pattern).len()
    }

    /// The per-connection end lines (`closed` and `refused`), parsed.
    pub fn conn_lines(&self) -> Vec<LogLine> {
        self.log()
            .lines()
            .filter_map(LogLine::parse)
            .filter(|l| l.message == "closed" || l.message == "refused")
            .collect()
    }

    /// Waits until exactly `n` lines match `pattern` (and stay matched), panicking with the
    /// lines that did match otherwise.
    #[track_caller]
    pub fn wait_count(&self, pattern: &str, n: usize) {
        crate::wait_until(
            || self.count(pattern) >= n,
            || {
                format!(
                    "want {n} log lines matching /{pattern}/, have:\n{}",
                    self.lines_matching(pattern).join("\n")
                )
            },
        );
        let lines = self.lines_matching(pattern);
        assert_eq!(
            lines.len(),
            n,
            "want exactly {n} log lines matching /{pattern}/, have:\n{}",
            lines.join("\n")
        );
    }

    /// Panics if the process has exited (it must survive everything a test throws at it).
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("`{}` exited: {status}", self.command);
        }
    }
}

impl Drop for ReplinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL);
            eprintln!(
                "--- {} ({} log lines, last {}) ---",
                self.command,
                lines.len(),
                lines.len() - from
            );
            for line in &lines[from..] {
                eprintln!("{line}");
            }
            eprintln!("--- end of log ---");
        }
    }
}

/// One tracing line: level, message and `key=value` fields (quotes removed).
#[derive(Clone, Debug)]
pub struct LogLine {
    pub level: String,
    pub message: String,
    pub fields: BTreeMap<String, String>,
    pub raw: String,
}

impl LogLine {
    /// Parses `<timestamp>  LEVEL message key=value key="value" …`.
    pub fn parse(line: &str) -> Option<LogLine> {
        static HEAD: OnceLock<regex::Regex> = OnceLock::new();
        static FIELD: OnceLock<regex::Regex> = OnceLock::new();
        let head = HEAD.get_or_init(|| {
            regex::Regex::new(r"\b(TRACE|DEBUG|INFO|WARN|ERROR)\s+(?:[\w:]+:\s+)?(\S+)")
                .expect("regex")
        });
        let field = FIELD
            .get_or_init(|| regex::Regex::new(r#"(\w+)=("(?:[^"\\]|\\.)*"|\S+)"#).expect("regex"));
        let h = head.captures(line)?;
        let rest = &line[h.get(0)?.end()..];
        let fields = field
            .captures_iter(rest)
            .map(|c| {
                let v = &c[2];
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .map(|v| v.replace("\\\"", "\"").replace("\\\\", "\\"))
                    .unwrap_or_else(|| v.to_string());
                (c[1].to_string(), v)
            })
            .collect();
        Some(LogLine {
            level: h[1].to_string(),
            message: h[2].to_string(),
            fields,
            raw: line.to_string(),
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A numeric field; panics (with the line) when absent or not a number.
    #[track_caller]
    pub fn num(&self, key: &str) -> u64 {
        self.get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric {key}= in: {}", self.raw))
    }
}

/// Options for [`start_pair`], [`start_reverse`] and [`start_forward`].
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// `zstd` or `off`.
    pub compression: &'static str,
    /// `auto`, `io-uring` or `epoll`.
    pub io_driver: &'static str,
    pub workers: usize,
    pub extra_reverse: Vec<String>,
    pub extra_forward: Vec<String>,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            compression: "zstd",
            io_driver: "auto",
            workers: 2,
            extra_reverse: Vec::new(),
            extra_forward: Vec::new(),
        }
    }
}

fn common_args(opts: &PairOptions) -> Vec<String> {
    vec![
        "--compression".into(),
        opts.compression.into(),
        "--io-driver".into(),
        opts.io_driver.into(),
        "--workers".into(),
        opts.workers.to_string(),
    ]
}

/// A reverse proxy on 127.0.0.1:0 with the PKI's server identity and `routes` (SNI, upstream).
pub fn start_reverse(
    pki: &Pki,
    routes: &[(&str, SocketAddr)],
    opts: &PairOptions,
) -> ReplinkProcess {
    let p = &pki.files;
    start_reverse_as(pki, (&p.server_cert, &p.server_key), routes, opts)
}

/// [`start_reverse`] with another server certificate and key (`(cert, key)`) of the PKI's CA.
pub fn start_reverse_as(
    pki: &Pki,
    identity: (&Path, &Path),
    routes: &[(&str, SocketAddr)],
    opts: &PairOptions,
) -> ReplinkProcess {
    ReplinkProcess::spawn(&reverse_command(pki, identity, routes, opts))
}

/// The arguments [`start_reverse_as`] runs `replink` with (for a start that must fail).
pub fn reverse_command(
    pki: &Pki,
    (cert, key): (&Path, &Path),
    routes: &[(&str, SocketAddr)],
    opts: &PairOptions,
) -> Vec<String> {
    let mut args = strings(&["reverse-proxy", "--listen", "127.0.0.1:0"]);
    for (sni, addr) in routes {
        args.push("--route".into());
        args.push(format!("{sni}={addr}"));
    }
    args.extend(pki.identity_args(cert, key));
    args.extend(common_args(opts));
    args.extend(opts.extra_reverse.iter().cloned());
    args
}

/// A forward proxy on 127.0.0.1:0 with the PKI's client identity, to `target` with `sni`.
pub fn start_forward(
    pki: &Pki,
    target: SocketAddr,
    sni: &str,
    opts: &PairOptions,
) -> ReplinkProcess {
    let p = &pki.files;
    start_forward_as(pki, (&p.client_cert, &p.client_key), target, sni, opts)
}

/// [`start_forward`] with another client certificate and key (`(cert, key)`) of the PKI's CA.
pub fn start_forward_as(
    pki: &Pki,
    identity: (&Path, &Path),
    target: SocketAddr,
    sni: &str,
    opts: &PairOptions,
) -> ReplinkProcess {
    ReplinkProcess::spawn(&forward_command(pki, identity, target, sni, opts))
}

/// The arguments [`start_forward_as`] runs `replink` with (for a start that must fail).
pub fn forward_command(
    pki: &Pki,
    (cert, key): (&Path, &Path),
    target: SocketAddr,
    sni: &str,
    opts: &PairOptions,
) -> Vec<String> {
    let mut args = strings(&["forward-proxy", "--listen", "127.0.0.1:0", "--sni", sni]);
    args.push("--target".into());
    args.push(target.to_string());
    args.extend(pki.identity_args(cert, key));
    args.extend(common_args(opts));
    args.extend(opts.extra_forward.iter().cloned());
    args
}

/// Reverse and forward ends carrying route `pg.repl.test` to `upstream`: returns
/// `(reverse, forward)`; clients connect to `forward.addr()`.
pub fn start_pair(
    pki: &Pki,
    upstream: SocketAddr,
    opts: &PairOptions,
) -> (ReplinkProcess, ReplinkProcess) {
    let reverse = start_reverse(pki, &[(ROUTE, upstream)], opts);
    let forward = start_forward(pki, reverse.addr(), ROUTE, opts);
    (reverse, forward)
}

/// [`start_pair`] with 2 workers per end, `compression` (`zstd`, `off`) and `io_driver`
/// (`io-uring`, `epoll`), checking that both ends say they run 2 workers on that driver (a
/// driver that quietly fell back would test the other one twice).
pub fn start_pair_on(
    pki: &Pki,
    upstream: SocketAddr,
    compression: &'static str,
    io_driver: &'static str,
) -> (ReplinkProcess, ReplinkProcess) {
    let opts = PairOptions {
        compression,
        io_driver,
        workers: 2,
        ..PairOptions::default()
    };
    let (reverse, forward) = start_pair(pki, upstream, &opts);
    let driver = io_driver.replace('-', "_");
    for p in [&reverse, &forward] {
        assert_eq!(
            p.count(&format!(r"listening .*workers=2 .*driver={driver}\b")),
            1,
            "{} does not run 2 workers on {driver}:\n{}",
            p.command_line(),
            p.log()
        );
    }
    (reverse, forward)
}

/// Runs `replink ARGS`, which must exit non-zero within [`patience`]; returns its status and
/// stderr. A process that is still running at the deadline (it started) fails the test.
#[track_caller]
pub fn run_replink_expect_failure(args: &[String]) -> (ExitStatus, String) {
    let out = crate::run_cmd(
        replink_bin().to_str().expect("UTF-8 path"),
        args,
        crate::Input::Null,
        patience(),
    );
    match out.status {
        None => panic!(
            "`{}` was still running after {:?}; it should have refused to start:\n{}",
            out.command,
            patience(),
            out.stderr
        ),
        Some(status) if status.success() => panic!(
            "`{}` exited 0; it should have refused to start:\n{}",
            out.command, out.stderr
        ),
        Some(status) => (status, strip_ansi(&out.stderr)),
    }
}
