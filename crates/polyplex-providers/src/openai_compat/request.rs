//! The upstream request: the client's body, serialized once with the model
//! replaced, routing fields left out and usage asked for on streams.

use crate::translate::{foreign_members, strip_foreign};
use crate::{join_url, Endpoint, Target, UpstreamRequest};
use bytes::Bytes;
use polyplex_types::validate::{metadata_is_ours, GATEWAY_FIELDS};
use polyplex_types::{GatewayError, JsonMap, RequestBody};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

/// Serializes the body with the upstream's changes, without cloning it.
struct Outgoing<'a> {
    body: &'a JsonMap,
    model: &'a str,
    /// Ask for `stream_options.include_usage: true`.
    want_usage: bool,
    /// Leave `metadata` out: the gateway's alone ([`metadata_is_ours`]).
    drop_metadata: bool,
}

struct StreamOptions<'a>(Option<&'a JsonMap>);

impl Serialize for StreamOptions<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(o) = self.0 {
            for (k, v) in o.iter().filter(|(k, _)| *k != "include_usage") {
                m.serialize_entry(k, v)?;
            }
        }
        m.serialize_entry("include_usage", &true)?;
        m.end()
    }
}

impl Serialize for Outgoing<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        let mut wrote_options = false;
        for (k, v) in self.body {
            match k.as_str() {
                "model" => m.serialize_entry(k, self.model)?,
                "stream_options" if self.want_usage => {
                    m.serialize_entry(k, &StreamOptions(v.as_object()))?;
                    wrote_options = true;
                }
                k2 if GATEWAY_FIELDS.contains(&k2) => {}
                "metadata" if self.drop_metadata => {}
                _ => m.serialize_entry(k, v)?,
            }
        }
        if self.want_usage && !wrote_options {
            m.serialize_entry("stream_options", &StreamOptions(None))?;
        }
        m.end()
    }
}

fn path(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "chat/completions",
        Endpoint::Completions => "completions",
        Endpoint::Embeddings => "embeddings",
    }
}

fn wants_usage(endpoint: Endpoint, stream: bool, target: &Target<'_>) -> bool {
    stream && target.stream_usage && endpoint != Endpoint::Embeddings
}

/// What `stream_options` [`as_sent`] puts first when usage must be asked for.
const ASK_USAGE: &[u8] = br#""stream_options":{"include_usage":true},"#;

