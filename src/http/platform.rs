//! `/v1/platform`: the provider pool's capacity, what is sold on it, and live resizing.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppStateRef;
use super::calls::system_problem;
use super::extract::JsonBody;
use super::problem::Problem;
use super::validate;
use crate::config::CAPACITY_MAX;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatePlatform {
    capacity: u32,
}

pub async fn show(State(state): State<AppStateRef>) -> Result<Response, Problem> {
    let summary = state.system()?.platform().await.map_err(|e| system_problem(e, "platform", ""))?;
    let capacity = f64::from(summary.capacity);
    Ok(axum::Json(json!({
        "object": "platform",
        "capacity": summary.capacity,
        "active": summary.active,
        "available": summary.capacity.saturating_sub(summary.active),
        "sold_limits_total": summary.sold_limits_total,
        "oversubscription_ratio": (summary.sold_limits_total as f64 / capacity * 100.0).round() / 100.0,
        "utilization": (f64::from(summary.active) / capacity * 1000.0).round() / 1000.0,
    }))
    .into_response())
}

pub async fn update(State(state): State<AppStateRef>, JsonBody(body): JsonBody<UpdatePlatform>) -> Result<Response, Problem> {
    validate::range("capacity", body.capacity, 1, CAPACITY_MAX)?;
    let system = state.system()?;
    system.set_platform_capacity(body.capacity).await.map_err(|e| system_problem(e, "platform", ""))?;
    show(State(state)).await
}
