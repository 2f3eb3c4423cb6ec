//! Statements through Snowflake's SQL API (`/api/v2/statements`), read like a driver's.

use serde_json::json;

use super::fake_upstream::Answer;
use super::masking_tests::MASK_POLICY;
use super::wire;
use super::{Setup, harness, has_flag};
use crate::audit::EventKind;

const TOKEN: &str = "tok-1";

const DENY_DROPS: &str = r#"
[default]
action = "allow"

[[rule]]
name = "no-drops"
action = "deny"
[rule.when]
statement = ["DROP"]
"#;

/// A statement answered at once is one `query` event of its session, its handle the query id.
#[tokio::test(start_paused = true)]
async fn a_statement_is_one_query_event_with_its_handle() {
    let h = harness(Setup::default());
    h.login(TOKEN).await;
    h.upstream.answer(
        wire::SQL_API,
        wire::sql_api_rows("01b2-h1", json!([["1"], ["2"]])),
    );

    let got = h
        .exchange(wire::sql_api_request(TOKEN, "select n from t"))
        .await;

    assert_eq!(got.status, 200);
    assert_eq!(got.json()["statementHandle"], "01b2-h1");
    let sent = h.upstream.received_at(wire::SQL_API);
    assert_eq!(sent.len(), 1);
    // Snowflake got the statement with the agent's tag, which joins its history to the audit.
    let forwarded: serde_json::Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(forwarded["statement"], "select n from t");
    let tag: serde_json::Value =
        serde_json::from_str(forwarded["parameters"]["query_tag"].as_str().unwrap()).unwrap();
    assert!(tag["snowtrail"]["session_id"].is_string(), "{tag}");
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{:?}", h.sink.events());
    let q = &queries[0];
    assert_eq!(q.query_id.as_deref(), Some("01b2-h1"));
    assert_eq!(q.sql_text.as_deref(), Some("select n from t"));
    assert_eq!(q.success, Some(true));
    assert_eq!(q.rows_produced, Some(2));
    assert_eq!(q.driver.as_deref(), Some("SQL API"));
    assert_eq!(q.login_user.as_deref(), Some("fake"));
    // Its partitions, fetched by handle, belong to it: no event of their own.
    h.upstream.answer(
        "/api/v2/statements/01b2-h1",
        Answer::json(&json!({"data": [["3"]]})),
    );
    let part = h
        .exchange(wire::sql_api_status(TOKEN, "01b2-h1", Some(1)))
        .await;
    assert_eq!(part.status, 200);
    assert_eq!(
        h.sink.events().len(),
        queries.len() + 1,
        "{:?}",
        h.sink.events()
    );
}

/// A statement a rule denies never reaches Snowflake: the SQL API's own error, and a denial.
#[tokio::test(start_paused = true)]
async fn a_denied_statement_is_refused_as_the_sql_api_refuses() {
    let h = harness(Setup {
        policy: Some(DENY_DROPS),
        ..Setup::default()
    });
    h.login(TOKEN).await;

    let got = h
        .exchange(wire::sql_api_request(TOKEN, "drop table orders"))
        .await;

    assert_eq!(got.status, 422);
    let body = got.json();
    assert_eq!(body["code"], "003001");
    assert_eq!(body["sqlState"], "42501");
    assert!(
        body["message"].as_str().unwrap().contains("no-drops"),
        "{body}"
    );
    assert!(h.upstream.received_at(wire::SQL_API).is_empty());
    let denials = h.sink.of_kind(EventKind::Denial);
    assert_eq!(denials.len(), 1, "{:?}", h.sink.events());
    assert_eq!(denials[0].policy_rule.as_deref(), Some("no-drops"));
    assert_eq!(denials[0].sql_text.as_deref(), Some("drop table orders"));
    assert_eq!(
        denials[0].query_id.as_deref(),
        body["statementHandle"].as_str()
    );
}

