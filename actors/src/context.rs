//! What every actor and the admission path share: immutable settings, the injected clock and
//! telemetry, the directory, and the spawn functions that put an entity's actor in place.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorCell, SpawnErr};

use crate::call::CallActor;
use crate::callback_queue::{CallbackQueueActor, Dispatch};
use crate::clock::Clock;
use crate::core::call::Watchdog;
use crate::core::pool::PoolTiming;
use crate::directory::{LineSlot, SharedDirectory, Slot};
use crate::journal::Entity;
use crate::model::{CallId, CallRecord, ClassTable, LineRecord, PlanTable, TenantRecord};
use crate::model::{CallbackEntry, CallbackId, Campaign, CampaignId};
use crate::phone_line::LineActor;
use crate::platform::PlatformActor;
use crate::state::PoolRecord;
use crate::telemetry::Telemetry;
use crate::tenant::TenantActor;

/// A provider pool's configuration. Capacity and reservations are the values a fresh pool
/// starts with; once journaled, `PATCH /v1/platform/pools/{name}` changes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub capacity: u32,
    /// Headroom reserved per class (for that class and the ones above it).
    pub reserved: BTreeMap<String, u32>,
    /// What 1000 characters cost on this pool (seed 004: premium 30 cents).
    pub price_cents_per_1000_characters: u64,
}

/// Priority arbitration: classes, pools, waiting and the provider's rate limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arbitration {
    pub classes: ClassTable,
    pub pools: BTreeMap<String, PoolSpec>,
    /// Where standard-voice calls (and any call without a voice) take their slot.
    pub default_pool: crate::model::Name,
    /// Where premium-voice calls take their slot; `None`: premium is never available.
    pub premium_pool: Option<crate::model::Name>,
    /// The feature flag (and add-on type) that unlocks premium voices.
    pub premium_feature: String,
    pub timing: PoolTiming,
    /// No class waits longer than this while capacity keeps turning over.
    pub starvation_bound_ms: u64,
    /// The longest `wait_ms` a request may ask for; longer asks are capped.
    pub wait_ms_max: u64,
    /// The cooldown after a provider 429 that does not say how long.
    pub provider_cooldown_ms_default: u64,
}

impl Default for Arbitration {
    fn default() -> Self {
        let reserved: BTreeMap<String, u32> = [("premium".to_owned(), 2), ("priority".to_owned(), 3)].into_iter().collect();
        let standard = PoolSpec { capacity: 5, reserved: reserved.clone(), price_cents_per_1000_characters: 0 };
        let premium = PoolSpec { capacity: 5, reserved, price_cents_per_1000_characters: 30 };
        let starvation_bound_ms = 10_000;
        Arbitration {
            classes: ClassTable::default(),
            pools: [("standard_voice".to_owned(), standard), ("premium_voice".to_owned(), premium)].into_iter().collect(),
            default_pool: "standard_voice".into(),
            premium_pool: Some("premium_voice".into()),
            premium_feature: "premium_voices".into(),
            timing: PoolTiming { aging_ms: starvation_bound_ms / 2, probe_interval_ms: 60_000, waiting_per_class_max: 1_000 },
            starvation_bound_ms,
            wait_ms_max: 30_000,
            provider_cooldown_ms_default: 30_000,
        }
    }
}

impl Arbitration {
    /// One pool of `capacity` with no reservations and no premium pool: the plain counter of
    /// the foundation's tests and benchmarks.
    pub fn single_pool(capacity: u32) -> Self {
        let pool = PoolSpec { capacity, reserved: BTreeMap::new(), price_cents_per_1000_characters: 0 };
        Arbitration { pools: [("standard_voice".to_owned(), pool)].into_iter().collect(), premium_pool: None, ..Arbitration::default() }
    }

    pub fn price_cents(&self, pool: &str, characters: u64) -> u64 {
        let price = self.pools.get(pool).map_or(0, |p| p.price_cents_per_1000_characters);
        characters.saturating_mul(price).div_ceil(1000)
    }
}

