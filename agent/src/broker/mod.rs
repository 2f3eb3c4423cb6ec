//! Credential brokering: workloads log in with a placeholder and the agent logs in for them with a
//! key pair only it holds, so workloads never hold Snowflake secrets.
//!
//! `[broker.identities.<identity>]` maps a workload identity to a Snowflake user and a private key
//! file ([`config`]). A login from a connection of that identity is rewritten: its credentials
//! (password, token, authenticator: whatever the workload sent) are dropped and replaced by an
//! RS256 key-pair JWT signed with the key ([`crate::snowflake::keypair`] builds it, [`key`] reads
//! the file and refuses one that others can read). Snowflake's session and master tokens in the
//! answer, and in each renewal's answer, are replaced by agent-issued [`handles`] before the
//! workload sees them; each request's handle is swapped back for the real token only when it
//! comes from the run or cgroup that logged in.
//!
//! What it does not do: it keeps no key in memory between logins (the file is read at each login,
//! so a rotated key is used at once), it never writes a key, JWT or real token to the audit or the
//! logs, and it brokers nothing for workloads no `[broker.identities]` entry names.

pub mod config;
pub mod handles;
pub mod key;

use std::path::PathBuf;

pub use config::{BrokerConfig, BrokeredIdentity};
pub use handles::{Handles, Owner, Resolved};
pub use key::{KeyError, SigningKey};

use crate::snowflake::keypair::{self, BrokeredLogin, KeyPairClaims, KeyPairError};
use crate::snowflake::{Refusal, RewriteError};

/// Why a brokered login could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The key file cannot be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The JWT could not be made.
    #[error(transparent)]
    KeyPair(#[from] KeyPairError),
    /// The login body could not be rewritten.
    #[error("cannot rewrite the login: {0}")]
    Rewrite(#[from] RewriteError),
    /// The blocking task that reads the key did not finish.
    #[error("the key-reading task failed")]
    Task,
}

impl BrokerError {
    /// What the driver is told: a failed login naming the problem, never a secret or a path.
    pub fn refusal(&self) -> Refusal {
        let reason = match self {
            BrokerError::Key(e) => e.reason(),
            BrokerError::KeyPair(KeyPairError::NoAccount) => {
                "the login names no account and the broker configures none".to_owned()
            }
            BrokerError::KeyPair(_) => "its private key cannot sign".to_owned(),
            BrokerError::Rewrite(_) => return Refusal::Unparsed,
            BrokerError::Task => "an internal error".to_owned(),
        };
        Refusal::BrokerFailed { reason }
    }
}

/// A brokered login, ready to go upstream.
pub struct BrokeredBody {
    /// The rewritten login body (decoded JSON).
    pub body: Vec<u8>,
    /// The Snowflake user it logs in as.
    pub user: String,
    /// The public key fingerprint it was signed with (for logs; not a secret).
    pub fingerprint: String,
}

impl std::fmt::Debug for BrokeredBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokeredBody")
            .field("user", &self.user)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The broker: the configured identities and the handle table.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    /// Handles standing in for brokered sessions' tokens.
    pub handles: Handles,
}

impl Broker {
    /// A broker for `config`.
    pub fn new(config: &BrokerConfig) -> Broker {
        Broker {
            config: config.clone(),
            handles: Handles::new(config.max_handles),
        }
    }

    /// The brokered identity a connection of workload `identity` logs in as, if any.
    pub fn identity(&self, identity: Option<&str>) -> Option<&BrokeredIdentity> {
        self.config.identities.get(identity?)
    }

    /// Reads the identity's key and rewrites `decoded` (a parsed login request body whose
    /// `ACCOUNT_NAME` was `login_account`) into its key-pair login, at `now_s` seconds since the
    /// epoch. The file read and the signature run on the blocking pool.
    pub async fn login_body(
        &self,
        identity: &BrokeredIdentity,
        decoded: &[u8],
        login_account: Option<&str>,
        now_s: u64,
    ) -> Result<BrokeredBody, BrokerError> {
        let path: PathBuf = identity.private_key.clone();
        let user = identity.user.clone();
        let account = identity
            .account
            .clone()
            .or_else(|| login_account.map(str::to_owned));
        let configured_account = identity.account.clone();
        let lifetime = self.config.jwt_lifetime_s;
        let decoded = decoded.to_vec();
        tokio::task::spawn_blocking(move || {
            let key = SigningKey::load(&path)?;
            let account = account.ok_or(KeyPairError::NoAccount)?;
            let claims = KeyPairClaims::new(&account, &user, key.fingerprint(), now_s, lifetime);
            let jwt = claims.sign(key.encoding())?;
            let body = keypair::broker_login_body(
                &decoded,
                &BrokeredLogin {
                    user: &user,
                    account: configured_account.as_deref(),
                    jwt: &jwt,
                },
            )?;
            Ok(BrokeredBody {
                body,
                user,
                fingerprint: key.fingerprint().to_owned(),
            })
        })
        .await
        .map_err(|_| BrokerError::Task)?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    const KEY_A: &str = include_str!("../../tests/fixtures/keypair/rsa-a.p8");

    #[tokio::test]
    async fn a_login_is_brokered_with_the_identitys_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("etl.p8");
        std::fs::write(&key, KEY_A).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut cfg = BrokerConfig::default();
        cfg.identities.insert(
            "etl".into(),
            BrokeredIdentity {
                user: "ETL_SVC".into(),
                private_key: key.clone(),
                account: None,
                role: None,
            },
        );
        let b = Broker::new(&cfg);
        assert!(b.identity(Some("other")).is_none() && b.identity(None).is_none());
        let id = b.identity(Some("etl")).unwrap().clone();
        let body = br#"{"data":{"ACCOUNT_NAME":"xy12345.us-east-1","LOGIN_NAME":"placeholder","PASSWORD":"pw"}}"#;
        let out = b
            .login_body(&id, body, Some("xy12345.us-east-1"), 1_700_000_000)
            .await
            .unwrap();
        assert_eq!(out.user, "ETL_SVC");
        let parsed = crate::snowflake::parse_login_request(&out.body).unwrap();
        let claims = parsed.jwt_claims.unwrap();
        assert_eq!(claims.sub.as_deref(), Some("XY12345.ETL_SVC"));
        assert_eq!(
            claims.iss,
            Some(format!("XY12345.ETL_SVC.{}", out.fingerprint))
        );
        assert_eq!(claims.exp, Some(1_700_000_060));
        assert!(!format!("{out:?}").contains("eyJ"));

        // No account anywhere, and a key others can read: refused with a reason for the driver.
        let e = b.login_body(&id, body, None, 1).await.unwrap_err();
        assert!(matches!(e.refusal(), Refusal::BrokerFailed { .. }), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = b
            .login_body(&id, body, Some("xy12345"), 1)
            .await
            .unwrap_err();
        let Refusal::BrokerFailed { reason } = e.refusal() else {
            panic!("{e}")
        };
        assert!(
            reason.contains("other users") && !reason.contains("/"),
            "{reason}"
        );
    }
}
