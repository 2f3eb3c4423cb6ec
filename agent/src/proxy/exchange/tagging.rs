//! The agent's QUERY_TAG on the wire (docs/decisions.md §15): each login's `SESSION_PARAMETERS` and each
//! statement's `parameters` get `{"snowtrail": {correlation_id, session_id, identity, host}}`,
//! merged with the tag the workload set itself, so Snowflake's QUERY_HISTORY joins to the audit.
//!
//! The JSON work is in [`crate::snowflake::query_tag`] and [`crate::snowflake::query`]; this file
//! moves bodies: it re-encodes a rewritten body as the driver sent it (gzip stays gzip) with its
//! `Content-Length` updated. A body that cannot be rewritten goes on unchanged, with a warning:
//! the tag is for joining, and the statement was already parsed and audited.
//!
//! The session's own tag is tracked from the login and from `ALTER SESSION SET/UNSET QUERY_TAG`
//! statements that succeeded, because a per-statement tag replaces the session's. Tags the agent
//! cannot see (user or account defaults, tags set inside procedures) are replaced on the
//! statements it tags.

use bytes::Bytes;
use http::{HeaderValue, header};
use serde_json::{Map, Value};
use tracing::warn;

use super::state::TrackedSession;
use crate::audit::ConnectionIdentity;
use crate::proxy::transport::body::Body;
use crate::proxy::transport::body::{Held, full};
use crate::snowflake::{self, ContentEncoding, TagChange};
use crate::sync::lock;

/// A new session's id and its correlation id: the exec run's id when the connection's process
/// belongs to one, else the session's own id.
pub(super) fn new_session_ids(base: &ConnectionIdentity) -> (String, String) {
    let id = uuid::Uuid::now_v7().to_string();
    let correlation = base.correlation_id.clone().unwrap_or_else(|| id.clone());
    (id, correlation)
}

/// The agent's part of the tag: what joins a Snowflake query to the audit.
fn agent_part(
    base: &ConnectionIdentity,
    correlation_id: Option<&str>,
    session_id: Option<&str>,
) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    };
    put("correlation_id", correlation_id);
    put("session_id", session_id);
    put("identity", base.workload_identity.as_deref());
    put("host", Some(base.host.as_str()));
    m
}

/// The login body to send: with the agent's tag in `SESSION_PARAMETERS`, or as it came.
pub(super) fn login_body(
    parts: &mut http::request::Parts,
    raw: Held,
    decoded: &[u8],
    base: &ConnectionIdentity,
    correlation_id: &str,
    session_id: &str,
) -> Body {
    let agent = agent_part(base, Some(correlation_id), Some(session_id));
    match snowflake::set_login_query_tag(decoded, &agent) {
        Ok((body, _)) => reencode(parts, body).unwrap_or_else(|| raw.into_body()),
        Err(e) => {
            warn!(error = %e, "login sent without the agent's QUERY_TAG");
            raw.into_body()
        }
    }
}

/// A brokered login's body (the broker's rewrite of the workload's) with the agent's tag in
/// `SESSION_PARAMETERS`; `None` when it cannot be encoded as the original was. Never falls back
/// to the workload's own body: that one carries the workload's placeholder credentials.
pub(super) fn brokered_login_body(
    parts: &mut http::request::Parts,
    body: Vec<u8>,
    base: &ConnectionIdentity,
    correlation_id: &str,
    session_id: &str,
) -> Option<Body> {
    let agent = agent_part(base, Some(correlation_id), Some(session_id));
    let body = match snowflake::set_login_query_tag(&body, &agent) {
        Ok((tagged, _)) => tagged,
        Err(e) => {
            warn!(error = %e, "login sent without the agent's QUERY_TAG");
            body
        }
    };
    reencode(parts, body)
}

/// What a statement's tag is made of: the agent's part (its session's correlation, else the
/// connection's) and the session's own tag, if it set one.
fn statement_tags(
    session: Option<&TrackedSession>,
    base: &ConnectionIdentity,
) -> (Map<String, Value>, Option<String>) {
    let correlation = session
        .map(|s| s.correlation_id.clone())
        .or_else(|| base.correlation_id.clone());
    let agent = agent_part(base, correlation.as_deref(), session.map(|s| s.id.as_str()));
    let session_tag = session.and_then(|s| lock(&s.context).query_tag.clone());
    (agent, session_tag)
}

/// The query body to send: with the agent's tag merged into `parameters.QUERY_TAG`.
pub(super) fn query_body(
    parts: &mut http::request::Parts,
    raw: Held,
    decoded: &[u8],
    session: Option<&TrackedSession>,
    base: &ConnectionIdentity,
) -> Body {
    let (agent, session_tag) = statement_tags(session, base);
    match snowflake::set_query_tag(decoded, session_tag.as_deref(), &agent) {
        Ok((body, _)) => reencode(parts, body).unwrap_or_else(|| raw.into_body()),
        Err(e) => {
            warn!(error = %e, "statement sent without the agent's QUERY_TAG");
            raw.into_body()
        }
    }
}

