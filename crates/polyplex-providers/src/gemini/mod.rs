//! Google Gemini's `generateContent` / `streamGenerateContent?alt=sse`
//! (`x-goog-api-key`), translated both ways.
//!
//! - system/developer messages → `systemInstruction`; `assistant` → role
//!   `model`; tool calls → `functionCall` parts; tool results →
//!   `functionResponse` parts (the function name is looked up from the
//!   assistant turn that made the call);
//! - sampling → `generationConfig` (`n` → `candidateCount`, `stop` →
//!   `stopSequences`, `max_tokens` → `maxOutputTokens`, `seed`, penalties);
//!   `response_format` → `responseMimeType` + `responseJsonSchema`;
//! - Gemini gives function calls no ids: polyplex makes stable ones from the
//!   response id, candidate and call index; Gemini 3's thought signature on
//!   a call goes out on the tool call (`extra_content.google`) and back on
//!   the call's part (Google's stand-in when a client did not keep it);
//! - `logprobs` → `responseLogprobs`, `top_logprobs` → `logprobs`; a
//!   candidate's `logprobsResult` comes back as the choice's (or each
//!   chunk's) `logprobs.content`, each chosen token with its alternatives;
//! - `web_search_options` → the `google_search` tool (grounding with Google
//!   Search; `search_context_size` and `user_location` have no equivalent
//!   and are named dropped); the candidate's `groundingMetadata` comes back
//!   as `url_citation` annotations (its supports' byte ranges as character
//!   ranges of the content), the searches in `usage.server_tool_use` and
//!   `usage.cost` ([`Gemini::web_search_price`]);
//! - `logit_bias`, `parallel_tool_calls: false` and unknown fields
//!   are refused by name, or dropped with `drop_params`; `user`, which has no
//!   effect on the answer, is always dropped and named, as are a message's
//!   `name` and an image's `detail`;
//! - `file` parts (base64) and `input_audio` parts → `inline_data` of their
//!   media type; an OpenAI `file_id` is refused by name.

#[cfg(test)]
mod tests;

use crate::openai_compat::OpenAiCompat;
use crate::sse::Event;
use crate::translate::{
    audio_data, check_fields, chunk, chunk_with_logprobs, completion, data_url, embedding_input,
    embedding_list, file_data, name_dropped_hints, no_turns, now, push_turn, refuse_asked, text_of,
    tool_args, unsupported_endpoint, usage_chunk, EmbeddingInput, Hints, Reasoning,
    SEARCH_CHAT_PARAMS,
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
use std::collections::HashMap;

#[derive(Debug, Default, Clone, Copy)]
pub struct Gemini;

fn mime_from_url(url: &str) -> &'static str {
    let u = url.to_ascii_lowercase();
    if u.ends_with(".png") {
        "image/png"
    } else if u.ends_with(".gif") {
        "image/gif"
    } else if u.ends_with(".webp") {
        "image/webp"
    } else {
        "image/jpeg"
    }
}

/// Whether `model` signs its function calls and refuses one replayed without
/// its signature (Gemini 3 and later; 2.x and 1.x take calls unsigned).
pub fn signs_calls(model: &str) -> bool {
    let m = model.rsplit('/').next().unwrap_or(model);
    m.starts_with("gemini-") && !m.starts_with("gemini-1") && !m.starts_with("gemini-2")
}

/// The thought signature Gemini gave a function call, as the answer carried
/// it on the tool call (`extra_content.google.thought_signature`, the shape
/// of Google's own OpenAI-compatible API).
fn call_signature(tc: &Value) -> Option<&str> {
    tc.pointer("/extra_content/google/thought_signature")
        .and_then(Value::as_str)
}

/// Google's documented stand-in for a replayed call whose signature was
/// not kept (a client that sends back only ids, names and arguments).
pub const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

