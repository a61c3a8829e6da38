//! One generic suite, run against every wire protocol through the running
//! gateway and the mock: add a case once, every protocol is tested.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use polyplex::mock;
use polyplex::Running;
use polyplex_catalog::Catalog;
use serde_json::{json, Value};
use std::net::SocketAddr;

/// (protocol, model as clients address it)
const PROTOCOLS: &[(&str, &str)] = &[
    ("openai", "openai/gpt-4o-mini"),
    ("anthropic", "anthropic/claude-sonnet-4-5"),
    ("azure", "azure/gpt-4o-mini"),
    ("azure-v1", "azure-v1/gpt-4o-mini"),
    ("google", "google/gemini-2.5-flash"),
    ("cohere", "cohere/command-a-03-2025"),
    (
        "bedrock",
        "bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0",
    ),
    ("vertex", "vertex/gemini-2.5-flash"),
    (
        "vertex-anthropic",
        "vertex-anthropic/claude-haiku-4-5@20251001",
    ),
];

/// An address nothing listens on.
fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A service-account key file whose token endpoint is the mock's (the key
/// is a test-only one, `tests/fixtures/test-only-rsa-key.pem`).
fn service_account_file(mock: SocketAddr) -> std::path::PathBuf {
    let pem = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/test-only-rsa-key.pem"),
    )
    .unwrap();
    let key = json!({"type": "service_account", "project_id": "polyplex-test", "private_key_id": "test",
        "private_key": pem, "client_email": "gateway@polyplex-test.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": format!("http://{mock}/token")});
    let path = std::env::temp_dir().join(format!(
        "polyplex-sa-{}-{}.json",
        std::process::id(),
        mock.port()
    ));
    std::fs::write(&path, key.to_string()).unwrap();
    path
}

struct Env {
    mock: SocketAddr,
    gw: Running,
    client: reqwest::Client,
}

async fn setup() -> Env {
    let mock = common::mock().await;
    let text = format!(
        r#"
listen = "127.0.0.1:0"
[store]
url = "sqlite::memory:"
[[providers]]
name = "openai"
base_url = "http://{mock}/v1"
api_key = "sk-openai-test"
max_retries = 0
[[providers]]
name = "anthropic"
base_url = "http://{mock}"
api_key = "sk-ant-test"
max_retries = 0
[[providers]]
name = "azure"
base_url = "http://{mock}"
api_key = "azure-test-key"
api_version = "2024-10-21"
max_retries = 0
[[providers]]
name = "azure-v1"
kind = "azure"
catalog = "azure"
base_url = "http://{mock}/openai/v1/"
api_key = "azure-test-key"
api_version = "2024-10-21"
max_retries = 0
[[providers]]
name = "google"
base_url = "http://{mock}"
api_key = "gemini-test-key"
max_retries = 0
[[providers]]
name = "cohere"
base_url = "http://{mock}"
api_key = "cohere-test-key"
max_retries = 0
[[providers]]
name = "bedrock"
kind = "bedrock"
base_url = "http://{mock}"
region = "us-west-2"
aws_access_key_id = "{key_id}"
aws_secret_access_key = "{secret}"
max_retries = 0
[[providers]]
name = "bedrock-key"
kind = "bedrock"
base_url = "http://{mock}"
api_key = "bedrock-api-key-test"
models = ["amazon.nova-pro-v1:0"]
max_retries = 0
[[providers]]
name = "bedrock-forged"
kind = "bedrock"
base_url = "http://{mock}"
aws_access_key_id = "{key_id}"
aws_secret_access_key = "not-the-secret"
models = ["amazon.nova-pro-v1:0"]
max_retries = 0
[[providers]]
name = "vertex"
kind = "vertex"
base_url = "http://{mock}/v1/projects/polyplex-test/locations/us-east5"
credentials_file = "{sa}"
max_retries = 0
[[providers]]
name = "vertex-anthropic"
kind = "vertex-anthropic"
base_url = "http://{mock}/v1/projects/polyplex-test/locations/us-east5"
credentials_file = "{sa}"
max_retries = 0
[[providers]]
name = "vertex-no-token"
kind = "vertex"
base_url = "http://{mock}/v1/projects/polyplex-test/locations/us-east5"
credentials_file = "{sa_dead}"
models = ["gemini-2.5-flash"]
max_retries = 0
[[providers]]
name = "vertex-express"
kind = "vertex"
base_url = "http://{mock}/v1"
api_key = "vertex-express-key"
models = ["gemini-2.5-flash"]
max_retries = 0
"#,
        sa = service_account_file(mock).display(),
        sa_dead = service_account_file(dead_port()).display(),
        key_id = mock::bedrock::MOCK_ACCESS_KEY_ID,
        secret = mock::bedrock::MOCK_SECRET_ACCESS_KEY,
    );
    let gw = common::start(&text).await;
    Env {
        mock,
        gw,
        client: reqwest::Client::new(),
    }
}

