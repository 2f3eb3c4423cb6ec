//! A statement's recording while it is being captured, and the recordings writer with the
//! settings that decide which statements it records. The capturing itself is
//! [`crate::recording`]; the tee that fills a recording is a handler's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use crate::recording::payload::{ErrorEnvelope, TransferPart};
use crate::recording::{Capture, RecordingConfig, RecordingWriter};

/// The recordings writer and what decides which statements it records.
pub struct Recorder {
    /// Where recordings go.
    pub writer: RecordingWriter,
    /// The `[recording]` section.
    pub config: RecordingConfig,
    /// Statements whose audit row waits for their recording to be durable; the daemon's stop
    /// waits for them before it closes the audit.
    pub in_flight: Arc<AtomicUsize>,
}

/// A statement's recording in progress.
#[derive(Debug)]
pub struct Recording {
    /// What is captured of the result.
    pub(in crate::proxy::exchange) capture: Capture,
    /// The session's count of recorded bytes, added to when the recording is submitted.
    pub(in crate::proxy::exchange) session: Option<Arc<AtomicU64>>,
}

impl Recording {
    /// Captures the statement response the workload receives (decoded).
    pub(in crate::proxy::exchange) fn response(&mut self, body: &[u8]) {
        self.capture.response(body);
    }

    /// Marks the recording as missing part of the result (not inspected, or chunks not seen).
    pub(in crate::proxy::exchange) fn incomplete(&mut self) {
        self.capture.passed(0);
    }

    /// Captures the error the workload learnt from a status request (an asynchronous
    /// statement's monitoring answer).
    pub(in crate::proxy::exchange) fn error(&mut self, e: ErrorEnvelope) {
        self.capture.error(e);
    }

    /// Captures a PUT/GET statement's file command and its transfers.
    pub(in crate::proxy::exchange) fn transfer(&mut self, t: TransferPart) {
        self.capture.transfer(t);
    }

    /// Captures a chunk the workload receives, already decoded (a rewritten chunk).
    pub(in crate::proxy::exchange) fn chunk(&mut self, index: usize, body: &[u8]) {
        self.capture.chunk(index, body, false);
    }
}

#[cfg(test)]
impl Recording {
    /// A recording within `limit` bytes, of no session.
    pub(in crate::proxy::exchange) fn for_test(limit: u64) -> Recording {
        Recording {
            capture: Capture::new(limit),
            session: None,
        }
    }

    /// What the recording captured.
    pub(in crate::proxy::exchange) fn captured(self) -> crate::recording::Captured {
        self.capture.finish()
    }
}
