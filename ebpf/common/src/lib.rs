//! Types shared by the eBPF programs (`snowtrail-ebpf`) and the agent's loader (`snowtrail::redirect`).
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of padding surprises: the kernel side writes these
//! records into maps and the agent reads them byte for byte. Flags are integers, never `bool`.
//! Addresses are kept as 16-byte IPv6 form; IPv4 addresses are stored v4-mapped (`::ffff:a.b.c.d`)
//! so one key type serves both families.
#![no_std]
#![warn(missing_docs)]

/// Name of the map of intercepted destination ports (`HashMap<u16, u8>`, port in host byte order).
pub const MAP_PORTS: &str = "ST_PORTS";
/// Capacity of [`MAP_PORTS`]: how many distinct ports `redirect.ports` may list.
pub const MAX_PORTS: u32 = 64;
/// Name of the single-entry array holding [`Settings`].
pub const MAP_SETTINGS: &str = "ST_SETTINGS";
/// Name of the LRU map from a client socket's cookie to its [`Origin`].
pub const MAP_ORIGINS: &str = "ST_ORIGINS";
/// Name of the LRU map from a client's [`TupleKey`] to its [`Origin`]: the bridge from the client's
/// socket to the one the agent accepts, alive only between the two ends of one handshake.
pub const MAP_BY_TUPLE: &str = "ST_BY_TUPLE";
/// Name of the LRU map from the cookie of a socket the agent accepted to its client's [`Origin`],
/// read by the proxy on accept.
pub const MAP_ACCEPTED: &str = "ST_ACCEPTED";
/// Name of the LRU map of cgroups (by id) the agent found enrolled by nothing: the guard on an
/// enrolled cgroup's parent lets their connects go where they were going.
pub const MAP_FOREIGN: &str = "ST_FOREIGN";
/// Capacity of [`MAP_FOREIGN`]; an evicted cgroup's next connect is classified by the agent again.
pub const MAX_FOREIGN: u32 = 65_536;
/// Name of the LPM trie of destinations a locked-down cgroup may reach on one port
/// ([`AllowPortKey`]; the value is unused).
pub const MAP_ALLOW_PORT: &str = "ST_ALLOW_PORT";
/// Name of the LPM trie of destinations a locked-down cgroup may reach on every port
/// ([`AllowAddrKey`]; the value is unused).
pub const MAP_ALLOW_ADDR: &str = "ST_ALLOW_ADDR";
/// Entries of each allow-list trie.
pub const MAX_ALLOWED: u32 = 1024;
/// Name of the ring buffer of [`Denial`] records the lockdown programs send the agent.
pub const MAP_DENIALS: &str = "ST_DENIALS";
/// Size of [`MAP_DENIALS`] in bytes (a power of two, a multiple of the page size).
pub const DENIALS_BYTES: u32 = 64 * 1024;

/// `IPPROTO_TCP`.
pub const PROTO_TCP: u32 = 6;
/// `IPPROTO_UDP`.
pub const PROTO_UDP: u32 = 17;

/// Data of a [`MAP_ALLOW_PORT`] key: the port (network order) first, then the address, so that a
/// prefix of 16 + n bits is "this port, these n address bits".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowPortKey {
    /// The destination port, network byte order.
    pub port_be: [u8; 2],
    /// The address, IPv4 as v4-mapped.
    pub ip: [u8; 16],
    /// Zero; keeps the key free of implicit padding.
    pub _pad: [u8; 2],
}

/// Data of a [`MAP_ALLOW_ADDR`] key: the address alone (IPv4 as v4-mapped).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowAddrKey {
    /// The address.
    pub ip: [u8; 16],
}

/// A connect or send a lockdown program refused, for the agent to record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial {
    /// Where it was going.
    pub dst: Addr,
    /// Monotonic time (`bpf_ktime_get_ns`).
    pub timestamp_ns: u64,
    /// The cgroup v2 id of the caller.
    pub cgroup_id: u64,
    /// Thread id of the caller (initial pid namespace).
    pub pid: u32,
    /// Process id of the caller.
    pub tgid: u32,
    /// Real user id of the caller.
    pub uid: u32,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub protocol: u32,
    /// The caller's `comm`, NUL padded.
    pub comm: [u8; COMM_LEN],
}
/// Name of the per-CPU array of [`Counters`] the programs bump.
pub const MAP_COUNTERS: &str = "ST_COUNTERS";

