//! `/v1/platform`: every provider pool — capacity (configured and learned), reserved headroom,
//! who is active and waiting by class, what is sold on it — and live changes to pools.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use switchboard_actors::system::{PlatformSummary, PoolSummary};

use super::AppStateRef;
use super::calls::system_problem;
use super::extract::JsonBody;
use super::problem::Problem;
use super::validate::{self, rfc3339};
use crate::config::CAPACITY_MAX;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatePlatform {
    capacity: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatePool {
    #[serde(default, deserialize_with = "super::extract::not_null")]
    capacity: Option<u32>,
    /// Class → headroom reserved for it and the classes above it. Replaces the whole map.
    #[serde(default, deserialize_with = "super::extract::not_null")]
    reserved: Option<BTreeMap<String, u32>>,
}

fn ratio(numerator: f64, denominator: f64, scale: f64) -> f64 {
    if denominator == 0.0 { 0.0 } else { (numerator / denominator * scale).round() / scale }
}

fn pool_json(state: &AppStateRef, name: &str, pool: &PoolSummary, now_ms: u64) -> Value {
    let classes = &state.config.arbitration.classes;
    let by_class = |counts: &[u32]| -> Map<String, Value> { classes.iter().zip(counts).map(|(c, n)| (c.clone(), json!(n))).collect() };
    let view = &pool.view;
    let active = view.held.len() as u32;
    let waits: Map<String, Value> = pool
        .record
        .waits
        .iter()
        .map(|(class, w)| {
            (class.clone(), json!({"granted": w.granted, "timed_out": w.timed_out, "cancelled": w.cancelled, "cooldown": w.cooldown}))
        })
        .collect();
    let cooling = view.cooldown_until_ms > now_ms;
    json!({
        "object": "pool",
        "name": name,
        "capacity": view.limits.capacity,
        "learned_capacity": view.learned_capacity,
        "effective_capacity": view.effective_capacity,
        "active": active,
        "available": view.effective_capacity.saturating_sub(active),
        "active_by_class": by_class(&view.active_by_class),
        "reserved": pool.reserved,
        "waiting": view.waiting_by_class.iter().sum::<u32>(),
        "waiting_by_class": by_class(&view.waiting_by_class),
        "in_cooldown": cooling,
        "cooldown_until": cooling.then(|| rfc3339(view.cooldown_until_ms)),
        "provider_rejections": pool.record.provider_rejections,
        "waits": waits,
        "sold_limits": pool.sold_limits,
        "oversubscription_ratio": ratio(pool.sold_limits as f64, f64::from(view.limits.capacity), 100.0),
        "utilization": ratio(f64::from(active), f64::from(view.effective_capacity), 1000.0),
        "price_cents_per_1000_characters": state.config.pools.get(name).map(|p| p.price_cents_per_1000_characters),
    })
}

fn platform_json(state: &AppStateRef, summary: &PlatformSummary, now_ms: u64) -> Value {
    let pools: Vec<Value> = summary.pools.iter().map(|(name, pool)| pool_json(state, name, pool, now_ms)).collect();
    // The top-level figures describe the default pool, as they did when there was only one.
    let default = &summary.pools[&summary.default_pool].view;
    let (capacity, active) = (default.limits.capacity, default.held.len() as u32);
    json!({
        "object": "platform",
        "default_pool": summary.default_pool,
        "capacity": capacity,
        "active": active,
        "available": default.effective_capacity.saturating_sub(active),
        "sold_limits_total": summary.sold_limits_total,
        "oversubscription_ratio": ratio(summary.sold_limits_total as f64, f64::from(capacity), 100.0),
        "utilization": ratio(f64::from(active), f64::from(default.effective_capacity), 1000.0),
        "pools": pools,
    })
}

pub async fn show(State(state): State<AppStateRef>) -> Result<Response, Problem> {
    let system = state.system()?;
    let summary = system.platform().await.map_err(|e| system_problem(e, "platform", ""))?;
    Ok(axum::Json(platform_json(&state, &summary, system.now_ms())).into_response())
}

/// `PATCH /v1/platform`: the default pool's capacity.
pub async fn update(State(state): State<AppStateRef>, JsonBody(body): JsonBody<UpdatePlatform>) -> Result<Response, Problem> {
    validate::range("capacity", body.capacity, 1, CAPACITY_MAX)?;
    let system = state.system()?;
    system.set_platform_capacity(body.capacity).await.map_err(|e| system_problem(e, "platform", ""))?;
    show(State(state)).await
}

/// `PATCH /v1/platform/pools/{name}`: capacity and/or reservations, live. Lowering capacity
/// below the active count ends no call; the pool admits nothing until it is back under.
pub async fn update_pool(
    State(state): State<AppStateRef>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UpdatePool>,
) -> Result<Response, Problem> {
    if let Some(capacity) = body.capacity {
        validate::range("capacity", capacity, 1, CAPACITY_MAX)?;
    }
    if let Some(reserved) = &body.reserved {
        let classes = &state.config.arbitration.classes;
        for (class, headroom) in reserved {
            if !classes.contains(class) {
                return Err(Problem::invalid(
                    format!("reserved.{class}"),
                    format!("unknown class; configured classes are {}", classes.join(", ")),
                ));
            }
            validate::range(&format!("reserved.{class}"), *headroom, 0, CAPACITY_MAX)?;
        }
    }
    if body.capacity.is_none() && body.reserved.is_none() {
        return Err(Problem::invalid("capacity", "send capacity, reserved, or both"));
    }
    let system = state.system()?;
    system.configure_pool(&name, body.capacity, body.reserved).await.map_err(|e| system_problem(e, "pool", &name))?;
    let summary = system.platform().await.map_err(|e| system_problem(e, "platform", ""))?;
    let pool = summary.pools.get(&name).ok_or_else(|| Problem::not_found("pool", &name))?;
    Ok(axum::Json(pool_json(&state, &name, pool, system.now_ms())).into_response())
}