/// True if `s` can be written inside a JSON string as it is.
fn plain_json_string(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// The client's JSON text, changed in place where it must be, when it
/// already says what [`build`] would send but for these: usage asked for
/// on a stream (`stream_options` put first when absent) and, for a
/// quick-validated body (whose model's place in the text is known), the
/// model as the upstream names it. `None` when the tree must be encoded
/// instead: a gateway-only member (or `metadata`, [`metadata_is_ours`]), `stream_options` without
/// `include_usage: true`, another model in a body validated from its tree.
fn as_sent(
    endpoint: Endpoint,
    body: &RequestBody,
    stream: bool,
    target: &Target<'_>,
) -> Option<Bytes> {
    let text = body.text();
    let mut model_at = None;
    let options = match body.shape() {
        Some(shape) => {
            if body.model() != Some(target.model) {
                if !plain_json_string(target.model) {
                    return None;
                }
                model_at = Some(shape.model_range());
            }
            shape.stream_options
        }
        None => {
            let map = body.map();
            if map.get("model").and_then(Value::as_str) != Some(target.model)
                || GATEWAY_FIELDS.iter().any(|f| map.contains_key(*f))
                || metadata_is_ours(map)
            {
                return None;
            }
            map.get("stream_options")
                .map(|o| o.get("include_usage") == Some(&Value::Bool(true)))
        }
    };
    let ask_usage = match options {
        _ if !wants_usage(endpoint, stream, target) => false,
        None => true,
        Some(true) => false,
        Some(false) => return None,
    };
    if !ask_usage && model_at.is_none() {
        return Some(text.clone());
    }
    let mut out = Vec::with_capacity(text.len() + ASK_USAGE.len() + target.model.len());
    let mut from = 0;
    if ask_usage {
        let open = text.iter().position(|b| !b.is_ascii_whitespace())?;
        if text[open] != b'{' {
            return None;
        }
        out.extend_from_slice(&text[..=open]);
        out.extend_from_slice(ASK_USAGE);
        from = open + 1;
    }
    if let Some(at) = model_at {
        out.extend_from_slice(&text[from..at.start]);
        out.extend_from_slice(target.model.as_bytes());
        from = at.end;
    }
    out.extend_from_slice(&text[from..]);
    Some(Bytes::from(out))
}

/// True for OpenAI's own API and Azure OpenAI, which refuse members they
/// do not know (`Unrecognized request argument supplied: cache_control`)
/// and cache prompts on their own, and for Mistral's and Groq's APIs, whose
/// schemas forbid extra members too (`extra_forbidden` for a
/// `reasoning_content` sent back): what [`foreign_members`] names is taken
/// out for them. Other OpenAI-protocol providers get the body as sent:
/// some take `cache_control` (OpenRouter, for Claude), some want
/// `reasoning_content` back (Kimi), Google's takes `extra_content`.
fn refuses_foreign_members(target: &Target<'_>) -> bool {
    is_openais_own(target)
        || crate::host_of(target.base_url)
            .is_some_and(|h| matches!(h.as_str(), "api.mistral.ai" | "api.groq.com"))
}

/// True for OpenAI's own API and Azure OpenAI, whose reasoning models take
/// `max_completion_tokens` only (every model there takes it).
pub(crate) fn is_openais_own(target: &Target<'_>) -> bool {
    crate::host_of(target.base_url).is_some_and(|h| {
        h == "api.openai.com"
            || h.ends_with(".openai.azure.com")
            || h.ends_with(".cognitiveservices.azure.com")
    })
}

/// What `target` refuses of `body` as unknown ([`foreign_members`]):
/// nothing unless it is one of [`refuses_foreign_members`]'.
fn foreign_for(target: &Target<'_>, body: &JsonMap) -> Vec<String> {
    if refuses_foreign_members(target) {
        foreign_members(body)
    } else {
        Vec::new()
    }
}

/// [`build`], forwarding the client's bytes when they need no change.
pub(crate) fn build_from(
    endpoint: Endpoint,
    body: &RequestBody,
    stream: bool,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    // (A quick-validated body has no such members.)
    let foreign = match body.shape() {
        None => foreign_for(target, body.map()),
        Some(_) => Vec::new(),
    };
    if !foreign.is_empty() {
        return encode(endpoint, body.map(), stream, target, foreign);
    }
    match as_sent(endpoint, body, stream, target) {
        Some(bytes) => Ok(UpstreamRequest {
            url: join_url(target.base_url, path(endpoint)),
            headers: crate::headers(target, stream)?,
            body: bytes,
            dropped: Vec::new(),
        }),
        None => encode(endpoint, body.map(), stream, target, foreign),
    }
}

pub(crate) fn build(
    endpoint: Endpoint,
    body: &JsonMap,
    stream: bool,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    encode(endpoint, body, stream, target, foreign_for(target, body))
}

/// The body encoded for the upstream, without what `dropped` names
/// (the [`foreign_for`] of it, already found).
fn encode(
    endpoint: Endpoint,
    body: &JsonMap,
    stream: bool,
    target: &Target<'_>,
    dropped: Vec<String>,
) -> Result<UpstreamRequest, GatewayError> {
    let want_usage = wants_usage(endpoint, stream, target);
    let stripped;
    let body = if dropped.is_empty() {
        body
    } else {
        let mut b = body.clone();
        strip_foreign(&mut b);
        stripped = b;
        &stripped
    };
    let out = Outgoing {
        body,
        model: target.model,
        want_usage,
        drop_metadata: metadata_is_ours(body),
    };
    let bytes = serde_json::to_vec(&out).map_err(|e| {
        GatewayError::internal(format!("could not encode the upstream request: {e}"))
    })?;

    Ok(UpstreamRequest {
        url: join_url(target.base_url, path(endpoint)),
        headers: crate::headers(target, stream)?,
        body: Bytes::from(bytes),
        dropped,
    })
}
