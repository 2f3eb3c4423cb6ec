//! Helpers shared by the `audit_*` tests: event fixtures, a writer on temporary directories, and the
//! Python interpreter that has DuckDB and pyarrow.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use snowtrail::audit::{
    AuditConfig, AuditWriter, Clock, Event, EventKind, Flag, OnAuditFailure, WriterOptions,
    WriterTask,
};

/// 2024-05-01T10:00:00Z.
pub const BASE_SECS: u64 = 1_714_557_600;

/// The instant `secs` seconds after [`BASE_SECS`] plus `us` microseconds.
pub fn at(secs: u64, us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(BASE_SECS + secs) + Duration::from_micros(us)
}

/// A query event with most columns filled, numbered `i`.
pub fn rich_event(kind: EventKind, t: SystemTime, i: u64) -> Event {
    let mut e = Event::new(kind, t, "test-host");
    e.pid = Some(1000 + i as u32);
    e.tgid = Some(1000);
    e.uid = Some(1001);
    e.comm = Some("python3".into());
    e.workload_identity = Some(
        if i.is_multiple_of(2) {
            "etl-nightly"
        } else {
            "dbt"
        }
        .into(),
    );
    e.labels.insert("team".into(), "data".into());
    e.labels.insert("n".into(), i.to_string());
    e.src_ip = Some("127.0.0.1".parse().unwrap());
    e.src_port = Some(40000 + (i % 1000) as u16);
    e.dst_ip = Some("::1".parse().unwrap());
    e.dst_port = Some(443);
    e.sni = Some("acct.snowflakecomputing.com".into());
    e.connection_id = Some(i / 10);
    e.session_id = Some(format!("s{}", i / 10));
    e.login_user = Some("ETL".into());
    e.account = Some("acct".into());
    if kind == EventKind::Query {
        e.sql_text = Some(format!("select {i} from t where x = 'y'"));
        e.statement_type = Some("SELECT".into());
        e.query_id = Some(format!("01b2-{i}"));
        e.decision = Some(snowtrail::audit::Decision::Allow);
        e.success = Some(!i.is_multiple_of(7));
        e.duration_ms = Some(i * 3);
        e.rows_produced = Some(i);
        e.is_async = Some(false);
        if i.is_multiple_of(5) {
            e.flags = vec![Flag::Alert, Flag::DescribeOnly];
        }
        if i.is_multiple_of(7) {
            e.error_code = Some("002003".into());
            e.error_message = Some("Object does not exist".into());
        }
    }
    e
}

/// Where Python with DuckDB and pyarrow is: `SNOWTRAIL_PYTHON`, else the workspace's venv.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SNOWTRAIL_PYTHON") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/snowtrail-env/venv/bin/python")
}

/// Test directories: state and audit under one temporary directory.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
    pub state: PathBuf,
    pub audit: PathBuf,
}

impl Dirs {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let audit = tmp.path().join("audit");
        Dirs { tmp, state, audit }
    }

    /// Starts a writer on these directories that blocks when the audit fails, the mode most
    /// tests run in.
    pub async fn start(
        &self,
        clock: Arc<dyn Clock>,
        config: AuditConfig,
    ) -> (AuditWriter, WriterTask) {
        start(
            &self.state,
            &self.audit,
            clock,
            config,
            OnAuditFailure::Block,
        )
        .await
    }
}

/// Starts a writer on `state`/`audit`.
pub async fn start(
    state: &Path,
    audit: &Path,
    clock: Arc<dyn Clock>,
    config: AuditConfig,
    on_failure: OnAuditFailure,
) -> (AuditWriter, WriterTask) {
    AuditWriter::start(WriterOptions {
        state_dir: state.to_owned(),
        audit_dir: audit.to_owned(),
        host: "test-host".into(),
        config,
        on_failure,
        clock,
        recordings_dir: None,
    })
    .await
    .unwrap()
}

/// Polls `cond` until it holds; fails the test after a generous minute (never a timing assertion).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The files of a partition (`date=.../hour=..`), published ones only.
pub fn published_in(audit: &Path, partition: &str) -> Vec<PathBuf> {
    snowtrail::audit::readback::list_files(audit)
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f.partition == partition)
        .map(|f| f.path)
        .collect()
}

/// How many temporary (still open) files a partition holds.
pub fn open_in(audit: &Path, partition: &str) -> usize {
    std::fs::read_dir(audit.join(partition))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .count()
        })
        .unwrap_or(0)
}
