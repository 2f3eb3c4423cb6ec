//! End-to-end session recording: connector 5.2.0 under `snowtrail exec`, through the agent, to
//! the fake Snowflake, with `recording.recipient` set to a key made by `snowtrail recording
//! keygen`. What `snowtrail replay --key --json` decrypts equals what the driver returned (a
//! masked JSON result, an Arrow result, a chunked result, a polled result), a failed statement's
//! error is recorded, a result over the cap is truncated and flagged while the driver gets every
//! row; a rule with `record = false` and an identity in `off_for_identities` are not recorded;
//! without the key replay says the results are encrypted; the recordings files hold no plaintext
//! cell; DuckDB joins them to the audit on `event_id`; `audit verify` covers them and finds an
//! added and a deleted one. Root only.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, ensure};
use serde_json::Value;
use snowtrail_tests::session::{self, Setup, rows, run_session, statement};

const PORT_BASE: u16 = 30_300;
/// The per-statement cap the test configures: the big result passes it, the others do not.
const CAP: u64 = 2048;

const POLICY: &str = r#"
[default]
action = "allow"

[[rule]]
name = "hide-email"
action = "mask"
columns = ["email"]
[rule.when]
sql = "from customers"

[[rule]]
name = "payroll-unrecorded"
action = "allow"
record = false
[rule.when]
sql = "from payroll"
"#;

const CUSTOMERS: &str = "select * from customers";
const ARROW: &str = "/*arrow*/ /*rows:5*/ select id, name from people";
const CHUNKED: &str = "/*sf_chunks*/ /*rows:40*/ select id, name from parts";
const BIG: &str = "/*rows:400*/ select id, name from wide";
const FAILING: &str = "/*error*/ select * from nope";
/// Answered `333333` first: its rows come with a poll.
const SLOW: &str = "/*slow:2*/ /*rows:3*/ select id, name from polled";
/// Decided by a rule with `record = false`.
const PAYROLL: &str = "/*rows:2*/ select id, name from payroll";
/// Run by an identity listed in `recording.off_for_identities`.
const ELSEWHERE: &str = "/*rows:2*/ select id from elsewhere";
const UNRECORDED: &str = "unrecorded";

fn snowtrail(config: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(snowtrail_tests::snowtrail_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()?)
}

fn ok(out: std::process::Output) -> anyhow::Result<String> {
    ensure!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A driver's value as the text Snowflake sent (the driver converts numbers).
fn text(v: &Value) -> Value {
    match v {
        Value::Null | Value::String(_) => v.clone(),
        other => Value::String(other.to_string()),
    }
}

fn texts(rows: &[Value]) -> Vec<Vec<Value>> {
    rows.iter()
        .map(|r| {
            r.as_array()
                .map(|c| c.iter().map(text).collect())
                .unwrap_or_default()
        })
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn result_of<'a>(results: &'a [Value], lines: &[Value], sql: &str) -> anyhow::Result<&'a Value> {
    let qid = statement(lines, sql)?
        .get("sfqid")
        .and_then(Value::as_str)
        .or_else(|| statement(lines, sql).ok()?["error"]["sfqid"].as_str())
        .with_context(|| format!("no query id for {sql}"))?
        .to_owned();
    results
        .iter()
        .find(|r| r["query_id"] == qid.as_str())
        .with_context(|| format!("no recorded result for {sql} ({qid}): {results:#?}"))
}

