//! Snowflake sessions and statements in flight, as the proxy sees them across connections.
//!
//! A driver logs in on one connection and may send its statements over others (a pool, or h2
//! streams): requests name their session by the token in `Authorization`. The tracker keys each
//! session by a keyed hash of that token (the token itself is not kept) and remembers who logged
//! in. A brokered session's requests carry agent handles ([`crate::broker::handles`]); the proxy
//! swaps them for Snowflake's tokens before anything here looks, so sessions are keyed by
//! Snowflake's token whether brokered or not. Statements whose outcome comes later (a `333333`
//! poll, a retry after token renewal) wait here by query id or request id. Everything is
//! bounded: past the bounds the oldest entries go.
//!
//! This is state only: the types it stores are its own ([`session`], [`chunks`], [`capture`],
//! [`transfer_book`]), and nothing here calls a handler.

pub mod capture;
pub mod chunks;
pub mod session;
pub mod transfer_book;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::audit::Event;
use crate::sync::lock;

pub use capture::{Recorder, Recording};
pub use chunks::{ChunkMasking, PendingResult};
pub use session::{Human, SessionContext, TrackedSession};
pub use transfer_book::{PendingTransfer, TransferBook};

/// Most sessions tracked at once.
pub const MAX_SESSIONS: usize = 65_536;
/// Most statements waiting for their outcome at once.
pub const MAX_PENDING: usize = 65_536;

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

/// A statement whose attempt failed the way drivers retry (HTTP 5xx), waiting for the retry.
struct Retrying {
    /// The statement to go on with when the retry comes (no outcome of the failed attempt).
    next: Event,
    /// Its row if no retry comes: the failed attempt's outcome.
    failed: Event,
}

/// A SQL API statement answered and recorded: the rule its result was shaped by, and how its
/// later partitions are answered.
#[derive(Debug, Clone, Default)]
pub struct Answered {
    /// The deciding rule, when it masks or limits rows.
    pub rule: Option<String>,
    /// The partitions' shaping (none by default).
    pub shape: crate::snowflake::sql_api::PartitionShape,
}

/// Sessions by token, and statements waiting for their outcome.
pub struct Tracker {
    hasher: RandomState,
    sessions: Mutex<Bounded<Arc<TrackedSession>>>,
    by_query_id: Mutex<Bounded<Event>>,
    by_request_id: Mutex<Bounded<Event>>,
    retrying: Mutex<Bounded<Retrying>>,
    due: Mutex<Bounded<Event>>,
    chunks: Mutex<Bounded<Arc<PendingResult>>>,
    learned: Mutex<Bounded<Instant>>,
    aborted: Mutex<Bounded<()>>,
    answered: Mutex<Bounded<Answered>>,
    /// SQL API statements approved after a hold: the hold's handle (which the client polls) to
    /// Snowflake's.
    aliases: Mutex<Bounded<String>>,
    /// PUT/GET statements waiting for their stage transfers.
    pub transfers: TransferBook,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            hasher: RandomState::new(),
            sessions: Mutex::new(Bounded::new(MAX_SESSIONS)),
            by_query_id: Mutex::new(Bounded::new(MAX_PENDING)),
            by_request_id: Mutex::new(Bounded::new(MAX_PENDING)),
            retrying: Mutex::new(Bounded::new(MAX_PENDING)),
            due: Mutex::new(Bounded::new(MAX_PENDING)),
            chunks: Mutex::new(Bounded::new(MAX_PENDING)),
            learned: Mutex::new(Bounded::new(MAX_SESSIONS)),
            aborted: Mutex::new(Bounded::new(MAX_PENDING)),
            answered: Mutex::new(Bounded::new(MAX_PENDING)),
            aliases: Mutex::new(Bounded::new(MAX_PENDING)),
            transfers: TransferBook::default(),
        }
    }
}

impl Tracker {
    fn key(&self, token: &str) -> String {
        format!("{:016x}", self.hasher.hash_one(token))
    }

    /// Records a session under the token the login (or a renewal) issued.
    pub fn insert(&self, token: &str, session: Arc<TrackedSession>) {
        let key = self.key(token);
        lock(&self.sessions).insert(key, session);
    }

    /// The session a request's token belongs to.
    pub fn lookup(&self, token: Option<&str>) -> Option<Arc<TrackedSession>> {
        let key = self.key(token?);
        lock(&self.sessions).get(&key).cloned()
    }

    /// Forgets a session's token (logout).
    pub fn remove(&self, token: Option<&str>) -> Option<Arc<TrackedSession>> {
        let key = self.key(token?);
        lock(&self.sessions).take(&key)
    }

    /// Parks a statement until a poll of `query_id` brings its outcome.
    pub fn park_query(&self, query_id: &str, event: Event) {
        lock(&self.by_query_id).insert(query_id.to_owned(), event);
    }

    /// Takes the statement parked under `query_id`.
    pub fn take_query(&self, query_id: &str) -> Option<Event> {
        lock(&self.by_query_id).take(query_id)
    }

