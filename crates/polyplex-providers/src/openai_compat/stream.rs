//! Pass-through decoding of an OpenAI-protocol stream.
//!
//! Chunks are forwarded as the upstream wrote them, without parsing, except
//! the usage chunk (it gets the cost) and error events. The raw chunks are
//! kept (a copy, no parse) so that if the upstream never reports usage the
//! gateway can count the generated text at the end.

use crate::reply::{RawReply, Reply};
use crate::sse::Event;
use crate::{Endpoint, StreamDecoder, StreamItem, StreamSummary};
use bytes::Bytes;
use http::StatusCode;
use memchr::memmem::Finder;
use polyplex_types::{GatewayError, Usage};
use serde_json::Value;
use std::sync::LazyLock;

pub struct Decoder {
    endpoint: Endpoint,
    provider: String,
    done: bool,
    saw_usage: bool,
    saw_finish: bool,
    /// Every chunk's JSON, newline separated, for the summary.
    raw: Vec<u8>,
}

impl Decoder {
    pub fn new(endpoint: Endpoint, provider: &str) -> Self {
        Decoder {
            endpoint,
            provider: provider.to_string(),
            done: false,
            saw_usage: false,
            saw_finish: false,
            raw: Vec::new(),
        }
    }
}

// Searchers built once: `memmem::find` builds one per call, which cost
// more than the search itself on every chunk.
type Key = LazyLock<Finder<'static>>;
static USAGE: Key = LazyLock::new(|| Finder::new(b"\"usage\""));
static FINISH: Key = LazyLock::new(|| Finder::new(b"\"finish_reason\""));
static ERROR: Key = LazyLock::new(|| Finder::new(b"\"error\""));
static CHOICES: Key = LazyLock::new(|| Finder::new(b"\"choices\""));

/// Finds `"key"` followed by `:` and optional whitespace; returns the rest.
fn after_key<'a>(hay: &'a [u8], key: &Key) -> Option<&'a [u8]> {
    let len = key.needle().len();
    let mut from = 0;
    while let Some(i) = key.find(&hay[from..]) {
        let rest = &hay[from + i + len..];
        let rest = rest.trim_ascii_start();
        if let Some(r) = rest.strip_prefix(b":") {
            return Some(r.trim_ascii_start());
        }
        from += i + len;
    }
    None
}

/// True if the chunk carries a non-null `usage` object.
fn has_usage(data: &[u8]) -> bool {
    after_key(data, &USAGE).is_some_and(|r| r.first() == Some(&b'{'))
}

/// True if the chunk carries a non-null `finish_reason`.
fn has_finish(data: &[u8]) -> bool {
    after_key(data, &FINISH).is_some_and(|r| r.first() == Some(&b'"'))
}

/// True if the chunk's `choices` is a non-empty array.
pub(super) fn has_choices(chunk: &RawReply) -> bool {
    chunk.get("choices").is_some_and(|t| {
        t.strip_prefix('[')
            .is_some_and(|rest| rest.trim_start() != "]")
    })
}

fn starts_with_error(data: &[u8]) -> bool {
    after_key(data, &ERROR).is_some_and(|r| r.first() == Some(&b'{') || r.first() == Some(&b'"'))
        && CHOICES.find(data).is_none()
}

impl StreamDecoder for Decoder {
    fn on_event(&mut self, event: &Event, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            self.done = true;
            out.push(StreamItem::Done);
            return Ok(());
        }
        let bytes = data.as_bytes();
        if event.event.as_deref() == Some("error") || starts_with_error(bytes) {
            let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::String(data.to_string()));
            let err = v.get("error").unwrap_or(&v);
            let mut e = super::error_from_value(&self.provider, StatusCode::BAD_GATEWAY, err);
            e.retryable = true;
            return Err(e);
        }
        if !self.saw_finish && has_finish(bytes) {
            self.saw_finish = true;
        }
        if has_usage(bytes) {
            // Read as raw members: only `usage` gets edited (the cost).
            let chunk = RawReply::parse(Bytes::copy_from_slice(bytes)).map_err(|e| {
                GatewayError::upstream_bad_response(
                    &self.provider,
                    format_args!("bad stream chunk ({e})"),
                )
            })?;
            if let Some(u) = chunk.get("usage").and_then(Usage::from_json_text) {
                self.saw_usage = true;
                if !has_choices(&chunk) {
                    out.push(StreamItem::Usage(u, Reply::Raw(chunk)));
                    return Ok(());
                }
                // Usage riding on a content chunk (some compatible servers do this):
                // forward the content, keep the usage for the end.
                let chunk = chunk.into_map();
                self.raw.extend_from_slice(bytes);
                self.raw.push(b'\n');
                let mut content = chunk.clone();
                content.insert("usage".into(), Value::Null);
                let text = serde_json::to_vec(&content).unwrap_or_default();
                out.push(StreamItem::Chunk(Bytes::from(text)));
                let mut usage_chunk = chunk;
                usage_chunk.insert("choices".into(), Value::Array(Vec::new()));
                out.push(StreamItem::Usage(u, Reply::Map(usage_chunk)));
                return Ok(());
            }
        }
        self.raw.extend_from_slice(bytes);
        self.raw.push(b'\n');
        out.push(StreamItem::Chunk(Bytes::copy_from_slice(bytes)));
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        if self.done || (self.saw_finish && self.endpoint != Endpoint::Embeddings) {
            return Ok(());
        }
        Err(GatewayError::upstream_bad_response(
            &self.provider,
            "the stream ended before it was complete",
        ))
    }

    fn saw_usage(&self) -> bool {
        self.saw_usage
    }

    fn summary(&self) -> StreamSummary {
        let mut s = StreamSummary::default();
        for line in self.raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if s.id.is_none() {
                s.id = v.get("id").and_then(Value::as_str).map(str::to_string);
                s.model = v.get("model").and_then(Value::as_str).map(str::to_string);
                s.created = v.get("created").and_then(Value::as_u64);
            }
            for c in v
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                // chat: delta.content / delta.tool_calls[].function.arguments; completions: text
                if let Some(t) = c.get("text").and_then(Value::as_str) {
                    s.completion_text.push_str(t);
                }
                let Some(d) = c.get("delta") else { continue };
                for key in ["content", "reasoning_content", "refusal"] {
                    if let Some(t) = d.get(key).and_then(Value::as_str) {
                        s.completion_text.push_str(t);
                    }
                }
                for tc in d
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let f = tc.get("function");
                    for key in ["name", "arguments"] {
                        if let Some(t) = f.and_then(|f| f.get(key)).and_then(Value::as_str) {
                            s.completion_text.push_str(t);
                        }
                    }
                }
            }
        }
        s
    }
}
