//! `snowtrail doctor`: is this host ready to run the agent, and is the agent running well?
//!
//! Each check says pass, warn or fail, what it saw, and for anything short of a pass the fix. The
//! command exits non-zero when a check fails. It never needs the daemon: a daemon that is down is
//! one failing check among the others. The verdicts are pure functions of what was read (kernel
//! release, config text, free bytes, bundle text), so they are unit-tested without a host; the
//! reading is in [`run`].
//!
//! Session recording has no configuration key yet, so there is no recording check; once
//! `recording.recipient` exists, doctor says whether recording is on.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::config::{Config, DEFAULT_CONFIG_FILE};
use crate::control::{Client, Reply, Request};

/// Oldest kernel the agent supports (cgroup socket hooks, `bpf_get_netns_cookie` in them, BTF).
const MIN_KERNEL: (u32, u32) = (5, 15);
/// bpffs is expected here (systemd mounts it at boot).
const BPFFS: &str = "/sys/fs/bpf";
/// The kernel's type information; the programs are checked against it.
const BTF: &str = "/sys/kernel/btf/vmlinux";
/// A kernel function that exists only with `CONFIG_CGROUP_BPF`.
const CGROUP_BPF_SYMBOL: &str = "__cgroup_bpf_run_filter_sock_addr";
/// Capabilities the daemon needs (the unit grants exactly these): bit number and name.
const NEEDED_CAPS: &[(u32, &str)] = &[
    (39, "CAP_BPF"),
    (38, "CAP_PERFMON"),
    (12, "CAP_NET_ADMIN"),
    (10, "CAP_NET_BIND_SERVICE"),
    (19, "CAP_SYS_PTRACE"),
];

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// As it should be.
    Pass,
    /// Works, but something deserves attention.
    Warn,
    /// The agent cannot work (or is not working) until this is fixed.
    Fail,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short, stable name (`kernel`, `daemon`, ...), for scripts reading `--json`.
    pub name: &'static str,
    /// Pass, warn or fail.
    pub status: Verdict,
    /// What was seen.
    pub detail: String,
    /// What to do about it, unless it passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Verdict::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Verdict::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Verdict::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The whole report, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No check failed.
    pub ok: bool,
    /// Every check, in order.
    pub checks: Vec<Check>,
}

