//! What the agent knows of one Snowflake session: who logged in, with which driver, the human
//! behind the login's token, and the role, warehouse, database and schema now in effect.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use crate::snowflake::Refusal;

/// What the agent knows of one Snowflake session.
#[derive(Debug, Clone, Default)]
pub struct TrackedSession {
    /// The agent's own id of the session (a UUID v7), the `session_id` column.
    pub id: String,
    /// The session's correlation id: its exec run's id, else its own id (`correlation_id`).
    pub correlation_id: String,
    /// Snowflake's session id.
    pub snowflake_session_id: Option<String>,
    /// The account named at login.
    pub account: Option<String>,
    /// The user named at login.
    pub login_user: Option<String>,
    /// The authenticator of the login.
    pub authenticator: Option<String>,
    /// Driver name.
    pub driver: Option<String>,
    /// Driver version.
    pub driver_version: Option<String>,
    /// Role, warehouse, database, schema in effect (updated from query responses).
    pub context: Arc<Mutex<SessionContext>>,
    /// The human behind the session, from its login token ([`crate::identity::oidc`]).
    pub human: Human,
    /// The broker's number of the session when the agent logged it in with a key pair
    /// ([`crate::broker`]): its token handles share it.
    pub brokered: Option<u64>,
    /// Result bytes recorded for the session so far (`recording.max_bytes_per_session`).
    pub recorded: Arc<AtomicU64>,
}

/// What the login's token said about the human behind a session; every event of the session
/// carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Human {
    /// `human_identity`: the verified token's email, else its subject.
    pub identity: Option<String>,
    /// `human_groups`: the verified token's groups.
    pub groups: Vec<String>,
    /// The token did not verify and the login was allowed anyway: events are flagged
    /// `identity_unverified`.
    pub unverified: bool,
}

impl Human {
    /// What a login check means for the session: its human, or the refusal of the login.
    pub fn from_check(check: crate::identity::oidc::LoginCheck) -> Result<Human, Refusal> {
        use crate::identity::oidc::LoginCheck;
        match check {
            LoginCheck::Off | LoginCheck::Allowed => Ok(Human::default()),
            LoginCheck::Verified(h) => Ok(Human {
                identity: Some(h.name().to_owned()),
                groups: h.groups,
                unverified: false,
            }),
            LoginCheck::Flagged(e) => {
                tracing::warn!(reason = e.label(), error = %e, "login token not verified; login allowed and flagged");
                Ok(Human {
                    unverified: true,
                    ..Human::default()
                })
            }
            LoginCheck::Denied(e) => {
                tracing::warn!(reason = e.label(), error = %e, "login token not verified; login denied");
                Err(Refusal::LoginTokenInvalid {
                    label: e.label(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// The human columns and flag of an event of this session.
    pub fn fill(&self, e: &mut crate::audit::Event) {
        e.human_identity.clone_from(&self.identity);
        e.human_groups.clone_from(&self.groups);
        if self.unverified {
            e.add_flag(crate::audit::Flag::IdentityUnverified);
        }
    }
}

/// A session's current role, warehouse, database and schema.
#[derive(Debug, Clone, Default)]
pub struct SessionContext {
    /// Role.
    pub role: Option<String>,
    /// Warehouse.
    pub warehouse: Option<String>,
    /// Database.
    pub database: Option<String>,
    /// Schema.
    pub schema: Option<String>,
    /// The workload's own session QUERY_TAG (from the login, then `ALTER SESSION`), which the
    /// agent merges into each statement's tag.
    pub query_tag: Option<String>,
}
