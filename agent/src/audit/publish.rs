//! The atomic publish shared by the audit table and the recordings table: a file written under a
//! hidden temporary name in its final directory becomes visible under its final name only once it
//! is whole and durable, and only after the digest log knows it.
//!
//! The steps: fsync the file, hash it, tell the digest log (the [`PublishHook`]) the name it is
//! about to get, rename it without replacing anything (`renameat2` with `RENAME_NOREPLACE`), fsync
//! the directory. A crash before the rename leaves only the temporary file, which each table's
//! recovery removes and rebuilds from what it was made of (the journal, a spool).
//!
//! Collisions: an existing file is never replaced. When the final name is taken, the file gets the
//! first free `<stem>-N.<ext>` (N from 1 to 99); the digest log is told that name. A name taken
//! between that check and the rename fails the publish, which the caller retries later (its rows
//! are still in the journal or the spool), so nothing is lost either way.
//!
//! This module neither writes the file's contents nor decides its name.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use nix::fcntl::{RenameFlags, renameat2};

use super::digest::sha256_file;

/// How many other names a file may take when its own is taken.
const MAX_ATTEMPTS: u32 = 100;

/// Why a file could not be published (or its directory created).
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct PublishError {
    /// What was being done.
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PublishError + 'a {
    move |source| PublishError {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A file about to be renamed into place: what a digest lists about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedFile {
    /// The final path it is about to get.
    pub path: PathBuf,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Rows in it.
    pub rows: u64,
    /// The earliest `event_time` in it.
    pub first_event_time: SystemTime,
    /// The latest `event_time` in it.
    pub last_event_time: SystemTime,
}

/// Called with every finished, synced file just before it is renamed into place (the digest log
/// records it there); an error abandons the publish, whose rows stay where they came from.
pub type PublishHook = Arc<dyn Fn(&ClosedFile) -> io::Result<()> + Send + Sync>;

/// A finished file under its temporary name, ready to be published.
pub struct Staged<'a> {
    /// The directory both names are in.
    pub dir: &'a Path,
    /// The open file (synced before the rename).
    pub file: &'a File,
    /// Its temporary name (hidden: readers skip names starting with `.`).
    pub tmp_name: &'a str,
    /// The name it should get.
    pub name: &'a str,
    /// Rows in it.
    pub rows: u64,
    /// The earliest and the latest `event_time` in it.
    pub times: (SystemTime, SystemTime),
}

/// Makes a directory's entries (created, renamed or removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `root/rel` and makes each new directory's entry durable.
pub fn ensure_dir(root: &Path, rel: &Path) -> Result<PathBuf, PublishError> {
    if !root.is_dir() {
        fs::create_dir_all(root).map_err(io_err("create", root))?;
    }
    let mut dir = root.to_owned();
    for part in rel.components() {
        let parent = dir.clone();
        dir.push(part);
        match fs::create_dir(&dir) {
            Ok(()) => sync_dir(&parent).map_err(io_err("sync", &parent))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
    }
    Ok(dir)
}

/// The name a file gets when `name` and the names before it are taken: `<stem>-<attempt>.<ext>`.
fn alternative(name: &str, attempt: u32) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{attempt}.{ext}"),
        _ => format!("{name}-{attempt}"),
    }
}

