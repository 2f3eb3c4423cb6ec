//! The proxy's transport layer: sockets, TLS and HTTP, knowing nothing of Snowflake.
//!
//! [`listener`] accepts the redirected connections, looks up their origin and decides from the
//! ClientHello whether a connection is intercepted, passed through or refused; [`vouch`] checks
//! that a passed-through connection reaches the server it names; [`passthrough`] splices them;
//! [`replay`] hands the peeked first bytes back to whoever reads the connection next; [`tls`]
//! terminates TLS and serves HTTP with hyper; [`forward`] carries one exchange upstream; [`pool`]
//! holds the upstream connections; [`tunnel`] reads a workload's CONNECT to its HTTP proxy and
//! opens the agent's own through it; [`denials`] records the egress lockdown's refusals the
//! kernel reports; [`body`] is the HTTP body type and the memory budget of inspection.
//!
//! The layer above (the Snowflake-aware `proxy::exchange`) comes in through
//! [`ExchangeHandler`]: this layer asks it which server names to intercept and hands it every
//! exchange of an intercepted connection, and every failure to carry one upstream as a typed
//! [`ForwardError`]; it writes no answer of its own. Nothing here imports it, nor the protocol,
//! policy, broker or recording modules of the crate.

pub mod body;
pub mod denials;
mod forward;
pub mod listener;
pub mod passthrough;
pub mod pool;
pub mod replay;
pub mod tls;
pub mod tunnel;
pub mod vouch;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};

use crate::audit::Event;
use body::Body;

pub use forward::ForwardError;

/// The answer to one exchange, boxed because the handler is a trait object.
pub type Answer<'a> = Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>>;

/// What sending upstream yields: the upstream's response, or why the exchange was not carried.
pub type Sent<'a> = Pin<Box<dyn Future<Output = Result<Response<Body>, ForwardError>> + Send + 'a>>;

/// Sends one request upstream for the exchange it was given to, at most once, and yields the
/// upstream's response, or the [`ForwardError`] the handler answers the client with.
pub type SendUpstream<'a> = Box<dyn FnOnce(Request<Body>) -> Sent<'a> + Send + 'a>;

/// What the transport asks of the layer above: which connections it intercepts, and who serves
/// the exchanges of each intercepted one.
pub trait ExchangeHandler: Send + Sync {
    /// Whether a TLS connection from cgroup `cgroup_id` to server name `sni` is intercepted.
    fn intercepts(&self, cgroup_id: u64, sni: &str) -> bool;

    /// The handler of one intercepted connection, from its connection event (who and where) and
    /// the enrolled cgroup that covers it, if one does.
    fn open(&self, event: &Event, enrolled_cgroup: Option<&str>) -> Arc<dyn ConnectionHandler>;
}

/// Serves the HTTP exchanges of one intercepted connection.
pub trait ConnectionHandler: Send + Sync {
    /// Answers `req`: what reaches the upstream goes through `send`; an answer made in the
    /// upstream's place does not call it, and neither does this layer make one: when `send`
    /// fails, the answer is the handler's.
    fn handle<'a>(&'a self, req: Request<Body>, send: SendUpstream<'a>) -> Answer<'a>;
}
