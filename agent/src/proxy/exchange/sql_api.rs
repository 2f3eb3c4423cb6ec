//! Statements through Snowflake's SQL API (`/api/v2/statements`), read like a driver's
//! `query-request`: one `query` event per statement with its handle as query id, policy before
//! anything is forwarded, the intent durable first, and the outcome from the answer or, for a
//! statement still running, from the status request that finds it ended.
//!
//! A rule that masks columns or limits rows shapes the answer's `data` and every later partition
//! fetched by its handle (a row limit that cuts keeps the first partition's rows and withholds the
//! others); a result that cannot be shaped is withheld, never passed. A statement held for
//! approval is answered as still running (HTTP 202) under the hold's handle ([`super::holds`]);
//! the client's status polls wait for the approver, and the approved statement is sent on the
//! poll that finds it approved, the hold's handle standing for Snowflake's from then on. A status
//! or partition request for a handle the agent did not see answered is an unknown request
//! ([`super::requests`]).

use std::time::Instant;

use http::{Request, Response};
use tracing::warn;

use super::context::{
    Buffered, ConnCtx, elapsed_ms, mark_denied, read_request, read_response, reply,
};
use super::holds::{self, HoldPoll};
use super::state::Answered;
use super::{gate, masking, requests, tagging};
use crate::audit::{Durability, Event, Flag, OnAuditFailure};
use crate::proxy::transport::body::Body;
use crate::snowflake::sql_api::{self, StatementStatus};
use crate::snowflake::{self, Refusal, RequestParams};

/// The header naming the kind of credential a SQL API request carries.
const TOKEN_TYPE: &str = "x-snowflake-authorization-token-type";

/// `POST /api/v2/statements`.
pub(super) async fn submit<F, Fut>(
    req: Request<Body>,
    params: RequestParams,
    ctx: &ConnCtx,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    submit_as(req, params, ctx, send, None).await
}

