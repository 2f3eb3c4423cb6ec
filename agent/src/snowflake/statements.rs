//! Splitting a multi-statement request (`MULTI_STATEMENT_COUNT`) into its statements, so each gets
//! its own audit event (DECISIONS 10). Semicolons inside strings, quoted identifiers, `$$` bodies
//! and comments do not split. Snowflake Scripting blocks (`BEGIN ... END;` with statements inside)
//! are split at their inner semicolons too; the caller falls back to the whole text when the count
//! does not match what Snowflake ran.

use super::redact::{Kind, Lexer};

/// The statements of `sql`, trimmed, empty ones dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for tok in Lexer::new(sql) {
        if tok.kind == Kind::Punct && &sql[tok.start..tok.end] == ";" {
            push(&mut out, &sql[start..tok.start]);
            start = tok.end;
        }
    }
    push(&mut out, &sql[start..]);
    out
}

fn push<'a>(out: &mut Vec<&'a str>, piece: &'a str) {
    let p = piece.trim();
    // A piece holding only comments is not a statement.
    let has_code = Lexer::new(p)
        .any(|t| !matches!(t.kind, Kind::Space | Kind::LineComment | Kind::BlockComment));
    if has_code {
        out.push(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_semicolons_only() {
        assert_eq!(
            split_statements("select 1; select 2;"),
            vec!["select 1", "select 2"]
        );
        assert_eq!(
            split_statements(
                "insert into t values ('a;b'); select \"x;y\" from t -- c;d\n; /* e;f */"
            ),
            vec![
                "insert into t values ('a;b')",
                "select \"x;y\" from t -- c;d"
            ]
        );
        assert_eq!(
            split_statements("create function f() returns int as $$ 1; 2 $$; call f()"),
            vec!["create function f() returns int as $$ 1; 2 $$", "call f()"]
        );
        assert_eq!(split_statements("  "), Vec::<&str>::new());
    }
}
