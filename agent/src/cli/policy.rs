//! `snowtrail policy check` and `snowtrail policy test`: a rule file tried without the daemon,
//! so an operator can see what a file says before the daemon loads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::policy::{Action, NameContext, OnExceed, Policy, Subject};

/// `snowtrail policy ...`
#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Validate a rule file; a mistake is shown with its line and column (exit 1).
    Check {
        /// The rule file (TOML).
        file: PathBuf,
    },
    /// Show what a rule file decides for a statement (or a REST API request) sent by a given
    /// workload.
    Test(Box<TestArgs>),
}

/// Who sends the statement, and the statement (or the request).
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true))]
pub(super) struct TestArgs {
    /// The rule file (TOML).
    file: PathBuf,
    /// The workload identity sending the statement.
    #[arg(long, value_name = "NAME")]
    identity: Option<String>,
    /// A label of the workload, key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The human behind the workload.
    #[arg(long, value_name = "NAME")]
    human: Option<String>,
    /// A group of the human (repeatable).
    #[arg(long = "group", value_name = "NAME")]
    groups: Vec<String>,
    /// The Snowflake account.
    #[arg(long, value_name = "ACCOUNT")]
    account: Option<String>,
    /// The Snowflake user.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// The role in effect.
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
    /// The session is brokered (its credential is the agent's).
    #[arg(long)]
    brokered: bool,
    /// The session's current database (completes partial table names).
    #[arg(long, value_name = "DB")]
    database: Option<String>,
    /// The session's current schema (completes partial table names).
    #[arg(long, value_name = "SCHEMA")]
    schema: Option<String>,
    /// When the statement is sent, as seconds since the epoch (default: now).
    #[arg(long, value_name = "UNIX_SECONDS")]
    at: Option<i64>,
    /// The SQL text (several statements separated by `;` are judged one by one).
    #[arg(long, value_name = "SQL", group = "what")]
    sql: Option<String>,
    /// An HTTP request the agent does not read as a statement, as `METHOD PATH` (a REST resource
    /// API call such as "DELETE /api/v2/databases/sales"): judged by the rules on `requests`.
    #[arg(long, value_name = "METHOD PATH", group = "what")]
    request: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Runs a `policy` command.
pub(super) fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check { file } => {
            let policy = match load(&file)? {
                Ok(p) => p,
                Err(message) => {
                    eprintln!("{message}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            println!(
                "{}: valid, {} rule(s), default action {}",
                file.display(),
                policy.rules().len(),
                policy.default_action().name()
            );
            for r in policy.rules() {
                println!("  line {:>4}  {:<18} {}", r.line, r.action.name(), r.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test(args) => test(*args),
    }
}

/// Reads and parses a rule file: `Ok(Err(text))` is a mistake in the file, explained.
fn load(file: &Path) -> anyhow::Result<Result<Policy, String>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(Policy::parse(&text).map_err(|e| {
        let line = text.lines().nth(e.line.saturating_sub(1)).unwrap_or("");
        format!(
            "{}:{}:{}: {}\n  {}\n  {}^",
            file.display(),
            e.line,
            e.column,
            e.message,
            line,
            " ".repeat(e.column.saturating_sub(1))
        )
    }))
}

fn test(a: TestArgs) -> anyhow::Result<ExitCode> {
    let policy = match load(&a.file)? {
        Ok(p) => p,
        Err(message) => {
            eprintln!("{message}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let who = Subject {
        identity: a.identity,
        labels: a.labels.into_iter().collect::<BTreeMap<_, _>>(),
        human: a.human,
        groups: a.groups,
        account: a.account,
        user: a.user,
        role: a.role,
        brokered: a.brokered,
    };
    let names = NameContext {
        database: a.database.map(|d| d.to_uppercase()),
        schema: a.schema.map(|s| s.to_uppercase()),
    };
    let now = a.at.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    });
    if let Some(request) = &a.request {
        let Some((method, path)) = request.trim().split_once(' ') else {
            anyhow::bail!("--request is METHOD PATH, e.g. \"GET /api/v2/databases\"");
        };
        let path = path.trim();
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let d = policy.decide_request(&who, method.trim(), path, now);
        if a.json {
            let out = serde_json::json!({
                "request": request,
                "decision": d.as_ref().map(|d| d.action.name()),
                "rule": d.as_ref().map(|d| d.rule.clone()),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            match d {
                Some(d) => println!("decision: {} (rule {})", d.action.name(), d.rule),
                None => println!(
                    "no rule on requests decides it: proxy.unknown_requests applies (record, or deny)"
                ),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let sql = a.sql.as_deref().unwrap_or_default();
    let j = policy.judge(&who, sql, &names, now);
    let Some(verdict) = j.verdict() else {
        anyhow::bail!("no statement in --sql");
    };
    if a.json {
        let statements: Vec<serde_json::Value> = j
            .statements
            .iter()
            .map(|(c, d)| {
                serde_json::json!({
                    "sql": c.text,
                    "statement_type": c.statement_type,
                    "unparsed": c.unparsed,
                    "reads": c.reads.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "writes": c.writes.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "decision": d.action.name(),
                    "rule": d.rule,
                    "detail": detail(&d.action),
                })
            })
            .collect();
        let out = serde_json::json!({
            "decision": verdict.action.name(),
            "rule": verdict.rule,
            "detail": detail(&verdict.action),
            "statements": statements,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "decision: {} (rule {}){}",
            verdict.action.name(),
            verdict.rule,
            detail(&verdict.action)
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
        if j.statements.len() > 1 || j.unparsed() {
            for (i, (c, d)) in j.statements.iter().enumerate() {
                println!(
                    "  {}. {}{}  -> {} (rule {})",
                    i + 1,
                    c.statement_type,
                    if c.unparsed { " [unparsed]" } else { "" },
                    d.action.name(),
                    d.rule
                );
            }
        }
        for (c, _) in &j.statements {
            for o in &c.reads {
                println!("  reads  {o}");
            }
            for o in &c.writes {
                println!("  writes {o}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The action's parameters in words.
fn detail(a: &Action) -> Option<String> {
    match a {
        Action::Allow | Action::Alert => None,
        Action::Deny { message } => message.clone(),
        Action::RequireApproval { timeout } => {
            Some(format!("approval within {}s", timeout.as_secs()))
        }
        Action::Mask { columns } => Some(format!("mask {}", columns.join(", "))),
        Action::RowLimit { rows, on_exceed } => Some(format!(
            "at most {rows} rows, then {}",
            match on_exceed {
                OnExceed::Refuse => "refuse",
                OnExceed::Truncate => "truncate",
            }
        )),
    }
}

/// `snowtrail pending`: the statements held for approval.
pub(super) fn pending(mut client: crate::control::Client, json: bool) -> anyhow::Result<ExitCode> {
    let crate::control::Reply::Pending { holds } =
        client.call(&crate::control::Request::Pending)?
    else {
        anyhow::bail!("the daemon answered `pending` with something else");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&holds)?);
        return Ok(ExitCode::SUCCESS);
    }
    if holds.is_empty() {
        println!("no statement waits for approval");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36}  {:<20}  {:<16}  {:<12}  {:>7}  SQL",
        "ID", "RULE", "IDENTITY", "USER", "EXPIRES"
    );
    for h in holds {
        let sql: String = h.sql.chars().take(60).collect();
        println!(
            "{:<36}  {:<20}  {:<16}  {:<12}  {:>6}s  {}",
            h.id,
            h.rule,
            h.identity.as_deref().unwrap_or("-"),
            h.user.as_deref().unwrap_or("-"),
            h.expires_in_s,
            sql.replace('\n', " ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `snowtrail approve ID` / `snowtrail reject ID`.
pub(super) fn decide(
    mut client: crate::control::Client,
    id: String,
    approve: bool,
) -> anyhow::Result<ExitCode> {
    let request = if approve {
        crate::control::Request::Approve { id }
    } else {
        crate::control::Request::Reject { id }
    };
    match client.call(&request)? {
        crate::control::Reply::Decided {
            hold,
            decision,
            approver,
        } => {
            println!(
                "{decision} {} (rule {}, {}) by {approver}",
                hold.id,
                hold.rule,
                hold.identity.as_deref().unwrap_or("no identity")
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => anyhow::bail!("the daemon answered with something else"),
    }
}
