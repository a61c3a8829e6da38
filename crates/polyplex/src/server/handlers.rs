//! Stages 3–9 for each endpoint.

use super::auth::Caller;
use super::respond::{finish_usage, json_response, sse_response, ApiError, Served, StreamContext};
use super::{App, RequestId};
use crate::executor::{attempt_loop, stream_once, unary_once};
use crate::keys::{Admitted, Limits};
use crate::routing::Facts;
use crate::usage::{Tags, UsageRecord};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use polyplex_providers::{Endpoint, Reply};
use polyplex_types::validate::ChatMeta;
use polyplex_types::validate::ProviderPrefs;
use polyplex_types::{validate, GatewayError, JsonMap, RequestBody, Usage};
use serde_json::{json, Value};
use std::time::{Instant, SystemTime};

/// Marks a request whose body the gateway wrote itself from a client's
/// body already read within the limit (a Responses request as chat, a
/// kept conversation before its new input): the limit is the client's, not
/// the converted body's.
#[derive(Clone, Copy)]
pub(super) struct Converted;

/// Stage 3: the body's bytes, within the size limit.
pub(super) async fn read_body(app: &App, req: Request) -> Result<Bytes, GatewayError> {
    let limit = if req.extensions().get::<Converted>().is_some() {
        usize::MAX
    } else {
        app.max_body()
    };
    read_body_within(app, req, limit).await
}

/// The body's bytes, up to `limit` (413 past it).
pub(super) async fn read_body_within(
    app: &App,
    req: Request,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    if let Some(len) = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(GatewayError::body_too_large(limit));
        }
    }
    let mut read = std::pin::pin!(axum::body::to_bytes(req.into_body(), limit));
    // A body that came with its head (the usual case) is read without a timer.
    let read = match futures::FutureExt::now_or_never(&mut read) {
        Some(r) => r,
        None => match app.body_timeout() {
            Some(t) => tokio::time::timeout(t, read)
                .await
                .map_err(|_| GatewayError::body_timeout(t))?,
            None => read.await,
        },
    };
    let bytes = read.map_err(|e| {
        if is_length_limit(&e) {
            GatewayError::body_too_large(limit)
        } else if cut_short(&e) {
            GatewayError::client_closed(format!(
                "The client closed the connection before the request body was in: {e}"
            ))
        } else {
            GatewayError::invalid_request(format!("Could not read the request body: {e}"))
        }
    })?;
    crate::phase::mark("bytes");
    Ok(bytes)
}

/// The body as a JSON object.
pub(super) fn parse_json(bytes: &[u8]) -> Result<JsonMap, GatewayError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(GatewayError::invalid_request(
            "The request body is empty. The API expects a JSON object.",
        ));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        GatewayError::invalid_request(format!(
            "We could not parse the JSON body of your request ({e}). The API expects a JSON object; check that the body is valid JSON and sent with Content-Type: application/json."
        ))
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(GatewayError::invalid_request(format!(
            "The request body must be a JSON object, but it is {}.",
            kind_of(&other)
        ))),
    }
}

/// Whether `e` or an error under it is one `is` says yes to.
fn caused_by(e: &axum::Error, is: impl Fn(&(dyn std::error::Error + 'static)) -> bool) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if is(err) {
            return true;
        }
        cur = err.source();
    }
    false
}

fn is_length_limit(e: &axum::Error) -> bool {
    caused_by(e, |err| err.is::<http_body_util::LengthLimitError>())
}

/// Whether a body failed to arrive because its connection ended first
/// (the client went), not because it was malformed: hyper says so by an
/// `UnexpectedEof` under its error.
fn cut_short(e: &axum::Error) -> bool {
    caused_by(e, |err| {
        err.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_incomplete_message() || h.is_canceled() || h.is_closed())
            || err.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                )
            })
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
        Value::Object(_) => "an object",
    }
}

struct Parsed {
    body: RequestBody,
    model: String,
    fallbacks: Vec<String>,
    prefs: ProviderPrefs,
    stream: bool,
    include_usage: bool,
    /// Deprecated function calling ([`ChatMeta::functions`]).
    functions: bool,
    /// What routing looks at: output cap, tools, images, json_schema.
    max_output: Option<u64>,
    needs: (bool, bool, bool),
    /// The end user the request names (`user`, `safety_identifier`).
    user: Option<String>,
    /// Its `metadata` pairs.
    metadata: Option<JsonMap>,
}

/// Stage 4: the body validated. A common chat request is validated from its
/// text (its JSON tree is built later only if something reads it); any other
/// body is parsed into its tree and validated from that. On error, the
/// model asked for and the end user named, for the usage record.
fn validate(endpoint: Endpoint, text: Bytes) -> Result<Parsed, Box<Refused>> {
    if endpoint == Endpoint::Chat {
        if let Some((m, shape)) = validate::chat_quick(&text) {
            crate::phase::mark("json");
            return Ok(Parsed::from_meta(RequestBody::quick(text, shape), m));
        }
    }
    let tree = parse_json(&text).map_err(|error| {
        Box::new(Refused {
            asked: String::new(),
            body: None,
            error,
        })
    })?;
    crate::phase::mark("json");
    let checked = match endpoint {
        Endpoint::Chat => validate::chat(&tree),
        Endpoint::Completions => validate::completions(&tree).map(ChatMeta::from),
        Endpoint::Embeddings => validate::embeddings(&tree).map(ChatMeta::from),
    };
    match checked {
        Ok(m) => Ok(Parsed::from_meta(RequestBody::parsed(text, tree), m)),
        Err(error) => Err(Box::new(Refused {
            asked: tree
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            body: Some(tree),
            error,
        })),
    }
}

/// A body validation refused, with what its usage record names: the
/// model asked for, and the body (its end user and metadata), if it parsed.
struct Refused {
    asked: String,
    body: Option<JsonMap>,
    error: GatewayError,
}

/// The custom tools a request declares, when `upstream` stands functions
/// in for them (a translating protocol: its calls of those functions go
/// back as custom tool calls); OpenAI's protocol answers them itself.
fn custom_tools_of(parsed: &Parsed, upstream: &crate::upstream::Upstream) -> Option<Vec<String>> {
    if !parsed.needs.0 || matches!(upstream.kind.as_str(), "openai" | "azure") {
        return None;
    }
    let names = polyplex_providers::custom_tools::custom_names(parsed.body.map());
    (!names.is_empty()).then_some(names)
}

impl Parsed {
    /// A validated body and what validation learned of it (in the chat
    /// form, whatever the endpoint).
    fn from_meta(body: RequestBody, m: ChatMeta) -> Parsed {
        Parsed {
            body,
            model: m.model,
            fallbacks: m.fallback_models,
            prefs: m.provider,
            stream: m.stream,
            include_usage: m.include_usage,
            functions: m.functions,
            max_output: m.max_tokens,
            needs: (m.has_tools, m.has_images, m.json_schema),
            user: m.user,
            metadata: m.metadata,
        }
    }
}

