//! The durable state: the fold of the journal.
//!
//! `DurableState::apply` is the only replay function. The journal writer keeps one up to date as
//! it accepts events (so the supervisor can rebuild a crashed actor from it), start-up rebuilds
//! one from the snapshot plus the log, and the equality test compares it with the live actors.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::pool::Learned;
use crate::event::{Event, IdempotencyStamp, WaitOutcome};
use crate::id_map::IdMap;
use crate::model::{
    CallId, CallRecord, CallbackEntry, CallbackId, Campaign, CampaignId, CampaignStatus, ContactState, ContactStatus, CreditTx, EndedCall,
    LineId, LineRecord, TenantId, TenantRecord, month_of_ms,
};

/// Ended calls kept for `GET /v1/calls/{id}` and duplicate end webhooks. Past it the oldest
/// (smallest id) is forgotten: a later duplicate end for it answers 404. They live in every
/// snapshot, which the journal writer encodes in line, so this also bounds that pause
/// (about 3 MB at 20 000; hours of history at real provider concurrency).
pub const ENDED_CALLS_RETAINED_MAX: usize = 20_000;
/// How long an `Idempotency-Key` is remembered (Stripe keeps them 24 h; so do we, at least).
pub const IDEMPOTENCY_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;
/// Keys remembered at once. Past it, when no key has expired yet, a request carrying a new key
/// is refused with 503 and `Retry-After` instead of evicting a key younger than 24 h. Each key
/// keeps its call as admitted and lives in every snapshot (encoded in line by the journal
/// writer), so this bounds memory (~25 MB) and the snapshot pause as well.
pub const IDEMPOTENCY_KEYS_MAX: usize = 100_000;

/// Months of usage kept per tenant: the newest and the 24 before it. An older month is dropped
/// when a newer one is recorded.
pub const USAGE_MONTHS_RETAINED: usize = 25;

/// Credit transactions kept per tenant for `GET /v1/tenants/{id}/credits`. Past it the oldest
/// is folded into the ledger's opening balance, so the balance still equals the opening balance
/// plus every kept transaction.
pub const CREDIT_TRANSACTIONS_RETAINED: usize = 200;

/// A tenant's credits: the balance and the newest transactions that led to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub balance: u64,
    /// The balance before the oldest kept transaction.
    pub opening_balance: u64,
    pub transactions: VecDeque<CreditTx>,
    pub transactions_total: u64,
}

impl Ledger {
    /// Applies `amount` (a removal never takes the balance below zero: it removes what is
    /// there). Returns the amount really applied; nothing is recorded for zero.
    pub fn post(&mut self, seq: u64, amount: i64, reason: &str, at_ms: u64, call_id: Option<CallId>) -> i64 {
        let applied = if amount < 0 { -(amount.unsigned_abs().min(self.balance) as i64) } else { amount };
        if applied == 0 {
            return 0;
        }
        self.balance = self.balance.saturating_add_signed(applied);
        self.transactions_total += 1;
        let tx = CreditTx {
            number: self.transactions_total,
            seq,
            at_ms,
            amount: applied,
            reason: reason.to_owned(),
            balance_after: self.balance,
            call_id,
        };
        self.transactions.push_back(tx);
        while self.transactions.len() > CREDIT_TRANSACTIONS_RETAINED {
            let oldest = self.transactions.pop_front().expect("non-empty");
            self.opening_balance = oldest.balance_after;
        }
        applied
    }

    /// The ledger's own replay: the opening balance plus every kept transaction.
    pub fn replayed_balance(&self) -> i128 {
        i128::from(self.opening_balance) + self.transactions.iter().map(|tx| i128::from(tx.amount)).sum::<i128>()
    }
}

/// Closed callback entries (completed, failed, cancelled) kept for the API. Past it the oldest
/// closed entry is forgotten; open entries are bounded per line by their queue.
pub const CALLBACKS_CLOSED_RETAINED_MAX: usize = 10_000;

/// Leads whose calls today are remembered (for campaigns' daily cap). Past it the oldest
/// `LEAD_CALLS_FORGOTTEN_PER_PASS` entries are forgotten, oldest day first.
pub const LEAD_CALLS_REMEMBERED_MAX: usize = 100_000;
/// How many lead entries one pass past `LEAD_CALLS_REMEMBERED_MAX` forgets.
pub const LEAD_CALLS_FORGOTTEN_PER_PASS: usize = LEAD_CALLS_REMEMBERED_MAX / 10;
/// Campaigns kept (open and finished). Past it a new campaign is refused.
pub const CAMPAIGNS_MAX: usize = 1_000;

/// The reason recorded when a call's end charges its duration.
pub const CHARGE_REASON: &str = "call";

/// Live calls by their tenant's or line's id.
pub type CallsByOwner<'a> = BTreeMap<&'a str, BTreeSet<CallId>>;
/// A line's open callback entries and the campaigns its queue holds.
pub type LineQueue = (BTreeMap<CallbackId, CallbackEntry>, BTreeMap<CampaignId, Campaign>);

