//! Stage 8: writing responses — OpenAI JSON, OpenAI SSE, OpenAI errors.

use super::App;
use crate::executor::{OpenStream, Trace};
use crate::routing::Deployment;
use crate::tokens;
use crate::usage::{cost, cost_json, UsageRecord};
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use polyplex_providers::{Endpoint, RawReply, Reply, StreamItem};
use polyplex_types::{GatewayError, JsonMap, RequestBody, Usage};
use serde_json::Value;
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_written_in_decimal() {
        for n in [1, 2, 3, 4, 10, 123] {
            assert_eq!(attempts_value(n).to_str().unwrap(), n.to_string());
        }
    }

    #[test]
    fn sse_framing() {
        assert_eq!(&frame(b"{\"a\":1}")[..], b"data: {\"a\":1}\n\n");
        assert_eq!(
            &frame_without_null_usage(b"{\"a\":1,\"usage\":null}")[..],
            b"data: {\"a\":1}\n\n"
        );
        assert_eq!(
            &frame_without_null_usage(b"{\"usage\":null,\"a\":1}")[..],
            b"data: {\"usage\":null,\"a\":1}\n\n"
        );
    }

    #[test]
    fn usage_chunk_gets_the_cost_spliced_in() {
        let text = r#"{"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;
        let raw = polyplex_providers::RawReply::parse(Bytes::from(text)).unwrap();
        let out = chunk_with_cost(Reply::Raw(raw), 0.25).unwrap();
        // The upstream's own text, with `cost` appended to its usage.
        let usage_at = text.find("\"usage\"").unwrap();
        assert_eq!(&out[..usage_at], &text.as_bytes()[..usage_at]);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["usage"]["cost"], 0.25);
        assert_eq!(v["usage"]["total_tokens"], 12);
        assert_eq!(v["id"], "c1");

        // A usage that already has a cost: replaced, through the tree.
        let text = r#"{"id":"c2","choices":[],"usage":{"prompt_tokens":1,"cost":9}}"#;
        let raw = polyplex_providers::RawReply::parse(Bytes::from(text)).unwrap();
        let v: Value =
            serde_json::from_slice(&chunk_with_cost(Reply::Raw(raw), 0.5).unwrap()).unwrap();
        assert_eq!(
            v["usage"],
            serde_json::json!({"prompt_tokens": 1, "cost": 0.5})
        );

        // A chunk the gateway built (translated protocols).
        let mut map = JsonMap::new();
        map.insert("id".into(), "c3".into());
        map.insert("usage".into(), serde_json::json!({"prompt_tokens": 2}));
        let v: Value =
            serde_json::from_slice(&chunk_with_cost(Reply::Map(map), 0.125).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "c3", "usage": {"prompt_tokens": 2, "cost": 0.125}})
        );
    }

    #[test]
    fn errors_carry_retry_after() {
        let mut e = GatewayError::upstream(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "slow down",
        );
        e.retry_after = Some(Duration::from_millis(2500));
        let r = ApiError(e).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "3");
        assert_eq!(r.headers()["content-type"], "application/json");
    }

    #[test]
    fn a_spent_budget_is_not_to_be_retried() {
        let r = ApiError(GatewayError::quota_exceeded("spent")).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["x-should-retry"], "false");
        assert!(r.headers().get("retry-after").is_none());
    }
}

