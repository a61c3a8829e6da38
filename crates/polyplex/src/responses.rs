//! OpenAI's Responses API (`POST /v1/responses`) served over the chat
//! pipeline, for every provider.
//!
//! A Responses request is rewritten as the chat request that asks the same
//! ([`to_chat`]): `instructions` and the `input` items become messages
//! (consecutive `function_call` items one assistant turn with its tool
//! calls, `function_call_output` items tool messages), `tools` take chat's
//! nested shape, `text.format` becomes `response_format`, `reasoning.effort`
//! `reasoning_effort`, `max_output_tokens` `max_completion_tokens`. That
//! request then goes through everything a chat request does — keys, limits,
//! budget, routing, failover, usage records (as `responses`),
//! translation to the provider's protocol — and its answer is rewritten as a
//! Response object ([`response_object`]), or its stream as the Responses
//! stream's typed events ([`Streamer`]).
//!
//! A response is kept (`store`, OpenAI's default) in the gateway's store
//! with the conversation it answered, as items; `previous_response_id`
//! continues from it (its items go first, the new instructions only
//! apply), for the caller that kept it. Without it a conversation goes
//! back whole in `input` — the model's reasoning too: a reasoning item's
//! `encrypted_content` carries
//! Claude's signed thinking blocks (which Anthropic wants back in a tool
//! loop), and a function call Gemini signed carries its signature in
//! `extra_content`, as chat's tool calls do. `conversation` objects, stored
//! prompts, background mode and built-in tools (file search, computer
//! use, code interpreter, ...) live inside OpenAI's service and are refused
//! by name. The web search tool is chat's `web_search_options`, searched
//! by the providers that search (OpenAI's search models, Claude, Gemini;
//! the others refuse it by name): the cited text comes back with
//! `url_citation` annotations on its `output_text` part (streamed as
//! `response.output_text.annotation.added`). Function tools and GPT-5's custom (free-form) tools work on every
//! provider (the latter as chat has them: `polyplex_providers::custom_tools`),
//! their calls as `function_call` and `custom_tool_call` items.

use base64::Engine;
use polyplex_types::{lookup, GatewayError, JsonMap};
use serde_json::{json, Map, Value};

/// The parameters a Responses request may carry. Anything else is refused
/// by name, as OpenAI's API does.
const PARAMS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "reasoning",
    "stream",
    "stream_options",
    "metadata",
    "store",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
    "top_logprobs",
    "truncation",
    "include",
    "max_tool_calls",
    "previous_response_id",
    "conversation",
    "background",
    "prompt",
    // polyplex's own routing options (OpenRouter's shape), as on chat.
    "models",
    "provider",
];

/// Copied to the chat request under the same name (chat's validation
/// checks them and names them the same).
const SAME_NAME: &[&str] = &[
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
    // The usage record's tags (and checked as chat's).
    "metadata",
    "models",
    "provider",
];

/// The request's members a Response object repeats.
const ECHOED: &[&str] = &[
    "previous_response_id",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "tool_choice",
    "tools",
    "text",
    "reasoning",
    "metadata",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
    "top_logprobs",
    "max_tool_calls",
    "truncation",
];

/// How a reasoning item's `encrypted_content` made by polyplex starts: the
/// rest is the model's signed thinking blocks, JSON in URL-safe base64.
const THINKING_PREFIX: &str = "plx-thinking:";

/// What the answer needs of the request.
#[derive(Debug, Clone)]
pub struct Echo {
    /// `resp_...`, also the stem of every output item's id.
    pub id: String,
    /// The members of the request a Response repeats.
    request: JsonMap,
    pub stream: bool,
    /// Where each chat message came from: `instructions`, `input` or
    /// `input[i]` (for errors chat's validation finds).
    sources: Vec<String>,
    /// Whether the response is to be kept (`store`, true unless false).
    pub store: bool,
    /// The conversation so far: the earlier response's items and this
    /// request's input; the response's output joins them when it is kept.
    pub items: Vec<Value>,
    /// How many of `items` came from the response continued, which is
    /// `previous` (`previous_response_id`): they are kept with it, not again.
    pub earlier: usize,
    pub previous: Option<String>,
    /// The conversation (`conversation`) the items after `earlier` join.
    pub conversation: Option<String>,
}

/// A Responses request as the chat request that asks the same.
#[derive(Debug)]
pub struct Converted {
    pub chat: JsonMap,
    pub echo: Echo,
    /// What polyplex left out, named (joins `x-polyplex-dropped-params`).
    pub dropped: Vec<String>,
}

/// A refusal, with the model asked for (for the usage record).
pub type Refused = Box<(String, GatewayError)>;

fn bad(param: impl Into<String>, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid_param(param, message)
}

fn bad_type(param: &str, want: &str) -> GatewayError {
    bad(
        param,
        format!("Invalid type for '{param}': expected {want}."),
    )
}

fn missing(param: &str) -> GatewayError {
    bad(param, format!("Missing required parameter: '{param}'."))
        .with_code("missing_required_parameter")
}

fn string_at<'a>(o: &'a JsonMap, key: &str, path: &str) -> Result<&'a str, GatewayError> {
    match lookup(o, key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(missing(&format!("{path}.{key}"))),
        Some(_) => Err(bad_type(&format!("{path}.{key}"), "a string")),
    }
}

fn given<'a>(o: &'a JsonMap, key: &str) -> Option<&'a Value> {
    lookup(o, key).filter(|v| !v.is_null())
}

/// A new response id: `resp_` and 32 random hex digits (never the
/// request id a client may choose: a kept response's id is its key).
pub fn new_response_id() -> String {
    format!("resp_{}", uuid::Uuid::new_v4().simple())
}

/// The model a Responses body asks for ("" when it names none).
pub fn model_of(body: &JsonMap) -> String {
    match lookup(body, "model") {
        Some(Value::String(m)) => m.clone(),
        _ => String::new(),
    }
}

/// The `previous_response_id` a body continues from, checked.
pub fn previous_of(body: &JsonMap) -> Result<Option<String>, Refused> {
    match given(body, "previous_response_id") {
        None => Ok(None),
        Some(Value::String(id)) => Ok(Some(id.clone())),
        Some(_) => Err(Box::new((
            model_of(body),
            bad_type("previous_response_id", "a string"),
        ))),
    }
}

/// The conversation a body names (`conversation`: its id, or `{"id"}`),
/// checked: one of it and `previous_response_id` at most.
pub fn conversation_of(body: &JsonMap) -> Result<Option<String>, Refused> {
    let refuse = |e: GatewayError| Box::new((model_of(body), e));
    if given(body, "conversation").is_none() {
        return Ok(None);
    }
    let id = conversation_id(body).ok_or_else(|| {
        refuse(bad_type(
            "conversation",
            "a conversation id or an object with its `id`",
        ))
    })?;
    if given(body, "previous_response_id").is_some() {
        return Err(refuse(bad(
            "conversation",
            "Mutually exclusive parameters: Ensure you are only providing one of: 'previous_response_id' or 'conversation'.",
        )));
    }
    Ok(Some(id))
}

