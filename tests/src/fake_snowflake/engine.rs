//! Runs one statement against the fake's tables and stage: the script of what each SQL shape
//! answers. The envelopes around the outcome are built by the handlers.

use serde_json::{Value, json};

use super::results::{ColType, Column, ResultSet, statement_type};
use super::sql::{self, Markers, Statement};
use super::state::{Inner, MAX_TABLE_ROWS, Session, Table};

/// Rows a `/*sf_chunks*/` result has unless `/*rows:N*/` says otherwise (as in the capture).
pub const DEFAULT_CHUNKED_ROWS: usize = 350;
/// The query of a presigned stage URL: GCS V4 style, naming the `x-goog-*` headers it authorises
/// (connector 5.2.0 refuses a conditional upload whose headers are not signed).
pub const PRESIGNED_QUERY: &str = "X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=fake%2F20260101%2Fauto%2Fstorage%2Fgoog4_request&X-Goog-Date=20260101T000000Z&X-Goog-Expires=3600&X-Goog-SignedHeaders=host%3Bx-goog-if-generation-match%3Bx-goog-meta-sfc-digest&X-Goog-Signature=fake";
/// Most rows `/*rows:N*/` may ask for.
pub const MAX_GENERATED_ROWS: usize = 200_000;

/// A Snowflake error as the driver receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfError {
    /// `code` / `data.errorCode` (`002003`).
    pub code: String,
    /// `data.sqlState` (`42S02`).
    pub sql_state: String,
    /// `message`.
    pub message: String,
}

impl SfError {
    fn new(code: &str, sql_state: &str, message: impl Into<String>) -> SfError {
        SfError {
            code: code.to_owned(),
            sql_state: sql_state.to_owned(),
            message: message.into(),
        }
    }

    /// 002003: the object does not exist.
    pub fn no_such_object(kind: &str, name: &str) -> SfError {
        SfError::new(
            "002003",
            "42S02",
            format!("SQL compilation error:\n{kind} '{name}' does not exist or not authorized."),
        )
    }
}

/// What a statement produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A result set.
    Rows(ResultSet),
    /// A Snowflake error.
    Error(SfError),
    /// A PUT/GET answer: the `data` fields that send the driver to the stage.
    Transfer(Value),
}

