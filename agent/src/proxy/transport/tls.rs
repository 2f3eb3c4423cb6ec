//! TLS interception: terminate the client's TLS with a leaf minted for its server name, open TLS to the
//! original destination (same server name, strict verification), and carry HTTP across, exchange by
//! exchange, with hyper on both sides.
//!
//! Client side and upstream side negotiate TLS and ALPN independently (docs/decisions.md §1): an h2 client
//! may meet an http/1.1 upstream and the other way round; requests are rewritten between the two
//! forms (origin-form plus `Host` for HTTP/1.1, absolute URI for h2) and hop-by-hop headers dropped
//! ([`forward`](super::forward)).
//! Bodies stream through; this module inspects nothing itself: each exchange goes to the
//! connection's [`ConnectionHandler`] (the layer above), which sends it upstream through the
//! [`SendUpstream`] it is given, or answers it in the upstream's place. The upstream side is not the client
//! connection's own: each exchange borrows a connection to the same server name and destination
//! from the proxy's [`pool`](super::pool), so an idle client holds no upstream connection. A failed
//! upstream (unreachable, or a certificate that does not verify) is an error the client sees on
//! each request, never a silent downgrade to passthrough.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::forward::{Upstream, forward};
use super::passthrough::{Activity, CloseReason, Metered};
use super::{ConnectionHandler, SendUpstream};
use crate::audit::Flag;

/// TLS material shared by every intercepted connection.
pub struct TlsInputs {
    /// Server config for the client side: leaves from the agent's CA, ALPN h2 and http/1.1.
    pub server: Arc<rustls::ServerConfig>,
    /// Client config for the upstream side: strict roots, ALPN h2 and http/1.1.
    pub client: Arc<rustls::ClientConfig>,
    /// How long each TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long a client may take to send a request's headers (HTTP/1.1), from its first byte.
    pub header_read_timeout: Duration,
    /// Upstream connections, shared by every intercepted client connection.
    pub upstreams: Arc<super::pool::Pool>,
}

impl TlsInputs {
    /// Builds the configs from the CA's resolver and the upstream roots.
    pub fn new(
        resolver: Arc<crate::tls::LeafResolver>,
        upstream_roots: Arc<rustls::RootCertStore>,
        handshake_timeout: Duration,
        header_read_timeout: Duration,
    ) -> Result<TlsInputs, crate::tls::Error> {
        let alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        server.alpn_protocols = alpn.clone();
        let client = Arc::new(crate::tls::upstream::client_config(upstream_roots, alpn)?);
        let upstreams = Arc::new(super::pool::Pool::new(
            client.clone(),
            handshake_timeout,
            super::pool::DEFAULT_IDLE,
        ));
        Ok(TlsInputs {
            server: Arc::new(server),
            client,
            handshake_timeout,
            header_read_timeout,
            upstreams,
        })
    }
}

/// What an intercepted connection carried and how it ended.
#[derive(Debug, Clone)]
pub struct Intercepted {
    /// Bytes read from the client (TLS records included).
    pub bytes_in: u64,
    /// Bytes written to the client (TLS records included): what came back to it from upstream
    /// and from the agent. The upstream connections are shared, so this is counted on the
    /// client's side.
    pub bytes_out: u64,
    /// How it ended.
    pub reason: CloseReason,
    /// HTTP exchanges carried.
    pub requests: u64,
    /// Audit flags (`tls_untrusted`, ...).
    pub flags: Vec<Flag>,
    /// What the upstream failure was, if it failed.
    pub upstream_error: Option<String>,
}

