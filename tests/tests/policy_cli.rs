//! `snowtrail policy check` and `snowtrail policy test`: the binary, without a daemon.

use std::process::Command;

use anyhow::ensure;

const GOOD: &str = r#"
[default]
action = "alert"

[[rule]]
name = "etl-no-drop"
action = "deny"
message = "drops need a change ticket"
[rule.when]
identity = ["etl-*"]
labels = { env = "prod" }
statement = ["DROP"]
objects = ["prod.*.*"]

[[rule]]
name = "analysts-wait"
action = "require_approval"
timeout_s = 60
[rule.when]
role = ["analyst"]
writes = ["*.*.*"]
"#;

fn snowtrail(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(snowtrail_tests::snowtrail_bin())
        .args(args)
        .env_remove("SNOWTRAIL_CONFIG")
        .output()?)
}

#[test]
fn check_explains_mistakes_with_their_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.toml");
    std::fs::write(&good, GOOD)?;
    let out = snowtrail(&["policy", "check", good.to_str().unwrap_or_default()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{text}");
    ensure!(
        text.contains("2 rule(s)") && text.contains("etl-no-drop"),
        "{text}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        GOOD.replace("objects = [\"prod.*.*\"]", "objects = [\"prod..x\"]"),
    )?;
    let out = snowtrail(&["policy", "check", bad.to_str().unwrap_or_default()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "{err}");
    ensure!(err.contains("bad.toml:13:12:"), "{err}");
    ensure!(err.contains("prod..x") && err.contains('^'), "{err}");
    Ok(())
}

#[test]
fn test_prints_the_decision_and_the_rule() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("p.toml");
    std::fs::write(&file, GOOD)?;
    let f = file.to_str().unwrap_or_default();
    let out = snowtrail(&[
        "policy",
        "test",
        f,
        "--identity",
        "etl-nightly",
        "--label",
        "env=prod",
        "--sql",
        "select 1; drop table prod.core.orders",
        "--json",
    ])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(v["decision"] == "deny" && v["rule"] == "etl-no-drop", "{v}");
    ensure!(v["detail"] == "drops need a change ticket", "{v}");
    ensure!(v["statements"][0]["rule"] == "default", "{v}");
    ensure!(
        v["statements"][1]["writes"] == serde_json::json!(["PROD.CORE.ORDERS"]),
        "{v}"
    );

    // The same statement from a workload without the label falls through to the default.
    let out = snowtrail(&[
        "policy",
        "test",
        f,
        "--identity",
        "etl-nightly",
        "--sql",
        "drop table prod.core.orders",
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.starts_with("decision: alert (rule default)"), "{text}");

    let out = snowtrail(&[
        "policy",
        "test",
        f,
        "--role",
        "ANALYST",
        "--database",
        "sales",
        "--schema",
        "eu",
        "--sql",
        "insert into t values (1)",
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("require_approval (rule analysts-wait)") && text.contains("SALES.EU.T"),
        "{text}"
    );
    Ok(())
}

#[test]
fn test_judges_a_rest_api_request_by_the_rules_on_requests() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            "{GOOD}\n[[rule]]\nname = \"databases-by-terraform\"\naction = \"deny\"\nwhen.requests = [\"DELETE /api/v2/databases/*\"]\n"
        ),
    )?;
    let f = file.to_str().unwrap_or_default();
    let out = snowtrail(&[
        "policy",
        "test",
        f,
        "--request",
        "DELETE /api/v2/databases/sales?ifExists=true",
        "--json",
    ])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        v["decision"] == "deny" && v["rule"] == "databases-by-terraform",
        "{v}"
    );
    let out = snowtrail(&["policy", "test", f, "--request", "GET /api/v2/databases"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.contains("proxy.unknown_requests applies"), "{text}");
    // One of --sql or --request, never both, never neither.
    let out = snowtrail(&["policy", "test", f])?;
    ensure!(out.status.code() == Some(2), "neither was accepted");
    Ok(())
}
