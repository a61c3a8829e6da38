//! Amazon Bedrock's Converse API (`POST {base}/model/{modelId}/converse`
//! and `/converse-stream`), translated both ways.
//!
//! - Authentication: a Bedrock API key as a bearer token, or AWS SigV4 with
//!   access keys (see [`sigv4`]); the target's [`Target::sigv4`] decides;
//! - system and developer messages → `system`; content parts → `text` and
//!   `image` blocks (images as base64 data URLs: Bedrock cannot fetch URLs),
//!   `file` parts → `document` blocks (pdf, csv, doc(x), xls(x), html, txt,
//!   md; named as Converse allows, unique in the request);
//!   tool calls → `toolUse` blocks, tool results → `toolResult` blocks in a
//!   user turn; consecutive same-role turns merge (Converse requires
//!   alternation);
//! - sampling → `inferenceConfig` (`maxTokens`, `temperature`, `topP`,
//!   `stopSequences`); tools → `toolConfig` (`auto`, `any`, `tool`);
//!   `response_format` → a forced tool whose input is the JSON asked for,
//!   given back as the message content, as for Anthropic;
//! - `reasoning_effort` on Claude models: extended thinking in the model's
//!   own fields, its `reasoningContent` out and back as Anthropic's adapter
//!   does (`reasoning_content`, `thinking_blocks`); other models refuse it;
//! - `n` > 1, `seed`, penalties, `logit_bias`, `logprobs` and unknown fields
//!   are refused by name, or dropped with `drop_params`; `user`, a message's
//!   `name` and an image's `detail` are dropped and named (Converse has no
//!   place for them);
//! - the stream is an AWS event stream (binary frames), read by
//!   [`crate::sse::Parser::event_stream`]; usage arrives in its `metadata`
//!   event, after `messageStop`.
//!
//! A client's own Anthropic Messages request for a Claude model goes
//! through `invoke` / `invoke-with-response-stream` as it is
//! ([`crate::anthropic::Native`]): Anthropic's body without `model` and
//! `stream`, with `anthropic_version` and the beta features; the stream's
//! `chunk` events carry Anthropic's events in base64.

pub mod sigv4;
mod stream;
#[cfg(test)]
mod tests;

pub use sigv4::SigV4;
pub use stream::Decoder;

use crate::translate::{
    assistant_calls, cache_control, check_fields, completion, data_url, embedding_input,
    embedding_list, file_data, name_dropped_hints, no_turns, push_turn, refuse_asked, text_of,
    unsupported_endpoint, EmbeddingInput, Hints, CHAT_PARAMS,
};
use crate::translate::{fit_thinking, sent_thinking, thinking_budget, tool_turn_without_thinking};
use crate::{join_url, unsupported, Endpoint, Protocol, StreamDecoder, Target, UpstreamRequest};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use http::StatusCode;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use polyplex_types::{lookup, GatewayError, JsonMap, RequestBody, Usage};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};

/// The forced tool that carries `response_format` JSON.
pub(crate) const JSON_TOOL: &str = "json_response";

/// A model id as one path segment: everything but unreserved characters
/// escaped (`:` of `-v1:0`, `/` of an ARN).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, Default, Clone, Copy)]
pub struct Bedrock;

/// The Bedrock runtime endpoint of a region.
pub fn endpoint_for(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// The region named by a Bedrock runtime URL (`bedrock-runtime[-fips].<region>.amazonaws.com`).
pub fn region_of(base_url: &str) -> Option<String> {
    let host = base_url.split("://").nth(1)?.split(['/', ':']).next()?;
    let mut labels = host.split('.');
    let first = labels.next()?;
    if !first.starts_with("bedrock-runtime") {
        return None;
    }
    let region = labels.next()?;
    (!region.is_empty() && host.ends_with(".amazonaws.com")).then(|| region.to_string())
}

/// One encoded event-stream message: an `event` named `event_type`, or with
/// `exception` set, an `exception` of that type. For the mock and tests.
pub fn frame(event_type: &str, payload: &Value, exception: bool) -> Bytes {
    let s = |v: &str| HeaderValue::String(v.to_string().into());
    let headers = if exception {
        vec![
            Header::new(":message-type", s("exception")),
            Header::new(":exception-type", s(event_type)),
            Header::new(":content-type", s("application/json")),
        ]
    } else {
        vec![
            Header::new(":message-type", s("event")),
            Header::new(":event-type", s(event_type)),
            Header::new(":content-type", s("application/json")),
        ]
    };
    let m = Message::new_from_parts(headers, payload.to_string().into_bytes());
    let mut out = Vec::new();
    match aws_smithy_eventstream::frame::write_message_to(&m, &mut out) {
        Ok(()) => Bytes::from(out),
        Err(_) => Bytes::new(),
    }
}

/// A response id: Converse answers carry none in the body.
pub(crate) fn new_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "chatcmpl-bedrock-{nanos:x}{:04x}",
        SEQ.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

/// True if the request asked for JSON through `response_format`.
pub(crate) fn json_mode(body: &JsonMap) -> bool {
    matches!(
        lookup(body, "response_format")
            .and_then(|r| r.get("type"))
            .and_then(Value::as_str),
        Some("json_object" | "json_schema")
    )
}

fn image_format(media_type: &str) -> Option<&'static str> {
    match media_type.to_ascii_lowercase().as_str() {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" => Some("jpeg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        _ => None,
    }
}

