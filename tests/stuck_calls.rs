//! Stuck calls (seed 000 P0): the watchdog force-ends calls whose end webhook was lost.
//! A call with no heartbeat for `stale_after` and any call older than `max_duration` is ended
//! with outcome `reclaimed_stale`, its slots freed, and counted in a metric.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchboard::client::Client;

async fn status(client: &mut Client, id: &str) -> Value {
    get_json(client, &format!("/v1/calls/{id}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_reclaims_silent_and_overlong_calls_and_spares_live_ones() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |config| {
        config.calls.stale_after_ms = 1_000;
        config.calls.max_duration_ms = 2_500;
        config.calls.watchdog_interval_ms = 50;
    })
    .await;
    let mut client = server.client().await;
    create_tenant(&mut client, "acme", "PRO", None).await;
    let silent =
        admit(&mut client, json!({"tenant_id": "acme", "direction": "outbound"})).await.json()["call_id"].as_str().unwrap().to_owned();
    let chatty =
        admit(&mut client, json!({"tenant_id": "acme", "direction": "outbound"})).await.json()["call_id"].as_str().unwrap().to_owned();

    // Heartbeat the chatty call every 200 ms; poll until the silent one is reclaimed (bounded).
    let mut silent_reclaimed_after = None;
    for tick in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let beat = client.post(&format!("/v1/calls/{chatty}/heartbeat"), &json!({})).await.unwrap();
        if status(&mut client, &silent).await["status"] == "ended" {
            silent_reclaimed_after = Some(tick);
            break;
        }
        assert_eq!(beat.status, 200, "{}", beat.text());
    }
    assert!(silent_reclaimed_after.is_some(), "the silent call was never reclaimed");
    let reclaimed = status(&mut client, &silent).await;
    assert_eq!(reclaimed["outcome"], "reclaimed_stale");
    assert_eq!(status(&mut client, &chatty).await["status"], "active", "heartbeats keep a call alive");
    assert_eq!(get_json(&mut client, "/v1/tenants/acme").await["active_calls"], 1, "the reclaimed call's slot is free");

    // Heartbeats do not extend a call past max_duration.
    let mut chatty_status = Value::Null;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = client.post(&format!("/v1/calls/{chatty}/heartbeat"), &json!({})).await.unwrap();
        chatty_status = status(&mut client, &chatty).await;
        if chatty_status["status"] == "ended" {
            break;
        }
    }
    assert_eq!(chatty_status["outcome"], "reclaimed_stale", "{chatty_status}");
    assert_eq!(get_json(&mut client, "/v1/platform").await["active"], 0);
    let metrics = client.get("/metrics").await.unwrap().text();
    assert!(metrics.contains("switchboard_stuck_calls_reclaimed_total 2"), "{metrics}");
    // A late end webhook for a reclaimed call changes nothing.
    let late = end(&mut client, &silent).await;
    assert_eq!(late.status, 200);
    assert_eq!(late.json(), reclaimed);
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_went_stale_while_the_service_was_down_is_reclaimed_after_restart() {
    let dir = temp_dir();
    let fast_watchdog = |config: &mut switchboard::config::Config| {
        config.calls.stale_after_ms = 1_000;
        config.calls.watchdog_interval_ms = 50;
    };
    let slow_watchdog = |config: &mut switchboard::config::Config| {
        config.calls.stale_after_ms = 1_000;
        config.calls.watchdog_interval_ms = 60_000;
    };
    let server = start_in(dir.path(), slow_watchdog).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "acme", "PRO", None).await;
    let id = admit(&mut client, json!({"tenant_id": "acme", "direction": "outbound"})).await.json()["call_id"].as_str().unwrap().to_owned();
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let server = start_in(dir.path(), fast_watchdog).await;
    let mut client = server.client().await;
    let mut outcome = Value::Null;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let call = status(&mut client, &id).await;
        if call["status"] == "ended" {
            outcome = call["outcome"].clone();
            break;
        }
    }
    assert_eq!(outcome, "reclaimed_stale");
    server.stop().await;
}
