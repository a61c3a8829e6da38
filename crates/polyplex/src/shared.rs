//! Limits and budgets shared by every replica through Redis (`[redis] url`).
//!
//! Without Redis a key's limits are exact on one node ([`crate::keys`]).
//! With it, a key that has any limit or budget is admitted by one atomic
//! Lua script per request, over one multiplexed connection per process:
//!
//! - **requests per minute**: a hash of one-second buckets of admitted
//!   requests, summed over the last minute (a sliding window to the second,
//!   never shorter than a minute: see [`ADMIT`]);
//! - **tokens per minute**: the same, of finished requests' tokens;
//! - **concurrent requests**: a sorted set of leases, each expiring
//!   [`LEASE`] after its request started, so a replica that dies without
//!   releasing its slots frees them by then;
//! - **budget**: the key's spend, in 1e-8 USD, seeded from the store the
//!   first time a replica needs it, then raised by every replica as it
//!   charges a request; the store stays the record (`spent_usd`), Redis the
//!   running total all replicas check against. A budget that starts again
//!   (`budget_reset`) has one such total per period (`spend:<period start>`),
//!   so a new period starts from nothing on every replica at once.
//!
//! Times are Redis's own (`TIME`), so replicas' clocks do not matter. A
//! request's tokens, cost and concurrency slot are given back after it ends
//! by a task on the runtime that made the connection, in pipelined batches,
//! so no request waits for them. Keys are `polyplex:{<key id>}:<what>` (one hash slot per key).
//!
//! An end user of a key (`user_rpm`, `user_tpm`, `user_budget_usd`) has
//! the same windows and spend of its own under
//! `polyplex:{user:<key id>:<its id hashed>}:<what>`, its spend seeded from
//! its records in the store (the script answers `{5}` when it has none, and
//! the caller asks again with the sum).
//!
//! A provider's upstream limits (`rpm` / `tpm` in its config) are counted
//! by the same script for each of its deployments, under
//! `polyplex:{upstream:<provider>/<model>}:<what>`, at every attempt.
//!
//! Replicas also tell each other, on a Redis channel, of every circuit
//! they open ([`crate::health`]): the others open theirs for the same
//! cooldown, so a failing deployment is skipped everywhere after the first
//! replica has seen it fail.
//!
//! If Redis cannot be reached or answers late, the request is admitted by
//! the node's own limits instead, Redis is left alone for [`QUIET`] and the
//! log says so (once per quiet period); `polyplex_redis_errors_total`
//! counts the failures.

