//! The agent's configuration: one TOML file in which every key is optional.
//!
//! Defaults are the named constants below, so a missing file and an empty file mean the same thing.
//! Reading the file ([`Config::load`]) is kept apart from parsing and checking text
//! ([`Config::from_toml`]), so tests never touch the file system. Unknown keys are an error that
//! names the key and its line: a misspelt option must never be silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::{AuditConfig, OnAuditFailure};

pub mod destination;

pub use destination::{Destination, DestinationError};

/// Where the agent keeps enrollments, its CA and the audit journal.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/snowtrail";
/// Where the hourly Parquet files go.
pub const DEFAULT_AUDIT_DIR: &str = "/var/lib/snowtrail/audit";
/// Where recorded results go (encrypted; see `[recording]`).
pub const DEFAULT_RECORDING_DIR: &str = "/var/lib/snowtrail/recordings";
/// The Unix socket the CLI talks to the daemon over.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/snowtrail/control.sock";
/// The file read when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/snowtrail/config.toml";
/// Prometheus metrics listener.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// Ports whose connections are redirected to the agent.
pub const DEFAULT_PORTS: &[u16] = &[443];
/// The proxy's listening port: privileged on purpose, so no unprivileged process can take it while
/// the daemon is down.
pub const DEFAULT_LISTEN_PORT: u16 = 943;
/// Where programs, maps and links are pinned so that they outlive the daemon.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/snowtrail";
/// Entries of each connection-tracking map in the kernel.
pub const DEFAULT_MAX_TRACKED: u32 = snowtrail_common::DEFAULT_MAX_CONNECTIONS;
/// How long the proxy waits for the original destination to accept a connection.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// A proxied connection with no bytes either way for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 900;
/// How long a stopping daemon lets open connections finish before closing them.
pub const DEFAULT_DRAIN_TIMEOUT_S: u64 = 10;
/// Size of each direction's copy buffer.
pub const DEFAULT_BUFFER_BYTES: usize = 64 * 1024;
/// Connections served at once; further ones wait in the kernel's accept queue.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Connections one enrollment may have served at once: a quarter of all.
pub const DEFAULT_MAX_CONNECTIONS_PER_ENROLLMENT: usize = DEFAULT_MAX_CONNECTIONS / 4;
/// How long the proxy waits for a client's whole ClientHello before it refuses the connection.
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 5_000;
/// How long each TLS handshake may take.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// How long a client may take to send a request's headers.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 30_000;
/// How long a chunked result's event waits for its chunk downloads.
pub const DEFAULT_CHUNK_WAIT_S: u64 = 300;
/// Default `proxy.transfer_quiet_ms`.
pub const DEFAULT_TRANSFER_QUIET_MS: u64 = 10_000;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The text is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file, or `<inline>`.
        path: String,
        /// What the parser said, including the key and line.
        message: String,
    },
    /// The values parse but do not make sense together.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The file, or `<inline>`.
        path: String,
        /// Which key is wrong and why.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Enrollments, CA, journal.
    pub state_dir: PathBuf,
    /// Hourly Parquet files.
    pub audit_dir: PathBuf,
    /// Recorded results, encrypted (its own Parquet table; never under `audit_dir`).
    pub recording_dir: PathBuf,
    /// The CLI's Unix socket; only root may open it.
    pub control_socket: PathBuf,
    /// On a clean stop, detach the programs so enrolled traffic goes direct (a crash stays closed).
    pub fail_open: bool,
    /// What to do with statements while the audit cannot be written.
    pub on_audit_failure: OnAuditFailure,
    /// Replace every SQL string literal in the audit, not only credentials.
    pub redact_literals: bool,
    /// Reserved for the Prometheus metrics endpoint: parsed and validated so configurations can
    /// carry it, but nothing listens on it yet.
    pub metrics_listen: SocketAddr,
    /// Kernel redirection.
    pub redirect: RedirectSection,
    /// The proxy's connection handling.
    pub proxy: ProxySection,
    /// TLS interception.
    pub tls: TlsSection,
    /// How much the proxy buffers to inspect.
    pub limits: LimitsSection,
    /// The audit writer.
    pub audit: AuditConfig,
    /// The policy rule file.
    pub policy: PolicySection,
    /// Human identity: trusted OIDC issuers and what an invalid or missing login token means.
    pub oidc: crate::identity::oidc::OidcConfig,
    /// Credential brokering: workloads whose logins the agent makes with a key pair it holds.
    pub broker: crate::broker::BrokerConfig,
    /// Session recording: the results statements returned, encrypted to a recipient key.
    pub recording: crate::recording::RecordingConfig,
}

/// How often the daemon looks at the policy file for changes.
pub const DEFAULT_POLICY_POLL_MS: u64 = 1_000;

