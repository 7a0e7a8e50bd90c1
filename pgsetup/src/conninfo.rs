//! Connection strings: which server a command talks to, where its password comes from, and
//! the conninfo a subscription stores.
//!
//! Both libpq forms are accepted everywhere: URIs (`postgresql://user@host:5432/db`) and
//! keyword/value strings (`host=… port=… dbname=…`). A password can stay out of argv: it is
//! read from a file (mode 0600) and, for a subscription's conninfo, appended to the string the
//! subscriber server stores. Printed conninfos are always [`redact`]ed.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use postgres::config::Host;

use crate::Error;

/// What a printed password is replaced with.
pub const REDACTED: &str = "********";

/// Reads a password file: it must not be readable by group or others, and one trailing
/// newline (`\n` or `\r\n`) is not part of the password.
pub fn read_password_file(path: &Path) -> Result<String, Error> {
    let problem = |problem: String| Error::PasswordFile {
        path: path.to_owned(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| problem(format!("cannot read it: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(problem(format!(
            "holds a password but group or others can read it (mode {mode:04o}); run: chmod 600 {}",
            path.display()
        )));
    }
    let mut text =
        std::fs::read_to_string(path).map_err(|e| problem(format!("cannot read it: {e}")))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(problem("is empty".into()));
    }
    Ok(text)
}

/// Where the password for a connection comes from, for error messages that say what to fix.
#[derive(Clone, Debug)]
pub enum PasswordSource {
    File {
        flag: &'static str,
        path: PathBuf,
    },
    Url {
        flag: &'static str,
    },
    None {
        url_flag: &'static str,
        file_flag: &'static str,
    },
}

impl PasswordSource {
    /// "the password file F (--password-file)" and the like.
    pub fn describe(&self) -> String {
        match self {
            PasswordSource::File { flag, path } => {
                format!("the password file {} ({flag})", path.display())
            }
            PasswordSource::Url { flag } => format!("the connection string of {flag}"),
            PasswordSource::None { .. } => "no password was given".into(),
        }
    }
}

/// A server this tool connects to itself: the parsed connection settings, a label for
/// messages (`host:port/db`), and the flags that configured it.
#[derive(Clone)]
pub struct Endpoint {
    pub config: postgres::Config,
    /// `127.0.0.1:5432/app`, `/var/run/postgresql:5432/app`.
    pub label: String,
    /// The flag the connection string came from (`--database-url`, `--publisher-url`).
    pub url_flag: &'static str,
    pub password: PasswordSource,
}

impl Endpoint {
    /// Parses `conninfo` (given by `url_flag`) and adds the password from `password_file`
    /// (given by `file_flag`). Without a host, the local socket directory is used, as libpq
    /// on Debian does.
    pub fn new(
        conninfo: &str,
        url_flag: &'static str,
        password_file: Option<&Path>,
        file_flag: &'static str,
    ) -> Result<Endpoint, Error> {
        let mut config = postgres::Config::from_str(conninfo).map_err(|e| Error::ConnInfo {
            flag: url_flag,
            problem: e.to_string(),
        })?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            config.host_path("/var/run/postgresql");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("replink-pg");
        }
        let password = match (password_file, config.get_password().is_some()) {
            (Some(_), true) => {
                return Err(Error::ConnInfo {
                    flag: url_flag,
                    problem: format!("it holds a password and {file_flag} gives one too; keep one"),
                })
            }
            (Some(path), false) => {
                config.password(read_password_file(path)?);
                PasswordSource::File {
                    flag: file_flag,
                    path: path.to_owned(),
                }
            }
            (None, true) => PasswordSource::Url { flag: url_flag },
            (None, false) => PasswordSource::None {
                url_flag,
                file_flag,
            },
        };
        Ok(Endpoint {
            label: label(&config),
            config,
            url_flag,
            password,
        })
    }

    /// The user the connection logs in as (libpq's default: the OS user).
    pub fn user(&self) -> String {
        match self.config.get_user() {
            Some(user) => user.to_owned(),
            None => std::env::var("USER").unwrap_or_else(|_| "(the OS user)".into()),
        }
    }

    pub fn password(&self) -> Option<String> {
        self.config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }
}

/// `host:port/db` for messages, from the first host (and all of them when there are several).
fn label(config: &postgres::Config) -> String {
    let ports = config.get_ports();
    let mut hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) if name.contains(':') => format!("[{name}]"),
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if hosts.is_empty() {
        hosts = config
            .get_hostaddrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
    }
    let with_ports: Vec<String> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{h}:{port}")
        })
        .collect();
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("(default database)");
    format!("{}/{db}", with_ports.join(","))
}

fn is_uri(conninfo: &str) -> bool {
    let c = conninfo.trim_start();
    c.starts_with("postgresql://") || c.starts_with("postgres://")
}

/// `conninfo` with `password` added, in the string's own form: a `password=` query
/// parameter (percent-encoded) for a URI, a quoted `password='…'` pair otherwise.
pub fn with_password(conninfo: &str, password: &str) -> String {
    let conninfo = conninfo.trim();
    if is_uri(conninfo) {
        let sep = if conninfo.contains('?') { '&' } else { '?' };
        let mut out = format!("{conninfo}{sep}password=");
        for b in password.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
        out
    } else {
        format!("{conninfo} password={}", kv_quote(password))
    }
}

