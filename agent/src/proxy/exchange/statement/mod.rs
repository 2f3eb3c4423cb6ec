//! Statements: a query request from intent to completion, however its outcome arrives (at once,
//! after `333333` polls, from `/monitoring/queries/` for an async statement, or once its result
//! chunks were downloaded), one event per statement (docs/decisions.md §10).
//!
//! A result the driver fetches by a request of its own (`GET /queries/<id>/result`: an async
//! statement's once monitoring said it ended, each statement's of a multi-statement request)
//! completes the statement's event when it comes, so that the event records what the workload
//! received. A fetch that never comes (connector 4.x reads an async result with a
//! `RESULT_SCAN`, a statement of its own; a driver may skip a statement's result) leaves the
//! result unrecorded: the event completes without it when that `RESULT_SCAN` is sent, when the
//! session logs out, or after `proxy.chunk_wait_s`.

//!
//! The statement's first answer is read in [`answer`], its completion (at once, or once its
//! chunks, transfers or result fetch came) is [`completion`], and the requests that follow it
//! (polls, monitoring, an abort) are [`follow_up`].

mod answer;
mod completion;
mod follow_up;

use std::future::Future;
use std::ops::ControlFlow::{Break, Continue};
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response};
use tracing::warn;

use self::answer::{Answering, uninspected};
use self::completion::{
    await_chunks, await_transfers, complete, complete_children, complete_with, learn_hosts,
};
use super::context::{
    Buffered, ConnCtx, elapsed_ms, mark_denied, read_request, read_response, reply,
};
use super::state::TrackedSession;
use super::{gate, holds, masking, tagging};
use crate::audit::{Durability, Event, EventKind, Flag, OnAuditFailure};
use crate::proxy::transport::body::Body;
use crate::snowflake::{self, QueryStatus, Refusal};

pub(in crate::proxy::exchange) use self::completion::complete as complete_event;
pub(in crate::proxy::exchange) use self::completion::session_ended;
pub(in crate::proxy::exchange) use self::follow_up::{abort, monitoring, poll};

/// A statement's event as it is received: a new one, or, for a retry with the same request id,
/// the statement's own with one more attempt counted (docs/decisions.md §10).
pub(in crate::proxy::exchange) fn begin(
    ctx: &ConnCtx,
    session: Option<&TrackedSession>,
    request_id: Option<&str>,
) -> Event {
    match request_id.and_then(|r| ctx.shared.tracker.take_request(r)) {
        Some(mut e) => {
            e.attempts = Some(e.attempts.unwrap_or(1).saturating_add(1));
            e
        }
        None => {
            let mut e = ctx.event(EventKind::Query, SystemTime::now(), session);
            e.request_id = request_id.map(str::to_owned);
            e.attempts = Some(1);
            e
        }
    }
}

/// How long a statement whose attempt failed with HTTP 5xx waits for the driver to send it again
/// (same request id) before its failure is recorded: drivers back off at most 16 s between
/// attempts (docs/decisions.md §10).
pub(in crate::proxy::exchange) const RETRY_WAIT: Duration = Duration::from_secs(60);

