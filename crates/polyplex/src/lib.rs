//! polyplex: one OpenAI-compatible endpoint for every LLM provider.
//!
//! The binary's commands live in `main.rs`; this library holds the service so
//! that tests can run it in-process. Start with [`server`] for the request path.

pub mod alerts;
pub mod apart;
pub mod background;
pub mod batches;
pub mod budget;
pub mod cache;
pub mod catalog;
pub mod client;
pub mod config;
pub mod conversations;
pub mod executor;
pub mod genai;
pub mod health;
pub mod keys;
pub mod messages;
pub mod mock;
pub mod phase;
pub mod reload;
pub mod responses;
pub mod routing;
pub mod server;
pub mod shared;
pub mod spool;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod upstream;
pub mod usage;
pub mod window;

use config::{Config, ProviderConfig};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;

/// The built-in simulator served as provider `demo` when nothing else is configured.
pub fn demo_provider(base_url: String) -> ProviderConfig {
    ProviderConfig {
        models: Some(vec!["echo".into()]),
        timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        max_retries: 0,
        ..ProviderConfig::with_defaults("demo", base_url)
    }
}

/// A running gateway (for tests and `serve`).
pub struct Running {
    pub addr: SocketAddr,
    pub state: server::App,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<u64>,
    reloader: Option<tokio::task::JoinHandle<()>>,
    /// Runs batches (`/v1/batches`) until shutdown.
    batches: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Graceful shutdown: stop accepting, finish in-flight requests (up to the
    /// grace period), then flush every usage record. Returns the records written.
    pub async fn shutdown(self) -> u64 {
        self.state.set_not_ready();
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        if let Some(b) = self.batches {
            // Its running requests get the grace; their records are sent
            // before the writer drains.
            let _ = b.await;
        }
        if let Some(r) = &self.reloader {
            r.abort();
        }
        if let Some(alerts) = self.state.alerts.swap(None) {
            alerts.finish(&self.state.keys).await;
        }
        let store = self.state.keys.store().cloned();
        if let Some(shared) = &self.state.shared_limits {
            shared.flush().await;
        }
        // The writer drains what is left now, whatever else the host runs.
        self.state.recorder.hurry();
        drop(self.state);
        let written = self.writer.await.unwrap_or(0);
        if let Some(s) = store {
            s.close().await;
        }
        written
    }

    /// Resolves when a shutdown was requested and the server has stopped.
    pub async fn wait(self) -> u64 {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|v| *v).await;
        self.shutdown().await
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Checks the Security rule: no master key means loopback only.
pub fn check_listen(cfg: &Config) -> Result<(), String> {
    if cfg.master_key.is_none() && !cfg.listen.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {} without a master key: set [auth] master_key (or POLYPLEX_MASTER_KEY) or listen on a loopback address",
            cfg.listen
        ));
    }
    Ok(())
}

/// Starts the gateway on `cfg.listen` (port 0 picks a free one), serving on
/// the caller's runtime (tests, embedding). `polyplex serve` uses
/// [`start_threads`].
pub async fn start(cfg: &Config) -> Result<Running, String> {
    let (state, writer, reloader) = prepare(cfg, 1).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = watch::channel(false);
    let batches = server::batches::spawn_worker(
        state.clone(),
        server::app(state.clone()),
        rx.clone(),
        cfg.shutdown_grace,
    );
    let task = tokio::spawn(serve_listener(
        listener,
        server::app(state.clone()),
        rx,
        cfg.shutdown_grace,
        cfg.header_timeout,
    ));
    Ok(Running {
        addr,
        state,
        shutdown: tx,
        task,
        writer,
        reloader,
        batches,
    })
}

