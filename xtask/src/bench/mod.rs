//! `cargo xtask bench`: snowtrail measured against the peers a user would pick, in the same run.
//!
//! Figures on a shared machine drift from run to run, so each section measures snowtrail and its
//! peers one after the other and reports ratios beside the absolute numbers. Every section adds
//! rows to one table, printed on stdout as it goes and written with the machine's description to
//! `<out>/results.json`. Benchmarks are not part of `cargo xtask test`: they take minutes and their
//! numbers are only meaningful side by side.

mod audit;
mod chart;
mod connect;
mod machine;
mod memory;
mod passthrough;
mod policy;
mod procs;
mod roundtrip;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::json;

use crate::util::{root, sh, step};

/// The font the charts' text is drawn with (Debian's `fonts-dejavu-core`).
pub const CHART_FONT: &str = chart::FONT;

/// Options of `bench`.
#[derive(Debug, Args)]
pub struct Options {
    /// A short run (seconds per section instead of minutes); the numbers are rougher.
    #[arg(long)]
    pub quick: bool,
    /// Where `results.json` goes (relative to the workspace root).
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Run only these sections (by name); all of them when none is given.
    #[arg(long = "section", value_name = "NAME")]
    pub sections: Vec<String>,
    /// List the sections and exit.
    #[arg(long)]
    pub list: bool,
    /// Development only: measure debug builds (quick to build, figures meaningless).
    #[arg(long, hide = true)]
    pub debug_build: bool,
}

/// What a section gets: the run's settings and a place for scratch files.
pub struct Ctx {
    /// The workspace root.
    pub root: PathBuf,
    /// Whether this is a `--quick` run.
    pub quick: bool,
    /// A scratch directory of the section's own, under the output directory.
    pub scratch: PathBuf,
    /// The Python of the test venv (pyarrow).
    pub python: PathBuf,
    /// mitmproxy's `mitmdump`, from its own venv.
    pub mitmdump: PathBuf,
    /// Measure debug builds (development of the bench itself; the figures mean nothing).
    pub debug_build: bool,
}

/// One measured figure: what, how much, in which unit, and a note (peer, setting, caveat).
#[derive(Debug, Clone)]
pub struct Row {
    /// The section that measured it.
    pub section: &'static str,
    /// What was measured (`snowtrail events/s`, `ratio snowtrail/pyarrow`, ...).
    pub name: String,
    /// The figure.
    pub value: f64,
    /// Its unit (`events/s`, `ns/statement`, `x`, ...).
    pub unit: &'static str,
    /// How it was measured, or what it is compared with.
    pub note: String,
    /// Further figures behind this one (latency percentiles of a throughput row, ...), for
    /// `results.json`.
    pub extra: Vec<(&'static str, f64)>,
}

impl Row {
    /// A row of `section`.
    pub fn new(
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        note: impl Into<String>,
    ) -> Row {
        Row {
            section,
            name: name.into(),
            value,
            unit,
            note: note.into(),
            extra: Vec::new(),
        }
    }