fn parts(content: &Value, param: &str) -> Result<Vec<Value>, GatewayError> {
    match content {
        Value::String(s) if s.is_empty() => Ok(vec![]),
        Value::String(s) => Ok(vec![json!({"text": s})]),
        Value::Array(items) => {
            let mut out = Vec::new();
            for (j, p) in items.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(json!({"text": p.get("text").and_then(Value::as_str).unwrap_or("")})),
                    Some("image_url") => {
                        let url = p.pointer("/image_url/url").and_then(Value::as_str).unwrap_or("");
                        if let Some(parsed) = data_url(url, &format!("{param}[{j}].image_url.url")) {
                            let (mime, data) = parsed?;
                            out.push(json!({"inline_data": {"mime_type": mime, "data": data}}));
                        } else {
                            out.push(json!({"file_data": {"mime_type": mime_from_url(url), "file_uri": url}}));
                        }
                    }
                    Some("file") => {
                        let f = file_data(p, &format!("{param}[{j}]"), "Gemini")?;
                        out.push(json!({"inline_data": {"mime_type": f.media_type, "data": f.data}}));
                    }
                    Some("input_audio") => {
                        let (mime, data) = audio_data(p, &format!("{param}[{j}]"))?;
                        out.push(json!({"inline_data": {"mime_type": mime, "data": data}}));
                    }
                    Some(other) => {
                        return Err(GatewayError::invalid_param(format!("{param}[{j}].type"), format!("Content parts of type '{other}' are not supported by the Gemini protocol.")))
                    }
                    None => {}
                }
            }
            Ok(out)
        }
        _ => Ok(vec![]),
    }
}

fn build_chat(
    body: &JsonMap,
    stream: bool,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    let (bytes, dropped) = chat_body(body, target)?;
    generate_at(Bytes::from(bytes), dropped, stream, target)
}

/// A `generateContent` body sent to the target's model (streamed as SSE).
fn generate_at(
    body: Bytes,
    dropped: Vec<String>,
    stream: bool,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    let path = format!("v1beta/models/{}:{}", target.model, generate_method(stream));
    Ok(UpstreamRequest {
        url: join_url(target.base_url, &path),
        headers: crate::headers(target, stream)?,
        body,
        dropped,
    })
}

/// Google's method (and query) for a Gemini model's answer, streamed (as
/// server-sent events) or not: Gemini's API and Vertex AI name it alike.
pub(crate) fn generate_method(stream: bool) -> &'static str {
    if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    }
}

/// A client's own `countTokens` body for the target's model: its contents
/// as they came, or its `generateContentRequest` naming the deployment's
/// model (`nested`: Gemini's API takes that form; Vertex AI takes the
/// request's own members).
pub fn count_body(body: &JsonMap, model: &str, nested: bool) -> Result<Bytes, GatewayError> {
    let mut out = body.clone();
    out.remove("model");
    if let Some(Value::Object(inner)) = out.remove("generateContentRequest") {
        let mut inner = inner;
        if nested {
            inner.insert("model".into(), json!(format!("models/{model}")));
            out.insert("generateContentRequest".into(), Value::Object(inner));
        } else {
            inner.remove("model");
            out.extend(inner);
        }
    }
    serde_json::to_vec(&out)
        .map(Bytes::from)
        .map_err(|e| GatewayError::internal(format!("gemini: {e}")))
}

/// A client's own `generateContent` body without its `model` member (the
/// URL names the deployment's), as it came otherwise.
pub fn without_model(body: Bytes) -> Result<Bytes, GatewayError> {
    let mut raw = crate::RawReply::parse(body.clone())
        .map_err(|e| GatewayError::internal(format!("gemini: {e}")))?;
    if raw.get("model").is_none() {
        return Ok(body);
    }
    raw.remove("model");
    Ok(raw.to_bytes())
}