/// A provider pool as the journal knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub capacity: u32,
    pub reserved: BTreeMap<String, u32>,
    pub learned: Option<Learned>,
    pub cooldown_until_ms: u64,
    pub provider_rejections: u64,
    /// Per class: how waits for a slot ended.
    pub waits: BTreeMap<String, WaitStats>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitStats {
    /// Admissions that got their slot after waiting for it.
    pub granted: u64,
    pub timed_out: u64,
    pub cancelled: u64,
    pub cooldown: u64,
}

/// What a tenant used on one pool in one month.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub calls: u64,
    pub seconds: u64,
    pub characters: u64,
    pub cost_cents: u64,
}

/// Month (`yyyymm`) → pool → totals.
pub type TenantUsage = BTreeMap<u32, BTreeMap<String, UsageTotals>>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub body_hash: u64,
    /// The call as admitted: the replayed response is built from it.
    pub call: Arc<CallRecord>,
}

/// Remembered idempotency keys, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyTable {
    by_key: BTreeMap<String, IdempotencyRecord>,
    order: VecDeque<(u64, String)>,
}

impl IdempotencyTable {
    pub fn get(&self, key: &str, now_ms: u64) -> Option<&IdempotencyRecord> {
        self.by_key.get(key).filter(|record| now_ms < record.call.started_at_ms.saturating_add(IDEMPOTENCY_RETENTION_MS))
    }

    /// Whether one more key fits: below the bound, or an expired key will make way (the next
    /// insert drops every expired key; a key younger than 24 h is never evicted).
    pub fn has_room(&self, now_ms: u64) -> bool {
        self.by_key.len() < IDEMPOTENCY_KEYS_MAX
            || self.order.iter().take_while(|(at, _)| Self::expired(*at, now_ms)).any(|(at, key)| self.is_current(key, *at))
    }

