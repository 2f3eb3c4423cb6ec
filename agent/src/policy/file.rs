//! The rule file: TOML read into [`Policy`], every mistake reported with its line and column.
//!
//! ```toml
//! [default]                 # required: what happens when no rule matches
//! action = "allow"
//!
//! [[rule]]
//! name = "no-drop-in-prod"
//! action = "deny"           # allow | alert | deny | require_approval | mask | row_limit
//! message = "Dropping production tables needs a change ticket."
//! [rule.when]               # every condition given must hold; none given matches everything
//! identity = ["etl-*"]      # workload identity (globs)
//! labels = { env = "prod" } # enrollment labels (value globs)
//! statement = ["DROP", "TRUNCATE"]   # a type or a type prefix (DROP matches DROP_TABLE)
//! objects = ["prod.*.*"]    # any object touched; `writes` for objects written
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::pattern::{Glob, ObjectPattern, TimeWindow};
use super::{Action, Conditions, OnExceed, Policy, Rule};

/// A mistake in a rule file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct PolicyError {
    /// 1-based line of the mistake.
    pub line: usize,
    /// 1-based column (in characters) of the mistake.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl PolicyError {
    fn at(text: &str, span: Option<Range<usize>>, message: impl Into<String>) -> PolicyError {
        let offset = span.map_or(0, |s| s.start).min(text.len());
        let before = text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        PolicyError {
            line,
            column,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    default: Spanned<RawDefault>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefault {
    action: Spanned<String>,
    message: Option<String>,
    timeout_s: Option<Spanned<u64>>,
    columns: Option<Vec<Spanned<String>>>,
    rows: Option<Spanned<u64>>,
    on_exceed: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    action: Spanned<String>,
    message: Option<String>,
    timeout_s: Option<Spanned<u64>>,
    columns: Option<Vec<Spanned<String>>>,
    rows: Option<Spanned<u64>>,
    on_exceed: Option<Spanned<String>>,
    /// `false`: results of statements this rule decides are not recorded.
    record: Option<bool>,
    #[serde(default)]
    when: Option<Spanned<RawWhen>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    identity: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
    human: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    account: Option<Vec<String>>,
    user: Option<Vec<String>>,
    role: Option<Vec<String>>,
    statement: Option<Vec<String>>,
    objects: Option<Vec<Spanned<String>>>,
    writes: Option<Vec<Spanned<String>>>,
    sql: Option<Spanned<String>>,
    unparsed: Option<bool>,
    time: Option<Spanned<RawTime>>,
    requests: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTime {
    days: Option<Vec<String>>,
    hours: Option<String>,
    offset: Option<String>,
}

/// Longest approval hold a rule may ask for: below a session token's validity (docs/decisions.md §16).
pub const MAX_APPROVAL_TIMEOUT: Duration = Duration::from_secs(3000);

/// The action fields shared by `[default]` and `[[rule]]`.
struct ActionFields<'a> {
    action: &'a Spanned<String>,
    message: &'a Option<String>,
    timeout_s: &'a Option<Spanned<u64>>,
    columns: &'a Option<Vec<Spanned<String>>>,
    rows: &'a Option<Spanned<u64>>,
    on_exceed: &'a Option<Spanned<String>>,
}

/// Reads a rule file's text.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    let raw: RawFile =
        toml::from_str(text).map_err(|e| PolicyError::at(text, e.span(), e.message().trim()))?;
    let d = raw.default.get_ref();
    let default = action(
        text,
        ActionFields {
            action: &d.action,
            message: &d.message,
            timeout_s: &d.timeout_s,
            columns: &d.columns,
            rows: &d.rows,
            on_exceed: &d.on_exceed,
        },
    )?;
    let mut rules = Vec::with_capacity(raw.rule.len());
    let mut names = std::collections::HashSet::new();
    for r in &raw.rule {
        let span = r.span();
        let r = r.get_ref();
        let name = r.name.get_ref().trim();
        if name.is_empty() || name.eq_ignore_ascii_case("default") {
            return Err(PolicyError::at(
                text,
                Some(r.name.span()),
                "a rule needs a name, other than \"default\"",
            ));
        }
        if !names.insert(name.to_owned()) {
            return Err(PolicyError::at(
                text,
                Some(r.name.span()),
                format!("a second rule named {name:?}: names must be unique"),
            ));
        }
        let act = action(
            text,
            ActionFields {
                action: &r.action,
                message: &r.message,
                timeout_s: &r.timeout_s,
                columns: &r.columns,
                rows: &r.rows,
                on_exceed: &r.on_exceed,
            },
        )?;
        let when = match &r.when {
            Some(w) => conditions(text, w)?,
            None => Conditions::default(),
        };
        if when.requests.is_some()
            && !matches!(act, Action::Allow | Action::Alert | Action::Deny { .. })
        {
            return Err(PolicyError::at(
                text,
                Some(r.action.span()),
                "a rule on `requests` can allow, alert or deny: a request has no statement to hold or result to shape",
            ));
        }
        rules.push(Rule {
            name: name.to_owned(),
            line: PolicyError::at(text, Some(span), "").line,
            action: act,
            record: r.record.unwrap_or(true),
            when,
        });
    }
    Ok(Policy { rules, default })
}

fn action(text: &str, f: ActionFields<'_>) -> Result<Action, PolicyError> {
    let err = |span: Range<usize>, m: String| PolicyError::at(text, Some(span), m);
    let name = f.action.get_ref().as_str();
    // Which optional fields the action takes; any other is a mistake worth reporting.
    let allowed: &[&str] = match name {
        "allow" | "alert" => &[],
        "deny" => &["message"],
        "require_approval" => &["timeout_s"],
        "mask" => &["columns"],
        "row_limit" => &["rows", "on_exceed"],
        other => {
            return Err(err(
                f.action.span(),
                format!(
                    "unknown action {other:?} (allow, alert, deny, require_approval, mask, row_limit)"
                ),
            ));
        }
    };
    let given = [
        ("message", f.message.is_some()),
        ("timeout_s", f.timeout_s.is_some()),
        ("columns", f.columns.is_some()),
        ("rows", f.rows.is_some()),
        ("on_exceed", f.on_exceed.is_some()),
    ];
    for (field, present) in given {
        if present && !allowed.contains(&field) {
            return Err(err(
                f.action.span(),
                format!("`{field}` does not apply to action {name:?}"),
            ));
        }
    }
    Ok(match name {
        "allow" => Action::Allow,
        "alert" => Action::Alert,
        "deny" => Action::Deny {
            message: f.message.clone(),
        },
        "require_approval" => {
            let t = f
                .timeout_s
                .as_ref()
                .ok_or_else(|| err(f.action.span(), "require_approval needs `timeout_s`".into()))?;
            let secs = *t.get_ref();
            if secs == 0 || Duration::from_secs(secs) > MAX_APPROVAL_TIMEOUT {
                return Err(err(
                    t.span(),
                    format!(
                        "timeout_s must be 1..={} (below a session token's validity)",
                        MAX_APPROVAL_TIMEOUT.as_secs()
                    ),
                ));
            }
            Action::RequireApproval {
                timeout: Duration::from_secs(secs),
            }
        }
        "mask" => {
            let cols = f
                .columns
                .as_ref()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| err(f.action.span(), "mask needs a non-empty `columns`".into()))?;
            let mut out = Vec::new();
            for c in cols {
                let v = c.get_ref().trim();
                if v.is_empty() {
                    return Err(err(c.span(), "an empty column name".into()));
                }
                out.push(v.to_owned());
            }
            Action::Mask { columns: out }
        }
        _ => {
            let rows = f
                .rows
                .as_ref()
                .ok_or_else(|| err(f.action.span(), "row_limit needs `rows`".into()))?;
            let on_exceed = match f.on_exceed.as_ref() {
                None => OnExceed::Refuse,
                Some(o) => match o.get_ref().as_str() {
                    "refuse" => OnExceed::Refuse,
                    "truncate" => OnExceed::Truncate,
                    other => {
                        return Err(err(
                            o.span(),
                            format!("on_exceed is \"refuse\" or \"truncate\", not {other:?}"),
                        ));
                    }
                },
            };
            Action::RowLimit {
                rows: *rows.get_ref(),
                on_exceed,
            }
        }
    })
}

