//! Configured providers at run time: protocol adapter, credentials, limits.

use crate::config::{CompletionsVia, ProviderConfig};
use crate::health::DeploymentStats;
use foldhash::{HashMap, HashMapExt};
use http::{HeaderName, HeaderValue};
use polyplex_catalog::{Catalog, Model, Price};
use polyplex_providers::anthropic::Anthropic;
use polyplex_providers::azure::Azure;
use polyplex_providers::bedrock::{Bedrock, SigV4};
use polyplex_providers::cohere::Cohere;
use polyplex_providers::gemini::Gemini;
use polyplex_providers::openai_compat::OpenAiCompat;
use polyplex_providers::vertex::Vertex;
use polyplex_providers::{AuthStyle, Endpoint, Protocol, Target};
use polyplex_types::{ErrorSource, GatewayError};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub struct Upstream {
    pub name: String,
    /// `name` as the `x-polyplex-provider` header value, made once (None if
    /// the name cannot be one).
    pub name_header: Option<HeaderValue>,
    /// The wire protocol (`openai`, `anthropic`, ...).
    pub kind: String,
    pub protocol: Arc<dyn Protocol>,
    /// `protocol` answering legacy completions through its chat API
    /// ([`polyplex_providers::completions::ViaChat`]).
    via_chat: Arc<dyn Protocol>,
    /// Which models' completions go through `via_chat`.
    completions: CompletionsRule,
    /// Learned (under [`CompletionsRule::Guessed`]): the API answered its
    /// completions endpoint with 404 or 405, and chat served the request.
    completions_via_chat: AtomicBool,
    pub base_url: String,
    api_key: Option<SecretString>,
    /// `auth.prefix` + the key, built once (marked sensitive: never logged).
    credential: Option<HeaderValue>,
    pub auth: AuthStyle,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Explicit model list from the config, if any.
    pub models: Option<Vec<String>>,
    /// `polyplex_catalog::canonical` of each of `models`, computed once.
    canonical_models: Vec<String>,
    pub catalog_id: Option<String>,
    pub timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    pub weight: u32,
    /// Most requests / tokens per minute polyplex sends each of this
    /// provider's models (the config's `rpm` / `tpm`).
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Per-model `rpm` / `tpm` in place of the provider's.
    model_limits: BTreeMap<String, (Option<u64>, Option<u64>)>,
    pub prices: BTreeMap<String, Price>,
    /// Per-model USD per search unit, in place of the protocol's.
    pub search_unit_prices: BTreeMap<String, f64>,
    pub stream_usage: bool,
    pub drop_params: bool,
    pub api_version: Option<String>,
    /// AWS SigV4 signing (Bedrock with access keys).
    sigv4: Option<SigV4>,
    /// Google OAuth access tokens (Vertex AI without an API key).
    google: Option<GoogleAuth>,
    /// Live statistics per model served here (see [`crate::health`]).
    stats: RwLock<HashMap<String, Arc<DeploymentStats>>>,
}

/// Most models one provider keeps statistics for; model names can come from
/// clients, so the map is bounded (past it, statistics are not kept).
const MAX_TRACKED_MODELS: usize = 1024;

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Which models' legacy completions a provider answers through its chat API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CompletionsRule {
    /// None: its API has the completions endpoint (`completions = "native"`).
    Native,
    /// None, as far as polyplex knows (an OpenAI-protocol API it does not
    /// know to have chat only), until the API answers its completions
    /// endpoint with 404 or 405: then all ([`Upstream::learn_completions_via_chat`]).
    Guessed,
    /// All: a chat-only protocol, an OpenAI-protocol API known to have no
    /// completions endpoint, or `completions = "chat"`.
    Chat,
    /// OpenAI's own API: all but the models its completions endpoint
    /// serves ([`openai_completion_model`]).
    ChatModels,
}