use crate::keys::{self, Admitted, KeyEntry, LimitState, Limits};
use crate::store::{unix_now, KeyRow};
use crate::window::Over;
use polyplex_types::GatewayError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a failing Redis is left alone before it is asked again.
pub const QUIET: Duration = Duration::from_secs(5);
/// How long a concurrency slot is held at most if never given back.
pub const LEASE: Duration = Duration::from_secs(900);
/// How long Redis keeps a key's spend after its last change; then the next
/// replica to need it seeds it from the store again.
const SPEND_TTL: Duration = Duration::from_secs(86_400);
/// An answer later than this counts as a failure (the request goes on
/// under the node's own limits).
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// KEYS: requests, tokens, leases, spend. ARGV: rpm, tpm, max concurrent
/// (0: none), budget in units (-1: none), the spend to seed with, lease id,
/// lease ms, spend ttl ms. Answers `{0, requests used, requests reset ms,
/// tokens used, tokens reset ms}` when admitted, else `{1, spent}`
/// (budget), `{2, in progress}`, `{3, used, wait ms}` (rpm), `{4, used,
/// wait ms}` (tpm), or `{5}` when the spend is not in Redis and the seed
/// given is -1 (the caller reads it from the store and asks again).
///
/// A window is a hash of one-second buckets (second → count); a bucket
/// counts until 61 seconds after its second began, so a request counts for
/// at least 60 seconds and at most 61 (never less than a minute: the limit
/// is never exceeded), and a key's window is at most 62 fields however busy
/// it is.
const ADMIT: &str = r"
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local function window(key)
  local all = redis.call('HGETALL', key)
  local total, buckets, stale = 0, {}, {}
  for i = 1, #all, 2 do
    local s = tonumber(all[i])
    if s < sec - 60 then
      stale[#stale + 1] = all[i]
    else
      local n = tonumber(all[i + 1])
      total = total + n
      buckets[#buckets + 1] = {s, n}
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  return total, buckets
end
local function release(buckets, total, limit)
  for _, b in ipairs(buckets) do
    total = total - b[2]
    if total < limit then return (b[1] + 61) * 1000 - now end
  end
  return 0
end
local rpm, tpm, maxc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
if budget >= 0 then
  local spent = redis.call('GET', KEYS[4])
  if not spent then
    if tonumber(ARGV[5]) < 0 then return {5} end
    redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[8])
    spent = ARGV[5]
  end
  if tonumber(spent) >= budget then return {1, tonumber(spent)} end
end
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  local n = redis.call('ZCARD', KEYS[3])
  if n >= maxc then return {2, n} end
end
local used_r, first_r = 0, sec
if rpm > 0 then
  local total, buckets = window(KEYS[1])
  if total >= rpm then return {3, total, release(buckets, total, rpm)} end
  used_r = total + 1
  if buckets[1] then first_r = buckets[1][1] end
end
local used_t, reset_t = 0, 0
if tpm > 0 then
  local total, buckets = window(KEYS[2])
  if total >= tpm then return {4, total, release(buckets, total, tpm)} end
  used_t = total
  if buckets[1] then reset_t = (buckets[1][1] + 61) * 1000 - now end
end
if maxc > 0 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]), ARGV[6])
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
end
local reset_r = 0
if rpm > 0 then
  redis.call('HINCRBY', KEYS[1], sec, 1)
  redis.call('PEXPIRE', KEYS[1], 62000)
  reset_r = (first_r + 61) * 1000 - now
end
return {0, used_r, reset_r, used_t, reset_t}
";

/// KEYS: tokens, spend. ARGV: tokens, units of spend, spend ttl ms. Counts
/// a finished request's tokens (in this second's bucket) and cost (if the
/// key's spend is in Redis: never a total that was not seeded).
const CHARGE: &str = r"
local sec = tonumber(redis.call('TIME')[1])
if tonumber(ARGV[1]) > 0 then
  redis.call('HINCRBY', KEYS[1], sec, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 62000)
end
if tonumber(ARGV[2]) > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('INCRBY', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return 1
";

/// The Redis keys of one gateway key.
struct Names {
    requests: String,
    tokens: String,
    leases: String,
    spend: String,
}

/// What a take of the shared limits without a concurrency slot (an end
/// user's, a deployment's) answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Taken {
    Admitted,
    /// Its budget is spent: this much (USD).
    Spent(f64),
    /// Its per-minute limit is reached.
    Over(Over),
    /// Redis has no spend for it yet: ask again with one from the store.
    Unseeded,
}

fn units_i64(units: u64) -> i64 {
    units.min(i64::MAX as u64) as i64
}

/// What [`ADMIT`] checks (and counts) for one set of names.
struct Admit<'a> {
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrent: Option<u64>,
    /// In units of [`keys::UNITS_PER_USD`].
    budget: Option<u64>,
    /// The spend to seed Redis with, in the same units (-1: none known;
    /// the script answers `{5}` if it needs one).
    spent: i64,
    lease: &'a str,
}

impl Names {
    /// The names of a deployment's upstream limits (never a key's: key
    /// ids have no `:`).
    fn upstream(provider: &str, model: &str) -> Self {
        Self::of(&format!("upstream:{provider}/{model}"))
    }

    /// The names of an end user's limits under a key: the user's id
    /// hashed (it is the client's text; a brace in it would change the
    /// names' Redis Cluster slot).
    fn end_user(key_id: &str, user: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(user.as_bytes());
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        Self::of(&format!("user:{key_id}:{hex}"))
    }

    fn of(id: &str) -> Self {
        let n = |what: &str| format!("polyplex:{{{id}}}:{what}");
        Names {
            requests: n("rpm"),
            tokens: n("tpm"),
            leases: n("leases"),
            spend: n("spend"),
        }
    }

