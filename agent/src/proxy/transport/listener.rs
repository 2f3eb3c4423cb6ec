//! The proxy's listeners: accept redirected connections, find their origin record, attribute them to
//! an enrollment, decide from the first bytes (the TLS ClientHello's server name) whether the
//! connection is intercepted ([`tls`]) or passed through ([`passthrough`]), and record the
//! connection's event. Also the drain on shutdown.
//!
//! Which server names are intercepted is the layer above's to say
//! ([`ExchangeHandler::intercepts`](super::ExchangeHandler::intercepts)), as is everything said on
//! an intercepted connection; a connection without an origin record is refused: the agent must
//! never be an open relay.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument as _, debug, info, info_span, warn};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::passthrough::{self, CloseReason};
use super::replay::Prefixed;
use super::tls;
use super::tunnel::{self, Tunnel};
use super::vouch::Unvouched;
use crate::audit::{ConnectionMode, Decision, Event, EventKind, Flag};
use crate::config::{Unidentified, destination};
use crate::proxy::{Error, Inputs};
use crate::redirect::{ORIGIN_GUARDED, Origin};
use crate::tls::client_hello::{self, MAX_HELLO, Peeked};

/// The accepting side of the proxy.
pub struct Proxy {
    listeners: Vec<TcpListener>,
    inputs: Arc<Inputs>,
    next_id: AtomicU64,
}

/// Binds the proxy's listening sockets: `127.0.0.1:port` (required) and `[::1]:port` (IPv6 only;
/// skipped with a warning where the host has no IPv6).
pub fn bind(port: u16) -> Result<Vec<std::net::TcpListener>, Error> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut out = vec![listen(v4).map_err(|e| Error::Bind(v4, e))?];
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    match listen(v6) {
        Ok(l) => out.push(l),
        Err(e) => {
            warn!(addr = %v6, error = %e, "no IPv6 listener; IPv6 connections of enrolled workloads will be refused")
        }
    }
    Ok(out)
}

fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let s = TcpSocket::new_v6()?;
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6V6Only, &true)
                .map_err(std::io::Error::from)?;
            s
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let l = socket.listen(1024)?;
    l.into_std()
}

impl Proxy {
    /// Takes bound listeners (see [`bind`]) and the shared inputs.
    pub fn new(
        listeners: Vec<std::net::TcpListener>,
        inputs: Arc<Inputs>,
    ) -> std::io::Result<Proxy> {
        let listeners = listeners
            .into_iter()
            .map(|l| {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Proxy {
            listeners,
            inputs,
            next_id: AtomicU64::new(1),
        })
    }

    /// The addresses the proxy listens on.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Accepts until `shutdown` turns true, then lets open connections finish for the drain timeout
    /// and closes the rest.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let max = this.inputs.config.max_connections;
        let permits = Arc::new(Semaphore::new(max));
        let (force_tx, force_rx) = crate::drain::channel();
        let mut accepts = Vec::new();
        for i in 0..this.listeners.len() {
            let this = this.clone();
            let permits = permits.clone();
            let force_rx = force_rx.clone();
            let mut stop = shutdown.clone();
            accepts.push(tokio::spawn(async move {
                let listener = &this.listeners[i];
                loop {
                    let permit = tokio::select! {
                        p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                        _ = crate::drain::signalled(&mut stop) => return,
                    };
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = crate::drain::signalled(&mut stop) => return,
                    };
                    match accepted {
                        Ok((stream, peer)) => {
                            let id = this.next_id.fetch_add(1, Ordering::Relaxed);
                            let inputs = this.inputs.clone();
                            let force = force_rx.clone();
                            let span = info_span!("conn", id, peer = %peer);
                            tokio::spawn(
                                async move {
                                    serve(id, stream, peer, inputs, force).await;
                                    drop(permit);
                                }
                                .instrument(span),
                            );
                        }
                        Err(e) => {
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }));
        }
        let _ = shutdown.wait_for(|s| *s).await;
        for a in accepts {
            let _ = a.await;
        }
        let this_open = this.inputs.stats.open();
        let drain = Duration::from_secs(this.inputs.config.drain_timeout_s);
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        info!(
            open = this_open,
            timeout_s = drain.as_secs(),
            "draining connections"
        );
        if tokio::time::timeout(drain, permits.acquire_many(all))
            .await
            .is_err()
        {
            warn!(
                open = this.inputs.stats.open(),
                "drain timeout; closing remaining connections"
            );
            let _ = force_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), permits.acquire_many(all)).await;
        }
        // Dropping the listeners now closes the port; with fail-closed pins, enrolled clients are refused.
    }
}

