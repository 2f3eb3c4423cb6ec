//! What the daemon does for each control request: enroll and unenroll cgroups (attaching and
//! detaching the kernel programs), make and reap `exec` cgroups, list, report status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tracing::{info, warn};

use super::server::{Handler, Session};
use super::{AuditStatus, Reply, Request, Response, Status};
use crate::enroll::{self, Enrollment, Kind, Registry, Selector};
use crate::proxy::ProxyStats;
use crate::redirect::Redirect;
use crate::sync::{read, write};

/// Where `snowtrail exec` cgroups live, relative to the cgroup2 mount: a subtree that belongs to no
/// service, so stopping the daemon never kills a workload.
pub const EXEC_CGROUP_ROOT: &str = "snowtrail/exec";

/// The daemon's request handler and the state it acts on.
pub struct DaemonHandler {
    /// Enrollments.
    pub registry: Arc<RwLock<Registry>>,
    /// The kernel programs.
    pub redirect: Arc<RwLock<Redirect>>,
    /// The daemon's own cgroup (relative path); it and its ancestors may not be enrolled.
    pub agent_cgroup: String,
    /// The proxy's counters, for status.
    pub stats: Arc<ProxyStats>,
    /// The proxy's listening addresses, for status.
    pub listen: Vec<String>,
    /// When the daemon started.
    pub started: Instant,
    /// The CA bundle `exec` hands to workloads.
    pub ca_bundle: PathBuf,
    /// Statements held for approval.
    pub holds: Arc<crate::proxy::exchange::holds::Holds>,
    /// The audit writer, for status (`None` where no writer runs).
    pub audit: Option<crate::audit::AuditWriter>,
    /// Where the digest chain's state lives and how often a digest is due, for status.
    pub digests: Option<DigestWatch>,
    /// `redirect.lockdown`: every enrollment is locked down, whatever it asked.
    pub lockdown_all: bool,
}

/// What status needs to report the digest chain: the state directory holding its head and the
/// interval the writer keeps.
pub struct DigestWatch {
    /// The daemon's state directory.
    pub state_dir: std::path::PathBuf,
    /// `audit.digest_interval_s`.
    pub interval: std::time::Duration,
    /// When the daemon started (a start writes the digest a crash interrupted).
    pub started: std::time::SystemTime,
}

impl DigestWatch {
    fn status(&self) -> super::DigestStatus {
        let now = std::time::SystemTime::now();
        match crate::audit::digest_log::chain_status(
            &self.state_dir,
            self.interval,
            self.started,
            now,
        ) {
            Ok(c) => super::DigestStatus {
                sequence: c.head.as_ref().map_or(0, |h| h.sequence),
                path: c.head.as_ref().map(|h| h.path.clone()),
                sha256: c.head.as_ref().map(|h| h.sha256.clone()),
                written: c.head.map(|h| h.digest_end),
                files_pending: c.files_pending,
                overdue_s: c.overdue.as_secs(),
                error: None,
            },
            Err(e) => super::DigestStatus {
                error: Some(e.to_string()),
                ..Default::default()
            },
        }
    }
}

/// Who made an enrollment (docs/decisions.md §17) and, for an exec, the run's id.
struct Started {
    run_id: Option<String>,
    by: Option<String>,
    by_login: Option<String>,
    lockdown: bool,
}

impl Started {
    /// The control client's user (`SO_PEERCRED`) and its login user (`loginuid`), as names.
    fn by(session: &Session, run_id: Option<String>) -> Started {
        let name = |uid: u32| crate::identity::process::user_name(uid).unwrap_or(uid.to_string());
        Started {
            run_id,
            by: Some(name(session.peer_uid)),
            by_login: session
                .peer_pid
                .and_then(|p| crate::identity::process::login_uid(Path::new("/proc"), p))
                .map(name),
            lockdown: false,
        }
    }

    /// With egress lockdown asked for.
    fn locked(self, lockdown: bool) -> Started {
        Started { lockdown, ..self }
    }
}

fn refused(message: impl ToString) -> Response {
    Response::Error {
        message: message.to_string(),
    }
}

