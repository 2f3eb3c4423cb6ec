//! An issuer's signing keys: a JWKS document read from a file or fetched from the issuer's
//! `jwks_uri` over HTTPS, cached and refreshed.
//!
//! Keys are used for `oidc.jwks_refresh_s`, then loaded again; a failed refresh keeps the keys
//! already known (logged), so a brief outage of the issuer does not lock users out. A token whose
//! `kid` is not among the keys triggers a fetch at once (an issuer rotated its keys), but never
//! sooner than `oidc.jwks_min_refetch_s` after the previous attempt, so a flood of made-up key ids
//! cannot turn the agent against the issuer. One fetch runs at a time per issuer; it is bounded by
//! `oidc.fetch_timeout_ms` as a whole and by `oidc.max_jwks_bytes`. Keys that are not signature
//! keys, or that this build cannot read, are skipped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use tokio::time::Instant;

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A JWKS document on disk.
    File(PathBuf),
    /// The issuer's HTTPS JWKS URL.
    Uri(http::Uri),
}

/// How keys are loaded and kept.
#[derive(Debug, Clone)]
pub struct Limits {
    /// How long loaded keys are used before they are loaded again.
    pub refresh: Duration,
    /// The least time between two loads.
    pub min_refetch: Duration,
    /// The longest a whole fetch may take.
    pub timeout: Duration,
    /// The largest document read.
    pub max_bytes: usize,
}

/// Why keys could not be loaded: what the operator reads in the log and the audit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The issuer could not be reached or did not answer (connect, TLS, HTTP).
    #[error("{uri}: {message}")]
    Network {
        /// The URL.
        uri: String,
        /// What failed.
        message: String,
    },
    /// The fetch took longer than `oidc.fetch_timeout_ms`.
    #[error("{uri}: no answer within {timeout_ms} ms")]
    Timeout {
        /// The URL.
        uri: String,
        /// The limit.
        timeout_ms: u128,
    },
    /// The document is larger than `oidc.max_jwks_bytes`.
    #[error("{source_name}: the JWKS is larger than {limit} bytes")]
    TooLarge {
        /// The file or URL.
        source_name: String,
        /// The limit.
        limit: usize,
    },
    /// The document is not a JWKS with at least one usable signature key.
    #[error("{source_name}: {message}")]
    Invalid {
        /// The file or URL.
        source_name: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Default)]
struct State {
    keys: Option<Arc<Vec<Jwk>>>,
    loaded_at: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<FetchError>,
}

/// One issuer's key cache.
pub struct Jwks {
    source: Source,
    limits: Limits,
    tls: Arc<rustls::ClientConfig>,
    state: tokio::sync::Mutex<State>,
}

/// What a key lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// The key to verify with.
    Found(Jwk),
    /// The keys are known, but none has this id (after a refetch, when one was allowed).
    UnknownKid,
    /// No keys could be loaded at all.
    Unavailable(FetchError),
}

