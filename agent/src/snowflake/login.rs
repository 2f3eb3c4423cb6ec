//! `POST /session/v1/login-request`: who logs in, how, with which driver; and what Snowflake
//! answered.
//!
//! The request body is `{"data":{...}}` with upper-case keys (docs/protocol.md, "Login body"). Its
//! secrets (`secrets::LOGIN_SECRET_FIELDS`: PASSWORD, TOKEN, PASSCODE, PRIVATE_KEY,
//! RAW_SAML_RESPONSE, PROOF_KEY) are recorded only as present or absent, and its session
//! parameters are recorded with the value of every secret-named one masked
//! ([`LoginRequest::recordable_session_parameters`]); the TOKEN alone is kept, behind [`LoginRequest::token_for_validation`],
//! for the later brokering feature that checks a workload's key-pair, OAuth or PAT token. The
//! response's session and master tokens are never kept by [`parse_login_response`];
//! [`rewrite_login_tokens`] replaces them with agent handles and hands the originals back in
//! [`UpstreamTokens`].

use base64::Engine as _;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

use super::Secret;
use super::error::{ParseError, RewriteError};
use super::json::{self, RawObject, UniqueMap, opt_code};
use super::secrets::{LOGIN_SECRET_FIELDS, mask_secret_values};

const REQUEST: &str = "login request";
const RESPONSE: &str = "login response";

/// How a login authenticates, from `data.AUTHENTICATOR`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Authenticator {
    /// Password (`AUTHENTICATOR` absent, as Python sends it, or `SNOWFLAKE`, as Node sends it).
    Snowflake,
    /// Key pair: a JWT signed with the user's private key in `TOKEN` (`SNOWFLAKE_JWT`).
    KeyPair,
    /// An OAuth access token in `TOKEN` (`OAUTH`).
    OAuth,
    /// OAuth authorization-code flow run by the driver (`OAUTH_AUTHORIZATION_CODE`).
    OAuthAuthorizationCode,
    /// OAuth client-credentials flow run by the driver (`OAUTH_CLIENT_CREDENTIALS`).
    OAuthClientCredentials,
    /// A programmatic access token in `TOKEN` (`PROGRAMMATIC_ACCESS_TOKEN`).
    ProgrammaticAccessToken,
    /// Browser SSO (`EXTERNALBROWSER`).
    ExternalBrowser,
    /// Native Okta SSO: the authenticator is the Okta URL.
    Okta {
        /// The Okta URL the driver was given.
        url: String,
    },
    /// Password plus MFA (`USERNAME_PASSWORD_MFA`).
    PasswordMfa,
    /// A cached SSO id token (`ID_TOKEN`).
    IdToken,
    /// Workload identity federation (`WORKLOAD_IDENTITY`).
    WorkloadIdentity,
    /// Any other value, kept as sent.
    Other(String),
}

impl Authenticator {
    /// Reads `data.AUTHENTICATOR` (case-insensitive; absent means password).
    pub fn parse(value: Option<&str>) -> Self {
        let Some(raw) = value.map(str::trim).filter(|s| !s.is_empty()) else {
            return Authenticator::Snowflake;
        };
        match raw.to_ascii_uppercase().as_str() {
            "SNOWFLAKE" => Authenticator::Snowflake,
            "SNOWFLAKE_JWT" => Authenticator::KeyPair,
            "OAUTH" => Authenticator::OAuth,
            "OAUTH_AUTHORIZATION_CODE" => Authenticator::OAuthAuthorizationCode,
            "OAUTH_CLIENT_CREDENTIALS" => Authenticator::OAuthClientCredentials,
            "PROGRAMMATIC_ACCESS_TOKEN" => Authenticator::ProgrammaticAccessToken,
            "EXTERNALBROWSER" => Authenticator::ExternalBrowser,
            "USERNAME_PASSWORD_MFA" => Authenticator::PasswordMfa,
            "ID_TOKEN" => Authenticator::IdToken,
            "WORKLOAD_IDENTITY" => Authenticator::WorkloadIdentity,
            upper if upper.starts_with("HTTPS://") => Authenticator::Okta {
                url: raw.to_owned(),
            },
            _ => Authenticator::Other(raw.to_owned()),
        }
    }

