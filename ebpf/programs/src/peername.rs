//! `cgroup/getpeername4` and `cgroup/getpeername6`: a redirected client's `getpeername()` reports the
//! destination it asked for, not the agent's listener. Sockets without an origin are left alone.

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, programs::SockAddrContext,
};
use snowtrail_common::{Addr, FAMILY_INET, FAMILY_INET6};

use crate::maps::{ST_ORIGINS, bytes_to_words};

/// getpeername programs must return 1.
const DONE: i32 = 1;

pub fn try_peername4(ctx: &SockAddrContext) -> i32 {
    let Some(dst) = original_dst(ctx) else {
        return DONE;
    };
    if dst.family != FAMILY_INET {
        return DONE;
    }
    let ip = u32::from_ne_bytes([dst.ip[12], dst.ip[13], dst.ip[14], dst.ip[15]]);
    let sa = ctx.sock_addr;
    // SAFETY: getpeername4 may write user_ip4 and user_port (4-byte stores).
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), ip);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(dst.port.to_be()));
    }
    DONE
}

pub fn try_peername6(ctx: &SockAddrContext) -> i32 {
    let Some(dst) = original_dst(ctx) else {
        return DONE;
    };
    if dst.family != FAMILY_INET6 {
        return DONE;
    }
    let w = bytes_to_words(&dst.ip);
    let sa = ctx.sock_addr;
    // Verifier: "dereference of modified ctx ptr" when user_ip6 is written as an array; one volatile
    // u32 store per word.
    // SAFETY: getpeername6 may write user_ip6 and user_port (4-byte stores).
    unsafe {
        write_volatile(&mut (*sa).user_ip6[0], w[0]);
        write_volatile(&mut (*sa).user_ip6[1], w[1]);
        write_volatile(&mut (*sa).user_ip6[2], w[2]);
        write_volatile(&mut (*sa).user_ip6[3], w[3]);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(dst.port.to_be()));
    }
    DONE
}

/// The original destination of this socket, when it was redirected.
#[inline(always)]
fn original_dst(ctx: &SockAddrContext) -> Option<Addr> {
    // SAFETY: bpf_get_socket_cookie accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let origin = ST_ORIGINS.get_ptr(cookie)?;
    // SAFETY: a successful lookup points at a live map value; Addr is plain data.
    Some(unsafe { (*origin).original_dst })
}
