//! OpenAI chat request → Anthropic Messages request.

use super::{FALLBACK_MAX_TOKENS, JSON_TOOL, VERSION};
use crate::translate::{check_fields, data_url, push_turn, text_of, tool_args, CHAT_PARAMS};
use crate::{join_url, unsupported, Target, UpstreamRequest};
use bytes::Bytes;
use http::HeaderValue;
use polyplex_types::{GatewayError, JsonMap};
use serde_json::{json, Map, Value};

/// An OpenAI `image_url` part as an Anthropic image source.
fn image_block(url: &str, param: &str) -> Result<Value, GatewayError> {
    if let Some(parsed) = data_url(url, param) {
        let (media, data) = parsed?;
        return Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}),
        );
    }
    Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
}

fn content_blocks(content: &Value, param: &str) -> Result<Vec<Value>, GatewayError> {
    match content {
        Value::String(s) if s.is_empty() => Ok(vec![]),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or("")})),
                    Some("image_url") => {
                        let url = p.pointer("/image_url/url").and_then(Value::as_str).unwrap_or("");
                        out.push(image_block(url, &format!("{param}[{j}].image_url.url"))?);
                    }
                    Some("refusal") => out.push(json!({"type": "text", "text": p.get("refusal").and_then(Value::as_str).unwrap_or("")})),
                    Some(other) => {
                        return Err(GatewayError::invalid_param(format!("{param}[{j}].type"), format!("Content parts of type '{other}' are not supported by the Anthropic protocol.")))
                    }
                    None => {}
                }
            }
            Ok(out)
        }
        _ => Ok(vec![]),
    }
}

fn messages(body: &JsonMap) -> Result<(Vec<Value>, Vec<String>), GatewayError> {
    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    let msgs = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (i, m) in msgs.iter().enumerate() {
        let p = format!("messages[{i}].content");
        let content = m.get("content").unwrap_or(&Value::Null);
        match m.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => system.push(text_of(content)),
            "user" => push_turn(&mut turns, "user", "content", content_blocks(content, &p)?),
            "assistant" => {
                let mut blocks = content_blocks(content, &p)?;
                for (j, tc) in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let input = tool_args(
                        tc,
                        format!("messages[{i}].tool_calls[{j}].function.arguments"),
                    )?;
                    blocks.push(json!({"type": "tool_use", "id": tc.get("id").cloned().unwrap_or(Value::Null),
                        "name": tc.pointer("/function/name").cloned().unwrap_or(Value::Null), "input": input}));
                }
                push_turn(&mut turns, "assistant", "content", blocks);
            }
            "tool" | "function" => {
                let id = m
                    .get("tool_call_id")
                    .or_else(|| m.get("name"))
                    .cloned()
                    .unwrap_or(Value::Null);
                push_turn(
                    &mut turns,
                    "user",
                    "content",
                    vec![
                        json!({"type": "tool_result", "tool_use_id": id, "content": text_of(content)}),
                    ],
                );
            }
            _ => {}
        }
    }
    Ok((turns, system))
}

fn tool_choice(v: &Value, parallel: Option<bool>) -> Value {
    let mut c = match v {
        Value::String(s) if s == "none" => json!({"type": "none"}),
        Value::String(s) if s == "required" => json!({"type": "any"}),
        Value::Object(o) => {
            json!({"type": "tool", "name": o.get("function").and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null)})
        }
        _ => json!({"type": "auto"}),
    };
    if parallel == Some(false) && c["type"] != "none" {
        c["disable_parallel_tool_use"] = json!(true);
    }
    c
}

pub(crate) fn build(
    body: &JsonMap,
    stream: bool,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    let mut dropped = Vec::new();
    check_fields(body, CHAT_PARAMS, true, "Anthropic", target, &mut dropped)?;
    let present = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        unsupported("n", "Anthropic", target, &mut dropped)?;
    }
    for k in [
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "top_logprobs",
    ] {
        if present(k) {
            unsupported(k, "Anthropic", target, &mut dropped)?;
        }
    }
    if body.get("logprobs").and_then(Value::as_bool) == Some(true) {
        unsupported("logprobs", "Anthropic", target, &mut dropped)?;
    }

    let (turns, system) = messages(body)?;
    let mut out = Map::new();
    out.insert("model".into(), json!(target.model));
    let max = body
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_u64))
        .or(target.default_max_tokens)
        .unwrap_or(FALLBACK_MAX_TOKENS);
    out.insert("max_tokens".into(), json!(max));
    let system: Vec<String> = system.into_iter().filter(|s| !s.is_empty()).collect();
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(turns));
    if let Some(t) = body.get("temperature").and_then(Value::as_f64) {
        if t > 1.0 {
            if target.drop_params {
                dropped.push("temperature".into());
            } else {
                return Err(GatewayError::invalid_param("temperature", format!("Invalid 'temperature': provider `{}` (Anthropic protocol) accepts 0 to 1, but got {t}.", target.provider)));
            }
        } else {
            out.insert("temperature".into(), json!(t));
        }
    }
    for k in ["top_p", "top_k"] {
        if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    match body.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if stream {
        out.insert("stream".into(), json!(true));
    }
    if let Some(u) = body.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": u}));
    }
    let parallel = body.get("parallel_tool_calls").and_then(Value::as_bool);
    let mut tools: Vec<Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            let f = t.get("function").cloned().unwrap_or(Value::Null);
            let mut tool = json!({"name": f.get("name").cloned().unwrap_or(Value::Null),
                "input_schema": f.get("parameters").filter(|p| !p.is_null()).cloned().unwrap_or(json!({"type": "object", "properties": {}}))});
            if let Some(d) = f.get("description").filter(|d| !d.is_null()) {
                tool["description"] = d.clone();
            }
            tool
        })
        .collect();
    let mut choice = body
        .get("tool_choice")
        .filter(|c| !c.is_null())
        .map(|c| tool_choice(c, parallel));
    if choice.is_none() && parallel == Some(false) && !tools.is_empty() {
        choice = Some(tool_choice(&json!("auto"), parallel));
    }
    // response_format: a forced tool whose input is the JSON the client wants.
    if json_mode(body) {
        // json_schema's schema, or any object for json_object.
        let schema = body
            .get("response_format")
            .and_then(|r| r.pointer("/json_schema/schema"))
            .cloned()
            .unwrap_or(json!({"type": "object"}));
        if !tools.is_empty() {
            return Err(GatewayError::invalid_param(
                "response_format",
                "With the Anthropic protocol, response_format cannot be combined with tools.",
            ));
        }
        tools.push(json!({"name": JSON_TOOL, "description": "Respond with the requested JSON object.", "input_schema": schema}));
        choice = Some(json!({"type": "tool", "name": JSON_TOOL}));
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }

    let body = serde_json::to_vec(&out).map_err(|e| {
        GatewayError::internal(format!("could not encode the upstream request: {e}"))
    })?;
    let mut headers = crate::headers(target, stream)?;
    headers
        .entry("anthropic-version")
        .or_insert(HeaderValue::from_static(VERSION));
    Ok(UpstreamRequest {
        url: join_url(target.base_url, "v1/messages"),
        headers,
        body: Bytes::from(body),
        dropped,
    })
}

/// True if the request asked for JSON through `response_format` (served by the forced tool).
pub fn json_mode(body: &JsonMap) -> bool {
    matches!(
        body.get("response_format")
            .and_then(|r| r.get("type"))
            .and_then(Value::as_str),
        Some("json_object" | "json_schema")
    )
}
