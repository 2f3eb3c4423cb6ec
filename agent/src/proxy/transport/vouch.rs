//! The check that a passed-through connection goes where its server name says.
//!
//! A connection whose ClientHello names a server the agent does not intercept is carried to the
//! destination the client chose, unread. Without a check, a workload could name any other host
//! in its ClientHello (`bypass.example.com`, certificate checks off on its side), send the bytes
//! to a Snowflake front and reach its account unaudited: the front answers any name with its
//! `*.snowflakecomputing.com` certificate. So before the first passthrough to a (name,
//! destination) pair, the agent makes a TLS handshake of its own to that destination with that
//! name and the upstream trust (the system roots and `tls.upstream_extra_roots`, never the
//! agent's CA), and passes the client through only when the destination proves, with a
//! certificate valid for the name, that it is the server named. A Snowflake front cannot prove
//! it is `bypass.example.com`, so the connection is refused.
//!
//! The verdict is kept per (name, destination address) for a while: a proven pair for
//! [`PROVEN_FOR`], a pair whose certificate did not match for [`REFUSED_FOR`]; failures to
//! connect or to finish the handshake are not kept, since they say nothing of who answers.
//! The cost is one extra connection and handshake from the agent to each new pair (about one
//! round trip plus the handshake's CPU, once per pair and period), and nothing on the bytes that
//! follow.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::tunnel::Tunnel;

/// How long a proven (name, destination) pair stays proven.
pub const PROVEN_FOR: Duration = Duration::from_secs(600);
/// How long a pair whose certificate did not match stays refused without a new check.
pub const REFUSED_FOR: Duration = Duration::from_secs(60);
/// The most pairs kept; beyond it, expired ones are dropped first, then all of them.
pub const MAX_PAIRS: usize = 4096;

/// Why a destination was not shown to be the server its connection names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unvouched {
    /// The name is not one a certificate can be checked against.
    #[error("{0:?} is not a server name a certificate can prove")]
    BadName(String),
    /// The destination presented a certificate that is not valid for the name (or not under
    /// the trusted roots).
    #[error("the destination's certificate is not valid for {sni}: {why}")]
    Certificate {
        /// The name the connection asked for.
        sni: String,
        /// What verification said.
        why: String,
    },
    /// The destination would not complete a TLS handshake with the agent.
    #[error("the destination failed the agent's TLS handshake for {sni}: {why}")]
    Handshake {
        /// The name the connection asked for.
        sni: String,
        /// What the handshake said.
        why: String,
    },
    /// The destination did not finish the handshake in time.
    #[error("the destination did not finish a TLS handshake for {sni} within {after:?}")]
    Timeout {
        /// The name the connection asked for.
        sni: String,
        /// The time allowed.
        after: Duration,
    },
    /// The TCP connection to the destination failed: the passthrough would have failed too.
    #[error("cannot connect to the destination: {0}")]
    Connect(std::io::ErrorKind),
    /// The proxy in front of the destination did not open the agent's own tunnel to it.
    #[error("the proxy did not open a tunnel for the check: {0}")]
    Tunnel(String),
}

/// The checker with its kept verdicts, shared by every connection.
pub struct Vouch {
    client: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    kept: Mutex<HashMap<Pair, Kept>>,
}

/// What a verdict is kept for: the name, the destination, and the tunnel through the proxy there.
type Pair = (String, SocketAddr, Option<Tunnel>);

/// A verdict and when it was reached.
#[derive(Clone)]
struct Kept {
    at: Instant,
    verdict: Result<(), Unvouched>,
}

