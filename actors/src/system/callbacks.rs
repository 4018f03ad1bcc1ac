//! The callback side of the facade: recording missed calls, the dispatcher that calls them
//! back, and the callbacks API (seed 002).
//!
//! The dispatcher is a task fed by the lines' callback-queue actors. For each entry it checks
//! the tenant's credits, admits the callback through the normal admission path (tenant, line,
//! pool), has the entry made durably `processing`, and only then sends the dial request: at
//! most once. Dispatches in progress are bounded (`CallbackSettings::dispatch_concurrency_max`).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use tokio::sync::{Semaphore, mpsc};

use super::{AdmitError, AdmitRequest, CallState, System, SystemError, ask};
use crate::callback_queue::{Busy, CallbackError, CallbackQueueMsg, Dispatch, Transition, Work};
use crate::core::call::EndReport;
use crate::dialer::{DialOutcome, DialRequest, Dialer};
use crate::model::{
    CallbackEntry, CallbackId, CallbackStatus, Campaign, CampaignId, Direction, LineId, MissedAttempt, MissedReason, OnBusy, mask_phone,
};

/// Entries handed to the dispatcher and not yet started; past it a queue keeps its entry
/// pending and the backup scan tries again.
pub const DISPATCH_BACKLOG_MAX: usize = 1_024;

/// Outcomes the dispatcher gives the calls it ends itself.
pub const OUTCOME_DIAL_FAILED: &str = "dial_failed";
pub const OUTCOME_UNKNOWN_AFTER_RESTART: &str = "unknown_after_restart";
pub const OUTCOME_DISPATCH_ABANDONED: &str = "dispatch_abandoned";

/// A page of `GET /v1/callbacks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackPage {
    pub entries: Vec<CallbackEntry>,
    pub total: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallbackFilter {
    pub status: Option<CallbackStatus>,
    pub line_id: Option<String>,
    pub tenant_id: Option<String>,
}

impl System {
    fn queue(&self, line_id: &str) -> Result<ractor::ActorRef<CallbackQueueMsg>, SystemError> {
        self.context.directory.read().callback_queues.get(line_id).cloned().ok_or(SystemError::NotFound)
    }

    pub fn line_on_busy(&self, line_id: &str) -> Option<OnBusy> {
        self.context.directory.read().lines.get(line_id).map(|l| l.on_busy)
    }

    /// Records a missed call on a line (a new entry, or one more attempt on the caller's open
    /// entry, unless that entry already counted `attempt`). Returns the entry and whether it is
    /// new.
    pub async fn record_missed(
        &self,
        line_id: &str,
        caller: String,
        reason: MissedReason,
        attempt: Option<MissedAttempt>,
    ) -> Result<(CallbackEntry, bool), MissedError> {
        let queue = self.queue(line_id).map_err(|_| MissedError::UnknownLine)?;
        let timeout = self.context.settings.journal_timeout;
        match ask(&queue, |reply| CallbackQueueMsg::Missed { caller, reason, attempt, reply }, timeout).await {
            Ok(Ok(recorded)) => Ok(recorded),
            Ok(Err(CallbackError::QueueFull { open })) => Err(MissedError::QueueFull { open }),
            Ok(Err(error)) => Err(MissedError::Unavailable(error.to_string())),
            Err(_) => Err(MissedError::Unavailable("the line's callback queue is restarting; retry".into())),
        }
    }

    /// An inbound call refused for capacity on a line that answers before connecting is turned
    /// away busy and becomes a missed call. `None`: this refusal is not one of those.
    pub async fn turn_away_busy(&self, request: &AdmitRequest, error: &AdmitError) -> Option<Result<(CallbackEntry, bool), MissedError>> {
        let line_id = request.line_id.as_deref()?;
        let callback_line = self.line_on_busy(line_id) == Some(OnBusy::Callback);
        let inbound = request.direction == Direction::Inbound && !request.already_connected;
        if !(callback_line && inbound && matches!(error, AdmitError::Denied(_))) {
            return None;
        }
        let caller = request.from.clone()?;
        // A retried webhook names the same provider call, or carries the same key.
        let attempt = match (&request.provider_call_id, &request.idempotency) {
            (Some(call), _) => Some(MissedAttempt::ProviderCall(call.clone())),
            (None, Some(stamp)) => Some(MissedAttempt::IdempotencyKey(stamp.key.clone())),
            (None, None) => None,
        };
        Some(self.record_missed(line_id, caller, MissedReason::Busy, attempt).await)
    }

