//! QUERY_TAG beyond a single statement: the login's `SESSION_PARAMETERS.QUERY_TAG`, and the
//! `ALTER SESSION SET/UNSET QUERY_TAG` statements that change a session's tag (docs/decisions.md §15).
//!
//! The merge itself ([`super::merge_query_tag`]) and the per-statement rewrite
//! ([`super::set_query_tag`]) are in `query`. No I/O.

use serde_json::{Map, Value};

use super::error::RewriteError;
use super::json::{self, RawObject};
use super::query::merge_query_tag;

const LOGIN: &str = "login request";

/// Writes the merged QUERY_TAG into `data.SESSION_PARAMETERS.QUERY_TAG` of a (decoded) login
/// request body, merging with the tag the workload set there, and re-serialises it; every other
/// field is kept. Returns the new body and the tag written.
pub fn set_login_query_tag(
    body: &[u8],
    agent: &Map<String, Value>,
) -> Result<(Vec<u8>, String), RewriteError> {
    // The whole body must be a valid login request before anything is rewritten.
    let parsed = super::parse_login_request(body)?;
    let mut tag = String::new();
    let out = json::edit_member(LOGIN, body, "data", |data| {
        let params_text = match data.get("SESSION_PARAMETERS") {
            Some(slot) if !json::is_null(slot.get()) => Some(slot.get().to_owned()),
            _ => None,
        };
        tag = merge_query_tag(parsed.query_tag.as_deref().filter(|t| !t.is_empty()), agent)?;
        let mut params = match &params_text {
            Some(text) => {
                RawObject::parse_str(LOGIN, text).map_err(|_| RewriteError::NotAnObject {
                    what: LOGIN,
                    field: "SESSION_PARAMETERS",
                })?
            }
            None => RawObject::default(),
        };
        params.set(LOGIN, "QUERY_TAG", &tag)?;
        data.set(LOGIN, "SESSION_PARAMETERS", &params)
    })?;
    Ok((out, tag))
}

/// What a statement does to its session's QUERY_TAG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagChange {
    /// `ALTER SESSION SET QUERY_TAG = '<tag>'`.
    Set(String),
    /// `ALTER SESSION UNSET QUERY_TAG`.
    Unset,
}

/// Reads `ALTER SESSION SET ... QUERY_TAG = '...' ...` and `ALTER SESSION UNSET ... QUERY_TAG`
/// out of a statement's SQL; `None` for anything else (including a multi-statement text, whose
/// statements are read one by one by the caller if it wants).
pub fn session_tag_change(sql: &str) -> Option<TagChange> {
    let mut t = Tokens { rest: sql };
    if !t.keyword("ALTER") || !t.keyword("SESSION") {
        return None;
    }
    if t.keyword("UNSET") {
        loop {
            let name = t.word()?;
            if name.eq_ignore_ascii_case("QUERY_TAG") {
                return Some(TagChange::Unset);
            }
            if !t.punct(',') {
                return None;
            }
        }
    }
    if !t.keyword("SET") {
        return None;
    }
    loop {
        let name = t.word()?;
        t.punct('=');
        let value = t.value()?;
        if name.eq_ignore_ascii_case("QUERY_TAG") {
            return value.map(TagChange::Set);
        }
        t.punct(',');
        if t.at_end() {
            return None;
        }
    }
}

/// A tiny SQL scanner: words, `=`/`,`, string literals, comments skipped.
struct Tokens<'a> {
    rest: &'a str,
}

impl<'a> Tokens<'a> {
    fn skip_space(&mut self) {
        loop {
            self.rest = self.rest.trim_start();
            if let Some(r) = self
                .rest
                .strip_prefix("--")
                .or_else(|| self.rest.strip_prefix("//"))
            {
                self.rest = r.find('\n').map_or("", |i| &r[i + 1..]);
            } else if let Some(r) = self.rest.strip_prefix("/*") {
                self.rest = r.find("*/").map_or("", |i| &r[i + 2..]);
            } else {
                return;
            }
        }
    }

    fn at_end(&mut self) -> bool {
        self.skip_space();
        self.rest.is_empty() || self.rest.starts_with(';')
    }

