//! The upstream request: the client's body, serialized once with the model
//! replaced, routing fields left out and usage asked for on streams.

use crate::{join_url, Endpoint, Target, UpstreamRequest};
use bytes::Bytes;
use polyplex_types::validate::GATEWAY_FIELDS;
use polyplex_types::{GatewayError, JsonMap, RequestBody};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

/// Serializes the body with the upstream's changes, without cloning it.
struct Outgoing<'a> {
    body: &'a JsonMap,
    model: &'a str,
    /// Ask for `stream_options.include_usage: true`.
    want_usage: bool,
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

/// The client's JSON text when it already says what [`build`] would send:
/// the model as the upstream names it, no gateway-only member, and usage
/// asked for on a stream (or `stream_options` absent, then put first).
/// A quick-validated body answers from its [`Shape`], without its tree.
fn as_sent(
    endpoint: Endpoint,
    body: &RequestBody,
    stream: bool,
    target: &Target<'_>,
) -> Option<Bytes> {
    let text = body.text();
    let options = match body.shape() {
        Some(shape) => {
            if body.model() != Some(target.model) {
                return None;
            }
            shape.stream_options
        }
        None => {
            let map = body.map();
            if map.get("model").and_then(Value::as_str) != Some(target.model)
                || GATEWAY_FIELDS.iter().any(|f| map.contains_key(*f))
            {
                return None;
            }
            map.get("stream_options")
                .map(|o| o.get("include_usage") == Some(&Value::Bool(true)))
        }
    };
    if !wants_usage(endpoint, stream, target) {
        return Some(text.clone());
    }
    match options {
        None => {
            let open = text.iter().position(|b| !b.is_ascii_whitespace())?;
            if text[open] != b'{' {
                return None;
            }
            let mut out = Vec::with_capacity(text.len() + ASK_USAGE.len());
            out.extend_from_slice(&text[..=open]);
            out.extend_from_slice(ASK_USAGE);
            out.extend_from_slice(&text[open + 1..]);
            Some(Bytes::from(out))
        }
        Some(true) => Some(text.clone()),
        Some(false) => None,
    }
}

/// [`build`], forwarding the client's bytes when they need no change.
pub(crate) fn build_from(
    endpoint: Endpoint,
    body: &RequestBody,
    stream: bool,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    match as_sent(endpoint, body, stream, target) {
        Some(bytes) => Ok(UpstreamRequest {
            url: join_url(target.base_url, path(endpoint)),
            headers: crate::headers(target, stream)?,
            body: bytes,
            dropped: Vec::new(),
        }),
        None => build(endpoint, body.map(), stream, target),
    }
}

pub(crate) fn build(
    endpoint: Endpoint,
    body: &JsonMap,
    stream: bool,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    let want_usage = wants_usage(endpoint, stream, target);
    let out = Outgoing {
        body,
        model: target.model,
        want_usage,
    };
    let bytes = serde_json::to_vec(&out).map_err(|e| {
        GatewayError::internal(format!("could not encode the upstream request: {e}"))
    })?;

    Ok(UpstreamRequest {
        url: join_url(target.base_url, path(endpoint)),
        headers: crate::headers(target, stream)?,
        body: Bytes::from(bytes),
        dropped: Vec::new(),
    })
}
