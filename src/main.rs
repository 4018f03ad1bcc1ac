//! The `switchboard` binary: `serve` (the default), `loadgen` and `simulate`.

#[global_allocator]
static ALLOCATOR: switchboard::alloc::Allocator = switchboard::alloc::Allocator;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use switchboard::config::Config;
use switchboard::loadgen::{self, LoadgenArgs};
use switchboard::simulate::SimulateArgs;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "switchboard", version, about = "Call admission and orchestration for AI voice-agent platforms")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve(ServeArgs),
    /// Drive admit+end pairs against a running server and print a JSON report.
    Loadgen(LoadgenCli),
    /// Run a scenario on the real actors in virtual time and print its report.
    Simulate(SimulateCli),
}

#[derive(Args)]
struct SimulateCli {
    /// The scenario (TOML), e.g. simulations/scenarios/spike-two-pro.toml.
    file: PathBuf,
    /// The seed [default: the scenario's].
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Sweep seeds A..B (both included); prints each failing seed and how to replay it.
    #[arg(long)]
    seeds: Option<String>,
    /// Print the whole report as JSON (a sweep prints one JSON line per seed).
    #[arg(long)]
    json: bool,
    /// Write the concurrency chart (SVG) here.
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Where the journal and the admin token live [default: ./data].
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Async worker threads [default: one per core]. The journal's disk writes run on a thread
    /// of their own either way. On a machine shared with other busy processes (a load
    /// generator), fewer workers than cores spend less time waking each other.
    #[arg(long, env = "SWITCHBOARD_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=WORKER_THREADS_MAX))]
    worker_threads: Option<u16>,
}

/// The most async worker threads `--worker-threads` accepts.
const WORKER_THREADS_MAX: i64 = 256;

#[derive(Args)]
struct LoadgenCli {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN")]
    token: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// Async worker threads of the load generator. One keeps it from competing with the
    /// server it measures for more than a core.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=WORKER_THREADS_MAX))]
    worker_threads: u16,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Simulate(args)) = cli.command {
        // Runs on a thread of its own with its own runtime; no service runtime needed.
        let args = SimulateArgs { file: args.file, seed: args.seed, seeds: args.seeds, json: args.json, svg: args.svg };
        let passed = switchboard::simulate::run(args)?;
        std::process::exit(if passed { 0 } else { 1 });
    }
    let worker_threads = match &cli.command {
        Some(Command::Loadgen(args)) => Some(args.worker_threads),
        Some(Command::Serve(args)) => args.worker_threads,
        _ => cli.serve.worker_threads,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(usize::from(threads));
    }
    let runtime = builder.enable_all().build()?;
    match cli.command {
        Some(Command::Loadgen(args)) => runtime.block_on(loadgen::run_and_print(LoadgenArgs {
            url: args.url,
            token: args.token,
            connections: args.connections,
            duration_s: args.duration,
            tenants: args.tenants,
        })),
        Some(Command::Serve(args)) => runtime.block_on(serve(args)),
        Some(Command::Simulate(_)) => unreachable!("handled above"),
        None => runtime.block_on(serve(cli.serve)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let colours = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colours).init();
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Ok(url) = std::env::var("SWITCHBOARD_DIALER_URL") {
        config.dialer.url = Some(url);
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let env_token = std::env::var("SWITCHBOARD_ADMIN_TOKEN").ok();
    switchboard::server::run(config, listener, env_token, switchboard::server::shutdown_signal()).await
}
