//! [`Db`]: one connection to one server, with errors turned into messages that say what to
//! fix, and the `--dry-run` switch: [`Db::change`] prints a statement instead of running it.

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{NoTls, Row};

use crate::conninfo::{Endpoint, PasswordSource};
use crate::tls::TlsFailure;
use crate::Error;

/// A statement that changes something, with what it is for and the privilege it needs (named
/// in the error when the server says 42501).
#[derive(Clone, Debug)]
pub struct Stmt {
    /// What runs (no trailing `;`).
    pub sql: String,
    /// What is printed (passwords redacted).
    pub shown: String,
    /// "create publication \"p\"", for the permission-denied message.
    pub action: String,
    /// "superuser", "CREATE on the database", …
    pub needs: String,
}

impl Stmt {
    pub fn new(sql: String, action: impl Into<String>, needs: impl Into<String>) -> Stmt {
        Stmt {
            shown: sql.clone(),
            sql,
            action: action.into(),
            needs: needs.into(),
        }
    }

    /// The same statement, printed as `shown` (for statements that carry a password).
    pub fn shown_as(mut self, shown: String) -> Stmt {
        self.shown = shown;
        self
    }
}

/// A connection to one server.
pub struct Db {
    client: postgres::Client,
    pub endpoint: Endpoint,
    /// `host:port/db`, for messages.
    pub server: String,
    /// The role we are logged in as.
    pub user: String,
    /// `server_version_num`, e.g. 150018.
    pub version: u32,
    pub superuser: bool,
    /// Print changes as SQL instead of running them.
    pub dry_run: bool,
}

impl Db {
    pub fn connect(endpoint: &Endpoint, dry_run: bool) -> Result<Db, Error> {
        let client = match &endpoint.tls {
            Some(tls) => endpoint.config.connect(tls.clone()),
            None => endpoint.config.connect(NoTls),
        }
        .map_err(|e| connect_error(endpoint, e))?;
        let mut db = Db {
            client,
            endpoint: endpoint.clone(),
            server: endpoint.label.clone(),
            user: endpoint.user(),
            version: 0,
            superuser: false,
            dry_run,
        };
        let row = db.query_one(
            "SELECT current_user::text, current_setting('server_version_num')::int4, \
             (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)",
            &[],
        )?;
        db.user = row.get(0);
        db.version = u32::try_from(row.get::<_, i32>(1)).unwrap_or(0);
        db.superuser = row.get::<_, Option<bool>>(2).unwrap_or(false);
        Ok(db)
    }

    /// The server's major version (15 for 15.4).
    pub fn major(&self) -> u32 {
        self.version / 10000
    }

    pub fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        self.client.query(sql, params).map_err(|e| Error::Sql {
            server: self.server.clone(),
            sql: sql.to_owned(),
            message: db_message(&e),
        })
    }

    pub fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        let rows = self.query(sql, params)?;
        rows.into_iter().next().ok_or_else(|| Error::Sql {
            server: self.server.clone(),
            sql: sql.to_owned(),
            message: "no row returned".into(),
        })
    }

    /// `current_setting(name)`.
    pub fn setting(&mut self, name: &str) -> Result<String, Error> {
        Ok(self
            .query_one("SELECT current_setting($1)", &[&name])?
            .get(0))
    }

    /// Runs `stmt`, or prints it with `--dry-run`.
    pub fn change(&mut self, stmt: &Stmt) -> Result<(), Error> {
        if self.dry_run {
            println!("{};", stmt.shown);
            return Ok(());
        }
        self.client
            .batch_execute(&stmt.sql)
            .map_err(|e| self.statement_error(stmt, &e))
    }

    /// Runs `stmts` in one transaction (or prints them with `--dry-run`).
    pub fn change_all(&mut self, stmts: &[Stmt]) -> Result<(), Error> {
        if self.dry_run {
            for stmt in stmts {
                println!("{};", stmt.shown);
            }
            return Ok(());
        }
        let mut tx = self.client.transaction().map_err(|e| Error::Sql {
            server: self.server.clone(),
            sql: "BEGIN".into(),
            message: db_message(&e),
        })?;
        for stmt in stmts {
            if let Err(e) = tx.batch_execute(&stmt.sql) {
                // Dropping `tx` rolls back.
                let (server, user) = (self.server.clone(), self.user.clone());
                return Err(statement_error(&server, &user, stmt, &e));
            }
        }
        tx.commit().map_err(|e| Error::Sql {
            server: self.server.clone(),
            sql: "COMMIT".into(),
            message: db_message(&e),
        })
    }

    /// Runs a whole script (several statements, no parameters) in one transaction.
    pub fn run_script(&mut self, script: &str, what: &Stmt) -> Result<(), Error> {
        let (server, user) = (self.server.clone(), self.user.clone());
        let mut tx = self
            .client
            .transaction()
            .map_err(|e| statement_error(&server, &user, what, &e))?;
        tx.batch_execute(script)
            .map_err(|e| statement_error(&server, &user, what, &e))?;
        tx.commit()
            .map_err(|e| statement_error(&server, &user, what, &e))
    }

    /// A line of output: as it is, or as an SQL comment with `--dry-run` (so the dry-run
    /// output stays a script).
    pub fn say(&self, message: &str) {
        say(self.dry_run, message);
    }

    /// Reports a change that was made; silent with `--dry-run`, where the printed SQL says it.
    pub fn did(&self, message: &str) {
        if !self.dry_run {
            println!("{message}");
        }
    }

    fn statement_error(&self, stmt: &Stmt, e: &postgres::Error) -> Error {
        statement_error(&self.server, &self.user, stmt, e)
    }

    /// Refuses unless the server can serve logical replication: `wal_level = logical`, and
    /// WAL senders and replication slots to spare.
    pub fn require_publisher_settings(&mut self) -> Result<(), Error> {
        let wal_level = self.setting("wal_level")?;
        if wal_level != "logical" {
            return Err(Error::WalLevel {
                server: self.server.clone(),
                current: wal_level,
            });
        }
        self.require_positive(
            "max_wal_senders",
            "no subscriber can stream from this server",
        )?;
        self.require_positive(
            "max_replication_slots",
            "no subscription can create its replication slot here",
        )
    }

    /// Refuses when setting `name` is 0 (`why` says what that breaks).
    pub fn require_positive(&mut self, name: &'static str, why: &'static str) -> Result<(), Error> {
        let value = self.setting(name)?;
        if value.trim() == "0" {
            return Err(Error::Setting {
                server: self.server.clone(),
                name,
                value,
                why,
                suggested: 10,
            });
        }
        Ok(())
    }

    /// The names of the publications on this server, for "publications there: …".
    pub fn publication_names(&mut self) -> Result<String, Error> {
        let rows = self.query(
            "SELECT pubname::text FROM pg_catalog.pg_publication ORDER BY 1",
            &[],
        )?;
        let names: Vec<String> = rows
            .iter()
            .map(|r| crate::quote::quote_ident(&r.get::<_, String>(0)))
            .collect();
        Ok(if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        })
    }
}

