//! Kernel-side redirection: loads snowtrail's eBPF programs (built from `ebpf/programs` and embedded
//! at build time), attaches them to enrolled cgroups, keeps maps and links pinned under `pin_dir`, and
//! reads what the programs record. This is the only module of the agent with `unsafe` (in `sys`).
//!
//! It does not decide which cgroups are enrolled (`enroll`), accept connections (`proxy`), or check
//! that an enrolled cgroup shares the agent's network namespace (the programs refuse such sockets).
//!
//! # Lifecycle
//! - [`Redirect::start`] loads the programs, adopts the maps and links a previous run left pinned
//!   (each link switches to the new program with one atomic `BPF_LINK_UPDATE`, so enrolled sockets
//!   are redirected throughout), writes the settings, and attaches `sockops` to the agent's cgroup,
//!   where it hands each client's origin to the socket the listener accepts ([`Redirect::lookup`]).
//! - [`Redirect::attach`] / [`Redirect::detach`] manage enrolled cgroups, [`Redirect::guard`] /
//!   [`Redirect::unguard_id`] the guards on their parents (see `ebpf/programs/src/connect.rs`), and
//!   [`Redirect::mark_foreign`] the cgroups a guard lets pass; links are pinned and outlive the daemon.
//! - [`Redirect::shutdown`]`(false)` (fail closed) leaves everything pinned: enrolled connects keep
//!   going to the closed listener and are refused. `shutdown(true)` (fail open) removes everything.
//!   A crash is the same as `shutdown(false)`. [`detach_pinned`] cleans up with the daemon down.
//!
//! # For the daemon
//! The listener must be created by a process already in `agent_cgroup`: the sockops program is
//! chosen by the cgroup a socket was created in, and an accepted socket inherits the listener's.
//! The daemon must run in the initial pid namespace (its own connections are recognised by pid).

mod error;
mod pins;
mod sys;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use aya::programs::Program;
use aya::{Ebpf, EbpfLoader};
use snowtrail_common::{
    AllowAddrKey, AllowPortKey, COUNTER_SLOTS, Counter, DEFAULT_MAX_CONNECTIONS, DENIALS_BYTES,
    MAP_ACCEPTED, MAP_ALLOW_ADDR, MAP_ALLOW_PORT, MAP_BY_TUPLE, MAP_COUNTERS, MAP_DENIALS,
    MAP_FOREIGN, MAP_ORIGINS, MAP_PORTS, MAP_SETTINGS, MAX_ALLOWED, MAX_FOREIGN, MAX_PORTS,
    Settings, TupleKey,
};

pub use error::Error;
pub use snowtrail_common::{Addr, Denial, ORIGIN_GUARDED, Origin, PROTO_TCP, PROTO_UDP};

use pins::{AGENT_SOCKOPS, GUARD_HOOKS, HOOKS, LOCKED_HOOKS, Layout, LinkSet, ProgramFds, SetKind};

/// The compiled eBPF object, embedded so the agent is one self-contained binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/snowtrail"));

/// Where links and maps are pinned unless configured otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/snowtrail";

/// Where the bpf file system is mounted when it is not mounted yet.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Every map of the object; all are pinned.
const MAPS: [&str; 10] = [
    MAP_SETTINGS,
    MAP_PORTS,
    MAP_ORIGINS,
    MAP_BY_TUPLE,
    MAP_ACCEPTED,
    MAP_FOREIGN,
    MAP_ALLOW_PORT,
    MAP_ALLOW_ADDR,
    MAP_DENIALS,
    MAP_COUNTERS,
];

/// A destination a locked-down cgroup may reach: an address range, on one port or on all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// The range's first address.
    pub net: IpAddr,
    /// How many leading bits must match.
    pub prefix: u8,
    /// The one port, or every port.
    pub port: Option<u16>,
}

