//! Replication through the tunnel with the real servers: Redis replica sync, PostgreSQL
//! physical streaming, an rsync daemon (the Galera SST case). Each link must converge
//! byte-for-byte, survive a crash (SIGKILL) and restart of either replink end and a restart
//! of the upstream server, and a transfer cut by a killed tunnel must fail loudly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use replink_tests::*;
use sha2::{Digest, Sha256};

/// Waits until `cond` holds, checking every 100 ms, for up to `limit`.
#[track_caller]
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const CONVERGE: Duration = Duration::from_secs(90);

fn redis_converged(primary: &RedisServer, replica: &RedisServer) -> bool {
    replica.replication_field("master_link_status") == "up"
        && replica.replication_field("master_sync_in_progress") == "0"
        && replica.replication_field("slave_repl_offset")
            == primary.replication_field("master_repl_offset")
        && replica.cli(&["DEBUG", "DIGEST"]) == primary.cli(&["DEBUG", "DIGEST"])
}

fn redis_writes(primary: &RedisServer, n: u32) {
    let mut args = redis_port_args(primary.addr);
    args.extend(strings(&[
        "-t",
        "set,incr,lpush,hset",
        "-n",
        &n.to_string(),
        "-r",
        "500000",
        "-P",
        "16",
        "-q",
    ]));
    let out = run_cmd(
        "redis-benchmark",
        &args,
        Input::Null,
        Duration::from_secs(120),
    );
    assert!(out.success(), "{}", out.text());
}

/// A Redis primary with 300 000 keys, a replica whose `REPLICAOF` is the forward end: full
/// sync, live writes, then each replink end killed and restarted on its address, with writes
/// in between; after each step the data sets' digests are equal.
#[test]
fn redis_replica_syncs_and_survives_restarts_of_both_ends() {
    let pki = Pki::new();
    let primary = RedisServer::start();
    assert_eq!(
        primary.cli(&["DEBUG", "POPULATE", "300000", "key", "100"]),
        "OK"
    );
    let opts = PairOptions::default();
    let (mut reverse, mut forward) = start_pair(&pki, primary.addr, &opts);
    let fwd_port = forward.addr().port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &fwd_port]);

    wait_for(CONVERGE, "full sync through the tunnel", || {
        redis_converged(&primary, &replica)
    });
    assert_eq!(replica.cli(&["DBSIZE"]), "300000");

    redis_writes(&primary, 50_000);
    wait_for(CONVERGE, "live writes", || {
        redis_converged(&primary, &replica)
    });

    forward.restart();
    redis_writes(&primary, 20_000);
    wait_for(CONVERGE, "after the forward end restarted", || {
        redis_converged(&primary, &replica)
    });

    reverse.restart();
    redis_writes(&primary, 20_000);
    wait_for(CONVERGE, "after the reverse end restarted", || {
        redis_converged(&primary, &replica)
    });
    let dbsize = primary.cli(&["DBSIZE"]);
    assert_eq!(replica.cli(&["DBSIZE"]), dbsize);
    // The link went through replink: the replica's master is the forward end.
    assert_eq!(replica.replication_field("master_port"), fwd_port);
}

fn pgbench_checksums(pg: &PgCluster) -> String {
    pg.sql(
        "postgres",
        "SELECT (SELECT count(*) || ':' || md5(string_agg(a::text, '' ORDER BY aid)) FROM pgbench_accounts a)
             || ' ' || (SELECT count(*) || ':' || md5(string_agg(b::text, '' ORDER BY bid)) FROM pgbench_branches b)
             || ' ' || (SELECT count(*) || ':' || md5(string_agg(t::text, '' ORDER BY tid)) FROM pgbench_tellers t)
             || ' ' || (SELECT count(*) || ':' || coalesce(md5(string_agg(h::text, '' ORDER BY h.mtime, h.tid, h.aid, h.delta)), '') FROM pgbench_history h)",
    )
}