/// Runs every check and prints the report; the exit code is non-zero when a check failed.
pub fn run(config: Option<&Path>, socket: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let checks = collect(config, socket);
    let report = Report {
        ok: checks.iter().all(|c| c.status != Verdict::Fail),
        checks,
    };
    let out = if json {
        format!("{}\n", serde_json::to_string_pretty(&report)?)
    } else {
        text(&report)
    };
    // A reader that goes away (`| head`) is no error of the checks.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The report as text: one line per check, its fix indented below it, and a summary.
pub fn text(report: &Report) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for c in &report.checks {
        let tag = match c.status {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        out.push_str(&format!("{tag}  {:<width$}  {}\n", c.name, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("      {:<width$}  fix: {fix}\n", ""));
        }
    }
    let count = |v| report.checks.iter().filter(|c| c.status == v).count();
    out.push_str(&format!(
        "{} passed, {} warning(s), {} failed\n",
        count(Verdict::Pass),
        count(Verdict::Warn),
        count(Verdict::Fail)
    ));
    out
}

/// Reads the host and runs each check.
fn collect(config_path: Option<&Path>, socket: Option<&Path>) -> Vec<Check> {
    let mut checks = Vec::new();
    let shown = config_path.unwrap_or(Path::new(DEFAULT_CONFIG_FILE));
    let config = match Config::load(config_path) {
        Ok(c) => {
            let what = if shown.exists() {
                format!("{} is valid", shown.display())
            } else {
                format!("{} is absent: every default applies", shown.display())
            };
            checks.push(Check::pass("config", what));
            c
        }
        Err(e) => {
            checks.push(Check::fail(
                "config",
                e.to_string(),
                "correct the key it names (the shipped file lists every key at its default); \
                 the other checks use the defaults",
            ));
            Config::default()
        }
    };

    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    checks.push(kernel_check(&release));
    checks.push(match crate::cgroup::mount_point() {
        Ok(m) => Check::pass("cgroup2", format!("cgroup v2 mounted at {}", m.display())),
        Err(e) => Check::fail(
            "cgroup2",
            e.to_string(),
            "mount cgroup v2 (boot with systemd.unified_cgroup_hierarchy=1, or \
             `mount -t cgroup2 none /sys/fs/cgroup/unified` for a hybrid layout)",
        ),
    });
    checks.push(cgroup_bpf_check(&release));
    checks.push(if Path::new(BTF).exists() {
        Check::pass("btf", format!("{BTF} present"))
    } else {
        Check::fail(
            "btf",
            format!("{BTF} is missing"),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (every major distribution's kernel is)",
        )
    });
    checks.push(bpffs_check(&config.redirect.pin_dir));
    checks.push(privileges_check());
    checks.push(dir_check("state_dir", &config.state_dir, 0o700));
    checks.push(dir_check("audit_dir", &config.audit_dir, 0o700));
    checks.push(space_check(
        "state_space",
        &config.state_dir,
        config.audit.segment_bytes,
    ));
    checks.push(space_check(
        "audit_space",
        &config.audit_dir,
        config.audit.max_file_bytes,
    ));
    checks.push(bypass_verdict(&config));
    checks.push(recording_check(&config));
    checks.push(ca_check(&config.state_dir));
    checks.push(trust_check(&config.state_dir));
    checks.extend(broker_checks(&config.broker));
    let socket = socket
        .map(Path::to_path_buf)
        .unwrap_or(config.control_socket);
    checks.push(daemon_check(&socket));
    if let Some(c) = containment_check(&socket) {
        checks.push(c);
    }
    checks
}

/// Whether the configuration leaves a way around the agent on an intercepted port: connections
/// it cannot identify passed through, or destinations vouched for so wide that they take in
/// Snowflake's fronts.
pub fn bypass_verdict(config: &Config) -> Check {
    const NAME: &str = "no_bypass";
    let mut open = Vec::new();
    if config.tls.unidentified == crate::config::Unidentified::Passthrough {
        open.push(
            "tls.unidentified = \"passthrough\" carries connections without SNI unread, so a \
             workload can reach Snowflake by address"
                .to_owned(),
        );
    }
    // Wider than a /8 (IPv4) or a /32 (IPv6): such a range takes in cloud providers' fronts.
    for d in &config.tls.allow_unverified {
        let widest = if d.is_v4() { 24 } else { 96 };
        if d.host_bits() > widest {
            open.push(format!(
                "tls.allow_unverified lists {d}, a range wide enough to hold Snowflake's fronts"
            ));
        }
    }
    if open.is_empty() {
        return Check::pass(
            NAME,
            format!(
                "unidentified connections are refused; {} destination(s) vouched for; requests the agent does not read are {}",
                config.tls.allow_unverified.len(),
                match config.proxy.unknown_requests {
                    crate::config::UnknownRequests::Record => "recorded",
                    crate::config::UnknownRequests::Deny => "refused",
                }
            ),
        );
    }
    Check::warn(
        NAME,
        open.join("; "),
        "set tls.unidentified = \"deny\" and list in tls.allow_unverified only the destinations that need it",
    )
}

/// What doctor saw of one enrolled cgroup, for [`containment_verdict`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contained {
    /// The cgroup's path below the cgroup2 mount.
    pub cgroup: String,
    /// Its processes (and its descendants') whose effective uid is 0.
    pub root_pids: Vec<u32>,
    /// The uid that owns the cgroup's directory or its `cgroup.procs`, when not root: a user to
    /// whom the cgroup is delegated can make cgroups of their own beside the enrolled ones.
    pub delegated_to: Option<u32>,
}

/// Reads each enrolled cgroup's processes and owner; `None` when the daemon cannot be asked (the
/// daemon check says so already).
fn containment_check(socket: &Path) -> Option<Check> {
    use std::os::unix::fs::MetadataExt as _;
    let mount = crate::cgroup::mount_point().ok()?;
    let reply = Client::connect(socket)
        .and_then(|mut c| c.call(&Request::List))
        .ok()?;
    let Reply::List { enrollments } = reply else {
        return None;
    };
    let seen: Vec<Contained> = enrollments
        .iter()
        .map(|l| {
            let dir = mount.join(l.enrollment.cgroup.trim_start_matches('/'));
            let root_pids = crate::cgroup::procs_recursive(&dir)
                .into_iter()
                .filter(|pid| effective_uid(*pid) == Some(0))
                .collect();
            let owner = |p: &Path| std::fs::metadata(p).ok().map(|m| m.uid());
            let delegated_to = [owner(&dir), owner(&dir.join("cgroup.procs"))]
                .into_iter()
                .flatten()
                .find(|uid| *uid != 0);
            Contained {
                cgroup: l.enrollment.cgroup.clone(),
                root_pids,
                delegated_to,
            }
        })
        .collect();
    Some(containment_verdict(&seen))
}

/// The effective uid of process `pid`, from `/proc/<pid>/status`.
fn effective_uid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Whether the enrolled workloads can walk away from their enrollment: a process running as root
/// can move itself to another cgroup (and read the agent's keys), and a user to whom a cgroup is
/// delegated can create sibling cgroups outside it.
pub fn containment_verdict(seen: &[Contained]) -> Check {
    const NAME: &str = "containment";
    let mut problems = Vec::new();
    for c in seen {
        if !c.root_pids.is_empty() {
            let shown: Vec<String> = c.root_pids.iter().take(5).map(u32::to_string).collect();
            problems.push(format!(
                "{}: {} process(es) run as root (pid {}{})",
                c.cgroup,
                c.root_pids.len(),
                shown.join(", "),
                if c.root_pids.len() > 5 { ", ..." } else { "" }
            ));
        }
        if let Some(uid) = c.delegated_to {
            problems.push(format!("{}: delegated to uid {uid}", c.cgroup));
        }
    }
    if problems.is_empty() {
        return Check::pass(
            NAME,
            format!(
                "{} enrolled cgroup(s); none runs a process as root or is delegated",
                seen.len()
            ),
        );
    }
    Check::warn(
        NAME,
        format!(
            "enrolled workloads could leave their cgroup: {}",
            problems.join("; ")
        ),
        "run workloads as an unprivileged user (`snowtrail exec --user USER`, or User= in the \
         unit), and do not delegate enrolled cgroups (Delegate=no)",
    )
}

/// The kernel release against [`MIN_KERNEL`].
pub fn kernel_check(release: &str) -> Check {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let (maj, min) = MIN_KERNEL;
    if version >= MIN_KERNEL {
        Check::pass("kernel", format!("Linux {release} ({maj}.{min} or later)"))
    } else {
        Check::fail(
            "kernel",
            format!("Linux {release} is older than {maj}.{min}"),
            format!("upgrade to Linux {maj}.{min} or later"),
        )
    }
}

/// Whether `CONFIG_CGROUP_BPF` is on: from the kernel's config when the host has it, else from
/// the kernel's symbols.
fn cgroup_bpf_check(release: &str) -> Check {
    let config = std::fs::read_to_string(format!("/boot/config-{release}")).ok();
    let symbols = || std::fs::read_to_string("/proc/kallsyms").ok();
    cgroup_bpf_verdict(config.as_deref(), symbols)
}

/// The verdict on `CONFIG_CGROUP_BPF` from the kernel config text, or failing that the symbols.
pub fn cgroup_bpf_verdict(config: Option<&str>, symbols: impl FnOnce() -> Option<String>) -> Check {
    const NAME: &str = "cgroup_bpf";
    const FIX: &str = "use a kernel built with CONFIG_CGROUP_BPF=y";
    if let Some(text) = config {
        return if text.lines().any(|l| l.trim() == "CONFIG_CGROUP_BPF=y") {
            Check::pass(NAME, "CONFIG_CGROUP_BPF=y in the kernel config")
        } else {
            Check::fail(
                NAME,
                "CONFIG_CGROUP_BPF is not set in the kernel config",
                FIX,
            )
        };
    }
    match symbols() {
        Some(s)
            if s.lines()
                .any(|l| l.ends_with(&format!(" {CGROUP_BPF_SYMBOL}"))) =>
        {
            Check::pass(
                NAME,
                format!("the kernel has cgroup BPF hooks ({CGROUP_BPF_SYMBOL})"),
            )
        }
        Some(_) => Check::fail(NAME, "the kernel has no cgroup BPF hooks", FIX),
        None => Check::warn(
            NAME,
            "cannot tell: no kernel config in /boot and /proc/kallsyms unreadable",
            "run doctor as root; the daemon's start fails clearly if the hooks are missing",
        ),
    }
}

/// bpffs mounted where the pins go.
fn bpffs_check(pin_dir: &Path) -> Check {
    let is_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
    };
    // The pin directory itself, or the nearest existing directory above it.
    let probe = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new(BPFFS));
    if is_bpffs(probe) {
        Check::pass(
            "bpffs",
            format!("bpffs mounted for the pins ({})", pin_dir.display()),
        )
    } else {
        Check::fail(
            "bpffs",
            format!("{} is not on a bpffs", probe.display()),
            format!(
                "`mount -t bpf bpf {BPFFS}` (systemd mounts it at boot), or point redirect.pin_dir below a bpffs"
            ),
        )
    }
}