/// A keyword/value conninfo value: single-quoted, with `\` and `'` escaped by a backslash.
fn kv_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `conninfo` with every password replaced by [`REDACTED`]: the `user:password@` of a URI,
/// its `password=` parameter, and a keyword/value `password` pair.
pub fn redact(conninfo: &str) -> String {
    if is_uri(conninfo) {
        redact_uri(conninfo)
    } else {
        redact_kv(conninfo)
    }
}

fn redact_uri(uri: &str) -> String {
    let scheme_end = uri.find("://").map(|i| i + 3).unwrap_or(0);
    let (head, rest) = uri.split_at(scheme_end);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!("{}:{REDACTED}{}", &authority[..colon], &authority[at..]),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some(("password", _)) => format!("password={REDACTED}"),
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{head}{authority}{tail}")
}

/// Walks a keyword/value string with libpq's rules (`key = value`, values bare or
/// single-quoted, `\` escaping the next character) and replaces `password` values.
fn redact_kv(conninfo: &str) -> String {
    let chars: Vec<char> = conninfo.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize, out: &mut String| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            out.push(chars[*i]);
            *i += 1;
        }
    };
    while i < chars.len() {
        skip_ws(&mut i, &mut out);
        let key_start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[key_start..i].iter().collect();
        out.push_str(&key);
        skip_ws(&mut i, &mut out);
        if i >= chars.len() || chars[i] != '=' {
            // Not keyword/value after all: keep the rest as it is.
            out.extend(&chars[i..]);
            break;
        }
        out.push('=');
        i += 1;
        skip_ws(&mut i, &mut out);
        let value_start = i;
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i = (i + 1).min(chars.len());
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i = i.min(chars.len());
        }
        if key == "password" {
            out.push_str(&format!("'{REDACTED}'"));
        } else {
            out.extend(&chars[value_start..i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(conninfo: &str) -> Endpoint {
        Endpoint::new(conninfo, "--database-url", None, "--password-file").unwrap()
    }

    #[test]
    fn labels_name_host_port_and_database() {
        assert_eq!(
            endpoint("postgresql://u@db.example:6543/app").label,
            "db.example:6543/app"
        );
        assert_eq!(
            endpoint("host=127.0.0.1 dbname=x user=u").label,
            "127.0.0.1:5432/x"
        );
        assert_eq!(endpoint("postgresql://u@[::1]/app").label, "[::1]:5432/app");
        assert_eq!(
            endpoint("dbname=app user=u").label,
            "/var/run/postgresql:5432/app"
        );
        assert_eq!(endpoint("postgresql://a:1,b:2/d").label, "a:1,b:2/d");
    }

    #[test]
    fn password_sources() {
        let e = endpoint("postgresql://u:pw@h/d");
        assert!(matches!(e.password, PasswordSource::Url { .. }));
        assert_eq!(e.password().as_deref(), Some("pw"));
        assert!(matches!(
            endpoint("postgresql://u@h/d").password,
            PasswordSource::None { .. }
        ));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Endpoint::new(
            "host=h user=u",
            "--database-url",
            Some(&file),
            "--password-file",
        )
        .unwrap();
        assert_eq!(e.password().as_deref(), Some("s3cret"));
        let both = Endpoint::new(
            "postgresql://u:x@h/d",
            "--database-url",
            Some(&file),
            "--password-file",
        );
        assert!(both.err().unwrap().to_string().contains("keep one"));
    }

    #[test]
    fn password_files_must_be_private_and_lose_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "a b\n\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_password_file(&file).unwrap_err().to_string();
        assert!(
            err.contains(&format!("chmod 600 {}", file.display())),
            "{err}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file(&file).unwrap(), "a b\n");
        std::fs::write(&file, "x\r\n").unwrap();
        assert_eq!(read_password_file(&file).unwrap(), "x");
        std::fs::write(&file, "\n").unwrap();
        assert!(read_password_file(&file)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let missing = read_password_file(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read"), "{missing}");
    }

    #[test]
    fn passwords_are_added_in_the_strings_own_form_and_parse_back() {
        let pw = "p@ss w'o\\rd?&=%";
        for base in [
            "postgresql://rep@127.0.0.1:15432/app",
            "postgresql://rep@h/app?sslmode=disable",
            "host=h user=rep dbname=app",
        ] {
            let full = with_password(base, pw);
            let parsed = postgres::Config::from_str(&full).unwrap();
            assert_eq!(parsed.get_password(), Some(pw.as_bytes()), "{full}");
            assert_eq!(parsed.get_user(), Some("rep"));
            assert!(!redact(&full).contains("w'o"), "{}", redact(&full));
        }
    }

    #[test]
    fn redaction_hides_every_password_form() {
        assert_eq!(
            redact("postgresql://rep:secret@h:5432/app?password=x&sslmode=disable"),
            "postgresql://rep:********@h:5432/app?password=********&sslmode=disable"
        );
        assert_eq!(redact("postgres://rep@h/app"), "postgres://rep@h/app");
        assert_eq!(
            redact("host=h password='a \\' b' user=u"),
            "host=h password='********' user=u"
        );
        assert_eq!(
            redact("host=h password = abc"),
            "host=h password = '********'"
        );
        assert_eq!(redact("password=abc"), "password='********'");
    }
}
