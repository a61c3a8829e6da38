//! OpenAI chat request → Anthropic Messages request.

use super::{FALLBACK_MAX_TOKENS, JSON_TOOL, VERSION};
use crate::translate::{
    asks, assistant_calls, cache_control, check_fields, data_url, file_data, fit_thinking,
    for_translation, name_dropped_hints, no_turns, reasoning_effort, sent_thinking, text_of,
    thinking_budget, tool_turn_without_thinking, Hints, SEARCH_CHAT_PARAMS,
};
use crate::{join_url, unsupported, Target, UpstreamRequest};
use base64::Engine as _;
use bytes::Bytes;
use http::HeaderValue;
use polyplex_types::{lookup, member, GatewayError, JsonMap, RequestBody};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{json, Number, Value};
use std::borrow::Cow;

// The request is written through typed, borrowing structs rather than a
// `json!` tree: no key is hashed into a map and no string copied before it
// is encoded. Members appear in the order Anthropic documents them.

#[derive(Serialize)]
struct MessagesRequest<'a> {
    /// Vertex AI names the model in the URL and the API version here.
    #[serde(skip_serializing_if = "Option::is_none")]
    anthropic_version: Option<&'static str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<System<'a>>,
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Stop<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_tier: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Stop<'a> {
    One([&'a str; 1]),
    Many(&'a [Value]),
}

#[derive(Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

/// One message; consecutive ones of the same role are merged (Anthropic
/// requires the roles to alternate).
#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a Value>,
    },
    Image {
        source: Source<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a Value>,
    },
    Document {
        source: Source<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        title: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a Value>,
    },
    ToolUse {
        id: &'a Value,
        name: &'a Value,
        input: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a Value>,
    },
    ToolResult {
        tool_use_id: &'a Value,
        content: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a Value>,
    },
    /// Extended thinking sent back as the answer gave it (`thinking_blocks`).
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
}

impl<'a> Block<'a> {
    fn text(text: &'a str) -> Self {
        Block::Text {
            text,
            cache_control: None,
        }
    }

    /// Marks the end of a cached prefix here (the client's `cache_control`).
    fn cache(&mut self, cc: Option<&'a Value>) {
        if cc.is_none() {
            return;
        }
        match self {
            Block::Text { cache_control, .. }
            | Block::Image { cache_control, .. }
            | Block::Document { cache_control, .. }
            | Block::ToolUse { cache_control, .. }
            | Block::ToolResult { cache_control, .. } => *cache_control = cc,
            // (Anthropic takes no breakpoint on thinking.)
            Block::Thinking { .. } | Block::RedactedThinking { .. } => {}
        }
    }
}

/// The system prompt: one text, or text blocks when a client marked a
/// cache breakpoint in it.
#[derive(Serialize)]
#[serde(untagged)]
enum System<'a> {
    Text(String),
    Blocks(Vec<Block<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source<'a> {
    Base64 {
        media_type: &'a str,
        data: &'a str,
    },
    Url {
        url: &'a str,
    },
    /// A plain-text document, decoded from the client's base64.
    Text {
        media_type: &'static str,
        data: String,
    },
}

static NULL: Value = Value::Null;

fn push_turn<'a>(turns: &mut Vec<Turn<'a>>, role: &'static str, blocks: Vec<Block<'a>>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => turns.push(Turn {
            role,
            content: blocks,
        }),
    }
}

/// An OpenAI `image_url` part as an Anthropic image source.
fn image_block<'a>(
    url: &'a str,
    param: impl FnOnce() -> String,
) -> Result<Block<'a>, GatewayError> {
    // (The parameter's name is formatted only for a data URL, which may be
    // malformed.)
    let parsed = if url.starts_with("data:") {
        data_url(url, &param())
    } else {
        None
    };
    let source = match parsed {
        Some(parsed) => {
            let (media_type, data) = parsed?;
            Source::Base64 { media_type, data }
        }
        None => Source::Url { url },
    };
    Ok(Block::Image {
        source,
        cache_control: None,
    })
}

