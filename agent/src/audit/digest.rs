//! Signed digests of the audit trail: the format, the host's signing key, and the chain rules.
//!
//! In the manner of AWS CloudTrail's digest files: every so often (`audit.digest_interval_s`), at
//! shutdown, and at start-up when a crash interrupted one, the writer publishes a digest that names
//! each file closed since the previous digest with its SHA-256, size, row count and first and last
//! event time, and links to the previous digest by its SHA-256 and signature. Each digest is signed
//! with the host's Ed25519 key, so the digests of a host form a chain that `audit verify` walks.
//!
//! Layout: `<audit_dir>/_digests/date=YYYY-MM-DD/hour=HH/<host>-<sequence, 10 digits>-<end
//! time>.json`, partitioned by the digest's end time (UTC). The leading underscore keeps
//! Hive-style readers (DuckDB, Spark) out of it. A digest file is one JSON object:
//!
//! ```json
//! {"digest": {"version": 1, "host": "h", "sequence": 7, "public_key": "ed25519:…",
//!             "reason": "interval", "digest_start": "…Z", "digest_end": "…Z",
//!             "interval_s": 3600, "starts_chain": false,
//!             "previous": {"path": "_digests/date=…/h-0000000006-….json",
//!                          "sha256": "…", "signature": "…"},
//!             "files": [{"root": "audit", "path": "date=…/hour=…/….parquet", "sha256": "…",
//!                        "bytes": 1234, "rows": 10, "first_event_time": "…Z",
//!                        "last_event_time": "…Z"}]},
//!  "signature": "…"}
//! ```
//!
//! The signature (hex) is Ed25519 over [`SIGNING_CONTEXT`] followed by the `digest` object as
//! serialized by this module (fields in the order above, no white space): verifying re-serializes
//! the parsed object, so a digest reformatted by hand still verifies while any changed value does
//! not. `previous.sha256` is the SHA-256 of the previous digest file's bytes as stored. The first
//! digest of a chain has `starts_chain: true` and no `previous`. A file's `path` is relative to its
//! `root`: `audit` (the audit directory) or `recordings` (the recordings directory), so one chain
//! can cover both.
//!
//! The key: `<state_dir>/digest/signing.key`, the 32-byte Ed25519 seed in hex, mode 0600, created
//! on first need. Its public half in text form is `ed25519:` followed by 64 hex digits
//! ([`public_key_text`]), what `snowtrail audit pubkey` prints and `audit verify --pubkey` reads.
//!
//! This module does no scheduling (the writer's `digest_log` does) and no verification of a whole
//! trail (`digest_verify` does).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use nix::fcntl::{RenameFlags, renameat2};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::files::{hour_of, partition_rel};
use super::journal::sync_dir;

/// The directory under the audit directory that holds the digests.
pub const DIGEST_DIR: &str = "_digests";
/// The digest format this agent writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Prefix of the signed message, so a digest signature can never be mistaken for another use of
/// the key.
pub const SIGNING_CONTEXT: &[u8] = b"snowtrail audit digest v1\n";
/// The directory under the state directory that holds the key, the chain head and the files
/// closed since the last digest.
pub const STATE_SUBDIR: &str = "digest";
/// The signing key's file name under [`STATE_SUBDIR`].
pub const KEY_FILE: &str = "signing.key";
/// Prefix of a public key's text form.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// Why a digest or the signing key could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A digest, the chain head or the pending list is not valid JSON of the expected shape.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key file is not a 32-byte seed in hex, or is readable by others.
    #[error("signing key {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> DigestError + 'a {
    move |source| DigestError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Which directory a listed file's path is relative to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Root {
    /// The audit directory.
    Audit,
    /// The recordings directory (recorded results).
    Recordings,
}

/// Why a digest was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `digest_interval_s` passed.
    Interval,
    /// The writer stopped cleanly.
    Shutdown,
    /// Start-up found files closed but not yet digested (a crash interrupted the digest).
    Recovery,
}