fn conditions(text: &str, w: &Spanned<RawWhen>) -> Result<Conditions, PolicyError> {
    let span = w.span();
    let w = w.get_ref();
    let exact = |v: &Option<Vec<String>>| {
        v.as_ref()
            .map(|v| v.iter().map(|s| Glob::exact(s)).collect::<Vec<_>>())
    };
    let caseless = |v: &Option<Vec<String>>| {
        v.as_ref()
            .map(|v| v.iter().map(|s| Glob::caseless(s)).collect::<Vec<_>>())
    };
    let objects = |v: &Option<Vec<Spanned<String>>>| -> Result<_, PolicyError> {
        match v {
            None => Ok(None),
            Some(v) => v
                .iter()
                .map(|p| {
                    ObjectPattern::parse(p.get_ref()).map_err(|e| {
                        PolicyError::at(
                            text,
                            Some(p.span()),
                            format!("object pattern {:?}: {e}", p.get_ref()),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
        }
    };
    let sql = match &w.sql {
        None => None,
        Some(s) => Some(
            regex::RegexBuilder::new(s.get_ref())
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    PolicyError::at(
                        text,
                        Some(s.span()),
                        format!("sql is not a valid regex: {e}"),
                    )
                })?,
        ),
    };
    let time = match &w.time {
        None => None,
        Some(t) => {
            let r = t.get_ref();
            Some(
                TimeWindow::new(
                    r.days.as_deref().unwrap_or(&[]),
                    r.hours.as_deref(),
                    r.offset.as_deref(),
                )
                .map_err(|e| PolicyError::at(text, Some(t.span()), format!("time: {e}")))?,
            )
        }
    };
    let requests = match &w.requests {
        None => None,
        Some(v) => {
            for (field, given) in [
                ("statement", w.statement.is_some()),
                ("objects", w.objects.is_some()),
                ("writes", w.writes.is_some()),
                ("sql", w.sql.is_some()),
                ("unparsed", w.unparsed.is_some()),
            ] {
                if given {
                    return Err(PolicyError::at(
                        text,
                        Some(span.clone()),
                        format!(
                            "`requests` and `{field}` in one rule: a rule decides requests or statements, not both"
                        ),
                    ));
                }
            }
            let mut out = Vec::new();
            for p in v {
                let (method, path) = p
                    .get_ref()
                    .trim()
                    .split_once(' ')
                    .map(|(m, p)| (m.trim(), p.trim()))
                    .filter(|(m, p)| !m.is_empty() && p.starts_with(['/', '*']))
                    .ok_or_else(|| {
                        PolicyError::at(
                            text,
                            Some(p.span()),
                            format!(
                                "request pattern {:?}: write METHOD PATH, e.g. \"DELETE /api/v2/databases/*\" or \"* /api/v2/*\"",
                                p.get_ref()
                            ),
                        )
                    })?;
                out.push(super::RequestPattern {
                    method: Glob::caseless(method),
                    path: Glob::exact(path),
                });
            }
            Some(out)
        }
    };
    let statement = match &w.statement {
        None => None,
        Some(v) => {
            let mut out = Vec::new();
            for s in v {
                let t = s.trim().to_ascii_uppercase().replace(' ', "_");
                if t.is_empty() {
                    return Err(PolicyError::at(
                        text,
                        Some(span.clone()),
                        "an empty statement type",
                    ));
                }
                out.push(t);
            }
            Some(out)
        }
    };
    Ok(Conditions {
        identity: exact(&w.identity),
        labels: w
            .labels
            .as_ref()
            .map(|l| l.iter().map(|(k, v)| (k.clone(), Glob::exact(v))).collect()),
        human: exact(&w.human),
        groups: exact(&w.groups),
        account: caseless(&w.account),
        user: caseless(&w.user),
        role: caseless(&w.role),
        statement,
        objects: objects(&w.objects)?,
        writes: objects(&w.writes)?,
        sql,
        unparsed: w.unparsed,
        time,
        requests,
    })
}
