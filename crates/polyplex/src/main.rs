//! The `polyplex` command.

use clap::{Parser, Subcommand};
use polyplex::config::{self, Config, Inputs};
use polyplex::mock::{self, MockOptions};
use polyplex_catalog::Catalog;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// `println!` for a command's output: a reader that went away (`polyplex
/// models | head`) ends the command quietly, as Unix tools do, where
/// `println!` would panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            output_failed(&e)
        }
    }};
}

fn output_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write the output: {e}");
    std::process::exit(1)
}

#[derive(Parser)]
#[command(
    name = "polyplex",
    version,
    about = "One OpenAI-compatible endpoint for every LLM provider"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file (default: ./polyplex.toml if present, else zero-config).
        #[arg(long, env = "POLYPLEX_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8484).
        #[arg(long, env = "POLYPLEX_LISTEN")]
        listen: Option<String>,
    },
    /// Run the upstream simulator: a test double that speaks the providers'
    /// wire protocols (OpenAI, Anthropic, Gemini, Vertex AI, Bedrock, Azure,
    /// Cohere), streaming, tool calls, usage and faults on demand.
    Mock {
        #[arg(long, default_value = "127.0.0.1:8485")]
        listen: SocketAddr,
        /// Time to first byte of every reply, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Streaming pace in tokens per second (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        tokens_per_s: f64,
    },
    /// Show the catalog: models, providers, prices, context windows, capabilities.
    Models {
        /// Only this provider's models.
        #[arg(long)]
        provider: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and report which providers are reachable.
    Check {
        #[arg(long, env = "POLYPLEX_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Manage gateway keys (in the store the server uses).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        /// Config file naming the store (default: ./polyplex.toml if present, else ./polyplex.db).
        #[arg(long, env = "POLYPLEX_CONFIG", global = true)]
        config: Option<PathBuf>,
    },
    /// The catalog's source: `polyplex catalog update` replaces the one
    /// compiled in with a newer one from models.dev, a URL or a file.
    Catalog {
        #[command(subcommand)]
        action: CatalogAction,
    },
    /// Spend and token report from the store (or, with --records, the
    /// usage records themselves).
    Usage {
        /// Since when: a date (YYYY-MM-DD), an RFC 3339 time, Unix seconds or a duration back (`24h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        /// Until when (not included), as --since takes it.
        #[arg(long)]
        until: Option<String>,
        /// List the usage records, newest first, instead of a report.
        #[arg(long)]
        records: bool,
        /// With --records: how many (1 to 1000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// The records of one request (its `x-request-id`).
        #[arg(long)]
        request: Option<String>,
        /// Group by key, model, provider, endpoint, day, hour, user (the end user a request
        /// named with `user`) or metadata.<key> (the value its metadata gave
        /// that key).
        #[arg(long, default_value = "model")]
        by: String,
        /// Only this key's requests (its id, `key_...`).
        #[arg(long)]
        key: Option<String>,
        /// Only requests whose metadata gives KEY this VALUE (repeatable:
        /// each must hold).
        #[arg(long, value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// JSON output (the admin API's shape).
        #[arg(long)]
        json: bool,
        #[arg(long, env = "POLYPLEX_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CatalogAction {
    /// Fetch a catalog and keep it beside the config (`polyplex-catalog.json`,
    /// or the file `POLYPLEX_CATALOG` names), where `serve`, `models` and
    /// `check` read it from then on instead of the compiled-in one.
    Update {
        /// A URL or file: models.dev's JSON (`https://models.dev/api.json`,
        /// the default) or a catalog in polyplex's own format.
        #[arg(default_value = polyplex::catalog::MODELS_DEV_URL)]
        source: String,
        /// The config file the catalog goes beside (default: ./polyplex.toml's directory, the working directory).
        #[arg(long, env = "POLYPLEX_CONFIG")]
        config: Option<PathBuf>,
    },
}

// Parsed once per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum KeysAction {
    /// Create a key; it is printed once and never again.
    Create {
        /// The key's name (or `--name`).
        #[arg(value_name = "NAME", conflicts_with = "name")]
        name_arg: Option<String>,
        #[arg(long, required_unless_present = "name_arg")]
        name: Option<String>,
        /// Models the key may use (comma-separated or repeated; `provider/*` allowed). Default: every model.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Requests in progress at once.
        #[arg(long)]
        max_concurrent: Option<u64>,
        /// Requests per minute each end user of the key (`user`,
        /// `safety_identifier`) may make.
        #[arg(long)]
        user_rpm: Option<u64>,
        /// Tokens per minute each end user of the key may use.
        #[arg(long)]
        user_tpm: Option<u64>,
        /// What each end user of the key may spend, in USD (per period with
        /// --budget-reset).
        #[arg(long)]
        user_budget_usd: Option<f64>,
        /// Budget in USD.
        #[arg(long)]
        budget_usd: Option<f64>,
        /// The budget starts again every `daily`, `weekly` (Monday) or `monthly` period (UTC). Default: never.
        #[arg(long, value_parser = ["daily", "weekly", "monthly"])]
        budget_reset: Option<String>,
        /// Expiry: a date, an RFC 3339 time, Unix seconds or a duration from now (`30d`).
        #[arg(long)]
        expires_at: Option<String>,
        /// Metadata every request of the key is tagged with in its usage
        /// record (repeatable; over a request's own pairs).
        #[arg(long, value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// JSON output (the admin API's shape, with the key).
        #[arg(long)]
        json: bool,
    },
    /// List the keys (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id (a running gateway stops taking it within seconds).
    Revoke {
        /// The key's id (`key_...`), or the key itself (`plx-...`).
        id: String,
    },
    /// Change a key's settings: those given, `none` clearing one (a
    /// running gateway takes the change within seconds).
    Update {
        /// The key's id (`key_...`), or the key itself (`plx-...`).
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Models the key may use (comma-separated); `none`: every model.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Requests per minute, or `none`.
        #[arg(long)]
        rpm: Option<String>,
        /// Tokens per minute, or `none`.
        #[arg(long)]
        tpm: Option<String>,
        /// Requests in progress at once, or `none`.
        #[arg(long)]
        max_concurrent: Option<String>,
        /// Requests per minute each end user may make, or `none`.
        #[arg(long)]
        user_rpm: Option<String>,
        /// Tokens per minute each end user may use, or `none`.
        #[arg(long)]
        user_tpm: Option<String>,
        /// What each end user may spend, in USD, or `none`.
        #[arg(long)]
        user_budget_usd: Option<String>,
        /// Budget in USD, or `none`.
        #[arg(long)]
        budget_usd: Option<String>,
        /// `daily`, `weekly`, `monthly`, or `none` (never starts again).
        #[arg(long, value_parser = ["daily", "weekly", "monthly", "none"])]
        budget_reset: Option<String>,
        /// Expiry (as `create` takes it), or `none`.
        #[arg(long)]
        expires_at: Option<String>,
        /// Metadata pairs in place of the key's (repeatable); `none` clears them.
        #[arg(long, value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// JSON output (the admin API's shape).
        #[arg(long)]
        json: bool,
    },
}

