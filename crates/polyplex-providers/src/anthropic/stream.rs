//! Anthropic stream events → OpenAI chat.completion.chunk objects.
//!
//! Stateful: the message id and model come from `message_start` and are put
//! on every chunk; each `tool_use` block gets the next OpenAI tool-call index
//! (id and name in its first delta, argument fragments after); input tokens
//! from `message_start` and output tokens from `message_delta` make the usage.

use super::{finish_reason, usage_from, JSON_TOOL};
use crate::sse::Event;
use crate::translate::{Content, NoDelta, ROLE};
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
        }
    }

    fn chunk<D: serde::Serialize + ?Sized>(&self, delta: &D, finish: Option<&str>) -> StreamItem {
        crate::translate::chunk(&self.id, self.created, &self.model, 0, delta, finish)
    }

    /// A `content_block_delta`: text, or a tool call's argument fragment.
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
                out.push(self.chunk(&Content { content: t }, None));
            }
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
            // thinking, signatures, citations: not part of OpenAI's chat shape.
            _ => {}
        }
        Ok(())
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
        if named == Some("content_block_delta")
            || (named.is_none() && event.data.contains("\"content_block_delta\""))
        {
            if let Ok(d) = serde_json::from_str::<BlockDelta<'_>>(&event.data) {
                if named.is_some() || d.kind.as_deref() == Some("content_block_delta") {
                    let (idx, d) = (d.index, d.delta);
                    return self.on_delta(
                        idx,
                        d.kind.as_deref(),
                        d.text.as_deref(),
                        d.partial_json.as_deref(),
                        out,
                    );
                }
            }
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
                self.id = m
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                self.model = m
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if let Some(u) = m.get("usage") {
                    self.usage = usage_from(u);
                }
                self.started = true;
                out.push(self.chunk(&ROLE, None));
            }
            "content_block_start" => {
                let idx = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = v.get("content_block").unwrap_or(&Value::Null);
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
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
                } else if let Some(t) = block
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    self.text.push_str(t);
                    out.push(self.chunk(&Content { content: t }, None));
                }
            }
            "content_block_delta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                let text = |k: &str| d.get(k).and_then(Value::as_str);
                self.on_delta(
                    v.get("index").and_then(Value::as_u64).unwrap_or(0),
                    d.get("type").and_then(Value::as_str),
                    text("text"),
                    text("partial_json"),
                    out,
                )?;
            }
            "message_delta" => {
                if let Some(stop) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.finish = Some(finish_reason(stop, self.json_mode));
                }
                if let Some(n) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.usage.completion_tokens = n;
                }
                if let Some(u) = v.get("usage").filter(|u| u.get("input_tokens").is_some()) {
                    let out_tokens = self.usage.completion_tokens;
                    self.usage = usage_from(u);
                    self.usage.completion_tokens = out_tokens;
                }
                out.push(self.chunk(&NoDelta {}, Some(self.finish.unwrap_or("stop"))));
            }
            "message_stop" => {
                self.done = true;
                let c =
                    crate::translate::usage_chunk(&self.id, self.created, &self.model, &self.usage);
                out.push(StreamItem::Usage(self.usage, c));
                out.push(StreamItem::Done);
            }
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
            // ping, content_block_stop and future events carry nothing to forward.
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

    fn summary(&self) -> StreamSummary {
        StreamSummary {
            id: Some(self.id.clone()),
            model: Some(self.model.clone()),
            created: Some(self.created),
            completion_text: self.text.clone(),
        }
    }
}
