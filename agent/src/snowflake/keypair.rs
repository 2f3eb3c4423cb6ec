//! Key-pair authentication (`AUTHENTICATOR: SNOWFLAKE_JWT`) as the credential broker speaks it: the
//! JWT's claims and signature, the public key's fingerprint, and a workload's login body rewritten
//! to carry them in place of its placeholder credentials.
//!
//! The rules are those of docs/protocol.md ("Key-pair authenticator"): an RS256 JWT with
//! `sub = "<ACCOUNT>.<USER>"` and `iss = "<ACCOUNT>.<USER>.SHA256:<fingerprint>"`, where the
//! fingerprint is the base64 SHA-256 of the public key's DER SubjectPublicKeyInfo, ACCOUNT is the
//! account name upper-cased without its region (or, for a `.global` name, without its `-` suffix),
//! and USER is the login name upper-cased.
//!
//! No I/O: the key comes in parsed (the broker reads the file), the time comes in as seconds.

use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::error::RewriteError;
use super::json::edit_member;
use super::secrets::LOGIN_SECRET_FIELDS;

const LOGIN: &str = "login request";

/// The longest JWT lifetime Snowflake accepts, in seconds.
pub const MAX_JWT_LIFETIME_S: u64 = 3_600;

/// Keys of a login's `data` that a brokered login drops besides the workload's credentials
/// (`LOGIN_SECRET_FIELDS`: whatever they are, they are a placeholder): what only makes sense with
/// them.
const DROPPED_WITH_CREDENTIALS: [&str; 3] = ["AUTHENTICATOR", "EXT_AUTHN_DUO_METHOD", "PROVIDER"];

/// Why a key-pair JWT could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyPairError {
    /// Neither the broker's configuration nor the login names the account.
    #[error("the login names no account and none is configured")]
    NoAccount,
    /// The signature could not be computed (a key jsonwebtoken cannot use).
    #[error("cannot sign the key-pair JWT: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// The account as key-pair claims name it: upper case, without region or cloud
/// (`xy12345.us-east-1` → `XY12345`), and for a global account name without its suffix
/// (`myacct-abc.global` → `MYACCT`).
pub fn claims_account(account: &str) -> String {
    let account = account.trim();
    let cut = if account.contains(".global") {
        account.split('-').next()
    } else {
        account.split('.').next()
    };
    cut.unwrap_or(account).to_ascii_uppercase()
}

/// The public key fingerprint of key-pair claims: `SHA256:` and the standard base64 of the
/// SHA-256 of the public key's DER SubjectPublicKeyInfo (what Snowflake shows as
/// `RSA_PUBLIC_KEY_FP`).
pub fn fingerprint(spki_der: &[u8]) -> String {
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki_der))
    )
}

/// The claims of a key-pair login JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyPairClaims {
    /// `<ACCOUNT>.<USER>.SHA256:<fingerprint>`.
    pub iss: String,
    /// `<ACCOUNT>.<USER>`.
    pub sub: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

impl KeyPairClaims {
    /// The claims for `user` of `account` with the key of `fingerprint` (as [`fingerprint`]
    /// gives it), issued at `now_s` and valid `lifetime_s` seconds (at most
    /// [`MAX_JWT_LIFETIME_S`]).
    pub fn new(
        account: &str,
        user: &str,
        fingerprint: &str,
        now_s: u64,
        lifetime_s: u64,
    ) -> KeyPairClaims {
        let sub = format!(
            "{}.{}",
            claims_account(account),
            user.trim().to_ascii_uppercase()
        );
        KeyPairClaims {
            iss: format!("{sub}.{fingerprint}"),
            sub,
            iat: now_s,
            exp: now_s.saturating_add(lifetime_s.min(MAX_JWT_LIFETIME_S)),
        }
    }

    /// The signed JWT (RS256, header `{"alg":"RS256","typ":"JWT"}`).
    pub fn sign(&self, key: &jsonwebtoken::EncodingKey) -> Result<String, KeyPairError> {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        jsonwebtoken::encode(&header, self, key).map_err(KeyPairError::Sign)
    }
}

