//! Google's Gemini API as a way in: `POST /v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent` (`?alt=sse`, or a JSON array) and `:countTokens`
//! (also under `/v1/`), for clients written for Gemini (Google's `google-genai`
//! SDKs, the Gemini CLI with `GOOGLE_GEMINI_BASE_URL`), served by any provider.
//!
//! A request is read as the chat request that asks the same, served as chat
//! (keys, limits, budgets, routing, failover, one usage record as `gemini`),
//! and the answer written back in Gemini's shape:
//! - `contents` (roles `user` and `model`; parts `text`, `inlineData`
//!   images, PDFs and audio, `fileData` images by URL, `functionCall`,
//!   `functionResponse`, `thought` parts of earlier turns skipped) →
//!   `messages`; `systemInstruction` → a system message. A function call
//!   and its response are paired by their `id`, else by name in order; a
//!   call's `thoughtSignature` rides on the chat tool call
//!   (`extra_content.google.thought_signature`) so Gemini 3 gets it back.
//! - `tools[].functionDeclarations` (OpenAPI-style `parameters` with
//!   upper-case types, or `parametersJsonSchema`) → functions; `googleSearch`
//!   → `web_search_options`; `toolConfig.functionCallingConfig` →
//!   `tool_choice` (`ANY` with one allowed name: that function; with
//!   several: `allowed_tools`).
//! - `generationConfig`: `temperature`, `topP`, `topK`, `candidateCount`
//!   (`n`), `maxOutputTokens`, `stopSequences`, `presencePenalty`,
//!   `frequencyPenalty`, `seed`, `responseMimeType` with `responseSchema` /
//!   `responseJsonSchema` (`response_format`), `responseLogprobs` /
//!   `logprobs`, `thinkingConfig` (`reasoning_effort`; `includeThoughts`
//!   returns the reasoning as `thought` parts), `responseModalities`
//!   (`TEXT` only).
//! - `safetySettings` and `mediaResolution` have no chat equivalent: they are
//!   left out and named in `x-polyplex-dropped-params`. Anything else
//!   unknown is a 400 naming it, as Google's API answers.
//!
//! A plan of deployments that all take Gemini's API gets the request as
//! written instead (`server::genai_native`), and [`routing_form`] is then
//! its chat form when the conversion refused it.
//!
//! The answer's `usageMetadata` carries the tokens (thoughts apart) and the
//! cost (`usageMetadata.cost`); errors are Google's `{"error": {"code",
//! "message", "status"}}`.

use polyplex_types::{GatewayError, JsonMap};
use serde_json::{json, Map, Value};

/// What the answer repeats of the request.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub id: String,
    /// The model asked for (the answer's `modelVersion` names the one that served).
    pub model: String,
    /// `thinkingConfig.includeThoughts`: the reasoning goes back as thought parts.
    pub thoughts: bool,
    /// What was left out, for `x-polyplex-dropped-params`.
    pub dropped: Vec<&'static str>,
}

/// The three methods of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Generate,
    Stream,
    Count,
    Embed,
    BatchEmbed,
}

/// A `{model}:{method}` path tail: the model (a leading `models/`
/// dropped) and the method.
pub fn parse_target(tail: &str) -> Option<(String, Method)> {
    let (model, method) = tail.rsplit_once(':')?;
    let method = match method {
        "generateContent" => Method::Generate,
        "streamGenerateContent" => Method::Stream,
        "countTokens" => Method::Count,
        "embedContent" => Method::Embed,
        "batchEmbedContents" => Method::BatchEmbed,
        _ => return None,
    };
    let model = model.strip_prefix("models/").unwrap_or(model);
    (!model.is_empty()).then(|| (model.to_string(), method))
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid_param(param, message)
}

fn unknown(at: &str, name: &str) -> GatewayError {
    let param = if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    };
    bad(
        param,
        format!(
            "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
        ),
    )
}

/// A member by its camelCase or snake_case name (Google's JSON takes
/// both), JSON null as absent.
fn member<'a>(o: &'a JsonMap, camel: &str) -> Option<&'a Value> {
    o.get(camel)
        .or_else(|| o.get(&snake(camel)))
        .filter(|v| !v.is_null())
}

fn snake(camel: &str) -> String {
    let mut s = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            s.push('_');
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

/// Refuses members of `o` not in `known` (camelCase names; their
/// snake_case forms are taken too).
fn only(o: &JsonMap, at: &str, known: &[&str]) -> Result<(), GatewayError> {
    for k in o.keys() {
        if !known.iter().any(|n| *n == k || snake(n) == *k) {
            return Err(unknown(at, k));
        }
    }
    Ok(())
}

fn object<'a>(v: &'a Value, at: &str) -> Result<&'a JsonMap, GatewayError> {
    v.as_object()
        .ok_or_else(|| bad(at, format!("Invalid value at '{at}': expected an object.")))
}

fn array<'a>(v: &'a Value, at: &str) -> Result<&'a [Value], GatewayError> {
    v.as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| bad(at, format!("Invalid value at '{at}': expected a list.")))
}

const REQUEST: &[&str] = &[
    "model",
    "contents",
    "systemInstruction",
    "tools",
    "toolConfig",
    "generationConfig",
    "safetySettings",
    "cachedContent",
    "labels",
];

