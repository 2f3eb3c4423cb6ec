//! Errors of the JSON parsers and of the functions that rewrite a body.
//!
//! No variant carries a piece of the input: serde's messages can quote a value ("invalid type:
//! string \"hunter2\""), so only the kind of failure, its position and, for a duplicate or a
//! missing key, the key's name are kept.

/// Which of serde_json's failure classes a body fell into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonErrorKind {
    /// Not JSON at all (a stray byte, bad escape, invalid UTF-8, nesting past 128 levels).
    Syntax,
    /// Valid JSON of the wrong shape (a string where a number belongs, a duplicate key).
    Shape,
    /// The body ended in the middle of a value.
    Truncated,
}

impl std::fmt::Display for JsonErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JsonErrorKind::Syntax => "syntax",
            JsonErrorKind::Shape => "shape",
            JsonErrorKind::Truncated => "truncated",
        })
    }
}

/// Why a body could not be read as the message its endpoint carries; the peer (driver or
/// upstream) is at fault, and the proxy decides what to do (refuse, or pass on flagged `unparsed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The body is not JSON of the expected shape; `detail` names a duplicate or missing key when
    /// serde reported one, and is otherwise generic.
    #[error("{what}: {kind} error at line {line}, column {column}: {detail}")]
    Json {
        /// The message being parsed, e.g. "query request".
        what: &'static str,
        /// The failure class.
        kind: JsonErrorKind,
        /// 1-based line of the failure.
        line: usize,
        /// 1-based column of the failure.
        column: usize,
        /// A description that never quotes the input.
        detail: String,
    },
    /// A field the message cannot do without is absent or null.
    #[error("{what}: required field `{field}` is missing")]
    MissingField {
        /// The message being parsed.
        what: &'static str,
        /// The JSON key.
        field: &'static str,
    },
    /// A field is present with the right JSON type but a value the protocol does not allow.
    #[error("{what}: field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The message being parsed.
        what: &'static str,
        /// The JSON key.
        field: &'static str,
        /// What was expected, never the value itself.
        reason: &'static str,
    },
}

/// Why a body could not be rewritten (QUERY_TAG merge, token replacement).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RewriteError {
    /// The body did not parse; nothing was rewritten.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A field that must hold an object holds something else.
    #[error("{what}: field `{field}` is not a JSON object")]
    NotAnObject {
        /// The message being rewritten.
        what: &'static str,
        /// The JSON key.
        field: &'static str,
    },
    /// The field to rewrite is not in the body (e.g. a login response without a token).
    #[error("{what}: field `{field}` to rewrite is absent")]
    Absent {
        /// The message being rewritten.
        what: &'static str,
        /// The JSON key.
        field: &'static str,
    },
    /// The agent's own part of a QUERY_TAG does not fit in Snowflake's limit even with the
    /// workload's part dropped: a configuration fault of the agent, not of the workload.
    #[error(
        "the agent's QUERY_TAG part is {agent_chars} characters, over the {limit}-character limit"
    )]
    TagTooLong {
        /// Snowflake's limit in characters.
        limit: usize,
        /// Characters the agent's part alone needs.
        agent_chars: usize,
    },
    /// Serialising the rewritten body failed (an internal fault; not expected to happen).
    #[error("{what}: re-serialising the body failed")]
    Serialize {
        /// The message being rewritten.
        what: &'static str,
    },
}
