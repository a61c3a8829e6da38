//! Configuration: `polyplex.toml`, or zero-config from the environment.
//!
//! Raw serde types (`Raw*`, `deny_unknown_fields`) are turned by [`load`] /
//! [`from_toml`] into validated runtime types. `${VAR}` in string values is
//! replaced from the environment; a missing variable is an error naming the
//! field. Secrets are held as [`SecretString`] and never printed.

use polyplex_catalog::{Catalog, Price, PROTOCOL_OPENAI};
use polyplex_providers::bedrock::SigV4;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8484";
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;
/// `[server] header_timeout_ms` unless set: as long as a keep-alive
/// client may leave a connection idle (the OpenAI SDKs drop theirs after
/// 5 s), well past any real client's head.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 60_000;
/// `[server] body_timeout_ms` unless set.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 60_000;

/// A timeout setting in milliseconds: its default when absent, none when 0.
fn timeout_or_none(ms: Option<u64>, default: u64) -> Option<Duration> {
    match ms.unwrap_or(default) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    }
}
/// `[server] busy_poll_us` unless set: long enough to catch an upstream's
/// answer on loopback or in one data centre and a client's next request on a
/// kept-alive connection (see docs/performance.md).
pub const DEFAULT_BUSY_POLL_US: u64 = 200;
const MAX_BUSY_POLL_US: u64 = 100_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 600_000;
pub const DEFAULT_MAX_RETRIES: u32 = 2;

#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

// ---------------------------------------------------------------- raw file

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    #[serde(default)]
    auth: RawAuth,
    store: Option<RawStore>,
    redis: Option<RawUrl>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    providers: Vec<RawProvider>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    routing: RawRouting,
    cache: Option<RawCache>,
    #[serde(default)]
    batches: RawBatches,
    alerts: Option<RawAlerts>,
}

/// `[alerts]`: webhook notifications (`crate::alerts`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    webhook_url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    budget_thresholds: Option<Vec<f64>>,
    key_expiry_notice_hours: Option<f64>,
    events: Option<Vec<String>>,
}

/// `[batches]`: how batches run (`crate::batches`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatches {
    concurrency: Option<usize>,
    max_file_bytes: Option<usize>,
}

/// How the Batch API runs its batches (`[batches]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchesConfig {
    /// Requests of a batch running at once on each replica.
    pub concurrency: usize,
    /// The largest file `POST /v1/files` takes.
    pub max_file_bytes: usize,
}

impl Default for BatchesConfig {
    fn default() -> Self {
        BatchesConfig {
            concurrency: 8,
            max_file_bytes: 200 * 1024 * 1024,
        }
    }
}

/// `[cache]`: present means on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    ttl_s: Option<u64>,
    max_entries: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    strategy: Option<String>,
    retry_budget_ratio: Option<f64>,
    retry_budget_min_per_s: Option<f64>,
    breaker_window_ms: Option<u64>,
    breaker_min_requests: Option<u32>,
    breaker_error_ratio: Option<f64>,
    breaker_cooldown_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    master_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUrl {
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: String,
    /// Where usage records the store did not take wait for the next start.
    spool: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    max_body_bytes: Option<usize>,
    header_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    threads: Option<usize>,
    busy_poll_us: Option<u64>,
    cors_origins: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    #[serde(default)]
    input: f64,
    #[serde(default)]
    output: f64,
    cache_read: Option<f64>,
    cache_write: Option<f64>,
    /// USD per search unit (Cohere's rerank billing).
    search_unit: Option<f64>,
}

/// One model's upstream limits (`model_limits."gpt-4o" = { rpm = 500 }`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    rpm: Option<u64>,
    tpm: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    kind: Option<String>,
    base_url: Option<String>,
    api_key: Option<String>,
    models: Option<Vec<String>>,
    timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_retries: Option<u32>,
    weight: Option<u32>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    rpm: Option<u64>,
    tpm: Option<u64>,
    /// Per-model `rpm` / `tpm`, over the provider's.
    #[serde(default)]
    model_limits: BTreeMap<String, RawLimits>,
    #[serde(default)]
    prices: BTreeMap<String, RawPrice>,
    #[serde(default)]
    drop_params: bool,
    /// Header that carries the key (default `Authorization`).
    auth_header: Option<String>,
    /// Written before the key in that header (default `Bearer ` for Authorization, else nothing).
    auth_prefix: Option<String>,
    /// Ask for usage on streams with `stream_options` (default true).
    stream_usage: Option<bool>,
    /// How legacy completions reach this provider: `"native"` (its own
    /// completions endpoint) or `"chat"` (its chat API); default: by the
    /// API's host and the model ([`crate::upstream`]).
    completions: Option<String>,
    /// Catalog provider id for prices and model lists, when `name` is not one.
    catalog: Option<String>,
    /// API version for protocols that carry one in the URL (Azure).
    api_version: Option<String>,
    /// Bedrock: the AWS region (default: from `base_url`, `AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, else us-east-1).
    region: Option<String>,
    /// Bedrock: AWS access keys for SigV4 (default: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), used when there is no `api_key`.
    aws_access_key_id: Option<String>,
    aws_secret_access_key: Option<String>,
    aws_session_token: Option<String>,
    /// Vertex AI: the Google Cloud project (default: `GOOGLE_VERTEX_PROJECT`,
    /// `GOOGLE_CLOUD_PROJECT`, else the credentials file's).
    project: Option<String>,
    /// Vertex AI: the location (default: `GOOGLE_VERTEX_LOCATION`,
    /// `GOOGLE_CLOUD_LOCATION`, else `global`).
    location: Option<String>,
    /// Vertex AI: a service-account key file (default:
    /// `GOOGLE_APPLICATION_CREDENTIALS`, else the rest of Google's
    /// application-default credentials), used when there is no `api_key`.
    credentials_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    targets: Vec<String>,
    strategy: Option<String>,
    /// Hedge after this long without a first byte.
    hedge_after_ms: Option<u64>,
    /// `"p95"`: hedge after the first deployment's observed p95 TTFT.
    hedge_after: Option<String>,
}

// ---------------------------------------------------------------- runtime

#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub master_key: Option<SecretString>,
    pub store_url: String,
    /// The usage records' spool ([`crate::spool`]): `[store] spool`.
    pub spool: std::path::PathBuf,
    pub redis_url: Option<String>,
    /// The response cache (`[cache]`; off without it).
    pub cache: Option<crate::cache::CacheConfig>,
    /// The Batch API (`[batches]`).
    pub batches: BatchesConfig,
    /// Webhook notifications (`[alerts]`; none without it).
    pub alerts: Option<crate::alerts::AlertsConfig>,
    pub max_body_bytes: usize,
    /// How long a connection may take to send a request's head, counted
    /// from when it is ready for one (idle between requests too); `None`:
    /// no limit. See `crate::serve_listener`.
    pub header_timeout: Option<Duration>,
    /// How long a request's body may take to arrive after its head
    /// (`None`: no limit); then 408.
    pub body_timeout: Option<Duration>,
    pub shutdown_grace: Duration,
    /// Serving threads, each with its own listener and runtime (`None`: one
    /// per CPU). See `crate::start_threads`.
    pub threads: Option<usize>,
    /// How long a serving thread keeps polling its sockets after a request
    /// before it sleeps (zero: never). See `crate::server::busy`.
    pub busy_poll: Duration,
    /// Origins whose web pages may call (`server.cors_origins`); `None`:
    /// any with a master key, this machine's without. See
    /// `crate::server::browsers`.
    pub cors_origins: Option<Vec<String>>,
    pub providers: Vec<ProviderConfig>,
    pub routes: Vec<RouteConfig>,
    pub routing: RoutingConfig,
    /// Serve the built-in simulator as provider `demo` (nothing else configured).
    pub demo: bool,
    /// Where the configuration came from, for logs.
    pub source: String,
    /// What zero-config found, for the startup log.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    /// The wire protocol.
    pub kind: String,
    pub base_url: String,
    pub api_key: Option<SecretString>,
    /// Explicit model list; `None` means the catalog's (and any name is passed through).
    pub models: Option<Vec<String>>,
    pub catalog_id: Option<String>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Option<Duration>,
    pub idle_timeout: Duration,
    pub max_retries: u32,
    pub weight: u32,
    pub headers: Vec<(String, String)>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Per-model `rpm` / `tpm` in place of the provider's.
    pub model_limits: BTreeMap<String, (Option<u64>, Option<u64>)>,
    pub prices: BTreeMap<String, Price>,
    /// Per-model USD per search unit (`prices.<model>.search_unit`).
    pub search_unit_prices: BTreeMap<String, f64>,
    pub drop_params: bool,
    pub auth_header: String,
    pub auth_prefix: String,
    pub stream_usage: bool,
    /// `completions = "native" | "chat"`; `None`: decided by host and model.
    pub completions: Option<CompletionsVia>,
    pub api_version: Option<String>,
    /// Bedrock without an API key: AWS SigV4 credentials and region.
    pub sigv4: Option<SigV4>,
    /// Vertex AI without an API key: the service-account key file, if one
    /// is named (else Google's application-default chain).
    pub google_credentials: Option<PathBuf>,
}

impl ProviderConfig {
    /// An OpenAI-protocol provider with every optional setting at its default.
    pub fn with_defaults(name: &str, base_url: String) -> ProviderConfig {
        ProviderConfig {
            name: name.to_string(),
            kind: PROTOCOL_OPENAI.to_string(),
            base_url,
            api_key: None,
            models: None,
            catalog_id: None,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: None,
            idle_timeout: Duration::from_secs(120),
            max_retries: DEFAULT_MAX_RETRIES,
            weight: 1,
            headers: Vec::new(),
            rpm: None,
            tpm: None,
            model_limits: BTreeMap::new(),
            prices: BTreeMap::new(),
            search_unit_prices: BTreeMap::new(),
            drop_params: false,
            auth_header: "authorization".into(),
            auth_prefix: "Bearer ".into(),
            stream_usage: true,
            completions: None,
            api_version: None,
            sigv4: None,
            google_credentials: None,
        }
    }
}

