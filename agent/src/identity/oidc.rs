//! Human identity: the OIDC token a login carries, verified against the configured issuers.
//!
//! A login that authenticates with an OAuth access token or a programmatic access token
//! (`AUTHENTICATOR` `OAUTH` or `PROGRAMMATIC_ACCESS_TOKEN`), or any login whose `TOKEN` is a JWT
//! (except a key-pair login, whose JWT is the workload's own), carries a human token. It is
//! verified with `jsonwebtoken` against the issuer its `iss` names: signature by the issuer's key
//! (from [`jwks`]), `aud` among the issuer's audiences, `exp` and `nbf` within `clock_skew_s`.
//! A verified token gives a [`HumanIdentity`] (`sub`, email, groups) that every event of the
//! session carries. What an invalid or missing token means is the `[oidc]` section's decision per
//! workload ([`config`]): allow, allow with the flag `identity_unverified`, or deny.
//!
//! The token itself is read only here, only while it is checked; it is never logged, stored or
//! put into an error.

pub mod config;
pub mod jwks;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

pub use self::config::{IssuerConfig, OidcConfig, OnToken, RequireRule};
use crate::snowflake::login::{Authenticator, LoginRequest, TokenShape};

/// The longest claim value (issuer, subject, email, group) kept; longer ones are cut.
const MAX_CLAIM_CHARS: usize = 256;
/// The most groups kept from one token.
const MAX_GROUPS: usize = 256;

/// Why a login token is not accepted as a human identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The login carries no human token (password, key pair, SSO without a JWT).
    #[error("the login carries no OIDC token")]
    NoToken,
    /// The token is not a JWT this agent can read (opaque, bad base64, bad JSON).
    #[error("the login token is not a well-formed JWT: {0}")]
    Malformed(String),
    /// The token's `exp` is past (beyond the clock skew).
    #[error("the login token has expired")]
    Expired,
    /// The token's `nbf` is in the future (beyond the clock skew).
    #[error("the login token is not valid yet")]
    NotYetValid,
    /// The token's `aud` names none of the issuer's configured audiences.
    #[error("the login token is for another audience")]
    WrongAudience,
    /// The token's `iss` is not a configured issuer.
    #[error("the login token's issuer {0:?} is not trusted")]
    WrongIssuer(String),
    /// The signature does not verify with the issuer's key.
    #[error("the login token's signature is not valid")]
    BadSignature,
    /// The token's algorithm is not an asymmetric one, or not the key's.
    #[error("the login token's algorithm {0} is not accepted")]
    UnsupportedAlgorithm(String),
    /// No key of the issuer has the token's `kid`.
    #[error("the login token's key id is not among the issuer's keys")]
    UnknownKid,
    /// The issuer's keys could not be loaded.
    #[error("the issuer's keys are unavailable: {0}")]
    JwksUnreachable(jwks::FetchError),
}

impl TokenError {
    /// A bounded label, for the audit's denial detail, logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::NoToken => "oidc_no_token",
            TokenError::Malformed(_) => "oidc_malformed",
            TokenError::Expired => "oidc_expired",
            TokenError::NotYetValid => "oidc_not_yet_valid",
            TokenError::WrongAudience => "oidc_wrong_audience",
            TokenError::WrongIssuer(_) => "oidc_wrong_issuer",
            TokenError::BadSignature => "oidc_bad_signature",
            TokenError::UnsupportedAlgorithm(_) => "oidc_unsupported_algorithm",
            TokenError::UnknownKid => "oidc_unknown_kid",
            TokenError::JwksUnreachable(_) => "oidc_jwks_unreachable",
        }
    }
}

/// The human behind a login, from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanIdentity {
    /// The issuer (`iss`).
    pub issuer: String,
    /// The subject (`sub`).
    pub subject: String,
    /// The `email` claim, when present.
    pub email: Option<String>,
    /// The issuer's groups claim.
    pub groups: Vec<String>,
}

impl HumanIdentity {
    /// The `human_identity` column: the email when the token has one, else the subject.
    pub fn name(&self) -> &str {
        self.email.as_deref().unwrap_or(&self.subject)
    }
}

