//! The statement endpoints: query-request (single, multi-statement, describe-only, async, slow),
//! result polls, monitoring, aborts, and the result chunks; envelopes modelled on the captures.

use serde_json::{Value, json};

use super::engine::{self, Outcome, SfError};
use super::handlers::{Ctx, Reply, authenticate, bearer, gzip, new_qid, now_ms, session_expired};
use super::results::{ColType, Column, ResultSet, statement_type};
use super::sql;
use super::state::{Inner, RecordedRequest, Session, Stored};

/// SSE-C key the chunk URLs demand (the captured one), base64.
pub const CHUNK_KEY: &str = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=";
/// MD5 of [`CHUNK_KEY`]'s bytes, base64.
const CHUNK_KEY_MD5: &str = "mT2HRsMGJ5IX5C+0rreZ8Q==";

fn error_envelope(qid: &str, e: &SfError) -> Value {
    json!({
        "data": {
            "internalError": false,
            "errorCode": e.code,
            "age": 0,
            "sqlState": e.sql_state,
            "queryId": qid,
            "line": -1,
            "pos": -1,
            "type": "COMPILATION"
        },
        "code": e.code,
        "message": e.message,
        "success": false,
        "headers": null
    })
}

fn in_progress(code: &str, qid: &str) -> Value {
    let message = if code == "333334" {
        "Asynchronous execution in progress. Use provided query id to perform query monitoring and management."
    } else {
        "Query execution in progress. Query will be cancelled after 300 seconds of inactivity."
    };
    json!({
        "data": {
            "queryId": qid,
            "getResultUrl": format!("/queries/{qid}/result"),
            "queryAbortsAfterSecs": 300,
            "progressDesc": null
        },
        "code": code,
        "message": message,
        "success": true
    })
}

/// The `data` fields every result shares.
fn result_data(qid: &str, s: &Session, rs: &ResultSet) -> serde_json::Map<String, Value> {
    let mut d = serde_json::Map::new();
    d.insert(
        "parameters".into(),
        json!([{"name": "TIMEZONE", "value": "Etc/UTC"}]),
    );
    d.insert("rowtype".into(), rs.rowtype());
    d.insert("queryId".into(), json!(qid));
    d.insert("statementTypeId".into(), json!(rs.statement_type));
    for (k, v) in [
        ("finalDatabaseName", &s.database),
        ("finalSchemaName", &s.schema),
        ("finalWarehouseName", &s.warehouse),
    ] {
        if let Some(v) = v {
            d.insert(k.into(), json!(v));
        }
    }
    d.insert("finalRoleName".into(), json!(s.role));
    d
}

/// A result envelope; with `chunked`, all but the first part of the rows go to chunk URLs.
fn success_envelope(
    inner: &mut Inner,
    ctx: &Ctx,
    qid: &str,
    s: &Session,
    rs: &ResultSet,
    arrow: bool,
    chunked: bool,
) -> Value {
    let mut d = result_data(qid, s, rs);
    let total = rs.rows.len();
    d.insert("total".into(), json!(total));
    d.insert("returned".into(), json!(total));
    let parts: Vec<&[Vec<Option<String>>]> = if chunked && total >= 4 {
        let part = total.div_ceil(4);
        let mut v = vec![&rs.rows[..part]];
        let rest = &rs.rows[part..];
        let each = rest.len().div_ceil(3).max(1);
        v.extend(rest.chunks(each));
        v
    } else {
        vec![&rs.rows[..]]
    };
    let inline = parts.first().copied().unwrap_or(&[]);
    if arrow {
        d.insert("queryResultFormat".into(), json!("arrow"));
        d.insert(
            "rowsetBase64".into(),
            json!(rs.arrow_base64(inline).unwrap_or_default()),
        );
    } else {
        d.insert("queryResultFormat".into(), json!("json"));
        d.insert("rowset".into(), ResultSet::json_rows(inline));
    }
    if parts.len() > 1 {
        let mut bodies = Vec::new();
        let mut cfgs = Vec::new();
        for (i, rows) in parts[1..].iter().enumerate() {
            let body = if arrow {
                rs.arrow_stream(rows).unwrap_or_default()
            } else {
                ResultSet::json_chunk(rows)
            };
            cfgs.push(json!({
                "url": format!("{}/fake-stage-results/{qid}/{i}?X-Amz-Signature=fake", ctx.base_url),
                "rowCount": rows.len(),
                "uncompressedSize": body.len(),
                "compressedSize": gzip(&body).len(),
            }));
            bodies.push(body);
        }
        inner.insert_chunks(qid, bodies);
        d.insert("chunks".into(), Value::Array(cfgs));
        d.insert("qrmk".into(), json!(CHUNK_KEY));
        d.insert(
            "chunkHeaders".into(),
            json!({
                "x-amz-server-side-encryption-customer-algorithm": "AES256",
                "x-amz-server-side-encryption-customer-key": CHUNK_KEY,
                "x-amz-server-side-encryption-customer-key-md5": CHUNK_KEY_MD5
            }),
        );
    }
    json!({"data": Value::Object(d), "code": null, "message": null, "success": true})
}

