//! The policy in force: the rule file read from disk, swapped for a new version when the file
//! changes (polled) or on SIGHUP, and kept when a new version is invalid.
//!
//! [`crate::policy`] is pure; this module is its I/O. A bad file at start is an error that stops
//! the daemon; a bad file later is logged, recorded as a `lifecycle` event (`policy_rejected`),
//! and the rules already in force stay; a good one is recorded as `policy_reload`.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::audit::{Event, EventKind, EventSink, LifecycleAction};
use crate::policy::{Policy, PolicyError};

/// Largest rule file read (a policy is a few kilobytes; this bounds a mistaken path).
pub const MAX_POLICY_BYTES: u64 = 4 * 1024 * 1024;

/// Why a rule file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_POLICY_BYTES`].
    #[error("policy file {path} is larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file has a mistake.
    #[error("invalid policy file {path}: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The mistake and its line.
        error: PolicyError,
    },
}

/// What a reload attempt did.
#[derive(Debug)]
pub enum Reload {
    /// The file did not change since it was last read.
    Unchanged,
    /// A new version is in force.
    Loaded {
        /// How many rules it has.
        rules: usize,
    },
    /// The new version was refused; the previous rules stay.
    Rejected(LoadError),
}

/// The rules in force, shared by every exchange.
pub struct LivePolicy {
    path: Option<PathBuf>,
    current: RwLock<Option<Arc<Policy>>>,
    fingerprint: Mutex<Option<u64>>,
}

fn read(path: &Path) -> Result<(String, u64), LoadError> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut text = String::new();
    f.take(MAX_POLICY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
    if text.len() as u64 > MAX_POLICY_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
        });
    }
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    Ok((text, h.finish()))
}

impl LivePolicy {
    /// No rule file: every statement is allowed, and decisions are not recorded.
    pub fn none() -> LivePolicy {
        LivePolicy {
            path: None,
            current: RwLock::new(None),
            fingerprint: Mutex::new(None),
        }
    }

    /// A fixed policy (tests and benchmarks).
    pub fn fixed(policy: Policy) -> LivePolicy {
        LivePolicy {
            path: None,
            current: RwLock::new(Some(Arc::new(policy))),
            fingerprint: Mutex::new(None),
        }
    }

    /// Reads `path`; an invalid file is an error (the daemon does not start on one).
    pub fn load(path: &Path) -> Result<LivePolicy, LoadError> {
        let (text, fp) = read(path)?;
        let policy = Policy::parse(&text).map_err(|error| LoadError::Invalid {
            path: path.to_owned(),
            error,
        })?;
        Ok(LivePolicy {
            path: Some(path.to_owned()),
            current: RwLock::new(Some(Arc::new(policy))),
            fingerprint: Mutex::new(Some(fp)),
        })
    }

    /// The rules in force, if a file is configured.
    pub fn current(&self) -> Option<Arc<Policy>> {
        crate::sync::read(&self.current).clone()
    }

    /// The configured file.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reads the file again; a changed valid file replaces the rules in force. `force` reloads
    /// even an unchanged file (SIGHUP).
    pub fn reload(&self, force: bool) -> Reload {
        let Some(path) = &self.path else {
            return Reload::Unchanged;
        };
        let (text, fp) = match read(path) {
            Ok(r) => r,
            Err(e) => {
                // Report an unreadable file once, not every poll.
                let mut last = crate::sync::lock(&self.fingerprint);
                if *last == Some(0) && !force {
                    return Reload::Unchanged;
                }
                *last = Some(0);
                return Reload::Rejected(e);
            }
        };
        let mut last = crate::sync::lock(&self.fingerprint);
        if *last == Some(fp) && !force {
            return Reload::Unchanged;
        }
        *last = Some(fp);
        match Policy::parse(&text) {
            Ok(p) => {
                let rules = p.rules().len();
                *crate::sync::write(&self.current) = Some(Arc::new(p));
                Reload::Loaded { rules }
            }
            Err(error) => Reload::Rejected(LoadError::Invalid {
                path: path.clone(),
                error,
            }),
        }
    }
}