impl Handler for DaemonHandler {
    fn handle(&self, request: Request, session: &mut Session) -> Response {
        let result = match request {
            Request::Pending => return super::approvals::pending(&self.holds),
            Request::Approve { id } => {
                return super::approvals::decide(&self.holds, &id, true, session);
            }
            Request::Reject { id } => {
                return super::approvals::decide(&self.holds, &id, false, session);
            }
            Request::Enroll {
                cgroup,
                pid,
                identity,
                labels,
                lockdown,
            } => self.enroll(cgroup, pid, identity, labels, lockdown, session),
            Request::Unenroll { selector } => self.unenroll(&selector),
            Request::List => {
                let enrollments = read(&self.registry).list();
                Ok(Reply::List { enrollments })
            }
            Request::ExecBegin { identity, labels } => self.exec_begin(identity, labels, session),
            Request::ExecEnd { cgroup } => {
                session.exec_cgroups.retain(|c| c != &cgroup);
                self.exec_end(&cgroup);
                Ok(Reply::Done)
            }
            Request::Status => Ok(Reply::Status(Box::new(self.status()))),
        };
        match result {
            Ok(data) => Response::Ok { data },
            Err(message) => refused(message),
        }
    }

    fn closed(&self, session: Session) {
        for cgroup in session.exec_cgroups {
            self.exec_end(&cgroup);
        }
    }
}

impl DaemonHandler {
    fn mount(&self) -> PathBuf {
        read(&self.registry).mount().to_owned()
    }

    fn enroll(
        &self,
        cgroup: Option<String>,
        pid: Option<u32>,
        identity: String,
        labels: BTreeMap<String, String>,
        lockdown: bool,
        session: &Session,
    ) -> Result<Reply, String> {
        enroll::check_identity(&identity).map_err(|e| e.to_string())?;
        let mount = self.mount();
        let dir = match (cgroup, pid) {
            (Some(c), None) => {
                crate::cgroup::resolve(&mount, Path::new(&c)).map_err(|e| e.to_string())?
            }
            (None, Some(p)) => {
                let rel = crate::cgroup::cgroup_of(Some(p))
                    .map_err(|_| format!("process {p} does not exist"))?;
                crate::cgroup::resolve(&mount, &rel).map_err(|e| e.to_string())?
            }
            _ => return Err("name exactly one of a cgroup or a pid".into()),
        };
        let rel = relative(&mount, &dir);
        if enroll::is_same_or_below(&self.agent_cgroup, &rel) {
            return Err(format!(
                "refusing to enroll {rel}: it holds the snowtrail daemon itself (cgroup {})",
                self.agent_cgroup
            ));
        }
        check_same_netns(&dir)?;
        self.add(
            dir,
            rel,
            identity,
            labels,
            Kind::Cgroup,
            Started::by(session, None).locked(lockdown),
        )
    }

    fn add(
        &self,
        dir: PathBuf,
        rel: String,
        identity: String,
        labels: BTreeMap<String, String>,
        kind: Kind,
        started: Started,
    ) -> Result<Reply, String> {
        let run_id = started.run_id;
        let mut registry = write(&self.registry);
        if registry.contains(&rel) {
            let current = registry
                .enrollments()
                .into_iter()
                .find(|e| e.cgroup == rel)
                .map(|e| e.identity)
                .unwrap_or_default();
            return Err(format!("cgroup {rel} is already enrolled as {current}"));
        }
        let cgroup_id = crate::cgroup::id_of(&dir).map_err(|e| e.to_string())?;
        let lockdown = started.lockdown;
        {
            write(&self.redirect)
                .attach_locked(&dir, lockdown || self.lockdown_all)
                .map_err(|e| format!("cannot attach to {rel}: {e}"))?;
        }
        let enrollment = Enrollment {
            identity: identity.clone(),
            labels,
            cgroup: rel.clone(),
            cgroup_id,
            since: enroll::now_secs(),
            kind,
            ended: false,
            run_id: run_id.clone(),
            started_by: started.by,
            started_by_login: started.by_login,
            lockdown,
        };
        if let Err(e) = registry.add(enrollment) {
            let _ = write(&self.redirect).detach(&dir);
            return Err(e.to_string());
        }
        info!(cgroup = %rel, %identity, ?kind, "enrolled");
        drop(registry);
        if kind == Kind::Cgroup {
            self.guard_parents();
        }
        Ok(Reply::Enrolled {
            cgroup: rel,
            cgroup_dir: dir,
            ca_bundle: run_id.as_ref().map(|_| self.ca_bundle.clone()),
            run_id,
        })
    }

