//! Anthropic stream events → OpenAI chat.completion.chunk objects.
//!
//! Stateful: the message id and model come from `message_start` and are put
//! on every chunk; each `tool_use` block gets the next OpenAI tool-call index
//! (id and name in its first delta, argument fragments after); input tokens
//! from `message_start` and output tokens from `message_delta` make the usage.
//! With web search on, the search's own blocks (`server_tool_use`, whose
//! input deltas are not a client's tool call, and `web_search_tool_result`)
//! pass unseen, and a text block's `citations_delta`s go out at the block's
//! end as one chunk of `url_citation` annotations over its characters.

use super::{finish_reason, usage_from, Counts, ServerToolUse, JSON_TOOL};
use crate::sse::Event;
use crate::translate::{Content, NoDelta, Reasoning, ROLE};
use crate::{StreamDecoder, StreamItem, StreamSummary};
use http::StatusCode;
use polyplex_types::{GatewayError, Usage};
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::HashMap;

/// A `content_block_delta` event, borrowed from its text.
#[derive(Deserialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    index: u64,
    #[serde(borrow)]
    delta: DeltaIn<'a>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    signature: Option<Cow<'a, str>>,
}

/// The member that holds a delta's text, by the delta's kind: a thinking or
/// signature delta's own, else `text`.
pub(super) fn text_member(kind: Option<&str>) -> &'static str {
    match kind {
        Some("thinking_delta") => "thinking",
        Some("signature_delta") => "signature",
        _ => "text",
    }
}

impl DeltaIn<'_> {
    /// The delta's text ([`text_member`]).
    fn text_for_kind(&self) -> Option<&str> {
        match text_member(self.kind.as_deref()) {
            "thinking" => self.thinking.as_deref(),
            "signature" => self.signature.as_deref(),
            _ => self.text.as_deref(),
        }
    }
}

/// A thinking block being streamed: its index, text and signature so far.
struct Thinking {
    index: u64,
    text: String,
    signature: String,
}

/// A `message_start` event, borrowed from its text.
#[derive(Deserialize)]
struct Start<'a> {
    #[serde(borrow)]
    message: StartMessage<'a>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Counts>,
}

/// A `content_block_start` event that opens a block other than a tool call.
#[derive(Deserialize)]
struct BlockStart<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow)]
    content_block: StartBlock<'a>,
}

#[derive(Deserialize)]
struct StartBlock<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

/// A `message_delta` event: the stop reason and the counts so far.
#[derive(Deserialize)]
struct MessageDelta<'a> {
    #[serde(default, borrow)]
    delta: Option<StopDelta<'a>>,
    #[serde(default)]
    usage: Option<DeltaUsage>,
}

#[derive(Deserialize)]
struct StopDelta<'a> {
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaUsage {
    #[serde(default)]
    output_tokens: Option<u64>,
    /// Present (even as `null`) when the event restates every count.
    #[serde(default, deserialize_with = "present")]
    input_tokens: Option<Option<u64>>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    server_tool_use: Option<ServerToolUse>,
}

/// A member that may be `null`: `Some(None)` then, `None` when absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

pub struct Decoder {
    provider: String,
    json_mode: bool,
    id: String,
    model: String,
    created: u64,
    /// Anthropic block index → OpenAI tool-call index (`None`: the JSON tool, sent as content).
    tools: HashMap<u64, Option<usize>>,
    next_tool: usize,
    usage: Usage,
    finish: Option<&'static str>,
    started: bool,
    done: bool,
    text: String,
    /// The thinking block open now, if any.
    thinking: Option<Thinking>,
    /// All thinking's text, once the model thought (redacted: empty).
    reasoning: Option<String>,
    /// Web search is on: characters of content are counted, for citations.
    searching: bool,
    /// Characters of content sent so far (counted only when searching).
    chars: usize,
    /// The text block open now and the character it starts at.
    text_block: Option<(u64, usize)>,
    /// The open text block's citations, as its `citations_delta`s gave them.
    cited: Vec<Value>,
    /// Blocks of the provider's own server tools (the web search's query).
    server_blocks: Vec<u64>,
}

impl Decoder {
    pub fn new(provider: &str, json_mode: bool) -> Self {
        Decoder {
            provider: provider.to_string(),
            json_mode,
            id: String::new(),
            model: String::new(),
            created: crate::translate::now(),
            tools: HashMap::new(),
            next_tool: 0,
            usage: Usage::default(),
            finish: None,
            started: false,
            done: false,
            text: String::new(),
            thinking: None,
            reasoning: None,
            searching: false,
            chars: 0,
            text_block: None,
            cited: Vec::new(),
            server_blocks: Vec::new(),
        }
    }

