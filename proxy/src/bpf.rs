//! The in-kernel SNI classifier on the reverse end's accept path (`--bpf-classifier`,
//! experimental): a check of `replink_ebpf::classifier` against the userspace parse.
//!
//! One [`Classifier`] per process, loaded at start-up with the route table (the route's index
//! in `--route` order as its id). For each accepted connection the socket joins the sockhash
//! before its ClientHello is read; once userspace has parsed it, the kernel's classification
//! is read by socket cookie and the socket leaves the map. The userspace parse is the oracle
//! and routes the connection; a disagreement is logged (`bpf_classifier_mismatch`) and counted.
//! Each `closed`/`refused` line carries `bpf=` (see [`BpfOutcome`]).
//!
//! Not used on listeners with `postgres` routes: libpq's plaintext SSLRequest comes before the
//! ClientHello and the kernel would classify it as malformed.
//!
//! What it does not do yet: refuse unknown SNI in the kernel, pass connections through, or
//! export its counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use replink_ebpf::SniTable;
use replink_ebpf::{Classification, Classifier, Reason};

use crate::config::{BpfClassifier, Route};
use crate::{sys, Error};

/// The loaded classifier, shared by the workers of a listener. The mutex is held for a few map
/// syscalls per connection (aya's map handles need `&mut` to insert and remove).
pub struct BpfCheck {
    classifier: Mutex<Classifier>,
    /// Connections where the kernel and userspace disagreed.
    pub mismatches: AtomicU64,
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
    /// The client's first bytes were already queued when the socket was accepted (the client
    /// sends its ClientHello right behind its handshake ACK), so the programs could not see
    /// them; the socket was not put under the classifier.
    Late,
    /// The kernel recorded nothing (the first bytes arrived between the check for `Late` and
    /// the socket joining the map).
    Unseen,
    /// A map operation failed (logged).
    Error,
}

impl std::fmt::Display for BpfOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BpfOutcome::Off => "off",
            BpfOutcome::Late => "late",
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
) -> Result<Option<BpfCheck>, Error> {
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
            tracing::info!(routes = routes.len(), "bpf_classifier=loaded");
            Ok(Some(BpfCheck {
                classifier: Mutex::new(classifier),
                mismatches: AtomicU64::new(0),
            }))
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

impl BpfCheck {
    /// Puts an accepted socket under the classifier and returns its cookie; `Err` with the
    /// outcome to log when its first bytes are already queued (the programs would not see
    /// the ClientHello's start) or the map refused it.
    pub fn watch<S: std::os::fd::AsRawFd>(&self, socket: &S) -> Result<u64, BpfOutcome> {
        if sys::bytes_readable(socket.as_raw_fd()) > 0 {
            return Err(BpfOutcome::Late);
        }
        self.lock().add_socket(sys::borrow_fd(socket)).map_err(|e| {
            tracing::warn!(error = %e, "bpf_classifier_error");
            BpfOutcome::Error
        })
    }

    /// Reads the kernel's classification of a watched socket, takes the socket out of the
    /// map, and compares with userspace. Never changes how the connection is routed.
    pub fn finish(
        &self,
        watched: Result<u64, BpfOutcome>,
        user: Userspace,
        peer: std::net::SocketAddr,
    ) -> BpfOutcome {
        let cookie = match watched {
            Ok(cookie) => cookie,
            Err(outcome) => return outcome,
        };
        let kernel = {
            let mut classifier = self.lock();
            let kernel = classifier.classification(cookie);
            let removed = classifier
                .remove_socket(cookie)
                .and_then(|()| classifier.forget(cookie));
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
