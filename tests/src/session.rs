//! A workload session through the agent, as the end-to-end tests of results run it: the fake
//! Snowflake (TLS, its own CA) on a loopback address, a daemon trusting that CA, and connector
//! 5.2.0 run under `snowtrail exec` with the account host resolved to the fake.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::fake_snowflake::drivers::{self, CA_VARS, Driver};
use crate::fake_snowflake::{FakeOptions, FakeSnowflake};
use crate::{Daemon, DaemonOptions, unique_port};

/// The account host the sessions connect to.
pub const ACCOUNT_HOST: &str = "xy12345.snowflakecomputing.com";
/// The password the sessions log in with.
pub const PASSWORD: &str = "s3cret-pa55word";

/// A fake Snowflake and a daemon that trusts it.
pub struct Setup {
    /// The daemon.
    pub daemon: Daemon,
    /// The fake Snowflake.
    pub fake: FakeSnowflake,
    /// Scratch directory (fake CA, hosts file, policy file).
    pub dir: tempfile::TempDir,
}

/// Starts the fake on `ip:443` and a daemon on a port from `port_base`; `extra_top` is written
/// into the daemon's configuration after the upstream trust (its own top-level keys first, then
/// sections), `policy` into a rule file the daemon enforces.
pub fn setup(
    name: &str,
    ip: [u8; 4],
    port_base: u16,
    policy: Option<&str>,
    extra: impl FnOnce(&Path) -> String,
) -> anyhow::Result<Setup> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("snowtrail-{name}-"))
        .tempdir()?;
    let fake = FakeSnowflake::start(FakeOptions {
        addr: SocketAddr::from((ip, 443)),
        tls: true,
        hosts: vec![
            ACCOUNT_HOST.to_owned(),
            "*.snowflakecomputing.com".to_owned(),
        ],
        ca_dir: dir.path().join("fake-ca"),
        ..FakeOptions::default()
    })?;
    let mut extra_top = extra(dir.path());
    extra_top.push_str(&format!(
        "\n[tls]\nupstream_extra_roots = [{:?}]\n",
        fake.ca_pem_path().display().to_string()
    ));
    if let Some(p) = policy {
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, p)?;
        extra_top.push_str(&format!(
            "[policy]\nfile = {:?}\n",
            policy_path.display().to_string()
        ));
    }
    let opts = DaemonOptions {
        extra_top,
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(name, unique_port(port_base), &opts)?;
    Ok(Setup { daemon, fake, dir })
}

/// Runs one connector 5.2.0 session of `statements` as `identity` under `snowtrail exec`; returns
/// the step lines the session script printed.
pub fn run_session(s: &Setup, identity: &str, statements: &[&str]) -> anyhow::Result<Vec<Value>> {
    let hosts = drivers::write_hosts_file(s.dir.path(), s.fake.addr().ip(), &[ACCOUNT_HOST])?;
    let mut args = vec![
        "--host".to_owned(),
        ACCOUNT_HOST.to_owned(),
        "--password".to_owned(),
        PASSWORD.to_owned(),
    ];
    args.extend(statements.iter().map(|s| (*s).to_owned()));
    let inner = drivers::session_command(Driver::Py5, &hosts, Path::new("/nonexistent"), &args)?;
    let mut cmd = Command::new(crate::snowtrail_bin());
    cmd.arg("--control-socket")
        .arg(&s.daemon.socket)
        .args(["exec", "--identity", identity, "--"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .stdin(std::process::Stdio::null());
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    for v in CA_VARS {
        cmd.env_remove(v);
    }
    let out = cmd.output().context("cannot run snowtrail exec")?;
    let lines = drivers::json_lines(&out.stdout);
    if lines.is_empty() {
        bail!(
            "the driver printed nothing ({}):\n{}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            s.daemon.logs()
        );
    }
    Ok(lines)
}

/// The step line of statement `sql`.
pub fn statement<'a>(lines: &'a [Value], sql: &str) -> anyhow::Result<&'a Value> {
    lines
        .iter()
        .find(|l| l["step"] == "statement" && l["sql"] == sql)
        .with_context(|| format!("no output for {sql:?} in {lines:#?}"))
}

/// The rows the driver returned for statement `sql`.
pub fn rows<'a>(lines: &'a [Value], sql: &str) -> anyhow::Result<&'a Vec<Value>> {
    let st = statement(lines, sql)?;
    st["rows"]
        .as_array()
        .with_context(|| format!("no rows for {sql:?}: {st}"))
}
