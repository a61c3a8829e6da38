//! Usage records: one per request, whatever its outcome, sent to a background
//! writer so the request path never waits on it. Today the writer logs each
//! record (target `polyplex::usage`) and updates the Prometheus counters; the
//! key/usage store plugs in here. On shutdown the channel is drained before
//! the process exits, so no record is lost.

use crate::routing::Deployment;
use polyplex_catalog::Catalog;
use polyplex_types::Usage;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub request_id: String,
    pub endpoint: &'static str,
    /// The model name the client asked for.
    pub requested_model: String,
    /// The provider and upstream model that served it (or were last tried).
    pub provider: Option<String>,
    pub model: Option<String>,
    pub status: u16,
    pub usage: Usage,
    pub cost_usd: f64,
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub attempts: u32,
    pub stream: bool,
    pub at: SystemTime,
}

const BATCH: usize = 1024;
/// Longest a record waits before it is written (when others came just before it).
const PAUSE: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<UsageRecord>,
}

impl Recorder {
    /// The recorder and the writer task; await the task after dropping every recorder.
    pub fn start() -> (Recorder, tokio::task::JoinHandle<u64>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<UsageRecord>();
        let task = tokio::spawn(async move {
            let mut written = 0u64;
            let mut handles = HashMap::new();
            let mut batch = Vec::with_capacity(BATCH);
            // Records are taken in batches with a pause between: while the
            // writer sleeps, sending a record wakes no one, so a busy gateway
            // pays one writer wake-up per pause instead of one per request.
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                for r in batch.drain(..) {
                    write(&r, &mut handles);
                    written += 1;
                }
                tokio::time::sleep(PAUSE).await;
            }
            written
        });
        (Recorder { tx }, task)
    }

    pub fn record(&self, r: UsageRecord) {
        if let Err(e) = self.tx.send(r) {
            // Only after the writer stopped (shutdown): write inline rather than lose it.
            write(&e.0, &mut HashMap::new());
        }
    }
}

/// The metric handles of one (endpoint, provider, status), registered once:
/// looking a labelled metric up in the registry on every record costs more
/// than the rest of the record.
struct Handles {
    requests: metrics::Counter,
    duration: metrics::Histogram,
    ttft: metrics::Histogram,
    prompt: metrics::Counter,
    completion: metrics::Counter,
    cost: metrics::Gauge,
}

type HandleKey = (&'static str, Option<String>, u16);

fn handles(r: &UsageRecord) -> Handles {
    let provider = r.provider.clone().unwrap_or_default();
    let status = r.status.to_string();
    Handles {
        requests: metrics::counter!("polyplex_requests_total", "endpoint" => r.endpoint, "provider" => provider.clone(), "status" => status),
        duration: metrics::histogram!("polyplex_request_duration_seconds", "endpoint" => r.endpoint, "provider" => provider.clone()),
        ttft: metrics::histogram!("polyplex_time_to_first_token_seconds", "provider" => provider.clone()),
        prompt: metrics::counter!("polyplex_tokens_total", "provider" => provider.clone(), "kind" => "prompt"),
        completion: metrics::counter!("polyplex_tokens_total", "provider" => provider.clone(), "kind" => "completion"),
        cost: metrics::gauge!("polyplex_cost_usd_total", "provider" => provider),
    }
}

fn write(r: &UsageRecord, cache: &mut HashMap<HandleKey, Handles>) {
    let key = (r.endpoint, r.provider.clone(), r.status);
    let h = cache.entry(key).or_insert_with(|| handles(r));
    h.requests.increment(1);
    h.duration.record(r.latency.as_secs_f64());
    if let Some(t) = r.ttft {
        h.ttft.record(t.as_secs_f64());
    }
    h.prompt.increment(r.usage.prompt_tokens);
    h.completion.increment(r.usage.completion_tokens);
    h.cost.increment(r.cost_usd);
    tracing::info!(
        target: "polyplex::usage",
        request_id = %r.request_id,
        endpoint = r.endpoint,
        requested_model = %r.requested_model,
        provider = r.provider.as_deref().unwrap_or("-"),
        model = r.model.as_deref().unwrap_or("-"),
        status = r.status,
        prompt_tokens = r.usage.prompt_tokens,
        completion_tokens = r.usage.completion_tokens,
        cached_tokens = r.usage.cached_tokens,
        estimated = r.usage.estimated,
        cost_usd = r.cost_usd,
        latency_ms = r.latency.as_millis() as u64,
        ttft_ms = r.ttft.map(|t| t.as_millis() as u64),
        attempts = r.attempts,
        stream = r.stream,
        "usage"
    );
}

/// The cost in USD of `usage` on deployment `d` (0 when no price is known).
pub fn cost(catalog: &Catalog, d: &Deployment, usage: &Usage) -> f64 {
    d.upstream
        .price(catalog, &d.model, usage.prompt_tokens)
        .map(|p| {
            p.cost(
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.completion_tokens,
            )
        })
        .unwrap_or(0.0)
}

/// `usage.cost` as OpenRouter writes it: a JSON number, rounded to 1e-10 USD.
pub fn cost_json(c: f64) -> serde_json::Value {
    let rounded = (c * 1e10).round() / 1e10;
    serde_json::Number::from_f64(rounded)
        .map_or(serde_json::Value::from(0), serde_json::Value::Number)
}