/// The standby has replayed everything the (idle) primary has inserted, and their pgbench
/// tables are equal. (The insert LSN, not the write LSN: with synchronous_commit off the last
/// commits may still sit in WAL buffers.)
fn standby_caught_up(primary: &PgCluster, standby: &PgCluster) -> bool {
    let lsn = primary.sql("postgres", "SELECT pg_current_wal_insert_lsn()");
    let out = standby.try_sql(
        "postgres",
        &format!("SELECT coalesce(pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn, false)"),
    );
    out.success()
        && out.stdout_text().trim() == "t"
        && pgbench_checksums(standby) == pgbench_checksums(primary)
}

/// PostgreSQL physical replication: `pg_basebackup` through the pair makes a standby that
/// streams WAL through it; a `pgbench` write load, a crash of the forward end in the middle of
/// it, a restart of the primary, a crash of the reverse end: the standby replays up to the
/// primary's LSN each time and its tables' checksums equal the primary's.
#[test]
fn postgres_standby_streams_wal_through_the_pair() {
    let t0 = Instant::now();
    let pki = Pki::new();
    let mut primary = PgCluster::start(&PgOptions::default());
    let init = primary.tool("pgbench", &["-i", "-s", "4", "-q", "-d", "postgres"]);
    assert!(init.success(), "{}", init.text());
    let (mut reverse, mut forward) = start_pair(&pki, primary.addr(), &PairOptions::default());
    eprintln!("{:?} initialized", t0.elapsed());
    let standby = PgCluster::start_standby(forward.addr());
    eprintln!("{:?} standby started", t0.elapsed());
    wait_for(CONVERGE, "standby streaming", || {
        primary.sql(
            "postgres",
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        ) == "1"
    });

    // A write load, with the forward end killed and restarted in the middle of it.
    pgbench_with_a_crash(&primary, || forward.restart());
    wait_for(CONVERGE, "standby replays the load", || {
        standby_caught_up(&primary, &standby)
    });
    assert_eq!(pgbench_checksums(&standby), pgbench_checksums(&primary));

    // The upstream restarts; then the reverse end crashes and comes back.
    primary.restart();
    eprintln!("{:?} primary restarted", t0.elapsed());
    let out = pgbench_run(&primary.bin("pgbench"), primary.dir(), primary.port(), 2);
    assert!(out.success(), "{}", out.text());
    reverse.restart();
    let out = pgbench_run(&primary.bin("pgbench"), primary.dir(), primary.port(), 2);
    assert!(out.success(), "{}", out.text());
    wait_for(CONVERGE, "standby after restarts", || {
        standby_caught_up(&primary, &standby)
    });
    assert_eq!(pgbench_checksums(&standby), pgbench_checksums(&primary));
    assert!(
        pgbench_checksums(&primary).contains(' '),
        "checksums computed"
    );
    // The replication connection is the one replink carries (it comes from 127.0.0.1 via the
    // reverse end, with the standby's application_name).
    wait_for(CONVERGE, "standby streaming again", || {
        primary.sql("postgres", "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'standby' AND state = 'streaming'") == "1"
    });
    assert_eq!(
        standby.sql("postgres", "SELECT sender_port FROM pg_stat_wal_receiver"),
        forward.addr().port().to_string(),
        "the standby streams from the forward end"
    );
}

/// Six seconds of pgbench on `pg`, with `crash` (a replink end killed and restarted) two
/// seconds in; pgbench itself talks to the server directly and must succeed.
fn pgbench_with_a_crash(pg: &PgCluster, crash: impl FnOnce()) {
    let load = {
        let (bin, dir, port) = (pg.bin("pgbench"), pg.dir().to_owned(), pg.port());
        std::thread::spawn(move || pgbench_run(&bin, &dir, port, 6))
    };
    std::thread::sleep(Duration::from_secs(2));
    crash();
    let out = load.join().expect("pgbench thread");
    assert!(out.success(), "{}", out.text());
}

