//! One intercepted HTTP exchange with Snowflake, read as the protocol it is: logins, statements,
//! polls, renewals and logouts become audit events; everything else streams through untouched.
//!
//! The protocol knowledge is in [`crate::snowflake`]; this module moves bytes around it. Request
//! bodies that are inspected are buffered up to `limits.max_request_bytes` (a larger one is refused
//! with a Snowflake-shaped error, as is one that cannot be parsed: an unreadable request could carry
//! anything past the audit). Response bodies are buffered up to `limits.max_response_inspect_bytes`;
//! past that they stream on and the event is flagged `uninspected` (DECISIONS 2). The workload gets
//! the upstream's bytes exactly as sent.

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use tracing::{debug, warn};

use super::body::{Collected, Counted, Held, collect, full};
use super::intercept::Body;
use super::sessions::{Session, Tracker};
use super::statement;
use super::transfer::PendingTransfer;
use crate::audit::{Durability, Event, EventKind, EventSink, OnAuditFailure};
use crate::snowflake::{self, Endpoint, RedactMode, Refusal};

/// Limits on what the proxy buffers to inspect.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The memory every inspection shares (`limits.inspect_budget_bytes`).
    pub budget: super::body::Budget,
    /// Largest request body inspected (decoded); larger ones are refused.
    pub max_request_bytes: usize,
    /// Largest response body buffered for inspection; larger ones stream on uninspected.
    pub max_response_inspect_bytes: usize,
}

/// What every inspected exchange shares.
pub struct Inspector {
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
    /// The policy rules in force (issue 6).
    pub policy: Arc<crate::enforce::LivePolicy>,
    /// Statements held for approval.
    pub holds: Arc<super::holds::Holds>,
    /// Verifies the human identity a login token carries (`[oidc]`).
    pub oidc: Arc<crate::identity::oidc::Verifier>,
    /// Brokered logins and the token handles of their sessions (`[broker]`).
    pub broker: Arc<crate::broker::Broker>,
    /// Records statement results (`[recording]`), when a recipient is configured.
    pub recorder: Option<super::record::Recorder>,
}

/// One intercepted connection's part: who is on it, shared by its exchanges.
pub struct ConnCtx {
    /// The connection's who/where columns, copied into each event.
    pub base: Event,
    /// Who may use the token handles issued on this connection: its exec run, else its enrolled
    /// cgroup (`None` when no enrollment covers it).
    pub owner: Option<crate::broker::Owner>,
    /// The shared inspector.
    pub inspector: Arc<Inspector>,
}

impl ConnCtx {
    /// A new event of `kind` carrying the connection's columns.
    pub(super) fn event(
        &self,
        kind: EventKind,
        at: SystemTime,
        session: Option<&Session>,
    ) -> Event {
        let mut e = self.base.clone();
        e.event_id = uuid::Uuid::now_v7();
        e.event_kind = kind;
        e.event_time = at;
        e.connection_mode = None;
        e.close_reason = None;
        e.bytes_in = None;
        e.bytes_out = None;
        e.duration_ms = None;
        e.success = None;
        e.flags.clear();
        if let Some(s) = session {
            fill_session(&mut e, s);
        }
        e
    }
}

pub(super) fn fill_session(e: &mut Event, s: &Session) {
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
    if let Ok(c) = s.context.lock() {
        e.role.clone_from(&c.role);
        e.warehouse.clone_from(&c.warehouse);
        e.database.clone_from(&c.database);
        e.schema.clone_from(&c.schema);
    }
}

