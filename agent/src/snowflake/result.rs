//! What Snowflake answers a query request (and a result poll, which has the same shape), and
//! what a monitoring request answers.
//!
//! The envelope is `{data, code, message, success}` (docs/protocol.md, "Query response"). Rows are
//! counted, never kept: a JSON `rowset` is counted row by row as it is read, an Arrow
//! `rowsetBase64` is measured. Secrets in a response (`qrmk`, `chunkHeaders`,
//! `encryptionMaterial`, `stageInfo.creds`, URL signatures) are recorded as present at most.

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::codes;
use super::error::ParseError;
use super::json::{self, KeysOnly, SeqLen, StrLen, opt_code};
use super::storage::{StageInfo, StorageUrl, WireStageInfo, url_field};

const RESPONSE: &str = "query response";
const MONITORING: &str = "monitoring response";

/// Snowflake's statement types (`statementTypeId`), as the JDBC driver names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatementType {
    /// 0x0000: not classified (e.g. `LIST` on some servers).
    Unknown,
    /// 0x1000.
    Select,
    /// 0x3000: DML without a finer type.
    Dml,
    /// 0x3100.
    Insert,
    /// 0x3200.
    Update,
    /// 0x3300.
    Delete,
    /// 0x3400.
    Merge,
    /// 0x3500.
    MultiInsert,
    /// 0x3600: `COPY INTO <table>`.
    Copy,
    /// 0x3700: `COPY INTO <location>`.
    Unload,
    /// 0x3800.
    Recluster,
    /// 0x4000: session and system commands without a finer type.
    Scl,
    /// 0x4100.
    AlterSession,
    /// 0x4300.
    Use,
    /// 0x4301.
    UseDatabase,
    /// 0x4302.
    UseSchema,
    /// 0x4303.
    UseWarehouse,
    /// 0x4400.
    Show,
    /// 0x4500.
    Describe,
    /// 0x4701.
    List,
    /// 0x5000: COMMIT, ROLLBACK, BEGIN.
    Tcl,
    /// 0x6000: CREATE, ALTER, DROP, GRANT ...
    Ddl,
    /// 0x7101.
    Get,
    /// 0x7102.
    Put,
    /// 0x7103.
    Remove,
    /// An id with no name here, kept as sent.
    Other(i64),
}

impl StatementType {
    /// Maps a `statementTypeId`.
    pub fn from_id(id: i64) -> Self {
        use StatementType::*;
        match id {
            0x0000 => Unknown,
            0x1000 => Select,
            0x3000 => Dml,
            0x3100 => Insert,
            0x3200 => Update,
            0x3300 => Delete,
            0x3400 => Merge,
            0x3500 => MultiInsert,
            0x3600 => Copy,
            0x3700 => Unload,
            0x3800 => Recluster,
            0x4000 => Scl,
            0x4100 => AlterSession,
            0x4300 => Use,
            0x4301 => UseDatabase,
            0x4302 => UseSchema,
            0x4303 => UseWarehouse,
            0x4400 => Show,
            0x4500 => Describe,
            0x4701 => List,
            0x5000 => Tcl,
            0x6000 => Ddl,
            0x7101 => Get,
            0x7102 => Put,
            0x7103 => Remove,
            other => Other(other),
        }
    }

