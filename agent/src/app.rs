//! The one place where the daemon is wired together: config in, running subsystems out.
//!
//! [`build`] starts everything in order (audit, enrollments, listeners, kernel programs, control
//! socket) and returns an [`App`] holding what it bound and the handle that stops it, so tests can
//! run the real daemon in-process. Start-up fails as a whole: a daemon that cannot listen, load its
//! programs or write its audit does not start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::audit::{
    AuditWriter, Event, EventKind, EventSink, LifecycleAction, SystemClock, WriterOptions,
    WriterTask,
};
use crate::config::Config;
use crate::control::handler::DaemonHandler;
use crate::enroll::Registry;
use crate::proxy::exchange::context::Shared;
use crate::proxy::{self, Inputs, Proxy, ProxyStats};
use crate::redirect::{Redirect, RedirectConfig};

/// What the daemon bound, for callers and tests.
#[derive(Debug, Clone)]
pub struct Bound {
    /// The proxy's listening addresses.
    pub proxy: Vec<SocketAddr>,
    /// The control socket.
    pub control_socket: PathBuf,
}

/// A running daemon.
pub struct App {
    bound: Bound,
    config: Config,
    shutdown: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    control_task: JoinHandle<()>,
    sweeper_task: JoinHandle<()>,
    policy_task: JoinHandle<()>,
    redirect: Arc<RwLock<Redirect>>,
    sink: Arc<dyn EventSink>,
    writer_task: WriterTask,
    recording_task: Option<(
        crate::recording::RecordingTask,
        Arc<std::sync::atomic::AtomicUsize>,
    )>,
    host: String,
    signals: Signals,
}