/// A gateway error as an HTTP response in OpenAI's shape.
#[derive(Debug)]
pub struct ApiError(pub GatewayError);

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let mut resp = Response::new(Body::from(e.body()));
        *resp.status_mut() = e.status;
        let h = resp.headers_mut();
        h.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if e.kind == "insufficient_quota" {
            // A spent budget does not come back in a second: the SDKs
            // (Python and Node) skip their retries on `x-should-retry:
            // false` and raise at once instead of waiting out two retries.
            h.insert(
                HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            );
        } else if e.status == StatusCode::TOO_MANY_REQUESTS
            || e.status == StatusCode::SERVICE_UNAVAILABLE
        {
            let secs = e
                .retry_after
                .map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
            h.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Response header names, built once (`insert` with a `&str` name parses
/// it on every call).
pub(crate) mod names {
    use axum::http::HeaderName;

    pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    pub static PROVIDER: HeaderName = HeaderName::from_static("x-polyplex-provider");
    pub static MODEL: HeaderName = HeaderName::from_static("x-polyplex-model");
    pub static ATTEMPTS: HeaderName = HeaderName::from_static("x-polyplex-attempts");
    pub static FALLBACKS: HeaderName = HeaderName::from_static("x-polyplex-fallbacks");
    pub static SKIPPED: HeaderName = HeaderName::from_static("x-polyplex-skipped");
    pub static HEDGED: HeaderName = HeaderName::from_static("x-polyplex-hedged");
    pub static ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
    pub static DROPPED_PARAMS: HeaderName = HeaderName::from_static("x-polyplex-dropped-params");
    pub static CACHE: HeaderName = HeaderName::from_static("x-polyplex-cache");
    pub static RL_LIMIT_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-limit-requests");
    pub static RL_REMAINING_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-requests");
    pub static RL_RESET_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-reset-requests");
    pub static RL_LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
    pub static RL_REMAINING_TOKENS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-tokens");
    pub static RL_RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
}

/// Who served a request: the `x-polyplex-*` headers.
pub type Served = Trace;

/// The `x-polyplex-attempts` value; the common counts without formatting
/// or allocating.
fn attempts_value(n: u32) -> HeaderValue {
    match n {
        1 => HeaderValue::from_static("1"),
        2 => HeaderValue::from_static("2"),
        3 => HeaderValue::from_static("3"),
        _ => HeaderValue::from(n),
    }
}

impl Served {
    pub fn apply(&self, resp: &mut Response) {
        let h = resp.headers_mut();
        if let Some(d) = &self.deployment {
            if let Some(v) = &d.upstream.name_header {
                h.insert(&names::PROVIDER, v.clone());
            }
            if let Ok(v) = HeaderValue::from_str(&d.model) {
                h.insert(&names::MODEL, v);
            }
        }
        if self.attempts > 0 {
            h.insert(&names::ATTEMPTS, attempts_value(self.attempts));
        }
        if !self.failed_over.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&self.failed_over.join(", ")) {
                h.insert(&names::FALLBACKS, v);
            }
        }
        if !self.skipped.is_empty() || !self.limited.is_empty() {
            let passed_over: Vec<&str> = self
                .skipped
                .iter()
                .chain(&self.limited)
                .map(String::as_str)
                .collect();
            if let Ok(v) = HeaderValue::from_str(&passed_over.join(", ")) {
                h.insert(&names::SKIPPED, v);
            }
        }
        if self.hedged {
            h.insert(&names::HEDGED, HeaderValue::from_static("true"));
        }
    }
}

/// Ensures `usage` is present (estimating it if the upstream sent none) and adds `usage.cost`.
/// Returns the answer with the usage as recorded. An upstream's own answer
/// that reported usage keeps its bytes; only its `usage` member is rewritten.
pub fn finish_usage(
    app: &App,
    d: &Deployment,
    endpoint: Endpoint,
    request: &RequestBody,
    resp: Reply,
    upstream: Option<Usage>,
) -> (Reply, Usage, f64) {
    match (resp, upstream) {
        (Reply::Raw(mut raw), Some(usage)) => {
            let c = cost(app.catalog(), d, &usage);
            if raw_usage_with_cost(&mut raw, c) {
                return (Reply::Raw(raw), usage, c);
            }
            let mut map = raw.into_map();
            let (usage, c) = usage_into_map(app, d, endpoint, request, &mut map, Some(usage));
            (Reply::Map(map), usage, c)
        }
        (other, upstream) => {
            let mut map = other.into_map();
            let (usage, c) = usage_into_map(app, d, endpoint, request, &mut map, upstream);
            (Reply::Map(map), usage, c)
        }
    }
}

/// Sets `usage.cost` on an upstream's own answer or chunk: spliced into the
/// raw `usage` text when it can be, else into a decoded copy of `usage`.
pub(super) fn raw_usage_with_cost(raw: &mut RawReply, c: f64) -> bool {
    if raw.append_to_object("usage", "cost", &cost_json(c)) {
        return true;
    }
    let mut u: JsonMap = raw
        .get("usage")
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    u.insert("cost".into(), cost_json(c));
    raw.set("usage", &Value::Object(u)).is_ok()
}

/// Sets `completion_tokens_details.reasoning_tokens` in a `usage` object.
fn set_reasoning(u: &mut JsonMap, tokens: u64) {
    let details = u
        .entry("completion_tokens_details")
        .or_insert_with(|| Value::Object(JsonMap::new()));
    if !details.is_object() {
        *details = Value::Object(JsonMap::new());
    }
    if let Value::Object(d) = details {
        d.insert("reasoning_tokens".into(), Value::from(tokens));
    }
}

/// Sets `usage.cost` on a decoded answer or chunk whose `usage` is an object.
fn map_usage_with_cost(map: &mut JsonMap, c: f64) {
    if let Some(Value::Object(u)) = map.get_mut("usage") {
        u.insert("cost".into(), cost_json(c));
    }
}

/// A usage chunk's text with `usage.cost` set.
fn chunk_with_cost(chunk: Reply, c: f64) -> Result<Bytes, serde_json::Error> {
    let mut map = match chunk {
        Reply::Raw(mut raw) => {
            if raw_usage_with_cost(&mut raw, c) {
                return Ok(raw.to_bytes());
            }
            raw.into_map()
        }
        Reply::Map(map) => map,
    };
    map_usage_with_cost(&mut map, c);
    serde_json::to_vec(&map).map(Bytes::from)
}

