//! `sockops` on enrolled cgroups: follows a redirected client socket through its life.
//!
//! - `TCP_CONNECT_CB` (SYN about to leave): ask for state callbacks, so even a refused connect is
//!   seen closing and its origin removed.
//! - `ACTIVE_ESTABLISHED_CB` (SYN-ACK received, before the client's ACK leaves, hence before the
//!   agent's `accept()` returns): copy the origin to `ST_BY_TUPLE` under the client's address.
//! - `STATE_CB` to `TCP_CLOSE`: delete both entries, so a finished connection leaves nothing behind.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockOpsContext,
};
use snowtrail_common::{Addr, Counter, TupleKey};

use crate::maps::{ST_BY_TUPLE, ST_ORIGINS, bump, words_to_bytes};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

pub fn try_sockops(ctx: &SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            if ST_ORIGINS.get_ptr(cookie(ctx)).is_some() {
                want_state_changes(ctx);
            }
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(ctx),
        // args[0] is the old state, args[1] the new one.
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => closed(ctx),
        _ => {}
    }
    1
}

fn established(ctx: &SockOpsContext) {
    let Some(origin) = ST_ORIGINS.get_ptr(cookie(ctx)) else {
        return;
    };
    // SAFETY: a successful lookup points at a live map value; Origin is plain data.
    let origin = unsafe { *origin };
    let Some(key) = tuple_key(ctx) else {
        return;
    };
    if ST_BY_TUPLE.insert(key, origin, u64::from(BPF_ANY)).is_err() {
        bump(Counter::StoreFailed);
    }
}

fn closed(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    // Only a redirected socket may remove a tuple entry: another socket can share the client's
    // local address and port (SO_REUSEADDR) while connected elsewhere.
    if ST_ORIGINS.get_ptr(cookie).is_none() {
        return;
    }
    if let Some(key) = tuple_key(ctx) {
        let _ = ST_BY_TUPLE.remove(key);
    }
    let _ = ST_ORIGINS.remove(cookie);
}

#[inline(always)]
fn want_state_changes(ctx: &SockOpsContext) {
    let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
    let _ = ctx.set_cb_flags(flags as i32);
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: bpf_get_socket_cookie accepts a sock_ops context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The client's local address and port, as the agent sees its peer, with the socket's namespace.
#[inline(always)]
fn tuple_key(ctx: &SockOpsContext) -> Option<TupleKey> {
    let ops = ctx.ops;
    // Every field is read up front with a volatile load, before branching on the family.
    // Verifier: "dereference of modified ctx ptr R1 off=28 disallowed" when the loads sat in the
    // two branches, or were plain loads LLVM could sink into them: it merged them into one load
    // through a selected pointer (ctx + 28 or ctx + 60), and sock_ops only allows 4-byte loads at a
    // constant offset from the context itself.
    // SAFETY: `ops` is the kernel's bpf_sock_ops context; these fields are readable for any socket.
    let (family, port, ip4, ip6) = unsafe {
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).local_port),
            read_volatile(&(*ops).local_ip4),
            [
                read_volatile(&(*ops).local_ip6[0]),
                read_volatile(&(*ops).local_ip6[1]),
                read_volatile(&(*ops).local_ip6[2]),
                read_volatile(&(*ops).local_ip6[3]),
            ],
        )
    };
    // local_port is in host byte order.
    let port = port as u16;
    let client = if family == AF_INET {
        Addr::v4(ip4.to_ne_bytes(), port)
    } else if family == AF_INET6 {
        Addr::tuple_form(words_to_bytes(ip6), port)
    } else {
        return None;
    };
    // SAFETY: bpf_get_netns_cookie accepts a sock_ops context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    Some(TupleKey {
        client,
        netns_cookie,
    })
}
