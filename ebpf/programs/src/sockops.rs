//! `sockops`: follows a redirected connection through its life, on both of its ends.
//!
//! On the client's socket (enrolled cgroups and their guarded parents):
//! - `TCP_CONNECT_CB` (SYN about to leave): ask for state callbacks, so even a refused connect is
//!   seen closing and its origin removed.
//! - `ACTIVE_ESTABLISHED_CB` (SYN-ACK received, before the client's ACK leaves): note the SYN-ACK's
//!   sequence number in the origin and copy the origin to `ST_BY_TUPLE`, keyed by the client's
//!   address, namespace and that number.
//! - `STATE_CB` to `TCP_CLOSE`: delete what is left of both entries.
//!
//! On the socket the agent accepts (the agent's own cgroup):
//! - `PASSIVE_ESTABLISHED_CB` (the client's ACK arrived; the socket is not yet handed to `accept()`):
//!   on the listen port, take the entry with the peer's address, namespace and this side's initial
//!   sequence number out of `ST_BY_TUPLE` and store it in `ST_ACCEPTED` under the accepted socket's
//!   cookie, which the agent reads. A bridge entry so lives only for one handshake, a later
//!   connection from the same address can never find it, and the agent's lookup names exactly one
//!   socket: a missing entry means a refusal, never somebody else's origin.
//! - `STATE_CB` to `TCP_CLOSE`: delete the `ST_ACCEPTED` entry.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockOpsContext,
};
use snowtrail_common::{Addr, Counter, TupleKey};

use crate::maps::{ST_ACCEPTED, ST_BY_TUPLE, ST_ORIGINS, bump, settings, words_to_bytes};

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
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => accepted(ctx),
        // args[0] is the old state, args[1] the new one.
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => closed(ctx),
        _ => {}
    }
    1
}

/// The client's side: publishes the origin for the agent's side of the same handshake.
fn established(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    let Some(origin) = ST_ORIGINS.get_ptr_mut(cookie) else {
        return;
    };
    let ends = Ends::read(ctx);
    // rcv_nxt is one past the SYN-ACK's sequence number: the listener side's initial one plus one.
    // SAFETY: a successful lookup points at a live map value; Origin is plain data.
    let origin = unsafe {
        (*origin).server_isn = ends.rcv_nxt;
        *origin
    };
    let Some(key) = ends.key(ends.local(), ends.rcv_nxt) else {
        return;
    };
    if ST_BY_TUPLE
        .insert(&key, &origin, u64::from(BPF_ANY))
        .is_err()
    {
        bump(Counter::StoreFailed);
    }
}

/// The agent's side: takes the origin of the client at the other end of this very handshake.
fn accepted(ctx: &SockOpsContext) {
    let Some(settings) = settings() else {
        return;
    };
    let ends = Ends::read(ctx);
    if ends.local_port as u16 != settings.listen_port {
        return;
    }
    // snd_nxt is one past this side's SYN-ACK, the number the client's side noted.
    let Some(key) = ends.key(ends.remote(), ends.snd_nxt) else {
        return;
    };
    let Some(origin) = ST_BY_TUPLE.get_ptr(&key) else {
        bump(Counter::Unmatched);
        return;
    };
    // SAFETY: a successful lookup points at a live map value; Origin is plain data.
    let origin = unsafe { *origin };
    let _ = ST_BY_TUPLE.remove(&key);
    if ST_ACCEPTED
        .insert(&cookie(ctx), &origin, u64::from(BPF_ANY))
        .is_err()
    {
        bump(Counter::StoreFailed);
        return;
    }
    bump(Counter::Accepted);
    want_state_changes(ctx);
}