    /// A key's names; its spend is that of its current budget period
    /// (`spend:<period start>`) when its budget starts again.
    fn of_key(spec: &KeyRow) -> Self {
        Self::of(&spec.id).in_period(spec)
    }

    /// The names of an end user of a key, its spend that of the key's
    /// current budget period.
    fn of_end_user(spec: &KeyRow, user: &str) -> Self {
        Self::end_user(&spec.id, user).in_period(spec)
    }

    fn in_period(mut self, spec: &KeyRow) -> Self {
        if let Some(r) = spec.budget_reset {
            self.spend = format!("{}:{}", self.spend, r.start(unix_now()));
        }
        self
    }
}

/// Work for Redis that no request waits on, sent in batches.
enum Op {
    /// A request ended: its concurrency slot is free.
    Release { leases: String, id: String },
    /// A request's tokens and cost.
    Charge {
        tokens_key: String,
        spend_key: String,
        tokens: u64,
        units: u64,
    },
    /// A deployment's circuit opened here: tell the other replicas.
    Publish(String),
    /// Answer once everything sent before is done.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The channel on which replicas tell each other of circuits they opened:
/// `<node> <cooldown ms> <provider>/<model>`.
const HEALTH_CHANNEL: &str = "polyplex:health";

/// Most operations sent to Redis in one pipeline.
const BATCH: usize = 256;

/// The shared limits of this process: one connection (made lazily,
/// re-made by the manager after a failure), the admission script and the
/// queue of background work.
pub struct SharedLimits {
    client: redis::Client,
    /// This process, in the health messages (its own are ignored).
    node: String,
    /// The task that applies the other replicas' health messages.
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    conn: ConnectionManager,
    admit: Script,
    ops: tokio::sync::mpsc::UnboundedSender<Op>,
    base: Instant,
    /// Milliseconds since `base` before which Redis is not asked.
    quiet_until: AtomicU64,
    /// Where Redis is, for the log (never its password).
    addr: String,
}

/// A concurrency slot held in Redis: given back when dropped.
pub struct Lease {
    shared: Arc<SharedLimits>,
    leases: String,
    id: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let leases = std::mem::take(&mut self.leases);
        let id = std::mem::take(&mut self.id);
        let _ = self.shared.ops.send(Op::Release { leases, id });
    }
}