/// The `[redirect]` settings this module needs, so it can be configured without the whole config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectConfig {
    /// Destination ports whose TCP connects are redirected (`redirect.ports`, default 443).
    pub ports: Vec<u16>,
    /// bpffs directory holding the pinned maps and links (default `/sys/fs/bpf/snowtrail`).
    pub pin_dir: PathBuf,
    /// Capacity of each connection map (`redirect.max_connections`).
    pub max_connections: u32,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            ports: vec![443],
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// What the programs counted and how many records are live, for metrics and for tests that check
/// finished connections leave nothing behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connects to an intercepted port the programs saw.
    pub seen: u64,
    /// Connects redirected to the listener.
    pub redirected: u64,
    /// Connects refused because the socket was in another network namespace.
    pub refused_netns: u64,
    /// Records that could not be stored (origins: connect refused; tuples: lookup will miss).
    pub store_failed: u64,
    /// Accepted connections whose origin was handed to the accepted socket.
    pub accepted: u64,
    /// Accepted connections with no origin to hand over (the agent refuses them).
    pub unmatched: u64,
    /// Connects the guards on enrolled cgroups' parents sent to the agent.
    pub guarded: u64,
    /// Connects and UDP sends a lockdown refused.
    pub lockdown_denied: u64,
    /// Entries in `ST_ORIGINS` (redirected sockets not yet closed).
    pub live_origins: usize,
    /// Entries in `ST_BY_TUPLE` (handshakes whose accepted side has not taken its origin yet).
    pub live_tuples: usize,
    /// Entries in `ST_ACCEPTED` (accepted connections not yet closed).
    pub live_accepted: usize,
}

/// The loaded programs and the cgroups they are attached to; one per running agent.
pub struct Redirect {
    ebpf: Ebpf,
    layout: Layout,
    netns_cookie: u64,
    /// The sockops link on the agent's cgroup; never pinned, it goes with the agent.
    agent_link: Option<OwnedFd>,
    sets: BTreeMap<(SetKind, u64), LinkSet>,
}

impl fmt::Debug for Redirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redirect")
            .field("pin_dir", &self.layout.root())
            .field("netns_cookie", &self.netns_cookie)
            .field("attached", &self.attached())
            .field("guarded", &self.guarded())
            .finish_non_exhaustive()
    }
}

impl Redirect {
    /// Loads the programs, adopts pinned maps/links left by a previous run (takeover without a gap),
    /// writes Settings {listen_port, enabled: 1, agent_tgid: own pid, agent_netns_cookie: own netns
    /// cookie} and ST_PORTS, and attaches sockops to `agent_cgroup` (the daemon's own cgroup
    /// directory). Mounts bpffs at /sys/fs/bpf if it is not mounted.
    pub fn start(
        cfg: &RedirectConfig,
        listen_port: u16,
        agent_cgroup: &Path,
    ) -> Result<Redirect, Error> {
        validate(cfg, listen_port)?;
        ensure_bpffs(&cfg.pin_dir)?;
        let layout = Layout::new(&cfg.pin_dir);
        layout.create()?;
        retire_incompatible_maps(&layout, cfg.max_connections)?;

        let mut loader = EbpfLoader::new();
        for name in MAPS {
            loader.map_pin_path(name, layout.map(name));
        }
        loader
            .map_max_entries(MAP_ORIGINS, cfg.max_connections)
            .map_max_entries(MAP_BY_TUPLE, cfg.max_connections)
            .map_max_entries(MAP_ACCEPTED, cfg.max_connections);
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| Error::Load(Box::new(e)))?;
        load_programs(&mut ebpf)?;

        let netns_cookie = sys::own_netns_cookie().map_err(Error::NetnsCookie)?;
        write_ports(&mut ebpf, &cfg.ports)?;
        write_settings(
            &mut ebpf,
            Settings {
                listen_port,
                enabled: 1,
                agent_tgid: std::process::id(),
                agent_netns_cookie: netns_cookie,
            },
        )?;

        let agent_link = attach_agent(&ebpf, agent_cgroup)?;