/// Converse's document format for a file's media type.
fn document_format(media_type: &str) -> Option<&'static str> {
    Some(match media_type.to_ascii_lowercase().as_str() {
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        "text/markdown" => "md",
        "text/csv" => "csv",
        "text/html" => "html",
        "application/msword" => "doc",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
        "application/vnd.ms-excel" => "xls",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "xlsx",
        _ => return None,
    })
}

/// A document's name as Converse takes it — ASCII letters and digits, single
/// spaces, hyphens, parentheses and square brackets — from the client's
/// file name without its extension (`document` without one), made unique
/// within the request (Converse refuses two documents of one name).
fn document_name(filename: Option<&str>, taken: &mut Vec<String>) -> String {
    let stem = filename.map_or("", |f| f.rsplit_once('.').map_or(f, |(s, _)| s));
    let mut name = String::with_capacity(stem.len());
    for c in stem.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '-' | '(' | ')' | '[' | ']') {
            c
        } else if c.is_whitespace() {
            ' '
        } else {
            '-'
        };
        if !(c == ' ' && (name.is_empty() || name.ends_with(' '))) {
            name.push(c);
        }
    }
    let mut name = name.trim_end().to_string();
    if name.is_empty() {
        name.push_str("document");
    }
    let base = name.clone();
    let mut n = 1;
    while taken.contains(&name) {
        n += 1;
        name = format!("{base} ({n})");
    }
    taken.push(name.clone());
    name
}

/// Converse's prompt-cache breakpoint: the blocks before it are cached.
fn cache_point() -> Value {
    json!({"cachePoint": {"type": "default"}})
}

/// Ends `blocks` with a cache point when `v` (a message, part or tool) has
/// a `cache_control` and there is a block for the point to follow.
fn mark_cache(blocks: &mut Vec<Value>, v: &Value) {
    if cache_control(v).is_some() && blocks.last().is_some_and(|b| b.get("cachePoint").is_none()) {
        blocks.push(cache_point());
    }
}

/// The blocks of message `i`'s `content` (a part's `cache_control` as a
/// cache point after its block); `documents` holds the names of the
/// request's documents so far.
fn blocks(
    content: &Value,
    i: usize,
    documents: &mut Vec<String>,
) -> Result<Vec<Value>, GatewayError> {
    match content {
        Value::String(s) if s.is_empty() => Ok(vec![]),
        Value::String(s) => Ok(vec![json!({"text": s})]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let text = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
                let before = out.len();
                match p.get("type").and_then(Value::as_str) {
                    Some("text") if text("text").is_empty() => {}
                    Some("text") => out.push(json!({"text": text("text")})),
                    Some("refusal") => out.push(json!({"text": text("refusal")})),
                    Some("image_url") => {
                        let param = format!("messages[{i}].content[{j}].image_url.url");
                        let url = p
                            .pointer("/image_url/url")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        let Some(parsed) = data_url(url, &param) else {
                            return Err(GatewayError::invalid_param(param, "The Bedrock protocol takes images as base64 data URLs (data:image/png;base64,...); it cannot fetch image URLs."));
                        };
                        let (media_type, data) = parsed?;
                        let format = image_format(media_type).ok_or_else(|| {
                            GatewayError::invalid_param(&param, format!("Image type '{media_type}' is not supported by the Bedrock protocol (png, jpeg, gif, webp)."))
                        })?;
                        out.push(json!({"image": {"format": format, "source": {"bytes": data}}}));
                    }
                    Some("file") => {
                        let param = format!("messages[{i}].content[{j}]");
                        let f = file_data(p, &param, "Bedrock")?;
                        if let Some(format) = image_format(f.media_type) {
                            out.push(json!({"image": {"format": format, "source": {"bytes": f.data}}}));
                        } else {
                            let format = document_format(f.media_type).ok_or_else(|| {
                                GatewayError::invalid_param(format!("{param}.file.file_data"), format!("Files of type '{}' are not supported by the Bedrock protocol (pdf, csv, doc, docx, xls, xlsx, html, txt, md and images are).", f.media_type))
                            })?;
                            let name = document_name(f.filename, documents);
                            out.push(json!({"document": {"format": format, "name": name, "source": {"bytes": f.data}}}));
                        }
                    }
                    Some(other) => {
                        return Err(GatewayError::invalid_param(
                            format!("messages[{i}].content[{j}].type"),
                            format!("Content parts of type '{other}' are not supported by the Bedrock protocol."),
                        ))
                    }
                    None => {}
                }
                if out.len() > before {
                    mark_cache(&mut out, p);
                }
            }
            Ok(out)
        }
        _ => Ok(vec![]),
    }
}

