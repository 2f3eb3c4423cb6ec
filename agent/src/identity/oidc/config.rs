//! The `[oidc]` section: which issuers the agent trusts for human login tokens, and what an
//! invalid or missing token means for each workload.
//!
//! ```toml
//! [oidc]
//! on_invalid = "allow_flag"      # default for every workload
//! on_missing = "allow"
//! clock_skew_s = 60
//!
//! [[oidc.issuers]]
//! issuer = "https://idp.example.com"
//! audiences = ["snowflake"]
//! jwks_uri = "https://idp.example.com/.well-known/jwks.json"
//!
//! [[oidc.require]]
//! identity = "etl-*"
//! on_invalid = "deny"
//! on_missing = "deny"
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default `oidc.clock_skew_s`: leeway on `exp` and `nbf`.
pub const DEFAULT_CLOCK_SKEW_S: u64 = 60;
/// Default `oidc.jwks_refresh_s`: how long fetched keys are used before they are fetched again.
pub const DEFAULT_JWKS_REFRESH_S: u64 = 3_600;
/// Default `oidc.fetch_timeout_ms`: the whole JWKS fetch (connect, TLS, request, body).
pub const DEFAULT_FETCH_TIMEOUT_MS: u64 = 5_000;
/// Default `oidc.jwks_min_refetch_s`: the least time between two fetches of one issuer's keys
/// (a token with an unknown `kid` triggers a fetch; this keeps a flood of them from hammering the
/// issuer).
pub const DEFAULT_JWKS_MIN_REFETCH_S: u64 = 30;
/// Default `oidc.max_jwks_bytes`: the largest JWKS document read, from a file or the network.
pub const DEFAULT_MAX_JWKS_BYTES: usize = 256 * 1024;
/// Default `groups_claim` of an issuer.
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";

/// What a login's token state means for the login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnToken {
    /// Forward the login, mark nothing.
    Allow,
    /// Forward the login; its events and its session's events carry the flag
    /// `identity_unverified`.
    AllowFlag,
    /// Answer the driver with a login error and never forward the login; record a `denial`.
    Deny,
}

/// The `[oidc]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The trusted issuers. With none, login tokens are not examined at all.
    pub issuers: Vec<IssuerConfig>,
    /// What an invalid token (expired, wrong audience, bad signature, unknown issuer, keys
    /// unreachable, ...) means for a workload no `require` rule matches.
    pub on_invalid: OnToken,
    /// What a login without a human token (password, key pair, SSO) means for a workload no
    /// `require` rule matches.
    pub on_missing: OnToken,
    /// Per-workload rules, first match wins.
    pub require: Vec<RequireRule>,
    /// Leeway on `exp` and `nbf`, in seconds.
    pub clock_skew_s: u64,
    /// How long keys fetched from a `jwks_uri` are used before they are fetched again, in seconds.
    pub jwks_refresh_s: u64,
    /// The least time between two fetches of one issuer's keys, in seconds.
    pub jwks_min_refetch_s: u64,
    /// How long one JWKS fetch may take, in milliseconds.
    pub fetch_timeout_ms: u64,
    /// The largest JWKS document read, in bytes.
    pub max_jwks_bytes: usize,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuers: Vec::new(),
            on_invalid: OnToken::AllowFlag,
            on_missing: OnToken::Allow,
            require: Vec::new(),
            clock_skew_s: DEFAULT_CLOCK_SKEW_S,
            jwks_refresh_s: DEFAULT_JWKS_REFRESH_S,
            jwks_min_refetch_s: DEFAULT_JWKS_MIN_REFETCH_S,
            fetch_timeout_ms: DEFAULT_FETCH_TIMEOUT_MS,
            max_jwks_bytes: DEFAULT_MAX_JWKS_BYTES,
        }
    }
}

/// One trusted issuer (`[[oidc.issuers]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` claim, exactly as the issuer writes it.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// A JWKS document on disk (read at start and on each refresh).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The issuer's JWKS URL (HTTPS), fetched with the upstream trust roots.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The claim holding the user's groups (a list of strings, or one string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

fn default_groups_claim() -> String {
    DEFAULT_GROUPS_CLAIM.to_owned()
}

/// A per-workload rule (`[[oidc.require]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequireRule {
    /// The workload identity it applies to: exact, or with `*` matching any run of characters.
    pub identity: String,
    /// What an invalid token means; the section's `on_invalid` when absent.
    #[serde(default)]
    pub on_invalid: Option<OnToken>,
    /// What a missing token means; the section's `on_missing` when absent.
    #[serde(default)]
    pub on_missing: Option<OnToken>,
}