/// What the check of a login decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginCheck {
    /// No issuers are configured: tokens are not examined.
    Off,
    /// The token verified.
    Verified(HumanIdentity),
    /// Forward the login as it is (no token, and that is allowed).
    Allowed,
    /// Forward the login, flagged `identity_unverified`, for this reason.
    Flagged(TokenError),
    /// Refuse the login, for this reason.
    Denied(TokenError),
}

struct Issuer {
    cfg: IssuerConfig,
    keys: jwks::Jwks,
}

/// Verifies login tokens against the configured issuers; shared by all connections.
pub struct Verifier {
    cfg: OidcConfig,
    issuers: Vec<Issuer>,
}

/// Why the verifier could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The TLS client for JWKS fetches could not be made.
    #[error("OIDC: {0}")]
    Tls(#[from] crate::tls::Error),
    /// A `jwks_uri` is not a URL (config validation normally catches this first).
    #[error("OIDC: bad jwks_uri {0:?}")]
    Uri(String),
}

impl Verifier {
    /// A verifier for `cfg`; JWKS URLs are fetched trusting `roots` (the upstream roots:
    /// the system's minus the agent's CA, plus `tls.upstream_extra_roots`).
    pub fn new(
        cfg: &OidcConfig,
        roots: Arc<rustls::RootCertStore>,
    ) -> Result<Verifier, SetupError> {
        let tls = Arc::new(crate::tls::upstream::client_config(
            roots,
            vec![b"http/1.1".to_vec()],
        )?);
        let limits = jwks::Limits {
            refresh: Duration::from_secs(cfg.jwks_refresh_s),
            min_refetch: Duration::from_secs(cfg.jwks_min_refetch_s),
            timeout: Duration::from_millis(cfg.fetch_timeout_ms),
            max_bytes: cfg.max_jwks_bytes,
        };
        let mut issuers = Vec::with_capacity(cfg.issuers.len());
        for i in &cfg.issuers {
            let source = match (&i.jwks_file, &i.jwks_uri) {
                (Some(f), _) => jwks::Source::File(f.clone()),
                (None, Some(u)) => {
                    jwks::Source::Uri(u.parse().map_err(|_| SetupError::Uri(u.clone()))?)
                }
                (None, None) => return Err(SetupError::Uri(String::new())),
            };
            issuers.push(Issuer {
                cfg: i.clone(),
                keys: jwks::Jwks::new(source, limits.clone(), tls.clone()),
            });
        }
        Ok(Verifier {
            cfg: cfg.clone(),
            issuers,
        })
    }

    /// A verifier that examines nothing (no issuers).
    pub fn off() -> Verifier {
        Verifier {
            cfg: OidcConfig::default(),
            issuers: Vec::new(),
        }
    }

    /// Checks a login of the workload `identity`: finds its human token, verifies it, and
    /// applies the `[oidc]` section's rule for that workload.
    pub async fn check_login(&self, login: &LoginRequest, identity: Option<&str>) -> LoginCheck {
        if self.issuers.is_empty() {
            return LoginCheck::Off;
        }
        let (on_invalid, on_missing) = self.cfg.actions_for(identity);
        let result = match human_token(login) {
            Some(token) => self.verify(token).await,
            None => Err(TokenError::NoToken),
        };
        let action = match &result {
            Ok(_) => None,
            Err(TokenError::NoToken) => Some(on_missing),
            Err(_) => Some(on_invalid),
        };
        match (result, action) {
            (Ok(h), _) => LoginCheck::Verified(h),
            (Err(_), Some(OnToken::Allow) | None) => LoginCheck::Allowed,
            (Err(e), Some(OnToken::AllowFlag)) => LoginCheck::Flagged(e),
            (Err(e), Some(OnToken::Deny)) => LoginCheck::Denied(e),
        }
    }