/// The `generateContent` body for an OpenAI chat request (Gemini's API and
/// Vertex AI's take the same), and the parameters dropped.
pub(crate) fn chat_body(
    body: &JsonMap,
    target: &Target<'_>,
) -> Result<(Vec<u8>, Vec<String>), GatewayError> {
    let body = &*crate::translate::for_translation(body, "Gemini")?;
    let mut dropped = Vec::new();
    check_fields(
        body,
        &SEARCH_CHAT_PARAMS,
        false,
        "Gemini",
        target,
        &mut dropped,
    )?;
    refuse_asked(
        body,
        &["logit_bias", "parallel_tool_calls"],
        "Gemini",
        target,
        &mut dropped,
    )?;
    name_dropped_hints(body, Hints::NONE, &mut dropped);

    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, m) in lookup(body, "messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let p = format!("messages[{i}].content");
        let content = m.get("content").unwrap_or(&Value::Null);
        match m.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => system.push(text_of(content)),
            "user" => push_turn(&mut contents, "user", "parts", parts(content, &p)?),
            "assistant" => {
                let mut ps = parts(content, &p)?;
                let calls = m.get("tool_calls").and_then(Value::as_array);
                // A model that signs its calls wants the first call of a
                // turn signed: the signature it gave, else the stand-in.
                let unsigned = signs_calls(target.model)
                    && !calls
                        .into_iter()
                        .flatten()
                        .any(|tc| call_signature(tc).is_some());
                for (j, tc) in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let name = tc
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let args = tool_args(
                        tc,
                        format!("messages[{i}].tool_calls[{j}].function.arguments"),
                    )?;
                    if let Some(id) = tc.get("id").and_then(Value::as_str) {
                        call_names.insert(id.to_string(), name.clone());
                    }
                    let mut part = json!({"functionCall": {"name": name, "args": args}});
                    match call_signature(tc) {
                        Some(sig) => part["thoughtSignature"] = json!(sig),
                        None if unsigned && j == 0 => {
                            part["thoughtSignature"] = json!(SKIP_SIGNATURE)
                        }
                        None => {}
                    }
                    ps.push(part);
                }
                push_turn(&mut contents, "model", "parts", ps);
            }
            "tool" | "function" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                let name = call_names
                    .get(id)
                    .cloned()
                    .or_else(|| m.get("name").and_then(Value::as_str).map(str::to_string))
                    .ok_or_else(|| {
                        GatewayError::invalid_param(
                            format!("messages[{i}].tool_call_id"),
                            format!("No earlier assistant tool call has the id '{id}'."),
                        )
                    })?;
                let text = text_of(content);
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"result": text}),
                };
                push_turn(
                    &mut contents,
                    "user",
                    "parts",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            _ => {}
        }
    }

    if contents.is_empty() {
        return Err(no_turns("Gemini"));
    }
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    let system: Vec<String> = system.into_iter().filter(|s| !s.is_empty()).collect();
    if !system.is_empty() {
        out.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system.join("\n\n")}]}),
        );
    }
    let mut gc = Map::new();
    let copy = |gc: &mut Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            gc.insert(to.into(), v.clone());
        }
    };
    copy(&mut gc, "temperature", "temperature");
    copy(&mut gc, "top_p", "topP");
    copy(&mut gc, "top_k", "topK");
    copy(&mut gc, "seed", "seed");
    copy(&mut gc, "presence_penalty", "presencePenalty");
    copy(&mut gc, "frequency_penalty", "frequencyPenalty");
    copy(&mut gc, "n", "candidateCount");
    // Log probabilities: the chosen token's, and `top_logprobs` alternatives.
    if crate::translate::asks(body, "logprobs") {
        gc.insert("responseLogprobs".into(), json!(true));
        if crate::translate::asks(body, "top_logprobs") {
            copy(&mut gc, "top_logprobs", "logprobs");
        }
    }
    if let Some(max) = lookup(body, "max_completion_tokens")
        .or_else(|| lookup(body, "max_tokens"))
        .filter(|v| !v.is_null())
    {
        gc.insert("maxOutputTokens".into(), max.clone());
    }
    match lookup(body, "stop") {
        Some(Value::String(s)) => {
            gc.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            gc.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    match lookup(body, "response_format")
        .and_then(|r| r.get("type"))
        .and_then(Value::as_str)
    {
        Some("json_object") => {
            gc.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            gc.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) =
                lookup(body, "response_format").and_then(|r| r.pointer("/json_schema/schema"))
            {
                gc.insert("responseJsonSchema".into(), schema.clone());
            }
        }
        _ => {}
    }
    // reasoning_effort → a thinking budget (none and minimal: no thinking,
    // which models that must think refuse upstream).
    if let Some(effort) = crate::translate::reasoning_effort(body)? {
        let budget = match effort {
            "none" | "minimal" => 0,
            "low" => 1024,
            "medium" => 8192,
            _ => 24576,
        };
        // With thinking on, its summary comes back as `reasoning_content`.
        let config = if budget > 0 {
            json!({"thinkingBudget": budget, "includeThoughts": true})
        } else {
            json!({"thinkingBudget": budget})
        };
        gc.insert("thinkingConfig".into(), config);
    }
    if !gc.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gc));
    }
    let decls: Vec<Value> = lookup(body, "tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            let f = t.get("function").cloned().unwrap_or(Value::Null);
            let mut d = json!({"name": f.get("name").cloned().unwrap_or(Value::Null)});
            if let Some(desc) = f.get("description").filter(|x| !x.is_null()) {
                d["description"] = desc.clone();
            }
            if let Some(p) = f.get("parameters").filter(|x| !x.is_null()) {
                d["parametersJsonSchema"] = p.clone();
            }
            d
        })
        .collect();
    let mut tools = Vec::new();
    if !decls.is_empty() {
        tools.push(json!({"functionDeclarations": decls}));
    }
    // Web search: grounding with Google Search, which takes no hints.
    if let Some(options) = lookup(body, "web_search_options").filter(|v| !v.is_null()) {
        tools.push(json!({"google_search": {}}));
        for k in ["search_context_size", "user_location"] {
            if options.get(k).is_some_and(|v| !v.is_null()) {
                dropped.push(format!("web_search_options.{k}"));
            }
        }
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(tc) = lookup(body, "tool_choice").filter(|v| !v.is_null()) {
        let cfg = match tc {
            Value::String(s) if s == "none" => json!({"mode": "NONE"}),
            Value::String(s) if s == "required" => json!({"mode": "ANY"}),
            Value::Object(o) => {
                json!({"mode": "ANY", "allowedFunctionNames": [o.get("function").and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null)]})
            }
            _ => json!({"mode": "AUTO"}),
        };
        out.insert("toolConfig".into(), json!({"functionCallingConfig": cfg}));
    }
    let bytes = serde_json::to_vec(&out).map_err(|e| {
        GatewayError::internal(format!("could not encode the upstream request: {e}"))
    })?;
    Ok((bytes, dropped))
}

