//! What the integration tests share: a gateway started from a config text.
#![allow(dead_code, clippy::unwrap_used)]

use polyplex::config::{from_toml, Config, Inputs};
use polyplex::Running;
use polyplex_catalog::Catalog;

/// `text` as a config, with no environment variables set.
pub fn config(text: &str) -> Config {
    let env = |_: &str| None;
    from_toml(
        text,
        &Inputs {
            env: &env,
            listen_override: None,
            catalog: Catalog::builtin(),
        },
    )
    .unwrap()
}

/// `polyplex mock` on a free loopback port, with its default options.
pub async fn mock() -> std::net::SocketAddr {
    let (addr, _) = polyplex::mock::spawn(
        "127.0.0.1:0".parse().unwrap(),
        polyplex::mock::MockOptions::default(),
    )
    .await
    .unwrap();
    addr
}

/// A fresh directory for a test's SQLite store, and the store's URL in it
/// (`polyplex-<name>-<random>`; the test removes the directory).
pub fn temp_store(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("polyplex-{name}-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("polyplex.db").display());
    (dir, url)
}

/// A request sent, its answer's JSON body.
pub async fn json(req: reqwest::RequestBuilder) -> serde_json::Value {
    req.send().await.unwrap().json().await.unwrap()
}

/// A gateway on the test's runtime, configured by `text`.
pub async fn start(text: &str) -> Running {
    polyplex::start(&config(text)).await.unwrap()
}
