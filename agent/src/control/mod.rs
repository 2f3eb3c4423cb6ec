//! The control socket: how the CLI talks to the daemon.
//!
//! A Unix stream socket (mode 0600, root only; the server also checks the peer's uid with
//! `SO_PEERCRED`) carrying one JSON object per line each way: a [`Request`], then its [`Response`].
//! A connection may carry several requests. The connection of `snowtrail exec` stays open while its
//! command runs, so the daemon learns when the CLI goes away even if it is killed.
//!
//! This module holds the wire types, the blocking [`Client`] the CLI uses and the daemon's
//! [`server`]; what each request does lives in [`handler`].

pub mod approvals;
pub mod handler;
pub mod server;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::enroll::{Listed, Selector};

/// Longest request or response line accepted, in bytes.
pub const MAX_LINE: usize = 1024 * 1024;

/// A request from the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Enroll an existing cgroup, named by path or by one of its processes.
    Enroll {
        /// The cgroup as the user wrote it (absolute under the mount or relative to it).
        cgroup: Option<String>,
        /// A process whose cgroup is meant.
        pid: Option<u32>,
        /// Workload identity.
        identity: String,
        /// Labels.
        labels: BTreeMap<String, String>,
        /// Egress lockdown for this cgroup.
        #[serde(default)]
        lockdown: bool,
    },
    /// Remove enrollments.
    Unenroll {
        /// Which.
        selector: Selector,
    },
    /// List enrollments.
    List,
    /// Make and enroll a transient cgroup for `snowtrail exec`.
    ExecBegin {
        /// Workload identity.
        identity: String,
        /// Labels.
        labels: BTreeMap<String, String>,
    },
    /// The exec'd command returned; remove its cgroup once empty.
    ExecEnd {
        /// The cgroup `ExecBegin` returned.
        cgroup: String,
    },
    /// Daemon health and counters.
    Status,
    /// List the statements held for approval.
    Pending,
    /// Approve a held statement: it is forwarded to Snowflake.
    Approve {
        /// The hold id (`snowtrail pending` shows it).
        id: String,
    },
    /// Reject a held statement: the driver gets an error.
    Reject {
        /// The hold id.
        id: String,
    },
}

/// The daemon's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The request succeeded.
    Ok {
        /// What it returned.
        #[serde(default)]
        data: Reply,
    },
    /// The request failed; `message` is a one-line explanation for the user.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// The payload of a successful response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// Nothing to report.
    #[default]
    Done,
    /// An enrollment was made.
    Enrolled {
        /// The cgroup path relative to the mount.
        cgroup: String,
        /// Its directory.
        cgroup_dir: PathBuf,
        /// The run id (exec only).
        run_id: Option<String>,
        /// The bundle of trusted roots (system plus the agent's CA) exec points workloads at.
        #[serde(default)]
        ca_bundle: Option<PathBuf>,
    },
    /// Enrollments removed.
    Removed {
        /// The cgroups that were removed.
        removed: Vec<String>,
    },
    /// `list`.
    List {
        /// One row per enrollment.
        enrollments: Vec<Listed>,
    },
    /// `status`.
    Status(Box<Status>),
    /// The statements held for approval.
    Pending {
        /// Oldest first.
        holds: Vec<HoldInfo>,
    },
    /// A hold was decided.
    Decided {
        /// The hold.
        hold: HoldInfo,
        /// `approved` or `rejected`.
        decision: String,
        /// Who decided, as recorded in the audit.
        approver: String,
    },
}

/// A statement held for approval, as `snowtrail pending` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldInfo {
    /// The hold id (the query id the driver sees while it waits).
    pub id: String,
    /// The rule that asked for approval.
    pub rule: String,
    /// The workload identity that sent it.
    pub identity: Option<String>,
    /// The Snowflake user.
    pub user: Option<String>,
    /// The role in effect.
    pub role: Option<String>,
    /// The statement, redacted as in the audit.
    pub sql: String,
    /// When the agent received it (RFC 3339, UTC).
    pub received_at: String,
    /// Seconds left before it times out (and is rejected).
    pub expires_in_s: u64,
}

