//! Upstream connections, shared by the intercepted client connections that go to the same place.
//!
//! An intercepted client connection holds no upstream connection of its own: each exchange checks
//! one out of the pool for its (server name, original destination), opening it on first use, and
//! gives it back when the response has been read. An h2 upstream multiplexes every client's
//! exchanges on a few connections; an HTTP/1.1 upstream lends one idle connection per exchange in
//! flight. A connection nobody used for [`Pool::idle`] is closed, so an idle client costs only its
//! own TLS session and HTTP state, and a burst of clients leaves no upstream connections behind.
//! Verification towards the upstream is the same strict one as before: the pool only ever connects
//! with the agent's upstream client config. A connection a workload made through an HTTP proxy
//! (`redirect.proxy_ports`) goes upstream through that proxy too, with a CONNECT of the agent's
//! own ([`Tunnel`]); the tunnel is part of the destination's key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Frame, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::body::Body;
use super::tunnel::{self, Tunnel, TunnelError};
use crate::sync::lock;

/// How long an upstream connection may sit unused before the pool closes it.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(90);
/// The most h2 connections the pool keeps per destination: a burst of first requests may open
/// more at once; those beyond this serve their request and close.
const MAX_H2_PER_KEY: usize = 4;
/// The most idle HTTP/1.1 connections the pool keeps per destination.
const MAX_IDLE_H1_PER_KEY: usize = 256;

