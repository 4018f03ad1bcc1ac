//! The supervisor: boots every actor from the durable state, creates tenants and lines, runs
//! the watchdog's sweep, and rebuilds any actor that fails.
//!
//! ractor restarts nothing by itself. When a child fails, this actor asks the journal writer for
//! the child's state together with a new generation (see `journal.rs`), spawns a replacement
//! and republishes its `ActorRef` in the directory. Children are tracked in our own ordered
//! maps, never through ractor's hash-ordered child list. If the journal writer itself dies,
//! nothing can be made durable any more: the service turns unready and refuses writes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::call::CallMsg;
use crate::callback_queue::CallbackQueueMsg;
use crate::context::Context;
use crate::event::Event;
use crate::journal::{AppendError, Entity, Guard, Handover, JournalMsg, JournalWriter};
use crate::model::CallId;
use crate::model::{LineRecord, TenantRecord};
use crate::phone_line::LineMsg;
use crate::platform::PlatformMsg;
use crate::state::DurableState;
use crate::store::Store;
use crate::tenant::TenantMsg;
use std::collections::BTreeSet;

/// Global feature flags at once; past it a new flag is refused.
pub const GLOBAL_FLAGS_MAX: usize = 256;
/// How long the supervisor waits for the journal to hand over an entity's state (asking again
/// every journal timeout) before it leaves the entity down, as it does when the journal has
/// failed: a disk stalled that long is an outage for an operator.
pub const HANDOVER_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("at most {0} exist at once")]
    TooMany(usize),
    #[error("already exists")]
    Exists,
    #[error("tenant {0} does not exist")]
    UnknownTenant(String),
    #[error(transparent)]
    Journal(#[from] AppendError),
    #[error("could not start the actor: {0}")]
    Spawn(String),
}

pub enum SupervisorMsg {
    CreateTenant {
        record: TenantRecord,
        reply: RpcReplyPort<Result<(), CreateError>>,
    },
    CreateLine {
        record: LineRecord,
        reply: RpcReplyPort<Result<(), CreateError>>,
    },
    /// Creates or changes a global feature flag.
    SetFlag {
        name: String,
        enabled: bool,
        reply: RpcReplyPort<Result<(), CreateError>>,
    },
    /// The watchdog's tick: ask every live call whether it is stuck.
    Sweep,
    /// The callbacks' backup scan: every queue looks for work it may have missed.
    CallbackScan,
    /// Shutting down: children that stop from now on are not rebuilt.
    Stopping {
        reply: RpcReplyPort<()>,
    },
}

pub struct Supervisor {
    pub context: Arc<Context>,
    pub store: Arc<dyn Store>,
}

pub struct SupervisorState {
    journal: ActorRef<JournalMsg>,
    journal_id: ActorId,
    stopping: bool,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = DurableState;

