//! Anthropic message → OpenAI chat.completion.

use super::{finish_reason, usage_from, Counts, JSON_TOOL};
use crate::reply::RawWriter;
use crate::translate::completion;
use crate::Reply;
use polyplex_types::{GatewayError, JsonMap, Usage, UsageJson};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;

pub(crate) fn parse(
    provider: &str,
    body: &[u8],
    json_mode: bool,
) -> Result<(JsonMap, Option<Usage>), GatewayError> {
    let v = crate::translate::reply_json(provider, body)?;
    if v.get("type").and_then(Value::as_str) == Some("error") {
        let err = v.get("error").unwrap_or(&Value::Null);
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("upstream error")
            .to_string();
        return Err(super::error_for(
            http::StatusCode::BAD_GATEWAY,
            err.get("type").and_then(Value::as_str).unwrap_or(""),
            msg,
        ));
    }
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| GatewayError::upstream_bad_response(provider, "no `content` array"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut reasoning = String::new();
    let mut thinking_blocks = Vec::new();
    let mut annotations = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = b.get("text").and_then(Value::as_str).unwrap_or("");
                // A cited block's characters in the content (counted only then).
                if let Some(citations) = b.get("citations").filter(|c| !c.is_null()) {
                    let start = text.chars().count();
                    let end = start + t.chars().count();
                    cite(citations, start, end, &mut annotations);
                }
                text.push_str(t);
            }
            // Extended thinking: its text as `reasoning_content`, the blocks
            // themselves (signatures, redacted data) as `thinking_blocks`,
            // which a client sends back on its assistant turn.
            Some("thinking") => {
                reasoning.push_str(b.get("thinking").and_then(Value::as_str).unwrap_or(""));
                thinking_blocks.push(b.clone());
            }
            Some("redacted_thinking") => thinking_blocks.push(b.clone()),
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or(json!({}));
                let name = b.get("name").and_then(Value::as_str).unwrap_or("");
                if json_mode && name == JSON_TOOL {
                    text.push_str(&input.to_string());
                } else {
                    tool_calls.push(json!({"id": b.get("id").cloned().unwrap_or(Value::Null), "type": "function",
                        "function": {"name": name, "arguments": input.to_string()}}));
                }
            }
            _ => {}
        }
    }
    let stop = v
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) }, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    if !annotations.is_empty() {
        message["annotations"] = Value::Array(annotations);
    }
    if !thinking_blocks.is_empty() {
        message["reasoning_content"] = json!(reasoning);
        message["thinking_blocks"] = Value::Array(thinking_blocks);
    }
    // (`null` is no usage: the gateway counts it, as on the fast path.)
    let usage = v.get("usage").filter(|u| !u.is_null()).map(usage_from);
    let out = completion(
        v.get("id").cloned().unwrap_or(json!("msg_unknown")),
        v.get("model").cloned().unwrap_or(Value::Null),
        json!([{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(stop, json_mode)}]),
        usage.as_ref(),
    );
    Ok((out, usage))
}

/// The web search results a text block cites (`citations` of type
/// `web_search_result_location`), as OpenAI's `url_citation` annotations
/// over the block's characters `start..end` of the message content (one per
/// page cited; the searches themselves, `server_tool_use` and
/// `web_search_tool_result` blocks, have no place in OpenAI's shape).
pub(super) fn cite(citations: &Value, start: usize, end: usize, out: &mut Vec<Value>) {
    let mut urls: Vec<&str> = Vec::new();
    for c in citations.as_array().into_iter().flatten() {
        if c.get("type").and_then(Value::as_str) != Some("web_search_result_location") {
            continue;
        }
        let Some(url) = c.get("url").and_then(Value::as_str) else {
            continue;
        };
        if urls.contains(&url) {
            continue;
        }
        urls.push(url);
        out.push(crate::translate::url_citation(
            start,
            end,
            url,
            c.get("title"),
        ));
    }
}

/// A message as Anthropic sends it, borrowed from the body. Only the common
/// shape: anything else fails to deserialize and [`parse`] decides.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Vec<Block<'a>>,
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Counts>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    /// Present on a text block that cites sources: [`parse`] writes them.
    #[serde(default)]
    citations: Option<serde::de::IgnoredAny>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Assistant<'a>,
    logprobs: (),
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Assistant<'a> {
    role: &'static str,
    content: &'a str,
    refusal: (),
}

/// [`parse`] for the gateway's unary path: the same answer, read into typed
/// borrowed fields and written as bytes (kept as a `RawReply`, so only
/// `usage` is touched afterwards). `None` for what it does not cover —
/// errors, tool calls, unusual shapes — which [`parse`] then handles.
pub(crate) fn parse_fast(body: &[u8], json_mode: bool) -> Option<(Reply, Option<Usage>)> {
    // UTF-8 checked once for the whole text, not string by string as a
    // reader of bytes does (a text that is not UTF-8 goes to `parse`).
    let m: Message<'_> = serde_json::from_str(std::str::from_utf8(body).ok()?).ok()?;
    if m.kind.as_deref() == Some("error") {
        return None;
    }
    let mut text = String::new();
    for b in &m.content {
        if b.citations.is_some() {
            return None;
        }
        match b.kind.as_deref() {
            Some("text") => text.push_str(b.text.as_deref().unwrap_or("")),
            Some("tool_use" | "thinking" | "redacted_thinking") => return None,
            _ => {}
        }
    }
    let usage = m.usage.as_ref().map(Counts::usage);
    let stop = m.stop_reason.as_deref().unwrap_or("end_turn");
    let choices = [Choice {
        index: 0,
        message: Assistant {
            role: "assistant",
            content: &text,
            refusal: (),
        },
        logprobs: (),
        finish_reason: finish_reason(stop, json_mode),
    }];
    // The members and order `translate::completion` gives.
    let mut w = RawWriter::default();
    match m.id {
        Some(id) => w.member("id", id).ok()?,
        None => w.member("id", "msg_unknown").ok()?,
    }
    w.member("object", "chat.completion").ok()?;
    w.member("created", &crate::translate::now()).ok()?;
    match m.model {
        Some(model) => w.member("model", model).ok()?,
        None => w.member("model", &()).ok()?,
    }
    w.member("choices", &choices).ok()?;
    if let Some(u) = &usage {
        w.member("usage", &UsageJson(u)).ok()?;
    }
    Some((Reply::Raw(w.finish()), usage))
}
