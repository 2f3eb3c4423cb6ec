//! Egress lockdown of an enrolled cgroup: every connect (TCP or UDP) that the enrolled programs do
//! not redirect, and every UDP send with an address (`cgroup/sendmsg4/6`), must go to a destination
//! in `ST_ALLOW_PORT` (that port) or `ST_ALLOW_ADDR` (any port), or to the agent's listener (where a
//! nested enrollment's programs sent it); anything else fails with `EPERM`, is counted, and is sent
//! to the agent on `ST_DENIALS` (dropped, still counted, when the ring is full).

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    },
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use snowtrail_common::{Addr, AllowAddrKey, AllowPortKey, COMM_LEN, Counter, Denial, PROTO_UDP};

use crate::connect::{ALLOW, REFUSE};
use crate::maps::{ST_ALLOW_ADDR, ST_ALLOW_PORT, ST_DENIALS, bump, settings};

const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const MAPPED_LOOPBACK4: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];

/// Allows `dst` or refuses it, recording the refusal.
#[inline(always)]
pub fn confine(dst: &Addr, protocol: u32) -> i32 {
    let Some(settings) = settings() else {
        return ALLOW;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == settings.agent_tgid {
        return ALLOW;
    }
    if dst.port == settings.listen_port && (dst.ip == MAPPED_LOOPBACK4 || dst.ip == LOOPBACK6) {
        return ALLOW;
    }
    let by_port = Key::new(
        16 + 128,
        AllowPortKey {
            port_be: dst.port.to_be_bytes(),
            ip: dst.ip,
            _pad: [0; 2],
        },
    );
    if ST_ALLOW_PORT.get(&by_port).is_some() {
        return ALLOW;
    }
    if ST_ALLOW_ADDR
        .get(&Key::new(128, AllowAddrKey { ip: dst.ip }))
        .is_some()
    {
        return ALLOW;
    }
    bump(Counter::LockdownDenied);
    if let Some(mut entry) = ST_DENIALS.reserve::<Denial>(0) {
        let uid_gid = bpf_get_current_uid_gid();
        entry.write(Denial {
            dst: *dst,
            // SAFETY: helpers without arguments, available to cgroup sock_addr programs.
            timestamp_ns: unsafe { bpf_ktime_get_ns() },
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            pid: pid_tgid as u32,
            tgid: (pid_tgid >> 32) as u32,
            uid: uid_gid as u32,
            protocol,
            comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        });
        entry.submit(0);
    }
    REFUSE
}

/// `cgroup/sendmsg4` on a locked-down cgroup: a UDP send to an address.
pub fn try_sendmsg4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel's bpf_sock_addr context; these fields are readable in sendmsg4.
    let (ip, port_be) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    confine(
        &Addr::v4(ip.to_ne_bytes(), u16::from_be(port_be as u16)),
        PROTO_UDP,
    )
}

/// `cgroup/sendmsg6` on a locked-down cgroup: a UDP send to an address.
pub fn try_sendmsg6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as above; one 4-byte load per word, each at its own constant offset.
    let (words, port_be) = unsafe {
        (
            [
                core::ptr::read_volatile(&(*sa).user_ip6[0]),
                core::ptr::read_volatile(&(*sa).user_ip6[1]),
                core::ptr::read_volatile(&(*sa).user_ip6[2]),
                core::ptr::read_volatile(&(*sa).user_ip6[3]),
            ],
            (*sa).user_port,
        )
    };
    let ip = crate::maps::words_to_bytes(words);
    confine(&Addr::v6(ip, u16::from_be(port_be as u16)), PROTO_UDP)
}