    /// A decoder for a request with web search on ([`Decoder`]'s citations).
    pub fn searching(mut self, on: bool) -> Self {
        self.searching = on;
        self
    }

    fn chunk<D: serde::Serialize + ?Sized>(&self, delta: &D, finish: Option<&str>) -> StreamItem {
        crate::translate::chunk(&self.id, self.created, &self.model, 0, delta, finish)
    }

    /// A `content_block_delta`: text, a tool call's argument fragment, or
    /// extended thinking (its text as `reasoning_content`; its signature
    /// kept for the block's end, [`Decoder::close_thinking`]).
    pub(super) fn on_delta(
        &mut self,
        idx: u64,
        kind: Option<&str>,
        text: Option<&str>,
        partial_json: Option<&str>,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        match kind {
            Some("text_delta") => {
                let t = text.unwrap_or("");
                self.text.push_str(t);
                if self.searching {
                    self.chars += t.chars().count();
                }
                out.push(self.chunk(&Content { content: t }, None));
            }
            // The web search's query: the provider's business, not a call.
            Some("input_json_delta") if self.server_blocks.contains(&idx) => {}
            Some("input_json_delta") => {
                let frag = partial_json.unwrap_or("");
                self.text.push_str(frag);
                match self.tools.get(&idx) {
                    Some(Some(i)) => {
                        out.push(self.chunk(&crate::translate::tool_arguments(*i, frag), None))
                    }
                    Some(None) => out.push(self.chunk(&Content { content: frag }, None)),
                    None => return Err(self.bad("input_json_delta for an unknown block")),
                }
            }
            Some("thinking_delta") => {
                let t = text.unwrap_or("");
                if let Some(th) = self.thinking.as_mut().filter(|th| th.index == idx) {
                    th.text.push_str(t);
                }
                self.reasoning.get_or_insert_default().push_str(t);
                out.push(self.chunk(
                    &Reasoning {
                        reasoning_content: t,
                    },
                    None,
                ));
            }
            Some("signature_delta") => {
                if let Some(th) = self.thinking.as_mut().filter(|th| th.index == idx) {
                    th.signature.push_str(text.unwrap_or(""));
                }
            }
            // citations: not part of OpenAI's chat shape.
            _ => {}
        }
        Ok(())
    }

    /// `message_start`: the id and model every chunk carries, the input
    /// counts, and the first chunk (the assistant's role).
    fn start(&mut self, id: &str, model: &str, usage: Option<Usage>, out: &mut Vec<StreamItem>) {
        self.id = id.to_string();
        self.model = model.to_string();
        if let Some(u) = usage {
            self.usage = u;
        }
        self.started = true;
        out.push(self.chunk(&ROLE, None));
    }

    /// The end of block `index`: a thinking block's whole text and
    /// signature go out as `thinking_blocks`, as the unary answer gives
    /// them, for the client to send back on its assistant turn.
    fn close_thinking(&mut self, index: u64, out: &mut Vec<StreamItem>) {
        if let Some(th) = self.thinking.take_if(|th| th.index == index) {
            out.push(self.chunk(&json!({"thinking_blocks": [{"type": "thinking", "thinking": th.text, "signature": th.signature}]}), None));
        }
    }

    /// A block that opens with text (not a tool call), at `index`.
    fn block_text(&mut self, index: u64, text: &str, out: &mut Vec<StreamItem>) {
        if self.searching {
            self.text_block = Some((index, self.chars));
            self.chars += text.chars().count();
        }
        if !text.is_empty() {
            self.text.push_str(text);
            out.push(self.chunk(&Content { content: text }, None));
        }
    }

    /// The end of block `index`: a cited text block's annotations, over the
    /// characters it spans.
    fn close_citations(&mut self, index: u64, out: &mut Vec<StreamItem>) {
        let Some((_, start)) = self.text_block.filter(|(i, _)| *i == index) else {
            return;
        };
        self.text_block = None;
        // The unary answer's reading of a block's citations.
        let cited = Value::Array(std::mem::take(&mut self.cited));
        let mut annotations = Vec::new();
        super::response::cite(&cited, start, self.chars, &mut annotations);
        if !annotations.is_empty() {
            out.push(self.chunk(&json!({"annotations": annotations}), None));
        }
    }

