//! The journal thread's table of pending intents: which intents wait for their completion, where
//! each one's latest journal record is, and in what order they came (for `intent_timeout_s` and
//! `max_pending_intents`); plus the recently expired ones, whose late completions are refused.
//!
//! The table decides nothing about rows: the parquet thread and recovery pair intents with
//! completions by `event_id`, in journal order. The table serves the journal thread's own duties:
//! bounding how many intents wait and for how long, copying intents forward out of old segments,
//! and telling a completion from a late one. Changes of records that then fail to be written are
//! taken back with their [`Undo`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::core::RecordLoc;

/// A pending intent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IntentEntry {
    /// Its latest journal record.
    pub(super) loc: RecordLoc,
    /// When it first came (writer clock); a resubmission or a copy keeps it.
    pub(super) since: SystemTime,
    /// Its `event_time`, for the gap count should a record of it fail.
    pub(super) time: SystemTime,
    /// Tells this entry from an earlier one with the same id in the arrival queue.
    generation: u64,
}

/// How to take back one record's change to the table if the record fails: if the table's entry
/// for `id` still is what the record left (`after`: the entry's record number, or none for a
/// completion), it becomes `before` again.
#[derive(Clone, Copy, Debug)]
pub(super) struct Undo {
    pub(super) seq: u64,
    id: Uuid,
    after: Option<u64>,
    before: Option<IntentEntry>,
}

pub(super) struct Intents {
    table: HashMap<Uuid, IntentEntry>,
    /// Arrival order as (generation, id); entries no longer in the table are skipped lazily and
    /// swept out when they outnumber the live ones.
    order: VecDeque<(u64, Uuid)>,
    /// The intents given up on, newest last, so that their completions are refused; at most
    /// `expired_cap` of them (16 bytes each), far more than can be pending.
    expired: HashSet<Uuid>,
    expired_order: VecDeque<Uuid>,
    expired_cap: usize,
    next_generation: u64,
    max_pending: usize,
    timeout: Duration,
}

/// How many intents given up on are remembered, at least; and at least this many times
/// `max_pending_intents`.
const MIN_EXPIRED_REMEMBERED: usize = 65_536;
const EXPIRED_REMEMBERED_PER_PENDING: usize = 4;

