//! models.dev's public JSON (`https://models.dev/api.json`: provider id →
//! provider, each with its models by id) turned into this crate's catalog
//! format, for `polyplex catalog update`. The same mapping as
//! `scripts/gen_catalog.py`, which builds the catalog compiled into the
//! binary from models.dev's SQLite copy: the wire protocol from the
//! provider's AI-SDK package, base URLs models.dev leaves out from each
//! provider's API docs, and the self-hosted servers models.dev does not list.

use serde_json::{json, Map, Value};

/// models.dev names each provider's AI-SDK package; that tells the protocol.
const PROTOCOL_BY_NPM: &[(&str, &str)] = &[
    ("@ai-sdk/openai-compatible", "openai"),
    ("@ai-sdk/openai", "openai"),
    ("@ai-sdk/groq", "openai"),
    ("@ai-sdk/mistral", "openai"),
    ("@ai-sdk/togetherai", "openai"),
    ("@ai-sdk/perplexity", "openai"),
    ("@ai-sdk/deepinfra", "openai"),
    ("@ai-sdk/cerebras", "openai"),
    ("@ai-sdk/xai", "openai"),
    ("@ai-sdk/vercel", "openai"),
    ("@ai-sdk/gateway", "openai"),
    ("@openrouter/ai-sdk-provider", "openai"),
    ("@aihubmix/ai-sdk-provider", "openai"),
    ("venice-ai-sdk-provider", "openai"),
    ("merge-gateway-ai-sdk-provider", "openai"),
    ("@ai-sdk/anthropic", "anthropic"),
    ("@ai-sdk/google", "gemini"),
    ("@ai-sdk/google-vertex", "vertex"),
    ("@ai-sdk/google-vertex/anthropic", "vertex-anthropic"),
    ("@ai-sdk/amazon-bedrock", "bedrock"),
    ("@ai-sdk/azure", "azure"),
    ("@ai-sdk/cohere", "cohere"),
];

/// Base URLs models.dev leaves out, from each provider's public API docs
/// (for OpenAI-protocol providers, the prefix before `/chat/completions`).
const BASE_URL_FILL: &[(&str, &str)] = &[
    ("openai", "https://api.openai.com/v1"),
    ("anthropic", "https://api.anthropic.com"),
    ("google", "https://generativelanguage.googleapis.com"),
    ("cohere", "https://api.cohere.com"),
    ("cerebras", "https://api.cerebras.ai/v1"),
    ("deepinfra", "https://api.deepinfra.com/v1/openai"),
    ("groq", "https://api.groq.com/openai/v1"),
    ("mistral", "https://api.mistral.ai/v1"),
    ("perplexity", "https://api.perplexity.ai"),
    ("togetherai", "https://api.together.xyz/v1"),
    ("xai", "https://api.x.ai/v1"),
    ("v0", "https://api.v0.dev/v1"),
    ("venice", "https://api.venice.ai/api/v1"),
    ("vercel", "https://ai-gateway.vercel.sh/v1"),
    ("aihubmix", "https://aihubmix.com/v1"),
];

/// Self-hosted OpenAI-protocol servers: no key, any model name passed on.
const LOCAL_PROVIDERS: &[(&str, &str, &str, &str)] = &[
    (
        "ollama",
        "Ollama",
        "http://127.0.0.1:11434/v1",
        "https://github.com/ollama/ollama/blob/main/docs/openai.md",
    ),
    (
        "vllm",
        "vLLM",
        "http://127.0.0.1:8000/v1",
        "https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html",
    ),
    (
        "llamacpp",
        "llama.cpp server",
        "http://127.0.0.1:8080/v1",
        "https://github.com/ggml-org/llama.cpp/tree/master/tools/server",
    ),
];

