//! The router of the Snowflake-aware layer: each exchange of an intercepted connection goes to the
//! handler of its endpoint. This is the one module that knows every handler; it is also where the
//! layer meets the transport ([`ExchangeHandler`], [`ConnectionHandler`]), and where an exchange
//! the transport could not carry ([`ForwardError`]) is answered through the envelope.
//!
//! Logins, statements, polls, renewals and logouts become audit events; everything else streams
//! through untouched, save the downloads of a statement's result chunks and stage transfers,
//! which are counted (and shaped, or recorded) for their statement.

use std::future::Future;
use std::sync::Arc;

use http::{Request, Response, header};
use tracing::debug;

use super::context::{ConnCtx, Shared, unforwarded};
use super::{brokering, login, masking, recording_tee, requests, sql_api, statement, transfers};
use crate::audit::{ConnectionIdentity, Event};
use crate::proxy::transport::body::Body;
use crate::proxy::transport::{
    Answer, ConnectionHandler, ExchangeHandler, ForwardError, SendUpstream,
};
use crate::snowflake::{self, Endpoint};

/// The layer's face to the transport: decides which server names are intercepted and opens the
/// context of each intercepted connection.
pub struct Router {
    shared: Arc<Shared>,
}

impl Router {
    /// A router whose connections share `shared`.
    pub fn new(shared: Arc<Shared>) -> Router {
        Router { shared }
    }
}

impl ExchangeHandler for Router {
    /// A Snowflake (or configured) host, or a storage host a response pointed this cgroup at
    /// (docs/decisions.md §3).
    fn intercepts(&self, cgroup_id: u64, sni: &str) -> bool {
        self.shared.hosts.matches(sni) || self.shared.tracker.is_learned(cgroup_id, sni)
    }

    fn open(&self, event: &Event, enrolled_cgroup: Option<&str>) -> Arc<dyn ConnectionHandler> {
        Arc::new(ConnCtx {
            budget: self
                .shared
                .limits
                .budget_for(event.workload_identity.as_deref()),
            owner: crate::broker::Owner::of(event.correlation_id.as_deref(), enrolled_cgroup),
            base: ConnectionIdentity::of(event),
            shared: self.shared.clone(),
        })
    }
}

impl ConnectionHandler for ConnCtx {
    fn handle<'a>(&'a self, req: Request<Body>, send: SendUpstream<'a>) -> Answer<'a> {
        Box::pin(handle(req, self, send))
    }
}

/// Serves one exchange: inspects what the protocol says to inspect, sends the request upstream
/// with `upstream`, and returns the response for the client.
pub(super) async fn handle<F, Fut>(req: Request<Body>, ctx: &ConnCtx, upstream: F) -> Response<Body>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Result<Response<Body>, ForwardError>>,
{
    // An exchange the transport could not carry is answered here, through the envelope: the
    // handlers read that answer as they read Snowflake's.
    let send = move |r: Request<Body>| async move {
        upstream(r).await.unwrap_or_else(|e| unforwarded(&e))
    };
    let (endpoint, params) = snowflake::classify_uri(req.method(), req.uri());
    debug!(endpoint = endpoint.name(), "exchange");
    // A brokered session's requests carry agent handles: Snowflake's token goes in their place,
    // for the run or cgroup that logged in only.
    let mut req = req;
    let brokered = match brokering::swap_authorization(&mut req, ctx) {
        Ok(b) => b,
        Err(e) => return brokering::refuse(ctx, &endpoint, e),
    };
    match endpoint {
        Endpoint::Login => login::login(req, ctx, send).await,
        Endpoint::Query => statement::query(req, params.request_id, ctx, send).await,
        Endpoint::ResultPoll { query_id } => statement::poll(req, &query_id, ctx, send).await,
        Endpoint::Monitoring { query_id } => statement::monitoring(req, &query_id, ctx, send).await,
        Endpoint::TokenRequest => login::renewal(req, ctx, brokered, send).await,
        Endpoint::Logout => login::logout(req, ctx, brokered, send).await,
        Endpoint::Abort { query_id } => statement::abort(req, query_id, ctx, send).await,
        Endpoint::SqlApiSubmit => sql_api::submit(req, params, ctx, send).await,
        Endpoint::SqlApiStatus { handle } => sql_api::status(req, &handle, ctx, send).await,
        Endpoint::SqlApiCancel { handle } => sql_api::cancel(req, &handle, ctx, send).await,
        Endpoint::Heartbeat | Endpoint::Telemetry => other(req, ctx, false, send).await,
        _ => other(req, ctx, true, send).await,
    }
}

/// Anything else: streamed through; a download of a result chunk or a stage transfer is counted
/// for its statement, and any other request to a Snowflake host (`unknown`, not a heartbeat or
/// telemetry) is a `request` event of its own ([`requests`]).
async fn other<F, Fut>(req: Request<Body>, ctx: &ConnCtx, unknown: bool, send: F) -> Response<Body>
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
        ctx.shared
            .tracker
            .transfers
            .find(cgroup_id, &host, req.uri().path())
    });
    if let Some(transfer) = transfer {
        return transfers::stage_transfer(req, transfer, host, send).await;
    }
    let pending = ctx.shared.tracker.take_chunk(&host, req.uri().path());
    if pending.is_none() && unknown && ctx.shared.hosts.matches(&host) {
        return requests::unknown(req, ctx, send).await;
    }
    let path = req.uri().path().to_owned();
    let resp = send(req).await;
    let Some(pending) = pending else { return resp };
    if pending.masking().is_some() {
        return masking::chunk(ctx, pending, &host, &path, resp).await;
    }
    recording_tee::tee_chunk(ctx.shared.clone(), pending, &host, &path, resp)
}
