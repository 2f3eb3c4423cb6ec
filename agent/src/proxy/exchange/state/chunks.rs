//! Statements whose result comes partly in chunks: the event waits for the chunk downloads, which
//! are rewritten by the statement's rule ([`ChunkMasking`]) and recorded as they pass.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::capture::Recording;
use crate::audit::{Event, Flag};
use crate::snowflake::shaping::ChunkShape;
use crate::sync::lock;

/// How a shaped result's chunk downloads are rewritten.
pub struct ChunkMasking {
    /// The rule that shapes the result.
    pub(in crate::proxy::exchange) rule: String,
    /// The shape of each chunk that is rewritten, by [`chunk_key`].
    pub(in crate::proxy::exchange) by_path: HashMap<String, ChunkShape>,
}

/// The key of a chunk download: its lower-case host and its path.
pub(in crate::proxy::exchange) fn chunk_key(host: &str, path: &str) -> String {
    format!("{}{path}", host.to_ascii_lowercase())
}

/// A statement whose result comes partly in chunks: its event waits for the chunk downloads.
pub struct PendingResult {
    event: Mutex<Option<Event>>,
    expected: usize,
    seen: AtomicUsize,
    bytes: AtomicU64,
    masking: Option<ChunkMasking>,
    recording: Mutex<Option<Recording>>,
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
        masking: Option<ChunkMasking>,
        recording: Option<Recording>,
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
    pub(in crate::proxy::exchange) fn take_recording(&self) -> Option<Recording> {
        lock(&self.recording).take()
    }

    /// Runs `f` on the recording of the result, while it is recorded.
    pub(in crate::proxy::exchange) fn with_recording<T>(
        &self,
        f: impl FnOnce(&mut Recording) -> T,
    ) -> Option<T> {
        lock(&self.recording).as_mut().map(f)
    }

    /// A chunk download's index in the result and its uncompressed size.
    pub(in crate::proxy::exchange) fn chunk_info(
        &self,
        host: &str,
        path: &str,
    ) -> Option<(usize, Option<u64>)> {
        self.chunk_index
            .get(&format!("{}{path}", host.to_ascii_lowercase()))
            .copied()
    }

    /// How the result's chunk downloads are rewritten, when its rule shapes results.
    pub fn masking(&self) -> Option<&ChunkMasking> {
        self.masking.as_ref()
    }

    /// Flags the held event (once), for what happened to one of its chunks.
    pub fn flag(&self, flag: Flag) {
        if let Some(e) = lock(&self.event).as_mut() {
            e.add_flag(flag);
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
        let mut event = lock(&self.event).take()?;
        let bytes = self.bytes.load(Ordering::Relaxed);
        event.result_bytes = Some(event.result_bytes.unwrap_or(0) + bytes);
        if incomplete {
            event.add_flag(Flag::ChunksUnseen);
        }
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
