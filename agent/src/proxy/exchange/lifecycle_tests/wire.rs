//! The requests a driver sends and the answers Snowflake gives, field for field as connector 5.x
//! and 4.x send and receive them (the end-to-end fake Snowflake in `tests/` answers the same).

use http::{Method, Request, header};
use serde_json::{Value, json};

use super::Body;
use super::fake_upstream::{Answer, body_of};

/// The login endpoint.
pub(super) const LOGIN: &str = "/session/v1/login-request";
/// The statement endpoint.
pub(super) const QUERY: &str = "/queries/v1/query-request";
/// The 4.x abort endpoint (the statement named by `requestId` in the body).
pub(super) const ABORT: &str = "/queries/v1/abort-request";
/// The session heartbeat endpoint.
pub(super) const HEARTBEAT: &str = "/session/heartbeat";
/// The driver's `User-Agent`.
const USER_AGENT: &str = "PythonConnector/5.2.0 (linux-x86_64) CPython/3.11.7";

/// The result poll path of `qid`.
pub(super) fn result_path(qid: &str) -> String {
    format!("/queries/{qid}/result")
}

/// The monitoring path of `qid`.
pub(super) fn monitoring_path(qid: &str) -> String {
    format!("/monitoring/queries/{qid}")
}

fn request(method: Method, uri: &str, token: Option<&str>, body: Option<&Value>) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "xy12345.snowflakecomputing.com")
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::ACCEPT, "application/snowflake");
    let auth = format!("Snowflake Token=\"{}\"", token.unwrap_or("None"));
    b = b.header(header::AUTHORIZATION, auth);
    let bytes = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            serde_json::to_vec(v).unwrap()
        }
        None => Vec::new(),
    };
    b.body(body_of(bytes)).unwrap()
}

/// A password login of `user` to `account` (`data.PASSWORD`), as connector 5.2.0 sends it.
pub(super) fn login_request(account: &str, user: &str, password: &str) -> Request<Body> {
    let body = json!({"data": {
        "CLIENT_APP_ID": "PythonConnector",
        "CLIENT_APP_VERSION": "5.2.0",
        "SVN_REVISION": null,
        "ACCOUNT_NAME": account,
        "LOGIN_NAME": user,
        "PASSWORD": password,
        "SESSION_PARAMETERS": {"QUERY_TAG": "login-tag", "CLIENT_RUNTIME_NAME": "CPython"},
        "CLIENT_ENVIRONMENT": {"APPLICATION": "PythonConnector", "OS": "linux"}
    }});
    request(
        Method::POST,
        &format!("{LOGIN}?databaseName=DB1&schemaName=PUBLIC&warehouse=&roleName="),
        None,
        Some(&body),
    )
}

/// Snowflake's answer to a good login: the session token and the session's context.
pub(super) fn login_ok(token: &str, snowflake_session_id: u64) -> Answer {
    Answer::json(&json!({
        "data": {
            "token": token,
            "masterToken": format!("master-{token}"),
            "sessionId": snowflake_session_id,
            "validityInSeconds": 3600,
            "masterValidityInSeconds": 14400,
            "serverVersion": "10.0.0",
            "displayUserName": "FAKE",
            "parameters": [{"name": "TIMEZONE", "value": "Etc/UTC"}],
            "sessionInfo": {
                "databaseName": "DB1",
                "schemaName": "PUBLIC",
                "warehouseName": "WH_ETL",
                "roleName": "ANALYST"
            }
        },
        "code": null,
        "message": null,
        "success": true
    }))
}

fn query_body(sql: &str, async_exec: bool) -> Value {
    json!({
        "sqlText": sql,
        "asyncExec": async_exec,
        "sequenceId": 1,
        "querySubmissionTime": 1_795_379_222_046_u64,
        "isInternal": false,
        "queryContextDTO": {}
    })
}

/// A statement sent with `requestId` (and `retryCount` when it is a retry, as 5.x sends it).
pub(super) fn query_request(token: &str, request_id: &str, sql: &str) -> Request<Body> {
    let uri = format!("{QUERY}?requestId={request_id}&request_guid=g-{request_id}");
    request(
        Method::POST,
        &uri,
        Some(token),
        Some(&query_body(sql, false)),
    )
}

/// The same statement sent again after a failed attempt (`retryCount`, `retryReason`).
pub(super) fn query_retry(token: &str, request_id: &str, sql: &str, attempt: u32) -> Request<Body> {
    let uri = format!(
        "{QUERY}?requestId={request_id}&retryCount={attempt}&retryReason=503&request_guid=g{attempt}"
    );
    request(
        Method::POST,
        &uri,
        Some(token),
        Some(&query_body(sql, false)),
    )
}

/// A statement submitted asynchronously (`asyncExec: true`).
pub(super) fn async_query_request(token: &str, request_id: &str, sql: &str) -> Request<Body> {
    let uri = format!("{QUERY}?requestId={request_id}");
    request(
        Method::POST,
        &uri,
        Some(token),
        Some(&query_body(sql, true)),
    )
}