    /// This row with a further figure for `results.json`.
    pub fn with(mut self, key: &'static str, value: f64) -> Row {
        self.extra.push((key, value));
        self
    }
}

/// A section of the benchmark: a name, what it compares, and how to run it.
pub struct Section {
    /// Its name, for `--section`.
    pub name: &'static str,
    /// What it measures and against what.
    pub about: &'static str,
    /// Runs it and returns its rows.
    pub run: fn(&Ctx) -> anyhow::Result<Vec<Row>>,
}

/// Every section, in the order they run.
pub const SECTIONS: &[Section] = &[
    Section {
        name: "roundtrip",
        about: "statement round trip: direct, snowtrail (durable / async audit), nginx, mitmproxy",
        run: roundtrip::run,
    },
    Section {
        name: "passthrough",
        about: "non-Snowflake TLS bulk stream through the agent vs direct; agent CPU s/GB",
        run: passthrough::run,
    },
    Section {
        name: "connect",
        about: "connect() cost with the programs attached or not, redirected or not",
        run: connect::run,
    },
    Section {
        name: "memory",
        about: "agent RSS idle and holding 10,000 idle intercepted connections",
        run: memory::run,
    },
    Section {
        name: "audit",
        about: "audit writer: events/s into Parquet with the journal on, bytes/event; vs pyarrow",
        run: audit::run,
    },
    Section {
        name: "policy",
        about: "policy evaluation and SQL classification, ns/statement (criterion)",
        run: policy::run,
    },
];

/// Runs the chosen sections and writes the results.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    if opts.list {
        for s in SECTIONS {
            println!("{:<10} {}", s.name, s.about);
        }
        return Ok(());
    }
    for name in &opts.sections {
        if !SECTIONS.iter().any(|s| s.name == name) {
            let names: Vec<_> = SECTIONS.iter().map(|s| s.name).collect();
            bail!("no section {name:?}; the sections are {}", names.join(", "));
        }
    }
    let env = crate::setup::run(&crate::setup::Options::default())?;
    let mitmdump = crate::setup::bench_peers(false)?;
    let root = root();
    let out = root.join(&opts.out);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let machine = machine::describe();
    let started = machine::utc_now();
    step(&format!(
        "bench on {} ({} cores, load {}), {}{}",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["load_average"].as_str().unwrap_or("?"),
        if opts.quick { "quick run" } else { "full run" },
        if opts.debug_build {
            " of DEBUG builds (figures meaningless)"
        } else {
            ""
        }
    ));
    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<serde_json::Value> = Vec::new();
    print_header();
    for s in SECTIONS
        .iter()
        .filter(|s| opts.sections.is_empty() || opts.sections.iter().any(|n| n == s.name))
    {
        step(&format!("section {}: {}", s.name, s.about));
        let scratch = out.join("scratch").join(s.name);
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)?;
        let ctx = Ctx {
            root: root.clone(),
            quick: opts.quick,
            scratch: scratch.clone(),
            python: env.python.clone(),
            mitmdump: mitmdump.clone(),
            debug_build: opts.debug_build,
        };
        match (s.run)(&ctx) {
            Ok(section_rows) => {
                for r in &section_rows {
                    print_row(r);
                }
                rows.extend(section_rows);
            }
            // One section failing (a peer missing, say) still leaves the others' numbers.
            Err(e) => {
                eprintln!("xtask: section {} failed: {e:#}", s.name);
                failures.push(json!({ "section": s.name, "error": format!("{e:#}") }));
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let _ = std::fs::remove_dir(out.join("scratch"));
    let results = json!({
        "started": started,
        "finished": machine::utc_now(),
        "quick": opts.quick,
        "debug_build": opts.debug_build,
        "machine": machine,
        "rows": rows.iter().map(|r| json!({
            "section": r.section,
            "name": r.name,
            "value": r.value,
            "unit": r.unit,
            "note": r.note,
            "extra": r.extra.iter().map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "failures": failures,
    });
    let path = out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    step(&format!("results in {}", path.display()));
    match chart::write_all(&out, &rows) {
        Ok(files) => {
            for f in files {
                step(&format!("chart {}", f.display()));
            }
        }
        Err(e) => {
            eprintln!("xtask: charts failed: {e:#}");
            failures.push(json!({ "section": "charts", "error": format!("{e:#}") }));
        }
    }
    if !failures.is_empty() {
        bail!("{} section(s) failed (see above)", failures.len());
    }
    Ok(())
}

fn print_header() {
    println!(
        "{:<8} {:<44} {:>14} {:<14} note",
        "section", "measure", "value", "unit"
    );
}

fn print_row(r: &Row) {
    println!(
        "{:<8} {:<44} {:>14} {:<14} {}",
        r.section,
        r.name,
        format_value(r.value),
        r.unit,
        r.note
    );
}

/// A figure with three significant digits and thousands separators for big ones.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let digits = format!("{:.0}", a);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Builds the agent's and the tests crate's binaries in release (the figures are meaningless in
/// debug; only the hidden `--debug-build` of the bench's own development changes that), once per
/// run and in one cargo call (separate calls would unify features differently and rebuild shared
/// dependencies back and forth), and returns the path of `bin`.
pub fn build_bin(ctx: &Ctx, bin: &str) -> anyhow::Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let profile = if ctx.debug_build { "debug" } else { "release" };
    BUILT
        .get_or_init(|| {
            step(&format!(
                "building snowtrail, loadgen and fake-snowflake ({profile})"
            ));
            let mut cmd = Command::new("cargo");
            cmd.current_dir(&ctx.root).args([
                "build",
                "-p",
                "snowtrail",
                "-p",
                "snowtrail-tests",
                "--bins",
            ]);
            if !ctx.debug_build {
                cmd.arg("--release");
            }
            sh(&mut cmd).map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)?;
    Ok(ctx.root.join("target").join(profile).join(bin))
}

/// Runs a command and returns its stdout; fails with its stderr if it fails.
pub fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let desc = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {desc}"))?;
    if !out.status.success() {
        bail!(
            "{desc} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last line of `text` that parses as a JSON object.
pub fn last_json(text: &str) -> anyhow::Result<serde_json::Value> {
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter(serde_json::Value::is_object)
        .context("no JSON report in the output")
}

/// A number field of a JSON report.
pub fn num(v: &serde_json::Value, key: &str) -> anyhow::Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("report lacks a number {key:?}: {v}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_are_formatted_for_the_table() {
        assert_eq!(format_value(1_234_567.8), "1,234,568");
        assert_eq!(format_value(1000.0), "1,000");
        assert_eq!(format_value(-25_000.0), "-25,000");
        assert_eq!(format_value(123.4), "123");
        assert_eq!(format_value(12.34), "12.3");
        assert_eq!(format_value(0.8123), "0.81");
    }

    #[test]
    fn the_last_json_line_is_the_report() {
        let out = "warming up\n{\"a\": 1}\nnoise\n{\"events_per_s\": 2.5}\n";
        let v = last_json(out).unwrap();
        assert_eq!(num(&v, "events_per_s").unwrap(), 2.5);
        assert!(num(&v, "missing").is_err());
        assert!(last_json("no report\n[1,2]\n").is_err());
    }

    #[test]
    fn section_names_are_unique() {
        let mut names: Vec<_> = SECTIONS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SECTIONS.len());
    }
}
