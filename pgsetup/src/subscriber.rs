//! `subscriber …`: the subscription (and, with `--copy-schema`, the schema it needs), and
//! the sequence values logical replication does not carry.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::conninfo::{redact, with_password, Endpoint, PasswordSource};
use crate::db::{Db, Stmt};
use crate::publisher::find_relation;
use crate::quote::{quote_ident, quote_literal, QualifiedName};
use crate::schema::{dump_schema, find_pg_dump, PG_DUMP_FLAGS};
use crate::Error;

/// `subscriber setup`.
#[derive(Clone, Debug)]
pub struct SubscriptionSetup {
    pub subscription: String,
    pub publications: Vec<String>,
    /// The conninfo the subscriber server uses to reach the publisher, as given.
    pub publisher_url: String,
    pub must_not_exist: bool,
    pub copy_schema: bool,
    /// `--pg-dump`: the pg_dump to use instead of searching for one.
    pub pg_dump: Option<PathBuf>,
}

/// The conninfo a subscription stores: `--publisher-url` with the password of
/// `--publisher-password-file` added (never printed: see [`redact`]).
pub fn subscription_conninfo(publisher: &Endpoint, publisher_url: &str) -> String {
    match (&publisher.password, publisher.password()) {
        (PasswordSource::File { .. }, Some(pw)) => with_password(publisher_url, &pw),
        _ => publisher_url.trim().to_owned(),
    }
}

/// A subscription's name is also its replication slot's name on the publisher, and slot
/// names allow only `[a-z0-9_]`.
fn check_slot_name(name: &str) -> Result<(), Error> {
    if name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        Ok(())
    } else {
        Err(Error::Name(format!(
            "subscription name {name:?}: it is also the name of the subscription's replication \
             slot on the publisher, which may hold only lower-case letters, digits and underscores"
        )))
    }
}

fn subscribe_needs(db: &Db) -> &'static str {
    if db.major() < 16 {
        "superuser (up to PostgreSQL 15 only a superuser may create a subscription)"
    } else {
        "membership in pg_create_subscription and CREATE on the database (or superuser)"
    }
}

/// Refuses early, before a schema is copied, when this user may not create a subscription.
fn check_may_subscribe(db: &mut Db) -> Result<(), Error> {
    if db.superuser {
        return Ok(());
    }
    let allowed = db.major() >= 16
        && db
            .query_one(
                "SELECT pg_catalog.pg_has_role(current_user, 'pg_create_subscription', 'MEMBER') \
                 AND pg_catalog.has_database_privilege(current_database(), 'CREATE')",
                &[],
            )?
            .get::<_, bool>(0);
    if allowed {
        return Ok(());
    }
    Err(Error::Privilege {
        server: db.server.clone(),
        user: db.user.clone(),
        action: "create a subscription".into(),
        message: "checked before starting".into(),
        needed: subscribe_needs(db).into(),
    })
}

