//! `/v1/tenants` and `/v1/lines`: the platform's customers and their phone lines.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_actors::model::{LineRecord, OnBusy, TenantRecord};
use switchboard_actors::phone_line::LineView;
use switchboard_actors::supervisor::CreateError;
use switchboard_actors::tenant::{TenantPatch, TenantView};

use super::AppStateRef;
use super::calls::system_problem;
use super::extract::JsonBody;
use super::problem::Problem;
use super::validate::{self, rfc3339};
use crate::config::{CHANNELS_MAX, CONCURRENT_LIMIT_MAX};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    id: String,
    #[serde(default)]
    name: Option<String>,
    plan: String,
    #[serde(default)]
    concurrent_limit_override: Option<u32>,
    #[serde(default)]
    prepaid: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    #[serde(default, deserialize_with = "super::extract::nullable")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "super::extract::not_null")]
    plan: Option<String>,
    #[serde(default, deserialize_with = "super::extract::nullable")]
    concurrent_limit_override: Option<Option<u32>>,
    #[serde(default, deserialize_with = "super::extract::not_null")]
    prepaid: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLine {
    id: String,
    tenant_id: String,
    #[serde(default)]
    channels: Option<u32>,
    /// `track` (default) or `callback`: turn inbound callers away busy and call them back.
    #[serde(default)]
    on_busy: OnBusy,
    /// The agent that answers the line and calls its missed callers back.
    #[serde(default)]
    agent_id: Option<String>,
}

fn check_plan(state: &AppStateRef, plan: &str) -> Result<(), Problem> {
    if state.config.plans.limits.contains_key(plan) {
        return Ok(());
    }
    let known: Vec<&str> = state.config.plans.limits.keys().map(String::as_str).collect();
    Err(Problem::invalid("plan", format!("unknown plan {plan:?}; configured plans are {}", known.join(", "))))
}

fn check_limit_override(limit: Option<u32>) -> Result<(), Problem> {
    match limit {
        Some(limit) => validate::range("concurrent_limit_override", limit, 1, CONCURRENT_LIMIT_MAX),
        None => Ok(()),
    }
}

pub fn tenant_json(view: &TenantView) -> Value {
    let record = &view.record;
    let addons: serde_json::Map<String, Value> =
        record.addons.iter().map(|(addon_type, addon)| (addon_type.clone(), super::features::addon_json(addon_type, addon))).collect();
    json!({
        "object": "tenant",
        "id": record.id,
        "name": record.name,
        "plan": record.plan,
        "class": view.class,
        "concurrent_limit_override": record.concurrent_limit_override,
        "concurrent_limit": view.limit,
        "active_calls": view.active.len(),
        "prepaid": record.prepaid,
        "credits": view.balance,
        "flags": record.flags,
        "addons": addons,
        "created_at": rfc3339(record.created_at_ms),
    })
}

fn line_json(view: &LineView) -> Value {
    let record = &view.record;
    json!({
        "object": "line",
        "id": record.id,
        "tenant_id": record.tenant_id,
        "channels": record.channels,
        "on_busy": record.on_busy,
        "agent_id": record.agent_id,
        "active_calls": view.active.len(),
        "created_at": rfc3339(record.created_at_ms),
    })
}

fn create_problem(error: CreateError, what: &str) -> Problem {
    match error {
        CreateError::Exists => {
            Problem::new(StatusCode::CONFLICT, "ALREADY_EXISTS", format!("a {what} with this id exists")).with_field("id")
        }
        CreateError::UnknownTenant(id) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "UNKNOWN_TENANT", format!("no tenant with id {id}")).with_field("tenant_id")
        }
        CreateError::TooMany(max) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "LIMIT_EXCEEDED", format!("at most {max} exist at once")).with_field("id")
        }
        CreateError::Journal(error) => Problem::unavailable(error.to_string()),
        CreateError::Spawn(why) => Problem::unavailable(why),
    }
}

pub async fn create(State(state): State<AppStateRef>, JsonBody(body): JsonBody<CreateTenant>) -> Result<Response, Problem> {
    validate::id("id", &body.id)?;
    if let Some(name) = &body.name {
        validate::text("name", name, 200)?;
    }
    check_plan(&state, &body.plan)?;
    check_limit_override(body.concurrent_limit_override)?;
    let system = state.system()?;
    let now_ms = system.now_ms();
    let record = TenantRecord {
        name: body.name,
        prepaid: body.prepaid,
        ..TenantRecord::new(body.id.clone(), body.plan, body.concurrent_limit_override, now_ms)
    };
    system.create_tenant(record).await.map_err(|e| create_problem(e, "tenant"))?;
    let view = system.get_tenant(&body.id).await.map_err(|e| system_problem(e, "tenant", &body.id))?;
    Ok((StatusCode::CREATED, axum::Json(tenant_json(&view))).into_response())
}

pub async fn show(State(state): State<AppStateRef>, Path(id): Path<String>) -> Result<Response, Problem> {
    let view = state.system()?.get_tenant(&id).await.map_err(|e| system_problem(e, "tenant", &id))?;
    Ok(axum::Json(tenant_json(&view)).into_response())
}

pub async fn update(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateTenant>,
) -> Result<Response, Problem> {
    if let Some(Some(name)) = &body.name {
        validate::text("name", name, 200)?;
    }
    if let Some(plan) = &body.plan {
        check_plan(&state, plan)?;
    }
    check_limit_override(body.concurrent_limit_override.flatten())?;
    let patch = TenantPatch {
        name: body.name,
        plan: body.plan,
        concurrent_limit_override: body.concurrent_limit_override,
        prepaid: body.prepaid,
        ..TenantPatch::default()
    };
    let view = state.system()?.update_tenant(&id, patch).await.map_err(|e| super::features::update_problem(e, &id))?;
    Ok(axum::Json(tenant_json(&view)).into_response())
}

pub async fn create_line(State(state): State<AppStateRef>, JsonBody(body): JsonBody<CreateLine>) -> Result<Response, Problem> {
    validate::e164("id", &body.id)?;
    validate::id("tenant_id", &body.tenant_id)?;
    let channels = body.channels.unwrap_or(state.config.lines.channels_default);
    validate::range("channels", channels, 1, CHANNELS_MAX)?;
    let system = state.system()?;
    let now_ms = system.now_ms();
    if let Some(agent_id) = &body.agent_id {
        validate::id("agent_id", agent_id)?;
    }
    let record =
        LineRecord { on_busy: body.on_busy, agent_id: body.agent_id, ..LineRecord::new(body.id.clone(), body.tenant_id, channels, now_ms) };
    system.create_line(record).await.map_err(|e| create_problem(e, "line"))?;
    let view = system.get_line(&body.id).await.map_err(|e| system_problem(e, "line", &body.id))?;
    Ok((StatusCode::CREATED, axum::Json(line_json(&view))).into_response())
}

pub async fn show_line(State(state): State<AppStateRef>, Path(id): Path<String>) -> Result<Response, Problem> {
    let view = state.system()?.get_line(&id).await.map_err(|e| system_problem(e, "line", &id))?;
    Ok(axum::Json(line_json(&view)).into_response())
}