    /// Starts the dispatcher. Called once, after boot: entries left `processing` by a crash
    /// whose dial may or may not have gone out become `failed` (`unknown_after_restart`) and are
    /// never redialled; callback calls admitted but never marked `processing` are ended.
    pub async fn start_dispatcher(self: &Arc<Self>, dialer: Arc<dyn Dialer>) {
        self.settle_after_restart().await;
        let (sender, receiver) = mpsc::channel(DISPATCH_BACKLOG_MAX);
        if self.context.dispatcher.set(sender).is_err() {
            return;
        }
        let concurrency = Arc::new(Semaphore::new(self.context.settings.callbacks.dispatch_concurrency_max));
        tokio::spawn(dispatch_loop(Arc::downgrade(self), dialer, receiver, concurrency));
        let queues: Vec<_> = self.context.directory.read().callback_queues.values().cloned().collect();
        for queue in queues {
            let _ = queue.cast(CallbackQueueMsg::Kick);
        }
    }

    async fn settle_after_restart(&self) {
        let entries = self.inspect(|durable| durable.callbacks.values().filter(|e| e.status.is_open()).cloned().collect::<Vec<_>>()).await;
        let Ok(entries) = entries else { return };
        let mut processing_calls = BTreeMap::new();
        for entry in entries.iter().filter(|e| e.status == CallbackStatus::Processing) {
            if entry.dialed {
                // The queue settles it from its call's end.
                processing_calls.insert(entry.call_id, entry.id);
                continue;
            }
            tracing::warn!(callback_id = %entry.id, "callback found processing after a restart: its dial may have gone out; not redialling");
            let failed = self
                .transition_callback(
                    entry,
                    &[CallbackStatus::Processing],
                    CallbackStatus::Failed,
                    entry.call_id,
                    false,
                    Some(OUTCOME_UNKNOWN_AFTER_RESTART),
                )
                .await;
            if let (Ok(_), Some(call)) = (failed, entry.call_id) {
                let _ = self.end_call(call, EndReport::outcome(OUTCOME_UNKNOWN_AFTER_RESTART)).await;
            }
        }
        let wanted_contact_calls = self.settle_contacts_after_restart().await;
        let orphans: Vec<_> = self
            .list_calls(None, None, None, usize::MAX)
            .into_iter()
            .filter(|c| {
                (c.callback_id.is_some() && !processing_calls.contains_key(&Some(c.id)))
                    || (c.campaign.is_some() && !wanted_contact_calls.contains(&c.id))
            })
            .map(|c| c.id)
            .collect();
        for call in orphans {
            let _ = self.end_call(call, EndReport::outcome(OUTCOME_DISPATCH_ABANDONED)).await;
        }
    }

    async fn transition_callback(
        &self,
        entry: &CallbackEntry,
        from: &'static [CallbackStatus],
        status: CallbackStatus,
        call_id: Option<crate::model::CallId>,
        dialed: bool,
        failure_reason: Option<&str>,
    ) -> Result<CallbackEntry, CallbackError> {
        let queue = self.queue(&entry.line_id).map_err(|_| CallbackError::NotFound(entry.id))?;
        let transition = Transition { id: entry.id, from, status, call_id, dialed, failure_reason: failure_reason.map(str::to_owned) };
        match ask(&queue, |reply| CallbackQueueMsg::Transition { transition, reply }, self.context.settings.journal_timeout).await {
            Ok(result) => result,
            Err(_) => Err(CallbackError::Journal(crate::journal::AppendError::Unknown)),
        }
    }

