//! Usage records the store would not take: held in memory while it is
//! failing and written as soon as it answers again, and written to a file
//! (the *spool*, JSON lines) if the gateway stops before it does — or if
//! more than [`HELD_MAX`] wait (those come back from the file once the
//! store has taken the rest). The next start reads the spool back and
//! writes its records to the store before it takes new ones' turn, so a
//! store outage loses no record and no key's spend.
//!
//! The spool is `[store] spool` (default `polyplex-usage-spool.jsonl` in
//! the working directory). A start takes the file by renaming it first, so
//! two processes never read the same records.

use crate::alerts::Alerts;
use crate::keys::{KeyEntry, Keys};
use crate::store::Store;
use crate::usage::{Tags, UsageRecord};
use arc_swap::ArcSwapOption;
use polyplex_types::Usage;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Records held in memory at most; past it, the oldest go to the spool.
pub const HELD_MAX: usize = 100_000;
/// Tries at a batch before it is held (and how far apart, doubling).
const QUICK_TRIES: u32 = 3;
const QUICK_WAIT: Duration = Duration::from_millis(100);
/// Longest wait between two tries at the held records.
const MAX_WAIT: Duration = Duration::from_secs(8);
/// A store failing this long is alerted (`[alerts]`, event `store`).
pub const ALERT_AFTER: Duration = Duration::from_secs(10);

/// This process's run, as its spooled records name it: random, not the
/// process id, which a restart may well get again (PID 1 in a container).
fn run_id() -> u64 {
    static RUN: OnceLock<u64> = OnceLock::new();
    *RUN.get_or_init(|| rand::random::<u64>().max(1))
}

/// Records this process spooled.
static SPOOLED: AtomicU64 = AtomicU64::new(0);

/// How many usage records this process wrote to the spool.
pub fn spooled() -> u64 {
    SPOOLED.load(Ordering::Relaxed)
}

/// How many records wait in the spool at `path` (0 without one).
pub fn waiting(path: &Path) -> std::io::Result<usize> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter(|l| !l.trim().is_empty()).count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// The default spool file, in the working directory.
pub const DEFAULT_PATH: &str = "polyplex-usage-spool.jsonl";

/// One record as the spool keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Spooled {
    request_id: String,
    key_id: Option<String>,
    endpoint: String,
    requested_model: String,
    provider: Option<String>,
    model: Option<String>,
    status: u16,
    prompt_tokens: u64,
    completion_tokens: u64,
    #[serde(default)]
    cached_tokens: u64,
    #[serde(default)]
    cache_write_tokens: u64,
    #[serde(default)]
    reasoning_tokens: u64,
    #[serde(default)]
    web_searches: u64,
    #[serde(default)]
    estimated: bool,
    cost_usd: f64,
    latency_ms: u64,
    ttft_ms: Option<u64>,
    attempts: u32,
    stream: bool,
    /// Unix milliseconds.
    at_ms: u64,
    user: Option<String>,
    metadata: Option<String>,
    /// The run that spooled it ([`run_id`]), and the spend it added to
    /// its key there (still counted, unstored, if that run takes it back).
    #[serde(default)]
    run: u64,
    #[serde(default)]
    charged: u64,
}

impl Spooled {
    fn of(r: &UsageRecord) -> Spooled {
        Spooled {
            request_id: r.request_id.clone(),
            key_id: r.key.as_ref().map(|k| k.id()),
            endpoint: r.endpoint.to_string(),
            requested_model: r.requested_model.clone(),
            provider: r.provider.clone(),
            model: r.model.clone(),
            status: r.status,
            prompt_tokens: r.usage.prompt_tokens,
            completion_tokens: r.usage.completion_tokens,
            cached_tokens: r.usage.cached_tokens,
            cache_write_tokens: r.usage.cache_write_tokens,
            reasoning_tokens: r.usage.reasoning_tokens,
            web_searches: r.usage.web_searches,
            estimated: r.usage.estimated,
            cost_usd: r.cost_usd,
            latency_ms: r.latency.as_millis() as u64,
            ttft_ms: r.ttft.map(|t| t.as_millis() as u64),
            attempts: r.attempts,
            stream: r.stream,
            at_ms: r
                .at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            user: r.tags.user.clone(),
            metadata: r.tags.metadata.as_deref().map(str::to_string),
            run: run_id(),
            charged: r.charged,
        }
    }

