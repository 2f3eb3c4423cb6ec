//! Who is behind a connection: the process (from `/proc`), the workload it belongs to (from the
//! enrollment and the cgroup path), and the run it is part of (its correlation id).
//!
//! - [`process`] reads one process: `stat` (parent, command name, start time), executable,
//!   command line with secrets hidden, user, cgroup.
//! - [`cgroup_path`] reads a cgroup path: systemd unit, container id and runtime, Kubernetes pod
//!   UID and QoS class. Pure.
//! - [`cache`] is the bounded LRU map behind the [`Resolver`]'s cache.
//!
//! The [`Resolver`] caches what only changes with `execve` (executable, command line, user) by
//! (pid, start time): a pid the kernel reuses has a later start time, so it is never mistaken for
//! the process that had it before. The command name (read fresh from `stat` every time) also
//! invalidates an entry, since `execve` changes it. The cgroup and the parent are read fresh, as
//! they change without an exec. [`oidc`] verifies the human identity a login token carries.

pub mod cache;
pub mod cgroup_path;
pub mod oidc;
pub mod process;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use self::cache::Lru;
use self::process::{Details, Stat};
use crate::audit::Event;
use crate::enroll::{Attribution, Registry};

/// Processes whose details are cached by default (`identity.process_cache_entries`).
pub const DEFAULT_CACHE_ENTRIES: usize = 4096;
/// Most ancestors listed in `parent_chain`.
pub const MAX_PARENT_CHAIN: usize = 16;
/// Clock ticks per second of `/proc/<pid>/stat` times: Linux reports them in `USER_HZ`, which is
/// 100 on every architecture it supports today (independent of the kernel's `HZ`).
pub const USER_HZ: u64 = 100;

/// One process as seen now: its `stat` fields, its cached details and its current cgroup.
#[derive(Debug, Clone)]
pub struct Process {
    /// Its process id.
    pub pid: u32,
    /// Parent, command name and start time, read now.
    pub stat: Stat,
    /// Executable, command line and user (cached by pid and start time).
    pub details: Arc<Details>,
    /// Its cgroup v2 path, read now.
    pub cgroup: Option<String>,
}

struct Cached {
    comm: String,
    details: Arc<Details>,
}

/// Reads processes from `/proc` with a bounded cache keyed by (pid, start time).
pub struct Resolver {
    proc_root: PathBuf,
    boot_time: Option<u64>,
    cache: Mutex<Lru<(u32, u64), Cached>>,
    reads: AtomicU64,
}

impl Resolver {
    /// A resolver over the host's `/proc`, caching at most `capacity` processes.
    pub fn new(capacity: usize) -> Resolver {
        Resolver::with_proc_root(Path::new("/proc"), capacity)
    }

    /// A resolver over another `/proc` (tests build fake ones).
    pub fn with_proc_root(proc_root: &Path, capacity: usize) -> Resolver {
        let boot_time = std::fs::read_to_string(proc_root.join("stat"))
            .ok()
            .and_then(|s| parse_boot_time(&s));
        Resolver {
            proc_root: proc_root.to_owned(),
            boot_time,
            cache: Mutex::new(Lru::new(capacity)),
            reads: AtomicU64::new(0),
        }
    }

