//! Alerts: JSON posted to a webhook (`[alerts] webhook_url`) when
//! something an operator should know about happens:
//!
//! - `budget.threshold`: a gateway key's spend reached a configured
//!   fraction of its budget (`budget_thresholds`, 80% and 100% by default),
//!   once per key, budget period, budget amount and threshold; several
//!   crossed at once send the highest. Spend is read every 2 seconds from
//!   what the node knows (the store's sum, reloaded, and its own records
//!   not yet written), off the request path; the thresholds a key had
//!   already passed when the gateway started are not sent again.
//! - `circuit.opened`: a deployment's circuit opened on this node (its
//!   error ratio crossed `[routing] breaker_error_ratio`), with the cooldown
//!   and the last error. Not for a circuit a probe found still failing,
//!   nor for one opened because another replica said so.
//! - `circuit.closed`: the probe after an open circuit's cooldown
//!   succeeded; the deployment is routed to again.
//! - `key.expiring`: a gateway key's expiry is within
//!   `key_expiry_notice_hours` (168, a week, by default); once per key and
//!   expiry (the keys already within it when the gateway started are not
//!   sent again).
//! - `store.failing` / `store.recovered`: this node's usage writer could
//!   not write to the store for [`crate::spool::ALERT_AFTER`] (its records
//!   are held), and then could again. Per node, not claimed.
//!
//! With `[redis]`, each alert is sent by one replica only: the first to
//! claim it (`SET NX`) sends it; a budget alert's claim lasts 40 days, a
//! circuit's its cooldown. Delivery is in the background (a queue of
//! [`QUEUE`], then dropped and counted), each alert tried 3 times (5 s
//! each, waiting 0.5 s then 1 s); nothing waits on it but a graceful
//! shutdown, for at most [`FINISH`] ([`Alerts::finish`]). Every body has
//! `type`, `at` (RFC 3339) and `text` (one line for a person: Slack's and
//! Mattermost's incoming webhooks show it as it is; the same line as
//! `content` for Discord's). The URL and header
//! values may hold secrets (`${VAR}`) and never appear in logs.

use crate::keys::Keys;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Alerts waiting to be sent, at most.
const QUEUE: usize = 256;
/// How often key spend is read against the thresholds.
const BUDGET_CHECK: Duration = Duration::from_secs(2);
const ATTEMPTS: u32 = 3;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a graceful shutdown waits for the alerts still queued.
const FINISH: Duration = Duration::from_secs(5);
/// How long a budget alert's claim holds across replicas (longer than any
/// budget period).
const BUDGET_CLAIM: Duration = Duration::from_secs(40 * 86_400);

/// `[alerts]`.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub webhook_url: SecretString,
    /// Extra headers (an `Authorization`, say), values secret.
    pub headers: Vec<(String, SecretString)>,
    /// Fractions of a key's budget that alert, ascending.
    pub budget_thresholds: Vec<f64>,
    /// Which events are sent.
    pub budget: bool,
    pub circuit: bool,
    pub store: bool,
    pub key: bool,
    /// How long before a key expires `key.expiring` is sent.
    pub key_expiry_notice: Duration,
}

/// One alert on its way.
struct Alert {
    kind: &'static str,
    body: Value,
    /// The Redis key whose claim makes this replica the one to send it,
    /// and how long the claim holds.
    claim: Option<(String, Duration)>,
}

/// A key's threshold passed: key id, budget period start, budget (in
/// 1e-8 USD), threshold index.
type Passed = (String, i64, u64, usize);

pub struct Alerts {
    cfg: AlertsConfig,
    tx: mpsc::Sender<Alert>,
    /// Tells the sender to send what is queued and end ([`Alerts::finish`]).
    stop: watch::Sender<bool>,
    sender: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The thresholds every key has passed, as last read.
    passed: Mutex<HashSet<Passed>>,
    /// Whether the thresholds passed before the first read are known.
    primed: AtomicBool,
    /// The keys (id, expiry) within their notice, as last read; whether
    /// those within it at the first read are known.
    expiring: Mutex<HashSet<(String, i64)>>,
    expiring_primed: AtomicBool,
}

