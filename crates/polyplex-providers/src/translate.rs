//! Helpers shared by the adapters that translate OpenAI's chat shape into a
//! different wire format (Anthropic, Gemini, ...).

use crate::reply::{RawWriter, Reply};
use crate::{Endpoint, Target};
use polyplex_types::validate::uses_functions;
use polyplex_types::{lookup, member, GatewayError, JsonMap, Usage, UsageJson};
use serde::Serialize;
use serde_json::{json, Value};

/// An upstream's reply body as JSON; a 502 naming the provider if it is not.
pub(crate) fn reply_json(provider: &str, body: &[u8]) -> Result<Value, GatewayError> {
    serde_json::from_slice(body)
        .map_err(|e| GatewayError::upstream_bad_response(provider, format_args!("not JSON ({e})")))
}

/// The text of an OpenAI message `content` (a string, or its text parts joined).
pub(crate) fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| member(p, "text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Appends a turn `{"role": role, key: items}`, merging it into the previous
/// turn when the role repeats (both protocols require alternating roles).
pub(crate) fn push_turn(turns: &mut Vec<Value>, role: &str, key: &str, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut() {
        if last["role"] == role {
            if let Some(arr) = last[key].as_array_mut() {
                arr.extend(items);
                return;
            }
        }
    }
    turns.push(json!({"role": role, key: items}));
}

/// `data:<media type>;base64,<data>` → (media type, data); `None` if `url` is not a data URL.
pub(crate) fn data_url<'a>(
    url: &'a str,
    param: &str,
) -> Option<Result<(&'a str, &'a str), GatewayError>> {
    let rest = url.strip_prefix("data:")?;
    let parsed = rest
        .split_once(',')
        .and_then(|(meta, data)| meta.strip_suffix(";base64").map(|m| (m, data)))
        .ok_or_else(|| {
            GatewayError::invalid_param(
                param,
                "Invalid data URL: expected data:<media type>;base64,<data>.",
            )
        });
    Some(parsed)
}

/// The inline content of an OpenAI `file` content part: its media type,
/// base64 data and file name.
pub(crate) struct FileData<'a> {
    pub media_type: &'a str,
    pub data: &'a str,
    pub filename: Option<&'a str>,
}

/// The media type a file name's extension stands for, for a `file_data`
/// sent as bare base64 (OpenAI takes that with a `filename`).
fn media_type_of(filename: &str) -> Option<&'static str> {
    let ext = filename.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ => return None,
    })
}

/// An OpenAI `file` content part (`param` is its path, e.g.
/// `messages[0].content[1]`) as inline data for `protocol`: `file_data`
/// as a base64 data URL, or bare base64 with a `filename` that names its
/// type. A `file_id` names a file in OpenAI's own store, which no other
/// provider can read: refused by name.
pub(crate) fn file_data<'a>(
    part: &'a Value,
    param: &str,
    protocol: &str,
) -> Result<FileData<'a>, GatewayError> {
    let file = member(part, "file");
    let filename = file
        .and_then(|f| member(f, "filename"))
        .and_then(Value::as_str);
    let Some(data) = file
        .and_then(|f| member(f, "file_data"))
        .and_then(Value::as_str)
    else {
        if file.and_then(|f| member(f, "file_id")).is_some() {
            return Err(GatewayError::invalid_param(
                format!("{param}.file.file_id"),
                format!("A file id names a file in OpenAI's own store; the {protocol} protocol cannot read it. Send the file's content as file_data (data:application/pdf;base64,...)."),
            ));
        }
        return Err(GatewayError::invalid_param(
            format!("{param}.file.file_data"),
            "Missing required parameter: a file part needs file_data (data:application/pdf;base64,...).",
        ));
    };
    if let Some(parsed) = data_url(data, &format!("{param}.file.file_data")) {
        let (media_type, data) = parsed?;
        return Ok(FileData {
            media_type,
            data,
            filename,
        });
    }
    match filename.and_then(media_type_of) {
        Some(media_type) => Ok(FileData {
            media_type,
            data,
            filename,
        }),
        None => Err(GatewayError::invalid_param(
            format!("{param}.file.file_data"),
            "Invalid file_data: expected a base64 data URL (data:application/pdf;base64,...), or base64 with a filename whose extension names the type.",
        )),
    }
}

/// An OpenAI `input_audio` content part as (media type, base64 data).
pub(crate) fn audio_data<'a>(
    part: &'a Value,
    param: &str,
) -> Result<(&'static str, &'a str), GatewayError> {
    let audio = member(part, "input_audio");
    let data = audio
        .and_then(|a| member(a, "data"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            GatewayError::invalid_param(
                format!("{param}.input_audio.data"),
                "Missing required parameter: an input_audio part needs data (base64).",
            )
        })?;
    let media_type = match audio
        .and_then(|a| member(a, "format"))
        .and_then(Value::as_str)
    {
        Some("wav") => "audio/wav",
        Some("mp3") => "audio/mp3",
        other => {
            return Err(GatewayError::invalid_param(
                format!("{param}.input_audio.format"),
                format!(
                    "Invalid value: expected 'wav' or 'mp3', but got {}.",
                    other.map_or("nothing".to_string(), |f| format!("'{f}'"))
                ),
            ))
        }
    };
    Ok((media_type, data))
}

/// A message's, content part's or tool's `cache_control` — the end of a
/// prefix the client asks a provider to cache (Anthropic's breakpoint, as
/// LiteLLM and OpenRouter take it in OpenAI's shape) — when given.
pub(crate) fn cache_control(v: &Value) -> Option<&Value> {
    member(v, "cache_control").filter(|c| !c.is_null())
}

/// Whether a request marks a prompt-cache breakpoint anywhere: on a
/// message, a content part or a tool.
pub(crate) fn marks_cache(body: &JsonMap) -> bool {
    let marked = |v: &Value| cache_control(v).is_some();
    let list = |k: &str| {
        lookup(body, k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    };
    list("messages").any(|m| {
        marked(m)
            || member(m, "content")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(marked))
    }) || list("tools").any(marked)
}

/// Takes `cache_control` out of a message or a tool, and out of a
/// message's content parts.
pub(crate) fn unmark_cache(v: &mut Value) {
    let Some(o) = v.as_object_mut() else { return };
    o.remove("cache_control");
    if let Some(parts) = o.get_mut("content").and_then(Value::as_array_mut) {
        for p in parts.iter_mut().filter_map(Value::as_object_mut) {
            p.remove("cache_control");
        }
    }
}

