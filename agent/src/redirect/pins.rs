//! What `redirect` leaves on the bpf file system, and the operations on it.
//!
//! ```text
//! <pin_dir>/maps/<MAP>                     ST_SETTINGS, ST_PORTS, ST_ORIGINS, ST_BY_TUPLE,
//!                                          ST_ACCEPTED, ST_FOREIGN, ST_COUNTERS
//! <pin_dir>/links/<cgroup id>/<hook>       one bpf_link per hook (connect4, connect6, sockops,
//!                                          getpeername4, getpeername6) attached to an enrolled cgroup
//! <pin_dir>/links/locked-<cgroup id>/<hook> a locked-down enrolled cgroup (locked4, locked6,
//!                                          sendmsg4, sendmsg6, sockops, getpeername4, getpeername6)
//! <pin_dir>/links/guard-<cgroup id>/<hook> the guard on an enrolled cgroup's parent (guard4,
//!                                          guard6, sockops, getpeername4, getpeername6)
//! <pin_dir>/links/new-<name>/<hook>        a set being built; renamed to <name> once complete
//! ```
//! A cgroup is named by its id (the inode number of its directory, what `bpf_get_current_cgroup_id`
//! reports): bpffs holds only bpf objects and directories, so no file can record a path, and an id
//! stays right when a cgroup directory is renamed. The links keep the programs and maps alive after
//! the agent exits; the agent's own sockops link is never pinned.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::{Error, sys};
use crate::cgroup;

/// A cgroup hook every enrolled cgroup gets: program name in the object, pin name, attach type.
pub(super) struct Hook {
    pub program: &'static str,
    pub pin: &'static str,
    pub attach_type: u32,
}

/// The hooks of an enrolled cgroup, in attach order: everything that follows a redirected socket
/// is in place before the connect programs start redirecting. Detaching goes in reverse.
pub(super) const HOOKS: [Hook; 5] = [
    Hook {
        program: "st_sockops",
        pin: "sockops",
        attach_type: 3,
    },
    Hook {
        program: "st_peername4",
        pin: "getpeername4",
        attach_type: 29,
    },
    Hook {
        program: "st_peername6",
        pin: "getpeername6",
        attach_type: 30,
    },
    Hook {
        program: "st_connect4",
        pin: "connect4",
        attach_type: 10,
    },
    Hook {
        program: "st_connect6",
        pin: "connect6",
        attach_type: 11,
    },
];

/// The hooks of an enrolled cgroup's parent, in attach order, as for [`HOOKS`]: the sockets the
/// guard redirects are followed by the same sockops and getpeername programs.
pub(super) const GUARD_HOOKS: [Hook; 5] = [
    Hook {
        program: "st_sockops",
        pin: "sockops",
        attach_type: 3,
    },
    Hook {
        program: "st_peername4",
        pin: "getpeername4",
        attach_type: 29,
    },
    Hook {
        program: "st_peername6",
        pin: "getpeername6",
        attach_type: 30,
    },
    Hook {
        program: "st_guard4",
        pin: "guard4",
        attach_type: 10,
    },
    Hook {
        program: "st_guard6",
        pin: "guard6",
        attach_type: 11,
    },
];

/// The hooks of a locked-down enrolled cgroup, in attach order: as [`HOOKS`], with the programs
/// that refuse what is not allowed (UDP sends first, then the connects).
pub(super) const LOCKED_HOOKS: [Hook; 7] = [
    Hook {
        program: "st_sockops",
        pin: "sockops",
        attach_type: 3,
    },
    Hook {
        program: "st_peername4",
        pin: "getpeername4",
        attach_type: 29,
    },
    Hook {
        program: "st_peername6",
        pin: "getpeername6",
        attach_type: 30,
    },
    Hook {
        program: "st_sendmsg4",
        pin: "sendmsg4",
        attach_type: 14,
    },
    Hook {
        program: "st_sendmsg6",
        pin: "sendmsg6",
        attach_type: 15,
    },
    Hook {
        program: "st_locked4",
        pin: "locked4",
        attach_type: 10,
    },
    Hook {
        program: "st_locked6",
        pin: "locked6",
        attach_type: 11,
    },
];