    /// The record again; its key's spend counts it (as not yet stored)
    /// from now on.
    fn into_record(self, keys: &Keys) -> UsageRecord {
        let key = self.key_id.as_deref().and_then(|id| {
            let found = keys.by_id(id);
            if found.is_none() {
                tracing::warn!(key = id, request_id = %self.request_id, "a spooled usage record's key is gone from the store; written without it");
            }
            found
        });
        // Spooled by this process (past HELD_MAX): its key still counts it.
        let charged = if self.run == run_id() {
            self.charged
        } else {
            key.as_ref()
                .map_or(0, |k: &Arc<KeyEntry>| k.charge_restored(self.cost_usd))
        };
        UsageRecord {
            request_id: self.request_id,
            endpoint: endpoint_name(&self.endpoint),
            requested_model: self.requested_model,
            provider: self.provider,
            model: self.model,
            status: self.status,
            usage: Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.completion_tokens,
                cached_tokens: self.cached_tokens,
                cache_write_tokens: self.cache_write_tokens,
                reasoning_tokens: self.reasoning_tokens,
                web_searches: self.web_searches,
                estimated: self.estimated,
            },
            cost_usd: self.cost_usd,
            latency: Duration::from_millis(self.latency_ms),
            ttft: self.ttft_ms.map(Duration::from_millis),
            attempts: self.attempts,
            stream: self.stream,
            at: UNIX_EPOCH + Duration::from_millis(self.at_ms),
            key,
            tags: Tags {
                user: self.user,
                metadata: self.metadata.map(Arc::from),
            },
            charged,
        }
    }
}

/// A record's endpoint label as the `&'static str` records carry: each
/// distinct one read from a spool is kept for the life of the process
/// (there are a handful).
fn endpoint_name(s: &str) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = names.iter().find(|n| **n == s) {
        return n;
    }
    let n: &'static str = Box::leak(s.to_owned().into_boxed_str());
    names.push(n);
    n
}

/// Appends `records` to the spool at `path` (made if missing), synced to
/// disk before it returns.
pub fn save(path: &Path, records: &[UsageRecord]) -> std::io::Result<()> {
    let mut text = String::new();
    for r in records {
        // A record of strings and numbers always encodes.
        if let Ok(line) = serde_json::to_string(&Spooled::of(r)) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Takes the spool at `path`, if there is one: its records, each counted
/// in its key's spend. The file is renamed before it is read and removed
/// after, so a record is taken by one start only; a line that does not
/// parse is logged and skipped (the renamed file is then kept, for a
/// person to look at).
pub fn take(path: &Path, keys: &Keys) -> Result<Vec<UsageRecord>, String> {
    let taking = taking_path(path);
    match std::fs::rename(path, &taking) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot take {}: {e}", path.display())),
    }
    let text = std::fs::read_to_string(&taking)
        .map_err(|e| format!("cannot read {}: {e}", taking.display()))?;
    let mut records = Vec::new();
    let mut bad = 0usize;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Spooled>(line) {
            Ok(s) => records.push(s.into_record(keys)),
            Err(e) => {
                bad += 1;
                tracing::error!(file = %taking.display(), line = n + 1, error = %e, "a spooled usage record does not parse; skipped");
            }
        }
    }
    if bad == 0 {
        let _ = std::fs::remove_file(&taking);
    }
    Ok(records)
}

fn taking_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".taken-{:016x}", run_id()));
    PathBuf::from(name)
}

