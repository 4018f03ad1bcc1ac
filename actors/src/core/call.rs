//! The live call's core: heartbeats and the watchdog's verdict.
//!
//! A call is stuck when it outlives `max_duration_ms` or has shown no heartbeat or status for
//! `stale_after_ms` (seed 000 P0: the end webhook got lost). The sweep asks `verdict(now)`.

use crate::model::{CallRecord, EndedCall};
use std::sync::Arc;

/// The watchdog's limits, from config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watchdog {
    pub max_duration_ms: u64,
    pub stale_after_ms: u64,
}

/// Why the watchdog reclaims a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stuck {
    OverMaxDuration,
    NoHeartbeat,
}

impl Stuck {
    pub fn as_str(self) -> &'static str {
        match self {
            Stuck::OverMaxDuration => "max_duration",
            Stuck::NoHeartbeat => "stale",
        }
    }
}

/// What an end webhook reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndReport {
    pub outcome: crate::model::Name,
    /// Measured from the call's start when absent.
    pub duration_s: Option<u64>,
    pub characters: Option<u64>,
}

impl EndReport {
    pub fn outcome(outcome: &str) -> EndReport {
        EndReport { outcome: outcome.into(), duration_s: None, characters: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallCore {
    pub record: Arc<CallRecord>,
    pub ended: Option<EndedCall>,
}

impl CallCore {
    pub fn new(record: Arc<CallRecord>) -> Self {
        CallCore { record, ended: None }
    }

    pub fn verdict(&self, now_ms: u64, watchdog: Watchdog) -> Option<Stuck> {
        if self.ended.is_some() {
            return None;
        }
        stuck(&self.record, now_ms, watchdog)
    }

    /// The final record an end at `now_ms` would produce. Nothing changes until the caller has
    /// made it durable and calls `commit_end`.
    pub fn end_record(&self, now_ms: u64, end: EndReport, cost_cents: u64) -> EndedCall {
        let elapsed_ms = now_ms.saturating_sub(self.record.started_at_ms);
        EndedCall {
            call: self.record.clone(),
            ended_at_ms: now_ms,
            outcome: end.outcome,
            duration_s: end.duration_s.unwrap_or(elapsed_ms.div_ceil(1000)),
            characters: end.characters.unwrap_or(0),
            cost_cents,
        }
    }

    pub fn commit_end(&mut self, ended: EndedCall) {
        assert!(self.ended.is_none(), "a call ends once");
        self.ended = Some(ended);
    }

    pub fn heartbeat(&mut self, now_ms: u64) {
        let record = Arc::make_mut(&mut self.record);
        record.last_activity_at_ms = record.last_activity_at_ms.max(now_ms);
    }
}

/// Whether a call with this record is stuck at `now_ms`. The record's `last_activity_at_ms`
/// only grows, so an older copy of the record (the directory's, as admitted) can only say
/// "maybe stuck" too early, never too late: the watchdog's sweep asks only those calls.
pub fn stuck(record: &CallRecord, now_ms: u64, watchdog: Watchdog) -> Option<Stuck> {
    let age_ms = now_ms.saturating_sub(record.started_at_ms);
    let quiet_ms = now_ms.saturating_sub(record.last_activity_at_ms);
    if age_ms >= watchdog.max_duration_ms {
        Some(Stuck::OverMaxDuration)
    } else if quiet_ms >= watchdog.stale_after_ms {
        Some(Stuck::NoHeartbeat)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(started_at_ms: u64) -> CallCore {
        CallCore::new(crate::model::test_call(1, started_at_ms))
    }

    const WATCHDOG: Watchdog = Watchdog { max_duration_ms: 1000, stale_after_ms: 300 };

    #[test]
    fn heartbeats_keep_a_call_alive_until_max_duration() {
        let mut core = call(0);
        assert_eq!(core.verdict(299, WATCHDOG), None);
        assert_eq!(core.verdict(300, WATCHDOG), Some(Stuck::NoHeartbeat));
        core.heartbeat(250);
        core.heartbeat(500);
        core.heartbeat(750);
        assert_eq!(core.verdict(800, WATCHDOG), None);
        assert_eq!(core.verdict(1000, WATCHDOG), Some(Stuck::OverMaxDuration));
    }

    #[test]
    fn end_record_rounds_duration_up_and_ended_calls_are_never_stuck() {
        let mut core = call(1_000);
        let ended = core.end_record(2_001, EndReport::outcome("completed"), 0);
        assert_eq!(ended.duration_s, 2);
        core.commit_end(ended);
        assert_eq!(core.verdict(1_000_000, WATCHDOG), None);
    }
}
