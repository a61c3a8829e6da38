//! Quick validation of the common chat request, straight from its text.
//!
//! [`chat_quick`] reads a body in one pass with serde visitors that borrow
//! from the text and allocate nothing but the model's name. It accepts only
//! a narrow, common shape — text messages in the four plain roles and a
//! dozen scalar parameters, each checked as [`crate::validate::chat`]
//! checks it — and answers `None` for anything else: another member, a
//! `null`, a repeated member, a value out of range, a content array, tools,
//! routing options. `None` is not an error: the caller then builds the JSON
//! tree and runs the full validation, which accepts or names the field.
//! A body it accepts is one the full validation accepts with the same
//! result (a test checks that on thousands of generated bodies).

use crate::body::Shape;
use crate::validate::{ChatMeta, ProviderPrefs};
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Leaves the quick path (the message is never shown).
fn unusual<E: de::Error>() -> E {
    E::custom("not quick")
}

/// The members the quick path reads, as bits of a "seen" mask.
const MEMBERS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "seed",
    "user",
    "logprobs",
    "parallel_tool_calls",
];

/// A JSON string that passes a check, read and not kept (escaped strings
/// included, without allocating).
#[derive(Clone, Copy)]
struct StrWhere(fn(&str) -> bool);

const ANY_STR: StrWhere = StrWhere(|_| true);
const PLAIN_ROLE: StrWhere =
    StrWhere(|s| matches!(s, "system" | "developer" | "user" | "assistant"));

impl<'de> DeserializeSeed<'de> for StrWhere {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for StrWhere {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        if (self.0)(s) {
            Ok(())
        } else {
            Err(unusual())
        }
    }
}

/// `{"role": ..., "content": "...", "name": "..."}` and nothing else.
struct PlainMessage;

impl<'de> Deserialize<'de> for PlainMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PlainMessage;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a message")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<PlainMessage, A::Error> {
                let (mut role, mut content, mut name) = (false, false, false);
                while let Some(k) = m.next_key::<&'de str>()? {
                    let seen = match k {
                        "role" => &mut role,
                        "content" => &mut content,
                        "name" => &mut name,
                        _ => return Err(unusual()),
                    };
                    if *seen {
                        return Err(unusual());
                    }
                    *seen = true;
                    m.next_value_seed(if k == "role" { PLAIN_ROLE } else { ANY_STR })?;
                }
                if role && content {
                    Ok(PlainMessage)
                } else {
                    Err(unusual())
                }
            }
        }
        d.deserialize_map(V)
    }
}

/// A non-empty array of plain messages.
struct Messages;

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Messages;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Messages, A::Error> {
                let mut n = 0usize;
                while s.next_element::<PlainMessage>()?.is_some() {
                    n += 1;
                }
                if n == 0 {
                    return Err(unusual());
                }
                Ok(Messages)
            }
        }
        d.deserialize_seq(V)
    }
}

/// A JSON number as f64 (an integer or a decimal, as `as_f64` reads it).
struct Num(f64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<Num, E> {
                Ok(Num(x))
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<Num, E> {
                Ok(Num(x as f64))
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<Num, E> {
                Ok(Num(x as f64))
            }
        }
        d.deserialize_f64(V)
    }
}

/// A JSON integer within i64 (written without a fraction or exponent).
struct Int(i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<Int, E> {
                i64::try_from(x).map(Int).map_err(|_| unusual())
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<Int, E> {
                Ok(Int(x))
            }
        }
        d.deserialize_i64(V)
    }
}

/// `stream_options: {"include_usage": bool}` (or `{}`), nothing else.
struct StreamOptions(bool);

impl<'de> Deserialize<'de> for StreamOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StreamOptions;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("stream options")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<StreamOptions, A::Error> {
                let mut usage = None;
                while let Some(k) = m.next_key::<&'de str>()? {
                    if k != "include_usage" || usage.is_some() {
                        return Err(unusual());
                    }
                    usage = Some(m.next_value::<bool>()?);
                }
                Ok(StreamOptions(usage.unwrap_or(false)))
            }
        }
        d.deserialize_map(V)
    }
}

fn within<E: de::Error>(x: f64, min: f64, max: f64) -> Result<(), E> {
    if (min..=max).contains(&x) {
        Ok(())
    } else {
        Err(unusual())
    }
}

fn int_within<E: de::Error>(x: i64, min: i64, max: i64) -> Result<i64, E> {
    if (min..=max).contains(&x) {
        Ok(x)
    } else {
        Err(unusual())
    }
}

