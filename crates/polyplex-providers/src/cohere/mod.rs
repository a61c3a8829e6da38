//! Cohere's v2 Chat API (`POST {base}/v2/chat`, Bearer key), translated both ways.
//!
//! Cohere's messages and tools are close to OpenAI's: `developer` becomes
//! `system`; `tool_choice` maps to `REQUIRED`/`NONE` (a named function is
//! `REQUIRED` with only that tool offered); `top_p`/`top_k`/`stop` become
//! `p`/`k`/`stop_sequences`; `response_format` json_schema becomes
//! `{"type": "json_object", "json_schema": ...}`. Usage is what Cohere bills
//! (`billed_units`), falling back to its token counts. `logprobs` is
//! Cohere's own flag, its scored text chunks OpenAI's `logprobs.content`
//! ([`logprob_entry`]). `n` > 1 (asked apart by the gateway), `logit_bias`,
//! `top_logprobs` and `parallel_tool_calls: false` are refused by name or
//! dropped with `drop_params`; `user` and a message's `name` are always
//! dropped and named; audio and file parts are refused by name.

#[cfg(test)]
mod tests;

use crate::openai_compat::OpenAiCompat;
use crate::sse::Event;
use crate::translate::{
    asks, check_fields, chunk, chunk_with_logprobs, completion, embedding_input, embedding_list,
    name_dropped_hints, now, refuse_asked, unmark_cache, unsupported_endpoint, usage_chunk, Hints,
    CHAT_PARAMS,
};
use crate::{
    join_url, Endpoint, Protocol, StreamDecoder, StreamItem, StreamSummary, Target, UpstreamRequest,
};
use bytes::Bytes;
use http::StatusCode;
use polyplex_types::{lookup, GatewayError, JsonMap, RequestBody, Usage};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

#[derive(Debug, Default, Clone, Copy)]
pub struct Cohere;

/// Message `i` in Cohere's shape. Its content parts are Cohere's too
/// (text, and images with `detail`) but for a refusal, sent as text; audio
/// and files are refused by name (Cohere's chat takes neither).
fn message(i: usize, m: &Value) -> Result<Value, GatewayError> {
    let mut m = m.clone();
    if m["role"] == "developer" {
        m["role"] = json!("system");
    }
    // (`name` and `cache_control` named as dropped by `name_dropped_hints`.)
    unmark_cache(&mut m);
    if let Some(o) = m.as_object_mut() {
        o.remove("name");
        o.remove("refusal");
    }
    if let Some(parts) = m.get_mut("content").and_then(Value::as_array_mut) {
        for (j, p) in parts.iter_mut().enumerate() {
            match p.get("type").and_then(Value::as_str) {
                Some("refusal") => {
                    let text = p.get("refusal").cloned().unwrap_or(json!(""));
                    *p = json!({"type": "text", "text": text});
                }
                Some(other @ ("input_audio" | "file")) => {
                    return Err(GatewayError::invalid_param(
                        format!("messages[{i}].content[{j}].type"),
                        format!(
                        "Content parts of type '{other}' are not supported by the Cohere protocol."
                    ),
                    ))
                }
                _ => {}
            }
        }
    }
    // Cohere wants an assistant's tool-call turn to have no null content.
    if m["role"] == "assistant" && m.get("content").is_some_and(Value::is_null) {
        if let Some(o) = m.as_object_mut() {
            o.remove("content");
        }
    }
    Ok(m)
}

