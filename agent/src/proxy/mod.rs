//! The proxy: accepts the connections the kernel redirected, finds out who made them and where they
//! were going, passes most of them through untouched, and intercepts those to Snowflake to read,
//! judge and record what they say.
//!
//! Two layers, imports pointing down only. [`transport`] is sockets, TLS and HTTP and knows
//! nothing of Snowflake: it accepts, looks up the origin record, decides from the ClientHello
//! whether a connection is intercepted, splices or terminates it, and pools the upstream
//! connections. [`exchange`] is the Snowflake-aware layer above it: it tells the transport which
//! server names to intercept and serves every HTTP exchange of an intercepted connection,
//! through the [`transport::ExchangeHandler`] seam the transport defines. A connection that
//! arrives without an origin record is refused: the agent must never be an open relay.

pub mod exchange;
pub mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub use transport::listener::Proxy;

use crate::audit::EventSink;
use crate::config::ProxySection;
use crate::enroll::Registry;
use crate::redirect::Redirect;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening socket could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(std::net::SocketAddr, #[source] std::io::Error),
}

/// Everything a connection task needs, shared by all of them.
pub struct Inputs {
    /// Origin records from the kernel.
    pub redirect: Arc<RwLock<Redirect>>,
    /// Enrollments, for the workload identity.
    pub registry: Arc<RwLock<Registry>>,
    /// Where connection events go.
    pub sink: Arc<dyn EventSink>,
    /// Limits and timeouts.
    pub config: ProxySection,
    /// This host's name, for events.
    pub host: String,
    /// Counters for status and metrics.
    pub stats: Arc<ProxyStats>,
    /// TLS material for interception; `None` runs the proxy as passthrough only.
    pub tls: Option<Arc<transport::tls::TlsInputs>>,
    /// What happens to connections without SNI or not TLS.
    pub unidentified: crate::config::Unidentified,
    /// Ports of HTTP proxies whose connections are redirected (`redirect.proxy_ports`).
    pub proxy_ports: Vec<u16>,
    /// Destinations connections may reach unidentified or unverified (`tls.allow_unverified`).
    pub allow_unverified: Vec<crate::config::Destination>,
    /// The check that a passed-through connection reaches the server it names.
    pub vouch: Arc<transport::vouch::Vouch>,
    /// The layer above the transport: which server names are intercepted, and who serves the
    /// exchanges of an intercepted connection.
    pub exchanges: Arc<dyn transport::ExchangeHandler>,
    /// Who is behind a connection: process, workload, run.
    pub identity: Arc<crate::identity::Resolver>,
}

/// Connection counters, shared with the control socket's status.
#[derive(Debug, Default)]
pub struct ProxyStats {
    total: AtomicU64,
    open: AtomicU64,
    refused: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl ProxyStats {
    /// Connections accepted since start (refused ones included).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
    /// Connections being served now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
    /// Connections refused because no origin record was found.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Bytes carried from clients to upstreams.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }
    /// Bytes carried from upstreams to clients.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }
}
