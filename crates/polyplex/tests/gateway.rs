//! Integration tests: the gateway, in-process on loopback, against the mock upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use polyplex::config::{from_toml, Inputs};
use polyplex::mock::{self, MockOptions, MockState};
use polyplex::Running;
use polyplex_catalog::Catalog;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MASTER: &str = "test-master-key";
const PROVIDER_KEY: &str = "sk-test-secret-provider-key-123";

struct Env {
    mock: SocketAddr,
    mock_state: Arc<MockState>,
    gw: Running,
    client: reqwest::Client,
}

fn base_config(mock: SocketAddr, extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
[store]
url = "sqlite::memory:"
[auth]
master_key = "{MASTER}"
[server]
max_body_bytes = 65536
shutdown_grace_ms = 5000
[[providers]]
name = "openai"
base_url = "http://{mock}/v1"
api_key = "{PROVIDER_KEY}"
models = ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "gpt-3.5-turbo-instruct"]
max_retries = 1
timeout_ms = 3000
{extra}
"#
    )
}

async fn setup_with(opts: MockOptions, extra: &str) -> Env {
    let (mock, mock_state) = mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let text = base_config(mock, &extra.replace("MOCK", &mock.to_string()));
    let gw = common::start(&text).await;
    Env {
        mock,
        mock_state,
        gw,
        client: reqwest::Client::new(),
    }
}

async fn setup() -> Env {
    setup_with(MockOptions::default(), "").await
}

/// A mock that streams 20 tokens a second, for clients that leave mid-stream.
async fn slow_setup(extra: &str) -> Env {
    setup_with(
        MockOptions {
            latency_ms: 0,
            tokens_per_s: 20.0,
        },
        extra,
    )
    .await
}

impl Env {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gw.addr)
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(MASTER)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// A GET with the master key, its JSON answer.
    async fn get_json(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .bearer_auth(MASTER)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (up to 5 s) until the mock has seen `at_least` streams cancelled.
    async fn streams_cancelled(&self, at_least: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .mock_state
            .stats
            .streams_cancelled
            .load(Ordering::Relaxed)
            < at_least
        {
            assert!(
                Instant::now() < deadline,
                "upstream streams were not cancelled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn fault(&self, f: Value) {
        let r = self
            .client
            .post(format!("http://{}/__mock/faults", self.mock))
            .json(&f)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    async fn upstream_requests(&self) -> Vec<Value> {
        self.client
            .get(format!("http://{}/__mock/requests", self.mock))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].is_string(),
        "not an OpenAI error body: {v}"
    );
    assert!(v["error"]["type"].is_string(), "{v}");
    (status, v["error"].clone())
}

/// Reads an SSE response into its `data:` payloads.
async fn sse_events(r: reqwest::Response) -> Vec<String> {
    let text = r.text().await.unwrap_or_default();
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn chat_completion_with_headers_usage_and_catalog_cost() {
    let env = setup().await;
    let r = env.post("/v1/chat/completions", json!({"model": "openai/gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello polyplex world"}]})).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert!(h["x-request-id"].to_str().unwrap().starts_with("req_"));
    assert_eq!(h["x-polyplex-provider"], "openai");
    assert_eq!(h["x-polyplex-model"], "gpt-4o-mini");
    assert_eq!(h["x-polyplex-attempts"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello polyplex world"
    );
    let u = &v["usage"];
    let (p, c) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0 && c == 3);
    // gpt-4o-mini: $0.15 / $0.60 per million tokens in the catalog.
    let price = Catalog::builtin()
        .model("openai", "gpt-4o-mini")
        .unwrap()
        .price
        .unwrap();
    let expect = (p as f64 * price.input + c as f64 * price.output) / 1e6;
    assert!((u["cost"].as_f64().unwrap() - expect).abs() < 1e-9, "{u}");
    // A bare model name and a client-chosen request id work too.
    let r = env
        .client
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(MASTER)
        .header("x-request-id", "my-trace-1")
        .json(&chat("gpt-4o", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "my-trace-1");
    assert_eq!(r.headers()["x-polyplex-model"], "gpt-4o");
    env.gw.shutdown().await;
}

#[tokio::test]
async fn every_parameter_reaches_the_upstream_unchanged() {
    let env = setup().await;
    let body = json!({
        "model": "openai/gpt-4o",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}
        ],
        "temperature": 0.3, "top_p": 0.9, "n": 1, "stop": ["END"], "max_tokens": 50, "max_completion_tokens": 60,
        "response_format": {"type": "json_object"}, "seed": 123,
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "d", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
        "tool_choice": "auto", "parallel_tool_calls": false, "logprobs": true, "top_logprobs": 2,
        "presence_penalty": 0.5, "frequency_penalty": 0.25, "logit_bias": {"1234": -50}, "user": "user-42",
        "metadata": {"team": "search"}, "store": false, "a_future_parameter": {"nested": [1, 2, 3]},
        "models": ["openai/gpt-4o-mini"], "provider": {"allow_fallbacks": true}
    });
    let r = env.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let reqs = env.upstream_requests().await;
    let sent = &reqs.last().unwrap()["body"];
    let mut expect = body.as_object().unwrap().clone();
    expect.insert("model".into(), json!("gpt-4o"));
    expect.remove("models");
    expect.remove("provider");
    // `metadata` is the usage record's: OpenAI takes it with `store: true` only.
    expect.remove("metadata");
    assert_eq!(sent, &Value::Object(expect));
    // The provider key went upstream, in the Authorization header.
    assert_eq!(
        reqs.last().unwrap()["headers"]["authorization"],
        format!("Bearer {PROVIDER_KEY}")
    );
    env.gw.shutdown().await;
}

