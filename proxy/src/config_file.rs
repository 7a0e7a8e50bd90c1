//! The service-mode config file: `replink run --config FILE` and `replink check --config FILE`.
//!
//! TOML. One file holds any number of `[[listener]]` tables, each `reverse` or `forward`, each
//! with its own TLS identity, CA, CRLs, routes (`[[listener.route]]`) and options; every flag
//! of the quick modes has a key of the same name (`--connect-timeout` → `connect_timeout`).
//! Durations and sizes are typed strings (`"30s"`, `"64GiB"`). Unknown keys are errors.
//!
//! The file is walked with its spans (`toml::de::DeTable`) rather than deserialised, so that
//! one pass reports every error it finds, each with its line, column and key path
//! ([`ConfigErrors`]), instead of stopping at the first. [`render`] prints the effective
//! config (every default filled in) in the same format, which is also what
//! `--print-config` shows for a quick-mode command line. Secrets are never in the file:
//! private keys are named by path and read (and permission-checked) at start-up.

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::authz::{AllowList, AllowRule};
use toml::Spanned;

use crate::config::{
    parse_duration, parse_size, BpfClassifier, Cipher, Compression, ForwardTarget, IoDriver, Ktls,
    ListenerConfig, Mode, Route, RouteKind, SessionResumption, Target, TlsFiles,
};

/// SIGTERM's wait for connections to end, unless set.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// What `run` starts: named listeners, and the log filter if the file sets one.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub log_level: Option<String>,
    /// How long SIGTERM waits for connections to end before closing them.
    pub shutdown_timeout: Duration,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (none: not at all).
    pub admin: Option<std::net::SocketAddr>,
    pub listeners: Vec<NamedListener>,
}

#[derive(Clone, Debug)]
pub struct NamedListener {
    pub name: String,
    pub config: ListenerConfig,
}

/// One problem in the file, where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: usize,
    pub column: usize,
    /// Dotted path of the key (`listener[1].route[0].target`), or `-` for a syntax error.
    pub key: String,
    pub reason: String,
}

/// Every problem found in one file.
#[derive(Debug)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.path.display(),
                e.line,
                e.column,
                e.key,
                e.reason
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<ServiceConfig, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) => Err(ConfigErrors {
            path: path.to_owned(),
            errors: vec![ConfigError {
                line: 0,
                column: 0,
                key: "-".into(),
                reason: format!("cannot read the file: {e}"),
            }],
        }),
    }
}

/// Checks `text` (the contents of `path`, named in the errors).
pub fn parse(path: &Path, text: &str) -> Result<ServiceConfig, ConfigErrors> {
    let mut cx = Cx {
        text,
        errors: Vec::new(),
    };
    let (root, syntax) = DeTable::parse_recoverable(text);
    for e in syntax {
        let span = e.span().unwrap_or(0..0);
        cx.error(span, "-", e.message().trim_end().to_owned());
    }
    let config = if cx.errors.is_empty() {
        cx.service(root.get_ref())
    } else {
        None
    };
    match config {
        Some(c) if cx.errors.is_empty() => Ok(c),
        _ => {
            cx.errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors {
                path: path.to_owned(),
                errors: cx.errors,
            })
        }
    }
}

struct Cx<'t> {
    text: &'t str,
    errors: Vec<ConfigError>,
}

type Value<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &["log_level", "shutdown_timeout", "admin", "listener"];
const LISTENER_KEYS: &[&str] = &[
    "name",
    "mode",
    "listen",
    "cert",
    "key",
    "ca",
    "crls",
    "allow_expired_crl",
    "tls12",
    "ciphers",
    "compression",
    "zstd_level",
    "workers",
    "io_driver",
    "ktls",
    "bpf_classifier",
    "connect_timeout",
    "handshake_timeout",
    "idle_timeout",
    "keepalive",
    "max_connections",
    "rekey_after",
    "route",
    "target",
    "sni",
    "server_name",
    "session_resumption",
];
const ROUTE_KEYS: &[&str] = &["sni", "target", "kind", "allow"];
const REVERSE_ONLY: &[&str] = &["route", "bpf_classifier"];
const FORWARD_ONLY: &[&str] = &["target", "sni", "server_name", "session_resumption"];

