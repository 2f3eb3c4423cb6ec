//! A test issuer: an ECDSA P-256 key made in the test, its JWKS on disk or served over HTTPS
//! from a loopback server, and tokens signed with it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use super::*;

const ISS: &str = "https://idp.test";
const AUD: &str = "snowflake";

struct TestKey {
    key: rcgen::KeyPair,
    kid: String,
}

impl TestKey {
    fn new(kid: &str) -> TestKey {
        TestKey {
            key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            kid: kid.to_owned(),
        }
    }

    fn jwk(&self) -> Value {
        let raw = self.key.public_key_raw();
        assert_eq!(raw.len(), 65);
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
        })
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(claims, Some(&self.kid))
    }

    fn sign_as(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(str::to_owned);
        let key = EncodingKey::from_ec_der(&self.key.serialize_der());
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn claims() -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": "00u1abc", "email": "ada@example.com",
        "groups": ["analysts", "etl-owners"], "iat": now(), "exp": now() + 600,
    })
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    c[key] = v;
    c
}

fn roots() -> Arc<rustls::RootCertStore> {
    Arc::new(rustls::RootCertStore::empty())
}

/// A verifier trusting `ISS` with its keys in a file.
fn file_verifier(dir: &tempfile::TempDir, keys: &[&TestKey], extra: &str) -> Verifier {
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(keys)).unwrap();
    let cfg: OidcConfig = toml::from_str(&format!(
        r#"{extra}
        [[issuers]]
        issuer = "{ISS}"
        audiences = ["{AUD}", "other"]
        jwks_file = "{}"
        "#,
        path.display()
    ))
    .unwrap();
    cfg.validate().unwrap();
    Verifier::new(&cfg, roots()).unwrap()
}

#[tokio::test]
async fn a_valid_token_gives_the_human() {
    let dir = tempfile::tempdir().unwrap();
    let k = TestKey::new("k1");
    let v = file_verifier(&dir, &[&k], "");
    let h = v.verify(&k.sign(&claims())).await.unwrap();
    assert_eq!(h.subject, "00u1abc");
    assert_eq!(h.name(), "ada@example.com");
    assert_eq!(h.groups, ["analysts", "etl-owners"]);
    // No email: the subject names the human; a single-string groups claim is one group.
    let mut c = with(claims(), "groups", json!("solo"));
    c.as_object_mut().unwrap().remove("email");
    let h = v.verify(&k.sign(&c)).await.unwrap();
    assert_eq!(h.name(), "00u1abc");
    assert_eq!(h.groups, ["solo"]);
}

#[tokio::test]
async fn each_invalid_token_has_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let k = TestKey::new("k1");
    let v = file_verifier(&dir, &[&k], "clock_skew_s = 60");
    let err = |t: String| {
        let v = &v;
        async move { v.verify(&t).await.unwrap_err() }
    };
    assert_eq!(
        err(k.sign(&with(claims(), "exp", json!(now() - 3600)))).await,
        TokenError::Expired
    );
    // Within the clock skew an expired token still passes.
    v.verify(&k.sign(&with(claims(), "exp", json!(now() - 10))))
        .await
        .unwrap();
    assert_eq!(
        err(k.sign(&with(claims(), "nbf", json!(now() + 3600)))).await,
        TokenError::NotYetValid
    );
    assert_eq!(
        err(k.sign(&with(claims(), "aud", json!("someone-else")))).await,
        TokenError::WrongAudience
    );
    assert_eq!(
        err(k.sign(&with(claims(), "iss", json!("https://evil.test")))).await,
        TokenError::WrongIssuer("https://evil.test".into())
    );
    // Signed by another key that claims the issuer's key id.
    let forger = TestKey::new("k1");
    assert_eq!(err(forger.sign(&claims())).await, TokenError::BadSignature);
    // A token whose payload was altered after signing.
    let good = k.sign(&claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let altered =
        URL_SAFE_NO_PAD.encode(with(claims(), "sub", json!("root")).to_string().as_bytes());
    parts[1] = &altered;
    assert_eq!(err(parts.join(".")).await, TokenError::BadSignature);
    let stranger = TestKey::new("k2");
    assert_eq!(err(stranger.sign(&claims())).await, TokenError::UnknownKid);
    assert!(matches!(
        err("not-a-jwt".into()).await,
        TokenError::Malformed(_)
    ));
    // A symmetric algorithm is never accepted (no key confusion with the public key).
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"s"),
    )
    .unwrap();
    assert!(matches!(err(hs).await, TokenError::UnsupportedAlgorithm(_)));
    // No error message carries the token.
    let t = k.sign(&with(claims(), "exp", json!(0)));
    assert!(!err(t.clone()).await.to_string().contains(&t));
}

