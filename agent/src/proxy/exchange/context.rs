//! What every exchange of the Snowflake-aware layer shares: the state and settings shared by all
//! connections ([`Shared`]), one intercepted connection's part ([`ConnCtx`]), and the helpers each
//! handler uses to read a request or a response for inspection, answer in Snowflake's place
//! (every such answer is an envelope [`Reply`](snowflake::envelope::Reply) made a response by
//! [`reply`], an exchange the transport could not carry included), or record a refusal.
//!
//! Request bodies that are inspected are buffered up to `limits.max_request_bytes` (a larger one
//! is refused with a Snowflake-shaped error, as is one that cannot be parsed: an unreadable
//! request could carry anything past the audit). Response bodies are buffered up to
//! `limits.max_response_inspect_bytes`; past that they stream on and the event is flagged
//! `uninspected` (docs/decisions.md §2). The workload gets the upstream's bytes exactly as sent.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use tracing::warn;

use super::state::{TrackedSession, Tracker};
use crate::audit::{
    ConnectionIdentity, Decision, Durability, Event, EventKind, EventSink, OnAuditFailure,
};
use crate::proxy::transport::ForwardError;
use crate::proxy::transport::body::{Body, Budget, Collected, Held, Unpaid, collect, full};
use crate::snowflake::envelope::Unforwarded;
use crate::snowflake::{self, RedactMode, Refusal};
use crate::sync::lock;

/// Limits on what the proxy buffers to inspect.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The memory every inspection shares (`limits.inspect_budget_bytes`).
    pub budget: Budget,
    /// The most of it one workload's inspections may hold at once
    /// (`limits.inspect_budget_per_workload_bytes`).
    pub workload_share: usize,
    /// Each workload identity's share, made when its first connection opens.
    pub shares: Arc<std::sync::Mutex<std::collections::HashMap<String, Budget>>>,
    /// Largest request body inspected (decoded); larger ones are refused.
    pub max_request_bytes: usize,
    /// Largest response body buffered for inspection; larger ones stream on uninspected.
    pub max_response_inspect_bytes: usize,
}

/// What every exchange of every intercepted connection shares: settings, sinks and the state
/// of sessions and statements in flight.
pub struct Shared {
    /// Where events go.
    pub sink: Arc<dyn EventSink>,
    /// Sessions and statements in flight.
    pub tracker: Tracker,
    /// Buffering limits.
    pub limits: Limits,
    /// How SQL is redacted in the audit.
    pub redact: RedactMode,
    /// Whether a statement's intent must be durable before it is forwarded.
    pub durability: Durability,
    /// What to do with statements while the audit cannot record them.
    pub on_audit_failure: OnAuditFailure,
    /// How long a chunked result's event waits for its chunk downloads.
    pub chunk_wait: std::time::Duration,
    /// How long a PUT/GET statement's transfers must be idle before its event is recorded.
    pub transfer_quiet: std::time::Duration,
    /// Which server names are intercepted (`tls.intercept_hosts`).
    pub hosts: crate::snowflake::hosts::HostMatcher,
    /// The policy rules in force (deny, alert, approval holds, masking, row limits).
    pub policy: Arc<crate::enforce::LivePolicy>,
    /// Statements held for approval.
    pub holds: Arc<super::holds::Holds>,
    /// Verifies the human identity a login token carries (`[oidc]`).
    pub oidc: Arc<crate::identity::oidc::Verifier>,
    /// Brokered logins and the token handles of their sessions (`[broker]`).
    pub broker: Arc<crate::broker::Broker>,
    /// Records statement results (`[recording]`), when a recipient is configured.
    pub recorder: Option<super::state::Recorder>,
    /// What becomes of requests that are neither a login nor a statement (`proxy.unknown_requests`).
    pub unknown_requests: crate::config::UnknownRequests,
}

/// Most workload identities whose budget shares are kept; past it the shares start afresh
/// (inspections in flight keep what they hold).
const MAX_SHARES: usize = 4096;

impl Limits {
    /// The budget the inspections of a workload pay from: its identity's share of the whole,
    /// so one workload cannot hold all of it; a connection no enrollment covers pays from a
    /// share of its own.
    pub fn budget_for(&self, identity: Option<&str>) -> Budget {
        let Some(identity) = identity else {
            return self.budget.share(self.workload_share);
        };
        let mut shares = crate::sync::lock(&self.shares);
        if let Some(b) = shares.get(identity) {
            return b.clone();
        }
        if shares.len() >= MAX_SHARES {
            shares.clear();
        }
        let b = self.budget.share(self.workload_share);
        shares.insert(identity.to_owned(), b.clone());
        b
    }
}

/// One intercepted connection's part: who is on it, shared by its exchanges.
pub struct ConnCtx {
    /// The connection's who/where columns, which each of its events carries.
    pub base: ConnectionIdentity,
    /// The inspection budget its exchanges pay from: its workload's share.
    pub budget: Budget,
    /// Who may use the token handles issued on this connection: its exec run, else its enrolled
    /// cgroup (`None` when no enrollment covers it).
    pub owner: Option<crate::broker::Owner>,
    /// What all connections share.
    pub shared: Arc<Shared>,
}

impl ConnCtx {
    /// A new event of `kind` carrying the connection's columns.
    pub(super) fn event(
        &self,
        kind: EventKind,
        at: SystemTime,
        session: Option<&TrackedSession>,
    ) -> Event {
        let mut e = Event::of_connection(kind, at, &self.base);
        if let Some(s) = session {
            fill_session(&mut e, s);
        }
        e
    }
}

