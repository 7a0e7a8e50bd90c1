//! [`Error`]: every way a command can fail, each message naming the server or object and the
//! fix.

use std::path::PathBuf;

/// Everything `replink-pg` refuses or fails at. The binary prints the message and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- Input -------------------------------------------------------------------------
    #[error("{0}")]
    Name(String),
    #[error("cannot use the connection string of {flag}: {problem}")]
    ConnInfo { flag: &'static str, problem: String },
    #[error("password file {}: {problem}", path.display())]
    PasswordFile { path: PathBuf, problem: String },
    #[error("{param} {} (in the connection string of {flag}): {problem}", path.display())]
    TlsFile {
        flag: &'static str,
        param: &'static str,
        path: PathBuf,
        problem: String,
    },

    // --- Reaching and logging in to a server ------------------------------------------
    #[error("cannot reach PostgreSQL at {server} ({cause}): check that the server, or the replink tunnel in front of it, is up and listening there, and the host and port in {flag}")]
    Unreachable {
        server: String,
        flag: &'static str,
        cause: String,
    },
    #[error("TLS with PostgreSQL at {server} failed: {problem} (connection string of {flag})")]
    Tls {
        server: String,
        flag: &'static str,
        problem: String,
    },
    #[error("password authentication failed for user \"{user}\" at {server}: the password comes from {password_from}; fix it there (or the role's password on the server)")]
    WrongPassword {
        server: String,
        user: String,
        password_from: String,
    },
    #[error("{server} asks for a password for user \"{user}\" and none was given: put it in a file (chmod 600) and pass {file_flag}, or in the connection string of {url_flag}")]
    PasswordMissing {
        server: String,
        user: String,
        url_flag: &'static str,
        file_flag: &'static str,
    },
    #[error("{server} refused user \"{user}\": {message}; allow it in pg_hba.conf on that server (then SELECT pg_reload_conf();) or fix the user in {flag}")]
    LoginRefused {
        server: String,
        user: String,
        message: String,
        flag: &'static str,
    },
    #[error(
        "{server}: {message}; create it (CREATE DATABASE …) or fix the database name in {flag}"
    )]
    NoDatabase {
        server: String,
        message: String,
        flag: &'static str,
    },

    // --- Server state -----------------------------------------------------------------
    #[error("permission denied on {server} for user \"{user}\" to {action} ({message}): it needs {needed}")]
    Privilege {
        server: String,
        user: String,
        action: String,
        message: String,
        needed: String,
    },
    #[error("wal_level is '{current}' on {server}, and logical replication needs 'logical': run\n    ALTER SYSTEM SET wal_level = logical;\nthere as a superuser, then restart the server (a reload is not enough)")]
    WalLevel { server: String, current: String },
    #[error("{name} is {value} on {server}, so {why}: run\n    ALTER SYSTEM SET {name} = {suggested};\nthere as a superuser, then restart the server")]
    Setting {
        server: String,
        name: &'static str,
        value: String,
        why: &'static str,
        suggested: u32,
    },
    #[error("{what} {name} already exists on {server} (--must-not-exist)")]
    AlreadyExists {
        what: &'static str,
        name: String,
        server: String,
    },
    #[error("publication \"{name}\" does not exist on {server}; publications there: {existing}. Create it on the publisher with `replink-pg publisher setup --publication {name}`")]
    NoPublication {
        name: String,
        server: String,
        existing: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{server}: {problem}")]
    Object { server: String, problem: String },

    // --- Tools and SQL ----------------------------------------------------------------
    #[error("{0}")]
    PgDump(String),
    #[error("{server}: {message}\n  while running: {sql}")]
    Sql {
        server: String,
        sql: String,
        message: String,
    },
    #[error("{0}")]
    Watch(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