/// Takes every `cache_control` out of a request's messages, their content
/// parts and its tools.
pub(crate) fn strip_cache_control(body: &mut JsonMap) {
    for k in ["messages", "tools"] {
        if let Some(list) = body.get_mut(k).and_then(Value::as_array_mut) {
            list.iter_mut().for_each(unmark_cache);
        }
    }
}

/// The members a request may carry from another provider's answer or for
/// another provider's features, which OpenAI's own API refuses as unknown:
/// prompt-cache breakpoints (`cache_control`) and, on assistant messages
/// sent back, what polyplex's translated answers add — Claude's
/// `reasoning_content` and `thinking_blocks`, Gemini 3's
/// `tool_calls[].extra_content`. Named as `x-polyplex-dropped-params`
/// names them.
pub(crate) fn foreign_members(body: &JsonMap) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if marks_cache(body) {
        out.push("cache_control".into());
    }
    let msgs = lookup(body, "messages").and_then(Value::as_array);
    for m in msgs.into_iter().flatten() {
        let mut found = |name: &str| {
            if !out.iter().any(|o| o == name) {
                out.push(name.into());
            }
        };
        for k in ["reasoning_content", "thinking_blocks"] {
            if member(m, k).is_some_and(|v| !v.is_null()) {
                found(&format!("messages[].{k}"));
            }
        }
        let calls = member(m, "tool_calls").and_then(Value::as_array);
        if calls
            .into_iter()
            .flatten()
            .any(|tc| member(tc, "extra_content").is_some())
        {
            found("messages[].tool_calls[].extra_content");
        }
    }
    out
}

/// Takes out of a request what [`foreign_members`] names.
pub(crate) fn strip_foreign(body: &mut JsonMap) {
    strip_cache_control(body);
    let msgs = body.get_mut("messages").and_then(Value::as_array_mut);
    for m in msgs.into_iter().flatten() {
        let Some(o) = m.as_object_mut() else { continue };
        o.remove("reasoning_content");
        o.remove("thinking_blocks");
        let calls = o.get_mut("tool_calls").and_then(Value::as_array_mut);
        for tc in calls.into_iter().flatten() {
            if let Some(t) = tc.as_object_mut() {
                t.remove("extra_content");
            }
        }
    }
}

/// The hints in a request's messages and tools that a protocol takes.
#[derive(Clone, Copy)]
pub(crate) struct Hints {
    /// An image's `detail`.
    pub detail: bool,
    /// Prompt-cache breakpoints (`cache_control`).
    pub cache_control: bool,
}

impl Hints {
    /// Takes none of them (Gemini).
    pub const NONE: Hints = Hints {
        detail: false,
        cache_control: false,
    };
    /// Takes prompt-cache breakpoints (Anthropic, Bedrock).
    pub const CACHE_CONTROL: Hints = Hints {
        detail: false,
        cache_control: true,
    };
    /// Takes an image's `detail` (Cohere).
    pub const DETAIL: Hints = Hints {
        detail: true,
        cache_control: false,
    };
}