/// Publishes `staged` (see the module docs): returns the path it now has. On an error the
/// temporary file is left for the caller to remove or to retry with.
pub fn publish(staged: &Staged<'_>, hook: Option<&PublishHook>) -> Result<PathBuf, PublishError> {
    let tmp = staged.dir.join(staged.tmp_name);
    staged.file.sync_all().map_err(io_err("sync", &tmp))?;
    let dir_file = File::open(staged.dir).map_err(io_err("open", staged.dir))?;
    let mut final_name = staged.name.to_owned();
    let mut attempt = 0;
    while staged.dir.join(&final_name).exists() && attempt + 1 < MAX_ATTEMPTS {
        attempt += 1;
        final_name = alternative(staged.name, attempt);
    }
    if let Some(hook) = hook {
        // The digest log must know the file before it becomes visible, so a crash never leaves a
        // published file that no digest will name.
        let (sha256, bytes) = sha256_file(&tmp).map_err(io_err("read", &tmp))?;
        hook(&ClosedFile {
            path: staged.dir.join(&final_name),
            sha256,
            bytes,
            rows: staged.rows,
            first_event_time: staged.times.0,
            last_event_time: staged.times.1,
        })
        .map_err(io_err("record in the digest log", &tmp))?;
    }
    // Names relative to the directory's descriptor (the directory itself may be given relative to
    // the working directory).
    renameat2(
        &dir_file,
        staged.tmp_name,
        &dir_file,
        final_name.as_str(),
        RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| io_err("rename", &tmp)(e.into()))?;
    dir_file.sync_all().map_err(io_err("sync", staged.dir))?;
    Ok(staged.dir.join(final_name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::sync::Mutex;
    use std::time::{Duration, UNIX_EPOCH};

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// Writes `bytes` as `.name.tmp` in `dir` and returns the open file.
    fn stage(dir: &Path, name: &str, bytes: &[u8]) -> (File, String) {
        let tmp_name = format!(".{name}.tmp");
        let mut f = File::create(dir.join(&tmp_name)).unwrap();
        f.write_all(bytes).unwrap();
        (f, tmp_name)
    }

    fn t() -> (SystemTime, SystemTime) {
        let a = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        (a, a + Duration::from_secs(1))
    }

    #[test]
    fn a_file_is_published_whole_and_the_digest_log_hears_of_it_first() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ensure_dir(tmp.path(), Path::new("date=2023-11-14/hour=22")).unwrap();
        let (f, tmp_name) = stage(&dir, "a.parquet", b"abc");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook: PublishHook = Arc::new({
            let seen = seen.clone();
            let dir = dir.clone();
            move |c: &ClosedFile| {
                // Not visible yet while the digest log records it.
                assert!(!c.path.exists());
                assert!(dir.join(".a.parquet.tmp").exists());
                seen.lock().unwrap().push(c.clone());
                Ok(())
            }
        });
        let staged = Staged {
            dir: &dir,
            file: &f,
            tmp_name: &tmp_name,
            name: "a.parquet",
            rows: 3,
            times: t(),
        };
        let p = publish(&staged, Some(&hook)).unwrap();
        assert_eq!(p, dir.join("a.parquet"));
        assert_eq!(fs::read(&p).unwrap(), b"abc");
        assert_eq!(names(&dir), vec!["a.parquet"]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].path, p);
        assert_eq!(seen[0].bytes, 3);
        assert_eq!(seen[0].rows, 3);
        assert_eq!(seen[0].sha256, super::super::digest::sha256_hex(b"abc"));
        assert_eq!((seen[0].first_event_time, seen[0].last_event_time), t());
    }

    #[test]
    fn a_taken_name_is_never_replaced_and_the_next_free_one_is_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("a.parquet"), b"first").unwrap();
        fs::write(dir.join("a-1.parquet"), b"second").unwrap();
        let told = Arc::new(Mutex::new(None));
        let hook: PublishHook = Arc::new({
            let told = told.clone();
            move |c: &ClosedFile| {
                *told.lock().unwrap() = Some(c.path.clone());
                Ok(())
            }
        });
        let (f, tmp_name) = stage(dir, "a.parquet", b"third");
        let staged = Staged {
            dir,
            file: &f,
            tmp_name: &tmp_name,
            name: "a.parquet",
            rows: 1,
            times: t(),
        };
        let p = publish(&staged, Some(&hook)).unwrap();
        assert_eq!(p, dir.join("a-2.parquet"));
        assert_eq!(told.lock().unwrap().as_ref(), Some(&p), "the name used");
        assert_eq!(fs::read(dir.join("a.parquet")).unwrap(), b"first");
        assert_eq!(fs::read(dir.join("a-1.parquet")).unwrap(), b"second");
        assert_eq!(fs::read(&p).unwrap(), b"third");
        // Without a digest log the rule is the same.
        let (f, tmp_name) = stage(dir, "a.parquet", b"fourth");
        let staged = Staged {
            file: &f,
            tmp_name: &tmp_name,
            ..staged
        };
        assert_eq!(publish(&staged, None).unwrap(), dir.join("a-3.parquet"));
        assert_eq!(
            names(dir),
            vec!["a-1.parquet", "a-2.parquet", "a-3.parquet", "a.parquet"]
        );
        assert_eq!(alternative("x", 2), "x-2");
    }

    #[test]
    fn a_failure_before_the_rename_leaves_only_the_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (f, tmp_name) = stage(dir, "a.parquet", b"abc");
        let hook: PublishHook = Arc::new(|_: &ClosedFile| Err(io::Error::other("disk full")));
        let staged = Staged {
            dir,
            file: &f,
            tmp_name: &tmp_name,
            name: "a.parquet",
            rows: 1,
            times: t(),
        };
        let e = publish(&staged, Some(&hook)).unwrap_err();
        assert_eq!(e.op, "record in the digest log");
        assert!(e.to_string().ends_with("disk full"), "{e}");
        // Nothing visible: the temporary file is what the table's recovery removes.
        assert_eq!(names(dir), vec![".a.parquet.tmp"]);
    }
}