impl OidcConfig {
    /// Checks what the types alone cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (i, iss) in self.issuers.iter().enumerate() {
            let at = format!("oidc.issuers[{i}]");
            if iss.issuer.trim().is_empty() {
                return Err(format!("{at}.issuer is empty"));
            }
            if iss.audiences.is_empty() || iss.audiences.iter().any(|a| a.is_empty()) {
                return Err(format!(
                    "{at}.audiences must name at least one non-empty audience"
                ));
            }
            match (&iss.jwks_file, &iss.jwks_uri) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(format!("{at} needs exactly one of jwks_file and jwks_uri"));
                }
                (Some(f), None) if !f.is_absolute() => {
                    return Err(format!(
                        "{at}.jwks_file must be an absolute path, got {}",
                        f.display()
                    ));
                }
                (None, Some(u)) => {
                    let uri: http::Uri = u
                        .parse()
                        .map_err(|e| format!("{at}.jwks_uri {u:?} is not a URL: {e}"))?;
                    if uri.scheme_str() != Some("https") || uri.host().is_none() {
                        return Err(format!("{at}.jwks_uri must be an https:// URL, got {u:?}"));
                    }
                }
                _ => {}
            }
            if iss.groups_claim.is_empty() {
                return Err(format!("{at}.groups_claim is empty"));
            }
            if self.issuers[..i].iter().any(|o| o.issuer == iss.issuer) {
                return Err(format!("{at}: issuer {:?} is listed twice", iss.issuer));
            }
        }
        for (i, r) in self.require.iter().enumerate() {
            if r.identity.is_empty() {
                return Err(format!("oidc.require[{i}].identity is empty"));
            }
        }
        if self.fetch_timeout_ms == 0 || self.fetch_timeout_ms > 120_000 {
            return Err("oidc.fetch_timeout_ms must be between 1 and 120000".into());
        }
        if self.jwks_refresh_s == 0 {
            return Err("oidc.jwks_refresh_s must be at least 1".into());
        }
        if self.max_jwks_bytes < 1024 || self.max_jwks_bytes > 16 * 1024 * 1024 {
            return Err("oidc.max_jwks_bytes must be between 1 KiB and 16 MiB".into());
        }
        Ok(())
    }

    /// What an invalid and a missing token mean for `identity` (the workload identity, if the
    /// connection has one): the first matching `require` rule, else the section's defaults.
    pub fn actions_for(&self, identity: Option<&str>) -> (OnToken, OnToken) {
        let rule = identity.and_then(|id| self.require.iter().find(|r| glob(&r.identity, id)));
        match rule {
            Some(r) => (
                r.on_invalid.unwrap_or(self.on_invalid),
                r.on_missing.unwrap_or(self.on_missing),
            ),
            None => (self.on_invalid, self.on_missing),
        }
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars() {
        assert!(glob("etl-*", "etl-nightly"));
        assert!(glob("etl-*", "etl-"));
        assert!(!glob("etl-*", "bi-etl-x"));
        assert!(glob("*", "anything"));
        assert!(glob("a*b*c", "a-x-b-y-c"));
        assert!(!glob("a*b*c", "a-x-c"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exact2"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn first_matching_rule_decides_and_inherits_defaults() {
        let cfg: OidcConfig = toml::from_str(
            r#"
            on_invalid = "allow_flag"
            [[require]]
            identity = "etl-*"
            on_invalid = "deny"
            [[require]]
            identity = "*"
            on_missing = "allow_flag"
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg.actions_for(Some("etl-a")),
            (OnToken::Deny, OnToken::Allow)
        );
        assert_eq!(
            cfg.actions_for(Some("bi")),
            (OnToken::AllowFlag, OnToken::AllowFlag)
        );
        assert_eq!(cfg.actions_for(None), (OnToken::AllowFlag, OnToken::Allow));
    }

    #[test]
    fn issuers_need_one_key_source_and_https() {
        let bad = |text: &str| {
            let cfg: OidcConfig = toml::from_str(text).unwrap();
            cfg.validate().unwrap_err()
        };
        let e = bad(r#"[[issuers]]
            issuer = "https://i"
            audiences = ["a"]"#);
        assert!(e.contains("exactly one of jwks_file and jwks_uri"), "{e}");
        let e = bad(r#"[[issuers]]
            issuer = "https://i"
            audiences = ["a"]
            jwks_uri = "http://i/jwks""#);
        assert!(e.contains("https://"), "{e}");
        let e = bad(r#"[[issuers]]
            issuer = "https://i"
            audiences = []
            jwks_file = "/k.json""#);
        assert!(e.contains("audiences"), "{e}");
        let ok: OidcConfig = toml::from_str(
            r#"[[issuers]]
            issuer = "https://i"
            audiences = ["a"]
            jwks_uri = "https://i/jwks""#,
        )
        .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.issuers[0].groups_claim, "groups");
    }
}
