//! The platform-capacity actor: the provider account's real concurrency, owned in one place.
//!
//! Every admitted call holds one of its slots; when they are gone admissions are refused with
//! `PLATFORM_CAPACITY_FULL`. Capacity changes at runtime (seed 000 §9): lowering it below the
//! active count ends no call, it only stops new admissions until the pool is back under.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::core::slots::{Full, Granted, SlotTable};
use crate::event::Event;
use crate::journal::{AppendError, Guard, JournalMsg, unknown_outcome};
use crate::model::CallId;
use crate::telemetry::Telemetry;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformView {
    pub capacity: u32,
    pub active: BTreeSet<CallId>,
}

pub enum PlatformMsg {
    Reserve {
        call: CallId,
        force: bool,
        reply: RpcReplyPort<Result<Granted, Full>>,
    },
    Release {
        call: CallId,
    },
    SetCapacity {
        capacity: u32,
        reply: RpcReplyPort<Result<PlatformView, AppendError>>,
    },
    Get {
        reply: RpcReplyPort<PlatformView>,
    },
    /// Fault injection for the supervision tests.
    Crash,
}

pub struct PlatformActor {
    pub journal: ActorRef<JournalMsg>,
    pub generation: u32,
    pub journal_timeout: Duration,
    pub telemetry: Arc<dyn Telemetry>,
}

pub struct PlatformState {
    capacity: u32,
    slots: SlotTable,
}

impl PlatformState {
    fn view(&self) -> PlatformView {
        PlatformView { capacity: self.capacity, active: self.slots.held().collect() }
    }
}

impl Actor for PlatformActor {
    type Msg = PlatformMsg;
    type State = PlatformState;
    type Arguments = (u32, BTreeSet<CallId>);

    async fn pre_start(&self, _: ActorRef<PlatformMsg>, (capacity, held): Self::Arguments) -> Result<PlatformState, ActorProcessingErr> {
        let state = PlatformState { capacity, slots: SlotTable::from_held(held) };
        self.telemetry.platform(state.capacity, state.slots.active());
        Ok(state)
    }

    async fn handle(&self, _: ActorRef<PlatformMsg>, msg: PlatformMsg, state: &mut PlatformState) -> Result<(), ActorProcessingErr> {
        match msg {
            PlatformMsg::Reserve { call, force, reply } => {
                let _ = reply.send(state.slots.reserve(call, state.capacity, force));
            }
            PlatformMsg::Release { call } => {
                state.slots.release(call);
            }
            PlatformMsg::SetCapacity { capacity, reply } => {
                let event = Event::PlatformCapacitySet { capacity };
                let guard = Guard { platform: Some(self.generation), ..Guard::default() };
                let result = crate::append(&self.journal, event, guard, self.journal_timeout).await;
                if result.is_ok() {
                    state.capacity = capacity;
                }
                let unknown = matches!(result, Err(AppendError::Unknown));
                let _ = reply.send(result.map(|_| state.view()));
                if unknown {
                    return Err(unknown_outcome());
                }
            }
            PlatformMsg::Get { reply } => {
                let _ = reply.send(state.view());
            }
            PlatformMsg::Crash => panic!("injected platform crash"),
        }
        self.telemetry.platform(state.capacity, state.slots.active());
        Ok(())
    }
}
