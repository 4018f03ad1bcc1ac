//! The journal writer: one actor that orders, group-commits and acknowledges every event.
//!
//! Appends are accepted in mailbox order: each gets the next sequence number, is applied to the
//! durable state the writer keeps, and joins the pending batch. While one batch is being
//! written (off the async workers for a disk store), new appends pile up; when it is durable
//! every append in it is acknowledged and the next batch starts. One write, one flush, many
//! acknowledgements: that is the group commit.
//!
//! Generations close the gap a crashed actor would leave. An admission reserves slots in the
//! tenant, line and pool actors first and appends second, naming the generation of each actor
//! it reserved in. When the supervisor rebuilds a crashed actor it asks this writer to bump the
//! actor's generation and hand over its state in one step: an append accepted before that is in
//! the handed-over state; one naming the old generation after it is refused (and retried by the
//! admission), so a rebuilt actor never misses a reservation that later becomes durable.
//!
//! A failed write is fatal for the journal: nothing in the failed batch is acknowledged and
//! every later append is refused until an operator restarts the process (TigerBeetle's rule:
//! never keep running on storage whose state you do not know).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::codec;
use crate::core::features::{UsageAlert, usage_alert};
use crate::event::Event;
use crate::model::{CallId, CallRecord, CreditTx, EndedCall, LineId, LineRecord, TenantId, TenantRecord};
use crate::state::{DurableState, PoolRecord};
use crate::store::{Store, WriteBatch};
use crate::telemetry::Telemetry;

/// Events in one write. A larger backlog is written as several batches, one after another.
pub const JOURNAL_BATCH_EVENTS_MAX: usize = 8_192;
/// Batches handed to the journal's I/O thread and not yet reported written. The writer starts a
/// write only after the previous one's `Written`, so the slot is always free when it sends;
/// finding it taken is a bug, and fails the journal.
pub const JOURNAL_WRITES_IN_FLIGHT: usize = 1;
/// Appends waiting for a write. Past it appends are refused with `Overloaded` (503), which
/// bounds memory if the disk stalls; the HTTP layer's in-flight limit normally keeps far below.
pub const JOURNAL_PENDING_MAX: usize = 65_536;

/// An actor whose state the journal can hand over after a crash.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entity {
    Tenant(TenantId),
    Line(LineId),
    Platform,
    Call(CallId),
    CallbackQueue(LineId),
}

/// For logs: a line's id is a phone number, so it is masked.
impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entity::Tenant(id) => write!(f, "tenant {id}"),
            Entity::Line(id) => write!(f, "line {}", crate::model::mask_phone(id)),
            Entity::Platform => write!(f, "platform"),
            Entity::Call(id) => write!(f, "{id}"),
            Entity::CallbackQueue(id) => write!(f, "callback queue of line {}", crate::model::mask_phone(id)),
        }
    }
}

/// The generations an append's reservations were made in.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    pub tenant: Option<(TenantId, u32)>,
    pub line: Option<(LineId, u32)>,
    pub platform: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("an actor this append reserved in was rebuilt; retry")]
    StaleGeneration,
    #[error("journal backlog is full")]
    Overloaded,
    #[error("journal storage failed: {0}")]
    Failed(String),
    #[error("the journal did not answer in time; the outcome is unknown")]
    Unknown,
    #[error("no room for another idempotency key")]
    IdempotencyFull,
    #[error("the balance is {balance}: a removal may not take it below zero")]
    InsufficientBalance { balance: u64 },
    #[error("the lead was called as often today as its campaign allows")]
    DailyCapReached,
    #[error("at most {} campaigns are kept", crate::state::CAMPAIGNS_MAX)]
    CampaignsFull,
}

/// An actor whose own append timed out cannot know its state any more: it answers, then
/// fails on purpose with this, and the supervisor rebuilds it from the journal (which hands
/// the state over only after processing the pending append, whichever way that went).
pub fn unknown_outcome() -> ActorProcessingErr {
    "a journal append's outcome is unknown; rebuilding from the journal".into()
}

