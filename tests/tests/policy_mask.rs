//! End-to-end result shaping: connector 5.2.0 under `snowtrail exec`, through the agent, to the
//! fake Snowflake. A masked column reads `***` in a JSON result and in a chunked result (its
//! chunk downloads rewritten), the other columns intact; a truncating row limit hands the driver
//! N rows (cutting through the chunks), counts them in `rows_produced` and flags the event
//! `rows_truncated`; a refusing one raises the driver's ProgrammingError naming the rule; a
//! long-running statement's polled result is masked too. The same for Arrow results
//! (`rowsetBase64` and Arrow chunks, read by 5.2.0's Arrow reader): masked text reads `***`,
//! masked numbers, booleans, floats and timestamp structs read None, and a truncating limit cuts
//! the Arrow chunks. Node sdk 3.3.0 reads JSON results only (it has no Arrow reader), so Arrow is
//! driven with connector 5.2.0 alone. Root only.

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
name = "hide-accounts"
action = "mask"
columns = ["name", "balance", "active", "score", "opened"]
[rule.when]
sql = "from accounts"

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
const ARROW_CHUNKED: &str = "/*arrow*/ /*sf_chunks*/ /*rows:200*/ select id, name from big";
const ARROW_TRUNCATED: &str = "/*arrow*/ /*sf_chunks*/ /*rows:200*/ select id, name from many";
const TYPED_COLUMNS: &str = "(id int, name varchar, balance number(10,2), active boolean, score float, opened timestamp_ntz)";
const ARROW_TYPED: &str = "/*arrow*/ /*rows:5*/ select * from accounts";
const ARROW_TYPED_CHUNKS: &str = "/*arrow*/ /*sf_chunks*/ /*rows:40*/ select * from accounts";
const ARROW_UNMASKED: &str = "/*arrow*/ /*rows:2*/ select * from ledger";

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
    ensure!(cut["rows_produced"] == 120, "{cut}");
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

    // Arrow: the same rows as the JSON result, EMAIL masked in the Arrow stream.
    ensure!(rows(&lines, ARROW)? == customers, "{lines:#?}");
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

#[test]
fn arrow_results_are_masked_and_truncated() -> anyhow::Result<()> {
    let identity = "policy-mask-arrow";
    let s = setup(identity, [127, 77, 7, 2])?;
    let create_accounts = format!("create table accounts {TYPED_COLUMNS}");
    let create_ledger = format!("create table ledger {TYPED_COLUMNS}");
    let lines = run_session(
        &s,
        identity,
        &[
            &create_accounts,
            &create_ledger,
            ARROW_UNMASKED,
            ARROW_TYPED,
            ARROW_TYPED_CHUNKS,
            ARROW_CHUNKED,
            ARROW_TRUNCATED,
        ],
    )?;

    // Unmasked, the fake's Arrow types reach the driver as values: the NULLs below are masking.
    let plain = rows(&lines, ARROW_UNMASKED)?;
    ensure!(
        plain
            == &vec![
                json!([
                    1,
                    "name_1",
                    "1.00",
                    false,
                    1.5,
                    "2023-11-14 22:13:21.000001"
                ]),
                json!([2, "name_2", "2.00", true, 2.5, "2023-11-14 22:13:22.000002"]),
            ],
        "{plain:?}"
    );

    // Inline and chunked Arrow with masked text, number, boolean, float and timestamp columns:
    // `***` for the text, None for the others, every ID intact and in order.
    for sql in [ARROW_TYPED, ARROW_TYPED_CHUNKS] {
        let got = rows(&lines, sql)?;
        let n = if sql == ARROW_TYPED { 5 } else { 40 };
        let want: Vec<Value> = (1..=n)
            .map(|i| json!([i, "***", null, null, null, null]))
            .collect();
        ensure!(got == &want, "{sql}: {got:?}");
    }

    // Chunked Arrow, 200 rows: every NAME masked in the inline part and each chunk.
    let big = rows(&lines, ARROW_CHUNKED)?;
    let ids: Vec<u64> = big.iter().filter_map(|r| r[0].as_u64()).collect();
    ensure!(ids == (1..=200).collect::<Vec<u64>>(), "ids: {ids:?}");
    ensure!(big.iter().all(|r| r[1] == "***"), "{big:?}");
    let masked = s
        .daemon
        .wait_event(|e| e["event_kind"] == "query" && e["sql_text"] == ARROW_CHUNKED)?;
    ensure!(
        masked["decision"] == "mask" && masked["policy_rule"] == "hide-names",
        "{masked}"
    );
    ensure!(
        masked["success"] == true && masked["rows_produced"] == 200,
        "{masked}"
    );
    ensure!(
        !masked["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "result_refused")),
        "{masked}"
    );

    // A truncating limit on chunked Arrow: the first 120 rows, names untouched, the event flagged.
    let many = rows(&lines, ARROW_TRUNCATED)?;
    let ids: Vec<u64> = many.iter().filter_map(|r| r[0].as_u64()).collect();
    ensure!(ids == (1..=120).collect::<Vec<u64>>(), "ids: {ids:?}");
    ensure!(
        many.iter()
            .enumerate()
            .all(|(i, r)| r[1] == format!("name_{}", i + 1)),
        "{many:?}"
    );
    let cut = s
        .daemon
        .wait_event(|e| e["event_kind"] == "query" && e["sql_text"] == ARROW_TRUNCATED)?;
    ensure!(cut["policy_rule"] == "first-rows", "{cut}");
    ensure!(cut["rows_produced"] == 120, "{cut}");
    ensure!(
        cut["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "rows_truncated")),
        "{cut}"
    );
    Ok(())
}