/// Names in `dropped` the hints a protocol has no place for: a participant's
/// `name` on a system, developer, user or assistant message
/// (`messages[].name`; no translating protocol takes it), an image's
/// `detail` other than `auto` (`messages[].content[].image_url.detail`) and
/// prompt-cache breakpoints (`cache_control`) unless `keeps` says the
/// protocol takes them. None is refused: a request gets the same answer
/// without them (caching changes only the price).
pub(crate) fn name_dropped_hints(body: &JsonMap, keeps: Hints, dropped: &mut Vec<String>) {
    let msgs = lookup(body, "messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let (mut name, mut detail) = (false, keeps.detail);
    for m in msgs {
        let role = member(m, "role").and_then(Value::as_str);
        if !name
            && !matches!(role, Some("tool" | "function"))
            && member(m, "name").is_some_and(|n| !n.is_null() && n != "")
        {
            name = true;
            dropped.push("messages[].name".into());
        }
        let parts = member(m, "content").and_then(Value::as_array);
        if !detail
            && parts.into_iter().flatten().any(|p| {
                p.pointer("/image_url/detail")
                    .is_some_and(|d| !d.is_null() && d != "auto")
            })
        {
            detail = true;
            dropped.push("messages[].content[].image_url.detail".into());
        }
        if name && detail {
            break;
        }
    }
    if !keeps.cache_control && marks_cache(body) {
        dropped.push("cache_control".into());
    }
}

/// The final OpenAI stream chunk that carries usage (`choices: []`).
pub fn usage_chunk(id: &str, created: u64, model: &str, usage: &Usage) -> Reply {
    let mut w = RawWriter::default();
    let written = (|| {
        w.member("id", id)?;
        w.member("object", "chat.completion.chunk")?;
        w.member("created", &created)?;
        w.member("model", model)?;
        w.member("choices", &[(); 0])?;
        w.member("usage", &UsageJson(usage))
    })();
    match written {
        Ok(()) => Reply::Raw(w.finish()),
        // Writing into a Vec does not fail; kept total all the same.
        Err(_) => {
            let mut c = JsonMap::new();
            c.insert("id".into(), json!(id));
            c.insert("object".into(), json!("chat.completion.chunk"));
            c.insert("created".into(), json!(created));
            c.insert("model".into(), json!(model));
            c.insert("choices".into(), json!([]));
            c.insert("usage".into(), usage.to_json());
            Reply::Map(c)
        }
    }
}

/// A 400 for an endpoint the protocol does not offer.
pub(crate) fn unsupported_endpoint(
    target: &Target<'_>,
    protocol: &str,
    endpoint: Endpoint,
) -> GatewayError {
    GatewayError::invalid_request(format!(
        "Provider `{}` ({protocol} protocol) does not offer the {} endpoint through polyplex.",
        target.provider,
        endpoint.as_str()
    ))
    .with_code("unsupported_endpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `allowed_tools` becomes the tools cut to the allowed ones and the
    /// mode as the choice; a custom tool is refused naming it; anything
    /// else is the body itself.
    #[test]
    fn tools_as_every_protocol_has_them() {
        let map = |v: Value| v.as_object().unwrap().clone();
        let tools = json!([{"type": "function", "function": {"name": "a"}},
            {"type": "function", "function": {"name": "b"}}, {"type": "function", "function": {"name": "c"}}]);
        let body = map(
            json!({"tools": tools, "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "required",
            "tools": [{"type": "function", "function": {"name": "c"}}, {"type": "function", "function": {"name": "a"}}]}}}),
        );
        let out = for_translation(&body, "P").unwrap();
        let names: Vec<&str> = out["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            (names, &out["tool_choice"]),
            (vec!["a", "c"], &json!("required"))
        );
        let plain = map(json!({"tools": tools, "tool_choice": "auto"}));
        assert!(matches!(
            for_translation(&plain, "P").unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
        let custom = map(
            json!({"tools": [{"type": "function", "function": {"name": "a"}}, {"type": "custom", "custom": {"name": "x"}}]}),
        );
        let as_functions = for_translation(&custom, "P").unwrap();
        assert_eq!(as_functions["tools"][1]["function"]["name"], "x");
        let audio = map(json!({"messages": [{"role": "user", "content": "hi"},
            {"role": "assistant", "audio": {"id": "audio_1"}}]}));
        let e = for_translation(&audio, "P").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[1].audio"));
        let called = map(json!({"messages": [{"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "d", "type": "custom", "custom": {"name": "x", "input": "text"}}]}]}));
        let as_functions = for_translation(&called, "P").unwrap();
        assert_eq!(
            as_functions["messages"][1]["tool_calls"][1]["type"],
            "function"
        );
    }

    /// Deprecated function calling reaches a translating protocol as tools,
    /// and its answer goes back as `function_call`.
    #[test]
    fn functions_become_tools_and_come_back_as_a_function_call() {
        let map = |v: Value| v.as_object().unwrap().clone();
        let body = map(
            json!({"model": "m", "functions": [{"name": "weather", "parameters": {"type": "object"}}],
            "function_call": {"name": "weather"}, "messages": [
                {"role": "user", "content": "Oslo?"},
                {"role": "assistant", "content": null, "function_call": {"name": "weather", "arguments": "{}"}},
                {"role": "function", "name": "weather", "content": "rain"},
                {"role": "assistant", "content": null, "function_call": {"name": "clock", "arguments": "{}"}},
                {"role": "function", "name": "clock", "content": "noon"}]}),
        );
        assert!(uses_functions(&body));
        let out = for_translation(&body, "P").unwrap();
        assert_eq!(
            Value::Object(out.into_owned()),
            json!({"model": "m", "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "weather"}}, "messages": [
                {"role": "user", "content": "Oslo?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_fn_0", "type": "function",
                    "function": {"name": "weather", "arguments": "{}"}}]},
                {"role": "tool", "content": "rain", "tool_call_id": "call_fn_0"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_fn_1", "type": "function",
                    "function": {"name": "clock", "arguments": "{}"}}]},
                {"role": "tool", "content": "noon", "tool_call_id": "call_fn_1"}]})
        );
        let auto = map(json!({"functions": [{"name": "f"}], "function_call": "auto"}));
        assert_eq!(for_translation(&auto, "P").unwrap()["tool_choice"], "auto");
        assert!(!uses_functions(&map(
            json!({"tools": [], "messages": [{"role": "tool", "content": "x"}]})
        )));

        let mut answer = map(
            json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "t2", "type": "function", "function": {"name": "clock", "arguments": "{}"}}]}}]}),
        );
        tools_to_function_call(&mut answer);
        let m = &answer["choices"][0]["message"];
        assert_eq!(
            m["function_call"],
            json!({"name": "weather", "arguments": "{\"city\":\"Oslo\"}"})
        );
        // A second call is not lost.
        assert_eq!(m["tool_calls"][0]["id"], "t2");
        assert_eq!(answer["choices"][0]["finish_reason"], "function_call");
        // Stream chunks: the first call's deltas, and a finish of their own.
        let mut first = map(
            json!({"choices": [{"index": 0, "delta": {"role": "assistant",
            "tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}}]}),
        );
        tools_to_function_call(&mut first);
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "function_call": {"name": "weather", "arguments": ""}})
        );
        let mut more = map(
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]}),
        );
        tools_to_function_call(&mut more);
        assert_eq!(
            more["choices"][0]["delta"],
            json!({"function_call": {"arguments": "{}"}})
        );
        let mut end =
            map(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}));
        tools_to_function_call(&mut end);
        assert_eq!(end["choices"][0]["finish_reason"], "function_call");
    }

    /// The chunk writer gives the bytes the `json!` tree it replaced gave:
    /// OpenAI's members in OpenAI's order, escapes included.
    #[test]
    fn chunks_are_written_as_the_tree_wrote_them() {
        fn tree(delta: Value, finish: Option<&str>) -> Vec<u8> {
            json!({"id": "msg_1", "object": "chat.completion.chunk", "created": 1700000000u64, "model": "m\"x",
                "choices": [{"index": 2, "delta": delta, "logprobs": null, "finish_reason": finish}]})
            .to_string()
            .into_bytes()
        }
        fn written<D: Serialize + ?Sized>(delta: &D, finish: Option<&str>) -> Vec<u8> {
            match chunk("msg_1", 1700000000, "m\"x", 2, delta, finish) {
                crate::StreamItem::Chunk(b) => b.to_vec(),
                other => panic!("not a chunk: {other:?}"),
            }
        }
        let text = "a \"quote\", a\nnewline, \u{1} and é";
        assert_eq!(
            written(&ROLE, None),
            tree(json!({"role": "assistant", "content": ""}), None)
        );
        assert_eq!(
            written(&Content { content: text }, None),
            tree(json!({"content": text}), None)
        );
        assert_eq!(
            written(&NoDelta {}, Some("stop")),
            tree(json!({}), Some("stop"))
        );
        assert_eq!(
            written(&tool_arguments(3, text), None),
            tree(
                json!({"tool_calls": [{"index": 3, "function": {"arguments": text}}]}),
                None
            )
        );
        let any = json!({"tool_calls": [{"index": 0, "id": "t", "type": "function", "function": {"name": "f", "arguments": ""}}]});
        assert_eq!(
            written(&any, Some("tool_calls")),
            tree(any.clone(), Some("tool_calls"))
        );
    }

    #[test]
    fn turns_merge_and_data_urls_split() {
        let mut t = Vec::new();
        push_turn(&mut t, "user", "parts", vec![json!({"text": "a"})]);
        push_turn(&mut t, "user", "parts", vec![json!({"text": "b"})]);
        push_turn(&mut t, "model", "parts", vec![]);
        push_turn(&mut t, "model", "parts", vec![json!({"text": "c"})]);
        assert_eq!(
            t,
            vec![
                json!({"role": "user", "parts": [{"text": "a"}, {"text": "b"}]}),
                json!({"role": "model", "parts": [{"text": "c"}]})
            ]
        );
        assert_eq!(
            data_url("data:image/png;base64,AAA", "p").unwrap().unwrap(),
            ("image/png", "AAA")
        );
        assert!(data_url("data:image/png,AAA", "p").unwrap().is_err());
        assert!(data_url("https://x/y.png", "p").is_none());
        assert_eq!(
            text_of(
                &json!([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}])
            ),
            "a\nb"
        );
    }
}

