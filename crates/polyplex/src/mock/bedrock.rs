//! The mock's Amazon Bedrock Converse API: `POST /model/{modelId}/converse`
//! and `/converse-stream` (an AWS event stream), Bedrock's error shape
//! (`x-amzn-ErrorType` and `{"message"}`), and its authentication: a Bedrock
//! API key as a bearer token, or SigV4. A request signed with the mock's own
//! access key ([`MOCK_ACCESS_KEY_ID`], secret [`MOCK_SECRET_ACCESS_KEY`]) has
//! its signature checked as AWS checks it; other access keys are accepted on
//! the signature's form alone (the mock cannot know their secrets).

use super::anthropic::{claude_thinking, stop_reason, thinking_signature};
use super::reply::{self, Answer};
use super::{admit_model, garbage, sse_body, MockState, Shape};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use polyplex_providers::bedrock::{frame, sigv4};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The access key whose signatures the mock verifies.
pub const MOCK_ACCESS_KEY_ID: &str = "AKIAPOLYPLEXMOCK";
/// Its secret (a test double's: not a secret).
pub const MOCK_SECRET_ACCESS_KEY: &str = "polyplex-mock-secret-access-key";

/// Bedrock's error: the type in `x-amzn-ErrorType`, the message in the body.
pub(crate) fn error(status: StatusCode, msg: &str) -> Response {
    let kind = match status.as_u16() {
        400 => "ValidationException",
        401 | 403 => "UnrecognizedClientException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 | 529 => "ServiceUnavailableException",
        _ => "InternalServerException",
    };
    let status = if status.as_u16() == 401 {
        StatusCode::FORBIDDEN
    } else {
        status
    };
    let mut r = (status, Json(json!({"message": msg}))).into_response();
    r.headers_mut().insert(
        "x-amzn-errortype",
        HeaderValue::from_str(&format!(
            "{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"
        ))
        .unwrap_or(HeaderValue::from_static("InternalServerException")),
    );
    r
}

fn check_auth(headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Option<Response> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(key) = auth.strip_prefix("Bearer ") {
        if key.trim().is_empty() {
            return Some(error(
                StatusCode::FORBIDDEN,
                "Invalid API Key format: Must start with pre-defined prefix",
            ));
        }
        return None;
    }
    if !auth.starts_with("AWS4-HMAC-SHA256 ") {
        return Some(error(StatusCode::FORBIDDEN, "Missing Authentication Token"));
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("http://{host}{path}");
    let secret = |id: &str| -> Option<String> {
        Some(if id == MOCK_ACCESS_KEY_ID {
            MOCK_SECRET_ACCESS_KEY.to_string()
        } else {
            String::new()
        })
    };
    match sigv4::verify(&url, headers, body, secret, std::time::SystemTime::now()) {
        Ok(_) => None,
        // Another access key: the form and the time were checked; the
        // signature cannot be.
        Err(e)
            if e.contains("does not match")
                && !auth.contains(&format!("Credential={MOCK_ACCESS_KEY_ID}/")) =>
        {
            None
        }
        Err(e) => Some(error(StatusCode::FORBIDDEN, &e)),
    }
}

/// The caller's credentials checked, then the body parsed, recorded and any
/// pending fault applied; `Err` is the answer to send instead.
async fn admitted(
    s: &MockState,
    model: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Map<String, Value>, Option<super::Fault>), Response> {
    if let Some(r) = check_auth(headers, uri, body) {
        return Err(r);
    }
    admit_model(s, uri.path(), headers, body, Shape::Bedrock, Some(model)).await
}

/// Whether a request turns Claude's extended thinking on.
fn thinking_enabled(req: &Map<String, Value>) -> bool {
    req.get("additionalModelRequestFields")
        .and_then(|f| f.pointer("/thinking/type"))
        .and_then(Value::as_str)
        == Some("enabled")
}

/// What Converse refuses of Claude's extended thinking, as Anthropic's API
/// does: reasoning sent back changed (its signature no longer matches), a
/// final tool-using assistant turn that does not start with its reasoning
/// (thinking on), and reasoning in the final assistant turn (thinking off).
fn bad_reasoning(req: &Map<String, Value>) -> Option<String> {
    let msgs = req.get("messages").and_then(Value::as_array)?;
    for b in super::message_blocks(req) {
        if let Some(rt) = b.pointer("/reasoningContent/reasoningText") {
            let text = rt.get("text").and_then(Value::as_str).unwrap_or("");
            if rt.get("signature").and_then(Value::as_str) != Some(&thinking_signature(text)) {
                return Some("The reasoning signature in the conversation is invalid.".into());
            }
        }
    }
    let last = msgs
        .iter()
        .rfind(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))?;
    let blocks = last.get("content").and_then(Value::as_array)?;
    let reasons = |b: &Value| b.get("reasoningContent").is_some();
    let on = thinking_enabled(req);
    if !on && blocks.iter().any(reasons) {
        return Some("The model returned the following errors: messages: When thinking is disabled, an `assistant` message in the final position cannot contain `thinking`.".into());
    }
    if on
        && blocks.iter().any(|b| b.get("toolUse").is_some())
        && !blocks.first().is_some_and(reasons)
    {
        return Some("The model returned the following errors: messages: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` is enabled, a final `assistant` message must start with a thinking block.".into());
    }
    None
}

