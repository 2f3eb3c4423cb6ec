//! The fake Snowflake against the three real drivers (connector 4.8.1, connector 5.2.0, Node sdk
//! 3.3.0), each over TLS on :443 of its own 127.77.1.x address, with the account host and the
//! storage host mapped there in a private mount namespace. Each test logs in, selects, inserts
//! with bindings, hits an error, reads a chunked result, renews its session token on 390112, waits
//! out a slow statement by polling, logs out, and checks what reached the fake.
//!
//! Needs root (for `unshare -m` and port 443) and the drivers `cargo xtask setup` installs; a
//! missing driver fails the test with a message naming `cargo xtask setup`.

use std::net::SocketAddr;

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use snowtrail_tests::fake_snowflake::drivers::{self, Driver};
use snowtrail_tests::fake_snowflake::{
    ACCOUNT_HOST, FakeOptions, FakeSnowflake, RecordedRequest, handlers::CHUNK_KEY,
};

/// The storage host chunk and stage URLs name.
const STORAGE_HOST: &str = "stage.fake-snowflake.test";
/// Rows of a `/*sf_chunks*/` result.
const CHUNKED_ROWS: usize = 350;

struct Run {
    fake: FakeSnowflake,
    lines: Vec<Value>,
    _dir: tempfile::TempDir,
}

impl Run {
    fn statement(&self, sql: &str) -> anyhow::Result<&Value> {
        self.lines
            .iter()
            .find(|l| l["step"] == "statement" && l["sql"] == sql)
            .with_context(|| format!("no output for {sql:?} in {:#?}", self.lines))
    }

    fn ok(&self, sql: &str) -> anyhow::Result<&Value> {
        let l = self.statement(sql)?;
        ensure!(l.get("error").is_none(), "{sql:?} failed: {l}");
        Ok(l)
    }
}

fn start_fake(ip: [u8; 4], dir: &std::path::Path) -> anyhow::Result<FakeSnowflake> {
    FakeSnowflake::start(FakeOptions {
        addr: SocketAddr::from((ip, 443)),
        tls: true,
        hosts: vec![
            ACCOUNT_HOST.to_owned(),
            "*.snowflakecomputing.com".to_owned(),
            STORAGE_HOST.to_owned(),
        ],
        ca_dir: dir.join("ca"),
        storage_host: Some(STORAGE_HOST.to_owned()),
        ..FakeOptions::default()
    })
}

/// Runs one driver session with `args` (options, then statements) against a fresh fake.
fn session(driver: Driver, ip: [u8; 4], args: &[&str]) -> anyhow::Result<Run> {
    let dir = tempfile::Builder::new()
        .prefix("snowtrail-fake-sf-")
        .tempdir()?;
    let fake = start_fake(ip, dir.path())?;
    let lines = run_driver(driver, &fake, dir.path(), args)?;
    Ok(Run {
        fake,
        lines,
        _dir: dir,
    })
}

