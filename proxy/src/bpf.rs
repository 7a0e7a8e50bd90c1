//! The in-kernel SNI classifier on the reverse end's accept path (`--bpf-classifier`,
//! experimental): a check of `replink_ebpf::classifier` against the userspace parse.
//!
//! One [`Classifier`] per listener, loaded at start-up with the route table (the route's index
//! in `--route` order as its id) and told the listening address ([`BpfCheck::listen_on`]): its
//! sock_ops program puts each accepted socket into the sockhash in the kernel as the TCP
//! handshake completes, so the kernel sees every ClientHello however soon it follows the
//! handshake. After `accept`, [`BpfCheck::watch`] takes the cookie (and makes the kernel parse
//! what arrived before the accept); once the first bytes are in, [`BpfCheck::early`] says
//! whether the kernel found no route, no SNI or a malformed ClientHello: the connection is then
//! refused without any parsing or TLS work in userspace (`conn`). Otherwise userspace parses
//! the ClientHello, routes by it, and [`BpfCheck::finish`] compares with the kernel's
//! classification and takes the socket out of the map (a passthrough connection keeps it
//! there, see `passthrough`). A disagreement is logged (`bpf_classifier_mismatch`) and counted.
//! Each `closed`/`refused` line carries `bpf=` (see [`BpfOutcome`]).
//!
//! Not used on listeners with `postgres` routes: libpq's plaintext SSLRequest comes before the
//! ClientHello and the kernel would classify it as malformed.
//!
//! Counters: [`BpfCheck::counters`] (per route and per reason, from the BPF maps), reachable
//! through `ProxyHandle::bpf_counters` and logged every `REPLINK_BPF_COUNTERS_SECS` seconds
//! (default 60) when they changed (`bpf_counters`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use replink_ebpf::SniTable;
use replink_ebpf::{Classification, Classifier, ClassifierError, Reason};

use crate::config::{BpfClassifier, Route};
use crate::{sys, Error};

/// The loaded classifier, shared by the workers of a listener. The mutex is held for a few map
/// syscalls per connection (aya's map handles need `&mut` to insert and remove).
pub struct BpfCheck {
    classifier: Mutex<Classifier>,
    /// Route names by id (the `--route` order).
    route_names: Vec<String>,
    /// Connections where the kernel and userspace disagreed.
    pub mismatches: AtomicU64,
    /// Connections refused on the kernel's word alone (no route, no SNI, malformed).
    pub refused_in_kernel: AtomicU64,
}

/// The classifier's counters with route names: what `ProxyHandle::bpf_counters` returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BpfCounters {
    /// Connections the kernel classified to each route (by route name; routes never hit are
    /// absent).
    pub routed: BTreeMap<String, u64>,
    /// Connections by the kernel's other verdicts: `no_route`, `no_sni`, `malformed`,
    /// `fragmented`, `limit`.
    pub by_reason: BTreeMap<&'static str, u64>,
    /// Bytes moved in the kernel between client and upstream, both ways, per passthrough
    /// route.
    pub passthrough_bytes: BTreeMap<String, u64>,
    /// Connections refused on the kernel's verdict before any userspace parsing.
    pub refused_in_kernel: u64,
    /// Connections where the kernel and the userspace parser disagreed.
    pub mismatches: u64,
}

impl std::fmt::Display for BpfCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let join = |m: &mut dyn Iterator<Item = (String, u64)>| {
            m.map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "routed={} reasons={} passthrough_bytes={} refused_in_kernel={} mismatches={}",
            join(&mut self.routed.iter().map(|(k, v)| (k.clone(), *v))),
            join(&mut self.by_reason.iter().map(|(k, v)| (k.to_string(), *v))),
            join(&mut self.passthrough_bytes.iter().map(|(k, v)| (k.clone(), *v))),
            self.refused_in_kernel,
            self.mismatches
        )
    }
}

/// What userspace made of the ClientHello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Userspace {
    Routed(u32),
    NoRoute,
    NoSni,
    Malformed,
    /// No verdict (end of stream, timeout, read error before the ClientHello was whole).
    Undecided,
}

/// The `bpf=` value of a connection's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BpfOutcome {
    /// Not loaded, or not used on this listener.
    #[default]
    Off,
    Kernel(Reason),
    /// The kernel recorded nothing: the socket was not in the sockhash (accepted before the
    /// listener was registered, or the map was full); userspace parsed and routed it.
    Unseen,
    /// A map operation failed (logged).
    Error,
}

