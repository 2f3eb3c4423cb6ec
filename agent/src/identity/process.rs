//! One process as `/proc` shows it: its `stat` line (parent, command name, start time), its
//! executable, its command line with secrets hidden (by the names of `snowflake::secrets`), its
//! user and its cgroup.
//!
//! Reading takes a `/proc` root so tests can build a fake one. A process that is gone leaves the
//! fields it could not read empty; nothing is guessed.

use std::path::Path;

use crate::snowflake::secrets::hide_secret_args;

/// Longest command line kept, in bytes (the rest is cut at a character boundary).
pub const MAX_CMDLINE: usize = 4096;

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Field 2, without its parentheses: the command name (`comm`).
    pub comm: String,
    /// Field 4: the parent's process id.
    pub ppid: u32,
    /// Field 22: when the process started, in clock ticks since boot. With the pid it names one
    /// process for the life of the host: a reused pid has a later start time.
    pub start_ticks: u64,
}

/// Reads `<proc>/<pid>/stat`.
pub fn read_stat(proc: &Path, pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&text)
}

/// Parses a `stat` line; the command name (field 2) may hold spaces and parentheses, so fields
/// are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state).
    Some(Stat {
        comm,
        ppid: rest.get(1)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

/// The parts of a process that only change with `execve` or `setuid`: worth caching by
/// (pid, start time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// `/proc/<pid>/exe`.
    pub exe: Option<String>,
    /// The command line, arguments joined by spaces, secrets hidden, bounded by [`MAX_CMDLINE`].
    pub cmdline: Option<String>,
    /// The real user id (`Uid:` of `/proc/<pid>/status`).
    pub uid: Option<u32>,
    /// The user name of `uid`, from the host's user database.
    pub user_name: Option<String>,
}

/// Reads the cacheable details of process `pid` under `proc`.
pub fn read_details(proc: &Path, pid: u32) -> Details {
    let dir = proc.join(pid.to_string());
    let exe = std::fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let cmdline = std::fs::read(dir.join("cmdline"))
        .ok()
        .and_then(|b| cmdline_text(&b));
    let uid = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| parse_real_uid(&s));
    Details {
        exe,
        cmdline,
        uid,
        user_name: uid.and_then(user_name),
    }
}

/// The user name of `uid`, from the host's user database.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// The real uid from `/proc/<pid>/status` (`Uid:` then real, effective, saved and fs uids).
fn parse_real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The login uid of process `pid` (`<proc>/<pid>/loginuid`): who logged in, kept across `sudo`
/// and `su`; `None` when unset (daemons, containers) or unreadable.
pub fn login_uid(proc: &Path, pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(proc.join(pid.to_string()).join("loginuid")).ok()?;
    text.trim().parse().ok().filter(|&u| u != u32::MAX)
}

/// The cgroup v2 path of process `pid` (the `0::` line of `<proc>/<pid>/cgroup`).
pub fn read_cgroup(proc: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc.join(pid.to_string()).join("cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_owned())
}

/// `/proc/<pid>/cmdline` (NUL-separated) as one line, secrets replaced, bounded.
fn cmdline_text(raw: &[u8]) -> Option<String> {
    let lossy = String::from_utf8_lossy(raw);
    let args: Vec<&str> = lossy.split('\0').filter(|a| !a.is_empty()).collect();
    let text = hide_secret_args(&args).join(" ");
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let proc = Path::new("/proc");
        let me = std::process::id();
        let stat = read_stat(proc, me).unwrap();
        assert_eq!(stat.ppid, std::os::unix::process::parent_id());
        assert!(stat.start_ticks > 0);
        let d = read_details(proc, me);
        assert!(d.exe.is_some());
        assert!(d.cmdline.is_some());
        assert_eq!(d.uid, Some(nix::unistd::getuid().as_raw()));
        assert!(read_cgroup(proc, me).unwrap().starts_with('/'));
    }

    #[test]
    fn parses_awkward_stat_and_cmdline() {
        let fields: String = (3..=25).map(|i| format!(" {i}")).collect();
        let s = parse_stat(&format!("42 (a) b (c)){fields}")).unwrap();
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!(s.ppid, 4);
        assert_eq!(s.start_ticks, 22);
        assert_eq!(parse_stat("42 (short) S 1 2"), None);
        assert_eq!(
            cmdline_text(b"python3\0-c\0print(1)\0"),
            Some("python3 -c print(1)".into())
        );
        assert_eq!(cmdline_text(b""), None);
        let long = vec![b'x'; MAX_CMDLINE + 10];
        assert_eq!(cmdline_text(&long).map(|s| s.len()), Some(MAX_CMDLINE));
        assert_eq!(
            parse_real_uid("Name:\tx\nUid:\t1000\t0\t0\t0\n"),
            Some(1000)
        );
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
        assert_eq!(read_details(dir.path(), 123), Details::default());
        assert_eq!(read_stat(dir.path(), 123), None);
        assert_eq!(read_cgroup(dir.path(), 123), None);
    }
}
