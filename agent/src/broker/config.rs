//! The `[broker]` section: which workload identities log in to Snowflake with a key pair the agent
//! holds, as which user.
//!
//! ```toml
//! [broker]
//! jwt_lifetime_s = 60
//!
//! [broker.identities.etl-nightly]
//! user = "ETL_SVC"
//! private_key = "/etc/snowtrail/keys/etl.p8"
//! # account = "MYORG-ACCT1"
//! # role = "ETL_ROLE"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default `broker.jwt_lifetime_s`: how long a key-pair login JWT is valid (4.x drivers use 60).
pub const DEFAULT_JWT_LIFETIME_S: u64 = 60;
/// Default `broker.max_handles`: token handles kept at once (two per live session).
pub const DEFAULT_MAX_HANDLES: usize = 131_072;

/// The `[broker]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Brokered workloads by identity (the enrollment's `--identity`, exactly).
    pub identities: BTreeMap<String, BrokeredIdentity>,
    /// Lifetime of each login JWT, in seconds (Snowflake accepts at most 3600).
    pub jwt_lifetime_s: u64,
    /// Token handles kept at once; past it the oldest go (their sessions must log in again).
    pub max_handles: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            identities: BTreeMap::new(),
            jwt_lifetime_s: DEFAULT_JWT_LIFETIME_S,
            max_handles: DEFAULT_MAX_HANDLES,
        }
    }
}

/// One brokered workload (`[broker.identities.<identity>]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BrokeredIdentity {
    /// The Snowflake login name the workload's sessions use.
    pub user: String,
    /// The user's private key: unencrypted PKCS#8 PEM RSA, owned by the agent's user and readable
    /// by no one else.
    pub private_key: PathBuf,
    /// The account named in the JWT and the login; else the login's own `ACCOUNT_NAME`.
    #[serde(default)]
    pub account: Option<String>,
    /// The role the session starts with; else the one the workload asked for.
    #[serde(default)]
    pub role: Option<String>,
}

impl BrokerConfig {
    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.jwt_lifetime_s == 0
            || self.jwt_lifetime_s > crate::snowflake::keypair::MAX_JWT_LIFETIME_S
        {
            return Err(format!(
                "broker.jwt_lifetime_s must be between 1 and {}",
                crate::snowflake::keypair::MAX_JWT_LIFETIME_S
            ));
        }
        if self.max_handles < 16 {
            return Err("broker.max_handles must be at least 16".into());
        }
        for (name, id) in &self.identities {
            if name.trim().is_empty() {
                return Err("broker.identities has an empty identity".into());
            }
            if id.user.trim().is_empty() {
                return Err(format!("broker.identities.{name}.user is empty"));
            }
            if !id.private_key.is_absolute() {
                return Err(format!(
                    "broker.identities.{name}.private_key must be an absolute path, got {}",
                    id.private_key.display()
                ));
            }
            for (key, value) in [("account", &id.account), ("role", &id.role)] {
                if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                    return Err(format!("broker.identities.{name}.{key} is empty"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BrokerConfig, String> {
        let c: BrokerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map(|()| c)
    }

    #[test]
    fn identities_and_checks() {
        let c = parse(
            "jwt_lifetime_s = 120\n[identities.etl-nightly]\nuser = \"ETL_SVC\"\n\
             private_key = \"/etc/snowtrail/keys/etl.p8\"\nrole = \"ETL_ROLE\"\n",
        )
        .unwrap();
        let id = &c.identities["etl-nightly"];
        assert_eq!(id.user, "ETL_SVC");
        assert_eq!(id.role.as_deref(), Some("ETL_ROLE"));
        assert_eq!(id.account, None);
        assert_eq!(c.jwt_lifetime_s, 120);
        assert!(
            parse("[identities.x]\nuser = \"U\"\nprivate_key = \"keys/x.p8\"\n")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(
            parse("[identities.x]\nuser = \"\"\nprivate_key = \"/k\"\n")
                .unwrap_err()
                .contains("user is empty")
        );
        assert!(
            parse("jwt_lifetime_s = 7200\n")
                .unwrap_err()
                .contains("3600")
        );
        assert!(
            parse("[identities.x]\nuser = \"U\"\nprivate_key = \"/k\"\npassword = \"p\"\n")
                .unwrap_err()
                .contains("password")
        );
    }
}