fn env_get(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn load(config: Option<&PathBuf>, listen: Option<String>) -> Result<Config, String> {
    let inputs = Inputs {
        env: &env_get,
        listen_override: listen,
        catalog: Catalog::builtin(),
    };
    config::load(config.map(PathBuf::as_path), &inputs).map_err(|e| e.to_string())
}

/// mimalloc's arenas are eligible for transparent huge pages, which count
/// 2 MiB for every touched arena chunk in RSS (idle RSS 26 MiB instead of
/// 14). A gateway's heap is small and short-lived, so polyplex turns THP off
/// for itself. The flag only affects later page faults and the allocator has
/// already faulted its first arena before `main`, so the process sets it and
/// re-executes itself once (the flag survives `execve`; the pid stays).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::prctl;
        use std::os::unix::process::CommandExt;
        if prctl::get_thp_disable().unwrap_or(true) || prctl::set_thp_disable(true).is_err() {
            return;
        }
        if std::env::var_os("POLYPLEX_NO_REEXEC").is_some() {
            return;
        }
        if let Ok(exe) = std::env::current_exe() {
            let mut args = std::env::args_os();
            let argv0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
            // Only returns if the exec failed; then carry on as we are.
            let _ = std::process::Command::new(&exe)
                .arg0(argv0)
                .args(args)
                .env("POLYPLEX_NO_REEXEC", "1")
                .exec();
        }
    }
}