/// The system blocks of a system or developer message: its text, or — when
/// a part marks a cache breakpoint — one block per text part, each marked
/// as the client marked it.
fn system_blocks(m: &Value, out: &mut Vec<Value>) {
    let content = m.get("content").unwrap_or(&Value::Null);
    match content.as_array() {
        Some(parts) if parts.iter().any(|p| cache_control(p).is_some()) => {
            for p in parts {
                let text = p.get("text").and_then(Value::as_str).unwrap_or("");
                if !text.is_empty() {
                    out.push(json!({"text": text}));
                    mark_cache(out, p);
                }
            }
        }
        _ => {
            let text = text_of(content);
            if !text.is_empty() {
                out.push(json!({"text": text}));
            }
        }
    }
    mark_cache(out, m);
}

/// Claude's thinking sent back on an assistant turn (`thinking_blocks`) as
/// Converse's `reasoningContent` blocks, verbatim.
fn reasoning_blocks(m: &Value) -> Vec<Value> {
    sent_thinking(m)
        .map(|b| match b.get("type").and_then(Value::as_str) {
            Some("thinking") => json!({"reasoningContent": {"reasoningText": {
                "text": b.get("thinking").cloned().unwrap_or(json!("")),
                "signature": b.get("signature").cloned().unwrap_or(json!(""))}}}),
            _ => json!({"reasoningContent": {"redactedContent": b.get("data").cloned().unwrap_or(json!(""))}}),
        })
        .collect()
}

/// Converse turns and system blocks of the request's messages; whether any
/// turn carries tool use (then `toolConfig` must be sent). A message's
/// `cache_control` is a cache point after its last block. With `thinking`
/// (Claude's extended thinking on), an assistant turn's thinking sent back
/// leads it.
fn messages(
    body: &JsonMap,
    thinking: bool,
) -> Result<(Vec<Value>, Vec<Value>, bool), GatewayError> {
    let mut documents = Vec::new();
    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    let mut tool_use = false;
    for (i, m) in lookup(body, "messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let content = m.get("content").unwrap_or(&Value::Null);
        match m.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => system_blocks(m, &mut system),
            "user" => {
                let mut bs = blocks(content, i, &mut documents)?;
                mark_cache(&mut bs, m);
                push_turn(&mut turns, "user", "content", bs);
            }
            "assistant" => {
                let mut bs = if thinking {
                    reasoning_blocks(m)
                } else {
                    Vec::new()
                };
                bs.extend(blocks(content, i, &mut documents)?);
                for c in assistant_calls(m, i)? {
                    tool_use = true;
                    bs.push(
                        json!({"toolUse": {"toolUseId": c.id, "name": c.name, "input": c.input}}),
                    );
                }
                mark_cache(&mut bs, m);
                push_turn(&mut turns, "assistant", "content", bs);
            }
            "tool" | "function" => {
                let id = m
                    .get("tool_call_id")
                    .or_else(|| m.get("name"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let text = text_of(content);
                // Bedrock refuses blank text blocks: an empty result is an empty object.
                let result = if text.is_empty() {
                    json!([{"json": {}}])
                } else {
                    json!([{"text": text}])
                };
                tool_use = true;
                let mut bs = vec![json!({"toolResult": {"toolUseId": id, "content": result}})];
                mark_cache(&mut bs, m);
                push_turn(&mut turns, "user", "content", bs);
            }
            _ => {}
        }
    }
    Ok((turns, system, tool_use))
}

fn tool_choice(v: &Value) -> Option<Value> {
    match v {
        Value::String(s) if s == "required" => Some(json!({"any": {}})),
        Value::Object(o) => Some(
            json!({"tool": {"name": o.get("function").and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null)}}),
        ),
        _ => Some(json!({"auto": {}})),
    }
}

