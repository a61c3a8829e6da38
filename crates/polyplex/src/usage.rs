//! Usage records: one per request, whatever its outcome, sent to a background
//! writer so the request path never waits on it. The writer logs each record
//! (target `polyplex::usage`), updates the Prometheus counters and writes the
//! records to the store in batches, one transaction each, adding their cost
//! to their keys' spend. A key's tokens and cost count against its limits
//! and budget when the record is made, before it is written. Records the
//! store does not take are held and written when it answers again, or
//! spooled to a file at shutdown ([`crate::spool`]); on shutdown the
//! channel is drained before the process exits, so no record is lost.

use crate::background::Background;
use crate::keys::KeyEntry;
use crate::routing::Deployment;
use crate::shared::SharedLimits;
use crate::spool::Held;
use crate::store::Store;
use polyplex_catalog::Catalog;
use polyplex_types::{JsonMap, Usage};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

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
    /// The gateway key that made the request, if any.
    pub key: Option<Arc<KeyEntry>>,
    /// Who and what the request said it was for.
    pub tags: Tags,
    /// The spend this record added to its key, not yet in the store (set by
    /// [`Recorder::record`]).
    pub charged: u64,
}

/// What a request says about itself for its usage record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tags {
    /// The end user it names (`user`, else `safety_identifier`).
    pub user: Option<String>,
    /// Its metadata pairs as a JSON object: the `x-polyplex-metadata`
    /// header's, then the body's `metadata`, then its key's, each winning a
    /// key an earlier one names.
    pub metadata: Option<Arc<str>>,
}

impl Tags {
    /// The tags of a request naming `user`, with the metadata pairs of
    /// `layers` — its header's, its body's, its key's — each winning a key
    /// an earlier one names too.
    pub fn new(user: Option<String>, layers: &[Option<&JsonMap>]) -> Tags {
        let mut given = layers.iter().flatten();
        let metadata = match (given.next(), given.next()) {
            (None, _) => None,
            (Some(one), None) => Some(text_of(one)),
            (Some(first), Some(second)) => {
                let mut all = JsonMap::clone(first);
                for (k, v) in std::iter::once(second).chain(given).flat_map(|m| m.iter()) {
                    all.insert(k.clone(), v.clone());
                }
                Some(text_of(&all))
            }
        };
        Tags { user, metadata }
    }
}

fn text_of(pairs: &JsonMap) -> Arc<str> {
    // A map of strings always encodes.
    Arc::from(serde_json::to_string(pairs).unwrap_or_default())
}

const BATCH: usize = 1024;
/// Longest a record waits before it is written (unless it is the first after
/// an idle second).
const PAUSE: Duration = Duration::from_millis(20);
/// Empty looks (one per PAUSE) after which the writer waits for a record.
const IDLE_POLLS: u32 = 50;

/// What the writer is sent: a record, or a request to write what it has now.
/// Records go by value (the channel's slots are sized for them): boxing
/// would cost an allocation on every request for the rare flush's sake.
#[allow(clippy::large_enum_variant)]
pub enum Msg {
    Record(UsageRecord),
    Flush(oneshot::Sender<()>),
}

/// Takes the messages already sent, up to a batch, without waiting; true if
/// every sender is gone.
fn take_waiting(rx: &mut mpsc::UnboundedReceiver<Msg>, batch: &mut Vec<Msg>) -> bool {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(mpsc::error::TryRecvError::Empty) => return false,
            Err(mpsc::error::TryRecvError::Disconnected) => return true,
        }
    }
    false
}

