//! Token handles: what a brokered session's workload holds instead of Snowflake's session and
//! master tokens.
//!
//! A handle is `snowtrail-handle.` and 32 random bytes (base64url). The table maps it to the real
//! token, the brokered session it belongs to, the owner that logged in (the `snowtrail exec` run,
//! else the enrolled cgroup) and an expiry (the master token's validity). A request carrying a
//! handle is forwarded with the real token only when it comes from the same owner; a handle that
//! is unknown, expired or someone else's is refused and never forwarded. So a token stolen from a
//! workload is useless anywhere else: outside the enrolled cgroup it never reaches the agent, and
//! Snowflake does not know it.
//!
//! The table is bounded (`broker.max_handles`): past it the oldest handles go. A session's handles
//! go at its logout.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// Every handle starts with this, so a handle is told from a Snowflake token at a glance.
pub const HANDLE_PREFIX: &str = "snowtrail-handle.";

/// Who may use a handle: the `snowtrail exec` run or the enrolled cgroup that logged in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner(String);

impl Owner {
    /// The owner of a connection: its exec run when it has one, else its enrolled cgroup; `None`
    /// for a connection no enrollment covers.
    pub fn of(run_id: Option<&str>, enrolled_cgroup: Option<&str>) -> Option<Owner> {
        match (run_id, enrolled_cgroup) {
            (Some(run), _) => Some(Owner(format!("run:{run}"))),
            (None, Some(cgroup)) => Some(Owner(format!("cgroup:{cgroup}"))),
            (None, None) => None,
        }
    }
}

/// Why a handle was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// The agent never issued it, or forgot it (logout, the bound, a restart).
    #[error("unknown token handle")]
    Unknown,
    /// It was issued to another run or cgroup.
    #[error("token handle used outside the run or cgroup that logged in")]
    Foreign,
    /// Its session's master token has expired.
    #[error("expired token handle")]
    Expired,
}

impl HandleError {
    /// A bounded label for logs and the audit.
    pub fn label(self) -> &'static str {
        match self {
            HandleError::Unknown => "unknown_handle",
            HandleError::Foreign => "foreign_handle",
            HandleError::Expired => "expired_handle",
        }
    }
}

/// What a token on a request turned out to be.
#[derive(PartialEq, Eq)]
pub enum Resolved {
    /// Not a handle: a Snowflake token of a session that is not brokered; forwarded as it is.
    NotAHandle,
    /// A handle of the caller's: forward with this real token.
    Real {
        /// Snowflake's token.
        token: String,
        /// The brokered session it belongs to.
        session: u64,
    },
    /// A handle that must not be forwarded.
    Refused(HandleError),
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resolved::NotAHandle => f.write_str("NotAHandle"),
            Resolved::Real { session, .. } => write!(f, "Real {{ session: {session}, .. }}"),
            Resolved::Refused(e) => write!(f, "Refused({e:?})"),
        }
    }
}

struct Entry {
    real: String,
    owner: Owner,
    session: u64,
    expires: Instant,
}

#[derive(Default)]
struct Table {
    by_handle: HashMap<String, Entry>,
    by_session: HashMap<u64, Vec<String>>,
    order: VecDeque<String>,
}

impl Table {
    fn remove(&mut self, handle: &str) -> Option<Entry> {
        let e = self.by_handle.remove(handle)?;
        if let Some(list) = self.by_session.get_mut(&e.session) {
            list.retain(|h| h != handle);
            if list.is_empty() {
                self.by_session.remove(&e.session);
            }
        }
        Some(e)
    }
}

/// The handle table.
pub struct Handles {
    table: Mutex<Table>,
    max: usize,
    next_session: AtomicU64,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles")
            .field("len", &self.len())
            .field("max", &self.max)
            .finish()
    }
}

impl Handles {
    /// An empty table keeping at most `max` handles.
    pub fn new(max: usize) -> Handles {
        Handles {
            table: Mutex::new(Table::default()),
            max: max.max(2),
            next_session: AtomicU64::new(1),
        }
    }