impl CompletionsRule {
    fn of(p: &ProviderConfig, protocol: &dyn Protocol) -> CompletionsRule {
        match p.completions {
            Some(CompletionsVia::Chat) => return CompletionsRule::Chat,
            Some(CompletionsVia::Native) => return CompletionsRule::Native,
            None => {}
        }
        if !protocol.answers_completions() {
            return CompletionsRule::Chat;
        }
        let host = polyplex_providers::host_of(&p.base_url).unwrap_or_default();
        match host.as_str() {
            "api.openai.com" => CompletionsRule::ChatModels,
            // OpenAI-protocol APIs with chat only (DeepSeek's completions
            // are fill-in-the-middle, under its beta base URL only).
            "api.groq.com"
            | "api.deepseek.com"
            | "api.mistral.ai"
            | "api.perplexity.ai"
            | "generativelanguage.googleapis.com"
            | "api.anthropic.com"
            | "api.cohere.ai"
            | "api.cohere.com" => CompletionsRule::Chat,
            _ => CompletionsRule::Guessed,
        }
    }
}

/// The models OpenAI's own completions endpoint serves (the instruct and
/// base models, and their fine-tunes); every other OpenAI model is a chat
/// model there.
fn openai_completion_model(model: &str) -> bool {
    let m = model.strip_prefix("ft:").unwrap_or(model);
    ["gpt-3.5-turbo-instruct", "davinci-", "babbage-", "text-"]
        .iter()
        .any(|p| m.starts_with(p))
}

impl Upstream {
    /// The adapter for a request to `endpoint` for `model` (the upstream's name).
    pub fn protocol_for(&self, endpoint: Endpoint, model: &str) -> &dyn Protocol {
        let via_chat = endpoint == Endpoint::Completions
            && match self.completions {
                CompletionsRule::Native => false,
                CompletionsRule::Guessed => self.completions_via_chat.load(Ordering::Relaxed),
                CompletionsRule::Chat => true,
                CompletionsRule::ChatModels => !openai_completion_model(model),
            };
        if via_chat {
            self.via_chat.as_ref()
        } else {
            self.protocol.as_ref()
        }
    }

    /// After a completions request failed with `e`: whether it says this
    /// API has no completions endpoint (404 or 405 on it) where polyplex
    /// only guessed it had one — if so, its completions go through chat
    /// from now on (the caller asks again; [`Upstream::unlearn_completions_via_chat`]
    /// if chat fails too).
    pub fn learn_completions_via_chat(&self, endpoint: Endpoint, e: &GatewayError) -> bool {
        endpoint == Endpoint::Completions
            && self.completions == CompletionsRule::Guessed
            && e.source == ErrorSource::Upstream
            && matches!(e.status.as_u16(), 404 | 405)
            && !self.completions_via_chat.swap(true, Ordering::Relaxed)
    }

    /// Chat failed as well: the 404 was not about the endpoint.
    pub fn unlearn_completions_via_chat(&self) {
        self.completions_via_chat.store(false, Ordering::Relaxed);
    }

