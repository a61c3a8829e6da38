//! Google Vertex AI: Gemini models (`publishers/google`, the
//! `generateContent` API) and Anthropic's Claude models
//! (`publishers/anthropic`, the Messages API through `rawPredict`), chosen
//! by the model's name (`claude-*` is Anthropic's).
//!
//! The base URL is the project and location prefix,
//! `https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}`
//! (`https://aiplatform.googleapis.com/...` for the `global` location), or
//! `https://aiplatform.googleapis.com/v1` for express mode with an API key;
//! the adapter appends `publishers/{publisher}/models/{model}:{method}`.
//! Credentials are an OAuth access token (`Authorization: Bearer`), which
//! the gateway gets from Google's application default credentials, or an
//! express-mode API key (`x-goog-api-key`).
//!
//! Bodies, answers, streams and errors are those of the Gemini and
//! Anthropic adapters: a Claude body leaves `model` out and carries
//! `anthropic_version: "vertex-2023-10-16"`. Embeddings go through the
//! model's `predict` method (`instances` of `content`, `outputDimensionality`).

#[cfg(test)]
mod tests;

use crate::anthropic::{self, Anthropic};
use crate::gemini::{self, Gemini};
use crate::translate::{embedding_input, embedding_list, unsupported_endpoint};
use crate::{join_url, Endpoint, Protocol, Reply, StreamDecoder, Target, UpstreamRequest};
use bytes::Bytes;
use http::StatusCode;
use polyplex_types::{GatewayError, JsonMap, RequestBody, Usage};
use serde_json::Value;

/// The Messages API version Vertex AI takes in the body.
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// The OAuth scope Vertex AI's access tokens need.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

#[derive(Debug, Default, Clone, Copy)]
pub struct Vertex;

/// True for the models Vertex AI serves through Anthropic's API.
pub fn is_claude(model: &str) -> bool {
    model.starts_with("claude")
}

/// The base URL for a project and location (`global`: no regional host).
pub fn base_url_for(project: &str, location: &str) -> String {
    let host = if location == "global" {
        "aiplatform.googleapis.com".to_string()
    } else {
        format!("{location}-aiplatform.googleapis.com")
    };
    format!("https://{host}/v1/projects/{project}/locations/{location}")
}

/// The base URL of express mode (an API key, no project).
pub const EXPRESS_BASE_URL: &str = "https://aiplatform.googleapis.com/v1";

fn model_path(target: &Target<'_>, publisher: &str, method: &str) -> Result<String, GatewayError> {
    checked_model(target)?;
    Ok(join_url(
        target.base_url,
        &format!("publishers/{publisher}/models/{}:{method}", target.model),
    ))
}

/// The target's model, if it is a Vertex AI model name: it goes into a
/// URL path (names come from clients through `vertex/<model>`).
fn checked_model(target: &Target<'_>) -> Result<(), GatewayError> {
    if target.model.is_empty()
        || !target
            .model
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '@'))
    {
        return Err(GatewayError::invalid_param(
            "model",
            format!("'{}' is not a Vertex AI model name.", target.model),
        ));
    }
    Ok(())
}

/// A chat body as written for one publisher: its bytes and the parameters
/// dropped on the way.
type Written = Result<(Vec<u8>, Vec<String>), GatewayError>;

/// The chat request: Claude's Messages body (`claude`) to Anthropic's
/// publisher path, else Gemini's (`gemini`) to Google's.
fn build_chat(
    claude: impl FnOnce() -> Written,
    gemini: impl FnOnce() -> Written,
    stream: bool,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    let (bytes, dropped, url) = if is_claude(target.model) {
        let (bytes, dropped) = claude()?;
        let method = if stream {
            "streamRawPredict"
        } else {
            "rawPredict"
        };
        (bytes, dropped, model_path(target, "anthropic", method)?)
    } else {
        let (bytes, dropped) = gemini()?;
        (
            bytes,
            dropped,
            model_path(target, "google", crate::gemini::generate_method(stream))?,
        )
    };
    Ok(UpstreamRequest {
        url,
        headers: crate::headers(target, stream)?,
        body: Bytes::from(bytes),
        dropped,
    })
}

