//! The response cache (`[cache]`): node-local, and shared by replicas
//! through Redis when `POLYPLEX_TEST_REDIS` names a server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use polyplex::Running;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

const MASTER: &str = "cache-test-master-key";

async fn gateway(mock: SocketAddr, store: &str, redis: Option<&str>, ttl_s: u64) -> Running {
    let redis = redis
        .map(|u| format!("[redis]\nurl = \"{u}\"\n"))
        .unwrap_or_default();
    common::start(&format!(
        r#"
listen = "127.0.0.1:0"
[store]
url = "{store}"
{redis}[auth]
master_key = "{MASTER}"
[cache]
ttl_s = {ttl_s}
[[providers]]
name = "openai"
base_url = "http://{mock}/v1"
api_key = "sk-provider"
models = ["gpt-4o-mini", "text-embedding-3-small"]
max_retries = 0
[[providers]]
name = "anthropic"
base_url = "http://{mock}"
api_key = "sk-ant"
models = ["claude-sonnet-4-5"]
max_retries = 0
"#
    ))
    .await
}

struct T {
    http: reqwest::Client,
    mock: SocketAddr,
}

impl T {
    async fn upstream_requests(&self) -> u64 {
        let v = common::json(self.http.get(format!("http://{}/__mock/stats", self.mock))).await;
        v["requests"].as_u64().unwrap()
    }

