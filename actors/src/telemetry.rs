//! What the actors report for metrics. The HTTP crate implements it with Prometheus; the
//! simulator counts in memory. Keeping it a trait keeps `prometheus-client` out of the cores.

/// How an admission attempt ended, for `switchboard_admissions_total{outcome, reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmissionOutcome {
    Admitted,
    /// Inbound, already connected, recorded over a limit.
    ForcedOverLimit,
    Denied(&'static str),
}

pub trait Telemetry: Send + Sync + 'static {
    fn admission(&self, outcome: AdmissionOutcome, plan: &str);
    /// A live call of `plan` appeared (+1: admitted or recovered) or ended (-1).
    fn active_calls(&self, plan: &str, delta: i64);
    fn stuck_call_reclaimed(&self);
    fn journal_flushed(&self, seconds: f64, events: usize);
    /// A pool's effective capacity, active calls and waiters.
    fn pool(&self, pool: &str, capacity: u32, active: u32, waiting: u32);
    /// The provider answered 429 for a call on `pool`.
    fn provider_rate_limited(&self, pool: &str);
    /// A wait for a pool slot ended (`granted`, `timed_out`, `cancelled` or `cooldown`).
    fn wait_ended(&self, class: &str, outcome: &'static str, seconds: f64);
    /// A premium call went to the standard pool.
    fn premium_fallback(&self, reason: &str);
    /// A tenant's monthly premium characters crossed an alert level.
    fn usage_alert(&self, level: &'static str);
    /// A callback entry event: `missed`, `missed_again`, `missed_retried` (an attempt already
    /// counted), `queue_full`, or the status it moved to.
    fn callback_event(&self, event: &'static str);
    /// From a channel freeing (or another trigger) to the callback's dial request.
    fn callback_dispatched(&self, seconds: f64);
}

/// Discards everything (unit tests).
#[derive(Debug, Default)]
pub struct NoTelemetry;

impl Telemetry for NoTelemetry {
    fn admission(&self, _: AdmissionOutcome, _: &str) {}
    fn active_calls(&self, _: &str, _: i64) {}
    fn stuck_call_reclaimed(&self) {}
    fn journal_flushed(&self, _: f64, _: usize) {}
    fn pool(&self, _: &str, _: u32, _: u32, _: u32) {}
    fn provider_rate_limited(&self, _: &str) {}
    fn wait_ended(&self, _: &str, _: &'static str, _: f64) {}
    fn premium_fallback(&self, _: &str) {}
    fn usage_alert(&self, _: &'static str) {}
    fn callback_event(&self, _: &'static str) {}
    fn callback_dispatched(&self, _: f64) {}
}