/// A translated embeddings request's input, its parameters checked: the
/// texts, the requested `dimensions` and what was dropped.
pub(crate) struct EmbeddingInput<'a> {
    pub texts: Vec<String>,
    pub dimensions: Option<&'a Value>,
    pub dropped: Vec<String>,
}

/// What every translating adapter's embeddings request starts from (see
/// [`EmbeddingInput`]); `protocol` names it in errors.
pub(crate) fn embedding_input<'a>(
    body: &'a JsonMap,
    protocol: &str,
    target: &Target<'_>,
) -> Result<EmbeddingInput<'a>, GatewayError> {
    let mut dropped = Vec::new();
    check_fields(
        body,
        EMBEDDING_PARAMS,
        false,
        protocol,
        target,
        &mut dropped,
    )?;
    Ok(EmbeddingInput {
        texts: embedding_texts(body, protocol)?,
        dimensions: lookup(body, "dimensions").filter(|d| !d.is_null()),
        dropped,
    })
}

/// The texts of an OpenAI embeddings request; token-id inputs are refused by name.
pub(crate) fn embedding_texts(body: &JsonMap, protocol: &str) -> Result<Vec<String>, GatewayError> {
    let refuse = |p: String| {
        GatewayError::invalid_param(
            p,
            format!("The {protocol} protocol embeds text only; token-id inputs are not supported."),
        )
    };
    match lookup(body, "input") {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| refuse(format!("input[{i}]")))
            })
            .collect(),
        _ => Err(refuse("input".into())),
    }
}

/// An OpenAI embeddings list from vectors, base64-encoded (little-endian f32,
/// as OpenAI does) when the request asked for `encoding_format: "base64"`.
pub(crate) fn embedding_list(
    vectors: &[Vec<f64>],
    model: &str,
    request: &JsonMap,
    usage: Option<&Usage>,
) -> JsonMap {
    use base64::Engine;
    let b64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if b64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let mut out = JsonMap::new();
    out.insert("object".into(), json!("list"));
    out.insert("data".into(), Value::Array(data));
    // An empty model means the reply named none: the gateway fills in the one it called.
    out.insert(
        "model".into(),
        if model.is_empty() {
            Value::Null
        } else {
            json!(model)
        },
    );
    if let Some(u) = usage {
        out.insert(
            "usage".into(),
            json!({"prompt_tokens": u.prompt_tokens, "total_tokens": u.prompt_tokens}),
        );
    }
    out
}

/// An embeddings body cut into parts of at most `per` inputs each, for an
/// upstream that takes fewer inputs per request than the client sent;
/// `None` when it needs no cutting (one text, or no more than `per`).
/// Every other member is kept in every part.
pub fn split_embedding_inputs(body: &JsonMap, per: usize) -> Option<Vec<JsonMap>> {
    let Some(Value::Array(items)) = lookup(body, "input") else {
        return None;
    };
    if per == 0 || items.len() <= per {
        return None;
    }
    let rest: JsonMap = body
        .iter()
        .filter(|(k, _)| k.as_str() != "input")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(
        items
            .chunks(per)
            .map(|chunk| {
                let mut part = rest.clone();
                part.insert("input".into(), Value::Array(chunk.to_vec()));
                part
            })
            .collect(),
    )
}

/// The answers to [`split_embedding_inputs`]'s parts, in the parts' order,
/// as one answer: the vectors in input order, indexed from 0, and the
/// parts' token counts added up (none when a part had none: the gateway
/// counts then).
pub fn join_embeddings(parts: Vec<(Reply, Option<Usage>)>) -> (Reply, Option<Usage>) {
    join_indexed(
        parts,
        "data",
        |u| json!({"prompt_tokens": u.prompt_tokens, "total_tokens": u.prompt_tokens}),
    )
}

/// The answers to one request's parts as one answer: the items of each
/// part's `member` list in part order (within a part, by `index`),
/// indexed again from 0; the first part's other members; the parts' usage
/// added up, written by `usage_json` (none, and no `usage`, when a part
/// had none: the gateway counts then).
pub(crate) fn join_indexed(
    parts: Vec<(Reply, Option<Usage>)>,
    member: &str,
    usage_json: impl Fn(&Usage) -> Value,
) -> (Reply, Option<Usage>) {
    let mut all = Vec::new();
    let mut usage = Some(Usage::default());
    let mut head: Option<JsonMap> = None;
    for (reply, part_usage) in parts {
        let mut m = reply.into_map();
        if let Some(Value::Array(mut items)) = m.remove(member) {
            items.sort_by_key(|item| item.get("index").and_then(Value::as_u64));
            for mut item in items {
                if let Some(o) = item.as_object_mut() {
                    o.insert("index".into(), json!(all.len()));
                }
                all.push(item);
            }
        }
        usage = match (usage, part_usage) {
            (Some(sum), Some(u)) => Some(sum.plus(&u)),
            _ => None,
        };
        head.get_or_insert(m);
    }
    let mut out = head.unwrap_or_default();
    out.insert(member.into(), Value::Array(all));
    match &usage {
        Some(u) => {
            out.insert("usage".into(), usage_json(u));
        }
        None => {
            out.remove("usage");
        }
    }
    (Reply::Map(out), usage)
}