impl Intents {
    pub(super) fn new(max_pending: usize, timeout: Duration) -> Self {
        Intents {
            table: HashMap::new(),
            order: VecDeque::new(),
            expired: HashSet::new(),
            expired_order: VecDeque::new(),
            expired_cap: max_pending
                .saturating_mul(EXPIRED_REMEMBERED_PER_PENDING)
                .max(MIN_EXPIRED_REMEMBERED),
            next_generation: 0,
            max_pending: max_pending.max(1),
            timeout,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Whether a complete event for `id` comes too late: the writer gave up on its intent (and
    /// no intent with that id is pending again).
    pub(super) fn is_late(&self, id: &Uuid) -> bool {
        !self.expired.is_empty() && self.expired.contains(id) && !self.table.contains_key(id)
    }

    /// An intent record for `id` was encoded at `loc`: a new intent, a resubmission, or a copy.
    pub(super) fn record(
        &mut self,
        id: Uuid,
        loc: RecordLoc,
        time: SystemTime,
        now: SystemTime,
    ) -> Undo {
        match self.table.get_mut(&id) {
            Some(e) => {
                let before = *e;
                e.loc = loc;
                e.time = time;
                Undo {
                    seq: loc.seq,
                    id,
                    after: Some(loc.seq),
                    before: Some(before),
                }
            }
            None => {
                let generation = self.next_generation;
                self.next_generation += 1;
                self.table.insert(
                    id,
                    IntentEntry {
                        loc,
                        since: now,
                        time,
                        generation,
                    },
                );
                self.order.push_back((generation, id));
                self.sweep();
                Undo {
                    seq: loc.seq,
                    id,
                    after: Some(loc.seq),
                    before: None,
                }
            }
        }
    }

    /// A complete event for `id` was encoded at `seq`: if an intent was pending, it is done.
    pub(super) fn complete(&mut self, id: Uuid, seq: u64) -> Option<Undo> {
        if self.table.is_empty() {
            return None;
        }
        self.table.remove(&id).map(|before| Undo {
            seq,
            id,
            after: None,
            before: Some(before),
        })
    }

    /// Whether a new intent `id` would go beyond `max_pending_intents`; then the oldest pending
    /// intent is given up on and returned.
    pub(super) fn make_room(&mut self, id: &Uuid) -> Option<Uuid> {
        if self.table.len() < self.max_pending || self.table.contains_key(id) {
            return None;
        }
        let oldest = self.oldest()?;
        self.expire(oldest);
        Some(oldest)
    }

    /// Gives up on the intents pending for `intent_timeout_s` or longer at `now`, oldest first.
    pub(super) fn expire_due(&mut self, now: SystemTime, out: &mut Vec<Uuid>) {
        while let Some(id) = self.oldest() {
            let since = self.table.get(&id).map(|e| e.since).unwrap_or(now);
            if now.duration_since(since).unwrap_or_default() < self.timeout {
                break;
            }
            self.expire(id);
            out.push(id);
        }
    }

    /// The pending intents whose latest record is in one of `segs` (first numbers), by record.
    pub(super) fn in_segments(&self, segs: &[u64], out: &mut Vec<(Uuid, IntentEntry)>) {
        out.extend(
            self.table
                .iter()
                .filter(|(_, e)| segs.contains(&e.loc.seg))
                .map(|(id, e)| (*id, *e)),
        );
        out.sort_unstable_by_key(|(_, e)| e.loc.seq);
    }

    /// How many pending intents have their latest record in segment `seg`.
    pub(super) fn count_in(&self, seg: u64) -> u64 {
        self.table.values().filter(|e| e.loc.seg == seg).count() as u64
    }

    /// Takes back the change of a record that failed.
    pub(super) fn undo(&mut self, u: Undo) {
        if u.before.is_none() && self.expired.remove(&u.id) {
            // A new intent given up on before its record failed: it never was, so its completion
            // is an event of its own, not a late one.
            self.expired_order.retain(|id| *id != u.id);
        }
        if self.table.get(&u.id).map(|e| e.loc.seq) != u.after {
            return;
        }
        match u.before {
            Some(before) => {
                self.table.insert(u.id, before);
                // Its place in the arrival queue may have been swept out meanwhile.
                self.order.push_back((before.generation, u.id));
            }
            None => {
                self.table.remove(&u.id);
            }
        }
    }

    /// The oldest intent still pending; drops stale queue entries on the way.
    fn oldest(&mut self) -> Option<Uuid> {
        while let Some(&(generation, id)) = self.order.front() {
            if self
                .table
                .get(&id)
                .is_some_and(|e| e.generation == generation)
            {
                return Some(id);
            }
            self.order.pop_front();
        }
        None
    }

    fn expire(&mut self, id: Uuid) {
        self.table.remove(&id);
        if self.expired.insert(id) {
            self.expired_order.push_back(id);
            if self.expired_order.len() > self.expired_cap
                && let Some(old) = self.expired_order.pop_front()
            {
                self.expired.remove(&old);
            }
        }
    }

    /// Keeps the arrival queue within twice the live entries (completed intents leave stale
    /// entries behind a long-pending one).
    fn sweep(&mut self) {
        if self.order.len() > 2 * self.table.len() + 1024 {
            let table = &self.table;
            self.order
                .retain(|(g, id)| table.get(id).is_some_and(|e| e.generation == *g));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn loc(seq: u64) -> RecordLoc {
        RecordLoc {
            seq,
            seg: 0,
            pos: 0,
        }
    }

    #[test]
    fn bound_timeout_and_undo() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1000);
        let mut it = Intents::new(2, Duration::from_secs(60));
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        it.record(a, loc(1), t0, t0);
        it.record(b, loc(2), t0, t0 + Duration::from_secs(30));
        assert_eq!(it.make_room(&b), None, "a resubmission takes no room");
        assert_eq!(it.make_room(&c), Some(a), "the oldest goes");
        assert!(it.is_late(&a) && !it.is_late(&b));
        it.record(c, loc(3), t0, t0 + Duration::from_secs(40));
        assert!(it.complete(b, 4).is_some());
        assert!(it.complete(a, 5).is_none());
        let mut out = Vec::new();
        it.expire_due(t0 + Duration::from_secs(99), &mut out);
        assert!(out.is_empty());
        it.expire_due(t0 + Duration::from_secs(100), &mut out);
        assert_eq!(out, vec![c]);
        assert!(it.is_empty());

        // A completion that fails puts its intent back; the failed intent record then goes too.
        let d = Uuid::now_v7();
        let u1 = it.record(d, loc(10), t0, t0);
        let u2 = it.complete(d, 11).unwrap();
        assert!(it.is_empty());
        it.undo(u2);
        assert_eq!(it.len(), 1);
        it.undo(u1);
        assert!(it.is_empty());
        assert_eq!(it.oldest(), None);
    }

    #[test]
    fn stale_queue_entries_are_swept() {
        let t0 = UNIX_EPOCH;
        let mut it = Intents::new(10, Duration::from_secs(60));
        let long = Uuid::now_v7();
        it.record(long, loc(0), t0, t0);
        for i in 1..10_000 {
            let id = Uuid::now_v7();
            it.record(id, loc(i), t0, t0);
            it.complete(id, i);
        }
        assert!(it.order.len() <= 2 * it.len() + 1025);
        assert_eq!(it.oldest(), Some(long));
        let mut segs = Vec::new();
        it.in_segments(&[0], &mut segs);
        assert_eq!(segs.len(), 1);
        assert_eq!(it.count_in(0), 1);
    }
}
