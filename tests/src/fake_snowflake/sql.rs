//! Just enough SQL reading for the script: markers in comments, statement splitting, and a
//! classification of the statement shapes the fake answers.
//!
//! This is no SQL parser. It reads the first keywords of a statement, splits lists at top-level
//! commas, and honours quotes and parentheses; anything it does not recognise is answered as an
//! "executed successfully" statement.

/// Script markers found in `/* ... */` comments anywhere in the SQL text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Markers {
    /// `/*error*/`: answer the 002003 error envelope.
    pub error: bool,
    /// `/*expire_token*/`: answer 390112 once for the request, then run normally after renewal.
    pub expire_token: bool,
    /// `/*slow:N*/`: answer 333333 and let the driver poll the result URL N times.
    pub slow: Option<u32>,
    /// `/*rows:N*/`: the result has N generated rows.
    pub rows: Option<usize>,
    /// `/*arrow*/`: answer with an Arrow `rowsetBase64` instead of a JSON rowset.
    pub arrow: bool,
    /// `/*sf_chunks*/`: split the result into an inline part and three downloadable chunks.
    pub chunks: bool,
    /// `/*fail:N*/`: answer HTTP 503 to the first N attempts of the request (by `requestId`), then
    /// run it: what a driver retries with the same request id.
    pub fail: Option<u32>,
}

/// Reads the markers of `sql`.
pub fn markers(sql: &str) -> Markers {
    let mut m = Markers::default();
    let mut rest = sql;
    while let Some(start) = rest.find("/*") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("*/") else { break };
        let body = after[..end].trim().to_ascii_lowercase();
        match body.split_once(':') {
            Some(("slow", n)) => m.slow = n.trim().parse().ok(),
            Some(("rows", n)) => m.rows = n.trim().parse().ok(),
            Some(("fail", n)) => m.fail = n.trim().parse().ok(),
            _ => match body.as_str() {
                "error" => m.error = true,
                "expire_token" => m.expire_token = true,
                "arrow" => m.arrow = true,
                "sf_chunks" => m.chunks = true,
                _ => {}
            },
        }
        rest = &after[end + 2..];
    }
    m
}

/// `sql` without comments, trimmed, without a trailing semicolon.
pub fn strip_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                out.push(c);
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for d in chars.by_ref() {
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
                out.push(' ');
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out.trim().trim_end_matches(';').trim().to_owned()
}

/// Splits a request's SQL text into statements at top-level semicolons (comments kept).
pub fn split_statements(sql: &str) -> Vec<String> {
    split_top_level(sql, ';')
        .into_iter()
        .filter(|s| !strip_comments(s).is_empty())
        .collect()
}

/// Splits at `sep` outside quotes and parentheses; parts are trimmed.
pub fn split_top_level(text: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        if let Some(q) = quote {
            cur.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                cur.push(c);
            }
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            c if c == sep && depth == 0 => {
                parts.push(cur.trim().to_owned());
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        parts.push(cur.trim().to_owned());
    }
    parts
}

/// How many `?` placeholders the statement has (outside quotes).
pub fn count_placeholders(sql: &str) -> usize {
    let mut n = 0;
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '?' => n += 1,
            None => {}
        }
    }
    n
}

/// The shape of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// `SELECT items [FROM table] [LIMIT n]`.
    Select {
        /// The select list as written.
        items: Vec<String>,
        /// The table read, upper-cased, if any.
        from: Option<String>,
        /// `LIMIT n`.
        limit: Option<usize>,
    },
    /// `select * from table(result_scan('<qid>'))`.
    ResultScan(String),
    /// `CREATE [OR REPLACE] TABLE name (columns)`.
    CreateTable {
        /// Upper-cased name.
        name: String,
        /// `(name, type)` pairs as written.
        columns: Vec<(String, String)>,
        /// `IF NOT EXISTS` was given.
        if_not_exists: bool,
    },
    /// `CREATE <kind> name` other than a table.
    Create {
        /// `DATABASE`, `SCHEMA`, `STAGE`, ...
        kind: String,
        /// Upper-cased name.
        name: String,
    },
    /// `DROP <kind> [IF EXISTS] name`.
    Drop {
        /// `TABLE`, `STAGE`, ...
        kind: String,
        /// Upper-cased name.
        name: String,
        /// `IF EXISTS` was given.
        if_exists: bool,
    },
    /// `INSERT INTO name [(cols)] VALUES (...), ...` (or `SELECT`).
    Insert {
        /// Upper-cased table name.
        table: String,
        /// The VALUES tuples, each split into its items (empty for INSERT ... SELECT).
        tuples: Vec<Vec<String>>,
    },
    /// `UPDATE name ...`.
    Update(String),
    /// `DELETE FROM name ...`.
    Delete(String),
    /// `PUT file://path @stage[/prefix] [options]`.
    Put {
        /// The local path after `file://`.
        file: String,
        /// The stage, without `@`, upper-cased.
        stage: String,
        /// `AUTO_COMPRESS` (default true).
        auto_compress: bool,
        /// `OVERWRITE` (default false).
        overwrite: bool,
    },
    /// `GET @stage[/path] file://dir`.
    Get {
        /// The stage, without `@`, upper-cased.
        stage: String,
        /// The local directory after `file://`.
        local: String,
    },
    /// `LIST @stage` / `LS @stage`.
    List(String),
    /// Anything else (`USE`, `ALTER SESSION`, `BEGIN`, ...).
    Other(String),
}

