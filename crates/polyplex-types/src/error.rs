//! The gateway's single error type.
//!
//! Every failure — a client's bad request, an upstream's refusal, a timeout —
//! becomes a [`GatewayError`] carrying the HTTP status OpenAI would use, the
//! OpenAI error `type`/`code`/`param`, whether retrying can help, and where it
//! came from. Retry and failover decisions read [`GatewayError::retryable`] and
//! nothing else; the HTTP layer writes [`GatewayError::body`].

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;
use std::fmt;
use std::time::Duration;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client's request was wrong; never retried.
    Client,
    /// An upstream provider answered with an error or failed to answer.
    Upstream,
    /// Something inside polyplex.
    Internal,
    /// The chosen provider's protocol cannot carry the request as asked (a
    /// parameter, content part or endpoint it lacks), found before anything
    /// was sent: another deployment of the plan may serve it.
    Translation,
}

#[derive(Debug, Clone)]
pub struct GatewayError {
    pub status: StatusCode,
    /// OpenAI's `error.type`, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// OpenAI's `error.code`, e.g. `model_not_found`.
    pub code: Option<String>,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    pub message: String,
    pub retryable: bool,
    pub source: ErrorSource,
    /// From an upstream's `retry-after`, or set by polyplex on 429s.
    pub retry_after: Option<Duration>,
}

impl GatewayError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
            retryable: false,
            source: ErrorSource::Client,
            retry_after: None,
        }
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// A 400 naming the field at fault.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            .with_code(if param.is_empty() {
                "invalid_request"
            } else {
                "invalid_value"
            })
            .with_param(param)
    }

    /// A 400 about the request as a whole (e.g. the body is not JSON).
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "invalid_request_error", message)
            .with_code("model_not_allowed")
    }

    /// 429 for a gateway key's own limit (`kind` is what ran out, as
    /// OpenAI names it: `requests`, `tokens`), with when to try again.
    pub fn rate_limited(
        kind: &'static str,
        message: impl Into<String>,
        retry_after: Duration,
    ) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, kind, message)
            .with_code("rate_limit_exceeded");
        e.retry_after = Some(retry_after);
        e
    }

    /// 429 `insufficient_quota`: a gateway key's budget is spent.
    pub fn quota_exceeded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message)
            .with_code("insufficient_quota")
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_code("model_not_found")
        .with_param("model")
    }

    /// 404 for `prefix/model` where nothing is named `prefix`.
    pub fn no_such_provider(model: &str, prefix: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist: no provider is named `{prefix}`."),
        )
        .with_code("model_not_found")
        .with_param("model")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message).with_code("not_found")
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("Request body is too large: the limit is {limit} bytes."),
        )
        .with_code("request_too_large")
    }

    /// The body did not arrive in full within `limit` of its head.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "The request body did not arrive within {} ms of its headers.",
                limit.as_millis()
            ),
        )
        .with_code("request_timeout")
    }

    /// 499 (nginx's "client closed request"): the client went before its
    /// request was in, for the usage record (no one reads the answer).
    pub fn client_closed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "invalid_request_error",
            message,
        )
        .with_code("client_closed_request")
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "Content-Type must be application/json.",
        )
        .with_code("unsupported_media_type")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "Method not allowed for this endpoint.",
        )
    }

    /// An upstream failed in a way retrying may fix (5xx, connection reset, 429).
    pub fn upstream(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        let retryable = status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT;
        GatewayError {
            retryable,
            source: ErrorSource::Upstream,
            ..Self::new(status, kind, message)
        }
    }

    /// The upstream could not be reached or broke the connection.
    pub fn upstream_unreachable(provider: &str, detail: impl fmt::Display) -> Self {
        Self::upstream(
            StatusCode::BAD_GATEWAY,
            "api_error",
            format!("Upstream provider `{provider}` could not be reached: {detail}"),
        )
        .with_code("upstream_unreachable")
    }

    pub fn upstream_timeout(provider: &str, after: Duration) -> Self {
        Self::upstream(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "Upstream provider `{provider}` did not answer within {} ms.",
                after.as_millis()
            ),
        )
        .with_code("upstream_timeout")
    }

    /// The upstream answered 2xx with something that is not a valid response.
    pub fn upstream_bad_response(provider: &str, detail: impl fmt::Display) -> Self {
        GatewayError {
            retryable: true,
            ..Self::upstream(
                StatusCode::BAD_GATEWAY,
                "api_error",
                format!("Upstream provider `{provider}` sent an invalid response: {detail}"),
            )
            .with_code("upstream_invalid_response")
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        GatewayError {
            source: ErrorSource::Internal,
            ..Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
        }
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        GatewayError {
            source: ErrorSource::Internal,
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
        }
    }

    /// OpenAI's error object: `{"message","type","param","code"}`.
    pub fn object(&self) -> serde_json::Value {
        json!({
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        })
    }

    /// OpenAI's error body: `{"error": {...}}`.
    pub fn body(&self) -> Bytes {
        Bytes::from(json!({ "error": self.object() }).to_string())
    }

    /// Replace every occurrence of `secret` in the message (an upstream may echo
    /// the credential it rejected).
    pub fn redact(mut self, secret: &str) -> Self {
        if secret.len() >= 4 && self.message.contains(secret) {
            self.message = self.message.replace(secret, "[redacted]");
        }
        self
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let e = GatewayError::invalid_param("temperature", "temperature must be between 0 and 2");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["param"], "temperature");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(!e.retryable);
    }

    #[test]
    fn upstream_retryability_follows_status() {
        let api = "api_error";
        assert!(GatewayError::upstream(StatusCode::INTERNAL_SERVER_ERROR, api, "x").retryable);
        assert!(GatewayError::upstream(StatusCode::TOO_MANY_REQUESTS, api, "x").retryable);
        assert!(GatewayError::upstream(StatusCode::SERVICE_UNAVAILABLE, api, "x").retryable);
        assert!(!GatewayError::upstream(StatusCode::BAD_REQUEST, api, "x").retryable);
        assert!(!GatewayError::upstream(StatusCode::NOT_FOUND, api, "x").retryable);
    }

    #[test]
    fn model_not_found_matches_openai() {
        let e = GatewayError::model_not_found("nope");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.code.as_deref(), Some("model_not_found"));
        assert!(e.message.contains("`nope`"));
    }

    #[test]
    fn redact_hides_secret() {
        let e = GatewayError::unauthorized("Incorrect API key provided: sk-abcdef123");
        let e = e.redact("sk-abcdef123");
        assert!(!e.message.contains("sk-abcdef123"));
        assert!(e.message.contains("[redacted]"));
    }
}