/// The id of the conversation a body names, if it names one well.
fn conversation_id(body: &JsonMap) -> Option<String> {
    match given(body, "conversation")? {
        Value::String(id) => Some(id.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Rewrites a Responses request as a chat request ([module docs](self));
/// `earlier` are the stored items of the response it continues from
/// (`previous_response_id`: its input and output, in order).
pub fn to_chat(body: JsonMap, id: &str, earlier: &[Value]) -> Result<Converted, Refused> {
    convert(&body, id, earlier).map_err(|e| Box::new((model_of(&body), e)))
}

fn convert(body: &JsonMap, id: &str, earlier: &[Value]) -> Result<Converted, GatewayError> {
    for k in body.keys() {
        if !PARAMS.contains(&k.as_str()) {
            return Err(bad(k.as_str(), format!("Unknown parameter: '{k}'."))
                .with_code("unknown_parameter"));
        }
    }
    let stateful = |k: &str, why: &str| -> Result<(), GatewayError> {
        if given(body, k).is_some_and(|v| v != &Value::Bool(false)) {
            return Err(bad(k, why.to_string()).with_code("unsupported_parameter"));
        }
        Ok(())
    };
    if given(body, "previous_response_id").is_some_and(|v| !v.is_string()) {
        return Err(bad_type("previous_response_id", "a string"));
    }
    stateful(
        "prompt",
        "Stored prompts live in OpenAI's dashboard; send `instructions` and `input` instead.",
    )?;
    stateful("background", "Background responses are not supported: polyplex answers while the request is open. Stream the response instead.")?;
    if let Some(t) = given(body, "truncation") {
        match t.as_str() {
            Some("disabled") => {}
            Some("auto") => return Err(bad("truncation", "`truncation: auto` is not supported: polyplex does not cut a conversation to fit; send what fits, or `disabled`.")),
            _ => return Err(bad("truncation", "`truncation` must be 'auto' or 'disabled'.")),
        }
    }
    let model = match lookup(body, "model") {
        Some(Value::String(m)) => m.clone(),
        None | Some(Value::Null) => return Err(missing("model")),
        Some(_) => return Err(bad_type("model", "a string")),
    };
    let stream = match given(body, "stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad_type("stream", "a boolean")),
    };
    if let Some(o) = given(body, "stream_options") {
        if !o.is_object() {
            return Err(bad_type("stream_options", "an object"));
        }
        if !stream {
            return Err(bad(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true.",
            ));
        }
    }
    let store = match given(body, "store") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad_type("store", "a boolean")),
    };
    if let Some(m) = given(body, "metadata") {
        let ok = m
            .as_object()
            .is_some_and(|o| o.values().all(Value::is_string));
        if !ok {
            return Err(bad_type("metadata", "an object of strings"));
        }
    }
    let mut logprobs = false;
    if let Some(inc) = given(body, "include") {
        let items = inc
            .as_array()
            .ok_or_else(|| bad_type("include", "an array of strings"))?;
        for (i, v) in items.iter().enumerate() {
            let s = v
                .as_str()
                .ok_or_else(|| bad_type(&format!("include[{i}]"), "a string"))?;
            logprobs |= s == "message.output_text.logprobs";
        }
    }

    let mut chat = JsonMap::new();
    chat.insert("model".into(), Value::String(model));
    let mut dropped = Vec::new();
    let mut messages = Vec::new();
    let mut sources = Vec::new();
    match given(body, "instructions") {
        None => {}
        Some(Value::String(s)) => {
            messages.push(json!({"role": "system", "content": s}));
            sources.push("instructions".to_string());
        }
        Some(_) => return Err(bad_type("instructions", "a string")),
    }
    // The items this response will be stored with: the earlier ones, then
    // this request's input (a string as the user message it stands for).
    let mut items: Vec<Value> = earlier.to_vec();
    let input: Vec<(String, &Value)>;
    let as_message;
    match lookup(body, "input") {
        None | Some(Value::Null) => return Err(missing("input")),
        Some(Value::String(s)) => {
            as_message = json!({"type": "message", "role": "user", "content": s});
            input = vec![("input".to_string(), &as_message)];
        }
        Some(Value::Array(list)) => {
            input = list
                .iter()
                .enumerate()
                .map(|(i, item)| (format!("input[{i}]"), item))
                .collect();
        }
        Some(_) => return Err(bad_type("input", "a string or an array of input items")),
    }
    items.extend(input.iter().map(|(_, v)| (*v).clone()));
    // An earlier item at fault was stored so: the id it came by is named.
    let all = earlier
        .iter()
        .map(|item| ("previous_response_id".to_string(), item))
        .chain(input.iter().map(|(p, v)| (p.clone(), *v)));
    input_items(all, &mut messages, &mut sources, &mut dropped)?;
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(v) = given(body, "max_output_tokens") {
        chat.insert("max_completion_tokens".into(), v.clone());
    }
    for k in SAME_NAME {
        if let Some(v) = lookup(body, k) {
            chat.insert((*k).into(), v.clone());
        }
    }
    if let Some(n) = given(body, "top_logprobs") {
        if !n.is_u64() {
            return Err(bad_type("top_logprobs", "an integer"));
        }
        logprobs = true;
        chat.insert("top_logprobs".into(), n.clone());
    }
    if logprobs {
        chat.insert("logprobs".into(), Value::Bool(true));
    }
    if let Some(tools) = given(body, "tools") {
        let (tools, search) = chat_tools(tools)?;
        if tools.as_array().is_some_and(|t| !t.is_empty()) {
            chat.insert("tools".into(), tools);
        }
        if let Some(options) = search {
            chat.insert("web_search_options".into(), options);
        }
    }
    if let Some(choice) = given(body, "tool_choice") {
        chat.insert("tool_choice".into(), chat_tool_choice(choice)?);
    }
    if let Some(text) = given(body, "text") {
        let t = text
            .as_object()
            .ok_or_else(|| bad_type("text", "an object"))?;
        if let Some(f) = given(t, "format") {
            chat.insert("response_format".into(), response_format(f)?);
        }
        if let Some(v) = given(t, "verbosity") {
            chat.insert("verbosity".into(), v.clone());
        }
    }
    if let Some(r) = given(body, "reasoning") {
        let r = r
            .as_object()
            .ok_or_else(|| bad_type("reasoning", "an object"))?;
        if let Some(e) = given(r, "effort") {
            chat.insert("reasoning_effort".into(), e.clone());
        }
    }
    if stream {
        chat.insert("stream".into(), Value::Bool(true));
        // The final event carries the usage.
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }

    let mut request = JsonMap::new();
    for k in ECHOED {
        if let Some(v) = lookup(body, k) {
            request.insert((*k).into(), v.clone());
        }
    }
    Ok(Converted {
        chat,
        echo: Echo {
            id: id.to_string(),
            request,
            stream,
            sources,
            store,
            items,
            earlier: earlier.len(),
            previous: lookup(body, "previous_response_id")
                .and_then(Value::as_str)
                .map(str::to_string),
            conversation: conversation_id(body),
        },
        dropped,
    })
}

/// The input items, each with the path errors name it by, as chat messages.
fn input_items<'a>(
    items: impl Iterator<Item = (String, &'a Value)>,
    messages: &mut Vec<Value>,
    sources: &mut Vec<String>,
    dropped: &mut Vec<String>,
) -> Result<(), GatewayError> {
    // Claude's thinking blocks from a reasoning item, for the assistant
    // turn that follows it.
    let mut thinking: Vec<Value> = Vec::new();
    for (path, item) in items {
        let o = item
            .as_object()
            .ok_or_else(|| bad_type(&path, "an object"))?;
        let kind = match lookup(o, "type") {
            None | Some(Value::Null) if lookup(o, "role").is_some() => "message",
            Some(Value::String(t)) => t.as_str(),
            None | Some(Value::Null) => return Err(missing(&format!("{path}.type"))),
            Some(_) => return Err(bad_type(&format!("{path}.type"), "a string")),
        };
        match kind {
            "message" => {
                let mut m = message(o, &path)?;
                if m["role"] == "assistant" {
                    take_thinking(&mut m, &mut thinking);
                } else {
                    // Thinking with no assistant turn after it belongs to
                    // no turn (Claude keeps only the last turn's anyway).
                    thinking.clear();
                }
                messages.push(m);
                sources.push(path);
            }
            "function_call" | "custom_tool_call" => {
                let call_id = string_at(o, "call_id", &path)?;
                let name = string_at(o, "name", &path)?;
                let mut call = if kind == "custom_tool_call" {
                    let input = string_at(o, "input", &path)?;
                    json!({"id": call_id, "type": "custom", "custom": {"name": name, "input": input}})
                } else {
                    let arguments = string_at(o, "arguments", &path)?;
                    json!({"id": call_id, "type": "function",
                        "function": {"name": name, "arguments": arguments}})
                };
                if let Some(extra) = given(o, "extra_content") {
                    call["extra_content"] = extra.clone();
                }
                if !messages.last().is_some_and(|m| m["role"] == "assistant") {
                    sources.push(path.clone());
                    messages.push(json!({"role": "assistant", "content": null}));
                }
                let Some(turn) = messages.last_mut() else {
                    continue;
                };
                take_thinking(turn, &mut thinking);
                match turn.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(calls) => calls.push(call),
                    None => turn["tool_calls"] = json!([call]),
                }
            }
            "function_call_output" | "custom_tool_call_output" => {
                let call_id = string_at(o, "call_id", &path)?;
                let output = match lookup(o, "output") {
                    Some(Value::String(s)) => Value::String(s.clone()),
                    Some(Value::Array(parts)) => {
                        let mut texts = Vec::with_capacity(parts.len());
                        for (j, p) in parts.iter().enumerate() {
                            let pp = format!("{path}.output[{j}]");
                            let part = p.as_object().ok_or_else(|| bad_type(&pp, "an object"))?;
                            match lookup(part, "type").and_then(Value::as_str) {
                                Some("input_text" | "output_text") => texts.push(
                                    json!({"type": "text", "text": string_at(part, "text", &pp)?}),
                                ),
                                _ => return Err(bad(format!("{pp}.type"), "A tool call's output may carry text parts only (`input_text`) when it goes through the chat API.")),
                            }
                        }
                        Value::Array(texts)
                    }
                    None | Some(Value::Null) => return Err(missing(&format!("{path}.output"))),
                    Some(_) => {
                        return Err(bad_type(
                            &format!("{path}.output"),
                            "a string or an array of content parts",
                        ))
                    }
                };
                thinking.clear();
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
                sources.push(path);
            }
            "reasoning" => {
                let ours = given(o, "encrypted_content")
                    .and_then(Value::as_str)
                    .and_then(|s| s.strip_prefix(THINKING_PREFIX));
                match ours {
                    Some(blob) => thinking.extend(decode_thinking(blob).ok_or_else(|| {
                        bad(
                            format!("{path}.encrypted_content"),
                            "This reasoning item's `encrypted_content` is damaged; send it back as polyplex gave it.",
                        )
                    })?),
                    // Another service's reasoning state: no provider
                    // behind the chat API can read it.
                    None => {
                        let name = "input[].reasoning".to_string();
                        if !dropped.contains(&name) {
                            dropped.push(name);
                        }
                    }
                }
            }
            "item_reference" => {
                return Err(bad(
                    format!("{path}.type"),
                    "An `item_reference` points into a stored response; polyplex keeps none. Send the item itself.",
                ))
            }
            other => {
                return Err(bad(
                    format!("{path}.type"),
                    format!("Input items of type '{other}' belong to OpenAI's built-in tools, which polyplex does not run; messages, function calls, their outputs and reasoning items are supported."),
                ))
            }
        }
    }
    Ok(())
}

/// Puts the pending thinking blocks at the head of assistant turn `m`.
fn take_thinking(m: &mut Value, thinking: &mut Vec<Value>) {
    if thinking.is_empty() {
        return;
    }
    let blocks = std::mem::take(thinking);
    match m.get_mut("thinking_blocks").and_then(Value::as_array_mut) {
        Some(have) => have.extend(blocks),
        None => m["thinking_blocks"] = Value::Array(blocks),
    }
}

fn encode_thinking(blocks: &[Value]) -> String {
    let text = serde_json::to_vec(blocks).unwrap_or_default();
    format!(
        "{THINKING_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    )
}

fn decode_thinking(blob: &str) -> Option<Vec<Value>> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(blob)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// One `message` input item as a chat message.
fn message(o: &JsonMap, path: &str) -> Result<Value, GatewayError> {
    let role = string_at(o, "role", path)?;
    if !matches!(role, "user" | "system" | "developer" | "assistant") {
        return Err(bad(
            format!("{path}.role"),
            format!("'{role}' is not one of 'user', 'system', 'developer', 'assistant'."),
        ));
    }
    let content = match lookup(o, "content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => {
            if role == "assistant" {
                return assistant_parts(parts, path);
            }
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                out.push(content_part(p, &format!("{path}.content[{j}]"))?);
            }
            Value::Array(out)
        }
        None | Some(Value::Null) => return Err(missing(&format!("{path}.content"))),
        Some(_) => {
            return Err(bad_type(
                &format!("{path}.content"),
                "a string or an array of content parts",
            ))
        }
    };
    Ok(json!({"role": role, "content": content}))
}