    /// How many times details were read from `/proc` rather than the cache.
    pub fn detail_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Process `pid` as it is now; `None` when it is gone.
    pub fn process(&self, pid: u32) -> Option<Process> {
        let stat = process::read_stat(&self.proc_root, pid)?;
        let key = (pid, stat.start_ticks);
        let cached = crate::sync::lock(&self.cache)
            .get(&key)
            .filter(|e| e.comm == stat.comm)
            .map(|e| e.details.clone());
        let details = match cached {
            Some(d) => d,
            None => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                let d = Arc::new(process::read_details(&self.proc_root, pid));
                // A process that went away while being read is not cached (its fields may be
                // half empty, and its pid may come back as another process).
                if process::read_stat(&self.proc_root, pid)
                    .is_some_and(|again| again.start_ticks == stat.start_ticks)
                {
                    crate::sync::lock(&self.cache).insert(
                        key,
                        Cached {
                            comm: stat.comm.clone(),
                            details: d.clone(),
                        },
                    );
                }
                d
            }
        };
        Some(Process {
            pid,
            cgroup: process::read_cgroup(&self.proc_root, pid),
            stat,
            details,
        })
    }

    /// When the process started, from its start ticks and the host's boot time.
    pub fn start_time(&self, p: &Process) -> Option<SystemTime> {
        let boot = UNIX_EPOCH + Duration::from_secs(self.boot_time?);
        Some(boot + Duration::from_millis(p.stat.start_ticks.saturating_mul(1000) / USER_HZ))
    }

    /// The ancestors of `p` that are in the enrolled cgroup `enrolled` or below it, nearest first,
    /// as `pid:comm`: the chain ends at the first process of the workload (or after
    /// [`MAX_PARENT_CHAIN`] entries).
    pub fn parent_chain(&self, p: &Process, enrolled: &str) -> Vec<String> {
        let mut chain = Vec::new();
        let mut next = p.stat.ppid;
        while next > 0 && chain.len() < MAX_PARENT_CHAIN {
            let Some(stat) = process::read_stat(&self.proc_root, next) else {
                break;
            };
            let inside = process::read_cgroup(&self.proc_root, next)
                .is_some_and(|c| crate::enroll::is_same_or_below(&c, enrolled));
            if !inside {
                break;
            }
            chain.push(format!("{next}:{}", stat.comm));
            next = stat.ppid;
        }
        chain
    }

    /// Fills an event's "who" columns for process `tgid` (whose connection ran as `uid`): the
    /// process, the enrollment that covers it (found in `registry`, by path or else by
    /// `cgroup_id`), the cgroup path's workload fields, and the run's correlation id. Returns the
    /// enrollment, if any.
    pub fn fill_event(
        &self,
        e: &mut Event,
        tgid: u32,
        uid: u32,
        cgroup_id: u64,
        registry: &RwLock<Registry>,
    ) -> Option<Attribution> {
        let process = self.process(tgid);
        let process_cgroup = process.as_ref().and_then(|p| p.cgroup.clone());
        let attribution =
            crate::sync::read(registry).attribute(process_cgroup.as_deref(), cgroup_id);
        if let Some(p) = &process {
            e.ppid = Some(p.stat.ppid);
            e.exe.clone_from(&p.details.exe);
            e.cmdline.clone_from(&p.details.cmdline);
            e.user_name = if p.details.uid == Some(uid) {
                p.details.user_name.clone()
            } else {
                process::user_name(uid)
            };
            e.process_start_time = self.start_time(p);
            if let Some(a) = &attribution {
                e.parent_chain = self.parent_chain(p, &a.enrolled_cgroup);
            }
        } else {
            e.user_name = process::user_name(uid);
        }
        if let Some(a) = &attribution {
            e.workload_identity = Some(a.identity.clone());
            e.labels = a.labels.clone();
            e.cgroup_path = a.cgroup_path.clone().or(Some(a.enrolled_cgroup.clone()));
            e.correlation_id.clone_from(&a.run_id);
            e.started_by.clone_from(&a.started_by);
            e.started_by_login.clone_from(&a.started_by_login);
        }
        if e.cgroup_path.is_none() {
            e.cgroup_path = process_cgroup;
        }
        if let Some(path) = &e.cgroup_path {
            let c = cgroup_path::parse(path);
            e.systemd_unit = c.systemd_unit;
            e.container_id = c.container_id;
            e.container_runtime = c
                .container_runtime
                .and_then(cgroup_path::Runtime::as_str)
                .map(str::to_owned);
            e.pod_uid = c.pod_uid;
            e.pod_qos = c.pod_qos.map(|q| q.as_str().to_owned());
        }
        attribution
    }
}

