//! The mock's Anthropic Messages API: `POST /v1/messages`, with the real
//! API's `x-api-key` and `anthropic-version` headers required, its error
//! shapes, and its event stream. Answers come from the same deterministic
//! logic as the OpenAI protocol's ([`super::reply`]).

use super::reply::{self, Answer};
use super::{admit, garbage, message_blocks, now, shaped_error, sse_body, MockState, Shape};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Anthropic content (string or blocks) as OpenAI content for the reply logic.
fn as_openai_content(content: &Value) -> Value {
    match content {
        Value::Array(blocks) => Value::Array(
            blocks
                .iter()
                .map(|b| match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        json!({"type": "text", "text": b.get("text").cloned().unwrap_or(json!(""))})
                    }
                    Some("image") => json!({"type": "image_url", "image_url": {"url": "image"}}),
                    Some(other) => json!({"type": other}),
                    None => json!({}),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether a request turns extended thinking on.
fn thinking_enabled(req: &Map<String, Value>) -> bool {
    req.get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        == Some("enabled")
}

/// Claude's extended thinking when the request turns it on — a thinking
/// block first, about the last user turn, and its signature — and the
/// answer's output tokens, the thinking's counted in them (on Anthropic's
/// API as on Bedrock's Converse).
pub(crate) fn claude_thinking(
    on: bool,
    oa: &Map<String, Value>,
    answer: &Answer,
) -> (Option<(String, String)>, u64) {
    let thinking = on.then(|| {
        let text = reply::thought_about(oa);
        let signature = thinking_signature(&text);
        (text, signature)
    });
    let thought = thinking
        .as_ref()
        .map_or(0, |(t, _)| reply::tokenize(t).len() as u64);
    let answered = match answer {
        Answer::Text { pieces, .. } => pieces.len() as u64,
        Answer::ToolCall { arguments, .. } => 1 + arguments.len().div_ceil(4) as u64,
    };
    (thinking, thought + answered)
}

/// The mock's signature of a thinking block's text (Anthropic's is a
/// cryptographic one the client must send back untouched; so is this).
pub(crate) fn thinking_signature(thinking: &str) -> String {
    reply::stable_id("mock-sig-", thinking)
}

/// What the Messages API refuses of extended thinking: a thinking block
/// sent back changed (its signature no longer matches), a final assistant
/// turn that uses tools without starting with its thinking (thinking on),
/// and thinking in the final assistant turn (thinking off).
fn bad_thinking(req: &Map<String, Value>) -> Option<String> {
    let msgs = req.get("messages").and_then(Value::as_array)?;
    for (i, m) in msgs.iter().enumerate() {
        for b in m
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if b.get("type").and_then(Value::as_str) == Some("thinking") {
                let text = b.get("thinking").and_then(Value::as_str).unwrap_or("");
                if b.get("signature").and_then(Value::as_str) != Some(&thinking_signature(text)) {
                    return Some(format!(
                        "messages.{i}.content: Invalid `signature` in `thinking` block"
                    ));
                }
            }
        }
    }
    let thinking_on = thinking_enabled(req);
    let (i, last) = msgs
        .iter()
        .enumerate()
        .rfind(|(_, m)| m.get("role").and_then(Value::as_str) == Some("assistant"))?;
    let blocks = last.get("content").and_then(Value::as_array)?;
    let kind = |b: &Value| {
        b.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let uses_tools = blocks.iter().any(|b| kind(b) == "tool_use");
    let first = blocks.first().map(kind).unwrap_or_default();
    let thinks = blocks
        .iter()
        .any(|b| kind(b) == "thinking" || kind(b) == "redacted_thinking");
    if !thinking_on && thinks {
        return Some(format!("messages.{i}.content.0.type: When thinking is disabled, an `assistant` message in the final position cannot contain `thinking`. To use thinking blocks, enable `thinking` in your request."));
    }
    if thinking_on && uses_tools && first != "thinking" && first != "redacted_thinking" {
        return Some(format!("messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{first}`. When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns."));
    }
    None
}

/// The Messages API refuses an empty text block.
fn empty_text(req: &Map<String, Value>) -> Option<String> {
    message_blocks(req)
        .any(|b| {
            b.get("type").and_then(Value::as_str) == Some("text")
                && b.get("text").and_then(Value::as_str) == Some("")
        })
        .then(|| "messages: text content blocks must be non-empty".to_string())
}

/// What the Messages API refuses in a document block: a source other than
/// a base64 PDF or a plain-text one.
fn bad_document(req: &Map<String, Value>) -> Option<String> {
    for b in
        message_blocks(req).filter(|b| b.get("type").and_then(Value::as_str) == Some("document"))
    {
        let source = b.get("source");
        let field = |k: &str| source.and_then(|s| s.get(k)).and_then(Value::as_str);
        match (field("type"), field("media_type"), field("data")) {
            (Some("base64"), Some("application/pdf"), Some(_))
            | (Some("text"), Some("text/plain"), Some(_)) => {}
            _ => {
                return Some(
                    "messages: a document's source must be a base64 PDF or plain text".into(),
                )
            }
        }
    }
    None
}

/// The request in OpenAI's shape, so `reply::chat_answer` can decide.
fn to_openai(req: &Map<String, Value>) -> Map<String, Value> {
    let mut messages = Vec::new();
    if let Some(sys) = req.get("system") {
        messages.push(json!({"role": "system", "content": sys}));
    }
    for m in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let content = m.get("content").cloned().unwrap_or(Value::Null);
        // A user turn that carries tool results is a tool message for the reply logic.
        let results: Vec<&Value> = content
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .collect();
        if role == "user" && !results.is_empty() {
            for r in results {
                let c = match r.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => reply::content_text(Some(other)),
                    None => String::new(),
                };
                messages.push(
                    json!({"role": "tool", "tool_call_id": r.get("tool_use_id"), "content": c}),
                );
            }
            continue;
        }
        messages.push(json!({"role": role, "content": as_openai_content(&content)}));
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        // The client's tools; a server tool (the web search, code
        // execution, ...) is the API's own, not the client's to call.
        let t: Vec<Value> = tools.iter().filter(|t| matches!(t.get("type").and_then(Value::as_str), None | Some("custom"))).map(|t| json!({"type": "function", "function": {"name": t.get("name"), "parameters": t.get("input_schema")}})).collect();
        if !t.is_empty() {
            out.insert("tools".into(), Value::Array(t));
        }
    }
    match req
        .get("tool_choice")
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
    {
        Some("none") => {
            out.insert("tool_choice".into(), json!("none"));
        }
        Some("tool") => {
            out.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": req["tool_choice"].get("name")}}),
            );
        }
        _ => {}
    }
    if let Some(stop) = req.get("stop_sequences") {
        out.insert("stop".into(), stop.clone());
    }
    if let Some(max) = req.get("max_tokens") {
        out.insert("max_tokens".into(), max.clone());
    }
    out
}

