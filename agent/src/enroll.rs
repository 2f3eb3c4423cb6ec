//! Enrollments: which cgroups are watched, under which workload identity and labels.
//!
//! The [`Registry`] is the daemon's record of them. It persists to `<state_dir>/enrollments.json`
//! (written atomically), so enrollments come back when the daemon starts, and it answers the
//! proxy's question "which enrollment does a connection from this cgroup belong to?". Attaching the
//! kernel programs is the caller's job (`app` wires the registry to `redirect`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Longest identity name accepted.
pub const MAX_IDENTITY_LEN: usize = 128;
/// Most labels one enrollment may carry.
pub const MAX_LABELS: usize = 64;

/// Why an enrollment request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cgroup already has an enrollment.
    #[error("cgroup {cgroup} is already enrolled as {identity}")]
    AlreadyEnrolled {
        /// The cgroup, relative to the cgroup2 mount.
        cgroup: String,
        /// Its current identity.
        identity: String,
    },
    /// Nothing matched an unenroll request.
    #[error("no enrollment matches {0}")]
    NotEnrolled(String),
    /// The identity name is empty, too long or has characters outside `[A-Za-z0-9._:@/-]`.
    #[error("invalid identity {0:?}: use 1-128 characters from A-Z a-z 0-9 . _ : @ / -")]
    BadIdentity(String),
    /// A label is not `key=value` with a valid key.
    #[error("invalid label {0:?}: expected key=value, key from A-Z a-z 0-9 . _ / -")]
    BadLabel(String),
    /// Too many labels.
    #[error("too many labels (at most {MAX_LABELS})")]
    TooManyLabels,
    /// The state file could not be read or written.
    #[error("enrollment state {0}: {1}")]
    State(PathBuf, String),
}

/// How an enrollment came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An existing cgroup named by the operator (`enroll --cgroup` or `--pid`).
    Cgroup,
    /// A transient cgroup made for `snowtrail exec`; removed once its processes are gone.
    Exec,
}

/// One enrolled cgroup, as persisted and as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// The workload identity its connections are attributed to.
    pub identity: String,
    /// Free-form labels copied into each audit event.
    pub labels: BTreeMap<String, String>,
    /// The cgroup's path relative to the cgroup2 mount, starting with `/`.
    pub cgroup: String,
    /// The cgroup's id (inode) when it was enrolled.
    pub cgroup_id: u64,
    /// Seconds since the epoch when it was enrolled.
    pub since: u64,
    /// Operator enrollment or exec.
    pub kind: Kind,
    /// For exec cgroups: the command has ended; the cgroup goes once empty.
    #[serde(default)]
    pub ended: bool,
    /// For exec cgroups: the run id, which every event of the run carries as its correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The user of the control client that made the enrollment or started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// That client's login user (`loginuid`), when set: the human behind `sudo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by_login: Option<String>,
    /// Egress lockdown (`enroll --lockdown`): the cgroup's connects and UDP sends go only to
    /// intercepted ports and `redirect.lockdown_allow`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lockdown: bool,
}

/// What the proxy attaches to a connection: the enrollment that covers its process.
#[derive(Debug, Clone)]
pub struct Attribution {
    /// The enrollment's identity.
    pub identity: String,
    /// The enrollment's labels.
    pub labels: BTreeMap<String, String>,
    /// The enrolled cgroup (the deepest enrolled ancestor of the process's cgroup).
    pub enrolled_cgroup: String,
    /// The process's own cgroup path, when it could be read.
    pub cgroup_path: Option<String>,
    /// The enrollment's connection counter.
    pub connections: Arc<AtomicU64>,
    /// The enrollment's connections being served now, for its cap
    /// (`proxy.max_connections_per_enrollment`).
    pub open: Arc<AtomicU64>,
    /// The enrollment's lockdown refusals, as the kernel reported them.
    pub denials: Arc<AtomicU64>,
    /// The exec run's id (the correlation id of its events); `None` for operator enrollments.
    pub run_id: Option<String>,
    /// Who made the enrollment or started the run.
    pub started_by: Option<String>,
    /// Their login user.
    pub started_by_login: Option<String>,
}

/// A row of `snowtrail list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// The enrollment.
    #[serde(flatten)]
    pub enrollment: Enrollment,
    /// Processes in the cgroup and below it now.
    pub live_processes: usize,
    /// Connections the proxy attributed to it since the daemon started.
    pub connections: u64,
    /// Connects and sends its lockdown refused since the daemon started.
    #[serde(default)]
    pub denials: u64,
}

struct Entry {
    enrollment: Enrollment,
    connections: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
    denials: Arc<AtomicU64>,
}

/// The daemon's enrollments, keyed by cgroup path.
pub struct Registry {
    mount: PathBuf,
    state_file: PathBuf,
    entries: BTreeMap<String, Entry>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    enrollments: Vec<Enrollment>,
}

