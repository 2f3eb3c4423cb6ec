//! What a statement is and what it touches, so that rules can be written about statement types
//! and objects rather than SQL text.
//!
//! Each statement is parsed with sqlparser's Snowflake dialect. The type comes from the parsed
//! statement where the parse tree says more than the leading keywords (a `WITH` query is a
//! `SELECT`, `COPY INTO` a table or a location), else from the keywords. The objects are the tables
//! the statement reads and writes, named as Snowflake resolves them: unquoted identifiers folded to
//! upper case, quoted ones kept, and one- or two-part names completed with the session's current
//! database and schema when the agent knows them. SQL the parser does not accept is classified by
//! its keywords alone and marked `unparsed`: its objects are a best effort, and rules can match on
//! the mark.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    CopyIntoSnowflakeKind, FromTable, Ident, ObjectName, ObjectNamePart, ObjectType, Statement,
    TableFactor, TableObject, visit_relations,
};
use sqlparser::dialect::SnowflakeDialect;
use sqlparser::parser::Parser;

use crate::snowflake::sql_lex::{Kind, Lexer};
use crate::snowflake::statements::split_statements;

/// A table (or view) name as Snowflake resolves it; parts the session does not know are `None`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// The database, when named or known from the session.
    pub database: Option<String>,
    /// The schema, when named or known from the session.
    pub schema: Option<String>,
    /// The object's own name.
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let part = |p: &Option<String>| p.clone().unwrap_or_else(|| "?".to_owned());
        write!(
            f,
            "{}.{}.{}",
            part(&self.database),
            part(&self.schema),
            self.name
        )
    }
}

/// The session's current database and schema, used to complete partial names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameContext {
    /// The current database, as Snowflake reports it (already resolved).
    pub database: Option<String>,
    /// The current schema, as Snowflake reports it (already resolved).
    pub schema: Option<String>,
}

/// One statement, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The statement's text, trimmed.
    pub text: String,
    /// The statement type, upper case (`SELECT`, `DROP_TABLE`, `COPY_INTO_LOCATION`, ...).
    pub statement_type: String,
    /// Tables the statement reads.
    pub reads: BTreeSet<ObjectRef>,
    /// Tables the statement writes, creates, alters or drops.
    pub writes: BTreeSet<ObjectRef>,
    /// Whether sqlparser could not parse it (type and objects come from keywords).
    pub unparsed: bool,
    /// Whether it creates or reveals a credential ([`mints_credential`]).
    pub mints_credential: bool,
}

impl Classified {
    /// Every object the statement touches.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectRef> {
        self.reads.iter().chain(self.writes.iter())
    }
}

/// Classifies each statement of `sql` (a request may hold several, docs/decisions.md §10).
pub fn classify_request(sql: &str, ctx: &NameContext) -> Vec<Classified> {
    let pieces = split_statements(sql);
    if pieces.is_empty() {
        return vec![classify(sql, ctx)];
    }
    pieces.into_iter().map(|p| classify(p, ctx)).collect()
}

/// Classifies one statement.
pub fn classify(sql: &str, ctx: &NameContext) -> Classified {
    let text = sql.trim().to_owned();
    let keyword_type = keyword_type(&text);
    let mints = mints_credential(&text);
    let parsed = Parser::parse_sql(&SnowflakeDialect {}, &text);
    match parsed {
        Ok(stmts) if stmts.len() == 1 => {
            let stmt = &stmts[0];
            let mut c = Classified {
                statement_type: parsed_type(stmt).unwrap_or(keyword_type),
                text,
                reads: BTreeSet::new(),
                writes: BTreeSet::new(),
                unparsed: false,
                mints_credential: mints,
            };
            objects_of(stmt, ctx, &mut c);
            c
        }
        _ => {
            let (reads, writes) = keyword_objects(&text, ctx);
            Classified {
                statement_type: keyword_type,
                text,
                reads,
                writes,
                unparsed: true,
                mints_credential: mints,
            }
        }
    }
}

/// Resolves a parsed name: unquoted parts fold to upper case, quoted parts keep their case.
fn resolve(name: &ObjectName, ctx: &NameContext) -> Option<ObjectRef> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => fold(i),
            ObjectNamePart::Function(f) => fold(&f.name),
        })
        .collect();
    resolve_parts(parts, ctx)
}

