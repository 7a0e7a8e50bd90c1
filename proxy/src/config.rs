//! Typed configuration: everything the data plane needs, parsed once at the edge.
//!
//! Command-line strings become these values in `main`; code past this module never re-checks
//! strings. Errors name the flag (or key) and the reason.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use replink_ebpf::SniPattern;

use crate::authz::AllowList;
use crate::Error;

/// Which side of the link a listener is.
#[derive(Clone, Debug)]
pub enum Mode {
    /// mTLS in, routed by SNI to plaintext targets.
    Reverse { routes: Vec<Route> },
    /// Plaintext in, mTLS out to one remote appliance.
    Forward(ForwardTarget),
}

/// `--route SNI=HOST:PORT[:postgres|:passthrough]`: connections whose SNI matches `pattern` go to `target`.
#[derive(Clone, Debug)]
pub struct Route {
    pub pattern: SniPattern,
    pub target: Target,
    pub kind: RouteKind,
    /// Which client certificates may use the route (empty: any the CA signed).
    pub allow: AllowList,
}

impl FromStr for Route {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (sni, rest) = s.split_once('=').ok_or_else(|| {
            format!("route {s:?} is not of the form SNI=HOST:PORT[:postgres|:passthrough]")
        })?;
        let pattern = sni
            .parse::<SniPattern>()
            .map_err(|e| format!("route {s:?}: bad SNI pattern {sni:?}: {e}"))?;
        // A port is digits, a kind is letters: the last `:` part tells which (an IPv6 host is
        // bracketed, `[::1]:5432:postgres`, so its colons never end the spec).
        let (target, kind) = match rest.rsplit_once(':') {
            Some((target, kind)) if kind.bytes().any(|b| b.is_ascii_alphabetic()) => (
                target,
                kind.parse::<RouteKind>()
                    .map_err(|e| format!("route {s:?}: {e}"))?,
            ),
            _ => (rest, RouteKind::Stream),
        };
        let target = target
            .parse::<Target>()
            .map_err(|e| format!("route {s:?}: {e}"))?;
        Ok(Route {
            pattern,
            target,
            kind,
            allow: AllowList::default(),
        })
    }
}

/// What a route's upstream speaks, which decides how clients may reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RouteKind {
    /// Any byte stream, reached by TLS from the first byte (a replink forward end, or any TLS
    /// client such as `openssl s_client`).
    #[default]
    Stream,
    /// A PostgreSQL server (`:postgres`): also reachable by libpq itself, with an SSLRequest
    /// before TLS or with direct TLS and ALPN `postgresql`. A listener with such a route reads
    /// libpq's plaintext preamble before the handshake (see `pg`).
    Postgres,
    /// A TLS server (`:passthrough`): replink does not terminate TLS. It reads the ClientHello
    /// only to route by its SNI, sends it on to the upstream, and then moves bytes both ways
    /// unchanged (in the kernel with `--bpf-classifier`, else in userspace; see `passthrough`).
    /// A deliberate exception to mTLS at replink: the upstream authenticates its clients, and
    /// replink never sees the plaintext.
    Passthrough,
}

impl FromStr for RouteKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "postgres" => Ok(RouteKind::Postgres),
            "passthrough" => Ok(RouteKind::Passthrough),
            _ => Err(format!(
                "unknown route kind {s:?} (after HOST:PORT: `postgres` or `passthrough`)"
            )),
        }
    }
}

/// Where a route (or a forward listener) connects: one or more endpoints, tried in order
/// (primary, then backups), each `HOST:PORT`. Written `a:5432,b:5432`.
#[derive(Clone, Debug)]
pub struct Target {
    /// As written (the log's `upstream=` names the endpoint used).
    pub spec: String,
    pub endpoints: Vec<Endpoint>,
}