/// Root, with the capabilities the daemon needs.
fn privileges_check() -> Check {
    if !nix::unistd::geteuid().is_root() {
        return Check::fail(
            "privileges",
            "not root: the control socket, the state and the kernel programs are root's",
            "run `sudo snowtrail doctor`",
        );
    }
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let missing: Vec<&str> = NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Check::pass("privileges", "root, with the capabilities the daemon needs")
    } else {
        Check::warn(
            "privileges",
            format!("root without {}", missing.join(", ")),
            "the daemon needs these (the systemd unit grants them); run doctor with them to check the host as the daemon sees it",
        )
    }
}

/// A directory the daemon writes: present, a directory, root's, not writable by others.
fn dir_check(name: &'static str, dir: &Path, mode: u32) -> Check {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Check::fail(
            name,
            format!("{} is not a directory", dir.display()),
            format!("remove it, or set {name} to a directory"),
        ),
        Ok(m) if m.uid() != 0 => Check::fail(
            name,
            format!("{} belongs to uid {}", dir.display(), m.uid()),
            format!("chown root:root {}", dir.display()),
        ),
        Ok(m) if m.mode() & 0o022 != 0 => Check::fail(
            name,
            format!(
                "{} is writable by others (mode {:o})",
                dir.display(),
                m.mode() & 0o7777
            ),
            format!("chmod {mode:o} {}", dir.display()),
        ),
        Ok(_) => Check::pass(name, format!("{} is root's", dir.display())),
        Err(e) => Check::fail(
            name,
            format!("{}: {e}", dir.display()),
            format!(
                "the package creates it; or `install -d -m {mode:o} {}`",
                dir.display()
            ),
        ),
    }
}

