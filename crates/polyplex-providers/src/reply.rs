//! A non-streamed answer in OpenAI's shape, either built by a translating
//! adapter or kept as the OpenAI-protocol upstream sent it.
//!
//! Parsing a whole completion into a `serde_json::Value` tree and encoding
//! it again was a sixth of the gateway's instructions per passthrough
//! request. The gateway only needs `usage` (to meter it and add
//! `usage.cost`) and `model`, so [`RawReply`] keeps the upstream's bytes and
//! where each top-level member lies in them (validated, not decoded). An
//! answer left as it came is sent as those same bytes; an edited one is
//! rebuilt from the untouched members' text and the new ones.

use bytes::Bytes;
use polyplex_types::JsonMap;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;
use std::ops::Range;

/// An OpenAI-shaped answer (or stream chunk) as a JSON object.
#[derive(Debug, Clone)]
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
            Reply::Raw(r) => r.get("model").is_some_and(|v| v != "null"),
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
    pub fn to_bytes(&self) -> Result<Bytes, serde_json::Error> {
        match self {
            Reply::Map(m) => serde_json::to_vec(m).map(Bytes::from),
            Reply::Raw(r) => Ok(r.to_bytes()),
        }
    }
}

/// Equal when they encode the same JSON value (test assertions on stream
/// items).
impl PartialEq for Reply {
    fn eq(&self, other: &Self) -> bool {
        let value = |r: &Reply| {
            r.to_bytes()
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        };
        value(self) == value(other)
    }
}

/// A JSON object as the upstream sent it, with the place of each top-level
/// member.
#[derive(Debug, Default, Clone)]
pub struct RawReply {
    body: Bytes,
    members: Vec<Member>,
    /// A member was replaced or added since parsing.
    edited: bool,
}

#[derive(Debug, Clone)]
struct Member {
    key: Key,
    value: Text,
}

#[derive(Debug, Clone)]
enum Key {
    /// The key's characters in `body` (it had no escapes).
    At(Range<usize>),
    /// The decoded key (it had escapes, or was set later).
    Decoded(String),
}

#[derive(Debug, Clone)]
enum Text {
    /// Raw JSON text in `body`.
    At(Range<usize>),
    /// Raw JSON text set later.
    New(Box<RawValue>),
    /// JSON text spliced from valid parts (see [`RawReply::append_to_object`]).
    Spliced(String),
}

impl RawReply {
    pub fn parse(body: Bytes) -> Result<Self, serde_json::Error> {
        let members = {
            let text: &[u8] = &body;
            let base = text.as_ptr() as usize;
            let at = |s: &str| {
                let from = s.as_ptr() as usize - base;
                from..from + s.len()
            };
            // UTF-8 checked once for the whole text, not string by string
            // (and again for each member's raw text) as a reader of bytes
            // does; a text that is not UTF-8 gets the byte reader's error.
            let found = match std::str::from_utf8(text) {
                Ok(s) => members(&mut serde_json::Deserializer::from_str(s))?,
                Err(_) => members(&mut serde_json::Deserializer::from_slice(text))?,
            };
            found
                .into_iter()
                .map(|(k, v)| Member {
                    key: match k {
                        KeyText::Borrowed(k) => Key::At(at(k)),
                        KeyText::Owned(k) => Key::Decoded(k),
                    },
                    value: Text::At(at(v.get())),
                })
                .collect()
        };
        Ok(RawReply {
            body,
            members,
            edited: false,
        })
    }

    fn key<'a>(&'a self, k: &'a Key) -> &'a [u8] {
        match k {
            Key::At(r) => &self.body[r.clone()],
            Key::Decoded(s) => s.as_bytes(),
        }
    }

    fn text<'a>(&'a self, t: &'a Text) -> &'a [u8] {
        match t {
            Text::At(r) => &self.body[r.clone()],
            Text::New(v) => v.get().as_bytes(),
            Text::Spliced(s) => s.as_bytes(),
        }
    }