pub(super) fn elapsed_ms(started: Instant) -> Option<u64> {
    Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// Serves one exchange: inspects what the protocol says to inspect, sends the request upstream
/// with `send`, and returns the response for the client.
pub async fn handle<F, Fut>(req: Request<Body>, ctx: &ConnCtx, send: F) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let (endpoint, params) = snowflake::classify_uri(req.method(), req.uri());
    debug!(endpoint = endpoint.name(), "exchange");
    // A brokered session's requests carry agent handles: Snowflake's token goes in their place,
    // for the run or cgroup that logged in only.
    let mut req = req;
    let brokered = match super::brokering::swap_authorization(&mut req, ctx) {
        Ok(b) => b,
        Err(e) => return super::brokering::refuse(ctx, &endpoint, e),
    };
    match endpoint {
        Endpoint::Login => login(req, ctx, send).await,
        Endpoint::Query => statement::query(req, params.request_id, ctx, send).await,
        Endpoint::ResultPoll { query_id } => statement::poll(req, &query_id, ctx, send).await,
        Endpoint::Monitoring { query_id } => statement::monitoring(req, &query_id, ctx, send).await,
        Endpoint::TokenRequest => renewal(req, ctx, brokered, send).await,
        Endpoint::Logout => logout(req, ctx, brokered, send).await,
        Endpoint::Abort { query_id } => abort(req, query_id, ctx, send).await,
        _ => other(req, ctx, send).await,
    }
}

/// Anything else: streamed through; a download of a result chunk is counted for its statement.
async fn other<F, Fut>(req: Request<Body>, ctx: &ConnCtx, send: F) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let host = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_owned())
        })
        .unwrap_or_default()
        .to_ascii_lowercase();
    let transfer = ctx.base.cgroup_id.and_then(|cgroup_id| {
        ctx.inspector
            .tracker
            .transfers
            .find(cgroup_id, &host, req.uri().path())
    });
    if let Some(transfer) = transfer {
        return stage_transfer(req, transfer, host, send).await;
    }
    let pending = ctx.inspector.tracker.take_chunk(&host, req.uri().path());
    let path = req.uri().path().to_owned();
    let resp = send(req).await;
    let Some(pending) = pending else { return resp };
    if pending.masking().is_some() {
        return super::mask::chunk(ctx, pending, &host, &path, resp).await;
    }
    super::record::tee_chunk(ctx.inspector.clone(), pending, &host, &path, resp)
}

/// A request of a PUT/GET statement's transfer: streamed both ways, its bytes counted for the
/// statement (and listed in its recording, without the query of the URL).
async fn stage_transfer<F, Fut>(
    req: Request<Body>,
    transfer: Arc<PendingTransfer>,
    host: String,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    debug!(method = %req.method(), path = req.uri().path(), "stage transfer");
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    transfer.begin();
    let sent_here = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (sent, counter) = (transfer.clone(), sent_here.clone());
    let req = req.map(|body| {
        Counted::counting(body, move |bytes| {
            counter.store(bytes, std::sync::atomic::Ordering::Relaxed);
            sent.sent(bytes);
        })
    });
    let resp = send(req).await;
    let status = resp.status().as_u16();
    resp.map(|body| {
        Counted::counting(body, move |bytes| {
            let file = crate::recording::payload::TransferFile {
                method,
                host,
                path,
                status: Some(status),
                bytes_sent: sent_here.load(std::sync::atomic::Ordering::Relaxed),
                bytes_received: bytes,
            };
            transfer.end(bytes, file);
        })
    })
}

/// The answer the agent gives instead of Snowflake.
pub(super) fn reply(r: snowflake::envelope::Reply) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(r.body)));
    *resp.status_mut() = r.status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(snowflake::envelope::Reply::CONTENT_TYPE),
    );
    resp
}

