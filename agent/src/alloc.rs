//! The process allocator of the agent's binaries: mimalloc, returning freed memory to the OS at once.
//!
//! Many small allocations cross threads on the audit path (events built by proxy tasks, freed by the
//! writer's threads), where glibc's malloc took a large share of the writer's time. mimalloc's
//! default of returning freed pages to the OS a second later, and only when the thread that freed
//! them allocates again, left an idle agent holding what start-up (the eBPF load, recovery) freed:
//! twice the resident memory at rest. The binaries declare [`Allocator`] as their
//! `#[global_allocator]` and call [`configure`] first thing.

/// The allocator type the binaries declare as `#[global_allocator]`.
pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same in its v2 and v3 headers); the
/// sys crate names only some of the options.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes freed memory go back to the OS as soon as it is free, unless `MIMALLOC_PURGE_DELAY` in
/// the environment says otherwise.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets one of mimalloc's integer options, which it reads atomically; any value is valid.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) }
}