#[test]
fn results_are_recorded_encrypted_and_replayed() -> anyhow::Result<()> {
    let identity = "recorded";
    let keys = tempfile::tempdir()?;
    let key = keys.path().join("recording.key");
    // keygen: the private key 0600, the public key the last line; never over an existing file.
    let out = Command::new(snowtrail_tests::snowtrail_bin())
        .args(["recording", "keygen", "--out"])
        .arg(&key)
        .output()?;
    let printed = ok(out)?;
    let public = printed.lines().last().unwrap_or_default().trim().to_owned();
    ensure!(public.starts_with("age1"), "{printed}");
    use std::os::unix::fs::PermissionsExt as _;
    ensure!(std::fs::metadata(&key)?.permissions().mode() & 0o777 == 0o600);
    let again = Command::new(snowtrail_tests::snowtrail_bin())
        .args(["recording", "keygen", "--out"])
        .arg(&key)
        .output()?;
    ensure!(!again.status.success(), "keygen overwrote its key");

    let recordings = keys.path().join("recordings");
    let rec_dir = recordings.display().to_string();
    let mut s: Setup = session::setup(identity, [127, 77, 9, 1], PORT_BASE, Some(POLICY), |_| {
        format!(
            "recording_dir = {rec_dir:?}\n[recording]\nrecipient = {public:?}\nmax_bytes_per_statement = {CAP}\noff_for_identities = [{UNRECORDED:?}]\n"
        )
    })?;
    let lines = run_session(
        &s,
        identity,
        &[CUSTOMERS, ARROW, CHUNKED, BIG, FAILING, SLOW, PAYROLL],
    )?;
    let off_lines = run_session(&s, UNRECORDED, &[ELSEWHERE])?;
    ensure!(rows(&off_lines, ELSEWHERE)?.len() == 2, "{off_lines:#?}");
    ensure!(
        rows(&lines, BIG)?.len() == 400,
        "the driver lost rows: {lines:#?}"
    );
    let failed = &statement(&lines, FAILING)?["error"];
    ensure!(failed["errno"] == 2003, "{failed}");
    let ev = s
        .daemon
        .wait_event(|e| e["event_kind"] == "query" && e["sql_text"] == BIG)?;
    let session_id = ev["session_id"]
        .as_str()
        .context("no session id")?
        .to_owned();
    // A clean stop publishes the last files and writes the digest naming them.
    s.daemon.stop()?;

    // The audit rows say what was recorded.
    let events = s.daemon.events();
    let query = |sql: &str| {
        events
            .iter()
            .find(|e| e["event_kind"] == "query" && e["sql_text"] == sql)
            .cloned()
            .with_context(|| format!("no event for {sql}"))
    };
    // Off by rule and by identity.
    for sql in [PAYROLL, ELSEWHERE] {
        let e = query(sql)?;
        ensure!(e["recording"] == "off", "{e}");
    }
    for sql in [CUSTOMERS, ARROW, CHUNKED, FAILING, SLOW] {
        let e = query(sql)?;
        ensure!(e["recording"] == "full", "{e}");
        ensure!(
            e["recording_bytes_kept"] == e["recording_bytes_seen"],
            "{e}"
        );
    }
    let big = query(BIG)?;
    ensure!(big["recording"] == "truncated", "{big}");
    let (kept, seen) = (
        big["recording_bytes_kept"].as_u64().unwrap_or(u64::MAX),
        big["recording_bytes_seen"].as_u64().unwrap_or(0),
    );
    ensure!(kept <= CAP && kept < seen, "{big}");

    // Replay with the key: the rows the driver returned.
    let cfg = s.daemon.config.clone();
    let replay = ok(snowtrail(
        &cfg,
        &[
            "replay",
            "--session",
            &session_id,
            "--key",
            &key.display().to_string(),
            "--full",
            "--json",
        ],
    )?)?;
    let doc: Value = serde_json::from_str(&replay)?;
    let results = doc["results"].as_array().context("no results")?.clone();
    ensure!(results.len() == 6, "{doc:#}");
    ensure!(
        !doc["events"].as_array().is_none_or(Vec::is_empty),
        "{doc:#}"
    );
    for sql in [CUSTOMERS, ARROW, CHUNKED, SLOW] {
        let r = result_of(&results, &lines, sql)?;
        let recorded: Vec<Vec<Value>> = serde_json::from_value(r["rows"].clone())?;
        ensure!(
            recorded == texts(rows(&lines, sql)?),
            "{sql}: recorded {recorded:?}, the driver got {:?}",
            rows(&lines, sql)?
        );
        ensure!(r["truncated"] == false, "{r}");
    }
    let customers = result_of(&results, &lines, CUSTOMERS)?;
    ensure!(
        customers["rows"][0][2] == "***",
        "masked in the recording: {customers}"
    );
    ensure!(
        !customers.to_string().contains("ada@example.com"),
        "{customers}"
    );
    ensure!(customers["columns"][2]["name"] == "EMAIL", "{customers}");
    ensure!(result_of(&results, &lines, ARROW)?["format"] == "arrow");
    ensure!(rows(&lines, CHUNKED)?.len() == 40);
    let err = result_of(&results, &lines, FAILING)?;
    ensure!(err["error"]["code"] == "002003", "{err}");
    ensure!(
        err["error"]["message"].as_str() == failed["msg"].as_str(),
        "{err} vs {failed}"
    );
    let big_r = result_of(&results, &lines, BIG)?;
    ensure!(
        big_r["truncated"] == true && big_r["bytes_kept"] == kept,
        "{big_r}"
    );
    let kept_rows: Vec<Vec<Value>> = serde_json::from_value(big_r["rows"].clone())?;
    let all = texts(rows(&lines, BIG)?);
    ensure!(
        !kept_rows.is_empty()
            && kept_rows.len() < all.len()
            && kept_rows[..] == all[..kept_rows.len()],
        "{} rows kept",
        kept_rows.len()
    );

    // One statement with --query-id, as a text table.
    let qid = statement(&lines, CUSTOMERS)?["sfqid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let one = ok(snowtrail(
        &cfg,
        &[
            "replay",
            "--session",
            &session_id,
            "--query-id",
            &qid,
            "--key",
            &key.display().to_string(),
        ],
    )?)?;
    ensure!(
        one.contains("1 recorded results") && one.contains("Ada Lovelace"),
        "{one}"
    );

    // Without the key: the timeline, and the results said to be encrypted.
    let plain = ok(snowtrail(&cfg, &["replay", "--session", &session_id])?)?;
    ensure!(plain.contains("they are encrypted"), "{plain}");
    ensure!(
        plain.contains("query") && !plain.contains("Ada Lovelace"),
        "{plain}"
    );

    // No plaintext cell in the recordings files, and none under the audit directory.
    let files = files_under(&recordings);
    ensure!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "parquet")),
        "{files:?}"
    );
    for f in &files {
        let bytes = std::fs::read(f)?;
        for needle in [&b"Ada Lovelace"[..], b"PEOPLE_", b"NAME_1"] {
            ensure!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds plaintext {:?}",
                f.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    ensure!(
        files_under(&s.daemon.audit_dir)
            .iter()
            .all(|f| !f.starts_with(&recordings)),
        "recordings under the audit directory"
    );

    // DuckDB reads the recordings table and joins it to the audit.
    let script = format!(
        "import duckdb\nprint(duckdb.sql(\"SELECT count(*), count(*) FILTER (WHERE r.truncated = (a.recording = 'truncated')), sum(CASE WHEN r.bytes_kept = a.recording_bytes_kept THEN 1 ELSE 0 END) FROM read_parquet('{}/**/*.parquet', hive_partitioning = true) r JOIN read_parquet('{}/**/*.parquet', union_by_name = true) a ON r.event_id = a.event_id WHERE a.event_kind = 'query'\").fetchall()[0])\n",
        recordings.display(),
        s.daemon.audit_dir.display()
    );
    let out = Command::new(snowtrail_tests::python())
        .arg("-c")
        .arg(script)
        .output()?;
    let joined = ok(out)?;
    ensure!(joined.trim() == "(6, 6, 6)", "DuckDB join: {joined}");

    // The digests name the recordings files: verify passes, and finds one deleted.
    let audit = s.daemon.audit_dir.display().to_string();
    let state = s.daemon.dir.path().join("state").display().to_string();
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "verify",
            audit.as_str(),
            "--state-dir",
            state.as_str(),
        ];
        args.extend_from_slice(extra);
        snowtrail(&cfg, &args)
    };
    let good = verify(&["--recordings-dir", &rec_dir])?;
    let good_text = ok(good)?;
    let parquet: Vec<_> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
        .collect();
    // A file no digest names, added beside them, is found.
    let foreign = parquet[0].with_file_name("foreign-recordings.parquet");
    std::fs::copy(parquet[0], &foreign)?;
    let added = verify(&["--recordings-dir", &rec_dir])?;
    let added_text = String::from_utf8_lossy(&added.stdout).into_owned();
    ensure!(
        !added.status.success()
            && added_text.contains("foreign-recordings.parquet: named by no digest"),
        "verify passed with a foreign recordings file:\n{added_text}"
    );
    std::fs::remove_file(&foreign)?;
    std::fs::remove_file(parquet[0])?;
    let bad = verify(&["--recordings-dir", &rec_dir])?;
    let bad_text = String::from_utf8_lossy(&bad.stdout).into_owned();
    ensure!(
        !bad.status.success(),
        "verify passed with a recordings file removed:\n{bad_text}\n(before: {good_text})"
    );
    let name = parquet[0]
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    ensure!(
        bad_text.contains(&name) && bad_text.contains("removed"),
        "{bad_text}"
    );
    Ok(())
}