/// The header that tags a request's usage record with metadata pairs, on
/// every endpoint (the body's `metadata` adds to them where an endpoint
/// has one).
pub const METADATA_HEADER: &str = "x-polyplex-metadata";

/// The pairs of a request's [`METADATA_HEADER`]: a JSON object of strings,
/// within the limits of a body's `metadata`.
fn metadata_header(headers: &HeaderMap) -> Result<Option<JsonMap>, GatewayError> {
    let Some(v) = headers.get(METADATA_HEADER) else {
        return Ok(None);
    };
    let bad = || {
        GatewayError::invalid_param(
            METADATA_HEADER,
            format!("The {METADATA_HEADER} header must be a JSON object of strings, such as {{\"team\": \"search\"}}."),
        )
    };
    let pairs: JsonMap = serde_json::from_slice(v.as_bytes()).map_err(|_| bad())?;
    validate::check_metadata(METADATA_HEADER, &pairs)?;
    Ok((!pairs.is_empty()).then_some(pairs))
}

/// One call in progress: what its usage record and error response need.
pub(super) struct Call {
    pub(super) app: App,
    pub(super) rid: String,
    endpoint: Endpoint,
    /// The endpoint as usage records and metrics name it (`responses` for
    /// a Responses request served as chat).
    pub(super) label: &'static str,
    pub(super) started: Instant,
    pub(super) caller: Caller,
    /// The metadata pairs of the request's `x-polyplex-metadata` header.
    header_metadata: Option<JsonMap>,
    /// What the request says about itself, once its body is read: every
    /// usage record of the request carries it.
    tags: std::sync::OnceLock<Tags>,
    /// A Messages request that may go upstream as the client wrote it.
    native: Option<std::sync::Arc<super::native::NativeRequest>>,
}

impl Call {
    pub(super) fn new(
        app: App,
        rid: &RequestId,
        caller: Caller,
        endpoint: Endpoint,
        label: &'static str,
    ) -> Call {
        Call {
            app,
            rid: rid.0.to_string(),
            endpoint,
            label,
            started: Instant::now(),
            caller,
            header_metadata: None,
            tags: std::sync::OnceLock::new(),
            native: None,
        }
    }

    /// Answers `req` by `answer` once its headers are read (a bad metadata
    /// header is the answer), with `gone` to record the request if the
    /// client leaves before the answer is done.
    pub(super) async fn run(
        mut self,
        req: Request,
        answer: impl for<'a> AsyncFnOnce(&'a Call, Request, &'a Unanswered<'a>) -> Response,
    ) -> Response {
        if let Err(e) = self.read_headers(req.headers()) {
            return self.fail("", false, e, &Served::default());
        }
        let mut gone = Unanswered::new(&self);
        let resp = answer(&self, req, &gone).await;
        gone.answered = true;
        resp
    }

    /// The usage record of a unary answer `d` gave.
    pub(super) fn served_record(
        &self,
        model: &str,
        d: &crate::routing::Deployment,
        usage: Usage,
        cost: f64,
        attempts: u32,
        admitted: Option<&Admitted>,
    ) -> UsageRecord {
        let latency = self.started.elapsed();
        UsageRecord {
            request_id: self.rid.clone(),
            endpoint: self.label,
            requested_model: model.to_string(),
            provider: Some(d.upstream.name.clone()),
            model: Some(d.model.clone()),
            status: 200,
            usage,
            cost_usd: cost,
            latency,
            ttft: Some(latency),
            attempts,
            stream: false,
            at: SystemTime::now(),
            key: admitted.map(|a| a.key.clone()),
            tags: self.tags(),
            charged: 0,
        }
    }

    /// Takes the `x-polyplex-metadata` pairs of the request's headers; the
    /// error that header is, if it is one.
    pub(super) fn read_headers(&mut self, headers: &HeaderMap) -> Result<(), GatewayError> {
        self.header_metadata = metadata_header(headers)?;
        Ok(())
    }

    /// Tags the call's usage records with the end user and the metadata its
    /// body names (over its header's pairs, under its key's).
    pub(super) fn tag(&self, user: Option<String>, metadata: Option<&JsonMap>) {
        let _ = self.tags.set(self.tags_with(user, metadata));
    }

    /// Tags the call from a body that may not have passed validation: its
    /// end user (a string `user`, else `safety_identifier`) and its
    /// `metadata` where that is valid.
    pub(super) fn tag_from(&self, body: &JsonMap) {
        let text = |k: &str| body.get(k).and_then(Value::as_str);
        self.tag(
            validate::end_user(text("user"), text("safety_identifier")),
            validate::metadata(body).ok().flatten(),
        );
    }

    /// The tags of the call's usage records: those of its header and key
    /// until its body is read.
    pub(super) fn tags(&self) -> Tags {
        match self.tags.get() {
            Some(t) => t.clone(),
            None => self.tags_with(None, None),
        }
    }

    fn tags_with(&self, user: Option<String>, body: Option<&JsonMap>) -> Tags {
        let spec = self.caller.key().map(|k| k.spec());
        let key = spec.as_ref().and_then(|s| s.metadata.as_ref());
        Tags::new(user, &[self.header_metadata.as_ref(), body, key])
    }

    /// Records the failure and answers it in OpenAI's error shape.
    pub(super) fn fail(
        &self,
        model: &str,
        stream: bool,
        e: GatewayError,
        served: &Served,
    ) -> Response {
        self.app.recorder.record(UsageRecord {
            request_id: self.rid.clone(),
            endpoint: self.label,
            requested_model: model.to_string(),
            provider: served.deployment.as_ref().map(|d| d.upstream.name.clone()),
            model: served.deployment.as_ref().map(|d| d.model.clone()),
            status: e.status.as_u16(),
            usage: Usage::default(),
            cost_usd: 0.0,
            latency: self.started.elapsed(),
            ttft: None,
            attempts: served.attempts,
            stream,
            at: SystemTime::now(),
            key: self.caller.key().cloned(),
            tags: self.tags(),
            charged: 0,
        });
        let mut resp = ApiError(e).into_response();
        served.apply(&mut resp);
        resp
    }

    /// Answers from the response cache: the stored answer at no cost,
    /// recorded with provider `cache` (its tokens kept, nothing charged).
    fn cached(
        &self,
        parsed: &Parsed,
        admitted: Option<&Admitted>,
        hit: &crate::cache::Entry,
    ) -> Response {
        self.record_hit(&parsed.model, parsed.stream, admitted, hit);
        let mut resp = if parsed.stream {
            let mut r = Response::new(axum::body::Body::from(crate::cache::hit_stream_body(
                &hit.body,
            )));
            super::respond::sse_headers(&mut r);
            r
        } else {
            super::respond::json_bytes(crate::cache::hit_body(&hit.body))
        };
        hit_headers(&mut resp, hit);
        resp
    }

    /// The usage record of an answer from the response cache: provider
    /// `cache`, the stored tokens, no cost.
    pub(super) fn record_hit(
        &self,
        model: &str,
        stream: bool,
        admitted: Option<&Admitted>,
        hit: &crate::cache::Entry,
    ) {
        let latency = self.started.elapsed();
        self.app.recorder.record(UsageRecord {
            request_id: self.rid.clone(),
            endpoint: self.label,
            requested_model: model.to_string(),
            provider: Some("cache".into()),
            model: Some(hit.model.clone()),
            status: 200,
            usage: hit.usage,
            cost_usd: 0.0,
            latency,
            ttft: Some(latency),
            attempts: 0,
            stream,
            at: SystemTime::now(),
            key: admitted.map(|a| a.key.clone()),
            tags: self.tags(),
            charged: 0,
        });
    }

    /// Stage 5 for a gateway key: the model (and any fallbacks) allowed,
    /// then budget and limits: those all replicas share through Redis when
    /// it is configured and answers, else this node's own.
    pub(super) async fn admit(
        &self,
        model: &str,
        fallbacks: &[String],
    ) -> Result<Option<Admitted>, GatewayError> {
        let Some(key) = self.caller.key() else {
            return Ok(None);
        };
        let spec = key.spec();
        let access = spec.models.as_deref();
        if !self.app.router().may_reach(access, model) {
            return Err(crate::keys::model_forbidden(model));
        }
        for (i, m) in fallbacks.iter().enumerate() {
            if !self.app.router().may_reach(access, m) {
                return Err(crate::keys::model_forbidden(m).with_param(format!("models[{i}]")));
            }
        }
        let shared = match &self.app.shared_limits {
            Some(shared) => shared.admit(key).await,
            None => None,
        };
        let admitted = match shared {
            Some(a) => a?,
            None => key.admit(Instant::now())?,
        };
        // Each end user's own budget and per-minute limits, under the key's.
        if let Some(user) = self.tags.get().and_then(|t| t.user.as_deref()) {
            self.app.admit_end_user(key, &admitted.spec, user).await?;
        }
        Ok(Some(admitted))
    }
}

