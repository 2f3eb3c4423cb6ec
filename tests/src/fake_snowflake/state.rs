//! What the fake remembers: the request log, sessions and their tokens, statement results (for
//! polling, monitoring and `result_scan`), result chunks, tables, and staged files.
//!
//! Everything is bounded: the log, the stored results and the staged bytes each have a cap past
//! which the oldest entries go, so a long demo cannot grow the fake without limit.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::Value;

use super::results::{ColType, Column, ResultSet};

/// Most requests kept in the log (the oldest go first).
pub const MAX_LOGGED_REQUESTS: usize = 20_000;
/// Most statement results kept for polling and `result_scan`.
pub const MAX_STORED_RESULTS: usize = 2_000;
/// Most statements whose result chunks are kept for download.
pub const MAX_CHUNKED_RESULTS: usize = 64;
/// Most rows a table keeps.
pub const MAX_TABLE_ROWS: usize = 100_000;
/// Most issued tokens remembered.
pub const MAX_ISSUED_TOKENS: usize = 10_000;
/// Most bytes of staged files kept in all.
pub const MAX_STAGE_BYTES: usize = 64 << 20;

/// One request as the fake received it, body decoded (gzip undone).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, as sent (`/monitoring/queries//<qid>` keeps its double slash).
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// The host the request named (`:authority` in HTTP/2, else `Host`), port included if sent.
    pub host: String,
    /// Headers in order, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body after undoing any `Content-Encoding: gzip`.
    pub body: Vec<u8>,
    /// When it arrived.
    pub received: SystemTime,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// `sqlText` of a query-request body.
    pub fn sql_text(&self) -> Option<String> {
        self.json()?.get("sqlText")?.as_str().map(str::to_owned)
    }

    /// The value of query-string parameter `name` (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_owned())
        })
    }

    /// The QUERY_TAG the request carried: `parameters.QUERY_TAG` of a query request,
    /// `data.SESSION_PARAMETERS.QUERY_TAG` of a login request.
    pub fn query_tag(&self) -> Option<String> {
        let v = self.json()?;
        let tag = if self.is_query() {
            v.get("parameters")?.get("QUERY_TAG")?
        } else {
            v.get("data")?.get("SESSION_PARAMETERS")?.get("QUERY_TAG")?
        };
        tag.as_str().map(str::to_owned)
    }

    /// Whether this is `POST /queries/v1/query-request`.
    pub fn is_query(&self) -> bool {
        self.method == "POST" && self.path == "/queries/v1/query-request"
    }
}

/// A logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    /// `sessionId`.
    pub id: u64,
    /// The current session token.
    pub token: String,
    /// The master token (renews the session token).
    pub master_token: String,
    /// `LOGIN_NAME`.
    pub user: String,
    /// Current database, upper-cased.
    pub database: Option<String>,
    /// Current schema, upper-cased.
    pub schema: Option<String>,
    /// Current warehouse, upper-cased.
    pub warehouse: Option<String>,
    /// Current role.
    pub role: String,
}

/// A statement's outcome kept for polls, monitoring and `result_scan`.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The final answer envelope.
    pub envelope: Value,
    /// Polls still to be answered "in progress" (333333, or RUNNING for monitoring).
    pub pending: u32,
    /// The statement's SQL text.
    pub sql: String,
    /// The `requestId` it came with.
    pub request_id: Option<String>,
    /// The error `(code, sqlState, message)` it failed with, if it did.
    pub failed: Option<(String, String, String)>,
    /// The rows, for `result_scan`.
    pub result: Option<ResultSet>,
    /// An abort request cancelled it.
    pub aborted: bool,
    /// Submission time, ms since the epoch.
    pub submitted_ms: u128,
}

/// A table created through the fake.
#[derive(Debug, Clone)]
pub struct Table {
    /// Its columns.
    pub columns: Vec<Column>,
    /// Its rows.
    pub rows: Vec<Vec<Option<String>>>,
}

/// A file uploaded to the fake stage.
#[derive(Debug, Clone)]
pub struct StagedFile {
    /// Its bytes as uploaded.
    pub bytes: Vec<u8>,
    /// The `sfc-digest` metadata the client sent.
    pub digest: Option<String>,
    /// Upload time.
    pub uploaded: SystemTime,
}