/// Makes a recipient key with `snowtrail recording keygen`: (private key file, public key).
fn keygen(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let key = dir.join("recording.key");
    let out = Command::new(snowtrail_tests::snowtrail_bin())
        .args(["recording", "keygen", "--out"])
        .arg(&key)
        .output()?;
    let printed = ok(out)?;
    let public = printed.lines().last().unwrap_or_default().trim().to_owned();
    ensure!(public.starts_with("age1"), "{printed}");
    Ok((key, public))
}

/// The recorded results of a session, decrypted by `snowtrail replay --key --full --json`.
fn replayed(config: &Path, session_id: &str, key: &Path) -> anyhow::Result<Vec<Value>> {
    let out = ok(snowtrail(
        config,
        &[
            "replay",
            "--session",
            session_id,
            "--key",
            &key.display().to_string(),
            "--full",
            "--json",
        ],
    )?)?;
    let doc: Value = serde_json::from_str(&out)?;
    doc["results"]
        .as_array()
        .cloned()
        .with_context(|| format!("no results: {doc:#}"))
}

/// The recorded result of query id `qid`.
fn recorded<'a>(results: &'a [Value], qid: &str) -> anyhow::Result<&'a Value> {
    results
        .iter()
        .find(|r| r["query_id"] == qid)
        .with_context(|| format!("no recorded result for {qid}: {results:#?}"))
}

