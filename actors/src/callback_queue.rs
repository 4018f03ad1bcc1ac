//! The callback-queue actor: one per line, the single owner of its missed-call entries.
//!
//! A missed call (the line was busy, nobody answered, the network failed) becomes an entry, or
//! counts on the caller's open one. When a channel frees on the line (an event from the line
//! actor, not polling), when credits arrive, or on the backup scan, the queue hands its next
//! pending entry to the dispatcher (`System`), one at a time: the dispatcher checks credits,
//! admits the callback through the normal admission path, has the entry made durably
//! `processing`, and only then asks the dialer to place the call. The callback call's end
//! settles the entry: `completed`, or `failed` (single attempt; an explicit retry reopens it).
//!
//! Every change is journaled by this actor before it applies it, so a rebuild from the journal
//! gives the same queue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::core::callbacks::{CallbackQueue, Missed};
use crate::directory::{CallLookup, SharedDirectory};
use crate::event::Event;
use crate::journal::{AppendError, Guard, JournalMsg, unknown_outcome};
use crate::model::{
    CallId, CallbackEntry, CallbackId, CallbackStatus, Campaign, CampaignId, CampaignRecord, CampaignStatus, ContactState, ContactStatus,
    LineId, MissedAttempt, MissedReason, TenantId, mask_phone,
};
use crate::state::DurableState;
use crate::telemetry::Telemetry;

/// The outcome a callback call must end with to count as `completed`.
pub const CALLBACK_SUCCESS_OUTCOME: &str = "completed";

mod campaigns;

pub use campaigns::{CampaignAction, CampaignError, ContactWork};

/// What the dispatcher is asked to place: a callback, or a campaign's contact.
#[derive(Clone, Debug)]
pub enum Work {
    Callback(CallbackEntry),
    Contact(ContactWork),
}

/// Which work a line has with the dispatcher (one at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    Callback(CallbackId),
    Contact(CampaignId, u32),
}

/// What the queue hands the dispatcher.
#[derive(Clone, Debug)]
pub struct Dispatch {
    pub work: Work,
    pub agent_id: Option<String>,
    /// When the trigger (a channel freeing, say) reached the queue: dispatch latency runs
    /// from here to the dial request.
    pub triggered_at: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("{0} is not in this line's queue")]
    NotFound(CallbackId),
    #[error("{id} is {}, not {expected}", status.as_str())]
    WrongStatus { id: CallbackId, status: CallbackStatus, expected: &'static str },
    #[error("the line's callback queue is full ({open} open entries)")]
    QueueFull { open: usize },
    #[error(transparent)]
    Journal(#[from] AppendError),
    #[error("the journal did not answer a read in time; retry")]
    ReadTimedOut,
}

/// How a transition asked for by the dispatcher or the API applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub id: CallbackId,
    /// The statuses the entry may be in for this transition to apply.
    pub from: &'static [CallbackStatus],
    pub status: CallbackStatus,
    pub call_id: Option<CallId>,
    pub dialed: bool,
    pub failure_reason: Option<String>,
}

