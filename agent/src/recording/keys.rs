//! The recording keys: the recipient (an age X25519 public key, `age1…`) the daemon encrypts to,
//! and the identity (its private half, `AGE-SECRET-KEY-1…`) that only `snowtrail replay --key`
//! reads (docs/decisions.md §21). The daemon never holds an identity: it can write recordings but not
//! read them back.

use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use age::secrecy::ExposeSecret as _;

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// `recording.recipient` is not an age X25519 public key.
    #[error("recording.recipient {value:?} is not an age X25519 public key (age1…): {reason}")]
    Recipient {
        /// What was given.
        value: String,
        /// What the parser said.
        reason: String,
    },
    /// The key file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The key file holds no age X25519 identity.
    #[error("{0}: no age X25519 identity (AGE-SECRET-KEY-1…) in the file")]
    NoIdentity(PathBuf),
    /// Encrypting failed (a bug: encrypting to a valid recipient does not fail).
    #[error("encryption failed: {0}")]
    Encrypt(String),
    /// Decrypting failed: another key, or a damaged payload.
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
}

/// Parses `recording.recipient`.
pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, KeyError> {
    age::x25519::Recipient::from_str(s.trim()).map_err(|reason| KeyError::Recipient {
        value: s.to_owned(),
        reason: reason.to_owned(),
    })
}

/// A new identity: its file text (as `age-keygen` writes it) and its public key.
pub fn generate(created: &str) -> (String, String) {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let text = format!(
        "# created: {created}\n# public key: {public}\n{}\n",
        id.to_string().expose_secret()
    );
    (text, public)
}

/// Writes a new identity to `path` with mode 0600, never over an existing file; returns the
/// public key.
pub fn keygen(path: &Path, created: &str) -> Result<String, KeyError> {
    let (text, public) = generate(created);
    let io = |op| {
        move |source| KeyError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create"))?;
    f.write_all(text.as_bytes()).map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))?;
    Ok(public)
}

/// Reads the identities of a key file (lines `AGE-SECRET-KEY-1…`; `#` lines are comments).
pub fn read_identities(path: &Path) -> Result<Vec<age::x25519::Identity>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })?;
    let ids: Vec<_> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .filter_map(|l| age::x25519::Identity::from_str(l).ok())
        .collect();
    if ids.is_empty() {
        return Err(KeyError::NoIdentity(path.to_owned()));
    }
    Ok(ids)
}

/// Encrypts a payload to the recipient (one age file).
pub fn encrypt(recipient: &age::x25519::Recipient, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
    age::encrypt(recipient, plaintext).map_err(|e| KeyError::Encrypt(e.to_string()))
}

/// Decrypts a payload with any of `identities`.
pub fn decrypt(
    identities: &[age::x25519::Identity],
    ciphertext: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let d =
        age::Decryptor::new_buffered(ciphertext).map_err(|e| KeyError::Decrypt(e.to_string()))?;
    let mut r = d
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| KeyError::Decrypt(e.to_string()))?;
    let mut out = Vec::new();
    io::Read::read_to_end(&mut r, &mut out).map_err(|e| KeyError::Decrypt(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn keygen_writes_0600_once_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.key");
        let public = keygen(&path, "test").unwrap();
        assert!(public.starts_with("age1"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Never over an existing key.
        let err = keygen(&path, "test").unwrap_err();
        assert!(err.to_string().contains("create"), "{err}");
        assert!(std::fs::read_to_string(&path).unwrap().contains(&public));

        let recipient = parse_recipient(&public).unwrap();
        let ids = read_identities(&path).unwrap();
        let ct = encrypt(&recipient, b"ALICE@EXAMPLE.COM").unwrap();
        assert!(!ct.windows(5).any(|w| w == b"ALICE"));
        assert_eq!(decrypt(&ids, &ct).unwrap(), b"ALICE@EXAMPLE.COM");

        // Another key cannot read it.
        let other = dir.path().join("other.key");
        keygen(&other, "test").unwrap();
        assert!(decrypt(&read_identities(&other).unwrap(), &ct).is_err());
    }

    #[test]
    fn bad_recipient_and_key_file() {
        let e = parse_recipient("ssh-ed25519 AAAA").unwrap_err();
        assert!(e.to_string().contains("age1"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.key");
        std::fs::write(&p, "# nothing\n").unwrap();
        assert!(matches!(read_identities(&p), Err(KeyError::NoIdentity(_))));
    }
}
