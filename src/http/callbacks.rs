//! Missed calls and their callbacks (seed 002 Phase 4): report a missed call, list and count the
//! queue, retry a failed callback, cancel a pending one.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_actors::model::{CallbackEntry, CallbackId, CallbackStatus, MissedAttempt, MissedReason};
use switchboard_actors::system::{CallbackApiError, CallbackFilter, MissedError};

use super::AppStateRef;
use super::calls::{PROVIDER_CALL_ID_CHARS_MAX, system_problem};
use super::extract::{JsonBody, QueryParams};
use super::problem::Problem;
use super::validate::{self, rfc3339};

const LIST_LIMIT_DEFAULT: usize = 50;
const LIST_LIMIT_MAX: usize = 200;
/// An offset past this is a typo: the queue holds far fewer entries.
const LIST_OFFSET_MAX: usize = 1_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportMissed {
    from: String,
    #[serde(default)]
    reason: Option<MissedReason>,
    /// The provider's id of the missed call: a report retried for it is not counted twice.
    #[serde(default)]
    provider_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListCallbacks {
    status: Option<String>,
    line_id: Option<String>,
    tenant_id: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

pub fn entry_json(entry: &CallbackEntry) -> Value {
    json!({
        "object": "callback",
        "id": entry.id.to_string(),
        "line_id": entry.line_id,
        "tenant_id": entry.tenant_id,
        "caller": entry.caller,
        "reason": entry.reason,
        "priority": entry.priority,
        "status": entry.status,
        "missed_at": rfc3339(entry.missed_at_ms),
        "last_missed_at": rfc3339(entry.last_missed_at_ms),
        "missed_count": entry.missed_count,
        "call_id": entry.call_id.map(|c| c.to_string()),
        "dialed": entry.dialed,
        "failure_reason": entry.failure_reason,
        "updated_at": rfc3339(entry.updated_at_ms),
    })
}

fn missed_problem(error: MissedError, line_id: &str) -> Problem {
    match error {
        MissedError::UnknownLine => Problem::not_found("line", line_id),
        MissedError::QueueFull { open } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "CALLBACK_QUEUE_FULL",
            format!("the line's callback queue is full ({open} open entries); the missed call was not queued"),
        )
        .retry_after(60)
        .with("current_active", open as u64)
        .with("limit", open as u64),
        MissedError::Unavailable(why) => Problem::unavailable(why),
    }
}

/// The answer to an inbound call a full callback line turned away (200: the webhook worked).
pub fn rejected_busy(missed: Result<(CallbackEntry, bool), MissedError>) -> Result<Response, Problem> {
    let body = match missed {
        Ok((entry, _)) => json!({
            "object": "missed_call",
            "action": "reject_busy",
            "missed_call_id": entry.id.to_string(),
            "line_id": entry.line_id,
            "missed_count": entry.missed_count,
            "callback": entry_json(&entry),
        }),
        Err(MissedError::QueueFull { open }) => json!({
            "object": "missed_call",
            "action": "reject_busy",
            "missed_call_id": null,
            "callback_refused": "CALLBACK_QUEUE_FULL",
            "open_entries": open,
        }),
        Err(error) => return Err(missed_problem(error, "")),
    };
    Ok(axum::Json(body).into_response())
}

/// `POST /v1/lines/{id}/missed-calls` `{"from", "reason"?, "provider_call_id"?}`: 201 with a new
/// entry, or 200 with the caller's open entry, which counts one more missed attempt unless it
/// already counted this provider call.
pub async fn report(
    State(state): State<AppStateRef>,
    Path(line_id): Path<String>,
    JsonBody(body): JsonBody<ReportMissed>,
) -> Result<Response, Problem> {
    validate::e164("from", &body.from)?;
    if let Some(provider_call_id) = &body.provider_call_id {
        validate::text("provider_call_id", provider_call_id, PROVIDER_CALL_ID_CHARS_MAX)?;
    }
    let reason = body.reason.unwrap_or(MissedReason::Busy);
    let attempt = body.provider_call_id.map(MissedAttempt::ProviderCall);
    let (entry, created) =
        state.system()?.record_missed(&line_id, body.from, reason, attempt).await.map_err(|e| missed_problem(e, &line_id))?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(entry_json(&entry))).into_response())
}

