//! Validation of OpenAI request bodies.
//!
//! The checks and their messages follow OpenAI's own (`Invalid type for
//! 'temperature': expected a number, but got a string instead.`), and every
//! error names the field in `param` (`messages[2].tool_call_id`). Fields
//! polyplex does not know are left alone: they are the upstream's to judge.

pub use crate::quick::chat_quick;
use crate::{GatewayError, JsonMap};
use serde_json::Value;

type R<T> = Result<T, GatewayError>;

/// What the gateway needs to know about a validated chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMeta {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub n: u64,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    pub has_tools: bool,
    /// The request uses deprecated function calling (`functions`,
    /// `function_call`, `function` messages): a translated answer's tool
    /// call then goes back as `function_call`.
    pub functions: bool,
    pub has_images: bool,
    pub json_schema: bool,
    /// OpenRouter-style fallback list (`models: [...]`), consumed by the gateway.
    pub fallback_models: Vec<String>,
    pub provider: ProviderPrefs,
    /// The end user the request is for ([`end_user`]), for the usage record.
    pub user: Option<String>,
    /// The request's `metadata` pairs ([`metadata`]; none when empty), for
    /// the usage record.
    pub metadata: Option<JsonMap>,
}

/// The most pairs a request's `metadata` holds, the longest key and the
/// longest value, in characters: OpenAI's limits.
pub const METADATA_PAIRS: usize = 16;
pub const METADATA_KEY_CHARS: usize = 64;
pub const METADATA_VALUE_CHARS: usize = 512;

/// A request's `metadata`: an object of strings within OpenAI's limits
/// ([`check_metadata`]). `None` when absent, null or empty.
pub fn metadata(body: &JsonMap) -> R<Option<&JsonMap>> {
    let Some(v) = get(body, "metadata") else {
        return Ok(None);
    };
    let o = v
        .as_object()
        .ok_or_else(|| bad_type("metadata", "an object", v))?;
    check_metadata("metadata", o)?;
    Ok((!o.is_empty()).then_some(o))
}

/// Checks metadata pairs given as `param` (the body's `metadata`, or the
/// `x-polyplex-metadata` header): at most [`METADATA_PAIRS`] of them, keys
/// of at most [`METADATA_KEY_CHARS`] characters, values strings of at most
/// [`METADATA_VALUE_CHARS`]. Errors name the pair (`metadata.team`).
pub fn check_metadata(param: &str, pairs: &JsonMap) -> R<()> {
    if pairs.len() > METADATA_PAIRS {
        return Err(invalid(
            param,
            format!(
                "too many properties. Expected an object with at most {METADATA_PAIRS} properties, but got an object with {} properties instead.",
                pairs.len()
            ),
        ));
    }
    for (k, v) in pairs {
        let named = format!("{param}.{k}");
        let long = k.chars().count();
        if long > METADATA_KEY_CHARS {
            return Err(invalid(
                param,
                format!("key too long. Expected keys of at most {METADATA_KEY_CHARS} characters, but got a key of {long} characters instead."),
            ));
        }
        let s = v.as_str().ok_or_else(|| bad_type(&named, "a string", v))?;
        let long = s.chars().count();
        if long > METADATA_VALUE_CHARS {
            return Err(invalid(
                &named,
                format!("string too long. Expected a string with maximum length {METADATA_VALUE_CHARS}, but got a string with length {long} instead."),
            ));
        }
    }
    Ok(())
}

/// True when a body's `metadata` is the gateway's alone: given, but not
/// for a completion OpenAI is asked to keep (`store: true`), where it is
/// OpenAI's too. An upstream is then sent the body without it: OpenAI
/// refuses `metadata` without `store`, and other protocols have no place
/// for it.
pub fn metadata_is_ours(body: &JsonMap) -> bool {
    body.contains_key("metadata") && body.get("store") != Some(&Value::Bool(true))
}

/// Longest end-user id kept in a usage record, in bytes.
pub const MAX_END_USER: usize = 256;

/// The end user a request names for its usage record: `user`, else its
/// successor `safety_identifier` (empty: none), cut to [`MAX_END_USER`]
/// bytes at a character boundary.
pub fn end_user(user: Option<&str>, safety_identifier: Option<&str>) -> Option<String> {
    let s = user
        .filter(|s| !s.is_empty())
        .or(safety_identifier.filter(|s| !s.is_empty()))?;
    let mut end = s.len().min(MAX_END_USER);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(s[..end].to_string())
}

/// OpenRouter's per-request `provider: {...}` options, consumed by the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderPrefs {
    /// Providers to try first, in this order.
    pub order: Vec<String>,
    /// Only these providers.
    pub only: Option<Vec<String>>,
    pub ignore: Vec<String>,
    /// False: only the providers in `order` (or the first deployment) are tried.
    pub allow_fallbacks: bool,
    /// `price`, `latency` or `throughput`.
    pub sort: Option<String>,
    /// USD per million prompt / completion tokens.
    pub max_prompt_price: Option<f64>,
    pub max_completion_price: Option<f64>,
}

impl Default for ProviderPrefs {
    fn default() -> Self {
        ProviderPrefs {
            order: Vec::new(),
            only: None,
            ignore: Vec::new(),
            allow_fallbacks: true,
            sort: None,
            max_prompt_price: None,
            max_completion_price: None,
        }
    }
}

/// What the gateway needs to know about a validated embeddings request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsMeta {
    pub model: String,
    pub fallback_models: Vec<String>,
    pub provider: ProviderPrefs,
    pub user: Option<String>,
    pub metadata: Option<JsonMap>,
}

/// What the gateway needs to know about a validated legacy completions request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionsMeta {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
    pub fallback_models: Vec<String>,
    pub provider: ProviderPrefs,
    pub user: Option<String>,
    pub metadata: Option<JsonMap>,
}

/// What the gateway needs of a completions request, in the chat form (no
/// tools, images or schema).
impl From<CompletionsMeta> for ChatMeta {
    fn from(m: CompletionsMeta) -> ChatMeta {
        ChatMeta {
            model: m.model,
            stream: m.stream,
            include_usage: m.include_usage,
            n: 1,
            max_tokens: m.max_tokens,
            has_tools: false,
            functions: false,
            has_images: false,
            json_schema: false,
            fallback_models: m.fallback_models,
            provider: m.provider,
            user: m.user,
            metadata: m.metadata,
        }
    }
}

/// What the gateway needs of an embeddings request, in the chat form.
impl From<EmbeddingsMeta> for ChatMeta {
    fn from(m: EmbeddingsMeta) -> ChatMeta {
        ChatMeta::from(CompletionsMeta {
            model: m.model,
            stream: false,
            include_usage: false,
            max_tokens: None,
            fallback_models: m.fallback_models,
            provider: m.provider,
            user: m.user,
            metadata: m.metadata,
        })
    }
}

/// Fields that steer polyplex itself and are never sent upstream.
pub const GATEWAY_FIELDS: &[&str] = &["models", "provider", "drop_params"];

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn bad_type(param: &str, expected: &str, got: &Value) -> GatewayError {
    GatewayError::invalid_param(
        param,
        format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            type_name(got)
        ),
    )
    .with_code("invalid_type")
}