/// The `MULTI_STATEMENT_COUNT` a request asks for (`None` when absent).
fn desired_count(body: &Value) -> Option<usize> {
    let v = body.get("parameters")?.get("MULTI_STATEMENT_COUNT")?;
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn query_request(inner: &mut Inner, req: &RecordedRequest, ctx: &Ctx) -> Reply {
    let session = match authenticate(inner, req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(body) = req.json() else {
        return Reply::text(400, "query-request body is not JSON");
    };
    let sql_text = body
        .get("sqlText")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let request_id = req.query_param("requestId");
    let markers = sql::markers(&sql_text);
    if markers.expire_token {
        let key = request_id.clone().unwrap_or_else(|| sql_text.clone());
        if inner.expired_requests.insert(key) {
            inner.expired_tokens.insert(bearer(req).unwrap_or_default());
            return session_expired();
        }
    }
    if let Some(n) = markers.fail {
        let key = request_id.clone().unwrap_or_else(|| sql_text.clone());
        let failed = inner.failed_attempts.entry(key).or_insert(0);
        if *failed < n {
            *failed += 1;
            return Reply::text(503, "Service Unavailable");
        }
    }
    let qid = new_qid();
    if sql::strip_comments(&sql_text).is_empty() {
        let e = SfError {
            code: "000900".into(),
            sql_state: "42000".into(),
            message: "SQL compilation error:\nEmpty SQL statement.".into(),
        };
        return Reply::json(&error_envelope(&qid, &e));
    }
    if body.get("describeOnly").and_then(Value::as_bool) == Some(true) {
        let rs = engine::describe(inner, &sql_text);
        let mut d = result_data(&qid, &session, &rs);
        d.insert("total".into(), json!(0));
        d.insert("returned".into(), json!(0));
        d.insert(
            "numberOfBinds".into(),
            json!(sql::count_placeholders(&sql_text)),
        );
        d.insert(
            "arrayBindSupported".into(),
            json!(rs.statement_type == statement_type::INSERT),
        );
        d.insert("queryResultFormat".into(), json!("json"));
        d.insert("rowset".into(), json!([]));
        return Reply::json(&json!({"data": d, "code": null, "message": null, "success": true}));
    }
    let statements = sql::split_statements(&sql_text);
    let desired = desired_count(&body);
    let (envelope, failed, result) = if statements.len() > 1 || desired.is_some_and(|d| d != 1) {
        multi(inner, ctx, &qid, &session, &statements, desired, &markers)
    } else {
        let outcome = engine::execute(
            inner,
            &session,
            &sql_text,
            body.get("bindings"),
            &markers,
            &ctx.base_url,
        );
        finish(inner, ctx, &qid, &session, outcome, &markers)
    };
    let pending = markers.slow.unwrap_or(0).saturating_sub(1);
    inner.store(
        &qid,
        Stored {
            envelope: envelope.clone(),
            pending,
            sql: sql_text,
            request_id,
            failed,
            result,
            aborted: false,
            submitted_ms: now_ms(),
        },
    );
    if body.get("asyncExec").and_then(Value::as_bool) == Some(true) {
        return Reply::json(&in_progress("333334", &qid));
    }
    if markers.slow.unwrap_or(0) > 0 {
        return Reply::json(&in_progress("333333", &qid));
    }
    Reply::json(&envelope)
}

type Finished = (Value, Option<(String, String, String)>, Option<ResultSet>);

fn finish(
    inner: &mut Inner,
    ctx: &Ctx,
    qid: &str,
    session: &Session,
    outcome: Outcome,
    markers: &sql::Markers,
) -> Finished {
    match outcome {
        Outcome::Rows(rs) => {
            let env =
                success_envelope(inner, ctx, qid, session, &rs, markers.arrow, markers.chunks);
            (env, None, Some(rs))
        }
        Outcome::Error(e) => (
            error_envelope(qid, &e),
            Some((e.code, e.sql_state, e.message)),
            None,
        ),
        Outcome::Transfer(mut data) => {
            if let Some(o) = data.as_object_mut() {
                o.insert("queryId".into(), json!(qid));
            }
            (
                json!({"data": data, "code": null, "message": null, "success": true}),
                None,
                None,
            )
        }
    }
}

fn multi(
    inner: &mut Inner,
    ctx: &Ctx,
    qid: &str,
    session: &Session,
    statements: &[String],
    desired: Option<usize>,
    markers: &sql::Markers,
) -> Finished {
    let desired = desired.unwrap_or(1);
    if desired != 0 && desired != statements.len() {
        let e = SfError {
            code: "000008".into(),
            sql_state: "0A000".into(),
            message: format!(
                "Actual statement count {} did not match the desired statement count {desired}.",
                statements.len()
            ),
        };
        return (
            error_envelope(qid, &e),
            Some((e.code, e.sql_state, e.message)),
            None,
        );
    }
    let mut ids = Vec::new();
    let mut types = Vec::new();
    for stmt in statements {
        let child = new_qid();
        let child_markers = sql::markers(stmt);
        let outcome = engine::execute(inner, session, stmt, None, &child_markers, &ctx.base_url);
        let stype = match &outcome {
            Outcome::Rows(rs) => rs.statement_type,
            _ => statement_type::FILE,
        };
        let (env, failed, result) = finish(inner, ctx, &child, session, outcome, &child_markers);
        let child_failed = failed.clone();
        inner.store(
            &child,
            Stored {
                envelope: env,
                pending: 0,
                sql: stmt.clone(),
                request_id: None,
                failed,
                result,
                aborted: false,
                submitted_ms: now_ms(),
            },
        );
        if let Some((code, sql_state, message)) = child_failed {
            let e = SfError {
                code,
                sql_state,
                message,
            };
            return (
                error_envelope(qid, &e),
                Some((e.code, e.sql_state, e.message)),
                None,
            );
        }
        ids.push(child);
        types.push(stype.to_string());
    }
    let rs = ResultSet {
        columns: vec![Column::new("multiple statement execution", ColType::Text)],
        rows: vec![vec![Some(
            "Multiple statements executed successfully.".into(),
        )]],
        statement_type: statement_type::MULTI,
    };
    let mut env = success_envelope(inner, ctx, qid, session, &rs, markers.arrow, false);
    if let Some(d) = env.get_mut("data").and_then(Value::as_object_mut) {
        d.insert("resultIds".into(), json!(ids.join(",")));
        d.insert("resultTypes".into(), json!(types.join(",")));
    }
    (env, None, Some(rs))
}

pub(crate) fn abort(inner: &mut Inner, qid: &str) {
    if let Some(s) = inner.stored_mut(qid)
        && s.pending > 0
    {
        s.aborted = true;
        s.pending = 0;
    }
}

fn canceled(qid: &str) -> Value {
    error_envelope(
        qid,
        &SfError {
            code: "000604".into(),
            sql_state: "57014".into(),
            message: "SQL execution canceled".into(),
        },
    )
}

pub(crate) fn result_poll(inner: &mut Inner, qid: &str) -> Reply {
    let Some(s) = inner.stored_mut(qid) else {
        return Reply::json(&error_envelope(
            qid,
            &SfError {
                code: "000709".into(),
                sql_state: "02000".into(),
                message: format!("Statement {qid} not found"),
            },
        ));
    };
    if s.aborted {
        return Reply::json(&canceled(qid));
    }
    if s.pending > 0 {
        s.pending -= 1;
        return Reply::json(&in_progress("333333", qid));
    }
    Reply::json(&s.envelope)
}

pub(crate) fn monitoring(inner: &mut Inner, qid: &str) -> Reply {
    let Some(s) = inner.stored_mut(qid) else {
        return Reply::json(&json!({
            "data": {"queries": []}, "code": null, "message": null, "success": true
        }));
    };
    let mut q = json!({
        "id": qid,
        "sqlText": s.sql,
        "startTime": s.submitted_ms,
        "endTime": s.submitted_ms,
        "totalDuration": 0,
        "state": "SUCCEEDED",
        "status": "SUCCESS",
    });
    if s.aborted {
        q["status"] = json!("ABORTED");
        q["state"] = json!("FAILED_WITH_ERROR");
        q["errorCode"] = json!("000604");
        q["errorMessage"] = json!("SQL execution canceled");
    } else if s.pending > 0 {
        s.pending -= 1;
        q["status"] = json!("RUNNING");
        q["state"] = json!("RUNNING");
    } else if let Some((code, sql_state, message)) = &s.failed {
        q["status"] = json!("FAILED_WITH_ERROR");
        q["state"] = json!("FAILED_WITH_ERROR");
        q["errorCode"] = json!(code);
        q["errorMessage"] = json!(message);
        // 4.8.1 reads the SQL state of a failed async statement from `data.sqlState`.
        return Reply::json(&json!({
            "data": {"queries": [q], "sqlState": sql_state},
            "code": null, "message": null, "success": true
        }));
    }
    Reply::json(&json!({
        "data": {"queries": [q]}, "code": null, "message": null, "success": true
    }))
}

pub(crate) fn chunk(inner: &Inner, req: &RecordedRequest, path: &str) -> Reply {
    let mut parts = path.trim_start_matches("/fake-stage-results/").split('/');
    let (Some(qid), Some(i)) = (parts.next(), parts.next()) else {
        return Reply::text(404, "Not Found");
    };
    if req.header("x-amz-server-side-encryption-customer-key") != Some(CHUNK_KEY) {
        return Reply::text(
            400,
            "InvalidRequest: the object was stored using a form of Server Side Encryption; \
             the correct parameters must be provided to retrieve it",
        );
    }
    let body = i
        .parse::<usize>()
        .ok()
        .and_then(|i| inner.chunks.get(qid)?.get(i));
    match body {
        Some(b) => {
            let accepts = req
                .header("accept-encoding")
                .is_some_and(|v| v.contains("gzip"));
            if accepts {
                let mut r = Reply::bytes(200, gzip(b));
                r.headers.push(("content-encoding", "gzip".into()));
                r
            } else {
                Reply::bytes(200, b.clone())
            }
        }
        None => Reply::text(404, "NoSuchKey"),
    }
}

/// `POST /api/v2/statements`: a statement through the SQL API, with a session's token. Done at
/// once (200), or, with `async=true`, answered 202 and kept for its status request.
pub(crate) fn sql_api_submit(inner: &mut Inner, req: &RecordedRequest, ctx: &Ctx) -> Reply {
    let session = match authenticate(inner, req) {
        Ok(s) => s,
        Err(_) => {
            return sql_api_reply(
                401,
                &json!({"code": "390303", "message": "Invalid OAuth access token. "}),
            );
        }
    };
    let Some(body) = req.json() else {
        return sql_api_reply(
            400,
            &json!({"code": "391901", "message": "Unsupported body."}),
        );
    };
    let statement = body
        .get("statement")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let handle = new_qid();
    let markers = sql::markers(&statement);
    let outcome = engine::execute(
        inner,
        &session,
        &statement,
        body.get("bindings"),
        &markers,
        &ctx.base_url,
    );
    let (status, answer, failed, result) = match outcome {
        Outcome::Rows(rs) => (200, sql_api_rows(&handle, &rs), None, Some(rs)),
        Outcome::Error(e) => (
            422,
            json!({"code": e.code, "message": e.message, "sqlState": e.sql_state,
                "statementHandle": handle}),
            Some((e.code.clone(), e.sql_state.clone(), e.message.clone())),
            None,
        ),
        Outcome::Transfer(_) => (
            422,
            json!({"code": "391902", "message": "PUT and GET are not supported by the SQL API.",
                "sqlState": "0A000", "statementHandle": handle}),
            None,
            None,
        ),
    };
    inner.store(
        &handle,
        Stored {
            envelope: json!({"status": status, "answer": answer}),
            pending: 0,
            sql: statement,
            request_id: req.query_param("requestId"),
            failed,
            result,
            aborted: false,
            submitted_ms: now_ms(),
        },
    );
    if req.query_param("async").as_deref() == Some("true") {
        return sql_api_reply(
            202,
            &json!({"code": "333334", "message": "Asynchronous execution in progress.",
                "statementHandle": handle,
                "statementStatusUrl": format!("/api/v2/statements/{handle}")}),
        );
    }
    sql_api_reply(status, &answer)
}

/// `GET /api/v2/statements/<handle>`: the stored answer (a cancelled statement's error).
pub(crate) fn sql_api_status(inner: &mut Inner, req: &RecordedRequest, handle: &str) -> Reply {
    if authenticate(inner, req).is_err() {
        return sql_api_reply(
            401,
            &json!({"code": "390303", "message": "Invalid OAuth access token. "}),
        );
    }
    match inner.stored(handle) {
        Some(s) if s.aborted => sql_api_reply(
            422,
            &json!({"code": "000604", "message": "SQL execution canceled", "sqlState": "57014",
                "statementHandle": handle}),
        ),
        Some(s) => {
            let status = s.envelope["status"].as_u64().unwrap_or(200) as u16;
            sql_api_reply(status, &s.envelope["answer"])
        }
        None => sql_api_reply(
            404,
            &json!({"code": "391918", "message": "Statement handle not found.", "statementHandle": handle}),
        ),
    }
}

/// `POST /api/v2/statements/<handle>/cancel`.
pub(crate) fn sql_api_cancel(inner: &mut Inner, req: &RecordedRequest, handle: &str) -> Reply {
    if authenticate(inner, req).is_err() {
        return sql_api_reply(
            401,
            &json!({"code": "390303", "message": "Invalid OAuth access token. "}),
        );
    }
    match inner.stored_mut(handle) {
        Some(s) => {
            s.aborted = true;
            sql_api_reply(
                200,
                &json!({"code": "000604", "message": "Statement canceled.", "sqlState": "57014",
                    "statementHandle": handle}),
            )
        }
        None => sql_api_reply(
            404,
            &json!({"code": "391918", "message": "Statement handle not found."}),
        ),
    }
}

/// A result as the SQL API answers it: `resultSetMetaData`, `data` as strings, one partition.
fn sql_api_rows(handle: &str, rs: &ResultSet) -> Value {
    json!({
        "resultSetMetaData": {
            "numRows": rs.rows.len(),
            "format": "jsonv2",
            "partitionInfo": [{"rowCount": rs.rows.len()}],
            "rowType": rs.rowtype(),
        },
        "data": rs.rows,
        "code": "090001",
        "statementStatusUrl": format!("/api/v2/statements/{handle}"),
        "sqlState": "00000",
        "statementHandle": handle,
        "message": "Statement executed successfully.",
    })
}

fn sql_api_reply(status: u16, v: &Value) -> Reply {
    let mut r = Reply::json(v);
    r.status = status;
    r
}
