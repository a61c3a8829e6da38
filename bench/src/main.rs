//! polyplex-bench: polyplex side by side with a direct call, nginx, LiteLLM
//! and Portkey against one fixed-latency upstream, in interleaved rounds.
//! See bench/README.md and docs/performance.md.

mod load;
mod procstat;
mod report;
mod stamp;
mod targets;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rand::seq::SliceRandom;

use crate::load::Endpoint;
use crate::report::{Acc, Row};
use crate::targets::Proc;

#[derive(Parser)]
#[command(
    name = "polyplex-bench",
    about = "Gateway overhead benchmark (loopback only, bounded in time)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The fixed-latency upstream mock (OpenAI and Anthropic shapes).
    Upstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 0)]
        delay_us: u64,
        #[arg(long, default_value_t = 20)]
        chunks: usize,
        #[arg(long, default_value_t = 1000)]
        interval_us: u64,
    },
    /// Start everything, measure, write bench/results/.
    Run(RunArgs),
    /// Drive load at one running target (for profiling): prints req/s and
    /// latency percentiles.
    Load {
        /// host:port of the target.
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "gpt-4o-mini")]
        model: String,
        /// Bearer key sent to the target.
        #[arg(long, default_value = targets::MASTER_KEY)]
        key: String,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Instead of unary load: this many sequential streams, then their
        /// time to first token and inter-chunk gap percentiles.
        #[arg(long)]
        streams: Option<usize>,
        /// With --streams: print each stream's wall-clock stamps to stderr
        /// (`CLIENT sent= first= stamp=`), for bench/phases.py.
        #[arg(long)]
        trace: bool,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// The polyplex binary to measure.
    #[arg(long, default_value = "target/release/polyplex")]
    polyplex: PathBuf,
    /// Where results.md, results.json and the logs go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// bench/ (for .venv and node/ installed by setup.sh).
    #[arg(long, default_value = env!("CARGO_MANIFEST_DIR"))]
    bench_dir: PathBuf,
    /// Comma-separated: direct, nginx, polyplex, polyplex-anthropic, litellm,
    /// portkey; also polyplex-b and polyplex-b-anthropic (a second polyplex,
    /// passthrough and translated, for A/B comparisons in one run:
    /// `--polyplex-b`, `--polyplex-b-config`).
    #[arg(
        long,
        default_value = "direct,nginx,polyplex,polyplex-anthropic,litellm,portkey"
    )]
    targets: String,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Sequential unary requests per target per round (concurrency 1).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Length of each concurrency-64 and -256 phase per round.
    #[arg(long, default_value_t = 2000)]
    duration_ms: u64,
    /// Sequential streams per target per round.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Content chunks per stream and the upstream's gap between them.
    #[arg(long, default_value_t = 20)]
    chunks: usize,
    #[arg(long, default_value_t = 1000)]
    interval_us: u64,
    /// Upstream delay before every answer.
    #[arg(long, default_value_t = 0)]
    delay_us: u64,
    /// Concurrent streams in the final burst.
    #[arg(long, default_value_t = 512)]
    burst: usize,
    /// A short run that only shows the harness works (CI).
    #[arg(long)]
    smoke: bool,
    /// TOML appended to polyplex's configuration, for experiments with its
    /// settings (e.g. `--polyplex-config $'[server]\nbusy_poll_us = 0'`);
    /// the report says so. Default: none, polyplex as it ships.
    #[arg(long, default_value = "")]
    polyplex_config: String,
    /// The binary of the `polyplex-b` target (default: `--polyplex`).
    /// Measured in the same rounds as `polyplex`, in shuffled order, so two
    /// builds (or two settings) meet the same machine state.
    #[arg(long)]
    polyplex_b: Option<PathBuf>,
    /// TOML appended to the `polyplex-b` target's configuration.
    #[arg(long, default_value = "")]
    polyplex_b_config: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Upstream {
            listen,
            delay_us,
            chunks,
            interval_us,
        } => upstream::serve(
            listen,
            upstream::Shape {
                delay_us,
                chunks,
                interval_us,
            },
        ),
        Cmd::Load {
            addr,
            model,
            key,
            concurrency,
            seconds,
            streams,
            trace,
        } => {
            // One thread for one connection: the request and its connection's
            // task wake each other without crossing threads.
            let rt = if concurrency <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()?
            };
            rt.block_on(async move {
                let ep = targets::endpoint(addr.port(), "/v1/chat/completions", &model, vec![targets::bearer(&key)]);
                if let Some(n) = streams {
                    let s = load::streams(&ep, n.min(20), n, trace).await;
                    let q = |h: &hdrhistogram::Histogram<u64>, p: f64| h.value_at_quantile(p) / 1000;
                    println!(
                        "{} streams, {} errors ({:?}), TTFT p50 {} µs p99 {} µs, gap p50 {} µs p99 {} µs, stretch p50 {} µs p99 {} µs",
                        s.ttft.len(),
                        s.errors.count,
                        s.errors.first,
                        q(&s.ttft, 0.5),
                        q(&s.ttft, 0.99),
                        q(&s.gaps, 0.5),
                        q(&s.gaps, 0.99),
                        q(&s.stretch, 0.5),
                        q(&s.stretch, 0.99)
                    );
                    return Ok(());
                }
                let l = load::closed_loop(&ep, concurrency, Duration::from_secs(seconds)).await;
                println!(
                    "{} ok, {} errors ({:?}), {:.0} req/s, p50 {} µs, p99 {} µs",
                    l.ok,
                    l.errors.count,
                    l.errors.first,
                    l.ok as f64 / l.elapsed.as_secs_f64(),
                    l.hist.value_at_quantile(0.5) / 1000,
                    l.hist.value_at_quantile(0.99) / 1000
                );
                Ok(())
            })
        }
        Cmd::Run(mut args) => {
            if args.smoke {
                args.rounds = 1;
                args.requests = args.requests.min(200);
                args.duration_ms = args.duration_ms.min(300);
                args.streams = args.streams.min(10);
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(run(args))
        }
    }
}

