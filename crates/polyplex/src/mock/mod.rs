//! `polyplex mock`: a local simulator of the upstream providers' wire
//! protocols, for demos, tests and benchmarks without keys or network.
//! It is a test double: its answers are derived from the request (see
//! [`reply`]), not from a model.
//!
//! OpenAI protocol: `POST /v1/chat/completions` (streaming too),
//! `POST /v1/completions`, `POST /v1/embeddings`, `GET /v1/models`, and
//! moderations, images and audio ([`media`]);
//! Anthropic (`/v1/messages`, `/v1/messages/count_tokens`), Gemini (`/v1beta/models/...`), Cohere
//! (`/v2/chat`, `/v2/embed`), Azure (`/openai/deployments/...`) and Bedrock
//! (`/model/{id}/converse`, `/converse-stream`; Claude's `/invoke`,
//! `/invoke-with-response-stream`), Vertex AI (`/v1/projects/...`,
//! with its OAuth token endpoint `/token`), each in its own module.
//!
//! Control (for tests):
//! - `POST /__mock/faults` `{"fault": "500"|"503"|"429"|"401"|"timeout"|"disconnect"|"garbage"|"no_usage"|"ratelimit"|"context"|"status",
//!   "count": N, "status": 502, "retry_after": 1, "after_chunks": 2, "delay_ms": 5000,
//!   "model": "only-this-model"}` — the next N matching requests fail that way;
//! - `DELETE /__mock/faults`; `GET /__mock/stats`; `GET /__mock/requests` (the last
//!   requests received, headers and body); `POST /__mock/reset`.

mod anthropic;
pub mod bedrock;
mod cohere;
mod gemini;
mod media;
pub mod reply;
mod rerank;
mod vertex;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use reply::Answer;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, Default)]
pub struct MockOptions {
    /// Time to first byte, milliseconds.
    pub latency_ms: u64,
    /// Streaming pace; 0 means as fast as possible.
    pub tokens_per_s: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Fault {
    pub fault: String,
    #[serde(default = "one")]
    pub count: u64,
    pub status: Option<u16>,
    pub retry_after: Option<u64>,
    pub after_chunks: Option<usize>,
    pub delay_ms: Option<u64>,
    pub model: Option<String>,
}

fn one() -> u64 {
    1
}

#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub streams_started: AtomicU64,
    pub streams_completed: AtomicU64,
    pub streams_cancelled: AtomicU64,
    pub faults_served: AtomicU64,
    /// Access tokens issued by the mock's OAuth endpoint (Vertex AI).
    pub tokens_issued: AtomicU64,
}

pub struct MockState {
    pub opts: MockOptions,
    faults: Mutex<Vec<Fault>>,
    pub stats: Stats,
    recent: Mutex<VecDeque<Value>>,
    seq: AtomicU64,
    /// Prefixes marked for prompt caching, by hash ([`MockState::cached_prefix`]).
    prompt_cache: Mutex<std::collections::HashSet<u64>>,
}

/// What the mock's prompt cache did for a request: tokens of the prompt
/// read from it and written to it (Anthropic's and Bedrock's counts).
#[derive(Clone, Copy, Default)]
pub(crate) struct CacheUse {
    pub read: u64,
    pub written: u64,
}

const RECENT: usize = 64;

