//! Claude on Amazon Bedrock's way in: `POST /model/{modelId}/invoke` and
//! `/model/{modelId}/invoke-with-response-stream` with Anthropic's message
//! body, as Anthropic's SDK (`AnthropicBedrock` with an API key: a bearer
//! token, here the gateway key) writes them, served as the Messages API:
//! the model from the path (a Bedrock model id or inference profile, or any
//! name the gateway routes), routed like any bare name; the answer as
//! Bedrock gives it — the Message itself, or its stream's events each in an
//! AWS event-stream `chunk` frame (`{"bytes": base64(event)}`); errors as
//! Bedrock's `{"message"}` with the status Bedrock uses for them.

use super::auth::Caller;
use super::handlers::{parse_json, read_body};
use super::{App, RequestId};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use bytes::Bytes;
use polyplex_providers::bedrock::frame;
use polyplex_types::GatewayError;
use serde_json::{json, Value};

/// Bedrock's error: `{"message"}` with `status`.
pub(super) fn bedrock_error(e: &GatewayError) -> Response {
    (e.status, Json(json!({ "message": e.message }))).into_response()
}

pub async fn serve(
    State(app): State<App>,
    Extension(rid): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    let path = req.uri().path().to_string();
    let Some((model, stream)) = target(&path) else {
        return bedrock_error(&GatewayError::not_found(format!(
            "Unknown operation {path}: /model/{{modelId}}/invoke and /model/{{modelId}}/invoke-with-response-stream are served."
        )));
    };
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers.clone();
    let text = match read_body(&app, Request::from_parts(parts, body)).await {
        Ok(t) => t,
        Err(e) => return bedrock_error(&e),
    };
    let mut tree = match parse_json(&text) {
        Ok(t) => t,
        Err(e) => return bedrock_error(&e),
    };
    if tree.remove("anthropic_version").is_none() {
        return bedrock_error(
            &GatewayError::invalid_request(
                "polyplex serves Anthropic's message format on /model/{modelId}/invoke (with `anthropic_version`, as Anthropic's SDK sends it); other models' invoke bodies are not served: use /v1/chat/completions.",
            )
            .with_param("anthropic_version"),
        );
    }
    // Bedrock's body field for Anthropic's beta header.
    if let Some(Value::Array(betas)) = tree.remove("anthropic_beta") {
        let betas: Vec<&str> = betas.iter().filter_map(Value::as_str).collect();
        if let Ok(v) = HeaderValue::from_str(&betas.join(",")) {
            headers.insert("anthropic-beta", v);
        }
    }
    tree.insert("model".into(), Value::String(model));
    tree.insert("stream".into(), Value::Bool(stream));
    // An object of JSON values always encodes.
    let body = serde_json::to_vec(&tree).unwrap_or_default();
    let inner = super::handlers::converted_post(headers, body);
    let resp =
        super::handlers::messages(State(app), Extension(rid), Extension(caller), inner).await;
    answer(resp, stream).await
}

/// The model (percent-decoded) and whether the answer streams, from
/// `/model/{modelId}/invoke[-with-response-stream]`.
fn target(path: &str) -> Option<(String, bool)> {
    let (model, action) = path.strip_prefix("/model/")?.rsplit_once('/')?;
    let stream = match action {
        "invoke" => false,
        "invoke-with-response-stream" => true,
        _ => return None,
    };
    let model = percent_encoding::percent_decode_str(model)
        .decode_utf8()
        .ok()?
        .into_owned();
    (!model.is_empty()).then_some((model, stream))
}

/// The Messages API's answer as Bedrock's: an error's `{"message"}`; a
/// stream's events in event-stream frames; a Message as it is.
async fn answer(resp: Response, stream: bool) -> Response {
    let (mut parts, body) = resp.into_parts();
    if !parts.status.is_success() {
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let message = v["error"]["message"]
            .as_str()
            .or_else(|| v["message"].as_str())
            .unwrap_or("The request failed.")
            .to_string();
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let out = serde_json::to_vec(&json!({ "message": message })).unwrap_or_default();
        return Response::from_parts(parts, Body::from(out));
    }
    if !stream {
        return Response::from_parts(parts, body);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    let state = (
        body.into_data_stream(),
        polyplex_providers::sse::Parser::new(),
        false,
    );
    let frames = futures::stream::unfold(state, |(mut body, mut parser, done)| async move {
        use futures::StreamExt;
        if done {
            return None;
        }
        let mut events = Vec::new();
        loop {
            match body.next().await {
                Some(Ok(bytes)) => {
                    parser.feed(&bytes, &mut events);
                    if events.is_empty() {
                        continue;
                    }
                    let out = framed(&events);
                    return Some((
                        Ok::<Bytes, std::convert::Infallible>(out),
                        (body, parser, false),
                    ));
                }
                Some(Err(_)) | None => {
                    let mut out = framed(&events).to_vec();
                    if parser.has_partial() {
                        out.extend_from_slice(&frame(
                            "internalServerException",
                            &json!({"message": "The stream ended before its last event."}),
                            true,
                        ));
                    }
                    return Some((Ok(Bytes::from(out)), (body, parser, true)));
                }
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(frames))
}

/// Each of Anthropic's stream events as Bedrock frames it: a `chunk` event
/// whose `bytes` are the event's JSON; an `error` event as an exception.
fn framed(events: &[polyplex_providers::sse::Event]) -> Bytes {
    let mut out = Vec::new();
    for e in events {
        if e.event.as_deref() == Some("error") {
            let v: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
            let message = v["error"]["message"]
                .as_str()
                .unwrap_or("The stream failed.");
            let kind = match v["error"]["type"].as_str() {
                Some("overloaded_error") => "serviceUnavailableException",
                Some("rate_limit_error") => "throttlingException",
                Some("timeout_error") => "modelTimeoutException",
                _ => "internalServerException",
            };
            out.extend_from_slice(&frame(kind, &json!({ "message": message }), true));
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD.encode(e.data.as_bytes());
        out.extend_from_slice(&frame("chunk", &json!({ "bytes": bytes }), false));
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn targets_are_the_model_and_the_action() {
        assert_eq!(
            target("/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/invoke"),
            Some(("us.anthropic.claude-haiku-4-5-20251001-v1:0".into(), false))
        );
        assert_eq!(
            target("/model/claude-sonnet-4-5/invoke-with-response-stream"),
            Some(("claude-sonnet-4-5".into(), true))
        );
        assert_eq!(target("/model/x/converse"), None);
        assert_eq!(target("/model//invoke"), None);
    }

    #[test]
    fn events_become_chunk_frames_and_errors_exceptions() {
        let mut parser = polyplex_providers::sse::Parser::event_stream();
        let events = [
            polyplex_providers::sse::Event {
                event: Some("message_start".into()),
                data: r#"{"type":"message_start"}"#.into(),
            },
            polyplex_providers::sse::Event {
                event: Some("error".into()),
                data: r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#
                    .into(),
            },
        ];
        let mut back = Vec::new();
        parser.feed(&framed(&events), &mut back);
        assert_eq!(back.len(), 2, "{back:?}");
        assert_eq!(back[0].event.as_deref(), Some("chunk"));
        let v: Value = serde_json::from_str(&back[0].data).unwrap();
        let inner = base64::engine::general_purpose::STANDARD
            .decode(v["bytes"].as_str().unwrap())
            .unwrap();
        assert_eq!(inner, br#"{"type":"message_start"}"#);
        assert!(back[1].data.contains("busy"), "{back:?}");
    }

    #[test]
    fn a_bedrock_error_is_its_message() {
        let r = bedrock_error(&GatewayError::not_found("nope"));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