/// mimalloc: fewer instructions per allocation than glibc's malloc on the
/// hot path and no per-thread arena growth (see docs/performance.md). It
/// replaces `malloc` and `free` themselves (the crate's `override` feature)
/// and Rust's default allocator calls those. Through `MiMalloc` as the global
/// allocator every allocation went to `mi_malloc_aligned`, whose fast path
/// ends at 1 KiB: the request path's dozen larger buffers took its slow,
/// over-allocating path (2,700 instructions a request).
use mimalloc as _;

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, Command::Serve { .. }) {
        // `serve` answers requests on its own serving threads (see
        // `polyplex::start_threads`); this runtime keeps the usage writer,
        // signals and the demo simulator.
        builder.worker_threads(1);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A catalog fetched by `polyplex catalog update` replaces the compiled-in
    // one for every command, before anything reads it.
    // (Some: the command reads the catalog, beside this config if any.)
    let reads_catalog = match &cli.command {
        Command::Serve { config, .. }
        | Command::Check { config }
        | Command::Keys { config, .. }
        | Command::Usage { config, .. } => Some(config.clone()),
        Command::Models { .. } => Some(None),
        Command::Mock { .. } | Command::Catalog { .. } => None,
    };
    if let Some(config) = reads_catalog {
        if let Err(e) = polyplex::catalog::install_saved(config.as_deref()) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Serve { config, listen } => rt.block_on(serve(config, listen)),
        Command::Catalog {
            action: CatalogAction::Update { source, config },
        } => rt.block_on(polyplex::catalog::update(&source, config.as_deref())),
        Command::Mock {
            listen,
            latency_ms,
            tokens_per_s,
        } => rt.block_on(run_mock(
            listen,
            MockOptions {
                latency_ms,
                tokens_per_s,
            },
        )),
        Command::Models { provider, json } => models(provider.as_deref(), json),
        Command::Check { config } => return rt.block_on(check(config)),
        Command::Keys { action, config } => rt.block_on(keys_cmd(config, action)),
        Command::Usage {
            since,
            until,
            records,
            limit,
            request,
            by,
            key,
            metadata,
            json,
            config,
        } => {
            spool_note(config.as_ref());
            let pick = UsagePick {
                since,
                until,
                key,
                metadata,
                json,
            };
            if records || request.is_some() {
                rt.block_on(records_cmd(config, pick, limit, request))
            } else {
                rt.block_on(usage_cmd(config, pick, by))
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Reloads the configuration file at every `SIGHUP` (see
/// `polyplex::reload`; the log says what changed or why nothing did). A
/// weak reference: the state ends at shutdown, whose usage writer waits
/// for every holder of it.
async fn reload_on_hangup(app: std::sync::Weak<polyplex::server::AppState>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let Some(app) = app.upgrade() else { return };
            tracing::info!("SIGHUP: reloading the configuration");
            let _ = polyplex::reload::reload(&app).await;
        }
    }
    #[cfg(not(unix))]
    drop(app);
}

async fn serve(config: Option<PathBuf>, listen: Option<String>) -> Result<(), String> {
    polyplex::telemetry::init_logging();
    if let Some(note) = polyplex::catalog::note() {
        tracing::info!("{note}");
    }
    // The file a reload reads again (none in zero-config).
    let file = config
        .clone()
        .or_else(|| Some(PathBuf::from("polyplex.toml")).filter(|p| p.exists()));
    let cfg = load(file.as_ref(), listen.clone())?;
    tracing::info!(source = %cfg.source, "configuration loaded");
    for n in &cfg.notes {
        tracing::info!("{n}");
    }
    if cfg.master_key.is_none() {
        tracing::warn!("no master key set: serving without authentication, on loopback only (set [auth] master_key or POLYPLEX_MASTER_KEY)");
    }
    let threads = cfg.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let running = polyplex::start_threads(&cfg, threads).await?;
    if cfg.demo {
        tracing::info!(
            "no provider configured: serving the built-in simulator as provider `demo` (model `demo/echo`). It is a test double that echoes your input, not a language model; set e.g. OPENAI_API_KEY or write a polyplex.toml for real providers"
        );
    }
    for u in running.state.router().upstreams() {
        tracing::info!(provider = %u.name, base_url = %u.base_url, protocol = u.protocol.name(), "provider enabled");
        if let Some(note) = u.unpriced_note(running.state.catalog()) {
            tracing::warn!(provider = %u.name, "{note}");
        }
    }
    tracing::info!(addr = %running.addr, threads, "polyplex listening; OpenAI-compatible API at http://{}/v1", running.addr);
    if let Some(file) = file {
        running
            .state
            .config
            .set_source(move || load(Some(&file), listen.clone()));
        tokio::spawn(reload_on_hangup(std::sync::Arc::downgrade(&running.state)));
    }
    let stop = running.shutdown_handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop.send(true);
    });
    let written = running.wait().await;
    match polyplex::spool::spooled() {
        0 => tracing::info!(
            usage_records = written,
            "stopped; every usage record written"
        ),
        spooled => tracing::warn!(
            usage_records = written,
            spooled,
            "stopped; the usage records the store did not take are in the spool, for the next start"
        ),
    }
    Ok(())
}

async fn open_store(config: Option<&PathBuf>) -> Result<polyplex::store::Store, String> {
    let cfg = load(config, None)?;
    polyplex::store::Store::connect(&cfg.store_url)
        .await
        .map_err(|e| e.to_string())
}

fn print_json(v: &serde_json::Value) -> Result<(), String> {
    out!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn or_dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |x| x.to_string())
}

fn time_text(secs: Option<i64>) -> String {
    secs.and_then(|s| u64::try_from(s).ok()).map_or_else(
        || "-".to_string(),
        |s| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
            )
            .to_string()
        },
    )
}

/// A key's budget for the list: `5`, or `5/month` when it starts again.
fn budget_text(k: &polyplex::store::KeyRow) -> String {
    use polyplex::budget::BudgetReset;
    match (k.budget_usd, k.budget_reset) {
        (None, _) => "-".into(),
        (Some(b), None) => b.to_string(),
        (Some(b), Some(r)) => {
            let per = match r {
                BudgetReset::Daily => "day",
                BudgetReset::Weekly => "week",
                BudgetReset::Monthly => "month",
            };
            format!("{b}/{per}")
        }
    }
}

