//! The maps shared with the agent (names in `snowtrail_common`) and small helpers around them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use snowtrail_common::{
    AllowAddrKey, AllowPortKey, COUNTER_SLOTS, Counter, DEFAULT_MAX_CONNECTIONS, DENIALS_BYTES,
    MAX_ALLOWED, MAX_FOREIGN, MAX_PORTS, Origin, Settings, TupleKey,
};

/// One [`Settings`] record at index 0, written by the agent at start.
#[map]
pub static ST_SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Intercepted destination ports (host byte order); the value is unused.
#[map]
pub static ST_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORTS, 0);

/// Origins of redirected connects, by the client socket's cookie.
#[map]
pub static ST_ORIGINS: LruHashMap<u64, Origin> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, 0);

/// Origins of established redirected connections, by the client's address as the agent sees it and
/// the handshake's listener-side sequence number, until the agent's side of the handshake takes them.
#[map]
pub static ST_BY_TUPLE: LruHashMap<TupleKey, Origin> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, 0);

/// Origins of connections the agent accepted, by the accepted socket's cookie.
#[map]
pub static ST_ACCEPTED: LruHashMap<u64, Origin> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, 0);

/// Cgroups the agent classified as enrolled by nothing; the guard lets their connects pass.
#[map]
pub static ST_FOREIGN: LruHashMap<u64, u8> = LruHashMap::with_max_entries(MAX_FOREIGN, 0);

/// Destinations a locked-down cgroup may reach on one port.
#[map]
pub static ST_ALLOW_PORT: LpmTrie<AllowPortKey, u8> = LpmTrie::with_max_entries(MAX_ALLOWED, 0);

/// Destinations a locked-down cgroup may reach on every port.
#[map]
pub static ST_ALLOW_ADDR: LpmTrie<AllowAddrKey, u8> = LpmTrie::with_max_entries(MAX_ALLOWED, 0);

/// Refused connects and sends, for the agent to record.
#[map]
pub static ST_DENIALS: RingBuf = RingBuf::with_byte_size(DENIALS_BYTES, 0);

/// Per-CPU event counters, indexed by [`Counter`].
#[map]
pub static ST_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Adds one to a counter of this CPU.
#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = ST_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful per-CPU lookup; programs on one CPU do not
        // run concurrently, so a plain increment is enough.
        unsafe { *slot += 1 };
    }
}

/// The agent's settings, when it has enabled the programs.
#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    ST_SETTINGS.get(0).filter(|s| s.enabled != 0)
}

/// Splits four network-order words (as the kernel's contexts hold addresses) into 16 bytes.
#[inline(always)]
pub fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    let a = w[0].to_ne_bytes();
    let b = w[1].to_ne_bytes();
    let c = w[2].to_ne_bytes();
    let d = w[3].to_ne_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// Joins 16 address bytes into the four network-order words the kernel's contexts hold.
#[inline(always)]
pub fn bytes_to_words(b: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}