/// `batchEmbedContents`: one request per input text.
fn build_embed(body: &JsonMap, target: &Target<'_>) -> Result<UpstreamRequest, GatewayError> {
    let EmbeddingInput {
        texts,
        dimensions: dims,
        dropped,
    } = embedding_input(body, "Gemini", target)?;
    let model = format!("models/{}", target.model);
    let requests: Vec<Value> = texts
        .into_iter()
        .map(|t| {
            let mut r = json!({"model": model, "content": {"parts": [{"text": t}]}});
            if let Some(d) = dims {
                r["outputDimensionality"] = d.clone();
            }
            r
        })
        .collect();
    let bytes = serde_json::to_vec(&json!({"requests": requests})).map_err(|e| {
        GatewayError::internal(format!("could not encode the upstream request: {e}"))
    })?;
    Ok(UpstreamRequest {
        url: join_url(
            target.base_url,
            &format!("v1beta/models/{}:batchEmbedContents", target.model),
        ),
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
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or_else(|| GatewayError::upstream_bad_response(provider, "no `embeddings` array"))?
        .iter()
        .map(|e| {
            e.get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default()
        })
        .collect();
    // Gemini reports no usage for embeddings: the gateway counts it.
    Ok((embedding_list(&vectors, "", request, None), None))
}

fn finish_reason(r: &str, has_calls: bool) -> &'static str {
    match r {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if has_calls => "tool_calls",
        _ => "stop",
    }
}

/// A `usageMetadata` object's counts as a [`Usage`].
pub fn usage_from(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64);
    Counts {
        prompt: n("promptTokenCount"),
        candidates: n("candidatesTokenCount"),
        cached: n("cachedContentTokenCount"),
        thoughts: n("thoughtsTokenCount"),
    }
    .usage()
}

/// `usageMetadata`'s counts read straight from the text (every stream event
/// carries them). A count that is not a whole number fails the read, and
/// the event is read as a tree, where it counts 0.
#[derive(Deserialize, Default)]
struct Counts {
    #[serde(rename = "promptTokenCount", default)]
    prompt: Option<u64>,
    #[serde(rename = "candidatesTokenCount", default)]
    candidates: Option<u64>,
    #[serde(rename = "cachedContentTokenCount", default)]
    cached: Option<u64>,
    #[serde(rename = "thoughtsTokenCount", default)]
    thoughts: Option<u64>,
}

impl Counts {
    fn usage(&self) -> Usage {
        let thoughts = self.thoughts.unwrap_or(0);
        Usage {
            prompt_tokens: self.prompt.unwrap_or(0),
            completion_tokens: self.candidates.unwrap_or(0) + thoughts,
            cached_tokens: self.cached.unwrap_or(0),
            reasoning_tokens: thoughts,
            ..Usage::default()
        }
    }
}

