//! The slot table: the one counter that tenants (plan limit), lines (channels) and the
//! platform pool (provider capacity) each own.
//!
//! Slots are held per call id rather than as a bare count, so a release is idempotent, a
//! counter can never go negative, and the state rebuilt from the journal can be compared
//! entry by entry with the live one.

use std::collections::BTreeSet;

use crate::model::CallId;

/// Why a reservation was refused: how many slots are held and what the limit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    pub current_active: u32,
    pub limit: u32,
}

/// What a granted reservation means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    /// The reservation was forced past the limit (inbound calls already live at the provider).
    pub over_limit: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotTable {
    held: BTreeSet<CallId>,
}

impl SlotTable {
    pub fn from_held(held: impl IntoIterator<Item = CallId>) -> Self {
        SlotTable { held: held.into_iter().collect() }
    }

    pub fn active(&self) -> u32 {
        u32::try_from(self.held.len()).expect("slot count fits in u32: bounded by live_calls_max")
    }

    pub fn holds(&self, call: CallId) -> bool {
        self.held.contains(&call)
    }

    pub fn held(&self) -> impl Iterator<Item = CallId> + '_ {
        self.held.iter().copied()
    }

    /// Takes a slot for `call` unless `limit` slots are already held. `force` records the call
    /// even when full: the call is already live upstream and must never go untracked.
    /// Reserving a call that already holds a slot is a no-op grant (retries are safe).
    pub fn reserve(&mut self, call: CallId, limit: u32, force: bool) -> Result<Granted, Full> {
        if self.held.contains(&call) {
            return Ok(Granted { over_limit: self.active() > limit });
        }
        let current_active = self.active();
        if current_active >= limit && !force {
            return Err(Full { current_active, limit });
        }
        self.held.insert(call);
        Ok(Granted { over_limit: current_active >= limit })
    }

    /// Frees `call`'s slot. Returns whether it held one; releasing twice changes nothing.
    pub fn release(&mut self, call: CallId) -> bool {
        self.held.remove(&call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Reserve { call: u64, force: bool },
        Release { call: u64 },
        SetLimit(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..12, proptest::bool::weighted(0.2)).prop_map(|(call, force)| Op::Reserve { call, force }),
            3 => (0u64..12).prop_map(|call| Op::Release { call }),
            1 => (0u32..6).prop_map(Op::SetLimit),
        ]
    }

    proptest! {
        /// Against a reference model (a plain set and a count): unforced reservations never
        /// push the table past its limit, forced ones always land, releases are idempotent,
        /// and the count always equals the reference.
        #[test]
        fn matches_reference_model(ops in proptest::collection::vec(op(), 1..200)) {
            let mut table = SlotTable::default();
            let mut model: std::collections::BTreeSet<u64> = Default::default();
            let mut limit = 3u32;
            for op in ops {
                match op {
                    Op::Reserve { call, force } => {
                        let before = model.len() as u32;
                        let result = table.reserve(CallId(call), limit, force);
                        if model.contains(&call) {
                            prop_assert!(result.is_ok());
                        } else if before >= limit && !force {
                            prop_assert_eq!(result, Err(Full { current_active: before, limit }));
                        } else {
                            prop_assert_eq!(result, Ok(Granted { over_limit: before >= limit }));
                            model.insert(call);
                        }
                    }
                    Op::Release { call } => {
                        prop_assert_eq!(table.release(CallId(call)), model.remove(&call));
                    }
                    Op::SetLimit(new_limit) => limit = new_limit,
                }
                prop_assert_eq!(table.active() as usize, model.len());
            }
        }
    }

    #[test]
    fn unforced_reservations_stop_at_the_limit() {
        let mut table = SlotTable::default();
        let granted = (0..10).filter(|n| table.reserve(CallId(*n), 5, false).is_ok()).count();
        assert_eq!(granted, 5);
        assert_eq!(table.reserve(CallId(99), 5, true), Ok(Granted { over_limit: true }));
        assert_eq!(table.active(), 6);
    }
}
