//! Model name → the ordered deployments that may serve it.
//!
//! Names a client may send: `provider/model` (exactly that provider), a bare
//! `model` (every configured provider that serves it or an equivalent model,
//! see [`polyplex_catalog::canonical`]), a route name from `[[routes]]`,
//! `auto` (the cheapest deployment whose catalog capabilities fit the
//! request), and any of these with `:floor` (cheapest first) or `:nitro`
//! (fastest first). OpenRouter's `models: [...]` fallback list is appended
//! after the primary name, and `provider: {...}` filters and reorders the
//! whole plan. Deployments the upstream has said are out of requests or
//! tokens (rate-limit headers, a 429's `retry-after`) move to the back;
//! open circuits are skipped later, at attempt time.

use crate::config::{Hedge, RouteConfig, Strategy};
use crate::health::DeploymentStats;
use crate::keys;
use crate::tokens;
use crate::upstream::Upstream;
use foldhash::HashMap;
use polyplex_catalog::{Catalog, Model};
use polyplex_providers::Endpoint;
use polyplex_types::validate::ProviderPrefs;
use polyplex_types::{GatewayError, RequestBody};
use rand::Rng;
use std::cell::{Cell, OnceCell};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Deployment {
    pub upstream: Arc<Upstream>,
    /// The model name the upstream knows.
    pub model: String,
    pub stats: Arc<DeploymentStats>,
}

impl Deployment {
    pub fn new(upstream: &Arc<Upstream>, model: &str) -> Deployment {
        Deployment {
            upstream: upstream.clone(),
            stats: upstream.stats(model),
            model: model.to_string(),
        }
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.upstream.name, self.model)
    }

    /// Does a key's model list allow this deployment?
    fn allowed(&self, list: &[String]) -> bool {
        keys::allows_deployment(list, &self.upstream.name, &self.model)
    }

    fn same(&self, o: &Deployment) -> bool {
        Arc::ptr_eq(&self.upstream, &o.upstream) && self.model == o.model
    }
}

/// Output tokens assumed for pricing when a request sets no maximum.
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 1024;
/// Most deployments `auto` tries.
pub const AUTO_MAX_DEPLOYMENTS: usize = 8;

/// What routing needs to know about one request. The prompt's token count
/// (tiktoken) is computed only if a decision needs it, and then once.
pub struct Facts<'a> {
    pub body: &'a RequestBody,
    pub endpoint: Endpoint,
    pub stream: bool,
    pub max_output: Option<u64>,
    pub tools: bool,
    pub images: bool,
    pub json_schema: bool,
    prompt: Cell<Option<u64>>,
    early: Cell<bool>,
}

impl<'a> Facts<'a> {
    pub fn new(body: &'a RequestBody, endpoint: Endpoint, stream: bool) -> Facts<'a> {
        Facts {
            body,
            endpoint,
            stream,
            max_output: None,
            tools: false,
            images: false,
            json_schema: false,
            prompt: Cell::new(None),
            early: Cell::new(false),
        }
    }

    /// The prompt's tokens; 0 while the encoding is not loaded, which
    /// [`Facts::counted_early`] then says (the caller awaits
    /// `tokens::ready` and plans again: no serving thread loads it).
    pub fn prompt_tokens(&self) -> u64 {
        if let Some(n) = self.prompt.get() {
            return n;
        }
        let n = if tokens::loaded() {
            tokens::prompt(self.endpoint, self.body.map())
        } else {
            self.early.set(true);
            0
        };
        self.prompt.set(Some(n));
        n
    }

    /// Whether the prompt was needed before the encoding was loaded.
    pub fn counted_early(&self) -> bool {
        self.early.get()
    }

    /// Forgets an early count, to count again.
    pub fn forget_count(&self) {
        self.prompt.set(None);
        self.early.set(false);
    }

    fn output_estimate(&self) -> u64 {
        match self.endpoint {
            Endpoint::Embeddings => 0,
            _ => self.max_output.unwrap_or(DEFAULT_OUTPUT_ESTIMATE),
        }
    }

    /// Tokens the request may use at most: prompt plus its output cap.
    fn total_tokens(&self) -> u64 {
        self.prompt_tokens() + self.output_estimate()
    }
}

/// The ordered deployments for one request, and whether to hedge.
#[derive(Debug)]
pub struct Plan {
    pub deployments: Vec<Deployment>,
    pub hedge: Option<Hedge>,
    /// Deployments moved to the back because their rate limit is spent.
    pub saturated: Vec<String>,
}

pub struct Router {
    upstreams: Vec<Arc<Upstream>>,
    by_name: HashMap<String, usize>,
    routes: HashMap<String, RouteConfig>,
    catalog: &'static Catalog,
    /// For bare model names several providers serve.
    default_strategy: Strategy,
    /// Every name a provider lists, resolved as a bare name once, at start:
    /// which upstreams serve it and under which of their names. Only when
    /// every provider lists its models (a provider on the catalog's list
    /// would need its catalog models read at start); other names are
    /// resolved per request.
    listed: HashMap<String, Vec<(usize, String)>>,
}

/// The upstreams that serve the bare model name `name`, in configuration
/// order, each with its own name for it.
fn serving(upstreams: &[Arc<Upstream>], catalog: &Catalog, name: &str) -> Vec<(usize, String)> {
    let canonical = OnceCell::new();
    upstreams
        .iter()
        .enumerate()
        .filter_map(|(i, u)| u.serves(catalog, name, &canonical).map(|m| (i, m)))
        .collect()
}

/// Models `auto` never picks: not chat models (by the catalog's output
/// modalities, and by name where it has none: embeddings, speech ...).
fn chat_model(m: &Model) -> bool {
    const NOT_CHAT: &[&str] = &[
        "embed",
        "whisper",
        "tts",
        "transcribe",
        "image",
        "moderation",
        "rerank",
        "audio",
        "realtime",
        "search",
        "dall-e",
        "davinci",
        "babbage",
        "guard",
        // Google's music models answer in audio (and text about it).
        "lyria",
    ];
    let id = m.id.to_ascii_lowercase();
    m.context > 0
        && m.output > 0
        && m.answers_text()
        && m.status.as_deref() != Some("deprecated")
        && !NOT_CHAT.iter().any(|w| id.contains(w))
}

impl Router {
    pub fn new(
        upstreams: Vec<Arc<Upstream>>,
        routes: Vec<RouteConfig>,
        catalog: &'static Catalog,
        default_strategy: Strategy,
    ) -> Router {
        let by_name = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.clone(), i))
            .collect();
        let routes = routes.into_iter().map(|r| (r.name.clone(), r)).collect();
        let mut listed = HashMap::default();
        if upstreams.iter().all(|u| u.models.is_some()) {
            for name in upstreams.iter().flat_map(|u| u.models.iter().flatten()) {
                if !listed.contains_key(name) {
                    let found = serving(&upstreams, catalog, name);
                    listed.insert(name.clone(), found);
                }
            }
        }
        Router {
            upstreams,
            by_name,
            routes,
            catalog,
            default_strategy,
            listed,
        }
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    pub fn routes(&self) -> impl Iterator<Item = &RouteConfig> {
        self.routes.values()
    }

