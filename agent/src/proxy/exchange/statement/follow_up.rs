//! The requests that follow a statement: polls of its result (`333333`, or the fetch of a result
//! whose statement ended), the monitoring of an asynchronous one, and its abort.

use std::future::Future;
use std::ops::ControlFlow::{Break, Continue};

use http::{Request, Response};
use tracing::debug;

use super::answer::{Answering, uninspected};
use super::completion::{await_chunks, await_result, complete, complete_with, learn_hosts};
use crate::audit::Flag;
use crate::proxy::exchange::context::{Buffered, ConnCtx, read_request, read_response, reply};
use crate::proxy::exchange::holds::{self, HoldPoll};
use crate::proxy::exchange::{masking, recording_tee};
use crate::proxy::transport::body::Body;
use crate::snowflake::{self, QueryStatus};

pub(in crate::proxy::exchange) async fn poll<F, Fut>(
    req: Request<Body>,
    query_id: &str,
    ctx: &ConnCtx,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    // Policy: a statement held for approval is answered by the agent (docs/decisions.md §16).
    if holds::is_hold(ctx, query_id) {
        return match holds::poll(query_id, ctx).await {
            HoldPoll::Answered(resp) => resp,
            HoldPoll::Approved {
                request,
                request_id,
            } => Box::pin(super::query(request, request_id, ctx, send)).await,
        };
    }
    let ins = &ctx.shared;
    // A statement still running, or one whose result is fetched now that it ended.
    let Some(mut event) = ins
        .tracker
        .take_query(query_id)
        .or_else(|| ins.tracker.take_due(query_id))
    else {
        return send(req).await;
    };
    let session = ins
        .tracker
        .lookup(snowflake::auth::authorization_token(req.headers()));
    let shaping = masking::shaping(ctx, &event);
    let resp = send(req).await;
    match read_response(resp, ctx).await {
        Buffered::Read {
            mut parts,
            raw,
            decoded,
        } => {
            let mut shaped = None;
            match decoded.as_deref().map(snowflake::parse_query_response) {
                Some(Ok(r))
                    if matches!(
                        r.status,
                        QueryStatus::InProgress | QueryStatus::AsyncDetached
                    ) =>
                {
                    ins.tracker.park_query(query_id, event);
                }
                Some(Ok(mut r)) => {
                    let answering = Answering {
                        ctx,
                        session: session.as_deref(),
                        shaping: shaping.as_ref(),
                    };
                    let body = (&mut parts, raw.len(), decoded.as_deref());
                    let (event, answered) = match answering.answer(event, body, &mut r) {
                        Continue(a) => a,
                        Break(withheld) => return withheld,
                    };
                    let (masking, rec) = (answered.masking, answered.rec);
                    shaped = answered.body;
                    if (masking.is_some() || rec.is_some()) && !r.chunks.is_empty() {
                        learn_hosts(ins, &ctx.base, &r);
                        await_chunks(ctx, event, &r, masking, rec);
                    } else {
                        complete_with(ins, event, rec);
                    }
                }
                _ => {
                    event.add_flag(Flag::Unparsed);
                    if let Some(s) = &shaping {
                        return masking::withhold(ctx, event, &s.uninspectable());
                    }
                    complete(ins, event);
                }
            }
            Response::from_parts(parts, shaped.unwrap_or_else(|| raw.into_body()))
        }
        Buffered::Streamed(resp) => {
            uninspected(ctx, event, session.as_deref(), shaping.as_ref(), resp)
        }
    }
}

/// States of `GET /monitoring/queries/<qid>` that mean the statement is over.
const MONITOR_DONE_OK: &[&str] = &["SUCCESS"];
const MONITOR_DONE_FAILED: &[&str] = &[
    "FAILED_WITH_ERROR",
    "FAILED_WITH_INCIDENT",
    "ABORTED",
    "DISCONNECTED",
];