/// A submission, or an approved hold's (`hold`: the handle the client knows it by).
async fn submit_as<F, Fut>(
    req: Request<Body>,
    params: RequestParams,
    ctx: &ConnCtx,
    send: F,
    hold: Option<&str>,
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
    // A request resubmitted with the same request id (`retry=true`) is the same statement.
    let mut event = super::statement::begin(ctx, session.as_deref(), params.request_id.as_deref());
    event.is_async = Some(params.async_submit);
    event.driver = Some("SQL API".to_owned());
    if session.is_none() {
        event.authenticator = parts
            .headers
            .get(TOKEN_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }
    let (raw, decoded) = match read_request(&parts, body, ctx).await {
        Ok(read) => read,
        Err(refusal) => return refuse(ctx, event, refusal),
    };
    let Ok(stmt) = sql_api::parse_statement_request(&decoded) else {
        return refuse(ctx, event, Refusal::Unparsed);
    };
    event.sql_text = Some(snowflake::redact_sql(&stmt.statement, ins.redact).into_owned());
    event.bind_count = u32::try_from(stmt.bind_count).ok();
    for (field, value) in [
        (&mut event.role, &stmt.role),
        (&mut event.warehouse, &stmt.warehouse),
        (&mut event.database, &stmt.database),
        (&mut event.schema, &stmt.schema),
    ] {
        if value.is_some() {
            field.clone_from(value);
        }
    }
    let each = match gate::gate(
        ctx,
        &mut parts,
        session.as_deref(),
        &stmt.statement,
        &mut event,
    ) {
        gate::Gate::Forward(each) => each,
        gate::Gate::Refuse(r) => return refuse(ctx, event, r),
        gate::Gate::Hold(timeout) => {
            // The client polls the hold's handle, as it polls a statement still running.
            return holds::hold(
                ctx,
                event,
                parts,
                raw,
                params.request_id,
                timeout,
                holds::Api::SqlApi,
            );
        }
    };
    if ins.on_audit_failure == OnAuditFailure::Block && !ins.sink.healthy() {
        return refuse(ctx, event, Refusal::AuditUnavailable);
    }
    if ins.durability == Durability::BeforeForward
        && let Err(e) = ins.sink.submit_intent(event.clone()).await
    {
        if ins.on_audit_failure == OnAuditFailure::Block {
            warn!(error = %e, "statement refused: its audit record could not be made durable");
            return refuse(ctx, event, Refusal::AuditUnavailable);
        }
        event.add_flag(Flag::AuditGap);
    }
    // QUERY_TAG in the statement's parameters, as for a driver's (docs/decisions.md §15).
    let body = tagging::sql_api_body(&mut parts, decoded, session.as_deref(), &ctx.base);
    let resp = send(Request::from_parts(parts, body)).await;
    if resp.status().is_server_error()
        && let Some(rid) = params.request_id.as_deref()
    {
        return super::statement::attempt_failed(ctx, event, rid, resp, started).await;
    }
    answer(ctx, event, resp, started, hold, &each).await
}

/// `GET /api/v2/statements/<handle>`: the status of a statement that was still running, or a
/// partition of an answered one's result.
pub(super) async fn status<F, Fut>(
    req: Request<Body>,
    handle: &str,
    ctx: &ConnCtx,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let started = Instant::now();
    if holds::is_hold(ctx, handle) {
        return match holds::poll(handle, ctx).await {
            HoldPoll::Answered(resp) => resp,
            HoldPoll::Approved { request, .. } => {
                // Sent now, on this poll's connection; the client goes on with the hold's handle.
                let (_, params) = snowflake::endpoint::classify(
                    request.method().as_str(),
                    request.uri().path(),
                    request.uri().query(),
                );
                submit_as(request, params, ctx, send, Some(handle)).await
            }
        };
    }
    // A hold's handle stands for Snowflake's once its statement was approved and sent.
    let (req, handle) = unalias(ctx, req, handle);
    let handle = handle.as_str();
    if let Some(event) = ctx.shared.tracker.take_query(handle) {
        let resp = send(req).await;
        return answer(ctx, event, resp, started, None, &Vec::new()).await;
    }
    if let Some(answered) = ctx.shared.tracker.answered(handle) {
        // A partition of a result already recorded with its statement, shaped as its first was.
        let rule = answered.rule.unwrap_or_default();
        if answered.shape.withheld {
            return masking::sql_api_withheld(
                &rule,
                "the rule's row limit kept the first partition only, so this one is withheld",
                handle,
            );
        }
        let resp = send(req).await;
        if answered.shape.columns.is_empty() || !resp.status().is_success() {
            return resp;
        }
        return masking::sql_api_partition(ctx, &rule, &answered.shape, handle, resp).await;
    }
    requests::unknown(req, ctx, send).await
}

/// `POST /api/v2/statements/<handle>/cancel`: a running statement's event completes as
/// aborted once Snowflake confirmed the cancellation.
pub(super) async fn cancel<F, Fut>(
    req: Request<Body>,
    handle: &str,
    ctx: &ConnCtx,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    // A held statement is cancelled here: nothing of it reached Snowflake.
    if holds::cancel_named(ctx, Some(handle), None) {
        return reply(sql_api::cancelled(handle));
    }
    let (req, handle) = unalias(ctx, req, handle);
    let handle = handle.as_str();
    let Some(mut event) = ctx.shared.tracker.take_query(handle) else {
        return requests::unknown(req, ctx, send).await;
    };
    let resp = send(req).await;
    if resp.status().is_success() {
        event.success = Some(false);
        event.add_flag(Flag::Aborted);
        super::statement::complete_event(&ctx.shared, event);
    } else {
        ctx.shared.tracker.park_query(handle, event);
    }
    resp
}

/// Reads a SQL API answer into the statement's event: completed or failed, it is recorded; still
/// running, it waits for the status request that finds it ended.
async fn answer(
    ctx: &ConnCtx,
    mut event: Event,
    resp: Response<Body>,
    started: Instant,
    hold: Option<&str>,
    each: &gate::PerStatement,
) -> Response<Body> {
    let ins = &ctx.shared;
    let status = resp.status();
    match read_response(resp, ctx).await {
        Buffered::Read {
            parts,
            raw,
            decoded,
        } => {
            let parsed = decoded
                .as_deref()
                .map(|d| sql_api::parse_statement_response(status.as_u16(), d));
            match parsed {
                Some(Ok(r)) => {
                    event.query_id = r.handle.clone().or(event.query_id.take());
                    if let (Some(hold), Some(h)) = (hold, r.handle.as_deref()) {
                        ins.tracker.alias(hold, h);
                    }
                    match r.status {
                        StatementStatus::InProgress => match r.handle.as_deref() {
                            Some(h) => ins.tracker.park_query(h, event),
                            None => super::statement::complete_event(ins, event),
                        },
                        StatementStatus::Complete if !r.handles.is_empty() => {
                            // A multi-statement request: its statements' results are fetched by
                            // their own handles, each its own event.
                            event.success = Some(true);
                            event.duration_ms = elapsed_ms(started);
                            children(ctx, event, &r.handles, each);
                        }
                        StatementStatus::Complete => {
                            event.success = Some(true);
                            event.rows_produced = r.num_rows;
                            event.result_bytes = u64::try_from(raw.len()).ok();
                            event.chunk_count = u32::try_from(r.partitions).ok();
                            event.duration_ms = elapsed_ms(started);
                            let mut parts = parts;
                            let mut answered = Answered::default();
                            let mut body = None;
                            if let Some(s) = masking::shaping(ctx, &event) {
                                match s.sql_api_answer(&mut parts, decoded.as_deref(), &mut event) {
                                    Ok((shaped, partitions)) => {
                                        body = shaped;
                                        answered = Answered {
                                            rule: event.policy_rule.clone(),
                                            shape: partitions,
                                        };
                                    }
                                    Err(refusal) => return withhold(ctx, event, &refusal),
                                }
                            }
                            if let Some(h) = r.handle.as_deref() {
                                ins.tracker.note_answered(h, answered);
                            }
                            super::statement::complete_event(ins, event);
                            return Response::from_parts(
                                parts,
                                body.unwrap_or_else(|| raw.into_body()),
                            );
                        }
                        StatementStatus::Failed => {
                            event.success = Some(false);
                            event.error_code = r.code;
                            event.sql_state = r.sql_state;
                            event.error_message = r.message;
                            event.duration_ms = elapsed_ms(started);
                            super::statement::complete_event(ins, event);
                        }
                    }
                }
                _ => {
                    event.success = Some(status.is_success());
                    event.add_flag(Flag::Unparsed);
                    if !status.is_success() {
                        event.error_message = Some(format!("HTTP {status}"));
                    }
                    event.duration_ms = elapsed_ms(started);
                    super::statement::complete_event(ins, event);
                }
            }
            Response::from_parts(parts, raw.into_body())
        }
        Buffered::Streamed(resp) => {
            if let Some(s) = masking::shaping(ctx, &event) {
                return withhold(ctx, event, &s.uninspectable());
            }
            event.success = Some(resp.status().is_success());
            event.add_flag(Flag::Uninspected);
            event.duration_ms = elapsed_ms(started);
            super::statement::complete_event(ins, event);
            resp
        }
    }
}

/// A multi-statement request through the SQL API: one event per statement, each with its own
/// handle as query id and the request's in `parent_query_id`, its own text and decision; the
/// first keeps the request's event id (its intent). Each completes when the client fetches it
/// by its handle, or, never fetched, once `proxy.chunk_wait_s` passed.
fn children(ctx: &ConnCtx, parent: Event, handles: &[String], each: &gate::PerStatement) {
    let ins = &ctx.shared;
    let texts = parent
        .sql_text
        .as_deref()
        .map(snowflake::statements::split_statements)
        .unwrap_or_default();
    let split_ok = texts.len() == handles.len();
    for (i, handle) in handles.iter().enumerate() {
        let mut e = parent.clone();
        if i > 0 {
            e.event_id = uuid::Uuid::now_v7();
        }
        e.parent_query_id.clone_from(&parent.query_id);
        e.query_id = Some(handle.clone());
        e.rows_produced = None;
        e.result_bytes = None;
        e.chunk_count = None;
        if let Some(text) = texts.get(i).filter(|_| split_ok) {
            e.sql_text = Some((*text).to_owned());
            gate::mark_child(each, i, &mut e);
        }
        let event_id = e.event_id;
        ins.tracker.park_query(handle, e);
        let ins = ins.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ins.chunk_wait).await;
            if let Some(e) = ins.tracker.take_query(&handle) {
                if e.event_id == event_id && e.rows_produced.is_none() {
                    super::statement::complete_event(&ins, e);
                } else {
                    ins.tracker.park_query(&handle, e);
                }
            }
        });
    }
}

