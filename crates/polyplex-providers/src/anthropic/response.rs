//! Anthropic message → OpenAI chat.completion.

use super::{finish_reason, usage_from, JSON_TOOL};
use crate::translate::completion;
use polyplex_types::{GatewayError, JsonMap, Usage};
use serde_json::{json, Value};

pub(crate) fn parse(
    provider: &str,
    body: &[u8],
    json_mode: bool,
) -> Result<(JsonMap, Option<Usage>), GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::upstream_bad_response(provider, format_args!("not JSON ({e})"))
    })?;
    if v.get("type").and_then(Value::as_str) == Some("error") {
        let err = v.get("error").unwrap_or(&Value::Null);
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("upstream error")
            .to_string();
        return Err(super::error_for(
            http::StatusCode::BAD_GATEWAY,
            err.get("type").and_then(Value::as_str).unwrap_or(""),
            msg,
        ));
    }
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| GatewayError::upstream_bad_response(provider, "no `content` array"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or(json!({}));
                let name = b.get("name").and_then(Value::as_str).unwrap_or("");
                if json_mode && name == JSON_TOOL {
                    text.push_str(&input.to_string());
                } else {
                    tool_calls.push(json!({"id": b.get("id").cloned().unwrap_or(Value::Null), "type": "function",
                        "function": {"name": name, "arguments": input.to_string()}}));
                }
            }
            _ => {}
        }
    }
    let stop = v
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) }, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let usage = v.get("usage").map(usage_from);
    let out = completion(
        v.get("id").cloned().unwrap_or(json!("msg_unknown")),
        v.get("model").cloned().unwrap_or(Value::Null),
        json!([{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(stop, json_mode)}]),
        usage.as_ref(),
    );
    Ok((out, usage))
}
