//! Snowflake's SQL API (`/api/v2/statements`, docs/protocol.md "SQL API"): a statement submitted
//! as JSON with any credential Snowflake takes (a session token, a key-pair JWT, OAuth, a
//! programmatic access token), its answer, and the handle by which its status, its result
//! partitions and its cancellation are asked for later.
//!
//! Pure parsing: bytes in, typed values out. The SQL text is kept whole because policy reads it;
//! `Debug` prints it redacted. Result rows are read only to shape them ([`shape_answer`],
//! [`shape_partition`]: masking and row limits, as for a driver's result); otherwise only what the
//! audit records of them (their count, the partitions, the handle).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{ParseError, RewriteError};
use super::json::{self, RawObject, UniqueMap};
use super::redact::{RedactMode, redact_sql};
use super::shaping::{LimitMode, MaskedColumn, Shape, ShapeError, mask_row, masked_columns};

const REQUEST: &str = "SQL API request";
const RESPONSE: &str = "SQL API response";

/// `code` of a statement that completed.
pub const CODE_SUCCESS: &str = "090001";
/// `code` of a statement still running (HTTP 202).
pub const CODE_IN_PROGRESS: &str = "333334";

/// A statement submitted to `POST /api/v2/statements`.
#[derive(Clone, PartialEq)]
pub struct StatementRequest {
    /// `statement`, as sent (may carry credentials: redact it before it reaches the audit).
    pub statement: String,
    /// `database`, when set.
    pub database: Option<String>,
    /// `schema`, when set.
    pub schema: Option<String>,
    /// `warehouse`, when set.
    pub warehouse: Option<String>,
    /// `role`, when set.
    pub role: Option<String>,
    /// Number of bind variables (keys of `bindings`).
    pub bind_count: usize,
    /// `parameters.query_tag` (any case), when a string.
    pub query_tag: Option<String>,
    /// `parameters.multi_statement_count` (any case): 0 means any number.
    pub multi_statement_count: Option<u64>,
}

impl std::fmt::Debug for StatementRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatementRequest")
            .field(
                "statement",
                &redact_sql(&self.statement, RedactMode::Credentials),
            )
            .field("database", &self.database)
            .field("schema", &self.schema)
            .field("warehouse", &self.warehouse)
            .field("role", &self.role)
            .field("bind_count", &self.bind_count)
            .field("query_tag", &self.query_tag)
            .field("multi_statement_count", &self.multi_statement_count)
            .finish()
    }
}

#[derive(Deserialize)]
struct WireRequest {
    statement: Option<String>,
    database: Option<String>,
    schema: Option<String>,
    warehouse: Option<String>,
    role: Option<String>,
    bindings: Option<UniqueMap<Value>>,
    parameters: Option<UniqueMap<Value>>,
}

