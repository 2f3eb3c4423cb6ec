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

/// Declares [`ConnectionIdentity`] from one list of the identity columns, with the copy of those
/// columns out of an [`Event`] and back into one, so that the struct and both copies cannot
/// disagree on which columns a connection shares with its exchanges.
macro_rules! connection_identity {
    ($($field:ident: $ty:ty),+ $(,)?) => {
        /// The columns of a connection's event that every event of its exchanges carries too.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct ConnectionIdentity {
            $(
                #[doc = concat!(
                    "The connection's [`Event::", stringify!($field),
                    "`], carried by every event of its exchanges."
                )]
                pub $field: $ty,
            )+
        }

        impl ConnectionIdentity {
            /// The identity columns of a connection's event.
            pub fn of(e: &Event) -> Self {
                ConnectionIdentity {
                    $($field: e.$field.clone(),)+
                }
            }

            /// Writes the identity columns into `e`, replacing what it had in them.
            fn copy_into(&self, e: &mut Event) {
                $(e.$field.clone_from(&self.$field);)+
            }
        }
    };
}

connection_identity! {
    // The agent.
    host: String, agent_version: String,
    // The calling process.
    pid: Option<u32>, tgid: Option<u32>, ppid: Option<u32>, uid: Option<u32>, gid: Option<u32>,
    user_name: Option<String>, comm: Option<String>, exe: Option<String>,
    cmdline: Option<String>,
    // Its cgroup and workload.
    cgroup_path: Option<String>, cgroup_id: Option<u64>, systemd_unit: Option<String>,
    container_id: Option<String>, pod_uid: Option<String>, workload_identity: Option<String>,
    labels: BTreeMap<String, String>, human_identity: Option<String>,
    // The addresses.
    src_ip: Option<IpAddr>, src_port: Option<u16>, dst_ip: Option<IpAddr>, dst_port: Option<u16>,
    sni: Option<String>, connection_id: Option<u64>,
    // The run, and the workload's details added with it.
    correlation_id: Option<String>, pod_qos: Option<String>, container_runtime: Option<String>,
    parent_chain: Vec<String>, process_start_time: Option<SystemTime>,
    started_by: Option<String>, started_by_login: Option<String>,
}

impl Event {
    /// Starts an event of `kind` at `event_time` on the connection `id`: its identity columns
    /// filled, every other column empty.
    pub fn of_connection(kind: EventKind, event_time: SystemTime, id: &ConnectionIdentity) -> Self {
        let mut e = Event::new(kind, event_time, &id.host);
        id.copy_into(&mut e);
        e
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
