//! A third-party fake Snowflake behind a third-party TLS terminator: fakesnow (PyPI) behind
//! stunnel (Debian), reached by connector 4.8.1 through the agent. Guards against the agent
//! agreeing only with a fake Snowflake written by the same hands. Root only.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::Value;
use snowtrail_tests::fake_snowflake::drivers::{self, CA_VARS, Driver};
use snowtrail_tests::{Daemon, DaemonOptions, unique_port, wait_for};

const PORT_BASE: u16 = 29_730;
const HOST: &str = "xy12345.snowflakecomputing.com";
const TLS_IP: &str = "127.77.5.1";

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CA and a leaf for HOST, as PEM files stunnel can read; returns the CA's path.
fn certificates(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec![HOST.to_owned()])?.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(
        dir.join("leaf.pem"),
        format!("{}{}", leaf.pem(), ca_cert.pem()),
    )?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    Ok(dir.join("ca.pem"))
}

#[test]
fn connector_4_8_1_through_the_agent_to_fakesnow_behind_stunnel() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let py4 = drivers::py4()?;
    let fakesnow = py4.with_file_name("fakesnow");
    ensure!(
        fakesnow.exists(),
        "fakesnow is not installed next to {}: run `cargo xtask setup`",
        py4.display()
    );
    let fs_port = unique_port(PORT_BASE + 50);
    let _fakesnow = Killed(
        Command::new(&fakesnow)
            .args(["-s", "--host", "127.0.0.1", "-p", &fs_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start fakesnow")?,
    );
    let ca = certificates(dir.path())?;
    let conf = dir.path().join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[snowflake]\naccept = {TLS_IP}:443\nconnect = 127.0.0.1:{fs_port}\ncert = {}\nkey = {}\n",
            dir.path().join("leaf.pem").display(),
            dir.path().join("key.pem").display()
        ),
    )?;
    let _stunnel = Killed(
        Command::new("stunnel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("stunnel is not installed: run `cargo xtask setup`")?,
    );
    let up = wait_for(Duration::from_secs(30), || {
        (TcpStream::connect(("127.0.0.1", fs_port)).is_ok()
            && TcpStream::connect((TLS_IP, 443)).is_ok())
        .then_some(())
    });
    ensure!(up.is_some(), "fakesnow or stunnel did not start");

    let opts = DaemonOptions {
        extra_top: format!(
            "[tls]\nupstream_extra_roots = [{:?}]\n",
            ca.display().to_string()
        ),
        ..DaemonOptions::default()
    };
    let d = Daemon::start("fakesnow", unique_port(PORT_BASE), &opts)?;
    let hosts = drivers::write_hosts_file(dir.path(), TLS_IP.parse()?, &[HOST])?;
    let statements = [
        "create or replace table t (id int, name varchar)",
        r#"{"sql": "insert into t values (?, ?)", "params": [1, "one"]}"#,
        "select id, name from t",
        "select * from no_such_table",
    ];
    let mut args = vec!["--host".to_owned(), HOST.to_owned()];
    args.extend(statements.iter().map(|s| (*s).to_owned()));
    let inner = drivers::session_command(Driver::Py4, &hosts, Path::new("/nonexistent"), &args)?;
    let mut cmd = Command::new(snowtrail_tests::snowtrail_bin());
    cmd.arg("--control-socket")
        .arg(&d.socket)
        .args(["exec", "--identity", "e2e-fakesnow", "--"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .stdin(Stdio::null());
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    for v in CA_VARS {
        cmd.env_remove(v);
    }
    let out = cmd.output()?;
    let lines = drivers::json_lines(&out.stdout);
    ensure!(
        lines.first().is_some_and(|l| l["ok"] == true),
        "login through the agent failed: {lines:#?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let select = lines
        .iter()
        .find(|l| l["sql"] == "select id, name from t")
        .context("no select output")?;
    ensure!(
        select["rows"] == serde_json::json!([[1, "one"]]),
        "{select}"
    );

    let events = wait_for(Duration::from_secs(20), || {
        let ev: Vec<Value> = d
            .events()
            .into_iter()
            .filter(|e| e["workload_identity"] == "e2e-fakesnow")
            .collect();
        (ev.iter().filter(|e| e["event_kind"] == "query").count() >= 4).then_some(ev)
    })
    .with_context(|| {
        format!(
            "events missing: {:#?}",
            d.events()
                .iter()
                .map(|e| format!(
                    "{} {} {} {} {}",
                    e["event_kind"], e["sql_text"], e["success"], e["flags"], e["error_message"]
                ))
                .collect::<Vec<_>>()
        )
    })?;
    ensure!(
        events
            .iter()
            .any(|e| e["event_kind"] == "login" && e["success"] == true)
    );
    let q = |sql: &str| {
        events
            .iter()
            .find(|e| e["event_kind"] == "query" && e["sql_text"] == sql)
    };
    let sel = q("select id, name from t").context("no event for the select")?;
    ensure!(
        sel["success"] == true && sel["rows_produced"] == 1 && sel["query_id"].is_string(),
        "{sel}"
    );
    let ins = q("insert into t values (?, ?)").context("no event for the insert")?;
    ensure!(ins["bind_count"] == 2, "{ins}");
    let bad = q("select * from no_such_table").context("no event for the failing select")?;
    ensure!(
        bad["success"] == false && bad["error_code"] == "002003",
        "{bad}"
    );
    Ok(())
}
