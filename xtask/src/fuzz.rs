//! `cargo xtask fuzz`: runs the fuzz targets of `fuzz/` with cargo-fuzz on the nightly toolchain,
//! one after another, each for a fixed time, and reports the executions each reached.
//!
//! Inputs libFuzzer finds interesting go to `target/fuzz/corpus/<target>/` (generated, never
//! committed); the seed inputs under `fuzz/corpus/<target>/` are read, never written. A crash or a
//! failed check writes its input under `fuzz/artifacts/<target>/`, where `cargo xtask test` replays
//! it on stable (`tests/tests/fuzz_corpus.rs`): commit it with the fix, and it stays fixed.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::util::{output, root, sh, step};

/// Options of `fuzz`.
#[derive(Debug, Args)]
pub struct Options {
    /// How long each target runs, in seconds.
    #[arg(long, short, default_value_t = 60, value_name = "N")]
    pub seconds: u64,
    /// The one target to run (`client_hello`, `body`, `redact`, ...); all of them when omitted.
    #[arg(value_name = "TARGET")]
    pub target: Option<String>,
}

/// How one target's run ended.
struct Outcome {
    target: String,
    executions: Option<u64>,
    crashed: bool,
}

/// Builds the targets, runs the chosen ones and prints the executions per target.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    crate::setup::build_tools(false)?;
    crate::setup::cargo_fuzz(false)?;
    let root = root();
    let fuzz_dir = root.join("fuzz");
    let all = targets(&root)?;
    let chosen: Vec<String> = match &opts.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target {t:?}; the targets are: {}", all.join(", ")),
        None => all,
    };
    step(&format!(
        "building {} fuzz target(s) with cargo-fuzz (nightly, address sanitizer)",
        chosen.len()
    ));
    for t in &chosen {
        sh(fuzz_command(&root)
            .args(["build", t, "--target-dir"])
            .arg(root.join("target/fuzz")))?;
    }
    let mut outcomes = Vec::new();
    for t in &chosen {
        step(&format!("fuzzing {t} for {} s", opts.seconds));
        let work = root.join("target/fuzz/corpus").join(t);
        let seeds = fuzz_dir.join("corpus").join(t);
        std::fs::create_dir_all(&work)?;
        let mut cmd = fuzz_command(&root);
        cmd.args(["run", t, "--target-dir"])
            .arg(root.join("target/fuzz"))
            .arg(&work);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        // cargo-fuzz saves failing inputs under fuzz/artifacts/<target>/ itself.
        cmd.arg("--")
            .arg(format!("-max_total_time={}", opts.seconds))
            .arg("-print_final_stats=1");
        outcomes.push(run_target(t, &mut cmd)?);
    }
    println!("{:<16} {:>14}  result", "target", "executions");
    for o in &outcomes {
        let execs = o
            .executions
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        let result = if o.crashed {
            format!("FAILED: input saved under fuzz/artifacts/{}/", o.target)
        } else {
            "ok".to_owned()
        };
        println!("{:<16} {:>14}  {result}", o.target, execs);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crashed)
        .map(|o| o.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("fuzzing found failing inputs for: {}", failed.join(", "));
    }
    Ok(())
}

/// `cargo +nightly fuzz` run from the repository root.
fn fuzz_command(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["+nightly", "fuzz"])
        .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// The targets `fuzz/Cargo.toml` declares, as `cargo fuzz list` prints them.
fn targets(root: &Path) -> anyhow::Result<Vec<String>> {
    let list =
        output(fuzz_command(root).arg("list")).context("`cargo +nightly fuzz list` failed")?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Runs one target, passing libFuzzer's output on (without its line per new input) and reading
/// the executions from its final statistics.
fn run_target(target: &str, cmd: &mut Command) -> anyhow::Result<Outcome> {
    let mut child = cmd
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut executions = None;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if let Some(n) = executions_in(&line) {
            executions = Some(n);
        }
        if !is_new_input_line(&line) {
            eprintln!("{line}");
        }
    }
    let status = child.wait()?;
    Ok(Outcome {
        target: target.to_owned(),
        executions,
        crashed: !status.success(),
    })
}

/// The executions a libFuzzer line reports: `stat::number_of_executed_units: N` (its final
/// statistics), else `#N\tDONE ...` or `Done N runs in ...`.
fn executions_in(line: &str) -> Option<u64> {
    if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
        return n.trim().parse().ok();
    }
    if let Some(rest) = line.strip_prefix('#') {
        let mut words = rest.split_whitespace();
        let n = words.next()?;
        return (words.next() == Some("DONE")).then(|| n.parse().ok())?;
    }
    let rest = line.strip_prefix("Done ")?;
    let (n, tail) = rest.split_once(' ')?;
    tail.starts_with("runs").then(|| n.parse().ok())?
}

/// libFuzzer's line for each input it adds or shrinks (`#123\tNEW cov: ...`): many, and noise here.
fn is_new_input_line(line: &str) -> bool {
    line.strip_prefix('#').is_some_and(|rest| {
        let mut words = rest.split_whitespace();
        words.next().is_some_and(|n| n.parse::<u64>().is_ok())
            && matches!(words.next(), Some("NEW" | "REDUCE"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_executions_of_libfuzzer_output() {
        assert_eq!(
            executions_in("stat::number_of_executed_units: 1234567"),
            Some(1_234_567)
        );
        assert_eq!(
            executions_in(
                "#4096\tDONE   cov: 210 ft: 500 corp: 40/1Kb lim: 4096 exec/s: 68 rss: 40Mb"
            ),
            Some(4096)
        );
        assert_eq!(executions_in("Done 4096 runs in 61 second(s)"), Some(4096));
        assert_eq!(executions_in("#4096\tpulse  cov: 210"), None);
        assert_eq!(executions_in("INFO: Seed: 1"), None);
    }

    #[test]
    fn tells_new_input_lines_from_the_rest() {
        assert!(is_new_input_line("#123\tNEW    cov: 1 ft: 1"));
        assert!(is_new_input_line("#99\tREDUCE cov: 1 ft: 1"));
        assert!(!is_new_input_line("#4096\tpulse  cov: 210"));
        assert!(!is_new_input_line("#4096\tDONE   cov: 210"));
        assert!(!is_new_input_line("==1234==ERROR: AddressSanitizer"));
    }
}
