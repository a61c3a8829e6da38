//! ConverseStream events → OpenAI chat.completion.chunk objects.
//!
//! The events (`messageStart`, `contentBlockStart`, `contentBlockDelta`,
//! `contentBlockStop`, `messageStop`, `metadata`) come as event-stream
//! messages whose payload is the event's JSON. A `toolUse` block gets the
//! next OpenAI tool-call index (id and name in its first delta, argument
//! fragments after). `messageStop` carries the finish reason, `metadata`
//! (last) the usage; an `exception` message ends the stream with the
//! error it names.

use super::{finish_reason, new_id, usage_from, JSON_TOOL};
use crate::sse::Event;
use crate::translate::{tool_arguments, Content, Reasoning};
use crate::{StreamDecoder, StreamItem, StreamSummary};
use polyplex_types::{GatewayError, Usage};
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::HashMap;

/// A `contentBlockDelta` event, borrowed from its text.
#[derive(Deserialize)]
struct BlockDelta<'a> {
    #[serde(rename = "contentBlockIndex", default)]
    index: u64,
    #[serde(borrow)]
    delta: DeltaIn<'a>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(rename = "toolUse", default, borrow)]
    tool_use: Option<ToolUseIn<'a>>,
    /// Claude's thinking: read through the tree ([`Decoder::on_reasoning`]).
    #[serde(rename = "reasoningContent", default)]
    reasoning: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ToolUseIn<'a> {
    #[serde(default, borrow)]
    input: Option<Cow<'a, str>>,
}

pub struct Decoder {
    provider: String,
    json_mode: bool,
    id: String,
    model: String,
    created: u64,
    /// Block index → OpenAI tool-call index (`None`: the JSON tool, sent as content).
    tools: HashMap<u64, Option<usize>>,
    next_tool: usize,
    usage: Option<Usage>,
    started: bool,
    stopped: bool,
    text: String,
    /// The thinking block open now: its index, text and signature so far.
    thinking: Option<(u64, String, String)>,
    /// All thinking's text, once the model thought (redacted: empty).
    reasoning: Option<String>,
}

impl Decoder {
    pub fn new(provider: &str, model: &str, json_mode: bool) -> Self {
        Decoder {
            provider: provider.to_string(),
            json_mode,
            id: new_id(),
            model: model.to_string(),
            created: crate::translate::now(),
            tools: HashMap::new(),
            next_tool: 0,
            usage: None,
            started: false,
            stopped: false,
            text: String::new(),
            thinking: None,
            reasoning: None,
        }
    }

    fn chunk<D: serde::Serialize + ?Sized>(&self, delta: &D, finish: Option<&str>) -> StreamItem {
        crate::translate::chunk(&self.id, self.created, &self.model, 0, delta, finish)
    }

    /// A `contentBlockDelta`: text, or a tool call's input fragment.
    pub(super) fn on_delta(
        &mut self,
        idx: u64,
        text: Option<&str>,
        frag: Option<&str>,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        self.start(out);
        if let Some(t) = text {
            self.text.push_str(t);
            out.push(self.chunk(&Content { content: t }, None));
        } else if let Some(frag) = frag {
            self.text.push_str(frag);
            match self.tools.get(&idx) {
                Some(Some(i)) => out.push(self.chunk(&tool_arguments(*i, frag), None)),
                Some(None) => out.push(self.chunk(&Content { content: frag }, None)),
                None => return Err(self.bad("toolUse delta for a block never started")),
            }
        }
        // citations: not part of OpenAI's chat shape.
        Ok(())
    }

    /// A `reasoningContent` delta of block `idx` (Claude's extended
    /// thinking): its text as `reasoning_content`, its signature kept for
    /// the block's end, redacted thinking as a `thinking_blocks` entry.
    pub(super) fn on_reasoning(&mut self, idx: u64, rc: &Value, out: &mut Vec<StreamItem>) {
        self.start(out);
        let th = self
            .thinking
            .get_or_insert_with(|| (idx, String::new(), String::new()));
        let reasoning = self.reasoning.get_or_insert_default();
        if let Some(t) = rc.get("text").and_then(Value::as_str) {
            th.1.push_str(t);
            reasoning.push_str(t);
            out.push(self.chunk(
                &Reasoning {
                    reasoning_content: t,
                },
                None,
            ));
        } else if let Some(s) = rc.get("signature").and_then(Value::as_str) {
            th.2.push_str(s);
        } else if let Some(data) = rc.get("redactedContent") {
            self.thinking = None;
            out.push(self.chunk(
                &json!({"thinking_blocks": [{"type": "redacted_thinking", "data": data}]}),
                None,
            ));
        }
    }

