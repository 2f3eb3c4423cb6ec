//! The few system calls the loader makes itself, because aya 0.14 offers no file descriptor of a
//! cgroup link, no `BPF_LINK_UPDATE` or `BPF_LINK_DETACH` for one, and no `SO_COOKIE` or
//! `SO_NETNS_COOKIE` reading. Every `unsafe` block of the agent that talks to the kernel is here.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use libc::{c_int, c_long, c_void, socklen_t};

const BPF_OBJ_PIN: c_int = 6;
const BPF_OBJ_GET: c_int = 7;
const BPF_LINK_CREATE: c_int = 28;
const BPF_LINK_UPDATE: c_int = 29;
const BPF_LINK_DETACH: c_int = 34;

/// `SO_NETNS_COOKIE` (asm-generic value; libc does not export it for every target).
const SO_NETNS_COOKIE: c_int = 71;

/// `bpf_attr` for `BPF_OBJ_PIN` / `BPF_OBJ_GET`. The kernel zero-fills the union past what is passed.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `bpf_attr` for `BPF_LINK_CREATE` on a cgroup.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// `bpf_attr` for `BPF_LINK_UPDATE`.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `bpf_attr` for `BPF_LINK_DETACH`.
#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

fn bpf<T>(cmd: c_int, attr: &mut T) -> io::Result<c_long> {
    // SAFETY: `attr` points to a live, fully initialised prefix of `union bpf_attr` for `cmd`, and
    // the size passed is exactly its size; the kernel reads (and for some commands writes) only that.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut c_void,
            size_of::<T>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned_fd(ret: c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::other("bpf() returned an invalid fd"))?;
    // SAFETY: the kernel just returned this descriptor (close-on-exec) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Attaches a loaded program to a cgroup as a new bpf_link (always multi-attach for cgroup links).
pub(super) fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    bpf(BPF_LINK_CREATE, &mut attr).and_then(owned_fd)
}

/// Pins a bpf object (here: a link) at `path` on a bpf file system.
pub(super) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Opens a pinned bpf object.
pub(super) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    bpf(BPF_OBJ_GET, &mut attr).and_then(owned_fd)
}

/// Swaps the program of a link atomically: the cgroup is never without a program.
/// Fails with `ENOLINK` when the link's cgroup is gone.
pub(super) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Detaches a link now, whoever else still holds it or pins it.
pub(super) fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkDetachAttr {
        link_fd: link.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Reads a fixed-size socket option into `value`; returns the length the kernel wrote.
fn getsockopt_into<T>(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: &mut T,
) -> io::Result<usize> {
    let mut len = size_of::<T>() as socklen_t;
    // SAFETY: `value` is valid for writes of `len` bytes and `len` is a live socklen_t.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value as *mut T as *mut c_void,
            &mut len,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(len as usize)
    }
}

/// The network namespace cookie of the namespace a fresh socket of this process lives in.
pub(super) fn own_netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    getsockopt_into(sock.as_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, &mut cookie)?;
    Ok(cookie)
}

/// The cookie of a socket (`SO_COOKIE`): the kernel's id for it, never reused while the system runs.
pub(super) fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let len = getsockopt_into(fd, libc::SOL_SOCKET, libc::SO_COOKIE, &mut cookie)?;
    if len != size_of::<u64>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_COOKIE gave no 64-bit cookie",
        ));
    }
    Ok(cookie)
}

/// Registers the lockdown's ring buffer with the tokio reactor, to wait until it holds records.
pub(super) fn register_ring(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
) -> io::Result<tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>> {
    // SAFETY: the ring buffer owns its map's descriptor, and the AsyncFd owns the ring buffer:
    // the descriptor stays open for as long as it is registered.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))
}