    async fn pre_start(&self, myself: ActorRef<SupervisorMsg>, mut durable: DurableState) -> Result<SupervisorState, ActorProcessingErr> {
        let writer = JournalWriter {
            store: Arc::clone(&self.store),
            telemetry: Arc::clone(&self.context.telemetry),
            snapshot_every_events: self.context.settings.snapshot_every_events,
            healthy: Arc::clone(&self.context.journal_alive),
            balances: Arc::clone(&self.context.balances),
            usage_alerts: {
                let arbitration = &self.context.settings.arbitration;
                arbitration.premium_pool.as_ref().map(|pool| (pool.to_string(), arbitration.premium_feature.clone()))
            },
        };
        let (journal, _) = Actor::spawn_linked(None, writer, durable.clone(), myself.get_cell()).await?;
        self.context.directory.write().journal = Some(journal.clone());
        self.create_configured_pools(&journal, &mut durable).await?;
        *self.context.flags.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = durable.flags.clone();
        self.boot_children(&myself, &durable).await?;
        myself.send_interval(self.context.settings.sweep_interval, || SupervisorMsg::Sweep);
        myself.send_interval(self.context.settings.callbacks.backup_scan_interval, || SupervisorMsg::CallbackScan);
        Ok(SupervisorState { journal_id: journal.get_id(), journal, stopping: false })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::CreateTenant { record, reply } => {
                let _ = reply.send(Box::pin(self.create_tenant(&myself, state, record)).await);
            }
            SupervisorMsg::CreateLine { record, reply } => {
                let _ = reply.send(Box::pin(self.create_line(&myself, state, record)).await);
            }
            SupervisorMsg::SetFlag { name, enabled, reply } => {
                let _ = reply.send(Box::pin(self.set_flag(state, name, enabled)).await);
            }
            SupervisorMsg::Sweep => {
                // Only calls that may be stuck by the directory's (older) record are asked;
                // each call's actor decides on its own, newer, record.
                let now_ms = self.context.clock.now_ms();
                let watchdog = self.context.settings.watchdog;
                let calls: Vec<ActorRef<CallMsg>> = self
                    .context
                    .directory
                    .read()
                    .calls
                    .values()
                    .filter(|c| crate::core::call::stuck(&c.record, now_ms, watchdog).is_some())
                    .map(|c| c.actor.clone())
                    .collect();
                for call in calls {
                    let _ = call.cast(CallMsg::Sweep);
                }
            }
            SupervisorMsg::CallbackScan => {
                let queues: Vec<_> = {
                    let directory = self.context.directory.read();
                    directory.callback_work.iter().filter_map(|line| directory.callback_queues.get(line).cloned()).collect()
                };
                for queue in queues {
                    let _ = queue.cast(CallbackQueueMsg::Kick);
                }
            }
            SupervisorMsg::Stopping { reply } => {
                state.stopping = true;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        if cell.get_id() == state.journal_id {
            self.context.journal_alive.store(false, Ordering::SeqCst);
            if state.stopping {
                return Ok(());
            }
            tracing::error!(failure = failure.as_deref().unwrap_or("stopped"), "journal writer is gone; refusing writes until restart");
            return Ok(());
        }
        // A call that ended has already left the directory: nothing to rebuild.
        let Some(entity) = self.context.directory.write().by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.stopping {
            return Ok(());
        }
        tracing::warn!(entity = %entity, failure = failure.as_deref().unwrap_or("stopped"), "rebuilding actor from the journal");
        // Boxed: this handler runs for every call actor's start and stop, and its future would
        // otherwise be as large as a rebuild's, moved whole each time.
        Box::pin(self.rebuild(&myself, state, entity)).await
    }
}

fn release_all<M: ractor::Message>(actor: Option<&ActorRef<M>>, calls: Vec<CallId>, release: impl Fn(CallId) -> M) {
    if let Some(actor) = actor {
        for call in calls {
            let _ = actor.cast(release(call));
        }
    }
}

impl Supervisor {
    /// Pools in the config that the journal does not know yet are created, durably, before
    /// anything runs. Journaled pools keep their journaled limits (changed live since).
    async fn create_configured_pools(&self, journal: &ActorRef<JournalMsg>, durable: &mut DurableState) -> Result<(), ActorProcessingErr> {
        for (name, spec) in self.context.settings.arbitration.pools.iter() {
            if durable.pools.contains_key(name) {
                continue;
            }
            let reserved = spec.reserved.iter().filter(|(_, n)| **n > 0).map(|(c, n)| (c.clone(), *n)).collect();
            let event = Event::PoolConfigured { pool: name.clone(), capacity: spec.capacity, reserved };
            let seq = crate::append(journal, event.clone(), Guard::default(), self.context.settings.journal_timeout).await?;
            durable.apply(seq, &event)?;
        }
        Ok(())
    }

    async fn set_flag(&self, state: &SupervisorState, name: String, enabled: bool) -> Result<(), CreateError> {
        let exists = self.context.flag(&name).is_some();
        if !exists && self.context.flags.read().unwrap_or_else(|poisoned| poisoned.into_inner()).len() >= GLOBAL_FLAGS_MAX {
            return Err(CreateError::TooMany(GLOBAL_FLAGS_MAX));
        }
        let event = Event::FlagSet { name: name.clone(), enabled };
        crate::append(&state.journal, event, Guard::default(), self.context.settings.journal_timeout).await?;
        self.context.flags.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(name, enabled);
        Ok(())
    }

    async fn boot_children(&self, myself: &ActorRef<SupervisorMsg>, durable: &DurableState) -> Result<(), ActorProcessingErr> {
        let context = &self.context;
        let cell = myself.get_cell();
        context.spawn_platform(cell.clone(), durable.pools.clone(), durable.pool_held(), 0).await?;
        let (mut by_tenant, mut by_line) = durable.active_by_owner();
        for (_, tenant) in crate::id_map::sorted(&durable.tenants) {
            context.spawn_tenant(cell.clone(), tenant.clone(), by_tenant.remove(tenant.id.as_str()).unwrap_or_default(), 0).await?;
        }
        for line in durable.lines.values() {
            context.spawn_line(cell.clone(), line.clone(), by_line.remove(line.id.as_str()).unwrap_or_default(), 0).await?;
        }
        for call in durable.live_calls.values() {
            context.spawn_call(cell.clone(), call.clone()).await?;
            context.telemetry.active_calls(&call.plan, 1);
        }
        context.directory.write().ended = durable.ended_calls.clone();
        // Last: a queue settles its dialled entries whose calls ended, so it must find every
        // live and ended call in the directory.
        let mut queues = durable.queues_by_line();
        for line in durable.lines.values() {
            let (callbacks, campaigns) = queues.remove(line.id.as_str()).unwrap_or_default();
            context.spawn_callback_queue(cell.clone(), line, callbacks, campaigns).await?;
        }
        Ok(())
    }

