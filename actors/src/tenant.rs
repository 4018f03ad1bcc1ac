//! The tenant actor: one per tenant, the single owner of its plan-limit slots.
//!
//! Admissions reserve here first (`TENANT_LIMIT_REACHED` when full); ends release here. PATCHes
//! are journaled by this actor before they change anything.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::core::slots::{Full, SlotTable};
use crate::event::Event;
use crate::journal::{AppendError, Guard, JournalMsg, unknown_outcome};
use crate::model::{CallId, PlanTable, TenantRecord};

/// A PATCH: `None` leaves a field alone; `Some(None)` clears a nullable one.
#[derive(Clone, Debug, Default)]
pub struct TenantPatch {
    pub name: Option<Option<String>>,
    pub plan: Option<String>,
    pub concurrent_limit_override: Option<Option<u32>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantView {
    pub record: TenantRecord,
    pub limit: u32,
    pub active: BTreeSet<CallId>,
}

#[derive(Clone, Debug)]
pub struct TenantGrant {
    pub plan: String,
    pub over_limit: bool,
}

pub enum TenantMsg {
    Reserve {
        call: CallId,
        force: bool,
        reply: RpcReplyPort<Result<TenantGrant, Full>>,
    },
    Release {
        call: CallId,
    },
    Update {
        patch: TenantPatch,
        reply: RpcReplyPort<Result<TenantView, AppendError>>,
    },
    Get {
        reply: RpcReplyPort<TenantView>,
    },
    /// Fault injection for the supervision tests: panics inside the handler.
    Crash,
}

pub struct TenantActor {
    pub plans: Arc<PlanTable>,
    pub journal: ActorRef<JournalMsg>,
    pub generation: u32,
    pub journal_timeout: Duration,
}

pub struct TenantState {
    record: TenantRecord,
    slots: SlotTable,
}

impl TenantState {
    fn limit(&self, plans: &PlanTable) -> u32 {
        plans.effective_limit(&self.record.plan, self.record.concurrent_limit_override)
    }

    fn view(&self, plans: &PlanTable) -> TenantView {
        TenantView { record: self.record.clone(), limit: self.limit(plans), active: self.slots.held().collect() }
    }
}

impl Actor for TenantActor {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = (TenantRecord, BTreeSet<CallId>);

    async fn pre_start(&self, _: ActorRef<TenantMsg>, (record, held): Self::Arguments) -> Result<TenantState, ActorProcessingErr> {
        Ok(TenantState { record, slots: SlotTable::from_held(held) })
    }

    async fn handle(&self, _: ActorRef<TenantMsg>, msg: TenantMsg, state: &mut TenantState) -> Result<(), ActorProcessingErr> {
        match msg {
            TenantMsg::Reserve { call, force, reply } => {
                let limit = state.limit(&self.plans);
                let result = state.slots.reserve(call, limit, force);
                let grant = result.map(|g| TenantGrant { plan: state.record.plan.clone(), over_limit: g.over_limit });
                let _ = reply.send(grant);
            }
            TenantMsg::Release { call } => {
                state.slots.release(call);
            }
            TenantMsg::Update { patch, reply } => {
                let result = self.update(state, patch).await;
                let unknown = matches!(result, Err(AppendError::Unknown));
                let _ = reply.send(result);
                if unknown {
                    return Err(unknown_outcome());
                }
            }
            TenantMsg::Get { reply } => {
                let _ = reply.send(state.view(&self.plans));
            }
            TenantMsg::Crash => panic!("injected tenant crash"),
        }
        Ok(())
    }
}

impl TenantActor {
    async fn update(&self, state: &mut TenantState, patch: TenantPatch) -> Result<TenantView, AppendError> {
        let mut record = state.record.clone();
        if let Some(name) = patch.name {
            record.name = name;
        }
        if let Some(plan) = patch.plan {
            record.plan = plan;
        }
        if let Some(limit_override) = patch.concurrent_limit_override {
            record.concurrent_limit_override = limit_override;
        }
        let guard = Guard { tenant: Some((record.id.clone(), self.generation)), ..Guard::default() };
        let event = Event::TenantUpdated(record.clone());
        crate::append(&self.journal, event, guard, self.journal_timeout).await?;
        state.record = record;
        Ok(state.view(&self.plans))
    }
}
