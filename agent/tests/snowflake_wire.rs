//! The Snowflake protocol module against exchanges captured from real drivers (connector 4.8.1
//! and 5.2.0, Node snowflake-sdk 3.3.0) talking to a fake server.
//!
//! The fixtures under `tests/fixtures/snowflake-wire/` are copies of the shared wire captures: per
//! exchange a `.req.txt` (request line and headers), a `.req.json` (the body, already
//! gzip-decoded and pretty-printed) and a `.resp.json`. Where the driver gzipped the body
//! (`Content-Encoding: gzip`, all 4.x requests) the test gzips the JSON again and decodes it
//! through the module, as the proxy will.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use snowtrail::snowflake::encoding::decode_body;
use snowtrail::snowflake::envelope;
use snowtrail::snowflake::*;

const LIMIT: usize = 8 << 20;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snowflake-wire")
}

/// One captured request/response pair.
struct Exchange {
    name: String,
    req_txt: String,
    req_json: Option<Vec<u8>>,
    resp_json: Option<Vec<u8>>,
    resp_txt: String,
}

impl Exchange {
    fn load(dir: &str, n: u32) -> Exchange {
        let prefix = format!("{n:03}-");
        let mut stems: Vec<String> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|f| f.starts_with(&prefix) && f.ends_with(".req.txt"))
            .map(|f| f.trim_end_matches(".req.txt").to_owned())
            .collect();
        assert_eq!(stems.len(), 1, "{dir}/{prefix}*: {stems:?}");
        Exchange::from_stem(dir, &stems.remove(0))
    }

    fn from_stem(dir: &str, stem: &str) -> Exchange {
        let base = root().join(dir);
        let read = |ext: &str| std::fs::read(base.join(format!("{stem}.{ext}"))).ok();
        Exchange {
            name: format!("{dir}/{stem}"),
            req_txt: String::from_utf8(read("req.txt").unwrap()).unwrap(),
            req_json: read("req.json"),
            resp_json: read("resp.json"),
            resp_txt: read("resp.txt")
                .map(|b| String::from_utf8(b).unwrap())
                .unwrap_or_default(),
        }
    }

    fn all() -> Vec<Exchange> {
        let mut out = Vec::new();
        let mut dirs: Vec<String> = std::fs::read_dir(root())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|d| root().join(d).is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            let mut stems: Vec<String> = std::fs::read_dir(root().join(&dir))
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|f| f.strip_suffix(".req.txt").map(str::to_owned))
                .collect();
            stems.sort();
            out.extend(stems.iter().map(|s| Exchange::from_stem(&dir, s)));
        }
        out
    }

    fn request_line(&self) -> (http::Method, http::Uri) {
        let line = self.req_txt.lines().next().unwrap();
        let mut parts = line.split(' ');
        let method: http::Method = parts.next().unwrap().parse().unwrap();
        let uri: http::Uri = parts.next().unwrap().parse().unwrap();
        (method, uri)
    }

    fn classify(&self) -> (Endpoint, RequestParams) {
        let (m, u) = self.request_line();
        classify_uri(&m, &u)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.req_txt.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn user_agent(&self) -> Option<&str> {
        self.header("user-agent")
    }

    /// The body as it crossed the wire: the captured JSON, gzipped again when the driver had.
    fn wire_body(&self) -> Vec<u8> {
        let json = self.req_json.clone().unwrap_or_default();
        match self.header("content-encoding") {
            Some(e) if e.eq_ignore_ascii_case("gzip") => gzip(&json),
            _ => json,
        }
    }

    /// The request body decoded by the module, under the default request limit.
    fn body(&self) -> Vec<u8> {
        let enc = self.header("content-encoding").map(str::as_bytes);
        decode_body(enc, &self.wire_body(), LIMIT)
            .unwrap()
            .into_owned()
    }

    fn resp(&self) -> &[u8] {
        self.resp_json
            .as_deref()
            .unwrap_or_else(|| panic!("{}: no response body", self.name))
    }

    fn resp_status(&self) -> u16 {
        self.resp_txt
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// What the file name says the endpoint is.
fn expected_endpoint(name: &str) -> &'static str {
    let stem = name.rsplit('/').next().unwrap();
    let path = stem.splitn(3, '-').nth(2).unwrap();
    match path {
        "session_v1_login_request" => "login",
        "queries_v1_query_request" => "query",
        "session_token_request" => "token_request",
        "session_heartbeat" => "heartbeat",
        "session" => "logout",
        "telemetry_send" => "telemetry",
        p if p.starts_with("queries_") && p.ends_with("_abort_request") => "abort",
        p if p.starts_with("monitoring_queries_") => "monitoring",
        _ => "other",
    }
}

#[test]
fn every_captured_exchange_classifies_and_parses() {
    let all = Exchange::all();
    assert!(all.len() > 100, "fixtures missing: {}", all.len());
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for x in &all {
        let (endpoint, _) = x.classify();
        assert_eq!(endpoint.name(), expected_endpoint(&x.name), "{}", x.name);
        *counts.entry(endpoint.name()).or_default() += 1;
        let ok200 = x.resp_status() == 200;
        match endpoint {
            Endpoint::Login => {
                let req =
                    parse_login_request(&x.body()).unwrap_or_else(|e| panic!("{}: {e}", x.name));
                assert!(
                    req.account.is_some() && req.login_name.is_some(),
                    "{}",
                    x.name
                );
                let dbg = format!("{req:?}");
                assert!(!dbg.contains("\"snow\""), "{}: password in Debug", x.name);
                if let Some(t) = req.token_for_validation() {
                    assert!(!dbg.contains(t), "{}: token in Debug", x.name);
                }
                let resp = parse_login_response(x.resp()).unwrap();
                assert!(
                    resp.success && resp.has_session_token && resp.has_master_token,
                    "{}",
                    x.name
                );
                let (body, up) = rewrite_login_tokens(x.resp(), "agent-st", "agent-mt").unwrap();
                assert!(!up.session_token_for_brokering().is_empty());
                let again = parse_login_response(&body).unwrap();
                assert_eq!(
                    again, resp,
                    "{}: the rewrite changed more than the tokens",
                    x.name
                );
            }
            Endpoint::Query => {
                let req =
                    parse_query_request(&x.body()).unwrap_or_else(|e| panic!("{}: {e}", x.name));
                assert!(!req.sql_text.is_empty());
                // Tagging keeps the statement as it was.
                let mut agent = serde_json::Map::new();
                agent.insert("id".into(), "corr-1".into());
                let (tagged, tag) = set_query_tag(&x.body(), Some("session-tag"), &agent).unwrap();
                let again = parse_query_request(&tagged).unwrap();
                assert_eq!(again.query_tag(), Some(tag.as_str()));
                assert_eq!(again.sql_text, req.sql_text);
                assert_eq!(again.bindings, req.bindings);
                assert_eq!(again.sequence_id, req.sequence_id);
                if ok200 {
                    let resp = parse_query_response(x.resp())
                        .unwrap_or_else(|e| panic!("{}: {e}", x.name));
                    let _ = hosts_to_learn(&resp);
                    if resp.success {
                        assert!(
                            resp.query_id.is_some() || resp.stage_info.is_some(),
                            "{}",
                            x.name
                        );
                    }
                }
            }
            Endpoint::TokenRequest => {
                let req = parse_token_request(&x.body()).unwrap();
                assert!(req.is_renewal());
                assert!(parse_renewal_response(x.resp()).unwrap().success);
            }
            Endpoint::Heartbeat | Endpoint::Logout => {
                let resp = parse_simple_response(x.resp()).unwrap();
                assert_eq!(resp.success, ok200, "{}", x.name);
            }
            Endpoint::Abort { .. } => {
                parse_abort_request(&x.body()).unwrap();
                assert!(parse_simple_response(x.resp()).unwrap().success);
            }
            Endpoint::Monitoring { .. } if ok200 => {
                assert!(parse_monitoring_response(x.resp()).unwrap().success);
            }
            _ => {}
        }
    }
    for (endpoint, at_least) in [
        ("login", 15),
        ("query", 60),
        ("token_request", 2),
        ("heartbeat", 3),
        ("logout", 15),
        ("abort", 2),
        ("monitoring", 4),
        ("telemetry", 5),
        ("other", 8),
    ] {
        assert!(
            counts.get(endpoint).copied().unwrap_or(0) >= at_least,
            "{endpoint}: {counts:?}"
        );
    }
}

#[test]
fn password_logins_of_all_three_drivers() {
    // 5.2.0: identity body, login target in the query string, no request id.
    let x = Exchange::load("py5-session", 1);
    let (e, p) = x.classify();
    assert_eq!(e, Endpoint::Login);
    assert_eq!(p.login.database.as_deref(), Some("db1"));
    assert_eq!(p.login.schema.as_deref(), Some("schema1"));
    assert_eq!(
        (p.login.warehouse.as_deref(), p.login.role.as_deref()),
        (None, None)
    );
    assert_eq!(p.request_id, None);
    let r = parse_login_request(&x.body()).unwrap();
    assert_eq!(r.account.as_deref(), Some("xy12345"));
    assert_eq!(r.login_name.as_deref(), Some("fake"));
    assert_eq!(r.authenticator, Authenticator::Snowflake);
    assert_eq!(r.query_tag.as_deref(), Some("login-tag"));
    assert!(r.has_password && !r.has_token);
    let d = r.driver(x.user_agent()).unwrap();
    assert_eq!(
        (d.name.as_str(), d.version.as_deref()),
        ("PythonConnector", Some("5.2.0"))
    );
    let resp = parse_login_response(x.resp()).unwrap();
    assert_eq!(resp.session_id.as_deref(), Some("1000003"));
    assert_eq!(resp.validity_seconds, Some(3600));
    assert_eq!(resp.master_validity_seconds, Some(14400));
    assert_eq!(resp.session_info.database.as_deref(), Some("DB1"));
    assert_eq!(resp.session_info.schema.as_deref(), Some("SCHEMA1"));
    assert_eq!(resp.session_info.role.as_deref(), Some("PUBLIC"));
    assert_eq!(resp.session_info.warehouse, None);
    assert_eq!(resp.server_version.as_deref(), Some("10.0.0"));

    // 4.8.1: gzip body, `request_id`.
    let x = Exchange::load("py4-session", 1);
    assert_eq!(x.header("content-encoding"), Some("gzip"));
    let (_, p) = x.classify();
    assert_eq!(
        p.request_id.as_deref(),
        Some("cc4df619-be51-4467-a354-82127c283102")
    );
    let r = parse_login_request(&x.body()).unwrap();
    assert_eq!(r.account.as_deref(), Some("xy12345"));
    assert_eq!(r.client.as_ref().unwrap().version.as_deref(), Some("4.8.1"));
    assert_eq!(r.query_tag.as_deref(), Some("login-tag"));
    assert_eq!(r.secret_fields, vec!["PASSWORD"]);
    // The decoded limit applies to the decoded size, not the gzip size.
    let wire = x.wire_body();
    let decoded = x.body();
    assert!(wire.len() < decoded.len());
    assert!(matches!(
        decode_body(Some(b"gzip"), &wire, decoded.len() - 1),
        Err(BodyError::TooLarge { .. })
    ));

    // Node: AUTHENTICATOR SNOWFLAKE, requestId + request_guid, driver in the body.
    let x = Exchange::load("node-session", 1);
    let (_, p) = x.classify();
    assert_eq!(
        p.request_id.as_deref(),
        Some("d96460e9-fb45-4d0b-aa12-59470252bee5")
    );
    assert_eq!(
        p.request_guid.as_deref(),
        Some("17d8a47e-b65f-4d9c-93fc-6465646ac44c")
    );
    let r = parse_login_request(&x.body()).unwrap();
    assert_eq!(r.authenticator, Authenticator::Snowflake);
    assert_eq!(r.login_name.as_deref(), Some("fake"));
    let d = r.driver(None).unwrap();
    assert_eq!(
        (d.name.as_str(), d.version.as_deref()),
        ("JavaScript", Some("3.3.0"))
    );
    assert_eq!(
        driver_from_user_agent(x.user_agent().unwrap())
            .unwrap()
            .name,
        "JavaScript"
    );
}

#[test]
fn token_logins_of_both_python_drivers() {
    for (dir, jwt, oauth, pat, account) in [
        ("py5-auth", 1, 5, 9, "xy12345.us-east-1"),
        ("py4-auth", 1, 4, 7, "xy12345"),
    ] {
        let r = parse_login_request(&Exchange::load(dir, jwt).body()).unwrap();
        assert_eq!(r.account.as_deref(), Some(account), "{dir}");
        assert_eq!(r.login_name.as_deref(), Some("jwt_user"));
        assert_eq!(r.authenticator, Authenticator::KeyPair);
        assert_eq!(r.token_shape, Some(TokenShape::Jwt));
        assert!(!r.has_password);
        let claims = r.jwt_claims.clone().unwrap();
        assert_eq!(claims.alg.as_deref(), Some("RS256"));
        assert_eq!(claims.sub.as_deref(), Some("XY12345.JWT_USER"));
        assert!(
            claims
                .iss
                .as_deref()
                .unwrap()
                .starts_with("XY12345.JWT_USER.SHA256:")
        );
        let lifetime = claims.exp.unwrap() - claims.iat.unwrap();
        assert!(lifetime == 60 || lifetime == 120, "{dir}: {lifetime}");
        assert_eq!(r.token_for_validation().unwrap().split('.').count(), 3);

        let r = parse_login_request(&Exchange::load(dir, oauth).body()).unwrap();
        assert_eq!(r.authenticator, Authenticator::OAuth);
        assert_eq!(r.token_shape, Some(TokenShape::Opaque));
        assert_eq!(r.token_for_validation(), Some("my-oauth-access-token"));
        assert!(!format!("{r:?}").contains("my-oauth-access-token"));

        let r = parse_login_request(&Exchange::load(dir, pat).body()).unwrap();
        assert_eq!(r.authenticator, Authenticator::ProgrammaticAccessToken);
        assert_eq!(r.token_for_validation(), Some("my-pat-secret"));
        assert!(!format!("{r:?}").contains("my-pat-secret"));
    }
}

#[test]
fn query_requests() {
    // qmark binds, then describeOnly, then the executemany array bind (5.2.0).
    let r = parse_query_request(&Exchange::load("py5-session", 5).body()).unwrap();
    assert_eq!(r.sql_text, "insert into cap values (?, ?, ?, ?)");
    let b = r.bindings.unwrap();
    assert_eq!((b.count, b.rows), (4, None));
    assert_eq!(b.types, vec!["FIXED", "TEXT", "REAL", "TEXT"]);
    let r = parse_query_request(&Exchange::load("py5-session", 6).body()).unwrap();
    assert!(r.describe_only && r.bindings.is_none());
    let r = parse_query_request(&Exchange::load("py5-session", 7).body()).unwrap();
    let b = r.bindings.unwrap();
    assert_eq!((b.count, b.rows), (4, Some(300)));
    let r = parse_query_request(&Exchange::load("py5-session", 8).body()).unwrap();
    assert_eq!(r.query_tag(), Some("per-statement-tag"));
    assert_eq!(r.sequence_id, Some(1));
    let r = parse_query_request(&Exchange::load("py5-session", 12).body()).unwrap();
    assert!(r.async_exec);
    assert_eq!(r.query_submission_time, Some(1_795_379_223_187));

    // 4.8.1 bodies are gzip'd and sequenceId counts 1..11.
    let seq: Vec<u64> = (2..=15)
        .filter(|n| !(12..=14).contains(n))
        .map(|n| {
            let x = Exchange::load("py4-session", n);
            assert_eq!(x.header("content-encoding"), Some("gzip"));
            parse_query_request(&x.body()).unwrap().sequence_id.unwrap()
        })
        .collect();
    assert_eq!(seq, (1..=11).collect::<Vec<_>>());
    let r = parse_query_request(&Exchange::load("py4-session", 15).body()).unwrap();
    assert_eq!(
        r.sql_text,
        "select * from table(result_scan('f0b2e688-8f1b-4e96-a57a-259cf3604c5a'))"
    );

    // Node: sqlText, bindings and nothing else of note.
    let r = parse_query_request(&Exchange::load("node-session", 7).body()).unwrap();
    assert_eq!(r.sql_text, "insert into tn values (?, ?)");
    assert_eq!(r.bindings.unwrap().count, 2);
    assert_eq!((r.sequence_id, r.async_exec), (None, false));

    // 5.2.0 retries: same requestId, retryCount/retryReason.
    let (_, first) = Exchange::load("py5-putget", 9).classify();
    let (_, retry) = Exchange::load("py5-putget", 10).classify();
    assert_eq!(first.request_id, retry.request_id);
    assert_eq!((first.retry_count, retry.retry_count), (None, Some(1)));
    assert_eq!(retry.retry_reason.as_deref(), Some("500"));
}

#[test]
fn query_responses() {
    // Arrow, inline.
    let r = parse_query_response(Exchange::load("py5-session", 9).resp()).unwrap();
    assert_eq!(r.status, QueryStatus::Complete);
    assert_eq!(
        r.query_id.as_deref(),
        Some("9ce7454f-6be1-40bd-9841-6c2685366b03")
    );
    assert_eq!(r.statement_type, Some(StatementType::Select));
    assert_eq!(r.total, Some(301));
    assert_eq!(r.result_format, Some(ResultFormat::Arrow));
    assert_eq!(r.rowset_base64_len, Some(19520));
    let names: Vec<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["ID", "NAME", "AMOUNT", "TS"]);
    assert_eq!(r.columns[0].type_name, "fixed");
    assert_eq!(
        (r.final_database.as_deref(), r.final_schema.as_deref()),
        (Some("DB1"), Some("SCHEMA1"))
    );
    assert!(r.chunks.is_empty() && hosts_to_learn(&r).is_empty());

    // JSON rowset (Node).
    let r = parse_query_response(Exchange::load("node-session", 8).resp()).unwrap();
    assert_eq!(r.result_format, Some(ResultFormat::Json));
    assert_eq!(
        (r.rowset_rows, r.returned, r.total),
        (Some(301), Some(301), Some(301))
    );

    // DDL and COPY statement types.
    let r = parse_query_response(Exchange::load("py4-putget", 2).resp()).unwrap();
    assert_eq!(r.statement_type.unwrap().as_str(), "DDL");
    let r = parse_query_response(Exchange::load("py4-putget", 10).resp()).unwrap();
    assert_eq!(r.statement_type, Some(StatementType::Copy));

    // Errors, from all three drivers' sessions.
    for (dir, n, code, state) in [
        ("py5-session", 11, "002003", "42S02"),
        ("py4-session", 10, "002003", "42S02"),
        ("node-session", 9, "002003", "42S02"),
        ("py4-putget", 12, "001003", "42000"),
    ] {
        let r = parse_query_response(Exchange::load(dir, n).resp()).unwrap();
        assert_eq!(r.status, QueryStatus::Failed, "{dir}/{n}");
        assert_eq!(r.code.as_deref(), Some(code));
        assert_eq!(r.error_code.as_deref(), Some(code));
        assert_eq!(r.sql_state.as_deref(), Some(state));
    }
    let r = parse_query_response(Exchange::load("py5-putget", 9).resp()).unwrap();
    assert_eq!(
        (r.status, r.code.as_deref()),
        (QueryStatus::Failed, Some("261000"))
    );
    let r = parse_query_response(Exchange::load("py5-misc", 2).resp()).unwrap();
    assert_eq!(r.status, QueryStatus::SessionExpired);
    assert_eq!(r.code.as_deref(), Some(codes::SESSION_EXPIRED));
}