/// The rows of a recorded result, as the driver's rows compare to them.
fn recorded_rows(r: &Value) -> anyhow::Result<Vec<Vec<Value>>> {
    Ok(serde_json::from_value(r["rows"].clone())?)
}

const LATER_SQL: &str = "/*rows:4*/ select id, name from later";
const LATER: &str = r#"{"sql": "/*rows:4*/ select id, name from later", "async": true}"#;
const LATER_FAILING_SQL: &str = "/*error*/ select * from later_nope";
const LATER_FAILING: &str = r#"{"sql": "/*error*/ select * from later_nope", "async": true}"#;
const FIRST_SQL: &str = "select 11 as first";
const SECOND_SQL: &str = "/*rows:3*/ select id, name from second";
const MULTI: &str =
    r#"{"sql": "select 11 as first; /*rows:3*/ select id, name from second", "num_statements": 2}"#;
/// The per-session cap of the second test: above what the first session keeps and what `CAP_A`
/// keeps, below `CAP_A` and `CAP_B` together.
const SESSION_CAP: u64 = 3000;
const CAP_A: &str = "/*rows:40*/ select id, name from cap_a";
const CAP_B: &str = "/*rows:200*/ select id, name from cap_b";
const CAP_C: &str = "/*rows:5*/ select id, name from cap_c";