#[cfg(test)]
mod embedding_tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn embedding_lists_and_inputs() {
        let req: JsonMap =
            serde_json::from_value(json!({"input": ["a", "b"], "encoding_format": "base64"}))
                .unwrap();
        assert_eq!(embedding_texts(&req, "X").unwrap(), vec!["a", "b"]);
        let out = embedding_list(&[vec![0.5, -1.0]], "m", &req, None);
        let b = base64::engine::general_purpose::STANDARD
            .decode(out["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        assert_eq!(b, [0.5f32.to_le_bytes(), (-1.0f32).to_le_bytes()].concat());
        let req: JsonMap = serde_json::from_value(json!({"input": [[1, 2]]})).unwrap();
        assert_eq!(
            embedding_texts(&req, "X").unwrap_err().param.as_deref(),
            Some("input[0]")
        );
        let out = embedding_list(
            &[vec![0.25]],
            "m",
            &req,
            Some(&Usage {
                prompt_tokens: 3,
                ..Usage::default()
            }),
        );
        assert_eq!(out["data"][0]["embedding"], json!([0.25]));
        assert_eq!(out["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    }

    #[test]
    fn embedding_inputs_split_and_join_in_order() {
        let body: JsonMap = serde_json::from_value(
            json!({"model": "m", "input": ["a", "b", "c"], "dimensions": 4}),
        )
        .unwrap();
        assert!(split_embedding_inputs(&body, 3).is_none());
        let one: JsonMap = serde_json::from_value(json!({"input": "a"})).unwrap();
        assert!(split_embedding_inputs(&one, 1).is_none());
        let parts = split_embedding_inputs(&body, 2).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0]["input"], json!(["a", "b"]));
        assert_eq!(parts[1]["input"], json!(["c"]));
        assert!(parts
            .iter()
            .all(|p| p["dimensions"] == 4 && p["model"] == "m"));

        let answer = |vectors: &[Vec<f64>], tokens: Option<u64>| {
            let usage = tokens.map(|n| Usage {
                prompt_tokens: n,
                ..Usage::default()
            });
            (
                Reply::Map(embedding_list(vectors, "", &body, usage.as_ref())),
                usage,
            )
        };
        let (joined, usage) = join_embeddings(vec![
            answer(&[vec![1.0], vec![2.0]], Some(3)),
            answer(&[vec![3.0]], Some(4)),
        ]);
        let m = joined.into_map();
        let data = m["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        for (i, d) in data.iter().enumerate() {
            assert_eq!(d["index"], i);
            assert_eq!(d["embedding"], json!([i as f64 + 1.0]));
        }
        assert_eq!(usage.unwrap().prompt_tokens, 7);
        assert_eq!(m["usage"]["total_tokens"], 7);
        // A part without a count: the whole answer has none (the gateway counts).
        let (joined, usage) = join_embeddings(vec![
            answer(&[vec![1.0]], Some(3)),
            answer(&[vec![2.0]], None),
        ]);
        assert!(usage.is_none());
        assert!(joined.into_map().get("usage").is_none());
    }
}

/// The OpenAI chat parameters a translating adapter handles itself (translated,
/// or refused by name). Anything else in a body is unknown to the protocol.
/// [`CHAT_PARAMS`] and `web_search_options`: what a protocol with a web
/// search of its own (Anthropic's, Gemini's) takes.
pub(crate) const SEARCH_CHAT_PARAMS: [&str; CHAT_PARAMS.len() + 1] = {
    let mut out = [""; CHAT_PARAMS.len() + 1];
    let mut i = 0;
    while i < CHAT_PARAMS.len() {
        out[i] = CHAT_PARAMS[i];
        i += 1;
    }
    out[i] = "web_search_options";
    out
};

pub(crate) const CHAT_PARAMS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "response_format",
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    // Translated where the protocol can think (Anthropic, Gemini); each
    // other adapter refuses it itself (`reasoning_effort`).
    "reasoning_effort",
];

/// OpenAI's `reasoning_effort`, checked: `None` when absent or null.
pub(crate) fn reasoning_effort(body: &JsonMap) -> Result<Option<&str>, GatewayError> {
    match lookup(body, "reasoning_effort") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if matches!(
                s.as_str(),
                "none" | "minimal" | "low" | "medium" | "high" | "xhigh"
            ) =>
        {
            Ok(Some(s))
        }
        Some(other) => Err(GatewayError::invalid_param(
            "reasoning_effort",
            format!("Invalid value for 'reasoning_effort': expected one of 'none', 'minimal', 'low', 'medium', 'high' or 'xhigh', but got {other}."),
        )),
    }
}

/// Claude's extended-thinking budget for OpenAI's `reasoning_effort` (none
/// and minimal: no extended thinking, Anthropic's default); Anthropic's API
/// and Bedrock's Claude take the same.
pub(crate) fn thinking_budget(effort: &str) -> Option<u64> {
    match effort {
        "low" => Some(MIN_THINKING),
        "medium" => Some(2048),
        "high" | "xhigh" => Some(4096),
        _ => None,
    }
}

/// The least budget Claude accepts for extended thinking.
pub(crate) const MIN_THINKING: u64 = 1024;

/// Claude's extended thinking fitted to a request, for `protocol`: the
/// budget and the output limit to send. The client's token limit counts
/// the thinking (as Claude's `max_tokens` does), so a limit it set stays
/// the limit and the budget fits under it; with none, `max_tokens` (the
/// protocol's default) is raised when it leaves the budget no room. JSON
/// mode (a forced tool call) cannot think, and a limit of [`MIN_THINKING`]
/// or less leaves thinking no room: both refused naming `reasoning_effort`.
pub(crate) fn fit_thinking(
    budget: u64,
    limit: Option<u64>,
    max_tokens: u64,
    json_mode: bool,
    protocol: &str,
) -> Result<(u64, u64), GatewayError> {
    if json_mode {
        return Err(GatewayError::invalid_param(
            "reasoning_effort",
            format!("With the {protocol} protocol, reasoning_effort cannot be combined with response_format (JSON is produced through a forced tool call, which extended thinking does not allow)."),
        ));
    }
    match limit {
        Some(l) if l <= MIN_THINKING => Err(GatewayError::invalid_param(
            "reasoning_effort",
            format!("With the {protocol} protocol, reasoning_effort needs a token limit above {MIN_THINKING} (extended thinking takes at least {MIN_THINKING} tokens of it), but max_completion_tokens is {l}."),
        )),
        Some(l) => Ok((budget.min(l - 1), l)),
        None if max_tokens <= budget => {
            Ok((budget, budget + crate::anthropic::FALLBACK_MAX_TOKENS))
        }
        None => Ok((budget, max_tokens)),
    }
}

