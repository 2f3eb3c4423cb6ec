//! `loadgen connect` and `loadgen sink`: what one `connect()` costs.
//!
//! `connect` times `--n` nonblocking `connect()` calls to a loopback address, each on a fresh
//! socket closed at once with a reset (`SO_LINGER` 0, so no `TIME_WAIT` exhausts the ports). Run
//! inside an enrolled cgroup, every call passes through the agent's `cgroup/connect4` program; run
//! outside, none does. `sink` is the listener those connections reach when they are not
//! redirected: it accepts and drops them as fast as they come.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use anyhow::Context as _;
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, connect as sys_connect, setsockopt, socket,
    sockopt,
};
use std::os::fd::AsRawFd as _;

use super::percentile_us;

/// Options of `loadgen connect`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// The IPv4 address and port to connect to.
    #[arg(long)]
    addr: SocketAddrV4,
    /// How many connects to time.
    #[arg(long, default_value_t = 100_000)]
    n: u64,
}

/// What `connect` measured.
#[derive(Debug, serde::Serialize)]
pub struct ConnectReport {
    n: u64,
    /// Mean time inside `connect()`, in nanoseconds.
    ns_per_connect: f64,
    /// Median time inside `connect()`, in nanoseconds.
    p50_ns: f64,
    /// Mean time of a whole iteration (socket, connect, close), in nanoseconds.
    ns_per_iteration: f64,
    /// Calls that neither connected nor went in progress.
    failures: u64,
}

/// Options of `loadgen sink`.
#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// Where to listen.
    #[arg(long)]
    listen: SocketAddr,
}

/// Times the connects.
pub fn run(args: &ConnectArgs) -> anyhow::Result<ConnectReport> {
    anyhow::ensure!(args.n > 0, "--n must be positive");
    let addr = SockaddrIn::from(args.addr);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let mut samples = Vec::with_capacity(usize::try_from(args.n).unwrap_or(0));
    let mut failures = 0u64;
    let mut in_connect = 0u128;
    let started = Instant::now();
    for _ in 0..args.n {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .context("socket()")?;
        setsockopt(&fd, sockopt::Linger, &linger).context("SO_LINGER")?;
        let t = Instant::now();
        let r = sys_connect(fd.as_raw_fd(), &addr);
        let ns = t.elapsed().as_nanos();
        in_connect += ns;
        samples.push(u64::try_from(ns).unwrap_or(u64::MAX));
        match r {
            Ok(()) | Err(Errno::EINPROGRESS) => {}
            Err(_) => failures += 1,
        }
        drop(fd);
    }
    let total = started.elapsed().as_nanos();
    samples.sort_unstable();
    let n = args.n as f64;
    Ok(ConnectReport {
        n: args.n,
        ns_per_connect: in_connect as f64 / n,
        p50_ns: percentile_us(&samples, 50.0) * 1000.0,
        ns_per_iteration: total as f64 / n,
        failures,
    })
}

/// Accepts and drops connections until killed.
pub async fn sink(args: &SinkArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
        "{}",
        serde_json::json!({ "listening": args.listen.to_string() })
    );
    loop {
        // Errors (a connection reset before it was accepted) are the normal case here.
        let _ = listener.accept().await;
    }
}