/// The mutable part of the fake.
#[derive(Debug)]
pub struct Inner {
    next_session: u64,
    /// Sessions by id.
    pub sessions: HashMap<u64, Session>,
    /// Session id by session token (current and older tokens).
    pub by_token: HashMap<String, u64>,
    /// Session id by master token.
    pub by_master: HashMap<String, u64>,
    /// Session tokens that answer 390112.
    pub expired_tokens: HashSet<String>,
    /// Requests (by `requestId`, else SQL) already answered 390112 for `/*expire_token*/`.
    pub expired_requests: HashSet<String>,
    /// Attempts answered 503 so far for `/*fail:N*/`, by `requestId` (else SQL).
    pub failed_attempts: HashMap<String, u32>,
    results: HashMap<String, Stored>,
    results_order: VecDeque<String>,
    /// Result chunks by query id: raw bodies (before gzip).
    pub chunks: HashMap<String, Vec<Vec<u8>>>,
    chunks_order: VecDeque<String>,
    /// Tables by upper-cased name.
    pub tables: HashMap<String, Table>,
    /// Staged files by `STAGE/name`.
    pub stage: BTreeMap<String, StagedFile>,
    /// Every session and master token issued, oldest first (bounded).
    pub issued_tokens: VecDeque<String>,
    /// Login names whose key-pair JWT verified against their configured key.
    pub jwt_verified: Vec<String>,
    /// Why key-pair JWTs were refused.
    pub jwt_refused: Vec<String>,
}

impl Inner {
    fn new() -> Inner {
        let mut tables = HashMap::new();
        tables.insert("CUSTOMERS".to_owned(), customers());
        Inner {
            next_session: 1_000_001,
            sessions: HashMap::new(),
            by_token: HashMap::new(),
            by_master: HashMap::new(),
            expired_tokens: HashSet::new(),
            expired_requests: HashSet::new(),
            failed_attempts: HashMap::new(),
            results: HashMap::new(),
            results_order: VecDeque::new(),
            chunks: HashMap::new(),
            chunks_order: VecDeque::new(),
            tables,
            stage: BTreeMap::new(),
            issued_tokens: VecDeque::new(),
            jwt_verified: Vec::new(),
            jwt_refused: Vec::new(),
        }
    }

    /// Opens a session and returns it.
    pub fn open_session(
        &mut self,
        user: &str,
        database: Option<String>,
        schema: Option<String>,
        warehouse: Option<String>,
        role: Option<String>,
    ) -> Session {
        let id = self.next_session;
        self.next_session += 1;
        let s = Session {
            id,
            token: new_token(id),
            master_token: new_token(id),
            user: user.to_owned(),
            database,
            schema,
            warehouse,
            role: role.unwrap_or_else(|| "PUBLIC".to_owned()),
        };
        self.by_token.insert(s.token.clone(), id);
        self.by_master.insert(s.master_token.clone(), id);
        self.sessions.insert(id, s.clone());
        self.note_issued(&s.token);
        self.note_issued(&s.master_token);
        s
    }

    fn note_issued(&mut self, token: &str) {
        self.issued_tokens.push_back(token.to_owned());
        while self.issued_tokens.len() > MAX_ISSUED_TOKENS {
            self.issued_tokens.pop_front();
        }
    }

    /// Gives the session a new session token; the old one then answers 390112.
    pub fn renew(&mut self, id: u64) -> Option<Session> {
        let s = self.sessions.get_mut(&id)?;
        self.expired_tokens.insert(s.token.clone());
        s.token = new_token(id);
        let s = s.clone();
        self.by_token.insert(s.token.clone(), id);
        self.note_issued(&s.token);
        Some(s)
    }

    /// Ends a session: its tokens are forgotten.
    pub fn close_session(&mut self, id: u64) {
        if let Some(s) = self.sessions.remove(&id) {
            self.by_token.retain(|_, v| *v != id);
            self.by_master.remove(&s.master_token);
        }
    }

    /// Keeps a statement's outcome, evicting the oldest past [`MAX_STORED_RESULTS`].
    pub fn store(&mut self, qid: &str, stored: Stored) {
        if self.results.insert(qid.to_owned(), stored).is_none() {
            self.results_order.push_back(qid.to_owned());
        }
        while self.results_order.len() > MAX_STORED_RESULTS {
            if let Some(old) = self.results_order.pop_front() {
                self.results.remove(&old);
                self.chunks.remove(&old);
            }
        }
    }