    /// An order entry is current when its key still maps to the record inserted at `at` (a key
    /// reused after expiry leaves a stale entry behind).
    fn is_current(&self, key: &str, at: u64) -> bool {
        self.by_key.get(key).is_some_and(|record| record.call.started_at_ms == at)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn expired(created_at_ms: u64, now_ms: u64) -> bool {
        now_ms >= created_at_ms.saturating_add(IDEMPOTENCY_RETENTION_MS)
    }

    /// Records `stamp`, first forgetting keys that expired by the admission's own time (a pure
    /// function of the log, so the replay evicts exactly what the live table evicted).
    fn insert(&mut self, stamp: &IdempotencyStamp, call: &Arc<CallRecord>) {
        let now_ms = call.started_at_ms;
        while let Some((at, _)) = self.order.front() {
            if !Self::expired(*at, now_ms) {
                break;
            }
            let (at, key) = self.order.pop_front().expect("front exists");
            if self.is_current(&key, at) {
                self.by_key.remove(&key);
            }
        }
        let record = IdempotencyRecord { body_hash: stamp.body_hash, call: call.clone() };
        self.by_key.insert(stamp.key.clone(), record);
        self.order.push_back((now_ms, stamp.key.clone()));
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error("event {seq} ({kind}) contradicts the state before it: {why}")]
    Contradiction { seq: u64, kind: &'static str, why: String },
    #[error("journal gap: expected event {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    /// Sequence number of the last applied event (0: none).
    pub last_seq: u64,
    /// Looked up on every admission; iterated only through `id_map::sorted` or into ordered
    /// collections: an `IdMap` (serialized in key order).
    #[serde(serialize_with = "crate::id_map::serialize_sorted")]
    pub tenants: IdMap<TenantId, TenantRecord>,
    pub lines: BTreeMap<LineId, LineRecord>,
    pub pools: BTreeMap<String, PoolRecord>,
    /// Global feature flags (a missing flag is off).
    pub flags: BTreeMap<String, bool>,
    /// Looked up on every end, never iterated: an `IdMap` (serialized in key order).
    #[serde(serialize_with = "crate::id_map::serialize_sorted")]
    pub usage: IdMap<TenantId, TenantUsage>,
    /// Looked up on every end, never iterated in order: an `IdMap` (serialized in key order).
    #[serde(serialize_with = "crate::id_map::serialize_sorted")]
    pub ledgers: IdMap<TenantId, Ledger>,
    pub callbacks: BTreeMap<CallbackId, CallbackEntry>,
    /// Closed entries in the order they closed, for the retention bound.
    pub callbacks_closed: VecDeque<CallbackId>,
    pub next_callback_number: u64,
    pub campaigns: BTreeMap<CampaignId, Campaign>,
    /// (tenant, lead phone) → (local day `yyyymmdd`, calls that day).
    pub lead_calls: BTreeMap<(TenantId, String), (u32, u32)>,
    pub live_calls: BTreeMap<CallId, Arc<CallRecord>>,
    pub ended_calls: BTreeMap<CallId, EndedCall>,
    pub idempotency: IdempotencyTable,
    /// The next call number to hand out: one past the largest ever admitted. Numbers taken by
    /// admissions that were denied leave gaps; that is fine, they were never acknowledged.
    pub next_call_number: u64,
}

impl DurableState {
    /// An empty journal's state. Pools come from config as `PoolConfigured` events at boot.
    pub fn new() -> Self {
        DurableState { next_call_number: 1, next_callback_number: 1, ..Default::default() }
    }

    /// Applies event `seq`. Seqs must be contiguous; an event that contradicts the state (a
    /// corrupt or foreign journal) is refused rather than papered over.
    pub fn apply(&mut self, seq: u64, event: &Event) -> Result<(), ReplayError> {
        if seq != self.last_seq + 1 {
            return Err(ReplayError::Gap { expected: self.last_seq + 1, found: seq });
        }
        let contradiction = |why: String| ReplayError::Contradiction { seq, kind: event.kind(), why };
        match event {
            Event::TenantCreated(tenant) => {
                if self.tenants.contains_key(&tenant.id) {
                    return Err(contradiction(format!("tenant {} exists", tenant.id)));
                }
                self.tenants.insert(tenant.id.clone(), tenant.clone());
            }
            Event::TenantUpdated(tenant) => {
                let slot = self.tenants.get_mut(&tenant.id);
                *slot.ok_or_else(|| contradiction(format!("no tenant {}", tenant.id)))? = tenant.clone();
            }
            Event::LineCreated(line) => {
                if !self.tenants.contains_key(&line.tenant_id) {
                    return Err(contradiction(format!("no tenant {}", line.tenant_id)));
                }
                if self.lines.contains_key(&line.id) {
                    return Err(contradiction("line exists".into()));
                }
                self.lines.insert(line.id.clone(), line.clone());
            }
            Event::PoolConfigured { pool, capacity, reserved } => {
                let record = self.pools.entry(pool.clone()).or_default();
                if record.capacity != *capacity {
                    // A new capacity forgets a learned one (as `PoolCore::set_limits` does).
                    record.learned = None;
                }
                record.capacity = *capacity;
                record.reserved = reserved.clone();
            }
            Event::PoolProviderRejected { pool, cooldown_until_ms, learned, .. } => {
                let record = self.pools.get_mut(pool).ok_or_else(|| contradiction(format!("no pool {pool}")))?;
                record.learned = *learned;
                record.cooldown_until_ms = *cooldown_until_ms;
                record.provider_rejections += 1;
            }
            Event::WaitAbandoned { pool, class, outcome, .. } => {
                let record = self.pools.get_mut(pool).ok_or_else(|| contradiction(format!("no pool {pool}")))?;
                let stats = record.waits.entry(class.clone()).or_default();
                match outcome {
                    WaitOutcome::TimedOut => stats.timed_out += 1,
                    WaitOutcome::Cancelled => stats.cancelled += 1,
                    WaitOutcome::Cooldown => stats.cooldown += 1,
                }
            }
            Event::FlagSet { name, enabled } => {
                self.flags.insert(name.clone(), *enabled);
            }
            Event::MissedCallRecorded(entry) => {
                if !self.lines.contains_key(&entry.line_id) {
                    return Err(contradiction(format!("no line {}", entry.line_id)));
                }
                if self.callbacks.contains_key(&entry.id) {
                    return Err(contradiction(format!("{} exists", entry.id)));
                }
                self.next_callback_number = self.next_callback_number.max(entry.id.0 + 1);
                self.callbacks.insert(entry.id, entry.clone());
            }
            Event::MissedCallRepeated { id, at_ms, attempt } => {
                let entry = self.callbacks.get_mut(id).ok_or_else(|| contradiction(format!("no {id}")))?;
                entry.count_repeat(*at_ms, attempt.as_ref());
            }
            Event::CallbackUpdated { id, status, call_id, dialed, failure_reason, at_ms } => {
                let entry = self.callbacks.get_mut(id).ok_or_else(|| contradiction(format!("no {id}")))?;
                let was_open = entry.status.is_open();
                entry.update(*status, *call_id, *dialed, failure_reason.clone(), *at_ms);
                if was_open && !status.is_open() {
                    self.close_callback(*id);
                }
            }
            Event::CampaignCreated(record) => {
                if !self.lines.contains_key(&record.line_id) || self.campaigns.contains_key(&record.id) {
                    return Err(contradiction(format!("{} on {} cannot be created", record.id, record.line_id)));
                }
                let contacts =
                    vec![ContactState { status: ContactStatus::Pending, call_id: None, failure_reason: None }; record.contacts.len()];
                let campaign =
                    Campaign { record: record.clone(), status: CampaignStatus::Draft, contacts, updated_at_ms: record.created_at_ms };
                self.campaigns.insert(record.id, campaign);
            }
            Event::CampaignStatusSet { id, status, at_ms } => {
                let campaign = self.campaigns.get_mut(id).ok_or_else(|| contradiction(format!("no {id}")))?;
                campaign.status = *status;
                campaign.updated_at_ms = *at_ms;
            }
            Event::CampaignContactSet { id, index, state, day, at_ms } => {
                let campaign = self.campaigns.get_mut(id).ok_or_else(|| contradiction(format!("no {id}")))?;
                let slot =
                    campaign.contacts.get_mut(*index as usize).ok_or_else(|| contradiction(format!("{id} has no contact {index}")))?;
                // A dial the provider refused (429) puts the contact back: that call never
                // reached the lead, so it gives back the day's call it counted.
                let refused = slot.status == ContactStatus::Calling && state.status == ContactStatus::Pending;
                *slot = state.clone();
                campaign.updated_at_ms = *at_ms;
                let key = (campaign.record.tenant_id.clone(), campaign.record.contacts[*index as usize].phone.clone());
                if let Some(day) = day {
                    self.count_lead_call(key, *day);
                } else if refused && let Some(entry) = self.lead_calls.get_mut(&key) {
                    entry.1 = entry.1.saturating_sub(1);
                }
            }
            Event::CreditsAdjusted { tenant_id, amount, reason, at_ms } => {
                if !self.tenants.contains_key(tenant_id) {
                    return Err(contradiction(format!("no tenant {tenant_id}")));
                }
                let ledger = self.ledgers.entry(tenant_id.clone()).or_default();
                if *amount < 0 && amount.unsigned_abs() > ledger.balance {
                    return Err(contradiction(format!("removes {} of a balance of {}", amount.unsigned_abs(), ledger.balance)));
                }
                ledger.post(seq, *amount, reason, *at_ms, None);
            }
            Event::CallAdmitted { call, idempotency } => self.admit(call, idempotency.as_ref()).map_err(contradiction)?,
            Event::CallHeartbeat { id, at_ms } => {
                let call = self.live_calls.get_mut(id).ok_or_else(|| contradiction(format!("{id} not live")))?;
                let call = Arc::make_mut(call);
                call.last_activity_at_ms = call.last_activity_at_ms.max(*at_ms);
            }
            Event::CallEnded { id, ended_at_ms, outcome, duration_s, characters, cost_cents } => {
                let call = self.live_calls.remove(id).ok_or_else(|| contradiction(format!("{id} not live")))?;
                let ended = EndedCall {
                    call,
                    ended_at_ms: *ended_at_ms,
                    outcome: outcome.clone(),
                    duration_s: *duration_s,
                    characters: *characters,
                    cost_cents: *cost_cents,
                };
                self.meter(&ended);
                self.charge(seq, &ended);
                self.retain_ended(ended);
            }
        }
        self.last_seq = seq;
        Ok(())
    }

    fn admit(&mut self, call: &Arc<CallRecord>, idempotency: Option<&IdempotencyStamp>) -> Result<(), String> {
        if !self.tenants.contains_key(&call.tenant_id) {
            return Err(format!("no tenant {}", call.tenant_id));
        }
        // Ids come from one counter but reach the journal in admission order, not id order:
        // concurrent admissions overtake each other. Unique, not increasing, is the rule.
        if self.live_calls.contains_key(&call.id) || self.ended_calls.contains_key(&call.id) {
            return Err(format!("{} was already admitted", call.id));
        }
        let pool = self.pools.get_mut(call.pool.as_str()).ok_or_else(|| format!("no pool {}", call.pool))?;
        if call.waited_ms > 0 {
            match pool.waits.get_mut(call.class.as_str()) {
                Some(waits) => waits.granted += 1,
                None => pool.waits.entry(call.class.to_string()).or_default().granted += 1,
            }
        }
        self.next_call_number = self.next_call_number.max(call.id.0 + 1);
        self.live_calls.insert(call.id, call.clone());
        if let Some(stamp) = idempotency {
            self.idempotency.insert(stamp, call);
        }
        Ok(())
    }

    /// Adds an ended call to its tenant's usage for the month it ended in.
    fn meter(&mut self, ended: &EndedCall) {
        // One search of ten thousand tenants per end, and a key cloned once per tenant.
        match self.usage.get_mut(&ended.call.tenant_id) {
            Some(months) => add_usage(months, ended),
            None => {
                let mut months = TenantUsage::new();
                add_usage(&mut months, ended);
                self.usage.insert(ended.call.tenant_id.clone(), months);
            }
        }
    }

    /// Every end is charged its duration, rounded up (1 credit = 1 second), down to zero at
    /// most; only prepaid tenants are refused when they reach zero.
    fn charge(&mut self, seq: u64, ended: &EndedCall) {
        // A tenant without a ledger has never had credits: its balance is 0 and a charge
        // removes nothing (and records nothing), so there is nothing to do.
        let amount = i64::try_from(ended.duration_s).unwrap_or(i64::MAX);
        if let Some(ledger) = self.ledgers.get_mut(&ended.call.tenant_id) {
            ledger.post(seq, -amount, CHARGE_REASON, ended.ended_at_ms, Some(ended.call.id));
        }
    }

    /// Keeps closed entries within `CALLBACKS_CLOSED_RETAINED_MAX`. (A closed entry that is
    /// retried reopens; its stale place in the order is skipped when it comes up.)
    fn close_callback(&mut self, id: CallbackId) {
        self.callbacks_closed.push_back(id);
        while self.callbacks_closed.len() > CALLBACKS_CLOSED_RETAINED_MAX {
            let oldest = self.callbacks_closed.pop_front().expect("non-empty");
            if self.callbacks.get(&oldest).is_some_and(|e| !e.status.is_open()) {
                self.callbacks.remove(&oldest);
            }
        }
    }

    /// A line's open callback entries (its queue actor's state).
    pub fn line_callbacks(&self, line: &str) -> BTreeMap<CallbackId, CallbackEntry> {
        self.callbacks.values().filter(|e| e.line_id == line && e.status.is_open()).map(|e| (e.id, e.clone())).collect()
    }

    fn count_lead_call(&mut self, key: (TenantId, String), day: u32) {
        let entry = self.lead_calls.entry(key).or_insert((day, 0));
        if entry.0 != day {
            *entry = (day, 0);
        }
        entry.1 += 1;
        if self.lead_calls.len() > LEAD_CALLS_REMEMBERED_MAX {
            self.forget_oldest_leads();
        }
    }

    /// Forgets `LEAD_CALLS_FORGOTTEN_PER_PASS` entries, the oldest days first, and within the
    /// cut-off day in key order: one pass over the map makes room for that many new leads.
    /// (Forgetting one entry per insert cost a pass per insert: about 0.2 ms for each
    /// campaign call once the map was full, on the journal writer and in every replay.)
    fn forget_oldest_leads(&mut self) {
        let excess = self.lead_calls.len() - (LEAD_CALLS_REMEMBERED_MAX - LEAD_CALLS_FORGOTTEN_PER_PASS);
        let mut days: Vec<u32> = self.lead_calls.values().map(|(day, _)| *day).collect();
        let cutoff = *days.select_nth_unstable(excess - 1).1;
        let older = days.iter().filter(|day| **day < cutoff).count();
        let mut on_cutoff_day = excess - older;
        self.lead_calls.retain(|_, (day, _)| match (*day).cmp(&cutoff) {
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal if on_cutoff_day > 0 => {
                on_cutoff_day -= 1;
                false
            }
            _ => true,
        });
    }

    /// How often `tenant` called `phone` on `day`.
    pub fn lead_calls_on(&self, tenant: &str, phone: &str, day: u32) -> u32 {
        self.lead_calls.get(&(tenant.into(), phone.to_owned())).filter(|(d, _)| *d == day).map_or(0, |(_, n)| *n)
    }

    /// A line's open campaigns (its queue actor's).
    pub fn line_campaigns(&self, line: &str) -> BTreeMap<CampaignId, Campaign> {
        let held = |c: &&Campaign| c.record.line_id == line && crate::core::campaign::held_by_line(c);
        self.campaigns.values().filter(held).map(|c| (c.record.id, c.clone())).collect()
    }

    pub fn balance(&self, tenant: &str) -> u64 {
        self.ledgers.get(tenant).map_or(0, |l| l.balance)
    }

    fn retain_ended(&mut self, ended: EndedCall) {
        self.ended_calls.insert(ended.call.id, ended);
        while self.ended_calls.len() > ENDED_CALLS_RETAINED_MAX {
            self.ended_calls.pop_first();
        }
    }

    pub fn tenant_active(&self, tenant: &str) -> BTreeSet<CallId> {
        self.live_calls.values().filter(|c| c.tenant_id == tenant).map(|c| c.id).collect()
    }

    pub fn line_active(&self, line: &str) -> BTreeSet<CallId> {
        self.live_calls.values().filter(|c| c.line_id.as_deref() == Some(line)).map(|c| c.id).collect()
    }

    /// Each tenant's and each line's live calls, in one pass over them (boot: asking
    /// `tenant_active` and `line_active` for each would pass over every live call per tenant
    /// and per line).
    pub fn active_by_owner(&self) -> (CallsByOwner<'_>, CallsByOwner<'_>) {
        let (mut by_tenant, mut by_line) = (CallsByOwner::new(), CallsByOwner::new());
        for call in self.live_calls.values() {
            by_tenant.entry(call.tenant_id.as_str()).or_default().insert(call.id);
            if let Some(line) = &call.line_id {
                by_line.entry(line.as_str()).or_default().insert(call.id);
            }
        }
        (by_tenant, by_line)
    }

    /// Each line's open callback entries and held campaigns (`line_callbacks`, `line_campaigns`)
    /// in one pass over each, for boot.
    pub fn queues_by_line(&self) -> BTreeMap<&str, LineQueue> {
        let mut by_line: BTreeMap<&str, LineQueue> = BTreeMap::new();
        for entry in self.callbacks.values().filter(|e| e.status.is_open()) {
            by_line.entry(entry.line_id.as_str()).or_default().0.insert(entry.id, entry.clone());
        }
        for campaign in self.campaigns.values().filter(|c| crate::core::campaign::held_by_line(c)) {
            by_line.entry(campaign.record.line_id.as_str()).or_default().1.insert(campaign.record.id, campaign.clone());
        }
        by_line
    }

    /// Every live call's pool and class (the platform actor's slots).
    pub fn pool_held(&self) -> BTreeMap<CallId, (String, String)> {
        self.live_calls.values().map(|c| (c.id, (c.pool.to_string(), c.class.to_string()))).collect()
    }

    /// The same projection the live actors produce, for the replay-equals-live invariant.
    pub fn digest(&self) -> StateDigest {
        let pools = self
            .pools
            .iter()
            .map(|(name, pool)| {
                let held = self.live_calls.values().filter(|c| c.pool == name).map(|c| c.id).collect();
                let digest = PoolDigest {
                    capacity: pool.capacity,
                    reserved: pool.reserved.clone(),
                    learned: pool.learned,
                    cooldown_until_ms: pool.cooldown_until_ms,
                    held,
                };
                (name.clone(), digest)
            })
            .collect();
        StateDigest {
            tenants: self.tenants.iter().map(|(id, t)| (id.clone(), (t.clone(), self.tenant_active(id), self.balance(id)))).collect(),
            lines: self.lines.iter().map(|(id, l)| (id.clone(), (l.clone(), self.line_active(id)))).collect(),
            callbacks: self.lines.keys().map(|id| (id.clone(), self.line_callbacks(id))).collect(),
            campaigns: self.lines.keys().map(|id| (id.clone(), self.line_campaigns(id))).collect(),
            pools,
            flags: self.flags.clone(),
            live_calls: self.live_calls.clone(),
            ended_calls: self.ended_calls.clone(),
        }
    }
}

/// A pool's observable state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolDigest {
    pub capacity: u32,
    pub reserved: BTreeMap<String, u32>,
    pub learned: Option<Learned>,
    pub cooldown_until_ms: u64,
    pub held: BTreeSet<CallId>,
}

/// Everything observable about the state, in a comparable form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateDigest {
    /// Record, held slots, credit balance.
    pub tenants: BTreeMap<TenantId, (TenantRecord, BTreeSet<CallId>, u64)>,
    pub lines: BTreeMap<LineId, (LineRecord, BTreeSet<CallId>)>,
    /// Each line's open callback entries.
    pub callbacks: BTreeMap<LineId, BTreeMap<CallbackId, CallbackEntry>>,
    /// Each line's open campaigns.
    pub campaigns: BTreeMap<LineId, BTreeMap<CampaignId, Campaign>>,
    pub pools: BTreeMap<String, PoolDigest>,
    pub flags: BTreeMap<String, bool>,
    pub live_calls: BTreeMap<CallId, Arc<CallRecord>>,
    pub ended_calls: BTreeMap<CallId, EndedCall>,
}

