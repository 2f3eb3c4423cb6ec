//! Redaction of SQL text for the audit (docs/decisions.md §14).
//!
//! The lexer of `sql_lex` finds Snowflake's string literals and the text that is never a literal
//! (quoted identifiers, comments). [`RedactMode::Credentials`] replaces with `'***'` each literal
//! in a credential position: after an option or name the secrets table calls secret
//! (`secrets::is_secret_name`: PASSWORD, SECRET, TOKEN, PASSCODE, PASSPHRASE, CREDENTIAL, KEY as a
//! word, ...; not public keys such as `RSA_PUBLIC_KEY` nor key ids such as `AWS_KEY_ID`), followed
//! by `=` or `=>` or directly by the literal, and every literal inside a parenthesised value of
//! such an option (`CREDENTIALS = (...)`). [`RedactMode::AllLiterals`] (the configuration's
//! `redact_literals = true`) replaces every literal. Everything else is kept byte for byte. An
//! unterminated literal runs to the end of the text and is replaced whole.

use std::borrow::Cow;

use super::secrets::is_secret_name;
use super::sql_lex::{Kind, Lexer};

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