/// `GET /queries/<qid>/result`: a poll of a running statement or the fetch of a finished one.
pub(super) fn result_poll(token: &str, qid: &str) -> Request<Body> {
    request(Method::GET, &result_path(qid), Some(token), None)
}

/// `GET /monitoring/queries/<qid>`: an async statement's status.
pub(super) fn monitoring_request(token: &str, qid: &str) -> Request<Body> {
    request(Method::GET, &monitoring_path(qid), Some(token), None)
}

/// The 4.x abort: the statement named by its request id and text in the body.
pub(super) fn abort_request(token: &str, request_id: &str, sql: &str) -> Request<Body> {
    let body = json!({"sqlText": sql, "requestId": request_id});
    request(Method::POST, ABORT, Some(token), Some(&body))
}

/// `POST /api/v2/statements`: a statement through Snowflake's SQL API, with a session token.
pub(super) const SQL_API: &str = "/api/v2/statements";

/// `POST /session/heartbeat`.
pub(super) fn heartbeat(token: &str) -> Request<Body> {
    request(Method::POST, HEARTBEAT, Some(token), None)
}

/// A REST resource API (`POST` creates a database).
pub(super) const DATABASES: &str = "/api/v2/databases";

/// A request to a REST resource API with the session's token.
pub(super) fn rest_request(token: &str, path: &str) -> Request<Body> {
    let body = json!({"name": "ANALYTICS"});
    request(Method::POST, path, Some(token), Some(&body))
}

/// `GET /api/v2/statements/<handle>` (`partition` = N when given).
pub(super) fn sql_api_status(token: &str, handle: &str, partition: Option<u32>) -> Request<Body> {
    let uri = match partition {
        Some(n) => format!("{SQL_API}/{handle}?partition={n}"),
        None => format!("{SQL_API}/{handle}"),
    };
    request(Method::GET, &uri, Some(token), None)
}

/// `POST /api/v2/statements/<handle>/cancel`.
pub(super) fn sql_api_cancel(token: &str, handle: &str) -> Request<Body> {
    request(
        Method::POST,
        &format!("{SQL_API}/{handle}/cancel"),
        Some(token),
        None,
    )
}

/// A SQL API answer with `rows` of one column `N`, under `handle`.
pub(super) fn sql_api_rows(handle: &str, rows: Value) -> Answer {
    let n = rows.as_array().map_or(0, Vec::len);
    Answer::json(&json!({
        "resultSetMetaData": {"numRows": n, "format": "jsonv2",
            "partitionInfo": [{"rowCount": n}], "rowType": [{"name": "N", "type": "fixed"}]},
        "data": rows, "code": "090001", "sqlState": "00000", "statementHandle": handle,
        "message": "Statement executed successfully."
    }))
}

/// The SQL API's answer for a statement still running (HTTP 202).
pub(super) fn sql_api_running(handle: &str) -> Answer {
    Answer::json_with(
        202,
        &json!({"code": "333334", "message": "Asynchronous execution in progress.",
            "statementHandle": handle, "statementStatusUrl": format!("{SQL_API}/{handle}")}),
    )
}

/// A statement sent through the SQL API with a request id (`retry=true` marks a resubmission).
pub(super) fn sql_api_request_with_id(token: &str, request_id: &str, sql: &str) -> Request<Body> {
    let body = json!({"statement": sql, "timeout": 60});
    let uri = format!("{SQL_API}?requestId={request_id}&retry=true");
    request(Method::POST, &uri, Some(token), Some(&body))
}

/// A statement sent through the SQL API with the session's token.
pub(super) fn sql_api_request(token: &str, sql: &str) -> Request<Body> {
    let body = json!({"statement": sql, "timeout": 60});
    request(Method::POST, SQL_API, Some(token), Some(&body))
}

/// A download of a result chunk from its storage host (no `Authorization`, SSE-C headers).
pub(super) fn chunk_download(host: &str, path: &str) -> Request<Body> {
    Request::builder()
        .method(Method::GET)
        .uri(format!("{path}?X-Amz-Signature=sig"))
        .header(header::HOST, host)
        .header("x-amz-server-side-encryption-customer-algorithm", "AES256")
        .body(body_of(Vec::new()))
        .unwrap()
}

/// A column of `rowtype`: its name and Snowflake type (`fixed` or `text`).
pub(super) fn column(name: &str, ty: &str) -> Value {
    json!({
        "name": name, "database": "DB1", "schema": "PUBLIC", "table": "USERS",
        "nullable": true, "type": ty, "byteLength": null, "length": null,
        "scale": if ty == "fixed" { json!(0) } else { json!(null) },
        "precision": if ty == "fixed" { json!(38) } else { json!(null) },
        "collation": null
    })
}

