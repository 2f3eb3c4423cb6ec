//! One audit event: the row every part of the agent hands to the audit writer.
//!
//! The struct mirrors the Parquet schema column for column (see `schema.rs` for the Arrow side and
//! the OCSF names). Every field but the four that identify the event is optional, because each event
//! kind fills only the columns it knows. Later schema versions only add fields.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Lower-case hexadecimal digits, for `sql_sha256`.
const HEX: &[u8; 16] = b"0123456789abcdef";
use uuid::Uuid;

use super::vocabulary::{
    CloseReason, ConnectionMode, Decision, Flag, LifecycleAction, RecordingStatus,
};

/// What an event records; the `event_kind` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A connection the agent accepted (intercepted or passed through; see `connection_mode`).
    Connection,
    /// A Snowflake login.
    Login,
    /// A Snowflake logout or the end of a session.
    Logout,
    /// One SQL statement.
    Query,
    /// Something the agent refused.
    Denial,
    /// The agent's own life: start, stop, config reload or rejection, audit gap.
    Lifecycle,
    /// An HTTP request to an intercepted Snowflake host that is neither a login nor a statement
    /// the agent reads (Snowflake's REST resource APIs, endpoints it does not know): method,
    /// path, status and bytes, with the session and identity behind it.
    Request,
}