fn usage_into_map(
    app: &App,
    d: &Deployment,
    endpoint: Endpoint,
    request: &RequestBody,
    resp: &mut JsonMap,
    upstream: Option<Usage>,
) -> (Usage, f64) {
    let mut usage = upstream.unwrap_or_else(|| {
        let prompt = tokens::prompt(endpoint, request.map());
        let completion = if endpoint == Endpoint::Embeddings {
            0
        } else {
            tokens::response_completion(resp)
        };
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            estimated: true,
            ..Usage::default()
        }
    });
    if endpoint == Endpoint::Chat && tokens::response_reasoning(&mut usage, resp) {
        if let Some(Value::Object(u)) = resp.get_mut("usage") {
            set_reasoning(u, usage.reasoning_tokens);
        }
    }
    let c = cost(app.catalog(), d, &usage);
    if !resp.get("usage").is_some_and(Value::is_object) {
        let u = if endpoint == Endpoint::Embeddings {
            serde_json::json!({"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens})
        } else {
            usage.to_json()
        };
        resp.insert("usage".into(), u);
    }
    map_usage_with_cost(resp, c);
    (usage, c)
}

pub fn json_response(body: &Reply) -> Response {
    match body.to_bytes() {
        Ok(bytes) => json_bytes(bytes),
        Err(e) => ApiError(GatewayError::internal(format!(
            "could not encode the response: {e}"
        )))
        .into_response(),
    }
}

/// A 200 answer of JSON text.
pub fn json_bytes(bytes: Bytes) -> Response {
    let mut r = Response::new(Body::from(bytes));
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn frame(json: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(json.len() + 8);
    b.put_slice(b"data: ");
    b.put_slice(json);
    b.put_slice(b"\n\n");
    b.freeze()
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Polyplex asks upstreams for usage on every stream; when the client did not,
/// the `"usage":null` that then rides on each chunk is taken out again (OpenAI
/// leaves the key out). OpenAI writes it last, so a suffix check suffices.
fn frame_without_null_usage(chunk: &[u8]) -> Bytes {
    const TAIL: &[u8] = b",\"usage\":null}";
    match chunk.strip_suffix(TAIL) {
        Some(head) => {
            let mut b = BytesMut::with_capacity(head.len() + 9);
            b.put_slice(b"data: ");
            b.put_slice(head);
            b.put_slice(b"}\n\n");
            b.freeze()
        }
        None => frame(chunk),
    }
}

/// What a stream needs to write its usage record.
pub struct StreamContext {
    pub app: App,
    pub request_id: String,
    pub endpoint: Endpoint,
    /// The endpoint as the usage record names it.
    pub label: &'static str,
    pub requested_model: String,
    pub include_usage: bool,
    /// The request uses deprecated function calling: tool-call deltas go
    /// out as `function_call` deltas.
    pub functions: bool,
    /// The request declares custom tools and a translating protocol
    /// answers: its stand-in functions' calls go out as custom tool calls.
    pub custom: Option<polyplex_providers::custom_tools::CustomStream>,
    pub started: Instant,
    pub attempts: u32,
    pub request: RequestBody,
    /// The gateway key's admission: its concurrency slot lasts as long as the stream.
    pub admitted: Option<crate::keys::Admitted>,
    /// Where the response cache keeps this stream once it has ended well.
    pub cache_as: Option<crate::cache::Key>,
    /// What the request says about itself (end user, metadata).
    pub tags: crate::usage::Tags,
}

/// Says an answer was not in the response cache (and is kept now).
pub(super) fn cache_missed(resp: &mut Response) {
    resp.headers_mut()
        .insert(&names::CACHE, HeaderValue::from_static("miss"));
}

/// One client stream: upstream events in, OpenAI SSE frames out.
pub(super) struct Relay {
    pub(super) ctx: StreamContext,
    pub(super) open: OpenStream,
    pub(super) deployment: Deployment,
    pub(super) out: VecDeque<Bytes>,
    pub(super) finished: bool,
    recorded: bool,
    pub(super) usage: Option<Usage>,
    ttft: Duration,
    events: Vec<polyplex_providers::sse::Event>,
    /// The frames sent so far, for the response cache (`cache_as`).
    captured: Option<Vec<u8>>,
}

impl Relay {
    pub(super) fn new(ctx: StreamContext, open: OpenStream, deployment: Deployment) -> Relay {
        let ttft = open.first_byte_at.duration_since(ctx.started);
        let captured = ctx.cache_as.as_ref().map(|_| Vec::new());
        Relay {
            captured,
            ctx,
            open,
            deployment,
            out: VecDeque::new(),
            finished: false,
            recorded: false,
            usage: None,
            ttft,
            events: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, frame: Bytes) {
        crate::cache::capture(&mut self.captured, &frame);
        self.out.push_back(frame);
    }

    fn handle(&mut self, item: StreamItem) {
        match item {
            StreamItem::Chunk(mut b) => {
                if (self.ctx.functions || self.ctx.custom.is_some())
                    && memchr::memmem::find(&b, b"tool_calls").is_some()
                {
                    b = self.ctx.with_tool_calls_rewritten(b);
                }
                let f = if self.ctx.include_usage {
                    frame(&b)
                } else {
                    frame_without_null_usage(&b)
                };
                self.push(f);
            }
            StreamItem::Usage(mut u, mut chunk) => {
                if tokens::stream_reasoning(&mut u, self.open.decoder.as_ref()) {
                    let mut m = chunk.into_map();
                    if let Some(Value::Object(usage)) = m.get_mut("usage") {
                        set_reasoning(usage, u.reasoning_tokens);
                    }
                    chunk = Reply::Map(m);
                }
                self.usage = Some(u);
                if self.ctx.include_usage {
                    let c = cost(self.ctx.app.catalog(), &self.deployment, &u);
                    if let Ok(bytes) = chunk_with_cost(chunk, c) {
                        self.push(frame(&bytes));
                    }
                }
            }
            StreamItem::Done => self.complete(),
        }
    }

    /// The counted usage when the upstream reported none.
    fn estimated_usage(&self) -> Usage {
        let summary = self.open.decoder.summary();
        let mut u = tokens::stream_estimate(
            self.ctx.endpoint,
            self.ctx.request.map(),
            &summary.completion_text,
        );
        u.prompt_tokens *= self.open.prompts;
        u
    }

    fn complete(&mut self) {
        if self.finished {
            return;
        }
        if self.usage.is_none() {
            let u = self.estimated_usage();
            self.usage = Some(u);
            if self.ctx.include_usage {
                let s = self.open.decoder.summary();
                let c = cost(self.ctx.app.catalog(), &self.deployment, &u);
                let mut uj = u.to_json();
                uj["cost"] = cost_json(c);
                let object = if self.ctx.endpoint == Endpoint::Chat {
                    "chat.completion.chunk"
                } else {
                    "text_completion"
                };
                let chunk = serde_json::json!({"id": s.id, "object": object, "created": s.created, "model": s.model.unwrap_or_else(|| self.deployment.model.clone()), "choices": [], "usage": uj});
                self.push(frame(chunk.to_string().as_bytes()));
            }
        }
        self.push(Bytes::from_static(DONE));
        self.finished = true;
        self.record(200);
        self.store();
    }

    /// A stream that ended well, into the response cache.
    pub(super) fn store(&mut self) {
        let (Some(cache), Some(key), Some(body)) = (
            self.ctx.app.cache(),
            self.ctx.cache_as.take(),
            self.captured.take(),
        ) else {
            return;
        };
        cache.put(
            key,
            crate::cache::Entry::served(
                Bytes::from(body),
                &self.deployment,
                self.usage.unwrap_or_default(),
                self.open.dropped.clone(),
            ),
        );
    }

    /// Ends the stream with an explicit error event and no `[DONE]`.
    fn fail(&mut self, e: GatewayError) {
        tracing::warn!(request_id = %self.ctx.request_id, provider = %self.deployment.upstream.name, error = %e, "stream failed after the first byte");
        let body = serde_json::json!({"error": e.object()});
        self.push(frame(body.to_string().as_bytes()));
        self.finished = true;
        self.record(e.status.as_u16());
    }

    pub(super) fn record(&mut self, status: u16) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        // The stream is answered: the client's next request may follow at once.
        super::busy::touch();
        let usage = match self.usage {
            Some(u) => u,
            // Every other ending waited for the encoding (`next_frame`);
            // a client that went away before the upstream's usage came
            // does not wait: its record is counted and written elsewhere.
            None if status == 499 && !tokens::loaded() => return self.record_when_counted(),
            None => self.estimated_usage(),
        };
        let now = Instant::now();
        // A client that went away (499) says nothing about the upstream.
        if status != 499
            && self.deployment.stats.on_stream_end(
                &self.ctx.app.health,
                now,
                now.saturating_duration_since(self.ctx.started),
                now.saturating_duration_since(self.open.first_byte_at),
                usage.completion_tokens,
                status == 200,
            )
        {
            self.ctx.app.circuit_opened(&self.deployment);
        }
        let c = cost(self.ctx.app.catalog(), &self.deployment, &usage);
        let record = self.usage_record(status, usage, c);
        record_served(&self.ctx.app, &self.deployment, record);
    }

    /// A cut-short stream's record, its usage counted off the serving
    /// thread ([`record_when_counted`]).
    fn record_when_counted(&mut self) {
        let text = self.open.decoder.summary().completion_text;
        let request = std::mem::replace(
            &mut self.ctx.request,
            RequestBody::parsed(Bytes::new(), JsonMap::new()),
        );
        let (endpoint, prompts) = (self.ctx.endpoint, self.open.prompts);
        let record = self.usage_record(499, Usage::default(), 0.0);
        record_when_counted(
            self.ctx.app.clone(),
            self.deployment.clone(),
            record,
            move || {
                let mut u = tokens::stream_estimate(endpoint, request.map(), &text);
                u.prompt_tokens *= prompts;
                u
            },
        );
    }

    fn usage_record(&self, status: u16, usage: Usage, c: f64) -> UsageRecord {
        UsageRecord {
            request_id: self.ctx.request_id.clone(),
            endpoint: self.ctx.label,
            requested_model: self.ctx.requested_model.clone(),
            provider: Some(self.deployment.upstream.name.clone()),
            model: Some(self.deployment.model.clone()),
            status,
            usage,
            cost_usd: c,
            latency: self.ctx.started.elapsed(),
            ttft: Some(self.ttft),
            attempts: self.ctx.attempts,
            stream: true,
            at: SystemTime::now(),
            key: self.ctx.admitted.as_ref().map(|a| a.key.clone()),
            tags: self.ctx.tags.clone(),
            charged: 0,
        }
    }

    /// Waits for the token encoding, without blocking the serving thread,
    /// when handling `items` counts tokens (`&mut`: a relay is `Send`, not `Sync`).
    pub(super) async fn counting(&mut self, items: &[StreamItem]) {
        if !tokens::loaded()
            && tokens::stream_counts(self.usage.is_some(), items, self.open.decoder.as_ref())
        {
            tokens::ready().await;
        }
    }

    /// Ends the stream with `e`, its usage counted.
    async fn failed(&mut self, e: GatewayError) {
        self.counting(&[StreamItem::Done]).await;
        self.fail(e);
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(f) = self.out.pop_front() {
                crate::phase::mark("frame");
                return Some(f);
            }
            if self.finished {
                crate::phase::dump();
                return None;
            }
            if !self.open.pending.is_empty() {
                let items = std::mem::take(&mut self.open.pending);
                self.counting(&items).await;
                for it in items {
                    self.handle(it);
                }
                continue;
            }
            let idle = self.open.idle_timeout;
            match tokio::time::timeout(idle, self.open.body.next()).await {
                Err(_) => {
                    self.failed(
                        GatewayError::upstream_timeout(&self.deployment.upstream.name, idle)
                            .with_code("upstream_stream_idle"),
                    )
                    .await
                }
                Ok(Some(Ok(bytes))) => {
                    self.open.parser.feed(&bytes, &mut self.events);
                    let events = std::mem::take(&mut self.events);
                    for ev in &events {
                        if let Err(e) = self.open.decoder.on_event(ev, &mut self.open.pending) {
                            self.failed(e).await;
                            break;
                        }
                    }
                    self.events = events;
                    self.events.clear();
                }
                Ok(Some(Err(_))) => {
                    self.failed(GatewayError::upstream_unreachable(
                        &self.deployment.upstream.name,
                        "the connection broke during the stream",
                    ))
                    .await
                }
                Ok(None) => match self.open.decoder.finish(&mut self.open.pending) {
                    Ok(()) => {
                        let items = std::mem::take(&mut self.open.pending);
                        self.counting(&items).await;
                        for it in items {
                            self.handle(it);
                        }
                        self.counting(&[StreamItem::Done]).await;
                        self.complete();
                    }
                    Err(e) => self.failed(e).await,
                },
            }
        }
    }
}

/// Writes `record` with the usage `count` makes and its cost at `d`'s
/// prices, counted off the serving thread ([`tokens::off_the_serving_thread`]).
pub(super) fn record_when_counted<F>(app: App, d: Deployment, mut record: UsageRecord, count: F)
where
    F: FnOnce() -> Usage + Send + 'static,
{
    tokens::off_the_serving_thread(move || {
        record.usage = count();
        record.cost_usd = cost(app.catalog(), &d, &record.usage);
        record_served(&app, &d, record);
    });
}

/// Records a request that `d` served (or began to): its tokens count
/// against the provider's configured `tpm` too.
pub(super) fn record_served(app: &super::AppState, d: &Deployment, record: UsageRecord) {
    let u = &record.usage;
    app.count_upstream_tokens(d, u.prompt_tokens + u.completion_tokens);
    app.recorder.record(record);
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client went away mid-stream: dropping `open` closes the upstream
        // connection; the record says 499 (client closed request).
        if !self.recorded {
            tracing::info!(request_id = %self.ctx.request_id, "client disconnected; upstream request cancelled");
            self.record(499);
        }
    }
}

/// The SSE response for a stream whose first chunk has arrived.
pub fn sse_response(ctx: StreamContext, open: OpenStream, deployment: Deployment) -> Response {
    crate::phase::mark("ret");
    sse_of(Relay::new(ctx, open, deployment))
}

/// What writes a stream's frames, one after another until `None`.
pub(super) trait Frames: Send + 'static {
    fn next_frame(&mut self) -> impl std::future::Future<Output = Option<Bytes>> + Send;
}