/// Results fetched by a request of their own (an async statement's, a multi-statement request's
/// statements'), PUT and GET, and the per-session cap, with connector 5.2.0 through the agent.
#[test]
fn fetched_results_file_commands_and_the_session_cap_are_recorded() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let (key, public) = keygen(keys.path())?;
    let rec_dir = keys.path().join("recordings").display().to_string();
    let mut s: Setup = session::setup("fetched", [127, 77, 9, 2], PORT_BASE + 20, None, |_| {
        format!(
            "recording_dir = {rec_dir:?}\n[recording]\nrecipient = {public:?}\nmax_bytes_per_session = {SESSION_CAP}\n"
        )
    })?;
    let file = s.dir.path().join("data1.csv");
    std::fs::write(&file, "1,one\n2,two\n3,three\n")?;
    let down = s.dir.path().join("down");
    std::fs::create_dir_all(&down)?;
    let put = format!("put file://{} @stg1", file.display());
    let get = format!("get @stg1 file://{}/", down.display());
    let lines = run_session(
        &s,
        "fetched",
        &[LATER, LATER_FAILING, MULTI, "create stage stg1", &put, &get],
    )?;
    let capped = run_session(&s, "capped", &[CAP_A, CAP_B, CAP_C])?;
    ensure!(
        statement(&lines, &put)?["rows"][0][6] == "UPLOADED"
            && statement(&lines, &get)?["rows"][0][2] == "DOWNLOADED",
        "{lines:#?}"
    );
    for (sql, n) in [(CAP_A, 40), (CAP_B, 200), (CAP_C, 5)] {
        ensure!(
            rows(&capped, sql)?.len() == n,
            "the driver lost rows: {capped:#?}"
        );
    }
    // Each transfer statement's event (and recording) waits until its transfers are quiet.
    for prefix in ["put ", "get "] {
        s.daemon.wait_event(|e| {
            e["event_kind"] == "query"
                && e["sql_text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(prefix))
                && e["stage_requests"].as_u64() > Some(0)
        })?;
    }
    s.daemon.stop()?;
    let events = s.daemon.events();
    let query = |sql: &str| -> anyhow::Result<Value> {
        let found: Vec<&Value> = events
            .iter()
            .filter(|e| e["event_kind"] == "query" && e["sql_text"] == sql)
            .collect();
        ensure!(found.len() == 1, "{sql}: {found:#?}");
        Ok(found[0].clone())
    };
    let session_of = |sql: &str| -> anyhow::Result<String> {
        Ok(query(sql)?["session_id"]
            .as_str()
            .context("no session id")?
            .to_owned())
    };
    let cfg = s.daemon.config.clone();
    let results = replayed(&cfg, &session_of(LATER_SQL)?, &key)?;

    // The async statement: its result came with the fetch after monitoring said it ended.
    let later = query(LATER_SQL)?;
    ensure!(
        later["is_async"] == true && later["recording"] == "full",
        "{later}"
    );
    let r = recorded(&results, later["query_id"].as_str().unwrap_or_default())?;
    ensure!(r["event_id"] == later["event_id"], "{r}");
    ensure!(
        recorded_rows(r)? == texts(rows(&lines, LATER_SQL)?),
        "async: recorded {r}, the driver got {:?}",
        rows(&lines, LATER_SQL)?
    );

    // A failed async statement: the error monitoring reported, which the driver raised.
    let failed = query(LATER_FAILING_SQL)?;
    ensure!(
        failed["success"] == false && failed["recording"] == "full",
        "{failed}"
    );
    let raised = &statement(&lines, LATER_FAILING_SQL)?["error"];
    let r = recorded(&results, failed["query_id"].as_str().unwrap_or_default())?;
    ensure!(
        r["error"]["code"] == "002003" && raised["errno"] == 2003,
        "recorded {r}, the driver raised {raised}"
    );

    // Each statement of the multi-statement request: the result fetched for it.
    let sets = statement(&lines, MULTI_SQL_TEXT)?["sets"]
        .as_array()
        .context("no result sets")?
        .clone();
    ensure!(sets.len() == 2, "{sets:#?}");
    for (sql, set) in [FIRST_SQL, SECOND_SQL].iter().zip(&sets) {
        let e = query(sql)?;
        ensure!(
            e["recording"] == "full" && e["query_id"] == set["sfqid"],
            "{e} {set}"
        );
        ensure!(e["parent_query_id"].is_string(), "{e}");
        let r = recorded(&results, set["sfqid"].as_str().unwrap_or_default())?;
        let driver: Vec<Value> = set["rows"].as_array().cloned().unwrap_or_default();
        ensure!(
            recorded_rows(r)? == texts(&driver),
            "{sql}: recorded {r}, the driver got {driver:?}"
        );
    }

    // PUT and GET: the file command and each transfer, never the presigned query.
    let transfers: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["event_kind"] == "query"
                && e["sql_text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("put ") || t.starts_with("get "))
                && e["stage_requests"].as_u64() > Some(0)
        })
        .collect();
    ensure!(transfers.len() >= 2, "{events:#?}");
    for e in transfers {
        ensure!(e["recording"] == "full", "{e}");
        let r = recorded(&results, e["query_id"].as_str().unwrap_or_default())?;
        let t = &r["transfer"];
        let upload = e["sql_text"]
            .as_str()
            .is_some_and(|t| t.starts_with("put "));
        ensure!(
            t["command"] == if upload { "UPLOAD" } else { "DOWNLOAD" },
            "{r}"
        );
        let files = t["files"].as_array().context("no transfers recorded")?;
        let sum = |k: &str| files.iter().filter_map(|f| f[k].as_u64()).sum::<u64>();
        ensure!(
            sum("bytes_sent") == e["stage_bytes_sent"].as_u64().unwrap_or(u64::MAX)
                && sum("bytes_received") == e["stage_bytes_received"].as_u64().unwrap_or(u64::MAX),
            "the recorded transfers do not add up to the event's: {r} {e}"
        );
        // A PUT asks first whether the file is there (HEAD, 404), then uploads it.
        let method = if upload { "PUT" } else { "GET" };
        ensure!(
            files
                .iter()
                .any(|f| f["method"] == method && f["status"] == 200),
            "{r}"
        );
        ensure!(
            files
                .iter()
                .all(|f| f["path"].as_str().is_some_and(|p| !p.contains('?'))),
            "{r}"
        );
        ensure!(
            r["rows"].as_array().map(Vec::len) == Some(files.len()),
            "replay shows one row per transfer: {r}"
        );
        ensure!(!r.to_string().contains("Signature"), "{r}");
    }

    // The session cap: the first result whole, the second cut, nothing of the third; the driver
    // received every row of each.
    let a = query(CAP_A)?;
    let b = query(CAP_B)?;
    let c = query(CAP_C)?;
    let kept = |e: &Value| e["recording_bytes_kept"].as_u64().unwrap_or(u64::MAX);
    let seen = |e: &Value| e["recording_bytes_seen"].as_u64().unwrap_or(0);
    ensure!(a["recording"] == "full" && kept(&a) == seen(&a), "{a}");
    ensure!(
        b["recording"] == "truncated" && kept(&b) > 0 && kept(&b) < seen(&b),
        "{b}"
    );
    ensure!(
        c["recording"] == "truncated" && kept(&c) == 0 && seen(&c) > 0,
        "{c}"
    );
    ensure!(kept(&a) + kept(&b) <= SESSION_CAP, "{a} {b}");
    let capped_results = replayed(&cfg, &session_of(CAP_A)?, &key)?;
    let rb = recorded(&capped_results, b["query_id"].as_str().unwrap_or_default())?;
    let kept_rows = recorded_rows(rb)?;
    let all = texts(rows(&capped, CAP_B)?);
    ensure!(
        !kept_rows.is_empty() && kept_rows[..] == all[..kept_rows.len()] && rb["truncated"] == true,
        "{rb}"
    );
    let rc = recorded(&capped_results, c["query_id"].as_str().unwrap_or_default())?;
    ensure!(
        rc["row_count"] == 0 && rc["columns"].as_array().is_some_and(Vec::is_empty),
        "{rc}"
    );
    Ok(())
}

