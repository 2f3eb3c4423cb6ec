//! `snowtrail exec`: run a command inside a fresh enrolled cgroup.
//!
//! The daemon makes the cgroup (`<cgroup2>/snowtrail/exec/<run id>`) and attaches the programs; the
//! child moves itself into it between fork and exec, so not one of its connections escapes. The
//! control connection stays open while the command runs: when it closes, however the CLI ends, the
//! daemon removes the cgroup as soon as no process is left in it (children that outlive the command
//! stay enrolled until they end).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Context as _;

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

/// Runs `command` enrolled as `identity`; returns the command's exit code (128+N for signal N).
pub fn run(
    mut client: Client,
    identity: String,
    labels: BTreeMap<String, String>,
    ca_env: bool,
    command: &[String],
) -> anyhow::Result<ExitCode> {
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

    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if let (true, Some(bundle)) = (ca_env, &ca_bundle) {
        for var in CA_ENV {
            cmd.env(var, bundle);
        }
    }
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (open, write, close) on memory prepared before the fork.
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
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)))
}
