//! Statements: a query request from intent to completion, however its outcome arrives (at once,
//! after `333333` polls, from `/monitoring/queries/` for an async statement, or once its result
//! chunks were downloaded), one event per statement (DECISIONS 10).
//!
//! A result the driver fetches by a request of its own (`GET /queries/<id>/result`: an async
//! statement's once monitoring said it ended, each statement's of a multi-statement request)
//! completes the statement's event when it comes, so that the event records what the workload
//! received. A fetch that never comes (connector 4.x reads an async result with a
//! `RESULT_SCAN`, a statement of its own; a driver may skip a statement's result) leaves the
//! result unrecorded: the event completes without it when that `RESULT_SCAN` is sent, when the
//! session logs out, or after `proxy.chunk_wait_s`.

use std::future::Future;
use std::ops::ControlFlow::{self, Break, Continue};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{Request, Response};
use tracing::warn;

use super::exchange::{
    ConnCtx, Inspected, Inspector, elapsed_ms, mark_denied, read_request, read_response, reply,
};
use super::intercept::Body;
use super::sessions::Session;
use super::transfer::PendingTransfer;
use crate::audit::{Durability, Event, EventKind, OnAuditFailure};
use crate::snowflake::{self, QueryStatus, Refusal};

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
    let ins = &ctx.inspector;
    let (mut parts, body) = req.into_parts();
    let session = ins
        .tracker
        .lookup(snowflake::auth::authorization_token(&parts.headers));
    // A retry with the same request id is the same statement (DECISIONS 10).
    let retried = request_id
        .as_deref()
        .and_then(|r| ins.tracker.take_request(r));
    let mut event = match retried {
        Some(e) => e,
        None => {
            let mut e = ctx.event(EventKind::Query, SystemTime::now(), session.as_deref());
            e.request_id.clone_from(&request_id);
            e
        }
    };
    let (raw, decoded) = match read_request(&parts, body, &ins.limits).await {
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
    if parsed.describe_only && !event.flags.iter().any(|f| f == "describe_only") {
        event.flags.push("describe_only".into());
    }
    // Policy (issue 6): deny, hold for approval, or forward.
    let each = match super::policy::gate(
        ctx,
        &mut parts,
        session.as_deref(),
        &parsed.sql_text,
        &mut event,
    ) {
        super::policy::Gate::Forward(each) => each,
        super::policy::Gate::Refuse(r) => return refuse_query(ctx, event, r).await,
        super::policy::Gate::Hold(t) => {
            return super::holds::hold(ctx, event, parts, raw, request_id, t);
        }
    };
    // Masking and row limits (issue 6): the result is rewritten below, or withheld.
    let shaping = super::mask::shaping(ctx, &event);
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
        event.flags.push("audit_gap".into());
    }
    // QUERY_TAG in the statement's parameters (DECISIONS 15); the rewrite is in `tagging`.
    let body = super::tagging::query_body(&mut parts, raw, &decoded, session.as_deref(), &ctx.base);
    let resp = send(Request::from_parts(parts, body)).await;
    let status = resp.status();

    match read_response(resp, &ins.limits).await {
        Inspected::Read {
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
                        super::tagging::note_statement(session.as_deref(), &parsed.sql_text);
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
                            complete_children(&ctx.inspector, event, &r, &parsed.sql_text, &each);
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
                    event.flags.push("unparsed".into());
                    event.duration_ms = elapsed_ms(started);
                    if let Some(s) = &shaping {
                        return super::mask::withhold(ctx, event, &s.uninspectable());
                    }
                    complete(ins, event);
                }
            }
            Response::from_parts(parts, shaped.unwrap_or_else(|| raw.into_body()))
        }
        Inspected::Streamed(resp) => {
            event.duration_ms = elapsed_ms(started);
            uninspected(ctx, event, session.as_deref(), shaping.as_ref(), resp)
        }
    }
}