pub enum CallbackQueueMsg {
    /// A caller missed the line: a new entry, or one more attempt on their open one.
    Missed {
        caller: String,
        reason: MissedReason,
        /// What names this attempt, so a retry of it is recognised.
        attempt: Option<MissedAttempt>,
        reply: RpcReplyPort<Result<(CallbackEntry, bool), CallbackError>>,
    },
    /// A channel freed on the line.
    ChannelFreed,
    /// Look for work (backup scan, a new entry, a finished dispatch).
    Kick,
    /// The tenant's credits rose above the minimum: entries short of credits return to pending.
    CreditsAdded,
    /// The dispatcher or the API moves an entry on.
    Transition {
        transition: Transition,
        reply: RpcReplyPort<Result<CallbackEntry, CallbackError>>,
    },
    /// A failed entry, reopened by `POST /v1/callbacks/{id}/retry` (read from the journal in
    /// the queue's turn).
    Retry {
        id: CallbackId,
        reply: RpcReplyPort<Result<CallbackEntry, CallbackError>>,
    },
    /// The dispatcher is done with an entry. `progressed`: it left `pending` (the next one may
    /// go at once); otherwise it waits for the next trigger (no busy loop on a full line).
    DispatchDone {
        work: Busy,
        progressed: bool,
    },
    /// A callback's or a campaign contact's call ended (from the call's end).
    CallEnded {
        call: CallId,
        outcome: crate::model::Name,
        callback: Option<CallbackId>,
        campaign: Option<(CampaignId, u32)>,
    },
    Get {
        reply: RpcReplyPort<(BTreeMap<CallbackId, CallbackEntry>, BTreeMap<CampaignId, Campaign>)>,
    },
    /// `POST /v1/campaigns`: journaled, then held as a draft.
    CreateCampaign {
        record: CampaignRecord,
        reply: RpcReplyPort<Result<Campaign, CampaignError>>,
    },
    /// start, pause, resume or cancel.
    ControlCampaign {
        id: CampaignId,
        action: CampaignAction,
        reply: RpcReplyPort<Result<Campaign, CampaignError>>,
    },
    /// The dispatcher moves a contact on (`from`: the statuses it may be in).
    ContactUpdate {
        id: CampaignId,
        index: u32,
        from: &'static [ContactStatus],
        state: ContactState,
        day: Option<u32>,
        reply: RpcReplyPort<Result<(), CampaignError>>,
    },
    /// Fault injection for the supervision tests.
    Crash,
}

pub struct CallbackQueueActor {
    pub line_id: LineId,
    pub tenant_id: TenantId,
    pub agent_id: Option<String>,
    pub journal: ActorRef<JournalMsg>,
    pub journal_timeout: Duration,
    pub clock: Arc<dyn Clock>,
    pub telemetry: Arc<dyn Telemetry>,
    pub directory: SharedDirectory,
    /// Callback ids come from one counter shared by every line (seeded from the journal).
    pub next_callback_number: Arc<AtomicU64>,
    pub open_max: usize,
    /// Set once the dispatcher runs; without it entries queue but are not dialled.
    pub dispatcher: Arc<std::sync::OnceLock<mpsc::Sender<Dispatch>>>,
    /// Dispatches handed over and not yet done, across lines (tests wait for zero).
    pub dispatches_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

pub struct CallbackQueueState {
    queue: CallbackQueue,
    /// The line's open campaigns (draft, running, paused); at most one runs or is paused.
    campaigns: BTreeMap<CampaignId, Campaign>,
    /// The work with the dispatcher, if any: one at a time per line.
    dispatching: Option<Busy>,
    /// A trigger (a channel freeing, credits, a new entry) came while an entry was with the
    /// dispatcher: look for work when it comes back, even if it made no progress.
    retrigger: bool,
    /// Whether this line is in the directory's `callback_work`, as this actor last published
    /// it (`None` until its first publication: a rebuilt actor always publishes).
    published_work: Option<bool>,
}

impl Actor for CallbackQueueActor {
    type Msg = CallbackQueueMsg;
    type State = CallbackQueueState;
    type Arguments = (BTreeMap<CallbackId, CallbackEntry>, BTreeMap<CampaignId, Campaign>);

    async fn pre_start(&self, _: ActorRef<Self::Msg>, (entries, campaigns): Self::Arguments) -> Result<Self::State, ActorProcessingErr> {
        Ok(CallbackQueueState { queue: CallbackQueue::new(entries), campaigns, dispatching: None, retrigger: false, published_work: None })
    }

    /// Entries whose callback was dialled but whose call ended while nobody listened (this
    /// actor was being rebuilt) are settled from the call's final record.
    async fn post_start(&self, myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let dialled: Vec<(CallbackId, CallId)> = state
            .queue
            .entries()
            .values()
            .filter(|e| e.status == CallbackStatus::Processing && e.dialed)
            .filter_map(|e| e.call_id.map(|call| (e.id, call)))
            .collect();
        for (id, call) in dialled {
            self.settle_if_ended(state, id, call).await?;
        }
        self.settle_dialled_contacts(state).await?;
        let _ = myself.cast(CallbackQueueMsg::Kick);
        Ok(())
    }