fn build_chat(
    body: &JsonMap,
    stream: bool,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    let body = &*crate::translate::for_translation(body, "Cohere")?;
    let mut dropped = Vec::new();
    check_fields(body, CHAT_PARAMS, false, "Cohere", target, &mut dropped)?;
    if lookup(body, "reasoning_effort").is_some_and(|v| !v.is_null()) {
        crate::unsupported("reasoning_effort", "Cohere", target, &mut dropped)?;
    }
    refuse_asked(
        body,
        // Cohere scores the chosen text only: no alternatives.
        &["n", "logit_bias", "top_logprobs", "parallel_tool_calls"],
        "Cohere",
        target,
        &mut dropped,
    )?;
    name_dropped_hints(body, Hints::DETAIL, &mut dropped);

    let mut out = Map::new();
    out.insert("model".into(), json!(target.model));
    if asks(body, "logprobs") {
        out.insert("logprobs".into(), json!(true));
    }
    let messages = lookup(body, "messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect::<Result<Vec<Value>, GatewayError>>()?;
    out.insert("messages".into(), Value::Array(messages));
    let mut tools: Vec<Value> = lookup(body, "tools")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    tools.iter_mut().for_each(unmark_cache);
    match lookup(body, "tool_choice") {
        Some(Value::String(s)) if s == "none" => {
            out.insert("tool_choice".into(), json!("NONE"));
        }
        Some(Value::String(s)) if s == "required" => {
            out.insert("tool_choice".into(), json!("REQUIRED"));
        }
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            tools.retain(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name));
            out.insert("tool_choice".into(), json!("REQUIRED"));
        }
        _ => {}
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "p"),
        ("top_k", "k"),
        ("seed", "seed"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
    ] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    if let Some(max) = lookup(body, "max_completion_tokens")
        .or_else(|| lookup(body, "max_tokens"))
        .filter(|v| !v.is_null())
    {
        out.insert("max_tokens".into(), max.clone());
    }
    match lookup(body, "stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    match lookup(body, "response_format")
        .and_then(|r| r.get("type"))
        .and_then(Value::as_str)
    {
        Some("json_object") => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some("json_schema") => {
            let schema = lookup(body, "response_format")
                .and_then(|r| r.pointer("/json_schema/schema"))
                .cloned()
                .unwrap_or(json!({"type": "object"}));
            out.insert(
                "response_format".into(),
                json!({"type": "json_object", "json_schema": schema}),
            );
        }
        _ => {}
    }
    if stream {
        out.insert("stream".into(), json!(true));
    }
    let bytes = serde_json::to_vec(&out).map_err(|e| {
        GatewayError::internal(format!("could not encode the upstream request: {e}"))
    })?;
    Ok(UpstreamRequest {
        url: join_url(target.base_url, "v2/chat"),
        headers: crate::headers(target, stream)?,
        body: Bytes::from(bytes),
        dropped,
    })
}

/// `POST /v2/embed` with float embeddings of documents.
fn build_embed(body: &JsonMap, target: &Target<'_>) -> Result<UpstreamRequest, GatewayError> {
    let input = embedding_input(body, "Cohere", target)?;
    let dropped = input.dropped;
    let mut out = json!({"model": target.model, "texts": input.texts, "input_type": "search_document", "embedding_types": ["float"]});
    if let Some(d) = input.dimensions {
        out["output_dimension"] = d.clone();
    }
    let bytes = serde_json::to_vec(&out).map_err(|e| {
        GatewayError::internal(format!("could not encode the upstream request: {e}"))
    })?;
    Ok(UpstreamRequest {
        url: join_url(target.base_url, "v2/embed"),
        headers: crate::headers(target, false)?,
        body: Bytes::from(bytes),
        dropped,
    })
}

fn parse_embed(
    provider: &str,
    request: &JsonMap,
    body: &[u8],
) -> Result<(JsonMap, Option<Usage>), GatewayError> {
    let v = crate::translate::reply_json(provider, body)?;
    let vectors: Vec<Vec<f64>> = v
        .pointer("/embeddings/float")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            GatewayError::upstream_bad_response(provider, "no `embeddings.float` array")
        })?
        .iter()
        .map(|e| {
            e.as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default()
        })
        .collect();
    let usage = v
        .pointer("/meta/billed_units/input_tokens")
        .and_then(Value::as_f64)
        .map(|n| Usage {
            prompt_tokens: n as u64,
            ..Usage::default()
        });
    Ok((embedding_list(&vectors, "", request, usage.as_ref()), usage))
}

fn finish_reason(r: &str) -> &'static str {
    match r {
        "MAX_TOKENS" => "length",
        "TOOL_CALL" => "tool_calls",
        _ => "stop",
    }
}

/// Cohere's usage: billed units when given (what the invoice says), else tokens.
fn usage_from(u: &Value) -> Usage {
    let billed = u
        .get("billed_units")
        .filter(|b| b.get("input_tokens").is_some());
    let src = billed.or_else(|| u.get("tokens")).unwrap_or(&Value::Null);
    let n = |k: &str| src.get(k).and_then(Value::as_f64).unwrap_or(0.0) as u64;
    Usage {
        prompt_tokens: n("input_tokens"),
        completion_tokens: n("output_tokens"),
        cached_tokens: u.get("cached_tokens").and_then(Value::as_u64).unwrap_or(0),
        reasoning_tokens: 0,
        ..Usage::default()
    }
}

