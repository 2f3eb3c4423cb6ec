//! End-to-end interception: unmodified Snowflake drivers (connector 4.8.1, 5.2.0 over HTTP/2, Node
//! sdk 3.3.0) run under `snowtrail exec`, reach the fake Snowflake over TLS through the agent, and
//! every login, statement and logout lands in the audit with the process that sent it. Root only.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, ensure};
use serde_json::Value;
use snowtrail_tests::fake_snowflake::drivers::{self, Driver};
use snowtrail_tests::session::{
    self, ACCOUNT_HOST, PASSWORD, Setup, hosts_file, session_args, statement,
};

const PORT_BASE: u16 = 29_530;
/// Where the fake serves result chunks: a storage host the agent learns from query responses.
const STORAGE_HOST: &str = "stage.fake-snowflake.test";
/// A result large enough that Snowflake sends it in chunks. Node's session script prints each
/// result as one JSON line, and Node cuts long lines to a pipe short at exit, so Node reads fewer.
fn chunked(driver: Driver) -> (&'static str, u64) {
    match driver {
        Driver::Node => ("/*sf_chunks*/ select id, name from big", 350),
        _ => (
            "/*sf_chunks*/ /*rows:12000*/ select id, name from big",
            12_000,
        ),
    }
}
/// The label every session of this suite carries.
const LABEL: &str = "suite=intercept";

const SELECT_1: &str = "select 1";
const CUSTOMERS: &str = "select * from customers";
const MISSING: &str = "select * from no_such_table";
const EXPIRE: &str = "/*expire_token*/ select 7 as renewed";
const SLOW: &str = "/*slow:2*/ select 42 as answer";
const SECRET_DDL: &str = "create user bob password = 'hunter2-secret'";
const ASYNC_SQL: &str = "select 5 as later";
const ASYNC: &str = r#"{"sql": "select 5 as later", "async": true}"#;
const MULTI_SQL: &str = "select 11 as first; select 'a;b' as second";
const MULTI: &str = r#"{"sql": "select 11 as first; select 'a;b' as second", "num_statements": 2}"#;
const DDL: &str = "create or replace table e2e_t (id int, name varchar)";
const INSERT_SQL: &str = "insert into e2e_t (id, name) values (?, ?)";
const INSERT: &str =
    r#"{"sql": "insert into e2e_t (id, name) values (?, ?)", "params": [7, "seven"]}"#;

/// The fake (serving chunks and stage transfers from its storage host, refusing one password) and
/// a daemon trusting it.
fn setup(name: &str, ip: [u8; 4]) -> anyhow::Result<Setup> {
    session::setup_with(
        name,
        ip,
        PORT_BASE,
        |f| {
            f.storage_host = Some(STORAGE_HOST.to_owned());
            f.bad_password = Some("wrong-password".to_owned());
        },
        None,
        |_| String::new(),
    )
}

/// A driver session under `snowtrail exec --identity <identity>`, labelled with the suite.
fn exec_session(
    s: &Setup,
    driver: Driver,
    identity: &str,
    statements: &[&str],
) -> anyhow::Result<Command> {
    session::exec_session(s, driver, identity, &[LABEL], statements)
}

/// Runs the same session directly against the fake (not enrolled, trusting the fake's CA).
fn run_direct(s: &Setup, driver: Driver, statements: &[&str]) -> anyhow::Result<Vec<Value>> {
    let out = drivers::session_command(
        driver,
        &hosts_file(s)?,
        s.fake.ca_pem_path(),
        &session_args(statements),
    )?
    .stdin(std::process::Stdio::null())
    .output()?;
    Ok(drivers::json_lines(&out.stdout))
}

/// A session's output without what differs from run to run (query ids, error texts naming them).
fn comparable(lines: &[Value]) -> Vec<Value> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                o.remove("sfqid");
                if let Some(e) = o.get_mut("error").and_then(Value::as_object_mut) {
                    e.remove("msg");
                }
                o.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    lines
        .iter()
        .map(|l| {
            let mut l = l.clone();
            strip(&mut l);
            l
        })
        .collect()
}