    /// The name for the audit; an unnamed id gets its family's name (as JDBC falls back to the
    /// category), or `UNKNOWN`.
    pub fn as_str(&self) -> &'static str {
        use StatementType::*;
        match self {
            Unknown => "UNKNOWN",
            Select => "SELECT",
            Dml => "DML",
            Insert => "INSERT",
            Update => "UPDATE",
            Delete => "DELETE",
            Merge => "MERGE",
            MultiInsert => "MULTI_INSERT",
            Copy => "COPY",
            Unload => "UNLOAD",
            Recluster => "RECLUSTER",
            Scl => "SCL",
            AlterSession => "ALTER_SESSION",
            Use => "USE",
            UseDatabase => "USE_DATABASE",
            UseSchema => "USE_SCHEMA",
            UseWarehouse => "USE_WAREHOUSE",
            Show => "SHOW",
            Describe => "DESCRIBE",
            List => "LIST",
            Tcl => "TCL",
            Ddl => "DDL",
            Get => "GET",
            Put => "PUT",
            Remove => "REMOVE",
            Other(id) => match id & 0xF000 {
                0x1000 => "SELECT",
                0x3000 => "DML",
                0x4000 => "SCL",
                0x5000 => "TCL",
                0x6000 => "DDL",
                0x7000 => "FILE",
                _ => "UNKNOWN",
            },
        }
    }

    /// The wire id.
    pub fn id(&self) -> i64 {
        use StatementType::*;
        match self {
            Unknown => 0x0000,
            Select => 0x1000,
            Dml => 0x3000,
            Insert => 0x3100,
            Update => 0x3200,
            Delete => 0x3300,
            Merge => 0x3400,
            MultiInsert => 0x3500,
            Copy => 0x3600,
            Unload => 0x3700,
            Recluster => 0x3800,
            Scl => 0x4000,
            AlterSession => 0x4100,
            Use => 0x4300,
            UseDatabase => 0x4301,
            UseSchema => 0x4302,
            UseWarehouse => 0x4303,
            Show => 0x4400,
            Describe => 0x4500,
            List => 0x4701,
            Tcl => 0x5000,
            Ddl => 0x6000,
            Get => 0x7101,
            Put => 0x7102,
            Remove => 0x7103,
            Other(id) => *id,
        }
    }
}

/// Where a query stands, from `success` and `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryStatus {
    /// Finished with a result.
    Complete,
    /// `333333`: still running; the driver polls `getResultUrl`.
    InProgress,
    /// `333334`: an `asyncExec` statement was detached; the driver has the query id.
    AsyncDetached,
    /// `390112`: the session token expired; the driver renews and retries the same request id.
    SessionExpired,
    /// Any other failure.
    Failed,
}

/// How the rows are encoded (`queryResultFormat`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResultFormat {
    /// `arrow`: `rowsetBase64` and Arrow chunks.
    Arrow,
    /// `json`: `rowset` arrays of strings and JSON chunks.
    Json,
    /// Anything else, as sent.
    Other(String),
}

/// A result column (`rowtype[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// `name`.
    pub name: String,
    /// `type` (`fixed`, `text`, `timestamp_ntz`, ...).
    pub type_name: String,
    /// `nullable`.
    pub nullable: Option<bool>,
    /// `precision`.
    pub precision: Option<i64>,
    /// `scale`.
    pub scale: Option<i64>,
    /// `length` (characters, for text).
    pub length: Option<i64>,
}

/// A result chunk the driver downloads from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The URL, without its signature.
    pub url: StorageUrl,
    /// `rowCount`.
    pub row_count: Option<u64>,
    /// `uncompressedSize`.
    pub uncompressed_size: Option<u64>,
    /// `compressedSize`.
    pub compressed_size: Option<u64>,
}

/// `command` of a PUT/GET answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileCommand {
    /// PUT.
    Upload,
    /// GET.
    Download,
    /// Anything else, as sent.
    Other(String),
}

impl FileCommand {
    /// The command as Snowflake names it (`UPLOAD`, `DOWNLOAD`, or as sent).
    pub fn as_str(&self) -> &str {
        match self {
            FileCommand::Upload => "UPLOAD",
            FileCommand::Download => "DOWNLOAD",
            FileCommand::Other(s) => s,
        }
    }
}