/// An OpenAI `file` part (`param` its path) as an Anthropic block: a PDF
/// or plain-text document (its file name as the title), or an image.
fn file_block<'a>(part: &'a Value, param: &str) -> Result<Block<'a>, GatewayError> {
    let file = file_data(part, param, "Anthropic")?;
    let title = file.filename;
    let source = match file.media_type {
        "application/pdf" => Source::Base64 {
            media_type: file.media_type,
            data: file.data,
        },
        "text/plain" => {
            let text = base64::engine::general_purpose::STANDARD
                .decode(file.data)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    GatewayError::invalid_param(
                        format!("{param}.file.file_data"),
                        "Invalid file_data: a text/plain file must be base64 of UTF-8 text.",
                    )
                })?;
            Source::Text {
                media_type: "text/plain",
                data: text,
            }
        }
        m if m.starts_with("image/") => {
            return Ok(Block::Image {
                source: Source::Base64 {
                    media_type: m,
                    data: file.data,
                },
                cache_control: None,
            })
        }
        other => {
            return Err(GatewayError::invalid_param(
                format!("{param}.file.file_data"),
                format!("Files of type '{other}' are not supported by the Anthropic protocol (PDF, plain text and images are)."),
            ))
        }
    };
    Ok(Block::Document {
        source,
        title,
        cache_control: None,
    })
}

fn str_of<'a>(part: &'a Value, key: &str) -> &'a str {
    part.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The blocks of message `i`'s `content`, each part's `cache_control` kept.
fn content_blocks(content: &Value, i: usize) -> Result<Vec<Block<'_>>, GatewayError> {
    match content {
        Value::String(s) if s.is_empty() => Ok(vec![]),
        Value::String(s) => Ok(vec![Block::text(s)]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let at = out.len();
                match member(p, "type").and_then(Value::as_str) {
                    // (Anthropic refuses an empty text block; OpenAI takes it.)
                    Some("text") if str_of(p, "text").is_empty() => {}
                    Some("text") => out.push(Block::text(str_of(p, "text"))),
                    Some("image_url") => {
                        let url = p.pointer("/image_url/url").and_then(Value::as_str).unwrap_or("");
                        out.push(image_block(url, || format!("messages[{i}].content[{j}].image_url.url"))?);
                    }
                    Some("file") => out.push(file_block(p, &format!("messages[{i}].content[{j}]"))?),
                    Some("refusal") => out.push(Block::text(str_of(p, "refusal"))),
                    Some(other) => {
                        return Err(GatewayError::invalid_param(format!("messages[{i}].content[{j}].type"), format!("Content parts of type '{other}' are not supported by the Anthropic protocol.")))
                    }
                    None => {}
                }
                if let Some(b) = out.get_mut(at) {
                    b.cache(cache_control(p));
                }
            }
            Ok(out)
        }
        _ => Ok(vec![]),
    }
}

/// The system prompt of the request's system and developer messages: their
/// texts joined, or — when any of them marks a cache breakpoint — one text
/// block per message (per text part where a part marks one), each marked
/// as the client marked it. `None` when there is no text.
fn system_prompt<'a>(msgs: &[&'a Value]) -> Option<System<'a>> {
    let cached = msgs.iter().any(|m| {
        cache_control(m).is_some()
            || member(m, "content")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| cache_control(p).is_some()))
    });
    if !cached {
        let texts: Vec<String> = msgs
            .iter()
            .map(|m| text_of(member(m, "content").unwrap_or(&NULL)))
            .filter(|t| !t.is_empty())
            .collect();
        return (!texts.is_empty()).then(|| System::Text(texts.join("\n\n")));
    }
    let mut blocks = Vec::new();
    for m in msgs {
        match member(m, "content") {
            Some(Value::String(s)) if !s.is_empty() => blocks.push(Block::text(s)),
            Some(Value::Array(parts)) => {
                for p in parts {
                    let text = str_of(p, "text");
                    if !text.is_empty() {
                        let mut b = Block::text(text);
                        b.cache(cache_control(p));
                        blocks.push(b);
                    }
                }
            }
            _ => continue,
        }
        if let Some(last) = blocks.last_mut() {
            last.cache(cache_control(m));
        }
    }
    (!blocks.is_empty()).then_some(System::Blocks(blocks))
}

/// An assistant message's `thinking_blocks` (what polyplex's answers carry
/// from Anthropic's extended thinking) as Anthropic's blocks, verbatim:
/// their signatures must come back untouched.
fn thinking_blocks(m: &Value) -> Vec<Block<'_>> {
    sent_thinking(m)
        .map(|b| match member(b, "type").and_then(Value::as_str) {
            Some("thinking") => Block::Thinking {
                thinking: str_of(b, "thinking"),
                signature: str_of(b, "signature"),
            },
            _ => Block::RedactedThinking {
                data: str_of(b, "data"),
            },
        })
        .collect()
}

