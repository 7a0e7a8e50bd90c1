//! `--copy-schema`: finding a `pg_dump` new enough for the publisher and running it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::conninfo::Endpoint;
use crate::Error;

/// The flags `pg_dump` runs with: the schema only, without the publication (the subscriber
/// must not publish it again) or subscriptions, and without owners and grants, which name
/// roles the subscriber may not have. Objects end up owned by the subscriber's user.
pub const PG_DUMP_FLAGS: &[&str] = &[
    "--schema-only",
    "--no-publications",
    "--no-subscriptions",
    "--no-owner",
    "--no-privileges",
];

/// A `pg_dump` binary and its major version.
#[derive(Clone, Debug)]
pub struct PgDump {
    pub path: PathBuf,
    pub major: u32,
}

/// The major version in `pg_dump --version` output ("pg_dump (PostgreSQL) 15.4 (Debian …)").
pub fn parse_version(output: &str) -> Option<u32> {
    let after = output.split(')').nth(1)?;
    let version = after.split_whitespace().next()?;
    version.split(['.', 'b', 'r', 'd']).next()?.parse().ok()
}

fn version_of(path: &Path) -> Option<u32> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// Every `pg_dump` found: the first on `PATH`, then `/usr/lib/postgresql/*/bin/pg_dump`.
fn candidates() -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|dir| dir.join("pg_dump"))
            .find(|p| p.is_file())
        {
            found.push(p);
        }
    }
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        for dir in dirs.flatten() {
            let p = dir.path().join("bin/pg_dump");
            if p.is_file() {
                found.push(p);
            }
        }
    }
    found
}

/// A `pg_dump` at least as new as the server it will dump (`server_major`): `explicit`
/// (`--pg-dump`) if given, else the newest of [`candidates`].
pub fn find_pg_dump(
    explicit: Option<&Path>,
    server_major: u32,
    server: &str,
) -> Result<PgDump, Error> {
    let paths = match explicit {
        Some(p) => vec![p.to_owned()],
        None => candidates(),
    };
    let mut found: Vec<PgDump> = paths
        .into_iter()
        .filter_map(|path| version_of(&path).map(|major| PgDump { path, major }))
        .collect();
    found.sort_by_key(|d| d.major);
    let Some(newest) = found.pop() else {
        return Err(Error::PgDump(match explicit {
            Some(p) => format!("--copy-schema: {} is not a working pg_dump", p.display()),
            None => "--copy-schema needs pg_dump, and there is none on PATH or under \
                     /usr/lib/postgresql/*/bin: install the PostgreSQL client \
                     (apt-get install postgresql-client) or pass --pg-dump PATH"
                .into(),
        }));
    };
    if newest.major < server_major {
        return Err(Error::PgDump(format!(
            "--copy-schema: the publisher {server} runs PostgreSQL {server_major}, and the newest \
             pg_dump found ({}, version {}) is older; pg_dump must be at least as new as the \
             server it dumps: install postgresql-client-{server_major} or pass --pg-dump PATH",
            newest.path.display(),
            newest.major
        )));
    }
    Ok(newest)
}

/// Runs `pg_dump` against the publisher and returns the SQL, without the psql
/// meta-commands (`\restrict`, `\unrestrict`) that recent pg_dump releases add.
pub fn dump_schema(
    pg_dump: &PgDump,
    publisher: &Endpoint,
    conninfo: &str,
) -> Result<String, Error> {
    let mut cmd = Command::new(&pg_dump.path);
    cmd.args(PG_DUMP_FLAGS)
        .arg("--dbname")
        .arg(conninfo)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    if let Some(pw) = publisher.password() {
        // Through the environment, so the password is not in pg_dump's argv.
        cmd.env("PGPASSWORD", pw);
    }
    let out = cmd.output().map_err(|e| {
        Error::PgDump(format!(
            "--copy-schema: cannot run {}: {e}",
            pg_dump.path.display()
        ))
    })?;
    if !out.status.success() {
        return Err(Error::PgDump(format!(
            "--copy-schema: {} failed against the publisher {}:\n{}",
            pg_dump.path.display(),
            publisher.label,
            String::from_utf8_lossy(&out.stderr).trim_end()
        )));
    }
    let sql = String::from_utf8(out.stdout)
        .map_err(|_| Error::PgDump("--copy-schema: pg_dump's output is not UTF-8".into()))?;
    Ok(strip_meta_commands(&sql))
}

/// Drops the `\restrict KEY` / `\unrestrict KEY` lines pg_dump adds (since 17.6, 16.10,
/// 15.14, …) for psql; the SQL runs here over the protocol, where they are not commands.
pub fn strip_meta_commands(sql: &str) -> String {
    sql.lines()
        .filter(|line| {
            let mut words = line.split_whitespace();
            let meta = matches!(words.next(), Some("\\restrict" | "\\unrestrict"));
            !(meta && words.next().is_some() && words.next().is_none())
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_dump_versions() {
        assert_eq!(
            parse_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_version("pg_dump (PostgreSQL) 17.2\n"), Some(17));
        assert_eq!(parse_version("pg_dump (PostgreSQL) 18beta1\n"), Some(18));
        assert_eq!(parse_version("pg_dump (PostgreSQL) 9.6.24\n"), Some(9));
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn meta_commands_are_stripped_and_sql_kept() {
        let dump = "--\n\\restrict abc123\nSET x = 1;\nCREATE FUNCTION f() AS $$\n\\restrict\n$$;\n\\unrestrict abc123\n";
        assert_eq!(
            strip_meta_commands(dump),
            "--\nSET x = 1;\nCREATE FUNCTION f() AS $$\n\\restrict\n$$;\n"
        );
    }
}