    /// Verifies one token against the configured issuers.
    pub async fn verify(&self, token: &str) -> Result<HumanIdentity, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(describe(&e)))?;
        let iss = unverified_issuer(token)?;
        let Some(issuer) = self.issuers.iter().find(|i| i.cfg.issuer == iss) else {
            return Err(TokenError::WrongIssuer(cut(&iss)));
        };
        if !is_asymmetric(header.alg) {
            return Err(TokenError::UnsupportedAlgorithm(format!(
                "{:?}",
                header.alg
            )));
        }
        let jwk = match issuer.keys.key(header.kid.as_deref()).await {
            jwks::Lookup::Found(k) => k,
            jwks::Lookup::UnknownKid => return Err(TokenError::UnknownKid),
            jwks::Lookup::Unavailable(e) => return Err(TokenError::JwksUnreachable(e)),
        };
        let key = decoding_key(&jwk, header.alg)?;
        let mut v = Validation::new(header.alg);
        v.leeway = self.cfg.clock_skew_s;
        v.validate_nbf = true;
        v.set_audience(&issuer.cfg.audiences);
        v.set_issuer(&[&issuer.cfg.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
            .map_err(|e| map_error(&e, &iss))?;
        Ok(identity_from(&data.claims, &issuer.cfg))
    }
}

/// The login's human token, if it has one (see the module documentation).
fn human_token(login: &LoginRequest) -> Option<&str> {
    let token = login.token_for_validation()?;
    match login.authenticator {
        Authenticator::KeyPair => None,
        Authenticator::OAuth | Authenticator::ProgrammaticAccessToken => Some(token),
        _ if login.token_shape == Some(TokenShape::Jwt) => Some(token),
        _ => None,
    }
}

/// The `iss` of a token whose signature is not checked yet: only to pick the issuer's keys.
fn unverified_issuer(token: &str) -> Result<String, TokenError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| TokenError::Malformed("not three segments".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed("the claims are not base64url".into()))?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Malformed("the claims are not JSON".into()))?;
    match claims.get("iss") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        _ => Err(TokenError::Malformed("no iss claim".into())),
    }
}

fn is_asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn decoding_key(jwk: &Jwk, alg: Algorithm) -> Result<DecodingKey, TokenError> {
    if let Some(key_alg) = jwk.common.key_algorithm {
        // A key that names its algorithm is used with that one only.
        if format!("{key_alg:?}") != format!("{alg:?}") {
            return Err(TokenError::UnsupportedAlgorithm(format!("{alg:?}")));
        }
    }
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|_| TokenError::UnsupportedAlgorithm(format!("{alg:?}")))?;
    if key.family() != alg.family() {
        return Err(TokenError::UnsupportedAlgorithm(format!("{alg:?}")));
    }
    Ok(key)
}

fn map_error(e: &jsonwebtoken::errors::Error, iss: &str) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidAudience => TokenError::WrongAudience,
        K::InvalidIssuer => TokenError::WrongIssuer(cut(iss)),
        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidEddsaKey => {
            TokenError::BadSignature
        }
        K::InvalidAlgorithm | K::UnsupportedAlgorithm | K::MissingAlgorithm => {
            TokenError::UnsupportedAlgorithm("mismatch".into())
        }
        K::MissingRequiredClaim(c) if c == "aud" => TokenError::WrongAudience,
        _ => TokenError::Malformed(describe(e)),
    }
}

/// An error's text without anything of the token (jsonwebtoken's messages carry none).
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    cut(&e.to_string())
}

fn cut(s: &str) -> String {
    s.chars().take(MAX_CLAIM_CHARS).collect()
}

fn identity_from(claims: &serde_json::Value, issuer: &IssuerConfig) -> HumanIdentity {
    let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(cut);
    let groups = match claims.get(&issuer.groups_claim) {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|g| g.as_str())
            .take(MAX_GROUPS)
            .map(cut)
            .collect(),
        Some(serde_json::Value::String(g)) => vec![cut(g)],
        _ => Vec::new(),
    };
    HumanIdentity {
        issuer: cut(&issuer.issuer),
        subject: text("sub").unwrap_or_default(),
        email: text("email"),
        groups,
    }
}

#[cfg(test)]
mod tests;
