//! The journal writer: one actor that orders, group-commits and acknowledges every event.
//!
//! Appends are accepted in mailbox order: each gets the next sequence number, is applied to the
//! durable state the writer keeps, and is queued for writing. A disk store is written by the
//! journal's own I/O thread: whenever it is ready for another write it takes everything queued
//! (up to a batch), writes it, flushes once and reports back how far the log is durable; the
//! writer then acknowledges every append up to there. While one batch is being written, new
//! appends pile up in the queue. One write, one flush, many acknowledgements: that is the
//! group commit. The thread is woken only when it has run out of work; under load it never
//! waits, and queuing an append costs the async worker a short lock, not a wake-up.
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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
/// Appends accepted and not yet durable (queued or being written). Past it appends are refused
/// with `Overloaded` (503), which bounds memory if the disk stalls; the HTTP layer's in-flight
/// limit normally keeps far below.
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
    /// Bumps `entity`'s generation and hands over its state (supervisor only), once every
    /// event in that state is durable: a rebuilt actor must not answer from an event whose
    /// write may still fail (the append that timed out and made its actor fail, say). A failed
    /// journal refuses.
    Handover {
        entity: Entity,
        reply: HandoverReply,
    },
    /// Runs a read-only closure against the durable state (summaries, the invariant test).
    Inspect(Inspector),
    /// Answers once everything accepted before it is durable.
    Sync {
        reply: RpcReplyPort<Result<(), AppendError>>,
    },
    /// Internal: a write finished. On success, every event up to `result`'s seq is durable.
    Written {
        result: Result<u64, String>,
        /// How long the write and its flush took.
        took: std::time::Duration,
        events: usize,
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

/// A usage threshold an accepted event crossed.
struct PendingAlert {
    tenant_id: String,
    level: UsageAlert,
    used: u64,
    limit: u64,
}

/// An entity's new generation and its state.
pub type HandedOver = (u32, Handover);
/// Where a handover is answered: its state, or why the journal refuses it.
pub type HandoverReply = RpcReplyPort<Result<HandedOver, AppendError>>;

pub struct JournalState {
    durable: DurableState,
    generations: BTreeMap<Entity, u32>,
    /// Accepted appends not yet durable, in sequence order, and who waits for each. Bounded by
    /// `JOURNAL_PENDING_MAX`.
    waiting: VecDeque<(u64, Waiter)>,
    syncs_waiting: Vec<(u64, RpcReplyPort<Result<(), AppendError>>)>,
    /// Handovers waiting for their state to be durable. The supervisor asks for one at a time
    /// and asks again after each journal timeout; an ask it gave up on is dropped when the next
    /// one comes, so this holds one entry, and the next write's end answers it (a failed write
    /// refuses it).
    handovers_waiting: Vec<(u64, HandoverReply, HandedOver)>,
    /// Balances changed by accepted events, published to `balances` as durable once they are,
    /// in sequence order. At most one per accepted event, so bounded like `waiting`.
    balances_pending: VecDeque<(u64, crate::model::TenantId, u64)>,
    /// Usage alerts raised by accepted events, sent once durable. At most one per accepted
    /// event, so bounded like `waiting`.
    alerts_pending: VecDeque<(u64, PendingAlert)>,
    events_since_snapshot: u64,
    last_durable_seq: u64,
    failed: Option<String>,
    sink: Sink,
}

/// Where accepted events go to be written.
enum Sink {
    /// A store that does not block (memory: tests, simulations): the writer writes each
    /// message's events itself before it takes the next message, with no thread and no
    /// message to itself, so paused time stays deterministic.
    Inline(WriteBatch),
    /// A disk store: its I/O thread takes the queue whenever it is ready to write.
    Thread(IoThread),
}

impl Actor for JournalWriter {
    type Msg = JournalMsg;
    type State = JournalState;
    type Arguments = DurableState;

    async fn pre_start(&self, myself: ActorRef<JournalMsg>, durable: DurableState) -> Result<JournalState, ActorProcessingErr> {
        let sink = if self.store.blocks() {
            Sink::Thread(IoThread::spawn(Arc::clone(&self.store), myself)?)
        } else {
            Sink::Inline(WriteBatch::default())
        };
        Ok(JournalState {
            sink,
            last_durable_seq: durable.last_seq,
            durable,
            generations: BTreeMap::new(),
            waiting: VecDeque::new(),
            syncs_waiting: Vec::new(),
            handovers_waiting: Vec::new(),
            balances_pending: VecDeque::new(),
            alerts_pending: VecDeque::new(),
            events_since_snapshot: 0,
            failed: None,
        })
    }

    async fn handle(&self, _: ActorRef<JournalMsg>, msg: JournalMsg, state: &mut JournalState) -> Result<(), ActorProcessingErr> {
        match msg {
            JournalMsg::Append { event, guard, reply } => match self.accept(state, &event, &guard) {
                Ok(seq) => state.waiting.push_back((seq, Waiter::Append(reply))),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            JournalMsg::AdjustCredits { tenant_id, amount, reason, at_ms, guard, reply } => {
                let event = Event::CreditsAdjusted { tenant_id: tenant_id.clone(), amount, reason, at_ms };
                match self.accept(state, &event, &guard) {
                    Ok(seq) => {
                        let posted = state.durable.ledgers.get(&tenant_id).and_then(|l| l.transactions.back()).filter(|tx| tx.seq == seq);
                        state.waiting.push_back((seq, Waiter::Credit(Box::new((reply, posted.cloned())))));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            JournalMsg::Handover { entity, reply } => {
                let generation = state.generations.entry(entity.clone()).or_insert(0);
                *generation += 1;
                if let Some(why) = &state.failed {
                    // Refused: the state may hold events that never reached the disk.
                    let _ = reply.send(Err(AppendError::Failed(why.clone())));
                } else if state.last_durable_seq >= state.durable.last_seq {
                    let _ = reply.send(Ok((*generation, handover(&state.durable, &entity))));
                } else {
                    // Asks the supervisor gave up on (it asks again after each timeout) go first:
                    // each holds a copy of an entity's state.
                    state.handovers_waiting.retain(|(_, reply, _)| !reply.is_closed());
                    let answer = (*generation, handover(&state.durable, &entity));
                    state.handovers_waiting.push((state.durable.last_seq, reply, answer));
                }
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
            JournalMsg::Written { result, took, events } => self.written(state, result, took, events),
        }
        self.write_inline(state);
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

    /// Checks, sequences, encodes, applies and queues one event; returns its sequence number.
    /// Refusals change nothing.
    fn accept(&self, state: &mut JournalState, event: &Event, guard: &Guard) -> Result<u64, AppendError> {
        if let Some(why) = &state.failed {
            return Err(AppendError::Failed(why.clone()));
        }
        if state.waiting.len() >= JOURNAL_PENDING_MAX {
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
            // Decisions see it now; clients once it is durable (`written`): a GET must not show
            // a balance a failed write would take back.
            let balance = state.durable.balance(&tenant);
            self.balances.write().unwrap_or_else(|poisoned| poisoned.into_inner()).entry(tenant.clone()).or_default().accepted = balance;
            state.balances_pending.push_back((seq, tenant, balance));
        }
        if let Some((tenant_id, limit, before, characters)) = metered {
            // Events are applied one at a time, in journal order: each crossing is seen once.
            let (from, to) = (usage_alert(before, limit), usage_alert(before + characters, limit));
            if to != from && to != UsageAlert::Ok {
                // Raised once the usage is durable (`written`): an alert for usage a failed
                // write took back would be raised again after a restart.
                state.alerts_pending.push_back((seq, PendingAlert { tenant_id, level: to, used: before + characters, limit }));
            }
        }
        // A snapshot follows the event that makes it due, in the same write: it describes
        // exactly the events written up to it.
        state.events_since_snapshot += 1;
        let snapshot = if state.events_since_snapshot >= self.snapshot_every_events {
            state.events_since_snapshot = 0;
            // The event is applied: it is queued whatever happens to its snapshot, and a
            // snapshot that cannot be encoded is left to the next interval (replay is longer).
            codec::encode(&state.durable).inspect_err(|error| tracing::error!(%error, "could not encode a journal snapshot")).ok()
        } else {
            None
        };
        match &mut state.sink {
            Sink::Inline(batch) => {
                batch.events.push((seq, bytes));
                if let Some(snapshot) = snapshot {
                    batch.snapshot = Some((seq, snapshot));
                }
            }
            Sink::Thread(io) => io.queue(seq, bytes, snapshot),
        }
        Ok(seq)
    }

    /// A store that does not block writes what this message queued before the next message.
    fn write_inline(&self, state: &mut JournalState) {
        let Sink::Inline(batch) = &mut state.sink else { return };
        if batch.events.is_empty() {
            return;
        }
        let batch = std::mem::take(batch);
        let (last, events) = (batch.last_seq().unwrap_or(0), batch.events.len());
        let started = Instant::now();
        let result = self.store.write(batch).map(|()| last).map_err(|e| e.to_string());
        self.written(state, result, started.elapsed(), events);
    }

    fn written(&self, state: &mut JournalState, result: Result<u64, String>, took: std::time::Duration, events: usize) {
        match result {
            Ok(durable) => {
                self.telemetry.journal_flushed(took.as_secs_f64(), events);
                state.last_durable_seq = durable;
                // Before any reply: a client told its top-up is done sees the new balance.
                if state.balances_pending.front().is_some_and(|(seq, _, _)| *seq <= durable) {
                    let mut balances = self.balances.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                    while state.balances_pending.front().is_some_and(|(seq, _, _)| *seq <= durable) {
                        let (_, tenant, balance) = state.balances_pending.pop_front().expect("checked");
                        balances.entry(tenant).or_default().durable = balance;
                    }
                }
                while state.alerts_pending.front().is_some_and(|(seq, _)| *seq <= durable) {
                    let (_, alert) = state.alerts_pending.pop_front().expect("checked");
                    let PendingAlert { tenant_id, level, used, limit } = alert;
                    self.telemetry.usage_alert(level.as_str());
                    tracing::warn!(alert = "USAGE_ALERT", level = level.as_str(), tenant_id = %tenant_id, used, limit, "monthly premium characters crossed a threshold");
                }
                while state.waiting.front().is_some_and(|(seq, _)| *seq <= durable) {
                    let (seq, waiter) = state.waiting.pop_front().expect("checked");
                    waiter.durable(seq);
                }
                let (ready, waiting): (Vec<_>, Vec<_>) = state.syncs_waiting.drain(..).partition(|(seq, _)| *seq <= durable);
                state.syncs_waiting = waiting;
                for (_, reply) in ready {
                    let _ = reply.send(Ok(()));
                }
                let (ready, waiting): (Vec<_>, Vec<_>) = state.handovers_waiting.drain(..).partition(|(seq, _, _)| *seq <= durable);
                state.handovers_waiting = waiting;
                for (_, reply, answer) in ready {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(why) => {
                tracing::error!(error = %why, "journal write failed; refusing all further writes");
                let error = AppendError::Failed(why.clone());
                for (_, waiter) in state.waiting.drain(..) {
                    waiter.refused(error.clone());
                }
                for (_, reply) in state.syncs_waiting.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
                // Refused: their state holds events that failed.
                for (_, reply, _) in state.handovers_waiting.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
                state.balances_pending.clear();
                state.alerts_pending.clear();
                if let Sink::Inline(batch) = &mut state.sink {
                    *batch = WriteBatch::default();
                }
                state.failed = Some(why);
                self.healthy.store(false, Ordering::SeqCst);
            }
        }
    }
}

/// Events accepted for a disk store and not yet taken by its I/O thread, in sequence order.
#[derive(Default)]
struct IoQueue {
    items: VecDeque<Queued>,
    /// The thread waits for work on the condition variable (and must be woken).
    idle: bool,
    /// The writer is gone: the thread ends once the queue is empty.
    closed: bool,
}

enum Queued {
    Event(u64, Vec<u8>),
    /// A snapshot of the state right after the event queued before it.
    Snapshot(u64, Vec<u8>),
}

/// The journal's I/O thread and its queue.
///
/// One long-lived thread writes everything for the process's life: when it is ready for
/// another write it takes what is queued (up to `JOURNAL_BATCH_EVENTS_MAX` events, and never
/// past a snapshot), writes and flushes it, and tells the writer how far the log is durable.
/// The queue is a mutex the writer holds only to push; the thread sleeps on a condition
/// variable only when the queue is empty, so under load queuing costs no wake-up (the old
/// design handed each batch over a channel, which woke the thread on every group commit:
/// a futex call on the async worker each time). A failed or panicking write fails the
/// journal and ends the thread: nothing after it is written.
struct IoThread {
    shared: Arc<(std::sync::Mutex<IoQueue>, std::sync::Condvar)>,
}

impl IoThread {
    fn spawn(store: Arc<dyn Store>, writer: ActorRef<JournalMsg>) -> Result<IoThread, ActorProcessingErr> {
        let shared = Arc::new((std::sync::Mutex::new(IoQueue::default()), std::sync::Condvar::new()));
        let queue = Arc::clone(&shared);
        std::thread::Builder::new().name("journal-io".into()).spawn(move || {
            while let Some(batch) = IoThread::take(&queue) {
                let (last, events) = (batch.last_seq().unwrap_or(0), batch.events.len());
                let started = Instant::now();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.write(batch)))
                    .unwrap_or_else(|panic| {
                        let why = panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str));
                        Err(crate::store::StoreError::Io(format!("the journal write panicked: {}", why.unwrap_or("(no message)"))))
                    })
                    .map(|()| last)
                    .map_err(|e| e.to_string());
                let failed = result.is_err();
                if writer.cast(JournalMsg::Written { result, took: started.elapsed(), events }).is_err() || failed {
                    break;
                }
            }
        })?;
        Ok(IoThread { shared })
    }

    /// Queues an event (and the snapshot that follows it) for the thread, waking it if it
    /// has run out of work.
    fn queue(&self, seq: u64, bytes: Vec<u8>, snapshot: Option<Vec<u8>>) {
        let (queue, ready) = &*self.shared;
        let mut queue = queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.items.push_back(Queued::Event(seq, bytes));
        if let Some(snapshot) = snapshot {
            queue.items.push_back(Queued::Snapshot(seq, snapshot));
        }
        if queue.idle {
            queue.idle = false;
            ready.notify_one();
        }
    }

    /// The thread's next batch: waits until something is queued; `None` once the writer is
    /// gone and the queue is empty.
    fn take(shared: &(std::sync::Mutex<IoQueue>, std::sync::Condvar)) -> Option<WriteBatch> {
        let (queue, ready) = shared;
        let mut queue = queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while queue.items.is_empty() {
            if queue.closed {
                return None;
            }
            queue.idle = true;
            queue = ready.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        queue.idle = false;
        let mut batch = WriteBatch { events: Vec::with_capacity(queue.items.len().min(JOURNAL_BATCH_EVENTS_MAX)), snapshot: None };
        while batch.events.len() < JOURNAL_BATCH_EVENTS_MAX {
            match queue.items.pop_front() {
                Some(Queued::Event(seq, bytes)) => batch.events.push((seq, bytes)),
                Some(Queued::Snapshot(seq, bytes)) => {
                    batch.snapshot = Some((seq, bytes));
                    break;
                }
                None => break,
            }
        }
        // A snapshot right after the batch's last event belongs to this write.
        if batch.snapshot.is_none()
            && let Some(Queued::Snapshot(seq, _)) = queue.items.front()
            && batch.last_seq() == Some(*seq)
            && let Some(Queued::Snapshot(seq, bytes)) = queue.items.pop_front()
        {
            batch.snapshot = Some((seq, bytes));
        }
        Some(batch)
    }
}

/// The writer is gone (its state dropped): the thread writes what is queued, then ends.
impl Drop for IoThread {
    fn drop(&mut self) {
        let (queue, ready) = &*self.shared;
        queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).closed = true;
        ready.notify_one();
    }
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

    fn io_queue() -> IoThread {
        IoThread { shared: Arc::new((std::sync::Mutex::new(IoQueue::default()), std::sync::Condvar::new())) }
    }

    fn seqs(batch: &WriteBatch) -> (Vec<u64>, Option<u64>) {
        (batch.events.iter().map(|(seq, _)| *seq).collect(), batch.snapshot.as_ref().map(|(seq, _)| *seq))
    }

    /// The I/O thread takes everything queued, but never past a snapshot: a snapshot is written
    /// with the event it follows, and describes exactly the events written up to it.
    #[test]
    fn the_io_thread_takes_the_queue_up_to_and_with_the_first_snapshot() {
        let io = io_queue();
        io.queue(1, vec![1], None);
        io.queue(2, vec![2], Some(vec![0]));
        io.queue(3, vec![3], None);
        io.queue(4, vec![4], Some(vec![0]));
        io.queue(5, vec![5], None);
        let take = || IoThread::take(&io.shared).map(|batch| seqs(&batch));
        assert_eq!(take(), Some((vec![1, 2], Some(2))));
        assert_eq!(take(), Some((vec![3, 4], Some(4))));
        assert_eq!(take(), Some((vec![5], None)));
        // The writer is gone: what is queued is still written, then the thread ends.
        io.queue(6, vec![6], None);
        let shared = Arc::clone(&io.shared);
        drop(io);
        assert_eq!(IoThread::take(&shared).map(|batch| seqs(&batch)), Some((vec![6], None)));
        assert!(IoThread::take(&shared).is_none());
    }

    /// A backlog larger than a batch is split; a snapshot due right at the split goes with
    /// the first part, one due after it with the part that holds its event.
    #[test]
    fn a_backlog_past_the_batch_bound_is_split_and_keeps_its_snapshots() {
        for (snapshot_at, first, second) in [
            (JOURNAL_BATCH_EVENTS_MAX as u64, Some(JOURNAL_BATCH_EVENTS_MAX as u64), None),
            (JOURNAL_BATCH_EVENTS_MAX as u64 + 1, None, Some(JOURNAL_BATCH_EVENTS_MAX as u64 + 1)),
        ] {
            let io = io_queue();
            for seq in 1..=JOURNAL_BATCH_EVENTS_MAX as u64 + 1 {
                io.queue(seq, Vec::new(), (seq == snapshot_at).then(Vec::new));
            }
            let (events, snapshot) = seqs(&IoThread::take(&io.shared).unwrap());
            assert_eq!(
                (events.len(), events.last().copied(), snapshot),
                (JOURNAL_BATCH_EVENTS_MAX, Some(snapshot_at.min(JOURNAL_BATCH_EVENTS_MAX as u64)), first)
            );
            let (events, snapshot) = seqs(&IoThread::take(&io.shared).unwrap());
            assert_eq!((events, snapshot), (vec![JOURNAL_BATCH_EVENTS_MAX as u64 + 1], second));
        }
    }

    /// A store that blocks, so the writer runs it on its I/O thread; it keeps what it is given
    /// in a memory store and remembers each batch's shape.
    #[derive(Default)]
    struct BlockingStore {
        inner: MemoryStore,
        batches: std::sync::Mutex<Vec<(Vec<u64>, Option<u64>)>>,
    }

    impl Store for BlockingStore {
        fn write(&self, batch: WriteBatch) -> Result<(), crate::store::StoreError> {
            self.batches.lock().unwrap().push(seqs(&batch));
            // Slow enough that appends pile up behind a write and go as one group commit.
            std::thread::sleep(Duration::from_millis(2));
            self.inner.write(batch)
        }
        fn blocks(&self) -> bool {
            true
        }
        fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, crate::store::StoreError> {
            self.inner.latest_snapshot()
        }
        fn scan_after(&self, seq: u64, visit: &mut crate::store::Visit<'_>) -> Result<(), crate::store::StoreError> {
            self.inner.scan_after(seq, visit)
        }
    }

    /// Through the I/O thread: every append is acknowledged once durable, appends made during
    /// a write share the next one, every snapshot ends its batch, and the store replays to the
    /// writer's state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_through_the_io_thread_are_group_committed_and_replay_to_the_same_state() {
        let store = Arc::new(BlockingStore::default());
        let mut journal_writer = writer();
        journal_writer.store = store.clone();
        journal_writer.snapshot_every_events = 7;
        let (journal, handle) = Actor::spawn(None, journal_writer, DurableState::new()).await.unwrap();
        let appends = (0..40).map(|n| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let event = Event::TenantCreated(crate::model::test_tenant(&format!("t{n}")));
                crate::append(&journal, event, Guard::default(), Duration::from_secs(5)).await
            })
        });
        let mut acknowledged: Vec<u64> = Vec::new();
        for append in appends.collect::<Vec<_>>() {
            acknowledged.push(append.await.unwrap().expect("acknowledged"));
        }
        acknowledged.sort_unstable();
        assert_eq!(acknowledged, (1..=40).collect::<Vec<_>>(), "each append its own seq, all durable");
        let batches = store.batches.lock().unwrap().clone();
        assert!(batches.len() < 40, "appends made during a write share a batch: {batches:?}");
        let written: Vec<u64> = batches.iter().flat_map(|(events, _)| events.iter().copied()).collect();
        assert_eq!(written, (1..=40).collect::<Vec<_>>(), "written once each, in order");
        let snapshots: Vec<u64> = batches
            .iter()
            .filter_map(|(events, snapshot)| {
                if let Some(seq) = snapshot {
                    assert_eq!(events.last(), Some(seq), "a snapshot ends its batch");
                }
                *snapshot
            })
            .collect();
        assert_eq!(snapshots, vec![7, 14, 21, 28, 35]);
        let live = crate::read_journal(&journal, |durable: &DurableState| durable.clone(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(crate::store::recover(&store.inner).unwrap(), live);
        journal.stop(None);
        handle.await.unwrap();
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