/// One closed file, as a digest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// The directory `path` is relative to.
    pub root: Root,
    /// The file's path below its root, `/`-separated.
    pub path: String,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// The file's size.
    pub bytes: u64,
    /// Rows in the file.
    pub rows: u64,
    /// The earliest `event_time` in the file (RFC 3339, UTC, microseconds).
    pub first_event_time: String,
    /// The latest `event_time` in the file.
    pub last_event_time: String,
}

/// The link from a digest to the one before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousDigest {
    /// The previous digest's path below the audit directory.
    pub path: String,
    /// SHA-256 of the previous digest file's bytes, hex.
    pub sha256: String,
    /// The previous digest's signature, hex.
    pub signature: String,
}

/// What a digest says; the signed part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestBody {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The host whose files these are (as in file names).
    pub host: String,
    /// Position in the host's chain, from 1.
    pub sequence: u64,
    /// The signer's public key in text form ([`public_key_text`]).
    pub public_key: String,
    /// Why it was written.
    pub reason: Reason,
    /// When the previous digest was written (or the chain started).
    pub digest_start: String,
    /// When this digest was written; its partition.
    pub digest_end: String,
    /// `digest_interval_s` when it was written: the next digest is due by `digest_end` plus this
    /// while the agent runs.
    pub interval_s: u64,
    /// Whether this digest starts the chain (it has no previous digest).
    pub starts_chain: bool,
    /// The previous digest, unless this one starts the chain.
    pub previous: Option<PreviousDigest>,
    /// The files closed since the previous digest.
    pub files: Vec<FileRecord>,
}

/// A digest file: the body and its signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestFile {
    /// The signed body.
    pub digest: DigestBody,
    /// Ed25519 signature over [`signed_message`], hex.
    pub signature: String,
}

/// The bytes a digest's signature covers.
pub fn signed_message(body: &DigestBody) -> Vec<u8> {
    let mut m = SIGNING_CONTEXT.to_vec();
    // Serializing a struct of strings, integers and booleans cannot fail.
    m.extend(serde_json::to_vec(body).unwrap_or_default());
    m
}

impl DigestFile {
    /// Signs `body` with `key`.
    pub fn sign(body: DigestBody, key: &SigningKey) -> DigestFile {
        let sig = key.sign(&signed_message(&body));
        DigestFile {
            digest: body,
            signature: hex(&sig.to_bytes()),
        }
    }

