//! Retries with the same request id, and aborts racing a statement's own answer.

use serde_json::json;
use tokio::sync::oneshot;

use super::fake_upstream::Answer;
use super::wire;
use super::{Setup, harness, has_flag};

const TOKEN: &str = "tok-1";

/// Today a retry after a 5xx is a statement of its own: the failed attempt is recorded (failed,
/// `unparsed`) and the retry gets a second row with the same request id. A known weakness:
/// when retries of one request id become one statement, this test changes with it.
#[tokio::test(start_paused = true)]
async fn known_weakness_a_retry_after_a_5xx_is_recorded_per_attempt() {
    let h = harness(Setup::default());
    h.login(TOKEN).await;
    h.upstream
        .answer(wire::QUERY, Answer::text(503, "Service Unavailable"));
    h.upstream.answer(
        wire::QUERY,
        wire::rows("q-1", &[wire::column("N", "fixed")], json!([["1"]])),
    );
    let sql = "insert into t select 1";

    let first = h.exchange(wire::query_request(TOKEN, "r-1", sql)).await;
    let retry = h.exchange(wire::query_retry(TOKEN, "r-1", sql, 1)).await;

    // The client sees each attempt's answer as Snowflake sent it.
    assert_eq!(first.status, 503);
    assert_eq!(first.text(), "Service Unavailable");
    assert_eq!(retry.json()["data"]["queryId"], "q-1");
    // Both attempts went upstream, the retry flagged as such in its query string.
    let sent = h.upstream.received_at(wire::QUERY);
    assert_eq!(sent.len(), 2);
    assert!(sent[1].query.as_deref().unwrap().contains("retryCount=1"));
    // Two rows for one request id: the failed attempt, and the retry's outcome.
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 2, "{queries:?}");
    let (a, b) = (&queries[0], &queries[1]);
    assert_eq!(a.request_id.as_deref(), Some("r-1"));
    assert_eq!(b.request_id.as_deref(), Some("r-1"));
    assert_ne!(a.event_id, b.event_id);
    assert_eq!(a.success, Some(false));
    assert!(has_flag(a, "unparsed"), "{:?}", a.flags);
    assert_eq!(a.query_id, None);
    assert_eq!(b.success, Some(true));
    assert_eq!(b.query_id.as_deref(), Some("q-1"));
    assert!(b.flags.is_empty(), "{:?}", b.flags);
}

/// A retry after `390112` (the session expired; the driver renews it and sends the statement
/// again with the same request id) is the same statement: one row, the intent's event id.
#[tokio::test(start_paused = true)]
async fn a_retry_after_session_expiry_is_the_same_statement() {
    let h = harness(Setup::default());
    h.login(TOKEN).await;
    h.upstream.answer(wire::QUERY, wire::session_expired());
    h.upstream.answer(
        wire::QUERY,
        wire::rows("q-1", &[wire::column("N", "fixed")], json!([["1"]])),
    );

    let first = h
        .exchange(wire::query_request(TOKEN, "r-1", "select 1"))
        .await;
    assert_eq!(first.json()["code"], "390112");
    assert!(h.sink.queries().is_empty(), "{:?}", h.sink.queries());
    let retry = h
        .exchange(wire::query_request(TOKEN, "r-1", "select 1"))
        .await;

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
    let h = harness(Setup::default());
    h.login(TOKEN).await;
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
    let h = harness(Setup::default());
    h.login(TOKEN).await;
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
    let h = harness(Setup::default());
    h.login(TOKEN).await;
    h.upstream.answer(wire::QUERY, wire::in_progress("q-1"));
    h.upstream.answer(wire::ABORT, wire::ok_null());
    h.upstream
        .answer(&wire::result_path("q-1"), wire::canceled("q-1"));
    let sql = "select long_running()";

    h.exchange(wire::query_request(TOKEN, "r-1", sql)).await;
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