    /// `message_delta`: the stop reason, the output count, and every count
    /// when the event restates them (`all`, whose output count is replaced).
    fn message_delta(
        &mut self,
        stop: Option<&str>,
        output: Option<u64>,
        searches: Option<u64>,
        all: Option<Usage>,
        out: &mut Vec<StreamItem>,
    ) {
        if let Some(stop) = stop {
            self.finish = Some(finish_reason(stop, self.json_mode));
        }
        if let Some(n) = output {
            self.usage.completion_tokens = n;
        }
        if let Some(n) = searches {
            self.usage.web_searches = n;
        }
        if let Some(u) = all {
            let (out_tokens, searches) = (self.usage.completion_tokens, self.usage.web_searches);
            self.usage = u;
            self.usage.completion_tokens = out_tokens;
            self.usage.web_searches = searches;
        }
        out.push(self.chunk(&NoDelta {}, Some(self.finish.unwrap_or("stop"))));
    }

    /// `message_stop`: the usage chunk and the end.
    fn stop(&mut self, out: &mut Vec<StreamItem>) {
        self.done = true;
        let c = crate::translate::usage_chunk(&self.id, self.created, &self.model, &self.usage);
        out.push(StreamItem::Usage(self.usage, c));
        out.push(StreamItem::Done);
    }

    /// The events other than deltas that a stream always has, read into
    /// borrowed fields when the upstream names them; `false` when the event
    /// is not one of them or not of the usual shape (the tree decides).
    fn on_common(&mut self, name: Option<&str>, data: &str, out: &mut Vec<StreamItem>) -> bool {
        match name {
            Some("message_start") => match serde_json::from_str::<Start<'_>>(data) {
                Ok(Start { message: m }) => {
                    let usage = m.usage.as_ref().map(Counts::usage);
                    self.start(
                        m.id.as_deref().unwrap_or(""),
                        m.model.as_deref().unwrap_or(""),
                        usage,
                        out,
                    );
                    true
                }
                Err(_) => false,
            },
            Some("content_block_start") => match serde_json::from_str::<BlockStart<'_>>(data) {
                Ok(b)
                    if !matches!(
                        b.content_block.kind.as_deref(),
                        Some("tool_use" | "thinking" | "redacted_thinking" | "server_tool_use")
                    ) =>
                {
                    let index = b.index.unwrap_or(0);
                    self.block_text(index, b.content_block.text.as_deref().unwrap_or(""), out);
                    true
                }
                _ => false,
            },
            Some("message_delta") => match serde_json::from_str::<MessageDelta<'_>>(data) {
                Ok(d) => {
                    let stop = d.delta.as_ref().and_then(|d| d.stop_reason.as_deref());
                    let u = d.usage.as_ref();
                    let all = u.filter(|u| u.input_tokens.is_some()).map(|u| {
                        Counts {
                            input_tokens: u.input_tokens.flatten(),
                            output_tokens: u.output_tokens,
                            cache_read_input_tokens: u.cache_read_input_tokens,
                            cache_creation_input_tokens: u.cache_creation_input_tokens,
                            server_tool_use: None,
                        }
                        .usage()
                    });
                    let searches = u
                        .and_then(|u| u.server_tool_use.as_ref())
                        .and_then(|s| s.web_search_requests);
                    self.message_delta(stop, u.and_then(|u| u.output_tokens), searches, all, out);
                    true
                }
                Err(_) => false,
            },
            // A thinking or cited block's end: the tree reads its index.
            Some("content_block_stop") if self.thinking.is_some() || !self.cited.is_empty() => {
                false
            }
            // Nothing to read in these; the text is checked to be JSON.
            Some(n @ ("content_block_stop" | "ping" | "message_stop")) => {
                if serde_json::from_str::<serde::de::IgnoredAny>(data).is_err() {
                    return false;
                }
                if n == "message_stop" {
                    self.stop(out);
                }
                true
            }
            _ => false,
        }
    }

    fn bad(&self, what: &str) -> GatewayError {
        GatewayError::upstream_bad_response(
            &self.provider,
            format_args!("unexpected stream event: {what}"),
        )
    }
}