        pins::discard_staging(&layout)?;
        let (ids, _) = layout.scan()?;
        let progs = program_fds(&ebpf)?;
        let mut sets = BTreeMap::new();
        for (kind, id) in ids {
            if let Some(set) = pins::adopt_set(&layout, kind, id, &progs)? {
                tracing::info!(cgroup_id = id, ?kind, "adopted pinned cgroup links");
                sets.insert((kind, id), set);
            }
        }
        Ok(Redirect {
            ebpf,
            layout,
            netns_cookie,
            agent_link: Some(agent_link),
            sets,
        })
    }

    /// Attaches connect4/6, sockops, getpeername4/6 to the cgroup directory and pins the links under
    /// pin_dir (so they outlive the daemon). Idempotent: attaching a cgroup already attached (e.g.
    /// adopted at start) is Ok.
    pub fn attach(&mut self, cgroup_dir: &Path) -> Result<(), Error> {
        self.attach_locked(cgroup_dir, false)
    }

    /// As [`Redirect::attach`]; `locked` attaches the lockdown programs instead (connects and UDP
    /// sends only to intercepted ports and [`Redirect::allow`]ed destinations). A cgroup attached
    /// the other way is switched: the new set first, then the old one goes.
    pub fn attach_locked(&mut self, cgroup_dir: &Path, locked: bool) -> Result<(), Error> {
        let (kind, other) = if locked {
            (SetKind::Locked, SetKind::Enrolled)
        } else {
            (SetKind::Enrolled, SetKind::Locked)
        };
        self.attach_set(kind, cgroup_dir)?;
        let id = crate::cgroup::id_of(cgroup_dir)?;
        if self.sets.contains_key(&(other, id)) || self.layout.set_dir(other, id).exists() {
            self.remove(other, id)?;
        }
        Ok(())
    }

    /// Whether a cgroup is attached locked down.
    pub fn is_locked(&self, cgroup_id: u64) -> bool {
        self.sets.contains_key(&(SetKind::Locked, cgroup_id))
    }

    /// Replaces the destinations locked-down cgroups may reach.
    pub fn allow(&mut self, allowed: &[Allowed]) -> Result<(), Error> {
        {
            let map = self
                .ebpf
                .map_mut(MAP_ALLOW_PORT)
                .ok_or(Error::MissingMap(MAP_ALLOW_PORT))?;
            let mut trie: LpmTrie<&mut MapData, AllowPortKey, u8> =
                LpmTrie::try_from(map).map_err(|e| Error::map(MAP_ALLOW_PORT, e))?;
            let stale: Vec<LpmKey<AllowPortKey>> = trie.keys().filter_map(Result::ok).collect();
            for key in &stale {
                let _ = trie.remove(key);
            }
            for a in allowed {
                if let Some(port) = a.port {
                    let (ip, bits) = mapped(a.net, a.prefix);
                    let key = LpmKey::new(
                        16 + bits,
                        AllowPortKey {
                            port_be: port.to_be_bytes(),
                            ip,
                            _pad: [0; 2],
                        },
                    );
                    trie.insert(&key, 1, 0)
                        .map_err(|e| Error::map(MAP_ALLOW_PORT, e))?;
                }
            }
        }
        let map = self
            .ebpf
            .map_mut(MAP_ALLOW_ADDR)
            .ok_or(Error::MissingMap(MAP_ALLOW_ADDR))?;
        let mut trie: LpmTrie<&mut MapData, AllowAddrKey, u8> =
            LpmTrie::try_from(map).map_err(|e| Error::map(MAP_ALLOW_ADDR, e))?;
        let stale: Vec<LpmKey<AllowAddrKey>> = trie.keys().filter_map(Result::ok).collect();
        for key in &stale {
            let _ = trie.remove(key);
        }
        for a in allowed.iter().filter(|a| a.port.is_none()) {
            let (ip, bits) = mapped(a.net, a.prefix);
            trie.insert(&LpmKey::new(bits, AllowAddrKey { ip }), 1, 0)
                .map_err(|e| Error::map(MAP_ALLOW_ADDR, e))?;
        }
        Ok(())
    }

    /// The ring buffer of refused connects and sends, for one reader (the agent's); `None` once
    /// taken. Must be called within a tokio runtime (the reader waits on the buffer's descriptor).
    pub fn take_denials(&mut self) -> Result<Option<Denials>, Error> {
        let Some(map) = self.ebpf.take_map(MAP_DENIALS) else {
            return Ok(None);
        };
        let ring = aya::maps::RingBuf::try_from(map).map_err(|e| Error::map(MAP_DENIALS, e))?;
        let fd = sys::register_ring(ring).map_err(Error::Denials)?;
        Ok(Some(Denials { fd }))
    }

    /// Attaches the guard (guard4/6, sockops, getpeername4/6) to an enrolled cgroup's parent, pinned
    /// like an enrolled set: cgroups made below it later are sent to the agent until classified.
    /// Idempotent.
    pub fn guard(&mut self, parent_dir: &Path) -> Result<(), Error> {
        self.attach_set(SetKind::Guard, parent_dir)
    }

    fn attach_set(&mut self, kind: SetKind, cgroup_dir: &Path) -> Result<(), Error> {
        let id = crate::cgroup::id_of(cgroup_dir)?;
        if self.sets.contains_key(&(kind, id)) {
            return Ok(());
        }
        let progs = program_fds(&self.ebpf)?;
        let adopted = if self.layout.set_dir(kind, id).exists() {
            // Pinned but not held here: published by another agent on this pin directory.
            pins::adopt_set(&self.layout, kind, id, &progs)?
        } else {
            None
        };
        let set = match adopted {
            Some(set) => set,
            None => pins::create_set(&self.layout, kind, id, cgroup_dir, &progs)?,
        };
        self.sets.insert((kind, id), set);
        Ok(())
    }

    /// Detaches and unpins the links of that cgroup; a cgroup that is not attached is Ok.
    pub fn detach(&mut self, cgroup_dir: &Path) -> Result<(), Error> {
        let id = crate::cgroup::id_of(cgroup_dir)?;
        self.detach_id(id)
    }

    /// Cgroup ids currently attached (including adopted ones), so the daemon can reconcile with its
    /// enrollments.
    pub fn attached(&self) -> Vec<u64> {
        let mut ids = self.ids(SetKind::Enrolled);
        ids.extend(self.ids(SetKind::Locked));
        ids.sort_unstable();
        ids
    }

    /// Cgroup ids that carry a guard (including adopted ones).
    pub fn guarded(&self) -> Vec<u64> {
        self.ids(SetKind::Guard)
    }

    fn ids(&self, kind: SetKind) -> Vec<u64> {
        self.sets
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Detaches by cgroup id (for a pinned cgroup whose directory is gone or no longer enrolled).
    pub fn detach_id(&mut self, cgroup_id: u64) -> Result<(), Error> {
        self.remove(SetKind::Locked, cgroup_id)?;
        self.remove(SetKind::Enrolled, cgroup_id)
    }

    /// Removes the guard of a cgroup no enrollment has as its parent any more.
    pub fn unguard_id(&mut self, cgroup_id: u64) -> Result<(), Error> {
        self.remove(SetKind::Guard, cgroup_id)
    }

    fn remove(&mut self, kind: SetKind, cgroup_id: u64) -> Result<(), Error> {
        let held = self.sets.remove(&(kind, cgroup_id));
        pins::remove_set(&self.layout, kind, cgroup_id, held).map(drop)
    }

    /// Lets the guards pass connects of these cgroups from now on: the agent found that no
    /// enrollment covers them. The map is an LRU; an evicted cgroup is classified again.
    pub fn mark_foreign(&mut self, cgroup_ids: &[u64]) -> Result<(), Error> {
        let map = self
            .ebpf
            .map_mut(MAP_FOREIGN)
            .ok_or(Error::MissingMap(MAP_FOREIGN))?;
        let mut map: HashMap<&mut MapData, u64, u8> =
            HashMap::try_from(map).map_err(|e| Error::map(MAP_FOREIGN, e))?;
        for id in cgroup_ids {
            map.insert(id, 1, 0)
                .map_err(|e| Error::map(MAP_FOREIGN, e))?;
        }
        Ok(())
    }

    /// Whether the guards let a cgroup pass (tests, and `status`).
    pub fn is_foreign(&self, cgroup_id: u64) -> Result<bool, Error> {
        let map: HashMap<&MapData, u64, u8> = map_ref(&self.ebpf, MAP_FOREIGN)?;
        match map.get(&cgroup_id, 0) {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(Error::map(MAP_FOREIGN, e)),
        }
    }

    /// The origin record of a connection the listener accepted, by the accepted socket's cookie:
    /// the kernel handed it over during this very handshake, so it names the client's socket and
    /// no other. `None`: the connection was not redirected (or its record was evicted) and must be
    /// refused.
    pub fn lookup(&self, accepted: BorrowedFd<'_>) -> Result<Option<Origin>, Error> {
        let cookie = sys::socket_cookie(accepted).map_err(Error::Cookie)?;
        let map: HashMap<&MapData, u64, Origin> = map_ref(&self.ebpf, MAP_ACCEPTED)?;
        match map.get(&cookie, 0) {
            Ok(origin) => Ok(Some(origin)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(Error::map(MAP_ACCEPTED, e)),
        }
    }

    /// Counters summed over CPUs, and the number of live entries in ST_ORIGINS and ST_BY_TUPLE (tests
    /// check that finished connections leave nothing). Walks both maps: for metric scrapes, not for
    /// every connection.
    pub fn counters(&self) -> Result<Counters, Error> {
        let counters: PerCpuArray<&MapData, u64> = map_ref(&self.ebpf, MAP_COUNTERS)?;
        let sum = |c: Counter| -> Result<u64, Error> {
            let values = counters
                .get(&(c as u32), 0)
                .map_err(|e| Error::map(MAP_COUNTERS, e))?;
            Ok(values.iter().sum())
        };
        let origins: HashMap<&MapData, u64, Origin> = map_ref(&self.ebpf, MAP_ORIGINS)?;
        let tuples: HashMap<&MapData, TupleKey, Origin> = map_ref(&self.ebpf, MAP_BY_TUPLE)?;
        let accepted: HashMap<&MapData, u64, Origin> = map_ref(&self.ebpf, MAP_ACCEPTED)?;
        Ok(Counters {
            seen: sum(Counter::Seen)?,
            redirected: sum(Counter::Redirected)?,
            refused_netns: sum(Counter::RefusedNetns)?,
            store_failed: sum(Counter::StoreFailed)?,
            accepted: sum(Counter::Accepted)?,
            unmatched: sum(Counter::Unmatched)?,
            guarded: sum(Counter::Guarded)?,
            lockdown_denied: sum(Counter::LockdownDenied)?,
            live_origins: count_keys(origins.keys(), MAP_ORIGINS)?,
            live_tuples: count_keys(tuples.keys(), MAP_BY_TUPLE)?,
            live_accepted: count_keys(accepted.keys(), MAP_ACCEPTED)?,
        })
    }

    /// Clean stop. detach=false (fail closed, the default): keep links and maps pinned so enrolled
    /// traffic keeps being redirected to the (now closed) listener and gets refused. detach=true
    /// (fail_open): detach everything and remove the pins.
    pub fn shutdown(mut self, detach: bool) -> Result<(), Error> {
        if let Some(link) = self.agent_link.take() {
            let _ = sys::link_detach(link.as_fd());
        }
        if !detach {
            // The pid may be reused by an enrolled process once the agent is gone: exempt nobody.
            return update_settings(&mut self.ebpf, |s| s.agent_tgid = 0);
        }
        // Stop redirecting at once, even if some link below cannot be removed.
        update_settings(&mut self.ebpf, |s| s.enabled = 0)?;
        for (kind, id) in self.sets.keys().copied().collect::<Vec<_>>() {
            self.remove(kind, id)?;
        }
        pins::remove_all_sets(&self.layout)?;
        remove_map_pins(&self.layout)
    }
}

/// Detaches and removes everything pinned under pin_dir; works with the daemon down (`snowtrail
/// detach`). Returns how many links were removed.
pub fn detach_pinned(pin_dir: &Path) -> Result<usize, Error> {
    if !pin_dir.exists() {
        return Ok(0);
    }
    let layout = Layout::new(pin_dir);
    // Stop redirecting first, even if a link cannot be removed below.
    disable_pinned(&layout);
    let removed = pins::remove_all_sets(&layout)?;
    remove_map_pins(&layout)?;
    Ok(removed)
}

/// The reader of the lockdown's refusals, as the kernel sends them.
pub struct Denials {
    fd: tokio::io::unix::AsyncFd<aya::maps::RingBuf<MapData>>,
}

impl Denials {
    /// Waits for refusals and returns those the buffer holds now.
    pub async fn next(&mut self) -> io::Result<Vec<Denial>> {
        let mut ready = self.fd.readable_mut().await?;
        let mut taken = Vec::new();
        while let Some(item) = ready.get_inner_mut().next() {
            if let Some(d) = parse_denial(&item) {
                taken.push(d);
            }
        }
        ready.clear_ready();
        Ok(taken)
    }
}

/// A [`Denial`] from the bytes of a ring-buffer record (native byte order, the layout of
/// `snowtrail_common`); `None` when the record is too short.
pub fn parse_denial(bytes: &[u8]) -> Option<Denial> {
    let u16_at = |i: usize| Some(u16::from_ne_bytes(bytes.get(i..i + 2)?.try_into().ok()?));
    let u32_at = |i: usize| Some(u32::from_ne_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
    let u64_at = |i: usize| Some(u64::from_ne_bytes(bytes.get(i..i + 8)?.try_into().ok()?));
    Some(Denial {
        dst: Addr {
            ip: bytes.get(0..16)?.try_into().ok()?,
            port: u16_at(16)?,
            family: u16_at(18)?,
            _pad: 0,
        },
        timestamp_ns: u64_at(24)?,
        cgroup_id: u64_at(32)?,
        pid: u32_at(40)?,
        tgid: u32_at(44)?,
        uid: u32_at(48)?,
        protocol: u32_at(52)?,
        comm: bytes
            .get(56..56 + snowtrail_common::COMM_LEN)?
            .try_into()
            .ok()?,
    })
}

/// An address range in the 16-byte form the maps use (IPv4 v4-mapped), with its prefix length
/// counted over those 16 bytes.
fn mapped(net: IpAddr, prefix: u8) -> ([u8; 16], u32) {
    match net {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96 + u32::from(prefix.min(32))),
        IpAddr::V6(v6) => (v6.octets(), u32::from(prefix.min(128))),
    }
}

/// Converts a recorded address to a socket address (v4-mapped → V4), e.g. to connect upstream.
pub fn socket_addr(addr: &Addr) -> SocketAddr {
    let v6 = Ipv6Addr::from(addr.ip);
    match v6.to_ipv4_mapped() {
        Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, addr.port)),
        None => SocketAddr::V6(SocketAddrV6::new(v6, addr.port, 0, 0)),
    }
}