/// An assistant message's parts (`output_text`, `refusal`) as chat's
/// assistant turn: its text, and its refusal.
fn assistant_parts(parts: &[Value], path: &str) -> Result<Value, GatewayError> {
    let (mut text, mut refusal) = (String::new(), None::<String>);
    for (j, p) in parts.iter().enumerate() {
        let pp = format!("{path}.content[{j}]");
        let part = p.as_object().ok_or_else(|| bad_type(&pp, "an object"))?;
        match lookup(part, "type").and_then(Value::as_str) {
            Some("output_text" | "input_text") => text.push_str(string_at(part, "text", &pp)?),
            Some("refusal") => refusal = Some(string_at(part, "refusal", &pp)?.to_string()),
            _ => {
                return Err(bad(
                    format!("{pp}.type"),
                    "An assistant message's content parts are `output_text` or `refusal`.",
                ))
            }
        }
    }
    let mut m = json!({"role": "assistant", "content": text});
    if let Some(r) = refusal {
        if text.is_empty() {
            m["content"] = Value::Null;
        }
        m["refusal"] = Value::String(r);
    }
    Ok(m)
}

/// One content part of a user, system or developer message, in chat's shape.
fn content_part(p: &Value, path: &str) -> Result<Value, GatewayError> {
    let part = p.as_object().ok_or_else(|| bad_type(path, "an object"))?;
    let kind = match lookup(part, "type") {
        Some(Value::String(t)) => t.as_str(),
        None | Some(Value::Null) => return Err(missing(&format!("{path}.type"))),
        Some(_) => return Err(bad_type(&format!("{path}.type"), "a string")),
    };
    Ok(match kind {
        "input_text" | "output_text" => {
            json!({"type": "text", "text": string_at(part, "text", path)?})
        }
        "input_image" => {
            if given(part, "file_id").is_some() && given(part, "image_url").is_none() {
                return Err(bad(format!("{path}.file_id"), "A `file_id` points into OpenAI's file store, which polyplex does not reach; send the image as `image_url` (a URL or a data URL)."));
            }
            let url = string_at(part, "image_url", path)?;
            let mut image = json!({"url": url});
            if let Some(d) = given(part, "detail") {
                image["detail"] = d.clone();
            }
            json!({"type": "image_url", "image_url": image})
        }
        "input_file" => {
            if given(part, "file_url").is_some() {
                return Err(bad(format!("{path}.file_url"), "polyplex does not fetch files by URL; send the file's contents as `file_data` (a data URL) with its `filename`."));
            }
            let mut file = Map::new();
            for k in ["file_data", "file_id", "filename"] {
                if let Some(v) = given(part, k) {
                    file.insert(k.into(), v.clone());
                }
            }
            if file.get("file_data").is_none() && file.get("file_id").is_none() {
                return Err(missing(&format!("{path}.file_data")));
            }
            json!({"type": "file", "file": file})
        }
        "input_audio" => {
            let audio = given(part, "input_audio")
                .ok_or_else(|| missing(&format!("{path}.input_audio")))?;
            json!({"type": "input_audio", "input_audio": audio})
        }
        other => {
            return Err(bad(
                format!("{path}.type"),
                format!(
                "'{other}' is not one of 'input_text', 'input_image', 'input_file', 'input_audio'."
            ),
            ))
        }
    })
}

/// Responses' web search tool as chat's `web_search_options`: its
/// `search_context_size`, and its flat approximate `user_location` nested
/// as chat nests it. Domain `filters` have no place in chat's: refused.
fn web_search_options(o: &Map<String, Value>, path: &str) -> Result<Value, GatewayError> {
    let mut options = Map::new();
    for (k, v) in o {
        match k.as_str() {
            "type" => {}
            "search_context_size" => {
                options.insert(k.clone(), v.clone());
            }
            "user_location" if v.is_null() => {}
            "user_location" => {
                let loc = v
                    .as_object()
                    .ok_or_else(|| bad_type(&format!("{path}.user_location"), "an object"))?;
                let mut approximate = Map::new();
                for (lk, lv) in loc {
                    if lk != "type" && !lv.is_null() {
                        approximate.insert(lk.clone(), lv.clone());
                    }
                }
                let kind = loc.get("type").cloned().unwrap_or(json!("approximate"));
                options.insert(
                    "user_location".into(),
                    json!({"type": kind, "approximate": approximate}),
                );
            }
            other => {
                return Err(bad(
                    format!("{path}.{other}"),
                    format!("The web search tool's '{other}' has no equivalent in the chat API polyplex serves the Responses API through."),
                )
                .with_code("unsupported_parameter"))
            }
        }
    }
    Ok(Value::Object(options))
}

/// Responses' flat function tools as chat's nested ones, and its web search
/// tool as chat's `web_search_options` (searched where the provider has a
/// search of its own: OpenAI's search models, Claude, Gemini).
fn chat_tools(tools: &Value) -> Result<(Value, Option<Value>), GatewayError> {
    let list = tools
        .as_array()
        .ok_or_else(|| bad_type("tools", "an array"))?;
    let mut out = Vec::with_capacity(list.len());
    let mut search = None;
    for (i, t) in list.iter().enumerate() {
        let path = format!("tools[{i}]");
        let o = t.as_object().ok_or_else(|| bad_type(&path, "an object"))?;
        match lookup(o, "type").and_then(Value::as_str) {
            Some("function") => {}
            Some("web_search" | "web_search_preview" | "web_search_2025_08_26" | "web_search_preview_2025_03_11") => {
                if search.is_some() {
                    return Err(bad(path, "Only one web search tool can be given."));
                }
                search = Some(web_search_options(o, &path)?);
                continue;
            }
            // GPT-5's free-form tools: chat has them too (OpenAI's
            // protocol; the others refuse them by name).
            Some("custom") => {
                let mut c = Map::new();
                c.insert(
                    "name".into(),
                    Value::String(string_at(o, "name", &path)?.to_string()),
                );
                if let Some(v) = given(o, "description") {
                    c.insert("description".into(), v.clone());
                }
                if let Some(f) = given(o, "format") {
                    // A grammar's definition and syntax sit in the format
                    // itself here, under `grammar` in chat's.
                    let grammar = f.get("type").and_then(Value::as_str) == Some("grammar");
                    let f = if grammar {
                        json!({"type": "grammar", "grammar": {
                            "definition": f.get("definition").cloned().unwrap_or(Value::Null),
                            "syntax": f.get("syntax").cloned().unwrap_or(Value::Null)}})
                    } else {
                        f.clone()
                    };
                    c.insert("format".into(), f);
                }
                out.push(json!({"type": "custom", "custom": c}));
                continue;
            }
            Some(other) => {
                return Err(bad(
                    format!("{path}.type"),
                    format!("The '{other}' tool is built into OpenAI's Responses service and runs there; polyplex serves the Responses API through the chat API of every provider, which takes function tools only."),
                ))
            }
            None => return Err(missing(&format!("{path}.type"))),
        }
        let mut f = Map::new();
        f.insert(
            "name".into(),
            Value::String(string_at(o, "name", &path)?.to_string()),
        );
        for k in ["description", "parameters", "strict"] {
            if let Some(v) = given(o, k) {
                f.insert(k.into(), v.clone());
            }
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok((Value::Array(out), search))
}

fn chat_tool_choice(choice: &Value) -> Result<Value, GatewayError> {
    let function = |name: &Value| json!({"type": "function", "function": {"name": name}});
    let custom = |name: &Value| json!({"type": "custom", "custom": {"name": name}});
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(o) => match lookup(o, "type").and_then(Value::as_str) {
            Some("function") => {
                let name = string_at(o, "name", "tool_choice")?;
                Ok(function(&Value::String(name.into())))
            }
            Some("custom") => {
                let name = string_at(o, "name", "tool_choice")?;
                Ok(custom(&Value::String(name.into())))
            }
            Some("allowed_tools") => {
                let tools = given(o, "tools")
                    .and_then(Value::as_array)
                    .ok_or_else(|| missing("tool_choice.tools"))?;
                let mut named = Vec::with_capacity(tools.len());
                for (i, t) in tools.iter().enumerate() {
                    let path = format!("tool_choice.tools[{i}]");
                    let t = t.as_object().ok_or_else(|| bad_type(&path, "an object"))?;
                    let name = || string_at(t, "name", &path).map(|n| Value::String(n.into()));
                    match lookup(t, "type").and_then(Value::as_str) {
                        Some("function") => named.push(function(&name()?)),
                        Some("custom") => named.push(custom(&name()?)),
                        _ => return Err(bad(format!("{path}.type"), "Only function and custom tools can be allowed here.")),
                    }
                }
                let mode = given(o, "mode").cloned().unwrap_or(json!("auto"));
                Ok(json!({"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": named}}))
            }
            Some(other) => Err(bad(
                "tool_choice.type",
                format!("A tool choice of type '{other}' names a built-in tool; polyplex takes 'function', 'custom' and 'allowed_tools'."),
            )),
            None => Err(missing("tool_choice.type")),
        },
        _ => Err(bad_type("tool_choice", "a string or an object")),
    }
}

/// `text.format` as chat's `response_format`.
fn response_format(f: &Value) -> Result<Value, GatewayError> {
    let o = f
        .as_object()
        .ok_or_else(|| bad_type("text.format", "an object"))?;
    match lookup(o, "type").and_then(Value::as_str) {
        Some("text") => Ok(json!({"type": "text"})),
        Some("json_object") => Ok(json!({"type": "json_object"})),
        Some("json_schema") => {
            let mut s = Map::new();
            s.insert(
                "name".into(),
                Value::String(string_at(o, "name", "text.format")?.into()),
            );
            if given(o, "schema").is_none() {
                return Err(missing("text.format.schema"));
            }
            for k in ["schema", "strict", "description"] {
                if let Some(v) = given(o, k) {
                    s.insert(k.into(), v.clone());
                }
            }
            Ok(json!({"type": "json_schema", "json_schema": s}))
        }
        Some(other) => Err(bad(
            "text.format.type",
            format!("'{other}' is not one of 'text', 'json_object', 'json_schema'."),
        )),
        None => Err(missing("text.format.type")),
    }
}

/// Chat's parameters that the Responses API names otherwise.
const RENAMED: &[(&str, &str)] = &[
    ("max_completion_tokens", "max_output_tokens"),
    ("reasoning_effort", "reasoning.effort"),
    ("response_format.json_schema", "text.format"),
    ("response_format", "text.format"),
    ("verbosity", "text.verbosity"),
];