/// The stop sequence that ended a text answer, as Anthropic names it: the
/// first one the whole answer (asked again without them) holds.
fn matched_stop(oa: &Map<String, Value>, answer: &Answer) -> Option<String> {
    if !matches!(answer, Answer::Text { finish: "stop", .. }) {
        return None;
    }
    let stops = oa.get("stop")?.as_array()?;
    let mut whole = oa.clone();
    whole.remove("stop");
    let Answer::Text { pieces, .. } = reply::chat_answer(&whole) else {
        return None;
    };
    let text = pieces.concat();
    stops
        .iter()
        .filter_map(Value::as_str)
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s).map(|at| (at, s)))
        .min()
        .map(|(_, s)| s.to_string())
}

/// The web search tool's `max_uses`, if `tool` is that server tool.
fn web_search(tool: &Value) -> Option<u64> {
    let kind = tool.get("type").and_then(Value::as_str)?;
    kind.starts_with("web_search_")
        .then(|| tool.get("max_uses").and_then(Value::as_u64).unwrap_or(5))
}

/// What Anthropic refuses in a web search tool, if anything.
fn bad_web_search(req: &Map<String, Value>) -> Option<String> {
    for (i, t) in req.get("tools")?.as_array()?.iter().enumerate() {
        let Some(kind) = t.get("type").and_then(Value::as_str) else {
            continue;
        };
        if !kind.starts_with("web_search_") {
            continue;
        }
        if kind != "web_search_20250305" {
            return Some(format!("tools.{i}: Input tag '{kind}' found using 'type' does not match any of the expected tags"));
        }
        if t.get("name").and_then(Value::as_str) != Some("web_search") {
            return Some(format!("tools.{i}.name: Input should be 'web_search'"));
        }
        if t.get("max_uses")
            .is_some_and(|m| m.as_u64().is_none_or(|m| m == 0))
        {
            return Some(format!(
                "tools.{i}.max_uses: Input should be greater than 0"
            ));
        }
        if let Some(loc) = t.get("user_location") {
            if loc.get("type").and_then(Value::as_str) != Some("approximate") {
                return Some(format!(
                    "tools.{i}.user_location.type: Input should be 'approximate'"
                ));
            }
        }
    }
    None
}

