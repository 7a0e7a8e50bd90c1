//! The in-kernel SNI classifier: `bpf/stream_parser.c` and `bpf/stream_verdict.c` loaded with
//! aya and attached to the `sockets` SOCKHASH.
//!
//! A socket added with [`Classifier::add_socket`] has its byte stream cut into TLS records by
//! the stream parser; the verdict program walks the first record's ClientHello, looks its SNI up
//! in the `routes` map (exact name, then the wildcard for its parent) and records a
//! [`Classification`] under the socket cookie. Every byte then goes on to the socket's own
//! receive queue (`SK_PASS`): userspace reads the ClientHello as before and can ask
//! [`Classifier::classification`] what the kernel decided. [`parse_client_hello`] is the
//! oracle: for a ClientHello in one record both must agree.
//!
//! Built without clang (see `build.rs`), [`Classifier::load`] returns
//! [`ClassifierError::Unavailable`].
//!
//! [`parse_client_hello`]: crate::parse_client_hello

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::fd::AsFd;

use aya::maps::{HashMap, MapData, MapError, PerCpuArray, SockHash};
use aya::programs::ProgramError;

use crate::layout::{RawClassification, SniKey, MAX_ROUTES, REASON_COUNT, ROUTE_UNKNOWN};
use crate::{SniPattern, SniTable};

#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    #[error("BPF classifier unavailable: built without clang")]
    Unavailable,
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("BPF object has no {0}")]
    Missing(&'static str),
    #[error("route id {0} is out of range (the classifier counts ids below {MAX_ROUTES})")]
    RouteId(u32),
    #[error("socket cookie: {0}")]
    Cookie(io::Error),
}

/// Why a socket got its classification (`enum verdict_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The SNI matched a route.
    Routed,
    /// A well-formed SNI no route matches.
    NoRoute,
    /// A ClientHello without a host_name.
    NoSni,
    /// Not TLS, not a ClientHello, bad framing or a bad server name.
    Malformed,
    /// The ClientHello spans TLS records; userspace must parse it.
    Fragmented,
    /// More extensions or server names than the program walks.
    Limit,
}

impl Reason {
    const ALL: [Reason; 6] = [
        Reason::Routed,
        Reason::NoRoute,
        Reason::NoSni,
        Reason::Malformed,
        Reason::Fragmented,
        Reason::Limit,
    ];

    fn code(self) -> u8 {
        match self {
            Reason::Routed => 1,
            Reason::NoRoute => 2,
            Reason::NoSni => 3,
            Reason::Malformed => 4,
            Reason::Fragmented => 5,
            Reason::Limit => 6,
        }
    }

    fn from_code(code: u8) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// What the kernel decided for one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classification {
    /// The route id when `reason` is [`Reason::Routed`].
    pub route: Option<u32>,
    /// Length of the server name as looked up (lower-case, no trailing dot); 0 without one.
    pub sni_len: u16,
    pub reason: Reason,
}

/// Classifications counted since load, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Sockets routed, by route id (ids never hit are absent).
    pub routed: BTreeMap<u32, u64>,
    /// Sockets by reason, other than [`Reason::Routed`].
    pub by_reason: BTreeMap<Reason, u64>,
}

impl Counters {
    /// Sockets counted with `reason` (for [`Reason::Routed`], over all routes).
    pub fn reason(&self, reason: Reason) -> u64 {
        match reason {
            Reason::Routed => self.routed.values().sum(),
            r => self.by_reason.get(&r).copied().unwrap_or(0),
        }
    }
}

/// The loaded and attached programs with their maps. Dropping it detaches the programs.
pub struct Classifier {
    sockets: SockHash<MapData, u64>,
    routes: HashMap<MapData, SniKey, u32>,
    classifications: HashMap<MapData, u64, RawClassification>,
    counters: PerCpuArray<MapData, u64>,
    // The programs (and their attachments) live as long as this.
    _programs: aya::Ebpf,
}