/// Serves one intercepted connection to its end.
#[allow(clippy::too_many_arguments)] // one call site; each is a distinct input of the connection
pub async fn serve<C>(
    client: C,
    sni: String,
    dst: SocketAddr,
    via: Option<super::tunnel::Tunnel>,
    tls: &TlsInputs,
    handler: Arc<dyn ConnectionHandler>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    mut force_close: watch::Receiver<bool>,
) -> Intercepted
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let bytes_in = Arc::new(AtomicU64::new(0));
    let bytes_out = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let mut out = Intercepted {
        bytes_in: 0,
        bytes_out: 0,
        reason: CloseReason::Completed,
        requests: 0,
        flags: Vec::new(),
        upstream_error: None,
    };
    let client =
        Metered::new(client, bytes_in.clone(), activity.clone()).counting_writes(bytes_out.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    let client_tls =
        match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(client)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                if rejected_our_certificate(&e) {
                    out.flags.push(Flag::TlsUntrusted);
                }
                out.reason = CloseReason::Error(format!("client TLS handshake: {e}"));
                out.bytes_in = bytes_in.load(Ordering::Relaxed);
                return out;
            }
            Err(_) => {
                out.reason = CloseReason::Error("client TLS handshake timed out".into());
                return out;
            }
        };
    let upstream = Arc::new(Upstream {
        pool: tls.upstreams.clone(),
        sni: sni.clone(),
        dst,
        via: via.clone(),
        connect_timeout,
        failed: std::sync::OnceLock::new(),
    });
    // The authority the upstream sees: the tunnel's target through a proxy, else the destination.
    let port = via
        .as_ref()
        .and_then(|t| t.authority.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(dst.port());
    let authority = if port == 443 {
        sni.clone()
    } else {
        format!("{sni}:{port}")
    };
    let service = {
        let requests = requests.clone();
        let upstream = upstream.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let upstream = upstream.clone();
            let authority = authority.clone();
            let handler = handler.clone();
            requests.fetch_add(1, Ordering::Relaxed);
            // Boxed: hyper's HTTP/1.1 server keeps a slot the size of this future for the whole
            // connection, idle or not; the exchange's state machine is kilobytes, and a box of it
            // lives only while an exchange does.
            Box::pin(async move {
                let req = req.map(|b| b.boxed());
                let send: SendUpstream<'_> =
                    Box::new(|r| Box::pin(forward(r, &upstream, &authority)));
                Ok::<_, Infallible>(handler.handle(req, send).await)
            })
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that sends its headers a byte at a time is cut off, not waited for.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(tls.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(client_tls), service);
    tokio::pin!(conn);
    out.reason = tokio::select! {
        r = conn.as_mut() => match r {
            Ok(()) => CloseReason::Completed,
            Err(e) => CloseReason::Error(e.to_string()),
        },
        _ = activity.idle(idle_timeout) => CloseReason::IdleTimeout,
        _ = crate::drain::signalled(&mut force_close) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.as_mut()).await;
            CloseReason::Shutdown
        }
    };
    out.upstream_error = upstream.failed.get().cloned();
    if out.upstream_error.is_some() && out.reason == CloseReason::Completed {
        out.reason = CloseReason::Error("upstream failed".into());
    }
    out.bytes_in = bytes_in.load(Ordering::Relaxed);
    out.bytes_out = bytes_out.load(Ordering::Relaxed);
    out.requests = requests.load(Ordering::Relaxed);
    out
}