/// OpenAI's `x-ratelimit-*` headers for a key's per-minute limits.
pub(super) fn ratelimit_headers(resp: &mut Response, limits: &Limits) {
    use super::respond::names as n;
    let h = resp.headers_mut();
    for (l, [limit, remaining, reset]) in [
        (
            limits.rpm,
            [
                &n::RL_LIMIT_REQUESTS,
                &n::RL_REMAINING_REQUESTS,
                &n::RL_RESET_REQUESTS,
            ],
        ),
        (
            limits.tpm,
            [
                &n::RL_LIMIT_TOKENS,
                &n::RL_REMAINING_TOKENS,
                &n::RL_RESET_TOKENS,
            ],
        ),
    ] {
        if let Some(l) = l {
            h.insert(limit, l.limit.into());
            h.insert(remaining, l.remaining.into());
            if let Ok(v) = crate::keys::reset_text(l.reset).parse() {
                h.insert(reset, v);
            }
        }
    }
}

/// One API call, from its body to its answer, recorded as `label`. The
/// gate calls it directly for a POST to an API path whose key it could
/// check at once.
pub(super) async fn handle(
    app: App,
    rid: RequestId,
    caller: Caller,
    endpoint: Endpoint,
    label: &'static str,
    mut req: Request,
) -> Response {
    let mut call = Call::new(app, &rid, caller, endpoint, label);
    call.native = req.extensions_mut().remove();
    call.run(req, answer).await
}

/// The headers of an answer from the response cache: `x-polyplex-cache:
/// hit`, no attempt, the provider and model that first answered.
pub(super) fn hit_headers(resp: &mut Response, hit: &crate::cache::Entry) {
    use super::respond::names;
    use axum::http::HeaderValue;
    let h = resp.headers_mut();
    h.insert(&names::CACHE, HeaderValue::from_static("hit"));
    h.insert(&names::ATTEMPTS, HeaderValue::from(0));
    if let Ok(v) = HeaderValue::from_str(&hit.provider) {
        h.insert(&names::PROVIDER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&hit.model) {
        h.insert(&names::MODEL, v);
    }
    dropped_header(resp, &hit.dropped);
}

/// [`handle`]'s answer; `gone` is told what a record needs if the client
/// goes before it.
async fn answer(call: &Call, req: Request, gone: &Unanswered<'_>) -> Response {
    let app = &call.app;
    let no_one = Served::default();
    let cache_mode = app.cache().map(|_| crate::cache::Mode::of(req.headers()));
    let text = match read_body(app, req).await {
        Ok(b) => b,
        Err(e) => return call.fail("", false, e, &no_one),
    };
    let mut parsed = match validate(call.endpoint, text) {
        Ok(p) => p,
        Err(b) => {
            let Refused { asked, body, error } = *b;
            if let Some(body) = &body {
                call.tag_from(body);
            }
            return call.fail(&asked, false, error, &no_one);
        }
    };
    call.tag(parsed.user.take(), parsed.metadata.take().as_ref());
    crate::phase::mark("valid");
    gone.asked(&parsed);
    let admitted = match call.admit(&parsed.model, &parsed.fallbacks).await {
        Ok(a) => a,
        Err(e) => {
            // A 429 of this node's per-minute limits carries OpenAI's
            // headers too (shared limits: Redis's count is not at hand).
            let limited = e.status == StatusCode::TOO_MANY_REQUESTS
                && e.code.as_deref() == Some("rate_limit_exceeded");
            let mut resp = call.fail(&parsed.model, parsed.stream, e, &no_one);
            if limited && call.app.shared_limits.is_none() {
                if let Some(key) = call.caller.key() {
                    ratelimit_headers(&mut resp, &key.limits_now(Instant::now()));
                }
            }
            return resp;
        }
    };
    let mut limits = admitted.as_ref().map(|a| a.limits).unwrap_or_default();
    let stream = parsed.stream;
    let mut resp = serve(call, parsed, admitted, cache_mode, gone).await;
    // A unary answer's tokens are counted against the key by now: the
    // tokens header says what is left after it, as OpenAI's does. (A
    // stream's are counted when it ends, after its headers; limits shared
    // through Redis keep the count Redis gave at admission.)
    if !stream && limits.tpm.is_some() && call.app.shared_limits.is_none() {
        if let Some(key) = call.caller.key() {
            limits.tpm = key.limits_now(Instant::now()).tpm;
        }
    }
    ratelimit_headers(&mut resp, &limits);
    resp
}

/// The usage record of a request whose client goes before it is answered
/// (a client's timeout, a closed connection): the server drops the
/// request's future then, and every request still writes one record —
/// status 499, and when an upstream had the request, its provider and the
/// prompt counted (estimated, as a cut-short stream's), which the upstream
/// bills. Whatever answers the request records it instead.
pub(super) struct Unanswered<'a> {
    call: &'a Call,
    seen: std::sync::Mutex<Seen>,
    pub(super) answered: bool,
}

