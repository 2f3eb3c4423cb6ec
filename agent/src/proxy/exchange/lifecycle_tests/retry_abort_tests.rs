//! Retries with the same request id, and aborts racing a statement's own answer.

use serde_json::json;
use tokio::sync::oneshot;

use super::fake_upstream::Answer;
use super::wire;
use super::{Setup, harness, has_flag};

const TOKEN: &str = "tok-1";

/// A retry after a 5xx is the same statement: one row, the intent's event id, the attempts
/// counted and the last attempt's outcome, whatever the earlier attempts got.
#[tokio::test(start_paused = true)]
async fn a_retry_after_a_5xx_is_one_statement_with_its_attempts_counted() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    for _ in 0..3 {
        h.upstream
            .answer(wire::QUERY, Answer::text(503, "Service Unavailable"));
    }
    h.upstream.answer(
        wire::QUERY,
        wire::rows("q-1", &[wire::column("N", "fixed")], json!([["1"]])),
    );
    let sql = "insert into t select 1";

    let first = h.query(TOKEN, sql).await;
    let mut answers = vec![first];
    for n in 1..=3 {
        answers.push(h.exchange(wire::query_retry(TOKEN, "r-1", sql, n)).await);
    }

    // The client sees each attempt's answer as Snowflake sent it.
    for failed in &answers[..3] {
        assert_eq!(failed.status, 503);
        assert_eq!(failed.text(), "Service Unavailable");
    }
    assert_eq!(answers[3].json()["data"]["queryId"], "q-1");
    // Every attempt went upstream, the retries flagged as such in their query strings.
    let sent = h.upstream.received_at(wire::QUERY);
    assert_eq!(sent.len(), 4);
    assert!(sent[3].query.as_deref().unwrap().contains("retryCount=3"));
    // One row for the request id: the last attempt's outcome, four attempts.
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.request_id.as_deref(), Some("r-1"));
    assert_eq!(q.attempts, Some(4));
    assert_eq!(q.success, Some(true));
    assert_eq!(q.query_id.as_deref(), Some("q-1"));
    assert!(q.flags.is_empty(), "{:?}", q.flags);
    assert_eq!(q.error_message, None);
    // No row of a failed attempt comes later.
    tokio::time::advance(crate::proxy::exchange::statement::RETRY_WAIT * 2).await;
    tokio::task::yield_now().await;
    assert_eq!(h.sink.queries().len(), 1, "{:?}", h.sink.queries());
}

/// A 5xx the driver does not retry: the failed attempt is the statement's row once the retry
/// wait passed, with what the upstream answered.
#[tokio::test(start_paused = true)]
async fn a_5xx_never_retried_is_recorded_after_the_retry_wait() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    h.upstream
        .answer(wire::QUERY, Answer::text(500, "Internal Server Error"));
    let got = h
        .exchange(wire::query_request(TOKEN, "r-9", "select 9"))
        .await;
    assert_eq!(got.status, 500);
    tokio::task::yield_now().await;
    tokio::time::advance(
        crate::proxy::exchange::statement::RETRY_WAIT - std::time::Duration::from_secs(1),
    )
    .await;
    tokio::task::yield_now().await;
    assert!(
        h.sink.queries().is_empty(),
        "recorded before the retry wait passed"
    );
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    tokio::task::yield_now().await;
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.success, Some(false));
    assert_eq!(q.attempts, Some(1));
    assert_eq!(q.sql_text.as_deref(), Some("select 9"));
    assert!(has_flag(q, "unparsed"), "{:?}", q.flags);
    assert_eq!(
        q.error_message.as_deref(),
        Some("HTTP 500 Internal Server Error")
    );
}

/// A retry after `390112` (the session expired; the driver renews it and sends the statement
/// again with the same request id) is the same statement: one row, the intent's event id.
#[tokio::test(start_paused = true)]
async fn a_retry_after_session_expiry_is_the_same_statement() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    h.upstream.answer(wire::QUERY, wire::session_expired());
    h.upstream.answer(
        wire::QUERY,
        wire::rows("q-1", &[wire::column("N", "fixed")], json!([["1"]])),
    );

    let first = h.query(TOKEN, "select 1").await;
    assert_eq!(first.json()["code"], "390112");
    assert!(h.sink.queries().is_empty(), "{:?}", h.sink.queries());
    let retry = h.query(TOKEN, "select 1").await;

    assert_eq!(retry.json()["data"]["queryId"], "q-1");
    assert_eq!(h.upstream.received_at(wire::QUERY).len(), 2);
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.success, Some(true));
    assert_eq!(q.query_id.as_deref(), Some("q-1"));
    // Both attempts journaled the one statement's intent.
    let intents = h.sink.intents();
    assert_eq!(intents.len(), 2);
    assert!(intents.iter().all(|i| i.event_id == q.event_id));
}

