//! Real redis-server instances for the end-to-end suite.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cmd::{run_cmd, Input};
use crate::{free_port, strings};

/// A redis-server on a free loopback port (or a given one), in its own temp dir, no
/// persistence; killed on drop.
pub struct RedisServer {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// With more `redis-server` arguments (`["--replicaof", "127.0.0.1", "6380"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // DEBUG DIGEST / DIGEST-VALUE / POPULATE; the tunnel's upstream connections come
            // from loopback too, so "local" is enough.
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) runs");
        let redis = RedisServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        crate::assert_eventually!(
            redis_cli(redis.addr, &["PING"]) == "PONG",
            "redis-server on {} answers PING",
            redis.addr
        );
        redis
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.addr, args)
    }

    /// One field of `INFO replication` (`master_link_status`, `master_repl_offset`, …).
    pub fn replication_field(&self, field: &str) -> String {
        let info = self.cli(&["INFO", "replication"]);
        info.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{field}:"))
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn redis_port_args(addr: SocketAddr) -> Vec<String> {
    strings(&["-h", "127.0.0.1", "-p", &addr.port().to_string()])
}

/// `redis-cli -h 127.0.0.1 -p PORT ARGS` → trimmed stdout.
pub fn redis_cli(addr: SocketAddr, args: &[&str]) -> String {
    let mut all = redis_port_args(addr);
    all.extend(strings(args));
    run_cmd("redis-cli", &all, Input::Null, Duration::from_secs(30))
        .stdout_text()
        .trim()
        .to_string()
}