/// Serves one accepted connection from start to its audit event.
async fn serve(
    id: u64,
    client: TcpStream,
    peer: SocketAddr,
    inputs: Arc<Inputs>,
    force: watch::Receiver<bool>,
) {
    let stats = &inputs.stats;
    stats.total.fetch_add(1, Ordering::Relaxed);
    let origin = crate::sync::read(&inputs.redirect).lookup(client.as_fd());
    let origin = match origin {
        Ok(Some(o)) => o,
        Ok(None) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            warn!("refused a connection with no origin record: the agent is not an open relay");
            reset(client);
            return;
        }
        Err(e) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "origin lookup failed; refusing the connection");
            reset(client);
            return;
        }
    };
    stats.open.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let event_time = SystemTime::now();
    let dst = crate::redirect::socket_addr(&origin.original_dst);
    let (mut event, attribution) = connection_event(&inputs, id, peer, dst, &origin, event_time);
    if origin.flags & ORIGIN_GUARDED != 0 {
        match (&attribution, &event.cgroup_path) {
            // A cgroup made again at an enrolled path: served like any enrolled connection; the
            // sweeper attaches its programs.
            (Some(_), _) => event.add_flag(Flag::Guarded),
            (None, Some(path)) => {
                return pass_foreign(&inputs, client, dst, &origin, path, force).await;
            }
            (None, None) => {
                warn!(
                    cgroup_id = origin.cgroup_id,
                    pid = origin.tgid,
                    "refused a guarded connection whose process is gone: its cgroup cannot be told enrolled or not"
                );
                event.add_flag(Flag::Guarded);
                event.error_message = Some(
                    "the connecting process is gone; its cgroup could not be classified".into(),
                );
                refused(&mut event, CloseReason::DeniedUnidentified, 0, client);
                return finish(&inputs, event, started).await;
            }
        }
    }
    let enrolled_cgroup = attribution.as_ref().map(|a| a.enrolled_cgroup.clone());
    debug!(dst = %dst, pid = origin.tgid, identity = ?event.workload_identity, "accepted");
    // One workload may hold at most its share of the connection slots.
    let _slot = match attribution
        .as_ref()
        .map(|a| OpenSlot::take(&a.open, inputs.config.max_connections_per_enrollment))
    {
        Some(None) => {
            warn!(identity = ?event.workload_identity, cap = inputs.config.max_connections_per_enrollment, "refused a connection over the enrollment's cap");
            refused(&mut event, CloseReason::DeniedConnectionLimit, 0, client);
            return finish(&inputs, event, started).await;
        }
        Some(Some(slot)) => Some(slot),
        None => None,
    };

    if inputs.proxy_ports.contains(&dst.port()) {
        event.add_flag(Flag::ViaProxy);
        let via = Proxied {
            inputs: &inputs,
            dst,
            cgroup_id: origin.cgroup_id,
            enrolled_cgroup: enrolled_cgroup.as_deref(),
        };
        via.serve(client, &mut event, force).await;
        return finish(&inputs, event, started).await;
    }

    let mut client = client;
    let (prefix, peeked) = read_hello(
        &mut client,
        Duration::from_millis(inputs.config.hello_timeout_ms),
    )
    .await;
    let route = match peeked {
        Peeked::Hello(hello) => {
            event.sni = hello.sni.clone();
            match (hello.sni, &inputs.tls) {
                (Some(sni), Some(_)) if inputs.exchanges.intercepts(origin.cgroup_id, &sni) => {
                    Route::Intercept(sni)
                }
                (Some(sni), _) => Route::Passthrough(Some(sni)),
                (None, _) => {
                    event.add_flag(Flag::NoSni);
                    Route::Unidentified { whole: true }
                }
            }
        }
        Peeked::NotTls => {
            event.add_flag(Flag::NotTls);
            Route::Unidentified { whole: true }
        }
        Peeked::Incomplete => {
            event.add_flag(Flag::HelloIncomplete);
            Route::Unidentified { whole: false }
        }
        Peeked::Oversized => {
            event.add_flag(Flag::HelloOversized);
            Route::Unidentified { whole: false }
        }
    };
    let route = match admit(&inputs, route, dst).await {
        Ok(route) => route,
        Err(refusal) => {
            let reason = match refusal {
                Refusal::Unidentified => {
                    warn!(dst = %dst, flags = ?event.flags, "refused a connection that could not be identified");
                    CloseReason::DeniedUnidentified
                }
                Refusal::Unverified(why) => {
                    warn!(dst = %dst, sni = ?event.sni, reason = %why, "refused a passthrough to a destination that is not the server named");
                    event.error_message = Some(why.to_string());
                    CloseReason::DeniedUnverified
                }
                Refusal::ConnectFailed(kind) => CloseReason::connect_failed(kind),
            };
            refused(&mut event, reason, prefix.len(), client);
            return finish(&inputs, event, started).await;
        }
    };
    let connect_timeout = Duration::from_millis(inputs.config.connect_timeout_ms);
    match (route, &inputs.tls) {
        (Route::Intercept(sni), Some(tls)) => {
            intercept(
                &inputs,
                &mut event,
                Prefixed::new(prefix, client),
                sni,
                dst,
                None,
                tls,
                enrolled_cgroup.as_deref(),
                force,
            )
            .await;
        }
        _ => {
            let upstream =
                match tokio::time::timeout(connect_timeout, TcpStream::connect(dst)).await {
                    Ok(Ok(s)) => Some(s),
                    Ok(Err(e)) => {
                        event.close_reason = Some(CloseReason::connect_failed(e.kind()));
                        None
                    }
                    Err(_) => {
                        event.close_reason = Some(CloseReason::ConnectTimeout);
                        None
                    }
                };
            match upstream {
                Some(upstream) => {
                    relay(&inputs, &mut event, prefix, client, upstream, force).await;
                }
                None => {
                    // Tell the client the way a refused connection would: a reset.
                    reset(client);
                    event.success = Some(false);
                    event.bytes_in = Some(0);
                    event.bytes_out = Some(0);
                }
            }
        }
    }
    finish(&inputs, event, started).await;
}

