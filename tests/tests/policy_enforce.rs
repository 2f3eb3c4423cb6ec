//! End-to-end policy: real drivers under `snowtrail exec`, through the agent, to the fake
//! Snowflake. A denied DROP raises the driver's usual ProgrammingError naming the rule and never
//! reaches Snowflake; an invalid rule file written while the daemon runs keeps the rules in force
//! (and is recorded); a held statement is approved from the CLI and another one times out.
//! Root only.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::Value;
use snowtrail_tests::fake_snowflake::drivers::Driver;
use snowtrail_tests::session::{self, Setup, output_lines, statement};
use snowtrail_tests::wait_for;

const PORT_BASE: u16 = 29_640;

/// The label every session of this suite carries (the deny rule matches it).
const LABEL: &str = "env=prod";

fn setup(name: &str, ip: [u8; 4], policy: &str) -> anyhow::Result<Setup> {
    session::setup(name, ip, PORT_BASE, Some(policy), |_| String::new())
}

/// A driver session under `snowtrail exec --identity <identity>`, trusting only what exec gives.
fn exec_session(
    s: &Setup,
    driver: Driver,
    identity: &str,
    statements: &[&str],
) -> anyhow::Result<Command> {
    session::exec_session(s, driver, identity, &[LABEL], statements)
}

fn run_session(
    s: &Setup,
    driver: Driver,
    identity: &str,
    statements: &[&str],
) -> anyhow::Result<Vec<Value>> {
    session::run_driver(s, driver, identity, &[LABEL], statements)
}

const DENY_DROPS: &str = r#"
[default]
action = "allow"

[[rule]]
name = "no-drop-in-prod"
action = "deny"
message = "drops need a change ticket"
[rule.when]
labels = { env = "prod" }
statement = ["DROP"]

[[rule]]
name = "watch-second"
action = "alert"
[rule.when]
sql = "as second"
"#;

const DROP: &str = "drop table orders";
const MULTI_SQL: &str = "select 11 as first; select 'a;b' as second";
const MULTI: &str = r#"{"sql": "select 11 as first; select 'a;b' as second", "num_statements": 2}"#;
const SELECT: &str = "select 1";

/// Runs the DROP and a SELECT; checks the DROP was refused by `rule` and never reached the fake.
fn drop_is_denied(s: &Setup, driver: Driver, identity: &str, rule: &str) -> anyhow::Result<()> {
    let lines = run_session(s, driver, identity, &[DROP, SELECT])?;
    let drop = statement(&lines, DROP)?;
    let err = &drop["error"];
    ensure!(err["type"] == "ProgrammingError", "{drop}");
    ensure!(err["errno"] == 3001, "{drop}");
    ensure!(err["sqlstate"] == "42501", "{drop}");
    let msg = err["msg"].as_str().unwrap_or_default();
    ensure!(
        msg.contains(&format!("'{rule}'")) && msg.contains("drops need a change ticket"),
        "{drop}"
    );
    ensure!(
        statement(&lines, SELECT)?["rows"] == serde_json::json!([[1]]),
        "{lines:#?}"
    );
    ensure!(
        !s.fake.sql_texts().iter().any(|t| t.contains("drop")),
        "the denied statement reached Snowflake: {:?}",
        s.fake.sql_texts()
    );
    Ok(())
}

