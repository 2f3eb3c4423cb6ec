//! The journal's binary encoding of an [`Event`] (record format 2): what every record payload is
//! written in, because encoding JSON (every field named, every absent one spelled `null`) was
//! the writer's largest cost per event and made each record about four times larger.
//!
//! A payload is `FORMAT_BINARY | kind (0 event, 1 intent) | field count (u16 LE) | fields`, the
//! fields in the order of the list below, which is the audit table's column order; a later
//! version only appends fields, so a record written before a field existed has a smaller count
//! and reads that field as absent (null, an empty map or list). A record with more fields than
//! this build knows was written by a newer agent and is refused with a clear error.
//!
//! Each field: an `Option` is a byte 0 (absent) or 1 followed by the value; strings, maps and
//! lists start with their length as a LEB128 varint; integers are varints; `bool` a byte; an
//! instant is seconds (i64 LE) and nanoseconds (u32 LE) since the epoch; a UUID its 16 bytes; an
//! IP address 4 or 6 then its 4 or 16 bytes; the event kind its index in [`EventKind::ALL`]; a
//! value of the audit's vocabulary (a flag, a decision, ...) its text, as a string, so that a
//! record reads back whatever the enums' order (a text this build does not know is refused).
//!
//! No I/O: bytes in, events out.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::audit::event::{Event, EventKind};
use crate::audit::vocabulary::{
    CloseReason, ConnectionMode, Decision, Flag, LifecycleAction, RecordingStatus, Term,
    UnknownTerm,
};

/// The first byte of a record payload in this format; a payload of format 1 (JSON) starts with
/// `{` (an event) or `I` (an intent).
pub const FORMAT_BINARY: u8 = 2;

/// Why a binary record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The payload ends inside a field.
    #[error("record ends inside field {0}")]
    Truncated(&'static str),
    /// A field holds a value its type cannot take.
    #[error("field {0} holds an invalid value")]
    BadValue(&'static str),
    /// A field every record has is missing (the count is too small).
    #[error("record lacks field {0}")]
    Missing(&'static str),
    /// The record has fields this build does not know: a newer agent wrote it.
    #[error("record has {found} fields, this agent knows {known}: written by a newer agent")]
    NewerFields {
        /// Fields in the record.
        found: usize,
        /// Fields this build knows.
        known: usize,
    },
    /// Bytes follow the last field.
    #[error("{0} bytes after the last field")]
    Trailing(usize),
    /// A field holds a text that is not a value of its vocabulary (a newer agent wrote it).
    #[error("field {field}: {unknown}")]
    UnknownTerm {
        /// The field.
        field: &'static str,
        /// The text and its column.
        unknown: UnknownTerm,
    },
}

/// A cursor over a payload.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    field: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, field: "" }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.bytes.len() < n {
            return Err(CodecError::Truncated(self.field));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::BadValue(self.field))
    }

    fn len(&mut self) -> Result<usize, CodecError> {
        let n = usize::try_from(self.varint()?).map_err(|_| CodecError::BadValue(self.field))?;
        // A length can never exceed the bytes left (each element takes at least one byte).
        if n > self.bytes.len() {
            return Err(CodecError::Truncated(self.field));
        }
        Ok(n)
    }

    fn bad(&self) -> CodecError {
        CodecError::BadValue(self.field)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// How one Rust field type is written and read; implemented for every type `Event` uses.
trait Field: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError>;
    /// The value of the field in a record written before it existed; `None` for the fields
    /// every record has.
    fn absent() -> Option<Self> {
        None
    }
}

impl<T: Field> Field for Option<T> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.put(out);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        match r.byte()? {
            0 => Ok(None),
            1 => T::get(r).map(Some),
            _ => Err(r.bad()),
        }
    }
    fn absent() -> Option<Self> {
        Some(None)
    }
}

impl Field for String {
    fn put(&self, out: &mut Vec<u8>) {
        put_str(out, self);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let n = r.len()?;
        let bytes = r.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| r.bad())
    }
}

impl Field for u64 {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, *self);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        r.varint()
    }
}

impl Field for u32 {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, u64::from(*self));
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let v = r.varint()?;
        u32::try_from(v).map_err(|_| r.bad())
    }
}

impl Field for u16 {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, u64::from(*self));
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let v = r.varint()?;
        u16::try_from(v).map_err(|_| r.bad())
    }
}

impl Field for bool {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        match r.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(r.bad()),
        }
    }
}

