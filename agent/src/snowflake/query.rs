//! `POST /queries/v1/query-request`: the statement a driver submits, and the agent's QUERY_TAG.
//!
//! Bind values are counted, not kept (array binds are counted per row too); the SQL text is kept
//! whole because policy reads it, but `Debug` prints it redacted ([`super::redact`]).
//! [`set_query_tag`] writes the agent's tag into `parameters.QUERY_TAG` as docs/decisions.md §15 says and
//! leaves every other field of the body as it was.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{ParseError, RewriteError};
use super::json::{self, BindShape, RawObject, UniqueMap};
use super::redact::{RedactMode, redact_sql};

const REQUEST: &str = "query request";

/// Snowflake's limit on QUERY_TAG, in characters.
pub const QUERY_TAG_MAX_CHARS: usize = 2000;

/// What the `bindings` object held, without the values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindSummary {
    /// Number of bind variables (keys of `bindings`).
    pub count: usize,
    /// For an array bind (values are lists, one entry per row): the longest list's length.
    pub rows: Option<u64>,
    /// Bind types as sent (`FIXED`, `TEXT`, ...), by position.
    pub types: Vec<String>,
}

/// A parsed query request.
#[derive(Clone, PartialEq)]
pub struct QueryRequest {
    /// `sqlText`, as sent (may carry credentials: redact it before it reaches the audit).
    pub sql_text: String,
    /// `asyncExec`: the driver wants the query id back at once (`333334`).
    pub async_exec: bool,
    /// `sequenceId` (increments per connection in 4.x, always 1 in 5.x, absent in Node).
    pub sequence_id: Option<u64>,
    /// `describeOnly`: metadata only, nothing executes (docs/decisions.md §10: its own event, flagged).
    pub describe_only: bool,
    /// `isInternal`.
    pub is_internal: bool,
    /// `querySubmissionTime`, milliseconds since the epoch by the client's clock.
    pub query_submission_time: Option<i64>,
    /// `parameters` (per-statement settings such as QUERY_TAG and MULTI_STATEMENT_COUNT).
    pub parameters: Map<String, Value>,
    /// `bindings`, summarised; `None` when absent or null.
    pub bindings: Option<BindSummary>,
    /// `bindStage`: binds were uploaded to this stage instead of sent inline.
    pub bind_stage: Option<String>,
}

impl QueryRequest {
    /// `parameters.QUERY_TAG`, when it is a string.
    pub fn query_tag(&self) -> Option<&str> {
        self.parameters.get("QUERY_TAG").and_then(Value::as_str)
    }