impl EventKind {
    /// The name stored in the `event_kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connection => "connection",
            EventKind::Login => "login",
            EventKind::Logout => "logout",
            EventKind::Query => "query",
            EventKind::Denial => "denial",
            EventKind::Lifecycle => "lifecycle",
            EventKind::Request => "request",
        }
    }

    /// Every kind, for tools that list or validate kinds.
    pub const ALL: [EventKind; 7] = [
        EventKind::Connection,
        EventKind::Login,
        EventKind::Logout,
        EventKind::Query,
        EventKind::Denial,
        EventKind::Lifecycle,
        EventKind::Request,
    ];

    /// The kind stored as `s` in the `event_kind` column, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A row of the audit table. Build one with [`Event::new`] and fill the columns the event knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    // when and what
    /// When the agent saw the event (UTC, microsecond precision in the files); files are partitioned by it.
    pub event_time: SystemTime,
    /// A UUID v7, unique per event; the key that makes recovery exactly-once.
    pub event_id: Uuid,
    /// What the event records.
    pub event_kind: EventKind,
    /// The host name of the machine the agent runs on.
    pub host: String,
    /// The agent's version.
    pub agent_version: String,

    // who
    /// Thread id of the caller.
    pub pid: Option<u32>,
    /// Process id of the caller.
    pub tgid: Option<u32>,
    /// Parent process id of the caller.
    pub ppid: Option<u32>,
    /// Real user id of the caller.
    pub uid: Option<u32>,
    /// Real group id of the caller.
    pub gid: Option<u32>,
    /// User name of `uid`.
    pub user_name: Option<String>,
    /// The caller's `comm`.
    pub comm: Option<String>,
    /// The caller's executable path.
    pub exe: Option<String>,
    /// The caller's command line, bounded.
    pub cmdline: Option<String>,
    /// The caller's cgroup, relative to the cgroup2 mount.
    pub cgroup_path: Option<String>,
    /// The caller's cgroup id.
    pub cgroup_id: Option<u64>,
    /// The systemd unit the cgroup belongs to.
    pub systemd_unit: Option<String>,
    /// A container id found in the cgroup path.
    pub container_id: Option<String>,
    /// A Kubernetes pod UID found in the cgroup path.
    pub pod_uid: Option<String>,
    /// The enrollment's workload identity.
    pub workload_identity: Option<String>,
    /// The enrollment's labels.
    pub labels: BTreeMap<String, String>,
    /// The human behind the workload, when known.
    pub human_identity: Option<String>,

    // where
    /// The client's address.
    pub src_ip: Option<IpAddr>,
    /// The client's port.
    pub src_port: Option<u16>,
    /// The destination the client asked for.
    pub dst_ip: Option<IpAddr>,
    /// The destination port the client asked for.
    pub dst_port: Option<u16>,
    /// The TLS server name the client sent.
    pub sni: Option<String>,
    /// How a connection was carried (connection events).
    pub connection_mode: Option<ConnectionMode>,
    /// The agent's id of the connection; joins the events of one connection.
    pub connection_id: Option<u64>,
    /// Why a connection ended (connection events).
    pub close_reason: Option<CloseReason>,

    // Snowflake
    /// Snowflake account.
    pub account: Option<String>,
    /// The Snowflake user named at login.
    pub login_user: Option<String>,
    /// The authenticator used at login.
    pub authenticator: Option<String>,
    /// Role in effect.
    pub role: Option<String>,
    /// Warehouse in effect.
    pub warehouse: Option<String>,
    /// Database in effect.
    pub database: Option<String>,
    /// Schema in effect.
    pub schema: Option<String>,
    /// Snowflake's session id.
    pub snowflake_session_id: Option<String>,
    /// The agent's session id.
    pub session_id: Option<String>,
    /// The run's correlation id (the `snowtrail exec` run the caller belongs to).
    pub correlation_id: Option<String>,
    /// The driver's request id.
    pub request_id: Option<String>,
    /// Snowflake's query id.
    pub query_id: Option<String>,
    /// For a statement of a multi-statement request, the request's query id.
    pub parent_query_id: Option<String>,
    /// Driver name.
    pub driver: Option<String>,
    /// Driver version.
    pub driver_version: Option<String>,

    // the statement
    /// SQL text with credential literals redacted.
    pub sql_text: Option<String>,
    /// Statement type (SELECT, INSERT, ...).
    pub statement_type: Option<String>,
    /// Number of bind values.
    pub bind_count: Option<u32>,
    /// Whether the statement was submitted asynchronously.
    pub is_async: Option<bool>,

    // the outcome
    /// What the agent decided: the policy's decision, an approval, or a refusal.
    pub decision: Option<Decision>,
    /// The policy rule that decided.
    pub policy_rule: Option<String>,
    /// Who approved or rejected a held statement.
    pub approver: Option<String>,
    /// When a held statement was decided.
    pub decided_at: Option<SystemTime>,
    /// Whether the operation succeeded.
    pub success: Option<bool>,
    /// Snowflake error code, or the agent's own.
    pub error_code: Option<String>,
    /// SQL state.
    pub sql_state: Option<String>,
    /// Error message.
    pub error_message: Option<String>,
    /// Rows the statement produced (the rows delivered, when a truncating row limit cut them).
    pub rows_produced: Option<u64>,
    /// Bytes of result.
    pub result_bytes: Option<u64>,
    /// Number of result chunks.
    pub chunk_count: Option<u32>,
    /// Duration in milliseconds.
    pub duration_ms: Option<u64>,
    /// Bytes the agent read from the client, TLS records included.
    pub bytes_in: Option<u64>,
    /// Bytes the agent wrote to the client, TLS records included.
    pub bytes_out: Option<u64>,
    /// Marks on the event: how completely the agent saw it, or what it did to it.
    pub flags: Vec<Flag>,
    /// For lifecycle events, what happened.
    pub lifecycle_action: Option<LifecycleAction>,
    /// Free text detail for lifecycle and denial events.
    pub detail: Option<String>,

    // added in schema version 2: workload identity and the run
    /// The Kubernetes QoS class of the pod (`guaranteed`, `burstable`, `besteffort`).
    pub pod_qos: Option<String>,
    /// The runtime of `container_id` (`docker`, `containerd`, `cri-o`, `podman`).
    pub container_runtime: Option<String>,
    /// The caller's ancestors inside the enrolled cgroup, nearest first, as `pid:comm`.
    #[serde(default)]
    pub parent_chain: Vec<String>,
    /// When the caller's process started; with `tgid` it names one process for the host's life.
    pub process_start_time: Option<SystemTime>,
    /// Who started the `snowtrail exec` run (or enrolled the cgroup): the control client's user.
    pub started_by: Option<String>,
    /// The login user (`loginuid`) of whoever started the run, when it was set.
    pub started_by_login: Option<String>,
    /// For a PUT/GET statement, the storage requests its transfers made through the agent.
    pub stage_requests: Option<u32>,
    /// For a PUT/GET statement, the bytes its transfers sent to storage (uploads).
    pub stage_bytes_sent: Option<u64>,
    /// For a PUT/GET statement, the bytes its transfers received from storage (downloads).
    pub stage_bytes_received: Option<u64>,
    /// The groups of the human identity: the groups claim of the session's verified OIDC token.
    #[serde(default)]
    pub human_groups: Vec<String>,

    // added in schema version 3: credential brokering and session recording
    /// Whether the agent brokered the session's login with a key pair it holds (`[broker]`).
    pub brokered: Option<bool>,
    /// For a statement, what became of its recorded result: `full`, `truncated`, `off`, `failed`.
    pub recording: Option<RecordingStatus>,
    /// Plaintext result bytes kept in the statement's recording.
    pub recording_bytes_kept: Option<u64>,
    /// Result bytes the agent saw for the statement's recording.
    pub recording_bytes_seen: Option<u64>,
    // added in schema version 4: bounded statement text
    /// For a statement whose text `audit.max_sql_bytes` cut: the SHA-256 (hex) of the whole text,
    /// so that it can still be told apart from, and matched with, others.
    pub sql_sha256: Option<String>,
    /// For a statement: how many times the driver sent it (the same request id), 1 without a
    /// retry; the row holds the last attempt's outcome.
    pub attempts: Option<u32>,
    /// For a `request` event (or its denial): the HTTP method.
    pub http_method: Option<String>,
    /// For a `request` event (or its denial): the URL's path, without its query string.
    pub http_path: Option<String>,
    /// For a `request` event: the HTTP status the workload received.
    pub http_status: Option<u16>,
}