    /// The end of block `idx`: a thinking block goes out whole, as the
    /// unary answer gives it, for the client to send back.
    fn close_thinking(&mut self, idx: u64, out: &mut Vec<StreamItem>) {
        if let Some((_, text, signature)) = self.thinking.take_if(|t| t.0 == idx) {
            out.push(self.chunk(&json!({"thinking_blocks": [{"type": "thinking", "thinking": text, "signature": signature}]}), None));
        }
    }

    fn bad(&self, what: &str) -> GatewayError {
        GatewayError::upstream_bad_response(
            &self.provider,
            format_args!("unexpected stream event: {what}"),
        )
    }

    /// The opening chunk, once, before the first content.
    fn start(&mut self, out: &mut Vec<StreamItem>) {
        if !self.started {
            self.started = true;
            out.push(self.chunk(&crate::translate::ROLE, None));
        }
    }
}

impl StreamDecoder for Decoder {
    fn on_event(&mut self, event: &Event, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        let kind = event.event.as_deref().unwrap_or("");
        if let Some(exception) = kind.strip_prefix("exception:") {
            return Err(super::stream_exception(
                &self.provider,
                exception,
                &event.data,
            ));
        }
        if let Some(code) = kind.strip_prefix("error:") {
            return Err(GatewayError::upstream_bad_response(
                &self.provider,
                format_args!("stream error {code}: {}", event.data),
            ));
        }
        // Most of a stream is `contentBlockDelta` events: read them into
        // borrowed fields, without a tree; an unexpected shape takes the
        // general path below.
        if kind == "contentBlockDelta" {
            match serde_json::from_str::<BlockDelta<'_>>(&event.data) {
                Ok(d) if d.delta.reasoning.is_none() => {
                    let frag = d.delta.tool_use.as_ref().and_then(|t| t.input.as_deref());
                    return self.on_delta(d.index, d.delta.text.as_deref(), frag, out);
                }
                _ => {}
            }
        }
        let v: Value = serde_json::from_str(&event.data).map_err(|_| self.bad("not JSON"))?;
        match kind {
            "messageStart" => self.start(out),
            "contentBlockStart" => {
                self.start(out);
                let idx = v
                    .get("contentBlockIndex")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if let Some(tu) = v.pointer("/start/toolUse") {
                    let name = tu.get("name").and_then(Value::as_str).unwrap_or("");
                    if self.json_mode && name == JSON_TOOL {
                        self.tools.insert(idx, None);
                    } else {
                        let i = self.next_tool;
                        self.next_tool += 1;
                        self.tools.insert(idx, Some(i));
                        self.text.push_str(name);
                        out.push(self.chunk(&json!({"tool_calls": [{"index": i, "id": tu.get("toolUseId"), "type": "function",
                            "function": {"name": name, "arguments": ""}}]}), None));
                    }
                }
            }
            "contentBlockDelta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                let idx = v
                    .get("contentBlockIndex")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                match d.get("reasoningContent") {
                    Some(rc) => self.on_reasoning(idx, rc, out),
                    None => self.on_delta(
                        idx,
                        d.get("text").and_then(Value::as_str),
                        d.pointer("/toolUse/input").and_then(Value::as_str),
                        out,
                    )?,
                }
            }
            "contentBlockStop" => {
                let idx = v.get("contentBlockIndex").and_then(Value::as_u64);
                self.close_thinking(idx.unwrap_or(0), out);
            }
            "messageStop" => {
                self.start(out);
                let stop = v
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                self.stopped = true;
                out.push(self.chunk(
                    &crate::translate::NoDelta {},
                    Some(finish_reason(stop, self.json_mode)),
                ));
            }
            "metadata" => {
                if let Some(u) = v.get("usage") {
                    let u = usage_from(u);
                    self.usage = Some(u);
                    let c = crate::translate::usage_chunk(&self.id, self.created, &self.model, &u);
                    out.push(StreamItem::Usage(u, c));
                }
            }
            // Future events carry nothing to forward.
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        if !self.stopped {
            return Err(GatewayError::upstream_bad_response(
                &self.provider,
                "the stream ended before messageStop",
            ));
        }
        out.push(StreamItem::Done);
        Ok(())
    }

    fn saw_usage(&self) -> bool {
        self.usage.is_some()
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