    async fn rebuild(&self, myself: &ActorRef<SupervisorMsg>, state: &SupervisorState, entity: Entity) -> Result<(), ActorProcessingErr> {
        let timeout = Some(self.context.settings.journal_timeout);
        // The journal answers once the entity's state is durable: a stalled disk (the usual
        // reason an actor failed on purpose) keeps the entity down, answering 503, until then.
        // A journal that failed, or one stalled past `HANDOVER_WAIT_MAX`, leaves the entity
        // down (503) until an operator restarts the process; the supervisor goes on serving the
        // others (failing it would stop every actor it supervises).
        let asked = tokio::time::Instant::now();
        let (generation, handover) = loop {
            let asking = state.journal.call(|reply| JournalMsg::Handover { entity: entity.clone(), reply }, timeout).await;
            match asking.unwrap_or(ractor::rpc::CallResult::SenderError) {
                ractor::rpc::CallResult::Success(Ok(answer)) => break answer,
                ractor::rpc::CallResult::Timeout if asked.elapsed() < HANDOVER_WAIT_MAX => {
                    let waited_s = asked.elapsed().as_secs();
                    tracing::warn!(entity = %entity, waited_s, "the journal has not yet made the state to hand over durable; waiting");
                }
                ractor::rpc::CallResult::Success(Err(error)) => {
                    tracing::error!(entity = %entity, %error, "not rebuilding: the journal failed; restart the process");
                    return Ok(());
                }
                other => {
                    tracing::error!(entity = %entity, answer = ?other, "not rebuilding: the journal did not hand over its state; restart the process");
                    return Ok(());
                }
            }
        };
        let cell = myself.get_cell();
        let context = &self.context;
        match handover {
            Handover::Tenant(record, held) => {
                let id = record.id.clone();
                context.spawn_tenant(cell, record, held.clone(), generation).await?;
                let ended = self.ended_since(state, held).await?;
                release_all(context.directory.read().tenants.get(&id).map(|t| &t.actor), ended, |call| TenantMsg::Release { call });
            }
            Handover::Line(record, held) => {
                let id = record.id.clone();
                context.spawn_line(cell, record, held.clone(), generation).await?;
                let ended = self.ended_since(state, held).await?;
                release_all(context.directory.read().lines.get(&id).map(|l| &l.slot.actor), ended, |call| LineMsg::Release {
                    call,
                    ended: true,
                });
            }
            Handover::Platform(pools, held) => {
                let calls = held.keys().copied().collect();
                context.spawn_platform(cell, pools, held, generation).await?;
                let ended = self.ended_since(state, calls).await?;
                release_all(context.directory.read().platform.as_ref().map(|p| &p.actor), ended, |call| PlatformMsg::Release { call });
            }
            Handover::CallbackQueue(line, entries, campaigns) => context.spawn_callback_queue(cell, &line, entries, campaigns).await?,
            Handover::Call(record) => context.spawn_call(cell, record).await?,
            Handover::CallEnded(ended) => {
                tracing::warn!(call_id = %ended.call.id, "finishing the end of a call whose actor died mid-end");
                context.telemetry.active_calls(&ended.call.plan, -1);
                context.directory.write().finish_call_and_release(ended);
            }
            Handover::Gone => {}
        }
        Ok(())
    }

    /// Of the calls a rebuilt actor was handed, those that have ended since. Their ends were
    /// acknowledged after the handover, and their releases may have gone to the dead actor
    /// before the new one was published; the caller releases them in the new one. (An end
    /// whose release read the directory after the publication reached the new actor anyway:
    /// releasing twice changes nothing.)
    async fn ended_since(&self, state: &SupervisorState, held: BTreeSet<CallId>) -> Result<Vec<CallId>, ActorProcessingErr> {
        let read = move |durable: &DurableState| held.into_iter().filter(|id| !durable.live_calls.contains_key(id)).collect();
        crate::read_journal(&state.journal, read, self.context.settings.journal_timeout)
            .await
            .map_err(|error| format!("reading which handed-over calls ended: {error:?}").into())
    }

    async fn create_tenant(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &SupervisorState,
        record: TenantRecord,
    ) -> Result<(), CreateError> {
        if self.context.directory.read().tenants.contains_key(&record.id) {
            return Err(CreateError::Exists);
        }
        let event = Event::TenantCreated(record.clone());
        crate::append(&state.journal, event, Guard::default(), self.context.settings.journal_timeout).await?;
        let held = Default::default();
        self.context.spawn_tenant(myself.get_cell(), record, held, 0).await.map_err(|e| CreateError::Spawn(e.to_string()))
    }

    async fn create_line(&self, myself: &ActorRef<SupervisorMsg>, state: &SupervisorState, record: LineRecord) -> Result<(), CreateError> {
        {
            let directory = self.context.directory.read();
            if directory.lines.contains_key(&record.id) {
                return Err(CreateError::Exists);
            }
            if !directory.tenants.contains_key(&record.tenant_id) {
                return Err(CreateError::UnknownTenant(record.tenant_id.to_string()));
            }
        }
        let event = Event::LineCreated(record.clone());
        crate::append(&state.journal, event, Guard::default(), self.context.settings.journal_timeout).await?;
        let held = Default::default();
        self.context
            .spawn_callback_queue(myself.get_cell(), &record, Default::default(), Default::default())
            .await
            .map_err(|e| CreateError::Spawn(e.to_string()))?;
        self.context.spawn_line(myself.get_cell(), record, held, 0).await.map_err(|e| CreateError::Spawn(e.to_string()))
    }
}