/// One target under measurement.
struct Target {
    name: String,
    ep: Endpoint,
    pid: u32,
    row: Row,
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    // Absolute: nginx resolves its prefix and pid paths against its own cwd.
    let logs = std::fs::canonicalize(&args.out)?.join("logs");
    std::fs::create_dir_all(&logs)?;
    let wanted: Vec<String> = args
        .targets
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let ticks = procstat::clock_ticks();

    // The upstream, pinned to the last core.
    let up_port = targets::free_port()?;
    let me = std::env::current_exe()?;
    let pin = if cpus() > 1 { Some(cpus() - 1) } else { None };
    let mut cmd = targets::pinned(pin, &me.to_string_lossy());
    cmd.args([
        "upstream",
        "--listen",
        &format!("127.0.0.1:{up_port}"),
        "--delay-us",
        &args.delay_us.to_string(),
        "--chunks",
        &args.chunks.to_string(),
        "--interval-us",
        &args.interval_us.to_string(),
    ]);
    let upstream_proc = Proc::spawn("upstream", &mut cmd, &logs)?;
    let direct = targets::direct(up_port);
    load::wait_ready(&direct, Duration::from_secs(10))
        .await
        .map_err(|e| anyhow::anyhow!("upstream: {e}\n{}", upstream_proc.log_tail()))?;

    let mut procs: Vec<Proc> = Vec::new();
    let mut list: Vec<Target> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    // The polyplex processes started: port, key and pid by instance name.
    let mut instances: std::collections::HashMap<&str, (u16, String, u32)> =
        std::collections::HashMap::new();