async fn keys_cmd(config: Option<PathBuf>, action: KeysAction) -> Result<(), String> {
    use polyplex::server::admin;
    let store = open_store(config.as_ref()).await?;
    match action {
        KeysAction::Create {
            name_arg,
            name,
            models,
            rpm,
            tpm,
            max_concurrent,
            user_rpm,
            user_tpm,
            user_budget_usd,
            budget_usd,
            budget_reset,
            expires_at,
            metadata,
            json,
        } => {
            let name = name
                .or(name_arg)
                .ok_or("a key needs a name: polyplex keys create NAME (or --name NAME)")?;
            usd_given("budget-usd", budget_usd)?;
            usd_given("user-budget-usd", user_budget_usd)?;
            let expires = expires_at.as_deref().map(expiry).transpose()?;
            let pairs = key_metadata(&metadata)?;
            let changes = polyplex::store::KeyChanges {
                name: Some(name),
                models: Some((!models.is_empty()).then_some(models)),
                rpm: Some(rpm),
                tpm: Some(tpm),
                max_concurrent: Some(max_concurrent),
                budget_usd: Some(budget_usd),
                expires_at: Some(expires),
                budget_reset: Some(
                    budget_reset
                        .as_deref()
                        .and_then(polyplex::budget::BudgetReset::parse),
                ),
                metadata: Some((!pairs.is_empty()).then_some(pairs)),
                user_rpm: Some(user_rpm),
                user_tpm: Some(user_tpm),
                user_budget_usd: Some(user_budget_usd),
            };
            let (row, token) = admin::create(&store, &changes)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                let mut v = admin::key_json(&row);
                v["key"] = serde_json::Value::String(token);
                print_json(&v)?;
            } else {
                out!("created key {} ({})", row.id, row.name);
                out!("{token}");
                eprintln!("This is the only time the key is shown: store it now.");
            }
        }
        KeysAction::List { json } => {
            let rows = store.keys().await.map_err(|e| e.to_string())?;
            if json {
                let data: Vec<_> = rows.iter().map(admin::key_json).collect();
                print_json(&serde_json::json!({"object": "list", "data": data}))?;
            } else {
                out!(
                    "{:<22} {:<20} {:<14} {:>7} {:>9} {:>6} {:>12} {:>12}  {:<20}  status / models / metadata",
                    "ID", "NAME", "KEY", "RPM", "TPM", "CONC", "BUDGET $", "SPENT $", "EXPIRES"
                );
                for k in &rows {
                    let status = if k.revoked_at.is_some() {
                        "revoked".to_string()
                    } else if k
                        .expires_at
                        .is_some_and(|t| t <= polyplex::store::unix_now())
                    {
                        "expired".to_string()
                    } else {
                        "active".to_string()
                    };
                    out!(
                        "{:<22} {:<20} {:<14} {:>7} {:>9} {:>6} {:>12} {:>12}  {:<20}  {status} {}{}",
                        k.id,
                        k.name,
                        k.key_hint,
                        or_dash(k.rpm),
                        or_dash(k.tpm),
                        or_dash(k.max_concurrent),
                        budget_text(k),
                        polyplex::usage::rounded_cost(k.spent_usd),
                        time_text(k.expires_at),
                        k.models
                            .as_ref()
                            .map_or_else(|| "all models".to_string(), |m| m.join(",")),
                        metadata_text(k.metadata.as_ref())
                    );
                }
                out!("{} key(s)", rows.len());
            }
        }
        KeysAction::Revoke { id } => {
            let id = key_id(&store, id).await?;
            match store.revoke_key(&id).await.map_err(|e| e.to_string())? {
                Some(_) => out!("revoked {id}"),
                None => return Err(format!("no key with id `{id}`")),
            }
        }
        KeysAction::Update {
            id,
            name,
            models,
            rpm,
            tpm,
            max_concurrent,
            user_rpm,
            user_tpm,
            user_budget_usd,
            budget_usd,
            budget_reset,
            expires_at,
            metadata,
            json,
        } => {
            let id = key_id(&store, id).await?;
            let usd = |flag: &str, v: Option<String>| -> Result<Option<Option<f64>>, String> {
                let c = change::<f64>(flag, v)?;
                usd_given(flag, c.flatten())?;
                Ok(c)
            };
            let expires = match expires_at.as_deref() {
                None => None,
                Some("none") => Some(None),
                Some(t) => Some(Some(expiry(t)?)),
            };
            let metadata = match metadata.as_slice() {
                [] => None,
                [one] if one == "none" => Some(None),
                given => Some(Some(key_metadata(given)?)),
            };
            let changes = polyplex::store::KeyChanges {
                name,
                models: models.map(|m| (m != ["none"]).then_some(m)),
                rpm: change("rpm", rpm)?,
                tpm: change("tpm", tpm)?,
                max_concurrent: change("max-concurrent", max_concurrent)?,
                budget_usd: usd("budget-usd", budget_usd)?,
                expires_at: expires,
                budget_reset: budget_reset.map(|r| polyplex::budget::BudgetReset::parse(&r)),
                metadata,
                user_rpm: change("user-rpm", user_rpm)?,
                user_tpm: change("user-tpm", user_tpm)?,
                user_budget_usd: usd("user-budget-usd", user_budget_usd)?,
            };
            let row = store
                .update_key(&id, &changes)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no key with id `{id}`"))?;
            if json {
                print_json(&admin::key_json(&row))?;
            } else {
                out!("updated key {} ({})", row.id, row.name);
            }
        }
    }
    store.close().await;
    Ok(())
}

