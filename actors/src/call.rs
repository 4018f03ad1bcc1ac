//! The call actor: one per live call, holding its record, heartbeats and end.
//!
//! Ending is durable first, then visible: the `CallEnded` event is journaled, the call moves to
//! the directory's ended calls, and only then are its tenant, line and platform slots released.
//! A release can reach an owner that has just crashed; the supervisor, after rebuilding that
//! owner, releases every handed-over call that has ended since (`Supervisor::ended_since`).
//! A duplicate end answers the same final record and changes nothing.
//! The watchdog's sweep asks the core whether the call is stuck and, if so, ends it with the
//! outcome `reclaimed_stale`.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::clock::Clock;
use crate::context::Arbitration;
use crate::core::call::{CallCore, EndReport, Watchdog};
use crate::directory::SharedDirectory;
use crate::event::Event;
use crate::journal::{AppendError, Guard, JournalMsg, unknown_outcome};
use crate::model::{CallRecord, EndedCall, OUTCOME_PROVIDER_REJECTED, OUTCOME_RECLAIMED_STALE};
use crate::platform::PlatformMsg;
use crate::telemetry::Telemetry;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the call has ended")]
    Ended(Box<EndedCall>),
    #[error(transparent)]
    Journal(#[from] AppendError),
    #[error("the platform could not record the rejection: {0}")]
    Platform(String),
}

pub enum CallMsg {
    Get {
        reply: RpcReplyPort<CallCore>,
    },
    Heartbeat {
        reply: RpcReplyPort<Result<Arc<CallRecord>, CallError>>,
    },
    End {
        end: EndReport,
        reply: RpcReplyPort<Result<EndedCall, AppendError>>,
    },
    /// The provider refused to place this call (429): the pool cools down, then the call ends
    /// as `provider_rejected`. In this actor, so repeats and a racing end see one outcome.
    ProviderRejected {
        cooldown_ms: u64,
        reply: RpcReplyPort<Result<EndedCall, CallError>>,
    },
    /// The watchdog's periodic question: are you stuck?
    Sweep,
    /// Fault injection for the supervision tests.
    Crash,
    /// Fault injection: makes an end durable, then panics before finishing it.
    CrashMidEnd,
}

pub struct CallActor {
    pub journal: ActorRef<JournalMsg>,
    pub directory: SharedDirectory,
    pub clock: Arc<dyn Clock>,
    pub telemetry: Arc<dyn Telemetry>,
    pub watchdog: Watchdog,
    pub journal_timeout: Duration,
    pub arbitration: Arc<Arbitration>,
}

impl Actor for CallActor {
    type Msg = CallMsg;
    type State = CallCore;
    type Arguments = Arc<CallRecord>;

    async fn pre_start(&self, _: ActorRef<CallMsg>, record: Arc<CallRecord>) -> Result<CallCore, ActorProcessingErr> {
        Ok(CallCore::new(record))
    }

    async fn handle(&self, myself: ActorRef<CallMsg>, msg: CallMsg, core: &mut CallCore) -> Result<(), ActorProcessingErr> {
        match msg {
            CallMsg::Get { reply } => {
                let _ = reply.send(core.clone());
            }
            CallMsg::Heartbeat { reply } => {
                let result = self.heartbeat(core).await;
                let unknown = matches!(result, Err(CallError::Journal(AppendError::Unknown)));
                let _ = reply.send(result);
                if unknown {
                    return Err(unknown_outcome());
                }
            }
            CallMsg::End { end, reply } => {
                let result = self.end(&myself, core, end).await;
                let unknown = matches!(result, Err(AppendError::Unknown));
                let _ = reply.send(result);
                if unknown {
                    return Err(unknown_outcome());
                }
            }
            CallMsg::ProviderRejected { cooldown_ms, reply } => {
                let result = Box::pin(self.provider_rejected(&myself, core, cooldown_ms)).await;
                let unknown = matches!(result, Err(CallError::Journal(AppendError::Unknown)));
                let _ = reply.send(result);
                if unknown {
                    return Err(unknown_outcome());
                }
            }
            CallMsg::Sweep => {
                let now_ms = self.clock.now_ms();
                if let Some(stuck) = core.verdict(now_ms, self.watchdog) {
                    let quiet_s = now_ms.saturating_sub(core.record.last_activity_at_ms) / 1000;
                    match self.end(&myself, core, EndReport::outcome(OUTCOME_RECLAIMED_STALE)).await {
                        Ok(_) => {
                            self.telemetry.stuck_call_reclaimed();
                            tracing::warn!(call_id = %core.record.id, tenant_id = %core.record.tenant_id, reason = stuck.as_str(), quiet_s, "reclaimed stuck call");
                        }
                        Err(AppendError::Unknown) => return Err(unknown_outcome()),
                        Err(error) => {
                            tracing::error!(call_id = %core.record.id, %error, "could not reclaim stuck call")
                        }
                    }
                }
            }
            CallMsg::Crash => panic!("injected call crash"),
            CallMsg::CrashMidEnd => {
                let ended = core.end_record(self.clock.now_ms(), EndReport::outcome("completed"), 0);
                let event = ended_event(&ended);
                crate::append(&self.journal, event, Guard::default(), self.journal_timeout).await?;
                panic!("injected call crash between a durable end and its release");
            }
        }
        Ok(())
    }
}

