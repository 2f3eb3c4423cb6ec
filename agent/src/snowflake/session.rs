//! Session upkeep: token renewal, heartbeat, logout and abort.
//!
//! Renewal is `POST /session/token-request {"oldSessionToken", "requestType":"RENEW"}` sent with
//! the master token, answered with `data.sessionToken`/`masterToken` and their lifetimes
//! (docs/protocol.md, "Renewal"). Heartbeat and logout carry no body worth reading (none, or `{}`) and
//! are answered with the plain envelope [`SimpleResponse`]. Abort names its statement by
//! `requestId` in the body (4.x) or by query id in the path (5.x, see
//! [`super::endpoint::Endpoint::Abort`]).

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::Secret;
use super::error::{ParseError, RewriteError};
use super::json::{self, opt_code};
use super::login::{UpstreamTokens, rewrite_data_tokens};

const TOKEN_REQUEST: &str = "token request";
const RENEWAL_RESPONSE: &str = "token response";
const ABORT: &str = "abort request";
const SIMPLE: &str = "response";

/// A parsed token request; the old session token is reachable only through
/// [`TokenRequest::old_session_token_for_renewal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// `requestType` (`RENEW`; `ISSUE` exists in older servers).
    pub request_type: Option<String>,
    /// `oldSessionToken` is present.
    pub has_old_session_token: bool,
    old_session_token: Option<Secret>,
}

impl TokenRequest {
    /// True for `requestType: RENEW`.
    pub fn is_renewal(&self) -> bool {
        self.request_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("RENEW"))
    }

    /// The old session token, for the brokering feature that maps an agent handle back to
    /// Snowflake's token when it forwards a renewal. Nothing else may read it.
    pub fn old_session_token_for_renewal(&self) -> Option<&str> {
        self.old_session_token.as_ref().map(Secret::expose)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTokenRequest {
    old_session_token: Option<Secret>,
    request_type: Option<String>,
}

/// Parses a (decoded) token-request body.
pub fn parse_token_request(body: &[u8]) -> Result<TokenRequest, ParseError> {
    let w: WireTokenRequest = json::from_slice(TOKEN_REQUEST, body)?;
    Ok(TokenRequest {
        request_type: w.request_type,
        has_old_session_token: w.old_session_token.is_some(),
        old_session_token: w.old_session_token,
    })
}

/// Replaces `oldSessionToken` of a (decoded) token-request body with `token` (the broker puts
/// Snowflake's token in place of the agent handle the driver sent); every other field is kept.
pub fn set_old_session_token(body: &[u8], token: &str) -> Result<Vec<u8>, RewriteError> {
    parse_token_request(body)?;
    let mut top = json::RawObject::parse(TOKEN_REQUEST, body)?;
    if top.get("oldSessionToken").is_none() {
        return Err(RewriteError::Absent {
            what: TOKEN_REQUEST,
            field: "oldSessionToken",
        });
    }
    top.set(TOKEN_REQUEST, "oldSessionToken", token)?;
    top.to_vec(TOKEN_REQUEST)
}

/// A parsed token-request answer; the tokens themselves are not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalResponse {
    /// `success`.
    pub success: bool,
    /// `code` (e.g. `390114` when the master token expired too).
    pub code: Option<String>,
    /// `message`.
    pub message: Option<String>,
    /// `data.sessionToken` is present.
    pub has_session_token: bool,
    /// `data.masterToken` is present.
    pub has_master_token: bool,
    /// `data.validityInSecondsST`.
    pub session_validity_seconds: Option<i64>,
    /// `data.validityInSecondsMT`.
    pub master_validity_seconds: Option<i64>,
    /// `data.sessionId`, as text.
    pub session_id: Option<String>,
}

#[derive(Deserialize)]
struct WireRenewal {
    data: Option<WireRenewalData>,
    #[serde(default, deserialize_with = "opt_code")]
    code: Option<String>,
    message: Option<String>,
    success: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRenewalData {
    session_token: Option<IgnoredAny>,
    master_token: Option<IgnoredAny>,
    #[serde(rename = "validityInSecondsST")]
    validity_st: Option<i64>,
    #[serde(rename = "validityInSecondsMT")]
    validity_mt: Option<i64>,
    #[serde(default, deserialize_with = "opt_code")]
    session_id: Option<String>,
}

/// Parses a (decoded) token-request answer.
pub fn parse_renewal_response(body: &[u8]) -> Result<RenewalResponse, ParseError> {
    let w: WireRenewal = json::from_slice(RENEWAL_RESPONSE, body)?;
    let d = w.data;
    Ok(RenewalResponse {
        success: w.success.unwrap_or(false),
        code: w.code,
        message: w.message,
        has_session_token: d.as_ref().is_some_and(|d| d.session_token.is_some()),
        has_master_token: d.as_ref().is_some_and(|d| d.master_token.is_some()),
        session_validity_seconds: d.as_ref().and_then(|d| d.validity_st),
        master_validity_seconds: d.as_ref().and_then(|d| d.validity_mt),
        session_id: d.and_then(|d| d.session_id),
    })
}

/// Replaces `data.sessionToken` and `data.masterToken` of a renewal answer with agent handles,
/// like [`super::login::rewrite_login_tokens`] does for a login answer.
pub fn rewrite_renewal_tokens(
    body: &[u8],
    session_handle: &str,
    master_handle: &str,
) -> Result<(Vec<u8>, UpstreamTokens), RewriteError> {
    rewrite_data_tokens(
        RENEWAL_RESPONSE,
        body,
        ["sessionToken", "masterToken"],
        session_handle,
        master_handle,
    )
}

/// A parsed abort request body (4.x: `{sqlText, requestId}`; 5.x: `{}`).
#[derive(Clone, PartialEq, Eq)]
pub struct AbortRequest {
    /// `sqlText` of the statement to abort (4.x).
    pub sql_text: Option<String>,
    /// `requestId` of the statement to abort (4.x); matches the `requestId` of its query request.
    pub request_id: Option<String>,
}

impl std::fmt::Debug for AbortRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sql = self
            .sql_text
            .as_deref()
            .map(|s| super::redact::redact_sql(s, super::redact::RedactMode::Credentials));
        f.debug_struct("AbortRequest")
            .field("sql_text", &sql)
            .field("request_id", &self.request_id)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAbort {
    sql_text: Option<String>,
    request_id: Option<String>,
}

/// Parses a (decoded) abort request body; an empty body counts as `{}`.
pub fn parse_abort_request(body: &[u8]) -> Result<AbortRequest, ParseError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(AbortRequest {
            sql_text: None,
            request_id: None,
        });
    }
    let w: WireAbort = json::from_slice(ABORT, body)?;
    Ok(AbortRequest {
        sql_text: w.sql_text,
        request_id: w.request_id.filter(|r| !r.is_empty()),
    })
}