impl Echo {
    /// A chat parameter's name as the Responses request called it (the
    /// `param` of an error chat's validation found, a dropped parameter).
    pub fn param(&self, chat: &str) -> String {
        let whole = |rest: &str| rest.is_empty() || rest.starts_with(['.', '[']);
        for (from, to) in RENAMED {
            if let Some(rest) = chat.strip_prefix(from).filter(|r| whole(r)) {
                return format!("{to}{rest}");
            }
        }
        if let Some(rest) = chat.strip_prefix("messages[") {
            let (index, rest) = rest.split_once(']').unwrap_or((rest, ""));
            let Ok(k) = index.parse::<usize>() else {
                // `messages[]`: any message.
                return format!("input[]{rest}");
            };
            let Some(source) = self.sources.get(k) else {
                return "input".into();
            };
            // A tool call's fields are the item's own; chat's extra
            // levels (`.function`, `image_url.url`) are not in its input.
            let rest = match rest.split_once(".tool_calls") {
                Some(_) => "",
                None => rest.strip_suffix(".image_url.url").unwrap_or(rest),
            };
            // `instructions`, a string `input`, an item of the continued
            // response: named whole; an input item with the path inside it.
            return if source.ends_with(']') {
                format!("{source}{rest}")
            } else {
                source.clone()
            };
        }
        // The request's tools, the web search tool among them (chat's
        // `web_search_options`, not one of its tools).
        let tools = self.request.get("tools").and_then(Value::as_array);
        let searching = |t: &&Value| {
            t.get("type")
                .and_then(Value::as_str)
                .is_some_and(|k| k.starts_with("web_search"))
        };
        if let Some(rest) = chat.strip_prefix("tools[") {
            let rest = rest.replacen("].function.", "].", 1);
            let (index, rest) = rest.split_once(']').unwrap_or((&rest, ""));
            let at = index.parse::<usize>().ok().and_then(|k| {
                tools.and_then(|t| {
                    t.iter()
                        .enumerate()
                        .filter(|(_, t)| !searching(t))
                        .nth(k)
                        .map(|(i, _)| i)
                })
            });
            return match at {
                Some(i) => format!("tools[{i}]{rest}"),
                None => format!("tools[{index}]{rest}"),
            };
        }
        // Chat's web search options are the web search tool's own fields
        // (the location flat in it).
        if let Some(rest) = chat.strip_prefix("web_search_options").filter(|r| whole(r)) {
            let rest = rest.replacen(".user_location.approximate", ".user_location", 1);
            return match tools.and_then(|t| t.iter().position(|t| searching(&t))) {
                Some(i) => format!("tools[{i}]{rest}"),
                None => format!("tools{rest}"),
            };
        }
        chat.to_string()
    }

    /// An error message of chat's validation (about `chat`), naming
    /// parameters as the Responses request called them.
    pub fn message(&self, message: &str, chat: &str) -> String {
        let mut out = message.replace(chat, &self.param(chat));
        for (from, to) in RENAMED {
            if out.contains(from) {
                out = out.replace(from, to);
            }
        }
        out
    }
}

/// The items a kept response is stored with: what it added to the
/// conversation it answered (`echo.items` after those of the response it
/// continued, kept with that one), then its output.
pub fn stored_items(echo: &Echo, response: &Value) -> Vec<Value> {
    let mut items = echo.items[echo.earlier.min(echo.items.len())..].to_vec();
    if let Some(out) = response.get("output").and_then(Value::as_array) {
        items.extend(out.iter().cloned());
    }
    items
}

/// A kept input item as OpenAI lists it (`GET .../input_items`): with an
/// id (made from the response's id and the item's place when the client
/// gave none), a message's text as a list of parts — `input_text`, or
/// `output_text` for an assistant's — whatever shape the client sent.
pub fn listed_item(mut item: Value, response_id: &str, index: usize) -> Value {
    let Some(o) = item.as_object_mut() else {
        return item;
    };
    if !o.contains_key("type") && o.contains_key("role") {
        o.insert("type".into(), json!("message"));
    }
    let kind = o
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind == "message" {
        if let Some(Value::String(text)) = o.get("content") {
            let part = if o.get("role").and_then(Value::as_str) == Some("assistant") {
                json!({"type": "output_text", "text": text, "annotations": []})
            } else {
                json!({"type": "input_text", "text": text})
            };
            o.insert("content".into(), json!([part]));
        }
        o.entry("status").or_insert_with(|| json!("completed"));
    }
    if !o.contains_key("id") {
        let prefix = match kind.as_str() {
            "message" => "msg",
            "function_call" => "fc",
            "function_call_output" => "fco",
            "custom_tool_call" => "ctc",
            "custom_tool_call_output" => "ctco",
            "reasoning" => "rs",
            _ => "item",
        };
        let stem = response_id.strip_prefix("resp_").unwrap_or(response_id);
        o.insert("id".into(), json!(format!("{prefix}_{stem}i{index:02x}")));
    }
    item
}

/// One page of a kept response's input items or a conversation's items, as OpenAI's list answers
/// `GET .../input_items?order=&limit=&after=`: newest first unless
/// `order=asc`, at most `limit` (1–100, 20 by default) after the item
/// whose id is `after`, and whether more follow.
pub fn item_page(items: Vec<Value>, query: Option<&str>) -> Result<Value, GatewayError> {
    page_of(items, query, 20, 100)
}

/// One page of `items` (oldest first) as OpenAI's lists answer it: newest
/// first unless `order=asc`, at most `limit` (1 to `most`, `default`
/// unless given) after the item whose id is `after`.
pub fn page_of(
    mut items: Vec<Value>,
    query: Option<&str>,
    default: usize,
    most: usize,
) -> Result<Value, GatewayError> {
    let mut ascending = false;
    let mut limit = default;
    let mut after = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "order" => match v.as_ref() {
                "asc" => ascending = true,
                "desc" => ascending = false,
                other => {
                    return Err(GatewayError::invalid_param(
                        "order",
                        format!("Invalid value for 'order': '{other}'. Expected 'asc' or 'desc'."),
                    ))
                }
            },
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=most).contains(&n) => limit = n,
                _ => {
                    return Err(GatewayError::invalid_param(
                        "limit",
                        format!("Invalid 'limit': '{v}'. Expected an integer from 1 to {most}."),
                    ))
                }
            },
            "after" => after = Some(v.into_owned()),
            _ => {}
        }
    }
    if !ascending {
        items.reverse();
    }
    let start = match &after {
        None => 0,
        Some(a) => match items
            .iter()
            .position(|i| i.get("id").and_then(Value::as_str) == Some(a))
        {
            Some(at) => at + 1,
            None => {
                return Err(GatewayError::invalid_param(
                    "after",
                    format!("No item with id '{a}' in this list."),
                ))
            }
        },
    };
    let rest = items.len().saturating_sub(start);
    let page: Vec<Value> = items.into_iter().skip(start).take(limit).collect();
    let id_of = |v: Option<&Value>| v.and_then(|v| v.get("id")).cloned().unwrap_or(Value::Null);
    Ok(
        json!({"object": "list", "first_id": id_of(page.first()), "last_id": id_of(page.last()),
        "has_more": rest > limit, "data": page}),
    )
}

// ---- answers ----

fn item_id(echo: &Echo, prefix: &str, index: usize) -> String {
    let stem = echo.id.strip_prefix("resp_").unwrap_or(&echo.id);
    format!("{prefix}_{stem}{index:02x}")
}

/// A Response object with `status`, `output` and `usage` (the rest: what
/// the request set, or OpenAI's defaults).
fn response(
    echo: &Echo,
    created_at: i64,
    model: &str,
    status: &str,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    let r = &echo.request;
    let or = |k: &str, d: Value| lookup(r, k).filter(|v| !v.is_null()).cloned().unwrap_or(d);
    let mut o = json!({
        "id": echo.id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": false,
        "error": null,
        "incomplete_details": null,
        "instructions": or("instructions", Value::Null),
        "max_output_tokens": or("max_output_tokens", Value::Null),
        "max_tool_calls": or("max_tool_calls", Value::Null),
        "model": model,
        "output": output,
        "parallel_tool_calls": or("parallel_tool_calls", json!(true)),
        "previous_response_id": or("previous_response_id", Value::Null),
        "reasoning": or("reasoning", json!({"effort": null, "summary": null})),
        "service_tier": or("service_tier", json!("default")),
        "store": echo.store,
        "temperature": or("temperature", json!(1.0)),
        "text": or("text", json!({"format": {"type": "text"}})),
        "tool_choice": or("tool_choice", json!("auto")),
        "tools": or("tools", json!([])),
        "top_logprobs": or("top_logprobs", json!(0)),
        "top_p": or("top_p", json!(1.0)),
        "truncation": or("truncation", json!("disabled")),
        "usage": usage,
        "user": or("user", Value::Null),
        "metadata": or("metadata", json!({})),
    });
    for k in ["safety_identifier", "prompt_cache_key"] {
        if let Some(v) = lookup(r, k) {
            o[k] = v.clone();
        }
    }
    if let Some(c) = &echo.conversation {
        o["conversation"] = json!({"id": c});
    }
    o
}

/// Chat's `usage` in the Responses shape (`input_tokens`, ...), its `cost`
/// kept.
fn usage(chat: Option<&Value>) -> Value {
    let Some(u) = chat.filter(|u| u.is_object()) else {
        return Value::Null;
    };
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let mut input_details = json!({"cached_tokens": n("/prompt_tokens_details/cached_tokens")});
    if let Some(w) = u.pointer("/prompt_tokens_details/cache_write_tokens") {
        input_details["cache_write_tokens"] = w.clone();
    }
    let mut out = json!({
        "input_tokens": n("/prompt_tokens"),
        "input_tokens_details": input_details,
        "output_tokens": n("/completion_tokens"),
        "output_tokens_details": {"reasoning_tokens": n("/completion_tokens_details/reasoning_tokens")},
        "total_tokens": n("/total_tokens"),
    });
    if let Some(c) = u.get("cost") {
        out["cost"] = c.clone();
    }
    out
}

/// `status` and `incomplete_details` for chat's finish reason.
fn ending(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn reasoning_item(id: &str, text: &str, blocks: &[Value]) -> Value {
    let summary = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "summary_text", "text": text}])
    };
    let mut item = json!({"id": id, "type": "reasoning", "summary": summary});
    if !blocks.is_empty() {
        item["encrypted_content"] = Value::String(encode_thinking(blocks));
    }
    item
}

