//! Gateway keys on the request path: which key a bearer token is, whether it
//! may use a model, and its limits (requests and tokens per minute,
//! concurrent requests) and budget.
//!
//! Keys live in the [`crate::store`]; every node keeps them in memory (found
//! by the SHA-256 of the token) and reloads them every
//! [`RELOAD`], so a key created, changed or revoked on another replica
//! takes effect here within that time, and at once on the node that was
//! asked. A token not in memory is looked up in the store before it is
//! refused (a key created a moment ago on another replica).
//!
//! Limits are exact on one node: the requests and tokens of the last 60
//! seconds are kept per key (a sliding window). Spend is what the store says
//! plus what this node served and has not yet written. With Redis
//! configured, the same limits and the budget are counted there for every
//! replica ([`crate::shared`]) and this node's own count is the fallback.

use crate::shared::Lease;
use crate::store::{unix_now, KeyRow, Store, StoreError, StoredSpend};
pub use crate::window::{LimitState, Limits};
use crate::window::{Over, Window};
use polyplex_types::GatewayError;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often every key is reloaded from the store.
pub const RELOAD: Duration = Duration::from_secs(2);
/// How long a token the store does not know is remembered as unknown.
const MISS_TTL: Duration = Duration::from_secs(2);

/// A new key: `plx-` and 40 random letters and digits (238 bits).
pub fn generate() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    format!(
        "plx-{}",
        Alphanumeric.sample_string(&mut rand::rngs::OsRng, 40)
    )
}

/// A key's SHA-256, as the keys in memory are found.
type Digest32 = [u8; 32];

fn digest(key: &str) -> Digest32 {
    Sha256::digest(key.as_bytes()).into()
}