    /// Holds a statement whose outcome is known until the driver fetches its result with a
    /// request of its own (`GET /queries/<query_id>/result`): an asynchronous statement once
    /// monitoring said it ended, each statement of a multi-statement request.
    pub fn await_result(&self, query_id: &str, event: Event) {
        lock(&self.due).insert(query_id.to_owned(), event);
    }

    /// Takes the statement whose result fetch is awaited under `query_id`.
    pub fn take_due(&self, query_id: &str) -> Option<Event> {
        lock(&self.due).take(query_id)
    }

    /// Takes every statement of session `session_id` whose result fetch is still awaited (the
    /// session ended: no fetch will come on it).
    pub fn take_due_of_session(&self, session_id: &str) -> Vec<Event> {
        let mut m = lock(&self.due);
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
        let mut m = lock(&self.aborted);
        for key in abort_keys(query_id, request_id) {
            m.insert(key, ());
        }
    }

    /// Whether the client aborted this statement (once: the mark is consumed); also how a
    /// refused abort, or one that found the statement parked, takes its mark back.
    pub fn take_aborted(&self, query_id: Option<&str>, request_id: Option<&str>) -> bool {
        let mut m = lock(&self.aborted);
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
        let mut m = lock(&self.by_query_id);
        let key = m
            .map
            .iter()
            .find(|(_, e)| e.request_id.as_deref() == Some(request_id))
            .map(|(k, _)| k.clone())?;
        m.take(&key)
    }

    /// Parks a statement that the driver will send again with the same request id (after a
    /// session renewal): the retry is the same statement (docs/decisions.md §10).
    pub fn park_request(&self, request_id: &str, event: Event) {
        lock(&self.by_request_id).insert(request_id.to_owned(), event);
    }

    /// Expects a download of `host` + `path` (a chunk URL without its signature) for `pending`.
    pub fn expect_chunk(&self, host: &str, path: &str, pending: Arc<PendingResult>) {
        lock(&self.chunks).insert(format!("{host}{path}"), pending);
    }

    /// The statement a download of `host` + `path` belongs to.
    pub fn take_chunk(&self, host: &str, path: &str) -> Option<Arc<PendingResult>> {
        lock(&self.chunks).take(&format!("{host}{path}"))
    }

    /// Intercepts `host` for connections from cgroup `cgroup_id` for a while (docs/decisions.md §3).
    pub fn learn_host(&self, cgroup_id: u64, host: &str) {
        lock(&self.learned).insert(
            format!("{cgroup_id}/{}", host.to_ascii_lowercase()),
            Instant::now() + LEARNED_HOST_TTL,
        );
    }

    /// Whether `host` was learned for connections from cgroup `cgroup_id` and has not expired.
    pub fn is_learned(&self, cgroup_id: u64, host: &str) -> bool {
        let key = format!("{cgroup_id}/{}", host.to_ascii_lowercase());
        lock(&self.learned)
            .get(&key)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// Takes the statement parked under `request_id`: after a session renewal, or after an
    /// attempt that failed with HTTP 5xx (the statement without that attempt's outcome).
    pub fn take_request(&self, request_id: &str) -> Option<Event> {
        if let Some(e) = lock(&self.by_request_id).take(request_id) {
            return Some(e);
        }
        lock(&self.retrying).take(request_id).map(|r| r.next)
    }

    /// Notes that the SQL API statement `handle` was answered and recorded: the partitions of its
    /// result are fetched by handle later, belong to that statement, and are shaped as `shape`
    /// says (its rule's masking or row limit).
    pub fn note_answered(&self, handle: &str, answered: Answered) {
        lock(&self.answered).insert(handle.to_owned(), answered);
    }

    /// Notes that the SQL API statement held as `hold` runs at Snowflake as `handle`.
    pub fn alias(&self, hold: &str, handle: &str) {
        lock(&self.aliases).insert(hold.to_owned(), handle.to_owned());
    }

    /// Snowflake's handle of the SQL API statement the client knows as the hold `hold`.
    pub fn aliased(&self, hold: &str) -> Option<String> {
        lock(&self.aliases).get(hold).cloned()
    }

    /// How the partitions of the SQL API statement `handle` are shaped, if it was answered and
    /// recorded.
    pub fn answered(&self, handle: &str) -> Option<Answered> {
        lock(&self.answered).get(handle).cloned()
    }

    /// Parks a statement whose attempt failed with HTTP 5xx until the driver sends it again with
    /// the same request id: `next` goes on with the retry, `failed` is its row if none comes
    /// (docs/decisions.md §10).
    pub fn park_retry(&self, request_id: &str, next: Event, failed: Event) {
        lock(&self.retrying).insert(request_id.to_owned(), Retrying { next, failed });
    }

    /// The failed attempt's row of the statement parked under `request_id`, if no retry took it
    /// since attempt number `attempt` was parked.
    pub fn take_unretried(&self, request_id: &str, attempt: Option<u32>) -> Option<Event> {
        let mut m = lock(&self.retrying);
        if m.get(request_id)
            .is_some_and(|r| r.next.attempts == attempt)
        {
            return m.take(request_id).map(|r| r.failed);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_by_token_and_bounds() {
        let t = Tracker::default();
        let s = Arc::new(TrackedSession {
            id: "s1".into(),
            ..TrackedSession::default()
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
}