    /// Where the member `key` is.
    fn position(&self, key: &str) -> Option<usize> {
        self.members
            .iter()
            .position(|m| self.key(&m.key) == key.as_bytes())
    }

    fn find(&self, key: &str) -> Option<&Member> {
        self.position(key).map(|i| &self.members[i])
    }

    /// A member's raw JSON text.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key)
            .and_then(|m| std::str::from_utf8(self.text(&m.value)).ok())
    }

    /// Whether `key` holds a JSON array.
    pub fn is_array(&self, key: &str) -> bool {
        self.find(key)
            .is_some_and(|m| self.text(&m.value).first() == Some(&b'['))
    }

    /// Replaces (or appends) one member.
    pub fn set(&mut self, key: &str, value: &Value) -> Result<(), serde_json::Error> {
        self.set_raw(key, serde_json::value::to_raw_value(value)?);
        Ok(())
    }

    /// Removes one member, if there is one.
    pub fn remove(&mut self, key: &str) {
        if let Some(i) = self.position(key) {
            self.members.remove(i);
            self.edited = true;
        }
    }

    /// Replaces (or appends) one member with JSON text already validated.
    pub fn set_raw(&mut self, key: &str, raw: Box<RawValue>) {
        self.edited = true;
        match self.position(key) {
            Some(i) => self.members[i].value = Text::New(raw),
            None => self.members.push(Member {
                key: Key::Decoded(key.to_string()),
                value: Text::New(raw),
            }),
        }
    }

    /// Appends `"name":value` as the last member of the object held by
    /// `key`, splicing text instead of decoding and encoding it. Returns
    /// false, changing nothing, when `key` does not hold an object or its
    /// text mentions `"name"` anywhere (the caller then edits a decoded
    /// copy). `name` must need no JSON escaping.
    pub fn append_to_object<T: serde::Serialize + ?Sized>(
        &mut self,
        key: &str,
        name: &str,
        value: &T,
    ) -> bool {
        let Some(at) = self.position(key) else {
            return false;
        };
        let text = self.text(&self.members[at].value).trim_ascii();
        let Some(inner) = text.strip_prefix(b"{").and_then(|t| t.strip_suffix(b"}")) else {
            return false;
        };
        let quoted = name.len() + 2;
        let mentions = inner
            .windows(quoted)
            .any(|w| w[0] == b'"' && w[quoted - 1] == b'"' && &w[1..quoted - 1] == name.as_bytes());
        if mentions {
            return false;
        }
        let mut out = Vec::with_capacity(text.len() + name.len() + 24);
        out.push(b'{');
        out.extend_from_slice(inner);
        if !inner.trim_ascii().is_empty() {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        if serde_json::to_writer(&mut out, value).is_err() {
            return false;
        }
        out.push(b'}');
        // Valid UTF-8: the object's text was, and serde_json writes UTF-8.
        let Ok(spliced) = String::from_utf8(out) else {
            return false;
        };
        self.members[at].value = Text::Spliced(spliced);
        self.edited = true;
        true
    }

    pub fn into_map(self) -> JsonMap {
        self.members
            .iter()
            .map(|m| {
                let key = String::from_utf8_lossy(self.key(&m.key)).into_owned();
                let value = serde_json::from_slice(self.text(&m.value)).unwrap_or(Value::Null);
                (key, value)
            })
            .collect()
    }

    /// The JSON text: the upstream's own bytes when nothing was edited.
    pub fn to_bytes(&self) -> Bytes {
        if !self.edited {
            return self.body.clone();
        }
        let len: usize = self
            .members
            .iter()
            .map(|m| self.key(&m.key).len() + self.text(&m.value).len() + 4)
            .sum();
        let mut out = Vec::with_capacity(len + 2);
        out.push(b'{');
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match &m.key {
                // Had no escapes: its characters go between quotes as they were.
                Key::At(r) => {
                    out.push(b'"');
                    out.extend_from_slice(&self.body[r.clone()]);
                    out.push(b'"');
                }
                Key::Decoded(k) => {
                    if serde_json::to_writer(&mut out, k).is_err() {
                        out.extend_from_slice(b"\"\"");
                    }
                }
            }
            out.push(b':');
            out.extend_from_slice(self.text(&m.value));
        }
        out.push(b'}');
        Bytes::from(out)
    }
}

