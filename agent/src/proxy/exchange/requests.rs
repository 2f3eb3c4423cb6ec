//! Requests to a Snowflake host that are neither a login nor a statement the agent reads:
//! Snowflake's REST resource APIs (`/api/v2/databases/…`), endpoints the agent does not know, and
//! anything a workload sends to reach its account some other way. None passes unaccounted: each
//! is a `request` event (method, path, status, bytes, the session and identity behind it) once
//! its answer was carried, or, with `proxy.unknown_requests = "deny"`, a denial and a refusal
//! with nothing forwarded.
//!
//! Not here: heartbeats and telemetry (known, and carrying no statement), result chunks and stage
//! transfers on storage hosts (counted for their statement).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use http::{Request, Response};
use tracing::{info, warn};

use super::context::{ConnCtx, mark_denied, reply};
use crate::audit::EventKind;
use crate::config::UnknownRequests;
use crate::policy::Action;
use crate::proxy::transport::body::{Body, Counted};
use crate::snowflake::{self, Refusal};

/// Carries (or refuses) a request the agent does not read, and records it.
pub(super) async fn unknown<F, Fut>(req: Request<Body>, ctx: &ConnCtx, send: F) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let ins = &ctx.shared;
    let session = ins
        .tracker
        .lookup(snowflake::auth::authorization_token(req.headers()));
    let mut event = ctx.event(EventKind::Request, SystemTime::now(), session.as_deref());
    event.http_method = Some(req.method().as_str().to_owned());
    event.http_path = Some(req.uri().path().to_owned());
    let decided = super::gate::judge_request(
        ctx,
        session.as_deref(),
        req.method().as_str(),
        req.uri().path(),
        &mut event,
    );
    let refusal = match decided.map(|d| (d.action, d.rule)) {
        Some((Action::Deny { message }, rule)) => Some(Refusal::PolicyDenied { rule, message }),
        Some(_) => None,
        None if ins.unknown_requests == UnknownRequests::Deny => Some(Refusal::UnknownRequest),
        None => None,
    };
    if let Some(refusal) = refusal {
        warn!(method = %req.method(), path = req.uri().path(), reason = ?refusal, "refused a request to an endpoint the agent does not read");
        mark_denied(&mut event, &refusal);
        event.http_status = Some(http::StatusCode::FORBIDDEN.as_u16());
        drop(ins.sink.submit(event));
        return reply(snowflake::envelope::request_refused(&refusal));
    }
    info!(method = %req.method(), path = req.uri().path(), "request to an endpoint the agent does not read");
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let req = req
        .map(|body| Counted::counting(body, move |bytes| counter.store(bytes, Ordering::Relaxed)));
    let resp = send(req).await;
    event.http_status = Some(resp.status().as_u16());
    event.success = Some(resp.status().is_success());
    let sink = ins.sink.clone();
    resp.map(|body| {
        Counted::counting(body, move |received| {
            event.bytes_in = Some(sent.load(Ordering::Relaxed));
            event.bytes_out = Some(received);
            drop(sink.submit(event));
        })
    })
}