/// Free space on the file system holding `dir` (or the nearest existing parent).
fn space_check(name: &'static str, dir: &Path, unit: u64) -> Check {
    let probe = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match nix::sys::statvfs::statvfs(probe) {
        Ok(s) => {
            let free = s.blocks_available().saturating_mul(s.fragment_size());
            let total = s.blocks().saturating_mul(s.fragment_size());
            space_verdict(name, dir, free, total, unit)
        }
        Err(e) => Check::warn(
            name,
            format!("cannot measure free space at {}: {e}", probe.display()),
            "check the file system with df",
        ),
    }
}

/// The verdict on `free` of `total` bytes where files of about `unit` bytes are written: fail when
/// not one more fits, warn below four of them or 5% of the file system.
pub fn space_verdict(name: &'static str, dir: &Path, free: u64, total: u64, unit: u64) -> Check {
    let mib = |b: u64| b / (1024 * 1024);
    let detail = format!(
        "{} MiB free of {} MiB at {}",
        mib(free),
        mib(total),
        dir.display()
    );
    let fix = "free space there (the audit blocks statements when it cannot write, with on_audit_failure = \"block\")";
    if free < unit {
        Check::fail(name, detail, fix)
    } else if free < unit.saturating_mul(4) || free.saturating_mul(20) < total {
        Check::warn(name, detail, fix)
    } else {
        Check::pass(name, detail)
    }
}