/// The stop signals the daemon listens for.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Starts the daemon.
pub async fn build(config: Config) -> anyhow::Result<App> {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    // Catch SIGTERM/SIGINT from the first moment: one that arrives while starting must stop the
    // daemon cleanly, not kill it with the default action.
    let signals = Signals::new()?;
    create_private_dir(&config.state_dir)?;
    std::fs::create_dir_all(&config.audit_dir)
        .with_context(|| format!("cannot create audit_dir {}", config.audit_dir.display()))?;
    let host = host_name();
    info!(config = %serde_json::to_string(&config).unwrap_or_default(), "effective configuration");

    // The audit comes first: recovery turns what a previous run left in the journal into Parquet
    // before any new traffic is served.
    let (writer, writer_task) = AuditWriter::start(WriterOptions {
        state_dir: config.state_dir.clone(),
        audit_dir: config.audit_dir.clone(),
        host: host.clone(),
        config: config.audit.clone(),
        on_failure: config.on_audit_failure,
        clock: Arc::new(SystemClock),
        recordings_dir: config
            .recording
            .recipient
            .is_some()
            .then(|| config.recording_dir.clone()),
    })
    .await
    .context("cannot start the audit writer")?;
    // Recording (docs/decisions.md §21): on once a recipient is configured. Its files are named in the
    // audit's digest chain.
    let (recorder, recording_task) = match &config.recording.recipient {
        Some(recipient) => {
            let (w, task) =
                crate::recording::RecordingWriter::start(crate::recording::WriterOptions {
                    dir: config.recording_dir.clone(),
                    host: host.clone(),
                    recipient: crate::recording::keys::parse_recipient(recipient)?,
                    max_file_age: config.audit.max_file_age_s.map(Duration::from_secs),
                    on_publish: Some(writer.recordings_hook()),
                    clock: Arc::new(SystemClock),
                })
                .with_context(|| {
                    format!(
                        "cannot start the recordings writer in {}",
                        config.recording_dir.display()
                    )
                })?;
            info!(recipient = %recipient, dir = %config.recording_dir.display(), "recording statement results");
            let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            (
                Some(proxy::exchange::state::Recorder {
                    writer: w,
                    config: config.recording.clone(),
                    in_flight: in_flight.clone(),
                }),
                Some((task, in_flight)),
            )
        }
        None => {
            info!("recording is off: no recording.recipient configured");
            (None, None)
        }
    };
    let audit_stats = writer.clone();
    let sink: Arc<dyn EventSink> = Arc::new(writer);
    // The policy: an invalid rule file stops the start, naming its line.
    let policy = Arc::new(match &config.policy.file {
        Some(path) => crate::enforce::LivePolicy::load(path)?,
        None => crate::enforce::LivePolicy::none(),
    });
    if let Some(p) = policy.current() {
        info!(
            rules = p.rules().len(),
            default = p.default_action().name(),
            "policy loaded"
        );
        if p.shapes_results() {
            warn!(
                "the policy masks columns or limits rows: results of matching statements are rewritten, and the storage hosts serving their result chunks are intercepted for enrolled workloads"
            );
        }
    }
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let holds = Arc::new(proxy::exchange::holds::Holds::new(sink.clone()));
    let (ca, _) =
        crate::tls::Ca::init(&config.state_dir, &host).context("cannot set up the agent's CA")?;
    let ca = Arc::new(ca);
    let upstream_roots = Arc::new(
        crate::tls::upstream::roots(ca.cert_der(), &config.tls.upstream_extra_roots)
            .context("cannot load the upstream trust roots")?,
    );
    let oidc = Arc::new(crate::identity::oidc::Verifier::new(
        &config.oidc,
        upstream_roots.clone(),
    )?);
    let tls = proxy::transport::tls::TlsInputs::new(
        Arc::new(crate::tls::LeafResolver::new(ca.clone())?),
        upstream_roots.clone(),
        Duration::from_millis(config.proxy.handshake_timeout_ms),
        Duration::from_millis(config.proxy.header_read_timeout_ms),
    )?;
    let vouch = Arc::new(proxy::transport::vouch::Vouch::new(
        upstream_roots,
        Duration::from_millis(config.proxy.connect_timeout_ms),
        Duration::from_millis(config.proxy.handshake_timeout_ms),
    )?);

    let mount = crate::cgroup::mount_point()?;
    let agent_cgroup = crate::cgroup::cgroup_of(None)?;
    let agent_cgroup_dir = mount.join(agent_cgroup.strip_prefix("/").unwrap_or(&agent_cgroup));
    let registry = Arc::new(RwLock::new(Registry::open(&mount, &config.state_dir)?));

    // The listeners exist before the programs redirect anything to them.
    let listeners = proxy::transport::listener::bind(config.redirect.listen_port)?;
    let redirect = Redirect::start(
        &RedirectConfig {
            ports: config
                .redirect
                .ports
                .iter()
                .chain(&config.redirect.proxy_ports)
                .copied()
                .collect(),
            pin_dir: config.redirect.pin_dir.clone(),
            max_connections: config.redirect.max_tracked_connections,
        },
        config.redirect.listen_port,
        &agent_cgroup_dir,
    )
    .context("cannot load the kernel programs")?;
    let mut redirect = redirect;
    redirect
        .allow(&lockdown_allowed(&config))
        .context("cannot write the lockdown's allowed destinations")?;
    let denials = redirect
        .take_denials()
        .context("cannot read the lockdown's refusals")?;
    let redirect = Arc::new(RwLock::new(redirect));

    let broker = Arc::new(crate::broker::Broker::new(&config.broker));
    if !config.broker.identities.is_empty() {
        info!(identities = ?config.broker.identities.keys().collect::<Vec<_>>(), "credential brokering on");
    }
    let stats = Arc::new(ProxyStats::default());
    let inputs = Arc::new(Inputs {
        redirect: redirect.clone(),
        registry: registry.clone(),
        sink: sink.clone(),
        config: config.proxy.clone(),
        host: host.clone(),
        stats: stats.clone(),
        tls: Some(Arc::new(tls)),
        unidentified: config.tls.unidentified,
        proxy_ports: config.redirect.proxy_ports.clone(),
        allow_unverified: config.tls.allow_unverified.clone(),
        vouch,
        exchanges: Arc::new(proxy::exchange::router::Router::new(Arc::new(Shared {
            sink: sink.clone(),
            tracker: proxy::exchange::state::Tracker::default(),
            hosts: crate::snowflake::hosts::HostMatcher::new(&config.tls.intercept_hosts),
            limits: proxy::exchange::context::Limits {
                budget: proxy::transport::body::Budget::with_wait(
                    config.limits.inspect_budget_bytes,
                    Duration::from_millis(config.limits.inspect_wait_ms),
                ),
                workload_share: config.limits.inspect_budget_per_workload_bytes,
                shares: Arc::default(),
                max_request_bytes: config.limits.max_request_bytes,
                max_response_inspect_bytes: config.limits.max_response_inspect_bytes,
            },
            redact: if config.redact_literals {
                crate::snowflake::RedactMode::AllLiterals
            } else {
                crate::snowflake::RedactMode::Credentials
            },
            durability: config.audit.durability,
            on_audit_failure: config.on_audit_failure,
            chunk_wait: Duration::from_secs(config.proxy.chunk_wait_s),
            transfer_quiet: Duration::from_millis(config.proxy.transfer_quiet_ms),
            policy: policy.clone(),
            holds: holds.clone(),
            oidc,
            broker,
            recorder,
            unknown_requests: config.proxy.unknown_requests,
        }))),
        identity: Arc::new(crate::identity::Resolver::new(
            crate::identity::DEFAULT_CACHE_ENTRIES,
        )),
    });
    let denials_inputs = inputs.clone();
    let proxy = Proxy::new(listeners, inputs)?;
    let proxy_addrs = proxy.addresses();

    let handler = Arc::new(DaemonHandler {
        registry,
        redirect: redirect.clone(),
        agent_cgroup: agent_cgroup.to_string_lossy().into_owned(),
        stats,
        listen: proxy_addrs.iter().map(ToString::to_string).collect(),
        started,
        ca_bundle: ca.bundle_path(),
        holds,
        audit: Some(audit_stats),
        digests: Some(crate::control::handler::DigestWatch {
            state_dir: config.state_dir.clone(),
            interval: Duration::from_secs(config.audit.digest_interval_s),
            started: started_at,
        }),
        lockdown_all: config.redirect.lockdown,
    });
    handler.restore();

    let control = crate::control::server::bind(&config.control_socket)?;
    let (shutdown, shutdown_rx) = crate::drain::channel();
    let control_task = tokio::spawn(crate::control::server::serve(
        control,
        handler.clone(),
        shutdown_rx.clone(),
    ));
    let proxy_task = tokio::spawn(proxy.run(shutdown_rx.clone()));
    if let Some(ring) = denials {
        // Ends with the shutdown signal; nothing waits for it.
        drop(tokio::spawn(proxy::transport::denials::record(
            ring,
            denials_inputs,
            shutdown_rx.clone(),
        )));
    }
    let policy_task = tokio::spawn(crate::enforce::watch(
        policy,
        sink.clone(),
        host.clone(),
        Duration::from_millis(config.policy.poll_ms),
        hangup,
        shutdown_rx.clone(),
    ));
    let sweeper_task = {
        let mut stop = shutdown_rx;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let h = handler.clone();
                        let _ = tokio::task::spawn_blocking(move || h.sweep()).await;
                    }
                    _ = crate::drain::signalled(&mut stop) => return,
                }
            }
        })
    };

    let app = App {
        bound: Bound {
            proxy: proxy_addrs,
            control_socket: config.control_socket.clone(),
        },
        config,
        shutdown,
        proxy_task,
        control_task,
        sweeper_task,
        policy_task,
        redirect,
        sink,
        writer_task,
        recording_task,
        host,
        signals,
    };
    app.lifecycle(LifecycleAction::Start, None).await;
    info!(listen = ?app.bound.proxy, control = %app.bound.control_socket.display(), "snowtrail is running");
    notify_systemd("READY=1");
    crate::alloc::started();
    Ok(app)
}

