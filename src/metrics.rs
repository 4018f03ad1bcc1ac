//! Prometheus metrics (`GET /metrics`, OpenMetrics text). Names start with `switchboard_`; no
//! label carries a call, tenant or phone number, so cardinality stays bounded by the plans
//! and denial codes in config.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::RwLock;

use switchboard_actors::model::Name;
use switchboard_actors::telemetry::{AdmissionOutcome, Telemetry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlanLabels {
    plan: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: Label,
}

/// A plan's or pool's name as a label value. Every admission and end looks up its plan's and
/// its pool's series: an inline string makes that lookup key without an allocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Label(Name);

impl prometheus_client::encoding::EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitLabels {
    class: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LevelLabels {
    level: &'static str,
}

pub struct Metrics {
    registry: Registry,
    admissions: Family<AdmissionLabels, Counter>,
    active_calls: Family<PlanLabels, Gauge>,
    pool_capacity: Family<PoolLabels, Gauge>,
    pool_active: Family<PoolLabels, Gauge>,
    pool_waiting: Family<PoolLabels, Gauge>,
    provider_rate_limits: Family<PoolLabels, Counter>,
    wait_seconds: Family<WaitLabels, Histogram>,
    premium_fallbacks: Family<ReasonLabels, Counter>,
    usage_alerts: Family<LevelLabels, Counter>,
    callback_events: Family<ReasonLabels, Counter>,
    callback_dispatch_seconds: Histogram,
    journal_flush_seconds: Histogram,
    journal_batch_events: Histogram,
    stuck_calls_reclaimed: Counter,
    inbound_over_limit: Counter,
    worker_threads: Gauge,
    /// Each pool's capacity, active and waiting gauges, set after every platform message: the
    /// series found by a scan of a few inline names, not by hashing a label set three times
    /// behind the families' locks. Bounded by the pools in config (one entry each).
    pool_gauges: RwLock<Vec<(Name, [Gauge; 3])>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Metrics {
            registry: Registry::default(),
            admissions: Family::default(),
            active_calls: Family::default(),
            pool_capacity: Family::default(),
            pool_active: Family::default(),
            pool_waiting: Family::default(),
            provider_rate_limits: Family::default(),
            wait_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
            premium_fallbacks: Family::default(),
            usage_alerts: Family::default(),
            callback_events: Family::default(),
            callback_dispatch_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            journal_flush_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            journal_batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            stuck_calls_reclaimed: Counter::default(),
            inbound_over_limit: Counter::default(),
            worker_threads: Gauge::default(),
            pool_gauges: RwLock::new(Vec::new()),
        };
        // The runtime is built before the config is read (`--worker-threads`), so the
        // operator sees here what it really runs on.
        let workers = tokio::runtime::Handle::try_current().map_or(0, |runtime| runtime.metrics().num_workers());
        metrics.worker_threads.set(i64::try_from(workers).unwrap_or(i64::MAX));
        metrics.register()
    }
}

impl Metrics {
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register("switchboard_admissions", "Admission attempts by outcome and the limit that denied them", self.admissions.clone());
        r.register("switchboard_active_calls", "Live calls by the tenant's plan at admission", self.active_calls.clone());
        r.register(
            "switchboard_pool_capacity",
            "A pool's effective capacity (configured, or learned after a provider 429)",
            self.pool_capacity.clone(),
        );
        r.register("switchboard_pool_active", "Calls holding a slot in a pool", self.pool_active.clone());
        r.register("switchboard_pool_waiting", "Admissions waiting for a slot in a pool", self.pool_waiting.clone());
        r.register("switchboard_provider_rate_limits", "Provider 429s reported for calls on a pool", self.provider_rate_limits.clone());
        r.register(
            "switchboard_admission_wait_seconds",
            "How long admissions waited for a pool slot, by how the wait ended",
            self.wait_seconds.clone(),
        );
        r.register(
            "switchboard_premium_fallbacks",
            "Premium-voice calls placed on the standard pool, by reason",
            self.premium_fallbacks.clone(),
        );
        r.register("switchboard_callback_events", "Missed calls and callback status changes, by event", self.callback_events.clone());
        r.register(
            "switchboard_callback_dispatch_seconds",
            "From a channel freeing (or another trigger) to the callback's dial request",
            self.callback_dispatch_seconds.clone(),
        );
        r.register(
            "switchboard_usage_alerts",
            "Tenants' monthly premium characters crossing 80 %, 95 % or 100 % of their add-on",
            self.usage_alerts.clone(),
        );
        r.register("switchboard_journal_flush_seconds", "Time to write and fsync one journal batch", self.journal_flush_seconds.clone());
        r.register("switchboard_journal_batch_events", "Events per journal batch (group commit)", self.journal_batch_events.clone());
        r.register(
            "switchboard_stuck_calls_reclaimed",
            "Calls the watchdog force-ended as stale or over max duration",
            self.stuck_calls_reclaimed.clone(),
        );
        r.register(
            "switchboard_inbound_over_limit",
            "Inbound calls already connected, recorded over a limit",
            self.inbound_over_limit.clone(),
        );
        r.register(
            "switchboard_runtime_worker_threads",
            "Async worker threads of the server's runtime (--worker-threads, default one per core)",
            self.worker_threads.clone(),
        );
        self
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Telemetry for Metrics {
    fn admission(&self, outcome: AdmissionOutcome, _plan: &str) {
        let labels = match outcome {
            AdmissionOutcome::Admitted => AdmissionLabels { outcome: "admitted", reason: "" },
            AdmissionOutcome::ForcedOverLimit => {
                self.inbound_over_limit.inc();
                AdmissionLabels { outcome: "admitted_over_limit", reason: "INBOUND_OVER_LIMIT" }
            }
            AdmissionOutcome::Denied(reason) => AdmissionLabels { outcome: "denied", reason },
        };
        self.admissions.get_or_create(&labels).inc();
    }

    fn active_calls(&self, plan: &str, delta: i64) {
        self.active_calls.get_or_create(&PlanLabels { plan: Label(plan.into()) }).inc_by(delta);
    }

    fn stuck_call_reclaimed(&self) {
        self.stuck_calls_reclaimed.inc();
    }

    fn journal_flushed(&self, seconds: f64, events: usize) {
        self.journal_flush_seconds.observe(seconds);
        self.journal_batch_events.observe(events as f64);
    }

    fn pool(&self, pool: &str, capacity: u32, active: u32, waiting: u32) {
        let values = [capacity, active, waiting].map(i64::from);
        let set = |gauges: &[Gauge; 3]| {
            for (gauge, value) in gauges.iter().zip(values) {
                gauge.set(value);
            }
        };
        let known = self.pool_gauges.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, gauges)) = known.iter().find(|(name, _)| name == pool) {
            return set(gauges);
        }
        drop(known);
        // A pool's first report: its series, created once and kept (a `Gauge` shares its value).
        let labels = PoolLabels { pool: Label(pool.into()) };
        let gauges = [&self.pool_capacity, &self.pool_active, &self.pool_waiting].map(|family| family.get_or_create(&labels).clone());
        set(&gauges);
        let mut known = self.pool_gauges.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !known.iter().any(|(name, _)| name == pool) {
            known.push((pool.into(), gauges));
        }
    }

    fn provider_rate_limited(&self, pool: &str) {
        self.provider_rate_limits.get_or_create(&PoolLabels { pool: Label(pool.into()) }).inc();
    }

    fn wait_ended(&self, class: &str, outcome: &'static str, seconds: f64) {
        self.wait_seconds.get_or_create(&WaitLabels { class: class.to_owned(), outcome }).observe(seconds);
    }

    fn premium_fallback(&self, reason: &str) {
        self.premium_fallbacks.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }

    fn usage_alert(&self, level: &'static str) {
        self.usage_alerts.get_or_create(&LevelLabels { level }).inc();
    }

    fn callback_event(&self, event: &'static str) {
        self.callback_events.get_or_create(&ReasonLabels { reason: event.to_owned() }).inc();
    }

    fn callback_dispatched(&self, seconds: f64) {
        self.callback_dispatch_seconds.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached series are the exported ones: a pool's later reports move the same gauges,
    /// and each pool keeps its own.
    #[test]
    fn pool_gauges_follow_every_report() {
        let metrics = Metrics::default();
        metrics.pool("standard_voice", 5, 1, 0);
        metrics.pool("premium_voice", 2, 0, 0);
        metrics.pool("standard_voice", 4, 3, 2);
        let text = metrics.encode();
        for line in [
            "switchboard_pool_capacity{pool=\"standard_voice\"} 4",
            "switchboard_pool_active{pool=\"standard_voice\"} 3",
            "switchboard_pool_waiting{pool=\"standard_voice\"} 2",
            "switchboard_pool_capacity{pool=\"premium_voice\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        metrics.active_calls("PRO", 2);
        metrics.active_calls("PRO", -1);
        assert!(metrics.encode().lines().any(|l| l == "switchboard_active_calls{plan=\"PRO\"} 1"));
    }
}
