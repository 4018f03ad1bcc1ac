//! switchboard: call admission and orchestration for multi-tenant AI voice-agent platforms.
//!
//! # Layout
//! - `server`: binds, replays the journal, boots the actors, serves, shuts down cleanly.
//! - `http`: the axum facade (`app(state)`), problem+json errors, auth, extraction, handlers.
//! - `journal`: the sled `Store` behind the journal writer.
//! - `config`: TOML configuration, its defaults and bounds.
//! - `metrics`: Prometheus metrics (the actors' `Telemetry`).
//! - `token`: the admin bearer token.
//! - `client`, `loadgen`: a tiny HTTP client and the `switchboard loadgen` benchmark driver.
//! - `wire`: the bare HTTP/1.1 connection of loadgen's load phase.
//! - `simulate`: the `switchboard simulate` command (the engine is `switchboard-simulations`).
//!
//! The domain itself (cores, actors, the admission path) is the `switchboard-actors` crate.

pub mod alloc;
pub mod client;
pub mod config;
pub mod dialer;
pub mod http;
pub mod journal;
pub mod loadgen;
pub mod metrics;
pub mod server;
pub mod simulate;
pub mod token;
pub mod wire;