/// One line per brokered identity: its key file is the agent's alone, parses, and has this
/// fingerprint (what Snowflake must show as the user's `RSA_PUBLIC_KEY_FP`).
pub fn broker_checks(config: &crate::broker::BrokerConfig) -> Vec<Check> {
    config
        .identities
        .iter()
        .map(|(identity, id)| {
            match crate::broker::SigningKey::load(&id.private_key) {
                Ok(k) => Check::pass(
                    "broker",
                    format!(
                        "{identity}: logs in as {} with {} (RSA {}, owner-only), fingerprint {}",
                        id.user,
                        id.private_key.display(),
                        k.bits(),
                        k.fingerprint()
                    ),
                ),
                Err(e) => {
                    let fix = match &e {
                        crate::broker::KeyError::Exposed { .. }
                        | crate::broker::KeyError::WrongOwner { .. } => format!(
                            "`chown root: {p} && chmod 600 {p}` (only the agent may read it)",
                            p = id.private_key.display()
                        ),
                        _ => "put the user's unencrypted PKCS#8 PEM RSA key there                               (`openssl pkcs8 -topk8 -nocrypt` converts others) and register its                               public key with `ALTER USER ... SET RSA_PUBLIC_KEY`"
                            .to_owned(),
                    };
                    Check::fail(
                        "broker",
                        format!("{identity}: logins cannot be brokered: {e}"),
                        fix,
                    )
                }
            }
        })
        .collect()
}

/// The agent's CA in the state directory.
/// Whether statement results are recorded (docs/decisions.md §21), to whom and where, or why not.
pub fn recording_check(config: &Config) -> Check {
    let r = &config.recording;
    match &r.recipient {
        None => Check::pass(
            "recording",
            "off: no recording.recipient is configured (statement results are not recorded; \
             `snowtrail recording keygen --out FILE` makes a key pair to turn it on)",
        ),
        Some(recipient) => {
            let dir = config.recording_dir.display();
            let off = if r.off_for_identities.is_empty() {
                String::new()
            } else {
                format!("; off for {}", r.off_for_identities.join(", "))
            };
            let detail = format!(
                "on: results encrypted to {recipient} in {dir} (at most {} bytes per statement, {} per session{off})",
                r.max_bytes_per_statement, r.max_bytes_per_session
            );
            if config.recording_dir.is_dir() {
                Check::pass("recording", detail)
            } else {
                Check::warn(
                    "recording",
                    format!("{detail}; {dir} does not exist yet"),
                    "the daemon creates it at start; check that its parent is writable",
                )
            }
        }
    }
}

fn ca_check(state_dir: &Path) -> Check {
    let cert = state_dir.join(crate::tls::ca::CA_CERT_FILE);
    let key = state_dir.join(crate::tls::ca::CA_KEY_FILE);
    match (cert.exists(), key.exists()) {
        (true, true) => Check::pass("ca", format!("{} and its key", cert.display())),
        _ => Check::fail(
            "ca",
            format!("no CA at {}", cert.display()),
            "`snowtrail ca init` (the package's installation runs it)",
        ),
    }
}