/// `predict` for text embeddings: one instance per input text.
fn build_embed(body: &JsonMap, target: &Target<'_>) -> Result<UpstreamRequest, GatewayError> {
    let input = embedding_input(body, "Vertex AI", target)?;
    let dropped = input.dropped;
    let instances: Vec<Value> = input
        .texts
        .into_iter()
        .map(|t| serde_json::json!({"content": t}))
        .collect();
    let mut out = serde_json::json!({"instances": instances});
    if let Some(d) = input.dimensions {
        out["parameters"] = serde_json::json!({"outputDimensionality": d});
    }
    Ok(UpstreamRequest {
        url: model_path(target, "google", "predict")?,
        headers: crate::headers(target, false)?,
        body: Bytes::from(out.to_string()),
        dropped,
    })
}

fn parse_embed(
    provider: &str,
    request: &JsonMap,
    body: &[u8],
) -> Result<(JsonMap, Option<Usage>), GatewayError> {
    let v = crate::translate::reply_json(provider, body)?;
    let predictions = v
        .get("predictions")
        .and_then(Value::as_array)
        .ok_or_else(|| GatewayError::upstream_bad_response(provider, "no `predictions` array"))?;
    let mut tokens = 0;
    let vectors: Vec<Vec<f64>> = predictions
        .iter()
        .map(|p| {
            tokens += p
                .pointer("/embeddings/statistics/token_count")
                .and_then(Value::as_f64)
                .unwrap_or(0.0) as u64;
            p.pointer("/embeddings/values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default()
        })
        .collect();
    let usage = (tokens > 0).then(|| Usage {
        prompt_tokens: tokens,
        ..Usage::default()
    });
    Ok((embedding_list(&vectors, "", request, usage.as_ref()), usage))
}

/// Whether an answer is Anthropic's (a `message`) rather than Gemini's.
fn is_message(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", default, borrow)]
        kind: Option<&'a str>,
    }
    serde_json::from_slice::<Kind<'_>>(body)
        .ok()
        .and_then(|k| k.kind)
        .is_some_and(|k| k == "message" || k == "error")
}

impl Protocol for Vertex {
    fn carries_generate(&self, model: &str) -> bool {
        !is_claude(model)
    }

    /// Gemini's own request, at Google's publisher path for the model.
    fn generate_request(
        &self,
        body: Bytes,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        Ok(UpstreamRequest {
            url: model_path(target, "google", crate::gemini::generate_method(stream))?,
            headers: crate::headers(target, stream)?,
            body: crate::gemini::without_model(body)?,
            dropped: Vec::new(),
        })
    }

    fn generate_count_request(
        &self,
        body: &JsonMap,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        Ok(UpstreamRequest {
            url: model_path(target, "google", "countTokens")?,
            headers: crate::headers(target, false)?,
            body: crate::gemini::count_body(body, target.model, false)?,
            dropped: Vec::new(),
        })
    }