/// Carries a connection the guard sent from a cgroup no enrollment covers to where it was going,
/// untouched and unrecorded (it is not an enrolled workload's), and tells the guards to let that
/// cgroup's later connects go straight there.
async fn pass_foreign(
    inputs: &Inputs,
    client: TcpStream,
    dst: SocketAddr,
    origin: &Origin,
    cgroup_path: &str,
    force: watch::Receiver<bool>,
) {
    info!(cgroup = %cgroup_path, cgroup_id = origin.cgroup_id, "cgroup below a guarded parent is enrolled by nothing; its connects go straight out from now on");
    if let Err(e) = crate::sync::write(&inputs.redirect).mark_foreign(&[origin.cgroup_id]) {
        warn!(error = %e, "could not let the guard pass this cgroup; its connects keep coming here");
    }
    let connect_timeout = Duration::from_millis(inputs.config.connect_timeout_ms);
    let upstream = match tokio::time::timeout(connect_timeout, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => {
            reset(client);
            inputs.stats.open.fetch_sub(1, Ordering::Relaxed);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let carried = passthrough::relay(
        Vec::new(),
        client,
        upstream,
        inputs.config.buffer_bytes,
        Duration::from_secs(inputs.config.idle_timeout_s),
        force,
    )
    .await;
    debug!(bytes_in = carried.bytes_in, bytes_out = carried.bytes_out, close = %carried.reason, "foreign connection closed");
    inputs.stats.open.fetch_sub(1, Ordering::Relaxed);
}

/// A connection to an HTTP proxy's port (`redirect.proxy_ports`): what the workload asks the proxy
/// for decides what becomes of it.
///
/// - A CONNECT to an intercepted host is answered by the agent itself (`200`), the TLS inside is
///   intercepted like a direct connection's (its server name must be an intercepted one too), and
///   its exchanges go upstream through the same proxy with a CONNECT of the agent's own.
/// - A CONNECT to any other host goes on to the proxy as it was sent, and the proxy's answer back.
///   The TLS inside never names an intercepted host, and its destination proves it is the server
///   named, as for a direct passthrough (the agent's own handshake, through a tunnel of its own to
///   the same target); a target in `tls.allow_unverified` may carry anything but an intercepted
///   name.
/// - Anything else (a plain-HTTP proxy request, garbage, a head that does not arrive in time) is
///   unidentified: refused, or carried to the proxy as `tls.unidentified` says.
struct Proxied<'a> {
    inputs: &'a Inputs,
    /// The proxy's address, the connection's original destination.
    dst: SocketAddr,
    cgroup_id: u64,
    enrolled_cgroup: Option<&'a str>,
}

impl Proxied<'_> {
    async fn serve(&self, mut client: TcpStream, event: &mut Event, force: watch::Receiver<bool>) {
        let inputs = self.inputs;
        let head_timeout = Duration::from_millis(inputs.config.header_read_timeout_ms);
        let (read, req) = tunnel::read_connect(&mut client, head_timeout).await;
        let req = match req {
            Ok(req) => req,
            Err(e) => {
                event.error_message = Some(format!("proxy request: {e}"));
                let whole = matches!(e, tunnel::HeadError::NotConnect(_));
                event.add_flag(Flag::NotTls);
                if whole && inputs.unidentified == Unidentified::Passthrough {
                    return self.carry_to_proxy(client, read, event, force).await;
                }
                let _ = client
                    .write_all(&tunnel::refusal(
                        403,
                        "this proxy request cannot be audited",
                    ))
                    .await;
                return refused(event, CloseReason::DeniedUnidentified, read.len(), client);
            }
        };
        event.http_method = Some("CONNECT".into());
        event.http_path = Some(req.authority.clone());
        debug!(target = %req.authority, "CONNECT");
        match &inputs.tls {
            Some(tls) if inputs.exchanges.intercepts(self.cgroup_id, &req.host) => {
                self.intercept(client, req, tls, event, force).await;
            }
            _ => self.tunnel_through(client, req, event, force).await,
        }
    }

    /// A tunnel to an intercepted host: the agent is the far end.
    async fn intercept(
        &self,
        mut client: TcpStream,
        req: tunnel::ConnectRequest,
        tls: &tls::TlsInputs,
        event: &mut Event,
        force: watch::Receiver<bool>,
    ) {
        let inputs = self.inputs;
        if client.write_all(tunnel::ESTABLISHED).await.is_err() {
            event.success = Some(false);
            event.close_reason = Some(CloseReason::Error("client left before the tunnel".into()));
            return;
        }
        event.http_status = Some(200);
        let (prefix, peeked) = read_hello(
            &mut client,
            Duration::from_millis(inputs.config.hello_timeout_ms),
        )
        .await;
        let sni = match peeked {
            Peeked::Hello(hello) => {
                event.sni = hello.sni.clone();
                match hello.sni {
                    Some(sni) if inputs.exchanges.intercepts(self.cgroup_id, &sni) => sni,
                    Some(sni) => {
                        event.error_message = Some(format!(
                            "the tunnel to {} carries TLS for {sni}",
                            req.authority
                        ));
                        warn!(target = %req.authority, %sni, "refused a tunnel to an intercepted host whose TLS names another");
                        return refused(event, CloseReason::DeniedUnverified, prefix.len(), client);
                    }
                    None => {
                        event.add_flag(Flag::NoSni);
                        return refused(
                            event,
                            CloseReason::DeniedUnidentified,
                            prefix.len(),
                            client,
                        );
                    }
                }
            }
            other => {
                event.add_flag(unidentified_flag(other));
                return refused(event, CloseReason::DeniedUnidentified, prefix.len(), client);
            }
        };
        let via = Tunnel {
            authority: format!("{sni}:{}", req.port),
            authorization: req.authorization,
        };
        intercept(
            inputs,
            event,
            Prefixed::new(prefix, client),
            sni,
            self.dst,
            Some(via),
            tls,
            self.enrolled_cgroup,
            force,
        )
        .await;
    }

    /// A tunnel to any other host: the workload's own, through its proxy, checked at its start.
    async fn tunnel_through(
        &self,
        mut client: TcpStream,
        req: tunnel::ConnectRequest,
        event: &mut Event,
        force: watch::Receiver<bool>,
    ) {
        let inputs = self.inputs;
        let connect_timeout = Duration::from_millis(inputs.config.connect_timeout_ms);
        let Some(mut upstream) = self.connect_proxy(event, connect_timeout).await else {
            return refused(event, event_close(event), req.head.len(), client);
        };
        let answer = match async {
            upstream
                .write_all(&req.head)
                .await
                .map_err(|e| tunnel::HeadError::Io(e.to_string()))?;
            tunnel::read_answer(&mut upstream, connect_timeout).await
        }
        .await
        {
            Ok(a) => a,
            Err(e) => {
                event.error_message = Some(format!("the proxy's answer: {e}"));
                return refused(
                    event,
                    CloseReason::Error("proxy failed".into()),
                    req.head.len(),
                    client,
                );
            }
        };
        event.http_status = Some(answer.status);
        if client.write_all(&answer.bytes).await.is_err() || !(200..300).contains(&answer.status) {
            // The proxy's refusal (or a client gone) ends the connection: a second request on it
            // is never carried unread.
            event.connection_mode = Some(ConnectionMode::Passthrough);
            event.success = Some(false);
            event.bytes_in = Some(req.head.len() as u64);
            event.bytes_out = Some(answer.bytes.len() as u64);
            event.close_reason = Some(CloseReason::Completed);
            return;
        }
        let (prefix, peeked) = read_hello(
            &mut client,
            Duration::from_millis(inputs.config.hello_timeout_ms),
        )
        .await;
        let vouched = req.host.parse::<IpAddr>().is_ok_and(|ip| {
            destination::any_contains(&inputs.allow_unverified, SocketAddr::new(ip, req.port))
        });
        let pass = match peeked {
            Peeked::Hello(hello) => {
                event.sni = hello.sni.clone();
                match hello.sni {
                    Some(sni) if inputs.exchanges.intercepts(self.cgroup_id, &sni) => {
                        event.error_message = Some(format!(
                            "the tunnel to {} carries TLS for the intercepted {sni}",
                            req.authority
                        ));
                        warn!(target = %req.authority, %sni, "refused a tunnel that hides an intercepted host");
                        Err(CloseReason::DeniedUnverified)
                    }
                    Some(_) if vouched => Ok(()),
                    Some(sni) => {
                        let target = Tunnel {
                            authority: req.authority.clone(),
                            authorization: req.authorization.clone(),
                        };
                        match inputs.vouch.check(&sni, self.dst, Some(&target)).await {
                            Ok(()) => Ok(()),
                            Err(why) => {
                                warn!(target = %req.authority, %sni, reason = %why, "refused a tunnel to a destination that is not the server named");
                                event.error_message = Some(why.to_string());
                                Err(CloseReason::DeniedUnverified)
                            }
                        }
                    }
                    None => {
                        event.add_flag(Flag::NoSni);
                        unidentified(inputs, vouched, true)
                    }
                }
            }
            other => {
                let whole = other == Peeked::NotTls;
                event.add_flag(unidentified_flag(other));
                unidentified(inputs, vouched, whole)
            }
        };
        match pass {
            Ok(()) => {
                event.connection_mode = Some(ConnectionMode::Passthrough);
                relay(inputs, event, prefix, client, upstream, force).await;
            }
            Err(reason) => refused(event, reason, prefix.len(), client),
        }
    }

    /// Carries a connection the agent could not read to the proxy, as `tls.unidentified =
    /// "passthrough"` allows.
    async fn carry_to_proxy(
        &self,
        client: TcpStream,
        read: Vec<u8>,
        event: &mut Event,
        force: watch::Receiver<bool>,
    ) {
        let connect_timeout = Duration::from_millis(self.inputs.config.connect_timeout_ms);
        match self.connect_proxy(event, connect_timeout).await {
            Some(upstream) => {
                event.connection_mode = Some(ConnectionMode::Passthrough);
                relay(self.inputs, event, read, client, upstream, force).await;
            }
            None => refused(event, event_close(event), read.len(), client),
        }
    }

    async fn connect_proxy(&self, event: &mut Event, timeout: Duration) -> Option<TcpStream> {
        match tokio::time::timeout(timeout, TcpStream::connect(self.dst)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                event.close_reason = Some(CloseReason::connect_failed(e.kind()));
                None
            }
            Err(_) => {
                event.close_reason = Some(CloseReason::ConnectTimeout);
                None
            }
        }
    }
}