/// A key's id from its id or from the key itself (`plx-...`, found by its
/// hash; never printed).
async fn key_id(store: &polyplex::store::Store, id: String) -> Result<String, String> {
    if !id.starts_with("plx-") {
        return Ok(id);
    }
    match store
        .key_by_hash(&polyplex::keys::hash(&id))
        .await
        .map_err(|e| e.to_string())?
    {
        Some(row) => Ok(row.id),
        None => Err("no key matches the `plx-` key given".into()),
    }
}

/// A USD amount given as `--{flag}`: at least 0.
fn usd_given(flag: &str, v: Option<f64>) -> Result<(), String> {
    match v {
        Some(b) if !(b >= 0.0 && b.is_finite()) => {
            Err(format!("--{flag} must be a number of at least 0"))
        }
        _ => Ok(()),
    }
}

/// `--expires-at` as Unix seconds.
fn expiry(t: &str) -> Result<i64, String> {
    polyplex::server::admin::parse_time(t, true).ok_or_else(|| {
        format!("--expires-at `{t}`: use a date, an RFC 3339 time, Unix seconds or a duration such as 30d")
    })
}

/// A key's `--metadata KEY=VALUE` pairs, checked as the admin API checks them.
fn key_metadata(given: &[String]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let pairs = metadata_pairs(given)?;
    polyplex_types::validate::check_metadata("--metadata", &pairs).map_err(|e| e.message)?;
    Ok(pairs)
}

/// An option of `keys update`: not given (no change), `none` (cleared), or
/// a value.
fn change<T: std::str::FromStr>(
    flag: &str,
    v: Option<String>,
) -> Result<Option<Option<T>>, String> {
    match v.as_deref() {
        None => Ok(None),
        Some("none") => Ok(Some(None)),
        Some(s) => s
            .parse()
            .map(|x| Some(Some(x)))
            .map_err(|_| format!("--{flag} `{s}`: give a number, or `none` to clear it")),
    }
}

/// A key's metadata as `keys list` shows it after the models: ` team=x,env=ci`.
fn metadata_text(m: Option<&serde_json::Map<String, serde_json::Value>>) -> String {
    let pairs: Vec<String> = m
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!(" {}", pairs.join(","))
    }
}

/// `--metadata KEY=VALUE` options as metadata pairs.
fn metadata_pairs(given: &[String]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut pairs = serde_json::Map::new();
    for m in given {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| format!("--metadata takes KEY=VALUE, not `{m}`"))?;
        pairs.insert(k.to_string(), v.into());
    }
    Ok(pairs)
}

/// Which usage `polyplex usage` reads, and how it prints it.
struct UsagePick {
    since: Option<String>,
    until: Option<String>,
    key: Option<String>,
    metadata: Vec<String>,
    json: bool,
}

impl UsagePick {
    /// The records picked (by key, metadata and `until`), as the admin API
    /// picks them.
    fn only(&self) -> Result<polyplex::store::Only, String> {
        let pairs = metadata_pairs(&self.metadata)?;
        polyplex::server::admin::report_only(
            self.key.as_deref(),
            pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or(""))),
            self.until.as_deref(),
        )
        .map_err(|e| e.message)
    }
}

/// `polyplex usage --records` / `--request ID`: the records themselves.
async fn records_cmd(
    config: Option<PathBuf>,
    pick: UsagePick,
    limit: usize,
    request: Option<String>,
) -> Result<(), String> {
    use polyplex::server::admin;
    let (_, since) = admin::report_params(None, pick.since.as_deref()).map_err(|e| e.message)?;
    let (limit, _) = admin::page_params(Some(&limit.to_string()), None).map_err(|e| e.message)?;
    let mut only = pick.only()?;
    only.request_id = request;
    let store = open_store(config.as_ref()).await?;
    let since_ms = since.map_or(0, |s| s.saturating_mul(1000));
    let records = store
        .usage_records(since_ms, &only, None, limit + 1)
        .await
        .map_err(|e| e.to_string())?;
    store.close().await;
    let page = admin::records_json(records, limit);
    if pick.json {
        return print_json(&page);
    }
    out!(
        "{:<20} {:<38} {:<22} {:<16} {:<32} {:>6} {:>9} {:>9} {:>12} {:>8}",
        "TIME",
        "REQUEST",
        "KEY",
        "ENDPOINT",
        "MODEL",
        "STATUS",
        "PROMPT",
        "COMPLETION",
        "COST $",
        "MS"
    );
    for r in page["data"].as_array().into_iter().flatten() {
        let text = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let model = match (r["provider"].as_str(), r["model"].as_str()) {
            (Some(p), Some(m)) => format!("{p}/{m}"),
            _ => text("requested_model"),
        };
        out!(
            "{:<20} {:<38} {:<22} {:<16} {:<32} {:>6} {:>9} {:>9} {:>12} {:>8}",
            time_text(r["created_at"].as_i64()),
            text("request_id"),
            text("key_id"),
            text("endpoint"),
            model,
            r["status"].to_string(),
            r["prompt_tokens"].to_string(),
            r["completion_tokens"].to_string(),
            r["cost_usd"].as_f64().unwrap_or(0.0).to_string(),
            r["latency_ms"].to_string()
        );
    }
    if page["has_more"] == true {
        out!("(more: raise --limit, or narrow with --since, --key, --metadata)");
    }
    Ok(())
}

