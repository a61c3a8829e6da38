//! OpenAI's wire protocol, spoken by OpenAI itself and by the many providers
//! that copy it (Groq, Mistral, Together, DeepSeek, xAI, OpenRouter, Fireworks,
//! Ollama, vLLM, LM Studio, llama.cpp, ...).
//!
//! Requests go through unchanged but for the model name (the upstream's own),
//! the gateway's routing fields (removed) and `stream_options.include_usage`
//! (asked for, so every stream can be metered; the usage chunk is dropped again
//! if the client did not ask for it). Responses are passed on as they came.

pub(crate) mod request;
mod stream;
#[cfg(test)]
mod tests;

pub use stream::Decoder;

use crate::{Endpoint, Protocol, RawReply, Reply, StreamDecoder, Target, UpstreamRequest};
use bytes::Bytes;
use http::StatusCode;
use polyplex_types::{GatewayError, JsonMap, RequestBody, Usage};
use serde_json::Value;

#[derive(Debug, Default, Clone, Copy)]
pub struct OpenAiCompat;

impl Protocol for OpenAiCompat {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn answers_completions(&self) -> bool {
        true
    }

    fn build(
        &self,
        endpoint: Endpoint,
        body: &JsonMap,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        request::build(endpoint, body, stream, target)
    }

    fn build_from(
        &self,
        endpoint: Endpoint,
        body: &RequestBody,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        request::build_from(endpoint, body, stream, target)
    }

    fn rerank_request(
        &self,
        call: &crate::rerank::RerankCall<'_>,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        crate::rerank::compatible(call, target)
    }

    fn parse(
        &self,
        endpoint: Endpoint,
        provider: &str,
        _request: &JsonMap,
        body: &[u8],
    ) -> Result<(JsonMap, Option<Usage>), GatewayError> {
        let map: JsonMap = serde_json::from_slice(body).map_err(|e| {
            GatewayError::upstream_bad_response(provider, format_args!("not a JSON object ({e})"))
        })?;
        if let Some(err) = map.get("error").filter(|e| !e.is_null()) {
            // Some compatible servers answer 200 with an error body.
            return Err(error_from_value(provider, StatusCode::BAD_GATEWAY, err));
        }
        let expected = match endpoint {
            Endpoint::Embeddings => "data",
            _ => "choices",
        };
        if !map.get(expected).is_some_and(Value::is_array) {
            return Err(GatewayError::upstream_bad_response(
                provider,
                format_args!("no `{expected}` array"),
            ));
        }
        let usage = Usage::from_json(map.get("usage"));
        Ok((map, usage))
    }

    fn parse_reply(
        &self,
        endpoint: Endpoint,
        provider: &str,
        _request: &RequestBody,
        body: &Bytes,
    ) -> Result<(Reply, Option<Usage>), GatewayError> {
        let raw = RawReply::parse(body.clone()).map_err(|e| {
            GatewayError::upstream_bad_response(provider, format_args!("not a JSON object ({e})"))
        })?;
        if let Some(err) = raw.get("error").filter(|e| *e != "null") {
            let err: Value = serde_json::from_str(err).unwrap_or(Value::Null);
            return Err(error_from_value(provider, StatusCode::BAD_GATEWAY, &err));
        }
        let expected = match endpoint {
            Endpoint::Embeddings => "data",
            _ => "choices",
        };
        if !raw.is_array(expected) {
            return Err(GatewayError::upstream_bad_response(
                provider,
                format_args!("no `{expected}` array"),
            ));
        }
        let usage = match raw.get("usage") {
            Some(u) => Usage::from_json_text(u),
            None => None,
        };
        Ok((Reply::Raw(raw), usage))
    }

    fn error(&self, provider: &str, status: StatusCode, body: &[u8]) -> GatewayError {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => {
                let err = v.get("error").filter(|e| !e.is_null()).unwrap_or(&v);
                error_from_value(provider, status, err)
            }
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let msg = if text.is_empty() || text.len() > 500 || text.starts_with('<') {
                    format!(
                        "Upstream provider `{provider}` answered HTTP {}",
                        status.as_u16()
                    )
                } else {
                    text.to_string()
                };
                mapped(status, msg, None, None)
            }
        }
    }

    fn stream_decoder(
        &self,
        endpoint: Endpoint,
        provider: &str,
        _model: &str,
        _request: &RequestBody,
    ) -> Box<dyn StreamDecoder> {
        Box::new(Decoder::new(endpoint, provider))
    }
}

/// The OpenAI error type for a status, as OpenAI itself uses them.
fn kind_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 409 | 413 | 415 | 422 => "invalid_request_error",
        401 | 403 => "invalid_request_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// Status the gateway answers with for an upstream's status.
fn client_status(status: StatusCode) -> StatusCode {
    match status.as_u16() {
        422 => StatusCode::BAD_REQUEST,
        408 => StatusCode::GATEWAY_TIMEOUT,
        503 | 529 => StatusCode::SERVICE_UNAVAILABLE,
        504 => StatusCode::GATEWAY_TIMEOUT,
        s if s >= 500 => StatusCode::BAD_GATEWAY,
        s if s >= 400 => status,
        _ => StatusCode::BAD_GATEWAY,
    }
}

fn mapped(
    status: StatusCode,
    message: String,
    code: Option<String>,
    param: Option<String>,
) -> GatewayError {
    let retryable = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.as_u16() == 529;
    let mut e = GatewayError::upstream(client_status(status), kind_for(status), message);
    e.retryable = retryable;
    e.code = code;
    e.param = param;
    e
}

/// Reads an OpenAI-style error object (or the looser shapes compatible servers use:
/// `{"error": "text"}`, `{"message": ...}`, `{"detail": ...}`).
fn error_from_value(provider: &str, status: StatusCode, err: &Value) -> GatewayError {
    let text = |v: Option<&Value>| -> Option<String> {
        match v? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            Value::Number(n) => Some(n.to_string()),
            other => Some(other.to_string()),
        }
    };
    let message = match err {
        Value::String(s) => Some(s.clone()),
        _ => text(err.get("message")).or_else(|| text(err.get("detail"))),
    }
    .unwrap_or_else(|| {
        format!(
            "Upstream provider `{provider}` answered HTTP {}",
            status.as_u16()
        )
    });
    let code = text(err.get("code"));
    let param = text(err.get("param"));
    let mut e = mapped(status, message, code, param);
    if let Some(t) = err.get("type").and_then(Value::as_str) {
        // Keep OpenAI's own types when the upstream sent one of them.
        e.kind = match t {
            "invalid_request_error" => "invalid_request_error",
            "authentication_error" => "authentication_error",
            "permission_error" => "permission_error",
            "not_found_error" => "not_found_error",
            "rate_limit_error" => "rate_limit_error",
            "insufficient_quota" => "insufficient_quota",
            "server_error" => "server_error",
            _ => e.kind,
        };
    }
    e
}
