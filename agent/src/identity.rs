//! What the host knows of the process behind a connection: its executable, command line, parent
//! and user, read from `/proc` when the connection arrives.
//!
//! The process is normally alive then (it is waiting for its connect). A process that is already
//! gone leaves these fields empty; nothing is guessed. Workload identity from the cgroup path
//! (systemd unit, container, pod) and caching by process start time come with the identity work.

use std::path::Path;

/// Longest command line kept, in bytes (the rest is cut at a character boundary).
pub const MAX_CMDLINE: usize = 4096;

/// Process details for the audit's "who" columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// `/proc/<pid>/exe`.
    pub exe: Option<String>,
    /// The command line, arguments joined by spaces, bounded by [`MAX_CMDLINE`].
    pub cmdline: Option<String>,
    /// The parent's process id.
    pub ppid: Option<u32>,
    /// The user name of `uid`, from the host's user database.
    pub user_name: Option<String>,
}

impl ProcessInfo {
    /// Reads what `/proc` says of process `tgid`, owned by `uid`.
    pub fn read(tgid: u32, uid: u32) -> ProcessInfo {
        ProcessInfo::read_from(Path::new("/proc"), tgid, uid)
    }

    fn read_from(proc: &Path, tgid: u32, uid: u32) -> ProcessInfo {
        let dir = proc.join(tgid.to_string());
        let exe = std::fs::read_link(dir.join("exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let cmdline = std::fs::read(dir.join("cmdline"))
            .ok()
            .and_then(|b| cmdline_text(&b));
        let ppid = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| parse_ppid(&s));
        let user_name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        ProcessInfo {
            exe,
            cmdline,
            ppid,
            user_name,
        }
    }
}

/// Whether an option or variable name names a secret (the names DECISIONS 14 lists for SQL).
fn is_secret_name(name: &str) -> bool {
    let n = name
        .trim_start_matches('-')
        .to_ascii_uppercase()
        .replace('-', "_");
    if n.contains("PUBLIC") {
        return false;
    }
    [
        "PASSWORD",
        "PASSWD",
        "PASSCODE",
        "PASSPHRASE",
        "SECRET",
        "TOKEN",
        "KEY",
        "CREDENTIAL",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// The arguments with secret values replaced by `***`: `--password X`, `--password=X`,
/// `PASSWORD=X`, `-p X` (the short password flag of snowsql and most database clients).
fn redact_args(args: &[&str]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("***".to_owned());
            hide_next = false;
            continue;
        }
        match a.split_once('=') {
            Some((name, _)) if is_secret_name(name) => out.push(format!("{name}=***")),
            _ => {
                hide_next = (a.starts_with('-') && is_secret_name(a)) || *a == "-p";
                out.push((*a).to_owned());
            }
        }
    }
    out
}

/// `/proc/<pid>/cmdline` (NUL-separated) as one line, secrets replaced, bounded.
fn cmdline_text(raw: &[u8]) -> Option<String> {
    let lossy = String::from_utf8_lossy(raw);
    let args: Vec<&str> = lossy.split('\0').filter(|a| !a.is_empty()).collect();
    let text = redact_args(&args).join(" ");
    if text.is_empty() {
        return None;
    }
    if text.len() <= MAX_CMDLINE {
        return Some(text);
    }
    let mut end = MAX_CMDLINE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text[..end].to_owned())
}

/// The parent pid from `/proc/<pid>/stat`; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let info = ProcessInfo::read(me, nix::unistd::getuid().as_raw());
        assert!(info.exe.is_some());
        assert!(info.cmdline.is_some());
        assert_eq!(info.ppid, Some(std::os::unix::process::parent_id()));
    }

    #[test]
    fn parses_awkward_stat_and_cmdline() {
        assert_eq!(parse_ppid("42 (a) b (c)) S 7 42 42 0"), Some(7));
        assert_eq!(
            cmdline_text(b"python3\0-c\0print(1)\0"),
            Some("python3 -c print(1)".into())
        );
        assert_eq!(cmdline_text(b""), None);
        let long = vec![b'x'; MAX_CMDLINE + 10];
        assert_eq!(cmdline_text(&long).map(|s| s.len()), Some(MAX_CMDLINE));
    }

    #[test]
    fn secrets_on_the_command_line_are_hidden() {
        let raw = b"python\0load.py\0--password\0hunter2\0--api-token=abc\0SNOWFLAKE_PASSWORD=x\0-p\0pw\0--rsa-public-key\0pub\0--user\0bob\0";
        assert_eq!(
            cmdline_text(raw).unwrap(),
            "python load.py --password *** --api-token=*** SNOWFLAKE_PASSWORD=*** -p *** --rsa-public-key pub --user bob"
        );
    }

    #[test]
    fn a_gone_process_leaves_fields_empty() {
        let dir = tempfile::tempdir().unwrap();
        let info = ProcessInfo::read_from(dir.path(), 123, u32::MAX - 7);
        assert_eq!(info, ProcessInfo::default());
    }
}