/// A parsed query response (also the answer to a result poll).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResponse {
    /// `success`.
    pub success: bool,
    /// `code` (null on success; `333333`, `333334`, `390112`, or an error code).
    pub code: Option<String>,
    /// Derived from `success` and `code`.
    pub status: QueryStatus,
    /// `message`.
    pub message: Option<String>,
    /// `data.queryId`.
    pub query_id: Option<String>,
    /// `data.getResultUrl` of an in-progress answer.
    pub get_result_url: Option<String>,
    /// `data.errorCode` of a failure.
    pub error_code: Option<String>,
    /// `data.sqlState` of a failure.
    pub sql_state: Option<String>,
    /// `data.statementTypeId`.
    pub statement_type: Option<StatementType>,
    /// `data.rowtype`.
    pub columns: Vec<Column>,
    /// `data.total`: rows in the whole result.
    pub total: Option<u64>,
    /// `data.returned`: rows in this answer.
    pub returned: Option<u64>,
    /// `data.queryResultFormat`.
    pub result_format: Option<ResultFormat>,
    /// Rows in a JSON `rowset`.
    pub rowset_rows: Option<u64>,
    /// Length in bytes of an Arrow `rowsetBase64`.
    pub rowset_base64_len: Option<usize>,
    /// `data.chunks`.
    pub chunks: Vec<Chunk>,
    /// `data.qrmk` or `data.chunkHeaders` is present (chunk decryption material: never kept).
    pub has_chunk_keys: bool,
    /// `data.finalDatabaseName`.
    pub final_database: Option<String>,
    /// `data.finalSchemaName`.
    pub final_schema: Option<String>,
    /// `data.finalWarehouseName`.
    pub final_warehouse: Option<String>,
    /// `data.finalRoleName`.
    pub final_role: Option<String>,
    /// `data.resultIds`: the child query ids of a multi-statement request.
    pub result_ids: Vec<String>,
    /// `data.resultTypes`: the children's statement types, in the same order.
    pub result_types: Vec<StatementType>,
    /// `data.stageInfo` of a PUT/GET answer.
    pub stage_info: Option<StageInfo>,
    /// `data.command` of a PUT/GET answer.
    pub command: Option<FileCommand>,
    /// `data.presignedUrls` (GCS GET), without signatures.
    pub presigned_urls: Vec<StorageUrl>,
    /// `data.src_locations` of a PUT/GET answer (the files named in the statement).
    pub src_locations: Vec<String>,
    /// `data.encryptionMaterial` is present (never kept).
    pub has_encryption_material: bool,
}

