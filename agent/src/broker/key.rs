//! A brokered identity's private key: read from its file only if the file is the agent's alone,
//! parsed from unencrypted PKCS#8 PEM, and held in the form the JWT signer takes.
//!
//! The file is opened once (`O_NOFOLLOW`) and its owner and mode are read from the open file, so
//! the checks and the read are of the same file. A key file any other user can read (group or
//! other permission bits) or that another user owns is refused: the point of brokering is that
//! only the agent holds the key.

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
use rsa::traits::PublicKeyParts as _;

/// The largest key file read; an RSA 8192 PEM is under 7 KiB.
pub const MAX_KEY_BYTES: u64 = 64 * 1024;

/// Why a brokered identity's key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be opened or read.
    #[error("cannot read the private key {}: {reason}", path.display())]
    Read {
        /// The configured file.
        path: PathBuf,
        /// What the system said.
        reason: String,
    },
    /// The path is not a regular file (a directory, a device, a symbolic link).
    #[error("the private key {} is not a regular file", path.display())]
    NotAFile {
        /// The configured file.
        path: PathBuf,
    },
    /// Users besides the owner may read or write the file.
    #[error(
        "the private key {} is open to other users (mode {mode:04o}); it must be 0600 or 0400",
        path.display()
    )]
    Exposed {
        /// The configured file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another user owns the file.
    #[error(
        "the private key {} belongs to uid {owner}, not to the agent's uid {agent}",
        path.display()
    )]
    WrongOwner {
        /// The configured file.
        path: PathBuf,
        /// The file's owner.
        owner: u32,
        /// The agent's effective uid.
        agent: u32,
    },
    /// The file is larger than any key.
    #[error("the private key {} is larger than {MAX_KEY_BYTES} bytes", path.display())]
    TooLarge {
        /// The configured file.
        path: PathBuf,
    },
    /// The content is not an unencrypted PKCS#8 PEM RSA private key.
    #[error("the private key {} is not an unencrypted PKCS#8 PEM RSA key ({what})", path.display())]
    Unparsed {
        /// The configured file.
        path: PathBuf,
        /// What was found instead (never the content).
        what: &'static str,
    },
}

impl KeyError {
    /// The reason without the path, for the driver's message.
    pub fn reason(&self) -> String {
        match self {
            KeyError::Read { reason, .. } => format!("its private key cannot be read ({reason})"),
            KeyError::NotAFile { .. } => "its private key is not a regular file".into(),
            KeyError::Exposed { mode, .. } => {
                format!("its private key file is open to other users (mode {mode:04o})")
            }
            KeyError::WrongOwner { .. } => "its private key file belongs to another user".into(),
            KeyError::TooLarge { .. } => "its private key file is too large".into(),
            KeyError::Unparsed { what, .. } => {
                format!("its private key is not an unencrypted PKCS#8 PEM RSA key ({what})")
            }
        }
    }
}