/// A rule that masks a column masks it in the SQL API's answer and in every later partition
/// fetched by its handle; the statement is one `mask` event of its rule.
#[tokio::test(start_paused = true)]
async fn a_masked_column_is_masked_in_the_answer_and_its_partitions() {
    let h = harness(Setup {
        policy: Some(MASK_POLICY),
        ..Setup::default()
    });
    h.login(TOKEN).await;
    h.upstream.answer(
        wire::SQL_API,
        Answer::json(&json!({
            "resultSetMetaData": {"numRows": 3, "format": "jsonv2",
                "partitionInfo": [{"rowCount": 2}, {"rowCount": 1}],
                "rowType": [{"name": "ID", "type": "fixed"}, {"name": "EMAIL", "type": "text"}]},
            "data": [["1", "a@example.com"], ["2", "b@example.com"]], "code": "090001",
            "statementHandle": "01b2-m", "message": "Statement executed successfully."
        })),
    );
    let got = h
        .exchange(wire::sql_api_request(TOKEN, "select id, email from users"))
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["data"], json!([["1", "***"], ["2", "***"]]));
    assert!(!got.text().contains("example.com"));
    h.upstream.answer(
        "/api/v2/statements/01b2-m",
        Answer::json(&json!({"data": [["3", "c@example.com"]]})),
    );
    let part = h
        .exchange(wire::sql_api_status(TOKEN, "01b2-m", Some(1)))
        .await;
    assert_eq!(part.status, 200);
    assert_eq!(part.json()["data"], json!([["3", "***"]]));
    let q = &h.sink.queries()[0];
    assert_eq!(q.decision.map(|d| d.as_str()), Some("mask"));
    assert_eq!(q.policy_rule.as_deref(), Some("mask-email"));
    assert_eq!(q.rows_produced, Some(3));
}

/// A row limit that cuts keeps the first rows of the first partition and withholds the later
/// partitions; one that refuses withholds the whole result, the statement recorded as refused.
#[tokio::test(start_paused = true)]
async fn a_row_limit_cuts_or_withholds_a_sql_api_result() {
    const LIMITS: &str = r#"
[default]
action = "allow"

[[rule]]
name = "first-row"
action = "row_limit"
rows = 1
on_exceed = "truncate"
[rule.when]
sql = "cut"

[[rule]]
name = "at-most-one"
action = "row_limit"
rows = 1
[rule.when]
statement = ["SELECT"]
"#;
    let h = harness(Setup {
        policy: Some(LIMITS),
        ..Setup::default()
    });
    h.login(TOKEN).await;
    h.upstream.answer(
        wire::SQL_API,
        wire::sql_api_rows("01b2-l", json!([["1"], ["2"]])),
    );
    let got = h
        .exchange(wire::sql_api_request(TOKEN, "select n from cut"))
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["data"], json!([["1"]]));
    assert_eq!(got.json()["resultSetMetaData"]["numRows"], 1);
    let later = h
        .exchange(wire::sql_api_status(TOKEN, "01b2-l", Some(1)))
        .await;
    assert_eq!(later.status, 422, "{}", later.text());
    assert!(
        h.upstream
            .received_at("/api/v2/statements/01b2-l")
            .is_empty()
    );
    let cut = &h.sink.queries()[0];
    assert!(has_flag(cut, "rows_truncated"), "{cut:?}");
    assert_eq!(cut.rows_produced, Some(1));

    h.upstream.answer(
        wire::SQL_API,
        wire::sql_api_rows("01b2-r", json!([["1"], ["2"]])),
    );
    let got = h
        .exchange(wire::sql_api_request(TOKEN, "select n from t"))
        .await;
    assert_eq!(got.status, 422, "{}", got.text());
    assert!(!got.text().contains("\"data\""), "{}", got.text());
    let refused = h
        .sink
        .queries()
        .into_iter()
        .find(|q| q.sql_text.as_deref() == Some("select n from t"))
        .unwrap();
    assert!(has_flag(&refused, "result_refused"), "{refused:?}");
}