fn text_part(text: &str, logprobs: &[Value], annotations: &[Value]) -> Value {
    json!({"type": "output_text", "text": text, "annotations": annotations, "logprobs": logprobs})
}

/// A chat message's annotation (`{"type": "url_citation", "url_citation":
/// {...}}`) in Responses' flat shape.
fn annotation(chat: &Value) -> Value {
    let mut flat = Map::new();
    flat.insert(
        "type".into(),
        chat.get("type").cloned().unwrap_or(json!("url_citation")),
    );
    if let Some(Value::Object(inner)) = chat.get("url_citation") {
        for (k, v) in inner {
            flat.insert(k.clone(), v.clone());
        }
    }
    Value::Object(flat)
}

/// A chat message's annotations in Responses' shape.
fn annotations_of(msg: &Value) -> Vec<Value> {
    msg.get("annotations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(annotation)
        .collect()
}

fn refusal_part(text: &str) -> Value {
    json!({"type": "refusal", "refusal": text})
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

/// A function call's output item, or a custom (free-form) tool's, whose
/// input is text (`custom`).
fn call_item(
    id: &str,
    status: &str,
    call_id: &str,
    name: &str,
    args: &str,
    extra: Option<&Value>,
    custom: bool,
) -> Value {
    let mut item = if custom {
        json!({"id": id, "type": "custom_tool_call", "status": status,
            "call_id": call_id, "name": name, "input": args})
    } else {
        json!({"id": id, "type": "function_call", "status": status,
            "call_id": call_id, "name": name, "arguments": args})
    };
    if let Some(e) = extra {
        item["extra_content"] = e.clone();
    }
    item
}

fn logprob_list(choice: &Value) -> Vec<Value> {
    choice
        .pointer("/logprobs/content")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Whether a chat tool call (or its first delta) calls a custom tool.
fn is_custom(tc: &Value) -> bool {
    tc.get("type").and_then(Value::as_str) == Some("custom") || tc.get("custom").is_some()
}

/// A chat completion as the Response object that answers the request.
pub fn response_object(chat: &Value, echo: &Echo) -> Value {
    let choice = chat.pointer("/choices/0").unwrap_or(&Value::Null);
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let text_of = |k: &str| msg.get(k).and_then(Value::as_str).unwrap_or("");
    let mut output = Vec::new();
    let blocks = msg
        .get("thinking_blocks")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if !text_of("reasoning_content").is_empty() || !blocks.is_empty() {
        let id = item_id(echo, "rs", output.len());
        output.push(reasoning_item(&id, text_of("reasoning_content"), blocks));
    }
    let mut parts = Vec::new();
    if !text_of("content").is_empty() {
        parts.push(text_part(
            text_of("content"),
            &logprob_list(choice),
            &annotations_of(msg),
        ));
    }
    if !text_of("refusal").is_empty() {
        parts.push(refusal_part(text_of("refusal")));
    }
    if !parts.is_empty() {
        let id = item_id(echo, "msg", output.len());
        output.push(message_item(&id, "completed", parts));
    }
    for tc in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |p: &str| tc.pointer(p).and_then(Value::as_str).unwrap_or("");
        let custom = is_custom(tc);
        let id = item_id(echo, if custom { "ctc" } else { "fc" }, output.len());
        let (name, args) = if custom {
            (s("/custom/name"), s("/custom/input"))
        } else {
            (s("/function/name"), s("/function/arguments"))
        };
        output.push(call_item(
            &id,
            "completed",
            s("/id"),
            name,
            args,
            tc.get("extra_content"),
            custom,
        ));
    }
    let (status, incomplete) = ending(choice.get("finish_reason").and_then(Value::as_str));
    let mut r = response(
        echo,
        chat.get("created").and_then(Value::as_i64).unwrap_or(0),
        chat.get("model").and_then(Value::as_str).unwrap_or(""),
        status,
        output,
        usage(chat.get("usage")),
    );
    r["incomplete_details"] = incomplete;
    r
}

// ---- streams ----

/// The message part being streamed.
#[derive(Debug, Default)]
struct OpenPart {
    /// A refusal, not text.
    refusal: bool,
    text: String,
    logprobs: Vec<Value>,
    /// The text's annotations (web search citations), in Responses' shape.
    annotations: Vec<Value>,
}

impl OpenPart {
    /// The part as it stands.
    fn part(&self) -> Value {
        if self.refusal {
            refusal_part(&self.text)
        } else {
            text_part(&self.text, &self.logprobs, &self.annotations)
        }
    }
}

#[derive(Debug)]
enum Item {
    Reasoning {
        text: String,
        blocks: Vec<Value>,
    },
    Message {
        /// Finished parts, then the open one.
        parts: Vec<Value>,
        open: Option<OpenPart>,
    },
    Call {
        chat_index: u64,
        call_id: String,
        name: String,
        /// A function's arguments, or a custom tool's input.
        args: String,
        extra: Option<Value>,
        custom: bool,
    },
}

/// Turns a chat completion stream's chunks into the Responses stream's
/// events, one output item after another: reasoning, then the message,
/// then each function call (a call stays open until the stream ends, as
/// chat may interleave the arguments of parallel calls).
#[derive(Debug)]
pub struct Streamer {
    echo: Echo,
    seq: u64,
    started: bool,
    ended: bool,
    model: String,
    created_at: i64,
    /// Every output item so far, with whether it is done.
    items: Vec<(String, Item, bool)>,
    finish: Option<String>,
    usage: Option<Value>,
    /// The Response the stream ended with (completed, incomplete or failed).
    last: Option<Value>,
}

impl Streamer {
    pub fn new(echo: Echo) -> Self {
        Streamer {
            echo,
            seq: 0,
            started: false,
            ended: false,
            model: String::new(),
            created_at: 0,
            items: Vec::new(),
            finish: None,
            usage: None,
            last: None,
        }
    }

    /// The Response the stream ended with, once it has.
    pub fn final_response(&self) -> Option<&Value> {
        self.last.as_ref()
    }

    /// The request's echo.
    pub fn echo(&self) -> &Echo {
        &self.echo
    }

    /// Whether the stream has said how it ended.
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut data: Value) {
        data["type"] = Value::String(kind.into());
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        let _ = serde_json::to_writer(&mut *out, &data);
        out.extend_from_slice(b"\n\n");
    }

    fn snapshot(&self, status: &str, output: Vec<Value>, usage: Value) -> Value {
        response(
            &self.echo,
            self.created_at,
            &self.model,
            status,
            output,
            usage,
        )
    }

    fn start(&mut self, out: &mut Vec<u8>, chunk: Option<&Value>) {
        if self.started {
            return;
        }
        self.started = true;
        if let Some(c) = chunk {
            self.model = c.get("model").and_then(Value::as_str).unwrap_or("").into();
            self.created_at = c.get("created").and_then(Value::as_i64).unwrap_or(0);
        }
        let r = self.snapshot("in_progress", Vec::new(), Value::Null);
        self.emit(out, "response.created", json!({"response": r}));
        self.emit(out, "response.in_progress", json!({"response": r}));
    }

    /// One chat chunk (its JSON).
    pub fn on_chunk(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        self.start(out, Some(chunk));
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        let text_of = |k: &str| {
            delta
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        if let Some(t) = text_of("reasoning_content") {
            let i = self.reasoning(out);
            self.reason(i, t, out);
        }
        if let Some(blocks) = delta.get("thinking_blocks").and_then(Value::as_array) {
            let i = self.reasoning(out);
            if let Item::Reasoning { blocks: have, .. } = &mut self.items[i].1 {
                have.extend(blocks.iter().cloned());
            }
        }
        if let Some(t) = text_of("content") {
            self.say(false, t, logprob_list(choice), out);
        }
        if let Some(t) = text_of("refusal") {
            self.say(true, t, Vec::new(), out);
        }
        if let Some(a) = delta.get("annotations").and_then(Value::as_array) {
            self.annotate(a, out);
        }
        for tc in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.call(tc, out);
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_string());
        }
    }

    /// The open reasoning item's index, opened if need be.
    fn reasoning(&mut self, out: &mut Vec<u8>) -> usize {
        if let Some(i) = self
            .items
            .iter()
            .position(|(_, it, done)| !done && matches!(it, Item::Reasoning { .. }))
        {
            return i;
        }
        self.close_open(out, false);
        let i = self.items.len();
        let id = item_id(&self.echo, "rs", i);
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": i, "item": reasoning_item(&id, "", &[])}),
        );
        self.items.push((
            id,
            Item::Reasoning {
                text: String::new(),
                blocks: Vec::new(),
            },
            false,
        ));
        i
    }

    fn reason(&mut self, i: usize, delta: &str, out: &mut Vec<u8>) {
        let id = self.items[i].0.clone();
        let first = matches!(&self.items[i].1, Item::Reasoning { text, .. } if text.is_empty());
        if first {
            self.emit(
                out,
                "response.reasoning_summary_part.added",
                json!({"item_id": id, "output_index": i,
                "summary_index": 0, "part": {"type": "summary_text", "text": ""}}),
            );
        }
        if let Item::Reasoning { text, .. } = &mut self.items[i].1 {
            text.push_str(delta);
        }
        self.emit(
            out,
            "response.reasoning_summary_text.delta",
            json!({"item_id": id, "output_index": i,
            "summary_index": 0, "delta": delta}),
        );
    }

    /// Text (or a refusal) of the message item, opened if need be.
    fn say(&mut self, refusal: bool, delta: &str, logprobs: Vec<Value>, out: &mut Vec<u8>) {
        let open = self
            .items
            .iter()
            .position(|(_, it, done)| !done && matches!(it, Item::Message { .. }));
        let i = match open {
            Some(i) => i,
            None => {
                self.close_open(out, false);
                let i = self.items.len();
                let id = item_id(&self.echo, "msg", i);
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": i,
                    "item": message_item(&id, "in_progress", Vec::new())}),
                );
                self.items.push((
                    id,
                    Item::Message {
                        parts: Vec::new(),
                        open: None,
                    },
                    false,
                ));
                i
            }
        };
        let id = self.items[i].0.clone();
        let Item::Message { parts, open } = &mut self.items[i].1 else {
            return;
        };
        let switch = open.as_ref().is_some_and(|p| p.refusal != refusal);
        let mut events = Vec::new();
        if switch {
            if let Some(done) = close_part(&id, i, parts, open) {
                events.extend(done);
            }
        }
        if open.is_none() {
            let fresh = OpenPart {
                refusal,
                ..OpenPart::default()
            };
            events.push((
                "response.content_part.added",
                json!({"item_id": id, "output_index": i, "content_index": parts.len(), "part": fresh.part()}),
            ));
            *open = Some(fresh);
        }
        let index = parts.len();
        if let Some(OpenPart {
            text,
            logprobs: lps,
            ..
        }) = open.as_mut()
        {
            text.push_str(delta);
            if refusal {
                events.push((
                    "response.refusal.delta",
                    json!({"item_id": id, "output_index": i, "content_index": index, "delta": delta}),
                ));
            } else {
                lps.extend(logprobs.iter().cloned());
                events.push((
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": i, "content_index": index, "delta": delta, "logprobs": logprobs}),
                ));
            }
        }
        for (kind, data) in events {
            self.emit(out, kind, data);
        }
    }

    /// Annotations of the text streamed so far (web search citations): on
    /// the open text part, each announced.
    fn annotate(&mut self, chat: &[Value], out: &mut Vec<u8>) {
        let Some(i) = self
            .items
            .iter()
            .position(|(_, it, done)| !done && matches!(it, Item::Message { .. }))
        else {
            return;
        };
        let id = self.items[i].0.clone();
        let Item::Message {
            parts,
            open: Some(p),
        } = &mut self.items[i].1
        else {
            return;
        };
        if p.refusal {
            return;
        }
        let content_index = parts.len();
        let mut events = Vec::with_capacity(chat.len());
        for a in chat {
            let a = annotation(a);
            events.push(
                json!({"item_id": id, "output_index": i, "content_index": content_index,
                "annotation_index": p.annotations.len(), "annotation": a}),
            );
            p.annotations.push(a);
        }
        for e in events {
            self.emit(out, "response.output_text.annotation.added", e);
        }
    }

    /// A chat tool-call delta: a new call opens its item, arguments go to
    /// the call's item.
    fn call(&mut self, tc: &Value, out: &mut Vec<u8>) {
        let index = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
        let known = self.items.iter().position(|(_, it, done)| {
            !done && matches!(it, Item::Call { chat_index, .. } if *chat_index == index)
        });
        let i = match known {
            Some(i) => i,
            None => {
                self.close_open(out, false);
                let i = self.items.len();
                let custom = is_custom(tc);
                let id = item_id(&self.echo, if custom { "ctc" } else { "fc" }, i);
                let s = |p: &str| {
                    tc.pointer(p)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                let call_id = s("/id");
                let name = s(if custom {
                    "/custom/name"
                } else {
                    "/function/name"
                });
                let extra = tc.get("extra_content").cloned();
                let item = call_item(
                    &id,
                    "in_progress",
                    &call_id,
                    &name,
                    "",
                    extra.as_ref(),
                    custom,
                );
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": i, "item": item}),
                );
                self.items.push((
                    id,
                    Item::Call {
                        chat_index: index,
                        call_id,
                        name,
                        args: String::new(),
                        extra,
                        custom,
                    },
                    false,
                ));
                i
            }
        };
        let custom = matches!(self.items[i].1, Item::Call { custom: true, .. });
        let Some(delta) = tc
            .pointer(if custom {
                "/custom/input"
            } else {
                "/function/arguments"
            })
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            return;
        };
        if let Item::Call { args, .. } = &mut self.items[i].1 {
            args.push_str(delta);
        }
        let id = self.items[i].0.clone();
        self.emit(
            out,
            if custom {
                "response.custom_tool_call_input.delta"
            } else {
                "response.function_call_arguments.delta"
            },
            json!({"item_id": id, "output_index": i, "delta": delta}),
        );
    }

    /// Closes the open items: all of them at the end (`calls`), else the
    /// reasoning and message items (function calls stay open).
    fn close_open(&mut self, out: &mut Vec<u8>, calls: bool) {
        for i in 0..self.items.len() {
            let (id, item, done) = &mut self.items[i];
            if *done || (!calls && matches!(item, Item::Call { .. })) {
                continue;
            }
            *done = true;
            let id = id.clone();
            let mut events: Vec<(&str, Value)> = Vec::new();
            let finished = match item {
                Item::Reasoning { text, blocks } => {
                    if !text.is_empty() {
                        events.push((
                            "response.reasoning_summary_text.done",
                            json!({"item_id": id,
                            "output_index": i, "summary_index": 0, "text": text}),
                        ));
                        events.push(("response.reasoning_summary_part.done", json!({"item_id": id,
                            "output_index": i, "summary_index": 0, "part": {"type": "summary_text", "text": text}})));
                    }
                    reasoning_item(&id, text, blocks)
                }
                Item::Message { parts, open } => {
                    if let Some(done) = close_part(&id, i, parts, open) {
                        events.extend(done);
                    }
                    message_item(&id, "completed", parts.clone())
                }
                Item::Call {
                    call_id,
                    name,
                    args,
                    extra,
                    custom,
                    ..
                } => {
                    events.push(if *custom {
                        (
                            "response.custom_tool_call_input.done",
                            json!({"item_id": id, "output_index": i, "input": args}),
                        )
                    } else {
                        (
                            "response.function_call_arguments.done",
                            json!({"item_id": id,
                            "output_index": i, "name": name, "arguments": args}),
                        )
                    });
                    call_item(
                        &id,
                        "completed",
                        call_id,
                        name,
                        args,
                        extra.as_ref(),
                        *custom,
                    )
                }
            };
            events.push((
                "response.output_item.done",
                json!({"output_index": i, "item": finished}),
            ));
            for (kind, data) in events {
                self.emit(out, kind, data);
            }
        }
    }

    fn output(&self) -> Vec<Value> {
        self.items
            .iter()
            .map(|(id, item, _)| match item {
                Item::Reasoning { text, blocks } => reasoning_item(id, text, blocks),
                Item::Message { parts, open } => {
                    let mut all = parts.clone();
                    all.extend(open.as_ref().map(OpenPart::part));
                    message_item(id, "completed", all)
                }
                Item::Call {
                    call_id,
                    name,
                    args,
                    extra,
                    custom,
                    ..
                } => call_item(
                    id,
                    "completed",
                    call_id,
                    name,
                    args,
                    extra.as_ref(),
                    *custom,
                ),
            })
            .collect()
    }

    /// The chat stream's `[DONE]`: every item closed, then
    /// `response.completed` (or `response.incomplete`) with the whole
    /// Response.
    pub fn on_done(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.start(out, None);
        self.close_open(out, true);
        let (status, incomplete) = ending(self.finish.as_deref());
        let mut r = self.snapshot(status, self.output(), usage(self.usage.as_ref()));
        r["incomplete_details"] = incomplete;
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, kind, json!({"response": r}));
        self.last = Some(r);
        self.ended = true;
    }

    /// The chat stream failed (`error` is OpenAI's error object): an
    /// `error` event, then `response.failed` with what came before.
    pub fn on_error(&mut self, error: &Value, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.start(out, None);
        let s = |k: &str| error.get(k).cloned().unwrap_or(Value::Null);
        let code = match s("code") {
            Value::Null => s("type"),
            c => c,
        };
        self.emit(
            out,
            "error",
            json!({"code": code, "message": s("message"), "param": s("param")}),
        );
        let mut r = self.snapshot("failed", self.output(), usage(self.usage.as_ref()));
        r["error"] = json!({"code": code, "message": s("message")});
        self.emit(out, "response.failed", json!({"response": r}));
        self.last = Some(r);
        self.ended = true;
    }
}

