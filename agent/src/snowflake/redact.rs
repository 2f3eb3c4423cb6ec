//! Redaction of SQL text for the audit (DECISIONS 14).
//!
//! A small lexer finds Snowflake's string literals — `'...'` with `''` and backslash escapes,
//! `$$...$$` — and the text that is never a literal: quoted identifiers (`"..."` with `""`),
//! `--` and `//` line comments (`//` right after `:` is a URL such as `file://`, not a comment)
//! and `/* */` block comments. [`RedactMode::Credentials`] replaces with `'***'` each literal in a
//! credential position: after an option or name that looks secret (contains PASSWORD, SECRET,
//! TOKEN, PASSCODE, PASSPHRASE or CREDENTIAL; or KEY as a word, except public keys such as
//! `RSA_PUBLIC_KEY` and key ids such as `AWS_KEY_ID`), followed by `=` or `=>` or directly by the
//! literal, and every literal inside a parenthesised value of such an option (`CREDENTIALS =
//! (...)`). [`RedactMode::AllLiterals`] replaces every literal. Everything else is kept byte for
//! byte. An unterminated literal runs to the end of the text and is replaced whole.

use std::borrow::Cow;

/// Which literals to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedactMode {
    /// Only literals in credential positions (always applied to the audit's `sql_text`).
    Credentials,
    /// Every string literal (`redact_literals = true`).
    AllLiterals,
}

/// What replaces a redacted literal.
pub const REDACTED: &str = "'***'";

/// Token kinds of the lexer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Whitespace.
    Space,
    /// `-- ...` or `// ...` up to (not including) the newline.
    LineComment,
    /// `/* ... */`.
    BlockComment,
    /// `'...'`.
    Str,
    /// `$$...$$`.
    DollarStr,
    /// `"..."`.
    QuotedIdent,
    /// An identifier or keyword (also `$name` variables).
    Word,
    /// A number.
    Number,
    /// Any other single character (or the run of slashes after `scheme:`).
    Punct,
}

#[cfg(test)]
impl Kind {
    /// A string literal.
    pub(crate) fn is_literal(self) -> bool {
        matches!(self, Kind::Str | Kind::DollarStr)
    }
}

/// A token: its kind and its byte range in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: Kind,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// The lexer, as an iterator over tokens that cover the text without gaps.
pub(crate) struct Lexer<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(sql: &'a str) -> Self {
        Lexer {
            b: sql.as_bytes(),
            i: 0,
        }
    }

    fn at(&self, j: usize) -> Option<u8> {
        self.b.get(j).copied()
    }

    fn find_from(&self, from: usize, pat: &[u8]) -> Option<usize> {
        self.b
            .get(from..)?
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|p| from + p)
    }
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_word_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let start = self.i;
        let c = self.at(start)?;
        let n = self.b.len();
        let next = self.at(start + 1);
        let (kind, end) = if c.is_ascii_whitespace() {
            let mut j = start;
            while self.at(j).is_some_and(|c| c.is_ascii_whitespace()) {
                j += 1;
            }
            (Kind::Space, j)
        } else if c == b'/' && start > 0 && self.b[start - 1] == b':' {
            // `file:///tmp/x`, `s3://bucket`: the slashes of a URL, not a `//` comment.
            let mut j = start;
            while self.at(j) == Some(b'/') {
                j += 1;
            }
            (Kind::Punct, j)
        } else if (c == b'-' && next == Some(b'-')) || (c == b'/' && next == Some(b'/')) {
            let end = self.find_from(start, b"\n").unwrap_or(n);
            (Kind::LineComment, end)
        } else if c == b'/' && next == Some(b'*') {
            let end = self.find_from(start + 2, b"*/").map_or(n, |p| p + 2);
            (Kind::BlockComment, end)
        } else if c == b'\'' {
            let mut j = start + 1;
            let end = loop {
                match self.at(j) {
                    None => break n,
                    Some(b'\\') => j += 2,
                    Some(b'\'') if self.at(j + 1) == Some(b'\'') => j += 2,
                    Some(b'\'') => break j + 1,
                    Some(_) => j += 1,
                }
            };
            (Kind::Str, end.min(n))
        } else if c == b'$' && next == Some(b'$') {
            let end = self.find_from(start + 2, b"$$").map_or(n, |p| p + 2);
            (Kind::DollarStr, end)
        } else if c == b'"' {
            let mut j = start + 1;
            let end = loop {
                match self.at(j) {
                    None => break n,
                    Some(b'"') if self.at(j + 1) == Some(b'"') => j += 2,
                    Some(b'"') => break j + 1,
                    Some(_) => j += 1,
                }
            };
            (Kind::QuotedIdent, end)
        } else if is_word_start(c) || (c == b'$' && next.is_some_and(is_word_char)) {
            let mut j = start + 1;
            while self.at(j).is_some_and(is_word_char) {
                j += 1;
            }
            (Kind::Word, j)
        } else if c.is_ascii_digit() {
            let mut j = start + 1;
            while self
                .at(j)
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_')
            {
                j += 1;
            }
            (Kind::Number, j)
        } else {
            (Kind::Punct, start + 1)
        };
        self.i = end;
        Some(Token { kind, start, end })
    }
}