    pub fn from_config(p: &ProviderConfig) -> Result<Upstream, String> {
        let protocol: Arc<dyn Protocol> = match p.kind.as_str() {
            "openai" => Arc::new(OpenAiCompat),
            "anthropic" => Arc::new(Anthropic),
            "azure" => Arc::new(Azure),
            "bedrock" => Arc::new(Bedrock),
            "cohere" => Arc::new(Cohere),
            "gemini" => Arc::new(Gemini),
            "vertex" => Arc::new(Vertex),
            other => {
                return Err(format!(
                    "provider `{}`: protocol `{other}` is not supported",
                    p.name
                ))
            }
        };
        let header = HeaderName::try_from(p.auth_header.as_str())
            .map_err(|_| format!("provider `{}`: bad auth_header", p.name))?;
        let mut headers = Vec::new();
        for (k, v) in &p.headers {
            let k = HeaderName::try_from(k.as_str())
                .map_err(|_| format!("provider `{}`: bad header name {k}", p.name))?;
            let mut v = HeaderValue::try_from(v.as_str())
                .map_err(|_| format!("provider `{}`: bad header value for {k}", p.name))?;
            v.set_sensitive(true);
            headers.push((k, v));
        }
        let completions = CompletionsRule::of(p, protocol.as_ref());
        let via_chat = Arc::new(polyplex_providers::completions::ViaChat(protocol.clone()));
        Ok(Upstream {
            name: p.name.clone(),
            name_header: HeaderValue::try_from(p.name.as_str()).ok(),
            kind: p.kind.clone(),
            protocol,
            via_chat,
            completions,
            completions_via_chat: AtomicBool::new(false),
            base_url: p.base_url.clone(),
            api_key: p.api_key.clone(),
            credential: p
                .api_key
                .as_ref()
                .map(|k| k.expose_secret())
                .filter(|k| !k.is_empty())
                .and_then(|k| HeaderValue::try_from(format!("{}{k}", p.auth_prefix)).ok())
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                }),
            auth: AuthStyle {
                header,
                prefix: p.auth_prefix.clone(),
            },
            headers,
            models: p.models.clone(),
            canonical_models: p
                .models
                .iter()
                .flatten()
                .map(|m| polyplex_catalog::canonical(m))
                .collect(),
            catalog_id: p.catalog_id.clone(),
            timeout: p.timeout,
            first_byte_timeout: p.first_byte_timeout.unwrap_or(p.timeout),
            idle_timeout: p.idle_timeout,
            connect_timeout: p.connect_timeout,
            max_retries: p.max_retries,
            weight: p.weight,
            rpm: p.rpm,
            tpm: p.tpm,
            model_limits: p.model_limits.clone(),
            prices: p.prices.clone(),
            search_unit_prices: p.search_unit_prices.clone(),
            stream_usage: p.stream_usage,
            drop_params: p.drop_params,
            api_version: p.api_version.clone(),
            sigv4: p.sigv4.clone(),
            google: (p.kind == "vertex" && p.api_key.is_none())
                .then(|| GoogleAuth::new(p.google_credentials.clone())),
            stats: RwLock::new(HashMap::new()),
        })
    }

    /// The statistics of this provider serving `model`.
    pub fn stats(&self, model: &str) -> Arc<DeploymentStats> {
        if let Some(s) = self.stats.read().ok().and_then(|m| m.get(model).cloned()) {
            return s;
        }
        let Ok(mut m) = self.stats.write() else {
            return Arc::default();
        };
        if let Some(s) = m.get(model) {
            return s.clone();
        }
        let s = Arc::new(DeploymentStats::default());
        if m.len() < MAX_TRACKED_MODELS {
            m.insert(model.to_string(), s.clone());
        }
        s
    }

    /// Takes over `old`'s live statistics (circuits, latencies, upstream
    /// limit windows) and what it learned, when both are the same API:
    /// same protocol, same base URL. A reloaded configuration keeps a
    /// provider's health that way.
    pub fn carry_over(&self, old: &Upstream) -> bool {
        if self.kind != old.kind || self.base_url != old.base_url {
            return false;
        }
        if let (Ok(mut mine), Ok(theirs)) = (self.stats.write(), old.stats.read()) {
            mine.clone_from(&theirs);
        }
        self.completions_via_chat.store(
            old.completions_via_chat.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        true
    }

    /// Every model with statistics, sorted by name.
    pub fn tracked(&self) -> Vec<(String, Arc<DeploymentStats>)> {
        let mut v: Vec<_> = self
            .stats
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The provider key, for building requests and redacting error messages only.
    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_ref().map(|k| k.expose_secret())
    }

    /// Every secret this provider holds (its key; AWS secret and session
    /// token), for redacting what an upstream echoes.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.api_key()
            .into_iter()
            .chain(self.sigv4.iter().flat_map(SigV4::secrets))
    }

    /// An `Authorization: Bearer` value for this request, for providers
    /// whose credential is a short-lived token (Vertex AI: an access token
    /// from Google's application default credentials, cached and renewed
    /// before it expires). `None` for the rest.
    pub async fn bearer(&self) -> Result<Option<HeaderValue>, polyplex_types::GatewayError> {
        match &self.google {
            // Boxed: the token source's future is large, and every request's
            // future would otherwise carry its size.
            Some(g) => Box::pin(g.bearer(&self.name)).await.map(Some),
            None => Ok(None),
        }
    }

    pub fn target<'a>(
        &'a self,
        catalog: &Catalog,
        model: &'a str,
        drop_params: bool,
    ) -> Target<'a> {
        Target {
            provider: &self.name,
            base_url: &self.base_url,
            api_key: self.api_key(),
            credential: self.credential.as_ref(),
            auth: &self.auth,
            model,
            extra_headers: &self.headers,
            stream_usage: self.stream_usage,
            default_max_tokens: self
                .catalog_id
                .as_deref()
                .and_then(|c| catalog.model(c, model))
                .map(|m| m.output)
                .filter(|n| *n > 0),
            drop_params,
            api_version: self.api_version.as_deref(),
            sigv4: self.sigv4.as_ref(),
        }
    }

    /// The model this provider would serve for a bare name (no `provider/`):
    /// the name itself when listed, else an equivalent model under the
    /// provider's own id (see [`polyplex_catalog::canonical`]).
    /// `canonical` is `name`'s canonical form, computed on first need and
    /// shared by every provider asked about the same name.
    pub fn serves(
        &self,
        catalog: &Catalog,
        name: &str,
        canonical: &std::cell::OnceCell<String>,
    ) -> Option<String> {
        match &self.models {
            Some(list) => {
                if list.iter().any(|m| m == name) {
                    return Some(name.to_string());
                }
                let want = canonical.get_or_init(|| polyplex_catalog::canonical(name));
                list.iter()
                    .zip(&self.canonical_models)
                    .find(|(_, c)| *c == want)
                    .map(|(m, _)| m.clone())
            }
            None => catalog
                .provider(self.catalog_id.as_deref()?)?
                .equivalent(name)
                .map(|m| m.id.clone()),
        }
    }

    /// The catalog's entry for a model served here, if the catalog knows it.
    pub fn catalog_model<'c>(&self, catalog: &'c Catalog, model: &str) -> Option<&'c Model> {
        catalog.model(self.catalog_id.as_deref()?, model)
    }

    /// True if `provider/model` may be sent here: listed, or any name when no list is configured.
    /// The most requests and tokens a minute polyplex sends `model` here:
    /// its own `model_limits`, else the provider's `rpm` / `tpm`.
    pub fn limits(&self, model: &str) -> (Option<u64>, Option<u64>) {
        if self.model_limits.is_empty() {
            return (self.rpm, self.tpm);
        }
        self.model_limits
            .get(model)
            .copied()
            .unwrap_or((self.rpm, self.tpm))
    }

    pub fn accepts(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|list| list.iter().any(|m| m == model))
    }

    /// True if this provider offers `model`: listed, or (no list) in its
    /// catalog entry.
    pub fn offers(&self, catalog: &Catalog, model: &str) -> bool {
        self.accepts(model)
            && (self.models.is_some() || self.catalog_model(catalog, model).is_some())
    }

    /// The models this provider offers, for `/v1/models`.
    pub fn model_ids(&self, catalog: &Catalog) -> Vec<String> {
        match &self.models {
            Some(list) => list.clone(),
            None => self
                .catalog_id
                .as_deref()
                .and_then(|c| catalog.provider(c))
                .map(|p| p.models().iter().map(|m| m.id.clone()).collect())
                .unwrap_or_default(),
        }
    }

    /// The models this provider offers that have no price (neither in the
    /// catalog nor in `prices`): their `usage.cost` is 0, so a key's budget
    /// does not count them. Said at start and by `polyplex check`.
    pub fn unpriced(&self, catalog: &Catalog) -> Vec<String> {
        self.model_ids(catalog)
            .into_iter()
            .filter(|m| self.price(catalog, m, 0).is_none())
            .collect()
    }

    /// How [`Upstream::unpriced`] is said: the first few names and a count.
    pub fn unpriced_note(&self, catalog: &Catalog) -> Option<String> {
        let models = self.unpriced(catalog);
        if models.is_empty() {
            return None;
        }
        const SHOWN: usize = 5;
        let mut names = models
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if models.len() > SHOWN {
            names.push_str(&format!(" and {} more", models.len() - SHOWN));
        }
        Some(format!(
            "no price known for: {names}. Their usage.cost is 0 and key budgets do not count them; set `prices` on provider `{}` to charge them.",
            self.name
        ))
    }

    /// Price for `model` at a prompt size: config override, else catalog.
    /// What one search unit (Cohere's rerank billing) of `model` costs, USD:
    /// the configured price, else the protocol's list price.
    pub fn search_unit_price(&self, model: &str) -> f64 {
        self.search_unit_prices
            .get(model)
            .copied()
            .unwrap_or_else(|| self.protocol.search_unit_price(model))
    }

    pub fn price(&self, catalog: &Catalog, model: &str, prompt_tokens: u64) -> Option<Price> {
        if let Some(p) = self.prices.get(model) {
            return Some(*p);
        }
        catalog
            .model(self.catalog_id.as_deref()?, model)?
            .price_for(prompt_tokens)
    }
}

