//! What the agent answers a driver itself: the one mapping from the agent's reasons to the
//! Snowflake-shaped bodies drivers understand.
//!
//! A refused statement gets Snowflake's error envelope (`success:false`, `code`, `message`,
//! `data.errorCode/sqlState/queryId`, as `agent/tests/fixtures/snowflake-wire/py5-session/011` shows), so the driver raises its
//! usual `ProgrammingError`/`SQLException` with the agent's message. A refused login gets the
//! shape of a failed Snowflake login (`data.nextAction`, code `390xxx`), so the driver shows an
//! authentication error. A held statement gets `333333` with a hold id and a `getResultUrl`
//! (docs/decisions.md §16). All these answers are HTTP 200, as Snowflake sends them: a 5xx would make
//! drivers retry. The codes are chosen so that no driver acts on them (none is 390112/390114,
//! which trigger renewal, nor 333333/333334 outside the hold).
//!
//! Two answers are not HTTP 200, because the driver should retry or fail the request as it
//! would with a failing front end: an exchange the agent could not carry to Snowflake
//! ([`Unforwarded`], a 5xx the driver retries, or a 400) gets the plain envelope, and a result
//! chunk a rule withholds ([`ChunkWithheld`]) gets a `502` with a line of text, as a storage
//! host's failure would be (a chunk download is not read as an envelope).

use serde_json::{Value, json};

use super::codes;
use super::encoding::BodyError;
use super::error::ParseError;
use super::shaping::ShapeError;

/// Why the agent answers a request itself instead of forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// A policy rule denied the statement or login.
    PolicyDenied {
        /// The rule's name, as configured by the operator.
        rule: String,
        /// The rule's own explanation, shown after its name.
        message: Option<String>,
    },
    /// An approver rejected a held statement.
    ApprovalRejected,
    /// No approver decided before the hold's timeout.
    ApprovalTimedOut,
    /// The request body is over `limits.max_request_bytes` once decoded (docs/decisions.md §2).
    RequestTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request body could not be decoded or parsed: it cannot be checked, so it does not pass.
    Unparsed,
    /// The audit cannot record the event and the agent fails closed.
    AuditUnavailable,
    /// The workload's identity could not be established for a rule that needs it.
    IdentityUnverified,
    /// The login's OIDC token did not verify and the `[oidc]` rule for the workload denies such
    /// logins.
    LoginTokenInvalid {
        /// A bounded label naming the reason (`oidc_expired`, `oidc_wrong_audience`, ...).
        label: &'static str,
        /// What was wrong with the token, for the driver's message (never the token itself).
        reason: String,
    },
    /// The login is of a brokered identity and the broker could not make its key-pair login
    /// (key file unreadable, unparseable or readable by others).
    BrokerFailed {
        /// What was wrong, for the driver's message (never the key).
        reason: String,
    },
    /// The request carries an agent token handle that is unknown, expired, or not the caller's
    /// (issued to another cgroup or run): it is never forwarded.
    UnknownHandle,
    /// The request is neither a login nor a statement the agent reads, and
    /// `proxy.unknown_requests = "deny"` refuses such requests.
    UnknownRequest,
    /// The agent's inspection memory (`limits.inspect_budget_bytes`) did not free room for the
    /// request within `limits.inspect_wait_ms`: it cannot be checked now, so it does not pass.
    InspectionBusy,
}

/// The Snowflake error a refusal becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WireError {
    /// `code` and `data.errorCode` of a statement error.
    query_code: &'static str,
    /// `data.sqlState` of a statement error.
    sql_state: &'static str,
    /// `code` of a login error.
    login_code: &'static str,
}