impl Event {
    /// Bounds the statement text to `max` bytes: a longer one is cut at a character boundary,
    /// flagged [`Flag::SqlTruncated`], and its whole text's SHA-256 recorded in `sql_sha256`.
    pub fn cap_sql(&mut self, max: usize) {
        use sha2::Digest as _;
        let Some(text) = self.sql_text.as_mut() else {
            return;
        };
        if text.len() > max {
            let digest = sha2::Sha256::digest(text.as_bytes());
            let mut hex = String::with_capacity(64);
            for b in digest {
                hex.push(char::from(HEX[usize::from(b >> 4)]));
                hex.push(char::from(HEX[usize::from(b & 0xf)]));
            }
            self.sql_sha256 = Some(hex);
            let mut cut = max;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            self.add_flag(Flag::SqlTruncated);
        }
    }

    /// Adds `flag` to `flags` unless the event carries it already.
    pub fn add_flag(&mut self, flag: Flag) {
        if !self.has_flag(flag) {
            self.flags.push(flag);
        }
    }

    /// Whether the event carries `flag`.
    pub fn has_flag(&self, flag: Flag) -> bool {
        self.flags.contains(&flag)
    }

    /// Adds `outcome_unknown` to `flags` (once): the row of an intent nobody completed.
    pub(crate) fn mark_outcome_unknown(&mut self) {
        self.add_flag(Flag::OutcomeUnknown);
    }

