//! `replink-pg` against real PostgreSQL clusters (no tunnel): a publisher and a subscriber set
//! up with it from nothing, data and sequences checked equal on both, every command rerun to
//! show it is idempotent, `--dry-run` changing nothing, and each bad input refused with its
//! fix and exit code 1.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use replink_tests::{
    assert_eventually, free_port, replink_pg_bin, run_cmd, s, start_reverse, strings, CmdOutput,
    Input, PairOptions, PgCluster, PgOptions, Pki, PG_PASSWORD, ROUTE,
};

const T: Duration = Duration::from_secs(120);
const DB: &str = "app";
/// The table that needs every kind of quoting, as an SQL name.
const WEIRD: &str = r#""My Schema"."Weird ""Table""""#;

fn pg(args: &[&str]) -> CmdOutput {
    run_cmd(s(replink_pg_bin()), args, Input::Null, T)
}

/// `replink-pg --database-url URL --password-file FILE …` against one server.
struct Target {
    url: String,
    password_file: String,
}

impl Target {
    fn new(url: String, password_file: &Path) -> Target {
        Target {
            url,
            password_file: s(password_file).to_owned(),
        }
    }

    /// As `postgres`, the password from `password_file`.
    fn postgres(c: &PgCluster, password_file: &Path) -> Target {
        Target::new(
            format!("postgresql://postgres@127.0.0.1:{}/{DB}", c.port()),
            password_file,
        )
    }

    fn run(&self, args: &[&str]) -> CmdOutput {
        let mut argv = vec![
            "--database-url",
            &self.url,
            "--password-file",
            &self.password_file,
        ];
        argv.extend_from_slice(args);
        pg(&argv)
    }

    /// `words` split on spaces (for arguments without any), then `more`.
    fn cmd(&self, words: &str, more: &[&str]) -> CmdOutput {
        let mut argv: Vec<&str> = words.split_whitespace().collect();
        argv.extend_from_slice(more);
        self.run(&argv)
    }
}

fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write password file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// A keyword/value conninfo for the publisher, as a subscription stores it.
fn conninfo(c: &PgCluster) -> String {
    format!("host=127.0.0.1 port={} user=postgres dbname={DB}", c.port())
}

/// Row count and md5 of all rows in primary-key order.
fn digest(c: &PgCluster, table: &str) -> String {
    c.sql(
        DB,
        &format!(
            "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '' ORDER BY id)), '-') \
             FROM {table} t"
        ),
    )
}

fn sequence_state(c: &PgCluster, seq: &str) -> String {
    c.sql(
        DB,
        &format!("SELECT last_value || ' ' || is_called FROM {seq}"),
    )
}

/// `SCHEMA.TABLE` per line, the tables of a publication.
fn published(publ: &PgCluster, publication: &str) -> String {
    publ.sql(
        DB,
        &format!(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
             WHERE pubname = '{publication}' ORDER BY 1"
        ),
    )
}

fn create_schema(publ: &PgCluster) {
    publ.sql(
        DB,
        &format!(
            r#"CREATE TABLE accounts (id serial PRIMARY KEY, name text NOT NULL, balance numeric);
               CREATE TABLE auth_session (id bigserial PRIMARY KEY, token text);
               CREATE TABLE access_token (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, token text);
               CREATE SCHEMA "My Schema";
               CREATE TABLE {WEIRD} (id int PRIMARY KEY, "Value" text);
               CREATE VIEW rich AS SELECT * FROM accounts WHERE balance > 1000;
               CREATE SEQUENCE invoice_no START 1000;
               CREATE SEQUENCE unused_seq;
               INSERT INTO accounts (name, balance) SELECT 'acct ' || g, g * 1.5 FROM generate_series(1, 5000) g;
               INSERT INTO auth_session (token) SELECT md5(g::text) FROM generate_series(1, 3000) g;
               INSERT INTO access_token (token) SELECT md5(g::text) FROM generate_series(1, 100) g;
               INSERT INTO {WEIRD} SELECT g, 'v' || g FROM generate_series(1, 200) g;
               SELECT nextval('invoice_no') FROM generate_series(1, 7);"#
        ),
    );
}

