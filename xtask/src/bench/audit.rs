//! The audit writer alone: events per second into Parquet with the journal on, and Parquet bytes
//! per event, against pyarrow writing the same rows.
//!
//! snowtrail's side is `loadgen audit` (a real writer: journal, group fdatasync, Parquet encoding,
//! publishing). pyarrow's side reads back the very rows snowtrail wrote and writes them again with
//! the same settings (zstd level 3, same row groups), twice: from an Arrow table already in memory
//! (encoding alone, pyarrow's best case) and from Python rows (what a Python audit pipeline does).
//! Neither pyarrow figure journals or syncs; snowtrail's includes both.
//!
//! Beside it: the same writer with recording on (`loadgen audit --recording`: each statement's
//! result age-encrypted, spooled and fdatasync'd by the real recordings writer before its event
//! is submitted, as the proxy does), and the floor the disk allows (`loadgen fsync`: one small
//! append and one fdatasync at a time in the same scratch directory), against which the durable
//! latency aim can be judged.

use std::process::Command;

use anyhow::Context as _;

use super::{Ctx, Row, build_bin, capture, last_json, num};
use crate::util::step;

const SECTION: &str = "audit";

/// pyarrow's side: argv = audit dir, scratch file, repeats. Prints one JSON line.
const PYARROW: &str = r#"
import json, pathlib, sys, time
import pyarrow as pa, pyarrow.parquet as pq
src, out, repeats = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
files = sorted(p for p in src.rglob("*.parquet") if not p.name.startswith((".", "_")))
table = pa.concat_tables([pq.read_table(p) for p in files])
rows = table.num_rows
props = dict(compression="zstd", compression_level=3, row_group_size=122880)
best = float("inf")
for _ in range(repeats):
    t = time.perf_counter()
    pq.write_table(table, out, **props)
    best = min(best, time.perf_counter() - t)
size = pathlib.Path(out).stat().st_size
pylist = table.to_pylist()
t = time.perf_counter()
pq.write_table(pa.Table.from_pylist(pylist, schema=table.schema), out, **props)
from_rows = time.perf_counter() - t
print(json.dumps({"rows": rows, "table_rows_per_s": rows / best, "bytes_per_row": size / rows,
                  "pylist_rows_per_s": rows / from_rows}))
"#;

/// Runs the section.
pub fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let loadgen = build_bin(ctx, "loadgen")?;
    let python = &ctx.python;
    let events: u64 = if ctx.quick { 200_000 } else { 2_000_000 };
    step(&format!(
        "snowtrail: {events} events through the audit writer"
    ));
    let dir = ctx.scratch.join("writer");
    let ours = last_json(&capture(
        Command::new(&loadgen)
            .args(["audit", "--events", &events.to_string(), "--dir"])
            .arg(&dir),
    )?)?;
    step(&format!(
        "snowtrail: {events} events through the audit writer, recording on"
    ));
    let rec_dir = ctx.scratch.join("writer-recording");
    let recorded = last_json(&capture(
        Command::new(&loadgen)
            .args([
                "audit",
                "--recording",
                "--events",
                &events.to_string(),
                "--dir",
            ])
            .arg(&rec_dir),
    )?)?;
    step("the floor: one write + fdatasync at a time");
    let syncs: u64 = if ctx.quick { 2_000 } else { 10_000 };
    let floor = last_json(&capture(
        Command::new(&loadgen)
            .args(["fsync", "--count", &syncs.to_string(), "--dir"])
            .arg(&ctx.scratch),
    )?)?;
    step("pyarrow: the same rows");
    let theirs = last_json(&capture(
        Command::new(python)
            .args(["-c", PYARROW])
            .arg(dir.join("audit"))
            .arg(ctx.scratch.join("pyarrow.parquet"))
            .arg(if ctx.quick { "2" } else { "3" }),
    )?)
    .context("pyarrow's run")?;
    let ours_rate = num(&ours, "events_per_s")?;
    let table_rate = num(&theirs, "table_rows_per_s")?;
    let rows_rate = num(&theirs, "pylist_rows_per_s")?;
    anyhow::ensure!(
        num(&theirs, "rows")? as u64 == events,
        "pyarrow read {} rows back, snowtrail reported {events}",
        theirs["rows"]
    );
    let workload = format!("{events} statement events, 64 submitters");
    let rec_rate = num(&recorded, "events_per_s")?;
    Ok(vec![
        Row::new(
            SECTION,
            "snowtrail writer",
            ours_rate,
            "events/s",
            format!(
                "{workload}; journal + fdatasync + Parquet ({} syncs)",
                ours["journal_syncs"]
            ),
        ),
        Row::new(
            SECTION,
            "snowtrail Parquet size",
            num(&ours, "bytes_per_event")?,
            "bytes/event",
            "zstd 3, dictionaries",
        ),
        Row::new(
            SECTION,
            "snowtrail writer, recording on",
            rec_rate,
            "events/s",
            format!(
                "{workload}; each result (~1 KB) age-encrypted, spooled + fdatasync'd first; \
                 {:.0} recording bytes/event",
                num(&recorded, "recording_bytes")? / events as f64
            ),
        ),
        Row::new(
            SECTION,
            "ratio recording on / off",
            rec_rate / ours_rate,
            "x",
            "same writer, same run",
        ),
        Row::new(
            SECTION,
            "floor: write + fdatasync",
            num(&floor, "p50_us")?,
            "us p50",
            format!(
                "{syncs} x 128-byte append + fdatasync, one at a time, same filesystem; p99 {:.0} us, \
                 {:.0} syncs/s",
                num(&floor, "p99_us")?,
                num(&floor, "syncs_per_s")?
            ),
        ),
        Row::new(
            SECTION,
            "pyarrow from Arrow table",
            table_rate,
            "rows/s",
            "same rows, encode only, no journal",
        ),
        Row::new(
            SECTION,
            "pyarrow from Python rows",
            rows_rate,
            "rows/s",
            "from_pylist + write, no journal",
        ),
        Row::new(
            SECTION,
            "pyarrow Parquet size",
            num(&theirs, "bytes_per_row")?,
            "bytes/event",
            "zstd 3, default dictionaries",
        ),
        Row::new(
            SECTION,
            "ratio snowtrail / pyarrow table",
            ours_rate / table_rate,
            "x",
            "higher is better",
        ),
        Row::new(
            SECTION,
            "ratio snowtrail / pyarrow rows",
            ours_rate / rows_rate,
            "x",
            "higher is better",
        ),
    ])
}