fn run_driver(
    driver: Driver,
    fake: &FakeSnowflake,
    dir: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<Vec<Value>> {
    let hosts = drivers::write_hosts_file(dir, fake.addr().ip(), &[ACCOUNT_HOST, STORAGE_HOST])?;
    let mut all = vec!["--host".to_owned(), ACCOUNT_HOST.to_owned()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let out = drivers::session_command(driver, &hosts, fake.ca_pem_path(), &all)?
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", driver.name()))?;
    let lines = drivers::json_lines(&out.stdout);
    if lines.is_empty() {
        bail!(
            "{} printed nothing ({}):\n{}\n{}",
            driver.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(lines)
}

const SELECT_1: &str = "select 1";
const CUSTOMERS: &str = "select * from customers";
const CREATE: &str = "create or replace table t1 (id int, name varchar)";
const INSERT: &str =
    r#"{"sql": "insert into t1 values (?, ?)", "params": [7, "seven"], "tag": "fake-test-tag"}"#;
const SELECT_T1: &str = "select * from t1";
const MISSING: &str = "select * from no_such_table";
const CHUNKED: &str = "/*sf_chunks*/ select id, name from big";
const EXPIRE: &str = "/*expire_token*/ select 7 as renewed";
const SLOW: &str = "/*slow:3*/ select 42 as answer";
const DROP: &str = "drop table t1";
const ARROW: &str = "/*arrow*/ select * from customers";

fn script(driver: Driver) -> Vec<&'static str> {
    let mut s = vec![
        SELECT_1, CUSTOMERS, CREATE, INSERT, SELECT_T1, MISSING, CHUNKED, EXPIRE, SLOW, DROP,
    ];
    if driver != Driver::Node {
        s.push(ARROW);
    }
    s
}

fn requests_matching<'a>(
    reqs: &'a [RecordedRequest],
    f: impl Fn(&RecordedRequest) -> bool + 'a,
) -> Vec<&'a RecordedRequest> {
    reqs.iter().filter(|r| f(r)).collect()
}

/// Runs the whole script with `driver` and checks the driver's view and the fake's log.
fn full_session(driver: Driver, ip: [u8; 4]) -> anyhow::Result<()> {
    let run = session(driver, ip, &script(driver))?;
    let first = &run.lines[0];
    ensure!(
        first["step"] == "connect" && first["ok"] == true,
        "login failed: {first}"
    );
    ensure!(
        run.lines
            .last()
            .is_some_and(|l| l["step"] == "close" && l["ok"] == true),
        "no clean close: {:#?}",
        run.lines
    );

    // What the driver saw.
    ensure!(run.ok(SELECT_1)?["rows"] == serde_json::json!([[1]]));
    let customers = run.ok(CUSTOMERS)?;
    ensure!(customers["columns"] == serde_json::json!(["ID", "NAME", "EMAIL"]));
    ensure!(
        customers["rows"].as_array().map(Vec::len) == Some(3),
        "{customers}"
    );
    ensure!(run.ok("insert into t1 values (?, ?)")?["rowcount"] == 1);
    ensure!(run.ok(SELECT_T1)?["rows"] == serde_json::json!([[7, "seven"]]));
    let missing = run.statement(MISSING)?;
    let err = &missing["error"];
    ensure!(err["errno"] == 2003, "{missing}");
    if driver != Driver::Py5 || !err["sqlstate"].is_null() {
        ensure!(err["sqlstate"] == "42S02", "{missing}");
    }
    ensure!(
        err["sfqid"].is_string(),
        "the error has no query id: {missing}"
    );
    let chunked = run.ok(CHUNKED)?;
    let rows = chunked["rows"].as_array().context("chunked rows")?;
    ensure!(
        rows.len() == CHUNKED_ROWS,
        "{} of {CHUNKED_ROWS} rows",
        rows.len()
    );
    ensure!(
        rows.iter().enumerate().all(|(i, r)| r[0] == i + 1),
        "rows out of order"
    );
    ensure!(run.ok(EXPIRE)?["rows"] == serde_json::json!([[7]]));
    let slow = run.ok(SLOW)?;
    ensure!(slow["rows"] == serde_json::json!([[42]]));
    run.ok(DROP)?;
    if driver != Driver::Node {
        ensure!(run.ok(ARROW)?["rows"] == customers["rows"]);
    }

    // What reached the fake.
    let reqs = run.fake.requests();
    let logins = requests_matching(&reqs, |r| r.path == "/session/v1/login-request");
    ensure!(logins.len() == 1, "{} logins", logins.len());
    let login = logins[0].json().context("login body")?;
    ensure!(login["data"]["LOGIN_NAME"] == "fake" && login["data"]["PASSWORD"] == "snow");
    let insert = requests_matching(&reqs, |r| {
        r.sql_text().as_deref() == Some("insert into t1 values (?, ?)")
    });
    let body = insert
        .last()
        .and_then(|r| r.json())
        .context("insert reached no one")?;
    ensure!(body["bindings"]["1"]["value"] == "7", "{body}");
    ensure!(body["bindings"]["2"]["value"] == "seven", "{body}");
    if driver != Driver::Node {
        ensure!(body["parameters"]["QUERY_TAG"] == "fake-test-tag", "{body}");
    }
    ensure!(run.fake.sql_texts().iter().any(|s| s == MISSING));

    let chunk_gets = requests_matching(&reqs, |r| r.path.starts_with("/fake-stage-results/"));
    ensure!(
        chunk_gets.len() == 3,
        "{} chunk downloads",
        chunk_gets.len()
    );
    for g in &chunk_gets {
        ensure!(g.header("x-amz-server-side-encryption-customer-key") == Some(CHUNK_KEY));
        ensure!(
            g.header("authorization").is_none(),
            "a chunk GET carried Authorization"
        );
        ensure!(
            g.host.starts_with(STORAGE_HOST),
            "chunk fetched from {}",
            g.host
        );
    }

    let renewals = requests_matching(&reqs, |r| r.path == "/session/token-request");
    ensure!(renewals.len() == 1, "{} renewals", renewals.len());
    let renewal = renewals[0].json().context("renewal body")?;
    ensure!(renewal["requestType"] == "RENEW", "{renewal}");
    let expired = requests_matching(&reqs, |r| r.sql_text().as_deref() == Some(EXPIRE));
    ensure!(
        expired.len() == 2,
        "the expired statement was sent {} times",
        expired.len()
    );
    ensure!(
        expired[0].query_param("requestId") == expired[1].query_param("requestId"),
        "the retry after renewal changed its requestId"
    );

    let slow_qid = slow["sfqid"].as_str().context("slow statement id")?;
    let polls = requests_matching(&reqs, |r| {
        r.method == "GET" && r.path == format!("/queries/{slow_qid}/result")
    });
    ensure!(
        polls.len() == 3,
        "{} polls of the slow statement",
        polls.len()
    );

    let logouts = requests_matching(&reqs, |r| {
        r.path == "/session" && r.query_param("delete").as_deref() == Some("true")
    });
    ensure!(logouts.len() == 1, "{} logouts", logouts.len());

    let expect_version = if driver == Driver::Py5 {
        "HTTP/2.0"
    } else {
        "HTTP/1.1"
    };
    for q in requests_matching(&reqs, RecordedRequest::is_query) {
        ensure!(
            q.host.starts_with(ACCOUNT_HOST),
            "a query went to {}",
            q.host
        );
        ensure!(
            q.version == expect_version,
            "{} sent a query over {}",
            driver.name(),
            q.version
        );
    }

    // A wrong password is an authentication failure.
    let dir = tempfile::tempdir()?;
    let lines = run_driver(
        driver,
        &run.fake,
        dir.path(),
        &["--password", "wrong-password"],
    )?;
    let connect = &lines[0];
    ensure!(
        connect["step"] == "connect" && connect["ok"] == false,
        "{connect}"
    );
    ensure!(connect["error"]["errno"] == 390_100, "{connect}");
    Ok(())
}

#[test]
fn connector_4_8_1_session() -> anyhow::Result<()> {
    full_session(Driver::Py4, [127, 77, 1, 4])
}

#[test]
fn connector_5_2_0_session_over_http2() -> anyhow::Result<()> {
    full_session(Driver::Py5, [127, 77, 1, 5])
}

#[test]
fn node_sdk_3_3_0_session() -> anyhow::Result<()> {
    full_session(Driver::Node, [127, 77, 1, 6])
}

/// Key pair (JWT), OAuth and programmatic access token logins, each followed by a statement.
fn authenticators(driver: Driver, ip: [u8; 4]) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("snowtrail-fake-sf-auth-")
        .tempdir()?;
    let fake = start_fake(ip, dir.path())?;
    for (auth, token) in [
        ("SNOWFLAKE_JWT", None),
        ("OAUTH", Some("oauth-access-token")),
        ("PROGRAMMATIC_ACCESS_TOKEN", Some("pat-secret")),
    ] {
        fake.clear_requests();
        let mut args = vec!["--authenticator", auth];
        if let Some(t) = token {
            args.extend(["--token", t]);
        }
        args.push(SELECT_1);
        let lines = run_driver(driver, &fake, dir.path(), &args)?;
        ensure!(lines[0]["ok"] == true, "{auth}: {:#?}", lines);
        ensure!(
            lines
                .iter()
                .any(|l| l["sql"] == SELECT_1 && l["rows"] == serde_json::json!([[1]])),
            "{auth}: {lines:#?}"
        );
        let login = fake
            .requests()
            .into_iter()
            .find(|r| r.path == "/session/v1/login-request")
            .and_then(|r| r.json())
            .context("no login")?;
        let data = &login["data"];
        ensure!(
            data["AUTHENTICATOR"]
                .as_str()
                .map(str::to_ascii_uppercase)
                .as_deref()
                == Some(auth),
            "{auth}: {data}"
        );
        match token {
            Some(t) => ensure!(data["TOKEN"] == t, "{auth}: {data}"),
            None => ensure!(
                data["TOKEN"]
                    .as_str()
                    .is_some_and(|t| t.split('.').count() == 3),
                "no JWT: {data}"
            ),
        }
    }
    Ok(())
}

