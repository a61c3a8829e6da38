//! The HTTP server.
//!
//! A request to `/v1/*` passes through these stages, in this order (its
//! connection was accepted by `crate::serve_listener`, which closes one
//! that sends no request head within `server.header_timeout_ms`; a request
//! from a web page whose origin may call goes through tower-http's CORS
//! service, which answers its preflight, and without a master key one from
//! another origin or to a non-loopback host is refused: [`browsers`]):
//!
//! 1. **request id** ([`gate`]): takes the client's `x-request-id` if it is
//!    sane, else makes one; every response carries it.
//! 2. **auth** ([`gate`], [`auth::check`]): the master key as a Bearer token (or
//!    `x-api-key`/`api-key`), compared in constant time, or a gateway key
//!    (`plx-...`, found by its SHA-256 in [`crate::keys`]). Without a master
//!    key the gateway only listens on loopback and lets every caller in (a
//!    presented gateway key still counts, and a revoked one is refused). The
//!    admin API takes the master key only.
//! 3. **body** ([`handlers`]): read up to `server.max_body_bytes` (413 past
//!    it), within `server.body_timeout_ms` of the head (408 past it).
//! 4. **validation** (`polyplex_types::validate`): OpenAI's rules, each error
//!    naming the field. A chat request of the common shape is validated from
//!    its text (`validate::chat_quick`) and its JSON tree built only if
//!    something reads it; any other body is parsed once into an
//!    insertion-ordered JSON map (400 naming the problem) and validated from
//!    that (`polyplex_types::RequestBody` holds either).
//! 5. **key admission** ([`crate::keys`]): the key's model allow-list (403),
//!    budget (429 `insufficient_quota`), requests and tokens per minute and
//!    concurrent requests (429 with `retry-after`); `x-ratelimit-*` headers.
//!    Counted in Redis for all replicas when `[redis]` is set
//!    ([`crate::shared`]), else on this node.
//! 6. **routing** ([`crate::routing`]): the model name (plus any `models`
//!    fallback list and `provider` preferences) becomes an ordered plan of
//!    deployments by the route's strategy and live statistics
//!    ([`crate::health`]); 404 if none.
//! 7. **attempts** ([`crate::executor`]): breaker admission, then the adapter
//!    builds the upstream request and the one pooled client sends it; retries
//!    (within the retry budget) and failover on retryable errors; optional
//!    hedging; streams commit after their first chunk.
//! 8. **response** ([`respond`]): OpenAI JSON with `usage.cost`, or SSE framed
//!    exactly as OpenAI's, with `x-polyplex-provider/model/attempts` headers.
//! 9. **usage** ([`crate::usage`]): one record per request to the background
//!    writer, whatever the outcome, including streams the client abandoned;
//!    the writer stores them ([`crate::store`]) in batches.

pub mod admin;
pub mod auth;
pub mod batches;
pub mod browsers;
pub mod busy;
pub mod conversations;
pub mod gate;
mod genai;
mod genai_native;
pub mod handlers;
pub mod invoke;
mod native;
pub mod passthrough;
mod rerank;
pub mod respond;