#[tokio::test]
async fn streaming_is_openai_sse_with_optional_usage() {
    let env = setup().await;
    let mut body = chat("openai/gpt-4o-mini", "one two three four");
    body["stream"] = json!(true);
    let r = env.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(r.headers()["x-polyplex-provider"], "openai");
    let events = sse_events(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "one two three four");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    // No usage asked for: no usage chunk and no usage key, as OpenAI does.
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "{chunks:?}"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    // The gateway asked upstream for usage anyway, to meter the stream.
    let reqs = env.upstream_requests().await;
    let sent = &reqs.last().unwrap()["body"];
    assert_eq!(sent["stream_options"]["include_usage"], true);

    body["stream_options"] = json!({"include_usage": true});
    let events = sse_events(env.post("/v1/chat/completions", body).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 4);
    assert!(usage_chunk["usage"]["cost"].as_f64().unwrap() > 0.0);
    env.gw.shutdown().await;
}

#[tokio::test]
async fn streamed_tool_call_assembles_into_valid_json() {
    let env = setup().await;
    let body = json!({"model": "openai/gpt-4o", "stream": true, "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    let events = sse_events(env.post("/v1/chat/completions", body).await).await;
    let mut args = String::new();
    let mut name = None;
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let c: Value = serde_json::from_str(e).unwrap();
        if let Some(tc) = c["choices"][0]["delta"]["tool_calls"].get(0) {
            if let Some(n) = tc["function"]["name"].as_str() {
                name = Some(n.to_string());
                assert!(tc["id"].as_str().unwrap().starts_with("call_"));
            }
            args.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(name.as_deref(), Some("get_weather"));
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"location": "Paris"})
    );
    env.gw.shutdown().await;
}

