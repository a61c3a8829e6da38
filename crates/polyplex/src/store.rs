//! The store: gateway keys and usage records, in SQLite (one binary, no other
//! service) or Postgres (replicas share it). One schema, written in the SQL
//! both accept, through sqlx's `Any` driver; the tables are created on first
//! connect. The usage writer's own connection ([`Store::writer`]) uses the
//! database's own driver instead: the `Any` driver copies every value it
//! binds once more, through `Display` (fifteenth and sixteenth sessions,
//! docs/performance.md), and the writer binds 18 per record.
//!
//! Only a key's SHA-256 is stored. Money is `DOUBLE PRECISION` USD; times are
//! Unix seconds (keys) and milliseconds (usage).

use crate::budget::BudgetReset;
use crate::usage::UsageRecord;
use polyplex_types::JsonMap;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS polyplex_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        key_hint TEXT NOT NULL,
        models TEXT,
        rpm BIGINT,
        tpm BIGINT,
        max_concurrent BIGINT,
        budget_usd DOUBLE PRECISION,
        spent_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        expires_at BIGINT,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT,
        budget_reset TEXT,
        period_start BIGINT NOT NULL DEFAULT 0,
        period_spent_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        metadata TEXT,
        user_rpm BIGINT,
        user_tpm BIGINT,
        user_budget_usd DOUBLE PRECISION
    )",
    "CREATE TABLE IF NOT EXISTS polyplex_usage (
        request_id TEXT NOT NULL,
        key_id TEXT,
        endpoint TEXT NOT NULL,
        requested_model TEXT NOT NULL,
        provider TEXT,
        model TEXT,
        status BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        cache_write_tokens BIGINT NOT NULL DEFAULT 0,
        estimated BIGINT NOT NULL,
        cost_usd DOUBLE PRECISION NOT NULL,
        latency_ms BIGINT NOT NULL,
        ttft_ms BIGINT,
        attempts BIGINT NOT NULL,
        stream BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        end_user TEXT,
        metadata TEXT
    )",
    // Responses kept for `previous_response_id` and retrieval (OpenAI's
    // Responses API, `store`): the items this response added to its
    // conversation (its input, then its output), the answer, and the
    // response it continued (`previous`; its items come before these). A
    // row from before `previous` existed holds its whole conversation.
    "CREATE TABLE IF NOT EXISTS polyplex_responses (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        items TEXT NOT NULL,
        response TEXT NOT NULL,
        previous TEXT
    )",
    "CREATE INDEX IF NOT EXISTS polyplex_responses_created ON polyplex_responses (created_at)",
    // Conversations (OpenAI's Conversations API, `crate::conversations`)
    // and their items, in order (`seq`).
    "CREATE TABLE IF NOT EXISTS polyplex_conversations (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        metadata TEXT
    )",
    "CREATE TABLE IF NOT EXISTS polyplex_conversation_items (
        conversation_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        item_id TEXT NOT NULL,
        item TEXT NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    )",
    // Files (OpenAI's Files API; content in base64, so one column type
    // serves SQLite and Postgres), batches (the batch object as its API
    // answers it, and which replica runs it until when) and each batch
    // request's answer until the batch ends (`crate::batches`).
    "CREATE TABLE IF NOT EXISTS polyplex_files (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        content TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS polyplex_files_owner ON polyplex_files (owner, created_at)",
    "CREATE TABLE IF NOT EXISTS polyplex_batches (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        status TEXT NOT NULL,
        batch TEXT NOT NULL,
        lease_until BIGINT NOT NULL DEFAULT 0,
        holder TEXT
    )",
    "CREATE INDEX IF NOT EXISTS polyplex_batches_status ON polyplex_batches (status, lease_until)",
    "CREATE TABLE IF NOT EXISTS polyplex_batch_results (
        batch_id TEXT NOT NULL,
        line BIGINT NOT NULL,
        ok BIGINT NOT NULL,
        result TEXT NOT NULL,
        PRIMARY KEY (batch_id, line)
    )",
    "CREATE INDEX IF NOT EXISTS polyplex_usage_created ON polyplex_usage (created_at)",
    "CREATE INDEX IF NOT EXISTS polyplex_usage_key ON polyplex_usage (key_id, created_at)",
];

/// Columns added to a table after its first release: a store made by an
/// older polyplex gets them (with their default) when it is next opened.
/// Each is `(table, column, definition)`.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    (
        "polyplex_usage",
        "cache_write_tokens",
        "BIGINT NOT NULL DEFAULT 0",
    ),
    ("polyplex_responses", "previous", "TEXT"),
    ("polyplex_usage", "end_user", "TEXT"),
    ("polyplex_usage", "metadata", "TEXT"),
    ("polyplex_keys", "budget_reset", "TEXT"),
    ("polyplex_keys", "period_start", "BIGINT NOT NULL DEFAULT 0"),
    (
        "polyplex_keys",
        "period_spent_usd",
        "DOUBLE PRECISION NOT NULL DEFAULT 0",
    ),
    ("polyplex_keys", "metadata", "TEXT"),
    ("polyplex_keys", "user_rpm", "BIGINT"),
    ("polyplex_keys", "user_tpm", "BIGINT"),
    ("polyplex_keys", "user_budget_usd", "DOUBLE PRECISION"),
];

/// The longest chain of responses a conversation is read through (each
/// `previous_response_id` one link); longer ones are cut there.
const MAX_CHAIN: i64 = 100_000;

/// Why a kept conversation could not be read.
#[derive(Debug)]
pub enum Chain {
    /// The store failed.
    Store(StoreError),
    /// An earlier response of the conversation (this id) is gone.
    Broken(String),
}

/// How long a kept response (Responses API) is kept: OpenAI's 30 days.
pub const RESPONSE_DAYS: i64 = 30;

/// Usage rows per INSERT statement (20 parameters each; SQLite takes 32,766
/// parameters a statement, Postgres 65,535).
const ROWS_PER_INSERT: usize = 64;
const USAGE_COLUMNS: usize = 20;
/// The statement sizes a batch is cut into: 64 rows while there are that
/// many, then the powers of two of the rest (so 7 statements in all, each
/// prepared once per connection and kept; preparing a 64-row statement
/// again for every batch was most of the writer's work).
const INSERT_SIZES: [usize; 7] = [ROWS_PER_INSERT, 32, 16, 8, 4, 2, 1];

/// Which of [`INSERT_SIZES`] writes the next rows, with `left` rows still
/// to write (at least one).
fn insert_slot(left: usize) -> usize {
    INSERT_SIZES
        .iter()
        .position(|&n| n <= left)
        .unwrap_or(INSERT_SIZES.len() - 1)
}

