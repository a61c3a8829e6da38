//! OpenAI's Files and Batch APIs, kept in the gateway's store: files
//! uploaded for a batch (and the output and error files a batch writes),
//! and batches, each a JSONL file of requests the gateway runs on its own,
//! at its own pace, through the same pipeline as a live request (the key's
//! models, limits and budget, routing, failover, usage records). So a batch
//! works with every provider, not just those with a batch API of their own.
//!
//! A batch is run by one replica at a time: the one that holds its lease
//! (renewed while it runs). Each request's answer is stored as it comes,
//! so a replica that stops mid-batch loses nothing: the next to take the
//! lease runs only what is left. The output and error files are written,
//! and the batch completed, in one transaction.

use crate::store::{unix_now, Store, StoreError};
use base64::Engine;
use polyplex_types::{GatewayError, JsonMap};
use serde_json::{json, Value};
use sqlx::Row;

/// The purposes a file may be uploaded for (OpenAI's).
pub const PURPOSES: &[&str] = &[
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

/// The endpoints a batch may run.
pub const ENDPOINTS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
];

/// The most requests in one batch (OpenAI's limit).
pub const MOST_LINES: usize = 50_000;

/// How long a batch has to finish: OpenAI's only window.
pub const WINDOW: &str = "24h";
pub const WINDOW_SECS: i64 = 86_400;

/// A file as the Files API lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

impl FileRow {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": null,
        })
    }
}

/// `file-` and 32 hex digits: a time-ordered UUID (v7), so files made in
/// the same second still list in the order they were made.
pub fn new_file_id() -> String {
    format!("file-{}", uuid::Uuid::now_v7().simple())
}

/// `batch_` and 32 hex digits, time-ordered as files' are.
pub fn new_batch_id() -> String {
    format!("batch_{}", uuid::Uuid::now_v7().simple())
}

/// `batch_req_` and 32 hex digits: one request's line in an output file.
pub fn new_line_id() -> String {
    format!("batch_req_{}", uuid::Uuid::new_v4().simple())
}