/// Starts the gateway on `threads` serving threads, each with its own
/// single-threaded runtime, its own `SO_REUSEPORT` listener on `cfg.listen`
/// (the kernel spreads connections over them) and its own upstream
/// connection pool: a request is read, routed, proxied and answered on one
/// thread, with no hand-off to another (see docs/performance.md). Routing
/// statistics, limits and usage are shared by all of them; the usage writer
/// runs on the caller's runtime. Each thread busy-polls for
/// `cfg.busy_poll` after a request ([`server::busy`]). Elsewhere than on
/// Linux this is [`start`].
pub async fn start_threads(cfg: &Config, threads: usize) -> Result<Running, String> {
    if !cfg!(target_os = "linux") {
        return start(cfg).await;
    }
    let threads = threads.max(1);
    let (state, writer, reloader) = prepare(cfg, threads).await?;
    let listeners = reuseport_listeners(cfg.listen, threads)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listeners
        .first()
        .ok_or("no listener")?
        .local_addr()
        .map_err(|e| e.to_string())?;
    let (tx, rx) = watch::channel(false);
    let batches = server::batches::spawn_worker(
        state.clone(),
        server::app(state.clone()),
        rx.clone(),
        cfg.shutdown_grace,
    );
    let mut done = Vec::with_capacity(threads);
    for (i, listener) in listeners.into_iter().enumerate() {
        let app = server::app(state.clone());
        let rx = rx.clone();
        let grace = cfg.shutdown_grace;
        let header_timeout = cfg.header_timeout;
        let busy_poll = cfg.busy_poll;
        let (finished, wait) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("polyplex-serve-{i}"))
            .spawn(move || {
                server::set_serving_thread(i);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a serving thread's runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let serve = async move {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(l) => serve_listener(l, app, rx, grace, header_timeout).await,
                            Err(e) => tracing::error!(error = %e, "cannot serve a listener"),
                        }
                    };
                    let poll = async move {
                        if busy_poll.is_zero() {
                            std::future::pending::<()>().await;
                        }
                        server::busy::poller(busy_poll).await;
                    };
                    tokio::select! {
                        biased;
                        () = serve => {}
                        () = poll => {}
                        () = timer_floor() => {}
                    }
                });
                let _ = finished.send(());
            })
            .map_err(|e| format!("cannot start a serving thread: {e}"))?;
        done.push(wait);
    }
    let task = tokio::spawn(async move {
        for d in done {
            let _ = d.await;
        }
    });
    Ok(Running {
        addr,
        state,
        shutdown: tx,
        task,
        writer,
        reloader,
        batches,
    })
}

/// How far ahead a serving thread always has a timer due.
const TIMER_FLOOR: Duration = Duration::from_millis(250);

/// Keeps a timer due within [`TIMER_FLOOR`] on the current runtime. Tokio's
/// timer wakes its own driver (an eventfd write, then one more `epoll_wait`)
/// whenever a timer is set earlier than every timer already set; with this
/// one, a request's timeouts (seconds away) never are, which saves two system
/// calls per request. Costs four wake-ups a second on an idle thread.
async fn timer_floor() {
    loop {
        tokio::time::sleep(TIMER_FLOOR).await;
    }
}

type Prepared = (
    server::App,
    tokio::task::JoinHandle<u64>,
    Option<tokio::task::JoinHandle<()>>,
);

