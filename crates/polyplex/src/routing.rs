//! Model name → the ordered deployments that may serve it.
//!
//! Names a client may send: `provider/model` (exactly that provider), a bare
//! `model` (every configured provider that lists it, in config order), a
//! route name from `[[routes]]`, and OpenRouter's `models: [...]` fallback
//! list appended after the primary name.

use crate::config::{RouteConfig, Strategy};
use crate::upstream::Upstream;
use polyplex_catalog::Catalog;
use polyplex_types::validate::ProviderPrefs;
use polyplex_types::GatewayError;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Deployment {
    pub upstream: Arc<Upstream>,
    /// The model name the upstream knows.
    pub model: String,
}

impl Deployment {
    pub fn label(&self) -> String {
        format!("{}/{}", self.upstream.name, self.model)
    }
}

pub struct Router {
    upstreams: Vec<Arc<Upstream>>,
    by_name: HashMap<String, usize>,
    routes: HashMap<String, RouteConfig>,
    catalog: &'static Catalog,
}

impl Router {
    pub fn new(
        upstreams: Vec<Arc<Upstream>>,
        routes: Vec<RouteConfig>,
        catalog: &'static Catalog,
    ) -> Router {
        let by_name = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.clone(), i))
            .collect();
        let routes = routes.into_iter().map(|r| (r.name.clone(), r)).collect();
        Router {
            upstreams,
            by_name,
            routes,
            catalog,
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

    /// Deployments for one model name, in the order they should be tried.
    pub fn resolve(&self, name: &str) -> Result<Vec<Deployment>, GatewayError> {
        if let Some(route) = self.routes.get(name) {
            return Ok(self.order_route(route));
        }
        if let Some((prov, model)) = name.split_once('/') {
            if let Some(u) = self.upstream(prov) {
                if model.is_empty() || !u.accepts(model) {
                    return Err(GatewayError::model_not_found(name));
                }
                return Ok(vec![Deployment {
                    upstream: u.clone(),
                    model: model.to_string(),
                }]);
            }
        }
        // A bare name (which may itself contain `/`, e.g. `meta-llama/Llama-3.3-70B`).
        let found: Vec<Deployment> = self
            .upstreams
            .iter()
            .filter(|u| u.lists(self.catalog, name))
            .map(|u| Deployment {
                upstream: u.clone(),
                model: name.to_string(),
            })
            .collect();
        if found.is_empty() {
            return Err(GatewayError::model_not_found(name));
        }
        Ok(found)
    }

    /// The primary model's deployments followed by each fallback's, without repeats.
    /// An unknown fallback is an error too: the client asked for it by name.
    pub fn plan(&self, model: &str, fallbacks: &[String]) -> Result<Vec<Deployment>, GatewayError> {
        let mut plan = self.resolve(model)?;
        for (i, f) in fallbacks.iter().enumerate() {
            let more = self
                .resolve(f)
                .map_err(|e| e.with_param(format!("models[{i}]")))?;
            for d in more {
                if !plan
                    .iter()
                    .any(|p| Arc::ptr_eq(&p.upstream, &d.upstream) && p.model == d.model)
                {
                    plan.push(d);
                }
            }
        }
        Ok(plan)
    }

    /// Applies OpenRouter's `provider: {...}` options to a plan: `only` and
    /// `ignore` filter, `max_price` drops deployments priced above it (unknown
    /// prices stay), `sort: "price"` orders by catalog price, `order` puts the
    /// named providers first, and `allow_fallbacks: false` keeps only those (or
    /// only the first deployment when no order is given). `sort` by latency or
    /// throughput keeps the plan's order until live routing statistics exist.
    pub fn apply_prefs(
        &self,
        mut plan: Vec<Deployment>,
        prefs: &ProviderPrefs,
        model: &str,
    ) -> Result<Vec<Deployment>, GatewayError> {
        let name = |d: &Deployment| d.upstream.name.clone();
        if let Some(only) = &prefs.only {
            plan.retain(|d| only.contains(&name(d)));
        }
        plan.retain(|d| !prefs.ignore.contains(&name(d)));
        if prefs.max_prompt_price.is_some() || prefs.max_completion_price.is_some() {
            plan.retain(|d| match d.upstream.price(self.catalog, &d.model, 0) {
                Some(p) => {
                    prefs.max_prompt_price.is_none_or(|m| p.input <= m)
                        && prefs.max_completion_price.is_none_or(|m| p.output <= m)
                }
                None => true,
            });
        }
        if prefs.sort.as_deref() == Some("price") {
            let key = |d: &Deployment| {
                d.upstream
                    .price(self.catalog, &d.model, 1000)
                    .map(|p| p.cost(1000, 0, 1000))
                    .unwrap_or(f64::INFINITY)
            };
            plan.sort_by(|a, b| key(a).total_cmp(&key(b)));
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

    fn order_route(&self, route: &RouteConfig) -> Vec<Deployment> {
        let mut ds: Vec<Deployment> = route
            .targets
            .iter()
            .filter_map(|(p, m)| {
                self.upstream(p).map(|u| Deployment {
                    upstream: u.clone(),
                    model: m.clone(),
                })
            })
            .collect();
        match route.strategy {
            Strategy::Cost => {
                // Cheapest first by catalog price for a typical request (1k in, 1k out); unknown prices last.
                let key = |d: &Deployment| {
                    d.upstream
                        .price(self.catalog, &d.model, 1000)
                        .map(|p| p.cost(1000, 0, 1000))
                        .unwrap_or(f64::INFINITY)
                };
                ds.sort_by(|a, b| key(a).total_cmp(&key(b)));
            }
            Strategy::Weighted => weighted_order(&mut ds, &mut rand::thread_rng()),
            // Latency, throughput and least-busy need live statistics; until the
            // routing statistics land they keep the configured order.
            Strategy::Priority | Strategy::Latency | Strategy::Throughput | Strategy::LeastBusy => {
            }
        }
        ds
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

    fn router(text: &str) -> Router {
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
        Router::new(ups, cfg.routes, Catalog::builtin())
    }

    const CFG: &str = r#"
[[providers]]
name = "openai"
api_key = "${K}"
[[providers]]
name = "groq"
api_key = "${K}"
[[providers]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
models = ["gpt-4o", "mine"]
[[routes]]
name = "smart"
targets = ["local/mine", "openai/gpt-4o"]
[[routes]]
name = "cheap"
targets = ["openai/gpt-4o", "openai/gpt-4o-mini"]
strategy = "cost"
"#;

    fn labels(ds: &[Deployment]) -> Vec<String> {
        ds.iter().map(Deployment::label).collect()
    }

    #[test]
    fn provider_prefixed_names() {
        let r = router(CFG);
        assert_eq!(
            labels(&r.resolve("openai/gpt-4o").unwrap()),
            ["openai/gpt-4o"]
        );
        // Providers without an explicit list pass any model through.
        assert_eq!(
            labels(&r.resolve("openai/gpt-5-future").unwrap()),
            ["openai/gpt-5-future"]
        );
        // An explicit list is enforced.
        assert_eq!(r.resolve("local/other").unwrap_err().status.as_u16(), 404);
        // Slashes in the model part are kept.
        assert_eq!(
            labels(
                &r.resolve("groq/meta-llama/llama-4-scout-17b-16e-instruct")
                    .unwrap()
            ),
            ["groq/meta-llama/llama-4-scout-17b-16e-instruct"]
        );
    }

    #[test]
    fn bare_names_find_every_provider_in_order() {
        let r = router(CFG);
        assert_eq!(
            labels(&r.resolve("gpt-4o").unwrap()),
            ["openai/gpt-4o", "local/gpt-4o"]
        );
        assert_eq!(
            labels(&r.resolve("llama-3.3-70b-versatile").unwrap()),
            ["groq/llama-3.3-70b-versatile"]
        );
        let e = r.resolve("no-such-model").unwrap_err();
        assert_eq!(e.code.as_deref(), Some("model_not_found"));
    }

    #[test]
    fn routes_and_strategies() {
        let r = router(CFG);
        assert_eq!(
            labels(&r.resolve("smart").unwrap()),
            ["local/mine", "openai/gpt-4o"]
        );
        assert_eq!(
            labels(&r.resolve("cheap").unwrap()),
            ["openai/gpt-4o-mini", "openai/gpt-4o"]
        );
    }

    #[test]
    fn fallback_list_appends_without_repeats() {
        let r = router(CFG);
        let plan = r
            .plan("local/mine", &["gpt-4o".into(), "openai/gpt-4o".into()])
            .unwrap();
        assert_eq!(
            labels(&plan),
            ["local/mine", "openai/gpt-4o", "local/gpt-4o"]
        );
        let e = r.plan("local/mine", &["nope".into()]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("models[0]"));
    }

    #[test]
    fn provider_preferences() {
        let r = router(CFG);
        let plan = || r.resolve("gpt-4o").unwrap();
        let prefs = |f: &dyn Fn(&mut ProviderPrefs)| {
            let mut p = ProviderPrefs::default();
            f(&mut p);
            p
        };
        let apply = |p: ProviderPrefs| r.apply_prefs(plan(), &p, "gpt-4o").map(|d| labels(&d));
        assert_eq!(
            apply(prefs(&|_| {})).unwrap(),
            ["openai/gpt-4o", "local/gpt-4o"]
        );
        assert_eq!(
            apply(prefs(&|p| p.order = vec!["local".into()])).unwrap(),
            ["local/gpt-4o", "openai/gpt-4o"]
        );
        assert_eq!(
            apply(prefs(&|p| {
                p.order = vec!["local".into()];
                p.allow_fallbacks = false;
            }))
            .unwrap(),
            ["local/gpt-4o"]
        );
        assert_eq!(
            apply(prefs(&|p| p.allow_fallbacks = false)).unwrap(),
            ["openai/gpt-4o"]
        );
        assert_eq!(
            apply(prefs(&|p| p.only = Some(vec!["local".into()]))).unwrap(),
            ["local/gpt-4o"]
        );
        assert_eq!(
            apply(prefs(&|p| p.ignore = vec!["openai".into()])).unwrap(),
            ["local/gpt-4o"]
        );
        // gpt-4o is $2.50/M input at openai; `local` has no known price and stays.
        assert_eq!(
            apply(prefs(&|p| p.max_prompt_price = Some(1.0))).unwrap(),
            ["local/gpt-4o"]
        );
        assert_eq!(
            apply(prefs(&|p| p.max_prompt_price = Some(3.0))).unwrap(),
            ["openai/gpt-4o", "local/gpt-4o"]
        );
        let e = apply(prefs(&|p| p.only = Some(vec!["nobody".into()]))).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (404, Some("provider"))
        );
        let cheap = r
            .apply_prefs(
                r.plan("openai/gpt-4o", &["openai/gpt-4o-mini".into()])
                    .unwrap(),
                &prefs(&|p| p.sort = Some("price".into())),
                "x",
            )
            .unwrap();
        assert_eq!(labels(&cheap), ["openai/gpt-4o-mini", "openai/gpt-4o"]);
    }

    #[test]
    fn weighted_order_is_a_permutation_biased_by_weight() {
        use rand::SeedableRng;
        let r = router(
            "[[providers]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodels = [\"m\"]\nweight = 3\n\
             [[providers]]\nname = \"b\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodels = [\"m\"]\nweight = 1\n",
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut a_first = 0;
        for _ in 0..4000 {
            let mut ds = r.resolve("m").unwrap();
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
