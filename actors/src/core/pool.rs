//! One provider pool's arbitration: capacity, reserved headroom per class, the fair queue of
//! waiting admissions, the provider cooldown and the learned capacity.
//!
//! Pure and synchronous: every input carries `now_ms`, every output is data. The platform actor
//! feeds it and carries out what it returns (answering waiters, journaling).
//!
//! # Policy
//! - Classes are ranked, lowest first (`standard` < `priority` < `premium` by default).
//! - `reserved[rank]` is headroom held for that class and the ones above it. A class may take a
//!   slot only while the free slots exceed the largest reservation of any class above it: with
//!   capacity 5, 3 reserved for `priority`-and-above and 2 for `premium`, `standard` gets a slot
//!   while more than 3 are free, `priority` while more than 2 are, `premium` while any is.
//! - Grant order: a waiter that has waited `aging_ms` or more is *aged*. Aged waiters go first,
//!   higher class first; otherwise the highest class with waiters goes first. Inside a class,
//!   tenants take turns (round-robin), and each tenant's waiters are served in arrival order.
//! - If the waiter to serve is aged but does not fit yet, nobody else is served (the door is
//!   held), so a stream of higher-class arrivals cannot keep a lower class out for ever: as
//!   calls end the free slots grow until it fits. A waiter that can never fit (the pool's
//!   capacity is below its class's headroom) is not aged.
//! - During a provider cooldown nothing is granted and new requests are refused.
//! - Learned capacity: when the provider rejects a call the pool believed it had room for, the
//!   effective capacity drops to the calls that were really active (at least 1) and grows back
//!   by one slot every `probe_interval_ms` without rejections (additive increase,
//!   multiplicative decrease).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::{CallId, TenantId};

/// A class's position, 0 = lowest.
pub type ClassRank = usize;

/// A pool's configured limits (changed at runtime by `PATCH /v1/platform/pools/{name}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    pub capacity: u32,
    /// Headroom reserved for each class and those above it, by rank.
    pub reserved: Vec<u32>,
}

/// Timing and bounds, from config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolTiming {
    /// A waiter this old is served before younger ones of higher classes.
    pub aging_ms: u64,
    /// The learned capacity grows by one slot per interval without rejections.
    pub probe_interval_ms: u64,
    /// Waiters per class at once; past it a waiting request is refused (`QUEUE_FULL`).
    pub waiting_per_class_max: usize,
}

/// The capacity learned from a provider rejection, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learned {
    pub capacity: u32,
    pub since_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub call: CallId,
    pub tenant: TenantId,
    pub class: ClassRank,
    /// Already live at the provider: recorded whatever the limits say.
    pub force: bool,
    /// Until when the request may wait; at or before `now_ms` it fails fast.
    pub deadline_ms: u64,
}

/// Why a request was not granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolDenial {
    /// No slot is free.
    Full { current_active: u32, limit: u32 },
    /// Slots are free, but only headroom reserved for higher classes.
    FullForPlan { current_active: u32, limit: u32 },
    /// The provider rate-limited the pool; nothing is granted until then.
    Cooldown { until_ms: u64 },
    /// The class's waiting queue is at its bound.
    QueueFull { waiting: u32, limit: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Granted { over_limit: bool },
    Queued,
    Denied(PoolDenial),
}

/// A waiter that got its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub call: CallId,
    pub waited_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Waiter {
    call: CallId,
    enqueued_at_ms: u64,
    deadline_ms: u64,
}

/// One class's waiters: per tenant in arrival order, tenants in turn order.
///
/// Every step is a lookup, not a scan of the tenants: with thousands of tenants waiting (the
/// noisy-neighbour case the turns are for) a scan per pick cost the platform actor
/// milliseconds per message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ClassQueue {
    /// Each waiting tenant's place in the turn order and its waiters in arrival order.
    by_tenant: BTreeMap<TenantId, (Turn, VecDeque<Waiter>)>,
    /// Tenants in turn order: a served tenant takes a new, larger turn.
    rotation: BTreeMap<Turn, TenantId>,
    next_turn: Turn,
    /// Each waiting tenant's oldest waiter's arrival, with its turn: the aged tenants are a
    /// range of it, and its first entry says whether anyone is aged.
    fronts: BTreeSet<(u64, Turn)>,
    len: usize,
}

