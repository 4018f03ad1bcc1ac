//! One line's callback queue: its open missed-call entries and the decisions on them.
//!
//! Pure: the callback-queue actor asks it what a missed call or a transition means, journals
//! that, then applies the journaled event here (the same event the durable state applies).

use std::collections::BTreeMap;

use crate::event::Event;
use crate::model::{CallbackEntry, CallbackId, CallbackPriority, CallbackStatus, MissedAttempt, MissedReason};

/// What a missed call does to the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Missed {
    /// A new entry (the caller had none open).
    New(CallbackEntry),
    /// The caller's open entry counts one more missed attempt.
    Repeat(CallbackId),
    /// The caller's open entry already counted this attempt (a retried webhook): nothing
    /// changes, and the answer is the entry as it is.
    Counted(CallbackId),
    /// The queue is at its bound: refused, with an alert.
    Full { open: usize },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallbackQueue {
    /// Open entries only (closed ones live in the durable state for the API).
    entries: BTreeMap<CallbackId, CallbackEntry>,
}

impl CallbackQueue {
    pub fn new(entries: BTreeMap<CallbackId, CallbackEntry>) -> Self {
        CallbackQueue { entries: entries.into_iter().filter(|(_, e)| e.status.is_open()).collect() }
    }

    pub fn entries(&self) -> &BTreeMap<CallbackId, CallbackEntry> {
        &self.entries
    }

    pub fn get(&self, id: CallbackId) -> Option<&CallbackEntry> {
        self.entries.get(&id)
    }

    /// A caller missed the line. An attempt one of the caller's open entries already counted (a
    /// retried webhook, also while that entry's callback is in progress) changes nothing.
    /// Otherwise an entry still waiting for this caller (pending, on hold or short of credits)
    /// counts the repeat instead of opening a second one.
    #[allow(clippy::too_many_arguments)]
    pub fn missed(
        &self,
        next_id: CallbackId,
        line_id: &str,
        tenant_id: &str,
        caller: &str,
        reason: MissedReason,
        attempt: Option<&MissedAttempt>,
        on_hold: bool,
        now_ms: u64,
        open_max: usize,
    ) -> Missed {
        let waiting = |e: &&CallbackEntry| {
            e.caller == caller && matches!(e.status, CallbackStatus::Pending | CallbackStatus::OnHold | CallbackStatus::InsufficientCredits)
        };
        if let Some(attempt) = attempt
            && let Some(counted) = self.entries.values().find(|e| e.caller == caller && e.counted(attempt))
        {
            return Missed::Counted(counted.id);
        }
        if let Some(open) = self.entries.values().find(waiting) {
            return Missed::Repeat(open.id);
        }
        if self.entries.len() >= open_max {
            return Missed::Full { open: self.entries.len() };
        }
        let (priority, status) =
            if on_hold { (CallbackPriority::Low, CallbackStatus::OnHold) } else { (CallbackPriority::High, CallbackStatus::Pending) };
        Missed::New(CallbackEntry {
            id: next_id,
            line_id: line_id.into(),
            tenant_id: tenant_id.into(),
            caller: caller.to_owned(),
            reason,
            priority,
            status,
            missed_at_ms: now_ms,
            last_missed_at_ms: now_ms,
            missed_count: 1,
            call_id: None,
            dialed: false,
            failure_reason: None,
            updated_at_ms: now_ms,
            attempts: attempt.into_iter().cloned().collect(),
        })
    }

    /// The entry to call back next: pending, high priority first, then the earliest missed.
    pub fn next_pending(&self) -> Option<&CallbackEntry> {
        self.entries
            .values()
            .filter(|e| e.status == CallbackStatus::Pending)
            .min_by_key(|e| (e.priority != CallbackPriority::High, e.missed_at_ms, e.id))
    }

    /// Entries short of credits, to return to pending when credits arrive.
    pub fn short_of_credits(&self) -> Vec<CallbackId> {
        self.entries.values().filter(|e| e.status == CallbackStatus::InsufficientCredits).map(|e| e.id).collect()
    }

