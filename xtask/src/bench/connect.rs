//! What `connect()` costs with the agent's programs attached: `loadgen connect` times nonblocking
//! connects to loopback (each socket reset at once) from outside any enrolled cgroup (no program
//! runs), and under `snowtrail exec` (the `cgroup/connect4` program runs on every call) to a port
//! the agent does not redirect and to port 443, which it redirects to its listener.
//!
//! The listeners (a sink for the unredirected port, the agent for the redirected one) run outside
//! the enrolled cgroup, so only the client's side of the hooks is in the figure. The same two
//! enrolled runs again under egress lockdown (`redirect.lockdown`, the sink in
//! `redirect.lockdown_allow`): a connect not redirected then also looks up the allow-list tries.

use std::process::Command;
use std::time::Duration;

use super::procs::{Daemon, DaemonSpec, Proc, wait_listening};
use super::{Ctx, Row, build_bin, capture, last_json, num};
use crate::util::step;

const SECTION: &str = "connect";
/// A port the agent does not redirect, with a sink listening.
const SINK: &str = "127.0.0.63:9443";
/// The port the agent redirects (nothing listens there; the agent takes the connections).
const REDIRECTED: &str = "127.0.0.63:443";
const LISTEN_PORT: u16 = 18_946;

/// Runs the section.
pub fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let loadgen = build_bin(ctx, "loadgen")?;
    let snowtrail = build_bin(ctx, "snowtrail")?;
    let dir = &ctx.scratch;
    let mut sink = Proc::spawn(
        "loadgen sink",
        Command::new(&loadgen).args(["sink", "--listen", SINK]),
        Some(&dir.join("sink.log")),
    )?;
    sink.json_line()?;
    wait_listening(SINK.parse()?, Duration::from_secs(10))?;
    let daemon = Daemon::start(DaemonSpec {
        bin: &snowtrail,
        dir: dir.join("daemon"),
        listen_port: LISTEN_PORT,
        extra: String::new(),
    })?;
    let n: u64 = if ctx.quick { 20_000 } else { 100_000 };
    let args = |addr: &str| -> Vec<String> {
        vec![
            "connect".into(),
            "--addr".into(),
            addr.into(),
            "--n".into(),
            n.to_string(),
        ]
    };
    step(&format!("{n} connects: not enrolled"));
    let bare = last_json(&capture(Command::new(&loadgen).args(args(SINK)))?)?;
    step(&format!("{n} connects: enrolled, to a port not redirected"));
    let unmatched = last_json(&capture(&mut daemon.exec(&loadgen, &args(SINK)))?)?;
    step(&format!("{n} connects: enrolled, redirected to the agent"));
    let redirected = last_json(&capture(&mut daemon.exec(&loadgen, &args(REDIRECTED)))?)?;
    drop(daemon);
    let locked_daemon = Daemon::start(DaemonSpec {
        bin: &snowtrail,
        dir: dir.join("daemon-locked"),
        listen_port: LISTEN_PORT,
        extra: format!("lockdown = true\nlockdown_allow = [{SINK:?}]\n"),
    })?;
    step(&format!(
        "{n} connects: locked down, to an allowed destination"
    ));
    let locked_allowed = last_json(&capture(&mut locked_daemon.exec(&loadgen, &args(SINK)))?)?;
    step(&format!(
        "{n} connects: locked down, redirected to the agent"
    ));
    let locked_redirected = last_json(&capture(
        &mut locked_daemon.exec(&loadgen, &args(REDIRECTED)),
    )?)?;
    drop(locked_daemon);
    let base = num(&bare, "ns_per_connect")?;
    let mut rows = Vec::new();
    for (name, r, note) in [
        (
            "programs not attached",
            &bare,
            "process not enrolled; mean time in connect()",
        ),
        (
            "attached, not redirected",
            &unmatched,
            "enrolled; port not intercepted",
        ),
        (
            "attached, redirected",
            &redirected,
            "enrolled; port 443, to the agent's listener",
        ),
        (
            "locked down, allowed",
            &locked_allowed,
            "enrolled with lockdown; port not intercepted, destination in lockdown_allow",
        ),
        (
            "locked down, redirected",
            &locked_redirected,
            "enrolled with lockdown; port 443, to the agent's listener",
        ),
    ] {
        let ns = num(r, "ns_per_connect")?;
        let note = if name == "programs not attached" {
            format!("{note}; p50 {:.0} ns", num(r, "p50_ns")?)
        } else {
            format!(
                "{note}; {:+.0} ns over not attached, p50 {:.0} ns",
                ns - base,
                num(r, "p50_ns")?
            )
        };
        rows.push(
            Row::new(SECTION, name, ns, "ns/connect", note)
                .with("p50_ns", num(r, "p50_ns")?)
                .with("failures", num(r, "failures")?),
        );
    }
    Ok(rows)
}
