//! The upstream request: the client's body, serialized once with the model
//! replaced, routing fields left out and usage asked for on streams.

use crate::{join_url, Endpoint, Target, UpstreamRequest};
use bytes::Bytes;
use polyplex_types::validate::GATEWAY_FIELDS;
use polyplex_types::{GatewayError, JsonMap};
use serde::ser::{Serialize, SerializeMap, Serializer};

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

pub(crate) fn build(
    endpoint: Endpoint,
    body: &JsonMap,
    stream: bool,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    let path = match endpoint {
        Endpoint::Chat => "chat/completions",
        Endpoint::Completions => "completions",
        Endpoint::Embeddings => "embeddings",
    };
    let want_usage = stream && target.stream_usage && endpoint != Endpoint::Embeddings;
    let out = Outgoing {
        body,
        model: target.model,
        want_usage,
    };
    let bytes = serde_json::to_vec(&out).map_err(|e| {
        GatewayError::internal(format!("could not encode the upstream request: {e}"))
    })?;

    Ok(UpstreamRequest {
        url: join_url(target.base_url, path),
        headers: crate::headers(target, stream)?,
        body: Bytes::from(bytes),
        dropped: Vec::new(),
    })
}
