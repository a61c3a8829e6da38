//! Token usage in OpenAI's shape, read from and written to JSON.

use crate::JsonMap;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Part of `prompt_tokens` served from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Part of `prompt_tokens` written to the provider's prompt cache
    /// (Anthropic and Bedrock bill it above the input price); in OpenAI's
    /// shape as `prompt_tokens_details.cache_write_tokens` (OpenRouter's
    /// name), written only when not 0.
    pub cache_write_tokens: u64,
    /// Part of `completion_tokens` spent on reasoning.
    pub reasoning_tokens: u64,
    /// Web searches the provider ran for the answer (Anthropic's web search
    /// tool, Gemini's Google Search grounding), billed per search; in
    /// OpenAI's shape as `server_tool_use.web_search_requests` (Anthropic's
    /// name), written only when not 0.
    pub web_searches: u64,
    /// True when polyplex counted the tokens because the upstream did not say.
    pub estimated: bool,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// Two requests' usage added up (estimated if either was).
    pub fn plus(&self, other: &Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens + other.prompt_tokens,
            completion_tokens: self.completion_tokens + other.completion_tokens,
            cached_tokens: self.cached_tokens + other.cached_tokens,
            cache_write_tokens: self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens: self.reasoning_tokens + other.reasoning_tokens,
            web_searches: self.web_searches + other.web_searches,
            estimated: self.estimated || other.estimated,
        }
    }

    /// Reads an OpenAI `usage` object; `None` if absent or not an object.
    pub fn from_json(v: Option<&Value>) -> Option<Usage> {
        let o = v?.as_object()?;
        let n = |o: &JsonMap, k: &str| crate::lookup(o, k).and_then(Value::as_u64).unwrap_or(0);
        Some(Usage {
            prompt_tokens: n(o, "prompt_tokens"),
            completion_tokens: n(o, "completion_tokens"),
            cached_tokens: detail(crate::lookup(o, "prompt_tokens_details"), "cached_tokens"),
            cache_write_tokens: detail(
                crate::lookup(o, "prompt_tokens_details"),
                "cache_write_tokens",
            ),
            reasoning_tokens: detail(
                crate::lookup(o, "completion_tokens_details"),
                "reasoning_tokens",
            ),
            web_searches: detail(crate::lookup(o, "server_tool_use"), "web_search_requests"),
            estimated: false,
        })
    }

    /// [`Usage::from_json`] of JSON text, read without building a tree when
    /// it has the usual shape (what an answer's `usage` member holds).
    pub fn from_json_text(text: &str) -> Option<Usage> {
        let object = text.trim_start().starts_with('{');
        match serde_json::from_str::<Wire>(text).ok().filter(|_| object) {
            Some(w) => Some(Usage {
                prompt_tokens: w.prompt_tokens,
                completion_tokens: w.completion_tokens,
                cached_tokens: detail(w.prompt_tokens_details.as_ref(), "cached_tokens"),
                cache_write_tokens: detail(w.prompt_tokens_details.as_ref(), "cache_write_tokens"),
                reasoning_tokens: detail(w.completion_tokens_details.as_ref(), "reasoning_tokens"),
                web_searches: detail(w.server_tool_use.as_ref(), "web_search_requests"),
                estimated: false,
            }),
            // Not an object, a detail that is not one, a member given twice:
            // the tree decides, as it always did.
            None => Usage::from_json(serde_json::from_str::<Value>(text).ok().as_ref()),
        }
    }

    /// A fresh OpenAI `usage` object (used when the upstream sent none).
    pub fn to_json(&self) -> Value {
        let mut prompt = json!({"cached_tokens": self.cached_tokens});
        if self.cache_write_tokens > 0 {
            prompt["cache_write_tokens"] = json!(self.cache_write_tokens);
        }
        let mut u = json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total(),
            "prompt_tokens_details": prompt,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        });
        if self.web_searches > 0 {
            u["server_tool_use"] = json!({"web_search_requests": self.web_searches});
        }
        u
    }
}

/// [`Usage::to_json`] written straight to a serializer, members in the same
/// order.
pub struct UsageJson<'a>(pub &'a Usage);