impl Refusal {
    fn wire(&self) -> WireError {
        // 003001/42501 is Snowflake's "insufficient privileges"; 000630/57014 its statement
        // timeout; 000603 its internal error, with the SQL standard's state for the cause.
        // 390101 is "user access disabled": a login error no driver retries or renews on.
        let (query_code, sql_state) = match self {
            Refusal::PolicyDenied { .. }
            | Refusal::ApprovalRejected
            | Refusal::IdentityUnverified
            | Refusal::LoginTokenInvalid { .. }
            | Refusal::BrokerFailed { .. }
            | Refusal::UnknownRequest => ("003001", "42501"),
            // 390111 is Snowflake's "session no longer exists": the driver must log in again.
            Refusal::UnknownHandle => ("390111", "08001"),
            Refusal::ApprovalTimedOut => ("000630", "57014"),
            Refusal::RequestTooLarge { .. } => ("000603", "54000"),
            Refusal::Unparsed => ("000603", "22000"),
            Refusal::AuditUnavailable => ("000603", "58000"),
            // 53000: the SQL standard's "insufficient resources".
            Refusal::InspectionBusy => ("000603", "53000"),
        };
        // 390303 is Snowflake's "Invalid OAuth access token".
        let login_code = match self {
            Refusal::LoginTokenInvalid { .. } => "390303",
            // 390144 is Snowflake's "JWT token is invalid", its answer to a failed key-pair login.
            Refusal::BrokerFailed { .. } => "390144",
            Refusal::UnknownHandle => "390111",
            _ => "390101",
        };
        WireError {
            query_code,
            sql_state,
            login_code,
        }
    }

    /// The `code` and `sqlState` of the statement error this refusal becomes.
    pub fn query_codes(&self) -> (&'static str, &'static str) {
        let w = self.wire();
        (w.query_code, w.sql_state)
    }

    /// The `code` of the login error this refusal becomes (what the audit's `error_code` says).
    pub fn login_code(&self) -> &'static str {
        self.wire().login_code
    }

    /// The message the driver shows (it names the agent, never the request's content).
    pub fn message(&self) -> String {
        match self {
            Refusal::PolicyDenied {
                rule,
                message: None,
            } => format!("SQL access control error: denied by snowtrail policy rule '{rule}'."),
            Refusal::PolicyDenied {
                rule,
                message: Some(m),
            } => format!("SQL access control error: denied by snowtrail policy rule '{rule}': {m}"),
            Refusal::ApprovalRejected => {
                "SQL access control error: the statement was rejected by a snowtrail approver."
                    .to_owned()
            }
            Refusal::ApprovalTimedOut => {
                "Statement was not approved in time and was canceled by snowtrail.".to_owned()
            }
            Refusal::RequestTooLarge { limit } => {
                format!("Request refused by snowtrail: the body is larger than {limit} bytes.")
            }
            Refusal::Unparsed => {
                "Request refused by snowtrail: the body could not be read.".to_owned()
            }
            Refusal::AuditUnavailable => {
                "Request refused by snowtrail: the audit trail is unavailable.".to_owned()
            }
            Refusal::IdentityUnverified => {
                "SQL access control error: snowtrail could not verify the workload's identity."
                    .to_owned()
            }
            Refusal::LoginTokenInvalid { reason, .. } => {
                format!("Invalid OAuth access token: snowtrail refused the login: {reason}.")
            }
            Refusal::BrokerFailed { reason } => {
                format!("JWT token is invalid: snowtrail could not broker the login: {reason}.")
            }
            Refusal::UnknownHandle => {
                "Session no longer exists.  New login required to access the service.".to_owned()
            }
            Refusal::UnknownRequest => {
                "Request refused by snowtrail: this Snowflake endpoint is not permitted.".to_owned()
            }
            Refusal::InspectionBusy => {
                "Request refused by snowtrail: the agent is at its inspection limit; try again."
                    .to_owned()
            }
        }
    }

    /// A bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::PolicyDenied { .. } => "policy_denied",
            Refusal::ApprovalRejected => "approval_rejected",
            Refusal::ApprovalTimedOut => "approval_timed_out",
            Refusal::RequestTooLarge { .. } => "request_too_large",
            Refusal::Unparsed => "unparsed",
            Refusal::AuditUnavailable => "audit_unavailable",
            Refusal::IdentityUnverified => "identity_unverified",
            Refusal::LoginTokenInvalid { label, .. } => label,
            Refusal::BrokerFailed { .. } => "broker_failed",
            Refusal::UnknownHandle => "unknown_handle",
            Refusal::UnknownRequest => "unknown_request",
            Refusal::InspectionBusy => "inspection_busy",
        }
    }
}