fn resolve_parts(mut parts: Vec<String>, ctx: &NameContext) -> Option<ObjectRef> {
    let name = parts.pop()?;
    if name.starts_with('@') || name.is_empty() {
        return None;
    }
    let schema = parts.pop();
    let database = parts.pop();
    // `db..t` names the database's PUBLIC schema.
    let schema = match (schema, &database) {
        (Some(s), Some(_)) if s.is_empty() => Some("PUBLIC".to_owned()),
        (s, _) => s,
    };
    let explicit_schema = schema.is_some();
    Some(ObjectRef {
        database: database.or_else(|| ctx.database.clone()),
        schema: if explicit_schema {
            schema
        } else {
            ctx.schema.clone()
        },
        name,
    })
}

fn fold(i: &Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_uppercase(),
    }
}

/// The type where the parse tree tells more than the keywords.
fn parsed_type(stmt: &Statement) -> Option<String> {
    let t = match stmt {
        Statement::Query(_) => "SELECT".to_owned(),
        Statement::Insert(_) => "INSERT".to_owned(),
        Statement::Update(_) => "UPDATE".to_owned(),
        Statement::Delete(_) => "DELETE".to_owned(),
        Statement::Merge(_) => "MERGE".to_owned(),
        Statement::CopyIntoSnowflake { kind, .. } => match kind {
            CopyIntoSnowflakeKind::Table => "COPY_INTO_TABLE".to_owned(),
            CopyIntoSnowflakeKind::Location => "COPY_INTO_LOCATION".to_owned(),
        },
        Statement::Drop { object_type, .. } => format!("DROP_{}", object_word(object_type)),
        Statement::CreateTable(_) => "CREATE_TABLE".to_owned(),
        Statement::CreateView(_) => "CREATE_VIEW".to_owned(),
        Statement::AlterTable(_) => "ALTER_TABLE".to_owned(),
        Statement::Truncate(_) => "TRUNCATE".to_owned(),
        Statement::Call(_) => "CALL".to_owned(),
        _ => return None,
    };
    Some(t)
}

fn object_word(t: &ObjectType) -> String {
    t.to_string().to_uppercase().replace(' ', "_")
}

