//! Policy evaluation and SQL classification per statement: the criterion benchmarks of
//! `agent/benches/policy.rs`, run here and folded into the table as nanoseconds per statement.

use std::process::Command;

use anyhow::Context as _;
use serde_json::Value;

use super::{Ctx, Row};
use crate::util::sh;

const SECTION: &str = "policy";

/// The benchmarks of the `policy` group and what each one times.
const BENCHES: &[(&str, &str)] = &[
    (
        "classify",
        "SQL classification (sqlparser, Snowflake dialect)",
    ),
    (
        "decide",
        "rule evaluation of a classified statement, 5 rules",
    ),
    (
        "judge",
        "split + classify + decide, as the proxy does per request",
    ),
];

/// Runs the section.
pub fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let criterion_dir = ctx.root.join("target/criterion/policy");
    let _ = std::fs::remove_dir_all(&criterion_dir);
    let times: &[&str] = if ctx.quick {
        &["--warm-up-time", "1", "--measurement-time", "2"]
    } else {
        &["--warm-up-time", "3", "--measurement-time", "10"]
    };
    sh(Command::new("cargo")
        .current_dir(&ctx.root)
        .args(["bench", "-p", "snowtrail", "--bench", "policy", "--"])
        .args(times))?;
    let mut rows = Vec::new();
    for (name, about) in BENCHES {
        let dir = criterion_dir.join(name).join("new");
        let ns = per_statement_ns(
            &read_json(&dir.join("estimates.json"))?,
            &read_json(&dir.join("benchmark.json"))?,
        )
        .with_context(|| format!("criterion's results for policy/{name}"))?;
        rows.push(Row::new(SECTION, *name, ns, "ns/statement", *about));
    }
    Ok(rows)
}

fn read_json(path: &std::path::Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The mean time of one iteration divided by the statements it covers (its declared throughput).
fn per_statement_ns(estimates: &Value, benchmark: &Value) -> anyhow::Result<f64> {
    let mean = estimates["mean"]["point_estimate"]
        .as_f64()
        .context("no mean estimate")?;
    let elements = benchmark["throughput"]["Elements"]
        .as_f64()
        .context("no throughput in elements")?;
    anyhow::ensure!(elements > 0.0, "a throughput of zero statements");
    Ok(mean / elements)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn criterion_estimates_become_ns_per_statement() {
        let est = json!({"mean": {"point_estimate": 16000.0, "standard_error": 3.0}});
        let bench = json!({"group_id": "policy", "throughput": {"Elements": 16}});
        assert_eq!(per_statement_ns(&est, &bench).unwrap(), 1000.0);
        assert!(per_statement_ns(&est, &json!({"throughput": {"Bytes": 16}})).is_err());
        assert!(per_statement_ns(&json!({}), &bench).is_err());
    }
}