/// Says (on stderr) if usage records wait in the spool: not in the store,
/// so not in a report, until the next `polyplex serve` writes them.
fn spool_note(config: Option<&PathBuf>) {
    let Ok(cfg) = load(config, None) else { return };
    if let Ok(n @ 1..) = polyplex::spool::waiting(&cfg.spool) {
        eprintln!(
            "note: {n} usage record(s) in {} are not in the store yet (the next `polyplex serve` writes them)",
            cfg.spool.display()
        );
    }
}

async fn usage_cmd(config: Option<PathBuf>, pick: UsagePick, by: String) -> Result<(), String> {
    use polyplex::server::admin;
    let (by, since) =
        admin::report_params(Some(&by), pick.since.as_deref()).map_err(|e| e.message)?;
    let only = pick.only()?;
    let json = pick.json;
    let store = open_store(config.as_ref()).await?;
    let since_ms = since.map_or(0, |s| s.saturating_mul(1000));
    let rows = store
        .usage_report_of(by.clone(), since_ms, &only)
        .await
        .map_err(|e| e.to_string())?;
    let names = store
        .keys()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|k| (k.id, k.name))
        .collect();
    store.close().await;
    let until = only.until_ms.map(|u| u / 1000);
    let report = admin::report_json(&by, (since, until), &rows, &names);
    if json {
        return print_json(&report);
    }
    out!(
        "{:<40} {:>9} {:>7} {:>12} {:>12} {:>12} {:>12} {:>14}",
        by.name().to_uppercase(),
        "REQUESTS",
        "ERRORS",
        "PROMPT",
        "CACHE READ",
        "CACHE WRITE",
        "COMPLETION",
        "COST $"
    );
    let empty = Vec::new();
    let line = |label: &str, r: &serde_json::Value| {
        out!(
            "{:<40} {:>9} {:>7} {:>12} {:>12} {:>12} {:>12} {:>14}",
            label,
            r["requests"].to_string(),
            r["errors"].to_string(),
            r["prompt_tokens"].to_string(),
            r["cached_tokens"].to_string(),
            r["cache_write_tokens"].to_string(),
            r["completion_tokens"].to_string(),
            // Plain decimals (JSON writes 9.8e-6), rounded to 1e-10 USD.
            r["cost_usd"].as_f64().unwrap_or(0.0).to_string()
        );
    };
    for r in report["data"].as_array().unwrap_or(&empty) {
        let mut label = r[by.name().as_ref()].as_str().unwrap_or("-").to_string();
        if let Some(n) = r.get("key_name").and_then(|n| n.as_str()) {
            label = format!("{label} ({n})");
        }
        line(&label, r);
    }
    line("TOTAL", &report["total"]);
    if let Some(s) = since {
        out!("since {}", time_text(Some(s)));
    }
    if let Some(u) = until {
        out!("until {}", time_text(Some(u)));
    }
    Ok(())
}

async fn run_mock(listen: SocketAddr, opts: MockOptions) -> Result<(), String> {
    polyplex::telemetry::init_logging();
    let (addr, _state) = mock::spawn(listen, opts)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    tracing::info!(
        "polyplex mock listening on http://{addr}: OpenAI's protocol at /v1; Anthropic's, Gemini's, Vertex AI's, Bedrock's, Azure's and Cohere's at their providers' own paths (docs/testing.md); faults on demand at /__mock/faults. This is a test double: replies are derived from the input, not from a model. latency_ms={} tokens_per_s={}",
        opts.latency_ms,
        opts.tokens_per_s
    );
    shutdown_signal().await;
    Ok(())
}

/// The `capabilities` column: the catalog's capabilities, and what the
/// model answers in when that is not just text (`out:image`).
fn caps_column(m: &polyplex_catalog::Model) -> String {
    let mut col = m.caps.join(",");
    if !m.out.is_empty() {
        if !col.is_empty() {
            col.push(',');
        }
        col.push_str("out:");
        col.push_str(&m.out.join("+"));
    }
    col
}

fn fmt_price(p: Option<f64>) -> String {
    p.map_or_else(|| "-".to_string(), |x| format!("{x}"))
}

