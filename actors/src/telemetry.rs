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
    fn platform(&self, capacity: u32, active: u32);
}

/// Discards everything (unit tests).
#[derive(Debug, Default)]
pub struct NoTelemetry;

impl Telemetry for NoTelemetry {
    fn admission(&self, _: AdmissionOutcome, _: &str) {}
    fn active_calls(&self, _: &str, _: i64) {}
    fn stuck_call_reclaimed(&self) {}
    fn journal_flushed(&self, _: f64, _: usize) {}
    fn platform(&self, _: u32, _: u32) {}
}