impl MockState {
    pub fn new(opts: MockOptions) -> Arc<Self> {
        Arc::new(MockState {
            opts,
            faults: Mutex::new(Vec::new()),
            stats: Stats::default(),
            recent: Mutex::new(VecDeque::new()),
            seq: AtomicU64::new(0),
            prompt_cache: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// Takes one use of the first fault that matches `model`.
    fn take_fault(&self, model: &str) -> Option<Fault> {
        let mut faults = self.faults.lock().ok()?;
        let i = faults
            .iter()
            .position(|f| f.count > 0 && f.model.as_deref().is_none_or(|m| m == model))?;
        faults[i].count -= 1;
        let f = faults[i].clone();
        if faults[i].count == 0 {
            faults.remove(i);
        }
        self.stats.faults_served.fetch_add(1, Ordering::Relaxed);
        Some(f)
    }

    fn record(&self, path: &str, headers: &HeaderMap, body: &Value) {
        let hs: Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
            .collect();
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(json!({"path": path, "headers": hs, "body": body}));
        }
    }

    /// Prompt caching as Anthropic and Bedrock do it, simplified: `items`
    /// are a request's tools, system blocks and message blocks in order,
    /// and the last one `marks` says ends a prefix to cache. A prefix seen
    /// before (same model, same items) is read from the cache, a new one
    /// written to it; its tokens are its texts' words and one per other
    /// item, at most `prompt` (the request's whole prompt). The real APIs
    /// cache only prefixes of 1,024 tokens or more; the mock caches any.
    pub(crate) fn cached_prefix(
        &self,
        model: &str,
        items: &[&Value],
        marks: impl Fn(&Value) -> bool,
        prompt: u64,
    ) -> CacheUse {
        let Some(end) = items.iter().rposition(|i| marks(i)) else {
            return CacheUse::default();
        };
        let mut h: u64 = 0xcbf29ce484222325;
        let mut tokens = 0u64;
        for item in std::iter::once(&&json!(model)).chain(&items[..=end]) {
            for b in item.to_string().bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100000001b3);
            }
            tokens += match item.get("text").and_then(Value::as_str) {
                Some(t) => reply::tokenize(t).len() as u64,
                None => u64::from(item.get("cachePoint").is_none()),
            };
        }
        let tokens = tokens.min(prompt);
        let seen = self
            .prompt_cache
            .lock()
            .map(|mut c| !c.insert(h))
            .unwrap_or(false);
        if seen {
            CacheUse {
                read: tokens,
                written: 0,
            }
        } else {
            CacheUse {
                read: 0,
                written: tokens,
            }
        }
    }

    pub(crate) fn next_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}{:06}",
            self.seq.fetch_add(1, Ordering::Relaxed) + 1
        )
    }
}

pub fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v2/chat", post(cohere::chat))
        .route("/v2/embed", post(cohere::embed))
        .route("/v2/rerank", post(rerank::cohere))
        .route("/v1/rerank", post(rerank::compatible))
        .route("/v1beta/models/{*rest}", post(gemini::generate))
        .route(
            "/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{*rest}",
            post(vertex::project),
        )
        .route(
            "/v1/publishers/{publisher}/models/{*rest}",
            post(vertex::express),
        )
        .route("/token", post(vertex::token))
        .route("/model/{model}/converse", post(bedrock::converse_unary))
        .route("/model/{model}/invoke", post(bedrock::invoke))
        .route("/model/{model}/count-tokens", post(bedrock::count_tokens))
        .route(
            "/model/{model}/invoke-with-response-stream",
            post(bedrock::invoke_stream),
        )
        .route(
            "/model/{model}/converse-stream",
            post(bedrock::converse_stream),
        )
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(azure_chat),
        )
        .route(
            "/openai/deployments/{deployment}/completions",
            post(azure_completions),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(azure_embeddings),
        )
        .route("/openai/v1/{*path}", post(azure_v1))
        .route("/v1/moderations", post(media::moderations))
        .route("/v1/images/generations", post(media::image_generations))
        .route("/v1/images/edits", post(media::image_edits))
        .route("/v1/images/variations", post(media::image_variations))
        .route("/v1/audio/speech", post(media::speech))
        .route("/v1/audio/transcriptions", post(media::transcriptions))
        .route("/v1/audio/translations", post(media::translations))
        .route(
            "/openai/deployments/{deployment}/images/generations",
            post(media::image_generations),
        )
        .route(
            "/openai/deployments/{deployment}/images/edits",
            post(media::image_edits),
        )
        .route(
            "/openai/deployments/{deployment}/audio/speech",
            post(media::speech),
        )
        .route(
            "/openai/deployments/{deployment}/audio/transcriptions",
            post(media::transcriptions),
        )
        .route(
            "/openai/deployments/{deployment}/audio/translations",
            post(media::translations),
        )
        .route("/__mock/faults", post(add_fault).delete(clear_faults))
        .route("/__mock/stats", get(stats))
        .route("/__mock/requests", get(requests))
        .route("/__mock/reset", post(reset))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown mock path",
                None,
            )
        })
        .with_state(state)
}