fn lookup(table: &'static [(&'static str, &'static str)], key: &str) -> Option<&'static str> {
    table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn price(v: Option<&Value>) -> Value {
    match v.and_then(Value::as_f64) {
        Some(p) => json!((p * 1e6).round() / 1e6),
        None => Value::Null,
    }
}

fn prices(cost: &Value) -> Value {
    json!([
        price(cost.get("input")),
        price(cost.get("output")),
        price(cost.get("cache_read")),
        price(cost.get("cache_write"))
    ])
}

/// One models.dev model in the catalog's shape.
fn model(id: &str, m: &Value) -> Value {
    let flag = |k: &str| m.get(k).and_then(Value::as_bool).unwrap_or(false);
    let mut caps = Vec::new();
    if flag("tool_call") {
        caps.push("tools");
    }
    let image_in = m
        .pointer("/modalities/input")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "image"));
    if image_in {
        caps.push("vision");
    }
    if flag("structured_output") {
        caps.push("json_schema");
    }
    if flag("reasoning") {
        caps.push("reasoning");
    }
    if flag("attachment") {
        caps.push("attachments");
    }
    let limit = |k: &str| {
        m.pointer(&format!("/limit/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let mut out = Map::new();
    out.insert(
        "id".into(),
        json!(m.get("id").and_then(Value::as_str).unwrap_or(id)),
    );
    out.insert(
        "name".into(),
        json!(m.get("name").and_then(Value::as_str).unwrap_or(id)),
    );
    out.insert("context".into(), json!(limit("context")));
    out.insert("output".into(), json!(limit("output")));
    out.insert("caps".into(), json!(caps));
    if let Some(cost) = m.get("cost").filter(|c| c.is_object()) {
        out.insert("price".into(), prices(cost));
        // models.dev gives the price above 200k prompt tokens apart.
        if let Some(high) = cost.get("context_over_200k").filter(|c| c.is_object()) {
            let p = prices(high);
            let mut tier = vec![json!(200_000)];
            tier.extend(p.as_array().cloned().unwrap_or_default());
            out.insert("tiers".into(), json!([tier]));
        }
    }
    // Output modalities, when not just text (as scripts/gen_catalog.py).
    let mut answers: Vec<&str> = m
        .pointer("/modalities/output")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    answers.sort_unstable();
    if !answers.is_empty() && answers != ["text"] {
        out.insert("out".into(), json!(answers));
    }
    if let Some(s) = m.get("status").and_then(Value::as_str) {
        out.insert("status".into(), json!(s));
    }
    Value::Object(out)
}

/// Converts the text of models.dev's `api.json` into the catalog format's
/// text. Accepts the providers at the top level (as models.dev serves it)
/// or under `providers`.
pub fn convert(text: &str) -> Result<String, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let providers = match root.get("providers") {
        Some(Value::Object(p)) => p,
        _ => root
            .as_object()
            .ok_or("not a models.dev catalog: expected an object of providers")?,
    };
    let mut out = Vec::with_capacity(providers.len() + LOCAL_PROVIDERS.len());
    let mut ids: Vec<&String> = providers.keys().collect();
    ids.sort();
    for key in ids {
        let p = &providers[key];
        let Some(obj) = p.as_object() else { continue };
        let id = obj.get("id").and_then(Value::as_str).unwrap_or(key);
        let npm = obj.get("npm").and_then(Value::as_str).unwrap_or("");
        let protocol = lookup(PROTOCOL_BY_NPM, npm).unwrap_or("unsupported");
        let base = obj
            .get("api")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .or_else(|| lookup(BASE_URL_FILL, id));
        let env: Vec<&str> = obj
            .get("env")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut models: Vec<Value> = match obj.get("models") {
            Some(Value::Object(ms)) => ms.iter().map(|(mid, m)| model(mid, m)).collect(),
            Some(Value::Array(ms)) => ms
                .iter()
                .filter_map(|m| m.get("id").and_then(Value::as_str).map(|mid| model(mid, m)))
                .collect(),
            _ => Vec::new(),
        };
        models.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        out.push(json!({
            "id": id,
            "name": obj.get("name").and_then(Value::as_str).unwrap_or(id),
            "protocol": protocol,
            "npm": npm,
            "base_url": base,
            "env": env,
            "doc": obj.get("doc").and_then(Value::as_str).unwrap_or(""),
            "models": models,
        }));
    }
    if out.is_empty() {
        return Err("not a models.dev catalog: no providers in it".into());
    }
    for (id, name, base, doc) in LOCAL_PROVIDERS {
        if !out.iter().any(|p| p["id"] == *id) {
            out.push(json!({
                "id": id, "name": name, "protocol": "openai", "npm": "", "base_url": base,
                "env": [], "doc": doc, "models": [], "local": true,
            }));
        }
    }
    let catalog = json!({
        "attribution": "Provider and model data from models.dev (https://models.dev), MIT License, \
    Copyright (c) models.dev contributors. Base URLs marked filled come from each provider's docs.",
        "generated_at": Value::Null,
        "providers": out,
    });
    serde_json::to_string(&catalog).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Catalog;

    const SAMPLE: &str = r#"{
      "groq": {"id": "groq", "name": "Groq", "npm": "@ai-sdk/groq", "env": ["GROQ_API_KEY"],
               "doc": "https://console.groq.com/docs/models",
               "models": {"llama-9": {"id": "llama-9", "name": "Llama 9", "tool_call": true,
                  "modalities": {"input": ["text", "image"], "output": ["text"]},
                  "cost": {"input": 0.05, "output": 0.08},
                  "limit": {"context": 131072, "output": 8192}}}},
      "google": {"id": "google", "name": "Google", "npm": "@ai-sdk/google", "env": ["GEMINI_API_KEY"],
                 "models": {"gemini-9-pro": {"id": "gemini-9-pro", "name": "Gemini 9 Pro",
                    "structured_output": true, "reasoning": true,
                    "cost": {"input": 1.25, "output": 10, "cache_read": 0.31,
                             "context_over_200k": {"input": 2.5, "output": 15}},
                    "limit": {"context": 1048576, "output": 65536}, "status": "beta"},
                    "lyria-9": {"id": "lyria-9", "name": "Lyria 9",
                    "modalities": {"input": ["text", "image"], "output": ["audio"]},
                    "cost": {"input": 0, "output": 0}, "limit": {"context": 1048576, "output": 65536}},
                    "gemini-9-image": {"id": "gemini-9-image", "name": "Gemini 9 Image",
                    "modalities": {"input": ["text"], "output": ["text", "image"]},
                    "cost": {"input": 0.3, "output": 30}, "limit": {"context": 32768, "output": 8192}}}},
      "somebody": {"id": "somebody", "name": "Somebody", "npm": "some-other-sdk", "api": "https://x.example/v1",
                   "env": [], "models": {}}
    }"#;

    #[test]
    fn models_dev_becomes_a_catalog() {
        let c = Catalog::load(convert(SAMPLE).unwrap()).unwrap();
        let groq = c.provider("groq").unwrap();
        assert_eq!(groq.protocol, "openai");
        assert_eq!(
            groq.base_url.as_deref(),
            Some("https://api.groq.com/openai/v1")
        );
        assert_eq!(groq.env, ["GROQ_API_KEY"]);
        let m = c.model("groq", "llama-9").unwrap();
        assert!(m.has("tools") && m.has("vision") && !m.has("json_schema"));
        assert_eq!((m.context, m.output), (131_072, 8192));
        assert_eq!(m.price.unwrap().input, 0.05);
        let g = c.model("google", "gemini-9-pro").unwrap();
        assert_eq!(c.provider("google").unwrap().protocol, "gemini");
        assert!(g.has("json_schema") && g.has("reasoning"));
        assert_eq!(g.price_for(300_000).unwrap().input, 2.5);
        assert_eq!(g.price_for(1000).unwrap().cache_read, Some(0.31));
        assert_eq!(g.status.as_deref(), Some("beta"));
        // Output modalities: kept when not just text.
        assert!(g.out.is_empty() && g.answers_text() && m.answers_text());
        let music = c.model("google", "lyria-9").unwrap();
        assert_eq!(music.out, ["audio"]);
        assert!(!music.answers_text());
        let image = c.model("google", "gemini-9-image").unwrap();
        assert_eq!(image.out, ["image", "text"]);
        assert!(image.answers_text());
        assert_eq!(c.provider("somebody").unwrap().protocol, "unsupported");
        assert!(c.provider("ollama").unwrap().local);
    }

    #[test]
    fn what_is_not_a_catalog_is_refused() {
        assert!(convert("[1, 2]").is_err());
        assert!(convert("{}").is_err());
        assert!(convert("not json").unwrap_err().contains("not JSON"));
    }
}
