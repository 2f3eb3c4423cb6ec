//! The proxy's part of credential brokering ([`crate::broker`]): the brokered login body on its
//! way up, Snowflake's tokens swapped for handles on their way down (login and renewal answers),
//! and each request's handle swapped back for the real token, only for the run or cgroup that
//! logged in.
//!
//! Everything here fails closed: a login answer whose tokens cannot be replaced is not handed to
//! the workload (it gets a login error instead), and a request whose handle is unknown, expired or
//! someone else's is answered with Snowflake's "session no longer exists" and never forwarded.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use tracing::{info, warn};

use super::context::{ConnCtx, mark_denied, reply};
use crate::audit::EventKind;
use crate::broker::handles::HandleError;
use crate::broker::{BrokeredIdentity, Handles, Resolved};
use crate::proxy::transport::body::Body;
use crate::proxy::transport::body::full;
use crate::snowflake::{self, Endpoint, Refusal};

/// How long a session's handles live when Snowflake's answer does not say: its default master
/// token validity (4 hours).
const DEFAULT_MASTER_VALIDITY: Duration = Duration::from_secs(4 * 3600);
/// Kept past the master token's validity, so that Snowflake (not the agent) is the one to say a
/// session expired.
const VALIDITY_SLACK: Duration = Duration::from_secs(60);

fn handle_ttl(master_validity_s: Option<i64>) -> Duration {
    master_validity_s
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_MASTER_VALIDITY, Duration::from_secs)
        + VALIDITY_SLACK
}

/// Swaps a handle in `Authorization` for Snowflake's token. Returns the brokered session the
/// request belongs to (`None` for a request without a handle); `Err` when the handle must not be
/// used.
pub(super) fn swap_authorization(
    req: &mut Request<Body>,
    ctx: &ConnCtx,
) -> Result<Option<u64>, HandleError> {
    let Some(token) = snowflake::auth::authorization_token(req.headers()) else {
        return Ok(None);
    };
    match ctx
        .shared
        .broker
        .handles
        .resolve(token, ctx.owner.as_ref(), Instant::now())
    {
        Resolved::NotAHandle => Ok(None),
        Resolved::Real { token, session } => {
            let mut value = HeaderValue::from_str(&format!("Snowflake Token=\"{token}\""))
                .map_err(|_| HandleError::Unknown)?;
            value.set_sensitive(true);
            req.headers_mut().insert(header::AUTHORIZATION, value);
            Ok(Some(session))
        }
        Resolved::Refused(e) => Err(e),
    }
}

/// Answers a request whose handle was refused, as Snowflake answers a request of a session that
/// no longer exists, and records a denial naming the reason. Nothing is forwarded.
pub(super) fn refuse(ctx: &ConnCtx, endpoint: &Endpoint, e: HandleError) -> Response<Body> {
    warn!(reason = e.label(), identity = ?ctx.base.workload_identity, endpoint = endpoint.name(), "token handle refused");
    let mut event = ctx.event(EventKind::Denial, SystemTime::now(), None);
    mark_denied(&mut event, &Refusal::UnknownHandle);
    event.detail = Some(e.label().to_owned());
    event.brokered = Some(true);
    drop(ctx.shared.sink.submit(event));
    match endpoint {
        Endpoint::Query => reply(snowflake::envelope::query_error(
            &Refusal::UnknownHandle,
            &uuid::Uuid::now_v7().to_string(),
        )),
        _ => reply(snowflake::envelope::session_error(&Refusal::UnknownHandle)),
    }
}

/// Why a brokered login did not go upstream: what the driver is told, and what the audit and the
/// log say (which may name the key file, never its content).
pub(super) struct LoginFailure {
    /// The driver's answer.
    pub refusal: Refusal,
    /// The audit's `error_message`.
    pub message: String,
}

/// The body of a brokered login: the workload's login rewritten by the broker (key-pair JWT of
/// the identity's user), the role the identity names put in the query, and the agent's QUERY_TAG.
pub(super) async fn login_body(
    ctx: &ConnCtx,
    identity: &BrokeredIdentity,
    parts: &mut http::request::Parts,
    decoded: &[u8],
    login_account: Option<&str>,
    correlation_id: &str,
    session_id: &str,
) -> Result<Body, LoginFailure> {
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let brokered = ctx
        .shared
        .broker
        .login_body(identity, decoded, login_account, now_s)
        .await
        .map_err(|e| {
            warn!(error = %e, user = %identity.user, "cannot broker the login");
            LoginFailure {
                refusal: e.refusal(),
                message: e.to_string(),
            }
        })?;
    info!(user = %brokered.user, fingerprint = %brokered.fingerprint, "login brokered with a key pair");
    if let Some(role) = &identity.role {
        set_role(parts, role);
    }
    super::tagging::brokered_login_body(parts, brokered.body, &ctx.base, correlation_id, session_id)
        .ok_or_else(|| LoginFailure {
            refusal: Refusal::Unparsed,
            message: "the brokered login could not be encoded as the driver sent it".into(),
        })
}

