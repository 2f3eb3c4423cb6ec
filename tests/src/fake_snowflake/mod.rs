//! A scripted fake Snowflake REST server for the end-to-end tests and the demo
//! (docs/decisions.md §19).
//!
//! It speaks HTTP/1.1 and HTTP/2 (ALPN `h2` and `http/1.1` over TLS, or plain HTTP), with a test CA
//! it creates in a given directory (`ca.pem`), and answers the endpoints connector 4.8.1, 5.2.0
//! and Node sdk 3.3.0 use, with envelopes modelled on the captured exchanges in
//! `agent/tests/fixtures/snowflake-wire/`. Every request is logged (method, path, query, headers,
//! decoded body) so tests can assert what reached "Snowflake".
//!
//! The answers are scripted by the SQL text:
//!
//! | SQL | answer |
//! |---|---|
//! | `select 1`, `select 'a' as x` | one JSON row |
//! | `select ... from customers` | a canned table (ID, NAME, EMAIL; 3 rows) |
//! | `create table`, `insert`, `drop table`, `select` from it | a small in-memory table store (columns `fixed`, `text`, `boolean`, `real`, `timestamp_ntz`) |
//! | `/*rows:N*/` | N generated rows |
//! | `/*arrow*/` | Arrow `rowsetBase64` instead of a JSON `rowset` |
//! | `/*sf_chunks*/` | an inline part and three chunks under `/fake-stage-results/<qid>/<i>` (SSE-C) |
//! | `/*error*/`, a table that does not exist | error 002003 / 42S02 with `data.queryId` |
//! | `/*expire_token*/` | 390112 once per request id, then the answer after token renewal |
//! | `/*slow:N*/` | 333333 and a result URL the driver polls N times |
//! | an abort (by query id or request id) | the statement's polls answer 000604; the abort's own answer comes 300 ms later |
//! | `asyncExec: true` | 333334; `GET /monitoring/queries/<qid>` and `/queries/<qid>/result` |
//! | several statements (`MULTI_STATEMENT_COUNT`) | a parent with `resultIds`, children by result URL |
//! | `describeOnly: true` | the columns, no rows, `numberOfBinds` |
//! | `put file://... @stage`, `get`, `list` | `stageInfo` with a presigned URL on `/fs_bucket/...` |
//! | `POST /api/v2/statements` (SQL API, session token) | the same statements as JSON `data` (200), `async=true` 202 then `GET /api/v2/statements/<handle>`, `…/cancel` |
//!
//! Key-pair logins (`SNOWFLAKE_JWT`) are verified against the users' public keys when
//! [`FakeOptions::jwt_public_keys`] names any (signature, `iss`, `sub`, `exp`), else only their shape
//! is checked.
//!
//! It is no database: WHERE clauses are ignored, expressions are not evaluated.

pub mod drivers;
pub mod engine;
pub mod handlers;
pub mod queries;
pub mod results;
pub mod server;
pub mod sql;
pub mod state;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use state::RecordedRequest;

/// The account the drivers are pointed at in tests.
pub const ACCOUNT: &str = "xy12345";
/// The account's host name.
pub const ACCOUNT_HOST: &str = "xy12345.snowflakecomputing.com";

/// How to start a [`FakeSnowflake`].
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Where to listen (port 0 picks one).
    pub addr: SocketAddr,
    /// Serve HTTPS (else plain HTTP).
    pub tls: bool,
    /// Host names the certificate names (wildcards allowed); the listen IP is always added.
    pub hosts: Vec<String>,
    /// Directory of the test CA (`ca.pem`, `ca-key.pem`); reused if both are there.
    pub ca_dir: PathBuf,
    /// Offer HTTP/2 (ALPN `h2`); off serves HTTP/1.1 only.
    pub http2: bool,
    /// A password (or OAuth / PAT token) that login refuses, as a wrong password.
    pub bad_password: Option<String>,
    /// Host name put in chunk and presigned stage URLs (else the request's own host).
    pub storage_host: Option<String>,
    /// Gzip JSON answers above 4 KiB to clients that accept it, as Snowflake does.
    pub gzip_responses: bool,
    /// Largest request body, on the wire and decoded.
    pub max_body_bytes: usize,
    /// Time allowed to read a request's headers, and then its body.
    pub request_timeout: Duration,
    /// Key-pair users: `(login name, public key PEM)`. With any, a `SNOWFLAKE_JWT` login must
    /// carry a JWT whose signature verifies against its user's key and whose `iss`/`sub`/`exp`
    /// follow docs/protocol.md ("Key-pair authenticator"), else it is refused with 390144; with
    /// none, any well-formed JWT passes.
    pub jwt_public_keys: Vec<(String, String)>,
    /// Keep every request for [`FakeSnowflake::requests`]; off for load tests, where the log's
    /// lock and copies would cap the throughput being measured.
    pub record_requests: bool,
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
}

