//! The fuzz targets' bodies, one function per target: each feeds arbitrary bytes to one parser of
//! the agent and asserts what must hold for any input (a panic or a failed assertion is a finding).
//!
//! The cargo-fuzz binaries under `fuzz_targets/` only call these functions, and the test
//! `tests/tests/fuzz_corpus.rs` includes this file to run every function over the saved corpus and
//! crash inputs under `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` on the stable
//! toolchain, so an input that once crashed a parser keeps being tried by `cargo xtask test`.
//!
//! No dependency beyond `snowtrail` and `serde_json`, so that the test crate can include it as is.

use snowtrail::proxy::transport::tunnel::{HeadError, parse_connect};
use snowtrail::snowflake::shaping::{LimitMode, Shape};
use snowtrail::snowflake::sql_api::{
    StatementStatus, parse_statement_request, parse_statement_response,
};
use snowtrail::snowflake::sql_api::{shape_answer, shape_partition};
use snowtrail::snowflake::{
    BodyError, QUERY_TAG_MAX_CHARS, RedactMode, classify, decode_body, driver_from_user_agent,
    hosts_to_learn, parse_abort_request, parse_login_request, parse_login_response,
    parse_monitoring_response, parse_query_request, parse_query_response, parse_renewal_response,
    parse_simple_response, parse_token_request, redact_sql, rewrite_login_tokens,
    rewrite_renewal_tokens, set_query_tag,
};
use snowtrail::tls::client_hello::{Peeked, peek};

/// A target's body: takes any bytes, panics on a finding.
pub type Check = fn(&[u8]);

/// Every target: its name (the cargo-fuzz binary and its corpus directory) and its body.
pub const TARGETS: &[(&str, Check)] = &[
    ("body", body),
    ("client_hello", client_hello),
    ("connect_request", connect_request),
    ("endpoint", endpoint),
    ("login_request", login_request),
    ("login_response", login_response),
    ("query_request", query_request),
    ("query_response", query_response),
    ("redact", redact),
    ("session", session),
    ("sql_api", sql_api),
];

const BODY_LIMIT: usize = 1 << 20;

/// A workload's CONNECT request to its proxy: a request that parses names a host with no
/// space, slash or `@` in it and a port other than 0, found in the input; it keeps the input as
/// its head and never shows its credential in `Debug`.
pub fn connect_request(data: &[u8]) {
    match parse_connect(data) {
        Ok(r) => {
            assert!(r.port != 0);
            assert!(!r.host.is_empty() && !r.host.contains(['/', ' ', '@']));
            assert_eq!(r.head, data);
            let text = String::from_utf8_lossy(data).to_ascii_lowercase();
            assert!(text.contains(&r.host), "{:?} is not in the input", r.host);
            // The credential never shows in `Debug`: it reads the same whatever the credential.
            let mut other = r.clone();
            other.authorization = other.authorization.as_ref().map(|_| "x".to_owned());
            assert_eq!(format!("{r:?}"), format!("{other:?}"));
        }
        Err(HeadError::NotConnect(_) | HeadError::Malformed(_)) => {}
        Err(e) => panic!("parsing a whole head gave {e:?}"),
    }
}

/// Body decoding: gzip under a limit never yields more than the limit.
pub fn body(data: &[u8]) {
    match decode_body(Some(b"gzip"), data, BODY_LIMIT) {
        Ok(body) => assert!(body.len() <= BODY_LIMIT),
        Err(BodyError::TooLarge { limit, .. }) => assert_eq!(limit, BODY_LIMIT),
        Err(_) => {}
    }
    if let Ok(body) = decode_body(None, data, BODY_LIMIT) {
        assert_eq!(body.len(), data.len());
    }
}