    /// The wire name, for the audit (`OKTA` for an Okta URL).
    pub fn as_str(&self) -> &str {
        match self {
            Authenticator::Snowflake => "SNOWFLAKE",
            Authenticator::KeyPair => "SNOWFLAKE_JWT",
            Authenticator::OAuth => "OAUTH",
            Authenticator::OAuthAuthorizationCode => "OAUTH_AUTHORIZATION_CODE",
            Authenticator::OAuthClientCredentials => "OAUTH_CLIENT_CREDENTIALS",
            Authenticator::ProgrammaticAccessToken => "PROGRAMMATIC_ACCESS_TOKEN",
            Authenticator::ExternalBrowser => "EXTERNALBROWSER",
            Authenticator::Okta { .. } => "OKTA",
            Authenticator::PasswordMfa => "USERNAME_PASSWORD_MFA",
            Authenticator::IdToken => "ID_TOKEN",
            Authenticator::WorkloadIdentity => "WORKLOAD_IDENTITY",
            Authenticator::Other(s) => s,
        }
    }
}

/// A driver's name and version, for the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driver {
    /// E.g. `PythonConnector`, `JavaScript`, `JDBC`, `Go`.
    pub name: String,
    /// E.g. `5.2.0`.
    pub version: Option<String>,
}

/// Reads the driver from a `User-Agent` such as `PythonConnector/5.2.0 (linux-x86_64)
/// CPython/3.11.7`: the first product token. Used when the body has no `CLIENT_APP_ID`.
pub fn driver_from_user_agent(user_agent: &str) -> Option<Driver> {
    let first = user_agent.split_whitespace().next()?;
    let (name, version) = match first.split_once('/') {
        Some((n, v)) => (n, Some(v).filter(|v| !v.is_empty()).map(str::to_owned)),
        None => (first, None),
    };
    if name.is_empty() {
        return None;
    }
    Some(Driver {
        name: name.to_owned(),
        version,
    })
}

/// What the `TOKEN` of a login looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenShape {
    /// Three non-empty base64url segments separated by dots.
    Jwt,
    /// Anything else (OAuth access tokens and PATs are often opaque).
    Opaque,
}

/// The unverified header and claims of a JWT token, for the audit and for a later check against
/// the login name; nothing here is a secret, and nothing here is trusted (the signature is not
/// checked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtClaims {
    /// Header `alg`, e.g. `RS256`.
    pub alg: Option<String>,
    /// `sub`: `<ACCOUNT>.<USER>` for key-pair logins.
    pub sub: Option<String>,
    /// `iss`: `<ACCOUNT>.<USER>.SHA256:<public key fingerprint>` for key-pair logins.
    pub iss: Option<String>,
    /// `iat`, seconds since the epoch.
    pub iat: Option<i64>,
    /// `exp`, seconds since the epoch.
    pub exp: Option<i64>,
}

