//! Text the CLI prints: tables and hints, kept apart from the commands.

use std::time::{Duration, UNIX_EPOCH};

use crate::control::Status;
use crate::enroll::Listed;

/// What an enrolled workload must do to trust the agent's certificates (shown after `enroll`).
pub const TRUST_HINT: &str = "note: processes already running keep their environment; see the README's \
driver table for what a workload must set to trust the agent's CA";

/// Formats seconds since the epoch as an RFC 3339 UTC time.
pub fn utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The `snowtrail list` table.
pub fn enrollment_table(rows: &[Listed]) -> String {
    let mut lines = vec![[
        "IDENTITY".to_string(),
        "CGROUP".to_string(),
        "PROCS".to_string(),
        "SINCE".to_string(),
        "CONNECTIONS".to_string(),
        "DENIED".to_string(),
        "LABELS".to_string(),
    ]];
    for r in rows {
        let e = &r.enrollment;
        let labels = e
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        lines.push([
            e.identity.clone(),
            e.cgroup.clone(),
            r.live_processes.to_string(),
            utc(e.since),
            r.connections.to_string(),
            if e.lockdown {
                format!("{} (lockdown)", r.denials)
            } else {
                r.denials.to_string()
            },
            labels,
        ]);
    }
    let mut widths = [0usize; 7];
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let row: Vec<String> = l
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(row.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no enrollments)\n");
    }
    out.trim_end().to_owned()
}

/// The `snowtrail status` text.
pub fn status_text(s: &Status) -> String {
    let a = &s.audit;
    let files = if a.current_files.is_empty() {
        "(none open)".to_owned()
    } else {
        a.current_files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "snowtrail {} running (pid {}, up {}s)\n\
         listening: {}\n\
         programs attached: {} cgroup(s), guards on {} parent(s); redirected connects (kernel): {}, {} through a guard; lockdown refusals: {}\n\
         enrolled cgroups: {}\n\
         connections: {} total, {} open, {} refused; {} bytes in, {} bytes out\n\
         statements: {}\n\
         audit: {}, lag {} record(s) not yet in Parquet, {} event(s) lost, {} file(s) published\n\
         current file: {}\n\
         {}{}",
        s.version,
        s.pid,
        s.uptime_s,
        s.listen.join(", "),
        s.programs_attached,
        s.parents_guarded,
        s.redirected,
        s.guarded,
        s.lockdown_denied,
        s.enrolled,
        s.connections_total,
        s.connections_open,
        s.connections_refused,
        s.bytes_in,
        s.bytes_out,
        s.statements,
        if a.healthy {
            "writing"
        } else {
            "FAILING (journal not writable)"
        },
        a.lag_records,
        a.gap_events,
        a.files_published,
        files,
        a.digests.as_ref().map(digest_text).unwrap_or_default(),
        poisoned_text(s.poisoned_locks),
    )
}

/// The warning line of `snowtrail status` when a panic poisoned locks: the daemon carried on
/// with their state as left, which is a bug worth reporting with the daemon's log.
fn poisoned_text(n: u64) -> String {
    if n == 0 {
        return String::new();
    }
    format!("WARNING: {n} lock(s) were poisoned by a panic and recovered; see the daemon's log\n")
}

/// The digest chain's lines of `snowtrail status`: the head an operator compares with an off-host
/// copy, and a warning when digests stopped being written.
fn digest_text(d: &crate::control::DigestStatus) -> String {
    if let Some(e) = &d.error {
        return format!("digests: WARNING: cannot read the chain's state: {e}\n");
    }
    let mut out = match (&d.path, &d.sha256, &d.written) {
        (Some(path), Some(sha), Some(written)) => format!(
            "digests: #{} {path} (sha256 {sha}), written {written}; {} file(s) since\n",
            d.sequence, d.files_pending
        ),
        _ => format!(
            "digests: none written yet; {} file(s) waiting for the first\n",
            d.files_pending
        ),
    };
    if d.overdue_s > 0 {
        out.push_str(&format!(
            "digests: WARNING: the next digest is {}s overdue; see the daemon log (`journalctl -u snowtrail`)\n",
            d.overdue_s
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enroll::{Enrollment, Kind};

    #[test]
    fn table_aligns_columns() {
        let rows = vec![Listed {
            enrollment: Enrollment {
                identity: "etl".into(),
                labels: [("team".to_string(), "data".to_string())].into(),
                cgroup: "/system.slice/etl.service".into(),
                cgroup_id: 1,
                since: 0,
                kind: Kind::Cgroup,
                ended: false,
                run_id: None,
                started_by: None,
                started_by_login: None,
                lockdown: true,
            },
            live_processes: 3,
            connections: 12,
            denials: 2,
        }];
        let t = enrollment_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].starts_with(
                "etl       /system.slice/etl.service  3      1970-01-01T00:00:00Z  12"
            )
        );
        assert!(lines[1].ends_with("2 (lockdown)  team=data"), "{t}");
        assert!(enrollment_table(&[]).contains("no enrollments"));
    }

    #[test]
    fn status_shows_audit_and_current_file() {
        let s = Status {
            version: "0.1.0".into(),
            statements: 7,
            programs_attached: 2,
            parents_guarded: 1,
            guarded: 0,
            audit: crate::control::AuditStatus {
                healthy: true,
                lag_records: 3,
                current_files: vec!["/a/date=2026-11-23/hour=06/h-1.parquet".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let t = status_text(&s);
        assert!(t.contains("statements: 7\n"), "{t}");
        assert!(
            t.contains("programs attached: 2 cgroup(s), guards on 1 parent(s)"),
            "{t}"
        );
        assert!(t.contains("audit: writing, lag 3 record(s)"), "{t}");
        assert!(
            t.contains("current file: /a/date=2026-11-23/hour=06/h-1.parquet\n"),
            "{t}"
        );
        assert!(!t.contains("digests:"), "{t}");
        let t = status_text(&Status::default());
        assert!(t.contains("FAILING") && t.contains("(none open)"), "{t}");
        let mut s = Status::default();
        s.audit.digests = Some(crate::control::DigestStatus {
            sequence: 4,
            path: Some("_digests/date=2026-11-23/hour=06/h-4.json".into()),
            sha256: Some("ab12".into()),
            written: Some("2026-11-23T06:00:00Z".into()),
            files_pending: 2,
            ..Default::default()
        });
        let t = status_text(&s);
        assert!(
            t.contains("digests: #4 _digests/date=2026-11-23/hour=06/h-4.json (sha256 ab12), written 2026-11-23T06:00:00Z; 2 file(s) since\n"),
            "{t}"
        );
        assert!(!t.contains("WARNING"), "{t}");
        s.audit.digests.as_mut().unwrap().overdue_s = 90;
        let t = status_text(&s);
        assert!(t.contains("WARNING: the next digest is 90s overdue"), "{t}");
        assert!(!t.contains("poisoned"), "{t}");
        s.poisoned_locks = 2;
        let t = status_text(&s);
        assert!(
            t.contains("WARNING: 2 lock(s) were poisoned by a panic"),
            "{t}"
        );
    }
}