/// An entity's state as the journal knows it, with its new generation.
#[derive(Clone, Debug)]
pub enum Handover {
    Tenant(TenantRecord, BTreeSet<CallId>),
    Line(LineRecord, BTreeSet<CallId>),
    /// Every pool, and every live call's pool and class.
    Platform(BTreeMap<String, PoolRecord>, BTreeMap<CallId, (String, String)>),
    Call(Arc<CallRecord>),
    /// The call's end is durable but its actor died before finishing it: the supervisor
    /// completes the end (moves it to ended calls, frees its slots).
    CallEnded(EndedCall),
    /// A line's open callback entries.
    CallbackQueue(
        LineRecord,
        BTreeMap<crate::model::CallbackId, crate::model::CallbackEntry>,
        BTreeMap<crate::model::CampaignId, crate::model::Campaign>,
    ),
    /// The entity no longer exists.
    Gone,
}

/// Where an append's acknowledgement goes.
pub type AppendReply = RpcReplyPort<Result<u64, AppendError>>;

/// Where a credit adjustment's acknowledgement goes: the transaction the ledger posted, or
/// `None` for an amount of zero, which posts nothing.
pub type CreditReply = RpcReplyPort<Result<Option<CreditTx>, AppendError>>;

/// Who waits for an accepted event to become durable.
enum Waiter {
    Append(AppendReply),
    /// The transaction is known when the event is applied, in journal order; it is answered
    /// with the acknowledgement, so the caller never has to find it in the ledger later
    /// (where it may already have been pushed out by newer ones). Boxed: every append sits in
    /// the pending batch, and this rare one should not make them all larger.
    Credit(Box<(CreditReply, Option<CreditTx>)>),
}

impl Waiter {
    fn durable(self, seq: u64) {
        match self {
            Waiter::Append(reply) => {
                let _ = reply.send(Ok(seq));
            }
            Waiter::Credit(credit) => {
                let (reply, tx) = *credit;
                let _ = reply.send(Ok(tx));
            }
        }
    }

    fn refused(self, error: AppendError) {
        match self {
            Waiter::Append(reply) => {
                let _ = reply.send(Err(error));
            }
            Waiter::Credit(credit) => {
                let _ = credit.0.send(Err(error));
            }
        }
    }
}

pub type Inspector = Box<dyn FnOnce(&DurableState) + Send>;

// Appends are nearly every message: boxing them would add an allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum JournalMsg {
    Append {
        event: Event,
        guard: Guard,
        reply: AppendReply,
    },
    /// Appends a `CreditsAdjusted` event and answers, once durable, with the transaction the
    /// ledger posted for it (its number and the balance after it).
    AdjustCredits {
        tenant_id: TenantId,
        amount: i64,
        reason: String,
        at_ms: u64,
        guard: Guard,
        reply: CreditReply,
    },
    /// Bumps `entity`'s generation and hands over its state (supervisor only).
    Handover {
        entity: Entity,
        reply: RpcReplyPort<(u32, Handover)>,
    },
    /// Runs a read-only closure against the durable state (summaries, the invariant test).
    Inspect(Inspector),
    /// Answers once everything accepted before it is durable.
    Sync {
        reply: RpcReplyPort<Result<(), AppendError>>,
    },
    /// Internal: a write finished.
    Written {
        result: Result<(), String>,
        started: Instant,
    },
}

pub struct JournalWriter {
    pub store: Arc<dyn Store>,
    pub telemetry: Arc<dyn Telemetry>,
    /// Take a snapshot after this many events (bounds replay time and disk).
    pub snapshot_every_events: u64,
    /// Cleared on a failed write: the service reports unready and refuses changes.
    pub healthy: Arc<AtomicBool>,
    /// `(premium pool, premium feature)`: whose ended calls count against the add-on's limit.
    pub usage_alerts: Option<(String, String)>,
    /// Every tenant's credit balance, published in journal order (the only order: a charge
    /// stops at zero, so adding and charging do not commute).
    pub balances: crate::context::SharedBalances,
}

