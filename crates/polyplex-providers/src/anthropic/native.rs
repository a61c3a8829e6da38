//! A client's own Messages request, for an upstream that speaks Anthropic's
//! protocol: sent as the client wrote it (only `model` becomes the
//! deployment's), with the client's `anthropic-version` and
//! `anthropic-beta` headers, so every field of the API reaches it —
//! thinking budgets, `cache_control` on any block, server tools, beta
//! features — and its answer can go back as it came.

use super::VERSION;
use crate::{join_url, Target, UpstreamRequest};
use bytes::Bytes;
use http::header::HeaderValue;
use polyplex_types::GatewayError;

/// The client's request and the headers of Anthropic's it sent.
#[derive(Debug, Clone)]
pub struct Native {
    /// The request's JSON text as the client sent it.
    body: Bytes,
    version: Option<HeaderValue>,
    beta: Option<HeaderValue>,
}

const BETA: &str = "anthropic-beta";
const VERSION_HEADER: &str = "anthropic-version";

impl Native {
    /// `body` must be a JSON object (the client's request, validated).
    pub fn new(body: Bytes, headers: &http::HeaderMap) -> Native {
        Native {
            body,
            version: headers.get(VERSION_HEADER).cloned(),
            beta: headers.get(BETA).cloned(),
        }
    }

    /// The upstream request to Anthropic's API for `target`: the client's
    /// body with `target.model` for its model; the provider's credential
    /// and configured headers; the client's API version (else polyplex's)
    /// and beta features.
    pub fn request(
        &self,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        self.to_anthropic("v1/messages", stream, target)
    }

    /// [`Native::request`] for a `count_tokens` request.
    pub fn count_request(&self, target: &Target<'_>) -> Result<UpstreamRequest, GatewayError> {
        self.to_anthropic("v1/messages/count_tokens", false, target)
    }

    fn to_anthropic(
        &self,
        path: &str,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        let mut raw = self.raw()?;
        set(&mut raw, "model", target.model)?;
        let mut headers = self.headers(stream, target)?;
        headers.insert(
            VERSION_HEADER,
            self.version
                .clone()
                .unwrap_or(HeaderValue::from_static(VERSION)),
        );
        Ok(UpstreamRequest {
            url: join_url(target.base_url, path),
            headers,
            body: raw.to_bytes(),
            dropped: Vec::new(),
        })
    }

    /// The body for an API that names the model in its URL and the
    /// Messages API's version in the body (Claude on Vertex AI, on
    /// Bedrock): the client's body without `model` (nor `stream`, when
    /// the URL says that too), with `anthropic_version`.
    pub fn body_for(&self, version: &str, keep_stream: bool) -> Result<Bytes, GatewayError> {
        Ok(self.raw_for(version, keep_stream)?.to_bytes())
    }

