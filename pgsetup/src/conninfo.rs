//! Connection strings: which server a command talks to, where its password comes from, and
//! the conninfo a subscription stores.
//!
//! Both libpq forms are accepted everywhere: URIs (`postgresql://user@host:5432/db`) and
//! keyword/value strings (`host=… port=… dbname=…`). A password can stay out of argv: it is
//! read from a file (mode 0600) and, for a subscription's conninfo, appended to the string the
//! subscriber server stores. Printed conninfos are always [`redact`]ed.

use std::fmt::Write as _;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use postgres::config::Host;

use crate::tls::{self, LibpqTls, SslParams};
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

/// Appended to tokio-postgres' "unknown option" error: which of libpq's parameters
/// replink-pg's own connections understand (the subscriber server's libpq knows them all).
const UNKNOWN_OPTION_HINT: &str = "; replink-pg connects with host, hostaddr, port, user, \
    password, dbname, options, application_name, connect_timeout, tcp_user_timeout, \
    keepalives*, target_session_attrs, channel_binding, load_balance_hosts, sslnegotiation and \
    the TLS parameters sslmode, sslrootcert, sslcert, sslkey and sslsni";

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
    /// libpq's TLS as the string asks for it; `None`: plaintext (`sslmode=disable`, or only
    /// Unix sockets, over which libpq never uses TLS).
    pub tls: Option<LibpqTls>,
    /// `127.0.0.1:5432/app`, `/var/run/postgresql:5432/app`.
    pub label: String,
    /// The flag the connection string came from (`--database-url`, `--publisher-url`).
    pub url_flag: &'static str,
    pub password: PasswordSource,
}

