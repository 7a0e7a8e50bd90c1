//! The in-kernel SNI classifier: `bpf/stream_parser.c` and `bpf/stream_verdict.c` loaded with
//! aya and attached to the `sockets` SOCKHASH, and `bpf/sock_ops.c` attached to a cgroup v2.
//!
//! A socket accepted on a listener registered with [`Classifier::listen_on`] joins the
//! sockhash in the kernel as its TCP handshake completes (the sock_ops program, attached to
//! this process's own cgroup v2 with a BPF link, so other programs and other replink
//! processes keep theirs; it takes only sockets whose local address is registered in *this*
//! classifier's `listen_ports` map). A socket added with [`Classifier::add_socket`] joins it
//! by hand. A socket in the sockhash has its byte stream cut into TLS records by
//! the stream parser; the verdict program walks the first record's ClientHello, looks its SNI up
//! in the `routes` map (exact name, then the wildcard for its parent) and records a
//! [`Classification`] under the socket cookie. Every byte then goes on to the socket's own
//! receive queue (`SK_PASS`): userspace reads the ClientHello as before and can ask
//! [`Classifier::classification`] what the kernel decided. [`parse_client_hello`] is the
//! oracle: for a ClientHello in one record both must agree.
//!
//! Passthrough: [`Classifier::pair`] makes two sockets in the sockhash (a client and the
//! upstream userspace connected for it) exchange their bytes in the kernel
//! (`bpf_sk_redirect_hash`); [`Classifier::unpair`] ends that and returns the byte counts.
//!
//! Dropping the [`Classifier`] detaches everything (the cgroup attachment is a BPF link owned
//! by this process: it also goes when the process dies, however it dies).
//!
//! Built without clang (see `build.rs`), [`Classifier::load`] returns
//! [`ClassifierError::Unavailable`].
//!
//! [`parse_client_hello`]: crate::parse_client_hello

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, MapError, PerCpuArray, SockHash};
use aya::programs::{CgroupAttachMode, ProgramError};