/// What Converse refuses in a request's document blocks: a format it does
/// not read, a name outside its characters (letters, digits, single
/// spaces, hyphens, parentheses, square brackets), or two of one name.
fn bad_document(req: &Map<String, Value>) -> Option<String> {
    const FORMATS: [&str; 9] = [
        "pdf", "csv", "doc", "docx", "xls", "xlsx", "html", "txt", "md",
    ];
    let mut names: Vec<&str> = Vec::new();
    for d in super::message_blocks(req).filter_map(|b| b.get("document")) {
        let format = d.get("format").and_then(Value::as_str).unwrap_or("");
        if !FORMATS.contains(&format) {
            return Some(format!("The document format '{format}' is not supported."));
        }
        let name = d.get("name").and_then(Value::as_str).unwrap_or("");
        let allowed = |c: char| c.is_ascii_alphanumeric() || " -()[]".contains(c);
        if name.is_empty() || !name.chars().all(allowed) || name.contains("  ") {
            return Some(format!(
                "The document name '{name}' contains characters that are not allowed."
            ));
        }
        if names.contains(&name) {
            return Some("A conversation must not have two documents of the same name.".into());
        }
        names.push(name);
        if d.pointer("/source/bytes").and_then(Value::as_str).is_none() {
            return Some("A document needs source.bytes.".into());
        }
    }
    None
}

/// The request in OpenAI's shape, so `reply::chat_answer` can decide.
fn to_openai(req: &Map<String, Value>) -> Map<String, Value> {
    let mut messages = Vec::new();
    let system: Vec<&str> = req
        .get("system")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system.join("\n\n")}));
    }
    for m in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let mut parts = Vec::new();
        let mut calls = Vec::new();
        for b in m
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(t) = b.get("text") {
                parts.push(json!({"type": "text", "text": t}));
            } else if b.get("image").is_some() {
                parts.push(json!({"type": "image_url", "image_url": {"url": "image"}}));
            } else if b.get("document").is_some() {
                parts.push(json!({"type": "document"}));
            } else if let Some(tu) = b.get("toolUse") {
                calls.push(json!({"id": tu.get("toolUseId"), "type": "function",
                    "function": {"name": tu.get("name"), "arguments": tu.get("input").map(Value::to_string).unwrap_or_default()}}));
            } else if let Some(tr) = b.get("toolResult") {
                let text: Vec<String> = tr
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|c| match c.get("text") {
                        Some(Value::String(s)) => s.clone(),
                        _ => c.get("json").map(Value::to_string).unwrap_or_default(),
                    })
                    .collect();
                messages.push(json!({"role": "tool", "tool_call_id": tr.get("toolUseId"), "content": text.join("\n")}));
            }
        }
        if !parts.is_empty() || !calls.is_empty() {
            let mut msg = json!({"role": role, "content": parts});
            if !calls.is_empty() {
                msg["tool_calls"] = Value::Array(calls);
            }
            messages.push(msg);
        }
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    let tc = req.get("toolConfig").unwrap_or(&Value::Null);
    let ic = req.get("inferenceConfig").unwrap_or(&Value::Null);
    let tools: Vec<Value> = tc
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("toolSpec"))
        .map(|s| json!({"type": "function", "function": {"name": s.get("name"), "parameters": s.pointer("/inputSchema/json")}}))
        .collect();
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(name) = tc.pointer("/toolChoice/tool/name") {
        out.insert(
            "tool_choice".into(),
            json!({"type": "function", "function": {"name": name}}),
        );
    }
    if let Some(stop) = ic.get("stopSequences") {
        out.insert("stop".into(), stop.clone());
    }
    if let Some(max) = ic.get("maxTokens") {
        out.insert("max_tokens".into(), max.clone());
    }
    out
}

