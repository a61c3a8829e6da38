//! The response cache (`[cache]` in the configuration): exact-match answers
//! to chat, completions and embeddings requests, streamed or not, so a
//! repeated call costs nothing upstream.
//!
//! - The key is a SHA-256 of the endpoint, the caller (a gateway key's id,
//!   or the master key / an open gateway) and the request body's canonical
//!   JSON (members in key order, no whitespace: how a client's SDK writes
//!   its JSON does not matter): one key's answers are never served to
//!   another.
//! - Node-local (an LRU of `max_entries`), or with `[redis]` shared by every
//!   replica (`polyplex:cache:<hex>` with the TTL as its expiry). Redis that
//!   fails or is slow (100 ms) is a miss, never an error.
//! - A request may say `Cache-Control: no-cache` (ask upstream, store the
//!   answer) or `no-store` (neither read nor write).
//! - A hit answers with `x-polyplex-cache: hit`, the original provider and
//!   model headers, `usage.cost` 0, and is recorded with provider `cache`
//!   and no cost (budgets are not charged).
//! - A stream is stored as the Server-Sent Events it sent, once it ended
//!   with `[DONE]` (never one that failed, was cut off or grew past
//!   [`MAX_STREAM_BYTES`]), and a hit replays them at once. Its key is the
//!   body's, which says `"stream": true`: streamed and unary answers are
//!   never served for each other.

use bytes::Bytes;
use polyplex_types::Usage;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Hashes an object's canonical JSON text: its members sorted by key,
/// each value's the same, scalars as serde_json writes them.
fn canonical(h: &mut Sha256, object: &serde_json::Map<String, serde_json::Value>) {
    use serde_json::Value;
    fn value(h: &mut Sha256, v: &Value) {
        match v {
            Value::Object(m) => canonical(h, m),
            Value::Array(items) => {
                h.update(b"[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        h.update(b",");
                    }
                    value(h, item);
                }
                h.update(b"]");
            }
            scalar => write(h, scalar),
        }
    }
    /// Writes straight into the hash, without a string between.
    struct HashWriter<'a>(&'a mut Sha256);
    impl std::io::Write for HashWriter<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.update(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    fn write<T: serde::Serialize + ?Sized>(h: &mut Sha256, v: &T) {
        // Writing JSON into a hash cannot fail.
        let _ = serde_json::to_writer(HashWriter(h), v);
    }
    let mut members: Vec<(&String, &Value)> = object.iter().collect();
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    h.update(b"{");
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            h.update(b",");
        }
        write(h, k.as_str());
        h.update(b":");
        value(h, v);
    }
    h.update(b"}");
}

/// The longest stream stored (its SSE bytes); a longer one is not cached.
pub const MAX_STREAM_BYTES: usize = 4 << 20;

/// Adds what a stream sent to its copy for the cache (`None`: none kept);
/// a stream past [`MAX_STREAM_BYTES`] keeps none.
pub fn capture(copy: &mut Option<Vec<u8>>, sent: &[u8]) {
    if let Some(c) = copy {
        if c.len() + sent.len() > MAX_STREAM_BYTES {
            *copy = None;
        } else {
            c.extend_from_slice(sent);
        }
    }
}

/// How long Redis may take to answer a lookup before it counts as a miss.
const REDIS_WAIT: Duration = Duration::from_millis(100);

/// The settings of `[cache]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub max_entries: usize,
}

/// What a request's `Cache-Control` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read and write.
    Use,
    /// Ask upstream, then store (`no-cache`).
    Refresh,
    /// Neither (`no-store`).
    Skip,
}

impl Mode {
    /// What a request's `Cache-Control` header asks.
    pub fn of(headers: &axum::http::HeaderMap) -> Mode {
        Mode::from_header(
            headers
                .get(axum::http::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
        )
    }

    pub fn from_header(v: Option<&str>) -> Mode {
        let Some(v) = v else { return Mode::Use };
        let has = |d: &str| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(d));
        if has("no-store") {
            Mode::Skip
        } else if has("no-cache") {
            Mode::Refresh
        } else {
            Mode::Use
        }
    }
}

/// One stored answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The response body as it was sent.
    pub body: Bytes,
    pub provider: String,
    pub model: String,
    pub usage: Usage,
    /// Parameters left out under `drop_params` (named again on a hit).
    pub dropped: Vec<String>,
}