impl Env {
    async fn chat(&self, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .client
            .post(format!("http://{}/v1/chat/completions", self.gw.addr))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (s, h) = (r.status().as_u16(), r.headers().clone());
        (s, h, r.json().await.unwrap_or(Value::Null))
    }

    async fn stream(&self, mut body: Value) -> Vec<Value> {
        body["stream"] = json!(true);
        let r = self
            .client
            .post(format!("http://{}/v1/chat/completions", self.gw.addr))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let events: Vec<&str> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .collect();
        assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
        events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }

    async fn fault(&self, f: Value) {
        self.client
            .post(format!("http://{}/__mock/faults", self.mock))
            .json(&f)
            .send()
            .await
            .unwrap();
    }

    async fn last_upstream(&self) -> Value {
        let v: Vec<Value> = self
            .client
            .get(format!("http://{}/__mock/requests", self.mock))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.last().cloned().unwrap()
    }
}

fn user(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather for a place",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}])
}

fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?.get("delta")?.get("content")?.as_str())
        .collect()
}

#[tokio::test]
async fn generic_suite_on_every_protocol() {
    let env = setup().await;
    for &(proto, model) in PROTOCOLS {
        let ctx = |case: &str| format!("{proto}: {case}");

        // plain chat, with headers and usage
        let (s, h, v) = env.chat(user(model, "Hello there")).await;
        assert_eq!(s, 200, "{}", ctx("plain"));
        assert_eq!(h["x-polyplex-provider"], proto);
        assert_eq!(v["object"], "chat.completion", "{}", ctx("plain"));
        assert_eq!(content(&v), "Hello there", "{}", ctx("plain"));
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(
            v["usage"]["prompt_tokens"].as_u64().unwrap() > 0
                && v["usage"]["completion_tokens"] == 2,
            "{}",
            ctx("usage")
        );
        assert!(
            v["usage"]["cost"].as_f64().unwrap() > 0.0,
            "{}: {v}",
            ctx("cost")
        );
        assert!(!v["id"].as_str().unwrap().is_empty());

        // system prompt and multi-turn
        let (s, _, v) = env.chat(json!({"model": model, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"}, {"role": "user", "content": "second question"}]})).await;
        assert_eq!(
            (s, content(&v)),
            (200, "second question"),
            "{}",
            ctx("multi-turn")
        );

        // streaming text, real id and model on every chunk, usage only on request
        let chunks = env.stream(user(model, "stream these words")).await;
        assert_eq!(
            streamed_text(&chunks),
            "stream these words",
            "{}",
            ctx("stream")
        );
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let id = chunks[0]["id"].as_str().unwrap().to_string();
        assert!(
            !id.is_empty()
                && chunks.iter().all(
                    |c| c["id"] == id.as_str() && !c["model"].as_str().unwrap_or("").is_empty()
                ),
            "{}",
            ctx("stream ids")
        );
        assert!(
            chunks
                .iter()
                .all(|c| c.get("usage").is_none_or(Value::is_null)),
            "{}",
            ctx("no usage unless asked")
        );
        let mut b = user(model, "count me");
        b["stream_options"] = json!({"include_usage": true});
        let chunks = env.stream(b).await;
        let last = chunks.last().unwrap();
        assert_eq!(
            (
                last["choices"].clone(),
                last["usage"]["completion_tokens"].as_u64()
            ),
            (json!([]), Some(2)),
            "{}",
            ctx("stream usage")
        );

        // tool call with a stable id, then the tool result round trip
        let mut b = user(model, "What is the weather in Paris?");
        b["tools"] = weather_tools();
        b["tool_choice"] = json!("required");
        let (s, _, v) = env.chat(b.clone()).await;
        assert_eq!(s, 200, "{}: {v}", ctx("tool call"));
        assert_eq!(
            v["choices"][0]["finish_reason"],
            "tool_calls",
            "{}",
            ctx("tool call")
        );
        let call = v["choices"][0]["message"]["tool_calls"][0].clone();
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
            json!({"location": "Paris"})
        );
        let mut rt = b.clone();
        rt["messages"]
            .as_array_mut()
            .unwrap()
            .push(v["choices"][0]["message"].clone());
        rt["messages"]
            .as_array_mut()
            .unwrap()
            .push(json!({"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"}));
        rt["tool_choice"] = json!("auto");
        let (s, _, v) = env.chat(rt).await;
        assert_eq!(
            (s, content(&v)),
            (200, "The tool returned: 18C and sunny"),
            "{}",
            ctx("tool result")
        );

        // streamed tool call assembles into valid JSON
        let chunks = env.stream(b).await;
        let mut args = String::new();
        for c in &chunks {
            if let Some(tc) = c["choices"]
                .get(0)
                .and_then(|ch| ch["delta"]["tool_calls"].get(0))
            {
                assert_eq!(tc["index"], 0);
                args.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"location": "Paris"}),
            "{}",
            ctx("streamed tool call")
        );
        assert_eq!(
            chunks
                .iter()
                .filter_map(|c| c["choices"].get(0)?["finish_reason"].as_str())
                .next_back(),
            Some("tool_calls")
        );

        // JSON mode and json_schema
        let mut b = user(model, "give me json");
        b["response_format"] = json!({"type": "json_object"});
        let (s, _, v) = env.chat(b).await;
        assert!(
            s == 200
                && serde_json::from_str::<Value>(content(&v))
                    .unwrap()
                    .is_object(),
            "{}: {v}",
            ctx("json mode")
        );
        let mut b = user(model, "Alice is 30");
        b["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}}});
        let (_, _, v) = env.chat(b.clone()).await;
        assert_eq!(
            serde_json::from_str::<Value>(content(&v)).unwrap(),
            json!({"age": 1}),
            "{}",
            ctx("json_schema")
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let chunks = env.stream(b).await;
        assert_eq!(
            serde_json::from_str::<Value>(&streamed_text(&chunks)).unwrap(),
            json!({"age": 1}),
            "{}",
            ctx("streamed json_schema")
        );

        // image input
        let (s, _, v) = env.chat(json!({"model": model, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]})).await;
        assert_eq!(
            (s, content(&v)),
            (200, "describe [image]"),
            "{}",
            ctx("image")
        );

        // stop, and max_tokens → length
        let mut b = user(model, "one two three four");
        b["stop"] = json!(["three"]);
        let (_, _, v) = env.chat(b).await;
        assert_eq!(content(&v).trim(), "one two", "{}", ctx("stop"));
        let mut b = user(model, "one two three four");
        b["max_tokens"] = json!(2);
        let (_, _, v) = env.chat(b).await;
        assert_eq!(
            (content(&v), v["choices"][0]["finish_reason"].as_str()),
            ("one two", Some("length")),
            "{}",
            ctx("max_tokens")
        );

        // upstream errors mapped: rate limit → 429, server error → 502, overload → 503
        for (fault, status) in [("429", 429), ("500", 502), ("529", 503)] {
            env.fault(json!({"fault": fault, "retry_after": 0})).await;
            let (s, _, v) = env.chat(user(model, "x")).await;
            assert_eq!(s, status, "{}: {v}", ctx(&format!("fault {fault}")));
            assert!(
                v["error"]["message"].as_str().unwrap().contains("mock"),
                "{}: {v}",
                ctx("error message kept")
            );
        }
    }
    env.gw.shutdown().await;
}

/// A PDF sent as OpenAI's `file` part reaches every protocol that reads
/// files as its own kind of part (what the mock saw comes back in the
/// answer), streamed too; Cohere refuses it by name. A participant's
/// `name` reaches OpenAI's protocols and is dropped and named by the rest.
#[tokio::test]
async fn files_and_names_on_every_protocol() {
    let env = setup().await;
    for &(proto, model) in PROTOCOLS {
        let mut b = json!({"model": model, "messages": [{"role": "user", "name": "ann", "content": [
            {"type": "text", "text": "Summarise"},
            {"type": "file", "file": {"filename": "q3.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}}]}]});
        let seen = match proto {
            "openai" | "azure" | "azure-v1" | "google" | "vertex" => "Summarise [file]",
            "anthropic" | "vertex-anthropic" | "bedrock" => "Summarise [document]",
            "cohere" => {
                let (s, _, v) = env.chat(b).await;
                assert_eq!(
                    (s, v["error"]["param"].as_str()),
                    (400, Some("messages[0].content[1].type")),
                    "{proto}: {v}"
                );
                continue;
            }
            other => panic!("no expectation for {other}"),
        };
        let (s, h, v) = env.chat(b.clone()).await;
        assert_eq!((s, content(&v)), (200, seen), "{proto}: {v}");
        let dropped = h
            .get("x-polyplex-dropped-params")
            .map(|d| d.to_str().unwrap().to_string());
        if matches!(proto, "openai" | "azure" | "azure-v1") {
            assert_eq!(dropped, None, "{proto}");
        } else {
            assert_eq!(dropped.as_deref(), Some("messages[].name"), "{proto}");
        }
        b["stream"] = json!(true);
        let chunks = env.stream(b).await;
        assert_eq!(streamed_text(&chunks), seen, "{proto}: streamed");
    }
    env.gw.shutdown().await;
}

/// A prompt-cache breakpoint (`cache_control`) reaches the protocols that
/// take one: the second request with the same prefix reads it from the
/// (mock) provider's cache, the first wrote it, and `usage` says so in
/// OpenAI's `prompt_tokens_details` (`cached_tokens`, `cache_write_tokens`)
/// with the cost at the catalog's cache prices. The others answer without
/// it and name it dropped.
#[tokio::test]
async fn prompt_cache_breakpoints_on_every_protocol() {
    let env = setup().await;
    for &(proto, model) in PROTOCOLS {
        let body = |q: &str| {
            json!({"model": model, "messages": [
                {"role": "system", "content": [{"type": "text", "text": format!("{proto} {}", "context words ".repeat(40)),
                    "cache_control": {"type": "ephemeral"}}]},
                {"role": "user", "content": q}]})
        };
        let (s1, h1, first) = env.chat(body("first question")).await;
        let (s2, _, second) = env.chat(body("second question")).await;
        assert_eq!((s1, s2), (200, 200), "{proto}: {first} {second}");
        let details = |v: &Value, k: &str| v["usage"]["prompt_tokens_details"][k].as_u64();
        let dropped = h1
            .get("x-polyplex-dropped-params")
            .map(|d| d.to_str().unwrap().to_string());
        match proto {
            "anthropic" | "bedrock" | "vertex-anthropic" => {
                assert_eq!(dropped, None, "{proto}");
                let written = details(&first, "cache_write_tokens").unwrap_or(0);
                assert!(written > 40, "{proto}: {first}");
                assert_eq!(details(&first, "cached_tokens"), Some(0), "{proto}");
                assert_eq!(
                    details(&second, "cached_tokens"),
                    Some(written),
                    "{proto}: {second}"
                );
                assert_eq!(details(&second, "cache_write_tokens"), None, "{proto}");
                assert_eq!(
                    first["usage"]["prompt_tokens"],
                    second["usage"]["prompt_tokens"]
                );
                let cost = |v: &Value| v["usage"]["cost"].as_f64().unwrap();
                assert!(proto != "anthropic" || cost(&first) > 0.0, "{first}");
                if cost(&first) > 0.0 {
                    assert!(
                        cost(&second) < cost(&first) / 3.0,
                        "{proto}: {first} {second}"
                    );
                }
            }
            "openai" | "azure" | "azure-v1" => assert_eq!(dropped, None, "{proto}"),
            _ => {
                assert_eq!(dropped.as_deref(), Some("cache_control"), "{proto}");
                assert_eq!(details(&second, "cached_tokens"), Some(0), "{proto}");
            }
        }
    }
    env.gw.shutdown().await;
}

#[tokio::test]
async fn gemini_wire_format_reaches_the_upstream() {
    let env = setup().await;
    let mut b = user("google/gemini-2.5-flash", "hi");
    b["n"] = json!(2);
    b["seed"] = json!(3);
    let (s, h, v) = env.chat(b).await;
    assert_eq!(
        (s, h["x-polyplex-provider"].to_str().unwrap()),
        (200, "google")
    );
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert!(v["usage"]["cost"].as_f64().unwrap() > 0.0, "{v}");
    let up = env.last_upstream().await;
    assert_eq!(up["headers"]["x-goog-api-key"], "gemini-test-key");
    assert_eq!(
        up["body"]["generationConfig"],
        json!({"seed": 3, "candidateCount": 2})
    );
    check_embeddings(&env, "google/gemini-embedding-001", "x-goog-api-key").await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn cohere_wire_format_reaches_the_upstream() {
    let env = setup().await;
    let (s, h, v) = env.chat(user("cohere/command-a-03-2025", "hi")).await;
    assert_eq!(
        (s, h["x-polyplex-provider"].to_str().unwrap()),
        (200, "cohere")
    );
    // Cohere's reply names no model: the gateway fills in the one it called.
    assert_eq!(v["model"], "command-a-03-2025");
    // Billed units are what the catalog price applies to ($2.50 / $10 per million).
    let u = &v["usage"];
    let expect = (u["prompt_tokens"].as_f64().unwrap() * 2.5
        + u["completion_tokens"].as_f64().unwrap() * 10.0)
        / 1e6;
    assert!((u["cost"].as_f64().unwrap() - expect).abs() < 1e-12, "{u}");
    let up = env.last_upstream().await;
    assert_eq!(up["path"], "/v2/chat");
    assert_eq!(up["headers"]["authorization"], "Bearer cohere-test-key");
    assert_eq!(up["body"]["model"], "command-a-03-2025");
    check_embeddings(&env, "cohere/embed-v4.0", "authorization").await;
    env.gw.shutdown().await;
}

/// Embeddings through a translated protocol: floats, base64 (the SDK's default), dimensions, usage.
async fn check_embeddings(env: &Env, model: &str, auth_header: &str) {
    let url = format!("http://{}/v1/embeddings", env.gw.addr);
    let v: Value = env
        .client
        .post(&url)
        .json(&json!({"model": model, "input": ["alpha", "beta gamma"], "dimensions": 8}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list", "{model}: {v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(v["model"], model.split_once('/').unwrap().1);
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
        "{model}: {v}"
    );
    assert!(env.last_upstream().await["headers"]
        .get(auth_header)
        .is_some());
    let v: Value = env.client.post(&url).json(&json!({"model": model, "input": "alpha", "encoding_format": "base64", "dimensions": 8})).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        v["data"][0]["embedding"].as_str().unwrap().len(),
        44,
        "8 f32 values, base64: {v}"
    );
    let r = env
        .client
        .post(&url)
        .json(&json!({"model": model, "input": [[1, 2, 3]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "input[0]");
}

#[tokio::test]
async fn azure_wire_format_reaches_the_upstream() {
    let env = setup().await;
    let (s, h, v) = env.chat(user("azure/gpt-4o-mini", "hi")).await;
    assert_eq!(
        (s, h["x-polyplex-provider"].to_str().unwrap()),
        (200, "azure")
    );
    // Priced from the catalog's azure entry for the model.
    assert!(v["usage"]["cost"].as_f64().unwrap() > 0.0, "{v}");
    let up = env.last_upstream().await;
    assert_eq!(up["path"], "/v1/chat/completions");
    assert_eq!(up["headers"]["api-key"], "azure-test-key");
    assert!(up["headers"].get("authorization").is_none());
    let r = env
        .client
        .post(format!("http://{}/v1/embeddings", env.gw.addr))
        .json(&json!({"model": "azure/text-embedding-3-small", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    env.gw.shutdown().await;
}

#[tokio::test]
async fn anthropic_wire_format_reaches_the_upstream() {
    let env = setup().await;
    let (s, _, _) = env.chat(json!({"model": "anthropic/claude-sonnet-4-5", "messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}], "temperature": 0.2})).await;
    assert_eq!(s, 200);
    let up = env.last_upstream().await;
    assert_eq!(up["path"], "/v1/messages");
    assert_eq!(up["headers"]["x-api-key"], "sk-ant-test");
    assert_eq!(up["headers"]["anthropic-version"], "2023-06-01");
    assert!(up["headers"].get("authorization").is_none());
    assert_eq!(up["body"]["system"], "sys");
    // max_tokens defaults to the catalog's output limit for the model.
    let limit = Catalog::builtin()
        .model("anthropic", "claude-sonnet-4-5")
        .unwrap()
        .output;
    assert_eq!(up["body"]["max_tokens"].as_u64(), Some(limit));

    // A parameter Anthropic cannot honour: 400 naming it, or dropped and named.
    let mut b = user("anthropic/claude-sonnet-4-5", "hi");
    b["seed"] = json!(7);
    let (s, _, v) = env.chat(b.clone()).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("seed")));
    b["drop_params"] = json!(true);
    let (s, h, _) = env.chat(b).await;
    assert_eq!(s, 200);
    assert_eq!(h["x-polyplex-dropped-params"], "seed");
    assert!(env.last_upstream().await["body"].get("seed").is_none());
    // Streams name what was dropped too.
    let mut b = user("anthropic/claude-sonnet-4-5", "hi");
    b["seed"] = json!(7);
    b["drop_params"] = json!(true);
    b["stream"] = json!(true);
    let r = env
        .client
        .post(format!("http://{}/v1/chat/completions", env.gw.addr))
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-polyplex-dropped-params"], "seed");
    assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    env.gw.shutdown().await;
}

#[tokio::test]
async fn bedrock_wire_format_and_signatures_reach_the_upstream() {
    let env = setup().await;
    // SigV4 with the mock's access key: the mock checked the signature.
    let model = "bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0";
    let (s, h, v) = env.chat(json!({"model": model, "messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}], "temperature": 0.2, "max_tokens": 50})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        h["x-polyplex-model"],
        "us.anthropic.claude-haiku-4-5-20251001-v1:0"
    );
    assert_eq!(v["model"], "us.anthropic.claude-haiku-4-5-20251001-v1:0");
    let up = env.last_upstream().await;
    assert_eq!(
        up["path"],
        "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse"
    );
    let auth = up["headers"]["authorization"].as_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIAPOLYPLEXMOCK/")
            && auth.contains("/us-west-2/bedrock/aws4_request"),
        "{auth}"
    );
    assert_eq!(up["body"]["system"], json!([{"text": "sys"}]));
    assert_eq!(
        up["body"]["inferenceConfig"],
        json!({"maxTokens": 50, "temperature": 0.2})
    );
    assert!(up["body"].get("model").is_none());
    // Streams are signed too (another path, another body).
    let chunks = env.stream(user(model, "signed stream")).await;
    assert_eq!(streamed_text(&chunks), "signed stream");
    assert!(env.last_upstream().await["path"]
        .as_str()
        .unwrap()
        .ends_with("/converse-stream"));
    // A Bedrock API key goes as a bearer token.
    let (s, _, v) = env
        .chat(user("bedrock-key/amazon.nova-pro-v1:0", "hi"))
        .await;
    assert_eq!(s, 200, "{v}");
    let up = env.last_upstream().await;
    assert_eq!(
        up["headers"]["authorization"],
        "Bearer bedrock-api-key-test"
    );
    assert_eq!(up["path"], "/model/amazon.nova-pro-v1%3A0/converse");
    // A wrong secret: AWS's refusal, passed on (403), no secret in it.
    let (s, _, v) = env
        .chat(user("bedrock-forged/amazon.nova-pro-v1:0", "hi"))
        .await;
    assert_eq!(s, 403, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("signature we calculated does not match"),
        "{msg}"
    );
    assert!(!v.to_string().contains("not-the-secret"));
    // What Converse cannot do: named.
    let mut b = user(model, "hi");
    b["seed"] = json!(7);
    let (s, _, v) = env.chat(b).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("seed")));
    let (s, _, v) = env
        .chat(
            json!({"model": model, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("messages[0].content[0].image_url.url"))
    );
    // A stream cut after its first chunk ends with an error event, not silence.
    env.fault(json!({"fault": "disconnect", "after_chunks": 2}))
        .await;
    let mut b = user(model, "one two three four five");
    b["stream"] = json!(true);
    let text = env
        .client
        .post(format!("http://{}/v1/chat/completions", env.gw.addr))
        .json(&b)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"error\""), "{text}");
    // A frame that does not decode: the same.
    env.fault(json!({"fault": "garbage"})).await;
    let text = env
        .client
        .post(format!("http://{}/v1/chat/completions", env.gw.addr))
        .json(&b)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("does not decode"), "{text}");
    env.gw.shutdown().await;
}

#[tokio::test]
async fn vertex_wire_format_and_tokens_reach_the_upstream() {
    let env = setup().await;
    let stats = || async {
        env.client
            .get(format!("http://{}/__mock/stats", env.mock))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let before = stats().await["tokens_issued"].as_u64().unwrap();
    for _ in 0..3 {
        let (s, _, v) = env.chat(user("vertex/gemini-2.5-flash", "hi")).await;
        assert_eq!(s, 200, "{v}");
    }
    let up = env.last_upstream().await;
    assert_eq!(
        up["path"],
        "/v1/projects/polyplex-test/locations/us-east5/publishers/google/models/gemini-2.5-flash:generateContent"
    );
    let auth = up["headers"]["authorization"].as_str().unwrap();
    assert!(auth.starts_with("Bearer ya29.polyplex-mock-"), "{auth}");
    assert!(up["headers"].get("x-goog-api-key").is_none());
    // Claude: rawPredict with Vertex's version, the model only in the URL.
    let (s, _, v) = env
        .chat(
            json!({"model": "vertex-anthropic/claude-haiku-4-5@20251001",
        "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
    assert_eq!((s, content(&v)), (200, "hello"), "{v}");
    let up = env.last_upstream().await;
    assert_eq!(up["path"], "/v1/projects/polyplex-test/locations/us-east5/publishers/anthropic/models/claude-haiku-4-5@20251001:rawPredict");
    assert_eq!(up["body"]["anthropic_version"], "vertex-2023-10-16");
    // One token served every request (and both providers share none: each
    // holds its own source, so at most two).
    let issued = stats().await["tokens_issued"].as_u64().unwrap() - before;
    assert!((1..=2).contains(&issued), "{issued} tokens for 4 requests");
    // No token to be had: a 502 naming the provider, nothing sent upstream.
    let (s, _, v) = env
        .chat(user("vertex-no-token/gemini-2.5-flash", "hi"))
        .await;
    assert_eq!(s, 502, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("vertex-no-token") && msg.contains("no Google access token"),
        "{msg}"
    );
    assert!(!msg.contains("PRIVATE KEY"));
    // Express mode: the API key in x-goog-api-key, no project in the path.
    let (s, _, v) = env
        .chat(user("vertex-express/gemini-2.5-flash", "hi"))
        .await;
    assert_eq!(s, 200, "{v}");
    let up = env.last_upstream().await;
    assert_eq!(up["headers"]["x-goog-api-key"], "vertex-express-key");
    assert!(up["headers"].get("authorization").is_none());
    env.gw.shutdown().await;
}

/// The rows of docs/providers.md that `generic_suite_on_every_protocol` exercises.
const SUITE_ROWS: &[&str] = &[
    "plain chat, system prompt, multi-turn",
    "streaming text, real id and model on every chunk",
    "usage incl. `cost`; final usage chunk only with `include_usage`",
    "tool calls with stable ids; tool result round trip",
    "streamed tool calls (index, id and name first, argument fragments after)",
    "`response_format` json_object / json_schema",
    "image input (URL and base64 data URL)",
    "`stop`, `max_tokens` → `finish_reason: length`",
    "upstream errors mapped (429 → 429, 5xx → 502, overloaded → 503)",
];

/// The docs' table column for each protocol of the suite.
fn doc_column(proto: &str) -> &'static str {
    match proto {
        "openai" => "openai (and compatible)",
        "anthropic" => "anthropic",
        "azure" | "azure-v1" => "azure",
        "google" => "gemini",
        "cohere" => "cohere",
        "bedrock" => "bedrock",
        "vertex" => "vertex (Gemini)",
        "vertex-anthropic" => "vertex (Claude)",
        other => panic!("no docs column for {other}"),
    }
}

#[test]
fn providers_doc_table_matches_the_generic_suite() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/providers.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let rows: Vec<Vec<String>> = doc
        .lines()
        .skip_while(|l| !l.starts_with("| feature |"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    let header = &rows[0];
    for &(proto, _) in PROTOCOLS {
        let col = header
            .iter()
            .position(|h| h == doc_column(proto))
            .unwrap_or_else(|| panic!("docs/providers.md has no column for {proto}"));
        for want in SUITE_ROWS {
            let row = rows
                .iter()
                .find(|r| r[0] == *want)
                .unwrap_or_else(|| panic!("docs/providers.md lacks the row `{want}`"));
            assert!(row[col].starts_with('✓'), "docs/providers.md says `{}` for {proto} on `{want}`, but the generic suite passes it", row[col]);
        }
    }
    // And every protocol column in the docs is one the suite runs.
    for h in &header[1..] {
        assert!(
            PROTOCOLS.iter().any(|(p, _)| doc_column(p) == h),
            "docs/providers.md documents `{h}`, which the generic suite does not run"
        );
    }
}