impl Endpoint {
    /// Parses `conninfo` (given by `url_flag`) and adds the password from `password_file`
    /// (given by `file_flag`). Without a host, the local socket directory is used, as libpq
    /// on Debian does. The TLS parameters are libpq's ([`crate::tls`]); their files are read
    /// here, so a bad one is named before any connection is made.
    pub fn new(
        conninfo: &str,
        url_flag: &'static str,
        password_file: Option<&Path>,
        file_flag: &'static str,
    ) -> Result<Endpoint, Error> {
        let conninfo_error = |problem: String| Error::ConnInfo {
            flag: url_flag,
            problem,
        };
        let (rest, tls_pairs) = split_tls_params(conninfo).map_err(conninfo_error)?;
        let ssl = SslParams::from_pairs(tls_pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(conninfo_error)?;
        let mut config = postgres::Config::from_str(&rest).map_err(|e| {
            // tokio-postgres' own message is "invalid connection string"; the reason is its
            // source.
            let mut problem = crate::db::error_chain(&e);
            if problem.contains("unknown option") {
                problem.push_str(UNKNOWN_OPTION_HINT);
            }
            conninfo_error(problem)
        })?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            config.host_path("/var/run/postgresql");
        }
        let tls = tls_for(&mut config, &ssl, url_flag)?;
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
            tls,
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

/// Sets tokio-postgres' sslmode for `ssl` and builds the TLS config, or `None` when no
/// connection will use TLS.
fn tls_for(
    config: &mut postgres::Config,
    ssl: &SslParams,
    flag: &'static str,
) -> Result<Option<LibpqTls>, Error> {
    let only_sockets = config.get_hostaddrs().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)));
    if ssl.mode == tls::SslMode::Disable || only_sockets {
        config.ssl_mode(postgres::config::SslMode::Disable);
        return Ok(None);
    }
    config.ssl_mode(ssl.mode.for_tokio_postgres());
    if config.get_hosts().is_empty() {
        // hostaddr alone. tokio-postgres takes the TLS server name from host only; libpq
        // checks no name then, which verify-full cannot do without one.
        if ssl.mode == tls::SslMode::VerifyFull {
            return Err(Error::ConnInfo {
                flag,
                problem: "sslmode=verify-full checks the server's certificate against host=, \
                          and only hostaddr= is given: add host=NAME (the name in the \
                          certificate; for replink, the route's name)"
                    .into(),
            });
        }
        let addrs: Vec<String> = config
            .get_hostaddrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
        for addr in addrs {
            config.host(&addr);
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let files = ssl
        .files(home.as_deref())
        .map_err(|problem| Error::ConnInfo { flag, problem })?;
    tls::client_config(ssl, &files)
        .map(Some)
        .map_err(|e| Error::TlsFile {
            flag,
            param: e.param,
            path: e.path,
            problem: e.problem,
        })
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

/// Replaces the `password` values of a keyword/value string (the rest kept as written).
fn redact_kv(conninfo: &str) -> String {
    let pairs = kv_pairs(conninfo);
    let mut out = String::new();
    let mut kept = 0;
    for pair in pairs.iter().filter(|p| p.key == "password") {
        out.push_str(&conninfo[kept..pair.written_value.start]);
        out.push_str(&format!("'{REDACTED}'"));
        kept = pair.written_value.end;
    }
    out.push_str(&conninfo[kept..]);
    out
}

/// One `keyword = value` of a keyword/value conninfo.
#[derive(Debug)]
struct KvPair {
    key: String,
    /// Without its quotes and backslash escapes.
    value: String,
    /// Where the pair is in the string, keyword to the end of the value.
    pair: Range<usize>,
    /// Where the value is in the string, as written (with its quotes).
    written_value: Range<usize>,
    /// False for a quoted value that runs to the end of the string without its closing quote.
    closed: bool,
}

/// The pairs of a keyword/value string, read with libpq's rules: `key = value`, values bare
/// (up to whitespace) or single-quoted, `\` escaping the next character; up to where the string
/// stops being keyword/value, if it does (callers keep that rest as written).
fn kv_pairs(conninfo: &str) -> Vec<KvPair> {
    let chars: Vec<(usize, char)> = conninfo.char_indices().collect();
    let at = |i: usize| chars.get(i).map_or(conninfo.len(), |&(byte, _)| byte);
    let is_ws = |i: usize| chars.get(i).is_some_and(|&(_, c)| c.is_whitespace());
    let is = |i: usize, want: char| chars.get(i).is_some_and(|&(_, c)| c == want);
    let mut pairs = Vec::new();
    let mut i = 0;
    loop {
        while is_ws(i) {
            i += 1;
        }
        if i >= chars.len() {
            return pairs;
        }
        let key_start = i;
        while i < chars.len() && !is(i, '=') && !is_ws(i) {
            i += 1;
        }
        let key = conninfo[at(key_start)..at(i)].to_owned();
        while is_ws(i) {
            i += 1;
        }
        if !is(i, '=') {
            return pairs;
        }
        i += 1;
        while is_ws(i) {
            i += 1;
        }
        let value_start = i;
        let quoted = is(i, '\'');
        if quoted {
            i += 1;
        }
        let mut value = String::new();
        let mut closed = !quoted;
        while i < chars.len() {
            let c = chars[i].1;
            if quoted && c == '\'' {
                i += 1;
                closed = true;
                break;
            }
            if !quoted && c.is_whitespace() {
                break;
            }
            if c == '\\' {
                i += 1;
                if let Some(&(_, escaped)) = chars.get(i) {
                    value.push(escaped);
                }
            } else {
                value.push(c);
            }
            i += 1;
        }
        i = i.min(chars.len());
        pairs.push(KvPair {
            key,
            value,
            pair: at(key_start)..at(i),
            written_value: at(value_start)..at(i),
            closed,
        });
    }
}

/// `conninfo` without the TLS parameters ([`tls::PARAMS`]), for tokio-postgres' parser, and
/// those parameters' `(key, value)` pairs in the order written.
pub fn split_tls_params(conninfo: &str) -> Result<(String, Vec<(String, String)>), String> {
    let conninfo = conninfo.trim();
    if is_uri(conninfo) {
        return split_uri_tls_params(conninfo);
    }
    let pairs = kv_pairs(conninfo);
    let mut rest = String::new();
    let mut kept = 0;
    let mut taken = Vec::new();
    for pair in pairs
        .into_iter()
        .filter(|p| tls::PARAMS.contains(&p.key.as_str()))
    {
        if !pair.closed {
            return Err(format!(
                "the quoted value of {} has no closing quote",
                pair.key
            ));
        }
        rest.push_str(&conninfo[kept..pair.pair.start]);
        kept = pair.pair.end;
        taken.push((pair.key, pair.value));
    }
    rest.push_str(&conninfo[kept..]);
    Ok((rest, taken))
}

fn split_uri_tls_params(uri: &str) -> Result<(String, Vec<(String, String)>), String> {
    let Some((base, query)) = uri.split_once('?') else {
        return Ok((uri.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for param in query.split('&') {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let key = percent_decode(key)?;
        if tls::PARAMS.contains(&key.as_str()) {
            taken.push((key, percent_decode(value)?));
        } else {
            kept.push(param);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, taken))
}

/// `%XX` escapes of a URI part decoded (as libpq: `+` stays `+`).
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
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

    const LISTENER: &str = "host=pg.repl.test hostaddr=127.0.0.1 port=40749 user=postgres \
        dbname=postgres sslmode=verify-full sslrootcert=/x/ca.pem sslcert=/x/client.pem \
        sslkey=/x/client.key";

    fn taken(conninfo: &str) -> Vec<(String, String)> {
        split_tls_params(conninfo).unwrap().1
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tls_params_come_out_of_keyword_value_strings() {
        let (rest, tls) = split_tls_params(LISTENER).unwrap();
        assert_eq!(
            tls,
            pairs(&[
                ("sslmode", "verify-full"),
                ("sslrootcert", "/x/ca.pem"),
                ("sslcert", "/x/client.pem"),
                ("sslkey", "/x/client.key"),
            ])
        );
        let config = postgres::Config::from_str(&rest).unwrap();
        assert_eq!(config.get_hosts(), [Host::Tcp("pg.repl.test".into())]);
        assert_eq!(
            config.get_hostaddrs(),
            ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(config.get_ports(), [40749]);
        assert_eq!(config.get_user(), Some("postgres"));

        // Quoted values, spaces around `=`, escapes, and keys in any place.
        let (rest, tls) = split_tls_params(
            r"sslcert = '/my certs/c.pem' host=h sslsni=0 user='o\'brien' sslkey=/k\ x",
        )
        .unwrap();
        assert_eq!(
            tls,
            pairs(&[
                ("sslcert", "/my certs/c.pem"),
                ("sslsni", "0"),
                ("sslkey", "/k x")
            ])
        );
        let config = postgres::Config::from_str(&rest).unwrap();
        assert_eq!(config.get_user(), Some("o'brien"));
        assert!(split_tls_params("host=h sslcert='/x").is_err());
        assert_eq!(taken("host=h port=5432"), pairs(&[]));
    }

    #[test]
    fn tls_params_come_out_of_uris() {
        let (rest, tls) = split_tls_params(
            "postgresql://rep@pg.repl.test:40749/app?sslmode=verify-ca&application_name=x\
             &sslrootcert=%2Fx%2Fmy%20ca.pem&hostaddr=127.0.0.1",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgresql://rep@pg.repl.test:40749/app?application_name=x&hostaddr=127.0.0.1"
        );
        assert_eq!(
            tls,
            pairs(&[("sslmode", "verify-ca"), ("sslrootcert", "/x/my ca.pem")])
        );
        let (rest, tls) = split_tls_params("postgres://h/d?sslmode=disable").unwrap();
        assert_eq!(
            (rest.as_str(), tls),
            ("postgres://h/d", pairs(&[("sslmode", "disable")]))
        );
        assert_eq!(
            split_tls_params("postgres://h/d").unwrap().0,
            "postgres://h/d"
        );
        assert!(split_tls_params("postgres://h/d?sslcert=%zz").is_err());
    }

    #[test]
    fn endpoints_take_libpq_sslmodes() {
        let err = |conninfo: &str| {
            Endpoint::new(
                conninfo,
                "--publisher-url",
                None,
                "--publisher-password-file",
            )
            .err()
            .unwrap()
            .to_string()
        };
        let e = err("host=h sslmode=verify_full");
        assert!(
            e.starts_with("cannot use the connection string of --publisher-url: invalid sslmode"),
            "{e}"
        );
        let e = err("postgresql://h/d?sslmode=bogus");
        assert!(e.contains("invalid sslmode \"bogus\""), "{e}");
        let e = err("hostaddr=127.0.0.1 sslmode=verify-full sslrootcert=/nonexistent");
        assert!(e.contains("add host=NAME"), "{e}");
        let e = err("host=h sslcrl=/x/crl.pem");
        assert!(e.contains("unknown option `sslcrl`"), "{e}");
        assert!(e.contains("sslrootcert, sslcert, sslkey and sslsni"), "{e}");
        let e = err("host=h sslmode=require sslrootcert=/nonexistent/ca.pem");
        assert!(
            e.contains("sslrootcert /nonexistent/ca.pem does not exist"),
            "{e}"
        );

        assert!(endpoint("host=h sslmode=disable").tls.is_none());
        assert!(endpoint("postgresql://u@h/d?sslmode=require").tls.is_some());
        // libpq's default, prefer: TLS if the server offers it.
        assert!(endpoint("host=h").tls.is_some());
        // Never over Unix sockets, as libpq.
        assert!(endpoint("dbname=app sslmode=require").tls.is_none());
        assert!(endpoint("host=/tmp sslmode=require").tls.is_none());
        // hostaddr alone: the address doubles as the TLS server name.
        let e = endpoint("hostaddr=127.0.0.1 port=1 sslmode=require");
        assert_eq!(e.config.get_hosts(), [Host::Tcp("127.0.0.1".into())]);
        assert_eq!(e.label, "127.0.0.1:1/(default database)");
        assert!(endpoint("hostaddr=127.0.0.1 sslmode=disable")
            .config
            .get_hosts()
            .is_empty());
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
        assert_eq!(redact("password='ab c"), "password='********'");
        assert_eq!(
            redact("host=h password=a\\ b junk"),
            "host=h password='********' junk"
        );
    }
}