fn build_chat(
    body: &JsonMap,
    stream: bool,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    const P: &str = "Bedrock";
    let body = &*crate::translate::for_translation(body, P)?;
    let mut dropped = Vec::new();
    check_fields(body, CHAT_PARAMS, false, P, target, &mut dropped)?;
    // reasoning_effort: Claude's extended thinking, in the model's own
    // fields; Converse has no switch for the other models' reasoning.
    let claude = target.model.contains("anthropic.");
    let mut budget = None;
    if let Some(effort) = crate::translate::reasoning_effort(body)? {
        if !claude {
            crate::unsupported("reasoning_effort", P, target, &mut dropped)?;
        } else if thinking_budget(effort).is_some() && tool_turn_without_thinking(body) {
            dropped.push("reasoning_effort".into());
        } else {
            budget = thinking_budget(effort);
        }
    }
    refuse_asked(
        body,
        &[
            "n",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "top_logprobs",
            "logprobs",
            "parallel_tool_calls",
        ],
        P,
        target,
        &mut dropped,
    )?;
    name_dropped_hints(body, Hints::CACHE_CONTROL, &mut dropped);

    let (turns, system, history_uses_tools) = messages(body, budget.is_some())?;
    let mut out = Map::new();
    if turns.is_empty() {
        return Err(no_turns(P));
    }
    out.insert("messages".into(), Value::Array(turns));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let mut ic = Map::new();
    let limit = lookup(body, "max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| lookup(body, "max_tokens").filter(|v| !v.is_null()));
    if let Some(max) = limit {
        ic.insert("maxTokens".into(), max.clone());
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            ic.insert(to.into(), v.clone());
        }
    }
    let mut model_fields = Map::new();
    if let Some(budget) = budget {
        // As on Anthropic's API (`fit_thinking`), and no temperature but 1;
        // without the client's limit, one the budget fits under is sent.
        let max_tokens = target
            .default_max_tokens
            .unwrap_or(crate::anthropic::FALLBACK_MAX_TOKENS);
        let given = limit.and_then(Value::as_u64);
        let (budget, room) = fit_thinking(budget, given, max_tokens, json_mode(body), P)?;
        if limit.is_none() {
            ic.insert("maxTokens".into(), json!(room));
        }
        if ic
            .get("temperature")
            .and_then(Value::as_f64)
            .is_some_and(|t| t != 1.0)
        {
            unsupported("temperature", P, target, &mut dropped)?;
            ic.remove("temperature");
        }
        model_fields.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
    }
    match lookup(body, "stop") {
        Some(Value::String(s)) => {
            ic.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            ic.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if !ic.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(ic));
    }
    if let Some(k) = lookup(body, "top_k").filter(|v| !v.is_null()) {
        // Not part of Converse: passed in the model's own fields, where
        // Anthropic's models read it as `top_k`.
        if claude {
            model_fields.insert("top_k".into(), k.clone());
        } else {
            unsupported("top_k", P, target, &mut dropped)?;
        }
    }
    if !model_fields.is_empty() {
        out.insert(
            "additionalModelRequestFields".into(),
            Value::Object(model_fields),
        );
    }

    let mut tools: Vec<Value> = Vec::new();
    for t in lookup(body, "tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = t.get("function").cloned().unwrap_or(Value::Null);
        let schema = f
            .get("parameters")
            .filter(|p| !p.is_null())
            .cloned()
            .unwrap_or(json!({"type": "object", "properties": {}}));
        let mut spec = json!({"name": f.get("name").cloned().unwrap_or(Value::Null), "inputSchema": {"json": schema}});
        if let Some(d) = f.get("description").filter(|d| !d.is_null()) {
            spec["description"] = d.clone();
        }
        tools.push(json!({"toolSpec": spec}));
        mark_cache(&mut tools, t);
    }
    let mut choice = None;
    match lookup(body, "tool_choice").filter(|c| !c.is_null()) {
        Some(Value::String(s)) if s == "none" => {
            // Converse has no "none": the tools are left out, which only
            // works while no turn carries tool use.
            if history_uses_tools {
                unsupported("tool_choice", P, target, &mut dropped)?;
            } else {
                tools.clear();
            }
        }
        Some(c) => choice = tool_choice(c),
        None => {}
    }
    if json_mode(body) {
        if !tools.is_empty() {
            return Err(GatewayError::invalid_param(
                "response_format",
                "With the Bedrock protocol, response_format cannot be combined with tools.",
            ));
        }
        let schema = lookup(body, "response_format")
            .and_then(|r| r.pointer("/json_schema/schema"))
            .cloned()
            .unwrap_or(json!({"type": "object"}));
        tools.push(json!({"toolSpec": {"name": JSON_TOOL, "description": "Respond with the requested JSON object.", "inputSchema": {"json": schema}}}));
        choice = Some(json!({"tool": {"name": JSON_TOOL}}));
    }
    if !tools.is_empty() {
        let mut tc = json!({"tools": tools});
        if let Some(c) = choice {
            tc["toolChoice"] = c;
        }
        out.insert("toolConfig".into(), tc);
    }

    let bytes = serde_json::to_vec(&out).map_err(|e| {
        GatewayError::internal(format!("could not encode the upstream request: {e}"))
    })?;
    let method = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    request(target, method, bytes, dropped, stream)
}

