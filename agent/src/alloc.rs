//! The process allocator of the agent's binaries: mimalloc, giving start-up's memory back at once.
//!
//! Many small allocations cross threads on the audit path (events built by proxy tasks, freed by the
//! writer's threads), where glibc's malloc took a large share of the writer's time. mimalloc returns
//! freed pages to the OS a second after they are freed, and only when the thread that freed them
//! allocates again. Start-up (the eBPF load, recovery) frees much on threads that then rest, which
//! left an idle agent with twice the resident memory; under load, returning pages at once instead
//! costs a page fault each time they are used again (a tenth of the audit writer's throughput).
//! So the binaries declare [`Allocator`] as their `#[global_allocator]`, call [`configure`] first
//! thing (pages go back at once) and [`started`] once start-up is over (mimalloc's own delay).

use std::sync::atomic::{AtomicI64, Ordering};

/// The allocator type the binaries declare as `#[global_allocator]`.
pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same in its v2 and v3 headers); the
/// sys crate names only some of the options.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The purge delay to restore once start-up is over (`-1`: [`configure`] changed nothing).
static STEADY_PURGE_DELAY: AtomicI64 = AtomicI64::new(-1);

/// Makes freed memory go back to the OS as soon as it is free, until [`started`], unless
/// `MIMALLOC_PURGE_DELAY` in the environment says otherwise.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: reads and sets one of mimalloc's integer options, which it accesses atomically;
    // any value is valid.
    unsafe {
        // `c_long` is 64 bits on the targets the agent runs on (LP64 Linux).
        let steady: i64 = libmimalloc_sys::mi_option_get(PURGE_DELAY);
        STEADY_PURGE_DELAY.store(steady, Ordering::Relaxed);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

/// Start-up is over: freed memory goes back to the OS after mimalloc's own delay again, so pages
/// freed and reused under load are not faulted in afresh each time.
pub fn started() {
    let steady = STEADY_PURGE_DELAY.swap(-1, Ordering::Relaxed);
    if steady < 0 {
        return;
    }
    // SAFETY: as in `configure`.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, steady) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_returns_memory_at_once_and_steady_state_restores_the_default() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads one of mimalloc's integer options.
        let get = || unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        let default = get();
        configure();
        assert_eq!(get(), 0);
        started();
        assert_eq!(get(), default);
        started();
        assert_eq!(get(), default, "a second call changes nothing");
    }
}