/// `subscriber setup`: checks both ends, copies the schema if asked, creates the
/// subscription. An existing subscription with the same publications and conninfo is left
/// alone; one that differs is refused.
pub fn setup(sub: &mut Db, publisher: &Endpoint, req: &SubscriptionSetup) -> Result<(), Error> {
    check_slot_name(&req.subscription)?;
    let subname = quote_ident(&req.subscription);
    let conninfo = subscription_conninfo(publisher, &req.publisher_url);
    check_may_subscribe(sub)?;
    if sub.major() < 18 {
        sub.require_positive(
            "max_replication_slots",
            "the subscriber has no replication origin to track its progress with",
        )?;
    }
    sub.require_positive(
        "max_logical_replication_workers",
        "no apply worker can run for a subscription here",
    )?;

    let existing = sub.query(
        "SELECT subpublications::text[], \
                CASE WHEN pg_catalog.has_column_privilege('pg_catalog.pg_subscription', 'subconninfo', 'SELECT') \
                     THEN subconninfo END \
         FROM pg_catalog.pg_subscription \
         WHERE subname = $1 \
           AND subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
        &[&req.subscription],
    )?;
    if let Some(row) = existing.first() {
        if req.must_not_exist {
            return Err(Error::AlreadyExists {
                what: "subscription",
                name: subname,
                server: sub.server.clone(),
            });
        }
        let have: BTreeSet<String> = row.get::<_, Vec<String>>(0).into_iter().collect();
        let want: BTreeSet<String> = req.publications.iter().cloned().collect();
        let have_conninfo: Option<String> = row.get(1);
        let mut differences = Vec::new();
        if have != want {
            differences.push(format!(
                "it subscribes to {} (asked: {}); change that with ALTER SUBSCRIPTION {subname} SET PUBLICATION {};",
                idents(&have),
                idents(&want),
                idents(&want)
            ));
        }
        if let Some(have_conninfo) = &have_conninfo {
            if *have_conninfo != conninfo {
                differences.push(format!(
                    "its connection is {} (asked: {}); change that with ALTER SUBSCRIPTION {subname} CONNECTION '…';",
                    quote_literal(&redact(have_conninfo)),
                    quote_literal(&redact(&conninfo))
                ));
            }
        }
        if !differences.is_empty() {
            return Err(Error::Conflict(format!(
                "subscription {subname} already exists on {} and differs from this setup: {} \
                 Or drop it (DROP SUBSCRIPTION {subname};) and run this again",
                sub.server,
                differences.join(" ")
            )));
        }
        sub.say(&format!(
            "subscription {subname} already exists on {} for publication(s) {}: nothing to do{}",
            sub.server,
            idents(&have),
            if have_conninfo.is_none() {
                " (its connection string is readable by superusers only, so it was not compared)"
            } else {
                ""
            }
        ));
        return Ok(());
    }

    let mut publ = Db::connect(publisher, true)?;
    publ.require_publisher_settings()?;
    for name in &req.publications {
        let found = publ.query(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[name],
        )?;
        if found.is_empty() {
            return Err(Error::NoPublication {
                name: name.clone(),
                server: publ.server.clone(),
                existing: publ.publication_names()?,
            });
        }
    }
    check_publisher_slots(&mut publ, &req.subscription)?;

    warn_about_workers(sub)?;
    let tables = published_tables(&mut publ, &req.publications)?;
    if req.copy_schema {
        copy_schema(
            sub,
            &mut publ,
            &tables,
            &req.publisher_url,
            req.pg_dump.as_deref(),
        )?;
    }
    let publications = idents(&req.publications.iter().cloned().collect());
    let sql = |conninfo: &str| {
        format!(
            "CREATE SUBSCRIPTION {subname} CONNECTION {} PUBLICATION {publications}",
            quote_literal(conninfo)
        )
    };
    sub.change(
        &Stmt::new(
            sql(&conninfo),
            format!("create subscription {subname}"),
            subscribe_needs(sub),
        )
        .shown_as(sql(&redact(&conninfo))),
    )?;
    sub.did(&format!(
        "created subscription {subname} on {} for publication(s) {publications} of {} ({} table(s)); \
         the initial copy runs in the background: follow it with `replink-pg status --watch`",
        sub.server,
        redact(&conninfo),
        tables.len()
    ));
    Ok(())
}

/// Warns when the subscriber's logical replication workers are all (or nearly all) taken by
/// enabled subscriptions: the new subscription's table sync would then wait in state `i`
/// for a worker that never comes free.
fn warn_about_workers(sub: &mut Db) -> Result<(), Error> {
    let row = sub.query_one(
        "SELECT (SELECT count(*) FROM pg_catalog.pg_subscription WHERE subenabled), \
                current_setting('max_logical_replication_workers')::int8, \
                current_setting('max_sync_workers_per_subscription')::int8",
        &[],
    )?;
    let (enabled, max_workers, sync_workers): (i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2));
    // Its apply worker and at least one table-sync worker.
    if enabled + 2 > max_workers {
        sub.say(&format!(
            "warning: max_logical_replication_workers is {max_workers} on {} and {enabled} \
             subscription(s) are enabled on that server, so the new one's table sync may wait in \
             state i for a free worker: ALTER SYSTEM SET max_logical_replication_workers = {}; \
             (and max_worker_processes above it), then restart the server",
            sub.server,
            enabled + 1 + sync_workers.max(1)
        ));
    }
    Ok(())
}