/// Binds and serves the mock in the background; returns its address.
pub async fn spawn(
    addr: SocketAddr,
    opts: MockOptions,
) -> std::io::Result<(SocketAddr, Arc<MockState>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let state = MockState::new(opts);
    let app = router(state.clone());
    tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let l = listener.tap_io(|t| {
            let _ = t.set_nodelay(true);
        });
        if let Err(e) = axum::serve(l, app).await {
            tracing::error!(error = %e, "mock server stopped");
        }
    });
    Ok((local, state))
}

fn error(status: StatusCode, kind: &str, msg: &str, code: Option<&str>) -> Response {
    (
        status,
        Json(json!({"error": {"message": msg, "type": kind, "param": null, "code": code}})),
    )
        .into_response()
}

/// Every content block of a request's `messages` whose content is a list
/// (Anthropic's and Bedrock's shapes).
pub(crate) fn message_blocks(req: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    req.get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn add_fault(State(s): State<Arc<MockState>>, Json(f): Json<Fault>) -> Response {
    let known = [
        "500",
        "502",
        "503",
        "529",
        "429",
        "400",
        "401",
        "timeout",
        "disconnect",
        "status",
        "garbage",
        "no_usage",
        "ratelimit",
        "context",
    ];
    if !known.contains(&f.fault.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("unknown fault; expected one of {}", known.join(", ")),
            None,
        );
    }
    if let Ok(mut faults) = s.faults.lock() {
        faults.push(f);
    }
    Json(json!({"ok": true})).into_response()
}

async fn clear_faults(State(s): State<Arc<MockState>>) -> Json<Value> {
    if let Ok(mut f) = s.faults.lock() {
        f.clear();
    }
    Json(json!({"ok": true}))
}

async fn reset(State(s): State<Arc<MockState>>) -> Json<Value> {
    if let Ok(mut f) = s.faults.lock() {
        f.clear();
    }
    if let Ok(mut r) = s.recent.lock() {
        r.clear();
    }
    for c in [
        &s.stats.requests,
        &s.stats.streams_started,
        &s.stats.streams_completed,
        &s.stats.streams_cancelled,
        &s.stats.faults_served,
        &s.stats.tokens_issued,
    ] {
        c.store(0, Ordering::Relaxed);
    }
    Json(json!({"ok": true}))
}

async fn stats(State(s): State<Arc<MockState>>) -> Json<Value> {
    let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let st = &s.stats;
    Json(json!({
        "requests": l(&st.requests), "streams_started": l(&st.streams_started),
        "streams_completed": l(&st.streams_completed), "streams_cancelled": l(&st.streams_cancelled),
        "faults_served": l(&st.faults_served), "tokens_issued": l(&st.tokens_issued),
        "pending_faults": s.faults.lock().map(|f| f.iter().map(|x| x.count).sum::<u64>()).unwrap_or(0),
    }))
}

async fn requests(State(s): State<Arc<MockState>>) -> Json<Value> {
    Json(Value::Array(
        s.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default(),
    ))
}

async fn models() -> Json<Value> {
    let ids = ["echo", "gpt-4o", "gpt-4o-mini", "text-embedding-3-small"];
    Json(
        json!({"object": "list", "data": ids.iter().map(|id| json!({"id": id, "object": "model", "created": 1700000000, "owned_by": "polyplex-mock"})).collect::<Vec<_>>()}),
    )
}

/// Which protocol's error bodies to write.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Shape {
    OpenAi,
    Anthropic,
    Google,
    Cohere,
    Bedrock,
}

