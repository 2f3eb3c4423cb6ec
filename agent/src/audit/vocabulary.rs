//! The audit's vocabulary: the values of the `flags`, `decision`, `close_reason`,
//! `lifecycle_action` and `connection_mode` columns, as types.
//!
//! Analysts filter on these values, so they are a public schema: each variant has exactly one
//! text, written to the journal and the Parquet files and parsed back from them ([`Term`]). A
//! value a file holds that this build does not know is an [`UnknownTerm`], never a silent
//! default. Later versions only add variants; a text, once written, is never changed.
//!
//! Not here: the policy file's own action names (`policy::Action::name`, its syntax), and which
//! policy action becomes which decision (the proxy's policy call does that mapping).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value of the vocabulary: its one stable text, and parsing it back.
pub trait Term: Sized {
    /// The column the value belongs to, for errors.
    const COLUMN: &'static str;

    /// The text stored in the audit.
    fn text(&self) -> Cow<'_, str>;

    /// The value stored as `s`, if this build knows it.
    fn parse(s: &str) -> Result<Self, UnknownTerm>;
}

/// A text that is not a value of its column's vocabulary (written by a newer agent, or damaged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: unknown value {value:?}")]
pub struct UnknownTerm {
    /// The column the text was read for.
    pub column: &'static str,
    /// The text.
    pub value: String,
}

/// Declares a vocabulary enum without data: the variants, their one text and their docs.
macro_rules! words {
    (
        $(#[$meta:meta])*
        $name:ident, column = $column:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The text stored in the audit.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl Term for $name {
            const COLUMN: &'static str = $column;

            fn text(&self) -> Cow<'_, str> {
                Cow::Borrowed(self.as_str())
            }

            fn parse(s: &str) -> Result<Self, UnknownTerm> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err(UnknownTerm { column: $column, value: s.to_owned() }),
                }
            }
        }

        common!($name);
    };
}

/// `Display`, `FromStr`, serde as the text, and comparison with text, for a [`Term`].
macro_rules! common {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.text())
            }
        }

        impl FromStr for $name {
            type Err = UnknownTerm;

            fn from_str(s: &str) -> Result<Self, UnknownTerm> {
                <$name as Term>::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.text())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Cow::<'de, str>::deserialize(d)?;
                <$name as Term>::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.text() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.text() == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.text() == other.as_str()
            }
        }
    };
}

words! {
    /// A mark on an event (the `flags` column, a list): something an analyst should know about
    /// how completely the agent saw, or what it did to, the exchange.
    Flag, column = "flags" {
        /// A statement's intent was recorded but its completion never was (the agent stopped or
        /// crashed first, or the intent waited too long): it may or may not have run.
        OutcomeUnknown => "outcome_unknown",
        /// The client aborted the statement before its answer was recorded.
        Aborted => "aborted",
        /// The response was too large to inspect and streamed on unread: its result columns
        /// (rows, bytes, error) are not known.
        Uninspected => "uninspected",
        /// The request or response could not be parsed (or the SQL was classified by keywords
        /// only): the event's Snowflake columns may be incomplete.
        Unparsed => "unparsed",
        /// The statement was only described (prepared), not executed.
        DescribeOnly => "describe_only",
        /// The statement's result chunks were not all downloaded through the agent before its
        /// event was recorded: `result_bytes` counts only those seen.
        ChunksUnseen => "chunks_unseen",
        /// A PUT/GET statement's storage transfers were not seen by the agent.
        TransferUnseen => "transfer_unseen",
        /// The client refused the agent's certificate: the workload does not trust the agent's
        /// CA, so nothing of the connection was inspected.
        TlsUntrusted => "tls_untrusted",
        /// The connection did not start with a TLS ClientHello.
        NotTls => "not_tls",
        /// The ClientHello named no server (no SNI).
        NoSni => "no_sni",
        /// The ClientHello did not arrive whole within `proxy.hello_timeout_ms` (sent late, in
        /// pieces too slowly, or cut short): the connection was refused.
        HelloIncomplete => "hello_incomplete",
        /// The ClientHello was longer than the agent reads to find the server name: the
        /// connection was refused.
        HelloOversized => "hello_oversized",
        /// The connection reached the agent through the guard on its enrolled cgroup's parent: the
        /// cgroup was made again (a restarted unit) and its programs were not attached yet.
        Guarded => "guarded",
        /// The connection was to an HTTP proxy (`redirect.proxy_ports`): `http_method` and
        /// `http_path` hold its CONNECT and target, `http_status` the answer.
        ViaProxy => "via_proxy",
        /// The statement's text was longer than `audit.max_sql_bytes`: `sql_text` holds its
        /// start, `sql_sha256` identifies the whole.
        SqlTruncated => "sql_truncated",
        /// A truncating row limit cut the result: `rows_produced` counts the rows delivered.
        RowsTruncated => "rows_truncated",
        /// The session's human identity token could not be verified; `human_identity` is what
        /// the driver claimed.
        IdentityUnverified => "identity_unverified",
        /// The statement was forwarded although its intent could not be made durable first
        /// (`on_audit_failure = "continue"`).
        AuditGap => "audit_gap",
        /// The statement asked for approval while the agent already held as many statements as
        /// it can: it was refused.
        TooManyHolds => "too_many_holds",
        /// The statement ran, but its result (or one of its chunks) was withheld by its rule.
        ResultRefused => "result_refused",
        /// The statement matched a rule whose action is `alert`.
        Alert => "alert",
    }
}