/// A parsed private key, ready to sign; `Debug` shows only its fingerprint.
pub struct SigningKey {
    encoding: jsonwebtoken::EncodingKey,
    fingerprint: String,
    bits: usize,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("fingerprint", &self.fingerprint)
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses an unencrypted PKCS#8 PEM RSA private key; `path` only names it in errors.
    pub fn from_pem(pem: &[u8], path: &Path) -> Result<SigningKey, KeyError> {
        let unparsed = |what| KeyError::Unparsed {
            path: path.to_owned(),
            what,
        };
        let text = std::str::from_utf8(pem).map_err(|_| unparsed("not text"))?;
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(unparsed("an encrypted key"));
        }
        if text.contains("-----BEGIN RSA PRIVATE KEY-----") {
            return Err(unparsed(
                "a PKCS#1 key; convert it with `openssl pkcs8 -topk8 -nocrypt`",
            ));
        }
        if !text.contains("-----BEGIN PRIVATE KEY-----") {
            return Err(unparsed("no PEM private key"));
        }
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(text.trim())
            .map_err(|_| unparsed("not an RSA key, or damaged"))?;
        let spki = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|_| unparsed("its public key cannot be encoded"))?;
        let pkcs1 = key
            .to_pkcs1_der()
            .map_err(|_| unparsed("it cannot be encoded for signing"))?;
        Ok(SigningKey {
            encoding: jsonwebtoken::EncodingKey::from_rsa_der(pkcs1.as_bytes()),
            fingerprint: crate::snowflake::keypair::fingerprint(spki.as_bytes()),
            bits: key.size() * 8,
        })
    }

    /// Reads and parses the key file at `path`, refusing a file others can read or that another
    /// user owns.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let read_err = |e: std::io::Error| KeyError::Read {
            path: path.to_owned(),
            reason: e.kind().to_string(),
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    KeyError::NotAFile {
                        path: path.to_owned(),
                    }
                } else {
                    read_err(e)
                }
            })?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile {
                path: path.to_owned(),
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let agent = nix::unistd::geteuid().as_raw();
        if meta.uid() != agent {
            return Err(KeyError::WrongOwner {
                path: path.to_owned(),
                owner: meta.uid(),
                agent,
            });
        }
        if meta.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLarge {
                path: path.to_owned(),
            });
        }
        let mut pem = Vec::new();
        file.take(MAX_KEY_BYTES + 1)
            .read_to_end(&mut pem)
            .map_err(read_err)?;
        if pem.len() as u64 > MAX_KEY_BYTES {
            return Err(KeyError::TooLarge {
                path: path.to_owned(),
            });
        }
        SigningKey::from_pem(&pem, path)
    }

    /// The key's public fingerprint (`SHA256:...`), as Snowflake shows it for the user.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// The key in the form the JWT signer takes.
    pub(crate) fn encoding(&self) -> &jsonwebtoken::EncodingKey {
        &self.encoding
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    const KEY_A: &str = include_str!("../../tests/fixtures/keypair/rsa-a.p8");
    const FP_A: &str = "SHA256:oVMVAlwycN5k0Ob7QL/zby9VkGXZUxbzYk233P7O+5o=";

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn loads_a_private_key_and_refuses_exposed_or_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "a.p8", KEY_A, 0o600);
        let k = SigningKey::load(&good).unwrap();
        assert_eq!(k.fingerprint(), FP_A);
        assert_eq!(k.bits(), 2048);
        assert!(!format!("{k:?}").contains("PRIVATE"));

        let open = write(dir.path(), "open.p8", KEY_A, 0o644);
        let e = SigningKey::load(&open).unwrap_err();
        assert!(matches!(e, KeyError::Exposed { mode: 0o644, .. }), "{e}");
        assert!(e.reason().contains("0644"));
        let group = write(dir.path(), "group.p8", KEY_A, 0o640);
        assert!(matches!(
            SigningKey::load(&group),
            Err(KeyError::Exposed { .. })
        ));

        let garbage = write(dir.path(), "garbage.p8", "not a key at all\n", 0o600);
        let e = SigningKey::load(&garbage).unwrap_err();
        assert!(matches!(e, KeyError::Unparsed { .. }), "{e}");
        assert!(!e.to_string().contains("not a key at all"));
        let damaged = KEY_A.replace("MII", "MIJ");
        let damaged = write(dir.path(), "damaged.p8", &damaged, 0o600);
        assert!(matches!(
            SigningKey::load(&damaged),
            Err(KeyError::Unparsed { .. })
        ));
        let pkcs1 = write(
            dir.path(),
            "pkcs1.pem",
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            0o600,
        );
        assert!(
            SigningKey::load(&pkcs1)
                .unwrap_err()
                .to_string()
                .contains("PKCS#1")
        );

        assert!(matches!(
            SigningKey::load(&dir.path().join("missing.p8")),
            Err(KeyError::Read { .. })
        ));
        assert!(matches!(
            SigningKey::load(dir.path()),
            Err(KeyError::NotAFile { .. })
        ));
        let link = dir.path().join("link.p8");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(matches!(
            SigningKey::load(&link),
            Err(KeyError::NotAFile { .. })
        ));
    }
}