#[derive(Default)]
struct Seen {
    model: String,
    stream: bool,
    body: Bytes,
    attempts: u32,
    /// The deployment whose attempt was under way when the client went.
    cut: Option<crate::routing::Deployment>,
}

/// Marks an attempt cut short if dropped before it ends.
struct Cut<'a, 'b> {
    gone: &'a Unanswered<'b>,
    d: Option<&'a crate::routing::Deployment>,
}

impl Drop for Cut<'_, '_> {
    fn drop(&mut self) {
        if let Some(d) = self.d {
            self.gone.seen().cut = Some(d.clone());
        }
    }
}

impl<'a> Unanswered<'a> {
    pub(super) fn new(call: &'a Call) -> Self {
        Unanswered {
            call,
            seen: Default::default(),
            answered: false,
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The request, validated (its body shares the buffer).
    fn asked(&self, p: &Parsed) {
        let mut s = self.seen();
        s.model.clone_from(&p.model);
        s.stream = p.stream;
        s.body = p.body.text().clone();
    }

    /// A request whose body is not a chat-like one (no prompt to count
    /// if it is cut short): its model and whether it streams.
    pub(super) fn asked_for(&self, model: &str, stream: bool) {
        let mut s = self.seen();
        model.clone_into(&mut s.model);
        s.stream = stream;
    }

    /// `work` for deployment `d` (an upstream attempt, or its answer's
    /// count), marked cut short if the client goes before it ends.
    pub(super) async fn attempt<T>(
        &self,
        d: &crate::routing::Deployment,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        self.seen().attempts += 1;
        let mut cut = Cut {
            gone: self,
            d: Some(d),
        };
        let r = work.await;
        cut.d = None;
        r
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let call = self.call;
        let seen = std::mem::take(&mut *self.seen());
        if seen.cut.is_some() {
            tracing::info!(request_id = %call.rid, "client disconnected before the answer; upstream request cancelled");
        } else {
            tracing::info!(request_id = %call.rid, "client disconnected before the answer");
        }
        let record = UsageRecord {
            request_id: call.rid.clone(),
            endpoint: call.label,
            requested_model: seen.model,
            provider: seen.cut.as_ref().map(|d| d.upstream.name.clone()),
            model: seen.cut.as_ref().map(|d| d.model.clone()),
            status: 499,
            usage: Usage::default(),
            cost_usd: 0.0,
            latency: call.started.elapsed(),
            ttft: None,
            attempts: seen.attempts,
            stream: seen.stream,
            at: SystemTime::now(),
            key: call.caller.key().cloned(),
            tags: call.tags(),
            charged: 0,
        };
        let Some(d) = seen.cut else {
            return call.app.recorder.record(record);
        };
        let (endpoint, body) = (call.endpoint, seen.body);
        super::respond::record_when_counted(call.app.clone(), d, record, move || {
            // The body passed validation: it parses.
            let request: JsonMap = serde_json::from_slice(&body).unwrap_or_default();
            Usage {
                prompt_tokens: crate::tokens::prompt(endpoint, &request),
                estimated: true,
                ..Usage::default()
            }
        });
    }
}

/// Stages 6–9 for an admitted request. Takes the request by value: a
/// stream keeps its body (to count the prompt if the upstream never says)
/// without a deep copy on the way to its first byte.
async fn serve(
    call: &Call,
    parsed: Parsed,
    admitted: Option<Admitted>,
    cache_mode: Option<crate::cache::Mode>,
    gone: &Unanswered<'_>,
) -> Response {
    let app = &call.app;
    let endpoint = call.endpoint;
    let no_one = Served::default();
    // The response cache. A Messages request whose chat form left
    // something out is not the request that form is: it is not cached.
    let cache_mode = cache_mode.filter(|_| call.native.as_ref().is_none_or(|n| n.lossy.is_none()));
    let cache_key = match (app.cache(), cache_mode) {
        (Some(_), Some(mode)) if mode != crate::cache::Mode::Skip => {
            Some(crate::cache::ResponseCache::key(
                endpoint.as_str(),
                &call.caller.owner(),
                parsed.body.map(),
            ))
        }
        _ => None,
    };
    // A Messages request that may go upstream as written (its chat form
    // lacks nothing) is answered in Anthropic's own shape when it does:
    // those answers are kept apart from its chat form's.
    let native_key = match (&cache_key, &call.native) {
        (Some(_), Some(_)) => Some(crate::cache::ResponseCache::key(
            "messages.native",
            &call.caller.owner(),
            parsed.body.map(),
        )),
        _ => None,
    };
    if let (Some(cache), Some(key), Some(crate::cache::Mode::Use)) =
        (app.cache(), &cache_key, cache_mode)
    {
        if let Some(hit) = match &native_key {
            Some(native) => cache.get(native).await,
            None => None,
        } {
            metrics::counter!("polyplex_cache_total", "result" => "hit").increment(1);
            let mut resp = call.cached(&parsed, admitted.as_ref(), &hit);
            resp.extensions_mut().insert(super::native::NativeAnswer);
            return resp;
        }
        if let Some(hit) = cache.get(key).await {
            metrics::counter!("polyplex_cache_total", "result" => "hit").increment(1);
            return call.cached(&parsed, admitted.as_ref(), &hit);
        }
        metrics::counter!("polyplex_cache_total", "result" => "miss").increment(1);
    }
    let mut facts = Facts::new(&parsed.body, endpoint, parsed.stream);
    facts.max_output = parsed.max_output;
    (facts.tools, facts.images, facts.json_schema) = parsed.needs;
    // A key's model list: names it does not list are served by the
    // deployments it allows.
    let access = admitted.as_ref().and_then(|a| a.spec.models.as_deref());
    let plan = |facts: &Facts<'_>| {
        app.router().plan(
            &parsed.model,
            &parsed.fallbacks,
            &parsed.prefs,
            access,
            facts,
            &mut rand::thread_rng(),
        )
    };
    let mut planned = plan(&facts);
    if facts.counted_early() {
        // The plan needed the prompt's tokens before the encoding was
        // loaded: planned again once it is, without pausing this thread.
        crate::tokens::ready().await;
        facts.forget_count();
        planned = plan(&facts);
    }
    let plan = match planned {
        Ok(p) => p,
        Err(e) => return call.fail(&parsed.model, parsed.stream, e, &no_one),
    };
    crate::phase::mark("plan");
    if let Some(native) = &call.native {
        if plan
            .deployments
            .iter()
            .all(crate::executor::speaks_messages)
        {
            let asked = super::native::Asked {
                model: &parsed.model,
                stream: parsed.stream,
                body: parsed.body,
                admitted,
                cache_as: native_key,
            };
            return super::native::serve(call, asked, &plan, native, gone).await;
        }
        if let Some(e) = &native.lossy {
            return call.fail(&parsed.model, parsed.stream, e.clone(), &no_one);
        }
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!(
            request_id = %call.rid,
            model = %parsed.model,
            plan = ?plan.deployments.iter().map(|d| d.label()).collect::<Vec<_>>(),
            saturated = ?plan.saturated,
            hedge = ?plan.hedge,
            "routing decision"
        );
    }
    let body = &parsed.body;

    if parsed.stream {
        let outcome = attempt_loop(app, &plan, false, |d, g| async move {
            gone.attempt(&d, stream_once(app, &d, g, endpoint, body))
                .await
        })
        .await;
        let served = outcome.trace;
        return match outcome.result {
            Ok((open, d)) => {
                let dropped = open.dropped.clone();
                let ctx = StreamContext {
                    app: app.clone(),
                    request_id: call.rid.clone(),
                    endpoint,
                    label: call.label,
                    requested_model: parsed.model.clone(),
                    include_usage: parsed.include_usage,
                    functions: parsed.functions,
                    custom: custom_tools_of(&parsed, &d.upstream)
                        .map(polyplex_providers::custom_tools::CustomStream::new),
                    started: call.started,
                    attempts: served.attempts,
                    request: parsed.body,
                    admitted,
                    cache_as: cache_key,
                    tags: call.tags(),
                };
                let mut resp = sse_response(ctx, open, d);
                served.apply(&mut resp);
                dropped_header(&mut resp, &dropped);
                if cache_key.is_some() {
                    super::respond::cache_missed(&mut resp);
                }
                resp
            }
            Err(e) => call.fail(&parsed.model, true, e, &served),
        };
    }

    let outcome = attempt_loop(app, &plan, true, |d, g| async move {
        gone.attempt(&d, unary_once(app, &d, g, endpoint, body))
            .await
    })
    .await;
    let served = outcome.trace;
    match outcome.result {
        Ok((unary, d)) => {
            let (mut reply, upstream_usage) = (unary.response, unary.usage);
            // A translated answer's tool calls; an OpenAI-protocol
            // upstream answers `functions` itself, byte for byte.
            if parsed.functions && matches!(reply, Reply::Map(_)) {
                let mut map = reply.into_map();
                polyplex_providers::tools_to_function_call(&mut map);
                reply = Reply::Map(map);
            }
            if let Some(names) = custom_tools_of(&parsed, &d.upstream) {
                let mut map = reply.into_map();
                polyplex_providers::custom_tools::calls_to_custom(&mut map, &names);
                reply = Reply::Map(map);
            }
            if !reply.has_model() {
                // Some protocols (Cohere) do not name the model: it is the one asked for.
                let mut map = reply.into_map();
                map.insert("model".into(), serde_json::Value::String(d.model.clone()));
                reply = Reply::Map(map);
            }
            if !crate::tokens::loaded()
                && crate::tokens::answer_counts(endpoint, upstream_usage.as_ref(), &reply)
            {
                // The upstream answered: a client gone meanwhile is
                // recorded as one cut short there.
                gone.attempt(&d, crate::tokens::ready()).await;
            }
            let (reply, usage, cost) = finish_usage(app, &d, endpoint, body, reply, upstream_usage);
            let record = call.served_record(
                &parsed.model,
                &d,
                usage,
                cost,
                served.attempts,
                admitted.as_ref(),
            );
            d.stats.on_tokens(usage.completion_tokens, record.latency);
            super::respond::record_served(app, &d, record);
            let mut resp = match (app.cache(), cache_key) {
                (Some(cache), Some(key)) => match reply.to_bytes() {
                    Ok(bytes) => {
                        let entry = crate::cache::Entry::served(
                            bytes.clone(),
                            &d,
                            usage,
                            unary.dropped.clone(),
                        );
                        cache.put(key, entry);
                        let mut r = super::respond::json_bytes(bytes);
                        super::respond::cache_missed(&mut r);
                        r
                    }
                    Err(_) => json_response(&reply),
                },
                _ => json_response(&reply),
            };
            served.apply(&mut resp);
            dropped_header(&mut resp, &unary.dropped);
            resp
        }
        Err(e) => call.fail(&parsed.model, false, e, &served),
    }
}

/// `x-polyplex-dropped-params`: what `drop_params` left out, never silently.
fn dropped_header(resp: &mut Response, dropped: &[String]) {
    if dropped.is_empty() {
        return;
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(&dropped.join(", ")) {
        resp.headers_mut()
            .insert(&super::respond::names::DROPPED_PARAMS, v);
    }
}

pub async fn chat_completions(
    State(app): State<App>,
    Extension(rid): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    handle(
        app,
        rid,
        caller,
        Endpoint::Chat,
        Endpoint::Chat.as_str(),
        req,
    )
    .await
}

pub async fn completions(
    State(app): State<App>,
    Extension(rid): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    handle(
        app,
        rid,
        caller,
        Endpoint::Completions,
        Endpoint::Completions.as_str(),
        req,
    )
    .await
}

pub async fn embeddings(
    State(app): State<App>,
    Extension(rid): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    handle(
        app,
        rid,
        caller,
        Endpoint::Embeddings,
        Endpoint::Embeddings.as_str(),
        req,
    )
    .await
}

/// `POST /v1/responses`: OpenAI's Responses API, served as the chat
/// request that asks the same (`crate::responses`); the chat answer (or
/// stream, or error) is then rewritten in the Responses shape.
pub async fn responses(
    State(app): State<App>,
    Extension(rid): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    let mut call = Call::new(
        app.clone(),
        &rid,
        caller.clone(),
        Endpoint::Chat,
        "responses",
    );
    let (headers, _, tree) = match converted_request(&mut call, &app, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let no_one = Served::default();
    let model = crate::responses::model_of(&tree);
    // A request refused before it is served as chat is still its end
    // user's and tagged with its metadata.
    call.tag_from(&tree);
    let previous = match crate::responses::previous_of(&tree) {
        Ok(p) => p,
        Err(b) => return call.fail(&model, false, b.1, &no_one),
    };
    let conversation = match crate::responses::conversation_of(&tree) {
        Ok(c) => c,
        Err(b) => return call.fail(&model, false, b.1, &no_one),
    };
    let owner = caller.owner();
    let store = app.keys.store().cloned();
    // The conversation a `previous_response_id` continues, or the items of
    // the `conversation` named.
    let earlier: Vec<Value> = match (&previous, &store) {
        (None, _) if conversation.is_some() => {
            let (Some(id), Some(st)) = (&conversation, &store) else {
                let e = GatewayError::invalid_param("conversation", "This gateway has no store to keep conversations in; send the conversation so far in `input`.");
                return call.fail(&model, false, e, &no_one);
            };
            match st.conversation_items(id, &owner).await {
                Ok(Some(items)) => items,
                Ok(None) => {
                    let e =
                        GatewayError::not_found(format!("Conversation with id '{id}' not found."))
                            .with_param("conversation")
                            .with_code("conversation_not_found");
                    return call.fail(&model, false, e, &no_one);
                }
                Err(e) => {
                    tracing::error!(request_id = %rid.0, error = %e, "could not read a conversation");
                    let e =
                        GatewayError::service_unavailable("The store did not answer; try again.");
                    return call.fail(&model, false, e, &no_one);
                }
            }
        }
        (None, _) => Vec::new(),
        (Some(_), None) => {
            let e = GatewayError::invalid_param("previous_response_id", "This gateway has no store to keep responses in; send the conversation so far in `input`.");
            return call.fail(&model, false, e, &no_one);
        }
        (Some(id), Some(st)) => {
            let not_found = |why: String| {
                GatewayError::not_found(why)
                    .with_param("previous_response_id")
                    .with_code("previous_response_not_found")
            };
            let loaded = match st.load_conversation(id, &owner).await {
                Ok(Some(items)) => Ok(items),
                Ok(None) => Err(not_found(format!("Previous response with id '{id}' not found."))),
                Err(crate::store::Chain::Broken(gone)) => Err(not_found(format!(
                    "Previous response with id '{id}' continues '{gone}', which was deleted: its conversation cannot be continued."
                ))),
                Err(crate::store::Chain::Store(e)) => {
                    tracing::error!(request_id = %rid.0, error = %e, "could not read a stored response");
                    Err(GatewayError::service_unavailable("The store did not answer; try again."))
                }
            };
            match loaded {
                Ok(items) => items,
                Err(e) => return call.fail(&model, false, e, &no_one),
            }
        }
    };
    let mut converted =
        match crate::responses::to_chat(tree, &crate::responses::new_response_id(), &earlier) {
            Ok(c) => c,
            Err(b) => {
                let (model, e) = *b;
                return call.fail(&model, false, e, &no_one);
            }
        };
    // Kept unless the request says `store: false` (OpenAI's default), and
    // only where there is a store; a conversation named gains its items
    // either way.
    if store.is_none() {
        converted.echo.store = false;
    }
    let keep = match store {
        Some(store) if converted.echo.store || converted.echo.conversation.is_some() => {
            Some(super::respond::Keep {
                store,
                owner,
                response: converted.echo.store,
            })
        }
        _ => None,
    };
    let chat = match serde_json::to_vec(&converted.chat) {
        Ok(v) => v,
        Err(e) => {
            return call.fail(
                "",
                false,
                GatewayError::internal(format!("responses: {e}")),
                &no_one,
            )
        }
    };
    let resp = serve_as_chat(app, rid, caller, "responses", headers, chat, None).await;
    super::respond::responses_answer(resp, converted.echo, converted.dropped, keep).await
}

/// Anthropic's Messages API (`POST /v1/messages`): the request served as
/// chat — passed through as written where every deployment takes that API
/// (`super::native`), else translated and its answer (or its stream, or
/// its error) written in Anthropic's shape ([`crate::messages`]).
pub async fn messages(
    State(app): State<App>,
    Extension(rid): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    use crate::messages::{model_of, to_chat, Echo};
    let mut call = Call::new(
        app.clone(),
        &rid,
        caller.clone(),
        Endpoint::Chat,
        "messages",
    );
    let request_id = rid.0.clone();
    let answer = |resp: Response, echo: Echo| {
        super::respond::messages_answer(resp, echo, request_id.clone())
    };
    let mut echo = Echo {
        id: String::new(),
        model: String::new(),
    };
    let (headers, text, tree) = match converted_request(&mut call, &app, req).await {
        Ok(r) => r,
        Err(resp) => return answer(resp, echo).await,
    };
    let no_one = Served::default();
    // What chat cannot carry is refused only if a deployment of another
    // protocol is to serve it ([`super::native`]).
    // The chat form, if chat can carry it and take it as it is.
    let as_chat =
        to_chat(&tree, false).and_then(|(chat, e)| validate::chat(&chat).map(|_| (chat, e)));
    let (chat, lossy) = match as_chat {
        Ok((chat, e)) => {
            echo = e;
            (chat, None)
        }
        Err(e) => match crate::messages::routing_form(&tree, false) {
            Some((chat, routed)) => {
                echo = routed;
                (chat, Some(e))
            }
            None => return answer(call.fail(&model_of(&tree), false, e, &no_one), echo).await,
        },
    };
    let bytes = match serde_json::to_vec(&chat) {
        Ok(v) => v,
        Err(e) => {
            let e = GatewayError::internal(format!("messages: {e}"));
            return answer(call.fail(&echo.model, false, e, &no_one), echo).await;
        }
    };
    let native = super::native::NativeRequest {
        native: polyplex_providers::anthropic::Native::new(text, &headers),
        lossy,
    };
    let resp = serve_as_chat(
        app,
        rid,
        caller,
        "messages",
        headers,
        bytes,
        Some(std::sync::Arc::new(native)),
    )
    .await;
    answer(resp, echo).await
}

/// A converted endpoint's request (the Responses API's, Anthropic's
/// Messages'): its headers and JSON body, or, for a body that is not
/// one, the answer (recorded by `call`). A bad metadata header is left to
/// the chat call that serves it (whose record is the request's).
pub(super) async fn converted_request(
    call: &mut Call,
    app: &App,
    req: Request,
) -> Result<(HeaderMap, Bytes, JsonMap), Response> {
    let _ = call.read_headers(req.headers());
    let (parts, body) = req.into_parts();
    let headers = parts.headers.clone();
    let no_one = Served::default();
    let text = read_body(app, Request::from_parts(parts, body))
        .await
        .map_err(|e| call.fail("", false, e, &no_one))?;
    let tree = parse_json(&text).map_err(|e| call.fail("", false, e, &no_one))?;
    Ok((headers, text, tree))
}

/// A converted request's chat `body` served as chat (one record, as
/// `label`), with the client's headers.
pub(super) async fn serve_as_chat(
    app: App,
    rid: RequestId,
    caller: Caller,
    label: &'static str,
    headers: HeaderMap,
    body: Vec<u8>,
    native: Option<std::sync::Arc<super::native::NativeRequest>>,
) -> Response {
    serve_converted(
        app,
        rid,
        caller,
        Endpoint::Chat,
        label,
        headers,
        body,
        native,
    )
    .await
}

/// A `POST` of a body already read (and held to the size limit) and
/// rewritten for another handler, with the client's headers.
pub(super) fn converted_post(mut headers: HeaderMap, body: impl Into<axum::body::Body>) -> Request {
    headers.remove(axum::http::header::CONTENT_LENGTH);
    let mut inner = Request::new(body.into());
    *inner.method_mut() = Method::POST;
    *inner.headers_mut() = headers;
    inner.extensions_mut().insert(Converted);
    inner
}

/// A converted request's `body` served as a request to `endpoint` (one
/// record, as `label`), with the client's headers.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve_converted(
    app: App,
    rid: RequestId,
    caller: Caller,
    endpoint: Endpoint,
    label: &'static str,
    headers: HeaderMap,
    body: Vec<u8>,
    native: Option<std::sync::Arc<super::native::NativeRequest>>,
) -> Response {
    let mut inner = converted_post(headers, body);
    if let Some(n) = native {
        inner.extensions_mut().insert(n);
    }
    handle(app, rid, caller, endpoint, label, inner).await
}

/// Anthropic's `POST /v1/messages/count_tokens`: the prompt's tokens as
/// an upstream that serves the model counts them — Anthropic's API, Claude
/// on Vertex AI (its count-tokens endpoint) or on Bedrock (CountTokens) —
/// (the request passed through, `super::native`), else as the gateway
/// counts them (OpenAI's tokenizer and formula: an estimate for other
/// providers' models), for a model this caller may use.
pub async fn count_tokens(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    let counted = async {
        let text = read_body(&app, req).await?;
        let tree = parse_json(&text)?;
        let (chat, echo, lossy) = match crate::messages::to_chat(&tree, true) {
            Ok((chat, echo)) => (chat, echo, None),
            Err(e) => match crate::messages::routing_form(&tree, true) {
                Some((chat, echo)) => (chat, echo, Some(e)),
                None => return Err(e),
            },
        };
        if !app.router().knows(&echo.model) {
            return Err(GatewayError::model_not_found(&echo.model));
        }
        let spec = caller.key().map(|k| k.spec());
        let access = spec.as_ref().and_then(|s| s.models.as_deref());
        if !app.router().may_reach(access, &echo.model) {
            return Err(crate::keys::model_forbidden(&echo.model));
        }
        let body = RequestBody::from_map(chat);
        let facts = Facts::new(&body, Endpoint::Chat, false);
        let plan = app.router().plan(
            &echo.model,
            &[],
            &ProviderPrefs::default(),
            access,
            &facts,
            &mut rand::thread_rng(),
        );
        let exact = plan.ok().and_then(|p| {
            p.deployments
                .into_iter()
                .find(crate::executor::counts_messages)
        });
        if let Some(d) = exact {
            let native = polyplex_providers::anthropic::Native::new(text, &headers);
            match crate::executor::native_count(&app, &d, &native).await {
                Ok(answer) => return Ok(super::respond::json_bytes(answer)),
                // Anthropic's word on the request itself stands (Vertex AI's
                // and Bedrock's may be about the model's counting).
                Err(e)
                    if d.upstream.kind == "anthropic" && matches!(e.status.as_u16(), 400 | 413) =>
                {
                    return Err(e)
                }
                Err(e) => {
                    tracing::debug!(deployment = %d.label(), error = %e, "count_tokens upstream failed; counted here")
                }
            }
        }
        if let Some(e) = lossy {
            return Err(e);
        }
        crate::tokens::ready().await;
        let n = crate::tokens::chat_prompt(body.map());
        Ok(Json(json!({ "input_tokens": n })).into_response())
    };
    counted
        .await
        .unwrap_or_else(super::respond::anthropic_error)
}

fn model_object(id: &str, owner: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": owner})
}

/// Every `provider/model` this gateway can serve, then the route names,
/// that the caller may use: each name and its owner.
pub(super) fn models_for(app: &App, caller: &Caller) -> Vec<(String, String)> {
    let spec = caller.key().map(|k| k.spec());
    let access = spec.as_ref().and_then(|s| s.models.as_deref());
    let catalog = app.catalog();
    let mut out = Vec::new();
    for u in app.router().upstreams() {
        for m in u.model_ids(catalog) {
            out.push((format!("{}/{m}", u.name), u.name.clone()));
        }
    }
    let mut routes: Vec<_> = app.router().routes().map(|r| r.name.clone()).collect();
    if app.router().knows("auto") && !routes.iter().any(|r| r == "auto") {
        routes.push("auto".into());
    }
    routes.sort();
    out.extend(routes.into_iter().map(|r| (r, "polyplex".to_string())));
    if caller.key().is_some() {
        out.retain(|(id, _)| app.router().may_reach(access, id));
    }
    out
}

/// Every model this caller may use.
pub async fn list_models(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if super::genai::from_google_sdk(&headers) {
        return super::genai::list(&app, &caller).await;
    }
    let data: Vec<Value> = models_for(&app, &caller)
        .iter()
        .map(|(id, owner)| model_object(id, owner))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

pub async fn get_model(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if super::genai::from_google_sdk(&headers) {
        return super::genai::get(&app, &caller, &id).await;
    }
    if caller
        .key()
        .is_some_and(|k| !app.router().may_reach(k.spec().models.as_deref(), &id))
    {
        return ApiError(GatewayError::model_not_found(&id)).into_response();
    }
    if app.router().resolve(&id).is_err() && app.router().knows(&id) {
        // `auto`, or a name with `:floor` / `:nitro`.
        return Json(model_object(&id, "polyplex")).into_response();
    }
    match app.router().resolve(&id) {
        Ok((ds, _)) => {
            let owner = if app.router().routes().any(|r| r.name == id) {
                "polyplex".to_string()
            } else {
                ds.first()
                    .map(|d| d.upstream.name.clone())
                    .unwrap_or_default()
            };
            Json(model_object(&id, &owner)).into_response()
        }
        Err(e) => ApiError(e).into_response(),
    }
}

/// `GET /admin/providers`: every configured provider and each deployment
/// with statistics (latency averages, error rate, circuit, in-flight, rate limits).
pub async fn admin_providers(State(app): State<App>) -> Response {
    let now = Instant::now();
    let catalog = app.catalog();
    let providers: Vec<Value> = app
        .router()
        .upstreams()
        .iter()
        .map(|u| {
            let mut models = u.models.clone().unwrap_or_default();
            for r in app.router().routes() {
                for (p, m) in &r.targets {
                    if *p == u.name && !models.contains(m) {
                        models.push(m.clone());
                    }
                }
            }
            let mut tracked = u.tracked();
            for m in models {
                if !tracked.iter().any(|(t, _)| *t == m) {
                    tracked.push((m.clone(), u.stats(&m)));
                }
            }
            tracked.sort_by(|a, b| a.0.cmp(&b.0));
            let deployments: Vec<Value> = tracked
                .iter()
                .map(|(m, s)| {
                    let mut v = s.snapshot(&app.health, now);
                    if let Value::Object(o) = &mut v {
                        o.insert("deployment".into(), json!(format!("{}/{m}", u.name)));
                        o.insert("model".into(), json!(m));
                        let price = u.price(catalog, m, 0);
                        o.insert(
                            "price_per_million".into(),
                            json!(price.map(|p| json!({"input": p.input, "output": p.output}))),
                        );
                        let (rpm, tpm) = u.limits(m);
                        if rpm.is_some() || tpm.is_some() {
                            // What this node sent in the last minute, against
                            // the configured limits.
                            let (requests, tokens) = s.upstream_used(now);
                            o.insert(
                                "upstream_limits".into(),
                                json!({"rpm": rpm, "tpm": tpm,
                                       "requests_last_minute": requests,
                                       "tokens_last_minute": tokens}),
                            );
                        }
                    }
                    v
                })
                .collect();
            let healthy = deployments.iter().all(|d| d["healthy"] == json!(true));
            json!({
                "name": u.name,
                "kind": u.kind,
                "base_url": public_url(&u.base_url),
                "healthy": healthy,
                "max_retries": u.max_retries,
                "timeout_ms": u.timeout.as_millis() as u64,
                "rpm": u.rpm,
                "tpm": u.tpm,
                "deployments": deployments,
            })
        })
        .collect();
    Json(json!({
        "object": "list",
        "data": providers,
        "retry_budget": {"balance": (app.retry_budget.balance(now) * 100.0).round() / 100.0},
        "breaker": {
            "window_ms": app.health.window.as_millis() as u64,
            "min_requests": app.health.min_requests,
            "error_ratio": app.health.error_ratio,
            "cooldown_ms": app.health.cooldown.as_millis() as u64,
        },
    }))
    .into_response()
}

/// A base URL without credentials or query (which could carry a token).
fn public_url(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => String::from("(unparseable)"),
    }
}

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready: not shutting down, and the store answers.
pub async fn readyz(State(app): State<App>) -> Response {
    if !app.ready.load(std::sync::atomic::Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response();
    }
    let store_ok = match app.keys.store() {
        Some(s) => tokio::time::timeout(std::time::Duration::from_secs(2), s.ping())
            .await
            .unwrap_or(false),
        None => true,
    };
    if store_ok {
        Json(json!({"status": "ready", "providers": app.router().upstreams().len(), "store": "ok"}))
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "store unreachable"})),
        )
            .into_response()
    }
}

