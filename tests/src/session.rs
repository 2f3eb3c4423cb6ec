//! A workload session through the agent, as the end-to-end tests of results run it: the fake
//! Snowflake (TLS, its own CA) on a loopback address, a daemon trusting that CA, and connector
//! 5.2.0 run under `snowtrail exec` with the account host resolved to the fake.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::fake_snowflake::drivers::{self, Driver};
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
    /// The host names the sessions resolve to the fake: the account host, and the storage host
    /// when the fake serves one.
    pub hosts: Vec<String>,
}

impl Setup {
    /// The rule file the daemon enforces (written when `setup` was given a policy).
    pub fn policy_path(&self) -> std::path::PathBuf {
        self.dir.path().join("policy.toml")
    }
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
    setup_with(name, ip, port_base, |_| {}, policy, extra)
}

/// As [`setup`], with the fake's options adjusted by `fake` first (a storage host, a password it
/// refuses...). The policy file is re-read every 200 ms, so that a test sees a rewrite quickly.
pub fn setup_with(
    name: &str,
    ip: [u8; 4],
    port_base: u16,
    fake: impl FnOnce(&mut FakeOptions),
    policy: Option<&str>,
    extra: impl FnOnce(&Path) -> String,
) -> anyhow::Result<Setup> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("snowtrail-{name}-"))
        .tempdir()?;
    let mut opts = FakeOptions {
        addr: SocketAddr::from((ip, 443)),
        tls: true,
        hosts: vec![
            ACCOUNT_HOST.to_owned(),
            "*.snowflakecomputing.com".to_owned(),
        ],
        ca_dir: dir.path().join("fake-ca"),
        ..FakeOptions::default()
    };
    fake(&mut opts);
    let mut hosts = vec![ACCOUNT_HOST.to_owned()];
    if let Some(storage) = &opts.storage_host {
        if !opts.hosts.contains(storage) {
            opts.hosts.push(storage.clone());
        }
        hosts.push(storage.clone());
    }
    let fake = FakeSnowflake::start(opts)?;
    let mut extra_top = extra(dir.path());
    extra_top.push_str(&format!(
        "\n[tls]\nupstream_extra_roots = [{:?}]\n",
        fake.ca_pem_path().display().to_string()
    ));
    if let Some(p) = policy {
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, p)?;
        extra_top.push_str(&format!(
            "[policy]\nfile = {:?}\npoll_ms = 200\n",
            policy_path.display().to_string()
        ));
    }
    let opts = DaemonOptions {
        extra_top,
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(name, unique_port(port_base), &opts)?;
    Ok(Setup {
        daemon,
        fake,
        dir,
        hosts,
    })
}

/// The session script's arguments: the account host, the password, then the statements.
pub fn session_args(statements: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--host".to_owned(),
        ACCOUNT_HOST.to_owned(),
        "--password".to_owned(),
        PASSWORD.to_owned(),
    ];
    args.extend(statements.iter().map(|s| (*s).to_owned()));
    args
}

/// A hosts file resolving the setup's host names to the fake.
pub fn hosts_file(s: &Setup) -> anyhow::Result<std::path::PathBuf> {
    let names: Vec<&str> = s.hosts.iter().map(String::as_str).collect();
    drivers::write_hosts_file(s.dir.path(), s.fake.addr().ip(), &names)
}

/// A `driver` session of `statements` under `snowtrail exec --identity <identity>` with `labels`
/// (`key=value`); the driver trusts only what exec gives it, as on a clean host.
pub fn exec_session(
    s: &Setup,
    driver: Driver,
    identity: &str,
    labels: &[&str],
    statements: &[&str],
) -> anyhow::Result<Command> {
    let inner = drivers::session_command(
        driver,
        &hosts_file(s)?,
        Path::new("/nonexistent"),
        &session_args(statements),
    )?;
    Ok(s.daemon.exec_command_labelled(identity, labels, &inner))
}

/// The step lines a session printed; fails with its output and the daemon's log when there are
/// none (the driver failed before its first statement).
pub fn output_lines(s: &Setup, driver: Driver, out: &Output) -> anyhow::Result<Vec<Value>> {
    let lines = drivers::json_lines(&out.stdout);
    if lines.is_empty() {
        bail!(
            "{} printed nothing ({}):\n{}\n{}\n{}",
            driver.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            s.daemon.logs()
        );
    }
    Ok(lines)
}

/// Runs a [`exec_session`] to its end and returns its step lines.
pub fn run_driver(
    s: &Setup,
    driver: Driver,
    identity: &str,
    labels: &[&str],
    statements: &[&str],
) -> anyhow::Result<Vec<Value>> {
    let out = exec_session(s, driver, identity, labels, statements)?
        .output()
        .context("cannot run snowtrail exec")?;
    output_lines(s, driver, &out)
}

/// Runs one connector 5.2.0 session of `statements` as `identity` under `snowtrail exec`; returns
/// the step lines the session script printed.
pub fn run_session(s: &Setup, identity: &str, statements: &[&str]) -> anyhow::Result<Vec<Value>> {
    run_driver(s, Driver::Py5, identity, &[], statements)
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
