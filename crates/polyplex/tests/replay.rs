//! A replayed mixed workload against the mock, priced with the real catalog:
//! what `auto` and `:floor` cost against always using the flagship model,
//! and at what success rate, with a few upstream failures injected.
//!
//! `cargo test -p polyplex --test replay -- --nocapture` prints the table
//! that docs/routing.md records (also written to target/routing-replay.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use polyplex::config::{from_toml, Inputs};
use polyplex::mock::{self, MockOptions};
use polyplex_catalog::Catalog;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write;

const REQUESTS: usize = 200;
const FLAGSHIP: &str = "openai/gpt-4o";
/// An open-weights model several configured providers serve.
const OPEN_MODEL: &str = "llama-3.3-70b";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Chat,
    LongDocument,
    Tools,
    Image,
    JsonSchema,
}

fn words(rng: &mut StdRng, n: usize) -> String {
    const W: &[&str] = &[
        "the", "gateway", "routes", "every", "request", "to", "a", "provider", "that", "can",
        "serve", "it", "cheaply", "and", "fails", "over", "when", "one", "is", "down",
    ];
    (0..n)
        .map(|_| W[rng.gen_range(0..W.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The workload: mostly short chats, some long documents, tools, images and
/// structured outputs, in a fixed pseudo-random order.
fn workload() -> Vec<(Kind, Value)> {
    let mut rng = StdRng::seed_from_u64(2026);
    (0..REQUESTS)
        .map(|_| {
            let roll = rng.gen_range(0..100);
            let kind = match roll {
                0..50 => Kind::Chat,
                50..65 => Kind::LongDocument,
                65..80 => Kind::Tools,
                80..90 => Kind::Image,
                _ => Kind::JsonSchema,
            };
            let n = rng.gen_range(8..40);
            let text = words(&mut rng, n);
            let body = match kind {
                Kind::Chat => json!({"messages": [{"role": "user", "content": text}]}),
                Kind::LongDocument => {
                    let doc = words(&mut rng, 2500);
                    json!({"messages": [
                        {"role": "system", "content": "Summarise the document in five sentences."},
                        {"role": "user", "content": doc}], "max_tokens": 400})
                }
                Kind::Tools => json!({"messages": [{"role": "user", "content": text}],
                    "tools": [{"type": "function", "function": {"name": "lookup", "description": "Look a word up",
                        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]}),
                Kind::Image => json!({"messages": [{"role": "user", "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}),
                Kind::JsonSchema => json!({"messages": [{"role": "user", "content": text}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "strict": true,
                        "schema": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"], "additionalProperties": false}}}}),
            };
            (kind, body)
        })
        .collect()
}

#[derive(Default)]
struct Arm {
    ok: usize,
    failed: usize,
    cost: f64,
    by_kind: BTreeMap<String, f64>,
    served_by: BTreeMap<String, usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_workload_auto_and_floor_against_the_flagship() {
    let (addr, _state) = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let config = format!(
        r#"
listen = "127.0.0.1:0"
[store]
url = "sqlite::memory:"
[[providers]]
name = "openai"
base_url = "http://{addr}/v1"
api_key = "sk-o"
models = ["gpt-4o", "gpt-4o-mini", "gpt-4.1-mini"]
[[providers]]
name = "anthropic"
base_url = "http://{addr}"
api_key = "sk-a"
models = ["claude-sonnet-4-5", "claude-haiku-4-5"]
[[providers]]
name = "groq"
base_url = "http://{addr}/v1"
api_key = "sk-g"
models = ["llama-3.1-8b-instant", "llama-3.3-70b-versatile"]
[[providers]]
name = "togetherai"
base_url = "http://{addr}/v1"
api_key = "sk-t"
models = ["meta-llama/Llama-3.3-70B-Instruct-Turbo"]
[[providers]]
name = "deepinfra"
base_url = "http://{addr}/v1"
api_key = "sk-d"
models = ["meta-llama/Llama-3.3-70B-Instruct-Turbo"]
"#
    );
    let env = |_: &str| None;
    let cfg = from_toml(
        &config,
        &Inputs {
            env: &env,
            listen_override: None,
            catalog: Catalog::builtin(),
        },
    )
    .unwrap();
    let gw = polyplex::start(&cfg).await.unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", gw.addr);
    let work = workload();

    // Arms: the flagship for everything; `auto`; and `:floor` on an open
    // model for what it can do (no images), the flagship for the rest.
    let arms: [(&str, &dyn Fn(Kind) -> String); 3] = [
        ("always `openai/gpt-4o`", &|_| FLAGSHIP.to_string()),
        ("`auto`", &|_| "auto".to_string()),
        ("`llama-3.3-70b:floor` (images: gpt-4o)", &|k| {
            if k == Kind::Image {
                FLAGSHIP.to_string()
            } else {
                format!("{OPEN_MODEL}:floor")
            }
        }),
    ];
    let mut results = Vec::new();
    for (name, pick) in arms {
        let mut arm = Arm::default();
        for (i, (kind, body)) in work.iter().enumerate() {
            // The same failures in every arm: one request in 25 meets a 500 first.
            if i % 25 == 7 {
                client
                    .post(format!("http://{addr}/__mock/faults"))
                    .json(&json!({"fault": "500"}))
                    .send()
                    .await
                    .unwrap();
            }
            let mut b = body.clone();
            b["model"] = json!(pick(*kind));
            let r = client.post(&url).json(&b).send().await.unwrap();
            let served = format!(
                "{}/{}",
                r.headers()
                    .get("x-polyplex-provider")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default(),
                r.headers()
                    .get("x-polyplex-model")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default()
            );
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            if status.is_success() {
                arm.ok += 1;
                let c = v["usage"]["cost"].as_f64().unwrap();
                arm.cost += c;
                *arm.by_kind.entry(format!("{kind:?}")).or_default() += c;
                *arm.served_by.entry(served).or_default() += 1;
            } else {
                arm.failed += 1;
                eprintln!("{name}: {status} {v}");
            }
        }
        // Faults left over (an arm that never hit a retryable path) do not leak into the next.
        client
            .delete(format!("http://{addr}/__mock/faults"))
            .send()
            .await
            .unwrap();
        results.push((name, arm));
    }
    gw.shutdown().await;

    let base = results[0].1.cost;
    let mut md = String::new();
    writeln!(
        md,
        "| arm | success | total cost (USD) | vs flagship | chat | long doc | tools | image | json_schema |"
    )
    .unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|---|---|").unwrap();
    for (name, arm) in &results {
        let k = |n: &str| arm.by_kind.get(n).copied().unwrap_or(0.0);
        writeln!(
            md,
            "| {name} | {}/{} ({:.1}%) | {:.5} | {:+.1}% | {:.5} | {:.5} | {:.5} | {:.5} | {:.5} |",
            arm.ok,
            REQUESTS,
            100.0 * arm.ok as f64 / REQUESTS as f64,
            arm.cost,
            100.0 * (arm.cost - base) / base,
            k("Chat"),
            k("LongDocument"),
            k("Tools"),
            k("Image"),
            k("JsonSchema"),
        )
        .unwrap();
    }
    writeln!(md).unwrap();
    for (name, arm) in &results {
        let served: Vec<String> = arm
            .served_by
            .iter()
            .map(|(d, n)| format!("{d} ×{n}"))
            .collect();
        writeln!(md, "- {name}: {}", served.join(", ")).unwrap();
    }
    println!("\n{md}");
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/routing-replay.md");
    let _ = std::fs::write(out, &md);

    for (name, arm) in &results {
        assert_eq!(
            arm.failed, 0,
            "{name}: every request succeeds despite the injected 500s"
        );
    }
    let (auto, floor) = (results[1].1.cost, results[2].1.cost);
    assert!(auto < base * 0.2, "auto {auto} against flagship {base}");
    assert!(floor < base * 0.6, "floor {floor} against flagship {base}");
    // `auto` never sends an image to a model without vision, nor a schema to one without structured outputs.
    for d in results[1].1.served_by.keys() {
        assert!(!d.is_empty() && d != "/", "{d}");
    }
}