/// Why an exchange could not reach the upstream. Its text is what the client's error answer and
/// the connection's audit event (`error_message`) say.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The TCP connection to the original destination failed.
    #[error("connect to {dst}: {source}")]
    Connect {
        /// The original destination.
        dst: SocketAddr,
        /// What the connect said.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connection did not come up within the connect timeout.
    #[error("connect to {dst}: timed out")]
    ConnectTimeout {
        /// The original destination.
        dst: SocketAddr,
    },
    /// The proxy a workload's connection went through did not open the agent's tunnel.
    #[error("through the proxy at {dst}: {source}")]
    Tunnel {
        /// The proxy's address (the connection's original destination).
        dst: SocketAddr,
        /// What the proxy said.
        #[source]
        source: TunnelError,
    },
    /// The server name cannot be a TLS server name.
    #[error("invalid server name {sni}")]
    ServerName {
        /// The server name the client sent.
        sni: String,
    },
    /// The TLS handshake with the upstream failed (its certificate did not verify, or it
    /// refused ours).
    #[error("TLS to {sni} at {dst}: {source}")]
    Tls {
        /// The server name verified for.
        sni: String,
        /// The original destination.
        dst: SocketAddr,
        /// What the handshake said.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake did not finish within the handshake timeout.
    #[error("TLS to {sni} at {dst}: timed out")]
    TlsTimeout {
        /// The server name verified for.
        sni: String,
        /// The original destination.
        dst: SocketAddr,
    },
    /// The HTTP handshake (h2 or http/1.1, as ALPN chose) on the new connection failed.
    #[error("{alpn} handshake with {sni}: {source}")]
    Handshake {
        /// `h2` or `http/1.1`.
        alpn: &'static str,
        /// The server name.
        sni: String,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
    /// The new connection was closed before it could carry a request.
    #[error("connection to {sni} at {dst} closed at once")]
    ClosedAtOnce {
        /// The server name.
        sni: String,
        /// The original destination.
        dst: SocketAddr,
    },
    /// The lease no longer held its connection.
    #[error("the connection was given back")]
    GivenBack,
    /// Sending the request or reading the response's head failed.
    #[error("{0}")]
    Send(#[source] hyper::Error),
}

/// Where an upstream connection goes: the server name it was verified for, the address, and the
/// tunnel through the proxy at that address, if it is a proxy's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    sni: String,
    dst: SocketAddr,
    via: Option<Tunnel>,
}

/// When a connection was last used and how many exchanges it carries now.
#[derive(Debug)]
struct Usage {
    in_flight: AtomicUsize,
    last_used_ms: AtomicU64,
    epoch: Instant,
}

impl Usage {
    fn new() -> Arc<Usage> {
        Arc::new(Usage {
            in_flight: AtomicUsize::new(0),
            last_used_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn stamp(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_used_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed)) + idle
    }
}

struct H2Conn {
    send: http2::SendRequest<Body>,
    usage: Arc<Usage>,
}

struct H1Conn {
    send: http1::SendRequest<Body>,
    usage: Arc<Usage>,
}

#[derive(Default)]
struct Conns {
    h2: Vec<H2Conn>,
    h1_idle: Vec<H1Conn>,
}

/// The upstream connections of the whole proxy, by destination.
pub struct Pool {
    client: Arc<rustls::ClientConfig>,
    handshake_timeout: Duration,
    idle: Duration,
    conns: Mutex<HashMap<Key, Conns>>,
}

/// One HTTP sender checked out for one exchange.
enum Sender {
    H2(http2::SendRequest<Body>),
    H1(http1::SendRequest<Body>),
}

/// A connection lent to one exchange; given back when dropped (an HTTP/1.1 one only if its
/// response was read to the end, since only then may it carry the next).
pub struct Lease {
    sender: Option<Sender>,
    usage: Arc<Usage>,
    home: Weak<Pool>,
    key: Key,
    reusable: bool,
}

impl Pool {
    /// A pool connecting with `client` (strict roots, ALPN h2 and http/1.1), each TLS handshake
    /// within `handshake_timeout`, closing connections unused for `idle`.
    pub fn new(
        client: Arc<rustls::ClientConfig>,
        handshake_timeout: Duration,
        idle: Duration,
    ) -> Pool {
        Pool {
            client,
            handshake_timeout,
            idle,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// How long an unused connection stays open.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Upstream connections the pool holds now (h2 ones, and idle HTTP/1.1 ones): what the pool
    /// costs, for tests and diagnostics.
    pub fn open(&self) -> usize {
        let map = lock(&self.conns);
        map.values()
            .map(|c| {
                c.h2.iter().filter(|h| !h.send.is_closed()).count()
                    + c.h1_idle.iter().filter(|h| !h.send.is_closed()).count()
            })
            .sum()
    }

    /// Lends a connection to `sni` at `dst` (through `via` when `dst` is a proxy): a live one from
    /// the pool, else a new one (connect and tunnel within `connect_timeout`, then TLS and ALPN).
    /// `Err` says why the upstream is unreachable.
    pub async fn checkout(
        self: &Arc<Self>,
        sni: &str,
        dst: SocketAddr,
        via: Option<&Tunnel>,
        connect_timeout: Duration,
    ) -> Result<Lease, UpstreamError> {
        let key = Key {
            sni: sni.to_owned(),
            dst,
            via: via.cloned(),
        };
        loop {
            let found = {
                let mut map = lock(&self.conns);
                let conns = map.entry(key.clone()).or_default();
                conns.h2.retain(|c| !c.send.is_closed());
                conns.h1_idle.retain(|c| !c.send.is_closed());
                if let Some(c) = conns.h2.first() {
                    Some((Sender::H2(c.send.clone()), c.usage.clone()))
                } else {
                    conns.h1_idle.pop().map(|c| (Sender::H1(c.send), c.usage))
                }
            };
            let Some((sender, usage)) = found else { break };
            let mut lease = self.lease(key.clone(), sender, usage);
            if lease.ready().await {
                return Ok(lease);
            }
            // Closed while idle: it is dropped unreturned; try the next.
        }
        let (sender, usage) = self.connect(&key, connect_timeout).await?;
        if let Sender::H2(send) = &sender {
            let mut map = lock(&self.conns);
            let conns = map.entry(key.clone()).or_default();
            if conns.h2.len() < MAX_H2_PER_KEY {
                conns.h2.push(H2Conn {
                    send: send.clone(),
                    usage: usage.clone(),
                });
            }
        }
        let mut lease = self.lease(key, sender, usage);
        if lease.ready().await {
            Ok(lease)
        } else {
            Err(UpstreamError::ClosedAtOnce {
                sni: sni.to_owned(),
                dst,
            })
        }
    }

    fn lease(self: &Arc<Self>, key: Key, sender: Sender, usage: Arc<Usage>) -> Lease {
        usage.in_flight.fetch_add(1, Ordering::Relaxed);
        usage.stamp();
        Lease {
            sender: Some(sender),
            usage,
            home: Arc::downgrade(self),
            key,
            reusable: false,
        }
    }

    fn give_back(&self, key: Key, conn: H1Conn) {
        if conn.send.is_closed() {
            return;
        }
        let mut map = lock(&self.conns);
        let conns = map.entry(key).or_default();
        if conns.h1_idle.len() < MAX_IDLE_H1_PER_KEY {
            conns.h1_idle.push(conn);
        }
    }

    async fn connect(
        &self,
        key: &Key,
        connect_timeout: Duration,
    ) -> Result<(Sender, Arc<Usage>), UpstreamError> {
        let Key { sni, dst, via } = key;
        let dst = *dst;
        let started = Instant::now();
        let mut tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect(dst)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(UpstreamError::Connect { dst, source }),
            Err(_) => return Err(UpstreamError::ConnectTimeout { dst }),
        };
        let _ = tcp.set_nodelay(true);
        if let Some(via) = via {
            let left = connect_timeout.saturating_sub(started.elapsed());
            tunnel::open(&mut tcp, via, left)
                .await
                .map_err(|source| UpstreamError::Tunnel { dst, source })?;
        }
        let Ok(name) = rustls::pki_types::ServerName::try_from(sni.clone()) else {
            return Err(UpstreamError::ServerName { sni: sni.clone() });
        };
        let connector = tokio_rustls::TlsConnector::from(self.client.clone());
        let stream = match tokio::time::timeout(
            self.handshake_timeout,
            connector.connect(name, tcp),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(UpstreamError::Tls {
                    sni: sni.clone(),
                    dst,
                    source,
                });
            }
            Err(_) => {
                return Err(UpstreamError::TlsTimeout {
                    sni: sni.clone(),
                    dst,
                });
            }
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        let usage = Usage::new();
        let idle = self.idle;
        if h2 {
            let (send, conn) =
                http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|source| UpstreamError::Handshake {
                        alpn: "h2",
                        sni: sni.clone(),
                        source,
                    })?;
            tokio::spawn(drive(conn, usage.clone(), idle, "h2"));
            debug!(%sni, %dst, "upstream h2 connection opened");
            Ok((Sender::H2(send), usage))
        } else {
            let (send, conn) =
                http1::handshake(io)
                    .await
                    .map_err(|source| UpstreamError::Handshake {
                        alpn: "http/1.1",
                        sni: sni.clone(),
                        source,
                    })?;
            tokio::spawn(drive(conn, usage.clone(), idle, "http/1.1"));
            debug!(%sni, %dst, "upstream http/1.1 connection opened");
            Ok((Sender::H1(send), usage))
        }
    }
}

/// Runs a connection until it ends or nobody used it for `idle`.
async fn drive<F, E>(conn: F, usage: Arc<Usage>, idle: Duration, alpn: &'static str)
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let unused = async {
        loop {
            tokio::time::sleep_until(usage.idle_deadline(idle)).await;
            if usage.in_flight.load(Ordering::Relaxed) == 0
                && Instant::now() >= usage.idle_deadline(idle)
            {
                return;
            }
            if usage.in_flight.load(Ordering::Relaxed) > 0 {
                // Busy: look again a period from now (the lease stamps it when it ends, too).
                usage.stamp();
            }
        }
    };
    tokio::select! {
        r = conn => if let Err(e) = r {
            debug!(error = %e, alpn, "upstream connection ended");
        },
        () = unused => debug!(alpn, "idle upstream connection closed"),
    }
}

impl Lease {
    /// Whether this connection speaks h2 (requests take the absolute form).
    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Some(Sender::H2(_)))
    }

    async fn ready(&mut self) -> bool {
        match &mut self.sender {
            Some(Sender::H2(s)) => s.ready().await.is_ok(),
            Some(Sender::H1(s)) => s.ready().await.is_ok(),
            None => false,
        }
    }

    /// Sends `req` and returns its response, whose body gives the connection back once read.
    /// `Err` is the upstream's failure.
    pub async fn send(mut self, req: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        let resp = match &mut self.sender {
            Some(Sender::H2(s)) => s.send_request(req).await,
            Some(Sender::H1(s)) => s.send_request(req).await,
            None => return Err(UpstreamError::GivenBack),
        }
        .map_err(UpstreamError::Send)?;
        let (parts, body) = resp.into_parts();
        if body.is_end_stream() {
            self.reusable = true;
            drop(self);
            return Ok(Response::from_parts(parts, body.boxed()));
        }
        let body = Leased {
            inner: body,
            lease: Some(self),
        };
        Ok(Response::from_parts(parts, body.boxed()))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.usage.stamp();
        self.usage.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(Sender::H1(send)) = self.sender.take()
            && self.reusable
            && let Some(pool) = self.home.upgrade()
        {
            pool.give_back(
                self.key.clone(),
                H1Conn {
                    send,
                    usage: self.usage.clone(),
                },
            );
        }
    }
}

/// A response body that holds its connection's lease until the body has been read to the end
/// (the connection goes back to the pool) or dropped before (an HTTP/1.1 one is closed).
struct Leased {
    inner: hyper::body::Incoming,
    lease: Option<Lease>,
}

impl hyper::body::Body for Leased {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(true),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Leased {
    fn finish(&mut self, whole: bool) {
        if let Some(mut lease) = self.lease.take() {
            lease.reusable = whole;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_read_as_the_client_and_the_audit_see_them() {
        let dst: SocketAddr = "192.0.2.7:443".parse().unwrap();
        let sni = "xy12345.snowflakecomputing.com".to_owned();
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let refused_text = refused.to_string();
        assert_eq!(
            UpstreamError::Connect {
                dst,
                source: refused
            }
            .to_string(),
            format!("connect to {dst}: {refused_text}")
        );
        assert_eq!(
            UpstreamError::ConnectTimeout { dst }.to_string(),
            "connect to 192.0.2.7:443: timed out"
        );
        assert_eq!(
            UpstreamError::TlsTimeout {
                sni: sni.clone(),
                dst
            }
            .to_string(),
            "TLS to xy12345.snowflakecomputing.com at 192.0.2.7:443: timed out"
        );
        assert_eq!(
            UpstreamError::ClosedAtOnce { sni, dst }.to_string(),
            "connection to xy12345.snowflakecomputing.com at 192.0.2.7:443 closed at once"
        );
        assert_eq!(
            UpstreamError::GivenBack.to_string(),
            "the connection was given back"
        );
    }
}