pub(crate) fn shaped_error(
    shape: Shape,
    status: StatusCode,
    kind: &str,
    msg: &str,
    code: Option<&str>,
) -> Response {
    match shape {
        Shape::OpenAi => error(status, kind, msg, code),
        Shape::Anthropic => {
            let atype = match status.as_u16() {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            (
                status,
                Json(json!({"type": "error", "error": {"type": atype, "message": msg}})),
            )
                .into_response()
        }
        Shape::Cohere => (status, Json(json!({"message": msg}))).into_response(),
        Shape::Bedrock => bedrock::error(status, msg),
        Shape::Google => {
            let gstatus = match status.as_u16() {
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                429 => "RESOURCE_EXHAUSTED",
                503 | 529 => "UNAVAILABLE",
                _ => "INTERNAL",
            };
            (
                status,
                Json(
                    json!({"error": {"code": status.as_u16(), "message": msg, "status": gstatus}}),
                ),
            )
                .into_response()
        }
    }
}

/// Parses the body, records it, applies a pending fault. `Err` is the response to send instead.
pub(crate) async fn admit(
    s: &MockState,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
    shape: Shape,
) -> Result<(Map<String, Value>, Option<Fault>), Response> {
    admit_model(s, path, headers, body, shape, None).await
}

/// [`admit`] for protocols that name the model in the path, not the body.
pub(crate) async fn admit_model(
    s: &MockState,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
    shape: Shape,
    model: Option<&str>,
) -> Result<(Map<String, Value>, Option<Fault>), Response> {
    s.stats.requests.fetch_add(1, Ordering::Relaxed);
    let map: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(m) => m,
        Err(e) => {
            return Err(shaped_error(
                shape,
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("We could not parse the JSON body of your request: {e}"),
                None,
            ))
        }
    };
    s.record(path, headers, &Value::Object(map.clone()));
    let model = model
        .or_else(|| map.get("model").and_then(Value::as_str))
        .unwrap_or("");
    let fault = armed(s, headers, shape, model).await?;
    Ok((map, fault))
}

/// The fault armed for a request to `model`, if any: a failing one is
/// answered here (the error in `shape`, after any delay); the others are
/// the caller's to act on. Then the configured latency.
pub(crate) async fn armed(
    s: &MockState,
    headers: &HeaderMap,
    shape: Shape,
    model: &str,
) -> Result<Option<Fault>, Response> {
    let fault = s.take_fault(model);
    if let Some(f) = &fault {
        match f.fault.as_str() {
            "429" => {
                let mut r = shaped_error(shape, StatusCode::TOO_MANY_REQUESTS, "requests", "Rate limit reached for requests (polyplex mock fault). Please try again in 1s.", Some("rate_limit_exceeded"));
                if let Ok(v) = f.retry_after.unwrap_or(1).to_string().parse() {
                    r.headers_mut().insert("retry-after", v);
                }
                return Err(r);
            }
            "timeout" => {
                tokio::time::sleep(Duration::from_millis(f.delay_ms.unwrap_or(60_000))).await
            }
            "disconnect" | "garbage" | "no_usage" | "ratelimit" => {}
            "context" => {
                // A prompt longer than the model's window, in each API's own words.
                let (msg, code) = match shape {
                    Shape::OpenAi => ("This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. Please reduce the length of the messages.", Some("context_length_exceeded")),
                    Shape::Anthropic => ("prompt is too long: 208310 tokens > 200000 maximum", None),
                    Shape::Google => ("The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).", None),
                    Shape::Cohere => ("too many tokens: total number of tokens in the prompt cannot exceed 128000 - received 131072. Try using a shorter prompt, or enabling prompt truncating.", None),
                    Shape::Bedrock => ("Input is too long for requested model.", None),
                };
                return Err(shaped_error(
                    shape,
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    msg,
                    code,
                ));
            }
            "401" => {
                // Like real providers, echo the rejected key (the gateway must redact it).
                let key = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .trim_start_matches("Bearer ");
                return Err(shaped_error(
                    shape,
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    &format!("Incorrect API key provided: {key}."),
                    Some("invalid_api_key"),
                ));
            }
            other => {
                let code = match other {
                    "status" => f.status.unwrap_or(500),
                    n => n.parse().unwrap_or(500),
                };
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let kind = if code < 500 {
                    "invalid_request_error"
                } else {
                    "server_error"
                };
                return Err(shaped_error(
                    shape,
                    status,
                    kind,
                    &format!(
                        "The mock upstream failed with HTTP {code} on purpose (fault injection)."
                    ),
                    None,
                ));
            }
        }
    }
    if s.opts.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(s.opts.latency_ms)).await;
    }
    Ok(fault)
}