/// The close reason already set (a failed connect), else a generic error.
fn event_close(event: &Event) -> CloseReason {
    event
        .close_reason
        .clone()
        .unwrap_or_else(|| CloseReason::Error("proxy unreachable".into()))
}

/// Whether an unidentified tunnel may pass: to a vouched-for target, or as `tls.unidentified`
/// says when its first bytes came whole.
fn unidentified(inputs: &Inputs, vouched: bool, whole: bool) -> Result<(), CloseReason> {
    if vouched || (whole && inputs.unidentified == Unidentified::Passthrough) {
        Ok(())
    } else {
        Err(CloseReason::DeniedUnidentified)
    }
}

/// The flag of first bytes that are not a ClientHello with a server name.
fn unidentified_flag(peeked: Peeked) -> Flag {
    match peeked {
        Peeked::NotTls => Flag::NotTls,
        Peeked::Oversized => Flag::HelloOversized,
        Peeked::Hello(_) => Flag::NoSni,
        Peeked::Incomplete => Flag::HelloIncomplete,
    }
}

/// Ends a connection the agent refuses: a reset, and the event says why. A connect failure is an
/// error, not a denial.
fn refused(event: &mut Event, reason: CloseReason, read: usize, client: TcpStream) {
    if matches!(
        reason,
        CloseReason::DeniedUnidentified
            | CloseReason::DeniedUnverified
            | CloseReason::DeniedConnectionLimit
    ) {
        event.decision = Some(Decision::Deny);
        event.connection_mode = Some(ConnectionMode::Refused);
    }
    event.close_reason = Some(reason);
    event.success = Some(false);
    event.bytes_in = Some(read as u64);
    event.bytes_out = Some(0);
    reset(client);
}