pub(super) fn fill_session(e: &mut Event, s: &TrackedSession) {
    e.session_id = Some(s.id.clone());
    e.correlation_id = Some(s.correlation_id.clone());
    e.snowflake_session_id.clone_from(&s.snowflake_session_id);
    e.account.clone_from(&s.account);
    e.login_user.clone_from(&s.login_user);
    e.authenticator.clone_from(&s.authenticator);
    e.driver.clone_from(&s.driver);
    e.driver_version.clone_from(&s.driver_version);
    s.human.fill(e);
    if s.brokered.is_some() {
        e.brokered = Some(true);
    }
    let c = lock(&s.context);
    e.role.clone_from(&c.role);
    e.warehouse.clone_from(&c.warehouse);
    e.database.clone_from(&c.database);
    e.schema.clone_from(&c.schema);
}

pub(super) fn elapsed_ms(started: Instant) -> Option<u64> {
    Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// The answer the agent gives instead of Snowflake.
pub(super) fn reply(r: snowflake::envelope::Reply) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(r.body)));
    *resp.status_mut() = r.status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(r.content_type),
    );
    resp
}

impl From<&ForwardError> for Unforwarded {
    fn from(e: &ForwardError) -> Self {
        match e {
            ForwardError::Unreachable(e) => Unforwarded::Unreachable {
                detail: e.to_string(),
            },
            ForwardError::Interrupted(e) => Unforwarded::Interrupted {
                detail: e.to_string(),
            },
            ForwardError::BadTarget(e) => Unforwarded::BadTarget {
                detail: e.to_string(),
            },
        }
    }
}

/// The answer to an exchange the transport could not carry upstream.
pub(super) fn unforwarded(e: &ForwardError) -> Response<Body> {
    reply(snowflake::envelope::unforwarded(&Unforwarded::from(e)))
}

/// Reads a request body for inspection; `Err` is the refusal to answer with.
pub(super) async fn read_request(
    parts: &http::request::Parts,
    body: Body,
    ctx: &ConnCtx,
) -> Result<(Held, Vec<u8>), Refusal> {
    let limits = &ctx.shared.limits;
    let budget = &ctx.budget;
    let mut bytes = match collect(body, limits.max_request_bytes, budget).await {
        Collected::Whole(b) => b,
        Collected::TooLarge(_) => {
            return Err(Refusal::RequestTooLarge {
                limit: limits.max_request_bytes,
            });
        }
        Collected::Unaffordable(_) => return Err(Refusal::InspectionBusy),
        Collected::Failed(_) => return Err(Refusal::Unparsed),
    };
    let unpaid = |u: Unpaid| match u {
        Unpaid::Never => Refusal::RequestTooLarge {
            limit: limits.max_request_bytes,
        },
        Unpaid::Busy => Refusal::InspectionBusy,
    };
    let hint = snowflake::decoded_size_hint(&parts.headers, &bytes.bytes, limits.max_request_bytes);
    bytes.pay_for(budget, hint).await.map_err(unpaid)?;
    let decoded =
        snowflake::decode_with_headers(&parts.headers, &bytes.bytes, limits.max_request_bytes)
            .map_err(|e| match e {
                snowflake::BodyError::TooLarge { .. } => Refusal::RequestTooLarge {
                    limit: limits.max_request_bytes,
                },
                _ => Refusal::Unparsed,
            })?
            .into_owned();
    bytes
        .pay_for(budget, decoded.len().saturating_sub(hint))
        .await
        .map_err(unpaid)?;
    Ok((bytes, decoded))
}

/// A response read for inspection: the bytes to hand on and their decoded form, or a stream.
pub(super) enum Buffered {
    /// Read whole: the headers, the bytes to hand on, and their decoded form.
    Read {
        parts: http::response::Parts,
        raw: Held,
        decoded: Option<Vec<u8>>,
    },
    Streamed(Response<Body>),
}

pub(super) async fn read_response(resp: Response<Body>, ctx: &ConnCtx) -> Buffered {
    let limit = ctx.shared.limits.max_response_inspect_bytes;
    let budget = &ctx.budget;
    let (parts, body) = resp.into_parts();
    match collect(body, limit, budget).await {
        Collected::Whole(mut raw) => {
            // The decoded copy pays for its memory too; one the budget cannot hold is not made,
            // and the response goes on uninspected.
            let hint = snowflake::decoded_size_hint(&parts.headers, &raw.bytes, limit);
            let mut decoded = None;
            if raw.pay_for(budget, hint).await.is_ok()
                && let Ok(d) = snowflake::decode_with_headers(&parts.headers, &raw.bytes, limit)
            {
                let d = d.into_owned();
                if raw
                    .pay_for(budget, d.len().saturating_sub(hint))
                    .await
                    .is_ok()
                {
                    decoded = Some(d);
                }
            }
            Buffered::Read {
                parts,
                raw,
                decoded,
            }
        }
        // Too large, or no room freed in time: it goes on uninspected.
        Collected::TooLarge(body) | Collected::Unaffordable(body) => {
            Buffered::Streamed(Response::from_parts(parts, body))
        }
        Collected::Failed(e) => {
            warn!(error = %e, "upstream response body failed");
            Buffered::Streamed(Response::from_parts(parts, full(Bytes::new())))
        }
    }
}

/// Turns an event into the record of a refusal.
pub(super) fn mark_denied(event: &mut Event, refusal: &Refusal) {
    event.event_kind = EventKind::Denial;
    event.success = Some(false);
    event.decision = Some(Decision::Deny);
    event.error_message = Some(refusal.message());
    event.detail = Some(refusal.label().to_owned());
}