    /// `parameters.MULTI_STATEMENT_COUNT` (a number, or a numeric string as some drivers send);
    /// 0 means "any number of statements".
    pub fn multi_statement_count(&self) -> Option<u64> {
        match self.parameters.get("MULTI_STATEMENT_COUNT")? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

impl std::fmt::Debug for QueryRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryRequest")
            .field(
                "sql_text",
                &redact_sql(&self.sql_text, RedactMode::Credentials),
            )
            .field("async_exec", &self.async_exec)
            .field("sequence_id", &self.sequence_id)
            .field("describe_only", &self.describe_only)
            .field("is_internal", &self.is_internal)
            .field("query_submission_time", &self.query_submission_time)
            .field("parameters", &self.parameters)
            .field("bindings", &self.bindings)
            .field("bind_stage", &self.bind_stage)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireQueryRequest {
    sql_text: Option<String>,
    async_exec: Option<bool>,
    sequence_id: Option<u64>,
    describe_only: Option<bool>,
    is_internal: Option<bool>,
    query_submission_time: Option<i64>,
    parameters: Option<UniqueMap<Value>>,
    bindings: Option<UniqueMap<WireBind>>,
    bind_stage: Option<String>,
}

#[derive(Deserialize)]
struct WireBind {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<BindShape>,
}

/// Parses a (decoded) query request body.
pub fn parse_query_request(body: &[u8]) -> Result<QueryRequest, ParseError> {
    let w: WireQueryRequest = json::from_slice(REQUEST, body)?;
    let sql_text = w.sql_text.ok_or(ParseError::MissingField {
        what: REQUEST,
        field: "sqlText",
    })?;
    let bindings = w.bindings.map(|UniqueMap(mut entries)| {
        // Keys are positions ("1", "2", ... "10"): order them as numbers.
        entries.sort_by_key(|(k, _)| (k.parse::<u64>().unwrap_or(u64::MAX), k.clone()));
        let rows = entries
            .iter()
            .filter_map(|(_, v)| match v.value {
                Some(BindShape::Array(n)) => Some(n),
                _ => None,
            })
            .max();
        BindSummary {
            count: entries.len(),
            rows,
            types: entries
                .iter()
                .map(|(_, v)| v.kind.clone().unwrap_or_default())
                .collect(),
        }
    });
    Ok(QueryRequest {
        sql_text,
        async_exec: w.async_exec.unwrap_or(false),
        sequence_id: w.sequence_id,
        describe_only: w.describe_only.unwrap_or(false),
        is_internal: w.is_internal.unwrap_or(false),
        query_submission_time: w.query_submission_time,
        parameters: w.parameters.map(UniqueMap::into_map).unwrap_or_default(),
        bindings,
        bind_stage: w.bind_stage,
    })
}

/// Builds the QUERY_TAG to send (docs/decisions.md §15): the agent's keys under `"snowtrail"`, merged into
/// the workload's tag when that is a JSON object, else the workload's tag kept as `"app"`; at most
/// [`QUERY_TAG_MAX_CHARS`] characters, shortening the workload's string values first.
///
/// `workload_tag` is the statement's own tag or, without one, the session's. A workload object's
/// own `"snowtrail"` key is replaced, so a workload cannot speak for the agent. Fails only when
/// the agent's part alone is over the limit.
pub fn merge_query_tag(
    workload_tag: Option<&str>,
    agent: &Map<String, Value>,
) -> Result<String, RewriteError> {
    let agent_value = Value::Object(agent.clone());
    let minimal = tag_text(&[("snowtrail", &agent_value)]);
    if char_len(&minimal) > QUERY_TAG_MAX_CHARS {
        return Err(RewriteError::TagTooLong {
            limit: QUERY_TAG_MAX_CHARS,
            agent_chars: char_len(&minimal),
        });
    }
    let Some(tag) = workload_tag.filter(|t| !t.is_empty()) else {
        return Ok(minimal);
    };
    if let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(tag) {
        obj.insert("snowtrail".to_owned(), agent_value.clone());
        if let Some(text) = fit_object(obj) {
            return Ok(text);
        }
    }
    Ok(fit_app(tag, &agent_value))
}

/// Serialises `{key: value, ...}` in the order given.
fn tag_text(entries: &[(&str, &Value)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&Value::String((*k).to_owned()).to_string());
        s.push(':');
        s.push_str(&v.to_string());
    }
    s.push('}');
    s
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// Characters `c` takes once JSON-escaped by serde_json.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{08}' | '\u{0c}' => 2,
        c if (c as u32) < 0x20 => 6,
        _ => 1,
    }
}

/// The longest prefix of `s` whose escaped form fits in `budget` characters.
fn truncate_escaped(s: &str, budget: usize) -> &str {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += escaped_len(c);
        if used > budget {
            return &s[..i];
        }
    }
    s
}

const ELLIPSIS: char = '…';