/// Runs `stmt_sql` for `session`. `base_url` is where the fake stage is reached.
pub fn execute(
    inner: &mut Inner,
    session: &Session,
    stmt_sql: &str,
    bindings: Option<&Value>,
    markers: &Markers,
    base_url: &str,
) -> Outcome {
    let stmt = sql::classify(stmt_sql);
    if markers.error {
        let name = match &stmt {
            Statement::Select {
                from: Some(from), ..
            } => from.clone(),
            _ => "FAKE_ERROR".to_owned(),
        };
        return Outcome::Error(SfError::no_such_object("Object", &name));
    }
    let generated = markers
        .rows
        .or(markers.chunks.then_some(DEFAULT_CHUNKED_ROWS));
    match stmt {
        Statement::Select { items, from, limit } => {
            let base = select(inner, &items, from.as_deref(), limit);
            match (generated, base) {
                (Some(n), base) => {
                    let columns = match base {
                        Ok(rs) if !rs.columns.is_empty() => rs.columns,
                        _ => vec![
                            Column::new("ID", ColType::Fixed { scale: 0 }),
                            Column::new("NAME", ColType::Text),
                        ],
                    };
                    Outcome::Rows(ResultSet::generated(
                        columns,
                        n.min(MAX_GENERATED_ROWS),
                        statement_type::SELECT,
                    ))
                }
                (None, Ok(rs)) => Outcome::Rows(rs),
                (None, Err(e)) => Outcome::Error(e),
            }
        }
        Statement::ResultScan(qid) => match inner.stored(&qid).and_then(|s| s.result.clone()) {
            Some(rs) => Outcome::Rows(rs),
            None => Outcome::Error(SfError::new(
                "000709",
                "02000",
                format!("Statement {qid} not found"),
            )),
        },
        Statement::CreateTable {
            name,
            columns,
            if_not_exists,
        } => {
            if if_not_exists && inner.tables.contains_key(&name) {
                return status(format!("{name} already exists, statement succeeded."));
            }
            let columns = columns
                .iter()
                .map(|(n, t)| Column::new(n.to_ascii_uppercase(), ColType::from_decl(t)))
                .collect();
            inner.tables.insert(
                name.clone(),
                Table {
                    columns,
                    rows: Vec::new(),
                },
            );
            status(format!("Table {name} successfully created."))
        }
        Statement::Create { kind, name } => {
            let mut kind = kind.to_ascii_lowercase();
            if let Some(first) = kind.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            status(format!("{kind} {name} successfully created."))
        }
        Statement::Drop {
            kind,
            name,
            if_exists,
        } => {
            if kind == "TABLE" && inner.tables.remove(&name).is_none() {
                if if_exists {
                    return status(format!(
                        "Drop statement executed successfully ({name} already dropped)."
                    ));
                }
                return Outcome::Error(SfError::no_such_object("Table", &name));
            }
            status(format!("{name} successfully dropped."))
        }
        Statement::Insert { table, tuples } => insert(inner, &table, &tuples, bindings),
        Statement::Update(table) => match inner.tables.get(&table) {
            Some(_) => Outcome::Rows(ResultSet::count(
                "number of rows updated",
                0,
                statement_type::UPDATE,
            )),
            None => Outcome::Error(SfError::no_such_object("Table", &table)),
        },
        Statement::Delete(table) => {
            let has_where = stmt_sql.to_ascii_lowercase().contains(" where ");
            match inner.tables.get_mut(&table) {
                Some(t) => {
                    let n = if has_where {
                        0
                    } else {
                        std::mem::take(&mut t.rows).len()
                    };
                    Outcome::Rows(ResultSet::count(
                        "number of rows deleted",
                        n,
                        statement_type::DELETE,
                    ))
                }
                None => Outcome::Error(SfError::no_such_object("Table", &table)),
            }
        }
        Statement::Put {
            file,
            stage,
            auto_compress,
            overwrite,
        } => {
            let base = file.rsplit('/').next().unwrap_or(&file).to_owned();
            let compressed = [".gz", ".bz2", ".zst", ".br", ".deflate", ".zip"]
                .iter()
                .any(|ext| base.ends_with(ext));
            let target = if auto_compress && !compressed {
                format!("{base}.gz")
            } else {
                base
            };
            let (location, url_path) = stage_location(session, &stage);
            Outcome::Transfer(json!({
                "stageInfo": stage_info(
                    &location,
                    Some(format!("{base_url}/fs_bucket/{url_path}{target}?{PRESIGNED_QUERY}")),
                ),
                "src_locations": [file],
                "parallel": 4,
                "threshold": 209_715_200,
                "autoCompress": auto_compress,
                "sourceCompression": "auto_detect",
                "overwrite": overwrite,
                "clientShowEncryptionParameter": false,
                "command": "UPLOAD",
            }))
        }
        Statement::Get { stage, local } => {
            let (location, url_path) = stage_location(session, &stage);
            let prefix = url_path.clone();
            let files: Vec<String> = inner
                .stage
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .map(|k| k[prefix.len()..].to_owned())
                .collect();
            let urls: Vec<String> = files
                .iter()
                .map(|f| format!("{base_url}/fs_bucket/{prefix}{f}?{PRESIGNED_QUERY}"))
                .collect();
            Outcome::Transfer(json!({
                "stageInfo": stage_info(&location, None),
                "src_locations": files,
                "presignedUrls": urls,
                "localLocation": local,
                "parallel": 10,
                "autoCompress": false,
                "sourceCompression": "none",
                "overwrite": false,
                "command": "DOWNLOAD",
            }))
        }
        Statement::List(stage) => {
            let (_, prefix) = stage_location(session, &stage);
            let rows = inner
                .stage
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, f)| {
                    // `DB/SCHEMA/STG1/a.csv.gz` is listed as `stg1/a.csv.gz`.
                    let name = k.splitn(3, '/').nth(2).unwrap_or(k);
                    let name = match name.split_once('/') {
                        Some((stage, file)) => format!("{}/{file}", stage.to_ascii_lowercase()),
                        None => name.to_ascii_lowercase(),
                    };
                    vec![
                        Some(name),
                        Some(f.bytes.len().to_string()),
                        f.digest.clone(),
                        Some(httpdate(f.uploaded)),
                    ]
                })
                .collect();
            Outcome::Rows(ResultSet {
                columns: vec![
                    Column::new("name", ColType::Text),
                    Column::new("size", ColType::Fixed { scale: 0 }),
                    Column::new("md5", ColType::Text),
                    Column::new("last_modified", ColType::Text),
                ],
                rows,
                statement_type: statement_type::FILE,
            })
        }
        Statement::Other(_) => status("Statement executed successfully.".to_owned()),
    }
}