#[cfg(replink_bpf)]
mod objects {
    pub static CLASSIFIER: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/classifier.o"));
}

impl Classifier {
    /// Whether this build carries the BPF programs (clang was present at build time).
    pub fn available() -> bool {
        cfg!(replink_bpf)
    }

    /// Loads and attaches the programs, with `routes` (values: route ids below
    /// [`MAX_ROUTES`]) in the route map. Needs CAP_BPF and CAP_NET_ADMIN (or root).
    pub fn load(routes: &SniTable<u32>) -> Result<Classifier, ClassifierError> {
        #[cfg(replink_bpf)]
        {
            Self::load_object(objects::CLASSIFIER, routes)
        }
        #[cfg(not(replink_bpf))]
        {
            let _ = routes;
            Err(ClassifierError::Unavailable)
        }
    }

    #[cfg_attr(not(replink_bpf), allow(dead_code))]
    fn load_object(object: &[u8], routes: &SniTable<u32>) -> Result<Classifier, ClassifierError> {
        let mut obj = aya::Ebpf::load(object)?;
        let sockets: SockHash<MapData, u64> = take_map(&mut obj, "sockets")?;
        let route_map = take_map(&mut obj, "routes")?;
        let classifications = take_map(&mut obj, "classifications")?;
        let counters = take_map(&mut obj, "counters")?;
        for name in ["stream_parser", "stream_verdict"] {
            let program: &mut aya::programs::SkSkb = obj
                .program_mut(name)
                .ok_or(ClassifierError::Missing(name))?
                .try_into()
                .map_err(|source| ClassifierError::Program { name, source })?;
            program
                .load()
                .and_then(|()| program.attach(sockets.fd()))
                .map_err(|source| ClassifierError::Program { name, source })?;
        }
        let mut classifier = Classifier {
            sockets,
            routes: route_map,
            classifications,
            counters,
            _programs: obj,
        };
        classifier.update_routes(routes)?;
        Ok(classifier)
    }

    /// Puts a connected TCP socket under the classifier; returns its cookie. Its next TLS
    /// record (the ClientHello) is classified. The kernel drops the socket from the map when
    /// it closes.
    pub fn add_socket(&mut self, socket: impl AsFd) -> Result<u64, ClassifierError> {
        let cookie = socket_cookie(&socket).map_err(ClassifierError::Cookie)?;
        self.sockets
            .insert(cookie, socket.as_fd(), 0)
            .map_err(|source| ClassifierError::Map {
                name: "sockets",
                source,
            })?;
        Ok(cookie)
    }

    /// Takes a socket out from under the classifier (its bytes then skip the programs). The
    /// data plane does this once the ClientHello is classified; a closed socket leaves by
    /// itself.
    pub fn remove_socket(&mut self, cookie: u64) -> Result<(), ClassifierError> {
        absent_is_fine(self.sockets.remove(&cookie), "sockets")
    }

    /// The classification recorded for the socket with this cookie, if its first record has
    /// been seen.
    pub fn classification(&self, cookie: u64) -> Result<Option<Classification>, ClassifierError> {
        let raw = match self.classifications.get(&cookie, 0) {
            Ok(raw) => raw,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(source) => {
                return Err(ClassifierError::Map {
                    name: "classifications",
                    source,
                })
            }
        };
        let reason = Reason::from_code(raw.reason).ok_or(ClassifierError::Missing(
            "a known reason code in a classification",
        ))?;
        Ok(Some(Classification {
            route: (raw.route != ROUTE_UNKNOWN).then_some(raw.route),
            sni_len: raw.sni_len,
            reason,
        }))
    }

    /// Drops the classification of a closed socket (the map is an LRU: entries not forgotten
    /// are evicted eventually).
    pub fn forget(&mut self, cookie: u64) -> Result<(), ClassifierError> {
        absent_is_fine(self.classifications.remove(&cookie), "classifications")
    }