pub(super) async fn query<F, Fut>(
    req: Request<Body>,
    request_id: Option<String>,
    ctx: &ConnCtx,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let started = Instant::now();
    let ins = &ctx.shared;
    let (mut parts, body) = req.into_parts();
    let session = ins
        .tracker
        .lookup(snowflake::auth::authorization_token(&parts.headers));
    let mut event = begin(ctx, session.as_deref(), request_id.as_deref());
    let (raw, decoded) = match read_request(&parts, body, ctx).await {
        Ok(b) => b,
        Err(refusal) => return refuse_query(ctx, event, refusal).await,
    };
    let parsed = match snowflake::parse_query_request(&decoded) {
        Ok(p) => p,
        Err(_) => return refuse_query(ctx, event, Refusal::Unparsed).await,
    };
    event.sql_text = Some(snowflake::redact_sql(&parsed.sql_text, ins.redact).into_owned());
    event.bind_count = parsed
        .bindings
        .as_ref()
        .and_then(|b| u32::try_from(b.count).ok());
    event.is_async = Some(parsed.async_exec);
    // Connector 4.x reads an async statement's result with RESULT_SCAN: no fetch of it follows.
    if let Some(e) = snowflake::statements::result_scan_of(&parsed.sql_text)
        .and_then(|qid| ins.tracker.take_due(qid))
    {
        complete(ins, e);
    }
    if parsed.describe_only {
        event.add_flag(Flag::DescribeOnly);
    }
    // Policy: deny, hold for approval, or forward.
    let each = match gate::gate(
        ctx,
        &mut parts,
        session.as_deref(),
        &parsed.sql_text,
        &mut event,
    ) {
        gate::Gate::Forward(each) => each,
        gate::Gate::Refuse(r) => return refuse_query(ctx, event, r).await,
        gate::Gate::Hold(t) => {
            return holds::hold(ctx, event, parts, raw, request_id, t, holds::Api::Driver);
        }
    };
    // Masking and row limits: the result is rewritten below, or withheld.
    let shaping = masking::shaping(ctx, &event);
    if let Some(r) = shaping
        .as_ref()
        .and_then(|s| s.unsupported(each.len(), parsed.async_exec))
    {
        return refuse_query(ctx, event, r).await;
    }
    if ins.on_audit_failure == OnAuditFailure::Block && !ins.sink.healthy() {
        return refuse_query(ctx, event, Refusal::AuditUnavailable).await;
    }
    if ins.durability == Durability::BeforeForward
        && let Err(e) = ins.sink.submit_intent(event.clone()).await
    {
        if ins.on_audit_failure == OnAuditFailure::Block {
            warn!(error = %e, "statement refused: its audit record could not be made durable");
            return refuse_query(ctx, event, Refusal::AuditUnavailable).await;
        }
        event.add_flag(Flag::AuditGap);
    }
    // QUERY_TAG in the statement's parameters (docs/decisions.md §15); the rewrite is in `tagging`.
    let body = tagging::query_body(&mut parts, raw, &decoded, session.as_deref(), &ctx.base);
    let resp = send(Request::from_parts(parts, body)).await;
    let status = resp.status();
    if status.is_server_error()
        && let Some(rid) = request_id.as_deref()
    {
        return attempt_failed(ctx, event, rid, resp, started).await;
    }

    match read_response(resp, ctx).await {
        Buffered::Read {
            mut parts,
            raw,
            decoded,
        } => {
            let mut shaped = None;
            match decoded.as_deref().map(snowflake::parse_query_response) {
                Some(Ok(mut r)) => {
                    let answering = Answering {
                        ctx,
                        session: session.as_deref(),
                        shaping: shaping.as_ref(),
                    };
                    let body = (&mut parts, raw.len(), decoded.as_deref());
                    let (mut event, answered) = match answering.answer(event, body, &mut r) {
                        Continue(a) => a,
                        Break(withheld) => return withheld,
                    };
                    let (masking, rec) = (answered.masking, answered.rec);
                    shaped = answered.body;
                    if r.status == QueryStatus::Complete {
                        tagging::note_statement(session.as_deref(), &parsed.sql_text);
                    }
                    match r.status {
                        QueryStatus::InProgress | QueryStatus::AsyncDetached => {
                            event.duration_ms = elapsed_ms(started);
                            match r.query_id.as_deref() {
                                Some(qid) => ins.tracker.park_query(qid, event),
                                None => complete(ins, event),
                            }
                        }
                        QueryStatus::SessionExpired => match request_id.as_deref() {
                            Some(rid) => ins.tracker.park_request(rid, event),
                            None => complete(ins, event),
                        },
                        QueryStatus::Complete if !r.result_ids.is_empty() => {
                            event.duration_ms = elapsed_ms(started);
                            complete_children(&ctx.shared, event, &r, &parsed.sql_text, &each);
                        }
                        QueryStatus::Complete if r.command.is_some() => {
                            event.duration_ms = elapsed_ms(started);
                            learn_hosts(ins, &ctx.base, &r);
                            await_transfers(ctx, event, &r, rec);
                        }
                        QueryStatus::Complete if !r.chunks.is_empty() => {
                            event.duration_ms = elapsed_ms(started);
                            learn_hosts(ins, &ctx.base, &r);
                            await_chunks(ctx, event, &r, masking, rec);
                        }
                        QueryStatus::Complete | QueryStatus::Failed => {
                            event.duration_ms = elapsed_ms(started);
                            learn_hosts(ins, &ctx.base, &r);
                            complete_with(ins, event, rec);
                        }
                    }
                }
                _ => {
                    event.success = Some(status.is_success());
                    event.add_flag(Flag::Unparsed);
                    event.duration_ms = elapsed_ms(started);
                    if let Some(s) = &shaping {
                        return masking::withhold(ctx, event, &s.uninspectable());
                    }
                    complete(ins, event);
                }
            }
            Response::from_parts(parts, shaped.unwrap_or_else(|| raw.into_body()))
        }
        Buffered::Streamed(resp) => {
            event.duration_ms = elapsed_ms(started);
            uninspected(ctx, event, session.as_deref(), shaping.as_ref(), resp)
        }
    }
}

/// An attempt the upstream (or the agent, for an upstream it could not reach) answered with HTTP
/// 5xx, which drivers retry with the same request id: the answer goes to the driver as it came,
/// and the statement waits [`RETRY_WAIT`] for the retry, which goes on with the same event.
/// Without one, the failed attempt is the statement's row.
pub(in crate::proxy::exchange) async fn attempt_failed(
    ctx: &ConnCtx,
    event: Event,
    request_id: &str,
    resp: Response<Body>,
    started: Instant,
) -> Response<Body> {
    let ins = &ctx.shared;
    let status = resp.status();
    let mut failed = event.clone();
    failed.success = Some(false);
    failed.duration_ms = elapsed_ms(started);
    let resp = match read_response(resp, ctx).await {
        Buffered::Read {
            parts,
            raw,
            decoded,
        } => {
            match decoded.as_deref().map(snowflake::parse_query_response) {
                Some(Ok(r)) => {
                    failed.error_code = r.error_code.or(r.code);
                    failed.sql_state = r.sql_state;
                    failed.error_message = r.message;
                }
                _ => failed.add_flag(Flag::Unparsed),
            }
            Response::from_parts(parts, raw.into_body())
        }
        Buffered::Streamed(resp) => {
            failed.add_flag(Flag::Uninspected);
            resp
        }
    };
    if failed.error_message.is_none() {
        failed.error_message = Some(format!("HTTP {status}"));
    }
    failed.recording = Some(crate::recording::Status::Off);
    let attempt = event.attempts;
    ins.tracker.park_retry(request_id, event, failed);
    let shared = ins.clone();
    let request_id = request_id.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(RETRY_WAIT).await;
        if let Some(failed) = shared.tracker.take_unretried(&request_id, attempt) {
            complete(&shared, failed);
        }
    });
    resp
}

async fn refuse_query(ctx: &ConnCtx, mut event: Event, refusal: Refusal) -> Response<Body> {
    let qid = uuid::Uuid::now_v7().to_string();
    mark_denied(&mut event, &refusal);
    event.query_id = Some(qid.clone());
    event.recording = Some(crate::recording::Status::Off);
    drop(ctx.shared.sink.submit(event));
    reply(snowflake::envelope::query_error(&refusal, &qid))
}
