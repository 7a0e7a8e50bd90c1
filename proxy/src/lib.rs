//! replink: an mTLS + zstd tunnel for database replication links.
//!
//! A *reverse* listener takes mutual-TLS connections and routes them by SNI to plaintext
//! targets; a *forward* listener takes plaintext connections and carries each to a remote
//! reverse listener over mTLS. Between two replink ends the stream is zstd-compressed when both
//! agree through ALPN (`replink-zstd/1`); a plain TLS client gets the bytes unchanged. A route
//! marked `postgres` also takes libpq's own TLS (SSLRequest, or ALPN `postgresql`).
//!
//! What this crate is not: a general TLS terminator or HTTP proxy. It carries byte streams,
//! authenticates both ends with certificates, and never falls back to plaintext.
//!
//! Main types: [`ListenerConfig`] (what to run), [`start`] → [`ProxyHandle`] (a running
//! listener with its [`Stats`]). The data path is in `conn` (one connection from accept to
//! close), `pg` (libpq's plaintext preamble, for routes marked `postgres`), `tls` (rustls
//! handshake, then the record layer), `codec` (zstd) and `relay` (the two pumps). See
//! ARCHITECTURE.md for the map.

// Unsafe is allowed only in `sys` (socket calls on raw fds, the kTLS probe's setsockopt) and
// nowhere else.
#![deny(unsafe_code)]

mod bpf;
mod buffers;
mod codec;
pub mod config;
mod conn;
pub mod ktls;
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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// The zstd framing replink uses (window and input per frame), for measurements that must
/// drive zstd the same way.
pub use codec::{ENCODER_WINDOW_LOG as ZSTD_WINDOW_LOG, FRAME_INPUT as ZSTD_FRAME_INPUT};
pub use config::{BpfClassifier, Compression, IoDriver, Ktls, ListenerConfig, Mode};
pub use worker::{start, Driver, ProxyHandle};

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
}

impl Stats {
    fn record(&self, t: &relay::Traffic, established: bool, ok: bool) {
        let r = Ordering::Relaxed;
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
    }
}
