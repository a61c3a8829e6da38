//! Anthropic's Messages API, served (`POST /v1/messages`,
//! `/v1/messages/count_tokens`): for clients built on Anthropic's SDK or
//! wire format (Claude Code, agents written for Claude) to use every
//! provider through the gateway. A request becomes a chat request (the
//! gateway's one pipeline: keys, routing, failover, usage records). Where
//! every deployment speaks Anthropic's protocol, the client's own request
//! goes upstream and its answer comes back as it is (`server::native`);
//! elsewhere the chat answer becomes Anthropic's Message, or its stream of
//! events; an error is Anthropic's error shape with the same status.
//!
//! What maps how:
//! - `system` (a string or text blocks) → a system message; `messages`:
//!   `text`, `image` (base64 or URL) and `document` (base64 PDF, or plain
//!   text) blocks → content parts; an assistant's `tool_use` → tool calls,
//!   its `thinking` / `redacted_thinking` → `thinking_blocks` (which go back
//!   to Claude verbatim); a user's `tool_result` → a tool message (its text;
//!   `is_error` says so in front); `cache_control` stays on its block;
//! - `max_tokens` → `max_completion_tokens`; `stop_sequences` → `stop`;
//!   `temperature`, `top_p`, `top_k`; `metadata.user_id` → `user`;
//! - `tools` (custom tools → functions; the web search tool → chat's
//!   `web_search_options`), `tool_choice` (`auto`, `any` → `required`,
//!   `tool`, `none`; `disable_parallel_tool_use` → `parallel_tool_calls:
//!   false`);
//! - `thinking: {type: "enabled", budget_tokens}` → `reasoning_effort` (up
//!   to 1024 low, up to 2048 medium, more high: the budget Claude is then
//!   given is that effort's), `{type: "disabled"}` → none;
//! - other server tools and unknown fields are refused with a 400 naming
//!   them, when a translating deployment is to serve the request
//!   ([`routing_form`] is the request's chat form for routing then).

use polyplex_types::{GatewayError, JsonMap};
use serde_json::{json, Map, Value};

/// What the answer needs from the request.
#[derive(Debug, Clone)]
pub struct Echo {
    /// `msg_` and 32 hex digits.
    pub id: String,
    /// The model asked for (the answer names the one that served).
    pub model: String,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid_param(param, message)
}

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
];