/// The state (with one upstream client per serving thread), the usage
/// writer and the key reloader, plus the simulator in demo mode.
async fn prepare(cfg: &Config, threads: usize) -> Result<Prepared, String> {
    check_listen(cfg)?;
    // Cost routing counts every request's prompt: the encoding is loaded
    // now, on a thread of its own, not by the first such request on a
    // serving thread (a pause of its connections; `tokens`).
    let cost = config::Strategy::Cost;
    if cfg.routing.strategy == cost || cfg.routes.iter().any(|r| r.strategy == cost) {
        tokens::warm_in_background();
    }
    let store = store::Store::connect(&cfg.store_url)
        .await
        .map_err(|e| e.to_string())?;
    let keys = std::sync::Arc::new(keys::Keys::new(Some(store.clone())));
    keys.reload().await.map_err(|e| e.to_string())?;
    let reloader = keys.spawn_reloader();
    let demo_url = if cfg.demo {
        let (addr, _) = mock::spawn(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            mock::MockOptions::default(),
        )
        .await
        .map_err(|e| format!("cannot start the built-in simulator: {e}"))?;
        Some(format!("http://{addr}/v1"))
    } else {
        None
    };
    // Usage records an earlier run could not store: written first.
    let held = spool::Held::start(cfg.spool.clone(), keys.clone()).await;
    let (recorder, writer) = usage::Recorder::start(Some(store), held);
    let shared = match &cfg.redis_url {
        Some(url) => Some(share_limits(url, &recorder).await?),
        None => None,
    };
    let state = server::state(cfg, demo_url, recorder, keys, shared.clone(), threads)?;
    if let Some(shared) = shared {
        // Circuits the other replicas open, opened here too (a weak
        // reference: the state owns the limits).
        let app = std::sync::Arc::downgrade(&state);
        shared.listen_health(move |provider, model, cooldown| {
            let Some(app) = app.upgrade() else { return };
            if let Some(u) = app.router().upstreams().iter().find(|u| u.name == provider) {
                if u.stats(model)
                    .open_elsewhere(std::time::Instant::now(), cooldown)
                {
                    tracing::warn!(provider, model, "circuit opened by another replica");
                }
            }
        });
    }
    Ok((state, writer, reloader))
}

/// Limits and budgets shared through Redis at `url`: checked once now (a
/// Redis that does not answer yet is not fatal: requests are admitted by
/// this node's own limits until it does), then every key's charges go there
/// too.
async fn share_limits(
    url: &str,
    recorder: &usage::Recorder,
) -> Result<std::sync::Arc<shared::SharedLimits>, String> {
    let limits = shared::SharedLimits::new(url)?;
    match limits.ping().await {
        Ok(()) => {
            tracing::info!(redis = %limits.addr(), "limits and budgets are shared through Redis")
        }
        Err(e) => tracing::warn!(
            redis = %limits.addr(),
            error = %e,
            "Redis does not answer: each node counts its own limits until it does"
        ),
    }
    recorder.share_limits(limits.clone());
    Ok(limits)
}

/// TCP keep-alive on the client connections (set on the listeners, which
/// the accepted sockets inherit): a client gone without a word (a laptop
/// shut, a NAT entry dropped) is noticed after `CLIENT_KEEPALIVE_IDLE` of
/// silence and three unanswered probes, and its connection fails, which
/// drops its request and so cancels the upstream call — instead of an
/// answer being generated (and billed) for nobody until the kernel gives
/// up on a write many minutes later.
const CLIENT_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const CLIENT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// `n` listeners on one address with `SO_REUSEPORT`. An explicit port is
/// first bound once without it, so a port another process (or another
/// polyplex) holds is refused instead of silently shared.
fn reuseport_listeners(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
    let open = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        let keepalive = TcpKeepalive::new()
            .with_time(CLIENT_KEEPALIVE_IDLE)
            .with_interval(CLIENT_KEEPALIVE_INTERVAL);
        #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
        let keepalive = keepalive.with_retries(3);
        s.set_tcp_keepalive(&keepalive)?;
        #[cfg(unix)]
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(4096)?;
        Ok(s.into())
    };
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let first = open(addr)?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(open(bound)?);
    }
    Ok(all)
}

