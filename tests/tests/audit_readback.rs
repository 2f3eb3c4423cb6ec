//! Read-back by the tools analysts use: DuckDB and pyarrow read the whole audit directory with hive
//! partitioning and return exactly the events written, with the right types. Also exercises the
//! `audit ls|tail|verify` and `replay` library functions on the same directory.
#![allow(clippy::unwrap_used)]

mod audit_common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use audit_common::{Dirs, at, python, rich_event};
use snowtrail::audit::readback::{self, TailOptions};
use snowtrail::audit::{AuditConfig, Event, EventKind, EventSink, SystemClock};

const SCRIPT: &str = r#"
import json, sys
import duckdb
import pyarrow.dataset as ds

d = sys.argv[1]
con = duckdb.connect()
rel = f"read_parquet('{d}/**/*.parquet', hive_partitioning = true)"
ids = [r[0] for r in con.execute(f"select event_id from {rel}").fetchall()]
types = dict(con.execute(f"select column_name, column_type from (describe select * from {rel})").fetchall())
sample = con.execute(
    f"select labels['team'], flags, event_time = TIMESTAMPTZ '2024-05-01 10:00:00+00', hour "
    f"from {rel} where labels['n'] = '0' and event_kind = 'query'"
).fetchall()
per_hour = dict(con.execute(f"select hour, count(*) from {rel} group by hour").fetchall())

t = ds.dataset(d, format="parquet", partitioning="hive").to_table()
pa_types = {f.name: str(f.type) for f in t.schema}
pa_ids = t.column("event_id").to_pylist()
row = [r for r in t.to_pylist() if dict(r["labels"]).get("n") == "5" and r["event_kind"] == "query"][0]

print(json.dumps({
    "duckdb_ids": ids,
    "duckdb_types": types,
    "duckdb_sample": [str(x) for x in sample[0]],
    "duckdb_per_hour": {str(k): v for k, v in per_hour.items()},
    "pyarrow_ids": pa_ids,
    "pyarrow_types": pa_types,
    "pyarrow_row": {"labels": sorted(dict(row["labels"]).items()), "flags": row["flags"],
                    "event_time": row["event_time"].isoformat(), "src_ip": row["src_ip"]},
}))
"#;