/// The model a request names ("" if none), for records of refused ones.
pub fn model_of(body: &JsonMap) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// A Messages request as a chat request. `counting`: for
/// `count_tokens`, which has no `max_tokens`.
pub fn to_chat(body: &JsonMap, counting: bool) -> Result<(JsonMap, Echo), GatewayError> {
    let allowed: &[&str] = if counting {
        &[
            "model",
            "messages",
            "system",
            "tools",
            "tool_choice",
            "thinking",
        ]
    } else {
        FIELDS
    };
    if let Some(k) = body.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(
            k.clone(),
            format!("{k}: Extra inputs are not permitted"),
        ));
    }
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(bad("model", "model: Field required (a model name)")),
    };
    let mut chat = JsonMap::new();
    chat.insert("model".into(), json!(model));
    let mut messages = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                if b.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(bad(
                        format!("system.{i}.type"),
                        "system: only text blocks are accepted",
                    ));
                }
                parts.push(text_part(b));
            }
            messages.push(json!({"role": "system", "content": parts}));
        }
        Some(_) => {
            return Err(bad(
                "system",
                "system: Input should be a string or a list of text blocks",
            ))
        }
    }
    let turns = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages", "messages: Field required (a list of messages)"))?;
    if turns.is_empty() {
        return Err(bad(
            "messages",
            "messages: at least one message is required",
        ));
    }
    for (i, m) in turns.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("user") => user_turn(m.get("content"), i, &mut messages)?,
            Some("assistant") => messages.push(assistant_turn(m.get("content"), i)?),
            _ => {
                return Err(bad(
                    format!("messages.{i}.role"),
                    format!("messages.{i}.role: Input should be 'user' or 'assistant'"),
                ))
            }
        }
    }
    chat.insert("messages".into(), Value::Array(messages));
    if !counting {
        match body.get("max_tokens") {
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {
                chat.insert("max_completion_tokens".into(), json!(n));
            }
            None => return Err(bad("max_tokens", "max_tokens: Field required")),
            Some(_) => {
                return Err(bad(
                    "max_tokens",
                    "max_tokens: Input should be an integer of at least 1",
                ))
            }
        }
    }
    for k in ["temperature", "top_p", "top_k"] {
        if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
            chat.insert(k.into(), v.clone());
        }
    }
    match body.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(s)) if s.iter().all(Value::is_string) => {
            if !s.is_empty() {
                chat.insert("stop".into(), Value::Array(s.clone()));
            }
        }
        Some(_) => {
            return Err(bad(
                "stop_sequences",
                "stop_sequences: Input should be a list of strings",
            ))
        }
    }
    match body.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            if let Some(k) = m.keys().find(|k| *k != "user_id") {
                return Err(bad(
                    format!("metadata.{k}"),
                    format!("metadata.{k}: Extra inputs are not permitted"),
                ));
            }
            match m.get("user_id") {
                None | Some(Value::Null) => {}
                Some(Value::String(u)) => {
                    chat.insert("user".into(), json!(u));
                }
                Some(_) => {
                    return Err(bad(
                        "metadata.user_id",
                        "metadata.user_id: Input should be a string",
                    ))
                }
            }
        }
        Some(_) => return Err(bad("metadata", "metadata: Input should be an object")),
    }
    if let Some(t) = body.get("tools").filter(|t| !t.is_null()) {
        tools(t, &mut chat)?;
    }
    if let Some(c) = body.get("tool_choice").filter(|c| !c.is_null()) {
        tool_choice(c, &mut chat)?;
    }
    if let Some(t) = body.get("thinking").filter(|t| !t.is_null()) {
        if let Some(effort) = thinking_effort(t)? {
            chat.insert("reasoning_effort".into(), json!(effort));
        }
    }
    match body
        .get("service_tier")
        .and_then(|v| v.as_str().or(v.is_null().then_some("")))
    {
        None if body.contains_key("service_tier") => {
            return Err(bad(
                "service_tier",
                "service_tier: Input should be 'auto' or 'standard_only'",
            ))
        }
        Some("standard_only") => {
            chat.insert("service_tier".into(), json!("default"));
        }
        None | Some("auto" | "") => {}
        Some(other) => {
            return Err(bad(
                "service_tier",
                format!("service_tier: Input should be 'auto' or 'standard_only', not '{other}'"),
            ))
        }
    }
    match body.get("stream") {
        Some(Value::Bool(true)) => {
            chat.insert("stream".into(), json!(true));
            chat.insert("stream_options".into(), json!({"include_usage": true}));
        }
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(_) => return Err(bad("stream", "stream: Input should be a boolean")),
    }
    let echo = Echo {
        id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        model,
    };
    Ok((chat, echo))
}

/// A Messages request that [`to_chat`] refused for something chat cannot
/// carry (or chat's rules refuse), in a chat form good for routing and
/// counting only (each turn's text, the custom tools as functions): it
/// goes upstream as written to a deployment that takes Anthropic's
/// Messages API. The request's frame must still hold (a model, turns of `user` and `assistant`, a
/// `max_tokens` unless `counting`): else the error `to_chat` gave stands.
pub fn routing_form(body: &JsonMap, counting: bool) -> Option<(JsonMap, Echo)> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())?;
    let max = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .filter(|n| *n >= 1);
    if max.is_none() && !counting {
        return None;
    }
    let turns = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())?;
    let mut messages = Vec::with_capacity(turns.len() + 1);
    let system = text_of(body.get("system"));
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in turns {
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("user" | "assistant")) => r,
            _ => return None,
        };
        messages.push(json!({"role": role, "content": text_of(m.get("content"))}));
    }
    let mut chat = JsonMap::new();
    chat.insert("model".into(), json!(model));
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(max) = max {
        chat.insert("max_completion_tokens".into(), json!(max));
    }
    let functions: Vec<Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| matches!(t.get("type").and_then(Value::as_str), None | Some("custom")))
        .filter_map(|t| {
            // Names chat takes (Anthropic's may be longer).
            let name = t.get("name").and_then(Value::as_str).filter(|n| {
                n.len() <= 64
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })?;
            let parameters = t
                .get("input_schema")
                .filter(|s| s.is_object())
                .cloned()
                .unwrap_or(json!({"type": "object"}));
            Some(json!({"type": "function", "function": {"name": name, "parameters": parameters}}))
        })
        .collect();
    if !functions.is_empty() {
        chat.insert("tools".into(), Value::Array(functions));
    }
    if let Some(Value::String(u)) = body.get("metadata").and_then(|m| m.get("user_id")) {
        chat.insert("user".into(), json!(u));
    }
    if body.get("stream") == Some(&Value::Bool(true)) {
        chat.insert("stream".into(), json!(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let echo = Echo {
        id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        model: model.to_string(),
    };
    Some((chat, echo))
}

/// The text a content (a string, or blocks) carries, for counting: its
/// text blocks', its tool calls' and results', one after another.
fn text_of(content: Option<&Value>) -> String {
    fn add(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(s);
            }
            Value::Array(blocks) => blocks.iter().for_each(|b| add(b, out)),
            Value::Object(b) => {
                for k in ["text", "thinking", "name"] {
                    if let Some(t) = b.get(k).filter(|t| t.is_string()) {
                        add(t, out);
                    }
                }
                if let Some(input) = b.get("input").filter(|i| !i.is_null()) {
                    add(&Value::String(input.to_string()), out);
                }
                if let Some(c) = b.get("content") {
                    add(c, out);
                }
            }
            _ => {}
        }
    }
    let mut out = String::new();
    if let Some(c) = content {
        add(c, &mut out);
    }
    out
}

