//! A non-streamed answer in OpenAI's shape, either built by a translating
//! adapter or kept as the OpenAI-protocol upstream sent it.
//!
//! Parsing a whole completion into a `serde_json::Value` tree and encoding
//! it again was a sixth of the gateway's instructions per passthrough
//! request. The gateway only needs `usage` (to meter it and add
//! `usage.cost`) and `model`, so [`RawReply`] keeps every top-level member
//! as its raw JSON text, validated but not decoded, and re-emits them as
//! they came with only `usage` rewritten.

use polyplex_types::JsonMap;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;

/// An OpenAI-shaped non-streamed answer.
#[derive(Debug)]
pub enum Reply {
    /// Built (translated) by the gateway.
    Map(JsonMap),
    /// An OpenAI-protocol upstream's own answer, kept as raw members.
    Raw(RawReply),
}

impl Reply {
    /// Whether the answer names a (non-null) model.
    pub fn has_model(&self) -> bool {
        match self {
            Reply::Map(m) => m.get("model").is_some_and(|v| !v.is_null()),
            Reply::Raw(r) => r.get("model").is_some_and(|v| v.get() != "null"),
        }
    }

    /// The decoded tree, for the rare paths that need to edit more than
    /// `usage` (a missing model or missing usage to estimate).
    pub fn into_map(self) -> JsonMap {
        match self {
            Reply::Map(m) => m,
            Reply::Raw(r) => r.into_map(),
        }
    }

    /// The JSON body to send to the client.
    pub fn to_vec(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Reply::Map(m) => serde_json::to_vec(m),
            Reply::Raw(r) => Ok(r.to_vec()),
        }
    }
}

/// A JSON object's top-level members, each value kept as raw JSON text.
#[derive(Debug, Default)]
pub struct RawReply {
    members: Vec<(String, Box<RawValue>)>,
}

impl RawReply {
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| &**v)
    }

    /// Whether `key` holds a JSON array.
    pub fn is_array(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| v.get().starts_with('['))
    }

    /// Replaces (or appends) one member.
    pub fn set(&mut self, key: &str, value: &Value) -> Result<(), serde_json::Error> {
        self.set_raw(key, serde_json::value::to_raw_value(value)?);
        Ok(())
    }

    /// Replaces (or appends) one member with JSON text already validated.
    pub fn set_raw(&mut self, key: &str, raw: Box<RawValue>) {
        match self.members.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = raw,
            None => self.members.push((key.to_string(), raw)),
        }
    }

    pub fn into_map(self) -> JsonMap {
        self.members
            .into_iter()
            .map(|(k, v)| {
                let value = serde_json::from_str(v.get()).unwrap_or(Value::Null);
                (k, value)
            })
            .collect()
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let len: usize = self
            .members
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = Vec::with_capacity(len + 2);
        out.push(b'{');
        for (i, (k, v)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // A key re-encoded as a JSON string (escapes included).
            if serde_json::to_writer(&mut out, k).is_err() {
                out.extend_from_slice(b"\"\"");
            }
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
        }
        out.push(b'}');
        out
    }
}

impl<'de> Deserialize<'de> for RawReply {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawReply;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawReply, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push((k, v));
                }
                Ok(RawReply { members })
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BODY: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi \"there\" \u00e9"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5},"x_\"odd":1}"#;

    #[test]
    fn round_trips_byte_for_byte_when_untouched() {
        let r = RawReply::parse(BODY.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(r.to_vec()).unwrap(), BODY);
        assert!(r.is_array("choices"));
        assert!(!r.is_array("usage"));
        assert!(Reply::Raw(r).has_model());
    }

    #[test]
    fn rewrites_one_member_in_place_and_appends_new_ones() {
        let mut r = RawReply::parse(BODY.as_bytes()).unwrap();
        r.set("usage", &json!({"prompt_tokens": 3, "cost": 0.5}))
            .unwrap();
        r.set("extra", &json!(true)).unwrap();
        let v: Value = serde_json::from_slice(&r.to_vec()).unwrap();
        let full: Value = serde_json::from_str(BODY).unwrap();
        assert_eq!(v["usage"], json!({"prompt_tokens": 3, "cost": 0.5}));
        assert_eq!(v["extra"], json!(true));
        assert_eq!(v["choices"], full["choices"]);
        assert_eq!(v["x_\"odd"], json!(1));
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys[..6],
            ["id", "object", "created", "model", "choices", "usage"]
        );
    }

    #[test]
    fn into_map_decodes_everything() {
        let m = RawReply::parse(BODY.as_bytes()).unwrap().into_map();
        let full: Value = serde_json::from_str(BODY).unwrap();
        assert_eq!(Value::Object(m), full);
    }

    #[test]
    fn refuses_what_is_not_an_object() {
        assert!(RawReply::parse(b"[1,2]").is_err());
        assert!(RawReply::parse(b"{\"a\":").is_err());
        assert!(RawReply::parse(b"not json").is_err());
    }
}