#[test]
fn a_denied_drop_never_reaches_snowflake_and_a_bad_reload_keeps_the_rules() -> anyhow::Result<()> {
    let driver = Driver::Py5;
    let identity = "policy-deny";
    let s = setup(identity, [127, 77, 6, 1], DENY_DROPS)?;
    drop_is_denied(&s, driver, identity, "no-drop-in-prod")?;

    let events = wait_for(Duration::from_secs(20), || {
        let ev = s.daemon.events();
        (ev.iter().any(|e| e["event_kind"] == "denial")
            && ev.iter().any(|e| e["event_kind"] == "query"))
        .then_some(ev)
    })
    .with_context(|| format!("no denial and query events: {:#?}", s.daemon.events()))?;
    let denial = events
        .iter()
        .find(|e| e["event_kind"] == "denial")
        .context("no denial")?;
    ensure!(denial["sql_text"] == DROP, "{denial}");
    ensure!(denial["decision"] == "deny", "{denial}");
    ensure!(denial["policy_rule"] == "no-drop-in-prod", "{denial}");
    ensure!(denial["workload_identity"] == identity, "{denial}");
    let allowed = events
        .iter()
        .find(|e| e["event_kind"] == "query" && e["sql_text"] == SELECT)
        .context("no query event for the select")?;
    ensure!(allowed["decision"] == "allow", "{allowed}");
    ensure!(allowed["policy_rule"] == "default", "{allowed}");

    // A multi-statement request: each statement's event carries its own decision and rule.
    let lines = run_session(&s, driver, identity, &[MULTI])?;
    ensure!(
        statement(&lines, MULTI_SQL)?["error"].is_null(),
        "{lines:#?}"
    );
    let first = s
        .daemon
        .wait_event(|e| e["sql_text"] == "select 11 as first")?;
    let second = s
        .daemon
        .wait_event(|e| e["sql_text"] == "select 'a;b' as second")?;
    ensure!(
        first["decision"] == "allow" && first["policy_rule"] == "default",
        "{first}"
    );
    ensure!(
        second["decision"] == "alert" && second["policy_rule"] == "watch-second",
        "{second}"
    );
    ensure!(!first["parent_query_id"].is_null(), "{first}");

    // An invalid file written while running: rejected, recorded, and the rules stay.
    std::fs::write(
        s.policy_path(),
        "[default]\naction = \"allow\"\n\n[[rule]]\nname = \"broken\"\naction = \"deny-ish\"\n",
    )?;
    let rejected = s.daemon.wait_event(|e| {
        e["event_kind"] == "lifecycle" && e["lifecycle_action"] == "policy_rejected"
    })?;
    ensure!(
        rejected["detail"]
            .as_str()
            .is_some_and(|d| d.contains("line 6") && d.contains("deny-ish")),
        "{rejected}"
    );
    drop_is_denied(&s, driver, identity, "no-drop-in-prod")?;

    // A valid change takes effect, and is recorded.
    std::fs::write(
        s.policy_path(),
        DENY_DROPS.replace("no-drop-in-prod", "no-drop-v2"),
    )?;
    s.daemon.wait_event(|e| {
        e["event_kind"] == "lifecycle" && e["lifecycle_action"] == "policy_reload"
    })?;
    drop_is_denied(&s, driver, identity, "no-drop-v2")?;

    // SIGHUP reloads at once, even an unchanged file, and the daemon keeps running.
    let status: Value = serde_json::from_str(&s.daemon.cli_ok(&["status", "--json"])?)?;
    let pid = i32::try_from(status["pid"].as_u64().context("status without pid")?)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )?;
    s.daemon.wait_event(|e| {
        e["lifecycle_action"] == "policy_reload"
            && e["detail"].as_str().is_some_and(|d| d.contains("SIGHUP"))
    })?;
    drop_is_denied(&s, driver, identity, "no-drop-v2")?;
    Ok(())
}

const HOLDS: &str = r#"
[default]
action = "allow"

[[rule]]
name = "approve-first"
action = "require_approval"
timeout_s = 300
[rule.when]
sql = "approve_me"

[[rule]]
name = "short-hold"
action = "require_approval"
timeout_s = 2
[rule.when]
sql = "expire_me"
"#;

/// Waits until `snowtrail pending` lists a statement; returns it.
fn wait_pending(s: &Setup, sql: &str) -> anyhow::Result<Value> {
    wait_for(Duration::from_secs(60), || {
        let out = s.daemon.cli_ok(&["pending", "--json"]).ok()?;
        let list: Vec<Value> = serde_json::from_str(&out).ok()?;
        list.into_iter().find(|h| h["sql"] == sql)
    })
    .with_context(|| format!("{sql:?} was never held:\n{}", s.daemon.logs()))
}