/// A parsed login request. Secrets are not reachable except the TOKEN, through
/// [`LoginRequest::token_for_validation`]; `Debug` prints none (session parameters as the audit
/// keeps them, secret-named values masked).
#[derive(Clone, PartialEq)]
pub struct LoginRequest {
    /// `ACCOUNT_NAME` as sent (5.x sends `xy12345.us-east-1`, 4.x `xy12345`).
    pub account: Option<String>,
    /// `LOGIN_NAME`.
    pub login_name: Option<String>,
    /// `AUTHENTICATOR`.
    pub authenticator: Authenticator,
    /// `CLIENT_APP_ID` / `CLIENT_APP_VERSION`, when the body has them.
    pub client: Option<Driver>,
    /// `CLIENT_ENVIRONMENT.APPLICATION` (a name the workload may set for itself).
    pub application: Option<String>,
    /// `SESSION_PARAMETERS.QUERY_TAG`: the session's tag from the start (docs/decisions.md §15).
    pub query_tag: Option<String>,
    /// `SESSION_PARAMETERS` as sent; the audit keeps
    /// [`recordable_session_parameters`](LoginRequest::recordable_session_parameters) instead.
    pub session_parameters: Map<String, Value>,
    /// A `PASSWORD` is present.
    pub has_password: bool,
    /// A `PASSCODE` (MFA) is present.
    pub has_passcode: bool,
    /// A `TOKEN` is present (JWT, OAuth, PAT, SSO or MFA token).
    pub has_token: bool,
    /// The TOKEN's shape, when one is present.
    pub token_shape: Option<TokenShape>,
    /// The TOKEN's unverified JWT header and claims, when it is a decodable JWT.
    pub jwt_claims: Option<JwtClaims>,
    /// Every secret-bearing key present in `data` (e.g. `["PASSWORD"]`), by name only.
    pub secret_fields: Vec<&'static str>,
    token: Option<Secret>,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("account", &self.account)
            .field("login_name", &self.login_name)
            .field("authenticator", &self.authenticator)
            .field("client", &self.client)
            .field("application", &self.application)
            .field("query_tag", &self.query_tag)
            .field("session_parameters", &self.recordable_session_parameters())
            .field("has_password", &self.has_password)
            .field("has_passcode", &self.has_passcode)
            .field("has_token", &self.has_token)
            .field("token_shape", &self.token_shape)
            .field("jwt_claims", &self.jwt_claims)
            .field("secret_fields", &self.secret_fields)
            .field("token", &self.token)
            .finish()
    }
}

impl LoginRequest {
    /// The TOKEN's value, for the brokering feature that validates a workload's key-pair JWT,
    /// OAuth token or PAT before a login goes upstream. Nothing else may read it.
    pub fn token_for_validation(&self) -> Option<&str> {
        self.token.as_ref().map(Secret::expose)
    }

    /// `SESSION_PARAMETERS` as the audit keeps them: the value of every parameter whose name
    /// hides its value in the secrets table (`secrets::hides_value`: `PRIVATE_KEY_PASSPHRASE`,
    /// `MFA_PASSCODE`, `SSO_TOKEN`, `API_KEY`, ...) is replaced by `***`.
    pub fn recordable_session_parameters(&self) -> Map<String, Value> {
        mask_secret_values(&self.session_parameters)
    }

    /// The driver: `CLIENT_APP_ID`/`CLIENT_APP_VERSION` when sent, else the `User-Agent`.
    pub fn driver(&self, user_agent: Option<&str>) -> Option<Driver> {
        self.client
            .clone()
            .or_else(|| user_agent.and_then(driver_from_user_agent))
    }
}