pub(crate) async fn converse_unary(
    s: State<Arc<MockState>>,
    model: Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    converse(s, model, uri, headers, body, false).await
}

pub(crate) async fn converse_stream(
    s: State<Arc<MockState>>,
    model: Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    converse(s, model, uri, headers, body, true).await
}

async fn converse(
    State(s): State<Arc<MockState>>,
    Path(model): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    stream: bool,
) -> Response {
    let (req, fault) = match admitted(&s, &model, &uri, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if req
        .get("messages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not be null",
        );
    }
    if let Some(msg) = bad_document(&req).or_else(|| bad_reasoning(&req)) {
        return error(StatusCode::BAD_REQUEST, &msg);
    }
    let oa = to_openai(&req);
    let answer = reply::chat_answer(&oa);
    // Claude's extended thinking: a reasoning block first.
    let (thinking, output_tokens) = claude_thinking(thinking_enabled(&req), &oa, &answer);
    let prompt = reply::prompt_tokens(
        oa.get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    );
    // Tools, system blocks, message blocks: a `cachePoint` ends a prefix.
    let items: Vec<&Value> = req
        .get("toolConfig")
        .and_then(|t| t.get("tools"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            req.get("system")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
        .chain(super::message_blocks(&req))
        .collect();
    let cache = s.cached_prefix(&model, &items, |i| i.get("cachePoint").is_some(), prompt);
    let input_tokens = prompt - cache.read - cache.written;
    let mut usage = json!({"inputTokens": input_tokens, "outputTokens": output_tokens, "totalTokens": prompt + output_tokens});
    if cache.read + cache.written > 0 {
        usage["cacheReadInputTokens"] = json!(cache.read);
        usage["cacheWriteInputTokens"] = json!(cache.written);
    }
    let is_fault = |k: &str| fault.as_ref().is_some_and(|f| f.fault == k);
    let tool_id = |id: &str| id.replace("call_", "tooluse_");
    if !stream {
        if is_fault("garbage") {
            return garbage();
        }
        let mut content = match &answer {
            Answer::Text { pieces, .. } => json!([{"text": pieces.concat()}]),
            Answer::ToolCall {
                id,
                name,
                arguments,
            } => {
                json!([{"toolUse": {"toolUseId": tool_id(id), "name": name, "input": serde_json::from_str::<Value>(arguments).unwrap_or(json!({}))}}])
            }
        };
        if let (Some((text, signature)), Some(blocks)) = (&thinking, content.as_array_mut()) {
            blocks.insert(0, json!({"reasoningContent": {"reasoningText": {"text": text, "signature": signature}}}));
        }
        let mut out = json!({"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop_reason(&answer), "usage": usage, "metrics": {"latencyMs": s.opts.latency_ms}});
        if is_fault("no_usage") {
            out.as_object_mut().map(|o| o.remove("usage"));
        }
        return Json(out).into_response();
    }
    let ev = |kind: &str, v: Value| frame(kind, &v, false);
    let mut events = vec![ev("messageStart", json!({"role": "assistant"}))];
    // The answer's block comes after the reasoning block, when there is one.
    let at = u64::from(thinking.is_some());
    if let Some((text, signature)) = &thinking {
        for piece in reply::tokenize(text) {
            events.push(ev(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": piece}}}),
            ));
        }
        events.push(ev("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": signature}}})));
        events.push(ev("contentBlockStop", json!({"contentBlockIndex": 0})));
    }
    match &answer {
        Answer::Text { pieces, .. } => {
            for p in pieces {
                events.push(ev(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": at, "delta": {"text": p}}),
                ));
            }
        }
        Answer::ToolCall {
            id,
            name,
            arguments,
        } => {
            events.push(ev("contentBlockStart", json!({"contentBlockIndex": at, "start": {"toolUse": {"toolUseId": tool_id(id), "name": name}}})));
            let chars: Vec<char> = arguments.chars().collect();
            for frag in chars.chunks(8) {
                let frag: String = frag.iter().collect();
                events.push(ev(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": at, "delta": {"toolUse": {"input": frag}}}),
                ));
            }
        }
    }
    events.push(ev("contentBlockStop", json!({"contentBlockIndex": at})));
    events.push(ev(
        "messageStop",
        json!({"stopReason": stop_reason(&answer)}),
    ));
    if !is_fault("no_usage") {
        events.push(ev(
            "metadata",
            json!({"usage": usage, "metrics": {"latencyMs": s.opts.latency_ms}}),
        ));
    }
    if is_fault("garbage") && events.len() > 2 {
        events[2] =
            Bytes::from_static(b"\x00\x00\x00\x20\x00\x00\x00\x00not an event-stream frame");
    }
    let cut = fault
        .as_ref()
        .filter(|f| f.fault == "disconnect")
        .map(|f| f.after_chunks.unwrap_or(2));
    let mut r = sse_body(s, events, cut);
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    r
}