impl std::fmt::Display for BpfOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BpfOutcome::Off => "off",
            BpfOutcome::Unseen => "unseen",
            BpfOutcome::Error => "error",
            BpfOutcome::Kernel(r) => reason_label(*r),
        })
    }
}

fn reason_label(reason: Reason) -> &'static str {
    match reason {
        Reason::Routed => "route",
        Reason::NoRoute => "no_route",
        Reason::NoSni => "no_sni",
        Reason::Malformed => "malformed",
        Reason::Fragmented => "fragmented",
        Reason::Limit => "limit",
    }
}

/// Applies `--bpf-classifier` at start-up and logs `bpf_classifier=loaded routes=N` or
/// `bpf_classifier=unavailable reason=…`. `None` when off, unavailable under `auto`, or not
/// applicable (a listener with `postgres` routes).
pub fn setup(
    wanted: BpfClassifier,
    routes: &[Route],
    sniff_postgres: bool,
) -> Result<Option<Arc<BpfCheck>>, Error> {
    if wanted == BpfClassifier::Off {
        return Ok(None);
    }
    let loaded = if sniff_postgres {
        Err("the listener has postgres routes (the libpq preamble comes first)".to_string())
    } else {
        load(routes)
    };
    match loaded {
        Ok(classifier) => {
            tracing::info!(
                routes = routes.len(),
                cgroup = %classifier.cgroup().display(),
                sock_ops_id = classifier.sock_ops_id(),
                "bpf_classifier=loaded"
            );
            let check = Arc::new(BpfCheck {
                classifier: Mutex::new(classifier),
                route_names: routes.iter().map(|r| r.pattern.to_string()).collect(),
                mismatches: AtomicU64::new(0),
                refused_in_kernel: AtomicU64::new(0),
            });
            spawn_counter_log(Arc::downgrade(&check));
            Ok(Some(check))
        }
        Err(reason) if wanted == BpfClassifier::On => Err(Error::Kernel(format!(
            "--bpf-classifier on, but the classifier cannot be used: {reason}"
        ))),
        Err(reason) => {
            tracing::warn!(reason = ?reason, "bpf_classifier=unavailable");
            Ok(None)
        }
    }
}

fn load(routes: &[Route]) -> Result<Classifier, String> {
    let mut table = SniTable::new();
    for (id, r) in routes.iter().enumerate() {
        // Duplicates were refused when the route table was built.
        let _ = table.insert(r.pattern.clone(), id as u32);
    }
    Classifier::load(&table).map_err(|e| {
        let text = e.to_string();
        if text.contains("Operation not permitted") {
            format!("{text} (needs root, or CAP_BPF and CAP_NET_ADMIN)")
        } else {
            text
        }
    })
}