fn stream_failed(provider: &str, reason: &str) -> GatewayError {
    let mut e = GatewayError::upstream(
        StatusCode::BAD_GATEWAY,
        "api_error",
        format!("Upstream provider `{provider}` ended the generation with {reason}."),
    );
    e.retryable = true;
    e
}

/// One of Cohere's scored text chunks (`{token_ids, text, logprobs}`: the
/// tokens that make up a piece of text that decodes on its own, mostly
/// one) as an entry of OpenAI's `logprobs.content`: the text as the token,
/// its log probability the sum of its tokens' (the text's own), no
/// alternatives.
fn logprob_entry(item: &Value) -> Value {
    let text = item.get("text").and_then(Value::as_str).unwrap_or("");
    let logprob: f64 = item
        .get("logprobs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .sum();
    json!({"token": text, "logprob": logprob, "bytes": text.as_bytes(), "top_logprobs": []})
}

/// An answer's `logprobs` (Cohere's list) as a choice's, `{"content": [...]}`.
fn logprobs_of(items: &Value) -> Option<Value> {
    let content: Vec<Value> = items.as_array()?.iter().map(logprob_entry).collect();
    Some(json!({"content": content, "refusal": null}))
}

fn parse_chat(provider: &str, body: &[u8]) -> Result<(JsonMap, Option<Usage>), GatewayError> {
    let v = crate::translate::reply_json(provider, body)?;
    let msg = v
        .get("message")
        .ok_or_else(|| GatewayError::upstream_bad_response(provider, "no `message`"))?;
    let fr = v
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("COMPLETE");
    if matches!(fr, "ERROR" | "TIMEOUT") {
        return Err(stream_failed(provider, fr));
    }
    let text: String = msg
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("text").and_then(Value::as_str))
        .collect();
    let calls = msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty());
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && calls.is_some() { Value::Null } else { json!(text) }, "refusal": null});
    if let Some(c) = calls {
        message["tool_calls"] = Value::Array(c.clone());
    }
    let usage = v.get("usage").map(usage_from);
    // Cohere names no model; the gateway fills in the one it called.
    let out = completion(
        v.get("id").cloned().unwrap_or(json!("cohere")),
        Value::Null,
        json!([{"index": 0, "message": message, "logprobs": v.get("logprobs").and_then(logprobs_of), "finish_reason": finish_reason(fr)}]),
        usage.as_ref(),
    );
    Ok((out, usage))
}

impl Protocol for Cohere {
    fn name(&self) -> &'static str {
        "cohere"
    }

    /// One choice a request: several are asked one at a time.
    fn answers_n(&self, _model: &str) -> bool {
        false
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
            other => Err(unsupported_endpoint(target, "Cohere", other)),
        }
    }

    /// `POST {base}/v2/rerank`.
    fn rerank_request(
        &self,
        call: &crate::rerank::RerankCall<'_>,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        call.post(join_url(target.base_url, "v2/rerank"), "top_n", target)
    }

    /// Cohere's list price for its rerank models: $2.00 per 1,000 searches.
    fn search_unit_price(&self, model: &str) -> f64 {
        if model.contains("rerank") {
            0.002
        } else {
            0.0
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
            _ => parse_chat(provider, body),
        }
    }

    fn error(&self, provider: &str, status: StatusCode, body: &[u8]) -> GatewayError {
        // Cohere answers {"message": "..."}, which the OpenAI reader understands.
        OpenAiCompat.error(provider, status, body)
    }

    fn stream_decoder(
        &self,
        _endpoint: Endpoint,
        provider: &str,
        model: &str,
        _request: &RequestBody,
    ) -> Box<dyn StreamDecoder> {
        Box::new(Decoder {
            provider: provider.to_string(),
            model: model.to_string(),
            created: now(),
            ..Decoder::default()
        })
    }
}

/// Cohere's named stream events → OpenAI chunks.
#[derive(Default)]
pub struct Decoder {
    provider: String,
    id: String,
    model: String,
    created: u64,
    next_tool: usize,
    /// Cohere's tool-call index → OpenAI's.
    tools: Vec<(u64, usize)>,
    usage: Option<Usage>,
    done: bool,
    text: String,
}

impl Decoder {
    fn chunk<D: serde::Serialize + ?Sized>(&self, delta: &D, finish: Option<&str>) -> StreamItem {
        chunk(&self.id, self.created, &self.model, 0, delta, finish)
    }

