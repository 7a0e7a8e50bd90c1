//! `publisher …`: the publication and the replication role, on the publishing server.

use std::collections::BTreeSet;

use crate::db::{Db, Stmt};
use crate::quote::{quote_ident, quote_literal, QualifiedName};
use crate::Error;

/// `publisher setup`.
#[derive(Clone, Debug)]
pub struct PublicationSetup {
    pub publication: String,
    /// Empty: `FOR ALL TABLES`.
    pub tables: Vec<QualifiedName>,
    pub must_not_exist: bool,
}

/// A publication as the catalog has it.
struct Publication {
    oid: u32,
    all_tables: bool,
}

fn find_publication(db: &mut Db, name: &str) -> Result<Option<Publication>, Error> {
    let rows = db.query(
        "SELECT oid, puballtables FROM pg_catalog.pg_publication WHERE pubname = $1",
        &[&name],
    )?;
    Ok(rows.first().map(|r| Publication {
        oid: r.get(0),
        all_tables: r.get(1),
    }))
}

/// The tables listed in a (not `FOR ALL TABLES`) publication.
fn members(db: &mut Db, publication: &Publication) -> Result<BTreeSet<QualifiedName>, Error> {
    let rows = db.query(
        "SELECT n.nspname::text, c.relname::text \
         FROM pg_catalog.pg_publication_rel pr \
         JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE pr.prpubid = $1",
        &[&publication.oid],
    )?;
    Ok(rows
        .iter()
        .map(|r| QualifiedName::new(r.get(0), r.get(1)))
        .collect())
}

/// The relation `name` refers to on `db` (schema resolved through `search_path`) and its
/// `relkind`, or `None` when there is none.
pub fn find_relation(
    db: &mut Db,
    name: &QualifiedName,
) -> Result<Option<(QualifiedName, String)>, Error> {
    let rows = db.query(
        "SELECT n.nspname::text, c.relname::text, c.relkind::text \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = pg_catalog.to_regclass($1)",
        &[&name.quoted()],
    )?;
    Ok(rows
        .first()
        .map(|r| (QualifiedName::new(r.get(0), r.get(1)), r.get(2))))
}

/// The table `name` names, which must exist and be a table (plain or partitioned).
fn table(db: &mut Db, name: &QualifiedName) -> Result<QualifiedName, Error> {
    match find_relation(db, name)? {
        Some((found, kind)) if kind == "r" || kind == "p" => Ok(found),
        Some((found, kind)) => Err(Error::Object {
            server: db.server.clone(),
            problem: format!(
                "{found} is a {}, not a table; publications carry tables only",
                relkind_name(&kind)
            ),
        }),
        None => Err(Error::Object {
            server: db.server.clone(),
            problem: format!(
                "table {name} does not exist (a name without a schema is looked up on the search_path; give SCHEMA.TABLE)"
            ),
        }),
    }
}

fn relkind_name(kind: &str) -> &'static str {
    match kind {
        "v" => "view",
        "m" => "materialized view",
        "S" => "sequence",
        "f" => "foreign table",
        "i" | "I" => "index",
        "c" => "composite type",
        _ => "relation",
    }
}

fn list(tables: &BTreeSet<QualifiedName>) -> String {
    tables
        .iter()
        .map(QualifiedName::quoted)
        .collect::<Vec<_>>()
        .join(", ")
}