/// Where a provider's legacy completions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionsVia {
    /// Its own completions endpoint.
    Native,
    /// Its chat API, the prompt as one user message.
    Chat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Priority,
    Cost,
    Latency,
    Throughput,
    Weighted,
    LeastBusy,
}

impl Strategy {
    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Priority => "priority",
            Strategy::Cost => "cost",
            Strategy::Latency => "latency",
            Strategy::Throughput => "throughput",
            Strategy::Weighted => "weighted",
            Strategy::LeastBusy => "least-busy",
        }
    }

    fn parse(s: &str) -> Option<Strategy> {
        Some(match s {
            "priority" => Strategy::Priority,
            "cost" => Strategy::Cost,
            "latency" => Strategy::Latency,
            "throughput" => Strategy::Throughput,
            "weighted" => Strategy::Weighted,
            "least-busy" => Strategy::LeastBusy,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// `(provider, model)` pairs.
    pub targets: Vec<(String, String)>,
    pub strategy: Strategy,
    pub hedge: Option<Hedge>,
}

/// When a hedged route sends its second attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hedge {
    After(Duration),
    /// The first deployment's observed p95 time to first token.
    P95,
}

/// `[routing]`: how bare model names are ordered, the retry budget and the breaker.
#[derive(Debug, Clone, Copy)]
pub struct RoutingConfig {
    /// For a bare model several providers serve.
    pub strategy: Strategy,
    pub retry_budget_ratio: f64,
    pub retry_budget_min_per_s: f64,
    pub health: crate::health::HealthConfig,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            strategy: Strategy::Priority,
            retry_budget_ratio: 0.2,
            retry_budget_min_per_s: 1.0,
            health: crate::health::HealthConfig::default(),
        }
    }
}

fn routing(r: RawRouting) -> Result<RoutingConfig, ConfigError> {
    let d = RoutingConfig::default();
    let strategy = match r.strategy.as_deref() {
        None => d.strategy,
        Some(s) => Strategy::parse(s).ok_or_else(|| {
            ConfigError(format!(
                "routing.strategy: `{s}` is not one of priority, cost, latency, throughput, weighted, least-busy"
            ))
        })?,
    };
    let ratio = |v: Option<f64>, field: &str, default: f64| match v {
        Some(x) if !(0.0..=1.0).contains(&x) => {
            err(format!("routing.{field}: must be between 0 and 1"))
        }
        Some(x) => Ok(x),
        None => Ok(default),
    };
    let min_per_s = r.retry_budget_min_per_s.unwrap_or(d.retry_budget_min_per_s);
    if !(min_per_s >= 0.0 && min_per_s.is_finite()) {
        return err("routing.retry_budget_min_per_s: must be a number >= 0");
    }
    let error_ratio = ratio(
        r.breaker_error_ratio,
        "breaker_error_ratio",
        d.health.error_ratio,
    )?;
    if error_ratio == 0.0 {
        return err("routing.breaker_error_ratio: must be above 0");
    }
    Ok(RoutingConfig {
        strategy,
        retry_budget_ratio: ratio(
            r.retry_budget_ratio,
            "retry_budget_ratio",
            d.retry_budget_ratio,
        )?,
        retry_budget_min_per_s: min_per_s,
        health: crate::health::HealthConfig {
            window: r
                .breaker_window_ms
                .map_or(d.health.window, Duration::from_millis),
            min_requests: r
                .breaker_min_requests
                .unwrap_or(d.health.min_requests)
                .max(1),
            error_ratio,
            cooldown: r
                .breaker_cooldown_ms
                .map_or(d.health.cooldown, Duration::from_millis),
        },
    })
}

/// Protocols the gateway can speak today. The others in the catalog are named
/// in errors and logs so nobody wonders why a provider is missing.
pub const SUPPORTED_KINDS: &[&str] = &[
    PROTOCOL_OPENAI,
    "anthropic",
    "azure",
    "bedrock",
    "gemini",
    "cohere",
    "vertex",
];

/// The catalog provider whose models and prices a provider of `kind` gets
/// when its name is not a catalog id (`name = "bedrock"`).
fn catalog_for_kind(kind: &str) -> Option<&'static str> {
    match kind {
        "bedrock" => Some("amazon-bedrock"),
        "vertex" => Some("google-vertex"),
        _ => None,
    }
}

/// How a Bedrock provider authenticates, from its settings or else the
/// environment as the AWS SDKs read it: an API key (bearer), or access keys
/// (SigV4). Errors name the setting.
/// An optional string setting, `${VAR}`s replaced (`field` names it in
/// errors); an empty one is unset.
fn optional_setting(
    v: Option<&str>,
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    Ok(v.map(|s| interpolate(s, field, env))
        .transpose()?
        .filter(|s| !s.is_empty()))
}

struct BedrockAuth {
    region: String,
    api_key: Option<String>,
    sigv4: Option<SigV4>,
}

fn bedrock_auth(
    p: &RawProvider,
    base_url: Option<&str>,
    api_key: Option<String>,
    at: &dyn Fn(&str) -> String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BedrockAuth, ConfigError> {
    let setting = |v: &Option<String>, field: &str| optional_setting(v.as_deref(), &at(field), env);
    let from_env = |k: &str| env(k).filter(|s| !s.is_empty());
    let region = match setting(&p.region, "region")? {
        Some(r) => r,
        None => base_url
            .and_then(polyplex_providers::bedrock::region_of)
            .or_else(|| from_env("AWS_REGION"))
            .or_else(|| from_env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into()),
    };
    if region.is_empty()
        || !region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return err(format!(
            "{}: `{region}` is not an AWS region (e.g. us-east-1)",
            at("region")
        ));
    }
    let id = setting(&p.aws_access_key_id, "aws_access_key_id")?;
    let secret = setting(&p.aws_secret_access_key, "aws_secret_access_key")?;
    let token = setting(&p.aws_session_token, "aws_session_token")?;
    if id.is_some() != secret.is_some() {
        let missing = if id.is_none() {
            "aws_access_key_id"
        } else {
            "aws_secret_access_key"
        };
        return err(format!(
            "{}: required with {}",
            at(missing),
            if id.is_none() {
                "aws_secret_access_key"
            } else {
                "aws_access_key_id"
            }
        ));
    }
    let sigv4 =
        |id: &str, secret: &str, token: Option<&str>| Some(SigV4::new(&region, id, secret, token));
    let (api_key, signer) = match (api_key, id, secret) {
        (Some(k), None, None) => (Some(k), None),
        (Some(_), Some(_), _) => {
            return err(format!(
                "{}: give either api_key (a Bedrock API key) or AWS access keys, not both",
                at("api_key")
            ))
        }
        (None, Some(id), Some(secret)) => (None, sigv4(&id, &secret, token.as_deref())),
        _ => match (
            from_env("AWS_BEARER_TOKEN_BEDROCK"),
            from_env("AWS_ACCESS_KEY_ID"),
            from_env("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(k), _, _) => (Some(k), None),
            (None, Some(id), Some(secret)) => (
                None,
                sigv4(&id, &secret, from_env("AWS_SESSION_TOKEN").as_deref()),
            ),
            _ => {
                return err(format!(
                    "{}: Bedrock needs credentials: api_key (a Bedrock API key, e.g. \"${{AWS_BEARER_TOKEN_BEDROCK}}\") or aws_access_key_id and aws_secret_access_key (or AWS_BEARER_TOKEN_BEDROCK, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, in the environment)",
                    at("api_key")
                ))
            }
        },
    };
    Ok(BedrockAuth {
        region,
        api_key,
        sigv4: signer,
    })
}

/// Where a Vertex AI provider sends requests and how it authenticates.
struct VertexSetup {
    base_url: String,
    credentials_file: Option<PathBuf>,
    /// An express-mode API key goes in `x-goog-api-key`; else a bearer token.
    api_key_header: bool,
}

fn vertex_setup(
    p: &RawProvider,
    given_url: Option<&str>,
    has_api_key: bool,
    at: &dyn Fn(&str) -> String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<VertexSetup, ConfigError> {
    let setting = |v: &Option<String>, field: &str| optional_setting(v.as_deref(), &at(field), env);
    let from_env = |k: &str| env(k).filter(|s| !s.is_empty());
    let location = setting(&p.location, "location")?
        .or_else(|| from_env("GOOGLE_VERTEX_LOCATION"))
        .or_else(|| from_env("GOOGLE_CLOUD_LOCATION"))
        .unwrap_or_else(|| "global".into());
    let segment = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !segment(&location) {
        return err(format!(
            "{}: `{location}` is not a Vertex AI location (e.g. us-central1, global)",
            at("location")
        ));
    }
    let (credentials_file, file_field) = match setting(&p.credentials_file, "credentials_file")? {
        Some(f) => (Some(PathBuf::from(f)), at("credentials_file")),
        None if has_api_key => (None, String::new()),
        None => (
            from_env("GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from),
            "GOOGLE_APPLICATION_CREDENTIALS".to_string(),
        ),
    };
    // The key file is read now, so a wrong path or a broken file is named at
    // start, and its project is the default one.
    let file_project = match &credentials_file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| {
                ConfigError(format!("{file_field}: cannot read {}: {e}", f.display()))
            })?;
            if let Err(e) = gcp_auth::CustomServiceAccount::from_json(&text) {
                return err(format!(
                    "{file_field}: {} is not a Google service-account key file ({e})",
                    f.display()
                ));
            }
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("project_id")?.as_str().map(str::to_string))
        }
        None => None,
    };
    let project = setting(&p.project, "project")?
        .or_else(|| from_env("GOOGLE_VERTEX_PROJECT"))
        .or_else(|| from_env("GOOGLE_CLOUD_PROJECT"))
        .or(file_project);
    if let Some(pr) = &project {
        if !segment(pr) {
            return err(format!(
                "{}: `{pr}` is not a Google Cloud project id",
                at("project")
            ));
        }
    }
    // A given URL that already names the API version (and the project) is
    // used as it is; a bare host (what Google's SDKs call the base URL) gets
    // the project and location path.
    let path_for = |pr: Option<&String>| match pr {
        Some(pr) => Some(format!("v1/projects/{pr}/locations/{location}")),
        None if has_api_key => Some("v1".to_string()),
        None => None,
    };
    let base_url = match (given_url, &project) {
        (Some(u), _)
            if u.trim_end_matches('/').ends_with("/v1") || u.contains("/projects/") =>
        {
            u.to_string()
        }
        (Some(u), pr) => match path_for(pr.as_ref()) {
            Some(path) => polyplex_providers::join_url(u, &path),
            None => {
                return err(format!(
                    "{}: required for Vertex AI (or GOOGLE_VERTEX_PROJECT / GOOGLE_CLOUD_PROJECT, or a service-account credentials_file naming one)",
                    at("project")
                ))
            }
        },
        (None, Some(pr)) => polyplex_providers::vertex::base_url_for(pr, &location),
        (None, None) if has_api_key => polyplex_providers::vertex::EXPRESS_BASE_URL.to_string(),
        (None, None) => {
            return err(format!(
                "{}: required for Vertex AI (or GOOGLE_VERTEX_PROJECT / GOOGLE_CLOUD_PROJECT, or a service-account credentials_file naming one)",
                at("project")
            ))
        }
    };
    Ok(VertexSetup {
        base_url,
        credentials_file,
        api_key_header: has_api_key,
    })
}