/// The conversation's turns and its system and developer messages. An
/// assistant turn's `thinking_blocks` go out only with `thinking` on:
/// Anthropic refuses thinking in the final assistant turn of a request
/// without it.
fn messages(body: &JsonMap, thinking: bool) -> Result<(Vec<Turn<'_>>, Vec<&Value>), GatewayError> {
    let mut system = Vec::new();
    let msgs = lookup(body, "messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut turns: Vec<Turn<'_>> = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let content = member(m, "content").unwrap_or(&NULL);
        match member(m, "role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => system.push(m),
            "user" => {
                let mut blocks = content_blocks(content, i)?;
                if let Some(last) = blocks.last_mut() {
                    last.cache(cache_control(m));
                }
                push_turn(&mut turns, "user", blocks);
            }
            "assistant" => {
                // The turn's thinking first, as Anthropic requires.
                let mut blocks = if thinking {
                    thinking_blocks(m)
                } else {
                    Vec::new()
                };
                blocks.extend(content_blocks(content, i)?);
                for c in assistant_calls(m, i)? {
                    blocks.push(Block::ToolUse {
                        id: c.id,
                        name: c.name,
                        input: c.input,
                        cache_control: None,
                    });
                }
                if let Some(last) = blocks.last_mut() {
                    last.cache(cache_control(m));
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" | "function" => {
                let id = member(m, "tool_call_id")
                    .or_else(|| member(m, "name"))
                    .unwrap_or(&NULL);
                push_turn(
                    &mut turns,
                    "user",
                    vec![Block::ToolResult {
                        tool_use_id: id,
                        content: text_of(content),
                        cache_control: cache_control(m),
                    }],
                );
            }
            _ => {}
        }
    }
    Ok((turns, system))
}

fn tool_choice(v: &Value, parallel: Option<bool>) -> Value {
    let mut c = match v {
        Value::String(s) if s == "none" => json!({"type": "none"}),
        Value::String(s) if s == "required" => json!({"type": "any"}),
        Value::Object(o) => {
            json!({"type": "tool", "name": o.get("function").and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null)})
        }
        _ => json!({"type": "auto"}),
    };
    if parallel == Some(false) && c["type"] != "none" {
        c["disable_parallel_tool_use"] = json!(true);
    }
    c
}

/// The upstream request for a Messages body (and the parameters dropped
/// from it).
pub(crate) fn upstream(
    (body, dropped): (Vec<u8>, Vec<String>),
    stream: bool,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    let mut headers = crate::headers(target, stream)?;
    headers
        .entry("anthropic-version")
        .or_insert(HeaderValue::from_static(VERSION));
    Ok(UpstreamRequest {
        url: join_url(target.base_url, "v1/messages"),
        headers,
        body: Bytes::from(body),
        dropped,
    })
}

/// [`messages_body`] for a client's body: read straight from its text
/// when it took the quick validation (text messages, scalar parameters),
/// else from its tree.
pub(crate) fn messages_body_of(
    body: &RequestBody,
    stream: bool,
    target: &Target<'_>,
    vertex_version: Option<&'static str>,
) -> Result<(Vec<u8>, Vec<String>), GatewayError> {
    if body.shape().is_some() {
        // (UTF-8 checked once for the whole text, not string by string.)
        let quick = std::str::from_utf8(body.text())
            .ok()
            .and_then(|text| serde_json::from_str::<QuickChat<'_>>(text).ok());
        if let Some(quick) = quick {
            return quick.messages_body(stream, target, vertex_version);
        }
    }
    messages_body(body.map(), stream, target, vertex_version)
}

/// [`json_mode`] for a client's body; a quick-validated body has no
/// `response_format`, so its tree is not built to ask.
pub fn json_mode_of(body: &RequestBody) -> bool {
    body.shape().is_none() && json_mode(body.map())
}

/// True if the request turns web search on (`web_search_options`).
pub fn searching_of(body: &RequestBody) -> bool {
    body.shape().is_none() && lookup(body.map(), "web_search_options").is_some_and(|v| !v.is_null())
}

/// A body of the quick validation's shape ([`polyplex_types::validate::chat_quick`]),
/// read in one pass into fields that borrow its text. Any other member or
/// shape fails the read, and the tree is read instead.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuickChat<'a> {
    #[serde(borrow)]
    messages: Vec<QuickMessage<'a>>,
    n: Option<u64>,
    seed: Option<IgnoredAny>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logprobs: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<Number>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    // Read elsewhere (the model is the target's, `stream` the caller's) or
    // without an Anthropic equivalent that needs refusing.
    #[serde(rename = "model")]
    _model: IgnoredAny,
    #[serde(rename = "stream")]
    _stream: Option<IgnoredAny>,
    #[serde(rename = "stream_options")]
    _stream_options: Option<IgnoredAny>,
    #[serde(rename = "parallel_tool_calls")]
    _parallel_tool_calls: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuickMessage<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    content: Cow<'a, str>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
}

