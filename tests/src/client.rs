//! The test client: a small Python program that connects, says a line, and reports what happened.
//!
//! It prints one JSON object: its pid, its socket's local address, what `getpeername` says, the line
//! the server answered (the peer address the server saw), or the error.

use std::path::Path;
use std::process::Command;

/// The client program (run with `python3 -c`); arguments: host port [v6|mapped] [count].
pub const CLIENT_PY: &str = r#"
import json, os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "auto"
count = int(sys.argv[4]) if len(sys.argv) > 4 else 1
results = []
for _ in range(count):
    out = {"pid": os.getpid()}
    try:
        if mode == "mapped":
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            target = ("::ffff:" + host, port)
        elif ":" in host:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            target = (host, port)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = (host, port)
        s.settimeout(10)
        s.connect(target)
        out["local"] = "%s:%d" % s.getsockname()[:2] if s.family == socket.AF_INET else "[%s]:%d" % s.getsockname()[:2]
        p = s.getpeername()
        out["peer"] = "%s:%d" % p[:2] if s.family == socket.AF_INET else "[%s]:%d" % p[:2]
        s.sendall(b"ping\n")
        f = s.makefile("rb")
        out["reply"] = f.readline().decode().strip()
        s.close()
    except OSError as e:
        out["error"] = e.errno and __import__("errno").errorcode.get(e.errno) or str(e)
    results.append(out)
print(json.dumps(results if count > 1 else results[0]), flush=True)
"#;

/// A command running the client with the system Python.
pub fn client_command(host: &str, port: u16, mode: &str) -> Command {
    let mut c = Command::new("python3");
    c.arg("-c")
        .arg(CLIENT_PY)
        .arg(host)
        .arg(port.to_string())
        .arg(mode);
    c
}

/// The arguments that run the client, for `snowtrail exec -- ...`.
pub fn client_args(host: &str, port: u16, mode: &str) -> Vec<String> {
    vec![
        "python3".into(),
        "-c".into(),
        CLIENT_PY.into(),
        host.into(),
        port.to_string(),
        mode.into(),
    ]
}

/// Runs the client inside the cgroup at `cgroup_dir` (it joins before exec) and parses its report.
pub fn run_in_cgroup(
    cgroup_dir: &Path,
    host: &str,
    port: u16,
    mode: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut c = client_command(host, port, mode);
    join_cgroup(&mut c, cgroup_dir)?;
    parse(c.output()?)
}

/// Makes `c` join the cgroup at `cgroup_dir` between fork and exec.
pub fn join_cgroup(c: &mut Command, cgroup_dir: &Path) -> anyhow::Result<()> {
    let procs = cgroup_dir.join("cgroup.procs");
    let procs = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes())?;
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Parses a client's report from its output.
pub fn parse(out: std::process::Output) -> anyhow::Result<serde_json::Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).map_err(|e| {
        anyhow::anyhow!(
            "client printed no report ({e}); status {}; stdout {text}; stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
