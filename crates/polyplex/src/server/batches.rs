//! `/v1/files` and `/v1/batches` (OpenAI's Files and Batch APIs), and the
//! worker that runs batches: each request of a batch's input file goes
//! through the gateway's own router as the batch's owner, so it meets the
//! key's models, limits and budget, is routed and failed over, and writes
//! its usage record (tagged `metadata.batch_id`) like a live request.
//! What is kept, and how replicas share the work: [`crate::batches`].

use super::auth::Caller;
use super::gate::{new_request_id, Gate};
use super::handlers::{parse_json, read_body_within, METADATA_HEADER};
use super::respond::ApiError;
use super::{App, RequestId};
use crate::batches::{self, store_failed, Claimed, Line, LineResult, ENDPOINTS, PURPOSES};
use crate::store::{unix_now, Store};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use polyplex_types::{validate, GatewayError, JsonMap};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn no_store() -> GatewayError {
    GatewayError::invalid_request("This gateway has no store to keep files and batches in.")
}

fn file_not_found(id: &str) -> GatewayError {
    GatewayError::not_found(format!("No such File object: {id}")).with_param("id")
}

fn batch_not_found(id: &str) -> GatewayError {
    GatewayError::not_found(format!("No such Batch object: {id}")).with_param("id")
}

fn answer(r: Result<Value, GatewayError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

/// Every `/v1/files` request.
pub async fn files(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let Some(store) = app.keys.store().cloned() else {
        return ApiError(no_store()).into_response();
    };
    let owner = caller.owner();
    let rest = path.strip_prefix("/v1/files").unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match (&method, parts.as_slice()) {
        (&Method::POST, []) => answer(upload(&app, &store, &owner, req).await),
        (&Method::GET, []) => answer(list_files(&store, &owner, query.as_deref()).await),
        (&Method::GET, [id]) => answer(match store.file(id, &owner).await {
            Ok(Some(f)) => Ok(f.to_json()),
            Ok(None) => Err(file_not_found(id)),
            Err(e) => Err(store_failed(e)),
        }),
        (&Method::DELETE, [id]) => answer(match store.delete_file(id, &owner).await {
            Ok(true) => Ok(json!({"id": id, "object": "file", "deleted": true})),
            Ok(false) => Err(file_not_found(id)),
            Err(e) => Err(store_failed(e)),
        }),
        (&Method::GET, [id, "content"]) => match store.file_content(id, &owner).await {
            Ok(Some((_, content))) => {
                let mut resp = Response::new(Body::from(content));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                resp
            }
            Ok(None) => ApiError(file_not_found(id)).into_response(),
            Err(e) => ApiError(store_failed(e)).into_response(),
        },
        (_, [] | [_] | [_, "content"]) => {
            ApiError(GatewayError::method_not_allowed()).into_response()
        }
        _ => ApiError(super::handlers::unknown_url(&method, &path)).into_response(),
    }
}

/// `POST /v1/files`: a multipart form with `file` and `purpose` (and
/// optionally `expires_after[anchor]` = `created_at` with
/// `expires_after[seconds]`, 3600 to 2592000).
async fn upload(
    app: &App,
    store: &Store,
    owner: &str,
    req: Request,
) -> Result<Value, GatewayError> {
    let boundary = super::passthrough::form_boundary(req.headers().get(header::CONTENT_TYPE))?
        .ok_or_else(|| {
            GatewayError::invalid_request(
                "/v1/files takes a multipart/form-data body with the fields 'file' and 'purpose'.",
            )
        })?;
    let text = read_body_within(app, req, app.batches.max_file_bytes).await?;
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(text) });
    let mut form = multer::Multipart::new(stream, boundary);
    let bad = |e: multer::Error| {
        GatewayError::invalid_request(format!("The multipart/form-data body is malformed: {e}."))
    };
    let (mut file, mut purpose, mut anchor, mut seconds) = (None, None, None, None);
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("file") => {
                let name = field.file_name().unwrap_or("upload").to_string();
                file = Some((name, field.bytes().await.map_err(bad)?));
            }
            Some("purpose") => purpose = Some(field.text().await.map_err(bad)?),
            Some("expires_after[anchor]") => anchor = Some(field.text().await.map_err(bad)?),
            Some("expires_after[seconds]") => seconds = Some(field.text().await.map_err(bad)?),
            _ => {}
        }
    }
    let (filename, content) = file.ok_or_else(|| validate::missing("file"))?;
    let purpose = purpose.ok_or_else(|| validate::missing("purpose"))?;
    if !PURPOSES.contains(&purpose.as_str()) {
        return Err(GatewayError::invalid_param(
            "purpose",
            format!(
                "Invalid value for 'purpose': '{purpose}'. Expected one of {}.",
                PURPOSES
                    .iter()
                    .map(|p| format!("'{p}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .with_code("invalid_value"));
    }
    let expires_at = match (anchor.as_deref(), seconds.as_deref()) {
        (None, None) => None,
        (Some("created_at"), Some(s)) => match s.trim().parse::<i64>() {
            Ok(n) if (3600..=2_592_000).contains(&n) => Some(unix_now() + n),
            _ => {
                return Err(GatewayError::invalid_param(
                    "expires_after.seconds",
                    format!("Invalid 'expires_after[seconds]': '{s}'. Expected an integer from 3600 to 2592000."),
                ))
            }
        },
        (Some(a), _) if a != "created_at" => {
            return Err(GatewayError::invalid_param(
                "expires_after.anchor",
                format!("Invalid 'expires_after[anchor]': '{a}'. Expected 'created_at'."),
            ))
        }
        (None, Some(_)) => return Err(validate::missing("expires_after.anchor")),
        (Some(_), _) => return Err(validate::missing("expires_after.seconds")),
    };
    store
        .insert_file(owner, &filename, &purpose, &content, expires_at)
        .await
        .map(|f| f.to_json())
        .map_err(store_failed)
}

async fn list_files(
    store: &Store,
    owner: &str,
    query: Option<&str>,
) -> Result<Value, GatewayError> {
    let purpose = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "purpose")
        .map(|(_, v)| v.into_owned());
    let files = store
        .files(owner, purpose.as_deref())
        .await
        .map_err(store_failed)?;
    let items = files.iter().map(|f| f.to_json()).collect();
    crate::responses::page_of(items, query, 10_000, 10_000)
}

/// Every `/v1/batches` request.
pub async fn serve(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    answer(batch_answer(&app, &caller, req).await)
}

async fn batch_answer(app: &App, caller: &Caller, req: Request) -> Result<Value, GatewayError> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let store = app.keys.store().cloned().ok_or_else(no_store)?;
    let owner = caller.owner();
    let rest = path.strip_prefix("/v1/batches").unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match (&method, parts.as_slice()) {
        (&Method::POST, []) => {
            let text = super::handlers::read_body(app, req).await?;
            create_batch(app, &store, &owner, &parse_json(&text)?).await
        }
        (&Method::GET, []) => {
            let all = store.batches(&owner).await.map_err(store_failed)?;
            crate::responses::page_of(all, query.as_deref(), 20, 100)
        }
        (&Method::GET, [id]) => store
            .batch(id, &owner)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| batch_not_found(id)),
        (&Method::POST, [id, "cancel"]) => cancel(app, &store, &owner, id).await,
        (_, [] | [_] | [_, "cancel"]) => Err(GatewayError::method_not_allowed()),
        _ => Err(super::handlers::unknown_url(&method, &path)),
    }
}

async fn create_batch(
    app: &App,
    store: &Store,
    owner: &str,
    body: &JsonMap,
) -> Result<Value, GatewayError> {
    const MEMBERS: &[&str] = &[
        "input_file_id",
        "endpoint",
        "completion_window",
        "metadata",
        "output_expires_after",
    ];
    if let Some(k) = body.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
        return Err(GatewayError::invalid_param(
            k.clone(),
            format!("Unrecognized request argument supplied: {k}"),
        ));
    }
    let string = |name: &str| match body.get(name) {
        None | Some(Value::Null) => Err(validate::missing(name)),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(GatewayError::invalid_param(
            name,
            format!("Invalid type for '{name}': expected a string."),
        )
        .with_code("invalid_type")),
    };
    let input = string("input_file_id")?;
    let endpoint = string("endpoint")?;
    if !ENDPOINTS.contains(&endpoint) {
        return Err(GatewayError::invalid_param(
            "endpoint",
            format!(
                "Invalid value for 'endpoint': '{endpoint}'. Expected one of {}.",
                ENDPOINTS
                    .iter()
                    .map(|p| format!("'{p}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .with_code("invalid_value"));
    }
    let window = string("completion_window")?;
    if window != batches::WINDOW {
        return Err(GatewayError::invalid_param(
            "completion_window",
            format!("Invalid value for 'completion_window': '{window}'. Expected '24h'."),
        )
        .with_code("invalid_value"));
    }
    let metadata = validate::metadata(body)?;
    let file = store
        .file(input, owner)
        .await
        .map_err(store_failed)?
        .ok_or_else(|| file_not_found(input).with_param("input_file_id"))?;
    if file.purpose != "batch" {
        return Err(GatewayError::invalid_param(
            "input_file_id",
            format!(
                "The file {input} was uploaded for '{}'; a batch's input file must have the purpose 'batch'.",
                file.purpose
            ),
        ));
    }
    let batch = batches::new_batch(input, endpoint, metadata, unix_now());
    store
        .insert_batch(owner, &batch)
        .await
        .map_err(store_failed)?;
    app.batch_wake.notify_one();
    Ok(batch)
}

async fn cancel(app: &App, store: &Store, owner: &str, id: &str) -> Result<Value, GatewayError> {
    for _ in 0..5 {
        let mut batch = store
            .batch(id, owner)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| batch_not_found(id))?;
        let was = batches::status_of(&batch).to_string();
        match was.as_str() {
            "validating" | "in_progress" => {}
            "cancelling" | "cancelled" => return Ok(batch),
            other => {
                return Err(GatewayError::upstream(
                    StatusCode::CONFLICT,
                    "invalid_request_error",
                    format!("Cannot cancel a batch with status '{other}'."),
                ))
            }
        }
        batch["status"] = json!("cancelling");
        batch["cancelling_at"] = json!(unix_now());
        if store.set_batch(&batch, &was).await.map_err(store_failed)? {
            app.batch_wake.notify_one();
            return Ok(batch);
        }
    }
    Err(GatewayError::service_unavailable(
        "The batch kept changing while it was being cancelled; try again.",
    ))
}

// ---------------------------------------------------------------- the worker

/// How long a replica holds a batch without renewing its lease.
const LEASE_MS: i64 = 60_000;
/// How often the worker looks for batches when not woken.
const POLL: Duration = Duration::from_secs(2);
/// How often a running batch's progress is saved and its status looked at.
const TICK: Duration = Duration::from_millis(500);

/// Runs batches until `stop` turns true: then no request starts, those
/// running get `grace` to finish, and the batch is left for the next start
/// (or another replica) to go on with.
pub fn spawn_worker(
    app: App,
    gate: Gate,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    let store = app.keys.store()?.clone();
    let worker = Worker {
        app,
        gate,
        store,
        node: format!("{:016x}", rand::random::<u64>()),
        grace,
    };
    Some(tokio::spawn(worker.run(stop)))
}

struct Worker {
    app: App,
    gate: Gate,
    store: Store,
    /// This process, as the holder of the batches it runs.
    node: String,
    grace: Duration,
}

/// How a replica's turn at a batch ended.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Turn {
    /// The batch reached its end (completed, failed, cancelled, expired).
    Ended,
    /// A step failed (the store's): the batch is taken again after a pause.
    Failed,
    /// It stopped for a shutdown or a lost lease.
    Halted(Halt),
}

/// Why a batch's requests stopped being started.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Halt {
    Shutdown,
    LeaseLost,
    Cancelled,
    Expired,
}

impl Worker {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            match self.store.claim_batch(&self.node, LEASE_MS).await {
                Ok(Some(c)) => {
                    let id = c.id.clone();
                    let keep = self.keep_lease(&id);
                    let turn = self.run_batch(c, &stop).await;
                    keep.abort();
                    if turn != Turn::Halted(Halt::LeaseLost) {
                        if let Err(e) = self.store.release_batch(&id, &self.node).await {
                            tracing::warn!(error = %e, batch = %id, "could not give a batch's lease back");
                        }
                    }
                    // A batch a failure left unfinished is taken again
                    // after a pause, not at once.
                    if turn != Turn::Failed {
                        continue;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not look for batches to run"),
            }
            tokio::select! {
                () = self.app.batch_wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Renews `id`'s lease every third of it while the batch runs.
    fn keep_lease(&self, id: &str) -> tokio::task::JoinHandle<()> {
        let (store, id, node) = (self.store.clone(), id.to_string(), self.node.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(LEASE_MS as u64 / 3)).await;
                match store.renew_batch(&id, &node, LEASE_MS).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, batch = %id, "could not renew a batch's lease")
                    }
                }
            }
        })
    }

    /// Takes a batch from its status to its end, or until it must stop.
    async fn run_batch(&self, c: Claimed, stop: &watch::Receiver<bool>) -> Turn {
        let Claimed {
            id,
            owner,
            mut batch,
        } = c;
        for _ in 0..16 {
            let status = batches::status_of(&batch).to_string();
            let expired = batch["expires_at"]
                .as_i64()
                .is_some_and(|t| unix_now() >= t);
            let step = match status.as_str() {
                "validating" | "in_progress" if expired => {
                    self.finish(&owner, &batch, "expired").await
                }
                "validating" => self.validate(&owner, &mut batch).await,
                "in_progress" => match self.execute(&owner, &batch, stop).await {
                    Ok(Some(h @ (Halt::Shutdown | Halt::LeaseLost))) => return Turn::Halted(h),
                    Ok(Some(Halt::Cancelled) | None) => Ok(()),
                    Ok(Some(Halt::Expired)) => self.finish(&owner, &batch, "expired").await,
                    Err(e) => Err(e),
                },
                "finalizing" => self.finish(&owner, &batch, "completed").await,
                "cancelling" => self.finish(&owner, &batch, "cancelled").await,
                _ => return Turn::Ended,
            };
            if let Err(e) = step {
                tracing::warn!(error = %e, batch = %id, "a batch step failed; it is tried again later");
                return Turn::Failed;
            }
            match self.store.batch(&id, &owner).await {
                Ok(Some(b)) => batch = b,
                Ok(None) => return Turn::Ended,
                Err(e) => {
                    tracing::warn!(error = %e, batch = %id, "could not read a batch back");
                    return Turn::Failed;
                }
            }
        }
        Turn::Failed
    }

    /// `validating` → `in_progress` with the count of its requests, or
    /// `failed` with the problems of its input file.
    async fn validate(
        &self,
        owner: &str,
        batch: &mut Value,
    ) -> Result<(), crate::store::StoreError> {
        let now = unix_now();
        match self.lines(owner, batch).await? {
            Ok(lines) => {
                batch["status"] = json!("in_progress");
                batch["in_progress_at"] = json!(now);
                batch["request_counts"] =
                    json!({"total": lines.len(), "completed": 0, "failed": 0});
                let model = lines
                    .first()
                    .and_then(|l| serde_json::from_slice::<Value>(&l.body).ok())
                    .and_then(|b| b.get("model").cloned());
                batch["model"] = model.unwrap_or(Value::Null);
            }
            Err(errors) => failed(batch, errors),
        }
        self.store.set_batch(batch, "validating").await?;
        Ok(())
    }

    /// The requests of a batch's input file, or why there are none.
    async fn lines(
        &self,
        owner: &str,
        batch: &Value,
    ) -> Result<Result<Vec<Line>, Vec<Value>>, crate::store::StoreError> {
        let input = batch["input_file_id"].as_str().unwrap_or("");
        let endpoint = batch["endpoint"].as_str().unwrap_or("");
        Ok(match self.store.file_content(input, owner).await? {
            Some((_, content)) => batches::parse_lines(&content, endpoint),
            None => Err(vec![json!({"code": "invalid_file",
                "message": format!("The input file {input} is gone."),
                "param": "input_file_id", "line": null})]),
        })
    }

    /// Runs the requests of an `in_progress` batch not answered yet, its
    /// progress saved as it goes; when they are all answered, the batch is
    /// `finalizing`. Stops starting requests for a cancel, the window's
    /// end, a lost lease or a shutdown (those running get the grace). An
    /// input file gone meanwhile fails the batch.
    async fn execute(
        &self,
        owner: &str,
        batch: &Value,
        stop: &watch::Receiver<bool>,
    ) -> Result<Option<Halt>, crate::store::StoreError> {
        let id = batch["id"].as_str().unwrap_or("").to_string();
        let endpoint = batch["endpoint"].as_str().unwrap_or("").to_string();
        let lines = match self.lines(owner, batch).await? {
            Ok(lines) => lines,
            Err(errors) => {
                let mut gone = batch.clone();
                failed(&mut gone, errors);
                self.store
                    .finish_batch(owner, &gone, "in_progress", &[])
                    .await?;
                return Ok(None);
            }
        };
        let done = self.store.batch_results(&id).await?;
        let completed = AtomicU64::new(done.iter().filter(|r| r.ok).count() as u64);
        let failed = AtomicU64::new(done.iter().filter(|r| !r.ok).count() as u64);
        let answered: std::collections::HashSet<i64> = done.iter().map(|r| r.line).collect();
        let pending: Vec<(i64, &Line)> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| (i as i64, l))
            .filter(|(i, _)| !answered.contains(i))
            .collect();
        let caller = self.caller_of(owner).await;
        let halted = AtomicBool::new(false);
        let unsaved = AtomicU64::new(0);
        let work = futures::StreamExt::for_each_concurrent(
            futures::stream::iter(pending),
            self.app.batches.concurrency,
            |(i, line)| {
                let (caller, endpoint, id) = (&caller, &endpoint, &id);
                let (halted, completed, failed, unsaved) = (&halted, &completed, &failed, &unsaved);
                async move {
                    if halted.load(Ordering::Relaxed) {
                        return;
                    }
                    let (ok, text) = self.run_line(caller, endpoint, id, line, halted).await;
                    let r = LineResult { line: i, ok, text };
                    match self.store.add_batch_result(id, &r).await {
                        Ok(()) => {
                            let n = if ok { completed } else { failed };
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            unsaved.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, batch = %id, "could not keep a batch request's answer; it runs again");
                        }
                    }
                }
            },
        );
        let mut halt = None;
        let watch_it = async {
            let mut stop = stop.clone();
            let mut progress = batch.clone();
            let mut written = (u64::MAX, u64::MAX);
            loop {
                tokio::select! {
                    () = tokio::time::sleep(TICK) => {}
                    _ = stop.changed() => {}
                }
                let why = if *stop.borrow() {
                    Some(Halt::Shutdown)
                } else if progress["expires_at"]
                    .as_i64()
                    .is_some_and(|t| unix_now() >= t)
                {
                    Some(Halt::Expired)
                } else {
                    // The counts are written when they changed, else the
                    // status is read: either way a cancel is seen.
                    let counts = (
                        completed.load(Ordering::Relaxed),
                        failed.load(Ordering::Relaxed),
                    );
                    let still = if counts != written {
                        written = counts;
                        progress["request_counts"]["completed"] = json!(counts.0);
                        progress["request_counts"]["failed"] = json!(counts.1);
                        self.store.set_batch(&progress, "in_progress").await
                    } else {
                        self.store
                            .batch_status(&id)
                            .await
                            .map(|s| s.as_deref() == Some("in_progress"))
                    };
                    match still {
                        Ok(true) => None,
                        Ok(false) => match self.store.batch_status(&id).await {
                            Ok(Some(s)) if s == "cancelling" => Some(Halt::Cancelled),
                            Ok(_) => Some(Halt::LeaseLost),
                            Err(_) => None,
                        },
                        Err(_) => None,
                    }
                };
                if let Some(why) = why {
                    halted.store(true, Ordering::Relaxed);
                    return why;
                }
            }
        };
        tokio::pin!(work);
        tokio::select! {
            () = &mut work => {}
            why = watch_it => {
                halt = Some(why);
                // Requests running finish (within the grace at a shutdown).
                if why == Halt::Shutdown {
                    let _ = tokio::time::timeout(self.grace, &mut work).await;
                } else {
                    work.await;
                }
            }
        }
        if halt.is_some() {
            return Ok(halt);
        }
        if unsaved.load(Ordering::Relaxed) > 0 {
            return Ok(None);
        }
        let mut finalizing = batch.clone();
        finalizing["status"] = json!("finalizing");
        finalizing["finalizing_at"] = json!(unix_now());
        finalizing["request_counts"]["completed"] = json!(completed.load(Ordering::Relaxed));
        finalizing["request_counts"]["failed"] = json!(failed.load(Ordering::Relaxed));
        self.store.set_batch(&finalizing, "in_progress").await?;
        Ok(None)
    }

    /// Who runs a batch's requests: its owner, if it may still call (a
    /// key made on another replica is read from the store first).
    async fn caller_of(&self, owner: &str) -> Result<Caller, GatewayError> {
        match owner {
            "master" => Ok(Caller::Master),
            "open" => Ok(Caller::Open),
            _ => {
                let id = owner.strip_prefix("key:").unwrap_or(owner);
                let keys = &self.app.keys;
                let found = match keys.usable_by_id(id) {
                    Err(crate::keys::Refusal::Unknown) => {
                        if let Err(e) = keys.reload().await {
                            tracing::warn!(error = %e, "cannot reload the gateway keys");
                        }
                        keys.usable_by_id(id)
                    }
                    found => found,
                };
                found.map(Caller::Key).map_err(super::auth::refused)
            }
        }
    }

    /// One request of a batch, through the router as its owner; retried
    /// while it is rate limited (not out of budget) or the upstreams fail,
    /// as a client of the Batch API would. Its output file line, and
    /// whether it succeeded.
    async fn run_line(
        &self,
        caller: &Result<Caller, GatewayError>,
        endpoint: &str,
        batch_id: &str,
        line: &Line,
        halted: &AtomicBool,
    ) -> (bool, String) {
        let mut tries = 0u32;
        loop {
            tries += 1;
            let rid = new_request_id();
            let (status, retry_after, body) = match caller {
                Ok(caller) => self.call(caller, &rid, endpoint, batch_id, line).await,
                Err(e) => (e.status, None, e.object()),
            };
            let code = body["error"]["code"].as_str().unwrap_or("");
            let again = match status.as_u16() {
                429 => code != "insufficient_quota" && tries < 10,
                500..=599 => tries < 4,
                _ => false,
            };
            if again && !halted.load(Ordering::Relaxed) {
                let backoff = Duration::from_millis(500u64 << tries.min(6));
                tokio::time::sleep(retry_after.unwrap_or(backoff).min(Duration::from_secs(60)))
                    .await;
                continue;
            }
            let text = json!({
                "id": batches::new_line_id(),
                "custom_id": line.custom_id,
                "response": {"status_code": status.as_u16(), "request_id": &*rid, "body": body},
                "error": null,
            });
            return (status.is_success(), text.to_string());
        }
    }

    async fn call(
        &self,
        caller: &Caller,
        rid: &Arc<str>,
        endpoint: &str,
        batch_id: &str,
        line: &Line,
    ) -> (StatusCode, Option<Duration>, Value) {
        let mut req = Request::new(Body::from(line.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = axum::http::Uri::try_from(endpoint).unwrap_or_default();
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::from_str(&json!({ "batch_id": batch_id }).to_string()) {
            h.insert(METADATA_HEADER, v);
        }
        req.extensions_mut().insert(RequestId(rid.clone()));
        req.extensions_mut().insert(caller.clone());
        let resp = self.gate.route(req).await;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, retry_after, body)
    }

    /// Ends a batch as `end` (`completed`, `cancelled` or `expired`): its
    /// answers written to its output and error files (requests an expired
    /// batch never ran go to the error file as `batch_expired`), its counts
    /// and token usage summed.
    async fn finish(
        &self,
        owner: &str,
        batch: &Value,
        end: &str,
    ) -> Result<(), crate::store::StoreError> {
        let id = batch["id"].as_str().unwrap_or("");
        let was = batches::status_of(batch).to_string();
        let results = self.store.batch_results(id).await?;
        let mut ok: Vec<&str> = Vec::new();
        let mut bad: Vec<&str> = Vec::new();
        let mut usage = Usage::default();
        for r in &results {
            if r.ok {
                ok.push(&r.text);
                usage.add(&r.text);
            } else {
                bad.push(&r.text);
            }
        }
        let mut never_ran = Vec::new();
        if end == "expired" {
            if let Ok(lines) = self.lines(owner, batch).await? {
                let answered: std::collections::HashSet<i64> =
                    results.iter().map(|r| r.line).collect();
                for (i, l) in lines.iter().enumerate() {
                    if !answered.contains(&(i as i64)) {
                        never_ran.push(json!({
                            "id": batches::new_line_id(), "custom_id": l.custom_id, "response": null,
                            "error": {"code": "batch_expired",
                                      "message": "This request could not be executed before the completion window expired."},
                        }).to_string());
                    }
                }
            }
        }
        bad.extend(never_ran.iter().map(String::as_str));
        let mut files = Vec::new();
        let mut done = batch.clone();
        let now = unix_now();
        if let Some(f) = batches::output_file(id, "output", &ok) {
            done["output_file_id"] = json!(f.0.id);
            files.push(f);
        }
        if let Some(f) = batches::output_file(id, "error", &bad) {
            done["error_file_id"] = json!(f.0.id);
            files.push(f);
        }
        done["status"] = json!(end);
        done[format!("{end}_at")] = json!(now);
        if end == "completed" && done["finalizing_at"].is_null() {
            done["finalizing_at"] = json!(now);
        }
        let total = done["request_counts"]["total"].as_u64().unwrap_or(0);
        done["request_counts"] =
            json!({"total": total, "completed": ok.len(), "failed": bad.len()});
        done["usage"] = usage.to_json();
        self.store.finish_batch(owner, &done, &was, &files).await?;
        Ok(())
    }
}