/// What a brokered login puts in place of the workload's credentials.
#[derive(Clone, Copy)]
pub struct BrokeredLogin<'a> {
    /// The Snowflake login name (`LOGIN_NAME`).
    pub user: &'a str,
    /// `ACCOUNT_NAME`, when the broker names the account; else the workload's stays.
    pub account: Option<&'a str>,
    /// The signed key-pair JWT (`TOKEN`).
    pub jwt: &'a str,
}

impl std::fmt::Debug for BrokeredLogin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokeredLogin")
            .field("user", &self.user)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

/// Rewrites a (decoded) login request body for a brokered login: every credential the workload
/// sent is dropped, `LOGIN_NAME` becomes the broker's user, `AUTHENTICATOR` `SNOWFLAKE_JWT` and
/// `TOKEN` the JWT (and `ACCOUNT_NAME` the broker's account, when it names one). Every other field
/// is kept as sent. The body must parse as a login request first.
pub fn broker_login_body(body: &[u8], login: &BrokeredLogin<'_>) -> Result<Vec<u8>, RewriteError> {
    super::parse_login_request(body)?;
    edit_member(LOGIN, body, "data", |data| {
        for key in LOGIN_SECRET_FIELDS.iter().chain(&DROPPED_WITH_CREDENTIALS) {
            data.remove(key);
        }
        data.set(LOGIN, "LOGIN_NAME", login.user)?;
        if let Some(account) = login.account {
            data.set(LOGIN, "ACCOUNT_NAME", account)?;
        }
        data.set(LOGIN, "AUTHENTICATOR", "SNOWFLAKE_JWT")?;
        data.set(LOGIN, "TOKEN", login.jwt)
    })
}