#[derive(Deserialize)]
struct WireLoginRequest {
    data: Option<WireLoginData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
struct WireLoginData {
    account_name: Option<String>,
    login_name: Option<String>,
    authenticator: Option<String>,
    client_app_id: Option<String>,
    client_app_version: Option<String>,
    session_parameters: Option<UniqueMap<Value>>,
    client_environment: Option<Value>,
    password: Option<IgnoredAny>,
    token: Option<Secret>,
    passcode: Option<IgnoredAny>,
    private_key: Option<IgnoredAny>,
    raw_saml_response: Option<IgnoredAny>,
    proof_key: Option<IgnoredAny>,
}

/// Parses a (decoded) login request body.
pub fn parse_login_request(body: &[u8]) -> Result<LoginRequest, ParseError> {
    let wire: WireLoginRequest = json::from_slice(REQUEST, body)?;
    let d = wire.data.ok_or(ParseError::MissingField {
        what: REQUEST,
        field: "data",
    })?;
    // In the order of `LOGIN_SECRET_FIELDS`.
    let present = [
        d.password.is_some(),
        d.token.is_some(),
        d.passcode.is_some(),
        d.private_key.is_some(),
        d.raw_saml_response.is_some(),
        d.proof_key.is_some(),
    ];
    let secret_fields = LOGIN_SECRET_FIELDS
        .iter()
        .zip(present)
        .filter_map(|(k, p)| p.then_some(*k))
        .collect();
    let session_parameters = d
        .session_parameters
        .map(UniqueMap::into_map)
        .unwrap_or_default();
    let query_tag = session_parameters
        .get("QUERY_TAG")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let client = d
        .client_app_id
        .filter(|s| !s.is_empty())
        .map(|name| Driver {
            name,
            version: d.client_app_version.filter(|s| !s.is_empty()),
        });
    let application = d
        .client_environment
        .as_ref()
        .and_then(|env| env.get("APPLICATION"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let token_shape = d.token.as_ref().map(|t| {
        if looks_like_jwt(t.expose()) {
            TokenShape::Jwt
        } else {
            TokenShape::Opaque
        }
    });
    let jwt_claims = d
        .token
        .as_ref()
        .filter(|_| token_shape == Some(TokenShape::Jwt))
        .and_then(|t| jwt_claims(t.expose()));
    Ok(LoginRequest {
        account: d.account_name,
        login_name: d.login_name,
        authenticator: Authenticator::parse(d.authenticator.as_deref()),
        client,
        application,
        query_tag,
        session_parameters,
        has_password: d.password.is_some(),
        has_passcode: d.passcode.is_some(),
        has_token: d.token.is_some(),
        token_shape,
        jwt_claims,
        secret_fields,
        token: d.token,
    })
}

/// True when `token` is three non-empty base64url segments (`header.payload.signature`).
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            let p = p.trim_end_matches('=');
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn jwt_claims(token: &str) -> Option<JwtClaims> {
    #[derive(Deserialize)]
    struct Header {
        alg: Option<String>,
    }
    #[derive(Deserialize)]
    struct Claims {
        sub: Option<String>,
        iss: Option<String>,
        iat: Option<i64>,
        exp: Option<i64>,
    }
    let mut parts = token.split('.');
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT;
    let header = engine.decode(parts.next()?).ok()?;
    let claims = engine.decode(parts.next()?).ok()?;
    let header: Header = serde_json::from_slice(&header).ok()?;
    let claims: Claims = serde_json::from_slice(&claims).ok()?;
    Some(JwtClaims {
        alg: header.alg,
        sub: claims.sub,
        iss: claims.iss,
        iat: claims.iat,
        exp: claims.exp,
    })
}

/// The session's context as Snowflake reports it after login.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionInfo {
    /// `databaseName`.
    pub database: Option<String>,
    /// `schemaName`.
    pub schema: Option<String>,
    /// `warehouseName`.
    pub warehouse: Option<String>,
    /// `roleName`.
    pub role: Option<String>,
}

/// A parsed login response; the tokens themselves are not kept.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginResponse {
    /// `success`.
    pub success: bool,
    /// `code` (null on success; e.g. `390100` for a wrong password).
    pub code: Option<String>,
    /// `message`.
    pub message: Option<String>,
    /// `data.sessionId`, as text (a number on the wire).
    pub session_id: Option<String>,
    /// `data.token` is present.
    pub has_session_token: bool,
    /// `data.masterToken` is present.
    pub has_master_token: bool,
    /// `data.validityInSeconds`: the session token's lifetime.
    pub validity_seconds: Option<i64>,
    /// `data.masterValidityInSeconds`: the master token's lifetime.
    pub master_validity_seconds: Option<i64>,
    /// `data.sessionInfo`.
    pub session_info: SessionInfo,
    /// `data.serverVersion`.
    pub server_version: Option<String>,
    /// `data.displayUserName`.
    pub display_user_name: Option<String>,
    /// `data.nextAction` of a failed login (e.g. `RETRY_LOGIN`).
    pub next_action: Option<String>,
    /// `data.parameters` as `(name, value)` pairs.
    pub parameters: Vec<(String, Value)>,
}

#[derive(Deserialize)]
struct WireLoginResponse {
    data: Option<WireLoginResponseData>,
    #[serde(default, deserialize_with = "opt_code")]
    code: Option<String>,
    message: Option<String>,
    success: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireLoginResponseData {
    token: Option<IgnoredAny>,
    master_token: Option<IgnoredAny>,
    #[serde(default, deserialize_with = "opt_code")]
    session_id: Option<String>,
    validity_in_seconds: Option<i64>,
    master_validity_in_seconds: Option<i64>,
    session_info: Option<WireSessionInfo>,
    server_version: Option<String>,
    display_user_name: Option<String>,
    next_action: Option<String>,
    parameters: Option<Vec<WireParameter>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSessionInfo {
    database_name: Option<String>,
    schema_name: Option<String>,
    warehouse_name: Option<String>,
    role_name: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct WireParameter {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) value: Value,
}

/// Parses a (decoded) login response body.
pub fn parse_login_response(body: &[u8]) -> Result<LoginResponse, ParseError> {
    let wire: WireLoginResponse = json::from_slice(RESPONSE, body)?;
    let mut out = LoginResponse {
        success: wire.success.unwrap_or(false),
        code: wire.code,
        message: wire.message,
        session_id: None,
        has_session_token: false,
        has_master_token: false,
        validity_seconds: None,
        master_validity_seconds: None,
        session_info: SessionInfo::default(),
        server_version: None,
        display_user_name: None,
        next_action: None,
        parameters: Vec::new(),
    };
    if let Some(d) = wire.data {
        out.session_id = d.session_id;
        out.has_session_token = d.token.is_some();
        out.has_master_token = d.master_token.is_some();
        out.validity_seconds = d.validity_in_seconds;
        out.master_validity_seconds = d.master_validity_in_seconds;
        if let Some(si) = d.session_info {
            out.session_info = SessionInfo {
                database: si.database_name,
                schema: si.schema_name,
                warehouse: si.warehouse_name,
                role: si.role_name,
            };
        }
        out.server_version = d.server_version;
        out.display_user_name = d.display_user_name;
        out.next_action = d.next_action;
        out.parameters = d
            .parameters
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name, p.value))
            .collect();
    }
    Ok(out)
}

/// Snowflake's own tokens, taken out of a response whose tokens were replaced by agent handles.
/// Only the brokering feature reads them, through the named accessors; `Debug` prints neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTokens {
    session: Secret,
    master: Option<Secret>,
}