/// Marks `batch` failed for the problems `errors` (its input file's).
fn failed(batch: &mut Value, errors: Vec<Value>) {
    batch["status"] = json!("failed");
    batch["failed_at"] = json!(unix_now());
    batch["errors"] = json!({"object": "list", "data": errors});
}

/// The tokens of a batch's successful requests, summed as its `usage`.
#[derive(Default)]
struct Usage {
    input: u64,
    cached: u64,
    output: u64,
    reasoning: u64,
}

impl Usage {
    fn add(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return;
        };
        let u = &v["response"]["body"]["usage"];
        let n = |a: &str, b: &str| u[a].as_u64().or_else(|| u[b].as_u64()).unwrap_or(0);
        self.input += n("prompt_tokens", "input_tokens");
        self.output += n("completion_tokens", "output_tokens");
        let detail =
            |a: &str, b: &str, k: &str| u[a][k].as_u64().or_else(|| u[b][k].as_u64()).unwrap_or(0);
        self.cached += detail(
            "prompt_tokens_details",
            "input_tokens_details",
            "cached_tokens",
        );
        self.reasoning += detail(
            "completion_tokens_details",
            "output_tokens_details",
            "reasoning_tokens",
        );
    }

    fn to_json(&self) -> Value {
        json!({
            "input_tokens": self.input,
            "input_tokens_details": {"cached_tokens": self.cached},
            "output_tokens": self.output,
            "output_tokens_details": {"reasoning_tokens": self.reasoning},
            "total_tokens": self.input + self.output,
        })
    }
}
