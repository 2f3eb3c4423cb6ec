//! The cgroup v2 hierarchy as the agent needs it: where it is mounted, which cgroup a process is in,
//! a cgroup's id, and moving processes between cgroups.
//!
//! Nothing here keeps state; every function reads the kernel's files when called.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No cgroup2 file system is mounted on this host.
    #[error("cgroup v2 is not mounted (no cgroup2 entry in /proc/self/mountinfo)")]
    NotMounted,
    /// The named cgroup does not exist.
    #[error("cgroup {0} does not exist")]
    NoSuchCgroup(PathBuf),
    /// The path leaves the cgroup2 mount (`..`, or an absolute path elsewhere).
    #[error("{0} is not a cgroup under the cgroup2 mount {1}")]
    OutsideMount(PathBuf, PathBuf),
    /// A process has no cgroup v2 entry (it vanished, or the host has no unified hierarchy).
    #[error("process {0} has no cgroup v2 membership (has it exited?)")]
    NoMembership(u32),
    /// A kernel file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] io::Error),
}

/// Finds where the cgroup2 file system is mounted, from `/proc/self/mountinfo`.
pub fn mount_point() -> Result<PathBuf, Error> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|e| Error::Io(path.to_owned(), e))?;
    parse_mount_point(&text).ok_or(Error::NotMounted)
}

/// Picks the first cgroup2 mount out of mountinfo text.
fn parse_mount_point(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount = pre.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount)))
    })
}

/// Undoes mountinfo's `\040`-style escapes: a backslash and three octal digits stand for one
/// byte. `\400` to `\777` name no byte (the kernel never writes them) and are kept as written.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && (b'0'..=b'3').contains(&bytes[i + 1])
            && bytes[i + 2..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path (relative to the mount, starting with `/`) of process `pid`; `None` for self.
pub fn cgroup_of(pid: Option<u32>) -> Result<PathBuf, Error> {
    let file = match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}/cgroup")),
        None => PathBuf::from("/proc/self/cgroup"),
    };
    let text = fs::read_to_string(&file).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::NoMembership(pid.unwrap_or(0)),
        _ => Error::Io(file.clone(), e),
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim_end()))
        .ok_or(Error::NoMembership(pid.unwrap_or(0)))
}

/// Resolves a user-given cgroup (absolute under the mount, or relative to it) to its directory,
/// checking that it exists and stays inside the mount.
pub fn resolve(mount: &Path, given: &Path) -> Result<PathBuf, Error> {
    let rel = if given.is_absolute() {
        match given.strip_prefix(mount) {
            Ok(r) => r.to_owned(),
            // "/system.slice/x.service" style: a path relative to the mount written with a leading slash.
            Err(_) => given.strip_prefix("/").unwrap_or(given).to_owned(),
        }
    } else {
        given.to_owned()
    };
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Error::OutsideMount(given.to_owned(), mount.to_owned()));
    }
    let dir = mount.join(&rel);
    match fs::metadata(dir.join("cgroup.procs")) {
        Ok(_) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NoSuchCgroup(given.to_owned())),
        Err(e) => Err(Error::Io(dir, e)),
    }
}

/// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`): the inode number of the directory.
pub fn id_of(dir: &Path) -> Result<u64, Error> {
    fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NoSuchCgroup(dir.to_owned()),
            _ => Error::Io(dir.to_owned(), e),
        })
}

/// The ids of `root` and of every cgroup below it, except the subtrees at `skip`, at most `limit`
/// of them: what a new guard on `root` may let pass at once, since no enrollment covers them.
pub fn ids_below(root: &Path, skip: &[PathBuf], limit: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        if ids.len() >= limit {
            break;
        }
        if skip.iter().any(|s| s == &dir) {
            continue;
        }
        let Ok(id) = id_of(&dir) else {
            continue;
        };
        ids.push(id);
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }
    ids
}

/// Moves process `pid` into the cgroup at `dir`.
pub fn move_pid(dir: &Path, pid: u32) -> Result<(), Error> {
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, pid.to_string()).map_err(|e| Error::Io(procs, e))
}

/// The processes in the cgroup at `dir` (not its descendants).
pub fn procs(dir: &Path) -> Result<Vec<u32>, Error> {
    let procs = dir.join("cgroup.procs");
    let text = fs::read_to_string(&procs).map_err(|e| Error::Io(procs, e))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Whether any process lives in `dir` or below it (`populated` of `cgroup.events`).
pub fn populated(dir: &Path) -> Result<bool, Error> {
    let events = dir.join("cgroup.events");
    let text = fs::read_to_string(&events).map_err(|e| Error::Io(events, e))?;
    Ok(text.lines().any(|l| l.trim() == "populated 1"))
}

/// Counts the processes in `dir` and all its descendants.
pub fn count_procs_recursive(dir: &Path) -> usize {
    procs_recursive(dir).len()
}

/// The processes in `dir` and all its descendants (a cgroup that cannot be read adds none).
pub fn procs_recursive(dir: &Path) -> Vec<u32> {
    let mut all = procs(dir).unwrap_or_default();
    if let Ok(rd) = fs::read_dir(dir) {
        for entry in rd.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                all.extend(procs_recursive(&entry.path()));
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let text = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                    27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_mount_point(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_mount_point("1 2 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn unescapes_spaces() {
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }

    #[test]
    fn escapes_beyond_a_byte_are_kept_as_written() {
        assert_eq!(unescape_octal("/a\\377b"), "/a\u{fffd}b");
        assert_eq!(unescape_octal("/a\\400b"), "/a\\400b");
        assert_eq!(unescape_octal("/a\\777b\\040c"), "/a\\777b c");
        assert_eq!(unescape_octal("/a\\08"), "/a\\08");
        assert_eq!(unescape_octal("\\7"), "\\7");
    }

    #[test]
    fn resolve_rejects_escapes() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        assert!(matches!(
            resolve(mount, Path::new("../etc")),
            Err(Error::OutsideMount(..))
        ));
    }
}