pub fn missing(param: &str) -> GatewayError {
    GatewayError::invalid_param(param, format!("Missing required parameter: '{param}'."))
        .with_code("missing_required_parameter")
}

fn invalid(param: &str, why: impl AsRef<str>) -> GatewayError {
    GatewayError::invalid_param(param, format!("Invalid '{param}': {}", why.as_ref()))
}

/// The field, treating JSON `null` as absent (OpenAI does the same).
fn get<'a>(body: &'a JsonMap, key: &str) -> Option<&'a Value> {
    crate::lookup(body, key).filter(|v| !v.is_null())
}

fn number_in(body: &JsonMap, key: &str, min: f64, max: f64) -> R<Option<f64>> {
    let Some(v) = get(body, key) else {
        return Ok(None);
    };
    let x = v.as_f64().ok_or_else(|| bad_type(key, "a number", v))?;
    if x < min {
        return Err(invalid(
            key,
            format!("number below minimum value. Expected a value >= {min}, but got {x} instead."),
        ));
    }
    if x > max {
        return Err(invalid(
            key,
            format!("number above maximum value. Expected a value <= {max}, but got {x} instead."),
        ));
    }
    Ok(Some(x))
}

fn integer_in(body: &JsonMap, key: &str, min: i64, max: i64) -> R<Option<i64>> {
    let Some(v) = get(body, key) else {
        return Ok(None);
    };
    let x = crate::integer(v).ok_or_else(|| bad_type(key, "an integer", v))?;
    if x < min {
        return Err(invalid(
            key,
            format!("integer below minimum value. Expected a value >= {min}, but got {x} instead."),
        ));
    }
    if x > max {
        return Err(invalid(
            key,
            format!("integer above maximum value. Expected a value <= {max}, but got {x} instead."),
        ));
    }
    Ok(Some(x))
}

fn boolean(body: &JsonMap, key: &str) -> R<Option<bool>> {
    match get(body, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(bad_type(key, "a boolean", v)),
    }
}

fn string<'a>(body: &'a JsonMap, key: &str) -> R<Option<&'a str>> {
    match get(body, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(bad_type(key, "a string", v)),
    }
}

fn model(body: &JsonMap) -> R<String> {
    match string(body, "model")? {
        None => Err(missing("model")),
        Some("") => Err(invalid(
            "model",
            "empty string. Expected a model name such as `provider/model`.",
        )),
        Some(s) => Ok(s.to_string()),
    }
}

/// `models: [...]` (OpenRouter's fallback list) and `provider: {...}`.
fn routing_fields(body: &JsonMap) -> R<(Vec<String>, ProviderPrefs)> {
    boolean(body, "drop_params")?;
    let mut out = Vec::new();
    let mut prefs = ProviderPrefs::default();
    if let Some(v) = get(body, "models") {
        let arr = v
            .as_array()
            .ok_or_else(|| bad_type("models", "an array of model names", v))?;
        for (i, m) in arr.iter().enumerate() {
            match m.as_str() {
                Some(s) if !s.is_empty() => out.push(s.to_string()),
                _ => return Err(bad_type(&format!("models[{i}]"), "a non-empty string", m)),
            }
        }
    }
    if let Some(v) = get(body, "provider") {
        let o = v
            .as_object()
            .ok_or_else(|| bad_type("provider", "an object", v))?;
        for (k, v) in o {
            let p = format!("provider.{k}");
            match k.as_str() {
                "order" | "only" | "ignore" => {
                    let names: Option<Vec<String>> = v.as_array().and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect());
                    let Some(names) = names else {
                        return Err(bad_type(&p, "an array of provider names", v));
                    };
                    match k.as_str() {
                        "order" => prefs.order = names,
                        "only" => prefs.only = Some(names),
                        _ => prefs.ignore = names,
                    }
                }
                "allow_fallbacks" | "require_parameters" => {
                    let Some(b) = v.as_bool() else {
                        return Err(bad_type(&p, "a boolean", v));
                    };
                    if k == "allow_fallbacks" {
                        prefs.allow_fallbacks = b;
                    }
                }
                "sort" => match v.as_str() {
                    Some(x @ ("price" | "latency" | "throughput")) => prefs.sort = Some(x.to_string()),
                    _ => return Err(invalid(&p, "expected one of 'price', 'latency', 'throughput'.")),
                },
                "max_price" => {
                    let o = v.as_object().ok_or_else(|| bad_type(&p, "an object", v))?;
                    for (pk, pv) in o {
                        let pp = format!("{p}.{pk}");
                        let x = pv.as_f64().filter(|x| *x >= 0.0).ok_or_else(|| bad_type(&pp, "a non-negative number (USD per million tokens)", pv))?;
                        match pk.as_str() {
                            "prompt" => prefs.max_prompt_price = Some(x),
                            "completion" => prefs.max_completion_price = Some(x),
                            _ => return Err(invalid(&pp, "expected 'prompt' or 'completion'.")),
                        }
                    }
                }
                _ => {
                    return Err(GatewayError::invalid_param(
                        p.clone(),
                        format!("Unrecognized routing option '{p}'. Supported: order, only, ignore, sort, allow_fallbacks, require_parameters, max_price."),
                    ))
                }
            }
        }
    }
    Ok((out, prefs))
}

fn stream_fields(body: &JsonMap) -> R<(bool, bool)> {
    let stream = boolean(body, "stream")?.unwrap_or(false);
    let mut include_usage = false;
    if let Some(v) = get(body, "stream_options") {
        let o = v
            .as_object()
            .ok_or_else(|| bad_type("stream_options", "an object", v))?;
        if !stream {
            return Err(GatewayError::invalid_param(
                "stream_options",
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            ));
        }
        include_usage = boolean(o, "include_usage")
            .map_err(|_| {
                bad_type(
                    "stream_options.include_usage",
                    "a boolean",
                    &o["include_usage"],
                )
            })?
            .unwrap_or(false);
    }
    Ok((stream, include_usage))
}

fn stop(body: &JsonMap) -> R<()> {
    match get(body, "stop") {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(a)) => {
            if a.len() > 4 {
                return Err(invalid("stop", format!("array too long. Expected an array with maximum length 4, but got an array with length {} instead.", a.len())));
            }
            for (i, s) in a.iter().enumerate() {
                if !s.is_string() {
                    return Err(bad_type(&format!("stop[{i}]"), "a string", s));
                }
            }
            Ok(())
        }
        Some(v) => Err(bad_type("stop", "a string or an array of strings", v)),
    }
}

/// Checks the sampling parameters; answers the end user named.
fn sampling(body: &JsonMap) -> R<Option<String>> {
    number_in(body, "temperature", 0.0, 2.0)?;
    number_in(body, "top_p", 0.0, 1.0)?;
    number_in(body, "presence_penalty", -2.0, 2.0)?;
    number_in(body, "frequency_penalty", -2.0, 2.0)?;
    integer_in(body, "seed", i64::MIN, i64::MAX)?;
    let user = string(body, "user")?;
    // OpenAI's successors of `user`: who the end user is, and a key for
    // its prompt cache.
    let safety_identifier = string(body, "safety_identifier")?;
    string(body, "prompt_cache_key")?;
    let user = end_user(user, safety_identifier);
    if let Some(v) = get(body, "logit_bias") {
        let o = v
            .as_object()
            .ok_or_else(|| bad_type("logit_bias", "an object", v))?;
        for (k, b) in o {
            if k.parse::<u64>().is_err() {
                return Err(invalid(
                    "logit_bias",
                    format!("keys must be token ids, but got '{k}'."),
                ));
            }
            match b.as_f64() {
                Some(x) if (-100.0..=100.0).contains(&x) => {}
                _ => {
                    return Err(invalid(
                        &format!("logit_bias.{k}"),
                        "expected a number between -100 and 100.",
                    ))
                }
            }
        }
    }
    stop(body)?;
    Ok(user)
}

