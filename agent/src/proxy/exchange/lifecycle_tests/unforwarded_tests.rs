//! Exchanges the transport could not carry upstream, and result chunks a rule withholds: the
//! client gets the envelope's answer, and the audit records what it always has.

use std::net::SocketAddr;

use serde_json::json;

use super::fake_upstream::Answer;
use super::masking_tests::{MASK_POLICY, STAGE_HOST};
use super::wire;
use super::{Harness, Setup, harness, has_flag};
use crate::audit::EventKind;
use crate::proxy::transport::ForwardError;
use crate::proxy::transport::pool::UpstreamError;

const TOKEN: &str = "tok-1";

fn dst() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 443))
}

#[tokio::test(start_paused = true)]
async fn a_statement_whose_upstream_is_unreachable_gets_a_502_envelope() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    h.upstream.answer(
        wire::QUERY,
        Answer::failed(ForwardError::Unreachable(UpstreamError::ConnectTimeout {
            dst: dst(),
        })),
    );

    let got = h.query(TOKEN, "select 1").await;

    // A 502, which drivers retry, with the plain envelope naming the failure.
    assert_eq!(got.status, 502);
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        got.json(),
        json!({
            "data": null,
            "code": "502",
            "message": "snowtrail: connect to 192.0.2.7:443: timed out",
            "success": false,
            "headers": null,
        })
    );
    assert_eq!(h.upstream.received_at(wire::QUERY).len(), 1);
    // The driver retries a 502: the statement waits for the retry before its failure is its row.
    assert!(h.sink.queries().is_empty(), "{:?}", h.sink.queries());
    tokio::task::yield_now().await;
    tokio::time::advance(crate::proxy::exchange::statement::RETRY_WAIT).await;
    tokio::task::yield_now().await;
    // The statement's row says what the client was told.
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.success, Some(false));
    assert_eq!(q.error_code.as_deref(), Some("502"));
    assert_eq!(
        q.error_message.as_deref(),
        Some("snowtrail: connect to 192.0.2.7:443: timed out")
    );
    assert!(!has_flag(q, "unparsed"), "{:?}", q.flags);
    assert_eq!(q.attempts, Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_login_whose_upstream_fails_on_the_way_gets_a_502_envelope() {
    let h = harness(Setup::default());
    h.upstream.answer(
        wire::LOGIN,
        Answer::failed(ForwardError::Interrupted(UpstreamError::GivenBack)),
    );

    let got = h
        .exchange(wire::login_request("xy12345", "fake", "snow-secret"))
        .await;

    assert_eq!(got.status, 502);
    let body = got.json();
    assert_eq!(body["code"], "502");
    assert_eq!(body["success"], false);
    let message = "snowtrail: upstream: the connection was given back";
    assert_eq!(body["message"], message);
    let logins = h.sink.of_kind(EventKind::Login);
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!(logins[0].success, Some(false));
    assert_eq!(logins[0].error_code.as_deref(), Some("502"));
    assert_eq!(logins[0].error_message.as_deref(), Some(message));
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_target_cannot_be_forwarded_gets_a_400_envelope() {
    let h = harness(Setup::default());
    let bad = "http://[".parse::<http::Uri>().unwrap_err();
    h.upstream.answer(
        "/session/heartbeat",
        Answer::failed(ForwardError::BadTarget(bad.into())),
    );
    let req = http::Request::post("https://xy12345.snowflakecomputing.com/session/heartbeat")
        .body(super::fake_upstream::body_of(""))
        .unwrap();

    let got = h.exchange(req).await;

    assert_eq!(got.status, 400);
    let body = got.json();
    assert_eq!(body["code"], "400");
    assert_eq!(body["success"], false);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("snowtrail: ")),
        "{body}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_chunk_the_rule_cannot_shape_is_withheld_with_a_502_naming_the_rule() {
    let h = Harness::with_policy(MASK_POLICY).logged_in(TOKEN).await;
    let path = "/results/q-1_0/main/data_0_0_1";
    h.upstream.answer(
        wire::QUERY,
        wire::chunked(
            "q-1",
            &[wire::column("ID", "fixed"), wire::column("EMAIL", "text")],
            json!([["1", "ann@example.com"]]),
            STAGE_HOST,
            &[(path, 2, 40)],
        ),
    );
    h.upstream
        .answer(path, Answer::text(503, "cat@example.com is in here"));
    h.query(TOKEN, "select id, email from users").await;

    let got = h.exchange(wire::chunk_download(STAGE_HOST, path)).await;

    assert_eq!(got.status, 502);
    assert_eq!(
        got.content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        got.text(),
        "chunk withheld by snowtrail policy rule 'mask-email': \
         the chunk download failed upstream (503 Service Unavailable)"
    );
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    assert!(has_flag(&queries[0], "result_refused"), "{:?}", queries[0]);
}
