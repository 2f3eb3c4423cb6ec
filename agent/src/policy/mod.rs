//! Policy: what the agent does with each statement, decided by the operator's rule file.
//!
//! Pure, no I/O: the rule file's text comes in ([`Policy::parse`]), a statement with who sent it
//! comes in ([`Policy::judge`]), a typed [`Decision`] naming its rule comes out. Rules are tried
//! in file order and the first whose conditions all hold decides; when none does, the file's
//! required `[default]` decides. Statements are classified by [`classify`] (sqlparser's Snowflake
//! dialect, with a keyword fallback marked `unparsed`), and a multi-statement request is judged
//! statement by statement, the strictest decision standing for the request.

pub mod classify;
pub mod file;
pub mod pattern;

use std::collections::BTreeMap;
use std::time::Duration;

pub use classify::{Classified, NameContext, ObjectRef, classify_request};
pub use file::PolicyError;
use pattern::{Glob, ObjectPattern, TimeWindow};

/// The name decisions carry when no rule matched.
pub const DEFAULT_RULE: &str = "default";

/// The built-in rule that denies, in brokered sessions, statements that create or reveal
/// credentials (a user's password, key-pair key or programmatic access token, secrets, token
/// functions). A rule of the file with this name replaces it: it then decides such statements as
/// any rule does, in its place in the file.
pub const BROKERED_CREDENTIALS_RULE: &str = "brokered-credentials";

/// What a rule does with a statement it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Forward it.
    Allow,
    /// Forward it and flag the audit event `alert`.
    Alert,
    /// Answer with a Snowflake-shaped error; the statement never reaches Snowflake.
    Deny {
        /// The operator's explanation, shown to the driver after the rule's name.
        message: Option<String>,
    },
    /// Hold it until an approver decides, at most `timeout` (then it is rejected).
    RequireApproval {
        /// How long the statement may wait.
        timeout: Duration,
    },
    /// Forward it and replace these result columns before the workload sees them.
    Mask {
        /// Column names, compared case-insensitively.
        columns: Vec<String>,
    },
    /// Forward it and hold the result to `rows` rows.
    RowLimit {
        /// Most rows the workload may receive.
        rows: u64,
        /// What happens past the limit.
        on_exceed: OnExceed,
    },
}

/// What a row limit does with a larger result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExceed {
    /// The statement fails with a Snowflake-shaped error.
    Refuse,
    /// The workload gets the first rows; the event is flagged `rows_truncated`.
    Truncate,
}

impl Action {
    /// The action's name, as written in the rule file.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Alert => "alert",
            Action::Deny { .. } => "deny",
            Action::RequireApproval { .. } => "require_approval",
            Action::Mask { .. } => "mask",
            Action::RowLimit { .. } => "row_limit",
        }
    }

    /// How strict the action is, to pick the decision of a multi-statement request.
    fn severity(&self) -> u8 {
        match self {
            Action::Allow => 0,
            Action::Alert => 1,
            Action::Mask { .. } | Action::RowLimit { .. } => 2,
            Action::RequireApproval { .. } => 3,
            Action::Deny { .. } => 4,
        }
    }
}

/// The decision on one statement: the action and the rule that chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The deciding rule's name, or [`DEFAULT_RULE`].
    pub rule: String,
    /// What to do.
    pub action: Action,
}

/// Who sent a statement: the columns rules can match, as the agent knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// The enrollment's workload identity.
    pub identity: Option<String>,
    /// The enrollment's labels.
    pub labels: BTreeMap<String, String>,
    /// The human behind the workload.
    pub human: Option<String>,
    /// The human's groups.
    pub groups: Vec<String>,
    /// The Snowflake account.
    pub account: Option<String>,
    /// The Snowflake user.
    pub user: Option<String>,
    /// The role in effect.
    pub role: Option<String>,
    /// Whether the session's credential is the agent's (a brokered login): such a session may not
    /// create or reveal credentials that work without the agent ([`BROKERED_CREDENTIALS_RULE`]).
    pub brokered: bool,
}

/// A rule's conditions; `None` is "any".
#[derive(Debug, Clone, Default)]
pub(crate) struct Conditions {
    identity: Option<Vec<Glob>>,
    labels: Option<Vec<(String, Glob)>>,
    human: Option<Vec<Glob>>,
    groups: Option<Vec<Glob>>,
    account: Option<Vec<Glob>>,
    user: Option<Vec<Glob>>,
    role: Option<Vec<Glob>>,
    statement: Option<Vec<String>>,
    objects: Option<Vec<ObjectPattern>>,
    writes: Option<Vec<ObjectPattern>>,
    sql: Option<regex::Regex>,
    unparsed: Option<bool>,
    time: Option<TimeWindow>,
    /// HTTP requests (Snowflake's REST resource APIs and other requests the agent does not read as
    /// statements); a rule with them decides requests only, never statements.
    requests: Option<Vec<RequestPattern>>,
}

/// `METHOD PATH` of a `when.requests` entry: a caseless method glob and a path glob.
#[derive(Debug, Clone)]
pub(crate) struct RequestPattern {
    pub(crate) method: Glob,
    pub(crate) path: Glob,
}

/// One rule of the file.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's unique name, recorded in `policy_rule`.
    pub name: String,
    /// The line of the file where the rule starts.
    pub line: usize,
    /// What it does.
    pub action: Action,
    /// Whether results of the statements it decides are recorded (`record = false` turns
    /// session recording off for them; default true).
    pub record: bool,
    when: Conditions,
}

/// A parsed rule file.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    default: Action,
}

/// The decisions on a request's statements.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// Each statement with its decision, in request order.
    pub statements: Vec<(Classified, Decision)>,
}

