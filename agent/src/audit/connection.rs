//! The who/where columns a connection shares with the events of its exchanges.
//!
//! A login, statement or logout on an intercepted connection is recorded with the connection's
//! process, cgroup, workload, run and addresses; [`ConnectionIdentity`] holds exactly those
//! columns, taken from the connection's event, and [`Event::of_connection`] starts an event from
//! them. A column that describes the connection itself (its mode, close reason, bytes, duration,
//! outcome, flags) is not in it, so it cannot reach an exchange's row, nor can a column added
//! later unless it is added here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use super::event::{Event, EventKind};

/// The columns of a connection's event that every event of its exchanges carries too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionIdentity {
    /// The host name of the machine the agent runs on.
    pub host: String,
    /// The agent's version.
    pub agent_version: String,
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
    /// The human behind the workload, when known for the connection.
    pub human_identity: Option<String>,
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
    /// The agent's id of the connection.
    pub connection_id: Option<u64>,
    /// The run's correlation id (the `snowtrail exec` run the caller belongs to).
    pub correlation_id: Option<String>,
    /// The Kubernetes QoS class of the pod.
    pub pod_qos: Option<String>,
    /// The runtime of `container_id`.
    pub container_runtime: Option<String>,
    /// The caller's ancestors inside the enrolled cgroup, nearest first, as `pid:comm`.
    pub parent_chain: Vec<String>,
    /// When the caller's process started.
    pub process_start_time: Option<SystemTime>,
    /// Who started the run (or enrolled the cgroup).
    pub started_by: Option<String>,
    /// The login user of whoever started the run.
    pub started_by_login: Option<String>,
}

impl ConnectionIdentity {
    /// The identity columns of a connection's event.
    pub fn of(e: &Event) -> Self {
        ConnectionIdentity {
            host: e.host.clone(),
            agent_version: e.agent_version.clone(),
            pid: e.pid,
            tgid: e.tgid,
            ppid: e.ppid,
            uid: e.uid,
            gid: e.gid,
            user_name: e.user_name.clone(),
            comm: e.comm.clone(),
            exe: e.exe.clone(),
            cmdline: e.cmdline.clone(),
            cgroup_path: e.cgroup_path.clone(),
            cgroup_id: e.cgroup_id,
            systemd_unit: e.systemd_unit.clone(),
            container_id: e.container_id.clone(),
            pod_uid: e.pod_uid.clone(),
            workload_identity: e.workload_identity.clone(),
            labels: e.labels.clone(),
            human_identity: e.human_identity.clone(),
            src_ip: e.src_ip,
            src_port: e.src_port,
            dst_ip: e.dst_ip,
            dst_port: e.dst_port,
            sni: e.sni.clone(),
            connection_id: e.connection_id,
            correlation_id: e.correlation_id.clone(),
            pod_qos: e.pod_qos.clone(),
            container_runtime: e.container_runtime.clone(),
            parent_chain: e.parent_chain.clone(),
            process_start_time: e.process_start_time,
            started_by: e.started_by.clone(),
            started_by_login: e.started_by_login.clone(),
        }
    }
}