impl QuickChat<'_> {
    /// What [`messages_body`] writes for the same body.
    fn messages_body(
        &self,
        stream: bool,
        target: &Target<'_>,
        vertex_version: Option<&'static str>,
    ) -> Result<(Vec<u8>, Vec<String>), GatewayError> {
        let mut dropped = Vec::new();
        // UNANSWERABLE's order; this shape has no logit_bias nor top_logprobs.
        refuse_unanswerable(
            [
                self.n.is_some_and(|n| n != 1),
                self.seed.is_some(),
                self.presence_penalty.is_some_and(|p| p != 0.0),
                self.frequency_penalty.is_some_and(|p| p != 0.0),
                false,
                false,
                self.logprobs == Some(true),
            ],
            target,
            &mut dropped,
        )?;
        // As `name_dropped_hints` names it for a tree.
        if self
            .messages
            .iter()
            .any(|m| m.name.as_deref().is_some_and(|n| !n.is_empty()))
        {
            dropped.push("messages[].name".into());
        }
        let mut system: Vec<&str> = Vec::new();
        let mut turns: Vec<Turn<'_>> = Vec::with_capacity(self.messages.len());
        for m in &self.messages {
            let text = m.content.as_ref();
            match m.role.as_ref() {
                "system" | "developer" => system.push(text),
                "user" if !text.is_empty() => {
                    push_turn(&mut turns, "user", vec![Block::text(text)])
                }
                "assistant" if !text.is_empty() => {
                    push_turn(&mut turns, "assistant", vec![Block::text(text)])
                }
                _ => {}
            }
        }
        system.retain(|s| !s.is_empty());
        let limit = self.max_completion_tokens.or(self.max_tokens);
        let mut request = MessagesRequest::new(
            vertex_version,
            target,
            max_tokens_for(limit, target),
            (!system.is_empty()).then(|| System::Text(system.join("\n\n"))),
            turns,
            stream,
        );
        request.temperature = temperature_for(self.temperature, false, target, &mut dropped)?;
        request.top_p = self.top_p.as_ref();
        request.metadata = self.user.as_deref().map(|user_id| Metadata { user_id });
        request.encode(dropped)
    }
}

/// The OpenAI parameters Anthropic has no equivalent for, in the order
/// they are refused.
const UNANSWERABLE: [&str; 7] = [
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "top_logprobs",
    "logprobs",
];

/// Refuses (or drops, under `drop_params`) each of [`UNANSWERABLE`] that
/// `asked` marks (what [`asks`] says of the body).
fn refuse_unanswerable(
    asked: [bool; 7],
    target: &Target<'_>,
    dropped: &mut Vec<String>,
) -> Result<(), GatewayError> {
    for (k, asked) in UNANSWERABLE.into_iter().zip(asked) {
        if asked {
            unsupported(k, "Anthropic", target, dropped)?;
        }
    }
    Ok(())
}

/// Anthropic's required `max_tokens`: the client's limit, else the
/// catalog's output limit, else [`FALLBACK_MAX_TOKENS`].
fn max_tokens_for(limit: Option<u64>, target: &Target<'_>) -> u64 {
    limit
        .or(target.default_max_tokens)
        .unwrap_or(FALLBACK_MAX_TOKENS)
}