#[test]
fn publisher_and_subscriber_from_nothing_to_equal_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pw = secret_file(dir.path(), "pg.pw", &format!("{PG_PASSWORD}\n"), 0o600);
    let publ = PgCluster::start(&PgOptions {
        logical: true,
        ..Default::default()
    });
    let sub = PgCluster::start(&PgOptions::default());
    for c in [&publ, &sub] {
        c.sql("postgres", "CREATE DATABASE app");
    }
    create_schema(&publ);
    let (on_pub, on_sub) = (Target::postgres(&publ, &pw), Target::postgres(&sub, &pw));

    // --dry-run prints the statement and changes nothing.
    let out = on_pub
        .cmd("--dry-run publisher setup --publication replink", &[])
        .assert_ok();
    assert_eq!(
        out.stdout_text().trim(),
        r#"CREATE PUBLICATION "replink" FOR ALL TABLES;"#
    );
    assert_eq!(publ.sql(DB, "SELECT count(*) FROM pg_publication"), "0");

    // A table list with a name that needs every kind of quoting; a rerun changes nothing, a
    // new list is set exactly; a view, a missing table, --must-not-exist are refused.
    let list = ["publisher", "setup", "--publication", "Some Tables"];
    let list = [&list[..], &["-t", "public.accounts", "-t", WEIRD]].concat();
    on_pub
        .run(&list)
        .assert_ok()
        .assert_says(&["created publication \"Some Tables\"", "2 table(s)"]);
    assert_eq!(
        published(&publ, "Some Tables"),
        "My Schema.Weird \"Table\"\npublic.accounts"
    );
    on_pub
        .run(&list)
        .assert_ok()
        .assert_says(&["already exists", "nothing to do"]);
    let some = |more: &[&str]| {
        let mut argv = vec!["publisher", "setup", "--publication", "Some Tables"];
        argv.extend_from_slice(more);
        on_pub.run(&argv)
    };
    some(&["-t", "accounts", "--table", "Auth_Session"])
        .assert_ok()
        .assert_says(&["added public.auth_session", &format!("removed {WEIRD}")]);
    assert_eq!(
        published(&publ, "Some Tables"),
        "public.accounts\npublic.auth_session"
    );
    some(&["-t", "rich"]).assert_exit(1, &["rich is a view, not a table"]);
    some(&["-t", "no_such"]).assert_exit(1, &["table no_such does not exist"]);
    some(&["-t", "accounts", "--must-not-exist"]).assert_exit(
        1,
        &[
            "publication \"Some Tables\" already exists on 127.0.0.1:",
            "--must-not-exist",
        ],
    );
    some(&[]).assert_exit(1, &["cannot turn", "DROP PUBLICATION \"Some Tables\";"]);

    // drop-table: one dropped, the others noted; a rerun is a no-op.
    let drop_tables = |dry: &[&str]| {
        let mut argv = dry.to_vec();
        argv.extend_from_slice(&["publisher", "drop-table", "--publication", "Some Tables"]);
        argv.extend_from_slice(&["-t", "auth_session", "-t", "access_token", "-t", "gone"]);
        on_pub.run(&argv)
    };
    drop_tables(&["--dry-run"])
        .assert_ok()
        .assert_says(&[r#"ALTER PUBLICATION "Some Tables" DROP TABLE "public"."auth_session";"#]);
    assert_eq!(
        published(&publ, "Some Tables"),
        "public.accounts\npublic.auth_session"
    );
    drop_tables(&[]).assert_ok().assert_says(&[
        "dropped public.auth_session",
        "public.access_token is not in publication",
        "table gone does not exist",
        "REFRESH PUBLICATION",
    ]);
    assert_eq!(published(&publ, "Some Tables"), "public.accounts");
    drop_tables(&[])
        .assert_ok()
        .assert_says(&["public.auth_session is not in publication"]);

    // The publication the subscriber will use: FOR ALL TABLES, idempotent.
    on_pub
        .cmd(
            "publisher setup --publication replink --must-not-exist",
            &[],
        )
        .assert_ok();
    on_pub
        .cmd("publisher setup --publication replink", &[])
        .assert_ok()
        .assert_says(&["FOR ALL TABLES): nothing to do"]);
    on_pub
        .cmd(
            "publisher drop-table --publication replink -t accounts",
            &[],
        )
        .assert_exit(1, &["FOR ALL TABLES: no table can be dropped"]);

    // create-role: a REPLICATION LOGIN role that can open a logical replication connection.
    let role_pw = secret_file(dir.path(), "role.pw", "r3pl 'pw'\\x\n", 0o600);
    let create_role = |dry: &str, words: &str| {
        on_pub.cmd(
            &format!("{dry} publisher create-role {words} --role-password-file"),
            &[s(&role_pw)],
        )
    };
    let out = create_role("--dry-run", "--role replicator").assert_ok();
    assert_eq!(
        out.stdout_text().lines().next(),
        Some(r#"CREATE ROLE "replicator" WITH REPLICATION LOGIN PASSWORD '********';"#)
    );
    assert_eq!(
        publ.sql(
            DB,
            "SELECT count(*) FROM pg_roles WHERE rolname = 'replicator'"
        ),
        "0"
    );
    create_role("", "--role replicator")
        .assert_ok()
        .assert_says(&["created role \"replicator\"", "GRANT SELECT"]);
    let identify = |password: &str| {
        let conninfo = format!(
            "host=127.0.0.1 port={} user=replicator dbname={DB} replication=database",
            publ.port()
        );
        let psql = publ.bin("psql");
        let argv = [
            &format!("PGPASSWORD={password}"),
            s(&psql),
            "-XAt",
            "-d",
            &conninfo,
        ];
        let mut argv = argv.to_vec();
        argv.extend_from_slice(&["-c", "IDENTIFY_SYSTEM"]);
        run_cmd("env", &argv, Input::Null, T)
    };
    let out = identify("r3pl 'pw'\\x").assert_ok();
    assert!(
        out.stdout_text().trim_end().ends_with("|app"),
        "IDENTIFY_SYSTEM: {}",
        out.text()
    );
    assert!(
        !identify("wrong").success(),
        "a wrong password must not log in"
    );
    create_role("", "--role replicator")
        .assert_ok()
        .assert_says(&["already existed", "already had REPLICATION LOGIN"]);
    create_role("", "--role replicator --must-not-exist")
        .assert_exit(1, &["role \"replicator\" already exists"]);
    publ.sql(DB, "CREATE ROLE lacking NOLOGIN");
    create_role("", "--role lacking")
        .assert_ok()
        .assert_says(&["gave it REPLICATION and LOGIN"]);
    assert_eq!(
        publ.sql(
            DB,
            "SELECT rolreplication AND rolcanlogin FROM pg_roles WHERE rolname = 'lacking'"
        ),
        "t"
    );

    // subscriber setup, dry run first: the schema and the statement, password redacted.
    let pub_conninfo = conninfo(&publ);
    let subscribe = |dry: &str, words: &str| {
        on_sub.cmd(
            &format!("{dry} subscriber setup --subscription sub1 --copy-schema {words}"),
            &[
                "--publisher-url",
                &pub_conninfo,
                "--publisher-password-file",
                s(&pw),
            ],
        )
    };
    let out = subscribe("--dry-run", "--publication replink").assert_ok();
    let stdout = out.stdout_text();
    assert!(stdout.contains("CREATE TABLE public.accounts"), "{stdout}");
    assert!(
        !stdout.contains("CREATE PUBLICATION"),
        "the publication must not be copied:\n{stdout}"
    );
    let create = format!(
        r#"CREATE SUBSCRIPTION "sub1" CONNECTION '{pub_conninfo} password=''********''' PUBLICATION "replink";"#
    );
    assert!(
        stdout.lines().any(|l| l == create),
        "no {create:?} in:\n{stdout}"
    );
    assert!(
        !out.text().contains(PG_PASSWORD),
        "password leaked:\n{}",
        out.text()
    );
    let user_tables = "SELECT count(*) FROM pg_tables \
                       WHERE schemaname NOT IN ('pg_catalog', 'information_schema')";
    assert_eq!(sub.sql(DB, user_tables), "0");
    assert_eq!(sub.sql(DB, "SELECT count(*) FROM pg_subscription"), "0");

    let out = subscribe("", "--publication replink").assert_ok();
    out.assert_says(&[
        "copied the schema",
        "created subscription \"sub1\"",
        "4 table(s)",
    ]);
    assert!(
        !out.text().contains(PG_PASSWORD),
        "password leaked:\n{}",
        out.text()
    );

    // status --watch, not on a terminal: plain lines until every table is ready.
    on_sub
        .cmd(
            "status --watch --interval 100ms --timeout 60s --publisher-url",
            &[&pub_conninfo, "--publisher-password-file", s(&pw)],
        )
        .assert_ok()
        .assert_says(&[
            "tables ready",
            "KiB copied",
            " of ~",
            "initial sync done: 4 table(s) ready",
        ]);
    let states = "SELECT string_agg(DISTINCT srsubstate::text, '') FROM pg_subscription_rel";
    assert_eq!(sub.sql(DB, states), "r");

    // Changes after the initial copy stream through; once the subscriber has confirmed the
    // publisher's current WAL position, every table is the same on both.
    publ.sql(
        DB,
        &format!(
            r#"INSERT INTO accounts (name, balance) SELECT 'late ' || g, g FROM generate_series(1, 500) g;
               UPDATE auth_session SET token = upper(token) WHERE id % 7 = 0;
               DELETE FROM access_token WHERE id > 90;
               INSERT INTO {WEIRD} VALUES (1000, 'it''s "quoted"');"#
        ),
    );
    let lsn = publ.sql(DB, "SELECT pg_current_wal_lsn()");
    let confirmed = format!(
        "SELECT coalesce(bool_and(confirmed_flush_lsn >= '{lsn}'), false) \
         FROM pg_replication_slots WHERE slot_name = 'sub1'"
    );
    assert_eventually!(
        publ.sql(DB, &confirmed) == "t",
        "the subscriber did not confirm {lsn}; status:\n{}",
        on_sub.cmd("status", &[]).text()
    );
    for table in ["accounts", "auth_session", "access_token", WEIRD] {
        assert_eq!(digest(&publ, table), digest(&sub, table), "{table} differs");
    }
    assert!(digest(&sub, "accounts").starts_with("5500 "));

    // Reruns: identical is a no-op; --must-not-exist and another publication are refused.
    subscribe("", "--publication replink")
        .assert_ok()
        .assert_says(&["already exists", "nothing to do"]);
    subscribe("", "--publication replink --must-not-exist")
        .assert_exit(1, &["subscription \"sub1\" already exists"]);
    on_sub
        .run(&[
            "subscriber",
            "setup",
            "--subscription",
            "sub1",
            "--publication",
            "Some Tables",
            "--publisher-url",
            &pub_conninfo,
            "--publisher-password-file",
            s(&pw),
        ])
        .assert_exit(1, &["differs", r#"SET PUBLICATION "Some Tables";"#]);

    // Sequences: replication leaves them behind; sync-sequences makes them equal.
    let sync = |words: &str| {
        on_sub.cmd(
            &format!("{words} subscriber sync-sequences"),
            &[
                "--publisher-url",
                &pub_conninfo,
                "--publisher-password-file",
                s(&pw),
            ],
        )
    };
    assert_ne!(
        sequence_state(&publ, "accounts_id_seq"),
        sequence_state(&sub, "accounts_id_seq")
    );
    sync("--dry-run")
        .assert_ok()
        .assert_says(&[r#"SELECT pg_catalog.setval('"public"."accounts_id_seq"', 5500, true);"#]);
    assert_eq!(sequence_state(&sub, "invoice_no"), "1000 false");
    sync("").assert_ok().assert_says(&[
        "set public.accounts_id_seq to 5500",
        "set public.invoice_no to 1006",
        "4 set, 1 already equal",
    ]);
    for seq in [
        "accounts_id_seq",
        "auth_session_id_seq",
        "access_token_id_seq",
        "invoice_no",
        "unused_seq",
    ] {
        assert_eq!(
            sequence_state(&publ, seq),
            sequence_state(&sub, seq),
            "{seq}"
        );
    }
    sync("")
        .assert_ok()
        .assert_says(&["0 set, 5 already equal"]);

    // status on both sides.
    on_pub.cmd("status", &[]).assert_ok().assert_says(&[
        "wal_level logical",
        r#""replink": FOR ALL TABLES, 4 table(s)"#,
        r#""Some Tables": 1 table(s)"#,
        r#""sub1": logical (pgoutput, database app), active"#,
        "behind",
        "subscriptions: none",
    ]);
    on_sub.cmd("status", &[]).assert_ok().assert_says(&[
        "publications: none",
        r#""sub1": enabled, apply worker running, publication(s) "replink""#,
        "4/4 tables ready",
        "r ready",
        WEIRD,
    ]);
    on_pub.cmd("status --json", &[]).assert_ok().assert_says(&[
        r#""name": "replink","#,
        r#""all_tables": true,"#,
        r#""lag_bytes": "#,
    ]);
    let out = on_sub.cmd("status --json", &[]).assert_ok();
    out.assert_says(&[r#""worker_running": true,"#, r#""schema": "My Schema","#]);
    assert_eq!(out.stdout_text().matches(r#""state": "r""#).count(), 4);
}

#[test]
fn bad_input_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pw = secret_file(dir.path(), "pg.pw", PG_PASSWORD, 0o600);
    let mut replica = PgCluster::start(&PgOptions::default());
    let publ = PgCluster::start(&PgOptions {
        logical: true,
        ..Default::default()
    });
    for c in [&replica, &publ] {
        c.sql("postgres", "CREATE DATABASE app");
        c.sql("postgres", "CREATE ROLE app_user LOGIN PASSWORD 'app-pw'");
    }
    publ.sql(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION present FOR TABLE t",
    );
    let (on_replica, on_pub) = (
        Target::postgres(&replica, &pw),
        Target::postgres(&publ, &pw),
    );

    // wal_level replica: the exact ALTER SYSTEM line and the restart.
    on_replica
        .cmd("publisher setup --publication p", &[])
        .assert_exit(
            1,
            &[
                "wal_level is 'replica'",
                "ALTER SYSTEM SET wal_level = logical;",
                "restart the server",
            ],
        );

    // A closed port: the address and what to check.
    let closed = format!("postgresql://postgres@127.0.0.1:{}/app", free_port());
    Target::new(closed, &pw).cmd("status", &[]).assert_exit(
        1,
        &[
            "cannot reach PostgreSQL at 127.0.0.1:",
            "Connection refused",
            "tunnel",
            "--database-url",
        ],
    );

    // Wrong password, no password, a readable password file, an unknown database.
    let wrong = secret_file(dir.path(), "wrong.pw", "nope\n", 0o600);
    Target::postgres(&publ, &wrong)
        .cmd("status", &[])
        .assert_exit(
            1,
            &[
                "password authentication failed for user \"postgres\"",
                s(&wrong),
                "--password-file",
            ],
        );
    pg(&["--database-url", &on_pub.url, "status"])
        .assert_exit(1, &["asks for a password", "--password-file"]);
    let open = secret_file(dir.path(), "open.pw", PG_PASSWORD, 0o644);
    Target::postgres(&publ, &open)
        .cmd("status", &[])
        .assert_exit(1, &[&format!("chmod 600 {}", s(&open))]);
    let nodb = format!("postgresql://postgres@127.0.0.1:{}/nodb", publ.port());
    Target::new(nodb, &pw)
        .cmd("status", &[])
        .assert_exit(1, &["database \"nodb\" does not exist", "CREATE DATABASE"]);

    // Missing privileges: a role without any.
    let app_pw = secret_file(dir.path(), "app.pw", "app-pw", 0o600);
    let as_app = |c: &PgCluster| {
        Target::new(
            format!("postgresql://app_user@127.0.0.1:{}/app", c.port()),
            &app_pw,
        )
    };
    as_app(&publ)
        .cmd("publisher setup --publication p", &[])
        .assert_exit(
            1,
            &["permission denied", "user \"app_user\"", "needs superuser"],
        );
    as_app(&publ)
        .cmd("publisher setup --publication p -t t", &[])
        .assert_exit(1, &["permission denied", "ownership of every table listed"]);
    let pub_conninfo = conninfo(&publ);
    let subscribe = |target: &Target, words: &str, publisher: &str| {
        target.cmd(
            &format!("subscriber setup {words}"),
            &[
                "--publisher-url",
                publisher,
                "--publisher-password-file",
                s(&pw),
            ],
        )
    };
    subscribe(
        &as_app(&replica),
        "--subscription s1 --publication present",
        &pub_conninfo,
    )
    .assert_exit(
        1,
        &["permission denied", "create a subscription", "superuser"],
    );

    // A publication the publisher does not have: the ones it has are listed.
    subscribe(
        &on_replica,
        "--subscription s1 --publication nope",
        &pub_conninfo,
    )
    .assert_exit(
        1,
        &[
            "publication \"nope\" does not exist on 127.0.0.1:",
            "publications there: \"present\"",
        ],
    );
    // A publisher without wal_level = logical, seen from the subscriber.
    subscribe(
        &on_pub,
        "--subscription s1 --publication present",
        &conninfo(&replica),
    )
    .assert_exit(1, &["ALTER SYSTEM SET wal_level = logical;"]);
    // --copy-schema with a pg_dump older than the publisher.
    let major = publ.sql(
        DB,
        "SELECT current_setting('server_version_num')::int / 10000",
    );
    let old_dump = secret_file(
        dir.path(),
        "pg_dump",
        "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n",
        0o700,
    );
    subscribe(
        &on_replica,
        &format!(
            "--subscription s1 --publication present --copy-schema --pg-dump {}",
            s(&old_dump)
        ),
        &pub_conninfo,
    )
    .assert_exit(
        1,
        &[
            &format!("runs PostgreSQL {major}"),
            "version 9) is older",
            &format!("install postgresql-client-{major}"),
        ],
    );
    // A subscription name that cannot be a slot name.
    subscribe(
        &on_replica,
        "--subscription Sub --publication present",
        &pub_conninfo,
    )
    .assert_exit(1, &["lower-case letters"]);
    assert_eq!(replica.sql(DB, "SELECT count(*) FROM pg_subscription"), "0");

    // --watch gives up after --timeout, exit 1: a disabled subscription never syncs.
    replica.sql(DB, "CREATE TABLE t (id int PRIMARY KEY)");
    replica.sql(
        DB,
        &format!(
            "CREATE SUBSCRIPTION idle CONNECTION '{pub_conninfo} password={PG_PASSWORD}' \
             PUBLICATION present WITH (enabled = false)"
        ),
    );
    on_replica
        .cmd("status --watch --interval 200ms --timeout 1s", &[])
        .assert_exit(1, &["not finished after 1s: 0/1 tables ready (i init 1)"]);
    on_replica
        .cmd("status", &[])
        .assert_ok()
        .assert_says(&[r#""idle": disabled, apply worker not running"#, "i init"]);
    // No replication slots to spare: the setting, and the line that fixes it.
    let conf = replica.data_dir().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
    text.push_str("\nwal_level = logical\nmax_replication_slots = 0\n");
    std::fs::write(&conf, text).expect("postgresql.conf");
    replica.restart();
    on_replica
        .cmd("publisher setup --publication p", &[])
        .assert_exit(
            1,
            &[
                "max_replication_slots is 0",
                "ALTER SYSTEM SET max_replication_slots = 10;",
            ],
        );

    // Usage errors exit 2; DATABASE_URL is read from the environment.
    on_pub
        .cmd("publisher setup", &[])
        .assert_exit(2, &["--publication"]);
    let bin = s(replink_pg_bin());
    run_cmd(
        "env",
        &["-u", "DATABASE_URL", bin, "status"],
        Input::Null,
        T,
    )
    .assert_exit(2, &["DATABASE_URL"]);
    let env = format!("DATABASE_URL={}", on_pub.url);
    run_cmd(
        "env",
        &[&env, bin, "--password-file", s(&pw), "status"],
        Input::Null,
        T,
    )
    .assert_ok()
    .assert_says(&[r#""present": 1 table(s)"#]);
}

/// `replink-pg` with libpq's own TLS straight to a replink reverse end's `:postgres` routes, in
/// both conninfo forms: `sslmode=verify-full` with the client certificate works (SNI = `host`,
/// the address from `hostaddr`); `verify-ca` works where only the name is wrong. The wrong CA,
/// a name the certificate lacks, a name without a route, no client certificate, one from
/// another CA or expired, and a group-readable key are each refused with what to fix.
#[test]
fn libpq_tls_straight_to_a_postgres_route() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let pw = secret_file(dir.path(), "pg.pw", PG_PASSWORD, 0o600);
    let cluster = PgCluster::start(&PgOptions::default());
    // The server certificate holds pg.repl.test and *.repl.test, not pg.other.test.
    const UNCERTIFIED: &str = "pg.other.test";
    let reverse = start_reverse(
        &pki,
        &[],
        &PairOptions {
            extra_reverse: strings(&[
                "--route",
                &format!("{ROUTE}={}:postgres", cluster.addr()),
                "--route",
                &format!("{UNCERTIFIED}={}:postgres", cluster.addr()),
            ]),
            ..Default::default()
        },
    );
    let (p, x) = (&pki.files, &pki.extra);
    let port = reverse.addr().port();
    let conninfo = |host: &str, mode: &str, ca: &Path, client: Option<(&Path, &Path)>| {
        let mut c = format!(
            "host={host} hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres \
             sslmode={mode} sslrootcert={}",
            s(ca)
        );
        if let Some((cert, key)) = client {
            c.push_str(&format!(" sslcert={} sslkey={}", s(cert), s(key)));
        }
        c
    };
    let client = Some((p.client_cert.as_path(), p.client_key.as_path()));
    let status = |conninfo: String| Target::new(conninfo, &pw).cmd("status", &[]);

    status(conninfo(ROUTE, "verify-full", &p.ca_pem, client))
        .assert_ok()
        .assert_says(&[r#"connected as "postgres""#]);
    let uri = format!(
        "postgresql://postgres@{ROUTE}:{port}/postgres?hostaddr=127.0.0.1&sslmode=verify-full\
         &sslrootcert={}&sslcert={}&sslkey={}",
        s(&p.ca_pem),
        s(&p.client_cert),
        s(&p.client_key)
    );
    status(uri).assert_ok();
    // verify-ca checks the CA only: a route whose name the certificate lacks is fine.
    status(conninfo(UNCERTIFIED, "verify-ca", &p.ca_pem, client)).assert_ok();
    // replink-pg has finished; the reverse end writes its line just after the close.
    reverse.wait_count(r#"closed.*pg_preamble="?ssl_request"#, 3);

    let wrong_ca = s(&x.other_ca_pem);
    status(conninfo(ROUTE, "verify-full", &x.other_ca_pem, client)).assert_exit(
        1,
        &[
            "TLS with PostgreSQL at pg.repl.test:",
            &format!("not signed by a CA in sslrootcert {wrong_ca}"),
        ],
    );
    status(conninfo(UNCERTIFIED, "verify-full", &p.ca_pem, client)).assert_exit(
        1,
        &[
            "not valid for the host name pg.other.test",
            "sslmode=verify-ca",
        ],
    );
    status(conninfo(
        "nothing.repl.test",
        "verify-full",
        &p.ca_pem,
        client,
    ))
    .assert_exit(1, &["no route for the name nothing.repl.test", "hostaddr="]);
    status(conninfo(ROUTE, "verify-full", &p.ca_pem, None)).assert_exit(
        1,
        &[
            "requires a client certificate",
            "add sslcert=FILE and sslkey=FILE",
        ],
    );
    let other_client = Some((
        x.other_ca_client_cert.as_path(),
        x.other_ca_client_key.as_path(),
    ));
    status(conninfo(ROUTE, "verify-full", &p.ca_pem, other_client)).assert_exit(
        1,
        &[
            "does not trust our client certificate",
            s(&x.other_ca_client_cert),
        ],
    );
    let expired = Some((
        x.expired_client_cert.as_path(),
        x.expired_client_key.as_path(),
    ));
    status(conninfo(ROUTE, "verify-full", &p.ca_pem, expired))
        .assert_exit(1, &["has expired", s(&x.expired_client_cert)]);

    let open_key = secret_file(
        dir.path(),
        "open.key",
        &std::fs::read_to_string(&p.client_key).expect("read client key"),
        0o644,
    );
    let open = Some((p.client_cert.as_path(), open_key.as_path()));
    status(conninfo(ROUTE, "verify-full", &p.ca_pem, open)).assert_exit(
        1,
        &[
            &format!("sslkey {}", s(&open_key)),
            &format!("chmod 600 {}", s(&open_key)),
        ],
    );
    status(format!(
        "host={ROUTE} sslmode=verify-full sslrootcert=/nonexistent/ca.pem"
    ))
    .assert_exit(1, &["sslrootcert /nonexistent/ca.pem does not exist"]);
}