use crate::config::Config;
use crate::routing::Router as ModelRouter;
use crate::usage::Recorder;
use axum::routing::{any, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use polyplex_catalog::Catalog;
use secrecy::SecretString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct AppState {
    /// Providers and routes: swapped whole by a configuration reload
    /// ([`crate::reload`]); a request keeps the deployments it planned with.
    router: arc_swap::ArcSwap<ModelRouter>,
    catalog: &'static Catalog,
    /// What the running configuration is, and where a reload reads the
    /// next one.
    pub config: crate::reload::Applied,
    /// One upstream client (and connection pool) per serving thread, so a
    /// request never hands its upstream I/O to another thread, and one
    /// more for everything else (the batch worker, on the main runtime:
    /// its connections are not a serving thread's, which end before it at
    /// a shutdown).
    clients: Vec<crate::client::HttpClient>,
    /// Upstream URLs, parsed once each.
    pub urls: crate::client::UriCache,
    /// The master key; a reload may rotate it (not set or unset it).
    pub master_key: arc_swap::ArcSwapOption<SecretString>,
    /// Gateway keys (and through them, the store).
    pub keys: Arc<crate::keys::Keys>,
    /// Limits and budgets shared with the other replicas (`[redis]`).
    pub shared_limits: Option<Arc<crate::shared::SharedLimits>>,
    /// `server.max_body_bytes` (a reload may change it): [`AppState::max_body`].
    max_body: std::sync::atomic::AtomicUsize,
    /// How long a request's body may take after its head (`None`: no limit).
    /// In ms, 0 for none (a reload may change it): [`AppState::body_timeout`].
    body_timeout_ms: std::sync::atomic::AtomicU64,
    pub recorder: Recorder,
    pub metrics: Option<PrometheusHandle>,
    pub ready: AtomicBool,
    /// Circuit breaker settings.
    pub health: crate::health::HealthConfig,
    /// Bounds retries and hedges to a fraction of requests.
    pub retry_budget: crate::health::RetryBudget,
    /// The response cache (`[cache]`; a reload may turn it on or off):
    /// see [`AppState::cache`].
    cache: crate::cache::ResponseCache,
    /// Requests from web pages: CORS, and what a keyless gateway refuses.
    /// (A reload may change the origins.)
    pub browsers: arc_swap::ArcSwap<browsers::Browsers>,
    /// How batches run (`[batches]`).
    pub batches: crate::config::BatchesConfig,
    /// Wakes the batch worker (a batch was made or cancelled).
    pub batch_wake: tokio::sync::Notify,
    /// Webhook alerts (`[alerts]`): replaced whole by a reload that
    /// changes them; shared with the usage writer (a failing store).
    pub alerts: Arc<arc_swap::ArcSwapOption<crate::alerts::Alerts>>,
    /// The runtime `serve` started on (not a serving thread's): what must
    /// outlive the serving threads (the alerts' sender) runs there.
    pub main_runtime: tokio::runtime::Handle,
}

pub type App = Arc<AppState>;

impl AppState {
    /// The providers and routes now configured.
    pub fn router(&self) -> arc_swap::Guard<Arc<ModelRouter>> {
        self.router.load()
    }

    /// Puts `router` in place of the configured one (see [`crate::reload`]).
    pub(crate) fn swap_router(&self, router: ModelRouter) -> Arc<ModelRouter> {
        self.router.swap(Arc::new(router))
    }

    /// The largest request body taken (`server.max_body_bytes`).
    pub fn max_body(&self) -> usize {
        self.max_body.load(Ordering::Relaxed)
    }

    /// How long a request's body may take after its head (`None`: no limit).
    pub fn body_timeout(&self) -> Option<Duration> {
        match self.body_timeout_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Applies the `[server]` settings a reload may change: the body's size
    /// limit and timeout and the CORS origins.
    pub(crate) fn apply_server(&self, cfg: &Config) {
        self.max_body.store(cfg.max_body_bytes, Ordering::Relaxed);
        self.body_timeout_ms
            .store(timeout_ms(cfg.body_timeout), Ordering::Relaxed);
        self.browsers.store(Arc::new(browsers::Browsers::new(
            cfg.cors_origins.as_deref(),
            self.master_key.load().is_some(),
        )));
    }

    /// The response cache, when it is on.
    pub fn cache(&self) -> Option<&crate::cache::ResponseCache> {
        Some(&self.cache).filter(|c| c.on())
    }

    /// The response cache, on or off (a reload applies `[cache]` to it).
    pub(crate) fn cache_settings(&self) -> &crate::cache::ResponseCache {
        &self.cache
    }

    /// The model catalog (prices, limits, capabilities).
    pub fn catalog(&self) -> &'static Catalog {
        self.catalog
    }
}

/// The request id of the current request (set by [`gate`]).
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

thread_local! {
    /// The serving thread this is (see [`crate::start_threads`]); `usize::MAX`
    /// elsewhere.
    static SERVING_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Marks the current thread as serving thread `i`.
pub fn set_serving_thread(i: usize) {
    SERVING_THREAD.with(|t| t.set(i));
}

/// Builds the application state from a validated config, with one upstream
/// client per serving thread. `demo_base_url` is the in-process simulator's
/// URL when `cfg.demo` is set.
pub fn state(
    cfg: &Config,
    demo_base_url: Option<String>,
    recorder: Recorder,
    keys: Arc<crate::keys::Keys>,
    shared_limits: Option<Arc<crate::shared::SharedLimits>>,
    threads: usize,
) -> Result<App, String> {
    let mut providers = cfg.providers.clone();
    if let Some(url) = demo_base_url {
        providers.push(crate::demo_provider(url));
    }
    let router = crate::reload::router(cfg, &providers, None)?;
    let main_runtime = tokio::runtime::Handle::current();
    let alerts = cfg
        .alerts
        .clone()
        .map(|a| {
            let redis = shared_limits.as_ref().map(|s| s.connection());
            crate::alerts::Alerts::start(a, &keys, redis, &main_runtime, None)
        })
        .transpose()?;
    // The slot the usage writer reads too (it alerts a failing store).
    let slot = recorder.alerts();
    slot.store(alerts);
    let alerts = slot;
    let connect = providers
        .iter()
        .map(|p| p.connect_timeout)
        .min()
        .unwrap_or(Duration::from_secs(10));
    Ok(Arc::new(AppState {
        router: arc_swap::ArcSwap::from_pointee(router),
        catalog: Catalog::builtin(),
        config: crate::reload::Applied::new(cfg),
        // Idle upstream connections kept: 256 per host in all, split over the
        // serving threads' pools; and the pool of the other threads.
        clients: (0..=threads.max(1))
            .map(|_| crate::client::HttpClient::new(connect, (256 / threads.max(1)).max(16)))
            .collect::<Result<_, _>>()?,
        urls: crate::client::UriCache::default(),
        master_key: arc_swap::ArcSwapOption::new(cfg.master_key.clone().map(Arc::new)),
        browsers: arc_swap::ArcSwap::from_pointee(browsers::Browsers::new(
            cfg.cors_origins.as_deref(),
            cfg.master_key.is_some(),
        )),
        keys,
        batches: cfg.batches,
        batch_wake: tokio::sync::Notify::new(),
        alerts,
        main_runtime,
        cache: crate::cache::ResponseCache::new(
            cfg.cache,
            shared_limits.as_ref().map(|s| s.connection()),
        ),
        shared_limits,
        max_body: cfg.max_body_bytes.into(),
        body_timeout_ms: timeout_ms(cfg.body_timeout).into(),
        recorder,
        metrics: crate::telemetry::metrics(),
        ready: AtomicBool::new(true),
        health: cfg.routing.health,
        retry_budget: crate::health::RetryBudget::new(
            cfg.routing.retry_budget_ratio,
            cfg.routing.retry_budget_min_per_s,
            std::time::Instant::now(),
        ),
    }))
}

/// The axum router behind the gate, with every stage in the order the
/// module docs list.
pub fn app(state: App) -> gate::Gate {
    let mut router = axum::Router::new();
    for kind in passthrough::Kind::ALL {
        router = router.route(
            kind.route(),
            post(move |app, rid, caller, req| passthrough::serve(kind, app, rid, caller, req)),
        );
    }
    let router = router
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/rerank", post(rerank::rerank))
        .route("/v2/rerank", post(rerank::rerank))
        .route("/v1/responses", post(handlers::responses))
        .route("/v1/messages", post(handlers::messages))
        .route("/v1/messages/count_tokens", post(handlers::count_tokens))
        .route("/v1/responses/{*rest}", any(handlers::stored_response))
        .route("/v1/conversations", any(conversations::serve))
        .route("/v1/conversations/{*rest}", any(conversations::serve))
        .route("/v1/files", any(batches::files))
        .route("/v1/files/{*rest}", any(batches::files))
        .route("/v1/batches", any(batches::serve))
        .route("/v1/batches/{*rest}", any(batches::serve))
        .route("/v1/models", get(handlers::list_models))
        .route(
            "/v1/models/{*id}",
            get(handlers::get_model).post(genai::serve),
        )
        .route(
            "/v1beta/models/{*rest}",
            post(genai::serve).get(genai::models),
        )
        .route("/v1beta/models", get(genai::models))
        // Vertex AI's paths of the same methods (`genai::is_vertex_path`).
        .route(
            "/v1beta1/{*rest}",
            post(genai::serve).get(genai::vertex_models),
        )
        .route(
            "/v1/projects/{*rest}",
            post(genai::serve).get(genai::vertex_models),
        )
        .route(
            "/v1/publishers/{*rest}",
            post(genai::serve).get(genai::vertex_models),
        )
        // Claude on Bedrock's paths (`invoke`).
        .route("/model/{*rest}", post(invoke::serve))
        .route("/admin/providers", get(handlers::admin_providers))
        .route("/admin/reload", post(admin::reload))
        .route("/admin/usage", get(admin::usage))
        .route("/admin/usage/records", get(admin::usage_records))
        .route("/admin/usage/records/{id}", get(admin::usage_records))
        .route("/admin/keys", post(admin::create_key).get(admin::list_keys))
        .route(
            "/admin/keys/{id}",
            get(admin::get_key)
                .patch(admin::update_key)
                .delete(admin::revoke_key),
        )
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state.clone());
    gate::Gate::new(state, router)
}

impl AppState {
    /// The upstream client of the current serving thread (the last one
    /// on any other thread).
    pub fn client(&self) -> &crate::client::HttpClient {
        let i = SERVING_THREAD.with(|t| t.get());
        let serving = self.clients.len() - 1;
        match i {
            usize::MAX => &self.clients[serving],
            i => &self.clients[i % serving],
        }
    }

    /// `d`'s circuit just opened on this replica (a failed attempt, or a
    /// stream that broke): with Redis, the other replicas open theirs too.
    pub fn circuit_opened(&self, d: &crate::routing::Deployment) {
        if let Some(shared) = &self.shared_limits {
            shared.circuit_opened(&d.upstream.name, &d.model, self.health.cooldown);
        }
        if let Some(alerts) = &*self.alerts.load() {
            alerts.circuit_opened(
                &d.upstream.name,
                &d.model,
                self.health.cooldown,
                d.stats.last_error(),
            );
        }
    }

    /// A deployment's circuit closed here: its probe succeeded.
    pub fn circuit_closed(&self, d: &crate::routing::Deployment) {
        tracing::info!(provider = %d.upstream.name, model = %d.model, "circuit closed: the probe succeeded");
        if let Some(alerts) = &*self.alerts.load() {
            alerts.circuit_closed(&d.upstream.name, &d.model, self.health.cooldown);
        }
    }

    /// Admits one request of an end user of a key: the key's
    /// `user_budget_usd`, `user_rpm` and `user_tpm` for it. Through Redis
    /// for every replica when it is configured and answers (the end user's
    /// spend there seeded from the store the first time), the request
    /// counted on this node too; else on this node, the spend read from
    /// the store ([`AppState::end_user_spent`]).
    pub async fn admit_end_user(
        &self,
        key: &crate::keys::KeyEntry,
        spec: &crate::store::KeyRow,
        user: &str,
    ) -> Result<(), polyplex_types::GatewayError> {
        use crate::shared::Taken;
        let (rpm, tpm) = (spec.user_rpm, spec.user_tpm);
        let limited = rpm.is_some() || tpm.is_some();
        if !limited && spec.user_budget_usd.is_none() {
            return Ok(());
        }
        let now = std::time::Instant::now();
        if let Some(shared) = &self.shared_limits {
            let mut answer = shared.take_end_user(spec, user, None).await;
            if answer == Some(Taken::Unseeded) {
                let spent = self.end_user_spent(key, spec, user).await;
                let seed = crate::keys::usd_units(spent);
                answer = shared.take_end_user(spec, user, Some(seed)).await;
            }
            match answer {
                Some(Taken::Admitted) => {
                    if limited {
                        let _ = key.take_end_user(user, rpm, tpm, now);
                    }
                    return Ok(());
                }
                Some(Taken::Spent(spent)) => {
                    return Err(crate::keys::over_user_budget(spec, user, spent))
                }
                Some(Taken::Over(over)) => {
                    return Err(crate::keys::over_end_user(spec, user, over))
                }
                Some(Taken::Unseeded) | None => {}
            }
        }
        if let Some(budget) = spec.user_budget_usd {
            let spent = self.end_user_spent(key, spec, user).await;
            if spent >= budget {
                return Err(crate::keys::over_user_budget(spec, user, spent));
            }
        }
        if limited {
            key.take_end_user(user, rpm, tpm, now)
                .map_err(|over| crate::keys::over_end_user(spec, user, over))?;
        }
        Ok(())
    }

    /// What an end user of a key spent in the key's current budget period
    /// (all time without `budget_reset`): this node's count, read again
    /// from the store's usage records when older than
    /// [`crate::keys::END_USER_SPEND_FRESH`]. A store that does not answer
    /// leaves the last count (or none) standing: a budget check never
    /// stops traffic on its own.
    pub async fn end_user_spent(
        &self,
        key: &crate::keys::KeyEntry,
        spec: &crate::store::KeyRow,
        user: &str,
    ) -> f64 {
        let now = std::time::Instant::now();
        let period = spec
            .budget_reset
            .map_or(0, |r| r.start(crate::store::unix_now()));
        if let Some(spent) = key.end_user_spend(user, period, now) {
            return spent;
        }
        let Some(store) = self.keys.store() else {
            return 0.0;
        };
        self.recorder.flush().await;
        match store
            .end_user_spend(&spec.id, user, period.saturating_mul(1000))
            .await
        {
            Ok(stored) => key.end_user_spend_read(user, period, stored, now),
            Err(e) => {
                tracing::warn!(error = %e, key = %spec.id, "could not read an end user's spend; its budget is not checked this time");
                0.0
            }
        }
    }

    /// Takes one request of `d`'s upstream limits (its provider's `rpm` /
    /// `tpm`): for every replica through Redis when it is configured and
    /// answers, else on this node (which counts it either way).
    pub async fn take_upstream(
        &self,
        d: &crate::routing::Deployment,
    ) -> Result<(), crate::window::Over> {
        let u = &d.upstream;
        let (rpm, tpm) = u.limits(&d.model);
        if rpm.is_none() && tpm.is_none() {
            return Ok(());
        }
        let shared = match &self.shared_limits {
            Some(s) => s.take_upstream(&u.name, &d.model, rpm, tpm).await,
            None => None,
        };
        counted_here_too(shared, || {
            d.stats.take_upstream(rpm, tpm, std::time::Instant::now())
        })
    }

    /// `d` served a request of `tokens`: counted against its `tpm`.
    pub fn count_upstream_tokens(&self, d: &crate::routing::Deployment, tokens: u64) {
        if d.upstream.limits(&d.model).1.is_none() {
            return;
        }
        d.stats
            .add_upstream_tokens(tokens, std::time::Instant::now());
        if let Some(shared) = &self.shared_limits {
            shared.charge_upstream(&d.upstream.name, &d.model, tokens);
        }
    }

    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }
}

/// A per-minute limit's answer: Redis's when it gave one (`shared`), with
/// the request counted on this node too (its count, should Redis fail
/// later); else this node's own (`here`).
fn counted_here_too(
    shared: Option<Result<(), crate::window::Over>>,
    here: impl FnOnce() -> Result<(), crate::window::Over>,
) -> Result<(), crate::window::Over> {
    match shared {
        Some(Err(over)) => Err(over),
        Some(Ok(())) => {
            let _ = here();
            Ok(())
        }
        None => here(),
    }
}

/// A timeout in ms as [`AppState`] keeps it: 0 for none (at least 1 ms
/// otherwise).
fn timeout_ms(t: Option<Duration>) -> u64 {
    t.map_or(0, |t| {
        u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}
