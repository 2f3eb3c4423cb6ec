//! Helpers shared by snowtrail's end-to-end tests: a daemon run as a real process, throwaway
//! cgroups, loopback servers, the CLI, and the events the daemon recorded.
//!
//! Every helper cleans up in `Drop` (processes killed, pins detached, cgroups removed) so that a
//! failing test leaves nothing behind and the suite can run twice in a row.

pub mod client;
pub mod connect_proxy;
pub mod fake_snowflake;
pub mod session;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The `snowtrail` binary under test (`SNOWTRAIL_BIN`, else the debug build).
pub fn snowtrail_bin() -> PathBuf {
    std::env::var_os("SNOWTRAIL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/snowtrail"))
}

/// The Python with the test tools (`SNOWTRAIL_PYTHON`, else the venv `cargo xtask setup` makes).
pub fn python() -> PathBuf {
    std::env::var_os("SNOWTRAIL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/snowtrail-env/venv/bin/python"))
}

/// A port no other test of this process uses for a listener: `base` plus a counter.
pub fn unique_port(base: u16) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    base + u16::try_from(NEXT.fetch_add(1, Ordering::Relaxed)).unwrap_or(0)
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `[tls]` section for daemons whose tests talk to [`PeerServer`]s: those speak plain text, which
/// the agent refuses on an intercepted port unless the destination is allowed, so the peer
/// servers' addresses (`127.77.0.0/24`, `127.78.0.0/24` and `[::1]`, port 443) are.
pub const PLAIN_PEERS: &str =
    "[tls]\nallow_unverified = [\"127.77.0.0/24:443\", \"127.78.0.0/24:443\", \"[::1]:443\"]\n";

/// Options for a test daemon.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Extra top-level TOML lines.
    pub extra_top: String,
    /// `fail_open`.
    pub fail_open: bool,
}

/// A `snowtrail run` process with its own state directory, control socket, pins and listen port.
pub struct Daemon {
    /// Scratch directory holding config, state, audit and log.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// The bpffs pin directory.
    pub pin_dir: PathBuf,
    /// The proxy's port.
    pub listen_port: u16,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The audit directory.
    pub audit_dir: PathBuf,
    child: Option<Child>,
    log_index: u32,
}

