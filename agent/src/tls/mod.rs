//! TLS: the agent's own CA, leaf certificates minted per server name, the bundle workloads trust,
//! and the strict verifier used towards the real upstream.
//!
//! The CA lives in the state directory (`ca.pem`, and `ca-key.pem` readable by root only) and is
//! created once (`snowtrail ca init`, or the daemon's first start). Leaves are minted on demand for
//! each SNI the proxy terminates and cached. Upstream trust never includes the agent's own CA
//! (docs/decisions.md §4): it is the system roots minus that CA, plus configured extra roots.

pub mod ca;
pub mod client_hello;
pub mod leaf;
pub mod upstream;

pub use ca::Ca;
pub use leaf::LeafResolver;

/// Why a TLS piece could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a CA or bundle file failed.
    #[error("{0}: {1}")]
    Io(std::path::PathBuf, #[source] std::io::Error),
    /// Generating or parsing a key or certificate failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A PEM file held nothing usable.
    #[error("{0}: {1}")]
    Pem(std::path::PathBuf, String),
    /// rustls refused a configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA key's file is readable by others than root.
    #[error("{0} is readable by group or others (mode {1:o}); it must be 0600")]
    KeyPermissions(std::path::PathBuf, u32),
}

/// The crypto provider the agent uses everywhere (ring).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