/// Reads a request body for inspection; `Err` is the refusal to answer with.
pub(super) async fn read_request(
    parts: &http::request::Parts,
    body: Body,
    limits: &Limits,
) -> Result<(Held, Vec<u8>), Refusal> {
    let mut bytes = match collect(body, limits.max_request_bytes, &limits.budget).await {
        Collected::Whole(b) => b,
        Collected::TooLarge(_) => {
            return Err(Refusal::RequestTooLarge {
                limit: limits.max_request_bytes,
            });
        }
        Collected::Failed(_) => return Err(Refusal::Unparsed),
    };
    let too_large = Refusal::RequestTooLarge {
        limit: limits.max_request_bytes,
    };
    let hint = snowflake::decoded_size_hint(&parts.headers, &bytes.bytes, limits.max_request_bytes);
    if !bytes.pay_for(&limits.budget, hint).await {
        return Err(too_large);
    }
    let decoded =
        snowflake::decode_with_headers(&parts.headers, &bytes.bytes, limits.max_request_bytes)
            .map_err(|e| match e {
                snowflake::BodyError::TooLarge { .. } => Refusal::RequestTooLarge {
                    limit: limits.max_request_bytes,
                },
                _ => Refusal::Unparsed,
            })?
            .into_owned();
    if !bytes
        .pay_for(&limits.budget, decoded.len().saturating_sub(hint))
        .await
    {
        return Err(too_large);
    }
    Ok((bytes, decoded))
}

/// A response read for inspection: the bytes to hand on and their decoded form, or a stream.
pub(super) enum Inspected {
    /// Read whole: the headers, the bytes to hand on, and their decoded form.
    Read {
        parts: http::response::Parts,
        raw: Held,
        decoded: Option<Vec<u8>>,
    },
    Streamed(Response<Body>),
}

pub(super) async fn read_response(resp: Response<Body>, limits: &Limits) -> Inspected {
    let limit = limits.max_response_inspect_bytes;
    let (parts, body) = resp.into_parts();
    match collect(body, limit, &limits.budget).await {
        Collected::Whole(mut raw) => {
            // The decoded copy pays for its memory too; one the budget cannot hold is not made,
            // and the response goes on uninspected.
            let hint = snowflake::decoded_size_hint(&parts.headers, &raw.bytes, limit);
            let mut decoded = None;
            if raw.pay_for(&limits.budget, hint).await
                && let Ok(d) = snowflake::decode_with_headers(&parts.headers, &raw.bytes, limit)
            {
                let d = d.into_owned();
                if raw
                    .pay_for(&limits.budget, d.len().saturating_sub(hint))
                    .await
                {
                    decoded = Some(d);
                }
            }
            Inspected::Read {
                parts,
                raw,
                decoded,
            }
        }
        Collected::TooLarge(body) => Inspected::Streamed(Response::from_parts(parts, body)),
        Collected::Failed(e) => {
            warn!(error = %e, "upstream response body failed");
            Inspected::Streamed(Response::from_parts(parts, full(Bytes::new())))
        }
    }
}

