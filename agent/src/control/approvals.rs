//! `pending`, `approve` and `reject` at the control socket: the statements held for approval,
//! and who decided them (DECISIONS 17: the peer's user and its login user, by name).

use super::server::Session;
use super::{Reply, Response};
use crate::proxy::exchange::holds::Holds;

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

/// Answers `pending`.
pub fn pending(holds: &Holds) -> Response {
    Response::Ok {
        data: Reply::Pending {
            holds: holds.pending(),
        },
    }
}

/// Answers `approve` (`approve = true`) or `reject`.
pub fn decide(holds: &Holds, id: &str, approve: bool, session: &Session) -> Response {
    let approver = approver(session);
    match holds.decide(id, approve, &approver) {
        Ok(hold) => Response::Ok {
            data: Reply::Decided {
                hold,
                decision: if approve { "approved" } else { "rejected" }.to_owned(),
                approver,
            },
        },
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}