impl Default for FakeOptions {
    fn default() -> FakeOptions {
        FakeOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: true,
            hosts: vec![
                ACCOUNT_HOST.to_owned(),
                "*.snowflakecomputing.com".to_owned(),
            ],
            ca_dir: std::env::temp_dir().join("snowtrail-fake-snowflake"),
            http2: true,
            bad_password: Some("wrong-password".to_owned()),
            storage_host: None,
            gzip_responses: true,
            max_body_bytes: 16 << 20,
            request_timeout: Duration::from_secs(30),
            jwt_public_keys: Vec::new(),
            record_requests: true,
            max_connections: 512,
        }
    }
}

/// A running fake Snowflake; it stops when dropped.
pub struct FakeSnowflake {
    addr: SocketAddr,
    ca_pem: PathBuf,
    scheme: &'static str,
    state: Arc<state::State>,
    shutdown: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeSnowflake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSnowflake")
            .field("addr", &self.addr)
            .field("ca_pem", &self.ca_pem)
            .finish_non_exhaustive()
    }
}

impl FakeSnowflake {
    /// Binds `opts.addr`, writes the CA, and serves on a thread of its own until dropped.
    pub fn start(opts: FakeOptions) -> anyhow::Result<FakeSnowflake> {
        let ca = tls::TestCa::load_or_create(&opts.ca_dir)?;
        let acceptor = if opts.tls {
            Some(ca.acceptor(&opts.hosts, opts.addr.ip(), opts.http2)?)
        } else {
            None
        };
        let std_listener = std::net::TcpListener::bind(opts.addr)
            .with_context(|| format!("cannot bind {}", opts.addr))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let scheme = if opts.tls { "https" } else { "http" };
        let state = Arc::new(state::State::new(state::Settings {
            bad_password: opts.bad_password.clone(),
            storage_host: opts.storage_host.clone(),
            scheme,
            port: addr.port(),
            gzip_responses: opts.gzip_responses,
            jwt_keys: handlers::jwt_keys(&opts.jwt_public_keys)?,
            record_requests: opts.record_requests,
        }));
        let limits = server::Limits {
            max_body_bytes: opts.max_body_bytes,
            request_timeout: opts.request_timeout,
            handshake_timeout: Duration::from_secs(10),
            max_connections: opts.max_connections.max(1),
            http1_only: !opts.http2,
        };
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-snowflake")
            .enable_all()
            .build()?;
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("fake-snowflake".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => server::serve(l, acceptor, st, limits, rx).await,
                        Err(e) => eprintln!("fake-snowflake: cannot listen: {e}"),
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(FakeSnowflake {
            addr,
            ca_pem: ca.cert_path,
            scheme,
            state,
            shutdown,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// The test CA's certificate (PEM) that clients must trust.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    /// The `POST /queries/v1/query-request` requests received so far.
    pub fn query_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_query())
            .collect()
    }

    /// The `sqlText` of every query-request received so far.
    pub fn sql_texts(&self) -> Vec<String> {
        self.query_requests()
            .iter()
            .filter_map(RecordedRequest::sql_text)
            .collect()
    }

    /// Every session and master token the fake has issued (logins and renewals), oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state
            .inner
            .lock()
            .map(|i| i.issued_tokens.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The login names whose key-pair JWT verified against their configured public key, one per
    /// login; and the reasons JWTs were refused.
    pub fn jwt_checks(&self) -> (Vec<String>, Vec<String>) {
        self.state
            .inner
            .lock()
            .map(|i| (i.jwt_verified.clone(), i.jwt_refused.clone()))
            .unwrap_or_default()
    }

    /// Forgets the requests logged so far.
    pub fn clear_requests(&self) {
        self.state.clear_requests();
    }

    /// Stops serving and waits for the server thread.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FakeSnowflake {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}