/// Collects reads and writes from a parsed statement.
fn objects_of(stmt: &Statement, ctx: &NameContext, c: &mut Classified) {
    let mut written: Vec<&ObjectName> = Vec::new();
    match stmt {
        Statement::Insert(i) => {
            if let TableObject::TableName(n) = &i.table {
                written.push(n);
            }
        }
        Statement::Update(u) => {
            if let TableFactor::Table { name, .. } = &u.table.relation {
                written.push(name);
            }
        }
        Statement::Delete(d) => {
            written.extend(d.tables.iter());
            let from = match &d.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            for t in from {
                if let TableFactor::Table { name, .. } = &t.relation {
                    written.push(name);
                }
            }
        }
        Statement::Merge(m) => {
            if let TableFactor::Table { name, .. } = &m.table {
                written.push(name);
            }
        }
        Statement::CopyIntoSnowflake {
            kind: CopyIntoSnowflakeKind::Table,
            into,
            ..
        } => written.push(into),
        Statement::Drop { names, .. } => written.extend(names.iter()),
        Statement::CreateTable(t) => written.push(&t.name),
        Statement::CreateView(v) => written.push(&v.name),
        Statement::AlterTable(a) => written.push(&a.name),
        Statement::Truncate(t) => written.extend(t.table_names.iter().map(|t| &t.name)),
        _ => {}
    }
    for n in &written {
        if let Some(o) = resolve(n, ctx) {
            c.writes.insert(o);
        }
    }
    let _ = visit_relations(stmt, |rel| {
        if !written.contains(&rel)
            && let Some(o) = resolve(rel, ctx)
        {
            c.reads.insert(o);
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The words of a statement, comments and whitespace skipped, up to `max`.
fn words(sql: &str, max: usize) -> Vec<String> {
    Lexer::new(sql)
        .filter(|t| !matches!(t.kind, Kind::Space | Kind::LineComment | Kind::BlockComment))
        .take(max)
        .map(|t| match t.kind {
            Kind::Word => sql[t.start..t.end].to_ascii_uppercase(),
            _ => String::new(),
        })
        .collect()
}

/// Whether a statement creates or reveals a credential that works without the agent: a user's
/// password, key-pair public key or programmatic access token, a secret object, a token from a
/// system function. An `EXECUTE IMMEDIATE` whose body names any of them counts too (fail closed:
/// the body is text the agent does not parse).
pub fn mints_credential(sql: &str) -> bool {
    let w = words(sql, 4096);
    let has = |word: &str| w.iter().any(|x| x == word);
    let has_seq = |seq: &[&str]| {
        w.windows(seq.len())
            .any(|win| win.iter().zip(seq).all(|(a, b)| a == b))
    };
    let upper = sql.to_ascii_uppercase();
    if CREDENTIAL_FUNCTIONS.iter().any(|f| upper.contains(f)) {
        return true;
    }
    let first = w.first().map(String::as_str).unwrap_or("");
    let object: Vec<&str> = w
        .iter()
        .skip(1)
        .map(String::as_str)
        .skip_while(|s| MODIFIERS.contains(s))
        .take(1)
        .collect();
    let user_credential = has("PASSWORD")
        || has("RSA_PUBLIC_KEY")
        || has("RSA_PUBLIC_KEY_2")
        || has_seq(&["PROGRAMMATIC", "ACCESS", "TOKEN"])
        || has_seq(&["ADD", "PAT"])
        || has_seq(&["ROTATE", "PAT"]);
    match (first, object.as_slice()) {
        ("ALTER" | "CREATE", ["USER"]) => user_credential,
        ("ALTER" | "CREATE", ["SECRET"]) => true,
        ("EXECUTE", _) if w.get(1).is_some_and(|s| s == "IMMEDIATE") => [
            "PASSWORD",
            "RSA_PUBLIC_KEY",
            "PROGRAMMATIC ACCESS TOKEN",
            " PAT ",
            "SECRET",
        ]
        .iter()
        .any(|k| upper.contains(k)),
        _ => false,
    }
}

/// System functions that return a token usable without the agent.
const CREDENTIAL_FUNCTIONS: &[&str] = &[
    "SYSTEM$GENERATE_SCIM_ACCESS_TOKEN",
    "SYSTEM$GENERATE_SAML_CSR",
];

/// Words that may stand between `CREATE`/`DROP`/`ALTER` and the kind of object.
const MODIFIERS: &[&str] = &[
    "OR",
    "REPLACE",
    "TEMPORARY",
    "TEMP",
    "TRANSIENT",
    "VOLATILE",
    "LOCAL",
    "GLOBAL",
    "SECURE",
    "RECURSIVE",
    "IF",
    "NOT",
    "EXISTS",
    "HYBRID",
    "ICEBERG",
    "DYNAMIC",
    "EVENT",
    "EXTERNAL",
];

/// The statement type from the leading keywords alone.
pub fn keyword_type(sql: &str) -> String {
    let w = words(sql, 12);
    let first = w.first().map(String::as_str).unwrap_or("");
    match first {
        "" => "UNKNOWN".to_owned(),
        "WITH" | "SELECT" | "VALUES" | "TABLE" => "SELECT".to_owned(),
        "EXECUTE" if w.get(1).is_some_and(|s| s == "IMMEDIATE") => "EXECUTE_IMMEDIATE".to_owned(),
        "EXECUTE" if w.get(1).is_some_and(|s| s == "TASK") => "EXECUTE_TASK".to_owned(),
        "COPY" => {
            // COPY INTO @stage ... unloads; COPY INTO table ... loads.
            let target = Lexer::new(sql)
                .filter(|t| !matches!(t.kind, Kind::Space | Kind::LineComment | Kind::BlockComment))
                .nth(2);
            match target {
                Some(t) if sql[t.start..].starts_with('@') => "COPY_INTO_LOCATION".to_owned(),
                Some(t) if t.kind == Kind::Str => "COPY_INTO_LOCATION".to_owned(),
                _ => "COPY_INTO_TABLE".to_owned(),
            }
        }
        "CREATE" | "DROP" | "ALTER" | "UNDROP" => {
            let kind: Vec<&str> = w[1..]
                .iter()
                .map(String::as_str)
                .skip_while(|s| MODIFIERS.contains(s))
                .take(2)
                .collect();
            match kind.as_slice() {
                ["MATERIALIZED", "VIEW", ..] => format!("{first}_MATERIALIZED_VIEW"),
                ["FILE", "FORMAT", ..] => format!("{first}_FILE_FORMAT"),
                ["NETWORK", "POLICY", ..] | ["MASKING", "POLICY", ..] => {
                    format!("{first}_{}_POLICY", kind[0])
                }
                [k, ..] if !k.is_empty() => format!("{first}_{k}"),
                _ => first.to_owned(),
            }
        }
        "BEGIN" | "START" => "BEGIN".to_owned(),
        "DESC" => "DESCRIBE".to_owned(),
        other => other.to_owned(),
    }
}

/// Best-effort objects of a statement the parser did not accept: the name after `FROM`, `JOIN`,
/// `INTO`, `UPDATE`, `TABLE` (and the kind word of `DROP`/`TRUNCATE`).
fn keyword_objects(sql: &str, ctx: &NameContext) -> (BTreeSet<ObjectRef>, BTreeSet<ObjectRef>) {
    let toks: Vec<_> = Lexer::new(sql)
        .filter(|t| !matches!(t.kind, Kind::Space | Kind::LineComment | Kind::BlockComment))
        .take(10_000)
        .collect();
    let word = |i: usize| {
        toks.get(i)
            .filter(|t| t.kind == Kind::Word)
            .map(|t| sql[t.start..t.end].to_ascii_uppercase())
    };
    let first = word(0).unwrap_or_default();
    let mut reads = BTreeSet::new();
    let mut writes = BTreeSet::new();
    let mut i = 0;
    while i < toks.len() {
        let Some(w) = word(i) else {
            i += 1;
            continue;
        };
        let ddl = matches!(
            first.as_str(),
            "DROP" | "CREATE" | "ALTER" | "TRUNCATE" | "UNDROP"
        );
        let write = match w.as_str() {
            "INTO" | "UPDATE" => true,
            "TABLE" | "VIEW" if ddl => true,
            "FROM" => first == "DELETE",
            "JOIN" | "USING" => false,
            _ => {
                i += 1;
                continue;
            }
        };
        let mut j = i + 1;
        // Skip IF [NOT] EXISTS.
        while word(j).is_some_and(|s| matches!(s.as_str(), "IF" | "NOT" | "EXISTS")) {
            j += 1;
        }
        let mut parts = Vec::new();
        while let Some(t) = toks.get(j) {
            let s = &sql[t.start..t.end];
            match t.kind {
                Kind::Word => parts.push(s.to_uppercase()),
                Kind::QuotedIdent => match s.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
                    // An unterminated quote: no name to take.
                    Some(inner) if s.len() >= 2 => parts.push(inner.replace("\"\"", "\"")),
                    _ => break,
                },
                _ => break,
            }
            match toks.get(j + 1) {
                Some(d) if &sql[d.start..d.end] == "." => j += 2,
                _ => {
                    j += 1;
                    break;
                }
            }
        }
        if (1..=3).contains(&parts.len())
            && let Some(o) = resolve_parts(parts, ctx)
        {
            if write {
                writes.insert(o);
            } else {
                reads.insert(o);
            }
        }
        i = j.max(i + 1);
    }
    (reads, writes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ctx() -> NameContext {
        NameContext {
            database: Some("DB".into()),
            schema: Some("SCH".into()),
        }
    }

    fn obj(d: &str, s: &str, n: &str) -> ObjectRef {
        ObjectRef {
            database: Some(d.into()),
            schema: Some(s.into()),
            name: n.into(),
        }
    }

    #[test]
    fn names_fold_as_snowflake_folds_them() {
        let c = classify("select * from t join \"Mixed\".x.\"y\" on true", &ctx());
        assert!(!c.unparsed);
        assert_eq!(c.statement_type, "SELECT");
        assert!(c.reads.contains(&obj("DB", "SCH", "T")));
        assert!(c.reads.contains(&obj("Mixed", "X", "y")));
        let c = classify("drop table s2.t", &NameContext::default());
        assert_eq!(c.statement_type, "DROP_TABLE");
        assert_eq!(
            c.writes.iter().next().unwrap(),
            &ObjectRef {
                database: None,
                schema: Some("S2".into()),
                name: "T".into()
            }
        );
    }
}
