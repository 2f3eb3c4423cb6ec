//! `kill -9` in a loop while events stream: after recovery, every acknowledged event is in exactly
//! one Parquet file, and nothing else is there but the few events in flight at each kill. The same
//! with statement intents: every acknowledged intent is exactly one row, the completed one if its
//! completion was acknowledged, else the completed one or the intent flagged `outcome_unknown`.
#![allow(clippy::unwrap_used)]

mod audit_common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use snowtrail::audit::{Event, Flag, readback};
use uuid::Uuid;

const KILLS: u64 = 24;
const TASKS: u64 = 8;

/// What the stress binary acknowledged over all runs.
#[derive(Default)]
struct Acked {
    /// Plain events.
    events: HashSet<Uuid>,
    /// Intents.
    intents: HashSet<Uuid>,
    /// Completions of intents.
    completions: HashSet<Uuid>,
}

impl Acked {
    /// Takes one line of the stress binary's output; a partial line (cut by the kill) is ignored.
    fn take(&mut self, line: &str) {
        let (set, id) = match line.split_once(' ') {
            Some(("I", id)) => (&mut self.intents, id),
            Some(("C", id)) => (&mut self.completions, id),
            _ => (&mut self.events, line),
        };
        if let Ok(id) = Uuid::parse_str(id) {
            set.insert(id);
        }
    }

    fn len(&self) -> usize {
        self.events.len() + self.intents.len()
    }
}

/// Runs the stress binary KILLS times, killing it with SIGKILL at varied moments, then once more to
/// a clean shutdown; returns what it acknowledged and the rows found afterwards.
fn kill_loop(dirs: &audit_common::Dirs, intents: bool) -> (Acked, Vec<Event>) {
    let bin = env!("CARGO_BIN_EXE_audit-stress");
    let mut acked = Acked::default();
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
        if intents {
            cmd.arg("--intents");
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
            // With intents, some runs last a few seconds: long enough for intents to time out and
            // to be copied forward out of old segments (the writer does both once a second).
            2 | 5 if intents => 15_000 + (run * 97) % 900,
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
                            acked.take(&l);
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
            acked.take(&l);
        }
        if last {
            assert!(
                status.success(),
                "the final run must shut down cleanly: {status}"
            );
        }
    }
    (acked, readback::read_events(&dirs.audit).unwrap())
}

/// What every run must leave: no duplicate, nothing acknowledged lost, few unacknowledged extras,
/// files that verify, and an emptied journal. Returns the rows by id.
fn check_common(
    dirs: &audit_common::Dirs,
    acked: &Acked,
    events: &[Event],
) -> HashMap<Uuid, Event> {
    let mut count: HashMap<Uuid, u32> = HashMap::new();
    for e in events {
        *count.entry(e.event_id).or_default() += 1;
    }
    let dups: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated events: {dups:?}");
    let found: HashSet<Uuid> = count.keys().copied().collect();
    let all_acked: HashSet<Uuid> = acked.events.union(&acked.intents).copied().collect();
    let lost: Vec<_> = all_acked.difference(&found).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    // Durable but unacknowledged: at most one in flight per task at each kill.
    let extra = found.difference(&all_acked).count() as u64;
    assert!(
        extra <= KILLS * TASKS,
        "{extra} events that were never acknowledged"
    );
    eprintln!(
        "{} acknowledged, {} found, {} in flight at kills",
        all_acked.len(),
        found.len(),
        extra
    );

    let mut out = Vec::new();
    let report = readback::verify(&dirs.audit, &mut out).unwrap();
    assert!(report.ok(), "{}", String::from_utf8_lossy(&out));
    // The clean shutdown emptied the journal: one empty segment carries the sequence counter.
    let segments: Vec<_> = std::fs::read_dir(dirs.state.join("journal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .collect();
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0].metadata().unwrap().len(), 16);
    events.iter().map(|e| (e.event_id, e.clone())).collect()
}

#[test]
fn kill_9_loop_keeps_exactly_the_acknowledged_events() {
    let dirs = audit_common::Dirs::new();
    let (acked, events) = kill_loop(&dirs, false);
    assert!(acked.intents.is_empty());
    assert!(acked.len() as u64 >= KILLS / 2 * 50 + 200 * TASKS);
    check_common(&dirs, &acked, &events);
}

#[test]
fn kill_9_loop_keeps_one_row_per_acknowledged_intent() {
    let dirs = audit_common::Dirs::new();
    let (acked, events) = kill_loop(&dirs, true);
    assert!(acked.len() as u64 >= KILLS / 2 * 50 + 200 * TASKS);
    assert!(!acked.completions.is_empty() && !acked.events.is_empty());
    let rows = check_common(&dirs, &acked, &events);

    let unknown = |e: &Event| e.has_flag(Flag::OutcomeUnknown);
    let completed = |e: &Event| e.query_id.is_some() && !unknown(e);
    let (mut n_completed, mut n_unknown) = (0, 0);
    for id in &acked.intents {
        let row = &rows[id];
        if acked.completions.contains(id) {
            assert!(
                completed(row),
                "intent {id}: its completion was acknowledged but the row is {row:?}"
            );
        } else {
            // Either the completion reached the disk unacknowledged, or nobody completed it.
            assert!(
                completed(row) || (unknown(row) && row.query_id.is_none()),
                "intent {id}: neither completed nor outcome_unknown: {row:?}"
            );
        }
        if unknown(row) {
            n_unknown += 1;
        } else {
            n_completed += 1;
        }
    }
    for id in &acked.completions {
        assert!(
            acked.intents.contains(id),
            "completion {id} without an intent"
        );
    }
    for e in &events {
        // Plain events are neither: the flag only marks intents.
        if acked.events.contains(&e.event_id) {
            assert!(!unknown(e) && e.query_id.is_none());
        }
    }
    eprintln!(
        "{} intents: {n_completed} completed, {n_unknown} outcome_unknown",
        acked.intents.len()
    );
    assert!(n_unknown > 0 && n_completed > 0);
}