/// The status of an async statement: when it says the statement succeeded, the event waits for
/// the result fetch the driver makes next, which completes it with its recording
/// ([`await_result`]); when it says it failed, the event completes with the error the workload
/// learnt from it recorded.
pub(in crate::proxy::exchange) async fn monitoring<F, Fut>(
    req: Request<Body>,
    query_id: &str,
    ctx: &ConnCtx,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    // Policy: a statement held for approval is answered by the agent (docs/decisions.md §16).
    if holds::is_hold(ctx, query_id) {
        return holds::monitoring(query_id);
    }
    let ins = &ctx.shared;
    let Some(mut event) = ins.tracker.take_query(query_id) else {
        return send(req).await;
    };
    let session = ins
        .tracker
        .lookup(snowflake::auth::authorization_token(req.headers()));
    let resp = send(req).await;
    match read_response(resp, ctx).await {
        Buffered::Read {
            parts,
            raw,
            decoded,
        } => {
            let parsed = decoded
                .as_deref()
                .and_then(|d| snowflake::parse_monitoring_response(d).ok());
            let sql_state = parsed.as_ref().and_then(|m| m.sql_state.clone());
            let status = parsed.and_then(|m| {
                m.queries
                    .into_iter()
                    .find(|q| q.id.as_deref().is_none_or(|id| id == query_id))
            });
            match status {
                Some(q)
                    if q.status
                        .as_deref()
                        .is_some_and(|s| MONITOR_DONE_OK.contains(&s)) =>
                {
                    event.success = Some(true);
                    await_result(&ctx.shared, query_id, event);
                }
                Some(q)
                    if q.status
                        .as_deref()
                        .is_some_and(|s| MONITOR_DONE_FAILED.contains(&s)) =>
                {
                    event.success = Some(false);
                    let rec = recording_tee::begin(ins, &event, session.as_deref()).map(|mut r| {
                        r.error(crate::recording::payload::ErrorEnvelope {
                            code: q.error_code.clone(),
                            sql_state: sql_state.clone(),
                            message: q.error_message.clone().or_else(|| q.status.clone()),
                        });
                        r
                    });
                    event.error_code = q.error_code;
                    event.error_message = q.status;
                    complete_with(ins, event, rec);
                }
                _ => ins.tracker.park_query(query_id, event),
            }
            Response::from_parts(parts, raw.into_body())
        }
        Buffered::Streamed(resp) => {
            ins.tracker.park_query(query_id, event);
            resp
        }
    }
}

/// An abort (both URL forms): forwarded; when Snowflake accepts it, the statement it names,
/// parked while it ran (async or answered `333333`), is recorded as failed with the flag
/// `aborted`. A statement whose answer is still in flight (its first answer or a poll) is
/// marked before the abort is forwarded: Snowflake may answer it with the cancellation error
/// before the abort's own answer comes back, and that failure is then flagged `aborted` too.
/// A refused abort takes its mark back.
pub(in crate::proxy::exchange) async fn abort<F, Fut>(
    req: Request<Body>,
    query_id: Option<String>,
    ctx: &ConnCtx,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let ins = &ctx.shared;
    let (parts, body) = req.into_parts();
    let (raw, decoded) = match read_request(&parts, body, ctx).await {
        Ok(b) => b,
        Err(refusal) => return reply(snowflake::envelope::session_error(&refusal)),
    };
    let request_id = serde_json::from_slice::<serde_json::Value>(&decoded)
        .ok()
        .and_then(|v| v.get("requestId")?.as_str().map(str::to_owned));
    // An abort of a statement held for approval is the agent's to answer: the hold is
    // cancelled and nothing reaches Snowflake (docs/decisions.md §16).
    if holds::cancel_named(ctx, query_id.as_deref(), request_id.as_deref()) {
        return reply(snowflake::envelope::abort_ok());
    }
    let (qid, rid) = (query_id.as_deref(), request_id.as_deref());
    ins.tracker.note_aborted(qid, rid);
    let resp = send(Request::from_parts(parts, raw.into_body())).await;
    if !resp.status().is_success() {
        ins.tracker.take_aborted(qid, rid);
        return resp;
    }
    let parked = match (qid, rid) {
        (Some(qid), _) => ins.tracker.take_query(qid),
        (None, Some(rid)) => ins.tracker.take_query_by_request(rid),
        (None, None) => None,
    };
    if let Some(mut event) = parked {
        ins.tracker.take_aborted(qid, rid);
        debug!(query_id = ?event.query_id, "statement aborted by the client");
        event.success = Some(false);
        event.error_message = Some("aborted by the client".into());
        event.add_flag(Flag::Aborted);
        drop(ins.sink.submit(event));
    }
    resp
}
