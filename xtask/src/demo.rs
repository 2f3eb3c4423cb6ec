//! `cargo xtask demo`: builds the agent, starts it on a scratch configuration, serves a local
//! upstream on 127.77.0.1:443, runs a workload under `snowtrail exec`, and shows what the agent saw.
//!
//! Everything stays on loopback and under `target/demo`; the daemon runs fail-open so that stopping
//! it at the end detaches its programs.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::Path;
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
    crate::setup::run(&crate::setup::Options::default())?;
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

    step("what the agent recorded (connection events)");
    let start = Instant::now();
    let events = loop {
        let events = connection_events(&log_path);
        if !events.is_empty() || start.elapsed() > Duration::from_secs(10) {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if events.is_empty() {
        bail!(
            "the agent recorded no connection; its log:\n{}",
            std::fs::read_to_string(&log_path)?
        );
    }
    for e in &events {
        println!(
            "  {kind}: pid {pid} ({comm}) identity {id} labels {labels} cgroup {cg}\n    -> {dst}:{port}  {bin}B in / {bout}B out  {dur} ms  {reason}",
            kind = e["event_kind"].as_str().unwrap_or("?"),
            pid = e["tgid"],
            comm = e["comm"].as_str().unwrap_or("?"),
            id = e["workload_identity"].as_str().unwrap_or("-"),
            labels = e["labels"],
            cg = e["cgroup_path"].as_str().unwrap_or("-"),
            dst = e["dst_ip"].as_str().unwrap_or("?"),
            port = e["dst_port"],
            bin = e["bytes_in"],
            bout = e["bytes_out"],
            dur = e["duration_ms"],
            reason = e["close_reason"].as_str().unwrap_or(""),
        );
    }
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
    if opts.verbose {
        println!(
            "log: {}\nstate: {}",
            log_path.display(),
            dir.join("state").display()
        );
    }
    step("demo complete");
    Ok(())
}

fn connection_events(log: &Path) -> Vec<serde_json::Value> {
    let Ok(text) = std::fs::read_to_string(log) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "audit event")
        .filter_map(|v| {
            v["fields"]["event"]
                .as_str()
                .and_then(|s| serde_json::from_str(s).ok())
        })
        .filter(|e: &serde_json::Value| e["event_kind"] == "connection")
        .collect()
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