words! {
    /// What the agent decided about an exchange or a connection (the `decision` column).
    Decision, column = "decision" {
        /// A rule (or the default) allowed the statement.
        Allow => "allow",
        /// A rule allowed the statement and asked that it be flagged `alert`.
        Alert => "alert",
        /// The agent refused: a rule denied it, an approver rejected it, a hold timed out, the
        /// request could not be inspected, or the connection was unidentified traffic.
        Deny => "deny",
        /// A rule held the statement for an approver (the row of a hold not yet decided).
        RequireApproval => "require_approval",
        /// A rule forwarded the statement and masked columns of its result.
        Mask => "mask",
        /// A rule forwarded the statement and limited the rows of its result.
        RowLimit => "row_limit",
        /// An approver approved the held statement and it was forwarded.
        Approved => "approved",
    }
}

words! {
    /// What happened in the agent's own life (the `lifecycle_action` column of `lifecycle`
    /// events).
    LifecycleAction, column = "lifecycle_action" {
        /// The daemon started and accepts connections.
        Start => "start",
        /// The daemon stopped.
        Stop => "stop",
        /// Events were lost: the audit could not record them (count and time range in `detail`).
        AuditGap => "audit_gap",
        /// A changed policy file was loaded and is in force (`detail` says how many rules).
        PolicyReload => "policy_reload",
        /// A changed policy file was rejected; the previous rules stay in force (`detail` says
        /// why).
        PolicyRejected => "policy_rejected",
    }
}

words! {
    /// What became of a statement's recorded result (the `recording` column).
    RecordingStatus, column = "recording" {
        /// The whole result is recorded.
        Full => "full",
        /// A cap stopped the recording; the rest went to the workload unrecorded.
        Truncated => "truncated",
        /// Not recorded: no recipient configured, off for the identity, or a result the agent
        /// does not follow.
        Off => "off",
        /// The recording could not be written.
        Failed => "failed",
    }
}

words! {
    /// How the agent carried a connection (the `connection_mode` column of `connection` events).
    ConnectionMode, column = "connection_mode" {
        /// TLS was terminated by the agent and the Snowflake protocol inspected.
        Intercepted => "intercepted",
        /// The bytes were carried untouched to the original destination.
        Passthrough => "passthrough",
        /// The agent refused the connection (a reset): nothing of it reached the destination.
        Refused => "refused",
    }
}