fn usage_json(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
}

fn logprobs_json(pieces: &[String], top: u64) -> Value {
    json!({"content": pieces.iter().map(|p| json!({"token": p, "logprob": -0.0001, "bytes": p.as_bytes(),
        "top_logprobs": (0..top).map(|i| json!({"token": p, "logprob": -0.0001 - i as f64, "bytes": p.as_bytes()})).collect::<Vec<_>>()})).collect::<Vec<_>>(),
        "refusal": null})
}

fn answer_tokens(a: &Answer) -> u64 {
    match a {
        Answer::Text { pieces, .. } => pieces.len() as u64,
        Answer::ToolCall {
            name, arguments, ..
        } => 1 + (name.len() + arguments.len()).div_ceil(4) as u64,
    }
}

/// Streams `events` (already-framed SSE) at the configured pace; `cut_after`
/// drops the connection after that many events.
pub(crate) fn sse_body(
    s: Arc<MockState>,
    events: Vec<Bytes>,
    cut_after: Option<usize>,
) -> Response {
    struct Guard {
        s: Arc<MockState>,
        done: bool,
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            let c = if self.done {
                &self.s.stats.streams_completed
            } else {
                &self.s.stats.streams_cancelled
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    s.stats.streams_started.fetch_add(1, Ordering::Relaxed);
    let gap = if s.opts.tokens_per_s > 0.0 {
        Some(Duration::from_secs_f64(1.0 / s.opts.tokens_per_s))
    } else {
        None
    };
    let total = events.len();
    let guard = Guard { s, done: false };
    let stream = futures::stream::unfold(
        (events.into_iter().enumerate(), guard),
        move |(mut it, mut guard)| async move {
            let (i, ev) = it.next()?;
            if cut_after.is_some_and(|c| i >= c) {
                // Abort mid-stream: the connection is dropped without a clean end.
                // A pause first, so the chunks before the cut reach the peer.
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                return Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "mock fault: disconnect",
                    )),
                    (it, guard),
                ));
            }
            if i > 0 {
                if let Some(g) = gap {
                    tokio::time::sleep(g).await;
                }
            }
            if i + 1 == total {
                guard.done = true;
            }
            Some((Ok::<Bytes, std::io::Error>(ev), (it, guard)))
        },
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// OpenAI's chat answer calling a custom (free-form) tool with text:
/// `tool_calls[].custom.input`, streamed in fragments.
fn custom_tool_call(
    s: &Arc<MockState>,
    req: &serde_json::Map<String, Value>,
    model: &str,
    (call_id, name, input): (String, String, String),
    stream: bool,
    include_usage: bool,
) -> Response {
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let usage = usage_json(
        reply::prompt_tokens(messages),
        reply::tokenize(&input).len().max(1) as u64,
    );
    let id = s.next_id("chatcmpl-mock");
    let created = now();
    if !stream {
        return Json(json!({"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                "annotations": [], "tool_calls": [{"id": call_id, "type": "custom",
                    "custom": {"name": name, "input": input}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": usage}))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value, usage: Option<&Value>| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if let Some(u) = usage {
            c["choices"] = json!([]);
            c["usage"] = u.clone();
        }
        frame(&c)
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": call_id,
            "type": "custom", "custom": {"name": name, "input": ""}}]}),
        Value::Null,
        None,
    )];
    let chars: Vec<char> = input.chars().collect();
    for frag in chars.chunks(8) {
        let frag: String = frag.iter().collect();
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "custom": {"input": frag}}]}),
            Value::Null,
            None,
        ));
    }
    events.push(chunk(json!({}), json!("tool_calls"), None));
    if include_usage {
        events.push(chunk(Value::Null, Value::Null, Some(&usage)));
    }
    events.push(done_frame());
    sse_body(s.clone(), events, None)
}

pub(crate) fn frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

