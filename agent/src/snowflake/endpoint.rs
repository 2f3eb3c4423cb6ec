//! Which Snowflake endpoint a request is for, from its method, path and query string.
//!
//! The shapes are those of `endpoints_by_client.txt` in the wire captures. Paths are normalised
//! before matching (empty segments dropped, so 5.x's `/monitoring/queries//<qid>` and a stray
//! trailing slash match; segments percent-decoded), which errs towards inspecting a request that
//! Snowflake might route like a known one. Query-string keys are matched exactly; the first of
//! repeated keys wins, as in Snowflake's servlet stack.

/// The endpoint family of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /session/v1/login-request`.
    Login,
    /// `POST /queries/v1/query-request`.
    Query,
    /// `POST /session/token-request` (session token renewal).
    TokenRequest,
    /// `POST /session/heartbeat`.
    Heartbeat,
    /// `POST /session?delete=true`.
    Logout,
    /// `POST /queries/v1/abort-request` (4.x, query named in the body by `requestId`) or
    /// `POST /queries/<qid>/abort-request` (5.x, query id in the path).
    Abort {
        /// The query id from the path (5.x); `None` for the 4.x form.
        query_id: Option<String>,
    },
    /// `GET /monitoring/queries/<qid>`: the status of an async statement.
    Monitoring {
        /// The query id from the path.
        query_id: String,
    },
    /// `GET /queries/<qid>/result`: the poll of a statement answered `333333`/`333334`.
    ResultPoll {
        /// The query id from the path.
        query_id: String,
    },
    /// `POST /telemetry/send`.
    Telemetry,
    /// `POST /api/v2/statements`: a statement through the SQL API.
    SqlApiSubmit,
    /// `GET /api/v2/statements/<handle>`: a SQL API statement's status, or a partition of its
    /// result (`?partition=N`).
    SqlApiStatus {
        /// The statement handle from the path.
        handle: String,
    },
    /// `POST /api/v2/statements/<handle>/cancel`.
    SqlApiCancel {
        /// The statement handle from the path.
        handle: String,
    },
    /// Anything else (chunk downloads on storage hosts, unknown Snowflake endpoints).
    Other,
}

impl Endpoint {
    /// A short stable name, for metrics labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Login => "login",
            Endpoint::Query => "query",
            Endpoint::TokenRequest => "token_request",
            Endpoint::Heartbeat => "heartbeat",
            Endpoint::Logout => "logout",
            Endpoint::Abort { .. } => "abort",
            Endpoint::Monitoring { .. } => "monitoring",
            Endpoint::ResultPoll { .. } => "result_poll",
            Endpoint::Telemetry => "telemetry",
            Endpoint::SqlApiSubmit => "sql_api_submit",
            Endpoint::SqlApiStatus { .. } => "sql_api_status",
            Endpoint::SqlApiCancel { .. } => "sql_api_cancel",
            Endpoint::Other => "other",
        }
    }
}

/// The login query string's session target (`?databaseName=&schemaName=&warehouse=&roleName=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginTarget {
    /// `databaseName`, if present and non-empty.
    pub database: Option<String>,
    /// `schemaName`, if present and non-empty.
    pub schema: Option<String>,
    /// `warehouse`, if present and non-empty.
    pub warehouse: Option<String>,
    /// `roleName`, if present and non-empty.
    pub role: Option<String>,
}

/// The query-string parameters drivers put on Snowflake requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestParams {
    /// `requestId` (4.x login uses `request_id`): the statement's id across retries and renewals.
    pub request_id: Option<String>,
    /// `request_guid`: new for every HTTP attempt.
    pub request_guid: Option<String>,
    /// `retryCount` (5.x retries); `None` when absent or not a number.
    pub retry_count: Option<u32>,
    /// `retryReason`, usually the HTTP status of the failed attempt.
    pub retry_reason: Option<String>,
    /// `delete=true` (logout).
    pub delete: bool,
    /// `async=true`: a SQL API statement submitted to run asynchronously.
    pub async_submit: bool,
    /// `partition=N` of a SQL API status request: a partition of the result.
    pub partition: Option<u64>,
    /// The login target, filled for any endpoint that carries the keys (only login does).
    pub login: LoginTarget,
}