/// An assistant message's `thinking_blocks` sent back — Claude's thinking
/// and redacted thinking, as polyplex's answers give them.
pub(crate) fn sent_thinking(m: &Value) -> impl Iterator<Item = &Value> {
    member(m, "thinking_blocks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|b| {
            matches!(
                member(b, "type").and_then(Value::as_str),
                Some("thinking" | "redacted_thinking")
            )
        })
}

/// True when the conversation's last assistant turn called tools without
/// sending back its thinking: Claude then refuses extended thinking for the
/// request (the turn must start with its thinking), so polyplex asks
/// without it.
pub(crate) fn tool_turn_without_thinking(body: &JsonMap) -> bool {
    let last = lookup(body, "messages")
        .and_then(Value::as_array)
        .and_then(|ms| {
            ms.iter()
                .rfind(|m| member(m, "role").and_then(Value::as_str) == Some("assistant"))
        });
    last.is_some_and(|m| {
        member(m, "tool_calls")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty())
            && sent_thinking(m).next().is_none()
    })
}

/// The refusal of a chat request that leaves `protocol` nothing to answer:
/// only system or developer messages, or messages without content. OpenAI
/// answers such a request; Anthropic's, Gemini's and Bedrock's APIs need at
/// least one user or assistant turn, and polyplex does not make one up.
pub(crate) fn no_turns(protocol: &str) -> GatewayError {
    GatewayError::invalid_param(
        "messages",
        format!("The {protocol} protocol needs at least one user or assistant message with content; this request has none (only system or developer messages, or empty ones)."),
    )
}

/// Whether `body` asks for `key` in a way that changes the answer: given,
/// not null, and not a value that asks for nothing beyond what a provider
/// without the parameter does anyway ([`asks_nothing`]).
pub(crate) fn asks(body: &JsonMap, key: &str) -> bool {
    lookup(body, key).is_some_and(|v| !asks_nothing(key, v))
}

/// True for a parameter's value that asks for nothing beyond OpenAI's own
/// default, so a provider without the parameter honours it by leaving it
/// out: `null`, `n: 1`, `presence_penalty`/`frequency_penalty: 0`, an empty
/// `logit_bias` or `metadata`, `top_logprobs: 0`, `logprobs: false`,
/// `parallel_tool_calls: true`, `store: false`, `modalities: ["text"]`,
/// `service_tier: "auto"` or `"default"` (a provider without tiers serves
/// every request at its one tier) and `verbosity: "medium"`. Clients and frameworks send these
/// explicitly; such a value is neither refused nor named as dropped.
pub(crate) fn asks_nothing(key: &str, v: &Value) -> bool {
    match (key, v) {
        (_, Value::Null) => true,
        // Numbers by value: `1.0` is OpenAI's `1` (an integer field takes it).
        ("n", Value::Number(n)) => n.as_f64() == Some(1.0),
        ("presence_penalty" | "frequency_penalty", Value::Number(n)) => n.as_f64() == Some(0.0),
        ("logit_bias" | "metadata", Value::Object(m)) => m.is_empty(),
        ("top_logprobs", Value::Number(n)) => n.as_f64() == Some(0.0),
        ("logprobs" | "store", Value::Bool(b)) => !b,
        ("parallel_tool_calls", Value::Bool(b)) => *b,
        ("modalities", Value::Array(a)) => {
            matches!(a.as_slice(), [Value::String(s)] if s == "text")
        }
        ("service_tier", Value::String(s)) => s == "auto" || s == "default",
        // GPT-5's default verbosity.
        ("verbosity", Value::String(s)) => s == "medium",
        _ => false,
    }
}

/// Refuses (or, under `drop_params`, drops and names) each of `keys`, in
/// that order, that the body [`asks`] for: the parameters `protocol` has no
/// equivalent of.
pub(crate) fn refuse_asked(
    body: &JsonMap,
    keys: &[&str],
    protocol: &str,
    target: &Target<'_>,
    dropped: &mut Vec<String>,
) -> Result<(), GatewayError> {
    for k in keys {
        if asks(body, k) {
            crate::unsupported(k, protocol, target, dropped)?;
        }
    }
    Ok(())
}

/// The request a translating protocol reads. What only OpenAI has is
/// refused by name: an assistant turn that is an earlier audio answer
/// (`audio: {"id"}`, kept in OpenAI's store). GPT-5's free-form `custom`
/// tools become functions taking their input as one string
/// ([`crate::custom_tools`]). `tool_choice: {"type": "allowed_tools", ...}`
/// becomes what every protocol has — the tools cut to the allowed ones, and
/// the choice its mode (`auto` or `required`). Borrowed when there is
/// nothing to change.
pub(crate) fn for_translation<'a>(
    body: &'a JsonMap,
    protocol: &str,
) -> Result<std::borrow::Cow<'a, JsonMap>, GatewayError> {
    if uses_functions(body) {
        let modern = with_tools(body);
        return Ok(std::borrow::Cow::Owned(
            for_translation(&modern, protocol)?.into_owned(),
        ));
    }
    if crate::custom_tools::uses_custom(body) {
        let functions = crate::custom_tools::as_functions(body);
        return Ok(std::borrow::Cow::Owned(
            for_translation(&functions, protocol)?.into_owned(),
        ));
    }
    let msgs = lookup(body, "messages").and_then(Value::as_array);
    for (i, m) in msgs.into_iter().flatten().enumerate() {
        if member(m, "audio").is_some_and(|a| !a.is_null()) {
            return Err(GatewayError::invalid_param(
                format!("messages[{i}].audio"),
                format!("An earlier audio answer lives in OpenAI's store; the {protocol} protocol cannot read it. Send its transcript as the message's content instead."),
            ));
        }
    }
    let allowed = lookup(body, "tool_choice")
        .filter(|c| member(c, "type").and_then(Value::as_str) == Some("allowed_tools"))
        .and_then(|c| member(c, "allowed_tools"));
    let Some(allowed) = allowed else {
        return Ok(std::borrow::Cow::Borrowed(body));
    };
    let names: Vec<&str> = member(allowed, "tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
        .collect();
    let mode = member(allowed, "mode")
        .and_then(Value::as_str)
        .unwrap_or("auto");
    let mut out = body.clone();
    if let Some(Value::Array(tools)) = out.get_mut("tools") {
        tools.retain(|t| {
            t.pointer("/function/name")
                .and_then(Value::as_str)
                .is_some_and(|n| names.contains(&n))
        });
    }
    out.insert("tool_choice".into(), json!(mode));
    Ok(std::borrow::Cow::Owned(out))
}