    async fn handle(&self, _: ActorRef<Self::Msg>, msg: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let triggered_at = Instant::now();
        let look_for_work = match &msg {
            CallbackQueueMsg::Get { .. } => false,
            CallbackQueueMsg::DispatchDone { progressed, .. } => *progressed || std::mem::take(&mut state.retrigger),
            _ => {
                state.retrigger |= state.dispatching.is_some();
                true
            }
        };
        let result = match msg {
            CallbackQueueMsg::Missed { caller, reason, attempt, reply } => {
                let result = self.missed(state, caller, reason, attempt).await;
                let unknown = matches!(result, Err(CallbackError::Journal(AppendError::Unknown)));
                let _ = reply.send(result);
                unknown
            }
            CallbackQueueMsg::ChannelFreed | CallbackQueueMsg::Kick => false,
            CallbackQueueMsg::CreditsAdded => {
                let mut unknown = false;
                for id in state.queue.short_of_credits() {
                    let back = Transition {
                        id,
                        from: &[CallbackStatus::InsufficientCredits],
                        status: CallbackStatus::Pending,
                        call_id: None,
                        dialed: false,
                        failure_reason: None,
                    };
                    unknown |= matches!(self.transition(state, back).await, Err(CallbackError::Journal(AppendError::Unknown)));
                }
                unknown
            }
            CallbackQueueMsg::Transition { transition, reply } => {
                let result = self.transition(state, transition).await;
                let unknown = matches!(result, Err(CallbackError::Journal(AppendError::Unknown)));
                if let Ok(entry) = &result
                    && entry.status == CallbackStatus::Processing
                    && entry.dialed
                    && let Some(call) = entry.call_id
                {
                    // The call may have ended before the dial was recorded.
                    self.settle_if_ended(state, entry.id, call).await?;
                }
                let _ = reply.send(result);
                unknown
            }
            CallbackQueueMsg::Retry { id, reply } => {
                let result = self.retry(state, id).await;
                let unknown = matches!(result, Err(CallbackError::Journal(AppendError::Unknown)));
                let _ = reply.send(result);
                unknown
            }
            CallbackQueueMsg::DispatchDone { work, .. } => {
                if state.dispatching == Some(work) {
                    state.dispatching = None;
                }
                self.dispatches_in_flight.fetch_sub(1, Ordering::SeqCst);
                false
            }
            CallbackQueueMsg::CallEnded { call, outcome, callback, campaign } => {
                let callback_failed = match callback {
                    Some(id) => self.settle(state, id, call, &outcome).await.is_err(),
                    None => false,
                };
                let contact_failed = match campaign {
                    Some((id, index)) => self.settle_contact(state, id, index, call, &outcome).await.is_err(),
                    None => false,
                };
                callback_failed || contact_failed
            }
            CallbackQueueMsg::Get { reply } => {
                let _ = reply.send((state.queue.entries().clone(), state.campaigns.clone()));
                false
            }
            CallbackQueueMsg::CreateCampaign { record, reply } => {
                let result = self.create_campaign(state, record).await;
                let unknown = matches!(result, Err(CampaignError::Journal(AppendError::Unknown)));
                let _ = reply.send(result);
                unknown
            }
            CallbackQueueMsg::ControlCampaign { id, action, reply } => {
                let result = self.control_campaign(state, id, action).await;
                let unknown = matches!(result, Err(CampaignError::Journal(AppendError::Unknown)));
                let _ = reply.send(result);
                unknown
            }
            CallbackQueueMsg::ContactUpdate { id, index, from, state: contact, day, reply } => {
                let result = self.update_contact(state, id, index, from, contact, day).await;
                let unknown = matches!(result, Err(CampaignError::Journal(AppendError::Unknown)));
                let _ = reply.send(result);
                unknown
            }
            CallbackQueueMsg::Crash => panic!("injected callback queue crash"),
        };
        if result {
            return Err(unknown_outcome());
        }
        if look_for_work {
            self.maybe_dispatch(state, triggered_at).await?;
        }
        self.publish_work(state);
        Ok(())
    }
}

impl CallbackQueueActor {
    /// Tells the directory whether this line has something to dispatch (only on a change).
    fn publish_work(&self, state: &mut CallbackQueueState) {
        let has_work = state.queue.next_pending().is_some() || state.campaigns.values().any(|c| c.status == CampaignStatus::Running);
        if state.published_work != Some(has_work) {
            let mut directory = self.directory.write();
            if has_work {
                directory.callback_work.insert(self.line_id.clone());
            } else {
                directory.callback_work.remove(&self.line_id);
            }
            state.published_work = Some(has_work);
        }
    }