/// Parses a (decoded) `POST /api/v2/statements` body.
pub fn parse_statement_request(body: &[u8]) -> Result<StatementRequest, ParseError> {
    let w: WireRequest = json::from_slice(REQUEST, body)?;
    let statement = w.statement.ok_or(ParseError::MissingField {
        what: REQUEST,
        field: "statement",
    })?;
    let parameters = w.parameters.map(|m| m.0).unwrap_or_default();
    let param = |name: &str| {
        parameters
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let multi_statement_count = param("multi_statement_count").and_then(|v| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(StatementRequest {
        statement,
        database: nonempty(w.database),
        schema: nonempty(w.schema),
        warehouse: nonempty(w.warehouse),
        role: nonempty(w.role),
        bind_count: w.bindings.map_or(0, |b| b.0.len()),
        query_tag: param("query_tag")
            .and_then(Value::as_str)
            .map(str::to_owned),
        multi_statement_count,
    })
}

/// The request body with the agent's tag merged into `parameters.query_tag` as for a driver's
/// statement (docs/decisions.md §15): the statement's own tag, else the session's, kept beside
/// the agent's. Every other member stays as sent; a parameter spelt `QUERY_TAG` in another case
/// is replaced, not doubled. Also returns the tag written.
pub fn set_query_tag(
    body: &[u8],
    session_tag: Option<&str>,
    agent: &Map<String, Value>,
) -> Result<(Vec<u8>, String), RewriteError> {
    let parsed = parse_statement_request(body)?;
    let tag = super::query::merge_query_tag(
        parsed
            .query_tag
            .as_deref()
            .filter(|t| !t.is_empty())
            .or(session_tag),
        agent,
    )?;
    let mut top = RawObject::parse(REQUEST, body)?;
    let params_text = match top.get("parameters") {
        Some(slot) if !json::is_null(slot.get()) => Some(slot.get().to_owned()),
        _ => None,
    };
    let params_bytes = {
        let mut params = match &params_text {
            Some(text) => {
                RawObject::parse_str(REQUEST, text).map_err(|_| RewriteError::NotAnObject {
                    what: REQUEST,
                    field: "parameters",
                })?
            }
            None => RawObject::default(),
        };
        params.remove_where(|k| k.eq_ignore_ascii_case("query_tag"));
        params.set(REQUEST, "query_tag", &tag)?;
        params.to_vec(REQUEST)?
    };
    let params_raw: &serde_json::value::RawValue = serde_json::from_slice(&params_bytes)
        .map_err(|_| RewriteError::Serialize { what: REQUEST })?;
    top.set(REQUEST, "parameters", params_raw)?;
    Ok((top.to_vec(REQUEST)?, tag))
}

/// Where a statement stands, from an answer's HTTP status and `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementStatus {
    /// It completed (HTTP 200): the answer holds its result's first partition.
    Complete,
    /// It is still running (HTTP 202, `333334`): its handle is asked for its status later.
    InProgress,
    /// It failed (HTTP 422 and other errors naming the statement).
    Failed,
}

/// What the audit records of an answer of the SQL API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementResponse {
    /// Where the statement stands.
    pub status: StatementStatus,
    /// `code`: Snowflake's result or error code.
    pub code: Option<String>,
    /// `message`.
    pub message: Option<String>,
    /// `sqlState`.
    pub sql_state: Option<String>,
    /// `statementHandle`: the statement's query id.
    pub handle: Option<String>,
    /// `statementHandles`: the statements of a multi-statement request.
    pub handles: Vec<String>,
    /// `resultSetMetaData.numRows`: rows of the whole result.
    pub num_rows: Option<u64>,
    /// `resultSetMetaData.partitionInfo`: how many partitions the result has.
    pub partitions: usize,
    /// The columns' names (`resultSetMetaData.rowType[].name`), as a rule that shapes a
    /// result by column would read them.
    pub columns: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    code: Option<String>,
    message: Option<String>,
    sql_state: Option<String>,
    statement_handle: Option<String>,
    statement_handles: Option<Vec<String>>,
    result_set_meta_data: Option<WireMeta>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    num_rows: Option<u64>,
    partition_info: Option<Vec<Value>>,
    row_type: Option<Vec<WireColumn>>,
}

#[derive(Deserialize)]
struct WireColumn {
    name: Option<String>,
}

/// Parses a (decoded) answer of `POST /api/v2/statements` or `GET /api/v2/statements/<handle>`
/// given its HTTP status.
pub fn parse_statement_response(
    http_status: u16,
    body: &[u8],
) -> Result<StatementResponse, ParseError> {
    let w: WireResponse = json::from_slice(RESPONSE, body)?;
    let status = match (http_status, w.code.as_deref()) {
        (202, _) | (_, Some(CODE_IN_PROGRESS)) => StatementStatus::InProgress,
        (200, _) => StatementStatus::Complete,
        _ => StatementStatus::Failed,
    };
    let meta = w.result_set_meta_data;
    Ok(StatementResponse {
        status,
        code: w.code,
        message: w.message,
        sql_state: w.sql_state,
        handle: w.statement_handle,
        handles: w.statement_handles.unwrap_or_default(),
        num_rows: meta.as_ref().and_then(|m| m.num_rows),
        partitions: meta
            .as_ref()
            .and_then(|m| m.partition_info.as_ref())
            .map_or(0, Vec::len),
        columns: meta
            .and_then(|m| m.row_type)
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.name.unwrap_or_default())
            .collect(),
    })
}

/// The answer to a refused statement, as the SQL API's own (HTTP 422): `code`, `message`,
/// The answer to a cancellation, as the API gives it: the agent answers it for a statement held
/// for approval, which never reached Snowflake.
pub fn cancelled(handle: &str) -> super::Reply {
    super::Reply {
        status: http::StatusCode::OK,
        content_type: super::Reply::JSON,
        body: serde_json::json!({
            "code": "000604",
            "sqlState": "57014",
            "message": "SQL execution canceled",
            "statementHandle": handle,
            "statementStatusUrl": format!("/api/v2/statements/{handle}"),
        })
        .to_string()
        .into_bytes(),
    }
}