pub(crate) fn done_frame() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// A reply body cut off half way (the "garbage" fault): not valid JSON.
pub(crate) fn garbage() -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        "{\"id\": \"chatcmpl-broken\", \"choi",
    )
        .into_response()
}

async fn chat(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (req, fault) = match admit(&s, "/v1/chat/completions", &headers, &body, Shape::OpenAi).await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if messages.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "'messages' must be a non-empty array",
            None,
        );
    }
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("echo")
        .to_string();
    let n = req
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 128);
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let logprobs = req
        .get("logprobs")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let top = req.get("top_logprobs").and_then(Value::as_u64).unwrap_or(0);
    if let Some(call) = reply::custom_call(&req) {
        return custom_tool_call(&s, &req, &model, call, stream, include_usage);
    }
    let answer = reply::chat_answer(&req);
    // Deprecated function calling: the call comes back as `function_call`.
    let legacy = req.get("functions").is_some_and(|f| !f.is_null());
    let prompt = reply::prompt_tokens(messages);
    let completion = answer_tokens(&answer) * n;
    let id = s.next_id("chatcmpl-mock");
    let created = now();
    let fp = "fp_polyplex_mock";
    let is_fault = |k: &str| fault.as_ref().is_some_and(|f| f.fault == k);

    if !stream {
        if is_fault("disconnect") {
            return sse_body(s, vec![Bytes::from_static(b"{\"id\":")], Some(0));
        }
        if is_fault("garbage") {
            return garbage();
        }
        let choices: Vec<Value> = (0..n)
            .map(|i| {
                let (message, finish, lp) = match &answer {
                    Answer::Text { pieces, finish } => (
                        json!({"role": "assistant", "content": pieces.concat(), "refusal": null, "annotations": []}),
                        *finish,
                        if logprobs { logprobs_json(pieces, top) } else { Value::Null },
                    ),
                    Answer::ToolCall { name, arguments, .. } if legacy => (
                        json!({"role": "assistant", "content": null, "refusal": null, "annotations": [],
                            "function_call": {"name": name, "arguments": arguments}}),
                        "function_call",
                        Value::Null,
                    ),
                    Answer::ToolCall { id, name, arguments } => (
                        json!({"role": "assistant", "content": null, "refusal": null, "annotations": [],
                            "tool_calls": [{"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]}),
                        "tool_calls",
                        Value::Null,
                    ),
                };
                json!({"index": i, "message": message, "logprobs": lp, "finish_reason": finish})
            })
            .collect();
        let tps = s.opts.tokens_per_s;
        if tps > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(completion as f64 / tps)).await;
        }
        let mut out = json!({"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage_json(prompt, completion), "service_tier": "default", "system_fingerprint": fp});
        if is_fault("no_usage") {
            out.as_object_mut().map(|o| o.remove("usage"));
        }
        return spent_limits(Json(out).into_response(), fault.as_ref());
    }

    let chunk = |choices: Value, usage: Option<Value>| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": fp, "choices": choices});
        if include_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        frame(&c)
    };
    let mut events = Vec::new();
    for i in 0..n {
        let first = match &answer {
            Answer::Text { .. } => json!({"role": "assistant", "content": "", "refusal": null}),
            Answer::ToolCall { name, .. } if legacy => json!({"role": "assistant", "content": null,
                "function_call": {"name": name, "arguments": ""}}),
            Answer::ToolCall { id, name, .. } => json!({"role": "assistant", "content": null,
                "tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
        };
        events.push(chunk(
            json!([{"index": i, "delta": first, "logprobs": null, "finish_reason": null}]),
            None,
        ));
    }
    let finish = match &answer {
        Answer::Text { pieces, finish } => {
            for p in pieces {
                for i in 0..n {
                    let lp = if logprobs {
                        logprobs_json(std::slice::from_ref(p), top)
                    } else {
                        Value::Null
                    };
                    events.push(chunk(json!([{"index": i, "delta": {"content": p}, "logprobs": lp, "finish_reason": null}]), None));
                }
            }
            *finish
        }
        Answer::ToolCall { arguments, .. } => {
            let chars: Vec<char> = arguments.chars().collect();
            for frag in chars.chunks(8) {
                let frag: String = frag.iter().collect();
                let delta = if legacy {
                    json!({"function_call": {"arguments": frag}})
                } else {
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]})
                };
                for i in 0..n {
                    events.push(chunk(json!([{"index": i, "delta": delta, "logprobs": null, "finish_reason": null}]), None));
                }
            }
            if legacy {
                "function_call"
            } else {
                "tool_calls"
            }
        }
    };
    for i in 0..n {
        events.push(chunk(
            json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": finish}]),
            None,
        ));
    }
    if include_usage && !is_fault("no_usage") {
        events.push(chunk(json!([]), Some(usage_json(prompt, completion))));
    }
    events.push(done_frame());
    let cut = fault
        .as_ref()
        .filter(|f| f.fault == "disconnect")
        .map(|f| f.after_chunks.unwrap_or(2));
    spent_limits(sse_body(s, events, cut), fault.as_ref())
}

/// The "ratelimit" fault: a normal answer whose `x-ratelimit-*` headers say
/// no requests are left until `retry_after` seconds (default 30) from now,
/// as OpenAI writes them.
fn spent_limits(mut r: Response, fault: Option<&Fault>) -> Response {
    let Some(f) = fault.filter(|f| f.fault == "ratelimit") else {
        return r;
    };
    let reset = format!("{}s", f.retry_after.unwrap_or(30));
    let h = r.headers_mut();
    for (k, v) in [
        ("x-ratelimit-limit-requests", "500".to_string()),
        ("x-ratelimit-remaining-requests", "0".to_string()),
        ("x-ratelimit-reset-requests", reset.clone()),
        ("x-ratelimit-limit-tokens", "30000".to_string()),
        ("x-ratelimit-remaining-tokens", "29000".to_string()),
        ("x-ratelimit-reset-tokens", reset),
    ] {
        if let Ok(v) = v.parse() {
            h.insert(k, v);
        }
    }
    r
}

async fn completions(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (req, fault) = match admit(&s, "/v1/completions", &headers, &body, Shape::OpenAi).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("echo")
        .to_string();
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // As OpenAI's: one choice per prompt (a list of prompts) and per `n`,
    // choice `i * n + j` for prompt `i`.
    let prompts: Vec<&str> = match req.get("prompt") {
        Some(Value::Array(a)) if a.iter().all(Value::is_string) && !a.is_empty() => {
            a.iter().filter_map(Value::as_str).collect()
        }
        Some(Value::String(p)) => vec![p.as_str()],
        _ => vec![""],
    };
    let n = req
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 8);
    let mut prompt_tokens = 0;
    let mut completion_tokens = 0;
    let mut answers = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        prompt_tokens += reply::tokenize(p).len().max(1) as u64;
        let (pieces, finish) = reply::completion_answer(p, &req);
        for j in 0..n {
            completion_tokens += pieces.len() as u64;
            answers.push((i as u64 * n + j, pieces.clone(), finish));
        }
    }
    let usage = usage_json(prompt_tokens, completion_tokens);
    let id = s.next_id("cmpl-mock");
    let created = now();
    if !stream {
        if fault.is_some_and(|f| f.fault == "garbage") {
            return garbage();
        }
        let choices: Vec<Value> = answers
            .iter()
            .map(|(index, pieces, finish)| {
                json!({"text": pieces.concat(), "index": index, "logprobs": null, "finish_reason": finish})
            })
            .collect();
        return Json(
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage, "system_fingerprint": "fp_polyplex_mock"}),
        )
        .into_response();
    }
    let chunk = |index: u64, text: &str, finish: Option<&str>| {
        frame(
            &json!({"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": text, "index": index, "logprobs": null, "finish_reason": finish}]}),
        )
    };
    let mut events: Vec<Bytes> = Vec::new();
    for (index, pieces, finish) in &answers {
        events.extend(pieces.iter().map(|p| chunk(*index, p, None)));
        events.push(chunk(*index, "", Some(finish)));
    }
    if include_usage {
        events.push(frame(
            &json!({"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [], "usage": usage}),
        ));
    }
    events.push(done_frame());
    let cut = fault
        .filter(|f| f.fault == "disconnect")
        .map(|f| f.after_chunks.unwrap_or(2));
    sse_body(s, events, cut)
}

async fn embeddings(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (req, fault) = match admit(&s, "/v1/embeddings", &headers, &body, Shape::OpenAi).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("text-embedding-3-small")
        .to_string();
    let dims = req
        .get("dimensions")
        .and_then(Value::as_u64)
        .unwrap_or(16)
        .clamp(1, 4096) as usize;
    let base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "'input' is required",
                None,
            )
        }
    };
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokens += reply::tokenize(text).len().max(1) as u64;
            let v = reply::embedding(text, dims);
            let emb = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    let mut out = json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    if fault.is_some_and(|f| f.fault == "no_usage") {
        out.as_object_mut().map(|o| o.remove("usage"));
    }
    Json(out).into_response()
}

