//! Passthrough bulk transfer: one TLS stream from a server whose name is not Snowflake's, received
//! directly and through the agent (the client enrolled, its connection to port 443 redirected; the
//! agent reads the ClientHello, sees a host it does not intercept, checks once that the server
//! holds a certificate for that name, and splices the bytes). Reports
//! the throughput of each, their ratio, and the agent's CPU seconds per GB carried (user plus
//! system time of the daemon, from `/proc/<pid>/stat`, before and after its runs).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::procs::{Daemon, DaemonSpec, Proc, cpu_seconds, wait_listening};
use super::{Ctx, Row, build_bin, capture, last_json, num};
use crate::util::step;

const SECTION: &str = "passthrough";
/// The bulk server: port 443 so the agent sees the connection, a name it does not intercept.
const SERVER: &str = "127.0.0.62:443";
const LISTEN_PORT: u16 = 18_945;

/// Runs the section.
pub fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let loadgen = build_bin(ctx, "loadgen")?;
    let snowtrail = build_bin(ctx, "snowtrail")?;
    let dir = &ctx.scratch;
    let server: SocketAddr = SERVER.parse()?;
    let ca_dir = dir.join("bulk-ca");
    let mut bulk = Proc::spawn(
        "loadgen bulk-server",
        Command::new(&loadgen)
            .args(["bulk-server", "--listen", SERVER, "--ca-dir"])
            .arg(&ca_dir),
        Some(&dir.join("bulk-server.log")),
    )?;
    bulk.json_line()?;
    wait_listening(server, Duration::from_secs(10))?;
    let daemon = Daemon::start(DaemonSpec {
        bin: &snowtrail,
        dir: dir.join("daemon"),
        listen_port: LISTEN_PORT,
        // The agent passes a connection through only to a server that proves the name it was
        // asked for, so it must trust the bulk server's CA as a workload's upstream would.
        extra: format!(
            "[tls]\nupstream_extra_roots = [{:?}]\n",
            ca_dir.join("ca.pem").display().to_string()
        ),
    })?;
    let bytes: u64 = if ctx.quick { 1 << 30 } else { 4 << 30 };
    let rounds = if ctx.quick { 2 } else { 3 };
    let args = vec![
        "bulk".to_owned(),
        "--connect".into(),
        SERVER.into(),
        "--ca".into(),
        ca_dir.join("ca.pem").display().to_string(),
        "--bytes".into(),
        bytes.to_string(),
    ];
    let mut direct = Vec::new();
    let mut through = Vec::new();
    let mut agent_cpu = 0.0;
    for round in 1..=rounds {
        step(&format!(
            "round {round}/{rounds}: {} GiB direct, then through the agent",
            bytes >> 30
        ));
        direct.push(receive(Command::new(&loadgen).args(&args))?);
        let before = cpu_seconds(daemon.pid())?;
        through.push(receive(&mut daemon.exec(&loadgen, &args))?);
        agent_cpu += cpu_seconds(daemon.pid())? - before;
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0_f64, f64::max);
    let (d, t) = (best(&direct), best(&through));
    let gb = (bytes * rounds) as f64 / 1e9;
    let workload = format!("one TLS stream of {} GiB, best of {rounds}", bytes >> 30);
    Ok(vec![
        Row::new(SECTION, "direct", d, "MB/s", workload.clone()),
        Row::new(
            SECTION,
            "through the agent (passthrough)",
            t,
            "MB/s",
            format!("{workload}; client enrolled, SNI not intercepted"),
        ),
        Row::new(
            SECTION,
            "ratio agent/direct",
            t / d,
            "x",
            "higher is better",
        ),
        Row::new(
            SECTION,
            "agent CPU per GB",
            agent_cpu / gb,
            "s/GB",
            format!("daemon utime+stime over {gb:.1} GB passed through"),
        ),
    ])
}

/// Runs one `loadgen bulk` and returns its MB/s.
fn receive(cmd: &mut Command) -> anyhow::Result<f64> {
    let report = last_json(&capture(cmd)?)?;
    num(&report, "mb_per_s")
}