/// The request to `model/{id}/{method}`: the credential (bearer) or the
/// SigV4 signature over the final URL and body.
fn request(
    target: &Target<'_>,
    method: &str,
    bytes: Vec<u8>,
    dropped: Vec<String>,
    event_stream: bool,
) -> Result<UpstreamRequest, GatewayError> {
    let model: String = utf8_percent_encode(target.model, SEGMENT).collect();
    let url = join_url(target.base_url, &format!("model/{model}/{method}"));
    let mut headers = crate::headers(target, false)?;
    if event_stream {
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/vnd.amazon.eventstream"),
        );
    }
    if let Some(signer) = target.sigv4 {
        headers.remove(http::header::AUTHORIZATION);
        signer.sign(&url, &mut headers, &bytes, std::time::SystemTime::now())?;
    }
    Ok(UpstreamRequest {
        url,
        headers,
        body: Bytes::from(bytes),
        dropped,
    })
}

/// The Messages API version Bedrock takes in the body of Claude's `invoke`.
pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// A Messages `count_tokens` request as Bedrock's CountTokens: the
/// `invoke` body (with a `max_tokens`, which Claude's `invoke` schema
/// requires and counting ignores) in base64, for the foundation model an
/// inference profile names (CountTokens takes only those).
fn count_request(
    native: &crate::anthropic::Native,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    use base64::Engine;
    let body = native.body_with_betas(ANTHROPIC_VERSION, false)?;
    let mut v: Value = serde_json::from_slice(&body)
        .map_err(|e| GatewayError::internal(format!("count_tokens: {e}")))?;
    if v.get("max_tokens").is_none() {
        v["max_tokens"] = json!(1);
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(v.to_string());
    let wrapped = json!({"input": {"invokeModel": {"body": encoded}}});
    let mut foundation = target.clone();
    foundation.model = foundation_model(target.model);
    request(
        &foundation,
        "count-tokens",
        wrapped.to_string().into_bytes(),
        Vec::new(),
        false,
    )
}

/// The foundation model of an inference profile id (`us.anthropic.claude-…`
/// → `anthropic.claude-…`); other ids as they are.
pub fn foundation_model(model: &str) -> &str {
    match model.split_once('.') {
        Some((region, rest))
            if rest.contains('.')
                && ["us", "eu", "apac", "global", "jp", "au", "ca", "us-gov"].contains(&region) =>
        {
            rest
        }
        _ => model,
    }
}

/// True for Claude's model ids (and inference profiles) on Bedrock, which
/// take Anthropic's Messages body through `invoke`.
pub fn is_claude(model: &str) -> bool {
    model.contains("anthropic.claude")
}

/// Which embedding model family an id names (Bedrock's `invoke` bodies
/// are the model's own): Cohere's take a batch, Titan's one text.
fn embed_family(model: &str) -> Option<&'static str> {
    if model.contains("cohere.embed") {
        Some("cohere")
    } else if model.contains("amazon.titan-embed") {
        Some("titan")
    } else {
        None
    }
}