    /// No dispatch is handed over or running (tests wait for this before comparing states).
    pub fn callbacks_settled(&self) -> bool {
        self.context.dispatches_in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// One piece of work, start to finish. The queue hears `DispatchDone` whatever happens.
    async fn dispatch(&self, dialer: &dyn Dialer, dispatch: Dispatch) {
        let (line_id, work, progressed) = match &dispatch.work {
            Work::Callback(entry) => {
                let progressed = self.dispatch_callback(dialer, entry, &dispatch).await;
                (entry.line_id.clone(), Busy::Callback(entry.id), progressed)
            }
            Work::Contact(contact) => {
                let progressed = self.dispatch_contact(dialer, contact, &dispatch).await;
                (contact.line_id.clone(), Busy::Contact(contact.campaign, contact.index), progressed)
            }
        };
        let told = self.queue(&line_id).map(|queue| queue.cast(CallbackQueueMsg::DispatchDone { work, progressed }).is_ok());
        if told != Ok(true) {
            // Nobody will count this dispatch done.
            self.context.dispatches_in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Returns whether the entry left `pending` (then the queue may hand over its next one).
    async fn dispatch_callback(&self, dialer: &dyn Dialer, entry: &CallbackEntry, dispatch: &Dispatch) -> bool {
        let settings = &self.context.settings.callbacks;
        let Ok(tenant) = self.get_tenant(&entry.tenant_id).await else { return false };
        if tenant.record.prepaid && tenant.balance <= settings.min_credits {
            let pending = &[CallbackStatus::Pending];
            let held = self.transition_callback(entry, pending, CallbackStatus::InsufficientCredits, None, false, None).await.is_ok();
            if held {
                tracing::warn!(alert = "CALLBACK_INSUFFICIENT_CREDITS", callback_id = %entry.id, tenant_id = %entry.tenant_id, balance = tenant.balance, min_credits = settings.min_credits, "callback held: add credits to place it");
                // Credits that arrived between the read and the hold would not release it.
                if self.context.balance(&entry.tenant_id) > settings.min_credits {
                    let held_status = &[CallbackStatus::InsufficientCredits];
                    let _ = self.transition_callback(entry, held_status, CallbackStatus::Pending, None, false, None).await;
                }
            }
            return held;
        }
        let request = AdmitRequest {
            line_id: Some(entry.line_id.clone()),
            to: Some(entry.caller.clone()),
            from: Some(entry.line_id.to_string()),
            callback_id: Some(entry.id),
            ..AdmitRequest::outbound(entry.tenant_id.clone())
        };
        let admitted = match self.admit_internal(request).await {
            Ok(admitted) => admitted,
            Err(error) => {
                tracing::debug!(callback_id = %entry.id, %error, "callback not admitted yet; it stays pending");
                return false;
            }
        };
        let call = admitted.call.id;
        // Durably processing before the dial request goes out: at most once.
        if self.transition_callback(entry, &[CallbackStatus::Pending], CallbackStatus::Processing, Some(call), false, None).await.is_err() {
            let _ = self.end_call(call, EndReport::outcome(OUTCOME_DISPATCH_ABANDONED)).await;
            return false;
        }
        self.context.telemetry.callback_dispatched(dispatch.triggered_at.elapsed().as_secs_f64());
        self.dial(dialer, entry, dispatch, call).await
    }

    async fn dial(&self, dialer: &dyn Dialer, entry: &CallbackEntry, dispatch: &Dispatch, call: crate::model::CallId) -> bool {
        let request = DialRequest {
            to: entry.caller.clone(),
            line_id: entry.line_id.to_string(),
            tenant_id: entry.tenant_id.to_string(),
            agent_id: dispatch.agent_id.clone(),
            call_id: call.to_string(),
            is_auto_callback: true,
            original_missed_call_id: Some(entry.id.to_string()),
        };
        tracing::info!(callback_id = %entry.id, call_id = %call, to = %mask_phone(&entry.caller), "dialling a callback");
        let processing = &[CallbackStatus::Processing];
        match dialer.dial(request).await {
            DialOutcome::Accepted => {
                let _ = self.transition_callback(entry, processing, CallbackStatus::Processing, Some(call), true, None).await;
                true
            }
            DialOutcome::RateLimited { retry_after_s } => {
                // The provider never placed the call: the pool cools down, the entry waits.
                let cooldown_ms =
                    retry_after_s.map_or(self.context.settings.arbitration.provider_cooldown_ms_default, |s| s.saturating_mul(1000));
                let _ = self.provider_rejected(call, cooldown_ms).await;
                let _ = self.transition_callback(entry, processing, CallbackStatus::Pending, None, false, None).await;
                false
            }
            DialOutcome::Failed(reason) => {
                tracing::warn!(callback_id = %entry.id, %reason, "callback dial failed; single attempt, not retried");
                let _ = self.end_call(call, EndReport::outcome(OUTCOME_DIAL_FAILED)).await;
                let _ = self.transition_callback(entry, processing, CallbackStatus::Failed, Some(call), false, Some(&reason)).await;
                true
            }
        }
    }

    /// After credits were added: queues of the tenant's lines return their entries short of
    /// credits to pending, if the balance is now above the minimum.
    pub(super) fn credits_added(&self, tenant_id: &str, balance: u64) {
        if balance <= self.context.settings.callbacks.min_credits {
            return;
        }
        let directory = self.context.directory.read();
        // The tenant's lines, in id order (sorting every line first held the directory's lock
        // for a sort of all of them on each top-up).
        let mut lines: Vec<_> = directory.lines.iter().filter(|(_, l)| l.tenant_id == tenant_id).map(|(id, _)| id).collect();
        lines.sort_unstable();
        for line_id in lines {
            if let Some(queue) = directory.callback_queues.get(line_id) {
                let _ = queue.cast(CallbackQueueMsg::CreditsAdded);
            }
        }
    }

    // ---------------------------------------------------------------- the API

    pub async fn list_callbacks(&self, filter: CallbackFilter, offset: usize, limit: usize) -> Result<CallbackPage, SystemError> {
        self.read_durable(move |durable| {
            let matching: Vec<&CallbackEntry> = durable
                .callbacks
                .values()
                .rev()
                .filter(|e| filter.status.is_none_or(|s| e.status == s))
                .filter(|e| filter.line_id.as_ref().is_none_or(|l| e.line_id == l))
                .filter(|e| filter.tenant_id.as_ref().is_none_or(|t| e.tenant_id == t))
                .collect();
            CallbackPage { total: matching.len(), entries: matching.into_iter().skip(offset).take(limit).cloned().collect() }
        })
        .await
        .map_err(SystemError::Unavailable)
    }

    pub async fn callback_stats(&self) -> Result<BTreeMap<CallbackStatus, usize>, SystemError> {
        self.read_durable(|durable| {
            let mut counts: BTreeMap<CallbackStatus, usize> = CallbackStatus::ALL.iter().map(|s| (*s, 0)).collect();
            for entry in durable.callbacks.values() {
                *counts.entry(entry.status).or_default() += 1;
            }
            counts
        })
        .await
        .map_err(SystemError::Unavailable)
    }

    pub async fn get_callback(&self, id: CallbackId) -> Result<CallbackEntry, SystemError> {
        self.read_durable(move |durable| durable.callbacks.get(&id).cloned())
            .await
            .map_err(SystemError::Unavailable)?
            .ok_or(SystemError::NotFound)
    }

    /// `failed` → `pending` (an explicit, manual retry; nothing retries automatically).
    pub async fn retry_callback(&self, id: CallbackId) -> Result<CallbackEntry, CallbackApiError> {
        let entry = self.get_callback(id).await.map_err(CallbackApiError::from)?;
        let queue = self.queue(&entry.line_id).map_err(CallbackApiError::from)?;
        // The queue's turn reads the journal and appends, each bounded by the journal timeout.
        let turn = self.context.settings.journal_timeout.saturating_mul(2);
        match ask(&queue, |reply| CallbackQueueMsg::Retry { id, reply }, turn).await {
            Ok(result) => result.map_err(CallbackApiError::from),
            Err(_) => Err(CallbackApiError::Unavailable("the line's callback queue is restarting; retry".into())),
        }
    }

    /// `pending` or `on-hold` → `cancelled`.
    pub async fn cancel_callback(&self, id: CallbackId) -> Result<CallbackEntry, CallbackApiError> {
        let entry = self.get_callback(id).await.map_err(CallbackApiError::from)?;
        if !matches!(entry.status, CallbackStatus::Pending | CallbackStatus::OnHold) {
            return Err(CallbackApiError::WrongStatus { status: entry.status, expected: "pending or on-hold" });
        }
        // The queue decides on the entry as it is in its turn: a cancel that lost a race to
        // another cancel or a dial hears the status it found there (409).
        let from = &[CallbackStatus::Pending, CallbackStatus::OnHold];
        self.transition_callback(&entry, from, CallbackStatus::Cancelled, None, false, None).await.map_err(CallbackApiError::from)
    }

    /// Every line's open callback entries as the queue actors hold them (for the invariants).
    #[allow(clippy::type_complexity)]
    pub(super) async fn live_callbacks(
        &self,
    ) -> Result<(BTreeMap<LineId, BTreeMap<CallbackId, CallbackEntry>>, BTreeMap<LineId, BTreeMap<CampaignId, Campaign>>), String> {
        let queues: Vec<_> = self.context.directory.read().callback_queues.iter().map(|(l, q)| (l.clone(), q.clone())).collect();
        let (mut entries_by_line, mut campaigns_by_line) = (BTreeMap::new(), BTreeMap::new());
        for (line, queue) in queues {
            let (entries, campaigns) = ask(&queue, |reply| CallbackQueueMsg::Get { reply }, self.timeout())
                .await
                .map_err(|_| "a callback queue did not answer".to_owned())?;
            entries_by_line.insert(line.clone(), entries);
            campaigns_by_line.insert(line, campaigns);
        }
        Ok((entries_by_line, campaigns_by_line))
    }

    /// The callback's own call, if it is live (for tests and the API).
    pub async fn callback_call(&self, entry: &CallbackEntry) -> Option<CallState> {
        self.get_call(entry.call_id?).await.ok()
    }
}

async fn dispatch_loop(system: Weak<System>, dialer: Arc<dyn Dialer>, mut receiver: mpsc::Receiver<Dispatch>, concurrency: Arc<Semaphore>) {
    while let Some(dispatch) = receiver.recv().await {
        let Ok(permit) = Arc::clone(&concurrency).acquire_owned().await else { return };
        let Some(system) = system.upgrade() else { return };
        let dialer = Arc::clone(&dialer);
        tokio::spawn(async move {
            let _permit = permit;
            system.dispatch(&*dialer, dispatch).await;
        });
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MissedError {
    #[error("no such line")]
    UnknownLine,
    #[error("the line's callback queue is full ({open} open entries)")]
    QueueFull { open: usize },
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallbackApiError {
    #[error("not found")]
    NotFound,
    #[error("the callback is {}, not {expected}", status.as_str())]
    WrongStatus { status: CallbackStatus, expected: &'static str },
    #[error("the line's callback queue is full ({open} open entries)")]
    QueueFull { open: usize },
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl From<SystemError> for CallbackApiError {
    fn from(error: SystemError) -> Self {
        match error {
            SystemError::NotFound => CallbackApiError::NotFound,
            other => CallbackApiError::Unavailable(other.to_string()),
        }
    }
}

impl From<CallbackError> for CallbackApiError {
    fn from(error: CallbackError) -> Self {
        match error {
            CallbackError::NotFound(_) => CallbackApiError::NotFound,
            CallbackError::WrongStatus { status, expected, .. } => CallbackApiError::WrongStatus { status, expected },
            CallbackError::QueueFull { open } => CallbackApiError::QueueFull { open },
            other => CallbackApiError::Unavailable(other.to_string()),
        }
    }
}
