//! Kernel redirection (interface stand-in; the loader replaces this file).
#![allow(missing_docs, unused_variables)]
use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

pub use snowtrail_common::Origin;

pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/snowtrail"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not implemented")]
    Unimplemented,
}
#[derive(Debug, Clone)]
pub struct RedirectConfig {
    pub ports: Vec<u16>,
    pub pin_dir: PathBuf,
    pub max_connections: u32,
}
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub seen: u64,
    pub redirected: u64,
    pub refused_netns: u64,
    pub store_failed: u64,
    pub original_dst_answered: u64,
    pub live_origins: usize,
    pub live_tuples: usize,
}
pub struct Redirect;
impl Redirect {
    pub fn start(
        cfg: &RedirectConfig,
        listen_port: u16,
        agent_cgroup: &Path,
    ) -> Result<Redirect, Error> {
        Err(Error::Unimplemented)
    }
    pub fn attach(&mut self, cgroup_dir: &Path) -> Result<(), Error> {
        Err(Error::Unimplemented)
    }
    pub fn detach(&mut self, cgroup_dir: &Path) -> Result<(), Error> {
        Err(Error::Unimplemented)
    }
    pub fn attached(&self) -> Vec<u64> {
        vec![]
    }
    pub fn detach_id(&mut self, cgroup_id: u64) -> Result<(), Error> {
        Err(Error::Unimplemented)
    }
    pub fn lookup(&self, peer: SocketAddr) -> Result<Option<Origin>, Error> {
        Err(Error::Unimplemented)
    }
    pub fn counters(&self) -> Result<Counters, Error> {
        Err(Error::Unimplemented)
    }
    pub fn shutdown(self, detach: bool) -> Result<(), Error> {
        Err(Error::Unimplemented)
    }
}
pub fn original_dst(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    Err(io::Error::other("unimplemented"))
}
pub fn detach_pinned(pin_dir: &Path) -> Result<usize, Error> {
    Err(Error::Unimplemented)
}
pub fn addr_to_socket(a: &snowtrail_common::Addr) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], a.port))
}
pub fn comm_to_string(c: &[u8; 16]) -> String {
    String::new()
}