/// Fills a query event from Snowflake's answer.
fn apply_query_response(
    event: &mut Event,
    r: &snowflake::QueryResponse,
    body_len: usize,
    session: Option<&Session>,
) {
    event.query_id = r.query_id.clone().or(event.query_id.take());
    match r.status {
        QueryStatus::Complete => event.success = Some(true),
        QueryStatus::Failed => {
            event.success = Some(false);
            event.error_code = r.error_code.clone().or_else(|| r.code.clone());
            event.sql_state.clone_from(&r.sql_state);
            event.error_message.clone_from(&r.message);
        }
        _ => {}
    }
    if let Some(t) = &r.statement_type {
        event.statement_type = Some(t.as_str().to_owned());
    }
    if matches!(r.status, QueryStatus::Complete) {
        event.rows_produced = r.total.or(r.returned).or(r.rowset_rows);
        event.result_bytes = Some(u64::try_from(body_len).unwrap_or(u64::MAX));
        event.chunk_count = u32::try_from(r.chunks.len()).ok();
    }
    if let Some(s) = session
        && let Ok(mut c) = s.context.lock()
    {
        if r.final_role.is_some() {
            c.role.clone_from(&r.final_role);
        }
        if r.final_warehouse.is_some() {
            c.warehouse.clone_from(&r.final_warehouse);
        }
        if r.final_database.is_some() {
            c.database.clone_from(&r.final_database);
        }
        if r.final_schema.is_some() {
            c.schema.clone_from(&r.final_schema);
        }
    }
}

/// A multi-statement request: one event per statement, each with its own query id and the
/// request's in `parent_query_id` (DECISIONS 10). The first keeps the request's event id, so the
/// intent journaled before forwarding is completed by it. Each completes when the driver fetches
/// its result, which its recording holds ([`await_result`]). The request's own answer names the
/// statements and holds no row of theirs; it is no statement's result and is not recorded.
fn complete_children(
    ins: &Arc<Inspector>,
    parent: Event,
    r: &snowflake::QueryResponse,
    sql: &str,
    each: &super::policy::PerStatement,
) {
    let texts = snowflake::statements::split_statements(sql);
    let split_ok = texts.len() == r.result_ids.len();
    for (i, child_id) in r.result_ids.iter().enumerate() {
        let mut e = parent.clone();
        if i > 0 {
            e.event_id = uuid::Uuid::now_v7();
        }
        e.parent_query_id.clone_from(&parent.query_id);
        e.query_id = Some(child_id.clone());
        e.rows_produced = None;
        e.result_bytes = None;
        e.chunk_count = None;
        e.statement_type = r.result_types.get(i).map(|t| t.as_str().to_owned());
        if split_ok {
            e.sql_text = Some(snowflake::redact_sql(texts[i], ins.redact).into_owned());
            super::policy::mark_child(each, i, &mut e);
        }
        await_result(ins, child_id, e);
    }
}

/// Holds a statement whose outcome is known until the driver fetches its result
/// (`GET /queries/<query_id>/result`, handled by [`poll`]), or until `chunk_wait` passes (then
/// it completes without its result).
fn await_result(ins: &Arc<Inspector>, query_id: &str, event: Event) {
    let event_id = event.event_id;
    ins.tracker.await_result(query_id, event);
    let ins = ins.clone();
    let query_id = query_id.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(ins.chunk_wait).await;
        if let Some(e) = ins.tracker.take_due(&query_id) {
            if e.event_id == event_id {
                complete(&ins, e);
            } else {
                // Held again since (a later monitoring answer): its own wait decides.
                ins.tracker.await_result(&query_id, e);
            }
        }
    });
}

/// A session logged out: the results of its statements that the driver did not fetch will not
/// be fetched on it; their events complete without them.
pub(super) fn session_ended(ins: &Inspector, session_id: &str) {
    for e in ins.tracker.take_due_of_session(session_id) {
        complete(ins, e);
    }
}

/// Intercepts, for this cgroup, the storage hosts a response points the driver at (DECISIONS 3).
fn learn_hosts(ins: &Inspector, base: &Event, r: &snowflake::QueryResponse) {
    let Some(cgroup_id) = base.cgroup_id else {
        return;
    };
    for h in snowflake::hosts_to_learn(r) {
        ins.tracker.learn_host(cgroup_id, &h.host);
    }
}

/// Holds a chunked result's event until its chunks were downloaded (their bytes are added), or
/// until `chunk_wait` passes (then it is flagged `chunks_unseen`).
fn await_chunks(
    ctx: &ConnCtx,
    event: Event,
    r: &snowflake::QueryResponse,
    masking: Option<super::mask::ChunkMasking>,
    rec: Option<super::record::Recording>,
) {
    let ins = ctx.inspector.clone();
    let pending =
        super::sessions::PendingResult::masked(event, r.chunks.len(), masking, rec, &r.chunks);
    for c in &r.chunks {
        ins.tracker
            .expect_chunk(&c.url.host, &c.url.path, pending.clone());
    }
    let wait = ins.chunk_wait;
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        if let Some(event) = pending.finish(true) {
            // Chunks not seen are not in the recording either.
            pending.with_recording(super::record::Recording::incomplete);
            super::record::chunk_finished(&ins, &pending, event);
        }
    });
}