    fn unenroll(&self, selector: &Selector) -> Result<Reply, String> {
        let selector = match selector {
            Selector::Cgroup(c) => {
                let mount = self.mount();
                let p = Path::new(c);
                // The cgroup may be gone already; fall back to the path as written.
                let rel = match crate::cgroup::resolve(&mount, p) {
                    Ok(dir) => relative(&mount, &dir),
                    Err(_) => format!(
                        "/{}",
                        c.trim_start_matches(&*mount.to_string_lossy())
                            .trim_matches('/')
                    ),
                };
                Selector::Cgroup(rel)
            }
            other => other.clone(),
        };
        let mut registry = write(&self.registry);
        let removed = registry.remove(&selector).map_err(|e| e.to_string())?;
        let mut redirect = write(&self.redirect);
        for e in &removed {
            let dir = registry.dir_of(&e.cgroup);
            if redirect.detach(&dir).is_err() {
                let _ = redirect.detach_id(e.cgroup_id);
            }
            info!(cgroup = %e.cgroup, identity = %e.identity, "unenrolled");
        }
        drop(redirect);
        drop(registry);
        self.guard_parents();
        Ok(Reply::Removed {
            removed: removed.into_iter().map(|e| e.cgroup).collect(),
        })
    }

    fn exec_begin(
        &self,
        identity: String,
        labels: BTreeMap<String, String>,
        session: &mut Session,
    ) -> Result<Reply, String> {
        enroll::check_identity(&identity).map_err(|e| e.to_string())?;
        let run_id = uuid::Uuid::now_v7().simple().to_string();
        let mount = self.mount();
        let rel = format!("/{EXEC_CGROUP_ROOT}/{run_id}");
        let dir = mount.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))?;
        match self.add(
            dir.clone(),
            rel.clone(),
            identity,
            labels,
            Kind::Exec,
            Started::by(session, Some(run_id)),
        ) {
            Ok(reply) => {
                session.exec_cgroups.push(rel);
                Ok(reply)
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    fn exec_end(&self, cgroup: &str) {
        if let Err(e) = write(&self.registry).mark_ended(cgroup) {
            warn!(%cgroup, error = %e, "could not record the end of an exec");
        }
        self.reap(cgroup);
    }

    /// Removes an ended exec cgroup once no process is left in it.
    fn reap(&self, cgroup: &str) {
        let dir = read(&self.registry).dir_of(cgroup);
        if crate::cgroup::populated(&dir).unwrap_or(false) {
            return;
        }
        let _ = write(&self.registry).remove(&Selector::Cgroup(cgroup.to_owned()));
        let _ = write(&self.redirect).detach(&dir);
        match std::fs::remove_dir(&dir) {
            Ok(()) => info!(%cgroup, "exec cgroup removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(%cgroup, error = %e, "could not remove exec cgroup"),
        }
    }

    /// Periodic upkeep: reaps ended exec cgroups that have emptied, and re-attaches enrolled cgroups
    /// that were deleted and made again (a restarted systemd unit gets a new cgroup at the same path).
    pub fn sweep(&self) {
        let enrollments = read(&self.registry).enrollments();
        for e in enrollments {
            if e.kind == Kind::Exec && e.ended {
                self.reap(&e.cgroup);
                continue;
            }
            let dir = read(&self.registry).dir_of(&e.cgroup);
            if let Ok(id) = crate::cgroup::id_of(&dir)
                && id != e.cgroup_id
            {
                {
                    let mut r = write(&self.redirect);
                    let _ = r.detach_id(e.cgroup_id);
                    match r.attach_locked(&dir, e.lockdown || self.lockdown_all) {
                        Ok(()) => {
                            info!(cgroup = %e.cgroup, "cgroup was recreated; attached again")
                        }
                        Err(err) => warn!(cgroup = %e.cgroup, error = %err, "re-attach failed"),
                    }
                }
                write(&self.registry).set_cgroup_id(&e.cgroup, id);
            }
        }
        self.guard_parents();
    }

    /// Puts the guard on the parent of every operator enrollment and takes it off parents no
    /// enrollment has any more. A new guard lets everything already below its parent pass, except
    /// the enrolled cgroups: only cgroups made from then on reach the agent to be classified.
    fn guard_parents(&self) {
        let enrollments = read(&self.registry).enrollments();
        let mut enrolled_dirs = Vec::new();
        let mut wanted: BTreeMap<u64, PathBuf> = BTreeMap::new();
        for e in &enrollments {
            let dir = read(&self.registry).dir_of(&e.cgroup);
            if e.kind == Kind::Cgroup
                && let Some(parent) = dir.parent()
                && let Ok(id) = crate::cgroup::id_of(parent)
            {
                wanted.insert(id, parent.to_owned());
            }
            enrolled_dirs.push(dir);
        }
        let mut r = write(&self.redirect);
        for id in r.guarded() {
            if !wanted.contains_key(&id) {
                info!(
                    cgroup_id = id,
                    "no enrolled cgroup below this parent any more; guard removed"
                );
                let _ = r.unguard_id(id);
            }
        }
        let have = r.guarded();
        for (id, parent) in wanted {
            if have.contains(&id) {
                continue;
            }
            if let Err(err) = r.guard(&parent) {
                warn!(parent = %parent.display(), error = %err, "could not guard an enrolled cgroup's parent: a cgroup made again there goes unaudited until it is attached");
                continue;
            }
            let below = crate::cgroup::ids_below(
                &parent,
                &enrolled_dirs,
                snowtrail_common::MAX_FOREIGN as usize / 2,
            );
            if let Err(err) = r.mark_foreign(&below) {
                warn!(parent = %parent.display(), error = %err, "could not let the cgroups below a new guard pass; their next connects are classified by the agent");
            }
            info!(parent = %parent.display(), classified = below.len(), "guarding an enrolled cgroup's parent");
        }
    }

    /// Attaches every persisted enrollment and drops kernel attachments nothing enrolls any more;
    /// called once at start.
    pub fn restore(&self) {
        let enrollments = read(&self.registry).enrollments();
        let mut live_ids = Vec::new();
        for e in enrollments {
            let dir = read(&self.registry).dir_of(&e.cgroup);
            match crate::cgroup::id_of(&dir) {
                Ok(id) => {
                    if let Err(err) =
                        write(&self.redirect).attach_locked(&dir, e.lockdown || self.lockdown_all)
                    {
                        warn!(cgroup = %e.cgroup, error = %err, "could not attach a saved enrollment");
                    }
                    if id != e.cgroup_id {
                        write(&self.registry).set_cgroup_id(&e.cgroup, id);
                    }
                    live_ids.push(id);
                    info!(cgroup = %e.cgroup, identity = %e.identity, "enrollment restored");
                }
                Err(_) if e.kind == Kind::Exec => {
                    let _ = write(&self.registry).remove(&Selector::Cgroup(e.cgroup.clone()));
                }
                Err(_) => {
                    warn!(cgroup = %e.cgroup, "enrolled cgroup does not exist now; it is attached when it appears")
                }
            }
        }
        {
            let mut r = write(&self.redirect);
            for id in r.attached() {
                if !live_ids.contains(&id) {
                    info!(
                        cgroup_id = id,
                        "detaching a pinned cgroup that is no longer enrolled"
                    );
                    let _ = r.detach_id(id);
                }
            }
        }
        self.guard_parents();
    }

    fn status(&self) -> Status {
        let (counters, programs_attached, parents_guarded) = {
            let r = read(&self.redirect);
            (
                r.counters().unwrap_or_default(),
                r.attached().len(),
                r.guarded().len(),
            )
        };
        let writer = self
            .audit
            .as_ref()
            .map(crate::audit::AuditWriter::stats)
            .unwrap_or_default();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            listen: self.listen.clone(),
            enrolled: read(&self.registry).enrollments().len(),
            connections_total: self.stats.total(),
            connections_open: self.stats.open(),
            connections_refused: self.stats.refused(),
            redirected: counters.redirected,
            programs_attached,
            parents_guarded,
            guarded: counters.guarded,
            lockdown_denied: counters.lockdown_denied,
            bytes_in: self.stats.bytes_in(),
            bytes_out: self.stats.bytes_out(),
            statements: writer.statements,
            audit: AuditStatus {
                healthy: writer.healthy,
                lag_records: writer.unpublished_records,
                gap_events: writer.gap_events,
                durable_records: writer.durable_records,
                files_published: writer.files_published,
                current_files: writer.open_files,
                digests: self.digests.as_ref().map(DigestWatch::status),
            },
            poisoned_locks: crate::sync::poisoned(),
        }
    }
}

/// A cgroup directory's path relative to the mount, with a leading `/`.
fn relative(mount: &Path, dir: &Path) -> String {
    let rel = dir.strip_prefix(mount).unwrap_or(dir);
    format!("/{}", rel.to_string_lossy().trim_matches('/'))
}

/// Refuses a cgroup holding processes of another network namespace (docs/decisions.md §5): the redirect
/// target, the agent's loopback listener, is not reachable from there.
fn check_same_netns(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let own = std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .map_err(|e| e.to_string())?;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for pid in crate::cgroup::procs(&d).unwrap_or_default() {
            if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                && m.ino() != own
            {
                return Err(format!(
                    "cgroup {} holds process {pid} in another network namespace; containers with their own network namespace are not supported yet",
                    dir.display()
                ));
            }
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    Ok(())
}
