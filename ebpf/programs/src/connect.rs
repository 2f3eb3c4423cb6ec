//! `cgroup/connect4` and `cgroup/connect6`: a TCP connect() from an enrolled cgroup to an intercepted
//! port is rewritten to the agent's listener, after its origin is stored by socket cookie.
//!
//! Not intercepted: other protocols, other ports, the agent's own process, and anything while the
//! agent has not enabled the programs. Refused (connect() fails with `EPERM`): sockets of another
//! network namespace, and connects whose origin could not be stored (the agent would have no record).
//!
//! The same programs in [`Mode::Guard`] sit on the parent of each enrolled cgroup and see every
//! cgroup below it. A connect that the enrolled programs already rewrote reaches them with the
//! listener's port, which is not intercepted, and passes. Of the rest, connects from cgroups in
//! `ST_FOREIGN` (classified by the agent as enrolled by nothing) and from other network namespaces
//! pass; every other one goes to the agent marked [`ORIGIN_GUARDED`], so a cgroup made again at an
//! enrolled path (a restarted unit) is never without the agent between its first connect and the
//! moment its own programs are attached.

use core::ptr::{addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_ANY,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
            bpf_ktime_get_ns,
        },
    },
    programs::SockAddrContext,
};
use snowtrail_common::{Addr, COMM_LEN, Counter, ORIGIN_GUARDED, Origin, Settings};

use crate::maps::{
    ST_FOREIGN, ST_ORIGINS, ST_PORTS, bump, bytes_to_words, settings, words_to_bytes,
};

/// Let the connect() proceed.
pub const ALLOW: i32 = 1;
/// Fail the connect() with `EPERM`.
pub const REFUSE: i32 = 0;

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;

const LOOPBACK4: [u8; 4] = [127, 0, 0, 1];
const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const MAPPED_LOOPBACK4: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];

/// Where the program is attached.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On an enrolled cgroup: every intercepted connect goes to the agent.
    Enrolled,
    /// On an enrolled cgroup's parent: connects of cgroups not yet classified go to the agent.
    Guard,
    /// On a locked-down enrolled cgroup: as [`Mode::Enrolled`], and every other connect must go
    /// to an allowed destination (see `lockdown.rs`).
    Locked,
}

/// What to do with an intercepted connect() once its origin has been considered.
enum Step {
    /// Leave the destination alone.
    Pass,
    /// Fail the connect().
    Refuse,
    /// The origin is stored; rewrite the destination to the listener.
    Redirect,
}

pub fn try_connect4(ctx: &SockAddrContext, mode: Mode) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel's bpf_sock_addr context; these fields are readable in connect4.
    let (ty, protocol, ip, port_be) =
        unsafe { ((*sa).type_, (*sa).protocol, (*sa).user_ip4, (*sa).user_port) };
    let Some((settings, port)) = intercepted(ty, protocol, port_be) else {
        if mode == Mode::Locked {
            let dst = Addr::v4(ip.to_ne_bytes(), u16::from_be(port_be as u16));
            return crate::lockdown::confine(&dst, protocol);
        }
        return ALLOW;
    };
    match record(ctx, settings, Addr::v4(ip.to_ne_bytes(), port), mode) {
        Step::Pass => ALLOW,
        Step::Refuse => REFUSE,
        Step::Redirect => {
            // SAFETY: connect4 may write user_ip4 and user_port (4-byte stores).
            unsafe {
                write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(LOOPBACK4));
                write_volatile(
                    addr_of_mut!((*sa).user_port),
                    u32::from(settings.listen_port.to_be()),
                );
            }
            bump(Counter::Redirected);
            ALLOW
        }
    }
}

