//! `switchboard simulate`, the real binary as a child process: each library scenario gives the
//! same digest in a child process as in this one (determinism across processes), a sweep runs
//! every seed (a failing seed's line is `simulate::failure_line`, unit-tested there), `--svg`
//! writes the chart, and a bad file is refused with its line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use switchboard_simulations::{Limits, Scenario, run};

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.env_remove("SWITCHBOARD_CONFIG").env_remove("SWITCHBOARD_DATA_DIR");
    command
}

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulations/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenario directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        // The reference day is the speed benchmark, not a test.
        .filter(|path| !path.ends_with("reference-day.toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the library: {files:?}");
    files
}

fn simulate(args: &[&str]) -> Output {
    binary().arg("simulate").args(args).output().expect("run switchboard simulate")
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

#[test]
fn every_library_scenario_gives_the_same_digest_in_a_child_process() {
    for path in scenarios() {
        let source = std::fs::read_to_string(&path).expect("read");
        let scenario = Scenario::from_toml(&source, &path.display().to_string()).expect("parse");
        let here = run(&scenario, scenario.seed, &Limits::default()).expect("run");
        let output = simulate(&[path.to_str().expect("utf-8 path"), "--json"]);
        assert!(output.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
        let child = json(&output);
        assert_eq!(child["digest"], here.digest, "{}", path.display());
        assert_eq!(child["seed"], scenario.seed);
        assert_eq!(child["passed"], true);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("x real time"), "the speed goes to stderr: {stderr}");
    }
}

#[test]
fn a_sweep_prints_each_seed_and_the_summary() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulations/scenarios/spike-two-pro.toml");
    let output = simulate(&[path.to_str().expect("path"), "--seeds", "1..4", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.iter().map(|l| l["seed"].as_u64().expect("seed")).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(lines.iter().all(|l| l["passed"] == true));
    assert!(String::from_utf8_lossy(&output.stderr).contains("4 of 4 seeds passed"));
}

#[test]
fn svg_writes_the_chart_with_axes_legend_and_capacity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let svg = dir.path().join("chart.svg");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulations/scenarios/capacity-upgrade-5-to-10.toml");
    let output = simulate(&[path.to_str().expect("path"), "--svg", svg.to_str().expect("svg path")]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let chart = std::fs::read_to_string(&svg).expect("chart written");
    assert!(chart.starts_with("<svg"), "{chart}");
    assert!(chart.trim_end().ends_with("</svg>"));
    for needle in ["simulated time", "concurrent calls", "legend", ">priority<", ">premium<", ">capacity<", "stroke-dasharray"] {
        assert!(chart.contains(needle), "the chart has {needle}");
    }
    assert!(String::from_utf8_lossy(&output.stdout).contains("capacity-upgrade-5-to-10 (seed 4): PASSED"));
}

#[test]
fn a_bad_scenario_is_refused_with_its_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "name = \"bad\"\nduration = \"1m\"\n\n[pools.standard_voice]\ncapacity = -3\n").expect("write");
    let output = simulate(&[path.to_str().expect("path")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.toml:5:"), "{stderr}");
    assert!(stderr.contains("between 1 and"), "{stderr}");
    let output = simulate(&[path.to_str().expect("path"), "--seeds", "9..1"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("bad.toml:5:"), "the file is checked first");
}
