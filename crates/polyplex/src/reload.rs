//! Reloading the configuration file while serving: `SIGHUP`, or
//! `POST /admin/reload` (master key).
//!
//! The file is read and validated as at start; a file that does not pass
//! changes nothing (the log, or the admin answer, says why). One that does
//! replaces the providers, the routes and the default routing strategy at
//! once: a new [`Router`] is swapped in whole, so a plan is made from the
//! old one or the new one, never half of each, and a request under way
//! keeps the deployments it planned with to its end. A provider kept under
//! the same name, protocol and base URL keeps its live statistics (open
//! circuits, latencies, upstream limit windows): a reload forgets no
//! outage. A new master key replaces the old one (rotation); whether
//! there is one at all stays as started. `[alerts]` is replaced (the old
//! alerts send what they queued) and `[cache]` applied to the running
//! cache (turned on or off, resized, retimed), and so are `[server]`'s
//! body limit and timeout and CORS origins. The other settings (listen
//! address, store, Redis, `[server]`'s header timeout, shutdown grace,
//! threads and busy polling, `[batches]`, `[routing]`'s breaker and retry
//! budget) are bound at start; a reload
//! that changes one of them applies the rest and names it as needing a
//! restart.
//!
//! Each replica reloads its own file (send each one `SIGHUP`, or call each
//! one's admin API); keys, limits, budgets and usage are in the store and
//! Redis and are not part of the file.

use crate::config::{Config, ProviderConfig, RouteConfig, Strategy};
use crate::routing::Router;
use crate::server::AppState;
use crate::upstream::Upstream;
use polyplex_catalog::Catalog;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex, OnceLock};

/// Reads the configuration to reload (the file `serve` started from).
type Source = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// The configuration the gateway runs, as a reload compares it, and where
/// the next one comes from.
pub struct Applied {
    now: Mutex<Snapshot>,
    source: OnceLock<Source>,
}