/// Serves an intercepted connection (straight to `dst`, or through the proxy there when `via` is
/// set) and fills its event.
#[allow(clippy::too_many_arguments)] // two call sites; each is a distinct input of the connection
async fn intercept(
    inputs: &Inputs,
    event: &mut Event,
    client: Prefixed<TcpStream>,
    sni: String,
    dst: SocketAddr,
    via: Option<Tunnel>,
    tls: &tls::TlsInputs,
    enrolled_cgroup: Option<&str>,
    force: watch::Receiver<bool>,
) {
    event.connection_mode = Some(ConnectionMode::Intercepted);
    // The proxy writes an h2 response as several frames: with Nagle on, the second write waits
    // for the client's delayed ACK (40 ms on Linux) and one-client latency with it.
    let _ = client.get_ref().set_nodelay(true);
    let handler = inputs.exchanges.open(event, enrolled_cgroup);
    let done = tls::serve(
        client,
        sni,
        dst,
        via,
        tls,
        handler,
        Duration::from_millis(inputs.config.connect_timeout_ms),
        Duration::from_secs(inputs.config.idle_timeout_s),
        force,
    )
    .await;
    let stats = &inputs.stats;
    stats.bytes_in.fetch_add(done.bytes_in, Ordering::Relaxed);
    stats.bytes_out.fetch_add(done.bytes_out, Ordering::Relaxed);
    event.bytes_in = Some(done.bytes_in);
    event.bytes_out = Some(done.bytes_out);
    event.success =
        Some(matches!(done.reason, CloseReason::Completed) && done.upstream_error.is_none());
    event.close_reason = Some(done.reason);
    event.error_message = done.upstream_error;
    for f in done.flags {
        event.add_flag(f);
    }
}

