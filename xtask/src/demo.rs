//! `cargo xtask demo`: the product end to end on one machine. It builds the agent and the fake
//! Snowflake, starts both (the fake on 127.77.0.1:443 with TLS, standing in for
//! `xy12345.snowflakecomputing.com`), runs a workload that uses the real Snowflake Python
//! connector under `snowtrail exec`, and shows the audit it produced, read with DuckDB.
//!
//! Everything stays on loopback and under `target/demo`. The workload resolves the Snowflake host
//! name through its own mount namespace's /etc/hosts; the machine's file is untouched. The daemon
//! runs fail-open so that stopping it at the end detaches its programs.

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::util::{root, sh, step};

/// Options of `demo`.
#[derive(Debug, Args, Default)]
pub struct Options {
    /// Print where the daemon's log, state and audit were kept.
    #[arg(long)]
    pub verbose: bool,
}

/// Where the fake Snowflake listens.
const UPSTREAM_IP: &str = "127.77.0.1";
/// The account host the workload connects to.
const ACCOUNT_HOST: &str = "xy12345.snowflakecomputing.com";

/// The statements the workload runs.
const STATEMENTS: &[&str] = &[
    "create or replace table orders (id int, customer varchar)",
    r#"{"sql": "insert into orders values (?, ?)", "params": [1, "acme"]}"#,
    "select * from customers",
    "select * from no_such_table",
    "create user analyst password = 'never-in-the-audit'",
];

/// A child process stopped (SIGTERM, then waited for) when dropped.
struct Guard(Option<Child>);

impl Guard {
    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the demo.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let env = crate::setup::run(&crate::setup::Options::default())?;
    let root = root();
    step("building the agent (eBPF programs included) and the fake Snowflake");
    sh(Command::new("cargo").current_dir(&root).args([
        "build",
        "-p",
        "snowtrail",
        "-p",
        "snowtrail-tests",
        "--bin",
        "snowtrail",
        "--bin",
        "fake-snowflake",
    ]))?;
    let bin = root.join("target/debug/snowtrail");
    let dir = root.join("target/demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    step(&format!(
        "starting the fake Snowflake on {UPSTREAM_IP}:443 (TLS, HTTP/2) as {ACCOUNT_HOST}"
    ));
    let fake_ca_dir = dir.join("fake-ca");
    let fake_log = std::fs::File::create(dir.join("fake-snowflake.log"))?;
    let mut fake = Guard(Some(
        Command::new(root.join("target/debug/fake-snowflake"))
            .args([
                "--listen",
                &format!("{UPSTREAM_IP}:443"),
                "--tls",
                "--host",
                ACCOUNT_HOST,
                "--ca-dir",
            ])
            .arg(&fake_ca_dir)
            .stdout(fake_log.try_clone()?)
            .stderr(fake_log)
            .spawn()
            .context("cannot start the fake Snowflake")?,
    ));
    let fake_ca = fake_ca_dir.join("ca.pem");
    wait_until(Duration::from_secs(30), || {
        fake_ca.exists() && std::net::TcpStream::connect((UPSTREAM_IP, 443)).is_ok()
    })
    .context("the fake Snowflake did not start")?;

    let socket = dir.join("control.sock");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\naudit_dir = {:?}\ncontrol_socket = {:?}\nfail_open = true\n\
             [redirect]\npin_dir = \"/sys/fs/bpf/snowtrail-demo\"\n\
             [tls]\n# The fake Snowflake's own CA stands in for the public roots real Snowflake chains to.\n\
             upstream_extra_roots = [{:?}]\n",
            dir.join("state").display().to_string(),
            dir.join("audit").display().to_string(),
            socket.display().to_string(),
            fake_ca.display().to_string(),
        ),
    )?;

    step("starting the agent: snowtrail run");
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path)?;
    let mut daemon = Guard(Some(
        Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .args(["run", "--log-format", "json"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the agent")?,
    ));
    let cli = |args: &[&str]| {
        Command::new(&bin)
            .arg("--control-socket")
            .arg(&socket)
            .args(args)
            .output()
    };
    if wait_until(Duration::from_secs(30), || {
        cli(&["status"]).is_ok_and(|o| o.status.success())
    })
    .is_none()
    {
        bail!(
            "the agent did not start; its log:\n{}",
            std::fs::read_to_string(&log_path)?
        );
    }

    step(
        "running a workload with snowflake-connector-python 5.2.0 under snowtrail exec --identity nightly-etl",
    );
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n{UPSTREAM_IP} {ACCOUNT_HOST}\n"),
    )?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--control-socket")
        .arg(&socket)
        .args([
            "exec",
            "--identity",
            "nightly-etl",
            "--label",
            "team=data",
            "--",
        ])
        .args([
            "unshare",
            "-m",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/hosts && exec "$@""#,
        ])
        .arg(&hosts)
        .arg(&env.py5)
        .arg(root.join("tests/drivers/session.py"))
        .args([
            "--host",
            ACCOUNT_HOST,
            "--user",
            "etl_service",
            "--password",
            "demo-password",
        ])
        .args(STATEMENTS)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null());
    // Trust comes from `snowtrail exec` alone, as on a clean host.
    for var in [
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "NODE_EXTRA_CA_CERTS",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output()?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"step\""))
    {
        println!("  workload: {line}");
    }
    if !out.status.success() {
        bail!(
            "the workload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    step("the agent's status");
    if let Ok(o) = cli(&["status"]) {
        std::io::stdout().write_all(&o.stdout)?;
    }
    step("stopping the agent (it closes its audit files; the demo config detaches its programs)");
    daemon.stop();
    fake.stop();

    step("the audit trail, read with DuckDB as an analyst would");
    let audit = dir.join("audit");
    show(
        &env.python,
        &audit,
        "strftime(event_time, '%H:%M:%S.%g') AS time, event_kind AS kind, workload_identity AS identity, \
         tgid AS pid, comm, login_user AS user, right(session_id, 8) AS session, right(query_id, 8) AS query, \
         sql_text, rows_produced AS rows, success, error_code",
        "event_kind IN ('login', 'query', 'logout')",
    )?;
    show(
        &env.python,
        &audit,
        "event_kind AS kind, coalesce(lifecycle_action, connection_mode) AS what, sni, dst_ip || ':' || dst_port AS destination, bytes_in, bytes_out, close_reason",
        "event_kind IN ('connection', 'lifecycle')",
    )?;
    if opts.verbose {
        println!(
            "log: {}\nstate: {}\naudit: {}",
            log_path.display(),
            dir.join("state").display(),
            audit.display()
        );
    }
    step("demo complete");
    Ok(())
}

/// Prints a DuckDB query over the audit directory.
fn show(python: &Path, audit: &Path, columns: &str, filter: &str) -> anyhow::Result<()> {
    let query = format!(
        "import duckdb\nduckdb.sql(\"\"\"SELECT {columns} FROM read_parquet('{}/**/*.parquet', hive_partitioning = true) \
         WHERE {filter} ORDER BY event_time\"\"\").show(max_width=250, max_col_width=60)\n",
        audit.display()
    );
    sh(Command::new(python).arg("-c").arg(query))
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> Option<()> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(())
}