struct Top<'t> {
    text: &'t [u8],
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = (ChatMeta, Shape);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a chat request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut seen = 0u32;
        let mut model: Option<&'de str> = None;
        let mut messages = false;
        let (mut stream, mut options) = (None, None);
        let (mut max_tokens, mut max_completion, mut n) = (None, None, None);
        let mut user = None;
        while let Some(k) = m.next_key::<&'de str>()? {
            let bit = MEMBERS.iter().position(|x| *x == k).ok_or_else(unusual)?;
            if seen & (1 << bit) != 0 {
                return Err(unusual());
            }
            seen |= 1 << bit;
            match k {
                "model" => model = Some(m.next_value::<&'de str>()?),
                "messages" => {
                    m.next_value::<Messages>()?;
                    messages = true;
                }
                "stream" => stream = Some(m.next_value::<bool>()?),
                "stream_options" => options = Some(m.next_value::<StreamOptions>()?.0),
                "max_tokens" => {
                    max_tokens = Some(int_within(m.next_value::<Int>()?.0, 1, i64::MAX)?)
                }
                "max_completion_tokens" => {
                    max_completion = Some(int_within(m.next_value::<Int>()?.0, 1, i64::MAX)?)
                }
                "temperature" => within(m.next_value::<Num>()?.0, 0.0, 2.0)?,
                "top_p" => within(m.next_value::<Num>()?.0, 0.0, 1.0)?,
                "presence_penalty" | "frequency_penalty" => {
                    within(m.next_value::<Num>()?.0, -2.0, 2.0)?
                }
                "n" => n = Some(int_within(m.next_value::<Int>()?.0, 1, 128)?),
                "seed" => {
                    m.next_value::<Int>()?;
                }
                "user" => user = Some(m.next_value::<String>()?),
                _ => {
                    // logprobs, parallel_tool_calls
                    m.next_value::<bool>()?;
                }
            }
        }
        let model = model.filter(|s| !s.is_empty()).ok_or_else(unusual)?;
        if !messages || (options.is_some() && stream != Some(true)) {
            return Err(unusual());
        }
        let start = (model.as_ptr() as usize)
            .checked_sub(self.text.as_ptr() as usize)
            .filter(|s| s + model.len() <= self.text.len())
            .ok_or_else(unusual)?;
        let meta = ChatMeta {
            model: model.to_string(),
            stream: stream.unwrap_or(false),
            include_usage: options.unwrap_or(false),
            n: n.unwrap_or(1) as u64,
            max_tokens: max_completion.or(max_tokens).map(|x| x as u64),
            has_tools: false,
            functions: false,
            has_images: false,
            json_schema: false,
            fallback_models: Vec::new(),
            provider: ProviderPrefs::default(),
            user: crate::validate::end_user(user.as_deref(), None),
            metadata: None,
        };
        let shape = Shape {
            model: start..start + model.len(),
            stream_options: options,
            n: meta.n,
        };
        Ok((meta, shape))
    }
}