impl Frames for Relay {
    fn next_frame(&mut self) -> impl std::future::Future<Output = Option<Bytes>> + Send {
        Relay::next_frame(self)
    }
}

/// The SSE response whose body `frames` writes.
pub(super) fn sse_of(frames: impl Frames) -> Response {
    let stream = futures::stream::unfold(frames, |mut f| async move {
        f.next_frame()
            .await
            .map(|b| (Ok::<Bytes, std::convert::Infallible>(b), f))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    sse_headers(&mut resp);
    resp
}

impl StreamContext {
    /// A chunk's tool-call deltas as the request asked for them: a
    /// deprecated `function_call` delta; a custom tool's stand-in
    /// function's call as the custom tool call it is.
    fn with_tool_calls_rewritten(&mut self, chunk: Bytes) -> Bytes {
        let Ok(mut map) = serde_json::from_slice::<JsonMap>(&chunk) else {
            return chunk;
        };
        if self.functions {
            polyplex_providers::tools_to_function_call(&mut map);
        }
        if let Some(custom) = &mut self.custom {
            custom.on_chunk(&mut map);
        }
        serde_json::to_vec(&map).map(Bytes::from).unwrap_or(chunk)
    }
}

/// An SSE response's own headers.
pub fn sse_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert(&names::ACCEL_BUFFERING, HeaderValue::from_static("no"));
}

/// Where a Responses answer is kept (`store`), and for whom.
pub struct Keep {
    pub store: crate::store::Store,
    pub owner: String,
    /// Keep the response itself (`store`); else only its items join the
    /// conversation the request named.
    pub response: bool,
}

impl Keep {
    /// Keeps a completed (or incomplete) response with its conversation,
    /// and adds its input and output items to the `conversation` named; a
    /// failed one is neither. A store that fails is logged: the answer
    /// still goes out, and continuing from it will say it is not found.
    async fn save(self, echo: &crate::responses::Echo, response: &Value) {
        if response["status"] == "failed" {
            return;
        }
        let items = crate::responses::stored_items(echo, response);
        if let Some(conversation) = &echo.conversation {
            let listed: Vec<Value> = items
                .iter()
                .enumerate()
                .map(|(i, item)| crate::responses::listed_item(item.clone(), &echo.id, i))
                .collect();
            let added = self
                .store
                .add_conversation_items(conversation, &self.owner, &listed)
                .await;
            if let Err(e) = added {
                tracing::error!(response_id = %echo.id, conversation, error = %e, "could not add a response's items to its conversation");
            }
        }
        if !self.response {
            return;
        }
        let (Ok(items), Ok(body)) = (
            serde_json::to_string(&items),
            serde_json::to_string(response),
        ) else {
            return;
        };
        if let Err(e) = self
            .store
            .save_response(
                &echo.id,
                &self.owner,
                &items,
                &body,
                echo.previous.as_deref(),
            )
            .await
        {
            tracing::error!(response_id = %echo.id, error = %e, "could not keep a response");
        }
    }
}

/// A chat answer rewritten for the Responses API (`POST /v1/responses`,
/// `crate::responses`): an error keeps its status and body, its `param`
/// named as the Responses request calls it; a completion becomes a Response
/// object; a stream becomes the Responses stream's events. The headers
/// (`x-request-id`, `x-polyplex-*`, `x-ratelimit-*`) stay; the dropped
/// parameters are named as the Responses request calls them.
pub async fn responses_answer(
    resp: Response,
    echo: crate::responses::Echo,
    mut dropped: Vec<String>,
    keep: Option<Keep>,
) -> Response {
    use crate::responses::{response_object, Streamer};
    let (mut parts, body) = resp.into_parts();
    if let Some(v) = parts.headers.get(&names::DROPPED_PARAMS) {
        let named = v.to_str().unwrap_or_default().split(", ");
        let mut all: Vec<String> = named.map(|n| echo.param(n)).collect();
        all.append(&mut dropped);
        dropped = all;
    }
    if let Ok(v) = HeaderValue::from_str(&dropped.join(", ")) {
        if !dropped.is_empty() {
            parts.headers.insert(&names::DROPPED_PARAMS, v);
        }
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    if answered_as_stream(&parts) {
        let state = (
            body.into_data_stream(),
            polyplex_providers::sse::Parser::new(),
            Streamer::new(echo),
            keep,
        );
        let events = futures::stream::unfold(
            state,
            |(mut body, mut parser, mut s, mut keep)| async move {
                if s.ended() {
                    return None;
                }
                let out = next_events(&mut body, &mut parser, &mut s).await;
                // Kept before its last event goes out, so a request that
                // continues from it right away finds it.
                if let Some(r) = s.final_response() {
                    if let Some(k) = keep.take() {
                        k.save(s.echo(), r).await;
                    }
                }
                Some((
                    Ok::<Bytes, std::convert::Infallible>(Bytes::from(out)),
                    (body, parser, s, keep),
                ))
            },
        );
        return Response::from_parts(parts, Body::from_stream(events));
    }
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError(GatewayError::internal(format!("responses: {e}"))).into_response()
        }
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let out = if parts.status == StatusCode::OK {
        let r = response_object(&v, &echo);
        if let Some(k) = keep {
            k.save(&echo, &r).await;
        }
        r
    } else {
        let chat = v
            .pointer("/error/param")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let (Some(chat), Some(e)) = (chat, v.get_mut("error")) {
            if let Some(m) = e.get("message").and_then(Value::as_str) {
                e["message"] = Value::String(echo.message(m, &chat));
            }
            e["param"] = Value::String(echo.param(&chat));
        }
        v
    };
    let bytes = serde_json::to_vec(&out).unwrap_or_default();
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(bytes))
}

