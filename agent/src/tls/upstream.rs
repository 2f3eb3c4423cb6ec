//! Trust towards the real upstream: the system roots minus the agent's own CA, plus configured extra
//! roots. Verification is strict; there is no switch to turn it off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Error;

/// Builds the root store for upstream connections.
pub fn roots(
    own_ca: &rustls::pki_types::CertificateDer<'_>,
    extra_roots: &[PathBuf],
) -> Result<rustls::RootCertStore, Error> {
    let mut store = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "a system root could not be read");
    }
    for cert in native.certs {
        if cert.as_ref() == own_ca.as_ref() {
            continue;
        }
        let _ = store.add(cert);
    }
    for path in extra_roots {
        add_pem_file(&mut store, path)?;
    }
    Ok(store)
}

fn add_pem_file(store: &mut rustls::RootCertStore, path: &Path) -> Result<(), Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io(path.to_owned(), e))?;
    let certs = super::ca::pem_certs(&text);
    if certs.is_empty() {
        return Err(Error::Pem(path.to_owned(), "no certificate found".into()));
    }
    for c in certs {
        store
            .add(c)
            .map_err(|e| Error::Pem(path.to_owned(), e.to_string()))?;
    }
    Ok(())
}

/// A client configuration for upstream connections offering `alpn`.
pub fn client_config(
    roots: Arc<rustls::RootCertStore>,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ClientConfig, Error> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ca_is_never_an_upstream_root_but_extra_roots_are() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = super::super::Ca::init(dir.path(), "h").unwrap();
        // Pretend the system store holds the agent's CA: pass its own bundle as an extra root
        // through SSL_CERT_FILE is process-global, so check the filter with the extra-roots path.
        let other = tempfile::tempdir().unwrap();
        let (other_ca, _) = super::super::Ca::init(other.path(), "o").unwrap();
        let extra = other.path().join("ca.pem");
        let store = roots(ca.cert_der(), &[extra]).unwrap();
        let subjects: Vec<_> = store
            .roots
            .iter()
            .map(|r| r.subject.as_ref().to_vec())
            .collect();
        let own = webpki_subject(ca.cert_der());
        let theirs = webpki_subject(other_ca.cert_der());
        assert!(subjects.contains(&theirs));
        assert!(!subjects.contains(&own));
        assert!(roots(ca.cert_der(), &[dir.path().join("missing.pem")]).is_err());
    }

    fn webpki_subject(der: &rustls::pki_types::CertificateDer<'_>) -> Vec<u8> {
        let mut s = rustls::RootCertStore::empty();
        s.add(der.clone()).unwrap();
        s.roots[0].subject.as_ref().to_vec()
    }
}