impl CallActor {
    async fn heartbeat(&self, core: &mut CallCore) -> Result<Arc<CallRecord>, CallError> {
        if let Some(ended) = &core.ended {
            return Err(CallError::Ended(Box::new(ended.clone())));
        }
        let at_ms = self.clock.now_ms();
        let event = Event::CallHeartbeat { id: core.record.id, at_ms };
        crate::append(&self.journal, event, Guard::default(), self.journal_timeout).await?;
        core.heartbeat(at_ms);
        Ok(core.record.clone())
    }

    /// The pool learns from the rejection while this call still holds its slot, then the call
    /// ends. An ended call answers its final record (the caller tells the outcomes apart).
    async fn provider_rejected(&self, myself: &ActorRef<CallMsg>, core: &mut CallCore, cooldown_ms: u64) -> Result<EndedCall, CallError> {
        if let Some(ended) = &core.ended {
            return Ok(ended.clone());
        }
        let platform = self.directory.read().platform();
        let (pool, call) = (core.record.pool.to_string(), core.record.id);
        let timeout = Some(self.journal_timeout);
        match platform.actor.call(|reply| PlatformMsg::ProviderRejected { pool, call, cooldown_ms, reply }, timeout).await {
            Ok(ractor::rpc::CallResult::Success(Ok(()))) => {
                tracing::warn!(alert = "PROVIDER_RATE_LIMITED", call_id = %call, pool = %core.record.pool, cooldown_ms, "provider refused a call; pool cooling down");
            }
            Ok(ractor::rpc::CallResult::Success(Err(error))) => return Err(CallError::Platform(error.to_string())),
            _ => return Err(CallError::Platform("the platform actor did not answer; retry".into())),
        }
        Ok(self.end(myself, core, EndReport::outcome(OUTCOME_PROVIDER_REJECTED)).await?)
    }

    async fn end(&self, myself: &ActorRef<CallMsg>, core: &mut CallCore, end: EndReport) -> Result<EndedCall, AppendError> {
        if let Some(ended) = &core.ended {
            return Ok(ended.clone());
        }
        let cost_cents = self.arbitration.price_cents(&core.record.pool, end.characters.unwrap_or(0));
        let ended = core.end_record(self.clock.now_ms(), end, cost_cents);
        let event = ended_event(&ended);
        crate::append(&self.journal, event, Guard::default(), self.journal_timeout).await?;
        core.commit_end(ended.clone());
        self.release_slots(&ended);
        self.telemetry.active_calls(&ended.call.plan, -1);
        myself.stop(None);
        Ok(ended)
    }

    fn release_slots(&self, ended: &EndedCall) {
        self.directory.write().finish_call_and_release(ended.clone());
    }
}

fn ended_event(ended: &EndedCall) -> Event {
    Event::CallEnded {
        id: ended.call.id,
        ended_at_ms: ended.ended_at_ms,
        outcome: ended.outcome.clone(),
        duration_s: ended.duration_s,
        characters: ended.characters,
        cost_cents: ended.cost_cents,
    }
}