/// Runs a driver session under `snowtrail exec`; the driver trusts only what exec gives it.
fn run_session(
    s: &Setup,
    driver: Driver,
    identity: &str,
    statements: &[&str],
) -> anyhow::Result<Vec<Value>> {
    session::run_driver(s, driver, identity, &[LABEL], statements)
}

fn query_event<'a>(events: &'a [Value], sql: &str) -> anyhow::Result<&'a Value> {
    let found: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_kind"] == "query" && e["sql_text"] == sql)
        .collect();
    ensure!(
        found.len() == 1,
        "expected one query event for {sql:?}, got {found:#?}"
    );
    Ok(found[0])
}

fn intercepted_session(driver: Driver, ip: [u8; 4]) -> anyhow::Result<()> {
    let identity = format!("e2e-{}", driver.name().replace(['.', ' '], "-"));
    let s = setup(&identity, ip)?;
    let (chunked_sql, chunked_rows) = chunked(driver);
    let statements = [
        SELECT_1,
        CUSTOMERS,
        MISSING,
        EXPIRE,
        SLOW,
        SECRET_DDL,
        DDL,
        INSERT,
        ASYNC,
        MULTI,
        chunked_sql,
    ];
    let lines = run_session(&s, driver, &identity, &statements)?;
    ensure!(
        lines[0]["step"] == "connect" && lines[0]["ok"] == true,
        "login failed: {lines:#?}"
    );
    ensure!(
        statement(&lines, SELECT_1)?["rows"] == serde_json::json!([[1]]),
        "{lines:#?}"
    );
    ensure!(
        statement(&lines, CUSTOMERS)?["rows"]
            .as_array()
            .map(Vec::len)
            == Some(3)
    );
    ensure!(statement(&lines, MISSING)?["error"]["errno"] == 2003);
    ensure!(
        statement(&lines, EXPIRE)?["rows"] == serde_json::json!([[7]]),
        "{lines:#?}"
    );
    ensure!(
        statement(&lines, SLOW)?["rows"] == serde_json::json!([[42]]),
        "{lines:#?}"
    );
    ensure!(
        lines
            .last()
            .is_some_and(|l| l["step"] == "close" && l["ok"] == true),
        "{lines:#?}"
    );

    // The workload sees exactly what it sees without the agent.
    let direct = run_direct(&s, driver, &statements)?;
    let (a, b) = (comparable(&lines), comparable(&direct));
    let diff: Vec<(&Value, &Value)> = a.iter().zip(&b).filter(|(x, y)| x != y).collect();
    ensure!(
        a.len() == b.len() && diff.is_empty(),
        "results differ through the agent: {diff:#?}\nthrough the agent: {lines:#?}\nwithout it: {direct:#?}"
    );

    // Everything reached the real upstream through the agent.
    ensure!(
        s.fake.sql_texts().iter().any(|t| t == CUSTOMERS),
        "the fake never saw the statements"
    );

    let events = snowtrail_tests::wait_for(std::time::Duration::from_secs(20), || {
        let ev = s.daemon.events();
        (ev.iter().any(|e| e["event_kind"] == "logout")
            && ev
                .iter()
                .any(|e| e["connection_mode"] == "intercepted" && e["sni"] == ACCOUNT_HOST)
            && ev
                .iter()
                .any(|e| e["connection_mode"] == "intercepted" && e["sni"] == STORAGE_HOST))
        .then_some(ev)
    })
    .with_context(|| {
        let conns: Vec<String> = s
            .daemon
            .events()
            .iter()
            .filter(|e| e["event_kind"] != "query")
            .map(|e| {
                format!(
                    "{} {} {} {}",
                    e["event_kind"], e["sni"], e["connection_mode"], e["workload_identity"]
                )
            })
            .collect();
        format!("missing events: {conns:#?}")
    })?;
    // From here on the audit is read as an analyst reads it: DuckDB over the Parquet files.
    let all_rows = duckdb_rows(&s.daemon.audit_dir)?;
    ensure!(
        all_rows.len() >= events.len(),
        "DuckDB read {} rows, the agent had written {}",
        all_rows.len(),
        events.len()
    );
    let mine: Vec<Value> = all_rows
        .into_iter()
        .filter(|e| e["workload_identity"] == identity.as_str())
        .collect();

    let login = mine
        .iter()
        .find(|e| e["event_kind"] == "login")
        .context("no login event")?;
    ensure!(login["success"] == true, "{login}");
    ensure!(
        login["account"]
            .as_str()
            .is_some_and(|a| a.starts_with("xy12345")),
        "{login}"
    );
    ensure!(login["login_user"] == "fake", "{login}");
    ensure!(login["sni"] == ACCOUNT_HOST, "{login}");
    ensure!(login["labels"]["suite"] == "intercept", "{login}");
    let session_id = login["session_id"]
        .as_str()
        .context("login without session id")?
        .to_owned();
    let driver_name = login["driver"].as_str().unwrap_or_default();
    ensure!(
        driver_name.contains("Python")
            || driver_name.contains("JavaScript")
            || driver_name.contains("Node"),
        "{login}"
    );

    let select = query_event(&mine, SELECT_1)?;
    ensure!(
        select["success"] == true && select["rows_produced"] == 1,
        "{select}"
    );
    ensure!(
        select["query_id"] == statement(&lines, SELECT_1)?["sfqid"],
        "{select}"
    );
    ensure!(select["session_id"] == session_id.as_str(), "{select}");
    ensure!(select["login_user"] == "fake", "{select}");
    ensure!(select["statement_type"].as_str().is_some(), "{select}");
    ensure!(
        select["comm"].as_str().is_some_and(|c| !c.is_empty()),
        "{select}"
    );
    ensure!(select["tgid"].as_u64().is_some(), "{select}");
    let exe = select["exe"].as_str().unwrap_or_default();
    ensure!(exe.contains("python") || exe.contains("node"), "{select}");
    ensure!(
        select["user_name"] == "root" && select["ppid"].as_u64().is_some(),
        "{select}"
    );
    ensure!(
        select["cmdline"]
            .as_str()
            .is_some_and(|c| c.contains("session.")),
        "{select}"
    );
    ensure!(query_event(&mine, CUSTOMERS)?["rows_produced"] == 3);
    ensure!(query_event(&mine, DDL)?["success"] == true);
    let insert = query_event(&mine, INSERT_SQL)?;
    ensure!(
        insert["bind_count"] == 2 && insert["success"] == true && insert["rows_produced"] == 1,
        "{insert}"
    );
    ensure!(
        select["pid"].as_u64().is_some() && select["event_time"].is_string(),
        "{select}"
    );

    let missing = query_event(&mine, MISSING)?;
    ensure!(missing["success"] == false, "{missing}");
    ensure!(
        missing["error_code"] == "002003" && missing["sql_state"] == "42S02",
        "{missing}"
    );

    // A statement answered 390112 and retried after renewal is one statement, on the same session.
    let renewed = query_event(&mine, EXPIRE)?;
    ensure!(
        renewed["success"] == true && renewed["session_id"] == session_id.as_str(),
        "{renewed}"
    );
    // A statement answered 333333 and polled is one statement, completed by the poll.
    let slow = query_event(&mine, SLOW)?;
    ensure!(
        slow["success"] == true && slow["rows_produced"] == 1,
        "{slow}"
    );

    // An async statement is one event, completed when the agent sees its outcome.
    ensure!(
        statement(&lines, ASYNC_SQL)?["rows"] == serde_json::json!([[5]]),
        "{lines:#?}"
    );
    let later = query_event(&mine, ASYNC_SQL)?;
    ensure!(
        later["is_async"] == true && later["success"] == true,
        "{later}"
    );

    // A multi-statement request is one event per statement, tied by the request's query id.
    ensure!(
        statement(&lines, MULTI_SQL)?.get("error").is_none(),
        "{lines:#?}"
    );
    let first = query_event(&mine, "select 11 as first")?;
    let second = query_event(&mine, "select 'a;b' as second")?;
    ensure!(first["parent_query_id"].is_string(), "{first}");
    ensure!(
        first["parent_query_id"] == second["parent_query_id"],
        "{first} {second}"
    );
    ensure!(
        first["query_id"] != second["query_id"] && first["query_id"] != first["parent_query_id"],
        "{first}"
    );

    // A chunked result: the chunks come from the storage host the response names, and the
    // statement's event counts them (it is recorded once every chunk was downloaded).
    ensure!(
        statement(&lines, chunked_sql)?["rows"]
            .as_array()
            .map(|r| r.len() as u64)
            == Some(chunked_rows),
        "{lines:#?}"
    );
    let chunked = query_event(&mine, chunked_sql)?;
    ensure!(
        chunked["rows_produced"] == chunked_rows && chunked["chunk_count"] == 3,
        "{chunked}"
    );
    ensure!(
        !chunked["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "chunks_unseen")),
        "{chunked}"
    );
    // The chunk downloads went to the storage host, which the agent learned from the response
    // and intercepted for this workload.
    ensure!(
        s.fake
            .requests()
            .iter()
            .filter(
                |r| r.host.starts_with(STORAGE_HOST) && r.path.starts_with("/fake-stage-results/")
            )
            .count()
            >= 3,
        "the chunks were not fetched from the storage host: {:?}",
        s.fake
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.host, r.path))
            .collect::<Vec<_>>()
    );

    // Credentials never reach the audit.
    let ddl = query_event(&mine, "create user bob password = '***'")?;
    ensure!(
        ddl["sql_text"] == "create user bob password = '***'",
        "{ddl}"
    );
    let all = serde_json::to_string(&mine)?;
    ensure!(
        !all.contains(PASSWORD) && !all.contains("hunter2-secret"),
        "a secret reached the audit"
    );
    // Nor the journal, byte for byte, nor the Parquet files as DuckDB reads them back.
    for entry in walk(&s.daemon.state_dir.join("journal")) {
        let bytes = std::fs::read(&entry)?;
        for secret in [PASSWORD.as_bytes(), b"hunter2-secret".as_slice()] {
            ensure!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "a secret is in {}",
                entry.display()
            );
        }
    }
    let dump = duckdb_dump(&s.daemon.audit_dir)?;
    ensure!(
        dump.contains("create user bob password = '***'"),
        "DuckDB did not read the audit"
    );
    ensure!(
        !dump.contains(PASSWORD) && !dump.contains("hunter2-secret"),
        "a secret is in the Parquet files"
    );
    // The direct run, not enrolled, produced no query event.
    ensure!(
        s.daemon
            .events()
            .iter()
            .filter(|e| e["event_kind"] == "query")
            .count()
            == mine.iter().filter(|e| e["event_kind"] == "query").count(),
        "a query event came from outside the enrolled workload"
    );

    let logout = mine
        .iter()
        .find(|e| e["event_kind"] == "logout")
        .context("no logout")?;
    ensure!(logout["session_id"] == session_id.as_str(), "{logout}");
    ensure!(
        mine.iter().any(|e| e["event_kind"] == "connection"
            && e["connection_mode"] == "intercepted"
            && e["sni"] == ACCOUNT_HOST),
        "no intercepted connection event to the account host"
    );
    Ok(())
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every audit row as JSON, read by DuckDB with hive partitioning.
fn duckdb_rows(audit: &Path) -> anyhow::Result<Vec<Value>> {
    duckdb_dump(audit)?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("DuckDB row: {l}")))
        .collect()
}

