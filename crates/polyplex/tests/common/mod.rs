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

/// A gateway on the test's runtime, configured by `text`.
pub async fn start(text: &str) -> Running {
    polyplex::start(&config(text)).await.unwrap()
}
