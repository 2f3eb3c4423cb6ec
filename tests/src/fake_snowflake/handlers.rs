//! The REST endpoints: each takes the recorded request and answers with the envelope real
//! Snowflake sends, modelled field for field on the captured exchanges.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};

use super::engine::{self, Outcome, SfError};
use super::results::{ColType, Column, ResultSet, statement_type};
use super::sql;
use super::state::{Inner, RecordedRequest, Session, StagedFile, State, Stored};

/// SSE-C key the chunk URLs demand (the captured one), base64.
pub const CHUNK_KEY: &str = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=";
/// MD5 of [`CHUNK_KEY`]'s bytes, base64.
const CHUNK_KEY_MD5: &str = "mT2HRsMGJ5IX5C+0rreZ8Q==";
/// Session token validity announced, in seconds.
const VALIDITY_S: u64 = 3600;
/// Master token validity announced, in seconds.
const MASTER_VALIDITY_S: u64 = 14_400;

/// Per-request facts the answers need.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `scheme://host:port` where chunks and stage files are fetched.
    pub base_url: String,
}

/// An answer before it is put on the wire.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Whether the server may gzip it.
    pub compressible: bool,
}

impl Reply {
    /// A JSON answer, HTTP 200.
    pub fn json(v: &Value) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            headers: Vec::new(),
            body: serde_json::to_vec(v).unwrap_or_default(),
            compressible: true,
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, text: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: text.as_bytes().to_vec(),
            compressible: false,
        }
    }

    fn bytes(status: u16, body: Vec<u8>) -> Reply {
        Reply {
            status,
            content_type: "application/octet-stream",
            headers: Vec::new(),
            body,
            compressible: false,
        }
    }
}

