//! `switchboard simulate FILE [--seed N] [--seeds A..B] [--json] [--svg OUT]`.
//!
//! One seed: prints the report (a summary, or the whole report as JSON) and exits 1 if an
//! invariant failed. A sweep (`--seeds A..B`, both ends included) runs every seed and prints
//! each failing one with the command that replays it. The wall time and the speed go to stderr:
//! they are the only figures that are not a function of the seed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use switchboard_simulations::{Limits, Report, Scenario, chart};

/// Seeds one sweep may run.
pub const SWEEP_SEEDS_MAX: u64 = 1_000_000;

pub struct SimulateArgs {
    pub file: PathBuf,
    pub seed: Option<u64>,
    pub seeds: Option<String>,
    pub json: bool,
    pub svg: Option<PathBuf>,
}

/// Parses `A..B` (inclusive) or `A..=B`.
pub fn parse_seeds(text: &str) -> Result<(u64, u64), String> {
    let (from, to) = text.split_once("..").ok_or_else(|| format!("--seeds {text:?}: expected a range like 1..100"))?;
    let to = to.strip_prefix('=').unwrap_or(to);
    let from: u64 = from.trim().parse().map_err(|_| format!("--seeds {text:?}: {from:?} is not a seed"))?;
    let to: u64 = to.trim().parse().map_err(|_| format!("--seeds {text:?}: {to:?} is not a seed"))?;
    if to < from {
        return Err(format!("--seeds {text:?}: the range is empty"));
    }
    if to - from >= SWEEP_SEEDS_MAX {
        return Err(format!("--seeds {text:?}: at most {SWEEP_SEEDS_MAX} seeds in one sweep"));
    }
    Ok((from, to))
}

pub fn load(file: &Path) -> anyhow::Result<Scenario> {
    let source = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok(Scenario::from_toml(&source, &file.display().to_string())?)
}

/// Runs the command; returns whether everything passed.
pub fn run(args: SimulateArgs) -> anyhow::Result<bool> {
    let scenario = load(&args.file)?;
    let limits = Limits::default();
    if let Some(range) = &args.seeds {
        let (from, to) = parse_seeds(range).map_err(anyhow::Error::msg)?;
        if args.svg.is_some() {
            anyhow::bail!("--svg draws one run: use --seed, not --seeds");
        }
        return sweep(&scenario, &args.file, from, to, args.json, &limits);
    }
    let seed = args.seed.unwrap_or(scenario.seed);
    let started = Instant::now();
    let report = switchboard_simulations::run(&scenario, seed, &limits)?;
    let wall = started.elapsed().as_secs_f64();
    eprintln!("{}", speed(&report, wall));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, chart::svg(&report)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if !report.passed {
        eprintln!("invariants failed; replay with: {}", replay_command(&args.file, seed));
    }
    Ok(report.passed)
}

fn sweep(scenario: &Scenario, file: &Path, from: u64, to: u64, json: bool, limits: &Limits) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut failed = 0u64;
    for seed in from..=to {
        // A run that fails outright (not an invariant) is a failing seed too: the sweep goes on.
        let report = match switchboard_simulations::run(scenario, seed, limits) {
            Ok(report) => report,
            Err(error) => {
                if json {
                    println!("{}", serde_json::json!({"seed": seed, "passed": false, "error": error.to_string()}));
                } else {
                    println!("seed {seed} failed to run ({error}): {}", replay_command(file, seed));
                }
                failed += 1;
                continue;
            }
        };
        if json {
            let failing: Vec<&str> = report.invariants.iter().filter(|i| !i.passed).map(|i| i.name.as_str()).collect();
            let line = serde_json::json!({"seed": seed, "digest": report.digest, "passed": report.passed, "failed": failing});
            println!("{line}");
        } else if let Some(line) = failure_line(file, &report) {
            println!("{line}");
        }
        failed += u64::from(!report.passed);
    }
    let runs = to - from + 1;
    eprintln!("{} of {runs} seeds passed in {:.1} s", runs - failed, started.elapsed().as_secs_f64());
    Ok(failed == 0)
}