impl Entry {
    /// The answer `body` that deployment `d` served.
    pub fn served(
        body: Bytes,
        d: &crate::routing::Deployment,
        usage: Usage,
        dropped: Vec<String>,
    ) -> Entry {
        Entry {
            body,
            provider: d.upstream.name.clone(),
            model: d.model.clone(),
            usage,
            dropped,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let head = serde_json::json!({
            "provider": self.provider, "model": self.model,
            "prompt": self.usage.prompt_tokens, "completion": self.usage.completion_tokens,
            "cached": self.usage.cached_tokens, "cache_write": self.usage.cache_write_tokens,
            "reasoning": self.usage.reasoning_tokens, "web_searches": self.usage.web_searches,
            "estimated": self.usage.estimated, "dropped": self.dropped,
        })
        .to_string();
        let mut out = Vec::with_capacity(head.len() + 1 + self.body.len());
        out.extend_from_slice(head.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(b: &[u8]) -> Option<Entry> {
        let nl = memchr::memchr(b'\n', b)?;
        let head: serde_json::Value = serde_json::from_slice(&b[..nl]).ok()?;
        let n = |k: &str| head.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Some(Entry {
            body: Bytes::copy_from_slice(&b[nl + 1..]),
            provider: head.get("provider")?.as_str()?.to_string(),
            model: head.get("model")?.as_str()?.to_string(),
            usage: Usage {
                prompt_tokens: n("prompt"),
                completion_tokens: n("completion"),
                cached_tokens: n("cached"),
                cache_write_tokens: n("cache_write"),
                reasoning_tokens: n("reasoning"),
                web_searches: n("web_searches"),
                estimated: head.get("estimated").and_then(serde_json::Value::as_bool) == Some(true),
            },
            dropped: head
                .get("dropped")
                .and_then(serde_json::Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

pub type Key = [u8; 32];

pub struct ResponseCache {
    /// Whether `[cache]` is configured (a reload may add or remove it).
    on: AtomicBool,
    ttl_ms: AtomicU64,
    local: Mutex<lru::LruCache<Key, (Instant, Arc<Entry>)>>,
    redis: Option<ConnectionManager>,
}

impl ResponseCache {
    /// The cache of `cfg` (off without one); in Redis when `redis` is given.
    pub fn new(cfg: Option<CacheConfig>, redis: Option<ConnectionManager>) -> ResponseCache {
        let c = ResponseCache {
            on: AtomicBool::new(false),
            ttl_ms: AtomicU64::new(0),
            local: Mutex::new(lru::LruCache::new(NonZeroUsize::MIN)),
            redis,
        };
        c.apply(cfg);
        c
    }

    /// Whether it is on.
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Takes `cfg` from now on (a reload): on, off, another TTL or size.
    /// The answers kept stay while they fit (the least recently used leave
    /// a smaller cache first) and their age is measured against the new
    /// TTL; turned off, this node forgets them.
    pub fn apply(&self, cfg: Option<CacheConfig>) {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        match cfg {
            Some(cfg) => {
                let ms = u64::try_from(cfg.ttl.as_millis()).unwrap_or(u64::MAX);
                self.ttl_ms.store(ms, Ordering::Relaxed);
                if self.redis.is_none() {
                    let cap =
                        NonZeroUsize::new(cfg.max_entries.max(1)).unwrap_or(NonZeroUsize::MIN);
                    local.resize(cap);
                }
                self.on.store(true, Ordering::Relaxed);
            }
            None => {
                self.on.store(false, Ordering::Relaxed);
                local.clear();
                local.resize(NonZeroUsize::MIN);
            }
        }
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// Whether answers are shared through Redis.
    pub fn shared(&self) -> bool {
        self.redis.is_some()
    }

    /// The key of `body` (a JSON object) sent by `caller` to `endpoint`:
    /// over its canonical text (members in key order, no whitespace), so
    /// requests that differ only in how their JSON was written (by two
    /// SDKs, say) share their answer.
    pub fn key(
        endpoint: &str,
        caller: &str,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Key {
        let mut h = Sha256::new();
        h.update(endpoint.as_bytes());
        h.update([0]);
        h.update(caller.as_bytes());
        h.update([0]);
        canonical(&mut h, body);
        h.finalize().into()
    }

    fn redis_key(key: &Key) -> String {
        let mut s = String::with_capacity(14 + 64);
        s.push_str("polyplex:cache:");
        for b in key {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub async fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        if let Some(conn) = &self.redis {
            let mut conn = conn.clone();
            let got = tokio::time::timeout(
                REDIS_WAIT,
                redis::cmd("GET")
                    .arg(Self::redis_key(key))
                    .query_async::<Option<Vec<u8>>>(&mut conn),
            )
            .await;
            return match got {
                Ok(Ok(Some(b))) => Entry::decode(&b).map(Arc::new),
                Ok(Ok(None)) => None,
                _ => {
                    metrics::counter!("polyplex_redis_errors_total").increment(1);
                    None
                }
            };
        }
        let mut local = self.local.lock().ok()?;
        match local.get(key) {
            Some((at, e)) if at.elapsed() < self.ttl() => Some(e.clone()),
            Some(_) => {
                local.pop(key);
                None
            }
            None => None,
        }
    }

    /// Stores an answer (in the background when it goes to Redis).
    pub fn put(&self, key: Key, entry: Entry) {
        if let Some(conn) = &self.redis {
            let mut conn = conn.clone();
            let value = entry.encode();
            let ttl = self.ttl().as_secs().max(1);
            tokio::spawn(async move {
                let mut set = redis::cmd("SET");
                set.arg(Self::redis_key(&key)).arg(value).arg("EX").arg(ttl);
                let done =
                    tokio::time::timeout(Duration::from_secs(2), set.query_async::<()>(&mut conn))
                        .await;
                if !matches!(done, Ok(Ok(()))) {
                    metrics::counter!("polyplex_redis_errors_total").increment(1);
                }
            });
            return;
        }
        if let Ok(mut local) = self.local.lock() {
            local.put(key, (Instant::now(), Arc::new(entry)));
        }
    }
}

/// The answer of a hit: the stored body with `usage.cost` (Gemini's
/// `usageMetadata.cost`) set to 0 (the client was not charged for it).
pub fn hit_body(stored: &[u8]) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(stored) else {
        return Bytes::copy_from_slice(stored);
    };
    no_cost(&mut v);
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::copy_from_slice(stored))
}

/// An answer's (or chunk's) usage at no cost.
fn no_cost(v: &mut serde_json::Value) {
    for usage in ["usage", "usageMetadata"] {
        if let Some(u) = v.get_mut(usage).and_then(serde_json::Value::as_object_mut) {
            if u.contains_key("cost") {
                u.insert("cost".into(), serde_json::json!(0.0));
            }
        }
    }
}

/// A stored Gemini stream as a hit sends it: server-sent events
/// (`sse`, separated by a blank CRLF line) or one JSON array, each
/// chunk's `usageMetadata.cost` 0.
pub fn hit_gemini_stream(stored: &Bytes, sse: bool) -> Bytes {
    if memchr::memmem::find(stored, b"\"cost\"").is_none() {
        return stored.clone();
    }
    if !sse {
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(stored) else {
            return stored.clone();
        };
        for chunk in v.as_array_mut().into_iter().flatten() {
            no_cost(chunk);
        }
        return serde_json::to_vec(&v).map_or_else(|_| stored.clone(), Bytes::from);
    }
    events_at_no_cost(stored, b"\r\n\r\n")
}

/// A stored stream as a hit sends it: every event as it was, but the usage
/// chunk's `cost` 0 (see [`hit_body`]).
pub fn hit_stream_body(stored: &Bytes) -> Bytes {
    events_at_no_cost(stored, b"\n\n")
}

/// Server-sent events, each ending with `sep`, as they were but any usage
/// at no cost (see [`hit_body`]). An event may be named (Anthropic's:
/// `event: message_delta`) on a line before its data.
fn events_at_no_cost(stored: &Bytes, sep: &[u8]) -> Bytes {
    if memchr::memmem::find(stored, b"\"cost\"").is_none() {
        return stored.clone();
    }
    let mut out = Vec::with_capacity(stored.len());
    let mut rest: &[u8] = stored;
    while !rest.is_empty() {
        let end = memchr::memmem::find(rest, sep).map_or(rest.len(), |i| i + sep.len());
        let (event, after) = rest.split_at(end);
        rest = after;
        let (name, data) = match event.strip_prefix(b"event: ") {
            Some(named) => match memchr::memchr(b'\n', named) {
                Some(nl) => event.split_at(7 + nl + 1),
                None => (event, &b""[..]),
            },
            None => (&b""[..], event),
        };
        match data.strip_prefix(b"data: ") {
            Some(d) if memchr::memmem::find(d, b"\"cost\"").is_some() => {
                let json = d.strip_suffix(sep).unwrap_or(d);
                out.extend_from_slice(name);
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&hit_body(json));
                out.extend_from_slice(&d[json.len()..]);
            }
            _ => out.extend_from_slice(event),
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            body: Bytes::from_static(br#"{"id":"x","usage":{"prompt_tokens":3,"cost":0.5}}"#),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                cached_tokens: 1,
                cache_write_tokens: 1,
                reasoning_tokens: 0,
                web_searches: 2,
                estimated: true,
            },
            dropped: vec!["seed".into()],
        }
    }

    #[test]
    fn modes_from_cache_control() {
        assert_eq!(Mode::from_header(None), Mode::Use);
        assert_eq!(
            Mode::from_header(Some("max-age=0, No-Cache")),
            Mode::Refresh
        );
        assert_eq!(Mode::from_header(Some("no-cache, no-store")), Mode::Skip);
        assert_eq!(Mode::from_header(Some("private")), Mode::Use);
    }

    #[test]
    fn keys_entries_and_hits() {
        let body = |text: &str| serde_json::from_str::<serde_json::Map<_, _>>(text).unwrap();
        let a = ResponseCache::key("chat.completions", "key-1", &body("{}"));
        assert_ne!(
            a,
            ResponseCache::key("chat.completions", "key-2", &body("{}"))
        );
        assert_ne!(a, ResponseCache::key("embeddings", "key-1", &body("{}")));
        assert_ne!(
            a,
            ResponseCache::key("chat.completions", "key-1", &body(r#"{"n":1}"#))
        );
        // How the JSON was written does not matter; what it says does.
        let m = ResponseCache::key(
            "chat.completions",
            "key-1",
            &body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#),
        );
        assert_eq!(
            m,
            ResponseCache::key(
                "chat.completions",
                "key-1",
                &body("{ \"temperature\": 0,\n  \"messages\": [{\"content\": \"hi\", \"role\": \"user\"}], \"model\": \"m\" }")
            )
        );
        assert_ne!(
            m,
            ResponseCache::key(
                "chat.completions",
                "key-1",
                &body(
                    r#"{"model":"m","messages":[{"role":"user","content":"hi!"}],"temperature":0}"#
                )
            )
        );
        // Nested objects too; arrays keep their order.
        assert_eq!(
            ResponseCache::key("x", "k", &body(r#"{"a":{"y":1,"x":[2,1]}}"#)),
            ResponseCache::key("x", "k", &body(r#"{"a":{"x":[2,1],"y":1}}"#))
        );
        assert_ne!(
            ResponseCache::key("x", "k", &body(r#"{"a":[1,2]}"#)),
            ResponseCache::key("x", "k", &body(r#"{"a":[2,1]}"#))
        );
        assert_eq!(Entry::decode(&entry().encode()), Some(entry()));
        assert!(ResponseCache::redis_key(&a).starts_with("polyplex:cache:"));
        let hit: serde_json::Value = serde_json::from_slice(&hit_body(&entry().body)).unwrap();
        assert_eq!(hit["usage"]["cost"], 0.0);
        assert_eq!(hit["usage"]["prompt_tokens"], 3);
    }

    #[test]
    fn stream_hits_zero_only_the_usage_chunks_cost() {
        let stored = Bytes::from_static(
            b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"the \\\"cost\\\" of it\"}}]}\n\n\
              data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"cost\":0.25}}\n\n\
              data: [DONE]\n\n",
        );
        let hit = hit_stream_body(&stored);
        let text = std::str::from_utf8(&hit).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 3, "{text}");
        let first: serde_json::Value =
            serde_json::from_str(events[0].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(
            first["choices"][0]["delta"]["content"],
            "the \"cost\" of it"
        );
        let usage: serde_json::Value =
            serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(usage["usage"]["cost"], 0.0);
        assert_eq!(usage["usage"]["prompt_tokens"], 3);
        assert_eq!(events[2], "data: [DONE]");
        // Anthropic's named events: the name kept, the cost zeroed.
        let named = Bytes::from_static(
            b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n\
              event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":4,\"cost\":0.5}}\n\n\
              event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let hit = hit_stream_body(&named);
        let text = std::str::from_utf8(&hit).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(
            events[0],
            "event: message_start\ndata: {\"type\":\"message_start\"}"
        );
        let delta = events[1]
            .strip_prefix("event: message_delta\ndata: ")
            .unwrap();
        let delta: serde_json::Value = serde_json::from_str(delta).unwrap();
        assert_eq!(
            (
                delta["usage"]["cost"].as_f64(),
                delta["usage"]["output_tokens"].as_u64()
            ),
            (Some(0.0), Some(4))
        );
        assert_eq!(
            events[2],
            "event: message_stop\ndata: {\"type\":\"message_stop\"}"
        );
        // Without a cost anywhere: the stored bytes as they are.
        let plain = Bytes::from_static(b"data: {\"id\":\"c\"}\n\ndata: [DONE]\n\n");
        assert_eq!(hit_stream_body(&plain), plain);
    }

    #[test]
    fn gemini_stream_hits_zero_each_chunks_cost() {
        let sse = Bytes::from_static(
            b"data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":3,\"cost\":0.1}}\r\n\r\n\
              data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":3,\"cost\":0.2}}\r\n\r\n",
        );
        let hit = hit_gemini_stream(&sse, true);
        let text = std::str::from_utf8(&hit).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        let events: Vec<serde_json::Value> = text
            .split("\r\n\r\n")
            .filter(|e| !e.is_empty())
            .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        assert_eq!(events.len(), 2);
        for e in &events {
            assert_eq!(e["usageMetadata"]["cost"], 0.0);
            assert_eq!(e["usageMetadata"]["promptTokenCount"], 3);
        }
        let array = Bytes::from_static(
            b"[{\"usageMetadata\":{\"cost\":0.1}},\r\n{\"usageMetadata\":{\"cost\":0.2}}]",
        );
        let v: serde_json::Value =
            serde_json::from_slice(&hit_gemini_stream(&array, false)).unwrap();
        assert_eq!(v[0]["usageMetadata"]["cost"], 0.0);
        assert_eq!(v[1]["usageMetadata"]["cost"], 0.0);
    }

    #[tokio::test]
    async fn local_entries_expire_and_are_bounded() {
        let c = ResponseCache::new(
            Some(CacheConfig {
                ttl: Duration::from_millis(50),
                max_entries: 2,
            }),
            None,
        );
        let k = |n: u8| [n; 32];
        c.put(k(1), entry());
        assert_eq!(c.get(&k(1)).await.as_deref(), Some(&entry()));
        c.put(k(2), entry());
        c.put(k(3), entry());
        assert!(c.get(&k(1)).await.is_none(), "the least recently used left");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(c.get(&k(3)).await.is_none(), "expired");
    }

    #[tokio::test]
    async fn a_reload_resizes_retimes_and_turns_it_off_and_on() {
        let long = |n| {
            Some(CacheConfig {
                ttl: Duration::from_secs(60),
                max_entries: n,
            })
        };
        let c = ResponseCache::new(None, None);
        assert!(!c.on());
        c.apply(long(3));
        let k = |n: u8| [n; 32];
        for n in 1..=3 {
            c.put(k(n), entry());
        }
        // Smaller: the least recently used leave; the rest stay.
        c.apply(long(2));
        assert!(c.on());
        assert!(c.get(&k(1)).await.is_none());
        assert!(c.get(&k(2)).await.is_some() && c.get(&k(3)).await.is_some());
        // A shorter TTL applies to what is kept.
        c.apply(Some(CacheConfig {
            ttl: Duration::from_millis(1),
            max_entries: 2,
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(c.get(&k(2)).await.is_none());
        // Off: forgotten, and off.
        c.apply(long(2));
        c.put(k(4), entry());
        c.apply(None);
        assert!(!c.on());
        c.apply(long(2));
        assert!(c.get(&k(4)).await.is_none());
    }
}