/// The temperature to send: Anthropic accepts 0 to 1, and only 1 with
/// extended thinking; another is refused (or dropped under `drop_params`).
fn temperature_for(
    t: Option<f64>,
    thinking: bool,
    target: &Target<'_>,
    dropped: &mut Vec<String>,
) -> Result<Option<f64>, GatewayError> {
    let Some(t) = t else {
        return Ok(None);
    };
    if t > 1.0 {
        if target.drop_params {
            dropped.push("temperature".into());
            return Ok(None);
        }
        return Err(GatewayError::invalid_param("temperature", format!("Invalid 'temperature': provider `{}` (Anthropic protocol) accepts 0 to 1, but got {t}.", target.provider)));
    }
    if thinking && t != 1.0 {
        if target.drop_params {
            dropped.push("temperature".into());
            return Ok(None);
        }
        return Err(GatewayError::invalid_param(
            "temperature",
            "With reasoning_effort (extended thinking), the Anthropic protocol accepts only temperature 1.",
        ));
    }
    Ok(Some(t))
}

impl<'a> MessagesRequest<'a> {
    /// A request with the members every request has; the optional ones unset.
    fn new(
        vertex_version: Option<&'static str>,
        target: &Target<'a>,
        max_tokens: u64,
        system: Option<System<'a>>,
        messages: Vec<Turn<'a>>,
        stream: bool,
    ) -> Self {
        MessagesRequest {
            anthropic_version: vertex_version,
            // Vertex AI names the model in the URL.
            model: if vertex_version.is_some() {
                ""
            } else {
                target.model
            },
            max_tokens,
            system,
            messages,
            temperature: None,
            top_p: None,
            top_k: None,
            stop_sequences: None,
            stream,
            metadata: None,
            tools: Vec::new(),
            tool_choice: None,
            thinking: None,
            service_tier: None,
        }
    }

    /// The JSON body, with the parameters dropped on the way.
    fn encode(&self, dropped: Vec<String>) -> Result<(Vec<u8>, Vec<String>), GatewayError> {
        if self.messages.is_empty() {
            return Err(no_turns("Anthropic"));
        }
        let body = serde_json::to_vec(self).map_err(|e| {
            GatewayError::internal(format!("could not encode the upstream request: {e}"))
        })?;
        Ok((body, dropped))
    }
}

