//! Routing against `polyplex mock` upstreams with injected faults: failover,
//! strategies, `:floor`/`:nitro`/`auto`, per-request options, the circuit
//! breaker, rate-limit steering, hedging, and `GET /admin/providers`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use polyplex::mock::{self, MockOptions, MockState};
use polyplex::Running;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MASTER: &str = "routing-master-key";

struct Mock {
    addr: SocketAddr,
    state: Arc<MockState>,
}

struct Env {
    mocks: Vec<Mock>,
    gw: Running,
    client: reqwest::Client,
    /// The gateway's config, the mocks' addresses in it.
    text: String,
}

/// Starts one mock per option set, then the gateway with `config`, where
/// `MOCK0`, `MOCK1`, ... stand for the mocks' addresses.
async fn start(opts: &[MockOptions], config: &str) -> Env {
    let mut mocks = Vec::new();
    let mut text = format!("listen = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite::memory:\"\n[auth]\nmaster_key = \"{MASTER}\"\n{config}");
    for (i, o) in opts.iter().enumerate() {
        let (addr, state) = mock::spawn("127.0.0.1:0".parse().unwrap(), *o)
            .await
            .unwrap();
        text = text.replace(&format!("MOCK{i}"), &addr.to_string());
        mocks.push(Mock { addr, state });
    }
    let gw = common::start(&text).await;
    Env {
        mocks,
        gw,
        client: reqwest::Client::new(),
        text,
    }
}

fn provider(name: &str, mock: usize, extra: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"http://MOCK{mock}/v1\"\napi_key = \"sk-{name}\"\nmodels = [\"m\"]\nmax_retries = 0\ntimeout_ms = 5000\n{extra}\n"
    )
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
    took: Duration,
}