/// The writer: takes the records as they come, logs them, counts them in
/// the metrics and writes them to the store in batches, until every
/// recorder is gone; returns how many it wrote. `own_thread`: it runs on a
/// thread of its own, which may go to the background (`background.rs`).
async fn write_all(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    store: Option<Store>,
    own_thread: bool,
    shared: Arc<Shared>,
    mut held: Held,
) -> u64 {
    let bg = if own_thread {
        Background::enter().map(|b| shared.background.get_or_init(|| b))
    } else {
        None
    };
    shared.took();
    // The writer's own store connection, opened from this thread so that
    // a SQLite connection's worker thread shares its policy.
    // (`owned`: a connection of its own, closed when the writer ends.)
    let (store, owned) = match store {
        Some(main) => {
            let before = Background::threads();
            match main.writer().await {
                Ok(Some(w)) => {
                    if let Some(bg) = bg {
                        bg.adopt_new(&before);
                    }
                    (Some(w), true)
                }
                Ok(None) => (Some(main), false),
                Err(e) => {
                    tracing::warn!(error = %e, "usage writer: no connection of its own; sharing the gateway's");
                    (Some(main), false)
                }
            }
        }
        None => (None, false),
    };
    let mut written = 0u64;
    let mut gauges: Option<(metrics::Gauge, metrics::Gauge)> = None;
    let mut meters = Meters::default();
    let mut folder = crate::telemetry::Folder::default();
    let mut lines = String::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut records: Vec<UsageRecord> = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    // While records keep coming the writer takes them every PAUSE, on its
    // own timer: sending a record wakes no one, so a request never pays
    // for (or races with) the writer waking up — not even one arriving
    // every 40 ms, as streams end. After IDLE_POLLS empty looks it waits
    // for the next record instead (an idle gateway does not wake 50 times
    // a second). A full batch means more are waiting: the next is taken at
    // once, so a writer slower than the traffic (a store's round trip per
    // batch) never falls behind for PAUSE at a time.
    let mut empty = 0u32;
    let mut full = false;
    loop {
        if empty >= IDLE_POLLS {
            // (Woken for the held records' next try too.)
            let got = match held.next_try() {
                Some(at) => tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => Some(n),
                    () = tokio::time::sleep_until(at.into()) => None,
                },
                None => Some(rx.recv_many(&mut batch, BATCH).await),
            };
            if got == Some(0) {
                break;
            }
        } else {
            if !full {
                tokio::time::sleep(PAUSE).await;
            }
            if take_waiting(&mut rx, &mut batch) && batch.is_empty() {
                break;
            }
        }
        shared.took();
        full = batch.len() >= BATCH;
        if batch.is_empty() {
            if let Some(store) = &store {
                held.retry(store, BATCH).await;
            }
            empty += 1;
            continue;
        }
        empty = 0;
        for m in batch.drain(..) {
            match m {
                Msg::Record(r) => records.push(r),
                Msg::Flush(done) => flushes.push(done),
            }
        }
        // How long the oldest record has waited: a writer that falls
        // behind leaves the background (before and after its store write,
        // which its connection's thread may be slow to do).
        let oldest = records.first().map(|r| r.at);
        let lag = || {
            oldest
                .and_then(|at| SystemTime::now().duration_since(at).ok())
                .unwrap_or_default()
        };
        if let Some(bg) = bg {
            bg.observe(lag());
        }
        let mut samples = 0;
        for r in &records {
            samples += write(r, &mut meters, &mut lines);
            written += 1;
        }
        folder.recorded(samples);
        flush(&mut lines);
        if let Some(store) = &store {
            held.write(store, &mut records).await;
            held.retry(store, BATCH).await;
        }
        let waited = lag();
        if let Some(bg) = bg {
            bg.observe(waited);
        }
        if oldest.is_some() {
            // Made at the first records, once the metrics recorder is in.
            let (lag_gauge, bg_gauge) = gauges.get_or_insert_with(|| {
                (
                    metrics::gauge!("polyplex_usage_writer_lag_seconds"),
                    metrics::gauge!("polyplex_usage_writer_background"),
                )
            });
            lag_gauge.set(waited.as_secs_f64());
            bg_gauge.set(if bg.is_some_and(Background::is_idle) {
                1.0
            } else {
                0.0
            });
        }
        records.clear();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
    if let Some(store) = &store {
        held.finish(store, BATCH).await;
        if owned {
            store.close().await;
        }
    }
    written
}