#[tokio::test]
async fn malformed_input_gets_the_right_status_and_names_the_problem() {
    let env = setup().await;
    let url = env.url("/v1/chat/completions");
    let send = |body: &'static str| {
        env.client
            .post(&url)
            .bearer_auth(MASTER)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let (s, e) = error_of(send("{not json").await.unwrap()).await;
    assert_eq!(s, 400);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("could not parse the JSON body"),
        "{e}"
    );
    let (s, e) = error_of(send("[1,2]").await.unwrap()).await;
    assert_eq!(s, 400);
    assert!(
        e["message"].as_str().unwrap().contains("JSON object"),
        "{e}"
    );
    let (s, _) = error_of(send("").await.unwrap()).await;
    assert_eq!(s, 400);

    let cases = [
        (
            json!({"model": "openai/gpt-4o", "messages": []}),
            "messages",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"model": 5, "messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"model": "openai/gpt-4o", "messages": "hi"}),
            "messages",
        ),
        (
            json!({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "x"}], "temperature": "warm"}),
            "temperature",
        ),
        (
            json!({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
            "max_tokens",
        ),
        (
            json!({"model": "openai/gpt-4o", "messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            "stream",
        ),
    ];
    for (body, param) in cases {
        let (s, e) = error_of(env.post("/v1/chat/completions", body.clone()).await).await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(e["param"], param, "{body}: {e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains(param.split('[').next().unwrap()),
            "{e}"
        );
    }

    let (s, e) = error_of(
        env.post("/v1/chat/completions", chat("no-such-model", "x"))
            .await,
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (404, Some("model_not_found")));
    assert!(e["message"].as_str().unwrap().contains("no-such-model"));
    let (s, _) = error_of(
        env.post("/v1/chat/completions", chat("openai/not-listed", "x"))
            .await,
    )
    .await;
    assert_eq!(s, 404);

    let big = "x".repeat(70_000);
    let (s, e) = error_of(
        env.post("/v1/chat/completions", chat("openai/gpt-4o", &big))
            .await,
    )
    .await;
    assert_eq!(s, 413);
    assert!(e["message"].as_str().unwrap().contains("65536"), "{e}");
    // Over the limit without a content-length (chunked) is caught too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b' '; 40_000]), Ok(vec![b' '; 40_000])];
    let r = env
        .client
        .post(&url)
        .bearer_auth(MASTER)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // No upstream request was made for any of these.
    assert_eq!(env.mock_state.stats.requests.load(Ordering::Relaxed), 0);
    env.gw.shutdown().await;
}

#[tokio::test]
async fn auth_and_unknown_paths() {
    let env = setup().await;
    let url = env.url("/v1/chat/completions");
    let r = env
        .client
        .post(&url)
        .json(&chat("openai/gpt-4o", "x"))
        .send()
        .await
        .unwrap();
    let (s, e) = error_of(r).await;
    assert_eq!(s, 401);
    assert!(e["message"]
        .as_str()
        .unwrap()
        .contains("didn't provide an API key"));
    let r = env
        .client
        .post(&url)
        .bearer_auth("wrong-key-123")
        .json(&chat("openai/gpt-4o", "x"))
        .send()
        .await
        .unwrap();
    let (s, e) = error_of(r).await;
    assert_eq!((s, e["code"].as_str()), (401, Some("invalid_api_key")));
    assert!(!e["message"].as_str().unwrap().contains("wrong-key-123"));
    let r = env.client.get(env.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // A refused request still carries its request id.
    assert!(r.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    for path in ["/v1/models/gpt-4o", "/admin/providers"] {
        let r = env.client.get(env.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    // x-api-key works as well as Bearer.
    let r = env
        .client
        .get(env.url("/v1/models"))
        .header("x-api-key", MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = env
        .client
        .get(env.url("/v1/nothing-here"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-request-id"));
    let (s, _) = error_of(r).await;
    assert_eq!(s, 404);
    let r = env
        .client
        .get(&url)
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    let (s, _) = error_of(r).await;
    assert_eq!(s, 405);
    // Health endpoints need no key.
    assert_eq!(
        env.client
            .get(env.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        env.client
            .get(env.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    env.gw.shutdown().await;
}

#[tokio::test]
async fn upstream_500_is_retried() {
    let env = setup().await;
    env.fault(json!({"fault": "500", "count": 1})).await;
    let r = env
        .post("/v1/chat/completions", chat("openai/gpt-4o", "again"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-polyplex-attempts"], "2");
    env.gw.shutdown().await;
}

#[tokio::test]
async fn upstream_429_beyond_retries_is_a_429_with_retry_after() {
    let env = setup().await;
    env.fault(json!({"fault": "429", "count": 5, "retry_after": 0}))
        .await;
    let r = env
        .post("/v1/chat/completions", chat("openai/gpt-4o", "x"))
        .await;
    assert_eq!(r.headers()["x-polyplex-attempts"], "2");
    assert!(r.headers().contains_key("retry-after"));
    let (s, e) = error_of(r).await;
    assert_eq!(s, 429);
    assert_eq!(e["type"], "rate_limit_error");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Rate limit reached"),
        "{e}"
    );
    env.gw.shutdown().await;
}

#[tokio::test]
async fn upstream_4xx_is_passed_on_and_keys_never_leak() {
    let env = setup().await;
    env.fault(json!({"fault": "400"})).await;
    let (s, e) = error_of(
        env.post("/v1/chat/completions", chat("openai/gpt-4o", "x"))
            .await,
    )
    .await;
    assert_eq!(s, 400);
    assert!(e["message"].as_str().unwrap().contains("HTTP 400"), "{e}");
    // Not retried: a client error.
    assert_eq!(env.mock_state.stats.requests.load(Ordering::Relaxed), 1);

    env.fault(json!({"fault": "401", "count": 3})).await;
    let r = env
        .post("/v1/chat/completions", chat("openai/gpt-4o", "x"))
        .await;
    let text = r.text().await.unwrap();
    assert!(text.contains("Incorrect API key provided"), "{text}");
    assert!(!text.contains(PROVIDER_KEY), "provider key leaked: {text}");
    assert!(text.contains("[redacted]"));
    // The metrics do not carry it either.
    let m = env
        .client
        .get(env.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!m.contains(PROVIDER_KEY));
    env.gw.shutdown().await;
}

#[tokio::test]
async fn failover_to_the_next_provider() {
    let extra = r#"
[[providers]]
name = "backup"
kind = "openai"
catalog = "openai"
base_url = "http://MOCK/v1"
models = ["gpt-4o"]
max_retries = 0
[[routes]]
name = "smart"
targets = ["openai/gpt-4o", "backup/gpt-4o"]
[routing]
# This test counts attempts; the breaker has tests of its own.
breaker_min_requests = 1000
"#;
    let env = setup_with(MockOptions::default(), extra).await;
    // openai has max_retries = 1: two 500s exhaust it, then backup answers.
    env.fault(json!({"fault": "503", "count": 2})).await;
    let r = env.post("/v1/chat/completions", chat("smart", "x")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-polyplex-provider"], "backup");
    assert_eq!(r.headers()["x-polyplex-attempts"], "3");
    assert_eq!(r.headers()["x-polyplex-fallbacks"], "openai/gpt-4o");
    let v: Value = r.json().await.unwrap();
    assert!(
        v["usage"]["cost"].as_f64().unwrap() > 0.0,
        "backup is priced from the catalog via `catalog = \"openai\"`"
    );

    // A bare name also fails over across providers that list it.
    env.fault(json!({"fault": "500", "count": 2})).await;
    let r = env.post("/v1/chat/completions", chat("gpt-4o", "x")).await;
    assert_eq!(r.headers()["x-polyplex-provider"], "backup");

    // OpenRouter's per-request provider preferences steer the same plan.
    let mut body = chat("gpt-4o", "x");
    body["provider"] = json!({"order": ["backup", "openai"]});
    let r = env.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(
        (
            r.headers()["x-polyplex-provider"].to_str().unwrap(),
            r.headers()["x-polyplex-attempts"].to_str().unwrap()
        ),
        ("backup", "1")
    );
    body["provider"] = json!({"ignore": ["backup"]});
    assert_eq!(
        env.post("/v1/chat/completions", body.clone())
            .await
            .headers()["x-polyplex-provider"],
        "openai"
    );
    body["provider"] = json!({"only": ["nobody"]});
    let (s, e) = error_of(env.post("/v1/chat/completions", body.clone()).await).await;
    assert_eq!((s, e["param"].as_str()), (404, Some("provider")));
    // No fallbacks allowed: the first provider's failure is the answer.
    env.fault(json!({"fault": "500", "count": 2})).await;
    body["provider"] = json!({"allow_fallbacks": false});
    let (s, _) = error_of(env.post("/v1/chat/completions", body).await).await;
    assert_eq!(s, 502);
    // The routing fields never reach the upstream.
    let reqs = env.upstream_requests().await;
    assert!(reqs.iter().all(|r| r["body"].get("provider").is_none()));

    // A stream fails over before its first byte, invisibly.
    env.fault(json!({"fault": "500", "count": 2})).await;
    let mut body = chat("smart", "streamed words");
    body["stream"] = json!(true);
    let r = env.post("/v1/chat/completions", body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-polyplex-provider"], "backup");
    let events = sse_events(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    env.gw.shutdown().await;
}

#[tokio::test]
async fn fallback_models_list_in_the_body() {
    let extra = r#"
[[providers]]
name = "dead"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
models = ["m1"]
max_retries = 0
connect_timeout_ms = 500
"#;
    let env = setup_with(MockOptions::default(), extra).await;
    let mut body = chat("dead/m1", "x");
    body["models"] = json!(["openai/gpt-4o-mini"]);
    let r = env.post("/v1/chat/completions", body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-polyplex-model"], "gpt-4o-mini");
    // Without the fallback: connection refused is a 502.
    let (s, e) = error_of(env.post("/v1/chat/completions", chat("dead/m1", "x")).await).await;
    assert_eq!(s, 502);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{e}"
    );
    assert!(
        !e["message"].as_str().unwrap().contains("127.0.0.1"),
        "no internal addresses in errors: {e}"
    );
    env.gw.shutdown().await;
}

#[tokio::test]
async fn upstream_timeout_is_a_504() {
    let extra = r#"
[[providers]]
name = "slow"
kind = "openai"
base_url = "http://MOCK/v1"
models = ["gpt-4o"]
timeout_ms = 300
max_retries = 0
"#;
    let env = setup_with(MockOptions::default(), extra).await;
    env.fault(json!({"fault": "timeout", "delay_ms": 5000}))
        .await;
    let t = Instant::now();
    let (s, e) = error_of(
        env.post("/v1/chat/completions", chat("slow/gpt-4o", "x"))
            .await,
    )
    .await;
    assert_eq!(s, 504);
    assert!(e["message"].as_str().unwrap().contains("300 ms"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3));
    env.gw.shutdown().await;
}

#[tokio::test]
async fn garbage_from_upstream_is_a_502() {
    let env = setup().await;
    env.fault(json!({"fault": "garbage", "count": 2})).await;
    let (s, e) = error_of(
        env.post("/v1/chat/completions", chat("openai/gpt-4o", "x"))
            .await,
    )
    .await;
    assert_eq!(s, 502);
    assert!(
        e["message"].as_str().unwrap().contains("invalid response"),
        "{e}"
    );
    env.gw.shutdown().await;
}

#[tokio::test]
async fn disconnect_mid_stream_ends_with_an_error_event_and_no_done() {
    let extra = r#"
[[providers]]
name = "flaky"
kind = "openai"
base_url = "http://MOCK/v1"
models = ["gpt-4o"]
max_retries = 0
"#;
    // Paced, so the chunks before the drop are on the wire before it happens.
    let env = setup_with(
        MockOptions {
            latency_ms: 0,
            tokens_per_s: 100.0,
        },
        extra,
    )
    .await;
    env.fault(json!({"fault": "disconnect", "after_chunks": 3}))
        .await;
    let mut body = chat("flaky/gpt-4o", "a b c d e f g h");
    body["stream"] = json!(true);
    let r = env.post("/v1/chat/completions", body).await;
    assert_eq!(r.status(), 200);
    let events = sse_events(r).await;
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"].as_str().unwrap().contains("flaky"),
        "{last}"
    );
    assert!(
        events.len() >= 2,
        "the chunks before the failure arrived: {events:?}"
    );
    env.gw.shutdown().await;
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let env = slow_setup("").await;
    let mut body = chat("openai/gpt-4o", &"word ".repeat(200));
    body["stream"] = json!(true);
    let mut r = env.post("/v1/chat/completions", body).await;
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(r);
    env.streams_cancelled(1).await;
    assert_eq!(
        env.mock_state
            .stats
            .streams_completed
            .load(Ordering::Relaxed),
        0
    );
    env.gw.shutdown().await;
}

#[tokio::test]
async fn usage_is_counted_when_the_upstream_omits_it() {
    let env = setup().await;
    env.fault(json!({"fault": "no_usage"})).await;
    let v: Value = env
        .post("/v1/chat/completions", chat("openai/gpt-4o", "hello world"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 2, "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(v["usage"]["cost"].as_f64().unwrap() > 0.0);

    env.fault(json!({"fault": "no_usage"})).await;
    let mut body = chat("openai/gpt-4o", "hello world again");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = sse_events(env.post("/v1/chat/completions", body).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let u: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(u["usage"]["completion_tokens"], 3, "{u}");
    assert!(u["id"].as_str().unwrap().starts_with("chatcmpl-"));
    env.gw.shutdown().await;
}

#[tokio::test]
async fn embeddings_and_legacy_completions() {
    let env = setup().await;
    let r = env
        .post(
            "/v1/embeddings",
            json!({"model": "openai/text-embedding-3-small", "input": ["a", "b"], "dimensions": 8}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert!(v["usage"]["cost"].is_number());
    let v: Value = env.post("/v1/embeddings", json!({"model": "openai/text-embedding-3-small", "input": "a", "encoding_format": "base64"})).await.json().await.unwrap();
    assert!(v["data"][0]["embedding"].is_string());
    let (s, e) = error_of(
        env.post(
            "/v1/embeddings",
            json!({"model": "openai/text-embedding-3-small"}),
        )
        .await,
    )
    .await;
    assert_eq!((s, e["param"].as_str()), (400, Some("input")));

    let v: Value = env.post("/v1/completions", json!({"model": "openai/gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "max_tokens": 3})).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["text"], "Say this is");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(v["usage"]["cost"].is_number());
    let r = env
        .post(
            "/v1/completions",
            json!({"model": "openai/gpt-3.5-turbo-instruct", "prompt": "one two", "stream": true}),
        )
        .await;
    let events = sse_events(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let text: String = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(text, "one two");
    env.gw.shutdown().await;
}

#[tokio::test]
async fn models_endpoints_and_metrics() {
    let env = setup().await;
    let v = env.get_json("/v1/models").await;
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"openai/gpt-4o-mini"), "{ids:?}");
    let r = env
        .client
        .get(env.url("/v1/models/openai/gpt-4o"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m: Value = r.json().await.unwrap();
    assert_eq!(
        (m["id"].as_str(), m["object"].as_str()),
        (Some("openai/gpt-4o"), Some("model"))
    );
    let r = env
        .client
        .get(env.url("/v1/models/nope"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    env.post("/v1/chat/completions", chat("openai/gpt-4o", "count me"))
        .await;
    // The usage writer is asynchronous; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let m = env
            .client
            .get(env.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains("polyplex_requests_total") && m.contains("provider=\"openai\"") {
            // Durations are histograms (they add up across replicas), with
            // the documented bounds, and the other documented series are there.
            // (The recorder is the process's: other tests' requests count too.)
            for line in [
                "# TYPE polyplex_request_duration_seconds histogram",
                "# TYPE polyplex_time_to_first_token_seconds histogram",
                "polyplex_request_duration_seconds_bucket{endpoint=\"chat.completions\",provider=\"openai\",le=\"0.005\"}",
                "polyplex_request_duration_seconds_bucket{endpoint=\"chat.completions\",provider=\"openai\",le=\"300\"}",
                "polyplex_request_duration_seconds_bucket{endpoint=\"chat.completions\",provider=\"openai\",le=\"+Inf\"}",
                "polyplex_request_duration_seconds_count{endpoint=\"chat.completions\",provider=\"openai\"}",
                "polyplex_requests_total{endpoint=\"chat.completions\",provider=\"openai\",model=\"gpt-4o\",status=\"200\"}",
                "polyplex_tokens_total{provider=\"openai\",model=\"gpt-4o\",kind=\"prompt\"}",
                "polyplex_cost_usd_total{provider=\"openai\",model=\"gpt-4o\"}",
                // Each deployment's health, from every attempt.
                "polyplex_deployment_healthy{provider=\"openai\",model=\"gpt-4o\"} 1",
                "polyplex_deployment_circuit_state{provider=\"openai\",model=\"gpt-4o\",state=\"closed\"} 1",
                "polyplex_deployment_circuit_state{provider=\"openai\",model=\"gpt-4o\",state=\"open\"} 0",
                "polyplex_deployment_in_flight{provider=\"openai\",model=\"gpt-4o\"}",
                "polyplex_deployment_error_rate{provider=\"openai\",model=\"gpt-4o\"}",
                "polyplex_upstream_attempts_total{provider=\"openai\",model=\"gpt-4o\"}",
                "polyplex_upstream_errors_total{provider=\"openai\",model=\"gpt-4o\"}",
                "# TYPE polyplex_usage_writer_lag_seconds gauge",
                "# TYPE polyplex_usage_writer_background gauge",
            ] {
                assert!(m.contains(line), "no `{line}` in {m}");
            }
            assert!(!m.contains("quantile="), "{m}");
            // Every sample is in the +Inf bucket: it equals the count.
            let value = |prefix: &str| -> u64 {
                m.lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no `{prefix}` in {m}"))
            };
            let inf = value("polyplex_request_duration_seconds_bucket{endpoint=\"chat.completions\",provider=\"openai\",le=\"+Inf\"}");
            let count = value("polyplex_request_duration_seconds_count{endpoint=\"chat.completions\",provider=\"openai\"}");
            assert!(inf >= 1 && inf == count, "{inf} vs {count}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the request: {m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.gw.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_flushes_usage() {
    let env = setup_with(
        MockOptions {
            latency_ms: 600,
            tokens_per_s: 0.0,
        },
        "",
    )
    .await;
    let client = env.client.clone();
    let url = env.url("/v1/chat/completions");
    let inflight = tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(MASTER)
            .json(&chat("openai/gpt-4o", "slow"))
            .send()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let written = env.gw.shutdown().await;
    let r = inflight.await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "slow");
    assert_eq!(
        written, 1,
        "the in-flight request's usage record was written before exit"
    );
}

#[tokio::test]
async fn demo_mode_and_the_loopback_rule() {
    let env = |_: &str| None;
    let inputs = Inputs {
        env: &env,
        listen_override: Some("127.0.0.1:0".into()),
        catalog: Catalog::builtin(),
    };
    let cfg = polyplex::config::zero_config(&inputs).unwrap();
    assert!(cfg.demo);
    let gw = polyplex::start(&cfg).await.unwrap();
    let client = reqwest::Client::new();
    // No master key: any caller on loopback is let in.
    let r = client
        .post(format!("http://{}/v1/chat/completions", gw.addr))
        .json(&chat("demo/echo", "hi there"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-polyplex-provider"], "demo");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "hi there");
    gw.shutdown().await;

    let inputs = Inputs {
        env: &env,
        listen_override: Some("0.0.0.0:0".into()),
        catalog: Catalog::builtin(),
    };
    let cfg = polyplex::config::zero_config(&inputs).unwrap();
    let e = polyplex::start(&cfg).await.err().unwrap();
    assert!(e.contains("without a master key"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_threads_share_one_gateway_and_flush_usage() {
    let mock = common::mock().await;
    let env = |_: &str| None;
    let inputs = Inputs {
        env: &env,
        listen_override: None,
        catalog: Catalog::builtin(),
    };
    let cfg = from_toml(&base_config(mock, ""), &inputs).unwrap();
    let gw = polyplex::start_threads(&cfg, 3).await.unwrap();
    let url = format!("http://{}/v1/chat/completions", gw.addr);

    // Many connections (a fresh client each), so the kernel spreads them
    // over the serving threads; unary and streamed.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let mut body = chat("gpt-4o-mini", &format!("hello {i}"));
            if i % 4 == 0 {
                body["stream"] = json!(true);
            }
            let r = client
                .post(&url)
                .bearer_auth(MASTER)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            if i % 4 == 0 {
                assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
            } else {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["choices"][0]["message"]["content"], format!("hello {i}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        gw.shutdown().await,
        24,
        "every request's usage record written"
    );

    // A port something else holds is refused, not silently shared.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = from_toml(&base_config(mock, ""), &inputs).unwrap();
    cfg.listen = taken.local_addr().unwrap();
    let err = polyplex::start_threads(&cfg, 2).await.err().unwrap();
    assert!(err.contains("cannot listen"), "{err}");
}

/// HTTP/2 without TLS (h2c, prior knowledge) is served on the same port as
/// HTTP/1.1: several requests multiplexed on one connection, unary and
/// streamed, with the gateway's headers.
#[tokio::test]
async fn http2_prior_knowledge_is_served_beside_http1() {
    let env = setup().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let ask = |body: Value| {
        h2.post(env.url("/v1/chat/completions"))
            .bearer_auth(MASTER)
            .json(&body)
            .send()
    };
    let (a, b) = tokio::join!(
        ask(chat("openai/gpt-4o", "one")),
        ask(chat("openai/gpt-4o", "two"))
    );
    for (r, text) in [(a.unwrap(), "one"), (b.unwrap(), "two")] {
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-polyplex-provider"], "openai");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], text);
    }
    let mut streamed = chat("openai/gpt-4o", "hello there");
    streamed["stream"] = json!(true);
    let r = ask(streamed).await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "hello there");
    env.gw.shutdown().await;
}

/// A client gone in the middle of a stream asked apart (`n` on Claude, one
/// upstream stream a choice): every part is cancelled, and the record
/// (499) counts the prompt once per part, as the upstream billed it.
#[tokio::test]
async fn client_gone_from_a_stream_asked_apart_is_recorded_per_part() {
    let env = slow_setup(
        r#"[[providers]]
name = "anthropic"
base_url = "http://MOCK"
api_key = "sk-ant-test"
models = ["claude-sonnet-4-5"]
max_retries = 0"#,
    )
    .await;
    // The prompt tokens recorded once `errors` records are in (a record
    // waits for the token encoding, which loads on a thread of its own).
    let prompt_once = |errors: u64| {
        let env = &env;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let r = env.get_json("/admin/usage?by=model").await;
                let seen = r["total"]["errors"].as_u64().unwrap();
                if seen >= errors {
                    return (r["total"]["prompt_tokens"].as_u64().unwrap(), seen);
                }
                assert!(Instant::now() < deadline, "{seen} of {errors} records");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let gone_after_first_chunk = |n: u64| {
        let mut body = chat("anthropic/claude-sonnet-4-5", &"word ".repeat(200));
        body["stream"] = json!(true);
        body["n"] = json!(n);
        async {
            let mut r = env.post("/v1/chat/completions", body).await;
            assert_eq!(r.status(), 200);
            assert!(r.chunk().await.unwrap().unwrap().starts_with(b"data: "));
        }
    };
    gone_after_first_chunk(1).await;
    env.streams_cancelled(1).await;
    let (one, errors) = prompt_once(1).await;
    assert!(one > 0 && errors == 1, "{one} {errors}");
    gone_after_first_chunk(2).await;
    env.streams_cancelled(3).await;
    let (all, errors) = prompt_once(2).await;
    assert_eq!((all - one, errors), (2 * one, 2));
    assert_eq!(
        env.mock_state
            .stats
            .streams_completed
            .load(Ordering::Relaxed),
        0
    );
    env.gw.shutdown().await;
}