/// Answers one request.
pub fn route(state: &State, req: &RecordedRequest, ctx: &Ctx) -> Reply {
    let path = req.path.as_str();
    let mut inner = match state.inner.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    match (req.method.as_str(), path) {
        ("POST", "/session/v1/login-request") => login(state, &mut inner, req),
        ("POST", "/session/token-request") => token_request(&mut inner, req),
        ("POST", "/session/heartbeat") => match authenticate(&inner, req) {
            Ok(_) => ok_null(),
            Err(r) => r,
        },
        ("POST", "/session") => {
            if let Ok(s) = authenticate(&inner, req)
                && req.query_param("delete").as_deref() == Some("true")
            {
                inner.close_session(s.id);
            }
            ok_null()
        }
        ("POST", "/queries/v1/query-request") => query_request(&mut inner, req, ctx),
        ("POST", "/queries/v1/abort-request") => {
            let rid = req.json().and_then(|b| {
                b.get("requestId")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            if let Some(qid) = rid.and_then(|r| inner.qid_for_request(&r)) {
                abort(&mut inner, &qid);
            }
            ok_null()
        }
        ("POST", "/telemetry/send") => Reply::json(&json!({
            "data": "Log Received", "code": null, "message": null, "success": true
        })),
        ("POST", p) if p.starts_with("/queries/") && p.ends_with("/abort-request") => {
            let qid = p
                .trim_start_matches("/queries/")
                .trim_end_matches("/abort-request");
            abort(&mut inner, qid);
            ok_null()
        }
        ("GET", p) if p.starts_with("/queries/") && p.ends_with("/result") => {
            let qid = p
                .trim_start_matches("/queries/")
                .trim_end_matches("/result");
            match authenticate(&inner, req) {
                Ok(_) => result_poll(&mut inner, qid),
                Err(r) => r,
            }
        }
        ("GET", p) if p.starts_with("/monitoring/queries/") => {
            let qid = p
                .trim_start_matches("/monitoring/queries/")
                .trim_start_matches('/');
            match authenticate(&inner, req) {
                Ok(_) => monitoring(&mut inner, qid),
                Err(r) => r,
            }
        }
        ("GET", p) if p.starts_with("/fake-stage-results/") => chunk(&inner, req, p),
        (m, p) if p.starts_with("/fs_bucket/") => stage_object(&mut inner, req, m, p),
        _ => Reply::text(404, "Not Found"),
    }
}

fn ok_null() -> Reply {
    Reply::json(&json!({"data": null, "code": null, "message": null, "success": true}))
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn new_qid() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The token of `Authorization: Snowflake Token="..."`.
fn bearer(req: &RecordedRequest) -> Option<String> {
    let v = req.header("authorization")?;
    let rest = v.trim().strip_prefix("Snowflake")?.trim();
    let rest = rest.strip_prefix("Token=")?.trim();
    Some(rest.trim_matches('"').to_owned())
}

fn session_expired() -> Reply {
    Reply::json(&json!({
        "data": {"nextAction": "RENEW_SESSION"},
        "code": "390112",
        "message": "Your session has expired. Please renew.",
        "success": false
    }))
}

fn authenticate(inner: &Inner, req: &RecordedRequest) -> Result<Session, Reply> {
    let token = bearer(req).unwrap_or_default();
    if inner.expired_tokens.contains(&token) {
        return Err(session_expired());
    }
    inner
        .by_token
        .get(&token)
        .and_then(|id| inner.sessions.get(id))
        .cloned()
        .ok_or_else(|| {
            Reply::json(&json!({
                "data": {"nextAction": "RETRY_LOGIN"},
                "code": "390111",
                "message": "Session no longer exists.  New login required to access the service.",
                "success": false
            }))
        })
}

/// Percent-decodes a query-string value.
fn decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(v.get(i + 1..i + 3).unwrap_or(""), 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A name from a login parameter: upper-cased unless quoted; none when empty.
fn ident(v: Option<String>) -> Option<String> {
    let v = decode(&v?);
    let v = v.trim();
    if v.is_empty() {
        None
    } else if v.starts_with('"') {
        Some(v.trim_matches('"').to_owned())
    } else {
        Some(v.to_ascii_uppercase())
    }
}

fn login_error(code: &str, message: &str) -> Reply {
    Reply::json(&json!({
        "data": {"nextAction": "RETRY_LOGIN", "authnMethod": "USERNAME_PASSWORD", "signInOptions": {}},
        "code": code,
        "message": message,
        "success": false,
        "headers": null
    }))
}

fn login(state: &State, inner: &mut Inner, req: &RecordedRequest) -> Reply {
    let Some(body) = req.json() else {
        return Reply::text(400, "login body is not JSON");
    };
    let data = body.get("data").cloned().unwrap_or(Value::Null);
    let field = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let user = field("LOGIN_NAME");
    let authenticator = field("AUTHENTICATOR").to_ascii_uppercase();
    let bad = state.settings.bad_password.as_deref();
    let incorrect = "Incorrect username or password was specified.";
    match authenticator.as_str() {
        "" | "SNOWFLAKE" => {
            let password = field("PASSWORD");
            if user.is_empty() || password.is_empty() || Some(password.as_str()) == bad {
                return login_error("390100", incorrect);
            }
        }
        "SNOWFLAKE_JWT" => {
            if !jwt_looks_valid(&field("TOKEN")) {
                return login_error("390144", "JWT token is invalid.");
            }
        }
        "OAUTH" => {
            let token = field("TOKEN");
            if token.is_empty() || Some(token.as_str()) == bad {
                return login_error("390303", "Invalid OAuth access token.");
            }
        }
        "PROGRAMMATIC_ACCESS_TOKEN" => {
            let token = field("TOKEN");
            if token.is_empty() || Some(token.as_str()) == bad {
                return login_error("394400", "Programmatic access token is invalid.");
            }
        }
        _ => return login_error("390100", incorrect),
    }
    let s = inner.open_session(
        if user.is_empty() { "JWT_USER" } else { &user },
        ident(req.query_param("databaseName")),
        ident(req.query_param("schemaName")),
        ident(req.query_param("warehouse")),
        ident(req.query_param("roleName")),
    );
    Reply::json(&json!({
        "data": {
            "token": s.token,
            "serverVersion": "10.0.0",
            "parameters": [
                {"name": "AUTOCOMMIT", "value": true},
                {"name": "CLIENT_SESSION_KEEP_ALIVE_HEARTBEAT_FREQUENCY", "value": 3600},
                {"name": "CLIENT_STAGE_ARRAY_BINDING_THRESHOLD", "value": 0},
                {"name": "TIMEZONE", "value": "Etc/UTC"}
            ],
            "sessionInfo": {
                "databaseName": s.database,
                "schemaName": s.schema,
                "warehouseName": s.warehouse,
                "roleName": s.role
            },
            "masterToken": s.master_token,
            "sessionId": s.id,
            "validityInSeconds": VALIDITY_S,
            "masterValidityInSeconds": MASTER_VALIDITY_S,
            "displayUserName": s.user.to_ascii_uppercase(),
            "healthCheckInterval": 45,
            "newClientForUpgrade": null,
            "idToken": null,
            "idTokenValidityInSeconds": 0,
            "responseData": null,
            "mfaToken": null,
            "mfaTokenValidityInSeconds": 0
        },
        "code": null,
        "message": null,
        "success": true
    }))
}

/// Three base64url parts whose middle one is a JSON object with `iss` and `sub`.
fn jwt_looks_valid(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return false;
    }
    let Ok(payload) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1].trim_end_matches('='))
    else {
        return false;
    };
    serde_json::from_slice::<Value>(&payload)
        .is_ok_and(|v| v.get("iss").is_some() && v.get("sub").is_some())
}

fn token_request(inner: &mut Inner, req: &RecordedRequest) -> Reply {
    let master = bearer(req).unwrap_or_default();
    let Some(id) = inner.by_master.get(&master).copied() else {
        return Reply::json(&json!({
            "data": {"nextAction": "RETRY_LOGIN"},
            "code": "390114",
            "message": "Authentication token has expired.  The user must authenticate again.",
            "success": false
        }));
    };
    match inner.renew(id) {
        Some(s) => Reply::json(&json!({
            "data": {
                "sessionToken": s.token,
                "validityInSecondsST": VALIDITY_S,
                "masterToken": s.master_token,
                "validityInSecondsMT": MASTER_VALIDITY_S,
                "sessionId": s.id
            },
            "code": null,
            "message": null,
            "success": true
        })),
        None => ok_null(),
    }
}

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

/// Gzips `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if e.write_all(bytes).is_err() {
        return Vec::new();
    }
    e.finish().unwrap_or_default()
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