fn closed(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    // Only a redirected socket may remove a tuple entry: another socket can share the client's
    // local address and port (SO_REUSEADDR) while connected elsewhere.
    let Some(origin) = ST_ORIGINS.get_ptr(cookie) else {
        let _ = ST_ACCEPTED.remove(&cookie);
        return;
    };
    // SAFETY: as above.
    let server_isn = unsafe { (*origin).server_isn };
    let ends = Ends::read(ctx);
    if server_isn != 0
        && let Some(key) = ends.key(ends.local(), server_isn)
    {
        let _ = ST_BY_TUPLE.remove(&key);
    }
    let _ = ST_ORIGINS.remove(&cookie);
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

/// A socket's two ends and sequence numbers, as the context holds them.
struct Ends {
    family: u32,
    /// Host byte order.
    local_port: u32,
    local_ip4: u32,
    local_ip6: [u32; 4],
    /// Network byte order, in the upper 16 bits on a little-endian machine.
    remote_port: u32,
    remote_ip4: u32,
    remote_ip6: [u32; 4],
    snd_nxt: u32,
    rcv_nxt: u32,
    netns_cookie: u64,
}

impl Ends {
    #[inline(always)]
    fn read(ctx: &SockOpsContext) -> Ends {
        let ops = ctx.ops;
        // Every field is read up front with a volatile load, before branching on the family.
        // Verifier: "dereference of modified ctx ptr R1 off=28 disallowed" when the loads sat in
        // the two branches, or were plain loads LLVM could sink into them: it merged them into one
        // load through a selected pointer, and sock_ops only allows 4-byte loads at a constant
        // offset from the context itself.
        // SAFETY: `ops` is the kernel's bpf_sock_ops context; these fields are readable for any
        // socket (the sequence numbers read as 0 on a request socket).
        unsafe {
            Ends {
                family: read_volatile(&(*ops).family),
                local_port: read_volatile(&(*ops).local_port),
                local_ip4: read_volatile(&(*ops).local_ip4),
                local_ip6: [
                    read_volatile(&(*ops).local_ip6[0]),
                    read_volatile(&(*ops).local_ip6[1]),
                    read_volatile(&(*ops).local_ip6[2]),
                    read_volatile(&(*ops).local_ip6[3]),
                ],
                remote_port: read_volatile(&(*ops).remote_port),
                remote_ip4: read_volatile(&(*ops).remote_ip4),
                remote_ip6: [
                    read_volatile(&(*ops).remote_ip6[0]),
                    read_volatile(&(*ops).remote_ip6[1]),
                    read_volatile(&(*ops).remote_ip6[2]),
                    read_volatile(&(*ops).remote_ip6[3]),
                ],
                snd_nxt: read_volatile(&(*ops).snd_nxt),
                rcv_nxt: read_volatile(&(*ops).rcv_nxt),
                // SAFETY: bpf_get_netns_cookie accepts a sock_ops context.
                netns_cookie: bpf_get_netns_cookie(ctx.as_ptr()),
            }
        }
    }

    /// This socket's own address (the client's, on the client's socket).
    #[inline(always)]
    fn local(&self) -> Option<Addr> {
        self.addr(self.local_ip4, self.local_ip6, self.local_port as u16)
    }

    /// The peer's address (the client's, on the accepted socket).
    #[inline(always)]
    fn remote(&self) -> Option<Addr> {
        self.addr(
            self.remote_ip4,
            self.remote_ip6,
            u32::from_be(self.remote_port) as u16,
        )
    }

    #[inline(always)]
    fn addr(&self, ip4: u32, ip6: [u32; 4], port: u16) -> Option<Addr> {
        if self.family == AF_INET {
            Some(Addr::v4(ip4.to_ne_bytes(), port))
        } else if self.family == AF_INET6 {
            Some(Addr::tuple_form(words_to_bytes(ip6), port))
        } else {
            None
        }
    }

    /// The bridge key of the client at `client` in this socket's namespace.
    #[inline(always)]
    fn key(&self, client: Option<Addr>, server_isn: u32) -> Option<TupleKey> {
        Some(TupleKey {
            client: client?,
            netns_cookie: self.netns_cookie,
            server_isn,
            _pad: 0,
        })
    }
}