/// What a reload compares: fingerprints, no secret kept in the clear.
struct Snapshot {
    /// Each provider's name and the fingerprint of its whole configuration.
    providers: Vec<(String, [u8; 32])>,
    routes: Vec<(String, String)>,
    strategy: Strategy,
    /// The master key's fingerprint.
    master: [u8; 32],
    /// `[alerts]`'s fingerprint.
    alerts: [u8; 32],
    cache: Option<crate::cache::CacheConfig>,
    /// The `[server]` settings a reload applies, by name.
    server: Vec<(&'static str, String)>,
    /// The settings bound at start: name and fingerprint.
    fixed: Vec<(&'static str, [u8; 32])>,
}

impl Snapshot {
    fn of(cfg: &Config) -> Snapshot {
        Snapshot {
            providers: cfg
                .providers
                .iter()
                .map(|p| (p.name.clone(), provider_print(p)))
                .collect(),
            routes: cfg
                .routes
                .iter()
                .map(|r| (r.name.clone(), route_print(r)))
                .collect(),
            strategy: cfg.routing.strategy,
            master: digest(&[master_key(cfg).unwrap_or("\u{0}none")]),
            alerts: alerts_print(cfg.alerts.as_ref()),
            cache: cfg.cache,
            server: vec![
                ("server.max_body_bytes", cfg.max_body_bytes.to_string()),
                ("server.body_timeout_ms", format!("{:?}", cfg.body_timeout)),
                ("server.cors_origins", format!("{:?}", cfg.cors_origins)),
            ],
            fixed: fixed_prints(cfg),
        }
    }
}

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// A provider's whole configuration, its secrets included (hashed).
fn provider_print(p: &ProviderConfig) -> [u8; 32] {
    let plain = format!("{p:?}");
    let mut parts = vec![plain.as_str()];
    if let Some(k) = &p.api_key {
        parts.push(k.expose_secret());
    }
    if let Some(s) = &p.sigv4 {
        parts.extend(s.secrets());
    }
    digest(&parts)
}

fn route_print(r: &RouteConfig) -> String {
    format!("{r:?}")
}

fn master_key(cfg: &Config) -> Option<&str> {
    cfg.master_key.as_ref().map(|k| k.expose_secret())
}

/// `[alerts]`, its secrets included (hashed).
fn alerts_print(a: Option<&crate::alerts::AlertsConfig>) -> [u8; 32] {
    let Some(a) = a else {
        return digest(&["\u{0}none"]);
    };
    let plain = format!("{a:?}");
    let mut parts = vec![plain.as_str(), a.webhook_url.expose_secret()];
    parts.extend(a.headers.iter().map(|(_, v)| v.expose_secret()));
    digest(&parts)
}

/// The settings a reload does not apply, each fingerprinted. (The master
/// key is rotated by a reload; whether there is one is bound at start.)
fn fixed_prints(cfg: &Config) -> Vec<(&'static str, [u8; 32])> {
    let master = if cfg.master_key.is_some() {
        "set"
    } else {
        "unset"
    };
    let routing = format!(
        "{:?}",
        (
            cfg.routing.retry_budget_ratio,
            cfg.routing.retry_budget_min_per_s,
            cfg.routing.health,
        )
    );
    vec![
        ("listen", digest(&[&cfg.listen.to_string()])),
        ("auth.master_key (set or unset)", digest(&[master])),
        ("store.url", digest(&[&cfg.store_url])),
        ("store.spool", digest(&[&cfg.spool.to_string_lossy()])),
        (
            "redis.url",
            digest(&[cfg.redis_url.as_deref().unwrap_or("\u{0}none")]),
        ),
        (
            "server.header_timeout_ms",
            digest(&[&format!("{:?}", cfg.header_timeout)]),
        ),
        (
            "server.shutdown_grace_ms",
            digest(&[&format!("{:?}", cfg.shutdown_grace)]),
        ),
        ("server.threads", digest(&[&format!("{:?}", cfg.threads)])),
        (
            "server.busy_poll_us",
            digest(&[&format!("{:?}", cfg.busy_poll)]),
        ),
        ("batches", digest(&[&format!("{:?}", cfg.batches)])),
        ("routing (breaker, retry budget)", digest(&[&routing])),
    ]
}

impl Applied {
    pub fn new(cfg: &Config) -> Applied {
        Applied {
            now: Mutex::new(Snapshot::of(cfg)),
            source: OnceLock::new(),
        }
    }

    /// Where reloads read the configuration (set once, by `serve` when it
    /// started from a file).
    pub fn set_source(&self, source: impl Fn() -> Result<Config, String> + Send + Sync + 'static) {
        let _ = self.source.set(Box::new(source));
    }

    /// Whether there is a file to reload.
    pub fn reloadable(&self) -> bool {
        self.source.get().is_some()
    }
}

/// The router for `providers` and `cfg`'s routes; each provider that was
/// in `old` as the same API keeps its statistics.
pub fn router(
    cfg: &Config,
    providers: &[ProviderConfig],
    old: Option<&Router>,
) -> Result<Router, String> {
    let upstreams = providers
        .iter()
        .map(|p| Upstream::from_config(p).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(old) = old {
        for u in &upstreams {
            if let Some(o) = old.upstreams().iter().find(|o| o.name == u.name) {
                u.carry_over(o);
            }
        }
    }
    Ok(Router::new(
        upstreams,
        cfg.routes.clone(),
        Catalog::builtin(),
        cfg.routing.strategy,
    ))
}

/// Why a reload changed nothing.
#[derive(Debug)]
pub enum Refused {
    /// The gateway runs without a configuration file (zero-config).
    NoFile,
    /// The file did not load or pass validation: the message says why.
    Invalid(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NoFile => f.write_str(
                "polyplex runs without a configuration file (zero-config): there is nothing to reload",
            ),
            Refused::Invalid(e) => write!(f, "the configuration was not reloaded: {e}"),
        }
    }
}

/// What one reload changed.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub providers: Changes,
    pub routes: Changes,
    /// The default routing strategy changed.
    pub strategy: Option<Strategy>,
    /// The master key was replaced (the old one refused from now on).
    pub master_key_rotated: bool,
    /// `[alerts]` was `added`, `changed` or `removed`.
    pub alerts: Option<&'static str>,
    /// `[cache]` was `added`, `changed` or `removed`.
    pub cache: Option<&'static str>,
    /// The `[server]` settings that changed and were applied.
    pub server: Vec<&'static str>,
    /// Settings that changed in the file but take effect at the next start.
    pub restart_needed: Vec<&'static str>,
}

/// Names added, removed and changed; how many stayed as they were.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
}

