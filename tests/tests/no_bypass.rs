//! An enrolled workload that tries to reach Snowflake around the agent, the way a hostile or
//! careless one would, under `snowtrail exec` against the fake Snowflake behind TLS. Each attempt
//! logs in and sends a statement; the proof is the fake's own log of what it received: nothing
//! the audit lacks. Root only (real cgroups, real redirect).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::Value;
use snowtrail_tests::session::{self, ACCOUNT_HOST, PASSWORD};
use snowtrail_tests::wait_for;

const PORT_BASE: u16 = 29_680;
const IP: [u8; 4] = [127, 77, 12, 1];

/// The attacker: logs in and runs one statement over one TLS connection it drives by hand (a
/// memory BIO), so it can send its ClientHello late, in pieces, under another name or none. One
/// JSON line: its pid, and what came back or the error.
const ATTACK_PY: &str = r#"
import json, os, socket, ssl, sys, time
ip, host, password, mode, sql = sys.argv[1:6]
out = {"mode": mode, "pid": os.getpid()}

def context(verify):
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx

def session(name, verify, first=None, pause=0.0, delay=0.0):
    """A TLS connection to ip:443 named `name` (None: no SNI). The ClientHello is sent after
    `delay` seconds, its first `first` bytes then the rest after `pause` seconds."""
    s = socket.create_connection((ip, 443), timeout=20)
    inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context(verify).wrap_bio(inc, outb, server_hostname=name)
    time.sleep(delay)
    hello_sent = False
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outb.read()
            if pending:
                if not hello_sent and first is not None:
                    s.sendall(pending[:first])
                    time.sleep(pause)
                    s.sendall(pending[first:])
                else:
                    s.sendall(pending)
                hello_sent = True
            data = s.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake")
            inc.write(data)
    pending = outb.read()
    if pending:
        s.sendall(pending)
    return s, tls, inc, outb

def exchange(conn, method, path, body, token=None):
    s, tls, inc, outb = conn
    payload = json.dumps(body).encode()
    head = "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: %d\r\n" % (method, path, host, len(payload))
    if token:
        head += 'Authorization: Snowflake Token="%s"\r\n' % token
    tls.write(head.encode() + b"\r\n" + payload)
    s.sendall(outb.read())
    got = b""
    while True:
        try:
            chunk = tls.read(65536)
            got += chunk
        except ssl.SSLWantReadError:
            data = s.recv(65536)
            if not data:
                break
            inc.write(data)
            continue
        head_end = got.find(b"\r\n\r\n")
        if head_end >= 0:
            headers = got[:head_end].decode("latin-1").lower()
            length = [int(l.split(":")[1]) for l in headers.split("\r\n") if l.startswith("content-length:")]
            if length and len(got) >= head_end + 4 + length[0]:
                return json.loads(got[head_end + 4:head_end + 4 + length[0]])
    raise ConnectionError("no whole answer")

try:
    if mode == "late_hello":
        conn = session(host, True, delay=2.5)
    elif mode == "split_slow":
        conn = session(host, True, first=60, pause=2.5)
    elif mode == "split_quick":
        conn = session(host, True, first=60, pause=0.3)
    elif mode == "foreign_sni":
        conn = session("bypass.example.com", False)
    elif mode == "no_sni":
        conn = session(None, False)
    elif mode == "plain":
        conn = session(host, True)
    else:
        raise ValueError(mode)
    login = exchange(conn, "POST", "/session/v1/login-request?requestId=a1",
                     {"data": {"LOGIN_NAME": "attacker", "PASSWORD": password, "ACCOUNT_NAME": "xy12345",
                               "CLIENT_APP_ID": "PythonConnector", "CLIENT_APP_VERSION": "4.8.1"}})
    token = login["data"]["token"]
    answer = exchange(conn, "POST", "/queries/v1/query-request?requestId=b2",
                      {"sqlText": sql, "sequenceId": 1}, token)
    out["success"] = answer.get("success")
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out), flush=True)
"#;