/// The answer for a statement still running, as the API gives it (HTTP 202): the agent answers
/// it for a statement held for approval, under the hold's handle, which the client polls.
pub fn in_progress(handle: &str) -> super::Reply {
    super::Reply {
        status: http::StatusCode::ACCEPTED,
        content_type: super::Reply::JSON,
        body: serde_json::json!({
            "code": CODE_IN_PROGRESS,
            "message": "Asynchronous execution in progress. Use provided query id to perform query monitoring and management.",
            "statementHandle": handle,
            "statementStatusUrl": format!("/api/v2/statements/{handle}"),
        })
        .to_string()
        .into_bytes(),
    }
}

/// `sqlState` and the handle the agent gave the refusal.
pub fn refused(code: &str, sql_state: &str, message: &str, handle: &str) -> super::Reply {
    super::Reply {
        status: http::StatusCode::UNPROCESSABLE_ENTITY,
        content_type: super::Reply::JSON,
        body: serde_json::json!({
            "code": code,
            "message": message,
            "sqlState": sql_state,
            "statementHandle": handle,
        })
        .to_string()
        .into_bytes(),
    }
}

/// How the later partitions of a shaped SQL API result are answered: their rows' masked cells, or
/// withheld altogether (a row limit kept the rows of the first only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionShape {
    /// The cells to mask in each row.
    pub columns: Vec<MaskedColumn>,
    /// No later partition may be handed out.
    pub withheld: bool,
}

/// A SQL API answer shaped by a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapedAnswer {
    /// The new body (`None` when nothing changed).
    pub body: Option<Vec<u8>>,
    /// How its later partitions are answered.
    pub partitions: PartitionShape,
    /// The rows kept, when a row limit dropped some.
    pub truncated: Option<u64>,
}

/// Shapes a SQL API answer (`resultSetMetaData.rowType`, `data`) by `shape`: masked cells in
/// every row of the first partition, a row limit over `numRows` (refused, or kept to the first
/// rows of the first partition, the others withheld). An answer without rows comes back
/// unchanged.
pub fn shape_answer(body: &[u8], shape: &Shape) -> Result<ShapedAnswer, ShapeError> {
    let mut root: Value = serde_json::from_slice(body).map_err(|_| ShapeError::Unreadable)?;
    let unchanged = ShapedAnswer {
        body: None,
        partitions: PartitionShape::default(),
        truncated: None,
    };
    let Some(meta) = root.get("resultSetMetaData").and_then(Value::as_object) else {
        return Ok(unchanged);
    };
    let rowtype = meta
        .get("rowType")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let columns = masked_columns(&rowtype, &shape.mask);
    // The rows the result has: what it says, and never fewer than it carries or its partitions
    // declare.
    let inline = root
        .get("data")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let declared: u64 = meta
        .get("partitionInfo")
        .and_then(Value::as_array)
        .map_or(0, |ps| {
            ps.iter()
                .filter_map(|p| p.get("rowCount").and_then(Value::as_u64))
                .fold(0u64, u64::saturating_add)
        });
    let total = meta
        .get("numRows")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .max(u64::try_from(inline).unwrap_or(u64::MAX))
        .max(declared);
    let mut keep = None;
    if let Some((limit, mode)) = shape.row_limit
        && total > limit
    {
        match mode {
            LimitMode::Refuse => return Err(ShapeError::TooManyRows { total, limit }),
            LimitMode::Truncate => keep = Some(usize::try_from(limit).unwrap_or(usize::MAX)),
        }
    }
    if columns.is_empty() && keep.is_none() {
        return Ok(unchanged);
    }
    let mut kept = 0;
    if let Some(rows) = root.get_mut("data").and_then(Value::as_array_mut) {
        if let Some(n) = keep {
            rows.truncate(n);
        }
        for r in rows.iter_mut() {
            mask_row(r, &columns);
        }
        kept = rows.len();
    }
    if keep.is_some()
        && let Some(meta) = root
            .get_mut("resultSetMetaData")
            .and_then(Value::as_object_mut)
    {
        meta.insert("numRows".into(), Value::from(kept));
        meta.insert(
            "partitionInfo".into(),
            serde_json::json!([{ "rowCount": kept }]),
        );
    }
    let body = serde_json::to_vec(&root).map_err(|_| ShapeError::Unreadable)?;
    Ok(ShapedAnswer {
        body: Some(body),
        partitions: PartitionShape {
            columns,
            withheld: keep.is_some(),
        },
        truncated: keep.map(|_| u64::try_from(kept).unwrap_or(u64::MAX)),
    })
}