#[derive(Deserialize)]
struct WireQueryResponse {
    data: Option<WireQueryData>,
    #[serde(default, deserialize_with = "opt_code")]
    code: Option<String>,
    message: Option<String>,
    success: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireQueryData {
    query_id: Option<String>,
    get_result_url: Option<String>,
    #[serde(default, deserialize_with = "opt_code")]
    error_code: Option<String>,
    sql_state: Option<String>,
    statement_type_id: Option<i64>,
    rowtype: Option<Vec<WireColumn>>,
    total: Option<u64>,
    returned: Option<u64>,
    query_result_format: Option<String>,
    rowset: Option<SeqLen>,
    rowset_base64: Option<StrLen>,
    chunks: Option<Vec<WireChunk>>,
    qrmk: Option<IgnoredAny>,
    chunk_headers: Option<KeysOnly>,
    final_database_name: Option<String>,
    final_schema_name: Option<String>,
    final_warehouse_name: Option<String>,
    final_role_name: Option<String>,
    result_ids: Option<String>,
    result_types: Option<String>,
    stage_info: Option<WireStageInfo>,
    command: Option<String>,
    presigned_urls: Option<Vec<Option<String>>>,
    #[serde(rename = "src_locations")]
    src_locations: Option<Vec<String>>,
    encryption_material: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireColumn {
    name: Option<String>,
    #[serde(rename = "type")]
    type_name: Option<String>,
    nullable: Option<bool>,
    precision: Option<i64>,
    scale: Option<i64>,
    length: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireChunk {
    url: Option<String>,
    row_count: Option<u64>,
    uncompressed_size: Option<u64>,
    compressed_size: Option<u64>,
}

fn status(success: bool, code: Option<&str>) -> QueryStatus {
    match code {
        Some(codes::QUERY_IN_PROGRESS) => QueryStatus::InProgress,
        Some(codes::QUERY_IN_PROGRESS_ASYNC) => QueryStatus::AsyncDetached,
        Some(codes::SESSION_EXPIRED) => QueryStatus::SessionExpired,
        _ if success => QueryStatus::Complete,
        _ => QueryStatus::Failed,
    }
}

fn split_list(s: Option<String>) -> Vec<String> {
    s.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

/// Parses a (decoded) query response or result-poll body.
pub fn parse_query_response(body: &[u8]) -> Result<QueryResponse, ParseError> {
    let w: WireQueryResponse = json::from_slice(RESPONSE, body)?;
    let success = w.success.unwrap_or(false);
    let mut r = QueryResponse {
        success,
        status: status(success, w.code.as_deref()),
        code: w.code,
        message: w.message,
        query_id: None,
        get_result_url: None,
        error_code: None,
        sql_state: None,
        statement_type: None,
        columns: Vec::new(),
        total: None,
        returned: None,
        result_format: None,
        rowset_rows: None,
        rowset_base64_len: None,
        chunks: Vec::new(),
        has_chunk_keys: false,
        final_database: None,
        final_schema: None,
        final_warehouse: None,
        final_role: None,
        result_ids: Vec::new(),
        result_types: Vec::new(),
        stage_info: None,
        command: None,
        presigned_urls: Vec::new(),
        src_locations: Vec::new(),
        has_encryption_material: false,
    };
    let Some(d) = w.data else {
        return Ok(r);
    };
    r.query_id = d.query_id.filter(|q| !q.is_empty());
    r.get_result_url = d.get_result_url;
    r.error_code = d.error_code;
    r.sql_state = d.sql_state;
    r.statement_type = d.statement_type_id.map(StatementType::from_id);
    r.columns = d
        .rowtype
        .unwrap_or_default()
        .into_iter()
        .map(|c| Column {
            name: c.name.unwrap_or_default(),
            type_name: c.type_name.unwrap_or_default(),
            nullable: c.nullable,
            precision: c.precision,
            scale: c.scale,
            length: c.length,
        })
        .collect();
    r.total = d.total;
    r.returned = d.returned;
    r.result_format = d
        .query_result_format
        .map(|f| match f.to_ascii_lowercase().as_str() {
            "arrow" => ResultFormat::Arrow,
            "json" => ResultFormat::Json,
            _ => ResultFormat::Other(f),
        });
    r.rowset_rows = d.rowset.map(|n| n.0);
    r.rowset_base64_len = d.rowset_base64.map(|n| n.0);
    r.chunks = d
        .chunks
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let url =
                url_field(RESPONSE, "chunks[].url", c.url)?.ok_or(ParseError::MissingField {
                    what: RESPONSE,
                    field: "chunks[].url",
                })?;
            Ok(Chunk {
                url,
                row_count: c.row_count,
                uncompressed_size: c.uncompressed_size,
                compressed_size: c.compressed_size,
            })
        })
        .collect::<Result<_, ParseError>>()?;
    r.has_chunk_keys = d.qrmk.is_some() || d.chunk_headers.is_some_and(|h| !h.0.is_empty());
    r.final_database = d.final_database_name;
    r.final_schema = d.final_schema_name;
    r.final_warehouse = d.final_warehouse_name;
    r.final_role = d.final_role_name;
    r.result_ids = split_list(d.result_ids);
    r.result_types = split_list(d.result_types)
        .iter()
        .map(|t| {
            t.parse::<i64>()
                .map(StatementType::from_id)
                .map_err(|_| ParseError::InvalidField {
                    what: RESPONSE,
                    field: "resultTypes",
                    reason: "expected comma-separated statement type ids",
                })
        })
        .collect::<Result<_, _>>()?;
    r.stage_info = d
        .stage_info
        .map(|s| s.into_stage_info(RESPONSE))
        .transpose()?;
    r.command = d.command.map(|c| match c.to_ascii_uppercase().as_str() {
        "UPLOAD" => FileCommand::Upload,
        "DOWNLOAD" => FileCommand::Download,
        _ => FileCommand::Other(c),
    });
    r.presigned_urls = d
        .presigned_urls
        .unwrap_or_default()
        .into_iter()
        .filter_map(|u| url_field(RESPONSE, "presignedUrls[]", u).transpose())
        .collect::<Result<_, _>>()?;
    r.src_locations = d.src_locations.unwrap_or_default();
    r.has_encryption_material = d.encryption_material.is_some();
    Ok(r)
}

/// One entry of a monitoring answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitoredQuery {
    /// `id`.
    pub id: Option<String>,
    /// `status` (`RUNNING`, `SUCCESS`, `FAILED_WITH_ERROR`, `ABORTED`, ...).
    pub status: Option<String>,
    /// `errorCode` of a failed query.
    pub error_code: Option<String>,
    /// `errorMessage` of a failed query.
    pub error_message: Option<String>,
}

/// A parsed `GET /monitoring/queries/<qid>` answer: how an async statement ended (docs/decisions.md §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitoringResponse {
    /// `success`.
    pub success: bool,
    /// `code`.
    pub code: Option<String>,
    /// `message`.
    pub message: Option<String>,
    /// `data.queries`.
    pub queries: Vec<MonitoredQuery>,
    /// `data.sqlState` of a failed query.
    pub sql_state: Option<String>,
}