/// The records waiting for the store, oldest first, and when to try again.
pub struct Held {
    records: VecDeque<UsageRecord>,
    wait: Duration,
    next_try: Instant,
    /// Since when the store has been failing (for the log and alerts).
    since: Option<Instant>,
    /// Whether this failure was alerted (then its end is too).
    alerted: bool,
    spool: PathBuf,
    /// Whether this run put records in the spool (past [`HELD_MAX`]): they
    /// are taken back once the store takes the held ones.
    spilled: bool,
    /// The keys spooled records are read back for.
    keys: Option<Arc<Keys>>,
    /// Records held at most ([`HELD_MAX`]).
    max: usize,
    /// Where alerts go, once the gateway has made them.
    alerts: Arc<ArcSwapOption<Alerts>>,
}

impl Held {
    /// The held records of a run that starts: those an earlier run
    /// spooled, taken back first (their cost counted in their keys' spend
    /// from now on).
    pub async fn start(spool: PathBuf, keys: Arc<Keys>) -> Held {
        let mut held = Held::new(spool, Some(keys));
        held.spilled = true;
        held.take_back().await;
        held.gauge();
        held
    }

    /// Nothing held; `keys` to read the spool back for, if it may be.
    pub fn new(spool: PathBuf, keys: Option<Arc<Keys>>) -> Held {
        let held = Held {
            records: VecDeque::new(),
            wait: QUICK_WAIT,
            next_try: Instant::now(),
            since: None,
            alerted: false,
            spool,
            spilled: false,
            keys,
            max: HELD_MAX,
            alerts: Arc::default(),
        };
        held.gauge();
        held
    }

    /// Where the store's failure and recovery are alerted, once set.
    pub fn alerts(&self) -> Arc<ArcSwapOption<Alerts>> {
        self.alerts.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// When the held records are next tried (None: none are held).
    pub fn next_try(&self) -> Option<Instant> {
        (!self.records.is_empty()).then_some(self.next_try)
    }

    fn gauge(&self) {
        metrics::gauge!("polyplex_usage_records_held").set(self.records.len() as f64);
    }

    /// Writes `records` (a new batch) to the store: now, after the held
    /// ones, or holds them if the store does not take them.
    pub async fn write(&mut self, store: &Store, records: &mut Vec<UsageRecord>) {
        if records.is_empty() {
            return;
        }
        if self.records.is_empty() {
            let mut wait = QUICK_WAIT;
            for attempt in 1..=QUICK_TRIES {
                match store.write_usage(records).await {
                    Ok(spent) => {
                        stored(records, &spent);
                        records.clear();
                        return;
                    }
                    Err(e) if attempt < QUICK_TRIES => {
                        tracing::debug!(error = %e, attempt, "cannot write usage records; trying again");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, records = records.len(), "the store does not take usage records: holding them until it does");
                        self.since = Some(Instant::now());
                        self.wait = QUICK_WAIT * 4;
                        self.next_try = Instant::now() + self.wait;
                    }
                }
            }
        }
        self.records.extend(records.drain(..));
        if self.records.len() > self.max {
            let over = self.records.len() - self.max;
            let oldest: Vec<UsageRecord> = self.records.drain(..over).collect();
            self.spill(oldest).await;
        }
        self.gauge();
    }