async fn login<F, Fut>(req: Request<Body>, ctx: &ConnCtx, send: F) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let at = SystemTime::now();
    let started = Instant::now();
    let ins = &ctx.inspector;
    let (mut parts, body) = req.into_parts();
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut event = ctx.event(EventKind::Login, at, None);
    let (session_id, correlation_id) = super::tagging::new_session_ids(&ctx.base);
    event.correlation_id = Some(correlation_id.clone());
    let (raw, decoded) = match read_request(&parts, body, &ins.limits).await {
        Ok(b) => b,
        Err(refusal) => return refuse_login(ctx, event, refusal).await,
    };
    let parsed = match snowflake::parse_login_request(&decoded) {
        Ok(p) => p,
        Err(_) => return refuse_login(ctx, event, Refusal::Unparsed).await,
    };
    event.account.clone_from(&parsed.account);
    event.login_user.clone_from(&parsed.login_name);
    event.authenticator = Some(parsed.authenticator.as_str().to_owned());
    let mut detail = recordable_parameters(&parsed.session_parameters);
    if let Some(d) = parsed.driver(user_agent.as_deref()) {
        event.driver = Some(d.name);
        event.driver_version = d.version;
    }
    // Credential brokering (`[broker]`): the workload's credentials are a placeholder; the agent
    // logs in as the identity's user with a key pair only it holds.
    let broker_identity = ctx
        .owner
        .as_ref()
        .and(ins.broker.identity(ctx.base.workload_identity.as_deref()))
        .cloned();
    if let Some(id) = &broker_identity {
        event.brokered = Some(true);
        event.login_user = Some(id.user.clone());
        event.authenticator = Some(snowflake::Authenticator::KeyPair.as_str().to_owned());
        if let Some(account) = &id.account {
            event.account = Some(account.clone());
        }
        if let Some(placeholder) = parsed.login_name.as_ref().filter(|n| **n != id.user) {
            detail.insert(
                "workload_login_name".into(),
                serde_json::Value::String(placeholder.clone()),
            );
        }
    }
    if !detail.is_empty() {
        event.detail = serde_json::to_string(&detail).ok();
    }
    // Human identity from the login token (`[oidc]`): a denied login never goes upstream.
    let check = ins
        .oidc
        .check_login(&parsed, ctx.base.workload_identity.as_deref());
    let human = match super::sessions::Human::from_check(check.await) {
        Ok(h) => h,
        Err(refusal) => return refuse_login(ctx, event, refusal).await,
    };
    human.fill(&mut event);
    // QUERY_TAG in SESSION_PARAMETERS (DECISIONS 15); the rewrite is in `tagging`.
    let body = match &broker_identity {
        Some(id) => {
            drop(raw);
            match super::brokering::login_body(
                ctx,
                id,
                &mut parts,
                &decoded,
                parsed.account.as_deref(),
                &correlation_id,
                &session_id,
            )
            .await
            {
                Ok(body) => body,
                Err(failure) => {
                    event.success = Some(false);
                    event.error_code = Some(failure.refusal.login_code().to_owned());
                    event.error_message = Some(failure.message);
                    event.duration_ms = elapsed_ms(started);
                    drop(ins.sink.submit(event));
                    return reply(snowflake::envelope::login_error(&failure.refusal));
                }
            }
        }
        None => super::tagging::login_body(
            &mut parts,
            raw,
            &decoded,
            &ctx.base,
            &correlation_id,
            &session_id,
        ),
    };
    let broker_session = broker_identity
        .as_ref()
        .map(|_| ins.broker.handles.new_session());
    let resp = send(Request::from_parts(parts, body)).await;
    let status = resp.status();
    // `None`: a brokered login's answer whose tokens cannot be replaced (unread, unparsed, or not
    // rewritable). It must not reach the workload, which never holds Snowflake's tokens.
    let out: Option<Response<Body>> = match read_response(resp, &ins.limits).await {
        Inspected::Read {
            parts,
            raw,
            decoded,
        } => match decoded.as_deref().map(snowflake::parse_login_response) {
            Some(Ok(r)) => {
                event.success = Some(r.success);
                event.error_code.clone_from(&r.code);
                event.error_message = if r.success { None } else { r.message.clone() };
                event.snowflake_session_id.clone_from(&r.session_id);
                event.role.clone_from(&r.session_info.role);
                event.warehouse.clone_from(&r.session_info.warehouse);
                event.database.clone_from(&r.session_info.database);
                event.schema.clone_from(&r.session_info.schema);
                if r.success
                    && let Some(token) = decoded
                        .as_deref()
                        .and_then(snowflake::auth::issued_session_token)
                {
                    let session = Arc::new(Session {
                        id: session_id.clone(),
                        correlation_id: correlation_id.clone(),
                        snowflake_session_id: r.session_id.clone(),
                        account: event.account.clone(),
                        login_user: event.login_user.clone(),
                        authenticator: event.authenticator.clone(),
                        driver: event.driver.clone(),
                        driver_version: event.driver_version.clone(),
                        context: Arc::new(std::sync::Mutex::new(super::sessions::Context {
                            role: r.session_info.role.clone(),
                            warehouse: r.session_info.warehouse.clone(),
                            database: r.session_info.database.clone(),
                            schema: r.session_info.schema.clone(),
                            query_tag: parsed.query_tag.clone(),
                        })),
                        human: human.clone(),
                        brokered: broker_session,
                        recorded: Arc::default(),
                    });
                    event.session_id = Some(session.id.clone());
                    ins.tracker.insert(&token, session);
                }
                match (broker_session, r.success, decoded.as_deref()) {
                    // A brokered session's workload sees handles, never Snowflake's tokens.
                    (Some(bs), true, Some(d)) => super::brokering::login_response(
                        ctx,
                        bs,
                        parts,
                        d,
                        r.master_validity_seconds,
                    ),
                    _ => Some(Response::from_parts(parts, raw.into_body())),
                }
            }
            _ => {
                event.success = Some(status.is_success());
                event.flags.push("unparsed".into());
                broker_session
                    .is_none()
                    .then(|| Response::from_parts(parts, raw.into_body()))
            }
        },
        Inspected::Streamed(resp) => {
            event.flags.push("uninspected".into());
            broker_session.is_none().then_some(resp)
        }
    };
    let out = out.unwrap_or_else(|| {
        let refusal = Refusal::BrokerFailed {
            reason: "the answer from Snowflake could not be read".into(),
        };
        event.success = Some(false);
        event.error_code = Some(refusal.login_code().to_owned());
        event.error_message = Some(refusal.message());
        reply(snowflake::envelope::login_error(&refusal))
    });
    event.duration_ms = elapsed_ms(started);
    drop(ins.sink.submit(event));
    out
}