#[test]
fn connector_4_8_1_authenticators() -> anyhow::Result<()> {
    authenticators(Driver::Py4, [127, 77, 1, 7])
}

#[test]
fn connector_5_2_0_authenticators() -> anyhow::Result<()> {
    authenticators(Driver::Py5, [127, 77, 1, 8])
}

/// Sends one raw HTTP/1.1 request and returns the status line and the body.
fn raw_http(addr: SocketAddr, head: &str, body: &[u8]) -> anyhow::Result<(String, Vec<u8>)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.lines().next().unwrap_or("").to_owned();
    Ok((status, out[split + 4..].to_vec()))
}

/// Plain-HTTP mode: a gzip'd login body is decoded and logged, a query runs with the token it
/// gave, the double-slash monitoring form answers, and an oversized body is refused with 413.
#[test]
fn plain_http_gzip_bodies_and_limits() -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = tempfile::tempdir()?;
    let fake = FakeSnowflake::start(FakeOptions {
        tls: false,
        ca_dir: dir.path().join("ca"),
        max_body_bytes: 64 << 10,
        ..FakeOptions::default()
    })?;
    let addr = fake.addr();
    let login = br#"{"data":{"LOGIN_NAME":"fake","PASSWORD":"snow","ACCOUNT_NAME":"xy12345"}}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(login)?;
    let gz = gz.finish()?;
    let (status, body) = raw_http(
        addr,
        &format!(
            "POST /session/v1/login-request?databaseName=db1 HTTP/1.1\r\nhost: {ACCOUNT_HOST}\r\n\
             content-type: application/json\r\ncontent-encoding: gzip\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            gz.len()
        ),
        &gz,
    )?;
    ensure!(status.contains("200"), "{status}");
    let v: Value = serde_json::from_slice(&body)?;
    ensure!(v["success"] == true, "{v}");
    for field in [
        "token",
        "masterToken",
        "sessionId",
        "validityInSeconds",
        "masterValidityInSeconds",
    ] {
        ensure!(
            !v["data"][field].is_null(),
            "login answer lacks {field}: {v}"
        );
    }
    ensure!(v["data"]["sessionInfo"]["databaseName"] == "DB1", "{v}");
    let token = v["data"]["token"].as_str().context("token")?;
    let logged = fake.requests();
    ensure!(logged[0].body == login, "the log holds the decoded body");
    ensure!(logged[0].header("content-encoding") == Some("gzip"));

    let q = br#"{"sqlText":"select 'x' as a, 2 as b","asyncExec":true}"#;
    let (_, body) = raw_http(
        addr,
        &format!(
            "POST /queries/v1/query-request?requestId=r1 HTTP/1.1\r\nhost: {ACCOUNT_HOST}\r\n\
             authorization: Snowflake Token=\"{token}\"\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            q.len()
        ),
        q,
    )?;
    let v: Value = serde_json::from_slice(&body)?;
    ensure!(v["code"] == "333334", "{v}");
    let qid = v["data"]["queryId"].as_str().context("queryId")?;
    let (_, body) = raw_http(
        addr,
        &format!(
            "GET /monitoring/queries//{qid} HTTP/1.1\r\nhost: {ACCOUNT_HOST}\r\n\
             authorization: Snowflake Token=\"{token}\"\r\nconnection: close\r\n\r\n"
        ),
        b"",
    )?;
    let v: Value = serde_json::from_slice(&body)?;
    ensure!(v["data"]["queries"][0]["status"] == "SUCCESS", "{v}");
    let (_, body) = raw_http(
        addr,
        &format!(
            "GET /queries/{qid}/result HTTP/1.1\r\nhost: {ACCOUNT_HOST}\r\n\
             authorization: Snowflake Token=\"{token}\"\r\nconnection: close\r\n\r\n"
        ),
        b"",
    )?;
    let v: Value = serde_json::from_slice(&body)?;
    ensure!(
        v["data"]["rowset"] == serde_json::json!([["x", "2"]]),
        "{v}"
    );
    ensure!(
        v["data"]["returned"] == 1 && v["data"]["queryId"] == qid,
        "{v}"
    );

    // A slow statement aborted by its query id (5.x form) answers "canceled" to its poll; a
    // heartbeat and the 4.x abort form answer success.
    let auth = format!("authorization: Snowflake Token=\"{token}\"\r\n");
    let post = |path: &str, body: &[u8]| -> anyhow::Result<Value> {
        let (_, b) = raw_http(
            addr,
            &format!(
                "POST {path} HTTP/1.1\r\nhost: {ACCOUNT_HOST}\r\n{auth}content-length: {}\r\n\
                 connection: close\r\n\r\n",
                body.len()
            ),
            body,
        )?;
        Ok(serde_json::from_slice(&b)?)
    };
    let v = post(
        "/queries/v1/query-request?requestId=r2",
        br#"{"sqlText":"/*slow:5*/ select 1"}"#,
    )?;
    ensure!(v["code"] == "333333", "{v}");
    let slow_qid = v["data"]["queryId"].as_str().context("queryId")?.to_owned();
    ensure!(post(&format!("/queries/{slow_qid}/abort-request"), b"{}")?["success"] == true);
    let (_, b) = raw_http(
        addr,
        &format!(
            "GET /queries/{slow_qid}/result HTTP/1.1\r\nhost: {ACCOUNT_HOST}\r\n{auth}\
             connection: close\r\n\r\n"
        ),
        b"",
    )?;
    let v: Value = serde_json::from_slice(&b)?;
    ensure!(v["code"] == "000604", "{v}");
    ensure!(post("/session/heartbeat", b"")?["success"] == true);
    let v = post(
        "/queries/v1/abort-request",
        br#"{"sqlText":"select 1","requestId":"r9"}"#,
    )?;
    ensure!(v["success"] == true, "{v}");

    let big = vec![b' '; 65 << 10];
    let (status, _) = raw_http(
        addr,
        &format!(
            "POST /queries/v1/query-request HTTP/1.1\r\nhost: {ACCOUNT_HOST}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            big.len()
        ),
        &big,
    )?;
    ensure!(status.contains("413"), "{status}");
    Ok(())
}