/// Records a reload's outcome as a `lifecycle` event and in the log.
async fn record(sink: &Arc<dyn EventSink>, host: &str, outcome: Reload, why: &str) {
    let (action, detail) = match outcome {
        Reload::Unchanged => return,
        Reload::Loaded { rules } => {
            info!(rules, trigger = why, "policy reloaded");
            (
                LifecycleAction::PolicyReload,
                format!("{rules} rule(s) in force ({why})"),
            )
        }
        Reload::Rejected(e) => {
            warn!(error = %e, trigger = why, "policy change rejected; the previous rules stay in force");
            (LifecycleAction::PolicyRejected, e.to_string())
        }
    };
    let mut e = Event::new(EventKind::Lifecycle, SystemTime::now(), host);
    e.lifecycle_action = Some(action);
    e.pid = Some(std::process::id());
    e.detail = Some(detail);
    if let Err(err) = sink.submit(e).await {
        warn!(error = %err, action = action.as_str(), "lifecycle event not recorded");
    }
}

/// Watches the rule file until `stop`: polls it every `poll`, and reloads on SIGHUP.
pub async fn watch(
    live: Arc<LivePolicy>,
    sink: Arc<dyn EventSink>,
    host: String,
    poll: Duration,
    mut hangup: tokio::signal::unix::Signal,
    mut stop: watch::Receiver<bool>,
) {
    if live.path().is_none() {
        // Still take SIGHUP, so that it never kills a daemon without a policy.
        loop {
            tokio::select! {
                _ = hangup.recv() => info!("SIGHUP: no policy file configured"),
                _ = crate::drain::signalled(&mut stop) => return,
            }
        }
    }
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (force, why) = tokio::select! {
            _ = tick.tick() => (false, "file changed"),
            _ = hangup.recv() => (true, "SIGHUP"),
            _ = crate::drain::signalled(&mut stop) => return,
        };
        let l = live.clone();
        let outcome = match tokio::task::spawn_blocking(move || l.reload(force)).await {
            Ok(o) => o,
            Err(_) => continue,
        };
        record(&sink, &host, outcome, why).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = "[default]\naction = \"allow\"\n";
    const DENY: &str =
        "[default]\naction = \"allow\"\n[[rule]]\nname = \"no-drop\"\naction = \"deny\"\n";

    #[test]
    fn a_bad_change_keeps_the_rules_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, DENY).unwrap();
        let live = LivePolicy::load(&path).unwrap();
        assert_eq!(live.current().unwrap().rules().len(), 1);
        assert!(matches!(live.reload(false), Reload::Unchanged));

        std::fs::write(&path, "[default]\naction = \"allow\"\n[[rule]]\nname = 3\n").unwrap();
        match live.reload(false) {
            Reload::Rejected(LoadError::Invalid { error, .. }) => assert_eq!(error.line, 4),
            other => panic!("{other:?}"),
        }
        assert_eq!(live.current().unwrap().rules().len(), 1);
        assert!(
            matches!(live.reload(false), Reload::Unchanged),
            "reported once"
        );

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            live.reload(false),
            Reload::Rejected(LoadError::Read { .. })
        ));
        assert!(matches!(live.reload(false), Reload::Unchanged));
        assert_eq!(live.current().unwrap().rules().len(), 1);

        std::fs::write(&path, GOOD).unwrap();
        assert!(matches!(live.reload(false), Reload::Loaded { rules: 0 }));
        assert_eq!(live.current().unwrap().rules().len(), 0);
        assert!(matches!(live.reload(true), Reload::Loaded { rules: 0 }));
    }

    #[test]
    fn a_bad_file_at_start_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "[default]\naction = \"nope\"\n").unwrap();
        let e = LivePolicy::load(&path).err().unwrap();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(LivePolicy::load(&dir.path().join("missing")).is_err());
    }
}