/// The caller's command name of an origin as text, for logs and the audit.
pub fn comm(origin: &Origin) -> String {
    comm_of(&origin.comm)
}

/// A NUL-padded `comm` as text.
pub fn comm_of(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn validate(cfg: &RedirectConfig, listen_port: u16) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Config(m));
    if cfg.ports.is_empty() {
        return bad("redirect.ports is empty".into());
    }
    if cfg.ports.len() > MAX_PORTS as usize {
        return bad(format!(
            "redirect.ports lists {} ports; at most {MAX_PORTS}",
            cfg.ports.len()
        ));
    }
    if cfg.ports.contains(&0) || listen_port == 0 {
        return bad("port 0 cannot be intercepted or listened on".into());
    }
    if cfg.ports.contains(&listen_port) {
        return bad(format!(
            "the listen port {listen_port} is also an intercepted port"
        ));
    }
    if cfg.max_connections == 0 {
        return bad("redirect.max_connections is 0".into());
    }
    if !cfg.pin_dir.is_absolute() {
        return bad(format!("pin_dir {} is not absolute", cfg.pin_dir.display()));
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf when the pin directory is below it and it is not mounted, then checks
/// that the pin directory is on a bpf file system.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), Error> {
    // Two starts in one process must not both mount (the second mount would hide the first).
    static MOUNTING: Mutex<()> = Mutex::new(());
    let _guard = crate::sync::lock(&MOUNTING);
    let mount = Path::new(BPFFS_MOUNT);
    if pin_dir.starts_with(mount) && !is_bpffs(mount) {
        fs::create_dir_all(mount).map_err(|e| Error::MountBpffs(mount.to_owned(), e))?;
        nix::mount::mount(
            Some("bpf"),
            mount,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| Error::MountBpffs(mount.to_owned(), e.into()))?;
        tracing::info!(path = %mount.display(), "mounted bpffs");
    }
    fs::create_dir_all(pin_dir).map_err(|e| Error::PinDir(pin_dir.to_owned(), e))?;
    if !is_bpffs(pin_dir) {
        return Err(Error::PinDir(
            pin_dir.to_owned(),
            io::Error::other("not on a bpf file system (bpffs)"),
        ));
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Unpins maps whose shape no longer matches (another version, or a changed `max_connections`).
/// Links still pointing at old programs keep the old maps alive until they are updated.
fn retire_incompatible_maps(layout: &Layout, max_connections: u32) -> Result<(), Error> {
    use std::mem::size_of;
    let expected = [
        (MAP_SETTINGS, 4, size_of::<Settings>(), 1),
        (MAP_PORTS, 2, 1, MAX_PORTS),
        (MAP_ORIGINS, 8, size_of::<Origin>(), max_connections),
        (
            MAP_BY_TUPLE,
            size_of::<TupleKey>(),
            size_of::<Origin>(),
            max_connections,
        ),
        (MAP_ACCEPTED, 8, size_of::<Origin>(), max_connections),
        (MAP_FOREIGN, 8, 1, MAX_FOREIGN),
        (
            MAP_ALLOW_PORT,
            4 + size_of::<AllowPortKey>(),
            1,
            MAX_ALLOWED,
        ),
        (
            MAP_ALLOW_ADDR,
            4 + size_of::<AllowAddrKey>(),
            1,
            MAX_ALLOWED,
        ),
        (MAP_DENIALS, 0, 0, DENIALS_BYTES),
        (MAP_COUNTERS, 4, 8, COUNTER_SLOTS),
    ];
    for (name, key_size, value_size, max_entries) in expected {
        let path = layout.map(name);
        if !path.exists() {
            continue;
        }
        let fits = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .is_ok_and(|info| {
                info.key_size() as usize == key_size
                    && info.value_size() as usize == value_size
                    && info.max_entries() == max_entries
            });
        if !fits {
            tracing::info!(map = name, "pinned map has another shape; replacing it");
            fs::remove_file(&path).map_err(|e| Error::PinnedMap(path.clone(), e))?;
        }
    }
    Ok(())
}

/// Every program of the object, each once.
fn program_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = HOOKS
        .iter()
        .chain(GUARD_HOOKS.iter())
        .chain(LOCKED_HOOKS.iter())
        .chain([&AGENT_SOCKOPS])
        .map(|h| h.program)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn load_programs(ebpf: &mut Ebpf) -> Result<(), Error> {
    for name in program_names() {
        let loaded = match ebpf.program_mut(name) {
            Some(Program::CgroupSockAddr(p)) => p.load(),
            Some(Program::SockOps(p)) => p.load(),
            _ => return Err(Error::MissingProgram(name)),
        };
        loaded.map_err(|e| Error::ProgramLoad {
            program: name,
            source: Box::new(e),
        })?;
    }
    Ok(())
}

fn program_fd<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<BorrowedFd<'a>, Error> {
    let program = ebpf.program(name).ok_or(Error::MissingProgram(name))?;
    let fd = program.fd().map_err(|e| Error::ProgramLoad {
        program: name,
        source: Box::new(e),
    })?;
    Ok(fd.as_fd())
}

fn program_fds(ebpf: &Ebpf) -> Result<ProgramFds<'_>, Error> {
    program_names()
        .into_iter()
        .map(|name| Ok((name, program_fd(ebpf, name)?)))
        .collect()
}