/// The blocks of an answer found by one web search ([`reply::search`]):
/// the search's own blocks, a lead-in and the answer's text citing the page.
fn searched_blocks(id: &str, oa: &Map<String, Value>, text: &str) -> Vec<Value> {
    let (query, url, title) = reply::search(oa);
    let tool_id = reply::stable_id("srvtoolu_mock_", id);
    vec![
        json!({"type": "server_tool_use", "id": tool_id, "name": "web_search", "input": {"query": query}}),
        json!({"type": "web_search_tool_result", "tool_use_id": tool_id, "content": [
            {"type": "web_search_result", "url": url, "title": title, "encrypted_content": "mock-encrypted", "page_age": null}]}),
        json!({"type": "text", "text": reply::SEARCH_LEAD}),
        json!({"type": "text", "text": text, "citations": [{"type": "web_search_result_location", "url": url,
            "title": title, "encrypted_index": "mock-index", "cited_text": text}]}),
    ]
}

/// The stream events of one content block (at `index`) of a whole answer.
fn block_events(index: u64, block: &Value, events: &mut Vec<Bytes>) {
    let start = |b: Value| {
        sse(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": b}),
        )
    };
    let delta = |d: Value| {
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": d}),
        )
    };
    match block.get("type").and_then(Value::as_str) {
        Some("server_tool_use") => {
            let mut opening = block.clone();
            opening["input"] = json!({});
            events.push(start(opening));
            let input = block.get("input").cloned().unwrap_or(json!({})).to_string();
            events.push(delta(
                json!({"type": "input_json_delta", "partial_json": input}),
            ));
        }
        Some("text") => {
            let citations = block.get("citations").and_then(Value::as_array);
            let mut opening = json!({"type": "text", "text": ""});
            if citations.is_some() {
                opening["citations"] = json!([]);
            }
            events.push(start(opening));
            for c in citations.into_iter().flatten() {
                events.push(delta(json!({"type": "citations_delta", "citation": c})));
            }
            let text = block.get("text").and_then(Value::as_str).unwrap_or("");
            for piece in reply::tokenize(text) {
                events.push(delta(json!({"type": "text_delta", "text": piece})));
            }
        }
        _ => events.push(start(block.clone())),
    }
    events.push(sse(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
    ));
}

/// Anthropic's stop reason for an answer (Bedrock's Converse uses the same).
pub(crate) fn stop_reason(a: &Answer) -> &'static str {
    match a {
        Answer::Text {
            finish: "length", ..
        } => "max_tokens",
        Answer::Text { .. } => "end_turn",
        Answer::ToolCall { .. } => "tool_use",
    }
}