impl Field for SystemTime {
    fn put(&self, out: &mut Vec<u8>) {
        let (secs, nanos) = match self.duration_since(UNIX_EPOCH) {
            Ok(d) => (
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                d.subsec_nanos(),
            ),
            Err(e) => {
                // Before the epoch: whole seconds down, nanoseconds up from there.
                let d = e.duration();
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                match d.subsec_nanos() {
                    0 => (-secs, 0),
                    n => (-secs - 1, 1_000_000_000 - n),
                }
            }
        };
        out.extend_from_slice(&secs.to_le_bytes());
        out.extend_from_slice(&nanos.to_le_bytes());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let secs = i64::from_le_bytes(r.array()?);
        let nanos = u32::from_le_bytes(r.array()?);
        if nanos >= 1_000_000_000 {
            return Err(r.bad());
        }
        let t = if secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::new(secs.unsigned_abs(), nanos))
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(secs.unsigned_abs()))
                .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
        };
        t.ok_or_else(|| r.bad())
    }
}

impl Field for Uuid {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(Uuid::from_bytes(r.array()?))
    }
}

impl Field for EventKind {
    fn put(&self, out: &mut Vec<u8>) {
        let i = EventKind::ALL.iter().position(|k| k == self).unwrap_or(0);
        out.push(i as u8);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let i = r.byte()?;
        EventKind::ALL
            .get(usize::from(i))
            .copied()
            .ok_or_else(|| r.bad())
    }
}

impl Field for IpAddr {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            IpAddr::V4(a) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out.push(6);
                out.extend_from_slice(&a.octets());
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        match r.byte()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
            _ => Err(r.bad()),
        }
    }
}

impl Field for BTreeMap<String, String> {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        for (k, v) in self {
            put_str(out, k);
            put_str(out, v);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let n = r.len()?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = String::get(r)?;
            let v = String::get(r)?;
            m.insert(k, v);
        }
        Ok(m)
    }
    fn absent() -> Option<Self> {
        Some(BTreeMap::new())
    }
}

impl Field for Vec<String> {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        for s in self {
            put_str(out, s);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let n = r.len()?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(String::get(r)?);
        }
        Ok(v)
    }
    fn absent() -> Option<Self> {
        Some(Vec::new())
    }
}

/// A value of the vocabulary is written as its text.
fn put_term<T: Term>(out: &mut Vec<u8>, v: &T) {
    put_str(out, &v.text());
}

fn get_term<T: Term>(r: &mut Reader<'_>) -> Result<T, CodecError> {
    let n = r.len()?;
    let bytes = r.take(n)?;
    let s = std::str::from_utf8(bytes).map_err(|_| r.bad())?;
    T::parse(s).map_err(|unknown| CodecError::UnknownTerm {
        field: r.field,
        unknown,
    })
}

macro_rules! term_fields {
    ($($t:ty),*) => {$(
        impl Field for $t {
            fn put(&self, out: &mut Vec<u8>) {
                put_term(out, self);
            }
            fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
                get_term(r)
            }
        }
    )*};
}

term_fields!(
    CloseReason,
    ConnectionMode,
    Decision,
    LifecycleAction,
    RecordingStatus
);

impl Field for Vec<Flag> {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        for f in self {
            put_term(out, f);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let n = r.len()?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(get_term(r)?);
        }
        Ok(v)
    }
    fn absent() -> Option<Self> {
        Some(Vec::new())
    }
}

macro_rules! fields {
    ($( $name:ident : $ty:ty, )*) => {
        /// The fields in the order they are written: the audit table's column order.
        pub const FIELDS: &[&str] = &[ $( stringify!($name), )* ];

        fn put_fields(e: &Event, out: &mut Vec<u8>) {
            $( <$ty as Field>::put(&e.$name, out); )*
        }

        // The last field's `i += 1` is never read.
        #[allow(unused_assignments)]
        fn get_fields(r: &mut Reader<'_>, count: usize) -> Result<Event, CodecError> {
            let mut i = 0usize;
            Ok(Event { $( $name: {
                let v = if i < count {
                    r.field = stringify!($name);
                    <$ty as Field>::get(r)?
                } else {
                    <$ty as Field>::absent().ok_or(CodecError::Missing(stringify!($name)))?
                };
                i += 1;
                v
            }, )* })
        }
    };
}