/// Carries a passed-through connection (the first bytes already read are `prefix`) to its end
/// and fills its event.
async fn relay(
    inputs: &Inputs,
    event: &mut Event,
    prefix: Vec<u8>,
    client: TcpStream,
    upstream: TcpStream,
    force: watch::Receiver<bool>,
) {
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let carried = passthrough::relay(
        prefix,
        client,
        upstream,
        inputs.config.buffer_bytes,
        Duration::from_secs(inputs.config.idle_timeout_s),
        force,
    )
    .await;
    let stats = &inputs.stats;
    stats
        .bytes_in
        .fetch_add(carried.bytes_in, Ordering::Relaxed);
    stats
        .bytes_out
        .fetch_add(carried.bytes_out, Ordering::Relaxed);
    event.bytes_in = Some(carried.bytes_in);
    event.bytes_out = Some(carried.bytes_out);
    event.success = Some(matches!(carried.reason, CloseReason::Completed));
    event.close_reason = Some(carried.reason);
}

/// Completes and records a connection's event.
async fn finish(inputs: &Inputs, mut event: Event, started: Instant) {
    event.duration_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    inputs.stats.open.fetch_sub(1, Ordering::Relaxed);
    info!(
        dst = ?event.dst_ip,
        mode = event.connection_mode.map_or("", ConnectionMode::as_str),
        bytes_in = event.bytes_in,
        bytes_out = event.bytes_out,
        close = %event.close_reason.as_ref().map(ToString::to_string).unwrap_or_default(),
        "connection closed"
    );
    if let Err(e) = inputs.sink.submit(event).await {
        warn!(error = %e, "connection event not recorded");
    }
}