/// Accepts connections until shutdown, serving each on its own task:
/// HTTP/1.1 (or HTTP/2 by prior knowledge) with `TCP_NODELAY`; a
/// connection that sends no complete request head within `header_timeout`
/// — idle between requests, or trickling its head — is closed (`None`:
/// never). On shutdown, no new connections; those open finish their
/// requests (each closes once answered) for up to `grace`, then are cut.
async fn serve_listener(
    listener: tokio::net::TcpListener,
    app: server::gate::Gate,
    mut rx: watch::Receiver<bool>,
    grace: Duration,
    header_timeout: Option<Duration>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // HTTP/2 multiplexes a client's requests on one connection: a PING
    // every 30 s unanswered for 20 s closes it, and its streams with it.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(CLIENT_KEEPALIVE_IDLE))
        .keep_alive_timeout(Duration::from_secs(20));
    let open = hyper_util::server::graceful::GracefulShutdown::new();
    let mut failing = AcceptFailures::default();
    loop {
        let tcp = tokio::select! {
            biased;
            _ = async { rx.wait_for(|v| *v).await.is_ok() } => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    failing = AcceptFailures::default();
                    tcp
                }
                Err(e) => {
                    if let Some(pause) = failing.next(&e, std::time::Instant::now()) {
                        tokio::time::sleep(pause).await;
                    }
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (builder, app, watcher) = (builder.clone(), app.clone(), open.watcher());
        let mut stop = rx.clone();
        tokio::spawn(async move {
            let speaks = tokio::select! {
                speaks = speaks_in_time(&tcp, header_timeout) => speaks,
                _ = async { stop.wait_for(|v| *v).await.is_ok() } => false,
            };
            if !speaks {
                return;
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), app);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = open.shutdown() => {}
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace period over; closing the remaining connections"),
    }
}

/// Whether a new connection sends, within `limit`, enough to tell HTTP/1
/// from HTTP/2's preface (hyper's version sniffing has no timer of its own,
/// and its HTTP/1 head timer starts only after it): its first bytes, or
/// all 24 of the preface. No bytes read: they are left for hyper.
async fn speaks_in_time(tcp: &tokio::net::TcpStream, limit: Option<Duration>) -> bool {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let first = async {
        let mut buf = [0u8; 24];
        loop {
            match tcp.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n == buf.len() || buf[..n] != PREFACE[..n] => return true,
                // Part of the preface: more to come, peeked again shortly.
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    match limit {
        Some(limit) => tokio::time::timeout(limit, first).await.unwrap_or(false),
        None => first.await,
    }
}

/// Failed `accept`s in a row. A connection that failed before it was taken
/// is the client's business (no pause); anything else (out of file
/// descriptors, mostly) does not pass by retrying at once, so the listener
/// pauses, 5 ms after the first failure and twice as long after each next
/// one up to a second (so a freed descriptor is taken soon, and a lasting
/// shortage costs one wake-up a second), and logs the first failure of a
/// run and then at most one a second.
#[derive(Default)]
struct AcceptFailures {
    pause: Option<Duration>,
    logged: Option<std::time::Instant>,
}

impl AcceptFailures {
    const FIRST: Duration = Duration::from_millis(5);
    const LONGEST: Duration = Duration::from_secs(1);

    /// The pause after this failure, if any.
    fn next(&mut self, e: &std::io::Error, now: std::time::Instant) -> Option<Duration> {
        use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
        if matches!(
            e.kind(),
            ConnectionAborted | ConnectionRefused | ConnectionReset
        ) {
            return None;
        }
        let pause = self
            .pause
            .map_or(Self::FIRST, |p| (p * 2).min(Self::LONGEST));
        self.pause = Some(pause);
        if self
            .logged
            .is_none_or(|t| now.duration_since(t) >= Self::LONGEST)
        {
            self.logged = Some(now);
            tracing::error!(error = %e, "cannot accept connections; trying again shortly");
        }
        Some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn failed_accepts_back_off_from_5_ms_to_a_second() {
        let mut f = AcceptFailures::default();
        let now = std::time::Instant::now();
        let emfile = Error::from_raw_os_error(24);
        // The client's own failure: no pause.
        assert_eq!(
            f.next(&Error::from(ErrorKind::ConnectionAborted), now),
            None
        );
        let pauses: Vec<u64> = (0..10)
            .map(|_| f.next(&emfile, now).unwrap().as_millis() as u64)
            .collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // A taken connection starts over.
        let mut f = AcceptFailures::default();
        assert_eq!(f.next(&emfile, now), Some(AcceptFailures::FIRST));
    }
}
