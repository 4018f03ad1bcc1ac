//! The tenant actor: one per tenant, the single owner of its plan-limit slots.
//!
//! Admissions reserve here first (`TENANT_LIMIT_REACHED` when full); ends release here. PATCHes
//! are journaled by this actor before they change anything.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::context::Arbitration;
use crate::core::features::{FeatureDecision, can_use};
use crate::core::slots::{Full, SlotTable};
use crate::event::Event;
use crate::journal::{AppendError, Guard, JournalMsg, unknown_outcome};
use crate::model::{Addon, CallId, CreditTx, PlanTable, TenantRecord};

/// Feature-flag overrides one tenant may have; past it a new one is refused.
pub const TENANT_FLAGS_MAX: usize = 64;
/// Add-on types one tenant may have; past it a new one is refused.
pub const TENANT_ADDONS_MAX: usize = 16;

/// A change to a tenant: `None` leaves a field alone; `Some(None)` clears a nullable one.
#[derive(Clone, Debug, Default)]
pub struct TenantPatch {
    pub name: Option<Option<String>>,
    pub plan: Option<String>,
    pub concurrent_limit_override: Option<Option<u32>>,
    pub prepaid: Option<bool>,
    /// Sets (`Some`) or removes (`None`) a flag override.
    pub flag: Option<(String, Option<bool>)>,
    pub addon: Option<(String, Addon)>,
}

