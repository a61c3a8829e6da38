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

/// Histogram samples left unfolded at most (see [`Folder`]).
const FOLD_AFTER: u64 = 2048;
/// Longest a histogram sample waits to be folded while records come.
const FOLD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Folds the samples the duration histograms collected into their buckets.
/// The Prometheus recorder keeps every recorded sample (16 bytes) until it
/// is folded — by a scrape of `/metrics` or by this — so between two folds
/// memory grows with the traffic: folded every 5 s, up to 6–7 MB waited at
/// 40,000 requests a second (two samples each); folding as below took 2–3
/// MiB off the peak RSS at c=256. Only the usage writer records histogram
/// samples, so it
/// folds after a batch once [`FOLD_AFTER`] samples have waited or
/// [`FOLD_EVERY`] has passed: at most ~2,000 samples wait at any rate, and
/// an idle gateway has nothing to fold and no timer for it (a scrape folds
/// whatever a last batch left).
pub struct Folder {
    pending: u64,
    last: std::time::Instant,
}

impl Default for Folder {
    fn default() -> Self {
        Self {
            pending: 0,
            last: std::time::Instant::now(),
        }
    }
}

impl Folder {
    /// `samples` more were recorded; folds them all when it is time. True
    /// if it folded.
    pub fn recorded(&mut self, samples: u64) -> bool {
        self.pending += samples;
        if self.pending == 0 || (self.pending < FOLD_AFTER && self.last.elapsed() < FOLD_EVERY) {
            return false;
        }
        // Only a recorder already installed: folding never installs one.
        if let Some(Some(handle)) = HANDLE.get() {
            handle.run_upkeep();
        }
        self.pending = 0;
        self.last = std::time::Instant::now();
        true
    }
}

/// Bucket bounds, in seconds, of the duration histograms
/// (`polyplex_request_duration_seconds`, `polyplex_time_to_first_token_seconds`):
/// from a cached answer to a long generation.
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide Prometheus recorder (installed once). Durations are
/// Prometheus histograms (`_bucket`, `_sum`, `_count`), not summaries:
/// replicas' histograms add up in a query (`histogram_quantile` over a
/// `sum by (le)`), where per-process quantiles cannot be combined, and a
/// sample costs a bucket increment where a summary's sketch cost more.
pub fn metrics() -> Option<PrometheusHandle> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn folds_after_enough_samples_or_a_second() {
        let mut f = Folder::default();
        assert!(!f.recorded(0), "nothing recorded, nothing to fold");
        assert!(!f.recorded(FOLD_AFTER - 1), "fewer than FOLD_AFTER wait");
        assert!(f.recorded(1), "the FOLD_AFTER-th sample folds them");
        assert!(!f.recorded(10), "counted again from zero after a fold");
        // A second later a few samples are folded too.
        f.last = Instant::now() - FOLD_EVERY - Duration::from_millis(1);
        assert!(f.recorded(1));
        assert!(!f.recorded(1));
        // Nothing waiting: an old fold time alone folds nothing.
        let mut idle = Folder {
            pending: 0,
            last: Instant::now() - FOLD_EVERY * 5,
        };
        assert!(!idle.recorded(0));
    }

    #[test]
    fn folded_samples_stay_counted() {
        let Some(handle) = metrics() else {
            return; // another recorder is installed in this test binary
        };
        let h = metrics::histogram!("polyplex_fold_test_seconds");
        for _ in 0..FOLD_AFTER {
            h.record(0.002);
        }
        let mut f = Folder::default();
        assert!(f.recorded(FOLD_AFTER));
        h.record(0.002);
        let text = handle.render();
        assert!(
            text.contains(&format!(
                "polyplex_fold_test_seconds_count {}",
                FOLD_AFTER + 1
            )),
            "{text}"
        );
        assert!(text.contains("polyplex_fold_test_seconds_bucket{le=\"0.005\"}"));
    }
}