pub struct JournalState {
    durable: DurableState,
    generations: BTreeMap<Entity, u32>,
    pending: Vec<(u64, Vec<u8>, Waiter)>,
    in_flight: Vec<(u64, Waiter)>,
    syncs_waiting: Vec<(u64, RpcReplyPort<Result<(), AppendError>>)>,
    writing: bool,
    snapshot_due: bool,
    events_since_snapshot: u64,
    last_durable_seq: u64,
    failed: Option<String>,
    /// For a blocking store: the journal's own I/O thread, which writes one batch at a time.
    io: Option<std::sync::mpsc::SyncSender<(WriteBatch, Instant)>>,
}

impl Actor for JournalWriter {
    type Msg = JournalMsg;
    type State = JournalState;
    type Arguments = DurableState;

    async fn pre_start(&self, myself: ActorRef<JournalMsg>, durable: DurableState) -> Result<JournalState, ActorProcessingErr> {
        let io = if self.store.blocks() { Some(spawn_io_thread(Arc::clone(&self.store), myself)?) } else { None };
        Ok(JournalState {
            io,
            last_durable_seq: durable.last_seq,
            durable,
            generations: BTreeMap::new(),
            pending: Vec::new(),
            in_flight: Vec::new(),
            syncs_waiting: Vec::new(),
            writing: false,
            snapshot_due: false,
            events_since_snapshot: 0,
            failed: None,
        })
    }