/// A request with deprecated function calling as the same request with
/// tools, which every protocol takes: `functions` become function tools,
/// `function_call` the tool choice, an assistant turn's `function_call` its
/// one tool call (with an id made up, `call_fn_<n>`), and a `function`
/// message the tool message answering the latest call of that name.
fn with_tools(body: &JsonMap) -> JsonMap {
    let mut out = JsonMap::with_capacity(body.len());
    let mut calls: Vec<(String, String)> = Vec::new();
    for (k, v) in body {
        match k.as_str() {
            "functions" => {
                let tools: Vec<Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| json!({"type": "function", "function": f}))
                    .collect();
                out.insert("tools".into(), Value::Array(tools));
            }
            "function_call" => {
                let choice = match member(v, "name") {
                    Some(name) => json!({"type": "function", "function": {"name": name}}),
                    None => v.clone(),
                };
                out.insert("tool_choice".into(), choice);
            }
            "messages" => {
                let msgs: Vec<Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| legacy_message(m, &mut calls))
                    .collect();
                out.insert("messages".into(), Value::Array(msgs));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// One message of a request with deprecated function calling, with tools;
/// `calls` holds the `(name, id)` of the calls so far.
fn legacy_message(m: &Value, calls: &mut Vec<(String, String)>) -> Value {
    let Some(o) = m.as_object() else {
        return m.clone();
    };
    let mut out = o.clone();
    if let Some(call) = out.remove("function_call").filter(|c| !c.is_null()) {
        let name = member(&call, "name").and_then(Value::as_str).unwrap_or("");
        let id = format!("call_fn_{}", calls.len());
        calls.push((name.to_string(), id.clone()));
        let arguments = member(&call, "arguments").cloned().unwrap_or(json!("{}"));
        let tool_call = json!({"id": id, "type": "function",
            "function": {"name": name, "arguments": arguments}});
        match out.get_mut("tool_calls").and_then(Value::as_array_mut) {
            Some(list) => list.push(tool_call),
            None => {
                out.insert("tool_calls".into(), json!([tool_call]));
            }
        }
    }
    if out.get("role").and_then(Value::as_str) == Some("function") {
        let name = out.remove("name");
        let name = name.as_ref().and_then(Value::as_str).unwrap_or("");
        let id = calls
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .or(calls.last())
            .map(|(_, id)| id.clone())
            .unwrap_or_else(|| format!("call_fn_{name}"));
        out.insert("role".into(), json!("tool"));
        out.insert("tool_call_id".into(), Value::String(id));
    }
    Value::Object(out)
}

/// Answers a request with deprecated function calling as OpenAI does: each
/// choice's first tool call becomes the message's `function_call` (the
/// rest, if a provider made several, stay in `tool_calls`, never lost), and
/// finish reason `tool_calls` becomes `function_call`. Works on a
/// completion and on a stream chunk (`delta` instead of `message`).
pub fn tools_to_function_call(answer: &mut JsonMap) {
    let Some(Value::Array(choices)) = answer.get_mut("choices") else {
        return;
    };
    for c in choices {
        let Some(c) = c.as_object_mut() else { continue };
        if c.get("finish_reason").and_then(Value::as_str) == Some("tool_calls") {
            c.insert("finish_reason".into(), json!("function_call"));
        }
        for key in ["message", "delta"] {
            let Some(Value::Object(m)) = c.get_mut(key) else {
                continue;
            };
            let Some(Value::Array(list)) = m.get_mut("tool_calls") else {
                continue;
            };
            // The first call: index 0 in a stream, the first in a message.
            let first = list
                .iter()
                .position(|t| member(t, "index").and_then(Value::as_u64).unwrap_or(0) == 0);
            let Some(first) = first else { continue };
            let call = list.remove(first);
            if list.is_empty() {
                m.remove("tool_calls");
            }
            let mut f = JsonMap::new();
            if let Some(name) = call.pointer("/function/name") {
                f.insert("name".into(), name.clone());
            }
            let arguments = call.pointer("/function/arguments").cloned();
            f.insert("arguments".into(), arguments.unwrap_or(json!("")));
            m.insert("function_call".into(), Value::Object(f));
        }
    }
}

/// The parameters of an embeddings request.
pub(crate) const EMBEDDING_PARAMS: &[&str] =
    &["model", "input", "encoding_format", "dimensions", "user"];

/// Refuses (or, under `drop_params`, drops and names) every field outside `known`
/// and the gateway's own that asks for something ([`asks_nothing`]). What
/// never changes an answer is dropped and named instead: who the end user
/// is (`user`, `safety_identifier`) when the protocol has no place for it
/// (`user_supported: false`), and OpenAI's `prompt_cache_key` (a routing
/// hint for OpenAI's own cache; no translating protocol has one).
pub(crate) fn check_fields(
    body: &JsonMap,
    known: &[&str],
    user_supported: bool,
    protocol: &str,
    target: &Target<'_>,
    dropped: &mut Vec<String>,
) -> Result<(), GatewayError> {
    for (k, v) in body {
        // `metadata` is the gateway's (the usage record's); `store: true`
        // with it is refused as `store`.
        if !known.contains(&k.as_str())
            && !polyplex_types::validate::GATEWAY_FIELDS.contains(&k.as_str())
            && k != "metadata"
            && !asks_nothing(k, v)
        {
            crate::unsupported(k, protocol, target, dropped)?;
        }
    }
    let given = |k: &str| lookup(body, k).is_some_and(|v| !v.is_null());
    for k in ["user", "safety_identifier"] {
        if !user_supported && given(k) {
            dropped.push(k.into());
        }
    }
    if given("prompt_cache_key") {
        dropped.push("prompt_cache_key".into());
    }
    Ok(())
}

/// One OpenAI stream chunk for choice `index`, written straight from its
/// parts: no tree is built and no key hashed (a translated stream writes one
/// per upstream event). The members and order are OpenAI's.
pub(crate) fn chunk<D: Serialize + ?Sized>(
    id: &str,
    created: u64,
    model: &str,
    index: u64,
    delta: &D,
    finish: Option<&str>,
) -> crate::StreamItem {
    chunk_with_logprobs(id, created, model, index, delta, None, finish)
}

/// [`chunk`] with the choice's `logprobs` (`{"content": [...]}`) where a
/// protocol gives them for the chunk's tokens.
pub(crate) fn chunk_with_logprobs<D: Serialize + ?Sized>(
    id: &str,
    created: u64,
    model: &str,
    index: u64,
    delta: &D,
    logprobs: Option<&Value>,
    finish: Option<&str>,
) -> crate::StreamItem {
    #[derive(Serialize)]
    struct Chunk<'a, D: ?Sized> {
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        choices: [Choice<'a, D>; 1],
    }
    #[derive(Serialize)]
    struct Choice<'a, D: ?Sized> {
        index: u64,
        delta: &'a D,
        logprobs: Option<&'a Value>,
        finish_reason: Option<&'a str>,
    }
    let c = Chunk {
        id,
        object: "chat.completion.chunk",
        created,
        model,
        choices: [Choice {
            index,
            delta,
            logprobs,
            finish_reason: finish,
        }],
    };
    let mut buf = Vec::with_capacity(128 + id.len() + model.len());
    // Strings, numbers and JSON values: writing them into a Vec does not
    // fail. Were it to, the chunk says so rather than going out cut short.
    if serde_json::to_writer(&mut buf, &c).is_err() {
        buf = br#"{"error":{"message":"polyplex could not encode a stream chunk","type":"server_error"}}"#.to_vec();
    }
    crate::StreamItem::Chunk(bytes::Bytes::from(buf))
}

/// One OpenAI `url_citation` annotation: the content's characters
/// `start..end` cite the page at `url`.
pub(crate) fn url_citation(start: usize, end: usize, url: &str, title: Option<&Value>) -> Value {
    serde_json::json!({"type": "url_citation", "url_citation": {"start_index": start, "end_index": end,
        "url": url, "title": title.and_then(Value::as_str).unwrap_or("")}})
}

/// A chunk's delta that carries text: `{"content": ...}`.
#[derive(Serialize)]
pub(crate) struct Content<'a> {
    pub content: &'a str,
}

