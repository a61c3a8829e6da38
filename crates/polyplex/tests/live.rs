//! Live-provider suite: the protocol-independent checks of the generic suite,
//! against the real APIs whose keys are set. Needs network and keys, so it is
//! behind the `live` feature and never runs in CI:
//!
//! ```sh
//! OPENAI_API_KEY=... ANTHROPIC_API_KEY=... GEMINI_API_KEY=... COHERE_API_KEY=... \
//!   cargo test -p polyplex --features live --test live -- --nocapture
//! ```
//!
//! Azure needs `AZURE_API_KEY`, `AZURE_RESOURCE_NAME` and `AZURE_DEPLOYMENT`;
//! Bedrock `AWS_BEARER_TOKEN_BEDROCK` or `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY` (SigV4), with `AWS_REGION` and `BEDROCK_MODEL` (a
//! model or inference profile the account may call, e.g.
//! `us.anthropic.claude-haiku-4-5-20251001-v1:0`); Vertex AI
//! `GOOGLE_VERTEX_PROJECT` and `GOOGLE_APPLICATION_CREDENTIALS` (a
//! service-account key file), with `VERTEX_MODEL` (default
//! `gemini-2.5-flash`; a `claude-*` model tests Claude on Vertex).
#![cfg(feature = "live")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use polyplex::config::{from_toml, Inputs};
use polyplex_catalog::Catalog;
use serde_json::{json, Value};

/// (key variable, provider TOML, model as clients name it)
fn targets() -> Vec<(String, String)> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut out = Vec::new();
    if env("OPENAI_API_KEY").is_some() {
        out.push((
            "[[providers]]\nname = \"openai\"\napi_key = \"${OPENAI_API_KEY}\"\n".to_string(),
            "openai/gpt-4o-mini".to_string(),
        ));
    }
    if env("ANTHROPIC_API_KEY").is_some() {
        out.push((
            "[[providers]]\nname = \"anthropic\"\napi_key = \"${ANTHROPIC_API_KEY}\"\n".to_string(),
            "anthropic/claude-haiku-4-5".to_string(),
        ));
    }
    if env("GEMINI_API_KEY").is_some() {
        out.push((
            "[[providers]]\nname = \"google\"\napi_key = \"${GEMINI_API_KEY}\"\n".to_string(),
            "google/gemini-2.5-flash".to_string(),
        ));
    }
    if env("COHERE_API_KEY").is_some() {
        out.push((
            "[[providers]]\nname = \"cohere\"\napi_key = \"${COHERE_API_KEY}\"\n".to_string(),
            "cohere/command-a-03-2025".to_string(),
        ));
    }
    if let (Some(_), Some(res), Some(dep)) = (
        env("AZURE_API_KEY"),
        env("AZURE_RESOURCE_NAME"),
        env("AZURE_DEPLOYMENT"),
    ) {
        out.push((format!("[[providers]]\nname = \"azure\"\nbase_url = \"https://{res}.openai.azure.com\"\napi_key = \"${{AZURE_API_KEY}}\"\n"), format!("azure/{dep}")));
    }
    let aws = env("AWS_BEARER_TOKEN_BEDROCK").is_some()
        || (env("AWS_ACCESS_KEY_ID").is_some() && env("AWS_SECRET_ACCESS_KEY").is_some());
    if let (true, Some(model)) = (aws, env("BEDROCK_MODEL")) {
        // Credentials and region come from the environment, as the AWS SDKs read them.
        out.push((
            "[[providers]]\nname = \"bedrock\"\nkind = \"bedrock\"\n".to_string(),
            format!("bedrock/{model}"),
        ));
    }
    if env("GOOGLE_VERTEX_PROJECT").is_some() && env("GOOGLE_APPLICATION_CREDENTIALS").is_some() {
        let model = env("VERTEX_MODEL").unwrap_or_else(|| "gemini-2.5-flash".into());
        out.push((
            "[[providers]]\nname = \"vertex\"\nkind = \"vertex\"\n".to_string(),
            format!("vertex/{model}"),
        ));
    }
    out
}

#[tokio::test]
async fn live_generic_checks() {
    let targets = targets();
    if targets.is_empty() {
        eprintln!("no provider key set: nothing to test live");
        return;
    }
    for (provider, model) in targets {
        let text =
            format!("listen = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite::memory:\"\n{provider}");
        let env = |k: &str| std::env::var(k).ok();
        let cfg = from_toml(
            &text,
            &Inputs {
                env: &env,
                listen_override: None,
                catalog: Catalog::builtin(),
            },
        )
        .unwrap();
        let gw = polyplex::start(&cfg).await.unwrap();
        let url = format!("http://{}/v1/chat/completions", gw.addr);
        let client = reqwest::Client::new();
        let post = |body: Value| client.post(&url).json(&body).send();

        // plain chat with usage and cost
        let v: Value = post(json!({"model": model, "messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}], "max_tokens": 20}))
            .await.unwrap().json().await.unwrap();
        assert!(
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("paris"),
            "{model}: {v}"
        );
        assert!(
            v["usage"]["prompt_tokens"].as_u64().unwrap() > 0 && v["usage"]["cost"].is_number(),
            "{model}: {v}"
        );

        // streaming text ends with [DONE] and carries usage when asked
        let text = post(json!({"model": model, "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 30,
            "messages": [{"role": "user", "content": "Count from 1 to 5."}]})).await.unwrap().text().await.unwrap();
        assert!(text.trim_end().ends_with("data: [DONE]"), "{model}: {text}");
        assert!(text.contains("\"completion_tokens\""), "{model}: {text}");

        // a forced tool call with valid JSON arguments
        let v: Value = post(json!({"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})).await.unwrap().json().await.unwrap();
        let args = v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap_or("{}");
        assert!(
            serde_json::from_str::<Value>(args).unwrap()["location"].is_string(),
            "{model}: {v}"
        );

        // JSON mode returns JSON
        let v: Value = post(json!({"model": model, "max_tokens": 100, "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": "Return a JSON object with key \"city\" set to Paris."}]})).await.unwrap().json().await.unwrap();
        assert!(
            serde_json::from_str::<Value>(v["choices"][0]["message"]["content"].as_str().unwrap())
                .is_ok(),
            "{model}: {v}"
        );

        // an unknown model is the provider's 404, mapped
        let r = post(json!({"model": format!("{}/no-such-model-xyz", model.split('/').next().unwrap()), "messages": [{"role": "user", "content": "x"}], "max_tokens": 5})).await.unwrap();
        assert!(r.status().is_client_error(), "{model}: {}", r.status());
        gw.shutdown().await;
    }
}