#[test]
fn a_held_statement_is_approved_from_the_cli_and_another_times_out() -> anyhow::Result<()> {
    let driver = Driver::Py4;
    let identity = "policy-hold";
    let s = setup(identity, [127, 77, 6, 2], HOLDS)?;

    let approved_sql = "select 42 as approve_me";
    let mut cmd = exec_session(&s, driver, identity, &[approved_sql])?;
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let workload = cmd.spawn()?;
    let hold = wait_pending(&s, approved_sql)?;
    ensure!(hold["rule"] == "approve-first", "{hold}");
    ensure!(hold["identity"] == identity, "{hold}");
    let id = hold["id"].as_str().context("hold without id")?.to_owned();
    ensure!(
        !s.fake.sql_texts().iter().any(|t| t == approved_sql),
        "a held statement reached Snowflake before approval"
    );
    let said = s.daemon.cli_ok(&["approve", &id])?;
    ensure!(said.contains("approved") && said.contains(&id), "{said}");
    // Deciding twice is an error that says why.
    let again = s.daemon.cli(&["reject", &id])?;
    ensure!(!again.status.success());
    let out = workload.wait_with_output()?;
    let lines = output_lines(&s, driver, &out)?;
    let st = statement(&lines, approved_sql)?;
    ensure!(st["rows"] == serde_json::json!([[42]]), "{lines:#?}");
    ensure!(
        st["sfqid"].as_str().is_some_and(|q| q != id),
        "the driver kept the hold id instead of Snowflake's: {st}"
    );
    ensure!(s.fake.sql_texts().iter().any(|t| t == approved_sql));

    // One that nobody decides: the driver gets an error, Snowflake never sees it.
    let expired_sql = "select 43 as expire_me";
    let lines = run_session(&s, driver, identity, &[expired_sql])?;
    let st = statement(&lines, expired_sql)?;
    ensure!(st["error"]["type"] == "ProgrammingError", "{st}");
    ensure!(st["error"]["errno"] == 630, "{st}");
    ensure!(!s.fake.sql_texts().iter().any(|t| t == expired_sql));

    // One the driver aborts while it is held (its own statement timeout): canceled, never sent.
    let aborted_sql = "select 44 as approve_me_not";
    let spec = format!(r#"{{"sql": "{aborted_sql}", "timeout": 3}}"#);
    let lines = run_session(&s, driver, identity, &[spec.as_str()])?;
    let st = statement(&lines, aborted_sql)?;
    ensure!(!st["error"].is_null(), "{st}");
    ensure!(!s.fake.sql_texts().iter().any(|t| t == aborted_sql));
    ensure!(
        s.daemon.cli_ok(&["pending", "--json"])?.trim() == "[]",
        "the aborted statement is still held"
    );

    let events = wait_for(Duration::from_secs(20), || {
        let ev = s.daemon.events();
        (ev.iter().any(|e| e["sql_text"] == aborted_sql)
            && ev.iter().any(|e| e["sql_text"] == approved_sql)
            && ev.iter().any(|e| e["sql_text"] == expired_sql))
        .then_some(ev)
    })
    .with_context(|| format!("missing events: {:#?}", s.daemon.events()))?;
    let ok = events
        .iter()
        .find(|e| e["sql_text"] == approved_sql)
        .context("no event")?;
    ensure!(ok["event_kind"] == "query", "{ok}");
    ensure!(ok["decision"] == "approved", "{ok}");
    ensure!(ok["policy_rule"] == "approve-first", "{ok}");
    ensure!(ok["success"] == true, "{ok}");
    ensure!(
        ok["approver"]
            .as_str()
            .is_some_and(|a| a.starts_with("root")),
        "{ok}"
    );
    ensure!(!ok["decided_at"].is_null(), "{ok}");
    ensure!(ok["detail"] == format!("hold {id}"), "{ok}");
    ensure!(ok["query_id"] != id.as_str(), "{ok}");
    let expired = events
        .iter()
        .find(|e| e["sql_text"] == expired_sql)
        .context("no event")?;
    ensure!(expired["event_kind"] == "denial", "{expired}");
    ensure!(expired["detail"] == "approval_timed_out", "{expired}");
    ensure!(expired["policy_rule"] == "short-hold", "{expired}");
    ensure!(expired["approver"].is_null(), "{expired}");
    let aborted = events
        .iter()
        .find(|e| e["sql_text"] == aborted_sql)
        .context("no event")?;
    ensure!(aborted["success"] == false, "{aborted}");
    ensure!(
        aborted["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("canceled by the client")),
        "{aborted}"
    );
    Ok(())
}