impl Vouch {
    /// A checker trusting `roots` (the upstream trust).
    pub fn new(
        roots: Arc<rustls::RootCertStore>,
        connect_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Result<Vouch, crate::tls::Error> {
        let client = crate::tls::upstream::client_config(roots, Vec::new())?;
        Ok(Vouch {
            client: Arc::new(client),
            connect_timeout,
            handshake_timeout,
            kept: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `dst` (or, through the proxy at `dst`, the tunnel `via`) is shown to be server
    /// `sni`: from a kept verdict, or by a handshake now.
    pub async fn check(
        &self,
        sni: &str,
        dst: SocketAddr,
        via: Option<&Tunnel>,
    ) -> Result<(), Unvouched> {
        let key = (sni.to_owned(), dst, via.cloned());
        if let Some(kept) = crate::sync::lock(&self.kept).get(&key).cloned() {
            let ttl = if kept.verdict.is_ok() {
                PROVEN_FOR
            } else {
                REFUSED_FOR
            };
            if kept.at.elapsed() < ttl {
                return kept.verdict;
            }
        }
        let verdict = self.handshake(sni, dst, via).await;
        if matches!(verdict, Ok(()) | Err(Unvouched::Certificate { .. })) {
            let mut kept = crate::sync::lock(&self.kept);
            if kept.len() >= MAX_PAIRS {
                kept.retain(|_, k| k.at.elapsed() < PROVEN_FOR);
                if kept.len() >= MAX_PAIRS {
                    kept.clear();
                }
            }
            kept.insert(
                key,
                Kept {
                    at: Instant::now(),
                    verdict: verdict.clone(),
                },
            );
        }
        verdict
    }

    /// Pairs whose verdict is kept now, for status.
    pub fn kept(&self) -> usize {
        crate::sync::lock(&self.kept).len()
    }

    async fn handshake(
        &self,
        sni: &str,
        dst: SocketAddr,
        via: Option<&Tunnel>,
    ) -> Result<(), Unvouched> {
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned())
            .map_err(|_| Unvouched::BadName(sni.to_owned()))?;
        if matches!(name, rustls::pki_types::ServerName::IpAddress(_)) {
            return Err(Unvouched::BadName(sni.to_owned()));
        }
        let mut tcp =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(dst)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(Unvouched::Connect(e.kind())),
                Err(_) => return Err(Unvouched::Connect(std::io::ErrorKind::TimedOut)),
            };
        if let Some(via) = via {
            super::tunnel::open(&mut tcp, via, self.connect_timeout)
                .await
                .map_err(|e| Unvouched::Tunnel(e.to_string()))?;
        }
        let connector = tokio_rustls::TlsConnector::from(self.client.clone());
        match tokio::time::timeout(self.handshake_timeout, connector.connect(name, tcp)).await {
            Ok(Ok(mut tls)) => {
                // Proven; say goodbye properly so the server logs no error.
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                Ok(())
            }
            Ok(Err(e)) => {
                let why = e.to_string();
                let certificate = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|r| {
                        matches!(
                            r,
                            rustls::Error::InvalidCertificate(_)
                                | rustls::Error::NoCertificatesPresented
                        )
                    });
                if certificate {
                    Err(Unvouched::Certificate {
                        sni: sni.to_owned(),
                        why,
                    })
                } else {
                    Err(Unvouched::Handshake {
                        sni: sni.to_owned(),
                        why,
                    })
                }
            }
            Err(_) => Err(Unvouched::Timeout {
                sni: sni.to_owned(),
                after: self.handshake_timeout,
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::{CertificateParams, DnType, IsCa, KeyPair};
    use tokio::net::TcpListener;

    use super::*;

    /// A TLS server on loopback presenting a certificate for `names` from a CA of its own; returns
    /// its address, the CA (to trust) and a count of the connections it accepted.
    async fn server(names: &[&str]) -> (SocketAddr, rustls::RootCertStore, Arc<AtomicUsize>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "vouch test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap()
                .signed_by(&leaf_key, &issuer)
                .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        );
        let config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(tcp).await;
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        (addr, roots, accepted)
    }

    fn vouch(roots: rustls::RootCertStore) -> Vouch {
        Vouch::new(
            Arc::new(roots),
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_destination_is_proven_only_for_the_names_its_certificate_holds() {
        let (addr, roots, accepted) = server(&["*.snowflakecomputing.com"]).await;
        let v = vouch(roots);
        assert_eq!(
            v.check("xy12345.snowflakecomputing.com", addr, None).await,
            Ok(())
        );
        // A Snowflake front asked to be another host cannot prove it.
        let refused = v.check("bypass.example.com", addr, None).await.unwrap_err();
        assert!(
            matches!(&refused, Unvouched::Certificate { sni, .. } if sni == "bypass.example.com"),
            "{refused:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Both verdicts are kept: no new handshake for either pair.
        assert_eq!(
            v.check("xy12345.snowflakecomputing.com", addr, None).await,
            Ok(())
        );
        assert_eq!(
            v.check("bypass.example.com", addr, None).await,
            Err(refused)
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(v.kept(), 2);
    }

    #[tokio::test]
    async fn an_untrusted_certificate_proves_nothing() {
        let (addr, _theirs, _) = server(&["api.example.com"]).await;
        let (_, other_roots, _) = server(&["other.example.com"]).await;
        let v = vouch(other_roots);
        assert!(matches!(
            v.check("api.example.com", addr, None).await,
            Err(Unvouched::Certificate { .. })
        ));
    }

    #[tokio::test]
    async fn a_failed_connect_is_not_kept_and_an_address_is_not_a_name() {
        let (_, roots, _) = server(&["a.example.com"]).await;
        let v = vouch(roots);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert_eq!(
            v.check("a.example.com", closed, None).await,
            Err(Unvouched::Connect(std::io::ErrorKind::ConnectionRefused))
        );
        assert_eq!(v.kept(), 0);
        assert!(matches!(
            v.check("127.0.0.1", closed, None).await,
            Err(Unvouched::BadName(_))
        ));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let v = Vouch::new(
            Arc::new(rustls::RootCertStore::empty()),
            Duration::from_secs(5),
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(matches!(
            v.check("a.example.com", addr, None).await,
            Err(Unvouched::Timeout { .. })
        ));
        drop(silent);
    }
}
