//! Thread-per-core workers: each owns a monoio runtime (io_uring, or epoll as fallback) and its
//! own SO_REUSEPORT listener, and serves its connections to the end on that core.
//!
//! The only things shared between workers are immutable (`Shared`: config, route table, rustls
//! configs) and the atomic counters in [`Stats`](crate::Stats).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use monoio::blocking::DefaultThreadPool;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use replink_ebpf::SniTable;
use rustls_pki_types::ServerName;
use socket2::{Domain, Protocol, Socket, Type};

use crate::authz::AllowList;
use crate::bpf::{self, BpfCheck};
use crate::config::{
    Compression, IoDriver, ListenerConfig, Mode, RouteKind, SessionResumption, Target,
};
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
    pub allow: AllowList,
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
    /// Connections move their records to kernel TLS (`--ktls`, and the kernel has it).
    pub ktls: bool,
    pub mode: ModeState,
    pub stats: Arc<Stats>,
}

impl Shared {
    /// The in-kernel SNI classifier is loaded.
    pub fn bpf_loaded(&self) -> bool {
        matches!(&self.mode, ModeState::Reverse { bpf: Some(_), .. })
    }
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
                    allow: r.allow.clone(),
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
                tls: tls::client_config(
                    &config.tls,
                    level.is_some(),
                    f.server_name.as_deref(),
                    f.resumption == SessionResumption::On,
                )?,
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
    current: Current,
    /// Set by [`ProxyHandle::stop_accepting`]: the accept loops end, connections carry on.
    stopping: Arc<AtomicBool>,
    /// Duplicates of the workers' listening sockets, to stop their accepts from outside.
    listeners: Vec<std::net::TcpListener>,
}

/// The listener's state for new connections. A reload swaps the `Arc` whole; each accept takes
/// the one current then, and a connection keeps the state it started with to its end.
pub type Current = Arc<RwLock<Arc<Shared>>>;

/// A listener's next state, checked and built by [`ProxyHandle::prepare_reload`].
pub struct Reload(Arc<Shared>);