#[test]
fn chunks_and_their_hosts() {
    for (dir, qid, port) in [
        ("py5-chunks", "970dba3e-e6f3-41bb-9fc6-10875c0e9cb9", 8784),
        ("py4-chunks", "c689efbf-a582-4f4d-adb7-7d492345a633", 8785),
    ] {
        let x = Exchange::load(dir, 5);
        assert!(
            parse_query_request(&x.body())
                .unwrap()
                .sql_text
                .contains("/*sf_chunks*/")
        );
        let r = parse_query_response(x.resp()).unwrap();
        assert_eq!(r.query_id.as_deref(), Some(qid));
        assert_eq!(r.total, Some(350));
        assert!(r.has_chunk_keys);
        let rows: Vec<u64> = r.chunks.iter().map(|c| c.row_count.unwrap()).collect();
        assert_eq!(rows, [100, 100, 50]);
        assert_eq!(r.chunks[0].uncompressed_size, Some(2664));
        assert_eq!(r.chunks[2].compressed_size, Some(687));
        assert_eq!(r.chunks[1].url.path, format!("/fake-stage-results/{qid}/1"));
        let dbg = format!("{r:?}");
        assert!(
            !dbg.contains("X-Amz-Signature") && !dbg.contains("a2tra2tr"),
            "{dbg}"
        );
        let hosts = hosts_to_learn(&r);
        assert_eq!(
            hosts,
            vec![LearnedHost {
                host: "127.0.0.1".into(),
                port: Some(port),
                source: HostSource::ChunkUrl
            }]
        );
        // The chunk GETs that follow are not Snowflake endpoints, and carry no Authorization.
        let get = Exchange::load(dir, 6);
        assert_eq!(get.classify().0, Endpoint::Other);
        assert_eq!(get.header("authorization"), None);
    }
}