/// Aliases for self-hosted OpenAI-protocol servers: kind = "ollama" etc.
fn kind_alias(kind: &str) -> Option<(&'static str, &'static str)> {
    Some(match kind {
        "ollama" => ("ollama", "http://127.0.0.1:11434/v1"),
        "vllm" => ("vllm", "http://127.0.0.1:8000/v1"),
        "llamacpp" | "llama.cpp" => ("llamacpp", "http://127.0.0.1:8080/v1"),
        "lmstudio" => ("lmstudio", "http://127.0.0.1:1234/v1"),
        _ => return None,
    })
}

/// The header a protocol carries its key in.
fn default_auth_header(kind: &str) -> &'static str {
    match kind {
        "anthropic" => "x-api-key",
        "azure" => "api-key",
        "gemini" => "x-goog-api-key",
        _ => "authorization",
    }
}

/// Replaces `${VAR}` from `env`. `field` names the setting in errors.
pub fn interpolate(
    s: &str,
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return err(format!("{field}: unterminated `${{` in value"));
        };
        let var = &after[..end];
        if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return err(format!(
                "{field}: `${{{var}}}` is not a valid environment variable name"
            ));
        }
        match env(var) {
            Some(v) => out.push_str(&v),
            None => return err(format!("{field}: environment variable {var} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `[alerts]`, validated: the webhook's URL and headers (secrets from the
/// environment), the budget fractions that alert, the events sent.
fn alerts(
    a: RawAlerts,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::alerts::AlertsConfig, ConfigError> {
    let url = interpolate(&a.webhook_url, "alerts.webhook_url", env)?;
    if !((url.starts_with("http://") || url.starts_with("https://"))
        && url::Url::parse(&url).is_ok())
    {
        return err(format!(
            "alerts.webhook_url: `{}` is not an http(s) URL",
            crate::store::redact_url(&url)
        ));
    }
    let mut headers = Vec::new();
    for (k, v) in &a.headers {
        let field = format!("alerts.headers.{k}");
        let v = interpolate(v, &field, env)?;
        if http::HeaderName::from_bytes(k.as_bytes()).is_err()
            || http::HeaderValue::from_str(&v).is_err()
        {
            return err(format!("{field}: not a valid HTTP header"));
        }
        headers.push((k.clone(), SecretString::from(v)));
    }
    let mut thresholds = a.budget_thresholds.unwrap_or_else(|| vec![0.8, 1.0]);
    for (i, t) in thresholds.iter().enumerate() {
        if !(t.is_finite() && *t > 0.0 && *t <= 1.0) {
            return err(format!(
                "alerts.budget_thresholds[{i}]: {t} is not a fraction of the budget above 0 and at most 1 (0.8 is 80%)"
            ));
        }
    }
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    let mut budget = true;
    let mut circuit = true;
    let mut store = true;
    let mut key = true;
    if let Some(events) = &a.events {
        (budget, circuit, store, key) = (false, false, false, false);
        for (i, e) in events.iter().enumerate() {
            match e.as_str() {
                "budget" => budget = true,
                "circuit" => circuit = true,
                "store" => store = true,
                "key" => key = true,
                other => {
                    return err(format!(
                        "alerts.events[{i}]: `{other}` is not one of `budget`, `circuit`, `key`, `store`"
                    ))
                }
            }
        }
    }
    let notice_hours = a.key_expiry_notice_hours.unwrap_or(168.0);
    if !(notice_hours.is_finite() && notice_hours > 0.0 && notice_hours <= 24.0 * 366.0) {
        return err(format!(
            "alerts.key_expiry_notice_hours: {notice_hours} is not a number of hours above 0 and at most a year (8784)"
        ));
    }
    Ok(crate::alerts::AlertsConfig {
        webhook_url: SecretString::from(url),
        headers,
        budget_thresholds: thresholds,
        budget,
        circuit,
        store,
        key,
        key_expiry_notice: Duration::from_secs_f64(notice_hours * 3600.0),
    })
}

fn parse_listen(s: &str, what: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError(format!(
            "{what}: `{s}` is not an address like 127.0.0.1:8484"
        ))
    })
}

fn valid_base_url(url: &str, field: &str) -> Result<(), ConfigError> {
    let ok =
        (url.starts_with("http://") || url.starts_with("https://")) && url::Url::parse(url).is_ok();
    if !ok {
        return err(format!("{field}: `{url}` is not an http(s) URL"));
    }
    Ok(())
}

/// Everything [`load`] reads from outside the file.
pub struct Inputs<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub listen_override: Option<String>,
    pub catalog: &'a Catalog,
}

/// Loads the configuration: `path` if given, else `./polyplex.toml` if present, else zero-config.
pub fn load(path: Option<&Path>, inputs: &Inputs<'_>) -> Result<Config, ConfigError> {
    let path: Option<PathBuf> = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from("polyplex.toml")).filter(|p| p.exists()),
    };
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(&p).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", p.display()))
            })?;
            let mut cfg = from_toml(&text, inputs)
                .map_err(|e| ConfigError(format!("{}: {e}", p.display())))?;
            cfg.source = p.display().to_string();
            Ok(cfg)
        }
        None => zero_config(inputs),
    }
}

/// Parses and validates a TOML configuration.
pub fn from_toml(text: &str, inputs: &Inputs<'_>) -> Result<Config, ConfigError> {
    let raw: RawConfig =
        toml::from_str(text).map_err(|e| ConfigError(format!("invalid configuration: {e}")))?;
    let env = inputs.env;
    let listen_s = match &inputs.listen_override {
        Some(l) => l.clone(),
        None => raw
            .listen
            .as_deref()
            .map(|l| interpolate(l, "listen", env))
            .transpose()?
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
    };
    let listen = parse_listen(&listen_s, "listen")?;
    let master_key = optional_setting(raw.auth.master_key.as_deref(), "auth.master_key", env)?;
    if let Some(k) = &master_key {
        if k.len() < 8 {
            return err("auth.master_key: must be at least 8 characters");
        }
    }
    let store_url = match &raw.store {
        Some(s) => interpolate(&s.url, "store.url", env)?,
        None => "sqlite://polyplex.db".to_string(),
    };
    if !(store_url.starts_with("sqlite:")
        || store_url.starts_with("postgres://")
        || store_url.starts_with("postgresql://"))
    {
        return err(format!(
            "store.url: `{}` must start with sqlite: or postgres://",
            crate::store::redact_url(&store_url)
        ));
    }
    let redis_url = raw
        .redis
        .as_ref()
        .map(|r| interpolate(&r.url, "redis.url", env))
        .transpose()?;
    if let Some(r) = &redis_url {
        if !(r.starts_with("redis://") || r.starts_with("rediss://")) {
            return err(format!(
                "redis.url: `{}` must start with redis:// or rediss://",
                crate::store::redact_url(r)
            ));
        }
    }

    let mut providers: Vec<ProviderConfig> = Vec::new();
    for (i, p) in raw.providers.into_iter().enumerate() {
        let pc = provider(p, i, inputs)?;
        if providers.iter().any(|q| q.name == pc.name) {
            return err(format!(
                "providers[{i}].name: `{}` is used twice; provider names must be unique",
                pc.name
            ));
        }
        providers.push(pc);
    }
    let mut routes: Vec<RouteConfig> = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let route = route(r, i, &providers)?;
        if routes.iter().any(|q| q.name == route.name) {
            return err(format!("routes[{i}].name: `{}` is used twice", route.name));
        }
        routes.push(route);
    }
    let demo = providers.is_empty();
    let routing = routing(raw.routing)?;
    let cache = match raw.cache {
        None => None,
        Some(c) => Some(crate::cache::CacheConfig {
            ttl: match c.ttl_s {
                Some(0) => return err("cache.ttl_s: must be at least 1".to_string()),
                t => Duration::from_secs(t.unwrap_or(3600)),
            },
            max_entries: match c.max_entries {
                Some(0) => return err("cache.max_entries: must be at least 1".to_string()),
                n => n.unwrap_or(10_000),
            },
        }),
    };
    let defaults = BatchesConfig::default();
    let batches = BatchesConfig {
        concurrency: match raw.batches.concurrency {
            Some(0) => return err("batches.concurrency: must be at least 1".to_string()),
            Some(n) if n > 1024 => {
                return err(format!("batches.concurrency: {n} is more than 1024"))
            }
            n => n.unwrap_or(defaults.concurrency),
        },
        max_file_bytes: match raw.batches.max_file_bytes {
            Some(0) => return err("batches.max_file_bytes: must be at least 1".to_string()),
            n => n.unwrap_or(defaults.max_file_bytes),
        },
    };
    Ok(Config {
        listen,
        master_key: master_key.map(SecretString::from),
        store_url,
        spool: match raw.store.as_ref().and_then(|s| s.spool.as_deref()) {
            Some(p) => interpolate(p, "store.spool", env)?.into(),
            None => crate::spool::DEFAULT_PATH.into(),
        },
        redis_url,
        cache,
        batches,
        alerts: raw.alerts.map(|a| alerts(a, env)).transpose()?,
        max_body_bytes: raw.server.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
        header_timeout: timeout_or_none(raw.server.header_timeout_ms, DEFAULT_HEADER_TIMEOUT_MS),
        body_timeout: timeout_or_none(raw.server.body_timeout_ms, DEFAULT_BODY_TIMEOUT_MS),
        shutdown_grace: Duration::from_millis(raw.server.shutdown_grace_ms.unwrap_or(30_000)),
        threads: match raw.server.threads {
            Some(0) => return err("server.threads: must be at least 1".to_string()),
            Some(n) if n > 1024 => return err(format!("server.threads: {n} is more than 1024")),
            t => t,
        },
        busy_poll: match raw.server.busy_poll_us {
            Some(n) if n > MAX_BUSY_POLL_US => {
                return err(format!(
                    "server.busy_poll_us: {n} is more than {MAX_BUSY_POLL_US} (a serving thread would spin most of a second after every request)"
                ))
            }
            n => Duration::from_micros(n.unwrap_or(DEFAULT_BUSY_POLL_US)),
        },
        cors_origins: match raw.server.cors_origins {
            Some(list) => {
                for (i, o) in list.iter().enumerate() {
                    if let Err(m) = crate::server::browsers::parse_origin(o) {
                        return err(format!("server.cors_origins[{i}]: {m}"));
                    }
                }
                Some(list)
            }
            None => None,
        },
        providers,
        routes,
        routing,
        demo,
        source: "inline".into(),
        notes: Vec::new(),
    })
}

