//! The admin listener (`--admin ADDR`, config `admin = "127.0.0.1:9601"`): `/metrics` in the
//! Prometheus text format, `/healthz` (the process is up) and `/readyz` (listeners bound,
//! certificates valid, an upstream of every route reachable; 503 with the reasons otherwise).
//!
//! A plain thread with a blocking socket and a minimal HTTP/1.1 reader: requests are rare
//! (a scrape every few seconds) and must not touch the data plane's cores. Everything it
//! reports comes from the listeners' [`Stats`](crate::Stats), read with relaxed atomics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::config::{Mode, Target};
use crate::worker::{current, Current};
use crate::{Error, Histogram, ProxyHandle, Stats};

/// One listener as the admin endpoint sees it: its name and its current state (a reload
/// swaps the state; the counters stay).
pub struct Watched {
    pub name: String,
    state: Current,
}

impl Watched {
    pub fn new(name: &str, handle: &ProxyHandle) -> Watched {
        Watched {
            name: name.to_owned(),
            state: handle.state(),
        }
    }

    fn now(&self) -> Snapshot {
        let shared = current(&self.state);
        let config = &shared.config;
        let upstreams = match &config.mode {
            Mode::Reverse { routes } => routes
                .iter()
                .map(|r| (r.pattern.to_string(), r.target.clone()))
                .collect(),
            Mode::Forward(f) => vec![(f.sni.clone(), f.target.clone())],
        };
        let bpf_counters = match &shared.mode {
            crate::worker::ModeState::Reverse { bpf: Some(b), .. } => b.counters().ok(),
            _ => None,
        };
        Snapshot {
            name: self.name.clone(),
            stats: shared.stats.clone(),
            bpf_counters,
            ktls: shared.ktls,
            bpf: shared.bpf_loaded(),
            cert_not_after: crate::tls::leaf_not_after(&config.tls.cert),
            upstreams,
        }
    }
}

/// What a scrape reads of one listener.
struct Snapshot {
    name: String,
    stats: Arc<Stats>,
    /// The in-kernel classifier's counters, when it is loaded.
    bpf_counters: Option<crate::bpf::BpfCounters>,
    ktls: bool,
    bpf: bool,
    /// The certificate's notAfter (Unix seconds), if the file could be read.
    cert_not_after: Option<i64>,
    /// Route (or forward target) name and where it connects.
    upstreams: Vec<(String, Target)>,
}

/// Reloads of the process (SIGHUP), for `/metrics`.
#[derive(Default)]
pub struct Reloads {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// 1 when the last reload succeeded (or none happened).
    pub last_failed: AtomicBool,
}

pub static RELOADS: Reloads = Reloads {
    ok: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    last_failed: AtomicBool::new(false),
};

/// Counts a reload's outcome.
pub fn note_reload(ok: bool) {
    let c = if ok { &RELOADS.ok } else { &RELOADS.failed };
    c.fetch_add(1, Ordering::Relaxed);
    RELOADS.last_failed.store(!ok, Ordering::Relaxed);
}

/// Binds `addr` and serves the admin endpoints on a thread of their own.
pub fn start(addr: SocketAddr, watched: Vec<Watched>) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind(addr).map_err(|err| Error::Bind { addr, err })?;
    let local = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the admin listener is reachable from other hosts");
    }
    let watched = Arc::new(watched);
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = answer(c, &watched) {
                            tracing::debug!(error = %e, "admin request");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(local)
}

fn answer(mut conn: TcpStream, watched: &[Watched]) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    // The request line and headers, up to 8 KiB; the body (if any) is ignored.
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&req);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(watched),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", "/readyz") => match not_ready(watched) {
            reasons if reasons.is_empty() => ("200 OK", "text/plain", "ready\n".to_owned()),
            reasons => (
                "503 Service Unavailable",
                "text/plain",
                reasons.join("\n") + "\n",
            ),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "no such page\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Why the service is not ready (empty: ready).