/// The Messages body for an OpenAI chat request, and the parameters dropped.
/// With `vertex_version` (Vertex AI), the model is left out (it is in the
/// URL) and `anthropic_version` carries that version.
pub(crate) fn messages_body(
    body: &JsonMap,
    stream: bool,
    target: &Target<'_>,
    vertex_version: Option<&'static str>,
) -> Result<(Vec<u8>, Vec<String>), GatewayError> {
    let body = &*for_translation(body, "Anthropic")?;
    let mut dropped = Vec::new();
    check_fields(
        body,
        &SEARCH_CHAT_PARAMS,
        true,
        "Anthropic",
        target,
        &mut dropped,
    )?;
    refuse_unanswerable(UNANSWERABLE.map(|k| asks(body, k)), target, &mut dropped)?;
    name_dropped_hints(body, Hints::CACHE_CONTROL, &mut dropped);

    let mut effort = reasoning_effort(body)?;
    if effort.and_then(thinking_budget).is_some() && tool_turn_without_thinking(body) {
        dropped.push("reasoning_effort".into());
        effort = None;
    }
    let (turns, system) = messages(body, effort.and_then(thinking_budget).is_some())?;
    let limit = lookup(body, "max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| lookup(body, "max_tokens").and_then(Value::as_u64));
    let mut max_tokens = max_tokens_for(limit, target);
    // reasoning_effort → extended thinking. OpenAI's token limit counts the
    // reasoning too, as Anthropic's max_tokens counts the thinking: a limit
    // the client set stays the limit, and the budget fits under it.
    let mut thinking = None;
    if let Some(budget) = effort.and_then(thinking_budget) {
        let (budget, room) = fit_thinking(budget, limit, max_tokens, json_mode(body), "Anthropic")?;
        max_tokens = room;
        thinking = Some(json!({"type": "enabled", "budget_tokens": budget}));
    }
    let temperature = temperature_for(
        lookup(body, "temperature").and_then(Value::as_f64),
        thinking.is_some(),
        target,
        &mut dropped,
    )?;
    let given = |k: &str| body.get(k).filter(|v| !v.is_null());
    let stop_sequences = match lookup(body, "stop") {
        Some(Value::String(s)) => Some(Stop::One([s.as_str()])),
        Some(Value::Array(a)) if !a.is_empty() => Some(Stop::Many(a)),
        _ => None,
    };
    let parallel = lookup(body, "parallel_tool_calls").and_then(Value::as_bool);
    let mut tools: Vec<Value> = lookup(body, "tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            let f = t.get("function").cloned().unwrap_or(Value::Null);
            let mut tool = json!({"name": f.get("name").cloned().unwrap_or(Value::Null),
                "input_schema": f.get("parameters").filter(|p| !p.is_null()).cloned().unwrap_or(json!({"type": "object", "properties": {}}))});
            if let Some(d) = f.get("description").filter(|d| !d.is_null()) {
                tool["description"] = d.clone();
            }
            if let Some(cc) = cache_control(t) {
                tool["cache_control"] = cc.clone();
            }
            tool
        })
        .collect();
    let mut choice = lookup(body, "tool_choice")
        .filter(|c| !c.is_null())
        .map(|c| tool_choice(c, parallel));
    if choice.is_none() && parallel == Some(false) && !tools.is_empty() {
        choice = Some(tool_choice(&json!("auto"), parallel));
    }
    // response_format: a forced tool whose input is the JSON the client wants.
    if json_mode(body) {
        // json_schema's schema, or any object for json_object.
        let schema = lookup(body, "response_format")
            .and_then(|r| r.pointer("/json_schema/schema"))
            .cloned()
            .unwrap_or(json!({"type": "object"}));
        if !tools.is_empty() {
            return Err(GatewayError::invalid_param(
                "response_format",
                "With the Anthropic protocol, response_format cannot be combined with tools.",
            ));
        }
        tools.push(json!({"name": JSON_TOOL, "description": "Respond with the requested JSON object.", "input_schema": schema}));
        choice = Some(json!({"type": "tool", "name": JSON_TOOL}));
    }
    if let Some(options) = lookup(body, "web_search_options").filter(|v| !v.is_null()) {
        if json_mode(body) {
            // The forced JSON tool would leave no turn to search in.
            return Err(GatewayError::invalid_param(
                "web_search_options",
                "With the Anthropic protocol, web_search_options cannot be combined with response_format.",
            ));
        }
        tools.push(web_search_tool(options));
    }
    let mut request = MessagesRequest::new(
        vertex_version,
        target,
        max_tokens,
        system_prompt(&system),
        turns,
        stream,
    );
    request.temperature = temperature;
    request.top_p = given("top_p").and_then(Value::as_number);
    request.top_k = given("top_k");
    request.stop_sequences = stop_sequences;
    // Who the end user is: OpenAI's `safety_identifier`, or the older `user`.
    request.metadata = lookup(body, "safety_identifier")
        .or_else(|| lookup(body, "user"))
        .and_then(Value::as_str)
        .map(|user_id| Metadata { user_id });
    request.tools = tools;
    request.tool_choice = choice;
    request.thinking = thinking;
    // OpenAI's `service_tier`: "auto" is Anthropic's own default (priority
    // capacity where the organisation has it), "default" (the standard tier
    // only) is Anthropic's "standard_only"; any other tier was refused by
    // `check_fields`. Vertex AI's Claude has no tiers.
    if vertex_version.is_none()
        && lookup(body, "service_tier").and_then(Value::as_str) == Some("default")
    {
        request.service_tier = Some("standard_only");
    }
    request.encode(dropped)
}

/// Anthropic's web search tool for OpenAI's `web_search_options`: how much
/// to search (`search_context_size` low / medium / high → at most 1 / 5 /
/// 10 searches) and where the user is (OpenAI's approximate location is
/// Anthropic's, one level up).
pub(crate) fn web_search_tool(options: &Value) -> Value {
    let max_uses = match options.get("search_context_size").and_then(Value::as_str) {
        Some("low") => 1,
        Some("high") => 10,
        _ => 5,
    };
    let mut tool =
        json!({"type": "web_search_20250305", "name": "web_search", "max_uses": max_uses});
    if let Some(Value::Object(at)) = options.pointer("/user_location/approximate") {
        let mut location = serde_json::Map::new();
        location.insert("type".into(), json!("approximate"));
        for (k, v) in at.iter().filter(|(_, v)| v.is_string()) {
            location.insert(k.clone(), v.clone());
        }
        tool["user_location"] = Value::Object(location);
    }
    tool
}

/// True if the request asked for JSON through `response_format` (served by the forced tool).
pub fn json_mode(body: &JsonMap) -> bool {
    matches!(
        lookup(body, "response_format")
            .and_then(|r| r.get("type"))
            .and_then(Value::as_str),
        Some("json_object" | "json_schema")
    )
}