/// Where a connection goes after its first bytes were read.
enum Route {
    /// A Snowflake (or configured) host: terminate TLS.
    Intercept(String),
    /// Carry the bytes untouched; to a server of this name, if the connection named one.
    Passthrough(Option<String>),
    /// No SNI, not TLS (`whole`), or no whole ClientHello at all.
    Unidentified {
        /// Whether the first bytes were read whole (only those may pass as `tls.unidentified`
        /// says).
        whole: bool,
    },
}

/// Why a connection is refused before anything of it is carried.
enum Refusal {
    /// The agent cannot tell where it goes.
    Unidentified,
    /// It names a server its destination did not prove to be.
    Unverified(Unvouched),
    /// The destination could not be reached to check it.
    ConnectFailed(std::io::ErrorKind),
}

/// Decides whether a connection may go the way its first bytes say: an intercepted one always;
/// one to a destination in `tls.allow_unverified` always; an unidentified one as
/// `tls.unidentified` says, if its first bytes came whole; a passthrough only to a destination
/// that proves it is the server named ([`Vouch`]).
async fn admit(inputs: &Inputs, route: Route, dst: SocketAddr) -> Result<Route, Refusal> {
    match route {
        Route::Intercept(_) => Ok(route),
        _ if destination::any_contains(&inputs.allow_unverified, dst) => {
            Ok(Route::Passthrough(None))
        }
        Route::Unidentified { whole: true } if inputs.unidentified == Unidentified::Passthrough => {
            Ok(Route::Passthrough(None))
        }
        Route::Unidentified { .. } => Err(Refusal::Unidentified),
        Route::Passthrough(None) => Ok(route),
        Route::Passthrough(Some(sni)) => match inputs.vouch.check(&sni, dst, None).await {
            Ok(()) => Ok(Route::Passthrough(Some(sni))),
            Err(Unvouched::Connect(kind)) => Err(Refusal::ConnectFailed(kind)),
            Err(why) => Err(Refusal::Unverified(why)),
        },
    }
}