fn not_ready(watched: &[Watched]) -> Vec<String> {
    let mut reasons = Vec::new();
    let now = now_unix();
    for w in watched {
        let snap = w.now();
        match snap.cert_not_after {
            Some(t) if t <= now => {
                reasons.push(format!("listener {}: certificate expired", w.name))
            }
            None => reasons.push(format!("listener {}: certificate unreadable", w.name)),
            _ => {}
        }
        for (route, target) in &snap.upstreams {
            let reachable = target.endpoints.iter().any(|e| {
                let addrs: Vec<SocketAddr> = match e.literal {
                    Some(a) => vec![a],
                    None => std::net::ToSocketAddrs::to_socket_addrs(&(e.host.as_str(), e.port))
                        .map(|a| a.collect())
                        .unwrap_or_default(),
                };
                addrs
                    .iter()
                    .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok())
            });
            if !reachable {
                reasons.push(format!(
                    "listener {}: {route}: no upstream reachable ({})",
                    w.name, target.spec
                ));
            }
        }
    }
    reasons
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    watched: &[Snapshot],
    pick: fn(&Stats) -> &Histogram,
) {
    family(out, name, "histogram", help);
    for w in watched {
        let h = pick(&w.stats);
        let l = label(&w.name);
        let mut cumulative = 0;
        for (bound, count) in h.bounds.iter().zip(&h.counts) {
            cumulative += count.load(std::sync::atomic::Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{listener=\"{l}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let total = h.count.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{listener=\"{l}\",le=\"+Inf\"}} {total}");
        let sum = h.sum_micros.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{listener=\"{l}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{listener=\"{l}\"}} {total}");
    }
}

/// A label set, `k="v",…`, with the values escaped.
fn labels(pairs: &[(&str, &str)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
        .collect();
    set.join(",")
}

/// One metric family: its HELP and TYPE lines, then a line per (label set, value).
fn metric<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, V)>,
) {
    family(out, name, kind, help);
    for (set, value) in samples {
        let _ = if set.is_empty() {
            writeln!(out, "{name} {value}")
        } else {
            writeln!(out, "{name}{{{set}}} {value}")
        };
    }
}

/// The in-kernel classifier's own counters (from its BPF maps).
fn bpf_counters(out: &mut String, watched: &[Snapshot]) {
    let loaded: Vec<(&str, &crate::bpf::BpfCounters)> = watched
        .iter()
        .filter_map(|w| Some((w.name.as_str(), w.bpf_counters.as_ref()?)))
        .collect();
    let per_route = |pick: fn(&crate::bpf::BpfCounters) -> &BTreeMap<String, u64>| {
        let rows = loaded.iter().flat_map(move |(l, c)| {
            pick(c)
                .iter()
                .map(move |(route, n)| (labels(&[("listener", l), ("route", route)]), *n))
        });
        rows.collect::<Vec<_>>()
    };
    metric(
        out,
        "replink_bpf_classified_total",
        "counter",
        "Connections the in-kernel classifier sent to each route.",
        per_route(|c| &c.routed),
    );
    metric(
        out,
        "replink_bpf_verdicts_total",
        "counter",
        "The classifier's other verdicts: no_route, no_sni, malformed, fragmented, limit.",
        loaded.iter().flat_map(|(l, c)| {
            c.by_reason
                .iter()
                .map(move |(v, n)| (labels(&[("listener", l), ("verdict", v)]), *n))
        }),
    );
    metric(
        out,
        "replink_bpf_passthrough_bytes_total",
        "counter",
        "Bytes moved in the kernel between client and upstream, per passthrough route.",
        per_route(|c| &c.passthrough_bytes),
    );
    metric(
        out,
        "replink_bpf_refused_in_kernel_total",
        "counter",
        "Connections refused on the kernel's verdict.",
        loaded
            .iter()
            .map(|(l, c)| (labels(&[("listener", l)]), c.refused_in_kernel)),
    );
    metric(
        out,
        "replink_bpf_mismatches_total",
        "counter",
        "Connections the kernel and the userspace parser judged differently.",
        loaded
            .iter()
            .map(|(l, c)| (labels(&[("listener", l)]), c.mismatches)),
    );
}

/// Per-route counters, and the upstream endpoint each route used last.
fn routes(out: &mut String, watched: &[Snapshot]) {
    let rows: Vec<(&str, String, crate::RouteStats)> = watched
        .iter()
        .flat_map(|w| {
            let routes = w.stats.routes.lock().unwrap_or_else(|e| e.into_inner());
            routes
                .iter()
                .map(|(r, s)| (w.name.as_str(), r.clone(), s.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let by = |key: &'static str, pick: fn(&crate::RouteStats) -> [(&'static str, u64); 2]| {
        rows.iter()
            .flat_map(move |(l, r, s)| {
                pick(s).map(|(v, n)| (labels(&[("listener", l), ("route", r), (key, v)]), n))
            })
            .collect::<Vec<_>>()
    };
    metric(
        out,
        "replink_route_connections_total",
        "counter",
        "Established connections per route, by outcome.",
        by("outcome", |s| [("done", s.done), ("failed", s.failed)]),
    );
    metric(
        out,
        "replink_route_bytes_total",
        "counter",
        "Plaintext bytes per route: plain_in (towards the TLS side), plain_out (delivered from it).",
        by("direction", |s| [("plain_in", s.plain_in), ("plain_out", s.plain_out)]),
    );
    metric(
        out,
        "replink_route_upstream_info",
        "gauge",
        "The upstream endpoint of the route that answered last (value 1).",
        rows.iter().filter_map(|(l, r, s)| {
            let u = s.upstream.as_deref()?;
            Some((labels(&[("listener", l), ("route", r), ("upstream", u)]), 1))
        }),
    );
}

/// The Prometheus text exposition of every listener's counters.
pub fn metrics(watched: &[Watched]) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let snaps: Vec<Snapshot> = watched.iter().map(Watched::now).collect();
    let watched = &snaps[..];
    let mut out = String::new();
    let out = &mut out;
    // One sample per listener.
    let each = |f: &dyn Fn(&Snapshot) -> String| {
        watched
            .iter()
            .map(|w| (labels(&[("listener", &w.name)]), f(w)))
            .collect::<Vec<_>>()
    };
    // Several per listener, told apart by `key`.
    let split = |key: &'static str, f: &dyn Fn(&Snapshot) -> Vec<(&'static str, u64)>| {
        watched
            .iter()
            .flat_map(|w| {
                f(w).into_iter()
                    .map(|(v, n)| (labels(&[("listener", &w.name), (key, v)]), n))
            })
            .collect::<Vec<_>>()
    };
    metric(
        out,
        "replink_connections_open",
        "gauge",
        "Connections open now.",
        each(&|w| w.stats.active.load(Relaxed).to_string()),
    );
    metric(
        out,
        "replink_connections_total",
        "counter",
        "Connections closed, by outcome: done (clean end), failed (established, then broken), refused (before or during the handshake).",
        split("outcome", &|w| {
            let s = &w.stats;
            let failed = s.failed.load(Relaxed);
            vec![
                ("done", s.established.load(Relaxed).saturating_sub(failed)),
                ("failed", failed),
                ("refused", s.refused.load(Relaxed)),
            ]
        }),
    );
    metric(
        out,
        "replink_connection_errors_total",
        "counter",
        "Connections that ended badly, by reason (handshake failures: no_certificate, unknown_ca, certificate_revoked, certificate_expired, access_denied, unknown_sni, protocol, ...).",
        split("reason", &|w| {
            let reasons = w.stats.reasons.lock().unwrap_or_else(|e| e.into_inner());
            reasons.iter().map(|(r, n)| (*r, *n)).collect()
        }),
    );
    metric(
        out,
        "replink_bytes_total",
        "counter",
        "Bytes moved: plain_in (read from the plaintext leg), wire_out (TLS sent), wire_in (TLS received), plain_out (written to the plaintext leg).",
        split("direction", &|w| {
            let s = &w.stats;
            vec![
                ("plain_in", s.plain_to_tls.load(Relaxed)),
                ("wire_out", s.wire_out.load(Relaxed)),
                ("wire_in", s.wire_in.load(Relaxed)),
                ("plain_out", s.tls_to_plain.load(Relaxed)),
            ]
        }),
    );
    metric(
        out,
        "replink_compression_ratio",
        "gauge",
        "Plaintext bytes per TLS byte over closed connections (1 without compression).",
        each(&|w| {
            let s = &w.stats;
            let plain = s.plain_to_tls.load(Relaxed) + s.tls_to_plain.load(Relaxed);
            let wire = s.wire_out.load(Relaxed) + s.wire_in.load(Relaxed);
            if wire == 0 {
                "1".into()
            } else {
                format!("{:.4}", plain as f64 / wire as f64)
            }
        }),
    );
    metric(
        out,
        "replink_ktls_enabled",
        "gauge",
        "1 when connections move to kernel TLS.",
        each(&|w| u8::from(w.ktls).to_string()),
    );
    metric(
        out,
        "replink_ktls_connections_total",
        "counter",
        "Connections whose records the kernel sealed and opened.",
        each(&|w| w.stats.ktls.load(Relaxed).to_string()),
    );
    metric(
        out,
        "replink_bpf_classifier_loaded",
        "gauge",
        "1 when the in-kernel SNI classifier is loaded (reverse listeners).",
        each(&|w| u8::from(w.bpf).to_string()),
    );
    metric(
        out,
        "replink_certificate_expiry_timestamp_seconds",
        "gauge",
        "notAfter of the listener's certificate (Unix time).",
        watched
            .iter()
            .filter_map(|w| Some((labels(&[("listener", &w.name)]), w.cert_not_after?))),
    );
    histogram(
        out,
        "replink_connection_duration_seconds",
        "Lifetime of closed connections.",
        watched,
        |s| &s.durations,
    );
    histogram(
        out,
        "replink_handshake_duration_seconds",
        "TLS handshake latency.",
        watched,
        |s| &s.handshakes,
    );
    routes(out, watched);
    bpf_counters(out, watched);
    metric(
        out,
        "replink_reloads_total",
        "counter",
        "Reloads (SIGHUP) by result.",
        [
            (labels(&[("result", "ok")]), RELOADS.ok.load(Relaxed)),
            (
                labels(&[("result", "failed")]),
                RELOADS.failed.load(Relaxed),
            ),
        ],
    );
    metric(
        out,
        "replink_last_reload_success",
        "gauge",
        "0 when the last reload failed (the previous configuration is still in use).",
        [(String::new(), u8::from(!RELOADS.last_failed.load(Relaxed)))],
    );
    std::mem::take(out)
}