fn file_row(r: &sqlx::any::AnyRow) -> Result<FileRow, sqlx::Error> {
    Ok(FileRow {
        id: r.try_get("id")?,
        filename: r.try_get("filename")?,
        purpose: r.try_get("purpose")?,
        bytes: r.try_get("bytes")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

const FILE_COLUMNS: &str = "id, filename, purpose, bytes, created_at, expires_at";

/// A new batch as `POST /v1/batches` answers it.
pub fn new_batch(
    input_file_id: &str,
    endpoint: &str,
    metadata: Option<&JsonMap>,
    now: i64,
) -> Value {
    json!({
        "id": new_batch_id(),
        "object": "batch",
        "endpoint": endpoint,
        "model": null,
        "errors": null,
        "input_file_id": input_file_id,
        "completion_window": WINDOW,
        "status": "validating",
        "output_file_id": null,
        "error_file_id": null,
        "created_at": now,
        "in_progress_at": null,
        "expires_at": now + WINDOW_SECS,
        "finalizing_at": null,
        "completed_at": null,
        "failed_at": null,
        "expired_at": null,
        "cancelling_at": null,
        "cancelled_at": null,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "usage": null,
        "metadata": metadata.map_or(Value::Null, |m| Value::Object(m.clone())),
    })
}

/// A batch's status.
pub fn status_of(batch: &Value) -> &str {
    batch["status"].as_str().unwrap_or("")
}

/// One request of a batch's input file.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub custom_id: String,
    /// The request's JSON body.
    pub body: bytes::Bytes,
}

/// One problem with a batch's input file, as the batch's `errors` lists it.
fn line_error(code: &str, message: String, param: Option<&str>, line: Option<usize>) -> Value {
    json!({"code": code, "message": message, "param": param, "line": line})
}

/// A path without its leading `/v1`.
fn unversioned(path: &str) -> &str {
    path.strip_prefix("/v1").unwrap_or(path)
}

/// The requests of a batch's input file, each checked as OpenAI checks
/// them (a JSON object a line with a unique `custom_id`, `method` POST,
/// `url` the batch's endpoint and a `body` object that does not stream);
/// else the problems, each naming its line (counted from 1).
pub fn parse_lines(text: &[u8], endpoint: &str) -> Result<Vec<Line>, Vec<Value>> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let Ok(text) = std::str::from_utf8(text) else {
        return Err(vec![line_error(
            "invalid_file_format",
            "The input file is not UTF-8 text.".into(),
            None,
            None,
        )]);
    };
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if errors.len() >= 100 {
            break;
        }
        let mut fail = |code: &str, message: String, param: Option<&str>| {
            errors.push(line_error(code, message, param, Some(n)));
        };
        let v: Value = match serde_json::from_str(raw) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                fail(
                    "invalid_json_line",
                    format!("This line is not a JSON object (line {n})."),
                    None,
                );
                continue;
            }
        };
        let custom_id = match v.get("custom_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                fail(
                    "missing_required_parameter",
                    format!("Missing required parameter: 'custom_id' (line {n})."),
                    Some("custom_id"),
                );
                continue;
            }
        };
        if v.get("method").and_then(Value::as_str) != Some("POST") {
            fail(
                "invalid_value",
                format!("'method' must be 'POST' (line {n})."),
                Some("method"),
            );
            continue;
        }
        match v.get("url").and_then(Value::as_str) {
            Some(u) if unversioned(u) == unversioned(endpoint) => {}
            u => {
                fail(
                    "invalid_url",
                    format!(
                        "The URL provided for this request does not match the batch endpoint: {} is not {endpoint} (line {n}).",
                        u.unwrap_or("(none)")
                    ),
                    Some("url"),
                );
                continue;
            }
        }
        let body = match v.get("body") {
            Some(b @ Value::Object(m)) => {
                if m.get("stream") == Some(&Value::Bool(true)) {
                    fail(
                        "invalid_value",
                        format!("A batch request cannot stream: 'body.stream' must not be true (line {n})."),
                        Some("body.stream"),
                    );
                    continue;
                }
                bytes::Bytes::from(b.to_string())
            }
            _ => {
                fail(
                    "missing_required_parameter",
                    format!("Missing required parameter: 'body', a JSON object (line {n})."),
                    Some("body"),
                );
                continue;
            }
        };
        if !seen.insert(custom_id.clone()) {
            fail(
                "duplicate_custom_id",
                format!("The custom_id '{custom_id}' is used twice in the input file (line {n})."),
                Some("custom_id"),
            );
            continue;
        }
        lines.push(Line { custom_id, body });
    }
    if errors.is_empty() && lines.is_empty() {
        errors.push(line_error(
            "empty_file",
            "The input file has no requests.".into(),
            None,
            None,
        ));
    }
    if errors.is_empty() && lines.len() > MOST_LINES {
        errors.push(line_error(
            "too_many_requests",
            format!(
                "The input file has {} requests; a batch takes at most {MOST_LINES}.",
                lines.len()
            ),
            None,
            None,
        ));
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

/// A batch a replica took to run.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub owner: String,
    pub batch: Value,
}

/// One stored answer of a batch's request.
#[derive(Debug, Clone)]
pub struct LineResult {
    pub line: i64,
    pub ok: bool,
    /// The output (or error) file's line for it.
    pub text: String,
}

fn decode(content: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(content)
        .unwrap_or_default()
}