/// `web_search_options`: `search_context_size` low, medium or high, and an
/// approximate `user_location` (city, country, region, timezone as strings).
fn web_search_options(body: &JsonMap) -> R<()> {
    let Some(v) = get(body, "web_search_options") else {
        return Ok(());
    };
    let o = v
        .as_object()
        .ok_or_else(|| bad_type("web_search_options", "an object", v))?;
    for k in o.keys() {
        if !["search_context_size", "user_location"].contains(&k.as_str()) {
            return Err(GatewayError::invalid_param(
                format!("web_search_options.{k}"),
                format!("Unrecognized request argument supplied: web_search_options.{k}"),
            ));
        }
    }
    match get(o, "search_context_size") {
        None => {}
        Some(Value::String(s)) if ["low", "medium", "high"].contains(&s.as_str()) => {}
        Some(v) => {
            return Err(invalid(
                "web_search_options.search_context_size",
                format!("expected one of 'low', 'medium' or 'high', but got {v} instead."),
            ))
        }
    }
    if let Some(loc) = get(o, "user_location") {
        let loc = loc
            .as_object()
            .ok_or_else(|| bad_type("web_search_options.user_location", "an object", loc))?;
        if loc.get("type").and_then(Value::as_str) != Some("approximate") {
            return Err(invalid(
                "web_search_options.user_location.type",
                "expected 'approximate'.",
            ));
        }
        let approx = match get(loc, "approximate") {
            None => return Ok(()),
            Some(a) => a.as_object().ok_or_else(|| {
                bad_type(
                    "web_search_options.user_location.approximate",
                    "an object",
                    a,
                )
            })?,
        };
        for (k, v) in approx {
            if !["city", "country", "region", "timezone"].contains(&k.as_str()) {
                return Err(GatewayError::invalid_param(
                    format!("web_search_options.user_location.approximate.{k}"),
                    format!("Unrecognized request argument supplied: web_search_options.user_location.approximate.{k}"),
                ));
            }
            if !v.is_string() && !v.is_null() {
                return Err(bad_type(
                    &format!("web_search_options.user_location.approximate.{k}"),
                    "a string",
                    v,
                ));
            }
        }
    }
    Ok(())
}

const ROLES: &str = "'system', 'developer', 'user', 'assistant', 'tool' or 'function'";

/// Content parts of a message: returns whether an image part is present.
fn content_parts(p: &str, role: &str, parts: &[Value]) -> R<bool> {
    let mut image = false;
    for (j, part) in parts.iter().enumerate() {
        let pp = || format!("{p}[{j}]");
        let o = part
            .as_object()
            .ok_or_else(|| bad_type(&pp(), "an object", part))?;
        let ty = match crate::lookup(o, "type") {
            Some(Value::String(t)) => t.as_str(),
            Some(v) => return Err(bad_type(&format!("{}.type", pp()), "a string", v)),
            None => return Err(missing(&format!("{}.type", pp()))),
        };
        match ty {
            "text" => {
                if !crate::lookup(o, "text").is_some_and(Value::is_string) {
                    return Err(missing(&format!("{}.text", pp())));
                }
            }
            "refusal" if role == "assistant" => {}
            "image_url" | "input_audio" | "file" if role == "user" => {
                if ty == "image_url" {
                    let url = o
                        .get("image_url")
                        .and_then(|u| u.get("url"))
                        .and_then(Value::as_str);
                    if url.is_none_or(str::is_empty) {
                        return Err(missing(&format!("{}.image_url.url", pp())));
                    }
                    image = true;
                } else if ty == "file" {
                    let file = o.get("file");
                    let given = |k: &str| file.and_then(|f| f.get(k)).is_some_and(Value::is_string);
                    if !given("file_data") && !given("file_id") {
                        return Err(missing(&format!("{}.file.file_data", pp())));
                    }
                } else {
                    let audio = o.get("input_audio");
                    if !audio
                        .and_then(|a| a.get("data"))
                        .is_some_and(Value::is_string)
                    {
                        return Err(missing(&format!("{}.input_audio.data", pp())));
                    }
                    match audio.and_then(|a| a.get("format")) {
                        Some(Value::String(f)) if f == "wav" || f == "mp3" => {}
                        Some(v) => {
                            return Err(invalid(
                                &format!("{}.input_audio.format", pp()),
                                format!("{v} is not one of 'wav' and 'mp3'."),
                            ))
                        }
                        None => return Err(missing(&format!("{}.input_audio.format", pp()))),
                    }
                }
            }
            other => {
                return Err(invalid(
                    &format!("{}.type", pp()),
                    format!("'{other}' is not a valid content part type for a '{role}' message."),
                ))
            }
        }
    }
    Ok(image)
}

