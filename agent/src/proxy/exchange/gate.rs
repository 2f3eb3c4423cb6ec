//! The proxy's one call into policy: who sent a statement (the connection's enrollment, the
//! session's account, user and role), the SQL, and back a [`Verdict`] that the statement handler
//! acts on: forward, refuse, or hold for approval.

use std::time::{Duration, SystemTime};

use super::context::ConnCtx;
use super::state::TrackedSession;
use crate::audit::{self, Event, Flag};
use crate::policy::{Action, Decision, NameContext, Subject};
use crate::snowflake::Refusal;
use crate::sync::lock;

/// What policy says about one request.
#[derive(Debug, Clone, Default)]
pub(super) struct Verdict {
    /// The deciding rule and its action; `None` when no policy file is configured.
    decision: Option<Decision>,
    /// Whether a statement was classified by keywords only.
    unparsed: bool,
    /// Each statement's own decision and rule, in request order.
    each: PerStatement,
}

/// Each statement's decision and rule, for the events of a multi-statement request.
pub(super) type PerStatement = Vec<(audit::Decision, String)>;

/// The audit's `decision` for a policy action: the one place the policy's actions meet the
/// audit's vocabulary.
pub(super) fn decision_of(action: &Action) -> audit::Decision {
    match action {
        Action::Allow => audit::Decision::Allow,
        Action::Alert => audit::Decision::Alert,
        Action::Deny { .. } => audit::Decision::Deny,
        Action::RequireApproval { .. } => audit::Decision::RequireApproval,
        Action::Mask { .. } => audit::Decision::Mask,
        Action::RowLimit { .. } => audit::Decision::RowLimit,
    }
}

/// Judges a request's SQL (each of its statements; the strictest decision stands).
pub(super) fn judge(ctx: &ConnCtx, session: Option<&TrackedSession>, sql: &str) -> Verdict {
    let (who, names) = subject(ctx, session);
    let (policy, built_in) = match ctx.shared.policy.current() {
        Some(p) => (p, false),
        // Without a rule file, a brokered session is still held to the built-in rules.
        None if who.brokered => (std::sync::Arc::new(crate::policy::Policy::built_in()), true),
        None => return Verdict::default(),
    };
    let j = policy.judge(&who, sql, &names, now_unix_s());
    if built_in
        && j.verdict()
            .is_none_or(|d| d.rule != crate::policy::BROKERED_CREDENTIALS_RULE)
    {
        // No rule file and no built-in rule applied: no decision, as without policy.
        return Verdict::default();
    }
    Verdict {
        unparsed: j.unparsed(),
        decision: j.verdict().cloned(),
        each: j
            .statements
            .iter()
            .map(|(_, d)| (decision_of(&d.action), d.rule.clone()))
            .collect(),
    }
}

/// Judges an HTTP request the agent does not read as a statement (a REST resource API call):
/// `None` when no rule on `requests` decides it. Marks the event with the decision.
pub(super) fn judge_request(
    ctx: &ConnCtx,
    session: Option<&TrackedSession>,
    method: &str,
    path: &str,
    event: &mut Event,
) -> Option<Decision> {
    let policy = ctx.shared.policy.current()?;
    let (who, _) = subject(ctx, session);
    let d = policy.decide_request(&who, method, path, now_unix_s())?;
    event.decision = Some(decision_of(&d.action));
    event.policy_rule = Some(d.rule.clone());
    if matches!(d.action, Action::Alert) {
        event.add_flag(Flag::Alert);
    }
    Some(d)
}

fn now_unix_s() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Who is behind a connection's exchange, and the session's current database and schema.
fn subject(ctx: &ConnCtx, session: Option<&TrackedSession>) -> (Subject, NameContext) {
    let base = &ctx.base;
    let mut who = Subject {
        identity: base.workload_identity.clone(),
        labels: base.labels.clone(),
        human: base.human_identity.clone(),
        groups: Vec::new(),
        account: None,
        user: None,
        role: None,
        brokered: false,
    };
    let mut names = NameContext::default();
    if let Some(s) = session {
        who.account.clone_from(&s.account);
        who.user.clone_from(&s.login_user);
        // The human behind the session, as its verified OIDC token said.
        if s.human.identity.is_some() {
            who.human.clone_from(&s.human.identity);
        }
        who.groups.clone_from(&s.human.groups);
        who.brokered = s.brokered.is_some();
        let c = lock(&s.context);
        who.role.clone_from(&c.role);
        names.database.clone_from(&c.database);
        names.schema.clone_from(&c.schema);
    }
    (who, names)
}

/// Gives each event of a multi-statement request its own statement's decision and rule.
pub(super) fn mark_child(each: &PerStatement, index: usize, event: &mut Event) {
    if let Some((decision, rule)) = each.get(index) {
        event.decision = Some(*decision);
        event.policy_rule = Some(rule.clone());
    }
}

impl Verdict {
    /// Writes the decision, its rule and its flags into the statement's event.
    pub(super) fn mark(&self, event: &mut Event) {
        let Some(d) = &self.decision else { return };
        event.decision = Some(decision_of(&d.action));
        event.policy_rule = Some(d.rule.clone());
        if self.unparsed {
            event.add_flag(Flag::Unparsed);
        }
        if matches!(d.action, Action::Alert) {
            event.add_flag(Flag::Alert);
        }
    }

    /// The refusal to answer with instead of forwarding, if any. Masking and row limits pass
    /// the statement; its result is shaped on the way back (`exchange::masking`).
    pub(super) fn refusal(&self) -> Option<Refusal> {
        let d = self.decision.as_ref()?;
        match &d.action {
            Action::Deny { message } => Some(Refusal::PolicyDenied {
                rule: d.rule.clone(),
                message: message.clone(),
            }),
            _ => None,
        }
    }

    /// How long the statement may wait for an approver, when its rule asks for approval.
    pub(super) fn hold(&self) -> Option<Duration> {
        match self.decision.as_ref()?.action {
            Action::RequireApproval { timeout } => Some(timeout),
            _ => None,
        }
    }
}

/// What the statement handler does with a statement.
pub(super) enum Gate {
    /// Send it upstream; each statement's own decision goes with it.
    Forward(PerStatement),
    /// Answer with this error instead.
    Refuse(Refusal),
    /// Hold it for approval, at most this long.
    Hold(Duration),
}

/// Judges a statement and marks its event; an approved hold's statement passes with the event
/// recorded when it was held (its approver and decision time filled).
pub(super) fn gate(
    ctx: &ConnCtx,
    parts: &mut http::request::Parts,
    session: Option<&TrackedSession>,
    sql: &str,
    event: &mut Event,
) -> Gate {
    if let Some(super::holds::Approved(held)) = parts.extensions.remove() {
        *event = held;
        return Gate::Forward(Vec::new());
    }
    let v = judge(ctx, session, sql);
    v.mark(event);
    if let Some(r) = v.refusal() {
        return Gate::Refuse(r);
    }
    match v.hold() {
        Some(t) => Gate::Hold(t),
        None => Gate::Forward(v.each),
    }
}