/// Whether a failed handshake is the client refusing the agent's certificate.
fn rejected_our_certificate(e: &std::io::Error) -> bool {
    use rustls::AlertDescription as A;
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(a)) => matches!(
            a,
            A::UnknownCA
                | A::BadCertificate
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::AccessDenied
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::ForwardError;
    use super::*;
    use bytes::Bytes;
    use http::header;
    use http::{Response, StatusCode};
    use http_body_util::Full;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use tokio::net::TcpListener;

    const NAME: &str = "xy12345.snowflakecomputing.com";

    /// An upstream TLS server for NAME speaking only `alpn`, answering with what it received.
    async fn upstream(
        alpn: &'static [u8],
        dir: &std::path::Path,
    ) -> (SocketAddr, std::path::PathBuf) {
        let (addr, ca, _) = counted_upstream(alpn, dir).await;
        (addr, ca)
    }

    /// [`upstream`], also counting the TCP connections it accepted.
    async fn counted_upstream(
        alpn: &'static [u8],
        dir: &std::path::Path,
    ) -> (SocketAddr, std::path::PathBuf, Arc<AtomicU64>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![NAME.to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let ca_path = dir.join("upstream-ca.pem");
        std::fs::write(&ca_path, ca_cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let host = req
                            .headers()
                            .get(header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .map(str::to_owned)
                            .or_else(|| req.uri().authority().map(|a| a.to_string()))
                            .unwrap_or_default();
                        let line = format!(
                            "{} {} {:?} {}",
                            req.method(),
                            req.uri().path(),
                            req.version(),
                            host
                        );
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let text = format!("{line} {}", String::from_utf8_lossy(&body));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (addr, ca_path, accepted)
    }

    fn agent_tls(
        dir: &std::path::Path,
        extra_roots: &[std::path::PathBuf],
    ) -> (TlsInputs, Arc<crate::tls::Ca>) {
        let (ca, _) = crate::tls::Ca::init(&dir.join("agent"), "t").unwrap();
        let ca = Arc::new(ca);
        let roots = crate::tls::upstream::roots(ca.cert_der(), extra_roots).unwrap();
        let resolver = Arc::new(crate::tls::LeafResolver::new(ca.clone()).unwrap());
        (
            TlsInputs::new(
                resolver,
                Arc::new(roots),
                Duration::from_secs(5),
                Duration::from_secs(5),
            )
            .unwrap(),
            ca,
        )
    }

    /// The layer above as this one sees it: every exchange goes upstream, and one that cannot is
    /// answered `502` with the kind of the error the transport handed up and its text.
    struct Forwarding;

    impl ConnectionHandler for Forwarding {
        fn handle<'a>(
            &'a self,
            req: Request<super::super::body::Body>,
            send: SendUpstream<'a>,
        ) -> super::super::Answer<'a> {
            Box::pin(async move {
                match send(req).await {
                    Ok(resp) => resp,
                    Err(e) => {
                        let kind = match &e {
                            ForwardError::Unreachable(_) => "unreachable",
                            ForwardError::Interrupted(_) => "interrupted",
                            _ => "not forwarded",
                        };
                        let text = format!("{kind}: {e}");
                        let mut r = Response::new(super::super::body::full(Bytes::from(text)));
                        *r.status_mut() = StatusCode::BAD_GATEWAY;
                        r
                    }
                }
            })
        }
    }

    /// Runs one request from a client speaking `alpn` through `serve`; returns status, body and the outcome.
    async fn exchange(
        tls: impl AsRef<TlsInputs> + Send + 'static,
        client_roots: rustls::RootCertStore,
        alpn: &'static [u8],
        dst: SocketAddr,
    ) -> (Result<(StatusCode, String), String>, Intercepted) {
        let (agent_side, client_side) = tokio::io::duplex(64 * 1024);
        let (_tx, rx) = watch::channel(false);
        let server = tokio::spawn(async move {
            serve(
                agent_side,
                NAME.into(),
                dst,
                None,
                tls.as_ref(),
                Arc::new(Forwarding),
                Duration::from_secs(5),
                Duration::from_secs(30),
                rx,
            )
            .await
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(client_roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
        let result = async {
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, client_side)
                .await
                .map_err(|e| e.to_string())?;
            let io = TokioIo::new(tls);
            let req_body = Full::new(Bytes::from_static(b"{\"sqlText\":\"select 1\"}"));
            let resp = if alpn == b"h2" {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let req = Request::post(format!(
                    "https://{NAME}/queries/v1/query-request?requestId=1"
                ))
                .body(req_body)
                .unwrap();
                send.send_request(req).await.map_err(|e| e.to_string())?
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let req = Request::post("/queries/v1/query-request?requestId=1")
                    .header(header::HOST, NAME)
                    .header(header::CONNECTION, "keep-alive")
                    .body(req_body)
                    .unwrap();
                send.send_request(req).await.map_err(|e| e.to_string())?
            };
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        }
        .await;
        let outcome = server.await.unwrap();
        (result, outcome)
    }

    fn roots_of(ca: &crate::tls::Ca) -> rustls::RootCertStore {
        let mut r = rustls::RootCertStore::empty();
        r.add(ca.cert_der().clone()).unwrap();
        r
    }

    #[tokio::test]
    async fn h2_client_meets_http1_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, upstream_ca) = upstream(b"http/1.1", dir.path()).await;
        let (tls, ca) = agent_tls(dir.path(), &[upstream_ca]);
        let (result, outcome) = exchange(tls, roots_of(&ca), b"h2", addr).await;
        let (status, body) = result.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            format!("POST /queries/v1/query-request HTTP/1.1 {NAME} {{\"sqlText\":\"select 1\"}}")
        );
        assert_eq!(outcome.requests, 1);
        assert!(outcome.upstream_error.is_none());
        assert!(outcome.bytes_in > 0 && outcome.bytes_out > 0);
    }

    #[tokio::test]
    async fn http1_client_meets_h2_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, upstream_ca) = upstream(b"h2", dir.path()).await;
        let (tls, ca) = agent_tls(dir.path(), &[upstream_ca]);
        let (result, _) = exchange(tls, roots_of(&ca), b"http/1.1", addr).await;
        let (status, body) = result.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.starts_with(&format!("POST /queries/v1/query-request HTTP/2.0 {NAME}")),
            "{body}"
        );
    }

    #[tokio::test]
    async fn an_upstream_that_does_not_verify_is_an_error_not_a_downgrade() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _upstream_ca) = upstream(b"h2", dir.path()).await;
        let (tls, ca) = agent_tls(dir.path(), &[]);
        let (result, outcome) = exchange(tls, roots_of(&ca), b"h2", addr).await;
        let (status, body) = result.unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.starts_with("unreachable: TLS to"), "{body}");
        assert!(outcome.upstream_error.unwrap().contains("TLS to"));
    }

    #[tokio::test]
    async fn a_client_that_rejects_the_agent_ca_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, upstream_ca) = upstream(b"h2", dir.path()).await;
        let (tls, _ca) = agent_tls(dir.path(), &[upstream_ca]);
        let (result, outcome) = exchange(tls, rustls::RootCertStore::empty(), b"h2", addr).await;
        assert!(result.is_err());
        assert_eq!(outcome.flags, vec!["tls_untrusted".to_string()]);
    }

    impl AsRef<TlsInputs> for TlsInputs {
        fn as_ref(&self) -> &TlsInputs {
            self
        }
    }

    #[tokio::test]
    async fn client_connections_share_an_h2_upstream_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, upstream_ca, accepted) = counted_upstream(b"h2", dir.path()).await;
        let (tls, ca) = agent_tls(dir.path(), &[upstream_ca]);
        let tls = Arc::new(tls);
        for alpn in [&b"h2"[..], b"http/1.1", b"h2"] {
            let (result, outcome) = exchange(tls.clone(), roots_of(&ca), alpn, addr).await;
            assert_eq!(result.unwrap().0, StatusCode::OK);
            assert!(
                outcome.bytes_out > 0,
                "the client's side counts what it got"
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "three clients, one upstream"
        );
        assert_eq!(tls.upstreams.open(), 1);
    }

    #[tokio::test]
    async fn http1_upstream_connections_are_lent_one_exchange_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, upstream_ca, accepted) = counted_upstream(b"http/1.1", dir.path()).await;
        let (tls, ca) = agent_tls(dir.path(), &[upstream_ca]);
        let tls = Arc::new(tls);
        for _ in 0..2 {
            let (result, _) = exchange(tls.clone(), roots_of(&ca), b"h2", addr).await;
            assert_eq!(result.unwrap().0, StatusCode::OK);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "read to the end, it was reused"
        );
        // Two exchanges at once need two connections; both come back to the pool.
        let pool = &tls.upstreams;
        let a = pool
            .checkout(NAME, addr, None, Duration::from_secs(5))
            .await
            .unwrap();
        let b = pool
            .checkout(NAME, addr, None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        for lease in [a, b] {
            let req = Request::get("/x")
                .header(header::HOST, NAME)
                .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())
                .unwrap();
            let resp = lease.send(req).await.unwrap();
            resp.into_body().collect().await.unwrap();
        }
        assert_eq!(pool.open(), 2);
        // A response dropped unread takes its connection with it.
        let lease = pool
            .checkout(NAME, addr, None, Duration::from_secs(5))
            .await
            .unwrap();
        let req = Request::get("/x")
            .header(header::HOST, NAME)
            .body(
                Full::new(Bytes::from_static(b"body"))
                    .map_err(|n| match n {})
                    .boxed(),
            )
            .unwrap();
        drop(lease.send(req).await.unwrap());
        assert_eq!(pool.open(), 1);
    }

    #[tokio::test]
    async fn unused_upstream_connections_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, upstream_ca, accepted) = counted_upstream(b"h2", dir.path()).await;
        let (mut tls, ca) = agent_tls(dir.path(), &[upstream_ca]);
        tls.upstreams = Arc::new(super::super::pool::Pool::new(
            tls.client.clone(),
            Duration::from_secs(5),
            Duration::from_millis(50),
        ));
        let tls = Arc::new(tls);
        let (result, _) = exchange(tls.clone(), roots_of(&ca), b"h2", addr).await;
        assert_eq!(result.unwrap().0, StatusCode::OK);
        // Closed once unused for the idle period; polled, not timed.
        let mut polls = 0;
        while tls.upstreams.open() > 0 {
            polls += 1;
            assert!(polls < 1000, "the idle connection was never closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (result, _) = exchange(tls.clone(), roots_of(&ca), b"h2", addr).await;
        assert_eq!(result.unwrap().0, StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new one was opened");
    }
}
