//! The Snowflake REST protocol as typed requests and responses (no I/O).
//!
//! Drivers (connector 4.x and 5.x, Node, JDBC, Go) speak JSON over HTTP to a handful of endpoints.
//! This module turns what crosses the proxy into typed values and back:
//!
//! ```text
//!  method + path + query ──► endpoint::classify ──► Endpoint + RequestParams
//!  body bytes + Content-Encoding ──► encoding::decode (size-capped gzip) ──► JSON bytes
//!  JSON bytes ──► login / query / session / result parsers ──► typed requests and responses
//!  typed facts ──► storage::hosts_to_learn (chunk, presigned and stage hosts)
//!  agent decisions ──► envelope (Snowflake-shaped answers the agent gives itself)
//!  SQL text ──► sql_lex ──► redact (credential literals replaced for the audit)
//!  names ──► secrets (which names are secrets: SQL options, login fields, parameters, flags)
//! ```
//!
//! What it does not do: no sockets, no clocks, no policy, no audit writing. Every parser reads the
//! whole input before returning, a body that does not parse is an error (never a partial value),
//! duplicate known keys are refused (a proxy and Snowflake must not read two different statements
//! out of one body), and errors never quote the input, so a secret in a malformed body cannot reach
//! a log line through an error message. Secrets (passwords, tokens, the old session token of a
//! renewal, stage credentials, presigned URL signatures) are either dropped while parsing or held
//! in a private field that only an accessor named for its later use can read; `Debug` prints none.
//!
//! Key-pair logins the credential broker makes are built in [`keypair`] (claims, fingerprint,
//! signature, the rewritten login body).
//!
//! The only ways to a secret's value, each for the brokering feature:
//! [`LoginRequest::token_for_validation`], [`TokenRequest::old_session_token_for_renewal`] and
//! [`UpstreamTokens`]' `session_token_for_brokering`/`master_token_for_brokering` (the tokens
//! [`rewrite_login_tokens`] and [`rewrite_renewal_tokens`] replace with agent handles).
//!
//! The wire as real drivers speak it is described in `docs/protocol.md`, with the captured
//! exchanges in `agent/tests/fixtures/snowflake-wire/`; `tests/snowflake_wire.rs` parses them, and `fuzz/` at the
//! repository root has a cargo-fuzz target per parser.

pub mod auth;
pub mod encoding;
pub mod endpoint;
pub mod envelope;
pub mod error;
pub mod hosts;
mod json;
pub mod keypair;
pub mod login;
pub mod query;
pub mod query_tag;
pub mod redact;
pub mod result;
pub mod secrets;
pub mod session;
pub mod shaping;
pub mod sql_api;
pub(crate) mod sql_lex;
pub mod statements;
pub mod storage;

pub use encoding::{
    BodyError, ContentEncoding, decode_body, decode_with_headers, decoded_size_hint, gzip,
};
pub use endpoint::{
    Endpoint, LoginTarget, RequestParams, classify, classify_request, classify_uri,
};
pub use envelope::{Refusal, Reply};
pub use error::{ParseError, RewriteError};
pub use login::{
    Authenticator, Driver, JwtClaims, LoginRequest, LoginResponse, SessionInfo, TokenShape,
    UpstreamTokens, driver_from_user_agent, parse_login_request, parse_login_response,
    rewrite_login_tokens,
};
pub use query::{
    BindSummary, QUERY_TAG_MAX_CHARS, QueryRequest, merge_query_tag, parse_query_request,
    set_query_tag,
};
pub use query_tag::{TagChange, session_tag_change, set_login_query_tag};
pub use redact::{RedactMode, redact_sql};
pub use result::{
    Chunk, Column, FileCommand, MonitoringResponse, QueryResponse, QueryStatus, ResultFormat,
    StatementType, parse_monitoring_response, parse_query_response,
};
pub use session::{
    AbortRequest, RenewalResponse, SimpleResponse, TokenRequest, parse_abort_request,
    parse_renewal_response, parse_simple_response, parse_token_request, rewrite_renewal_tokens,
    set_old_session_token,
};
pub use storage::{
    HostSource, LearnedHost, LocationType, StageInfo, StorageUrl, TransferTarget, hosts_to_learn,
    transfer_targets,
};

/// Response codes that drivers act on, and those the agent answers with itself when it cannot
/// forward, named once so no module spells them twice.
pub mod codes {
    /// A statement is still running: the driver polls `data.getResultUrl` (docs/decisions.md §16).
    pub const QUERY_IN_PROGRESS: &str = "333333";
    /// An `asyncExec` statement was detached: the driver keeps the query id and polls later.
    pub const QUERY_IN_PROGRESS_ASYNC: &str = "333334";
    /// The session token expired: the driver renews it with the master token and retries.
    pub const SESSION_EXPIRED: &str = "390112";
    /// The master token expired: the driver must log in again.
    pub const MASTER_TOKEN_EXPIRED: &str = "390114";
    /// The agent's code for an exchange whose upstream could not be reached or failed on the
    /// way (HTTP 502). It is the HTTP status, as the audit's `error_code` of such a statement or
    /// login has always said; no driver acts on it (a driver retries on the 502 itself).
    pub const UPSTREAM_FAILED: &str = "502";
    /// The agent's code for a request whose target cannot be written for the upstream (HTTP
    /// 400), the HTTP status likewise.
    pub const REQUEST_UNFORWARDABLE: &str = "400";
}

/// A credential or token taken from a body, kept only where a later feature needs its value.
///
/// Its value is reachable only through an accessor of the struct that holds it, named for that
/// use, and neither `Debug` nor any error shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// The value, for the named accessors of the structs that hold a secret.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}