impl Judgement {
    /// The decision standing for the whole request: the strictest, the first among equals.
    pub fn verdict(&self) -> Option<&Decision> {
        let mut best: Option<&Decision> = None;
        for (_, d) in &self.statements {
            if best.is_none_or(|b| d.action.severity() > b.action.severity()) {
                best = Some(d);
            }
        }
        best
    }

    /// Whether any statement was classified by keywords only.
    pub fn unparsed(&self) -> bool {
        self.statements.iter().any(|(c, _)| c.unparsed)
    }
}

fn any_glob(globs: &Option<Vec<Glob>>, value: Option<&str>) -> bool {
    match globs {
        None => true,
        Some(g) => value.is_some_and(|v| g.iter().any(|g| g.matches(v))),
    }
}

fn type_matches(wanted: &str, actual: &str) -> bool {
    actual == wanted
        || actual
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with('_'))
}

impl Conditions {
    fn holds(&self, who: &Subject, stmt: &Classified, now_unix_s: i64) -> bool {
        self.requests.is_none()
            && self.holds_for(who, now_unix_s)
            && self.unparsed.is_none_or(|u| u == stmt.unparsed)
            && self
                .statement
                .as_ref()
                .is_none_or(|s| s.iter().any(|w| type_matches(w, &stmt.statement_type)))
            && self
                .objects
                .as_ref()
                .is_none_or(|p| stmt.objects().any(|o| p.iter().any(|p| p.matches(o))))
            && self
                .writes
                .as_ref()
                .is_none_or(|p| stmt.writes.iter().any(|o| p.iter().any(|p| p.matches(o))))
            && self.sql.as_ref().is_none_or(|r| r.is_match(&stmt.text))
    }

    /// The conditions on who sends and when, which statements and requests share.
    fn holds_for(&self, who: &Subject, now_unix_s: i64) -> bool {
        any_glob(&self.identity, who.identity.as_deref())
            && self.labels.as_ref().is_none_or(|l| {
                l.iter()
                    .all(|(k, g)| who.labels.get(k).is_some_and(|v| g.matches(v)))
            })
            && any_glob(&self.human, who.human.as_deref())
            && self.groups.as_ref().is_none_or(|g| {
                who.groups
                    .iter()
                    .any(|have| g.iter().any(|g| g.matches(have)))
            })
            && any_glob(&self.account, who.account.as_deref())
            && any_glob(&self.user, who.user.as_deref())
            && any_glob(&self.role, who.role.as_deref())
            && self.time.as_ref().is_none_or(|t| t.contains(now_unix_s))
    }

    /// Whether a `requests` rule's conditions hold for `method path`.
    fn holds_request(&self, who: &Subject, method: &str, path: &str, now_unix_s: i64) -> bool {
        self.requests.as_ref().is_some_and(|r| {
            r.iter()
                .any(|p| p.method.matches(method) && p.path.matches(path))
        }) && self.holds_for(who, now_unix_s)
    }
}

impl Policy {
    /// Reads a rule file's text; the error names the line and column of the first mistake.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        file::parse(text)
    }

    /// The policy in force without a rule file: everything allowed, but the built-in rules
    /// ([`BROKERED_CREDENTIALS_RULE`]).
    pub fn built_in() -> Policy {
        Policy {
            rules: Vec::new(),
            default: Action::Allow,
        }
    }

    /// The rules, in the order they are tried.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The action when no rule matches.
    pub fn default_action(&self) -> &Action {
        &self.default
    }

    /// Whether any rule masks columns or limits rows (result inspection is then required).
    pub fn shapes_results(&self) -> bool {
        self.rules
            .iter()
            .map(|r| &r.action)
            .chain(std::iter::once(&self.default))
            .any(|a| matches!(a, Action::Mask { .. } | Action::RowLimit { .. }))
    }

    /// Decides one classified statement at `now_unix_s` (seconds since the epoch, UTC).
    pub fn decide(&self, who: &Subject, stmt: &Classified, now_unix_s: i64) -> Decision {
        if who.brokered
            && stmt.mints_credential
            && !self
                .rules
                .iter()
                .any(|r| r.name == BROKERED_CREDENTIALS_RULE)
        {
            return Decision {
                rule: BROKERED_CREDENTIALS_RULE.to_owned(),
                action: Action::Deny {
                    message: Some(
                        "a brokered session cannot create or reveal credentials: the agent's key would become usable without it"
                            .to_owned(),
                    ),
                },
            };
        }
        for r in &self.rules {
            if r.when.holds(who, stmt, now_unix_s) {
                return Decision {
                    rule: r.name.clone(),
                    action: r.action.clone(),
                };
            }
        }
        Decision {
            rule: DEFAULT_RULE.to_owned(),
            action: self.default.clone(),
        }
    }

    /// Decides an HTTP request the agent does not read as a statement (`method` and `path`, no
    /// query string): the first rule with `when.requests` that matches; `None` when none does
    /// (the default action is for statements, and `proxy.unknown_requests` decides).
    pub fn decide_request(
        &self,
        who: &Subject,
        method: &str,
        path: &str,
        now_unix_s: i64,
    ) -> Option<Decision> {
        self.rules
            .iter()
            .find(|r| r.when.holds_request(who, method, path, now_unix_s))
            .map(|r| Decision {
                rule: r.name.clone(),
                action: r.action.clone(),
            })
    }

    /// Classifies a request's SQL and decides each of its statements.
    pub fn judge(
        &self,
        who: &Subject,
        sql: &str,
        names: &NameContext,
        now_unix_s: i64,
    ) -> Judgement {
        Judgement {
            statements: classify_request(sql, names)
                .into_iter()
                .map(|c| {
                    let d = self.decide(who, &c, now_unix_s);
                    (c, d)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