/// The sockops program on the agent's own cgroup, where it hands each origin to the accepted socket.
pub(super) const AGENT_SOCKOPS: Hook = Hook {
    program: "st_sockops",
    pin: "sockops",
    attach_type: 3,
};

/// Pins in the order they are detached: the programs that redirect first.
const DETACH_ORDER: [&str; 11] = [
    "connect6",
    "connect4",
    "locked6",
    "locked4",
    "sendmsg6",
    "sendmsg4",
    "guard6",
    "guard4",
    "getpeername6",
    "getpeername4",
    "sockops",
];

/// What a set of links attaches, and so how its directory is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum SetKind {
    /// An enrolled cgroup ([`HOOKS`]): every intercepted connect goes to the agent.
    Enrolled,
    /// A locked-down enrolled cgroup ([`LOCKED_HOOKS`]): as `Enrolled`, and nothing else leaves
    /// but to allowed destinations.
    Locked,
    /// An enrolled cgroup's parent ([`GUARD_HOOKS`]): connects of cgroups no enrollment covers yet
    /// go to the agent, which classifies them.
    Guard,
}

impl SetKind {
    /// The hooks of a set of this kind, in attach order.
    pub fn hooks(self) -> &'static [Hook] {
        match self {
            SetKind::Enrolled => &HOOKS,
            SetKind::Locked => &LOCKED_HOOKS,
            SetKind::Guard => &GUARD_HOOKS,
        }
    }

    fn dir_name(self, cgroup_id: u64) -> String {
        match self {
            SetKind::Enrolled => cgroup_id.to_string(),
            SetKind::Locked => format!("{LOCKED_PREFIX}{cgroup_id}"),
            SetKind::Guard => format!("{GUARD_PREFIX}{cgroup_id}"),
        }
    }
}

/// A published set: what it attaches, and to which cgroup (by id).
pub(super) type SetId = (SetKind, u64);

/// The loaded programs' descriptors, by program name.
pub(super) type ProgramFds<'a> = BTreeMap<&'static str, BorrowedFd<'a>>;

/// The descriptor of a hook's program.
fn prog<'a>(progs: &ProgramFds<'a>, hook: &Hook) -> Result<BorrowedFd<'a>, Error> {
    progs
        .get(hook.program)
        .copied()
        .ok_or(Error::MissingProgram(hook.program))
}

/// bpffs refuses names with a dot, so no hidden-file convention here.
const STAGING_PREFIX: &str = "new-";
/// Guard sets are named `guard-<cgroup id>`.
const GUARD_PREFIX: &str = "guard-";
/// Locked-down sets are named `locked-<cgroup id>`.
const LOCKED_PREFIX: &str = "locked-";