use crate::layout::{
    ListenKey, PassthroughPair, RawClassification, SniKey, MAX_ROUTES, REASON_COUNT, ROUTE_UNKNOWN,
};
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
    #[error("cgroup v2 for the sock_ops program: {0}")]
    Cgroup(String),
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
    /// Bytes moved in the kernel between the two sockets of passthrough connections, both
    /// directions, by route id (ids never used are absent).
    pub passthrough_bytes: BTreeMap<u32, u64>,
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
    listen_ports: HashMap<MapData, ListenKey, u32>,
    pairs: HashMap<MapData, u64, PassthroughPair>,
    joined: HashMap<MapData, u64, u8>,
    route_bytes: PerCpuArray<MapData, u64>,
    sock_ops_id: u32,
    cgroup: PathBuf,
    // The programs (and their attachments: the cgroup link, the sockhash attachments) live as
    // long as this.
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
    /// [`MAX_ROUTES`]) in the route map; the sock_ops program goes on this process's own
    /// cgroup v2 ([`own_cgroup`]). Needs CAP_BPF and CAP_NET_ADMIN (or root).
    pub fn load(routes: &SniTable<u32>) -> Result<Classifier, ClassifierError> {
        #[cfg(replink_bpf)]
        {
            let cgroup = own_cgroup().map_err(ClassifierError::Cgroup)?;
            Self::load_object(objects::CLASSIFIER, routes, cgroup)
        }
        #[cfg(not(replink_bpf))]
        {
            let _ = routes;
            Err(ClassifierError::Unavailable)
        }
    }

    #[cfg_attr(not(replink_bpf), allow(dead_code))]
    fn load_object(
        object: &[u8],
        routes: &SniTable<u32>,
        cgroup: PathBuf,
    ) -> Result<Classifier, ClassifierError> {
        let mut obj = aya::Ebpf::load(object)?;
        let sockets: SockHash<MapData, u64> = take_map(&mut obj, "sockets")?;
        let route_map = take_map(&mut obj, "routes")?;
        let classifications = take_map(&mut obj, "classifications")?;
        let counters = take_map(&mut obj, "counters")?;
        let listen_ports = take_map(&mut obj, "listen_ports")?;
        let pairs = take_map(&mut obj, "pairs")?;
        let route_bytes = take_map(&mut obj, "route_bytes")?;
        let joined = take_map(&mut obj, "joined")?;
        for name in ["stream_parser", "stream_verdict"] {
            let program: &mut aya::programs::SkSkb = program_mut(&mut obj, name)?;
            program
                .load()
                .and_then(|()| program.attach(sockets.fd()))
                .map_err(|source| ClassifierError::Program { name, source })?;
        }
        let sock_ops_id = attach_sock_ops(&mut obj, &cgroup)?;
        let mut classifier = Classifier {
            sockets,
            routes: route_map,
            classifications,
            counters,
            listen_ports,
            pairs,
            joined,
            route_bytes,
            sock_ops_id,
            cgroup,
            _programs: obj,
        };
        classifier.update_routes(routes)?;
        Ok(classifier)
    }

    /// The kernel's id of the attached sock_ops program (to check from outside that it is
    /// gone once this is dropped: [`program_loaded`]).
    pub fn sock_ops_id(&self) -> u32 {
        self.sock_ops_id
    }

    /// The cgroup v2 directory the sock_ops program is attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Registers a listening address: sockets accepted on it join the sockhash in the kernel
    /// when their handshake completes. A wildcard address (`0.0.0.0`, `::`) takes every local
    /// address of its family on that port.
    pub fn listen_on(&mut self, addr: SocketAddr) -> Result<(), ClassifierError> {
        self.listen_ports
            .insert(listen_key(addr), 1, 0)
            .map_err(|source| ClassifierError::Map {
                name: "listen_ports",
                source,
            })
    }

    /// The cookie of an accepted socket if the sock_ops program put it into the sockhash
    /// (`None`: accepted before its listener was registered, or the map was full; it will
    /// never be classified).
    pub fn joined(&self, socket: &impl AsFd) -> Result<Option<u64>, ClassifierError> {
        let cookie = socket_cookie(socket).map_err(ClassifierError::Cookie)?;
        match self.joined.get(&cookie, 0) {
            Ok(_) => Ok(Some(cookie)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(ClassifierError::Map {
                name: "joined",
                source,
            }),
        }
    }

    /// Whether a joined socket has received bytes that are not classified yet: either the
    /// parser is running on them right now, or they arrived before `accept` and sit unparsed
    /// until [`Classifier::kick`].
    pub fn unparsed(&self, socket: &impl AsFd, cookie: u64) -> Result<bool, ClassifierError> {
        if self.classification(cookie)?.is_some() {
            return Ok(false);
        }
        let received = crate::sockopt::bytes_received(socket).map_err(ClassifierError::Cookie)?;
        Ok(received > 0)
    }

    /// Makes the kernel parse bytes that arrived before `accept`.
    ///
    /// Kernel findings (6.18): the sock_ops program puts the socket into the sockhash before
    /// it has a `struct socket`, and the stream parser cannot read a socket without one
    /// (`strp_read_sock` gives up with EBUSY), so a ClientHello that arrived before `accept`
    /// sits unparsed, and unreadable (a read says EAGAIN), until more bytes arrive, which a
    /// TLS client never sends. Setting SO_RCVLOWAT makes TCP call the socket's data-ready hook
    /// again and the parser, now with a socket, runs from a kernel work queue. But a parser
    /// run while bytes it passed are still unread moves TCP's read offset past them (a defect
    /// of `tcp_bpf_strp_read_sock`), which corrupts what the socket reads once it leaves the
    /// sockhash: kick only a socket whose bytes stayed [`unparsed`](Classifier::unparsed)
    /// for a while (not one the parser is busy with), and only once.
    pub fn kick(&self, socket: &impl AsFd) -> Result<(), ClassifierError> {
        crate::sockopt::kick_data_ready(socket).map_err(ClassifierError::Cookie)
    }

    /// [`joined`](Classifier::joined), then, for a blocking caller (tests): if its bytes stay
    /// unparsed for 2 ms, [`kick`](Classifier::kick).
    pub fn accepted(&self, socket: &impl AsFd) -> Result<Option<u64>, ClassifierError> {
        let Some(cookie) = self.joined(socket)? else {
            return Ok(None);
        };
        if self.unparsed(socket, cookie)? {
            std::thread::sleep(std::time::Duration::from_millis(2));
            if self.unparsed(socket, cookie)? {
                self.kick(socket)?;
            }
        }
        Ok(Some(cookie))
    }

    /// Undoes [`Classifier::listen_on`].
    pub fn stop_listening(&mut self, addr: SocketAddr) -> Result<(), ClassifierError> {
        absent_is_fine(self.listen_ports.remove(&listen_key(addr)), "listen_ports")
    }

    /// Makes `client` and `upstream` (cookies of sockets in the sockhash, or of `upstream`
    /// about to be added with [`Classifier::add_socket`]) exchange their bytes in the kernel
    /// from now on, counted under `route`. Bytes already in either's receive queue stay
    /// there for userspace.
    pub fn pair(&mut self, client: u64, upstream: u64, route: u32) -> Result<(), ClassifierError> {
        if route >= MAX_ROUTES {
            return Err(ClassifierError::RouteId(route));
        }
        let map_err = |source| ClassifierError::Map {
            name: "pairs",
            source,
        };
        let side = |peer| PassthroughPair {
            peer,
            bytes: 0,
            route,
            pad: 0,
        };
        self.pairs
            .insert(upstream, side(client), 0)
            .map_err(map_err)?;
        self.pairs
            .insert(client, side(upstream), 0)
            .map_err(map_err)
    }

    /// Bytes redirected so far from the socket with this cookie to its pair (0 unpaired).
    pub fn paired_bytes(&self, cookie: u64) -> Result<u64, ClassifierError> {
        match self.pairs.get(&cookie, 0) {
            Ok(p) => Ok(p.bytes),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(source) => Err(ClassifierError::Map {
                name: "pairs",
                source,
            }),
        }
    }

    /// Ends a pairing: both sockets leave the pairs map and the sockhash. Returns the bytes
    /// redirected from `client` to `upstream` and back.
    pub fn unpair(&mut self, client: u64, upstream: u64) -> Result<(u64, u64), ClassifierError> {
        let up = self.paired_bytes(client)?;
        let down = self.paired_bytes(upstream)?;
        for cookie in [client, upstream] {
            absent_is_fine(self.sockets.remove(&cookie), "sockets")?;
            absent_is_fine(self.pairs.remove(&cookie), "pairs")?;
        }
        Ok((up, down))
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
        absent_is_fine(self.joined.remove(&cookie), "joined")?;
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
        for id in 0..MAX_ROUTES {
            let n: u64 = self
                .route_bytes
                .get(&id, 0)
                .map_err(|source| ClassifierError::Map {
                    name: "route_bytes",
                    source,
                })?
                .iter()
                .sum();
            if n > 0 {
                counters.passthrough_bytes.insert(id, n);
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

/// Whether a BPF program with this id is loaded anywhere on the host.
pub fn program_loaded(id: u32) -> bool {
    aya::programs::loaded_programs().any(|p| p.is_ok_and(|p| p.id() == id))
}

/// The cgroup v2 directory of this process: the cgroup2 mount (from `/proc/self/mountinfo`)
/// joined with the process's `0::` path (from `/proc/self/cgroup`).
///
/// Why this one and not the root or a cgroup of our own: a program on a cgroup runs for the
/// sockets of every process below it, so the process's own cgroup is the smallest place that
/// still sees its listeners' sockets (a socket belongs to the cgroup of the process that
/// created the listener; accepted sockets inherit it). Under systemd that is the service's
/// cgroup; in a shell on a host without systemd it may be the root. Creating a dedicated
/// cgroup would mean moving the process into it (and out of its service's limits).
pub fn own_cgroup() -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    // Fields: id parent major:minor root mount-point options… - fstype source super-options
    let (root, mount) = mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split(' ').next() != Some("cgroup2") {
                return None;
            }
            let mut f = left.split(' ');
            let root = f.nth(3)?;
            let mount = f.next()?;
            Some((root.to_owned(), PathBuf::from(mount)))
        })
        .ok_or("no cgroup2 file system is mounted")?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let path = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("/proc/self/cgroup has no cgroup v2 line (0::)")?;
    let relative = path
        .strip_prefix(root.trim_end_matches('/'))
        .unwrap_or(path)
        .trim_start_matches('/');
    let dir = mount.join(relative);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!("{} is not a directory", dir.display()))
    }
}