/// The agent's CA in the system trust store.
fn trust_check(state_dir: &Path) -> Check {
    let cert = state_dir.join(crate::tls::ca::CA_CERT_FILE);
    let Ok(pem) = std::fs::read_to_string(&cert) else {
        return Check::fail(
            "trust_store",
            "no CA to look for (see the ca check)",
            "`snowtrail ca init`, then add it to the system store",
        );
    };
    let store: Option<(PathBuf, String)> = crate::tls::ca::SYSTEM_BUNDLES.iter().find_map(|p| {
        std::fs::read_to_string(p)
            .ok()
            .map(|t| (PathBuf::from(p), t))
    });
    trust_verdict(&pem, store.as_ref().map(|(p, t)| (p.as_path(), t.as_str())))
}

/// Whether the certificate in `ca_pem` is among the system store's certificates.
pub fn trust_verdict(ca_pem: &str, store: Option<(&Path, &str)>) -> Check {
    const NAME: &str = "trust_store";
    const FIX: &str = "Debian/Ubuntu: `snowtrail ca export > /usr/local/share/ca-certificates/snowtrail-ca.crt && update-ca-certificates`; \
         RHEL/Fedora: `snowtrail ca export > /etc/pki/ca-trust/source/anchors/snowtrail-ca.pem && update-ca-trust extract` \
         (the package does this at installation)";
    let Some(ca) = crate::tls::ca::pem_certs(ca_pem).into_iter().next() else {
        return Check::fail(NAME, "the CA file holds no certificate", FIX);
    };
    let Some((path, text)) = store else {
        return Check::fail(NAME, "no system trust store found", FIX);
    };
    if crate::tls::ca::pem_certs(text).contains(&ca) {
        Check::pass(NAME, format!("the agent's CA is in {}", path.display()))
    } else {
        Check::fail(
            NAME,
            format!(
                "the agent's CA is not in {}: connector 5.x, Go and curl clients will reject the agent",
                path.display()
            ),
            FIX,
        )
    }
}