/// The plain envelope `{data, code, message, success}` that answers heartbeat, logout and abort
/// (and any error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleResponse {
    /// `success`.
    pub success: bool,
    /// `code` (e.g. `390103` for a heartbeat without a session token).
    pub code: Option<String>,
    /// `message`.
    pub message: Option<String>,
}

#[derive(Deserialize)]
struct WireSimple {
    #[serde(default, deserialize_with = "opt_code")]
    code: Option<String>,
    message: Option<String>,
    success: Option<bool>,
}

/// Parses a (decoded) plain envelope.
pub fn parse_simple_response(body: &[u8]) -> Result<SimpleResponse, ParseError> {
    let w: WireSimple = json::from_slice(SIMPLE, body)?;
    Ok(SimpleResponse {
        success: w.success.unwrap_or(false),
        code: w.code,
        message: w.message,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn token_request_keeps_the_old_token_private() {
        let r =
            parse_token_request(br#"{"oldSessionToken":"LTv-old-token","requestType":"RENEW"}"#)
                .unwrap();
        assert!(r.is_renewal() && r.has_old_session_token);
        assert_eq!(r.old_session_token_for_renewal(), Some("LTv-old-token"));
        assert!(!format!("{r:?}").contains("LTv-old-token"));
        assert!(parse_token_request(br#"{"oldSessionToken":7}"#).is_err());

        let out = set_old_session_token(
            br#"{"oldSessionToken":"snowtrail-handle.x","requestType":"RENEW"}"#,
            "real-old",
        )
        .unwrap();
        let r = parse_token_request(&out).unwrap();
        assert_eq!(r.old_session_token_for_renewal(), Some("real-old"));
        assert!(r.is_renewal());
        assert!(set_old_session_token(br#"{"requestType":"RENEW"}"#, "t").is_err());
    }

    #[test]
    fn renewal_response_and_rewrite() {
        let body = br#"{"data":{"sessionToken":"new-st","validityInSecondsST":3600,"masterToken":"mt","validityInSecondsMT":14400,"sessionId":0},"code":null,"message":null,"success":true}"#;
        let r = parse_renewal_response(body).unwrap();
        assert!(r.success && r.has_session_token && r.has_master_token);
        assert_eq!(r.session_validity_seconds, Some(3600));
        assert_eq!(r.master_validity_seconds, Some(14400));
        assert_eq!(r.session_id.as_deref(), Some("0"));
        let (out, up) = rewrite_renewal_tokens(body, "h-st", "h-mt").unwrap();
        assert_eq!(up.session_token_for_brokering(), "new-st");
        assert_eq!(up.master_token_for_brokering(), Some("mt"));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"]["sessionToken"], "h-st");
        assert_eq!(v["data"]["masterToken"], "h-mt");
        assert_eq!(v["data"]["validityInSecondsST"], 3600);
    }

    #[test]
    fn abort_bodies() {
        let r = parse_abort_request(
            br#"{"sqlText":"select 1","requestId":"00000000-0000-4000-8000-000000000000"}"#,
        )
        .unwrap();
        assert_eq!(
            r.request_id.as_deref(),
            Some("00000000-0000-4000-8000-000000000000")
        );
        assert_eq!(r.sql_text.as_deref(), Some("select 1"));
        assert_eq!(parse_abort_request(b"{}").unwrap().request_id, None);
        assert_eq!(parse_abort_request(b"").unwrap().sql_text, None);
        assert!(parse_abort_request(b"{").is_err());
    }

    #[test]
    fn simple_envelopes() {
        let r =
            parse_simple_response(br#"{"data":null,"code":null,"message":null,"success":true}"#)
                .unwrap();
        assert!(r.success && r.code.is_none());
        let r = parse_simple_response(
            br#"{"data":null,"code":"390103","message":"Session token not found in the request data.","success":false,"headers":null}"#,
        )
        .unwrap();
        assert_eq!(r.code.as_deref(), Some("390103"));
    }
}
