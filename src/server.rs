//! Running the service: bind, answer `/healthz` at once, replay the journal, boot the actors,
//! become ready; on shutdown stop accepting, finish in-flight requests, flush the journal.
//!
//! The listener is passed in, so tests bind `127.0.0.1:0`; `spawn` hands back a `Running`
//! that tests can inspect (the live `System`) and shut down when they like.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use switchboard_actors::clock::{Clock, SystemClock};
use switchboard_actors::store::{Store, recover};
use switchboard_actors::system::System;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::http::simulations::SimulationStore;
use crate::http::{AppState, app};
use crate::journal::SledStore;
use crate::metrics::Metrics;
use crate::token::{self, TokenSource};

/// A server that is serving (and booting, until `ready` resolves).
pub struct Running {
    pub address: SocketAddr,
    pub admin_token: String,
    state: Arc<AppState>,
    stop_serving: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
    boot: JoinHandle<anyhow::Result<Arc<System>>>,
}

/// Binds the router to `listener` and starts booting the actors in the background.
pub async fn spawn(config: Config, listener: TcpListener, env_token: Option<String>) -> anyhow::Result<Running> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let (admin_token, source) =
        token::resolve(env_token, config.admin_token.as_deref(), &config.data_dir).context("resolving the admin token")?;
    if let TokenSource::Generated = source {
        // Printed once, to the terminal, not to the logs: it is a secret.
        println!("generated admin token (stored in {}): {admin_token}", config.data_dir.join("admin_token").display());
    }
    let metrics = Arc::new(Metrics::default());
    let state = AppState::new(config.clone(), Arc::clone(&metrics), admin_token.clone());
    let address = listener.local_addr()?;
    tracing::info!(%address, data_dir = %config.data_dir.display(), "listening");
    let (stop_serving, stopped) = oneshot::channel::<()>();
    let router = app(Arc::clone(&state));
    let server = tokio::spawn(async move {
        // TCP_NODELAY: a response goes out when it is written, never held back by Nagle's
        // algorithm waiting for the client's delayed ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
        });
        let serving = axum::serve(listener, axum::ServiceExt::into_make_service(router)).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        tokio::select! {
            biased;
            served = serving => served,
            never = timer_anchor() => match never {},
        }
    });
    let boot = tokio::spawn({
        let state = Arc::clone(&state);
        async move {
            open_simulations(&state, &config).await;
            let system = boot(&config, metrics).await?;
            state.set_system(Arc::clone(&system));
            tracing::info!("ready");
            Ok(system)
        }
    });
    Ok(Running { address, admin_token, state, stop_serving, server, boot })
}

/// How far ahead the timer anchor keeps a timer registered.
const TIMER_ANCHOR_PERIOD: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps one timer registered at most [`TIMER_ANCHOR_PERIOD`] ahead, for as long as the server
/// serves.
///
/// tokio's timer driver notes, when it parks, the earliest timer it holds; registering a timer
/// due before that note wakes the driver (a write to its eventfd, and a turn of `epoll_wait`
/// that finds nothing else), even when the thread registering it is the driver's own and
/// running. Every admission registers a deadline (`actor_call_timeout`, 5 s); the calls' and
/// appends' timers are further out (`journal.append_timeout_ms`, 30 s), so whenever the driver
/// parked between admissions, the next admission's deadline woke it: 0.28 eventfd writes per
/// admit+end pair under the README's load, by `perf stat`. With this timer always nearer than
/// any deadline of at least its period (the defaults are 10 and 60 times it), registering one
/// never wakes the driver; it costs one timer firing every half second. A shorter configured
/// deadline only brings the old wake-ups back.
async fn timer_anchor() -> std::convert::Infallible {
    let mut tick = tokio::time::interval(TIMER_ANCHOR_PERIOD);
    // A busy worker that misses ticks does not owe a burst of them.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

impl Running {
    /// Waits until the journal is replayed and the actors are up.
    pub async fn ready(&mut self) -> anyhow::Result<Arc<System>> {
        if let Some(system) = self.system() {
            return Ok(system);
        }
        (&mut self.boot).await.context("boot task")?
    }

    pub fn system(&self) -> Option<Arc<System>> {
        self.state.system().ok().cloned()
    }

    /// Stops accepting, lets requests in flight finish, then flushes the journal and stops
    /// every actor.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!("shutting down: finishing requests in flight");
        let _ = self.stop_serving.send(());
        self.server.await??;
        self.state.simulations.wait_for_runs().await;
        let state = Arc::clone(&self.state);
        tokio::task::spawn_blocking(move || state.simulations.close()).await.context("closing the simulation store")?;
        let system = match self.state.system() {
            Ok(system) => Some(Arc::clone(system)),
            Err(_) => {
                self.boot.abort();
                None
            }
        };
        if let Some(system) = system {
            system.shutdown().await.map_err(anyhow::Error::msg).context("flushing the journal")?;
            tracing::info!("journal flushed; bye");
        }
        Ok(())
    }
}

/// Serves until `shutdown` resolves, then shuts down cleanly.
pub async fn run(
    config: Config,
    listener: TcpListener,
    env_token: Option<String>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut running = spawn(config, listener, env_token).await?;
    tokio::pin!(shutdown);
    tokio::select! {
        biased;
        () = &mut shutdown => return running.shutdown().await,
        booted = running.ready() => { booted?; }
    }
    shutdown.await;
    running.shutdown().await
}

/// Opens the simulation report store before the journal, so a server that is ready serves
/// `/v1/simulations` too. A store that cannot be opened only disables simulations: admission
/// does not depend on them.
async fn open_simulations(state: &AppState, config: &Config) {
    let data_dir = config.data_dir.clone();
    let reports_stored_max = config.simulations.reports_stored_max;
    let opened = tokio::task::spawn_blocking(move || SimulationStore::open(&data_dir, reports_stored_max)).await;
    let store = match opened {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(error.to_string()),
    };
    if let Err(error) = &store {
        tracing::error!(%error, "the simulation store could not be opened: /v1/simulations answers 503");
    }
    state.simulations.set_store(store);
}

async fn boot(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<System>> {
    let data_dir = config.data_dir.clone();
    let started = std::time::Instant::now();
    let (store, durable) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let store = SledStore::open(&data_dir).context("opening the journal")?;
        let durable = recover(&store).context("replaying the journal")?;
        Ok((store, durable))
    })
    .await??;
    let replay_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        events = durable.last_seq,
        live_calls = durable.live_calls.len(),
        tenants = durable.tenants.len(),
        replay_ms,
        "journal replayed"
    );
    let store: Arc<dyn Store> = Arc::new(store);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let system = Arc::new(System::start(config.settings(), store, durable, clock, metrics).await.context("starting the actors")?);
    match &config.dialer.url {
        Some(url) => {
            let timeout = std::time::Duration::from_millis(config.dialer.timeout_ms);
            let dialer = crate::dialer::HttpDialer::new(url, config.dialer.token.clone(), timeout).context("dialer.url")?;
            system.start_dispatcher(Arc::new(dialer)).await;
        }
        None => tracing::warn!("no dialer configured (dialer.url or SWITCHBOARD_DIALER_URL): missed calls are queued, not called back"),
    }
    Ok(system)
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