/// A SQL API statement's body to send: decoded (the agent forwards it identity-encoded), with
/// the agent's tag merged into `parameters.query_tag`; as received when that cannot be done.
pub(super) fn sql_api_body(
    parts: &mut http::request::Parts,
    decoded: Vec<u8>,
    session: Option<&TrackedSession>,
    base: &ConnectionIdentity,
) -> Body {
    let (agent, session_tag) = statement_tags(session, base);
    let body = match snowflake::sql_api::set_query_tag(&decoded, session_tag.as_deref(), &agent) {
        Ok((body, _)) => body,
        Err(e) => {
            warn!(error = %e, "SQL API statement sent without the agent's QUERY_TAG");
            decoded
        }
    };
    parts.headers.remove(header::CONTENT_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    full(Bytes::from(body))
}

/// Records a completed statement's change to its session's tag.
pub(super) fn note_statement(session: Option<&TrackedSession>, sql: &str) {
    let Some(s) = session else { return };
    let Some(change) = snowflake::session_tag_change(sql) else {
        return;
    };
    lock(&s.context).query_tag = match change {
        TagChange::Set(t) => Some(t).filter(|t| !t.is_empty()),
        TagChange::Unset => None,
    };
}

/// Encodes a rewritten body the way the original was (identity or gzip) and fixes the length
/// headers; `None` when the original's encoding cannot be told (then it goes on unchanged).
pub(super) fn reencode(parts: &mut http::request::Parts, body: Vec<u8>) -> Option<Body> {
    let encoding = ContentEncoding::from_header(
        parts
            .headers
            .get(header::CONTENT_ENCODING)
            .map(HeaderValue::as_bytes),
    )
    .ok()?;
    let bytes = match encoding {
        ContentEncoding::Gzip => snowflake::gzip(&body),
        _ => body,
    };
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Some(full(Bytes::from(bytes)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::{Event, EventKind};
    use http_body_util::BodyExt as _;

    fn base() -> ConnectionIdentity {
        let mut e = Event::new(EventKind::Connection, std::time::SystemTime::now(), "h1");
        e.workload_identity = Some("etl".into());
        e.correlation_id = Some("run-1".into());
        ConnectionIdentity::of(&e)
    }

    #[tokio::test]
    async fn gzip_bodies_stay_gzip_with_their_length() {
        let body = br#"{"sqlText":"select 1","parameters":{"QUERY_TAG":"mine"}}"#;
        let req = http::Request::builder()
            .header(header::CONTENT_ENCODING, "gzip")
            .header(header::CONTENT_LENGTH, "1")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        let budget = crate::proxy::transport::body::Budget::new(1 << 20);
        let held = match crate::proxy::transport::body::collect(
            full(Bytes::from(snowflake::gzip(body))),
            1 << 20,
            &budget,
        )
        .await
        {
            crate::proxy::transport::body::Collected::Whole(h) => h,
            _ => panic!("not collected"),
        };
        let out = query_body(&mut parts, held, body, None, &base());
        let sent = out.collect().await.unwrap().to_bytes();
        assert_eq!(
            parts.headers[header::CONTENT_LENGTH],
            sent.len().to_string().as_str()
        );
        let plain = snowflake::decode_with_headers(&parts.headers, &sent, 1 << 20).unwrap();
        let q = snowflake::parse_query_request(&plain).unwrap();
        let tag: Value = serde_json::from_str(q.query_tag().unwrap()).unwrap();
        assert_eq!(tag["app"], "mine");
        assert_eq!(tag["snowtrail"]["correlation_id"], "run-1");
        assert_eq!(tag["snowtrail"]["identity"], "etl");
        assert_eq!(tag["snowtrail"]["host"], "h1");
    }

    #[test]
    fn session_tags_follow_alter_session() {
        let s = TrackedSession {
            id: "s".into(),
            correlation_id: "c".into(),
            ..TrackedSession::default()
        };
        let tag = || s.context.lock().unwrap().query_tag.clone();
        note_statement(Some(&s), "alter session set query_tag = 'nightly'");
        assert_eq!(tag().as_deref(), Some("nightly"));
        note_statement(Some(&s), "select 1");
        assert_eq!(tag().as_deref(), Some("nightly"));
        note_statement(Some(&s), "alter session unset query_tag");
        assert_eq!(tag(), None);
        let (id, corr) = new_session_ids(&base());
        assert_eq!(corr, "run-1");
        let mut b = base();
        b.correlation_id = None;
        let (id2, corr2) = new_session_ids(&b);
        assert_eq!(id2, corr2);
        assert_ne!(id, id2);
    }
}