/// The result columns of a statement without running it (for `describeOnly`).
pub fn describe(inner: &Inner, stmt_sql: &str) -> ResultSet {
    match sql::classify(stmt_sql) {
        Statement::Select { items, from, limit } => {
            let mut rs = select(inner, &items, from.as_deref(), limit).unwrap_or_default();
            rs.rows.clear();
            rs.statement_type = statement_type::SELECT;
            rs
        }
        Statement::Insert { .. } => {
            let mut rs = ResultSet::count("number of rows inserted", 0, statement_type::INSERT);
            rs.rows.clear();
            rs
        }
        _ => {
            let mut rs = ResultSet::status("", statement_type::DDL);
            rs.rows.clear();
            rs
        }
    }
}

fn status(text: String) -> Outcome {
    Outcome::Rows(ResultSet::status(text, statement_type::DDL))
}

fn select(
    inner: &Inner,
    items: &[String],
    from: Option<&str>,
    limit: Option<usize>,
) -> Result<ResultSet, SfError> {
    let mut rs = match from {
        None => {
            let (columns, row): (Vec<Column>, Vec<Option<String>>) =
                items.iter().map(|i| literal_item(i)).unzip();
            ResultSet {
                columns,
                rows: vec![row],
                statement_type: statement_type::SELECT,
            }
        }
        Some(name) => {
            let table = inner
                .tables
                .get(name)
                .ok_or_else(|| SfError::no_such_object("Object", name))?;
            project(table, items)?
        }
    };
    if let Some(n) = limit {
        rs.rows.truncate(n);
    }
    Ok(rs)
}

fn project(table: &Table, items: &[String]) -> Result<ResultSet, SfError> {
    if items.len() == 1 && items[0].replace(' ', "").eq_ignore_ascii_case("count(*)") {
        return Ok(ResultSet {
            columns: vec![Column::new("COUNT(*)", ColType::Fixed { scale: 0 })],
            rows: vec![vec![Some(table.rows.len().to_string())]],
            statement_type: statement_type::SELECT,
        });
    }
    let mut picks = Vec::new();
    for item in items {
        if item.trim() == "*" {
            picks.extend(0..table.columns.len());
            continue;
        }
        let name = sql::object_name(item.split_whitespace().next().unwrap_or(item));
        match table.columns.iter().position(|c| c.name == name) {
            Some(i) => picks.push(i),
            None => {
                return Err(SfError::new(
                    "000904",
                    "42000",
                    format!(
                        "SQL compilation error: error line 1 at position 7\ninvalid identifier '{name}'"
                    ),
                ));
            }
        }
    }
    Ok(ResultSet {
        columns: picks.iter().map(|&i| table.columns[i].clone()).collect(),
        rows: table
            .rows
            .iter()
            .map(|r| picks.iter().map(|&i| r.get(i).cloned().flatten()).collect())
            .collect(),
        statement_type: statement_type::SELECT,
    })
}