    /// Tries the held records again if it is time: oldest first, a batch
    /// at a time, until they are all stored or the store fails.
    pub async fn retry(&mut self, store: &Store, batch: usize) {
        if self.records.is_empty() || Instant::now() < self.next_try {
            return;
        }
        let mut held = self.records.len();
        loop {
            if self.records.is_empty() {
                // What this run spooled (past HELD_MAX) comes back now.
                match self.take_back().await {
                    0 => break,
                    n => held += n,
                }
            }
            let n = self.records.len().min(batch);
            let chunk = &self.records.make_contiguous()[..n];
            match store.write_usage(chunk).await {
                Ok(spent) => {
                    stored(chunk, &spent);
                    self.records.drain(..n);
                }
                Err(e) => {
                    self.wait = (self.wait * 2).min(MAX_WAIT);
                    self.next_try = Instant::now() + self.wait;
                    tracing::warn!(error = %e, held = self.records.len(), retry_in_ms = self.wait.as_millis() as u64, "the store still does not take usage records");
                    self.gauge();
                    let failing_for = self.since.map(|s| s.elapsed()).unwrap_or_default();
                    if !self.alerted && failing_for >= ALERT_AFTER {
                        if let Some(a) = &*self.alerts.load() {
                            a.store_failing(failing_for, self.records.len(), &e.to_string());
                            self.alerted = true;
                        }
                    }
                    return;
                }
            }
        }
        match self.since.take() {
            Some(since) => {
                tracing::info!(
                    failing_for_s = since.elapsed().as_secs(),
                    "the store takes usage records again: every held record is written"
                );
                if std::mem::take(&mut self.alerted) {
                    if let Some(a) = &*self.alerts.load() {
                        a.store_recovered(since.elapsed(), held);
                    }
                }
            }
            None => tracing::info!("the spooled usage records are written"),
        }
        self.wait = QUICK_WAIT;
        self.gauge();
    }

    /// At the writer's end: one more try, then whatever the store did not
    /// take goes to the spool.
    pub async fn finish(&mut self, store: &Store, batch: usize) {
        if self.records.is_empty() {
            return;
        }
        self.next_try = Instant::now();
        self.retry(store, batch).await;
        if !self.records.is_empty() {
            let rest: Vec<UsageRecord> = self.records.drain(..).collect();
            self.spill(rest).await;
            self.gauge();
        }
    }

    /// The records spooled (by this run past [`HELD_MAX`], or by an
    /// earlier one), taken back into the held ones (off the runtime's
    /// thread); how many.
    async fn take_back(&mut self) -> usize {
        let Some(keys) = self.keys.clone().filter(|_| self.spilled) else {
            return 0;
        };
        self.spilled = false;
        let path = self.spool.clone();
        let taken = tokio::task::spawn_blocking(move || take(&path, &keys))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        match taken {
            Ok(records) => {
                let n = records.len();
                let _ = SPOOLED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some(s.saturating_sub(n as u64))
                });
                if n > 0 {
                    tracing::info!(records = n, file = %self.spool.display(), "spooled usage records taken back: writing them to the store");
                }
                self.records.extend(records);
                n
            }
            Err(e) => {
                tracing::error!(error = %e, "the usage spool cannot be taken back; it is left where it is, for the next start");
                0
            }
        }
    }

    /// Appends `records` to the spool (off the runtime's thread).
    async fn spill(&mut self, records: Vec<UsageRecord>) {
        let n = records.len();
        let path = self.spool.clone();
        let saved = tokio::task::spawn_blocking(move || save(&path, &records))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        if saved.is_ok() {
            SPOOLED.fetch_add(n as u64, Ordering::Relaxed);
            self.spilled = true;
        }
        match saved {
            Ok(()) => {
                tracing::warn!(records = n, file = %self.spool.display(), "usage records the store did not take are spooled; the next start writes them")
            }
            Err(e) => {
                tracing::error!(records = n, file = %self.spool.display(), error = %e, "usage records the store did not take could not be spooled either: lost (they are in the log)")
            }
        }
    }
}