/// The state for the next connection.
pub fn current(c: &Current) -> Arc<Shared> {
    c.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl ProxyHandle {
    /// Stops accepting (the listening sockets are shut down, so new connections are refused
    /// by the kernel) while established connections carry on; the workers end once the last
    /// one closes.
    pub fn stop_accepting(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        for l in &self.listeners {
            // A shut-down listening socket fails the pending accept (EINVAL) and every later one.
            let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Read);
        }
    }

    /// Connections move to kernel TLS.
    pub fn ktls(&self) -> bool {
        current(&self.current).ktls
    }

    /// The in-kernel SNI classifier is loaded.
    pub fn bpf_loaded(&self) -> bool {
        current(&self.current).bpf_loaded()
    }

    /// The state new connections get (for the admin endpoint).
    pub fn state(&self) -> Current {
        self.current.clone()
    }

    /// Builds the state a new configuration gives new connections: certificates, keys, CA
    /// bundles, CRLs, routes, allow rules, upstreams and options, loaded and checked. Nothing
    /// changes until [`ProxyHandle::apply`]; on an error the running state simply stays. The
    /// listening address, mode, worker count and io driver cannot change without a restart.
    pub fn prepare_reload(&self, config: ListenerConfig) -> Result<Reload, Error> {
        config.validate()?;
        let old = current(&self.current);
        let restart = |what: &str| {
            Err(Error::Config(format!(
                "{what} changed: that needs a restart (the running listener is unchanged)"
            )))
        };
        if config.listen != old.config.listen {
            return restart("the listening address");
        }
        if std::mem::discriminant(&config.mode) != std::mem::discriminant(&old.config.mode) {
            return restart("the mode");
        }
        if config.workers != old.config.workers || config.io_driver != old.config.io_driver {
            return restart("workers or io_driver");
        }
        // The BPF classifier stays as loaded: its sock_ops program owns this listener's port,
        // and its route ids are the kernel's verdicts. A reload may change anything else.
        let old_bpf = match &old.mode {
            ModeState::Reverse { bpf, .. } => bpf.clone(),
            ModeState::Forward { .. } => None,
        };
        let route_key = |c: &ListenerConfig| match &c.mode {
            Mode::Reverse { routes } => routes
                .iter()
                .map(|r| format!("{}={}:{:?}", r.pattern, r.target.spec, r.kind))
                .collect::<Vec<_>>(),
            Mode::Forward(_) => Vec::new(),
        };
        if old_bpf.is_some()
            && (config.bpf_classifier != old.config.bpf_classifier
                || route_key(&config) != route_key(&old.config))
        {
            return restart("a route or bpf_classifier, with the BPF classifier loaded,");
        }
        if old_bpf.is_none() && config.bpf_classifier != old.config.bpf_classifier {
            return restart("bpf_classifier");
        }
        let mut mode = build_mode(&ListenerConfig {
            bpf_classifier: crate::config::BpfClassifier::Off,
            ..config.clone()
        })?;
        if let ModeState::Reverse { bpf, .. } = &mut mode {
            *bpf = old_bpf;
        }
        let ktls = ktls::check(config.ktls)?;
        Ok(Reload(Arc::new(Shared {
            config,
            ktls,
            mode,
            stats: old.stats.clone(),
        })))
    }

    /// Gives new connections the prepared state; established connections keep theirs.
    pub fn apply(&self, reload: Reload) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = reload.0;
    }

    /// Connections still open.
    pub fn active(&self) -> u64 {
        self.stats.active.load(Ordering::Relaxed)
    }

    /// Blocks until every worker has stopped: after [`ProxyHandle::stop_accepting`], once the
    /// listener's last connection has closed.
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Everything `start` checks before it binds: the settings, certificates, keys (and their
/// permissions), CA bundles, CRLs and routes. For `replink check`.
pub fn check(config: &ListenerConfig) -> Result<(), Error> {
    config.validate()?;
    build_mode(config).map(drop)
}

/// Validates the config, loads certificates, binds one listener per worker and starts the
/// workers. Connections are accepted as soon as this returns.
pub fn start(config: ListenerConfig, thread_prefix: &str) -> Result<ProxyHandle, Error> {
    config.validate()?;
    let mode = build_mode(&config)?;
    let driver = choose_driver(config.io_driver)?;
    let ktls = ktls::check(config.ktls)?;
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
    let dups = listeners
        .iter()
        .map(|l| l.try_clone())
        .collect::<Result<Vec<_>, _>>()?;
    let shared = Arc::new(Shared {
        config,
        ktls,
        mode,
        stats: stats.clone(),
    });
    let current: Current = Arc::new(RwLock::new(shared));
    let stopping = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (current, stopping) = (current.clone(), stopping.clone());
        let t = std::thread::Builder::new()
            .name(format!("{thread_prefix}-{i}"))
            .spawn(move || run_worker(driver, listener, current, stopping))?;
        threads.push(t);
    }
    Ok(ProxyHandle {
        local_addr,
        driver,
        stats,
        bpf,
        threads,
        current,
        stopping,
        listeners: dups,
    })
}

fn run_worker(
    driver: Driver,
    listener: std::net::TcpListener,
    current: Current,
    stopping: Arc<AtomicBool>,
) {
    let result = match driver {
        // The blocking pool resolves upstream names at connect time (getaddrinfo blocks).
        Driver::IoUring => uring_runtime(true)
            .or_else(|_| uring_runtime(false))
            .map(|mut rt| rt.block_on(accept_loop(listener, current.clone(), stopping.clone()))),
        Driver::Epoll => RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .attach_thread_pool(Box::new(DefaultThreadPool::new(1)))
            .build()
            .map(|mut rt| rt.block_on(accept_loop(listener, current.clone(), stopping.clone()))),
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "worker could not start its runtime");
    }
}