impl Registry {
    /// Opens the registry kept in `state_dir`, loading what a previous run saved.
    pub fn open(mount: &Path, state_dir: &Path) -> Result<Registry, Error> {
        let state_file = state_dir.join("enrollments.json");
        let mut reg = Registry {
            mount: mount.to_owned(),
            state_file: state_file.clone(),
            entries: BTreeMap::new(),
        };
        match fs::read(&state_file) {
            Ok(bytes) => {
                let state: StateFile = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::State(state_file.clone(), e.to_string()))?;
                for e in state.enrollments {
                    reg.entries.insert(
                        e.cgroup.clone(),
                        Entry {
                            enrollment: e,
                            connections: Arc::default(),
                            open: Arc::default(),
                            denials: Arc::default(),
                        },
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::State(state_file, e.to_string())),
        }
        Ok(reg)
    }

    /// The cgroup2 mount the paths are relative to.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The directory of an enrolled cgroup path.
    pub fn dir_of(&self, cgroup: &str) -> PathBuf {
        self.mount.join(cgroup.trim_start_matches('/'))
    }

    /// Records a new enrollment and saves the state.
    pub fn add(&mut self, enrollment: Enrollment) -> Result<(), Error> {
        if let Some(old) = self.entries.get(&enrollment.cgroup) {
            return Err(Error::AlreadyEnrolled {
                cgroup: enrollment.cgroup.clone(),
                identity: old.enrollment.identity.clone(),
            });
        }
        self.entries.insert(
            enrollment.cgroup.clone(),
            Entry {
                enrollment,
                connections: Arc::default(),
                open: Arc::default(),
                denials: Arc::default(),
            },
        );
        self.save()
    }

    /// Removes the enrollments a selector names (a cgroup path or an identity) and saves the state.
    pub fn remove(&mut self, selector: &Selector) -> Result<Vec<Enrollment>, Error> {
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(k, e)| match selector {
                Selector::Cgroup(c) => *k == c,
                Selector::Identity(i) => &e.enrollment.identity == i,
            })
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return Err(Error::NotEnrolled(selector.to_string()));
        }
        let removed = keys
            .iter()
            .filter_map(|k| self.entries.remove(k))
            .map(|e| e.enrollment)
            .collect();
        self.save()?;
        Ok(removed)
    }

    /// Marks an exec enrollment as ended (its command returned); saves the state.
    pub fn mark_ended(&mut self, cgroup: &str) -> Result<bool, Error> {
        match self.entries.get_mut(cgroup) {
            Some(e) if e.enrollment.kind == Kind::Exec && !e.enrollment.ended => {
                e.enrollment.ended = true;
                self.save()?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Records the new id of a cgroup that was deleted and made again at the same path.
    pub fn set_cgroup_id(&mut self, cgroup: &str, id: u64) {
        if let Some(e) = self.entries.get_mut(cgroup) {
            e.enrollment.cgroup_id = id;
            if let Err(err) = self.save() {
                tracing::warn!(error = %err, "could not save enrollments");
            }
        }
    }

    /// All enrollments.
    pub fn enrollments(&self) -> Vec<Enrollment> {
        self.entries
            .values()
            .map(|e| e.enrollment.clone())
            .collect()
    }

    /// Whether a cgroup path is enrolled.
    pub fn contains(&self, cgroup: &str) -> bool {
        self.entries.contains_key(cgroup)
    }

    /// The rows of `snowtrail list`.
    pub fn list(&self) -> Vec<Listed> {
        self.entries
            .values()
            .map(|e| Listed {
                enrollment: e.enrollment.clone(),
                live_processes: crate::cgroup::count_procs_recursive(
                    &self.dir_of(&e.enrollment.cgroup),
                ),
                connections: e.connections.load(Ordering::Relaxed),
                denials: e.denials.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Finds the enrollment covering a process in cgroup `process_cgroup` (relative path): the deepest
    /// enrolled ancestor-or-self. `cgroup_id` is the fallback when the path is unknown.
    pub fn attribute(&self, process_cgroup: Option<&str>, cgroup_id: u64) -> Option<Attribution> {
        let entry = match process_cgroup {
            Some(path) => {
                let mut best: Option<&Entry> = None;
                for (k, e) in &self.entries {
                    if is_same_or_below(path, k)
                        && best.is_none_or(|b| b.enrollment.cgroup.len() < k.len())
                    {
                        best = Some(e);
                    }
                }
                best
            }
            None => None,
        }
        .or_else(|| {
            self.entries
                .values()
                .find(|e| e.enrollment.cgroup_id == cgroup_id)
        })?;
        Some(Attribution {
            identity: entry.enrollment.identity.clone(),
            labels: entry.enrollment.labels.clone(),
            enrolled_cgroup: entry.enrollment.cgroup.clone(),
            cgroup_path: process_cgroup.map(str::to_owned),
            connections: entry.connections.clone(),
            denials: entry.denials.clone(),
            open: entry.open.clone(),
            run_id: entry.enrollment.run_id.clone(),
            started_by: entry.enrollment.started_by.clone(),
            started_by_login: entry.enrollment.started_by_login.clone(),
        })
    }

    /// Writes the state file atomically (temporary file, fsync, rename, directory fsync).
    fn save(&self) -> Result<(), Error> {
        let state = StateFile {
            version: 1,
            enrollments: self.enrollments(),
        };
        let err = |e: std::io::Error| Error::State(self.state_file.clone(), e.to_string());
        let bytes = serde_json::to_vec_pretty(&state)
            .map_err(|e| Error::State(self.state_file.clone(), e.to_string()))?;
        let dir = self.state_file.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(".enrollments.json.tmp");
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, &self.state_file).map_err(err)?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

/// What an unenroll request names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// One cgroup, by path relative to the mount.
    Cgroup(String),
    /// Every cgroup enrolled under an identity.
    Identity(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Cgroup(c) => write!(f, "cgroup {c}"),
            Selector::Identity(i) => write!(f, "identity {i}"),
        }
    }
}

/// Whether cgroup path `path` is `ancestor` or lies below it.
pub fn is_same_or_below(path: &str, ancestor: &str) -> bool {
    let ancestor = ancestor.trim_end_matches('/');
    if ancestor.is_empty() {
        return true;
    }
    path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Checks an identity name.
pub fn check_identity(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IDENTITY_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:@/-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::BadIdentity(name.to_owned()))
    }
}

/// Parses one `key=value` label.
pub fn parse_label(text: &str) -> Result<(String, String), Error> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| Error::BadLabel(text.to_owned()))?;
    let key_ok = !k.is_empty()
        && k.len() <= 128
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
    if !key_ok || v.len() > 1024 || v.chars().any(char::is_control) {
        return Err(Error::BadLabel(text.to_owned()));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Builds a label map, refusing duplicates' overflow.
pub fn labels_from(pairs: Vec<(String, String)>) -> Result<BTreeMap<String, String>, Error> {
    if pairs.len() > MAX_LABELS {
        return Err(Error::TooManyLabels);
    }
    Ok(pairs.into_iter().collect())
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrollment(cgroup: &str, identity: &str) -> Enrollment {
        Enrollment {
            identity: identity.into(),
            labels: BTreeMap::from([("team".to_string(), "data".to_string())]),
            cgroup: cgroup.into(),
            cgroup_id: 7,
            since: 1,
            kind: Kind::Cgroup,
            ended: false,
            run_id: None,
            started_by: None,
            started_by_login: None,
            lockdown: false,
        }
    }

    #[test]
    fn labels_and_identities() {
        assert_eq!(
            parse_label("team=data").unwrap(),
            ("team".into(), "data".into())
        );
        assert_eq!(parse_label("k=").unwrap(), ("k".into(), String::new()));
        assert!(parse_label("noequals").is_err());
        assert!(parse_label("=v").is_err());
        assert!(parse_label("bad key=v").is_err());
        assert!(check_identity("etl-nightly").is_ok());
        assert!(check_identity("").is_err());
        assert!(check_identity("has space").is_err());
    }

    #[test]
    fn deepest_enrollment_wins_and_state_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(Path::new("/cg"), dir.path()).unwrap();
        reg.add(enrollment("/a", "outer")).unwrap();
        reg.add(enrollment("/a/b", "inner")).unwrap();
        assert!(matches!(
            reg.add(enrollment("/a", "again")),
            Err(Error::AlreadyEnrolled { .. })
        ));
        assert_eq!(reg.attribute(Some("/a/b/c"), 0).unwrap().identity, "inner");
        assert_eq!(reg.attribute(Some("/a/bc"), 0).unwrap().identity, "outer");
        assert!(reg.attribute(Some("/z"), 0).is_none());

        let reg2 = Registry::open(Path::new("/cg"), dir.path()).unwrap();
        assert_eq!(reg2.enrollments().len(), 2);
        let mut reg2 = reg2;
        let removed = reg2.remove(&Selector::Identity("outer".into())).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(reg2.remove(&Selector::Cgroup("/nope".into())).is_err());
        assert_eq!(
            Registry::open(Path::new("/cg"), dir.path())
                .unwrap()
                .enrollments()
                .len(),
            1
        );
    }

    #[test]
    fn path_prefixes() {
        assert!(is_same_or_below("/a/b", "/a"));
        assert!(is_same_or_below("/a", "/a"));
        assert!(!is_same_or_below("/ab", "/a"));
        assert!(is_same_or_below("/anything", "/"));
    }
}