/// The request and the handle it names, with Snowflake's handle in place of a hold's once the
/// held statement was approved and sent.
fn unalias(ctx: &ConnCtx, req: Request<Body>, handle: &str) -> (Request<Body>, String) {
    match ctx.shared.tracker.aliased(handle) {
        Some(upstream) => (with_handle(req, handle, &upstream), upstream),
        None => (req, handle.to_owned()),
    }
}

/// The request with Snowflake's handle in its path in place of the hold's.
fn with_handle(req: Request<Body>, hold: &str, upstream: &str) -> Request<Body> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().replacen(hold, upstream, 1);
    let target = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    if let Ok(pq) = http::uri::PathAndQuery::try_from(target) {
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = Some(pq);
        if let Ok(u) = http::Uri::from_parts(uri) {
            parts.uri = u;
        }
    }
    Request::from_parts(parts, body)
}

/// Records a statement whose result its rule withholds and answers as the SQL API fails one.
fn withhold(ctx: &ConnCtx, event: Event, refusal: &Refusal) -> Response<Body> {
    let handle = masking::record_withheld(ctx, event, refusal);
    reply(snowflake::envelope::sql_api_refused(refusal, &handle))
}

/// Refuses a statement as the SQL API refuses one (HTTP 422 with its error body), and records
/// the denial; nothing is forwarded.
fn refuse(ctx: &ConnCtx, mut event: Event, refusal: Refusal) -> Response<Body> {
    let handle = uuid::Uuid::now_v7().to_string();
    mark_denied(&mut event, &refusal);
    event.query_id = Some(handle.clone());
    event.recording = Some(crate::recording::Status::Off);
    drop(ctx.shared.sink.submit(event));
    reply(snowflake::envelope::sql_api_refused(&refusal, &handle))
}
