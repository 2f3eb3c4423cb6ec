//! Statements held for approval: approved, and timed out on the paused clock.

use std::time::Duration;

use super::fake_upstream::Got;
use super::wire;
use super::{EventKind, Harness};

const TOKEN: &str = "tok-1";

/// Deletes wait for an approver, at most `timeout_s`.
const APPROVAL_POLICY: &str = r#"
[default]
action = "allow"

[[rule]]
name = "approve-deletes"
action = "require_approval"
timeout_s = 60
[rule.when]
statement = ["DELETE"]
"#;

const SQL: &str = "delete from orders where id = 42";

/// A logged-in connection under [`APPROVAL_POLICY`] that has sent [`SQL`] (held, as request
/// `r-1`); what the client got back for it.
async fn held() -> (Harness, Got) {
    let h = Harness::with_policy(APPROVAL_POLICY).logged_in(TOKEN).await;
    let got = h.query(TOKEN, SQL).await;
    (h, got)
}

#[tokio::test(start_paused = true)]
async fn an_approved_hold_is_forwarded_and_recorded_with_its_approver() {
    let (h, held) = held().await;

    // The driver is told the statement runs, under the hold's id; nothing reached Snowflake.
    assert_eq!(held.json()["code"], "333333");
    let hold_id = h.pending_hold();
    assert_eq!(held.json()["data"]["queryId"], hold_id.as_str());
    assert!(h.upstream.received_at(wire::QUERY).is_empty());
    assert!(h.sink.queries().is_empty());
    let pending = &h.holds.pending()[0];
    assert_eq!(pending.rule, "approve-deletes");
    assert_eq!(pending.sql, SQL);
    assert_eq!(pending.user.as_deref(), Some("fake"));

    h.decide(&hold_id, true, "alice@example.com");
    h.upstream.answer(wire::QUERY, wire::deleted("q-real", 1));
    let answered = h.exchange(wire::result_poll(TOKEN, &hold_id)).await;

    // The poll forwarded the held statement as the driver sent it, and got Snowflake's answer.
    let sent = h.upstream.received_at(wire::QUERY);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].json()["sqlText"], SQL);
    assert!(
        h.upstream
            .received_at(&wire::result_path(&hold_id))
            .is_empty()
    );
    assert_eq!(answered.json()["data"]["queryId"], "q-real");
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{queries:?}");
    let q = &queries[0];
    assert_eq!(q.decision.map(|d| d.as_str()), Some("approved"));
    assert_eq!(q.policy_rule.as_deref(), Some("approve-deletes"));
    assert_eq!(q.approver.as_deref(), Some("alice@example.com"));
    assert!(q.decided_at.is_some());
    assert_eq!(q.success, Some(true));
    assert_eq!(q.query_id.as_deref(), Some("q-real"));
    assert_eq!(q.request_id.as_deref(), Some("r-1"));
    assert_eq!(q.statement_type.as_deref(), Some("DELETE"));
    assert_eq!(
        q.detail.as_deref(),
        Some(format!("hold {hold_id}").as_str())
    );
    assert!(h.holds.pending().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_hold_nobody_decides_times_out_and_never_reaches_snowflake() {
    let (h, held) = held().await;
    assert_eq!(held.json()["code"], "333333");
    let hold_id = h.pending_hold();

    // Past the rule's deadline on the paused clock; the hold's timer runs.
    tokio::time::advance(Duration::from_secs(61)).await;
    tokio::task::yield_now().await;

    let denials = h.sink.of_kind(EventKind::Denial);
    assert_eq!(denials.len(), 1, "{:?}", h.sink.events());
    let d = &denials[0];
    assert_eq!(d.decision.map(|d| d.as_str()), Some("deny"));
    assert_eq!(d.detail.as_deref(), Some("approval_timed_out"));
    assert_eq!(d.policy_rule.as_deref(), Some("approve-deletes"));
    assert_eq!(d.approver, None);
    assert!(d.decided_at.is_some());
    assert_eq!(d.success, Some(false));
    assert_eq!(d.sql_text.as_deref(), Some(SQL));
    assert!(h.holds.pending().is_empty());

    // The driver's next poll learns it, from the agent.
    let poll = h.exchange(wire::result_poll(TOKEN, &hold_id)).await;
    assert_eq!(poll.json()["code"], "000630");
    assert_eq!(poll.json()["success"], false);
    assert!(h.upstream.received_at(wire::QUERY).is_empty());
    assert!(
        h.upstream
            .received_at(&wire::result_path(&hold_id))
            .is_empty()
    );
    assert_eq!(h.sink.events().len(), 2, "a login and the denial");
}

#[tokio::test(start_paused = true)]
async fn a_poll_of_an_undecided_hold_is_answered_333333_by_the_agent() {
    let (h, _) = held().await;
    let hold_id = h.pending_hold();

    // The poll waits (on the paused clock, which advances while nothing else runs) and is
    // answered that the statement still runs.
    let poll = h.exchange(wire::result_poll(TOKEN, &hold_id)).await;

    assert_eq!(poll.json()["code"], "333333");
    assert_eq!(poll.json()["data"]["queryId"], hold_id.as_str());
    assert!(
        h.upstream
            .received_at(&wire::result_path(&hold_id))
            .is_empty()
    );
    assert!(h.sink.queries().is_empty());
    assert_eq!(h.pending_hold(), hold_id);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_hold_is_a_denial_naming_its_approver() {
    let (h, _) = held().await;
    let hold_id = h.pending_hold();

    h.decide(&hold_id, false, "bob@example.com");

    // Recorded when decided, before the driver's next poll.
    let denials = h.sink.of_kind(EventKind::Denial);
    assert_eq!(denials.len(), 1, "{:?}", h.sink.events());
    let d = &denials[0];
    assert_eq!(d.decision.map(|d| d.as_str()), Some("deny"));
    assert_eq!(d.detail.as_deref(), Some("approval_rejected"));
    assert_eq!(d.approver.as_deref(), Some("bob@example.com"));
    assert!(d.decided_at.is_some());
    let poll = h.exchange(wire::result_poll(TOKEN, &hold_id)).await;
    assert_eq!(poll.json()["code"], "003001");
    assert!(h.upstream.received_at(wire::QUERY).is_empty());
    assert_eq!(h.sink.events().len(), 2, "a login and the denial");
}

#[tokio::test(start_paused = true)]
async fn an_abort_of_a_held_statement_is_answered_by_the_agent() {
    let (h, _) = held().await;
    let hold_id = h.pending_hold();

    let abort = h.exchange(wire::abort_request(TOKEN, "r-1", SQL)).await;

    assert_eq!(abort.json()["success"], true);
    // Neither the statement nor its abort reached Snowflake.
    assert!(h.upstream.received_at(wire::QUERY).is_empty());
    assert!(h.upstream.received_at(wire::ABORT).is_empty());
    let queries = h.sink.queries();
    assert_eq!(queries.len(), 1, "{:?}", h.sink.events());
    let q = &queries[0];
    assert_eq!(q.success, Some(false));
    assert_eq!(q.query_id.as_deref(), Some(hold_id.as_str()));
    assert_eq!(
        q.error_message.as_deref(),
        Some("canceled by the client while held for approval")
    );
    assert_eq!(q.decision.map(|d| d.as_str()), Some("require_approval"));
    assert!(h.holds.pending().is_empty());
}
