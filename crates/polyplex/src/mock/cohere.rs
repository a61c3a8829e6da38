//! The mock's Cohere v2 Chat API: `POST /v2/chat` with a Bearer key, Cohere's
//! `{"message": ...}` errors, and its named stream events.

use super::reply::{self, Answer};
use super::{admit, garbage, sse_body, MockState, Shape};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Cohere's request is close to OpenAI's; only the renamed fields need mapping.
fn to_openai(req: &Map<String, Value>) -> Map<String, Value> {
    let mut out = req.clone();
    if let Some(stop) = out.remove("stop_sequences") {
        out.insert("stop".into(), stop);
    }
    match out.remove("tool_choice").as_ref().and_then(Value::as_str) {
        Some("NONE") => {
            out.insert("tool_choice".into(), json!("none"));
        }
        Some("REQUIRED") => {
            out.insert("tool_choice".into(), json!("required"));
        }
        _ => {}
    }
    if let Some(rf) = out.remove("response_format") {
        let mapped = match rf.get("json_schema") {
            Some(schema) => {
                json!({"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
            }
            None => json!({"type": "json_object"}),
        };
        out.insert("response_format".into(), mapped);
    }
    out
}

/// Cohere's answer to a request without a Bearer key.
pub(super) fn require_bearer(headers: &HeaderMap) -> Option<Response> {
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "));
    (!ok).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "no api key supplied"})),
        )
            .into_response()
    })
}

/// Cohere's score of the `i`th text piece (`logprobs: true`): its token
/// ids and each token's log probability (a made-up but fixed one).
fn scored(i: usize, piece: &str) -> Value {
    json!({"token_ids": [1000 + i], "text": piece, "logprobs": [-0.125 * (i % 4 + 1) as f64]})
}

fn sse(kind: &str, data: Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

pub(crate) async fn chat(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(denied) = require_bearer(&headers) {
        return denied;
    }
    let (req, fault) = match admit(&s, "/v2/chat", &headers, &body, Shape::Cohere).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let oa = to_openai(&req);
    let want_logprobs = req.get("logprobs") == Some(&Value::Bool(true));
    let answer = reply::chat_answer(&oa);
    let prompt = reply::prompt_tokens(
        oa.get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    );
    let completion = match &answer {
        Answer::Text { pieces, .. } => pieces.len() as u64,
        Answer::ToolCall { arguments, .. } => 1 + arguments.len().div_ceil(4) as u64,
    };
    let usage = json!({"billed_units": {"input_tokens": prompt, "output_tokens": completion}, "tokens": {"input_tokens": prompt + 50, "output_tokens": completion}});
    let id = s.next_id("cohere-mock-");
    let finish = match &answer {
        Answer::Text {
            finish: "length", ..
        } => "MAX_TOKENS",
        Answer::Text { .. } => "COMPLETE",
        Answer::ToolCall { .. } => "TOOL_CALL",
    };
    if !req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        if fault.as_ref().is_some_and(|f| f.fault == "garbage") {
            return garbage();
        }
        let message = match &answer {
            Answer::Text { pieces, .. } => {
                json!({"role": "assistant", "content": [{"type": "text", "text": pieces.concat()}]})
            }
            Answer::ToolCall {
                id: call,
                name,
                arguments,
            } => json!({"role": "assistant", "tool_plan": "I will call the tool.",
                "tool_calls": [{"id": call, "type": "function", "function": {"name": name, "arguments": arguments}}]}),
        };
        let mut out =
            json!({"id": id, "finish_reason": finish, "message": message, "usage": usage});
        if let (true, Answer::Text { pieces, .. }) = (want_logprobs, &answer) {
            out["logprobs"] = pieces
                .iter()
                .enumerate()
                .map(|(i, p)| scored(i, p))
                .collect();
        }
        if fault.as_ref().is_some_and(|f| f.fault == "no_usage") {
            out.as_object_mut().map(|o| o.remove("usage"));
        }
        return Json(out).into_response();
    }
    let mut events = vec![sse(
        "message-start",
        json!({"id": id, "type": "message-start", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}),
    )];
    match &answer {
        Answer::Text { pieces, .. } => {
            events.push(sse("content-start", json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}})));
            for (i, p) in pieces.iter().enumerate() {
                let mut delta = json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": p}}}});
                if want_logprobs {
                    delta["logprobs"] = scored(i, p);
                }
                events.push(sse("content-delta", delta));
            }
            events.push(sse(
                "content-end",
                json!({"type": "content-end", "index": 0}),
            ));
        }
        Answer::ToolCall {
            id: call,
            name,
            arguments,
        } => {
            events.push(sse("tool-plan-delta", json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will call the tool."}}})));
            events.push(sse("tool-call-start", json!({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {"id": call, "type": "function", "function": {"name": name, "arguments": ""}}}}})));
            let chars: Vec<char> = arguments.chars().collect();
            for frag in chars.chunks(8) {
                let frag: String = frag.iter().collect();
                events.push(sse("tool-call-delta", json!({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": frag}}}}})));
            }
            events.push(sse(
                "tool-call-end",
                json!({"type": "tool-call-end", "index": 0}),
            ));
        }
    }
    events.push(sse(
        "message-end",
        json!({"type": "message-end", "delta": {"finish_reason": finish, "usage": usage}}),
    ));
    let cut = fault
        .as_ref()
        .filter(|f| f.fault == "disconnect")
        .map(|f| f.after_chunks.unwrap_or(2));
    sse_body(s, events, cut)
}

/// `POST /v2/embed`: float embeddings and billed units.
pub(crate) async fn embed(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(denied) = require_bearer(&headers) {
        return denied;
    }
    let (req, _) = match admit(&s, "/v2/embed", &headers, &body, Shape::Cohere).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if req.get("input_type").is_none() {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"message": "invalid request: input_type is required for Embed v3+ models"}),
            ),
        )
            .into_response();
    }
    let dims = req
        .get("output_dimension")
        .and_then(Value::as_u64)
        .unwrap_or(16)
        .clamp(1, 4096) as usize;
    let texts: Vec<&str> = req
        .get("texts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let tokens: usize = texts.iter().map(|t| reply::tokenize(t).len().max(1)).sum();
    let vectors: Vec<Vec<f32>> = texts.iter().map(|t| reply::embedding(t, dims)).collect();
    Json(
        json!({"id": s.next_id("embed-mock-"), "embeddings": {"float": vectors}, "texts": texts,
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}}}),
    )
    .into_response()
}