impl App {
    /// What the daemon bound.
    pub fn bound(&self) -> &Bound {
        &self.bound
    }

    /// Records a lifecycle event (start, stop, ...).
    async fn lifecycle(&self, action: LifecycleAction, detail: Option<String>) {
        let mut e = Event::new(EventKind::Lifecycle, SystemTime::now(), &self.host);
        e.lifecycle_action = Some(action);
        e.pid = Some(std::process::id());
        e.detail = detail;
        if let Err(err) = self.sink.submit(e).await {
            warn!(error = %err, action = action.as_str(), "lifecycle event not recorded");
        }
    }

    /// Waits for SIGTERM or SIGINT, then stops.
    pub async fn run_until_signalled(mut self) -> anyhow::Result<()> {
        let which = tokio::select! {
            _ = self.signals.term.recv() => "SIGTERM",
            _ = self.signals.int.recv() => "SIGINT",
        };
        info!(signal = which, "stopping");
        self.stop().await
    }

    /// Stops accepting, drains connections, then leaves the kernel programs pinned (fail closed) or
    /// detaches them (`fail_open`).
    pub async fn stop(self) -> anyhow::Result<()> {
        notify_systemd("STOPPING=1");
        let _ = self.shutdown.send(true);
        let _ = self.control_task.await;
        let _ = self.sweeper_task.await;
        let _ = self.policy_task.await;
        let _ = self.proxy_task.await;
        let _ = std::fs::remove_file(&self.config.control_socket);
        let detach = self.config.fail_open;
        // A control connection answered just before the signal may still be finishing and
        // holding the programs for a moment; wait for it rather than fail the stop.
        let mut shared = self.redirect;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let redirect = loop {
            match Arc::try_unwrap(shared) {
                Ok(r) => break r,
                Err(still) if std::time::Instant::now() < deadline => {
                    shared = still;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => anyhow::bail!("kernel programs still in use at shutdown"),
            }
        };
        let redirect = redirect
            .into_inner()
            .map_err(|_| anyhow::anyhow!("redirect lock poisoned"))?;
        redirect.shutdown(detach)?;
        info!(
            mode = if detach {
                "fail-open: programs detached"
            } else {
                "fail-closed: programs stay pinned"
            },
            "stopped"
        );
        let mut e = Event::new(EventKind::Lifecycle, SystemTime::now(), &self.host);
        e.lifecycle_action = Some(LifecycleAction::Stop);
        e.pid = Some(std::process::id());
        if let Err(err) = self.sink.submit(e).await {
            warn!(error = %err, "stop event not recorded");
        }
        drop(self.sink);
        // Recordings first: their last files must be closed before the audit writer's
        // shutdown digest, which names them.
        if let Some((task, in_flight)) = self.recording_task {
            let report = task.shutdown().await;
            info!(?report, "recordings closed");
            // Audit rows that waited for their recording go in before the audit closes.
            for _ in 0..100 {
                if in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let report = self
            .writer_task
            .shutdown()
            .await
            .context("audit writer shutdown")?;
        info!(?report, "audit closed");
        Ok(())
    }
}

/// This host's name, for events and the CA's name.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Makes a directory readable by root only.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create state_dir {}", dir.display()))
}

/// Tells systemd the daemon's state (`READY=1` once it serves, `STOPPING=1` when a stop begins),
/// when it runs under a `Type=notify` unit: one datagram to `$NOTIFY_SOCKET` (a path, or an
/// abstract name after `@`), the whole of the sd_notify protocol the daemon needs.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = result {
        warn!(error = %e, state, "could not notify systemd");
    }
}

/// What a locked-down cgroup may reach besides the intercepted and proxy ports:
/// `redirect.lockdown_allow`, and port 53 of the name servers in `/etc/resolv.conf`.
fn lockdown_allowed(config: &Config) -> Vec<crate::redirect::Allowed> {
    let mut allowed: Vec<crate::redirect::Allowed> = config
        .redirect
        .lockdown_allow
        .iter()
        .map(|d| crate::redirect::Allowed {
            net: d.net(),
            prefix: d.prefix(),
            port: d.port(),
        })
        .collect();
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for ip in crate::config::destination::resolvers(&resolv) {
        allowed.push(crate::redirect::Allowed {
            net: ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
            port: Some(53),
        });
    }
    allowed
}