    /// The file's bytes as written: compact JSON and a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses a digest file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<DigestFile, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Whether the signature is `key`'s over the body.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let Some(sig) = unhex(&self.signature).and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
            return false;
        };
        key.verify(&signed_message(&self.digest), &Signature::from_bytes(&sig))
            .is_ok()
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes of a hex string, or `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// SHA-256 of some bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 (hex) and size of a file, read in pieces.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex(&h.finalize()), n))
}

/// A time as digests write it: RFC 3339, UTC, microseconds.
pub fn time_text(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses a time written by [`time_text`].
pub fn parse_time(s: &str) -> Option<SystemTime> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| SystemTime::from(t.with_timezone(&Utc)))
}

/// A public key's text form: `ed25519:` and 64 hex digits.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC_KEY_PREFIX}{}", hex(key.as_bytes()))
}

/// Parses a public key's text form (surrounding white space allowed).
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, String> {
    let hexpart = s
        .trim()
        .strip_prefix(PUBLIC_KEY_PREFIX)
        .ok_or_else(|| format!("a public key starts with {PUBLIC_KEY_PREFIX}"))?;
    let bytes = unhex(hexpart)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or("a public key is ed25519: followed by 64 hex digits")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// A digest's path below the audit directory: its partition and name.
pub fn digest_rel_path(host: &str, sequence: u64, end: SystemTime) -> String {
    let t = DateTime::<Utc>::from(end);
    format!(
        "{DIGEST_DIR}/{}/{host}-{sequence:010}-{}.json",
        partition_rel(hour_of(end)).to_string_lossy(),
        t.format("%Y%m%dT%H%M%SZ")
    )
}

/// The host and sequence number a digest's file name claims (`<host>-<sequence>-<time>.json`).
pub fn parse_digest_name(name: &str) -> Option<(&str, u64)> {
    let stem = name.strip_suffix(".json")?;
    let (rest, _time) = stem.rsplit_once('-')?;
    let (host, seq) = rest.rsplit_once('-')?;
    if seq.len() != 10 {
        return None;
    }
    Some((host, seq.parse().ok()?))
}

/// The directory of the key, chain head and pending list: `<state_dir>/digest`.
pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_SUBDIR)
}

/// Creates `<state_dir>/digest` (mode 0700) if needed.
pub(crate) fn ensure_state_dir(state_dir: &Path) -> Result<PathBuf, DigestError> {
    let dir = state_path(state_dir);
    if !dir.is_dir() {
        fs::create_dir_all(state_dir).map_err(io_err("create", state_dir))?;
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => sync_dir(state_dir).map_err(io_err("sync", state_dir))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
    }
    Ok(dir)
}

/// Loads the host's signing key from the state directory, if it exists.
pub fn load_key(state_dir: &Path) -> Result<Option<SigningKey>, DigestError> {
    let path = state_path(state_dir).join(KEY_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let key_err = |message: &str| DigestError::Key {
        path: path.clone(),
        message: message.to_owned(),
    };
    let mode = fs::metadata(&path)
        .map_err(io_err("stat", &path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(key_err(&format!(
            "mode {:o} lets others read it; it must be 0600",
            mode & 0o777
        )));
    }
    let seed = unhex(text.trim())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| key_err("not 64 hex digits"))?;
    Ok(Some(SigningKey::from_bytes(&seed)))
}

/// Loads the host's signing key, creating it (mode 0600, atomically) on first need.
pub fn load_or_create_key(state_dir: &Path) -> Result<SigningKey, DigestError> {
    if let Some(k) = load_key(state_dir)? {
        return Ok(k);
    }
    let dir = ensure_state_dir(state_dir)?;
    let mut seed = [0u8; 32];
    let urandom = Path::new("/dev/urandom");
    File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(io_err("read", urandom))?;
    let key = SigningKey::from_bytes(&seed);
    let tmp_name = format!(".{KEY_FILE}.{}.tmp", std::process::id());
    let tmp = dir.join(&tmp_name);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    let written = f
        .write_all(format!("{}\n", hex(&seed)).as_bytes())
        .and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", &tmp)(e));
    }
    let dir_file = File::open(&dir).map_err(io_err("open", &dir))?;
    let renamed = renameat2(
        &dir_file,
        tmp_name.as_str(),
        &dir_file,
        KEY_FILE,
        RenameFlags::RENAME_NOREPLACE,
    );
    match renamed {
        Ok(()) => {
            dir_file.sync_all().map_err(io_err("sync", &dir))?;
            Ok(key)
        }
        Err(nix::errno::Errno::EEXIST) => {
            // Another process made one meanwhile: that one is the key.
            let _ = fs::remove_file(&tmp);
            load_key(state_dir)?.ok_or_else(|| DigestError::Key {
                path: dir.join(KEY_FILE),
                message: "vanished while being created".into(),
            })
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(io_err("rename", &tmp)(e.into()))
        }
    }
}

/// Writes `bytes` to `dir/name` atomically: a temporary name, fsync, rename (never over an
/// existing file unless `replace`), directory fsync.
pub(crate) fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    replace: bool,
) -> Result<PathBuf, DigestError> {
    let tmp_name = format!(".{name}.tmp");
    let tmp = dir.join(&tmp_name);
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", &tmp)(e));
    }
    let dir_file = File::open(dir).map_err(io_err("open", dir))?;
    let flags = if replace {
        RenameFlags::empty()
    } else {
        RenameFlags::RENAME_NOREPLACE
    };
    if let Err(e) = renameat2(&dir_file, tmp_name.as_str(), &dir_file, name, flags) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("rename", &tmp)(e.into()));
    }
    dir_file.sync_all().map_err(io_err("sync", dir))?;
    Ok(dir.join(name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn body(seq: u64) -> DigestBody {
        DigestBody {
            version: FORMAT_VERSION,
            host: "h".into(),
            sequence: seq,
            public_key: String::new(),
            reason: Reason::Interval,
            digest_start: "2023-11-14T22:00:00.000000Z".into(),
            digest_end: "2023-11-14T23:00:00.000000Z".into(),
            interval_s: 3600,
            starts_chain: seq == 1,
            previous: None,
            files: vec![FileRecord {
                root: Root::Audit,
                path: "date=2023-11-14/hour=22/h-1.parquet".into(),
                sha256: sha256_hex(b"x"),
                bytes: 1,
                rows: 1,
                first_event_time: "2023-11-14T22:13:20.000000Z".into(),
                last_event_time: "2023-11-14T22:13:20.000000Z".into(),
            }],
        }
    }

    #[test]
    fn sign_and_verify_survive_reformatting_but_not_changes() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let mut b = body(1);
        b.public_key = public_key_text(&key.verifying_key());
        let d = DigestFile::sign(b, &key);
        let bytes = d.to_bytes();
        let parsed = DigestFile::parse(&bytes).unwrap();
        assert_eq!(parsed, d);
        assert!(parsed.verify(&key.verifying_key()));
        assert!(!parsed.verify(&other.verifying_key()));
        // Pretty-printed by someone: same values, still verifies.
        let pretty = serde_json::to_vec_pretty(&d).unwrap();
        assert!(
            DigestFile::parse(&pretty)
                .unwrap()
                .verify(&key.verifying_key())
        );
        // One value changed: it does not.
        let mut changed = parsed.clone();
        changed.digest.files[0].rows = 2;
        assert!(!changed.verify(&key.verifying_key()));
        let mut bad_sig = parsed;
        bad_sig.signature = "zz".into();
        assert!(!bad_sig.verify(&key.verifying_key()));
        // Unknown fields are refused, not dropped.
        let text = String::from_utf8(bytes).unwrap();
        let extra = text.replacen("{\"digest\":{", "{\"digest\":{\"x\":1,", 1);
        assert!(DigestFile::parse(extra.as_bytes()).is_err());
    }

    #[test]
    fn names_keys_and_hex() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let p = digest_rel_path("web-1", 42, t);
        assert_eq!(
            p,
            "_digests/date=2023-11-14/hour=22/web-1-0000000042-20231114T221320Z.json"
        );
        let name = p.rsplit('/').next().unwrap();
        assert_eq!(parse_digest_name(name), Some(("web-1", 42)));
        assert_eq!(parse_digest_name("x-12-y.json"), None);
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        let key = SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        let text = public_key_text(&key);
        assert!(text.starts_with("ed25519:") && text.len() == 8 + 64);
        assert_eq!(parse_public_key(&format!(" {text}\n")).unwrap(), key);
        assert!(parse_public_key("ed25519:00").is_err());
        assert!(parse_public_key(&text[8..]).is_err());
        assert_eq!(parse_time(&time_text(t)), Some(t));
    }

    #[test]
    fn key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_key(dir.path()).unwrap().is_none());
        let k = load_or_create_key(dir.path()).unwrap();
        let path = state_path(dir.path()).join(KEY_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            load_or_create_key(dir.path()).unwrap().to_bytes(),
            k.to_bytes()
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_key(dir.path()), Err(DigestError::Key { .. })));
    }
}