/// `invoke` for embeddings, in the model family's own body.
fn build_embed(body: &JsonMap, target: &Target<'_>) -> Result<UpstreamRequest, GatewayError> {
    let EmbeddingInput {
        texts,
        dimensions: dims,
        dropped,
    } = embedding_input(body, "Bedrock", target)?;
    let payload = match embed_family(target.model) {
        Some("cohere") => {
            let mut p = json!({"texts": texts, "input_type": "search_document", "embedding_types": ["float"]});
            if let Some(d) = dims {
                p["output_dimension"] = d.clone();
            }
            p
        }
        Some(_) => {
            let [text] = <[String; 1]>::try_from(texts).map_err(|_| {
                GatewayError::invalid_param(
                    "input",
                    "Titan embedding models on Bedrock embed one text per request (the gateway sends a list as one request per text).",
                )
            })?;
            let mut p = json!({"inputText": text});
            if let Some(d) = dims {
                p["dimensions"] = d.clone();
            }
            p
        }
        None => {
            return Err(GatewayError::invalid_param(
                "model",
                format!("'{}' is not an embedding model polyplex can call on Bedrock (amazon.titan-embed-* or cohere.embed-*).", target.model),
            ))
        }
    };
    request(
        target,
        "invoke",
        payload.to_string().into_bytes(),
        dropped,
        false,
    )
}

fn parse_embed(
    provider: &str,
    request: &JsonMap,
    body: &[u8],
) -> Result<(JsonMap, Option<Usage>), GatewayError> {
    let v = crate::translate::reply_json(provider, body)?;
    let floats = |a: &Value| -> Vec<f64> {
        a.as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    // Titan: one `embedding` and its token count.
    if let Some(e) = v.get("embedding") {
        let usage = v
            .get("inputTextTokenCount")
            .and_then(Value::as_u64)
            .map(|n| Usage {
                prompt_tokens: n,
                ..Usage::default()
            });
        return Ok((
            embedding_list(&[floats(e)], "", request, usage.as_ref()),
            usage,
        ));
    }
    // Cohere: `embeddings` by type (`float`), or a bare list; no token count
    // in the body (the gateway counts).
    let list = match v.get("embeddings") {
        Some(Value::Object(by_type)) => by_type.get("float"),
        other => other,
    }
    .and_then(Value::as_array)
    .ok_or_else(|| {
        GatewayError::upstream_bad_response(provider, "no `embedding` or `embeddings`")
    })?;
    let vectors: Vec<Vec<f64>> = list.iter().map(floats).collect();
    Ok((embedding_list(&vectors, "", request, None), None))
}

pub(crate) fn finish_reason(stop: &str, json_mode: bool) -> &'static str {
    match stop {
        "guardrail_intervened" | "content_filtered" => "content_filter",
        // The rest are Anthropic's stop reasons, which Converse took over.
        other => crate::anthropic::finish_reason(other, json_mode),
    }
}

/// Converse usage → OpenAI usage (prompt tokens include cache reads and writes).
pub(crate) fn usage_from(u: &Value) -> Usage {
    crate::translate::usage_with_cache(
        u,
        [
            "inputTokens",
            "outputTokens",
            "cacheReadInputTokens",
            "cacheWriteInputTokens",
        ],
    )
}