/// The daemon answering on its control socket, and its health.
fn daemon_check(socket: &Path) -> Check {
    const NAME: &str = "daemon";
    let status = Client::connect(socket).and_then(|mut c| c.call(&Request::Status));
    match status {
        Ok(Reply::Status(s)) if !s.audit.healthy => Check::fail(
            NAME,
            format!(
                "running (pid {}), but the audit journal cannot be written",
                s.pid
            ),
            "free space in state_dir, and check `journalctl -u snowtrail`",
        ),
        Ok(Reply::Status(s))
            if s.audit
                .digests
                .as_ref()
                .is_some_and(|d| d.overdue_s > 0 || d.error.is_some()) =>
        {
            let d = s.audit.digests.as_ref();
            Check::warn(
                NAME,
                format!(
                    "running (pid {}), but the signed digest chain is not kept up: {}",
                    s.pid,
                    d.and_then(|d| d.error.clone()).unwrap_or_else(|| format!(
                        "the next digest is {}s overdue",
                        d.map_or(0, |d| d.overdue_s)
                    ))
                ),
                "check state_dir/digest/signing.key and free space in audit_dir; `journalctl -u snowtrail` says why",
            )
        }
        Ok(Reply::Status(s)) => Check::pass(
            NAME,
            format!(
                "running (pid {}, up {}s): {} enrolled cgroup(s), programs attached to {} cgroup(s), {} statement(s) recorded",
                s.pid, s.uptime_s, s.enrolled, s.programs_attached, s.statements
            ),
        ),
        Ok(_) => Check::fail(
            NAME,
            "the daemon answered status with something else",
            "restart it: `systemctl restart snowtrail`",
        ),
        Err(e) => Check::fail(
            NAME,
            e.to_string(),
            "`systemctl start snowtrail` (`journalctl -u snowtrail` says why it stopped)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_per_brokered_identity() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.p8");
        std::fs::write(&good, include_str!("../../tests/fixtures/keypair/rsa-a.p8")).unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut cfg = crate::broker::BrokerConfig::default();
        for (name, path) in [("etl", good), ("bi", dir.path().join("missing.p8"))] {
            cfg.identities.insert(
                name.into(),
                crate::broker::BrokeredIdentity {
                    user: "SVC".into(),
                    private_key: path,
                    account: None,
                    role: None,
                },
            );
        }
        let checks = broker_checks(&cfg);
        assert_eq!(checks.len(), 2);
        // BTreeMap order: bi, then etl.
        assert_eq!(checks[0].status, Verdict::Fail);
        assert!(checks[0].detail.starts_with("bi: "), "{:?}", checks[0]);
        assert_eq!(checks[1].status, Verdict::Pass);
        assert!(
            checks[1]
                .detail
                .contains("SHA256:oVMVAlwycN5k0Ob7QL/zby9VkGXZUxbzYk233P7O+5o="),
            "{:?}",
            checks[1]
        );
        assert!(broker_checks(&crate::broker::BrokerConfig::default()).is_empty());
    }

    #[test]
    fn bypass_warns_of_unidentified_passthrough_and_wide_ranges() {
        let mut c = Config::default();
        assert_eq!(bypass_verdict(&c).status, Verdict::Pass);
        c.tls.allow_unverified = vec![
            "10.20.0.0/16:443".parse().unwrap(),
            "[2001:db8::]/64".parse().unwrap(),
        ];
        assert_eq!(bypass_verdict(&c).status, Verdict::Pass);
        c.tls
            .allow_unverified
            .push("0.0.0.0/0:443".parse().unwrap());
        let v = bypass_verdict(&c);
        assert_eq!(v.status, Verdict::Warn);
        assert!(v.detail.contains("0.0.0.0/0:443"), "{}", v.detail);
        c.tls.allow_unverified.clear();
        c.tls.unidentified = crate::config::Unidentified::Passthrough;
        let v = bypass_verdict(&c);
        assert_eq!(v.status, Verdict::Warn);
        assert!(v.detail.contains("by address"), "{}", v.detail);
    }

    #[test]
    fn containment_warns_of_root_processes_and_delegation() {
        let clean = Contained {
            cgroup: "/svc/etl".into(),
            root_pids: vec![],
            delegated_to: None,
        };
        let c = containment_verdict(std::slice::from_ref(&clean));
        assert_eq!(c.status, Verdict::Pass, "{c:?}");
        let rooted = Contained {
            cgroup: "/snowtrail/exec/r1".into(),
            root_pids: (1..=7).collect(),
            delegated_to: None,
        };
        let delegated = Contained {
            cgroup: "/user.slice/app".into(),
            root_pids: vec![],
            delegated_to: Some(1000),
        };
        let c = containment_verdict(&[clean, rooted, delegated]);
        assert_eq!(c.status, Verdict::Warn);
        assert!(
            c.detail
                .contains("/snowtrail/exec/r1: 7 process(es) run as root (pid 1, 2, 3, 4, 5, ...)"),
            "{}",
            c.detail
        );
        assert!(
            c.detail.contains("/user.slice/app: delegated to uid 1000"),
            "{}",
            c.detail
        );
        assert!(!c.detail.contains("/svc/etl"), "{}", c.detail);
        assert!(c.fix.as_deref().is_some_and(|f| f.contains("--user")));
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_check("6.18.44-fc-v669").status, Verdict::Pass);
        assert_eq!(kernel_check("5.15.0-91-generic").status, Verdict::Pass);
        let old = kernel_check("5.4.0-150-generic");
        assert_eq!(old.status, Verdict::Fail);
        assert!(old.fix.unwrap().contains("5.15"));
        assert_eq!(kernel_check("").status, Verdict::Fail);
    }

    #[test]
    fn cgroup_bpf_from_config_then_symbols() {
        let on = cgroup_bpf_verdict(Some("CONFIG_BPF=y\nCONFIG_CGROUP_BPF=y\n"), || None);
        assert_eq!(on.status, Verdict::Pass);
        let off = cgroup_bpf_verdict(Some("# CONFIG_CGROUP_BPF is not set\n"), || {
            panic!("the config decides")
        });
        assert_eq!(off.status, Verdict::Fail);
        let sym = cgroup_bpf_verdict(None, || {
            Some("0000000000000000 T __cgroup_bpf_run_filter_sock_addr\n".into())
        });
        assert_eq!(sym.status, Verdict::Pass);
        let none = cgroup_bpf_verdict(None, || Some("0000 T other\n".into()));
        assert_eq!(none.status, Verdict::Fail);
        assert_eq!(cgroup_bpf_verdict(None, || None).status, Verdict::Warn);
    }

    #[test]
    fn space_thresholds() {
        let d = Path::new("/var/lib/snowtrail");
        const MIB: u64 = 1024 * 1024;
        let unit = 256 * MIB;
        assert_eq!(
            space_verdict("s", d, 100 * MIB, 10_000 * MIB, unit).status,
            Verdict::Fail
        );
        assert_eq!(
            space_verdict("s", d, 512 * MIB, 1000 * MIB, unit).status,
            Verdict::Warn
        );
        assert_eq!(
            space_verdict("s", d, 2000 * MIB, 100_000 * MIB, unit).status,
            Verdict::Warn,
            "2% free"
        );
        let ok = space_verdict("s", d, 5000 * MIB, 10_000 * MIB, unit);
        assert_eq!(ok.status, Verdict::Pass);
        assert!(
            ok.detail.contains("5000 MiB free of 10000 MiB"),
            "{}",
            ok.detail
        );
    }

    #[test]
    fn trust_store_membership() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = crate::tls::Ca::init(dir.path(), "doctor-test").unwrap();
        let other = tempfile::tempdir().unwrap();
        let (other_ca, _) = crate::tls::Ca::init(other.path(), "other").unwrap();
        let store = Path::new("/etc/ssl/certs/ca-certificates.crt");
        let with = format!("{}{}", other_ca.cert_pem(), ca.cert_pem());
        assert_eq!(
            trust_verdict(ca.cert_pem(), Some((store, &with))).status,
            Verdict::Pass
        );
        let without = trust_verdict(ca.cert_pem(), Some((store, other_ca.cert_pem())));
        assert_eq!(without.status, Verdict::Fail);
        assert!(without.fix.unwrap().contains("update-ca-certificates"));
        assert_eq!(trust_verdict(ca.cert_pem(), None).status, Verdict::Fail);
        assert_eq!(trust_verdict("garbage", None).status, Verdict::Fail);
    }

    #[test]
    fn text_lists_fixes_and_a_summary() {
        let report = Report {
            ok: false,
            checks: vec![
                Check::pass("kernel", "Linux 6.1"),
                Check::fail("daemon", "not running", "systemctl start snowtrail"),
            ],
        };
        let t = text(&report);
        assert!(t.contains("PASS  kernel  Linux 6.1\n"), "{t}");
        assert!(t.contains("FAIL  daemon  not running\n"), "{t}");
        assert!(t.contains("fix: systemctl start snowtrail\n"), "{t}");
        assert!(t.ends_with("1 passed, 0 warning(s), 1 failed\n"), "{t}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["checks"][1]["status"], "fail");
        assert!(json["checks"][0].get("fix").is_none());
    }

    #[test]
    fn recording_says_on_or_off_and_why() {
        let mut c = Config::default();
        let off = recording_check(&c);
        assert_eq!(off.status, Verdict::Pass);
        assert!(
            off.detail.starts_with("off: no recording.recipient"),
            "{}",
            off.detail
        );
        let dir = tempfile::tempdir().unwrap();
        c.recording_dir = dir.path().to_owned();
        c.recording.recipient =
            Some("age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".into());
        c.recording.off_for_identities = vec!["etl".into()];
        let on = recording_check(&c);
        assert_eq!(on.status, Verdict::Pass);
        assert!(
            on.detail.starts_with("on: results encrypted to age1ql3z"),
            "{}",
            on.detail
        );
        assert!(on.detail.contains("off for etl"), "{}", on.detail);
    }
}