/// Why a connection ended (the `close_reason` column of `connection` events).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Both sides finished normally (`completed`).
    Completed,
    /// A side reset the connection, a TLS handshake failed or an I/O error ended it
    /// (`error: <what>`).
    Error(String),
    /// No bytes moved for the idle timeout (`idle_timeout`).
    IdleTimeout,
    /// The daemon stopped and its drain period ran out (`shutdown`).
    Shutdown,
    /// The agent could not tell where the connection goes (no SNI, not TLS, a ClientHello not
    /// received whole) and reset it (`denied: unidentified traffic`); the flags say which.
    DeniedUnidentified,
    /// The connection named a server that is not intercepted, but its destination could not be
    /// shown to be that server (no certificate valid for the name under the trusted roots), so
    /// the agent reset it rather than pass it through (`denied: unverified destination`); the
    /// event's `error_message` says what the check found.
    DeniedUnverified,
    /// The workload's enrollment already had `proxy.max_connections_per_enrollment` connections
    /// open, so the agent reset this one (`denied: connection limit`).
    DeniedConnectionLimit,
    /// The egress lockdown refused a connect or a UDP send to a destination not allowed
    /// (`denied: lockdown`; on `denial` events, whose `detail` is `tcp` or `udp`).
    DeniedLockdown,
    /// The original destination refused or failed the connection; the text is the I/O error's
    /// kind (`connect_failed: <kind>`, e.g. `connect_failed: connection refused`).
    ConnectFailed(String),
    /// The original destination did not answer within the connect timeout (`connect_timeout`).
    ConnectTimeout,
}

impl CloseReason {
    const ERROR: &'static str = "error: ";
    const CONNECT_FAILED: &'static str = "connect_failed: ";
    const DENIED_UNIDENTIFIED: &'static str = "denied: unidentified traffic";
    const DENIED_UNVERIFIED: &'static str = "denied: unverified destination";
    const DENIED_CONNECTION_LIMIT: &'static str = "denied: connection limit";
    const DENIED_LOCKDOWN: &'static str = "denied: lockdown";

    /// The reason of a connection to the original destination that failed with `kind`.
    pub fn connect_failed(kind: std::io::ErrorKind) -> Self {
        CloseReason::ConnectFailed(kind.to_string())
    }
}

impl Term for CloseReason {
    const COLUMN: &'static str = "close_reason";

    fn text(&self) -> Cow<'_, str> {
        match self {
            CloseReason::Completed => Cow::Borrowed("completed"),
            CloseReason::Error(e) => Cow::Owned(format!("{}{e}", Self::ERROR)),
            CloseReason::IdleTimeout => Cow::Borrowed("idle_timeout"),
            CloseReason::Shutdown => Cow::Borrowed("shutdown"),
            CloseReason::DeniedUnidentified => Cow::Borrowed(Self::DENIED_UNIDENTIFIED),
            CloseReason::DeniedUnverified => Cow::Borrowed(Self::DENIED_UNVERIFIED),
            CloseReason::DeniedConnectionLimit => Cow::Borrowed(Self::DENIED_CONNECTION_LIMIT),
            CloseReason::DeniedLockdown => Cow::Borrowed(Self::DENIED_LOCKDOWN),
            CloseReason::ConnectFailed(kind) => {
                Cow::Owned(format!("{}{kind}", Self::CONNECT_FAILED))
            }
            CloseReason::ConnectTimeout => Cow::Borrowed("connect_timeout"),
        }
    }

    fn parse(s: &str) -> Result<Self, UnknownTerm> {
        Ok(match s {
            "completed" => CloseReason::Completed,
            "idle_timeout" => CloseReason::IdleTimeout,
            "shutdown" => CloseReason::Shutdown,
            "connect_timeout" => CloseReason::ConnectTimeout,
            Self::DENIED_UNIDENTIFIED => CloseReason::DeniedUnidentified,
            Self::DENIED_UNVERIFIED => CloseReason::DeniedUnverified,
            Self::DENIED_CONNECTION_LIMIT => CloseReason::DeniedConnectionLimit,
            Self::DENIED_LOCKDOWN => CloseReason::DeniedLockdown,
            _ => {
                if let Some(e) = s.strip_prefix(Self::ERROR) {
                    CloseReason::Error(e.to_owned())
                } else if let Some(kind) = s.strip_prefix(Self::CONNECT_FAILED) {
                    CloseReason::ConnectFailed(kind.to_owned())
                } else {
                    return Err(UnknownTerm {
                        column: Self::COLUMN,
                        value: s.to_owned(),
                    });
                }
            }
        })
    }
}

