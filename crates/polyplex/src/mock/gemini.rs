//! The mock's Gemini API: `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`, the key in `x-goog-api-key` (or `?key=`),
//! Google's error shape, and whole-response stream events with no terminator.

use super::reply::{self, Answer};
use super::{admit, admit_model, garbage, sse_body, MockState, Shape};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use polyplex_providers::gemini::{signs_calls, SKIP_SIGNATURE};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Google's error shape (Gemini and Vertex AI).
pub(crate) fn google_error(status: StatusCode, msg: &str, code: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": status.as_u16(), "message": msg, "status": code}})),
    )
        .into_response()
}

/// The request in OpenAI's shape for `reply::chat_answer`.
fn to_openai(req: &Value) -> Map<String, Value> {
    let mut messages = Vec::new();
    if let Some(sys) = req.pointer("/systemInstruction/parts/0/text") {
        messages.push(json!({"role": "system", "content": sys}));
    }
    for c in req
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = if c.get("role").and_then(Value::as_str) == Some("model") {
            "assistant"
        } else {
            "user"
        };
        let mut parts = Vec::new();
        for p in c
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(t) = p.get("text") {
                parts.push(json!({"type": "text", "text": t}));
            } else if let Some(d) = p.get("inline_data").or_else(|| p.get("file_data")) {
                // Images as OpenAI's image parts; audio and other files by kind.
                let mime = d.get("mime_type").and_then(Value::as_str).unwrap_or("");
                parts.push(if mime.starts_with("image/") {
                    json!({"type": "image_url", "image_url": {"url": "image"}})
                } else if mime.starts_with("audio/") {
                    json!({"type": "input_audio"})
                } else {
                    json!({"type": "file"})
                });
            } else if let Some(fr) = p.get("functionResponse") {
                let resp = fr.get("response").cloned().unwrap_or(Value::Null);
                let text = resp
                    .get("result")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| resp.to_string());
                messages.push(json!({"role": "tool", "tool_call_id": "x", "content": text}));
            }
        }
        if !parts.is_empty() {
            messages.push(json!({"role": role, "content": parts}));
        }
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    let decls: Vec<Value> = req
        .pointer("/tools/0/functionDeclarations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        // Google's schema (upper-case types) read as JSON Schema, as Gemini takes both.
        .map(|d| {
            // (Google's JSON takes each name in snake_case too.)
            let params = d
                .get("parametersJsonSchema")
                .or_else(|| d.get("parameters_json_schema"))
                .cloned()
                .or_else(|| d.get("parameters").map(crate::genai::json_schema));
            json!({"type": "function", "function": {"name": d.get("name"), "parameters": params}})
        })
        .collect();
    if !decls.is_empty() {
        out.insert("tools".into(), Value::Array(decls));
    }
    match req
        .pointer("/toolConfig/functionCallingConfig/mode")
        .and_then(Value::as_str)
    {
        Some("NONE") => {
            out.insert("tool_choice".into(), json!("none"));
        }
        Some("ANY") => {
            if let Some(name) =
                req.pointer("/toolConfig/functionCallingConfig/allowedFunctionNames/0")
            {
                out.insert(
                    "tool_choice".into(),
                    json!({"type": "function", "function": {"name": name}}),
                );
            }
        }
        _ => {}
    }
    let gc = req.get("generationConfig").cloned().unwrap_or(json!({}));
    if let Some(stop) = gc.get("stopSequences") {
        out.insert("stop".into(), stop.clone());
    }
    if let Some(max) = gc.get("maxOutputTokens") {
        out.insert("max_tokens".into(), max.clone());
    }
    if gc.get("responseMimeType").and_then(Value::as_str) == Some("application/json") {
        let rf = match gc
            .get("responseJsonSchema")
            .or_else(|| gc.get("responseSchema"))
        {
            Some(schema) => {
                json!({"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
            }
            None => json!({"type": "json_object"}),
        };
        out.insert("response_format".into(), rf);
    }
    out
}

pub(crate) async fn generate(
    State(s): State<Arc<MockState>>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((model, method)) = rest.rsplit_once(':') else {
        return google_error(StatusCode::NOT_FOUND, "Method not found.", "NOT_FOUND");
    };
    let query = q.unwrap_or_default();
    if headers.get("x-goog-api-key").is_none() && !query.split('&').any(|kv| kv.starts_with("key="))
    {
        return google_error(StatusCode::FORBIDDEN, "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.", "PERMISSION_DENIED");
    }
    serve(s, "/v1beta/models", model, method, &query, headers, body).await
}

/// The mock's thought signature for a function call (Gemini's is opaque and
/// must come back untouched; so must this).
fn call_signature(name: &str, args: &str) -> String {
    reply::stable_id("mock-thought-", &format!("{name}{args}"))
}

/// What a Gemini 3 model refuses in the replayed history: a model turn
/// whose function calls come without a thought signature on the first,
/// or with one that is not the one it gave.
fn bad_signature(req: &Value) -> Option<String> {
    for (i, c) in req.get("contents")?.as_array()?.iter().enumerate() {
        let calls: Vec<&Value> = c
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|p| p.get("functionCall").is_some())
            .collect();
        let Some(first) = calls.first() else { continue };
        let fc = &first["functionCall"];
        let name = fc.get("name").and_then(Value::as_str).unwrap_or("");
        let args = fc.get("args").cloned().unwrap_or(json!({})).to_string();
        match first.get("thoughtSignature").and_then(Value::as_str) {
            None => return Some(format!("Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `{name}` , position {i}.")),
            Some(sig) if sig != SKIP_SIGNATURE && sig != call_signature(name, &args) => {
                return Some("Corrupted thought signature.".into())
            }
            Some(_) => {}
        }
    }
    None
}

/// `countTokens`: a request's `contents` (or, on Gemini's API, a
/// `generateContentRequest` naming `models/{model}`) counted as the mock
/// counts prompts.
async fn count_tokens(
    s: &MockState,
    path: &str,
    model: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let (req, _) = match admit_model(s, path, headers, body, Shape::Google, Some(model)).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let inner = match req.get("generateContentRequest") {
        Some(g) if g.get("model").and_then(Value::as_str) != Some(&format!("models/{model}")) => {
            return google_error(
                StatusCode::BAD_REQUEST,
                "generateContentRequest.model must name the model of the URL.",
                "INVALID_ARGUMENT",
            )
        }
        Some(g) => g.clone(),
        None => Value::Object(req),
    };
    if inner
        .get("contents")
        .and_then(Value::as_array)
        .is_none_or(|c| c.is_empty())
    {
        return google_error(
            StatusCode::BAD_REQUEST,
            "* CountTokensRequest.contents: contents is not specified\n",
            "INVALID_ARGUMENT",
        );
    }
    let chat = to_openai(&inner);
    let messages = chat.get("messages").and_then(Value::as_array);
    let n = reply::prompt_tokens(messages.map(Vec::as_slice).unwrap_or(&[]));
    Json(json!({"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]}))
        .into_response()
}

/// `generateContent` and its kin once the caller's credentials passed (an
/// API key, or Vertex AI's token).
pub(crate) async fn serve(
    s: Arc<MockState>,
    path: &str,
    model: &str,
    method: &str,
    query: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == "batchEmbedContents" {
        return embed(s, model, headers, body).await;
    }
    if method == "countTokens" {
        return count_tokens(&s, path, model, &headers, &body).await;
    }
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return google_error(StatusCode::NOT_FOUND, "Method not found.", "NOT_FOUND"),
    };
    if stream && !query.split('&').any(|kv| kv == "alt=sse") {
        return google_error(
            StatusCode::BAD_REQUEST,
            "The mock streams only with alt=sse.",
            "INVALID_ARGUMENT",
        );
    }
    let (req, fault) =
        match admit_model(&s, path, &headers, &body, Shape::Google, Some(model)).await {
            Ok(x) => x,
            Err(r) => return r,
        };
    // As Google's API: a request needs a turn to answer.
    if req
        .get("contents")
        .and_then(Value::as_array)
        .is_none_or(|c| c.is_empty())
    {
        return google_error(
            StatusCode::BAD_REQUEST,
            "* GenerateContentRequest.contents: contents is not specified\n",
            "INVALID_ARGUMENT",
        );
    }
    let req = Value::Object(req);
    if signs_calls(model) {
        if let Some(msg) = bad_signature(&req) {
            return google_error(StatusCode::BAD_REQUEST, &msg, "INVALID_ARGUMENT");
        }
    }
    // Log probabilities as Gemini gives them: asked by `responseLogprobs`,
    // with `logprobs` alternatives per step (0–20; only with the former).
    let top = req.pointer("/generationConfig/logprobs");
    let want_logprobs = req.pointer("/generationConfig/responseLogprobs") == Some(&json!(true));
    if top.is_some() && !want_logprobs {
        return google_error(
            StatusCode::BAD_REQUEST,
            "logprobs is only valid if response_logprobs is true",
            "INVALID_ARGUMENT",
        );
    }
    let top = match top.map(Value::as_u64) {
        None => None,
        Some(Some(k)) if k <= 20 => Some(k),
        Some(_) => {
            return google_error(
                StatusCode::BAD_REQUEST,
                "logprobs must be in the range [0, 20]",
                "INVALID_ARGUMENT",
            )
        }
    };
    let logprobs = |pieces: &[String]| want_logprobs.then(|| logprobs_result(pieces, top));
    let oa = to_openai(&req);
    let n = req
        .pointer("/generationConfig/candidateCount")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 8);
    let mut answer = reply::chat_answer(&oa);
    // Grounding with Google Search: a text answer is searched for once (its
    // query the last user turn) and grounded in the page found.
    let grounding = match &mut answer {
        Answer::Text { pieces, .. } if google_search(&req) => {
            let answer_text = pieces.concat();
            let mut lead = reply::tokenize(reply::SEARCH_LEAD);
            lead.append(pieces);
            *pieces = lead;
            Some(grounding_metadata(&oa, &answer_text))
        }
        _ => None,
    };
    let prompt = reply::prompt_tokens(
        oa.get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    );
    let completion = match &answer {
        Answer::Text { pieces, .. } => pieces.len() as u64,
        Answer::ToolCall { arguments, .. } => 1 + arguments.len().div_ceil(4) as u64,
    } * n;
    // A thought summary first when one is asked for (`includeThoughts`).
    let thought = (req.pointer("/generationConfig/thinkingConfig/includeThoughts")
        == Some(&json!(true)))
    .then(|| reply::thought_about(&oa));
    let thoughts = thought
        .as_ref()
        .map_or(0, |t| reply::tokenize(t).len() as u64);
    let mut usage = json!({"promptTokenCount": prompt, "candidatesTokenCount": completion, "totalTokenCount": prompt + completion + thoughts});
    if thoughts > 0 {
        usage["thoughtsTokenCount"] = json!(thoughts);
    }
    let response_id = s.next_id("gem-mock");
    let finish = match &answer {
        Answer::Text {
            finish: "length", ..
        } => "MAX_TOKENS",
        _ => "STOP",
    };
    // A function call's part, signed where the model signs its calls.
    let call_part = |name: &str, arguments: &str| {
        let args = serde_json::from_str::<Value>(arguments).unwrap_or(json!({}));
        let mut part = json!({"functionCall": {"name": name, "args": args}});
        if signs_calls(model) {
            part["thoughtSignature"] = json!(call_signature(name, &args.to_string()));
        }
        part
    };
    if !stream {
        if fault.as_ref().is_some_and(|f| f.fault == "garbage") {
            return garbage();
        }
        let mut parts = match &answer {
            Answer::Text { pieces, .. } => json!([{"text": pieces.concat()}]),
            Answer::ToolCall {
                name, arguments, ..
            } => json!([call_part(name, arguments)]),
        };
        if let (Some(t), Some(ps)) = (&thought, parts.as_array_mut()) {
            ps.insert(0, json!({"text": t, "thought": true}));
        }
        let lp = match &answer {
            Answer::Text { pieces, .. } => logprobs(pieces),
            Answer::ToolCall { .. } => None,
        };
        let candidates: Vec<Value> = (0..n)
            .map(|i| {
                let mut c = json!({"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": i});
                if let Some(lp) = &lp {
                    c["logprobsResult"] = lp.clone();
                    c["avgLogprobs"] = average_logprob(lp);
                }
                if let Some(g) = &grounding {
                    c["groundingMetadata"] = g.clone();
                }
                c
            })
            .collect();
        let mut out = json!({"candidates": candidates, "usageMetadata": usage, "modelVersion": model, "responseId": response_id});
        if fault.as_ref().is_some_and(|f| f.fault == "no_usage") {
            out.as_object_mut().map(|o| o.remove("usageMetadata"));
        }
        return Json(out).into_response();
    }
    let no_usage = fault.as_ref().is_some_and(|f| f.fault == "no_usage");
    // Each event carries every candidate (`candidateCount`), as Gemini
    // streams several.
    let event = |parts: Value, lp: Option<Value>, finish: Option<&str>, usage: &Value| {
        let candidates: Vec<Value> = (0..n)
            .map(|i| {
                let mut c = json!({"content": {"parts": parts, "role": "model"}, "index": i});
                if let Some(f) = finish {
                    c["finishReason"] = json!(f);
                    if let Some(g) = &grounding {
                        c["groundingMetadata"] = g.clone();
                    }
                }
                if let Some(lp) = &lp {
                    c["logprobsResult"] = lp.clone();
                }
                c
            })
            .collect();
        let mut out = json!({"candidates": candidates, "usageMetadata": usage, "modelVersion": model, "responseId": response_id});
        if no_usage {
            out.as_object_mut().map(|o| o.remove("usageMetadata"));
        }
        Bytes::from(format!("data: {out}\n\n"))
    };
    let partial = json!({"promptTokenCount": prompt, "totalTokenCount": prompt});
    let mut events = Vec::new();
    if let Some(t) = &thought {
        events.push(event(
            json!([{"text": t, "thought": true}]),
            None,
            None,
            &partial,
        ));
    }
    match &answer {
        Answer::Text { pieces, .. } => {
            for (i, p) in pieces.iter().enumerate() {
                let last = i + 1 == pieces.len();
                events.push(event(
                    json!([{"text": p}]),
                    logprobs(std::slice::from_ref(p)),
                    last.then_some(finish),
                    if last { &usage } else { &partial },
                ));
            }
            if pieces.is_empty() {
                events.push(event(json!([{"text": ""}]), None, Some(finish), &usage));
            }
        }
        Answer::ToolCall {
            name, arguments, ..
        } => {
            events.push(event(
                json!([call_part(name, arguments)]),
                None,
                Some("STOP"),
                &usage,
            ));
        }
    }
    let cut = fault
        .as_ref()
        .filter(|f| f.fault == "disconnect")
        .map(|f| f.after_chunks.unwrap_or(2));
    sse_body(s, events, cut)
}

/// Whether the request grounds its answer with Google Search.
fn google_search(req: &Value) -> bool {
    req.get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| t.iter().any(|t| t.get("google_search").is_some()))
}

/// Gemini's `groundingMetadata` for an answer (after the search lead-in)
/// that one search ([`reply::search`]) grounded: the page, and the
/// answer's byte range supported by it.
fn grounding_metadata(oa: &Map<String, Value>, answer: &str) -> Value {
    let (query, url, title) = reply::search(oa);
    let lead = reply::SEARCH_LEAD.len();
    json!({
        "webSearchQueries": [query],
        "searchEntryPoint": {"renderedContent": "<div class=\"mock-search\"></div>"},
        "groundingChunks": [{"web": {"uri": url, "title": title}}],
        "groundingSupports": [{"segment": {"startIndex": lead, "endIndex": lead + answer.len(), "text": answer},
            "groundingChunkIndices": [0], "confidenceScores": [0.9]}]
    })
}

/// The mean of a `logprobsResult`'s chosen log probabilities (a unary
/// candidate's `avgLogprobs`).
fn average_logprob(lp: &Value) -> Value {
    let chosen = lp["chosenCandidates"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let sum: f64 = chosen
        .iter()
        .filter_map(|c| c["logProbability"].as_f64())
        .sum();
    json!(sum / chosen.len().max(1) as f64)
}

/// Gemini's `logprobsResult` for the answer's tokens: each chosen, with
/// `top` alternatives (the chosen first). A zero log probability is left
/// out, as Google's JSON leaves out every zero.
fn logprobs_result(pieces: &[String], top: Option<u64>) -> Value {
    let entry = |token: &str, logprob: f64| {
        let mut e = json!({"token": token, "tokenId": token.bytes().map(u64::from).sum::<u64>()});
        if logprob != 0.0 {
            e["logProbability"] = json!(logprob);
        }
        e
    };
    let chosen: Vec<Value> = pieces.iter().map(|p| entry(p, -0.0001)).collect();
    let steps: Vec<Value> = pieces
        .iter()
        .map(|p| {
            let alternatives: Vec<Value> = (0..top.unwrap_or(0))
                .map(|i| entry(p, -0.0001 - i as f64))
                .collect();
            json!({"candidates": alternatives})
        })
        .collect();
    json!({"topCandidates": steps, "chosenCandidates": chosen, "logProbabilitySum": -0.0001 * pieces.len() as f64})
}

/// `batchEmbedContents`: one vector per request, no usage (as Gemini does).
async fn embed(s: Arc<MockState>, model: &str, headers: HeaderMap, body: Bytes) -> Response {
    let (req, _) = match admit(
        &s,
        "/v1beta/models:batchEmbedContents",
        &headers,
        &body,
        Shape::Google,
    )
    .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let want = format!("models/{model}");
    let mut embeddings = Vec::new();
    for (i, r) in req
        .get("requests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if r.get("model").and_then(Value::as_str) != Some(want.as_str()) {
            return google_error(
                StatusCode::BAD_REQUEST,
                &format!("requests[{i}].model must be {want}"),
                "INVALID_ARGUMENT",
            );
        }
        let text = r
            .pointer("/content/parts/0/text")
            .and_then(Value::as_str)
            .unwrap_or("");
        let dims = r
            .get("outputDimensionality")
            .and_then(Value::as_u64)
            .unwrap_or(16)
            .clamp(1, 4096) as usize;
        embeddings.push(json!({"values": reply::embedding(text, dims)}));
    }
    Json(json!({"embeddings": embeddings})).into_response()
}
