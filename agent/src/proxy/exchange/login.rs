//! The login family: a login (its session starts being tracked, its tags and brokered
//! credentials put in), a session token's renewal (the session follows its new token) and a
//! logout (the session and its handles end). Each becomes an audit event; the protocol is read
//! by [`crate::snowflake`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{Request, Response, header};
use tracing::warn;

use super::context::{
    Buffered, ConnCtx, elapsed_ms, mark_denied, read_request, read_response, reply,
};
use super::state::TrackedSession;
use crate::audit::{Event, EventKind, Flag};
use crate::proxy::transport::body::Body;
use crate::snowflake::{self, Endpoint, Refusal};

pub(super) async fn login<F, Fut>(req: Request<Body>, ctx: &ConnCtx, send: F) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let at = SystemTime::now();
    let started = Instant::now();
    let ins = &ctx.shared;
    let (mut parts, body) = req.into_parts();
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut event = ctx.event(EventKind::Login, at, None);
    let (session_id, correlation_id) = super::tagging::new_session_ids(&ctx.base);
    event.correlation_id = Some(correlation_id.clone());
    let (raw, decoded) = match read_request(&parts, body, ctx).await {
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
    let mut detail = parsed.recordable_session_parameters();
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
    let human = match super::state::Human::from_check(check.await) {
        Ok(h) => h,
        Err(refusal) => return refuse_login(ctx, event, refusal).await,
    };
    human.fill(&mut event);
    // QUERY_TAG in SESSION_PARAMETERS (docs/decisions.md §15); the rewrite is in `tagging`.
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
    let out: Option<Response<Body>> = match read_response(resp, ctx).await {
        Buffered::Read {
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
                    let session = Arc::new(TrackedSession {
                        id: session_id.clone(),
                        correlation_id: correlation_id.clone(),
                        snowflake_session_id: r.session_id.clone(),
                        account: event.account.clone(),
                        login_user: event.login_user.clone(),
                        authenticator: event.authenticator.clone(),
                        driver: event.driver.clone(),
                        driver_version: event.driver_version.clone(),
                        context: Arc::new(std::sync::Mutex::new(super::state::SessionContext {
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
                event.add_flag(Flag::Unparsed);
                broker_session
                    .is_none()
                    .then(|| Response::from_parts(parts, raw.into_body()))
            }
        },
        Buffered::Streamed(resp) => {
            event.add_flag(Flag::Uninspected);
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

async fn refuse_login(ctx: &ConnCtx, mut event: Event, refusal: Refusal) -> Response<Body> {
    mark_denied(&mut event, &refusal);
    drop(ctx.shared.sink.submit(event));
    reply(snowflake::envelope::login_error(&refusal))
}

pub(super) async fn renewal<F, Fut>(
    req: Request<Body>,
    ctx: &ConnCtx,
    brokered: Option<u64>,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let ins = &ctx.shared;
    // The renewal carries the master token in Authorization and the old session token in the
    // body; the session is found by the old token.
    let (mut parts, body) = req.into_parts();
    let (raw, mut decoded) = match read_request(&parts, body, ctx).await {
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
    match read_response(resp, ctx).await {
        Buffered::Read {
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
        Buffered::Streamed(_) if brokered.is_some() => {
            reply(snowflake::envelope::session_error(&Refusal::UnknownHandle))
        }
        Buffered::Streamed(resp) => resp,
    }
}

pub(super) async fn logout<F, Fut>(
    req: Request<Body>,
    ctx: &ConnCtx,
    brokered: Option<u64>,
    send: F,
) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let ins = &ctx.shared;
    let started = Instant::now();
    let session = ins
        .tracker
        .remove(snowflake::auth::authorization_token(req.headers()));
    let mut event = ctx.event(EventKind::Logout, SystemTime::now(), session.as_deref());
    // Results of the session's statements that were never fetched will not be on it.
    if let Some(s) = &session {
        super::statement::session_ended(ins, &s.id);
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