// Append new fields at the end, as the schema appends columns.
fields! {
    event_time: SystemTime,
    event_id: Uuid,
    event_kind: EventKind,
    host: String,
    agent_version: String,
    pid: Option<u32>,
    tgid: Option<u32>,
    ppid: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    user_name: Option<String>,
    comm: Option<String>,
    exe: Option<String>,
    cmdline: Option<String>,
    cgroup_path: Option<String>,
    cgroup_id: Option<u64>,
    systemd_unit: Option<String>,
    container_id: Option<String>,
    pod_uid: Option<String>,
    workload_identity: Option<String>,
    labels: BTreeMap<String, String>,
    human_identity: Option<String>,
    src_ip: Option<IpAddr>,
    src_port: Option<u16>,
    dst_ip: Option<IpAddr>,
    dst_port: Option<u16>,
    sni: Option<String>,
    connection_mode: Option<ConnectionMode>,
    connection_id: Option<u64>,
    close_reason: Option<CloseReason>,
    account: Option<String>,
    login_user: Option<String>,
    authenticator: Option<String>,
    role: Option<String>,
    warehouse: Option<String>,
    database: Option<String>,
    schema: Option<String>,
    snowflake_session_id: Option<String>,
    session_id: Option<String>,
    correlation_id: Option<String>,
    request_id: Option<String>,
    query_id: Option<String>,
    parent_query_id: Option<String>,
    driver: Option<String>,
    driver_version: Option<String>,
    sql_text: Option<String>,
    statement_type: Option<String>,
    bind_count: Option<u32>,
    is_async: Option<bool>,
    decision: Option<Decision>,
    policy_rule: Option<String>,
    approver: Option<String>,
    decided_at: Option<SystemTime>,
    success: Option<bool>,
    error_code: Option<String>,
    sql_state: Option<String>,
    error_message: Option<String>,
    rows_produced: Option<u64>,
    result_bytes: Option<u64>,
    chunk_count: Option<u32>,
    duration_ms: Option<u64>,
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
    flags: Vec<Flag>,
    lifecycle_action: Option<LifecycleAction>,
    detail: Option<String>,
    pod_qos: Option<String>,
    container_runtime: Option<String>,
    parent_chain: Vec<String>,
    process_start_time: Option<SystemTime>,
    started_by: Option<String>,
    started_by_login: Option<String>,
    stage_requests: Option<u32>,
    stage_bytes_sent: Option<u64>,
    stage_bytes_received: Option<u64>,
    human_groups: Vec<String>,
    brokered: Option<bool>,
    recording: Option<RecordingStatus>,
    recording_bytes_kept: Option<u64>,
    recording_bytes_seen: Option<u64>,
    sql_sha256: Option<String>,
    attempts: Option<u32>,
    http_method: Option<String>,
    http_path: Option<String>,
    http_status: Option<u16>,
}

/// Bytes before the first field: format, kind, field count.
const HEAD: usize = 4;

/// Appends the payload of `event` (an intent's when `intent`) to `out`.
pub(super) fn encode(out: &mut Vec<u8>, intent: bool, event: &Event) {
    out.push(FORMAT_BINARY);
    out.push(u8::from(intent));
    out.extend_from_slice(&(FIELDS.len() as u16).to_le_bytes());
    put_fields(event, out);
}

/// Whether a binary payload is an intent's; `payload` starts with [`FORMAT_BINARY`].
pub(super) fn is_intent(payload: &[u8]) -> Result<bool, CodecError> {
    match payload.get(1) {
        Some(0) => Ok(false),
        Some(1) => Ok(true),
        Some(_) => Err(CodecError::BadValue("kind")),
        None => Err(CodecError::Truncated("kind")),
    }
}

fn fields_of(payload: &[u8]) -> Result<(usize, Reader<'_>), CodecError> {
    is_intent(payload)?;
    let count = payload
        .get(2..HEAD)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])))
        .ok_or(CodecError::Truncated("field count"))?;
    if count > FIELDS.len() {
        return Err(CodecError::NewerFields {
            found: count,
            known: FIELDS.len(),
        });
    }
    Ok((count, Reader::new(&payload[HEAD..])))
}

/// Decodes a binary payload.
pub(super) fn decode(payload: &[u8]) -> Result<Event, CodecError> {
    let (count, mut r) = fields_of(payload)?;
    let e = get_fields(&mut r, count)?;
    if !r.bytes.is_empty() {
        return Err(CodecError::Trailing(r.bytes.len()));
    }
    Ok(e)
}

