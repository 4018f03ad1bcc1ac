//! The phone-line actor: one per line (E.164 number), the single owner of its channels.
//!
//! Inbound and outbound calls share a line's channels (seed 002: two per line by default);
//! a full line refuses with `LINE_BUSY`, except calls already live at the provider.

use std::collections::BTreeSet;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::core::slots::{Full, Granted, SlotTable};
use crate::model::{CallId, LineRecord};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineView {
    pub record: LineRecord,
    pub active: BTreeSet<CallId>,
}

pub enum LineMsg {
    Reserve {
        call: CallId,
        force: bool,
        reply: RpcReplyPort<Result<Granted, Full>>,
    },
    /// `ended`: the call ended (its channel frees for a callback); otherwise an admission gave
    /// back what it reserved, which must not wake the callback queue (it would retry at once).
    Release {
        call: CallId,
        ended: bool,
    },
    Get {
        reply: RpcReplyPort<LineView>,
    },
    /// Fault injection for the supervision tests.
    Crash,
}

pub struct LineActor {
    /// To tell the line's callback queue when a channel frees.
    pub directory: crate::directory::SharedDirectory,
}

pub struct LineState {
    record: LineRecord,
    slots: SlotTable,
}

impl LineActor {
    /// The line's callback queue, if it has something to dispatch when a channel frees.
    fn queue_with_work(&self, line: &str) -> Option<ActorRef<crate::callback_queue::CallbackQueueMsg>> {
        let directory = self.directory.read();
        directory.callback_work.contains(line).then(|| directory.callback_queues.get(line).cloned()).flatten()
    }
}

impl Actor for LineActor {
    type Msg = LineMsg;
    type State = LineState;
    type Arguments = (LineRecord, BTreeSet<CallId>);

    async fn pre_start(&self, _: ActorRef<LineMsg>, (record, held): Self::Arguments) -> Result<LineState, ActorProcessingErr> {
        Ok(LineState { record, slots: SlotTable::from_held(held) })
    }

    async fn handle(&self, _: ActorRef<LineMsg>, msg: LineMsg, state: &mut LineState) -> Result<(), ActorProcessingErr> {
        match msg {
            LineMsg::Reserve { call, force, reply } => {
                let _ = reply.send(state.slots.reserve(call, state.record.channels, force));
            }
            LineMsg::Release { call, ended } => {
                if state.slots.release(call)
                    && ended
                    && let Some(queue) = self.queue_with_work(&state.record.id)
                {
                    let _ = queue.cast(crate::callback_queue::CallbackQueueMsg::ChannelFreed);
                }
            }
            LineMsg::Get { reply } => {
                let _ = reply.send(LineView { record: state.record.clone(), active: state.slots.held().collect() });
            }
            LineMsg::Crash => panic!("injected line crash"),
        }
        Ok(())
    }
}
