//! The bench's load generator against real servers on loopback: each command does what the bench
//! relies on (statements answered, connections held, a stream received whole, connects made), so
//! a broken `loadgen` fails here rather than in the middle of a benchmark. No assertion is on a
//! timing: only counts and completeness.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use anyhow::Context as _;
use serde_json::Value;
use snowtrail_tests::fake_snowflake::{FakeOptions, FakeSnowflake};

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

fn json(out: std::process::Output) -> anyhow::Result<Value> {
    anyhow::ensure!(
        out.status.success(),
        "loadgen failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("no output")?;
    Ok(serde_json::from_str(line)?)
}

fn lean_fake(dir: &std::path::Path) -> anyhow::Result<FakeSnowflake> {
    FakeSnowflake::start(FakeOptions {
        ca_dir: dir.join("ca"),
        record_requests: false,
        ..FakeOptions::default()
    })
}

/// A child killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a `loadgen` server command and returns it with the JSON line it announces itself with.
fn server(args: &[&str]) -> anyhow::Result<(Killed, Value)> {
    let mut child = Command::new(LOADGEN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let v = serde_json::from_str(line.trim()).with_context(|| format!("announced {line:?}"))?;
    Ok((Killed(child), v))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[test]
fn http_answers_statements_on_both_protocols_and_the_lean_fake_keeps_no_log() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let fake = lean_fake(dir.path())?;
    for h2 in [false, true] {
        let mut cmd = Command::new(LOADGEN);
        cmd.args(["http", "--connect", &fake.addr().to_string(), "--ca"])
            .arg(fake.ca_pem_path())
            .args(["--clients", "2", "--seconds", "0.3"]);
        if h2 {
            cmd.arg("--h2");
        }
        let r = json(cmd.output()?)?;
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["h2"], h2);
        assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
        assert!(r["p99_us"].as_f64().unwrap() >= r["p50_us"].as_f64().unwrap());
    }
    assert!(fake.requests().is_empty(), "a lean fake logs no request");
    Ok(())
}

#[test]
fn hold_opens_every_connection_and_keeps_them_until_stdin_ends() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fake = lean_fake(dir.path())?;
    let mut child = Command::new(LOADGEN)
        .args(["hold", "--connect", &fake.addr().to_string(), "--ca"])
        .arg(fake.ca_pem_path())
        .args(["--connections", "20", "--parallel", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let r: Value = serde_json::from_str(line.trim())?;
    assert_eq!(r["held"], 20, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(
        child.try_wait()?.is_none(),
        "it holds until stdin is closed"
    );
    drop(child.stdin.take());
    assert!(child.wait()?.success());
    Ok(())
}

#[test]
fn bulk_receives_the_whole_stream_over_tls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let ca_dir = dir.path().join("bulk-ca");
    let (_server, hello) = server(&[
        "bulk-server",
        "--listen",
        &listen,
        "--ca-dir",
        ca_dir.to_str().context("path")?,
    ])?;
    assert_eq!(hello["listening"], listen.as_str());
    let r = json(
        Command::new(LOADGEN)
            .args(["bulk", "--connect", &listen, "--ca"])
            .arg(ca_dir.join("ca.pem"))
            .args(["--bytes", "3000001"])
            .output()?,
    )?;
    assert_eq!(r["bytes"], 3_000_001);
    Ok(())
}

#[test]
fn connect_makes_every_connection_to_the_sink() -> anyhow::Result<()> {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let (_sink, _) = server(&["sink", "--listen", &listen.to_string()])?;
    let r = json(
        Command::new(LOADGEN)
            .args(["connect", "--addr", &listen.to_string(), "--n", "300"])
            .output()?,
    )?;
    assert_eq!(r["n"], 300);
    assert_eq!(r["failures"], 0, "{r}");
    Ok(())
}

#[test]
fn leaf_writes_a_chain_a_key_and_both_together() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("leaf");
    json(
        Command::new(LOADGEN)
            .args([
                "leaf",
                "--host",
                "xy12345.snowflakecomputing.com",
                "--ca-dir",
            ])
            .arg(dir.path().join("ca"))
            .arg("--out")
            .arg(&out)
            .output()?,
    )?;
    let chain = std::fs::read_to_string(out.join("leaf.pem"))?;
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf then CA"
    );
    let key = std::fs::read_to_string(out.join("leaf-key.pem"))?;
    assert!(key.contains("PRIVATE KEY"));
    let combined = std::fs::read_to_string(out.join("leaf-combined.pem"))?;
    assert_eq!(combined, format!("{key}{chain}"));
    Ok(())
}
