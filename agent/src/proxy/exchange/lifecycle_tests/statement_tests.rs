//! A statement answered at once, after `333333` polls, and submitted asynchronously.

use serde_json::json;

use super::wire;
use super::{RedactMode, Setup, harness};

const TOKEN: &str = "tok-1";

#[tokio::test(start_paused = true)]
async fn a_statement_answered_inline_is_one_event_with_its_outcome() {
    let h = harness(Setup {
        redact: RedactMode::AllLiterals,
        ..Setup::default()
    });
    h.login(TOKEN).await;
    let answer = wire::rows(
        "q-1",
        &[wire::column("ID", "fixed"), wire::column("NAME", "text")],
        json!([["1", "ann"], ["2", "bob"]]),
    );
    let upstream_bytes = answer.wire_bytes();
    h.upstream.answer(wire::QUERY, answer);
    let sql = "select id, name from users where email = 'bob@example.com'";

    let got = h.query(TOKEN, sql).await;

    // The client gets Snowflake's bytes exactly.
    assert_eq!(got.status, 200);
    assert_eq!(got.body, upstream_bytes);
    // Snowflake got the statement unredacted.
    let sent = h.upstream.received_at(wire::QUERY);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].json()["sqlText"], sql);
    assert_eq!(sent[0].method, "POST");
    assert_eq!(
        sent[0].query.as_deref(),
        Some("requestId=r-1&request_guid=g-r-1")
    );
    assert_eq!(
        sent[0].headers["authorization"],
        "Snowflake Token=\"tok-1\""
    );
    // One event, its literal redacted.
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.success, Some(true));
    assert_eq!(q.query_id.as_deref(), Some("q-1"));
    assert_eq!(q.request_id.as_deref(), Some("r-1"));
    assert_eq!(q.statement_type.as_deref(), Some("SELECT"));
    assert_eq!(q.rows_produced, Some(2));
    assert_eq!(q.result_bytes, Some(upstream_bytes.len() as u64));
    assert_eq!(q.is_async, Some(false));
    assert_eq!(
        q.sql_text.as_deref(),
        Some("select id, name from users where email = '***'")
    );
    assert_eq!(q.recording.map(|r| r.as_str()), Some("off"));
    assert!(q.flags.is_empty(), "{:?}", q.flags);
    assert_eq!(q.error_code, None);
    // Its intent was journaled before it was forwarded: the same row, by event id.
    let intents = h.sink.intents();
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0].event_id, q.event_id);
    assert_eq!(intents[0].success, None);
}

#[tokio::test(start_paused = true)]
async fn credentials_in_sql_are_redacted_even_when_literals_are_kept() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    h.upstream.answer(
        wire::QUERY,
        wire::rows("q-1", &[wire::column("status", "text")], json!([["ok"]])),
    );
    let sql = "create user bob password = 'hunter2' comment = 'kept'";

    h.query(TOKEN, sql).await;

    let q = &h.sink.queries()[0];
    assert_eq!(
        q.sql_text.as_deref(),
        Some("create user bob password = '***' comment = 'kept'")
    );
    assert_eq!(
        h.upstream.received_at(wire::QUERY)[0].json()["sqlText"],
        sql
    );
}

#[tokio::test(start_paused = true)]
async fn a_statement_answered_333333_is_recorded_once_after_its_last_poll() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    h.upstream.answer(wire::QUERY, wire::in_progress("q-slow"));
    let poll = wire::result_path("q-slow");
    h.upstream.answer(&poll, wire::in_progress("q-slow"));
    h.upstream.answer(
        &poll,
        wire::failed(
            "q-slow",
            "100038",
            "22018",
            "Numeric value 'x' is not recognized",
        ),
    );

    let first = h.query(TOKEN, "select slow()").await;
    assert_eq!(first.json()["code"], "333333");
    assert!(h.sink.queries().is_empty(), "recorded before its outcome");

    let second = h.exchange(wire::result_poll(TOKEN, "q-slow")).await;
    assert_eq!(second.json()["code"], "333333");
    assert!(h.sink.queries().is_empty(), "recorded before its outcome");

    let last = h.exchange(wire::result_poll(TOKEN, "q-slow")).await;
    assert_eq!(last.json()["code"], "100038");
    // Every request reached Snowflake.
    assert_eq!(h.upstream.received_at(wire::QUERY).len(), 1);
    assert_eq!(h.upstream.received_at(&poll).len(), 2);
    // One event, with the final outcome.
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.query_id.as_deref(), Some("q-slow"));
    assert_eq!(q.request_id.as_deref(), Some("r-1"));
    assert_eq!(q.success, Some(false));
    assert_eq!(q.error_code.as_deref(), Some("100038"));
    assert_eq!(q.sql_state.as_deref(), Some("22018"));
    assert_eq!(
        q.error_message.as_deref(),
        Some("Numeric value 'x' is not recognized")
    );
    assert_eq!(q.sql_text.as_deref(), Some("select slow()"));
    assert_eq!(h.sink.intents()[0].event_id, q.event_id);
}