/// Writes a JSON object member by member and keeps where each one lies, so
/// the result is a [`RawReply`] without parsing it again.
pub struct RawWriter {
    out: Vec<u8>,
    members: Vec<Member>,
}

impl Default for RawWriter {
    fn default() -> Self {
        RawWriter {
            out: Vec::with_capacity(512),
            members: Vec::with_capacity(8),
        }
    }
}

impl RawWriter {
    /// Appends `"key":value`. `key` must need no JSON escaping.
    pub fn member<T: serde::Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), serde_json::Error> {
        debug_assert!(!key.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
        self.out
            .push(if self.members.is_empty() { b'{' } else { b',' });
        self.out.push(b'"');
        let k = self.out.len()..self.out.len() + key.len();
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        let from = self.out.len();
        serde_json::to_writer(&mut self.out, value)?;
        self.members.push(Member {
            key: Key::At(k),
            value: Text::At(from..self.out.len()),
        });
        Ok(())
    }

    pub fn finish(mut self) -> RawReply {
        if self.members.is_empty() {
            self.out.push(b'{');
        }
        self.out.push(b'}');
        RawReply {
            body: Bytes::from(self.out),
            members: self.members,
            edited: false,
        }
    }
}

/// An object key: borrowed from the input when it has no escapes.
enum KeyText<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl<'de> Deserialize<'de> for KeyText<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<KeyText<'de>, E> {
                Ok(KeyText::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyText<'de>, E> {
                Ok(KeyText::Owned(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<KeyText<'de>, E> {
                Ok(KeyText::Owned(v))
            }
        }
        d.deserialize_str(V)
    }
}

/// The whole text as one object's members (nothing after it but space).
fn members<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
) -> Result<Vec<(KeyText<'de>, &'de RawValue)>, serde_json::Error> {
    let found = Members::deserialize(&mut *de)?;
    de.end()?;
    Ok(found.0)
}

