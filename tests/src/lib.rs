//! Harness for replink's end-to-end suite (`tests/it/`), in the style of ripgrep's
//! `TestCommand` and ghostunnel's `tests/common.py`: every test runs the real `replink`
//! binary, between real clients and real servers, on loopback.
//!
//! - [`replink_bin`] builds the binary once per test run (debug profile, same target dir).
//! - [`Pki`] mints a throwaway PKI (plus the bad identities) into a temp dir it keeps alive.
//! - [`ReplinkProcess`] starts `replink`, waits for its `listening addr=…` line, captures its
//!   log, parses its per-connection lines, kills it on drop, and prints its command line and
//!   log tail when the test is failing.
//! - [`StreamServer`] / [`run_transfer`] / [`verify_transfer`]: byte-exact two-way transfers
//!   with random write sizes and half-closes, checked with SHA-256 and first-difference offsets
//!   on both ends. [`EchoServer`] for simple routes.
//! - [`run_in_ktls_vm`] runs a script in a QEMU VM whose kernel has TLS
//!   (`scripts/ktls-vm.sh`), with [`static_replink_bin`] inside.
//! - [`Unrelated`], [`SplitUpstream`], [`ProcStats`]: fault injection (a transfer kept in
//!   flight beside a fault, an upstream that hands marked connections to the fault, `/proc`).
//! - [`run_cmd`] runs an outside tool (openssl, redis-cli, …) with a deadline.
//! - [`assert_eventually!`] polls a condition for up to [`patience`]
//!   (`REPLINK_TEST_PATIENCE_MS`, default 20000).
//!
//! Random choices (sizes, chunking) come from [`run_seed`], printed by each test that uses it
//! and fixed with `REPLINK_TEST_SEED=N` to replay a failure.

#![forbid(unsafe_code)]

mod bin;
mod cmd;
mod fault;
mod gen;
mod pki;
mod postgres;
mod process;
mod redis;
mod servers;
mod vm;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use bin::{nested_cargo, replink_bin, replink_pg_bin, replink_pki_bin, workspace_root};
pub use cmd::{run_cmd, s_client, CmdOutput, Input};
pub use fault::{
    read_to_end_with, reset, tls_client_config, tls_connect, ProcStats, SplitUpstream, StreamEnd,
    Unrelated, FAULT_MARK,
};
pub use gen::{chunk_len, Gen};
pub use pki::{IssuedFiles, Pki};
pub use postgres::{as_postgres, pg_bin_dir, running_as_root, PgCluster, PgOptions, PG_PASSWORD};
pub use process::{
    forward_command, reverse_command, run_replink_expect_failure, start_forward, start_forward_as,
    start_pair, start_pair_on, start_reverse, start_reverse_as, LogLine, PairOptions,
    ReplinkProcess, ROUTE,
};
pub use redis::{redis_cli, redis_port_args, RedisServer};
pub use servers::{
    ended_with_reset, flags, run_transfer, run_transfer_paced, run_transfer_paused,
    verify_transfer, ClientReport, EchoServer, ServerRecord, StreamServer, Transfer, DOWN_SALT,
    HEADER_LEN,
};
pub use vm::{run_in_ktls_vm, static_replink_bin, static_vm_peer_bin, VmRun};

/// How long any wait may take before a test gives up: `REPLINK_TEST_PATIENCE_MS`, default
/// 20 s.
pub fn patience() -> Duration {
    static P: OnceLock<Duration> = OnceLock::new();
    *P.get_or_init(|| {
        let ms = std::env::var("REPLINK_TEST_PATIENCE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        Duration::from_millis(ms)
    })
}

/// Polls `cond` every 20 ms until it holds; panics with `msg()` (evaluated only then, so it
/// may read logs) once [`patience`] runs out. See [`assert_eventually!`].
#[track_caller]
pub fn wait_until(mut cond: impl FnMut() -> bool, msg: impl FnOnce() -> String) {
    let deadline = Instant::now() + patience();
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("still not true after {:?}: {}", patience(), msg());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `assert_eventually!(cond, "format", args…)`: `cond` must become true within
/// [`patience`]; the message is formatted only on failure.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::wait_until(|| $cond, || stringify!($cond).to_string())
    };
    ($cond:expr, $($msg:tt)+) => {
        $crate::wait_until(|| $cond, || format!($($msg)+))
    };
}

/// The seed for this test run's random choices: `REPLINK_TEST_SEED`, else from the clock.
pub fn run_seed() -> u64 {
    static S: OnceLock<u64> = OnceLock::new();
    *S.get_or_init(|| {
        std::env::var("REPLINK_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
    })
}

/// A loopback port nobody listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Lossless-enough path to `&str` for argument lists (test paths are UTF-8).
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// `["a", "b"]` → `vec!["a".to_string(), "b".to_string()]`.
pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Removes ANSI colour sequences (`\x1b[…m`) from log text.
pub fn strip_ansi(text: &str) -> String {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| regex::Regex::new("\x1b\\[[0-9;]*m").expect("valid regex"))
        .replace_all(text, "")
        .into_owned()
}

/// Lowercase hex of a digest, for messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