#[tokio::test]
async fn unreachable_keys_are_a_clear_error() {
    // A loopback port with nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let v = uri_verifier(&format!("https://127.0.0.1:{port}/jwks"), roots(), 300);
    let k = TestKey::new("k1");
    match v.verify(&k.sign(&claims())).await.unwrap_err() {
        TokenError::JwksUnreachable(jwks::FetchError::Network { message, .. }) => {
            assert!(message.contains("cannot connect"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A server that accepts and never answers: the fetch times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = silent.accept().await.unwrap();
            held.push(s);
        }
    });
    let v = uri_verifier(&format!("https://{addr}/jwks"), roots(), 300);
    let e = v.verify(&k.sign(&claims())).await.unwrap_err();
    assert_eq!(
        e,
        TokenError::JwksUnreachable(jwks::FetchError::Timeout {
            uri: format!("https://{addr}/jwks"),
            timeout_ms: 300
        })
    );
    assert!(e.to_string().contains("no answer within 300 ms"), "{e}");
    hold.abort();
}

fn uri_verifier(uri: &str, roots: Arc<rustls::RootCertStore>, timeout_ms: u64) -> Verifier {
    let cfg: OidcConfig = toml::from_str(&format!(
        r#"fetch_timeout_ms = {timeout_ms}
        jwks_min_refetch_s = 3600
        [[issuers]]
        issuer = "{ISS}"
        audiences = ["{AUD}"]
        jwks_uri = "{uri}"
        "#
    ))
    .unwrap();
    cfg.validate().unwrap();
    Verifier::new(&cfg, roots).unwrap()
}

/// An HTTPS server on loopback serving `body()` at any path, counting requests; its
/// self-signed certificate is the returned root.
async fn jwks_server(
    body: Arc<std::sync::Mutex<String>>,
    hits: Arc<AtomicUsize>,
) -> (std::net::SocketAddr, Arc<rustls::RootCertStore>) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let mut store = rustls::RootCertStore::empty();
    store.add(ck.cert.der().clone()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let body = body.clone();
            let hits = hits.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_req| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let b = body.lock().unwrap().clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(b)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, Arc::new(store))
}

use hyper_util::rt::TokioIo;