/// A text block as a chat text part (its `cache_control` kept).
fn text_part(b: &Value) -> Value {
    let mut p =
        json!({"type": "text", "text": b.get("text").and_then(Value::as_str).unwrap_or("")});
    keep_cache_control(b, &mut p);
    p
}

fn keep_cache_control(from: &Value, to: &mut Value) {
    if let Some(cc) = from.get("cache_control").filter(|c| !c.is_null()) {
        to["cache_control"] = cc.clone();
    }
}

/// An image or document block's source as a URL (a `data:` URL for base64).
fn source_url(b: &Value, at: &str) -> Result<String, GatewayError> {
    let s = b.get("source").ok_or_else(|| {
        bad(
            format!("{at}.source"),
            format!("{at}.source: Field required"),
        )
    })?;
    match s.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = s
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("application/octet-stream");
            let data = s.get("data").and_then(Value::as_str).unwrap_or("");
            Ok(format!("data:{media};base64,{data}"))
        }
        Some("url") => Ok(s
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()),
        other => Err(bad(
            format!("{at}.source.type"),
            format!(
                "{at}.source.type: '{}' is not supported here (base64 or url)",
                other.unwrap_or("")
            ),
        )),
    }
}

/// Message `i`'s content: its blocks, or (Err) its text.
fn blocks_of(content: Option<&Value>, i: usize) -> Result<Result<&[Value], &str>, GatewayError> {
    match content {
        Some(Value::String(s)) => Ok(Err(s)),
        Some(Value::Array(b)) => Ok(Ok(b)),
        _ => Err(bad(
            format!("messages.{i}.content"),
            format!("messages.{i}.content: Input should be a string or a list of blocks"),
        )),
    }
}

/// A user turn's content: its tool results as tool messages, then the
/// rest as one user message.
fn user_turn(content: Option<&Value>, i: usize, out: &mut Vec<Value>) -> Result<(), GatewayError> {
    let blocks = match blocks_of(content, i)? {
        Ok(b) => b,
        Err(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
    };
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("messages.{i}.content.{j}");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(text_part(b)),
            Some("image") => {
                let mut p = json!({"type": "image_url", "image_url": {"url": source_url(b, &at)?}});
                keep_cache_control(b, &mut p);
                parts.push(p);
            }
            Some("document") => {
                let source = b.get("source");
                let mut p = match source.and_then(|s| s.get("type")).and_then(Value::as_str) {
                    Some("text") => {
                        json!({"type": "text", "text": source.and_then(|s| s.get("data")).and_then(Value::as_str).unwrap_or("")})
                    }
                    Some("base64") => {
                        let name = b
                            .get("title")
                            .and_then(Value::as_str)
                            .unwrap_or("document.pdf");
                        json!({"type": "file", "file": {"file_data": source_url(b, &at)?, "filename": name}})
                    }
                    _ => {
                        return Err(bad(
                            format!("{at}.source.type"),
                            format!("{at}.source: a document is taken as base64 (PDF) or text"),
                        ))
                    }
                };
                keep_cache_control(b, &mut p);
                parts.push(p);
            }
            Some("tool_result") => {
                let id = b
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        bad(
                            format!("{at}.tool_use_id"),
                            format!("{at}.tool_use_id: Field required"),
                        )
                    })?;
                let mut text = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => {
                        let mut t = String::new();
                        for (k, c) in inner.iter().enumerate() {
                            match c.get("type").and_then(Value::as_str) {
                                Some("text") => t.push_str(c.get("text").and_then(Value::as_str).unwrap_or("")),
                                _ => return Err(bad(format!("{at}.content.{k}"), format!("{at}.content.{k}: a tool result is passed on as text; other blocks are not supported"))),
                            }
                        }
                        t
                    }
                    Some(_) => {
                        return Err(bad(
                            format!("{at}.content"),
                            format!("{at}.content: Input should be a string or a list of blocks"),
                        ))
                    }
                };
                if b.get("is_error") == Some(&Value::Bool(true)) {
                    text = format!("Error: {text}");
                }
                let mut m = json!({"role": "tool", "tool_call_id": id, "content": text});
                keep_cache_control(b, &mut m);
                out.push(m);
            }
            other => {
                return Err(bad(
                    format!("{at}.type"),
                    format!(
                        "{at}.type: '{}' is not a block a user turn may have here",
                        other.unwrap_or("")
                    ),
                ))
            }
        }
    }
    if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// An assistant turn as a chat assistant message.