/// `INSERT INTO polyplex_usage (...) VALUES ($1, ..., $20), ($21, ...), ...`
/// for `rows` rows; SQLite gets plain `?`s, because it looks each `$N` name
/// up among those before it (quadratic in a statement this size: the
/// writer spent nine tenths of its time there).
fn usage_insert_sql(rows: usize, numbered: bool) -> String {
    use std::fmt::Write;
    let mut sql = String::with_capacity(260 + rows * USAGE_COLUMNS * 6);
    sql.push_str(
        "INSERT INTO polyplex_usage (request_id, key_id, endpoint, requested_model, \
         provider, model, status, prompt_tokens, completion_tokens, cached_tokens, \
         cache_write_tokens, estimated, cost_usd, latency_ms, ttft_ms, attempts, stream, created_at, \
         end_user, metadata) VALUES ",
    );
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..USAGE_COLUMNS {
            if c > 0 {
                sql.push_str(", ");
            }
            if numbered {
                let _ = write!(sql, "${}", r * USAGE_COLUMNS + c + 1);
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

/// The columns of `polyplex_keys` a [`KeyRow`] reads, in its order.
const KEY_COLUMNS: &str = "id, name, key_hash, key_hint, models, rpm, tpm, max_concurrent, \
     budget_usd, spent_usd, expires_at, created_at, revoked_at, budget_reset, period_start, \
     period_spent_usd, metadata, user_rpm, user_tpm, user_budget_usd";

#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(String);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// One gateway key as stored (never the key itself).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub key_hash: String,
    /// `plx-` and the key's last four characters, to tell keys apart.
    pub key_hint: String,
    pub models: Option<Vec<String>>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub budget_usd: Option<f64>,
    /// Everything the key has spent.
    pub spent_usd: f64,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// The budget starts again every day, week or month (None: it never does).
    pub budget_reset: Option<BudgetReset>,
    /// Unix seconds at which the period `period_spent_usd` covers began
    /// (0 for a key without `budget_reset`: then it is all time).
    pub period_start: i64,
    /// What the key spent from `period_start` on, as the store has it.
    pub period_spent_usd: f64,
    /// Metadata pairs every request made with the key is tagged with (over
    /// the request's own).
    pub metadata: Option<JsonMap>,
    /// Requests per minute each end user (`user`, `safety_identifier`) of
    /// the key may make.
    pub user_rpm: Option<u64>,
    /// Tokens per minute each end user of the key may use.
    pub user_tpm: Option<u64>,
    /// What each end user of the key may spend, in USD (per budget period
    /// with `budget_reset`).
    pub user_budget_usd: Option<f64>,
}

impl KeyRow {
    /// What counts against the budget at Unix second `now`, as the store
    /// has it: the current period's spend (none yet if the store's period is
    /// an earlier one), or everything without `budget_reset`.
    pub fn budget_spent(&self, now: i64) -> f64 {
        match self.budget_reset {
            None => self.spent_usd,
            Some(r) if self.period_start == r.start(now) => self.period_spent_usd,
            Some(_) => 0.0,
        }
    }
}

/// A key's spend as the store has it after a write of usage records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredSpend {
    pub spent_usd: f64,
    pub period_start: i64,
    pub period_spent_usd: f64,
}

/// The settings of a key that `PATCH` may change; `Some(None)` clears one.
#[derive(Debug, Default, Clone)]
pub struct KeyChanges {
    pub name: Option<String>,
    pub models: Option<Option<Vec<String>>>,
    pub rpm: Option<Option<u64>>,
    pub tpm: Option<Option<u64>>,
    pub max_concurrent: Option<Option<u64>>,
    pub budget_usd: Option<Option<f64>>,
    pub expires_at: Option<Option<i64>>,
    pub budget_reset: Option<Option<BudgetReset>>,
    pub metadata: Option<Option<JsonMap>>,
    pub user_rpm: Option<Option<u64>>,
    pub user_tpm: Option<Option<u64>>,
    pub user_budget_usd: Option<Option<f64>>,
}

/// How a usage report groups its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Model,
    Provider,
    Day,
    /// Whole UTC hours.
    Hour,
    /// The API endpoint (`chat.completions`, `embeddings`, `responses`,
    /// `images.generations`, ...).
    Endpoint,
    /// The end user a request named (`user`, `safety_identifier`).
    User,
    /// The value a request's metadata gives this key (`metadata.<key>`).
    Metadata(String),
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        match s {
            "key" => Some(GroupBy::Key),
            "model" => Some(GroupBy::Model),
            "provider" => Some(GroupBy::Provider),
            "day" => Some(GroupBy::Day),
            "hour" => Some(GroupBy::Hour),
            "endpoint" => Some(GroupBy::Endpoint),
            "user" => Some(GroupBy::User),
            _ => s
                .strip_prefix("metadata.")
                .filter(|k| metadata_key_ok(k))
                .map(|k| GroupBy::Metadata(k.to_string())),
        }
    }

    /// The grouping as `by` names it (and a report's rows name their group).
    pub fn name(&self) -> std::borrow::Cow<'static, str> {
        match self {
            GroupBy::Key => "key".into(),
            GroupBy::Model => "model".into(),
            GroupBy::Provider => "provider".into(),
            GroupBy::Day => "day".into(),
            GroupBy::Hour => "hour".into(),
            GroupBy::Endpoint => "endpoint".into(),
            GroupBy::User => "user".into(),
            GroupBy::Metadata(k) => format!("metadata.{k}").into(),
        }
    }
}

/// True for a metadata key a report can name: one to 64 characters (the
/// most a request's may have), none of them a quote or a backslash (a
/// SQLite JSON path quotes the key as it is).
pub fn metadata_key_ok(k: &str) -> bool {
    (1..=polyplex_types::validate::METADATA_KEY_CHARS).contains(&k.chars().count())
        && !k.contains(['"', '\\'])
}

/// The texts a usage query binds after its time (`$1`), each numbered as
/// it is added, and the SQL that reads them.
struct Params {
    postgres: bool,
    texts: Vec<String>,
}

impl Params {
    fn new(postgres: bool) -> Params {
        Params {
            postgres,
            texts: Vec::new(),
        }
    }

    /// `text` bound; its parameter.
    fn bind(&mut self, text: String) -> String {
        self.texts.push(text);
        format!("${}", self.texts.len() + 1)
    }

    /// The value a record's metadata gives `key`, or NULL.
    fn metadata_value(&mut self, key: &str) -> String {
        if self.postgres {
            let at = self.bind(key.to_string());
            format!("(CAST(metadata AS jsonb) ->> {at})")
        } else {
            let at = self.bind(format!("$.\"{key}\""));
            format!("json_extract(metadata, {at})")
        }
    }

    /// The conditions (each ` AND ...`) that pick what `only` picks.
    fn only(&mut self, only: &Only) -> String {
        let mut filter = String::new();
        if let Some(k) = &only.key_id {
            let at = self.bind(k.clone());
            filter.push_str(&format!(" AND key_id = {at}"));
        }
        for (k, v) in &only.metadata {
            let value = self.metadata_value(k);
            let at = self.bind(v.clone());
            filter.push_str(&format!(" AND {value} = {at}"));
        }
        if let Some(id) = &only.request_id {
            let at = self.bind(id.clone());
            filter.push_str(&format!(" AND request_id = {at}"));
        }
        if let Some(until) = only.until_ms {
            let at = self.bind(until.to_string());
            filter.push_str(&format!(" AND created_at < CAST({at} AS BIGINT)"));
        }
        filter
    }
}

/// Which records a usage report counts, besides their time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Only {
    /// One key's (by its id).
    pub key_id: Option<String>,
    /// Those whose metadata gives each of these keys this value.
    pub metadata: Vec<(String, String)>,
    /// Those of the request with this id.
    pub request_id: Option<String>,
    /// Those made before this time (Unix ms).
    pub until_ms: Option<i64>,
}

/// One usage record as the store has it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredRecord {
    pub request_id: String,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    pub key_id: Option<String>,
    pub endpoint: String,
    pub requested_model: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub status: u16,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    /// The tokens were counted by polyplex, the upstream having said none.
    pub estimated: bool,
    pub cost_usd: f64,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub attempts: u32,
    pub stream: bool,
    pub user: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

/// Where a page of usage records ended: the next page is the records
/// before it (older, or as old with a smaller request id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at_ms: i64,
    pub request_id: String,
}

impl Cursor {
    /// The cursor after `r`.
    pub fn after(r: &StoredRecord) -> Cursor {
        Cursor {
            at_ms: r.created_at_ms,
            request_id: r.request_id.clone(),
        }
    }

    /// As a client sends it back: `<ms>_<request id>`.
    pub fn text(&self) -> String {
        format!("{}_{}", self.at_ms, self.request_id)
    }

    pub fn parse(s: &str) -> Option<Cursor> {
        let (ms, id) = s.split_once('_')?;
        Some(Cursor {
            at_ms: ms.parse().ok()?,
            request_id: id.to_string(),
        })
    }
}

/// The columns of a usage record [`StoredRecord`] reads.
const RECORD_COLUMNS: &str = "request_id, created_at, key_id, endpoint, requested_model, \
     provider, model, status, prompt_tokens, completion_tokens, cached_tokens, \
     cache_write_tokens, estimated, cost_usd, latency_ms, ttft_ms, attempts, stream, end_user, \
     metadata";

fn stored_record(r: &AnyRow) -> Result<StoredRecord, sqlx::Error> {
    let n = |c: &str| -> Result<u64, sqlx::Error> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
    let metadata: Option<String> = r.try_get("metadata")?;
    Ok(StoredRecord {
        request_id: r.try_get("request_id")?,
        created_at_ms: r.try_get("created_at")?,
        key_id: r.try_get("key_id")?,
        endpoint: r.try_get("endpoint")?,
        requested_model: r.try_get("requested_model")?,
        provider: r.try_get("provider")?,
        model: r.try_get("model")?,
        status: n("status")?.min(u16::MAX as u64) as u16,
        prompt_tokens: n("prompt_tokens")?,
        completion_tokens: n("completion_tokens")?,
        cached_tokens: n("cached_tokens")?,
        cache_write_tokens: n("cache_write_tokens")?,
        estimated: n("estimated")? != 0,
        cost_usd: crate::usage::rounded_cost(r.try_get("cost_usd")?),
        latency_ms: n("latency_ms")?,
        ttft_ms: r
            .try_get::<Option<i64>, _>("ttft_ms")?
            .map(|t| t.max(0) as u64),
        attempts: n("attempts")?.min(u32::MAX as u64) as u32,
        stream: n("stream")? != 0,
        user: r.try_get("end_user")?,
        metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
    })
}