fn models(provider: Option<&str>, json: bool) -> Result<(), String> {
    let c = Catalog::builtin();
    let providers: Vec<_> = match provider {
        Some(p) => vec![c
            .find_provider(p)
            .ok_or_else(|| format!("unknown provider `{p}`; `polyplex models` lists them all"))?],
        None => c.providers.iter().collect(),
    };
    if json {
        let out: Vec<serde_json::Value> = providers
            .iter()
            .flat_map(|p| {
                p.models().iter().map(move |m| {
                    serde_json::json!({"provider": p.id, "protocol": p.protocol, "base_url": p.base_url, "env": p.env,
                        "model": m.id, "name": m.name, "context": m.context, "max_output": m.output, "capabilities": m.caps,
                        "output_modalities": if m.out.is_empty() { vec!["text".to_string()] } else { m.out.clone() },
                        "price_per_million": m.price.map(|x| serde_json::json!({"input": x.input, "output": x.output, "cache_read": x.cache_read, "cache_write": x.cache_write}))})
                })
            })
            .collect();
        out!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    out!(
        "{:<24} {:<48} {:>9} {:>8} {:>9} {:>9} {:>9}  capabilities",
        "PROVIDER",
        "MODEL",
        "CONTEXT",
        "OUTPUT",
        "IN $/M",
        "OUT $/M",
        "CACHED"
    );
    for p in &providers {
        for m in p.models() {
            let pr = m.price;
            out!(
                "{:<24} {:<48} {:>9} {:>8} {:>9} {:>9} {:>9}  {}",
                p.id,
                m.id,
                m.context,
                m.output,
                fmt_price(pr.map(|x| x.input)),
                fmt_price(pr.map(|x| x.output)),
                fmt_price(pr.and_then(|x| x.cache_read)),
                caps_column(m)
            );
        }
    }
    let n: usize = providers.iter().map(|p| p.models().len()).sum();
    out!(
        "\n{} providers, {n} models. {}",
        providers.len(),
        c.attribution
    );
    if let Some(p) = provider.and_then(|p| c.provider(p)) {
        out!(
            "provider {}: protocol {}, base URL {}, key variable(s) {}",
            p.id,
            p.protocol,
            p.base_url.as_deref().unwrap_or("-"),
            p.env.join(", ")
        );
    }
    Ok(())
}

/// A chat request with no messages, for `check` (Bedrock: signed; Vertex
/// AI: with `bearer`): refused as invalid (400) once the credentials pass.
fn empty_chat(
    up: &polyplex::upstream::Upstream,
    p: &polyplex::config::ProviderConfig,
    bearer: Option<&http::HeaderValue>,
) -> Option<polyplex_providers::UpstreamRequest> {
    let catalog = polyplex_catalog::Catalog::builtin();
    let model = p
        .models
        .as_ref()
        .and_then(|m| m.first().cloned())
        .or_else(|| {
            let c = catalog.provider(p.catalog_id.as_deref()?)?;
            c.models().first().map(|m| m.id.clone())
        })
        .unwrap_or_else(|| {
            if p.kind == "vertex" {
                "gemini-2.5-flash".into()
            } else {
                "amazon.nova-micro-v1:0".into()
            }
        });
    let mut body = serde_json::Map::new();
    body.insert(
        "messages".into(),
        serde_json::json!([{"role": "user", "content": "ping"}]),
    );
    let mut target = up.target(catalog, &model, false);
    if bearer.is_some() {
        target.credential = bearer;
    }
    // Built with a message (the adapters refuse a conversation without
    // one), then sent without it: the upstream's 400 costs nothing.
    let mut req = up
        .protocol
        .build(polyplex_providers::Endpoint::Chat, &body, false, &target)
        .ok()?;
    let mut sent: serde_json::Value = serde_json::from_slice(&req.body).ok()?;
    let turns = if sent.get("contents").is_some() {
        "contents"
    } else {
        "messages"
    };
    sent[turns] = serde_json::Value::Array(Vec::new());
    req.body = serde_json::to_vec(&sent).ok()?.into();
    if let Some(signer) = target.sigv4 {
        signer
            .sign(
                &req.url,
                &mut req.headers,
                &req.body,
                std::time::SystemTime::now(),
            )
            .ok()?;
    }
    Some(req)
}

async fn check(config: Option<PathBuf>) -> ExitCode {
    let cfg = match load(config.as_ref(), None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    out!("configuration OK ({})", cfg.source);
    out!(
        "listen: {}  master key: {}",
        cfg.listen,
        if cfg.master_key.is_some() {
            "set"
        } else {
            "not set (loopback only)"
        }
    );
    if let Err(e) = polyplex::check_listen(&cfg) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    for n in &cfg.notes {
        out!("note: {n}");
    }
    match polyplex::catalog::note() {
        Some(note) => out!("{note}"),
        None => out!("catalog: built-in"),
    }
    let store_url = polyplex::store::redact_url(&cfg.store_url);
    // A SQLite file that is not there yet is not made by a check.
    let new_file = cfg
        .store_url
        .strip_prefix("sqlite://")
        .or_else(|| cfg.store_url.strip_prefix("sqlite:"))
        .map(|p| p.split('?').next().unwrap_or(p))
        .filter(|p| !p.contains(":memory:") && !std::path::Path::new(p).exists());
    if new_file.is_some() {
        out!("store: {store_url} (created on first start)");
    } else {
        match polyplex::store::Store::connect(&cfg.store_url).await {
            Ok(s) => {
                let keys = s.keys().await.map(|k| k.len()).unwrap_or(0);
                out!("store: {store_url} OK ({keys} gateway key(s))");
                s.close().await;
            }
            Err(e) => {
                eprintln!("store: {store_url} UNAVAILABLE: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match polyplex::spool::waiting(&cfg.spool) {
        Ok(0) => {}
        Ok(n) => out!(
            "usage spool: {n} record(s) the store did not take wait in {}; the next `polyplex serve` writes them",
            cfg.spool.display()
        ),
        Err(e) => eprintln!("usage spool: {} cannot be read: {e}", cfg.spool.display()),
    }
    if let Some(url) = &cfg.redis_url {
        let ok = match polyplex::shared::SharedLimits::new(url) {
            Ok(r) => match r.ping().await {
                Ok(()) => {
                    out!("redis: {} OK (limits and budgets shared)", r.addr());
                    true
                }
                Err(e) => {
                    eprintln!("redis: {} UNAVAILABLE: {e}", r.addr());
                    false
                }
            },
            Err(e) => {
                eprintln!("{e}");
                false
            }
        };
        if !ok {
            return ExitCode::FAILURE;
        }
    }
    if cfg.demo {
        out!("no provider configured: `serve` will run the built-in simulator as provider `demo`");
        return ExitCode::SUCCESS;
    }
    let client = match polyplex::client::HttpClient::new(std::time::Duration::from_secs(5), 1) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut unreachable = 0;
    for p in &cfg.providers {
        let up = match polyplex::upstream::Upstream::from_config(p) {
            Ok(u) => u,
            Err(e) => {
                out!("{:<20} ERROR {e}", p.name);
                unreachable += 1;
                continue;
            }
        };
        let mut headers = http::HeaderMap::new();
        if let Some(k) = up.api_key() {
            if let Ok(mut v) = http::HeaderValue::try_from(format!("{}{k}", up.auth.prefix)) {
                v.set_sensitive(true);
                headers.insert(up.auth.header.clone(), v);
            }
        }
        for (k, v) in &up.headers {
            headers.insert(k.clone(), v.clone());
        }
        // Bedrock's runtime lists nothing: a signed Converse call with no
        // messages is refused (400) only once the credentials are accepted,
        // and costs nothing (`empty_chat`).
        // Vertex AI's neither: the same, with an access token got first.
        let probe = match p.kind.as_str() {
            "bedrock" => empty_chat(&up, p, None),
            "vertex" => match up.bearer().await {
                Ok(bearer) => empty_chat(&up, p, bearer.as_ref()),
                Err(e) => {
                    out!(
                        "{:<20} {:<8} {:<45} {}",
                        p.name,
                        p.kind,
                        p.base_url,
                        e.message
                    );
                    unreachable += 1;
                    continue;
                }
            },
            _ => None,
        };
        let probe_kind = probe.is_some();
        let (method, url, headers, body) = match probe {
            Some(r) => (http::Method::POST, r.url, r.headers, r.body),
            None => (
                http::Method::GET,
                polyplex_providers::join_url(&up.base_url, "models"),
                headers,
                bytes::Bytes::new(),
            ),
        };
        let sent = async {
            let uri = http::Uri::try_from(url.as_str())
                .map_err(|_| polyplex::client::Failure::Request)?;
            client.send(method, uri, headers, body).await
        };
        let verdict = match tokio::time::timeout(std::time::Duration::from_secs(8), sent)
            .await
            .unwrap_or(Err(polyplex::client::Failure::Timeout))
        {
            Ok(r) if r.status().is_success() => "reachable".to_string(),
            Ok(r) if probe_kind && r.status().as_u16() == 400 => {
                "reachable, credentials accepted".to_string()
            }
            Ok(r) if r.status().as_u16() == 401 || r.status().as_u16() == 403 => {
                unreachable += 1;
                format!(
                    "reachable, but the key was rejected (HTTP {})",
                    r.status().as_u16()
                )
            }
            Ok(r) => format!(
                "reachable (GET /models answered HTTP {})",
                r.status().as_u16()
            ),
            Err(f) => {
                unreachable += 1;
                format!("UNREACHABLE ({})", f.detail())
            }
        };
        let models = p
            .models
            .as_ref()
            .map_or_else(|| "catalog models".to_string(), |m| m.join(", "));
        out!(
            "{:<20} {:<8} {:<45} {verdict}; models: {models}",
            p.name,
            p.kind,
            p.base_url
        );
        if let Some(note) = up.unpriced_note(polyplex_catalog::Catalog::builtin()) {
            out!("{:<20} note: {note}", "");
        }
    }
    for r in &cfg.routes {
        out!(
            "route {:<14} {:?} -> {}",
            r.name,
            r.strategy,
            r.targets
                .iter()
                .map(|(p, m)| format!("{p}/{m}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if unreachable > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
