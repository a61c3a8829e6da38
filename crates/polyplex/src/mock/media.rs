//! OpenAI's moderation, image and audio endpoints, as the mock answers
//! them: `POST /v1/moderations`, `/v1/images/generations`,
//! `/v1/images/edits` and `/v1/images/variations` (forms),
//! `/v1/audio/speech`, `/v1/audio/transcriptions` and
//! `/v1/audio/translations` (forms). Deterministic stand-ins in OpenAI's
//! shapes: a text with "kill" in it is flagged, an image is a 1×1 PNG,
//! speech is the input's bytes behind an `ID3` tag, a transcript names the
//! file it was given; the token-priced models (`gpt-image-*`,
//! `gpt-4o-*transcribe*`) report usage as OpenAI's do.

use super::{admit, armed, error, now, reply, MockState, Shape};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A 1×1 transparent PNG.
const PIXEL: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

const CATEGORIES: &[&str] = &[
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

fn sse_json(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn words(text: &str) -> u64 {
    reply::tokenize(text).len().max(1) as u64
}

pub(super) async fn moderations(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (req, _) = match admit(&s, "/v1/moderations", &headers, &body, Shape::OpenAi).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("omni-moderation-latest");
    let texts: Vec<String> = match req.get("input") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x.get("text").and_then(Value::as_str) {
                Some(t) => t.to_string(),
                None => x.as_str().map(str::to_string).unwrap_or_default(),
            })
            .collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "'input' is a required property",
                None,
            )
        }
    };
    let results: Vec<Value> = texts
        .iter()
        .map(|t| {
            let violent = t.to_lowercase().contains("kill");
            let flags: Map<String, Value> = CATEGORIES
                .iter()
                .map(|c| (c.to_string(), json!(violent && *c == "violence")))
                .collect();
            let scores: Map<String, Value> = CATEGORIES
                .iter()
                .map(|c| {
                    let score = if violent && *c == "violence" {
                        0.97
                    } else {
                        0.0001
                    };
                    (c.to_string(), json!(score))
                })
                .collect();
            json!({"flagged": violent, "categories": flags, "category_scores": scores})
        })
        .collect();
    let n = s.stats.requests.load(Ordering::Relaxed);
    Json(json!({"id": format!("modr-mock{n:06}"), "model": model, "results": results}))
        .into_response()
}

/// The images of a generation or edit: `n` pixels, with usage for the
/// token-priced models.
fn images(model: &str, prompt: &str, n: u64) -> Response {
    let data: Vec<Value> = (0..n)
        .map(|_| json!({"b64_json": PIXEL, "revised_prompt": prompt}))
        .collect();
    let mut out = json!({"created": now(), "data": data});
    if model.starts_with("gpt-image") {
        let (input, output) = (words(prompt), 272 * n);
        out["usage"] = json!({"input_tokens": input, "output_tokens": output,
            "total_tokens": input + output,
            "input_tokens_details": {"text_tokens": input, "image_tokens": 0}});
    }
    Json(out).into_response()
}

pub(super) async fn image_generations(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = "/v1/images/generations";
    let (req, _) = match admit(&s, path, &headers, &body, Shape::OpenAi).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(prompt) = req.get("prompt").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "'prompt' is a required property",
            None,
        );
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("dall-e-2");
    let n = req
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 10);
    images(model, prompt, n)
}

/// A multipart form's fields: text values, and each file's name and size.
struct Form {
    text: Map<String, Value>,
    files: Vec<(String, String, usize)>,
}

async fn read_form(headers: &HeaderMap, body: Bytes) -> Result<Form, Response> {
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "invalid_request_error", m, None);
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| bad("expected a multipart/form-data body"))?;
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut m = multer::Multipart::new(stream, boundary);
    let mut form = Form {
        text: Map::new(),
        files: Vec::new(),
    };
    loop {
        let field = match m.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(bad(&format!("invalid multipart body: {e}"))),
        };
        let name = field.name().unwrap_or("").to_string();
        let file = field.file_name().map(str::to_string);
        let data = field
            .bytes()
            .await
            .map_err(|e| bad(&format!("invalid multipart body: {e}")))?;
        match file {
            Some(f) => form.files.push((name, f, data.len())),
            None => {
                let v = String::from_utf8_lossy(&data).into_owned();
                form.text.insert(name, Value::String(v));
            }
        }
    }
    Ok(form)
}

