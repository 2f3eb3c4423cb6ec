//! One HTTP exchange carried upstream: the request rewritten into the form the upstream
//! connection speaks (origin-form plus `Host` for HTTP/1.1, absolute URI for h2, whichever form
//! the client used), hop-by-hop headers dropped both ways, sent on a connection lent by the
//! [`pool`](super::pool). An exchange that cannot be carried is a [`ForwardError`] for the layer
//! above to answer (this layer writes no answer of its own), and the first failure to reach the
//! upstream is kept for the connection's event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use tracing::warn;

use super::body::Body;
use super::pool::{Pool, UpstreamError};

/// Why an exchange was not carried upstream: handed to the connection's handler, which answers
/// the client in the upstream's place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// No upstream connection could be had (connect, TLS, HTTP handshake).
    #[error(transparent)]
    Unreachable(UpstreamError),
    /// The upstream connection failed while carrying the request, before the answer's head.
    #[error(transparent)]
    Interrupted(UpstreamError),
    /// The request's target cannot be written in the form the upstream connection speaks.
    #[error(transparent)]
    BadTarget(http::Error),
}

/// Where a connection's exchanges go upstream, and the first failure to reach it.
pub(super) struct Upstream {
    pub(super) pool: Arc<Pool>,
    pub(super) sni: String,
    pub(super) dst: SocketAddr,
    pub(super) via: Option<super::tunnel::Tunnel>,
    pub(super) connect_timeout: Duration,
    pub(super) failed: std::sync::OnceLock<String>,
}

/// Headers that belong to one hop and never cross the proxy.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

/// Sends one request upstream in the form that side speaks, and returns its response.
pub(super) async fn forward(
    req: Request<Body>,
    upstream: &Upstream,
    default_authority: &str,
) -> Result<Response<Body>, ForwardError> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Keep the authority the client used: from an h2 request's URI, or an HTTP/1.1 Host header.
    let client_authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let authority = client_authority.as_deref().unwrap_or(default_authority);
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let lease = match upstream
        .pool
        .checkout(
            &upstream.sni,
            upstream.dst,
            upstream.via.as_ref(),
            upstream.connect_timeout,
        )
        .await
    {
        Ok(l) => l,
        Err(e) => {
            if upstream.failed.set(e.to_string()).is_ok() {
                warn!(dst = %upstream.dst, sni = %upstream.sni, error = %e,
                    "upstream failed; answering the client with errors");
            }
            return Err(ForwardError::Unreachable(e));
        }
    };
    if lease.is_h2() {
        parts.headers.remove(header::HOST);
        parts.version = http::Version::HTTP_2;
        parts.uri = Uri::builder()
            .scheme("https")
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(ForwardError::BadTarget)?;
    } else {
        parts.version = http::Version::HTTP_11;
        parts.uri = path
            .parse()
            .map_err(|e: http::uri::InvalidUri| ForwardError::BadTarget(e.into()))?;
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(authority)
        {
            parts.headers.insert(header::HOST, v);
        }
    }
    let resp = lease
        .send(Request::from_parts(parts, body))
        .await
        .map_err(ForwardError::Interrupted)?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body))
}
