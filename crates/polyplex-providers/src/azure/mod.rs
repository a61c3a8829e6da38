//! Azure OpenAI: OpenAI's wire format at deployment URLs.
//!
//! `{base}/openai/deployments/{deployment}/chat/completions?api-version=V`
//! (also `/completions`, `/embeddings`), the key in the `api-key` header. The
//! model a client names (`azure/<deployment>`) is the deployment. Bodies,
//! responses, streams and errors are OpenAI's, so this adapter changes only
//! the URL and delegates the rest to [`OpenAiCompat`].
//!
//! A base URL that ends in `/openai/v1` (what the OpenAI SDK is given for
//! Azure's v1 API) is the v1 API: OpenAI's own paths under it
//! (`{base}/chat/completions`), the deployment in the body's `model`, and no
//! dated `api-version` (only `preview` or `latest` when configured). A base
//! URL that already ends in `/openai` gets the deployment paths without a
//! second `/openai`.

use crate::openai_compat::OpenAiCompat;
use crate::{join_url, Endpoint, Protocol, StreamDecoder, Target, UpstreamRequest};
use http::StatusCode;
use polyplex_types::{GatewayError, JsonMap, RequestBody, Usage};

/// The GA data-plane API version used when the config names none.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

#[derive(Debug, Default, Clone, Copy)]
pub struct Azure;

/// The URL of `path` (`chat/completions`, `images/generations`, ...) at the
/// target's deployment (its model), with the API version.
pub fn deployment_url(target: &Target<'_>, path: &str) -> Result<String, GatewayError> {
    if !valid_deployment(target.model) {
        return Err(GatewayError::invalid_param(
            "model",
            format!("`{}` is not a valid Azure deployment name.", target.model),
        ));
    }
    let base = target.base_url.trim_end_matches('/');
    if is_v1(base) {
        let url = join_url(base, path);
        return Ok(match target.api_version {
            Some(v @ ("preview" | "latest")) => format!("{url}?api-version={v}"),
            _ => url,
        });
    }
    let version = target.api_version.unwrap_or(DEFAULT_API_VERSION);
    let under = if ends_with_segment(base, "openai") {
        ""
    } else {
        "openai/"
    };
    Ok(format!(
        "{}?api-version={version}",
        join_url(base, &format!("{under}deployments/{}/{path}", target.model))
    ))
}

/// Whether a base URL (no trailing slash) is Azure's v1 API: its path ends
/// in `/openai/v1`.
fn is_v1(base: &str) -> bool {
    base.strip_suffix("/v1")
        .is_some_and(|rest| ends_with_segment(rest, "openai"))
}

/// Whether the URL's last path segment is `segment` (case-insensitively).
fn ends_with_segment(url: &str, segment: &str) -> bool {
    url.len() > segment.len()
        && url.as_bytes()[url.len() - segment.len() - 1] == b'/'
        && url[url.len() - segment.len()..].eq_ignore_ascii_case(segment)
}

/// The endpoint's path under a deployment (or under the v1 API).
fn path(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "chat/completions",
        Endpoint::Completions => "completions",
        Endpoint::Embeddings => "embeddings",
    }
}