/// Whether a chat answer is a stream that started (a 200 of events).
fn answered_as_stream(parts: &axum::http::response::Parts) -> bool {
    parts.status == StatusCode::OK
        && parts
            .headers
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// What turns a chat stream's events into another API's (the Responses
/// API's, Anthropic's): told each chunk, the end, or a failure, it writes
/// its own events.
pub trait ChatEvents {
    fn ended(&self) -> bool;
    fn on_chunk(&mut self, chunk: &Value, out: &mut Vec<u8>);
    fn on_done(&mut self, out: &mut Vec<u8>);
    /// `error`: OpenAI's error object.
    fn on_error(&mut self, error: &Value, out: &mut Vec<u8>);
}

/// [`ChatEvents`] for a streamer whose own methods are those.
macro_rules! chat_events {
    ($t:ty) => {
        impl ChatEvents for $t {
            fn ended(&self) -> bool {
                <$t>::ended(self)
            }
            fn on_chunk(&mut self, chunk: &Value, out: &mut Vec<u8>) {
                <$t>::on_chunk(self, chunk, out)
            }
            fn on_done(&mut self, out: &mut Vec<u8>) {
                <$t>::on_done(self, out)
            }
            fn on_error(&mut self, error: &Value, out: &mut Vec<u8>) {
                <$t>::on_error(self, error, out)
            }
        }
    };
}
chat_events!(crate::responses::Streamer);
chat_events!(crate::messages::Streamer);
chat_events!(crate::genai::Streamer);

/// The next events `s` writes from a chat stream's body: read until there
/// are some, or the stream has ended (a body that ends or breaks before
/// `[DONE]` is a failure `s` reports).
async fn next_events<S: ChatEvents>(
    body: &mut axum::body::BodyDataStream,
    parser: &mut polyplex_providers::sse::Parser,
    s: &mut S,
) -> Vec<u8> {
    let mut out = Vec::new();
    while out.is_empty() && !s.ended() {
        let mut got = Vec::new();
        match body.next().await {
            Some(Ok(bytes)) => parser.feed(&bytes, &mut got),
            Some(Err(_)) | None => {
                let e = GatewayError::upstream(
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    "The stream ended before the answer was complete.",
                )
                .with_code("stream_ended");
                s.on_error(&e.object(), &mut out);
            }
        }
        for ev in got {
            if ev.data == "[DONE]" {
                s.on_done(&mut out);
            } else if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                match v.get("error") {
                    Some(err) => s.on_error(err, &mut out),
                    None => s.on_chunk(&v, &mut out),
                }
            }
        }
    }
    out
}