/// Closes a message item's open content part: its done events, the part
/// kept in `parts`.
fn close_part(
    id: &str,
    i: usize,
    parts: &mut Vec<Value>,
    open: &mut Option<OpenPart>,
) -> Option<Vec<(&'static str, Value)>> {
    let p = open.take()?;
    let index = parts.len();
    let part = p.part();
    let done = if p.refusal {
        (
            "response.refusal.done",
            json!({"item_id": id, "output_index": i, "content_index": index, "refusal": p.text}),
        )
    } else {
        (
            "response.output_text.done",
            json!({"item_id": id, "output_index": i, "content_index": index, "text": p.text, "logprobs": p.logprobs}),
        )
    };
    parts.push(part.clone());
    Some(vec![
        done,
        (
            "response.content_part.done",
            json!({"item_id": id, "output_index": i, "content_index": index, "part": part}),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input items are listed as OpenAI lists them whatever shape the
    /// client sent: ids, text as parts; paged by `order`, `limit`, `after`.
    #[test]
    fn input_items_are_listed_and_paged_as_openai_does() {
        let sent = [
            json!({"role": "user", "content": "hi"}),
            json!({"type": "message", "role": "assistant", "content": "hello"}),
            json!({"type": "function_call_output", "call_id": "c1", "output": "rain"}),
            json!({"type": "message", "id": "msg_given", "role": "user",
                "content": [{"type": "input_text", "text": "as parts"}]}),
        ];
        let listed: Vec<Value> = sent
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, item)| listed_item(item, "resp_abc", i))
            .collect();
        assert_eq!(
            listed[0],
            json!({"type": "message", "role": "user", "id": "msg_abci00", "status": "completed",
                "content": [{"type": "input_text", "text": "hi"}]})
        );
        assert_eq!(
            listed[1]["content"],
            json!([{"type": "output_text", "text": "hello", "annotations": []}])
        );
        assert_eq!(listed[2]["id"], "fco_abci02");
        assert_eq!(listed[3]["id"], "msg_given");
        assert_eq!(listed[3]["content"], sent[3]["content"]);

        let ids = |page: &Value| -> Vec<String> {
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_string())
                .collect()
        };
        let all = item_page(listed.clone(), None).unwrap();
        assert_eq!(
            ids(&all),
            ["msg_given", "fco_abci02", "msg_abci01", "msg_abci00"]
        );
        assert_eq!(
            (all["has_more"].clone(), all["first_id"].clone()),
            (json!(false), json!("msg_given"))
        );
        let first = item_page(listed.clone(), Some("order=asc&limit=3")).unwrap();
        assert_eq!(ids(&first), ["msg_abci00", "msg_abci01", "fco_abci02"]);
        assert_eq!(first["has_more"], true);
        let next = item_page(listed.clone(), Some("order=asc&limit=3&after=fco_abci02")).unwrap();
        assert_eq!(ids(&next), ["msg_given"]);
        assert_eq!(next["has_more"], false);
        for (q, param) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=x", "limit"),
            ("order=up", "order"),
            ("after=msg_none", "after"),
        ] {
            let e = item_page(listed.clone(), Some(q)).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.param.as_deref()),
                (400, Some(param)),
                "{q}"
            );
        }
    }

    fn convert_ok(body: Value) -> Converted {
        let Value::Object(m) = body else { panic!() };
        to_chat(m, "resp_abc", &[]).unwrap()
    }

    fn refused(body: Value) -> GatewayError {
        let Value::Object(m) = body else { panic!() };
        to_chat(m, "resp_abc", &[]).unwrap_err().1
    }

    #[test]
    fn a_conversation_with_tool_calls_becomes_chat_messages() {
        let c = convert_ok(json!({
            "model": "anthropic/claude-sonnet-4-5",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [],
                 "encrypted_content": encode_thinking(&[json!({"type": "thinking", "thinking": "hm", "signature": "s"})])},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
                {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "rain"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "sun"}]},
            ],
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "weather"},
            "max_output_tokens": 300,
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
            "reasoning": {"effort": "low", "summary": "auto"},
            "temperature": 1,
            "stream": true,
            "metadata": {"a": "b"},
            "store": true,
        }));
        assert_eq!(
            Value::Object(c.chat.clone()),
            json!({
                "model": "anthropic/claude-sonnet-4-5",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
                    {"role": "assistant", "content": "Checking.",
                     "thinking_blocks": [{"type": "thinking", "thinking": "hm", "signature": "s"}],
                     "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                        {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": "rain"},
                    {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "sun"}]},
                ],
                "max_completion_tokens": 300,
                "temperature": 1,
                "metadata": {"a": "b"},
                "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}, "strict": true}}],
                "tool_choice": {"type": "function", "function": {"name": "weather"}},
                "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
                "reasoning_effort": "low",
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
        assert!(c.dropped.is_empty());
        assert_eq!(c.echo.id, "resp_abc");
        assert!(c.echo.stream);
    }

    /// `conversation`: an id or `{"id"}`, never with `previous_response_id`.
    #[test]
    fn the_conversation_a_request_names() {
        let body = |v: Value| v.as_object().cloned().unwrap();
        let of = |v: Value| conversation_of(&body(v));
        assert_eq!(of(json!({"input": "hi"})).unwrap(), None);
        assert_eq!(
            of(json!({"conversation": "conv_1"})).unwrap().as_deref(),
            Some("conv_1")
        );
        assert_eq!(
            of(json!({"conversation": {"id": "conv_2"}}))
                .unwrap()
                .as_deref(),
            Some("conv_2")
        );
        for bad in [
            json!({"conversation": 7}),
            json!({"conversation": {"name": "x"}}),
            json!({"conversation": "conv_1", "previous_response_id": "resp_1"}),
        ] {
            assert_eq!(
                of(bad.clone()).unwrap_err().1.param.as_deref(),
                Some("conversation"),
                "{bad}"
            );
        }
        let c = to_chat(
            body(json!({"model": "m", "input": "hi", "conversation": "conv_1"})),
            "resp_a",
            &[],
        );
        assert_eq!(c.unwrap().echo.conversation.as_deref(), Some("conv_1"));
    }

    #[test]
    fn what_needs_a_stored_response_or_a_built_in_tool_is_refused_by_name() {
        let base = || json!({"model": "m", "input": "hi"});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        for (body, param) in [
            (
                with("previous_response_id", json!(7)),
                "previous_response_id",
            ),
            (with("background", json!(true)), "background"),
            (with("truncation", json!("auto")), "truncation"),
            (with("frobnicate", json!(1)), "frobnicate"),
            (
                with("tools", json!([{"type": "file_search"}])),
                "tools[0].type",
            ),
            (
                with(
                    "tools",
                    json!([{"type": "web_search", "filters": {"allowed_domains": ["a.example"]}}]),
                ),
                "tools[0].filters",
            ),
            (
                with("tool_choice", json!({"type": "file_search"})),
                "tool_choice.type",
            ),
            (
                with("input", json!([{"type": "item_reference", "id": "msg_1"}])),
                "input[0].type",
            ),
            (
                with("input", json!([{"type": "web_search_call", "id": "ws"}])),
                "input[0].type",
            ),
            (
                with(
                    "input",
                    json!([{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]),
                ),
                "input[0].content[0].file_id",
            ),
            (
                with("input", json!([{"role": "robot", "content": "x"}])),
                "input[0].role",
            ),
            (
                with(
                    "input",
                    json!([{"type": "function_call", "name": "f", "arguments": "{}"}]),
                ),
                "input[0].call_id",
            ),
            (
                with(
                    "text",
                    json!({"format": {"type": "json_schema", "schema": {}}}),
                ),
                "text.format.name",
            ),
            (json!({"input": "hi"}), "model"),
            (json!({"model": "m"}), "input"),
        ] {
            let e = refused(body.clone());
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert_eq!(e.status, 400);
        }
        // Defaults that ask for nothing are fine.
        convert_ok(with("background", json!(false)));
        convert_ok(with("truncation", json!("disabled")));
        convert_ok(with("previous_response_id", Value::Null));
        convert_ok(with("previous_response_id", json!("resp_1")));
    }

    #[test]
    fn thinking_goes_only_to_the_assistant_turn_right_after_it() {
        let blob =
            encode_thinking(&[json!({"type": "thinking", "thinking": "t", "signature": "s"})]);
        let c = convert_ok(json!({"model": "m", "input": [
            {"type": "reasoning", "summary": [], "encrypted_content": blob},
            {"role": "user", "content": "never mind"},
            {"role": "assistant", "content": "ok"}]}));
        assert!(c.chat["messages"][1].get("thinking_blocks").is_none());
        let e = refused(json!({"model": "m", "input": [
            {"type": "reasoning", "summary": [], "encrypted_content": "plx-thinking:%%%"}]}));
        assert_eq!(e.param.as_deref(), Some("input[0].encrypted_content"));
    }

    #[test]
    fn someone_elses_reasoning_state_is_named_dropped() {
        let c = convert_ok(json!({"model": "m", "input": [
            {"type": "reasoning", "id": "rs_x", "summary": [], "encrypted_content": "gAAAA..."},
            {"role": "user", "content": "again"}]}));
        assert_eq!(c.dropped, ["input[].reasoning"]);
        assert_eq!(
            c.chat["messages"],
            json!([{"role": "user", "content": "again"}])
        );
    }

    #[test]
    fn chat_parameter_names_are_given_back_in_the_responses_shape() {
        let c = convert_ok(json!({"model": "m", "instructions": "x", "input": [
            {"role": "user", "content": [{"type": "input_image", "image_url": "u"}]},
            {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "b", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "a", "output": "1"}]}));
        let p = |chat: &str| c.echo.param(chat);
        assert_eq!(p("max_completion_tokens"), "max_output_tokens");
        assert_eq!(p("reasoning_effort"), "reasoning.effort");
        assert_eq!(
            p("response_format.json_schema.schema"),
            "text.format.schema"
        );
        assert_eq!(p("tools[2].function.parameters"), "tools[2].parameters");
        assert_eq!(p("messages[].name"), "input[].name");
        assert_eq!(p("messages[0].content"), "instructions");
        assert_eq!(
            p("messages[1].content[0].image_url.url"),
            "input[0].content[0]"
        );
        assert_eq!(
            p("messages[2].tool_calls[1].function.arguments"),
            "input[1]"
        );
        assert_eq!(p("messages[3].tool_call_id"), "input[3].tool_call_id");
        assert_eq!(p("temperature"), "temperature");
        assert_eq!(p("messages_x"), "messages_x");
        // Chat's tools are the request's but its web search tool.
        let w = convert_ok(json!({"model": "m", "input": "x", "tools": [
            {"type": "web_search", "user_location": {"type": "approximate", "city": "Oslo"}},
            {"type": "function", "name": "f", "parameters": {"type": "object"}}]}));
        let p = |chat: &str| w.echo.param(chat);
        assert_eq!(p("tools[0].function.parameters"), "tools[1].parameters");
        assert_eq!(p("web_search_options"), "tools[0]");
        assert_eq!(
            p("web_search_options.user_location.approximate.city"),
            "tools[0].user_location.city"
        );
        // An item of the continued response is named by the id it came by.
        let Value::Object(m) = json!({"model": "m", "input": "and then?"}) else {
            panic!()
        };
        let earlier = [json!({"role": "user", "content": "hi"})];
        let c = to_chat(m, "resp_2", &earlier).unwrap();
        assert_eq!(c.echo.param("messages[0].content"), "previous_response_id");
        assert_eq!(c.echo.param("messages[1].content"), "input");
        assert_eq!(c.echo.items.len(), 2);
        assert_eq!(
            c.echo.message(
                "Invalid 'max_completion_tokens': too small.",
                "max_completion_tokens"
            ),
            "Invalid 'max_output_tokens': too small."
        );
        assert_eq!(
            c.echo.message(
                "reasoning_effort needs max_completion_tokens above 1024",
                "reasoning_effort"
            ),
            "reasoning.effort needs max_output_tokens above 1024"
        );
    }

    fn echo() -> Echo {
        let Value::Object(m) = json!({"model": "m", "input": "x", "instructions": "Be brief.", "max_output_tokens": 50})
        else {
            panic!()
        };
        to_chat(m, "resp_1f", &[]).unwrap().echo
    }

    #[test]
    fn a_chat_completion_becomes_a_response() {
        let chat = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "claude-x",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
                "content": "Let me look.", "reasoning_content": "They want weather.",
                "thinking_blocks": [{"type": "thinking", "thinking": "They want weather.", "signature": "sig"}],
                "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "cost": 0.001,
                "prompt_tokens_details": {"cached_tokens": 4}}});
        let r = response_object(&chat, &echo());
        assert_eq!(r["id"], "resp_1f");
        assert_eq!(r["object"], "response");
        assert_eq!(
            (r["status"].as_str(), r["model"].as_str()),
            (Some("completed"), Some("claude-x"))
        );
        assert_eq!(r["instructions"], "Be brief.");
        assert_eq!(r["max_output_tokens"], 50);
        let out = r["output"].as_array().unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0]["type"], "reasoning");
        assert_eq!(out[0]["summary"][0]["text"], "They want weather.");
        let blob = out[0]["encrypted_content"].as_str().unwrap();
        assert_eq!(
            decode_thinking(blob.strip_prefix(THINKING_PREFIX).unwrap()).unwrap(),
            [json!({"type": "thinking", "thinking": "They want weather.", "signature": "sig"})]
        );
        assert_eq!(out[1]["content"][0]["text"], "Let me look.");
        assert_eq!(out[2]["call_id"], "toolu_1");
        assert_eq!(out[2]["type"], "function_call");
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 5,
                "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15, "cost": 0.001})
        );
        // Sent back as input, the output items make the same chat turn.
        let Value::Object(m) = json!({"model": "m", "input": out}) else {
            panic!()
        };
        let c = to_chat(m, "resp_2", &[]).unwrap();
        assert_eq!(
            c.chat["messages"][0]["thinking_blocks"],
            chat["choices"][0]["message"]["thinking_blocks"]
        );
        assert_eq!(
            c.chat["messages"][0]["tool_calls"],
            chat["choices"][0]["message"]["tool_calls"]
        );
        assert_eq!(c.chat["messages"][0]["content"], "Let me look.");
    }

    #[test]
    fn a_cut_answer_is_incomplete() {
        let chat = json!({"created": 1, "model": "m", "choices": [{"finish_reason": "length",
            "message": {"role": "assistant", "content": "Once upon"}}]});
        let r = response_object(&chat, &echo());
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    }

    /// A chat stream chunk of one choice.
    fn delta_chunk(delta: Value, finish: Value) -> Value {
        json!({"id": "c", "created": 9, "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    /// The Responses events a whole chat stream of `chunks` becomes.
    fn stream_events(chunks: &[Value]) -> Vec<Value> {
        let mut s = Streamer::new(echo());
        let mut out = Vec::new();
        for c in chunks {
            s.on_chunk(c, &mut out);
        }
        s.on_done(&mut out);
        assert!(s.ended());
        events(&out)
    }

    fn events(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).unwrap();
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (head, data) = e.split_once("\ndata: ").unwrap();
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(head.strip_prefix("event: ").unwrap(), v["type"]);
                v
            })
            .collect()
    }

    /// The web search tool is chat's `web_search_options`; citations come
    /// back as the text part's annotations, unary and streamed.
    #[test]
    fn web_search_goes_as_options_and_citations_come_back() {
        let c = convert_ok(json!({"model": "m", "input": "news?", "tools": [
            {"type": "web_search", "search_context_size": "low",
                "user_location": {"type": "approximate", "city": "Oslo", "country": "NO", "region": null}},
            {"type": "function", "name": "f", "parameters": {"type": "object"}}]}));
        assert_eq!(
            c.chat["web_search_options"],
            json!({"search_context_size": "low",
                "user_location": {"type": "approximate", "approximate": {"city": "Oslo", "country": "NO"}}})
        );
        assert_eq!(c.chat["tools"].as_array().unwrap().len(), 1);
        // Alone, it leaves chat no function tools.
        let c = convert_ok(
            json!({"model": "m", "input": "news?", "tools": [{"type": "web_search_preview"}]}),
        );
        assert!(c.chat.get("tools").is_none());
        assert_eq!(c.chat["web_search_options"], json!({}));
        let e = refused(
            json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}, {"type": "web_search"}]}),
        );
        assert_eq!(e.param.as_deref(), Some("tools[1]"));

        let cite = json!({"type": "url_citation", "url_citation": {"start_index": 4, "end_index": 9, "url": "https://a.example", "title": "A"}});
        let flat = json!({"type": "url_citation", "start_index": 4, "end_index": 9, "url": "https://a.example", "title": "A"});
        let chat = json!({"created": 1, "model": "m", "choices": [{"finish_reason": "stop",
            "message": {"role": "assistant", "content": "See: cited.", "annotations": [cite]}}]});
        let r = response_object(&chat, &echo());
        assert_eq!(r["output"][0]["content"][0]["annotations"], json!([flat]));

        let ev = stream_events(&[
            delta_chunk(
                json!({"role": "assistant", "content": "See: "}),
                Value::Null,
            ),
            delta_chunk(json!({"content": "cited."}), Value::Null),
            delta_chunk(json!({"annotations": [cite]}), Value::Null),
            delta_chunk(json!({}), json!("stop")),
        ]);
        let added: Vec<&Value> = ev
            .iter()
            .filter(|e| e["type"] == "response.output_text.annotation.added")
            .collect();
        assert_eq!(added.len(), 1);
        assert_eq!(
            (
                added[0]["annotation_index"].clone(),
                added[0]["annotation"].clone()
            ),
            (json!(0), flat.clone())
        );
        let done = ev
            .iter()
            .find(|e| e["type"] == "response.content_part.done")
            .unwrap();
        assert_eq!(done["part"]["annotations"], json!([flat]));
        let completed = ev.last().unwrap();
        assert_eq!(
            completed["response"]["output"][0]["content"][0]["annotations"],
            json!([flat])
        );
    }

    /// A custom tool's call (GPT-5) beside a function's: `custom_tool_call`
    /// items, their input streamed as `response.custom_tool_call_input.*`;
    /// and back as input, chat's custom tool call.
    #[test]
    fn custom_tool_calls_go_both_ways() {
        let ev = stream_events(&[
            delta_chunk(
                json!({"tool_calls": [{"index": 0, "id": "t1", "type": "custom", "custom": {"name": "code", "input": ""}}]}),
                Value::Null,
            ),
            delta_chunk(
                json!({"tool_calls": [{"index": 0, "custom": {"input": "print("}}]}),
                Value::Null,
            ),
            delta_chunk(
                json!({"tool_calls": [{"index": 0, "custom": {"input": "1)"}}]}),
                json!("tool_calls"),
            ),
        ]);
        let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == "response.custom_tool_call_input.delta")
                .count(),
            2
        );
        assert!(
            !kinds.iter().any(|k| k.contains("function_call")),
            "{kinds:?}"
        );
        let done = ev
            .iter()
            .find(|e| e["type"] == "response.custom_tool_call_input.done")
            .unwrap();
        assert_eq!(done["input"], "print(1)");
        let last = ev.last().unwrap();
        assert_eq!(last["type"], "response.completed");
        let item = &last["response"]["output"][0];
        assert_eq!(
            (
                item["type"].clone(),
                item["name"].clone(),
                item["input"].clone(),
                item["call_id"].clone()
            ),
            (
                json!("custom_tool_call"),
                json!("code"),
                json!("print(1)"),
                json!("t1")
            )
        );
        assert!(item["id"].as_str().unwrap().starts_with("ctc_"));

        let c = convert_ok(
            json!({"model": "m", "tools": [{"type": "custom", "name": "code"}],
            "tool_choice": {"type": "custom", "name": "code"},
            "input": [{"role": "user", "content": "go"}, item.clone(),
                {"type": "custom_tool_call_output", "call_id": "t1", "output": "1"}]}),
        );
        assert_eq!(
            c.chat["tools"],
            json!([{"type": "custom", "custom": {"name": "code"}}])
        );
        assert_eq!(
            c.chat["tool_choice"],
            json!({"type": "custom", "custom": {"name": "code"}})
        );
        assert_eq!(
            c.chat["messages"][1]["tool_calls"],
            json!([{"id": "t1", "type": "custom", "custom": {"name": "code", "input": "print(1)"}}])
        );
        assert_eq!(
            c.chat["messages"][2],
            json!({"role": "tool", "tool_call_id": "t1", "content": "1"})
        );
    }

    #[test]
    fn a_chat_stream_becomes_the_responses_events() {
        let ev = stream_events(&[
            delta_chunk(
                json!({"role": "assistant", "reasoning_content": "Hmm"}),
                Value::Null,
            ),
            delta_chunk(
                json!({"thinking_blocks": [{"type": "thinking", "thinking": "Hmm", "signature": "x"}]}),
                Value::Null,
            ),
            delta_chunk(json!({"content": "Hel"}), Value::Null),
            delta_chunk(json!({"content": "lo"}), Value::Null),
            delta_chunk(
                json!({"tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
                Value::Null,
            ),
            delta_chunk(
                json!({"tool_calls": [{"index": 1, "id": "t2", "type": "function", "function": {"name": "g", "arguments": "{\"a\""}}]}),
                Value::Null,
            ),
            delta_chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
                Value::Null,
            ),
            delta_chunk(
                json!({"tool_calls": [{"index": 1, "function": {"arguments": ":1}"}}]}),
                json!("tool_calls"),
            ),
            json!({"id": "c", "created": 9, "model": "m", "choices": [],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}),
        ]);
        let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, e) in ev.iter().enumerate() {
            assert_eq!(e["sequence_number"], i);
        }
        let done = &ev.last().unwrap()["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["usage"]["output_tokens"], 4);
        let out = done["output"].as_array().unwrap();
        assert_eq!(out[1]["content"][0]["text"], "Hello");
        assert_eq!(
            (out[2]["arguments"].as_str(), out[3]["arguments"].as_str()),
            (Some("{}"), Some("{\"a\":1}"))
        );
        assert!(out[0]["encrypted_content"]
            .as_str()
            .unwrap()
            .starts_with(THINKING_PREFIX));
        // Each item's done event carries the item as the final response has it.
        for e in ev
            .iter()
            .filter(|e| e["type"] == "response.output_item.done")
        {
            assert_eq!(e["item"], out[e["output_index"].as_u64().unwrap() as usize]);
        }
    }

    #[test]
    fn a_failed_stream_says_so() {
        let mut s = Streamer::new(echo());
        let mut out = Vec::new();
        s.on_chunk(&json!({"created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}), &mut out);
        s.on_error(
            &json!({"message": "upstream went away", "type": "server_error", "code": null}),
            &mut out,
        );
        s.on_done(&mut out);
        let ev = events(&out);
        let n = ev.len();
        assert_eq!(ev[n - 2]["type"], "error");
        assert_eq!(ev[n - 2]["code"], "server_error");
        assert_eq!(ev[n - 1]["type"], "response.failed");
        assert_eq!(
            ev[n - 1]["response"]["error"]["message"],
            "upstream went away"
        );
        assert_eq!(
            ev[n - 1]["response"]["output"][0]["content"][0]["text"],
            "Hi"
        );
    }
}