fn names(tables: &BTreeSet<QualifiedName>) -> String {
    tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `publisher setup`: creates the publication, or brings an existing one's table list in
/// line with `--table`.
pub fn setup(db: &mut Db, req: &PublicationSetup) -> Result<(), Error> {
    db.require_publisher_settings()?;
    let pubname = quote_ident(&req.publication);
    let wanted = req
        .tables
        .iter()
        .map(|t| table(db, t))
        .collect::<Result<BTreeSet<_>, _>>()?;
    let Some(existing) = find_publication(db, &req.publication)? else {
        let (target, needs) = if wanted.is_empty() {
            (
                "FOR ALL TABLES".to_owned(),
                "superuser (a FOR ALL TABLES publication needs one)",
            )
        } else {
            (
                format!("FOR TABLE {}", list(&wanted)),
                "CREATE on the database and ownership of every table listed",
            )
        };
        db.change(&Stmt::new(
            format!("CREATE PUBLICATION {pubname} {target}"),
            format!("create publication {pubname}"),
            needs,
        ))?;
        db.did(&if wanted.is_empty() {
            format!(
                "created publication {pubname} FOR ALL TABLES on {}",
                db.server
            )
        } else {
            format!(
                "created publication {pubname} on {} with {} table(s): {}",
                db.server,
                wanted.len(),
                names(&wanted)
            )
        });
        return Ok(());
    };
    if req.must_not_exist {
        return Err(Error::AlreadyExists {
            what: "publication",
            name: pubname,
            server: db.server.clone(),
        });
    }
    let drop_hint = format!("DROP PUBLICATION {pubname};");
    match (existing.all_tables, wanted.is_empty()) {
        (true, true) => {
            db.say(&format!(
                "publication {pubname} already exists on {} (FOR ALL TABLES): nothing to do",
                db.server
            ));
            Ok(())
        }
        (true, false) => Err(Error::Conflict(format!(
            "publication {pubname} on {} is FOR ALL TABLES, so it cannot be given a table list: \
             leave out --table, or drop it ({drop_hint}) and run this again",
            db.server
        ))),
        (false, true) => Err(Error::Conflict(format!(
            "publication {pubname} on {} publishes a list of tables, and PostgreSQL cannot turn \
             it into FOR ALL TABLES: pass --table to manage its list, or drop it ({drop_hint}) \
             and run this again",
            db.server
        ))),
        (false, false) => {
            if db.version >= 150000 {
                let schemas: i64 = db
                    .query_one(
                        "SELECT count(*) FROM pg_catalog.pg_publication_namespace WHERE pnpubid = $1",
                        &[&existing.oid],
                    )?
                    .get(0);
                if schemas > 0 {
                    return Err(Error::Conflict(format!(
                        "publication {pubname} on {} also publishes whole schemas (TABLES IN SCHEMA); \
                         replink-pg manages table lists only: change it with ALTER PUBLICATION by hand",
                        db.server
                    )));
                }
            }
            let current = members(db, &existing)?;
            if current == wanted {
                db.say(&format!(
                    "publication {pubname} already exists on {} with these {} table(s): nothing to do",
                    db.server,
                    wanted.len()
                ));
                return Ok(());
            }
            db.change(&Stmt::new(
                format!("ALTER PUBLICATION {pubname} SET TABLE {}", list(&wanted)),
                format!("change the tables of publication {pubname}"),
                "ownership of the publication and of every table listed",
            ))?;
            let added: BTreeSet<_> = wanted.difference(&current).cloned().collect();
            let removed: BTreeSet<_> = current.difference(&wanted).cloned().collect();
            let mut changes = Vec::new();
            if !added.is_empty() {
                changes.push(format!("added {}", names(&added)));
            }
            if !removed.is_empty() {
                changes.push(format!("removed {}", names(&removed)));
            }
            db.did(&format!(
                "publication {pubname} on {}: {}",
                db.server,
                changes.join("; ")
            ));
            Ok(())
        }
    }
}

/// `publisher drop-table`: takes tables out of a publication; tables not in it are noted.
pub fn drop_tables(db: &mut Db, publication: &str, tables: &[QualifiedName]) -> Result<(), Error> {
    let pubname = quote_ident(publication);
    let Some(existing) = find_publication(db, publication)? else {
        return Err(Error::NoPublication {
            name: publication.to_owned(),
            server: db.server.clone(),
            existing: db.publication_names()?,
        });
    };
    if existing.all_tables {
        return Err(Error::Conflict(format!(
            "publication {pubname} on {} is FOR ALL TABLES: no table can be dropped from it; \
             to publish only some tables, drop it (DROP PUBLICATION {pubname};) and run \
             `replink-pg publisher setup --publication {publication} --table …` with the tables to keep",
            db.server
        )));
    }
    let current = members(db, &existing)?;
    let mut to_drop = BTreeSet::new();
    for name in tables {
        match find_relation(db, name)? {
            None => db.say(&format!(
                "note: table {name} does not exist on {}: nothing to drop",
                db.server
            )),
            Some((found, _)) if !current.contains(&found) => db.say(&format!(
                "note: table {found} is not in publication {pubname}: nothing to drop"
            )),
            Some((found, _)) => {
                to_drop.insert(found);
            }
        }
    }
    if to_drop.is_empty() {
        return Ok(());
    }
    db.change(&Stmt::new(
        format!("ALTER PUBLICATION {pubname} DROP TABLE {}", list(&to_drop)),
        format!("drop tables from publication {pubname}"),
        "ownership of the publication",
    ))?;
    db.did(&format!(
        "dropped {} from publication {pubname} on {}; on each subscriber, run \
         ALTER SUBSCRIPTION … REFRESH PUBLICATION; so it stops expecting them",
        names(&to_drop),
        db.server
    ));
    Ok(())
}

/// `publisher create-role`.
#[derive(Clone, Debug)]
pub struct RoleSetup {
    pub role: String,
    pub password: String,
    pub must_not_exist: bool,
}

/// `publisher create-role`: a `REPLICATION LOGIN` role with a password and no grants. The
/// password is sent as a SCRAM-SHA-256 verifier computed here, so the server (and its
/// statement log) never sees it in the clear.
pub fn create_role(db: &mut Db, req: &RoleSetup) -> Result<(), Error> {
    let role = quote_ident(&req.role);
    let verifier = postgres_protocol::password::scram_sha_256(req.password.as_bytes());
    let needs = if db.major() < 16 {
        "superuser (up to PostgreSQL 15 only a superuser may create or alter a REPLICATION role)"
    } else {
        "CREATEROLE and the REPLICATION attribute (or superuser)"
    };
    let existing = db.query(
        "SELECT rolreplication, rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = $1",
        &[&req.role],
    )?;
    let (verb, action) = match existing.first() {
        None => ("CREATE", format!("create role {role}")),
        Some(_) if req.must_not_exist => {
            return Err(Error::AlreadyExists {
                what: "role",
                name: role,
                server: db.server.clone(),
            })
        }
        Some(_) => ("ALTER", format!("alter role {role}")),
    };
    let sql =
        |password: &str| format!("{verb} ROLE {role} WITH REPLICATION LOGIN PASSWORD {password}");
    db.change(
        &Stmt::new(sql(&quote_literal(&verifier)), action, needs)
            .shown_as(sql(&quote_literal(crate::conninfo::REDACTED))),
    )?;
    match existing.first() {
        None => db.did(&format!(
            "created role {role} on {} (REPLICATION LOGIN, password set, no grants)",
            db.server
        )),
        Some(row) => {
            let (replication, login): (bool, bool) = (row.get(0), row.get(1));
            let mut lacked = Vec::new();
            if !replication {
                lacked.push("REPLICATION");
            }
            if !login {
                lacked.push("LOGIN");
            }
            let attributes = if lacked.is_empty() {
                "it already had REPLICATION LOGIN".to_owned()
            } else {
                format!("gave it {}", lacked.join(" and "))
            };
            db.did(&format!(
                "role {role} already existed on {}: {attributes}; password set",
                db.server
            ));
        }
    }
    db.say(&format!(
        "note: {role} has no table privileges; a subscription that connects as it needs SELECT \
         on the published tables for its initial copy, e.g. GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
    ));
    Ok(())
}