/// ClientHello peeking, over the whole input and over prefixes of it (the proxy peeks at the bytes
/// received so far, again as more arrive): never a panic; a verdict other than "incomplete" is the
/// same for every longer input; a server name is a lower-cased printable name found in the
/// handshake bytes; the ALPN offer is no longer than the input.
pub fn client_hello(data: &[u8]) {
    let whole = peek(data);
    let cuts = [
        data.len() / 2,
        data.len().saturating_sub(1),
        data.get(..2).map_or(0, |b| {
            usize::from(u16::from_be_bytes([b[0], b[1]])) % (data.len() + 1)
        }),
    ];
    for cut in cuts {
        let part = peek(&data[..cut]);
        assert!(
            part == Peeked::Incomplete || part == whole,
            "the first {cut} bytes said {part:?}, all {} say {whole:?}",
            data.len()
        );
    }
    if data.is_empty() {
        assert_eq!(whole, Peeked::Incomplete, "no bytes tell nothing yet");
    }
    let Peeked::Hello(hello) = whole else {
        return;
    };
    assert!(
        data.len() >= 5 && data[0] == 0x16 && data[1] == 0x03,
        "{data:?}"
    );
    if let Some(sni) = &hello.sni {
        assert!(!sni.is_empty() && !sni.ends_with('.'), "{sni:?}");
        assert!(
            sni.bytes()
                .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()),
            "{sni:?}"
        );
        let handshake = handshake_bytes(data).to_ascii_lowercase();
        assert!(
            handshake.windows(sni.len()).any(|w| w == sni.as_bytes()),
            "{sni:?} is not in the handshake"
        );
    }
    let offered: usize = hello.alpn.iter().map(|p| p.len() + 1).sum();
    assert!(offered <= data.len());
    assert!(hello.alpn.iter().all(|p| p.len() <= 255));
}

/// The handshake bytes of consecutive TLS handshake records, their headers taken off.
fn handshake_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 5 && rest[0] == 0x16 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let end = (5 + len).min(rest.len());
        out.extend_from_slice(&rest[5..end]);
        rest = &rest[end..];
    }
    out
}

/// Endpoint classification: any method, path and query string.
pub fn endpoint(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (method, rest) = text.split_once(' ').unwrap_or(("POST", text));
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let (endpoint, _params) = classify(method, path, query);
    let _ = endpoint.name();
}

/// Login request parsing; the parsed value's Debug never shows the token.
pub fn login_request(data: &[u8]) {
    if let Ok(req) = parse_login_request(data) {
        let dbg = format!("{req:?}");
        if let Some(token) = req.token_for_validation() {
            // Short tokens can occur in the rest of the Debug text by chance, and a token whose
            // text the request also carries in the open (a key, a plain value) may be printed there.
            if token.len() >= 12 && occurrences(data, token) <= 1 {
                assert!(!dbg.contains(token));
            }
        }
        let _ = req.driver(None);
    }
    if let Ok(ua) = std::str::from_utf8(data) {
        let _ = driver_from_user_agent(ua);
    }
}

/// How many of the JSON document's keys, strings and numbers (as text) contain `needle`: 1 when
/// only the secret itself holds it.
fn occurrences(data: &[u8], needle: &str) -> usize {
    fn walk(v: &serde_json::Value, needle: &str) -> usize {
        match v {
            serde_json::Value::String(s) => usize::from(s.contains(needle)),
            serde_json::Value::Number(n) => usize::from(n.to_string().contains(needle)),
            serde_json::Value::Array(items) => items.iter().map(|i| walk(i, needle)).sum(),
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| usize::from(k.contains(needle)) + walk(v, needle))
                .sum(),
            serde_json::Value::Bool(_) | serde_json::Value::Null => 0,
        }
    }
    serde_json::from_slice::<serde_json::Value>(data).map_or(usize::MAX, |v| walk(&v, needle))
}

/// Login response parsing and token rewriting: a rewritten response still parses, as the same
/// response.
pub fn login_response(data: &[u8]) {
    let parsed = parse_login_response(data);
    if let Ok((body, _upstream)) = rewrite_login_tokens(data, "agent-session", "agent-master")
        && let Ok(before) = parsed
    {
        let after = parse_login_response(&body).expect("a rewritten response parses");
        assert_eq!(before, after);
    }
}

