//! Gateway keys, limits, budgets and usage records, end to end: the admin
//! API, the store (a SQLite file, shared by two gateways as replicas would
//! share a database; Postgres when POLYPLEX_TEST_POSTGRES names one), a
//! restart, and limits and budgets shared by two replicas through Redis
//! (when POLYPLEX_TEST_REDIS names a server: scripts/test.sh sets it when
//! one answers on 127.0.0.1:6379; CI starts one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use polyplex::mock::{self, MockOptions};
use polyplex::Running;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const MASTER: &str = "test-master-key";

async fn gateway(mock: SocketAddr, store: &str) -> Running {
    replica(mock, store, None).await
}

/// A gateway on `store`, sharing limits through Redis at `redis` if given.
async fn replica(mock: SocketAddr, store: &str, redis: Option<&str>) -> Running {
    let redis = redis
        .map(|u| format!("[redis]\nurl = \"{u}\"\n"))
        .unwrap_or_default();
    let text = format!(
        r#"
listen = "127.0.0.1:0"
[store]
url = "{store}"
{redis}[auth]
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

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(gw: &Running) -> Self {
        Client {
            http: reqwest::Client::new(),
            base: format!("http://{}", gw.addr),
        }
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(MASTER);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Creates a key; its token and id.
    async fn new_key(&self, spec: Value) -> (String, String) {
        let (s, k) = self
            .admin(reqwest::Method::POST, "/admin/keys", Some(spec))
            .await;
        assert_eq!(s, 200, "{k}");
        let field = |f: &str| k[f].as_str().unwrap().to_string();
        (field("key"), field("id"))
    }

    async fn chat(&self, key: &str, model: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(key)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "count these words please"}]}))
            .send()
            .await
            .unwrap()
    }
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (status, v["error"].clone())
}

