//! The directory: where each live entity's actor is, and which generation it is.
//!
//! The supervisor is its only writer for tenants, lines and the platform (it publishes every
//! respawned `ActorRef` here); the admission path writes live and ended calls. Readers take a
//! short read lock and clone what they need before awaiting anything. Our own maps replace
//! ractor's named registry, which is process-global and hash-ordered: ordered maps where order
//! is read, `IdMap`s (iterated only in key order) where only lookups are.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ractor::{ActorId, ActorRef};

use crate::call::CallMsg;
use crate::callback_queue::CallbackQueueMsg;
use crate::id_map::IdMap;
use crate::journal::{Entity, JournalMsg};
use crate::model::{CallId, CallRecord, EndedCall, LineId, TenantId};
use crate::phone_line::LineMsg;
use crate::platform::PlatformMsg;
use crate::state::ENDED_CALLS_RETAINED_MAX;
use crate::tenant::TenantMsg;

/// An actor and the generation it was spawned at (see `journal.rs`).
pub struct Slot<M> {
    pub actor: ActorRef<M>,
    pub generation: u32,
}

impl<M> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Slot { actor: self.actor.clone(), generation: self.generation }
    }
}

#[derive(Clone)]
pub struct LineSlot {
    pub slot: Slot<LineMsg>,
    pub tenant_id: TenantId,
    pub on_busy: crate::model::OnBusy,
}

pub struct LiveCall {
    pub actor: ActorRef<CallMsg>,
    /// As admitted (heartbeats live in the call actor).
    pub record: Arc<CallRecord>,
}

pub enum CallLookup {
    Live(ActorRef<CallMsg>),
    Ended(Box<EndedCall>),
    Unknown,
}

#[derive(Default)]
pub struct Directory {
    pub journal: Option<ActorRef<JournalMsg>>,
    pub platform: Option<Slot<PlatformMsg>>,
    pub tenants: IdMap<TenantId, Slot<TenantMsg>>,
    pub lines: IdMap<LineId, LineSlot>,
    pub callback_queues: BTreeMap<LineId, ActorRef<CallbackQueueMsg>>,
    /// Lines whose queue has something to dispatch (a pending entry or a running campaign),
    /// kept by the queue actors: only these are told a channel freed, and only these get the
    /// backup scan. Ten thousand idle lines then cost nothing, not a message each per minute.
    pub callback_work: BTreeSet<LineId>,
    pub calls: BTreeMap<CallId, LiveCall>,
    /// Recently ended calls, bounded like the durable state's (`ENDED_CALLS_RETAINED_MAX`).
    pub ended: BTreeMap<CallId, EndedCall>,
    /// Which entity each supervised actor is, to respawn the right one when it fails.
    /// (An `IdMap`: only looked up, and one insert and one removal per call.)
    pub by_actor: IdMap<ActorId, Entity>,
}

impl Directory {
    pub fn call(&self, id: CallId) -> CallLookup {
        if let Some(live) = self.calls.get(&id) {
            CallLookup::Live(live.actor.clone())
        } else if let Some(ended) = self.ended.get(&id) {
            CallLookup::Ended(Box::new(ended.clone()))
        } else {
            CallLookup::Unknown
        }
    }

    pub fn add_call(&mut self, actor: ActorRef<CallMsg>, record: Arc<CallRecord>) {
        self.by_actor.insert(actor.get_id(), Entity::Call(record.id));
        self.calls.insert(record.id, LiveCall { actor, record });
    }

    /// Moves a call from live to ended, atomically for readers.
    pub fn finish_call(&mut self, ended: EndedCall) {
        if let Some(live) = self.calls.remove(&ended.call.id) {
            self.by_actor.remove(&live.actor.get_id());
        }
        self.ended.insert(ended.call.id, ended);
        while self.ended.len() > ENDED_CALLS_RETAINED_MAX {
            self.ended.pop_first();
        }
    }

    /// Moves a durably ended call to the ended calls and frees its tenant, line and platform
    /// slots. Called by the call actor, or by the supervisor when the actor died mid-end.
    pub fn finish_call_and_release(&mut self, ended: EndedCall) {
        let call = ended.call.id;
        if let Some(tenant) = self.tenants.get(&ended.call.tenant_id) {
            let _ = tenant.actor.cast(TenantMsg::Release { call });
        }
        if let Some(line) = ended.call.line_id.as_ref().and_then(|id| self.lines.get(id)) {
            let _ = line.slot.actor.cast(LineMsg::Release { call, ended: true });
        }
        if let Some(platform) = &self.platform {
            let _ = platform.actor.cast(PlatformMsg::Release { call });
        }
        let (callback, campaign) = (ended.call.callback_id, ended.call.campaign);
        if (callback.is_some() || campaign.is_some())
            && let Some(queue) = ended.call.line_id.as_ref().and_then(|line| self.callback_queues.get(line))
        {
            let _ = queue.cast(CallbackQueueMsg::CallEnded { call, outcome: ended.outcome.clone(), callback, campaign });
        }
        self.finish_call(ended);
    }

    pub fn journal(&self) -> ActorRef<JournalMsg> {
        self.journal.clone().expect("the supervisor publishes the journal before anything runs")
    }

    pub fn platform(&self) -> Slot<PlatformMsg> {
        self.platform.clone().expect("the supervisor publishes the platform before anything runs")
    }
}

/// The directory as shared between the supervisor, the actors and the admission path.
#[derive(Clone, Default)]
pub struct SharedDirectory(Arc<RwLock<Directory>>);

impl SharedDirectory {
    pub fn read(&self) -> RwLockReadGuard<'_, Directory> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Directory> {
        self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
