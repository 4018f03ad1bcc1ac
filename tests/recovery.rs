//! Durability: the state rebuilt from the journal equals the live state, after a random
//! workload, across restarts, and across snapshots that prune the log.

mod common;

use common::*;
use serde_json::json;
use switchboard::client::Client;
use switchboard_actors::state::StateDigest;

const TENANTS: usize = 6;
const LINES: usize = 4;
const PLANS: [&str; 5] = ["TRIAL", "PAYG", "STARTER", "PRO", "ENTERPRISE"];

/// Every kind of change the API can make, chosen at random; returns the live call ids.
async fn random_workload(client: &mut Client, rng: &mut Rng, steps: usize, live: &mut Vec<String>) {
    for _ in 0..steps {
        match rng.index(10) {
            0..=3 => {
                let tenant = format!("t{}", rng.index(TENANTS));
                let mut body = json!({"tenant_id": tenant, "direction": if rng.index(2) == 0 { "inbound" } else { "outbound" }});
                if rng.index(2) == 0 {
                    let line = rng.index(LINES);
                    body["line_id"] = format!("+1415555020{line}").into();
                    body["tenant_id"] = format!("t{}", line % TENANTS).into();
                }
                if body["direction"] == "inbound" && rng.index(3) == 0 {
                    body["already_connected"] = true.into();
                }
                let response = admit(client, body).await;
                assert!(matches!(response.status, 201 | 429), "{}", response.text());
                if response.status == 201 {
                    live.push(response.json()["call_id"].as_str().unwrap().to_owned());
                }
            }
            4..=6 if !live.is_empty() => {
                let id = live.swap_remove(rng.index(live.len()));
                assert_eq!(end(client, &id).await.status, 200);
            }
            7 if !live.is_empty() => {
                let id = &live[rng.index(live.len())];
                assert_eq!(client.post(&format!("/v1/calls/{id}/heartbeat"), &json!({})).await.unwrap().status, 200);
            }
            8 => {
                let tenant = format!("t{}", rng.index(TENANTS));
                let plan = PLANS[rng.index(PLANS.len())];
                let limit = if rng.index(2) == 0 { json!(null) } else { json!(1 + rng.index(6)) };
                let response = client
                    .patch(&format!("/v1/tenants/{tenant}"), &json!({"plan": plan, "concurrent_limit_override": limit}))
                    .await
                    .unwrap();
                assert_eq!(response.status, 200, "{}", response.text());
            }
            _ => set_capacity(client, 3 + rng.index(10) as u32).await,
        }
    }
}

async fn setup(client: &mut Client) {
    for n in 0..TENANTS {
        create_tenant(client, &format!("t{n}"), PLANS[n % PLANS.len()], None).await;
    }
    for n in 0..LINES {
        create_line(client, &format!("+1415555020{n}"), &format!("t{}", n % TENANTS), 2).await;
    }
}

fn seed() -> u64 {
    let seed = std::env::var("SWITCHBOARD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    println!("seed {seed} (replay with SWITCHBOARD_TEST_SEED={seed})");
    seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_rebuilt_from_the_journal_equals_the_live_state_across_restarts_and_snapshots() {
    let mut rng = Rng(seed());
    let dir = temp_dir();
    // Snapshot often, so the replay goes through snapshots and pruned logs.
    let small_snapshots = |config: &mut switchboard::config::Config| config.journal.snapshot_every_events = 100;
    let mut live_ids = Vec::new();
    let mut previous: Option<StateDigest> = None;
    for round in 0..4 {
        let server = start_in(dir.path(), small_snapshots).await;
        let rebuilt = server.system.live_digest().await.unwrap();
        if let Some(previous) = &previous {
            assert_eq!(&rebuilt, previous, "round {round}: the restarted service differs from the one that stopped");
        }
        let mut client = server.client().await;
        if round == 0 {
            setup(&mut client).await;
        }
        random_workload(&mut client, &mut rng, 150, &mut live_ids).await;
        assert_live_equals_durable(&server.system).await;
        previous = Some(server.system.live_digest().await.unwrap());
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_workload_leaves_live_and_durable_state_equal() {
    let seed = seed();
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    setup(&mut client).await;
    let mut workers = Vec::new();
    for worker in 0..6u64 {
        let mut client = server.client().await;
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ worker.wrapping_mul(0x9e37_79b9));
            let mut live = Vec::new();
            random_workload(&mut client, &mut rng, 120, &mut live).await;
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    assert_live_equals_durable(&server.system).await;
    let before = server.system.live_digest().await.unwrap();
    server.stop().await;
    let server = start_in(dir.path(), |_| {}).await;
    assert_eq!(server.system.live_digest().await.unwrap(), before);
    server.stop().await;
}

/// sled writes its own page-cache snapshot (not ours) to `snap.<lsn>.generating` and then
/// renames it. A SIGKILL in between leaves a truncated file, and sled 0.34.7 read it as the
/// latest snapshot: every later start failed with "Read corrupted data" (tests/crash.rs caught
/// a kill during boot doing this). With the vendored patch the file is skipped, the journal
/// opens with everything in it, and the next page-cache snapshot removes the leftover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_cache_snapshot_cut_short_by_a_kill_does_not_stop_the_next_start() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "kept", "PRO", None).await;
    let call = admit(&mut client, json!({"tenant_id": "kept", "direction": "outbound"})).await;
    assert_eq!(call.status, 201, "{}", call.text());
    let call_id = call.json()["call_id"].as_str().unwrap().to_owned();
    drop(client);
    server.stop().await;
    // sled writes its page-cache snapshot while opening, when its log has grown since the last.
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "later", "PRO", None).await;
    drop(client);
    server.stop().await;

    // What a kill during the write leaves: the first half of a snapshot, under a name that
    // sorts after the complete one.
    let journal = dir.path().join("journal");
    let complete = std::fs::read_dir(&journal)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.file_name().unwrap().to_string_lossy().starts_with("snap."))
        .expect("sled wrote a page-cache snapshot");
    let bytes = std::fs::read(&complete).unwrap();
    let leftover = journal.join("snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&leftover, &bytes[..bytes.len() / 2]).unwrap();

    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    assert_eq!(get_json(&mut client, "/v1/tenants/kept").await["active_calls"], 1);
    assert_eq!(get_json(&mut client, &format!("/v1/calls/{call_id}")).await["status"], "active");
    get_json(&mut client, "/v1/tenants/later").await;
    drop(client);
    server.stop().await;
    assert!(!leftover.exists(), "sled's next page-cache snapshot removes the leftover");
}
