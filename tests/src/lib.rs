//! Harness for replink's end-to-end suite.
//!
//! Starts the real `replink` binary (built once per test run), mints a throwaway PKI, runs
//! test upstreams, and on failure prints what a person needs to see: the command line and the
//! log tail of every process the test started.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use replink_pki::{TestIdentities, ThrowawayPki};
use sha2::{Digest, Sha256};

/// How long waits may take before a test gives up (`REPLINK_TEST_PATIENCE_MS`, default 30 s).
pub fn patience() -> Duration {
    let ms = std::env::var("REPLINK_TEST_PATIENCE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    Duration::from_millis(ms)
}

/// Polls `cond` until it holds or patience runs out.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience();
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_owned()
}

/// The `replink` binary of this checkout, built (debug profile) on first use.
pub fn replink_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "replink", "--bin", "replink"])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building replink failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target"));
        target.join("debug").join("replink")
    })
}

/// A throwaway PKI for one test (the directory lives as long as this value).
pub struct Pki {
    pub pki: ThrowawayPki,
    pub extra: TestIdentities,
    _dir: tempfile::TempDir,
}

pub const ROUTE: &str = "pg.repl.test";

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = ThrowawayPki::mint(dir.path(), &[ROUTE, "*.repl.test"]).expect("mint PKI");
        let extra = pki.mint_test_extras().expect("mint extras");
        Pki {
            pki,
            extra,
            _dir: dir,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.pki.dir
    }

    pub fn server_args(&self) -> Vec<String> {
        let p = &self.pki;
        strings(&[
            "--cert",
            s(&p.server_cert),
            "--key",
            s(&p.server_key),
            "--ca",
            s(&p.ca_pem),
        ])
    }

    pub fn client_args(&self) -> Vec<String> {
        let p = &self.pki;
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

pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn strip_ansi(text: &str) -> String {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| regex::Regex::new("\x1b\\[[0-9;]*m").expect("valid regex"))
        .replace_all(text, "")
        .into_owned()
}

/// A running `replink` process; killed on drop, its log printed if the test is failing.
pub struct Replink {
    child: Child,
    pub addr: SocketAddr,
    log_path: PathBuf,
    command: String,
    _logdir: tempfile::TempDir,
}