fn attack(s: &session::Setup, mode: &str, sql: &str) -> anyhow::Result<Value> {
    let ip = format!("{}.{}.{}.{}", IP[0], IP[1], IP[2], IP[3]);
    let mut inner = Command::new("python3");
    inner.args(["-c", ATTACK_PY, &ip, ACCOUNT_HOST, PASSWORD, mode, sql]);
    let out = s.daemon.exec_command("e2e-bypass", &inner).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "{mode}: no report; stdout {text}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn connection_of(s: &session::Setup, pid: Option<u64>) -> anyhow::Result<Value> {
    wait_for(Duration::from_secs(20), || {
        s.daemon
            .events()
            .into_iter()
            .find(|e| e["tgid"].as_u64() == pid && e["event_kind"] == "connection")
    })
    .with_context(|| format!("no connection event for pid {pid:?}"))
}

#[test]
fn a_workload_cannot_reach_snowflake_around_the_audit() -> anyhow::Result<()> {
    let mut s = session::setup("nobypass", IP, PORT_BASE, None, |_| String::new())?;
    let text = std::fs::read_to_string(&s.daemon.config)?
        .replace("[proxy]\n", "[proxy]\nhello_timeout_ms = 1500\n");
    std::fs::write(&s.daemon.config, text)?;
    s.daemon.restart()?;

    // Each way around: refused before a byte reaches the upstream, and recorded as such.
    for (mode, close, flag) in [
        (
            "late_hello",
            "denied: unidentified traffic",
            Some("hello_incomplete"),
        ),
        (
            "split_slow",
            "denied: unidentified traffic",
            Some("hello_incomplete"),
        ),
        ("no_sni", "denied: unidentified traffic", Some("no_sni")),
        ("foreign_sni", "denied: unverified destination", None),
    ] {
        let sql = format!("select '{mode}' as attempt");
        let r = attack(&s, mode, &sql)?;
        ensure!(r.get("error").is_some(), "{mode} got through: {r}");
        let ev = connection_of(&s, r["pid"].as_u64())?;
        ensure!(ev["connection_mode"] == "refused", "{mode}: {ev}");
        ensure!(ev["decision"] == "deny", "{mode}: {ev}");
        ensure!(ev["close_reason"] == close, "{mode}: {ev}");
        if let Some(flag) = flag {
            ensure!(
                ev["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == flag)),
                "{mode}: {ev}"
            );
        }
        if mode == "foreign_sni" {
            ensure!(ev["sni"] == "bypass.example.com", "{ev}");
            ensure!(
                ev["error_message"]
                    .as_str()
                    .is_some_and(|m| m.contains("not valid for bypass.example.com")),
                "{ev}"
            );
        }
        ensure!(
            s.fake.requests().is_empty(),
            "{mode}: the upstream received {:?}",
            s.fake.requests()
        );
    }

    // A ClientHello in two pieces that arrives whole in time is read like any other: the
    // connection is intercepted, and everything the upstream received is in the audit.
    let sql = "select 'split_quick' as attempt";
    let r = attack(&s, "split_quick", sql)?;
    ensure!(r["success"] == true, "{r}");
    let ev = connection_of(&s, r["pid"].as_u64())?;
    ensure!(ev["connection_mode"] == "intercepted", "{ev}");
    let received = s.fake.sql_texts();
    ensure!(received == [sql.to_owned()], "{received:?}");
    let audited = wait_for(Duration::from_secs(20), || {
        s.daemon
            .events()
            .into_iter()
            .find(|e| e["event_kind"] == "query" && e["sql_text"] == sql)
    });
    ensure!(
        audited.is_some(),
        "the statement the upstream ran is not in the audit"
    );
    ensure!(
        s.daemon
            .events()
            .iter()
            .any(|e| e["event_kind"] == "login" && e["login_user"] == "attacker"),
        "the login the upstream accepted is not in the audit"
    );
    Ok(())
}

/// A workload that holds open connections: `n` TLS connections to ip:443 named `host`, each held
/// for `hold` seconds; one JSON line: its pid and how many handshakes succeeded.
const HOG_PY: &str = r#"
import json, os, socket, ssl, sys, time
ip, host, n, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
ctx = ssl.create_default_context()
held, refused = [], 0
for _ in range(n):
    try:
        s = socket.create_connection((ip, 443), timeout=10)
        held.append(ctx.wrap_socket(s, server_hostname=host))
    except OSError:
        refused += 1
print(json.dumps({"pid": os.getpid(), "held": len(held), "refused": refused}), flush=True)
time.sleep(hold)
"#;

#[test]
fn one_workload_cannot_take_every_connection_slot() -> anyhow::Result<()> {
    let mut s = session::setup("noslots", [127, 77, 12, 2], PORT_BASE + 5, None, |_| {
        String::new()
    })?;
    let text = std::fs::read_to_string(&s.daemon.config)?
        .replace("[proxy]\n", "[proxy]\nmax_connections_per_enrollment = 4\n");
    std::fs::write(&s.daemon.config, text)?;
    s.daemon.restart()?;

    // Workload A takes its four slots and holds them; its other connections are refused.
    let mut hog = Command::new("python3");
    hog.args(["-c", HOG_PY, "127.77.12.2", ACCOUNT_HOST, "10", "20"]);
    let mut a = s
        .daemon
        .exec_command("e2e-hog", &hog)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(a.stdout.take().context("no stdout")?),
        &mut line,
    )?;
    let report: Value = serde_json::from_str(line.trim()).with_context(|| line.clone())?;
    ensure!(report["held"] == 4 && report["refused"] == 6, "{report}");
    let refused = wait_for(Duration::from_secs(20), || {
        let n = s
            .daemon
            .events()
            .iter()
            .filter(|e| {
                e["workload_identity"] == "e2e-hog"
                    && e["close_reason"] == "denied: connection limit"
                    && e["connection_mode"] == "refused"
            })
            .count();
        (n == 6).then_some(n)
    });
    ensure!(refused.is_some(), "the refusals are not in the audit");

    // Workload B, enrolled apart, is served while A holds its slots.
    let mut inner = Command::new("python3");
    inner.args([
        "-c",
        ATTACK_PY,
        "127.77.12.2",
        ACCOUNT_HOST,
        PASSWORD,
        "plain",
        "select 'b' as other",
    ]);
    let out = s.daemon.exec_command("e2e-other", &inner).output()?;
    let b: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())?;
    ensure!(b["success"] == true, "{b}");
    let _ = a.kill();
    let _ = a.wait();
    Ok(())
}