/// The program `name` of the object, as its type `P`.
fn program_mut<'a, P>(
    obj: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut P, ClassifierError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    obj.program_mut(name)
        .ok_or(ClassifierError::Missing(name))?
        .try_into()
        .map_err(|source| ClassifierError::Program { name, source })
}

fn attach_sock_ops(obj: &mut aya::Ebpf, cgroup: &Path) -> Result<u32, ClassifierError> {
    let name = "sock_ops";
    let program: &mut aya::programs::SockOps = program_mut(obj, name)?;
    program
        .load()
        .map_err(|source| ClassifierError::Program { name, source })?;
    let dir = std::fs::File::open(cgroup)
        .map_err(|e| ClassifierError::Cgroup(format!("{}: {e}", cgroup.display())))?;
    // On kernels >= 5.7 aya attaches with a BPF link, which the kernel always adds beside the
    // cgroup's other programs (another replink's keep running) and which refuses any flag
    // (BPF_F_ALLOW_MULTI included: EINVAL), so the mode here must be `Single` (no flag).
    program
        .attach(&dir, CgroupAttachMode::Single)
        .map_err(|source| ClassifierError::Program { name, source })?;
    program
        .info()
        .map(|info| info.id())
        .map_err(|source| ClassifierError::Program { name, source })
}

fn listen_key(addr: SocketAddr) -> ListenKey {
    let mut key = ListenKey {
        port: addr.port(),
        family: 2,
        addr: [0; 4],
    };
    match addr.ip() {
        IpAddr::V4(ip) => key.addr[0] = u32::from_ne_bytes(ip.octets()),
        IpAddr::V6(ip) => {
            key.family = 10;
            for (i, word) in ip.octets().chunks_exact(4).enumerate() {
                key.addr[i] = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
            }
        }
    }
    key
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
    fn listen_keys_are_in_network_order() {
        let k = listen_key("127.0.0.1:443".parse().unwrap());
        assert_eq!((k.port, k.family), (443, 2));
        assert_eq!(k.addr[0].to_ne_bytes(), [127, 0, 0, 1]);
        let k = listen_key("[::1]:80".parse().unwrap());
        assert_eq!((k.family, k.addr[3].to_ne_bytes()), (10, [0, 0, 0, 1]));
        assert_eq!(listen_key("0.0.0.0:1".parse().unwrap()).addr, [0; 4]);
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