/// Claude's Messages API through `invoke` and `invoke-with-response-stream`:
/// Anthropic's body without `model` or `stream` and with
/// `anthropic_version: "bedrock-2023-05-31"` (beta features in
/// `anthropic_beta`), answered as Anthropic's API answers it; a stream's
/// events each the base64 `bytes` of a `chunk` event.
async fn invoke_claude(
    s: Arc<MockState>,
    model: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    stream: bool,
) -> Response {
    use base64::Engine;
    if let Some(r) = check_auth(headers, uri, body) {
        return r;
    }
    let Ok(mut req) = serde_json::from_slice::<Map<String, Value>>(body) else {
        return error(StatusCode::BAD_REQUEST, "Malformed input request: not JSON");
    };
    if req.get("anthropic_version").and_then(Value::as_str)
        != Some(polyplex_providers::bedrock::ANTHROPIC_VERSION)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "Malformed input request: anthropic_version: bedrock-2023-05-31 is required",
        );
    }
    if let Some(k) = ["model", "stream"].iter().find(|k| req.contains_key(**k)) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("Malformed input request: extraneous key [{k}] is not permitted"),
        );
    }
    req.insert("model".into(), json!(model));
    if stream {
        req.insert("stream".into(), json!(true));
    }
    let answer = super::anthropic::serve(
        s,
        uri.path(),
        headers,
        &Bytes::from(Value::Object(req).to_string()),
    )
    .await;
    if !stream || !answer.status().is_success() {
        return answer;
    }
    let (mut parts, sse) = answer.into_parts();
    let sse = axum::body::to_bytes(sse, usize::MAX)
        .await
        .unwrap_or_default();
    let mut events = Vec::new();
    polyplex_providers::sse::Parser::new().feed(&sse, &mut events);
    let mut out = Vec::new();
    for ev in events {
        let b64 = base64::engine::general_purpose::STANDARD.encode(ev.data.as_bytes());
        out.extend_from_slice(&frame("chunk", &json!({"bytes": b64}), false));
    }
    parts.headers.insert(
        "content-type",
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    parts.headers.remove("content-length");
    Response::from_parts(parts, axum::body::Body::from(out))
}

