//! End-to-end result shaping: connector 5.2.0 under `snowtrail exec`, through the agent, to the
//! fake Snowflake. A masked column reads `***` in a JSON result and in a chunked result (its
//! chunk downloads rewritten), the other columns intact; a truncating row limit hands the driver
//! N rows (cutting through the chunks) and flags the event `rows_truncated`; a refusing one raises
//! the driver's ProgrammingError naming the rule; an Arrow result with a masked column is withheld
//! (fail closed), never passed unmasked; a long-running statement's polled result is masked too. Root only.

use anyhow::ensure;
use serde_json::{Value, json};
use snowtrail_tests::session::{self, Setup, rows, run_session, statement};

const PORT_BASE: u16 = 29_900;

const POLICY: &str = r#"
[default]
action = "allow"

[[rule]]
name = "hide-email"
action = "mask"
columns = ["email"]
[rule.when]
sql = "from customers"

[[rule]]
name = "hide-names"
action = "mask"
columns = ["NAME"]
[rule.when]
sql = "from big"

[[rule]]
name = "first-rows"
action = "row_limit"
rows = 120
on_exceed = "truncate"
[rule.when]
sql = "from many"

[[rule]]
name = "no-dumps"
action = "row_limit"
rows = 3
on_exceed = "refuse"
[rule.when]
sql = "from capped"
"#;

const CUSTOMERS: &str = "select * from customers";
const CHUNKED: &str = "/*sf_chunks*/ /*rows:200*/ select id, name from big";
const TRUNCATED: &str = "/*sf_chunks*/ /*rows:200*/ select id, name from many";
const CAPPED: &str = "/*rows:5*/ select id from capped";
const SMALL: &str = "/*rows:2*/ select id from capped";
const ARROW: &str = "/*arrow*/ select * from customers";
const SLOW: &str = "/*slow:2*/ select * from customers";

fn setup(name: &str, ip: [u8; 4]) -> anyhow::Result<Setup> {
    session::setup(name, ip, PORT_BASE, Some(POLICY), |_| String::new())
}

fn refused_by(lines: &[Value], sql: &str, rule: &str) -> anyhow::Result<()> {
    let st = statement(lines, sql)?;
    let err = &st["error"];
    ensure!(err["type"] == "ProgrammingError", "{st}");
    ensure!(err["errno"] == 3001, "{st}");
    ensure!(
        err["msg"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("'{rule}'"))),
        "{st}"
    );
    Ok(())
}

#[test]
fn masked_columns_and_row_limits_reach_the_driver_shaped() -> anyhow::Result<()> {
    let identity = "policy-mask";
    let s = setup(identity, [127, 77, 7, 1])?;
    let lines = run_session(
        &s,
        identity,
        &[CUSTOMERS, CHUNKED, TRUNCATED, CAPPED, SMALL, ARROW, SLOW],
    )?;

    // JSON result: EMAIL masked, ID and NAME as Snowflake sent them.
    let customers = rows(&lines, CUSTOMERS)?;
    ensure!(
        customers
            == &vec![
                json!([1, "Ada Lovelace", "***"]),
                json!([2, "Grace Hopper", "***"]),
                json!([3, "Alan Turing", "***"]),
            ],
        "{customers:?}"
    );

    // A long-running statement's rows arrive in a poll answer, masked the same way.
    ensure!(rows(&lines, SLOW)? == customers, "{lines:#?}");

    // Chunked result: every row masked, in the inline part and in each chunk; IDs intact.
    let big = rows(&lines, CHUNKED)?;
    ensure!(big.len() == 200, "{} rows", big.len());
    for (i, r) in big.iter().enumerate() {
        ensure!(r[1] == "***", "row {i}: {r}");
        ensure!(r[0].is_number(), "row {i}: {r}");
    }
    let ids: Vec<u64> = big.iter().filter_map(|r| r[0].as_u64()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    ensure!(unique.len() == 200, "ids are not intact: {ids:?}");

    // Truncated: 120 of 200 rows, the names untouched, the event flagged.
    let many = rows(&lines, TRUNCATED)?;
    ensure!(many.len() == 120, "{} rows", many.len());
    ensure!(many.iter().all(|r| r[1] != "***"), "{many:?}");
    let cut = s
        .daemon
        .wait_event(|e| e["event_kind"] == "query" && e["sql_text"] == TRUNCATED)?;
    ensure!(cut["decision"] == "row_limit", "{cut}");
    ensure!(cut["policy_rule"] == "first-rows", "{cut}");
    ensure!(
        cut["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "rows_truncated")),
        "{cut}"
    );

    // A refusing limit: 5 rows > 3 is an error naming the rule; 2 rows pass.
    refused_by(&lines, CAPPED, "no-dumps")?;
    ensure!(rows(&lines, SMALL)?.len() == 2, "{lines:#?}");
    let capped = s
        .daemon
        .wait_event(|e| e["sql_text"] == CAPPED && e["success"] == false)?;
    ensure!(capped["policy_rule"] == "no-dumps", "{capped}");

    // Arrow with a masked column: withheld rather than passed unmasked.
    refused_by(&lines, ARROW, "hide-email")?;
    ensure!(
        !lines
            .iter()
            .any(|l| l.to_string().contains("ada@example.com")),
        "an email reached the driver: {lines:#?}"
    );
    let masked = s.daemon.wait_event(|e| {
        e["event_kind"] == "query" && e["sql_text"] == CUSTOMERS && e["success"] == true
    })?;
    ensure!(
        masked["decision"] == "mask" && masked["policy_rule"] == "hide-email",
        "{masked}"
    );
    Ok(())
}