    async fn append(&self, event: Event) -> Result<(), AppendError> {
        crate::append(&self.journal, event, Guard::default(), self.journal_timeout).await.map(|_| ())
    }

    async fn missed(
        &self,
        state: &mut CallbackQueueState,
        caller: String,
        reason: MissedReason,
        attempt: Option<MissedAttempt>,
    ) -> Result<(CallbackEntry, bool), CallbackError> {
        let now_ms = self.clock.now_ms();
        let next_id = CallbackId(self.next_callback_number.fetch_add(1, Ordering::SeqCst));
        // A missed call while a campaign runs on the line waits for the campaign (seed 002).
        let on_hold = state.campaigns.values().any(|c| c.status == CampaignStatus::Running);
        let missed =
            state.queue.missed(next_id, &self.line_id, &self.tenant_id, &caller, reason, attempt.as_ref(), on_hold, now_ms, self.open_max);
        match missed {
            Missed::New(entry) => {
                let event = Event::MissedCallRecorded(entry.clone());
                self.append(event.clone()).await?;
                state.queue.apply(&event);
                self.telemetry.callback_event("missed");
                Ok((entry, true))
            }
            Missed::Repeat(id) => {
                let event = Event::MissedCallRepeated { id, at_ms: now_ms, attempt };
                self.append(event.clone()).await?;
                state.queue.apply(&event);
                self.telemetry.callback_event("missed_again");
                Ok((state.queue.get(id).expect("repeated entry is open").clone(), false))
            }
            Missed::Counted(id) => {
                self.telemetry.callback_event("missed_retried");
                Ok((state.queue.get(id).expect("the counting entry is open").clone(), false))
            }
            Missed::Full { open } => {
                self.telemetry.callback_event("queue_full");
                tracing::warn!(alert = "CALLBACK_QUEUE_FULL", line = %mask_phone(&self.line_id), caller = %mask_phone(&caller), open, "missed call refused: the line's callback queue is full");
                Err(CallbackError::QueueFull { open })
            }
        }
    }

    /// An entry as journaled, read in this actor's turn. Every change to an entry goes through
    /// this actor, so the copy is current (a caller's earlier read may not be).
    async fn journaled_entry(&self, id: CallbackId) -> Result<CallbackEntry, CallbackError> {
        let read = move |durable: &DurableState| durable.callbacks.get(&id).cloned();
        let entry = crate::read_journal(&self.journal, read, self.journal_timeout).await.map_err(|_| CallbackError::ReadTimedOut)?;
        entry.ok_or(CallbackError::NotFound(id))
    }

    async fn transition(&self, state: &mut CallbackQueueState, transition: Transition) -> Result<CallbackEntry, CallbackError> {
        let expected = transition.from.first().map_or("open", |s| s.as_str());
        let Some(entry) = state.queue.get(transition.id) else {
            // Not open here: closed since the caller read it (a concurrent cancel, a failed
            // dial). It exists, so the answer is its status now, never "not found".
            let closed = self.journaled_entry(transition.id).await?;
            return Err(CallbackError::WrongStatus { id: closed.id, status: closed.status, expected });
        };
        if !transition.from.contains(&entry.status) {
            return Err(CallbackError::WrongStatus { id: entry.id, status: entry.status, expected });
        }
        let at_ms = self.clock.now_ms();
        let event = Event::CallbackUpdated {
            id: transition.id,
            status: transition.status,
            call_id: transition.call_id,
            dialed: transition.dialed,
            failure_reason: transition.failure_reason.clone(),
            at_ms,
        };
        let mut updated = entry.clone();
        self.append(event.clone()).await?;
        state.queue.apply(&event);
        updated.update(transition.status, transition.call_id, transition.dialed, transition.failure_reason, at_ms);
        self.telemetry.callback_event(transition.status.as_str());
        Ok(updated)
    }

