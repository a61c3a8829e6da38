//! Anthropic's Messages API (`POST {base}/v1/messages`, `x-api-key`,
//! `anthropic-version`), translated both ways.
//!
//! - system and developer messages become `system`; tool results become
//!   `tool_result` blocks in a user turn; consecutive same-role turns merge
//!   (Anthropic requires alternation); image parts become `image` blocks,
//!   PDF and plain-text `file` parts `document` blocks; a message's `name`
//!   and an image's `detail` are dropped and named;
//! - `max_tokens` is required by Anthropic: the client's, else the catalog's
//!   output limit for the model, else 4096;
//! - `response_format` (json_object / json_schema) is served by a forced tool
//!   whose input schema is the requested schema; its input comes back as the
//!   message content, so the client sees plain JSON text;
//! - `reasoning_effort` → extended thinking, whose blocks come back as
//!   `reasoning_content` and `thinking_blocks` and, sent back on an
//!   assistant turn, go out verbatim (a tool loop needs them);
//! - `web_search_options` → Anthropic's web search tool (`max_uses` 1 / 5 / 10
//!   for `search_context_size` low / medium / high, the approximate user
//!   location); the cited passages come back as `url_citation` annotations
//!   on the message, the searches in `usage.server_tool_use` and, at
//!   [`WEB_SEARCH_PRICE`] each, in `usage.cost`;
//! - parameters Anthropic has no equivalent for (`n` > 1, `seed`, penalties,
//!   `logit_bias`, `logprobs`, unknown fields) are refused with a 400 naming
//!   them, or dropped and named under `drop_params`.

mod native;
pub(crate) mod request;
mod response;
mod stream;
#[cfg(test)]
mod tests;

pub use native::Native;
pub use stream::Decoder;

use crate::{Endpoint, Protocol, Reply, StreamDecoder, Target, UpstreamRequest};
use bytes::Bytes;
use http::StatusCode;
use polyplex_types::{GatewayError, JsonMap, RequestBody, Usage};
use serde_json::Value;

/// The API version polyplex speaks.
pub const VERSION: &str = "2023-06-01";
/// The forced tool that carries `response_format` JSON.
pub(crate) const JSON_TOOL: &str = "json_response";
/// Anthropic requires `max_tokens`; used when neither client nor catalog gives one.
pub const FALLBACK_MAX_TOKENS: u64 = 4096;
/// What one run of the web search tool costs: $10 per 1,000 searches
/// (Anthropic's price, on its API and on Vertex AI).
pub const WEB_SEARCH_PRICE: f64 = 0.01;

#[derive(Debug, Default, Clone, Copy)]
pub struct Anthropic;

impl Protocol for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    /// One choice a request: several are asked one at a time.
    fn answers_n(&self, _model: &str) -> bool {
        false
    }

    fn build(
        &self,
        endpoint: Endpoint,
        body: &JsonMap,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        chat_only(endpoint, target)?;
        request::upstream(
            request::messages_body(body, stream, target, None)?,
            stream,
            target,
        )
    }

    fn build_from(
        &self,
        endpoint: Endpoint,
        body: &RequestBody,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        chat_only(endpoint, target)?;
        request::upstream(
            request::messages_body_of(body, stream, target, None)?,
            stream,
            target,
        )
    }

    fn parse(
        &self,
        _endpoint: Endpoint,
        provider: &str,
        request: &JsonMap,
        body: &[u8],
    ) -> Result<(JsonMap, Option<Usage>), GatewayError> {
        response::parse(provider, body, request::json_mode(request))
    }

    fn parse_reply(
        &self,
        endpoint: Endpoint,
        provider: &str,
        request: &RequestBody,
        body: &Bytes,
    ) -> Result<(Reply, Option<Usage>), GatewayError> {
        match response::parse_fast(body, request::json_mode_of(request)) {
            Some(r) => Ok(r),
            None => self
                .parse(endpoint, provider, request.map(), body)
                .map(|(m, u)| (Reply::Map(m), u)),
        }
    }

    fn web_search_price(&self, _model: &str) -> f64 {
        WEB_SEARCH_PRICE
    }

    fn carries_messages(&self, _model: &str, _count: bool) -> bool {
        true
    }

    fn messages_request(
        &self,
        native: &Native,
        call: crate::MessagesCall,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        match call {
            crate::MessagesCall::Create { stream } => native.request(stream, target),
            crate::MessagesCall::Count => native.count_request(target),
        }
    }

    fn error(&self, provider: &str, status: StatusCode, body: &[u8]) -> GatewayError {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let err = v.get("error").unwrap_or(&Value::Null);
        let atype = err.get("type").and_then(Value::as_str).unwrap_or("");
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "Upstream provider `{provider}` answered HTTP {}",
                    status.as_u16()
                )
            });
        error_for(status, atype, message)
    }

    fn stream_decoder(
        &self,
        _endpoint: Endpoint,
        provider: &str,
        _model: &str,
        request: &RequestBody,
    ) -> Box<dyn StreamDecoder> {
        Box::new(
            Decoder::new(provider, request::json_mode_of(request))
                .searching(request::searching_of(request)),
        )
    }
}