fn call_id(response_id: &str, candidate: u64, index: usize, name: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in format!("{response_id}/{candidate}/{index}/{name}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("call_{h:016x}")
}

/// What one candidate's parts say: its text, its thought summary (the
/// parts marked `thought`, as `reasoning_content`) and its function calls.
#[derive(Default)]
struct Read {
    text: String,
    reasoning: String,
    calls: Vec<Value>,
}

/// [`Read`] of one candidate's parts. `next_call` numbers the calls.
fn read_parts(parts: &[Value], response_id: &str, candidate: u64, next_call: &mut usize) -> Read {
    let mut read = Read::default();
    let (text, calls) = (&mut read.text, &mut read.calls);
    for p in parts {
        if p.get("thought").and_then(Value::as_bool) == Some(true) {
            let t = p.get("text").and_then(Value::as_str).unwrap_or("");
            read.reasoning.push_str(t);
            continue;
        }
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(fc) = p.get("functionCall") {
            let name = fc.get("name").and_then(Value::as_str).unwrap_or("");
            let id = fc
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| call_id(response_id, candidate, *next_call, name));
            let mut call = json!({"index": *next_call, "id": id, "type": "function",
                "function": {"name": name, "arguments": fc.get("args").cloned().unwrap_or(json!({})).to_string()}});
            // Gemini 3's signature, for the client to send back with the
            // call (Google's OpenAI-compatible API puts it there too).
            if let Some(sig) = p.get("thoughtSignature").filter(|s| s.is_string()) {
                call["extra_content"] = json!({"google": {"thought_signature": sig}});
            }
            calls.push(call);
            *next_call += 1;
        }
    }
    read
}

/// A candidate's `logprobsResult` in OpenAI's shape, `{"content": [...]}`:
/// each decoding step's chosen token and its log probability, with the
/// alternatives Gemini gave for that step as `top_logprobs`. Google's JSON
/// leaves out a zero log probability (and an empty token): they read as such.
fn logprobs_of(candidate: &Value) -> Option<Value> {
    let result = candidate.get("logprobsResult")?;
    let chosen = result.get("chosenCandidates")?.as_array()?;
    let top = result.get("topCandidates").and_then(Value::as_array);
    let entry = |t: &Value| {
        let token = t.get("token").and_then(Value::as_str).unwrap_or("");
        let logprob = t
            .get("logProbability")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()})
    };
    let content: Vec<Value> = chosen
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut e = entry(t);
            let alternatives: Vec<Value> = top
                .and_then(|steps| steps.get(i))
                .and_then(|step| step.get("candidates"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(entry)
                .collect();
            e["top_logprobs"] = Value::Array(alternatives);
            e
        })
        .collect();
    Some(json!({"content": content, "refusal": null}))
}

/// A candidate's `groundingMetadata` (Google Search's results) as OpenAI's
/// `url_citation` annotations: each support's segment — a byte range of
/// the text part `partIndex` (the first by default) — as a character range
/// of the message content, once per page it cites. `parts` are the
/// candidate's text parts as the content joins them.
fn grounding_annotations(candidate: &Value, parts: &[&str]) -> Vec<Value> {
    let Some(g) = candidate.get("groundingMetadata") else {
        return Vec::new();
    };
    let chunks = g.get("groundingChunks").and_then(Value::as_array);
    // Characters before part i, and a part's byte offset in characters.
    let before = |i: usize| {
        parts
            .iter()
            .take(i)
            .map(|p| p.chars().count())
            .sum::<usize>()
    };
    let chars_at = |part: &str, byte: usize| {
        let byte = byte.min(part.len());
        part.char_indices().take_while(|(b, _)| *b < byte).count()
    };
    let mut out = Vec::new();
    for support in g
        .get("groundingSupports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let seg = support.get("segment").unwrap_or(&Value::Null);
        let n = |k: &str| seg.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
        let at = n("partIndex");
        let part = parts.get(at).copied().unwrap_or("");
        let (start, end) = (
            before(at) + chars_at(part, n("startIndex")),
            before(at) + chars_at(part, n("endIndex")),
        );
        let mut seen: Vec<&str> = Vec::new();
        for i in support
            .get("groundingChunkIndices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let web = i
                .as_u64()
                .and_then(|i| chunks.and_then(|c| c.get(i as usize)))
                .and_then(|c| c.get("web"));
            let Some(uri) = web.and_then(|w| w.get("uri")).and_then(Value::as_str) else {
                continue;
            };
            if !seen.contains(&uri) {
                seen.push(uri);
                out.push(crate::translate::url_citation(
                    start,
                    end,
                    uri,
                    web.and_then(|w| w.get("title")),
                ));
            }
        }
    }
    out
}

