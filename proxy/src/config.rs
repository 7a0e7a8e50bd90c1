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

use crate::Error;

/// Which side of the link a listener is.
#[derive(Clone, Debug)]
pub enum Mode {
    /// mTLS in, routed by SNI to plaintext targets.
    Reverse { routes: Vec<Route> },
    /// Plaintext in, mTLS out to one remote appliance.
    Forward(ForwardTarget),
}

/// `--route SNI=HOST:PORT[:postgres]`: connections whose SNI matches `pattern` go to `target`.
#[derive(Clone, Debug)]
pub struct Route {
    pub pattern: SniPattern,
    pub target: Target,
    pub kind: RouteKind,
}

impl FromStr for Route {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (sni, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("route {s:?} is not of the form SNI=HOST:PORT[:postgres]"))?;
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
}

impl FromStr for RouteKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "postgres" => Ok(RouteKind::Postgres),
            _ => Err(format!(
                "unknown route kind {s:?} (the one suffix after HOST:PORT is `postgres`)"
            )),
        }
    }
}

/// `HOST:PORT`, resolved once at start-up (re-resolution at connect time belongs to service mode).
#[derive(Clone, Debug)]
pub struct Target {
    pub spec: String,
    pub addrs: Vec<SocketAddr>,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.contains(':') {
            return Err(format!("target {s:?} has no port (expected HOST:PORT)"));
        }
        let addrs: Vec<SocketAddr> = s
            .to_socket_addrs()
            .map_err(|e| format!("target {s:?} does not resolve: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("target {s:?} resolves to no address"));
        }
        Ok(Target {
            spec: s.to_owned(),
            addrs,
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
                    "reverse-proxy needs at least one --route SNI=HOST:PORT[:postgres]".into(),
                ));
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(r.target.addrs, vec!["127.0.0.1:5432".parse().unwrap()]);
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
        assert_eq!(r.target.addrs, vec!["127.0.0.1:5432".parse().unwrap()]);

        let r: Route = "pg.repl.test=[::1]:5432:postgres".parse().unwrap();
        assert_eq!(r.kind, RouteKind::Postgres);
        assert_eq!(r.target.addrs, vec!["[::1]:5432".parse().unwrap()]);
        let r: Route = "pg.repl.test=[::1]:5432".parse().unwrap();
        assert_eq!(r.kind, RouteKind::Stream);
        assert_eq!(r.target.addrs, vec!["[::1]:5432".parse().unwrap()]);
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