/// One item of a FROM-less select: its column and value.
fn literal_item(item: &str) -> (Column, Option<String>) {
    let lower = item.to_ascii_lowercase();
    let (expr, alias) = match lower.rfind(" as ") {
        Some(p) => (item[..p].trim(), Some(item[p + 4..].trim())),
        None => (item.trim(), None),
    };
    let name = match alias {
        Some(a) if a.starts_with('"') => a.trim_matches('"').to_owned(),
        Some(a) => a.to_ascii_uppercase(),
        None => expr.to_ascii_uppercase(),
    };
    let e = expr.to_ascii_lowercase();
    let (ty, value) = if let Some(s) = expr.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        (ColType::Text, Some(s.replace("''", "'")))
    } else if e == "true" || e == "false" {
        (
            ColType::Boolean,
            Some(if e == "true" { "1" } else { "0" }.to_owned()),
        )
    } else if e == "null" {
        (ColType::Text, None)
    } else if expr.parse::<i64>().is_ok() {
        (ColType::Fixed { scale: 0 }, Some(expr.to_owned()))
    } else if let Some((_, frac)) = expr.split_once('.').filter(|_| expr.parse::<f64>().is_ok()) {
        (
            ColType::Fixed {
                scale: u32::try_from(frac.len()).unwrap_or(0),
            },
            Some(expr.to_owned()),
        )
    } else if e == "current_version()" {
        (ColType::Text, Some("10.0.0".to_owned()))
    } else {
        (ColType::Text, Some(expr.to_owned()))
    };
    (Column::new(name, ty), value)
}

fn insert(
    inner: &mut Inner,
    table: &str,
    tuples: &[Vec<String>],
    bindings: Option<&Value>,
) -> Outcome {
    let Some(t) = inner.tables.get_mut(table) else {
        return Outcome::Error(SfError::no_such_object("Table", table));
    };
    let rows: Vec<Vec<Option<String>>> = match bindings.and_then(Value::as_object) {
        Some(b) if !b.is_empty() => {
            let mut keys: Vec<(usize, &Value)> = b
                .iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.get("value")?)))
                .collect();
            keys.sort_by_key(|(k, _)| *k);
            let n = keys
                .iter()
                .find_map(|(_, v)| v.as_array().map(Vec::len))
                .unwrap_or(1);
            (0..n)
                .map(|r| {
                    keys.iter()
                        .map(|(_, v)| match v {
                            Value::Array(a) => a.get(r).and_then(value_string),
                            other => value_string(other),
                        })
                        .collect()
                })
                .collect()
        }
        _ => tuples
            .iter()
            .map(|t| t.iter().map(|i| sql::literal(i)).collect())
            .collect(),
    };
    let n = rows.len();
    let room = MAX_TABLE_ROWS.saturating_sub(t.rows.len());
    let width = t.columns.len();
    t.rows.extend(rows.into_iter().take(room).map(|mut r| {
        r.resize(width, None);
        r
    }));
    Outcome::Rows(ResultSet::count(
        "number of rows inserted",
        n,
        statement_type::INSERT,
    ))
}

fn value_string(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// `DB.SCHEMA.STAGE/` and the URL path `DB/SCHEMA/STAGE/` of a stage reference.
fn stage_location(session: &Session, stage: &str) -> (String, String) {
    let (name, path) = stage.split_once('/').unwrap_or((stage, ""));
    let name = name.trim_start_matches('~');
    let name = if name.is_empty() { "USER_STAGE" } else { name };
    let db = session.database.clone().unwrap_or_else(|| "DB".to_owned());
    let schema = session
        .schema
        .clone()
        .unwrap_or_else(|| "PUBLIC".to_owned());
    let path = if path.is_empty() {
        String::new()
    } else {
        format!("{}/", path.trim_end_matches('/'))
    };
    (
        format!("{db}.{schema}.{name}/{path}"),
        format!("{db}/{schema}/{name}/{path}"),
    )
}

fn stage_info(location: &str, presigned: Option<String>) -> Value {
    json!({
        "locationType": "GCS",
        "location": location,
        "path": "",
        "creds": {},
        "presignedUrl": presigned,
        "region": "us-central1",
        "endPoint": null,
        "storageAccount": null,
        "isClientSideEncrypted": false,
        "useS3RegionalUrl": false,
        "useRegionalUrl": false,
    })
}

/// A `Last-Modified` style date.
pub fn httpdate(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dt = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let wd = dt.weekday().to_string();
    let mon = dt.month().to_string();
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        wd.get(..3).unwrap_or(""),
        dt.day(),
        mon.get(..3).unwrap_or(""),
        dt.year(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}