/// An abort (both URL forms): forwarded; when Snowflake accepts it, the statement it names,
/// parked while it ran (async or answered `333333`), is recorded as failed with the flag
/// `aborted`. A statement whose answer is still in flight (its first answer or a poll) is
/// marked before the abort is forwarded: Snowflake may answer it with the cancellation error
/// before the abort's own answer comes back, and that failure is then flagged `aborted` too.
/// A refused abort takes its mark back.
async fn abort<F, Fut>(
    req: Request<Body>,
    query_id: Option<String>,
    ctx: &ConnCtx,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let ins = &ctx.inspector;
    let (parts, body) = req.into_parts();
    let (raw, decoded) = match read_request(&parts, body, &ins.limits).await {
        Ok(b) => b,
        Err(refusal) => return reply(snowflake::envelope::session_error(&refusal)),
    };
    let request_id = serde_json::from_slice::<serde_json::Value>(&decoded)
        .ok()
        .and_then(|v| v.get("requestId")?.as_str().map(str::to_owned));
    // An abort of a statement held for approval is the agent's to answer: the hold is
    // cancelled and nothing reaches Snowflake (DECISIONS 16).
    if super::holds::cancel_named(ctx, query_id.as_deref(), request_id.as_deref()) {
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
        event.flags.push("aborted".into());
        drop(ins.sink.submit(event));
    }
    resp
}