/// Every audit row as text, read by DuckDB with hive partitioning.
fn duckdb_dump(audit: &Path) -> anyhow::Result<String> {
    let script = format!(
        "import duckdb\nfor (row,) in duckdb.sql(\"SELECT to_json(t)::VARCHAR FROM read_parquet('{}/**/*.parquet', hive_partitioning = true) t\").fetchall():\n    print(row)\n",
        audit.display()
    );
    let out = Command::new(snowtrail_tests::python())
        .arg("-c")
        .arg(script)
        .output()?;
    ensure!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn connector_4_8_1_through_the_agent() -> anyhow::Result<()> {
    intercepted_session(Driver::Py4, [127, 77, 3, 4])
}

#[test]
fn connector_5_2_0_over_http2_through_the_agent() -> anyhow::Result<()> {
    intercepted_session(Driver::Py5, [127, 77, 3, 5])
}

#[test]
fn node_sdk_3_3_0_through_the_agent() -> anyhow::Result<()> {
    intercepted_session(Driver::Node, [127, 77, 3, 6])
}

/// A statement in flight when the daemon is killed: its intent was made durable before it went
/// upstream, so after the restart the audit has it, marked `outcome_unknown`.
#[test]
fn a_statement_in_flight_at_a_crash_is_recorded_as_outcome_unknown() -> anyhow::Result<()> {
    let mut s = setup("e2e-crash", [127, 77, 3, 7])?;
    let held = "/*slow:100000*/ select 9 as never_done";
    let mut cmd = exec_session(&s, Driver::Py4, "e2e-crash", &[held])?;
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut workload = cmd.spawn()?;
    // Wait until the statement reached the fake, and is being polled.
    let reached = snowtrail_tests::wait_for(std::time::Duration::from_secs(30), || {
        s.fake
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/result"))
            .then_some(())
    });
    s.daemon.kill();
    let _ = workload.kill();
    let _ = workload.wait();
    ensure!(
        reached.is_some(),
        "the held statement never reached the fake"
    );
    s.daemon.start_again()?;
    let row = snowtrail_tests::wait_for(std::time::Duration::from_secs(20), || {
        s.daemon
            .events()
            .into_iter()
            .find(|e| e["event_kind"] == "query" && e["sql_text"] == held)
    })
    .with_context(|| {
        format!(
            "no row for the statement in flight: {:#?}",
            s.daemon.events()
        )
    })?;
    ensure!(
        row["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "outcome_unknown")),
        "{row}"
    );
    ensure!(row["workload_identity"] == "e2e-crash", "{row}");
    let rows = s
        .daemon
        .events()
        .into_iter()
        .filter(|e| e["sql_text"] == held)
        .count();
    ensure!(rows == 1, "the statement has {rows} rows");
    Ok(())
}

/// PUT and GET through the agent: the transfers go to the storage host the statement's answer
/// names, which the agent intercepts for this workload, and each statement's event carries the
/// bytes its transfers moved.
fn stage_transfers(driver: Driver, ip: [u8; 4]) -> anyhow::Result<()> {
    let identity = format!("stage-{}", driver.name().replace(['.', ' '], "-"));
    let s = setup(&identity, ip)?;
    let file = s.dir.path().join("data1.csv");
    std::fs::write(&file, "1,one\n2,two\n3,three\n")?;
    let down = s.dir.path().join("down");
    std::fs::create_dir_all(&down)?;
    let put = format!("put file://{} @stg1", file.display());
    let get = format!("get @stg1 file://{}/", down.display());
    let lines = run_session(&s, driver, &identity, &["create stage stg1", &put, &get])?;
    ensure!(
        statement(&lines, &put)?["rows"][0][6] == "UPLOADED",
        "{lines:#?}"
    );
    ensure!(
        statement(&lines, &get)?["rows"][0][2] == "DOWNLOADED",
        "{lines:#?}"
    );
    let size = std::fs::metadata(down.join("data1.csv.gz"))?.len();

    // Each statement's event waits until its own transfers are quiet: the PUT's may come after
    // the GET's, whose transfers followed within moments.
    let events = snowtrail_tests::wait_for(std::time::Duration::from_secs(30), || {
        let ev = s.daemon.events();
        let done = |prefix: &str| {
            ev.iter().any(|e| {
                e["event_kind"] == "query"
                    && e["sql_text"]
                        .as_str()
                        .is_some_and(|t| t.starts_with(prefix))
                    && e["stage_requests"].as_u64() > Some(0)
            })
        };
        (done("put ") && done(&get)).then_some(ev)
    })
    .with_context(|| format!("no events for the PUT and GET: {:#?}", s.daemon.events()))?;
    let puts: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["event_kind"] == "query"
                && e["sql_text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("put "))
        })
        .collect();
    ensure!(!puts.is_empty(), "no PUT event: {events:#?}");
    for e in &puts {
        ensure!(
            !e["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "transfer_unseen")),
            "{e}"
        );
        ensure!(e["workload_identity"] == identity.as_str(), "{e}");
    }
    let sent: u64 = puts
        .iter()
        .filter_map(|e| e["stage_bytes_sent"].as_u64())
        .sum();
    ensure!(
        sent == size,
        "the PUT events count {sent} bytes sent, the file has {size}: {puts:#?}"
    );
    let get_event = query_event(&events, &get)?;
    ensure!(
        get_event["stage_bytes_received"] == size
            && get_event["stage_requests"].as_u64() >= Some(1),
        "{get_event}"
    );
    // The transfers really went through the agent: an intercepted connection to the storage host.
    ensure!(
        events.iter().any(|e| e["event_kind"] == "connection"
            && e["connection_mode"] == "intercepted"
            && e["sni"] == STORAGE_HOST),
        "no intercepted storage connection"
    );
    // Presigned URLs reach the audit without their signature.
    let all = serde_json::to_string(&events)?;
    ensure!(
        !all.contains("X-Goog-Signature"),
        "a signature reached the audit"
    );
    Ok(())
}

#[test]
fn connector_4_8_1_stage_transfers_are_counted() -> anyhow::Result<()> {
    stage_transfers(Driver::Py4, [127, 77, 3, 8])
}

#[test]
fn connector_5_2_0_stage_transfers_are_counted() -> anyhow::Result<()> {
    stage_transfers(Driver::Py5, [127, 77, 3, 9])
}

/// Aborts in both URL forms: `abort_query` names the query id in the path; a statement that
/// times out is cancelled by its request id in the body (`/queries/v1/abort-request`). Each
/// aborted statement is one event, failed and flagged `aborted`.
#[test]
fn aborted_statements_are_recorded_once() -> anyhow::Result<()> {
    let identity = "abort-py4";
    let s = setup(identity, [127, 77, 3, 10])?;
    let by_id = "/*slow:1000000*/ select 1 as aborted_by_id";
    let by_timeout = "/*slow:1000000*/ select 2 as cancelled_by_timeout";
    let spec_id = serde_json::json!({"sql": by_id, "abort": true}).to_string();
    let spec_timeout = serde_json::json!({"sql": by_timeout, "timeout": 2}).to_string();
    let lines = run_session(&s, Driver::Py4, identity, &[&spec_id, &spec_timeout])?;
    ensure!(statement(&lines, by_id)?["aborted"] == true, "{lines:#?}");
    ensure!(
        statement(&lines, by_timeout)?.get("error").is_some(),
        "{lines:#?}"
    );
    let abort_forms: Vec<String> = s
        .fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/abort-request"))
        .map(|r| r.path.clone())
        .collect();
    ensure!(
        abort_forms.iter().any(|p| p == "/queries/v1/abort-request")
            && abort_forms.iter().any(|p| p != "/queries/v1/abort-request"),
        "both abort forms should reach the fake: {abort_forms:?}"
    );
    let events = snowtrail_tests::wait_for(std::time::Duration::from_secs(20), || {
        let ev = s.daemon.events();
        ev.iter().any(|e| e["event_kind"] == "logout").then_some(ev)
    })
    .context("no logout event")?;
    for sql in [by_id, by_timeout] {
        let e = query_event(&events, sql)?;
        ensure!(e["success"] == false, "{e}");
        ensure!(
            e["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "aborted")),
            "{e}"
        );
        ensure!(e["query_id"].is_string(), "{e}");
    }
    Ok(())
}
