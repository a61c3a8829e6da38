//! Limits and budgets shared by replicas through Redis: two gateways on one
//! store and one Redis count a key's requests per minute, tokens per
//! minute, concurrent requests and budget together; a Redis that cannot be
//! reached leaves each node its own limits. Needs a Redis server:
//! POLYPLEX_TEST_REDIS (scripts/test.sh sets it when one answers on
//! 127.0.0.1:6379; CI starts one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use polyplex::mock::{self, MockOptions};
use polyplex::Running;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const MASTER: &str = "test-master-key";

fn redis_url() -> Option<String> {
    match std::env::var("POLYPLEX_TEST_REDIS") {
        Ok(u) => Some(u),
        Err(_) => {
            eprintln!("POLYPLEX_TEST_REDIS not set: shared limits test skipped");
            None
        }
    }
}

fn temp_db() -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("polyplex-shared-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("polyplex.db").display());
    (dir, url)
}

async fn gateway(mock: SocketAddr, store: &str, redis: &str) -> Running {
    let text = format!(
        r#"
listen = "127.0.0.1:0"
[store]
url = "{store}"
[redis]
url = "{redis}"
[auth]
master_key = "{MASTER}"
[[providers]]
name = "openai"
base_url = "http://{mock}/v1"
api_key = "sk-provider"
models = ["gpt-4o", "gpt-4o-mini"]
max_retries = 0
"#
    );
    common::start(&text).await
}

struct Replicas {
    a: Running,
    b: Running,
    http: reqwest::Client,
    dir: PathBuf,
}

impl Replicas {
    async fn start(mock: SocketAddr, redis: &str) -> Self {
        let (dir, url) = temp_db();
        let a = gateway(mock, &url, redis).await;
        let b = gateway(mock, &url, redis).await;
        Replicas {
            a,
            b,
            http: reqwest::Client::new(),
            dir,
        }
    }

    fn base(&self, on_b: bool) -> String {
        format!("http://{}", if on_b { self.b.addr } else { self.a.addr })
    }

    /// A key made on replica A with these settings: (token, id).
    async fn key(&self, settings: Value) -> (String, String) {
        let k: Value = self
            .http
            .post(format!("{}/admin/keys", self.base(false)))
            .bearer_auth(MASTER)
            .json(&settings)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            k["key"].as_str().unwrap().to_string(),
            k["id"].as_str().unwrap().to_string(),
        )
    }

    async fn chat(&self, on_b: bool, key: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/chat/completions", self.base(on_b)))
            .bearer_auth(key)
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count these words please"}]}))
            .send()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn code_of(r: reqwest::Response) -> (u16, String) {
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (s, v["error"]["code"].as_str().unwrap_or("").to_string())
}

#[tokio::test]
async fn requests_per_minute_are_counted_across_replicas() {
    let Some(redis) = redis_url() else { return };
    let (mock, _) = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let r = Replicas::start(mock, &redis).await;
    let (key, _) = r.key(json!({"name": "rpm", "rpm": 3})).await;
    // Three in the minute, whichever replica serves them.
    let first = r.chat(false, &key).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "3");
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "2");
    let second = r.chat(true, &key).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(r.chat(false, &key).await.status(), 200);
    // The fourth is refused on either, each alone having seen fewer.
    for on_b in [true, false] {
        let resp = r.chat(on_b, &key).await;
        assert_eq!(resp.status(), 429);
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // A request counts for 60 to 61 seconds (one-second buckets).
        assert!((1..=61).contains(&retry), "{retry}");
        assert_eq!(code_of(resp).await, (429, "rate_limit_exceeded".into()));
    }
    r.stop().await;
}

#[tokio::test]
async fn concurrent_requests_are_counted_across_replicas() {
    let Some(redis) = redis_url() else { return };
    let slow = MockOptions {
        latency_ms: 600,
        ..MockOptions::default()
    };
    let (mock, _) = mock::spawn("127.0.0.1:0".parse().unwrap(), slow)
        .await
        .unwrap();
    let r = Replicas::start(mock, &redis).await;
    let (key, _) = r
        .key(json!({"name": "one-at-a-time", "max_concurrent": 1}))
        .await;
    let (held, refused) = tokio::join!(r.chat(false, &key), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        r.chat(true, &key).await
    });
    assert_eq!(held.status(), 200);
    assert_eq!(code_of(refused).await, (429, "rate_limit_exceeded".into()));
    // The slot is given back when the request ends (in the background).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.chat(true, &key).await.status(), 200);
    r.stop().await;
}

#[tokio::test]
async fn tokens_per_minute_and_budget_hold_across_replicas() {
    let Some(redis) = redis_url() else { return };
    let (mock, _) = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let r = Replicas::start(mock, &redis).await;

    // Tokens: one answer uses more than the limit; the next request is
    // refused on the other replica, naming tokens.
    let (key, _) = r.key(json!({"name": "tpm", "tpm": 10})).await;
    let ok = r.chat(false, &key).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-ratelimit-limit-tokens"], "10");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = r.chat(true, &key).await;
    assert_eq!(resp.status(), 429);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("(TPM)"),
        "{v}"
    );

    // Budget: less than one request costs; spent on A, B refuses the next at once
    // (long before its store reload would tell it).
    let (key, _) = r.key(json!({"name": "budget", "budget_usd": 1e-6})).await;
    assert_eq!(r.chat(false, &key).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        code_of(r.chat(true, &key).await).await,
        (429, "insufficient_quota".into())
    );
    r.stop().await;
}

/// Redis down: the gateway starts, serves, and limits each key on its own.
#[tokio::test]
async fn without_redis_each_node_keeps_its_own_limits() {
    let (mock, _) = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("redis://{}", free.local_addr().unwrap());
    drop(free);
    let r = Replicas::start(mock, &dead).await;
    let (key, _) = r.key(json!({"name": "local", "rpm": 2})).await;
    assert_eq!(r.chat(false, &key).await.status(), 200);
    assert_eq!(r.chat(false, &key).await.status(), 200);
    assert_eq!(
        code_of(r.chat(false, &key).await).await,
        (429, "rate_limit_exceeded".into())
    );
    // B counts its own.
    assert_eq!(r.chat(true, &key).await.status(), 200);
    r.stop().await;
}