/// An asynchronous statement is recorded once its status says it ended; a cancelled one as
/// aborted.
#[tokio::test(start_paused = true)]
async fn async_statements_complete_from_their_status_or_their_cancel() {
    let h = harness(Setup::default());
    h.login(TOKEN).await;
    h.upstream
        .answer(wire::SQL_API, wire::sql_api_running("01b2-a"));
    h.upstream
        .answer(wire::SQL_API, wire::sql_api_running("01b2-b"));
    let got = h.exchange(wire::sql_api_request(TOKEN, "select 1")).await;
    assert_eq!(got.status, 202);
    h.exchange(wire::sql_api_request(TOKEN, "select 2")).await;
    assert!(h.sink.queries().is_empty(), "{:?}", h.sink.events());

    // The first: still running, then done.
    let status_a = "/api/v2/statements/01b2-a";
    h.upstream.answer(status_a, wire::sql_api_running("01b2-a"));
    h.upstream
        .answer(status_a, wire::sql_api_rows("01b2-a", json!([["1"]])));
    h.exchange(wire::sql_api_status(TOKEN, "01b2-a", None))
        .await;
    assert!(h.sink.queries().is_empty());
    h.exchange(wire::sql_api_status(TOKEN, "01b2-a", None))
        .await;
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    assert_eq!(queries[0].query_id.as_deref(), Some("01b2-a"));
    assert_eq!(queries[0].success, Some(true));
    assert_eq!(queries[0].rows_produced, Some(1));
    assert_eq!(queries[0].is_async, Some(false));

    // The second: cancelled.
    h.upstream.answer(
        "/api/v2/statements/01b2-b/cancel",
        Answer::json(&json!({"code": "000604", "message": "Statement canceled.",
            "statementHandle": "01b2-b"})),
    );
    h.exchange(wire::sql_api_cancel(TOKEN, "01b2-b")).await;
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 2, "{queries:?}");
    let b = &queries[1];
    assert_eq!(b.query_id.as_deref(), Some("01b2-b"));
    assert_eq!(b.success, Some(false));
    assert!(has_flag(b, "aborted"), "{:?}", b.flags);
}

/// A status request for a handle the agent never saw answered (another session's statement, a
/// result fetched by its id) is an unknown request: recorded, or refused with
/// `unknown_requests = "deny"`.
#[tokio::test(start_paused = true)]
async fn a_status_request_for_a_handle_never_seen_is_an_unknown_request() {
    let h = harness(Setup::default());
    h.login(TOKEN).await;
    h.upstream.answer(
        "/api/v2/statements/01b2-elsewhere",
        wire::sql_api_rows("01b2-elsewhere", json!([["9"]])),
    );
    h.exchange(wire::sql_api_status(TOKEN, "01b2-elsewhere", None))
        .await;
    let requests = h.sink.of_kind(EventKind::Request);
    assert_eq!(requests.len(), 1, "{:?}", h.sink.events());
    assert_eq!(
        requests[0].http_path.as_deref(),
        Some("/api/v2/statements/01b2-elsewhere")
    );
    assert!(h.sink.queries().is_empty());
}

/// A statement resubmitted with the same request id after a 5xx is one statement.
#[tokio::test(start_paused = true)]
async fn a_resubmission_after_a_5xx_is_the_same_statement() {
    let h = harness(Setup::default());
    h.login(TOKEN).await;
    h.upstream
        .answer(wire::SQL_API, Answer::text(503, "Service Unavailable"));
    h.upstream
        .answer(wire::SQL_API, wire::sql_api_rows("01b2-r", json!([["1"]])));
    let first = h
        .exchange(wire::sql_api_request_with_id(TOKEN, "rq-1", "select 1"))
        .await;
    assert_eq!(first.status, 503);
    let again = h
        .exchange(wire::sql_api_request_with_id(TOKEN, "rq-1", "select 1"))
        .await;
    assert_eq!(again.status, 200);
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    assert_eq!(queries[0].attempts, Some(2));
    assert_eq!(queries[0].success, Some(true));
    assert_eq!(queries[0].query_id.as_deref(), Some("01b2-r"));
}