/// A login's session parameters as the audit keeps them: any whose name speaks of a secret
/// (PASSWORD, SECRET, TOKEN, KEY) has its value replaced by `***` (DECISIONS 14).
fn recordable_parameters(
    params: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    params
        .iter()
        .map(|(k, v)| {
            let upper = k.to_ascii_uppercase();
            let secret = ["PASSWORD", "SECRET", "TOKEN", "KEY"]
                .iter()
                .any(|w| upper.contains(w));
            let v = if secret {
                serde_json::Value::String("***".into())
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// Turns an event into the record of a refusal.
pub(super) fn mark_denied(event: &mut Event, refusal: &Refusal) {
    event.event_kind = EventKind::Denial;
    event.success = Some(false);
    event.decision = Some("deny".into());
    event.error_message = Some(refusal.message());
    event.detail = Some(refusal.label().to_owned());
}

async fn refuse_login(ctx: &ConnCtx, mut event: Event, refusal: Refusal) -> Response<Body> {
    mark_denied(&mut event, &refusal);
    drop(ctx.inspector.sink.submit(event));
    reply(snowflake::envelope::login_error(&refusal))
}

async fn renewal<F, Fut>(
    req: Request<Body>,
    ctx: &ConnCtx,
    brokered: Option<u64>,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let ins = &ctx.inspector;
    // The renewal carries the master token in Authorization and the old session token in the
    // body; the session is found by the old token.
    let (mut parts, body) = req.into_parts();
    let (raw, mut decoded) = match read_request(&parts, body, &ins.limits).await {
        Ok(b) => b,
        Err(refusal) => return reply(snowflake::envelope::session_error(&refusal)),
    };
    // A brokered session's old token is a handle too: Snowflake's goes in its place.
    let mut body = None;
    if brokered.is_some() {
        match super::brokering::renewal_body(ctx, &mut parts, &decoded) {
            Ok(Some((sent, real))) => {
                body = Some(sent);
                decoded = real;
            }
            Ok(None) => {}
            Err(e) => return super::brokering::refuse(ctx, &Endpoint::TokenRequest, e),
        }
    }
    let old = serde_json::from_slice::<serde_json::Value>(&decoded)
        .ok()
        .and_then(|v| {
            v.get("oldSessionToken")
                .and_then(|t| t.as_str())
                .map(str::to_owned)
        });
    let session = ins.tracker.lookup(old.as_deref());
    drop(decoded);
    let body = body.unwrap_or_else(|| raw.into_body());
    let resp = send(Request::from_parts(parts, body)).await;
    if session.is_none() && brokered.is_none() {
        return resp;
    }
    match read_response(resp, &ins.limits).await {
        Inspected::Read {
            parts,
            raw,
            decoded,
        } => {
            if let (Some(session), Some(token)) = (
                session,
                decoded
                    .as_deref()
                    .and_then(snowflake::auth::issued_session_token),
            ) {
                ins.tracker.insert(&token, session);
            }
            match (brokered, decoded) {
                (Some(bs), Some(d)) => super::brokering::renewal_response(ctx, bs, parts, raw, &d)
                    .unwrap_or_else(|| {
                        warn!("a brokered session's renewal answer could not be rewritten");
                        reply(snowflake::envelope::session_error(&Refusal::UnknownHandle))
                    }),
                (Some(_), None) => {
                    reply(snowflake::envelope::session_error(&Refusal::UnknownHandle))
                }
                (None, _) => Response::from_parts(parts, raw.into_body()),
            }
        }
        // A brokered session's answer must be rewritten, so it cannot stream on unread.
        Inspected::Streamed(_) if brokered.is_some() => {
            reply(snowflake::envelope::session_error(&Refusal::UnknownHandle))
        }
        Inspected::Streamed(resp) => resp,
    }
}

async fn logout<F, Fut>(
    req: Request<Body>,
    ctx: &ConnCtx,
    brokered: Option<u64>,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let ins = &ctx.inspector;
    let started = Instant::now();
    let session = ins
        .tracker
        .remove(snowflake::auth::authorization_token(req.headers()));
    let mut event = ctx.event(EventKind::Logout, SystemTime::now(), session.as_deref());
    // Results of the session's statements that were never fetched will not be on it.
    if let Some(s) = &session {
        statement::session_ended(ins, &s.id);
    }
    let resp = send(req).await;
    event.success = Some(resp.status().is_success());
    event.duration_ms = elapsed_ms(started);
    // The session's handles end with it.
    if let Some(bs) = brokered.or_else(|| session.as_ref().and_then(|s| s.brokered)) {
        ins.broker.handles.end_session(bs);
    }
    drop(ins.sink.submit(event));
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secret_session_parameters_are_masked() {
        let params: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"QUERY_TAG":"etl","CLIENT_SESSION_KEEP_ALIVE":true,"my_api_key":"k","Sso_Token":"t"}"#,
        )
        .unwrap();
        let kept = recordable_parameters(&params);
        assert_eq!(kept["QUERY_TAG"], "etl");
        assert_eq!(kept["CLIENT_SESSION_KEEP_ALIVE"], true);
        assert_eq!(kept["my_api_key"], "***");
        assert_eq!(kept["Sso_Token"], "***");
    }
}