/// Masks the rows of a later partition (`{"data": [...]}`) as the first partition's were.
pub fn shape_partition(body: &[u8], shape: &PartitionShape) -> Result<Vec<u8>, ShapeError> {
    let mut root: Value = serde_json::from_slice(body).map_err(|_| ShapeError::Unreadable)?;
    let rows = root
        .get_mut("data")
        .and_then(Value::as_array_mut)
        .ok_or(ShapeError::Unreadable)?;
    for r in rows.iter_mut() {
        mask_row(r, &shape.columns);
    }
    serde_json::to_vec(&root).map_err(|_| ShapeError::Unreadable)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_request_gives_its_statement_context_and_tag() {
        let body = br#"{"statement": "select * from t where id = ?", "timeout": 60,
            "database": "DB", "schema": "", "warehouse": "WH", "role": "R",
            "bindings": {"1": {"type": "FIXED", "value": "7"}},
            "parameters": {"QUERY_TAG": "nightly", "MULTI_STATEMENT_COUNT": "2"}}"#;
        let r = parse_statement_request(body).unwrap();
        assert_eq!(r.statement, "select * from t where id = ?");
        assert_eq!(r.database.as_deref(), Some("DB"));
        assert_eq!(r.schema, None);
        assert_eq!(r.warehouse.as_deref(), Some("WH"));
        assert_eq!(r.role.as_deref(), Some("R"));
        assert_eq!(r.bind_count, 1);
        assert_eq!(r.query_tag.as_deref(), Some("nightly"));
        assert_eq!(r.multi_statement_count, Some(2));
    }

    #[test]
    fn a_request_without_a_statement_or_with_a_repeated_key_is_refused() {
        assert!(parse_statement_request(br#"{"timeout": 60}"#).is_err());
        // A second "statement" must not hide the first from policy.
        assert!(
            parse_statement_request(br#"{"statement": "select 1", "statement": "drop table t"}"#)
                .is_err()
        );
        assert!(parse_statement_request(b"not json").is_err());
    }

    #[test]
    fn the_agents_tag_joins_the_statements_own_and_replaces_any_spelling() {
        let mut agent = Map::new();
        agent.insert("correlation_id".into(), Value::from("run-1"));
        let body = br#"{"statement": "select 1", "parameters": {"QUERY_TAG": "nightly", "TIMEZONE": "UTC"}}"#;
        let (out, tag) = set_query_tag(body, Some("session-tag"), &agent).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["statement"], "select 1");
        assert_eq!(v["parameters"]["TIMEZONE"], "UTC");
        assert!(v["parameters"].get("QUERY_TAG").is_none(), "{v}");
        assert_eq!(v["parameters"]["query_tag"], tag.as_str());
        let t: Value = serde_json::from_str(&tag).unwrap();
        assert_eq!(t["snowtrail"]["correlation_id"], "run-1");
        assert_eq!(t["app"], "nightly", "{t}");
        // Without parameters: added, with the session's tag.
        let (out, tag) = set_query_tag(br#"{"statement": "select 1"}"#, Some("s"), &agent).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["parameters"]["query_tag"], tag.as_str());
        assert!(tag.contains("run-1"));
        // Not a request: nothing is rewritten.
        assert!(set_query_tag(b"[1]", None, &agent).is_err());
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let r =
            parse_statement_request(br#"{"statement": "alter user u set password = 'hunter2'"}"#)
                .unwrap();
        assert!(!format!("{r:?}").contains("hunter2"));
    }

    #[test]
    fn answers_say_where_the_statement_stands() {
        let done = br#"{"resultSetMetaData": {"numRows": 3, "format": "jsonv2",
            "partitionInfo": [{"rowCount": 2}, {"rowCount": 1}],
            "rowType": [{"name": "ID", "type": "fixed"}, {"name": "EMAIL", "type": "text"}]},
            "data": [["1", "a"], ["2", "b"]], "code": "090001", "sqlState": "00000",
            "statementHandle": "01b2-h", "message": "Statement executed successfully."}"#;
        let r = parse_statement_response(200, done).unwrap();
        assert_eq!(r.status, StatementStatus::Complete);
        assert_eq!(r.handle.as_deref(), Some("01b2-h"));
        assert_eq!(r.num_rows, Some(3));
        assert_eq!(r.partitions, 2);
        assert_eq!(r.columns, ["ID", "EMAIL"]);
        let running = br#"{"code": "333334", "message": "Asynchronous execution in progress.",
            "statementHandle": "01b2-h", "statementStatusUrl": "/api/v2/statements/01b2-h"}"#;
        assert_eq!(
            parse_statement_response(202, running).unwrap().status,
            StatementStatus::InProgress
        );
        let failed = br#"{"code": "002003", "sqlState": "42S02",
            "message": "Object 'T' does not exist.", "statementHandle": "01b2-x"}"#;
        let f = parse_statement_response(422, failed).unwrap();
        assert_eq!(f.status, StatementStatus::Failed);
        assert_eq!(f.code.as_deref(), Some("002003"));
        assert_eq!(f.sql_state.as_deref(), Some("42S02"));
        let multi =
            br#"{"code": "090001", "statementHandles": ["h1", "h2"], "statementHandle": "h0"}"#;
        assert_eq!(
            parse_statement_response(200, multi).unwrap().handles,
            ["h1", "h2"]
        );
    }

    #[test]
    fn answers_and_partitions_are_masked_and_limited() {
        let done = br#"{"resultSetMetaData": {"numRows": 3, "format": "jsonv2",
            "partitionInfo": [{"rowCount": 2}, {"rowCount": 1}],
            "rowType": [{"name": "ID", "type": "fixed"}, {"name": "EMAIL", "type": "text"}]},
            "data": [["1", "a@x"], ["2", "b@x"]], "code": "090001", "statementHandle": "h"}"#;
        let mask = Shape {
            mask: vec!["email".into()],
            row_limit: None,
        };
        let s = shape_answer(done, &mask).unwrap();
        let v: Value = serde_json::from_slice(&s.body.unwrap()).unwrap();
        assert_eq!(v["data"], serde_json::json!([["1", "***"], ["2", "***"]]));
        assert_eq!(v["resultSetMetaData"]["numRows"], 3);
        assert!(!s.partitions.withheld);
        let later = shape_partition(br#"{"data": [["3", "c@x"]]}"#, &s.partitions).unwrap();
        let v: Value = serde_json::from_slice(&later).unwrap();
        assert_eq!(v["data"], serde_json::json!([["3", "***"]]));

        let refuse = Shape {
            mask: Vec::new(),
            row_limit: Some((2, LimitMode::Refuse)),
        };
        assert_eq!(
            shape_answer(done, &refuse).unwrap_err(),
            ShapeError::TooManyRows { total: 3, limit: 2 }
        );
        let truncate = Shape {
            mask: Vec::new(),
            row_limit: Some((1, LimitMode::Truncate)),
        };
        let s = shape_answer(done, &truncate).unwrap();
        let v: Value = serde_json::from_slice(&s.body.unwrap()).unwrap();
        assert_eq!(v["data"], serde_json::json!([["1", "a@x"]]));
        assert_eq!(v["resultSetMetaData"]["numRows"], 1);
        assert_eq!(
            v["resultSetMetaData"]["partitionInfo"],
            serde_json::json!([{"rowCount": 1}])
        );
        assert!(s.partitions.withheld);
        assert_eq!(s.truncated, Some(1));

        // An answer that says fewer rows than it carries is limited by what it carries.
        let understated = br#"{"resultSetMetaData": {"numRows": 1,
            "rowType": [{"name": "N", "type": "fixed"}]}, "data": [["1"], ["2"], ["3"]]}"#;
        let s = shape_answer(understated, &truncate).unwrap();
        let v: Value = serde_json::from_slice(&s.body.unwrap()).unwrap();
        assert_eq!(v["data"], serde_json::json!([["1"]]));

        // No rows, nothing to do; not JSON, refused.
        let running = br#"{"code": "333334", "statementHandle": "h"}"#;
        assert_eq!(shape_answer(running, &mask).unwrap().body, None);
        assert_eq!(
            shape_answer(b"<html>", &mask).unwrap_err(),
            ShapeError::Unreadable
        );
    }
}