/// Tells each record's key what the store now says it spent.
fn stored(
    records: &[UsageRecord],
    spent: &std::collections::HashMap<String, crate::store::StoredSpend>,
) {
    for r in records {
        if let Some(k) = &r.key {
            k.stored(r.charged, spent.get(&k.spec().id).copied());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::tests::record;

    #[test]
    fn records_go_to_the_spool_and_come_back_whole_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.jsonl");
        let mut a = record("gpt-4o");
        a.request_id = "req_a".into();
        a.endpoint = "responses";
        a.ttft = Some(Duration::from_millis(7));
        a.tags.user = Some("u\"1".into());
        a.tags.metadata = Some(Arc::from(r#"{"team":"x"}"#));
        a.at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut b = record("claude");
        b.request_id = "req_b".into();
        save(&path, &[a]).unwrap();
        save(&path, &[b]).unwrap();
        assert_eq!(waiting(&path).unwrap(), 2);
        let keys = Keys::new(None);
        let back = take(&path, &keys).unwrap();
        assert!(!path.exists() && std::fs::read_dir(dir.path()).unwrap().count() == 0);
        let [a, b] = &back[..] else {
            panic!("{}", back.len())
        };
        assert_eq!(
            (a.request_id.as_str(), b.request_id.as_str()),
            ("req_a", "req_b")
        );
        assert_eq!(a.endpoint, "responses");
        assert_eq!(a.usage, record("x").usage);
        assert_eq!(a.cost_usd, 0.25);
        assert_eq!(a.ttft, Some(Duration::from_millis(7)));
        assert_eq!(a.tags.user.as_deref(), Some("u\"1"));
        assert_eq!(a.tags.metadata.as_deref(), Some(r#"{"team":"x"}"#));
        assert_eq!(a.at, UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        assert_eq!(b.requested_model, "claude");
        // Taken once: nothing the second time.
        assert!(take(&path, &keys).unwrap().is_empty());
        assert_eq!(waiting(&path).unwrap(), 0);
    }

    #[tokio::test]
    async fn past_its_bound_the_oldest_go_to_the_spool_and_come_back_when_the_store_does() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Store::connect(&url).await.unwrap();
        // Another connection takes the usage table away, and gives it back.
        let other = sqlx::SqlitePool::connect(&url).await.unwrap();
        let rename = |from: &'static str, to: &'static str| {
            let other = other.clone();
            async move {
                let sql = format!("ALTER TABLE {from} RENAME TO {to}");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&other)
                    .await
                    .unwrap();
            }
        };
        let spool = dir.path().join("spool.jsonl");
        let mut held = Held::new(spool.clone(), Some(Arc::new(Keys::new(None))));
        held.max = 2;
        rename("polyplex_usage", "away").await;
        for n in 0..3 {
            let mut r = record("m");
            r.request_id = format!("req_{n}");
            held.write(&store, &mut vec![r]).await;
        }
        assert_eq!(held.len(), 2);
        assert_eq!(waiting(&spool).unwrap(), 1, "the oldest went to the spool");
        held.next_try = Instant::now();
        held.retry(&store, 1024).await;
        assert_eq!(held.len(), 2, "still failing");
        rename("away", "polyplex_usage").await;
        held.next_try = Instant::now();
        held.retry(&store, 1024).await;
        assert!(held.is_empty() && !spool.exists());
        let rows = store
            .usage_report(crate::store::GroupBy::Provider, 0)
            .await
            .unwrap();
        assert_eq!(
            rows[0].requests, 3,
            "held and spooled records all written once"
        );
        other.close().await;
        store.close().await;
    }

    #[test]
    fn only_the_run_that_spooled_a_record_keeps_its_unstored_charge() {
        let mut r = record("m");
        r.charged = 5;
        let keys = Keys::new(None);
        let mine = Spooled::of(&r);
        assert_eq!(mine.run, run_id());
        assert_eq!(mine.into_record(&keys).charged, 5);
        // Another run's (a restart, even one given the same process id):
        // charged anew, here to no key.
        let mut theirs = Spooled::of(&r);
        theirs.run = run_id().wrapping_add(1);
        assert_eq!(theirs.into_record(&keys).charged, 0);
    }

    #[test]
    fn a_spool_with_a_bad_line_is_kept_for_a_person() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.jsonl");
        save(&path, &[record("gpt-4o")]).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{not json\n")
            .unwrap();
        let back = take(&path, &Keys::new(None)).unwrap();
        assert_eq!(back.len(), 1);
        assert!(!path.exists());
        assert!(taking_path(&path).exists());
    }
}