/// The `data` of a result: `columns`, the inline `rows`, `total` rows in all.
fn result_data(
    qid: &str,
    statement_type_id: u64,
    columns: &[Value],
    rows: &Value,
    total: u64,
) -> Value {
    json!({
        "parameters": [{"name": "TIMEZONE", "value": "Etc/UTC"}],
        "rowtype": columns,
        "rowset": rows,
        "total": total,
        "returned": total,
        "queryId": qid,
        "statementTypeId": statement_type_id,
        "queryResultFormat": "json",
        "finalDatabaseName": "DB1",
        "finalSchemaName": "PUBLIC",
        "finalWarehouseName": "WH_ETL",
        "finalRoleName": "ANALYST"
    })
}

/// A SELECT's result with all its rows inline.
pub(super) fn rows(qid: &str, columns: &[Value], rows: Value) -> Answer {
    let total = rows.as_array().map_or(0, Vec::len) as u64;
    let data = result_data(qid, 0x1000, columns, &rows, total);
    Answer::json(&json!({"data": data, "code": null, "message": null, "success": true}))
}

/// A DELETE's result (`number of rows deleted`).
pub(super) fn deleted(qid: &str, n: u64) -> Answer {
    let cols = [column("number of rows deleted", "fixed")];
    let data = result_data(qid, 0x3300, &cols, &json!([[n.to_string()]]), 1);
    Answer::json(&json!({"data": data, "code": null, "message": null, "success": true}))
}

/// A result whose `inline` rows are in the answer and the others in chunks served from `host`,
/// each chunk given as its path, its row count and its size.
pub(super) fn chunked(
    qid: &str,
    columns: &[Value],
    inline: Value,
    host: &str,
    chunks: &[(&str, u64, usize)],
) -> Answer {
    let total = inline.as_array().map_or(0, Vec::len) as u64
        + chunks.iter().map(|(_, rows, _)| rows).sum::<u64>();
    let mut data = result_data(qid, 0x1000, columns, &inline, total);
    data["chunks"] = chunks
        .iter()
        .map(|(path, rows, size)| {
            json!({
                "url": format!("https://{host}{path}?X-Amz-Algorithm=AWS4&X-Amz-Signature=sig"),
                "rowCount": rows,
                "uncompressedSize": size,
                "compressedSize": size
            })
        })
        .collect();
    data["qrmk"] = json!("a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=");
    data["chunkHeaders"] = json!({"x-amz-server-side-encryption-customer-algorithm": "AES256"});
    Answer::json(&json!({"data": data, "code": null, "message": null, "success": true}))
}

/// `333333`: the statement runs on; the driver polls its result URL.
pub(super) fn in_progress(qid: &str) -> Answer {
    running("333333", qid)
}

/// `333334`: the statement was submitted asynchronously and runs on.
pub(super) fn async_in_progress(qid: &str) -> Answer {
    running("333334", qid)
}

fn running(code: &str, qid: &str) -> Answer {
    Answer::json(&json!({
        "data": {
            "queryId": qid,
            "getResultUrl": result_path(qid),
            "queryAbortsAfterSecs": 300,
            "progressDesc": null
        },
        "code": code,
        "message": "Query execution in progress.",
        "success": true
    }))
}

/// A statement's failure, as Snowflake's error envelope carries it.
pub(super) fn failed(qid: &str, code: &str, sql_state: &str, message: &str) -> Answer {
    Answer::json(&json!({
        "data": {
            "internalError": false,
            "errorCode": code,
            "age": 0,
            "sqlState": sql_state,
            "queryId": qid,
            "line": -1,
            "pos": -1,
            "type": "COMPILATION"
        },
        "code": code,
        "message": message,
        "success": false,
        "headers": null
    }))
}

/// The cancellation Snowflake answers an aborted statement with.
pub(super) fn canceled(qid: &str) -> Answer {
    failed(qid, "000604", "57014", "SQL execution canceled")
}

/// `390112`: the session token expired; the driver renews it and sends the statement again.
pub(super) fn session_expired() -> Answer {
    Answer::json(&json!({
        "data": {"nextAction": "RENEW_SESSION"},
        "code": "390112",
        "message": "Your session has expired. Please renew.",
        "success": false
    }))
}

/// An empty success (`data: null`), as Snowflake answers an abort.
pub(super) fn ok_null() -> Answer {
    Answer::json(&json!({"data": null, "code": null, "message": null, "success": true}))
}

/// The monitoring answer for `qid` in `status` (`RUNNING`, `SUCCESS`, `FAILED_WITH_ERROR`).
pub(super) fn monitoring(qid: &str, status: &str) -> Answer {
    Answer::json(&json!({
        "data": {"queries": [{
            "id": qid,
            "status": status,
            "state": status,
            "sqlText": "select 1",
            "startTime": 1_795_379_222_046_u64,
            "totalDuration": 0
        }]},
        "code": null,
        "message": null,
        "success": true
    }))
}