fn messages(body: &JsonMap) -> R<bool> {
    let v = get(body, "messages").ok_or_else(|| missing("messages"))?;
    let arr = v
        .as_array()
        .ok_or_else(|| bad_type("messages", "an array", v))?;
    if arr.is_empty() {
        return Err(invalid(
            "messages",
            "empty array. Expected an array with minimum length 1, but got an empty array instead.",
        ));
    }
    let mut image = false;
    for (i, m) in arr.iter().enumerate() {
        let o = m
            .as_object()
            .ok_or_else(|| bad_type(&format!("messages[{i}]"), "an object", m))?;
        let role = match crate::lookup(o, "role") {
            Some(Value::String(r)) => r.as_str(),
            Some(v) => return Err(bad_type(&format!("messages[{i}].role"), "a string", v)),
            None => return Err(missing(&format!("messages[{i}].role"))),
        };
        if !matches!(
            role,
            "system" | "developer" | "user" | "assistant" | "tool" | "function"
        ) {
            return Err(invalid(
                &format!("messages[{i}].role"),
                format!("'{role}' is not one of {ROLES}."),
            ));
        }
        // Paths are formatted only for an error (this runs for every message).
        let cp = || format!("messages[{i}].content");
        let has_calls = crate::lookup(o, "tool_calls").is_some_and(|t| !t.is_null())
            || crate::lookup(o, "function_call").is_some_and(|t| !t.is_null());
        match crate::lookup(o, "content") {
            None | Some(Value::Null) => {
                // An assistant turn may be only its tool calls, a refusal,
                // or an earlier audio answer (`audio: {"id": ...}`).
                let stands_alone = has_calls
                    || crate::lookup(o, "refusal").is_some()
                    || crate::lookup(o, "audio").is_some_and(|a| !a.is_null());
                if !(role == "assistant" && stands_alone) {
                    return Err(missing(&cp()));
                }
            }
            Some(Value::String(_)) => {}
            Some(Value::Array(parts)) => image |= content_parts(&cp(), role, parts)?,
            Some(v) => return Err(bad_type(&cp(), "a string or an array of content parts", v)),
        }
        if role == "tool" {
            match crate::lookup(o, "tool_call_id") {
                Some(Value::String(_)) => {}
                Some(v) => {
                    return Err(bad_type(
                        &format!("messages[{i}].tool_call_id"),
                        "a string",
                        v,
                    ))
                }
                None => return Err(missing(&format!("messages[{i}].tool_call_id"))),
            }
        }
        if role == "function" && !crate::lookup(o, "name").is_some_and(Value::is_string) {
            return Err(missing(&format!("messages[{i}].name")));
        }
        if let Some(fc) = crate::lookup(o, "function_call").filter(|t| !t.is_null()) {
            let fp = format!("messages[{i}].function_call");
            if role != "assistant" {
                return Err(invalid(
                    &fp,
                    "only 'assistant' messages may carry a function_call.",
                ));
            }
            called(&fp, fc, "arguments")?;
        }
        if let Some(tc) = crate::lookup(o, "tool_calls").filter(|t| !t.is_null()) {
            let tp = format!("messages[{i}].tool_calls");
            if role != "assistant" {
                return Err(invalid(
                    &tp,
                    "only 'assistant' messages may carry tool_calls.",
                ));
            }
            let calls = tc.as_array().ok_or_else(|| bad_type(&tp, "an array", tc))?;
            for (j, c) in calls.iter().enumerate() {
                let cp = format!("{tp}[{j}]");
                // GPT-5's free-form tools are called with text, not JSON.
                let (kind, input) = match c.get("type").and_then(Value::as_str) {
                    Some("custom") => ("custom", "input"),
                    _ => ("function", "arguments"),
                };
                let f = c
                    .get(kind)
                    .ok_or_else(|| missing(&format!("{cp}.{kind}")))?;
                if !c.get("id").is_some_and(Value::is_string) {
                    return Err(missing(&format!("{cp}.id")));
                }
                called(&format!("{cp}.{kind}"), f, input)?;
            }
        }
    }
    Ok(image)
}

fn valid_function_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A tool's name at `p` (`...function.name`, `...custom.name`) in the form
/// OpenAI takes.
fn tool_name<'a>(p: &str, name: Option<&'a str>) -> R<&'a str> {
    let name = name.ok_or_else(|| missing(p))?;
    if !valid_function_name(name) {
        return Err(invalid(
            p,
            format!("'{name}' does not match '^[a-zA-Z0-9_-]{{1,64}}$'."),
        ));
    }
    Ok(name)
}

/// A call at `p` of a function (a tool call's `function`, or an assistant
/// turn's deprecated `function_call`: its `arguments`, a JSON string) or
/// of a custom tool (its `input`, text): a name, and that string.
fn called(p: &str, f: &Value, input: &str) -> R<()> {
    if !f.get("name").is_some_and(Value::is_string) {
        return Err(missing(&format!("{p}.name")));
    }
    match f.get(input) {
        Some(Value::String(_)) => Ok(()),
        other => Err(bad_type(
            &format!("{p}.{input}"),
            if input == "arguments" {
                "a JSON string"
            } else {
                "a string"
            },
            other.unwrap_or(&Value::Null),
        )),
    }
}

/// A function declared at `p` (a tool's `function`, or one of the
/// deprecated `functions`): its name, checked, and its `parameters` a JSON
/// Schema object if given.
fn function_decl<'a>(p: &str, f: &'a JsonMap) -> R<&'a str> {
    let name = tool_name(&format!("{p}.name"), f.get("name").and_then(Value::as_str))?;
    if let Some(params) = crate::lookup(f, "parameters").filter(|x| !x.is_null()) {
        if !params.is_object() {
            return Err(bad_type(
                &format!("{p}.parameters"),
                "a JSON Schema object",
                params,
            ));
        }
    }
    Ok(name)
}

/// A tool chosen by name in `o` (a `function`, or by its `type` a `custom`
/// one), at `p`: declared.
fn chosen_tool(p: &str, o: &JsonMap, names: &[String]) -> R<()> {
    let kind = match o.get("type").and_then(Value::as_str) {
        Some("custom") => "custom",
        _ => "function",
    };
    match o
        .get(kind)
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
    {
        Some(n) if names.iter().any(|x| x == n) => Ok(()),
        Some(n) => Err(invalid(
            p,
            format!("the {kind} tool '{n}' is not among the declared tools."),
        )),
        None => Err(missing(&format!("{p}.{kind}.name"))),
    }
}

/// `tool_choice: {"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}`:
/// a mode of `auto` or `required`, and tools that were declared.
fn allowed_tools(o: &JsonMap, names: &[String]) -> R<()> {
    let a = o
        .get("allowed_tools")
        .and_then(Value::as_object)
        .ok_or_else(|| missing("tool_choice.allowed_tools"))?;
    match a.get("mode") {
        Some(Value::String(m)) if m == "auto" || m == "required" => {}
        Some(v) => {
            return Err(invalid(
                "tool_choice.allowed_tools.mode",
                format!("{v} is not one of 'auto' and 'required'."),
            ))
        }
        None => return Err(missing("tool_choice.allowed_tools.mode")),
    }
    let tools = a
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| missing("tool_choice.allowed_tools.tools"))?;
    for (i, t) in tools.iter().enumerate() {
        let p = format!("tool_choice.allowed_tools.tools[{i}]");
        let t = t.as_object().ok_or_else(|| bad_type(&p, "an object", t))?;
        chosen_tool(&p, t, names)?;
    }
    Ok(())
}

/// tools and tool_choice; returns the declared function names.
fn tools(body: &JsonMap) -> R<Vec<String>> {
    let mut names = Vec::new();
    if let Some(v) = get(body, "tools") {
        let arr = v
            .as_array()
            .ok_or_else(|| bad_type("tools", "an array", v))?;
        for (i, t) in arr.iter().enumerate() {
            let p = format!("tools[{i}]");
            let o = t.as_object().ok_or_else(|| bad_type(&p, "an object", t))?;
            match crate::lookup(o, "type").and_then(Value::as_str) {
                Some("function") => {}
                // GPT-5's free-form tools: a name, and input that is text.
                Some("custom") => {
                    let name = o
                        .get("custom")
                        .and_then(|c| c.get("name"))
                        .and_then(Value::as_str);
                    names.push(tool_name(&format!("{p}.custom.name"), name)?.to_string());
                    continue;
                }
                Some(other) => {
                    return Err(invalid(
                        &format!("{p}.type"),
                        format!("'{other}' is not supported; expected 'function' or 'custom'."),
                    ))
                }
                None => return Err(missing(&format!("{p}.type"))),
            }
            let f = o
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| missing(&format!("{p}.function")))?;
            names.push(function_decl(&format!("{p}.function"), f)?.to_string());
        }
    }
    if let Some(tc) = get(body, "tool_choice") {
        if names.is_empty() && get(body, "tools").is_none() {
            return Err(GatewayError::invalid_param("tool_choice", "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."));
        }
        match tc {
            Value::String(s) if matches!(s.as_str(), "none" | "auto" | "required") => {}
            Value::String(s) => {
                return Err(invalid(
                    "tool_choice",
                    format!("'{s}' is not one of 'none', 'auto', 'required' or a named function."),
                ))
            }
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("allowed_tools") => {
                allowed_tools(o, &names)?
            }
            Value::Object(o) => {
                chosen_tool("tool_choice", o, &names)?;
            }
            v => return Err(bad_type("tool_choice", "a string or an object", v)),
        }
    }
    boolean(body, "parallel_tool_calls")?;
    Ok(names)
}