/// The `event_time` and `event_id` of a binary payload (its first two fields), without decoding
/// the rest.
pub(super) fn peek(payload: &[u8]) -> Result<(SystemTime, Uuid), CodecError> {
    let (count, mut r) = fields_of(payload)?;
    if count < 2 {
        return Err(CodecError::Missing(if count == 0 {
            "event_time"
        } else {
            "event_id"
        }));
    }
    r.field = "event_time";
    let t = SystemTime::get(&mut r)?;
    r.field = "event_id";
    let id = Uuid::get(&mut r)?;
    Ok((t, id))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An event with every field set.
    fn full() -> Event {
        let t = UNIX_EPOCH + Duration::new(1_763_900_000, 123_456_789);
        let mut e = Event::new(EventKind::Denial, t, "host-ä");
        e.pid = Some(u32::MAX);
        e.tgid = Some(2);
        e.ppid = Some(1);
        e.uid = Some(0);
        e.gid = Some(1000);
        e.user_name = Some("root".into());
        e.comm = Some("python3".into());
        e.exe = Some("/usr/bin/python3".into());
        e.cmdline = Some("python3 -c 'print(1)'".into());
        e.cgroup_path = Some("/a/b".into());
        e.cgroup_id = Some(u64::MAX);
        e.systemd_unit = Some("x.service".into());
        e.container_id = Some("c".into());
        e.pod_uid = Some("p".into());
        e.workload_identity = Some("etl".into());
        e.labels.insert("env".into(), "prod".into());
        e.labels.insert("".into(), "".into());
        e.human_identity = Some("ann".into());
        e.src_ip = Some("10.0.0.1".parse().unwrap());
        e.src_port = Some(u16::MAX);
        e.dst_ip = Some("2001:db8::1".parse().unwrap());
        e.dst_port = Some(443);
        for (i, s) in [
            &mut e.sni,
            &mut e.account,
            &mut e.login_user,
            &mut e.authenticator,
            &mut e.role,
            &mut e.warehouse,
            &mut e.database,
            &mut e.schema,
            &mut e.snowflake_session_id,
            &mut e.session_id,
            &mut e.correlation_id,
            &mut e.request_id,
            &mut e.query_id,
            &mut e.parent_query_id,
            &mut e.driver,
            &mut e.driver_version,
            &mut e.sql_text,
            &mut e.statement_type,
            &mut e.policy_rule,
            &mut e.approver,
            &mut e.error_code,
            &mut e.sql_state,
            &mut e.error_message,
            &mut e.detail,
            &mut e.pod_qos,
            &mut e.container_runtime,
            &mut e.started_by,
            &mut e.started_by_login,
        ]
        .into_iter()
        .enumerate()
        {
            *s = Some(format!("value {i} \u{1F600}").repeat(i));
        }
        e.recording = Some(RecordingStatus::Truncated);
        e.connection_mode = Some(ConnectionMode::Passthrough);
        e.close_reason = Some(CloseReason::ConnectFailed("connection refused".into()));
        e.decision = Some(Decision::RequireApproval);
        e.lifecycle_action = Some(LifecycleAction::PolicyRejected);
        e.connection_id = Some(7);
        e.bind_count = Some(3);
        e.is_async = Some(false);
        e.decided_at = Some(UNIX_EPOCH - Duration::new(5, 1));
        e.success = Some(true);
        e.rows_produced = Some(1 << 40);
        e.result_bytes = Some(0);
        e.chunk_count = Some(4);
        e.duration_ms = Some(12);
        e.bytes_in = Some(300);
        e.bytes_out = Some(127);
        e.flags = vec![Flag::Alert, Flag::OutcomeUnknown];
        e.parent_chain = vec!["1:init".into()];
        e.process_start_time = Some(UNIX_EPOCH);
        e.stage_requests = Some(1);
        e.stage_bytes_sent = Some(2);
        e.stage_bytes_received = Some(3);
        e.human_groups = vec!["g".into()];
        e.brokered = Some(true);
        e.recording_bytes_kept = Some(10);
        e.recording_bytes_seen = Some(20);
        e
    }

    #[test]
    fn fields_follow_the_table_columns() {
        let columns: Vec<&str> = crate::audit::schema::COLUMNS
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(FIELDS, columns.as_slice());
    }

    #[test]
    fn events_round_trip() {
        for e in [full(), Event::new(EventKind::Query, SystemTime::now(), "h")] {
            let mut buf = vec![9];
            encode(&mut buf, true, &e);
            assert!(is_intent(&buf[1..]).unwrap());
            assert_eq!(decode(&buf[1..]).unwrap(), e);
            assert_eq!(peek(&buf[1..]).unwrap(), (e.event_time, e.event_id));
        }
        let mut buf = Vec::new();
        encode(&mut buf, false, &full());
        assert!(!is_intent(&buf).unwrap());
    }

    #[test]
    fn an_older_record_reads_later_fields_as_absent() {
        // A record written when the table had only its first 66 columns (schema 1, up to
        // `detail`): its count says 66 and its bytes end there.
        let e = full();
        assert_eq!(FIELDS[65], "detail");
        let mut body = Vec::new();
        put_fields(&e, &mut body);
        let mut r = Reader::new(&body);
        get_fields(&mut r, 66).unwrap();
        let prefix = body.len() - r.bytes.len();
        let mut old = vec![FORMAT_BINARY, 0];
        old.extend_from_slice(&66u16.to_le_bytes());
        old.extend_from_slice(&body[..prefix]);
        let got = decode(&old).unwrap();
        assert_eq!(got.detail, e.detail);
        assert_eq!(got.sql_text, e.sql_text);
        assert_eq!(got.flags, e.flags);
        assert_eq!(got.pod_qos, None);
        assert_eq!(got.parent_chain, Vec::<String>::new());
        assert_eq!(got.recording, None);
        assert_eq!(got.recording_bytes_seen, None);
    }

    #[test]
    fn vocabulary_values_are_written_as_their_text() {
        // The bytes of a typed value are those of its text as a string field.
        let bytes = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            f(&mut out);
            out
        };
        let flags = vec![Flag::TlsUntrusted, Flag::RowsTruncated];
        let texts: Vec<String> = flags.iter().map(|f| f.as_str().to_owned()).collect();
        assert_eq!(bytes(&|o| flags.put(o)), bytes(&|o| texts.put(o)));
        let reason = Some(CloseReason::Error("client TLS handshake timed out".into()));
        let text = Some("error: client TLS handshake timed out".to_owned());
        assert_eq!(bytes(&|o| reason.put(o)), bytes(&|o| text.put(o)));
        let decision = Some(Decision::Deny);
        assert_eq!(
            bytes(&|o| decision.put(o)),
            bytes(&|o| Some("deny".to_owned()).put(o))
        );
    }

    #[test]
    fn an_unknown_vocabulary_value_is_refused() {
        let mut e = full();
        e.flags = vec![Flag::Alert];
        let mut buf = Vec::new();
        encode(&mut buf, false, &e);
        let at = buf
            .windows(5)
            .position(|w| w == b"alert")
            .expect("the flag's text is in the record");
        buf[at..at + 5].copy_from_slice(b"alarm");
        assert_eq!(
            decode(&buf),
            Err(CodecError::UnknownTerm {
                field: "flags",
                unknown: UnknownTerm {
                    column: "flags",
                    value: "alarm".into()
                }
            })
        );
    }

    /// A record the build before the vocabulary became types wrote (its text columns strings),
    /// in the binary format and in the JSON of format 1.
    const PREVIOUS_BUILD_BINARY: &str = "0200500060fa226900000000881300000193000000007000800000000000000100016805302e312e3000000000000000000000000000000000000000000000010b696e746572636570746564000122636f6e6e6563745f6661696c65643a20636f6e6e656374696f6e207265667573656400000000000000000000000000000000000000010464656e790000000000000000000000000003066e6f5f736e690d746c735f756e747275737465640f6f7574636f6d655f756e6b6e6f776e010f706f6c6963795f72656a6563746564000000000000000000000000000000";
    const PREVIOUS_BUILD_JSON: &str = r#"{"event_time":{"secs_since_epoch":1763900000,"nanos_since_epoch":5000},"event_id":"01930000-0000-7000-8000-000000000001","event_kind":"connection","host":"h","agent_version":"0.1.0","pid":null,"tgid":null,"ppid":null,"uid":null,"gid":null,"user_name":null,"comm":null,"exe":null,"cmdline":null,"cgroup_path":null,"cgroup_id":null,"systemd_unit":null,"container_id":null,"pod_uid":null,"workload_identity":null,"labels":{},"human_identity":null,"src_ip":null,"src_port":null,"dst_ip":null,"dst_port":null,"sni":null,"connection_mode":"intercepted","connection_id":null,"close_reason":"connect_failed: connection refused","account":null,"login_user":null,"authenticator":null,"role":null,"warehouse":null,"database":null,"schema":null,"snowflake_session_id":null,"session_id":null,"correlation_id":null,"request_id":null,"query_id":null,"parent_query_id":null,"driver":null,"driver_version":null,"sql_text":null,"statement_type":null,"bind_count":null,"is_async":null,"decision":"deny","policy_rule":null,"approver":null,"decided_at":null,"success":null,"error_code":null,"sql_state":null,"error_message":null,"rows_produced":null,"result_bytes":null,"chunk_count":null,"duration_ms":null,"bytes_in":null,"bytes_out":null,"flags":["no_sni","tls_untrusted","outcome_unknown"],"lifecycle_action":"policy_rejected","detail":null,"pod_qos":null,"container_runtime":null,"parent_chain":[],"process_start_time":null,"started_by":null,"started_by_login":null,"stage_requests":null,"stage_bytes_sent":null,"stage_bytes_received":null,"human_groups":[],"brokered":null,"recording":null,"recording_bytes_kept":null,"recording_bytes_seen":null}"#;

    /// The event of [`PREVIOUS_BUILD_BINARY`] and [`PREVIOUS_BUILD_JSON`].
    fn previous_build_event() -> Event {
        let t = UNIX_EPOCH + Duration::new(1_763_900_000, 5_000);
        let mut e = Event::new(EventKind::Connection, t, "h");
        e.event_id = Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001);
        e.agent_version = "0.1.0".into();
        e.connection_mode = Some(ConnectionMode::Intercepted);
        e.close_reason = Some(CloseReason::ConnectFailed("connection refused".into()));
        e.decision = Some(Decision::Deny);
        e.lifecycle_action = Some(LifecycleAction::PolicyRejected);
        e.flags = vec![Flag::NoSni, Flag::TlsUntrusted, Flag::OutcomeUnknown];
        e
    }

    #[test]
    fn a_record_of_the_previous_build_decodes_and_is_written_the_same() {
        let bytes: Vec<u8> = (0..PREVIOUS_BUILD_BINARY.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&PREVIOUS_BUILD_BINARY[i..i + 2], 16).unwrap())
            .collect();
        let e = previous_build_event();
        assert_eq!(decode(&bytes).unwrap(), e);
        // This build writes the same record with the fields added since (schema 4:
        // statement text, attempts, requests) appended, absent.
        const ADDED: &[&str] = &[
            "sql_sha256",
            "attempts",
            "http_method",
            "http_path",
            "http_status",
        ];
        let mut expected = bytes.clone();
        let count = u16::from_le_bytes([bytes[2], bytes[3]]) + ADDED.len() as u16;
        expected[2..4].copy_from_slice(&count.to_le_bytes());
        expected.extend(std::iter::repeat_n(0u8, ADDED.len()));
        let mut again = Vec::new();
        encode(&mut again, false, &e);
        assert_eq!(again, expected);
        assert_eq!(&FIELDS[FIELDS.len() - ADDED.len()..], ADDED);
        assert_eq!(
            serde_json::from_str::<Event>(PREVIOUS_BUILD_JSON).unwrap(),
            e
        );
        let added: String = ADDED.iter().map(|f| format!(",\"{f}\":null")).collect();
        let json = format!("{}{added}}}", PREVIOUS_BUILD_JSON.trim_end_matches('}'));
        assert_eq!(serde_json::to_string(&e).unwrap(), json);
    }

    #[test]
    fn damaged_and_newer_records_are_refused() {
        let mut buf = Vec::new();
        encode(&mut buf, false, &full());
        for cut in [1, 3, 10, buf.len() - 1] {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = buf.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(CodecError::Trailing(1)));
        let mut newer = buf.clone();
        newer[2..4].copy_from_slice(&(FIELDS.len() as u16 + 1).to_le_bytes());
        assert!(matches!(
            decode(&newer),
            Err(CodecError::NewerFields { .. })
        ));
        let mut few = buf.clone();
        few[2..4].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(
            decode(&few[..HEAD]),
            Err(CodecError::Truncated("event_time"))
        );
        let mut kind = buf.clone();
        kind[1] = 7;
        assert!(decode(&kind).is_err());
    }
}