/// The searches a grounded answer from `model` is billed for: each query
/// for Gemini 3 and later, one per grounded answer before it (Google's
/// prices per query and per grounded prompt, [`Gemini::web_search_price`]).
fn searches(candidates: &[Value], model: &str) -> u64 {
    let queries: Vec<u64> = candidates
        .iter()
        .filter_map(|c| c.pointer("/groundingMetadata/webSearchQueries"))
        .filter_map(Value::as_array)
        .map(|q| q.len() as u64)
        .filter(|n| *n > 0)
        .collect();
    match (queries.is_empty(), signs_calls(model)) {
        (true, _) => 0,
        (false, true) => queries.iter().sum(),
        (false, false) => 1,
    }
}

fn response_id(v: &Value) -> String {
    v.get("responseId")
        .and_then(Value::as_str)
        .map(|s| format!("chatcmpl-{s}"))
        .unwrap_or_else(|| format!("chatcmpl-gemini-{}", now()))
}

pub(crate) fn parse_chat(
    provider: &str,
    body: &[u8],
) -> Result<(JsonMap, Option<Usage>), GatewayError> {
    let v = crate::translate::reply_json(provider, body)?;
    let candidates = v
        .get("candidates")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            match v
                .pointer("/promptFeedback/blockReason")
                .and_then(Value::as_str)
            {
                Some(reason) => GatewayError::invalid_request(format!(
                    "The prompt was blocked by the provider's safety filter ({reason})."
                ))
                .with_code("content_filter"),
                None => GatewayError::upstream_bad_response(provider, "no `candidates` array"),
            }
        })?;
    let id = response_id(&v);
    let raw_id = v.get("responseId").and_then(Value::as_str).unwrap_or("");
    let mut choices = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        let idx = c.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
        let mut next = 0;
        let parts = c
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let Read {
            text,
            reasoning,
            calls,
        } = read_parts(parts, raw_id, idx, &mut next);
        // Grounded: the supports' ranges, read against the text parts.
        let annotations = if c.get("groundingMetadata").is_some() {
            let texts: Vec<&str> = parts
                .iter()
                .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            grounding_annotations(c, &texts)
        } else {
            Vec::new()
        };
        let calls: Vec<Value> = calls
            .into_iter()
            .map(|mut c| {
                if let Some(o) = c.as_object_mut() {
                    o.remove("index");
                }
                c
            })
            .collect();
        let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }, "refusal": null});
        let has_calls = !calls.is_empty();
        if has_calls {
            message["tool_calls"] = Value::Array(calls);
        }
        if !reasoning.is_empty() {
            message["reasoning_content"] = json!(reasoning);
        }
        if !annotations.is_empty() {
            message["annotations"] = Value::Array(annotations);
        }
        let fr = finish_reason(
            c.get("finishReason")
                .and_then(Value::as_str)
                .unwrap_or("STOP"),
            has_calls,
        );
        choices.push(json!({"index": idx, "message": message,
            "logprobs": logprobs_of(c), "finish_reason": fr}));
    }
    let mut usage = v.get("usageMetadata").map(usage_from);
    let model = v.get("modelVersion").and_then(Value::as_str).unwrap_or("");
    let searched = searches(candidates, model);
    if let (Some(u), true) = (usage.as_mut(), searched > 0) {
        u.web_searches = searched;
    }
    let out = completion(
        json!(id),
        v.get("modelVersion").cloned().unwrap_or(Value::Null),
        Value::Array(choices),
        usage.as_ref(),
    );
    Ok((out, usage))
}

impl Protocol for Gemini {
    fn carries_generate(&self, _model: &str) -> bool {
        true
    }

    fn generate_request(
        &self,
        body: Bytes,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        generate_at(without_model(body)?, Vec::new(), stream, target)
    }

    fn generate_count_request(
        &self,
        body: &JsonMap,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        Ok(UpstreamRequest {
            url: join_url(
                target.base_url,
                &format!("v1beta/models/{}:countTokens", target.model),
            ),
            headers: crate::headers(target, false)?,
            body: count_body(body, target.model, true)?,
            dropped: Vec::new(),
        })
    }