fn parse_chat(
    provider: &str,
    body: &[u8],
    json_mode: bool,
) -> Result<(JsonMap, Option<Usage>), GatewayError> {
    let v = crate::translate::reply_json(provider, body)?;
    let content = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            GatewayError::upstream_bad_response(provider, "no `output.message.content` array")
        })?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let (mut reasoning, mut thinking_blocks) = (String::new(), Vec::new());
    for b in content {
        // Claude's extended thinking: as Anthropic's answers give it.
        if let Some(rc) = b.get("reasoningContent") {
            if let Some(rt) = rc.get("reasoningText") {
                let t = rt.get("text").and_then(Value::as_str).unwrap_or("");
                reasoning.push_str(t);
                thinking_blocks.push(json!({"type": "thinking", "thinking": t,
                    "signature": rt.get("signature").cloned().unwrap_or(json!(""))}));
            } else if let Some(data) = rc.get("redactedContent") {
                thinking_blocks.push(json!({"type": "redacted_thinking", "data": data}));
            }
        } else if let Some(t) = b.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(tu) = b.get("toolUse") {
            let name = tu.get("name").and_then(Value::as_str).unwrap_or("");
            let input = tu.get("input").cloned().unwrap_or(json!({}));
            if json_mode && name == JSON_TOOL {
                text.push_str(&input.to_string());
            } else {
                tool_calls.push(json!({"id": tu.get("toolUseId").cloned().unwrap_or(Value::Null), "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}}));
            }
        }
        // citations, guard content: not in OpenAI's chat shape.
    }
    let stop = v
        .get("stopReason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) }, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    if !thinking_blocks.is_empty() {
        message["reasoning_content"] = json!(reasoning);
        message["thinking_blocks"] = Value::Array(thinking_blocks);
    }
    let usage = v.get("usage").map(usage_from);
    // No model in the answer: the gateway names the one it called.
    let mut out = completion(
        json!(new_id()),
        Value::Null,
        json!([{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(stop, json_mode)}]),
        usage.as_ref(),
    );
    out.remove("model");
    Ok((out, usage))
}

/// An exception an event stream raised (its `:exception-type`, its
/// payload): raised mid-stream, so another attempt may well succeed.
pub(crate) fn stream_exception(provider: &str, exception: &str, data: &str) -> GatewayError {
    let mut e = error_for(
        provider,
        StatusCode::BAD_GATEWAY,
        exception,
        data.as_bytes(),
    );
    e.retryable = e.status.is_server_error() || e.status == StatusCode::TOO_MANY_REQUESTS;
    e
}

/// A Bedrock error (`{"message": ...}`, its type in `x-amzn-ErrorType` or
/// the stream's `:exception-type`) in OpenAI's terms.
pub(crate) fn error_for(
    provider: &str,
    status: StatusCode,
    kind: &str,
    body: &[u8],
) -> GatewayError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "Upstream provider `{provider}` answered HTTP {}",
                status.as_u16()
            )
        });
    let kind = kind.split(':').next().unwrap_or("");
    let status = match kind.to_ascii_lowercase().as_str() {
        "throttlingexception" => StatusCode::TOO_MANY_REQUESTS,
        "validationexception" => StatusCode::BAD_REQUEST,
        "accessdeniedexception" => StatusCode::FORBIDDEN,
        "resourcenotfoundexception" => StatusCode::NOT_FOUND,
        "serviceunavailableexception" => StatusCode::SERVICE_UNAVAILABLE,
        "modeltimeoutexception" => StatusCode::REQUEST_TIMEOUT,
        "modelstreamerrorexception" | "modelerrorexception" | "internalserverexception" => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ if status == StatusCode::FAILED_DEPENDENCY => StatusCode::BAD_GATEWAY,
        _ if status.is_success() => StatusCode::BAD_GATEWAY,
        _ => status,
    };
    let mut e = crate::openai_compat::OpenAiCompat.error(
        provider,
        status,
        json!({"message": message}).to_string().as_bytes(),
    );
    if !kind.is_empty() {
        let mut code = String::with_capacity(kind.len() + 4);
        for (i, c) in kind.trim_end_matches("Exception").chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                code.push('_');
            }
            code.push(c.to_ascii_lowercase());
        }
        e.code = Some(code);
    }
    e
}