/// A chunk's delta of a model's reasoning (Claude's thinking, Gemini's
/// thought summary), in the member DeepSeek, vLLM and LiteLLM use.
#[derive(Serialize)]
pub(crate) struct Reasoning<'a> {
    pub reasoning_content: &'a str,
}

/// The first chunk's delta: `{"role": "assistant", "content": ""}`.
pub(crate) const ROLE: Role = Role {
    role: "assistant",
    content: "",
};

#[derive(Serialize)]
pub(crate) struct Role {
    role: &'static str,
    content: &'static str,
}

/// A delta carrying a fragment of tool call `index`'s arguments:
/// `{"tool_calls": [{"index": ..., "function": {"arguments": ...}}]}`.
pub(crate) fn tool_arguments(index: usize, arguments: &str) -> impl Serialize + '_ {
    #[derive(Serialize)]
    struct Delta<'a> {
        tool_calls: [Call<'a>; 1],
    }
    #[derive(Serialize)]
    struct Call<'a> {
        index: usize,
        function: Function<'a>,
    }
    #[derive(Serialize)]
    struct Function<'a> {
        arguments: &'a str,
    }
    Delta {
        tool_calls: [Call {
            index,
            function: Function { arguments },
        }],
    }
}

/// The last chunk's delta, next to its `finish_reason`: `{}`.
#[derive(Serialize)]
pub(crate) struct NoDelta {}

/// Seconds since the epoch, for `created`.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An OpenAI `chat.completion` object around translated choices.
pub(crate) fn completion(
    id: Value,
    model: Value,
    choices: Value,
    usage: Option<&Usage>,
) -> JsonMap {
    let mut out = JsonMap::new();
    out.insert("id".into(), id);
    out.insert("object".into(), json!("chat.completion"));
    out.insert("created".into(), json!(now()));
    out.insert("model".into(), model);
    out.insert("choices".into(), choices);
    if let Some(u) = usage {
        out.insert("usage".into(), u.to_json());
    }
    out
}

/// One tool call of an assistant message: its id, its function's name and
/// its arguments as JSON.
pub(crate) struct AssistantCall<'a> {
    pub id: &'a Value,
    pub name: &'a Value,
    pub input: Value,
}

/// The tool calls of assistant message `i`, arguments parsed (a call whose
/// arguments are not JSON is a 400 naming them).
pub(crate) fn assistant_calls(m: &Value, i: usize) -> Result<Vec<AssistantCall<'_>>, GatewayError> {
    static NULL: Value = Value::Null;
    member(m, "tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(j, tc)| {
            Ok(AssistantCall {
                id: tc.get("id").unwrap_or(&NULL),
                name: tc.pointer("/function/name").unwrap_or(&NULL),
                input: tool_args(
                    tc,
                    format!("messages[{i}].tool_calls[{j}].function.arguments"),
                )?,
            })
        })
        .collect()
}

/// Usage of the protocols that count cache reads and writes apart from the
/// input (Anthropic, Bedrock): OpenAI's prompt tokens include both; reads
/// are `cached_tokens`. The member names are the protocol's.
pub(crate) fn usage_with_cache(
    u: &Value,
    [input, output, read, write]: [&str; 4],
) -> polyplex_types::Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    cache_usage(n(input), n(output), n(read), n(write))
}

/// Usage from counts kept apart as Anthropic and Bedrock keep them: the
/// prompt tokens are the uncached input plus cache reads and writes.
pub(crate) fn cache_usage(input: u64, output: u64, read: u64, write: u64) -> polyplex_types::Usage {
    polyplex_types::Usage {
        prompt_tokens: input + read + write,
        completion_tokens: output,
        cached_tokens: read,
        cache_write_tokens: write,
        reasoning_tokens: 0,
        web_searches: 0,
        estimated: false,
    }
}

/// An assistant tool call's `function.arguments` as JSON (empty means `{}`);
/// `param` names it when it is not JSON.
pub(crate) fn tool_args(tc: &Value, param: String) -> Result<Value, GatewayError> {
    let args = tc
        .pointer("/function/arguments")
        .and_then(Value::as_str)
        .unwrap_or("{}");
    if args.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(args).map_err(|_| {
        GatewayError::invalid_param(param, "Tool call arguments must be a JSON object.")
    })
}
