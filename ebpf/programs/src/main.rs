//! snowtrail's kernel half: the cgroup programs that redirect enrolled TCP connections to the agent's
//! listener and let the agent learn where each connection was going.
//!
//! | program | attached to | job |
//! |---|---|---|
//! | `st_connect4`, `st_connect6` | enrolled cgroups | rewrite intercepted connects to the listener, record the origin |
//! | `st_guard4`, `st_guard6` | each enrolled cgroup's parent | send connects of cgroups not yet classified to the listener, marked guarded |
//! | `st_locked4`, `st_locked6`, `st_sendmsg4`, `st_sendmsg6` | locked-down enrolled cgroups | as `st_connect4/6`, and refuse connects and UDP sends to destinations not allowed |
//! | `st_sockops` | enrolled cgroups, their parents, the agent's cgroup | client side: key the origin by the client's address once established; agent side: hand it to the accepted socket; forget both on close |
//! | `st_peername4`, `st_peername6` | enrolled cgroups, their parents | `getpeername()` shows the original destination |
//!
//! Each entry point is a thin wrapper around `try_<name>` in its module. The programs keep no state of
//! their own beyond the maps in [`maps`]; the agent fills `ST_SETTINGS` and `ST_PORTS` before attaching.
#![no_std]
#![no_main]

mod connect;
mod lockdown;
mod maps;
mod peername;
mod sockops;

use aya_ebpf::{
    macros::{cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockOpsContext},
};

use connect::Mode;

/// `cgroup/connect4`: redirects intercepted IPv4 TCP connects.
#[cgroup_sock_addr(connect4)]
pub fn st_connect4(ctx: SockAddrContext) -> i32 {
    connect::try_connect4(&ctx, Mode::Enrolled)
}

/// `cgroup/connect6`: redirects intercepted IPv6 (and v4-mapped) TCP connects.
#[cgroup_sock_addr(connect6)]
pub fn st_connect6(ctx: SockAddrContext) -> i32 {
    connect::try_connect6(&ctx, Mode::Enrolled)
}

/// `cgroup/connect4` on an enrolled cgroup's parent: guards IPv4 connects of unclassified cgroups.
#[cgroup_sock_addr(connect4)]
pub fn st_guard4(ctx: SockAddrContext) -> i32 {
    connect::try_connect4(&ctx, Mode::Guard)
}

/// `cgroup/connect6` on an enrolled cgroup's parent: guards IPv6 connects of unclassified cgroups.
#[cgroup_sock_addr(connect6)]
pub fn st_guard6(ctx: SockAddrContext) -> i32 {
    connect::try_connect6(&ctx, Mode::Guard)
}

/// `cgroup/connect4` on a locked-down enrolled cgroup: redirects intercepted IPv4 TCP connects and
/// refuses every other connect to a destination not allowed.
#[cgroup_sock_addr(connect4)]
pub fn st_locked4(ctx: SockAddrContext) -> i32 {
    connect::try_connect4(&ctx, Mode::Locked)
}

/// `cgroup/connect6` on a locked-down enrolled cgroup: as `st_locked4`, for IPv6.
#[cgroup_sock_addr(connect6)]
pub fn st_locked6(ctx: SockAddrContext) -> i32 {
    connect::try_connect6(&ctx, Mode::Locked)
}

/// `cgroup/sendmsg4` on a locked-down enrolled cgroup: refuses UDP sends not allowed.
#[cgroup_sock_addr(sendmsg4)]
pub fn st_sendmsg4(ctx: SockAddrContext) -> i32 {
    lockdown::try_sendmsg4(&ctx)
}

/// `cgroup/sendmsg6` on a locked-down enrolled cgroup: refuses UDP sends not allowed.
#[cgroup_sock_addr(sendmsg6)]
pub fn st_sendmsg6(ctx: SockAddrContext) -> i32 {
    lockdown::try_sendmsg6(&ctx)
}

/// `sockops`: bridges origins from the client's socket to the accepted one, removes them when closed.
#[sock_ops]
pub fn st_sockops(ctx: SockOpsContext) -> u32 {
    sockops::try_sockops(&ctx)
}

/// `cgroup/getpeername4`: reports the original IPv4 destination.
#[cgroup_sock_addr(getpeername4)]
pub fn st_peername4(ctx: SockAddrContext) -> i32 {
    peername::try_peername4(&ctx)
}

/// `cgroup/getpeername6`: reports the original IPv6 (or v4-mapped) destination.
#[cgroup_sock_addr(getpeername6)]
pub fn st_peername6(ctx: SockAddrContext) -> i32 {
    peername::try_peername6(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
