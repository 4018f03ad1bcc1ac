//! Running the service: bind, answer `/healthz` at once, replay the journal, boot the actors,
//! become ready; on shutdown stop accepting, finish in-flight requests, flush the journal.
//!
//! The listener and the shutdown future are passed in, so tests bind `127.0.0.1:0` and stop
//! the server when they like.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use switchboard_actors::clock::{Clock, SystemClock};
use switchboard_actors::store::{Store, recover};
use switchboard_actors::system::System;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::{AppState, app};
use crate::journal::SledStore;
use crate::metrics::Metrics;
use crate::token::{self, TokenSource};

/// Runs until `shutdown` resolves; returns after the journal is flushed.
pub async fn run(config: Config, listener: TcpListener, env_token: Option<String>, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let (admin_token, source) = token::resolve(env_token, config.admin_token.as_deref(), &config.data_dir).context("resolving the admin token")?;
    if let TokenSource::Generated = source {
        // Printed once, to the terminal, not to the logs: it is a secret.
        println!("generated admin token (stored in {}): {admin_token}", config.data_dir.join("admin_token").display());
    }
    let metrics = Arc::new(Metrics::default());
    let state = AppState::new(config.clone(), Arc::clone(&metrics), admin_token);
    let address = listener.local_addr()?;
    tracing::info!(%address, data_dir = %config.data_dir.display(), "listening");

    let (stop_serving, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let router = app(Arc::clone(&state));
        async move { axum::serve(listener, router).with_graceful_shutdown(async { let _ = stopped.await; }).await }
    });

    let boot = boot(&config, metrics);
    tokio::pin!(shutdown);
    let system = tokio::select! {
        biased;
        () = &mut shutdown => {
            let _ = stop_serving.send(());
            server.await??;
            return Ok(());
        }
        system = boot => system?,
    };
    state.set_system(Arc::clone(&system));
    tracing::info!("ready");

    shutdown.await;
    tracing::info!("shutting down: finishing requests in flight");
    let _ = stop_serving.send(());
    server.await??;
    system.shutdown().await.map_err(anyhow::Error::msg).context("flushing the journal")?;
    tracing::info!("journal flushed; bye");
    Ok(())
}

async fn boot(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<System>> {
    let data_dir = config.data_dir.clone();
    let capacity_default = config.platform.capacity;
    let started = std::time::Instant::now();
    let (store, durable) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let store = SledStore::open(&data_dir).context("opening the journal")?;
        let durable = recover(&store, capacity_default).context("replaying the journal")?;
        Ok((store, durable))
    })
    .await??;
    tracing::info!(events = durable.last_seq, live_calls = durable.live_calls.len(), tenants = durable.tenants.len(), replay_ms = started.elapsed().as_millis() as u64, "journal replayed");
    let store: Arc<dyn Store> = Arc::new(store);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let system = System::start(config.settings(), store, durable, clock, metrics).await.context("starting the actors")?;
    Ok(Arc::new(system))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        biased;
        () = ctrl_c => {},
        () = terminate => {},
    }
}