    fn name(&self) -> &'static str {
        "gemini"
    }

    /// Grounding with Google Search: $14 per 1,000 search queries on Gemini
    /// 3 and later, $35 per 1,000 grounded prompts before (Google's list
    /// prices; the free daily allowance is not known to polyplex).
    fn web_search_price(&self, model: &str) -> f64 {
        if signs_calls(model) {
            0.014
        } else {
            0.035
        }
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
            other => Err(unsupported_endpoint(target, "Gemini", other)),
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
        // Google's shape, {"error": {"code", "message", "status"}}, reads like OpenAI's.
        let mut e = OpenAiCompat.error(provider, status, body);
        if let Some(s) = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            v.pointer("/error/status")
                .and_then(Value::as_str)
                .map(str::to_string)
        }) {
            e.code = Some(s.to_ascii_lowercase());
        }
        e
    }

    fn stream_decoder(
        &self,
        _endpoint: Endpoint,
        provider: &str,
        _model: &str,
        request: &RequestBody,
    ) -> Box<dyn StreamDecoder> {
        Box::new(Decoder {
            provider: provider.to_string(),
            searching: request.shape().is_none()
                && polyplex_types::lookup(request.map(), "web_search_options")
                    .is_some_and(|v| !v.is_null()),
            ..Decoder::default()
        })
    }
}

/// Gemini streams whole response objects; each becomes OpenAI chunks. Gemini
/// sends no terminator, so the end is the upstream closing after a `finishReason`.
#[derive(Default)]
pub struct Decoder {
    provider: String,
    id: String,
    raw_id: String,
    model: String,
    created: u64,
    started: bool,
    finished: bool,
    calls: HashMap<u64, usize>,
    usage: Option<Usage>,
    text: String,
    /// Web search is on: each candidate's visible text is kept, for the
    /// ranges of its grounding's annotations.
    searching: bool,
    visible: HashMap<u64, String>,
    /// The grounding metadata of the stream's candidates (the last each gave).
    grounding: HashMap<u64, Value>,
}

impl Decoder {
    fn chunk<D: serde::Serialize + ?Sized>(
        &self,
        index: u64,
        delta: &D,
        finish: Option<&str>,
    ) -> StreamItem {
        chunk(&self.id, self.created, &self.model, index, delta, finish)
    }
}

/// A stream event after the first, when every part is text, borrowed from
/// its text: what nearly all of a stream is. Anything else — an error, a
/// function call, a field of an unexpected type — is read as a tree.
#[derive(Deserialize)]
struct TextEvent<'a> {
    #[serde(default, borrow)]
    candidates: Option<Vec<TextCandidate<'a>>>,
    /// Present even when `null` (the tree reads a `null` as zero usage).
    #[serde(rename = "usageMetadata", default, deserialize_with = "present")]
    usage: Option<Option<Counts>>,
}

fn present<'a, D: serde::Deserializer<'a>>(d: D) -> Result<Option<Option<Counts>>, D::Error> {
    Option::<Counts>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct TextCandidate<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    content: Option<TextContent<'a>>,
    #[serde(rename = "finishReason", default, borrow)]
    finish: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct TextContent<'a> {
    #[serde(default, borrow)]
    parts: Option<Vec<TextPart<'a>>>,
}

#[derive(Deserialize)]
struct TextPart<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thought: Option<bool>,
}

impl Decoder {
    /// Candidate `idx` finished: its last chunk, with the finish reason.
    fn finish_candidate(&mut self, idx: u64, reason: &str, out: &mut Vec<StreamItem>) {
        self.finished = true;
        let has_calls = self.calls.get(&idx).is_some_and(|n| *n > 0);
        out.push(self.chunk(
            idx,
            &crate::translate::NoDelta {},
            Some(finish_reason(reason, has_calls)),
        ));
    }

    /// Candidate `idx`'s thought summary and text of one event, as chunks;
    /// the text's with the log probabilities of its tokens, when asked for.
    fn say(
        &mut self,
        idx: u64,
        reasoning: &str,
        text: &str,
        logprobs: Option<&Value>,
        out: &mut Vec<StreamItem>,
    ) {
        if !reasoning.is_empty() {
            let delta = Reasoning {
                reasoning_content: reasoning,
            };
            out.push(self.chunk(idx, &delta, None));
        }
        if !text.is_empty() {
            self.text.push_str(text);
            if self.searching {
                self.visible.entry(idx).or_default().push_str(text);
            }
            let delta = crate::translate::Content { content: text };
            out.push(chunk_with_logprobs(
                &self.id,
                self.created,
                &self.model,
                idx,
                &delta,
                logprobs,
                None,
            ));
        }
    }