fn all_kinds() -> Vec<Event> {
    let kinds = EventKind::ALL;
    let mut out = Vec::new();
    for i in 0..60u64 {
        // Three hours: 10:00, 11:00 and 12:00 on 2024-05-01.
        let t = at((i % 3) * 3600 + i, 0);
        let kind = if i == 0 || i == 5 {
            EventKind::Query
        } else {
            kinds[(i % 6) as usize]
        };
        let mut e = rich_event(kind, t, i);
        if i == 0 {
            e.event_time = at(0, 0);
        }
        if e.event_kind == EventKind::Lifecycle {
            e.lifecycle_action = Some(snowtrail::audit::LifecycleAction::Start);
            e.workload_identity = None;
            e.labels.clear();
        }
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_and_pyarrow_read_back_exactly_what_was_written() {
    let dirs = Dirs::new();
    let (w, task) = dirs
        .start(Arc::new(SystemClock), AuditConfig::default())
        .await;
    let events = all_kinds();
    let acks: Vec<_> = events.iter().cloned().map(|e| w.submit(e)).collect();
    for a in acks {
        a.await.unwrap();
    }
    task.shutdown().await.unwrap();

    let py = python();
    assert!(
        py.exists(),
        "no Python with duckdb and pyarrow at {} (run `cargo xtask setup` or set SNOWTRAIL_PYTHON)",
        py.display()
    );
    let out = Command::new(&py)
        .arg("-c")
        .arg(SCRIPT)
        .arg(&dirs.audit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let want: BTreeSet<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    let ids = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_owned())
            .collect()
    };
    for k in ["duckdb_ids", "pyarrow_ids"] {
        let got = ids(k);
        assert_eq!(got.len(), events.len(), "{k}: row count");
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want, "{k}: ids");
    }

    let dt = &v["duckdb_types"];
    assert_eq!(dt["event_time"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(dt["decided_at"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(dt["labels"], "MAP(VARCHAR, VARCHAR)");
    assert_eq!(dt["flags"], "VARCHAR[]");
    assert_eq!(dt["event_id"], "VARCHAR");
    assert_eq!(dt["pid"], "BIGINT");
    assert_eq!(dt["src_port"], "INTEGER");
    assert_eq!(dt["success"], "BOOLEAN");
    assert!(
        dt["hour"].is_string() && dt["date"].is_string(),
        "hive partition columns: {dt}"
    );
    assert_eq!(
        v["duckdb_sample"],
        serde_json::json!(["data", "['alert', 'describe_only']", "True", "10"])
    );
    assert_eq!(
        v["duckdb_per_hour"],
        serde_json::json!({"10": 20, "11": 20, "12": 20})
    );

    let pt = &v["pyarrow_types"];
    assert_eq!(pt["event_time"], "timestamp[us, tz=UTC]");
    // pyarrow may print the entries' field name after the types.
    assert!(
        pt["labels"]
            .as_str()
            .unwrap()
            .starts_with("map<string, string"),
        "{pt}"
    );
    assert!(
        pt["flags"]
            .as_str()
            .unwrap()
            .starts_with("list<element: string"),
        "{pt}"
    );
    assert_eq!(pt["rows_produced"], "int64");
    let row = &v["pyarrow_row"];
    assert_eq!(
        row["labels"],
        serde_json::json!([["n", "5"], ["team", "data"]])
    );
    assert_eq!(row["flags"], serde_json::json!(["alert", "describe_only"]));
    assert_eq!(row["event_time"], "2024-05-01T12:00:05+00:00");
    assert_eq!(row["src_ip"], "127.0.0.1");

    // The same events through our own reader, column for column.
    let mut back = readback::read_events(&dirs.audit).unwrap();
    back.sort_by_key(|e| e.event_id);
    let mut sent = events.clone();
    sent.sort_by_key(|e| e.event_id);
    assert_eq!(back, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_tail_verify_replay() {
    let dirs = Dirs::new();
    let (w, task) = dirs
        .start(Arc::new(SystemClock), AuditConfig::default())
        .await;
    for e in all_kinds() {
        w.submit(e).await.unwrap();
    }
    task.shutdown().await.unwrap();

    let mut out = Vec::new();
    let s = readback::ls(&dirs.audit, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!((s.files, s.events), (3, 60));
    assert!(text.contains("date=2024-05-01/hour=11"), "{text}");

    let mut out = Vec::new();
    let opts = TailOptions {
        n: 5,
        ..TailOptions::default()
    };
    readback::tail(&dirs.audit, &opts, &mut out, &|| true).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("2024-05-01T12:00:59"),
        "{text}"
    );

    // --kind query --identity dbt --json, following until the stop flag: one poll, then stop.
    let polls = AtomicUsize::new(0);
    let mut out = Vec::new();
    let opts = TailOptions {
        follow: true,
        kind: Some(EventKind::Query),
        identity: Some("dbt".into()),
        json: true,
        n: 100,
        poll: std::time::Duration::from_millis(1),
    };
    readback::tail(&dirs.audit, &opts, &mut out, &|| {
        polls.fetch_add(1, Ordering::Relaxed) >= 1
    })
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(polls.load(Ordering::Relaxed), 2);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert_eq!(l["event_kind"], "query");
        assert_eq!(l["workload_identity"], "dbt");
        assert!(l["event_time"].as_str().unwrap().starts_with("2024-05-01T"));
    }

    let mut out = Vec::new();
    let r = readback::verify(&dirs.audit, &mut out).unwrap();
    assert!(r.ok(), "{}", String::from_utf8_lossy(&out));
    assert_eq!((r.files, r.events), (3, 60));
    // A leftover temporary file from long ago is a problem.
    let part = dirs.audit.join("date=2024-05-01/hour=10");
    let tmp = part.join(".test-host-x.parquet.tmp");
    std::fs::write(&tmp, b"half").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let r = readback::verify(&dirs.audit, &mut Vec::new()).unwrap();
    assert!(!r.ok() && r.problems[0].contains("leftover temporary file"));
    std::fs::remove_file(&tmp).unwrap();
    // A file that is not Parquet is a problem.
    std::fs::write(part.join("junk.parquet"), b"not parquet").unwrap();
    let r = readback::verify(&dirs.audit, &mut Vec::new()).unwrap();
    assert!(!r.ok());

    std::fs::remove_file(part.join("junk.parquet")).unwrap();
    let mut out = Vec::new();
    let n = readback::replay(&dirs.audit, "s1", &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(n, 10, "{text}");
    assert!(text.starts_with("session s1: 10 events"), "{text}");
    assert!(text.contains("select 15 from t"), "{text}");
    let mut out = Vec::new();
    assert_eq!(readback::replay(&dirs.audit, "nope", &mut out).unwrap(), 0);
}
