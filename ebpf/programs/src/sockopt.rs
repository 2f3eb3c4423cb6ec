//! `cgroup/getsockopt` on the agent's own cgroup: answers `SO_ORIGINAL_DST` (`SOL_IP`, 80) with a
//! `sockaddr_in` and `IP6T_SO_ORIGINAL_DST` (`SOL_IPV6`, 80) with a `sockaddr_in6` for a socket
//! accepted on the agent's listener whose peer is a redirected client in `ST_BY_TUPLE`.
//!
//! Every other call keeps the kernel's answer: the program returns 1 without touching `retval`,
//! `optlen` or `optval`. Several agents may sit on one cgroup; each answers only for sockets on its
//! own listener port found in its own map.

use core::ptr::{addr_of_mut, read_volatile, write_unaligned, write_volatile};

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_netns_cookie, programs::SockoptContext,
};
use snowtrail_common::{Addr, Counter, TupleKey};

use crate::maps::{ST_BY_TUPLE, bump, settings, words_to_bytes};

/// getsockopt programs return 1 to let the (possibly rewritten) answer through.
const DONE: i32 = 1;

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` share the number.
const ORIGINAL_DST: i32 = 80;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;

/// `struct sockaddr_in`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port_be: u16,
    addr: [u8; 4],
    zero: [u8; 8],
}

/// `struct sockaddr_in6`.
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port_be: u16,
    flowinfo: u32,
    addr: [u8; 16],
    scope_id: u32,
}

pub fn try_getsockopt(ctx: &SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: `so` is the kernel's bpf_sockopt context; level and optname are readable.
    let (level, optname) = unsafe { ((*so).level, (*so).optname) };
    if optname != ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return DONE;
    }
    let Some((local_port, peer)) = accepted(ctx) else {
        return DONE;
    };
    // Only sockets accepted on this agent's listener: another agent may sit on the same cgroup.
    match settings() {
        Some(s) if s.listen_port == local_port => {}
        _ => return DONE,
    }
    // SAFETY: bpf_get_netns_cookie accepts a sockopt context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(origin) = ST_BY_TUPLE.get_ptr(TupleKey {
        client: peer,
        netns_cookie,
    }) else {
        return DONE;
    };
    // SAFETY: a successful lookup points at a live map value; Addr is plain data.
    let dst = unsafe { (*origin).original_dst };

    // SAFETY: optval and optval_end are the context's buffer bounds.
    let (optval, optval_end) = unsafe {
        (
            (*so).__bindgen_anon_2.optval as *mut u8,
            (*so).__bindgen_anon_3.optval_end as *mut u8,
        )
    };
    let len = if level == SOL_IP {
        if !dst.is_v4_mapped() {
            // No sockaddr_in can hold an IPv6 destination.
            return DONE;
        }
        let len = size_of::<SockaddrIn>();
        if optval as usize + len > optval_end as usize {
            return DONE;
        }
        let answer = SockaddrIn {
            family: AF_INET as u16,
            port_be: dst.port.to_be(),
            addr: [dst.ip[12], dst.ip[13], dst.ip[14], dst.ip[15]],
            zero: [0; 8],
        };
        // SAFETY: bounds checked against optval_end just above.
        unsafe { write_unaligned(optval as *mut SockaddrIn, answer) };
        len
    } else {
        let len = size_of::<SockaddrIn6>();
        if optval as usize + len > optval_end as usize {
            return DONE;
        }
        let answer = SockaddrIn6 {
            family: AF_INET6 as u16,
            port_be: dst.port.to_be(),
            flowinfo: 0,
            addr: dst.ip,
            scope_id: 0,
        };
        // SAFETY: bounds checked against optval_end just above.
        unsafe { write_unaligned(optval as *mut SockaddrIn6, answer) };
        len
    };
    // Verifier: "invalid bpf_context access" when LLVM merges these two adjacent 4-byte stores into
    // one 8-byte store. Volatile stores keep them apart.
    // SAFETY: getsockopt programs may write optlen and retval.
    unsafe {
        write_volatile(addr_of_mut!((*so).optlen), len as i32);
        write_volatile(addr_of_mut!((*so).retval), 0);
    }
    bump(Counter::OriginalDstAnswered);
    DONE
}

/// The local port and the remote address (in tuple form) of the socket asked about, when it is a
/// TCP socket.
#[inline(always)]
fn accepted(ctx: &SockoptContext) -> Option<(u16, Addr)> {
    // SAFETY: `sk` of a sockopt context is the socket being asked about (a full socket).
    let sk = unsafe { (*ctx.sockopt).__bindgen_anon_1.sk };
    if sk.is_null() {
        return None;
    }
    // Every field is read up front with a volatile load at its own offset, before branching on the
    // family. Verifier: "R2 pointer arithmetic on sock prohibited" when LLVM computed the address
    // of dst_ip4 / dst_ip6 into a register (to share one load between the branches).
    // SAFETY: these bpf_sock fields are readable for any full socket.
    let (protocol, family, src_port, port_be, ip4, ip6) = unsafe {
        (
            read_volatile(&(*sk).protocol),
            read_volatile(&(*sk).family),
            read_volatile(&(*sk).src_port),
            read_volatile(&(*sk).dst_port),
            read_volatile(&(*sk).dst_ip4),
            [
                read_volatile(&(*sk).dst_ip6[0]),
                read_volatile(&(*sk).dst_ip6[1]),
                read_volatile(&(*sk).dst_ip6[2]),
                read_volatile(&(*sk).dst_ip6[3]),
            ],
        )
    };
    if protocol != IPPROTO_TCP {
        return None;
    }
    // src_port is in host byte order, dst_port in network byte order.
    let local_port = src_port as u16;
    let port = u16::from_be(port_be);
    if family == AF_INET {
        Some((local_port, Addr::v4(ip4.to_ne_bytes(), port)))
    } else if family == AF_INET6 {
        Some((local_port, Addr::tuple_form(words_to_bytes(ip6), port)))
    } else {
        None
    }
}