/// `btime` of `/proc/stat`: the boot time in seconds since the epoch.
fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;

    /// Writes a fake `/proc/<pid>` with the given comm, parent, start ticks, command line, cgroup.
    fn fake(root: &Path, pid: u32, comm: &str, ppid: u32, start: u64, cmd: &str, cgroup: &str) {
        let dir = root.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        let fields: Vec<String> = (3..=25)
            .map(|i| match i {
                4 => ppid.to_string(),
                22 => start.to_string(),
                _ => "0".into(),
            })
            .collect();
        fs::write(
            dir.join("stat"),
            format!("{pid} ({comm}) {}\n", fields.join(" ")),
        )
        .unwrap();
        fs::write(dir.join("cmdline"), cmd.replace(' ', "\0")).unwrap();
        fs::write(dir.join("status"), "Name:\tx\nUid:\t0\t0\t0\t0\n").unwrap();
        fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
    }

    #[test]
    fn a_reused_pid_is_never_mislabelled() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("stat"), "cpu 1 2 3\nbtime 1700000000\n").unwrap();
        let r = Resolver::with_proc_root(root.path(), 8);
        fake(
            root.path(),
            500,
            "python3",
            1,
            1000,
            "python3 load.py",
            "/a",
        );
        let first = r.process(500).unwrap();
        assert_eq!(first.details.cmdline.as_deref(), Some("python3 load.py"));
        assert_eq!(first.details.user_name.as_deref(), Some("root"));
        assert_eq!(
            r.start_time(&first),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_010))
        );
        assert_eq!(r.detail_reads(), 1);

        // Same pid, same start time: served from the cache (the changed file is not read).
        fs::write(root.path().join("500/cmdline"), "changed").unwrap();
        let again = r.process(500).unwrap();
        assert_eq!(again.details.cmdline.as_deref(), Some("python3 load.py"));
        assert_eq!(r.detail_reads(), 1);

        // The process exits and the pid is reused by another program: a later start time.
        fake(root.path(), 500, "curl", 1, 9000, "curl https://x", "/b");
        let reused = r.process(500).unwrap();
        assert_eq!(reused.details.cmdline.as_deref(), Some("curl https://x"));
        assert_eq!(reused.stat.start_ticks, 9000);
        assert_eq!(reused.cgroup.as_deref(), Some("/b"));
        assert_eq!(r.detail_reads(), 2);

        // An exec (same pid and start time, new comm) is read again too.
        fake(root.path(), 500, "bash", 1, 9000, "bash -c x", "/b");
        assert_eq!(
            r.process(500).unwrap().details.cmdline.as_deref(),
            Some("bash -c x")
        );

        // Gone: nothing.
        fs::remove_dir_all(root.path().join("500")).unwrap();
        assert!(r.process(500).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let root = tempfile::tempdir().unwrap();
        let r = Resolver::with_proc_root(root.path(), 4);
        for pid in 1..=20 {
            fake(root.path(), pid, "w", 0, 100, "w", "/a");
            r.process(pid).unwrap();
        }
        assert_eq!(r.cache.lock().unwrap().len(), 4);
        assert!(r.start_time(&r.process(1).unwrap()).is_none(), "no btime");
    }

    #[test]
    fn the_parent_chain_stops_at_the_workload_boundary() {
        let root = tempfile::tempdir().unwrap();
        let r = Resolver::with_proc_root(root.path(), 16);
        fake(root.path(), 1, "systemd", 0, 1, "init", "/init.scope");
        fake(
            root.path(),
            10,
            "snowtrail",
            1,
            5,
            "snowtrail exec",
            "/user.slice",
        );
        fake(
            root.path(),
            20,
            "sh",
            10,
            6,
            "sh -c x",
            "/snowtrail/exec/r1",
        );
        fake(
            root.path(),
            30,
            "make",
            20,
            7,
            "make",
            "/snowtrail/exec/r1/sub",
        );
        fake(
            root.path(),
            40,
            "python3",
            30,
            8,
            "python3 x",
            "/snowtrail/exec/r1/sub",
        );
        let p = r.process(40).unwrap();
        assert_eq!(
            r.parent_chain(&p, "/snowtrail/exec/r1"),
            vec!["30:make".to_string(), "20:sh".to_string()]
        );
        assert!(r.parent_chain(&p, "/snowtrail/exec/r1/sub/x").is_empty());

        // A loop in fake data stops at the bound.
        fake(root.path(), 50, "a", 51, 1, "a", "/w");
        fake(root.path(), 51, "b", 50, 1, "b", "/w");
        let p = r.process(50).unwrap();
        assert_eq!(r.parent_chain(&p, "/w").len(), MAX_PARENT_CHAIN);
    }

    #[test]
    fn an_event_gets_process_enrollment_and_cgroup_path_fields() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("stat"), "btime 1700000000\n").unwrap();
        let r = Resolver::with_proc_root(root.path(), 8);
        let id = "ab".repeat(32);
        let scope = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0c1d2e3f_4a5b_6c7d_8e9f_a0b1c2d3e4f5.slice/cri-containerd-{id}.scope"
        );
        fake(root.path(), 1, "systemd", 0, 1, "init", "/init.scope");
        fake(root.path(), 20, "sh", 1, 50, "sh -c run", &scope);
        fake(
            root.path(),
            30,
            "python3",
            20,
            60,
            "python3 load.py --password pw",
            &scope,
        );
        let state = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(Path::new("/cg"), state.path()).unwrap();
        reg.add(crate::enroll::Enrollment {
            identity: "loader".into(),
            labels: [("team".to_string(), "data".to_string())].into(),
            cgroup: scope.clone(),
            cgroup_id: 77,
            since: 0,
            kind: crate::enroll::Kind::Exec,
            ended: false,
            run_id: Some("run-9".into()),
            started_by: Some("root".into()),
            started_by_login: Some("alice".into()),
            lockdown: false,
        })
        .unwrap();
        let reg = RwLock::new(reg);

        let mut e = Event::new(crate::audit::EventKind::Connection, SystemTime::now(), "h");
        let a = r.fill_event(&mut e, 30, 0, 77, &reg).unwrap();
        assert_eq!(a.identity, "loader");
        assert_eq!(e.workload_identity.as_deref(), Some("loader"));
        assert_eq!(e.labels["team"], "data");
        assert_eq!(e.correlation_id.as_deref(), Some("run-9"));
        assert_eq!(e.started_by.as_deref(), Some("root"));
        assert_eq!(e.started_by_login.as_deref(), Some("alice"));
        assert_eq!(e.cgroup_path.as_deref(), Some(scope.as_str()));
        assert_eq!(e.container_id.as_deref(), Some(id.as_str()));
        assert_eq!(e.container_runtime.as_deref(), Some("containerd"));
        assert_eq!(
            e.pod_uid.as_deref(),
            Some("0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5")
        );
        assert_eq!(e.pod_qos.as_deref(), Some("besteffort"));
        assert_eq!(e.systemd_unit, Some(format!("cri-containerd-{id}.scope")));
        assert_eq!(e.ppid, Some(20));
        assert_eq!(e.parent_chain, vec!["20:sh".to_string()]);
        assert_eq!(e.cmdline.as_deref(), Some("python3 load.py --password ***"));
        assert_eq!(e.user_name.as_deref(), Some("root"));
        assert_eq!(
            e.process_start_time,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_600))
        );

        // A process outside every enrollment: its own fields, no workload.
        fake(
            root.path(),
            40,
            "curl",
            1,
            70,
            "curl x",
            "/system.slice/cron.service",
        );
        let mut e = Event::new(crate::audit::EventKind::Connection, SystemTime::now(), "h");
        assert!(r.fill_event(&mut e, 40, 0, 5, &reg).is_none());
        assert_eq!(e.workload_identity, None);
        assert_eq!(e.correlation_id, None);
        assert_eq!(e.systemd_unit.as_deref(), Some("cron.service"));
        assert!(e.parent_chain.is_empty());
    }

    #[test]
    fn boot_time() {
        assert_eq!(
            parse_boot_time("cpu 1\nbtime 12345\nprocesses 9\n"),
            Some(12345)
        );
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }
}