/// Default number of entries of each LRU map; `redirect.max_connections` overrides it.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 65_536;

/// `AF_INET`, as the kernel numbers it.
pub const FAMILY_INET: u16 = 2;
/// `AF_INET6`, as the kernel numbers it.
pub const FAMILY_INET6: u16 = 10;

/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;

/// How the programs should behave, written by the agent before it attaches anything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The proxy's listening port, host byte order.
    pub listen_port: u16,
    /// Non-zero once the agent filled this record; programs do nothing while it is zero.
    pub enabled: u16,
    /// The agent's own process id (initial pid namespace); its sockets are never redirected.
    pub agent_tgid: u32,
    /// Network namespace cookie of the agent; sockets of other namespaces are refused, not redirected.
    pub agent_netns_cookie: u64,
}

/// A socket address in the one form both families share: 16 address bytes (IPv4 v4-mapped) and a port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Addr {
    /// IPv6 address bytes in network order; IPv4 as `::ffff:a.b.c.d`.
    pub ip: [u8; 16],
    /// Port, host byte order.
    pub port: u16,
    /// `FAMILY_INET` or `FAMILY_INET6`: the family the client's socket used.
    pub family: u16,
    /// Keeps the struct free of implicit padding.
    pub _pad: u32,
}

/// What the kernel knew about a redirected connect(): where it was going and who asked.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The destination the client asked for.
    pub original_dst: Addr,
    /// Monotonic time of the connect() in nanoseconds (`bpf_ktime_get_ns`).
    pub timestamp_ns: u64,
    /// The cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// The network namespace cookie of the socket.
    pub netns_cookie: u64,
    /// The socket cookie of the client's socket.
    pub socket_cookie: u64,
    /// Thread id of the caller (initial pid namespace).
    pub pid: u32,
    /// Process id of the caller (initial pid namespace).
    pub tgid: u32,
    /// Real user id of the caller.
    pub uid: u32,
    /// Real group id of the caller.
    pub gid: u32,
    /// [`ORIGIN_GUARDED`] and the like.
    pub flags: u32,
    /// The initial sequence number of the listener's side of the handshake (the SYN-ACK's), once the
    /// client's socket is established; part of the [`TupleKey`] the connection is found by.
    pub server_isn: u32,
    /// The caller's `comm`, NUL padded.
    pub comm: [u8; COMM_LEN],
}

/// [`Origin::flags`]: the connect was redirected by the guard on an enrolled cgroup's parent, from a
/// cgroup no enrollment's programs were attached to (a restarted unit's new cgroup, or a stranger the
/// agent has not classified yet).
pub const ORIGIN_GUARDED: u32 = 1;

/// Key of [`MAP_BY_TUPLE`]: the client's side of the redirected connection, as the proxy sees its peer.
///
/// `client` is always in [`Addr::tuple_form`] (IPv4 and v4-mapped IPv6 both as v4-mapped bytes with
/// `FAMILY_INET`), because a client's dual-stack socket and the proxy's IPv4 socket name the same
/// endpoint in different families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    /// The client's local address and port (the proxy's peer address).
    pub client: Addr,
    /// The network namespace cookie; tuples of different namespaces never collide.
    pub netns_cookie: u64,
    /// The listener side's initial sequence number: another connection from the same address and
    /// port (a later one, after the first closed) has another one, so it never finds this entry.
    pub server_isn: u32,
    /// Keeps the struct free of implicit padding.
    pub _pad: u32,
}