/// Anthropic's API serves chat only.
fn chat_only(endpoint: Endpoint, target: &Target<'_>) -> Result<(), GatewayError> {
    match endpoint {
        Endpoint::Chat => Ok(()),
        other => Err(crate::translate::unsupported_endpoint(
            target,
            "Anthropic",
            other,
        )),
    }
}

/// Anthropic's error types to OpenAI's, keeping the message.
pub(crate) fn error_for(status: StatusCode, atype: &str, message: String) -> GatewayError {
    let (status, kind, code) = match (status.as_u16(), atype) {
        (529, _) | (_, "overloaded_error") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "overloaded",
        ),
        (429, _) | (_, "rate_limit_error") => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
        ),
        (401, _) | (_, "authentication_error") => (
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
        ),
        (403, _) | (_, "permission_error") => (
            StatusCode::FORBIDDEN,
            "permission_error",
            "permission_denied",
        ),
        (404, _) | (_, "not_found_error") => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
        ),
        (413, _) | (_, "request_too_large") => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
        ),
        (504, _) | (_, "timeout_error") => {
            (StatusCode::GATEWAY_TIMEOUT, "timeout", "upstream_timeout")
        }
        (s, _) if s >= 500 => (StatusCode::BAD_GATEWAY, "api_error", "upstream_error"),
        (_, _) => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
        ),
    };
    let mut e = GatewayError::upstream(status, kind, message).with_code(code);
    e.retryable = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
    e
}

/// Anthropic's `stop_reason` as OpenAI's `finish_reason`.
pub(crate) fn finish_reason(stop: &str, json_mode: bool) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" if json_mode => "stop",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Anthropic's `usage` counts read straight from the text, without a tree
/// (the unary answer's fast path). A count that is not a whole number fails
/// the read, and the caller falls back to the tree, which reads it as 0.
#[derive(serde::Deserialize)]
pub(crate) struct Counts {
    #[serde(default)]
    pub(crate) input_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) output_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) server_tool_use: Option<ServerToolUse>,
}

/// The server tools' runs in Anthropic's usage.
#[derive(serde::Deserialize)]
pub(crate) struct ServerToolUse {
    #[serde(default)]
    pub(crate) web_search_requests: Option<u64>,
}

impl Counts {
    /// As [`usage_from`] reads the same member.
    pub(crate) fn usage(&self) -> Usage {
        let n = |c: Option<u64>| c.unwrap_or(0);
        let mut u = crate::translate::cache_usage(
            n(self.input_tokens),
            n(self.output_tokens),
            n(self.cache_read_input_tokens),
            n(self.cache_creation_input_tokens),
        );
        u.web_searches = n(self
            .server_tool_use
            .as_ref()
            .and_then(|s| s.web_search_requests));
        u
    }
}

/// Anthropic usage → OpenAI usage (prompt tokens include cache reads and writes).
pub(crate) fn usage_from(u: &Value) -> Usage {
    let mut usage = crate::translate::usage_with_cache(
        u,
        [
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ],
    );
    usage.web_searches = u
        .pointer("/server_tool_use/web_search_requests")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    usage
}