fn assistant_turn(content: Option<&Value>, i: usize) -> Result<Value, GatewayError> {
    let blocks = match blocks_of(content, i)? {
        Ok(b) => b,
        Err(s) => return Ok(json!({"role": "assistant", "content": s})),
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    let mut thinking = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("messages.{i}.content.{j}");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(text_part(b)),
            Some("tool_use") => {
                let id = b.get("id").and_then(Value::as_str).unwrap_or("");
                let name = b.get("name").and_then(Value::as_str).unwrap_or("");
                let input = b.get("input").cloned().unwrap_or(json!({}));
                calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}}));
            }
            Some("thinking" | "redacted_thinking") => thinking.push(b.clone()),
            other => {
                return Err(bad(
                    format!("{at}.type"),
                    format!(
                        "{at}.type: '{}' is not a block an assistant turn may have here",
                        other.unwrap_or("")
                    ),
                ))
            }
        }
    }
    let cached = parts.iter().any(|p| p.get("cache_control").is_some());
    let content = if parts.is_empty() {
        Value::Null
    } else if cached {
        Value::Array(parts)
    } else {
        json!(parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<String>())
    };
    let mut m = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    if !thinking.is_empty() {
        let text: String = thinking
            .iter()
            .filter_map(|b| b["thinking"].as_str())
            .collect();
        m["reasoning_content"] = json!(text);
        m["thinking_blocks"] = Value::Array(thinking);
    }
    Ok(m)
}

fn tools(t: &Value, chat: &mut JsonMap) -> Result<(), GatewayError> {
    let list = t
        .as_array()
        .ok_or_else(|| bad("tools", "tools: Input should be a list"))?;
    let mut out = Vec::new();
    for (i, tool) in list.iter().enumerate() {
        let kind = tool.get("type").and_then(Value::as_str);
        match kind {
            None | Some("custom") => {
                let name = tool.get("name").and_then(Value::as_str).ok_or_else(|| bad(format!("tools.{i}.name"), format!("tools.{i}.name: Field required")))?;
                let mut f = Map::new();
                f.insert("name".into(), json!(name));
                if let Some(d) = tool.get("description").filter(|d| !d.is_null()) {
                    f.insert("description".into(), d.clone());
                }
                f.insert("parameters".into(), tool.get("input_schema").cloned().unwrap_or(json!({"type": "object"})));
                let mut fun = json!({"type": "function", "function": f});
                keep_cache_control(tool, &mut fun);
                out.push(fun);
            }
            Some(k) if k.starts_with("web_search_") => {
                let size = match tool.get("max_uses").and_then(Value::as_u64) {
                    Some(0 | 1) => "low",
                    Some(2..=5) | None => "medium",
                    Some(_) => "high",
                };
                let mut options = json!({"search_context_size": size});
                if let Some(Value::Object(loc)) = tool.get("user_location") {
                    let mut at = loc.clone();
                    at.remove("type");
                    options["user_location"] = json!({"type": "approximate", "approximate": at});
                }
                chat.insert("web_search_options".into(), options);
            }
            Some(k) => {
                return Err(bad(
                    format!("tools.{i}.type"),
                    format!("tools.{i}.type: the server tool '{k}' is not run by this gateway; custom tools and web search are"),
                ))
            }
        }
    }
    if !out.is_empty() {
        chat.insert("tools".into(), Value::Array(out));
    }
    Ok(())
}