/// The stored form of a key: its SHA-256 in hex.
pub fn hash(key: &str) -> String {
    let mut s = String::with_capacity(64);
    for b in digest(key) {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The digest a stored hash stands for (None if it is not 64 hex digits).
fn from_hex(h: &str) -> Option<Digest32> {
    let b = h.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// `plx-…` and the last four characters: enough to tell keys apart.
pub fn hint(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("plx-...{tail}")
}

/// A new key id: `key_` and 16 hex digits.
pub fn new_id() -> String {
    format!("key_{:016x}", rand::random::<u64>())
}

/// A gateway key in memory: its settings (replaced on reload) and its live
/// counters (kept across reloads).
pub struct KeyEntry {
    spec: RwLock<Arc<KeyRow>>,
    window: Mutex<Window>,
    /// Each end user's last minute of requests (the key's `user_rpm`).
    users: Mutex<HashMap<String, Window>>,
    /// Each end user's spend as last read from the store, and this node's
    /// since (the key's `user_budget_usd`).
    spends: Mutex<HashMap<String, EndUserSpend>>,
    in_flight: AtomicU64,
    /// Spend in micro-cents (1e-8 USD) served here and not yet in the store.
    pending: AtomicU64,
    /// [`Keys`]'s change count when this key was last changed here (the
    /// admin API): a reload that read the store before then leaves it be.
    changed: AtomicU64,
}

/// Spend is counted in units of 1e-8 USD (integers add up exactly).
pub const UNITS_PER_USD: f64 = 1e8;

/// `usd` in units of [`UNITS_PER_USD`] (negative counts as none).
pub fn usd_units(usd: f64) -> u64 {
    (usd.max(0.0) * UNITS_PER_USD).round() as u64
}

/// How a spent budget's message names its period (`daily `) and says when
/// it starts again; nothing for a budget that never does.
fn period_words(spec: &KeyRow) -> (String, String) {
    match spec.budget_reset {
        Some(r) => (
            format!("{} ", r.as_str()),
            format!(
                " It starts again at {}.",
                crate::budget::rfc3339(r.end(unix_now()))
            ),
        ),
        None => (String::new(), String::new()),
    }
}

/// 429 `insufficient_quota`: the key spent its budget.
pub fn over_budget(spec: &KeyRow, spent: f64) -> GatewayError {
    let (period, resets) = period_words(spec);
    GatewayError::quota_exceeded(format!(
        "You exceeded your current quota: key {} has spent ${} of its ${} {period}budget.{resets}",
        spec.id,
        // To the cent's millionth, the units spend is counted in.
        trim_float(spent, 8),
        trim_float(spec.budget_usd.unwrap_or(0.0), 8)
    ))
}

/// 429: as many requests of the key in progress as it may have.
pub fn over_concurrency(spec: &KeyRow, in_progress: u64) -> GatewayError {
    GatewayError::rate_limited(
        "requests",
        format!(
            "Rate limit reached for key {} on concurrent requests: Limit {}, in progress {in_progress}. Please try again when one finishes.",
            spec.id,
            spec.max_concurrent.unwrap_or(0)
        ),
        Duration::from_secs(1),
    )
}

/// 429: the key's requests per minute are used up for `wait`.
pub fn over_rpm(spec: &KeyRow, used: u64, wait: Duration) -> GatewayError {
    GatewayError::rate_limited(
        "requests",
        format!(
            "Rate limit reached for key {} on requests per min (RPM): Limit {}, Used {used}, Requested 1. Please try again in {}.",
            spec.id,
            spec.rpm.unwrap_or(0),
            reset_text(wait)
        ),
        wait,
    )
}

/// 429: the end user's requests per minute under the key (`user_rpm`) are
/// used up for `wait`.
pub fn over_user_rpm(spec: &KeyRow, user: &str, used: u64, wait: Duration) -> GatewayError {
    GatewayError::rate_limited(
        "requests",
        format!(
            "Rate limit reached for end user '{user}' of key {} on requests per min (RPM): Limit {}, Used {used}, Requested 1. Please try again in {}.",
            spec.id,
            spec.user_rpm.unwrap_or(0),
            reset_text(wait)
        ),
        wait,
    )
}

/// 429: the end user's tokens per minute under the key (`user_tpm`) are
/// used up for `wait`.
pub fn over_user_tpm(spec: &KeyRow, user: &str, used: u64, wait: Duration) -> GatewayError {
    GatewayError::rate_limited(
        "tokens",
        format!(
            "Rate limit reached for end user '{user}' of key {} on tokens per min (TPM): Limit {}, Used {used}. Please try again in {}.",
            spec.id,
            spec.user_tpm.unwrap_or(0),
            reset_text(wait)
        ),
        wait,
    )
}

/// An end user's per-minute limit reached, as [`over_user_rpm`] or
/// [`over_user_tpm`] says it.
pub fn over_end_user(spec: &KeyRow, user: &str, over: crate::window::Over) -> GatewayError {
    match over {
        crate::window::Over::Requests { used, wait } => over_user_rpm(spec, user, used, wait),
        crate::window::Over::Tokens { used, wait } => over_user_tpm(spec, user, used, wait),
    }
}

/// 429 `insufficient_quota`: the end user spent its budget under the key.
pub fn over_user_budget(spec: &KeyRow, user: &str, spent: f64) -> GatewayError {
    let (period, resets) = period_words(spec);
    GatewayError::quota_exceeded(format!(
        "You exceeded your current quota: end user '{user}' of key {} has spent ${} of its ${} {period}budget.{resets}",
        spec.id,
        trim_float(spent, 8),
        trim_float(spec.user_budget_usd.unwrap_or(0.0), 8)
    ))
}

/// An end user's spend under a key: the store's sum over the budget period
/// that began at `period_start` (Unix seconds), read at `read_at`, and what
/// this node's records added since.
#[derive(Debug, Clone, Copy)]
struct EndUserSpend {
    period_start: i64,
    stored_usd: f64,
    read_at: Instant,
    added_units: u64,
}

/// How long an end user's spend read from the store is used before it is
/// read again (what other replicas spent meanwhile is seen then).
pub const END_USER_SPEND_FRESH: Duration = Duration::from_secs(2);

/// End users whose windows a key keeps before it forgets those with no
/// request in the last minute.
const USERS_KEPT: usize = 4096;

/// 429: the key's tokens per minute are used up for `wait`.
pub fn over_tpm(spec: &KeyRow, used: u64, wait: Duration) -> GatewayError {
    GatewayError::rate_limited(
        "tokens",
        format!(
            "Rate limit reached for key {} on tokens per min (TPM): Limit {}, Used {used}. Please try again in {}.",
            spec.id,
            spec.tpm.unwrap_or(0),
            reset_text(wait)
        ),
        wait,
    )
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.spec().id)
            .finish()
    }
}

impl KeyEntry {
    fn new(row: KeyRow) -> Self {
        KeyEntry {
            spec: RwLock::new(Arc::new(row)),
            window: Mutex::new(Window::default()),
            users: Mutex::new(HashMap::new()),
            spends: Mutex::new(HashMap::new()),
            in_flight: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            changed: AtomicU64::new(0),
        }
    }

    pub fn spec(&self) -> Arc<KeyRow> {
        match self.spec.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_spec(&self, row: KeyRow) {
        match self.spec.write() {
            Ok(mut s) => *s = Arc::new(row),
            Err(p) => *p.into_inner() = Arc::new(row),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        match self.window.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        }
    }

    pub fn id(&self) -> String {
        self.spec().id.clone()
    }

    /// Spend so far: the store's, plus what this node has not written yet.
    /// Everything the key has spent: the store's sum and this node's spend
    /// not yet in it.
    pub fn spent(&self) -> f64 {
        self.spec().spent_usd + self.pending_usd()
    }

    /// What counts against the budget now: the current period's spend
    /// ([`KeyRow::budget_spent`]; all time without `budget_reset`) and this
    /// node's spend not yet stored.
    pub fn budget_spent(&self) -> f64 {
        self.spec().budget_spent(unix_now()) + self.pending_usd()
    }

    fn pending_usd(&self) -> f64 {
        self.pending.load(Ordering::Relaxed) as f64 / UNITS_PER_USD
    }

    fn add_pending(&self, usd: f64) -> u64 {
        let units = usd_units(usd);
        self.pending.fetch_add(units, Ordering::Relaxed);
        units
    }

    /// Admission: budget, requests per minute, tokens per minute and
    /// concurrency, in that order. On success the request is counted and the
    /// returned guard holds its concurrency slot.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<Admitted, GatewayError> {
        let spec = self.spec();
        if let Some(budget) = spec.budget_usd {
            let spent = self.budget_spent();
            if spent >= budget {
                return Err(over_budget(&spec, spent));
            }
        }
        if let Some(max) = spec.max_concurrent {
            let now_in = self.in_flight.fetch_add(1, Ordering::AcqRel);
            if now_in >= max {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(over_concurrency(&spec, now_in));
            }
        } else {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        let mut guard = Admitted {
            key: self.clone(),
            spec: spec.clone(),
            limits: Limits::default(),
            _lease: None,
        };
        if spec.rpm.is_none() && spec.tpm.is_none() {
            return Ok(guard);
        }
        let mut w = self.window();
        match w.take(spec.rpm, spec.tpm, now) {
            Ok(()) => {}
            Err(Over::Requests { used, wait }) => return Err(over_rpm(&spec, used, wait)),
            Err(Over::Tokens { used, wait }) => return Err(over_tpm(&spec, used, wait)),
        }
        let limits = w.state(spec.rpm, spec.tpm, now);
        drop(w);
        guard.limits = limits;
        Ok(guard)
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        match self.users.lock() {
            Ok(u) => u,
            Err(p) => p.into_inner(),
        }
    }

    /// Counts one request of `user` under the key's `user_rpm` and
    /// `user_tpm` (on this node), or says when it has room again.
    pub fn take_end_user(
        &self,
        user: &str,
        rpm: Option<u64>,
        tpm: Option<u64>,
        now: Instant,
    ) -> Result<(), Over> {
        let mut users = self.users();
        if users.len() >= USERS_KEPT && !users.contains_key(user) {
            users.retain(|_, w| {
                w.trim(now);
                !w.is_empty()
            });
        }
        users
            .entry(user.to_string())
            .or_default()
            .take(rpm, tpm, now)
    }

    fn spends(&self) -> std::sync::MutexGuard<'_, HashMap<String, EndUserSpend>> {
        match self.spends.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// An end user's spend in the budget period that began at
    /// `period_start`, if it was read from the store less than
    /// [`END_USER_SPEND_FRESH`] ago: that, plus what this node added since.
    pub fn end_user_spend(&self, user: &str, period_start: i64, now: Instant) -> Option<f64> {
        let s = *self.spends().get(user)?;
        (s.period_start == period_start
            && now.saturating_duration_since(s.read_at) < END_USER_SPEND_FRESH)
            .then(|| s.stored_usd + s.added_units as f64 / UNITS_PER_USD)
    }

    /// What the store says an end user spent in the period that began at
    /// `period_start`, read at `now`; returns the spend to count.
    pub fn end_user_spend_read(
        &self,
        user: &str,
        period_start: i64,
        stored: f64,
        now: Instant,
    ) -> f64 {
        let mut spends = self.spends();
        if spends.len() >= USERS_KEPT && !spends.contains_key(user) {
            spends.retain(|_, s| now.saturating_duration_since(s.read_at) < crate::window::WINDOW);
        }
        spends.insert(
            user.to_string(),
            EndUserSpend {
                period_start,
                stored_usd: stored,
                read_at: now,
                added_units: 0,
            },
        );
        stored
    }

    /// A record's cost made on this node counts against its end user's
    /// budget at once (the store has it on its next read).
    pub fn add_end_user_spend(&self, user: &str, usd: f64) {
        if let Some(s) = self.spends().get_mut(user) {
            s.added_units += usd_units(usd);
        }
    }

    /// Counts a finished request's tokens against its end user's
    /// `user_tpm` (on this node).
    pub fn charge_end_user(&self, user: &str, tokens: u64, now: Instant) {
        if let Some(w) = self.users().get_mut(user) {
            w.add_tokens(tokens, now);
        }
    }

    /// A request admitted by the limits all replicas share
    /// ([`crate::shared`]): counted in progress here too, holding `lease`
    /// (its slot in Redis) until the returned guard is dropped.
    pub fn admitted(
        self: &Arc<Self>,
        spec: Arc<KeyRow>,
        limits: Limits,
        lease: Option<Lease>,
    ) -> Admitted {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Admitted {
            key: self.clone(),
            spec,
            limits,
            _lease: lease,
        }
    }

    /// The key's per-minute limits as they stand now: for the headers of an
    /// answer given without admission (a 429), and of a unary answer, whose
    /// tokens count once it is answered.
    pub fn limits_now(&self, now: Instant) -> Limits {
        let spec = self.spec();
        let mut w = self.window();
        w.trim(now);
        w.state(spec.rpm, spec.tpm, now)
    }

    /// Counts a finished request's tokens and cost against the key.
    pub fn charge(&self, tokens: u64, cost_usd: f64, now: Instant) -> u64 {
        if self.spec().tpm.is_some() {
            self.window().add_tokens(tokens, now);
        }
        self.add_pending(cost_usd)
    }

    /// A record of an earlier run, not yet stored (its spool read back):
    /// its cost counts as this key's pending spend until it is.
    pub fn charge_restored(&self, cost_usd: f64) -> u64 {
        self.add_pending(cost_usd)
    }

    /// The usage writer stored `units` of pending spend; the store's total
    /// for the key (all time and in its budget period) is now `spent`.
    pub fn stored(&self, units: u64, spent: Option<StoredSpend>) {
        if let Some(s) = spent {
            let mut row = (*self.spec()).clone();
            row.spent_usd = s.spent_usd;
            // The period's spend only if it is of the period the key
            // counts now: a `budget_reset` changed while the records were
            // written made another period the key's (its spend summed then).
            if row
                .budget_reset
                .is_none_or(|r| r.start(unix_now()) == s.period_start)
            {
                row.period_start = s.period_start;
                row.period_spent_usd = s.period_spent_usd;
            }
            self.set_spec(row);
        }
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(units))
            });
    }
}

