//! Campaigns on the facade: creating and controlling them, reading their progress, and the
//! dispatcher's part for a campaign's contact (admit, durably `calling`, dial, `dialled`).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::{AdmitRequest, System, SystemError, ask};
use crate::callback_queue::{CallbackQueueMsg, CampaignAction, CampaignError, ContactWork, Dispatch};
use crate::core::call::EndReport;
use crate::dialer::{DialOutcome, DialRequest, Dialer};
use crate::journal::AppendError;
use crate::model::{CallId, Campaign, CampaignId, CampaignRecord, CampaignStatus, ContactState, ContactStatus, mask_phone};
use crate::state::CAMPAIGNS_MAX;
use crate::system::callbacks::{OUTCOME_DIAL_FAILED, OUTCOME_DISPATCH_ABANDONED, OUTCOME_UNKNOWN_AFTER_RESTART};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CampaignApiError {
    #[error("not found")]
    NotFound,
    #[error("no line {0}")]
    UnknownLine(String),
    #[error("cannot {action} a {} campaign", status_name(*status))]
    WrongStatus { action: &'static str, status: CampaignStatus },
    #[error("campaign {0} is already running or paused on this line")]
    LineBusy(CampaignId),
    #[error("at most {0} campaigns are kept")]
    TooMany(usize),
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

pub fn status_name(status: CampaignStatus) -> &'static str {
    match status {
        CampaignStatus::Draft => "draft",
        CampaignStatus::Running => "running",
        CampaignStatus::Paused => "paused",
        CampaignStatus::Completed => "completed",
        CampaignStatus::Cancelled => "cancelled",
    }
}

impl From<SystemError> for CampaignApiError {
    fn from(error: SystemError) -> Self {
        match error {
            SystemError::NotFound => CampaignApiError::NotFound,
            other => CampaignApiError::Unavailable(other.to_string()),
        }
    }
}

impl From<CampaignError> for CampaignApiError {
    fn from(error: CampaignError) -> Self {
        match error {
            CampaignError::NotFound(_) => CampaignApiError::NotFound,
            CampaignError::WrongStatus { action, status } => CampaignApiError::WrongStatus { action, status },
            CampaignError::LineBusy(other) => CampaignApiError::LineBusy(other),
            CampaignError::Journal(AppendError::CampaignsFull) => CampaignApiError::TooMany(CAMPAIGNS_MAX),
            other => CampaignApiError::Unavailable(other.to_string()),
        }
    }
}

impl System {
    /// Creates a draft campaign on its line (the id is assigned here).
    pub async fn create_campaign(&self, mut record: CampaignRecord) -> Result<Campaign, CampaignApiError> {
        let queue = self.context.directory.read().callback_queues.get(&record.line_id).cloned();
        let queue = queue.ok_or_else(|| CampaignApiError::UnknownLine(record.line_id.to_string()))?;
        record.id = CampaignId(self.next_campaign_number.fetch_add(1, Ordering::SeqCst));
        record.created_at_ms = self.now_ms();
        match ask(&queue, |reply| CallbackQueueMsg::CreateCampaign { record, reply }, self.context.settings.journal_timeout).await {
            Ok(result) => result.map_err(CampaignApiError::from),
            Err(_) => Err(CampaignApiError::Unavailable("the line's queue is restarting; retry".into())),
        }
    }

    /// start, pause, resume or cancel. Answers the campaign as journaled afterwards.
    pub async fn control_campaign(&self, id: CampaignId, action: CampaignAction) -> Result<Campaign, CampaignApiError> {
        let campaign = self.get_campaign(id).await.map_err(CampaignApiError::from)?;
        let queue =
            self.context.directory.read().callback_queues.get(&campaign.record.line_id).cloned().ok_or(CampaignApiError::NotFound)?;
        let answer =
            ask(&queue, |reply| CallbackQueueMsg::ControlCampaign { id, action, reply }, self.context.settings.journal_timeout).await;
        match answer {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => return Err(CampaignApiError::Unavailable("the line's queue is restarting; retry".into())),
        }
        self.get_campaign(id).await.map_err(|e| CampaignApiError::Unavailable(e.to_string()))
    }

    pub async fn get_campaign(&self, id: CampaignId) -> Result<Campaign, SystemError> {
        self.read_durable(move |durable| durable.campaigns.get(&id).cloned())
            .await
            .map_err(SystemError::Unavailable)?
            .ok_or(SystemError::NotFound)
    }

    /// Returns whether the contact left `pending`.
    pub(super) async fn dispatch_contact(&self, dialer: &dyn Dialer, contact: &ContactWork, dispatch: &Dispatch) -> bool {
        let request = AdmitRequest {
            line_id: Some(contact.line_id.clone()),
            to: Some(contact.phone.clone()),
            from: Some(contact.line_id.to_string()),
            campaign: Some((contact.campaign, contact.index)),
            ..AdmitRequest::outbound(contact.tenant_id.clone())
        };
        let Ok(admitted) = self.admit_internal(request).await else {
            return false;
        };
        let call = admitted.call.id;
        let calling = ContactState { status: ContactStatus::Calling, call_id: Some(call), failure_reason: None };
        // Durably calling (and counted against the lead's daily cap) before the dial: at most once.
        if self.update_contact(contact, &[ContactStatus::Pending], calling, Some(contact.day)).await.is_err() {
            let _ = self.end_call(call, EndReport::outcome(OUTCOME_DISPATCH_ABANDONED)).await;
            return false;
        }
        let request = DialRequest {
            to: contact.phone.clone(),
            line_id: contact.line_id.to_string(),
            tenant_id: contact.tenant_id.to_string(),
            agent_id: dispatch.agent_id.clone(),
            call_id: call.to_string(),
            is_auto_callback: false,
            original_missed_call_id: None,
        };
        tracing::info!(campaign_id = %contact.campaign, contact = contact.index, call_id = %call, to = %mask_phone(&contact.phone), "dialling a campaign contact");
        let calling_only = &[ContactStatus::Calling];
        match dialer.dial(request).await {
            DialOutcome::Accepted => {
                let dialled = ContactState { status: ContactStatus::Dialled, call_id: Some(call), failure_reason: None };
                let _ = self.update_contact(contact, calling_only, dialled, None).await;
                true
            }
            DialOutcome::RateLimited { retry_after_s } => {
                let cooldown_ms =
                    retry_after_s.map_or(self.context.settings.arbitration.provider_cooldown_ms_default, |s| s.saturating_mul(1000));
                let _ = self.provider_rejected(call, cooldown_ms).await;
                let back = ContactState { status: ContactStatus::Pending, call_id: None, failure_reason: None };
                let _ = self.update_contact(contact, calling_only, back, None).await;
                false
            }
            DialOutcome::Failed(reason) => {
                let _ = self.end_call(call, EndReport::outcome(OUTCOME_DIAL_FAILED)).await;
                let failed = ContactState { status: ContactStatus::Failed, call_id: Some(call), failure_reason: Some(reason) };
                let _ = self.update_contact(contact, calling_only, failed, None).await;
                true
            }
        }
    }

    async fn update_contact(
        &self,
        contact: &ContactWork,
        from: &'static [ContactStatus],
        state: ContactState,
        day: Option<u32>,
    ) -> Result<(), CampaignError> {
        let queue = self
            .context
            .directory
            .read()
            .callback_queues
            .get(&contact.line_id)
            .cloned()
            .ok_or(CampaignError::NotFound(contact.campaign))?;
        let (id, index) = (contact.campaign, contact.index);
        let update = |reply| CallbackQueueMsg::ContactUpdate { id, index, from, state, day, reply };
        match ask(&queue, update, self.context.settings.journal_timeout).await {
            Ok(result) => result,
            Err(_) => Err(CampaignError::Journal(crate::journal::AppendError::Unknown)),
        }
    }

    /// After a restart: a contact found `calling` (its dial may or may not have gone out) fails
    /// `unknown_after_restart` and its call ends. Returns the campaign calls still wanted (those
    /// of dialled contacts); any other live campaign call is an orphan of a crash.
    pub(super) async fn settle_contacts_after_restart(&self) -> BTreeSet<CallId> {
        let campaigns =
            self.inspect(|durable| durable.campaigns.values().filter(|c| c.status.is_open()).cloned().collect::<Vec<_>>()).await;
        let mut wanted = BTreeSet::new();
        for campaign in campaigns.unwrap_or_default() {
            for (index, state) in campaign.contacts.iter().enumerate() {
                let Some(call) = state.call_id else { continue };
                match state.status {
                    ContactStatus::Dialled => {
                        wanted.insert(call);
                    }
                    ContactStatus::Calling => {
                        let work = ContactWork {
                            campaign: campaign.record.id,
                            index: index as u32,
                            tenant_id: campaign.record.tenant_id.clone(),
                            line_id: campaign.record.line_id.clone(),
                            phone: campaign.record.contacts[index].phone.clone(),
                            day: 0,
                        };
                        let failed = ContactState {
                            status: ContactStatus::Failed,
                            call_id: Some(call),
                            failure_reason: Some(OUTCOME_UNKNOWN_AFTER_RESTART.into()),
                        };
                        if self.update_contact(&work, &[ContactStatus::Calling], failed, None).await.is_ok() {
                            let _ = self.end_call(call, EndReport::outcome(OUTCOME_UNKNOWN_AFTER_RESTART)).await;
                        }
                    }
                    _ => {}
                }
            }
        }
        wanted
    }
}