fn tool_choice(c: &Value, chat: &mut JsonMap) -> Result<(), GatewayError> {
    let choice = match c.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice.name", "tool_choice.name: Field required"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(bad(
                "tool_choice.type",
                "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
            ))
        }
    };
    chat.insert("tool_choice".into(), choice);
    if c.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) && chat.contains_key("tools")
    {
        chat.insert("parallel_tool_calls".into(), json!(false));
    }
    Ok(())
}

/// `thinking` as a reasoning effort (None: no extended thinking).
fn thinking_effort(t: &Value) -> Result<Option<&'static str>, GatewayError> {
    match t.get("type").and_then(Value::as_str) {
        Some("disabled") => Ok(None),
        Some("adaptive") => Ok(Some("medium")),
        Some("enabled") => match t.get("budget_tokens").and_then(Value::as_u64) {
            Some(n) if n < 1024 => Err(bad(
                "thinking.budget_tokens",
                "thinking.budget_tokens: Input should be greater than or equal to 1024",
            )),
            Some(n) if n <= 1024 => Ok(Some("low")),
            Some(n) if n <= 2048 => Ok(Some("medium")),
            Some(_) => Ok(Some("high")),
            None => Err(bad(
                "thinking.budget_tokens",
                "thinking.budget_tokens: Field required",
            )),
        },
        _ => Err(bad(
            "thinking.type",
            "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'",
        )),
    }
}

// ---------------------------------------------------------------- answers

/// Chat's finish reason as Anthropic's stop reason.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// A chat `usage` as Anthropic's (its input tokens without the cached ones).
fn usage_of(u: &Value) -> Value {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let (prompt, cached, written) = (
        n("/prompt_tokens"),
        n("/prompt_tokens_details/cached_tokens"),
        n("/prompt_tokens_details/cache_write_tokens"),
    );
    let mut out = json!({
        "input_tokens": prompt.saturating_sub(cached + written),
        "output_tokens": n("/completion_tokens"),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": written,
    });
    if let Some(cost) = u.get("cost").filter(|c| c.is_number()) {
        out["cost"] = cost.clone();
    }
    out
}

/// A chat completion as Anthropic's Message.
pub fn message_object(chat: &Value, echo: &Echo) -> Value {
    let choice = &chat["choices"][0];
    let msg = &choice["message"];
    let mut content = Vec::new();
    match msg.get("thinking_blocks").and_then(Value::as_array) {
        Some(blocks) if !blocks.is_empty() => content.extend(blocks.iter().cloned()),
        _ => {
            if let Some(r) = msg
                .get("reasoning_content")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
            }
        }
    }
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": t}));
    }
    for c in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let args = c
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        content.push(json!({
            "type": "tool_use",
            "id": c.get("id").cloned().unwrap_or(Value::Null),
            "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null),
            "input": serde_json::from_str::<Value>(args).unwrap_or(json!({})),
        }));
    }
    json!({
        "id": echo.id,
        "type": "message",
        "role": "assistant",
        "model": chat.get("model").and_then(Value::as_str).unwrap_or(&echo.model),
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str()),
        "stop_sequence": null,
        "usage": usage_of(&chat["usage"]),
    })
}

/// Anthropic's error type for a status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 408 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An OpenAI-shaped error body as Anthropic's, for `status`.
pub fn error_object(status: u16, openai: &Value) -> Value {
    let message = openai
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("The request failed.");
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// The block a stream has open.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    None,
    Thinking,
    Text,
    /// A tool call (its chat index).
    Tool(u64),
}

/// A chat stream as Anthropic's events: `message_start`, each block's
/// `content_block_start` / `_delta` / `_stop`, `message_delta` with the
/// stop reason and usage, `message_stop`; a failure is an `error` event.
pub struct Streamer {
    echo: Echo,
    started: bool,
    ended: bool,
    open: Open,
    /// The index of the open block (the next block's, when none is open).
    index: u64,
    stop: &'static str,
    usage: Value,
}