/// OpenAI's reset format: `1s`, `6m0s`, `120ms`.
pub fn reset_text(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs_f64();
    if s < 60.0 {
        return format!("{}s", trim_float(s, 3));
    }
    let m = (s / 60.0).floor();
    format!("{}m{}s", m as u64, trim_float(s - m * 60.0, 3))
}

/// `x` to `places` decimals, without trailing zeros: `0.00006`, `12.5`, `3`.
fn trim_float(x: f64, places: usize) -> String {
    let t = format!("{x:.places$}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Does a key's model list (None: every model) allow the name `name` as
/// written? A listed `model` also allows `provider/model`; `provider/*`
/// allows all of a provider's; `*` all. (The router also lets a name reach
/// the deployments a list allows: [`crate::routing::Router::may_reach`].)
pub fn allows(models: Option<&[String]>, name: &str) -> bool {
    let Some(list) = models else {
        return true;
    };
    match name.split_once('/') {
        Some((provider, model)) => allows_deployment(list, provider, model),
        None => list.iter().any(|m| m == "*" || m == name),
    }
}

/// Does a key's model list allow `model` on the provider named `provider`?
pub fn allows_deployment(list: &[String], provider: &str, model: &str) -> bool {
    list.iter().any(|m| {
        m == "*"
            || m == model
            || m.strip_suffix("/*") == Some(provider)
            || m.split_once('/') == Some((provider, model))
    })
}

/// 403 for a model name a key may not use.
pub fn model_forbidden(name: &str) -> GatewayError {
    GatewayError::forbidden(format!(
        "This API key is not allowed to use the model `{name}`."
    ))
    .with_param("model")
}

/// An admitted request of a key: holds its concurrency slot until dropped
/// (and its slot in Redis, with shared limits).
pub struct Admitted {
    pub key: Arc<KeyEntry>,
    /// The key's settings it was admitted under (its model list routes it).
    pub spec: Arc<KeyRow>,
    pub limits: Limits,
    _lease: Option<Lease>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.key.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn usable(entry: Arc<KeyEntry>) -> Result<Arc<KeyEntry>, Refusal> {
    let spec = entry.spec();
    if spec.revoked_at.is_some() {
        return Err(Refusal::Revoked);
    }
    if spec.expires_at.is_some_and(|t| t <= unix_now()) {
        return Err(Refusal::Expired);
    }
    Ok(entry)
}

/// Every key, by the hash of its token.
pub struct Keys {
    store: Option<Store>,
    by_hash: RwLock<HashMap<Digest32, Arc<KeyEntry>>>,
    by_id: RwLock<HashMap<String, Arc<KeyEntry>>>,
    misses: Mutex<HashMap<String, Instant>>,
    /// Changes made here (the admin API) so far: see [`KeyEntry`]'s `changed`.
    changes: AtomicU64,
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Revoked,
    Expired,
}

impl Keys {
    pub fn new(store: Option<Store>) -> Self {
        Keys {
            store,
            by_hash: RwLock::new(HashMap::new()),
            by_id: RwLock::new(HashMap::new()),
            misses: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
        }
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    fn read_hash(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Digest32, Arc<KeyEntry>>> {
        match self.by_hash.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<KeyEntry>> {
        match self.by_id.read() {
            Ok(g) => g.get(id).cloned(),
            Err(p) => p.into_inner().get(id).cloned(),
        }
    }

    /// Every key in memory.
    pub fn all(&self) -> Vec<Arc<KeyEntry>> {
        match self.by_id.read() {
            Ok(g) => g.values().cloned().collect(),
            Err(p) => p.into_inner().values().cloned().collect(),
        }
    }

    /// The key with this id, if it may be used now.
    pub fn usable_by_id(&self, id: &str) -> Result<Arc<KeyEntry>, Refusal> {
        usable(self.by_id(id).ok_or(Refusal::Unknown)?)
    }

    /// Puts `row` in memory (new or changed, as the store has it now),
    /// keeping its live counters.
    pub fn upsert(&self, row: KeyRow) {
        let n = self.changes.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(e) = self.put(row) {
            e.changed.store(n, Ordering::SeqCst);
        }
    }

    /// Puts `row` in memory; the key's entry.
    fn put(&self, row: KeyRow) -> Option<Arc<KeyEntry>> {
        let existing = self.by_id(&row.id);
        let mut h = match self.by_hash.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut i = match self.by_id.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match existing {
            Some(e) => {
                e.set_spec(row);
                Some(e)
            }
            None => {
                let Some(d) = from_hex(&row.key_hash) else {
                    tracing::warn!(key = %row.id, "a stored key's hash is malformed; the key is skipped");
                    return None;
                };
                let e = Arc::new(KeyEntry::new(row.clone()));
                h.insert(d, e.clone());
                i.insert(row.id, e.clone());
                Some(e)
            }
        }
    }

    /// Loads every key from the store: new and changed ones replace what
    /// is in memory, deleted ones go.
    pub async fn reload(&self) -> Result<usize, StoreError> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let since = self.changes.load(Ordering::SeqCst);
        let rows = store.keys().await?;
        let n = rows.len();
        let ids: std::collections::HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
        self.reloaded(rows, since);
        let mut h = match self.by_hash.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Gone from the store, unless made here since it was read.
        let keep = |e: &Arc<KeyEntry>| {
            ids.contains(&e.spec().id) || e.changed.load(Ordering::SeqCst) > since
        };
        h.retain(|_, e| keep(e));
        match self.by_id.write() {
            Ok(mut g) => g.retain(|_, e| keep(e)),
            Err(p) => p.into_inner().retain(|_, e| keep(e)),
        }
        Ok(n)
    }

    /// Rows read from the store when [`Keys::changes`] was `since`: each
    /// replaces its key's spec unless the key changed here after (the
    /// rows are older than that change).
    fn reloaded(&self, rows: Vec<KeyRow>, since: u64) {
        for r in rows {
            let newer = self
                .by_id(&r.id)
                .is_some_and(|e| e.changed.load(Ordering::SeqCst) > since);
            if !newer {
                self.put(r);
            }
        }
    }

    /// The key whose token this is, if it is in memory (None: ask the store,
    /// [`Keys::authenticate`]).
    pub fn cached(&self, token: &str) -> Option<Result<Arc<KeyEntry>, Refusal>> {
        let found = self.read_hash().get(&digest(token)).cloned()?;
        Some(usable(found))
    }

    /// The key whose token this is, from memory or else the store, if it may
    /// be used now.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<KeyEntry>, Refusal> {
        let found = self.read_hash().get(&digest(token)).cloned();
        let entry = match found {
            Some(e) => e,
            None => self.fetch(&hash(token)).await.ok_or(Refusal::Unknown)?,
        };
        usable(entry)
    }

    /// Looks a hash up in the store (a key made on another replica since
    /// the last reload); unknown hashes are remembered for [`MISS_TTL`].
    async fn fetch(&self, h: &str) -> Option<Arc<KeyEntry>> {
        let store = self.store.as_ref()?;
        {
            let mut misses = match self.misses.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            let now = Instant::now();
            if misses.len() > 10_000 {
                misses.retain(|_, t| now.duration_since(*t) < MISS_TTL);
            }
            if misses
                .get(h)
                .is_some_and(|t| now.duration_since(*t) < MISS_TTL)
            {
                return None;
            }
        }
        match store.key_by_hash(h).await {
            Ok(Some(row)) => {
                self.upsert(row);
                self.read_hash().get(&from_hex(h)?).cloned()
            }
            Ok(None) => {
                if let Ok(mut m) = self.misses.lock() {
                    m.insert(h.to_string(), Instant::now());
                }
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot look a key up in the store");
                None
            }
        }
    }

    /// Reloads every [`RELOAD`] until the returned task is aborted.
    pub fn spawn_reloader(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.store.as_ref()?;
        let keys = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = keys.reload().await {
                    tracing::warn!(error = %e, "cannot reload the gateway keys");
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(models: Option<Vec<&str>>) -> KeyRow {
        KeyRow {
            id: "key_1".into(),
            name: "t".into(),
            key_hash: hash("plx-a"),
            key_hint: hint("plx-a"),
            models: models.map(|m| m.into_iter().map(String::from).collect()),
            rpm: None,
            tpm: None,
            max_concurrent: None,
            budget_usd: None,
            spent_usd: 0.0,
            expires_at: None,
            created_at: 0,
            revoked_at: None,
            budget_reset: None,
            period_start: 0,
            period_spent_usd: 0.0,
            metadata: None,
            user_rpm: None,
            user_tpm: None,
            user_budget_usd: None,
        }
    }

    /// A reload that read the store before a change made here (the admin
    /// API) does not undo it, nor drop a key made here since.
    #[test]
    fn a_reload_older_than_a_change_here_leaves_it() {
        let keys = Keys::new(None);
        keys.upsert(row(None));
        let since = keys.changes.load(Ordering::SeqCst);
        let old = row(None);
        let mut patched = row(None);
        patched.budget_usd = Some(5.0);
        keys.upsert(patched);
        keys.reloaded(vec![old.clone()], since);
        assert_eq!(keys.by_id("key_1").unwrap().spec().budget_usd, Some(5.0));
        // A reload read after the change applies.
        keys.reloaded(vec![old], keys.changes.load(Ordering::SeqCst));
        assert_eq!(keys.by_id("key_1").unwrap().spec().budget_usd, None);
    }

    /// Spend written under the key's old budget period does not replace
    /// the new period's (`budget_reset` changed meanwhile).
    #[test]
    fn stored_spend_of_another_period_leaves_the_periods_spend() {
        let now = unix_now();
        let mut r = row(None);
        r.budget_reset = Some(crate::budget::BudgetReset::Daily);
        r.period_start = crate::budget::BudgetReset::Daily.start(now);
        r.period_spent_usd = 0.25;
        let e = KeyEntry::new(r);
        let monthly = crate::budget::BudgetReset::Monthly.start(now);
        let weekly = crate::budget::BudgetReset::Weekly.start(now);
        let daily = crate::budget::BudgetReset::Daily.start(now);
        for other in [monthly, weekly].into_iter().filter(|p| *p != daily) {
            e.stored(
                0,
                Some(StoredSpend {
                    spent_usd: 1.0,
                    period_start: other,
                    period_spent_usd: 0.0,
                }),
            );
            let spec = e.spec();
            assert_eq!((spec.spent_usd, spec.period_spent_usd), (1.0, 0.25));
        }
        e.stored(
            0,
            Some(StoredSpend {
                spent_usd: 2.0,
                period_start: daily,
                period_spent_usd: 0.5,
            }),
        );
        assert_eq!(e.spec().budget_spent(now), 0.5);
    }

    /// `user_rpm` / `user_tpm`: each end user's own minute; a full map
    /// forgets the users idle for a minute.
    #[test]
    fn each_end_user_has_a_minute_of_its_own() {
        let k = KeyEntry::new(row(None));
        let t0 = Instant::now();
        let take = |u: &str, at: Instant| k.take_end_user(u, Some(2), None, at);
        assert!(take("ann", t0).is_ok());
        assert!(take("ann", t0).is_ok());
        match take("ann", t0 + Duration::from_secs(10)) {
            Err(Over::Requests { used: 2, wait }) => assert_eq!(wait, Duration::from_secs(50)),
            other => panic!("{other:?}"),
        }
        assert!(take("bob", t0).is_ok());
        assert!(take("ann", t0 + Duration::from_secs(60)).is_ok());
        // Tokens: a request is let in while the minute's are under the limit.
        assert!(k.take_end_user("cy", None, Some(100), t0).is_ok());
        k.charge_end_user("cy", 100, t0);
        match k.take_end_user("cy", None, Some(100), t0 + Duration::from_secs(1)) {
            Err(Over::Tokens { used: 100, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(k.take_end_user("di", None, Some(100), t0).is_ok());
        for i in 0..USERS_KEPT {
            take(&format!("u{i}"), t0).unwrap();
        }
        let later = t0 + Duration::from_secs(61);
        take("new", later).unwrap();
        let users = k.users.lock().unwrap();
        assert!(users.len() < 10, "{}", users.len());
        assert!(users.contains_key("new") && users.contains_key("ann"));
    }

    /// `user_budget_usd`: the store's sum is used for a while, with what
    /// this node adds on top; a new period or an old read asks again.
    #[test]
    fn an_end_users_spend_is_read_again_when_old() {
        let k = KeyEntry::new(row(None));
        let t0 = Instant::now();
        assert_eq!(k.end_user_spend("ann", 0, t0), None);
        k.add_end_user_spend("ann", 1.0); // nothing read yet: nothing to add to
        assert_eq!(k.end_user_spend_read("ann", 0, 0.25, t0), 0.25);
        k.add_end_user_spend("ann", 0.5);
        assert_eq!(
            k.end_user_spend("ann", 0, t0 + Duration::from_secs(1)),
            Some(0.75)
        );
        assert_eq!(k.end_user_spend("ann", 86_400, t0), None, "another period");
        assert_eq!(k.end_user_spend("ann", 0, t0 + END_USER_SPEND_FRESH), None);
        assert_eq!(k.end_user_spend("bob", 0, t0), None);
    }

    #[test]
    fn keys_are_long_random_and_hashed() {
        let k = generate();
        assert!(k.starts_with("plx-") && k.len() == 44);
        assert_ne!(k, generate());
        assert_eq!(hash(&k).len(), 64);
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hint("plx-abcdefgh"), "plx-...efgh");
        assert_eq!(from_hex(&hash(&k)), Some(digest(&k)));
        assert_eq!(from_hex("xyz"), None);
    }

    #[test]
    fn model_lists() {
        let list = vec!["gpt-4o".to_string(), "anthropic/*".to_string()];
        assert!(allows(Some(&list), "gpt-4o"));
        assert!(allows(Some(&list), "openai/gpt-4o"));
        assert!(allows(Some(&list), "anthropic/claude-sonnet-4-5"));
        assert!(!allows(Some(&list), "gpt-4o-mini"));
        assert!(!allows(Some(&list), "openai/gpt-4o-mini"));
        assert!(allows(None, "anything"));
        assert!(allows(Some(&["*".to_string()]), "x"));
    }

    #[test]
    fn requests_per_minute_slide() {
        let mut r = row(None);
        r.rpm = Some(2);
        let e = Arc::new(KeyEntry::new(r));
        let t0 = Instant::now();
        let a = e.admit(t0).unwrap();
        assert_eq!(a.limits.rpm.unwrap().remaining, 1);
        let _b = e.admit(t0 + Duration::from_secs(10)).unwrap();
        let err = e.admit(t0 + Duration::from_secs(20)).err().unwrap();
        assert_eq!(err.status.as_u16(), 429);
        assert_eq!(err.kind, "requests");
        assert_eq!(err.retry_after, Some(Duration::from_secs(40)));
        // The first leaves the window after 60 s.
        assert!(e.admit(t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn concurrency_and_budget() {
        let mut r = row(None);
        r.max_concurrent = Some(1);
        r.budget_usd = Some(0.01);
        let e = Arc::new(KeyEntry::new(r));
        let now = Instant::now();
        let a = e.admit(now).unwrap();
        assert_eq!(e.admit(now).err().unwrap().status.as_u16(), 429);
        drop(a);
        let a = e.admit(now).unwrap();
        let units = e.charge(10, 0.006, now);
        drop(a);
        assert!(e.admit(now).is_ok());
        e.charge(10, 0.006, now);
        let err = e.admit(now).err().unwrap();
        assert_eq!(err.kind, "insufficient_quota");
        assert!(
            err.message.contains("spent $0.012 of its $0.01 budget"),
            "{}",
            err.message
        );
        // Written to the store: the spend moves from pending to the row.
        e.stored(
            units,
            Some(StoredSpend {
                spent_usd: 0.006,
                period_start: 0,
                period_spent_usd: 0.006,
            }),
        );
        assert!((e.spent() - 0.012).abs() < 1e-9);
    }

    #[test]
    fn a_budget_that_starts_again_counts_its_current_period_only() {
        use crate::budget::BudgetReset;
        let now = unix_now();
        let month = BudgetReset::Monthly;
        let mut r = row(None);
        r.budget_usd = Some(1.0);
        r.budget_reset = Some(month);
        r.spent_usd = 50.0;
        // The store's period is last month's: nothing spent in this one yet.
        r.period_start = month.start(month.start(now) - 1);
        r.period_spent_usd = 5.0;
        let e = Arc::new(KeyEntry::new(r.clone()));
        assert_eq!(e.budget_spent(), 0.0);
        assert!(e.admit(Instant::now()).is_ok());
        // This period's spend is over the budget: refused, saying when it
        // starts again.
        r.period_start = month.start(now);
        r.period_spent_usd = 1.0;
        let e = Arc::new(KeyEntry::new(r));
        let err = e.admit(Instant::now()).err().unwrap();
        assert_eq!(err.kind, "insufficient_quota");
        let again = crate::budget::rfc3339(month.end(now));
        assert!(
            err.message
                .contains("of its $1 monthly budget. It starts again at")
                && err.message.contains(&again),
            "{}",
            err.message
        );
        // Pending spend counts toward the period too; all time is still there.
        assert!((e.spent() - 50.0).abs() < 1e-9);
    }

    #[test]
    fn tokens_per_minute() {
        let mut r = row(None);
        r.tpm = Some(100);
        let e = Arc::new(KeyEntry::new(r));
        let t0 = Instant::now();
        drop(e.admit(t0).unwrap());
        e.charge(60, 0.0, t0);
        let a = e.admit(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(a.limits.tpm.unwrap().remaining, 40);
        drop(a);
        e.charge(50, 0.0, t0 + Duration::from_secs(5));
        let err = e.admit(t0 + Duration::from_secs(6)).err().unwrap();
        assert_eq!(err.kind, "tokens");
        assert_eq!(err.retry_after, Some(Duration::from_secs(54)));
    }

    #[test]
    fn reset_texts() {
        assert_eq!(reset_text(Duration::from_millis(120)), "120ms");
        assert_eq!(reset_text(Duration::from_secs(1)), "1s");
        assert_eq!(reset_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
    }
}