/// An error in Anthropic's shape: the answer [`ApiError`] gives it (its
/// status, `retry-after`, `x-should-retry`) with Anthropic's body.
pub fn anthropic_error(e: GatewayError) -> Response {
    let body = crate::messages::error_object(
        e.status.as_u16(),
        &serde_json::json!({ "error": e.object() }),
    );
    let (parts, _) = ApiError(e).into_response().into_parts();
    Response::from_parts(
        parts,
        Body::from(serde_json::to_vec(&body).unwrap_or_default()),
    )
}

/// A converted endpoint's stream: the chat stream's events rewritten by
/// `s` as they come.
fn rewritten_stream<S: ChatEvents + Send + 'static>(
    parts: axum::http::response::Parts,
    body: Body,
    s: S,
) -> Response {
    let state = (
        body.into_data_stream(),
        polyplex_providers::sse::Parser::new(),
        s,
    );
    let events = futures::stream::unfold(state, |(mut body, mut parser, mut s)| async move {
        if s.ended() {
            return None;
        }
        let out = next_events(&mut body, &mut parser, &mut s).await;
        Some((
            Ok::<Bytes, std::convert::Infallible>(Bytes::from(out)),
            (body, parser, s),
        ))
    });
    Response::from_parts(parts, Body::from_stream(events))
}