/// Azure OpenAI's checks (an `api-key` header, an `api-version` query), then the
/// body with the deployment as its model.
fn azure_admit(
    deployment: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Bytes, Box<Response>> {
    if headers.get("api-key").is_none() {
        return Err(Box::new(azure_error(StatusCode::UNAUTHORIZED, "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.")));
    }
    if !query
        .unwrap_or("")
        .split('&')
        .any(|kv| kv.starts_with("api-version=") && kv.len() > "api-version=".len())
    {
        return Err(Box::new(azure_error(
            StatusCode::NOT_FOUND,
            "Resource not found",
        )));
    }
    let mut map: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("invalid JSON: {e}"),
            None,
        ))
    })?;
    map.insert("model".into(), json!(deployment));
    serde_json::to_vec(&map)
        .map(Bytes::from)
        .map_err(|_| Box::new(StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// An error as Azure OpenAI writes it (the status as a string `code`).
fn azure_error(status: StatusCode, msg: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": status.as_u16().to_string(), "message": msg}})),
    )
        .into_response()
}

/// Azure OpenAI's v1 API (`/openai/v1/...`): OpenAI's paths with the
/// deployment in the body's `model`, an `api-key` header, and no dated
/// `api-version` (only `preview` or `latest`, as Azure takes). A bearer
/// token is taken too, as Azure takes Entra ID's (and as Groq, whose API
/// has the same path, `/openai/v1`, is called).
async fn azure_v1(
    State(s): State<Arc<MockState>>,
    Path(path): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if headers.get("api-key").is_none() && headers.get(header::AUTHORIZATION).is_none() {
        return azure_error(StatusCode::UNAUTHORIZED, "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.");
    }
    let version = q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("api-version="));
    if version.is_some_and(|v| v != "preview" && v != "latest") {
        return azure_error(StatusCode::BAD_REQUEST, "API version not supported");
    }
    let s = State(s);
    match path.as_str() {
        "chat/completions" => chat(s, headers, body).await,
        "completions" => completions(s, headers, body).await,
        "embeddings" => embeddings(s, headers, body).await,
        "images/generations" => media::image_generations(s, headers, body).await,
        "images/edits" => media::image_edits(s, headers, body).await,
        "audio/speech" => media::speech(s, headers, body).await,
        "audio/transcriptions" => media::transcriptions(s, headers, body).await,
        "audio/translations" => media::translations(s, headers, body).await,
        _ => azure_error(StatusCode::NOT_FOUND, "Resource not found"),
    }
}

async fn azure_chat(
    State(s): State<Arc<MockState>>,
    Path(d): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match azure_admit(&d, q.as_deref(), &headers, &body) {
        Ok(b) => chat(State(s), headers, b).await,
        Err(r) => *r,
    }
}

async fn azure_completions(
    State(s): State<Arc<MockState>>,
    Path(d): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match azure_admit(&d, q.as_deref(), &headers, &body) {
        Ok(b) => completions(State(s), headers, b).await,
        Err(r) => *r,
    }
}

async fn azure_embeddings(
    State(s): State<Arc<MockState>>,
    Path(d): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match azure_admit(&d, q.as_deref(), &headers, &body) {
        Ok(b) => embeddings(State(s), headers, b).await,
        Err(r) => *r,
    }
}