/// A login's path and query with `roleName` set to `role` (replaced, or appended), for a
/// brokered identity whose configuration names the role.
pub fn with_role(path_and_query: &str, role: &str) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let value = percent_encode(role);
    let mut parts: Vec<String> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| kv.split('=').next() != Some("roleName"))
        .map(str::to_owned)
        .collect();
    parts.push(format!("roleName={value}"));
    format!("{path}?{}", parts.join("&"))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rsa::pkcs1::{EncodeRsaPrivateKey as _, EncodeRsaPublicKey as _};
    use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
    use serde_json::Value;

    const KEY_A: &str = include_str!("../../tests/fixtures/keypair/rsa-a.p8");
    /// Computed with OpenSSL (see the fixtures' README), not with this code.
    const FP_A: &str = "SHA256:oVMVAlwycN5k0Ob7QL/zby9VkGXZUxbzYk233P7O+5o=";

    #[test]
    fn fingerprint_matches_openssl() {
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(KEY_A).unwrap();
        let spki = key.to_public_key().to_public_key_der().unwrap();
        assert_eq!(fingerprint(spki.as_bytes()), FP_A);
    }

    #[test]
    fn account_rules() {
        assert_eq!(claims_account("xy12345"), "XY12345");
        assert_eq!(claims_account("xy12345.us-east-1"), "XY12345");
        assert_eq!(claims_account("xy12345.us-east-1.aws"), "XY12345");
        assert_eq!(claims_account("myorg-acct1"), "MYORG-ACCT1");
        assert_eq!(claims_account("myacct-abcdef.global"), "MYACCT");
    }

    #[test]
    fn claims_follow_the_protocol_and_verify() {
        let c = KeyPairClaims::new("xy12345.us-east-1", "etl_svc", FP_A, 1_700_000_000, 60);
        assert_eq!(c.sub, "XY12345.ETL_SVC");
        assert_eq!(c.iss, format!("XY12345.ETL_SVC.{FP_A}"));
        assert_eq!((c.iat, c.exp), (1_700_000_000, 1_700_000_060));
        assert_eq!(
            KeyPairClaims::new("a", "u", FP_A, 10, 99_999).exp,
            10 + MAX_JWT_LIFETIME_S
        );

        let key = rsa::RsaPrivateKey::from_pkcs8_pem(KEY_A).unwrap();
        let der = key.to_pkcs1_der().unwrap();
        let jwt = c
            .sign(&jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes()))
            .unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let public = key.to_public_key().to_pkcs1_der().unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Value>(
            &jwt,
            &jsonwebtoken::DecodingKey::from_rsa_der(public.as_bytes()),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "XY12345.ETL_SVC");
        assert_eq!(data.claims["iss"], c.iss.as_str());
        assert_eq!(data.claims["exp"], 1_700_000_060);
    }

    #[test]
    fn every_login_secret_field_is_dropped() {
        let fields: Vec<String> = LOGIN_SECRET_FIELDS
            .iter()
            .map(|f| format!(r#""{f}":"wl-{f}""#))
            .collect();
        let body = format!(r#"{{"data":{{"LOGIN_NAME":"x",{}}}}}"#, fields.join(","));
        let out = broker_login_body(
            body.as_bytes(),
            &BrokeredLogin {
                user: "U",
                account: None,
                jwt: "j.w.t",
            },
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("wl-"), "{text}");
    }

    #[test]
    fn login_body_carries_the_jwt_and_no_workload_credential() {
        let body = br#"{"data":{"CLIENT_APP_ID":"PythonConnector","ACCOUNT_NAME":"xy12345",
            "LOGIN_NAME":"placeholder","PASSWORD":"placeholder-pw","PASSCODE":"123456",
            "SESSION_PARAMETERS":{"QUERY_TAG":"t"},"CLIENT_ENVIRONMENT":{"OS":"linux"}}}"#;
        let out = broker_login_body(
            body,
            &BrokeredLogin {
                user: "ETL_SVC",
                account: None,
                jwt: "h.p.s",
            },
        )
        .unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            !text.contains("placeholder") && !text.contains("123456"),
            "{text}"
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        let d = &v["data"];
        assert_eq!(d["LOGIN_NAME"], "ETL_SVC");
        assert_eq!(d["AUTHENTICATOR"], "SNOWFLAKE_JWT");
        assert_eq!(d["TOKEN"], "h.p.s");
        assert_eq!(d["ACCOUNT_NAME"], "xy12345");
        assert_eq!(d["SESSION_PARAMETERS"]["QUERY_TAG"], "t");
        assert_eq!(d["CLIENT_ENVIRONMENT"]["OS"], "linux");
        let parsed = crate::snowflake::parse_login_request(&out).unwrap();
        assert_eq!(
            parsed.authenticator,
            crate::snowflake::Authenticator::KeyPair
        );
        assert!(!parsed.has_password);

        // An OAuth login's token and authenticator go too; the broker's account replaces it.
        let out = broker_login_body(
            br#"{"data":{"AUTHENTICATOR":"OAUTH","TOKEN":"oauth-placeholder","LOGIN_NAME":"x"}}"#,
            &BrokeredLogin {
                user: "U",
                account: Some("MYORG-ACCT1"),
                jwt: "j.w.t",
            },
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"]["TOKEN"], "j.w.t");
        assert_eq!(v["data"]["AUTHENTICATOR"], "SNOWFLAKE_JWT");
        assert_eq!(v["data"]["ACCOUNT_NAME"], "MYORG-ACCT1");
        assert!(
            !String::from_utf8(out)
                .unwrap()
                .contains("oauth-placeholder")
        );

        // What is not a login request is not rewritten.
        assert!(
            broker_login_body(
                b"[]",
                &BrokeredLogin {
                    user: "U",
                    account: None,
                    jwt: "j"
                }
            )
            .is_err()
        );
    }

    #[test]
    fn role_in_the_query() {
        assert_eq!(
            with_role(
                "/session/v1/login-request?databaseName=&roleName=&warehouse=",
                "ETL_ROLE"
            ),
            "/session/v1/login-request?databaseName=&warehouse=&roleName=ETL_ROLE"
        );
        assert_eq!(
            with_role("/session/v1/login-request", "My Role"),
            "/session/v1/login-request?roleName=My%20Role"
        );
    }
}