/// The `[policy]` section: which rule file the daemon enforces.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// The rule file (TOML, see `snowtrail policy check`); without one every statement is allowed.
    /// An invalid file stops the daemon from starting; an invalid change while running is
    /// rejected and the previous rules stay in force.
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes, in milliseconds (SIGHUP reloads at once).
    pub poll_ms: u64,
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            file: None,
            poll_ms: DEFAULT_POLICY_POLL_MS,
        }
    }
}

/// Largest request body (login, statement) inspected; larger ones are refused (docs/decisions.md §2).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Largest response body buffered for inspection; larger ones stream on, flagged `uninspected`.
pub const DEFAULT_MAX_RESPONSE_INSPECT_BYTES: usize = 64 * 1024 * 1024;
/// Memory all inspection buffers share, so memory stays bounded at any concurrency.
pub const DEFAULT_INSPECT_BUDGET_BYTES: usize = 512 * 1024 * 1024;
/// The most of that memory one workload may hold: a quarter.
pub const DEFAULT_INSPECT_BUDGET_PER_WORKLOAD_BYTES: usize = DEFAULT_INSPECT_BUDGET_BYTES / 4;
/// How long an inspection waits for its share of that memory.
pub const DEFAULT_INSPECT_WAIT_MS: u64 = 10_000;

/// The `[limits]` section: bounds on what the proxy holds in memory to inspect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest inspected request body, decoded.
    pub max_request_bytes: usize,
    /// Largest response body buffered for inspection.
    pub max_response_inspect_bytes: usize,
    /// Memory all inspections share; when it is spent, new inspections wait.
    pub inspect_budget_bytes: usize,
    /// The most of it one workload's inspections may hold at once (its share), so that one
    /// workload's slow or large bodies cannot take all of it.
    pub inspect_budget_per_workload_bytes: usize,
    /// How long an inspection waits for its share of the budget, in milliseconds: past it, a
    /// request is refused with a Snowflake error and a response streams on uninspected.
    pub inspect_wait_ms: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_inspect_bytes: DEFAULT_MAX_RESPONSE_INSPECT_BYTES,
            inspect_budget_bytes: DEFAULT_INSPECT_BUDGET_BYTES,
            inspect_budget_per_workload_bytes: DEFAULT_INSPECT_BUDGET_PER_WORKLOAD_BYTES,
            inspect_wait_ms: DEFAULT_INSPECT_WAIT_MS,
        }
    }
}

/// What to do with a connection on an intercepted port that cannot be identified: no SNI, or not
/// TLS at all. A ClientHello that does not arrive whole in time is refused whatever this says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unidentified {
    /// Refuse it (a reset), and audit it; `tls.allow_unverified` names the exceptions.
    #[default]
    Deny,
    /// Carry it to its destination untouched, and audit it. This lets a workload reach any
    /// destination on an intercepted port unread, Snowflake included (by address, without SNI).
    Passthrough,
}

/// The `[tls]` section: which connections are terminated and whom the agent trusts upstream.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM files trusted upstream besides the system roots (never the agent's own CA). They are
    /// also trusted when the agent checks where a passed-through connection leads.
    pub upstream_extra_roots: Vec<PathBuf>,
    /// Hosts terminated besides Snowflake's own: exact names or `*.domain`.
    pub intercept_hosts: Vec<String>,
    /// Connections without SNI, or not TLS at all, on an intercepted port.
    pub unidentified: Unidentified,
    /// Destinations the operator vouches for: connections to them on an intercepted port are
    /// passed through when the agent cannot identify them (no SNI, not TLS, a ClientHello that
    /// never came whole) or cannot check the server's certificate for the name asked. A
    /// connection to them that names an intercepted host is still intercepted.
    pub allow_unverified: Vec<Destination>,
}

/// The `[redirect]` section: which connections the kernel sends to the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectSection {
    /// Destination ports whose TCP connections from enrolled cgroups are redirected.
    pub ports: Vec<u16>,
    /// Ports of HTTP proxies (what `HTTPS_PROXY` names) whose connections from enrolled cgroups are
    /// redirected too: the agent reads each CONNECT and intercepts the TLS inside a tunnel to a
    /// Snowflake host.
    pub proxy_ports: Vec<u16>,
    /// The proxy's listening port on 127.0.0.1 and ::1.
    pub listen_port: u16,
    /// bpffs directory for pinned maps and links.
    pub pin_dir: PathBuf,
    /// Entries of each LRU connection map in the kernel.
    pub max_tracked_connections: u32,
    /// Egress lockdown for every enrollment (`enroll --lockdown` asks it for one).
    pub lockdown: bool,
    /// Destinations a locked-down cgroup may reach besides the intercepted and proxy ports (the
    /// host's DNS resolvers from `/etc/resolv.conf`, port 53, are added).
    pub lockdown_allow: Vec<Destination>,
}