/// Classifies a request given its method, its path and its raw query string (without `?`).
pub fn classify(method: &str, path: &str, query: Option<&str>) -> (Endpoint, RequestParams) {
    let params = parse_params(query.unwrap_or(""));
    let segments = normalize_path(path);
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let post = method.eq_ignore_ascii_case("POST");
    let get = method.eq_ignore_ascii_case("GET");
    let endpoint = match (post, get, seg.as_slice()) {
        (true, _, ["session", "v1", "login-request"]) => Endpoint::Login,
        (true, _, ["queries", "v1", "query-request"]) => Endpoint::Query,
        (true, _, ["session", "token-request"]) => Endpoint::TokenRequest,
        (true, _, ["session", "heartbeat"]) => Endpoint::Heartbeat,
        (true, _, ["session"]) if params.delete => Endpoint::Logout,
        (true, _, ["queries", "v1", "abort-request"]) => Endpoint::Abort { query_id: None },
        (true, _, ["queries", qid, "abort-request"]) => Endpoint::Abort {
            query_id: Some((*qid).to_owned()),
        },
        (_, true, ["monitoring", "queries", qid]) => Endpoint::Monitoring {
            query_id: (*qid).to_owned(),
        },
        (_, true, ["queries", qid, "result"]) if *qid != "v1" => Endpoint::ResultPoll {
            query_id: (*qid).to_owned(),
        },
        (true, _, ["telemetry", "send"]) => Endpoint::Telemetry,
        (true, _, ["api", "v2", "statements"]) => Endpoint::SqlApiSubmit,
        (_, true, ["api", "v2", "statements", handle]) => Endpoint::SqlApiStatus {
            handle: (*handle).to_owned(),
        },
        (true, _, ["api", "v2", "statements", handle, "cancel"]) => Endpoint::SqlApiCancel {
            handle: (*handle).to_owned(),
        },
        _ => Endpoint::Other,
    };
    (endpoint, params)
}

/// Classifies an [`http`] request line (the proxy's own types).
pub fn classify_uri(method: &http::Method, uri: &http::Uri) -> (Endpoint, RequestParams) {
    classify(method.as_str(), uri.path(), uri.query())
}

/// Classifies an [`http::Request`] as the proxy holds it.
pub fn classify_request<B>(request: &http::Request<B>) -> (Endpoint, RequestParams) {
    classify_uri(request.method(), request.uri())
}

/// The path's segments as a server would route them: empty and `.` segments dropped, `..`
/// applied, `;parameters` cut off (servlet containers ignore them), each segment
/// percent-decoded.
fn normalize_path(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let raw = raw.split(';').next().unwrap_or("");
        let seg = percent_decode(raw).unwrap_or_else(|| raw.to_owned());
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    out
}

fn parse_params(query: &str) -> RequestParams {
    let mut p = RequestParams::default();
    let mut seen: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = form_decode(k);
        if seen.contains(&key) {
            continue;
        }
        let value = form_decode(v);
        match key.as_str() {
            "requestId" | "request_id" if p.request_id.is_none() => p.request_id = non_empty(value),
            "request_guid" => p.request_guid = non_empty(value),
            "retryCount" => p.retry_count = value.parse().ok(),
            "retryReason" => p.retry_reason = non_empty(value),
            "delete" => p.delete = value.eq_ignore_ascii_case("true"),
            "async" => p.async_submit = value.eq_ignore_ascii_case("true"),
            "partition" => p.partition = value.parse().ok(),
            "databaseName" => p.login.database = non_empty(value),
            "schemaName" => p.login.schema = non_empty(value),
            "warehouse" => p.login.warehouse = non_empty(value),
            "roleName" => p.login.role = non_empty(value),
            _ => {}
        }
        seen.push(key);
    }
    p
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; a bad escape is
/// kept as written.
fn form_decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_decode(&spaced).unwrap_or(spaced)
}