impl Cx<'_> {
    fn error(&mut self, span: Range<usize>, key: &str, reason: impl Into<String>) {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        self.errors.push(ConfigError {
            line,
            column,
            key: key.to_owned(),
            reason: reason.into(),
        });
    }

    /// Flags keys of `table` not in `allowed`.
    fn unknown_keys(&mut self, table: &DeTable<'_>, path: &str, allowed: &[&str]) {
        for key in table.keys() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                let reason = format!("unknown key (known here: {})", allowed.join(", "));
                self.error(key.span(), &join(path, key.get_ref()), reason);
            }
        }
    }

    fn service(&mut self, root: &DeTable<'_>) -> Option<ServiceConfig> {
        self.unknown_keys(root, "", TOP_KEYS);
        let log_level = self.string(root, "", "log_level").map(|(s, _)| s);
        let admin = self.parsed::<std::net::SocketAddr>(root, "", "admin");
        let shutdown_timeout = self
            .duration(root, "", "shutdown_timeout")
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
        let mut listeners = Vec::new();
        match root.get("listener").map(|v| (v, v.get_ref())) {
            None => self.error(0..0, "listener", "no [[listener]] table: nothing to run"),
            Some((_, DeValue::Array(items))) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("listener[{i}]");
                    match item.get_ref() {
                        DeValue::Table(t) => {
                            if let Some(l) = self.listener(t, item.span(), &path, i) {
                                listeners.push(l);
                            }
                        }
                        _ => self.error(item.span(), &path, "expected a table ([[listener]])"),
                    }
                }
            }
            Some((v, _)) => self.error(v.span(), "listener", "expected [[listener]] tables"),
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, l) in listeners.iter().enumerate() {
            if !names.insert(l.name.clone()) {
                self.error(
                    0..0,
                    &format!("listener[{i}].name"),
                    format!("{:?} is used twice", l.name),
                );
            }
            if l.config.listen.port() != 0 && !addrs.insert(l.config.listen) {
                self.error(
                    0..0,
                    &format!("listener[{i}].listen"),
                    format!("{} is used by another listener", l.config.listen),
                );
            }
        }
        Some(ServiceConfig {
            log_level,
            shutdown_timeout,
            admin,
            listeners,
        })
    }

    fn listener(
        &mut self,
        t: &DeTable<'_>,
        span: Range<usize>,
        path: &str,
        index: usize,
    ) -> Option<NamedListener> {
        self.unknown_keys(t, path, LISTENER_KEYS);
        let name = self
            .string(t, path, "name")
            .map_or_else(|| format!("listener-{index}"), |(s, _)| s);
        let mode = self.string(t, path, "mode");
        let reverse = match mode.as_ref().map(|(m, s)| (m.as_str(), s.clone())) {
            Some(("reverse", _)) => true,
            Some(("forward", _)) => false,
            Some((other, s)) => {
                self.error(
                    s,
                    &join(path, "mode"),
                    format!("{other:?}: expected \"reverse\" or \"forward\""),
                );
                return None;
            }
            None => {
                self.error(
                    span,
                    &join(path, "mode"),
                    "missing (\"reverse\" or \"forward\")",
                );
                return None;
            }
        };
        for key in if reverse { FORWARD_ONLY } else { REVERSE_ONLY } {
            if let Some(v) = t.get(*key) {
                let other = if reverse { "forward" } else { "reverse" };
                self.error(
                    v.span(),
                    &join(path, key),
                    format!("only for mode = \"{other}\""),
                );
            }
        }
        let listen = self.required::<std::net::SocketAddr>(t, span.clone(), path, "listen");
        let cert = self.required::<PathBuf>(t, span.clone(), path, "cert");
        let key = self.parsed::<PathBuf>(t, path, "key");
        let ca = self.required::<PathBuf>(t, span.clone(), path, "ca");
        let crls = self.list::<PathBuf>(t, path, "crls").unwrap_or_default();
        let ciphers = self.list::<Cipher>(t, path, "ciphers").unwrap_or_default();
        let compression = match self.string(t, path, "compression") {
            None => true,
            Some((c, _)) if c == "zstd" => true,
            Some((c, _)) if c == "off" => false,
            Some((c, s)) => {
                self.error(
                    s,
                    &join(path, "compression"),
                    format!("{c:?}: expected \"zstd\" or \"off\""),
                );
                true
            }
        };
        let level = self.integer(t, path, "zstd_level").unwrap_or(1);
        // The library's range, as for --zstd-level (ListenerConfig::validate).
        let (min, max) = (
            i64::from(zstd_safe::min_c_level()),
            i64::from(zstd_safe::max_c_level()),
        );
        if !(min..=max).contains(&level) || level == 0 {
            if let Some(v) = t.get("zstd_level") {
                self.error(
                    v.span(),
                    &join(path, "zstd_level"),
                    format!("expected 1..={max} or {min}..=-1"),
                );
            }
        }
        let workers = self.integer(t, path, "workers").map(|w| w.max(0) as usize);
        let duration = |cx: &mut Self, key, default| cx.duration(t, path, key).unwrap_or(default);
        let connect_timeout = duration(self, "connect_timeout", Duration::from_secs(10));
        let handshake_timeout = duration(self, "handshake_timeout", Duration::from_secs(10));
        let idle_timeout = self.duration(t, path, "idle_timeout");
        let rekey_after = self.size(t, path, "rekey_after");
        let tls12 = self.boolean(t, path, "tls12").unwrap_or(false);
        let allow_expired_crl = self.boolean(t, path, "allow_expired_crl").unwrap_or(false);
        let io_driver = self.parsed::<IoDriver>(t, path, "io_driver");
        let ktls = self.parsed::<Ktls>(t, path, "ktls");
        let bpf_classifier = self.parsed::<BpfClassifier>(t, path, "bpf_classifier");
        let keepalive = self.boolean(t, path, "keepalive").unwrap_or(true);
        let max_connections = self.integer(t, path, "max_connections");
        // Last, and the only early returns: every other key has been looked at by now.
        let route = |cx: &mut Self| cx.routes(t, span.clone(), path);
        let mode = if reverse {
            let routes = route(self)?;
            Mode::Reverse { routes }
        } else {
            let target = self.target(t, span.clone(), path);
            let sni = self.required::<String>(t, span.clone(), path, "sni");
            let server_name = self.parsed::<String>(t, path, "server_name");
            let resumption = self.parsed::<SessionResumption>(t, path, "session_resumption");
            let (Some(target), Some(sni)) = (target, sni) else {
                return None;
            };
            Mode::Forward(ForwardTarget {
                target,
                sni,
                server_name,
                resumption: resumption.unwrap_or_default(),
            })
        };
        let (Some(listen), Some(cert), Some(ca)) = (listen, cert, ca) else {
            return None;
        };
        let config = ListenerConfig {
            listen,
            mode,
            tls: TlsFiles {
                key: key.unwrap_or_else(|| cert.clone()),
                cert,
                ca,
                tls12,
                ciphers,
                crls,
                allow_expired_crl,
            },
            compression: if compression {
                Compression::Zstd {
                    level: level as i32,
                }
            } else {
                Compression::Off
            },
            workers: workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            io_driver: io_driver.unwrap_or_default(),
            ktls: ktls.unwrap_or_default(),
            bpf_classifier: bpf_classifier.unwrap_or_default(),
            connect_timeout,
            handshake_timeout,
            idle_timeout,
            keepalive,
            max_connections: max_connections.map_or(10_000, |n| n.max(0) as usize),
            rekey_after,
        };
        if let Err(e) = config.validate() {
            self.error(span, path, e.to_string());
        }
        Some(NamedListener { name, config })
    }

    fn routes(&mut self, t: &DeTable<'_>, span: Range<usize>, path: &str) -> Option<Vec<Route>> {
        let key = join(path, "route");
        let Some(v) = t.get("route") else {
            self.error(
                span,
                &key,
                "a reverse listener needs at least one [[listener.route]]",
            );
            return None;
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.error(v.span(), &key, "expected [[listener.route]] tables");
            return None;
        };
        let mut routes = Vec::new();
        let mut seen = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("{key}[{i}]");
            let DeValue::Table(r) = item.get_ref() else {
                self.error(item.span(), &path, "expected a table");
                continue;
            };
            self.unknown_keys(r, &path, ROUTE_KEYS);
            let sni = self.required::<replink_ebpf::SniPattern>(r, item.span(), &path, "sni");
            let target = self.target(r, item.span(), &path);
            let kind = match self.string(r, &path, "kind") {
                None => Some(RouteKind::Stream),
                Some((k, _)) if k == "stream" => Some(RouteKind::Stream),
                Some((k, s)) => match k.parse::<RouteKind>() {
                    Ok(kind) => Some(kind),
                    Err(e) => {
                        self.error(s, &join(&path, "kind"), e);
                        None
                    }
                },
            };
            let allow = self
                .list::<AllowRule>(r, &path, "allow")
                .unwrap_or_default();
            if let (Some(pattern), Some(target), Some(kind)) = (sni, target, kind) {
                if !seen.insert(pattern.to_string()) {
                    self.error(
                        item.span(),
                        &join(&path, "sni"),
                        format!("{pattern} has two routes"),
                    );
                }
                routes.push(Route {
                    pattern,
                    target,
                    kind,
                    allow: AllowList(allow),
                });
            }
        }
        Some(routes)
    }

    // Typed getters: each reports a wrong type or an unparsable value at the value's span and
    // returns None, so the walk goes on and finds the next error.

    fn string(&mut self, t: &DeTable<'_>, path: &str, key: &str) -> Option<(String, Range<usize>)> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span())),
            other => {
                let reason = format!("expected a string, found {}", other.type_str());
                self.error(v.span(), &join(path, key), reason);
                None
            }
        }
    }

    fn parsed<T: FromStr>(&mut self, t: &DeTable<'_>, path: &str, key: &str) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        let (s, span) = self.string(t, path, key)?;
        match s.parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(span, &join(path, key), e.to_string());
                None
            }
        }
    }

    fn required<T: FromStr>(
        &mut self,
        t: &DeTable<'_>,
        table_span: Range<usize>,
        path: &str,
        key: &str,
    ) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        if t.get(key).is_none() {
            self.error(table_span, &join(path, key), "missing");
            return None;
        }
        self.parsed(t, path, key)
    }

    /// `target`: `"HOST:PORT"`, or a list of them tried in order (primary, then backups).
    fn target(&mut self, t: &DeTable<'_>, table_span: Range<usize>, path: &str) -> Option<Target> {
        let key = join(path, "target");
        let Some(v) = t.get("target") else {
            self.error(table_span, &key, "missing");
            return None;
        };
        let spec = match v.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Array(items) if !items.is_empty() => {
                let mut parts = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::String(s) if !s.contains(',') => parts.push(s.to_string()),
                        _ => self.error(
                            item.span(),
                            &format!("{key}[{i}]"),
                            "expected \"HOST:PORT\"",
                        ),
                    }
                }
                parts.join(",")
            }
            _ => {
                self.error(v.span(), &key, "expected \"HOST:PORT\" or a list of them");
                return None;
            }
        };
        spec.parse::<Target>()
            .map_err(|e| self.error(v.span(), &key, e))
            .ok()
    }

    fn integer(&mut self, t: &DeTable<'_>, path: &str, key: &str) -> Option<i64> {
        let v = t.get(key)?;
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => {
                i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
            }
            _ => None,
        };
        if parsed.is_none() {
            let reason = format!("expected an integer, found {}", v.get_ref().type_str());
            self.error(v.span(), &join(path, key), reason);
        }
        parsed
    }

    fn boolean(&mut self, t: &DeTable<'_>, path: &str, key: &str) -> Option<bool> {
        let v = t.get(key)?;
        let b = v.get_ref().as_bool();
        if b.is_none() {
            let reason = format!("expected true or false, found {}", v.get_ref().type_str());
            self.error(v.span(), &join(path, key), reason);
        }
        b
    }

    fn duration(&mut self, t: &DeTable<'_>, path: &str, key: &str) -> Option<Duration> {
        let (s, span) = self.string(t, path, key)?;
        parse_duration(&s)
            .map_err(|e| self.error(span, &join(path, key), e))
            .ok()
    }

    fn size(&mut self, t: &DeTable<'_>, path: &str, key: &str) -> Option<u64> {
        let v = t.get(key)?;
        if let DeValue::Integer(_) = v.get_ref() {
            return self.integer(t, path, key).map(|n| n.max(0) as u64);
        }
        let (s, span) = self.string(t, path, key)?;
        parse_size(&s)
            .map_err(|e| self.error(span, &join(path, key), e))
            .ok()
    }

    fn list<T: FromStr>(&mut self, t: &DeTable<'_>, path: &str, key: &str) -> Option<Vec<T>>
    where
        T::Err: fmt::Display,
    {
        let v: &Value<'_> = t.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.error(v.span(), &join(path, key), "expected an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{}[{i}]", join(path, key));
            match item.get_ref() {
                DeValue::String(s) => match s.parse::<T>() {
                    Ok(x) => out.push(x),
                    Err(e) => self.error(item.span(), &at, e.to_string()),
                },
                other => self.error(
                    item.span(),
                    &at,
                    format!("expected a string, found {}", other.type_str()),
                ),
            }
        }
        Some(out)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The effective config, every default filled in, in the file's own format.
pub fn render(config: &ServiceConfig) -> String {
    let mut out = String::new();
    if let Some(level) = &config.log_level {
        let _ = writeln!(out, "log_level = {}", quote(level));
    }
    let _ = writeln!(
        out,
        "shutdown_timeout = \"{}\"",
        duration_text(config.shutdown_timeout)
    );
    if let Some(admin) = config.admin {
        let _ = writeln!(out, "admin = \"{admin}\"");
    }
    for l in &config.listeners {
        let c = &l.config;
        let _ = writeln!(out, "\n[[listener]]");
        let _ = writeln!(out, "name = {}", quote(&l.name));
        let mode = match c.mode {
            Mode::Reverse { .. } => "reverse",
            Mode::Forward(_) => "forward",
        };
        let _ = writeln!(out, "mode = \"{mode}\"");
        let _ = writeln!(out, "listen = \"{}\"", c.listen);
        if let Mode::Forward(f) = &c.mode {
            let _ = writeln!(out, "target = {}", target_text(&f.target));
            let _ = writeln!(out, "sni = {}", quote(&f.sni));
            if let Some(name) = &f.server_name {
                let _ = writeln!(out, "server_name = {}", quote(name));
            }
            let _ = writeln!(out, "session_resumption = \"{}\"", f.resumption.as_str());
        }
        let path = |p: &Path| quote(&p.display().to_string());
        let _ = writeln!(out, "cert = {}", path(&c.tls.cert));
        let _ = writeln!(out, "key = {}", path(&c.tls.key));
        let _ = writeln!(out, "ca = {}", path(&c.tls.ca));
        let crls: Vec<String> = c.tls.crls.iter().map(|p| path(p)).collect();
        let _ = writeln!(out, "crls = [{}]", crls.join(", "));
        let _ = writeln!(out, "allow_expired_crl = {}", c.tls.allow_expired_crl);
        let _ = writeln!(out, "tls12 = {}", c.tls.tls12);
        let ciphers: Vec<String> = c
            .tls
            .ciphers
            .iter()
            .map(|c| format!("\"{}\"", cipher_name(*c)))
            .collect();
        let _ = writeln!(out, "ciphers = [{}]", ciphers.join(", "));
        match c.compression {
            Compression::Off => {
                let _ = writeln!(out, "compression = \"off\"");
            }
            Compression::Zstd { level } => {
                let _ = writeln!(out, "compression = \"zstd\"\nzstd_level = {level}");
            }
        }
        let _ = writeln!(out, "workers = {}", c.workers);
        let _ = writeln!(
            out,
            "io_driver = \"{}\"",
            match c.io_driver {
                IoDriver::Auto => "auto",
                IoDriver::IoUring => "io-uring",
                IoDriver::Epoll => "epoll",
            }
        );
        let _ = writeln!(
            out,
            "ktls = \"{}\"",
            match c.ktls {
                Ktls::Auto => "auto",
                Ktls::On => "on",
                Ktls::Off => "off",
            }
        );
        if let Mode::Reverse { .. } = c.mode {
            let _ = writeln!(
                out,
                "bpf_classifier = \"{}\"",
                match c.bpf_classifier {
                    BpfClassifier::Auto => "auto",
                    BpfClassifier::On => "on",
                    BpfClassifier::Off => "off",
                }
            );
        }
        let _ = writeln!(
            out,
            "connect_timeout = \"{}\"",
            duration_text(c.connect_timeout)
        );
        let _ = writeln!(
            out,
            "handshake_timeout = \"{}\"",
            duration_text(c.handshake_timeout)
        );
        match c.idle_timeout {
            Some(d) => {
                let _ = writeln!(out, "idle_timeout = \"{}\"", duration_text(d));
            }
            None => {
                let _ = writeln!(out, "# idle_timeout: none (links may idle for hours)");
            }
        }
        let _ = writeln!(out, "keepalive = {}", c.keepalive);
        let _ = writeln!(out, "max_connections = {}", c.max_connections);
        match c.rekey_after {
            Some(n) => {
                let _ = writeln!(out, "rekey_after = {n}");
            }
            None => {
                let _ = writeln!(out, "# rekey_after: only near the cipher's record limit");
            }
        }
        if let Mode::Reverse { routes } = &c.mode {
            for r in routes {
                let _ = writeln!(out, "\n[[listener.route]]");
                let _ = writeln!(out, "sni = {}", quote(&r.pattern.to_string()));
                let _ = writeln!(out, "target = {}", target_text(&r.target));
                let kind = match r.kind {
                    RouteKind::Stream => "stream",
                    RouteKind::Postgres => "postgres",
                    RouteKind::Passthrough => "passthrough",
                };
                let _ = writeln!(out, "kind = \"{kind}\"");
                let rules: Vec<String> = r.allow.0.iter().map(|a| quote(&a.to_string())).collect();
                let _ = writeln!(out, "allow = [{}]", rules.join(", "));
            }
        }
    }
    out
}

fn target_text(t: &Target) -> String {
    match &t.endpoints[..] {
        [one] => quote(&one.spec),
        many => {
            let parts: Vec<String> = many.iter().map(|e| quote(&e.spec)).collect();
            format!("[{}]", parts.join(", "))
        }
    }
}

fn cipher_name(c: Cipher) -> &'static str {
    match c {
        Cipher::Aes128Gcm => "aes128-gcm",
        Cipher::Aes256Gcm => "aes256-gcm",
        Cipher::Chacha20Poly1305 => "chacha20-poly1305",
    }
}

fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{:04X}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}