/// What the writer and its recorders share.
struct Shared {
    /// The writer's threads' scheduling, once it has gone to the background.
    background: OnceLock<Background>,
    /// When the writer last took the records waiting, in ms since `base`.
    taken_ms: AtomicU64,
    base: Instant,
    /// Where a key's charges also go when replicas share limits (Redis).
    limits: OnceLock<Arc<SharedLimits>>,
}

/// Records a serving thread sends between two looks at the writer.
const LOOK_EVERY: u32 = 256;
/// A writer in the background that has not taken records for this long
/// (it takes them every [`PAUSE`]) is not getting a CPU: it is called out
/// by the next recorder that looks, before its queue grows.
const STALLED: Duration = Duration::from_millis(60);

thread_local! {
    /// Records sent from this thread, to look at the writer every
    /// [`LOOK_EVERY`] without a shared counter.
    static SENT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl Shared {
    fn new() -> Shared {
        Shared {
            limits: OnceLock::new(),
            background: OnceLock::new(),
            taken_ms: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    fn since_base_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The writer has just taken the records waiting.
    fn took(&self) {
        self.taken_ms.store(self.since_base_ms(), Ordering::Relaxed);
    }

    /// A recorder's look: a writer in the background that has stalled is
    /// called out. (A writer idle for want of records is woken by the next
    /// one, and takes it at once.)
    fn look(&self) {
        if let Some(bg) = self.background.get() {
            if bg.is_idle()
                && self.since_base_ms()
                    > self.taken_ms.load(Ordering::Relaxed) + STALLED.as_millis() as u64
            {
                bg.hurry();
            }
        }
    }
}

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
    /// Where the writer alerts a failing store ([`Recorder::alerts`]).
    alerts: Arc<arc_swap::ArcSwapOption<crate::alerts::Alerts>>,
}

impl Recorder {
    /// The recorder and the writer, which runs on a thread of its own
    /// (`polyplex-usage`, in the background where the system allows it:
    /// `background.rs`); the handle resolves to the number of records
    /// written once every recorder is dropped and the writer has written
    /// them all. With a store, every record is also written there, through
    /// a connection of the writer's own; records it does not take are
    /// `held` (and spooled at the end: [`crate::spool`]), which may begin
    /// with an earlier run's.
    pub fn start(store: Option<Store>, held: Held) -> (Recorder, tokio::task::JoinHandle<u64>) {
        let (tx, rx) = mpsc::unbounded_channel::<Msg>();
        let alerts = held.alerts();
        let (done_tx, done_rx) = oneshot::channel();
        let shared = Arc::new(Shared::new());
        let bg = shared.clone();
        // Handed to the thread; taken back to run on the caller's runtime
        // should the thread or its runtime not start.
        let work = Arc::new(std::sync::Mutex::new(Some((rx, store, held))));
        let theirs = work.clone();
        let started = std::thread::Builder::new()
            .name("polyplex-usage".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => {
                        let Some((rx, store, held)) =
                            theirs.lock().ok().and_then(|mut w| w.take())
                        else {
                            return;
                        };
                        let _ = done_tx.send(rt.block_on(write_all(rx, store, true, bg, held)));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start the usage writer's thread; it runs on the main runtime");
                    }
                }
            });
        // On the caller's runtime, if the work is still here (the thread
        // or its runtime did not start; not if the writer panicked).
        let here = {
            let shared = shared.clone();
            async move {
                let w = work.lock().ok().and_then(|mut w| w.take());
                match w {
                    Some((rx, store, held)) => write_all(rx, store, false, shared, held).await,
                    None => 0,
                }
            }
        };
        let task = match started {
            Ok(_) => tokio::spawn(async move {
                match done_rx.await {
                    Ok(n) => n,
                    Err(_) => here.await,
                }
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the usage writer's thread; it runs on the main runtime");
                tokio::spawn(here)
            }
        };
        (Recorder { tx, shared, alerts }, task)
    }

    /// Sends a record to the writer; a key's tokens and cost count against
    /// its limits and budget from now on.
    pub fn record(&self, mut r: UsageRecord) {
        if let Some(k) = &r.key {
            let tokens = r.usage.prompt_tokens + r.usage.completion_tokens;
            let now = Instant::now();
            r.charged = k.charge(tokens, r.cost_usd, now);
            let limits = self.shared.limits.get();
            if let Some(limits) = limits {
                limits.charge(k, tokens, r.cost_usd);
            }
            // An end user's tokens and cost under the key's `user_tpm` and
            // `user_budget_usd`.
            if let Some(user) = r.tags.user.as_deref() {
                let spec = k.spec();
                if spec.user_tpm.is_some() && tokens > 0 {
                    k.charge_end_user(user, tokens, now);
                }
                if spec.user_budget_usd.is_some() && r.cost_usd > 0.0 {
                    k.add_end_user_spend(user, r.cost_usd);
                }
                if let Some(limits) = limits {
                    limits.charge_end_user(&spec, user, tokens, r.cost_usd);
                }
            }
        }
        let n = SENT.get().wrapping_add(1);
        SENT.set(n);
        if n.is_multiple_of(LOOK_EVERY) {
            self.shared.look();
        }
        if let Err(mpsc::error::SendError(Msg::Record(r))) = self.tx.send(Msg::Record(r)) {
            // Only after the writer stopped (shutdown): write inline rather than lose it.
            let mut line = String::new();
            write(&r, &mut Meters::default(), &mut line);
            flush(&mut line);
        }
    }

    /// From now on every key's tokens and cost are counted in `limits` too
    /// (for all replicas), as well as on this node.
    pub fn share_limits(&self, limits: Arc<SharedLimits>) {
        let _ = self.shared.limits.set(limits);
    }

    /// The alerts a store that fails (and recovers) is alerted through
    /// ([`crate::spool::ALERT_AFTER`]): the gateway puts (and a reload
    /// replaces) them here.
    pub fn alerts(&self) -> Arc<arc_swap::ArcSwapOption<crate::alerts::Alerts>> {
        self.alerts.clone()
    }

    /// Someone is about to wait for the writer (a flush, a shutdown): out
    /// of the background at once.
    pub fn hurry(&self) {
        if let Some(bg) = self.shared.background.get() {
            bg.hurry();
        }
    }

    /// Resolves once every record sent before it is written (to the store too).
    pub async fn flush(&self) {
        self.hurry();
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
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

type HandleKey = (&'static str, Option<String>, Option<String>, u16);

/// The metric handles registered so far. The last one used is tried first:
/// the records of a batch mostly share theirs, and then a record neither
/// hashes its key nor copies its provider's name to find them.
#[derive(Default)]
struct Meters {
    all: Vec<(HandleKey, Handles)>,
    by_key: HashMap<HandleKey, usize>,
    last: usize,
}

impl Meters {
    fn of(&mut self, r: &UsageRecord) -> &Handles {
        let hit =
            self.all
                .get(self.last)
                .is_some_and(|((endpoint, provider, model, status), _)| {
                    *endpoint == r.endpoint
                        && *status == r.status
                        && provider.as_deref() == r.provider.as_deref()
                        && model.as_deref() == r.model.as_deref()
                });
        if !hit {
            let key = (r.endpoint, r.provider.clone(), r.model.clone(), r.status);
            self.last = match self.by_key.get(&key) {
                Some(&i) => i,
                None => {
                    let i = self.all.len();
                    self.all.push((key.clone(), handles(r)));
                    self.by_key.insert(key, i);
                    i
                }
            };
        }
        &self.all[self.last].1
    }
}

fn handles(r: &UsageRecord) -> Handles {
    let provider = r.provider.clone().unwrap_or_default();
    let model = r.model.clone().unwrap_or_default();
    let status = r.status.to_string();
    Handles {
        requests: metrics::counter!("polyplex_requests_total", "endpoint" => r.endpoint, "provider" => provider.clone(), "model" => model.clone(), "status" => status),
        duration: metrics::histogram!("polyplex_request_duration_seconds", "endpoint" => r.endpoint, "provider" => provider.clone()),
        ttft: metrics::histogram!("polyplex_time_to_first_token_seconds", "provider" => provider.clone()),
        prompt: metrics::counter!("polyplex_tokens_total", "provider" => provider.clone(), "model" => model.clone(), "kind" => "prompt"),
        completion: metrics::counter!("polyplex_tokens_total", "provider" => provider.clone(), "model" => model.clone(), "kind" => "completion"),
        cost: metrics::gauge!("polyplex_cost_usd_total", "provider" => provider, "model" => model),
    }
}

/// Records one usage record: metrics, and its log line (text logs: appended
/// to `lines` for [`flush`]; JSON logs: a structured tracing event). The
/// number of histogram samples it recorded (for the writer's
/// [`crate::telemetry::Folder`]).
fn write(r: &UsageRecord, meters: &mut Meters, lines: &mut String) -> u64 {
    let h = meters.of(r);
    h.requests.increment(1);
    h.duration.record(r.latency.as_secs_f64());
    let mut samples = 1;
    if let Some(t) = r.ttft {
        h.ttft.record(t.as_secs_f64());
        samples += 1;
    }
    h.prompt.increment(r.usage.prompt_tokens);
    h.completion.increment(r.usage.completion_tokens);
    h.cost.increment(r.cost_usd);
    if !tracing::enabled!(target: "polyplex::usage", tracing::Level::INFO) {
        return samples;
    }
    if !crate::telemetry::json_logs() {
        text_line(r, std::time::SystemTime::now(), lines);
        return samples;
    }
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
        cost_usd = rounded_cost(r.cost_usd),
        latency_ms = r.latency.as_millis() as u64,
        ttft_ms = r.ttft.map(|t| t.as_millis() as u64),
        attempts = r.attempts,
        stream = r.stream,
        "usage"
    );
    samples
}

/// Writes a batch's text lines to stderr in one write.
fn flush(lines: &mut String) {
    if lines.is_empty() {
        return;
    }
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(lines.as_bytes());
    lines.clear();
}

/// Appends a value a client may have chosen, safe for a log line: control
/// characters (terminal escapes, newlines that would forge a line) escaped.
fn push_clean(out: &mut String, v: &str) {
    if v.chars().any(char::is_control) {
        out.extend(v.escape_debug());
    } else {
        out.push_str(v);
    }
}

/// One usage record as the line tracing's text format writes for an event
/// with these fields, written here piece by piece: tracing-subscriber's
/// per-character escaping made its version a tenth of the gateway's
/// instructions per request.
fn text_line(r: &UsageRecord, now: std::time::SystemTime, out: &mut String) {
    use std::fmt::Write;
    // Pieces pushed one by one rather than through one `write!`: the
    // formatting machinery (an argument table walked, every piece padded)
    // was most of the writer's own work per record.
    let mut n = itoa::Buffer::new();
    let _ = write!(out, "{}", humantime::format_rfc3339_micros(now));
    out.push_str("  INFO polyplex::usage: usage request_id=");
    push_clean(out, &r.request_id);
    out.push_str(" endpoint=");
    out.push_str(r.endpoint);
    out.push_str(" requested_model=");
    push_clean(out, &r.requested_model);
    out.push_str(" provider=");
    push_clean(out, r.provider.as_deref().unwrap_or("-"));
    out.push_str(" model=");
    push_clean(out, r.model.as_deref().unwrap_or("-"));
    out.push_str(" status=");
    out.push_str(n.format(r.status));
    out.push_str(" prompt_tokens=");
    out.push_str(n.format(r.usage.prompt_tokens));
    out.push_str(" completion_tokens=");
    out.push_str(n.format(r.usage.completion_tokens));
    out.push_str(" cached_tokens=");
    out.push_str(n.format(r.usage.cached_tokens));
    out.push_str(" estimated=");
    out.push_str(if r.usage.estimated { "true" } else { "false" });
    out.push_str(" cost_usd=");
    let _ = write!(out, "{}", rounded_cost(r.cost_usd));
    out.push_str(" latency_ms=");
    out.push_str(n.format(r.latency.as_millis()));
    out.push_str(" ttft_ms=");
    match r.ttft {
        Some(t) => out.push_str(n.format(t.as_millis())),
        None => out.push('-'),
    }
    out.push_str(" attempts=");
    out.push_str(n.format(r.attempts));
    out.push_str(" stream=");
    out.push_str(if r.stream { "true" } else { "false" });
    out.push_str(" key=");
    match &r.key {
        Some(k) => push_clean(out, &k.id()),
        None => out.push('-'),
    }
    // The request's metadata pairs, quoted (a client's text may hold
    // spaces) as tracing writes a string's Debug; only when it named any.
    // (Its end user's id is kept in the store only, not in logs.)
    if let Some(metadata) = &r.tags.metadata {
        out.push_str(" metadata=");
        push_quoted(out, metadata);
    }
    out.push('\n');
}

/// `v` in double quotes, escaped as Rust's `Debug` of a string does.
fn push_quoted(out: &mut String, v: &str) {
    out.push('"');
    out.extend(v.escape_debug());
    out.push('"');
}

/// The cost in USD of `usage` on deployment `d` (0 when no price is known):
/// its tokens at the catalog's prices, and its web searches at the
/// provider's price per search.
pub fn cost(catalog: &Catalog, d: &Deployment, usage: &Usage) -> f64 {
    let tokens = d
        .upstream
        .price(catalog, &d.model, usage.prompt_tokens)
        .map(|p| {
            p.cost(
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.cache_write_tokens,
                usage.completion_tokens,
            )
        })
        .unwrap_or(0.0);
    if usage.web_searches == 0 {
        return tokens;
    }
    tokens + usage.web_searches as f64 * d.upstream.protocol.web_search_price(&d.model)
}

/// A cost to 1e-10 USD: what is reported, without the float noise of the
/// sum it came from (0.000014099999999999999 is 0.0000141), and never
/// `-0.0` (an empty sum of floats is negative zero).
pub fn rounded_cost(c: f64) -> f64 {
    (c * 1e10).round() / 1e10 + 0.0
}

/// `usage.cost` as OpenRouter writes it: a JSON number, rounded to 1e-10 USD.
pub fn cost_json(c: f64) -> serde_json::Value {
    serde_json::Number::from_f64(rounded_cost(c))
        .map_or(serde_json::Value::from(0), serde_json::Value::Number)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spool::DEFAULT_PATH;
    use std::time::UNIX_EPOCH;

    /// A request's metadata: its header's pairs, then its body's, then its
    /// key's, each winning a key an earlier one names; none, none.
    #[test]
    fn tags_layer_the_metadata_pairs() {
        let m = |v: serde_json::Value| v.as_object().cloned().unwrap();
        let header = m(serde_json::json!({"team": "h", "env": "prod"}));
        let body = m(serde_json::json!({"team": "b", "feature": "qa"}));
        let key = m(serde_json::json!({"team": "k"}));
        let text = |layers: &[Option<&JsonMap>]| Tags::new(None, layers).metadata;
        assert_eq!(text(&[None, None, None]), None);
        assert_eq!(
            text(&[None, Some(&body), None]).as_deref(),
            Some(r#"{"team":"b","feature":"qa"}"#)
        );
        assert_eq!(
            text(&[Some(&header), Some(&body), None]).as_deref(),
            Some(r#"{"team":"b","env":"prod","feature":"qa"}"#)
        );
        assert_eq!(
            text(&[Some(&header), Some(&body), Some(&key)]).as_deref(),
            Some(r#"{"team":"k","env":"prod","feature":"qa"}"#)
        );
        assert_eq!(
            text(&[Some(&header), None, Some(&key)]).as_deref(),
            Some(r#"{"team":"k","env":"prod"}"#)
        );
        let t = Tags::new(Some("u".into()), &[None, None, Some(&key)]);
        assert_eq!(t.user.as_deref(), Some("u"));
    }

    pub(crate) fn record(model: &str) -> UsageRecord {
        UsageRecord {
            request_id: "req_1".into(),
            endpoint: "chat",
            requested_model: model.into(),
            provider: Some("openai".into()),
            model: None,
            status: 200,
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 5,
                cached_tokens: 2,
                ..Usage::default()
            },
            cost_usd: 0.25,
            latency: Duration::from_millis(42),
            ttft: None,
            attempts: 1,
            stream: false,
            at: UNIX_EPOCH,
            key: None,
            tags: Tags::default(),
            charged: 0,
        }
    }

    #[tokio::test]
    async fn writer_takes_every_record_and_drains_on_shutdown() {
        let (rec, task) = Recorder::start(None, Held::new(DEFAULT_PATH.into(), None));
        for _ in 0..3 {
            rec.record(record("m"));
        }
        tokio::time::sleep(PAUSE * 2).await;
        rec.record(record("m"));
        // Idle long enough that it waits for the next record instead of
        // looking every PAUSE; that record wakes it.
        tokio::time::sleep(PAUSE * (IDLE_POLLS + 5)).await;
        rec.record(record("m"));
        tokio::time::sleep(PAUSE / 2).await;
        rec.record(record("m"));
        drop(rec);
        let written = tokio::time::timeout(PAUSE * 10, task).await;
        assert_eq!(written.unwrap().unwrap(), 6);
    }

    /// With a SQLite file, the writer writes through a connection of its
    /// own (from its own thread); a flush waits until the records are in
    /// the store, which the gateway's connection then reads; shutdown
    /// writes the rest and closes the writer's connection.
    #[tokio::test]
    async fn writer_stores_through_its_own_connection() {
        let dir = std::env::temp_dir().join(format!("polyplex-usage-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let db = dir.join("w.db");
        let _ = std::fs::remove_file(&db);
        let store = Store::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let (rec, task) =
            Recorder::start(Some(store.clone()), Held::new(DEFAULT_PATH.into(), None));
        for _ in 0..5 {
            rec.record(record("m"));
        }
        rec.flush().await;
        // Someone waited on it: out of the background (where it went in).
        if let Some(bg) = rec.shared.background.get() {
            assert!(!bg.is_idle(), "a flush calls the writer out");
        }
        let rows = store
            .usage_report(crate::store::GroupBy::Provider, 0)
            .await
            .unwrap();
        assert_eq!(rows[0].requests, 5);
        for _ in 0..3 {
            rec.record(record("m"));
        }
        drop(rec);
        assert_eq!(task.await.unwrap(), 8);
        let rows = store
            .usage_report(crate::store::GroupBy::Provider, 0)
            .await
            .unwrap();
        assert_eq!(rows[0].requests, 8);
        // A file gets the writer a connection of its own; an in-memory
        // database has one connection, which the writer shares.
        assert!(store.writer().await.unwrap().is_some());
        let memory = Store::connect("sqlite::memory:").await.unwrap();
        assert!(memory.writer().await.unwrap().is_none());
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A writer in the background that stops taking records (no CPU for
    /// it) is called out of it by the next recorder's look.
    #[test]
    fn a_stalled_writer_is_called_out_by_a_recorder() {
        std::thread::spawn(|| {
            let shared = Shared::new();
            // On a thread of its own: entering moves the calling thread.
            let Some(bg) = Background::enter() else {
                return; // may not leave SCHED_IDLE here: never entered
            };
            let bg = shared.background.get_or_init(|| bg);
            shared.took();
            shared.look();
            assert!(bg.is_idle(), "it has just taken records");
            std::thread::sleep(STALLED + Duration::from_millis(20));
            shared.look();
            assert!(!bg.is_idle(), "stalled: called out");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn text_line_cost_has_no_float_noise() {
        let mut r = record("m");
        r.cost_usd = 14.0 * 0.15 / 1e6 + 20.0 * 0.6 / 1e6;
        let mut out = String::new();
        text_line(&r, UNIX_EPOCH, &mut out);
        assert!(out.contains(" cost_usd=0.0000141 "), "{out}");
        r.cost_usd = 0.1 + 0.2;
        out.clear();
        text_line(&r, UNIX_EPOCH, &mut out);
        assert!(out.contains(" cost_usd=0.3 "), "{out}");
    }

    #[test]
    fn no_cost_is_zero_not_negative_zero() {
        let none: f64 = std::iter::empty::<f64>().sum();
        assert_eq!(cost_json(none).to_string(), "0.0");
        assert_eq!(cost_json(-1e-12).to_string(), "0.0");
    }

    #[test]
    fn text_line_has_every_field_on_one_line() {
        let mut out = String::new();
        text_line(
            &record("gpt-4o"),
            UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            &mut out,
        );
        assert_eq!(
            out,
            "2023-11-14T22:13:20.123456Z  INFO polyplex::usage: usage request_id=req_1 endpoint=chat \
             requested_model=gpt-4o provider=openai model=- status=200 prompt_tokens=12 \
             completion_tokens=5 cached_tokens=2 estimated=false cost_usd=0.25 latency_ms=42 \
             ttft_ms=- attempts=1 stream=false key=-\n"
        );
    }

    #[test]
    fn text_line_names_the_key_and_metadata_quoted_not_the_end_user() {
        let mut r = record("gpt-4o");
        r.tags = Tags::new(
            Some("user 7 \"x\"".into()),
            &[Some(
                serde_json::json!({"team": "a b"})
                    .as_object()
                    .expect("an object"),
            )],
        );
        let mut out = String::new();
        text_line(&r, UNIX_EPOCH, &mut out);
        let want = concat!(r#" stream=false key=- metadata="{\"team\":\"a b\"}""#, "\n");
        assert!(out.ends_with(want), "{out}");
        assert!(!out.contains("user 7"), "{out}");
    }

    #[test]
    fn meters_are_one_per_endpoint_provider_and_status() {
        let mut m = Meters::default();
        let a = record("m");
        let mut b = record("m");
        b.status = 429;
        let mut c = record("m");
        c.provider = None;
        let mut d = record("m");
        d.endpoint = "embeddings";
        for r in [&a, &a, &b, &a, &c, &d, &c, &b] {
            let _ = m.of(r);
            let (key, _) = &m.all[m.last];
            assert_eq!(
                key,
                &(r.endpoint, r.provider.clone(), r.model.clone(), r.status)
            );
        }
        assert_eq!(m.all.len(), 4);
        assert_eq!(m.by_key.len(), 4);
    }

    #[test]
    fn text_line_writes_a_stream_with_its_first_token_time() {
        let mut r = record("gpt-4o");
        r.ttft = Some(Duration::from_millis(7));
        r.stream = true;
        r.usage.estimated = true;
        r.attempts = 12;
        r.latency = Duration::from_secs(90);
        let mut out = String::new();
        text_line(&r, UNIX_EPOCH, &mut out);
        assert!(
            out.ends_with(
                " estimated=true cost_usd=0.25 latency_ms=90000 ttft_ms=7 attempts=12 stream=true key=-\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn text_line_escapes_what_a_client_chose() {
        let mut out = String::new();
        text_line(&record("x\n\u{1b}[31mforged"), UNIX_EPOCH, &mut out);
        assert_eq!(out.matches('\n').count(), 1, "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(
            out.contains(r"requested_model=x\n\u{1b}[31mforged "),
            "{out}"
        );
    }
}