/// Missed-call callbacks (seed 002).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackSettings {
    /// Open entries per line; past it a missed call is refused with an alert.
    pub queue_per_line_max: usize,
    /// A prepaid tenant's balance must exceed this for a callback to be placed.
    pub min_credits: u64,
    /// The backup scan: every queue looks for work this often, in case an event was missed.
    pub backup_scan_interval: Duration,
    /// Dispatches (credit check, admission, dial) in progress at once across all lines.
    pub dispatch_concurrency_max: usize,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        CallbackSettings {
            queue_per_line_max: 1_000,
            min_credits: 100,
            backup_scan_interval: Duration::from_secs(60),
            dispatch_concurrency_max: 64,
        }
    }
}

/// Every tenant's credit balance as the journal writer last applied it and as it is on disk.
pub type SharedBalances = Arc<std::sync::RwLock<BTreeMap<crate::model::TenantId, Balance>>>;

/// A tenant's credit balance, as the journal writer keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// After every accepted event: what decisions use (an admission refused at zero, a callback
    /// held short of credits). Safe before it is durable: whatever such a decision journals
    /// comes later in the log, so it is durable only if the events before it are.
    pub accepted: u64,
    /// After every durable event: what clients are shown.
    pub durable: u64,
}

/// Settings the actors run with (the HTTP crate maps its TOML config onto these).
#[derive(Clone, Debug)]
pub struct Settings {
    pub plans: Arc<PlanTable>,
    pub arbitration: Arc<Arbitration>,
    pub callbacks: CallbackSettings,
    pub watchdog: Watchdog,
    /// How often the watchdog sweeps live calls.
    pub sweep_interval: Duration,
    /// Upper bound on any actor-to-actor call that does not touch the disk.
    pub actor_call_timeout: Duration,
    /// Upper bound on waiting for a journal append (covers a slow fsync).
    pub journal_timeout: Duration,
    pub snapshot_every_events: u64,
    /// Live calls at once, force-admitted inbound included: the bound on every per-call map.
    pub live_calls_max: usize,
    /// `retry_after_s` on a denial that has no better estimate.
    pub retry_after_s: u32,
    /// Admissions in progress at once (each runs to completion in its own task, even when its
    /// caller has gone away); past it admissions are refused at once.
    pub admissions_in_flight_max: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            plans: Arc::new(PlanTable::default()),
            arbitration: Arc::new(Arbitration::default()),
            callbacks: CallbackSettings::default(),
            watchdog: Watchdog { max_duration_ms: 2 * 60 * 60 * 1000, stale_after_ms: 30 * 60 * 1000 },
            sweep_interval: Duration::from_secs(60),
            actor_call_timeout: Duration::from_secs(5),
            journal_timeout: Duration::from_secs(30),
            snapshot_every_events: 100_000,
            live_calls_max: 1_000_000,
            retry_after_s: 2,
            admissions_in_flight_max: 4_096,
        }
    }
}