    async fn handle(&self, _: ActorRef<JournalMsg>, msg: JournalMsg, state: &mut JournalState) -> Result<(), ActorProcessingErr> {
        match msg {
            JournalMsg::Append { event, guard, reply } => match self.accept(state, &event, &guard) {
                Ok(bytes) => state.pending.push((state.durable.last_seq, bytes, Waiter::Append(reply))),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            JournalMsg::AdjustCredits { tenant_id, amount, reason, at_ms, guard, reply } => {
                let event = Event::CreditsAdjusted { tenant_id: tenant_id.clone(), amount, reason, at_ms };
                match self.accept(state, &event, &guard) {
                    Ok(bytes) => {
                        let seq = state.durable.last_seq;
                        let posted = state.durable.ledgers.get(&tenant_id).and_then(|l| l.transactions.back()).filter(|tx| tx.seq == seq);
                        state.pending.push((seq, bytes, Waiter::Credit(Box::new((reply, posted.cloned())))));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            JournalMsg::Handover { entity, reply } => {
                let generation = state.generations.entry(entity.clone()).or_insert(0);
                *generation += 1;
                let _ = reply.send((*generation, handover(&state.durable, &entity)));
            }
            JournalMsg::Inspect(inspect) => inspect(&state.durable),
            JournalMsg::Sync { reply } => {
                if let Some(why) = &state.failed {
                    let _ = reply.send(Err(AppendError::Failed(why.clone())));
                } else if state.last_durable_seq >= state.durable.last_seq {
                    let _ = reply.send(Ok(()));
                } else {
                    state.syncs_waiting.push((state.durable.last_seq, reply));
                }
            }
            JournalMsg::Written { result, started } => self.written(state, result, started),
        }
        // A blocking store writes one batch at a time (`writing` until its `Written`); a store
        // that does not block has written each batch on return, so every pending batch goes now.
        while !state.writing && state.failed.is_none() && !state.pending.is_empty() {
            self.start_write(state)?;
        }
        Ok(())
    }
}

impl JournalWriter {
    /// For an end on the premium pool of a tenant whose add-on has a monthly limit: the tenant,
    /// the limit, its premium characters this month before the event, and the call's.
    fn premium_characters_before(&self, durable: &DurableState, event: &Event) -> Option<(String, u64, u64, u64)> {
        let Event::CallEnded { id, ended_at_ms, characters, .. } = event else { return None };
        let (pool, feature) = self.usage_alerts.as_ref()?;
        let call = durable.live_calls.get(id).filter(|c| c.pool == pool && *characters > 0)?;
        let limit = durable.tenants.get(&call.tenant_id)?.addons.get(feature)?.monthly_character_limit?;
        let month = crate::model::month_of_ms(*ended_at_ms);
        let before = durable.usage.get(&call.tenant_id).and_then(|m| m.get(&month)).and_then(|p| p.get(pool)).map_or(0, |t| t.characters);
        Some((call.tenant_id.to_string(), limit, before, *characters))
    }

    /// Checks, sequences, encodes and applies one event. Refusals change nothing.
    fn accept(&self, state: &mut JournalState, event: &Event, guard: &Guard) -> Result<Vec<u8>, AppendError> {
        if let Some(why) = &state.failed {
            return Err(AppendError::Failed(why.clone()));
        }
        if state.pending.len() >= JOURNAL_PENDING_MAX {
            return Err(AppendError::Overloaded);
        }
        // Generations move only when an actor is rebuilt; until then every guard is current
        // and the lookups (and their id clones) are skipped.
        let stale = !state.generations.is_empty() && {
            let current = |entity: Entity| state.generations.get(&entity).copied().unwrap_or(0);
            guard.tenant.as_ref().is_some_and(|(id, g)| current(Entity::Tenant(id.clone())) != *g)
                || guard.line.as_ref().is_some_and(|(id, g)| current(Entity::Line(id.clone())) != *g)
                || guard.platform.is_some_and(|g| current(Entity::Platform) != g)
        };
        if stale {
            return Err(AppendError::StaleGeneration);
        }
        // The bound on remembered keys is enforced here, where keys are inserted in order: a
        // check earlier in the admission could be overtaken by concurrent new keys.
        if let Event::CallAdmitted { call, idempotency: Some(stamp) } = event {
            let table = &state.durable.idempotency;
            if table.get(&stamp.key, call.started_at_ms).is_none() && !table.has_room(call.started_at_ms) {
                return Err(AppendError::IdempotencyFull);
            }
        }
        let bytes = codec::encode(event).map_err(|e| AppendError::Failed(e.to_string()))?;
        let seq = state.durable.last_seq + 1;
        // The state is checked before the event is accepted, so a contradiction here is a bug
        // in the caller: refuse the event rather than write something replay would reject.
        // The daily cap per lead is checked here, where calls are counted in order: a check when
        // the contact comes up can be overtaken by another line's campaign calling the same lead.
        if let Event::CampaignContactSet { id, index, day: Some(day), .. } = event
            && let Some(campaign) = state.durable.campaigns.get(id)
            && let Some(contact) = campaign.record.contacts.get(*index as usize)
            && state.durable.lead_calls_on(&campaign.record.tenant_id, &contact.phone, *day) >= campaign.record.max_calls_per_lead_per_day
        {
            return Err(AppendError::DailyCapReached);
        }
        // The bound on kept campaigns, here for the same reason: creates on different lines
        // run in different queue actors, and only here are they counted one at a time.
        if matches!(event, Event::CampaignCreated(_)) && state.durable.campaigns.len() >= crate::state::CAMPAIGNS_MAX {
            return Err(AppendError::CampaignsFull);
        }
        if let Event::CreditsAdjusted { tenant_id, amount, .. } = event {
            let balance = state.durable.balance(tenant_id);
            if *amount < 0 && amount.unsigned_abs() > balance {
                return Err(AppendError::InsufficientBalance { balance });
            }
        }
        let metered = self.premium_characters_before(&state.durable, event);
        // Only a tenant with a ledger has a balance to publish (others are 0 and stay 0).
        let charged = match event {
            Event::CreditsAdjusted { tenant_id, .. } => Some(tenant_id.clone()),
            Event::CallEnded { id, .. } => {
                state.durable.live_calls.get(id).filter(|c| state.durable.ledgers.contains_key(&c.tenant_id)).map(|c| c.tenant_id.clone())
            }
            _ => None,
        };
        state.durable.apply(seq, event).map_err(|e| AppendError::Failed(e.to_string()))?;
        if let Some(tenant) = charged {
            let balance = state.durable.balance(&tenant);
            self.balances.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(tenant, balance);
        }
        if let Some((tenant_id, limit, before, characters)) = metered {
            // Events are applied one at a time, in journal order: each crossing is seen once.
            let (from, to) = (usage_alert(before, limit), usage_alert(before + characters, limit));
            if to != from && to != UsageAlert::Ok {
                self.telemetry.usage_alert(to.as_str());
                tracing::warn!(alert = "USAGE_ALERT", level = to.as_str(), tenant_id = %tenant_id, used = before + characters, limit, "monthly premium characters crossed a threshold");
            }
        }
        state.events_since_snapshot += 1;
        if state.events_since_snapshot >= self.snapshot_every_events {
            state.snapshot_due = true;
        }
        Ok(bytes)
    }

    fn start_write(&self, state: &mut JournalState) -> Result<(), ActorProcessingErr> {
        let take = state.pending.len().min(JOURNAL_BATCH_EVENTS_MAX);
        let mut batch = WriteBatch { events: Vec::with_capacity(take), snapshot: None };
        for (seq, bytes, reply) in state.pending.drain(..take) {
            batch.events.push((seq, bytes));
            state.in_flight.push((seq, reply));
        }
        if state.snapshot_due && state.pending.is_empty() {
            // Only when the batch ends at the state's last event: the snapshot must describe
            // exactly the events written so far.
            batch.snapshot = Some((state.durable.last_seq, codec::encode(&state.durable)?));
            state.snapshot_due = false;
            state.events_since_snapshot = 0;
        }
        state.writing = true;
        let started = Instant::now();
        match &state.io {
            Some(io) => match io.try_send((batch, started)) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(_)) => {
                    self.written(state, Err("a journal write started while another was in flight".into()), started);
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    self.written(state, Err("the journal's I/O thread died".into()), started);
                }
            },
            None => {
                // A store that does not block (memory: tests, simulations) has written the batch
                // when `write` returns: the replies go now, not after a message to ourselves.
                let result = self.store.write(batch).map_err(|e| e.to_string());
                self.written(state, result, started);
            }
        }
        Ok(())
    }

    fn written(&self, state: &mut JournalState, result: Result<(), String>, started: Instant) {
        state.writing = false;
        match result {
            Ok(()) => {
                self.telemetry.journal_flushed(started.elapsed().as_secs_f64(), state.in_flight.len());
                for (seq, waiter) in state.in_flight.drain(..) {
                    state.last_durable_seq = seq;
                    waiter.durable(seq);
                }
                let durable = state.last_durable_seq;
                let (ready, waiting): (Vec<_>, Vec<_>) = state.syncs_waiting.drain(..).partition(|(seq, _)| *seq <= durable);
                state.syncs_waiting = waiting;
                for (_, reply) in ready {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(why) => {
                tracing::error!(error = %why, "journal write failed; refusing all further writes");
                let error = AppendError::Failed(why.clone());
                for (_, waiter) in state.in_flight.drain(..) {
                    waiter.refused(error.clone());
                }
                for (_, _, waiter) in state.pending.drain(..) {
                    waiter.refused(error.clone());
                }
                for (_, reply) in state.syncs_waiting.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
                state.failed = Some(why);
                self.healthy.store(false, Ordering::SeqCst);
            }
        }
    }
}

/// The journal's I/O thread: one long-lived thread that writes the batches the writer hands it
/// (at most one at a time: the channel holds one and the writer waits for `Written`) and reports
/// each back. One thread for the process's life, where a blocking-pool task per write cost a
/// task spawn and an extra wake-up on every group commit. It ends when the writer stops (its
/// sender is dropped with the writer's state). A panicking write fails the journal, as any
/// failed write does.
fn spawn_io_thread(
    store: Arc<dyn Store>,
    writer: ActorRef<JournalMsg>,
) -> Result<std::sync::mpsc::SyncSender<(WriteBatch, Instant)>, ActorProcessingErr> {
    let (sender, batches) = std::sync::mpsc::sync_channel::<(WriteBatch, Instant)>(JOURNAL_WRITES_IN_FLIGHT);
    std::thread::Builder::new().name("journal-io".into()).spawn(move || {
        for (batch, started) in batches {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.write(batch)))
                .unwrap_or_else(|panic| {
                    let why = panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str));
                    Err(crate::store::StoreError::Io(format!("the journal write panicked: {}", why.unwrap_or("(no message)"))))
                })
                .map_err(|e| e.to_string());
            if writer.cast(JournalMsg::Written { result, started }).is_err() {
                break;
            }
        }
    })?;
    Ok(sender)
}