/// A statement a rule holds for approval: the client gets HTTP 202 under the hold's handle and
/// polls it; approved, the poll sends it to Snowflake and answers with its result, and the
/// partitions asked for by the hold's handle come from Snowflake's; the event has its approver.
/// A held statement the client cancels never reaches Snowflake.
#[tokio::test(start_paused = true)]
async fn a_held_statement_waits_for_its_approver_under_its_hold_handle() {
    const APPROVE_DELETES: &str = r#"
[default]
action = "allow"

[[rule]]
name = "approve-deletes"
action = "require_approval"
timeout_s = 60
[rule.when]
statement = ["DELETE"]
"#;
    let h = harness(Setup {
        policy: Some(APPROVE_DELETES),
        ..Setup::default()
    });
    h.login(TOKEN).await;
    let held = h
        .exchange(wire::sql_api_request(TOKEN, "delete from t where n = 1"))
        .await;
    assert_eq!(held.status, 202, "{}", held.text());
    let hold = held.json()["statementHandle"].as_str().unwrap().to_owned();
    assert!(h.upstream.received_at(wire::SQL_API).is_empty());
    let waiting = h.exchange(wire::sql_api_status(TOKEN, &hold, None)).await;
    assert_eq!(waiting.status, 202);

    h.decide(&hold, true, "alice@example.com");
    h.upstream.answer(
        wire::SQL_API,
        wire::sql_api_rows("01b2-real", json!([["1"]])),
    );
    let done = h.exchange(wire::sql_api_status(TOKEN, &hold, None)).await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.json()["statementHandle"], "01b2-real");
    let sent = h.upstream.received_at(wire::SQL_API);
    assert_eq!(sent.len(), 1);
    let q = &h.sink.queries()[0];
    assert_eq!(q.decision.map(|d| d.as_str()), Some("approved"));
    assert_eq!(q.approver.as_deref(), Some("alice@example.com"));
    assert_eq!(q.query_id.as_deref(), Some("01b2-real"));
    h.upstream.answer(
        "/api/v2/statements/01b2-real",
        Answer::json(&json!({"data": [["2"]]})),
    );
    let part = h
        .exchange(wire::sql_api_status(TOKEN, &hold, Some(1)))
        .await;
    assert_eq!(part.status, 200, "{}", part.text());
    assert_eq!(
        h.upstream.received_at("/api/v2/statements/01b2-real").len(),
        1
    );

    // Held, then cancelled: nothing reaches Snowflake.
    let held = h
        .exchange(wire::sql_api_request(TOKEN, "delete from t where n = 2"))
        .await;
    let hold = held.json()["statementHandle"].as_str().unwrap().to_owned();
    let cancel = h.exchange(wire::sql_api_cancel(TOKEN, &hold)).await;
    assert_eq!(cancel.status, 200, "{}", cancel.text());
    assert_eq!(h.upstream.received_at(wire::SQL_API).len(), 1);
    assert!(h.holds.pending().is_empty());
}

/// A multi-statement request: each statement is its own event under its own handle, the
/// request's handle its parent; one fetched by its handle is recorded with its result, one never
/// fetched once the wait for it passed.
#[tokio::test(start_paused = true)]
async fn each_statement_of_a_multi_statement_request_is_its_own_event() {
    let h = harness(Setup::default());
    h.login(TOKEN).await;
    h.upstream.answer(
        wire::SQL_API,
        Answer::json(&json!({
            "resultSetMetaData": {"numRows": 1, "format": "jsonv2",
                "rowType": [{"name": "multiple statement execution", "type": "text"}]},
            "data": [["Multiple statements executed successfully."]],
            "code": "090001", "statementHandle": "01b2-p",
            "statementHandles": ["01b2-c1", "01b2-c2"],
            "message": "Statement executed successfully."
        })),
    );
    let got = h
        .exchange(wire::sql_api_request(TOKEN, "select 1; select 2"))
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(h.sink.queries().is_empty(), "{:?}", h.sink.events());

    h.upstream.answer(
        "/api/v2/statements/01b2-c1",
        wire::sql_api_rows("01b2-c1", json!([["1"]])),
    );
    let first = h
        .exchange(wire::sql_api_status(TOKEN, "01b2-c1", None))
        .await;
    assert_eq!(first.status, 200);
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    assert_eq!(queries[0].query_id.as_deref(), Some("01b2-c1"));
    assert_eq!(queries[0].parent_query_id.as_deref(), Some("01b2-p"));
    assert_eq!(queries[0].sql_text.as_deref(), Some("select 1"));
    assert_eq!(queries[0].rows_produced, Some(1));

    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 2, "{queries:?}");
    let second = queries
        .iter()
        .find(|q| q.query_id.as_deref() == Some("01b2-c2"))
        .unwrap();
    assert_eq!(second.sql_text.as_deref(), Some("select 2"));
    assert_eq!(second.parent_query_id.as_deref(), Some("01b2-p"));
    assert_eq!(second.success, Some(true));
}
