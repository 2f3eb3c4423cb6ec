//! Splitting a multi-statement request (`MULTI_STATEMENT_COUNT`) into its statements, so each gets
//! its own audit event (docs/decisions.md §10). Semicolons inside strings, quoted identifiers, `$$` bodies
//! and comments do not split. Snowflake Scripting blocks (`BEGIN ... END;` with statements inside)
//! are split at their inner semicolons too; the caller falls back to the whole text when the count
//! does not match what Snowflake ran.

use super::sql_lex::{Kind, Lexer};

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

/// The query id a `RESULT_SCAN('<id>')` in `sql` reads, if any: connector 4.x fetches an
/// asynchronous statement's result so (docs/protocol.md, "Async status").
pub fn result_scan_of(sql: &str) -> Option<&str> {
    const CALL: &str = "result_scan";
    let lower = sql.to_ascii_lowercase();
    let at = lower.find(CALL)? + CALL.len();
    let rest = sql[at..].trim_start().strip_prefix('(')?.trim_start();
    let rest = rest.strip_prefix('\'')?;
    let id = &rest[..rest.find('\'')?];
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(id)
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
    fn result_scan_names_its_query_id() {
        assert_eq!(
            result_scan_of("select * from table(result_scan('01a2-08b3'))"),
            Some("01a2-08b3")
        );
        assert_eq!(
            result_scan_of("SELECT * FROM TABLE(RESULT_SCAN ( '01ab' ))"),
            Some("01ab")
        );
        assert_eq!(
            result_scan_of("select * from table(result_scan(last_query_id()))"),
            None
        );
        assert_eq!(result_scan_of("select 'result_scan' as x"), None);
        assert_eq!(result_scan_of("select 1"), None);
    }

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