    /// Counters since load, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, ClassifierError> {
        let map_err = |source| ClassifierError::Map {
            name: "counters",
            source,
        };
        let mut counters = Counters::default();
        for index in 0..MAX_ROUTES + REASON_COUNT {
            let n: u64 = self.counters.get(&index, 0).map_err(map_err)?.iter().sum();
            if n == 0 {
                continue;
            }
            if index < MAX_ROUTES {
                counters.routed.insert(index, n);
            } else if let Some(reason) = Reason::from_code((index - MAX_ROUTES) as u8) {
                counters.by_reason.insert(reason, n);
            }
        }
        Ok(counters)
    }

    /// Makes the route map equal to `routes`: new patterns inserted, changed ids updated, the
    /// rest removed. Entries change one at a time: a ClientHello classified meanwhile sees a
    /// mix of the old and new tables, never a half-written entry.
    pub fn update_routes(&mut self, routes: &SniTable<u32>) -> Result<(), ClassifierError> {
        let map_err = |source| ClassifierError::Map {
            name: "routes",
            source,
        };
        let mut wanted = Vec::with_capacity(routes.len());
        for (pattern, &id) in routes.iter() {
            if id >= MAX_ROUTES {
                return Err(ClassifierError::RouteId(id));
            }
            wanted.push((route_key(&pattern), id));
        }
        let keep: HashSet<SniKey> = wanted.iter().map(|(k, _)| *k).collect();
        let stale: Vec<SniKey> = self
            .routes
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err)?
            .into_iter()
            .filter(|k| !keep.contains(k))
            .collect();
        for key in &stale {
            self.routes.remove(key).map_err(map_err)?;
        }
        for (key, id) in &wanted {
            self.routes.insert(key, id, 0).map_err(map_err)?;
        }
        Ok(())
    }
}

/// `SO_COOKIE` of a socket: the key of both the sockhash and the classifications.
pub fn socket_cookie(socket: &impl AsFd) -> io::Result<u64> {
    socket2::SockRef::from(socket).cookie()
}

/// A removal whose key was not there (aya reports ENOENT from the syscall) is no error.
fn absent_is_fine(
    removed: Result<(), MapError>,
    name: &'static str,
) -> Result<(), ClassifierError> {
    match removed {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ClassifierError::Map { name, source }),
    }
}

fn take_map<M>(obj: &mut aya::Ebpf, name: &'static str) -> Result<M, ClassifierError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = obj.take_map(name).ok_or(ClassifierError::Missing(name))?;
    M::try_from(map).map_err(|source| ClassifierError::Map { name, source })
}

fn route_key(pattern: &SniPattern) -> SniKey {
    let (wildcard, name) = match pattern {
        SniPattern::Exact(n) => (0, n),
        SniPattern::Wildcard(s) => (1, s),
    };
    let mut key = SniKey {
        wildcard,
        len: 0,
        pad: [0; 2],
        name: [0; crate::layout::SNI_NAME_BUF],
    };
    // SniPattern holds a validated DNS name: at most 253 bytes.
    let bytes = &name.as_bytes()[..name.len().min(253)];
    key.name[..bytes.len()].copy_from_slice(bytes);
    key.len = bytes.len() as u8;
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_their_codes() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        assert_eq!(Reason::from_code(0), None);
        assert_eq!(Reason::ALL.len() + 1, REASON_COUNT as usize);
    }

    #[test]
    fn route_keys_mark_wildcards() {
        let k = route_key(&"*.Repl.Test".parse().unwrap());
        assert_eq!((k.wildcard, k.len), (1, 9));
        assert_eq!(&k.name[..10], b"repl.test\0");
        let k = route_key(&"pg.repl.test".parse().unwrap());
        assert_eq!((k.wildcard, k.len), (0, 12));
    }

    #[test]
    #[cfg(not(replink_bpf))]
    fn without_clang_the_classifier_says_so() {
        assert!(matches!(
            Classifier::load(&SniTable::new()),
            Err(ClassifierError::Unavailable)
        ));
    }
}