/// One row of a usage report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    /// The key id, model, provider or day (`YYYY-MM-DD`, UTC) of the group.
    pub group: Option<String>,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of `prompt_tokens`, those read from the provider's prompt cache...
    pub cached_tokens: u64,
    /// ...and those written to it.
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
}

/// The usage writer's connection through the database's own driver.
#[derive(Clone)]
enum Native {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// The usage writer's own connection ([`Store::writer`]): usage is
    /// written through it, and `pool` is the gateway's, not closed by
    /// [`Store::close`].
    native: Option<Native>,
    postgres: bool,
    /// The usage INSERT for each of [`INSERT_SIZES`], in that order.
    inserts: std::sync::Arc<[String]>,
    /// The URL connected to (with `mode=rwc` for SQLite), for the usage
    /// writer's own connection ([`Store::writer`]). Never logged.
    url: std::sync::Arc<str>,
    /// An in-memory SQLite database: one connection, which everyone shares.
    one: bool,
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A SQLite URL that creates its file when missing; `:memory:` databases get
/// one connection (each connection would have a database of its own).
fn sqlite_url(url: &str) -> (String, bool) {
    let memory = url.contains(":memory:") || url.contains("mode=memory");
    if memory || url.contains("mode=") {
        return (url.to_string(), memory);
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    (format!("{url}{sep}mode=rwc"), false)
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.map(|n| n.max(0) as u64)
}

fn key_row(r: &AnyRow) -> Result<KeyRow, sqlx::Error> {
    let models: Option<String> = r.try_get("models")?;
    Ok(KeyRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        key_hash: r.try_get("key_hash")?,
        key_hint: r.try_get("key_hint")?,
        models: models.and_then(|m| serde_json::from_str(&m).ok()),
        rpm: opt_u64(r.try_get("rpm")?),
        tpm: opt_u64(r.try_get("tpm")?),
        max_concurrent: opt_u64(r.try_get("max_concurrent")?),
        budget_usd: r.try_get("budget_usd")?,
        spent_usd: r.try_get("spent_usd")?,
        expires_at: r.try_get("expires_at")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
        budget_reset: r
            .try_get::<Option<String>, _>("budget_reset")?
            .as_deref()
            .and_then(BudgetReset::parse),
        period_start: r.try_get("period_start")?,
        period_spent_usd: r.try_get("period_spent_usd")?,
        metadata: r
            .try_get::<Option<String>, _>("metadata")?
            .and_then(|m| serde_json::from_str(&m).ok()),
        user_rpm: opt_u64(r.try_get("user_rpm")?),
        user_tpm: opt_u64(r.try_get("user_tpm")?),
        user_budget_usd: r.try_get("user_budget_usd")?,
    })
}

/// A key's metadata as stored: a JSON object, or NULL for none.
fn metadata_json(m: &Option<JsonMap>) -> Option<String> {
    m.as_ref()
        .filter(|m| !m.is_empty())
        .and_then(|m| serde_json::to_string(m).ok())
}

fn models_json(m: &Option<Vec<String>>) -> Option<String> {
    m.as_ref()
        .map(|m| serde_json::Value::from(m.clone()).to_string())
}

fn as_i64(v: Option<u64>) -> Option<i64> {
    v.map(|n| n.min(i64::MAX as u64) as i64)
}

/// A pool of at most `max` connections; with `keep`, they are opened at
/// once and never closed for being idle or old.
async fn open_pool(url: &str, postgres: bool, max: u32, keep: bool) -> Result<AnyPool, StoreError> {
    let sqlite = !postgres;
    pool_options::<sqlx::Any>(max, keep)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    sqlx::raw_sql(SQLITE_PRAGMAS).execute(conn).await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| cannot_open(url, e))
}

/// At most `max` connections; with `keep`, opened at once and never closed
/// for being idle or old.
fn pool_options<DB: sqlx::Database>(max: u32, keep: bool) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(max)
        .min_connections(if keep { 1 } else { 0 })
        .idle_timeout(if keep {
            None
        } else {
            Some(Duration::from_secs(300))
        })
        .max_lifetime(if keep {
            None
        } else {
            Some(Duration::from_secs(1800))
        })
        .acquire_timeout(Duration::from_secs(5))
}

/// Every SQLite connection's settings. WAL with NORMAL sync: a commit
/// survives the process dying (not the machine losing power) without an
/// fsync each; a 256 KiB page cache per connection (the usage table is
/// appended to, the keys table is small).
const SQLITE_PRAGMAS: &str = "PRAGMA synchronous=NORMAL; PRAGMA cache_size=-256";

fn cannot_open(url: &str, e: sqlx::Error) -> StoreError {
    StoreError(format!("cannot open {}: {e}", redact_url(url)))
}