    for name in &wanted {
        let started: anyhow::Result<(Option<Proc>, Endpoint, Duration)> = match name.as_str() {
            "direct" => Ok((None, direct.clone(), Duration::from_secs(5))),
            "nginx" => targets::start_nginx(&logs, up_port)
                .map(|(p, e)| (Some(p), e, Duration::from_secs(15))),
            "polyplex" | "polyplex-anthropic" | "polyplex-b" | "polyplex-b-anthropic" => {
                // Two targets share each process: passthrough and translated.
                let (instance, bin, extra) = if name.starts_with("polyplex-b") {
                    (
                        "polyplex-b",
                        args.polyplex_b.as_ref().unwrap_or(&args.polyplex),
                        &args.polyplex_b_config,
                    )
                } else {
                    ("polyplex", &args.polyplex, &args.polyplex_config)
                };
                let model = if name.ends_with("-anthropic") {
                    "claude-sonnet-4-5"
                } else {
                    "gpt-4o-mini"
                };
                match instances.get(instance) {
                    Some((port, key, _)) => Ok((
                        None,
                        targets::polyplex_endpoint(*port, key, model),
                        Duration::from_secs(15),
                    )),
                    None => targets::start_polyplex(instance, bin, &logs, up_port, extra).map(
                        |(p, port, key)| {
                            let ep = targets::polyplex_endpoint(port, &key, model);
                            instances.insert(instance, (port, key, p.pid()));
                            (Some(p), ep, Duration::from_secs(15))
                        },
                    ),
                }
            }
            "litellm" => targets::start_litellm(&args.bench_dir, &logs, up_port)
                .map(|(p, e)| (Some(p), e, Duration::from_secs(180))),
            "portkey" => targets::start_portkey(&args.bench_dir, &logs, up_port)
                .map(|(p, e)| (Some(p), e, Duration::from_secs(60))),
            other => Err(anyhow::anyhow!("unknown target {other}")),
        };
        let (proc, ep, wait) = match started {
            Ok(s) => s,
            Err(e) => {
                eprintln!("skipping {name}: {e}");
                skipped.push((name.clone(), e.to_string()));
                continue;
            }
        };
        let pid = match (&proc, name.as_str()) {
            (Some(p), _) => p.pid(),
            (None, "direct") => upstream_proc.pid(),
            (None, n) => {
                let instance = if n.starts_with("polyplex-b") {
                    "polyplex-b"
                } else {
                    "polyplex"
                };
                instances.get(instance).map(|i| i.2).unwrap_or_default()
            }
        };
        eprintln!("waiting for {name} ...");
        if let Err(e) = load::wait_ready(&ep, wait).await {
            let tail = proc.as_ref().map(|p| p.log_tail()).unwrap_or_default();
            eprintln!("skipping {name}: {e}\n{tail}");
            skipped.push((name.clone(), e.to_string()));
            continue;
        }
        if let Some(p) = proc {
            procs.push(p);
        }
        list.push(Target {
            name: name.clone(),
            ep,
            pid,
            row: Row::new(name),
        });
    }
    if !list.iter().any(|t| t.name == "direct") {
        anyhow::bail!("the direct target is needed as the baseline");
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    for t in &mut list {
        t.row.rss_idle_kib = procstat::rss_kib(t.pid);
    }

    let mut order: Vec<usize> = (0..list.len()).collect();
    for round in 0..args.rounds {
        order.shuffle(&mut rand::thread_rng());
        let names: Vec<&str> = order.iter().map(|i| list[*i].name.as_str()).collect();
        eprintln!("round {}/{}: {}", round + 1, args.rounds, names.join(", "));
        for &i in &order {
            let t = &mut list[i];
            let warm = if round == 0 { 50 } else { 10 };
            let ep = t.ep.clone();
            let (h, e) =
                on_one_thread(move || async move { load::latency(&ep, warm, args.requests).await })
                    .await?;
            let _ = t.row.c1.add(&h);
            t.row.errors.merge(&e);
            let mut this_round = report::Round {
                c1_p50_us: report::us(&h, 0.5),
                ..report::Round::default()
            };

            let ep = t.ep.clone();
            let s = on_one_thread(move || async move {
                load::streams(&ep, if round == 0 { 5 } else { 1 }, args.streams, false).await
            })
            .await?;
            let _ = t.row.ttft.add(&s.ttft);
            this_round.ttft_p50_us = report::us(&s.ttft, 0.5);
            let _ = t.row.gaps.add(&s.gaps);
            let _ = t.row.stretch.add(&s.stretch);
            t.row.errors.merge(&s.errors);

            for (conc, acc) in [(64usize, 0usize), (256, 1)] {
                let before = procstat::cpu_ticks(t.pid);
                let (peak, l) = with_peak_rss(
                    t.pid,
                    load::closed_loop(&t.ep, conc, Duration::from_millis(args.duration_ms)),
                )
                .await;
                let used = procstat::cpu_ticks(t.pid).saturating_sub(before);
                let a: &mut Acc = if acc == 0 {
                    &mut t.row.c64
                } else {
                    &mut t.row.c256
                };
                a.ok += l.ok;
                a.secs += l.elapsed.as_secs_f64();
                if conc == 64 && !l.elapsed.is_zero() {
                    this_round.rps64 = l.ok as f64 / l.elapsed.as_secs_f64();
                }
                let _ = a.hist.add(&l.hist);
                t.row.cpu_ticks += used;
                t.row.cpu_requests += l.ok;
                t.row.rss_peak_kib = t.row.rss_peak_kib.max(peak);
                if conc == 256 {
                    t.row.rss_peak_c256_kib = t.row.rss_peak_c256_kib.max(peak);
                }
                t.row.errors.merge(&l.errors);
            }
            t.row.rounds.push(this_round);
        }
    }

    for &i in &order {
        let t = &mut list[i];
        eprintln!("{}: {} concurrent streams", t.name, args.burst);
        let (peak, e) = with_peak_rss(t.pid, load::stream_burst(&t.ep, args.burst)).await;
        t.row.rss_peak_kib = t.row.rss_peak_kib.max(peak);
        t.row.burst_errors = e;
        t.row.burst = args.burst;
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    for t in &mut list {
        t.row.rss_after_kib = procstat::rss_kib(t.pid);
    }

    let rows: Vec<Row> = list.into_iter().map(|t| t.row).collect();
    let meta = report::Meta {
        rounds: args.rounds,
        requests: args.requests,
        duration_ms: args.duration_ms,
        streams: args.streams,
        chunks: args.chunks,
        interval_us: args.interval_us,
        delay_us: args.delay_us,
        burst: args.burst,
        ticks_per_sec: ticks,
        smoke: args.smoke,
        polyplex: args.polyplex.display().to_string(),
        polyplex_config: args.polyplex_config.clone(),
        polyplex_b: wanted.iter().any(|n| n.starts_with("polyplex-b")).then(|| {
            (
                args.polyplex_b
                    .as_ref()
                    .unwrap_or(&args.polyplex)
                    .display()
                    .to_string(),
                args.polyplex_b_config.clone(),
            )
        }),
    };
    let md = report::markdown(&rows, &skipped, &meta);
    std::fs::write(args.out.join("results.md"), &md)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_vec_pretty(&report::json(&rows, &skipped, &meta))?,
    )?;
    println!("{md}");
    drop(procs);
    drop(upstream_proc);
    Ok(())
}

/// Runs a one-connection measurement (concurrency 1, streams) on a thread
/// of its own with a single-threaded runtime, so the client's request and
/// its connection's task wake each other without crossing threads: with
/// the multi-threaded runtime every read was a hand-off between two of the
/// client's threads, which added about 60 µs to every target's time to
/// first token (direct included) and its jitter to every sample.
async fn on_one_thread<F, Fut, T>(make: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(make()))
    })
    .await?
}

/// Runs `fut` while sampling the process tree's RSS every 20 ms; returns
/// the highest sample (KiB) with the future's output.
async fn with_peak_rss<T>(pid: u32, fut: impl std::future::Future<Output = T>) -> (u64, T) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(procstat::rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out = fut.await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    (peak.load(Ordering::Relaxed), out)
}