/// The 4.x abort names the statement by request id while its answer is still in flight; the
/// statement then fails with Snowflake's cancellation: its row is flagged `aborted`.
#[tokio::test(start_paused = true)]
async fn a_statement_failing_after_the_abort_is_flagged_aborted() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    let (release, held) = oneshot::channel();
    h.upstream
        .answer(wire::QUERY, wire::canceled("q-1").after(held));
    h.upstream.answer(wire::ABORT, wire::ok_null());
    let sql = "select long_running()";

    let statement = h.exchange(wire::query_request(TOKEN, "r-1", sql));
    let abort = async {
        h.upstream.wait_for(wire::QUERY, 1).await;
        let got = h.exchange(wire::abort_request(TOKEN, "r-1", sql)).await;
        // Snowflake answers the statement only once it took the abort.
        release.send(()).unwrap();
        got
    };
    let (statement, abort) = tokio::join!(statement, abort);

    assert_eq!(abort.json()["success"], true);
    assert_eq!(statement.json()["code"], "000604");
    // The abort went upstream after the statement, naming it by request id.
    let paths: Vec<String> = h
        .upstream
        .received()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(paths, [wire::LOGIN, wire::QUERY, wire::ABORT]);
    assert_eq!(
        h.upstream.received_at(wire::ABORT)[0].json()["requestId"],
        "r-1"
    );
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.success, Some(false));
    assert_eq!(q.error_code.as_deref(), Some("000604"));
    assert!(has_flag(q, "aborted"), "{:?}", q.flags);
}

/// The abort comes while the statement's answer is in flight, but the statement succeeded
/// before the abort took effect: its row is not flagged, and the abort records nothing.
#[tokio::test(start_paused = true)]
async fn a_statement_succeeding_before_the_abort_is_not_flagged() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    let (release_statement, statement_held) = oneshot::channel();
    let (release_abort, abort_held) = oneshot::channel();
    h.upstream.answer(
        wire::QUERY,
        wire::rows("q-1", &[wire::column("N", "fixed")], json!([["1"]])).after(statement_held),
    );
    h.upstream
        .answer(wire::ABORT, wire::ok_null().after(abort_held));
    let sql = "select quick()";

    let statement = h.exchange(wire::query_request(TOKEN, "r-1", sql));
    let abort = h.exchange(wire::abort_request(TOKEN, "r-1", sql));
    let race = async {
        // Both are upstream: the statement's success comes back first, then the abort's answer.
        h.upstream.wait_for(wire::ABORT, 1).await;
        release_statement.send(()).unwrap();
        for _ in 0..100 {
            if !h.sink.queries().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        release_abort.send(()).unwrap();
    };
    let (statement, abort, ()) = tokio::join!(statement, abort, race);

    assert_eq!(statement.json()["data"]["queryId"], "q-1");
    assert_eq!(abort.json()["success"], true);
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.success, Some(true));
    assert!(!has_flag(q, "aborted"), "{:?}", q.flags);
    assert_eq!(h.sink.events().len(), 2, "a login and the statement");
}

/// An abort of a statement parked after `333333` completes its row at once, failed and
/// flagged `aborted`; the poll that follows finds nothing left to record.
#[tokio::test(start_paused = true)]
async fn an_abort_of_a_running_statement_records_it_aborted() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    h.upstream.answer(wire::QUERY, wire::in_progress("q-1"));
    h.upstream.answer(wire::ABORT, wire::ok_null());
    h.upstream
        .answer(&wire::result_path("q-1"), wire::canceled("q-1"));
    let sql = "select long_running()";

    h.query(TOKEN, sql).await;
    let abort = h.exchange(wire::abort_request(TOKEN, "r-1", sql)).await;

    assert_eq!(abort.json()["success"], true);
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.query_id.as_deref(), Some("q-1"));
    assert_eq!(q.success, Some(false));
    assert_eq!(q.error_message.as_deref(), Some("aborted by the client"));
    assert!(has_flag(q, "aborted"), "{:?}", q.flags);

    let poll = h.exchange(wire::result_poll(TOKEN, "q-1")).await;
    assert_eq!(poll.json()["code"], "000604");
    assert_eq!(h.sink.queries().len(), 1);
}