/// Reads the client's first bytes until they tell what the connection is, the client stops
/// sending, [`MAX_HELLO`] bytes were read (oversized), or `timeout` passes (incomplete: a
/// ClientHello sent late or in slow pieces is never waited for past it).
async fn read_hello(client: &mut TcpStream, timeout: Duration) -> (Vec<u8>, Peeked) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::with_capacity(2048);
    loop {
        let n = match tokio::time::timeout_at(deadline, client.read_buf(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => 0,
        };
        let peeked = client_hello::peek(&buf);
        if peeked != Peeked::Incomplete {
            return (buf, peeked);
        }
        if buf.len() >= MAX_HELLO {
            return (buf, Peeked::Oversized);
        }
        if n == 0 {
            return (buf, peeked);
        }
    }
}

/// A connection counted against its enrollment's cap while it is served.
struct OpenSlot(Arc<AtomicU64>);

impl OpenSlot {
    /// A slot of `open` if fewer than `cap` are taken.
    fn take(open: &Arc<AtomicU64>, cap: usize) -> Option<OpenSlot> {
        let cap = u64::try_from(cap).unwrap_or(u64::MAX);
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < cap).then_some(n + 1)
        })
        .ok()
        .map(|_| OpenSlot(open.clone()))
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Builds the connection event from what the kernel and the registry know; also returns the
/// enrollment that covers the connection, if one does.
fn connection_event(
    inputs: &Inputs,
    id: u64,
    peer: SocketAddr,
    dst: SocketAddr,
    origin: &Origin,
    event_time: SystemTime,
) -> (Event, Option<crate::enroll::Attribution>) {
    let mut e = Event::new(EventKind::Connection, event_time, &inputs.host);
    e.connection_id = Some(id);
    e.connection_mode = Some(ConnectionMode::Passthrough);
    e.pid = Some(origin.pid);
    e.tgid = Some(origin.tgid);
    e.uid = Some(origin.uid);
    e.gid = Some(origin.gid);
    e.comm = Some(crate::redirect::comm(origin));
    e.cgroup_id = Some(origin.cgroup_id);
    e.src_ip = Some(peer.ip());
    e.src_port = Some(peer.port());
    e.dst_ip = Some(dst.ip());
    e.dst_port = Some(dst.port());
    let attribution = inputs.identity.fill_event(
        &mut e,
        origin.tgid,
        origin.uid,
        origin.cgroup_id,
        &inputs.registry,
    );
    if let Some(a) = &attribution {
        a.connections.fetch_add(1, Ordering::Relaxed);
    }
    (e, attribution)
}

/// Closes a connection with a reset, the way a refused or failed connection looks to the client.
fn reset(stream: TcpStream) {
    let _ = nix::sys::socket::setsockopt(
        &stream.as_fd(),
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    drop(stream);
}