/// `functions` and `function_call`, OpenAI's deprecated function calling;
/// returns the declared names (None without `functions`).
fn functions(body: &JsonMap) -> R<Option<Vec<String>>> {
    let mut names = None;
    if let Some(v) = get(body, "functions") {
        if get(body, "tools").is_some() {
            return Err(invalid(
                "functions",
                "use either 'tools' or the deprecated 'functions', not both.",
            ));
        }
        let arr = v
            .as_array()
            .ok_or_else(|| bad_type("functions", "an array", v))?;
        let mut declared = Vec::with_capacity(arr.len());
        for (i, f) in arr.iter().enumerate() {
            let p = format!("functions[{i}]");
            let o = f.as_object().ok_or_else(|| bad_type(&p, "an object", f))?;
            declared.push(function_decl(&p, o)?.to_string());
        }
        names = Some(declared);
    }
    if let Some(fc) = get(body, "function_call") {
        let Some(declared) = &names else {
            return Err(GatewayError::invalid_param("function_call", "Invalid value for 'function_call': 'function_call' is only allowed when 'functions' are specified."));
        };
        match fc {
            Value::String(s) if matches!(s.as_str(), "none" | "auto") => {}
            Value::Object(o) => {
                let name = o.get("name").and_then(Value::as_str);
                let name = name.ok_or_else(|| missing("function_call.name"))?;
                if !declared.iter().any(|d| d == name) {
                    return Err(invalid(
                        "function_call.name",
                        format!("the function '{name}' is not among 'functions'."),
                    ));
                }
            }
            v => {
                return Err(bad_type(
                    "function_call",
                    "'none', 'auto' or {\"name\": ...}",
                    v,
                ))
            }
        }
    }
    Ok(names)
}

/// Whether a chat request uses OpenAI's deprecated function calling
/// (`functions`, `function_call`, an assistant turn's `function_call`, a
/// `function` message) instead of tools.
pub fn uses_functions(body: &JsonMap) -> bool {
    let given = |v: Option<&Value>| v.is_some_and(|v| !v.is_null());
    given(crate::lookup(body, "functions"))
        || given(crate::lookup(body, "function_call"))
        || crate::lookup(body, "messages")
            .and_then(Value::as_array)
            .is_some_and(|ms| {
                ms.iter().any(|m| {
                    given(crate::member(m, "function_call"))
                        || crate::member(m, "role").and_then(Value::as_str) == Some("function")
                })
            })
}

/// response_format; returns whether it asks for a json_schema.
fn response_format(body: &JsonMap) -> R<bool> {
    let Some(v) = get(body, "response_format") else {
        return Ok(false);
    };
    let o = v
        .as_object()
        .ok_or_else(|| bad_type("response_format", "an object", v))?;
    match crate::lookup(o, "type").and_then(Value::as_str) {
        Some("text" | "json_object") => Ok(false),
        Some("json_schema") => {
            let s = o
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| missing("response_format.json_schema"))?;
            if !crate::lookup(s, "name").is_some_and(Value::is_string) {
                return Err(missing("response_format.json_schema.name"));
            }
            if let Some(schema) = crate::lookup(s, "schema") {
                if !schema.is_object() {
                    return Err(bad_type(
                        "response_format.json_schema.schema",
                        "a JSON Schema object",
                        schema,
                    ));
                }
            }
            Ok(true)
        }
        Some(other) => Err(invalid(
            "response_format.type",
            format!("'{other}' is not one of 'text', 'json_object', 'json_schema'."),
        )),
        None => Err(missing("response_format.type")),
    }
}

/// Validates a `POST /v1/chat/completions` body.
pub fn chat(body: &JsonMap) -> R<ChatMeta> {
    let model = model(body)?;
    let (fallback_models, provider) = routing_fields(body)?;
    let has_images = messages(body)?;
    let (stream, include_usage) = stream_fields(body)?;
    let user = sampling(body)?;
    let metadata = metadata(body)?.cloned();
    let n = integer_in(body, "n", 1, 128)?.unwrap_or(1) as u64;
    let max_tokens = integer_in(body, "max_tokens", 1, i64::MAX)?;
    let max_completion = integer_in(body, "max_completion_tokens", 1, i64::MAX)?;
    let tool_names = tools(body)?;
    let function_names = functions(body)?;
    let json_schema = response_format(body)?;
    web_search_options(body)?;
    let logprobs = boolean(body, "logprobs")?.unwrap_or(false);
    if let Some(k) = integer_in(body, "top_logprobs", 0, 20)? {
        if k > 0 && !logprobs {
            return Err(GatewayError::invalid_param("top_logprobs", "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used."));
        }
    }
    Ok(ChatMeta {
        model,
        stream,
        include_usage,
        n,
        max_tokens: max_completion.or(max_tokens).map(|x| x as u64),
        has_tools: !tool_names.is_empty() || function_names.as_ref().is_some_and(|f| !f.is_empty()),
        functions: uses_functions(body),
        has_images,
        json_schema,
        fallback_models,
        provider,
        user,
        metadata,
    })
}

/// What the gateway reads of a JSON body it passes on whole (moderations,
/// images, speech): the model (`default_model` when it names none), the
/// routing options, `stream` and the end user, each checked as a chat
/// request's are; the rest is the upstream's to judge.
pub fn passed_on(body: &JsonMap, default_model: Option<&str>) -> R<PassedOn> {
    let model = match (get(body, "model"), default_model) {
        (None, Some(d)) => d.to_string(),
        _ => model(body)?,
    };
    let (fallback_models, provider) = routing_fields(body)?;
    Ok(PassedOn {
        model,
        fallback_models,
        provider,
        stream: boolean(body, "stream")?.unwrap_or(false),
        user: end_user(string(body, "user")?, string(body, "safety_identifier")?),
    })
}

/// What [`passed_on`] reads.
#[derive(Debug, Clone, PartialEq)]
pub struct PassedOn {
    pub model: String,
    pub fallback_models: Vec<String>,
    pub provider: ProviderPrefs,
    pub stream: bool,
    pub user: Option<String>,
}