#[tokio::test(start_paused = true)]
async fn an_async_statement_completes_when_the_driver_fetches_its_result() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    let monitor = wire::monitoring_path("q-async");
    h.upstream
        .answer(wire::QUERY, wire::async_in_progress("q-async"));
    h.upstream
        .answer(&monitor, wire::monitoring("q-async", "RUNNING"));
    h.upstream
        .answer(&monitor, wire::monitoring("q-async", "SUCCESS"));
    let result = wire::rows(
        "q-async",
        &[wire::column("N", "fixed")],
        json!([["1"], ["2"], ["3"]]),
    );
    let result_bytes = result.wire_bytes();
    h.upstream.answer(&wire::result_path("q-async"), result);

    let submitted = h
        .exchange(wire::async_query_request(
            TOKEN,
            "r-1",
            "select count(*) from big",
        ))
        .await;
    assert_eq!(submitted.json()["code"], "333334");
    let running = h.exchange(wire::monitoring_request(TOKEN, "q-async")).await;
    assert_eq!(running.json()["data"]["queries"][0]["status"], "RUNNING");
    let done = h.exchange(wire::monitoring_request(TOKEN, "q-async")).await;
    assert_eq!(done.json()["data"]["queries"][0]["status"], "SUCCESS");
    // Monitoring said it succeeded; the event waits for the fetch of the result.
    assert!(h.sink.queries().is_empty(), "{:?}", h.sink.queries());

    let fetched = h.exchange(wire::result_poll(TOKEN, "q-async")).await;

    assert_eq!(fetched.body, result_bytes);
    assert_eq!(h.upstream.received_at(&monitor).len(), 2);
    assert_eq!(
        h.upstream.received_at(&wire::result_path("q-async")).len(),
        1
    );
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.query_id.as_deref(), Some("q-async"));
    assert_eq!(q.is_async, Some(true));
    assert_eq!(q.success, Some(true));
    assert_eq!(q.rows_produced, Some(3));
    assert_eq!(q.statement_type.as_deref(), Some("SELECT"));
    assert_eq!(q.result_bytes, Some(result_bytes.len() as u64));
}

#[tokio::test(start_paused = true)]
async fn an_async_statement_never_fetched_completes_after_the_chunk_wait() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    let monitor = wire::monitoring_path("q-async");
    h.upstream
        .answer(wire::QUERY, wire::async_in_progress("q-async"));
    h.upstream
        .answer(&monitor, wire::monitoring("q-async", "SUCCESS"));
    h.exchange(wire::async_query_request(TOKEN, "r-1", "select 1"))
        .await;
    h.exchange(wire::monitoring_request(TOKEN, "q-async")).await;
    assert!(h.sink.queries().is_empty());

    // The statement's wait starts its timer; the paused clock then passes `chunk_wait`.
    tokio::task::yield_now().await;
    tokio::time::advance(super::CHUNK_WAIT - std::time::Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    assert!(
        h.sink.queries().is_empty(),
        "recorded before chunk_wait passed"
    );
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    tokio::task::yield_now().await;

    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    assert_eq!(queries[0].success, Some(true));
    assert_eq!(queries[0].rows_produced, None);
}

#[tokio::test(start_paused = true)]
async fn an_async_statement_that_failed_completes_from_its_monitoring_answer() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    let monitor = wire::monitoring_path("q-async");
    h.upstream
        .answer(wire::QUERY, wire::async_in_progress("q-async"));
    let mut failed = wire::monitoring("q-async", "FAILED_WITH_ERROR").json_value();
    failed["data"]["queries"][0]["errorCode"] = json!("002003");
    failed["data"]["queries"][0]["errorMessage"] = json!("Object 'NOPE' does not exist");
    h.upstream
        .answer(&monitor, super::fake_upstream::Answer::json(&failed));

    h.exchange(wire::async_query_request(
        TOKEN,
        "r-1",
        "select * from nope",
    ))
    .await;
    let status = h.exchange(wire::monitoring_request(TOKEN, "q-async")).await;

    assert_eq!(
        status.json()["data"]["queries"][0]["status"],
        "FAILED_WITH_ERROR"
    );
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.success, Some(false));
    assert_eq!(q.error_code.as_deref(), Some("002003"));
    // Today the row's `error_message` is the monitoring status; the error's text goes to the
    // statement's recording.
    assert_eq!(q.error_message.as_deref(), Some("FAILED_WITH_ERROR"));
    assert_eq!(q.is_async, Some(true));
    assert!(
        h.upstream
            .received_at(&wire::result_path("q-async"))
            .is_empty()
    );
}
