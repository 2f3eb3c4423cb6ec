//! The agent's memory: resident set (`VmRSS` of `/proc/<pid>/status`) of a fresh daemon at rest,
//! and while it holds 10,000 idle intercepted connections (1,000 with `--quick`). `loadgen hold`
//! runs enrolled, opens the connections to the fake Snowflake through the agent (each carries one
//! statement, so each is a live intercepted connection that has been upstream), reports, and keeps
//! them until the bench closes its standard input. The daemon runs with the packaged unit's
//! open-files limit, which the table shows.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;

use super::procs::{
    Daemon, DaemonSpec, Proc, hosts_file, lean_fake, nofile_limit, rss_mib, with_hosts,
};
use super::{Ctx, Row, build_bin, num};
use crate::util::step;

const SECTION: &str = "memory";
const HOST: &str = "xy12345.snowflakecomputing.com";
const FAKE_IP: &str = "127.0.0.64";
const LISTEN_PORT: u16 = 18_947;
/// How long the daemon settles before a reading.
const SETTLE: Duration = Duration::from_secs(2);

/// Runs the section.
pub fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let loadgen = build_bin(ctx, "loadgen")?;
    let fake_bin = build_bin(ctx, "fake-snowflake")?;
    let snowtrail = build_bin(ctx, "snowtrail")?;
    let dir = &ctx.scratch;
    let wanted: usize = if ctx.quick { 1_000 } else { 10_000 };
    let fake_addr: SocketAddr = format!("{FAKE_IP}:443").parse()?;
    let fake_ca_dir = dir.join("fake-ca");
    let _fake = lean_fake(
        &fake_bin,
        fake_addr,
        &fake_ca_dir,
        wanted + 1_000,
        &dir.join("fake.log"),
    )?;
    let daemon = Daemon::start(DaemonSpec {
        bin: &snowtrail,
        dir: dir.join("daemon"),
        listen_port: LISTEN_PORT,
        extra: format!(
            "[tls]\nupstream_extra_roots = [{:?}]\n",
            fake_ca_dir.join("ca.pem").display().to_string()
        ),
    })?;
    std::thread::sleep(SETTLE);
    let idle = rss_mib(daemon.pid())?;
    let nofile = nofile_limit(daemon.pid())?;
    let n = connections_within(wanted, nofile);
    if n < wanted {
        step(&format!(
            "the daemon may open {nofile} files (a hard limit this machine does not let root \
             raise): holding {n} connections, not {wanted}"
        ));
    }
    step(&format!(
        "idle RSS {idle:.1} MiB; opening {n} intercepted connections"
    ));
    let hosts = hosts_file(dir, FAKE_IP, &[HOST])?;
    let args = vec![
        "hold".to_owned(),
        "--connect".into(),
        format!("{HOST}:443"),
        "--host".into(),
        HOST.into(),
        "--ca".into(),
        daemon.state_dir.join("ca.pem").display().to_string(),
        "--connections".into(),
        n.to_string(),
    ];
    let mut cmd = daemon.exec_command(&with_hosts(&hosts, &loadgen, &args));
    let (mut hold, stdin) = Proc::spawn_piped("loadgen hold", &mut cmd)?;
    let report = hold.json_line().context("loadgen hold")?;
    let held = num(&report, "held")?;
    anyhow::ensure!(
        held as usize == n,
        "only {held} of {n} connections opened: {report}"
    );
    std::thread::sleep(SETTLE);
    let busy = rss_mib(daemon.pid())?;
    step(&format!(
        "RSS {busy:.1} MiB holding {n} connections; releasing them"
    ));
    drop(stdin);
    let _ = hold.wait(Duration::from_secs(60));
    let per_conn_kib = (busy - idle) * 1024.0 / n as f64;
    let capped = if n < wanted {
        format!(" (not {wanted}: open-files limit {nofile})")
    } else {
        String::new()
    };
    Ok(vec![
        Row::new(
            SECTION,
            "agent RSS idle",
            idle,
            "MiB",
            format!("fresh daemon, audit on, after {}s", SETTLE.as_secs()),
        ),
        Row::new(
            SECTION,
            format!("agent RSS, {n} idle connections"),
            busy,
            "MiB",
            format!(
                "intercepted (TLS both sides, h1), one statement each{capped}; open-files limit {nofile}"
            ),
        ),
        Row::new(
            SECTION,
            "agent memory per connection",
            per_conn_kib,
            "KiB",
            "(held - idle) / connections",
        ),
    ])
}

/// Files the daemon keeps besides its connections (listeners, journal, Parquet, control).
const SPARE_FILES: u64 = 256;

/// How many intercepted connections fit in an open-files limit: each takes one descriptor in the
/// daemon (the client's); the upstream connections are shared, a few per destination, and fit in
/// the spare files.
pub fn connections_within(wanted: usize, nofile: u64) -> usize {
    let fit = nofile.saturating_sub(SPARE_FILES);
    wanted.min(usize::try_from(fit).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_in_the_open_files_limit() {
        assert_eq!(connections_within(10_000, 65_536), 10_000);
        assert_eq!(connections_within(10_000, 20_000), 10_000);
        assert_eq!(connections_within(30_000, 20_000), 19_744);
        assert_eq!(connections_within(1_000, 100), 0);
    }
}
