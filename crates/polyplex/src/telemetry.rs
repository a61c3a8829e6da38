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

/// Logs at `info` and above, or as `RUST_LOG` says. The plain level filter
/// when `RUST_LOG` is unset: an `EnvFilter` compiles its directive parser's
/// regular expressions at start, which costs the idle process about 0.3 MiB
/// of code and heap for nothing (docs/performance.md).
pub fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> =
        match std::env::var("RUST_LOG") {
            Ok(v) if !v.trim().is_empty() => {
                Box::new(EnvFilter::try_new(&v).unwrap_or_else(|_| EnvFilter::new("info")))
            }
            _ => Box::new(LevelFilter::INFO),
        };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = if json_logs() {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
}

/// How often histogram samples are folded into their buckets.
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the samples histograms collected into their buckets, every
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

/// Bucket bounds, in seconds, of the duration histograms
/// (`polyplex_request_duration_seconds`, `polyplex_time_to_first_token_seconds`):
/// from a cached answer to a long generation.
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// The process-wide Prometheus recorder (installed once). Durations are
/// Prometheus histograms (`_bucket`, `_sum`, `_count`), not summaries:
/// replicas' histograms add up in a query (`histogram_quantile` over a
/// `sum by (le)`), where per-process quantiles cannot be combined, and a
/// sample costs a bucket increment where a summary's sketch cost more.
pub fn metrics() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Only fails on an empty list.
            let builder = PrometheusBuilder::new()
                .set_buckets(&SECONDS_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|_| handle)
        })
        .clone()
}