fn provider(p: RawProvider, i: usize, inputs: &Inputs<'_>) -> Result<ProviderConfig, ConfigError> {
    let env = inputs.env;
    let at = |f: &str| format!("providers[{i}].{f}");
    if p.name.is_empty() || p.name.contains('/') || p.name.chars().any(char::is_whitespace) {
        return err(format!(
            "{}: `{}` must be non-empty, without `/` or spaces",
            at("name"),
            p.name
        ));
    }
    // The catalog's entry: the one named, else the provider's own name (or
    // its common name: `gemini`, `bedrock`, `together`, ... when it speaks
    // that provider's protocol).
    let catalog_id = match &p.catalog {
        Some(c) => match inputs.catalog.find_provider(c) {
            Some(found) => Some(found.id.clone()),
            None => {
                return err(format!(
                    "{}: `{c}` is not a provider in the catalog (see `polyplex models`)",
                    at("catalog")
                ))
            }
        },
        None => inputs
            .catalog
            .find_provider(&p.name)
            .filter(|c| c.id == p.name || p.kind.as_ref().is_none_or(|k| *k == c.protocol))
            .map(|c| c.id.clone()),
    };
    let cat = catalog_id
        .as_deref()
        .and_then(|c| inputs.catalog.provider(c));
    let kind_in = p.kind.clone().or_else(|| cat.map(|c| c.protocol.clone()));
    let Some(kind_in) = kind_in else {
        return err(format!(
            "{}: required for `{}`, which is not in the catalog (e.g. kind = \"openai\")",
            at("kind"),
            p.name
        ));
    };
    let (kind, alias_url) = match kind_alias(&kind_in) {
        Some((_, url)) => (PROTOCOL_OPENAI.to_string(), Some(url)),
        // Claude on Vertex AI is the Vertex protocol (by the model's name).
        None if kind_in == "vertex-anthropic" => ("vertex".to_string(), None),
        None => (kind_in.clone(), None),
    };
    let catalog_id = catalog_id.or_else(|| {
        catalog_for_kind(&kind)
            .filter(|c| inputs.catalog.provider(c).is_some())
            .map(str::to_string)
    });
    let cat = catalog_id
        .as_deref()
        .and_then(|c| inputs.catalog.provider(c));
    if !SUPPORTED_KINDS.contains(&kind.as_str()) {
        let known = [
            "openai",
            "anthropic",
            "gemini",
            "bedrock",
            "azure",
            "cohere",
            "vertex",
            "ollama",
            "vllm",
            "llamacpp",
            "lmstudio",
        ];
        if known.contains(&kind.as_str()) {
            return err(format!("{}: the `{kind}` protocol is not available in this build yet; supported: {} (and every OpenAI-compatible server)", at("kind"), SUPPORTED_KINDS.join(", ")));
        }
        return err(format!(
            "{}: unknown protocol `{kind}`; expected one of {}",
            at("kind"),
            known.join(", ")
        ));
    }
    let given_url = p
        .base_url
        .as_deref()
        .map(|u| interpolate(u, &at("base_url"), env))
        .transpose()?;
    let api_key = optional_setting(p.api_key.as_deref(), &at("api_key"), env)?;
    let aws_fields = [
        ("region", p.region.is_some()),
        ("aws_access_key_id", p.aws_access_key_id.is_some()),
        ("aws_secret_access_key", p.aws_secret_access_key.is_some()),
        ("aws_session_token", p.aws_session_token.is_some()),
    ];
    let google_fields = [
        ("project", p.project.is_some()),
        ("location", p.location.is_some()),
        ("credentials_file", p.credentials_file.is_some()),
    ];
    let only_for = |fields: &[(&str, bool)], owner: &str| match fields.iter().find(|(_, set)| *set)
    {
        Some((field, _)) => err(format!(
            "{}: only for kind = \"{owner}\" (this provider speaks `{kind}`)",
            at(field)
        )),
        None => Ok(()),
    };
    if kind != "bedrock" {
        only_for(&aws_fields, "bedrock")?;
    }
    if kind != "vertex" {
        only_for(&google_fields, "vertex")?;
    }
    let mut google_credentials = None;
    let mut vertex_key_header = None;
    // The URL when the protocol's own settings decide it (Bedrock's region,
    // Vertex AI's project and location), else the given one or a default.
    let (api_key, sigv4, protocol_url) = match kind.as_str() {
        "bedrock" => {
            let auth = bedrock_auth(&p, given_url.as_deref(), api_key, &at, env)?;
            let url = given_url
                .clone()
                .unwrap_or_else(|| polyplex_providers::bedrock::endpoint_for(&auth.region));
            (auth.api_key, auth.sigv4, Some(url))
        }
        "vertex" => {
            let v = vertex_setup(&p, given_url.as_deref(), api_key.is_some(), &at, env)?;
            google_credentials = v.credentials_file;
            vertex_key_header = Some(v.api_key_header);
            (api_key, None, Some(v.base_url))
        }
        _ => (api_key, None, None),
    };
    let base_url = match protocol_url.or(given_url) {
        Some(u) => u,
        None => match alias_url.map(|u| Ok(u.to_string())).or_else(|| {
            cat.and_then(|c| c.base_url.as_deref())
                .map(|u| catalog_url(u, &at("base_url"), env))
        }) {
            Some(u) => u?,
            None => {
                return err(format!(
                    "{}: required for `{}` (no base URL in the catalog)",
                    at("base_url"),
                    p.name
                ))
            }
        },
    };
    valid_base_url(&base_url, &at("base_url"))?;
    let mut headers = Vec::new();
    for (k, v) in &p.headers {
        let v = interpolate(v, &at(&format!("headers.{k}")), env)?;
        if http::HeaderName::try_from(k.as_str()).is_err()
            || http::HeaderValue::try_from(v.as_str()).is_err()
        {
            return err(format!(
                "{}: not a valid HTTP header",
                at(&format!("headers.{k}"))
            ));
        }
        headers.push((k.clone(), v));
    }
    let auth_header = p
        .auth_header
        .clone()
        .unwrap_or_else(|| match vertex_key_header {
            Some(true) => "x-goog-api-key".to_string(),
            _ => default_auth_header(&kind).to_string(),
        })
        .to_ascii_lowercase();
    if http::HeaderName::try_from(auth_header.as_str()).is_err() {
        return err(format!(
            "{}: `{auth_header}` is not a valid header name",
            at("auth_header")
        ));
    }
    let auth_prefix = p.auth_prefix.clone().unwrap_or_else(|| {
        if auth_header == "authorization" {
            "Bearer ".into()
        } else {
            String::new()
        }
    });
    if let Some(models) = &p.models {
        if models.iter().any(String::is_empty) {
            return err(format!("{}: model names must be non-empty", at("models")));
        }
    }
    let mut prices = BTreeMap::new();
    let mut search_unit_prices = BTreeMap::new();
    for (m, rp) in p.prices {
        if rp.input < 0.0 || rp.output < 0.0 || rp.search_unit.is_some_and(|x| x < 0.0) {
            return err(format!(
                "{}: prices must not be negative",
                at(&format!("prices.{m}"))
            ));
        }
        if let Some(x) = rp.search_unit {
            search_unit_prices.insert(m.clone(), x);
        }
        prices.insert(
            m,
            Price {
                input: rp.input,
                output: rp.output,
                cache_read: rp.cache_read,
                cache_write: rp.cache_write,
            },
        );
    }
    let completions = match p.completions.as_deref() {
        None => None,
        Some("chat") => Some(CompletionsVia::Chat),
        Some("native") if [PROTOCOL_OPENAI, "azure"].contains(&kind.as_str()) => {
            Some(CompletionsVia::Native)
        }
        Some("native") => {
            return err(format!(
                "{}: the `{kind}` protocol has no completions endpoint of its own; polyplex serves completions through its chat API",
                at("completions")
            ))
        }
        Some(other) => {
            return err(format!(
                "{}: `{other}` is not one of \"native\", \"chat\"",
                at("completions")
            ))
        }
    };
    let model_limits: BTreeMap<String, (Option<u64>, Option<u64>)> = p
        .model_limits
        .iter()
        .map(|(m, l)| (m.clone(), (l.rpm, l.tpm)))
        .collect();
    let limits = std::iter::once((String::new(), (p.rpm, p.tpm))).chain(
        model_limits
            .iter()
            .map(|(m, l)| (format!("model_limits.{m}."), *l)),
    );
    for (prefix, (rpm, tpm)) in limits {
        for (name, v) in [("rpm", rpm), ("tpm", tpm)] {
            if v == Some(0) {
                return err(format!(
                    "{}: must be at least 1 (leave it out for no limit)",
                    at(&format!("{prefix}{name}"))
                ));
            }
        }
    }
    let ms = Duration::from_millis;
    let timeout = ms(p.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
    if timeout.is_zero() {
        return err(format!("{}: must be greater than 0", at("timeout_ms")));
    }
    Ok(ProviderConfig {
        name: p.name,
        kind,
        base_url,
        api_key: api_key.map(SecretString::from),
        models: p.models,
        catalog_id,
        timeout,
        connect_timeout: ms(p.connect_timeout_ms.unwrap_or(10_000)),
        first_byte_timeout: p.first_byte_timeout_ms.map(ms),
        idle_timeout: ms(p.idle_timeout_ms.unwrap_or(120_000)),
        max_retries: p.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
        weight: p.weight.unwrap_or(1),
        headers,
        rpm: p.rpm,
        tpm: p.tpm,
        model_limits,
        prices,
        search_unit_prices,
        drop_params: p.drop_params,
        auth_header,
        auth_prefix,
        stream_usage: p.stream_usage.unwrap_or(true),
        completions,
        api_version: p.api_version,
        sigv4,
        google_credentials,
    })
}

fn route(r: RawRoute, i: usize, providers: &[ProviderConfig]) -> Result<RouteConfig, ConfigError> {
    let at = |f: &str| format!("routes[{i}].{f}");
    if r.name.is_empty() {
        return err(format!("{}: must not be empty", at("name")));
    }
    if providers
        .iter()
        .any(|p| r.name.starts_with(&format!("{}/", p.name)))
    {
        return err(format!(
            "{}: `{}` would shadow a provider's models",
            at("name"),
            r.name
        ));
    }
    if r.targets.is_empty() {
        return err(format!(
            "{}: a route needs at least one target",
            at("targets")
        ));
    }
    let mut targets = Vec::new();
    for (j, t) in r.targets.iter().enumerate() {
        let Some((prov, model)) = t.split_once('/') else {
            return err(format!(
                "{}: `{t}` must be `provider/model`",
                at(&format!("targets[{j}]"))
            ));
        };
        let Some(pc) = providers.iter().find(|p| p.name == prov) else {
            return err(format!(
                "{}: provider `{prov}` is not configured",
                at(&format!("targets[{j}]"))
            ));
        };
        if let Some(list) = &pc.models {
            if !list.iter().any(|m| m == model) {
                return err(format!(
                    "{}: provider `{prov}` does not list model `{model}`",
                    at(&format!("targets[{j}]"))
                ));
            }
        }
        targets.push((prov.to_string(), model.to_string()));
    }
    let strategy = match r.strategy.as_deref() {
        None => Strategy::Priority,
        Some(s) => Strategy::parse(s).ok_or_else(|| {
            ConfigError(format!(
                "{}: `{s}` is not one of priority, cost, latency, throughput, weighted, least-busy",
                at("strategy")
            ))
        })?,
    };
    let hedge = match (r.hedge_after_ms, r.hedge_after.as_deref()) {
        (Some(_), Some(_)) => {
            return err(format!(
                "{}: set hedge_after_ms or hedge_after, not both",
                at("hedge_after")
            ))
        }
        (Some(ms), None) => Some(Hedge::After(Duration::from_millis(ms))),
        (None, Some("p95")) => Some(Hedge::P95),
        (None, Some(other)) => {
            return err(format!(
                "{}: `{other}` is not supported; use \"p95\" or hedge_after_ms",
                at("hedge_after")
            ))
        }
        (None, None) => None,
    };
    Ok(RouteConfig {
        name: r.name,
        targets,
        strategy,
        hedge,
    })
}

/// The variables a provider's official SDK reads where they are not the
/// catalog's (models.dev's): its key, its URL, its API version.
struct SdkVars {
    key: &'static [&'static str],
    url: &'static [&'static str],
    version: Option<&'static str>,
}