impl Alerts {
    /// Starts the sender, and the budget check over `keys`, on `runtime`;
    /// both end when the returned value is dropped. `before`: the alerts
    /// this replaces (a reload), whose knowledge of the budget thresholds
    /// already passed is kept (nothing sent twice, nothing missed).
    pub fn start(
        cfg: AlertsConfig,
        keys: &Arc<Keys>,
        redis: Option<redis::aio::ConnectionManager>,
        runtime: &tokio::runtime::Handle,
        before: Option<&Alerts>,
    ) -> Result<Arc<Alerts>, String> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let client = {
            // (The client's pool lives on the runtime it is made on.)
            let _on = runtime.enter();
            crate::client::HttpClient::new(ATTEMPT_TIMEOUT, 2)?
        };
        let target = Target::of(&cfg)?;
        let (stop, stopped) = watch::channel(false);
        let sender = runtime.spawn(deliver(client, target, redis, rx, stopped));
        let (passed, primed, expiring, expiring_primed) = match before {
            Some(b) => (
                b.passed.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                b.primed.load(Ordering::Relaxed),
                b.expiring.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                b.expiring_primed.load(Ordering::Relaxed),
            ),
            None => (HashSet::new(), false, HashSet::new(), false),
        };
        let alerts = Arc::new(Alerts {
            cfg,
            tx,
            stop,
            sender: Mutex::new(Some(sender)),
            passed: Mutex::new(passed),
            primed: AtomicBool::new(primed),
            expiring: Mutex::new(expiring),
            expiring_primed: AtomicBool::new(expiring_primed),
        });
        if alerts.cfg.budget || alerts.cfg.key {
            runtime.spawn(check_keys(Arc::downgrade(&alerts), Arc::downgrade(keys)));
        }
        Ok(alerts)
    }

    /// At a graceful shutdown, once requests are done: reads the budgets a
    /// last time (a threshold passed by the last requests is sent too),
    /// then sends what is queued, for at most [`FINISH`].
    pub async fn finish(&self, keys: &Keys) {
        if self.cfg.budget && self.primed.load(Ordering::Relaxed) {
            self.check_budgets(keys);
        }
        self.close().await;
    }

    /// Sends what is queued (for at most [`FINISH`]) and ends the sender:
    /// at shutdown, or when a reload replaced these alerts.
    pub async fn close(&self) {
        let _ = self.stop.send(true);
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut sender) = sender else {
            return;
        };
        if tokio::time::timeout(FINISH, &mut sender).await.is_err() {
            sender.abort();
            tracing::warn!(
                "alerts still unsent after {}s of shutdown are dropped",
                FINISH.as_secs()
            );
        }
    }

    /// Queues `alert`, its body completed with what every alert has: its
    /// `type`, `at`, and its line for people as `content` too, which
    /// Discord's webhooks read (Slack's and Mattermost's read `text`).
    fn send(&self, mut alert: Alert) {
        alert.body["type"] = alert.kind.into();
        alert.body["at"] = now_text().into();
        if let Some(text) = alert.body.get("text").cloned() {
            alert.body["content"] = text;
        }
        match self.tx.try_send(alert) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("polyplex_alerts_total", "result" => "dropped").increment(1);
                tracing::warn!("alert dropped: {QUEUE} alerts already wait for the webhook");
            }
            Err(mpsc::error::TrySendError::Closed(a)) => {
                metrics::counter!("polyplex_alerts_total", "result" => "dropped").increment(1);
                tracing::warn!(
                    alert = a.kind,
                    "alert dropped: the gateway is stopping (alerts were sent)"
                );
            }
        }
    }

    /// This node's usage writer has not been able to write to the store
    /// for `failing_for`; `held` records wait ([`crate::spool`]).
    pub fn store_failing(&self, failing_for: Duration, held: usize, last_error: &str) {
        if !self.cfg.store {
            return;
        }
        self.send(Alert {
            kind: "store.failing",
            body: json!({
                "text": format!(
                    "polyplex: the store has not taken usage records for {}s; {held} held on this node (last error: {last_error})",
                    failing_for.as_secs()
                ),
                "node": node(),
                "failing_for_s": failing_for.as_secs(),
                "held": held,
                "last_error": last_error,
            }),
            claim: None,
        });
    }

    /// The store takes this node's usage records again, after a
    /// [`Alerts::store_failing`].
    pub fn store_recovered(&self, failed_for: Duration, written: usize) {
        if !self.cfg.store {
            return;
        }
        self.send(Alert {
            kind: "store.recovered",
            body: json!({
                "text": format!(
                    "polyplex: the store takes usage records again after {}s; the {written} held on this node are written",
                    failed_for.as_secs()
                ),
                "node": node(),
                "failed_for_s": failed_for.as_secs(),
                "written": written,
            }),
            claim: None,
        });
    }

    /// A deployment's circuit opened here (see [`crate::health`]).
    pub fn circuit_opened(
        &self,
        provider: &str,
        model: &str,
        cooldown: Duration,
        last_error: Option<String>,
    ) {
        if !self.cfg.circuit {
            return;
        }
        let ms = cooldown.as_millis() as u64;
        let why = last_error.as_deref().unwrap_or("errors");
        self.send(Alert {
            kind: "circuit.opened",
            body: json!({
                "text": format!("polyplex: {provider}/{model} failed too often and is skipped for {}s (last error: {why})", ms / 1000),
                "provider": provider,
                "model": model,
                "cooldown_ms": ms,
                "last_error": last_error,
            }),
            claim: Some((
                format!("polyplex:{{upstream:{provider}/{model}}}:alert:circuit"),
                cooldown,
            )),
        });
    }

    /// A deployment's open circuit closed here: the probe after its
    /// cooldown succeeded (one replica says so within a cooldown).
    pub fn circuit_closed(&self, provider: &str, model: &str, cooldown: Duration) {
        if !self.cfg.circuit {
            return;
        }
        self.send(Alert {
            kind: "circuit.closed",
            body: json!({
                "text": format!("polyplex: {provider}/{model} answers again and is routed to"),
                "provider": provider,
                "model": model,
            }),
            claim: Some((
                format!("polyplex:{{upstream:{provider}/{model}}}:alert:circuit-closed"),
                cooldown,
            )),
        });
    }

    /// Alerts for the keys newly within [`AlertsConfig::key_expiry_notice`]
    /// of their expiry (the first read only learns them).
    pub fn check_expiry(&self, keys: &Keys) {
        let primed = self.expiring_primed.swap(true, Ordering::Relaxed);
        let now = crate::store::unix_now();
        let notice = self.cfg.key_expiry_notice.as_secs() as i64;
        let mut within = HashSet::new();
        let mut news = Vec::new();
        let mut before = self.expiring.lock().unwrap_or_else(|p| p.into_inner());
        for entry in keys.all() {
            let spec = entry.spec();
            let Some(at) = spec.expires_at else { continue };
            if spec.revoked_at.is_some() || at <= now || at - now > notice {
                continue;
            }
            let k = (spec.id.clone(), at);
            if primed && !before.contains(&k) {
                news.push(spec.clone());
            }
            within.insert(k);
        }
        *before = within;
        drop(before);
        for spec in news {
            let Some(at) = spec.expires_at else { continue };
            let left = at - now;
            self.send(Alert {
                kind: "key.expiring",
                body: json!({
                    "text": format!(
                        "polyplex: key `{}` ({}) expires at {} (in {})",
                        spec.name,
                        spec.id,
                        crate::budget::rfc3339(at),
                        humantime::format_duration(Duration::from_secs(left.max(0) as u64))
                    ),
                    "key_id": spec.id,
                    "key_name": spec.name,
                    "expires_at": crate::budget::rfc3339(at),
                    "expires_in_s": left,
                }),
                claim: Some((
                    format!("polyplex:{{{}}}:alert:expiring:{at}", spec.id),
                    Duration::from_secs(left.max(0) as u64 + 86_400),
                )),
            });
        }
    }

    /// Reads every key's spend against the thresholds; alerts for those
    /// newly passed (the first read only learns them).
    pub fn check_budgets(&self, keys: &Keys) {
        let primed = self.primed.swap(true, Ordering::Relaxed);
        let now = crate::store::unix_now();
        let mut passed = HashSet::new();
        let mut news = Vec::new();
        // (Held for the read: the check task and the shutdown's last read.)
        let mut before = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        for entry in keys.all() {
            let spec = entry.spec();
            let Some(budget) = spec.budget_usd.filter(|b| *b > 0.0) else {
                continue;
            };
            if spec.revoked_at.is_some() || spec.expires_at.is_some_and(|t| t <= now) {
                continue;
            }
            let spent = entry.budget_spent();
            let period = spec.budget_reset.map_or(0, |r| r.start(now));
            let units = crate::keys::usd_units(budget);
            let mut highest_new = None;
            for (i, t) in self.cfg.budget_thresholds.iter().enumerate() {
                if spent < t * budget {
                    break;
                }
                let p = (spec.id.clone(), period, units, i);
                if !before.contains(&p) {
                    highest_new = Some((i, *t));
                }
                passed.insert(p);
            }
            if let (Some((i, t)), true) = (highest_new, primed) {
                news.push((spec.clone(), period, units, i, t, spent));
            }
        }
        *before = passed;
        drop(before);
        for (spec, period, units, i, t, spent) in news {
            let pct = (t * 100.0).round();
            let budget = spec.budget_usd.unwrap_or_default();
            self.send(Alert {
                kind: "budget.threshold",
                body: json!({
                    "text": format!(
                        "polyplex: key `{}` ({}) has spent ${:.4} of its ${budget} budget ({pct}%){}",
                        spec.name,
                        spec.id,
                        spent,
                        spec.budget_reset.map(|r| format!(" this {}", r.as_str())).unwrap_or_default()
                    ),
                    "key_id": spec.id,
                    "key_name": spec.name,
                    "threshold": t,
                    "budget_usd": budget,
                    "spent_usd": spent,
                    "budget_reset": spec.budget_reset.map(|r| r.as_str()),
                    "period_start": spec.budget_reset.map(|_| crate::budget::rfc3339(period)),
                }),
                claim: Some((
                    format!("polyplex:{{{}}}:alert:budget:{period}:{units}:{i}", spec.id),
                    BUDGET_CLAIM,
                )),
            });
        }
    }
}