/// Paths under one pin directory.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Layout {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn set_dir(&self, kind: SetKind, cgroup_id: u64) -> PathBuf {
        self.links_dir().join(kind.dir_name(cgroup_id))
    }

    fn staging_dir(&self, kind: SetKind, cgroup_id: u64) -> PathBuf {
        self.links_dir()
            .join(format!("{STAGING_PREFIX}{}", kind.dir_name(cgroup_id)))
    }

    /// Creates the directories (the root must be on a bpf file system).
    pub fn create(&self) -> Result<(), Error> {
        for dir in [self.maps_dir(), self.links_dir()] {
            fs::create_dir_all(&dir).map_err(|e| Error::PinDir(dir.clone(), e))?;
        }
        Ok(())
    }

    /// The published sets and the unfinished staging directories.
    pub fn scan(&self) -> Result<(Vec<SetId>, Vec<PathBuf>), Error> {
        let dir = self.links_dir();
        let mut ids = Vec::new();
        let mut staging = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((ids, staging)),
            Err(e) => return Err(Error::PinDir(dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::PinDir(dir.clone(), e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Ok(id) = name.parse::<u64>() {
                ids.push((SetKind::Enrolled, id));
            } else if let Some(Ok(id)) = name.strip_prefix(GUARD_PREFIX).map(str::parse::<u64>) {
                ids.push((SetKind::Guard, id));
            } else if let Some(Ok(id)) = name.strip_prefix(LOCKED_PREFIX).map(str::parse::<u64>) {
                ids.push((SetKind::Locked, id));
            } else if name.starts_with(STAGING_PREFIX) {
                staging.push(entry.path());
            }
        }
        ids.sort_unstable();
        Ok((ids, staging))
    }
}

/// The links of one cgroup's set that this agent holds open, by pin name.
#[derive(Debug)]
pub(super) struct LinkSet {
    kind: SetKind,
    links: BTreeMap<&'static str, OwnedFd>,
}

impl LinkSet {
    fn new(kind: SetKind) -> LinkSet {
        LinkSet {
            kind,
            links: BTreeMap::new(),
        }
    }
}

/// Attaches every hook to a cgroup and publishes the pinned set.
pub(super) fn create_set(
    layout: &Layout,
    kind: SetKind,
    cgroup_id: u64,
    cgroup_dir: &Path,
    progs: &ProgramFds<'_>,
) -> Result<LinkSet, Error> {
    let cgroup =
        fs::File::open(cgroup_dir).map_err(|e| Error::OpenCgroup(cgroup_dir.to_owned(), e))?;
    let staging = layout.staging_dir(kind, cgroup_id);
    if staging.exists() {
        discard_dir(&staging)?;
    }
    fs::create_dir(&staging).map_err(|e| Error::PinDir(staging.clone(), e))?;
    let mut set = LinkSet::new(kind);
    let built = (|| {
        for hook in kind.hooks() {
            let link = attach_pinned(
                hook,
                prog(progs, hook)?,
                cgroup.as_fd(),
                cgroup_dir,
                &staging,
            )?;
            set.links.insert(hook.pin, link);
        }
        let published = layout.set_dir(kind, cgroup_id);
        fs::rename(&staging, &published).map_err(|e| Error::PinDir(published, e))
    })();
    if let Err(e) = built {
        detach_all(&set);
        let _ = discard_dir(&staging);
        return Err(e);
    }
    Ok(set)
}

/// Takes over a published set left by a previous run: each link gets the new program with one
/// atomic `BPF_LINK_UPDATE`, so the cgroup is never without redirection. Hooks missing from the set
/// (an older agent) are attached; unknown pins are detached. `Ok(None)`: the cgroup is gone, and the
/// set was removed.
pub(super) fn adopt_set(
    layout: &Layout,
    kind: SetKind,
    cgroup_id: u64,
    progs: &ProgramFds<'_>,
) -> Result<Option<LinkSet>, Error> {
    let dir = layout.set_dir(kind, cgroup_id);
    let hooks = kind.hooks();
    let mut set = LinkSet::new(kind);
    for entry in fs::read_dir(&dir).map_err(|e| Error::PinDir(dir.clone(), e))? {
        let path = entry.map_err(|e| Error::PinDir(dir.clone(), e))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(index) = hooks.iter().position(|h| h.pin == name) else {
            tracing::info!(pin = %path.display(), "removing a pinned link this agent does not know");
            discard_link(&path)?;
            continue;
        };
        let link = sys::obj_get(&path).map_err(|e| Error::Link(path.clone(), e))?;
        match sys::link_update(link.as_fd(), prog(progs, &hooks[index])?) {
            Ok(()) => {
                set.links.insert(hooks[index].pin, link);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {
                tracing::info!(cgroup_id, "pinned cgroup is gone; removing its links");
                discard_dir(&dir)?;
                return Ok(None);
            }
            Err(e) => return Err(Error::Link(path, e)),
        }
    }
    let missing: Vec<usize> = (0..hooks.len())
        .filter(|&i| !set.links.contains_key(hooks[i].pin))
        .collect();
    if !missing.is_empty() {
        let Some(cgroup_dir) = find_cgroup(cgroup_id) else {
            tracing::warn!(
                cgroup_id,
                "pinned cgroup not found; removing its incomplete link set"
            );
            detach_all(&set);
            discard_dir(&dir)?;
            return Ok(None);
        };
        let cgroup =
            fs::File::open(&cgroup_dir).map_err(|e| Error::OpenCgroup(cgroup_dir.clone(), e))?;
        for i in missing {
            let link = attach_pinned(
                &hooks[i],
                prog(progs, &hooks[i])?,
                cgroup.as_fd(),
                &cgroup_dir,
                &dir,
            )?;
            set.links.insert(hooks[i].pin, link);
        }
    }
    Ok(Some(set))
}

/// Detaches a published set (held open or only pinned) and removes its pins; returns how many
/// links were removed.
pub(super) fn remove_set(
    layout: &Layout,
    kind: SetKind,
    cgroup_id: u64,
    held: Option<LinkSet>,
) -> Result<usize, Error> {
    if let Some(set) = &held {
        detach_all(set);
    }
    let dir = layout.set_dir(kind, cgroup_id);
    if !dir.exists() {
        return Ok(held.map_or(0, |s| s.links.len()));
    }
    discard_dir(&dir)
}

/// Detaches and removes everything under the links directory; returns how many links were removed.
pub(super) fn remove_all_sets(layout: &Layout) -> Result<usize, Error> {
    let (ids, staging) = layout.scan()?;
    let mut removed = 0;
    for dir in staging {
        removed += discard_dir(&dir)?;
    }
    for (kind, id) in ids {
        removed += remove_set(layout, kind, id, None)?;
    }
    let links = layout.links_dir();
    match fs::remove_dir(&links) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::PinDir(links, e)),
    }
    Ok(removed)
}