fn attach_agent(ebpf: &Ebpf, agent_cgroup: &Path) -> Result<OwnedFd, Error> {
    let prog = program_fd(ebpf, AGENT_SOCKOPS.program)?;
    let cgroup =
        fs::File::open(agent_cgroup).map_err(|e| Error::OpenCgroup(agent_cgroup.to_owned(), e))?;
    sys::link_create(prog, cgroup.as_fd(), AGENT_SOCKOPS.attach_type).map_err(|source| {
        Error::Attach {
            program: AGENT_SOCKOPS.program,
            cgroup: agent_cgroup.to_owned(),
            source,
        }
    })
}

fn map_ref<'a, M>(ebpf: &'a Ebpf, name: &'static str) -> Result<M, Error>
where
    M: TryFrom<&'a aya::maps::Map, Error = MapError>,
{
    let map = ebpf.map(name).ok_or(Error::MissingMap(name))?;
    M::try_from(map).map_err(|e| Error::map(name, e))
}

fn count_keys<K>(
    keys: impl Iterator<Item = Result<K, MapError>>,
    name: &'static str,
) -> Result<usize, Error> {
    let mut n = 0;
    for key in keys {
        key.map_err(|e| Error::map(name, e))?;
        n += 1;
    }
    Ok(n)
}

