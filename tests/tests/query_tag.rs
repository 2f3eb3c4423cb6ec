//! The agent's QUERY_TAG end to end: connector 5.2.0 under `snowtrail exec` sets a session tag at
//! login, a per-statement tag, and a tag by `ALTER SESSION`; the fake Snowflake records what it
//! received, and every tag carries the run's correlation id and identity beside the workload's
//! own tag, joinable to the audit. Root only.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};
use snowtrail_tests::fake_snowflake::drivers::{self, Driver};
use snowtrail_tests::fake_snowflake::{FakeOptions, FakeSnowflake};
use snowtrail_tests::{Daemon, DaemonOptions, unique_port};

const PORT_BASE: u16 = 29_860;
const ACCOUNT_HOST: &str = "xy12345.snowflakecomputing.com";

const SELECT_1: &str = "select 1";
const TAGGED: &str = r#"{"sql": "select 2 as two", "tag": "per-statement"}"#;
const ALTER: &str = "alter session set query_tag = 'nightly-load'";
const SELECT_3: &str = "select 3 as three";

fn tag_of(v: Option<String>) -> Value {
    serde_json::from_str(&v.expect("no QUERY_TAG")).expect("QUERY_TAG is not JSON")
}

#[test]
fn query_tags_carry_the_run_and_keep_the_workloads_tag() {
    let dir = tempfile::Builder::new()
        .prefix("snowtrail-qtag-")
        .tempdir()
        .unwrap();
    let fake = FakeSnowflake::start(FakeOptions {
        addr: SocketAddr::from(([127, 78, 1, 1], 443)),
        tls: true,
        hosts: vec![ACCOUNT_HOST.to_owned()],
        ca_dir: dir.path().join("fake-ca"),
        ..FakeOptions::default()
    })
    .unwrap();
    let opts = DaemonOptions {
        extra_top: format!(
            "[tls]\nupstream_extra_roots = [{:?}]\n",
            fake.ca_pem_path().display().to_string()
        ),
        ..DaemonOptions::default()
    };
    let d = Daemon::start("qtag", unique_port(PORT_BASE), &opts).unwrap();
    let hosts = drivers::write_hosts_file(dir.path(), fake.addr().ip(), &[ACCOUNT_HOST]).unwrap();
    let args: Vec<String> = [
        "--host",
        ACCOUNT_HOST,
        "--password",
        "pw",
        "--query-tag",
        r#"{"team":"data","job":7}"#,
        SELECT_1,
        TAGGED,
        ALTER,
        SELECT_3,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let inner =
        drivers::session_command(Driver::Py5, &hosts, Path::new("/nonexistent"), &args).unwrap();
    let out = d.exec_command("tagged-job", &inner).output().unwrap();
    let lines = drivers::json_lines(&out.stdout);
    assert!(
        lines.iter().filter(|l| l["step"] == "statement").count() == 4
            && lines.iter().all(|l| l["error"].is_null()),
        "{lines:#?}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.logs()
    );

    // The audit: one run, one correlation id, on the login and every statement.
    let login = d.wait_event(|e| e["event_kind"] == "login").unwrap();
    let run = login["correlation_id"].as_str().unwrap().to_owned();
    assert_eq!(
        login["cgroup_path"],
        format!("/snowtrail/exec/{run}"),
        "the correlation id of an exec run is its run id"
    );
    let session = login["session_id"].as_str().unwrap().to_owned();
    let host = login["host"].as_str().unwrap().to_owned();
    let snowtrail = json!({
        "correlation_id": run,
        "session_id": session,
        "identity": "tagged-job",
        "host": host,
    });

    // What Snowflake received.
    let reqs = fake.requests();
    let login_req = reqs
        .iter()
        .find(|r| r.path == "/session/v1/login-request")
        .unwrap();
    assert_eq!(
        tag_of(login_req.query_tag()),
        json!({"team": "data", "job": 7, "snowtrail": snowtrail}),
        "the login's session tag is merged as an object"
    );
    let sent = |sql: &str| {
        let r = reqs
            .iter()
            .find(|r| r.is_query() && r.sql_text().as_deref() == Some(sql))
            .unwrap_or_else(|| panic!("{sql} not received"));
        tag_of(r.query_tag())
    };
    // Without a tag of its own, a statement carries the session's (Snowflake would otherwise
    // replace the session's tag with the agent's).
    assert_eq!(
        sent(SELECT_1),
        json!({"team": "data", "job": 7, "snowtrail": snowtrail})
    );
    assert_eq!(
        sent("select 2 as two"),
        json!({"app": "per-statement", "snowtrail": snowtrail}),
        "a tag that is not a JSON object is kept as app"
    );
    // After ALTER SESSION SET QUERY_TAG the session's tag is the new one.
    assert_eq!(
        sent(SELECT_3),
        json!({"app": "nightly-load", "snowtrail": snowtrail})
    );

    // Each statement's audit row joins on the same ids.
    for sql in [SELECT_1, "select 2 as two", ALTER, SELECT_3] {
        let e = d
            .wait_event(|e| e["event_kind"] == "query" && e["sql_text"] == sql)
            .unwrap();
        assert_eq!(e["correlation_id"], run.as_str(), "{e}");
        assert_eq!(e["session_id"], session.as_str(), "{e}");
    }
}