#[test]
fn put_stage_info() {
    for (dir, n, port) in [("py5-putget", 5, 8786), ("py4-putget", 5, 8787)] {
        let r = parse_query_response(Exchange::load(dir, n).resp()).unwrap();
        assert_eq!(r.command, Some(FileCommand::Upload));
        assert_eq!(r.src_locations, vec!["client/data/upload/data1.csv"]);
        let s = r.stage_info.as_ref().unwrap();
        assert_eq!(s.location_type, LocationType::Gcs);
        assert_eq!(s.location.as_deref(), Some("DB1.SCHEMA1.STG1/"));
        assert_eq!(s.region.as_deref(), Some("us-central1"));
        assert!(!s.has_credentials());
        let url = s.presigned_url.as_ref().unwrap();
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", Some(port)));
        assert_eq!(url.path, "/fs_bucket/DB1/SCHEMA1/STG1/data1.csv");
        assert_eq!(
            hosts_to_learn(&r),
            vec![LearnedHost {
                host: "127.0.0.1".into(),
                port: Some(port),
                source: HostSource::PresignedUrl
            }]
        );
    }
    // Without the presigned URL the GCS host forms are derived from the same stage.
    let mut json: serde_json::Value =
        serde_json::from_slice(Exchange::load("py5-putget", 5).resp()).unwrap();
    json["data"]["stageInfo"]["presignedUrl"] = serde_json::Value::Null;
    json["data"]["stageInfo"]["location"] = "sfc-gcs-bucket/stages/abc/".into();
    let r = parse_query_response(json.to_string().as_bytes()).unwrap();
    let hosts: Vec<String> = hosts_to_learn(&r).into_iter().map(|h| h.host).collect();
    assert_eq!(
        hosts,
        [
            "storage.googleapis.com",
            "sfc-gcs-bucket.storage.googleapis.com",
            "storage.us-central1.rep.googleapis.com"
        ]
    );
}

