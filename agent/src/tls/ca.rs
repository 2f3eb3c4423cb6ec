//! The agent's certificate authority: created once, kept in the state directory.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::Error;

/// File name of the CA certificate in the state directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA key in the state directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// File name of the bundle workloads are pointed at: the system roots plus the agent's CA.
pub const BUNDLE_FILE: &str = "ca-bundle.pem";
/// Where the system's roots are read from when building the bundle.
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
];
/// Validity of the CA certificate, in days.
const CA_VALIDITY_DAYS: i64 = 3650;

/// The loaded CA: what signs the leaves.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    dir: PathBuf,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What [`Ca::init`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    /// A new CA was generated.
    Created,
    /// A CA was already there and was kept.
    Existing,
}

impl Ca {
    /// Creates the CA in `state_dir` unless one is there; idempotent. Also (re)writes the bundle.
    pub fn init(state_dir: &Path, host: &str) -> Result<(Ca, InitOutcome), Error> {
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        let outcome = if cert_path.exists() && key_path.exists() {
            InitOutcome::Existing
        } else {
            fs::create_dir_all(state_dir).map_err(|e| Error::Io(state_dir.to_owned(), e))?;
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let cert = ca_params(host).self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
            InitOutcome::Created
        };
        let ca = Ca::load(state_dir)?;
        ca.write_bundle()?;
        Ok((ca, outcome))
    }

    /// Loads the CA from `state_dir`.
    pub fn load(state_dir: &Path) -> Result<Ca, Error> {
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        let mode = fs::metadata(&key_path)
            .map_err(|e| Error::Io(key_path.clone(), e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Error::KeyPermissions(key_path, mode & 0o777));
        }
        let key_pem = fs::read_to_string(&key_path).map_err(|e| Error::Io(key_path.clone(), e))?;
        let cert_pem =
            fs::read_to_string(&cert_path).map_err(|e| Error::Io(cert_path.clone(), e))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let cert_der = pem_certs(&cert_pem)
            .into_iter()
            .next()
            .ok_or_else(|| Error::Pem(cert_path.clone(), "no certificate".into()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Ca {
            issuer,
            cert_pem,
            cert_der,
            dir: state_dir.to_owned(),
        })
    }

    /// The CA certificate as PEM (`snowtrail ca export`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &rustls::pki_types::CertificateDer<'static> {
        &self.cert_der
    }

    /// What signs leaves.
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Path of the bundle workloads trust.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir.join(BUNDLE_FILE)
    }

    /// Writes `<state_dir>/ca-bundle.pem`: the system's roots followed by the agent's CA.
    pub fn write_bundle(&self) -> Result<PathBuf, Error> {
        let mut text = String::new();
        if let Some(system) = SYSTEM_BUNDLES
            .iter()
            .find_map(|p| fs::read_to_string(p).ok())
        {
            // Never list the CA twice when the package already added it to the system store.
            let own = self.cert_pem.trim();
            for block in split_pem(&system) {
                if block.trim() != own {
                    text.push_str(block.trim());
                    text.push('\n');
                }
            }
        }
        text.push_str("# snowtrail agent CA\n");
        text.push_str(self.cert_pem.trim());
        text.push('\n');
        let path = self.bundle_path();
        write_atomic(&path, text.as_bytes(), 0o644)?;
        Ok(path)
    }
}

fn ca_params(host: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "snowtrail");
    dn.push(DnType::CommonName, format!("snowtrail agent CA ({host})"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time_now();
    params.not_before = now.saturating_sub(time::Duration::hours(1));
    params.not_after = now.saturating_add(time::Duration::days(CA_VALIDITY_DAYS));
    params
}

/// The current time in rcgen's representation.
pub(crate) fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The certificates in a PEM text, DER encoded.
pub fn pem_certs(text: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(text.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// Splits a PEM bundle into its certificate blocks.
fn split_pem(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let tail = &rest[start..];
        let Some(end) = tail.find("-----END CERTIFICATE-----") else {
            break;
        };
        let end = end + "-----END CERTIFICATE-----".len();
        out.push(&tail[..end]);
        rest = &tail[end..];
    }
    out
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let err = |e| Error::Io(path.to_owned(), e);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let err = |e| Error::Io(path.to_owned(), e);
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, outcome) = Ca::init(dir.path(), "testhost").unwrap();
        assert_eq!(outcome, InitOutcome::Created);
        let pem = ca.cert_pem().to_owned();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, outcome) = Ca::init(dir.path(), "testhost").unwrap();
        assert_eq!(outcome, InitOutcome::Existing);
        assert_eq!(again.cert_pem(), pem);
        let bundle = fs::read_to_string(again.bundle_path()).unwrap();
        assert!(bundle.trim_end().ends_with(pem.trim()));
        assert_eq!(bundle.matches(pem.trim()).count(), 1);
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Ca::init(dir.path(), "h").unwrap();
        fs::set_permissions(
            dir.path().join(CA_KEY_FILE),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(
            Ca::load(dir.path()),
            Err(Error::KeyPermissions(..))
        ));
    }
}