/// A tenant's place in a class's turn order.
type Turn = u64;

impl ClassQueue {
    fn push(&mut self, tenant: &TenantId, waiter: Waiter) {
        let (_, queue) = self.by_tenant.entry(tenant.clone()).or_insert_with(|| {
            let turn = self.next_turn;
            self.next_turn += 1;
            self.rotation.insert(turn, tenant.clone());
            self.fronts.insert((waiter.enqueued_at_ms, turn));
            (turn, VecDeque::new())
        });
        queue.push_back(waiter);
        self.len += 1;
    }

    /// When the longest-waiting tenant's oldest waiter arrived (only those are served).
    fn oldest_ms(&self) -> Option<u64> {
        self.fronts.first().map(|(at, _)| *at)
    }

    /// The tenant whose turn it is.
    fn first_tenant(&self) -> Option<&TenantId> {
        self.rotation.first_key_value().map(|(_, tenant)| tenant)
    }

    /// The first tenant in turn order whose oldest waiter arrived at or before `arrived_by`.
    /// Walks the turn order and the aged tenants side by side and stops when either walk
    /// answers: a step costs a lookup, and the steps are the fewer of the two walks'.
    fn first_arrived_by(&self, arrived_by: u64) -> Option<&TenantId> {
        let mut in_turn = self.rotation.iter();
        let mut aged = self.fronts.range(..=(arrived_by, Turn::MAX));
        let mut first_aged: Option<Turn> = None;
        loop {
            let (_, tenant) = in_turn.next()?;
            if self.by_tenant[tenant].1.front().is_some_and(|w| w.enqueued_at_ms <= arrived_by) {
                return Some(tenant);
            }
            match aged.next() {
                Some(&(_, turn)) => first_aged = Some(first_aged.map_or(turn, |t| t.min(turn))),
                None => return first_aged.map(|turn| &self.rotation[&turn]),
            }
        }
    }

    /// Serves `tenant`'s oldest waiter and sends the tenant to the back of the turn order.
    fn pop(&mut self, tenant: &TenantId) -> Waiter {
        let (turn, queue) = self.by_tenant.get_mut(tenant).expect("picked tenant has a queue");
        let waiter = queue.pop_front().expect("picked tenant has a waiter");
        self.fronts.remove(&(waiter.enqueued_at_ms, *turn));
        self.rotation.remove(turn);
        self.len -= 1;
        match queue.front() {
            None => {
                self.by_tenant.remove(tenant);
            }
            Some(next) => {
                *turn = self.next_turn;
                self.next_turn += 1;
                self.rotation.insert(*turn, tenant.clone());
                self.fronts.insert((next.enqueued_at_ms, *turn));
            }
        }
        waiter
    }

    /// Takes `call` out of the queue; its tenant keeps its turn.
    fn remove(&mut self, tenant: &TenantId, call: CallId) -> Option<Waiter> {
        let (turn, queue) = self.by_tenant.get_mut(tenant)?;
        let index = queue.iter().position(|w| w.call == call)?;
        let waiter = queue.remove(index).expect("index is in range");
        self.len -= 1;
        if index == 0 {
            self.fronts.remove(&(waiter.enqueued_at_ms, *turn));
            match queue.front() {
                Some(next) => {
                    self.fronts.insert((next.enqueued_at_ms, *turn));
                }
                None => {
                    self.rotation.remove(turn);
                    self.by_tenant.remove(tenant);
                }
            }
        }
        Some(waiter)
    }

    fn drain(&mut self) -> Vec<CallId> {
        let calls = self.rotation.values().flat_map(|t| self.by_tenant[t].1.iter().map(|w| w.call)).collect();
        *self = ClassQueue::default();
        calls
    }
}