impl Event {
    /// Starts an event of `kind` at `event_time` on the connection `id`: its identity columns
    /// filled, every other column empty.
    pub fn of_connection(kind: EventKind, event_time: SystemTime, id: &ConnectionIdentity) -> Self {
        let ConnectionIdentity {
            host,
            agent_version,
            pid,
            tgid,
            ppid,
            uid,
            gid,
            user_name,
            comm,
            exe,
            cmdline,
            cgroup_path,
            cgroup_id,
            systemd_unit,
            container_id,
            pod_uid,
            workload_identity,
            labels,
            human_identity,
            src_ip,
            src_port,
            dst_ip,
            dst_port,
            sni,
            connection_id,
            correlation_id,
            pod_qos,
            container_runtime,
            parent_chain,
            process_start_time,
            started_by,
            started_by_login,
        } = id.clone();
        Event {
            agent_version,
            pid,
            tgid,
            ppid,
            uid,
            gid,
            user_name,
            comm,
            exe,
            cmdline,
            cgroup_path,
            cgroup_id,
            systemd_unit,
            container_id,
            pod_uid,
            workload_identity,
            labels,
            human_identity,
            src_ip,
            src_port,
            dst_ip,
            dst_port,
            sni,
            connection_id,
            correlation_id,
            pod_qos,
            container_runtime,
            parent_chain,
            process_start_time,
            started_by,
            started_by_login,
            ..Event::new(kind, event_time, &host)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::{CloseReason, ConnectionMode, Decision, Flag};

    /// A connection's event as the listener has it when the connection's exchanges begin.
    fn connection() -> Event {
        let mut c = Event::new(EventKind::Connection, SystemTime::UNIX_EPOCH, "h");
        c.connection_id = Some(7);
        c.connection_mode = Some(ConnectionMode::Intercepted);
        c.pid = Some(1);
        c.tgid = Some(2);
        c.ppid = Some(3);
        c.uid = Some(4);
        c.gid = Some(5);
        c.user_name = Some("ann".into());
        c.comm = Some("python3".into());
        c.exe = Some("/usr/bin/python3".into());
        c.cmdline = Some("python3 etl.py".into());
        c.cgroup_path = Some("/etl".into());
        c.cgroup_id = Some(9);
        c.systemd_unit = Some("etl.service".into());
        c.container_id = Some("c1".into());
        c.pod_uid = Some("p1".into());
        c.workload_identity = Some("etl".into());
        c.labels.insert("env".into(), "prod".into());
        c.src_ip = Some("10.0.0.1".parse().unwrap());
        c.src_port = Some(40000);
        c.dst_ip = Some("10.0.0.2".parse().unwrap());
        c.dst_port = Some(443);
        c.sni = Some("a.snowflakecomputing.com".into());
        c.correlation_id = Some("run".into());
        c.pod_qos = Some("burstable".into());
        c.container_runtime = Some("containerd".into());
        c.parent_chain = vec!["1:init".into()];
        c.process_start_time = Some(SystemTime::UNIX_EPOCH);
        c.started_by = Some("root".into());
        c.started_by_login = Some("ann".into());
        c
    }

    #[test]
    fn an_exchange_event_is_the_connection_event_without_its_own_columns() {
        let c = connection();
        let later = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1);
        let q = Event::of_connection(EventKind::Query, later, &ConnectionIdentity::of(&c));
        // What a copy of the connection's event with its own columns cleared would be.
        let mut expect = c.clone();
        expect.event_id = q.event_id;
        expect.event_kind = EventKind::Query;
        expect.event_time = later;
        expect.connection_mode = None;
        assert_eq!(q, expect);
        assert_ne!(q.event_id, c.event_id);
    }

    #[test]
    fn no_column_of_the_connection_itself_reaches_an_exchange_event() {
        let mut c = connection();
        c.close_reason = Some(CloseReason::Completed);
        c.bytes_in = Some(3);
        c.bytes_out = Some(4);
        c.duration_ms = Some(5);
        c.success = Some(true);
        c.decision = Some(Decision::Deny);
        c.flags = vec![Flag::NotTls];
        c.error_message = Some("upstream failed".into());
        let q = Event::of_connection(EventKind::Login, c.event_time, &ConnectionIdentity::of(&c));
        assert_eq!(ConnectionIdentity::of(&q), ConnectionIdentity::of(&c));
        assert_eq!(q.connection_mode, None);
        assert_eq!(q.close_reason, None);
        assert_eq!((q.bytes_in, q.bytes_out, q.duration_ms), (None, None, None));
        assert_eq!(q.success, None);
        assert_eq!(q.decision, None);
        assert_eq!(q.error_message, None);
        assert!(q.flags.is_empty());
    }
}