fn write_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<(), Error> {
    let map = ebpf
        .map_mut(MAP_PORTS)
        .ok_or(Error::MissingMap(MAP_PORTS))?;
    let mut map: HashMap<&mut MapData, u16, u8> =
        HashMap::try_from(map).map_err(|e| Error::map(MAP_PORTS, e))?;
    let stale: Vec<u16> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|p| !ports.contains(p))
        .collect();
    for &port in ports {
        map.insert(port, 1, 0)
            .map_err(|e| Error::map(MAP_PORTS, e))?;
    }
    for port in stale {
        map.remove(&port).map_err(|e| Error::map(MAP_PORTS, e))?;
    }
    Ok(())
}

fn settings_array(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, Settings>, Error> {
    let map = ebpf
        .map_mut(MAP_SETTINGS)
        .ok_or(Error::MissingMap(MAP_SETTINGS))?;
    Array::try_from(map).map_err(|e| Error::map(MAP_SETTINGS, e))
}

fn write_settings(ebpf: &mut Ebpf, settings: Settings) -> Result<(), Error> {
    settings_array(ebpf)?
        .set(0, settings, 0)
        .map_err(|e| Error::map(MAP_SETTINGS, e))
}

fn update_settings(ebpf: &mut Ebpf, change: impl FnOnce(&mut Settings)) -> Result<(), Error> {
    let mut array = settings_array(ebpf)?;
    let mut settings = array.get(&0, 0).map_err(|e| Error::map(MAP_SETTINGS, e))?;
    change(&mut settings);
    array
        .set(0, settings, 0)
        .map_err(|e| Error::map(MAP_SETTINGS, e))
}

/// Best effort: turns the pinned programs into pass-through before their links are removed.
fn disable_pinned(layout: &Layout) {
    let Ok(map) = MapData::from_pin(layout.map(MAP_SETTINGS)) else {
        return;
    };
    let Ok(mut array) = Array::<MapData, Settings>::try_from(aya::maps::Map::Array(map)) else {
        return;
    };
    if let Ok(mut settings) = array.get(&0, 0) {
        settings.enabled = 0;
        let _ = array.set(0, settings, 0);
    }
}

fn remove_map_pins(layout: &Layout) -> Result<(), Error> {
    for name in MAPS {
        let path = layout.map(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::PinnedMap(path, e)),
        }
    }
    for dir in [layout.maps_dir(), layout.root().to_owned()] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::PinDir(dir, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn a_denial_record_parses_from_its_bytes() {
        let d = Denial {
            dst: Addr::v4([127, 77, 0, 1], 443),
            timestamp_ns: 7,
            cgroup_id: 42,
            pid: 100,
            tgid: 99,
            uid: 1000,
            protocol: PROTO_UDP,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
        };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&d.dst.ip);
        bytes.extend_from_slice(&d.dst.port.to_ne_bytes());
        bytes.extend_from_slice(&d.dst.family.to_ne_bytes());
        bytes.extend_from_slice(&[0; 4]);
        for v in [d.timestamp_ns, d.cgroup_id] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [d.pid, d.tgid, d.uid, d.protocol] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        bytes.extend_from_slice(&d.comm);
        assert_eq!(bytes.len(), std::mem::size_of::<Denial>());
        assert_eq!(parse_denial(&bytes), Some(d));
        assert_eq!(parse_denial(&bytes[..40]), None);
    }

    #[test]
    fn every_program_is_loaded_once() {
        let names = program_names();
        assert_eq!(
            names,
            [
                "st_connect4",
                "st_connect6",
                "st_guard4",
                "st_guard6",
                "st_locked4",
                "st_locked6",
                "st_peername4",
                "st_peername6",
                "st_sendmsg4",
                "st_sendmsg6",
                "st_sockops"
            ]
        );
    }

    #[test]
    fn addr_round_trip() {
        assert_eq!(
            socket_addr(&Addr::v4([127, 77, 0, 1], 443)),
            "127.77.0.1:443".parse().unwrap()
        );
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        assert_eq!(
            socket_addr(&Addr::v6(loopback, 443)),
            "[::1]:443".parse().unwrap()
        );
    }

    #[test]
    fn config_checks() {
        let cfg = RedirectConfig::default();
        assert!(validate(&cfg, 943).is_ok());
        assert!(matches!(validate(&cfg, 443), Err(Error::Config(_))));
        assert!(matches!(
            validate(
                &RedirectConfig {
                    ports: vec![],
                    ..cfg.clone()
                },
                943
            ),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            validate(
                &RedirectConfig {
                    pin_dir: "rel".into(),
                    ..cfg
                },
                943
            ),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn redirect_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Redirect>();
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut origin = Origin {
            original_dst: Addr::default(),
            timestamp_ns: 0,
            cgroup_id: 0,
            netns_cookie: 0,
            socket_cookie: 0,
            pid: 0,
            tgid: 0,
            uid: 0,
            gid: 0,
            flags: 0,
            server_isn: 0,
            comm: [0; 16],
        };
        origin.comm[..7].copy_from_slice(b"python3");
        assert_eq!(comm(&origin), "python3");
    }
}