    /// Applies a journaled event about this line's entries (others are ignored).
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::MissedCallRecorded(entry) => {
                self.entries.insert(entry.id, entry.clone());
            }
            Event::MissedCallRepeated { id, at_ms, attempt } => {
                if let Some(entry) = self.entries.get_mut(id) {
                    entry.count_repeat(*at_ms, attempt.as_ref());
                }
            }
            Event::CallbackUpdated { id, status, call_id, dialed, failure_reason, at_ms } => {
                if let Some(entry) = self.entries.get_mut(id) {
                    entry.update(*status, *call_id, *dialed, failure_reason.clone(), *at_ms);
                    if !status.is_open() {
                        self.entries.remove(id);
                    }
                }
            }
            _ => {}
        }
    }

    /// A closed entry reopened by a retry (it comes back from the durable state).
    pub fn reopen(&mut self, entry: CallbackEntry) {
        self.entries.insert(entry.id, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MISSED_ATTEMPTS_REMEMBERED_MAX;

    /// Records one missed call as the queue actor does: decide, then apply the event.
    fn record(queue: &mut CallbackQueue, id: u64, caller: &str, attempt: Option<&MissedAttempt>, at_ms: u64) -> Missed {
        let missed = queue.missed(CallbackId(id), "+1415", "t", caller, MissedReason::Busy, attempt, false, at_ms, 3);
        match &missed {
            Missed::New(entry) => queue.apply(&Event::MissedCallRecorded(entry.clone())),
            Missed::Repeat(id) => queue.apply(&Event::MissedCallRepeated { id: *id, at_ms, attempt: attempt.cloned() }),
            Missed::Counted(_) | Missed::Full { .. } => {}
        }
        missed
    }

    fn queue_with(missed: &[(&str, u64)]) -> CallbackQueue {
        let mut queue = CallbackQueue::default();
        for (n, (caller, at)) in missed.iter().enumerate() {
            record(&mut queue, n as u64 + 1, caller, None, *at);
        }
        queue
    }

    #[test]
    fn a_repeat_caller_counts_on_the_open_entry_and_the_bound_refuses_new_callers() {
        let queue = queue_with(&[("+1", 10), ("+2", 20), ("+1", 30), ("+3", 40)]);
        assert_eq!(queue.entries().len(), 3);
        assert_eq!(queue.get(CallbackId(1)).unwrap().missed_count, 2);
        assert_eq!(queue.get(CallbackId(1)).unwrap().last_missed_at_ms, 30);
        let full = queue.missed(CallbackId(9), "+1415", "t", "+4", MissedReason::Busy, None, false, 50, 3);
        assert_eq!(full, Missed::Full { open: 3 });
        assert!(matches!(queue.missed(CallbackId(9), "+1415", "t", "+2", MissedReason::NoAnswer, None, false, 50, 3), Missed::Repeat(_)));
    }

    #[test]
    fn a_retried_attempt_is_counted_once_and_the_oldest_attempts_are_forgotten() {
        let call = |n: usize| MissedAttempt::ProviderCall(format!("CA{n}"));
        let mut queue = CallbackQueue::default();
        assert!(matches!(record(&mut queue, 1, "+1", Some(&call(0)), 10), Missed::New(_)));
        assert_eq!(record(&mut queue, 2, "+1", Some(&call(0)), 11), Missed::Counted(CallbackId(1)), "the first attempt, retried");
        // Another caller's entry does not know this caller's attempts.
        assert!(matches!(record(&mut queue, 3, "+2", Some(&call(0)), 12), Missed::New(_)));
        // A key and a provider call id with the same text are different attempts.
        let key = MissedAttempt::IdempotencyKey("CA0".into());
        assert_eq!(record(&mut queue, 4, "+1", Some(&key), 13), Missed::Repeat(CallbackId(1)));
        assert_eq!(record(&mut queue, 5, "+1", Some(&key), 14), Missed::Counted(CallbackId(1)));
        // Without a name an attempt cannot be recognised: it always counts.
        assert_eq!(record(&mut queue, 6, "+1", None, 15), Missed::Repeat(CallbackId(1)));
        let entry = queue.get(CallbackId(1)).unwrap();
        assert_eq!((entry.missed_count, entry.last_missed_at_ms, entry.attempts.clone()), (3, 15, vec![call(0), key.clone()]));

        for n in 1..MISSED_ATTEMPTS_REMEMBERED_MAX {
            assert_eq!(record(&mut queue, 10 + n as u64, "+1", Some(&call(n)), 20), Missed::Repeat(CallbackId(1)));
        }
        let entry = queue.get(CallbackId(1)).unwrap();
        assert_eq!(entry.attempts.len(), MISSED_ATTEMPTS_REMEMBERED_MAX);
        assert_eq!(entry.attempts[0], key, "the oldest, CA0, was forgotten first");
        assert_eq!(record(&mut queue, 30, "+1", Some(&call(0)), 30), Missed::Repeat(CallbackId(1)), "forgotten, so it counts again");
        assert_eq!(record(&mut queue, 31, "+1", Some(&call(MISSED_ATTEMPTS_REMEMBERED_MAX - 1)), 31), Missed::Counted(CallbackId(1)));
        assert_eq!(queue.get(CallbackId(1)).unwrap().missed_count, 3 + MISSED_ATTEMPTS_REMEMBERED_MAX as u32);
    }

    #[test]
    fn a_retry_while_the_callback_is_in_progress_is_counted_and_a_closed_entry_forgets() {
        let (first, second) = (MissedAttempt::ProviderCall("CA1".into()), MissedAttempt::ProviderCall("CA2".into()));
        let mut queue = CallbackQueue::default();
        record(&mut queue, 1, "+1", Some(&first), 10);
        let update =
            |status| Event::CallbackUpdated { id: CallbackId(1), status, call_id: None, dialed: true, failure_reason: None, at_ms: 20 };
        queue.apply(&update(CallbackStatus::Processing));
        // The callback call holds the channel the retry is turned away by: not a second entry.
        assert_eq!(record(&mut queue, 2, "+1", Some(&first), 21), Missed::Counted(CallbackId(1)));
        // A new attempt while the callback is in progress is a new missed call, as before.
        assert!(matches!(record(&mut queue, 3, "+1", Some(&second), 22), Missed::New(_)));
        assert_eq!(record(&mut queue, 4, "+1", Some(&second), 23), Missed::Counted(CallbackId(3)));
        queue.apply(&update(CallbackStatus::Completed));
        assert_eq!(queue.get(CallbackId(1)), None);
        // Closed, the first entry no longer answers for its attempt: the caller's waiting entry counts it.
        assert_eq!(record(&mut queue, 5, "+1", Some(&first), 30), Missed::Repeat(CallbackId(3)));

        let mut entry = queue.get(CallbackId(3)).unwrap().clone();
        assert_eq!(entry.attempts, vec![second, first]);
        entry.update(CallbackStatus::Cancelled, None, false, None, 40);
        assert_eq!((entry.status, entry.updated_at_ms, entry.attempts.len()), (CallbackStatus::Cancelled, 40, 0));
    }

    #[test]
    fn next_is_the_earliest_pending_and_closed_entries_leave_the_queue() {
        let mut queue = queue_with(&[("+2", 20), ("+1", 10)]);
        assert_eq!(queue.next_pending().unwrap().caller, "+1", "FIFO by missed time, not by entry");
        let update = |id, status| Event::CallbackUpdated { id, status, call_id: None, dialed: false, failure_reason: None, at_ms: 99 };
        queue.apply(&update(CallbackId(2), CallbackStatus::Processing));
        assert_eq!(queue.next_pending().unwrap().id, CallbackId(1));
        queue.apply(&update(CallbackId(2), CallbackStatus::Completed));
        assert!(queue.get(CallbackId(2)).is_none());
        queue.apply(&update(CallbackId(1), CallbackStatus::InsufficientCredits));
        assert_eq!(queue.next_pending(), None);
        assert_eq!(queue.short_of_credits(), vec![CallbackId(1)]);
    }
}