    fn name(&self) -> &'static str {
        "vertex"
    }

    /// Gemini's `candidateCount`; Claude's one at a time.
    fn answers_n(&self, model: &str) -> bool {
        !is_claude(model)
    }

    fn build(
        &self,
        endpoint: Endpoint,
        body: &JsonMap,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        match endpoint {
            Endpoint::Chat => build_chat(
                || anthropic::request::messages_body(body, stream, target, Some(ANTHROPIC_VERSION)),
                || gemini::chat_body(body, target),
                stream,
                target,
            ),
            Endpoint::Embeddings if !is_claude(target.model) => build_embed(body, target),
            other => Err(unsupported_endpoint(target, "Vertex AI", other)),
        }
    }

    /// Claude's request written from a quick-validated body's text, as the
    /// Anthropic adapter writes it (no tree); Gemini's and embeddings from
    /// the tree.
    fn build_from(
        &self,
        endpoint: Endpoint,
        body: &RequestBody,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        match endpoint {
            Endpoint::Chat => build_chat(
                || {
                    anthropic::request::messages_body_of(
                        body,
                        stream,
                        target,
                        Some(ANTHROPIC_VERSION),
                    )
                },
                || gemini::chat_body(body.map(), target),
                stream,
                target,
            ),
            _ => self.build(endpoint, body.map(), stream, target),
        }
    }

    fn parse(
        &self,
        endpoint: Endpoint,
        provider: &str,
        request: &JsonMap,
        body: &[u8],
    ) -> Result<(JsonMap, Option<Usage>), GatewayError> {
        if endpoint == Endpoint::Embeddings {
            parse_embed(provider, request, body)
        } else if is_message(body) {
            Anthropic.parse(endpoint, provider, request, body)
        } else {
            Gemini.parse(endpoint, provider, request, body)
        }
    }

    fn parse_reply(
        &self,
        endpoint: Endpoint,
        provider: &str,
        request: &RequestBody,
        body: &Bytes,
    ) -> Result<(Reply, Option<Usage>), GatewayError> {
        if endpoint == Endpoint::Embeddings {
            parse_embed(provider, request.map(), body).map(|(m, u)| (Reply::Map(m), u))
        } else if is_message(body) {
            Anthropic.parse_reply(endpoint, provider, request, body)
        } else {
            Gemini.parse_reply(endpoint, provider, request, body)
        }
    }

    fn error(&self, provider: &str, status: StatusCode, body: &[u8]) -> GatewayError {
        // Anthropic's own error shape from rawPredict, else Google's.
        let anthropic_shape = serde_json::from_slice::<Value>(body)
            .ok()
            .is_some_and(|v| v.get("type").and_then(Value::as_str) == Some("error"));
        if anthropic_shape {
            Anthropic.error(provider, status, body)
        } else {
            Gemini.error(provider, status, body)
        }
    }

    /// Claude's Messages requests go through `rawPredict` as they are
    /// (`model` in the URL, `anthropic_version` in the body).
    fn carries_messages(&self, model: &str, _count: bool) -> bool {
        is_claude(model)
    }

    fn messages_request(
        &self,
        native: &anthropic::Native,
        call: crate::MessagesCall,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        let crate::MessagesCall::Create { stream } = call else {
            // Claude's count on Vertex AI: one endpoint, the model in the body.
            checked_model(target)?;
            return Ok(UpstreamRequest {
                url: join_url(
                    target.base_url,
                    "publishers/anthropic/models/count-tokens:rawPredict",
                ),
                headers: native.headers(false, target)?,
                body: native.count_body(ANTHROPIC_VERSION, target.model)?,
                dropped: Vec::new(),
            });
        };
        let method = if stream {
            "streamRawPredict"
        } else {
            "rawPredict"
        };
        Ok(UpstreamRequest {
            url: model_path(target, "anthropic", method)?,
            headers: native.headers(stream, target)?,
            body: native.body_for(ANTHROPIC_VERSION, true)?,
            dropped: Vec::new(),
        })
    }

    fn web_search_price(&self, model: &str) -> f64 {
        if is_claude(model) {
            Anthropic.web_search_price(model)
        } else {
            Gemini.web_search_price(model)
        }
    }

    fn stream_decoder(
        &self,
        endpoint: Endpoint,
        provider: &str,
        model: &str,
        request: &RequestBody,
    ) -> Box<dyn StreamDecoder> {
        if is_claude(model) {
            Anthropic.stream_decoder(endpoint, provider, model, request)
        } else {
            Gemini.stream_decoder(endpoint, provider, model, request)
        }
    }
}
