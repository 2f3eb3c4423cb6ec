//! Snowflake sessions and statements in flight, as the proxy sees them across connections.
//!
//! A driver logs in on one connection and may send its statements over others (a pool, or h2
//! streams): requests name their session by the token in `Authorization`. The tracker keys each
//! session by a keyed hash of that token (the token itself is not kept) and remembers who logged
//! in. A brokered session's requests carry agent handles ([`crate::broker::handles`]); the proxy
//! swaps them for Snowflake's tokens before anything here looks, so sessions are keyed by
//! Snowflake's token whether brokered or not. Statements whose outcome comes later (a `333333` poll, a retry after token renewal) wait
//! here by query id or request id. Everything is bounded: past the bounds the oldest entries go.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher as _, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::audit::Event;
use crate::snowflake::Refusal;

/// Most sessions tracked at once.
pub const MAX_SESSIONS: usize = 65_536;
/// Most statements waiting for their outcome at once.
pub const MAX_PENDING: usize = 65_536;

/// What the agent knows of one Snowflake session.
#[derive(Debug, Clone, Default)]
pub struct Session {
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
    pub context: Arc<Mutex<Context>>,
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
        if self.unverified && !e.flags.iter().any(|f| f == FLAG_IDENTITY_UNVERIFIED) {
            e.flags.push(FLAG_IDENTITY_UNVERIFIED.to_owned());
        }
    }
}

/// The flag of events whose session's login token did not verify (DECISIONS 9).
pub const FLAG_IDENTITY_UNVERIFIED: &str = "identity_unverified";

/// A session's current role, warehouse, database and schema.
#[derive(Debug, Clone, Default)]
pub struct Context {
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

fn abort_keys(query_id: Option<&str>, request_id: Option<&str>) -> Vec<String> {
    query_id
        .map(|q| format!("q:{q}"))
        .into_iter()
        .chain(request_id.map(|r| format!("r:{r}")))
        .collect()
}

/// A bounded map that forgets its oldest entries.
struct Bounded<V> {
    map: HashMap<String, V>,
    order: VecDeque<String>,
    max: usize,
}

impl<V> Bounded<V> {
    fn new(max: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            max,
        }
    }

    fn insert(&mut self, key: String, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > self.max {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        // Keys removed by `take` leave stale entries in `order`; drop them once they dominate.
        if self.order.len() > 2 * self.max.max(16) {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key)
    }

    fn take(&mut self, key: &str) -> Option<V> {
        self.map.remove(key)
    }
}

/// How long a storage host learned from a query response stays intercepted for its cgroup.
pub const LEARNED_HOST_TTL: Duration = Duration::from_secs(4 * 3600);

/// A statement whose result comes partly in chunks: its event waits for the chunk downloads.
pub struct PendingResult {
    event: Mutex<Option<Event>>,
    expected: usize,
    seen: AtomicUsize,
    bytes: AtomicU64,
    masking: Option<super::mask::ChunkMasking>,
    recording: Mutex<Option<super::record::Recording>>,
    /// Each chunk's index and uncompressed size, by lower-case host and path.
    chunk_index: HashMap<String, (usize, Option<u64>)>,
}

impl PendingResult {
    /// Holds `event` until `expected` chunks were downloaded.
    pub fn new(event: Event, expected: usize) -> Arc<PendingResult> {
        Arc::new(PendingResult {
            event: Mutex::new(Some(event)),
            expected,
            seen: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            masking: None,
            recording: Mutex::new(None),
            chunk_index: HashMap::new(),
        })
    }