/// The workload's tag as `{"app": "<tag, shortened>", "snowtrail": {...}}`.
fn fit_app(tag: &str, agent: &Value) -> String {
    let full = tag_text(&[
        ("app", &Value::String(tag.to_owned())),
        ("snowtrail", agent),
    ]);
    if char_len(&full) <= QUERY_TAG_MAX_CHARS {
        return full;
    }
    let overhead = char_len(&tag_text(&[
        ("app", &Value::String(String::new())),
        ("snowtrail", agent),
    ]));
    // The caller checked that the agent's part fits with an empty workload part.
    let budget = QUERY_TAG_MAX_CHARS.saturating_sub(overhead + 1);
    let mut short = truncate_escaped(tag, budget).to_owned();
    short.push(ELLIPSIS);
    let text = tag_text(&[("app", &Value::String(short)), ("snowtrail", agent)]);
    if char_len(&text) <= QUERY_TAG_MAX_CHARS {
        text
    } else {
        tag_text(&[("app", &Value::String(String::new())), ("snowtrail", agent)])
    }
}

/// Shortens the workload's longest string values until the object fits; `None` when strings
/// alone cannot make it fit (the caller falls back to the `app` form).
fn fit_object(mut obj: Map<String, Value>) -> Option<String> {
    loop {
        let text = Value::Object(obj.clone()).to_string();
        let len = char_len(&text);
        if len <= QUERY_TAG_MAX_CHARS {
            return Some(text);
        }
        let over = len - QUERY_TAG_MAX_CHARS;
        let (key, current) = obj
            .iter()
            .filter(|(k, _)| k.as_str() != "snowtrail")
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
            .filter(|(_, s)| !s.is_empty())
            .max_by_key(|(_, s)| s.chars().map(escaped_len).sum::<usize>())?;
        let escaped: usize = current.chars().map(escaped_len).sum();
        // Cut what is over, plus room for the ellipsis.
        let keep = escaped.saturating_sub(over + 1);
        let mut short = truncate_escaped(&current, keep).to_owned();
        if short.is_empty() {
            obj.insert(key, Value::String(String::new()));
        } else {
            short.push(ELLIPSIS);
            obj.insert(key, Value::String(short));
        }
    }
}

