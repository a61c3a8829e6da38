//! A client's request body: its JSON text as sent, and the JSON tree built
//! from it only when something needs the tree.
//!
//! Most chat requests are validated straight from their text
//! ([`crate::validate::chat_quick`]) and forwarded to an OpenAI-protocol
//! upstream as the same bytes; building a `serde_json::Map` for them (every
//! key and string allocated, every object an `IndexMap`) was the largest
//! single cost of the gateway's own request path. The tree is still there
//! for whatever reads it — a translating adapter, a prompt token count — and
//! is built once, on the first read.

use crate::JsonMap;
use bytes::Bytes;
use std::ops::Range;
use std::sync::OnceLock;

/// What the quick validation learned about a body, for the adapters that
/// would otherwise read it from the tree. A body with this has no gateway
/// member (`models`, `provider`, `drop_params`).
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// Where `model`'s string is in the text (it has no escapes).
    pub(crate) model: Range<usize>,
    /// `stream_options.include_usage` (false when absent) if
    /// `stream_options` is present.
    pub stream_options: Option<bool>,
    /// `n` (1 when absent).
    pub n: u64,
}

impl Shape {
    /// Where `model`'s string (its characters, without the quotes) is in
    /// the text.
    pub fn model_range(&self) -> Range<usize> {
        self.model.clone()
    }
}

/// A request body: the text, and its JSON object on demand.
#[derive(Debug)]
pub struct RequestBody {
    text: Bytes,
    map: OnceLock<JsonMap>,
    shape: Option<Shape>,
}

impl RequestBody {
    /// A body whose tree the caller already has.
    pub fn parsed(text: Bytes, map: JsonMap) -> RequestBody {
        RequestBody {
            text,
            map: OnceLock::from(map),
            shape: None,
        }
    }

    /// A body validated from its text: the tree is built on first use.
    pub fn quick(text: Bytes, shape: Shape) -> RequestBody {
        RequestBody {
            text,
            map: OnceLock::new(),
            shape: Some(shape),
        }
    }

    /// A body for a tree built in code (tests, the gateway's own calls):
    /// its text is the tree serialized.
    pub fn from_map(map: JsonMap) -> RequestBody {
        let text = serde_json::to_vec(&map).unwrap_or_default();
        RequestBody::parsed(Bytes::from(text), map)
    }

    /// The JSON text as the client sent it.
    pub fn text(&self) -> &Bytes {
        &self.text
    }

    /// How many choices a chat request asks for (`n`, 1 when absent), read
    /// without building the tree of a quick-validated body.
    pub fn n(&self) -> u64 {
        match &self.shape {
            Some(s) => s.n,
            None => crate::lookup(self.map(), "n")
                .and_then(crate::integer)
                .map_or(1, |n| n.max(0) as u64),
        }
    }

    /// The JSON object, built from the text the first time it is asked for.
    pub fn map(&self) -> &JsonMap {
        self.map.get_or_init(|| {
            // The text passed a stricter parse already (quick bodies only:
            // the others are built with their map), so this cannot fail.
            serde_json::from_slice(&self.text).unwrap_or_else(|e| {
                debug_assert!(false, "a quick-validated body did not parse: {e}");
                JsonMap::new()
            })
        })
    }

    /// What quick validation learned, if the body took that path.
    pub fn shape(&self) -> Option<&Shape> {
        self.shape.as_ref()
    }

    /// The `model` member if it is a string.
    pub fn model(&self) -> Option<&str> {
        match &self.shape {
            Some(s) => std::str::from_utf8(&self.text[s.model.clone()]).ok(),
            None => self.map().get("model").and_then(serde_json::Value::as_str),
        }
    }

    /// A boolean member, false when absent or not a boolean. Quick bodies
    /// have no gateway member, so asking for one does not build the tree.
    pub fn flag(&self, key: &str) -> bool {
        if self.shape.is_some() && crate::validate::GATEWAY_FIELDS.contains(&key) {
            return false;
        }
        crate::lookup(self.map(), key)
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }

    /// Whether the tree has been built (tests of the quick path).
    pub fn has_tree(&self) -> bool {
        self.map.get().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` read from the tree (a body the quick path did not shape) as
    /// OpenAI's integer fields take it: `2.0` is 2, absent is 1.
    #[test]
    fn n_from_the_tree_takes_a_whole_float() {
        let n = |v: serde_json::Value| {
            RequestBody::from_map(v.as_object().cloned().unwrap_or_default()).n()
        };
        assert_eq!(n(serde_json::json!({"n": 2.0})), 2);
        assert_eq!(n(serde_json::json!({"n": 3})), 3);
        assert_eq!(n(serde_json::json!({})), 1);
    }
}