impl serde::Serialize for UsageJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        /// A `*_details` object: its count, and a second one when not 0.
        struct One<'k>(&'k str, u64, Option<(&'k str, u64)>);
        impl serde::Serialize for One<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let second = self.2.filter(|(_, n)| *n > 0);
                let mut m = s.serialize_map(Some(1 + usize::from(second.is_some())))?;
                m.serialize_entry(self.0, &self.1)?;
                if let Some((k, n)) = second {
                    m.serialize_entry(k, &n)?;
                }
                m.end()
            }
        }
        let u = self.0;
        let mut m = s.serialize_map(Some(5 + usize::from(u.web_searches > 0)))?;
        m.serialize_entry("prompt_tokens", &u.prompt_tokens)?;
        m.serialize_entry("completion_tokens", &u.completion_tokens)?;
        m.serialize_entry("total_tokens", &u.total())?;
        m.serialize_entry(
            "prompt_tokens_details",
            &One(
                "cached_tokens",
                u.cached_tokens,
                Some(("cache_write_tokens", u.cache_write_tokens)),
            ),
        )?;
        m.serialize_entry(
            "completion_tokens_details",
            &One("reasoning_tokens", u.reasoning_tokens, None),
        )?;
        if u.web_searches > 0 {
            m.serialize_entry(
                "server_tool_use",
                &One("web_search_requests", u.web_searches, None),
            )?;
        }
        m.end()
    }
}

/// OpenAI's `usage` object; a count that is not a whole number reads as 0.
#[derive(Deserialize)]
struct Wire {
    #[serde(default, deserialize_with = "count")]
    prompt_tokens: u64,
    #[serde(default, deserialize_with = "count")]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<Value>,
    #[serde(default)]
    completion_tokens_details: Option<Value>,
    #[serde(default)]
    server_tool_use: Option<Value>,
}

/// A count inside a `*_details` object (0 when it is not one).
fn detail(d: Option<&Value>, key: &str) -> u64 {
    d.and_then(Value::as_object)
        .and_then(|o| crate::lookup(o, key))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Value::deserialize(d)?.as_u64().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openai_usage_with_details() {
        let v = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2}});
        let u = Usage::from_json(Some(&v)).unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (10, 5, 4, 2)
        );
        assert_eq!(u.total(), 15);
        assert!(Usage::from_json(Some(&Value::Null)).is_none());
        assert!(Usage::from_json(None).is_none());
    }

    #[test]
    fn usage_json_writes_what_to_json_builds() {
        let mut u = Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            cached_tokens: 4,
            cache_write_tokens: 0,
            reasoning_tokens: 2,
            web_searches: 0,
            estimated: false,
        };
        let text = serde_json::to_string(&UsageJson(&u)).unwrap();
        assert!(!text.contains("server_tool_use"), "{text}");
        assert_eq!(text, serde_json::to_string(&u.to_json()).unwrap());
        assert!(!text.contains("cache_write_tokens"), "{text}");
        // Cache writes are named only when there are some, and read back.
        u.cache_write_tokens = 3;
        let text = serde_json::to_string(&UsageJson(&u)).unwrap();
        assert_eq!(text, serde_json::to_string(&u.to_json()).unwrap());
        assert!(
            text.contains(r#""prompt_tokens_details":{"cached_tokens":4,"cache_write_tokens":3}"#),
            "{text}"
        );
        assert_eq!(Usage::from_json_text(&text), Some(u));
        // Web searches likewise.
        u.web_searches = 2;
        let text = serde_json::to_string(&UsageJson(&u)).unwrap();
        assert_eq!(text, serde_json::to_string(&u.to_json()).unwrap());
        assert!(
            text.ends_with(r#""server_tool_use":{"web_search_requests":2}}"#),
            "{text}"
        );
        assert_eq!(Usage::from_json_text(&text), Some(u));
    }

    #[test]
    fn from_text_reads_what_the_tree_reads() {
        for text in [
            r#"{"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 2}}"#,
            r#"{"prompt_tokens": 10}"#,
            r#"{"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 5}}"#,
            r#"{"prompt_tokens": 1.5, "completion_tokens": -3, "x": [1, {"y": null}]}"#,
            r#"{"prompt_tokens": "7", "completion_tokens": null}"#,
            r#"{"prompt_tokens_details": null, "completion_tokens_details": 3}"#,
            r#"{"prompt_tokens_details": [4], "completion_tokens_details": {"reasoning_tokens": [1]}}"#,
            r#"[4, 5]"#,
            r#"{"prompt_tokens": 1, "prompt_tokens": 2}"#,
            r#"{}"#,
            "[1]",
            "null",
            "not json",
        ] {
            let tree = Usage::from_json(serde_json::from_str::<Value>(text).ok().as_ref());
            assert_eq!(Usage::from_json_text(text), tree, "{text}");
        }
    }
}