    fn word(&mut self) -> Option<&'a str> {
        self.skip_space();
        let end = self
            .rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (w, r) = self.rest.split_at(end);
        self.rest = r;
        Some(w)
    }

    fn keyword(&mut self, kw: &str) -> bool {
        let saved = self.rest;
        match self.word() {
            Some(w) if w.eq_ignore_ascii_case(kw) => true,
            _ => {
                self.rest = saved;
                false
            }
        }
    }

    fn punct(&mut self, c: char) -> bool {
        self.skip_space();
        match self.rest.strip_prefix(c) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    /// A parameter value: `Some(Some(text))` for a string literal, `Some(None)` for another
    /// token (a number, TRUE, an identifier), `None` when nothing parses.
    fn value(&mut self) -> Option<Option<String>> {
        self.skip_space();
        if let Some(r) = self.rest.strip_prefix("$$") {
            let end = r.find("$$")?;
            self.rest = &r[end + 2..];
            return Some(Some(r[..end].to_owned()));
        }
        if let Some(r) = self.rest.strip_prefix('\'') {
            let mut out = String::new();
            let mut chars = r.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\'' if r[i + 1..].starts_with('\'') => {
                        out.push('\'');
                        chars.next();
                    }
                    '\'' => {
                        self.rest = &r[i + 1..];
                        return Some(Some(out));
                    }
                    '\\' => match chars.next()?.1 {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        other => out.push(other),
                    },
                    c => out.push(c),
                }
            }
            return None;
        }
        self.word().map(|_| None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent() -> Map<String, Value> {
        match json!({"correlation_id": "019a", "identity": "etl", "host": "h1"}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn login_tag_is_merged_and_the_rest_kept() {
        let body = br#"{"data":{"ACCOUNT_NAME":"acct","LOGIN_NAME":"u","PASSWORD":"pw","SESSION_PARAMETERS":{"QUERY_TAG":"{\"team\":\"data\"}","CLIENT_RUNTIME_NAME":"CPython"},"CLIENT_APP_ID":"PythonConnector"}}"#;
        let (out, tag) = set_login_query_tag(body, &agent()).unwrap();
        let before: Value = serde_json::from_slice(body).unwrap();
        let mut after: Value = serde_json::from_slice(&out).unwrap();
        let t: Value = serde_json::from_str(&tag).unwrap();
        assert_eq!(t, json!({"team": "data", "snowtrail": agent()}));
        assert_eq!(
            after["data"]["SESSION_PARAMETERS"]["QUERY_TAG"],
            Value::String(tag)
        );
        after["data"]["SESSION_PARAMETERS"]["QUERY_TAG"] =
            before["data"]["SESSION_PARAMETERS"]["QUERY_TAG"].clone();
        assert_eq!(after, before);

        // No SESSION_PARAMETERS (or null): added with the agent's tag alone.
        for body in [
            &br#"{"data":{"ACCOUNT_NAME":"a","LOGIN_NAME":"u"}}"#[..],
            br#"{"data":{"ACCOUNT_NAME":"a","SESSION_PARAMETERS":null}}"#,
        ] {
            let (out, tag) = set_login_query_tag(body, &agent()).unwrap();
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                v["data"]["SESSION_PARAMETERS"]["QUERY_TAG"],
                Value::String(tag.clone())
            );
            assert_eq!(
                serde_json::from_str::<Value>(&tag).unwrap(),
                json!({"snowtrail": agent()})
            );
            assert_eq!(v["data"]["ACCOUNT_NAME"], "a");
        }
        assert!(set_login_query_tag(br#"{"nodata":1}"#, &agent()).is_err());
        assert!(set_login_query_tag(br#"{"data":{"SESSION_PARAMETERS":[1]}}"#, &agent()).is_err());
    }

    #[test]
    fn alter_session_changes_are_read() {
        let set = |s: &str| Some(TagChange::Set(s.to_owned()));
        assert_eq!(
            session_tag_change("alter session set query_tag = 'nightly'"),
            set("nightly")
        );
        assert_eq!(
            session_tag_change("ALTER SESSION SET QUERY_TAG='it''s'"),
            set("it's")
        );
        assert_eq!(
            session_tag_change(
                "  -- c\n ALTER /* x */ SESSION SET TIMEZONE = 'UTC', QUERY_TAG = $${\"a\":1}$$;"
            ),
            set("{\"a\":1}")
        );
        assert_eq!(
            session_tag_change("alter session set AUTOCOMMIT = false QUERY_TAG = 'a\\'b'"),
            set("a'b")
        );
        assert_eq!(
            session_tag_change("alter session unset query_tag"),
            Some(TagChange::Unset)
        );
        assert_eq!(
            session_tag_change("alter session unset timezone, query_tag"),
            Some(TagChange::Unset)
        );
        assert_eq!(
            session_tag_change("alter session set timezone = 'UTC'"),
            None
        );
        assert_eq!(session_tag_change("alter session unset timezone"), None);
        assert_eq!(
            session_tag_change("select 'alter session set query_tag = 1'"),
            None
        );
        assert_eq!(session_tag_change("alter user set query_tag = 'x'"), None);
        assert_eq!(
            session_tag_change("alter session set query_tag = 'unterminated"),
            None
        );
    }
}