impl Daemon {
    /// Starts a daemon and waits until its control socket answers.
    pub fn start(name: &str, listen_port: u16, opts: &DaemonOptions) -> anyhow::Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("snowtrail-{name}-"))
            .tempdir()?;
        let state_dir = dir.path().join("state");
        let audit_dir = dir.path().join("audit");
        let socket = dir.path().join("control.sock");
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/snowtrail-test-{name}-{}",
            std::process::id()
        ));
        let config = dir.path().join("config.toml");
        let text = format!(
            "state_dir = {state:?}\naudit_dir = {audit:?}\ncontrol_socket = {sock:?}\nfail_open = {fo}\n{extra}\n\
             [redirect]\nlisten_port = {listen_port}\npin_dir = {pins:?}\n\
             [proxy]\ndrain_timeout_s = 2\ntransfer_quiet_ms = 1000\n\
             [audit]\nmax_file_age_s = 1\n",
            state = state_dir.display().to_string(),
            audit = audit_dir.display().to_string(),
            sock = socket.display().to_string(),
            fo = opts.fail_open,
            extra = opts.extra_top,
            pins = pin_dir.display().to_string(),
        );
        std::fs::write(&config, text)?;
        let mut d = Daemon {
            dir,
            config,
            socket,
            pin_dir,
            listen_port,
            state_dir,
            audit_dir,
            child: None,
            log_index: 0,
        };
        d.launch()?;
        Ok(d)
    }

    /// Rewrites `fail_open` in the config (takes effect at the next start).
    pub fn set_fail_open(&self, fail_open: bool) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.config)?;
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("fail_open") {
                    format!("fail_open = {fail_open}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&self.config, text)?;
        Ok(())
    }

    /// The daemon's log of its current run.
    pub fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("daemon-{}.log", self.log_index))
    }

    /// Every log file of every run, concatenated.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for i in 0..=self.log_index {
            s.push_str(
                &std::fs::read_to_string(self.dir.path().join(format!("daemon-{i}.log")))
                    .unwrap_or_default(),
            );
        }
        s
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        self.log_index += 1;
        let log = std::fs::File::create(self.log_path())?;
        let child = Command::new(snowtrail_bin())
            .args(["--config"])
            .arg(&self.config)
            .args(["run", "--log-format", "json"])
            .env("SNOWTRAIL_LOG", "info,snowtrail=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start snowtrail run")?;
        self.child = Some(child);
        let ready = wait_for(Duration::from_secs(60), || {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Some(Err(status));
            }
            let out = self.cli(&["status"]).ok()?;
            out.status.success().then_some(Ok(()))
        });
        match ready {
            Some(Ok(())) => Ok(()),
            Some(Err(status)) => bail!("daemon exited at start ({status}):\n{}", self.logs()),
            None => bail!("daemon did not become ready:\n{}", self.logs()),
        }
    }

    /// Stops the daemon with SIGTERM and waits for it.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id())?);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
            let status = c.wait()?;
            if !status.success() {
                bail!("daemon stopped with {status}:\n{}", self.logs());
            }
        }
        Ok(())
    }

    /// Kills the daemon with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same state, pins and port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Starts a stopped daemon again.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.launch()
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(snowtrail_bin())
            .arg("--control-socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    /// `inner` (a command such as `fake_snowflake::drivers::session_command` builds) run under
    /// `snowtrail exec --identity <identity>` of this daemon, with its arguments and environment.
    /// The machine's CA variables are cleared: exec sets them to the agent's bundle.
    pub fn exec_command(&self, identity: &str, inner: &Command) -> Command {
        self.exec_command_labelled(identity, &[], inner)
    }

    /// As [`exec_command`](Self::exec_command), with `--label` for each of `labels`
    /// (`key=value`).
    pub fn exec_command_labelled(
        &self,
        identity: &str,
        labels: &[&str],
        inner: &Command,
    ) -> Command {
        let mut cmd = Command::new(snowtrail_bin());
        cmd.arg("--control-socket")
            .arg(&self.socket)
            .args(["exec", "--identity", identity]);
        for l in labels {
            cmd.args(["--label", l]);
        }
        cmd.arg("--")
            .arg(inner.get_program())
            .args(inner.get_args())
            .stdin(Stdio::null());
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        for v in fake_snowflake::drivers::CA_VARS {
            cmd.env_remove(v);
        }
        cmd
    }

    /// Runs the CLI and fails unless it succeeds; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "snowtrail {args:?} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The audit events in the daemon's published Parquet files (every run), as JSON values.
    pub fn events(&self) -> Vec<serde_json::Value> {
        snowtrail::audit::readback::read_events(&self.audit_dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|e| serde_json::to_value(e).ok())
            .collect()
    }

    /// Waits until an event matching `pred` was recorded.
    pub fn wait_event(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        wait_for(Duration::from_secs(20), || {
            self.events().into_iter().find(|e| pred(e))
        })
        .with_context(|| format!("no matching event; events:\n{:#?}", self.events()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        let _ = Command::new(snowtrail_bin())
            .args(["detach", "--pin-dir"])
            .arg(&self.pin_dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        // Exec cgroups this daemon made.
        if let Ok(text) = std::fs::read_to_string(self.state_dir.join("enrollments.json"))
            && let (Ok(v), Ok(mount)) = (
                serde_json::from_str::<serde_json::Value>(&text),
                snowtrail::cgroup::mount_point(),
            )
        {
            for e in v["enrollments"].as_array().into_iter().flatten() {
                if e["kind"] == "exec"
                    && let Some(c) = e["cgroup"].as_str()
                {
                    remove_cgroup(&mount.join(c.trim_start_matches('/')));
                }
            }
        }
    }
}

/// Kills every process in a cgroup tree and removes it, deepest first.
pub fn remove_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let _ = wait_for(Duration::from_secs(5), || {
        (!snowtrail::cgroup::populated(dir).unwrap_or(false)).then_some(())
    });
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A throwaway cgroup, `<mount>/snowtrail-test/<name>-<pid>/workload`, removed with its processes
/// and its parent on drop.
///
/// Each test owns the parent too: the daemon guards an enrolled cgroup's parent (every cgroup made
/// below it reaches the daemon until classified), and the tests running beside this one must not
/// live under that guard.
pub struct TestCgroup {
    /// Its directory.
    pub dir: PathBuf,
    /// Its path relative to the mount.
    pub rel: String,
    /// The parent only this test uses.
    pub parent: PathBuf,
}

impl TestCgroup {
    /// Makes `<mount>/snowtrail-test/<name>-<pid>/workload`.
    pub fn new(name: &str) -> anyhow::Result<TestCgroup> {
        let mount = snowtrail::cgroup::mount_point()?;
        let parent_rel = format!("/snowtrail-test/{name}-{}", std::process::id());
        let rel = format!("{parent_rel}/workload");
        let parent = mount.join(parent_rel.trim_start_matches('/'));
        let dir = mount.join(rel.trim_start_matches('/'));
        remove_cgroup(&parent);
        std::fs::create_dir_all(&dir)?;
        Ok(TestCgroup { dir, rel, parent })
    }

    /// A sibling of this cgroup under the same parent: under the guard, enrolled by nothing.
    pub fn sibling(&self, name: &str) -> anyhow::Result<PathBuf> {
        let d = self.parent.join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// A child cgroup below this one.
    pub fn child(&self, name: &str) -> anyhow::Result<PathBuf> {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.parent);
    }
}

/// A loopback TCP server that answers each connection with the peer address it saw, then echoes.
pub struct PeerServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Peer addresses seen, in order.
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl PeerServer {
    /// Starts the server on `addr` in a background thread.
    pub fn start(addr: SocketAddr) -> anyhow::Result<PeerServer> {
        let listener = TcpListener::bind(addr).with_context(|| format!("cannot bind {addr}"))?;
        let addr = listener.local_addr()?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || serve_peer(stream, &seen));
            }
        });
        Ok(PeerServer { addr, peers })
    }
}

fn serve_peer(mut stream: TcpStream, seen: &Mutex<Vec<SocketAddr>>) {
    let Ok(peer) = stream.peer_addr() else { return };
    if let Ok(mut s) = seen.lock() {
        s.push(peer);
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let _ = writeln!(stream, "{peer}");
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
}