fn parse_status(raw: &str) -> Result<CallbackStatus, Problem> {
    CallbackStatus::ALL.into_iter().find(|s| s.as_str() == raw).ok_or_else(|| {
        let known: Vec<&str> = CallbackStatus::ALL.iter().map(|s| s.as_str()).collect();
        Problem::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", format!("status must be one of {}", known.join(", "))).with_field("status")
    })
}

fn parse_id(raw: &str) -> Result<CallbackId, Problem> {
    raw.parse().map_err(|_| Problem::not_found("callback", raw))
}

/// `GET /v1/callbacks?status=&line_id=&tenant_id=&limit=&offset=`, newest first, with `total`.
pub async fn list(State(state): State<AppStateRef>, QueryParams(query): QueryParams<ListCallbacks>) -> Result<Response, Problem> {
    let limit = query.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    let offset = query.offset.unwrap_or(0);
    let bad = |field: &str, why: String| Problem::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", why).with_field(field);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(bad("limit", format!("limit must be 1-{LIST_LIMIT_MAX}")));
    }
    if offset > LIST_OFFSET_MAX {
        return Err(bad("offset", format!("offset must be at most {LIST_OFFSET_MAX}")));
    }
    let status = query.status.as_deref().map(parse_status).transpose()?;
    let filter = CallbackFilter { status, line_id: query.line_id, tenant_id: query.tenant_id };
    let page = state.system()?.list_callbacks(filter, offset, limit).await.map_err(|e| system_problem(e, "callbacks", ""))?;
    Ok(axum::Json(json!({
        "object": "list",
        "data": page.entries.iter().map(entry_json).collect::<Vec<_>>(),
        "total": page.total,
        "limit": limit,
        "offset": offset,
    }))
    .into_response())
}

/// `GET /v1/callbacks/stats`: entries per status.
pub async fn stats(State(state): State<AppStateRef>) -> Result<Response, Problem> {
    let system = state.system()?;
    let counts = system.callback_stats().await.map_err(|e| system_problem(e, "callbacks", ""))?;
    let by_status: serde_json::Map<String, Value> = counts.iter().map(|(s, n)| (s.as_str().to_owned(), json!(n))).collect();
    Ok(axum::Json(json!({"object": "callback_stats", "by_status": by_status, "total": counts.values().sum::<usize>()})).into_response())
}

pub async fn show(State(state): State<AppStateRef>, Path(raw): Path<String>) -> Result<Response, Problem> {
    let id = parse_id(&raw)?;
    let entry = state.system()?.get_callback(id).await.map_err(|e| system_problem(e, "callback", &raw))?;
    Ok(axum::Json(entry_json(&entry)).into_response())
}

fn api_problem(error: CallbackApiError, raw: &str) -> Problem {
    match error {
        CallbackApiError::NotFound => Problem::not_found("callback", raw),
        CallbackApiError::WrongStatus { status, expected } => {
            Problem::new(StatusCode::CONFLICT, "CALLBACK_WRONG_STATUS", format!("the callback is {}, not {expected}", status.as_str()))
                .with("callback_status", status.as_str())
        }
        CallbackApiError::QueueFull { open } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "CALLBACK_QUEUE_FULL",
            format!("the line's callback queue is full ({open} open entries); retry when it has room"),
        )
        .retry_after(60),
        CallbackApiError::Unavailable(why) => Problem::unavailable(why),
    }
}

/// `POST /v1/callbacks/{id}/retry`: only a failed callback goes back to pending.
pub async fn retry(State(state): State<AppStateRef>, Path(raw): Path<String>) -> Result<Response, Problem> {
    let id = parse_id(&raw)?;
    let entry = state.system()?.retry_callback(id).await.map_err(|e| api_problem(e, &raw))?;
    Ok(axum::Json(entry_json(&entry)).into_response())
}

/// `DELETE /v1/callbacks/{id}`: only a pending or on-hold callback is cancelled.
pub async fn cancel(State(state): State<AppStateRef>, Path(raw): Path<String>) -> Result<Response, Problem> {
    let id = parse_id(&raw)?;
    let entry = state.system()?.cancel_callback(id).await.map_err(|e| api_problem(e, &raw))?;
    Ok(axum::Json(entry_json(&entry)).into_response())
}