/// True when a name (option, parameter, column) marks its value as a credential.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let u = name
        .trim_matches('"')
        .trim_start_matches('$')
        .to_ascii_uppercase();
    if u.contains("PUBLIC_KEY") || u.ends_with("KEY_ID") {
        return false;
    }
    [
        "PASSWORD",
        "SECRET",
        "TOKEN",
        "PASSCODE",
        "PASSPHRASE",
        "CREDENTIAL",
    ]
    .iter()
    .any(|w| u.contains(w))
        || u.ends_with("KEY")
        || u.split('_').any(|part| part == "KEY" || part == "KEYS")
}

/// Where the redactor stands relative to a credential position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing pending.
    Idle,
    /// Just after a name; `true` when the name is secret.
    AfterName(bool),
    /// Just after `name =` or `name =>`.
    AfterEq(bool),
}

/// Replaces the literals `mode` selects with `'***'`; borrows the input when nothing changes.
pub fn redact_sql(sql: &str, mode: RedactMode) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut state = State::Idle;
    let mut depth = 0usize;
    let mut secret_block: Option<usize> = None;
    let mut prev_punct: Option<u8> = None;
    for tok in Lexer::new(sql) {
        let text = &sql[tok.start..tok.end];
        let mut punct = None;
        match tok.kind {
            Kind::Space | Kind::LineComment | Kind::BlockComment => continue,
            Kind::Word | Kind::QuotedIdent => state = State::AfterName(is_secret_name(text)),
            Kind::Str | Kind::DollarStr => {
                let secret = matches!(state, State::AfterName(true) | State::AfterEq(true));
                if mode == RedactMode::AllLiterals || secret || secret_block.is_some() {
                    let buf = out.get_or_insert_with(|| String::with_capacity(sql.len()));
                    buf.push_str(&sql[copied..tok.start]);
                    buf.push_str(REDACTED);
                    copied = tok.end;
                }
                // `NAME = 'a' 'b'`: a literal right after a secret one stays secret.
                state = if secret {
                    State::AfterEq(true)
                } else {
                    State::Idle
                };
            }
            Kind::Punct => {
                let c = text.as_bytes()[0];
                punct = Some(c);
                state = match (c, state) {
                    (b'=', State::AfterName(s)) => State::AfterEq(s),
                    (b'>', State::AfterEq(s)) if prev_punct == Some(b'=') => State::AfterEq(s),
                    (b'(', s) => {
                        depth += 1;
                        if matches!(s, State::AfterName(true) | State::AfterEq(true))
                            && secret_block.is_none()
                        {
                            secret_block = Some(depth);
                        }
                        State::Idle
                    }
                    (b')', _) => {
                        if secret_block == Some(depth) {
                            secret_block = None;
                        }
                        depth = depth.saturating_sub(1);
                        State::Idle
                    }
                    _ => State::Idle,
                };
            }
            Kind::Number => state = State::Idle,
        }
        prev_punct = punct;
    }
    match out {
        None => Cow::Borrowed(sql),
        Some(mut buf) => {
            buf.push_str(&sql[copied..]);
            Cow::Owned(buf)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cred(sql: &str) -> String {
        redact_sql(sql, RedactMode::Credentials).into_owned()
    }

    #[test]
    fn corpus() {
        let cases: &[(&str, &str)] = &[
            (
                "CREATE USER alice PASSWORD='Sup3r$ecret' DEFAULT_ROLE=analyst COMMENT='password rotates monthly'",
                "CREATE USER alice PASSWORD='***' DEFAULT_ROLE=analyst COMMENT='password rotates monthly'",
            ),
            (
                "alter user bob set password = 'it''s \\' hidden' must_change_password = true",
                "alter user bob set password = '***' must_change_password = true",
            ),
            (
                "CREATE STAGE s URL='s3://bucket/path/' CREDENTIALS=(AWS_KEY_ID='AKIAEXAMPLE' AWS_SECRET_KEY='wJalrXUtnFEMI' AWS_TOKEN='FwoGZX')",
                "CREATE STAGE s URL='s3://bucket/path/' CREDENTIALS=(AWS_KEY_ID='***' AWS_SECRET_KEY='***' AWS_TOKEN='***')",
            ),
            (
                "ALTER USER svc SET RSA_PUBLIC_KEY='MIIBIjANBgkqh' RSA_PUBLIC_KEY_2='MIIBIjANBgkq2'",
                "ALTER USER svc SET RSA_PUBLIC_KEY='MIIBIjANBgkqh' RSA_PUBLIC_KEY_2='MIIBIjANBgkq2'",
            ),
            (
                "COPY INTO 'azure://acct.blob.core.windows.net/c/' FROM t CREDENTIALS=(AZURE_SAS_TOKEN='?sv=2020&sig=abc') ENCRYPTION=(TYPE='AZURE_CSE' MASTER_KEY='kPxX0jzYfIamtnJEUTHwq80Au6NbSgPH5r4BDDwOaO8=')",
                "COPY INTO 'azure://acct.blob.core.windows.net/c/' FROM t CREDENTIALS=(AZURE_SAS_TOKEN='***') ENCRYPTION=(TYPE='AZURE_CSE' MASTER_KEY='***')",
            ),
            (
                "COPY INTO @s FROM t ENCRYPTION=(TYPE='AWS_SSE_KMS' KMS_KEY_ID='aws/key')",
                "COPY INTO @s FROM t ENCRYPTION=(TYPE='AWS_SSE_KMS' KMS_KEY_ID='aws/key')",
            ),
            (
                "CREATE SECRET s TYPE = GENERIC_STRING SECRET_STRING = $$multi\nline$$",
                "CREATE SECRET s TYPE = GENERIC_STRING SECRET_STRING = '***'",
            ),
            (
                "CREATE SECRET o TYPE=OAUTH2 OAUTH_REFRESH_TOKEN='rt-123' OAUTH_CLIENT_SECRET=\"q\" API_KEY='k-1'",
                "CREATE SECRET o TYPE=OAUTH2 OAUTH_REFRESH_TOKEN='***' OAUTH_CLIENT_SECRET=\"q\" API_KEY='***'",
            ),
            (
                "CREATE SECURITY INTEGRATION i TYPE=EXTERNAL_OAUTH OAUTH_CLIENT_SECRET='cs' PRIVATE_KEY='-----BEGIN'",
                "CREATE SECURITY INTEGRATION i TYPE=EXTERNAL_OAUTH OAUTH_CLIENT_SECRET='***' PRIVATE_KEY='***'",
            ),
            (
                "insert into notes values ('reset your password', 'the token is lost') -- password='x' stays in a comment",
                "insert into notes values ('reset your password', 'the token is lost') -- password='x' stays in a comment",
            ),
            (
                "select * from users where name = 'password' and \"PASSWORD\" = 'p1'",
                "select * from users where name = 'password' and \"PASSWORD\" = '***'",
            ),
            (
                "call set_creds(password => 'pw')",
                "call set_creds(password => '***')",
            ),
            (
                "put file:///tmp/a.csv @s; alter user u set password='x2'",
                "put file:///tmp/a.csv @s; alter user u set password='***'",
            ),
            (
                "select 'a' // password = 'not code'",
                "select 'a' // password = 'not code'",
            ),
            (
                "create user u password='unterminated",
                "create user u password='***'",
            ),
            ("select $$x$$, 1", "select $$x$$, 1"),
        ];
        for (input, want) in cases {
            assert_eq!(&cred(input), want, "input: {input}");
        }
    }

    #[test]
    fn all_literals_mode() {
        assert_eq!(
            redact_sql(
                "select 'a', $$b$$, \"c\" from t where x = 'it''s' -- 'd'",
                RedactMode::AllLiterals
            ),
            "select '***', '***', \"c\" from t where x = '***' -- 'd'"
        );
        assert!(matches!(
            redact_sql("select 1", RedactMode::AllLiterals),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn names() {
        for secret in [
            "PASSWORD",
            "password",
            "AWS_SECRET_KEY",
            "AWS_TOKEN",
            "AZURE_SAS_TOKEN",
            "MASTER_KEY",
            "PRIVATE_KEY",
            "SECRET_STRING",
            "OAUTH_REFRESH_TOKEN",
            "OAUTH_CLIENT_SECRET",
            "API_KEY",
            "APIKEY",
            "CREDENTIALS",
            "PRIVATE_KEY_PASSPHRASE",
        ] {
            assert!(is_secret_name(secret), "{secret}");
        }
        for public in [
            "RSA_PUBLIC_KEY",
            "RSA_PUBLIC_KEY_2",
            "AWS_KEY_ID",
            "KMS_KEY_ID",
            "COMMENT",
            "KEYWORD",
            "URL",
            "TYPE",
        ] {
            assert!(!is_secret_name(public), "{public}");
        }
    }

    /// A piece of generated SQL: text that is never a literal, or a literal.
    #[derive(Debug, Clone)]
    enum Piece {
        Plain(String),
        Literal(String),
    }

    fn plain() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z_][A-Za-z0-9_$]{0,8}",
            "[ \n\t=(),.;@:+*<>0-9-]{1,4}".prop_filter("no comment openers", |s| !s.contains("--")
                && !s.ends_with('-')
                && !s.starts_with('-')),
            "[^\n]{0,12}".prop_map(|c| format!("-- {c}\n")),
            "[^*]{0,12}".prop_map(|c| format!("/* {c} */")),
            "[a-z' ]{0,8}".prop_map(|c| format!("\"{}\"", c.replace('"', "\"\""))),
        ]
    }

    fn literal() -> impl Strategy<Value = String> {
        prop_oneof![
            ("[a-zA-Z0-9 '\\\\$\"/*\n-]{0,16}", any::<bool>()).prop_map(|(c, doubled)| {
                let mut s = String::from("'");
                for ch in c.chars() {
                    match ch {
                        '\'' if doubled => s.push_str("''"),
                        '\'' => s.push_str("\\'"),
                        '\\' => s.push_str("\\\\"),
                        other => s.push(other),
                    }
                }
                s.push('\'');
                s
            }),
            "[a-zA-Z0-9 '\"/*\n-]{0,16}".prop_map(|c| format!("$${c}$$")),
        ]
    }

    fn pieces() -> impl Strategy<Value = Vec<Piece>> {
        prop::collection::vec(
            prop_oneof![
                plain().prop_map(Piece::Plain),
                literal().prop_map(Piece::Literal)
            ],
            0..24,
        )
    }

    /// Joins pieces with a space, so two generated tokens never fuse.
    fn join(pieces: &[Piece], literal: impl Fn(&str) -> String) -> String {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Plain(s) => s.clone(),
                Piece::Literal(s) => literal(s),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Redacting every literal changes exactly the literals: the text between them is kept.
        #[test]
        fn only_literals_change(pieces in pieces()) {
            let sql = join(&pieces, str::to_owned);
            let want = join(&pieces, |_| REDACTED.to_owned());
            let all = redact_sql(&sql, RedactMode::AllLiterals);
            prop_assert_eq!(all.as_ref(), want.as_str());
            // Credential mode only ever replaces literals: outside them, the text is the same.
            let cred = redact_sql(&sql, RedactMode::Credentials);
            let strip = |s: &str| -> String {
                Lexer::new(s).filter(|t| !t.kind.is_literal()).map(|t| &s[t.start..t.end]).collect()
            };
            prop_assert_eq!(strip(&cred), strip(&sql));
        }

        /// A literal in a credential position never survives, whatever surrounds it.
        #[test]
        fn secrets_never_survive(
            before in pieces(),
            after in pieces(),
            name in prop::sample::select(vec![
                "PASSWORD", "password", "AWS_SECRET_KEY", "AWS_TOKEN", "AZURE_SAS_TOKEN", "MASTER_KEY",
                "PRIVATE_KEY", "SECRET_STRING", "OAUTH_REFRESH_TOKEN", "OAUTH_CLIENT_SECRET", "API_KEY",
            ]),
            sep in prop::sample::select(vec!["=", " = ", "=>", " => ", " "]),
            body in "[a-zA-Z0-9 '\\\\\"/*\n-]{0,16}",
            dollar in any::<bool>(),
            in_credentials in any::<bool>(),
        ) {
            let secret = format!("Zq{body}Xk9");
            let lit = if dollar && !secret.contains('$') {
                format!("$${secret}$$")
            } else {
                format!("'{}'", secret.replace('\\', "\\\\").replace('\'', "''"))
            };
            let assignment = if in_credentials {
                format!("CREDENTIALS = (AWS_KEY_ID='AKIA' {name}{sep}{lit})")
            } else {
                format!("{name}{sep}{lit}")
            };
            let sql = format!("{} ; {assignment} ; {}", join(&before, str::to_owned), join(&after, str::to_owned));
            let out = redact_sql(&sql, RedactMode::Credentials);
            prop_assert!(!out.contains(&secret), "{} -> {}", sql, out);
            if in_credentials {
                prop_assert!(!out.contains("'AKIA'"));
            }
        }
    }
}
