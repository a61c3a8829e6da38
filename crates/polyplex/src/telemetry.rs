//! Logging (tracing; `RUST_LOG` filters, `POLYPLEX_LOG_FORMAT=json` for JSON
//! lines) and the Prometheus recorder behind `/metrics`.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

/// Whether logs are JSON lines (`POLYPLEX_LOG_FORMAT=json`), read once.
pub fn json_logs() -> bool {
    static JSON: OnceLock<bool> = OnceLock::new();
    *JSON.get_or_init(|| std::env::var("POLYPLEX_LOG_FORMAT").is_ok_and(|v| v == "json"))
}

pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = json_logs();
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// How often histogram samples are folded into their summaries.
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the samples histograms collected into their summaries, every
/// [`UPKEEP`], for as long as the runtime runs. The recorder keeps each
/// sample until then: without it, memory grows with every request between
/// two scrapes of `/metrics` (16 bytes a request, unbounded without scrapes).
pub fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

/// The process-wide Prometheus recorder (installed once).
pub fn metrics() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|_| handle)
        })
        .clone()
}
