//! Requests to a Snowflake host that are neither a login nor a statement the agent reads.

use serde_json::json;

use super::fake_upstream::Answer;
use super::wire;
use super::{Harness, Setup, harness};
use crate::audit::EventKind;
use crate::config::UnknownRequests;

const TOKEN: &str = "tok-1";

/// A request to an endpoint the agent does not read (a REST resource API) is carried and
/// recorded as a request of its session: method, path, status, bytes.
#[tokio::test(start_paused = true)]
async fn an_unknown_endpoint_is_recorded_with_its_session() {
    let h = harness(Setup::default()).logged_in(TOKEN).await;
    h.upstream.answer(
        wire::DATABASES,
        Answer::json(&json!({"name": "ANALYTICS", "kind": "PERMANENT"})),
    );

    let got = h.exchange(wire::rest_request(TOKEN, wire::DATABASES)).await;

    assert_eq!(got.status, 200);
    assert_eq!(got.json()["name"], "ANALYTICS");
    assert_eq!(h.upstream.received_at(wire::DATABASES).len(), 1);
    let requests = h.sink.of_kind(EventKind::Request);
    assert_eq!(requests.len(), 1, "{:?}", h.sink.events());
    let r = &requests[0];
    assert_eq!(r.http_method.as_deref(), Some("POST"));
    assert_eq!(r.http_path.as_deref(), Some(wire::DATABASES));
    assert_eq!(r.http_status, Some(200));
    assert_eq!(r.success, Some(true));
    assert!(r.bytes_in.is_some_and(|n| n > 0), "{r:?}");
    assert_eq!(r.bytes_out, Some(got.body.len() as u64));
    assert_eq!(r.login_user.as_deref(), Some("fake"), "{r:?}");
    assert!(r.session_id.is_some(), "{r:?}");
    assert!(h.sink.queries().is_empty());
}

/// With `proxy.unknown_requests = "deny"`, such a request is refused, recorded as a denial, and
/// never reaches Snowflake.
#[tokio::test(start_paused = true)]
async fn an_unknown_endpoint_is_refused_when_unknown_requests_are_denied() {
    let h = harness(Setup {
        unknown_requests: UnknownRequests::Deny,
        ..Setup::default()
    })
    .logged_in(TOKEN)
    .await;

    let got = h.exchange(wire::rest_request(TOKEN, wire::DATABASES)).await;

    assert_eq!(got.status, 403);
    assert_eq!(got.json()["success"], false);
    assert_eq!(got.json()["code"], "003001");
    assert!(h.upstream.received_at(wire::DATABASES).is_empty());
    let denials = h.sink.of_kind(EventKind::Denial);
    assert_eq!(denials.len(), 1, "{:?}", h.sink.events());
    let d = &denials[0];
    assert_eq!(d.detail.as_deref(), Some("unknown_request"));
    assert_eq!(d.http_path.as_deref(), Some(wire::DATABASES));
    assert_eq!(d.http_status, Some(403));
    assert_eq!(d.decision.map(|d| d.as_str()), Some("deny"));
}

/// Heartbeats are known and carry no statement: carried without an event.
#[tokio::test(start_paused = true)]
async fn a_heartbeat_is_not_a_request_event() {
    let h = harness(Setup {
        unknown_requests: UnknownRequests::Deny,
        ..Setup::default()
    })
    .logged_in(TOKEN)
    .await;
    h.upstream
        .answer(wire::HEARTBEAT, Answer::json(&json!({"success": true})));
    let got = h.exchange(wire::heartbeat(TOKEN)).await;
    assert_eq!(got.status, 200);
    assert!(h.sink.of_kind(EventKind::Request).is_empty());
    assert!(h.sink.of_kind(EventKind::Denial).is_empty());
}

/// REST resource APIs are subject to policy: a rule on `requests` denies `POST` on databases for
/// the workload, so the request is refused, recorded as a denial under that rule, and never
/// reaches Snowflake; a `GET` no rule names is carried and recorded as usual.
#[tokio::test(start_paused = true)]
async fn a_rule_on_requests_decides_rest_resource_calls() {
    let h = Harness::with_policy(
        r#"
        [default]
        action = "allow"
        [[rule]]
        name = "no-database-changes"
        action = "deny"
        message = "databases are managed by terraform"
        when.requests = ["POST /api/v2/databases*", "DELETE /api/v2/databases/*"]
        "#,
    )
    .logged_in(TOKEN)
    .await;

    let got = h.exchange(wire::rest_request(TOKEN, wire::DATABASES)).await;

    assert_eq!(got.status, 403);
    assert!(
        got.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("terraform")),
        "{}",
        got.json()
    );
    assert!(h.upstream.received_at(wire::DATABASES).is_empty());
    let denials = h.sink.of_kind(EventKind::Denial);
    assert_eq!(denials.len(), 1, "{:?}", h.sink.events());
    assert_eq!(
        denials[0].policy_rule.as_deref(),
        Some("no-database-changes")
    );
    assert_eq!(denials[0].http_method.as_deref(), Some("POST"));
    // A statement is not a request: the rule does not apply to it.
    assert!(h.sink.queries().is_empty());
}