/// Classifies a statement (comments already stripped or not).
pub fn classify(sql: &str) -> Statement {
    let text = strip_comments(sql);
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = text.split_whitespace().collect();
    let lwords: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let first = lwords.first().map(String::as_str).unwrap_or("");
    match first {
        "select" | "with" => classify_select(&text, &lower),
        "create" => classify_create(&text, &lwords, &words),
        "drop" => {
            let mut i = 1;
            let kind = words
                .get(i)
                .map(|w| w.to_ascii_uppercase())
                .unwrap_or_default();
            i += 1;
            let if_exists = lwords.get(i).map(String::as_str) == Some("if")
                && lwords.get(i + 1).map(String::as_str) == Some("exists");
            if if_exists {
                i += 2;
            }
            Statement::Drop {
                kind,
                name: words.get(i).map(|w| object_name(w)).unwrap_or_default(),
                if_exists,
            }
        }
        "insert" => {
            let into = lwords.iter().position(|w| w == "into").unwrap_or(1);
            let raw = words.get(into + 1).copied().unwrap_or("");
            let table = object_name(raw.split('(').next().unwrap_or(raw));
            let tuples = match find_keyword(&lower, "values") {
                Some(pos) => split_top_level(&text[pos + "values".len()..], ',')
                    .into_iter()
                    .filter_map(|t| {
                        let t = t.trim();
                        t.strip_prefix('(')
                            .and_then(|t| t.strip_suffix(')'))
                            .map(|inner| split_top_level(inner, ','))
                    })
                    .collect(),
                None => Vec::new(),
            };
            Statement::Insert { table, tuples }
        }
        "update" => Statement::Update(words.get(1).map(|w| object_name(w)).unwrap_or_default()),
        "delete" => {
            let from = lwords.iter().position(|w| w == "from").unwrap_or(1);
            Statement::Delete(
                words
                    .get(from + 1)
                    .map(|w| object_name(w))
                    .unwrap_or_default(),
            )
        }
        "put" => {
            let file = words
                .get(1)
                .map(|w| {
                    w.trim_matches('\'')
                        .trim_start_matches("file://")
                        .to_owned()
                })
                .unwrap_or_default();
            let stage = words.get(2).map(|w| stage_name(w)).unwrap_or_default();
            let opt = |name: &str, default: bool| {
                lwords
                    .iter()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")).map(|v| v == "true"))
                    .unwrap_or(default)
            };
            Statement::Put {
                file,
                stage,
                auto_compress: opt("auto_compress", true),
                overwrite: opt("overwrite", false),
            }
        }
        "get" => Statement::Get {
            stage: words.get(1).map(|w| stage_name(w)).unwrap_or_default(),
            local: words
                .get(2)
                .map(|w| {
                    w.trim_matches('\'')
                        .trim_start_matches("file://")
                        .to_owned()
                })
                .unwrap_or_default(),
        },
        "list" | "ls" => Statement::List(words.get(1).map(|w| stage_name(w)).unwrap_or_default()),
        _ => Statement::Other(text),
    }
}

fn classify_select(text: &str, lower: &str) -> Statement {
    if let Some(pos) = lower.find("result_scan(") {
        let rest = &text[pos + "result_scan(".len()..];
        let qid: String = rest
            .trim_start_matches(['\'', ' '])
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || *c == '-')
            .collect();
        return Statement::ResultScan(qid);
    }
    let start = find_keyword(lower, "select").map_or(0, |p| p + "select".len());
    let from_pos = find_keyword(lower, "from");
    let end = from_pos
        .or_else(|| find_keyword(lower, "limit"))
        .unwrap_or(text.len());
    let items = split_top_level(text.get(start..end).unwrap_or(""), ',');
    let from = from_pos.and_then(|p| {
        text[p + "from".len()..]
            .split_whitespace()
            .next()
            .map(|w| object_name(w.trim_end_matches(';')))
    });
    let limit = find_keyword(lower, "limit").and_then(|p| {
        text[p + "limit".len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
    });
    Statement::Select { items, from, limit }
}