#[tokio::test]
async fn keys_limits_budgets_and_usage_survive_a_restart() {
    let mock = common::mock().await;
    let (dir, url) = common::temp_store("keys");
    let gw = gateway(mock, &url).await;
    let c = Client::new(&gw);

    // Create: the key appears once; its settings are echoed.
    let (s, k) = c
        .admin(
            reqwest::Method::POST,
            "/admin/keys",
            Some(json!({"name": "team-a", "models": ["gpt-4o-mini"], "rpm": 3})),
        )
        .await;
    assert_eq!(s, 200, "{k}");
    let token = k["key"].as_str().unwrap().to_string();
    let id = k["id"].as_str().unwrap().to_string();
    assert!(token.starts_with("plx-"));
    assert_eq!(k["rpm"], 3);
    assert_eq!(k["models"], json!(["gpt-4o-mini"]));

    // Never again: not in the list, not by id.
    let (_, list) = c.admin(reqwest::Method::GET, "/admin/keys", None).await;
    assert!(!list.to_string().contains(&token));
    assert_eq!(list["data"][0]["id"], json!(id));
    let (s, one) = c
        .admin(reqwest::Method::GET, &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(s, 200);
    assert!(one.get("key").is_none() && !one.to_string().contains(&token));

    // Bad settings are refused by name.
    let (s, e) = c
        .admin(
            reqwest::Method::POST,
            "/admin/keys",
            Some(json!({"name": "x", "rpm": -3})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["param"], "rpm");

    // The key works, for its model only, and not on the admin API.
    let r = c.chat(&token, "gpt-4o-mini").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "2");
    let (s, e) = error_of(c.chat(&token, "gpt-4o").await).await;
    assert_eq!((s, e["code"].as_str()), (403, Some("model_not_allowed")));
    let r = c
        .http
        .get(format!("{}/admin/keys", c.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let models: Value = c
        .http
        .get(format!("{}/v1/models", c.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["openai/gpt-4o-mini", "auto"]);

    // Requests per minute: the fourth in the minute is a 429 with retry-after.
    assert_eq!(c.chat(&token, "gpt-4o-mini").await.status(), 200);
    assert_eq!(c.chat(&token, "gpt-4o-mini").await.status(), 200);
    let r = c.chat(&token, "gpt-4o-mini").await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let (_, e) = error_of(r).await;
    assert_eq!(e["code"], "rate_limit_exceeded");

    // PATCH lifts the limit at once and sets a budget a hair above what
    // was spent: one more request, then the budget is gone.
    let (_, now) = c
        .admin(reqwest::Method::GET, &format!("/admin/keys/{id}"), None)
        .await;
    let spent = now["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0, "{now}");
    let (s, k2) = c
        .admin(
            reqwest::Method::PATCH,
            &format!("/admin/keys/{id}"),
            Some(json!({"rpm": null, "budget_usd": spent + 1e-9})),
        )
        .await;
    assert_eq!(s, 200, "{k2}");
    assert_eq!(k2["rpm"], Value::Null);
    assert_eq!(c.chat(&token, "gpt-4o-mini").await.status(), 200);
    let (s, e) = error_of(c.chat(&token, "gpt-4o-mini").await).await;
    assert_eq!(
        (s, e["type"].as_str()),
        (429, Some("insufficient_quota")),
        "{e}"
    );
    assert_eq!(e["code"], "insufficient_quota");

    // Usage: every request above, attributed to the key, costs summed.
    let (s, rep) = c
        .admin(reqwest::Method::GET, "/admin/usage?by=key", None)
        .await;
    assert_eq!(s, 200, "{rep}");
    let row = &rep["data"][0];
    assert_eq!(row["key"], json!(id));
    assert_eq!(row["key_name"], "team-a");
    assert_eq!(row["requests"], 7, "{rep}");
    assert_eq!(row["errors"], 3, "{rep}");
    let cost = row["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{rep}");
    let (_, by_model) = c
        .admin(reqwest::Method::GET, "/admin/usage?by=model&since=1h", None)
        .await;
    assert!(by_model["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["model"] == "gpt-4o-mini" && r["requests"].as_u64().unwrap() >= 4));
    let (s, e) = c
        .admin(reqwest::Method::GET, "/admin/usage?by=colour", None)
        .await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("by")));
    let (_, k3) = c
        .admin(reqwest::Method::GET, &format!("/admin/keys/{id}"), None)
        .await;
    assert!(
        (k3["spent_usd"].as_f64().unwrap() - cost).abs() < 1e-9,
        "{k3} {cost}"
    );

    // A restart on the same store: the key, its spend and the usage remain.
    let written = gw.shutdown().await;
    assert_eq!(written, 7);
    let gw = gateway(mock, &url).await;
    let c = Client::new(&gw);
    let (s, e) = error_of(c.chat(&token, "gpt-4o-mini").await).await;
    assert_eq!((s, e["code"].as_str()), (429, Some("insufficient_quota")));
    let (_, rep) = c
        .admin(reqwest::Method::GET, "/admin/usage?by=key", None)
        .await;
    assert_eq!(rep["data"][0]["requests"], 8);

    // Revoked: refused at once, and shown as revoked.
    let (s, d) = c
        .admin(reqwest::Method::DELETE, &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(d["revoked"], true);
    let (s, e) = error_of(c.chat(&token, "gpt-4o-mini").await).await;
    assert_eq!((s, e["code"].as_str()), (401, Some("invalid_api_key")));
    let (s, _) = c
        .admin(reqwest::Method::DELETE, "/admin/keys/key_nothing", None)
        .await;
    assert_eq!(s, 404);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Revoking answers with the key as `GET` shows it: its spend counts the
/// requests whose records the writer has not stored yet.
#[tokio::test]
async fn a_revoked_key_shows_all_it_spent() {
    let mock = common::mock().await;
    let (dir, url) = common::temp_store("revoke-spend");
    let gw = gateway(mock, &url).await;
    let c = Client::new(&gw);
    let (token, id) = c.new_key(json!({"name": "spender"})).await;
    let mut cost = 0.0;
    for _ in 0..3 {
        let r: Value = c.chat(&token, "gpt-4o").await.json().await.unwrap();
        cost += r["usage"]["cost"].as_f64().unwrap();
    }
    assert!(cost > 0.0);
    let (s, d) = c
        .admin(reqwest::Method::DELETE, &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["revoked"], true);
    let spent = d["spent_usd"].as_f64().unwrap();
    assert!((spent - cost).abs() < 1e-9, "{d} {cost}");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn replicas_sharing_a_store_see_new_and_revoked_keys() {
    let mock = common::mock().await;
    let (dir, url) = common::temp_store("keys");
    let a = gateway(mock, &url).await;
    let b = gateway(mock, &url).await;
    let (ca, cb) = (Client::new(&a), Client::new(&b));
    let (_, k) = ca
        .admin(
            reqwest::Method::POST,
            "/admin/keys",
            Some(json!({"name": "shared", "max_concurrent": 4, "expires_at": "1d"})),
        )
        .await;
    let token = k["key"].as_str().unwrap().to_string();
    let id = k["id"].as_str().unwrap().to_string();
    assert!(k["expires_at"].as_i64().unwrap() > polyplex::store::unix_now() + 86_000);
    // Made on A a moment ago: B finds it in the store.
    assert_eq!(cb.chat(&token, "gpt-4o").await.status(), 200);
    // Revoked on A: B refuses it after its next reload.
    ca.admin(reqwest::Method::DELETE, &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(ca.chat(&token, "gpt-4o").await.status(), 401);
    tokio::time::sleep(polyplex::keys::RELOAD + Duration::from_millis(700)).await;
    assert_eq!(cb.chat(&token, "gpt-4o").await.status(), 401);
    // An unknown plx- key is a 401 on both.
    assert_eq!(cb.chat("plx-not-a-real-key", "gpt-4o").await.status(), 401);
    a.shutdown().await;
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let mock = common::mock().await;
    let gw = gateway(mock, "sqlite::memory:").await;
    let c = Client::new(&gw);
    let (_, k) = c
        .admin(
            reqwest::Method::POST,
            "/admin/keys",
            Some(json!({"name": "old", "expires_at": "2020-01-01T00:00:00Z"})),
        )
        .await;
    let (s, e) = error_of(c.chat(k["key"].as_str().unwrap(), "gpt-4o").await).await;
    assert_eq!((s, e["code"].as_str()), (401, Some("expired_api_key")));
    gw.shutdown().await;
}

/// `x-ratelimit-remaining-tokens` on a unary answer counts that answer's
/// own tokens, as OpenAI's does; the requests header counts the request.
#[tokio::test]
async fn ratelimit_headers_count_the_answered_request() {
    let mock = common::mock().await;
    let gw = gateway(mock, "sqlite::memory:").await;
    let c = Client::new(&gw);
    let (token, _) = c
        .new_key(json!({"name": "t", "rpm": 10, "tpm": 100000}))
        .await;
    let mut used = 0;
    for i in 1..=2u64 {
        let r = c.chat(&token, "gpt-4o").await;
        assert_eq!(r.status(), 200);
        let h = |n: &str| r.headers()[n].to_str().unwrap().to_string();
        assert_eq!(h("x-ratelimit-limit-tokens"), "100000");
        assert_eq!(h("x-ratelimit-remaining-requests"), (10 - i).to_string());
        let remaining: u64 = h("x-ratelimit-remaining-tokens").parse().unwrap();
        let body: Value = r.json().await.unwrap();
        used += body["usage"]["total_tokens"].as_u64().unwrap();
        assert!(used > 0);
        assert_eq!(remaining, 100000 - used, "request {i}");
    }
    gw.shutdown().await;
}

/// The same store operations on Postgres, in a database made for the test.
#[tokio::test]
async fn postgres_store() {
    let Ok(base) = std::env::var("POLYPLEX_TEST_POSTGRES") else {
        eprintln!("POLYPLEX_TEST_POSTGRES not set: Postgres store test skipped");
        return;
    };
    use sqlx::Connection;
    let name = format!("polyplex_test_{:08x}", rand::random::<u32>());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = match base.rfind('/') {
        Some(i) => format!("{}/{name}", &base[..i]),
        None => panic!("POLYPLEX_TEST_POSTGRES must name a database: {base}"),
    };
    let mock = common::mock().await;
    let gw = gateway(mock, &url).await;
    let c = Client::new(&gw);
    let (_, k) = c
        .admin(
            reqwest::Method::POST,
            "/admin/keys",
            Some(json!({"name": "pg", "budget_usd": 5, "tpm": 100000})),
        )
        .await;
    let token = k["key"].as_str().unwrap();
    for _ in 0..3 {
        let r = c.chat(token, "gpt-4o").await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("x-ratelimit-remaining-tokens"));
    }
    for by in ["key", "model", "provider", "day"] {
        let (s, rep) = c
            .admin(reqwest::Method::GET, &format!("/admin/usage?by={by}"), None)
            .await;
        assert_eq!(s, 200, "{rep}");
        assert_eq!(rep["total"]["requests"], 3, "{by}: {rep}");
    }
    let (_, rep) = c
        .admin(reqwest::Method::GET, "/admin/usage?by=key", None)
        .await;
    let (_, k2) = c
        .admin(
            reqwest::Method::GET,
            &format!("/admin/keys/{}", k["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(
        (k2["spent_usd"].as_f64().unwrap() - rep["data"][0]["cost_usd"].as_f64().unwrap()).abs()
            < 1e-9
    );
    assert_eq!(gw.shutdown().await, 3);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

fn test_redis() -> Option<String> {
    let url = std::env::var("POLYPLEX_TEST_REDIS").ok();
    if url.is_none() {
        eprintln!("POLYPLEX_TEST_REDIS not set: shared limits test skipped");
    }
    url
}

/// Two replicas on one store and one Redis, and a key made on the first
/// with `settings`: the replicas' clients and the key's token.
struct Replicas {
    a: Running,
    b: Running,
    ca: Client,
    cb: Client,
    key: String,
    dir: PathBuf,
}

impl Replicas {
    async fn start(mock: SocketAddr, redis: &str, settings: Value) -> Self {
        let (dir, url) = common::temp_store("keys");
        let a = replica(mock, &url, Some(redis)).await;
        let b = replica(mock, &url, Some(redis)).await;
        let (ca, cb) = (Client::new(&a), Client::new(&b));
        let (s, k) = ca
            .admin(reqwest::Method::POST, "/admin/keys", Some(settings))
            .await;
        assert_eq!(s, 200, "{k}");
        let key = k["key"].as_str().unwrap().to_string();
        Replicas {
            a,
            b,
            ca,
            cb,
            key,
            dir,
        }
    }

    /// The key's id (its token is `key`).
    async fn ca_key_id(&self) -> String {
        let (_, list) = self
            .ca
            .admin(reqwest::Method::GET, "/admin/keys", None)
            .await;
        list["data"][0]["id"].as_str().unwrap().to_string()
    }

    async fn chat(&self, on_b: bool) -> reqwest::Response {
        let c = if on_b { &self.cb } else { &self.ca };
        c.chat(&self.key, "gpt-4o-mini").await
    }

    async fn stop(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn code_of(r: reqwest::Response) -> (u16, String) {
    let (s, e) = error_of(r).await;
    (s, e["code"].as_str().unwrap_or("").to_string())
}

#[tokio::test]
async fn requests_per_minute_are_counted_across_replicas() {
    let Some(redis) = test_redis() else { return };
    let mock = common::mock().await;
    let r = Replicas::start(mock, &redis, json!({"name": "rpm", "rpm": 3})).await;
    // Three in the minute, whichever replica serves them.
    let first = r.chat(false).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "3");
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "2");
    let second = r.chat(true).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(r.chat(false).await.status(), 200);
    // The fourth is refused on either, each alone having seen fewer.
    for on_b in [true, false] {
        let resp = r.chat(on_b).await;
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
    let Some(redis) = test_redis() else { return };
    let slow = MockOptions {
        latency_ms: 600,
        ..MockOptions::default()
    };
    let (mock, _) = mock::spawn("127.0.0.1:0".parse().unwrap(), slow)
        .await
        .unwrap();
    let settings = json!({"name": "one-at-a-time", "max_concurrent": 1});
    let r = Replicas::start(mock, &redis, settings).await;
    let (held, refused) = tokio::join!(r.chat(false), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        r.chat(true).await
    });
    assert_eq!(held.status(), 200);
    assert_eq!(code_of(refused).await, (429, "rate_limit_exceeded".into()));
    // The slot is given back when the request ends (in the background).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.chat(true).await.status(), 200);
    r.stop().await;
}

#[tokio::test]
async fn tokens_per_minute_and_budget_hold_across_replicas() {
    let Some(redis) = test_redis() else { return };
    let mock = common::mock().await;
    // Tokens: one answer uses more than the limit; the next request is
    // refused on the other replica, naming tokens.
    let r = Replicas::start(mock, &redis, json!({"name": "tpm", "tpm": 10})).await;
    let ok = r.chat(false).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-ratelimit-limit-tokens"], "10");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, e) = error_of(r.chat(true).await).await;
    assert_eq!(s, 429);
    assert!(e["message"].as_str().unwrap().contains("(TPM)"), "{e}");
    r.stop().await;

    // Budget: less than one request costs; spent on A, B refuses the next
    // at once (long before its store reload would tell it).
    let settings = json!({"name": "budget", "budget_usd": 1e-6});
    let r = Replicas::start(mock, &redis, settings).await;
    assert_eq!(r.chat(false).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        code_of(r.chat(true).await).await,
        (429, "insufficient_quota".into())
    );
    // The budget lifted, a request spends without one, and a budget a hair
    // above the whole spend is set: the spend made without a budget counts.
    let path = format!("/admin/keys/{}", r.ca_key_id().await);
    let patch = |v: Value| r.ca.admin(reqwest::Method::PATCH, &path, Some(v));
    assert_eq!(patch(json!({"budget_usd": null})).await.0, 200);
    assert_eq!(r.chat(false).await.status(), 200);
    let (_, now) = r.ca.admin(reqwest::Method::GET, &path, None).await;
    let spent = now["spent_usd"].as_f64().unwrap();
    assert_eq!(patch(json!({"budget_usd": spent + 1e-9})).await.0, 200);
    assert_eq!(
        code_of(r.chat(false).await).await,
        (429, "insufficient_quota".into())
    );
    r.stop().await;
}

impl Client {
    async fn chat_as(&self, key: &str, user: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(key)
            .json(&json!({"model": "gpt-4o-mini", "user": user,
                          "messages": [{"role": "user", "content": "count these words please"}]}))
            .send()
            .await
            .unwrap()
    }
}

/// The Redis key of an end user's spend under a key (as `shared` names it).
fn end_user_spend_name(key_id: &str, user: &str) -> String {
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(user.as_bytes())[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("polyplex:{{user:{key_id}:{hex}}}:spend")
}

#[tokio::test]
async fn an_end_users_budget_holds_across_replicas_at_once() {
    let Some(redis) = test_redis() else { return };
    let mock = common::mock().await;
    let settings = json!({"name": "per-user", "user_budget_usd": 1e-6});
    let r = Replicas::start(mock, &redis, settings).await;
    assert_eq!(r.ca.chat_as(&r.key, "ann").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Spent on A, refused on B at once (no store read in between).
    let (s, e) = error_of(r.cb.chat_as(&r.key, "ann").await).await;
    assert_eq!((s, e["code"].as_str()), (429, Some("insufficient_quota")));
    assert!(
        e["message"].as_str().unwrap().contains("end user 'ann'"),
        "{e}"
    );
    assert_eq!(r.cb.chat_as(&r.key, "bob").await.status(), 200);
    // Redis without ann's spend (expired, or a Redis started anew): it is
    // seeded from the store's records, so B still refuses her.
    let name = end_user_spend_name(&r.ca_key_id().await, "ann");
    let client = redis::Client::open(redis.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let gone: i64 = redis::cmd("DEL")
        .arg(&name)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(gone, 1, "ann's spend was in Redis as {name}");
    let (s, e) = error_of(r.cb.chat_as(&r.key, "ann").await).await;
    assert_eq!((s, e["code"].as_str()), (429, Some("insufficient_quota")));
    let seeded: Option<i64> = redis::cmd("GET")
        .arg(&name)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(seeded.unwrap() > 0, "seeded from the store");
    r.stop().await;
}

/// Redis down: the gateways start, serve, and limit each key on their own.
#[tokio::test]
async fn without_redis_each_node_keeps_its_own_limits() {
    let mock = common::mock().await;
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("redis://{}", free.local_addr().unwrap());
    drop(free);
    let r = Replicas::start(mock, &dead, json!({"name": "local", "rpm": 2})).await;
    assert_eq!(r.chat(false).await.status(), 200);
    assert_eq!(r.chat(false).await.status(), 200);
    assert_eq!(
        code_of(r.chat(false).await).await,
        (429, "rate_limit_exceeded".into())
    );
    // B counts its own.
    assert_eq!(r.chat(true).await.status(), 200);
    r.stop().await;
}