/// Writes the merged QUERY_TAG (see [`merge_query_tag`]) into `parameters.QUERY_TAG` of a query
/// request body and re-serialises it; every other field is kept (untouched values byte for
/// byte). `session_tag` is the session's current tag, used when the statement has none.
/// Returns the new body and the tag written.
pub fn set_query_tag(
    body: &[u8],
    session_tag: Option<&str>,
    agent: &Map<String, Value>,
) -> Result<(Vec<u8>, String), RewriteError> {
    // The whole body must be a valid query request before anything is rewritten.
    let parsed = parse_query_request(body)?;
    let mut top = RawObject::parse(REQUEST, body)?;
    let params_text = match top.get("parameters") {
        Some(slot) if !json::is_null(slot.get()) => Some(slot.get().to_owned()),
        _ => None,
    };
    let statement_tag = parsed.query_tag().filter(|t| !t.is_empty());
    let tag = merge_query_tag(statement_tag.or(session_tag), agent)?;
    let params_bytes = match &params_text {
        Some(text) => {
            let mut params =
                RawObject::parse_str(REQUEST, text).map_err(|_| RewriteError::NotAnObject {
                    what: REQUEST,
                    field: "parameters",
                })?;
            params.set(REQUEST, "QUERY_TAG", &tag)?;
            params.to_vec(REQUEST)?
        }
        None => {
            let mut params = RawObject::default();
            params.set(REQUEST, "QUERY_TAG", &tag)?;
            params.to_vec(REQUEST)?
        }
    };
    let params_raw: &serde_json::value::RawValue = serde_json::from_slice(&params_bytes)
        .map_err(|_| RewriteError::Serialize { what: REQUEST })?;
    top.set(REQUEST, "parameters", params_raw)?;
    Ok((top.to_vec(REQUEST)?, tag))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent() -> Map<String, Value> {
        match json!({"id": "019a-corr", "identity": "etl", "host": "h1"}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn parses_the_captured_shapes() {
        let r = parse_query_request(
            br#"{"sqlText":"insert into cap values (?, ?)","asyncExec":false,"sequenceId":3,
            "querySubmissionTime":1795379222091,"isInternal":false,
            "bindings":{"1":{"type":"FIXED","value":"1"},"2":{"type":"TEXT","value":"one"}},
            "queryContextDTO":{}}"#,
        )
        .unwrap();
        assert_eq!(r.sql_text, "insert into cap values (?, ?)");
        assert_eq!(r.sequence_id, Some(3));
        assert_eq!(r.query_submission_time, Some(1_795_379_222_091));
        let b = r.bindings.unwrap();
        assert_eq!((b.count, b.rows), (2, None));
        assert_eq!(b.types, vec!["FIXED", "TEXT"]);

        let r = parse_query_request(
            br#"{"sqlText":"insert into t values (?)","bindings":{"1":{"type":"FIXED","value":["2","3","4"]}}}"#,
        )
        .unwrap();
        assert_eq!(r.bindings.unwrap().rows, Some(3));

        let r = parse_query_request(
            br#"{"sqlText":"select 1; select 2","asyncExec":true,"describeOnly":true,
            "parameters":{"QUERY_TAG":"per-statement-tag","MULTI_STATEMENT_COUNT":2},"bindStage":"SYSTEM$BIND/x"}"#,
        )
        .unwrap();
        assert!(r.async_exec && r.describe_only);
        assert_eq!(r.query_tag(), Some("per-statement-tag"));
        assert_eq!(r.multi_statement_count(), Some(2));
        assert_eq!(r.bind_stage.as_deref(), Some("SYSTEM$BIND/x"));
        assert_eq!(r.bindings, None);
    }

    #[test]
    fn refuses_ambiguous_or_incomplete_bodies() {
        assert!(matches!(
            parse_query_request(br#"{"asyncExec":false}"#),
            Err(ParseError::MissingField {
                field: "sqlText",
                ..
            })
        ));
        assert!(
            parse_query_request(br#"{"sqlText":"select 1","sqlText":"drop table t"}"#).is_err()
        );
        assert!(parse_query_request(br#"{"sqlText":"select 1"} {"sqlText":"x"}"#).is_err());
        assert!(parse_query_request(br#"{"sqlText":"select 1","asyncExec":"yes"}"#).is_err());
        let dup_param = br#"{"sqlText":"s","parameters":{"MULTI_STATEMENT_COUNT":1,"MULTI_STATEMENT_COUNT":0}}"#;
        assert!(parse_query_request(dup_param).is_err());
        let dup_bind = br#"{"sqlText":"s","bindings":{"1":{"type":"TEXT","value":"a"},"1":{"type":"TEXT","value":"b"}}}"#;
        assert!(parse_query_request(dup_bind).is_err());
    }

    #[test]
    fn debug_redacts_credentials() {
        let r =
            parse_query_request(br#"{"sqlText":"create user u password = 'Hunter2!'"}"#).unwrap();
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("Hunter2"), "{dbg}");
        assert!(dbg.contains("'***'"), "{dbg}");
    }

    #[test]
    fn tag_merge_forms() {
        let a = agent();
        let t = merge_query_tag(None, &a).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&t).unwrap(),
            json!({"snowtrail": a})
        );
        let t = merge_query_tag(Some("nightly-load"), &a).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&t).unwrap(),
            json!({"app": "nightly-load", "snowtrail": a})
        );
        let t = merge_query_tag(Some(r#"{"team":"data","job":7}"#), &a).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&t).unwrap(),
            json!({"team": "data", "job": 7, "snowtrail": a})
        );
        // A workload claiming the agent's key does not keep it.
        let t = merge_query_tag(Some(r#"{"snowtrail":"forged"}"#), &a).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&t).unwrap(),
            json!({"snowtrail": a})
        );
        // JSON that is not an object is kept as text.
        let t = merge_query_tag(Some("[1,2]"), &a).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&t).unwrap()["app"], "[1,2]");
    }

    #[test]
    fn long_tags_are_shortened_inside_the_workload_string() {
        let a = agent();
        let long = "q\"\\\n".repeat(1000) + "é";
        let t = merge_query_tag(Some(&long), &a).unwrap();
        assert!(
            t.chars().count() <= QUERY_TAG_MAX_CHARS,
            "{}",
            t.chars().count()
        );
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["snowtrail"], Value::Object(a.clone()));
        let app = v["app"].as_str().unwrap();
        assert!(app.ends_with(ELLIPSIS));
        assert!(long.starts_with(app.trim_end_matches(ELLIPSIS)));
        assert!(
            t.chars().count() > QUERY_TAG_MAX_CHARS - 10,
            "too much was cut"
        );

        let obj = json!({"team": "x".repeat(3000), "note": "y".repeat(500), "n": 1}).to_string();
        let t = merge_query_tag(Some(&obj), &a).unwrap();
        assert!(t.chars().count() <= QUERY_TAG_MAX_CHARS);
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["n"], 1);
        assert_eq!(v["note"], "y".repeat(500));
        assert!(v["team"].as_str().unwrap().starts_with("xxx"));

        // An object too big for its strings alone falls back to the "app" form.
        let nums = Value::Array((0..1000).map(Value::from).collect()).to_string();
        let obj = format!(r#"{{"ids":{nums}}}"#);
        let t = merge_query_tag(Some(&obj), &a).unwrap();
        assert!(t.chars().count() <= QUERY_TAG_MAX_CHARS);
        assert!(serde_json::from_str::<Value>(&t).unwrap()["app"].is_string());

        let mut huge = Map::new();
        huge.insert("x".into(), Value::String("z".repeat(2100)));
        assert!(matches!(
            merge_query_tag(Some("a"), &huge),
            Err(RewriteError::TagTooLong { .. })
        ));
    }

    #[test]
    fn set_tag_keeps_the_rest_of_the_body() {
        let body = br#"{"sqlText":"select count(*) from cap","asyncExec":false,"sequenceId":1,"parameters":{"QUERY_TAG":"per-statement-tag","OTHER":5},"bindings":{"1":{"type":"FIXED","value":"1"}},"queryContextDTO":{"entries":[]}}"#;
        let (out, tag) = set_query_tag(body, Some("session-tag"), &agent()).unwrap();
        let before: Value = serde_json::from_slice(body).unwrap();
        let mut after: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(after["parameters"]["QUERY_TAG"], Value::String(tag.clone()));
        assert_eq!(
            serde_json::from_str::<Value>(&tag).unwrap()["app"],
            "per-statement-tag"
        );
        after["parameters"]["QUERY_TAG"] = before["parameters"]["QUERY_TAG"].clone();
        assert_eq!(after, before);
        assert_eq!(
            parse_query_request(&out).unwrap().query_tag(),
            Some(tag.as_str())
        );

        // No parameters: added; the session's tag is the workload's.
        let (out, tag) =
            set_query_tag(br#"{"sqlText":"select 1"}"#, Some("session-tag"), &agent()).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&tag).unwrap()["app"],
            "session-tag"
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["parameters"]["QUERY_TAG"], Value::String(tag));
        assert_eq!(v["sqlText"], "select 1");

        // Empty and null parameters.
        for body in [
            &br#"{"sqlText":"s","parameters":{}}"#[..],
            br#"{"sqlText":"s","parameters":null}"#,
        ] {
            let (out, _) = set_query_tag(body, None, &agent()).unwrap();
            assert!(parse_query_request(&out).unwrap().query_tag().is_some());
        }
        assert!(matches!(
            set_query_tag(br#"{"sqlText":"s","parameters":[1]}"#, None, &agent()),
            Err(RewriteError::Parse(_))
        ));
    }
}
