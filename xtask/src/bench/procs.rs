//! Processes the sections start and read: servers killed when dropped, a snowtrail daemon of the
//! bench's own, and what `/proc` says about a process (CPU time, RSS, open-files limit).

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The open-files limit servers are started with: the packaged unit's `LimitNOFILE`.
pub const NOFILE: u64 = 65_536;

/// A command run with the open-files limit raised to [`NOFILE`], or to the hard limit where that
/// is lower and cannot be raised (a container without `CAP_SYS_RESOURCE`).
pub fn with_nofile(program: &Path, args: &[String]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            r#"{{ ulimit -n {NOFILE} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; }} && exec "$0" "$@""#
        ))
        .arg(program)
        .args(args);
    c
}

/// A command running `program args` in a private mount namespace where `/etc/hosts` is `hosts`,
/// so host names resolve as the bench wants without touching the machine's file.
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

/// A hosts file mapping each of `names` to `ip`, written as `dir/hosts`.
pub fn hosts_file(dir: &Path, ip: &str, names: &[&str]) -> anyhow::Result<PathBuf> {
    let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for n in names {
        text.push_str(&format!("{ip} {n}\n"));
    }
    let path = dir.join("hosts");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// A child process that is killed (and reaped) when dropped.
pub struct Proc {
    name: String,
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
    /// Stopped with SIGTERM rather than SIGKILL: a server whose workers must go with it (nginx's
    /// workers outlive a killed master, still listening).
    graceful: bool,
}

impl Proc {
    /// Starts `cmd` with stdout piped (stderr to `log` if given, else inherited).
    pub fn spawn(name: &str, cmd: &mut Command, log: Option<&Path>) -> anyhow::Result<Proc> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        if let Some(log) = log {
            let f = std::fs::File::create(log)
                .with_context(|| format!("cannot create {}", log.display()))?;
            cmd.stderr(f);
        }
        Proc::start(name, cmd)
    }

    /// Starts `cmd` with stdin and stdout piped (for `loadgen hold`).
    pub fn spawn_piped(name: &str, cmd: &mut Command) -> anyhow::Result<(Proc, ChildStdin)> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut p = Proc::start(name, cmd)?;
        let stdin = p.child.stdin.take().context("no stdin")?;
        Ok((p, stdin))
    }

    fn start(name: &str, cmd: &mut Command) -> anyhow::Result<Proc> {
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Proc {
            name: name.to_owned(),
            child,
            stdout,
            graceful: false,
        })
    }

    /// This process, to be stopped with SIGTERM (and given time to stop its children) when
    /// dropped.
    pub fn graceful(mut self) -> Proc {
        self.graceful = true;
        self
    }

    /// Fails if it has already ended (a server that could not bind, say).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} ended ({status})", self.name);
        }
        Ok(())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line of its stdout that is a JSON object (servers announce themselves so).
    pub fn json_line(&mut self) -> anyhow::Result<serde_json::Value> {
        let out = self.stdout.as_mut().context("stdout not piped")?;
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line)? == 0 {
                let status = self.child.wait()?;
                bail!("{} ended ({status}) before reporting", self.name);
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim())
                && v.is_object()
            {
                return Ok(v);
            }
        }
    }

    /// The next line of its stdout, whatever it is.
    pub fn line(&mut self) -> anyhow::Result<String> {
        let out = self.stdout.as_mut().context("stdout not piped")?;
        let mut line = String::new();
        if out.read_line(&mut line)? == 0 {
            bail!("{} ended before printing", self.name);
        }
        Ok(line.trim().to_owned())
    }

    /// Waits for it to end by itself, at most `limit`; kills it past that.
    pub fn wait(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                bail!("{} did not end within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then up to `limit` for it to end, then SIGKILL.
    pub fn terminate(&mut self, limit: Duration) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            if self.wait(limit).is_err() {
                let _ = self.child.wait();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.graceful {
            self.terminate(Duration::from_secs(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the fake Snowflake in its lean mode (TLS, no request log) on `addr` with its CA in
/// `ca_dir`, accepting up to `max_connections`, and waits until it listens: the upstream the
/// round-trip and memory sections measure against.
pub fn lean_fake(
    fake_bin: &Path,
    addr: SocketAddr,
    ca_dir: &Path,
    max_connections: usize,
    log: &Path,
) -> anyhow::Result<Proc> {
    let mut fake = Proc::spawn(
        "fake-snowflake",
        &mut with_nofile(
            fake_bin,
            &[
                "--tls".into(),
                "--lean".into(),
                "--listen".into(),
                addr.to_string(),
                "--ca-dir".into(),
                ca_dir.display().to_string(),
                "--max-connections".into(),
                max_connections.to_string(),
            ],
        ),
        Some(log),
    )?;
    fake.line()?;
    wait_listening(addr, Duration::from_secs(10))?;
    Ok(fake)
}

/// Waits until something accepts TCP connections at `addr`.
pub fn wait_listening(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > until {
            bail!("nothing listens on {addr} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Where the bench's daemon keeps its files, and how it is configured.
pub struct DaemonSpec<'a> {
    /// The `snowtrail` binary.
    pub bin: &'a Path,
    /// A scratch directory of its own (config, state, audit, control socket, log).
    pub dir: PathBuf,
    /// The proxy's listening port.
    pub listen_port: u16,
    /// TOML appended to the config (sections such as `[audit]` and `[tls]`).
    pub extra: String,
}

/// A `snowtrail run` of the bench: its own state, audit, pins and port; stopped when dropped.
pub struct Daemon {
    proc: Proc,
    bin: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// The state directory (`ca.pem` is there).
    pub state_dir: PathBuf,
    pin_dir: PathBuf,
}

/// The daemon's config file text.
pub fn daemon_config(dir: &Path, listen_port: u16, pin_dir: &Path, extra: &str) -> String {
    format!(
        "state_dir = {state:?}\naudit_dir = {audit:?}\ncontrol_socket = {sock:?}\n\n\
         [redirect]\nports = [443]\nlisten_port = {listen_port}\npin_dir = {pins:?}\n\n{extra}\n",
        state = dir.join("state").display().to_string(),
        audit = dir.join("audit").display().to_string(),
        sock = dir.join("control.sock").display().to_string(),
        pins = pin_dir.display().to_string(),
    )
}

impl Daemon {
    /// Writes the config, starts the daemon (open-files limit as packaged) and waits until its
    /// control socket answers.
    pub fn start(spec: DaemonSpec<'_>) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(&spec.dir)?;
        let name = spec
            .dir
            .file_name()
            .map_or("daemon".into(), |n| n.to_string_lossy().into_owned());
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/snowtrail-bench-{name}-{}",
            std::process::id()
        ));
        let config = spec.dir.join("config.toml");
        std::fs::write(
            &config,
            daemon_config(&spec.dir, spec.listen_port, &pin_dir, &spec.extra),
        )?;
        let args = vec![
            "--config".to_owned(),
            config.display().to_string(),
            "run".to_owned(),
        ];
        let mut cmd = with_nofile(spec.bin, &args);
        cmd.env("SNOWTRAIL_LOG", "warn");
        let proc = Proc::spawn(
            &format!("snowtrail ({name})"),
            &mut cmd,
            Some(&spec.dir.join("daemon.log")),
        )?;
        let mut d = Daemon {
            proc,
            bin: spec.bin.to_owned(),
            socket: spec.dir.join("control.sock"),
            state_dir: spec.dir.join("state"),
            pin_dir,
        };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = d.proc.child.try_wait() {
                let log = std::fs::read_to_string(spec.dir.join("daemon.log")).unwrap_or_default();
                bail!("snowtrail exited at start ({status}):\n{log}");
            }
            let ok = Command::new(&d.bin)
                .arg("--control-socket")
                .arg(&d.socket)
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            if Instant::now() > until {
                bail!("snowtrail did not become ready in 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Its pid is the shell's: `exec` replaced the shell with the daemon.
        Ok(d)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `program args` run enrolled: `snowtrail exec --identity bench -- program args`.
    pub fn exec(&self, program: &Path, args: &[String]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--control-socket")
            .arg(&self.socket)
            .args(["exec", "--identity", "bench", "--"])
            .arg(program)
            .args(args);
        c
    }

    /// `cmd` (with its environment) run enrolled.
    pub fn exec_command(&self, cmd: &Command) -> Command {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut c = self.exec(Path::new(cmd.get_program()), &args);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.proc.terminate(Duration::from_secs(15));
        let _ = Command::new(&self.bin)
            .args(["detach", "--pin-dir"])
            .arg(&self.pin_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// User plus system CPU time of a process, in clock ticks, from `/proc/<pid>/stat` text.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A process's CPU seconds so far (user plus system).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = stat_cpu_ticks(&text).context("unreadable /proc/<pid>/stat")?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

fn clock_ticks_per_second() -> u64 {
    crate::util::output(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// `VmRSS` of `/proc/<pid>/status` text, in KiB.
pub fn status_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A process's resident memory, in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status_rss_kib(&text).context("no VmRSS in /proc/<pid>/status")?;
    Ok(kib as f64 / 1024.0)
}

/// The soft `Max open files` of `/proc/<pid>/limits` text.
pub fn limits_nofile(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}

/// A process's soft open-files limit.
pub fn nofile_limit(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    limits_nofile(&text).context("no open-files line in /proc/<pid>/limits")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_odd_names() {
        let stat = "4242 (snow trail) (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 567 0 0 20 0 \
                    4 0 100 123456 789 18446744073709551615";
        assert_eq!(stat_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn rss_and_nofile_are_read_from_proc_text() {
        let status = "Name:\tsnowtrail\nVmPeak:\t  999 kB\nVmRSS:\t   24576 kB\nThreads:\t4\n";
        assert_eq!(status_rss_kib(status), Some(24_576));
        assert_eq!(status_rss_kib("Name: x\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95744                95744                processes \n\
                      Max open files            65536                65536                files     \n";
        assert_eq!(limits_nofile(limits), Some(65_536));
    }

    #[test]
    fn daemon_config_redirects_443_to_its_own_port_and_pins() {
        let text = daemon_config(
            Path::new("/t/d"),
            18_943,
            Path::new("/sys/fs/bpf/x"),
            "[audit]\ndurability = \"async\"",
        );
        assert!(text.contains("state_dir = \"/t/d/state\""));
        assert!(text.contains("ports = [443]\nlisten_port = 18943\n"));
        assert!(text.contains("pin_dir = \"/sys/fs/bpf/x\""));
        assert!(text.ends_with("[audit]\ndurability = \"async\"\n"));
    }
}