fn valid_deployment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Protocol for Azure {
    fn name(&self) -> &'static str {
        "azure"
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
        let url = deployment_url(target, path(endpoint))?;
        let mut req = OpenAiCompat.build(endpoint, body, stream, target)?;
        req.url = url;
        Ok(req)
    }

    fn build_from(
        &self,
        endpoint: Endpoint,
        body: &RequestBody,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        let url = deployment_url(target, path(endpoint))?;
        let mut req = OpenAiCompat.build_from(endpoint, body, stream, target)?;
        req.url = url;
        Ok(req)
    }

    fn parse(
        &self,
        endpoint: Endpoint,
        provider: &str,
        request: &JsonMap,
        body: &[u8],
    ) -> Result<(JsonMap, Option<Usage>), GatewayError> {
        OpenAiCompat.parse(endpoint, provider, request, body)
    }

    fn error(&self, provider: &str, status: StatusCode, body: &[u8]) -> GatewayError {
        OpenAiCompat.error(provider, status, body)
    }

    fn stream_decoder(
        &self,
        endpoint: Endpoint,
        provider: &str,
        model: &str,
        request: &RequestBody,
    ) -> Box<dyn StreamDecoder> {
        OpenAiCompat.stream_decoder(endpoint, provider, model, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuthStyle;
    use http::HeaderName;
    use serde_json::json;

    #[test]
    fn deployment_urls_and_api_key_header() {
        let auth = AuthStyle {
            header: HeaderName::from_static("api-key"),
            prefix: String::new(),
        };
        let mut t = Target {
            provider: "azure",
            base_url: "https://myres.openai.azure.com/",
            api_key: Some("azure-key"),
            credential: None,
            auth: &auth,
            model: "gpt4o-prod",
            extra_headers: &[],
            stream_usage: true,
            default_max_tokens: None,
            drop_params: false,
            api_version: None,
            sigv4: None,
        };
        let body = json!({"model": "azure/gpt4o-prod", "messages": [{"role": "user", "content": "hi"}], "seed": 1});
        let body = body.as_object().unwrap();
        let req = Azure.build(Endpoint::Chat, body, false, &t).unwrap();
        assert_eq!(req.url, "https://myres.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21");
        assert_eq!(req.headers["api-key"], "azure-key");
        assert!(req.headers.get("authorization").is_none());
        let sent: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(sent["seed"], 1);
        t.api_version = Some("2025-01-01-preview");
        let req = Azure.build(Endpoint::Embeddings, body, false, &t).unwrap();
        assert!(req
            .url
            .ends_with("/openai/deployments/gpt4o-prod/embeddings?api-version=2025-01-01-preview"));
        // The base URL as the portal shows it with `/openai`: no second `/openai`.
        t.base_url = "https://myres.openai.azure.com/openai/";
        t.api_version = None;
        let req = Azure.build(Endpoint::Chat, body, false, &t).unwrap();
        assert_eq!(req.url, "https://myres.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21");
        // The v1 API: OpenAI's paths, the deployment in the body, no dated version.
        t.base_url = "https://myres.openai.azure.com/openai/v1/";
        t.api_version = Some("2024-10-21");
        let req = Azure
            .build_from(
                Endpoint::Chat,
                &RequestBody::from_map(body.clone()),
                true,
                &t,
            )
            .unwrap();
        assert_eq!(
            req.url,
            "https://myres.openai.azure.com/openai/v1/chat/completions"
        );
        assert_eq!(req.headers["api-key"], "azure-key");
        let sent: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(sent["model"], "gpt4o-prod");
        t.api_version = Some("preview");
        let req = Azure.build(Endpoint::Embeddings, body, false, &t).unwrap();
        assert_eq!(
            req.url,
            "https://myres.openai.azure.com/openai/v1/embeddings?api-version=preview"
        );
        // `/v1` alone is not Azure's v1 API.
        t.base_url = "https://proxy.example/v1";
        t.api_version = None;
        let req = Azure.build(Endpoint::Chat, body, false, &t).unwrap();
        assert_eq!(req.url, "https://proxy.example/v1/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21");
        t.base_url = "https://myres.openai.azure.com/";
        t.model = "bad/name?x";
        assert_eq!(
            Azure
                .build(Endpoint::Chat, body, false, &t)
                .unwrap_err()
                .param
                .as_deref(),
            Some("model")
        );
    }

    #[test]
    fn azure_errors_and_content_filter_pass_through() {
        let e = Azure.error("azure", StatusCode::UNAUTHORIZED, br#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint."}}"#);
        assert_eq!(e.status.as_u16(), 401);
        assert!(e.message.starts_with("Access denied"));
        let reply = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"finish_reason":"content_filter","message":{"role":"assistant","content":null},"content_filter_results":{"hate":{"filtered":true,"severity":"high"}}}],"prompt_filter_results":[],"usage":{"prompt_tokens":5,"completion_tokens":0,"total_tokens":5}}"#;
        let (out, usage) = Azure
            .parse(Endpoint::Chat, "azure", &JsonMap::new(), reply)
            .unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
        assert!(out.contains_key("prompt_filter_results"));
        assert_eq!(usage.unwrap().prompt_tokens, 5);
    }
}