fn encode(content: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(content)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A file not yet expired at `now` (seconds).
const LIVE: &str = "(expires_at IS NULL OR expires_at > $3)";

/// A store failure, as a files or batches request answers it.
pub fn store_failed(e: StoreError) -> GatewayError {
    tracing::error!(error = %e, "files and batches: the store failed");
    GatewayError::service_unavailable("The store did not answer; try again.")
}

impl Store {
    /// Keeps a file of `owner`'s.
    pub async fn insert_file(
        &self,
        owner: &str,
        filename: &str,
        purpose: &str,
        content: &[u8],
        expires_at: Option<i64>,
    ) -> Result<FileRow, StoreError> {
        let f = FileRow {
            id: new_file_id(),
            filename: filename.to_string(),
            purpose: purpose.to_string(),
            bytes: content.len() as i64,
            created_at: unix_now(),
            expires_at,
        };
        insert_file_row(self.pool(), owner, &f, content).await?;
        Ok(f)
    }

    /// A file of `owner`'s (another caller's, or an expired one, is not found).
    pub async fn file(&self, id: &str, owner: &str) -> Result<Option<FileRow>, StoreError> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM polyplex_files WHERE id = $1 AND owner = $2 AND {LIVE}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(owner)
            .bind(unix_now())
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(file_row).transpose()?)
    }

    /// A file's content.
    pub async fn file_content(
        &self,
        id: &str,
        owner: &str,
    ) -> Result<Option<(FileRow, Vec<u8>)>, StoreError> {
        let sql = format!(
            "SELECT {FILE_COLUMNS}, content FROM polyplex_files \
             WHERE id = $1 AND owner = $2 AND {LIVE}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(owner)
            .bind(unix_now())
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let content: String = row.try_get("content")?;
        Ok(Some((file_row(&row)?, decode(&content))))
    }

    /// `owner`'s files, oldest first (as lists are paged), of one purpose if given.
    pub async fn files(
        &self,
        owner: &str,
        purpose: Option<&str>,
    ) -> Result<Vec<FileRow>, StoreError> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM polyplex_files WHERE owner = $1 \
             AND ($2 = '' OR purpose = $2) AND {LIVE} ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(purpose.unwrap_or(""))
            .bind(unix_now())
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(file_row).collect::<Result<_, _>>()?)
    }

    /// Deletes a file of `owner`'s; whether there was one.
    pub async fn delete_file(&self, id: &str, owner: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM polyplex_files WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Keeps a new batch of `owner`'s.
    pub async fn insert_batch(&self, owner: &str, batch: &Value) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO polyplex_batches (id, owner, created_at, status, batch, lease_until) \
             VALUES ($1, $2, $3, $4, $5, 0)",
        )
        .bind(batch["id"].as_str().unwrap_or(""))
        .bind(owner)
        .bind(batch["created_at"].as_i64().unwrap_or(0))
        .bind(status_of(batch))
        .bind(batch.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A batch of `owner`'s.
    pub async fn batch(&self, id: &str, owner: &str) -> Result<Option<Value>, StoreError> {
        let row = sqlx::query("SELECT batch FROM polyplex_batches WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .fetch_optional(self.pool())
            .await?;
        let text: Option<String> = row.map(|r| r.try_get("batch")).transpose()?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// `owner`'s batches, oldest first (as lists are paged).
    pub async fn batches(&self, owner: &str) -> Result<Vec<Value>, StoreError> {
        let rows = sqlx::query(
            "SELECT batch FROM polyplex_batches WHERE owner = $1 ORDER BY created_at, id",
        )
        .bind(owner)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let text: String = r.try_get("batch")?;
            if let Ok(v) = serde_json::from_str(&text) {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Replaces a batch if its status is still `was` (else another writer
    /// changed it first: a cancel); whether it was replaced.
    pub async fn set_batch(&self, batch: &Value, was: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE polyplex_batches SET status = $1, batch = $2 WHERE id = $3 AND status = $4",
        )
        .bind(status_of(batch))
        .bind(batch.to_string())
        .bind(batch["id"].as_str().unwrap_or(""))
        .bind(was)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Takes the oldest unfinished batch (validating, in progress,
    /// finalizing or cancelling) no replica holds, for `lease_ms`.
    pub async fn claim_batch(
        &self,
        holder: &str,
        lease_ms: i64,
    ) -> Result<Option<Claimed>, StoreError> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT id FROM polyplex_batches WHERE status IN \
             ('validating', 'in_progress', 'finalizing', 'cancelling') AND lease_until < $1 \
             ORDER BY created_at, id LIMIT 8",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        for r in &rows {
            let id: String = r.try_get("id")?;
            let taken = sqlx::query(
                "UPDATE polyplex_batches SET lease_until = $1, holder = $2 \
                 WHERE id = $3 AND lease_until < $4",
            )
            .bind(now + lease_ms)
            .bind(holder)
            .bind(&id)
            .bind(now)
            .execute(self.pool())
            .await?;
            if taken.rows_affected() == 0 {
                continue;
            }
            let row = sqlx::query("SELECT owner, batch FROM polyplex_batches WHERE id = $1")
                .bind(&id)
                .fetch_one(self.pool())
                .await?;
            let text: String = row.try_get("batch")?;
            let Ok(batch) = serde_json::from_str(&text) else {
                continue;
            };
            return Ok(Some(Claimed {
                id,
                owner: row.try_get("owner")?,
                batch,
            }));
        }
        Ok(None)
    }

    /// Holds a batch's lease `lease_ms` longer; false if `holder` lost it.
    pub async fn renew_batch(
        &self,
        id: &str,
        holder: &str,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE polyplex_batches SET lease_until = $1 WHERE id = $2 AND holder = $3",
        )
        .bind(now_ms() + lease_ms)
        .bind(id)
        .bind(holder)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Gives a batch's lease back (another replica may take it at once).
    pub async fn release_batch(&self, id: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE polyplex_batches SET lease_until = 0 WHERE id = $1 AND holder = $2")
            .bind(id)
            .bind(holder)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// A batch's status now.
    pub async fn batch_status(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT status FROM polyplex_batches WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.try_get("status")).transpose()?)
    }

    /// Keeps one request's answer (once: a line answered already keeps
    /// its first answer).
    pub async fn add_batch_result(&self, batch: &str, r: &LineResult) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO polyplex_batch_results (batch_id, line, ok, result) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (batch_id, line) DO NOTHING",
        )
        .bind(batch)
        .bind(r.line)
        .bind(i64::from(r.ok))
        .bind(&r.text)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The answers kept for a batch so far, by line.
    pub async fn batch_results(&self, batch: &str) -> Result<Vec<LineResult>, StoreError> {
        let rows = sqlx::query(
            "SELECT line, ok, result FROM polyplex_batch_results WHERE batch_id = $1 ORDER BY line",
        )
        .bind(batch)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LineResult {
                    line: r.try_get("line")?,
                    ok: r.try_get::<i64, _>("ok")? != 0,
                    text: r.try_get("result")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Ends a batch whose status is still `was`: its output and error
    /// files (owned by `owner`) kept, the batch replaced and its answers
    /// let go, all at once; whether it was (a cancel may have come first).
    pub async fn finish_batch(
        &self,
        owner: &str,
        batch: &Value,
        was: &str,
        files: &[(FileRow, Vec<u8>)],
    ) -> Result<bool, StoreError> {
        let id = batch["id"].as_str().unwrap_or("");
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE polyplex_batches SET status = $1, batch = $2, lease_until = 0 \
             WHERE id = $3 AND status = $4",
        )
        .bind(status_of(batch))
        .bind(batch.to_string())
        .bind(id)
        .bind(was)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        for (f, content) in files {
            insert_file_row(&mut *tx, owner, f, content).await?;
        }
        sqlx::query("DELETE FROM polyplex_batch_results WHERE batch_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

async fn insert_file_row<'e, E>(
    e: E,
    owner: &str,
    f: &FileRow,
    content: &[u8],
) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO polyplex_files (id, owner, filename, purpose, bytes, created_at, \
         expires_at, content) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&f.id)
    .bind(owner)
    .bind(&f.filename)
    .bind(&f.purpose)
    .bind(f.bytes)
    .bind(f.created_at)
    .bind(f.expires_at)
    .bind(encode(content))
    .execute(e)
    .await?;
    Ok(())
}

/// The file that holds output lines `lines` of a batch.
pub fn output_file(batch_id: &str, what: &str, lines: &[&str]) -> Option<(FileRow, Vec<u8>)> {
    if lines.is_empty() {
        return None;
    }
    let mut content = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        content.extend_from_slice(l.as_bytes());
        content.push(b'\n');
    }
    Some((
        FileRow {
            id: new_file_id(),
            filename: format!("{batch_id}_{what}.jsonl"),
            purpose: format!("batch_{what}"),
            bytes: content.len() as i64,
            created_at: unix_now(),
            expires_at: None,
        },
        content,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: &str = "/v1/chat/completions";

    fn line(id: &str) -> String {
        json!({"custom_id": id, "method": "POST", "url": EP,
               "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}})
        .to_string()
    }

    #[test]
    fn good_lines_are_read_in_order() {
        let text = format!("{}\n\n{}\n", line("a"), line("b"));
        let lines = parse_lines(text.as_bytes(), EP).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].custom_id, "a");
        assert_eq!(lines[1].custom_id, "b");
        let body: Value = serde_json::from_slice(&lines[0].body).unwrap();
        assert_eq!(body["model"], "m");
    }

    #[test]
    fn each_bad_line_is_named() {
        let wrong_url = line("c").replace(EP, "/v1/embeddings");
        let streams = json!({"custom_id": "d", "method": "POST", "url": EP,
                             "body": {"model": "m", "stream": true}})
        .to_string();
        let text = [
            line("a"),
            "not json".into(),
            line("a"),
            wrong_url,
            streams,
            json!({"method": "POST", "url": EP, "body": {}}).to_string(),
            json!({"custom_id": "e", "method": "GET", "url": EP, "body": {}}).to_string(),
        ]
        .join("\n");
        let errors = parse_lines(text.as_bytes(), EP).unwrap_err();
        let got: Vec<(&str, i64)> = errors
            .iter()
            .map(|e| (e["code"].as_str().unwrap(), e["line"].as_i64().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("invalid_json_line", 2),
                ("duplicate_custom_id", 3),
                ("invalid_url", 4),
                ("invalid_value", 5),
                ("missing_required_parameter", 6),
                ("invalid_value", 7),
            ]
        );
        assert_eq!(errors[3]["param"], "body.stream");
    }

    #[test]
    fn an_empty_file_is_refused() {
        let errors = parse_lines(b"\n\n", EP).unwrap_err();
        assert_eq!(errors[0]["code"], "empty_file");
        assert!(parse_lines(&[0xff, 0xfe], EP).is_err());
    }

    #[test]
    fn the_url_may_leave_out_v1() {
        let text = line("a").replace("/v1/chat", "/chat");
        assert!(parse_lines(text.as_bytes(), EP).is_ok());
    }

    #[test]
    fn output_files_hold_one_line_each() {
        assert!(output_file("batch_1", "output", &[]).is_none());
        let (f, content) = output_file("batch_1", "error", &["{}", "{\"a\":1}"]).unwrap();
        assert_eq!(content, b"{}\n{\"a\":1}\n");
        assert_eq!(f.bytes, 11);
        assert_eq!(f.purpose, "batch_error");
        assert_eq!(f.filename, "batch_1_error.jsonl");
    }

    /// Files and batches on one store: owners see only their own; one
    /// holder at a time takes a batch; answers are kept once; finishing
    /// writes the files and lets the answers go, unless a cancel came first.
    async fn kept(store: &Store) {
        let f = store
            .insert_file("key:a", "in.jsonl", "batch", b"{\"x\":1}\n", None)
            .await
            .unwrap();
        assert_eq!(store.file(&f.id, "key:a").await.unwrap(), Some(f.clone()));
        assert_eq!(store.file(&f.id, "key:b").await.unwrap(), None);
        let (_, content) = store.file_content(&f.id, "key:a").await.unwrap().unwrap();
        assert_eq!(content, b"{\"x\":1}\n");
        let gone = store
            .insert_file("key:a", "old", "user_data", b"x", Some(unix_now() - 1))
            .await
            .unwrap();
        assert_eq!(store.file(&gone.id, "key:a").await.unwrap(), None);
        assert_eq!(
            store.files("key:a", None).await.unwrap(),
            std::slice::from_ref(&f)
        );
        assert!(store
            .files("key:a", Some("vision"))
            .await
            .unwrap()
            .is_empty());
        assert!(store.files("key:b", None).await.unwrap().is_empty());

        let batch = new_batch(&f.id, EP, None, unix_now());
        let id = batch["id"].as_str().unwrap().to_string();
        store.insert_batch("key:a", &batch).await.unwrap();
        assert_eq!(
            store.batch(&id, "key:a").await.unwrap(),
            Some(batch.clone())
        );
        assert_eq!(store.batch(&id, "key:b").await.unwrap(), None);
        let claimed = store.claim_batch("one", 60_000).await.unwrap().unwrap();
        assert_eq!(
            (claimed.id.as_str(), claimed.owner.as_str()),
            (id.as_str(), "key:a")
        );
        assert!(
            store.claim_batch("two", 60_000).await.unwrap().is_none(),
            "held by one"
        );
        assert!(store.renew_batch(&id, "one", 60_000).await.unwrap());
        assert!(!store.renew_batch(&id, "two", 60_000).await.unwrap());
        store.release_batch(&id, "one").await.unwrap();
        assert!(store.claim_batch("two", 60_000).await.unwrap().is_some());

        let mut running = batch.clone();
        running["status"] = json!("in_progress");
        assert!(store.set_batch(&running, "validating").await.unwrap());
        assert!(
            !store.set_batch(&running, "validating").await.unwrap(),
            "no longer validating"
        );
        for (line, ok, text) in [(1, false, "b"), (0, true, "a"), (1, true, "again")] {
            let r = LineResult {
                line,
                ok,
                text: text.into(),
            };
            store.add_batch_result(&id, &r).await.unwrap();
        }
        let kept: Vec<(i64, bool, String)> = store
            .batch_results(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.line, r.ok, r.text))
            .collect();
        assert_eq!(kept, [(0, true, "a".into()), (1, false, "b".into())]);

        let mut done = running.clone();
        done["status"] = json!("completed");
        let out = output_file(&id, "output", &["a"]).unwrap();
        let out_id = out.0.id.clone();
        assert!(!store
            .finish_batch("key:a", &done, "cancelling", std::slice::from_ref(&out))
            .await
            .unwrap());
        assert_eq!(
            store.file(&out_id, "key:a").await.unwrap(),
            None,
            "nothing written"
        );
        assert!(store
            .finish_batch("key:a", &done, "in_progress", &[out])
            .await
            .unwrap());
        assert_eq!(
            store.batch_status(&id).await.unwrap().as_deref(),
            Some("completed")
        );
        let (_, content) = store.file_content(&out_id, "key:a").await.unwrap().unwrap();
        assert_eq!(content, b"a\n");
        assert!(store.batch_results(&id).await.unwrap().is_empty());
        assert!(
            store.claim_batch("three", 60_000).await.unwrap().is_none(),
            "finished"
        );
        assert_eq!(store.batches("key:a").await.unwrap(), [done]);
        assert!(store.delete_file(&f.id, "key:a").await.unwrap());
        assert!(!store.delete_file(&f.id, "key:a").await.unwrap());
    }

    #[tokio::test]
    async fn files_and_batches_are_kept_in_sqlite_and_postgres() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        kept(&store).await;
        crate::store::tests::in_a_postgres_database("polyplex_batches", |url| async move {
            let pg = Store::connect(&url).await.unwrap();
            kept(&pg).await;
            pg.close().await;
        })
        .await;
    }
}