/// This node's host name, for alerts about it alone.
fn node() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

fn now_text() -> String {
    crate::budget::rfc3339(crate::store::unix_now())
}

/// Reads the keys' spend and expiry every [`BUDGET_CHECK`] while both
/// still exist.
async fn check_keys(alerts: Weak<Alerts>, keys: Weak<Keys>) {
    let mut tick = tokio::time::interval(BUDGET_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Some(alerts), Some(keys)) = (alerts.upgrade(), keys.upgrade()) else {
            return;
        };
        if alerts.cfg.budget {
            alerts.check_budgets(&keys);
        }
        if alerts.cfg.key {
            alerts.check_expiry(&keys);
        }
    }
}

/// Where alerts go: the URL and headers, made once.
struct Target {
    uri: axum::http::Uri,
    headers: HeaderMap,
}

impl Target {
    fn of(cfg: &AlertsConfig) -> Result<Target, String> {
        let uri = cfg
            .webhook_url
            .expose_secret()
            .parse()
            .map_err(|_| "alerts.webhook_url: not a URL".to_string())?;
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("alerts.headers.{k}: not a header name"))?;
            let mut value = HeaderValue::from_str(v.expose_secret())
                .map_err(|_| format!("alerts.headers.{k}: not a header value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(Target { uri, headers })
    }
}

/// Sends what comes on `rx` until every sender is gone, or until `stop`,
/// then what is still queued.
async fn deliver(
    client: crate::client::HttpClient,
    target: Target,
    redis: Option<redis::aio::ConnectionManager>,
    mut rx: mpsc::Receiver<Alert>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let alert = tokio::select! {
            biased;
            alert = rx.recv() => alert,
            () = async { drop(stop.wait_for(|s| *s).await) } => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(alert) = alert else {
            return;
        };
        send_one(&client, &target, redis.as_ref(), alert).await;
    }
}

/// Claims (with Redis) and posts one alert, with its retries.
async fn send_one(
    client: &crate::client::HttpClient,
    target: &Target,
    redis: Option<&redis::aio::ConnectionManager>,
    alert: Alert,
) {
    if let (Some(conn), Some((key, ttl))) = (redis, &alert.claim) {
        if !claimed(conn, key, *ttl).await {
            return;
        }
    }
    let body = bytes::Bytes::from(alert.body.to_string());
    let mut sent = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << (attempt - 1))).await;
        }
        match post(client, target, body.clone()).await {
            Ok(()) => {
                sent = Some(attempt);
                break;
            }
            Err(why) => tracing::warn!(
                alert = alert.kind,
                attempt = attempt + 1,
                "the alert webhook failed: {why}"
            ),
        }
    }
    let result = if sent.is_some() { "sent" } else { "failed" };
    metrics::counter!("polyplex_alerts_total", "type" => alert.kind, "result" => result)
        .increment(1);
    if sent.is_some() {
        tracing::info!(alert = alert.kind, "alert sent");
    }
}

/// Whether this replica claimed `key` (for `ttl`) before any other; a
/// Redis that does not answer leaves the claim to this one (an alert sent
/// twice beats one never sent).
async fn claimed(conn: &redis::aio::ConnectionManager, key: &str, ttl: Duration) -> bool {
    let mut conn = conn.clone();
    let mut set = redis::cmd("SET");
    set.arg(key)
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64);
    match tokio::time::timeout(
        Duration::from_secs(1),
        set.query_async::<Option<String>>(&mut conn),
    )
    .await
    {
        Ok(Ok(got)) => got.is_some(),
        _ => {
            metrics::counter!("polyplex_redis_errors_total").increment(1);
            true
        }
    }
}

/// One POST of `body`; a 2xx answer is delivery.
async fn post(
    client: &crate::client::HttpClient,
    target: &Target,
    body: bytes::Bytes,
) -> Result<(), String> {
    let fut = async {
        let resp = client
            .send(
                Method::POST,
                target.uri.clone(),
                target.headers.clone(),
                body,
            )
            .await
            .map_err(|f| f.detail().to_string())?;
        let status = resp.status();
        // Read to the end: the connection goes back to the pool.
        let _ = crate::client::read_body(resp.into_body()).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs())))
}