impl Replink {
    /// Starts `replink ARGS` and waits for its `listening` line.
    pub fn start(args: &[String]) -> Replink {
        let logdir = tempfile::tempdir().expect("temp dir");
        let log_path = logdir.path().join("replink.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(replink_bin())
            .args(args)
            .env("REPLINK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("replink starts");
        let mut r = Replink {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_path,
            command: format!("replink {}", args.join(" ")),
            _logdir: logdir,
        };
        let re = regex::Regex::new(r"listening addr=(\S+)").expect("valid regex");
        let deadline = Instant::now() + patience();
        loop {
            if let Some(m) = re.captures(&r.log()) {
                r.addr = m[1].parse().expect("listening address parses");
                return r;
            }
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!(
                    "{} exited with {status} before listening:\n{}",
                    r.command,
                    r.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start:\n{}",
                r.command,
                r.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    /// Lines of the log matching `pattern`.
    pub fn count(&self, pattern: &str) -> usize {
        let re = regex::Regex::new(pattern).expect("valid regex");
        self.log().lines().filter(|l| re.is_match(l)).count()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Replink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {} (log tail) ---", self.command);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Options for a reverse+forward pair.
#[derive(Clone)]
pub struct PairOptions {
    pub compression: &'static str,
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

pub fn start_reverse(pki: &Pki, routes: &[(&str, SocketAddr)], opts: &PairOptions) -> Replink {
    let mut args = strings(&["reverse-proxy", "--listen", "127.0.0.1:0"]);
    for (sni, addr) in routes {
        args.push("--route".into());
        args.push(format!("{sni}={addr}"));
    }
    args.extend(pki.server_args());
    args.extend(common_args(opts));
    args.extend(opts.extra_reverse.iter().cloned());
    Replink::start(&args)
}

pub fn start_forward(pki: &Pki, target: SocketAddr, sni: &str, opts: &PairOptions) -> Replink {
    let mut args = strings(&["forward-proxy", "--listen", "127.0.0.1:0", "--sni", sni]);
    args.push("--target".into());
    args.push(target.to_string());
    args.extend(pki.client_args());
    args.extend(common_args(opts));
    args.extend(opts.extra_forward.iter().cloned());
    Replink::start(&args)
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

/// Reverse and forward ends carrying route `pg.repl.test` to `upstream`.
pub fn start_pair(pki: &Pki, upstream: SocketAddr, opts: &PairOptions) -> (Replink, Replink) {
    let reverse = start_reverse(pki, &[(ROUTE, upstream)], opts);
    let forward = start_forward(pki, reverse.addr, ROUTE, opts);
    (reverse, forward)
}

/// Deterministic test bytes: random (incompressible) or text-like (compressible like WAL).
pub struct Gen {
    state: u64,
    compressible: bool,
    line: Vec<u8>,
    line_pos: usize,
}

impl Gen {
    pub fn new(seed: u64, compressible: bool) -> Gen {
        Gen {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            compressible,
            line: Vec::new(),
            line_pos: 0,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        // The stream must not depend on how it is cut into fill() calls: both modes work
        // through `line`, a refill unit consumed byte by byte.
        let mut i = 0;
        while i < buf.len() {
            if self.line_pos == self.line.len() {
                let r = self.next();
                self.line = if self.compressible {
                    format!(
                        "INSERT INTO pgbench_accounts VALUES ({}, {}, {}, '                    ');\n",
                        r % 1_000_000,
                        (r >> 20) % 100,
                        (r >> 32) % 10_000
                    )
                    .into_bytes()
                } else {
                    let mut v = Vec::with_capacity(64);
                    for _ in 0..8 {
                        v.extend_from_slice(&self.next().to_le_bytes());
                    }
                    v
                };
                self.line_pos = 0;
            }
            let n = (self.line.len() - self.line_pos).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&self.line[self.line_pos..self.line_pos + n]);
            self.line_pos += n;
            i += n;
        }
    }

    /// SHA-256 of the first `len` bytes this generator produces.
    pub fn digest(seed: u64, compressible: bool, len: u64) -> [u8; 32] {
        let mut g = Gen::new(seed, compressible);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            g.fill(&mut buf[..n]);
            h.update(&buf[..n]);
            left -= n as u64;
        }
        h.finalize().into()
    }
}

/// What the stream server saw on one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub bytes: u64,
    pub sha256: [u8; 32],
}

/// Header flag: the payloads are text-like (compressible).
pub const FLAG_COMPRESSIBLE: u8 = 1;
/// Header flag: the server reads the whole upload before it answers.
pub const FLAG_SEQUENTIAL: u8 = 2;

/// A test upstream for byte-exact, two-way transfers with half-close.
///
/// Protocol per connection: the client sends a 25-byte header (seed u64, up_len u64, down_len
/// u64, flags u8, all LE) then `up_len` bytes; the server, at the same time, sends
/// `down_len` generated bytes and then half-closes, reads until EOF and records what it got.
pub struct StreamServer {
    pub addr: SocketAddr,
    received: Arc<Mutex<std::collections::HashMap<u64, Received>>>,
}

impl StreamServer {
    pub fn start() -> StreamServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let rec = received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let rec = rec.clone();
                std::thread::spawn(move || serve_stream(conn, rec));
            }
        });
        StreamServer { addr, received }
    }

    pub fn received(&self, seed: u64) -> Option<Received> {
        self.received.lock().ok()?.get(&seed).cloned()
    }
}

fn serve_stream(mut conn: TcpStream, rec: Arc<Mutex<std::collections::HashMap<u64, Received>>>) {
    let mut header = [0u8; 25];
    if conn.read_exact(&mut header).is_err() {
        return;
    }
    let seed = u64::from_le_bytes(header[..8].try_into().unwrap_or_default());
    let up_len = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let down_len = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
    let compressible = header[24] & FLAG_COMPRESSIBLE != 0;
    let sequential = header[24] & FLAG_SEQUENTIAL != 0;
    let mut h = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    if sequential {
        // Clients that cannot half-close (openssl s_client): read the whole upload first.
        while total < up_len {
            let want = (up_len - total).min(buf.len() as u64) as usize;
            match conn.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    h.update(&buf[..n]);
                    total += n as u64;
                }
            }
        }
    }
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let sender = std::thread::spawn(move || {
        let mut g = Gen::new(seed ^ 0xd0d0, compressible);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = down_len;
        let mut chunk = 1usize;
        while left > 0 {
            chunk = (chunk * 7 + 13) % (1 << 20) + 1;
            let n = left.min(chunk as u64) as usize;
            g.fill(&mut buf[..n]);
            if writer.write_all(&buf[..n]).is_err() {
                return;
            }
            left -= n as u64;
        }
        let _ = writer.shutdown(Shutdown::Write);
    });
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                total += n as u64;
            }
            Err(_) => return,
        }
    }
    let _ = sender.join();
    if let Ok(mut m) = rec.lock() {
        m.insert(
            seed,
            Received {
                bytes: total,
                sha256: h.finalize().into(),
            },
        );
    }
}

