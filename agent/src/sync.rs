//! The one policy for poisoned locks: recover, say so, count it.
//!
//! A lock is poisoned when a thread panicked while holding it. Every lock of the agent guards state
//! that stays usable after such a panic (maps of sessions, caches, counters, a clock), and giving up
//! on it would silently switch off what it guards: session tracking, the audit's bookkeeping. So
//! every lock is taken through this module: a poisoned one is recovered, its poison cleared (the
//! warning comes once per panic, not once per later use), a warning names the place that found it,
//! and [`poisoned`] counts it for `snowtrail status`. No other code calls `.lock()` on the data path.

use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{
    Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

static POISONED: AtomicU64 = AtomicU64::new(0);

/// How many poisoned locks were found (and recovered) since the process started.
pub fn poisoned() -> u64 {
    POISONED.load(Ordering::Relaxed)
}

#[track_caller]
fn recovered<G>(e: PoisonError<G>, what: &'static str) -> G {
    POISONED.fetch_add(1, Ordering::Relaxed);
    let at = Location::caller();
    tracing::warn!(
        lock = what,
        at = %at,
        "a lock was poisoned by a panic elsewhere; its state is used as it was left"
    );
    e.into_inner()
}

/// Locks `m`, recovering it if a panic poisoned it.
#[track_caller]
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(e) => {
            let g = recovered(e, "mutex");
            m.clear_poison();
            g
        }
    }
}

/// Takes `l` for reading, recovering it if a panic poisoned it.
#[track_caller]
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    match l.read() {
        Ok(g) => g,
        Err(e) => {
            let g = recovered(e, "rwlock");
            l.clear_poison();
            g
        }
    }
}

/// Takes `l` for writing, recovering it if a panic poisoned it.
#[track_caller]
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    match l.write() {
        Ok(g) => g,
        Err(e) => {
            let g = recovered(e, "rwlock");
            l.clear_poison();
            g
        }
    }
}

/// Waits on `cv` with `guard`, recovering the mutex if a panic poisoned it meanwhile.
#[track_caller]
pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    match cv.wait(guard) {
        Ok(g) => g,
        Err(e) => recovered(e, "condvar"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn poison<T: Send + 'static>(m: &Arc<Mutex<T>>) {
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            panic!("poisoning on purpose");
        })
        .join();
        assert!(m.is_poisoned());
    }

    #[test]
    fn a_poisoned_mutex_is_recovered_counted_and_cleared() {
        let m = Arc::new(Mutex::new(vec![1, 2]));
        poison(&m);
        let before = poisoned();
        lock(&m).push(3);
        assert!(poisoned() > before, "the recovery is counted");
        assert!(
            !m.is_poisoned(),
            "the poison is cleared: one warning per panic"
        );
        let after = poisoned();
        assert_eq!(*lock(&m), vec![1, 2, 3], "the state is kept as it was left");
        // Other tests may poison their own locks concurrently; this lock adds nothing more.
        assert!(poisoned() >= after);
    }

    #[test]
    fn a_poisoned_rwlock_is_recovered_for_reads_and_writes() {
        let l = Arc::new(RwLock::new(7));
        let l2 = l.clone();
        let _ = std::thread::spawn(move || {
            let _g = l2.write();
            panic!("poisoning on purpose");
        })
        .join();
        assert!(l.is_poisoned());
        *write(&l) += 1;
        assert!(!l.is_poisoned());
        assert_eq!(*read(&l), 8);
    }
}