pub async fn metrics(State(app): State<App>) -> Response {
    match &app.metrics {
        Some(h) => {
            deployment_gauges(&app);
            ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable",
        )
            .into_response(),
    }
}

/// Each deployment's health, set at a scrape from what the router keeps
/// (every attempt, failed ones and those failed over from included): the
/// records' series only see the deployment that answered in the end.
fn deployment_gauges(app: &App) {
    let now = Instant::now();
    for u in app.router().upstreams() {
        for (model, stats) in u.tracked() {
            let g = stats.gauges(&app.health, now);
            let labels = vec![
                metrics::Label::new("provider", u.name.clone()),
                metrics::Label::new("model", model),
            ];
            metrics::gauge!("polyplex_deployment_healthy", labels.clone())
                .set(f64::from(u8::from(g.healthy)));
            for state in ["closed", "open", "half_open"] {
                let mut l = labels.clone();
                l.push(metrics::Label::new("state", state));
                metrics::gauge!("polyplex_deployment_circuit_state", l)
                    .set(f64::from(u8::from(g.circuit == state)));
            }
            metrics::gauge!("polyplex_deployment_in_flight", labels.clone())
                .set(f64::from(g.in_flight));
            metrics::gauge!("polyplex_deployment_error_rate", labels.clone()).set(g.error_rate);
            metrics::counter!("polyplex_upstream_attempts_total", labels.clone())
                .absolute(g.requests);
            metrics::counter!("polyplex_upstream_errors_total", labels).absolute(g.errors);
        }
    }
}

