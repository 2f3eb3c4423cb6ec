//! Running the real Snowflake drivers against a server: where `cargo xtask setup` installed them,
//! the driver scripts in `tests/drivers/`, host names given through a private mount namespace
//! (never the machine's `/etc/hosts`), and trust set to one CA alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The drivers the tests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// snowflake-connector-python 4.8.1 (classic, pure Python, requests).
    Py4,
    /// snowflake-connector-python 5.2.0 (Rust core, rustls, HTTP/2).
    Py5,
    /// Node snowflake-sdk 3.3.0.
    Node,
}

impl Driver {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Py4 => "connector 4.8.1",
            Driver::Py5 => "connector 5.2.0",
            Driver::Node => "node sdk 3.3.0",
        }
    }
}

fn root() -> PathBuf {
    crate::workspace_root()
}

fn must_exist(path: PathBuf, what: &str, var: &str) -> anyhow::Result<PathBuf> {
    if path.exists() {
        Ok(path)
    } else {
        bail!(
            "{what} not found at {} (set {var}, or run `cargo xtask setup` to install the drivers)",
            path.display()
        )
    }
}

/// The Python with connector 4.8.1 (`SNOWTRAIL_PY4`, else `target/snowtrail-env/py4`).
pub fn py4() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("SNOWTRAIL_PY4")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/snowtrail-env/py4/bin/python"));
    must_exist(p, "the connector 4.8.1 Python", "SNOWTRAIL_PY4")
}

/// The Python with connector 5.2.0 (`SNOWTRAIL_PY5`, else `target/snowtrail-env/py5`).
pub fn py5() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("SNOWTRAIL_PY5")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/snowtrail-env/py5/bin/python"));
    must_exist(p, "the connector 5.2.0 Python", "SNOWTRAIL_PY5")
}

/// The `node_modules` holding snowflake-sdk (`SNOWTRAIL_NODE_MODULES`, else
/// `target/snowtrail-env/node/node_modules`).
pub fn node_modules() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("SNOWTRAIL_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/snowtrail-env/node/node_modules"));
    must_exist(
        p.join("snowflake-sdk"),
        "snowflake-sdk",
        "SNOWTRAIL_NODE_MODULES",
    )?;
    Ok(p)
}

/// The driver scripts' directory (`tests/drivers`).
pub fn scripts_dir() -> PathBuf {
    root().join("tests/drivers")
}

/// Writes a hosts file mapping each of `hosts` to `ip` (plus localhost) into `dir`.
pub fn write_hosts_file(
    dir: &Path,
    ip: std::net::IpAddr,
    hosts: &[&str],
) -> anyhow::Result<PathBuf> {
    let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for h in hosts {
        text.push_str(&format!("{ip} {h}\n"));
    }
    let path = dir.join("hosts");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// A command running `program args` in a private mount namespace where `/etc/hosts` is `hosts`.
pub fn with_hosts(hosts: &Path, program: &Path, args: &[String]) -> Command {
    let mut c = Command::new("unshare");
    c.arg("-m")
        .arg("sh")
        .arg("-c")
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(hosts)
        .arg(program)
        .args(args);
    c
}

/// The CA variables a driver reads; all are cleared before the one that matters is set.
pub const CA_VARS: &[&str] = &[
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "NODE_OPTIONS",
];

/// Sets the trust of `driver` to `ca` alone: 4.8.1 reads `REQUESTS_CA_BUNDLE`, 5.2.0
/// `SSL_CERT_FILE`, Node `NODE_EXTRA_CA_CERTS`; the machine's presets are cleared.
pub fn trust_only(cmd: &mut Command, driver: Driver, ca: &Path) {
    for v in CA_VARS {
        cmd.env_remove(v);
    }
    match driver {
        Driver::Py4 => cmd.env("REQUESTS_CA_BUNDLE", ca),
        Driver::Py5 => cmd.env("SSL_CERT_FILE", ca),
        Driver::Node => cmd.env("NODE_EXTRA_CA_CERTS", ca),
    };
}

/// A command running the session script of `driver` with `args` (host names from `hosts`,
/// trusting `ca` only). Fails, naming `cargo xtask setup`, when the driver is not installed.
pub fn session_command(
    driver: Driver,
    hosts: &Path,
    ca: &Path,
    args: &[String],
) -> anyhow::Result<Command> {
    let (program, script, node_path) = match driver {
        Driver::Py4 => (py4()?, scripts_dir().join("session.py"), None),
        Driver::Py5 => (py5()?, scripts_dir().join("session.py"), None),
        Driver::Node => (
            PathBuf::from("node"),
            scripts_dir().join("session.js"),
            Some(node_modules()?),
        ),
    };
    let program = if program.is_absolute() {
        program
    } else {
        which(&program).unwrap_or(program)
    };
    let mut all = vec![script.display().to_string()];
    all.extend(args.iter().cloned());
    let mut cmd = with_hosts(hosts, &program, &all);
    trust_only(&mut cmd, driver, ca);
    if let Some(p) = node_path {
        cmd.env("NODE_PATH", p);
    }
    cmd.env("PYTHONUNBUFFERED", "1");
    Ok(cmd)
}

fn which(program: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The step lines a session script printed (objects with a `step`; driver log lines are skipped).
pub fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter(|v| v.get("step").is_some())
        .collect()
}