    async fn retry(&self, state: &mut CallbackQueueState, id: CallbackId) -> Result<CallbackEntry, CallbackError> {
        if let Some(open) = state.queue.get(id) {
            return Err(CallbackError::WrongStatus { id, status: open.status, expected: "failed" });
        }
        // Read here, not taken from the caller: a concurrent retry can have reopened the entry
        // and had it called back successfully since the caller's read, and reopening that
        // `completed` entry would call the caller again.
        let entry = self.journaled_entry(id).await?;
        if entry.status != CallbackStatus::Failed {
            return Err(CallbackError::WrongStatus { id: entry.id, status: entry.status, expected: "failed" });
        }
        if state.queue.entries().len() >= self.open_max {
            return Err(CallbackError::QueueFull { open: state.queue.entries().len() });
        }
        let at_ms = self.clock.now_ms();
        let event = Event::CallbackUpdated {
            id: entry.id,
            status: CallbackStatus::Pending,
            call_id: None,
            dialed: false,
            failure_reason: None,
            at_ms,
        };
        self.append(event).await?;
        let reopened = CallbackEntry {
            status: CallbackStatus::Pending,
            call_id: None,
            dialed: false,
            failure_reason: None,
            updated_at_ms: at_ms,
            ..entry
        };
        state.queue.reopen(reopened.clone());
        Ok(reopened)
    }

    /// Settles a dialled entry by its call's outcome (single attempt: anything but a completed
    /// call is a failure). Entries not yet dialled belong to the dispatcher.
    async fn settle(&self, state: &mut CallbackQueueState, id: CallbackId, call: CallId, outcome: &str) -> Result<(), CallbackError> {
        let dialled = state.queue.get(id).is_some_and(|e| e.status == CallbackStatus::Processing && e.dialed && e.call_id == Some(call));
        if !dialled {
            return Ok(());
        }
        let (status, failure_reason) = if outcome == CALLBACK_SUCCESS_OUTCOME {
            (CallbackStatus::Completed, None)
        } else {
            (CallbackStatus::Failed, Some(outcome.to_owned()))
        };
        let transition = Transition { id, from: &[CallbackStatus::Processing], status, call_id: Some(call), dialed: true, failure_reason };
        self.transition(state, transition).await.map(|_| ())
    }

    async fn settle_if_ended(&self, state: &mut CallbackQueueState, id: CallbackId, call: CallId) -> Result<(), AppendError> {
        let ended = match self.directory.read().call(call) {
            CallLookup::Ended(ended) => Some(ended.outcome),
            CallLookup::Unknown => Some("unknown_after_restart".into()),
            CallLookup::Live(_) => None,
        };
        match ended {
            Some(outcome) => match self.settle(state, id, call, &outcome).await {
                Err(CallbackError::Journal(error)) => Err(error),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Hands the next piece of work to the dispatcher, one at a time: a pending callback
    /// first, else the running campaign's next contact. A full dispatcher channel leaves it
    /// waiting: the backup scan tries again.
    async fn maybe_dispatch(&self, state: &mut CallbackQueueState, triggered_at: Instant) -> Result<(), AppendError> {
        if state.dispatching.is_some() || self.dispatcher.get().is_none() {
            return Ok(());
        }
        let (work, busy) = match state.queue.next_pending() {
            Some(entry) => (Work::Callback(entry.clone()), Busy::Callback(entry.id)),
            None => match self.next_contact(state).await? {
                Some(contact) => {
                    let busy = Busy::Contact(contact.campaign, contact.index);
                    (Work::Contact(contact), busy)
                }
                None => return Ok(()),
            },
        };
        let dispatcher = self.dispatcher.get().expect("checked above");
        self.dispatches_in_flight.fetch_add(1, Ordering::SeqCst);
        if dispatcher.try_send(Dispatch { work, agent_id: self.agent_id.clone(), triggered_at }).is_ok() {
            state.dispatching = Some(busy);
        } else {
            self.dispatches_in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }
}