/// A converted endpoint's JSON answer: the chat answer (or error, by its
/// status) read and rewritten by `rewrite`; `failed` says a body that
/// could not be read in the endpoint's own error shape.
async fn rewritten_json(
    mut parts: axum::http::response::Parts,
    body: Body,
    rewrite: impl FnOnce(StatusCode, &Value) -> Value,
    failed: impl FnOnce(GatewayError) -> Response,
) -> Response {
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return failed(GatewayError::internal(format!("answer: {e}"))),
    };
    let v = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
    let out = rewrite(parts.status, &v);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(
        parts,
        Body::from(serde_json::to_vec(&out).unwrap_or_default()),
    )
}

/// Adds `more` to the parameters an answer names as dropped.
fn name_dropped(parts: &mut axum::http::response::Parts, more: &[&'static str]) {
    if more.is_empty() {
        return;
    }
    let mut named: Vec<&str> = parts
        .headers
        .get(&names::DROPPED_PARAMS)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').map(str::trim).collect())
        .unwrap_or_default();
    named.extend(more);
    if let Ok(v) = HeaderValue::from_str(&named.join(", ")) {
        parts.headers.insert(&names::DROPPED_PARAMS, v);
    }
}

/// A chat answer as Gemini's (`crate::genai`): its
/// `GenerateContentResponse`, its stream (server-sent events for
/// `alt=sse`, else one JSON array), or its error in Google's shape; what
/// the conversion left out named in `x-polyplex-dropped-params`.
pub async fn genai_answer(resp: Response, echo: crate::genai::Echo, sse: bool) -> Response {
    use crate::genai::{error_object, response_object, Streamer};
    let (mut parts, body) = resp.into_parts();
    name_dropped(&mut parts, &echo.dropped);
    if answered_as_stream(&parts) {
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        if !sse {
            parts.headers.insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        return rewritten_stream(parts, body, Streamer::new(echo, sse));
    }
    let rewrite = |status: StatusCode, v: &Value| {
        if status == StatusCode::OK {
            response_object(v, &echo)
        } else {
            error_object(status.as_u16(), v)
        }
    };
    rewritten_json(parts, body, rewrite, super::genai::google_error).await
}

/// An embeddings answer as Gemini's (`embedContent`, `batchEmbedContents`),
/// or its error in Google's shape.
pub async fn genai_embeddings_answer(
    resp: Response,
    batch: bool,
    dropped: &[&'static str],
) -> Response {
    let (mut parts, body) = resp.into_parts();
    name_dropped(&mut parts, dropped);
    let rewrite = |status: StatusCode, v: &Value| {
        if status == StatusCode::OK {
            crate::genai::embeddings_object(v, batch)
        } else {
            crate::genai::error_object(status.as_u16(), v)
        }
    };
    rewritten_json(parts, body, rewrite, super::genai::google_error).await
}

/// A chat answer as Anthropic's (`POST /v1/messages`): its Message, its
/// stream of events, or its error; the request id also as `request-id`
/// (where Anthropic's SDK reads it).
pub async fn messages_answer(
    resp: Response,
    echo: crate::messages::Echo,
    request_id: std::sync::Arc<str>,
) -> Response {
    use crate::messages::{error_object, message_object, Streamer};
    let (mut parts, body) = resp.into_parts();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        parts
            .headers
            .insert(HeaderName::from_static("request-id"), v);
    }
    if parts
        .extensions
        .get::<super::native::NativeAnswer>()
        .is_some()
    {
        // Anthropic's answer already, as its upstream gave it.
        return Response::from_parts(parts, body);
    }
    if answered_as_stream(&parts) {
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        return rewritten_stream(parts, body, Streamer::new(echo));
    }
    let rewrite = |status: StatusCode, v: &Value| {
        if status == StatusCode::OK {
            message_object(v, &echo)
        } else {
            error_object(status.as_u16(), v)
        }
    };
    rewritten_json(parts, body, rewrite, anthropic_error).await
}
