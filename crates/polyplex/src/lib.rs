//! polyplex: one OpenAI-compatible endpoint for every LLM provider.
//!
//! The binary's commands live in `main.rs`; this library holds the service so
//! that tests can run it in-process. Start with [`server`] for the request path.

pub mod client;
pub mod config;
pub mod executor;
pub mod health;
pub mod mock;
pub mod routing;
pub mod server;
pub mod telemetry;
pub mod tokens;
pub mod upstream;
pub mod usage;

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
}

impl Running {
    /// Graceful shutdown: stop accepting, finish in-flight requests (up to the
    /// grace period), then flush every usage record. Returns the records written.
    pub async fn shutdown(self) -> u64 {
        self.state.set_not_ready();
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        drop(self.state);
        self.writer.await.unwrap_or(0)
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

/// Starts the gateway on `cfg.listen` (port 0 picks a free one).
pub async fn start(cfg: &Config) -> Result<Running, String> {
    check_listen(cfg)?;
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
    let (recorder, writer) = usage::Recorder::start();
    let state = server::state(cfg, demo_url, recorder)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = server::app(state.clone());
    let (tx, mut rx) = watch::channel(false);
    let grace = cfg.shutdown_grace;
    let task = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let mut rx2 = rx.clone();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.wait_for(|v| *v).await;
        });
        let grace_over = async move {
            let _ = rx2.wait_for(|v| *v).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            r = server => if let Err(e) = r { tracing::error!(error = %e, "server error") },
            _ = grace_over => tracing::warn!("shutdown grace period over; closing the remaining connections"),
        }
    });
    Ok(Running {
        addr,
        state,
        shutdown: tx,
        task,
        writer,
    })
}