fn event(out: &mut Vec<u8>, kind: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

impl Streamer {
    pub fn new(echo: Echo) -> Self {
        Streamer {
            echo,
            started: false,
            ended: false,
            open: Open::None,
            index: 0,
            stop: "end_turn",
            usage: Value::Null,
        }
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    fn start(&mut self, model: Option<&str>, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": self.echo.id, "type": "message", "role": "assistant",
            "model": model.unwrap_or(&self.echo.model), "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": message}),
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.open != Open::None {
            event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.index}),
            );
            self.open = Open::None;
            self.index += 1;
        }
    }

    /// Opens `block` as `open` unless it is open already.
    fn ensure(&mut self, open: Open, block: Value, out: &mut Vec<u8>) {
        if self.open == open {
            return;
        }
        self.close(out);
        self.open = open;
        event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.index, "content_block": block}),
        );
    }

    fn delta(&self, delta: Value, out: &mut Vec<u8>) {
        event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": self.index, "delta": delta}),
        );
    }

    /// One chat chunk.
    pub fn on_chunk(&mut self, v: &Value, out: &mut Vec<u8>) {
        self.start(v.get("model").and_then(Value::as_str), out);
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = u.clone();
        }
        let Some(choice) = v
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            return;
        };
        let d = &choice["delta"];
        if let Some(r) = d
            .get("reasoning_content")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
        {
            self.ensure(
                Open::Thinking,
                json!({"type": "thinking", "thinking": "", "signature": ""}),
                out,
            );
            self.delta(json!({"type": "thinking_delta", "thinking": r}), out);
        }
        for b in d
            .get("thinking_blocks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match b.get("type").and_then(Value::as_str) {
                Some("thinking") => {
                    let text = b.get("thinking").and_then(Value::as_str).unwrap_or("");
                    if self.open != Open::Thinking {
                        self.ensure(
                            Open::Thinking,
                            json!({"type": "thinking", "thinking": "", "signature": ""}),
                            out,
                        );
                        if !text.is_empty() {
                            self.delta(json!({"type": "thinking_delta", "thinking": text}), out);
                        }
                    }
                    let sig = b.get("signature").and_then(Value::as_str).unwrap_or("");
                    self.delta(json!({"type": "signature_delta", "signature": sig}), out);
                    self.close(out);
                }
                Some("redacted_thinking") => {
                    self.close(out);
                    self.open = Open::Thinking;
                    event(
                        out,
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": self.index, "content_block": b}),
                    );
                    self.close(out);
                }
                _ => {}
            }
        }
        if let Some(t) = d
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.ensure(Open::Text, json!({"type": "text", "text": ""}), out);
            self.delta(json!({"type": "text_delta", "text": t}), out);
        }
        for c in d
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let at = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            if let Some(id) = c.get("id").and_then(Value::as_str) {
                self.close(out);
                let name = c
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                self.ensure(
                    Open::Tool(at),
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    out,
                );
            }
            let args = c
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !args.is_empty() && self.open == Open::Tool(at) {
                self.delta(
                    json!({"type": "input_json_delta", "partial_json": args}),
                    out,
                );
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = stop_reason(Some(f));
        }
    }

    /// The chat stream's `[DONE]`: the message ends.
    pub fn on_done(&mut self, out: &mut Vec<u8>) {
        self.start(None, out);
        self.close(out);
        event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop, "stop_sequence": null}, "usage": usage_of(&self.usage)}),
        );
        event(out, "message_stop", &json!({"type": "message_stop"}));
        self.ended = true;
    }

    /// The chat stream failed (`err`: OpenAI's error object).
    pub fn on_error(&mut self, err: &Value, out: &mut Vec<u8>) {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("The stream failed.");
        let kind = match err.get("code").and_then(Value::as_str) {
            Some("rate_limit_exceeded") => "rate_limit_error",
            _ => "api_error",
        };
        event(
            out,
            "error",
            &json!({"type": "error", "error": {"type": kind, "message": message}}),
        );
        self.ended = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> JsonMap {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_request_becomes_chat() {
        let (chat, echo) = to_chat(
            &body(json!({
                "model": "claude-sonnet-4-5", "max_tokens": 100,
                "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": [
                        {"type": "thinking", "thinking": "hm", "signature": "sig"},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "tu_1", "content": [{"type": "text", "text": "sunny"}]},
                        {"type": "text", "text": "And tomorrow?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}],
                "stop_sequences": ["END"], "temperature": 0.5, "top_k": 5,
                "metadata": {"user_id": "u-1"},
                "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "thinking": {"type": "enabled", "budget_tokens": 2000},
                "stream": true,
            })),
            false,
        )
        .unwrap();
        assert!(echo.id.starts_with("msg_"));
        let m = &chat["messages"];
        assert_eq!(m[0]["content"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(m[1], json!({"role": "user", "content": "Weather?"}));
        assert_eq!(m[2]["content"], "Checking.");
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(m[2]["thinking_blocks"][0]["signature"], "sig");
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "tu_1", "content": "sunny"})
        );
        assert_eq!(m[4]["content"][0]["text"], "And tomorrow?");
        assert_eq!(
            m[4]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        assert_eq!(chat["max_completion_tokens"], 100);
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["top_k"], 5);
        assert_eq!(chat["user"], "u-1");
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(chat["reasoning_effort"], "medium");
        assert_eq!(chat["stream_options"]["include_usage"], true);
        assert_eq!(chat["tools"][0]["function"]["parameters"]["type"], "object");
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": []}),
                "messages",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
                "messages.0.role",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "n": 2}),
                "n",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
                    "tools": [{"type": "bash_20250124", "name": "bash"}]}),
                "tools.0.type",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
                    "thinking": {"type": "enabled", "budget_tokens": 10}}),
                "thinking.budget_tokens",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "tool_use"}]}]}),
                "messages.0.content.0.type",
            ),
        ];
        for (b, param) in cases {
            let e = to_chat(&body(b), false).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{}", e.message);
        }
        assert!(to_chat(
            &body(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})),
            true
        )
        .is_ok());
    }

    #[test]
    fn an_answer_becomes_a_message() {
        let chat = json!({"id": "c", "model": "claude-sonnet-4-5", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "Let me look.", "reasoning_content": "think",
                "tool_calls": [{"id": "tu_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 60}, "cost": 0.01}});
        let echo = Echo {
            id: "msg_1".into(),
            model: "asked".into(),
        };
        let m = message_object(&chat, &echo);
        assert_eq!(
            m["content"][0],
            json!({"type": "thinking", "thinking": "think", "signature": ""})
        );
        assert_eq!(
            m["content"][1],
            json!({"type": "text", "text": "Let me look."})
        );
        assert_eq!(
            m["content"][2],
            json!({"type": "tool_use", "id": "tu_9", "name": "f", "input": {"a": 1}})
        );
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(m["model"], "claude-sonnet-4-5");
        assert_eq!(m["usage"]["input_tokens"], 40);
        assert_eq!(m["usage"]["cache_read_input_tokens"], 60);
        assert_eq!(m["usage"]["cost"], 0.01);
        let e = error_object(429, &json!({"error": {"message": "slow down"}}));
        assert_eq!(
            e,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
    }

    fn events(out: &[u8]) -> Vec<(String, Value)> {
        std::str::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (kind, data) = e.split_once("\ndata: ").unwrap();
                (
                    kind.trim_start_matches("event: ").to_string(),
                    serde_json::from_str(data).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_stream_becomes_events() {
        let mut s = Streamer::new(Echo {
            id: "msg_1".into(),
            model: "m".into(),
        });
        let mut out = Vec::new();
        for chunk in [
            json!({"model": "m2", "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "hm"}}]}),
            json!({"choices": [{"index": 0, "delta": {"thinking_blocks": [{"type": "thinking", "thinking": "hm", "signature": "S"}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
        ] {
            s.on_chunk(&chunk, &mut out);
        }
        s.on_done(&mut out);
        assert!(s.ended());
        let got = events(&out);
        let kinds: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(got[0].1["message"]["model"], "m2");
        assert_eq!(
            got[3].1["delta"],
            json!({"type": "signature_delta", "signature": "S"})
        );
        assert_eq!(got[5].1["index"], 1);
        assert_eq!(got[8].1["content_block"]["name"], "f");
        assert_eq!(got[8].1["index"], 2);
        assert_eq!(got[10].1["delta"]["partial_json"], "1}");
        assert_eq!(got[12].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(got[12].1["usage"]["output_tokens"], 4);
        let mut out = Vec::new();
        let mut s = Streamer::new(Echo {
            id: "msg_2".into(),
            model: "m".into(),
        });
        s.on_error(&json!({"message": "boom"}), &mut out);
        assert_eq!(events(&out)[0].1["error"]["message"], "boom");
    }
}
