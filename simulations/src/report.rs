//! What a run reports: per class and per tenant group, per pool, fairness, starvation, the
//! invariant checks, the digest of the event trace and the concurrency timeline.
//!
//! Everything here is a function of the scenario and the seed: no wall-clock figure is part
//! of a report, so two runs of one seed give equal reports, not only equal digests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub seed: u64,
    /// FNV-1a (64 bit, hex) over the journal: every event's sequence number and bytes, in order.
    pub digest: String,
    /// Journal events written.
    pub events: u64,
    /// Simulated time: the traffic, then the drain until every call ended or was reclaimed.
    pub simulated_ms: u64,
    pub traffic_ms: u64,
    pub starvation_bound_ms: u64,
    /// True when every invariant held.
    pub passed: bool,
    pub invariants: Vec<Invariant>,
    pub classes: BTreeMap<String, Outcomes>,
    pub groups: BTreeMap<String, Outcomes>,
    pub pools: BTreeMap<String, PoolStats>,
    /// Jain's index of admitted/offered across the tenants of each class (1.0: all alike).
    pub fairness: BTreeMap<String, f64>,
    pub starvation: BTreeMap<String, Starvation>,
    pub timeline: Timeline,
}

impl Report {
    pub fn invariant(&self, name: &str) -> Option<&Invariant> {
        self.invariants.iter().find(|i| i.name == name)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Invariant {
    pub name: String,
    pub passed: bool,
    /// Violations seen (0 when it passed).
    pub violations: u64,
    /// The first few violations, or what was checked.
    pub detail: Vec<String>,
}

/// What happened to the calls offered by a class or a group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcomes {
    pub offered: u64,
    pub admitted: u64,
    /// Denials by the code the API would have answered.
    pub denied: BTreeMap<String, u64>,
    /// Premium calls moved to the standard pool.
    pub fell_back: u64,
    /// Inbound calls the provider had already connected: offered, and recorded (all of them,
    /// whatever the limits: they are live at the provider).
    pub connected_inbound_offered: u64,
    pub connected_inbound_recorded: u64,
    /// Of those, recorded over a limit (flagged and alerted).
    pub over_limit_inbound: u64,
    /// Calls the watchdog ended for want of an end webhook or heartbeat.
    pub reclaimed_stale: u64,
    /// Calls ended by a provider 429.
    pub provider_rejected: u64,
    /// End webhooks the scenario lost.
    pub lost_end_webhooks: u64,
    /// Requests that waited for a pool slot (granted or not), and how long.
    pub waited: u64,
    pub wait_ms: Percentiles,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    /// Nearest-rank percentiles; sorts `values`.
    pub fn of(values: &mut [u64]) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_unstable();
        // Nearest rank in whole numbers: ceil(n × percent / 100), never a float's rounding.
        let rank = |percent: usize| values[(values.len() * percent).div_ceil(100).clamp(1, values.len()) - 1];
        Percentiles { p50: rank(50), p95: rank(95), p99: rank(99), max: values[values.len() - 1] }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolStats {
    /// Configured capacity at the start and at the end.
    pub capacity_start: u32,
    pub capacity_end: u32,
    pub peak: u32,
    /// Time-weighted mean of active calls over the traffic period.
    pub mean: f64,
    /// Active calls over the configured capacity, time-weighted over the traffic period.
    pub utilization: f64,
    /// Time with active calls at or above the configured capacity, over the whole run (the
    /// traffic and the drain).
    pub at_capacity_ms: u64,
    /// Time above it, over the whole run (only force-admitted inbound calls, or a capacity
    /// cut, can do that).
    pub over_capacity_ms: u64,
    /// Time in a provider cooldown, up to the end of the run.
    pub cooldown_ms: u64,
    pub provider_rejections: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Starvation {
    pub longest_wait_ms: u64,
    pub bound_ms: u64,
    pub within_bound: bool,
}

/// Concurrency over time: each bucket's peak of total concurrency, broken down by class, and
/// the pools' total configured capacity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub bucket_ms: u64,
    /// Each class, lowest first: its active calls (all pools) at each bucket's peak.
    pub classes: Vec<ClassSeries>,
    /// Configured capacity of all pools together, in each bucket (its largest value).
    pub capacity: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassSeries {
    pub class: String,
    pub peaks: Vec<u32>,
}

impl Timeline {
    /// A class's series, by name.
    pub fn series(&self, class: &str) -> Option<&[u32]> {
        self.classes.iter().find(|s| s.class == class).map(|s| s.peaks.as_slice())
    }

    /// All classes' calls together at `bucket`'s peak.
    pub fn total(&self, bucket: usize) -> u32 {
        self.classes.iter().map(|s| s.peaks.get(bucket).copied().unwrap_or(0)).sum()
    }
}

/// Jain's fairness index of `shares`: (Σx)² / (n·Σx²). 1.0 when all are equal (or all zero).
pub fn jain(shares: &[f64]) -> f64 {
    let sum: f64 = shares.iter().sum();
    let squares: f64 = shares.iter().map(|x| x * x).sum();
    if shares.is_empty() || squares == 0.0 {
        return 1.0;
    }
    (sum * sum) / (shares.len() as f64 * squares)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<u64> = (1..=100).collect();
        assert_eq!(Percentiles::of(&mut values), Percentiles { p50: 50, p95: 95, p99: 99, max: 100 });
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
        assert_eq!(Percentiles::of(&mut [7]), Percentiles { p50: 7, p95: 7, p99: 7, max: 7 });
        let mut values: Vec<u64> = (1..=200).collect();
        assert_eq!(Percentiles::of(&mut values), Percentiles { p50: 100, p95: 190, p99: 198, max: 200 });
    }

    #[test]
    fn jain_is_one_when_equal_and_one_over_n_when_one_takes_all() {
        assert!((jain(&[0.5, 0.5, 0.5]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        assert_eq!(jain(&[]), 1.0);
        assert_eq!(jain(&[0.0, 0.0]), 1.0);
    }
}