    /// [`Native::body_for`] for an API that takes beta features in the
    /// body (`anthropic_beta`, Bedrock's): the client's `anthropic-beta`
    /// header's, unless its body names its own.
    pub fn body_with_betas(&self, version: &str, keep_stream: bool) -> Result<Bytes, GatewayError> {
        let mut raw = self.raw_for(version, keep_stream)?;
        let betas: Vec<&str> = self
            .beta
            .as_ref()
            .and_then(|b| b.to_str().ok())
            .map(|b| {
                b.split(',')
                    .map(str::trim)
                    .filter(|b| !b.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if !betas.is_empty() && raw.get("anthropic_beta").is_none() {
            raw.set("anthropic_beta", &serde_json::json!(betas))
                .map_err(|e| GatewayError::internal(format!("messages: {e}")))?;
        }
        Ok(raw.to_bytes())
    }

    /// A `count_tokens` body for an API that takes the model and the
    /// Messages API's version in the body (Claude's count on Vertex AI):
    /// the client's body with `model` and `anthropic_version`.
    pub fn count_body(&self, version: &str, model: &str) -> Result<Bytes, GatewayError> {
        let mut raw = self.raw_for(version, false)?;
        set(&mut raw, "model", model)?;
        Ok(raw.to_bytes())
    }

    fn raw_for(&self, version: &str, keep_stream: bool) -> Result<crate::RawReply, GatewayError> {
        let mut raw = self.raw()?;
        raw.remove("model");
        if !keep_stream {
            raw.remove("stream");
        }
        set(&mut raw, "anthropic_version", version)?;
        Ok(raw)
    }

    /// The provider's credential and configured headers, and the client's
    /// beta features after any those name.
    pub fn headers(
        &self,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<http::HeaderMap, GatewayError> {
        let mut headers = crate::headers(target, stream)?;
        if let Some(beta) = &self.beta {
            let joined = match headers.get(BETA).map(HeaderValue::as_bytes) {
                Some(configured) if !configured.is_empty() => {
                    let mut v = configured.to_vec();
                    v.push(b',');
                    v.extend_from_slice(beta.as_bytes());
                    HeaderValue::from_bytes(&v).unwrap_or_else(|_| beta.clone())
                }
                _ => beta.clone(),
            };
            headers.insert(BETA, joined);
        }
        Ok(headers)
    }

    fn raw(&self) -> Result<crate::RawReply, GatewayError> {
        crate::RawReply::parse(self.body.clone())
            .map_err(|e| GatewayError::internal(format!("messages: {e}")))
    }
}

fn set(raw: &mut crate::RawReply, key: &str, value: &str) -> Result<(), GatewayError> {
    raw.set(key, &serde_json::Value::String(value.to_string()))
        .map_err(|e| GatewayError::internal(format!("messages: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuthStyle;
    use http::HeaderName;

    fn target<'a>(auth: &'a AuthStyle, extra: &'a [(HeaderName, HeaderValue)]) -> Target<'a> {
        Target {
            provider: "anthropic",
            base_url: "https://api.anthropic.com",
            api_key: Some("sk-ant-secret"),
            credential: None,
            auth,
            model: "claude-sonnet-4-5-20250929",
            extra_headers: extra,
            stream_usage: false,
            default_max_tokens: None,
            drop_params: false,
            api_version: None,
            sigv4: None,
        }
    }

    #[test]
    fn the_clients_request_goes_as_written_with_the_deployments_model() {
        let auth = AuthStyle {
            header: HeaderName::from_static("x-api-key"),
            prefix: String::new(),
        };
        let body = r#"{"model":"smart","max_tokens":64,"thinking":{"type":"enabled","budget_tokens":2048},"container":"c1","messages":[{"role":"user","content":"hi"}]}"#;
        let mut h = http::HeaderMap::new();
        h.insert(BETA, HeaderValue::from_static("context-1m-2025-08-07"));
        let n = Native::new(Bytes::from_static(body.as_bytes()), &h);
        let extra = [(
            HeaderName::from_static(BETA),
            HeaderValue::from_static("configured-beta"),
        )];
        let req = n.request(true, &target(&auth, &extra)).unwrap();
        assert_eq!(req.url, "https://api.anthropic.com/v1/messages");
        let sent: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(sent["model"], "claude-sonnet-4-5-20250929");
        assert_eq!(sent["thinking"]["budget_tokens"], 2048);
        assert_eq!(sent["container"], "c1");
        // Members keep their order: only the model's text changed.
        assert_eq!(
            std::str::from_utf8(&req.body).unwrap(),
            body.replace("\"smart\"", "\"claude-sonnet-4-5-20250929\"")
        );
        assert_eq!(req.headers["x-api-key"], "sk-ant-secret");
        assert_eq!(req.headers[VERSION_HEADER], VERSION);
        assert_eq!(req.headers[BETA], "configured-beta,context-1m-2025-08-07");
        assert_eq!(req.headers["accept"], "text/event-stream");

        // The client's API version, and its beta alone without a configured one.
        h.insert(VERSION_HEADER, HeaderValue::from_static("2024-01-01"));
        let n = Native::new(Bytes::from_static(body.as_bytes()), &h);
        let req = n.request(false, &target(&auth, &[])).unwrap();
        assert_eq!(req.headers[VERSION_HEADER], "2024-01-01");
        assert_eq!(req.headers[BETA], "context-1m-2025-08-07");
        let count = n.count_request(&target(&auth, &[])).unwrap();
        assert_eq!(
            count.url,
            "https://api.anthropic.com/v1/messages/count_tokens"
        );
        assert_eq!(count.headers["accept"], "application/json");
    }

    #[test]
    fn a_body_for_an_api_that_names_the_model_in_its_url() {
        let body = r#"{"model":"claude","stream":true,"max_tokens":8,"messages":[]}"#;
        let n = Native::new(Bytes::from_static(body.as_bytes()), &http::HeaderMap::new());
        assert_eq!(
            &n.body_for("vertex-2023-10-16", true).unwrap()[..],
            br#"{"stream":true,"max_tokens":8,"messages":[],"anthropic_version":"vertex-2023-10-16"}"#
        );
        assert_eq!(
            &n.body_for("bedrock-2023-05-31", false).unwrap()[..],
            br#"{"max_tokens":8,"messages":[],"anthropic_version":"bedrock-2023-05-31"}"#
        );
        // Bedrock takes the beta features in the body.
        let mut h = http::HeaderMap::new();
        h.insert(BETA, HeaderValue::from_static("a-1, b-2"));
        let n = Native::new(Bytes::from_static(body.as_bytes()), &h);
        assert_eq!(
            &n.body_with_betas("bedrock-2023-05-31", false).unwrap()[..],
            br#"{"max_tokens":8,"messages":[],"anthropic_version":"bedrock-2023-05-31","anthropic_beta":["a-1","b-2"]}"#
        );
    }
}