/// One two-way transfer through `addr` to a [`StreamServer`]; returns Err with a description
/// when anything differs.
pub fn transfer(
    addr: SocketAddr,
    seed: u64,
    up_len: u64,
    down_len: u64,
    compressible: bool,
) -> Result<(), String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(patience()))
        .map_err(|e| e.to_string())?;
    let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || -> Result<(), String> {
        let mut header = Vec::with_capacity(25);
        header.extend_from_slice(&seed.to_le_bytes());
        header.extend_from_slice(&up_len.to_le_bytes());
        header.extend_from_slice(&down_len.to_le_bytes());
        header.push(compressible as u8);
        writer
            .write_all(&header)
            .map_err(|e| format!("send header: {e}"))?;
        let mut g = Gen::new(seed, compressible);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = up_len;
        let mut chunk = seed as usize % 977 + 1;
        while left > 0 {
            chunk = (chunk * 31 + 7) % (1 << 20) + 1;
            let n = left.min(chunk as u64) as usize;
            g.fill(&mut buf[..n]);
            writer
                .write_all(&buf[..n])
                .map_err(|e| format!("send: {e}"))?;
            left -= n as u64;
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("half-close: {e}"))
    });
    let mut h = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) => return Err(format!("seed {seed}: receive after {total} bytes: {e}")),
        }
    }
    sender.join().map_err(|_| "sender panicked".to_string())??;
    if total != down_len {
        return Err(format!(
            "seed {seed}: received {total} bytes, expected {down_len}"
        ));
    }
    let digest: [u8; 32] = h.finalize().into();
    if digest != Gen::digest(seed ^ 0xd0d0, compressible, down_len) {
        return Err(format!("seed {seed}: downstream bytes differ"));
    }
    Ok(())
}

/// Checks what the server received for `seed` against what the client sent.
pub fn check_upstream(
    server: &StreamServer,
    seed: u64,
    up_len: u64,
    compressible: bool,
) -> Result<(), String> {
    let deadline = Instant::now() + patience();
    let got = loop {
        if let Some(r) = server.received(seed) {
            break r;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "seed {seed}: server never saw the end of the upstream"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let want = Received {
        bytes: up_len,
        sha256: Gen::digest(seed, compressible, up_len),
    };
    if got != want {
        return Err(format!(
            "seed {seed}: server got {} bytes (want {up_len}) or other bytes",
            got.bytes
        ));
    }
    Ok(())
}

/// A port nobody listens on (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs a command with a timeout via coreutils `timeout`; returns (success, stdout, stderr).
pub fn run(cmd: &str, args: &[&str], stdin: Option<&[u8]>, secs: u64) -> (bool, Vec<u8>, String) {
    let mut child = Command::new("timeout")
        .arg(secs.to_string())
        .arg(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd} runs: {e}"));
    if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