/// Query request parsing and QUERY_TAG merging: a tagged request parses, with the same statement
/// and a tag within Snowflake's limit.
pub fn query_request(data: &[u8]) {
    let Ok(req) = parse_query_request(data) else {
        return;
    };
    let _ = format!("{req:?}");
    let mut agent = serde_json::Map::new();
    agent.insert("id".into(), "0199-fuzz".into());
    if let Ok((body, tag)) = set_query_tag(data, Some("session-tag"), &agent) {
        assert!(tag.chars().count() <= QUERY_TAG_MAX_CHARS);
        let again = parse_query_request(&body).expect("a tagged request parses");
        assert_eq!(again.sql_text, req.sql_text);
        assert_eq!(again.query_tag(), Some(tag.as_str()));
    }
}

/// Query response and monitoring parsing, and the storage hosts learned from a response.
pub fn query_response(data: &[u8]) {
    if let Ok(resp) = parse_query_response(data) {
        for host in hosts_to_learn(&resp) {
            assert!(!host.host.is_empty());
        }
        if let Some(stage) = &resp.stage_info {
            let _ = stage.derived_hosts();
        }
    }
    let _ = parse_monitoring_response(data);
}

/// SQL redaction in both modes: never panics, and redacting every literal never keeps more text
/// than it was given plus the replacement marks.
pub fn redact(data: &[u8]) {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let cred = redact_sql(sql, RedactMode::Credentials);
    let all = redact_sql(sql, RedactMode::AllLiterals);
    // Each replaced literal is at least two bytes and becomes five.
    assert!(cred.len() <= sql.len() * 3 + 5);
    assert!(all.len() <= sql.len() * 3 + 5);
    let _ = redact_sql(&all, RedactMode::AllLiterals);
}

/// Session upkeep parsing: token request and answer (with its rewrite), abort, plain envelopes.
pub fn session(data: &[u8]) {
    let _ = parse_token_request(data);
    let _ = parse_abort_request(data);
    let _ = parse_simple_response(data);
    if parse_renewal_response(data).is_ok()
        && let Ok((body, _)) = rewrite_renewal_tokens(data, "h1", "h2")
    {
        parse_renewal_response(&body).expect("a rewritten answer parses");
    }
}

/// The SQL API's request and answer: never a panic; a parsed request's statement is text the
/// input holds (when it has no escapes), and an answer is complete only under HTTP 200, in progress
/// under 202 or its code; its partitions are no more than the input could list.
pub fn sql_api(data: &[u8]) {
    if let Ok(r) = parse_statement_request(data)
        && !data.contains(&b'\\')
    {
        // Without escapes, the statement is the input's own text.
        let text = String::from_utf8_lossy(data);
        assert!(
            text.contains(&r.statement),
            "{:?} is not in the input",
            r.statement
        );
    }
    for status in [200u16, 202, 422] {
        if let Ok(r) = parse_statement_response(status, data) {
            match r.status {
                StatementStatus::Complete => assert_eq!(status, 200),
                StatementStatus::InProgress => {
                    assert!(status == 202 || r.code.as_deref() == Some("333334"))
                }
                StatementStatus::Failed => assert_eq!(status, 422),
            }
            assert!(r.partitions <= data.len());
        }
    }
    // Shaping an answer: a masked or cut answer still parses as an answer, with no more rows than
    // the limit; a partition shaped by a mask keeps its row count.
    let shape = Shape {
        mask: vec!["email".into(), "\"Name\"".into()],
        row_limit: Some((2, LimitMode::Truncate)),
    };
    if let Ok(shaped) = shape_answer(data, &shape)
        && let Some(body) = &shaped.body
    {
        let v: serde_json::Value = serde_json::from_slice(body).expect("a shaped answer is JSON");
        if let Some(rows) = v.get("data").and_then(serde_json::Value::as_array) {
            assert!(rows.len() <= 2);
        }
        if let Ok(before) = serde_json::from_slice::<serde_json::Value>(data)
            && let (Some(a), Some(b)) = (
                before.get("data").and_then(serde_json::Value::as_array),
                v.get("data").and_then(serde_json::Value::as_array),
            )
            && let Ok(p) = shape_partition(data, &shaped.partitions)
        {
            let p: serde_json::Value =
                serde_json::from_slice(&p).expect("a shaped partition is JSON");
            assert_eq!(p["data"].as_array().map(Vec::len), Some(a.len()));
            assert!(b.len() <= a.len());
        }
    }
}
