//! `/v1/campaigns`: outbound campaigns on a line (seed 002's campaign integration, seed 001's
//! per-lead daily cap). Contacts are called within a local calling window, at most
//! `concurrency` at once, through admission and the dialer; while a campaign runs, missed calls
//! on its line wait on hold until it completes, pauses or is cancelled.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_actors::callback_queue::CampaignAction;
use switchboard_actors::core::campaign::known_timezone;
use switchboard_actors::model::{Campaign, CampaignId, CampaignRecord, Contact, ContactStatus};
use switchboard_actors::system::{CampaignApiError, SystemError};

use super::AppStateRef;
use super::calls::system_problem;
use super::extract::{JsonBody, Obj};
use super::problem::Problem;
use super::validate::{self, rfc3339};

/// Contacts in one campaign; a longer list is refused.
pub const CAMPAIGN_CONTACTS_MAX: usize = 10_000;
const CONCURRENCY_MAX: u32 = 100;
const CALLS_PER_LEAD_PER_DAY_MAX: u32 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactBody {
    phone: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowBody {
    start: String,
    end: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaign {
    line_id: String,
    contacts: Vec<Obj<ContactBody>>,
    #[serde(default)]
    concurrency: Option<u32>,
    #[serde(default)]
    max_calls_per_lead_per_day: Option<u32>,
    #[serde(default)]
    window: Option<Obj<WindowBody>>,
}

/// `HH:MM` → minutes after midnight.
fn minutes(field: &str, raw: &str) -> Result<u16, Problem> {
    let bad = || Problem::invalid(field, "must be a local time HH:MM (00:00-24:00)");
    let (h, m) = raw.split_once(':').ok_or_else(bad)?;
    // Two ASCII digits each: `parse` alone would take "+1" for 1.
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn minutes_text(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

fn contact_status(status: ContactStatus) -> &'static str {
    match status {
        ContactStatus::Pending => "pending",
        ContactStatus::Calling => "calling",
        ContactStatus::Dialled => "dialled",
        ContactStatus::Completed => "completed",
        ContactStatus::Failed => "failed",
        ContactStatus::SkippedOutsideWindow => "skipped_outside_window",
        ContactStatus::SkippedDailyCap => "skipped_daily_cap",
    }
}

pub fn campaign_json(campaign: &Campaign) -> Value {
    let record = &campaign.record;
    let count = |pick: &dyn Fn(ContactStatus) -> bool| campaign.contacts.iter().filter(|c| pick(c.status)).count();
    let contacts: Vec<Value> = record
        .contacts
        .iter()
        .zip(&campaign.contacts)
        .map(|(contact, state)| {
            json!({
                "phone": contact.phone,
                "name": contact.name,
                "timezone": contact.timezone,
                "status": contact_status(state.status),
                "call_id": state.call_id.map(|c| c.to_string()),
                "failure_reason": state.failure_reason,
            })
        })
        .collect();
    json!({
        "object": "campaign",
        "id": record.id.to_string(),
        "tenant_id": record.tenant_id,
        "line_id": record.line_id,
        "status": switchboard_actors::system::campaign_status_name(campaign.status),
        "concurrency": record.concurrency,
        "max_calls_per_lead_per_day": record.max_calls_per_lead_per_day,
        "window": {"start": minutes_text(record.window_start_minute), "end": minutes_text(record.window_end_minute)},
        "progress": {
            "total": campaign.contacts.len(),
            "pending": count(&|s| s == ContactStatus::Pending),
            "dialled": count(&|s| matches!(s, ContactStatus::Calling | ContactStatus::Dialled)),
            "completed": count(&|s| s == ContactStatus::Completed),
            "failed": count(&|s| s == ContactStatus::Failed),
            "skipped_outside_window": count(&|s| s == ContactStatus::SkippedOutsideWindow),
            "skipped_daily_cap": count(&|s| s == ContactStatus::SkippedDailyCap),
        },
        "contacts": contacts,
        "created_at": rfc3339(record.created_at_ms),
        "updated_at": rfc3339(campaign.updated_at_ms),
    })
}

fn campaign_problem(error: CampaignApiError, id: &str) -> Problem {
    match error {
        CampaignApiError::NotFound => Problem::not_found("campaign", id),
        CampaignApiError::UnknownLine(line) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "UNKNOWN_LINE", format!("no line with id {line}")).with_field("line_id")
        }
        CampaignApiError::WrongStatus { .. } | CampaignApiError::LineBusy(_) => {
            Problem::new(StatusCode::CONFLICT, "CAMPAIGN_WRONG_STATUS", error.to_string())
        }
        CampaignApiError::TooMany(max) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "LIMIT_EXCEEDED", format!("at most {max} campaigns are kept"))
        }
        CampaignApiError::Unavailable(why) => Problem::unavailable(why),
    }
}