impl Changes {
    fn between<T: PartialEq>(old: &[(String, T)], new: &[(String, T)]) -> Changes {
        let mut c = Changes::default();
        for (name, print) in new {
            match old.iter().find(|(n, _)| n == name) {
                None => c.added.push(name.clone()),
                Some((_, p)) if p != print => c.changed.push(name.clone()),
                Some(_) => c.unchanged += 1,
            }
        }
        c.removed = old
            .iter()
            .filter(|(n, _)| !new.iter().any(|(m, _)| m == n))
            .map(|(n, _)| n.clone())
            .collect();
        c
    }

    fn json(&self) -> Value {
        json!({
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.unchanged,
        })
    }
}

impl Report {
    /// The admin API's answer.
    pub fn json(&self) -> Value {
        json!({
            "object": "gateway.reload",
            "reloaded": true,
            "providers": self.providers.json(),
            "routes": self.routes.json(),
            "strategy": self.strategy.map(Strategy::name),
            "master_key_rotated": self.master_key_rotated,
            "alerts": self.alerts,
            "cache": self.cache,
            "server": self.server,
            "restart_needed": self.restart_needed,
        })
    }
}

/// Applies `cfg`'s providers, routes and strategy to the running gateway.
pub fn apply(app: &AppState, cfg: &Config) -> Result<Report, Refused> {
    let mut now = app.config.now.lock().unwrap_or_else(|p| p.into_inner());
    let next = Snapshot::of(cfg);
    let old = app.router();
    let router = router(cfg, &cfg.providers, Some(&old)).map_err(Refused::Invalid)?;
    drop(old);
    // New alerts (sending from now on) in place of the old, which send
    // what they have queued and end.
    let alerts = if now.alerts == next.alerts {
        None
    } else {
        let before = app.alerts.load_full();
        let after = cfg
            .alerts
            .clone()
            .map(|a| {
                let redis = app.shared_limits.as_ref().map(|s| s.connection());
                crate::alerts::Alerts::start(
                    a,
                    &app.keys,
                    redis,
                    &app.main_runtime,
                    before.as_deref(),
                )
            })
            .transpose()
            .map_err(|e| Refused::Invalid(format!("alerts: {e}")))?;
        Some((section_change(before.is_some(), after.is_some()), after))
    };
    app.swap_router(router);
    let alerts = alerts.map(|(what, after)| {
        if let Some(before) = app.alerts.swap(after) {
            app.main_runtime.spawn(async move { before.close().await });
        }
        now.alerts = next.alerts;
        what
    });
    let server = differing(&now.server, &next.server);
    if !server.is_empty() {
        app.apply_server(cfg);
        now.server = next.server.clone();
    }
    let cache = (now.cache != next.cache).then(|| {
        app.cache_settings().apply(next.cache);
        let what = section_change(now.cache.is_some(), next.cache.is_some());
        now.cache = next.cache;
        what
    });
    // A new master key in place of the old one; a gateway that started
    // without one (loopback only) or with one keeps that.
    let rotated =
        now.master != next.master && cfg.master_key.is_some() && app.master_key.load().is_some();
    if rotated {
        app.master_key.store(cfg.master_key.clone().map(Arc::new));
        now.master = next.master;
    }
    if cfg.routing.strategy == Strategy::Cost
        || cfg.routes.iter().any(|r| r.strategy == Strategy::Cost)
    {
        crate::tokens::warm_in_background();
    }
    let report = Report {
        providers: Changes::between(&now.providers, &next.providers),
        routes: Changes::between(&now.routes, &next.routes),
        strategy: (now.strategy != next.strategy).then_some(next.strategy),
        master_key_rotated: rotated,
        alerts,
        cache,
        server,
        restart_needed: differing(&now.fixed, &next.fixed),
    };
    // The settings bound at start stay as they run.
    now.providers = next.providers;
    now.routes = next.routes;
    now.strategy = next.strategy;
    Ok(report)
}

