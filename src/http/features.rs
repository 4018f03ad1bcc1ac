//! Premium voices (seed 004): global feature flags, per-tenant overrides, add-ons, the
//! `canUseFeature` answer, and monthly usage with its alert levels.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_actors::core::features::usage_alert;
use switchboard_actors::model::{Addon, AddonStatus, BillingStatus, TenantRecord, month_of_ms};
use switchboard_actors::state::UsageTotals;
use switchboard_actors::supervisor::CreateError;
use switchboard_actors::system::TenantUpdateError;
use switchboard_actors::tenant::TenantPatch;

use super::AppStateRef;
use super::calls::system_problem;
use super::extract::{JsonBody, QueryParams};
use super::problem::Problem;
use super::validate::{self, rfc3339};

/// A monthly character limit beyond this is a typo.
const MONTHLY_CHARACTERS_MAX: u64 = 1_000_000_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetFlag {
    enabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetAddon {
    status: AddonStatus,
    billing_status: BillingStatus,
    #[serde(default)]
    trial_ends_at: Option<String>,
    #[serde(default)]
    monthly_character_limit: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    month: Option<String>,
}

pub fn update_problem(error: TenantUpdateError, id: &str) -> Problem {
    match error {
        TenantUpdateError::NotFound => Problem::not_found("tenant", id),
        TenantUpdateError::TooMany { what, max } => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "LIMIT_EXCEEDED", format!("a tenant has at most {max} {what}"))
                .with_field("name")
        }
        TenantUpdateError::InsufficientBalance { balance, amount } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INSUFFICIENT_BALANCE",
            format!("the balance is {balance}; removing {amount} would take it below zero"),
        )
        .with_field("amount")
        .with("balance", balance),
        TenantUpdateError::Unavailable(why) => Problem::unavailable(why),
    }
}

/// `PUT /v1/flags/{name}`: creates or changes a global flag.
pub async fn put_flag(
    State(state): State<AppStateRef>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<SetFlag>,
) -> Result<Response, Problem> {
    validate::slug("name", &name)?;
    let system = state.system()?;
    system.set_flag(name.clone(), body.enabled).await.map_err(|error| match error {
        CreateError::TooMany(max) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "LIMIT_EXCEEDED", format!("at most {max} flags exist at once"))
                .with_field("name")
        }
        other => Problem::unavailable(other.to_string()),
    })?;
    Ok(axum::Json(json!({"object": "flag", "name": name, "enabled": body.enabled})).into_response())
}