/// `POST /v1/campaigns`: a draft campaign on a line.
pub async fn create(State(state): State<AppStateRef>, JsonBody(body): JsonBody<CreateCampaign>) -> Result<Response, Problem> {
    validate::e164("line_id", &body.line_id)?;
    if body.contacts.is_empty() || body.contacts.len() > CAMPAIGN_CONTACTS_MAX {
        return Err(Problem::invalid("contacts", format!("must hold 1-{CAMPAIGN_CONTACTS_MAX} contacts")));
    }
    let mut contacts = Vec::with_capacity(body.contacts.len());
    for (n, Obj(contact)) in body.contacts.into_iter().enumerate() {
        validate::e164(&format!("contacts[{n}].phone"), &contact.phone)?;
        if let Some(name) = &contact.name {
            validate::text(&format!("contacts[{n}].name"), name, 200)?;
        }
        if let Some(zone) = contact.timezone.as_deref().filter(|z| !known_timezone(z)) {
            return Err(Problem::invalid(format!("contacts[{n}].timezone"), format!("{zone:?} is not an IANA time zone")));
        }
        contacts.push(Contact { phone: contact.phone, name: contact.name, timezone: contact.timezone });
    }
    let concurrency = body.concurrency.unwrap_or(2);
    validate::range("concurrency", concurrency, 1, CONCURRENCY_MAX)?;
    let per_day = body.max_calls_per_lead_per_day.unwrap_or(2);
    validate::range("max_calls_per_lead_per_day", per_day, 1, CALLS_PER_LEAD_PER_DAY_MAX)?;
    let (start, end) = match &body.window {
        Some(Obj(window)) => (minutes("window.start", &window.start)?, minutes("window.end", &window.end)?),
        None => (9 * 60, 21 * 60),
    };
    if start == end {
        return Err(Problem::invalid("window.end", "the window must not be empty"));
    }
    let system = state.system()?;
    let line = system.get_line(&body.line_id).await.map_err(|error| match error {
        // A line the body names, not the URL: 422 naming the field, as an admission does.
        SystemError::NotFound => campaign_problem(CampaignApiError::UnknownLine(body.line_id.clone()), ""),
        error => system_problem(error, "line", &body.line_id),
    })?;
    let record = CampaignRecord {
        id: CampaignId(0),
        tenant_id: line.record.tenant_id,
        line_id: body.line_id.into(),
        contacts,
        concurrency,
        max_calls_per_lead_per_day: per_day,
        window_start_minute: start,
        window_end_minute: end,
        created_at_ms: 0,
    };
    let campaign = system.create_campaign(record).await.map_err(|e| campaign_problem(e, ""))?;
    Ok((StatusCode::CREATED, axum::Json(campaign_json(&campaign))).into_response())
}

fn parse_id(raw: &str) -> Result<CampaignId, Problem> {
    raw.parse().map_err(|_| Problem::not_found("campaign", raw))
}

pub async fn show(State(state): State<AppStateRef>, Path(raw): Path<String>) -> Result<Response, Problem> {
    let id = parse_id(&raw)?;
    let campaign = state.system()?.get_campaign(id).await.map_err(|e| system_problem(e, "campaign", &raw))?;
    Ok(axum::Json(campaign_json(&campaign)).into_response())
}

/// `POST /v1/campaigns/{id}/start|pause|resume|cancel`.
pub async fn control(State(state): State<AppStateRef>, Path((raw, action)): Path<(String, String)>) -> Result<Response, Problem> {
    let id = parse_id(&raw)?;
    let action = match action.as_str() {
        "start" => CampaignAction::Start,
        "pause" => CampaignAction::Pause,
        "resume" => CampaignAction::Resume,
        "cancel" => CampaignAction::Cancel,
        _ => return Err(Problem::not_found("route", &format!("/v1/campaigns/{raw}/{action}"))),
    };
    let campaign = state.system()?.control_campaign(id, action).await.map_err(|e| campaign_problem(e, &raw))?;
    Ok(axum::Json(campaign_json(&campaign)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_are_two_digits_colon_two_digits() {
        assert_eq!(minutes("w", "09:30").unwrap(), 570);
        assert_eq!(minutes("w", "24:00").unwrap(), 1_440);
        for bad in ["+1:00", "09:+1", "9:30", "09:3", "24:01", "09:60", "-1:00", "0a:00", " 9:00", "09-30"] {
            assert!(minutes("w", bad).is_err(), "{bad}");
        }
    }
}