/// What an inspected answer to a statement becomes: the body for the driver when a rule
/// rewrote it, how its chunk downloads are rewritten, and its recording.
struct Answered {
    body: Option<Body>,
    masking: Option<super::mask::ChunkMasking>,
    rec: Option<super::record::Recording>,
}

/// What a statement's answers are read with: its connection, its session, and the rule that
/// shapes its result, if any.
struct Answering<'a> {
    ctx: &'a ConnCtx,
    session: Option<&'a Session>,
    shaping: Option<&'a super::mask::Shaping>,
}

impl Answering<'_> {
    /// Applies an answer (`parts`, its size on the wire and its decoded body, parsed as `r`) to
    /// the statement's event, shapes a complete result when a rule asks for it, and starts the
    /// recording of the answer as the workload receives it; the first answer and every poll
    /// share it. A `Break` is the answer that replaces a result the rule cannot shape.
    fn answer(
        &self,
        mut event: Event,
        (parts, wire_len, decoded): (&mut http::response::Parts, usize, Option<&[u8]>),
        r: &mut snowflake::QueryResponse,
    ) -> ControlFlow<Response<Body>, (Event, Answered)> {
        apply_query_response(&mut event, r, wire_len, self.session);
        let (mut body, mut masking, mut plain) = (None, None, None);
        if let Some(s) = self.shaping
            && r.status == QueryStatus::Complete
        {
            match s.response(parts, decoded, r, &mut event) {
                Ok(shaped) => (body, masking, plain) = shaped,
                Err(refusal) => return Break(super::mask::withhold(self.ctx, event, &refusal)),
            }
        }
        let rec = recording(self.ctx, &event, self.session, r, || {
            plain.as_deref().or(decoded)
        });
        Continue((event, Answered { body, masking, rec }))
    }
}

/// Starts the recording of a statement whose outcome is in `r` (not of one still running),
/// capturing `body()`, the response as the workload receives it.
fn recording<'a>(
    ctx: &ConnCtx,
    event: &Event,
    session: Option<&Session>,
    r: &snowflake::QueryResponse,
    body: impl FnOnce() -> Option<&'a [u8]>,
) -> Option<super::record::Recording> {
    if !matches!(r.status, QueryStatus::Complete | QueryStatus::Failed) {
        return None;
    }
    let mut rec = super::record::begin(&ctx.inspector, event, session)?;
    match body() {
        Some(b) => rec.response(b),
        None => rec.incomplete(),
    }
    Some(rec)
}

/// A statement's answer too large to inspect: passed on as it streams (withheld instead when a
/// rule must shape it), and recorded as `uninspected`, its recording saying nothing was kept.
fn uninspected(
    ctx: &ConnCtx,
    mut event: Event,
    session: Option<&Session>,
    shaping: Option<&super::mask::Shaping>,
    resp: Response<Body>,
) -> Response<Body> {
    event.flags.push("uninspected".into());
    if let Some(s) = shaping {
        return super::mask::withhold(ctx, event, &s.uninspectable());
    }
    let rec = super::record::begin(&ctx.inspector, &event, session).map(|mut rec| {
        rec.incomplete();
        rec
    });
    complete_with(&ctx.inspector, event, rec);
    resp
}

/// Holds a PUT/GET statement's event while its stage transfers run, and completes it with their
/// totals once they have gone quiet, or when `chunk_wait` passes. Its recording (the answer, the
/// file command and the transfers seen) waits and completes with it.
fn await_transfers(
    ctx: &ConnCtx,
    event: Event,
    r: &snowflake::QueryResponse,
    rec: Option<super::record::Recording>,
) {
    let ins = &ctx.inspector;
    let part = crate::recording::payload::TransferPart {
        command: r.command.as_ref().map(|c| c.as_str().to_owned()),
        location: r.stage_info.as_ref().and_then(|s| s.location.clone()),
        sources: r.src_locations.clone(),
        ..Default::default()
    };
    let (Some(cgroup_id), Some(stage)) = (event.cgroup_id, r.stage_info.as_ref()) else {
        complete_with(ins, event, rec.map(|r| with_transfer(r, part)));
        return;
    };
    let targets = snowflake::transfer_targets(r);
    if targets.is_empty() {
        complete_with(ins, event, rec.map(|r| with_transfer(r, part)));
        return;
    }
    let pending = PendingTransfer::recorded(event, rec.map(|r| (r, part)));
    let location = stage.location.as_deref().unwrap_or_default();
    for (done, rec) in ins
        .tracker
        .transfers
        .register(cgroup_id, location, targets, pending.clone())
    {
        complete_with(ins, done, rec);
    }
    let ins = ctx.inspector.clone();
    let deadline = tokio::time::Instant::now() + ins.chunk_wait;
    let quiet = ins.transfer_quiet;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(quiet.min(TRANSFER_POLL)).await;
            if pending.settled(quiet) || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        ins.tracker.transfers.remove(&pending);
        if let Some((event, rec)) = pending.finish(true) {
            complete_with(&ins, event, rec);
        }
    });
}