/// The request's model when its body names one (countTokens'
/// `generateContentRequest`), else the path's.
pub fn to_chat(body: &JsonMap, model: &str, stream: bool) -> Result<(JsonMap, Echo), GatewayError> {
    only(body, "", REQUEST)?;
    let mut echo = Echo {
        id: String::new(),
        model: model.to_string(),
        thoughts: false,
        dropped: Vec::new(),
    };
    if member(body, "cachedContent").is_some() {
        return Err(bad(
            "cachedContent",
            "cachedContent names a cache kept by Google; this gateway serves the request from any provider and cannot use it. Send the contents instead.",
        ));
    }
    if member(body, "safetySettings").is_some() {
        echo.dropped.push("safetySettings");
    }
    let mut chat = JsonMap::new();
    chat.insert("model".into(), json!(model));
    let mut messages = Vec::new();
    if let Some(si) = member(body, "systemInstruction") {
        let si = object(si, "systemInstruction")?;
        let text = text_of_parts(
            si,
            "systemInstruction.parts",
            "\n",
            "A system instruction takes text parts only.",
        )?;
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    let contents = member(body, "contents").ok_or_else(|| {
        bad(
            "contents",
            "* GenerateContentRequest.contents: contents is not specified",
        )
    })?;
    let contents = array(contents, "contents")?;
    if contents.is_empty() {
        return Err(bad(
            "contents",
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    }
    let mut calls = Calls::default();
    for (i, c) in contents.iter().enumerate() {
        turn(c, i, &mut calls, &mut messages)?;
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(t) = member(body, "tools") {
        tools(t, &mut chat)?;
    }
    if let Some(tc) = member(body, "toolConfig") {
        tool_config(tc, &mut chat)?;
    }
    if let Some(gc) = member(body, "generationConfig") {
        generation_config(object(gc, "generationConfig")?, &mut chat, &mut echo)?;
    }
    if let Some(Value::Object(labels)) = member(body, "labels") {
        // Google's labels are the request's metadata pairs.
        chat.insert("metadata".into(), Value::Object(labels.clone()));
    }
    if stream {
        chat.insert("stream".into(), json!(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok((chat, echo))
}

/// A request's coarse chat form, for routing and estimates when
/// [`to_chat`] refused it (it is then served only by deployments that take
/// Gemini's API as it is): its text, as one user message.
pub fn routing_form(body: &JsonMap, model: &str, stream: bool) -> JsonMap {
    let mut text = String::new();
    let mut add = |parts: Option<&Value>| {
        for p in parts.and_then(Value::as_array).into_iter().flatten() {
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                text.push_str(t);
                text.push('\n');
            }
        }
    };
    if let Some(si) = member(body, "systemInstruction") {
        add(si.get("parts"));
    }
    for c in member(body, "contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        add(c.get("parts"));
    }
    let mut chat = JsonMap::new();
    chat.insert("model".into(), json!(model));
    chat.insert(
        "messages".into(),
        json!([{"role": "user", "content": text}]),
    );
    if stream {
        chat.insert("stream".into(), json!(true));
    }
    chat
}

/// Function calls of earlier `model` turns, for pairing the responses.
#[derive(Default)]
struct Calls {
    /// (name, id) of calls not yet answered, oldest first.
    open: Vec<(String, String)>,
    made: usize,
}

impl Calls {
    fn call(&mut self, name: &str, id: Option<&str>) -> String {
        self.made += 1;
        let id = id
            .map(str::to_string)
            .unwrap_or_else(|| format!("call_{}", self.made));
        self.open.push((name.to_string(), id.clone()));
        id
    }

    /// The id of the call a response answers: its own `id`, else the
    /// oldest open call of its name.
    fn answer(&mut self, name: &str, id: Option<&str>) -> Option<String> {
        let at = match id {
            Some(id) => self.open.iter().position(|(_, i)| i == id),
            None => self.open.iter().position(|(n, _)| n == name),
        }?;
        Some(self.open.remove(at).1)
    }
}

const PART: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "thought",
    "thoughtSignature",
    "partMetadata",
    "videoMetadata",
    "executableCode",
    "codeExecutionResult",
];

fn turn(
    c: &Value,
    i: usize,
    calls: &mut Calls,
    messages: &mut Vec<Value>,
) -> Result<(), GatewayError> {
    let at = format!("contents[{i}]");
    let c = object(c, &at)?;
    only(c, &at, &["role", "parts"])?;
    let role = member(c, "role").and_then(Value::as_str).unwrap_or("user");
    let parts = member(c, "parts").ok_or_else(|| {
        bad(
            format!("{at}.parts"),
            format!("* GenerateContentRequest.{at}.parts: contents.parts must not be empty."),
        )
    })?;
    let parts = array(parts, &format!("{at}.parts"))?;
    match role {
        "user" | "function" | "tool" => {
            let mut content = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                let pat = format!("{at}.parts[{j}]");
                let p = object(p, &pat)?;
                only(p, &pat, PART)?;
                if let Some(r) = member(p, "functionResponse") {
                    let r = object(r, &format!("{pat}.functionResponse"))?;
                    let name = member(r, "name").and_then(Value::as_str).unwrap_or("");
                    let id = member(r, "id").and_then(Value::as_str);
                    let Some(call) = calls.answer(name, id) else {
                        return Err(bad(
                            format!("{pat}.functionResponse"),
                            format!("Please ensure that function response turn comes immediately after a function call turn: no call of `{name}` is waiting for its response."),
                        ));
                    };
                    let output = member(r, "response").cloned().unwrap_or(json!({}));
                    messages.push(json!({"role": "tool", "tool_call_id": call, "content": output.to_string()}));
                } else if let Some(part) = user_part(p, &pat)? {
                    content.push(part);
                }
            }
            if !content.is_empty() {
                messages.push(json!({"role": "user", "content": content}));
            }
        }
        "model" | "assistant" => {
            let mut text = String::new();
            let mut tool_calls = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                let pat = format!("{at}.parts[{j}]");
                let p = object(p, &pat)?;
                only(p, &pat, PART)?;
                if member(p, "thought") == Some(&Value::Bool(true)) {
                    // An earlier turn's thinking: not sent back as chat has no place for it.
                    continue;
                }
                if let Some(f) = member(p, "functionCall") {
                    let f = object(f, &format!("{pat}.functionCall"))?;
                    let name = member(f, "name").and_then(Value::as_str).ok_or_else(|| {
                        bad(
                            format!("{pat}.functionCall.name"),
                            "A function call needs its name.",
                        )
                    })?;
                    let id = calls.call(name, member(f, "id").and_then(Value::as_str));
                    let args = member(f, "args").cloned().unwrap_or(json!({}));
                    let mut call = json!({"id": id, "type": "function",
                        "function": {"name": name, "arguments": args.to_string()}});
                    if let Some(sig) = member(p, "thoughtSignature").and_then(Value::as_str) {
                        call["extra_content"] = json!({"google": {"thought_signature": sig}});
                    }
                    tool_calls.push(call);
                } else if let Some(t) = member(p, "text").and_then(Value::as_str) {
                    text.push_str(t);
                } else {
                    return Err(bad(
                        pat,
                        "A model turn takes text and function calls only through this gateway.",
                    ));
                }
            }
            let mut m = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
            if !tool_calls.is_empty() {
                m["tool_calls"] = Value::Array(tool_calls);
            }
            if !text.is_empty() || m.get("tool_calls").is_some() {
                messages.push(m);
            }
        }
        other => {
            return Err(bad(
                format!("{at}.role"),
                format!("Please use a valid role: user, model. Got `{other}`."),
            ))
        }
    }
    Ok(())
}

/// A user part as a chat content part (None: nothing to send).
fn user_part(p: &JsonMap, at: &str) -> Result<Option<Value>, GatewayError> {
    if member(p, "thought") == Some(&Value::Bool(true)) {
        return Ok(None);
    }
    if let Some(t) = member(p, "text") {
        let t = t
            .as_str()
            .ok_or_else(|| bad(format!("{at}.text"), "text must be a string."))?;
        return Ok(Some(json!({"type": "text", "text": t})));
    }
    if let Some(d) = member(p, "inlineData") {
        let d = object(d, &format!("{at}.inlineData"))?;
        let mime = member(d, "mimeType").and_then(Value::as_str).unwrap_or("");
        let data = member(d, "data").and_then(Value::as_str).ok_or_else(|| {
            bad(
                format!("{at}.inlineData.data"),
                "inlineData needs its base64 data.",
            )
        })?;
        let url = format!("data:{mime};base64,{data}");
        return Ok(Some(match mime {
            m if m.starts_with("image/") => json!({"type": "image_url", "image_url": {"url": url}}),
            "audio/wav" | "audio/x-wav" => {
                json!({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
            }
            "audio/mp3" | "audio/mpeg" => {
                json!({"type": "input_audio", "input_audio": {"data": data, "format": "mp3"}})
            }
            "" => {
                return Err(bad(
                    format!("{at}.inlineData.mimeType"),
                    "inlineData needs its mimeType.",
                ))
            }
            _ => json!({"type": "file", "file": {"file_data": url}}),
        }));
    }
    if let Some(f) = member(p, "fileData") {
        let f = object(f, &format!("{at}.fileData"))?;
        let mime = member(f, "mimeType").and_then(Value::as_str).unwrap_or("");
        let uri = member(f, "fileUri").and_then(Value::as_str).unwrap_or("");
        let by_url = uri.starts_with("https://") || uri.starts_with("http://");
        if mime.starts_with("image/")
            && by_url
            && !uri.contains("generativelanguage.googleapis.com")
        {
            return Ok(Some(
                json!({"type": "image_url", "image_url": {"url": uri}}),
            ));
        }
        return Err(bad(
            format!("{at}.fileData"),
            "fileData is read only for images at a public URL through this gateway (Google's File API keeps the others); send the file as inlineData.",
        ));
    }
    if member(p, "functionCall").is_some() {
        return Err(bad(
            format!("{at}.functionCall"),
            "A function call belongs in a model turn.",
        ));
    }
    for k in ["executableCode", "codeExecutionResult", "videoMetadata"] {
        if member(p, k).is_some() {
            return Err(bad(
                format!("{at}.{k}"),
                format!("{k} parts are not carried by this gateway."),
            ));
        }
    }
    Ok(None)
}

/// Gemini's schema (OpenAPI's subset: upper-case `type`, `nullable`) as
/// JSON Schema.
pub fn json_schema(s: &Value) -> Value {
    match s {
        Value::Object(o) => {
            let mut out = Map::with_capacity(o.len());
            let nullable = o.get("nullable") == Some(&Value::Bool(true));
            for (k, v) in o {
                match k.as_str() {
                    "nullable" | "propertyOrdering" | "property_ordering" => {}
                    "type" => {
                        let t = v.as_str().unwrap_or("").to_ascii_lowercase();
                        if t.is_empty() || t == "type_unspecified" {
                            continue;
                        }
                        out.insert(
                            "type".into(),
                            if nullable {
                                json!([t, "null"])
                            } else {
                                json!(t)
                            },
                        );
                    }
                    "properties" => {
                        let props = v
                            .as_object()
                            .map(|p| {
                                p.iter()
                                    .map(|(n, s)| (n.clone(), json_schema(s)))
                                    .collect::<Map<_, _>>()
                            })
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    "items" | "additionalProperties" => {
                        out.insert(k.clone(), json_schema(v));
                    }
                    "anyOf" | "any_of" => {
                        let all = v
                            .as_array()
                            .map(|a| a.iter().map(json_schema).collect())
                            .unwrap_or_default();
                        out.insert("anyOf".into(), Value::Array(all));
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn tools(t: &Value, chat: &mut JsonMap) -> Result<(), GatewayError> {
    let mut out = Vec::new();
    for (i, tool) in array(t, "tools")?.iter().enumerate() {
        let at = format!("tools[{i}]");
        let tool = object(tool, &at)?;
        for (k, v) in tool {
            match k.as_str() {
                "functionDeclarations" | "function_declarations" => {
                    for (j, f) in array(v, &format!("{at}.functionDeclarations"))?.iter().enumerate() {
                        let fat = format!("{at}.functionDeclarations[{j}]");
                        let f = object(f, &fat)?;
                        only(f, &fat, &["name", "description", "parameters", "parametersJsonSchema", "response", "responseJsonSchema", "behavior"])?;
                        let name = member(f, "name").and_then(Value::as_str).ok_or_else(|| {
                            bad(format!("{fat}.name"), "A function declaration needs its name.")
                        })?;
                        let mut fun = json!({"name": name});
                        if let Some(d) = member(f, "description") {
                            fun["description"] = d.clone();
                        }
                        let params = match (member(f, "parametersJsonSchema"), member(f, "parameters")) {
                            (Some(s), _) => s.clone(),
                            (None, Some(s)) => json_schema(s),
                            (None, None) => json!({"type": "object", "properties": {}}),
                        };
                        fun["parameters"] = params;
                        out.push(json!({"type": "function", "function": fun}));
                    }
                }
                "googleSearch" | "google_search" | "googleSearchRetrieval" | "google_search_retrieval" => {
                    chat.insert("web_search_options".into(), json!({}));
                }
                other => {
                    return Err(bad(
                        format!("{at}.{other}"),
                        format!("The tool `{other}` is run by Google's servers, not by this gateway; function declarations and googleSearch are carried."),
                    ))
                }
            }
        }
    }
    if !out.is_empty() {
        chat.insert("tools".into(), Value::Array(out));
    }
    Ok(())
}

/// The text of a content's `parts` (at `at`), joined by `sep`; a part
/// that is not text is refused with `why`.
fn text_of_parts(
    content: &JsonMap,
    at: &str,
    sep: &str,
    why: &str,
) -> Result<String, GatewayError> {
    let mut text = String::new();
    let parts = match member(content, "parts") {
        Some(v) => array(v, at)?,
        None => &[],
    };
    for (j, p) in parts.iter().enumerate() {
        let t = p
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{at}[{j}]"), why))?;
        if !text.is_empty() {
            text.push_str(sep);
        }
        text.push_str(t);
    }
    Ok(text)
}

fn tool_config(tc: &Value, chat: &mut JsonMap) -> Result<(), GatewayError> {
    let tc = object(tc, "toolConfig")?;
    only(
        tc,
        "toolConfig",
        &["functionCallingConfig", "retrievalConfig"],
    )?;
    let Some(fc) = member(tc, "functionCallingConfig") else {
        return Ok(());
    };
    let fc = object(fc, "toolConfig.functionCallingConfig")?;
    only(
        fc,
        "toolConfig.functionCallingConfig",
        &["mode", "allowedFunctionNames"],
    )?;
    let names: Vec<&str> = member(fc, "allowedFunctionNames")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let choice = match member(fc, "mode").and_then(Value::as_str).unwrap_or("AUTO") {
        "AUTO" | "MODE_UNSPECIFIED" | "VALIDATED" => json!("auto"),
        "NONE" => json!("none"),
        "ANY" => match names.as_slice() {
            [] => json!("required"),
            [one] => json!({"type": "function", "function": {"name": one}}),
            many => json!({"type": "allowed_tools", "allowed_tools": {"mode": "required",
                "tools": many.iter().map(|n| json!({"type": "function", "function": {"name": n}})).collect::<Vec<_>>()}}),
        },
        other => {
            return Err(bad(
                "toolConfig.functionCallingConfig.mode",
                format!("Invalid value at 'tool_config.function_calling_config.mode': `{other}` (AUTO, ANY, NONE or VALIDATED)."),
            ))
        }
    };
    if chat.contains_key("tools") || choice == json!("none") {
        chat.insert("tool_choice".into(), choice);
    }
    Ok(())
}

const GENERATION: &[&str] = &[
    "temperature",
    "topP",
    "topK",
    "candidateCount",
    "maxOutputTokens",
    "stopSequences",
    "presencePenalty",
    "frequencyPenalty",
    "seed",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseLogprobs",
    "logprobs",
    "thinkingConfig",
    "responseModalities",
    "mediaResolution",
];

fn generation_config(
    gc: &JsonMap,
    chat: &mut JsonMap,
    echo: &mut Echo,
) -> Result<(), GatewayError> {
    only(gc, "generationConfig", GENERATION)?;
    for (from, to) in [
        ("temperature", "temperature"),
        ("topP", "top_p"),
        ("topK", "top_k"),
        ("candidateCount", "n"),
        ("maxOutputTokens", "max_completion_tokens"),
        ("stopSequences", "stop"),
        ("presencePenalty", "presence_penalty"),
        ("frequencyPenalty", "frequency_penalty"),
        ("seed", "seed"),
    ] {
        if let Some(v) = member(gc, from) {
            chat.insert(to.into(), v.clone());
        }
    }
    if member(gc, "responseLogprobs") == Some(&Value::Bool(true)) {
        chat.insert("logprobs".into(), json!(true));
        if let Some(n) = member(gc, "logprobs") {
            chat.insert("top_logprobs".into(), n.clone());
        }
    }
    let schema = member(gc, "responseJsonSchema")
        .cloned()
        .or_else(|| member(gc, "responseSchema").map(json_schema));
    match member(gc, "responseMimeType").and_then(Value::as_str) {
        None | Some("text/plain") if schema.is_none() => {}
        Some("application/json") | None => {
            let format = match schema {
                Some(s) => json!({"type": "json_schema", "json_schema": {"name": "response", "schema": s}}),
                None => json!({"type": "json_object"}),
            };
            chat.insert("response_format".into(), format);
        }
        Some(other) => {
            return Err(bad(
                "generationConfig.responseMimeType",
                format!("responseMimeType `{other}` is not carried by this gateway (text/plain and application/json are)."),
            ))
        }
    }
    if let Some(m) = member(gc, "responseModalities").and_then(Value::as_array) {
        if m.iter().any(|x| x.as_str() != Some("TEXT")) {
            return Err(bad(
                "generationConfig.responseModalities",
                "Only TEXT answers are carried by this gateway.",
            ));
        }
    }
    if member(gc, "mediaResolution").is_some() {
        echo.dropped.push("generationConfig.mediaResolution");
    }
    if let Some(t) = member(gc, "thinkingConfig") {
        let t = object(t, "generationConfig.thinkingConfig")?;
        only(
            t,
            "generationConfig.thinkingConfig",
            &["includeThoughts", "thinkingBudget", "thinkingLevel"],
        )?;
        echo.thoughts = member(t, "includeThoughts") == Some(&Value::Bool(true));
        let effort = match (
            member(t, "thinkingLevel").and_then(Value::as_str),
            member(t, "thinkingBudget").and_then(Value::as_i64),
        ) {
            (Some(level), _) => match level.to_ascii_lowercase().as_str() {
                l @ ("minimal" | "low" | "medium" | "high") => Some(match l {
                    "minimal" => "minimal",
                    "low" => "low",
                    "medium" => "medium",
                    _ => "high",
                }),
                _ => {
                    return Err(bad(
                        "generationConfig.thinkingConfig.thinkingLevel",
                        format!(
                            "thinkingLevel `{level}` is not one of MINIMAL, LOW, MEDIUM, HIGH."
                        ),
                    ))
                }
            },
            (None, Some(0)) => Some("none"),
            (None, Some(n)) if n < 0 => None,
            (None, Some(n)) if n <= 1024 => Some("low"),
            (None, Some(n)) if n <= 8192 => Some("medium"),
            (None, Some(_)) => Some("high"),
            (None, None) => None,
        };
        if let Some(e) = effort {
            chat.insert("reasoning_effort".into(), json!(e));
        }
    }
    Ok(())
}

/// An `embedContent` (`batch`: false) or `batchEmbedContents` request as
/// an embeddings request for `model`; `taskType` and `title`, which only
/// Google's models read, are named as dropped.
pub fn to_embeddings(
    body: &JsonMap,
    model: &str,
    batch: bool,
) -> Result<(JsonMap, Echo), GatewayError> {
    let mut echo = Echo {
        model: model.to_string(),
        ..Echo::default()
    };
    let one = |r: &JsonMap,
               at: &str,
               echo: &mut Echo|
     -> Result<(String, Option<Value>), GatewayError> {
        let known = [
            "model",
            "content",
            "taskType",
            "title",
            "outputDimensionality",
        ];
        only(r, at, &known)?;
        if let Some(m) = member(r, "model").and_then(Value::as_str) {
            if m.strip_prefix("models/").unwrap_or(m) != model {
                return Err(bad(
                    format!("{}model", if at.is_empty() { String::new() } else { format!("{at}.") }),
                    format!("Every request of a batch must name the model of the URL (`{model}`), not `{m}`."),
                ));
            }
        }
        for k in ["taskType", "title"] {
            if member(r, k).is_some() && !echo.dropped.contains(&k) {
                echo.dropped
                    .push(if k == "title" { "title" } else { "taskType" });
            }
        }
        let cat = |k: &str| {
            if at.is_empty() {
                k.to_string()
            } else {
                format!("{at}.{k}")
            }
        };
        let content =
            member(r, "content").ok_or_else(|| bad(cat("content"), "content is required."))?;
        let content = object(content, &cat("content"))?;
        let text = text_of_parts(
            content,
            &cat("content.parts"),
            " ",
            "Only text is embedded through this gateway.",
        )?;
        if text.is_empty() {
            return Err(bad(
                cat("content.parts"),
                "content.parts must not be empty.",
            ));
        }
        Ok((text, member(r, "outputDimensionality").cloned()))
    };
    let mut inputs = Vec::new();
    let mut dims = None;
    if batch {
        only(body, "", &["requests"])?;
        let requests =
            member(body, "requests").ok_or_else(|| bad("requests", "requests is required."))?;
        let requests = array(requests, "requests")?;
        if requests.is_empty() {
            return Err(bad("requests", "requests must not be empty."));
        }
        for (i, r) in requests.iter().enumerate() {
            let at = format!("requests[{i}]");
            let (text, d) = one(object(r, &at)?, &at, &mut echo)?;
            inputs.push(Value::String(text));
            dims = dims.or(d);
        }
    } else {
        let (text, d) = one(body, "", &mut echo)?;
        inputs.push(Value::String(text));
        dims = d;
    }
    let mut out = JsonMap::new();
    out.insert("model".into(), json!(model));
    out.insert("input".into(), Value::Array(inputs));
    if let Some(d) = dims {
        out.insert("dimensions".into(), d);
    }
    Ok((out, echo))
}

/// An embeddings answer as Gemini's: one `embedding` (`batch`: false) or
/// `embeddings`, with `usageMetadata` (tokens and cost).
pub fn embeddings_object(answer: &Value, batch: bool) -> Value {
    let mut data: Vec<&Value> = answer["data"]
        .as_array()
        .map(|d| d.iter().collect())
        .unwrap_or_default();
    data.sort_by_key(|d| d["index"].as_u64().unwrap_or(0));
    let values: Vec<Value> = data
        .iter()
        .map(|d| json!({"values": d["embedding"]}))
        .collect();
    let mut out = if batch {
        json!({ "embeddings": values })
    } else {
        json!({ "embedding": values.into_iter().next().unwrap_or(json!({"values": []})) })
    };
    let u = &answer["usage"];
    let prompt = u["prompt_tokens"].as_u64().unwrap_or(0);
    let mut meta = json!({"promptTokenCount": prompt, "totalTokenCount": prompt});
    if let Some(c) = u.get("cost").filter(|c| c.is_number()) {
        meta["cost"] = c.clone();
    }
    out["usageMetadata"] = meta;
    out
}

/// A model as Gemini's `Model` (`models/{id}`), with its limits when the
/// catalog knows them.
pub fn model_object(id: &str, limits: Option<(u64, u64)>) -> Value {
    let embeds = id.to_ascii_lowercase().contains("embed");
    let methods = if embeds {
        json!(["embedContent", "batchEmbedContents"])
    } else {
        json!(["generateContent", "streamGenerateContent", "countTokens"])
    };
    let mut m = json!({"name": format!("models/{id}"), "baseModelId": id, "version": "",
        "displayName": id, "supportedGenerationMethods": methods});
    if let Some((context, output)) = limits {
        m["inputTokenLimit"] = json!(context);
        m["outputTokenLimit"] = json!(output);
    }
    m
}

/// A model as Vertex AI's publisher models are listed: Google's (a bare
/// id) as `publishers/google/models/{id}`, another publisher's (`p/m`) as
/// `publishers/p/models/m`.
pub fn vertex_model_object(id: &str) -> Value {
    let name = match id.split_once('/') {
        Some((publisher, model)) => format!("publishers/{publisher}/models/{model}"),
        None => format!("publishers/google/models/{id}"),
    };
    json!({"name": name, "versionId": "default"})
}

// ---------------------------------------------------------------- answers

fn finish_reason(finish: Option<&str>) -> Option<&'static str> {
    Some(match finish? {
        "stop" | "tool_calls" | "function_call" => "STOP",
        "length" => "MAX_TOKENS",
        "content_filter" => "SAFETY",
        _ => "OTHER",
    })
}

/// A chat `usage` as Gemini's `usageMetadata` (candidates without the
/// thoughts), with the cost.
fn usage_metadata(u: &Value) -> Value {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let (prompt, completion, thoughts, cached) = (
        n("/prompt_tokens"),
        n("/completion_tokens"),
        n("/completion_tokens_details/reasoning_tokens"),
        n("/prompt_tokens_details/cached_tokens"),
    );
    let mut out = json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion.saturating_sub(thoughts),
        "totalTokenCount": prompt + completion,
    });
    if thoughts > 0 {
        out["thoughtsTokenCount"] = json!(thoughts);
    }
    if cached > 0 {
        out["cachedContentTokenCount"] = json!(cached);
    }
    if let Some(cost) = u.get("cost").filter(|c| c.is_number()) {
        out["cost"] = cost.clone();
    }
    out
}

/// A chat tool call as Gemini's `functionCall` part.
fn function_part(tc: &Value) -> Value {
    let f = &tc["function"];
    let args = f["arguments"]
        .as_str()
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    let mut part = json!({"functionCall": {"name": f["name"], "args": args}});
    if let Some(id) = tc.get("id").and_then(Value::as_str) {
        part["functionCall"]["id"] = json!(id);
    }
    if let Some(sig) = tc.pointer("/extra_content/google/thought_signature") {
        part["thoughtSignature"] = sig.clone();
    }
    part
}

/// A choice's `logprobs.content` as Gemini's `logprobsResult` (each
/// chosen token, and the alternatives at that step) and its average.
fn logprobs_result(logprobs: &Value) -> Option<(Value, f64)> {
    let steps = logprobs.get("content")?.as_array()?;
    if steps.is_empty() {
        return None;
    }
    let candidate = |t: &Value| json!({"token": t["token"], "logProbability": t["logprob"]});
    let chosen: Vec<Value> = steps.iter().map(candidate).collect();
    let top: Vec<Value> = steps
        .iter()
        .map(|s| {
            let alts = s["top_logprobs"]
                .as_array()
                .map(|a| a.iter().map(candidate).collect::<Vec<_>>());
            json!({"candidates": alts.unwrap_or_default()})
        })
        .collect();
    let sum: f64 = steps.iter().filter_map(|s| s["logprob"].as_f64()).sum();
    Some((
        json!({"chosenCandidates": chosen, "topCandidates": top}),
        sum / steps.len() as f64,
    ))
}

fn reasoning_of(m: &Value) -> Option<&str> {
    m.get("reasoning_content")
        .or_else(|| m.get("reasoning"))
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
}

/// A chat completion as Gemini's `GenerateContentResponse`.
pub fn response_object(chat: &Value, echo: &Echo) -> Value {
    let candidates: Vec<Value> = chat["choices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let m = &c["message"];
            let mut parts = Vec::new();
            if echo.thoughts {
                if let Some(r) = reasoning_of(m) {
                    parts.push(json!({"text": r, "thought": true}));
                }
            }
            if let Some(t) = m["content"].as_str().filter(|t| !t.is_empty()) {
                parts.push(json!({"text": t}));
            }
            for tc in m["tool_calls"].as_array().into_iter().flatten() {
                parts.push(function_part(tc));
            }
            let mut cand =
                json!({"content": {"role": "model", "parts": parts}, "index": c["index"]});
            if let Some(f) = finish_reason(c["finish_reason"].as_str()) {
                cand["finishReason"] = json!(f);
            }
            if let Some((result, avg)) = logprobs_result(&c["logprobs"]) {
                cand["logprobsResult"] = result;
                cand["avgLogprobs"] = json!(avg);
            }
            cand
        })
        .collect();
    json!({
        "candidates": candidates,
        "usageMetadata": usage_metadata(&chat["usage"]),
        "modelVersion": chat.get("model").and_then(Value::as_str).unwrap_or(&echo.model),
        "responseId": echo.id,
    })
}

/// Google's status name for an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        408 | 504 => "DEADLINE_EXCEEDED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        502 | 503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

/// An OpenAI error body (`{"error": {...}}`) as Google's.
pub fn error_object(status: u16, openai: &Value) -> Value {
    let e = openai.get("error").unwrap_or(openai);
    let message = e
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("The request failed.");
    let mut out = json!({"code": status, "message": message, "status": status_name(status)});
    if let Some(param) = e.get("param").and_then(Value::as_str) {
        out["details"] = json!([{"@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": param, "description": message}]}]);
    }
    json!({ "error": out })
}

/// A chat stream as Gemini's: each text (or thought) delta a
/// `GenerateContentResponse` of its own; function calls, whose arguments
/// chat streams in pieces, whole with the finish reason; the last one
/// with `usageMetadata`. Framed as server-sent events (`alt=sse`) or as
/// the elements of one JSON array.
pub struct Streamer {
    echo: Echo,
    sse: bool,
    wrote: bool,
    ended: bool,
    model: Option<String>,
    /// Per choice: its tool calls so far.
    calls: Vec<Vec<PendingCall>>,
    /// Finished candidates, sent with the usage at the end.
    finished: Vec<Value>,
    usage: Option<Value>,
}

/// A streamed tool call, gathered until its choice finishes.
#[derive(Default)]
struct PendingCall {
    id: Value,
    name: String,
    arguments: String,
    signature: Option<Value>,
}

impl PendingCall {
    /// As chat's tool call, for [`function_part`].
    fn tool_call(self) -> Value {
        let mut tc =
            json!({"id": self.id, "function": {"name": self.name, "arguments": self.arguments}});
        if let Some(s) = self.signature {
            tc["extra_content"] = json!({"google": {"thought_signature": s}});
        }
        tc
    }
}

impl Streamer {
    pub fn new(echo: Echo, sse: bool) -> Self {
        Streamer {
            echo,
            sse,
            wrote: false,
            ended: false,
            model: None,
            calls: Vec::new(),
            finished: Vec::new(),
            usage: None,
        }
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    fn write(&mut self, v: &Value, out: &mut Vec<u8>) {
        if self.sse {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(v.to_string().as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
        } else {
            out.extend_from_slice(if self.wrote { b",\r\n" } else { b"[" });
            out.extend_from_slice(v.to_string().as_bytes());
        }
        self.wrote = true;
    }

    fn chunk(&self, candidates: Vec<Value>, usage: Option<&Value>) -> Value {
        let mut v = json!({
            "candidates": candidates,
            "modelVersion": self.model.as_deref().unwrap_or(&self.echo.model),
            "responseId": self.echo.id,
        });
        if let Some(u) = usage {
            v["usageMetadata"] = usage_metadata(u);
        }
        v
    }

    pub fn on_chunk(&mut self, v: &Value, out: &mut Vec<u8>) {
        if let Some(m) = v.get("model").and_then(Value::as_str) {
            self.model.get_or_insert_with(|| m.to_string());
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let mut now = Vec::new();
        for c in v["choices"].as_array().into_iter().flatten() {
            let index = c["index"].as_u64().unwrap_or(0) as usize;
            if self.calls.len() <= index {
                self.calls.resize_with(index + 1, Vec::new);
            }
            let d = &c["delta"];
            let mut parts = Vec::new();
            if self.echo.thoughts {
                if let Some(r) = reasoning_of(d) {
                    parts.push(json!({"text": r, "thought": true}));
                }
            }
            if let Some(t) = d["content"].as_str().filter(|t| !t.is_empty()) {
                parts.push(json!({"text": t}));
            }
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                let k = tc["index"].as_u64().unwrap_or(0) as usize;
                let calls = &mut self.calls[index];
                if calls.len() <= k {
                    calls.resize_with(k + 1, PendingCall::default);
                }
                let slot = &mut calls[k];
                if let Some(id) = tc.get("id").filter(|i| i.is_string()) {
                    slot.id = id.clone();
                }
                if let Some(n) = tc.pointer("/function/name").and_then(Value::as_str) {
                    slot.name.push_str(n);
                }
                if let Some(a) = tc.pointer("/function/arguments").and_then(Value::as_str) {
                    slot.arguments.push_str(a);
                }
                if let Some(sig) = tc.pointer("/extra_content/google/thought_signature") {
                    slot.signature = Some(sig.clone());
                }
            }
            if !parts.is_empty() {
                let mut cand =
                    json!({"content": {"role": "model", "parts": parts}, "index": index});
                if let Some((result, avg)) = logprobs_result(&c["logprobs"]) {
                    cand["logprobsResult"] = result;
                    cand["avgLogprobs"] = json!(avg);
                }
                now.push(cand);
            }
            if let Some(f) = finish_reason(c["finish_reason"].as_str()) {
                let parts: Vec<Value> = std::mem::take(&mut self.calls[index])
                    .into_iter()
                    .map(|c| function_part(&c.tool_call()))
                    .collect();
                self.finished
                    .push(json!({"content": {"role": "model", "parts": parts},
                    "finishReason": f, "index": index}));
            }
        }
        if !now.is_empty() {
            let chunk = self.chunk(now, None);
            self.write(&chunk, out);
        }
    }

    pub fn on_done(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        let finished = std::mem::take(&mut self.finished);
        let usage = self.usage.take();
        let last = self.chunk(finished, usage.as_ref());
        self.write(&last, out);
        self.end(out);
    }

    /// `error`: OpenAI's error object.
    pub fn on_error(&mut self, error: &Value, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        let status = match error.get("code").and_then(Value::as_str) {
            Some("rate_limit_exceeded") => 429,
            _ => match error.get("type").and_then(Value::as_str) {
                Some("invalid_request_error") => 400,
                _ => 500,
            },
        };
        let body = error_object(status, &json!({ "error": error }));
        self.write(&body, out);
        self.end(out);
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.ended = true;
        if !self.sse {
            out.extend_from_slice(if self.wrote { b"]" } else { b"[]" });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_of(v: Value) -> Result<(JsonMap, Echo), GatewayError> {
        to_chat(v.as_object().unwrap(), "openai/gpt-4o", false)
    }

    #[test]
    fn paths_name_the_model_and_method() {
        assert_eq!(
            parse_target("openai/gpt-4o:streamGenerateContent"),
            Some(("openai/gpt-4o".into(), Method::Stream))
        );
        assert_eq!(
            parse_target("models/gemini-2.5-flash:countTokens"),
            Some(("gemini-2.5-flash".into(), Method::Count))
        );
        assert_eq!(
            parse_target("e:embedContent"),
            Some(("e".into(), Method::Embed))
        );
        assert_eq!(parse_target("gpt-4o:predict"), None);
        assert_eq!(parse_target(":generateContent"), None);
    }

    #[test]
    fn a_conversation_with_a_function_round_trip_becomes_chat() {
        let (chat, echo) = chat_of(json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Weather in Paris?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBO"}}]},
                {"role": "model", "parts": [{"thought": true, "text": "thinking"},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]}],
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "d",
                "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING", "nullable": true}}, "required": ["city"], "propertyOrdering": ["city"]}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
            "generationConfig": {"temperature": 0.2, "maxOutputTokens": 50, "stopSequences": ["END"], "candidateCount": 2,
                "responseMimeType": "application/json", "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "INTEGER"}}},
                "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": true}},
            "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]
        }))
        .unwrap();
        let m = chat["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(
            m[1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,iVBO"
        );
        assert_eq!(m[2]["tool_calls"][0]["id"], "call_1");
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(
            m[2]["tool_calls"][0]["extra_content"]["google"]["thought_signature"],
            "c2ln"
        );
        assert_eq!(m[2]["content"], Value::Null);
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": r#"{"temp":21}"#})
        );
        let params = &chat["tools"][0]["function"]["parameters"];
        assert_eq!(params["type"], "object");
        assert_eq!(
            params["properties"]["city"]["type"],
            json!(["string", "null"])
        );
        assert!(params.get("propertyOrdering").is_none());
        assert_eq!(chat["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(
            (
                chat["temperature"].as_f64(),
                chat["max_completion_tokens"].as_u64()
            ),
            (Some(0.2), Some(50))
        );
        assert_eq!(
            (chat["n"].as_u64(), &chat["stop"]),
            (Some(2), &json!(["END"]))
        );
        assert_eq!(
            chat["response_format"]["json_schema"]["schema"]["properties"]["a"]["type"],
            "integer"
        );
        assert_eq!(chat["reasoning_effort"], "medium");
        assert!(echo.thoughts);
        assert_eq!(echo.dropped, vec!["safetySettings"]);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let param = |v: Value| chat_of(v).unwrap_err().param.unwrap();
        assert_eq!(param(json!({})), "contents");
        assert_eq!(
            param(json!({"contents": [{"role": "robot", "parts": [{"text": "x"}]}]})),
            "contents[0].role"
        );
        assert_eq!(
            param(json!({"contents": [{"parts": [{"txt": "x"}]}]})),
            "contents[0].parts[0].txt"
        );
        assert_eq!(
            param(
                json!({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"topQ": 1}})
            ),
            "generationConfig.topQ"
        );
        assert_eq!(
            param(
                json!({"contents": [{"parts": [{"text": "x"}]}], "tools": [{"codeExecution": {}}]})
            ),
            "tools[0].codeExecution"
        );
        assert_eq!(
            param(
                json!({"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {}}}]}]})
            ),
            "contents[0].parts[0].functionResponse"
        );
        assert_eq!(
            param(
                json!({"contents": [{"parts": [{"text": "x"}]}], "cachedContent": "cachedContents/1"})
            ),
            "cachedContent"
        );
    }

    #[test]
    fn embeddings_both_ways() {
        let body = json!({"requests": [
            {"model": "models/openai/e", "content": {"parts": [{"text": "a"}, {"text": "b"}]}, "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 4},
            {"model": "models/openai/e", "content": {"parts": [{"text": "c"}]}}]});
        let (req, echo) = to_embeddings(body.as_object().unwrap(), "openai/e", true).unwrap();
        assert_eq!(
            Value::Object(req),
            json!({"model": "openai/e", "input": ["a b", "c"], "dimensions": 4})
        );
        assert_eq!(echo.dropped, vec!["taskType"]);
        let other =
            json!({"requests": [{"model": "models/x", "content": {"parts": [{"text": "a"}]}}]});
        let e = to_embeddings(other.as_object().unwrap(), "openai/e", true).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("requests[0].model"));
        let one =
            json!({"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "x"}}]}});
        let e = to_embeddings(one.as_object().unwrap(), "openai/e", false).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("content.parts[0]"));
        // A system instruction's parts: text joined by lines, anything else named.
        let sys = json!({"systemInstruction": {"parts": [{"text": "a"}, {"text": "b"}]},
                         "contents": [{"role": "user", "parts": [{"text": "q"}]}]});
        let (chat, _) = to_chat(sys.as_object().unwrap(), "openai/m", false).unwrap();
        assert_eq!(
            chat["messages"][0],
            json!({"role": "system", "content": "a\nb"})
        );
        let image = json!({"systemInstruction": {"parts": [{"text": "a"}, {"inlineData": {"mimeType": "image/png", "data": "x"}}]},
                           "contents": [{"role": "user", "parts": [{"text": "q"}]}]});
        let e = to_chat(image.as_object().unwrap(), "openai/m", false).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("systemInstruction.parts[1]"));
        let answer = json!({"data": [{"index": 1, "embedding": [0.5]}, {"index": 0, "embedding": [0.25]}], "usage": {"prompt_tokens": 3, "cost": 0.1}});
        assert_eq!(
            embeddings_object(&answer, true),
            json!({"embeddings": [{"values": [0.25]}, {"values": [0.5]}], "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3, "cost": 0.1}})
        );
        assert_eq!(
            embeddings_object(&answer, false)["embedding"],
            json!({"values": [0.25]})
        );
        assert_eq!(
            model_object("openai/text-embedding-3-small", Some((8, 0)))
                ["supportedGenerationMethods"],
            json!(["embedContent", "batchEmbedContents"])
        );
    }

    #[test]
    fn answers_and_streams_in_geminis_shape() {
        let echo = Echo {
            id: "req_1".into(),
            model: "gpt-4o".into(),
            thoughts: false,
            dropped: vec![],
        };
        let chat = json!({"model": "gpt-4o-2024", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "ok",
            "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "completion_tokens_details": {"reasoning_tokens": 2}, "cost": 0.001}});
        let with_logprobs = json!({"choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "hi"},
            "logprobs": {"content": [{"token": "hi", "logprob": -0.5, "top_logprobs": [{"token": "hi", "logprob": -0.5}, {"token": "yo", "logprob": -1.5}]},
                {"token": "!", "logprob": -1.5, "top_logprobs": []}]}}], "usage": {}});
        let out = response_object(&with_logprobs, &echo);
        assert_eq!(out["candidates"][0]["avgLogprobs"], -1.0);
        assert_eq!(
            out["candidates"][0]["logprobsResult"]["chosenCandidates"][1],
            json!({"token": "!", "logProbability": -1.5})
        );
        assert_eq!(
            out["candidates"][0]["logprobsResult"]["topCandidates"][0]["candidates"][1],
            json!({"token": "yo", "logProbability": -1.5})
        );
        let out = response_object(&chat, &echo);
        assert_eq!(
            out["candidates"][0]["content"]["parts"],
            json!([{"text": "ok"}, {"functionCall": {"name": "f", "args": {"a": 1}, "id": "call_9"}}])
        );
        assert_eq!(out["candidates"][0]["finishReason"], "STOP");
        assert_eq!(
            out["usageMetadata"],
            json!({"promptTokenCount": 5, "candidatesTokenCount": 5, "totalTokenCount": 12, "thoughtsTokenCount": 2, "cost": 0.001})
        );
        assert_eq!(
            (out["modelVersion"].as_str(), out["responseId"].as_str()),
            (Some("gpt-4o-2024"), Some("req_1"))
        );

        for sse in [true, false] {
            let mut s = Streamer::new(echo.clone(), sse);
            let mut out = Vec::new();
            s.on_chunk(
                &json!({"model": "m", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
                &mut out,
            );
            s.on_chunk(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}), &mut out);
            s.on_chunk(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":2}"}}]}, "finish_reason": "tool_calls"}]}), &mut out);
            s.on_chunk(
                &json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
                &mut out,
            );
            s.on_done(&mut out);
            assert!(s.ended());
            let text = String::from_utf8(out).unwrap();
            let chunks: Vec<Value> = if sse {
                text.split("\r\n\r\n")
                    .filter(|e| !e.is_empty())
                    .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
                    .collect()
            } else {
                serde_json::from_str(&text).unwrap()
            };
            assert_eq!(chunks.len(), 2, "{text}");
            assert_eq!(
                chunks[0]["candidates"][0]["content"]["parts"][0]["text"],
                "Hel"
            );
            assert_eq!(
                chunks[1]["candidates"][0]["content"]["parts"][0]["functionCall"],
                json!({"name": "f", "args": {"a": 2}, "id": "c1"})
            );
            assert_eq!(chunks[1]["candidates"][0]["finishReason"], "STOP");
            assert_eq!(chunks[1]["usageMetadata"]["totalTokenCount"], 3);
        }
        let mut s = Streamer::new(echo, true);
        let mut out = Vec::new();
        s.on_error(
            &json!({"message": "boom", "type": "server_error"}),
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""status":"INTERNAL""#), "{text}");
        assert_eq!(
            error_object(429, &json!({"error": {"message": "slow"}}))["error"]["status"],
            "RESOURCE_EXHAUSTED"
        );
    }
}
