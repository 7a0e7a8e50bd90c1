//! Thread-per-core workers: each owns a monoio runtime (io_uring, or epoll as fallback) and its
//! own SO_REUSEPORT listener, and serves its connections to the end on that core.
//!
//! The only things shared between workers are immutable (`Shared`: config, route table, rustls
//! configs) and the atomic counters in [`Stats`](crate::Stats).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use replink_ebpf::SniTable;
use rustls_pki_types::ServerName;
use socket2::{Domain, Protocol, Socket, Type};

use crate::bpf::{self, BpfCheck};
use crate::config::{Compression, IoDriver, ListenerConfig, Mode, RouteKind, Target};
use crate::ktls;
use crate::tls::{self, ServerConfigs};
use crate::{Error, Stats};

/// A reverse route after parsing.
pub struct RouteEntry {
    pub name: String,
    /// Index in `--route` order: the route's id in the BPF classifier.
    pub id: u32,
    pub target: Target,
    /// zstd level when the route allows compression.
    pub compress: Option<i32>,
    pub kind: RouteKind,
}

pub enum ModeState {
    Reverse {
        routes: SniTable<RouteEntry>,
        tls: ServerConfigs,
        /// Some route is `postgres`: read libpq's plaintext preamble before TLS.
        sniff_postgres: bool,
        /// `--bpf-classifier` loaded (never with `sniff_postgres`).
        bpf: Option<Arc<BpfCheck>>,
    },
    Forward {
        target: Target,
        tls: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
        compress: Option<i32>,
    },
}

/// Read-only state every worker of a listener sees.
pub struct Shared {
    pub config: ListenerConfig,
    pub mode: ModeState,
    pub stats: Arc<Stats>,
}

/// The io driver the workers ended up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        })
    }
}

fn choose_driver(wanted: IoDriver) -> Result<Driver, Error> {
    let uring_ok = || RuntimeBuilder::<IoUringDriver>::new().build().map(drop);
    match wanted {
        IoDriver::Epoll => Ok(Driver::Epoll),
        IoDriver::IoUring => uring_ok()
            .map(|()| Driver::IoUring)
            .map_err(|e| Error::Kernel(format!("io_uring requested but unavailable: {e}"))),
        IoDriver::Auto => match uring_ok() {
            Ok(()) => Ok(Driver::IoUring),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable, using epoll");
                Ok(Driver::Epoll)
            }
        },
    }
}

fn bind_reuseport(addr: SocketAddr) -> Result<std::net::TcpListener, std::io::Error> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

fn build_mode(config: &ListenerConfig) -> Result<ModeState, Error> {
    let level = match config.compression {
        Compression::Off => None,
        Compression::Zstd { level } => Some(level),
    };
    Ok(match &config.mode {
        Mode::Reverse { routes } => {
            let mut table = SniTable::new();
            for (id, r) in routes.iter().enumerate() {
                let entry = RouteEntry {
                    name: r.pattern.to_string(),
                    id: id as u32,
                    target: r.target.clone(),
                    compress: level,
                    kind: r.kind,
                };
                table
                    .insert(r.pattern.clone(), entry)
                    .map_err(|_| Error::Config(format!("--route {} is given twice", r.pattern)))?;
            }
            let sniff_postgres = routes.iter().any(|r| r.kind == RouteKind::Postgres);
            ModeState::Reverse {
                routes: table,
                tls: tls::server_configs(&config.tls)?,
                sniff_postgres,
                bpf: bpf::setup(config.bpf_classifier, routes, sniff_postgres)?,
            }
        }
        Mode::Forward(f) => {
            let server_name = ServerName::try_from(f.sni.clone())
                .map_err(|e| Error::Config(format!("--sni {:?}: {e}", f.sni)))?;
            ModeState::Forward {
                target: f.target.clone(),
                tls: tls::client_config(&config.tls, level.is_some(), f.server_name.as_deref())?,
                server_name,
                compress: level,
            }
        }
    })
}

/// A running listener.
pub struct ProxyHandle {
    pub local_addr: SocketAddr,
    pub driver: Driver,
    pub stats: Arc<Stats>,
    /// The BPF classifier, when loaded (see `ProxyHandle::bpf_counters`).
    pub(crate) bpf: Option<Arc<BpfCheck>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ProxyHandle {
    /// Blocks until every worker has stopped (which, today, is never: the process is stopped by
    /// a signal).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Validates the config, loads certificates, binds one listener per worker and starts the
/// workers. Connections are accepted as soon as this returns.
pub fn start(config: ListenerConfig, thread_prefix: &str) -> Result<ProxyHandle, Error> {
    config.validate()?;
    let mode = build_mode(&config)?;
    let driver = choose_driver(config.io_driver)?;
    ktls::check(config.ktls)?;
    let first = bind_reuseport(config.listen).map_err(|e| Error::Bind {
        addr: config.listen,
        err: e,
    })?;
    let local_addr = first.local_addr()?;
    let bpf = match &mode {
        ModeState::Reverse { bpf: Some(b), .. } => Some(b.clone()),
        _ => None,
    };
    if let Some(b) = &bpf {
        b.listen_on(local_addr)?;
    }
    let mut listeners = vec![first];
    for _ in 1..config.workers {
        // Port 0 was resolved by the first bind; the others join its reuseport group.
        listeners.push(bind_reuseport(local_addr).map_err(|e| Error::Bind {
            addr: local_addr,
            err: e,
        })?);
    }
    let stats = Arc::new(Stats::default());
    let shared = Arc::new(Shared {
        config,
        mode,
        stats: stats.clone(),
    });
    let mut threads = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let t = std::thread::Builder::new()
            .name(format!("{thread_prefix}-{i}"))
            .spawn(move || run_worker(driver, listener, shared))?;
        threads.push(t);
    }
    Ok(ProxyHandle {
        local_addr,
        driver,
        stats,
        bpf,
        threads,
    })
}

fn run_worker(driver: Driver, listener: std::net::TcpListener, shared: Arc<Shared>) {
    let result = match driver {
        Driver::IoUring => RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(1024)
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(accept_loop(listener, shared))),
        Driver::Epoll => RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(accept_loop(listener, shared))),
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "worker could not start its runtime");
    }
}

async fn accept_loop(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "worker could not adopt its listener");
            return;
        }
    };
    monoio::spawn(trim_when_released());
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let active = shared.stats.active.load(Ordering::Relaxed);
                if active >= shared.config.max_connections as u64 {
                    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, reason = "max_connections", limit = shared.config.max_connections, "refused");
                    drop(stream);
                    continue;
                }
                monoio::spawn(crate::conn::serve(stream, peer, shared.clone()));
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning; existing
                // connections carry on.
                tracing::warn!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Once a second at most, and only after zstd contexts were freed, hand free heap memory back.
async fn trim_when_released() {
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        if crate::buffers::take_released_flag() {
            crate::sys::trim_allocator();
        }
    }
}