/// What became of a section that differs between two files: `added`,
/// `changed` or `removed`.
fn section_change(was: bool, is: bool) -> &'static str {
    match (was, is) {
        (false, _) => "added",
        (true, true) => "changed",
        (true, false) => "removed",
    }
}

/// The names of the settings whose values differ (both lists name the
/// same settings in the same order).
fn differing<T: PartialEq>(
    now: &[(&'static str, T)],
    next: &[(&'static str, T)],
) -> Vec<&'static str> {
    now.iter()
        .zip(next)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0)
        .collect()
}

/// Reads the configuration file again and applies it; logs what changed
/// (or why nothing did) and counts it in `polyplex_config_reloads_total`.
pub async fn reload(app: &Arc<AppState>) -> Result<Report, Refused> {
    if !app.config.reloadable() {
        return Err(Refused::NoFile);
    }
    let reading = app.clone();
    // Reading and validating a file, building the upstreams (a Vertex AI
    // service-account file is read then): not on a serving thread.
    let result = tokio::task::spawn_blocking(move || {
        let cfg = match reading.config.source.get() {
            Some(source) => source().map_err(Refused::Invalid)?,
            None => return Err(Refused::NoFile),
        };
        apply(&reading, &cfg)
    })
    .await
    .unwrap_or_else(|e| Err(Refused::Invalid(e.to_string())));
    if let Ok(report) = &result {
        for u in app.router().upstreams() {
            if report.providers.added.contains(&u.name)
                || report.providers.changed.contains(&u.name)
            {
                tracing::info!(provider = %u.name, base_url = %u.base_url, protocol = u.protocol.name(), "provider enabled");
                if let Some(note) = u.unpriced_note(app.catalog()) {
                    tracing::warn!(provider = %u.name, "{note}");
                }
            }
        }
    }
    match &result {
        Ok(r) => {
            metrics::counter!("polyplex_config_reloads_total", "result" => "ok").increment(1);
            tracing::info!(
                providers_added = ?r.providers.added,
                providers_removed = ?r.providers.removed,
                providers_changed = ?r.providers.changed,
                routes_added = ?r.routes.added,
                routes_removed = ?r.routes.removed,
                routes_changed = ?r.routes.changed,
                strategy = r.strategy.map(Strategy::name),
                master_key_rotated = r.master_key_rotated,
                alerts = r.alerts,
                cache = r.cache,
                server = ?r.server,
                "configuration reloaded"
            );
            if !r.restart_needed.is_empty() {
                tracing::warn!(
                    settings = ?r.restart_needed,
                    "these settings changed in the file and take effect at the next start"
                );
            }
        }
        Err(e) => {
            metrics::counter!("polyplex_config_reloads_total", "result" => "error").increment(1);
            tracing::error!("{e}; the running configuration is unchanged");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<(String, u8)> {
        v.iter().map(|n| (n.to_string(), 0)).collect()
    }

    #[test]
    fn changes_name_what_came_went_and_changed() {
        let old = vec![("a".to_string(), 1), ("b".into(), 1), ("c".into(), 1)];
        let new = vec![("b".to_string(), 2), ("c".into(), 1), ("d".into(), 1)];
        let c = Changes::between(&old, &new);
        assert_eq!(c.added, ["d"]);
        assert_eq!(c.removed, ["a"]);
        assert_eq!(c.changed, ["b"]);
        assert_eq!(c.unchanged, 1);
        let same = Changes::between(&names(&["x", "y"]), &names(&["x", "y"]));
        assert_eq!(
            same,
            Changes {
                unchanged: 2,
                ..Changes::default()
            }
        );
    }

    #[test]
    fn a_provider_print_sees_its_secret_change_without_keeping_it() {
        let mut p = ProviderConfig::with_defaults("p", "http://127.0.0.1:1/v1".into());
        p.api_key = Some("sk-one".to_string().into());
        let one = provider_print(&p);
        p.api_key = Some("sk-two".to_string().into());
        assert_ne!(one, provider_print(&p));
        p.api_key = Some("sk-one".to_string().into());
        assert_eq!(one, provider_print(&p));
    }
}