/// This worker's io_uring runtime. `lean`: the ring is used by this thread only
/// (`SINGLE_ISSUER`), and completions are processed when the worker waits for them
/// (`DEFER_TASKRUN`, Linux 6.1+), not by interrupting it whenever a socket becomes ready
/// (`COOP_TASKRUN`): fewer interrupts and wake-ups per request on a busy core. The ring is
/// created here, on the thread that uses it, as `SINGLE_ISSUER` requires.
fn uring_runtime(
    lean: bool,
) -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<IoUringDriver>>> {
    let mut urb = io_uring::IoUring::builder();
    if lean {
        urb.setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
    }
    RuntimeBuilder::<IoUringDriver>::new()
        .with_entries(1024)
        .uring_builder(urb)
        .enable_timer()
        .attach_thread_pool(Box::new(DefaultThreadPool::new(1)))
        .build()
}

/// How long an accept loop waits after a failed accept (EMFILE, ENFILE, ENOBUFS).
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// While accepts keep failing, one log line per this long.
const ACCEPT_FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// An accept loop's run of failed accepts, for its log lines.
struct AcceptFailures {
    since: Instant,
    count: u64,
    logged: Instant,
}

async fn accept_loop(listener: std::net::TcpListener, current: Current, stopping: Arc<AtomicBool>) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "worker could not adopt its listener");
            return;
        }
    };
    monoio::spawn(trim_when_released());
    let mut failing: Option<AcceptFailures> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Some(f) = failing.take() {
                    tracing::info!(
                        failures = f.count,
                        duration_ms = f.since.elapsed().as_millis() as u64,
                        "accept recovered"
                    );
                }
                let shared = self::current(&current);
                let active = shared.stats.active.load(Ordering::Relaxed);
                if active >= shared.config.max_connections as u64 {
                    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, reason = "max_connections", limit = shared.config.max_connections, "refused");
                    drop(stream);
                    continue;
                }
                monoio::spawn(Isolated(Box::pin(crate::conn::serve(stream, peer, shared))));
            }
            Err(_) if stopping.load(Ordering::Relaxed) => break,
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning; existing
                // connections carry on. The connection stays in the kernel's accept queue and
                // is served once a descriptor is free. Logged when it starts, then every
                // ACCEPT_FAILURE_LOG_EVERY (not 20 lines a second while it lasts).
                let now = Instant::now();
                match &mut failing {
                    None => {
                        tracing::warn!(error = %e, retry_ms = ACCEPT_RETRY.as_millis() as u64, "accept failed");
                        failing = Some(AcceptFailures {
                            since: now,
                            count: 1,
                            logged: now,
                        });
                    }
                    Some(f) => {
                        f.count += 1;
                        if now.duration_since(f.logged) >= ACCEPT_FAILURE_LOG_EVERY {
                            tracing::warn!(error = %e, failures = f.count, "accept failed");
                            f.logged = now;
                        }
                    }
                }
                monoio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
    // Draining: this runtime keeps serving its connections until the listener has none left
    // (the process exits at its shutdown timeout otherwise).
    drop(listener);
    let stats = self::current(&current).stats.clone();
    while stats.active.load(Ordering::Relaxed) > 0 {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection's task, with a panic inside it (a bug: peer input is never supposed to cause
/// one) ending that connection only: the unwind is stopped here, logged, and the worker and
/// its other connections carry on. Dropping the future closes the connection's sockets.
struct Isolated<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future<Output = ()>> std::future::Future for Isolated<F> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, "a connection task panicked; that connection is closed");
                std::task::Poll::Ready(())
            }
        }
    }
}

/// Once a second at most, and only after zstd contexts were freed, hand free heap memory back;
/// every `POOL_IDLE`, empty the zstd context pools if nothing took from them.
async fn trim_when_released() {
    let mut tick: u64 = 0;
    let every = crate::codec::POOL_IDLE.as_secs().max(1);
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        tick += 1;
        if tick % every == 0 && crate::codec::drain_idle_pools() {
            crate::buffers::note_released();
        }
        if crate::buffers::take_released_flag() {
            crate::sys::trim_allocator();
        }
    }
}