/// Logs `bpf_counters` every `REPLINK_BPF_COUNTERS_SECS` seconds (default 60) when they
/// changed, for as long as the classifier lives.
fn spawn_counter_log(check: Weak<BpfCheck>) {
    let secs = std::env::var("REPLINK_BPF_COUNTERS_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(60);
    let spawned = std::thread::Builder::new()
        .name("bpf-counters".into())
        .spawn(move || {
            let mut last = BpfCounters::default();
            loop {
                std::thread::sleep(Duration::from_secs(secs));
                let Some(check) = check.upgrade() else { return };
                match check.counters() {
                    Ok(now) if now != last => {
                        tracing::info!(counters = %now, "bpf_counters");
                        last = now;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "bpf_classifier_error"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "bpf_counters: no thread to log them");
    }
}

impl crate::ProxyHandle {
    /// The in-kernel classifier's counters (per route, per verdict, passthrough bytes), or
    /// `None` when `--bpf-classifier` did not load it. A map read error is logged and gives
    /// `None` too.
    pub fn bpf_counters(&self) -> Option<BpfCounters> {
        let check = self.bpf.as_ref()?;
        check
            .counters()
            .map_err(|e| tracing::warn!(error = %e, "bpf_classifier_error"))
            .ok()
    }
}

/// Where the kernel is with a socket's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The verdict ran.
    Classified,
    /// Nothing received yet.
    Waiting,
    /// Bytes received, not classified: being parsed, or stuck from before `accept`.
    Unparsed,
    /// A map or socket call failed: parse in userspace.
    Failed,
}

/// What the kernel said about a connection before userspace parsed anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Early {
    /// Refuse it: the kernel found no route, no SNI, or a malformed ClientHello.
    Refuse(Reason),
    /// Parse it in userspace (routed, fragmented, limit, not classified).
    Parse,
}

impl BpfCheck {
    /// Registers a listening address: its accepted sockets join the sockhash in the kernel.
    pub fn listen_on(&self, addr: SocketAddr) -> Result<(), Error> {
        self.lock()
            .listen_on(addr)
            .map_err(|e| Error::Kernel(format!("--bpf-classifier: listener {addr}: {e}")))
    }

    /// Right after `accept`: the socket's cookie (the sock_ops program put it into the
    /// sockhash already).
    /// `Err(Unseen)` when the sock_ops program did not take the socket (accepted before the
    /// listener was registered, or a full map): no classification will come.
    pub fn watch<S: std::os::fd::AsRawFd>(&self, socket: &S) -> Result<u64, BpfOutcome> {
        match self.lock().joined(&sys::borrow_fd(socket)) {
            Ok(Some(cookie)) => Ok(cookie),
            Ok(None) => Err(BpfOutcome::Unseen),
            Err(e) => {
                tracing::warn!(error = %e, "bpf_classifier_error");
                Err(BpfOutcome::Error)
            }
        }
    }

    /// Where the kernel is with a watched socket (see `conn::kernel_first`).
    pub fn progress<S: std::os::fd::AsRawFd>(&self, socket: &S, cookie: u64) -> Progress {
        let classifier = self.lock();
        match classifier.classification(cookie) {
            Ok(Some(_)) => return Progress::Classified,
            Ok(None) => {}
            Err(_) => return Progress::Failed,
        }
        match classifier.unparsed(&sys::borrow_fd(socket), cookie) {
            Ok(true) => Progress::Unparsed,
            Ok(false) => Progress::Waiting,
            Err(_) => Progress::Failed,
        }
    }

    /// Makes the kernel parse bytes that arrived before `accept` (`Classifier::kick`).
    pub fn kick<S: std::os::fd::AsRawFd>(&self, socket: &S) {
        if let Err(e) = self.lock().kick(&sys::borrow_fd(socket)) {
            tracing::warn!(error = %e, "bpf_classifier_error");
        }
    }

    /// Pairs a client socket still in the sockhash with its upstream (added to the sockhash
    /// here): from now on the kernel moves their bytes. Returns the upstream's cookie. On
    /// failure nothing stays paired.
    pub fn pair<S: std::os::fd::AsRawFd>(
        &self,
        client: u64,
        upstream: &S,
        route: u32,
    ) -> Result<u64, ClassifierError> {
        let fd = sys::borrow_fd(upstream);
        let up = replink_ebpf::socket_cookie(&fd).map_err(ClassifierError::Cookie)?;
        let mut classifier = self.lock();
        let paired = classifier
            .pair(client, up, route)
            .and_then(|()| classifier.add_socket(fd).map(drop));
        if paired.is_err() {
            let _ = classifier.unpair(client, up);
        }
        paired.map(|()| up)
    }

    /// Bytes the kernel has moved from the socket with this cookie to its pair.
    pub fn paired_bytes(&self, cookie: u64) -> u64 {
        self.lock().paired_bytes(cookie).unwrap_or(0)
    }

    /// Ends a pairing (both sockets out of the maps, the client's classification forgotten);
    /// the bytes moved client → upstream and back.
    pub fn unpair(&self, client: u64, upstream: u64) -> (u64, u64) {
        let mut classifier = self.lock();
        let moved = classifier.unpair(client, upstream).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "bpf_classifier_error");
            (0, 0)
        });
        let _ = classifier.forget(client);
        moved
    }

    /// Takes a socket kept for passthrough out of the maps (when it is not paired after all).
    pub fn release(&self, cookie: u64) {
        let mut classifier = self.lock();
        let _ = classifier
            .remove_socket(cookie)
            .and_then(|()| classifier.forget(cookie));
    }

    /// Once the socket is classified: whether to refuse without parsing. A refusal takes the
    /// socket out of the maps and is counted.
    pub fn early(&self, cookie: u64) -> Early {
        let mut classifier = self.lock();
        let reason = match classifier.classification(cookie) {
            Ok(Some(c)) => c.reason,
            _ => return Early::Parse,
        };
        match reason {
            Reason::NoRoute | Reason::NoSni | Reason::Malformed => {
                let _ = classifier
                    .remove_socket(cookie)
                    .and_then(|()| classifier.forget(cookie));
                self.refused_in_kernel.fetch_add(1, Ordering::Relaxed);
                Early::Refuse(reason)
            }
            _ => Early::Parse,
        }
    }

    /// The counters with route names.
    pub fn counters(&self) -> Result<BpfCounters, ClassifierError> {
        let raw = self.lock().counters()?;
        let name = |id: u32| {
            self.route_names
                .get(id as usize)
                .cloned()
                .unwrap_or_else(|| format!("#{id}"))
        };
        Ok(BpfCounters {
            routed: raw.routed.iter().map(|(&id, &n)| (name(id), n)).collect(),
            by_reason: raw
                .by_reason
                .iter()
                .map(|(&r, &n)| (reason_label(r), n))
                .collect(),
            passthrough_bytes: raw
                .passthrough_bytes
                .iter()
                .map(|(&id, &n)| (name(id), n))
                .collect(),
            refused_in_kernel: self.refused_in_kernel.load(Ordering::Relaxed),
            mismatches: self.mismatches.load(Ordering::Relaxed),
        })
    }

    /// Reads the kernel's classification of a watched socket, takes the socket out of the
    /// map, and compares with userspace. Never changes how the connection is routed.
    /// `keep` leaves the socket and its classification in the maps (a passthrough connection
    /// pairs it next, and the classification keeps the stream parser from waiting for
    /// another ClientHello meanwhile; `passthrough` removes both at the end).
    pub fn finish(
        &self,
        watched: Result<u64, BpfOutcome>,
        user: Userspace,
        peer: std::net::SocketAddr,
        keep: bool,
    ) -> BpfOutcome {
        let cookie = match watched {
            Ok(cookie) => cookie,
            Err(outcome) => return outcome,
        };
        let kernel = {
            let mut classifier = self.lock();
            let kernel = classifier.classification(cookie);
            let removed = if keep {
                Ok(())
            } else {
                classifier
                    .remove_socket(cookie)
                    .and_then(|()| classifier.forget(cookie))
            };
            if let Err(e) = removed {
                tracing::warn!(%peer, error = %e, "bpf_classifier_error");
            }
            kernel
        };
        let kernel = match kernel {
            Ok(Some(k)) => k,
            Ok(None) => return BpfOutcome::Unseen,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "bpf_classifier_error");
                return BpfOutcome::Error;
            }
        };
        if !agree(&kernel, user) {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %peer,
                kernel = %describe(&kernel),
                userspace = ?user,
                "bpf_classifier_mismatch"
            );
        }
        BpfOutcome::Kernel(kernel.reason)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Classifier> {
        // A panic while holding the lock cannot leave the maps half-updated (each call is one
        // syscall), so a poisoned lock is still usable.
        self.classifier.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether the kernel's classification matches userspace's. `fragmented` and `limit` are the
/// kernel deferring to userspace, and an undecided userspace has nothing to compare.
fn agree(kernel: &Classification, user: Userspace) -> bool {
    match (kernel.reason, user) {
        (Reason::Fragmented | Reason::Limit, _) | (_, Userspace::Undecided) => true,
        (Reason::Routed, Userspace::Routed(id)) => kernel.route == Some(id),
        (Reason::NoRoute, Userspace::NoRoute)
        | (Reason::NoSni, Userspace::NoSni)
        | (Reason::Malformed, Userspace::Malformed) => true,
        _ => false,
    }
}

fn describe(kernel: &Classification) -> String {
    match kernel.route {
        Some(id) => format!("{}:{id}", reason_label(kernel.reason)),
        None => reason_label(kernel.reason).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(reason: Reason, route: Option<u32>) -> Classification {
        Classification {
            route,
            sni_len: 0,
            reason,
        }
    }

    #[test]
    fn agreement() {
        assert!(agree(&k(Reason::Routed, Some(1)), Userspace::Routed(1)));
        assert!(!agree(&k(Reason::Routed, Some(0)), Userspace::Routed(1)));
        assert!(!agree(&k(Reason::Routed, Some(0)), Userspace::NoRoute));
        assert!(agree(&k(Reason::NoSni, None), Userspace::NoSni));
        assert!(!agree(&k(Reason::NoSni, None), Userspace::Malformed));
        assert!(agree(&k(Reason::Fragmented, None), Userspace::Routed(0)));
        assert!(agree(&k(Reason::Malformed, None), Userspace::Undecided));
        assert_eq!(BpfOutcome::Kernel(Reason::NoRoute).to_string(), "no_route");
        assert_eq!(BpfOutcome::default().to_string(), "off");
    }
}
