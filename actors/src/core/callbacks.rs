//! One line's callback queue: its open missed-call entries and the decisions on them.
//!
//! Pure: the callback-queue actor asks it what a missed call or a transition means, journals
//! that, then applies the journaled event here (the same event the durable state applies).

use std::collections::BTreeMap;

use crate::event::Event;
use crate::model::{CallbackEntry, CallbackId, CallbackPriority, CallbackStatus, MissedReason};

/// What a missed call does to the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Missed {
    /// A new entry (the caller had none open).
    New(CallbackEntry),
    /// The caller's open entry counts one more missed attempt.
    Repeat(CallbackId),
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

    /// A caller missed the line. An entry still waiting for this caller (pending, on hold or
    /// short of credits) counts the repeat instead of opening a second one.
    #[allow(clippy::too_many_arguments)]
    pub fn missed(
        &self,
        next_id: CallbackId,
        line_id: &str,
        tenant_id: &str,
        caller: &str,
        reason: MissedReason,
        on_hold: bool,
        now_ms: u64,
        open_max: usize,
    ) -> Missed {
        let waiting = |e: &&CallbackEntry| {
            e.caller == caller && matches!(e.status, CallbackStatus::Pending | CallbackStatus::OnHold | CallbackStatus::InsufficientCredits)
        };
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
            Event::MissedCallRepeated { id, at_ms } => {
                if let Some(entry) = self.entries.get_mut(id) {
                    entry.missed_count += 1;
                    entry.last_missed_at_ms = *at_ms;
                    entry.updated_at_ms = *at_ms;
                }
            }
            Event::CallbackUpdated { id, status, call_id, dialed, failure_reason, at_ms } => {
                if let Some(entry) = self.entries.get_mut(id) {
                    entry.status = *status;
                    entry.call_id = *call_id;
                    entry.dialed = *dialed;
                    entry.failure_reason = failure_reason.clone();
                    entry.updated_at_ms = *at_ms;
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

    fn queue_with(missed: &[(&str, u64)]) -> CallbackQueue {
        let mut queue = CallbackQueue::default();
        for (n, (caller, at)) in missed.iter().enumerate() {
            match queue.missed(CallbackId(n as u64 + 1), "+1415", "t", caller, MissedReason::Busy, false, *at, 3) {
                Missed::New(entry) => queue.apply(&Event::MissedCallRecorded(entry)),
                Missed::Repeat(id) => queue.apply(&Event::MissedCallRepeated { id, at_ms: *at }),
                Missed::Full { .. } => {}
            }
        }
        queue
    }

    #[test]
    fn a_repeat_caller_counts_on_the_open_entry_and_the_bound_refuses_new_callers() {
        let queue = queue_with(&[("+1", 10), ("+2", 20), ("+1", 30), ("+3", 40)]);
        assert_eq!(queue.entries().len(), 3);
        assert_eq!(queue.get(CallbackId(1)).unwrap().missed_count, 2);
        assert_eq!(queue.get(CallbackId(1)).unwrap().last_missed_at_ms, 30);
        let full = queue.missed(CallbackId(9), "+1415", "t", "+4", MissedReason::Busy, false, 50, 3);
        assert_eq!(full, Missed::Full { open: 3 });
        assert!(matches!(queue.missed(CallbackId(9), "+1415", "t", "+2", MissedReason::NoAnswer, false, 50, 3), Missed::Repeat(_)));
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