/// Validates a `POST /v1/embeddings` body.
pub fn embeddings(body: &JsonMap) -> R<EmbeddingsMeta> {
    let model = model(body)?;
    let (fallback_models, provider) = routing_fields(body)?;
    let input = get(body, "input").ok_or_else(|| missing("input"))?;
    // OpenAI refuses an empty text: it has nothing to embed.
    let empty = |p: &str| invalid(p, "empty string. Expected a string with minimum length 1.");
    match input {
        Value::String(s) if s.is_empty() => return Err(empty("input")),
        Value::String(_) => {}
        Value::Array(a) if a.is_empty() => return Err(invalid(
            "input",
            "empty array. Expected an array with minimum length 1, but got an empty array instead.",
        )),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                if x.as_str() == Some("") {
                    return Err(empty(&format!("input[{i}]")));
                }
                let ok = x.is_string()
                    || x.is_u64()
                    || x.as_array()
                        .is_some_and(|t| !t.is_empty() && t.iter().all(Value::is_u64));
                if !ok {
                    return Err(bad_type(
                        &format!("input[{i}]"),
                        "a string, a token id or an array of token ids",
                        x,
                    ));
                }
            }
        }
        v => return Err(bad_type("input", "a string or an array", v)),
    }
    match string(body, "encoding_format")? {
        None | Some("float" | "base64") => {}
        Some(f) => {
            return Err(invalid(
                "encoding_format",
                format!("'{f}' is not one of 'float', 'base64'."),
            ))
        }
    }
    integer_in(body, "dimensions", 1, 65536)?;
    let user = end_user(string(body, "user")?, None);
    let metadata = metadata(body)?.cloned();
    Ok(EmbeddingsMeta {
        model,
        fallback_models,
        provider,
        user,
        metadata,
    })
}

/// The most documents one rerank request may carry (Cohere's limit).
pub const MOST_RERANK_DOCUMENTS: usize = 10_000;

/// Validates a `POST /v1/rerank` body (Cohere's shape, which Jina, Voyage,
/// Together and vLLM share): `query`, `documents` (strings, or objects with
/// a `text`, as Cohere's v1 and Jina take them), `top_n`, `return_documents`,
/// `max_tokens_per_doc`, and the gateway's own fields.
pub fn rerank(body: &JsonMap) -> R<RerankMeta> {
    let model = model(body)?;
    let (fallback_models, provider) = routing_fields(body)?;
    let query = match string(body, "query")? {
        None => return Err(missing("query")),
        Some("") => {
            return Err(invalid(
                "query",
                "empty string. Expected a string with minimum length 1.",
            ))
        }
        Some(q) => q.to_string(),
    };
    let docs = match get(body, "documents") {
        None => return Err(missing("documents")),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(invalid(
                "documents",
                "empty array. Expected an array with minimum length 1, but got an empty array instead.",
            ))
        }
        Some(Value::Array(a)) if a.len() > MOST_RERANK_DOCUMENTS => {
            return Err(invalid(
                "documents",
                format!(
                    "array too long. Expected an array with maximum length {MOST_RERANK_DOCUMENTS}, but got an array with length {} instead.",
                    a.len()
                ),
            ))
        }
        Some(Value::Array(a)) => a,
        Some(v) => return Err(bad_type("documents", "an array", v)),
    };
    let mut documents = Vec::with_capacity(docs.len());
    for (i, d) in docs.iter().enumerate() {
        let text = match d {
            Value::String(t) => t,
            Value::Object(o) => match o.get("text") {
                Some(Value::String(t)) => t,
                Some(v) => return Err(bad_type(&format!("documents[{i}].text"), "a string", v)),
                None => return Err(missing(&format!("documents[{i}].text"))),
            },
            v => {
                return Err(bad_type(
                    &format!("documents[{i}]"),
                    "a string or an object with a `text`",
                    v,
                ))
            }
        };
        documents.push(text.clone());
    }
    let top_n = integer_in(body, "top_n", 1, i64::MAX)?.map(|n| n as u64);
    integer_in(body, "max_tokens_per_doc", 1, i64::MAX)?;
    let return_documents = boolean(body, "return_documents")?.unwrap_or(false);
    let user = end_user(string(body, "user")?, None);
    let metadata = metadata(body)?.cloned();
    Ok(RerankMeta {
        model,
        fallback_models,
        provider,
        user,
        metadata,
        query,
        documents,
        top_n,
        return_documents,
    })
}

/// What [`rerank`] reads.
#[derive(Debug, Clone, PartialEq)]
pub struct RerankMeta {
    pub model: String,
    pub fallback_models: Vec<String>,
    pub provider: ProviderPrefs,
    pub user: Option<String>,
    pub metadata: Option<JsonMap>,
    pub query: String,
    /// Each document's text.
    pub documents: Vec<String>,
    pub top_n: Option<u64>,
    /// Whether the answer is to carry each ranked document's text.
    pub return_documents: bool,
}