fn idents(names: &BTreeSet<String>) -> String {
    names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses when the subscription's slot name is taken on the publisher, or no slot is free.
fn check_publisher_slots(publ: &mut Db, slot: &str) -> Result<(), Error> {
    let row = publ.query_one(
        "SELECT count(*) FILTER (WHERE slot_name = $1), count(*), \
                current_setting('max_replication_slots')::int8 \
         FROM pg_catalog.pg_replication_slots",
        &[&slot],
    )?;
    let (taken, used, max): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    if taken > 0 {
        return Err(Error::Conflict(format!(
            "a replication slot named {slot} already exists on the publisher {} (left by a \
             subscription dropped without it, or used by another subscriber); if nothing uses it, \
             drop it there with SELECT pg_drop_replication_slot({}); and run this again",
            publ.server,
            quote_literal(slot)
        )));
    }
    if used >= max {
        return Err(Error::Setting {
            server: publ.server.clone(),
            name: "max_replication_slots",
            value: max.to_string(),
            why: "every replication slot is in use and a new subscription needs one",
            suggested: u32::try_from(max.saturating_mul(2).max(10)).unwrap_or(u32::MAX),
        });
    }
    Ok(())
}

/// The tables the publications carry, as the publisher resolves them (FOR ALL TABLES
/// included).
fn published_tables(
    publ: &mut Db,
    publications: &[String],
) -> Result<BTreeSet<QualifiedName>, Error> {
    let rows = publ.query(
        "SELECT DISTINCT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables \
         WHERE pubname = ANY($1)",
        &[&publications],
    )?;
    Ok(rows
        .iter()
        .map(|r| QualifiedName::new(r.get(0), r.get(1)))
        .collect())
}

/// `--copy-schema`: the publisher's schema, applied here in one transaction, unless the
/// published tables exist here already (then nothing is copied; a partial set is refused).
fn copy_schema(
    sub: &mut Db,
    publ: &mut Db,
    tables: &BTreeSet<QualifiedName>,
    publisher_url: &str,
    pg_dump: Option<&std::path::Path>,
) -> Result<(), Error> {
    if tables.is_empty() {
        sub.say("note: the publication carries no tables yet, so --copy-schema copies nothing");
        return Ok(());
    }
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for table in tables {
        match find_relation(sub, table)? {
            Some(_) => present.push(table.to_string()),
            None => missing.push(table.to_string()),
        }
    }
    if missing.is_empty() {
        sub.say(&format!(
            "all {} published table(s) already exist on {}: --copy-schema has nothing to copy",
            tables.len(),
            sub.server
        ));
        return Ok(());
    }
    if !present.is_empty() {
        return Err(Error::Conflict(format!(
            "--copy-schema copies the publisher's schema whole or not at all, and on {} some \
             published tables exist ({}) while others do not ({}): create the missing ones \
             (e.g. pg_dump --schema-only -t TABLE from the publisher) or drop the existing ones, \
             then run this again",
            sub.server,
            present.join(", "),
            missing.join(", ")
        )));
    }
    let pg_dump = find_pg_dump(pg_dump, publ.major(), &publ.server)?;
    let sql = dump_schema(&pg_dump, &publ.endpoint, publisher_url)?;
    if sub.dry_run {
        println!(
            "-- the schema of {} ({} {} --dbname …), applied in one transaction:",
            publ.server,
            pg_dump.path.display(),
            PG_DUMP_FLAGS.join(" ")
        );
        print!("{sql}");
        return Ok(());
    }
    // A connection of its own: the dump changes session settings (search_path).
    let mut apply = Db::connect(&sub.endpoint, false)?;
    apply.run_script(
        &sql,
        &Stmt::new(
            format!("-- pg_dump {}", PG_DUMP_FLAGS.join(" ")),
            "apply the publisher's schema (from pg_dump --schema-only)",
            "CREATE on the database and on the schemas the dump creates objects in",
        ),
    )?;
    sub.did(&format!(
        "copied the schema of {} to {} ({} published table(s); pg_dump {} from {})",
        publ.server,
        sub.server,
        tables.len(),
        pg_dump.major,
        pg_dump.path.display()
    ));
    Ok(())
}

/// A sequence's state: `last_value` when it has been used (`is_called`), else `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SequenceState {
    last_value: Option<i64>,
    start: i64,
    readable: bool,
}