/// One `HOST:PORT` of a target. An IP address is used as it is; a name is resolved again at
/// each connect (its addresses tried in order), so a backup that moves is followed.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub spec: String,
    pub host: String,
    pub port: u16,
    /// The address, when `host` is an IP address.
    pub literal: Option<SocketAddr>,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Endpoint {
                spec: s.to_owned(),
                host: addr.ip().to_string(),
                port: addr.port(),
                literal: Some(addr),
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("target {s:?} has no port (expected HOST:PORT)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("target {s:?}: bad port {port:?}"))?;
        if host.is_empty() || host.contains(['[', ']', ':', ' ', '/']) {
            return Err(format!("target {s:?}: bad host {host:?}"));
        }
        // A name must resolve when the config is read (a typo stops start-up); it is resolved
        // again at each connect.
        match (host, port).to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("target {s:?} resolves to no address")),
            Err(e) => return Err(format!("target {s:?} does not resolve: {e}")),
        }
        Ok(Endpoint {
            spec: s.to_owned(),
            host: host.to_owned(),
            port,
            literal: None,
        })
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let endpoints = s
            .split(',')
            .map(|e| e.trim().parse::<Endpoint>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Target {
            spec: s.to_owned(),
            endpoints,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

/// Where a forward listener carries its connections.
#[derive(Clone, Debug)]
pub struct ForwardTarget {
    pub target: Target,
    /// The SNI sent in the ClientHello (selects the route at the reverse end).
    pub sni: String,
    /// The name the server certificate must carry, when it differs from the SNI.
    pub server_name: Option<String>,
    /// Whether to resume TLS 1.3 sessions with the tickets the reverse end issues.
    pub resumption: SessionResumption,
}

/// `--session-resumption` (forward end): resume TLS 1.3 sessions with the reverse end's
/// tickets (a cheap handshake without certificates), or make every connection a full mTLS
/// handshake (to measure handshakes, or for a policy that wants each connection's certificate
/// checked afresh).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionResumption {
    #[default]
    On,
    Off,
}

impl SessionResumption {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionResumption::On => "on",
            SessionResumption::Off => "off",
        }
    }
}

impl FromStr for SessionResumption {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(SessionResumption::On),
            "off" => Ok(SessionResumption::Off),
            _ => Err(format!(
                "unknown --session-resumption {s:?} (expected on or off)"
            )),
        }
    }
}

/// Per-direction stream compression, negotiated with ALPN `replink-zstd/1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Off,
    Zstd { level: i32 },
}

/// Which monoio driver the workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoDriver {
    /// io_uring when the kernel allows it, else epoll.
    #[default]
    Auto,
    IoUring,
    Epoll,
}

impl FromStr for IoDriver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(IoDriver::Auto),
            "io-uring" | "io_uring" | "iouring" => Ok(IoDriver::IoUring),
            "epoll" | "legacy" => Ok(IoDriver::Epoll),
            _ => Err(format!(
                "unknown io driver {s:?} (expected auto, io-uring or epoll)"
            )),
        }
    }
}

/// `--ktls`: whether to check for kernel TLS at start-up. The data path is the userspace
/// record layer in every case for now; see `ktls`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ktls {
    /// Probe and log the answer; start either way.
    #[default]
    Auto,
    /// Probe; refuse to start when the kernel has no TLS ULP.
    On,
    /// Do not probe.
    Off,
}

impl FromStr for Ktls {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Ktls::Auto),
            "on" => Ok(Ktls::On),
            "off" => Ok(Ktls::Off),
            _ => Err(format!("unknown --ktls {s:?} (expected auto, on or off)")),
        }
    }
}

/// `--bpf-classifier` (reverse end, experimental): whether to load the in-kernel SNI
/// classifier and check it against the userspace parse; see `bpf`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BpfClassifier {
    /// Load it when possible (root or CAP_BPF, a build with clang); else one warning.
    Auto,
    /// Refuse to start when it cannot be loaded.
    On,
    /// Do not load it.
    #[default]
    Off,
}

impl FromStr for BpfClassifier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BpfClassifier::Auto),
            "on" => Ok(BpfClassifier::On),
            "off" => Ok(BpfClassifier::Off),
            _ => Err(format!(
                "unknown --bpf-classifier {s:?} (expected off, auto or on)"
            )),
        }
    }
}

/// An AEAD for `--ciphers` (each stands for its TLS 1.3 suite and, with `--tls12`, its
/// ECDHE TLS 1.2 suites).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl FromStr for Cipher {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "aes128-gcm" => Ok(Cipher::Aes128Gcm),
            "aes256-gcm" => Ok(Cipher::Aes256Gcm),
            "chacha20-poly1305" => Ok(Cipher::Chacha20Poly1305),
            _ => Err(format!(
                "unknown cipher {s:?} (expected aes128-gcm, aes256-gcm or chacha20-poly1305)"
            )),
        }
    }
}

