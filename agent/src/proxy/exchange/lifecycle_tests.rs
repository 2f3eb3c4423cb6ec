//! Unit tests of the statement lifecycle, without root, network or driver: the real handlers
//! are driven through [`exchange::handle`] with a fake Snowflake behind its `send` seam
//! ([`fake_upstream`]), events land in memory ([`memory_sink`]), and time is tokio's paused
//! clock. Each test tells one story (login, a statement answered at once or after polls, an
//! async statement, a retry, an abort racing the answer, holds, masking) and asserts the events
//! recorded, what the upstream received and what the client got back.
//!
//! Every name of `proxy/` these tests use is imported here, once; [`harness`] builds the shared
//! setup.
#![allow(clippy::unwrap_used)]

mod fake_upstream;
mod memory_sink;
mod wire;

mod holds_tests;
mod masking_tests;
mod requests_tests;
mod retry_abort_tests;
mod session_tests;
mod sql_api_tests;
mod statement_tests;
mod unforwarded_tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Request;

// The proxy's entry points used by these tests.
use super::context::{ConnCtx, Limits, Shared};
use super::holds::Holds;
use super::router;
use super::state::Tracker;
use crate::proxy::transport::body::{Body, Budget};

use crate::audit::{Durability, Event, EventKind, OnAuditFailure};
use crate::snowflake::RedactMode;
use fake_upstream::{FakeSnowflake, Got};
use memory_sink::MemorySink;

/// The connection's workload identity.
const IDENTITY: &str = "etl-nightly";
/// How long a chunked result's event waits for its downloads.
const CHUNK_WAIT: Duration = Duration::from_secs(30);

/// What a test varies in the shared setup.
struct Setup {
    /// The policy file's text, if any.
    policy: Option<&'static str>,
    /// How SQL is redacted in `sql_text`.
    redact: RedactMode,
    /// `proxy.unknown_requests`.
    unknown_requests: crate::config::UnknownRequests,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            policy: None,
            redact: RedactMode::Credentials,
            unknown_requests: crate::config::UnknownRequests::default(),
        }
    }
}

/// One intercepted connection of an enrolled workload, its inspector, the fake Snowflake it
/// talks to and the audit in memory.
struct Harness {
    ctx: ConnCtx,
    sink: Arc<MemorySink>,
    holds: Arc<Holds>,
    upstream: FakeSnowflake,
}

/// The shared setup: an inspector as the daemon builds one (intent durable before forwarding,
/// no OIDC, no broker, no recording), and a connection of workload [`IDENTITY`].
fn harness(setup: Setup) -> Harness {
    let sink = Arc::new(MemorySink::default());
    let holds = Arc::new(Holds::new(sink.clone()));
    let policy = match setup.policy {
        Some(text) => {
            crate::enforce::LivePolicy::fixed(crate::policy::Policy::parse(text).unwrap())
        }
        None => crate::enforce::LivePolicy::none(),
    };
    let oidc = crate::identity::oidc::Verifier::new(
        &crate::identity::oidc::OidcConfig::default(),
        Arc::new(rustls::RootCertStore::empty()),
    )
    .unwrap();
    let shared = Arc::new(Shared {
        sink: sink.clone(),
        tracker: Tracker::default(),
        limits: Limits {
            budget: Budget::new(64 << 20),
            workload_share: 32 << 20,
            shares: Arc::default(),
            max_request_bytes: 1 << 20,
            max_response_inspect_bytes: 1 << 20,
        },
        redact: setup.redact,
        durability: Durability::BeforeForward,
        on_audit_failure: OnAuditFailure::default(),
        chunk_wait: CHUNK_WAIT,
        transfer_quiet: Duration::from_secs(1),
        hosts: crate::snowflake::hosts::HostMatcher::new(&[]),
        policy: Arc::new(policy),
        holds: holds.clone(),
        oidc: Arc::new(oidc),
        broker: Arc::new(crate::broker::Broker::new(
            &crate::broker::BrokerConfig::default(),
        )),
        recorder: None,
        unknown_requests: setup.unknown_requests,
    });
    let mut base = Event::new(EventKind::Connection, SystemTime::now(), "test-host");
    base.workload_identity = Some(IDENTITY.into());
    base.sni = Some("xy12345.snowflakecomputing.com".into());
    base.connection_id = Some(7);
    base.connection_mode = Some(crate::audit::ConnectionMode::Intercepted);
    Harness {
        ctx: ConnCtx {
            budget: shared.limits.budget_for(Some(IDENTITY)),
            base: crate::audit::ConnectionIdentity::of(&base),
            owner: None,
            shared,
        },
        sink,
        holds,
        upstream: FakeSnowflake::default(),
    }
}

impl Harness {
    /// The shared setup with the policy file `policy`, every other setting its default.
    fn with_policy(policy: &'static str) -> Harness {
        harness(Setup {
            policy: Some(policy),
            ..Setup::default()
        })
    }

    /// This connection after a login as `fake` that Snowflake answered with `token`.
    async fn logged_in(self, token: &str) -> Harness {
        self.login(token).await;
        self
    }

    /// The client sends the statement `sql` as request `r-1` of the session `token`; what it
    /// gets back.
    async fn query(&self, token: &str, sql: &str) -> Got {
        self.exchange(wire::query_request(token, "r-1", sql)).await
    }

    /// The client sends `req` through the proxy; what it gets back.
    async fn exchange(&self, req: Request<Body>) -> Got {
        let resp = router::handle(req, &self.ctx, self.upstream.send()).await;
        Got::read(resp).await
    }

    /// Logs in as `fake` with a password, Snowflake issuing `token`; what the client got.
    async fn login(&self, token: &str) -> Got {
        self.upstream
            .answer(wire::LOGIN, wire::login_ok(token, 1234));
        self.exchange(wire::login_request("xy12345", "fake", "snow-secret"))
            .await
    }

    /// The id an approver decides a hold by (what `snowtrail holds` lists).
    fn pending_hold(&self) -> String {
        let pending = self.holds.pending();
        assert_eq!(pending.len(), 1, "{pending:?}");
        pending[0].id.clone()
    }

    /// An approver decides the held statement `id`.
    fn decide(&self, id: &str, approve: bool, approver: &str) {
        self.holds.decide(id, approve, approver).unwrap();
    }
}

/// Whether `e` carries `flag`.
fn has_flag(e: &Event, flag: &str) -> bool {
    e.flags.iter().any(|f| f == flag)
}