fn classify_create(text: &str, lwords: &[String], words: &[&str]) -> Statement {
    let mut i = 1;
    if lwords.get(i).map(String::as_str) == Some("or")
        && lwords.get(i + 1).map(String::as_str) == Some("replace")
    {
        i += 2;
    }
    while matches!(
        lwords.get(i).map(String::as_str),
        Some("transient" | "temporary" | "temp" | "local" | "global" | "volatile")
    ) {
        i += 1;
    }
    let kind = words
        .get(i)
        .map(|w| w.to_ascii_uppercase())
        .unwrap_or_default();
    i += 1;
    let if_not_exists = lwords.get(i).map(String::as_str) == Some("if")
        && lwords.get(i + 1).map(String::as_str) == Some("not")
        && lwords.get(i + 2).map(String::as_str) == Some("exists");
    if if_not_exists {
        i += 3;
    }
    let raw = words.get(i).copied().unwrap_or("");
    let name = object_name(raw.split('(').next().unwrap_or(raw));
    if kind != "TABLE" {
        return Statement::Create { kind, name };
    }
    let columns = match (text.find('('), text.rfind(')')) {
        (Some(a), Some(b)) if a < b => split_top_level(&text[a + 1..b], ',')
            .into_iter()
            .filter_map(|def| {
                let mut it = def.split_whitespace();
                let col = it.next()?.trim_matches('"').to_owned();
                let ty = it.collect::<Vec<_>>().join(" ");
                Some((col, ty))
            })
            .collect(),
        _ => Vec::new(),
    };
    Statement::CreateTable {
        name,
        columns,
        if_not_exists,
    }
}

/// Position of `word` as a whole keyword in `lower`, outside quotes and parentheses.
fn find_keyword(lower: &str, word: &str) -> Option<usize> {
    let bytes = lower.as_bytes();
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
        } else if c == b'\'' || c == b'"' {
            quote = Some(c);
        } else if c == b'(' {
            depth += 1;
        } else if c == b')' {
            depth = depth.saturating_sub(1);
        } else if depth == 0 && lower[i..].starts_with(word) {
            let before = i == 0 || !is_ident(bytes[i - 1]);
            let after = bytes.get(i + word.len()).is_none_or(|b| !is_ident(*b));
            if before && after {
                return Some(i);
            }
        }
        i += 1;
    }
    None
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

/// The last part of a possibly qualified name, unquoted and upper-cased.
pub fn object_name(raw: &str) -> String {
    raw.trim_end_matches([';', ',', ')'])
        .rsplit('.')
        .next()
        .unwrap_or(raw)
        .trim_matches('"')
        .to_ascii_uppercase()
}

/// A stage reference without `@`, upper-cased, with any path kept (`STG1/dir`).
fn stage_name(raw: &str) -> String {
    let s = raw.trim_matches('\'').trim_start_matches('@');
    let (stage, path) = s.split_once('/').unwrap_or((s, ""));
    let stage = object_name(stage);
    if path.is_empty() {
        stage
    } else {
        format!("{stage}/{path}")
    }
}

/// Unquotes a SQL literal: `'it''s'` → `it's`, `NULL` → `None`, numbers as written.
pub fn literal(item: &str) -> Option<String> {
    let t = item.trim();
    if t.eq_ignore_ascii_case("null") {
        return None;
    }
    if let Some(inner) = t.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return Some(inner.replace("''", "'"));
    }
    Some(t.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_read_anywhere() {
        let m = markers("/*slow:3*/ select /*rows:10*/ 1 /*arrow*/ /*sf_chunks*/");
        assert_eq!(m.slow, Some(3));
        assert_eq!(m.rows, Some(10));
        assert!(m.arrow && m.chunks && !m.error);
    }

    #[test]
    fn statements_split_outside_quotes() {
        let s = split_statements("select 1; select 'a;b'; ");
        assert_eq!(s, vec!["select 1", "select 'a;b'"]);
    }

    #[test]
    fn shapes() {
        assert_eq!(
            classify("/*x*/ select id, name from db.s.customers limit 2"),
            Statement::Select {
                items: vec!["id".into(), "name".into()],
                from: Some("CUSTOMERS".into()),
                limit: Some(2)
            }
        );
        assert_eq!(
            classify("select * from table(result_scan('0a-1b'))"),
            Statement::ResultScan("0a-1b".into())
        );
        match classify("create or replace table t1 (id int, amount number(10,2))") {
            Statement::CreateTable { name, columns, .. } => {
                assert_eq!(name, "T1");
                assert_eq!(columns[1], ("amount".into(), "number(10,2)".into()));
            }
            other => panic!("{other:?}"),
        }
        match classify("insert into t1 values (1, 'a,b'), (2, null)") {
            Statement::Insert { table, tuples } => {
                assert_eq!(table, "T1");
                assert_eq!(tuples.len(), 2);
                assert_eq!(literal(&tuples[0][1]).as_deref(), Some("a,b"));
                assert_eq!(literal(&tuples[1][1]), None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(count_placeholders("insert into t values (?, '?', ?)"), 2);
        match classify("put file:///tmp/x.csv @stg1 overwrite=true") {
            Statement::Put {
                file,
                stage,
                overwrite,
                auto_compress,
            } => {
                assert_eq!((file.as_str(), stage.as_str()), ("/tmp/x.csv", "STG1"));
                assert!(overwrite && auto_compress);
            }
            other => panic!("{other:?}"),
        }
    }
}