fn add_usage(months: &mut TenantUsage, ended: &EndedCall) {
    let pools = months.entry(month_of_ms(ended.ended_at_ms)).or_default();
    let totals = match pools.get_mut(ended.call.pool.as_str()) {
        Some(totals) => totals,
        None => pools.entry(ended.call.pool.to_string()).or_default(),
    };
    totals.calls += 1;
    totals.seconds += ended.duration_s;
    totals.characters += ended.characters;
    totals.cost_cents += ended.cost_cents;
    while months.len() > USAGE_MONTHS_RETAINED {
        months.pop_first();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantRecord {
        crate::model::test_tenant(id)
    }

    /// A fresh state with tenant `t` and the test calls' pool.
    fn with_tenant() -> DurableState {
        let mut state = DurableState::new();
        let pool = Event::PoolConfigured { pool: "standard_voice".into(), capacity: 5, reserved: BTreeMap::new() };
        state.apply(1, &pool).unwrap();
        state.apply(2, &Event::TenantCreated(tenant("t"))).unwrap();
        state
    }

    fn ended(id: u64) -> Event {
        Event::CallEnded { id: CallId(id), ended_at_ms: 0, outcome: "x".into(), duration_s: 0, characters: 0, cost_cents: 0 }
    }

    fn call(n: u64, at_ms: u64) -> Arc<CallRecord> {
        crate::model::test_call(n, at_ms)
    }

    #[test]
    fn refuses_gaps_and_contradictions() {
        let mut state = DurableState::new();
        assert_eq!(state.apply(2, &Event::FlagSet { name: "f".into(), enabled: true }), Err(ReplayError::Gap { expected: 1, found: 2 }));
        assert!(matches!(state.apply(1, &ended(1)), Err(ReplayError::Contradiction { .. })));
        let mut state = with_tenant();
        state.apply(3, &Event::CallAdmitted { call: call(1, 0), idempotency: None }).unwrap();
        let reused = Event::CallAdmitted { call: call(1, 0), idempotency: None };
        assert!(matches!(state.apply(4, &reused), Err(ReplayError::Contradiction { .. })));
        state.apply(4, &ended(1)).unwrap();
        let overtaken = Event::CallAdmitted { call: call(0, 0), idempotency: None };
        state.apply(5, &overtaken).unwrap();
        assert_eq!(state.live_calls.len(), 1, "a smaller id that was overtaken is still admitted");
        state.apply(6, &ended(0)).unwrap();
        assert!(state.live_calls.is_empty());
        assert_eq!(state.ended_calls.len(), 2);
        assert_eq!(state.next_call_number, 2);
    }

    #[test]
    fn idempotency_keys_expire_after_retention() {
        let mut state = with_tenant();
        let stamp = IdempotencyStamp { key: "k".into(), body_hash: 9 };
        state.apply(3, &Event::CallAdmitted { call: call(1, 1_000), idempotency: Some(stamp) }).unwrap();
        assert!(state.idempotency.get("k", 1_000 + IDEMPOTENCY_RETENTION_MS - 1).is_some());
        assert!(state.idempotency.get("k", 1_000 + IDEMPOTENCY_RETENTION_MS).is_none());
        let later = IdempotencyStamp { key: "k2".into(), body_hash: 1 };
        let at = 1_000 + IDEMPOTENCY_RETENTION_MS;
        state.apply(4, &Event::CallAdmitted { call: call(2, at), idempotency: Some(later) }).unwrap();
        assert_eq!(state.idempotency.len(), 1, "the expired key is evicted by the next insert");
    }

    /// The bound is real: a full table has no room until a key is 24 h old, a key younger
    /// than that is never evicted, and the next insert after expiry makes room by dropping
    /// only expired keys.
    #[test]
    fn a_full_idempotency_table_makes_room_only_by_expiry() {
        let mut state = with_tenant();
        let mut seq = 2;
        for n in 0..IDEMPOTENCY_KEYS_MAX as u64 {
            seq += 1;
            let at = n % 1000; // all within the first second
            let stamp = IdempotencyStamp { key: format!("k{n}"), body_hash: n };
            state.apply(seq, &Event::CallAdmitted { call: call(n + 1, at), idempotency: Some(stamp) }).unwrap();
        }
        assert_eq!(state.idempotency.len(), IDEMPOTENCY_KEYS_MAX);
        assert!(!state.idempotency.has_room(IDEMPOTENCY_RETENTION_MS - 1), "no key is 24 h old yet");
        assert!(state.idempotency.get("k0", IDEMPOTENCY_RETENTION_MS - 1).is_some());
        let later = IDEMPOTENCY_RETENTION_MS + 999;
        assert!(state.idempotency.has_room(later));
        seq += 1;
        let stamp = IdempotencyStamp { key: "fresh".into(), body_hash: 1 };
        state.apply(seq, &Event::CallAdmitted { call: call(IDEMPOTENCY_KEYS_MAX as u64 + 1, later), idempotency: Some(stamp) }).unwrap();
        assert_eq!(state.idempotency.len(), 1, "every expired key is dropped, the new one kept");
        assert!(state.idempotency.get("fresh", later).is_some());
    }

    /// Past the bound, one pass forgets a tenth of the leads, the oldest days first and that
    /// day's in key order; the newest day's counts (the ones the daily cap reads) stay.
    #[test]
    fn lead_calls_past_the_bound_forget_the_oldest_days_first() {
        let mut state = DurableState::new();
        let lead = |n: usize| (TenantId::from("t"), format!("+1555{n:07}"));
        // Days 20261101..=20261110, 10 000 leads each; leads 5 and 99 999 are called again on
        // the last day.
        for n in 0..LEAD_CALLS_REMEMBERED_MAX {
            state.count_lead_call(lead(n), 20261101 + (n / 10_000) as u32);
        }
        state.count_lead_call(lead(5), 20261110);
        state.count_lead_call(lead(99_999), 20261110);
        assert_eq!(state.lead_calls.len(), LEAD_CALLS_REMEMBERED_MAX, "nothing forgotten at the bound");
        assert_eq!(state.lead_calls_on("t", &lead(99_999).1, 20261110), 2);
        // A new lead: 10 001 entries go, the first day's 9 999 (lead 5 is on the newest day now)
        // and the second day's first two.
        state.count_lead_call(lead(LEAD_CALLS_REMEMBERED_MAX), 20261110);
        assert_eq!(state.lead_calls.len(), LEAD_CALLS_REMEMBERED_MAX - LEAD_CALLS_FORGOTTEN_PER_PASS);
        assert!(state.lead_calls.values().all(|(day, _)| *day >= 20261102), "the oldest day is forgotten whole");
        assert_eq!(state.lead_calls_on("t", &lead(5).1, 20261110), 1, "a lead called on the newest day is kept");
        let second_day = state.lead_calls.values().filter(|(day, _)| *day == 20261102).count();
        assert_eq!(second_day, 10_000 - 2, "the rest of the tenth comes from the next day, in key order");
        assert!(!state.lead_calls.contains_key(&lead(10_000)) && !state.lead_calls.contains_key(&lead(10_001)));
        assert!(state.lead_calls.contains_key(&lead(10_002)));
        assert_eq!(state.lead_calls_on("t", &lead(99_999).1, 20261110), 2, "the newest day's counts stay");
        assert_eq!(state.lead_calls_on("t", &lead(LEAD_CALLS_REMEMBERED_MAX).1, 20261110), 1);
        // The next pass comes only after another tenth of new leads.
        for n in 1..LEAD_CALLS_FORGOTTEN_PER_PASS {
            state.count_lead_call(lead(LEAD_CALLS_REMEMBERED_MAX + n), 20261111);
        }
        assert_eq!(state.lead_calls.len(), LEAD_CALLS_REMEMBERED_MAX - 1);
    }

    /// Boot's one-pass grouping gives each tenant and line what the per-entity scans give.
    #[test]
    fn live_calls_grouped_by_owner_match_the_per_owner_scans() {
        let mut state = DurableState::new();
        for n in 0..200u64 {
            let mut call = (*call(n, 0)).clone();
            call.tenant_id = format!("t{}", n % 7).into();
            call.line_id = (n % 3 != 0).then(|| format!("+1555000{:04}", n % 11).into());
            state.live_calls.insert(call.id, Arc::new(call));
        }
        let (by_tenant, by_line) = state.active_by_owner();
        assert_eq!(by_tenant.len(), 7);
        for (tenant, calls) in &by_tenant {
            assert_eq!(*calls, state.tenant_active(tenant), "{tenant}");
        }
        assert_eq!(by_line.len(), 11);
        for (line, calls) in &by_line {
            assert_eq!(*calls, state.line_active(line), "{line}");
        }
        assert_eq!(by_tenant.values().map(BTreeSet::len).sum::<usize>(), 200);
        assert_eq!(by_line.values().map(BTreeSet::len).sum::<usize>(), 200 - 67);
    }

    #[test]
    fn a_ledger_never_goes_below_zero_and_its_kept_transactions_replay_to_its_balance() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.post(1, -5, "charge", 0, None), 0, "nothing to remove, nothing recorded");
        assert!(ledger.transactions.is_empty());
        for n in 0..(CREDIT_TRANSACTIONS_RETAINED as i64 + 50) {
            ledger.post(n as u64, if n % 3 == 0 { -7 } else { 10 }, "x", n as u64, None);
        }
        assert_eq!(ledger.transactions.len(), CREDIT_TRANSACTIONS_RETAINED);
        assert_eq!(ledger.replayed_balance(), i128::from(ledger.balance));
        let before = ledger.balance as i64;
        assert_eq!(ledger.post(9_999, -before - 100, "all", 0, None), -before, "a removal past the balance removes what is there");
        assert_eq!(ledger.balance, 0);
        assert_eq!(ledger.replayed_balance(), 0);
    }

    #[test]
    fn ends_are_metered_per_month_and_pool_and_old_months_are_dropped() {
        let mut state = with_tenant();
        let mut seq = 2;
        let month_ms = 31 * 24 * 60 * 60 * 1000;
        for n in 0..(USAGE_MONTHS_RETAINED as u64 + 2) {
            seq += 1;
            state.apply(seq, &Event::CallAdmitted { call: call(n, n * month_ms), idempotency: None }).unwrap();
            seq += 1;
            let end = Event::CallEnded {
                id: CallId(n),
                ended_at_ms: n * month_ms + 1,
                outcome: "x".into(),
                duration_s: 7,
                characters: 1_500,
                cost_cents: 45,
            };
            state.apply(seq, &end).unwrap();
        }
        let months = &state.usage["t"];
        assert_eq!(months.len(), USAGE_MONTHS_RETAINED);
        let newest = months.last_key_value().unwrap().1;
        assert_eq!(newest["standard_voice"], UsageTotals { calls: 1, seconds: 7, characters: 1_500, cost_cents: 45 });
    }
}