/// What becomes of an HTTP request to a Snowflake host that is neither a login nor a statement the
/// agent reads (Snowflake's REST resource APIs, endpoints it does not know).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownRequests {
    /// Forward it, and record it as a `request` event.
    #[default]
    Record,
    /// Refuse it with a Snowflake-shaped error, and record a denial; nothing is forwarded.
    Deny,
}

/// The `[proxy]` section: limits on each proxied connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    /// Upstream connect timeout in milliseconds.
    pub connect_timeout_ms: u64,
    /// Idle timeout in seconds (no bytes either way).
    pub idle_timeout_s: u64,
    /// Grace period for open connections when the daemon stops, in seconds.
    pub drain_timeout_s: u64,
    /// Passthrough buffer per direction in bytes: the size of the splice(2) pipe, or of the
    /// user-space copy where no pipe can be had.
    pub buffer_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one enrollment may have served at once; more are refused, so that one
    /// workload cannot take every slot.
    pub max_connections_per_enrollment: usize,
    /// Wait for the client's whole ClientHello, in milliseconds; a connection whose ClientHello
    /// has not arrived by then is refused.
    pub hello_timeout_ms: u64,
    /// TLS handshake timeout on either side, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// How long a client may take to send an HTTP/1.1 request's headers, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// How long a chunked result's event waits for the chunk downloads before it is recorded
    /// with the flag `chunks_unseen`, in seconds; also how long a statement whose result the
    /// driver fetches by a request of its own (an async statement that ended, each statement of
    /// a multi-statement request) waits for that fetch.
    pub chunk_wait_s: u64,
    /// How long a PUT/GET statement's transfers must have been idle before its event is
    /// recorded with their totals, in milliseconds (a driver pauses between files while it
    /// compresses the next one).
    pub transfer_quiet_ms: u64,
    /// Requests to a Snowflake host that are neither a login nor a statement the agent reads:
    /// recorded and forwarded, or refused.
    pub unknown_requests: UnknownRequests,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: DEFAULT_STATE_DIR.into(),
            audit_dir: DEFAULT_AUDIT_DIR.into(),
            recording_dir: DEFAULT_RECORDING_DIR.into(),
            control_socket: DEFAULT_CONTROL_SOCKET.into(),
            fail_open: false,
            on_audit_failure: OnAuditFailure::default(),
            redact_literals: false,
            metrics_listen: DEFAULT_METRICS_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9464))),
            redirect: RedirectSection::default(),
            proxy: ProxySection::default(),
            tls: TlsSection::default(),
            limits: LimitsSection::default(),
            audit: AuditConfig::default(),
            policy: PolicySection::default(),
            oidc: crate::identity::oidc::OidcConfig::default(),
            broker: crate::broker::BrokerConfig::default(),
            recording: crate::recording::RecordingConfig::default(),
        }
    }
}

impl Default for RedirectSection {
    fn default() -> Self {
        RedirectSection {
            ports: DEFAULT_PORTS.to_vec(),
            proxy_ports: Vec::new(),
            listen_port: DEFAULT_LISTEN_PORT,
            pin_dir: DEFAULT_PIN_DIR.into(),
            max_tracked_connections: DEFAULT_MAX_TRACKED,
            lockdown: false,
            lockdown_allow: Vec::new(),
        }
    }
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            idle_timeout_s: DEFAULT_IDLE_TIMEOUT_S,
            drain_timeout_s: DEFAULT_DRAIN_TIMEOUT_S,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_enrollment: DEFAULT_MAX_CONNECTIONS_PER_ENROLLMENT,
            hello_timeout_ms: DEFAULT_HELLO_TIMEOUT_MS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            chunk_wait_s: DEFAULT_CHUNK_WAIT_S,
            transfer_quiet_ms: DEFAULT_TRANSFER_QUIET_MS,
            unknown_requests: UnknownRequests::default(),
        }
    }
}