/// [`SdkVars`] of catalog provider `id`: OpenAI's SDK reads Azure's as
/// `AZURE_OPENAI_API_KEY`, `AZURE_OPENAI_ENDPOINT`, `OPENAI_API_VERSION`.
fn sdk_vars(id: &str) -> SdkVars {
    match id {
        "azure" => SdkVars {
            key: &["AZURE_OPENAI_API_KEY"],
            url: &["AZURE_OPENAI_ENDPOINT"],
            version: Some("OPENAI_API_VERSION"),
        },
        _ => SdkVars {
            key: &[],
            url: &[],
            version: None,
        },
    }
}

/// The environment variables that may name a zero-config provider's base
/// URL: `<PREFIX>_BASE_URL` for each of its key variables (`OPENAI_API_KEY` →
/// `OPENAI_BASE_URL`, the name OpenAI's, Anthropic's and Groq's own SDKs
/// read), then one from its id (`OLLAMA_BASE_URL`).
fn base_url_vars(cp: &polyplex_catalog::Provider) -> Vec<String> {
    let mut vars: Vec<String> = Vec::new();
    let from_keys = cp.env.iter().filter_map(|v| {
        ["_API_KEY", "_APIKEY", "_KEY", "_TOKEN"]
            .iter()
            .find_map(|s| v.strip_suffix(s))
    });
    let from_id = cp
        .id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect::<String>();
    for prefix in from_keys.map(str::to_string).chain([from_id]) {
        let var = format!("{prefix}_BASE_URL");
        if !vars.contains(&var) {
            vars.push(var);
        }
    }
    vars
}

/// A zero-config provider's base URL from the environment
/// ([`base_url_vars`]), if one is set: checked to be an http(s) URL (an
/// error names the variable), and skipped with a note when it points at
/// the gateway's own address (an application's `OPENAI_BASE_URL` aimed at
/// polyplex would otherwise send polyplex's requests back to itself).
fn base_url_from_env(
    cp: &polyplex_catalog::Provider,
    env: &dyn Fn(&str) -> Option<String>,
    listen: SocketAddr,
    notes: &mut Vec<String>,
) -> Result<Option<(String, String)>, ConfigError> {
    let sdk_urls = sdk_vars(&cp.id).url.iter().map(|v| v.to_string());
    for var in base_url_vars(cp).into_iter().chain(sdk_urls) {
        let Some(url) = env(&var).filter(|u| !u.trim().is_empty()) else {
            continue;
        };
        let url = url.trim().trim_end_matches('/').to_string();
        valid_base_url(&url, &var)?;
        if points_at(&url, listen) {
            notes.push(format!(
                "{var} ({url}) is this gateway's own address: ignored for provider `{}`",
                cp.id
            ));
            return Ok(None);
        }
        return Ok(Some((var, url)));
    }
    Ok(None)
}

/// Whether `url` (a checked http(s) URL) names the address polyplex listens on.
fn points_at(url: &str, listen: SocketAddr) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    if u.port_or_known_default() != Some(listen.port()) {
        return false;
    }
    let ip = match u.host() {
        Some(url::Host::Domain(d)) => return d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
        None => return false,
    };
    ip.is_loopback() || ip.is_unspecified() || ip == listen.ip() || listen.ip().is_unspecified()
}

/// A catalog base URL with its `${VAR}`s replaced (Databricks' host, Neon's
/// gateway URL); `field` names the setting that would replace it.
fn catalog_url(
    url: &str,
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    interpolate(url, field, env).map_err(|_| {
        ConfigError(format!(
            "{field}: the catalog's base URL {url} needs {} set (or give base_url)",
            missing_vars(url, env).join(", ")
        ))
    })
}

/// The `${VAR}`s in `s` that `env` does not set.
fn missing_vars(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    s.split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(var, _)| var))
        .filter(|var| env(var).is_none())
        .map(str::to_string)
        .collect()
}