/// PUT to the fake stage (presigned GCS-style URL on the storage host), LIST, GET back.
fn stage_transfer(driver: Driver, ip: [u8; 4]) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("snowtrail-fake-sf-stage-")
        .tempdir()?;
    let fake = start_fake(ip, dir.path())?;
    let file = dir.path().join("data1.csv");
    std::fs::write(&file, "1,one\n2,two\n")?;
    let down = dir.path().join("down");
    std::fs::create_dir_all(&down)?;
    let put = format!("put file://{} @stg1", file.display());
    let get = format!("get @stg1 file://{}/", down.display());
    let lines = run_driver(driver, &fake, dir.path(), &[&put, "list @stg1", &get])?;
    let find = |sql: &str| {
        lines
            .iter()
            .find(|l| l["sql"] == sql && l.get("error").is_none())
            .with_context(|| format!("{sql}: {lines:#?}"))
    };
    ensure!(find(&put)?["rows"][0][6] == "UPLOADED", "{lines:#?}");
    ensure!(
        find("list @stg1")?["rows"][0][0] == "stg1/data1.csv.gz",
        "{lines:#?}"
    );
    ensure!(find(&get)?["rows"][0][2] == "DOWNLOADED", "{lines:#?}");
    let got = std::fs::read(down.join("data1.csv.gz"))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&got[..]), &mut text)?;
    ensure!(text == "1,one\n2,two\n", "{text:?}");
    let reqs = fake.requests();
    let upload = reqs
        .iter()
        .find(|r| r.method == "PUT" && r.path.starts_with("/fs_bucket/"))
        .context("no upload reached the stage")?;
    ensure!(upload.host.starts_with(STORAGE_HOST), "{}", upload.host);
    ensure!(upload.header("x-goog-meta-sfc-digest").is_some());
    Ok(())
}

#[test]
fn connector_4_8_1_put_get() -> anyhow::Result<()> {
    stage_transfer(Driver::Py4, [127, 77, 1, 9])
}

#[test]
fn connector_5_2_0_put_get() -> anyhow::Result<()> {
    stage_transfer(Driver::Py5, [127, 77, 1, 10])
}
