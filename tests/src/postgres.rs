//! Real PostgreSQL clusters in temp dirs, for the replication tests and `replink-pg`'s.
//!
//! Each [`PgCluster`] is its own `initdb` in a temp dir, listening on 127.0.0.1 on a free port
//! and on a Unix socket in its dir, with SCRAM passwords for TCP (so wrong-password cases are
//! real) and `trust` on the socket. PostgreSQL refuses to run as root, so when the tests run as
//! root the server and its tools run as the `postgres` user (`runuser`). Stopped (immediate
//! mode) and removed on drop; the server log is printed when a test fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cmd::{run_cmd, CmdOutput, Input};

/// The password of the `postgres` superuser in every test cluster.
pub const PG_PASSWORD: &str = "replink-test-pw";

/// How a cluster is set up.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// `wal_level = logical` (a logical replication publisher).
    pub logical: bool,
    /// More `postgresql.conf` lines.
    pub conf: Vec<String>,
    /// More `pg_hba.conf` lines, placed before the defaults.
    pub hba: Vec<String>,
}

/// A running PostgreSQL cluster in a temp dir.
pub struct PgCluster {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    stopped: bool,
}

/// The directory of the PostgreSQL server binaries (`initdb`, `pg_ctl`, `pgbench`, …):
/// `/usr/lib/postgresql/<newest>/bin` on Debian.
pub fn pg_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (/usr/lib/postgresql); scripts/test.sh installs it")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .expect("a PostgreSQL server under /usr/lib/postgresql/*/bin")
}

/// Whether the tests run as root (then PostgreSQL runs as `postgres`, and file permissions do
/// not stop reads).
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `program args…`, through `runuser -u postgres --` when we are root (PostgreSQL and its
/// tools refuse to run as root).
pub fn as_postgres(program: &str, args: Vec<String>) -> (String, Vec<String>) {
    if running_as_root() {
        let mut v: Vec<String> = ["-u", "postgres", "--", program].map(String::from).into();
        v.extend(args);
        ("runuser".into(), v)
    } else {
        (program.into(), args)
    }
}

impl PgCluster {
    pub fn start(opts: &PgOptions) -> PgCluster {
        let mut c = Self::empty();
        let data = c.data_dir();
        let pwfile = c.dir.path().join("pwfile");
        std::fs::write(&pwfile, PG_PASSWORD).expect("pwfile");
        if running_as_root() {
            let _ = Command::new("chown").arg("postgres").arg(&pwfile).status();
        }
        let out = c.tool(
            "initdb",
            &[
                "-D",
                &c.s(&data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--pwfile",
                &c.s(&pwfile),
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(out.success(), "initdb failed:\n{}", out.text());
        let mut conf = c.own_conf();
        if opts.logical {
            conf.push("wal_level = logical".into());
        }
        conf.extend(opts.conf.iter().cloned());
        append(&data.join("postgresql.conf"), &conf.join("\n"));
        if !opts.hba.is_empty() {
            let hba = data.join("pg_hba.conf");
            let old = std::fs::read_to_string(&hba).expect("pg_hba.conf");
            std::fs::write(&hba, format!("{}\n{old}", opts.hba.join("\n"))).expect("pg_hba");
        }
        c.pg_ctl_start();
        c
    }

    /// A physical standby of the server at `source` (e.g. a replink forward end in front of
    /// a primary): `pg_basebackup -R -X stream` through it, then started in its own dir and
    /// port, streaming WAL from `source`.
    pub fn start_standby(source: SocketAddr) -> PgCluster {
        let mut c = Self::empty();
        let data = c.s(&c.data_dir());
        let port = source.port().to_string();
        let out = c.tool_env(
            "pg_basebackup",
            &[("PGPASSWORD", PG_PASSWORD)],
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                // An immediate checkpoint: the default spreads it over most of
                // checkpoint_timeout (minutes) when the primary has dirty pages.
                "--checkpoint=fast",
                "--no-sync",
            ],
        );
        assert!(
            out.success(),
            "pg_basebackup through {source} failed:\n{}",
            out.text()
        );
        let mut conf = c.own_conf();
        conf.push("hot_standby = on".into());
        conf.push("wal_retrieve_retry_interval = 500ms".into());
        append(&c.data_dir().join("postgresql.conf"), &conf.join("\n"));
        // pg_basebackup -R wrote a primary_conninfo into postgresql.auto.conf, which is read
        // last; ours (with a name to find the standby by) goes after it.
        append(
            &c.data_dir().join("postgresql.auto.conf"),
            &format!("primary_conninfo = 'host=127.0.0.1 port={port} user=postgres password={PG_PASSWORD} application_name=standby'"),
        );
        c.pg_ctl_start();
        c
    }

    /// The lines every cluster of ours gets (its own port and socket dir; fast and unsafe
    /// durability settings, since nothing here survives the test).
    fn own_conf(&self) -> Vec<String> {
        vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {}", self.port),
            format!("unix_socket_directories = '{}'", self.dir.path().display()),
            "fsync = off".into(),
            "synchronous_commit = off".into(),
            "full_page_writes = off".into(),
            "max_wal_senders = 10".into(),
            "max_replication_slots = 10".into(),
            "wal_sender_timeout = 60s".into(),
            "logging_collector = off".into(),
        ]
    }

    /// A temp dir owned by the server's OS user, a free port, nothing started.
    fn empty() -> PgCluster {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("replink-pg-")
            .tempdir()
            .expect("temp dir");
        if running_as_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown the cluster dir to postgres");
        }
        PgCluster {
            port: crate::free_port(),
            bin,
            dir,
            stopped: true,
        }
    }

    fn s(&self, p: &Path) -> String {
        p.to_string_lossy().into_owned()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `postgresql://postgres:PW@127.0.0.1:PORT/DB` (TCP, SCRAM).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// `postgresql://postgres@127.0.0.1:PORT/DB`: the password must come from elsewhere.
    pub fn url_without_password(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A server binary (`pgbench`, `pg_dump`, …) of the version the cluster runs.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Runs a PostgreSQL tool as the cluster's OS user, with `PGHOST` (the socket dir),
    /// `PGPORT` and `PGUSER` set, so `-d DB` is enough to reach it.
    pub fn tool(&self, name: &str, args: &[&str]) -> CmdOutput {
        self.tool_env(name, &[], args)
    }

    /// [`tool`](Self::tool) with more environment (`PGPASSWORD`, …), set after the defaults
    /// so it can override them.
    pub fn tool_env(&self, name: &str, env: &[(&str, &str)], args: &[&str]) -> CmdOutput {
        let mut argv: Vec<String> = vec![
            format!("PGHOST={}", self.dir.path().display()),
            format!("PGPORT={}", self.port),
            "PGUSER=postgres".into(),
        ];
        argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        argv.push(self.s(&self.bin(name)));
        argv.extend(args.iter().map(|a| a.to_string()));
        let (program, argv) = as_postgres("env", argv);
        run_cmd(&program, &argv, Input::Null, Duration::from_secs(300))
    }

    /// `psql -X -A -t -v ON_ERROR_STOP=1 -d DB -c SQL` over the socket; panics on failure and
    /// returns stdout trimmed.
    #[track_caller]
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = self.try_sql(db, sql);
        assert!(
            out.success(),
            "psql on port {} failed:\n{}\n--- server log ---\n{}",
            self.port,
            out.text(),
            self.log_tail()
        );
        out.stdout_text().trim().to_owned()
    }

    /// Like [`sql`](Self::sql) but returns the output whatever happened.
    pub fn try_sql(&self, db: &str, sql: &str) -> CmdOutput {
        self.tool(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ],
        )
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn pg_ctl_start(&mut self) {
        let (data, log) = (
            self.s(&self.data_dir()),
            self.s(&self.dir.path().join("server.log")),
        );
        let out = self.tool(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
        );
        assert!(
            out.success(),
            "pg_ctl start failed:\n{}\n{}",
            out.text(),
            self.log_tail()
        );
        self.stopped = false;
    }

    /// Restarts the server (fast shutdown, then start).
    pub fn restart(&mut self) {
        self.stop();
        self.pg_ctl_start();
    }

    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        let data = self.s(&self.data_dir());
        let _ = self.tool("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
        self.stopped = true;
    }
}

fn append(path: &Path, text: &str) {
    let old = std::fs::read_to_string(path).expect("read conf");
    std::fs::write(path, format!("{old}\n{text}\n")).expect("write conf");
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL on port {} (log tail) ---\n{}",
                self.port,
                self.log_tail()
            );
        }
        if !self.stopped {
            let data = self.s(&self.data_dir());
            let _ = self.tool("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        }
    }
}
