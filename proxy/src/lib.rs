//! replink: an mTLS + zstd tunnel for database replication links.
//!
//! A *reverse* listener takes mutual-TLS connections and routes them by SNI to plaintext
//! targets; a *forward* listener takes plaintext connections and carries each to a remote
//! reverse listener over mTLS. Between two replink ends the stream is zstd-compressed when both
//! agree through ALPN (`replink-zstd/1`); a plain TLS client gets the bytes unchanged. A route
//! marked `postgres` also takes libpq's own TLS (SSLRequest, or ALPN `postgresql`).
//!
//! What this crate is not: a general TLS terminator or HTTP proxy. It carries byte streams,
//! authenticates both ends with certificates, and never falls back to plaintext. (A route
//! marked `passthrough` is the deliberate exception to the first two: the client's TLS goes
//! to the upstream unterminated, routed by its SNI; see `passthrough`.)
//!
//! Main types: [`ListenerConfig`] (what to run), [`start`] → [`ProxyHandle`] (a running
//! listener with its [`Stats`]). The data path is in `conn` (one connection from accept to
//! close), `pg` (libpq's plaintext preamble, for routes marked `postgres`), `tls` (rustls
//! handshake, then the record layer), `codec` (zstd) and `relay` (the two pumps). See
//! ARCHITECTURE.md for the map.

// Unsafe is allowed only in `sys` (socket calls on raw fds, the kTLS probe's setsockopt) and
// nowhere else.
#![deny(unsafe_code)]

pub mod admin;
pub mod authz;
mod bpf;
mod buffers;
mod codec;
pub mod config;
pub mod config_file;
mod conn;
pub mod ktls;
mod passthrough;
mod pg;
mod relay;
#[allow(unsafe_code)]
mod sys;
pub mod tls;
mod worker;

/// The private parsers that face peers, for the fuzz targets in `tests/fuzz` only (feature
/// `fuzzing`, off by default). Not an API: it changes with the modules it re-exports.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_api {
    pub use crate::codec::{CodecError, Sink, ZstdDecoder, ZstdEncoder, WINDOW_LOG_MAX};
    pub use crate::pg::{Arrival, Next, Plaintext, Preamble, PreambleError};
}

#[cfg(feature = "bench")]
mod sample;

/// What the criterion micro-benchmarks in `benches/benches` drive (feature `bench`, off by
/// default): the per-connection zstd codec as the relay uses it, the relay's bulk read size and
/// the demo's WAL-like sample. Not an API: it changes with the modules it re-exports.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench_api {
    pub use crate::buffers::BIG as RELAY_READ;
    pub use crate::codec::{CodecError, Sink, ZstdDecoder, ZstdEncoder};
    pub use crate::sample::wal_like as wal_like_sample;
    /// `--zstd-level`'s and `zstd_level`'s default.
    pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// The zstd framing replink uses (window and input per frame), for measurements that must
/// drive zstd the same way.
pub use bpf::BpfCounters;
pub use codec::{ENCODER_WINDOW_LOG as ZSTD_WINDOW_LOG, FRAME_INPUT as ZSTD_FRAME_INPUT};
pub use config::{BpfClassifier, Compression, IoDriver, Ktls, ListenerConfig, Mode};
pub use worker::{check, start, Driver, ProxyHandle, Reload};

/// Errors that stop a listener from starting. Per-connection failures are logged, not returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {err}")]
    Bind {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("kernel: {0}")]
    Kernel(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Counters of one listener, summed over its workers. Updated once per connection (at close),
/// never per packet.
#[derive(Default, Debug)]
pub struct Stats {
    /// Connections that ended badly, by `reason` (`unknown_sni`, `certificate_revoked`, …).
    pub reasons: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Established connections per route (reverse: the route's SNI pattern; forward: the
    /// target), with the upstream endpoint that answered last.
    pub routes: std::sync::Mutex<std::collections::BTreeMap<String, RouteStats>>,
    /// Connection lifetimes (seconds) and TLS handshake latencies (seconds).
    pub durations: Histogram,
    pub handshakes: Histogram,
    /// Connections currently open.
    pub active: AtomicU64,
    /// Connections whose TLS handshake completed.
    pub established: AtomicU64,
    /// Connections refused before or during the handshake (unknown SNI, bad certificate, …).
    pub refused: AtomicU64,
    /// Established connections that ended with an error (reset, truncation, …).
    pub failed: AtomicU64,
    pub plain_to_tls: AtomicU64,
    pub wire_out: AtomicU64,
    pub wire_in: AtomicU64,
    pub tls_to_plain: AtomicU64,
    /// Connections whose records the kernel sealed and opened (kTLS both ways).
    pub ktls: AtomicU64,
}

/// One route's counters (updated when its connections close).
#[derive(Default, Debug, Clone)]
pub struct RouteStats {
    pub done: u64,
    pub failed: u64,
    /// Plaintext bytes towards the TLS side, and delivered from it.
    pub plain_in: u64,
    pub plain_out: u64,
    /// The endpoint of the route's target that answered last (failover shows here).
    pub upstream: Option<String>,
}

impl Stats {
    fn record_route(&self, route: &str, upstream: Option<&str>, t: &relay::Traffic, ok: bool) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let r = routes.entry(route.to_owned()).or_default();
        if ok {
            r.done += 1;
        } else {
            r.failed += 1;
        }
        r.plain_in += t.plain_to_tls.get();
        r.plain_out += t.tls_to_plain.get();
        if let Some(u) = upstream {
            r.upstream = Some(u.to_owned());
        }
    }

    fn record(
        &self,
        t: &relay::Traffic,
        established: bool,
        failure: Option<&'static str>,
        seconds: f64,
        handshake: Option<f64>,
    ) {
        let r = Ordering::Relaxed;
        let ok = failure.is_none();
        if let Some(reason) = failure {
            let mut map = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
            *map.entry(reason).or_default() += 1;
        }
        self.durations.observe(seconds);
        if let Some(h) = handshake {
            self.handshakes.observe(h);
        }
        if established {
            self.established.fetch_add(1, r);
            if !ok {
                self.failed.fetch_add(1, r);
            }
        } else if !ok {
            self.refused.fetch_add(1, r);
        }
        self.plain_to_tls.fetch_add(t.plain_to_tls.get(), r);
        self.wire_out.fetch_add(t.wire_out.get(), r);
        self.wire_in.fetch_add(t.wire_in.get(), r);
        self.tls_to_plain.fetch_add(t.tls_to_plain.get(), r);
        if t.ktls_tx.get() && t.ktls_rx.get() {
            self.ktls.fetch_add(1, r);
        }
    }
}

/// A Prometheus-style histogram with fixed buckets: counts per upper bound, sum and count.
#[derive(Debug)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative; the exporter sums them).
    pub counts: Vec<AtomicU64>,
    /// Sum of observations, in microseconds (atomics hold integers).
    pub sum_micros: AtomicU64,
    pub count: AtomicU64,
}

/// Seconds: from a local handshake (~1 ms) to a replication link that lives for days.
const SECONDS_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0, 3600.0,
    86400.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bounds: SECONDS_BOUNDS,
            counts: SECONDS_BOUNDS.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let r = Ordering::Relaxed;
        if let Some(i) = self.bounds.iter().position(|b| seconds <= *b) {
            self.counts[i].fetch_add(1, r);
        }
        self.sum_micros.fetch_add((seconds * 1e6) as u64, r);
        self.count.fetch_add(1, r);
    }
}