/// A client of Snowflake's SQL API with a driver session's token: logs in, submits a statement
/// synchronously, one asynchronously (then asks for its status), and one a rule denies. One JSON
/// line with what each got.
const SQL_API_PY: &str = r#"
import http.client, json, os, socket, ssl, sys
ip, host, password = sys.argv[1:4]
class Conn(http.client.HTTPSConnection):
    def connect(self):
        s = socket.create_connection((ip, 443), timeout=20)
        self.sock = self._context.wrap_socket(s, server_hostname=self.host)
def call(method, path, body=None, token=None):
    c = Conn(host, 443, context=ssl.create_default_context())
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = 'Snowflake Token="%s"' % token
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None
out = {"pid": os.getpid()}
_, login = call("POST", "/session/v1/login-request?requestId=l1",
    {"data": {"LOGIN_NAME": "api_user", "PASSWORD": password, "ACCOUNT_NAME": "xy12345",
              "CLIENT_APP_ID": "curl", "CLIENT_APP_VERSION": "8"}})
token = login["data"]["token"]
s, r = call("POST", "/api/v2/statements?requestId=s1", {"statement": "select 1", "timeout": 60}, token)
out["sync"] = [s, r.get("statementHandle"), r.get("data")]
s, r = call("POST", "/api/v2/statements?requestId=s2&async=true", {"statement": "select 'a' as x"}, token)
handle = r.get("statementHandle")
s2, r2 = call("GET", "/api/v2/statements/" + handle, None, token)
out["async"] = [s, handle, s2, r2.get("data")]
s, r = call("POST", "/api/v2/statements?requestId=s3", {"statement": "drop table orders"}, token)
out["denied"] = [s, r.get("code"), r.get("message"), r.get("statementHandle")]
print(json.dumps(out), flush=True)
"#;

const DENY_DROPS: &str = r#"
[default]
action = "allow"

[[rule]]
name = "no-drops"
action = "deny"
[rule.when]
statement = ["DROP"]
"#;