/// Validates a `POST /v1/completions` (legacy) body.
pub fn completions(body: &JsonMap) -> R<CompletionsMeta> {
    let model = model(body)?;
    let (fallback_models, provider) = routing_fields(body)?;
    match get(body, "prompt") {
        None => return Err(missing("prompt")),
        Some(Value::String(_)) => {}
        Some(Value::Array(a)) if !a.is_empty() => {}
        Some(Value::Array(_)) => {
            return Err(invalid(
                "prompt",
                "empty array. Expected an array with minimum length 1.",
            ))
        }
        Some(v) => return Err(bad_type("prompt", "a string or an array", v)),
    }
    let (stream, include_usage) = stream_fields(body)?;
    let user = sampling(body)?;
    let metadata = metadata(body)?.cloned();
    integer_in(body, "n", 1, 128)?;
    integer_in(body, "best_of", 1, 20)?;
    let max_tokens = integer_in(body, "max_tokens", 0, i64::MAX)?.map(|x| x as u64);
    integer_in(body, "logprobs", 0, 5)?;
    boolean(body, "echo")?;
    string(body, "suffix")?;
    Ok(CompletionsMeta {
        model,
        stream,
        include_usage,
        max_tokens,
        fallback_models,
        provider,
        user,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> JsonMap {
        v.as_object().unwrap().clone()
    }

    fn err(v: Value) -> GatewayError {
        chat(&map(v)).unwrap_err()
    }

    fn ok_body() -> Value {
        json!({"model": "demo/echo", "messages": [{"role": "user", "content": "hi"}]})
    }

    #[test]
    fn minimal_request_is_valid() {
        let m = chat(&map(ok_body())).unwrap();
        assert_eq!(m.model, "demo/echo");
        assert!(!m.stream);
        assert_eq!(m.n, 1);
    }

    #[test]
    fn full_request_is_valid() {
        let m = chat(&map(json!({
            "model": "openai/gpt-4o",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "really"}]},
                {"role": "user", "content": [{"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"}
            ],
            "temperature": 0.5, "top_p": 1, "n": 2, "stop": ["a", "b"], "max_tokens": 10,
            "max_completion_tokens": 20, "stream": true, "stream_options": {"include_usage": true},
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            "seed": 7, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": false,
            "logprobs": true, "top_logprobs": 2, "presence_penalty": 0.1, "frequency_penalty": -0.1,
            "logit_bias": {"50256": -100}, "user": "u1", "some_future_param": {"x": 1},
            "models": ["openai/gpt-4o-mini"]
        })))
        .unwrap();
        assert!(m.stream && m.include_usage && m.has_tools && m.has_images && m.json_schema);
        assert_eq!(m.n, 2);
        assert_eq!(m.max_tokens, Some(20));
        assert_eq!(m.fallback_models, vec!["openai/gpt-4o-mini"]);
    }

    #[test]
    fn missing_and_empty_fields_are_named() {
        let e = err(json!({"messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(e.param.as_deref(), Some("model"));
        assert!(e.message.contains("Missing required parameter"));
        let e = err(json!({"model": "m"}));
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = err(json!({"model": "m", "messages": []}));
        assert_eq!(e.param.as_deref(), Some("messages"));
        assert!(e.message.contains("empty array"));
        let e = err(json!({"model": "", "messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(e.param.as_deref(), Some("model"));
    }

    #[test]
    fn wrong_types_are_named() {
        let mut b = ok_body();
        b["temperature"] = json!("hot");
        let e = err(b);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        assert!(
            e.message.contains("expected a number, but got a string"),
            "{}",
            e.message
        );
        let mut b = ok_body();
        b["messages"][0]["content"] = json!(5);
        assert_eq!(err(b).param.as_deref(), Some("messages[0].content"));
        let mut b = ok_body();
        b["messages"][0]["role"] = json!("robot");
        assert_eq!(err(b).param.as_deref(), Some("messages[0].role"));
        let mut b = ok_body();
        b["stream"] = json!("yes");
        assert_eq!(err(b).param.as_deref(), Some("stream"));
        let mut b = ok_body();
        b["n"] = json!(1.5);
        assert_eq!(err(b).param.as_deref(), Some("n"));
    }

    /// A file part needs its data or an id, an audio part its data and a
    /// format OpenAI takes; each error names the member.
    #[test]
    fn file_and_audio_parts_are_checked() {
        let with_part = |part: Value| {
            let mut b = ok_body();
            b["messages"][0]["content"] = json!([{"type": "text", "text": "a"}, part]);
            b
        };
        for ok in [
            json!({"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}}),
            json!({"type": "file", "file": {"file_id": "file-1"}}),
            json!({"type": "input_audio", "input_audio": {"data": "UklG", "format": "mp3"}}),
        ] {
            chat(&map(with_part(ok.clone()))).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        for (bad, param) in [
            (
                json!({"type": "file", "file": {"filename": "a.pdf"}}),
                "messages[0].content[1].file.file_data",
            ),
            (
                json!({"type": "file"}),
                "messages[0].content[1].file.file_data",
            ),
            (
                json!({"type": "input_audio", "input_audio": {"format": "wav"}}),
                "messages[0].content[1].input_audio.data",
            ),
            (
                json!({"type": "input_audio", "input_audio": {"data": "UklG", "format": "ogg"}}),
                "messages[0].content[1].input_audio.format",
            ),
            (
                json!({"type": "input_audio", "input_audio": {"data": "UklG"}}),
                "messages[0].content[1].input_audio.format",
            ),
        ] {
            assert_eq!(
                err(with_part(bad.clone())).param.as_deref(),
                Some(param),
                "{bad}"
            );
        }
    }

    #[test]
    fn ranges_are_checked() {
        for (k, v) in [
            ("temperature", json!(2.5)),
            ("top_p", json!(-0.1)),
            ("n", json!(0)),
            ("max_tokens", json!(0)),
            ("presence_penalty", json!(3)),
            ("top_logprobs", json!(21)),
        ] {
            let mut b = ok_body();
            b[k] = v;
            assert_eq!(err(b).param.as_deref(), Some(k));
        }
        let mut b = ok_body();
        b["stop"] = json!(["a", "b", "c", "d", "e"]);
        assert_eq!(err(b).param.as_deref(), Some("stop"));
    }

    #[test]
    fn deprecated_function_calling_rules() {
        let with = |k: &str, v: Value| {
            let mut b = ok_body();
            b[k] = v;
            b
        };
        let fns = json!([{"name": "weather", "parameters": {"type": "object"}}]);
        let mut b = with("functions", fns.clone());
        b["function_call"] = json!({"name": "weather"});
        let m = chat(&map(b)).unwrap();
        assert!(m.functions && m.has_tools);
        for (b, param) in [
            (with("function_call", json!("auto")), "function_call"),
            (
                with("functions", json!([{"name": "has space"}])),
                "functions[0].name",
            ),
            (
                with("functions", json!([{"name": "f", "parameters": []}])),
                "functions[0].parameters",
            ),
            (with("functions", json!({"name": "f"})), "functions"),
            (
                with("messages", json!([{"role": "function", "content": "x"}])),
                "messages[0].name",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "user", "content": "x", "function_call": {"name": "f", "arguments": "{}"}}]),
                ),
                "messages[0].function_call",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "assistant", "content": null, "function_call": {"name": "f", "arguments": {}}}]),
                ),
                "messages[0].function_call.arguments",
            ),
        ] {
            assert_eq!(err(b.clone()).param.as_deref(), Some(param), "{b}");
        }
        let mut b = with("functions", fns.clone());
        b["function_call"] = json!({"name": "clock"});
        assert_eq!(err(b).param.as_deref(), Some("function_call.name"));
        let mut b = with("functions", fns);
        b["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
        assert_eq!(err(b).param.as_deref(), Some("functions"));
        // A conversation that used them once still goes back as one.
        let b = with(
            "messages",
            json!([{"role": "user", "content": "x"},
            {"role": "assistant", "content": null, "function_call": {"name": "f", "arguments": "{}"}},
            {"role": "function", "name": "f", "content": "1"}]),
        );
        assert!(chat(&map(b)).unwrap().functions);
        assert!(!chat(&map(ok_body())).unwrap().functions);
    }

    #[test]
    fn tool_rules() {
        let mut b = ok_body();
        b["tool_choice"] = json!("auto");
        assert_eq!(err(b).param.as_deref(), Some("tool_choice"));
        let mut b = ok_body();
        b["tools"] = json!([{"type": "function", "function": {"name": "has space"}}]);
        assert_eq!(err(b).param.as_deref(), Some("tools[0].function.name"));
        let mut b = ok_body();
        b["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
        b["tool_choice"] = json!({"type": "function", "function": {"name": "g"}});
        assert_eq!(err(b).param.as_deref(), Some("tool_choice"));
        let mut b = ok_body();
        b["messages"] = json!([{"role": "tool", "content": "x"}]);
        assert_eq!(err(b).param.as_deref(), Some("messages[0].tool_call_id"));
        // An assistant turn that was an audio answer needs no content.
        let mut b = ok_body();
        b["messages"] = json!([{"role": "user", "content": "hi"},
            {"role": "assistant", "audio": {"id": "audio_1"}}, {"role": "user", "content": "again"}]);
        chat(&map(b)).unwrap();
    }

    /// GPT-5's tool shapes: free-form `custom` tools, a custom tool chosen by
    /// name, and `allowed_tools` (a mode and declared tools).
    #[test]
    fn a_custom_tool_call_goes_back_as_text() {
        let mut b = ok_body();
        b["tools"] = json!([{"type": "custom", "custom": {"name": "code"}}]);
        b["messages"] = json!([{"role": "user", "content": "2**10?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "custom", "custom": {"name": "code", "input": "print(2**10)"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "1024"}]);
        assert!(chat(&map(b.clone())).is_ok());
        b["messages"][1]["tool_calls"][0]["custom"]["input"] = json!({"code": 1});
        assert_eq!(
            err(b.clone()).param.as_deref(),
            Some("messages[1].tool_calls[0].custom.input")
        );
        b["messages"][1]["tool_calls"][0] = json!({"id": "call_1", "type": "custom"});
        assert_eq!(
            err(b).param.as_deref(),
            Some("messages[1].tool_calls[0].custom")
        );
    }

    #[test]
    fn custom_tools_and_allowed_tools() {
        let with = |tool_choice: Value| {
            let mut b = ok_body();
            b["tools"] = json!([{"type": "function", "function": {"name": "f"}},
                {"type": "custom", "custom": {"name": "code", "description": "runs code"}}]);
            b["tool_choice"] = tool_choice;
            b
        };
        for ok in [
            json!("auto"),
            json!({"type": "custom", "custom": {"name": "code"}}),
            json!({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
                {"type": "function", "function": {"name": "f"}}, {"type": "custom", "custom": {"name": "code"}}]}}),
        ] {
            chat(&map(with(ok.clone()))).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        for (bad, param) in [
            (
                json!({"type": "custom", "custom": {"name": "nope"}}),
                "tool_choice",
            ),
            (
                json!({"type": "allowed_tools", "allowed_tools": {"mode": "sometimes", "tools": [{"type": "function", "function": {"name": "f"}}]}}),
                "tool_choice.allowed_tools.mode",
            ),
            (
                json!({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}),
                "tool_choice.allowed_tools.tools",
            ),
            (
                json!({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "g"}}]}}),
                "tool_choice.allowed_tools.tools[0]",
            ),
            (
                json!({"type": "allowed_tools"}),
                "tool_choice.allowed_tools",
            ),
        ] {
            assert_eq!(
                err(with(bad.clone())).param.as_deref(),
                Some(param),
                "{bad}"
            );
        }
        let mut b = ok_body();
        b["tools"] = json!([{"type": "custom", "custom": {}}]);
        assert_eq!(err(b).param.as_deref(), Some("tools[0].custom.name"));
    }

    #[test]
    fn stream_options_need_stream() {
        let mut b = ok_body();
        b["stream_options"] = json!({"include_usage": true});
        assert_eq!(err(b).param.as_deref(), Some("stream_options"));
    }

    #[test]
    fn response_format_checked() {
        let mut b = ok_body();
        b["response_format"] = json!({"type": "yaml"});
        assert_eq!(err(b).param.as_deref(), Some("response_format.type"));
        let mut b = ok_body();
        b["response_format"] = json!({"type": "json_schema"});
        assert_eq!(err(b).param.as_deref(), Some("response_format.json_schema"));
    }

    #[test]
    fn routing_options_checked() {
        let mut b = ok_body();
        b["provider"] = json!({"sort": "vibes"});
        assert_eq!(err(b).param.as_deref(), Some("provider.sort"));
        let mut b = ok_body();
        b["models"] = json!("x");
        assert_eq!(err(b).param.as_deref(), Some("models"));
        let mut b = ok_body();
        b["provider"] = json!({"max_price": {"prompt": -1}});
        assert_eq!(err(b).param.as_deref(), Some("provider.max_price.prompt"));
        let mut b = ok_body();
        b["provider"] = json!({"order": ["a", "b"], "only": ["a"], "ignore": ["c"], "allow_fallbacks": false,
            "sort": "price", "max_price": {"prompt": 1, "completion": 2.5}});
        let p = chat(&map(b)).unwrap().provider;
        assert_eq!(
            p,
            ProviderPrefs {
                order: vec!["a".into(), "b".into()],
                only: Some(vec!["a".into()]),
                ignore: vec!["c".into()],
                allow_fallbacks: false,
                sort: Some("price".into()),
                max_prompt_price: Some(1.0),
                max_completion_price: Some(2.5)
            }
        );
        assert_eq!(
            chat(&map(ok_body())).unwrap().provider,
            ProviderPrefs::default()
        );
    }

    #[test]
    fn embeddings_and_completions() {
        assert!(embeddings(&map(json!({"model": "m", "input": "x"}))).is_ok());
        assert!(embeddings(&map(json!({"model": "m", "input": [[1, 2], [3]]}))).is_ok());
        let e = embeddings(&map(json!({"model": "m"}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
        // Nothing to embed: refused as OpenAI refuses it.
        let e = embeddings(&map(json!({"model": "m", "input": ""}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
        let e = embeddings(&map(json!({"model": "m", "input": ["a", ""]}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[1]"));
        let e = embeddings(&map(
            json!({"model": "m", "input": "x", "encoding_format": "hex"}),
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("encoding_format"));
        assert!(
            completions(&map(json!({"model": "m", "prompt": "x", "stream": true})))
                .unwrap()
                .stream
        );
        let e = completions(&map(json!({"model": "m", "prompt": 3}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
        // The output cap routing estimates with, in the chat form too.
        let m = completions(&map(json!({"model": "m", "prompt": "x", "max_tokens": 7}))).unwrap();
        assert_eq!(m.max_tokens, Some(7));
        assert_eq!(ChatMeta::from(m).max_tokens, Some(7));
    }

    /// `metadata` is checked against OpenAI's limits, each error naming
    /// what is wrong, and kept (for the usage record) on every endpoint.
    #[test]
    fn metadata_within_openais_limits() {
        let with = |m: Value| {
            let mut b = ok_body();
            b["metadata"] = m;
            chat(&map(b))
        };
        let kept = with(json!({"team": "search", "feature": "qa"})).unwrap();
        assert_eq!(
            kept.metadata,
            Some(map(json!({"team": "search", "feature": "qa"})))
        );
        assert_eq!(with(json!({})).unwrap().metadata, None);
        assert_eq!(with(Value::Null).unwrap().metadata, None);
        let sixteen: JsonMap = (0..16).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(with(Value::Object(sixteen.clone())).is_ok());
        let mut seventeen = sixteen;
        seventeen.insert("k16".into(), json!("v"));
        let long_key = "k".repeat(65);
        for (m, param, says) in [
            (json!("team=a"), "metadata", "expected an object"),
            (
                Value::Object(seventeen),
                "metadata",
                "at most 16 properties",
            ),
            (
                json!({"team": 3}),
                "metadata.team",
                "expected a string, but got an integer",
            ),
            (json!({"team": null}), "metadata.team", "expected a string"),
            (json!({long_key: "v"}), "metadata", "at most 64 characters"),
            (
                json!({"team": "é".repeat(513)}),
                "metadata.team",
                "maximum length 512",
            ),
        ] {
            let e = with(m.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{m}");
            assert!(e.message.contains(says), "{m}: {}", e.message);
        }
        // Characters, not bytes.
        assert!(with(json!({"k".repeat(64): "é".repeat(512)})).is_ok());
        let emb = embeddings(&map(
            json!({"model": "m", "input": "x", "metadata": {"a": "b"}}),
        ));
        assert_eq!(emb.unwrap().metadata, Some(map(json!({"a": "b"}))));
        let cmp = completions(&map(
            json!({"model": "m", "prompt": "x", "metadata": {"a": "b"}}),
        ));
        assert_eq!(
            ChatMeta::from(cmp.unwrap()).metadata,
            Some(map(json!({"a": "b"})))
        );
        // OpenAI's own only with a stored completion.
        let ours = |b: Value| metadata_is_ours(&map(b));
        assert!(ours(json!({"metadata": {"a": "b"}})));
        assert!(ours(json!({"metadata": {"a": "b"}, "store": false})));
        assert!(!ours(json!({"metadata": {"a": "b"}, "store": true})));
        assert!(!ours(json!({"store": true})));
    }
}