fn sse(event: &str, data: Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

pub(crate) async fn messages(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = unauthenticated(&headers) {
        return refused;
    }
    serve(s, "/v1/messages", &headers, &body).await
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as the mock
/// counts them (its messages', system's and tools' words).
pub(crate) async fn count_tokens(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = unauthenticated(&headers) {
        return refused;
    }
    let (req, _) = match admit(
        &s,
        "/v1/messages/count_tokens",
        &headers,
        &body,
        Shape::Anthropic,
    )
    .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    Json(json!({"input_tokens": counted(&req)})).into_response()
}

/// The tokens of a Messages request as the mock counts them (its
/// messages', system's and tools' words), for every API that counts them.
pub(crate) fn counted(req: &Map<String, Value>) -> u64 {
    let oa = to_openai(req);
    let messages = oa.get("messages").and_then(Value::as_array);
    let tools = req
        .get("tools")
        .map_or(0, |t| reply::tokenize(&t.to_string()).len() as u64);
    reply::prompt_tokens(messages.map(Vec::as_slice).unwrap_or(&[])) + tools
}

/// The refusal of a request without Anthropic's required headers.
fn unauthenticated(headers: &HeaderMap) -> Option<Response> {
    let shape = Shape::Anthropic;
    if headers.get("anthropic-version").is_none() {
        return Some(shaped_error(
            shape,
            StatusCode::BAD_REQUEST,
            "",
            "anthropic-version: header is required",
            None,
        ));
    }
    if headers.get("x-api-key").is_none() {
        return Some(shaped_error(
            shape,
            StatusCode::UNAUTHORIZED,
            "",
            "x-api-key header is required",
            None,
        ));
    }
    None
}

/// The Messages API once the caller's credentials passed (Anthropic's own
/// headers, or Vertex AI's token): answers `body`, recorded under `path`.
pub(crate) async fn serve(
    s: Arc<MockState>,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let shape = Shape::Anthropic;
    let (req, fault) = match admit(&s, path, headers, body, shape).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if req.get("max_tokens").and_then(Value::as_u64).is_none() {
        return shaped_error(
            shape,
            StatusCode::BAD_REQUEST,
            "",
            "max_tokens: Field required",
            None,
        );
    }
    // As Anthropic's API: a request needs a turn to answer.
    if req
        .get("messages")
        .and_then(Value::as_array)
        .is_none_or(|m| m.is_empty())
    {
        return shaped_error(
            shape,
            StatusCode::BAD_REQUEST,
            "",
            "messages: at least one message is required",
            None,
        );
    }
    if let Some(msg) = bad_document(&req)
        .or_else(|| bad_thinking(&req))
        .or_else(|| empty_text(&req))
        .or_else(|| bad_web_search(&req))
    {
        return shaped_error(shape, StatusCode::BAD_REQUEST, "", &msg, None);
    }
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-mock")
        .to_string();
    let oa = to_openai(&req);
    let answer = reply::chat_answer(&oa);
    let stopped = matched_stop(&oa, &answer);
    let prompt = reply::prompt_tokens(
        oa.get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    );
    // Tools, then the system blocks, then the messages' blocks: the order
    // Anthropic caches a prompt's prefix in.
    let items: Vec<&Value> = ["tools", "system"]
        .iter()
        .filter_map(|k| req.get(*k).and_then(Value::as_array))
        .flatten()
        .chain(message_blocks(&req))
        .collect();
    let cache = s.cached_prefix(
        &model,
        &items,
        |i| i.get("cache_control").is_some_and(|c| !c.is_null()),
        prompt,
    );
    let input_tokens = prompt - cache.read - cache.written;
    let usage_in = json!({"input_tokens": input_tokens, "cache_creation_input_tokens": cache.written, "cache_read_input_tokens": cache.read});
    let id = s.next_id("msg_mock");
    let _ = now();
    let is_fault = |k: &str| fault.as_ref().is_some_and(|f| f.fault == k);
    let (thinking, output_tokens) = claude_thinking(thinking_enabled(&req), &oa, &answer);
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    // With the web search tool, a text answer is searched for once (its
    // query the last user turn) and cites the page it found.
    let searched = req
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| t.iter().any(|t| web_search(t).is_some()))
        .then(|| match &answer {
            Answer::Text { pieces, .. } => Some(searched_blocks(&id, &oa, &pieces.concat())),
            Answer::ToolCall { .. } => None,
        })
        .flatten();
    let output_tokens = output_tokens
        + searched
            .as_ref()
            .map_or(0, |_| reply::tokenize(reply::SEARCH_LEAD).len() as u64);
    let server_tool_use = searched.as_ref().map(|_| json!({"web_search_requests": 1}));
    if !stream {
        if is_fault("garbage") {
            return garbage();
        }
        if let Some(blocks) = &searched {
            return Json(json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": blocks,
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens, "cache_creation_input_tokens": cache.written,
                    "cache_read_input_tokens": cache.read, "server_tool_use": server_tool_use}})).into_response();
        }
        let mut content = match &answer {
            Answer::Text { pieces, .. } => json!([{"type": "text", "text": pieces.concat()}]),
            Answer::ToolCall {
                id,
                name,
                arguments,
            } => {
                json!([{"type": "tool_use", "id": id.replace("call_", "toolu_"), "name": name, "input": serde_json::from_str::<Value>(arguments).unwrap_or(json!({}))}])
            }
        };
        if let (Some((text, signature)), Some(blocks)) = (&thinking, content.as_array_mut()) {
            blocks.insert(
                0,
                json!({"type": "thinking", "thinking": text, "signature": signature}),
            );
        }
        let mut out = json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stopped.as_ref().map_or(stop_reason(&answer), |_| "stop_sequence"), "stop_sequence": stopped,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens, "cache_creation_input_tokens": cache.written, "cache_read_input_tokens": cache.read}});
        if is_fault("no_usage") {
            out.as_object_mut().map(|o| o.remove("usage"));
        }
        return Json(out).into_response();
    }
    let mut usage_start = usage_in;
    usage_start["output_tokens"] = json!(1);
    let mut events = vec![sse(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
        "content": [], "model": model, "stop_reason": null, "stop_sequence": null, "usage": usage_start}}),
    )];
    // The answer's block comes after the thinking block, when there is one.
    let at = u64::from(thinking.is_some());
    if let Some((text, signature)) = &thinking {
        events.push(sse("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}})));
        for piece in reply::tokenize(text) {
            events.push(sse("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": piece}})));
        }
        events.push(sse("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": signature}})));
        events.push(sse(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
    }
    match &answer {
        _ if searched.is_some() => {
            for (i, b) in searched.iter().flatten().enumerate() {
                block_events(at + i as u64, b, &mut events);
            }
        }
        Answer::Text { pieces, .. } => {
            events.push(sse("content_block_start", json!({"type": "content_block_start", "index": at, "content_block": {"type": "text", "text": ""}})));
            events.push(sse("ping", json!({"type": "ping"})));
            for p in pieces {
                events.push(sse("content_block_delta", json!({"type": "content_block_delta", "index": at, "delta": {"type": "text_delta", "text": p}})));
            }
        }
        Answer::ToolCall {
            id: call,
            name,
            arguments,
        } => {
            events.push(sse("content_block_start", json!({"type": "content_block_start", "index": at,
                "content_block": {"type": "tool_use", "id": call.replace("call_", "toolu_"), "name": name, "input": {}}})));
            let chars: Vec<char> = arguments.chars().collect();
            for frag in chars.chunks(8) {
                let frag: String = frag.iter().collect();
                events.push(sse("content_block_delta", json!({"type": "content_block_delta", "index": at, "delta": {"type": "input_json_delta", "partial_json": frag}})));
            }
        }
    }
    if searched.is_none() {
        events.push(sse(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": at}),
        ));
    }
    let mut usage_end = json!({"output_tokens": output_tokens});
    if let Some(s) = server_tool_use {
        usage_end["server_tool_use"] = s;
    }
    events.push(sse("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stopped.as_ref().map_or(stop_reason(&answer), |_| "stop_sequence"), "stop_sequence": stopped}, "usage": usage_end})));
    events.push(sse("message_stop", json!({"type": "message_stop"})));
    let cut = fault
        .as_ref()
        .filter(|f| f.fault == "disconnect")
        .map(|f| f.after_chunks.unwrap_or(2));
    sse_body(s, events, cut)
}
