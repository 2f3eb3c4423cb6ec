//! `pending`, `approve` and `reject` at the control socket: the statements held for approval,
//! and who decided them (docs/decisions.md §17: the peer's user and its login user, by name). The proxy
//! keeps its own summary of a held statement; it becomes the wire's [`HoldInfo`] here.

use super::server::Session;
use super::{HoldInfo, Reply, Response};
use crate::proxy::exchange::holds::{HoldSummary, Holds};

/// A held statement in the wire's form: the time it was received as RFC 3339 (UTC, to the
/// millisecond), the time it may still wait in whole seconds.
fn wire(h: HoldSummary) -> HoldInfo {
    let received: chrono::DateTime<chrono::Utc> = h.received_at.into();
    HoldInfo {
        id: h.id,
        rule: h.rule,
        identity: h.identity,
        user: h.user,
        role: h.role,
        sql: h.sql,
        received_at: received.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        expires_in_s: h.expires_in.as_secs(),
    }
}

/// The name of `uid` from the host's user database, else the number.
fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

/// Who is acting: the peer's user, and the user who logged in to the session it runs in
/// (`/proc/<pid>/loginuid`) when that is set and differs, as `root (login alice)`.
pub fn approver(session: &Session) -> String {
    let who = user_name(session.peer_uid);
    let login = session
        .peer_pid
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/loginuid")).ok())
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|uid| *uid != u32::MAX);
    match login {
        Some(uid) => format!("{who} (login {})", user_name(uid)),
        None => who,
    }
}

/// Answers `pending`: oldest first.
pub fn pending(holds: &Holds) -> Response {
    let mut holds: Vec<HoldInfo> = holds.pending().into_iter().map(wire).collect();
    holds.sort_by(|a, b| a.received_at.cmp(&b.received_at).then(a.id.cmp(&b.id)));
    Response::Ok {
        data: Reply::Pending { holds },
    }
}

/// Answers `approve` (`approve = true`) or `reject`.
pub fn decide(holds: &Holds, id: &str, approve: bool, session: &Session) -> Response {
    let approver = approver(session);
    match holds.decide(id, approve, &approver) {
        Ok(hold) => Response::Ok {
            data: Reply::Decided {
                hold: wire(hold),
                decision: if approve { "approved" } else { "rejected" }.to_owned(),
                approver,
            },
        },
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}