pub fn try_connect6(ctx: &SockAddrContext, mode: Mode) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel's bpf_sock_addr context; these fields are readable in connect6.
    let (ty, protocol, port_be) = unsafe { ((*sa).type_, (*sa).protocol, (*sa).user_port) };
    // SAFETY: as above; one 4-byte load per word, each at its own constant offset.
    let words = unsafe {
        [
            read_volatile(&(*sa).user_ip6[0]),
            read_volatile(&(*sa).user_ip6[1]),
            read_volatile(&(*sa).user_ip6[2]),
            read_volatile(&(*sa).user_ip6[3]),
        ]
    };
    let ip = words_to_bytes(words);
    let Some((settings, port)) = intercepted(ty, protocol, port_be) else {
        if mode == Mode::Locked {
            let dst = Addr::v6(ip, u16::from_be(port_be as u16));
            return crate::lockdown::confine(&dst, protocol);
        }
        return ALLOW;
    };
    let original = Addr::v6(ip, port);
    // A dual-stack socket connecting to `::ffff:a.b.c.d` must stay on IPv4: send it to the mapped
    // IPv4 loopback. Every other IPv6 destination goes to `::1`.
    let target = if original.is_v4_mapped() {
        MAPPED_LOOPBACK4
    } else {
        LOOPBACK6
    };
    match record(ctx, settings, original, mode) {
        Step::Pass => ALLOW,
        Step::Refuse => REFUSE,
        Step::Redirect => {
            let t = bytes_to_words(&target);
            // Verifier: "dereference of modified ctx ptr" when user_ip6 is written as an array
            // (LLVM turns it into stores through a computed pointer). One volatile u32 store per
            // word, each at its own constant offset.
            // SAFETY: connect6 may write user_ip6 and user_port (4-byte stores).
            unsafe {
                write_volatile(&mut (*sa).user_ip6[0], t[0]);
                write_volatile(&mut (*sa).user_ip6[1], t[1]);
                write_volatile(&mut (*sa).user_ip6[2], t[2]);
                write_volatile(&mut (*sa).user_ip6[3], t[3]);
                write_volatile(
                    addr_of_mut!((*sa).user_port),
                    u32::from(settings.listen_port.to_be()),
                );
            }
            bump(Counter::Redirected);
            ALLOW
        }
    }
}

/// The settings and host-order port when this connect() is TCP to an intercepted port and the agent
/// has enabled the programs.
#[inline(always)]
fn intercepted(ty: u32, protocol: u32, port_be: u32) -> Option<(&'static Settings, u16)> {
    if ty != SOCK_STREAM || protocol != IPPROTO_TCP {
        return None;
    }
    // user_port holds the network-order port in its low 16 bits.
    let port = u16::from_be(port_be as u16);
    ST_PORTS.get_ptr(port)?;
    let settings = settings()?;
    Some((settings, port))
}

/// Applies the agent and namespace rules, then stores the origin of an intercepted connect().
#[inline(always)]
fn record(ctx: &SockAddrContext, settings: &Settings, original_dst: Addr, mode: Mode) -> Step {
    bump(Counter::Seen);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == settings.agent_tgid {
        return Step::Pass;
    }
    // SAFETY: both helpers accept a sock_addr context.
    let (netns_cookie, socket_cookie) = unsafe {
        (
            bpf_get_netns_cookie(ctx.as_ptr()),
            bpf_get_socket_cookie(ctx.as_ptr()),
        )
    };
    if netns_cookie != settings.agent_netns_cookie {
        if mode == Mode::Guard {
            // Not the agent's to decide: no enrolled cgroup lives in another namespace.
            return Step::Pass;
        }
        // 127.0.0.1 would mean that namespace's own loopback, where no agent listens.
        bump(Counter::RefusedNetns);
        return Step::Refuse;
    }
    // SAFETY: a helper without arguments, available to cgroup sock_addr programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let flags = match mode {
        Mode::Enrolled | Mode::Locked => 0,
        Mode::Guard => {
            if ST_FOREIGN.get_ptr(cgroup_id).is_some() {
                return Step::Pass;
            }
            bump(Counter::Guarded);
            ORIGIN_GUARDED
        }
    };
    let uid_gid = bpf_get_current_uid_gid();
    let origin = Origin {
        original_dst,
        // SAFETY: helpers without arguments, available to cgroup sock_addr programs.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id,
        netns_cookie,
        socket_cookie,
        pid: pid_tgid as u32,
        tgid,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        flags,
        server_isn: 0,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    if ST_ORIGINS
        .insert(socket_cookie, origin, u64::from(BPF_ANY))
        .is_err()
    {
        // Fail closed: a redirected connection without an origin would be refused by the agent
        // anyway, and never audited.
        bump(Counter::StoreFailed);
        return Step::Refuse;
    }
    Step::Redirect
}