impl StreamDecoder for Decoder {
    fn on_event(&mut self, event: &Event, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        // Most of a stream is `content_block_delta` events: read them into
        // borrowed fields, without a tree. Any other shape (a missing index,
        // a field of an unexpected type) takes the general path below.
        let named = event.event.as_deref();
        if (named == Some("content_block_delta")
            || (named.is_none() && event.data.contains("\"content_block_delta\"")))
            && !(self.searching && event.data.contains("\"citations_delta\""))
        {
            if let Ok(d) = serde_json::from_str::<BlockDelta<'_>>(&event.data) {
                if named.is_some() || d.kind.as_deref() == Some("content_block_delta") {
                    let (idx, d) = (d.index, d.delta);
                    return self.on_delta(
                        idx,
                        d.kind.as_deref(),
                        d.text_for_kind(),
                        d.partial_json.as_deref(),
                        out,
                    );
                }
            }
        }
        if self.on_common(named, &event.data, out) {
            return Ok(());
        }
        let v: Value = serde_json::from_str(&event.data).map_err(|_| self.bad("not JSON"))?;
        let kind = event
            .event
            .as_deref()
            .or_else(|| v.get("type").and_then(Value::as_str))
            .unwrap_or("");
        match kind {
            "message_start" => {
                let m = v
                    .get("message")
                    .ok_or_else(|| self.bad("message_start without message"))?;
                let str_of = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("");
                let (id, model) = (str_of("id").to_string(), str_of("model").to_string());
                self.start(&id, &model, m.get("usage").map(usage_from), out);
            }
            "content_block_start" => {
                let idx = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = v.get("content_block").unwrap_or(&Value::Null);
                if block.get("type").and_then(Value::as_str) == Some("server_tool_use") {
                    self.server_blocks.push(idx);
                } else if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                    if self.json_mode && name == JSON_TOOL {
                        self.tools.insert(idx, None);
                    } else {
                        let i = self.next_tool;
                        self.next_tool += 1;
                        self.tools.insert(idx, Some(i));
                        self.text.push_str(name);
                        out.push(self.chunk(&json!({"tool_calls": [{"index": i, "id": block.get("id"), "type": "function",
                            "function": {"name": name, "arguments": ""}}]}), None));
                    }
                } else if block.get("type").and_then(Value::as_str) == Some("thinking") {
                    self.reasoning.get_or_insert_default();
                    self.thinking = Some(Thinking {
                        index: idx,
                        text: String::new(),
                        signature: String::new(),
                    });
                    let opening = block.get("thinking").and_then(Value::as_str).unwrap_or("");
                    if !opening.is_empty() {
                        self.on_delta(idx, Some("thinking_delta"), Some(opening), None, out)?;
                    }
                } else if block.get("type").and_then(Value::as_str) == Some("redacted_thinking") {
                    self.reasoning.get_or_insert_default();
                    out.push(self.chunk(&json!({"thinking_blocks": [block]}), None));
                } else {
                    let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                    self.block_text(idx, text, out);
                }
            }
            "content_block_stop" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                self.close_thinking(index, out);
                self.close_citations(index, out);
            }
            "content_block_delta"
                if v.pointer("/delta/type").and_then(Value::as_str) == Some("citations_delta") =>
            {
                if let Some(c) = v.pointer("/delta/citation") {
                    self.cited.push(c.clone());
                }
            }
            "content_block_delta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                let text = |k: &str| d.get(k).and_then(Value::as_str);
                let kind = d.get("type").and_then(Value::as_str);
                self.on_delta(
                    v.get("index").and_then(Value::as_u64).unwrap_or(0),
                    kind,
                    text(text_member(kind)),
                    text("partial_json"),
                    out,
                )?;
            }
            "message_delta" => {
                self.message_delta(
                    v.pointer("/delta/stop_reason").and_then(Value::as_str),
                    v.pointer("/usage/output_tokens").and_then(Value::as_u64),
                    v.pointer("/usage/server_tool_use/web_search_requests")
                        .and_then(Value::as_u64),
                    v.get("usage")
                        .filter(|u| u.get("input_tokens").is_some())
                        .map(usage_from),
                    out,
                );
            }
            "message_stop" => self.stop(out),
            "error" => {
                let err = v.get("error").unwrap_or(&Value::Null);
                let msg = err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream stream error")
                    .to_string();
                return Err(super::error_for(
                    StatusCode::BAD_GATEWAY,
                    err.get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("api_error"),
                    msg,
                ));
            }
            // ping and future events carry nothing to forward.
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        if self.done {
            Ok(())
        } else {
            Err(GatewayError::upstream_bad_response(
                &self.provider,
                "the stream ended before message_stop",
            ))
        }
    }

    fn saw_usage(&self) -> bool {
        self.done
    }

    fn reasoned(&self) -> bool {
        self.reasoning.is_some()
    }

    fn summary(&self) -> StreamSummary {
        StreamSummary {
            id: Some(self.id.clone()),
            model: Some(self.model.clone()),
            created: Some(self.created),
            completion_text: self.text.clone(),
            reasoning: self.reasoning.clone(),
        }
    }
}