impl From<&BodyError> for Refusal {
    fn from(e: &BodyError) -> Self {
        match e {
            BodyError::TooLarge { limit, .. } => Refusal::RequestTooLarge { limit: *limit },
            _ => Refusal::Unparsed,
        }
    }
}

impl From<&ParseError> for Refusal {
    fn from(_: &ParseError) -> Self {
        Refusal::Unparsed
    }
}

/// Why the agent answers an exchange it could not carry to Snowflake: the upstream could not
/// be reached or failed on the way, and the driver sees an HTTP error it retries as it would a
/// failing front end's.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unforwarded {
    /// No upstream connection could be had (connect, TLS or HTTP handshake failed or timed out).
    Unreachable {
        /// What failed, as the connection's audit event records it.
        detail: String,
    },
    /// The upstream connection failed while carrying the request, before the answer's head.
    Interrupted {
        /// What failed.
        detail: String,
    },
    /// The request's target cannot be written in the form the upstream connection speaks.
    BadTarget {
        /// What was wrong with it.
        detail: String,
    },
}

impl Unforwarded {
    /// The HTTP status: a 502 the driver retries when the upstream failed, a 400 it does not
    /// when the request itself cannot be forwarded.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Unforwarded::Unreachable { .. } | Unforwarded::Interrupted { .. } => {
                http::StatusCode::BAD_GATEWAY
            }
            Unforwarded::BadTarget { .. } => http::StatusCode::BAD_REQUEST,
        }
    }

    /// The envelope's `code` (what the audit's `error_code` records for the statement or login).
    pub fn code(&self) -> &'static str {
        match self {
            Unforwarded::Unreachable { .. } | Unforwarded::Interrupted { .. } => {
                codes::UPSTREAM_FAILED
            }
            Unforwarded::BadTarget { .. } => codes::REQUEST_UNFORWARDABLE,
        }
    }

    /// The envelope's `message` (what the audit's `error_message` records).
    pub fn message(&self) -> String {
        match self {
            Unforwarded::Unreachable { detail } | Unforwarded::BadTarget { detail } => {
                format!("snowtrail: {detail}")
            }
            Unforwarded::Interrupted { detail } => format!("snowtrail: upstream: {detail}"),
        }
    }
}

/// Why the agent withholds a download of a result chunk that a rule shapes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkWithheld {
    /// The chunk could not be shaped by the rule.
    #[error("{0}")]
    Unshapeable(ShapeError),
    /// The storage host did not serve the chunk.
    #[error("the chunk download failed upstream ({0})")]
    UpstreamFailed(http::StatusCode),
    /// The chunk could not be read whole within the inspection limit and budget.
    #[error("the chunk is too large for the agent to inspect")]
    TooLarge,
}

/// An answer for the proxy to send: its HTTP status, `Content-Type` and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status (200, as Snowflake answers errors too, save for [`Unforwarded`] and
    /// [`ChunkWithheld`]).
    pub status: http::StatusCode,
    /// The body's `Content-Type`.
    pub content_type: &'static str,
    /// The body: JSON, save for a withheld chunk's line of text.
    pub body: Vec<u8>,
}

impl Reply {
    /// The `Content-Type` of an envelope.
    pub const JSON: &'static str = "application/json";
    /// The `Content-Type` of a withheld chunk's answer.
    pub const TEXT: &'static str = "text/plain; charset=utf-8";

    fn ok(value: Value) -> Reply {
        Reply::json(http::StatusCode::OK, &value)
    }

    fn json(status: http::StatusCode, value: &Value) -> Reply {
        Reply {
            status,
            content_type: Reply::JSON,
            body: value.to_string().into_bytes(),
        }
    }
}