    async fn call(
        &self,
        gw: &Running,
        key: &str,
        path: &str,
        body: Value,
        cache_control: Option<&str>,
    ) -> (reqwest::header::HeaderMap, Value) {
        let mut r = self
            .http
            .post(format!("http://{}{path}", gw.addr))
            .bearer_auth(key)
            .json(&body);
        if let Some(c) = cache_control {
            r = r.header("cache-control", c);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        (h, r.json().await.unwrap_or(Value::Null))
    }

    async fn stream(
        &self,
        gw: &Running,
        key: &str,
        body: &Value,
    ) -> (reqwest::header::HeaderMap, String) {
        let r = self
            .http
            .post(format!("http://{}/v1/chat/completions", gw.addr))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        (h, r.text().await.unwrap())
    }

    async fn key(&self, gw: &Running, name: &str) -> String {
        let v = common::json(
            self.http
                .post(format!("http://{}/admin/keys", gw.addr))
                .bearer_auth(MASTER)
                .json(&json!({"name": name})),
        )
        .await;
        v["key"].as_str().unwrap().to_string()
    }
}

fn chat(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
}

/// The chunk of a stream that carries `usage`.
fn usage_chunk(text: &str) -> Value {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .unwrap_or_else(|| panic!("no usage chunk in {text}"))
}

fn cache_header(h: &reqwest::header::HeaderMap) -> Option<&str> {
    h.get("x-polyplex-cache").and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn repeated_requests_are_answered_from_the_cache() {
    let mock = common::mock().await;
    let (dir, store) = common::temp_store("cache");
    let gw = gateway(mock, &store, None, 2).await;
    let t = T {
        http: reqwest::Client::new(),
        mock,
    };
    let (k1, k2) = (t.key(&gw, "one").await, t.key(&gw, "two").await);
    let path = "/v1/chat/completions";
    let n0 = t.upstream_requests().await;

    // A miss, then a hit: the same answer, no upstream call, no cost.
    let (h, first) = t.call(&gw, &k1, path, chat("cache me"), None).await;
    assert_eq!(cache_header(&h), Some("miss"));
    assert!(first["usage"]["cost"].as_f64().unwrap() > 0.0);
    let (h, second) = t.call(&gw, &k1, path, chat("cache me"), None).await;
    assert_eq!(cache_header(&h), Some("hit"));
    assert_eq!(h["x-polyplex-provider"], "openai");
    assert_eq!(h["x-polyplex-model"], "gpt-4o-mini");
    assert!(h.contains_key("x-request-id"));
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["choices"], first["choices"]);
    assert_eq!(
        second["usage"]["prompt_tokens"],
        first["usage"]["prompt_tokens"]
    );
    assert_eq!(second["usage"]["cost"], 0.0);
    assert_eq!(t.upstream_requests().await, n0 + 1);

    // Another key never sees the first key's answers.
    let (h, _) = t.call(&gw, &k2, path, chat("cache me"), None).await;
    assert_eq!(cache_header(&h), Some("miss"));
    assert_eq!(t.upstream_requests().await, n0 + 2);

    // no-cache asks upstream (and stores); no-store neither reads nor writes.
    let (h, _) = t
        .call(&gw, &k1, path, chat("cache me"), Some("no-cache"))
        .await;
    assert_eq!(cache_header(&h), Some("miss"));
    let (h, _) = t
        .call(&gw, &k1, path, chat("cache me"), Some("no-store"))
        .await;
    assert_eq!(cache_header(&h), None);
    assert_eq!(t.upstream_requests().await, n0 + 4);

    // Streams are cached too: stored once they end with [DONE], replayed
    // with the usage chunk's cost 0.
    let mut s = chat("cache me");
    s["stream"] = json!(true);
    s["stream_options"] = json!({"include_usage": true});
    let (h, first) = t.stream(&gw, &k1, &s).await;
    assert_eq!(cache_header(&h), Some("miss"));
    assert!(first.ends_with("data: [DONE]\n\n"));
    assert!(usage_chunk(&first)["usage"]["cost"].as_f64().unwrap() > 0.0);
    let (h, second) = t.stream(&gw, &k1, &s).await;
    assert_eq!(cache_header(&h), Some("hit"));
    assert_eq!(h["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(h["x-polyplex-provider"], "openai");
    assert_eq!(usage_chunk(&second)["usage"]["cost"], 0.0);
    assert_eq!(
        usage_chunk(&second)["usage"]["total_tokens"],
        usage_chunk(&first)["usage"]["total_tokens"]
    );
    let content = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("data: {") && !l.contains("\"usage\":{"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(content(&first), content(&second));
    assert_eq!(t.upstream_requests().await, n0 + 5);
    // A stream that breaks off is never stored: the same request asks
    // upstream again.
    let mut broken = chat("break me off");
    broken["stream"] = json!(true);
    t.http
        .post(format!("http://{}/__mock/faults", t.mock))
        .json(&json!({"fault": "disconnect", "after_chunks": 1, "count": 1}))
        .send()
        .await
        .unwrap();
    let (h, cut) = t.stream(&gw, &k1, &broken).await;
    assert_eq!(cache_header(&h), Some("miss"));
    assert!(!cut.contains("[DONE]"), "{cut}");
    let (h, whole) = t.stream(&gw, &k1, &broken).await;
    assert_eq!(cache_header(&h), Some("miss"));
    assert!(whole.ends_with("data: [DONE]\n\n"));
    let (h, _) = t.stream(&gw, &k1, &broken).await;
    assert_eq!(cache_header(&h), Some("hit"));
    assert_eq!(t.upstream_requests().await, n0 + 7);

    // Embeddings are.
    let e = json!({"model": "text-embedding-3-small", "input": ["a", "b"]});
    let (h, a) = t.call(&gw, &k1, "/v1/embeddings", e.clone(), None).await;
    assert_eq!(cache_header(&h), Some("miss"));
    let (h, b) = t.call(&gw, &k1, "/v1/embeddings", e, None).await;
    assert_eq!(cache_header(&h), Some("hit"));
    assert_eq!(a["data"], b["data"]);
    assert_eq!(t.upstream_requests().await, n0 + 8);

    // What drop_params left out is named on a hit too.
    let d = json!({"model": "anthropic/claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}],
        "seed": 7, "drop_params": true});
    let (h, _) = t.call(&gw, &k1, path, d.clone(), None).await;
    assert_eq!(h["x-polyplex-dropped-params"], "seed");
    let (h, _) = t.call(&gw, &k1, path, d, None).await;
    assert_eq!(cache_header(&h), Some("hit"));
    assert_eq!(h["x-polyplex-dropped-params"], "seed");

    // After the TTL: a miss again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (h, _) = t.call(&gw, &k1, path, chat("cache me"), None).await;
    assert_eq!(cache_header(&h), Some("miss"));

    // Hits are recorded, at no cost, under provider `cache`.
    let usage = common::json(
        t.http
            .get(format!("http://{}/admin/usage?by=provider", gw.addr))
            .bearer_auth(MASTER),
    )
    .await;
    let row = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["provider"] == "cache")
        .unwrap_or_else(|| panic!("no cache row in {usage}"));
    assert_eq!(row["requests"], 5);
    assert_eq!(row["cost_usd"].as_f64(), Some(0.0), "{row}");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn replicas_share_the_cache_through_redis() {
    let Ok(redis) = std::env::var("POLYPLEX_TEST_REDIS") else {
        eprintln!("POLYPLEX_TEST_REDIS not set: shared cache test skipped");
        return;
    };
    let mock = common::mock().await;
    let (dir, store) = common::temp_store("cache");
    let a = gateway(mock, &store, Some(&redis), 30).await;
    let b = gateway(mock, &store, Some(&redis), 30).await;
    let t = T {
        http: reqwest::Client::new(),
        mock,
    };
    let text = format!("shared {}", rand::random::<u64>());
    let n0 = t.upstream_requests().await;
    let (h, first) = t
        .call(&a, MASTER, "/v1/chat/completions", chat(&text), None)
        .await;
    assert_eq!(cache_header(&h), Some("miss"));
    // The write is in the background: give it a moment.
    let mut hit = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (h, v) = t
            .call(&b, MASTER, "/v1/chat/completions", chat(&text), None)
            .await;
        if cache_header(&h) == Some("hit") {
            hit = Some(v);
            break;
        }
    }
    let hit = hit.expect("the other replica never saw the answer");
    assert_eq!(hit["choices"], first["choices"]);
    assert_eq!(hit["usage"]["cost"], 0.0);
    // Only misses went upstream (the first, and any of B's before the write landed).
    assert!(t.upstream_requests().await > n0);
    a.shutdown().await;
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_redis_that_does_not_answer_is_a_miss_not_an_error() {
    let mock = common::mock().await;
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("redis://{}", free.local_addr().unwrap());
    drop(free);
    let (dir, store) = common::temp_store("cache");
    let gw = gateway(mock, &store, Some(&dead), 30).await;
    let t = T {
        http: reqwest::Client::new(),
        mock,
    };
    let n0 = t.upstream_requests().await;
    for _ in 0..2 {
        let (h, v) = t
            .call(&gw, MASTER, "/v1/chat/completions", chat("no redis"), None)
            .await;
        assert_eq!(cache_header(&h), Some("miss"));
        assert_eq!(v["choices"][0]["message"]["content"], "no redis");
    }
    assert_eq!(t.upstream_requests().await, n0 + 2);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
