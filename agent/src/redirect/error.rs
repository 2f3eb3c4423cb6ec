//! `redirect::Error`: what can go wrong loading, attaching, pinning and reading the eBPF side.

use std::io;
use std::path::PathBuf;

use aya::maps::MapError;
use aya::programs::ProgramError;

use crate::cgroup;

/// Why a redirect operation failed; each variant names the object it was working on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work (no port, too many ports, the listener's own port intercepted...).
    #[error("invalid redirect configuration: {0}")]
    Config(String),
    /// The pin directory is not usable (not on a bpf file system, or not creatable).
    #[error("pin directory {0}: {1}")]
    PinDir(PathBuf, #[source] io::Error),
    /// The bpf file system could not be mounted at /sys/fs/bpf.
    #[error("mounting bpffs at {0}: {1}")]
    MountBpffs(PathBuf, #[source] io::Error),
    /// The embedded eBPF object could not be loaded (maps created or adopted, relocations).
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program is missing from the embedded object or has an unexpected type.
    #[error("eBPF program {0} is missing from the object or has the wrong type")]
    MissingProgram(&'static str),
    /// The verifier (or the kernel) refused a program.
    #[error("loading eBPF program {program}: {source}")]
    ProgramLoad {
        /// The program's name in the object.
        program: &'static str,
        /// What aya reported (the verifier log is inside).
        #[source]
        source: Box<ProgramError>,
    },
    /// A map is missing from the object or has an unexpected type.
    #[error("eBPF map {0} is missing from the object or has the wrong type")]
    MissingMap(&'static str),
    /// Reading or writing a map failed.
    #[error("eBPF map {map}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// What aya reported.
        #[source]
        source: Box<MapError>,
    },
    /// A cgroup could not be resolved to its id.
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    /// A cgroup directory could not be opened for attaching.
    #[error("opening cgroup {0}: {1}")]
    OpenCgroup(PathBuf, #[source] io::Error),
    /// Attaching a program to a cgroup failed.
    #[error("attaching {program} to cgroup {cgroup}: {source}")]
    Attach {
        /// The program's name in the object.
        program: &'static str,
        /// The cgroup directory, or `cgroup id N` when only the id is known.
        cgroup: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Attaching the getsockopt program to the agent's own cgroup failed.
    #[error("attaching the getsockopt program to the agent cgroup {0}: {1}")]
    AttachAgent(PathBuf, #[source] Box<ProgramError>),
    /// A pinned link could not be created, opened, updated, detached or removed.
    #[error("pinned link {0}: {1}")]
    Link(PathBuf, #[source] io::Error),
    /// A pinned map could not be inspected or removed.
    #[error("pinned map {0}: {1}")]
    PinnedMap(PathBuf, #[source] io::Error),
    /// The agent's network namespace cookie could not be read (kernel older than 5.14?).
    #[error("reading the agent's network namespace cookie (SO_NETNS_COOKIE): {0}")]
    NetnsCookie(#[source] io::Error),
    /// The lockdown's ring buffer could not be waited on.
    #[error("waiting on the lockdown's ring buffer: {0}")]
    Denials(#[source] io::Error),
    /// An accepted socket's cookie (`SO_COOKIE`) could not be read, so its origin cannot be found.
    #[error("reading an accepted socket's cookie (SO_COOKIE): {0}")]
    Cookie(#[source] io::Error),
}

impl Error {
    pub(super) fn map(map: &'static str, source: MapError) -> Self {
        Error::Map {
            map,
            source: Box::new(source),
        }
    }
}
