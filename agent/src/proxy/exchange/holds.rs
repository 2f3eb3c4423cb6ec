//! Statements held for approval (docs/decisions.md §16).
//!
//! A statement whose rule says `require_approval` is not forwarded: the driver gets `333333` with
//! a hold id as its query id and polls `/queries/<hold id>/result`, as it polls a long Snowflake
//! query. Each poll is held briefly ([`POLL_WAIT`]) and answered `333333` again until an approver
//! decides over the control socket. Approved, the held request is sent upstream on the poll's
//! connection and the poll gets Snowflake's own answer (its query id replaces the hold id);
//! rejected or timed out, the poll gets a Snowflake-shaped error and the audit a `denial`. The
//! held request keeps its bytes' share of the inspection budget while it waits, and holds are
//! bounded ([`MAX_HOLDS`]). A statement through the SQL API is held the same way, answered in
//! that API's shapes ([`Api::SqlApi`]: HTTP 202 under the hold's handle, polled by status).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::info;

use super::context::{ConnCtx, mark_denied, reply};
use crate::audit::{Decision, Event, EventSink, Flag};
use crate::proxy::transport::body::Body;
use crate::proxy::transport::body::Held;
use crate::snowflake::{self, Refusal};
use crate::sync::lock;

/// Most statements held at once; past it a statement needing approval is refused.
pub const MAX_HOLDS: usize = 1024;
/// How long one poll of a held statement waits for a decision before it is answered `333333`.
pub const POLL_WAIT: Duration = Duration::from_secs(5);
/// How long an approved statement waits for the driver's next poll before it is dropped.
pub const APPROVED_GRACE: Duration = Duration::from_secs(600);

/// Which API a held statement came through, and so how its waiting and refusals are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    /// A driver's `query-request`: `333333` and the envelope's errors.
    Driver,
    /// Snowflake's SQL API: HTTP 202 under the hold's handle, and the API's 422 errors.
    SqlApi,
}

impl Api {
    /// The answer while the statement waits.
    fn waiting(self, id: &str) -> Response<Body> {
        match self {
            Api::Driver => reply(snowflake::envelope::in_progress(
                id,
                &snowflake::envelope::result_url(id),
            )),
            Api::SqlApi => reply(snowflake::sql_api::in_progress(id)),
        }
    }

    /// The answer when it will not run.
    fn refused(self, refusal: &Refusal, id: &str) -> Response<Body> {
        match self {
            Api::Driver => reply(snowflake::envelope::query_error(refusal, id)),
            Api::SqlApi => reply(snowflake::envelope::sql_api_refused(refusal, id)),
        }
    }
}

/// An approval's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decided {
    Approved,
    Rejected,
    TimedOut,
}

struct Inner {
    decided: Option<Decided>,
    request: Option<(http::request::Parts, Held)>,
    event: Option<Event>,
    request_id: Option<String>,
}

/// A held statement as approvers see it: what it is, who sent it, when, and how long it may
/// still wait. The control socket turns it into its own wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldSummary {
    /// The hold id (the query id the driver sees while it waits).
    pub id: String,
    /// The rule that asked for approval.
    pub rule: String,
    /// The workload identity that sent it.
    pub identity: Option<String>,
    /// The Snowflake user.
    pub user: Option<String>,
    /// The role in effect.
    pub role: Option<String>,
    /// The statement, redacted as in the audit.
    pub sql: String,
    /// When the agent received it.
    pub received_at: SystemTime,
    /// How long it may still wait before it times out (and is rejected); as held, in the
    /// answer to a decision.
    pub expires_in: Duration,
}

/// One held statement.
pub struct Hold {
    info: HoldSummary,
    api: Api,
    deadline: Instant,
    inner: Mutex<Inner>,
    notify: Notify,
}

/// The statement of an approved hold, carried as a request extension into the statement handler
/// so that it is forwarded (not judged again) and recorded with its approval.
#[derive(Clone)]
pub(super) struct Approved(pub(super) Event);

/// Every statement held, by hold id; shared by the proxy and the control socket.
pub struct Holds {
    sink: Arc<dyn EventSink>,
    map: Mutex<HashMap<String, Arc<Hold>>>,
}

/// Why an approval or rejection could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    /// No statement is held under the id (decided and answered already, or never held).
    #[error("no statement is held under {0}")]
    Unknown(String),
    /// The statement was decided already.
    #[error("statement {id} was already {what}")]
    AlreadyDecided {
        /// The hold id.
        id: String,
        /// approved, rejected or timed out.
        what: &'static str,
    },
}