/// A JSON object's top-level members, borrowed from the input.
struct Members<'de>(Vec<(KeyText<'de>, &'de RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(k) = map.next_key::<KeyText<'de>>()? {
                    members.push((k, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
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
        let r = RawReply::parse(Bytes::from_static(BODY.as_bytes())).unwrap();
        assert_eq!(r.to_bytes(), BODY.as_bytes());
        assert!(r.is_array("choices"));
        assert!(!r.is_array("usage"));
        assert!(Reply::Raw(r).has_model());
    }

    #[test]
    fn rewrites_one_member_in_place_and_appends_new_ones() {
        let mut r = RawReply::parse(Bytes::from_static(BODY.as_bytes())).unwrap();
        r.set("usage", &json!({"prompt_tokens": 3, "cost": 0.5}))
            .unwrap();
        r.set("extra", &json!(true)).unwrap();
        let v: Value = serde_json::from_slice(&r.to_bytes()).unwrap();
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
    fn keeps_the_upstreams_bytes_even_with_whitespace_until_edited() {
        let body = "{ \"id\" : \"x\",\n  \"model\": null, \"usage\": {\"prompt_tokens\": 1} }";
        let mut r = RawReply::parse(Bytes::from(body)).unwrap();
        assert_eq!(r.to_bytes(), body.as_bytes());
        assert_eq!(r.get("usage"), Some("{\"prompt_tokens\": 1}"));
        assert_eq!(r.get("id"), Some("\"x\""));
        assert!(!Reply::Raw(RawReply::parse(Bytes::from(body)).unwrap()).has_model());
        r.set_raw(
            "usage",
            RawValue::from_string("{\"prompt_tokens\":1,\"cost\":0}".into()).unwrap(),
        );
        assert_eq!(
            std::str::from_utf8(&r.to_bytes()).unwrap(),
            r#"{"id":"x","model":null,"usage":{"prompt_tokens":1,"cost":0}}"#
        );
    }

    #[test]
    fn a_written_object_is_the_reply_parsing_it_would_give() {
        let mut w = RawWriter::default();
        w.member("id", "x\"y").unwrap();
        w.member("n", &3).unwrap();
        w.member("usage", &json!({"a": [1, 2]})).unwrap();
        let written = w.finish();
        let text = written.to_bytes();
        assert_eq!(&text[..], br#"{"id":"x\"y","n":3,"usage":{"a":[1,2]}}"#);
        let parsed = RawReply::parse(text.clone()).unwrap();
        for k in ["id", "n", "usage", "none"] {
            assert_eq!(written.get(k), parsed.get(k), "{k}");
        }
        assert_eq!(RawWriter::default().finish().to_bytes(), &b"{}"[..]);
    }

    #[test]
    fn escaped_keys_are_found_by_their_decoded_text() {
        let r = RawReply::parse(Bytes::from_static(BODY.as_bytes())).unwrap();
        assert_eq!(r.get("x_\"odd"), Some("1"));
        assert_eq!(r.get("x_\\\"odd"), None);
    }

    #[test]
    fn into_map_decodes_everything() {
        let m = RawReply::parse(Bytes::from_static(BODY.as_bytes()))
            .unwrap()
            .into_map();
        let full: Value = serde_json::from_str(BODY).unwrap();
        assert_eq!(Value::Object(m), full);
    }

    #[test]
    fn refuses_what_is_not_an_object() {
        for bad in [
            &b"[1,2]"[..],
            b"{\"a\":",
            b"not json",
            b"{} trailing",
            // Not UTF-8: in a string, in a key, and outside both.
            b"{\"a\":\"\xff\"}",
            b"{\"\xc3\":1}",
            b"{\"a\":1}\xff",
        ] {
            assert!(RawReply::parse(Bytes::copy_from_slice(bad)).is_err());
        }
    }
}

#[cfg(test)]
mod splice_tests {
    use super::*;

    fn spliced(usage: &str, cost: f64) -> Option<Value> {
        let body = format!("{{\"id\":\"x\",\"usage\":{usage}}}");
        let mut raw = RawReply::parse(Bytes::from(body)).unwrap();
        if !raw.append_to_object("usage", "cost", &cost) {
            return None;
        }
        let text = raw.to_bytes();
        let v: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(v["id"], "x");
        Some(v["usage"].clone())
    }

    #[test]
    fn a_member_is_spliced_into_an_object() {
        let usage = r#"{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"prompt_tokens_details":{"cached_tokens":0}}"#;
        let mut want: Value = serde_json::from_str(usage).unwrap();
        want["cost"] = serde_json::json!(0.5);
        assert_eq!(spliced(usage, 0.5), Some(want));
        // Whitespace inside, and the empty object.
        assert_eq!(spliced("{ }", 0.0), Some(serde_json::json!({"cost": 0.0})));
        assert_eq!(
            spliced("{\"a\":1 }", 1e-7),
            Some(serde_json::json!({"a": 1, "cost": 1e-7}))
        );
        // Already has the member (or mentions it), or not an object: untouched.
        assert_eq!(spliced(r#"{"cost":1}"#, 0.5), None);
        assert_eq!(spliced(r#"{"x":{"cost":1}}"#, 0.5), None);
        assert_eq!(spliced("null", 0.5), None);
        assert_eq!(spliced("[1]", 0.5), None);
        // Space around the member's value.
        let mut raw =
            RawReply::parse(Bytes::from_static(b"{\"usage\" :  { \"a\":1 }\n }")).unwrap();
        assert!(raw.append_to_object("usage", "cost", &2));
        assert_eq!(&raw.to_bytes()[..], b"{\"usage\":{ \"a\":1 ,\"cost\":2}}");
        // A member that is not there.
        let mut raw = RawReply::parse(Bytes::from_static(b"{\"a\":{}}")).unwrap();
        assert!(!raw.append_to_object("usage", "cost", &1));
        assert_eq!(&raw.to_bytes()[..], b"{\"a\":{}}");
    }
}
