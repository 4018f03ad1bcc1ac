//! What every actor and the admission path share: immutable settings, the injected clock and
//! telemetry, the directory, and the spawn functions that put an entity's actor in place.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorCell, SpawnErr};

use crate::call::CallActor;
use crate::clock::Clock;
use crate::core::call::Watchdog;
use crate::directory::{LineSlot, SharedDirectory, Slot};
use crate::journal::Entity;
use crate::model::{CallId, CallRecord, LineRecord, PlanTable, TenantRecord};
use crate::phone_line::LineActor;
use crate::platform::PlatformActor;
use crate::telemetry::Telemetry;
use crate::tenant::TenantActor;

/// Settings the actors run with (the HTTP crate maps its TOML config onto these).
#[derive(Clone, Debug)]
pub struct Settings {
    pub plans: Arc<PlanTable>,
    /// The platform pool's capacity on a fresh journal (the provider account's limit).
    pub platform_capacity_default: u32,
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
            platform_capacity_default: 5,
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
    /// False once the journal cannot write (a failed write, or the writer died): nothing can
    /// be made durable any more. Shared with the journal writer, which clears it.
    pub journal_alive: Arc<AtomicBool>,
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
        let actor =
            TenantActor { plans: Arc::clone(&self.settings.plans), journal, generation, journal_timeout: self.settings.journal_timeout };
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
        let (id, tenant_id) = (record.id.clone(), record.tenant_id.clone());
        let (actor, _) = Actor::spawn_linked(None, LineActor, (record, held), supervisor).await?;
        let mut directory = self.directory.write();
        directory.by_actor.insert(actor.get_id(), Entity::Line(id.clone()));
        directory.lines.insert(id, LineSlot { slot: Slot { actor, generation }, tenant_id });
        Ok(())
    }

    pub async fn spawn_platform(
        &self,
        supervisor: ActorCell,
        capacity: u32,
        held: BTreeSet<CallId>,
        generation: u32,
    ) -> Result<(), SpawnErr> {
        let journal = self.directory.read().journal();
        let actor =
            PlatformActor { journal, generation, journal_timeout: self.settings.journal_timeout, telemetry: Arc::clone(&self.telemetry) };
        let (actor, _) = Actor::spawn_linked(None, actor, (capacity, held), supervisor).await?;
        let mut directory = self.directory.write();
        directory.by_actor.insert(actor.get_id(), Entity::Platform);
        directory.platform = Some(Slot { actor, generation });
        Ok(())
    }

    pub async fn spawn_call(&self, supervisor: ActorCell, record: CallRecord) -> Result<(), SpawnErr> {
        let journal = self.directory.read().journal();
        let actor = CallActor {
            journal,
            directory: self.directory.clone(),
            clock: Arc::clone(&self.clock),
            telemetry: Arc::clone(&self.telemetry),
            watchdog: self.settings.watchdog,
            journal_timeout: self.settings.journal_timeout,
        };
        let (actor, _) = Actor::spawn_linked(None, actor, record.clone(), supervisor).await?;
        self.directory.write().add_call(actor, record);
        Ok(())
    }
}