#[test]
fn async_statement_and_monitoring() {
    let x = Exchange::load("py4-session", 11);
    assert!(parse_query_request(&x.body()).unwrap().async_exec);
    let qid = parse_query_response(x.resp()).unwrap().query_id.unwrap();
    assert_eq!(qid, "f0b2e688-8f1b-4e96-a57a-259cf3604c5a");
    let m = Exchange::load("py4-session", 12);
    assert_eq!(m.classify().0, Endpoint::Monitoring { query_id: qid });
    let r = parse_monitoring_response(m.resp()).unwrap();
    assert_eq!(r.queries[0].status.as_deref(), Some("SUCCESS"));
    // 5.2.0's double slash.
    let m = Exchange::load("py5-session", 13);
    assert_eq!(
        m.classify().0,
        Endpoint::Monitoring {
            query_id: "90e2c28c-d5bb-42ae-b700-7d9033aa54a5".into()
        }
    );
}

#[test]
fn renewal_heartbeat_abort_logout() {
    // 5.2.0: 390112, renewal with the master token, retry with the same requestId.
    let expired = Exchange::load("py5-misc", 2);
    let renew = Exchange::load("py5-misc", 3);
    let retry = Exchange::load("py5-misc", 4);
    assert_eq!(renew.classify().0, Endpoint::TokenRequest);
    let t = parse_token_request(&renew.body()).unwrap();
    assert!(t.is_renewal());
    assert_eq!(
        t.old_session_token_for_renewal(),
        Some("LTv-mpBpC_Bhf5dCfn0SmMLCBsWUnSHJlgrmBhC7afk")
    );
    assert!(!format!("{t:?}").contains("LTv-mpBpC"));
    let r = parse_renewal_response(renew.resp()).unwrap();
    assert_eq!(
        (r.session_validity_seconds, r.master_validity_seconds),
        (Some(3600), Some(14400))
    );
    let (_, up) = rewrite_renewal_tokens(renew.resp(), "h-st", "h-mt").unwrap();
    assert_eq!(
        up.session_token_for_brokering(),
        "xTfai22R2Li7vCht1kQQ5ZREJHP15VYbzIVm7rppKIM"
    );
    let (a, b) = (expired.classify().1, retry.classify().1);
    assert_eq!(a.request_id, b.request_id);
    assert_ne!(a.request_guid, b.request_guid);

    // 4.8.1: gzip'd renewal, heartbeat with requestId, 4.x abort body.
    let t = parse_token_request(&Exchange::load("py4-misc", 3).body()).unwrap();
    assert_eq!(
        t.old_session_token_for_renewal(),
        Some("pvwJO5fbxOl1oGZyr5kVDOey-hcNgcQdEvH-imbvAX4")
    );
    let hb = Exchange::load("py4-misc", 5);
    assert_eq!(hb.classify().0, Endpoint::Heartbeat);
    assert!(hb.classify().1.request_id.is_some());
    assert!(parse_simple_response(hb.resp()).unwrap().success);
    let ab = Exchange::load("py4-misc", 6);
    assert_eq!(ab.classify().0, Endpoint::Abort { query_id: None });
    let a = parse_abort_request(&ab.body()).unwrap();
    assert_eq!(
        a.request_id.as_deref(),
        Some("00000000-0000-4000-8000-000000000000")
    );
    assert_eq!(a.sql_text.as_deref(), Some("select 1"));

    // 5.2.0 abort: the query id is in the path, the body is {}.
    let ab = Exchange::load("py5-misc", 5);
    assert_eq!(
        ab.classify().0,
        Endpoint::Abort {
            query_id: Some("01b2c3d4-0000-0000-0000-000000000001".into())
        }
    );
    assert_eq!(parse_abort_request(&ab.body()).unwrap().request_id, None);

    // 5.2.0 heartbeat has no query string and no body; one without a token gets 390103.
    assert_eq!(
        Exchange::load("py5-heartbeat", 2).classify().0,
        Endpoint::Heartbeat
    );
    let r = parse_simple_response(Exchange::load("tls-system", 8).resp()).unwrap();
    assert_eq!((r.success, r.code.as_deref()), (false, Some("390103")));

    // Logout, all three drivers.
    for (dir, n) in [
        ("py5-session", 15),
        ("py4-session", 16),
        ("node-session", 10),
    ] {
        let x = Exchange::load(dir, n);
        let (e, p) = x.classify();
        assert_eq!(e, Endpoint::Logout, "{dir}");
        assert!(p.delete);
        assert!(parse_simple_response(x.resp()).unwrap().success);
    }
}

#[test]
fn agent_answers_read_like_snowflake_answers() {
    // The agent's error envelope has the fields of the captured one, and the same types.
    let captured: serde_json::Value =
        serde_json::from_slice(Exchange::load("py5-session", 11).resp()).unwrap();
    let ours: serde_json::Value = serde_json::from_slice(
        &envelope::query_error(
            &Refusal::PolicyDenied {
                rule: "r".into(),
                message: None,
            },
            "q-1",
        )
        .body,
    )
    .unwrap();
    for key in ["code", "message", "success"] {
        assert_eq!(
            std::mem::discriminant(&captured[key]),
            std::mem::discriminant(&ours[key]),
            "{key}"
        );
    }
    for key in ["errorCode", "sqlState"] {
        assert!(ours["data"][key].is_string() && captured["data"][key].is_string());
    }
    let hold = envelope::in_progress("hold-1", &envelope::result_url("hold-1"));
    let r = parse_query_response(&hold.body).unwrap();
    assert_eq!(r.status, QueryStatus::InProgress);
    assert_eq!(
        classify("GET", r.get_result_url.as_deref().unwrap(), None).0,
        Endpoint::ResultPoll {
            query_id: "hold-1".into()
        }
    );
}
