//! OpenAI wire-level types shared by every polyplex crate: the one error type
//! ([`GatewayError`]), usage accounting ([`Usage`]) and validation of the
//! OpenAI request bodies polyplex accepts ([`validate`]).
//!
//! Request bodies are kept as JSON maps (`serde_json::Map`, insertion ordered)
//! rather than closed structs, so a parameter polyplex does not know is never
//! lost on the way to an OpenAI-protocol upstream. Validation reads the known
//! fields and names the offending one in every error.

pub mod body;
pub mod error;
mod quick;
pub mod usage;
pub mod validate;

pub use body::{RequestBody, Shape};
pub use error::{ErrorSource, GatewayError};
pub use usage::{Usage, UsageJson};

/// A JSON object, insertion ordered.
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

/// `map.get(key)`, by a linear scan when the object is small. A request or
/// usage object has a handful of members and validation asks for dozens of
/// names that are mostly absent: comparing a few short keys is several times
/// cheaper than hashing each name with the map's SipHash.
#[inline]
pub fn lookup<'a>(map: &'a JsonMap, key: &str) -> Option<&'a serde_json::Value> {
    if map.len() <= 16 {
        map.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    } else {
        map.get(key)
    }
}

/// An integer as OpenAI's integer fields take it: `2`, or `2.0`.
pub fn integer(v: &serde_json::Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

/// `value.get(key)` (None unless `value` is an object), by [`lookup`]: for
/// the members of a message or a content part, which have two or three.
#[inline]
pub fn member<'a>(value: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    value.as_object().and_then(|m| lookup(m, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_agrees_with_get_for_small_and_large_objects() {
        for n in [0usize, 1, 5, 16, 17, 40] {
            let map: JsonMap = (0..n)
                .map(|i| (format!("k{i}"), serde_json::Value::from(i)))
                .collect();
            for i in 0..n + 3 {
                let key = format!("k{i}");
                assert_eq!(lookup(&map, &key), map.get(&key), "n={n} key={key}");
            }
        }
    }

    #[test]
    fn member_agrees_with_get_on_any_value() {
        let values = [
            serde_json::json!({"role": "user", "content": "hi"}),
            serde_json::json!(["role"]),
            serde_json::json!("role"),
            serde_json::Value::Null,
        ];
        for v in &values {
            for key in ["role", "content", "name"] {
                assert_eq!(member(v, key), v.get(key), "{v} {key}");
            }
        }
    }
}