/// Google access tokens for Vertex AI: from a service-account key file
/// (`credentials_file`, or `GOOGLE_APPLICATION_CREDENTIALS`), else the rest of
/// Google's application-default chain (gcloud's user credentials, the
/// metadata server, the gcloud CLI), through `gcp_auth`, which caches each
/// token and renews it before it expires. The source is found on first use.
pub struct GoogleAuth {
    file: Option<std::path::PathBuf>,
    source: tokio::sync::OnceCell<Arc<dyn gcp_auth::TokenProvider>>,
}

impl GoogleAuth {
    pub fn new(file: Option<std::path::PathBuf>) -> GoogleAuth {
        GoogleAuth {
            file,
            source: tokio::sync::OnceCell::new(),
        }
    }

    async fn bearer(&self, provider: &str) -> Result<HeaderValue, polyplex_types::GatewayError> {
        let failed = |e: &dyn std::fmt::Display| {
            polyplex_types::GatewayError::upstream_unreachable(
                provider,
                format_args!("no Google access token ({e})"),
            )
        };
        let source = self
            .source
            .get_or_try_init(|| async {
                match &self.file {
                    Some(f) => gcp_auth::CustomServiceAccount::from_file(f)
                        .map(|c| Arc::new(c) as Arc<dyn gcp_auth::TokenProvider>),
                    None => gcp_auth::provider().await,
                }
            })
            .await
            .map_err(|e| failed(&e))?;
        let token = source
            .token(&[polyplex_providers::vertex::SCOPE])
            .await
            .map_err(|e| failed(&e))?;
        let mut v =
            HeaderValue::try_from(format!("Bearer {}", token.as_str())).map_err(|e| failed(&e))?;
        v.set_sensitive(true);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where polyplex only guessed the API has the completions endpoint, a
    /// 404 or 405 from the API on it (and nothing else) switches its
    /// completions to chat; chat failing too switches them back. A set
    /// `completions = "native"` is never second-guessed.
    #[test]
    fn a_missing_completions_endpoint_is_learned() {
        let upstream = |setting: Option<CompletionsVia>| {
            let mut p = ProviderConfig::with_defaults("p", "http://127.0.0.1:9/v1".into());
            p.completions = setting;
            Upstream::from_config(&p).unwrap()
        };
        let via_chat = |u: &Upstream| {
            let picked: *const dyn Protocol = u.protocol_for(Endpoint::Completions, "m");
            !std::ptr::addr_eq(picked, u.protocol.as_ref() as *const dyn Protocol)
        };
        let from_api = |status: u16| {
            GatewayError::upstream(
                http::StatusCode::from_u16(status).unwrap(),
                "x",
                "no such route",
            )
        };
        let u = upstream(None);
        assert!(!via_chat(&u));
        assert!(!u.learn_completions_via_chat(Endpoint::Completions, &from_api(500)));
        assert!(!u.learn_completions_via_chat(Endpoint::Chat, &from_api(404)));
        let mine = GatewayError::not_found("unknown model");
        assert!(!u.learn_completions_via_chat(Endpoint::Completions, &mine));
        assert!(!via_chat(&u));
        assert!(u.learn_completions_via_chat(Endpoint::Completions, &from_api(404)));
        assert!(via_chat(&u));
        // Learned once: a second 404 (now from chat) learns nothing more.
        assert!(!u.learn_completions_via_chat(Endpoint::Completions, &from_api(405)));
        u.unlearn_completions_via_chat();
        assert!(!via_chat(&u));
        let native = upstream(Some(CompletionsVia::Native));
        assert!(!native.learn_completions_via_chat(Endpoint::Completions, &from_api(404)));
        assert!(!via_chat(&native));
    }

    /// Legacy completions go through the chat API where the upstream has
    /// no completions endpoint for the model: a chat-only protocol, an
    /// OpenAI-protocol API that has chat only, OpenAI's chat models; the
    /// config's `completions` decides over all that.
    #[test]
    fn completions_go_through_chat_where_the_api_has_none() {
        let via_chat = |kind: &str, base: &str, setting: Option<CompletionsVia>, model: &str| {
            let mut p = ProviderConfig::with_defaults("p", base.into());
            p.kind = kind.into();
            p.completions = setting;
            if kind == "bedrock" {
                p.sigv4 = Some(SigV4::new("us-east-1", "AKID", "s", None));
            }
            let u = Upstream::from_config(&p).unwrap();
            let chat: *const dyn Protocol = u.protocol.as_ref();
            let picked: *const dyn Protocol = u.protocol_for(Endpoint::Completions, model);
            // Other endpoints always get the protocol itself.
            let other: *const dyn Protocol = u.protocol_for(Endpoint::Chat, model);
            assert!(std::ptr::addr_eq(other, chat));
            !std::ptr::addr_eq(picked, chat)
        };
        let openai = "https://api.openai.com/v1";
        for (kind, base, setting, model, expect) in [
            ("openai", openai, None, "gpt-4o-mini", true),
            ("openai", openai, None, "gpt-3.5-turbo-instruct", false),
            ("openai", openai, None, "davinci-002", false),
            ("openai", openai, None, "ft:babbage-002:acme::abc", false),
            (
                "openai",
                openai,
                Some(CompletionsVia::Native),
                "gpt-4o-mini",
                false,
            ),
            (
                "openai",
                "https://api.groq.com/openai/v1",
                None,
                "llama-3.3-70b-versatile",
                true,
            ),
            (
                "openai",
                "https://api.mistral.ai/v1",
                None,
                "mistral-small-latest",
                true,
            ),
            (
                "openai",
                "https://api.deepseek.com",
                None,
                "deepseek-chat",
                true,
            ),
            (
                "openai",
                "https://api.together.xyz/v1",
                None,
                "meta-llama/Llama-3-8b",
                false,
            ),
            ("openai", "http://127.0.0.1:8000/v1", None, "served", false),
            (
                "openai",
                "http://127.0.0.1:8000/v1",
                Some(CompletionsVia::Chat),
                "served",
                true,
            ),
            (
                "azure",
                "https://x.openai.azure.com",
                None,
                "my-deployment",
                false,
            ),
            (
                "anthropic",
                "https://api.anthropic.com",
                None,
                "claude-sonnet-4-5",
                true,
            ),
            (
                "gemini",
                "https://generativelanguage.googleapis.com",
                None,
                "gemini-2.5-flash",
                true,
            ),
            (
                "bedrock",
                "https://bedrock-runtime.us-east-1.amazonaws.com",
                None,
                "m",
                true,
            ),
        ] {
            assert_eq!(
                via_chat(kind, base, setting, model),
                expect,
                "{kind} {base} {setting:?} {model}"
            );
        }
    }

    #[test]
    fn every_secret_is_known_for_redaction() {
        let mut p = ProviderConfig::with_defaults("aws", "http://127.0.0.1:9".into());
        p.kind = "bedrock".into();
        p.sigv4 = Some(SigV4::new(
            "us-east-1",
            "AKID",
            "the-secret",
            Some("the-token"),
        ));
        let up = Upstream::from_config(&p).unwrap();
        let secrets: Vec<&str> = up.secrets().collect();
        assert_eq!(secrets, vec!["the-secret", "the-token"]);
        let e = polyplex_types::GatewayError::invalid_request("echo: the-secret / the-token");
        let e = up.secrets().fold(e, polyplex_types::GatewayError::redact);
        assert_eq!(e.message, "echo: [redacted] / [redacted]");
        p.sigv4 = None;
        p.api_key = Some(SecretString::from("bedrock-key".to_string()));
        let up = Upstream::from_config(&p).unwrap();
        assert_eq!(up.secrets().collect::<Vec<_>>(), vec!["bedrock-key"]);
    }
}
