//! The listener: TLS (ALPN h2 and http/1.1) or plain TCP, hyper's automatic h1/h2 connection,
//! bounded bodies and timeouts, gzip undone on the way in and applied on the way out.

use std::convert::Infallible;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::handlers::{self, Ctx, Reply};
use super::state::{RecordedRequest, State};

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body accepted on the wire, and after gzip is undone.
    pub max_body_bytes: usize,
    /// Time allowed to read a request's headers, and separately its body.
    pub request_timeout: Duration,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Serve HTTP/1.1 only.
    pub http1_only: bool,
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let Ok(local) = listener.local_addr() else {
        return;
    };
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(s)) =
                        tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    serve_conn(s, local, state, limits).await;
                }
                None => serve_conn(stream, local, state, limits).await,
            }
        });
    }
}

async fn serve_conn<S>(io: S, local: SocketAddr, state: Arc<State>, limits: Limits)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    if limits.http1_only {
        builder = builder.http1_only();
    }
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(req, local, &state, limits).await) }
    });
    let _ = builder.serve_connection(TokioIo::new(io), service).await;
}

fn response(reply: Reply, gzip_ok: bool) -> Response<Full<Bytes>> {
    let mut body = reply.body;
    let mut b = Response::builder()
        .status(reply.status)
        .header("content-type", reply.content_type)
        .header("server", "fake-snowflake");
    if gzip_ok && reply.compressible && body.len() > 4096 {
        body = handlers::gzip(&body);
        b = b.header("content-encoding", "gzip");
    }
    for (k, v) in reply.headers {
        b = b.header(k, v);
    }
    b.body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn handle(
    req: Request<Incoming>,
    local: SocketAddr,
    state: &State,
    limits: Limits,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let collected = tokio::time::timeout(
        limits.request_timeout,
        Limited::new(body, limits.max_body_bytes).collect(),
    )
    .await;
    let raw = match collected {
        Err(_) => return response(Reply::text(408, "request body timed out"), false),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return response(Reply::text(413, "request body too large"), false);
        }
        Ok(Err(_)) => return response(Reply::text(400, "cannot read request body"), false),
        Ok(Ok(c)) => c.to_bytes(),
    };
    let gzipped = parts
        .headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    let body = if gzipped {
        let mut out = Vec::new();
        let limit = u64::try_from(limits.max_body_bytes).unwrap_or(u64::MAX);
        let mut d = flate2::read::MultiGzDecoder::new(&raw[..]).take(limit + 1);
        if d.read_to_end(&mut out).is_err() {
            return response(Reply::text(400, "bad gzip body"), false);
        }
        if out.len() > limits.max_body_bytes {
            return response(Reply::text(413, "request body too large"), false);
        }
        out
    } else {
        raw.to_vec()
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let host = strip_port(&authority).to_owned();
    let accepts_gzip = parts
        .headers
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let rec = RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        version: format!("{:?}", parts.version),
        host: authority.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        received: SystemTime::now(),
    };
    if state.settings.record_requests {
        state.record(rec.clone());
    }
    let settings = &state.settings;
    let url_host = settings.storage_host.clone().unwrap_or_else(|| {
        if host.is_empty() {
            local.ip().to_string()
        } else {
            host
        }
    });
    let ctx = Ctx {
        base_url: format!("{}://{}:{}", settings.scheme, url_host, settings.port),
    };
    let reply = handlers::route(state, &rec, &ctx);
    if rec.path.ends_with("/abort-request") {
        tokio::time::sleep(ABORT_ANSWER_DELAY).await;
    }
    response(reply, accepts_gzip && settings.gzip_responses)
}

/// How long an abort's own answer waits after the abort took effect. Snowflake can answer the
/// cancelled statement (a poll in flight) before it answers the abort; the fake always does, so
/// the agent's handling of that order is exercised on every run rather than by chance.
const ABORT_ANSWER_DELAY: Duration = Duration::from_millis(300);

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map_or(host, |h| h.trim_start_matches('['));
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}
