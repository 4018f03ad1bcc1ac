//! Supervision: a panicking actor is rebuilt from the journal and republished, during
//! concurrent admissions, without losing or leaking a slot.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use switchboard_actors::journal::Entity;
use switchboard_actors::model::CallId;
use switchboard_actors::system::System;

const TENANTS: [&str; 3] = ["t0", "t1", "t2"];
const LINES: [&str; 2] = ["+14155550110", "+14155550111"];
/// How long a rebuilt actor may take to be republished (the bound).
const RESPAWN_BOUND: Duration = Duration::from_millis(100);

/// Injected panics print one line, as in production without `RUST_BACKTRACE`: symbolising a
/// backtrace in a debug build takes ~100 ms and would be measured as respawn time.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
}

/// Panics `entity`'s actor and waits until a new generation is published; returns how long.
async fn crash_and_wait(system: &System, entity: Entity) -> Duration {
    let before = system.generation(&entity).expect("entity exists");
    let started = Instant::now();
    assert!(system.inject_crash(&entity), "crash delivered to {entity:?}");
    // Bounded poll: 1 ms steps, 2 s at most.
    for _ in 0..2000 {
        if system.generation(&entity).is_some_and(|g| g > before) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{entity:?} was not rebuilt within 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_actors_are_rebuilt_during_concurrent_admissions_without_losing_slots() {
    quiet_panics();
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    for tenant in TENANTS {
        create_tenant(&mut client, tenant, "PRO", Some(4)).await;
    }
    for line in LINES {
        create_line(&mut client, line, "t0", 2).await;
    }
    set_capacity(&mut client, 10).await;

    let stop = Arc::new(AtomicBool::new(false));
    let admitted = Arc::new(AtomicU64::new(0));
    let unavailable = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..8usize {
        let mut client = server.client().await;
        let (stop, admitted, unavailable) = (stop.clone(), admitted.clone(), unavailable.clone());
        workers.push(tokio::spawn(async move {
            let mut live: Vec<String> = Vec::new();
            for round in 0..10_000usize {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let tenant = TENANTS[(worker + round) % TENANTS.len()];
                let mut body = json!({"tenant_id": tenant, "direction": "outbound"});
                if tenant == "t0" && round % 2 == 0 {
                    body["line_id"] = LINES[round % LINES.len()].into();
                }
                let response = admit(&mut client, body).await;
                match response.status {
                    201 => {
                        admitted.fetch_add(1, Ordering::SeqCst);
                        live.push(response.json()["call_id"].as_str().unwrap().to_owned());
                    }
                    429 => {}
                    503 => {
                        unavailable.fetch_add(1, Ordering::SeqCst);
                    }
                    other => panic!("unexpected {other}: {}", response.text()),
                }
                if live.len() > 1 || (round % 3 == 0 && !live.is_empty()) {
                    let id = live.remove(0);
                    let ended = end(&mut client, &id).await;
                    match ended.status {
                        200 => {}
                        503 => live.push(id),
                        other => panic!("end {id}: unexpected {other}: {}", ended.text()),
                    }
                }
            }
            live
        }));
    }

    let system = &server.system;
    let mut respawns = Vec::new();
    for round in 0..12 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let entity = match round % 4 {
            0 => Entity::Tenant(TENANTS[round % 3].into()),
            1 => Entity::Line(LINES[round % 2].into()),
            2 => Entity::Platform,
            _ => {
                let live = system.list_calls(None, None, None, 1);
                match live.first() {
                    Some(call) => {
                        assert!(system.inject_crash(&Entity::Call(call.id)));
                        // Back once it answers again (it may also have been ended meanwhile).
                        let started = Instant::now();
                        for _ in 0..2000 {
                            if system.get_call(call.id).await.is_ok() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        assert!(system.get_call(call.id).await.is_ok(), "call actor {} never came back", call.id);
                        respawns.push(started.elapsed());
                        continue;
                    }
                    None => Entity::Platform,
                }
            }
        };
        respawns.push(crash_and_wait(system, entity).await);
    }
    stop.store(true, Ordering::SeqCst);
    let mut still_live = Vec::new();
    for worker in workers {
        still_live.extend(worker.await.expect("worker finished"));
    }
    let slowest = respawns.iter().max().copied().unwrap_or_default();
    println!(
        "respawns: {} (slowest {slowest:?}); admitted {}; 503s {}",
        respawns.len(),
        admitted.load(Ordering::SeqCst),
        unavailable.load(Ordering::SeqCst)
    );
    assert!(slowest <= RESPAWN_BOUND, "slowest respawn took {slowest:?}");
    assert!(admitted.load(Ordering::SeqCst) > 50, "the workload kept admitting through the crashes");

    // Let crashed call actors come back, then compare every actor with the journal.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_live_equals_durable(system).await;
    let live = system.live_digest().await.unwrap();
    for tenant in TENANTS {
        let (_, active, _) = &live.tenants[tenant];
        assert!(active.len() <= 4, "{tenant} over its limit: {}", active.len());
        let expected: std::collections::BTreeSet<CallId> =
            live.live_calls.values().filter(|c| c.tenant_id == tenant).map(|c| c.id).collect();
        assert_eq!(active, &expected, "{tenant}'s slots are exactly its live calls");
    }
    assert!(live.pools["standard_voice"].held.len() <= 10);

    // Ending everything brings every counter to zero: nothing leaked.
    for call in system.list_calls(None, None, None, 1000) {
        let ended = end(&mut client, &call.id.to_string()).await;
        assert_eq!(ended.status, 200, "{}", ended.text());
    }
    let live = system.live_digest().await.unwrap();
    assert!(live.pools["standard_voice"].held.is_empty());
    assert!(live.tenants.values().all(|(_, active, _)| active.is_empty()));
    assert!(live.lines.values().all(|(_, active)| active.is_empty()));
    assert_live_equals_durable(system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_call_actor_comes_back_with_its_heartbeat_and_can_still_end() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "acme", "PRO", None).await;
    let call = admit(&mut client, json!({"tenant_id": "acme", "direction": "outbound"})).await.json();
    let id = call["call_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let beat = client.post(&format!("/v1/calls/{id}/heartbeat"), &json!({})).await.unwrap().json();
    assert_ne!(beat["last_activity_at"], call["last_activity_at"]);

    assert!(server.system.inject_crash(&Entity::Call(id.parse().unwrap())));
    let mut shown = None;
    for _ in 0..200 {
        let response = client.get(&format!("/v1/calls/{id}")).await.unwrap();
        if response.status == 200 {
            shown = Some(response.json());
            break;
        }
        assert_eq!(response.status, 503, "{}", response.text());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shown = shown.expect("the call actor came back");
    assert_eq!(shown["last_activity_at"], beat["last_activity_at"], "rebuilt from the journal, heartbeat included");
    assert_eq!(end(&mut client, &id).await.status, 200);
    assert_eq!(get_json(&mut client, "/v1/tenants/acme").await["active_calls"], 0);
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_actor_dying_between_its_durable_end_and_the_release_is_finished_by_the_supervisor() {
    quiet_panics();
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "acme", "PRO", None).await;
    create_line(&mut client, "+14155550120", "acme", 2).await;
    let call = admit(&mut client, json!({"tenant_id": "acme", "line_id": "+14155550120", "direction": "outbound"})).await.json();
    let id = call["call_id"].as_str().unwrap().to_owned();
    assert!(server.system.inject_crash_mid_end(id.parse().unwrap()));
    let mut shown = serde_json::Value::Null;
    for _ in 0..200 {
        let response = client.get(&format!("/v1/calls/{id}")).await.unwrap();
        if response.status == 200 && response.json()["status"] == "ended" {
            shown = response.json();
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(shown["outcome"], "completed", "the durable end is what the API shows");
    assert_eq!(get_json(&mut client, "/v1/tenants/acme").await["active_calls"], 0);
    assert_eq!(get_json(&mut client, "/v1/lines/+14155550120").await["active_calls"], 0);
    assert_eq!(get_json(&mut client, "/v1/platform").await["active"], 0);
    assert_eq!(end(&mut client, &id).await.json(), shown, "a late end webhook changes nothing");
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}