common!(CloseReason);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round_trips<T>(values: &[T])
    where
        T: Term + fmt::Debug + PartialEq + Serialize + serde::de::DeserializeOwned,
    {
        for v in values {
            let text = v.text().into_owned();
            assert_eq!(&T::parse(&text).unwrap(), v, "{text}");
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(json, serde_json::to_string(&text).unwrap());
            assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), v);
        }
    }

    fn close_reasons() -> Vec<CloseReason> {
        vec![
            CloseReason::Completed,
            CloseReason::Error("client TLS handshake timed out".into()),
            CloseReason::Error(String::new()),
            CloseReason::IdleTimeout,
            CloseReason::Shutdown,
            CloseReason::DeniedUnidentified,
            CloseReason::DeniedUnverified,
            CloseReason::DeniedConnectionLimit,
            CloseReason::DeniedLockdown,
            CloseReason::connect_failed(std::io::ErrorKind::ConnectionRefused),
            CloseReason::ConnectTimeout,
        ]
    }

    #[test]
    fn every_value_round_trips_through_its_text() {
        round_trips(Flag::ALL);
        round_trips(Decision::ALL);
        round_trips(LifecycleAction::ALL);
        round_trips(ConnectionMode::ALL);
        round_trips(RecordingStatus::ALL);
        round_trips(&close_reasons());
        // Every variant of the data-carrying enum is in the list above.
        for r in close_reasons() {
            match r {
                CloseReason::Completed
                | CloseReason::Error(_)
                | CloseReason::IdleTimeout
                | CloseReason::Shutdown
                | CloseReason::DeniedUnidentified
                | CloseReason::DeniedUnverified
                | CloseReason::DeniedConnectionLimit
                | CloseReason::DeniedLockdown
                | CloseReason::ConnectFailed(_)
                | CloseReason::ConnectTimeout => {}
            }
        }
    }

    #[test]
    fn the_texts_are_the_ones_written_before() {
        let flags: Vec<&str> = Flag::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(
            flags,
            [
                "outcome_unknown",
                "aborted",
                "uninspected",
                "unparsed",
                "describe_only",
                "chunks_unseen",
                "transfer_unseen",
                "tls_untrusted",
                "not_tls",
                "no_sni",
                "hello_incomplete",
                "hello_oversized",
                "guarded",
                "via_proxy",
                "sql_truncated",
                "rows_truncated",
                "identity_unverified",
                "audit_gap",
                "too_many_holds",
                "result_refused",
                "alert",
            ]
        );
        let decisions: Vec<&str> = Decision::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(
            decisions,
            [
                "allow",
                "alert",
                "deny",
                "require_approval",
                "mask",
                "row_limit",
                "approved"
            ]
        );
        let actions: Vec<&str> = LifecycleAction::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(
            actions,
            [
                "start",
                "stop",
                "audit_gap",
                "policy_reload",
                "policy_rejected"
            ]
        );
        assert_eq!(ConnectionMode::Intercepted.to_string(), "intercepted");
        assert_eq!(ConnectionMode::Passthrough.to_string(), "passthrough");
        assert_eq!(ConnectionMode::Refused.to_string(), "refused");
        let recording: Vec<&str> = RecordingStatus::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(recording, ["full", "truncated", "off", "failed"]);
        let reasons: Vec<String> = close_reasons().iter().map(|r| r.to_string()).collect();
        assert_eq!(
            reasons,
            [
                "completed",
                "error: client TLS handshake timed out",
                "error: ",
                "idle_timeout",
                "shutdown",
                "denied: unidentified traffic",
                "denied: unverified destination",
                "denied: connection limit",
                "denied: lockdown",
                "connect_failed: connection refused",
                "connect_timeout",
            ]
        );
    }

    #[test]
    fn serde_uses_the_text_and_refuses_unknown_values() {
        assert_eq!(
            serde_json::to_string(&Flag::OutcomeUnknown).unwrap(),
            "\"outcome_unknown\""
        );
        assert_eq!(
            serde_json::from_str::<CloseReason>("\"connect_failed: timed out\"").unwrap(),
            CloseReason::ConnectFailed("timed out".into())
        );
        assert!(serde_json::from_str::<Decision>("\"hold\"").is_err());
        assert_eq!(
            "nope".parse::<Flag>(),
            Err(UnknownTerm {
                column: "flags",
                value: "nope".into()
            })
        );
        assert!("closed".parse::<CloseReason>().is_err());
    }
}