/// Index of each counter in [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// connect() calls the programs saw on an intercepted port.
    Seen = 0,
    /// connect() calls redirected to the proxy.
    Redirected = 1,
    /// connect() calls refused because the socket lived in another network namespace.
    RefusedNetns = 2,
    /// Records that could not be stored: an origin (its connect() is refused) or a tuple (sockops).
    StoreFailed = 3,
    /// Connections the listener accepted whose origin was handed to the accepted socket.
    Accepted = 4,
    /// Connections accepted on the listen port with no origin to hand over (not redirected, or the
    /// bridge entry was evicted): the agent refuses them.
    Unmatched = 5,
    /// connect() calls the guard on a parent cgroup redirected.
    Guarded = 6,
    /// connect() and sendmsg() calls a lockdown refused.
    LockdownDenied = 7,
}

/// Number of counters in [`MAP_COUNTERS`].
pub const COUNTER_SLOTS: u32 = 8;

impl Addr {
    /// Builds the v4-mapped form of an IPv4 address (`a.b.c.d` as network-order bytes).
    pub const fn v4(octets: [u8; 4], port: u16) -> Self {
        Addr {
            ip: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2],
                octets[3],
            ],
            port,
            family: FAMILY_INET,
            _pad: 0,
        }
    }

    /// Builds an address from 16 IPv6 bytes as the client's socket named it.
    pub const fn v6(ip: [u8; 16], port: u16) -> Self {
        Addr {
            ip,
            port,
            family: FAMILY_INET6,
            _pad: 0,
        }
    }

    /// Whether `ip` holds an IPv4 address (`::ffff:a.b.c.d`).
    pub const fn is_v4_mapped(&self) -> bool {
        is_v4_mapped(&self.ip)
    }

    /// The form [`TupleKey::client`] uses: the family is `FAMILY_INET` for v4-mapped bytes, else
    /// `FAMILY_INET6`, whatever family the socket that saw the address had.
    pub const fn tuple_form(ip: [u8; 16], port: u16) -> Self {
        let family = if is_v4_mapped(&ip) {
            FAMILY_INET
        } else {
            FAMILY_INET6
        };
        Addr {
            ip,
            port,
            family,
            _pad: 0,
        }
    }
}

/// Whether 16 IPv6 bytes are an IPv4-mapped address (`::ffff:a.b.c.d`).
pub const fn is_v4_mapped(ip: &[u8; 16]) -> bool {
    ip[0] == 0
        && ip[1] == 0
        && ip[2] == 0
        && ip[3] == 0
        && ip[4] == 0
        && ip[5] == 0
        && ip[6] == 0
        && ip[7] == 0
        && ip[8] == 0
        && ip[9] == 0
        && ip[10] == 0xff
        && ip[11] == 0xff
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, every bit pattern valid, no padding (checked by the size tests below).
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Addr {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::TupleKey {}
    unsafe impl aya::Pod for super::AllowPortKey {}
    unsafe impl aya::Pod for super::AllowAddrKey {}
    unsafe impl aya::Pod for super::Denial {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<Settings>(), 16);
        assert_eq!(size_of::<Addr>(), 24);
        assert_eq!(size_of::<TupleKey>(), 40);
        assert_eq!(size_of::<AllowPortKey>(), 20);
        assert_eq!(size_of::<AllowAddrKey>(), 16);
        assert_eq!(size_of::<Denial>(), 24 + 16 + 16 + COMM_LEN);
        assert_eq!(size_of::<Origin>(), 24 + 8 * 4 + 4 * 6 + COMM_LEN);
    }

    #[test]
    fn v4_mapped_form() {
        let a = Addr::v4([127, 77, 0, 1], 443);
        assert_eq!(&a.ip[10..], &[0xff, 0xff, 127, 77, 0, 1]);
        assert_eq!(a.family, FAMILY_INET);
        assert!(a.is_v4_mapped());
    }

    #[test]
    fn tuple_form_unifies_families() {
        let v4 = Addr::v4([127, 0, 0, 1], 5000);
        assert_eq!(Addr::tuple_form(v4.ip, 5000), v4);
        let mut loopback6 = [0u8; 16];
        loopback6[15] = 1;
        assert_eq!(Addr::tuple_form(loopback6, 5000).family, FAMILY_INET6);
        assert!(!Addr::v6(loopback6, 1).is_v4_mapped());
    }
}