impl Jwks {
    /// A cache that loads nothing until the first lookup.
    pub fn new(source: Source, limits: Limits, tls: Arc<rustls::ClientConfig>) -> Jwks {
        Jwks {
            source,
            limits,
            tls,
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// The key with id `kid`; with no `kid`, the only key, when there is exactly one.
    pub async fn key(&self, kid: Option<&str>) -> Lookup {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        let stale = st
            .loaded_at
            .is_none_or(|at| now.duration_since(at) >= self.limits.refresh);
        if stale && self.may_attempt(&st, now) {
            self.reload(&mut st, now).await;
        }
        let Some(keys) = st.keys.clone() else {
            return Lookup::Unavailable(st.last_error.clone().unwrap_or_else(|| {
                FetchError::Invalid {
                    source_name: self.source_name(),
                    message: "no keys loaded yet".into(),
                }
            }));
        };
        if let Some(k) = find(&keys, kid) {
            return Lookup::Found(k);
        }
        // An unknown key id: the issuer may have rotated its keys.
        if self.may_attempt(&st, now) {
            self.reload(&mut st, now).await;
            if let Some(k) = st.keys.as_deref().and_then(|keys| find(keys, kid)) {
                return Lookup::Found(k);
            }
        }
        Lookup::UnknownKid
    }

    fn may_attempt(&self, st: &State, now: Instant) -> bool {
        st.last_attempt
            .is_none_or(|at| now.duration_since(at) >= self.limits.min_refetch)
    }

    async fn reload(&self, st: &mut State, now: Instant) {
        st.last_attempt = Some(now);
        match self.load().await {
            Ok(keys) => {
                st.keys = Some(Arc::new(keys));
                st.loaded_at = Some(now);
                st.last_error = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, kept = st.keys.is_some(), "cannot load an OIDC issuer's keys");
                st.last_error = Some(e);
            }
        }
    }

    fn source_name(&self) -> String {
        match &self.source {
            Source::File(p) => p.display().to_string(),
            Source::Uri(u) => u.to_string(),
        }
    }

    async fn load(&self) -> Result<Vec<Jwk>, FetchError> {
        let bytes = match &self.source {
            Source::File(path) => read_file(path, self.limits.max_bytes).await?,
            Source::Uri(uri) => {
                match tokio::time::timeout(
                    self.limits.timeout,
                    fetch(uri, self.tls.clone(), self.limits.max_bytes),
                )
                .await
                {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(FetchError::Timeout {
                            uri: uri.to_string(),
                            timeout_ms: self.limits.timeout.as_millis(),
                        });
                    }
                }
            }
        };
        parse_jwks(&bytes).map_err(|message| FetchError::Invalid {
            source_name: self.source_name(),
            message,
        })
    }
}

fn find(keys: &[Jwk], kid: Option<&str>) -> Option<Jwk> {
    match kid {
        Some(kid) => keys
            .iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid))
            .cloned(),
        None if keys.len() == 1 => keys.first().cloned(),
        None => None,
    }
}

async fn read_file(path: &std::path::Path, max: usize) -> Result<Vec<u8>, FetchError> {
    use tokio::io::AsyncReadExt as _;
    let err = |e: std::io::Error| FetchError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let file = tokio::fs::File::open(path).await.map_err(err)?;
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit).read_to_end(&mut buf).await.map_err(err)?;
    if buf.len() > max {
        return Err(FetchError::TooLarge {
            source_name: path.display().to_string(),
            limit: max,
        });
    }
    Ok(buf)
}

/// GETs `uri` over HTTPS (HTTP/1.1) and returns a 200 answer's body.
async fn fetch(
    uri: &http::Uri,
    tls: Arc<rustls::ClientConfig>,
    max: usize,
) -> Result<Vec<u8>, FetchError> {
    let net = |message: String| FetchError::Network {
        uri: uri.to_string(),
        message,
    };
    let host = uri.host().ok_or_else(|| net("no host".into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| net(format!("cannot connect: {e}")))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| net(format!("bad server name: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| net(format!("TLS: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| net(format!("HTTP: {e}")))?;
    let driver = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("snowtrail/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| net(format!("request: {e}")))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| net(format!("HTTP: {e}")))?;
        if resp.status() != http::StatusCode::OK {
            return Err(net(format!("HTTP status {}", resp.status())));
        }
        match Limited::new(resp.into_body(), max).collect().await {
            Ok(b) => Ok(b.to_bytes().to_vec()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(FetchError::TooLarge {
                source_name: uri.to_string(),
                limit: max,
            }),
            Err(e) => Err(net(format!("body: {e}"))),
        }
    }
    .await;
    driver.abort();
    result
}

/// The usable signature keys of a JWKS document.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<Jwk>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no \"keys\" array")?;
    let usable: Vec<Jwk> = keys
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter(|k| {
            matches!(
                k.common.public_key_use,
                None | Some(PublicKeyUse::Signature)
            )
        })
        .filter(|k| {
            !matches!(
                k.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
            )
        })
        .collect();
    if usable.is_empty() {
        return Err("no usable signature key".into());
    }
    Ok(usable)
}