impl Holds {
    /// An empty registry whose rejections and timeouts are recorded in `sink`.
    pub fn new(sink: Arc<dyn EventSink>) -> Holds {
        Holds {
            sink,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// What waits for a decision, in no particular order (the control socket orders it).
    pub fn pending(&self) -> Vec<HoldSummary> {
        let now = Instant::now();
        lock(&self.map)
            .values()
            .filter(|h| lock(&h.inner).decided.is_none())
            .map(|h| {
                let mut i = h.info.clone();
                i.expires_in = h.deadline.saturating_duration_since(now);
                i
            })
            .collect()
    }

    fn get(&self, id: &str) -> Option<Arc<Hold>> {
        lock(&self.map).get(id).cloned()
    }

    fn remove(&self, id: &str) {
        lock(&self.map).remove(id);
    }

    /// Approves (`approve`) or rejects the statement held as `id`, in the name of `approver`.
    pub fn decide(
        &self,
        id: &str,
        approve: bool,
        approver: &str,
    ) -> Result<HoldSummary, DecideError> {
        let hold = self
            .get(id)
            .ok_or_else(|| DecideError::Unknown(id.to_owned()))?;
        let now = SystemTime::now();
        {
            let mut inner = lock(&hold.inner);
            if let Some(d) = &inner.decided {
                return Err(DecideError::AlreadyDecided {
                    id: id.to_owned(),
                    what: match d {
                        Decided::Approved => "approved",
                        Decided::Rejected => "rejected",
                        Decided::TimedOut => "timed out",
                    },
                });
            }
            if let Some(e) = inner.event.as_mut() {
                e.approver = Some(approver.to_owned());
                e.decided_at = Some(now);
            }
            if approve {
                inner.decided = Some(Decided::Approved);
                if let Some(e) = inner.event.as_mut() {
                    e.decision = Some(Decision::Approved);
                }
            } else {
                inner.decided = Some(Decided::Rejected);
                inner.request = None;
                if let Some(mut e) = inner.event.take() {
                    mark_denied(&mut e, &Refusal::ApprovalRejected);
                    drop(self.sink.submit(e));
                }
            }
        }
        info!(hold = id, approve, approver, "held statement decided");
        hold.notify.notify_waiters();
        Ok(hold.info.clone())
    }

    /// Times the hold out if nobody decided by its deadline; drops an approved hold never polled.
    fn expire(&self, id: &str) {
        let Some(hold) = self.get(id) else { return };
        {
            let mut inner = lock(&hold.inner);
            if inner.decided.is_some() {
                return;
            }
            inner.decided = Some(Decided::TimedOut);
            inner.request = None;
            if let Some(mut e) = inner.event.take() {
                mark_denied(&mut e, &Refusal::ApprovalTimedOut);
                e.decided_at = Some(SystemTime::now());
                drop(self.sink.submit(e));
            }
        }
        info!(hold = id, "held statement timed out");
        hold.notify.notify_waiters();
    }

    /// Whether any statement is held.
    fn is_empty(&self) -> bool {
        lock(&self.map).is_empty()
    }

    /// The hold of the statement the driver sent with `request_id`.
    fn by_request_id(&self, request_id: &str) -> Option<String> {
        lock(&self.map)
            .iter()
            .find(|(_, h)| lock(&h.inner).request_id.as_deref() == Some(request_id))
            .map(|(id, _)| id.clone())
    }

    /// The client aborted a held statement: it is dropped, recorded as failed, never forwarded.
    /// The hold stays (rejected) until a poll collects it or its timer forgets it.
    fn cancel(&self, id: &str) -> bool {
        let Some(hold) = self.get(id) else {
            return false;
        };
        {
            let mut inner = lock(&hold.inner);
            inner.decided = Some(Decided::Rejected);
            inner.request = None;
            if let Some(mut e) = inner.event.take() {
                e.success = Some(false);
                e.error_message = Some("canceled by the client while held for approval".into());
                e.query_id = Some(id.to_owned());
                drop(self.sink.submit(e));
            }
        }
        info!(hold = id, "held statement canceled by the client");
        hold.notify.notify_waiters();
        true
    }

    /// Forgets a hold nobody collected; an approved statement never forwarded is recorded
    /// as such (`outcome_unknown`).
    fn abandon(&self, id: &str) {
        let Some(hold) = lock(&self.map).remove(id) else {
            return;
        };
        let mut inner = lock(&hold.inner);
        inner.request = None;
        if let Some(mut e) = inner.event.take() {
            e.add_flag(Flag::OutcomeUnknown);
            drop(self.sink.submit(e));
        }
    }
}

/// Holds a statement: registers it and answers `333333` with the hold id.
pub(super) fn hold(
    ctx: &ConnCtx,
    mut event: Event,
    parts: http::request::Parts,
    raw: Held,
    request_id: Option<String>,
    timeout: Duration,
    api: Api,
) -> Response<Body> {
    let ins = &ctx.shared;
    let holds = ins.holds.clone();
    let id = uuid::Uuid::now_v7().to_string();
    if lock(&holds.map).len() >= MAX_HOLDS {
        let mut e = event;
        e.query_id = Some(id.clone());
        mark_denied(&mut e, &Refusal::ApprovalTimedOut);
        e.add_flag(Flag::TooManyHolds);
        drop(ins.sink.submit(e));
        return api.refused(&Refusal::ApprovalTimedOut, &id);
    }
    event.detail = Some(format!("hold {id}"));
    let info = HoldSummary {
        id: id.clone(),
        rule: event.policy_rule.clone().unwrap_or_default(),
        identity: event.workload_identity.clone(),
        user: event.login_user.clone(),
        role: event.role.clone(),
        sql: event.sql_text.clone().unwrap_or_default(),
        received_at: event.event_time,
        expires_in: timeout,
    };
    let deadline = Instant::now() + timeout;
    let h = Arc::new(Hold {
        info,
        api,
        deadline,
        inner: Mutex::new(Inner {
            decided: None,
            request: Some((parts, raw)),
            event: Some(event),
            request_id,
        }),
        notify: Notify::new(),
    });
    lock(&holds.map).insert(id.clone(), h);
    info!(hold = %id, timeout_s = timeout.as_secs(), "statement held for approval");
    let hid = id.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        holds.expire(&hid);
        tokio::time::sleep(APPROVED_GRACE).await;
        holds.abandon(&hid);
    });
    api.waiting(&id)
}