    /// [`StreamDecoder::on_event`] for a [`TextEvent`]; `None` when the
    /// event is not one (then the tree reads it).
    fn on_text_event(&mut self, data: &str, out: &mut Vec<StreamItem>) -> Option<()> {
        if !self.started {
            return None;
        }
        // Keys, not text: inside a string their quotes would be escaped.
        if data.contains("\"error\"")
            || data.contains("\"functionCall\"")
            || data.contains("\"logprobsResult\"")
            || data.contains("\"groundingMetadata\"")
        {
            return None;
        }
        let ev: TextEvent<'_> = serde_json::from_str(data).ok()?;
        let candidates = ev.candidates.unwrap_or_default();
        if let Some(u) = ev.usage {
            self.usage = Some(u.unwrap_or_default().usage());
        }
        for (i, c) in candidates.iter().enumerate() {
            let idx = c.index.unwrap_or(i as u64);
            let (mut text, mut reasoning) = (String::new(), String::new());
            for p in c.content.iter().flat_map(|c| c.parts.iter().flatten()) {
                let into = if p.thought == Some(true) {
                    &mut reasoning
                } else {
                    &mut text
                };
                into.push_str(p.text.as_deref().unwrap_or(""));
            }
            self.say(idx, &reasoning, &text, None, out);
            if let Some(fr) = c.finish.as_deref() {
                self.finish_candidate(idx, fr, out);
            }
        }
        Some(())
    }

    /// [`StreamDecoder::on_event`] through a tree: any event.
    pub(super) fn on_tree(
        &mut self,
        event: &Event,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        let v: Value = serde_json::from_str(&event.data).map_err(|_| {
            GatewayError::upstream_bad_response(&self.provider, "stream event is not JSON")
        })?;
        if let Some(err) = v.get("error") {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream stream error")
                .to_string();
            let code = err
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| StatusCode::from_u16(c as u16).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            let mut e = OpenAiCompat.error(
                &self.provider,
                code,
                json!({"error": {"message": msg}}).to_string().as_bytes(),
            );
            e.retryable = true;
            return Err(e);
        }
        if !self.started {
            self.started = true;
            self.id = response_id(&v);
            self.raw_id = v
                .get("responseId")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            self.model = v
                .get("modelVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            self.created = now();
            let n = v
                .get("candidates")
                .and_then(Value::as_array)
                .map_or(1, |c| c.len().max(1));
            for i in 0..n as u64 {
                out.push(self.chunk(i, &crate::translate::ROLE, None));
            }
        }
        if let Some(u) = v.get("usageMetadata") {
            self.usage = Some(usage_from(u));
        }
        for (i, c) in v
            .get("candidates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let idx = c.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
            let parts = c
                .pointer("/content/parts")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let next = self.calls.entry(idx).or_insert(0);
            let Read {
                text,
                reasoning,
                calls,
            } = read_parts(parts, &self.raw_id, idx, next);
            self.say(idx, &reasoning, &text, logprobs_of(c).as_ref(), out);
            for call in &calls {
                self.text.push_str(
                    call.pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                );
            }
            if !calls.is_empty() {
                out.push(self.chunk(idx, &json!({"tool_calls": calls}), None));
            }
            // Grounding (Google Search): its supports' ranges are of the
            // candidate's whole text; annotated once it is all there.
            if let Some(g) = c.get("groundingMetadata") {
                self.grounding.insert(idx, json!({"groundingMetadata": g}));
            }
            if let Some(fr) = c.get("finishReason").and_then(Value::as_str) {
                if let Some(g) = self.grounding.get(&idx) {
                    let text = self.visible.get(&idx).map_or("", String::as_str);
                    let annotations = grounding_annotations(g, &[text]);
                    if !annotations.is_empty() {
                        out.push(self.chunk(idx, &json!({"annotations": annotations}), None));
                    }
                }
                self.finish_candidate(idx, fr, out);
            }
        }
        Ok(())
    }
}

impl StreamDecoder for Decoder {
    fn on_event(&mut self, event: &Event, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        match self.on_text_event(&event.data, out) {
            Some(()) => Ok(()),
            None => self.on_tree(event, out),
        }
    }

    fn finish(&mut self, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        if !self.finished {
            return Err(GatewayError::upstream_bad_response(
                &self.provider,
                "the stream ended before a finishReason",
            ));
        }
        if let Some(mut u) = self.usage {
            let grounded: Vec<Value> = self.grounding.values().cloned().collect();
            u.web_searches = searches(&grounded, &self.model);
            self.usage = Some(u);
            out.push(StreamItem::Usage(
                u,
                usage_chunk(&self.id, self.created, &self.model, &u),
            ));
        }
        out.push(StreamItem::Done);
        Ok(())
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
