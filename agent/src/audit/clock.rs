//! The writer's source of "now": real time in the daemon, a hand-driven clock in tests.
//!
//! The clock decides when files close (hour boundaries, `max_file_age_s`) and stamps the writer's
//! own lifecycle events. It does not stamp submitted events: their `event_time` is the submitter's.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::sync::lock;

/// Tells the writer what time it is, so tests can move time across an hour boundary.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's real-time clock; what the daemon uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to, for tests of rotation and recovery.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    /// Starts the clock at `start`.
    pub fn new(start: SystemTime) -> Self {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    /// Sets the clock to `t` (it may go backwards; the writer copes).
    pub fn set(&self, t: SystemTime) {
        *lock(&self.now) = t;
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut now = lock(&self.now);
        *now += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *lock(&self.now)
    }
}