/// Cancels the hold an abort names (by query id in the path, or by request id in the body);
/// `true` when there was one, and the agent answers the abort itself.
pub(super) fn cancel_named(
    ctx: &ConnCtx,
    query_id: Option<&str>,
    request_id: Option<&str>,
) -> bool {
    let holds = &ctx.shared.holds;
    if holds.is_empty() {
        return false;
    }
    if let Some(qid) = query_id {
        return holds.cancel(qid);
    }
    request_id
        .and_then(|rid| holds.by_request_id(rid))
        .is_some_and(|id| holds.cancel(&id))
}

/// Whether `query_id` is a hold (its polls and monitoring are answered by the agent).
pub(super) fn is_hold(ctx: &ConnCtx, query_id: &str) -> bool {
    ctx.shared.holds.get(query_id).is_some()
}

/// A monitoring request for a hold: `QUEUED` while it waits (nothing reaches Snowflake).
pub(super) fn monitoring(query_id: &str) -> Response<Body> {
    reply(snowflake::envelope::monitoring_status(query_id, "QUEUED"))
}

/// What a poll of a hold comes to.
pub(super) enum HoldPoll {
    /// The agent's answer: still waiting, rejected or timed out.
    Answered(Response<Body>),
    /// The statement was approved: its held request, to be forwarded by the statement handler
    /// (it carries its event as [`Approved`]), and the request id the driver sent it with.
    Approved {
        /// The held request.
        request: Request<Body>,
        /// The driver's request id of the statement.
        request_id: Option<String>,
    },
}

/// A poll of a hold: waits briefly for a decision; approved, hands the held statement back for
/// forwarding.
pub(super) async fn poll(query_id: &str, ctx: &ConnCtx) -> HoldPoll {
    let holds = ctx.shared.holds.clone();
    let Some(hold) = holds.get(query_id) else {
        return HoldPoll::Answered(reply(snowflake::envelope::query_error(
            &Refusal::ApprovalTimedOut,
            query_id,
        )));
    };
    let until = (Instant::now() + POLL_WAIT).min(hold.deadline + Duration::from_millis(50));
    loop {
        let notified = hold.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let decided = lock(&hold.inner).decided.clone();
        match decided {
            None if Instant::now() < until => {
                let _ = tokio::time::timeout_at(until, notified).await;
            }
            None => {
                return HoldPoll::Answered(hold.api.waiting(query_id));
            }
            Some(Decided::Rejected) => {
                holds.remove(query_id);
                return HoldPoll::Answered(hold.api.refused(&Refusal::ApprovalRejected, query_id));
            }
            Some(Decided::TimedOut) => {
                holds.remove(query_id);
                return HoldPoll::Answered(hold.api.refused(&Refusal::ApprovalTimedOut, query_id));
            }
            Some(Decided::Approved) => {
                let taken = {
                    let mut inner = lock(&hold.inner);
                    match (inner.request.take(), inner.event.take()) {
                        (Some(r), Some(e)) => Some((r, e, inner.request_id.clone())),
                        _ => None,
                    }
                };
                holds.remove(query_id);
                let Some(((mut parts, raw), event, request_id)) = taken else {
                    // Another poll took it; this one is answered as still running.
                    return HoldPoll::Answered(hold.api.waiting(query_id));
                };
                parts.extensions.insert(Approved(event));
                return HoldPoll::Approved {
                    request: Request::from_parts(parts, raw.into_body()),
                    request_id,
                };
            }
        }
    }
}
