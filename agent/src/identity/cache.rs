//! A bounded least-recently-used map: the process cache's storage.
//!
//! Each entry carries the tick of its last use; a second map orders entries by that tick, so the
//! least recently used one is found in O(log n). Past the capacity the least recently used entry
//! goes. No I/O, no locking (the caller holds a mutex).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// A map of at most `capacity` entries that forgets the least recently used one first.
#[derive(Debug)]
pub struct Lru<K, V> {
    entries: HashMap<K, (V, u64)>,
    by_use: BTreeMap<u64, K>,
    tick: u64,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// An empty map holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Lru {
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    fn touch(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The value under `key`, marked as just used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        let now = self.touch();
        let (_, used) = self.entries.get_mut(key)?;
        self.by_use.remove(used);
        *used = now;
        self.by_use.insert(now, key.clone());
        self.entries.get(key).map(|(v, _)| v)
    }

    /// Stores `value` under `key` (replacing any), evicting the least recently used entries past
    /// the capacity.
    pub fn insert(&mut self, key: K, value: V) {
        let now = self.touch();
        if let Some((_, used)) = self.entries.insert(key.clone(), (value, now)) {
            self.by_use.remove(&used);
        }
        self.by_use.insert(now, key);
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    /// Removes the entry under `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (v, used) = self.entries.remove(key)?;
        self.by_use.remove(&used);
        Some(v)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut c = Lru::new(2);
        c.insert(1, "a");
        c.insert(2, "b");
        assert_eq!(c.get(&1), Some(&"a"));
        c.insert(3, "c");
        assert_eq!(c.get(&2), None, "2 was used least recently");
        assert_eq!(c.get(&1), Some(&"a"));
        assert_eq!(c.get(&3), Some(&"c"));
        c.insert(3, "c2");
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&3), Some(&"c2"));
        assert_eq!(c.remove(&1), Some("a"));
        assert_eq!(c.len(), 1);
        for i in 10..1000 {
            c.insert(i, "x");
        }
        assert_eq!(c.len(), 2);
        assert_eq!(c.by_use.len(), 2);
        assert!(!c.is_empty());
    }
}
