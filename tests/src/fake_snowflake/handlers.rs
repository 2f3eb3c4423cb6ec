//! Routing, and the session endpoints (login, token renewal, heartbeat, logout, telemetry) and the
//! fake stage (`/fs_bucket/...`): each takes the recorded request and answers with the envelope
//! real Snowflake sends, modelled field for field on the captured exchanges. The statement
//! endpoints are in `queries`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};

use super::queries::{
    abort, chunk, monitoring, query_request, result_poll, sql_api_cancel, sql_api_status,
    sql_api_submit,
};
use super::state::{Inner, RecordedRequest, Session, StagedFile, State};

pub use super::queries::CHUNK_KEY;
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

    /// A binary answer.
    pub fn bytes(status: u16, body: Vec<u8>) -> Reply {
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
        ("POST", "/api/v2/statements") => sql_api_submit(&mut inner, req, ctx),
        ("GET", p) if p.starts_with("/api/v2/statements/") => {
            let handle = p.trim_start_matches("/api/v2/statements/").to_owned();
            sql_api_status(&mut inner, req, &handle)
        }
        ("POST", p) if p.starts_with("/api/v2/statements/") && p.ends_with("/cancel") => {
            let handle = p
                .trim_start_matches("/api/v2/statements/")
                .trim_end_matches("/cancel")
                .to_owned();
            sql_api_cancel(&mut inner, req, &handle)
        }
        ("GET", p) if p.starts_with("/fake-stage-results/") => chunk(&inner, req, p),
        (m, p) if p.starts_with("/fs_bucket/") => stage_object(&mut inner, req, m, p),
        _ => Reply::text(404, "Not Found"),
    }
}

pub(crate) fn ok_null() -> Reply {
    Reply::json(&json!({"data": null, "code": null, "message": null, "success": true}))
}

pub(crate) fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

pub(crate) fn new_qid() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The token of `Authorization: Snowflake Token="..."`.
pub(crate) fn bearer(req: &RecordedRequest) -> Option<String> {
    let v = req.header("authorization")?;
    let rest = v.trim().strip_prefix("Snowflake")?.trim();
    let rest = rest.strip_prefix("Token=")?.trim();
    Some(rest.trim_matches('"').to_owned())
}

pub(crate) fn session_expired() -> Reply {
    Reply::json(&json!({
        "data": {"nextAction": "RENEW_SESSION"},
        "code": "390112",
        "message": "Your session has expired. Please renew.",
        "success": false
    }))
}

pub(crate) fn authenticate(inner: &Inner, req: &RecordedRequest) -> Result<Session, Reply> {
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
pub(crate) fn decode(v: &str) -> String {
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
            let token = field("TOKEN");
            if state.settings.jwt_keys.is_empty() {
                if !jwt_looks_valid(&token) {
                    return login_error("390144", "JWT token is invalid.");
                }
            } else {
                match verify_jwt(
                    &state.settings.jwt_keys,
                    &field("ACCOUNT_NAME"),
                    &user,
                    &token,
                ) {
                    Ok(()) => inner.jwt_verified.push(user.to_ascii_uppercase()),
                    Err(why) => {
                        inner.jwt_refused.push(why);
                        return login_error("390144", "JWT token is invalid.");
                    }
                }
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

/// A key-pair user's public key, as the fake checks JWTs against it.
#[derive(Debug, Clone)]
pub struct JwtKey {
    /// The RSA public key, PKCS#1 DER (what jsonwebtoken verifies with).
    pkcs1_der: Vec<u8>,
    /// `SHA256:` and the base64 SHA-256 of the DER SubjectPublicKeyInfo.
    fingerprint: String,
}

/// Reads `(login name, public key PEM)` pairs into the keys by upper-cased login name.
pub fn jwt_keys(
    pairs: &[(String, String)],
) -> anyhow::Result<std::collections::HashMap<String, JwtKey>> {
    use base64::engine::general_purpose::STANDARD;
    use rsa::pkcs1::EncodeRsaPublicKey as _;
    use rsa::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
    use sha2::Digest as _;
    let mut keys = std::collections::HashMap::new();
    for (user, pem) in pairs {
        let key = rsa::RsaPublicKey::from_public_key_pem(pem.trim())
            .map_err(|e| anyhow::anyhow!("public key of {user}: {e}"))?;
        let spki = key
            .to_public_key_der()
            .map_err(|e| anyhow::anyhow!("public key of {user}: {e}"))?;
        let pkcs1 = key
            .to_pkcs1_der()
            .map_err(|e| anyhow::anyhow!("public key of {user}: {e}"))?;
        keys.insert(
            user.to_ascii_uppercase(),
            JwtKey {
                pkcs1_der: pkcs1.as_bytes().to_vec(),
                fingerprint: format!("SHA256:{}", STANDARD.encode(sha2::Sha256::digest(spki))),
            },
        );
    }
    Ok(keys)
}

/// Checks a key-pair login JWT as Snowflake does: RS256 signature by the user's registered key,
/// `sub` = `ACCOUNT.USER`, `iss` = `ACCOUNT.USER.SHA256:<fingerprint>` (ACCOUNT upper-cased, cut
/// at its first dot), not expired, and valid for at most an hour. `Err` says why not.
fn verify_jwt(
    keys: &std::collections::HashMap<String, JwtKey>,
    account: &str,
    user: &str,
    token: &str,
) -> Result<(), String> {
    let user = user.to_ascii_uppercase();
    let key = keys
        .get(&user)
        .ok_or_else(|| format!("no public key registered for {user}"))?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.validate_aud = false;
    v.leeway = 0;
    v.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
    let data = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_rsa_der(&key.pkcs1_der),
        &v,
    )
    .map_err(|e| format!("signature or expiry: {e}"))?;
    let account = account
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let sub = format!("{account}.{user}");
    let iss = format!("{sub}.{}", key.fingerprint);
    let claim = |k: &str| data.claims.get(k).cloned().unwrap_or(Value::Null);
    if claim("sub") != Value::String(sub.clone()) {
        return Err(format!("sub is {}, expected {sub}", claim("sub")));
    }
    if claim("iss") != Value::String(iss.clone()) {
        return Err(format!("iss is {}, expected {iss}", claim("iss")));
    }
    let lifetime = claim("exp")
        .as_i64()
        .zip(claim("iat").as_i64())
        .map(|(exp, iat)| exp - iat);
    if !lifetime.is_some_and(|l| (1..=3600).contains(&l)) {
        return Err(format!("lifetime {lifetime:?} is not within an hour"));
    }
    Ok(())
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

/// Gzips `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if e.write_all(bytes).is_err() {
        return Vec::new();
    }
    e.finish().unwrap_or_default()
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