    /// Holds `event` until `expected` chunks were downloaded, each rewritten by `masking`, their
    /// rows added to `recording` (`chunks`: each chunk's host, path and uncompressed size).
    pub fn masked(
        event: Event,
        expected: usize,
        masking: Option<super::mask::ChunkMasking>,
        recording: Option<super::record::Recording>,
        chunks: &[crate::snowflake::result::Chunk],
    ) -> Arc<PendingResult> {
        let chunk_index = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    format!("{}{}", c.url.host.to_ascii_lowercase(), c.url.path),
                    (i, c.uncompressed_size),
                )
            })
            .collect();
        Arc::new(PendingResult {
            event: Mutex::new(Some(event)),
            expected,
            seen: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            masking,
            recording: Mutex::new(recording),
            chunk_index,
        })
    }

    /// The recording of the result, taken (once) when the event is completed.
    pub(super) fn take_recording(&self) -> Option<super::record::Recording> {
        self.recording.lock().ok()?.take()
    }

    /// Runs `f` on the recording of the result, while it is recorded.
    pub(super) fn with_recording<T>(
        &self,
        f: impl FnOnce(&mut super::record::Recording) -> T,
    ) -> Option<T> {
        self.recording.lock().ok()?.as_mut().map(f)
    }

    /// A chunk download's index in the result and its uncompressed size.
    pub(super) fn chunk_info(&self, host: &str, path: &str) -> Option<(usize, Option<u64>)> {
        self.chunk_index
            .get(&format!("{}{path}", host.to_ascii_lowercase()))
            .copied()
    }

    /// How the result's chunk downloads are rewritten, when its rule shapes results.
    pub fn masking(&self) -> Option<&super::mask::ChunkMasking> {
        self.masking.as_ref()
    }

    /// Flags the held event (once), for what happened to one of its chunks.
    pub fn flag(&self, flag: &str) {
        if let Ok(mut e) = self.event.lock()
            && let Some(e) = e.as_mut()
            && !e.flags.iter().any(|f| f == flag)
        {
            e.flags.push(flag.to_owned());
        }
    }

    /// Counts one downloaded chunk; returns the completed event once every chunk was seen.
    pub fn chunk_done(&self, bytes: u64) -> Option<Event> {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let seen = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if seen >= self.expected {
            self.finish(false)
        } else {
            None
        }
    }

    /// Takes the event for completion (once): with the chunk bytes added, and flagged
    /// `chunks_unseen` when `incomplete`.
    pub fn finish(&self, incomplete: bool) -> Option<Event> {
        let mut event = self.event.lock().ok()?.take()?;
        let bytes = self.bytes.load(Ordering::Relaxed);
        event.result_bytes = Some(event.result_bytes.unwrap_or(0) + bytes);
        if incomplete {
            event.flags.push("chunks_unseen".into());
        }
        Some(event)
    }
}

/// Sessions by token, and statements waiting for their outcome.
pub struct Tracker {
    hasher: RandomState,
    sessions: Mutex<Bounded<Arc<Session>>>,
    by_query_id: Mutex<Bounded<Event>>,
    by_request_id: Mutex<Bounded<Event>>,
    due: Mutex<Bounded<Event>>,
    chunks: Mutex<Bounded<Arc<PendingResult>>>,
    learned: Mutex<Bounded<Instant>>,
    aborted: Mutex<Bounded<()>>,
    /// PUT/GET statements waiting for their stage transfers.
    pub transfers: super::transfer::TransferBook,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            hasher: RandomState::new(),
            sessions: Mutex::new(Bounded::new(MAX_SESSIONS)),
            by_query_id: Mutex::new(Bounded::new(MAX_PENDING)),
            by_request_id: Mutex::new(Bounded::new(MAX_PENDING)),
            due: Mutex::new(Bounded::new(MAX_PENDING)),
            chunks: Mutex::new(Bounded::new(MAX_PENDING)),
            learned: Mutex::new(Bounded::new(MAX_SESSIONS)),
            aborted: Mutex::new(Bounded::new(MAX_PENDING)),
            transfers: super::transfer::TransferBook::default(),
        }
    }
}

impl Tracker {
    fn key(&self, token: &str) -> String {
        format!("{:016x}", self.hasher.hash_one(token))
    }