/// Validates a common chat request from its text, without building its
/// JSON tree; `None` when the body is not of the common shape (the full
/// validation then decides; see the module's text).
pub fn chat_quick(text: &[u8]) -> Option<(ChatMeta, Shape)> {
    // UTF-8 checked once for the whole text (a word at a time for ASCII),
    // not string by string as a reader of bytes does.
    let mut de = serde_json::Deserializer::from_str(std::str::from_utf8(text).ok()?);
    let out = de.deserialize_map(Top { text }).ok()?;
    de.end().ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::chat;
    use crate::JsonMap;

    /// The full validation's answer for a text, if it accepts it.
    fn full(text: &str) -> Option<ChatMeta> {
        let map: JsonMap = serde_json::from_str(text).ok()?;
        chat(&map).ok()
    }

    /// Checks the quick path against the full one; returns whether it was quick.
    fn agrees(text: &str) -> bool {
        let Some((meta, shape)) = chat_quick(text.as_bytes()) else {
            return false;
        };
        let map: JsonMap = serde_json::from_str(text).expect("quick accepted invalid JSON");
        assert_eq!(chat(&map).as_ref().ok(), Some(&meta), "{text}");
        assert_eq!(
            &text[shape.model.clone()],
            map["model"].as_str().unwrap(),
            "{text}"
        );
        let options = map
            .get("stream_options")
            .map(|o| o.get("include_usage") == Some(&serde_json::Value::Bool(true)));
        assert_eq!(shape.stream_options, options, "{text}");
        assert_eq!(shape.n, meta.n, "{text}");
        true
    }

    #[test]
    fn common_requests_are_quick() {
        for text in [
            r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello."}],"max_tokens":64,"temperature":0.2}"#,
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
            r#" {"messages": [{"content": "a \"quoted\" line\n", "role": "user", "name": "bob"}],
                "model": "openai/gpt-4o", "stream": true, "stream_options": {"include_usage": true},
                "n": 2, "seed": -3, "top_p": 1, "presence_penalty": -2, "frequency_penalty": 1.5,
                "user": "u", "logprobs": false, "parallel_tool_calls": true, "max_completion_tokens": 5} "#,
            r#"{"model":"m","messages":[{"role":"developer","content":""},{"role":"assistant","content":"x"}],"stream":true,"stream_options":{}}"#,
        ] {
            assert!(agrees(text), "not quick: {text}");
        }
    }

    #[test]
    fn anything_unusual_is_left_to_the_full_validation() {
        for text in [
            "",
            "[]",
            r#"{"model":"m"}"#,
            r#"{"model":"m","messages":[]}"#,
            r#"{"model":"","messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":null,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m\u0031","messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"model":"n"}"#,
            r#"{"model":"m","messages":[{"role":"tool","content":"hi","tool_call_id":"c"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":null}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi","role":"user"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":2.5}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":0}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":64.0}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":18446744073709551615}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"models":["a"]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"drop_params":true}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":{}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]} x"#,
        ] {
            assert!(!agrees(text), "quick: {text}");
        }
        // Not UTF-8 (the full validation names the error).
        assert!(chat_quick(
            b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}"
        )
        .is_none());
    }

    /// Thousands of bodies built from valid and invalid pieces: whenever the
    /// quick path accepts one, the full validation accepts it with the same
    /// result; and it is quick whenever every piece is of the common shape.
    #[test]
    fn the_quick_path_agrees_with_the_full_validation() {
        let members: &[(&str, &[&str])] = &[
            ("model", &[r#""gpt-4o""#, r#""""#, "null", "1", r#""a\/b""#]),
            (
                "messages",
                &[
                    r#"[{"role":"user","content":"hi"}]"#,
                    r#"[{"role":"system","content":"s"},{"role":"user","content":"q","name":"n"}]"#,
                    "[]",
                    r#"[{"role":"user"}]"#,
                    r#"[{"role":"bot","content":"x"}]"#,
                    r#"[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}]"#,
                    r#"[{"role":"user","content":"x","name":1}]"#,
                    r#"[{"role":"user","content":5}]"#,
                    r#"{"role":"user","content":"x"}"#,
                ],
            ),
            ("stream", &["true", "false", "null", r#""yes""#]),
            (
                "stream_options",
                &[
                    r#"{"include_usage":true}"#,
                    r#"{"include_usage":false}"#,
                    "{}",
                    r#"{"include_usage":null}"#,
                    r#"{"x":1}"#,
                    "true",
                ],
            ),
            ("max_tokens", &["1", "64", "0", "-1", "1.5", "64.0", "null"]),
            ("max_completion_tokens", &["7", "0", r#""7""#]),
            (
                "temperature",
                &["0", "0.2", "2", "2.0001", "-0.1", r#""1""#],
            ),
            ("top_p", &["1", "0.5", "1.5"]),
            ("presence_penalty", &["-2", "2", "2.5"]),
            ("frequency_penalty", &["0", "-3"]),
            ("n", &["1", "128", "129", "0", "2.0"]),
            ("seed", &["42", "-42", "9223372036854775808", "1.5"]),
            ("user", &[r#""u""#, "1"]),
            ("logprobs", &["true", "false", "1"]),
            ("top_logprobs", &["2", "0"]),
            ("parallel_tool_calls", &["true", r#""no""#]),
            ("stop", &[r#""x""#, r#"["a","b"]"#]),
            (
                "tools",
                &[r#"[{"type":"function","function":{"name":"f"}}]"#],
            ),
            ("response_format", &[r#"{"type":"json_object"}"#]),
            ("provider", &[r#"{"order":["a"]}"#]),
            ("some_future_param", &["{}"]),
        ];
        // A small fixed generator: the same bodies every run.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut quick, mut accepted) = (0, 0);
        for _ in 0..20_000 {
            let mut parts = Vec::new();
            for (k, values) in members {
                // model and messages are usually there, the quick path's other
                // members sometimes, the rest now and then.
                let p = match *k {
                    "model" | "messages" => 18,
                    k if MEMBERS.contains(&k) => 6,
                    _ => 1,
                };
                if next(20) < p {
                    let v = if next(3) == 0 {
                        values[next(values.len())]
                    } else {
                        values[0]
                    };
                    parts.push(format!("\"{k}\":{v}"));
                }
            }
            if next(20) == 0 && !parts.is_empty() {
                let dup = parts[next(parts.len())].clone();
                parts.push(dup);
            }
            for i in (1..parts.len()).rev() {
                parts.swap(i, next(i + 1));
            }
            let text = format!("{{{}}}", parts.join(","));
            let ok = full(&text).is_some();
            if agrees(&text) {
                quick += 1;
            }
            accepted += usize::from(ok);
        }
        // The generator makes enough of both kinds to mean something.
        assert!(quick > 1_000, "{quick} quick");
        assert!(accepted > quick, "{accepted} accepted, {quick} quick");
    }
}