impl Protocol for Bedrock {
    fn name(&self) -> &'static str {
        "bedrock"
    }

    /// One choice a request: several are asked one at a time.
    fn answers_n(&self, _model: &str) -> bool {
        false
    }

    fn stream_parser(&self) -> crate::sse::Parser {
        crate::sse::Parser::event_stream()
    }

    /// Claude's Messages requests go through `invoke` and
    /// `invoke-with-response-stream` as they are (the model in the URL;
    /// `anthropic_version` and the beta features in the body).
    fn carries_messages(&self, model: &str, _count: bool) -> bool {
        is_claude(model)
    }

    /// Cohere's rerank models through `invoke`: Cohere's body without the
    /// model, at `api_version` 2. Bedrock's other rerankers take the agent
    /// runtime's Rerank API, which polyplex does not speak.
    fn rerank_request(
        &self,
        call: &crate::rerank::RerankCall<'_>,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        if !target.model.contains("cohere.rerank") {
            let mut e = crate::rerank::not_offered(target, "bedrock");
            e.message = format!(
                "Provider `{}` (bedrock protocol) reranks with Cohere's models only (`cohere.rerank-v3-5:0`) through polyplex; `{}` is not one.",
                target.provider, target.model
            );
            return Err(e);
        }
        let mut body = call.members("top_n");
        body.insert("api_version".into(), Value::from(2));
        let bytes = serde_json::to_vec(&body).map_err(|e| GatewayError::internal(e.to_string()))?;
        request(target, "invoke", bytes, Vec::new(), false)
    }

    /// Bedrock's answer says no search units: one per query with up to
    /// 100 documents, as Cohere bills them.
    fn rerank_answer(
        &self,
        provider: &str,
        _model: &str,
        body: &[u8],
        documents: usize,
    ) -> Result<crate::rerank::Ranked, GatewayError> {
        let mut r = crate::rerank::ranked(provider, body, documents)?;
        r.search_units = r.search_units.or(Some(documents.div_ceil(100) as u64));
        Ok(r)
    }

    /// Cohere's rerank models on Bedrock: $2.00 per 1,000 queries.
    fn search_unit_price(&self, model: &str) -> f64 {
        if model.contains("cohere.rerank") {
            0.002
        } else {
            0.0
        }
    }

    fn messages_request(
        &self,
        native: &crate::anthropic::Native,
        call: crate::MessagesCall,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        let crate::MessagesCall::Create { stream } = call else {
            return count_request(native, target);
        };
        let body = native.body_with_betas(ANTHROPIC_VERSION, false)?;
        let method = if stream {
            "invoke-with-response-stream"
        } else {
            "invoke"
        };
        request(target, method, body.to_vec(), Vec::new(), stream)
    }

    /// CountTokens answers `{"inputTokens": n}`.
    fn messages_count_answer(&self, provider: &str, body: Bytes) -> Result<Bytes, GatewayError> {
        let v: Value = serde_json::from_slice(&body).map_err(|_| {
            GatewayError::upstream_bad_response(provider, "its token count is not JSON")
        })?;
        let n = v["inputTokens"].as_u64().ok_or_else(|| {
            GatewayError::upstream_bad_response(provider, "its token count has no inputTokens")
        })?;
        Ok(Bytes::from(json!({ "input_tokens": n }).to_string()))
    }

    /// A `chunk`'s `bytes` (base64) are one of Anthropic's events; an
    /// exception is the error it names.
    fn messages_event(
        &self,
        provider: &str,
        event: crate::sse::Event,
    ) -> Result<crate::sse::Event, GatewayError> {
        use base64::Engine;
        let kind = event.event.as_deref().unwrap_or("");
        if let Some(exception) = kind.strip_prefix("exception:") {
            return Err(stream_exception(provider, exception, &event.data));
        }
        let bad = |what: &str| {
            GatewayError::upstream_bad_response(
                provider,
                format_args!("unexpected stream event: {what}"),
            )
        };
        if kind != "chunk" {
            return Err(bad(kind));
        }
        let v: Value =
            serde_json::from_str(&event.data).map_err(|_| bad("a chunk that is not JSON"))?;
        let bytes = v
            .get("bytes")
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .ok_or_else(|| bad("a chunk without base64 bytes"))?;
        let data = String::from_utf8(bytes).map_err(|_| bad("a chunk that is not UTF-8"))?;
        let name = serde_json::from_str::<Value>(&data)
            .ok()
            .and_then(|e| e.get("type").and_then(Value::as_str).map(str::to_string));
        Ok(crate::sse::Event { event: name, data })
    }

    fn embedding_inputs_per_request(&self, model: &str) -> Option<usize> {
        (embed_family(model) == Some("titan")).then_some(1)
    }

    fn build(
        &self,
        endpoint: Endpoint,
        body: &JsonMap,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        match endpoint {
            Endpoint::Chat => build_chat(body, stream, target),
            Endpoint::Embeddings => build_embed(body, target),
            other => Err(unsupported_endpoint(target, "Bedrock", other)),
        }
    }

    fn parse(
        &self,
        endpoint: Endpoint,
        provider: &str,
        request: &JsonMap,
        body: &[u8],
    ) -> Result<(JsonMap, Option<Usage>), GatewayError> {
        match endpoint {
            Endpoint::Embeddings => parse_embed(provider, request, body),
            _ => parse_chat(provider, body, json_mode(request)),
        }
    }

    fn error(&self, provider: &str, status: StatusCode, body: &[u8]) -> GatewayError {
        // The type is also in the body's `__type` on some paths.
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let kind = v
            .get("__type")
            .and_then(Value::as_str)
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
            .unwrap_or_default();
        error_for(provider, status, &kind, body)
    }

    fn error_with_headers(
        &self,
        provider: &str,
        status: StatusCode,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> GatewayError {
        match headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
        {
            Some(kind) => error_for(provider, status, kind, body),
            None => self.error(provider, status, body),
        }
    }

    fn stream_decoder(
        &self,
        _endpoint: Endpoint,
        provider: &str,
        model: &str,
        request: &RequestBody,
    ) -> Box<dyn StreamDecoder> {
        Box::new(Decoder::new(provider, model, json_mode(request.map())))
    }
}