#[derive(Deserialize)]
struct WireMonitoring {
    data: Option<WireMonitoringData>,
    #[serde(default, deserialize_with = "opt_code")]
    code: Option<String>,
    message: Option<String>,
    success: Option<bool>,
}

#[derive(Deserialize)]
struct WireMonitoringData {
    queries: Option<Vec<WireMonitored>>,
    #[serde(rename = "sqlState")]
    sql_state: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMonitored {
    id: Option<String>,
    status: Option<String>,
    #[serde(default, deserialize_with = "opt_code")]
    error_code: Option<String>,
    error_message: Option<String>,
}

/// Parses a (decoded) monitoring answer.
pub fn parse_monitoring_response(body: &[u8]) -> Result<MonitoringResponse, ParseError> {
    let w: WireMonitoring = json::from_slice(MONITORING, body)?;
    let (queries, sql_state) = w.data.map_or((None, None), |d| (d.queries, d.sql_state));
    Ok(MonitoringResponse {
        success: w.success.unwrap_or(false),
        code: w.code,
        message: w.message,
        queries: queries
            .unwrap_or_default()
            .into_iter()
            .map(|q| MonitoredQuery {
                id: q.id,
                status: q.status,
                error_code: q.error_code,
                error_message: q.error_message,
            })
            .collect(),
        sql_state,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statement_types() {
        for id in [0, 4096, 0x3100, 0x3600, 0x4100, 0x4701, 24576, 0x7102] {
            assert_eq!(StatementType::from_id(id).id(), id);
        }
        assert_eq!(StatementType::from_id(4096).as_str(), "SELECT");
        assert_eq!(StatementType::from_id(24576).as_str(), "DDL");
        assert_eq!(StatementType::from_id(13824).as_str(), "COPY");
        assert_eq!(StatementType::from_id(0x3900), StatementType::Other(0x3900));
        assert_eq!(StatementType::from_id(0x3900).as_str(), "DML");
        assert_eq!(StatementType::from_id(0xA000).as_str(), "UNKNOWN");
    }

    #[test]
    fn in_progress_and_detached() {
        let r = parse_query_response(
            br#"{"data":{"queryId":"01b-hold","getResultUrl":"/queries/01b-hold/result"},"code":"333333","message":"running","success":true}"#,
        )
        .unwrap();
        assert_eq!(r.status, QueryStatus::InProgress);
        assert_eq!(r.query_id.as_deref(), Some("01b-hold"));
        assert_eq!(
            r.get_result_url.as_deref(),
            Some("/queries/01b-hold/result")
        );
        let r = parse_query_response(br#"{"data":{"queryId":"q"},"code":"333334","success":true}"#)
            .unwrap();
        assert_eq!(r.status, QueryStatus::AsyncDetached);
        let r = parse_query_response(
            br#"{"data":{"nextAction":"RENEW_SESSION"},"code":"390112","message":"expired","success":false}"#,
        )
        .unwrap();
        assert_eq!(r.status, QueryStatus::SessionExpired);
        let r = parse_query_response(
            br#"{"data":null,"code":261000,"message":"x","success":false,"headers":null}"#,
        )
        .unwrap();
        assert_eq!(
            (r.status, r.code.as_deref()),
            (QueryStatus::Failed, Some("261000"))
        );
    }

    #[test]
    fn multi_statement_and_json_rows() {
        let r = parse_query_response(
            br#"{"data":{"queryId":"p","statementTypeId":40960,"resultIds":"01a,01b","resultTypes":"4096,12544",
            "queryResultFormat":"json","rowset":[["1","a"],["2","b"]],"returned":2,"total":2,
            "finalWarehouseName":"WH","finalRoleName":"R"},"success":true}"#,
        )
        .unwrap();
        assert_eq!(r.result_ids, vec!["01a", "01b"]);
        assert_eq!(
            r.result_types,
            vec![StatementType::Select, StatementType::Insert]
        );
        assert_eq!(r.result_format, Some(ResultFormat::Json));
        assert_eq!(r.rowset_rows, Some(2));
        assert_eq!(r.final_warehouse.as_deref(), Some("WH"));
        assert!(
            parse_query_response(br#"{"data":{"resultTypes":"4096,x"},"success":true}"#).is_err()
        );
    }

    #[test]
    fn secrets_are_not_kept() {
        let body = br#"{"data":{"stageInfo":{"locationType":"S3","location":"bkt/p/","region":"us-west-2",
            "creds":{"AWS_KEY_ID":"AKIAEXAMPLE","AWS_SECRET_KEY":"wJalrSECRET","AWS_TOKEN":"FwoTOKEN"}},
            "encryptionMaterial":{"queryStageMasterKey":"MASTERKEY","queryId":"q","smkId":1},
            "command":"DOWNLOAD","presignedUrls":["https://bkt.storage.googleapis.com/o?X-Goog-Signature=SIG",null]},
            "success":true}"#;
        let r = parse_query_response(body).unwrap();
        let s = r.stage_info.as_ref().unwrap();
        assert_eq!(
            s.credential_names,
            vec!["AWS_KEY_ID", "AWS_SECRET_KEY", "AWS_TOKEN"]
        );
        assert!(r.has_encryption_material);
        assert_eq!(r.command, Some(FileCommand::Download));
        assert_eq!(r.presigned_urls.len(), 1);
        let dbg = format!("{r:?}");
        for secret in ["AKIAEXAMPLE", "wJalrSECRET", "FwoTOKEN", "MASTERKEY", "SIG"] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
    }

    #[test]
    fn malformed_responses() {
        assert!(
            parse_query_response(br#"{"data":{"chunks":[{"rowCount":1}]},"success":true}"#)
                .is_err()
        );
        assert!(
            parse_query_response(br#"{"data":{"chunks":[{"url":"nope"}]},"success":true}"#)
                .is_err()
        );
        assert!(
            parse_query_response(br#"{"data":{"queryId":"a","queryId":"b"},"success":true}"#)
                .is_err()
        );
        assert!(parse_query_response(br#"{"data":{"rowset":"x"},"success":true}"#).is_err());
        assert!(parse_query_response(b"").is_err());
    }

    #[test]
    fn monitoring() {
        let r = parse_monitoring_response(
            br#"{"data":{"queries":[{"status":"SUCCESS"}]},"success":true}"#,
        )
        .unwrap();
        assert_eq!(r.queries[0].status.as_deref(), Some("SUCCESS"));
        let r = parse_monitoring_response(
            br#"{"data":{"queries":[{"id":"q1","status":"FAILED_WITH_ERROR","errorCode":"100038","sqlText":"x"}]},"code":null,"success":true}"#,
        )
        .unwrap();
        assert_eq!(r.queries[0].error_code.as_deref(), Some("100038"));
    }
}