fn pgbench_run(bin: &Path, socket_dir: &Path, port: u16, seconds: u32) -> CmdOutput {
    let mut argv: Vec<String> = vec![
        format!("PGHOST={}", socket_dir.display()),
        format!("PGPORT={port}"),
        "PGUSER=postgres".into(),
        bin.to_string_lossy().into_owned(),
    ];
    argv.extend(strings(&[
        "-T",
        &seconds.to_string(),
        "-c",
        "4",
        "-n",
        "-d",
        "postgres",
    ]));
    let (program, argv) = as_postgres("env", argv);
    run_cmd(&program, &argv, Input::Null, Duration::from_secs(120))
}

/// An rsync daemon with one writable module, in a temp dir; killed on drop.
struct RsyncDaemon {
    child: Child,
    addr: std::net::SocketAddr,
    dest: PathBuf,
    _dir: tempfile::TempDir,
}

impl RsyncDaemon {
    fn start() -> RsyncDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let port = free_port();
        let root = running_as_root();
        let conf = dir.path().join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\npid file = {}/rsyncd.pid\n[data]\n  path = {}\n  read only = no\n  munge symlinks = no\n{}",
                dir.path().display(),
                dest.display(),
                if root { "  uid = root\n  gid = root\n" } else { "" }
            ),
        )
        .unwrap();
        let child = Command::new("rsync")
            .args([
                "--daemon",
                "--no-detach",
                "--address",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--config",
            ])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsync (Debian package rsync) runs");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        wait_for(Duration::from_secs(20), "rsync daemon listening", || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        RsyncDaemon {
            child,
            addr,
            dest,
            _dir: dir,
        }
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `len` bytes of a seeded stream to `path`.
fn write_file(path: &Path, seed: u64, len: usize, compressible: bool) {
    let mut g = Gen::new(seed, compressible);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        g.fill(&mut buf[..n]);
        std::io::Write::write_all(&mut f, &buf[..n]).unwrap();
        left -= n;
    }
}