#[test]
fn statements_through_the_sql_api_are_audited_and_judged() -> anyhow::Result<()> {
    let s = session::setup(
        "sqlapi",
        [127, 77, 12, 3],
        PORT_BASE + 10,
        Some(DENY_DROPS),
        |_| String::new(),
    )?;
    let mut inner = Command::new("python3");
    inner.args(["-c", SQL_API_PY, "127.77.12.3", ACCOUNT_HOST, PASSWORD]);
    let out = s.daemon.exec_command("e2e-sqlapi", &inner).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "no report; stdout {text}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    // The client got Snowflake's answers, and the API's own error for the denied statement.
    ensure!(
        r["sync"][0] == 200 && r["sync"][2] == serde_json::json!([["1"]]),
        "{r}"
    );
    ensure!(r["async"][0] == 202 && r["async"][2] == 200, "{r}");
    ensure!(r["async"][3] == serde_json::json!([["a"]]), "{r}");
    ensure!(r["denied"][0] == 422 && r["denied"][1] == "003001", "{r}");
    ensure!(
        r["denied"][2]
            .as_str()
            .is_some_and(|m| m.contains("no-drops")),
        "{r}"
    );

    // The upstream ran two statements and never saw the third.
    let submitted: Vec<String> = s
        .fake
        .requests()
        .iter()
        .filter(|q| q.path == "/api/v2/statements")
        .filter_map(|q| q.json()?.get("statement")?.as_str().map(str::to_owned))
        .collect();
    ensure!(
        submitted == ["select 1", "select 'a' as x"],
        "{submitted:?}"
    );
    // Each with the agent's QUERY_TAG naming the run, which joins Snowflake's history to the audit.
    for q in s
        .fake
        .requests()
        .iter()
        .filter(|q| q.path == "/api/v2/statements")
    {
        let tag = q
            .json()
            .and_then(|b| b["parameters"]["query_tag"].as_str().map(str::to_owned))
            .context("no query_tag")?;
        ensure!(tag.contains("\"snowtrail\""), "{tag}");
    }

    // Each is one query event under its handle, with the workload and the session's user.
    let pid = r["pid"].as_u64();
    let events = wait_for(Duration::from_secs(20), || {
        let ev: Vec<Value> = s
            .daemon
            .events()
            .into_iter()
            .filter(|e| e["tgid"].as_u64() == pid)
            .collect();
        let queries = ev.iter().filter(|e| e["event_kind"] == "query").count();
        let denials = ev.iter().filter(|e| e["event_kind"] == "denial").count();
        (queries == 2 && denials == 1).then_some(ev)
    })
    .with_context(|| format!("events: {:#?}", s.daemon.events()))?;
    for (sql, handle) in [
        ("select 1", &r["sync"][1]),
        ("select 'a' as x", &r["async"][1]),
    ] {
        let q = events
            .iter()
            .find(|e| e["event_kind"] == "query" && e["sql_text"] == sql)
            .with_context(|| format!("no event for {sql}"))?;
        ensure!(q["query_id"] == *handle, "{q}");
        ensure!(q["success"] == true && q["rows_produced"] == 1, "{q}");
        ensure!(
            q["driver"] == "SQL API" && q["login_user"] == "api_user",
            "{q}"
        );
        ensure!(q["workload_identity"] == "e2e-sqlapi", "{q}");
    }
    let d = events
        .iter()
        .find(|e| e["event_kind"] == "denial")
        .context("no denial")?;
    ensure!(
        d["sql_text"] == "drop table orders" && d["policy_rule"] == "no-drops",
        "{d}"
    );
    ensure!(d["query_id"] == r["denied"][3], "{d}");
    Ok(())
}

/// Where the restart test's fake listens.
const RESTART_IP: [u8; 4] = [127, 77, 12, 4];