impl UpstreamTokens {
    /// Snowflake's session token, for the broker to put on upstream requests in place of the
    /// handle the driver holds.
    pub fn session_token_for_brokering(&self) -> &str {
        self.session.expose()
    }

    /// Snowflake's master token (renewals), for the broker likewise.
    pub fn master_token_for_brokering(&self) -> Option<&str> {
        self.master.as_ref().map(Secret::expose)
    }
}

/// Replaces `data.token` and `data.masterToken` of a login response with agent handles and
/// re-serialises it; every other field is kept (untouched values byte for byte, keys in order).
/// Returns the new body and Snowflake's tokens. A response without `data.token` is refused.
pub fn rewrite_login_tokens(
    body: &[u8],
    session_handle: &str,
    master_handle: &str,
) -> Result<(Vec<u8>, UpstreamTokens), RewriteError> {
    rewrite_data_tokens(
        RESPONSE,
        body,
        ["token", "masterToken"],
        session_handle,
        master_handle,
    )
}

/// Shared by login and renewal responses: replaces two token fields of `data`.
pub(crate) fn rewrite_data_tokens(
    what: &'static str,
    body: &[u8],
    [session_key, master_key]: [&'static str; 2],
    session_handle: &str,
    master_handle: &str,
) -> Result<(Vec<u8>, UpstreamTokens), RewriteError> {
    let mut top = RawObject::parse(what, body)?;
    let data_text = match top.get("data") {
        Some(slot) if !json::is_null(slot.get()) => slot.get().to_owned(),
        _ => {
            return Err(RewriteError::Absent {
                what,
                field: "data",
            });
        }
    };
    let mut data = RawObject::parse_str(what, &data_text)?;
    let read = |data: &RawObject<'_>, key: &'static str| -> Result<Option<Secret>, RewriteError> {
        match data.get(key) {
            None => Ok(None),
            Some(slot) => serde_json::from_str::<Option<String>>(slot.get())
                .map(|v| v.map(Secret::from))
                .map_err(|_| {
                    ParseError::InvalidField {
                        what,
                        field: key,
                        reason: "expected a string or null",
                    }
                    .into()
                }),
        }
    };
    let session = read(&data, session_key)?.ok_or(RewriteError::Absent {
        what,
        field: session_key,
    })?;
    let master = read(&data, master_key)?;
    data.set(what, session_key, session_handle)?;
    if master.is_some() {
        data.set(what, master_key, master_handle)?;
    }
    let data_bytes = data.to_vec(what)?;
    let data_raw: &serde_json::value::RawValue =
        serde_json::from_slice(&data_bytes).map_err(|_| RewriteError::Serialize { what })?;
    top.set(what, "data", data_raw)?;
    Ok((top.to_vec(what)?, UpstreamTokens { session, master }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PY5: &str = r#"{"data":{"CLIENT_APP_ID":"PythonConnector","CLIENT_APP_VERSION":"5.2.0",
        "ACCOUNT_NAME":"xy12345","LOGIN_NAME":"fake","PASSWORD":"snow-secret-pw",
        "SESSION_PARAMETERS":{"QUERY_TAG":"login-tag","CLIENT_RUNTIME_NAME":"CPython"},
        "CLIENT_ENVIRONMENT":{"APPLICATION":"PythonConnector","OS":"linux"}}}"#;

    #[test]
    fn password_login() {
        let r = parse_login_request(PY5.as_bytes()).unwrap();
        assert_eq!(r.account.as_deref(), Some("xy12345"));
        assert_eq!(r.login_name.as_deref(), Some("fake"));
        assert_eq!(r.authenticator, Authenticator::Snowflake);
        assert_eq!(r.query_tag.as_deref(), Some("login-tag"));
        assert!(r.has_password && !r.has_token);
        assert_eq!(r.secret_fields, vec!["PASSWORD"]);
        assert_eq!(r.token_for_validation(), None);
        assert_eq!(
            r.driver(None),
            Some(Driver {
                name: "PythonConnector".into(),
                version: Some("5.2.0".into())
            })
        );
        assert_eq!(r.application.as_deref(), Some("PythonConnector"));
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("snow-secret-pw"), "{dbg}");
    }

    #[test]
    fn secret_session_parameters_never_reach_the_record() {
        let body = br#"{"data":{"LOGIN_NAME":"u","PASSWORD":"pw","SESSION_PARAMETERS":{
            "QUERY_TAG":"etl","CLIENT_SESSION_KEEP_ALIVE":true,
            "PRIVATE_KEY_PASSPHRASE":"pp-clear-1","MFA_PASSCODE":"pc-clear-2",
            "CLIENT_CREDENTIAL":"cr-clear-3","CLIENT_STORE_TEMPORARY_CREDENTIAL":true,
            "my_api_key":"k-clear-4","Sso_Token":"t-clear-5","DB_PASSWORD":"p-clear-6"}}}"#;
        let r = parse_login_request(body).unwrap();
        let kept = r.recordable_session_parameters();
        assert_eq!(kept.len(), r.session_parameters.len());
        assert_eq!(kept["QUERY_TAG"], "etl");
        assert_eq!(kept["CLIENT_SESSION_KEEP_ALIVE"], true);
        assert_eq!(
            kept["CLIENT_STORE_TEMPORARY_CREDENTIAL"], true,
            "a flag is no secret"
        );
        // What the audit's `detail` is made of: no secret value survives, every name does.
        let detail = serde_json::to_string(&kept).unwrap();
        assert!(!detail.contains("-clear-"), "{detail}");
        for name in [
            "PRIVATE_KEY_PASSPHRASE",
            "MFA_PASSCODE",
            "CLIENT_CREDENTIAL",
            "my_api_key",
            "Sso_Token",
            "DB_PASSWORD",
        ] {
            assert_eq!(kept[name], "***", "{name}");
        } // Nor does `Debug`, which prints the parameters as the audit keeps them.
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("-clear-"), "{dbg}");
        assert!(dbg.contains("QUERY_TAG"), "{dbg}");
    }

    #[test]
    fn token_logins_keep_the_token_private() {
        let jwt = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJYWTEyMzQ1LkpXVF9VU0VSIiwiaXNzIjoiWFkxMjM0NS5KV1RfVVNFUi5TSEEyNTY6YWJjIiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDAxMjB9.c2lnbmF0dXJl";
        let body = format!(
            r#"{{"data":{{"ACCOUNT_NAME":"xy12345.us-east-1","LOGIN_NAME":"jwt_user","AUTHENTICATOR":"SNOWFLAKE_JWT","TOKEN":"{jwt}"}}}}"#
        );
        let r = parse_login_request(body.as_bytes()).unwrap();
        assert_eq!(r.authenticator, Authenticator::KeyPair);
        assert_eq!(r.token_shape, Some(TokenShape::Jwt));
        let claims = r.jwt_claims.clone().unwrap();
        assert_eq!(claims.alg.as_deref(), Some("RS256"));
        assert_eq!(claims.sub.as_deref(), Some("XY12345.JWT_USER"));
        assert_eq!(claims.exp, Some(1_700_000_120));
        assert_eq!(r.token_for_validation(), Some(jwt));
        assert!(!format!("{r:?}").contains("c2lnbmF0dXJl"));

        let r = parse_login_request(
            br#"{"data":{"AUTHENTICATOR":"oauth","TOKEN":"my-oauth-access-token"}}"#,
        )
        .unwrap();
        assert_eq!(r.authenticator, Authenticator::OAuth);
        assert_eq!(r.token_shape, Some(TokenShape::Opaque));
        assert_eq!(r.jwt_claims, None);
        assert!(!format!("{r:?}").contains("my-oauth-access-token"));
    }

    #[test]
    fn authenticators() {
        for (raw, want) in [
            (None, Authenticator::Snowflake),
            (Some("SNOWFLAKE"), Authenticator::Snowflake),
            (
                Some("PROGRAMMATIC_ACCESS_TOKEN"),
                Authenticator::ProgrammaticAccessToken,
            ),
            (Some("externalbrowser"), Authenticator::ExternalBrowser),
            (Some("USERNAME_PASSWORD_MFA"), Authenticator::PasswordMfa),
            (
                Some("https://acme.okta.com"),
                Authenticator::Okta {
                    url: "https://acme.okta.com".into(),
                },
            ),
            (
                Some("SOMETHING_NEW"),
                Authenticator::Other("SOMETHING_NEW".into()),
            ),
        ] {
            assert_eq!(Authenticator::parse(raw), want);
        }
        assert_eq!(Authenticator::KeyPair.as_str(), "SNOWFLAKE_JWT");
    }

    #[test]
    fn user_agents() {
        let d =
            driver_from_user_agent("PythonConnector/5.2.0 (linux-x86_64) CPython/3.11.7").unwrap();
        assert_eq!(
            (d.name.as_str(), d.version.as_deref()),
            ("PythonConnector", Some("5.2.0"))
        );
        let d = driver_from_user_agent("JavaScript/3.3.0 (linux-x64) NodeJS/20.20.2").unwrap();
        assert_eq!(
            (d.name.as_str(), d.version.as_deref()),
            ("JavaScript", Some("3.3.0"))
        );
        let d = driver_from_user_agent("curl").unwrap();
        assert_eq!(d.version, None);
        assert_eq!(driver_from_user_agent("  "), None);
        let r = parse_login_request(br#"{"data":{"LOGIN_NAME":"u"}}"#).unwrap();
        assert_eq!(r.driver(Some("JDBC/3.13.30 (Linux)")).unwrap().name, "JDBC");
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(looks_like_jwt("eyJ-_.eyJ.sig=="));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a b.c.d"));
    }

    #[test]
    fn malformed_requests() {
        assert!(matches!(
            parse_login_request(b"{}"),
            Err(ParseError::MissingField { field: "data", .. })
        ));
        let err = parse_login_request(br#"{"data":{"TOKEN":12345678}}"#).unwrap_err();
        assert!(matches!(err, ParseError::Json { .. }));
        assert!(!err.to_string().contains("12345678"), "{err}");
        let err = parse_login_request(br#"{"data":{"TOKEN":["sekrit-in-array"]}}"#).unwrap_err();
        assert!(!err.to_string().contains("sekrit"));
        // Two LOGIN_NAMEs: which one Snowflake reads is not ours to guess.
        assert!(parse_login_request(br#"{"data":{"LOGIN_NAME":"a","LOGIN_NAME":"b"}}"#).is_err());
    }

    const RESP: &str = r#"{"data":{"token":"sess-tok","serverVersion":"10.0.0",
        "parameters":[{"name":"AUTOCOMMIT","value":true}],
        "sessionInfo":{"databaseName":"DB1","schemaName":"SCHEMA1","warehouseName":null,"roleName":"PUBLIC"},
        "masterToken":"master-tok","sessionId":1000003,"validityInSeconds":3600,
        "masterValidityInSeconds":14400,"displayUserName":"FAKE"},"success":true}"#;

    #[test]
    fn response() {
        let r = parse_login_response(RESP.as_bytes()).unwrap();
        assert!(r.success);
        assert_eq!(r.session_id.as_deref(), Some("1000003"));
        assert!(r.has_session_token && r.has_master_token);
        assert_eq!(r.validity_seconds, Some(3600));
        assert_eq!(r.master_validity_seconds, Some(14400));
        assert_eq!(r.session_info.database.as_deref(), Some("DB1"));
        assert_eq!(r.session_info.warehouse, None);
        assert_eq!(r.session_info.role.as_deref(), Some("PUBLIC"));
        assert_eq!(r.server_version.as_deref(), Some("10.0.0"));
        assert_eq!(
            r.parameters,
            vec![("AUTOCOMMIT".to_owned(), Value::Bool(true))]
        );
        assert!(!format!("{r:?}").contains("sess-tok"));

        let failed = br#"{"code":"390100","data":{"nextAction":"RETRY_LOGIN","authnMethod":"USERNAME_PASSWORD"},"message":"Incorrect username or password was specified.","success":false,"headers":null}"#;
        let r = parse_login_response(failed).unwrap();
        assert!(!r.success);
        assert_eq!(r.code.as_deref(), Some("390100"));
        assert_eq!(r.next_action.as_deref(), Some("RETRY_LOGIN"));
        assert!(!r.has_session_token);
    }

    #[test]
    fn token_rewrite_preserves_everything_else() {
        let (body, upstream) =
            rewrite_login_tokens(RESP.as_bytes(), "st-handle-1", "mt-handle-1").unwrap();
        assert_eq!(upstream.session_token_for_brokering(), "sess-tok");
        assert_eq!(upstream.master_token_for_brokering(), Some("master-tok"));
        assert!(!format!("{upstream:?}").contains("tok\""));
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(!text.contains("sess-tok") && !text.contains("master-tok"));
        let before: Value = serde_json::from_str(RESP).unwrap();
        let mut after: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(after["data"]["token"], "st-handle-1");
        assert_eq!(after["data"]["masterToken"], "mt-handle-1");
        after["data"]["token"] = before["data"]["token"].clone();
        after["data"]["masterToken"] = before["data"]["masterToken"].clone();
        assert_eq!(after, before);
        // Still a login response to the parser.
        let r = parse_login_response(&body).unwrap();
        assert!(r.success && r.has_session_token);
    }

    #[test]
    fn token_rewrite_refuses_what_it_cannot_do() {
        let failed = br#"{"data":null,"code":"390100","message":"no","success":false}"#;
        assert!(matches!(
            rewrite_login_tokens(failed, "a", "b"),
            Err(RewriteError::Absent { field: "data", .. })
        ));
        assert!(matches!(
            rewrite_login_tokens(br#"{"data":{"masterToken":"m"}}"#, "a", "b"),
            Err(RewriteError::Absent { field: "token", .. })
        ));
        assert!(rewrite_login_tokens(br#"{"data":{"token":5}}"#, "a", "b").is_err());
        assert!(rewrite_login_tokens(br#"{"data":{"token":"x","token":"y"}}"#, "a", "b").is_err());
    }
}