impl Answer {
    fn h(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

impl Env {
    async fn call(&self, body: Value) -> Answer {
        self.call_at(self.gw.addr, body).await
    }

    /// A call to the gateway at `addr` (another replica).
    async fn call_at(&self, addr: std::net::SocketAddr, body: Value) -> Answer {
        let t = Instant::now();
        let r = self
            .client
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(MASTER)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap();
        Answer {
            status,
            headers,
            body,
            took: t.elapsed(),
        }
    }

    /// Time to the response head (the first chunk, for a stream).
    async fn first_byte(&self, body: Value) -> (Duration, reqwest::Response) {
        let t = Instant::now();
        let r = self
            .client
            .post(format!("http://{}/v1/chat/completions", self.gw.addr))
            .bearer_auth(MASTER)
            .json(&body)
            .send()
            .await
            .unwrap();
        (t.elapsed(), r)
    }

    async fn fault(&self, mock: usize, f: Value) {
        let r = self
            .client
            .post(format!("http://{}/__mock/faults", self.mocks[mock].addr))
            .json(&f)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    fn served(&self, mock: usize) -> u64 {
        self.mocks[mock]
            .state
            .stats
            .requests
            .load(Ordering::Relaxed)
    }

    async fn admin(&self) -> Value {
        self.client
            .get(format!("http://{}/admin/providers", self.gw.addr))
            .bearer_auth(MASTER)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn deployment(&self, label: &str) -> Value {
        let a = self.admin().await;
        a["data"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["deployments"].as_array().unwrap().clone())
            .find(|d| d["deployment"] == label)
            .unwrap_or_else(|| panic!("{label} not in {a}"))
    }
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
}

fn stream(model: &str) -> Value {
    let mut b = chat(model);
    b["stream"] = json!(true);
    b
}

#[tokio::test]
async fn failover_on_every_kind_of_upstream_fault() {
    let config = format!(
        "{}{}{}{}[[routes]]\nname = \"r\"\ntargets = [\"down/m\", \"flaky/m\", \"good/m\"]\n[[routes]]\nname = \"fg\"\ntargets = [\"flaky/m\", \"good/m\"]\n[routing]\nbreaker_min_requests = 1000\n",
        "[[providers]]\nname = \"down\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodels = [\"m\"]\nmax_retries = 0\n",
        provider("flaky", 0, "").replace("max_retries = 0", "max_retries = 1").replace("timeout_ms = 5000", "timeout_ms = 400"),
        provider("good", 1, ""),
        "",
    );
    let env = start(&[MockOptions::default(), MockOptions::default()], &config).await;

    // Connection refused: on to the next deployment.
    let a = env.call(chat("r")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        (a.h("x-polyplex-provider"), a.h("x-polyplex-attempts")),
        ("flaky", "2")
    );
    assert_eq!(a.h("x-polyplex-fallbacks"), "down/m");

    // 500 twice: flaky's one retry is spent, then good answers.
    env.fault(0, json!({"fault": "500", "count": 2})).await;
    let a = env.call(chat("r")).await;
    assert_eq!(
        (
            a.status,
            a.h("x-polyplex-provider"),
            a.h("x-polyplex-attempts")
        ),
        (200, "good", "4")
    );
    assert_eq!(a.h("x-polyplex-fallbacks"), "down/m, flaky/m");

    // Timeouts (400 ms each, twice): then good.
    let mut quick = chat("flaky/m");
    quick["models"] = json!(["good/m"]);
    env.fault(0, json!({"fault": "timeout", "count": 2, "delay_ms": 3000}))
        .await;
    let a = env.call(quick).await;
    assert_eq!(
        (
            a.status,
            a.h("x-polyplex-provider"),
            a.h("x-polyplex-attempts")
        ),
        (200, "good", "3")
    );
    assert!(a.took < Duration::from_millis(2500), "{:?}", a.took);

    // 429 with retry-after: 1 — waited out on the same provider, not failed over.
    env.fault(0, json!({"fault": "429", "retry_after": 1}))
        .await;
    let a = env.call(chat("fg")).await;
    assert_eq!(
        (
            a.status,
            a.h("x-polyplex-provider"),
            a.h("x-polyplex-attempts")
        ),
        (200, "flaky", "2")
    );
    assert!(a.took >= Duration::from_millis(900), "{:?}", a.took);

    // Everything down: the last error, in OpenAI's shape.
    env.fault(0, json!({"fault": "503", "count": 2})).await;
    env.fault(1, json!({"fault": "503", "count": 1})).await;
    let a = env.call(chat("fg")).await;
    assert!(
        a.status == 503 || a.status == 502,
        "{} {}",
        a.status,
        a.body
    );
    assert!(a.json()["error"]["message"].is_string());

    // A stream that breaks before its first byte fails over invisibly...
    env.fault(
        0,
        json!({"fault": "disconnect", "after_chunks": 0, "count": 2}),
    )
    .await;
    let mut b = stream("flaky/m");
    b["models"] = json!(["good/m"]);
    let a = env.call(b).await;
    assert_eq!((a.status, a.h("x-polyplex-provider")), (200, "good"));
    assert_eq!(a.events().last().unwrap(), "[DONE]");
    // ... and one that breaks after it ends with an error event and no [DONE].
    env.fault(0, json!({"fault": "disconnect", "after_chunks": 2}))
        .await;
    let a = env.call(stream("flaky/m")).await;
    assert_eq!(a.status, 200);
    let ev = a.events();
    assert!(!ev.iter().any(|e| e == "[DONE]"), "{ev:?}");
    let last: Value = serde_json::from_str(ev.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{last}");
    assert!(ev.len() >= 3, "chunks came before the error: {ev:?}");
    // A 429 whose retry-after is beyond the wait limit fails over at once.
    env.fault(0, json!({"fault": "429", "retry_after": 60}))
        .await;
    let a = env.call(chat("fg")).await;
    assert_eq!((a.status, a.h("x-polyplex-provider")), (200, "good"));
    assert!(a.took < Duration::from_secs(5), "{:?}", a.took);
    // ... and that deployment now goes last while its retry-after runs.
    let a = env.call(chat("fg")).await;
    assert_eq!(
        (a.h("x-polyplex-provider"), a.h("x-polyplex-attempts")),
        ("good", "1")
    );

    env.gw.shutdown().await;
}

#[tokio::test]
async fn strategies_suffixes_auto_and_request_options_choose_what_they_should() {
    // `cheap` is slow to generate (50 tokens/s), `pricey` is instant.
    let slow = MockOptions {
        tokens_per_s: 50.0,
        ..MockOptions::default()
    };
    let config = format!(
        "{}{}{}{}[[routes]]\nname = \"smart\"\ntargets = [\"pricey/m\", \"cheap/m\"]\n[[routes]]\nname = \"thrifty\"\ntargets = [\"pricey/m\", \"cheap/m\"]\nstrategy = \"cost\"\n",
        provider("pricey", 1, "prices = { m = { input = 5.0, output = 15.0 } }"),
        provider("cheap", 0, "prices = { m = { input = 0.1, output = 0.2 } }"),
        "[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://MOCK1/v1\"\napi_key = \"sk-o\"\nmodels = [\"gpt-4o\", \"gpt-4o-mini\"]\n",
        "[[providers]]\nname = \"groq\"\nkind = \"openai\"\nbase_url = \"http://MOCK1/v1\"\napi_key = \"sk-g\"\nmodels = [\"llama-3.1-8b-instant\"]\n",
    );
    let env = start(&[slow, MockOptions::default()], &config).await;
    let who = |a: &Answer| format!("{}/{}", a.h("x-polyplex-provider"), a.h("x-polyplex-model"));

    // Priority: config order; cost: the cheaper one.
    assert_eq!(who(&env.call(chat("m")).await), "pricey/m");
    assert_eq!(who(&env.call(chat("smart")).await), "pricey/m");
    assert_eq!(who(&env.call(chat("thrifty")).await), "cheap/m");
    assert_eq!(who(&env.call(chat("m:floor")).await), "cheap/m");
    assert_eq!(who(&env.call(chat("smart:floor")).await), "cheap/m");
    // `:nitro`: fastest output once both are measured (both served above).
    let a = env.call(chat("m:nitro")).await;
    assert_eq!(who(&a), "pricey/m", "{}", env.admin().await);

    // OpenRouter-shaped options.
    let with = |model: &str, provider: Value| {
        let mut b = chat(model);
        b["provider"] = provider;
        b
    };
    assert_eq!(
        who(&env.call(with("m", json!({"sort": "price"}))).await),
        "cheap/m"
    );
    assert_eq!(
        who(&env
            .call(with("m:floor", json!({"sort": "throughput"})))
            .await),
        "pricey/m"
    );
    assert_eq!(
        who(&env.call(with("m", json!({"order": ["cheap"]}))).await),
        "cheap/m"
    );
    assert_eq!(
        who(&env.call(with("m", json!({"only": ["cheap"]}))).await),
        "cheap/m"
    );
    assert_eq!(
        who(&env.call(with("m", json!({"ignore": ["pricey"]}))).await),
        "cheap/m"
    );
    assert_eq!(
        who(&env
            .call(with(
                "m",
                json!({"max_price": {"prompt": 1, "completion": 1}})
            ))
            .await),
        "cheap/m"
    );
    let a = env
        .call(with("m", json!({"max_price": {"prompt": 0.01}})))
        .await;
    assert_eq!(
        (a.status, a.json()["error"]["param"].as_str()),
        (404, Some("provider"))
    );
    // `models`: the fallback list is tried in order after the primary.
    env.fault(1, json!({"fault": "500", "model": "m"})).await;
    let mut b = chat("pricey/m");
    b["models"] = json!(["openai/gpt-4o", "cheap/m"]);
    let a = env.call(b).await;
    assert_eq!(who(&a), "openai/gpt-4o");
    assert_eq!(a.h("x-polyplex-fallbacks"), "pricey/m");

    // auto: the cheapest configured model whose catalog capabilities fit.
    // Plain text: Groq's Llama 3.1 8B; an image needs vision: gpt-4o-mini.
    let a = env.call(chat("auto")).await;
    assert_eq!(
        (a.status, who(&a).as_str()),
        (200, "groq/llama-3.1-8b-instant")
    );
    assert!(a.json()["usage"]["cost"].as_f64().unwrap() > 0.0);
    let img = json!({"model": "auto", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]});
    assert_eq!(who(&env.call(img).await), "openai/gpt-4o-mini");
    let mut schema = chat("auto");
    schema["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}});
    assert_eq!(who(&env.call(schema).await), "openai/gpt-4o-mini");
    let mut long = chat("auto");
    long["max_tokens"] = json!(200000);
    let a = env.call(long).await;
    assert_eq!(
        (a.status, a.json()["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    // The model is listed for clients.
    let r = env
        .client
        .get(format!("http://{}/v1/models/auto", env.gw.addr))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (id, status) in [("m:floor", 200), ("smart:nitro", 200), ("nope:floor", 404)] {
        let r = env
            .client
            .get(format!("http://{}/v1/models/{id}", env.gw.addr))
            .bearer_auth(MASTER)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{id}");
    }
    let list: Value = env
        .client
        .get(format!("http://{}/v1/models", env.gw.addr))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "auto"));
    let admin = env.admin().await;
    assert!(admin["data"][0]["base_url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    env.gw.shutdown().await;
}

#[tokio::test]
async fn breaker_skips_a_failing_deployment_and_probes_it_back() {
    let config = format!(
        "{}{}[[routes]]\nname = \"r\"\ntargets = [\"a/m\", \"b/m\"]\n[routing]\nbreaker_min_requests = 3\nbreaker_error_ratio = 0.5\nbreaker_cooldown_ms = 500\n",
        provider("a", 0, ""),
        provider("b", 1, ""),
    );
    let env = start(&[MockOptions::default(), MockOptions::default()], &config).await;
    env.fault(0, json!({"fault": "500", "count": 3})).await;
    for _ in 0..3 {
        let a = env.call(chat("r")).await;
        assert_eq!(
            (a.h("x-polyplex-provider"), a.h("x-polyplex-attempts")),
            ("b", "2")
        );
    }
    assert_eq!(env.deployment("a/m").await["circuit"], "open");
    // Open: `a` is skipped without a request reaching it.
    let before = env.served(0);
    for _ in 0..3 {
        let a = env.call(chat("r")).await;
        assert_eq!(
            (a.h("x-polyplex-provider"), a.h("x-polyplex-attempts")),
            ("b", "1")
        );
        assert_eq!(a.h("x-polyplex-skipped"), "a/m");
    }
    assert_eq!(env.served(0), before);
    // When every deployment of a request is open it is tried anyway: the
    // breaker sheds load, it never makes a model a hard outage.
    let a = env.call(chat("a/m")).await;
    assert_eq!(
        (
            a.status,
            a.h("x-polyplex-provider"),
            a.h("x-polyplex-skipped")
        ),
        (200, "a", "a/m")
    );
    assert_eq!(env.served(0), before + 1);
    // So is an open deployment when every admitted one has failed.
    env.fault(1, json!({"fault": "500"})).await;
    let a = env.call(chat("r")).await;
    assert_eq!(
        (
            a.status,
            a.h("x-polyplex-provider"),
            a.h("x-polyplex-fallbacks")
        ),
        (200, "a", "b/m")
    );
    assert_eq!(env.served(0), before + 2);
    assert_eq!(env.deployment("a/m").await["circuit"], "open");
    // After the cooldown one probe goes through; it succeeds and closes the circuit.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let a = env.call(chat("r")).await;
    assert_eq!(
        (a.h("x-polyplex-provider"), a.h("x-polyplex-attempts")),
        ("a", "1")
    );
    assert_eq!(env.served(0), before + 3);
    let d = env.deployment("a/m").await;
    assert_eq!(
        (d["circuit"].as_str(), d["healthy"].as_bool()),
        (Some("closed"), Some(true))
    );
    // A failed probe reopens it.
    env.fault(0, json!({"fault": "500", "count": 4})).await;
    for _ in 0..3 {
        env.call(chat("r")).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let a = env.call(chat("r")).await;
    assert_eq!(
        (a.h("x-polyplex-provider"), a.h("x-polyplex-fallbacks")),
        ("b", "a/m")
    );
    assert_eq!(env.deployment("a/m").await["circuit"], "open");
    env.gw.shutdown().await;
}

/// With Redis, a circuit one replica opens is open on the others at once:
/// they skip the failing deployment without failing on it first — opened
/// by failed attempts, or by streams that broke after their first byte.
#[tokio::test]
async fn a_circuit_opened_on_one_replica_is_open_on_the_others() {
    shared_circuit(false).await;
    shared_circuit(true).await;
}

async fn shared_circuit(broken_streams: bool) {
    let Ok(redis) = std::env::var("POLYPLEX_TEST_REDIS") else {
        eprintln!("POLYPLEX_TEST_REDIS not set: shared circuit test skipped");
        return;
    };
    let config = format!(
        "{}{}[[routes]]\nname = \"r\"\ntargets = [\"a/m\", \"b/m\"]\n[routing]\nbreaker_min_requests = 3\nbreaker_error_ratio = 0.5\nbreaker_cooldown_ms = 30000\n[redis]\nurl = \"{redis}\"\n",
        provider("a", 0, ""),
        provider("b", 1, ""),
    );
    let mut conn = redis::Client::open(redis.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let subscribers = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let v: (String, u64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("polyplex:health")
                .query_async(&mut conn)
                .await
                .unwrap();
            v.1
        }
    };
    let others = subscribers(&mut conn).await;
    let env = start(&[MockOptions::default(), MockOptions::default()], &config).await;
    let replica = common::start(&env.text).await;
    // Both listening before the first failure.
    for _ in 0..100 {
        if subscribers(&mut conn).await >= others + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if broken_streams {
        // Each broken stream counts a success (its first byte) and a
        // failure: the circuit opens on the second.
        let fault = json!({"fault": "disconnect", "after_chunks": 2, "count": 2});
        env.fault(0, fault).await;
        for _ in 0..2 {
            let a = env.call(stream("r")).await;
            assert_eq!((a.status, a.h("x-polyplex-provider")), (200, "a"));
            assert!(!a.body.contains("[DONE]"), "{}", a.body);
        }
    } else {
        env.fault(0, json!({"fault": "500", "count": 3})).await;
        for _ in 0..3 {
            let a = env.call(chat("r")).await;
            assert_eq!(a.h("x-polyplex-attempts"), "2");
        }
    }
    assert_eq!(env.deployment("a/m").await["circuit"], "open");
    let before = env.served(0);
    let mut skipped = false;
    for _ in 0..100 {
        let a = env.call_at(replica.addr, chat("r")).await;
        assert_eq!(a.status, 200);
        if a.h("x-polyplex-skipped") == "a/m" {
            assert_eq!(
                (a.h("x-polyplex-provider"), a.h("x-polyplex-attempts")),
                ("b", "1")
            );
            skipped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(skipped, "the other replica never skipped a/m");
    // At most the requests sent before the message arrived reached `a`.
    assert!(env.served(0) <= before + 2, "{} {before}", env.served(0));
    replica.shutdown().await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn spent_rate_limits_steer_the_next_request_away() {
    let config = format!(
        "{}{}[[routes]]\nname = \"r\"\ntargets = [\"a/m\", \"b/m\"]\n",
        provider("a", 0, ""),
        provider("b", 1, ""),
    );
    let env = start(&[MockOptions::default(), MockOptions::default()], &config).await;
    env.fault(0, json!({"fault": "ratelimit", "retry_after": 30}))
        .await;
    // Served by `a`, whose headers say no requests are left for 30 s.
    assert_eq!(env.call(chat("r")).await.h("x-polyplex-provider"), "a");
    let before = env.served(0);
    for _ in 0..3 {
        let a = env.call(chat("r")).await;
        assert_eq!(
            (a.h("x-polyplex-provider"), a.h("x-polyplex-attempts")),
            ("b", "1")
        );
    }
    assert_eq!(
        env.served(0),
        before,
        "no request went to the spent deployment"
    );
    let d = env.deployment("a/m").await;
    assert_eq!(d["rate_limit"]["requests"]["remaining"], 0);
    assert_eq!(d["healthy"], false);
    // Still a last resort: when `b` fails, `a` is tried.
    env.fault(1, json!({"fault": "500"})).await;
    let a = env.call(chat("r")).await;
    assert_eq!((a.status, a.h("x-polyplex-provider")), (200, "a"));
    env.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_cuts_time_to_first_token_when_one_upstream_is_slow() {
    let slow = MockOptions {
        latency_ms: 2000,
        ..MockOptions::default()
    };
    let config = format!(
        "{}{}[[routes]]\nname = \"hedged\"\ntargets = [\"slow/m\", \"fast/m\"]\nhedge_after_ms = 150\n[[routes]]\nname = \"plain\"\ntargets = [\"slow/m\", \"fast/m\"]\n",
        provider("slow", 0, ""),
        provider("fast", 1, ""),
    );
    let env = start(&[slow, MockOptions::default()], &config).await;
    // Unhedged: the slow upstream's 2 s.
    let a = env.call(chat("plain")).await;
    assert_eq!(a.h("x-polyplex-provider"), "slow");
    assert!(a.took >= Duration::from_millis(1900), "{:?}", a.took);
    // Hedged: the second attempt after 150 ms wins.
    let a = env.call(chat("hedged")).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        (
            a.h("x-polyplex-provider"),
            a.h("x-polyplex-hedged"),
            a.h("x-polyplex-attempts")
        ),
        ("fast", "true", "2")
    );
    assert!(a.took < Duration::from_millis(1200), "{:?}", a.took);
    // Streams too: the time to the first chunk.
    let (ttft, r) = env.first_byte(stream("hedged")).await;
    assert_eq!(r.headers()["x-polyplex-provider"], "fast");
    assert!(ttft < Duration::from_millis(1200), "{ttft:?}");
    let body = r.text().await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    // A fast first deployment is never hedged.
    let fast_first = format!(
        "{}{}[[routes]]\nname = \"h\"\ntargets = [\"fast/m\", \"slow/m\"]\nhedge_after_ms = 150\n",
        provider("slow", 0, ""),
        provider("fast", 1, ""),
    );
    let env2 = start(&[slow, MockOptions::default()], &fast_first).await;
    let a = env2.call(chat("h")).await;
    assert_eq!(
        (
            a.h("x-polyplex-provider"),
            a.h("x-polyplex-hedged"),
            a.h("x-polyplex-attempts")
        ),
        ("fast", "", "1")
    );
    assert_eq!(env2.served(0), 0);
    env2.gw.shutdown().await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn admin_providers_shows_each_deployment_to_the_master_key_only() {
    let config = format!(
        "{}{}[[routes]]\nname = \"r\"\ntargets = [\"a/m\", \"b/m\"]\n",
        provider("a", 0, ""),
        provider("b", 1, ""),
    );
    // Paced, so that the stream lasts long enough (over 1 ms after its
    // first token) for its output speed to be measured.
    let paced = MockOptions {
        tokens_per_s: 1000.0,
        ..MockOptions::default()
    };
    let env = start(&[paced, MockOptions::default()], &config).await;
    for _ in 0..3 {
        env.call(chat("r")).await;
    }
    env.call(stream("r")).await;
    let url = format!("http://{}/admin/providers", env.gw.addr);
    assert_eq!(env.client.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        env.client
            .get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let a = env.admin().await;
    let text = a.to_string();
    assert!(
        !text.contains("sk-a") && !text.contains("sk-b"),
        "no provider key: {text}"
    );
    let d = env.deployment("a/m").await;
    assert_eq!(d["requests"], 4);
    assert_eq!(d["errors"], 0);
    assert_eq!(d["circuit"], "closed");
    assert_eq!(d["in_flight"], 0);
    assert!(d["latency_ms_avg"].as_f64().unwrap() > 0.0, "{d}");
    assert!(d["ttft_ms_avg"].as_f64().unwrap() > 0.0, "{d}");
    assert!(d["tokens_per_s_avg"].as_f64().is_some(), "{d}");
    assert_eq!(env.deployment("b/m").await["requests"], 0);
    env.gw.shutdown().await;
}