/// A statement refused: Snowflake's error envelope, with `query_id` (the agent's id for the
/// statement) as `data.queryId` so the driver reports it as the statement's id.
pub fn query_error(reason: &Refusal, query_id: &str) -> Reply {
    let w = reason.wire();
    Reply::ok(json!({
        "data": {
            "internalError": false,
            "errorCode": w.query_code,
            "sqlState": w.sql_state,
            "queryId": query_id,
        },
        "code": w.query_code,
        "message": reason.message(),
        "success": false,
        "headers": null,
    }))
}

/// A login refused: the shape of a failed Snowflake login, so the driver shows an
/// authentication error.
pub fn login_error(reason: &Refusal) -> Reply {
    let w = reason.wire();
    Reply::ok(json!({
        "data": {
            "nextAction": "RETRY_LOGIN",
            "authnMethod": null,
        },
        "code": w.login_code,
        "message": reason.message(),
        "success": false,
        "headers": null,
    }))
}

/// A request to any other endpoint refused (heartbeat, logout, renewal): the plain envelope.
pub fn session_error(reason: &Refusal) -> Reply {
    Reply::ok(json!({
        "data": null,
        "code": reason.wire().login_code,
        "message": reason.message(),
        "success": false,
        "headers": null,
    }))
}

/// A request to an endpoint the agent refuses (not a login or a statement): HTTP 403, as
/// A statement of Snowflake's SQL API the agent refuses (or whose result it withholds), as the API
/// fails one: HTTP 422 with the reason's code, SQL state and message, under `handle`.
pub fn sql_api_refused(reason: &Refusal, handle: &str) -> Reply {
    let (code, sql_state) = reason.query_codes();
    super::sql_api::refused(code, sql_state, &reason.message(), handle)
}

/// Snowflake's REST APIs answer a request they do not permit, with the plain envelope.
pub fn request_refused(reason: &Refusal) -> Reply {
    Reply::json(
        http::StatusCode::FORBIDDEN,
        &json!({
            "data": null,
            "code": reason.wire().query_code,
            "message": reason.message(),
            "success": false,
            "headers": null,
        }),
    )
}

/// An exchange the agent could not carry to Snowflake: the plain envelope with the reason's
/// status, code and message.
pub fn unforwarded(reason: &Unforwarded) -> Reply {
    Reply::json(
        reason.status(),
        &json!({
            "data": null,
            "code": reason.code(),
            "message": reason.message(),
            "success": false,
            "headers": null,
        }),
    )
}

/// A result chunk withheld by rule `rule`: HTTP 502 so the driver's download fails, with a line
/// of text naming the rule (the driver reads a chunk as rows, never as an envelope).
pub fn chunk_withheld(rule: &str, why: &ChunkWithheld) -> Reply {
    Reply {
        status: http::StatusCode::BAD_GATEWAY,
        content_type: Reply::TEXT,
        body: format!("chunk withheld by snowtrail policy rule '{rule}': {why}").into_bytes(),
    }
}

/// The result URL a driver polls for `query_id`.
pub fn result_url(query_id: &str) -> String {
    format!("/queries/{query_id}/result")
}

/// A statement held (docs/decisions.md §16): `333333` with `query_id` and `get_result_url`; the driver
/// polls the URL until the code is neither `333333` nor `333334`.
pub fn in_progress(query_id: &str, get_result_url: &str) -> Reply {
    Reply::ok(json!({
        "data": {
            "queryId": query_id,
            "getResultUrl": get_result_url,
            "queryAbortsAfterSecs": 300,
            "progressDesc": null,
        },
        "code": codes::QUERY_IN_PROGRESS,
        "message": "Query execution in progress. Query will be aborted unless request for result is received within 300 seconds.",
        "success": true,
    }))
}

/// The answer to an abort the agent handles itself (an abort of a held statement).
pub fn abort_ok() -> Reply {
    Reply::ok(json!({"data": null, "code": null, "message": null, "success": true}))
}