pub async fn list_flags(State(state): State<AppStateRef>) -> Result<Response, Problem> {
    let flags = state.system()?.flags();
    let data: Vec<Value> = flags.iter().map(|(name, enabled)| json!({"object": "flag", "name": name, "enabled": enabled})).collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

/// `PUT /v1/tenants/{id}/flags/{name}`: a tenant override; it beats the global flag.
pub async fn put_tenant_flag(
    State(state): State<AppStateRef>,
    Path((id, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<SetFlag>,
) -> Result<Response, Problem> {
    validate::slug("name", &name)?;
    let system = state.system()?;
    if !system.flags().contains_key(&name) {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
            format!("no flag named {name}; create it with PUT /v1/flags/{name}"),
        )
        .with_field("name"));
    }
    let patch = TenantPatch { flag: Some((name, Some(body.enabled))), ..TenantPatch::default() };
    let view = system.update_tenant(&id, patch).await.map_err(|e| update_problem(e, &id))?;
    Ok(axum::Json(super::tenants::tenant_json(&view)).into_response())
}

/// `DELETE /v1/tenants/{id}/flags/{name}`: drops the override; the global flag applies again.
pub async fn delete_tenant_flag(State(state): State<AppStateRef>, Path((id, name)): Path<(String, String)>) -> Result<Response, Problem> {
    validate::slug("name", &name)?;
    let patch = TenantPatch { flag: Some((name, None)), ..TenantPatch::default() };
    let view = state.system()?.update_tenant(&id, patch).await.map_err(|e| update_problem(e, &id))?;
    Ok(axum::Json(super::tenants::tenant_json(&view)).into_response())
}

/// `PUT /v1/tenants/{id}/addons/{type}`.
pub async fn put_addon(
    State(state): State<AppStateRef>,
    Path((id, addon_type)): Path<(String, String)>,
    JsonBody(body): JsonBody<SetAddon>,
) -> Result<Response, Problem> {
    validate::slug("type", &addon_type)?;
    let trial_ends_at_ms = body.trial_ends_at.as_deref().map(|t| validate::parse_rfc3339("trial_ends_at", t)).transpose()?;
    if let Some(limit) = body.monthly_character_limit {
        validate::range("monthly_character_limit", limit, 0, MONTHLY_CHARACTERS_MAX)?;
    }
    let system = state.system()?;
    let addon = Addon {
        status: body.status,
        billing_status: body.billing_status,
        trial_ends_at_ms,
        monthly_character_limit: body.monthly_character_limit,
        updated_at_ms: system.now_ms(),
    };
    let patch = TenantPatch { addon: Some((addon_type.clone(), addon)), ..TenantPatch::default() };
    let view = system.update_tenant(&id, patch).await.map_err(|e| update_problem(e, &id))?;
    Ok(axum::Json(addon_json(&addon_type, &view.record.addons[&addon_type])).into_response())
}

pub fn addon_json(addon_type: &str, addon: &Addon) -> Value {
    json!({
        "object": "addon",
        "type": addon_type,
        "status": addon.status,
        "billing_status": addon.billing_status,
        "trial_ends_at": addon.trial_ends_at_ms.map(rfc3339),
        "monthly_character_limit": addon.monthly_character_limit,
        "updated_at": rfc3339(addon.updated_at_ms),
    })
}

/// `GET /v1/tenants/{id}/features/{name}`: seed 004's `canUseFeature`.
pub async fn feature(State(state): State<AppStateRef>, Path((id, name)): Path<(String, String)>) -> Result<Response, Problem> {
    validate::slug("name", &name)?;
    let decision = state.system()?.feature(&id, &name).await.map_err(|e| system_problem(e, "tenant", &id))?;
    Ok(axum::Json(json!({
        "object": "feature",
        "tenant_id": id,
        "name": name,
        "allowed": decision.allowed,
        "reason": decision.reason,
        "requires_upgrade": decision.requires_upgrade,
    }))
    .into_response())
}

/// `YYYY-MM` → `yyyymm`.
fn parse_month(raw: &str) -> Result<u32, Problem> {
    let bad = || Problem::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", "month must be YYYY-MM").with_field("month");
    let (year, month) = raw.split_once('-').ok_or_else(bad)?;
    if year.len() != 4 || month.len() != 2 || !year.bytes().chain(month.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (year, month): (u32, u32) = (year.parse().map_err(|_| bad())?, month.parse().map_err(|_| bad())?);
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) {
        return Err(bad());
    }
    Ok(year * 100 + month)
}

fn totals_json(totals: &UsageTotals) -> Value {
    json!({"calls": totals.calls, "seconds": totals.seconds, "characters": totals.characters, "cost_cents": totals.cost_cents})
}

/// `GET /v1/tenants/{id}/usage?month=YYYY-MM` (default: this month, by the service clock).
pub async fn usage(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<UsageQuery>,
) -> Result<Response, Problem> {
    let system = state.system()?;
    let month = match &query.month {
        Some(raw) => parse_month(raw)?,
        None => month_of_ms(system.now_ms()),
    };
    let (pools, record) = system.usage(&id, month).await.map_err(|e| system_problem(e, "tenant", &id))?;
    let mut total = UsageTotals::default();
    for t in pools.values() {
        total.calls += t.calls;
        total.seconds += t.seconds;
        total.characters += t.characters;
        total.cost_cents += t.cost_cents;
    }
    let arbitration = &system.settings().arbitration;
    let premium_characters = arbitration.premium_pool.as_ref().and_then(|p| pools.get(p.as_str())).map_or(0, |t| t.characters);
    let addons = addon_usage(&record, &arbitration.premium_feature, premium_characters);
    let by_pool: serde_json::Map<String, Value> = pools.iter().map(|(pool, t)| (pool.clone(), totals_json(t))).collect();
    Ok(axum::Json(json!({
        "object": "usage",
        "tenant_id": id,
        "month": format!("{:04}-{:02}", month / 100, month % 100),
        "pools": by_pool,
        "total": totals_json(&total),
        "addons": addons,
    }))
    .into_response())
}

/// The premium add-on's monthly character limit against the premium pool's characters.
fn addon_usage(record: &TenantRecord, premium_feature: &str, premium_characters: u64) -> Vec<Value> {
    let Some(limit) = record.addons.get(premium_feature).and_then(|a| a.monthly_character_limit) else {
        return Vec::new();
    };
    let percent = if limit == 0 { 100.0 } else { (premium_characters as f64 / limit as f64 * 1000.0).round() / 10.0 };
    vec![json!({
        "type": premium_feature,
        "monthly_character_limit": limit,
        "characters_used": premium_characters,
        "remaining": limit.saturating_sub(premium_characters),
        "percent_used": percent,
        "alert": usage_alert(premium_characters, limit).as_str(),
    })]
}
