//! End-to-end tests of the foundation: the real daemon process, real cgroups and kernel hooks, and
//! clients that do not know they are being redirected. Root only.

use std::net::SocketAddr;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use snowtrail_tests::client::{self, client_args};
use snowtrail_tests::{
    Daemon, DaemonOptions, PeerServer, TestCgroup, snowtrail_bin, unique_port, wait_for,
};

/// Listen ports of this file's daemons start here.
const PORT_BASE: u16 = 29_430;

fn daemon(name: &str) -> Daemon {
    let opts = DaemonOptions {
        extra_top: snowtrail_tests::PLAIN_PEERS.to_owned(),
        ..DaemonOptions::default()
    };
    Daemon::start(name, unique_port(PORT_BASE), &opts).unwrap()
}

fn exec_client(
    d: &Daemon,
    identity: &str,
    labels: &[&str],
    host: &str,
    port: u16,
    mode: &str,
) -> Value {
    let mut args: Vec<String> = vec!["exec".into(), "--identity".into(), identity.into()];
    for l in labels {
        args.push("--label".into());
        args.push((*l).into());
    }
    args.push("--".into());
    args.extend(client_args(host, port, mode));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    client::parse(d.cli(&refs).unwrap()).unwrap()
}

fn is_proxied(report: &Value) -> bool {
    // The server answers with the peer it saw: the agent's socket when proxied, the client's own
    // socket when direct.
    report["error"].is_null() && report["reply"] != report["local"]
}

#[test]
fn exec_client_is_proxied_and_attributed() {
    let d = daemon("attr");
    let server = PeerServer::start("127.77.0.1:443".parse().unwrap()).unwrap();
    let r = exec_client(
        &d,
        "e2e-app",
        &["team=data", "tier=gold"],
        "127.77.0.1",
        443,
        "auto",
    );
    assert!(is_proxied(&r), "not proxied: {r}");
    assert_eq!(
        r["peer"], "127.77.0.1:443",
        "getpeername must show the original destination"
    );
    let pid = r["pid"].as_u64().unwrap();
    let ev = d
        .wait_event(|e| e["event_kind"] == "connection" && e["tgid"].as_u64() == Some(pid))
        .unwrap();
    assert_eq!(ev["workload_identity"], "e2e-app");
    assert_eq!(ev["labels"]["team"], "data");
    assert_eq!(ev["labels"]["tier"], "gold");
    assert_eq!(ev["comm"], "python3");
    assert!(ev["exe"].as_str().unwrap().contains("python"), "{ev}");
    assert_eq!(ev["user_name"], "root");
    assert_eq!(ev["dst_ip"], "127.77.0.1");
    assert_eq!(ev["dst_port"], 443);
    assert_eq!(ev["connection_mode"], "passthrough");
    assert_eq!(ev["bytes_in"], 5, "the client sent 'ping\\n'");
    assert_eq!(
        ev["bytes_out"].as_u64(),
        Some(r["reply"].as_str().unwrap().len() as u64 + 1)
    );
    assert!(
        ev["cgroup_path"]
            .as_str()
            .unwrap()
            .starts_with("/snowtrail/exec/"),
        "{ev}"
    );
    assert!(ev["cgroup_id"].as_u64().unwrap() > 0);
    assert_eq!(ev["close_reason"], "completed");
    // The server saw the agent's socket, not the client's.
    let seen: Vec<SocketAddr> = server.peers.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_ne!(seen[0].to_string(), r["local"].as_str().unwrap());

    // The same client, not enrolled, goes direct and leaves no event.
    let direct = client::parse(
        client::client_command("127.77.0.1", 443, "auto")
            .output()
            .unwrap(),
    )
    .unwrap();
    assert!(direct["error"].is_null(), "{direct}");
    assert_eq!(
        direct["reply"], direct["local"],
        "an unenrolled client must reach the server itself"
    );
    // An enrolled connection made after it: once its event is in, the direct one's would be too.
    wait_for_marker(&d, "127.77.0.1");
    let dpid = direct["pid"].as_u64();
    assert!(!d.events().iter().any(|e| e["tgid"].as_u64() == dpid));
}