/// PEM files of one TLS identity, the CA that peers must chain to, and its revocation lists.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Leaf certificate (and optionally its chain, and optionally the key in the same file).
    pub cert: PathBuf,
    /// Private key; may be the same file as `cert`.
    pub key: PathBuf,
    /// CA bundle: one or more certificates.
    pub ca: PathBuf,
    /// Allow TLS 1.2 in addition to 1.3.
    pub tls12: bool,
    /// AEADs allowed, in order of preference (empty: all, AES-128-GCM first).
    pub ciphers: Vec<Cipher>,
    /// CRL files (PEM or DER), each signed by a CA of `ca`; peers they list are refused.
    pub crls: Vec<PathBuf>,
    /// Start with a CRL past its nextUpdate, and keep using it (default: refuse to start, and
    /// refuse peers of that CA once it expires while running).
    pub allow_expired_crl: bool,
}

/// Everything one listener needs.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub listen: SocketAddr,
    pub mode: Mode,
    pub tls: TlsFiles,
    pub compression: Compression,
    pub workers: usize,
    pub io_driver: IoDriver,
    pub ktls: Ktls,
    pub bpf_classifier: BpfClassifier,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// None: never cut an idle link (replication links idle for hours).
    pub idle_timeout: Option<Duration>,
    pub keepalive: bool,
    pub max_connections: usize,
    /// Ask for fresh TLS 1.3 keys both ways after this many bytes sent under one key (None:
    /// only near the cipher's record limit).
    pub rekey_after: Option<u64>,
}