fn query_request(inner: &mut Inner, req: &RecordedRequest, ctx: &Ctx) -> Reply {
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

fn abort(inner: &mut Inner, qid: &str) {
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

fn result_poll(inner: &mut Inner, qid: &str) -> Reply {
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

fn monitoring(inner: &mut Inner, qid: &str) -> Reply {
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

fn chunk(inner: &Inner, req: &RecordedRequest, path: &str) -> Reply {
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

fn stage_object(inner: &mut Inner, req: &RecordedRequest, method: &str, path: &str) -> Reply {
    let key = decode(path.trim_start_matches("/fs_bucket/"));
    match method {
        "PUT" => {
            let create_only = req.header("x-goog-if-generation-match") == Some("0");
            if create_only && inner.stage.contains_key(&key) {
                return Reply::text(412, "PreconditionFailed");
            }
            let digest = req
                .header("x-goog-meta-sfc-digest")
                .or_else(|| req.header("x-amz-meta-sfc-digest"))
                .map(str::to_owned);
            inner.put_staged(
                key,
                StagedFile {
                    bytes: req.body.clone(),
                    digest,
                    uploaded: SystemTime::now(),
                },
            );
            Reply::bytes(200, Vec::new())
        }
        "HEAD" | "GET" => match inner.stage.get(&key) {
            Some(f) => {
                let mut r = Reply::bytes(
                    200,
                    if method == "GET" {
                        f.bytes.clone()
                    } else {
                        Vec::new()
                    },
                );
                if let Some(d) = &f.digest {
                    r.headers.push(("x-goog-meta-sfc-digest", d.clone()));
                }
                r
            }
            None => Reply::bytes(404, Vec::new()),
        },
        _ => Reply::text(405, "Method Not Allowed"),
    }
}