/// Relative path → SHA-256 of the contents (or `link:TARGET`), for every file under `root`.
fn tree_digest(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("link:{}", std::fs::read_link(&p).unwrap().display()),
                );
            } else if meta.is_dir() {
                out.insert(rel.clone() + "/", String::new());
                walk(root, &p, out);
            } else {
                let mut h = Sha256::new();
                std::io::copy(&mut std::fs::File::open(&p).unwrap(), &mut h).unwrap();
                out.insert(rel, format!("{:x}", h.finalize()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn rsync_to(src: &Path, addr: std::net::SocketAddr, extra: &[&str]) -> CmdOutput {
    let mut args = strings(&["-a", "--delete", "--timeout=30"]);
    args.extend(strings(extra));
    args.push(format!("{}/", src.display()));
    args.push(format!("rsync://127.0.0.1:{}/data/", addr.port()));
    run_cmd("rsync", &args, Input::Null, Duration::from_secs(300))
}

/// `rsync -a` of a tree with large (random and text-like) and many small files to an rsync
/// daemon behind the reverse end, through the forward end: the trees are equal. Then a
/// transfer is cut by killing the forward end: rsync fails with an error; with the forward end
/// back, a re-run completes and the trees are equal again.
#[test]
fn rsync_tree_through_the_pair_and_a_cut_transfer_fails_loudly() {
    let pki = Pki::new();
    let daemon = RsyncDaemon::start();
    let (_reverse, mut forward) = start_pair(&pki, daemon.addr, &PairOptions::default());
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write_file(&s.join("ibdata1"), 1, 40 << 20, false);
    write_file(&s.join("ib_logfile0"), 2, 40 << 20, true);
    for d in 0..8 {
        let dir = s.join(format!("db{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..50u64 {
            let len = ((d as u64 * 50 + f) * 7919 % 20_000) as usize;
            write_file(
                &dir.join(format!("t{f}.ibd")),
                100 + d as u64 * 50 + f,
                len,
                f % 2 == 0,
            );
        }
    }
    std::fs::write(s.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("db0/t1.ibd", s.join("link")).unwrap();

    let out = rsync_to(s, forward.addr(), &[]);
    assert!(out.success(), "{}", out.text());
    let want = tree_digest(s);
    assert_eq!(want.len(), 8 * 50 + 8 + 4);
    assert_same_tree(&daemon.dest, s);

    // A big new file, rate-limited so the cut lands in the middle.
    write_file(&s.join("big.sst"), 3, 160 << 20, false);
    let (addr, src_path) = (forward.addr(), s.to_owned());
    let run = std::thread::spawn(move || rsync_to(&src_path, addr, &["--bwlimit=20000"]));
    let big_partial = || {
        std::fs::read_dir(&daemon.dest)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("big.sst"))
    };
    wait_for(
        Duration::from_secs(30),
        "the big file started arriving",
        big_partial,
    );
    std::thread::sleep(Duration::from_millis(500));
    forward.kill();
    let out = run.join().expect("rsync thread");
    assert!(
        !out.success() && !out.timed_out(),
        "rsync should fail when the tunnel dies:\n{}",
        out.text()
    );
    assert!(
        out.stderr.contains("connection unexpectedly closed") || out.stderr.contains("error in"),
        "rsync said: {}",
        out.stderr
    );
    assert!(
        tree_digest(&daemon.dest) != tree_digest(s),
        "the cut transfer cannot be complete"
    );

    forward.restart();
    let out = rsync_to(s, forward.addr(), &[]);
    assert!(out.success(), "{}", out.text());
    assert_same_tree(&daemon.dest, s);
}

/// Asserts two trees hold the same paths with the same contents, naming the differences.
#[track_caller]
fn assert_same_tree(got: &Path, want: &Path) {
    let (g, w) = (tree_digest(got), tree_digest(want));
    let differ: Vec<String> = w
        .iter()
        .filter(|(k, v)| g.get(*k) != Some(v))
        .map(|(k, _)| format!("{k} (missing or different)"))
        .chain(
            g.keys()
                .filter(|k| !w.contains_key(*k))
                .map(|k| format!("{k} (extra)")),
        )
        .take(20)
        .collect();
    assert!(
        differ.is_empty(),
        "{} differs from {}: {differ:?}",
        got.display(),
        want.display()
    );
}

/// `replink-pg ARGS`, asserted to succeed.
#[track_caller]
fn replink_pg(args: &[&str]) -> CmdOutput {
    let out = run_cmd(
        s(replink_pg_bin()),
        args,
        Input::Null,
        Duration::from_secs(180),
    );
    assert!(out.success(), "`{}` failed:\n{}", out.command, out.text());
    out
}

/// Row count and md5 of every replicated table, in key order, on one line each.
fn logical_checksums(pg: &PgCluster) -> String {
    pg.sql(
        "postgres",
        "SELECT (SELECT count(*) || ':' || md5(string_agg(a::text, '' ORDER BY aid)) FROM pgbench_accounts a)
             || ' ' || (SELECT count(*) || ':' || md5(string_agg(b::text, '' ORDER BY bid)) FROM pgbench_branches b)
             || ' ' || (SELECT count(*) || ':' || md5(string_agg(t::text, '' ORDER BY tid)) FROM pgbench_tellers t)
             || ' ' || (SELECT count(*) || ':' || coalesce(md5(string_agg(h::text, '' ORDER BY h.tid, h.bid, h.aid, h.delta, h.mtime)), '') FROM pgbench_history h)
             || ' ' || (SELECT count(*) || ':' || md5(string_agg(e::text, '' ORDER BY id)) FROM events e)",
    )
}

fn sequence_value(pg: &PgCluster) -> String {
    pg.sql(
        "postgres",
        "SELECT last_value || ' ' || is_called FROM events_id_seq",
    )
}

/// A publisher with pgbench's tables and an `events` table with a sequence, and an empty
/// subscriber that retries a broken link quickly.
fn logical_clusters() -> (PgCluster, PgCluster) {
    let publisher = PgCluster::start(&PgOptions {
        logical: true,
        ..PgOptions::default()
    });
    let init = publisher.tool("pgbench", &["-i", "-s", "2", "-q", "-d", "postgres"]);
    assert!(init.success(), "{}", init.text());
    publisher.sql(
        "postgres",
        "CREATE TABLE events (id bigserial PRIMARY KEY, payload text);
         INSERT INTO events (payload) SELECT repeat(md5(g::text), 4) FROM generate_series(1, 20000) g;",
    );
    let subscriber = PgCluster::start(&PgOptions {
        conf: vec!["wal_retrieve_retry_interval = 500ms".into()],
        ..PgOptions::default()
    });
    (publisher, subscriber)
}

/// Load on the publisher: pgbench for `seconds`, plus inserts into `events`.
fn logical_load(publisher: &PgCluster, seconds: u32) {
    let out = pgbench_run(
        &publisher.bin("pgbench"),
        publisher.dir(),
        publisher.port(),
        seconds,
    );
    assert!(out.success(), "{}", out.text());
    publisher.sql(
        "postgres",
        "INSERT INTO events (payload) SELECT 'live ' || g FROM generate_series(1, 500) g",
    );
}

/// The subscriber has every table ready and the same data as the (idle) publisher.
fn logical_converged(publisher: &PgCluster, subscriber: &PgCluster) -> bool {
    let ready = subscriber.try_sql(
        "postgres",
        "SELECT count(*) FILTER (WHERE srsubstate <> 'r') = 0 AND count(*) = 5 FROM pg_subscription_rel",
    );
    ready.success()
        && ready.stdout_text().trim() == "t"
        && logical_checksums(subscriber) == logical_checksums(publisher)
}

/// Everything `replink-pg` sets up on both sides, given how the subscriber reaches the
/// publisher (`publisher_conninfo`, stored in the subscription).
fn set_up_logical(
    publisher: &PgCluster,
    subscriber: &PgCluster,
    publisher_conninfo: &str,
    pw: &Path,
) {
    let pw = s(pw);
    replink_pg(&[
        "--database-url",
        &publisher.url_without_password("postgres"),
        "--password-file",
        pw,
        "publisher",
        "setup",
        "--publication",
        "repl",
    ]);
    let out = replink_pg(&[
        "--database-url",
        &subscriber.url_without_password("postgres"),
        "--password-file",
        pw,
        "subscriber",
        "setup",
        "--subscription",
        "repl_sub",
        "--publication",
        "repl",
        "--publisher-url",
        publisher_conninfo,
        "--publisher-password-file",
        pw,
        "--copy-schema",
    ]);
    assert!(
        !out.text().contains(PG_PASSWORD),
        "the password leaked into the output:\n{}",
        out.text()
    );
    // The initial sync, followed the way an operator would.
    replink_pg(&[
        "--database-url",
        &subscriber.url_without_password("postgres"),
        "--password-file",
        pw,
        "status",
        "--watch",
        "--interval",
        "500ms",
        "--timeout",
        "120s",
    ]);
}

fn sync_sequences_and_check(
    publisher: &PgCluster,
    subscriber: &PgCluster,
    publisher_conninfo: &str,
    pw: &Path,
) {
    replink_pg(&[
        "--database-url",
        &subscriber.url_without_password("postgres"),
        "--password-file",
        s(pw),
        "subscriber",
        "sync-sequences",
        "--publisher-url",
        publisher_conninfo,
        "--publisher-password-file",
        s(pw),
    ]);
    assert_eq!(sequence_value(subscriber), sequence_value(publisher));
}

fn password_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("pg.pw");
    std::fs::write(&p, format!("{PG_PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Logical replication set up by `replink-pg` through replink's reverse + forward ends (mTLS,
/// zstd): schema copied, initial sync, a pgbench load with the forward end killed and
/// restarted in the middle and the publisher restarted after it; the subscriber converges
/// (row counts and md5 of every table), and `sync-sequences` makes the sequences equal.
#[test]
fn logical_replication_through_the_pair_with_replink_pg() {
    let pki = Pki::new();
    let (mut publisher, subscriber) = logical_clusters();
    let (_reverse, mut forward) = start_pair(&pki, publisher.addr(), &PairOptions::default());
    let pw = password_file(pki.dir());
    let via_tunnel = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        forward.addr().port()
    );
    set_up_logical(&publisher, &subscriber, &via_tunnel, &pw);
    wait_for(CONVERGE, "initial sync", || {
        logical_converged(&publisher, &subscriber)
    });

    pgbench_with_a_crash(&publisher, || forward.restart());
    publisher.restart();
    logical_load(&publisher, 2);
    wait_for(
        CONVERGE,
        "the subscriber converges after the restarts",
        || logical_converged(&publisher, &subscriber),
    );
    sync_sequences_and_check(&publisher, &subscriber, &via_tunnel, &pw);
    // The subscription's connection is the forward end's.
    assert!(
        publisher.sql(
            "postgres",
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'repl_sub'"
        ) == "1",
        "the subscription streams"
    );
}

/// The same, with the subscriber connecting with libpq's own TLS straight to the reverse end's
/// postgres route (`sslmode=verify-full` with its client certificate, no forward end); the
/// reverse end is killed and restarted under load.
#[test]
fn logical_replication_straight_to_the_postgres_listener() {
    let pki = Pki::new();
    let (publisher, subscriber) = logical_clusters();
    let mut reverse = start_reverse(
        &pki,
        &[],
        &PairOptions {
            extra_reverse: strings(&["--route", &format!("{ROUTE}={}:postgres", publisher.addr())]),
            ..PairOptions::default()
        },
    );
    // The subscriber's server process reads the certificate files: give it its own copies.
    let tls_dir = subscriber.dir().join("tls");
    std::fs::create_dir(&tls_dir).unwrap();
    let p = &pki.files;
    for (from, to) in [
        (&p.ca_pem, "ca.pem"),
        (&p.client_cert, "client.pem"),
        (&p.client_key, "client.key"),
    ] {
        std::fs::copy(from, tls_dir.join(to)).unwrap();
    }
    let chown = run_cmd(
        "chown",
        &["-R", "postgres:postgres", s(&tls_dir)],
        Input::Null,
        Duration::from_secs(10),
    );
    assert!(chown.success() || !chown.stderr.is_empty());
    let direct = format!(
        "host={ROUTE} hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        reverse.addr().port(),
        s(&tls_dir.join("ca.pem")),
        s(&tls_dir.join("client.pem")),
        s(&tls_dir.join("client.key")),
    );
    let pw = password_file(pki.dir());
    set_up_logical(&publisher, &subscriber, &direct, &pw);
    wait_for(CONVERGE, "initial sync", || {
        logical_converged(&publisher, &subscriber)
    });

    pgbench_with_a_crash(&publisher, || reverse.restart());
    logical_load(&publisher, 1);
    wait_for(
        CONVERGE,
        "the subscriber converges after the restart",
        || logical_converged(&publisher, &subscriber),
    );
    sync_sequences_and_check(&publisher, &subscriber, &direct, &pw);
    // The subscription came in by libpq's SSLRequest, with the client certificate.
    wait_for(
        Duration::from_secs(30),
        "the subscription's connection logged",
        || {
            publisher.sql(
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'repl_sub'",
            ) == "1"
        },
    );
    assert!(
        reverse.count(r#"closed.*pg_preamble="?ssl_request"#) >= 1,
        "replink-pg's own connections came by SSLRequest:\n{}",
        reverse.log()
    );
}