/// Why a tenant refused a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantRefusal {
    Full(Full),
    /// A prepaid tenant with no credits left asked for an outbound call.
    NoCredits,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("the balance is {balance}; removing {amount} would take it below zero")]
    InsufficientBalance { balance: u64, amount: u64 },
    #[error("a tenant has at most {max} {what}")]
    TooMany { what: &'static str, max: usize },
    #[error(transparent)]
    Journal(#[from] AppendError),
}

/// Asks the tenant, with its reservation, whether it may use a feature.
#[derive(Clone, Debug)]
pub struct FeatureQuery {
    pub name: String,
    /// The global flag (`None`: no such flag).
    pub global: Option<bool>,
    pub now_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantView {
    pub record: TenantRecord,
    /// The plan's priority class.
    pub class: String,
    pub limit: u32,
    pub active: BTreeSet<CallId>,
    pub balance: u64,
}

#[derive(Clone, Debug)]
pub struct TenantGrant {
    pub plan: crate::model::Name,
    pub class: crate::model::Name,
    pub over_limit: bool,
    pub feature: Option<FeatureDecision>,
}

pub enum TenantMsg {
    Reserve {
        call: CallId,
        force: bool,
        /// Outbound calls of prepaid tenants need credits.
        outbound: bool,
        feature: Option<FeatureQuery>,
        reply: RpcReplyPort<Result<TenantGrant, TenantRefusal>>,
    },
    Release {
        call: CallId,
    },
    /// An administrator adds or removes credits (journaled first). Answers the transaction
    /// the ledger posted (`None` for an amount of zero).
    Credit {
        amount: i64,
        reason: String,
        at_ms: u64,
        reply: RpcReplyPort<Result<Option<CreditTx>, TenantError>>,
    },
    Update {
        patch: TenantPatch,
        reply: RpcReplyPort<Result<TenantView, TenantError>>,
    },
    Get {
        reply: RpcReplyPort<TenantView>,
    },
    /// Fault injection for the supervision tests: panics inside the handler.
    Crash,
}

pub struct TenantActor {
    pub plans: Arc<PlanTable>,
    pub arbitration: Arc<Arbitration>,
    pub journal: ActorRef<JournalMsg>,
    pub generation: u32,
    pub journal_timeout: Duration,
    /// Credit balances in journal order: the journal writer applies charges and adjustments,
    /// this actor only reads them (a charge stops at zero, so only one order is right).
    pub balances: crate::context::SharedBalances,
}

pub struct TenantState {
    record: TenantRecord,
    slots: SlotTable,
}

impl TenantState {
    fn limit(&self, plans: &PlanTable) -> u32 {
        plans.effective_limit(&self.record.plan, self.record.concurrent_limit_override)
    }

    fn view(&self, plans: &PlanTable, arbitration: &Arbitration, balance: u64) -> TenantView {
        let class = arbitration.classes.class_of_plan(&self.record.plan).to_owned();
        TenantView { record: self.record.clone(), class, limit: self.limit(plans), active: self.slots.held().collect(), balance }
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
            TenantMsg::Reserve { call, force, outbound, feature, reply } => {
                if outbound && state.record.prepaid && !state.slots.holds(call) && self.balance(&state.record.id).accepted == 0 {
                    let _ = reply.send(Err(TenantRefusal::NoCredits));
                    return Ok(());
                }
                let limit = state.limit(&self.plans);
                let result = state.slots.reserve(call, limit, force).map_err(TenantRefusal::Full);
                let grant = result.map(|g| TenantGrant {
                    plan: state.record.plan.as_str().into(),
                    class: self.arbitration.classes.class_of_plan(&state.record.plan).into(),
                    over_limit: g.over_limit,
                    feature: feature.map(|query| {
                        let record = &state.record;
                        can_use(query.global, record.flags.get(&query.name).copied(), record.addons.get(&query.name), query.now_ms)
                    }),
                });
                let _ = reply.send(grant);
            }
            TenantMsg::Release { call } => {
                state.slots.release(call);
            }
            TenantMsg::Credit { amount, reason, at_ms, reply } => {
                // Rare branches that wait on the journal are boxed: a handler's future is as large as
                // its largest branch, and ractor moves it whole for every message, the hot ones too.
                let result = Box::pin(self.credit(state, amount, reason, at_ms)).await;
                let unknown = matches!(result, Err(TenantError::Journal(AppendError::Unknown)));
                let _ = reply.send(result);
                if unknown {
                    return Err(unknown_outcome());
                }
            }
            TenantMsg::Update { patch, reply } => {
                let result = Box::pin(self.update(state, patch)).await;
                let unknown = matches!(result, Err(TenantError::Journal(AppendError::Unknown)));
                let _ = reply.send(result);
                if unknown {
                    return Err(unknown_outcome());
                }
            }
            TenantMsg::Get { reply } => {
                let _ = reply.send(state.view(&self.plans, &self.arbitration, self.balance(&state.record.id).durable));
            }
            TenantMsg::Crash => panic!("injected tenant crash"),
        }
        Ok(())
    }
}

impl TenantActor {
    fn balance(&self, tenant: &str) -> crate::context::Balance {
        self.balances.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(tenant).copied().unwrap_or_default()
    }

    /// The journal checks a removal against the balance in its own order (a charge may land
    /// just before it) and refuses one that would go below zero. It answers with the
    /// transaction as posted in that order.
    async fn credit(&self, state: &mut TenantState, amount: i64, reason: String, at_ms: u64) -> Result<Option<CreditTx>, TenantError> {
        let guard = Guard { tenant: Some((state.record.id.clone(), self.generation)), ..Guard::default() };
        let tenant_id = state.record.id.clone();
        let message = |reply| JournalMsg::AdjustCredits { tenant_id, amount, reason, at_ms, guard, reply };
        match crate::ask_journal(&self.journal, message, self.journal_timeout).await {
            Ok(tx) => Ok(tx),
            Err(AppendError::InsufficientBalance { balance }) => {
                Err(TenantError::InsufficientBalance { balance, amount: amount.unsigned_abs() })
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn update(&self, state: &mut TenantState, patch: TenantPatch) -> Result<TenantView, TenantError> {
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
        if let Some(prepaid) = patch.prepaid {
            record.prepaid = prepaid;
        }
        match patch.flag {
            Some((name, Some(enabled))) => {
                if !record.flags.contains_key(&name) && record.flags.len() >= TENANT_FLAGS_MAX {
                    return Err(TenantError::TooMany { what: "flag overrides", max: TENANT_FLAGS_MAX });
                }
                record.flags.insert(name, enabled);
            }
            Some((name, None)) => {
                record.flags.remove(&name);
            }
            None => {}
        }
        if let Some((addon_type, addon)) = patch.addon {
            if !record.addons.contains_key(&addon_type) && record.addons.len() >= TENANT_ADDONS_MAX {
                return Err(TenantError::TooMany { what: "add-ons", max: TENANT_ADDONS_MAX });
            }
            record.addons.insert(addon_type, addon);
        }
        if record == state.record {
            // Nothing changes (a repeated PUT, a DELETE of an override that is not there):
            // nothing to journal.
            return Ok(state.view(&self.plans, &self.arbitration, self.balance(&state.record.id).durable));
        }
        let guard = Guard { tenant: Some((record.id.clone(), self.generation)), ..Guard::default() };
        let event = Event::TenantUpdated(record.clone());
        crate::append(&self.journal, event, guard, self.journal_timeout).await?;
        state.record = record;
        Ok(state.view(&self.plans, &self.arbitration, self.balance(&state.record.id).durable))
    }
}