impl Store {
    /// Connects (creating a SQLite file if needed) and creates the tables.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let (url, one) = if postgres {
            (url.to_string(), false)
        } else {
            sqlite_url(url)
        };
        // SQLite takes one writer at a time anyway; one connection (and
        // its thread and caches) is all the gateway's reads need of it. It
        // is opened now, on this thread, and kept for good: a connection
        // the pool opened later would start its thread from whichever
        // thread asked, and take that thread's scheduling policy (the usage
        // writer's is `SCHED_IDLE`: `background.rs`). Opened lazily, on a
        // host kept busy, the gateway's store calls (keys, kept responses,
        // batches) and the usage writer's INSERTs waited seconds each (a
        // graceful shutdown took 30 s; kept, 0.04 s).
        let pool = open_pool(&url, postgres, if postgres { 8 } else { 1 }, !postgres).await?;
        let store = Store {
            pool,
            native: None,
            postgres,
            inserts: INSERT_SIZES
                .iter()
                .map(|&n| usage_insert_sql(n, postgres))
                .collect(),
            url: url.into(),
            one,
        };
        if !postgres && !one {
            // Readers do not wait for the usage writer.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&store.pool)
                .await?;
        }
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&store.pool).await?;
        }
        store.add_columns().await?;
        Ok(store)
    }

    /// Adds the [`ADDED_COLUMNS`] a store made by an older polyplex lacks.
    /// Replicas opening the same Postgres database at once are fine: there
    /// `ADD COLUMN IF NOT EXISTS`; SQLite has no such clause, so a column
    /// another process added in between is taken as added.
    async fn add_columns(&self) -> Result<(), StoreError> {
        for (table, column, definition) in ADDED_COLUMNS {
            let probe = format!("SELECT {column} FROM {table} WHERE 1 = 0");
            // Built from the constants above only.
            if sqlx::query(AssertSqlSafe(probe.clone()))
                .fetch_optional(&self.pool)
                .await
                .is_ok()
            {
                continue;
            }
            let guard = if self.postgres { "IF NOT EXISTS " } else { "" };
            let alter = format!("ALTER TABLE {table} ADD COLUMN {guard}{column} {definition}");
            if let Err(e) = sqlx::query(AssertSqlSafe(alter)).execute(&self.pool).await {
                sqlx::query(AssertSqlSafe(probe))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|_| StoreError::from(e))?;
            }
            tracing::info!(
                table,
                column,
                "store: column added to a table made by an older polyplex"
            );
        }
        Ok(())
    }

    /// The usage writer's own connection to the same database, made on the
    /// calling thread (a SQLite connection's worker thread is started by,
    /// and takes its scheduling policy from, the thread that opens it; see
    /// `background.rs`). It is kept open for good, so it is never
    /// reopened from another thread. None for an in-memory SQLite
    /// database, which has one connection only: the writer shares it.
    pub async fn writer(&self) -> Result<Option<Store>, StoreError> {
        if self.one {
            return Ok(None);
        }
        let native = if self.postgres {
            Native::Postgres(
                pool_options(2, true)
                    .connect(&self.url)
                    .await
                    .map_err(|e| cannot_open(&self.url, e))?,
            )
        } else {
            Native::Sqlite(
                pool_options(1, true)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::raw_sql(SQLITE_PRAGMAS).execute(conn).await?;
                            Ok(())
                        })
                    })
                    .connect(&self.url)
                    .await
                    .map_err(|e| cannot_open(&self.url, e))?,
            )
        };
        Ok(Some(Store {
            native: Some(native),
            ..self.clone()
        }))
    }

    /// The gateway's connections (the store's tables of other modules).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// Whether the store answers (readiness).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub async fn insert_key(&self, k: &KeyRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO polyplex_keys (id, name, key_hash, key_hint, models, rpm, tpm, \
             max_concurrent, budget_usd, spent_usd, expires_at, created_at, revoked_at, \
             budget_reset, period_start, period_spent_usd, metadata, user_rpm, user_tpm, \
             user_budget_usd) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $20)",
        )
        .bind(&k.id)
        .bind(&k.name)
        .bind(&k.key_hash)
        .bind(&k.key_hint)
        .bind(models_json(&k.models))
        .bind(as_i64(k.rpm))
        .bind(as_i64(k.tpm))
        .bind(as_i64(k.max_concurrent))
        .bind(k.budget_usd)
        .bind(k.spent_usd)
        .bind(k.expires_at)
        .bind(k.created_at)
        .bind(k.revoked_at)
        .bind(k.budget_reset.map(BudgetReset::as_str))
        .bind(k.period_start)
        .bind(k.period_spent_usd)
        .bind(metadata_json(&k.metadata))
        .bind(as_i64(k.user_rpm))
        .bind(as_i64(k.user_tpm))
        .bind(k.user_budget_usd)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every key, revoked ones too, oldest first.
    pub async fn keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        // Built from constants only.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM polyplex_keys ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(key_row).collect::<Result<_, _>>()?)
    }

    pub async fn key(&self, id: &str) -> Result<Option<KeyRow>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM polyplex_keys WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(key_row).transpose()?)
    }

    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRow>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM polyplex_keys WHERE key_hash = $1"
        )))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(key_row).transpose()?)
    }

    /// Applies `c` to key `id`; the key after it, or None if there is no such key.
    pub async fn update_key(&self, id: &str, c: &KeyChanges) -> Result<Option<KeyRow>, StoreError> {
        let Some(mut k) = self.key(id).await? else {
            return Ok(None);
        };
        if let Some(n) = &c.name {
            k.name = n.clone();
        }
        if let Some(m) = &c.models {
            k.models = m.clone();
        }
        if let Some(v) = c.rpm {
            k.rpm = v;
        }
        if let Some(v) = c.tpm {
            k.tpm = v;
        }
        if let Some(v) = c.max_concurrent {
            k.max_concurrent = v;
        }
        if let Some(v) = c.budget_usd {
            k.budget_usd = v;
        }
        if let Some(v) = c.expires_at {
            k.expires_at = v;
        }
        let reset_changed = c.budget_reset.is_some_and(|r| r != k.budget_reset);
        if let Some(v) = c.budget_reset {
            k.budget_reset = v;
        }
        if let Some(v) = &c.metadata {
            k.metadata = v.clone();
        }
        if let Some(v) = c.user_rpm {
            k.user_rpm = v;
        }
        if let Some(v) = c.user_tpm {
            k.user_tpm = v;
        }
        if let Some(v) = c.user_budget_usd {
            k.user_budget_usd = v;
        }
        // Only the settings: spent_usd is the usage writer's, and a
        // read-modify-write of it here would lose what it added meanwhile.
        sqlx::query(
            "UPDATE polyplex_keys SET name = $1, models = $2, rpm = $3, tpm = $4, \
             max_concurrent = $5, budget_usd = $6, expires_at = $7, budget_reset = $8, \
             metadata = $9, user_rpm = $10, user_tpm = $11, user_budget_usd = $12 WHERE id = $13",
        )
        .bind(&k.name)
        .bind(models_json(&k.models))
        .bind(as_i64(k.rpm))
        .bind(as_i64(k.tpm))
        .bind(as_i64(k.max_concurrent))
        .bind(k.budget_usd)
        .bind(k.expires_at)
        .bind(k.budget_reset.map(BudgetReset::as_str))
        .bind(metadata_json(&k.metadata))
        .bind(as_i64(k.user_rpm))
        .bind(as_i64(k.user_tpm))
        .bind(k.user_budget_usd)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if reset_changed {
            self.restart_period(id, k.budget_reset).await?;
        }
        self.key(id).await
    }

    /// A key's `budget_reset` changed: its current period's spend is what
    /// its usage records say it spent since the period began (all time
    /// without a reset), in one statement with the records it sums, so a
    /// write of the usage writer's is either in the sum or after it.
    async fn restart_period(&self, id: &str, reset: Option<BudgetReset>) -> Result<(), StoreError> {
        let start = reset.map_or(0, |r| r.start(unix_now()));
        sqlx::query(
            "UPDATE polyplex_keys SET period_start = $1, period_spent_usd = \
             (SELECT CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) FROM polyplex_usage \
              WHERE key_id = $2 AND created_at >= $3) WHERE id = $2",
        )
        .bind(start)
        .bind(id)
        .bind(start.saturating_mul(1000))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Revokes key `id` (kept, for its usage history); the key after it.
    pub async fn revoke_key(&self, id: &str) -> Result<Option<KeyRow>, StoreError> {
        sqlx::query(
            "UPDATE polyplex_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(unix_now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.key(id).await
    }

    /// Writes a batch of usage records and adds their cost to their keys'
    /// spend, in one transaction. Returns each key's spend after it.
    pub async fn write_usage(
        &self,
        records: &[UsageRecord],
    ) -> Result<HashMap<String, StoredSpend>, StoreError> {
        Ok(match &self.native {
            Some(Native::Sqlite(p)) => write_usage_to(p, &self.inserts, records).await?,
            Some(Native::Postgres(p)) => write_usage_to(p, &self.inserts, records).await?,
            None => write_usage_to(&self.pool, &self.inserts, records).await?,
        })
    }

    /// Requests, errors, tokens and cost since `since_ms`, grouped by `by`,
    /// largest cost first (days: oldest first).
    pub async fn usage_report(
        &self,
        by: GroupBy,
        since_ms: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.usage_report_of(by, since_ms, &Only::default()).await
    }

    /// [`Store::usage_report`] of the records `only` picks.
    pub async fn usage_report_of(
        &self,
        by: GroupBy,
        since_ms: i64,
        only: &Only,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let mut params = Params::new(self.postgres);
        let filter = params.only(only);
        let group = match &by {
            GroupBy::Key => "key_id".to_string(),
            GroupBy::Model => "COALESCE(model, requested_model)".to_string(),
            GroupBy::Provider => "provider".to_string(),
            GroupBy::Endpoint => "endpoint".to_string(),
            GroupBy::User => "end_user".to_string(),
            // Whole UTC days or hours, counted from the epoch; named below.
            GroupBy::Day => "CAST(created_at / 86400000 AS BIGINT)".to_string(),
            GroupBy::Hour => "CAST(created_at / 3600000 AS BIGINT)".to_string(),
            GroupBy::Metadata(k) => params.metadata_value(k),
        };
        let in_time = matches!(by, GroupBy::Day | GroupBy::Hour);
        let order = if in_time {
            "g ASC"
        } else {
            "cost DESC, requests DESC"
        };
        let sql = format!(
            "SELECT {group} AS g, CAST(COUNT(*) AS BIGINT) AS requests, \
             CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT) AS errors, \
             CAST(SUM(prompt_tokens) AS BIGINT) AS prompt, \
             CAST(SUM(completion_tokens) AS BIGINT) AS completion, \
             CAST(SUM(cached_tokens) AS BIGINT) AS cached, \
             CAST(SUM(cache_write_tokens) AS BIGINT) AS written, \
             CAST(SUM(cost_usd) AS DOUBLE PRECISION) AS cost \
             FROM polyplex_usage WHERE created_at >= $1{filter} GROUP BY 1 ORDER BY {order}"
        );
        // Built from the fixed texts above and parameter numbers only; the
        // keys and values asked for are bound.
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(since_ms);
        for v in &params.texts {
            q = q.bind(v.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let g = if by == GroupBy::Day {
                    let day: i64 = r.try_get("g")?;
                    Some(day_name(day))
                } else if by == GroupBy::Hour {
                    let hour: i64 = r.try_get("g")?;
                    Some(hour_name(hour))
                } else {
                    r.try_get::<Option<String>, _>("g")?
                };
                Ok(UsageRow {
                    group: g,
                    requests: r.try_get::<i64, _>("requests")?.max(0) as u64,
                    errors: r.try_get::<i64, _>("errors")?.max(0) as u64,
                    prompt_tokens: r.try_get::<i64, _>("prompt")?.max(0) as u64,
                    completion_tokens: r.try_get::<i64, _>("completion")?.max(0) as u64,
                    cached_tokens: r.try_get::<i64, _>("cached")?.max(0) as u64,
                    cache_write_tokens: r.try_get::<i64, _>("written")?.max(0) as u64,
                    cost_usd: crate::usage::rounded_cost(r.try_get::<f64, _>("cost")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The usage records since `since_ms` that `only` picks, newest first,
    /// at most `limit`, before `before` when given (the next page).
    pub async fn usage_records(
        &self,
        since_ms: i64,
        only: &Only,
        before: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let mut params = Params::new(self.postgres);
        let mut filter = params.only(only);
        if let Some(c) = before {
            let at = params.bind(c.at_ms.to_string());
            let id = params.bind(c.request_id.clone());
            filter.push_str(&format!(
                " AND (created_at < CAST({at} AS BIGINT) OR \
                 (created_at = CAST({at} AS BIGINT) AND request_id < {id}))"
            ));
        }
        // Built from constants, parameter numbers and a number only.
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM polyplex_usage WHERE created_at >= $1{filter} \
             ORDER BY created_at DESC, request_id DESC LIMIT {limit}"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(since_ms);
        for v in &params.texts {
            q = q.bind(v.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows.iter().map(stored_record).collect::<Result<_, _>>()?)
    }

    /// What an end user of a key spent since `since_ms`, as the usage
    /// records in the store say.
    pub async fn end_user_spend(
        &self,
        key_id: &str,
        user: &str,
        since_ms: i64,
    ) -> Result<f64, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) AS spent \
             FROM polyplex_usage WHERE key_id = $1 AND end_user = $2 AND created_at >= $3",
        )
        .bind(key_id)
        .bind(user)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<f64, _>("spent")?)
    }

    /// Keeps a response (OpenAI's Responses API) for `owner`: the items it
    /// added to its conversation (its input, its output last) and the
    /// Response object, both JSON, and the response it continued, whose
    /// conversation comes before (so a conversation of n turns is stored
    /// once, not n times over). Now and then, responses older than
    /// [`RESPONSE_DAYS`] go ([`Store::expire_responses`]).
    pub async fn save_response(
        &self,
        id: &str,
        owner: &str,
        items: &str,
        response: &str,
        previous: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = unix_ms(SystemTime::now());
        sqlx::query(
            "INSERT INTO polyplex_responses (id, owner, created_at, items, response, previous) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(owner)
        .bind(now)
        .bind(items)
        .bind(response)
        .bind(previous)
        .execute(&self.pool)
        .await?;
        if rand::random::<u8>() == 0 {
            self.expire_responses(now - RESPONSE_DAYS * 86_400_000)
                .await?;
        }
        Ok(())
    }

    /// Deletes the responses kept before `before` (Unix ms) but those a
    /// newer one continues, however far back: a conversation still going
    /// keeps all of its turns, and goes once its last turn is old.
    pub async fn expire_responses(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "WITH RECURSIVE live(id) AS ( \
                 SELECT previous FROM polyplex_responses \
                 WHERE created_at >= $1 AND previous IS NOT NULL \
                 UNION \
                 SELECT r.previous FROM polyplex_responses r JOIN live l ON r.id = l.id \
                 WHERE r.previous IS NOT NULL \
             ) \
             DELETE FROM polyplex_responses \
             WHERE created_at < $1 AND id NOT IN (SELECT id FROM live)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The whole conversation of a kept response of `owner`'s, oldest item
    /// first: its items after those of every response it continues. `None`
    /// if there is no such response; `Err(Chain::Broken(id))` naming an
    /// earlier response of the conversation that is gone (deleted).
    pub async fn load_conversation(
        &self,
        id: &str,
        owner: &str,
    ) -> Result<Option<Vec<serde_json::Value>>, Chain> {
        let rows = sqlx::query(
            "WITH RECURSIVE chain(id, previous, items, depth) AS ( \
                 SELECT id, previous, items, 0 FROM polyplex_responses \
                 WHERE id = $1 AND owner = $2 \
                 UNION ALL \
                 SELECT r.id, r.previous, r.items, c.depth + 1 \
                 FROM polyplex_responses r JOIN chain c ON r.id = c.previous \
                 WHERE r.owner = $2 AND c.depth < $3 \
             ) \
             SELECT previous, items FROM chain ORDER BY depth DESC",
        )
        .bind(id)
        .bind(owner)
        .bind(MAX_CHAIN)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Chain::Store(e.into()))?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let oldest: Option<String> = first
            .try_get("previous")
            .map_err(|e| Chain::Store(e.into()))?;
        if let Some(gone) = oldest.filter(|_| rows.len() < MAX_CHAIN as usize) {
            return Err(Chain::Broken(gone));
        }
        let mut items = Vec::new();
        for r in &rows {
            let text: String = r.try_get("items").map_err(|e| Chain::Store(e.into()))?;
            if let Ok(serde_json::Value::Array(part)) = serde_json::from_str(&text) {
                items.extend(part);
            }
        }
        Ok(Some(items))
    }

    /// A kept response's items and Response object, if `owner` kept it
    /// (another caller's is not found).
    pub async fn load_response(
        &self,
        id: &str,
        owner: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT items, response FROM polyplex_responses WHERE id = $1 AND owner = $2",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("items")?, r.try_get("response")?)),
            None => None,
        })
    }

    /// Deletes a kept response of `owner`'s; whether there was one.
    pub async fn delete_response(&self, id: &str, owner: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM polyplex_responses WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The number of usage records (tests, shutdown checks).
    pub async fn usage_count(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) FROM polyplex_usage")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?.max(0) as u64)
    }

    /// Closes the connections: the writer's own, or (any other store) the
    /// pool.
    pub async fn close(&self) {
        match &self.native {
            Some(Native::Sqlite(p)) => p.close().await,
            Some(Native::Postgres(p)) => p.close().await,
            None => self.pool.close().await,
        }
    }
}

/// [`Store::write_usage`] through any of sqlx's drivers: the records in
/// one transaction, many rows per INSERT, and each key's spend added up;
/// returns what the store then says each key spent.
async fn write_usage_to<DB>(
    pool: &sqlx::Pool<DB>,
    inserts: &[String],
    records: &[UsageRecord],
) -> Result<HashMap<String, StoredSpend>, sqlx::Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'t> &'t str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<&'t str>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<i64>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Decode<'t, DB>,
    for<'t> f64: sqlx::Encode<'t, DB> + sqlx::Decode<'t, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let mut tx = pool.begin().await?;
    let ids: Vec<Option<String>> = records
        .iter()
        .map(|r| r.key.as_ref().map(|k| k.id()))
        .collect();
    // Each key's spend per budget period (the period of the record's time;
    // one period, 0, for a key whose budget never starts again).
    let mut per_key: HashMap<(&str, i64), f64> = HashMap::new();
    for (r, key_id) in records.iter().zip(&ids) {
        if let (Some(k), Some(entry)) = (key_id.as_deref(), &r.key) {
            let at = unix_ms(r.at) / 1000;
            let period = entry.spec().budget_reset.map_or(0, |p| p.start(at));
            *per_key.entry((k, period)).or_default() += r.cost_usd;
        }
    }
    let mut per_key: Vec<_> = per_key.into_iter().collect();
    per_key.sort_by_key(|((_, period), _)| *period);
    // Many rows per INSERT: one statement per row cost the writer more
    // than the gateway spent serving the request.
    let rows: Vec<(&UsageRecord, &Option<String>)> = records.iter().zip(&ids).collect();
    let mut rest = &rows[..];
    while !rest.is_empty() {
        let slot = insert_slot(rest.len());
        let (chunk, after) = rest.split_at(INSERT_SIZES[slot]);
        rest = after;
        // Built from constants only; prepared once and kept.
        let mut q = sqlx::query::<DB>(AssertSqlSafe(inserts[slot].as_str()));
        for (r, key_id) in chunk {
            q = q
                .bind(r.request_id.as_str())
                .bind(key_id.as_deref())
                .bind(r.endpoint)
                .bind(r.requested_model.as_str())
                .bind(r.provider.as_deref())
                .bind(r.model.as_deref())
                .bind(i64::from(r.status))
                .bind(r.usage.prompt_tokens as i64)
                .bind(r.usage.completion_tokens as i64)
                .bind(r.usage.cached_tokens as i64)
                .bind(r.usage.cache_write_tokens as i64)
                .bind(i64::from(r.usage.estimated))
                .bind(r.cost_usd)
                .bind(r.latency.as_millis() as i64)
                .bind(r.ttft.map(|t| t.as_millis() as i64))
                .bind(i64::from(r.attempts))
                .bind(i64::from(r.stream))
                .bind(unix_ms(r.at))
                .bind(r.tags.user.as_deref())
                .bind(r.tags.metadata.as_deref());
        }
        q.execute(&mut *tx).await?;
    }
    let mut spent = HashMap::with_capacity(per_key.len());
    for ((k, period), add) in per_key {
        // A later period starts the period's spend again; an earlier one
        // (a record written late) adds to all time only.
        let row = sqlx::query::<DB>(
            "UPDATE polyplex_keys SET spent_usd = spent_usd + $1, \
             period_spent_usd = CASE WHEN period_start = $3 THEN period_spent_usd + $1 \
                                     WHEN period_start < $3 THEN $1 ELSE period_spent_usd END, \
             period_start = CASE WHEN period_start < $3 THEN $3 ELSE period_start END \
             WHERE id = $2 RETURNING spent_usd, period_start, period_spent_usd",
        )
        .bind(add)
        .bind(k)
        .bind(period)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            spent.insert(
                k.to_string(),
                StoredSpend {
                    spent_usd: row.try_get::<f64, _>(0)?,
                    period_start: row.try_get::<i64, _>(1)?,
                    period_spent_usd: row.try_get::<f64, _>(2)?,
                },
            );
        }
    }
    tx.commit().await?;
    Ok(spent)
}

/// `YYYY-MM-DD` of day `n` after 1970-01-01.
fn day_name(n: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs((n.max(0) as u64) * 86_400);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

/// Hour `n` since the epoch as `YYYY-MM-DDTHH:00Z` (UTC).
fn hour_name(n: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs((n.max(0) as u64) * 3_600);
    format!(
        "{}:00Z",
        &humantime::format_rfc3339_seconds(t).to_string()[..13]
    )
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_their_file() {
        assert_eq!(
            sqlite_url("sqlite://polyplex.db").0,
            "sqlite://polyplex.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url("sqlite://a.db?cache=shared").0,
            "sqlite://a.db?cache=shared&mode=rwc"
        );
        assert!(sqlite_url("sqlite::memory:").1);
        assert_eq!(
            sqlite_url("sqlite://a.db?mode=ro").0,
            "sqlite://a.db?mode=ro"
        );
    }

    #[test]
    fn hours_are_named_in_utc() {
        assert_eq!(hour_name(0), "1970-01-01T00:00Z");
        assert_eq!(hour_name(1_700_000_000 / 3600), "2023-11-14T22:00Z");
    }

    #[test]
    fn usage_inserts_number_every_row() {
        let one = usage_insert_sql(1, true);
        assert!(one.ends_with("VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"), "{one}");
        let two = usage_insert_sql(2, true);
        assert!(two.ends_with("$20), ($21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, $37, $38, $39, $40)"), "{two}");
        assert!(usage_insert_sql(2, false)
            .ends_with("?, ?), (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
    }

    #[test]
    fn batches_are_cut_into_the_prepared_sizes() {
        let cut = |mut left: usize| {
            let mut sizes = Vec::new();
            while left > 0 {
                let n = INSERT_SIZES[insert_slot(left)];
                sizes.push(n);
                left -= n;
            }
            sizes
        };
        assert_eq!(cut(203), [64, 64, 64, 8, 2, 1]);
        assert_eq!(cut(63), [32, 16, 8, 4, 2, 1]);
        assert_eq!(cut(1), [1]);
        assert!(cut(0).is_empty());
    }

    #[tokio::test]
    async fn every_record_of_a_batch_is_written() {
        // Through the `Any` driver (an in-memory database: the writer
        // shares its one connection) and through the usage writer's own
        // connection to a file, by SQLite's own driver.
        let memory = Store::connect("sqlite::memory:").await.unwrap();
        assert!(memory.writer().await.unwrap().is_none());
        check_batches(&memory, &memory).await;
        let dir = std::env::temp_dir().join(format!("polyplex-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("usage.db").display());
        let file = Store::connect(&url).await.unwrap();
        let writer = file.writer().await.unwrap().unwrap();
        assert!(matches!(writer.native, Some(Native::Sqlite(_))));
        check_batches(&writer, &file).await;
        writer.close().await;
        // Closing the writer's connection leaves the gateway's open.
        assert!(file.ping().await);
        file.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The same on Postgres, through the writer's own connection (its
    /// reports read metadata as jsonb).
    #[tokio::test]
    async fn every_record_of_a_batch_is_written_to_postgres() {
        in_a_postgres_database("polyplex_batches", |url| async move {
            let store = Store::connect(&url).await.unwrap();
            let writer = store.writer().await.unwrap().unwrap();
            assert!(matches!(writer.native, Some(Native::Postgres(_))));
            check_batches(&writer, &store).await;
            writer.close().await;
            store.close().await;
        })
        .await;
    }

    /// Usage record `i` of a test batch: one in ten failed.
    fn usage_record(i: usize) -> UsageRecord {
        UsageRecord {
            request_id: format!("req-{i}"),
            endpoint: "chat",
            requested_model: "m".into(),
            provider: Some("p".into()),
            model: Some("m".into()),
            status: if i.is_multiple_of(10) { 502 } else { 200 },
            usage: polyplex_types::Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                cached_tokens: 2,
                cache_write_tokens: 1,
                ..Default::default()
            },
            cost_usd: 0.5,
            latency: Duration::from_millis(1),
            ttft: None,
            attempts: 1,
            stream: false,
            at: SystemTime::now(),
            key: None,
            tags: crate::usage::Tags {
                user: Some(format!("user-{}", i % 3)),
                metadata: Some(format!(r#"{{"team":"t{}","n":"{i}"}}"#, i % 2).into()),
            },
            charged: 0,
        }
    }

    /// Writes 210 records through `writer` in two batches; `reader` sees them all.
    async fn check_batches(writer: &Store, reader: &Store) {
        let record = usage_record;
        // Three full statements and the rest in smaller ones, then a batch
        // of another size through the same prepared statements.
        let first: Vec<UsageRecord> = (0..203).map(record).collect();
        writer.write_usage(&first).await.unwrap();
        let second: Vec<UsageRecord> = (203..210).map(record).collect();
        writer.write_usage(&second).await.unwrap();
        let rows = reader.usage_report(GroupBy::Provider, 0).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].requests, 210);
        assert_eq!(rows[0].errors, 21);
        assert_eq!(rows[0].prompt_tokens, 630);
        assert_eq!(rows[0].completion_tokens, 420);
        assert_eq!(rows[0].cached_tokens, 420);
        assert_eq!(rows[0].cache_write_tokens, 210);
        assert!((rows[0].cost_usd - 105.0).abs() < 1e-9);
        let by_user = reader.usage_report(GroupBy::User, 0).await.unwrap();
        let mut users: Vec<_> = by_user
            .iter()
            .map(|r| (r.group.clone().unwrap_or_default(), r.requests))
            .collect();
        users.sort();
        assert_eq!(
            users,
            [
                ("user-0".into(), 70),
                ("user-1".into(), 70),
                ("user-2".into(), 70)
            ]
        );
        // One key's only: these records have none.
        let key_x = Only {
            key_id: Some("key_x".into()),
            ..Only::default()
        };
        let of_key = reader.usage_report_of(GroupBy::User, 0, &key_x);
        assert!(of_key.await.unwrap().is_empty());
        // By a metadata key's value, and only those with a value.
        let by_team = reader.usage_report(GroupBy::Metadata("team".into()), 0);
        let mut teams: Vec<_> = by_team
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.group, r.requests))
            .collect();
        teams.sort();
        assert_eq!(teams, [(Some("t0".into()), 105), (Some("t1".into()), 105)]);
        let t1_users = Only {
            metadata: vec![("team".into(), "t1".into())],
            ..Only::default()
        };
        let rows = reader.usage_report_of(GroupBy::User, 0, &t1_users);
        let mut users: Vec<_> = rows
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.group.unwrap_or_default(), r.requests))
            .collect();
        users.sort();
        // Odd records: users 1, 0, 2 in turn.
        assert_eq!(
            users,
            [
                ("user-0".into(), 35),
                ("user-1".into(), 35),
                ("user-2".into(), 35)
            ]
        );
        let both = Only {
            metadata: vec![("team".into(), "t1".into()), ("n".into(), "7".into())],
            ..Only::default()
        };
        let rows = reader.usage_report_of(GroupBy::Metadata("n".into()), 0, &both);
        let rows = rows.await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].group.as_deref(), rows[0].requests), (Some("7"), 1));
        // A key no record's metadata has: one group, none.
        let rows = reader.usage_report(GroupBy::Metadata("colour".into()), 0);
        let rows = rows.await.unwrap();
        assert_eq!((rows.len(), rows[0].group.as_deref()), (1, None));
        // The records themselves, newest first, a page at a time: every
        // one once, in order.
        let mut seen = Vec::new();
        let mut after: Option<Cursor> = None;
        let every = Only::default();
        loop {
            let page = reader.usage_records(0, &every, after.as_ref(), 65);
            let mut page = page.await.unwrap();
            let more = page.len() > 64;
            page.truncate(64);
            after = page.last().map(Cursor::after);
            seen.extend(page);
            if !more {
                break;
            }
        }
        assert_eq!(seen.len(), 210);
        assert!(seen.windows(2).all(
            |w| (w[0].created_at_ms, &w[0].request_id) > (w[1].created_at_ms, &w[1].request_id)
        ));
        let mut ids: Vec<_> = seen.iter().map(|r| r.request_id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 210);
        // One request's, by its id, with all it says.
        let one = Only {
            request_id: Some("req-7".into()),
            ..Only::default()
        };
        let [r] = &reader.usage_records(0, &one, None, 10).await.unwrap()[..] else {
            panic!("one record");
        };
        assert_eq!(
            (
                r.status,
                r.prompt_tokens,
                r.cached_tokens,
                r.cache_write_tokens,
                r.user.as_deref()
            ),
            (200, 3, 2, 1, Some("user-1"))
        );
        assert_eq!(
            r.metadata,
            Some(serde_json::json!({"team": "t1", "n": "7"}))
        );
        assert_eq!(
            Cursor::parse(&Cursor::after(r).text()),
            Some(Cursor::after(r))
        );
        let t0 = Only {
            metadata: vec![("team".into(), "t0".into())],
            ..Only::default()
        };
        let tagged = reader.usage_records(0, &t0, None, 1000).await.unwrap();
        assert_eq!(tagged.len(), 105);
        // By the hour; and nothing before the records were made.
        let hours = reader.usage_report(GroupBy::Hour, 0).await.unwrap();
        let this_hour = hour_name(unix_now() / 3600);
        assert!(hours
            .iter()
            .all(|h| h.group.as_ref().is_some_and(|g| g.len() == 17)));
        assert!(
            hours
                .iter()
                .any(|h| h.group.as_deref() == Some(this_hour.as_str()))
                || hours.len() == 2
        );
        assert_eq!(hours.iter().map(|h| h.requests).sum::<u64>(), 210);
        let before = Only {
            until_ms: Some(1),
            ..Only::default()
        };
        assert!(reader
            .usage_report_of(GroupBy::Model, 0, &before)
            .await
            .unwrap()
            .is_empty());
        assert!(reader
            .usage_records(0, &before, None, 10)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_sqlite_store_made_by_an_older_polyplex_gains_the_new_columns() {
        let dir = std::env::temp_dir().join(format!("polyplex-old-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("old.db").display());
        old_store_gains_columns(&url, &sqlite_url(&url).0, false).await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The same on Postgres, in a database made for the test.
    #[tokio::test]
    async fn a_postgres_store_made_by_an_older_polyplex_gains_the_new_columns() {
        in_a_postgres_database("polyplex_old", |url| async move {
            old_store_gains_columns(&url, &url, true).await;
        })
        .await;
    }

    /// Runs `test` with the URL of a Postgres database made for it (and
    /// dropped after), when POLYPLEX_TEST_POSTGRES names a server.
    pub(crate) async fn in_a_postgres_database<F, Fut>(prefix: &str, test: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        use sqlx::Connection;
        let Ok(base) = std::env::var("POLYPLEX_TEST_POSTGRES") else {
            eprintln!("POLYPLEX_TEST_POSTGRES not set: the Postgres test ({prefix}) skipped");
            return;
        };
        let name = format!("{prefix}_{:08x}", rand::random::<u32>());
        let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        test(format!("{}/{name}", &base[..base.rfind('/').unwrap()])).await;
        sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
            .execute(&mut admin)
            .await
            .unwrap();
    }

    /// Makes the usage table at `url` as the twenty-first session's
    /// polyplex did (no cache_write_tokens), with one record in it; the
    /// store opened there (twice) reads and writes the new column.
    async fn old_store_gains_columns(url: &str, pool_url: &str, postgres: bool) {
        sqlx::any::install_default_drivers();
        let old = open_pool(pool_url, postgres, 1, false).await.unwrap();
        let table = SCHEMA[1]
            .replace("cache_write_tokens BIGINT NOT NULL DEFAULT 0,", "")
            .replace(",\n        end_user TEXT,\n        metadata TEXT", "");
        assert!(
            !table.contains("cache_write")
                && !table.contains("end_user")
                && !table.contains("metadata")
        );
        sqlx::query(AssertSqlSafe(table))
            .execute(&old)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO polyplex_usage VALUES ('old-1', NULL, 'chat', 'm', 'p', 'm', 200, \
             10, 5, 4, 0, 0.25, 3, NULL, 1, 0, 1)",
        )
        .execute(&old)
        .await
        .unwrap();
        // Kept responses as the twenty-fifth session kept them: the whole
        // conversation in each row, no `previous`.
        let responses = SCHEMA
            .iter()
            .find(|s| s.contains("polyplex_responses ("))
            .unwrap()
            .replace(",\n        previous TEXT", "");
        assert!(!responses.contains("previous"));
        sqlx::query(AssertSqlSafe(responses))
            .execute(&old)
            .await
            .unwrap();
        sqlx::query("INSERT INTO polyplex_responses VALUES ('old-r', 'key:o', 1, '[1,2,3]', '{}')")
            .execute(&old)
            .await
            .unwrap();
        old.close().await;
        // Opened twice: the second finds the column there.
        for _ in 0..2 {
            let store = Store::connect(url).await.unwrap();
            let rows = store.usage_report(GroupBy::Provider, 0).await.unwrap();
            assert_eq!(rows[0].requests, 1);
            assert_eq!((rows[0].cached_tokens, rows[0].cache_write_tokens), (4, 0));
            store.close().await;
        }
        let store = Store::connect(url).await.unwrap();
        let writer = store.writer().await.unwrap().unwrap();
        let mut r = usage_record(1);
        r.usage.cache_write_tokens = 6;
        writer.write_usage(&[r]).await.unwrap();
        let rows = store.usage_report(GroupBy::Provider, 0).await.unwrap();
        assert_eq!((rows[0].requests, rows[0].prompt_tokens), (2, 13));
        assert_eq!((rows[0].cached_tokens, rows[0].cache_write_tokens), (6, 6));
        // The old row has no end user; the new one's is there.
        let mut users = store.usage_report(GroupBy::User, 0).await.unwrap();
        users.sort_by(|a, b| a.group.cmp(&b.group));
        let users: Vec<_> = users
            .iter()
            .map(|r| (r.group.clone(), r.requests))
            .collect();
        assert_eq!(users, [(None, 1), (Some("user-1".into()), 1)]);
        writer.close().await;
        // An old kept response is continued: its conversation, then the new turn's.
        store
            .save_response("new-r", "key:o", "[4]", "{}", Some("old-r"))
            .await
            .unwrap();
        let all = store
            .load_conversation("new-r", "key:o")
            .await
            .ok()
            .flatten();
        assert_eq!(all, Some(vec![1.into(), 2.into(), 3.into(), 4.into()]));
        kept_responses_are_their_owners_only(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn the_writer_keeps_each_keys_budget_period() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        budget_periods(&store).await;
        // The same statements on Postgres.
        in_a_postgres_database("polyplex_period", |url| async move {
            let pg = Store::connect(&url).await.unwrap();
            budget_periods(&pg).await;
            pg.close().await;
        })
        .await;
    }

    /// A daily budget's key: the writer starts a new period's spend, keeps
    /// a late record out of it, and a changed reset sums the new period.
    async fn budget_periods(store: &Store) {
        let now = unix_now();
        let day = BudgetReset::Daily;
        let today = day.start(now);
        let row = KeyRow {
            id: "key_p".into(),
            name: "p".into(),
            key_hash: crate::keys::hash("plx-p"),
            key_hint: "plx-...h".into(),
            models: None,
            rpm: None,
            tpm: None,
            max_concurrent: None,
            budget_usd: Some(1.0),
            spent_usd: 10.0,
            expires_at: None,
            created_at: now,
            revoked_at: None,
            budget_reset: Some(day),
            period_start: today - 86_400,
            period_spent_usd: 3.0,
            metadata: serde_json::json!({"team": "search"}).as_object().cloned(),
            user_rpm: Some(5),
            user_tpm: Some(500),
            user_budget_usd: Some(0.5),
        };
        store.insert_key(&row).await.unwrap();
        // Its metadata as given, changed and cleared by an update.
        assert_eq!(store.key("key_p").await.unwrap().unwrap(), row);
        let ads = serde_json::json!({"team": "ads"}).as_object().cloned();
        let change = |m: Option<JsonMap>| KeyChanges {
            metadata: Some(m),
            ..KeyChanges::default()
        };
        let changed = store.update_key("key_p", &change(ads.clone())).await;
        assert_eq!(changed.unwrap().unwrap().metadata, ads);
        let cleared = store.update_key("key_p", &change(None)).await;
        assert_eq!(cleared.unwrap().unwrap().metadata, None);
        store
            .update_key("key_p", &change(row.metadata.clone()))
            .await
            .unwrap();
        let keys = crate::keys::Keys::new(None);
        keys.upsert(row);
        let entry = keys.by_id("key_p").unwrap();
        let write = |cost: f64, at: i64| {
            let mut r = usage_record(1);
            r.key = Some(entry.clone());
            r.cost_usd = cost;
            r.at = UNIX_EPOCH + Duration::from_secs(at as u64);
            async move { store.write_usage(&[r]).await.unwrap()["key_p"] }
        };
        let spend = |s: StoredSpend| (s.spent_usd, s.period_start, s.period_spent_usd);
        // Today's first record starts today's period.
        assert_eq!(spend(write(0.5, now).await), (10.5, today, 0.5));
        // One of yesterday's, written late: all time only.
        assert_eq!(spend(write(0.25, today - 10).await), (10.75, today, 0.5));
        assert_eq!(spend(write(0.25, now).await), (11.0, today, 0.75));
        let k = store.key("key_p").await.unwrap().unwrap();
        assert_eq!(k.budget_spent(now), 0.75);
        assert_eq!(k.budget_spent(now + 86_400), 0.0);
        // A new reset: the new period's spend is summed from the records.
        let weekly = KeyChanges {
            budget_reset: Some(Some(BudgetReset::Weekly)),
            ..KeyChanges::default()
        };
        let k = store.update_key("key_p", &weekly).await.unwrap().unwrap();
        let week = BudgetReset::Weekly.start(now);
        let late_in_week = if today - 10 >= week { 0.25 } else { 0.0 };
        assert_eq!(
            (k.period_start, k.budget_reset),
            (week, Some(BudgetReset::Weekly))
        );
        assert!((k.period_spent_usd - (0.75 + late_in_week)).abs() < 1e-9);
        // None: the budget counts all time again.
        let never = KeyChanges {
            budget_reset: Some(None),
            ..KeyChanges::default()
        };
        let k = store.update_key("key_p", &never).await.unwrap().unwrap();
        assert_eq!((k.period_start, k.budget_spent(now)), (0, 11.0));
        assert!((k.period_spent_usd - 1.0).abs() < 1e-9);
    }

    #[tokio::test]
    async fn a_kept_response_is_its_owners_only() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        kept_responses_are_their_owners_only(&store).await;
    }

    /// Saves, reads and deletes a kept response in `store`, by its owner
    /// and by another caller.
    async fn kept_responses_are_their_owners_only(store: &Store) {
        store
            .save_response("resp_1", "key:a", "[1]", "{\"id\":\"resp_1\"}", None)
            .await
            .unwrap();
        assert_eq!(
            store.load_response("resp_1", "key:a").await.unwrap(),
            Some(("[1]".to_string(), "{\"id\":\"resp_1\"}".to_string()))
        );
        assert_eq!(store.load_response("resp_1", "key:b").await.unwrap(), None);
        assert!(!store.delete_response("resp_1", "key:b").await.unwrap());
        // An id is kept once: a second save of it fails, never overwrites.
        assert!(store
            .save_response("resp_1", "key:b", "[]", "{}", None)
            .await
            .is_err());
        assert!(store.delete_response("resp_1", "key:a").await.unwrap());
        assert_eq!(store.load_response("resp_1", "key:a").await.unwrap(), None);
        conversations_are_kept_once(store).await;
    }

    /// A conversation continued turn by turn is one row a turn, each with
    /// its own items, read back whole; an earlier turn deleted is named;
    /// expiry spares every turn a newer one continues.
    async fn conversations_are_kept_once(store: &Store) {
        let conversation = |id: &str| {
            let (store, id) = (store.clone(), id.to_string());
            async move {
                match store.load_conversation(&id, "key:c").await {
                    Ok(Some(items)) => Ok(serde_json::Value::Array(items)),
                    Ok(None) => Err("none".to_string()),
                    Err(Chain::Broken(gone)) => Err(format!("broken at {gone}")),
                    Err(Chain::Store(e)) => Err(e.to_string()),
                }
            }
        };
        // An old row: its whole conversation in it, no `previous`.
        store
            .save_response("c1", "key:c", "[1,2]", "{}", None)
            .await
            .unwrap();
        store
            .save_response("c2", "key:c", "[3,4]", "{}", Some("c1"))
            .await
            .unwrap();
        store
            .save_response("c3", "key:c", "[5]", "{}", Some("c2"))
            .await
            .unwrap();
        // A branch from the middle.
        store
            .save_response("c3b", "key:c", "[6]", "{}", Some("c2"))
            .await
            .unwrap();
        assert_eq!(
            conversation("c3").await,
            Ok(serde_json::json!([1, 2, 3, 4, 5]))
        );
        assert_eq!(
            conversation("c3b").await,
            Ok(serde_json::json!([1, 2, 3, 4, 6]))
        );
        assert_eq!(conversation("c1").await, Ok(serde_json::json!([1, 2])));
        assert_eq!(
            store.load_conversation("c3", "key:other").await.unwrap(),
            None
        );
        // Expiry: everything is "old" but c3b; c3 goes, c3b's turns stay.
        let before = unix_ms(SystemTime::now()) + 1;
        sqlx::query("UPDATE polyplex_responses SET created_at = $1 WHERE id = 'c3b'")
            .bind(before + 60_000)
            .execute(&store.pool)
            .await
            .unwrap();
        // (c3, and whatever else this store holds from before.)
        assert!(store.expire_responses(before).await.unwrap() >= 1);
        assert_eq!(store.load_response("c3", "key:c").await.unwrap(), None);
        assert_eq!(
            conversation("c3b").await,
            Ok(serde_json::json!([1, 2, 3, 4, 6]))
        );
        // An earlier turn deleted: the later one says which.
        assert!(store.delete_response("c2", "key:c").await.unwrap());
        assert_eq!(conversation("c3b").await, Err("broken at c2".to_string()));
        for id in ["c1", "c3b"] {
            store.delete_response(id, "key:c").await.unwrap();
        }
    }

    #[test]
    fn days_are_named_in_utc() {
        assert_eq!(day_name(0), "1970-01-01");
        assert_eq!(day_name(19_700), "2023-12-09");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