/// Removes unfinished staging directories a crash may have left.
pub(super) fn discard_staging(layout: &Layout) -> Result<(), Error> {
    let (_, staging) = layout.scan()?;
    for dir in staging {
        discard_dir(&dir)?;
    }
    Ok(())
}

fn attach_pinned(
    hook: &Hook,
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    cgroup_dir: &Path,
    dir: &Path,
) -> Result<OwnedFd, Error> {
    let link =
        sys::link_create(prog, cgroup, hook.attach_type).map_err(|source| Error::Attach {
            program: hook.program,
            cgroup: cgroup_dir.to_owned(),
            source,
        })?;
    let pin = dir.join(hook.pin);
    if let Err(e) = sys::obj_pin(link.as_fd(), &pin) {
        let _ = sys::link_detach(link.as_fd());
        return Err(Error::Link(pin, e));
    }
    Ok(link)
}

/// Detaches the links of a held set, redirecting hooks first.
fn detach_all(set: &LinkSet) {
    for hook in set.kind.hooks().iter().rev() {
        if let Some(link) = set.links.get(hook.pin) {
            let _ = sys::link_detach(link.as_fd());
        }
    }
}

/// Detaches and unpins every link in a set directory (redirecting hooks first), then removes it.
fn discard_dir(dir: &Path) -> Result<usize, Error> {
    let mut pins: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::PinDir(dir.to_owned(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    // Known hooks in reverse attach order, anything else last.
    let rank = |p: &PathBuf| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        DETACH_ORDER
            .iter()
            .position(|pin| *pin == name)
            .unwrap_or(DETACH_ORDER.len())
    };
    pins.sort_by_key(rank);
    let mut removed = 0;
    for pin in &pins {
        discard_link(pin)?;
        removed += 1;
    }
    fs::remove_dir(dir).map_err(|e| Error::PinDir(dir.to_owned(), e))?;
    Ok(removed)
}

/// Detaches one pinned link (even if another process holds it open) and removes its pin.
fn discard_link(pin: &Path) -> Result<(), Error> {
    match sys::obj_get(pin) {
        // A link whose cgroup is gone detaches fine; only the pin matters then.
        Ok(link) => {
            let _ = sys::link_detach(link.as_fd());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        // Not a link (or unreadable): still remove the pin below.
        Err(_) => {}
    }
    match fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Link(pin.to_owned(), e)),
    }
}

/// Finds a cgroup directory by id under the cgroup2 mount (only needed to complete an old set).
fn find_cgroup(cgroup_id: u64) -> Option<PathBuf> {
    let mount = cgroup::mount_point().ok()?;
    let mut stack = vec![mount];
    while let Some(dir) = stack.pop() {
        if fs::metadata(&dir).map(|m| m.ino()).ok() == Some(cgroup_id) {
            return Some(dir);
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(entry.path());
                }
            }
        }
    }
    None
}
