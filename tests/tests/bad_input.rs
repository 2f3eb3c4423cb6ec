//! Bad input on an intercepted port: every case gets a bounded, clean outcome, is audited, and the
//! agent keeps serving others. Root only (real cgroups, real redirect).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::Value;
use snowtrail_tests::fake_snowflake::{FakeOptions, FakeSnowflake};
use snowtrail_tests::{Daemon, DaemonOptions, unique_port, wait_for};

const PORT_BASE: u16 = 29_630;
const HOST: &str = "xy12345.snowflakecomputing.com";

/// The misbehaving client: one mode per case, one JSON line of what it saw.
const CLIENT_PY: &str = r#"
import gzip, json, os, socket, ssl, sys
ip, mode = sys.argv[1], sys.argv[2]
out = {"mode": mode, "pid": os.getpid()}
def raw(data, read=True):
    s = socket.create_connection((ip, 443), timeout=20)
    if data:
        s.sendall(data)
    got = b""
    if read:
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                got += b
        except OSError as e:
            out["error"] = type(e).__name__
    s.close()
    return got
try:
    if mode == "plain_http":
        out["reply"] = raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").decode("latin-1")[:60]
    elif mode == "garbage":
        out["reply"] = raw(os.urandom(3000)).decode("latin-1")[:60]
    elif mode == "truncated_hello":
        ctx = ssl.create_default_context()
        inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, outb, server_hostname=sys.argv[3])
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outb.read()
        out["reply"] = raw(hello[:40]).decode("latin-1")[:60]
    elif mode == "silent_after_hello":
        ctx = ssl.create_default_context()
        inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, outb, server_hostname=sys.argv[3])
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        got = raw(outb.read())
        out["reply_len"] = len(got)
    elif mode == "gzip_bomb":
        ctx = ssl.create_default_context()
        s = socket.create_connection((ip, 443), timeout=20)
        t = ctx.wrap_socket(s, server_hostname=sys.argv[3])
        body = gzip.compress(b"{\"sqlText\": \"" + b"a" * (64 * 1024 * 1024) + b"\"}")
        head = ("POST /queries/v1/query-request?requestId=bomb HTTP/1.1\r\nHost: %s\r\n"
                "Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
                "Content-Length: %d\r\nConnection: close\r\n\r\n" % (sys.argv[3], len(body))).encode()
        t.sendall(head + body)
        resp = b""
        while True:
            b = t.recv(65536)
            if not b:
                break
            resp += b
        out["compressed"] = len(body)
        out["reply"] = resp.decode("latin-1")
    elif mode == "good":
        ctx = ssl.create_default_context()
        s = socket.create_connection((ip, 443), timeout=20)
        t = ctx.wrap_socket(s, server_hostname=sys.argv[3])
        t.sendall(("POST /session/heartbeat HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % sys.argv[3]).encode())
        resp = b""
        while True:
            b = t.recv(65536)
            if not b:
                break
            resp += b
        out["reply"] = resp.decode("latin-1")[:12]
except Exception as e:
    out["exception"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out), flush=True)
"#;

fn run(d: &Daemon, ip: &str, mode: &str) -> anyhow::Result<Value> {
    let out = Command::new(snowtrail_tests::snowtrail_bin())
        .arg("--control-socket")
        .arg(&d.socket)
        .args([
            "exec",
            "--identity",
            "e2e-bad",
            "--",
            "python3",
            "-c",
            CLIENT_PY,
            ip,
            mode,
            HOST,
        ])
        .env_remove("SSL_CERT_DIR")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "{mode}: no report; stdout {text}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn event_of(d: &Daemon, pid: Option<u64>, kind: &str) -> anyhow::Result<Value> {
    wait_for(Duration::from_secs(20), || {
        d.events()
            .into_iter()
            .find(|e| e["tgid"].as_u64() == pid && e["event_kind"] == kind)
    })
    .with_context(|| format!("no {kind} event for pid {pid:?}: {:#?}", d.events()))
}

#[test]
fn bad_input_gets_a_bounded_clean_outcome() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.77.4.1";
    let fake = FakeSnowflake::start(FakeOptions {
        addr: SocketAddr::from(([127, 77, 4, 1], 443)),
        tls: true,
        hosts: vec![HOST.to_owned()],
        ca_dir: dir.path().join("ca"),
        ..FakeOptions::default()
    })?;
    let opts = DaemonOptions {
        extra_top: format!(
            "[tls]\nupstream_extra_roots = [{:?}]\n[limits]\nmax_request_bytes = 1048576\n",
            fake.ca_pem_path().display().to_string()
        ),
        ..DaemonOptions::default()
    };
    let mut d = Daemon::start("badinput", unique_port(PORT_BASE), &opts)?;
    // Short handshake and ClientHello timeouts so the silent and the truncating clients are cut
    // off quickly.
    let text = std::fs::read_to_string(&d.config)?.replace(
        "[proxy]\n",
        "[proxy]\nhandshake_timeout_ms = 1000\nhello_timeout_ms = 1000\n",
    );
    std::fs::write(&d.config, text)?;
    d.restart()?;

    // Nothing that cannot be identified is carried: plain HTTP, garbage and a ClientHello cut
    // short are refused (a reset), recorded as refused with the reason.
    for (mode, flag) in [
        ("plain_http", "not_tls"),
        ("garbage", "not_tls"),
        ("truncated_hello", "hello_incomplete"),
    ] {
        let r = run(&d, ip, mode)?;
        ensure!(r.get("exception").is_none(), "{r}");
        ensure!(r["reply"] == "", "{mode}: the client got an answer: {r}");
        let ev = event_of(&d, r["pid"].as_u64(), "connection")?;
        ensure!(ev["connection_mode"] == "refused", "{mode}: {ev}");
        ensure!(ev["decision"] == "deny", "{mode}: {ev}");
        ensure!(
            ev["close_reason"] == "denied: unidentified traffic",
            "{mode}: {ev}"
        );
        ensure!(
            ev["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == flag)),
            "{mode}: {ev}"
        );
    }
    ensure!(
        fake.requests().is_empty(),
        "refused connections reached the upstream: {:?}",
        fake.requests()
    );

    let r = run(&d, ip, "silent_after_hello")?;
    ensure!(r.get("exception").is_none(), "{r}");
    let ev = event_of(&d, r["pid"].as_u64(), "connection")?;
    ensure!(ev["connection_mode"] == "intercepted", "{ev}");
    ensure!(
        ev["close_reason"]
            .as_str()
            .is_some_and(|c| c.contains("timed out")),
        "{ev}"
    );

    let r = run(&d, ip, "gzip_bomb")?;
    let reply = r["reply"].as_str().context("no reply to the gzip bomb")?;
    ensure!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let body: Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap_or(""))
        .context("no JSON body")?;
    ensure!(body["success"] == false, "{body}");
    ensure!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("larger than")),
        "{body}"
    );
    let denial = event_of(&d, r["pid"].as_u64(), "denial")?;
    ensure!(denial["decision"] == "deny", "{denial}");
    ensure!(
        !fake
            .requests()
            .iter()
            .any(|q| q.path.contains("query-request")),
        "the bomb reached Snowflake"
    );

    // The agent still serves a well-behaved client.
    let r = run(&d, ip, "good")?;
    ensure!(
        r["reply"]
            .as_str()
            .is_some_and(|s| s.starts_with("HTTP/1.1 200")),
        "{r}"
    );
    Ok(())
}