/// No file: enable every catalog provider whose key variable is set (at the
/// URL its base-URL variable names, if set) and every self-hosted server whose
/// base-URL variable is set; with none, serve the built-in simulator as
/// provider `demo`.
pub fn zero_config(inputs: &Inputs<'_>) -> Result<Config, ConfigError> {
    let env = inputs.env;
    let listen_s = inputs
        .listen_override
        .clone()
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listen = parse_listen(&listen_s, "listen")?;
    let mut providers = Vec::new();
    let mut notes = Vec::new();
    for cp in &inputs.catalog.providers {
        if cp.local {
            // A self-hosted server is enabled by its base-URL variable
            // (OLLAMA_BASE_URL, VLLM_BASE_URL, LLAMACPP_BASE_URL).
            if let Some((var, url)) = base_url_from_env(cp, env, listen, &mut notes)? {
                notes.push(format!(
                    "enabled provider `{}` ({var} is set): {url}, any model as `{}/<model>`",
                    cp.id, cp.id
                ));
                providers.push(ProviderConfig {
                    catalog_id: Some(cp.id.clone()),
                    ..ProviderConfig::with_defaults(&cp.id, url)
                });
            }
            continue;
        }
        if cp.protocol == "bedrock" {
            // AWS credentials as the AWS SDKs read them from the environment.
            let at = |f: &str| format!("{}.{f}", cp.id);
            let Ok(auth) = bedrock_auth(&RawProvider::default(), None, None, &at, env) else {
                continue;
            };
            let url = polyplex_providers::bedrock::endpoint_for(&auth.region);
            notes.push(format!(
                "enabled provider `{}` ({} is set): {} models from the catalog, {url}",
                cp.id,
                if auth.sigv4.is_some() {
                    "AWS_ACCESS_KEY_ID"
                } else {
                    "AWS_BEARER_TOKEN_BEDROCK"
                },
                cp.models().len()
            ));
            providers.push(ProviderConfig {
                kind: cp.protocol.clone(),
                api_key: auth.api_key.map(SecretString::from),
                sigv4: auth.sigv4,
                catalog_id: Some(cp.id.clone()),
                ..ProviderConfig::with_defaults(&cp.id, url)
            });
            continue;
        }
        if cp.protocol == "vertex" {
            // Google's application default credentials with a project.
            if cp.id != "google-vertex"
                || env("GOOGLE_VERTEX_PROJECT").is_none_or(|p| p.is_empty())
                || env("GOOGLE_APPLICATION_CREDENTIALS").is_none_or(|p| p.is_empty())
            {
                continue;
            }
            let at = |f: &str| format!("{}.{f}", cp.id);
            let v = match vertex_setup(&RawProvider::default(), None, false, &at, env) {
                Ok(v) => v,
                Err(e) => {
                    notes.push(format!("GOOGLE_VERTEX_PROJECT is set but {e}: skipped"));
                    continue;
                }
            };
            notes.push(format!(
                "enabled provider `{}` (GOOGLE_VERTEX_PROJECT and GOOGLE_APPLICATION_CREDENTIALS are set): {} models from the catalog, {}",
                cp.id,
                cp.models().len(),
                v.base_url
            ));
            providers.push(ProviderConfig {
                kind: cp.protocol.clone(),
                google_credentials: v.credentials_file,
                catalog_id: Some(cp.id.clone()),
                ..ProviderConfig::with_defaults(&cp.id, v.base_url)
            });
            continue;
        }
        let Some((var, key)) = cp.api_key_from_env(|v| env(v)).or_else(|| {
            sdk_vars(&cp.id)
                .key
                .iter()
                .find_map(|v| env(v).filter(|k| !k.is_empty()).map(|k| (v.to_string(), k)))
        }) else {
            continue;
        };
        if !SUPPORTED_KINDS.contains(&cp.protocol.as_str()) {
            notes.push(format!("{var} is set but provider `{}` speaks the `{}` protocol, which this build does not support yet: skipped", cp.id, cp.protocol));
            continue;
        }
        // Azure's URL is per resource: <resource>.openai.azure.com from the catalog's resource variable.
        let resource_url = || {
            let var = cp.env.iter().find(|v| v.ends_with("RESOURCE_NAME"))?;
            env(var)
                .filter(|r| !r.is_empty())
                .map(|r| format!("https://{r}.openai.azure.com"))
        };
        let (base_url, url_from) = match base_url_from_env(cp, env, listen, &mut notes)? {
            Some((url_var, url)) => (url, format!(" ({url_var})")),
            None => {
                let field = format!("provider `{}`", cp.id);
                let url = match cp.base_url.as_deref().map(|u| catalog_url(u, &field, env)) {
                    Some(Ok(u)) => Some(u),
                    Some(Err(e)) => {
                        notes.push(format!("{var} is set but {e}: skipped"));
                        continue;
                    }
                    None => resource_url(),
                };
                let Some(u) = url else {
                    notes.push(format!(
                        "{var} is set but provider `{}` needs its base URL (or resource name) too: skipped",
                        cp.id
                    ));
                    continue;
                };
                if let Err(e) = valid_base_url(&u, &field) {
                    notes.push(format!("{var} is set but {e}: skipped"));
                    continue;
                }
                (u, String::new())
            }
        };
        notes.push(format!(
            "enabled provider `{}` ({var} is set): {} models from the catalog, {base_url}{url_from}",
            cp.id,
            cp.models().len()
        ));
        providers.push(ProviderConfig {
            kind: cp.protocol.clone(),
            auth_header: default_auth_header(&cp.protocol).to_string(),
            auth_prefix: if cp.protocol == PROTOCOL_OPENAI {
                "Bearer ".into()
            } else {
                String::new()
            },
            api_key: Some(SecretString::from(key)),
            catalog_id: Some(cp.id.clone()),
            api_version: sdk_vars(&cp.id)
                .version
                .and_then(env)
                .filter(|v| !v.is_empty()),
            ..ProviderConfig::with_defaults(&cp.id, base_url)
        });
    }
    let master_key = env("POLYPLEX_MASTER_KEY")
        .filter(|k| !k.is_empty())
        .map(SecretString::from);
    let demo = providers.is_empty();
    Ok(Config {
        listen,
        master_key,
        store_url: "sqlite://polyplex.db".into(),
        spool: crate::spool::DEFAULT_PATH.into(),
        redis_url: None,
        cache: None,
        batches: BatchesConfig::default(),
        alerts: None,
        max_body_bytes: DEFAULT_MAX_BODY,
        header_timeout: timeout_or_none(None, DEFAULT_HEADER_TIMEOUT_MS),
        body_timeout: timeout_or_none(None, DEFAULT_BODY_TIMEOUT_MS),
        shutdown_grace: Duration::from_secs(30),
        threads: None,
        busy_poll: Duration::from_micros(DEFAULT_BUSY_POLL_US),
        cors_origins: None,
        providers,
        routes: Vec::new(),
        routing: RoutingConfig::default(),
        demo,
        source: "zero-config (no polyplex.toml)".into(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn parse(
        text: &str,
        pairs: &'static [(&'static str, &'static str)],
    ) -> Result<Config, ConfigError> {
        let env = env_of(pairs);
        from_toml(
            text,
            &Inputs {
                env: &env,
                listen_override: None,
                catalog: Catalog::builtin(),
            },
        )
    }

    #[test]
    fn connection_timeouts_default_set_or_off() {
        let base = "[[providers]]\nname = \"openai\"\napi_key = \"k\"\n";
        let c = parse(base, &[]).unwrap();
        let minute = Some(Duration::from_secs(60));
        assert_eq!((c.header_timeout, c.body_timeout), (minute, minute));
        let set = format!("[server]\nheader_timeout_ms = 1500\nbody_timeout_ms = 0\n{base}");
        let c = parse(&set, &[]).unwrap();
        assert_eq!(
            (c.header_timeout, c.body_timeout),
            (Some(Duration::from_millis(1500)), None)
        );
        let e = parse(&format!("[server]\nheader_timeout = 5\n{base}"), &[]).unwrap_err();
        assert!(e.to_string().contains("header_timeout"), "{e}");
    }

    #[test]
    fn product_example_parses() {
        let text = r#"
listen = "127.0.0.1:9000"
[auth]
master_key = "${POLYPLEX_MASTER_KEY}"
[store]
url = "sqlite://polyplex.db"
[redis]
url = "redis://127.0.0.1:6379"
[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key = "${OPENAI_API_KEY}"
models = ["gpt-4o", "gpt-4o-mini"]
timeout_ms = 60000
max_retries = 2
[[providers]]
name = "groq"
api_key = "${GROQ_API_KEY}"
[[routes]]
name = "smart"
targets = ["openai/gpt-4o", "groq/llama-3.3-70b-versatile"]
strategy = "priority"
"#;
        let c = parse(
            text,
            &[
                ("POLYPLEX_MASTER_KEY", "master-123456"),
                ("OPENAI_API_KEY", "sk-1"),
                ("GROQ_API_KEY", "gsk-2"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(
            c.master_key.as_ref().unwrap().expose_secret(),
            "master-123456"
        );
        assert_eq!(c.providers.len(), 2);
        assert_eq!(c.providers[0].timeout, Duration::from_secs(60));
        // groq's kind and base URL come from the catalog.
        assert_eq!(c.providers[1].kind, "openai");
        assert_eq!(c.providers[1].base_url, "https://api.groq.com/openai/v1");
        assert_eq!(
            c.routes[0].targets[1],
            ("groq".to_string(), "llama-3.3-70b-versatile".to_string())
        );
        assert!(!c.demo);
        // Secrets do not show in Debug output.
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("sk-1") && !dbg.contains("master-123456"),
            "{dbg}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse("listen = \"127.0.0.1:1\"\n\n[[providers]]\nname = \"x\"\nkind = \"openai\"\nbase_url = \"http://h/v1\"\nmodles = [\"a\"]\n", &[]).unwrap_err();
        assert!(e.0.contains("modles"), "{e}");
        assert!(e.0.contains("line 7"), "{e}");
        let e = parse("lisen = \"x\"\n", &[]).unwrap_err();
        assert!(e.0.contains("lisen") && e.0.contains("line 1"), "{e}");
    }

    #[test]
    fn batches_settings_are_read_and_checked() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c.batches, BatchesConfig::default());
        let c = parse("[batches]\nconcurrency = 3\nmax_file_bytes = 1024\n", &[]).unwrap();
        assert_eq!((c.batches.concurrency, c.batches.max_file_bytes), (3, 1024));
        for bad in [
            "concurrency = 0",
            "concurrency = 2000",
            "max_file_bytes = 0",
            "workers = 2",
        ] {
            let e = parse(&format!("[batches]\n{bad}\n"), &[]).unwrap_err();
            assert!(e.0.contains("batches") || e.0.contains("workers"), "{e}");
        }
    }

    #[test]
    fn a_bad_redis_url_is_named_without_its_password() {
        let e = parse(
            "[redis]\nurl = \"http://user:${REDIS_PASS}@127.0.0.1:6379\"\n",
            &[("REDIS_PASS", "hunter2-secret")],
        )
        .unwrap_err();
        assert!(e.0.contains("redis.url") && e.0.contains("redis://"), "{e}");
        assert!(!e.0.contains("hunter2-secret"), "{e}");
    }

    #[test]
    fn missing_env_var_names_field_and_variable() {
        let e = parse(
            "[[providers]]\nname = \"openai\"\napi_key = \"${NOPE_KEY}\"\n",
            &[],
        )
        .unwrap_err();
        assert!(
            e.0.contains("providers[0].api_key") && e.0.contains("NOPE_KEY"),
            "{e}"
        );
    }

    #[test]
    fn interpolation_rules() {
        let env = env_of(&[("A", "1"), ("B", "two")]);
        assert_eq!(interpolate("x${A}y${B}", "f", &env).unwrap(), "x1ytwo");
        assert_eq!(interpolate("plain", "f", &env).unwrap(), "plain");
        assert!(interpolate("${A", "f", &env).is_err());
        assert!(interpolate("${}", "f", &env).is_err());
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("[[providers]]\nname = \"mine\"\n", "providers[0].kind"),
            ("[[providers]]\nname = \"mine\"\nkind = \"openai\"\n", "providers[0].base_url"),
            ("[[providers]]\nname = \"mine\"\nkind = \"openai\"\nbase_url = \"ftp://x\"\n", "providers[0].base_url"),
            ("[[providers]]\nname = \"mine\"\nkind = \"martian\"\nbase_url = \"http://x\"\n", "providers[0].kind"),
            ("[[providers]]\nname = \"openai\"\n[[providers]]\nname = \"openai\"\n", "used twice"),
            ("[[providers]]\nname = \"openai\"\n[[routes]]\nname = \"r\"\ntargets = [\"nope/x\"]\n", "routes[0].targets[0]"),
            ("[[providers]]\nname = \"openai\"\n[[routes]]\nname = \"r\"\ntargets = [\"openai/gpt-4o\"]\nstrategy = \"random\"\n", "routes[0].strategy"),
            ("listen = \"nowhere\"\n", "listen"),
            ("[store]\nurl = \"mysql://x\"\n", "store.url"),
            ("[auth]\nmaster_key = \"short\"\n", "auth.master_key"),
            ("[server]\nthreads = 0\n", "server.threads"),
            ("[server]\nthreads = 5000\n", "server.threads"),
            ("[server]\nbusy_poll_us = 5000000\n", "server.busy_poll_us"),
            ("[server]\nbusy_poll_us = -1\n", "busy_poll_us"),
            ("[[providers]]\nname = \"openai\"\ncompletions = \"legacy\"\n", "providers[0].completions"),
            ("[[providers]]\nname = \"anthropic\"\ncompletions = \"native\"\n", "providers[0].completions"),
            ("[[providers]]\nname = \"openai\"\nrpm = 0\n", "providers[0].rpm"),
            ("[[providers]]\nname = \"openai\"\ntpm = 0\n", "providers[0].tpm"),
            ("[[providers]]\nname = \"openai\"\nmodel_limits.gpt-4o = { rpm = 0 }\n", "providers[0].model_limits.gpt-4o.rpm"),
            ("[[providers]]\nname = \"openai\"\nmodel_limits.gpt-4o = { rpd = 5 }\n", "rpd"),
        ];
        for (text, want) in cases {
            let e = parse(text, &[]).unwrap_err();
            assert!(e.0.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn completions_setting() {
        let c = parse(
            "[[providers]]\nname = \"local\"\nkind = \"vllm\"\ncompletions = \"chat\"\n[[providers]]\nname = \"openai\"\ncompletions = \"native\"\n[[providers]]\nname = \"groq\"\n",
            &[],
        )
        .unwrap();
        let got: Vec<_> = c.providers.iter().map(|p| p.completions).collect();
        assert_eq!(
            got,
            [
                Some(CompletionsVia::Chat),
                Some(CompletionsVia::Native),
                None
            ]
        );
    }

    #[test]
    fn self_hosted_aliases() {
        let c = parse("[[providers]]\nname = \"local\"\nkind = \"ollama\"\n", &[]).unwrap();
        assert_eq!(c.providers[0].kind, "openai");
        assert_eq!(c.providers[0].base_url, "http://127.0.0.1:11434/v1");
        assert!(c.providers[0].api_key.is_none());
    }

    #[test]
    fn a_provider_called_by_its_common_name_is_the_catalogs() {
        // `gemini` is the catalog's `google` (AI Studio): its protocol, URL
        // and models; the provider keeps its name.
        let c = parse(
            "[[providers]]\nname = \"gemini\"\napi_key = \"${GEMINI_API_KEY}\"\n",
            &[("GEMINI_API_KEY", "g-key")],
        )
        .unwrap();
        let p = &c.providers[0];
        assert_eq!((p.name.as_str(), p.kind.as_str()), ("gemini", "gemini"));
        assert_eq!(p.catalog_id.as_deref(), Some("google"));
        assert_eq!(p.base_url, "https://generativelanguage.googleapis.com");
        let c = parse("[[providers]]\nname = \"together\"\napi_key = \"k\"\n", &[]).unwrap();
        assert_eq!(c.providers[0].catalog_id.as_deref(), Some("togetherai"));
        assert_eq!(c.providers[0].base_url, "https://api.together.xyz/v1");
        // A server of another protocol that happens to be called so is not it.
        let c = parse(
            "[[providers]]\nname = \"gemini\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.providers[0].catalog_id, None);
        // `catalog` takes the common names too.
        let c = parse(
            "[[providers]]\nname = \"g\"\ncatalog = \"gemini\"\napi_key = \"k\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.providers[0].catalog_id.as_deref(), Some("google"));
    }

    #[test]
    fn listen_override_wins() {
        let env = env_of(&[]);
        let c = from_toml(
            "listen = \"127.0.0.1:1\"\n",
            &Inputs {
                env: &env,
                listen_override: Some("127.0.0.1:2".into()),
                catalog: Catalog::builtin(),
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 2);
        assert!(c.demo);
    }

    #[test]
    fn bedrock_credentials_region_and_url() {
        // An API key: bearer; the region from the environment makes the URL.
        let c = parse(
            "[[providers]]\nname = \"bedrock\"\nkind = \"bedrock\"\napi_key = \"${AWS_BEARER_TOKEN_BEDROCK}\"\n",
            &[("AWS_BEARER_TOKEN_BEDROCK", "bedrock-key"), ("AWS_REGION", "eu-west-3")],
        )
        .unwrap();
        let p = &c.providers[0];
        assert_eq!(
            p.base_url,
            "https://bedrock-runtime.eu-west-3.amazonaws.com"
        );
        assert_eq!(p.api_key.as_ref().unwrap().expose_secret(), "bedrock-key");
        assert!(p.sigv4.is_none());
        assert_eq!(
            (p.auth_header.as_str(), p.auth_prefix.as_str()),
            ("authorization", "Bearer ")
        );
        // Named `bedrock`, it still gets the catalog's models and prices.
        assert_eq!(p.catalog_id.as_deref(), Some("amazon-bedrock"));
        // Access keys: SigV4, region from the setting; no API key is sent.
        let c = parse(
            "[[providers]]\nname = \"aws\"\nkind = \"bedrock\"\nregion = \"us-west-2\"\naws_access_key_id = \"${ID}\"\naws_secret_access_key = \"${SECRET}\"\n",
            &[("ID", "AKID"), ("SECRET", "s3cret"), ("AWS_REGION", "eu-west-3")],
        )
        .unwrap();
        let p = &c.providers[0];
        assert_eq!(
            p.base_url,
            "https://bedrock-runtime.us-west-2.amazonaws.com"
        );
        assert!(p.api_key.is_none());
        assert_eq!(p.sigv4.as_ref().unwrap().region, "us-west-2");
        assert!(!format!("{c:?}").contains("s3cret"));
        // A given base_url names the region; the environment's keys sign.
        let c = parse(
            "[[providers]]\nname = \"aws\"\nkind = \"bedrock\"\nbase_url = \"https://bedrock-runtime.ap-south-1.amazonaws.com\"\n",
            &[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_REGION", "eu-west-3")],
        )
        .unwrap();
        assert_eq!(c.providers[0].sigv4.as_ref().unwrap().region, "ap-south-1");
        // A mock or proxy URL: the region from the environment, else us-east-1.
        let c = parse(
            "[[providers]]\nname = \"aws\"\nkind = \"bedrock\"\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"k\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.providers[0].base_url, "http://127.0.0.1:9");
        // Errors name the setting.
        let e = parse("[[providers]]\nname = \"aws\"\nkind = \"bedrock\"\n", &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("providers[0].api_key: Bedrock needs credentials"),
            "{e}"
        );
        let e = parse(
            "[[providers]]\nname = \"aws\"\nkind = \"bedrock\"\naws_access_key_id = \"A\"\n",
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("providers[0].aws_secret_access_key: required"),
            "{e}"
        );
        let e = parse("[[providers]]\nname = \"aws\"\nkind = \"bedrock\"\napi_key = \"k\"\nregion = \"US East\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("providers[0].region"), "{e}");
        let e = parse("[[providers]]\nname = \"x\"\nkind = \"openai\"\nbase_url = \"http://h/v1\"\nregion = \"us-east-1\"\n", &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("providers[0].region: only for kind = \"bedrock\""),
            "{e}"
        );
        let e = parse("[[providers]]\nname = \"x\"\nkind = \"bedrock\"\napi_key = \"k\"\naws_access_key_id = \"A\"\naws_secret_access_key = \"B\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }

    fn service_account(project: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let pem = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/test-only-rsa-key.pem"),
        )
        .unwrap();
        let key = serde_json::json!({"type": "service_account", "project_id": project, "private_key": pem,
            "client_email": "x@p.iam.gserviceaccount.com", "token_uri": "https://oauth2.googleapis.com/token"});
        let path = dir.path().join("sa.json");
        std::fs::write(&path, key.to_string()).unwrap();
        let p = path.display().to_string();
        (dir, p)
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    #[test]
    fn vertex_project_location_and_credentials() {
        let (_dir, sa) = service_account("proj-from-file");
        let sa = leak(sa);
        // The key file names the project; the location defaults to global.
        let text =
            "[[providers]]\nname = \"vertex\"\nkind = \"vertex\"\ncredentials_file = \"${SA}\"\n";
        let c = parse(text, leak_pairs(vec![("SA", sa)])).unwrap();
        let p = &c.providers[0];
        assert_eq!(
            p.base_url,
            "https://aiplatform.googleapis.com/v1/projects/proj-from-file/locations/global"
        );
        assert_eq!(p.google_credentials.as_deref(), Some(Path::new(sa)));
        assert_eq!(
            (p.auth_header.as_str(), p.auth_prefix.as_str()),
            ("authorization", "Bearer ")
        );
        assert_eq!(p.catalog_id.as_deref(), Some("google-vertex"));
        // Settings and variables win over the file; a regional host.
        let text = "[[providers]]\nname = \"v\"\nkind = \"vertex-anthropic\"\nproject = \"p2\"\n";
        let c = parse(
            text,
            leak_pairs(vec![
                ("GOOGLE_APPLICATION_CREDENTIALS", sa),
                ("GOOGLE_CLOUD_LOCATION", "us-east5"),
            ]),
        )
        .unwrap();
        let p = &c.providers[0];
        assert_eq!(p.kind, "vertex");
        assert_eq!(
            p.base_url,
            "https://us-east5-aiplatform.googleapis.com/v1/projects/p2/locations/us-east5"
        );
        // A bare host gets the project's path (or express mode's).
        let c = parse("[[providers]]\nname = \"v\"\nkind = \"vertex\"\nbase_url = \"http://127.0.0.1:9/\"\nproject = \"p3\"\nlocation = \"europe-west4\"\n", leak_pairs(vec![("GOOGLE_APPLICATION_CREDENTIALS", sa)])).unwrap();
        assert_eq!(
            c.providers[0].base_url,
            "http://127.0.0.1:9/v1/projects/p3/locations/europe-west4"
        );
        let c = parse("[[providers]]\nname = \"v\"\nkind = \"vertex\"\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"k\"\n", &[]).unwrap();
        assert_eq!(c.providers[0].base_url, "http://127.0.0.1:9/v1");
        // Express mode: an API key, no project.
        let c = parse(
            "[[providers]]\nname = \"v\"\nkind = \"vertex\"\napi_key = \"k\"\n",
            &[],
        )
        .unwrap();
        let p = &c.providers[0];
        assert_eq!(p.base_url, "https://aiplatform.googleapis.com/v1");
        assert_eq!(
            (p.auth_header.as_str(), p.auth_prefix.as_str()),
            ("x-goog-api-key", "")
        );
        assert!(p.google_credentials.is_none());
        // Errors name the setting.
        let e = parse("[[providers]]\nname = \"v\"\nkind = \"vertex\"\n", &[]).unwrap_err();
        assert!(
            e.to_string().contains("providers[0].project: required"),
            "{e}"
        );
        let e = parse("[[providers]]\nname = \"v\"\nkind = \"vertex\"\nproject = \"p\"\ncredentials_file = \"/nonexistent/sa.json\"\n", &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("providers[0].credentials_file: cannot read /nonexistent/sa.json"),
            "{e}"
        );
        let e = parse(
            "[[providers]]\nname = \"v\"\nkind = \"vertex\"\nproject = \"p\"\n",
            &[("GOOGLE_APPLICATION_CREDENTIALS", "/etc/hostname")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("GOOGLE_APPLICATION_CREDENTIALS: /etc/hostname is not a Google service-account key file"), "{e}");
        let e = parse(
            "[[providers]]\nname = \"v\"\nkind = \"vertex\"\nproject = \"a/b\"\napi_key = \"k\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("providers[0].project"), "{e}");
        let e = parse("[[providers]]\nname = \"x\"\nkind = \"openai\"\nbase_url = \"http://h/v1\"\nproject = \"p\"\n", &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("providers[0].project: only for kind = \"vertex\""),
            "{e}"
        );
        // Zero-config: a project and a key file enable google-vertex.
        let env = env_of(leak_pairs(vec![
            ("GOOGLE_VERTEX_PROJECT", "zp"),
            ("GOOGLE_APPLICATION_CREDENTIALS", sa),
        ]));
        let c = zero(&env);
        let p = c
            .providers
            .iter()
            .find(|p| p.name == "google-vertex")
            .unwrap();
        assert_eq!(
            p.base_url,
            "https://aiplatform.googleapis.com/v1/projects/zp/locations/global"
        );
        assert!(!c
            .providers
            .iter()
            .any(|p| p.name == "google-vertex-anthropic"));
    }

    fn zero(env: &dyn Fn(&str) -> Option<String>) -> Config {
        zero_config(&Inputs {
            env,
            listen_override: None,
            catalog: Catalog::builtin(),
        })
        .unwrap()
    }

    fn leak_pairs(v: Vec<(&'static str, &'static str)>) -> &'static [(&'static str, &'static str)] {
        Box::leak(v.into_boxed_slice())
    }

    #[test]
    fn zero_config_enables_bedrock_from_aws_variables() {
        let env = env_of(&[
            ("AWS_BEARER_TOKEN_BEDROCK", "bk"),
            ("AWS_REGION", "us-west-2"),
        ]);
        let c = zero(&env);
        let p = c
            .providers
            .iter()
            .find(|p| p.name == "amazon-bedrock")
            .unwrap();
        assert_eq!(p.kind, "bedrock");
        assert_eq!(
            p.base_url,
            "https://bedrock-runtime.us-west-2.amazonaws.com"
        );
        assert_eq!(p.api_key.as_ref().unwrap().expose_secret(), "bk");
        let env = env_of(&[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "B")]);
        let c = zero(&env);
        let p = c
            .providers
            .iter()
            .find(|p| p.name == "amazon-bedrock")
            .unwrap();
        assert!(p.api_key.is_none() && p.sigv4.is_some());
        assert_eq!(
            p.base_url,
            "https://bedrock-runtime.us-east-1.amazonaws.com"
        );
        // An access key id alone enables nothing.
        let env = env_of(&[("AWS_ACCESS_KEY_ID", "A")]);
        let c = zero(&env);
        assert!(c.demo);
    }

    #[test]
    fn zero_config_reads_base_urls_from_the_environment() {
        // The variable the provider's own SDK reads.
        let env = env_of(&[
            ("OPENAI_API_KEY", "sk"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9999/v1/"),
            ("ANTHROPIC_API_KEY", "sk-ant"),
        ]);
        let c = zero(&env);
        let url = |name: &str| {
            c.providers
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.base_url.clone())
        };
        assert_eq!(url("openai").as_deref(), Some("http://127.0.0.1:9999/v1"));
        assert_eq!(
            url("anthropic").as_deref(),
            Some("https://api.anthropic.com")
        );
        assert!(c.notes.iter().any(|n| n.contains("OPENAI_BASE_URL")));
        // Aimed at the gateway itself: ignored, the catalog's URL kept.
        for own in [
            "http://127.0.0.1:8484/v1",
            "http://localhost:8484/v1",
            "http://[::1]:8484/v1",
        ] {
            let env = move |k: &str| match k {
                "OPENAI_API_KEY" => Some("sk".to_string()),
                "OPENAI_BASE_URL" => Some(own.to_string()),
                _ => None,
            };
            let c = zero(&env);
            assert_eq!(c.providers[0].base_url, "https://api.openai.com/v1");
            assert!(
                c.notes.iter().any(|n| n.contains("own address")),
                "{:?}",
                c.notes
            );
        }
        // Not a URL: an error naming the variable.
        let env = env_of(&[("OPENAI_API_KEY", "sk"), ("OPENAI_BASE_URL", "api.example")]);
        let e = zero_config(&Inputs {
            env: &env,
            listen_override: None,
            catalog: Catalog::builtin(),
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("OPENAI_BASE_URL: "), "{e}");
        // Azure under the names OpenAI's own SDK reads for it.
        let env = env_of(&[
            ("AZURE_OPENAI_API_KEY", "az-key"),
            ("AZURE_OPENAI_ENDPOINT", "https://res1.openai.azure.com/"),
            ("OPENAI_API_VERSION", "2024-10-21"),
        ]);
        let c = zero(&env);
        let p = c.providers.iter().find(|p| p.name == "azure").unwrap();
        assert_eq!(p.base_url, "https://res1.openai.azure.com");
        assert_eq!(p.api_key.as_ref().unwrap().expose_secret(), "az-key");
        assert_eq!(p.api_version.as_deref(), Some("2024-10-21"));
        // A self-hosted server is enabled by its base URL alone.
        let env = env_of(&[("OLLAMA_BASE_URL", "http://127.0.0.1:11434/v1")]);
        let c = zero(&env);
        assert!(!c.demo);
        assert_eq!(c.providers[0].name, "ollama");
        assert_eq!(c.providers[0].base_url, "http://127.0.0.1:11434/v1");
        assert!(c.providers[0].api_key.is_none());
    }

    #[test]
    fn catalog_base_urls_take_their_variables() {
        // Databricks' catalog URL names its host variable.
        let env = env_of(&[("DATABRICKS_TOKEN", "dt")]);
        let c = zero(&env);
        assert!(c.providers.iter().all(|p| p.name != "databricks"));
        assert!(
            c.notes.iter().any(|n| n.contains("databricks")
                && n.contains("DATABRICKS_HOST")
                && n.contains("skipped")),
            "{:?}",
            c.notes
        );
        let env = env_of(&[
            ("DATABRICKS_TOKEN", "dt"),
            ("DATABRICKS_HOST", "adb-1.azuredatabricks.net"),
        ]);
        let c = zero(&env);
        let p = c.providers.iter().find(|p| p.name == "databricks").unwrap();
        assert_eq!(
            p.base_url,
            "https://adb-1.azuredatabricks.net/ai-gateway/mlflow/v1"
        );
        // In a file, without base_url: an error naming the variable.
        let toml = "[[providers]]\nname = \"databricks\"\napi_key = \"k\"\n";
        let e = parse(toml, &[]).unwrap_err().to_string();
        assert!(
            e.contains("providers[0].base_url") && e.contains("DATABRICKS_HOST"),
            "{e}"
        );
        let c = parse(toml, &[("DATABRICKS_HOST", "h.example")]).unwrap();
        assert_eq!(
            c.providers[0].base_url,
            "https://h.example/ai-gateway/mlflow/v1"
        );
    }

    #[test]
    fn zero_config_enables_providers_with_keys() {
        let env = env_of(&[
            ("GROQ_API_KEY", "gsk"),
            ("ANTHROPIC_API_KEY", "sk-ant"),
            ("WATSONX_AI_APIKEY", "w"),
            ("MISTRAL_API_KEY", ""),
        ]);
        let c = zero(&env);
        let names: Vec<_> = c.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["anthropic", "groq"]);
        assert!(!c.demo);
        // Each protocol's own auth header.
        assert_eq!(
            (
                c.providers[0].auth_header.as_str(),
                c.providers[0].auth_prefix.as_str()
            ),
            ("x-api-key", "")
        );
        assert_eq!(
            (
                c.providers[1].auth_header.as_str(),
                c.providers[1].auth_prefix.as_str()
            ),
            ("authorization", "Bearer ")
        );
        assert!(c
            .notes
            .iter()
            .any(|n| n.contains("watsonx") && n.contains("skipped")));
        let none = env_of(&[]);
        let c = zero_config(&Inputs {
            env: &none,
            listen_override: None,
            catalog: Catalog::builtin(),
        })
        .unwrap();
        assert!(c.demo && c.providers.is_empty());
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    }
}