    /// A new brokered session's number, which its handles share.
    pub fn new_session(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Handles held now.
    pub fn len(&self) -> usize {
        crate::sync::lock(&self.table).by_handle.len()
    }

    /// Whether no handle is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A fresh handle, not yet bound to a token; `None` when the system has no randomness to
    /// give.
    pub fn mint() -> Option<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).ok()?;
        Some(format!(
            "{HANDLE_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// Binds `handle` (from [`Handles::mint`]) to `real`, a token of brokered session `session`,
    /// usable by `owner` until `now + ttl`.
    pub fn bind(
        &self,
        handle: &str,
        session: u64,
        owner: &Owner,
        real: &str,
        ttl: Duration,
        now: Instant,
    ) {
        let mut t = crate::sync::lock(&self.table);
        t.by_handle.insert(
            handle.to_owned(),
            Entry {
                real: real.to_owned(),
                owner: owner.clone(),
                session,
                expires: now + ttl,
            },
        );
        t.by_session
            .entry(session)
            .or_default()
            .push(handle.to_owned());
        t.order.push_back(handle.to_owned());
        while t.by_handle.len() > self.max {
            match t.order.pop_front() {
                Some(old) => {
                    t.remove(&old);
                }
                None => break,
            }
        }
        // Handles removed at logout leave stale entries in `order`; drop them once they dominate.
        if t.order.len() > 2 * self.max {
            let Table {
                by_handle, order, ..
            } = &mut *t;
            order.retain(|h| by_handle.contains_key(h));
        }
    }

    /// Mints a handle and binds it (see [`Handles::bind`]).
    pub fn issue(
        &self,
        session: u64,
        owner: &Owner,
        real: &str,
        ttl: Duration,
        now: Instant,
    ) -> Option<String> {
        let handle = Handles::mint()?;
        self.bind(&handle, session, owner, real, ttl, now);
        Some(handle)
    }

    /// What `token`, sent by `caller`, stands for.
    pub fn resolve(&self, token: &str, caller: Option<&Owner>, now: Instant) -> Resolved {
        if !token.starts_with(HANDLE_PREFIX) {
            return Resolved::NotAHandle;
        }
        let mut t = crate::sync::lock(&self.table);
        let Some(e) = t.by_handle.get(token) else {
            return Resolved::Refused(HandleError::Unknown);
        };
        if now >= e.expires {
            t.remove(token);
            return Resolved::Refused(HandleError::Expired);
        }
        if caller != Some(&e.owner) {
            return Resolved::Refused(HandleError::Foreign);
        }
        Resolved::Real {
            token: e.real.clone(),
            session: e.session,
        }
    }

    /// Forgets every handle of brokered session `session` (its logout).
    pub fn end_session(&self, session: u64) {
        let mut t = crate::sync::lock(&self.table);
        if let Some(list) = t.by_session.remove(&session) {
            for h in list {
                t.by_handle.remove(&h);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn handles_resolve_only_for_their_owner_and_until_logout() {
        let h = Handles::new(100);
        let run = Owner::of(Some("run-1"), Some("/snowtrail/exec/run-1")).unwrap();
        let other_run = Owner::of(Some("run-2"), None).unwrap();
        let cgroup = Owner::of(None, Some("/system.slice/etl.service")).unwrap();
        assert_eq!(Owner::of(None, None), None);
        let now = Instant::now();
        let s = h.new_session();
        let session = h
            .issue(s, &run, "real-session", Duration::from_secs(60), now)
            .unwrap();
        let master = h
            .issue(s, &run, "real-master", Duration::from_secs(60), now)
            .unwrap();
        assert!(session.starts_with(HANDLE_PREFIX) && session != master);
        assert!(!session.contains("real"));
        assert!(!format!("{h:?}").contains("real"));

        assert_eq!(
            h.resolve(&session, Some(&run), now),
            Resolved::Real {
                token: "real-session".into(),
                session: s
            }
        );
        assert_eq!(
            h.resolve(&master, Some(&run), now),
            Resolved::Real {
                token: "real-master".into(),
                session: s
            }
        );
        // Another run, another cgroup, or no enrollment at all: refused.
        for caller in [Some(&other_run), Some(&cgroup), None] {
            assert_eq!(
                h.resolve(&session, caller, now),
                Resolved::Refused(HandleError::Foreign)
            );
        }
        // A Snowflake token is not the table's business; an unknown handle is refused.
        assert_eq!(
            h.resolve("ver:1-hint:123-ABC", Some(&run), now),
            Resolved::NotAHandle
        );
        assert_eq!(
            h.resolve(&format!("{HANDLE_PREFIX}forged"), Some(&run), now),
            Resolved::Refused(HandleError::Unknown)
        );
        // Past the master token's validity: refused, and forgotten.
        let later = now + Duration::from_secs(61);
        assert_eq!(
            h.resolve(&session, Some(&run), later),
            Resolved::Refused(HandleError::Expired)
        );
        assert_eq!(
            h.resolve(&session, Some(&run), now),
            Resolved::Refused(HandleError::Unknown)
        );
        // Logout forgets the session's handles, and only them.
        let s2 = h.new_session();
        let kept = h
            .issue(s2, &cgroup, "real-2", Duration::from_secs(60), now)
            .unwrap();
        h.end_session(s);
        assert_eq!(
            h.resolve(&master, Some(&run), now),
            Resolved::Refused(HandleError::Unknown)
        );
        assert!(matches!(
            h.resolve(&kept, Some(&cgroup), now),
            Resolved::Real { .. }
        ));
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn the_table_is_bounded() {
        let h = Handles::new(4);
        let o = Owner::of(Some("r"), None).unwrap();
        let now = Instant::now();
        let first = h
            .issue(h.new_session(), &o, "t0", Duration::from_secs(60), now)
            .unwrap();
        for i in 1..10 {
            let s = h.new_session();
            h.issue(s, &o, &format!("t{i}"), Duration::from_secs(60), now)
                .unwrap();
            h.end_session(s.saturating_sub(100));
        }
        assert_eq!(h.len(), 4);
        assert_eq!(
            h.resolve(&first, Some(&o), now),
            Resolved::Refused(HandleError::Unknown)
        );
        for i in 0..100 {
            let s = h.new_session();
            h.issue(s, &o, &format!("x{i}"), Duration::from_secs(60), now)
                .unwrap();
            h.end_session(s);
        }
        assert!(h.table.lock().unwrap().order.len() <= 2 * 4 + 1);
    }
}
