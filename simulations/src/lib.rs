//! Deterministic simulations: switchboard's own actors on virtual time, driven by scenario
//! files, checked by invariants, replayable bit for bit from a seed.
//!
//! - `scenario`: the file format (TOML or JSON) and its checks, with file/line errors.
//! - `engine`: runs a scenario on a paused current-thread runtime with the in-memory journal.
//! - `trace`: the journal store that watches every event: digest, model, invariants, timeline.
//! - `report`: what a run reports; `chart`: its SVG.
//! - `rng`: the seeded generator.

pub mod chart;
pub mod engine;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod trace;

pub use engine::{Limits, RunError, run};
pub use report::Report;
pub use scenario::{Scenario, ScenarioError};