/// The answer to a monitoring request for a statement the agent holds: `status` as Snowflake
/// reports it (`RUNNING` while held).
pub fn monitoring_status(query_id: &str, status: &str) -> Reply {
    Reply::ok(json!({
        "data": {"queries": [{"id": query_id, "status": status}]},
        "code": null,
        "message": null,
        "success": true,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::snowflake::login::parse_login_response;
    use crate::snowflake::result::{QueryStatus, parse_monitoring_response, parse_query_response};
    use crate::snowflake::session::parse_simple_response;

    fn all() -> Vec<Refusal> {
        vec![
            Refusal::PolicyDenied {
                rule: "no-drop".into(),
                message: Some("ask the DBA".into()),
            },
            Refusal::ApprovalRejected,
            Refusal::ApprovalTimedOut,
            Refusal::RequestTooLarge { limit: 8 << 20 },
            Refusal::Unparsed,
            Refusal::AuditUnavailable,
            Refusal::IdentityUnverified,
        ]
    }

    #[test]
    fn query_errors_parse_back_as_failures() {
        for reason in all() {
            let reply = query_error(&reason, "hold-0001");
            assert_eq!(reply.status, http::StatusCode::OK);
            let r = parse_query_response(&reply.body).unwrap();
            assert!(!r.success);
            assert_eq!(r.status, QueryStatus::Failed);
            assert_eq!(r.query_id.as_deref(), Some("hold-0001"));
            assert_eq!(r.code, r.error_code);
            assert!(r.sql_state.as_deref().is_some_and(|s| s.len() == 5));
            let code = r.code.unwrap();
            assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
            assert!(
                ![codes::SESSION_EXPIRED, codes::MASTER_TOKEN_EXPIRED].contains(&code.as_str())
            );
            assert_eq!(r.message.as_deref(), Some(reason.message().as_str()));
        }
        let r = parse_query_response(
            &query_error(
                &Refusal::PolicyDenied {
                    rule: "r".into(),
                    message: None,
                },
                "q",
            )
            .body,
        )
        .unwrap();
        assert_eq!(
            (r.code.as_deref(), r.sql_state.as_deref()),
            (Some("003001"), Some("42501"))
        );
    }

    #[test]
    fn login_errors_parse_back_as_failed_logins() {
        for reason in all() {
            let r = parse_login_response(&login_error(&reason).body).unwrap();
            assert!(!r.success && !r.has_session_token);
            assert_eq!(r.code.as_deref(), Some("390101"));
            assert_eq!(r.next_action.as_deref(), Some("RETRY_LOGIN"));
            let s = parse_simple_response(&session_error(&reason).body).unwrap();
            assert!(!s.success);
        }
    }

    #[test]
    fn brokering_answers() {
        let r = parse_login_response(
            &login_error(&Refusal::BrokerFailed {
                reason: "the key file is readable by others".into(),
            })
            .body,
        )
        .unwrap();
        assert!(!r.success);
        assert_eq!(r.code.as_deref(), Some("390144"));
        assert!(r.message.unwrap().contains("readable by others"));
        let s = parse_simple_response(&session_error(&Refusal::UnknownHandle).body).unwrap();
        assert!(!s.success);
        assert_eq!(s.code.as_deref(), Some("390111"));
        let q = parse_query_response(&query_error(&Refusal::UnknownHandle, "q").body).unwrap();
        assert_eq!(q.code.as_deref(), Some("390111"));
    }

    #[test]
    fn hold_answers() {
        let url = result_url("hold-42");
        assert_eq!(url, "/queries/hold-42/result");
        let r = parse_query_response(&in_progress("hold-42", &url).body).unwrap();
        assert_eq!(r.status, QueryStatus::InProgress);
        assert!(r.success);
        assert_eq!(r.query_id.as_deref(), Some("hold-42"));
        assert_eq!(r.get_result_url.as_deref(), Some("/queries/hold-42/result"));
        assert!(parse_simple_response(&abort_ok().body).unwrap().success);
        let m = parse_monitoring_response(&monitoring_status("hold-42", "RUNNING").body).unwrap();
        assert_eq!(m.queries[0].id.as_deref(), Some("hold-42"));
        assert_eq!(m.queries[0].status.as_deref(), Some("RUNNING"));
    }

    #[test]
    fn unforwarded_answers_are_plain_envelopes_with_the_http_status() {
        let cases = [
            (
                Unforwarded::Unreachable {
                    detail: "connect to 192.0.2.7:443: timed out".into(),
                },
                http::StatusCode::BAD_GATEWAY,
                "502",
                "snowtrail: connect to 192.0.2.7:443: timed out",
            ),
            (
                Unforwarded::Interrupted {
                    detail: "connection closed before message completed".into(),
                },
                http::StatusCode::BAD_GATEWAY,
                "502",
                "snowtrail: upstream: connection closed before message completed",
            ),
            (
                Unforwarded::BadTarget {
                    detail: "invalid authority".into(),
                },
                http::StatusCode::BAD_REQUEST,
                "400",
                "snowtrail: invalid authority",
            ),
        ];
        for (reason, status, code, message) in cases {
            let reply = unforwarded(&reason);
            assert_eq!(reply.status, status);
            assert_eq!(reply.content_type, Reply::JSON);
            let v: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(
                v,
                json!({
                    "data": null,
                    "code": code,
                    "message": message,
                    "success": false,
                    "headers": null,
                })
            );
            // A statement's and a login's handler read it as a failure with this code.
            let q = parse_query_response(&reply.body).unwrap();
            assert_eq!(q.status, QueryStatus::Failed);
            assert_eq!(q.code.as_deref(), Some(code));
            assert_eq!(q.message.as_deref(), Some(message));
            let l = parse_login_response(&reply.body).unwrap();
            assert!(!l.success && !l.has_session_token);
            assert_eq!(l.code.as_deref(), Some(code));
        }
    }

    #[test]
    fn withheld_chunks_are_a_502_line_naming_the_rule() {
        let cases = [
            (
                ChunkWithheld::Unshapeable(ShapeError::Unreadable),
                "the result could not be read to apply the rule",
            ),
            (
                ChunkWithheld::Unshapeable(ShapeError::TooManyRows { total: 9, limit: 3 }),
                "the result has 9 rows, more than the 3 the rule allows",
            ),
            (
                ChunkWithheld::UpstreamFailed(http::StatusCode::FORBIDDEN),
                "the chunk download failed upstream (403 Forbidden)",
            ),
            (
                ChunkWithheld::TooLarge,
                "the chunk is too large for the agent to inspect",
            ),
        ];
        for (why, text) in cases {
            let reply = chunk_withheld("mask-email", &why);
            assert_eq!(reply.status, http::StatusCode::BAD_GATEWAY);
            assert_eq!(reply.content_type, Reply::TEXT);
            assert_eq!(
                String::from_utf8(reply.body).unwrap(),
                format!("chunk withheld by snowtrail policy rule 'mask-email': {text}")
            );
        }
    }

    #[test]
    fn every_envelope_is_json() {
        for reply in [
            query_error(&Refusal::Unparsed, "q"),
            login_error(&Refusal::Unparsed),
            session_error(&Refusal::Unparsed),
            in_progress("q", &result_url("q")),
            abort_ok(),
            monitoring_status("q", "RUNNING"),
        ] {
            assert_eq!(reply.content_type, Reply::JSON);
            serde_json::from_slice::<Value>(&reply.body).unwrap();
        }
    }

    #[test]
    fn mapping_from_errors() {
        let too_large = BodyError::TooLarge {
            limit: 10,
            encoding: crate::snowflake::encoding::ContentEncoding::Gzip,
        };
        assert_eq!(
            Refusal::from(&too_large),
            Refusal::RequestTooLarge { limit: 10 }
        );
        let bad = BodyError::UnsupportedEncoding { value: "br".into() };
        assert_eq!(Refusal::from(&bad), Refusal::Unparsed);
        assert_eq!(Refusal::from(&too_large).label(), "request_too_large");
        let labels: std::collections::BTreeSet<_> = all().iter().map(Refusal::label).collect();
        assert_eq!(labels.len(), all().len());
    }
}