fn handover(durable: &DurableState, entity: &Entity) -> Handover {
    match entity {
        Entity::Tenant(id) => match durable.tenants.get(id) {
            Some(tenant) => Handover::Tenant(tenant.clone(), durable.tenant_active(id)),
            None => Handover::Gone,
        },
        Entity::Line(id) => match durable.lines.get(id) {
            Some(line) => Handover::Line(line.clone(), durable.line_active(id)),
            None => Handover::Gone,
        },
        Entity::Platform => Handover::Platform(durable.pools.clone(), durable.pool_held()),
        Entity::CallbackQueue(id) => match durable.lines.get(id) {
            Some(line) => Handover::CallbackQueue(line.clone(), durable.line_callbacks(id), durable.line_campaigns(id)),
            None => Handover::Gone,
        },
        Entity::Call(id) => match (durable.live_calls.get(id), durable.ended_calls.get(id)) {
            (Some(call), _) => Handover::Call(call.clone()),
            (None, Some(ended)) => Handover::CallEnded(ended.clone()),
            (None, None) => Handover::Gone,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use ractor::Actor;

    use super::*;
    use crate::event::IdempotencyStamp;
    use crate::state::{IDEMPOTENCY_KEYS_MAX, IDEMPOTENCY_RETENTION_MS};
    use crate::store::MemoryStore;
    use crate::telemetry::NoTelemetry;

    fn admitted(n: u64, at_ms: u64, key: &str) -> Event {
        let call = crate::model::test_call(n, at_ms);
        Event::CallAdmitted { call, idempotency: Some(IdempotencyStamp { key: key.into(), body_hash: n }) }
    }

    /// The key bound is enforced where keys are inserted in order: a new key past it is
    /// refused (the admission then answers 503) until the oldest key is 24 h old.
    #[tokio::test]
    async fn a_new_idempotency_key_past_the_bound_is_refused_until_one_expires() {
        let mut durable = DurableState::new();
        let pool = Event::PoolConfigured { pool: "standard_voice".into(), capacity: 5, reserved: Default::default() };
        durable.apply(1, &pool).unwrap();
        durable.apply(2, &Event::TenantCreated(crate::model::test_tenant("t"))).unwrap();
        for n in 0..IDEMPOTENCY_KEYS_MAX as u64 {
            durable.apply(n + 3, &admitted(n + 1, 0, &format!("k{n}"))).unwrap();
        }
        let (journal, _) = Actor::spawn(None, writer(), durable).await.unwrap();
        let timeout = Duration::from_secs(5);
        let next = IDEMPOTENCY_KEYS_MAX as u64 + 1;
        let too_soon = crate::append(&journal, admitted(next, 1, "new"), Guard::default(), timeout).await;
        assert_eq!(too_soon, Err(AppendError::IdempotencyFull));
        let after_expiry = crate::append(&journal, admitted(next, IDEMPOTENCY_RETENTION_MS, "new"), Guard::default(), timeout).await;
        assert!(after_expiry.is_ok(), "{after_expiry:?}");
        journal.stop(None);
    }

    fn writer() -> JournalWriter {
        JournalWriter {
            store: Arc::new(MemoryStore::default()),
            telemetry: Arc::new(NoTelemetry),
            snapshot_every_events: u64::MAX,
            healthy: Arc::new(AtomicBool::new(true)),
            usage_alerts: None,
            balances: Default::default(),
        }
    }

    /// The bound on kept campaigns holds however many lines create at once: the journal counts.
    #[tokio::test]
    async fn a_campaign_past_the_bound_is_refused_in_journal_order() {
        use crate::model::{CampaignId, CampaignRecord, LineRecord};
        use crate::state::CAMPAIGNS_MAX;
        let mut durable = DurableState::new();
        durable.apply(1, &Event::TenantCreated(crate::model::test_tenant("t"))).unwrap();
        durable.apply(2, &Event::LineCreated(LineRecord::new("+14155550100", "t", 2, 0))).unwrap();
        let created = |n: usize| {
            Event::CampaignCreated(CampaignRecord {
                id: CampaignId(n as u64),
                tenant_id: "t".into(),
                line_id: "+14155550100".into(),
                contacts: Vec::new(),
                concurrency: 1,
                max_calls_per_lead_per_day: 1,
                window_start_minute: 0,
                window_end_minute: 1440,
                created_at_ms: 0,
            })
        };
        for n in 1..CAMPAIGNS_MAX {
            durable.apply(n as u64 + 2, &created(n)).unwrap();
        }
        let (journal, _) = Actor::spawn(None, writer(), durable).await.unwrap();
        let timeout = Duration::from_secs(5);
        assert!(crate::append(&journal, created(CAMPAIGNS_MAX), Guard::default(), timeout).await.is_ok(), "the last one fits");
        let refused = crate::append(&journal, created(CAMPAIGNS_MAX + 1), Guard::default(), timeout).await;
        assert_eq!(refused, Err(AppendError::CampaignsFull));
        journal.stop(None);
    }

    /// The per-lead daily cap is enforced where calls are counted, in order: a second count for
    /// a lead at its cap is refused, whichever campaign (or line) asks.
    #[tokio::test]
    async fn a_lead_at_its_daily_cap_is_not_counted_again() {
        use crate::model::{CampaignId, CampaignRecord, Contact, ContactState, ContactStatus, LineRecord};
        let mut durable = DurableState::new();
        durable.apply(1, &Event::TenantCreated(crate::model::test_tenant("t"))).unwrap();
        durable.apply(2, &Event::LineCreated(LineRecord::new("+14155550100", "t", 2, 0))).unwrap();
        let lead = Contact { phone: "+14155550199".into(), name: None, timezone: None };
        let record = CampaignRecord {
            id: CampaignId(1),
            tenant_id: "t".into(),
            line_id: "+14155550100".into(),
            contacts: vec![lead.clone(), lead],
            concurrency: 2,
            max_calls_per_lead_per_day: 1,
            window_start_minute: 0,
            window_end_minute: 1440,
            created_at_ms: 0,
        };
        durable.apply(3, &Event::CampaignCreated(record)).unwrap();
        let (journal, _) = Actor::spawn(None, writer(), durable).await.unwrap();
        let calling = |index, call| Event::CampaignContactSet {
            id: CampaignId(1),
            index,
            state: ContactState { status: ContactStatus::Calling, call_id: Some(CallId(call)), failure_reason: None },
            day: Some(20270115),
            at_ms: 0,
        };
        let timeout = Duration::from_secs(5);
        assert!(crate::append(&journal, calling(0, 1), Guard::default(), timeout).await.is_ok());
        assert_eq!(crate::append(&journal, calling(1, 2), Guard::default(), timeout).await, Err(AppendError::DailyCapReached));
        journal.stop(None);
    }
}
