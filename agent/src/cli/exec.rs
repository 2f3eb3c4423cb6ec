//! `snowtrail exec`: run a command inside a fresh enrolled cgroup.
//!
//! The daemon makes the cgroup (`<cgroup2>/snowtrail/exec/<run id>`) and attaches the programs; the
//! child moves itself into it between fork and exec, so not one of its connections escapes. The
//! control connection stays open while the command runs: when it closes, however the CLI ends, the
//! daemon removes the cgroup as soon as no process is left in it (children that outlive the command
//! stay enrolled until they end).
//!
//! With `--user`, the child drops to that user (its groups, then its gid, then its uid, and
//! `no_new_privs` so that no setuid program gives root back) after it joined the cgroup and
//! before exec: a workload running as root could move itself out of its cgroup or read the
//! agent's keys. The CA bundle is then handed to it as a root-owned, world-readable copy, since
//! the state directory it lives in is the agent's alone.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context as _, bail};
use nix::unistd::{Gid, Group, Uid, User};

use crate::control::{Client, Reply, Request};

/// The variables through which drivers find their trusted roots: Python connector 4.x (requests),
/// connector 5.x and OpenSSL-based clients, curl, and Node.
pub const CA_ENV: &[&str] = &[
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
];

/// The running child, for the signal forwarder.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// The user a command runs as, resolved before anything is enrolled.
#[derive(Debug, Clone)]
pub struct RunAs {
    /// The user's name, for USER and LOGNAME.
    pub name: String,
    /// The uid to run as.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// Every group the process holds: the user's groups and the primary gid.
    pub groups: Vec<u32>,
    /// The user's home directory, for HOME.
    pub home: std::path::PathBuf,
}

impl RunAs {
    /// Looks up `user` (a name or a uid) and `group` (a name or a gid; the user's own if `None`)
    /// in the host's user and group databases.
    pub fn lookup(user: &str, group: Option<&str>) -> anyhow::Result<RunAs> {
        let found = match user.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(user),
        }
        .with_context(|| format!("cannot look up user {user:?}"))?;
        let Some(u) = found else {
            bail!(
                "no user {user:?} on this host (--user takes a name or a uid from the passwd database)"
            );
        };
        let gid = match group {
            None => u.gid,
            Some(g) => {
                let found = match g.parse::<u32>() {
                    Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
                    Err(_) => Group::from_name(g),
                }
                .with_context(|| format!("cannot look up group {g:?}"))?;
                match found {
                    Some(grp) => grp.gid,
                    None => bail!("no group {g:?} on this host"),
                }
            }
        };
        let name = CString::new(u.name.as_bytes()).context("user name contains a NUL byte")?;
        let mut groups: Vec<u32> = nix::unistd::getgrouplist(&name, u.gid)
            .with_context(|| format!("cannot list the groups of {}", u.name))?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        if !groups.contains(&gid.as_raw()) {
            groups.push(gid.as_raw());
        }
        Ok(RunAs {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: gid.as_raw(),
            groups,
            home: u.dir,
        })
    }
}

/// What `exec` runs the command as: its identity and labels, its trust, its user.
pub struct Spec {
    /// Workload identity of the new enrollment.
    pub identity: String,
    /// Labels recorded with each event.
    pub labels: BTreeMap<String, String>,
    /// Point the command's CA variables at the agent's bundle.
    pub ca_env: bool,
    /// Run as this user instead of the caller.
    pub run_as: Option<RunAs>,
}

/// A root-owned, world-readable copy of the CA bundle for a command that runs as another user;
/// removed when dropped.
struct SharedBundle(std::path::PathBuf);

impl SharedBundle {
    fn copy(bundle: &std::path::Path, run: &str) -> anyhow::Result<SharedBundle> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let text = std::fs::read(bundle)
            .with_context(|| format!("cannot read the CA bundle {}", bundle.display()))?;
        let path = std::env::temp_dir().join(format!("snowtrail-ca-{run}.pem"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        f.write_all(&text)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(SharedBundle(path))
    }
}

impl Drop for SharedBundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `command` enrolled as `spec` says; returns the command's exit code (128+N for signal N).
pub fn run(mut client: Client, spec: Spec, command: &[String]) -> anyhow::Result<ExitCode> {
    let Spec {
        identity,
        labels,
        ca_env,
        run_as,
    } = spec;
    let (program, args) = command.split_first().context("no command given")?;
    let reply = client.call(&Request::ExecBegin { identity, labels })?;
    let Reply::Enrolled {
        cgroup,
        cgroup_dir,
        ca_bundle,
        ..
    } = reply
    else {
        anyhow::bail!("the daemon did not return the exec cgroup");
    };
    let procs = CString::new(cgroup_dir.join("cgroup.procs").as_os_str().as_bytes())
        .context("cgroup path contains a NUL byte")?;

    let shared = match (&run_as, ca_env, &ca_bundle) {
        (Some(_), true, Some(bundle)) => {
            match SharedBundle::copy(bundle, cgroup.rsplit('/').next().unwrap_or("exec")) {
                Ok(s) => Some(s),
                Err(e) => {
                    let _ = client.call(&Request::ExecEnd { cgroup });
                    return Err(e);
                }
            }
        }
        _ => None,
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if let (true, Some(bundle)) = (ca_env, &ca_bundle) {
        let bundle = shared.as_ref().map_or(bundle.as_path(), |s| s.0.as_path());
        for var in CA_ENV {
            cmd.env(var, bundle);
        }
    }
    if let Some(r) = &run_as {
        cmd.env("HOME", &r.home)
            .env("USER", &r.name)
            .env("LOGNAME", &r.name);
    }
    let ids = run_as.as_ref().map(|r| (r.uid, r.gid, r.groups.clone()));
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (open, write, close, setgroups, setgid, setuid, prctl) on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
            // Only now, inside the cgroup, give up root: groups, then gid, then uid.
            if let Some((uid, gid, groups)) = &ids
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                    || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = client.call(&Request::ExecEnd { cgroup });
            return Err(e).with_context(|| format!("cannot run {program}"));
        }
    };
    CHILD.store(i32::try_from(child.id()).unwrap_or(0), Ordering::Relaxed);
    // The terminal sends SIGINT/SIGQUIT to the whole foreground group, child included: the CLI
    // ignores them and waits. SIGTERM/SIGHUP sent to the CLI alone are passed on.
    // SAFETY: installing handlers; `forward` only calls kill(2).
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, forward as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, forward as *const () as libc::sighandler_t);
    }
    let status = child.wait().context("waiting for the command")?;
    let _ = client.call(&Request::ExecEnd { cgroup });
    drop(shared);
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)))
}