/// `POST /model/{modelId}/invoke-with-response-stream`: Claude's Messages
/// API streamed ([`invoke_claude`]).
pub(crate) async fn invoke_stream(
    State(s): State<Arc<MockState>>,
    Path(model): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    invoke_claude(s, &model, &uri, &headers, &body, true).await
}

/// `POST /model/{modelId}/invoke`: Claude's Messages API
/// ([`invoke_claude`]), and the embedding models polyplex calls:
/// Cohere's (`texts`, floats by type) and Titan's (`inputText`, one vector
/// and its token count).
pub(crate) async fn invoke(
    State(s): State<Arc<MockState>>,
    Path(model): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if polyplex_providers::bedrock::is_claude(&model) {
        return invoke_claude(s, &model, &uri, &headers, &body, false).await;
    }
    let (req, _) = match admitted(&s, &model, &uri, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let dims = |k: &str| {
        req.get(k)
            .and_then(Value::as_u64)
            .unwrap_or(16)
            .clamp(1, 4096) as usize
    };
    if model.contains("cohere.rerank") {
        return super::rerank::bedrock(&s, &req);
    }
    if model.contains("cohere.embed") {
        let Some(texts) = req.get("texts").and_then(Value::as_array) else {
            return error(
                StatusCode::BAD_REQUEST,
                "Malformed input request: required key [texts] not found",
            );
        };
        let d = dims("output_dimension");
        let vectors: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| reply::embedding(t.as_str().unwrap_or(""), d))
            .collect();
        return Json(json!({"id": s.next_id("emb-mock"), "texts": texts, "embeddings": {"float": vectors}, "response_type": "embeddings_by_type"}))
            .into_response();
    }
    if model.contains("amazon.titan-embed") {
        let Some(text) = req.get("inputText").and_then(Value::as_str) else {
            return error(
                StatusCode::BAD_REQUEST,
                "Malformed input request: required key [inputText] not found",
            );
        };
        return Json(json!({"embedding": reply::embedding(text, dims("dimensions")), "inputTextTokenCount": reply::tokenize(text).len()}))
            .into_response();
    }
    error(
        StatusCode::BAD_REQUEST,
        "The mock invokes only Claude and embedding models (cohere.embed-*, amazon.titan-embed-*).",
    )
}

/// `POST /model/{id}/count-tokens` (CountTokens) for Claude: the `invoke`
/// body in base64 under `input.invokeModel.body`, counted as the mock
/// counts Messages requests; inference profile ids refused, as Bedrock does.
pub(crate) async fn count_tokens(
    State(s): State<Arc<MockState>>,
    Path(model): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use base64::Engine;
    let (req, _) = match admitted(&s, &model, &uri, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !polyplex_providers::bedrock::is_claude(&model) || !model.starts_with("anthropic.") {
        return error(
            StatusCode::BAD_REQUEST,
            "The provided model doesn't support counting tokens.",
        );
    }
    let inner = req
        .get("input")
        .and_then(|i| i.pointer("/invokeModel/body"))
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok());
    let Some(inner) = inner else {
        return error(
            StatusCode::BAD_REQUEST,
            "Malformed input request: input.invokeModel.body must be a base64 JSON body",
        );
    };
    if inner.get("anthropic_version").and_then(Value::as_str)
        != Some(polyplex_providers::bedrock::ANTHROPIC_VERSION)
        || !inner.contains_key("max_tokens")
        || inner.contains_key("model")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "Malformed input request: #: required key [max_tokens] and anthropic_version bedrock-2023-05-31 expected, extraneous key [model] is not permitted",
        );
    }
    Json(json!({"inputTokens": super::anthropic::counted(&inner)})).into_response()
}