fn sequences(db: &mut Db) -> Result<BTreeMap<QualifiedName, SequenceState>, Error> {
    let rows = db.query(
        "SELECT n.nspname::text, c.relname::text, s.seqstart, \
                pg_catalog.has_sequence_privilege(c.oid, 'SELECT,USAGE'), \
                CASE WHEN pg_catalog.has_sequence_privilege(c.oid, 'SELECT,USAGE') \
                     THEN pg_catalog.pg_sequence_last_value(c.oid) END \
         FROM pg_catalog.pg_sequence s \
         JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT pg_catalog.pg_is_other_temp_schema(n.oid) \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                QualifiedName::new(r.get(0), r.get(1)),
                SequenceState {
                    start: r.get(2),
                    readable: r.get(3),
                    last_value: r.get(4),
                },
            )
        })
        .collect())
}

/// `subscriber sync-sequences`: every sequence of the publisher set to the same value here
/// (`setval`, one transaction). Checks everything before changing anything.
pub fn sync_sequences(sub: &mut Db, publ: &mut Db) -> Result<(), Error> {
    let theirs = sequences(publ)?;
    let ours = sequences(sub)?;
    let unreadable: Vec<String> = theirs
        .iter()
        .filter(|(_, s)| !s.readable)
        .map(|(n, _)| n.quoted())
        .collect();
    if !unreadable.is_empty() {
        return Err(Error::Privilege {
            server: publ.server.clone(),
            user: publ.user.clone(),
            action: "read sequences".into(),
            message: format!("cannot read {}", unreadable.join(", ")),
            needed: format!(
                "SELECT on them: GRANT SELECT ON SEQUENCE {} TO {};",
                unreadable.join(", "),
                quote_ident(&publ.user)
            ),
        });
    }
    let missing: Vec<String> = theirs
        .keys()
        .filter(|n| !ours.contains_key(n))
        .map(ToString::to_string)
        .collect();
    if !missing.is_empty() {
        return Err(Error::Object {
            server: sub.server.clone(),
            problem: format!(
                "sequence(s) of the publisher {} do not exist here: {}; copy the schema first \
                 (`replink-pg subscriber setup … --copy-schema`) or create them",
                publ.server,
                missing.join(", ")
            ),
        });
    }
    let mut stmts = Vec::new();
    let mut report = Vec::new();
    for (name, state) in &theirs {
        let here = ours[name];
        if here.last_value == state.last_value {
            continue;
        }
        let (value, is_called) = match state.last_value {
            Some(v) => (v, true),
            None => (state.start, false),
        };
        stmts.push(Stmt::new(
            format!(
                "SELECT pg_catalog.setval({}, {value}, {is_called})",
                quote_literal(&name.quoted())
            ),
            format!("set sequence {name}"),
            format!("UPDATE on sequence {name}"),
        ));
        let was = match (here.readable, here.last_value) {
            (false, _) => "unknown".to_owned(),
            (true, Some(v)) => v.to_string(),
            (true, None) => "not used yet".to_owned(),
        };
        report.push(if is_called {
            format!("set {name} to {value} (was {was})")
        } else {
            format!("reset {name} to start at {value}, not used yet (was {was})")
        });
    }
    sub.change_all(&stmts)?;
    for line in &report {
        sub.did(line);
    }
    sub.say(&format!(
        "{} sequence(s) of {} checked on {}: {} set, {} already equal",
        theirs.len(),
        publ.server,
        sub.server,
        report.len(),
        theirs.len() - report.len()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        assert!(check_slot_name("replink_sub_1").is_ok());
        let err = check_slot_name("MySub").unwrap_err().to_string();
        assert!(err.contains("lower-case letters"), "{err}");
        assert!(check_slot_name("a-b").is_err());
    }

    #[test]
    fn subscription_conninfo_takes_the_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "it's\n").unwrap();
        let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(&file, private).unwrap();
        let url = "host=127.0.0.1 port=15432 user=rep dbname=app";
        let ep = Endpoint::new(
            url,
            "--publisher-url",
            Some(&file),
            "--publisher-password-file",
        )
        .unwrap();
        let conninfo = subscription_conninfo(&ep, url);
        assert_eq!(
            conninfo,
            "host=127.0.0.1 port=15432 user=rep dbname=app password='it\\'s'"
        );
        // As a literal in CREATE SUBSCRIPTION: the backslash makes it an E'' string.
        assert_eq!(
            quote_literal(&conninfo),
            r"E'host=127.0.0.1 port=15432 user=rep dbname=app password=''it\\''s'''"
        );
        let plain =
            Endpoint::new(url, "--publisher-url", None, "--publisher-password-file").unwrap();
        assert_eq!(subscription_conninfo(&plain, url), url);
    }
}