    /// Starts an event of `kind` at `event_time` with a fresh UUID v7 and this host's name and version.
    pub fn new(kind: EventKind, event_time: SystemTime, host: &str) -> Self {
        Event {
            event_time,
            event_id: Uuid::now_v7(),
            event_kind: kind,
            host: host.to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: None,
            tgid: None,
            ppid: None,
            uid: None,
            gid: None,
            user_name: None,
            comm: None,
            exe: None,
            cmdline: None,
            cgroup_path: None,
            cgroup_id: None,
            systemd_unit: None,
            container_id: None,
            pod_uid: None,
            workload_identity: None,
            labels: BTreeMap::new(),
            human_identity: None,
            src_ip: None,
            src_port: None,
            dst_ip: None,
            dst_port: None,
            sni: None,
            connection_mode: None,
            connection_id: None,
            close_reason: None,
            account: None,
            login_user: None,
            authenticator: None,
            role: None,
            warehouse: None,
            database: None,
            schema: None,
            snowflake_session_id: None,
            session_id: None,
            correlation_id: None,
            request_id: None,
            query_id: None,
            parent_query_id: None,
            driver: None,
            driver_version: None,
            sql_text: None,
            statement_type: None,
            bind_count: None,
            is_async: None,
            decision: None,
            policy_rule: None,
            approver: None,
            decided_at: None,
            success: None,
            error_code: None,
            sql_state: None,
            error_message: None,
            rows_produced: None,
            result_bytes: None,
            chunk_count: None,
            duration_ms: None,
            bytes_in: None,
            bytes_out: None,
            flags: Vec::new(),
            lifecycle_action: None,
            detail: None,
            pod_qos: None,
            container_runtime: None,
            parent_chain: Vec::new(),
            process_start_time: None,
            started_by: None,
            started_by_login: None,
            stage_requests: None,
            stage_bytes_sent: None,
            stage_bytes_received: None,
            human_groups: Vec::new(),
            brokered: None,
            recording: None,
            recording_bytes_kept: None,
            recording_bytes_seen: None,
            sql_sha256: None,
            attempts: None,
            http_method: None,
            http_path: None,
            http_status: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn statement(sql: &str) -> Event {
        let mut e = Event::new(EventKind::Query, SystemTime::UNIX_EPOCH, "h");
        e.sql_text = Some(sql.to_owned());
        e
    }

    #[test]
    fn a_long_statement_is_cut_at_a_character_and_identified_whole() {
        // 'é' is two bytes: a cut at 1025 bytes falls inside one and moves back.
        let long = format!("select '{}'", "é".repeat(2000));
        let mut e = statement(&long);
        e.cap_sql(1025);
        let kept = e.sql_text.clone().unwrap();
        assert!(kept.len() <= 1025 && kept.len() >= 1024, "{}", kept.len());
        assert!(long.starts_with(&kept));
        assert!(e.has_flag(Flag::SqlTruncated));
        let whole = e.sql_sha256.clone().unwrap();
        assert_eq!(whole.len(), 64);
        // The same statement cut elsewhere has the same hash: it is of the whole text.
        let mut other = statement(&long);
        other.cap_sql(2000);
        assert_eq!(other.sql_sha256, Some(whole));
        assert_eq!(e.flags, vec![Flag::SqlTruncated]);
        // Short enough: nothing changes.
        let mut full = statement(&long);
        full.cap_sql(1 << 20);
        assert_eq!(full.sql_sha256, None);
        assert_eq!(full.sql_text.as_deref(), Some(long.as_str()));
        assert!(full.flags.is_empty());
    }

    #[test]
    fn the_hash_is_sha256_of_the_whole_text_and_rows_without_sql_have_none() {
        let mut e = statement("select 1");
        e.cap_sql(4);
        assert_eq!(e.sql_text.as_deref(), Some("sele"));
        // `printf 'select 1' | sha256sum`
        assert_eq!(
            e.sql_sha256.as_deref(),
            Some("822ae07d4783158bc1912bb623e5107cc9002d519e1143a9c200ed6ee18b6d0f")
        );
        let mut c = Event::new(EventKind::Connection, SystemTime::UNIX_EPOCH, "h");
        c.cap_sql(1024);
        assert_eq!(c.sql_sha256, None);
    }
}