pub async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError(unknown_url(&method, uri.path())).into_response()
}

/// A 404 for a URL the gateway does not serve, as OpenAI words it.
pub(super) fn unknown_url(method: &Method, path: &str) -> GatewayError {
    GatewayError::not_found(format!(
        "Unknown request URL: {method} {path}. Please check the URL for typos."
    ))
}

/// `/v1/responses/{id}` and below: a kept response retrieved
/// (`GET`), deleted (`DELETE`), or its input items listed (`GET
/// .../input_items`), for the caller that kept it.
pub async fn stored_response(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    method: Method,
    uri: Uri,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let rest = uri.path().strip_prefix("/v1/responses/").unwrap_or("");
    let (id, what) = rest.split_once('/').unwrap_or((rest, ""));
    let not_found = || {
        ApiError(
            GatewayError::not_found(format!("Response with id '{id}' not found."))
                .with_code("response_not_found"),
        )
        .into_response()
    };
    let Some(store) = app.keys.store() else {
        return not_found();
    };
    let owner = caller.owner();
    let failed = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "stored responses: the store failed");
        ApiError(GatewayError::service_unavailable(
            "The store did not answer; try again.",
        ))
        .into_response()
    };
    match (&method, what) {
        (&Method::DELETE, "") => match store.delete_response(id, &owner).await {
            Ok(true) => Json(json!({"id": id, "object": "response", "deleted": true})).into_response(),
            Ok(false) => not_found(),
            Err(e) => failed(e),
        },
        (&Method::GET, "" | "input_items") => {
            let (items, response) = match store.load_response(id, &owner).await {
                Ok(Some(found)) => found,
                Ok(None) => return not_found(),
                Err(e) => return failed(e),
            };
            if what.is_empty() {
                return super::respond::json_bytes(Bytes::from(response));
            }
            // The whole conversation, the responses it continues included;
            // one whose earlier turn was deleted lists its own.
            let items: Vec<Value> = match store.load_conversation(id, &owner).await {
                Ok(Some(all)) => all,
                Ok(None) => return not_found(),
                Err(crate::store::Chain::Broken(_)) => {
                    serde_json::from_str(&items).unwrap_or_default()
                }
                Err(crate::store::Chain::Store(e)) => return failed(e),
            };
            let items_len = items.len();
            let response: Value = serde_json::from_str(&response).unwrap_or_default();
            let outputs = response["output"].as_array().map_or(0, Vec::len);
            let input: Vec<Value> = items
                .into_iter()
                .take(items_len.saturating_sub(outputs))
                .enumerate()
                .map(|(i, item)| crate::responses::listed_item(item, id, i))
                .collect();
            match crate::responses::item_page(input, query.as_deref()) {
                Ok(page) => Json(page).into_response(),
                Err(e) => ApiError(e).into_response(),
            }
        }
        (&Method::POST, "cancel") => ApiError(GatewayError::invalid_param(
            "",
            "Only background responses can be cancelled; polyplex answers every response while its request is open.",
        ))
        .into_response(),
        _ => not_found(),
    }
}

pub async fn method_not_allowed() -> Response {
    ApiError(GatewayError::method_not_allowed()).into_response()
}