#[tokio::test]
async fn keys_over_https_are_cached_and_refetched_on_a_new_kid_rate_limited() {
    let k1 = TestKey::new("k1");
    let k2 = TestKey::new("k2");
    let body = Arc::new(std::sync::Mutex::new(jwks(&[&k1])));
    let hits = Arc::new(AtomicUsize::new(0));
    let (addr, root) = jwks_server(body.clone(), hits.clone()).await;
    // Without the server's root the fetch fails on TLS.
    let untrusting = uri_verifier(&format!("https://{addr}/jwks"), roots(), 5_000);
    match untrusting.verify(&k1.sign(&claims())).await.unwrap_err() {
        TokenError::JwksUnreachable(jwks::FetchError::Network { message, .. }) => {
            assert!(message.contains("TLS"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let hits_before = hits.load(Ordering::SeqCst);
    assert_eq!(hits_before, 0);

    // The verifier's `jwks_min_refetch_s` is an hour: only the first load may fetch.
    let v = uri_verifier(&format!("https://{addr}/jwks"), root.clone(), 5_000);
    let h = v.verify(&k1.sign(&claims())).await.unwrap();
    assert_eq!(h.name(), "ada@example.com");
    v.verify(&k1.sign(&claims())).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the keys are cached");
    // The issuer rotates in k2, but the last fetch was just now: no refetch yet.
    *body.lock().unwrap() = jwks(&[&k1, &k2]);
    assert_eq!(
        v.verify(&k2.sign(&claims())).await.unwrap_err(),
        TokenError::UnknownKid
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "refetches are rate-limited");

    // A verifier allowed to refetch at once picks the rotated key up on the unknown kid.
    *body.lock().unwrap() = jwks(&[&k1]);
    let cfg: OidcConfig = toml::from_str(&format!(
        r#"jwks_min_refetch_s = 0
        [[issuers]]
        issuer = "{ISS}"
        audiences = ["{AUD}"]
        jwks_uri = "https://{addr}/jwks"
        "#
    ))
    .unwrap();
    let v = Verifier::new(&cfg, root).unwrap();
    v.verify(&k1.sign(&claims())).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    *body.lock().unwrap() = jwks(&[&k1, &k2]);
    v.verify(&k2.sign(&claims())).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 3, "an unknown kid refetched");
    // Still unknown after the refetch: a clear error.
    let k3 = TestKey::new("k3");
    assert_eq!(
        v.verify(&k3.sign(&claims())).await.unwrap_err(),
        TokenError::UnknownKid
    );
}

fn login(body: Value) -> LoginRequest {
    crate::snowflake::parse_login_request(json!({ "data": body }).to_string().as_bytes()).unwrap()
}

#[tokio::test]
async fn logins_are_checked_by_the_rule_for_their_workload() {
    let dir = tempfile::tempdir().unwrap();
    let k = TestKey::new("k1");
    let v = file_verifier(
        &dir,
        &[&k],
        r#"on_invalid = "allow_flag"
        [[require]]
        identity = "etl-*"
        on_invalid = "deny"
        on_missing = "deny""#,
    );
    let oauth = |token: String| {
        login(json!({"LOGIN_NAME": "ADA", "AUTHENTICATOR": "OAUTH", "TOKEN": token}))
    };
    let good = oauth(k.sign(&claims()));
    let expired = oauth(k.sign(&with(claims(), "exp", json!(now() - 3600))));
    let password = login(json!({"LOGIN_NAME": "ADA", "PASSWORD": "pw"}));
    match v.check_login(&good, Some("etl-nightly")).await {
        LoginCheck::Verified(h) => assert_eq!(h.name(), "ada@example.com"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        v.check_login(&expired, Some("etl-nightly")).await,
        LoginCheck::Denied(TokenError::Expired)
    );
    assert_eq!(
        v.check_login(&expired, Some("bi")).await,
        LoginCheck::Flagged(TokenError::Expired)
    );
    assert_eq!(
        v.check_login(&password, Some("etl-nightly")).await,
        LoginCheck::Denied(TokenError::NoToken)
    );
    assert_eq!(
        v.check_login(&password, Some("bi")).await,
        LoginCheck::Allowed
    );
    // An opaque OAuth token cannot be verified: invalid, not missing.
    let opaque = oauth("opaque-token-value".into());
    assert!(matches!(
        v.check_login(&opaque, Some("bi")).await,
        LoginCheck::Flagged(TokenError::Malformed(_))
    ));
    // A key-pair login's JWT is the workload's own, not a human token.
    let keypair = login(json!({"AUTHENTICATOR": "SNOWFLAKE_JWT", "TOKEN": k.sign(&claims())}));
    assert_eq!(
        v.check_login(&keypair, Some("bi")).await,
        LoginCheck::Allowed
    );
    // Without issuers nothing is examined.
    assert_eq!(
        Verifier::off().check_login(&expired, Some("etl-x")).await,
        LoginCheck::Off
    );
}