/// What `snowtrail status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Agent version.
    pub version: String,
    /// Daemon process id.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// The proxy's listening addresses.
    pub listen: Vec<String>,
    /// Enrolled cgroups.
    pub enrolled: usize,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections refused for lack of an origin record.
    pub connections_refused: u64,
    /// Kernel counters: connect() calls redirected.
    pub redirected: u64,
    /// Cgroups the kernel programs are attached to now.
    #[serde(default)]
    pub programs_attached: usize,
    /// Enrolled cgroups' parents that carry a guard now.
    #[serde(default)]
    pub parents_guarded: usize,
    /// Kernel counters: connect() calls a guard sent to the agent.
    #[serde(default)]
    pub guarded: u64,
    /// Kernel counters: connects and UDP sends an egress lockdown refused.
    #[serde(default)]
    pub lockdown_denied: u64,
    /// Bytes carried from clients to upstreams since start.
    #[serde(default)]
    pub bytes_in: u64,
    /// Bytes carried from upstreams to clients since start.
    #[serde(default)]
    pub bytes_out: u64,
    /// Statements recorded (`query` events) since start.
    #[serde(default)]
    pub statements: u64,
    /// The audit writer's state.
    #[serde(default)]
    pub audit: AuditStatus,
    /// Locks found poisoned by a panic (and recovered) since start: nonzero means a bug to report.
    #[serde(default)]
    pub poisoned_locks: u64,
}

/// The audit writer's part of `snowtrail status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStatus {
    /// Whether the journal is writable now (false: disk full or directory unwritable).
    pub healthy: bool,
    /// Records in the journal not yet in a published Parquet file: how far the files lag.
    pub lag_records: u64,
    /// Events that could not be recorded since start.
    pub gap_events: u64,
    /// Journal records made durable since start.
    pub durable_records: u64,
    /// Parquet files published since start.
    pub files_published: u64,
    /// The files being written now, under the names they get when published.
    pub current_files: Vec<PathBuf>,
    /// The signed digest chain: its newest digest and whether the next one is late.
    #[serde(default)]
    pub digests: Option<DigestStatus>,
}

/// The digest chain's part of `snowtrail status`: what an operator compares with an off-host copy
/// of the chain, and the warning that digests stopped being written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestStatus {
    /// The newest digest's sequence number (0: no digest written yet).
    pub sequence: u64,
    /// Its path below the audit directory.
    pub path: Option<String>,
    /// SHA-256 of its bytes, hex.
    pub sha256: Option<String>,
    /// When it was written (RFC 3339).
    pub written: Option<String>,
    /// Files closed since, which the next digest will name.
    pub files_pending: usize,
    /// Seconds the next digest is late by (0: on time).
    pub overdue_s: u64,
    /// Why the chain's state could not be read, if it could not.
    pub error: Option<String>,
}

/// Why a CLI request failed before the daemon answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "the snowtrail daemon is not running (no control socket at {0}); start it with `snowtrail run` or `systemctl start snowtrail`"
    )]
    NotRunning(PathBuf),
    /// The socket exists but may only be opened by root.
    #[error("permission denied on {0}: the control socket is for root only")]
    PermissionDenied(PathBuf),
    /// Talking to the daemon failed half-way.
    #[error("control socket {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The daemon answered something that is not a response.
    #[error("control socket {0}: malformed response: {1}")]
    Protocol(PathBuf, String),
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(String),
}

/// A blocking connection to the daemon, for the CLI.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the daemon's control socket.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.to_owned())
            }
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.to_owned()),
            _ => ClientError::Io(path.to_owned(), e),
        })?;
        let io = |e| ClientError::Io(path.to_owned(), e);
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Client {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends a request and waits for its reply; a refusal becomes [`ClientError::Refused`].
    pub fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let io = |e| ClientError::Io(self.path.clone(), e);
        let mut line = serde_json::to_vec(request)
            .map_err(|e| ClientError::Protocol(self.path.clone(), e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).map_err(io)?;
        let mut answer = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_line(&mut answer)
            .map_err(|e| ClientError::Io(self.path.clone(), e))?;
        if n == 0 {
            return Err(ClientError::Protocol(
                self.path.clone(),
                "the daemon closed the connection".into(),
            ));
        }
        match serde_json::from_str::<Response>(&answer) {
            Ok(Response::Ok { data }) => Ok(data),
            Ok(Response::Error { message }) => Err(ClientError::Refused(message)),
            Err(e) => Err(ClientError::Protocol(self.path.clone(), e.to_string())),
        }
    }
}

use std::io::Read as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json_lines() {
        let req = Request::Enroll {
            cgroup: Some("/system.slice/etl.service".into()),
            pid: None,
            identity: "etl".into(),
            labels: BTreeMap::from([("team".into(), "data".into())]),
            lockdown: true,
        };
        let text = serde_json::to_string(&req).unwrap();
        assert!(!text.contains('\n'));
        assert!(text.contains(r#""op":"enroll""#));
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
    }

    #[test]
    fn replies_decode_by_shape() {
        let r = Response::Ok {
            data: Reply::Removed {
                removed: vec!["/a".into()],
            },
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), r);
        let done: Response = serde_json::from_str(r#"{"result":"ok"}"#).unwrap();
        assert_eq!(done, Response::Ok { data: Reply::Done });
    }
}