/// What a pool looks like, for `GET /v1/platform` and the invariant checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolView {
    pub limits: PoolLimits,
    pub learned: Option<Learned>,
    /// The learned capacity now, if it is below the configured one.
    pub learned_capacity: Option<u32>,
    pub effective_capacity: u32,
    pub cooldown_until_ms: u64,
    pub held: BTreeMap<CallId, ClassRank>,
    pub active_by_class: Vec<u32>,
    pub waiting_by_class: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolCore {
    limits: PoolLimits,
    timing: PoolTiming,
    learned: Option<Learned>,
    cooldown_until_ms: u64,
    held: BTreeMap<CallId, ClassRank>,
    queues: Vec<ClassQueue>,
    /// Where each waiter is queued.
    waiting: BTreeMap<CallId, (ClassRank, TenantId)>,
    /// Every waiter by deadline, so expiry is a lookup, not a scan.
    deadlines: BTreeSet<(u64, CallId)>,
}

impl PoolCore {
    /// A pool for `classes` classes, holding `held` (call → class) as the journal recorded them.
    pub fn new(
        limits: PoolLimits,
        timing: PoolTiming,
        classes: usize,
        learned: Option<Learned>,
        cooldown_until_ms: u64,
        held: BTreeMap<CallId, ClassRank>,
    ) -> Self {
        assert!(classes > 0, "at least one class");
        let mut limits = limits;
        limits.reserved.resize(classes, 0);
        let held = held.into_iter().map(|(call, class)| (call, class.min(classes - 1))).collect();
        PoolCore {
            limits,
            timing,
            learned,
            cooldown_until_ms,
            held,
            queues: vec![ClassQueue::default(); classes],
            waiting: BTreeMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    pub fn classes(&self) -> usize {
        self.queues.len()
    }

    pub fn active(&self) -> u32 {
        u32::try_from(self.held.len()).expect("held calls fit in u32: bounded by live_calls_max")
    }

    pub fn holds(&self, call: CallId) -> bool {
        self.held.contains_key(&call)
    }

    pub fn waiters(&self) -> usize {
        self.waiting.len()
    }

    pub fn limits(&self) -> &PoolLimits {
        &self.limits
    }

    pub fn cooldown_until_ms(&self) -> u64 {
        self.cooldown_until_ms
    }

    /// The learned capacity at `now_ms`, if it is still below the configured one.
    pub fn learned_capacity(&self, now_ms: u64) -> Option<u32> {
        let learned = self.learned?;
        let steps = now_ms.saturating_sub(learned.since_ms) / self.timing.probe_interval_ms.max(1);
        let capacity = u64::from(learned.capacity).saturating_add(steps);
        (capacity < u64::from(self.limits.capacity)).then_some(capacity as u32)
    }

    pub fn effective_capacity(&self, now_ms: u64) -> u32 {
        self.learned_capacity(now_ms).unwrap_or(self.limits.capacity)
    }

    /// The largest headroom reserved for a class above `class`.
    pub fn reserved_above(&self, class: ClassRank) -> u32 {
        self.limits.reserved.iter().skip(class + 1).copied().max().unwrap_or(0)
    }

    fn fits(&self, class: ClassRank, now_ms: u64) -> bool {
        self.effective_capacity(now_ms).saturating_sub(self.active()) > self.reserved_above(class)
    }

    fn could_ever_fit(&self, class: ClassRank) -> bool {
        self.limits.capacity > self.reserved_above(class)
    }

    /// Why `class` cannot have a slot now (assuming it does not fit).
    pub fn denial(&self, class: ClassRank, now_ms: u64) -> PoolDenial {
        if now_ms < self.cooldown_until_ms {
            return PoolDenial::Cooldown { until_ms: self.cooldown_until_ms };
        }
        let capacity = self.effective_capacity(now_ms);
        let current_active = self.active();
        if current_active >= capacity {
            PoolDenial::Full { current_active, limit: capacity }
        } else {
            PoolDenial::FullForPlan { current_active, limit: capacity.saturating_sub(self.reserved_above(class)) }
        }
    }

    /// An admission asks for a slot. Returns its decision and any other waiters granted on the
    /// way. A queued request is answered later by a `Grant`, or leaves with `leave`.
    pub fn request(&mut self, request: Request, now_ms: u64) -> (Decision, Vec<Grant>) {
        let class = request.class.min(self.classes() - 1);
        if request.force {
            let over_limit = self.active() >= self.effective_capacity(now_ms);
            self.held.insert(request.call, class);
            return (Decision::Granted { over_limit }, Vec::new());
        }
        if now_ms < self.cooldown_until_ms {
            return (Decision::Denied(PoolDenial::Cooldown { until_ms: self.cooldown_until_ms }), Vec::new());
        }
        let waits = request.deadline_ms > now_ms;
        let queue_len = self.queues[class].len;
        if waits && queue_len >= self.timing.waiting_per_class_max {
            let limit = u32::try_from(self.timing.waiting_per_class_max).unwrap_or(u32::MAX);
            return (Decision::Denied(PoolDenial::QueueFull { waiting: queue_len as u32, limit }), Vec::new());
        }
        // Nobody waits: the request is first in line, so it is granted exactly when it fits,
        // which is what the queue below would decide, without its bookkeeping.
        if self.waiting.is_empty() && self.fits(class, now_ms) {
            self.held.insert(request.call, class);
            return (Decision::Granted { over_limit: false }, Vec::new());
        }
        // A deadline already past when the request arrives (it spent its wait getting here)
        // makes it fail fast, like a deadline of now.
        let waiter = Waiter { call: request.call, enqueued_at_ms: now_ms, deadline_ms: request.deadline_ms.max(now_ms) };
        self.deadlines.insert((waiter.deadline_ms, waiter.call));
        self.queues[class].push(&request.tenant, waiter);
        self.waiting.insert(request.call, (class, request.tenant.clone()));
        let mut grants = self.pump(now_ms);
        if let Some(index) = grants.iter().position(|g| g.call == request.call) {
            grants.remove(index);
            return (Decision::Granted { over_limit: false }, grants);
        }
        if waits {
            return (Decision::Queued, grants);
        }
        self.remove_waiter(request.call);
        let denial = if self.fits(class, now_ms) {
            // It would fit on its own, but waiters ahead of it come first (an aged one holds
            // the door): no slot for its plan right now.
            PoolDenial::FullForPlan { current_active: self.active(), limit: self.active() }
        } else {
            self.denial(class, now_ms)
        };
        (Decision::Denied(denial), grants)
    }

    /// A waiter gave up (timed out, or its client went away). Returns why it had no slot.
    pub fn leave(&mut self, call: CallId, now_ms: u64) -> Option<PoolDenial> {
        let (class, _) = self.waiting.get(&call).cloned()?;
        self.remove_waiter(call);
        Some(self.denial(class, now_ms))
    }

    fn remove_waiter(&mut self, call: CallId) {
        if let Some((class, tenant)) = self.waiting.remove(&call)
            && let Some(waiter) = self.queues[class].remove(&tenant, call)
        {
            self.deadlines.remove(&(waiter.deadline_ms, call));
        }
    }

    /// A call ended (or a grant could not be delivered): its slot frees, waiters may move.
    pub fn release(&mut self, call: CallId, now_ms: u64) -> Vec<Grant> {
        if self.held.remove(&call).is_none() {
            return Vec::new();
        }
        self.pump(now_ms)
    }

    /// New limits. A new capacity also forgets a learned one: the operator has just said what
    /// the provider allows (an account upgrade must not creep back one slot a minute).
    pub fn set_limits(&mut self, mut limits: PoolLimits, now_ms: u64) -> Vec<Grant> {
        limits.reserved.resize(self.classes(), 0);
        if limits.capacity != self.limits.capacity {
            self.learned = None;
        }
        self.limits = limits;
        self.pump(now_ms)
    }

    /// Time passed (a cooldown ended, the learned capacity grew): waiters may move.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Grant> {
        self.pump(now_ms)
    }

    /// When `tick` could next grant something, if anyone is waiting.
    pub fn next_wakeup_ms(&self, now_ms: u64) -> Option<u64> {
        if self.waiting.is_empty() {
            return None;
        }
        // A waiter that fits now (one ahead of it left without a grant) is served at once.
        if now_ms >= self.cooldown_until_ms && self.pick(now_ms).is_some_and(|(class, _)| self.fits(class, now_ms)) {
            return Some(now_ms);
        }
        let cooldown = (self.cooldown_until_ms > now_ms).then_some(self.cooldown_until_ms);
        let probe = self.learned_capacity(now_ms).and(self.learned).map(|learned| {
            let interval = self.timing.probe_interval_ms.max(1);
            let steps = now_ms.saturating_sub(learned.since_ms) / interval;
            learned.since_ms.saturating_add((steps + 1).saturating_mul(interval))
        });
        match (cooldown, probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What a provider rejection of `call` at `now_ms` means, without changing anything: the
    /// cooldown's end and the learned capacity. The actor journals both, then applies them.
    pub fn rejection(&self, call: CallId, now_ms: u64, cooldown_ms: u64) -> (Option<Learned>, u64) {
        let capacity = self.effective_capacity(now_ms);
        let active = self.active();
        let believed_room = self.holds(call) && active <= capacity;
        let learned = if believed_room { Some(Learned { capacity: (active - 1).max(1), since_ms: now_ms }) } else { self.learned };
        (learned, self.cooldown_until_ms.max(now_ms.saturating_add(cooldown_ms)))
    }

    /// Applies a journaled rejection. Every waiter is turned away (the provider is refusing);
    /// returns them.
    pub fn apply_rejection(&mut self, learned: Option<Learned>, cooldown_until_ms: u64) -> Vec<CallId> {
        self.learned = learned;
        self.cooldown_until_ms = cooldown_until_ms;
        self.waiting.clear();
        self.deadlines.clear();
        self.queues.iter_mut().flat_map(ClassQueue::drain).collect()
    }

    /// Grants waiters while the one to serve fits.
    fn pump(&mut self, now_ms: u64) -> Vec<Grant> {
        let mut grants = Vec::new();
        if now_ms < self.cooldown_until_ms {
            return grants;
        }
        self.drop_expired(now_ms);
        while let Some((class, tenant)) = self.pick(now_ms) {
            if !self.fits(class, now_ms) {
                break;
            }
            let tenant = tenant.clone();
            let waiter = self.queues[class].pop(&tenant);
            self.waiting.remove(&waiter.call);
            self.deadlines.remove(&(waiter.deadline_ms, waiter.call));
            self.held.insert(waiter.call, class);
            grants.push(Grant { call: waiter.call, waited_ms: now_ms.saturating_sub(waiter.enqueued_at_ms) });
        }
        grants
    }

    /// Waiters past their deadline are never served (their admissions answer the timeout). A
    /// fail-fast request's deadline is its own arrival time, so it is not past it yet.
    fn drop_expired(&mut self, now_ms: u64) {
        while let Some(&(deadline_ms, call)) = self.deadlines.first() {
            if deadline_ms >= now_ms {
                break;
            }
            self.remove_waiter(call);
        }
    }

    /// The waiter to serve next: aged ones first (higher class first), else the highest class.
    fn pick(&self, now_ms: u64) -> Option<(ClassRank, &TenantId)> {
        // A waiter is aged once it has waited `aging_ms`: it arrived at or before `aged_by`.
        if let Some(aged_by) = now_ms.checked_sub(self.timing.aging_ms) {
            for class in (0..self.classes()).rev() {
                let queue = &self.queues[class];
                if queue.oldest_ms().is_some_and(|oldest| oldest <= aged_by)
                    && self.could_ever_fit(class)
                    && let Some(tenant) = queue.first_arrived_by(aged_by)
                {
                    return Some((class, tenant));
                }
            }
        }
        (0..self.classes()).rev().find_map(|class| self.queues[class].first_tenant().map(|t| (class, t)))
    }

    pub fn view(&self, now_ms: u64) -> PoolView {
        let mut active_by_class = vec![0; self.classes()];
        for class in self.held.values() {
            active_by_class[*class] += 1;
        }
        PoolView {
            limits: self.limits.clone(),
            learned: self.learned,
            learned_capacity: self.learned_capacity(now_ms),
            effective_capacity: self.effective_capacity(now_ms),
            cooldown_until_ms: self.cooldown_until_ms,
            held: self.held.clone(),
            active_by_class,
            waiting_by_class: self.queues.iter().map(|q| q.len as u32).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANDARD: ClassRank = 0;
    const PRIORITY: ClassRank = 1;
    const PREMIUM: ClassRank = 2;

    fn pool(capacity: u32) -> PoolCore {
        let limits = PoolLimits { capacity, reserved: vec![0, 3, 2] };
        let timing = PoolTiming { aging_ms: 5_000, probe_interval_ms: 60_000, waiting_per_class_max: 100 };
        PoolCore::new(limits, timing, 3, None, 0, BTreeMap::new())
    }

    fn ask(pool: &mut PoolCore, call: u64, tenant: &str, class: ClassRank, now_ms: u64, wait_ms: u64) -> Decision {
        let request = Request { call: CallId(call), tenant: tenant.into(), class, force: false, deadline_ms: now_ms + wait_ms };
        pool.request(request, now_ms).0
    }

    #[test]
    fn standard_is_refused_when_only_reserved_headroom_is_left() {
        let mut pool = pool(5);
        assert!(matches!(ask(&mut pool, 1, "a", STANDARD, 0, 0), Decision::Granted { .. }));
        assert!(matches!(ask(&mut pool, 2, "b", STANDARD, 0, 0), Decision::Granted { .. }));
        assert_eq!(ask(&mut pool, 3, "c", STANDARD, 0, 0), Decision::Denied(PoolDenial::FullForPlan { current_active: 2, limit: 2 }));
        assert!(matches!(ask(&mut pool, 4, "d", PRIORITY, 0, 0), Decision::Granted { .. }));
        assert_eq!(ask(&mut pool, 5, "d", PRIORITY, 0, 0), Decision::Denied(PoolDenial::FullForPlan { current_active: 3, limit: 3 }));
        assert!(matches!(ask(&mut pool, 6, "e", PREMIUM, 0, 0), Decision::Granted { .. }));
        assert!(matches!(ask(&mut pool, 7, "e", PREMIUM, 0, 0), Decision::Granted { .. }));
        assert_eq!(ask(&mut pool, 8, "e", PREMIUM, 0, 0), Decision::Denied(PoolDenial::Full { current_active: 5, limit: 5 }));
    }

    #[test]
    fn a_freed_slot_goes_to_the_highest_class_then_round_robin_across_tenants() {
        let mut pool = pool(1);
        pool.limits.reserved = vec![0, 0, 0];
        assert!(matches!(ask(&mut pool, 1, "x", PREMIUM, 0, 0), Decision::Granted { .. }));
        for call in 10..15 {
            assert_eq!(ask(&mut pool, call, "flood", STANDARD, 0, 60_000), Decision::Queued);
        }
        assert_eq!(ask(&mut pool, 20, "single", STANDARD, 1, 60_000), Decision::Queued);
        assert_eq!(ask(&mut pool, 30, "pro", PRIORITY, 2, 60_000), Decision::Queued);
        let order: Vec<u64> = [1, 30, 10, 20, 11].iter().map(|c| pool.release(CallId(*c), 3)[0].call.0).collect();
        assert_eq!(order, vec![30, 10, 20, 11, 12], "priority first, then tenants take turns, FIFO within one");
    }

    #[test]
    fn an_aged_waiter_holds_the_door_against_younger_higher_classes() {
        let mut pool = pool(5);
        for call in 1..=3 {
            assert!(matches!(ask(&mut pool, call, "pro", PRIORITY, 0, 0), Decision::Granted { .. }));
        }
        assert_eq!(ask(&mut pool, 10, "payg", STANDARD, 0, 30_000), Decision::Queued);
        assert!(pool.release(CallId(1), 6_000).is_empty(), "3 free is not more than the 3 reserved");
        // It would fit on its own, but the aged waiter comes first: no slot for its plan now.
        assert_eq!(
            ask(&mut pool, 11, "pro", PRIORITY, 6_000, 0),
            Decision::Denied(PoolDenial::FullForPlan { current_active: 2, limit: 2 })
        );
        let grants = pool.release(CallId(2), 6_001);
        assert_eq!(grants, vec![Grant { call: CallId(10), waited_ms: 6_001 }]);
    }

    /// Aged tenants behind younger ones in the turn order: the first aged one in turn order
    /// goes first, whichever of the two walks in `first_arrived_by` finds it.
    #[test]
    fn aged_tenants_behind_younger_ones_are_served_in_turn_order() {
        let mut pool = pool(2);
        pool.limits.reserved = vec![0, 0, 0];
        assert!(matches!(ask(&mut pool, 1, "x", STANDARD, 0, 0), Decision::Granted { .. }));
        assert!(matches!(ask(&mut pool, 2, "x", STANDARD, 0, 0), Decision::Granted { .. }));
        for (call, tenant) in [(10, "a"), (11, "a"), (20, "b"), (21, "b")] {
            assert_eq!(ask(&mut pool, call, tenant, STANDARD, 0, 60_000), Decision::Queued);
        }
        for (call, tenant) in [(30, "f1"), (31, "f2"), (32, "f3")] {
            assert_eq!(ask(&mut pool, call, tenant, STANDARD, 4_000, 60_000), Decision::Queued);
        }
        // Nobody aged yet: a, then b, are served and go to the back, behind f1, f2, f3.
        assert_eq!(pool.release(CallId(1), 4_001)[0].call, CallId(10));
        assert_eq!(pool.release(CallId(2), 4_002)[0].call, CallId(20));
        // At 6 000 the second waiters of a and b (arrived at 0) are aged, the f's (4 000) not.
        let order: Vec<u64> = [10, 11, 20, 21, 30].iter().zip(6_000..).map(|(c, at)| pool.release(CallId(*c), at)[0].call.0).collect();
        assert_eq!(order, vec![11, 21, 30, 31, 32], "aged a then aged b, in turn order, then the f's in turn");
    }

    #[test]
    fn a_rejection_learns_capacity_cools_down_and_turns_waiters_away() {
        let mut pool = pool(5);
        pool.limits.reserved = vec![0, 0, 0];
        for call in 1..=4 {
            assert!(matches!(ask(&mut pool, call, "t", PREMIUM, 0, 0), Decision::Granted { .. }));
        }
        assert_eq!(ask(&mut pool, 9, "t", PREMIUM, 0, 0), Decision::Granted { over_limit: false });
        assert_eq!(ask(&mut pool, 10, "u", PREMIUM, 0, 10_000), Decision::Queued);
        let (learned, until) = pool.rejection(CallId(4), 1_000, 30_000);
        assert_eq!(learned, Some(Learned { capacity: 4, since_ms: 1_000 }));
        assert_eq!(until, 31_000);
        assert_eq!(pool.apply_rejection(learned, until), vec![CallId(10)]);
        assert_eq!(ask(&mut pool, 11, "u", PREMIUM, 2_000, 0), Decision::Denied(PoolDenial::Cooldown { until_ms: 31_000 }));
        pool.release(CallId(4), 2_000);
        assert_eq!(pool.effective_capacity(31_000), 4);
        assert_eq!(ask(&mut pool, 12, "u", PREMIUM, 31_000, 0), Decision::Denied(PoolDenial::Full { current_active: 4, limit: 4 }));
        assert_eq!(pool.effective_capacity(61_000), 5, "one slot back per probe interval");
        assert_eq!(pool.learned_capacity(61_000), None);
    }
}
