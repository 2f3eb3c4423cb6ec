//! `kill -9` in a loop while events stream: after recovery, every acknowledged event is in exactly
//! one Parquet file, and nothing else is there but the few events in flight at each kill.
#![allow(clippy::unwrap_used)]

mod audit_common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use snowtrail::audit::inspect;
use uuid::Uuid;

const KILLS: u64 = 24;
const TASKS: u64 = 8;

#[test]
fn kill_9_loop_keeps_exactly_the_acknowledged_events() {
    let dirs = audit_common::Dirs::new();
    let bin = env!("CARGO_BIN_EXE_audit-stress");
    let mut acked: HashSet<Uuid> = HashSet::new();
    for run in 0..=KILLS {
        let last = run == KILLS;
        let mut cmd = Command::new(bin);
        cmd.arg(&dirs.state)
            .arg(&dirs.audit)
            .arg(run.to_string())
            .arg(TASKS.to_string());
        if last {
            cmd.arg("200");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill at varied moments: sometimes during start-up recovery, mostly mid-stream.
        let target = match run % 6 {
            0 => 0,
            1 => 3,
            _ => 50 + (run * 97) % 900,
        };
        let mut seen = 0u64;
        if !last {
            if target == 0 {
                // Right away: possibly in the middle of recovery.
                std::thread::sleep(Duration::from_millis(5 * (run % 4)));
            } else {
                while seen < target {
                    match rx.recv_timeout(Duration::from_secs(60)) {
                        Ok(l) if l == "ready" => {}
                        Ok(l) => {
                            acked.insert(Uuid::parse_str(&l).unwrap());
                            seen += 1;
                        }
                        Err(e) => panic!("run {run}: stress binary stopped streaming: {e}"),
                    }
                }
            }
            child.kill().unwrap(); // SIGKILL
        }
        let status = child.wait().unwrap();
        reader.join().unwrap();
        // Lines written before the kill are complete (one write each); a partial one cannot parse.
        for l in rx.try_iter() {
            if let Ok(id) = Uuid::parse_str(&l) {
                acked.insert(id);
            }
        }
        if last {
            assert!(
                status.success(),
                "the final run must shut down cleanly: {status}"
            );
        }
    }

    let events = inspect::read_events(&dirs.audit).unwrap();
    let mut count: HashMap<Uuid, u32> = HashMap::new();
    for e in &events {
        *count.entry(e.event_id).or_default() += 1;
    }
    let dups: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated events: {dups:?}");
    let found: HashSet<Uuid> = count.keys().copied().collect();
    let lost: Vec<_> = acked.difference(&found).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    // Durable but unacknowledged: at most one in flight per task at each kill.
    let extra = found.difference(&acked).count() as u64;
    assert!(
        extra <= KILLS * TASKS,
        "{extra} events that were never acknowledged"
    );
    assert!(acked.len() as u64 >= KILLS / 2 * 50 + 200 * TASKS);
    eprintln!(
        "{} acknowledged, {} found, {} in flight at kills",
        acked.len(),
        found.len(),
        extra
    );

    let mut out = Vec::new();
    let report = inspect::verify(&dirs.audit, &mut out).unwrap();
    assert!(report.ok(), "{}", String::from_utf8_lossy(&out));
    // The clean shutdown emptied the journal: one empty segment carries the sequence counter.
    let segments: Vec<_> = std::fs::read_dir(dirs.state.join("journal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .collect();
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0].metadata().unwrap().len(), 16);
}