const MULTI_SQL_TEXT: &str = "select 11 as first; /*rows:3*/ select id, name from second";

/// SIGKILLs of the daemon in the crash test, each during recorded traffic.
const KILLS: u64 = 15;

/// One workload's statements in the crash test: plain results, async ones (recorded when
/// fetched) and a multi-statement request.
fn crash_statements(run: u64) -> Vec<String> {
    (0..24)
        .map(|i| match i % 6 {
            4 => serde_json::json!({
                "sql": format!("/*rows:{}*/ select id, name from crash_async_{run}_{i}", 2 + i),
                "async": true,
            })
            .to_string(),
            5 => serde_json::json!({
                "sql": format!("select {i} as a; /*rows:3*/ select id, name from crash_multi_{run}_{i}"),
                "num_statements": 2,
            })
            .to_string(),
            _ => format!("/*rows:{}*/ select id, name from crash_{run}_{i}", 5 + i * 3),
        })
        .collect()
}

/// `kill -9` of the daemon, again and again, while a workload's results are being recorded;
/// each time it starts again and recovers. Afterwards `audit verify --recordings-dir` passes,
/// and every audit row that says its result was recorded (`full` or `truncated`) has exactly
/// one recordings row with its event id, no recordings row appearing twice.
#[test]
fn recordings_stay_exact_across_kill_9s_during_traffic() -> anyhow::Result<()> {
    use snowtrail_tests::fake_snowflake::drivers::{self, Driver};
    use std::io::BufRead as _;
    use std::os::unix::process::CommandExt as _;
    use std::sync::mpsc;
    use std::time::Duration;

    let keys = tempfile::tempdir()?;
    let (_key, public) = keygen(keys.path())?;
    let recordings = keys.path().join("recordings");
    let rec_dir = recordings.display().to_string();
    let mut s: Setup = session::setup("reckill", [127, 77, 9, 3], PORT_BASE + 40, None, |_| {
        format!("recording_dir = {rec_dir:?}\n[recording]\nrecipient = {public:?}\n")
    })?;
    let hosts =
        drivers::write_hosts_file(s.dir.path(), s.fake.addr().ip(), &[session::ACCOUNT_HOST])?;
    let mut statements_done = 0u64;
    for run in 0..=KILLS {
        let last = run == KILLS;
        let mut args = vec![
            "--host".to_owned(),
            session::ACCOUNT_HOST.to_owned(),
            "--password".to_owned(),
            session::PASSWORD.to_owned(),
        ];
        args.extend(crash_statements(run));
        let inner =
            drivers::session_command(Driver::Py5, &hosts, Path::new("/nonexistent"), &args)?;
        let mut cmd = s.daemon.exec_command("reckill", &inner);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .process_group(0);
        let mut workload = cmd.spawn()?;
        let stdout = workload.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel::<Value>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        // Kill after a varied number of statements, while the next ones are in flight.
        let target = if last { u64::MAX } else { 1 + (run * 7) % 15 };
        let mut seen = 0u64;
        while seen < target {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(v) if v["step"] == "statement" => seen += 1,
                Ok(v) if v["step"] == "connect" => {
                    ensure!(v["ok"] == true, "run {run}: {v}");
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => anyhow::bail!("run {run}: the workload stopped printing: {e}"),
            }
        }
        statements_done += seen;
        if !last {
            s.daemon.kill();
            let pg = nix::unistd::Pid::from_raw(i32::try_from(workload.id())?);
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
        }
        let status = workload.wait()?;
        let _ = reader.join();
        if last {
            ensure!(
                status.success() && seen == 24,
                "the last workload must run to its end ({status}, {seen} statements)"
            );
        } else {
            s.daemon.start_again()?;
        }
    }
    s.daemon.stop()?;

    // The trail verifies, recordings included.
    let audit = s.daemon.audit_dir.display().to_string();
    let state = s.daemon.state_dir.display().to_string();
    ok(snowtrail(
        &s.daemon.config,
        &[
            "audit",
            "verify",
            &audit,
            "--state-dir",
            &state,
            "--recordings-dir",
            &rec_dir,
        ],
    )?)?;

    // Exactly one recordings row per audit row that claims one.
    let mut rows_by_event: std::collections::HashMap<String, u32> = Default::default();
    for f in snowtrail::recording::replay::list_files(&recordings)? {
        for r in snowtrail::recording::replay::read_file(&f)? {
            *rows_by_event.entry(r.event_id).or_default() += 1;
        }
    }
    let twice: Vec<_> = rows_by_event.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(twice.is_empty(), "recordings rows written twice: {twice:?}");
    let events = s.daemon.events();
    let claimed: Vec<&Value> = events
        .iter()
        .filter(|e| e["recording"] == "full" || e["recording"] == "truncated")
        .collect();
    for e in &claimed {
        let id = e["event_id"].as_str().unwrap_or_default();
        ensure!(
            rows_by_event.get(id) == Some(&1),
            "the audit row says recorded, the recordings table has no row: {e}"
        );
    }
    // The last workload ran whole: each of its statements is recorded.
    let last_run = crash_statements(KILLS);
    ensure!(
        claimed.len() as u64 >= last_run.len() as u64 && statements_done >= KILLS + 24,
        "{} recorded statements, {statements_done} statements run",
        claimed.len()
    );
    for e in events.iter().filter(|e| {
        e["event_kind"] == "query"
            && e["sql_text"]
                .as_str()
                .is_some_and(|t| t.contains(&format!("crash_{KILLS}_")))
    }) {
        ensure!(e["recording"] == "full", "{e}");
    }
    eprintln!(
        "{} audit rows claim a recording, {} recordings rows, {statements_done} statements run",
        claimed.len(),
        rows_by_event.len()
    );
    Ok(())
}