#[test]
fn other_ports_are_untouched() {
    let d = daemon("ports");
    let _server = PeerServer::start("127.77.0.2:8080".parse().unwrap()).unwrap();
    let r = exec_client(&d, "e2e-ports", &[], "127.77.0.2", 8080, "auto");
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(r["reply"], r["local"], "port 8080 is not intercepted: {r}");
    let _marker_server = PeerServer::start("127.77.0.2:443".parse().unwrap()).unwrap();
    wait_for_marker(&d, "127.77.0.2");
    let pid = r["pid"].as_u64();
    assert!(!d.events().iter().any(|e| e["tgid"].as_u64() == pid));
}

/// Makes an enrolled connection to `host`:443 (a [`PeerServer`] listens there) and waits for its
/// connection event: the positive signal that the daemon has recorded what came before it, after
/// which an event that did not come will not come.
fn wait_for_marker(d: &Daemon, host: &str) {
    let marker = exec_client(d, "e2e-marker", &[], host, 443, "auto");
    assert!(is_proxied(&marker), "{marker}");
    let pid = marker["pid"].as_u64();
    d.wait_event(|e| e["event_kind"] == "connection" && e["tgid"].as_u64() == pid)
        .unwrap();
}

#[test]
fn ipv6_and_v4_mapped_destinations_are_redirected() {
    let d = daemon("v6");
    let _v6 = PeerServer::start("[::1]:443".parse().unwrap()).unwrap();
    let r = exec_client(&d, "e2e-v6", &[], "::1", 443, "auto");
    assert!(is_proxied(&r), "{r}");
    assert_eq!(r["peer"], "[::1]:443");
    let pid = r["pid"].as_u64();
    let ev = d.wait_event(|e| e["tgid"].as_u64() == pid).unwrap();
    assert_eq!(ev["dst_ip"], "::1");

    let _v4 = PeerServer::start("127.77.0.3:443".parse().unwrap()).unwrap();
    let m = exec_client(&d, "e2e-mapped", &[], "127.77.0.3", 443, "mapped");
    assert!(m["error"].is_null(), "{m}");
    assert_eq!(m["peer"], "[::ffff:127.77.0.3]:443", "{m}");
    let pid = m["pid"].as_u64();
    let ev = d.wait_event(|e| e["tgid"].as_u64() == pid).unwrap();
    assert_eq!(ev["dst_ip"], "127.77.0.3");
    assert_eq!(ev["workload_identity"], "e2e-mapped");
}

/// What a command run with `exec --user` finds itself to be: ids, privileges, cgroup, whether it
/// can leave the cgroup or read the CA bundle it was given, and one connection's report.
const WHOAMI_PY: &str = r#"
import json, os, sys
out = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
       "home": os.environ.get("HOME"), "user": os.environ.get("USER")}
