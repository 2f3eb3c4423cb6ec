//! The fake's test CA and its server certificate.
//!
//! The CA is kept in the given directory (`ca.pem`, `ca-key.pem`) and reused when both files are
//! there, so a demo's trust survives restarts; tests give a fresh directory and get a fresh CA.
//! One leaf names every configured host (wildcards allowed) plus the listen address.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// File name of the CA certificate in the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA key in the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// The fake's CA, loaded or created.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    /// Where `ca.pem` is.
    pub cert_path: PathBuf,
}

impl TestCa {
    /// Loads the CA from `dir`, or creates it there.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<TestCa> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !(cert_path.exists() && key_path.exists()) {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let cert = ca_params().self_signed(&key)?;
            write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        }
        let key = KeyPair::from_pem(&std::fs::read_to_string(&key_path)?)?;
        let pem = std::fs::read_to_string(&cert_path)?;
        let cert_der = snowtrail::tls::ca::pem_certs(&pem)
            .into_iter()
            .next()
            .with_context(|| format!("{} holds no certificate", cert_path.display()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(TestCa {
            issuer,
            cert_der,
            cert_path,
        })
    }

    /// A leaf naming `hosts` (and `ip`, and `localhost`) signed by this CA, with its key.
    fn issue(&self, hosts: &[String], ip: IpAddr) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            hosts.first().map_or("fake-snowflake", String::as_str),
        );
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        for h in hosts {
            match h.parse::<IpAddr>() {
                Ok(ip) => sans.push(SanType::IpAddress(ip)),
                Err(_) => sans.push(SanType::DnsName(h.as_str().try_into()?)),
            }
        }
        sans.push(SanType::IpAddress(ip));
        sans.push(SanType::DnsName("localhost".try_into()?));
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now.saturating_sub(time::Duration::hours(1));
        params.not_after = now.saturating_add(time::Duration::days(30));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert, key))
    }

    /// A leaf for `hosts` (and `ip`) as PEM: the chain (leaf, then this CA) and the PKCS#8 key,
    /// for servers configured from files (the bench's reverse proxies).
    pub fn leaf_pem(&self, hosts: &[String], ip: IpAddr) -> anyhow::Result<(String, String)> {
        let (cert, key) = self.issue(hosts, ip)?;
        let ca = std::fs::read_to_string(&self.cert_path)
            .with_context(|| format!("cannot read {}", self.cert_path.display()))?;
        let chain = format!("{}{ca}", cert.pem());
        Ok((chain, key.serialize_pem()))
    }

    /// A rustls server config for `hosts` (and `ip`), offering h2 (if `http2`) and http/1.1.
    pub fn server_config(
        &self,
        hosts: &[String],
        ip: IpAddr,
        http2: bool,
    ) -> anyhow::Result<rustls::ServerConfig> {
        let (cert, key) = self.issue(hosts, ip)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(snowtrail::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), self.cert_der.clone()], key_der)?;
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(config)
    }

    /// The acceptor for [`TestCa::server_config`].
    pub fn acceptor(
        &self,
        hosts: &[String],
        ip: IpAddr,
        http2: bool,
    ) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(
            self.server_config(hosts, ip, http2)?,
        )))
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "snowtrail tests");
    dn.push(DnType::CommonName, "fake Snowflake test CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now.saturating_sub(time::Duration::hours(1));
    params.not_after = now.saturating_add(time::Duration::days(3650));
    params
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}