impl ListenerConfig {
    /// Checks the invariants that flags alone cannot express.
    pub fn validate(&self) -> Result<(), Error> {
        if self.workers == 0 {
            return Err(Error::Config("--workers must be at least 1".into()));
        }
        if self.max_connections == 0 {
            return Err(Error::Config("--max-connections must be at least 1".into()));
        }
        if let Compression::Zstd { level } = self.compression {
            let (min, max) = (zstd_safe::min_c_level(), zstd_safe::max_c_level());
            if level < min || level > max || level == 0 {
                return Err(Error::Config(format!(
                    "--zstd-level {level} is out of range ({min}..=-1 or 1..={max})"
                )));
            }
        }
        if let Mode::Reverse { routes } = &self.mode {
            if routes.is_empty() {
                return Err(Error::Config(
                    "reverse-proxy needs at least one --route SNI=HOST:PORT[:postgres|:passthrough]".into(),
                ));
            }
            if let Some(r) = routes
                .iter()
                .find(|r| r.kind == RouteKind::Passthrough && !r.allow.is_empty())
            {
                return Err(Error::Config(format!(
                    "route {} is passthrough: replink never sees its clients' certificates, so \
                     it cannot apply --allow rules to it (the upstream authenticates them)",
                    r.pattern
                )));
            }
        }
        Ok(())
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    // try_: from_secs_f64 panics past Duration::MAX (found by the `config` fuzz target).
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a valid duration"))
}

/// A byte size: a number with an optional unit (B, KiB, MiB, GiB, TiB; KB, MB, GB, TB in
/// powers of ten), e.g. `64MiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64MiB, 1GiB, 4096)"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
            ))
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target list keeps its order (primary first); names stay names (resolved again at each
    /// connect), IP addresses are taken as they are; a bad endpoint anywhere is an error.
    #[test]
    fn target_lists() {
        let t: Target = "127.0.0.1:5432, localhost:5433,[::1]:5434".parse().unwrap();
        let specs: Vec<&str> = t.endpoints.iter().map(|e| e.spec.as_str()).collect();
        assert_eq!(specs, ["127.0.0.1:5432", "localhost:5433", "[::1]:5434"]);
        assert!(t.endpoints[0].literal.is_some());
        assert_eq!(t.endpoints[1].literal, None);
        assert_eq!(
            (t.endpoints[1].host.as_str(), t.endpoints[1].port),
            ("localhost", 5433)
        );
        let r: Route = "pg.repl.test=127.0.0.1:1,127.0.0.1:2:postgres"
            .parse()
            .unwrap();
        assert_eq!((r.kind, r.target.endpoints.len()), (RouteKind::Postgres, 2));
        assert!("127.0.0.1:1,".parse::<Target>().is_err());
        assert!("127.0.0.1:1,nohost".parse::<Target>().is_err());
        assert!("127.0.0.1:1,localhost:99999".parse::<Target>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    /// The `config` fuzz target's first find: 26 digits of seconds panicked in
    /// `Duration::from_secs_f64` (too large for a Duration) instead of being refused.
    #[test]
    fn fuzz_config_duration_past_duration_max() {
        assert!(parse_duration("66666666666666666666666666.").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration(&"9".repeat(400)).is_err(), "infinite as f64");
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn routes() {
        let r: Route = "pg.repl.test=127.0.0.1:5432".parse().unwrap();
        assert_eq!(
            r.target.endpoints[0].literal,
            Some("127.0.0.1:5432".parse().unwrap())
        );
        assert_eq!(r.kind, RouteKind::Stream);
        assert!("*.repl.test=127.0.0.1:1".parse::<Route>().is_ok());
        assert!("pg.repl.test".parse::<Route>().is_err());
        assert!("pg.repl.test=127.0.0.1".parse::<Route>().is_err());
        assert!("bad name=127.0.0.1:1".parse::<Route>().is_err());
    }

    #[test]
    fn postgres_routes() {
        let r: Route = "pg.repl.test=127.0.0.1:5432:postgres".parse().unwrap();
        assert_eq!(r.kind, RouteKind::Postgres);
        assert_eq!(r.target.spec, "127.0.0.1:5432");
        assert_eq!(
            r.target.endpoints[0].literal,
            Some("127.0.0.1:5432".parse().unwrap())
        );

        let r: Route = "pg.repl.test=[::1]:5432:postgres".parse().unwrap();
        assert_eq!(r.kind, RouteKind::Postgres);
        assert_eq!(
            r.target.endpoints[0].literal,
            Some("[::1]:5432".parse().unwrap())
        );
        let r: Route = "pg.repl.test=[::1]:5432".parse().unwrap();
        assert_eq!(r.kind, RouteKind::Stream);
        assert_eq!(
            r.target.endpoints[0].literal,
            Some("[::1]:5432".parse().unwrap())
        );
        let r: Route = "*.repl.test=localhost:5432:postgres".parse().unwrap();
        assert_eq!(
            (r.kind, r.target.spec.as_str()),
            (RouteKind::Postgres, "localhost:5432")
        );

        let err = "pg.repl.test=127.0.0.1:5432:mysql"
            .parse::<Route>()
            .unwrap_err();
        assert!(err.contains("unknown route kind \"mysql\""), "{err}");
        assert!("pg.repl.test=127.0.0.1:5432:Postgres"
            .parse::<Route>()
            .is_err());
        assert!("pg.repl.test=127.0.0.1:postgres".parse::<Route>().is_err());
        assert!("pg.repl.test=localhost:postgres".parse::<Route>().is_err());
        assert!("pg.repl.test=127.0.0.1:5432:postgres:postgres"
            .parse::<Route>()
            .is_err());
        assert!("pg.repl.test=127.0.0.1:5432:".parse::<Route>().is_err());
        let r: Route = "tls.repl.test=127.0.0.1:443:passthrough".parse().unwrap();
        assert_eq!(
            (r.kind, r.target.spec.as_str()),
            (RouteKind::Passthrough, "127.0.0.1:443")
        );
    }

    #[test]
    fn bpf_classifier_modes() {
        assert_eq!("auto".parse(), Ok(BpfClassifier::Auto));
        assert_eq!("on".parse(), Ok(BpfClassifier::On));
        assert_eq!("off".parse(), Ok(BpfClassifier::Off));
        assert_eq!(BpfClassifier::default(), BpfClassifier::Off);
        assert!("yes".parse::<BpfClassifier>().is_err());
    }

    #[test]
    fn ktls_modes() {
        assert_eq!("auto".parse::<Ktls>(), Ok(Ktls::Auto));
        assert_eq!("on".parse::<Ktls>(), Ok(Ktls::On));
        assert_eq!("off".parse::<Ktls>(), Ok(Ktls::Off));
        assert_eq!(Ktls::default(), Ktls::Auto);
        let err = "yes".parse::<Ktls>().unwrap_err();
        assert!(err.contains("expected auto, on or off"), "{err}");
        assert!("On".parse::<Ktls>().is_err());
        assert!("".parse::<Ktls>().is_err());
    }
}