/// `admit` for a form: counted, recorded (its fields, the files by name
/// and size) and faulted like the JSON endpoints.
async fn admit_form(
    s: &MockState,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Form, Response> {
    s.stats.requests.fetch_add(1, Ordering::Relaxed);
    let form = read_form(headers, body).await?;
    let mut seen = form.text.clone();
    for (name, file, size) in &form.files {
        seen.insert(name.clone(), json!({"file": file, "bytes": size}));
    }
    s.record(path, headers, &Value::Object(seen));
    let model = form.text.get("model").and_then(Value::as_str).unwrap_or("");
    armed(s, headers, Shape::OpenAi, model).await?;
    Ok(form)
}

async fn image_form(s: Arc<MockState>, path: &str, headers: HeaderMap, body: Bytes) -> Response {
    let form = match admit_form(&s, path, &headers, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if form.files.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "an image file is required",
            None,
        );
    }
    let text = |k: &str| form.text.get(k).and_then(Value::as_str);
    let n = text("n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1u64)
        .clamp(1, 10);
    images(
        text("model").unwrap_or("dall-e-2"),
        text("prompt").unwrap_or(""),
        n,
    )
}

pub(super) async fn image_edits(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    image_form(s, "/v1/images/edits", headers, body).await
}

pub(super) async fn image_variations(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    image_form(s, "/v1/images/variations", headers, body).await
}

pub(super) async fn speech(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (req, _) = match admit(&s, "/v1/audio/speech", &headers, &body, Shape::OpenAi).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (Some(input), Some(_voice)) = (req.get("input").and_then(Value::as_str), req.get("voice"))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "'input' and 'voice' are required properties",
            None,
        );
    };
    let format = req
        .get("response_format")
        .and_then(Value::as_str)
        .unwrap_or("mp3");
    let content_type = match format {
        "opus" => "audio/ogg",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "wav" => "audio/wav",
        "pcm" => "audio/pcm",
        _ => "audio/mpeg",
    };
    let mut audio = b"ID3".to_vec();
    audio.extend_from_slice(input.as_bytes());
    ([(header::CONTENT_TYPE, content_type)], audio).into_response()
}

async fn transcript(s: Arc<MockState>, path: &str, headers: HeaderMap, body: Bytes) -> Response {
    let form = match admit_form(&s, path, &headers, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some((_, file, size)) = form.files.iter().find(|(n, _, _)| n == "file") else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "'file' is a required property",
            None,
        );
    };
    let text = |k: &str| form.text.get(k).and_then(Value::as_str);
    let model = text("model").unwrap_or("whisper-1");
    let said = format!("Transcript of {file} ({size} bytes).");
    let (input, output) = (size.div_ceil(1000).max(1) as u64, words(&said));
    let tokens = json!({"type": "tokens", "input_tokens": input,
        "output_tokens": output, "total_tokens": input + output});
    if text("stream") == Some("true") && model.contains("transcribe") {
        // OpenAI's transcription events: the text in deltas, then all of
        // it with the usage.
        let mut events: Vec<Bytes> = reply::tokenize(&said)
            .iter()
            .map(|w| sse_json(&json!({"type": "transcript.text.delta", "delta": w})))
            .collect();
        events.push(sse_json(
            &json!({"type": "transcript.text.done", "text": said, "usage": tokens}),
        ));
        return super::sse_body(s, events, None);
    }
    match text("response_format").unwrap_or("json") {
        "text" => said.into_response(),
        "srt" | "vtt" => format!("1\n00:00:00,000 --> 00:00:01,000\n{said}\n").into_response(),
        _ => {
            let mut out = json!({"text": said});
            if model.contains("transcribe") {
                out["usage"] = tokens;
            } else {
                out["usage"] = json!({"type": "duration", "seconds": 1});
            }
            Json(out).into_response()
        }
    }
}

pub(super) async fn transcriptions(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    transcript(s, "/v1/audio/transcriptions", headers, body).await
}

pub(super) async fn translations(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    transcript(s, "/v1/audio/translations", headers, body).await
}