/// A line of output, or an SQL comment line in dry-run mode.
pub fn say(dry_run: bool, message: &str) {
    if dry_run {
        for line in message.lines() {
            println!("-- {line}");
        }
    } else {
        println!("{message}");
    }
}

fn statement_error(server: &str, user: &str, stmt: &Stmt, e: &postgres::Error) -> Error {
    if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        return Error::Privilege {
            server: server.to_owned(),
            user: user.to_owned(),
            action: stmt.action.clone(),
            message: db_message(e),
            needed: stmt.needs.clone(),
        };
    }
    Error::Sql {
        server: server.to_owned(),
        sql: format!("{};", stmt.shown),
        message: db_message(e),
    }
}

/// The server's message with its detail and hint, or the client library's error.
pub fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => error_chain(e),
    }
}

/// `e` and its sources: the client library's own message is often only "invalid
/// configuration" or "error connecting to server", with the reason in its source.
pub(crate) fn error_chain(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// What went wrong when connecting to `endpoint`, phrased as what to fix.
fn connect_error(endpoint: &Endpoint, e: postgres::Error) -> Error {
    let server = endpoint.label.clone();
    let user = endpoint.user();
    let code = e.code().cloned();
    if code == Some(SqlState::INVALID_PASSWORD) {
        return match &endpoint.password {
            PasswordSource::None {
                url_flag,
                file_flag,
            } => Error::PasswordMissing {
                server,
                user,
                url_flag,
                file_flag,
            },
            source => Error::WrongPassword {
                server,
                user,
                password_from: source.describe(),
            },
        };
    }
    if code == Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION) {
        return Error::LoginRefused {
            server,
            user,
            message: db_message(&e),
            flag: endpoint.url_flag,
        };
    }
    if code == Some(SqlState::INVALID_CATALOG_NAME) {
        return Error::NoDatabase {
            server,
            message: db_message(&e),
            flag: endpoint.url_flag,
        };
    }
    if let Some(failure) = TlsFailure::find(&e) {
        return Error::Tls {
            server,
            flag: endpoint.url_flag,
            problem: failure.to_string(),
        };
    }
    if e.as_db_error().is_none() {
        let text = error_chain(&e);
        if text.contains("server does not support TLS") {
            return Error::Tls {
                server,
                flag: endpoint.url_flag,
                problem: "the server does not do TLS (it answered the SSLRequest with N), and \
                          the sslmode asks for it: turn on ssl on the server, connect to a \
                          replink :postgres route, or lower sslmode"
                    .into(),
            };
        }
        if text.contains("password missing") {
            if let PasswordSource::None {
                url_flag,
                file_flag,
            } = endpoint.password
            {
                return Error::PasswordMissing {
                    server,
                    user,
                    url_flag,
                    file_flag,
                };
            }
        }
        // An I/O error on the way in: refused, unresolvable, timed out, reset.
        if let Some(io) =
            std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>())
        {
            return Error::Unreachable {
                server,
                flag: endpoint.url_flag,
                cause: io.to_string(),
            };
        }
        if text.contains("connecting") || text.contains("timeout") || text.contains("closed") {
            return Error::Unreachable {
                server,
                flag: endpoint.url_flag,
                cause: text,
            };
        }
    }
    Error::Sql {
        server,
        sql: "(connecting)".into(),
        message: db_message(&e),
    }
}
