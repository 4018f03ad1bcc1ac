//! The speed benchmark: `cargo bench -p switchboard-simulations --bench reference_day`.
//!
//! Runs `scenarios/reference-day.toml` (one simulated day, 10 000 tenants, about 1 000 000
//! calls) once through the production actors on virtual time and prints one JSON line: wall
//! seconds, simulated seconds per wall second, calls, journal events and whether every
//! invariant held. Target on the 2-core reference machine: at most 30 s of wall time.
//! `SWITCHBOARD_BENCH_SCENARIO` runs another scenario file instead.

#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

/// The server's allocator, so that this measures what `switchboard simulate` runs on.
#[path = "../../src/alloc.rs"]
#[allow(dead_code, unused_imports)]
mod alloc;

use std::path::PathBuf;
use std::time::Instant;

use switchboard_simulations::{Limits, Scenario, run};

fn main() {
    let path = std::env::var("SWITCHBOARD_BENCH_SCENARIO")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/reference-day.toml"));
    let source = std::fs::read_to_string(&path).expect("read the scenario");
    let scenario = Scenario::from_toml(&source, &path.display().to_string()).expect("parse the scenario");
    let started = Instant::now();
    let report = run(&scenario, scenario.seed, &Limits::default()).expect("run");
    let wall_s = started.elapsed().as_secs_f64();
    let calls: u64 = report.classes.values().map(|o| o.offered).sum();
    let simulated_s = report.simulated_ms as f64 / 1000.0;
    let line = serde_json::json!({
        "scenario": report.scenario,
        "wall_s": (wall_s * 100.0).round() / 100.0,
        "simulated_s": simulated_s,
        "speedup": (simulated_s / wall_s).round(),
        "calls": calls,
        "calls_per_wall_s": (calls as f64 / wall_s).round(),
        "events": report.events,
        "passed": report.passed,
        "digest": report.digest,
    });
    println!("{line}");
}