fn set_role(parts: &mut http::request::Parts, role: &str) {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let rewritten = snowflake::keypair::with_role(path, role);
    let mut uri = parts.uri.clone().into_parts();
    match rewritten.parse() {
        Ok(pq) => uri.path_and_query = Some(pq),
        Err(_) => return,
    }
    if let Ok(u) = http::Uri::from_parts(uri) {
        parts.uri = u;
    }
}

/// A successful login answer with Snowflake's tokens replaced by handles of brokered session
/// `session`, for the connection's owner. `None` when it cannot be rewritten: then the answer must
/// not reach the workload.
pub(super) fn login_response(
    ctx: &ConnCtx,
    session: u64,
    parts: http::response::Parts,
    decoded: &[u8],
    master_validity_s: Option<i64>,
) -> Option<Response<Body>> {
    let owner = ctx.owner.as_ref()?;
    let (session_handle, master_handle) = (Handles::mint()?, Handles::mint()?);
    let (body, upstream) =
        snowflake::rewrite_login_tokens(decoded, &session_handle, &master_handle).ok()?;
    let handles = &ctx.shared.broker.handles;
    let ttl = handle_ttl(master_validity_s);
    let now = Instant::now();
    handles.bind(
        &session_handle,
        session,
        owner,
        upstream.session_token_for_brokering(),
        ttl,
        now,
    );
    if let Some(master) = upstream.master_token_for_brokering() {
        handles.bind(&master_handle, session, owner, master, ttl, now);
    }
    Some(with_body(parts, body))
}

/// A renewal body with Snowflake's old session token in place of the driver's handle, and the
/// decoded form of what is sent; `Ok(None)` when the body carries no handle.
pub(super) fn renewal_body(
    ctx: &ConnCtx,
    parts: &mut http::request::Parts,
    decoded: &[u8],
) -> Result<Option<(Body, Vec<u8>)>, HandleError> {
    let Ok(req) = snowflake::parse_token_request(decoded) else {
        return Ok(None);
    };
    let Some(old) = req.old_session_token_for_renewal() else {
        return Ok(None);
    };
    match ctx
        .shared
        .broker
        .handles
        .resolve(old, ctx.owner.as_ref(), Instant::now())
    {
        Resolved::NotAHandle => Ok(None),
        Resolved::Refused(e) => Err(e),
        Resolved::Real { token, .. } => {
            let Ok(body) = snowflake::set_old_session_token(decoded, &token) else {
                return Err(HandleError::Unknown);
            };
            let sent = super::tagging::reencode(parts, body.clone()).ok_or(HandleError::Unknown)?;
            Ok(Some((sent, body)))
        }
    }
}

/// A renewal answer with Snowflake's new tokens replaced by handles of brokered session
/// `session`. A failed renewal (no tokens) goes on as it is; `None` when a successful one cannot
/// be rewritten.
pub(super) fn renewal_response(
    ctx: &ConnCtx,
    session: u64,
    parts: http::response::Parts,
    raw: crate::proxy::transport::body::Held,
    decoded: &[u8],
) -> Option<Response<Body>> {
    let parsed = snowflake::parse_renewal_response(decoded).ok()?;
    if !parsed.has_session_token {
        return Some(Response::from_parts(parts, raw.into_body()));
    }
    let owner = ctx.owner.as_ref()?;
    let (session_handle, master_handle) = (Handles::mint()?, Handles::mint()?);
    let (body, upstream) =
        snowflake::rewrite_renewal_tokens(decoded, &session_handle, &master_handle).ok()?;
    let handles = &ctx.shared.broker.handles;
    let ttl = handle_ttl(parsed.master_validity_seconds);
    let now = Instant::now();
    handles.bind(
        &session_handle,
        session,
        owner,
        upstream.session_token_for_brokering(),
        ttl,
        now,
    );
    if let Some(master) = upstream.master_token_for_brokering() {
        handles.bind(&master_handle, session, owner, master, ttl, now);
    }
    Some(with_body(parts, body))
}

/// A response with a rewritten (identity-encoded) JSON body and its length.
fn with_body(mut parts: http::response::Parts, body: Vec<u8>) -> Response<Body> {
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(parts, full(Bytes::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_live_as_long_as_the_master_token() {
        assert_eq!(
            handle_ttl(Some(14_400)),
            Duration::from_secs(14_400) + VALIDITY_SLACK
        );
        assert_eq!(handle_ttl(None), DEFAULT_MASTER_VALIDITY + VALIDITY_SLACK);
        assert_eq!(
            handle_ttl(Some(-5)),
            DEFAULT_MASTER_VALIDITY + VALIDITY_SLACK
        );
    }
}