pub struct Context {
    pub settings: Settings,
    pub clock: Arc<dyn Clock>,
    pub telemetry: Arc<dyn Telemetry>,
    pub directory: SharedDirectory,
    /// Global feature flags as journaled (the supervisor is their only writer).
    pub flags: Arc<std::sync::RwLock<BTreeMap<String, bool>>>,
    /// False once the journal cannot write (a failed write, or the writer died): nothing can
    /// be made durable any more. Shared with the journal writer, which clears it.
    pub journal_alive: Arc<AtomicBool>,
    /// Credit balances in journal order (written by the journal writer only).
    pub balances: SharedBalances,
    /// Callback ids, unique across lines (seeded from the journal at start).
    pub next_callback_number: Arc<std::sync::atomic::AtomicU64>,
    /// Where callback queues hand entries to call back; set when the dispatcher starts.
    pub dispatcher: Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<Dispatch>>>,
    /// Dispatches handed to the dispatcher and not yet done.
    pub dispatches_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Context {
    pub fn journal_alive(&self) -> bool {
        self.journal_alive.load(Ordering::SeqCst)
    }

    pub async fn spawn_tenant(
        &self,
        supervisor: ActorCell,
        record: TenantRecord,
        held: BTreeSet<CallId>,
        generation: u32,
    ) -> Result<(), SpawnErr> {
        let journal = self.directory.read().journal();
        let actor = TenantActor {
            plans: Arc::clone(&self.settings.plans),
            arbitration: Arc::clone(&self.settings.arbitration),
            journal,
            generation,
            journal_timeout: self.settings.journal_timeout,
            balances: Arc::clone(&self.balances),
        };
        let id = record.id.clone();
        let (actor, _) = Actor::spawn_linked(None, actor, (record, held), supervisor).await?;
        let mut directory = self.directory.write();
        directory.by_actor.insert(actor.get_id(), Entity::Tenant(id.clone()));
        directory.tenants.insert(id, Slot { actor, generation });
        Ok(())
    }

    pub async fn spawn_line(
        &self,
        supervisor: ActorCell,
        record: LineRecord,
        held: BTreeSet<CallId>,
        generation: u32,
    ) -> Result<(), SpawnErr> {
        let (id, tenant_id, on_busy) = (record.id.clone(), record.tenant_id.clone(), record.on_busy);
        let line = LineActor { directory: self.directory.clone() };
        let (actor, _) = Actor::spawn_linked(None, line, (record, held), supervisor).await?;
        let mut directory = self.directory.write();
        directory.by_actor.insert(actor.get_id(), Entity::Line(id.clone()));
        directory.lines.insert(id, LineSlot { slot: Slot { actor, generation }, tenant_id, on_busy });
        Ok(())
    }

    /// A line's callback queue, holding its open entries as journaled.
    pub async fn spawn_callback_queue(
        &self,
        supervisor: ActorCell,
        line: &LineRecord,
        entries: BTreeMap<CallbackId, CallbackEntry>,
        campaigns: BTreeMap<CampaignId, Campaign>,
    ) -> Result<(), SpawnErr> {
        let actor = CallbackQueueActor {
            line_id: line.id.clone(),
            tenant_id: line.tenant_id.clone(),
            agent_id: line.agent_id.clone(),
            journal: self.directory.read().journal(),
            journal_timeout: self.settings.journal_timeout,
            clock: Arc::clone(&self.clock),
            telemetry: Arc::clone(&self.telemetry),
            directory: self.directory.clone(),
            next_callback_number: Arc::clone(&self.next_callback_number),
            open_max: self.settings.callbacks.queue_per_line_max,
            dispatcher: Arc::clone(&self.dispatcher),
            dispatches_in_flight: Arc::clone(&self.dispatches_in_flight),
        };
        let (actor, _) = Actor::spawn_linked(None, actor, (entries, campaigns), supervisor).await?;
        let mut directory = self.directory.write();
        directory.by_actor.insert(actor.get_id(), Entity::CallbackQueue(line.id.clone()));
        directory.callback_queues.insert(line.id.clone(), actor);
        Ok(())
    }

    /// A global flag's value (`None`: no such flag).
    pub fn balance(&self, tenant: &str) -> u64 {
        self.balances.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(tenant).map_or(0, |b| b.accepted)
    }

    pub fn flag(&self, name: &str) -> Option<bool> {
        self.flags.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(name).copied()
    }

    pub async fn spawn_platform(
        &self,
        supervisor: ActorCell,
        pools: BTreeMap<String, PoolRecord>,
        held: BTreeMap<CallId, (String, String)>,
        generation: u32,
    ) -> Result<(), SpawnErr> {
        let journal = self.directory.read().journal();
        let actor = PlatformActor {
            journal,
            generation,
            journal_timeout: self.settings.journal_timeout,
            telemetry: Arc::clone(&self.telemetry),
            clock: Arc::clone(&self.clock),
            arbitration: Arc::clone(&self.settings.arbitration),
        };
        let (actor, _) = Actor::spawn_linked(None, actor, (pools, held), supervisor).await?;
        let mut directory = self.directory.write();
        directory.by_actor.insert(actor.get_id(), Entity::Platform);
        directory.platform = Some(Slot { actor, generation });
        Ok(())
    }

    pub async fn spawn_call(&self, supervisor: ActorCell, record: Arc<CallRecord>) -> Result<(), SpawnErr> {
        let journal = self.directory.read().journal();
        let actor = CallActor {
            journal,
            directory: self.directory.clone(),
            clock: Arc::clone(&self.clock),
            telemetry: Arc::clone(&self.telemetry),
            watchdog: self.settings.watchdog,
            journal_timeout: self.settings.journal_timeout,
            arbitration: Arc::clone(&self.settings.arbitration),
        };
        let (actor, _) = Actor::spawn_linked(None, actor, record.clone(), supervisor).await?;
        self.directory.write().add_call(actor, record);
        Ok(())
    }
}
