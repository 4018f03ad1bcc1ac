//! A line's campaigns, owned by the line's queue actor: creation, start, pause, resume,
//! cancel; handing contacts to the dispatcher within their calling window and daily cap; and
//! settling contacts by their calls' ends. While a campaign runs, missed calls on its line wait
//! `on-hold`; when it completes, pauses or is cancelled they return to `pending` (seed 002).

use super::{CallbackQueueActor, CallbackQueueState, Transition};
use crate::core::campaign::{Next, finished, held_by_line, next};
use crate::directory::CallLookup;
use crate::event::Event;
use crate::journal::AppendError;
use crate::model::{CallId, CallbackStatus, Campaign, CampaignId, CampaignRecord, CampaignStatus, ContactState, ContactStatus};

/// The outcome a campaign call must end with to count as `completed`.
const CONTACT_SUCCESS_OUTCOME: &str = "completed";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignAction {
    Start,
    Pause,
    Resume,
    Cancel,
}

impl CampaignAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignAction::Start => "start",
            CampaignAction::Pause => "pause",
            CampaignAction::Resume => "resume",
            CampaignAction::Cancel => "cancel",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CampaignError {
    #[error("{0} is not an open campaign of this line")]
    NotFound(CampaignId),
    #[error("cannot {action} a {status:?} campaign")]
    WrongStatus { action: &'static str, status: CampaignStatus },
    #[error("another campaign ({0}) is running or paused on this line")]
    LineBusy(CampaignId),
    #[error("contact {index} of {id} is {status:?}")]
    WrongContact { id: CampaignId, index: u32, status: ContactStatus },
    #[error(transparent)]
    Journal(#[from] AppendError),
    #[error("the journal did not answer a read in time; retry")]
    ReadTimedOut,
}

/// A contact handed to the dispatcher.
#[derive(Clone, Debug)]
pub struct ContactWork {
    pub campaign: CampaignId,
    pub index: u32,
    pub tenant_id: crate::model::TenantId,
    pub line_id: crate::model::LineId,
    pub phone: String,
    /// The contact's local day, for the daily cap.
    pub day: u32,
}

impl CallbackQueueActor {
    pub(super) async fn create_campaign(&self, state: &mut CallbackQueueState, record: CampaignRecord) -> Result<Campaign, CampaignError> {
        let event = Event::CampaignCreated(record.clone());
        self.append(event).await?;
        let contacts = vec![ContactState { status: ContactStatus::Pending, call_id: None, failure_reason: None }; record.contacts.len()];
        let campaign = Campaign { status: CampaignStatus::Draft, contacts, updated_at_ms: record.created_at_ms, record };
        state.campaigns.insert(campaign.record.id, campaign.clone());
        Ok(campaign)
    }

    pub(super) async fn control_campaign(
        &self,
        state: &mut CallbackQueueState,
        id: CampaignId,
        action: CampaignAction,
    ) -> Result<Campaign, CampaignError> {
        let Some(status) = state.campaigns.get(&id).map(|c| c.status) else {
            // Closed since the caller read it (completed by its last call, a concurrent cancel):
            // the answer is its status as journaled now.
            let read = move |durable: &crate::state::DurableState| durable.campaigns.get(&id).map(|c| c.status);
            let journaled =
                crate::read_journal(&self.journal, read, self.journal_timeout).await.map_err(|_| CampaignError::ReadTimedOut)?;
            let status = journaled.ok_or(CampaignError::NotFound(id))?;
            return Err(CampaignError::WrongStatus { action: action.as_str(), status });
        };
        let wrong = || CampaignError::WrongStatus { action: action.as_str(), status };
        let to = match (action, status) {
            (CampaignAction::Start, CampaignStatus::Draft) => {
                let active = state.campaigns.values().find(|c| matches!(c.status, CampaignStatus::Running | CampaignStatus::Paused));
                if let Some(other) = active {
                    return Err(CampaignError::LineBusy(other.record.id));
                }
                CampaignStatus::Running
            }
            (CampaignAction::Pause, CampaignStatus::Running) => CampaignStatus::Paused,
            (CampaignAction::Resume, CampaignStatus::Paused) => CampaignStatus::Running,
            (CampaignAction::Cancel, CampaignStatus::Draft | CampaignStatus::Running | CampaignStatus::Paused) => CampaignStatus::Cancelled,
            _ => return Err(wrong()),
        };
        self.set_status(state, id, to).await?;
        if matches!(to, CampaignStatus::Running) && action == CampaignAction::Start {
            // A campaign with no contact left to call is complete at once.
            self.complete_if_finished(state, id).await?;
        }
        let campaign = state.campaigns.get(&id).cloned();
        Ok(campaign.unwrap_or_else(|| self.closed_view(id, to)))
    }

    /// A closed campaign left this actor; the caller reads it from the journal instead. This
    /// placeholder only carries the id and status for the reply path.
    fn closed_view(&self, id: CampaignId, status: CampaignStatus) -> Campaign {
        let record = CampaignRecord {
            id,
            tenant_id: self.tenant_id.clone(),
            line_id: self.line_id.clone(),
            contacts: Vec::new(),
            concurrency: 0,
            max_calls_per_lead_per_day: 0,
            window_start_minute: 0,
            window_end_minute: 0,
            created_at_ms: 0,
        };
        Campaign { record, status, contacts: Vec::new(), updated_at_ms: self.clock.now_ms() }
    }

    async fn set_status(&self, state: &mut CallbackQueueState, id: CampaignId, status: CampaignStatus) -> Result<(), AppendError> {
        let at_ms = self.clock.now_ms();
        self.append(Event::CampaignStatusSet { id, status, at_ms }).await?;
        if let Some(campaign) = state.campaigns.get_mut(&id) {
            campaign.status = status;
            campaign.updated_at_ms = at_ms;
            if !held_by_line(campaign) {
                state.campaigns.remove(&id);
            }
        }
        if status != CampaignStatus::Running {
            self.release_on_hold(state).await?;
        }
        Ok(())
    }

    /// Missed calls held for a campaign go back to pending (no campaign runs any more).
    async fn release_on_hold(&self, state: &mut CallbackQueueState) -> Result<(), AppendError> {
        if state.campaigns.values().any(|c| c.status == CampaignStatus::Running) {
            return Ok(());
        }
        let held: Vec<_> = state.queue.entries().values().filter(|e| e.status == CallbackStatus::OnHold).map(|e| e.id).collect();
        for id in held {
            let back = Transition {
                id,
                from: &[CallbackStatus::OnHold],
                status: CallbackStatus::Pending,
                call_id: None,
                dialed: false,
                failure_reason: None,
            };
            match self.transition(state, back).await {
                Err(super::CallbackError::Journal(error)) => return Err(error),
                _ => continue,
            }
        }
        Ok(())
    }

    pub(super) async fn update_contact(
        &self,
        state: &mut CallbackQueueState,
        id: CampaignId,
        index: u32,
        from: &'static [ContactStatus],
        contact: ContactState,
        day: Option<u32>,
    ) -> Result<(), CampaignError> {
        let campaign = state.campaigns.get(&id).ok_or(CampaignError::NotFound(id))?;
        // A contact is handed out while its campaign runs, and admitted before it starts
        // calling: a pause or cancel that came in between wins, and the contact stays pending.
        if contact.status == ContactStatus::Calling && campaign.status != CampaignStatus::Running {
            return Err(CampaignError::WrongStatus { action: "call a contact of", status: campaign.status });
        }
        let current = campaign.contacts.get(index as usize).ok_or(CampaignError::NotFound(id))?.status;
        if !from.contains(&current) {
            return Err(CampaignError::WrongContact { id, index, status: current });
        }
        let at_ms = self.clock.now_ms();
        let dialled = contact.status == ContactStatus::Dialled;
        let call = contact.call_id;
        self.append(Event::CampaignContactSet { id, index, state: contact.clone(), day, at_ms }).await?;
        if let Some(campaign) = state.campaigns.get_mut(&id) {
            campaign.contacts[index as usize] = contact;
            campaign.updated_at_ms = at_ms;
            // A cancelled campaign leaves the line once its last call has settled.
            if !held_by_line(campaign) {
                state.campaigns.remove(&id);
            }
        }
        if dialled && let Some(call) = call {
            // The call may have ended before its dial was recorded.
            self.settle_contact_if_ended(state, id, index, call).await?;
        }
        self.complete_if_finished(state, id).await?;
        Ok(())
    }

    /// A dialled contact's call ended: completed, or failed with the outcome (one attempt).
    /// Contacts not yet dialled belong to the dispatcher.
    pub(super) async fn settle_contact(
        &self,
        state: &mut CallbackQueueState,
        id: CampaignId,
        index: u32,
        call: CallId,
        outcome: &str,
    ) -> Result<(), CampaignError> {
        let dialled = state
            .campaigns
            .get(&id)
            .and_then(|c| c.contacts.get(index as usize))
            .is_some_and(|c| c.status == ContactStatus::Dialled && c.call_id == Some(call));
        if !dialled {
            return Ok(());
        }
        let (status, failure_reason) = if outcome == CONTACT_SUCCESS_OUTCOME {
            (ContactStatus::Completed, None)
        } else {
            (ContactStatus::Failed, Some(outcome.to_owned()))
        };
        let settled = ContactState { status, call_id: Some(call), failure_reason };
        self.update_contact(state, id, index, &[ContactStatus::Dialled], settled, None).await
    }

    async fn settle_contact_if_ended(
        &self,
        state: &mut CallbackQueueState,
        id: CampaignId,
        index: u32,
        call: CallId,
    ) -> Result<(), AppendError> {
        let ended = match self.directory.read().call(call) {
            CallLookup::Ended(ended) => Some(ended.outcome),
            CallLookup::Unknown => Some("unknown_after_restart".into()),
            CallLookup::Live(_) => None,
        };
        let Some(outcome) = ended else { return Ok(()) };
        match Box::pin(self.settle_contact(state, id, index, call, &outcome)).await {
            Err(CampaignError::Journal(error)) => Err(error),
            _ => Ok(()),
        }
    }

    /// After a rebuild: dialled contacts whose calls ended meanwhile are settled.
    pub(super) async fn settle_dialled_contacts(&self, state: &mut CallbackQueueState) -> Result<(), AppendError> {
        let dialled: Vec<(CampaignId, u32, CallId)> = state
            .campaigns
            .values()
            .flat_map(|c| {
                c.contacts
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.status == ContactStatus::Dialled)
                    .filter_map(|(i, s)| s.call_id.map(|call| (c.record.id, i as u32, call)))
            })
            .collect();
        for (id, index, call) in dialled {
            self.settle_contact_if_ended(state, id, index, call).await?;
        }
        Ok(())
    }

    async fn complete_if_finished(&self, state: &mut CallbackQueueState, id: CampaignId) -> Result<(), AppendError> {
        let done = state.campaigns.get(&id).is_some_and(|c| c.status == CampaignStatus::Running && finished(c));
        if done {
            tracing::info!(campaign_id = %id, "campaign completed");
            Box::pin(self.set_status(state, id, CampaignStatus::Completed)).await?;
        }
        Ok(())
    }

    /// The running campaign's next contact to dial. Contacts outside their calling window or
    /// over their lead's daily cap are skipped (journaled) on the way.
    pub(super) async fn next_contact(&self, state: &mut CallbackQueueState) -> Result<Option<ContactWork>, AppendError> {
        let Some(id) = state.campaigns.values().find(|c| c.status == CampaignStatus::Running).map(|c| c.record.id) else {
            return Ok(None);
        };
        // Bounded by the contacts: each pass skips one for good or returns.
        let passes = state.campaigns[&id].contacts.len() + 1;
        for _ in 0..passes {
            // A skip of the last pending contact completes the campaign, which leaves this actor.
            let Some(campaign) = state.campaigns.get(&id) else {
                return Ok(None);
            };
            let now_ms = self.clock.now_ms();
            // The daily cap can only turn a call into a skip: the journal is asked for the one
            // lead's count only when, without it, the contact would be called.
            let mut step = next(campaign, now_ms, |_, _| 0);
            if let Next::Call { index, day } = step {
                let phone = &campaign.record.contacts[index as usize].phone;
                let calls = self.lead_calls(&campaign.record.tenant_id, phone, day).await;
                step = next(campaign, now_ms, |_, _| calls);
            }
            match step {
                Next::Wait => {
                    self.complete_if_finished(state, id).await?;
                    return Ok(None);
                }
                Next::Skip { index, status } => {
                    let skipped = ContactState { status, call_id: None, failure_reason: None };
                    match self.update_contact(state, id, index, &[ContactStatus::Pending], skipped, None).await {
                        Err(CampaignError::Journal(error)) => return Err(error),
                        _ => continue,
                    }
                }
                Next::Call { index, day } => {
                    let contact = &campaign.record.contacts[index as usize];
                    return Ok(Some(ContactWork {
                        campaign: id,
                        index,
                        tenant_id: campaign.record.tenant_id.clone(),
                        line_id: campaign.record.line_id.clone(),
                        phone: contact.phone.clone(),
                        day,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// How often the tenant called `phone` on its local `day`, as journaled (across every
    /// line's campaigns). One lookup: the journal writer is not held for a scan of every lead.
    async fn lead_calls(&self, tenant: &str, phone: &str, day: u32) -> u32 {
        let (tenant, phone) = (tenant.to_owned(), phone.to_owned());
        let read = move |durable: &crate::state::DurableState| durable.lead_calls_on(&tenant, &phone, day);
        crate::read_journal(&self.journal, read, self.journal_timeout).await.unwrap_or_default()
    }
}
