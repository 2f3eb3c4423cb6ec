//! `cargo xtask demo`: builds the agent, starts it on a scratch configuration, serves a local
//! upstream on 127.77.0.1:443, runs a workload under `snowtrail exec`, and shows what the agent saw.
//!
//! Everything stays on loopback and under `target/demo`; the daemon runs fail-open so that stopping
//! it at the end detaches its programs.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::util::{root, sh, step};

/// Options of `demo`.
#[derive(Debug, Args, Default)]
pub struct Options {
    /// Keep the daemon's log and state under target/demo afterwards (they are always kept; this
    /// prints their paths).
    #[arg(long)]
    pub verbose: bool,
}

/// The upstream the workload talks to: plain HTTP on an intercepted port.
const UPSTREAM: &str = "127.77.0.1:443";

/// The workload: a Python program fetching a page from the upstream.
const WORKLOAD: &str = "import urllib.request, os\n\
print('workload pid', os.getpid(), 'got:', urllib.request.urlopen('http://127.77.0.1:443/hello', timeout=10).read().decode().strip())\n";

struct Guard(Option<Child>);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

/// Runs the demo.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let env = crate::setup::run(&crate::setup::Options::default())?;
    let root = root();
    step("building the agent (eBPF programs included)");
    sh(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "-p", "snowtrail"]))?;
    let bin = root.join("target/debug/snowtrail");
    let dir = root.join("target/demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("control.sock");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\naudit_dir = {:?}\ncontrol_socket = {:?}\nfail_open = true\n[redirect]\npin_dir = \"/sys/fs/bpf/snowtrail-demo\"\n",
            dir.join("state").display().to_string(),
            dir.join("audit").display().to_string(),
            socket.display().to_string(),
        ),
    )?;

    step(&format!("starting a local upstream on {UPSTREAM}"));
    let upstream =
        TcpListener::bind(UPSTREAM).with_context(|| format!("cannot listen on {UPSTREAM}"))?;
    std::thread::spawn(move || serve_http(upstream));

    step("starting the agent: snowtrail run");
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path)?;
    let daemon = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .args(["run", "--log-format", "json"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the agent")?;
    let mut daemon = Guard(Some(daemon));
    let cli = |args: &[&str]| {
        Command::new(&bin)
            .arg("--control-socket")
            .arg(&socket)
            .args(args)
            .output()
    };
    let start = Instant::now();
    while !cli(&["status"]).is_ok_and(|o| o.status.success()) {
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "the agent did not start; its log:\n{}",
                std::fs::read_to_string(&log_path)?
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    step("running a workload: snowtrail exec --identity demo-etl --label team=data -- python3 ...");
    let out = Command::new(&bin)
        .arg("--control-socket")
        .arg(&socket)
        .args([
            "exec",
            "--identity",
            "demo-etl",
            "--label",
            "team=data",
            "--",
            "python3",
            "-c",
            WORKLOAD,
        ])
        .stdout(Stdio::piped())
        .output()?;
    std::io::stdout().write_all(&out.stdout)?;
    if !out.status.success() {
        bail!(
            "the workload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    step("the agent's status");
    if let Ok(o) = cli(&["status"]) {
        print!("{}", String::from_utf8_lossy(&o.stdout));
    }

    step("stopping the agent (fail-open demo config: its programs are detached)");
    if let Some(mut c) = daemon.0.take() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let _ = c.wait();
    }
    step("the audit trail, read with DuckDB as an analyst would");
    let audit = dir.join("audit");
    let query = format!(
        "import duckdb\n\
         duckdb.sql(\"\"\"SELECT strftime(event_time, '%H:%M:%S') AS time, event_kind AS kind, \
         coalesce(lifecycle_action, connection_mode) AS what, workload_identity AS identity, labels, comm, tgid AS pid, \
         dst_ip || ':' || dst_port AS destination, bytes_in, bytes_out, close_reason \
         FROM read_parquet('{}/**/*.parquet', hive_partitioning = true) ORDER BY event_time\"\"\").show(max_width=250)\n",
        audit.display()
    );
    sh(Command::new(&env.python).arg("-c").arg(query))?;
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

fn serve_http(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let peer = stream
                .peer_addr()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let body = format!("hello from the upstream; it saw a connection from {peer}\n");
            let _ = write!(
                &stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        });
    }
}