/// A PUT/GET recording whose transfers are not followed: the file command alone.
fn with_transfer(
    mut rec: super::record::Recording,
    part: crate::recording::payload::TransferPart,
) -> super::record::Recording {
    rec.transfer(part);
    rec
}

/// How often a held PUT/GET event checks whether its transfers are over.
const TRANSFER_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Records a finished statement; its durability is not waited on (DECISIONS 12).
fn complete(ins: &Inspector, event: Event) {
    complete_with(ins, event, None);
}

/// Records a finished statement with its recorded result, once that is durable. A failure of a
/// statement the client aborted is flagged `aborted`; one that succeeded before the abort took
/// effect is not.
fn complete_with(ins: &Inspector, mut event: Event, rec: Option<super::record::Recording>) {
    let aborted = ins
        .tracker
        .take_aborted(event.query_id.as_deref(), event.request_id.as_deref());
    if aborted && event.success == Some(false) && !event.flags.iter().any(|f| f == "aborted") {
        event.flags.push("aborted".into());
    }
    super::record::submit(ins, event, rec);
}

async fn refuse_query(ctx: &ConnCtx, mut event: Event, refusal: Refusal) -> Response<Body> {
    let qid = uuid::Uuid::now_v7().to_string();
    mark_denied(&mut event, &refusal);
    event.query_id = Some(qid.clone());
    event.recording = Some(crate::recording::Status::Off.as_str().to_owned());
    drop(ctx.inspector.sink.submit(event));
    reply(snowflake::envelope::query_error(&refusal, &qid))
}

pub(super) async fn poll<F, Fut>(
    req: Request<Body>,
    query_id: &str,
    ctx: &ConnCtx,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    // Policy (issue 6): a statement held for approval is answered by the agent.
    if super::holds::is_hold(ctx, query_id) {
        return super::holds::poll(query_id, ctx, send).await;
    }
    let ins = &ctx.inspector;
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
    let shaping = super::mask::shaping(ctx, &event);
    let resp = send(req).await;
    match read_response(resp, &ins.limits).await {
        Inspected::Read {
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
                    event.flags.push("unparsed".into());
                    if let Some(s) = &shaping {
                        return super::mask::withhold(ctx, event, &s.uninspectable());
                    }
                    complete(ins, event);
                }
            }
            Response::from_parts(parts, shaped.unwrap_or_else(|| raw.into_body()))
        }
        Inspected::Streamed(resp) => {
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
pub(super) async fn monitoring<F, Fut>(
    req: Request<Body>,
    query_id: &str,
    ctx: &ConnCtx,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    // Policy (issue 6): a statement held for approval is answered by the agent.
    if super::holds::is_hold(ctx, query_id) {
        return super::holds::monitoring(query_id);
    }
    let ins = &ctx.inspector;
    let Some(mut event) = ins.tracker.take_query(query_id) else {
        return send(req).await;
    };
    let session = ins
        .tracker
        .lookup(snowflake::auth::authorization_token(req.headers()));
    let resp = send(req).await;
    match read_response(resp, &ins.limits).await {
        Inspected::Read {
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
                    await_result(&ctx.inspector, query_id, event);
                }
                Some(q)
                    if q.status
                        .as_deref()
                        .is_some_and(|s| MONITOR_DONE_FAILED.contains(&s)) =>
                {
                    event.success = Some(false);
                    let rec = super::record::begin(ins, &event, session.as_deref()).map(|mut r| {
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
        Inspected::Streamed(resp) => {
            ins.tracker.park_query(query_id, event);
            resp
        }
    }
}
