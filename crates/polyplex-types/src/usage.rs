//! Token usage in OpenAI's shape, read from and written to JSON.

use crate::JsonMap;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Part of `prompt_tokens` served from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Part of `completion_tokens` spent on reasoning.
    pub reasoning_tokens: u64,
    /// True when polyplex counted the tokens because the upstream did not say.
    pub estimated: bool,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// Reads an OpenAI `usage` object; `None` if absent or not an object.
    pub fn from_json(v: Option<&Value>) -> Option<Usage> {
        let o = v?.as_object()?;
        let n = |o: &JsonMap, k: &str| crate::lookup(o, k).and_then(Value::as_u64).unwrap_or(0);
        let detail = |k: &str, f: &str| {
            crate::lookup(o, k)
                .and_then(Value::as_object)
                .map(|d| n(d, f))
                .unwrap_or(0)
        };
        Some(Usage {
            prompt_tokens: n(o, "prompt_tokens"),
            completion_tokens: n(o, "completion_tokens"),
            cached_tokens: detail("prompt_tokens_details", "cached_tokens"),
            reasoning_tokens: detail("completion_tokens_details", "reasoning_tokens"),
            estimated: false,
        })
    }

    /// A fresh OpenAI `usage` object (used when the upstream sent none).
    pub fn to_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total(),
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        })
    }
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
}