    fn tool_index(&self, cohere: u64) -> Option<usize> {
        self.tools
            .iter()
            .find(|(c, _)| *c == cohere)
            .map(|(_, o)| *o)
    }
}

/// A `content-delta` event (`delta.message.content.text`), borrowed from
/// its text: most of a stream.
#[derive(Deserialize)]
struct ContentDelta<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<DeltaIn<'a>>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(default, borrow)]
    message: Option<MessageIn<'a>>,
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(default, borrow)]
    content: Option<TextIn<'a>>,
}

#[derive(Deserialize)]
struct TextIn<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

impl StreamDecoder for Decoder {
    fn on_event(&mut self, event: &Event, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        let named = event.event.as_deref();
        // A delta with log probabilities takes the tree below.
        if (named == Some("content-delta") || event.data.contains("\"content-delta\""))
            && !event.data.contains("\"logprobs\"")
        {
            if let Ok(d) = serde_json::from_str::<ContentDelta<'_>>(&event.data) {
                if d.kind.as_deref().or(named) == Some("content-delta") {
                    let t = d
                        .delta
                        .and_then(|d| d.message)
                        .and_then(|m| m.content)
                        .and_then(|c| c.text);
                    let t = t.as_deref().unwrap_or("");
                    self.text.push_str(t);
                    out.push(self.chunk(&crate::translate::Content { content: t }, None));
                    return Ok(());
                }
            }
        }
        let v: Value = serde_json::from_str(&event.data).map_err(|_| {
            GatewayError::upstream_bad_response(&self.provider, "stream event is not JSON")
        })?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or("");
        let idx = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "message-start" => {
                self.id = v
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                out.push(self.chunk(&crate::translate::ROLE, None));
            }
            "content-delta" => {
                let t = v
                    .pointer("/delta/message/content/text")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                self.text.push_str(t);
                let scored = v.get("logprobs").filter(|l| !l.is_null()).map(|item| {
                    let items = match item {
                        Value::Array(_) => item.clone(),
                        one => json!([one]),
                    };
                    logprobs_of(&items).unwrap_or(Value::Null)
                });
                out.push(chunk_with_logprobs(
                    &self.id,
                    self.created,
                    &self.model,
                    0,
                    &crate::translate::Content { content: t },
                    scored.as_ref(),
                    None,
                ));
            }
            "tool-call-start" => {
                let tc = v
                    .pointer("/delta/message/tool_calls")
                    .cloned()
                    .unwrap_or(Value::Null);
                let i = self.next_tool;
                self.next_tool += 1;
                self.tools.push((idx, i));
                let name = tc
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let args = tc
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                self.text.push_str(name);
                self.text.push_str(args);
                out.push(self.chunk(&json!({"tool_calls": [{"index": i, "id": tc.get("id"), "type": "function", "function": {"name": name, "arguments": args}}]}), None));
            }
            "tool-call-delta" => {
                let frag = v
                    .pointer("/delta/message/tool_calls/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let i = self.tool_index(idx).ok_or_else(|| {
                    GatewayError::upstream_bad_response(
                        &self.provider,
                        "tool-call-delta for an unknown call",
                    )
                })?;
                self.text.push_str(frag);
                out.push(self.chunk(&crate::translate::tool_arguments(i, frag), None));
            }
            "message-end" => {
                let fr = v
                    .pointer("/delta/finish_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("COMPLETE");
                if matches!(fr, "ERROR" | "TIMEOUT") {
                    return Err(stream_failed(&self.provider, fr));
                }
                if let Some(u) = v.pointer("/delta/usage") {
                    self.usage = Some(usage_from(u));
                }
                out.push(self.chunk(&crate::translate::NoDelta {}, Some(finish_reason(fr))));
                if let Some(u) = self.usage {
                    out.push(StreamItem::Usage(
                        u,
                        usage_chunk(&self.id, self.created, &self.model, &u),
                    ));
                }
                self.done = true;
                out.push(StreamItem::Done);
            }
            // content-start/end, tool-plan-delta, tool-call-end, citations: nothing OpenAI's shape carries.
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
                "the stream ended before message-end",
            ))
        }
    }

    fn saw_usage(&self) -> bool {
        self.usage.is_some()
    }

    fn summary(&self) -> StreamSummary {
        StreamSummary {
            id: Some(self.id.clone()),
            model: Some(self.model.clone()),
            created: Some(self.created),
            completion_text: self.text.clone(),
            reasoning: None,
        }
    }
}