/// Percent-decodes `s`; `None` when an escape is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ep(method: &str, target: &str) -> (Endpoint, RequestParams) {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        classify(method, path, query)
    }

    #[test]
    fn every_captured_shape() {
        let qid = "90e2c28c-d5bb-42ae-b700-7d9033aa54a5";
        assert_eq!(
            ep(
                "POST",
                "/session/v1/login-request?databaseName=db1&schemaName=schema1&warehouse=&roleName="
            )
            .0,
            Endpoint::Login
        );
        assert_eq!(
            ep("POST", "/queries/v1/query-request?requestId=a").0,
            Endpoint::Query
        );
        assert_eq!(
            ep("POST", "/session/token-request?requestId=a").0,
            Endpoint::TokenRequest
        );
        assert_eq!(ep("POST", "/session/heartbeat").0, Endpoint::Heartbeat);
        assert_eq!(
            ep("POST", "/session/heartbeat?requestId=x").0,
            Endpoint::Heartbeat
        );
        assert_eq!(ep("POST", "/session?delete=true").0, Endpoint::Logout);
        assert_eq!(
            ep("POST", "/session?delete=true&requestId=a&request_guid=b").0,
            Endpoint::Logout
        );
        assert_eq!(ep("POST", "/session").0, Endpoint::Other);
        assert_eq!(
            ep("POST", "/queries/v1/abort-request").0,
            Endpoint::Abort { query_id: None }
        );
        assert_eq!(
            ep(
                "POST",
                "/queries/01b2c3d4-0000-0000-0000-000000000001/abort-request"
            )
            .0,
            Endpoint::Abort {
                query_id: Some("01b2c3d4-0000-0000-0000-000000000001".into())
            }
        );
        for path in [
            format!("/monitoring/queries/{qid}"),
            format!("/monitoring/queries//{qid}?requestId=r"),
        ] {
            assert_eq!(
                ep("GET", &path).0,
                Endpoint::Monitoring {
                    query_id: qid.into()
                }
            );
        }
        assert_eq!(
            ep("GET", &format!("/queries/{qid}/result")).0,
            Endpoint::ResultPoll {
                query_id: qid.into()
            }
        );
        assert_eq!(ep("POST", "/telemetry/send").0, Endpoint::Telemetry);
        assert_eq!(
            ep("POST", "/telemetry/send?request_guid=x").0,
            Endpoint::Telemetry
        );
        assert_eq!(
            ep("GET", "/fake-stage-results/x/0?X-Amz-Signature=fake").0,
            Endpoint::Other
        );
        assert_eq!(
            ep("PUT", "/fs_bucket/DB1/SCHEMA1/STG1/data1.csv").0,
            Endpoint::Other
        );
        // The SQL API: submit, status (and partitions), cancel.
        let (e, p) = ep("POST", "/api/v2/statements?requestId=r-9&async=true");
        assert_eq!(e, Endpoint::SqlApiSubmit);
        assert_eq!(p.request_id.as_deref(), Some("r-9"));
        assert!(p.async_submit);
        assert_eq!(ep("POST", "/api/v2/statements/").0, Endpoint::SqlApiSubmit);
        let (e, p) = ep("GET", "/api/v2/statements/01b2-h?partition=3");
        assert_eq!(
            e,
            Endpoint::SqlApiStatus {
                handle: "01b2-h".into()
            }
        );
        assert_eq!(p.partition, Some(3));
        assert_eq!(
            ep("POST", "/api/v2/statements/01b2-h/cancel").0,
            Endpoint::SqlApiCancel {
                handle: "01b2-h".into()
            }
        );
        assert_eq!(ep("GET", "/api/v2/databases").0, Endpoint::Other);
        // Method matters.
        assert_eq!(ep("GET", "/queries/v1/query-request").0, Endpoint::Other);
        assert_eq!(
            ep("POST", &format!("/monitoring/queries/{qid}")).0,
            Endpoint::Other
        );
    }

    #[test]
    fn normalised_variants_still_match() {
        assert_eq!(
            ep("POST", "//queries/v1//query-request/").0,
            Endpoint::Query
        );
        assert_eq!(ep("post", "/queries/v1/query%2Drequest").0, Endpoint::Query);
        assert_eq!(
            ep("POST", "/queries/v1/query-request;jsessionid=1").0,
            Endpoint::Query
        );
        assert_eq!(
            ep("POST", "/telemetry/../queries/./v1/query-request").0,
            Endpoint::Query
        );
        assert_eq!(
            ep("POST", "/queries%2Fv1%2Fquery-request").0,
            Endpoint::Other
        );
    }

    #[test]
    fn params() {
        let (_, p) = ep(
            "POST",
            "/queries/v1/query-request?requestId=e50a&request_guid=7a10&retryCount=3&retryReason=500",
        );
        assert_eq!(p.request_id.as_deref(), Some("e50a"));
        assert_eq!(p.request_guid.as_deref(), Some("7a10"));
        assert_eq!(p.retry_count, Some(3));
        assert_eq!(p.retry_reason.as_deref(), Some("500"));

        let (_, p) = ep(
            "POST",
            "/session/v1/login-request?request_id=cc4d&databaseName=db1&schemaName=schema1",
        );
        assert_eq!(p.request_id.as_deref(), Some("cc4d"));
        assert_eq!(p.login.database.as_deref(), Some("db1"));
        assert_eq!(p.login.schema.as_deref(), Some("schema1"));
        assert_eq!(p.login.warehouse, None);

        let (_, p) = ep(
            "POST",
            "/session/v1/login-request?databaseName=my%20db&schemaName=a+b&warehouse=WH&roleName=&databaseName=other",
        );
        assert_eq!(p.login.database.as_deref(), Some("my db"));
        assert_eq!(p.login.schema.as_deref(), Some("a b"));
        assert_eq!(p.login.warehouse.as_deref(), Some("WH"));
        assert_eq!(p.login.role, None);
        assert_eq!(p.retry_count, None);
    }

    #[test]
    fn from_http_types() {
        let uri: http::Uri = "/queries/abc/result?requestId=r".parse().unwrap();
        let (e, p) = classify_uri(&http::Method::GET, &uri);
        assert_eq!(
            e,
            Endpoint::ResultPoll {
                query_id: "abc".into()
            }
        );
        assert_eq!(p.request_id.as_deref(), Some("r"));
        assert_eq!(e.name(), "result_poll");
        let req = http::Request::post("/session?delete=true&requestId=r")
            .body(())
            .unwrap();
        assert_eq!(classify_request(&req).0, Endpoint::Logout);
    }
}