/// A failing seed's line in a sweep: which invariants failed, and the command that replays it.
pub fn failure_line(file: &Path, report: &Report) -> Option<String> {
    let failing: Vec<&str> = report.invariants.iter().filter(|i| !i.passed).map(|i| i.name.as_str()).collect();
    (!failing.is_empty()).then(|| format!("seed {} failed {}: {}", report.seed, failing.join(", "), replay_command(file, report.seed)))
}

fn replay_command(file: &Path, seed: u64) -> String {
    format!("switchboard simulate {} --seed {seed}", file.display())
}

/// Simulated seconds per wall second: the speed figure.
pub fn speed(report: &Report, wall_s: f64) -> String {
    let simulated_s = report.simulated_ms as f64 / 1000.0;
    format!(
        "simulated {simulated_s:.0} s ({} events) in {wall_s:.2} s wall: {:.0}x real time",
        report.events,
        simulated_s / wall_s.max(1e-9)
    )
}

/// A human summary of a report.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    let verdict = if report.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(out, "{} (seed {}): {verdict}, digest {}", report.scenario, report.seed, report.digest);
    if !report.description.is_empty() {
        let _ = writeln!(out, "  {}", report.description);
    }
    let _ = writeln!(out, "\ninvariants:");
    for invariant in &report.invariants {
        let mark = if invariant.passed { "ok  " } else { "FAIL" };
        let _ = writeln!(out, "  {mark} {} ({} violations)", invariant.name, invariant.violations);
        if !invariant.passed {
            for example in &invariant.detail {
                let _ = writeln!(out, "         {example}");
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{:<12} {:>9} {:>9} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}  denied",
        "class", "offered", "admitted", "waited", "p99 wait", "max wait", "fairness", "over", "stale"
    );
    for (class, o) in &report.classes {
        let fairness = report.fairness.get(class).copied().unwrap_or(1.0);
        let denied: Vec<String> = o.denied.iter().map(|(code, n)| format!("{code} {n}")).collect();
        let _ = writeln!(
            out,
            "{class:<12} {:>9} {:>9} {:>8} {:>7}ms {:>6}ms {fairness:>8.3} {:>8} {:>8}  {}",
            o.offered,
            o.admitted,
            o.waited,
            o.wait_ms.p99,
            o.wait_ms.max,
            o.over_limit_inbound,
            o.reclaimed_stale,
            denied.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:>9} {:>6} {:>8} {:>8} {:>12} {:>12} {:>12}",
        "pool", "capacity", "peak", "mean", "util", "at cap", "over cap", "cooldown"
    );
    for (pool, p) in &report.pools {
        let _ = writeln!(
            out,
            "{pool:<16} {:>4}→{:<4} {:>6} {:>8.1} {:>7.1}% {:>10.0}s {:>10.0}s {:>10.0}s",
            p.capacity_start,
            p.capacity_end,
            p.peak,
            p.mean,
            p.utilization * 100.0,
            p.at_capacity_ms as f64 / 1000.0,
            p.over_capacity_ms as f64 / 1000.0,
            p.cooldown_ms as f64 / 1000.0
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_seed_names_its_invariants_and_the_replay_command() {
        let scenario = Scenario::from_toml(
            "name = \"t\"\nduration = \"1m\"\n[pools.standard_voice]\ncapacity = 1\n[[groups]]\nname = \"g\"\ncount = 1\nplan = \"PRO\"\n",
            "t.toml",
        )
        .expect("scenario");
        let mut report = switchboard_simulations::run(&scenario, 42, &Limits::default()).expect("run");
        let file = Path::new("scenarios/t.toml");
        assert_eq!(failure_line(file, &report), None, "all passed");
        report.invariants[0].passed = false;
        report.invariants[2].passed = false;
        let expected = format!(
            "seed 42 failed {}, {}: switchboard simulate scenarios/t.toml --seed 42",
            report.invariants[0].name, report.invariants[2].name
        );
        assert_eq!(failure_line(file, &report), Some(expected));
    }

    #[test]
    fn seed_ranges_are_inclusive_and_bounded() {
        assert_eq!(parse_seeds("1..10000"), Ok((1, 10_000)));
        assert_eq!(parse_seeds("5..=5"), Ok((5, 5)));
        assert!(parse_seeds("9..1").is_err());
        assert!(parse_seeds("1-9").is_err());
        assert!(parse_seeds("0..5000000").is_err());
    }
}