    /// Keeps a result's chunks, evicting the oldest past [`MAX_CHUNKED_RESULTS`].
    pub fn insert_chunks(&mut self, qid: &str, bodies: Vec<Vec<u8>>) {
        if self.chunks.insert(qid.to_owned(), bodies).is_none() {
            self.chunks_order.push_back(qid.to_owned());
        }
        while self.chunks_order.len() > MAX_CHUNKED_RESULTS {
            if let Some(old) = self.chunks_order.pop_front() {
                self.chunks.remove(&old);
            }
        }
    }

    /// A stored outcome.
    pub fn stored(&self, qid: &str) -> Option<&Stored> {
        self.results.get(qid)
    }

    /// A stored outcome, mutable.
    pub fn stored_mut(&mut self, qid: &str) -> Option<&mut Stored> {
        self.results.get_mut(qid)
    }

    /// The query id of the stored statement sent with `request_id`.
    pub fn qid_for_request(&self, request_id: &str) -> Option<String> {
        self.results
            .iter()
            .find(|(_, s)| s.request_id.as_deref() == Some(request_id))
            .map(|(q, _)| q.clone())
    }

    /// Stages a file, evicting the oldest files past [`MAX_STAGE_BYTES`].
    pub fn put_staged(&mut self, key: String, file: StagedFile) {
        self.stage.insert(key, file);
        while self.stage.values().map(|f| f.bytes.len()).sum::<usize>() > MAX_STAGE_BYTES {
            let oldest = self
                .stage
                .iter()
                .min_by_key(|(_, f)| f.uploaded)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.stage.remove(&k);
                }
                None => break,
            }
        }
    }
}

/// The canned `CUSTOMERS` table.
fn customers() -> Table {
    let rows = [
        ("1", "Ada Lovelace", "ada@example.com"),
        ("2", "Grace Hopper", "grace@example.com"),
        ("3", "Alan Turing", "alan@example.com"),
    ]
    .iter()
    .map(|(id, name, email)| {
        vec![
            Some((*id).to_owned()),
            Some((*name).to_owned()),
            Some((*email).to_owned()),
        ]
    })
    .collect();
    Table {
        columns: vec![
            Column::new("ID", ColType::Fixed { scale: 0 }),
            Column::new("NAME", ColType::Text),
            Column::new("EMAIL", ColType::Text),
        ],
        rows,
    }
}

fn new_token(id: u64) -> String {
    format!(
        "ver:1-hint:{id}-{}",
        uuid::Uuid::now_v7()
            .simple()
            .to_string()
            .to_ascii_uppercase()
    )
}

/// Behaviour switches fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A password (or OAuth/PAT token) that login refuses.
    pub bad_password: Option<String>,
    /// The host name put in chunk and presigned URLs (else the request's own host).
    pub storage_host: Option<String>,
    /// `https` or `http`.
    pub scheme: &'static str,
    /// The listen port, used in generated URLs.
    pub port: u16,
    /// Gzip JSON answers above 4 KiB when the client accepts gzip (as Snowflake does).
    pub gzip_responses: bool,
    /// Key-pair users' public keys by upper-cased login name.
    pub jwt_keys: std::collections::HashMap<String, super::handlers::JwtKey>,
    /// Whether requests are kept in the log (off for load tests).
    pub record_requests: bool,
}

/// The fake's shared state.
#[derive(Debug)]
pub struct State {
    /// Fixed settings.
    pub settings: Settings,
    log: Mutex<VecDeque<RecordedRequest>>,
    /// Sessions, results, tables, stage.
    pub inner: Mutex<Inner>,
}

impl State {
    /// Empty state with the canned tables.
    pub fn new(settings: Settings) -> State {
        State {
            settings,
            log: Mutex::new(VecDeque::new()),
            inner: Mutex::new(Inner::new()),
        }
    }

    /// Appends to the request log.
    pub fn record(&self, r: RecordedRequest) {
        if let Ok(mut log) = self.log.lock() {
            log.push_back(r);
            while log.len() > MAX_LOGGED_REQUESTS {
                log.pop_front();
            }
        }
    }

    /// A copy of the request log.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        if let Ok(mut l) = self.log.lock() {
            l.clear();
        }
    }
}
