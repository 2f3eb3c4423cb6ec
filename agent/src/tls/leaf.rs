//! Leaf certificates minted per server name, signed by the agent's CA, cached.
//!
//! One ECDSA P-256 key serves every leaf (minting is then one signature, not a key generation);
//! each server name gets its own certificate, valid [`LEAF_VALIDITY`] and replaced once half of
//! that has passed. The cache is bounded: past [`MAX_CACHED`] names the oldest entry goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{Ca, Error};

/// How long a minted leaf is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 86_400);
/// Most server names kept in the cache.
pub const MAX_CACHED: usize = 4096;

/// Mints and caches leaves; plugs into rustls as the server's certificate resolver.
pub struct LeafResolver {
    ca: Arc<Ca>,
    key: KeyPair,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<HashMap<String, (Arc<CertifiedKey>, Instant)>>,
}

impl std::fmt::Debug for LeafResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafResolver").finish_non_exhaustive()
    }
}

impl LeafResolver {
    /// A resolver minting with `ca`.
    pub fn new(ca: Arc<Ca>) -> Result<LeafResolver, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = super::provider().key_provider.load_private_key(der)?;
        Ok(LeafResolver {
            ca,
            key,
            signing_key,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The certificate chain and key for `server_name`, minted if not cached or past half its life.
    pub fn certified_key(&self, server_name: &str) -> Result<Arc<CertifiedKey>, Error> {
        let name = server_name.to_ascii_lowercase();
        if let Some((ck, minted)) = crate::sync::lock(&self.cache).get(&name)
            && minted.elapsed() < LEAF_VALIDITY / 2
        {
            return Ok(ck.clone());
        }
        let ck = Arc::new(self.mint(&name)?);
        {
            let mut cache = crate::sync::lock(&self.cache);
            if cache.len() >= MAX_CACHED
                && !cache.contains_key(&name)
                && let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
            cache.insert(name, (ck.clone(), Instant::now()));
        }
        Ok(ck)
    }

    fn mint(&self, name: &str) -> Result<CertifiedKey, Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.try_into()?),
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = super::ca::time_now();
        params.not_before = now.saturating_sub(time::Duration::hours(1));
        params.not_after = now
            .saturating_add(time::Duration::try_from(LEAF_VALIDITY).unwrap_or(time::Duration::DAY));
        let cert = params.signed_by(&self.key, self.ca.issuer())?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.ca.cert_der().clone()],
            self.signing_key.clone(),
        ))
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        match self.certified_key(name) {
            Ok(ck) => Some(ck),
            Err(e) => {
                tracing::warn!(sni = name, error = %e, "could not mint a leaf certificate");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;

    #[test]
    fn leaves_chain_to_the_ca_and_are_cached() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = Ca::init(dir.path(), "h").unwrap();
        let ca = Arc::new(ca);
        let r = LeafResolver::new(ca.clone()).unwrap();
        let a = r.certified_key("XY12345.snowflakecomputing.com").unwrap();
        let b = r.certified_key("xy12345.snowflakecomputing.com").unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "the same name is served from the cache"
        );
        assert_eq!(a.cert.len(), 2);
        assert_eq!(&a.cert[1], ca.cert_der());

        // A rustls client that trusts only the CA accepts the leaf for that name.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            super::super::provider(),
        )
        .build()
        .unwrap();
        let name =
            rustls::pki_types::ServerName::try_from("xy12345.snowflakecomputing.com").unwrap();
        verifier
            .verify_server_cert(
                &a.cert[0],
                &a.cert[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        let other = rustls::pki_types::ServerName::try_from("evil.example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &a.cert[0],
                    &a.cert[1..],
                    &other,
                    &[],
                    rustls::pki_types::UnixTime::now()
                )
                .is_err()
        );
    }
}