impl Config {
    /// Reads `path`; a missing file at the default location means "all defaults", a missing file the
    /// user named is an error.
    pub fn load(path: Option<&Path>) -> Result<Config, Error> {
        let (path, explicit) = match path {
            Some(p) => (p.to_owned(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::from_toml(&text, &path.display().to_string()),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            Err(e) => Err(Error::Read(path, e)),
        }
    }

    /// Parses and checks configuration text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, Error> {
        let cfg: Config = toml::from_str(text).map_err(|e| Error::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        cfg.validate().map_err(|message| Error::Invalid {
            path: origin.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    /// Checks what the types alone cannot.
    fn validate(&self) -> Result<(), String> {
        let r = &self.redirect;
        if r.ports.is_empty() {
            return Err("redirect.ports is empty: nothing would be intercepted".into());
        }
        if r.ports.contains(&0) {
            return Err("redirect.ports contains 0".into());
        }
        if r.listen_port == 0 {
            return Err("redirect.listen_port must not be 0".into());
        }
        if r.ports.contains(&r.listen_port) || r.proxy_ports.contains(&r.listen_port) {
            return Err(format!(
                "redirect.listen_port {} is also an intercepted port",
                r.listen_port
            ));
        }
        if r.proxy_ports.contains(&0) {
            return Err("redirect.proxy_ports contains 0".into());
        }
        if let Some(p) = r.proxy_ports.iter().find(|p| r.ports.contains(p)) {
            return Err(format!(
                "port {p} is in both redirect.ports and redirect.proxy_ports: a connection to it is TLS or a proxy's, not both"
            ));
        }
        let l = &self.limits;
        if l.inspect_budget_per_workload_bytes < l.max_request_bytes
            || l.inspect_budget_per_workload_bytes > l.inspect_budget_bytes
        {
            return Err(format!(
                "limits.inspect_budget_per_workload_bytes must be between limits.max_request_bytes ({}) and limits.inspect_budget_bytes ({})",
                l.max_request_bytes, l.inspect_budget_bytes
            ));
        }
        if self.proxy.max_connections_per_enrollment == 0 {
            return Err("proxy.max_connections_per_enrollment must be at least 1".into());
        }
        if r.max_tracked_connections < 16 {
            return Err("redirect.max_tracked_connections must be at least 16".into());
        }
        if self.audit.max_sql_bytes < crate::audit::MIN_MAX_SQL_BYTES {
            return Err(format!(
                "audit.max_sql_bytes must be at least {}",
                crate::audit::MIN_MAX_SQL_BYTES
            ));
        }
        self.oidc.validate()?;
        self.broker.validate()?;
        self.recording.validate()?;
        if self.policy.poll_ms < 50 {
            return Err("policy.poll_ms must be at least 50".into());
        }
        if let Some(f) = &self.policy.file
            && !f.is_absolute()
        {
            return Err(format!(
                "policy.file must be an absolute path, got {}",
                f.display()
            ));
        }
        let p = &self.proxy;
        if p.buffer_bytes < 1024 || p.buffer_bytes > 16 * 1024 * 1024 {
            return Err("proxy.buffer_bytes must be between 1 KiB and 16 MiB".into());
        }
        if p.max_connections == 0 {
            return Err("proxy.max_connections must be at least 1".into());
        }
        if p.connect_timeout_ms == 0 || p.idle_timeout_s == 0 {
            return Err("proxy timeouts must be greater than 0".into());
        }
        for (key, dir) in [
            ("state_dir", &self.state_dir),
            ("audit_dir", &self.audit_dir),
            ("recording_dir", &self.recording_dir),
        ] {
            if !dir.is_absolute() {
                return Err(format!(
                    "{key} must be an absolute path, got {}",
                    dir.display()
                ));
            }
        }
        if self.recording.recipient.is_some() && self.recording_dir.starts_with(&self.audit_dir) {
            return Err(format!(
                "recording_dir {} must not be under audit_dir {}: readers of the audit would read recordings",
                self.recording_dir.display(),
                self.audit_dir.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let cfg = Config::from_toml("", "t").unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.redirect.ports, vec![443]);
        assert_eq!(cfg.redirect.listen_port, 943);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[redirect]\nportz = [443]\n", "t").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("portz"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn sections_override_defaults() {
        let cfg = Config::from_toml(
            "fail_open = true\n[redirect]\nports = [443, 8443]\nlisten_port = 20943\n",
            "t",
        )
        .unwrap();
        assert!(cfg.fail_open);
        assert_eq!(cfg.redirect.ports, vec![443, 8443]);
        assert_eq!(cfg.redirect.listen_port, 20943);
        assert_eq!(cfg.proxy, ProxySection::default());
    }

    #[test]
    fn listen_port_cannot_be_intercepted() {
        let err = Config::from_toml("[redirect]\nports = [943]\n", "t").unwrap_err();
        assert!(err.to_string().contains("also an intercepted port"));
    }

    #[test]
    fn proxy_ports_are_their_own() {
        let cfg = Config::from_toml("[redirect]\nproxy_ports = [3128, 8080]\n", "t").unwrap();
        assert_eq!(cfg.redirect.proxy_ports, vec![3128, 8080]);
        assert!(Config::default().redirect.proxy_ports.is_empty());
        for (text, says) in [
            (
                "[redirect]\nproxy_ports = [443]\n",
                "both redirect.ports and",
            ),
            (
                "[redirect]\nproxy_ports = [943]\n",
                "also an intercepted port",
            ),
            ("[redirect]\nproxy_ports = [0]\n", "proxy_ports contains 0"),
        ] {
            let err = Config::from_toml(text, "t").unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn wrong_type_is_an_error() {
        assert!(Config::from_toml("fail_open = \"yes\"\n", "t").is_err());
    }
}