    pub fn catalog(&self) -> &'static Catalog {
        self.catalog
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_name.get(name).map(|&i| &self.upstreams[i])
    }

    /// Deployments for one model name (without suffix), in configuration
    /// order, and the strategy that orders them.
    pub fn resolve(&self, name: &str) -> Result<(Vec<Deployment>, Strategy), GatewayError> {
        if let Some(route) = self.routes.get(name) {
            let ds = route
                .targets
                .iter()
                .filter_map(|(p, m)| self.upstream(p).map(|u| Deployment::new(u, m)))
                .collect();
            return Ok((ds, route.strategy));
        }
        if let Some((prov, model)) = name.split_once('/') {
            if let Some(u) = self.upstream(prov) {
                if model.is_empty() || !u.accepts(model) {
                    return Err(GatewayError::model_not_found(name));
                }
                return Ok((vec![Deployment::new(u, model)], Strategy::Priority));
            }
            // A provider's common name (`gemini/...`, LiteLLM's `vertex_ai/...`)
            // for the providers configured from that catalog entry that offer
            // the model; else the whole is a bare name.
            if let Some(c) = self.catalog.find_provider(prov) {
                let ds: Vec<_> = self
                    .upstreams
                    .iter()
                    .filter(|u| {
                        u.catalog_id.as_ref() == Some(&c.id) && u.offers(self.catalog, model)
                    })
                    .map(|u| Deployment::new(u, model))
                    .collect();
                if !ds.is_empty() {
                    return Ok((ds, Strategy::Priority));
                }
            }
        }
        // A bare name (which may itself contain `/`, e.g. `meta-llama/Llama-3.3-70B`).
        let deployments = |found: &[(usize, String)]| -> Vec<Deployment> {
            found
                .iter()
                .map(|(i, m)| Deployment::new(&self.upstreams[*i], m))
                .collect()
        };
        let mut found = match self.listed.get(name) {
            Some(found) => deployments(found),
            None => deployments(&serving(&self.upstreams, self.catalog, name)),
        };
        // `alpha/gpt-4o` names a provider `alpha`: if no provider and no
        // model namespace has that name, it is not served by whichever
        // provider has `gpt-4o` (only a model listed under that very name).
        if let Some((prefix, _)) = name.split_once('/') {
            if !found.is_empty() && !self.namespace_known(prefix) {
                found.retain(|d| d.model == name);
                if found.is_empty() {
                    return Err(GatewayError::no_such_provider(name, prefix));
                }
            }
        }
        if found.is_empty() {
            return Err(GatewayError::model_not_found(name));
        }
        Ok((found, self.default_strategy))
    }

    /// Whether `prefix/...` can be read as a provider or model namespace: the
    /// catalog's ([`Catalog::knows_namespace`]), or a namespace of a model a
    /// configured provider lists (`myorg/finetune` on a vLLM server).
    fn namespace_known(&self, prefix: &str) -> bool {
        self.catalog.knows_namespace(prefix)
            || self
                .upstreams
                .iter()
                .flat_map(|u| u.models.iter().flatten())
                .any(|m| {
                    m.split_once('/')
                        .is_some_and(|(ns, _)| ns.eq_ignore_ascii_case(prefix))
                })
    }

    /// True if `name` (with any suffix) names something this gateway serves.
    pub fn knows(&self, name: &str) -> bool {
        let (base, _) = split_suffix(name);
        (base == "auto" && !self.upstreams.is_empty()) || self.resolve(base).is_ok()
    }

    /// May a key whose model list is `access` (None: every model) request
    /// `name`? Yes if the list names it (see [`keys::allows`]), or if it
    /// reaches at least one deployment the list allows: a bare `gpt-4o`
    /// when `openai/gpt-4o` is listed, a route with an allowed target, `auto`
    /// when any configured model is allowed. Such a request is then served
    /// by the allowed deployments only ([`Router::plan`]).
    pub fn may_reach(&self, access: Option<&[String]>, name: &str) -> bool {
        let Some(list) = access else {
            return true;
        };
        let (base, _) = split_suffix(name);
        if keys::allows(access, base) {
            return true;
        }
        if base == "auto" && !self.routes.contains_key("auto") {
            return self.allows_any(list);
        }
        self.resolve(base)
            .is_ok_and(|(ds, _)| ds.iter().any(|d| d.allowed(list)))
    }

    /// Does the list allow at least one model of a configured provider?
    fn allows_any(&self, list: &[String]) -> bool {
        list.iter().any(|m| {
            if m == "*" {
                return !self.upstreams.is_empty();
            }
            let listed = m.split_once('/');
            match listed.and_then(|(p, model)| Some((self.upstream(p)?, model))) {
                Some((_, "*")) => true,
                Some((u, model)) => u.accepts(model),
                None => self.resolve(m).is_ok(),
            }
        })
    }

    /// Every chat deployment with catalog capabilities that fit the request
    /// (and that `access` allows, if given), cheapest first.
    fn auto(
        &self,
        facts: &Facts<'_>,
        access: Option<&[String]>,
    ) -> Result<Vec<Deployment>, GatewayError> {
        if facts.endpoint != Endpoint::Chat {
            return Err(GatewayError::not_found(
                "The model `auto` chooses among chat models only; name an embeddings or completions model.",
            )
            .with_param("model")
            .with_code("model_not_found"));
        }
        let need = facts.prompt_tokens() + facts.max_output.unwrap_or(0);
        let mut fit: Vec<(f64, usize, String)> = Vec::new();
        for (order, u) in self.upstreams.iter().enumerate() {
            for id in u.model_ids(self.catalog) {
                if access.is_some_and(|list| !keys::allows_deployment(list, &u.name, &id)) {
                    continue;
                }
                let Some(m) = u.catalog_model(self.catalog, &id) else {
                    continue;
                };
                let fits = chat_model(m)
                    && (!facts.tools || m.has("tools"))
                    && (!facts.images || m.has("vision"))
                    && (!facts.json_schema || m.has("json_schema"))
                    && m.context >= need
                    && facts.max_output.is_none_or(|n| n <= m.output);
                if !fits {
                    continue;
                }
                if let Some(c) = self.estimate_on(u, &id, facts) {
                    fit.push((c, order, id));
                }
            }
        }
        if fit.is_empty() {
            return Err(GatewayError::not_found(
                "No configured model fits this request for `auto` (its tools, images, response_format and length, by the catalog's capabilities).",
            )
            .with_param("model")
            .with_code("model_not_found"));
        }
        fit.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        // Statistics are attached (and kept) only for what the plan holds.
        Ok(fit
            .into_iter()
            .take(AUTO_MAX_DEPLOYMENTS)
            .map(|(_, order, id)| Deployment::new(&self.upstreams[order], &id))
            .collect())
    }

    /// Estimated USD cost of the request on a deployment, if its price is known.
    pub fn estimate(&self, d: &Deployment, facts: &Facts<'_>) -> Option<f64> {
        self.estimate_on(&d.upstream, &d.model, facts)
    }

    fn estimate_on(&self, u: &Upstream, model: &str, facts: &Facts<'_>) -> Option<f64> {
        let prompt = facts.prompt_tokens();
        u.price(self.catalog, model, prompt)
            .map(|p| p.cost(prompt, 0, 0, facts.output_estimate()))
    }

    /// Deployments of one name (suffix included) that `access` (a key's
    /// model list) lets it reach, ordered.
    fn ordered(
        &self,
        name: &str,
        access: Option<&[String]>,
        facts: &Facts<'_>,
        rng: &mut impl Rng,
    ) -> Result<(Vec<Deployment>, Option<Hedge>), GatewayError> {
        let (base, suffix) = split_suffix(name);
        let hedge = self.routes.get(base).and_then(|r| r.hedge);
        // A name the list allows as written reaches all its deployments.
        let access = access.filter(|_| !keys::allows(access, base));
        let (mut ds, strategy) = if base == "auto" && !self.routes.contains_key("auto") {
            if access.is_some_and(|list| !self.allows_any(list)) {
                return Err(keys::model_forbidden(name));
            }
            (self.auto(facts, access)?, Strategy::Cost)
        } else {
            // (The error names the model as asked, suffix included.)
            self.resolve(base).map_err(|e| match suffix {
                None => e,
                Some(_) => GatewayError::model_not_found(name),
            })?
        };
        if let Some(list) = access {
            ds.retain(|d| d.allowed(list));
            if ds.is_empty() {
                return Err(keys::model_forbidden(name));
            }
        }
        let strategy = match suffix {
            Some(Suffix::Floor) => Strategy::Cost,
            Some(Suffix::Nitro) => Strategy::Throughput,
            None => strategy,
        };
        self.order(&mut ds, strategy, facts, rng);
        Ok((ds, hedge))
    }

    /// The whole plan: the primary name's deployments, each fallback's after
    /// them (without repeats), the provider preferences, then rate-limit
    /// steering. `access` is the caller's key's model list, if it has one:
    /// a name it does not list as such is served by the deployments it allows.
    pub fn plan(
        &self,
        model: &str,
        fallbacks: &[String],
        prefs: &ProviderPrefs,
        access: Option<&[String]>,
        facts: &Facts<'_>,
        rng: &mut impl Rng,
    ) -> Result<Plan, GatewayError> {
        let (mut ds, hedge) = self.ordered(model, access, facts, rng)?;
        for (i, f) in fallbacks.iter().enumerate() {
            let (more, _) = self
                .ordered(f, access, facts, rng)
                .map_err(|e| e.with_param(format!("models[{i}]")))?;
            for d in more {
                if !ds.iter().any(|p| p.same(&d)) {
                    ds.push(d);
                }
            }
        }
        let ds = self.apply_prefs(ds, prefs, model, facts, rng)?;
        let now = Instant::now();
        let (mut ok, busy): (Vec<Deployment>, Vec<Deployment>) = ds
            .into_iter()
            .partition(|d| !d.stats.saturated(now, || facts.total_tokens()));
        let saturated = busy.iter().map(Deployment::label).collect();
        ok.extend(busy);
        Ok(Plan {
            deployments: ok,
            hedge,
            saturated,
        })
    }

    /// Orders deployments by a strategy. Deployments without measurements
    /// yet come first under latency and throughput, so that each gets measured.
    pub fn order(
        &self,
        ds: &mut Vec<Deployment>,
        strategy: Strategy,
        facts: &Facts<'_>,
        rng: &mut impl Rng,
    ) {
        if ds.len() < 2 {
            return;
        }
        match strategy {
            Strategy::Priority => {}
            Strategy::Cost => {
                let key = |d: &Deployment| self.estimate(d, facts).unwrap_or(f64::INFINITY);
                sort_by_key_f64(ds, key);
            }
            Strategy::Latency => {
                let key = |d: &Deployment| d.stats.latency_score(facts.stream).unwrap_or(0.0);
                sort_by_key_f64(ds, key);
                // Power of two choices: of two random deployments, the faster
                // goes first; so the fastest does not take every request.
                let i = rng.gen_range(0..ds.len());
                let mut j = rng.gen_range(0..ds.len() - 1);
                if j >= i {
                    j += 1;
                }
                let first = i.min(j);
                let chosen = ds.remove(first);
                ds.insert(0, chosen);
            }
            Strategy::Throughput => {
                let key = |d: &Deployment| -d.stats.tokens_per_s().unwrap_or(f64::INFINITY);
                sort_by_key_f64(ds, key);
            }
            Strategy::LeastBusy => ds.sort_by_key(|d| d.stats.in_flight()),
            Strategy::Weighted => weighted_order(ds, rng),
        }
    }

    /// Applies OpenRouter's `provider: {...}` options: `only` and `ignore`
    /// filter, `max_price` (USD per million tokens) drops deployments priced
    /// above it (unknown prices stay), `sort` reorders by `price`, `latency`
    /// or `throughput`, `order` puts the named providers first, and
    /// `allow_fallbacks: false` keeps only those (or only the first
    /// deployment when no order is given).
    pub fn apply_prefs(
        &self,
        mut plan: Vec<Deployment>,
        prefs: &ProviderPrefs,
        model: &str,
        facts: &Facts<'_>,
        rng: &mut impl Rng,
    ) -> Result<Vec<Deployment>, GatewayError> {
        let named = |d: &Deployment, list: &[String]| list.iter().any(|n| *n == d.upstream.name);
        if let Some(only) = &prefs.only {
            plan.retain(|d| named(d, only));
        }
        plan.retain(|d| !named(d, &prefs.ignore));
        if prefs.max_prompt_price.is_some() || prefs.max_completion_price.is_some() {
            plan.retain(|d| match d.upstream.price(self.catalog, &d.model, 0) {
                Some(p) => {
                    prefs.max_prompt_price.is_none_or(|m| p.input <= m)
                        && prefs.max_completion_price.is_none_or(|m| p.output <= m)
                }
                None => true,
            });
        }
        let sort = match prefs.sort.as_deref() {
            Some("price") => Some(Strategy::Cost),
            Some("latency") => Some(Strategy::Latency),
            Some("throughput") => Some(Strategy::Throughput),
            _ => None,
        };
        if let Some(s) = sort {
            if s == Strategy::Latency {
                // An explicit sort is a sort: no random choice.
                let key = |d: &Deployment| d.stats.latency_score(facts.stream).unwrap_or(0.0);
                sort_by_key_f64(&mut plan, key);
            } else {
                self.order(&mut plan, s, facts, rng);
            }
        }
        if !prefs.order.is_empty() {
            let rank = |d: &Deployment| {
                prefs
                    .order
                    .iter()
                    .position(|p| *p == d.upstream.name)
                    .unwrap_or(usize::MAX)
            };
            plan.sort_by_key(rank);
            if !prefs.allow_fallbacks {
                plan.retain(|d| rank(d) != usize::MAX);
            }
        } else if !prefs.allow_fallbacks {
            plan.truncate(1);
        }
        if plan.is_empty() {
            return Err(GatewayError::not_found(format!(
                "No provider serving `{model}` satisfies the request's provider preferences."
            ))
            .with_param("provider"));
        }
        Ok(plan)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suffix {
    Floor,
    Nitro,
}

fn split_suffix(name: &str) -> (&str, Option<Suffix>) {
    if let Some(b) = name.strip_suffix(":floor") {
        (b, Some(Suffix::Floor))
    } else if let Some(b) = name.strip_suffix(":nitro") {
        (b, Some(Suffix::Nitro))
    } else {
        (name, None)
    }
}

/// A stable sort by a float key (ties keep the configured order).
fn sort_by_key_f64(ds: &mut [Deployment], key: impl Fn(&Deployment) -> f64) {
    let mut keyed: Vec<(f64, usize)> = ds.iter().enumerate().map(|(i, d)| (key(d), i)).collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let old: Vec<Deployment> = ds.to_vec();
    for (slot, (_, i)) in ds.iter_mut().zip(keyed) {
        *slot = old[i].clone();
    }
}

/// Orders deployments by weighted random sampling without replacement.
fn weighted_order(ds: &mut Vec<Deployment>, rng: &mut impl Rng) {
    let mut rest = std::mem::take(ds);
    while !rest.is_empty() {
        let total: u64 = rest
            .iter()
            .map(|d| u64::from(d.upstream.weight.max(1)))
            .sum();
        let mut pick = rng.gen_range(0..total);
        let mut idx = 0;
        for (i, d) in rest.iter().enumerate() {
            let w = u64::from(d.upstream.weight.max(1));
            if pick < w {
                idx = i;
                break;
            }
            pick -= w;
        }
        ds.push(rest.remove(idx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{from_toml, Inputs};
    use crate::health::HealthConfig;
    use foldhash::HashMapExt;
    use rand::SeedableRng;
    use serde_json::json;
    use std::time::Duration;

    fn router(text: &str) -> Router {
        // Plans count prompts with the encoding loaded (before, a plan
        // counts 0 and the server plans again once it is: `counted_early`).
        crate::tokens::count("loaded");
        let env = |_: &str| Some("k".to_string());
        let cfg = from_toml(
            text,
            &Inputs {
                env: &env,
                listen_override: None,
                catalog: Catalog::builtin(),
            },
        )
        .unwrap();
        let ups = cfg
            .providers
            .iter()
            .map(|p| Arc::new(Upstream::from_config(p).unwrap()))
            .collect();
        Router::new(ups, cfg.routes, Catalog::builtin(), cfg.routing.strategy)
    }

    const CFG: &str = r#"
[[providers]]
name = "openai"
api_key = "${K}"
[[providers]]
name = "groq"
api_key = "${K}"
[[providers]]
name = "togetherai"
api_key = "${K}"
[[providers]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
models = ["gpt-4o", "mine", "a", "b", "c"]
prices = { a = { input = 1.0, output = 10.0 }, b = { input = 5.0, output = 1.0 }, c = { input = 3.0, output = 3.0 } }
[[routes]]
name = "smart"
targets = ["local/mine", "openai/gpt-4o"]
[[routes]]
name = "cheap"
targets = ["openai/gpt-4o", "openai/gpt-4o-mini"]
strategy = "cost"
[[routes]]
name = "by-cost"
targets = ["local/a", "local/b"]
strategy = "cost"
[[routes]]
name = "fast"
targets = ["local/a", "local/b", "local/c"]
strategy = "latency"
[[routes]]
name = "speedy"
targets = ["local/a", "local/b", "local/c"]
strategy = "throughput"
[[routes]]
name = "idle"
targets = ["local/a", "local/b", "local/c"]
strategy = "least-busy"
[[routes]]
name = "hedged"
targets = ["local/a", "local/b"]
hedge_after_ms = 250
"#;

    fn labels(ds: &[Deployment]) -> Vec<String> {
        ds.iter().map(Deployment::label).collect()
    }

    fn chat(text: &str) -> RequestBody {
        body(json!({"model": "x", "messages": [{"role": "user", "content": text}]}))
    }

    fn plan_of(
        r: &Router,
        model: &str,
        body: &RequestBody,
        max_output: Option<u64>,
    ) -> Vec<String> {
        let mut f = Facts::new(body, Endpoint::Chat, false);
        f.max_output = max_output;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        labels(
            &r.plan(model, &[], &ProviderPrefs::default(), None, &f, &mut rng)
                .unwrap()
                .deployments,
        )
    }

    fn resolved(r: &Router, name: &str) -> Vec<String> {
        labels(&r.resolve(name).unwrap().0)
    }

    #[test]
    fn provider_prefixed_names() {
        let r = router(CFG);
        assert_eq!(resolved(&r, "openai/gpt-4o"), ["openai/gpt-4o"]);
        // Providers without an explicit list pass any model through.
        assert_eq!(resolved(&r, "openai/gpt-5-future"), ["openai/gpt-5-future"]);
        // An explicit list is enforced.
        assert_eq!(r.resolve("local/other").unwrap_err().status.as_u16(), 404);
        // Slashes in the model part are kept.
        assert_eq!(
            resolved(&r, "groq/meta-llama/llama-4-scout-17b-16e-instruct"),
            ["groq/meta-llama/llama-4-scout-17b-16e-instruct"]
        );
    }

    #[test]
    fn a_providers_common_name_prefixes_its_models() {
        let r = router(CFG);
        // `together/...` and LiteLLM's `together_ai/...` are the provider
        // configured from the catalog's `togetherai`, for a model it offers.
        for name in ["together", "together_ai", "TogetherAI"] {
            assert_eq!(
                resolved(
                    &r,
                    &format!("{name}/meta-llama/Llama-3.3-70B-Instruct-Turbo")
                ),
                ["togetherai/meta-llama/Llama-3.3-70B-Instruct-Turbo"],
                "{name}"
            );
        }
        // A model it does not offer: the whole is a bare name (here, none).
        assert_eq!(
            r.resolve("together/no-such-model")
                .unwrap_err()
                .status
                .as_u16(),
            404
        );
        // A common name of no configured provider is a bare name as well.
        assert!(r.resolve("gemini/gemini-2.5-flash").is_err());
    }

    #[test]
    fn an_unknown_provider_prefix_is_not_found() {
        let r = router(CFG);
        // A provider's name in any case, and a model namespace (as
        // OpenRouter's ids and Hugging Face's write them) still find it.
        assert_eq!(resolved(&r, "OpenAI/gpt-4o"), ["openai/gpt-4o"]);
        assert_eq!(
            resolved(&r, "meta-llama/llama-3.3-70b-versatile"),
            [
                "groq/llama-3.3-70b-versatile",
                "togetherai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
            ]
        );
        // A name no provider and no model namespace has is not read as one.
        let e = r.resolve("alpha/gpt-4o").unwrap_err();
        assert_eq!(e.status.as_u16(), 404);
        assert_eq!(e.code.as_deref(), Some("model_not_found"));
        assert!(
            e.message.contains("no provider is named `alpha`"),
            "{}",
            e.message
        );
        // A model a provider lists under a namespace of its own is served.
        let r = router(
            r#"
[[providers]]
name = "vllm"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
models = ["acme/tuned-7b", "gpt-4o"]
"#,
        );
        assert_eq!(resolved(&r, "acme/tuned-7b"), ["vllm/acme/tuned-7b"]);
        assert_eq!(resolved(&r, "ACME/gpt-4o"), ["vllm/gpt-4o"]);
        assert!(r.resolve("zeta/tuned-7b").is_err());
    }

    #[test]
    fn bare_names_find_every_provider_and_equivalent_models() {
        let r = router(CFG);
        assert_eq!(resolved(&r, "gpt-4o"), ["openai/gpt-4o", "local/gpt-4o"]);
        // The same open model under each provider's own id.
        assert_eq!(
            resolved(&r, "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
            [
                "groq/llama-3.3-70b-versatile",
                "togetherai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
            ]
        );
        assert_eq!(
            resolved(&r, "llama-3.3-70b-versatile"),
            [
                "groq/llama-3.3-70b-versatile",
                "togetherai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
            ]
        );
        let e = r.resolve("no-such-model").unwrap_err();
        assert_eq!(e.code.as_deref(), Some("model_not_found"));
        // `:floor` puts the cheaper host first: Groq $0.59/$0.79 against Together $1.04/$1.04.
        let body = chat("hi");
        assert_eq!(
            plan_of(&r, "llama-3.3-70b-versatile:floor", &body, None)[0],
            "groq/llama-3.3-70b-versatile"
        );
    }

    /// With every provider's models listed, bare names are resolved once at
    /// start, to what resolving them per request gives; names not listed
    /// (an equivalent of a listed one, an unknown one) still resolve per
    /// request. A provider on the catalog's list leaves the table empty.
    #[test]
    fn listed_names_are_resolved_at_start_as_per_request() {
        let r = router(
            r#"
[[providers]]
name = "groq"
api_key = "${K}"
models = ["llama-3.3-70b-versatile", "gpt-oss"]
[[providers]]
name = "togetherai"
api_key = "${K}"
models = ["meta-llama/Llama-3.3-70B-Instruct-Turbo", "gpt-oss"]
[[providers]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
models = ["gpt-oss", "mine"]
"#,
        );
        assert_eq!(r.listed.len(), 4);
        for (name, found) in &r.listed {
            assert_eq!(found, &serving(&r.upstreams, r.catalog, name), "{name}");
        }
        assert_eq!(
            resolved(&r, "llama-3.3-70b-versatile"),
            [
                "groq/llama-3.3-70b-versatile",
                "togetherai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
            ]
        );
        assert_eq!(
            resolved(&r, "gpt-oss"),
            ["groq/gpt-oss", "togetherai/gpt-oss", "local/gpt-oss"]
        );
        // Not listed anywhere: an equivalent name, resolved per request.
        assert_eq!(
            resolved(&r, "Llama-3.3-70B-Versatile"),
            resolved(&r, "llama-3.3-70b-versatile")
        );
        assert_eq!(r.resolve("no-such-model").unwrap_err().status.as_u16(), 404);
        // A provider without a list: nothing resolved ahead.
        assert!(router(CFG).listed.is_empty());
    }

    #[test]
    fn priority_and_cost_routes() {
        let r = router(CFG);
        let body = chat("hello");
        assert_eq!(
            plan_of(&r, "smart", &body, None),
            ["local/mine", "openai/gpt-4o"]
        );
        assert_eq!(
            plan_of(&r, "cheap", &body, None),
            ["openai/gpt-4o-mini", "openai/gpt-4o"]
        );
        // Cost weighs the request: a short prompt with a long answer favours
        // cheap output (b: $5/$1), a long prompt with a short answer cheap input (a: $1/$10).
        assert_eq!(
            plan_of(&r, "by-cost", &body, Some(4000)),
            ["local/b", "local/a"]
        );
        let long = chat(&"lorem ipsum dolor sit amet ".repeat(400));
        assert_eq!(
            plan_of(&r, "by-cost", &long, Some(5)),
            ["local/a", "local/b"]
        );
    }

    fn stats(r: &Router, model: &str) -> Arc<DeploymentStats> {
        r.upstream("local").unwrap().stats(model)
    }

    #[test]
    fn latency_is_power_of_two_choices_over_the_averages() {
        let r = router(CFG);
        let cfg = HealthConfig::default();
        let now = Instant::now();
        for (m, ms) in [("a", 10), ("b", 50), ("c", 100)] {
            let d = Duration::from_millis(ms);
            stats(&r, m).on_success(&cfg, now, d, Some(d));
        }
        let body = chat("hi");
        let f = Facts::new(&body, Endpoint::Chat, false);
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut first = HashMap::new();
        for _ in 0..3000 {
            let p = r
                .plan("fast", &[], &ProviderPrefs::default(), None, &f, &mut rng)
                .unwrap();
            *first.entry(p.deployments[0].model.clone()).or_insert(0) += 1;
            // Whatever goes first, the rest follow fastest first.
            let rest: Vec<_> = p.deployments[1..].iter().map(|d| d.model.clone()).collect();
            let mut sorted = rest.clone();
            sorted.sort();
            assert_eq!(rest, sorted);
        }
        // Pairs {a,b} and {a,c} pick a, {b,c} picks b; c is never first.
        let a = first.get("a").copied().unwrap_or(0);
        let b = first.get("b").copied().unwrap_or(0);
        assert_eq!(first.get("c"), None);
        assert!((1850..2150).contains(&a), "{first:?}");
        assert!((850..1150).contains(&b), "{first:?}");
    }

    #[test]
    fn throughput_least_busy_and_nitro() {
        let r = router(CFG);
        let body = chat("hi");
        stats(&r, "a").on_tokens(100, Duration::from_secs(1));
        stats(&r, "b").on_tokens(400, Duration::from_secs(1));
        // c is unmeasured: tried first so that it gets measured.
        assert_eq!(
            plan_of(&r, "speedy", &body, None),
            ["local/c", "local/b", "local/a"]
        );
        stats(&r, "c").on_tokens(200, Duration::from_secs(1));
        assert_eq!(
            plan_of(&r, "speedy", &body, None),
            ["local/b", "local/c", "local/a"]
        );
        // `:nitro` on a priority route sorts by throughput too.
        assert_eq!(
            plan_of(&r, "fast:nitro", &body, None),
            ["local/b", "local/c", "local/a"]
        );
        let _a1 = stats(&r, "a").enter();
        let _a2 = stats(&r, "a").enter();
        let _c1 = stats(&r, "c").enter();
        assert_eq!(
            plan_of(&r, "idle", &body, None),
            ["local/b", "local/c", "local/a"]
        );
    }

    const AUTO: &str = r#"
[[providers]]
name = "openai"
api_key = "${K}"
models = ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "gpt-4.1-nano"]
[[providers]]
name = "anthropic"
api_key = "${K}"
models = ["claude-sonnet-4-5", "claude-haiku-4-5"]
[[providers]]
name = "groq"
api_key = "${K}"
models = ["llama-3.1-8b-instant", "whisper-large-v3"]
[[providers]]
name = "google"
api_key = "${K}"
models = ["lyria-3-clip-preview"]
[[providers]]
name = "nvidia"
api_key = "${K}"
models = ["black-forest-labs/flux_2-klein-4b"]
"#;

    fn body(v: serde_json::Value) -> RequestBody {
        match v {
            serde_json::Value::Object(m) => RequestBody::from_map(m),
            _ => unreachable!(),
        }
    }

    fn auto_first(r: &Router, b: &RequestBody) -> Result<String, GatewayError> {
        let m = polyplex_types::validate::chat(b.map()).unwrap();
        let mut f = Facts::new(b, Endpoint::Chat, false);
        f.max_output = m.max_tokens;
        (f.tools, f.images, f.json_schema) = (m.has_tools, m.has_images, m.json_schema);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        r.plan("auto", &[], &ProviderPrefs::default(), None, &f, &mut rng)
            .map(|p| p.deployments[0].label())
    }

    #[test]
    fn auto_is_the_cheapest_model_that_fits() {
        let r = router(AUTO);
        let text = json!([{"role": "user", "content": "hi"}]);
        let image = json!([{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]);
        let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        let schema = json!({"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}});
        // Plain text: Groq's Llama 3.1 8B ($0.05/$0.08); never the embedding
        // model, the speech model, a deprecated one, Google's Lyria (it
        // answers in music, priced at 0 per token) or FLUX on NVIDIA (the
        // catalog says it answers in images; also at 0).
        assert_eq!(
            auto_first(&r, &body(json!({"model": "auto", "messages": text}))).unwrap(),
            "groq/llama-3.1-8b-instant"
        );
        // Tools: Llama 3.1 8B has them.
        assert_eq!(
            auto_first(
                &r,
                &body(json!({"model": "auto", "messages": text, "tools": tool}))
            )
            .unwrap(),
            "groq/llama-3.1-8b-instant"
        );
        // Images or a JSON schema: the cheapest with vision / structured outputs.
        assert_eq!(
            auto_first(&r, &body(json!({"model": "auto", "messages": image}))).unwrap(),
            "openai/gpt-4o-mini"
        );
        assert_eq!(
            auto_first(
                &r,
                &body(json!({"model": "auto", "messages": text, "response_format": schema}))
            )
            .unwrap(),
            "openai/gpt-4o-mini"
        );
        // 20k output tokens: beyond gpt-4o-mini's 16k; Claude Haiku 4.5 takes 64k.
        assert_eq!(
            auto_first(
                &r,
                &body(json!({"model": "auto", "messages": image, "max_tokens": 20000}))
            )
            .unwrap(),
            "anthropic/claude-haiku-4-5"
        );
        // Nothing has a 300k-token output.
        let e = auto_first(
            &r,
            &body(json!({"model": "auto", "messages": text, "max_tokens": 300000})),
        )
        .unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (404, Some("model"))
        );
        // The rest of the plan is the next cheapest, for failover.
        let b = body(json!({"model": "auto", "messages": image}));
        let mut f = Facts::new(&b, Endpoint::Chat, false);
        f.images = true;
        let plan = r
            .plan(
                "auto",
                &[],
                &ProviderPrefs::default(),
                None,
                &f,
                &mut rand::thread_rng(),
            )
            .unwrap();
        assert_eq!(
            labels(&plan.deployments),
            [
                "openai/gpt-4o-mini",
                "anthropic/claude-haiku-4-5",
                "openai/gpt-4o",
                "anthropic/claude-sonnet-4-5"
            ]
        );
        assert!(r.knows("auto") && r.knows("gpt-4o:floor") && !r.knows("nope:floor"));
    }

    #[test]
    fn a_keys_model_list_narrows_the_plan_to_the_deployments_it_allows() {
        let r = router(CFG);
        let b = chat("x");
        let f = Facts::new(&b, Endpoint::Chat, false);
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let plan = |name: &str, fb: &[String], access: &[String]| {
            r.plan(
                name,
                fb,
                &ProviderPrefs::default(),
                Some(access),
                &f,
                &mut rand::thread_rng(),
            )
            .map(|p| labels(&p.deployments))
        };
        // A bare name the list names as such: every deployment.
        let gpt = list(&["gpt-4o"]);
        assert!(r.may_reach(Some(&gpt), "gpt-4o:floor"));
        assert_eq!(plan("gpt-4o", &[], &gpt).unwrap().len(), 2);
        // Listed on one provider: the bare name, its suffixes and a route
        // reach that deployment only.
        let local = list(&["local/gpt-4o", "local/a"]);
        for name in ["gpt-4o", "gpt-4o:nitro", "GPT-4o"] {
            assert!(r.may_reach(Some(&local), name), "{name}");
            assert_eq!(plan(name, &[], &local).unwrap(), ["local/gpt-4o"]);
        }
        assert_eq!(plan("by-cost", &[], &local).unwrap(), ["local/a"]);
        assert_eq!(
            plan("local/a", &["gpt-4o".into()], &local).unwrap(),
            ["local/a", "local/gpt-4o"]
        );
        // Nothing it allows: refused, naming the name (a fallback's index).
        assert!(!r.may_reach(Some(&local), "openai/gpt-4o"));
        assert!(!r.may_reach(Some(&local), "cheap"));
        let e = plan("cheap", &[], &local).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (403, Some("model"))
        );
        let e = plan("local/a", &["cheap".into()], &local).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("models[0]"));
        // A route the list names reaches all its targets.
        let smart = list(&["smart"]);
        assert_eq!(plan("smart", &[], &smart).unwrap().len(), 2);
        // `auto`: among what the list allows, if anything.
        assert!(r.may_reach(Some(&list(&["openai/*"])), "auto"));
        assert!(!r.may_reach(Some(&list(&["mistral/*"])), "auto"));
        assert!(!r.may_reach(Some(&list(&["no-such-model"])), "auto"));
        let picked = plan("auto", &[], &list(&["openai/gpt-4o"])).unwrap();
        assert_eq!(picked, ["openai/gpt-4o"]);
        assert_eq!(
            plan("auto", &[], &list(&["mistral/*"]))
                .unwrap_err()
                .status
                .as_u16(),
            403
        );
    }

    #[test]
    fn fallback_list_appends_without_repeats() {
        let r = router(CFG);
        let b = chat("x");
        let f = Facts::new(&b, Endpoint::Chat, false);
        let mut rng = rand::thread_rng();
        let plan = r
            .plan(
                "local/mine",
                &["gpt-4o".into(), "openai/gpt-4o".into()],
                &ProviderPrefs::default(),
                None,
                &f,
                &mut rng,
            )
            .unwrap();
        assert_eq!(
            labels(&plan.deployments),
            ["local/mine", "openai/gpt-4o", "local/gpt-4o"]
        );
        let e = r
            .plan(
                "local/mine",
                &["nope".into()],
                &ProviderPrefs::default(),
                None,
                &f,
                &mut rng,
            )
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("models[0]"));
        assert_eq!(
            r.plan("hedged", &[], &ProviderPrefs::default(), None, &f, &mut rng)
                .unwrap()
                .hedge,
            Some(Hedge::After(Duration::from_millis(250)))
        );
    }

    #[test]
    fn provider_preferences() {
        let r = router(CFG);
        let b = chat("x");
        let f = Facts::new(&b, Endpoint::Chat, false);
        let apply = |model: &str, fb: &[String], p: ProviderPrefs| {
            r.plan(model, fb, &p, None, &f, &mut rand::thread_rng())
                .map(|p| labels(&p.deployments))
        };
        let prefs = |f: &dyn Fn(&mut ProviderPrefs)| {
            let mut p = ProviderPrefs::default();
            f(&mut p);
            p
        };
        assert_eq!(
            apply("gpt-4o", &[], prefs(&|_| {})).unwrap(),
            ["openai/gpt-4o", "local/gpt-4o"]
        );
        assert_eq!(
            apply("gpt-4o", &[], prefs(&|p| p.order = vec!["local".into()])).unwrap(),
            ["local/gpt-4o", "openai/gpt-4o"]
        );
        assert_eq!(
            apply(
                "gpt-4o",
                &[],
                prefs(&|p| {
                    p.order = vec!["local".into()];
                    p.allow_fallbacks = false;
                })
            )
            .unwrap(),
            ["local/gpt-4o"]
        );
        assert_eq!(
            apply("gpt-4o", &[], prefs(&|p| p.allow_fallbacks = false)).unwrap(),
            ["openai/gpt-4o"]
        );
        assert_eq!(
            apply(
                "gpt-4o",
                &[],
                prefs(&|p| p.only = Some(vec!["local".into()]))
            )
            .unwrap(),
            ["local/gpt-4o"]
        );
        assert_eq!(
            apply("gpt-4o", &[], prefs(&|p| p.ignore = vec!["openai".into()])).unwrap(),
            ["local/gpt-4o"]
        );
        // gpt-4o is $2.50/M input at openai; `local` has no known price for it and stays.
        assert_eq!(
            apply("gpt-4o", &[], prefs(&|p| p.max_prompt_price = Some(1.0))).unwrap(),
            ["local/gpt-4o"]
        );
        assert_eq!(
            apply("gpt-4o", &[], prefs(&|p| p.max_prompt_price = Some(3.0))).unwrap(),
            ["openai/gpt-4o", "local/gpt-4o"]
        );
        let e = apply(
            "gpt-4o",
            &[],
            prefs(&|p| p.only = Some(vec!["nobody".into()])),
        )
        .unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (404, Some("provider"))
        );
        assert_eq!(
            apply(
                "openai/gpt-4o",
                &["openai/gpt-4o-mini".into()],
                prefs(&|p| p.sort = Some("price".into()))
            )
            .unwrap(),
            ["openai/gpt-4o-mini", "openai/gpt-4o"]
        );
        // sort by latency: measured averages, no random choice.
        let cfg = HealthConfig::default();
        let now = Instant::now();
        stats(&r, "a").on_success(
            &cfg,
            now,
            Duration::from_millis(90),
            Some(Duration::from_millis(90)),
        );
        stats(&r, "b").on_success(
            &cfg,
            now,
            Duration::from_millis(20),
            Some(Duration::from_millis(20)),
        );
        stats(&r, "c").on_success(
            &cfg,
            now,
            Duration::from_millis(40),
            Some(Duration::from_millis(40)),
        );
        for _ in 0..20 {
            assert_eq!(
                apply("fast", &[], prefs(&|p| p.sort = Some("latency".into()))).unwrap(),
                ["local/b", "local/c", "local/a"]
            );
        }
    }

    #[test]
    fn spent_rate_limits_move_a_deployment_back() {
        let r = router(CFG);
        let b = chat("x");
        let mut h = http::HeaderMap::new();
        h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-requests", "30s".parse().unwrap());
        r.upstream("local")
            .unwrap()
            .stats("mine")
            .observe_limits(Instant::now(), &h);
        let f = Facts::new(&b, Endpoint::Chat, false);
        let plan = r
            .plan(
                "smart",
                &[],
                &ProviderPrefs::default(),
                None,
                &f,
                &mut rand::thread_rng(),
            )
            .unwrap();
        assert_eq!(labels(&plan.deployments), ["openai/gpt-4o", "local/mine"]);
        assert_eq!(plan.saturated, ["local/mine"]);
        // Too few tokens left for this request counts too.
        let mut h = http::HeaderMap::new();
        h.insert("x-ratelimit-remaining-tokens", "100".parse().unwrap());
        h.insert("x-ratelimit-reset-tokens", "30s".parse().unwrap());
        r.upstream("openai")
            .unwrap()
            .stats("gpt-4o")
            .observe_limits(Instant::now(), &h);
        let mut f = Facts::new(&b, Endpoint::Chat, false);
        f.max_output = Some(50);
        let plan = r
            .plan(
                "gpt-4o",
                &[],
                &ProviderPrefs::default(),
                None,
                &f,
                &mut rand::thread_rng(),
            )
            .unwrap();
        assert_eq!(labels(&plan.deployments), ["openai/gpt-4o", "local/gpt-4o"]);
        f = Facts::new(&b, Endpoint::Chat, false);
        f.max_output = Some(500);
        let plan = r
            .plan(
                "gpt-4o",
                &[],
                &ProviderPrefs::default(),
                None,
                &f,
                &mut rand::thread_rng(),
            )
            .unwrap();
        assert_eq!(labels(&plan.deployments), ["local/gpt-4o", "openai/gpt-4o"]);
    }

    #[test]
    fn weighted_order_is_a_permutation_biased_by_weight() {
        let r = router(
            "[[providers]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodels = [\"m\"]\nweight = 3\n\
             [[providers]]\nname = \"b\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodels = [\"m\"]\nweight = 1\n",
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut a_first = 0;
        for _ in 0..4000 {
            let mut ds = r.resolve("m").unwrap().0;
            weighted_order(&mut ds, &mut rng);
            assert_eq!(ds.len(), 2);
            assert_ne!(ds[0].upstream.name, ds[1].upstream.name);
            if ds[0].upstream.name == "a" {
                a_first += 1;
            }
        }
        // Weight 3 against 1: first about 75% of the time.
        assert!((2800..3200).contains(&a_first), "{a_first}");
    }
}