impl SharedLimits {
    /// The multiplexed connection, for other users of the same Redis (the
    /// response cache).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Prepares the connection to `url` and the task that sends the
    /// background work, on the current runtime (which must outlive the
    /// gateway's serving threads); connects on first use.
    pub fn new(url: &str) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis.url: {e}"))?;
        let addr = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1);
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "redis: no runtime to connect on".to_string())?;
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("redis: {e}"))?;
        let (ops, rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(SharedLimits {
            client,
            node: format!("{:016x}", rand::random::<u64>()),
            listener: std::sync::Mutex::new(None),
            conn,
            admit: Script::new(ADMIT),
            ops,
            base: Instant::now(),
            quiet_until: AtomicU64::new(0),
            addr,
        });
        runtime.spawn(send_ops(Arc::downgrade(&shared), rx));
        Ok(shared)
    }

    /// `key`'s budget was changed (admin API): its running spend in Redis
    /// restarts from what the store and this node know, so a budget removed
    /// and set again does not miss the spend made without one meanwhile.
    pub async fn reseed_spend(&self, key: &KeyEntry) {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg(Names::of_key(&key.spec()).spend)
            .arg(keys::usd_units(key.budget_spent()))
            .arg("PX")
            .arg(SPEND_TTL.as_millis() as u64)
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            self.failed(&e);
        }
    }

    /// A deployment's circuit opened on this replica for `cooldown`: the
    /// others open theirs too (in the background).
    pub fn circuit_opened(&self, provider: &str, model: &str, cooldown: Duration) {
        let msg = format!("{} {} {provider}/{model}", self.node, cooldown.as_millis());
        let _ = self.ops.send(Op::Publish(msg));
    }

    /// Applies the circuits other replicas open: `apply(provider, model,
    /// cooldown)` for each, until these limits are dropped. Reconnects
    /// after a failure (every 2 s).
    pub fn listen_health<F>(self: &Arc<Self>, apply: F)
    where
        F: Fn(&str, &str, Duration) + Send + Sync + 'static,
    {
        let client = self.client.clone();
        let node = self.node.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(mut ps) = client.get_async_pubsub().await {
                    if ps.subscribe(HEALTH_CHANNEL).await.is_ok() {
                        let mut messages = ps.on_message();
                        while let Some(m) = futures::StreamExt::next(&mut messages).await {
                            let Ok(text) = m.get_payload::<String>() else {
                                continue;
                            };
                            match health_message(&text) {
                                Some((from, provider, model, cooldown)) if from != node => {
                                    apply(provider, model, cooldown)
                                }
                                _ => {}
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        if let Ok(mut l) = self.listener.lock() {
            if let Some(old) = l.replace(task) {
                old.abort();
            }
        }
    }

    /// Where Redis is (host and port; for the log).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Asks Redis once (`PING`), waiting at most 2 s: for start-up and
    /// `polyplex check`.
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
            Err(_) => Err("no answer within 2s".into()),
        }
    }

    /// Resolves once the background work sent so far is in Redis (or
    /// failed): before a graceful shutdown ends.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.ops.send(Op::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn quiet(&self) -> bool {
        self.now_ms() < self.quiet_until.load(Ordering::Relaxed)
    }

    /// Redis failed: leave it alone for [`QUIET`], saying so once.
    fn failed(&self, e: &redis::RedisError) {
        metrics::counter!("polyplex_redis_errors_total").increment(1);
        let now = self.now_ms();
        let until = now + QUIET.as_millis() as u64;
        let before = self.quiet_until.swap(until, Ordering::Relaxed);
        if before <= now {
            tracing::warn!(
                redis = %self.addr,
                error = %e,
                "Redis failed: limits and budgets are this node's own for the next {}s",
                QUIET.as_secs()
            );
        }
    }

    /// Admits a request of `key` against the limits all replicas share.
    /// None: the key has no limits, or Redis is out of reach — the caller
    /// admits it on this node's own.
    pub async fn admit(
        self: &Arc<Self>,
        key: &Arc<KeyEntry>,
    ) -> Option<Result<Admitted, GatewayError>> {
        let spec = key.spec();
        let budget = spec.budget_usd.map(keys::usd_units);
        let limited = spec.rpm.is_some() || spec.tpm.is_some() || spec.max_concurrent.is_some();
        if !limited && budget.is_none() {
            return None;
        }
        if self.quiet() {
            return None;
        }
        let names = Names::of_key(&spec);
        let lease = format!("{:016x}", rand::random::<u64>());
        let answer = self
            .invoke_admit(
                &names,
                Admit {
                    rpm: spec.rpm,
                    tpm: spec.tpm,
                    max_concurrent: spec.max_concurrent,
                    budget,
                    spent: units_i64(keys::usd_units(key.budget_spent())),
                    lease: &lease,
                },
            )
            .await?;
        let at = |i: usize| answer.get(i).copied().unwrap_or(0).max(0) as u64;
        let ms = |i: usize| Duration::from_millis(at(i));
        let refused = match answer.first().copied() {
            Some(0) => None,
            Some(1) => Some(keys::over_budget(&spec, at(1) as f64 / keys::UNITS_PER_USD)),
            Some(2) => Some(keys::over_concurrency(&spec, at(1))),
            Some(3) => Some(keys::over_rpm(&spec, at(1), ms(2))),
            Some(4) => Some(keys::over_tpm(&spec, at(1), ms(2))),
            _ => {
                tracing::warn!(answer = ?answer, "unexpected answer from the shared limits script");
                return None;
            }
        };
        if let Some(e) = refused {
            return Some(Err(e));
        }
        let limits = Limits {
            rpm: spec.rpm.map(|limit| LimitState {
                limit,
                remaining: limit.saturating_sub(at(1)),
                reset: ms(2),
            }),
            tpm: spec.tpm.map(|limit| LimitState {
                limit,
                remaining: limit.saturating_sub(at(3)),
                reset: ms(4),
            }),
        };
        let lease = spec.max_concurrent.map(|_| Lease {
            shared: self.clone(),
            leases: names.leases,
            id: lease,
        });
        Some(Ok(key.admitted(spec, limits, lease)))
    }

    /// Runs [`ADMIT`] on one set of names; None if Redis failed (noted).
    async fn invoke_admit(&self, names: &Names, a: Admit<'_>) -> Option<Vec<i64>> {
        let mut call = self.admit.prepare_invoke();
        call.key(&names.requests)
            .key(&names.tokens)
            .key(&names.leases)
            .key(&names.spend)
            .arg(a.rpm.unwrap_or(0))
            .arg(a.tpm.unwrap_or(0))
            .arg(a.max_concurrent.unwrap_or(0))
            .arg(a.budget.map_or(-1, |b| b as i64))
            .arg(a.spent)
            .arg(a.lease)
            .arg(LEASE.as_millis() as u64)
            .arg(SPEND_TTL.as_millis() as u64);
        let mut conn = self.conn.clone();
        match call.invoke_async(&mut conn).await {
            Ok(a) => Some(a),
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// Takes one request of a deployment's upstream limits (its provider's
    /// `rpm` / `tpm`) for every replica. None: Redis is out of reach, and
    /// the caller counts on this node.
    pub async fn take_upstream(
        &self,
        provider: &str,
        model: &str,
        rpm: Option<u64>,
        tpm: Option<u64>,
    ) -> Option<Result<(), Over>> {
        let admit = Admit {
            rpm,
            tpm,
            max_concurrent: None,
            budget: None,
            spent: 0,
            lease: "",
        };
        match self.take(&Names::upstream(provider, model), admit).await? {
            Taken::Admitted => Some(Ok(())),
            Taken::Over(over) => Some(Err(over)),
            // No budget was asked about.
            Taken::Spent(_) | Taken::Unseeded => None,
        }
    }

    /// Admits one request of an end user under a key for every replica:
    /// the key's `user_budget_usd` (the end user's spend in the key's
    /// budget period, seeded with `seed` units when Redis has none: without
    /// one the answer is [`Taken::Unseeded`]), then its `user_rpm` /
    /// `user_tpm`. None: Redis is out of reach, and the caller decides on
    /// this node.
    pub async fn take_end_user(
        &self,
        spec: &KeyRow,
        user: &str,
        seed: Option<u64>,
    ) -> Option<Taken> {
        let admit = Admit {
            rpm: spec.user_rpm,
            tpm: spec.user_tpm,
            max_concurrent: None,
            budget: spec.user_budget_usd.map(keys::usd_units),
            spent: seed.map_or(-1, units_i64),
            lease: "",
        };
        self.take(&Names::of_end_user(spec, user), admit).await
    }

    /// Counts an end user's finished request's tokens and cost against
    /// the key's `user_tpm` and `user_budget_usd` for every replica (in
    /// the background).
    pub fn charge_end_user(&self, spec: &KeyRow, user: &str, tokens: u64, cost_usd: f64) {
        let tokens = if spec.user_tpm.is_some() { tokens } else { 0 };
        let units = if spec.user_budget_usd.is_some() {
            keys::usd_units(cost_usd)
        } else {
            0
        };
        self.send_charge(Names::of_end_user(spec, user), tokens, units);
    }

    /// Counts `tokens` against the `tpm` kept under `names` (in the background).
    fn charge_tokens(&self, names: Names, tokens: u64) {
        self.send_charge(names, tokens, 0);
    }

    /// Counts `tokens` and `units` of spend under `names` (in the background).
    fn send_charge(&self, names: Names, tokens: u64, units: u64) {
        if (tokens == 0 && units == 0) || self.quiet() {
            return;
        }
        let _ = self.ops.send(Op::Charge {
            tokens_key: names.tokens,
            spend_key: names.spend,
            tokens,
            units,
        });
    }

    /// Runs [`ADMIT`] under `names` without a concurrency slot: a
    /// budget (if `admit` has one), then the per-minute limits. None: Redis
    /// is out of reach (or answered what it should not: logged).
    async fn take(&self, names: &Names, admit: Admit<'_>) -> Option<Taken> {
        if self.quiet() {
            return None;
        }
        let answer = self.invoke_admit(names, admit).await?;
        let at = |i: usize| answer.get(i).copied().unwrap_or(0).max(0) as u64;
        let wait = Duration::from_millis(at(2));
        Some(match answer.first().copied() {
            Some(0) => Taken::Admitted,
            Some(1) => Taken::Spent(at(1) as f64 / keys::UNITS_PER_USD),
            Some(3) => Taken::Over(Over::Requests { used: at(1), wait }),
            Some(4) => Taken::Over(Over::Tokens { used: at(1), wait }),
            Some(5) => Taken::Unseeded,
            _ => {
                tracing::warn!(answer = ?answer, "unexpected answer from the shared limits script");
                return None;
            }
        })
    }

    /// Counts a deployment's finished request's tokens against its
    /// upstream `tpm` for every replica (in the background).
    pub fn charge_upstream(&self, provider: &str, model: &str, tokens: u64) {
        self.charge_tokens(Names::upstream(provider, model), tokens);
    }

    /// Counts a finished request's tokens and cost for every replica (in
    /// the background; a failure is logged and counted).
    pub fn charge(&self, key: &KeyEntry, tokens: u64, cost_usd: f64) {
        let spec = key.spec();
        let tokens = if spec.tpm.is_some() { tokens } else { 0 };
        let units = if spec.budget_usd.is_some() {
            keys::usd_units(cost_usd)
        } else {
            0
        };
        self.send_charge(Names::of_key(&spec), tokens, units);
    }
}

impl Drop for SharedLimits {
    fn drop(&mut self) {
        if let Ok(mut l) = self.listener.lock() {
            if let Some(task) = l.take() {
                task.abort();
            }
        }
    }
}

/// A health message's parts: the node that sent it, the deployment's
/// provider and model, and the cooldown (`<node> <ms> <provider>/<model>`).
fn health_message(text: &str) -> Option<(&str, &str, &str, Duration)> {
    let mut parts = text.splitn(3, ' ');
    let (from, ms, deployment) = (parts.next()?, parts.next()?, parts.next()?);
    let (provider, model) = deployment.split_once('/')?;
    Some((
        from,
        provider,
        model,
        Duration::from_millis(ms.parse().ok()?),
    ))
}

/// Sends the background work to Redis, up to [`BATCH`] operations a round
/// trip, until the limits are dropped.
async fn send_ops(
    shared: std::sync::Weak<SharedLimits>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Op>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let Some(s) = shared.upgrade() else { return };
        let mut pipe = redis::pipe();
        let mut waiting = Vec::new();
        for op in batch.drain(..) {
            match op {
                Op::Release { leases, id } => {
                    pipe.cmd("ZREM").arg(leases).arg(id).ignore();
                }
                Op::Charge {
                    tokens_key,
                    spend_key,
                    tokens,
                    units,
                } => {
                    // EVAL, not EVALSHA: a Redis restarted since has no
                    // script cache, and it caches the script on first use.
                    pipe.cmd("EVAL")
                        .arg(CHARGE)
                        .arg(2)
                        .arg(tokens_key)
                        .arg(spend_key)
                        .arg(tokens)
                        .arg(units)
                        .arg(SPEND_TTL.as_millis() as u64)
                        .ignore();
                }
                Op::Publish(msg) => {
                    pipe.cmd("PUBLISH").arg(HEALTH_CHANNEL).arg(msg).ignore();
                }
                Op::Flush(done) => waiting.push(done),
            }
        }
        if !pipe.is_empty() {
            let mut conn = s.conn.clone();
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                s.failed(&e);
            }
        }
        for w in waiting {
            let _ = w.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages_name_node_deployment_and_cooldown() {
        assert_eq!(
            health_message("00ab 30000 openai/gpt-4o"),
            Some(("00ab", "openai", "gpt-4o", Duration::from_secs(30)))
        );
        // A model name may hold a slash or a space; the provider never does.
        assert_eq!(
            health_message("n 5 together/meta-llama/Llama 3"),
            Some((
                "n",
                "together",
                "meta-llama/Llama 3",
                Duration::from_millis(5)
            ))
        );
        assert_eq!(health_message("n 5 no-slash"), None);
        assert_eq!(health_message("n soon a/b"), None);
        assert_eq!(health_message("n"), None);
    }
}