status = open("/proc/self/status").read()
out["no_new_privs"] = [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs:")][0]
out["cgroup"] = open("/proc/self/cgroup").read().strip().split("::")[-1]
try:
    with open(sys.argv[1] + "/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    out["left"] = True
except OSError as e:
    out["left"] = False
    out["leave_error"] = e.errno
bundle = os.environ.get("SSL_CERT_FILE", "")
out["bundle_readable"] = bool(bundle) and "snowtrail agent CA" in open(bundle).read()
print(json.dumps(out), flush=True)
"#;

#[test]
fn exec_as_a_user_cannot_leave_its_cgroup() {
    let d = daemon("execuser");
    let mount = snowtrail::cgroup::mount_point().unwrap();
    let out = d
        .cli(&[
            "exec",
            "--identity",
            "e2e-user",
            "--user",
            "nobody",
            "--group",
            "nogroup",
            "--",
            "python3",
            "-c",
            WHOAMI_PY,
            mount.to_str().unwrap(),
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let me: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} / {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(me["uid"], 65534, "{me}");
    assert_eq!(me["euid"], 65534, "{me}");
    assert_eq!(me["gid"], 65534, "{me}");
    assert_eq!(me["groups"], serde_json::json!([65534]), "{me}");
    assert_eq!(me["user"], "nobody");
    assert_eq!(me["home"], "/nonexistent");
    assert_eq!(
        me["no_new_privs"], "1",
        "a setuid program could give root back: {me}"
    );
    assert!(
        me["cgroup"]
            .as_str()
            .unwrap()
            .starts_with("/snowtrail/exec/"),
        "{me}"
    );
    assert_eq!(me["left"], false, "the workload moved itself out: {me}");
    assert_eq!(me["bundle_readable"], true, "{me}");

    // Its connections are attributed to that user.
    let _server = PeerServer::start("127.77.0.8:443".parse().unwrap()).unwrap();
    let mut args: Vec<String> = ["exec", "--identity", "e2e-user", "--user", "65534", "--"]
        .map(String::from)
        .to_vec();
    args.extend(client_args("127.77.0.8", 443, "auto"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = client::parse(d.cli(&refs).unwrap()).unwrap();
    assert!(is_proxied(&r), "{r}");
    let pid = r["pid"].as_u64();
    let ev = d.wait_event(|e| e["tgid"].as_u64() == pid).unwrap();
    assert_eq!(ev["uid"], 65534, "{ev}");
    assert_eq!(ev["user_name"], "nobody", "{ev}");

    // A user that does not exist is an error before anything is enrolled.
    let out = d
        .cli(&[
            "exec",
            "--identity",
            "e2e-user",
            "--user",
            "no-such-user-here",
            "--",
            "true",
        ])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no user \"no-such-user-here\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exec_passes_output_and_exit_code_and_covers_descendants() {
    let d = daemon("exec");
    let out = d
        .cli(&[
            "exec",
            "--identity",
            "e2e-exit",
            "--",
            "sh",
            "-c",
            "echo hello; echo oops >&2; exit 7",
        ])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(out.status.code(), Some(7));

    // A signal that kills the command gives 128+N.
    let out = d
        .cli(&[
            "exec",
            "--identity",
            "e2e-sig",
            "--",
            "sh",
            "-c",
            "kill -TERM $$",
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(128 + 15));

    // A grandchild (sh -> sh -> python) opening its own connection is covered too.
    let _server = PeerServer::start("127.77.0.4:443".parse().unwrap()).unwrap();
    let script = format!(
        "sh -c 'exec python3 -c \"$0\" 127.77.0.4 443 auto' {}",
        shell_quote(snowtrail_tests::client::CLIENT_PY)
    );
    let out = d
        .cli(&[
            "exec",
            "--identity",
            "e2e-nested",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .unwrap();
    let r = client::parse(out).unwrap();
    assert!(is_proxied(&r), "{r}");
    let pid = r["pid"].as_u64();
    let ev = d.wait_event(|e| e["tgid"].as_u64() == pid).unwrap();
    assert_eq!(ev["workload_identity"], "e2e-nested");

    // Once the commands ended, their cgroups are gone.
    let list = wait_for(Duration::from_secs(10), || {
        let l = d.cli_ok(&["list", "--json"]).ok()?;
        let v: Value = serde_json::from_str(&l).ok()?;
        v.as_array().is_some_and(|a| a.is_empty()).then_some(v)
    });
    assert!(
        list.is_some(),
        "exec cgroups were not removed: {}",
        d.cli_ok(&["list"]).unwrap()
    );
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A workload that stays up across daemon restarts: a Python loop in an enrolled cgroup that makes
/// one connection per line on its stdin.
struct Workload {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

const WORKLOAD_PY: &str = r#"
import json, socket, sys
for line in sys.stdin:
    host, port = line.split()
    out = {}
    try:
        s = socket.create_connection((host, int(port)), timeout=10)
        out["local"] = "%s:%d" % s.getsockname()[:2]
        s.sendall(b"ping\n")
        out["reply"] = s.makefile("rb").readline().decode().strip()
        s.close()
    except OSError as e:
        out["error"] = __import__("errno").errorcode.get(e.errno, str(e))
    print(json.dumps(out), flush=True)
"#;

impl Workload {
    fn start(cgroup: &TestCgroup) -> Workload {
        let procs = std::ffi::CString::new(
            cgroup
                .dir
                .join("cgroup.procs")
                .as_os_str()
                .as_encoded_bytes(),
        )
        .unwrap();
        let mut c = Command::new("python3");
        c.arg("-c")
            .arg(WORKLOAD_PY)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        let mut child = c.spawn().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Workload { child, stdout }
    }

    fn connect(&mut self, target: &str) -> Value {
        use std::io::{BufRead as _, Write as _};
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{}", target.replace(':', " ")).unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn fail_closed_then_served_again_and_fail_open() {
    let mut d = daemon("failmode");
    let cg = TestCgroup::new("failmode").unwrap();
    let _server = PeerServer::start("127.77.0.5:443".parse().unwrap()).unwrap();
    d.cli_ok(&["enroll", "--cgroup", &cg.rel, "--identity", "e2e-fail"])
        .unwrap();
    let mut w = Workload::start(&cg);
    let target = "127.77.0.5:443";
    assert!(
        is_proxied(&w.connect(target)),
        "enrolled workload must be proxied"
    );

    // Daemon stopped (fail closed): refused, not sent around the agent.
    d.stop().unwrap();
    let r = w.connect(target);
    assert_eq!(r["error"], "ECONNREFUSED", "fail-closed must refuse: {r}");

    // Daemon back: the same process is served again, its enrollment restored from state.
    d.start_again().unwrap();
    assert!(is_proxied(&w.connect(target)));
    assert!(d.cli_ok(&["list"]).unwrap().contains("e2e-fail"));

    // Killed (a crash): still closed.
    d.kill();
    assert_eq!(w.connect(target)["error"], "ECONNREFUSED");
    d.start_again().unwrap();
    assert!(is_proxied(&w.connect(target)));

    // Fail open: a clean stop detaches, and the workload goes direct.
    d.set_fail_open(true).unwrap();
    d.restart().unwrap();
    assert!(is_proxied(&w.connect(target)));
    d.stop().unwrap();
    let r = w.connect(target);
    assert!(
        r["error"].is_null(),
        "fail-open must let traffic through: {r}"
    );
    assert_eq!(r["reply"], r["local"], "fail-open traffic goes direct: {r}");
}

#[test]
fn connection_without_origin_record_is_refused() {
    let d = daemon("relay");
    let r = client::parse(
        client::client_command("127.0.0.1", d.listen_port, "auto")
            .output()
            .unwrap(),
    )
    .unwrap();
    // The agent resets the connection instead of relaying it anywhere.
    assert!(r["reply"].as_str().unwrap_or("").is_empty(), "{r}");
    let status: Value = serde_json::from_str(&d.cli_ok(&["status", "--json"]).unwrap()).unwrap();
    assert!(
        status["connections_refused"].as_u64().unwrap() >= 1,
        "{status}"
    );
}

#[test]
fn list_shows_identity_processes_and_connections() {
    let d = daemon("list");
    let cg = TestCgroup::new("list").unwrap();
    let _server = PeerServer::start("127.77.0.6:443".parse().unwrap()).unwrap();
    d.cli_ok(&[
        "enroll",
        "--cgroup",
        &cg.dir.to_string_lossy(),
        "--identity",
        "e2e-list",
        "--label",
        "env=test",
    ])
    .unwrap();
    let r = client::run_in_cgroup(&cg.dir, "127.77.0.6", 443, "auto").unwrap();
    assert!(is_proxied(&r), "{r}");
    let rows: Value = serde_json::from_str(&d.cli_ok(&["list", "--json"]).unwrap()).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["identity"] == "e2e-list")
        .unwrap()
        .clone();
    assert_eq!(row["cgroup"], cg.rel.as_str());
    assert_eq!(row["labels"]["env"], "test");
    let conns = wait_for(Duration::from_secs(5), || {
        let rows: Value = serde_json::from_str(&d.cli_ok(&["list", "--json"]).ok()?).ok()?;
        let n = rows[0]["connections"].as_u64()?;
        (n >= 1).then_some(n)
    });
    assert_eq!(conns, Some(1));
    let table = d.cli_ok(&["list"]).unwrap();
    assert!(table.lines().next().unwrap().starts_with("IDENTITY"));
    assert!(table.contains("e2e-list") && table.contains(&cg.rel));

    // --pid enrolls the process's cgroup; a nested cgroup gets the deepest identity.
    let inner = cg.child("inner").unwrap();
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    snowtrail::cgroup::move_pid(&inner, sleeper.id()).unwrap();
    d.cli_ok(&[
        "enroll",
        "--pid",
        &sleeper.id().to_string(),
        "--identity",
        "e2e-inner",
    ])
    .unwrap();
    let r = client::run_in_cgroup(&inner, "127.77.0.6", 443, "auto").unwrap();
    let pid = r["pid"].as_u64();
    let ev = d.wait_event(|e| e["tgid"].as_u64() == pid).unwrap();
    assert_eq!(ev["workload_identity"], "e2e-inner");
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    d.cli_ok(&["unenroll", "--identity", "e2e-inner"]).unwrap();
    d.cli_ok(&["unenroll", "--cgroup", &cg.rel]).unwrap();
    let r = client::run_in_cgroup(&cg.dir, "127.77.0.6", 443, "auto").unwrap();
    assert_eq!(
        r["reply"], r["local"],
        "an unenrolled cgroup goes direct: {r}"
    );
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cli_errors_are_clear() {
    let d = daemon("errors");
    let cg = TestCgroup::new("errors").unwrap();

    let out = Command::new(snowtrail_bin())
        .args(["--control-socket", "/nonexistent/snowtrail.sock", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("daemon is not running"),
        "{}",
        stderr_of(&out)
    );

    let out = d
        .cli(&["enroll", "--cgroup", "/no/such/cgroup", "--identity", "x"])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("does not exist"),
        "{}",
        stderr_of(&out)
    );

    d.cli_ok(&["enroll", "--cgroup", &cg.rel, "--identity", "first"])
        .unwrap();
    let out = d
        .cli(&["enroll", "--cgroup", &cg.rel, "--identity", "second"])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("already enrolled as first"),
        "{}",
        stderr_of(&out)
    );

    let out = d
        .cli(&[
            "enroll",
            "--cgroup",
            &cg.rel,
            "--identity",
            "x",
            "--label",
            "novalue",
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("invalid label"),
        "{}",
        stderr_of(&out)
    );

    let out = d
        .cli(&["enroll", "--cgroup", "/", "--identity", "x"])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("holds the snowtrail daemon"),
        "{}",
        stderr_of(&out)
    );

    // Not root.
    let mut c = Command::new(snowtrail_bin());
    c.args(["--control-socket"]).arg(&d.socket).arg("list");
    // SAFETY: setuid between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("must be root"),
        "{}",
        stderr_of(&out)
    );

    // cgroup v2 not mounted: in a private mount namespace without it.
    let mount = snowtrail::cgroup::mount_point().unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "umount -l {} && exec {} --control-socket {} list",
            mount.display(),
            snowtrail_bin().display(),
            d.socket.display()
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("cgroup v2 is not mounted"),
        "{}",
        stderr_of(&out)
    );
    assert!(out.status.signal().is_none());
}

#[test]
fn the_audit_cli_reads_what_the_daemon_wrote() {
    let mut d = daemon("auditcli");
    let _server = PeerServer::start("127.77.0.7:443".parse().unwrap()).unwrap();
    let r = exec_client(&d, "e2e-audit", &["team=audit"], "127.77.0.7", 443, "auto");
    assert!(is_proxied(&r), "{r}");
    let pid = r["pid"].as_u64();
    let ev = d.wait_event(|e| e["tgid"].as_u64() == pid).unwrap();
    d.stop().unwrap();
    let dir = d.audit_dir.to_string_lossy().into_owned();

    let ls = d.cli_ok(&["audit", "ls", &dir]).unwrap();
    assert!(ls.contains("date="), "{ls}");
    let verify = d.cli(&["audit", "verify", &dir]).unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    let tail = d
        .cli_ok(&[
            "audit",
            "tail",
            "--json",
            "--kind",
            "connection",
            "--identity",
            "e2e-audit",
            "--dir",
            &dir,
        ])
        .unwrap();
    let rows: Vec<Value> = tail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{tail}");
    assert_eq!(rows[0]["event_id"], ev["event_id"]);

    // Start and stop were recorded as lifecycle events.
    let all = d.events();
    let actions: Vec<&str> = all
        .iter()
        .filter(|e| e["event_kind"] == "lifecycle")
        .filter_map(|e| e["lifecycle_action"].as_str())
        .collect();
    assert!(
        actions.contains(&"start") && actions.contains(&"stop"),
        "{actions:?}"
    );

    let conn = ev["connection_id"].as_u64().unwrap().to_string();
    let replay = d
        .cli_ok(&["replay", "--session", &conn, "--dir", &dir])
        .unwrap();
    assert!(replay.contains("connection"), "{replay}");
    let out = d
        .cli(&["replay", "--session", "no-such-session", "--dir", &dir])
        .unwrap();
    assert!(!out.status.success());
}

/// `status` names the digest chain's head (the value an operator compares with an off-host copy)
/// and says nothing is late while digests are written (lateness itself needs a minute's grace to
/// pass, and is covered by the unit tests of `chain_status` and of the status text).
#[test]
fn status_reports_the_digest_chain_head() {
    let mut d = daemon("digests");
    let digests = |d: &Daemon| -> Value {
        let s: Value = serde_json::from_str(&d.cli_ok(&["status", "--json"]).unwrap()).unwrap();
        s["audit"]["digests"].clone()
    };
    let first = digests(&d);
    assert_eq!(first["overdue_s"], 0, "{first}");
    assert!(first["error"].is_null(), "{first}");
    // A stop writes a digest; with a one-second interval the running daemon keeps writing them.
    d.stop().unwrap();
    let mut config = std::fs::read_to_string(&d.config).unwrap();
    assert!(
        config.trim_end().ends_with("max_file_age_s = 1"),
        "{config}"
    );
    config.push_str("digest_interval_s = 1\n");
    std::fs::write(&d.config, &config).unwrap();
    d.start_again().unwrap();
    let head = wait_for(Duration::from_secs(20), || {
        let g = digests(&d);
        (g["sequence"].as_u64()? >= 3).then_some(g)
    })
    .unwrap_or_else(|| panic!("no digests written:\n{}", d.logs()));
    let path = head["path"].as_str().unwrap();
    assert!(path.starts_with("_digests/date="), "{head}");
    let bytes = std::fs::read(d.audit_dir.join(path)).unwrap();
    let text = d.cli_ok(&["status"]).unwrap();
    assert!(text.contains("digests: #"), "{text}");
    assert!(!text.contains("WARNING"), "{text}");
    assert_eq!(
        head["sha256"].as_str().unwrap(),
        snowtrail::audit::digest::sha256_hex(&bytes),
        "{head}"
    );
}