/// Runs the attacker's `plain` session as a process placed in `cgroup` before it execs: what a
/// unit's process does when it connects at start. It trusts the agent's CA bundle.
fn session_in_cgroup(
    s: &session::Setup,
    cgroup: &std::path::Path,
    sql: &str,
) -> anyhow::Result<Value> {
    let ip = s.fake.addr().ip().to_string();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(cgroup)
        .args([
            "python3",
            "-c",
            ATTACK_PY,
            &ip,
            ACCOUNT_HOST,
            PASSWORD,
            "plain",
            sql,
        ]);
    for v in snowtrail_tests::fake_snowflake::drivers::CA_VARS {
        cmd.env_remove(v);
    }
    cmd.env("SSL_CERT_FILE", s.daemon.state_dir.join("ca-bundle.pem"));
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "no report; stdout {text}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A unit that restarts in a loop and connects at once: each restart makes its cgroup again at the
/// enrolled path, with a new id no program is attached to yet. Every session of every restart is
/// intercepted and audited under the enrollment's identity (the guard on the parent sends the
/// first connects of a new cgroup to the agent); a sibling cgroup no enrollment covers still
/// reaches its destination, unrecorded.
#[test]
fn a_unit_restarting_in_a_loop_never_reaches_snowflake_unaudited() -> anyhow::Result<()> {
    let s = session::setup("restartloop", RESTART_IP, PORT_BASE + 30, None, |_| {
        String::new()
    })?;
    let unit = snowtrail_tests::TestCgroup::new("restartloop")?;
    s.daemon.cli_ok(&[
        "enroll",
        "--cgroup",
        &unit.rel,
        "--identity",
        "e2e-restarting",
    ])?;
    let mut sent = Vec::new();
    let mut guarded = 0;
    for round in 0..5 {
        if round > 0 {
            // The unit stops and starts again: a new cgroup at the same path.
            snowtrail_tests::remove_cgroup(&unit.dir);
            std::fs::create_dir_all(&unit.dir)?;
        }
        let sql = format!("select {round} as restart_round");
        let r = session_in_cgroup(&s, &unit.dir, &sql)?;
        ensure!(r["success"] == true, "round {round}: {r}");
        sent.push(sql);
        let ev = connection_of(&s, r["pid"].as_u64())?;
        ensure!(
            ev["connection_mode"] == "intercepted",
            "round {round}: {ev}"
        );
        ensure!(
            ev["workload_identity"] == "e2e-restarting",
            "round {round}: {ev}"
        );
        if ev["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "guarded"))
        {
            guarded += 1;
        }
    }
    ensure!(
        s.fake.sql_texts() == sent,
        "the upstream ran {:?}; the sessions sent {sent:?}",
        s.fake.sql_texts()
    );
    for sql in &sent {
        let audited = wait_for(Duration::from_secs(20), || {
            s.daemon
                .events()
                .into_iter()
                .find(|e| e["event_kind"] == "query" && e["sql_text"] == sql.as_str())
        });
        ensure!(
            audited.is_some(),
            "{sql} ran upstream but is not in the audit"
        );
    }
    eprintln!("{guarded} of 5 sessions reached the agent through the guard");

    // A sibling nobody enrolled: its connect goes through (relayed once, then straight), and the
    // audit has no row of it.
    let sibling = unit.sibling("bystander")?;
    let ip = RESTART_IP.map(|b| b.to_string()).join(".");
    for _ in 0..2 {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
            .arg("sh")
            .arg(&sibling)
            .args([
                "python3",
                "-c",
                "import os,socket,sys; socket.create_connection((sys.argv[1], 443), timeout=10).close(); print(os.getpid())",
                &ip,
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "the bystander could not connect: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        std::thread::sleep(Duration::from_millis(500));
        ensure!(
            !s.daemon
                .events()
                .iter()
                .any(|e| e["tgid"].as_u64() == Some(pid)),
            "a process no enrollment covers is in the audit"
        );
    }
    Ok(())
}

/// A statement the upstream answers with HTTP 503 twice before it runs it: the driver retries it
/// with the same request id, and the audit has it once, with the attempts counted and the last
/// outcome. Both Python connectors.
#[test]
fn a_statement_retried_after_server_errors_is_one_event() -> anyhow::Result<()> {
    let s = session::setup("retries", [127, 77, 12, 5], PORT_BASE + 40, None, |_| {
        String::new()
    })?;
    for (driver, sql) in [
        (
            snowtrail_tests::fake_snowflake::drivers::Driver::Py4,
            "select 4 as retried /*fail:2*/",
        ),
        (
            snowtrail_tests::fake_snowflake::drivers::Driver::Py5,
            "select 5 as retried /*fail:2*/",
        ),
    ] {
        let lines = session::run_driver(&s, driver, "e2e-retries", &[], &[sql])?;
        let rows = session::rows(&lines, sql)?;
        ensure!(rows.len() == 1, "{}: {rows:?}", driver.name());
        let attempts = s.fake.sql_texts().iter().filter(|t| *t == sql).count();
        ensure!(
            attempts == 3,
            "{}: the upstream saw {attempts} attempts",
            driver.name()
        );
        let ev = wait_for(Duration::from_secs(20), || {
            s.daemon
                .events()
                .into_iter()
                .find(|e| e["event_kind"] == "query" && e["sql_text"] == sql)
        })
        .with_context(|| format!("{}: {sql} is not in the audit", driver.name()))?;
        let rows_of_it = s
            .daemon
            .events()
            .iter()
            .filter(|e| e["event_kind"] == "query" && e["sql_text"] == sql)
            .count();
        ensure!(rows_of_it == 1, "{}: {rows_of_it} rows", driver.name());
        ensure!(ev["attempts"] == 3, "{}: {ev}", driver.name());
        ensure!(ev["success"] == true, "{}: {ev}", driver.name());
    }
    Ok(())
}

/// Where the proxy test's fake Snowflake and HTTP proxy listen.
const PROXIED_IP: [u8; 4] = [127, 77, 12, 6];
const PROXY_ADDR: &str = "127.77.12.7:3128";

/// A workload that opens its own tunnel through the proxy to `bypass.example.com` and speaks TLS
/// inside it naming `argv[3]` (certificate checks off), then logs in. One JSON line: what came
/// back or the error.
const TUNNEL_PY: &str = r#"
import json, socket, ssl, sys
proxy_ip, proxy_port, name, host, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
out = {}
try:
    s = socket.create_connection((proxy_ip, proxy_port), timeout=20)
    s.sendall(b"CONNECT bypass.example.com:443 HTTP/1.1\r\nHost: bypass.example.com:443\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError("closed before the proxy's answer")
        answer += chunk
    out["answer"] = answer.split(b"\r\n")[0].decode()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(s, server_hostname=name)
    body = json.dumps({"data": {"LOGIN_NAME": "tunneller", "PASSWORD": password, "ACCOUNT_NAME": "xy12345"}}).encode()
    tls.sendall(b"POST /session/v1/login-request?requestId=t1 HTTP/1.1\r\nHost: " + host.encode() +
                b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    out["reply"] = tls.recv(65536).decode(errors="replace")[:200]
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out), flush=True)
"#;

/// Both Python connectors with `HTTPS_PROXY` set: their tunnels to the account are answered by the
/// agent, which intercepts the TLS inside and goes upstream through the same proxy; every statement
/// is audited once, with the same results as without a proxy. A tunnel to another host that carries
/// TLS for the account, or that leads to a Snowflake front under another name, is refused, and the
/// upstream receives nothing of it.
#[test]
fn connections_through_an_https_proxy_are_audited_and_cannot_hide_snowflake() -> anyhow::Result<()>
{
    use snowtrail_tests::fake_snowflake::drivers::Driver;
    let mut s = session::setup("proxied", PROXIED_IP, PORT_BASE + 50, None, |_| {
        String::new()
    })?;
    let proxy_addr: std::net::SocketAddr = PROXY_ADDR.parse()?;
    let routes = std::collections::HashMap::from([
        (ACCOUNT_HOST.to_owned(), s.fake.addr()),
        ("bypass.example.com".to_owned(), s.fake.addr()),
    ]);
    let proxy = snowtrail_tests::connect_proxy::ConnectProxy::start(proxy_addr, routes)?;
    let text = std::fs::read_to_string(&s.daemon.config)?.replace(
        "[redirect]\n",
        &format!("[redirect]\nproxy_ports = [{}]\n", proxy_addr.port()),
    );
    std::fs::write(&s.daemon.config, text)?;
    s.daemon.restart()?;

    let proxy_url = format!("http://{proxy_addr}");
    for (driver, identity, sql) in [
        (
            Driver::Py4,
            "e2e-proxied-4",
            "select 'py4 behind a proxy' as via",
        ),
        (
            Driver::Py5,
            "e2e-proxied-5",
            "select 'py5 behind a proxy' as via",
        ),
    ] {
        let mut cmd =
            session::exec_session(&s, driver, identity, &[], &["--proxy", &proxy_url, sql])?;
        cmd.env("HTTPS_PROXY", &proxy_url)
            .env("https_proxy", &proxy_url)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        let out = cmd.output()?;
        let lines = session::output_lines(&s, driver, &out)?;
        let rows = session::rows(&lines, sql)?;
        ensure!(rows.len() == 1, "{}: {rows:?}", driver.name());
        let audited = wait_for(Duration::from_secs(20), || {
            let n = s
                .daemon
                .events()
                .iter()
                .filter(|e| e["event_kind"] == "query" && e["sql_text"] == sql)
                .count();
            (n > 0).then_some(n)
        });
        ensure!(
            audited == Some(1),
            "{}: {audited:?} rows of {sql}",
            driver.name()
        );
        // Its connections went to the proxy, and the agent intercepted the tunnel.
        let proxied = wait_for(Duration::from_secs(20), || {
            let v: Vec<Value> = s
                .daemon
                .events()
                .into_iter()
                .filter(|e| e["event_kind"] == "connection" && e["workload_identity"] == identity)
                .collect();
            (!v.is_empty()).then_some(v)
        })
        .with_context(|| format!("{}: no connection recorded", driver.name()))?;
        for ev in &proxied {
            let via_proxy = ev["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "via_proxy"));
            ensure!(via_proxy, "{}: not through the proxy: {ev}", driver.name());
            ensure!(ev["connection_mode"] == "intercepted", "{ev}");
            ensure!(ev["http_method"] == "CONNECT", "{ev}");
            ensure!(ev["http_path"] == format!("{ACCOUNT_HOST}:443"), "{ev}");
        }
    }
    // The upstream was reached through the proxy, and only ever for the account (the agent's own
    // tunnels, shared by both sessions' exchanges).
    let targets = proxy.targets();
    ensure!(
        !targets.is_empty() && targets.iter().all(|t| *t == format!("{ACCOUNT_HOST}:443")),
        "the proxy was asked for {targets:?}"
    );

    // Tunnels that try to hide the account.
    let received = s.fake.requests().len();
    for name in [ACCOUNT_HOST, "bypass.example.com"] {
        let mut inner = Command::new("python3");
        inner.args([
            "-c",
            TUNNEL_PY,
            &proxy_addr.ip().to_string(),
            &proxy_addr.port().to_string(),
            name,
            ACCOUNT_HOST,
            PASSWORD,
        ]);
        let out = s.daemon.exec_command("e2e-tunneller", &inner).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let r: Value = serde_json::from_str(text.trim())
            .with_context(|| format!("{name}: no report: {text}"))?;
        ensure!(r.get("error").is_some(), "{name}: got through: {r}");
        let ev = wait_for(Duration::from_secs(20), || {
            s.daemon.events().into_iter().find(|e| {
                e["event_kind"] == "connection"
                    && e["workload_identity"] == "e2e-tunneller"
                    && e["sni"] == name
            })
        })
        .with_context(|| format!("{name}: no connection event"))?;
        ensure!(ev["connection_mode"] == "refused", "{name}: {ev}");
        ensure!(
            ev["close_reason"] == "denied: unverified destination",
            "{name}: {ev}"
        );
        ensure!(ev["http_path"] == "bypass.example.com:443", "{name}: {ev}");
    }
    ensure!(
        s.fake.requests().len() == received,
        "the upstream received {:?}",
        &s.fake.requests()[received..]
    );
    Ok(())
}

/// What a locked-down workload tries: one line of JSON with each attempt's outcome.
const LOCKED_PY: &str = r#"
import errno, json, socket, sys
allowed_ip, allowed_port, fake_ip, resolver = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = {}
def attempt(name, f):
    try:
        f()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
attempt("tcp_closed_port", lambda: socket.create_connection(("127.0.0.1", 1), timeout=5).close())
attempt("quic", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (fake_ip, 443)))
attempt("tcp_allowed", lambda: socket.create_connection((allowed_ip, allowed_port), timeout=5).close())
if resolver:
    attempt("dns", lambda: socket.socket(socket.AF_INET6 if ":" in resolver else socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (resolver, 53)))
print(json.dumps(out), flush=True)
"#;

/// `enroll --lockdown`: the workload's connects and UDP sends go only to intercepted ports (its
/// statements still work, audited), `redirect.lockdown_allow` and the host's resolvers; a TCP
/// connect to another port and a QUIC send fail with EPERM and are recorded as denials of its
/// identity, and counted on its enrollment.
#[test]
fn a_locked_down_workload_reaches_only_snowflake_and_what_is_allowed() -> anyhow::Result<()> {
    const LOCKED_IP: [u8; 4] = [127, 77, 12, 8];
    let mut s = session::setup("lockdown", LOCKED_IP, PORT_BASE + 60, None, |_| {
        String::new()
    })?;
    let allowed = snowtrail_tests::PeerServer::start("127.77.12.9:7000".parse()?)?;
    let text = std::fs::read_to_string(&s.daemon.config)?.replace(
        "[redirect]\n",
        "[redirect]\nlockdown_allow = [\"127.77.12.9:7000\"]\n",
    );
    std::fs::write(&s.daemon.config, text)?;
    s.daemon.restart()?;
    let cg = snowtrail_tests::TestCgroup::new("lockdown")?;
    s.daemon.cli_ok(&[
        "enroll",
        "--cgroup",
        &cg.rel,
        "--identity",
        "e2e-locked",
        "--lockdown",
    ])?;
    let resolver = snowtrail::config::destination::resolvers(
        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    )
    .first()
    .map(ToString::to_string)
    .unwrap_or_default();
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(&cg.dir)
        .args([
            "python3",
            "-c",
            LOCKED_PY,
            "127.77.12.9",
            "7000",
            &LOCKED_IP.map(|b| b.to_string()).join("."),
            &resolver,
        ])
        .output()?;
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "no report: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    ensure!(r["tcp_closed_port"] == "EPERM", "{r}");
    ensure!(r["quic"] == "EPERM", "{r}");
    ensure!(r["tcp_allowed"] == "ok", "{r}");
    if !resolver.is_empty() {
        ensure!(r["dns"] == "ok", "the resolver {resolver} is allowed: {r}");
    }
    let _ = &allowed;

    // Snowflake itself is an intercepted port: the session works and is audited.
    let sql = "select 'locked down' as still_works";
    let session = session_in_cgroup(&s, &cg.dir, sql)?;
    ensure!(session["success"] == true, "{session}");

    let denials = wait_for(Duration::from_secs(20), || {
        let v: Vec<Value> = s
            .daemon
            .events()
            .into_iter()
            .filter(|e| e["event_kind"] == "denial" && e["workload_identity"] == "e2e-locked")
            .collect();
        (v.len() >= 2).then_some(v)
    })
    .context("the refusals are not in the audit")?;
    let tcp = denials
        .iter()
        .find(|e| e["detail"] == "tcp")
        .context("no tcp denial")?;
    ensure!(
        tcp["dst_ip"] == "127.0.0.1" && tcp["dst_port"] == 1,
        "{tcp}"
    );
    ensure!(
        tcp["close_reason"] == "denied: lockdown" && tcp["decision"] == "deny",
        "{tcp}"
    );
    let udp = denials
        .iter()
        .find(|e| e["detail"] == "udp")
        .context("no udp denial")?;
    ensure!(udp["dst_port"] == 443, "{udp}");
    ensure!(
        s.daemon
            .events()
            .iter()
            .any(|e| e["event_kind"] == "query" && e["sql_text"] == sql),
        "the statement is not in the audit"
    );
    let list: Value = serde_json::from_str(&s.daemon.cli_ok(&["list", "--json"])?)?;
    let row = list
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["identity"] == "e2e-locked"))
        .context("the enrollment is not listed")?;
    ensure!(
        row["lockdown"] == true && row["denials"].as_u64() >= Some(2),
        "{row}"
    );
    Ok(())
}