    /// Records a session under the token the login (or a renewal) issued.
    pub fn insert(&self, token: &str, session: Arc<Session>) {
        let key = self.key(token);
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(key, session);
        }
    }

    /// The session a request's token belongs to.
    pub fn lookup(&self, token: Option<&str>) -> Option<Arc<Session>> {
        let key = self.key(token?);
        self.sessions.lock().ok()?.get(&key).cloned()
    }

    /// Forgets a session's token (logout).
    pub fn remove(&self, token: Option<&str>) -> Option<Arc<Session>> {
        let key = self.key(token?);
        self.sessions.lock().ok()?.take(&key)
    }

    /// Parks a statement until a poll of `query_id` brings its outcome.
    pub fn park_query(&self, query_id: &str, event: Event) {
        if let Ok(mut m) = self.by_query_id.lock() {
            m.insert(query_id.to_owned(), event);
        }
    }

    /// Takes the statement parked under `query_id`.
    pub fn take_query(&self, query_id: &str) -> Option<Event> {
        self.by_query_id.lock().ok()?.take(query_id)
    }

    /// Holds a statement whose outcome is known until the driver fetches its result with a
    /// request of its own (`GET /queries/<query_id>/result`): an asynchronous statement once
    /// monitoring said it ended, each statement of a multi-statement request.
    pub fn await_result(&self, query_id: &str, event: Event) {
        if let Ok(mut m) = self.due.lock() {
            m.insert(query_id.to_owned(), event);
        }
    }

    /// Takes the statement whose result fetch is awaited under `query_id`.
    pub fn take_due(&self, query_id: &str) -> Option<Event> {
        self.due.lock().ok()?.take(query_id)
    }

    /// Takes every statement of session `session_id` whose result fetch is still awaited (the
    /// session ended: no fetch will come on it).
    pub fn take_due_of_session(&self, session_id: &str) -> Vec<Event> {
        let Ok(mut m) = self.due.lock() else {
            return Vec::new();
        };
        let keys: Vec<String> = m
            .map
            .iter()
            .filter(|(_, e)| e.session_id.as_deref() == Some(session_id))
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| m.take(k)).collect()
    }

    /// Remembers that the client is aborting the statement with this query id or request id
    /// (marked before the abort is forwarded, since the statement's answer may come first).
    pub fn note_aborted(&self, query_id: Option<&str>, request_id: Option<&str>) {
        if let Ok(mut m) = self.aborted.lock() {
            for key in abort_keys(query_id, request_id) {
                m.insert(key, ());
            }
        }
    }

    /// Whether the client aborted this statement (once: the mark is consumed); also how a
    /// refused abort, or one that found the statement parked, takes its mark back.
    pub fn take_aborted(&self, query_id: Option<&str>, request_id: Option<&str>) -> bool {
        let Ok(mut m) = self.aborted.lock() else {
            return false;
        };
        if m.map.is_empty() {
            return false;
        }
        let mut hit = false;
        for key in abort_keys(query_id, request_id) {
            hit |= m.take(&key).is_some();
        }
        hit
    }

    /// Takes the parked statement the driver sent with `request_id` (a 4.x abort names it so).
    pub fn take_query_by_request(&self, request_id: &str) -> Option<Event> {
        let mut m = self.by_query_id.lock().ok()?;
        let key = m
            .map
            .iter()
            .find(|(_, e)| e.request_id.as_deref() == Some(request_id))
            .map(|(k, _)| k.clone())?;
        m.take(&key)
    }

    /// Parks a statement that the driver will send again with the same request id (after a
    /// session renewal): the retry is the same statement (DECISIONS 10).
    pub fn park_request(&self, request_id: &str, event: Event) {
        if let Ok(mut m) = self.by_request_id.lock() {
            m.insert(request_id.to_owned(), event);
        }
    }

    /// Expects a download of `host` + `path` (a chunk URL without its signature) for `pending`.
    pub fn expect_chunk(&self, host: &str, path: &str, pending: Arc<PendingResult>) {
        if let Ok(mut m) = self.chunks.lock() {
            m.insert(format!("{host}{path}"), pending);
        }
    }

    /// The statement a download of `host` + `path` belongs to.
    pub fn take_chunk(&self, host: &str, path: &str) -> Option<Arc<PendingResult>> {
        self.chunks.lock().ok()?.take(&format!("{host}{path}"))
    }

    /// Intercepts `host` for connections from cgroup `cgroup_id` for a while (DECISIONS 3).
    pub fn learn_host(&self, cgroup_id: u64, host: &str) {
        if let Ok(mut m) = self.learned.lock() {
            m.insert(
                format!("{cgroup_id}/{}", host.to_ascii_lowercase()),
                Instant::now() + LEARNED_HOST_TTL,
            );
        }
    }

    /// Whether `host` was learned for connections from cgroup `cgroup_id` and has not expired.
    pub fn is_learned(&self, cgroup_id: u64, host: &str) -> bool {
        let key = format!("{cgroup_id}/{}", host.to_ascii_lowercase());
        self.learned
            .lock()
            .ok()
            .and_then(|m| m.get(&key).copied())
            .is_some_and(|until| Instant::now() < until)
    }

    /// Takes the statement parked under `request_id`.
    pub fn take_request(&self, request_id: &str) -> Option<Event> {
        self.by_request_id.lock().ok()?.take(request_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_by_token_and_bounds() {
        let t = Tracker::default();
        let s = Arc::new(Session {
            id: "s1".into(),
            ..Session::default()
        });
        t.insert("token-a", s.clone());
        assert_eq!(t.lookup(Some("token-a")).unwrap().id, "s1");
        assert!(t.lookup(Some("token-b")).is_none());
        assert!(t.lookup(None).is_none());
        assert!(t.remove(Some("token-a")).is_some());
        assert!(t.lookup(Some("token-a")).is_none());

        let mut b = Bounded::new(2);
        b.insert("1".into(), 1);
        b.insert("2".into(), 2);
        b.insert("3".into(), 3);
        assert!(b.get("1").is_none());
        assert_eq!(b.take("3"), Some(3));
        for i in 0..100 {
            b.insert(i.to_string(), i);
            b.take(&i.to_string());
        }
        assert!(b.order.len() <= 2 * 16 + 1);
    }

    #[test]
    fn results_due_are_taken_once_by_query_id_or_by_session() {
        let t = Tracker::default();
        let ev = |session: &str| {
            let mut e = Event::new(
                crate::audit::EventKind::Query,
                std::time::SystemTime::now(),
                "h",
            );
            e.session_id = Some(session.into());
            e
        };
        t.await_result("q1", ev("s1"));
        t.await_result("q2", ev("s1"));
        t.await_result("q3", ev("s2"));
        assert!(t.take_due("q1").is_some());
        assert!(t.take_due("q1").is_none(), "taken once");
        assert!(t.take_query("q2").is_none(), "not a parked statement");
        let ended = t.take_due_of_session("s1");
        assert_eq!(ended.len(), 1);
        assert!(t.take_due("q2").is_none());
        assert!(t.take_due("q3").is_some(), "another session's stays");
    }

    #[test]
    fn learned_hosts_are_per_cgroup() {
        let t = Tracker::default();
        t.learn_host(7, "Bucket.S3.amazonaws.com");
        assert!(t.is_learned(7, "bucket.s3.amazonaws.com"));
        assert!(!t.is_learned(8, "bucket.s3.amazonaws.com"));
        assert!(!t.is_learned(7, "other.s3.amazonaws.com"));
    }

    #[test]
    fn a_chunked_result_completes_once_with_its_chunk_bytes() {
        let mut e = Event::new(
            crate::audit::EventKind::Query,
            std::time::SystemTime::now(),
            "h",
        );
        e.result_bytes = Some(100);
        let p = PendingResult::new(e, 2);
        assert!(p.chunk_done(10).is_none());
        let done = p.chunk_done(20).unwrap();
        assert_eq!(done.result_bytes, Some(130));
        assert!(done.flags.is_empty());
        assert!(p.finish(true).is_none(), "completed once");

        let p = PendingResult::new(
            Event::new(
                crate::audit::EventKind::Query,
                std::time::SystemTime::now(),
                "h",
            ),
            3,
        );
        assert!(p.chunk_done(5).is_none());
        let late = p.finish(true).unwrap();
        assert_eq!(late.flags, vec!["chunks_unseen".to_string()]);
    }
}
