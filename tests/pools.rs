//! Provider pools and priority arbitration over real HTTP and a real journal: plans map to
//! classes whose reserved headroom decides who gets the last slots (seed 000 §4–§5 and its §8
//! checklist), capacity and reservations change live, inbound calls already connected are always
//! recorded, waiting admissions are granted, time out, are bounded and leave when their client
//! goes away, freed slots go to the highest class and then round-robin across tenants, a
//! provider 429 cools the pool down and teaches it a lower capacity that grows back, pool state
//! survives a restart, and bad input changes nothing.
//!
//! The two provider-rejection race tests at the end are regressions: the rejection used to run
//! in three separate steps (check, journal, end); it now runs inside the call's own actor.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchboard::client::{Client, Response};
use switchboard::config::Config;
use tokio::task::JoinHandle;

const STANDARD_POOL: &str = "standard_voice";
const PREMIUM_POOL: &str = "premium_voice";
/// Long enough for any answer the tests wait for; every wait is bounded by it.
const PATIENCE: Duration = Duration::from_secs(10);

/// Starts a server with `tweak` applied to the default config, its journal in a fresh directory
/// (removed when the returned guard drops), and connects one client.
async fn start(tweak: impl FnOnce(&mut Config)) -> (tempfile::TempDir, TestServer, Client) {
    let dir = temp_dir();
    let server = start_in(dir.path(), tweak).await;
    let client = server.client().await;
    (dir, server, client)
}

/// Checks that the live state equals the journal's, then stops the server.
async fn finish(server: TestServer) {
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

/// Creates ENTERPRISE tenant `ent` (limit 20) and fills the 5-slot standard pool with its calls;
/// returns their ids.
async fn fill_standard_pool(client: &mut Client) -> Vec<String> {
    create_tenant(client, "ent", "ENTERPRISE", Some(20)).await;
    admit_n(client, "ent", 5).await
}

/// Connects `count` more clients to the server.
async fn clients(server: &TestServer, count: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(server.client().await);
    }
    clients
}

/// Sends each of `bodies` to `path` at once, each on its own connection; the answers in the
/// same order, each within `PATIENCE`.
async fn post_at_once(server: &TestServer, path: &str, bodies: Vec<Value>) -> Vec<Response> {
    let tasks: Vec<_> = clients(server, bodies.len())
        .await
        .into_iter()
        .zip(bodies)
        .map(|(mut c, body)| {
            let path = path.to_owned();
            tokio::spawn(async move { c.post(&path, &body).await.expect("request") })
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        answers.push(answer(task).await);
    }
    answers
}

/// A fail-fast outbound admission for `tenant`.
fn outbound(tenant: &str) -> Value {
    json!({"tenant_id": tenant, "direction": "outbound"})
}

/// An outbound admission for `tenant` that may wait up to `wait_ms` for a slot.
fn waiting_outbound(tenant: &str, wait_ms: u64) -> Value {
    json!({"tenant_id": tenant, "direction": "outbound", "wait_ms": wait_ms})
}

/// Asserts the admission succeeded (201) and returns the call.
fn admitted_call(response: &Response) -> Value {
    assert_eq!(response.status, 201, "{}", response.text());
    response.json()
}

/// Asserts the admission succeeded (201) and returns its call id.
fn call_id(response: &Response) -> String {
    admitted_call(response)["call_id"].as_str().expect("call_id").to_owned()
}

/// Asserts a 429 refusal with `code` that reports `active` calls against `limit`; returns the
/// problem body.
fn assert_full(response: &Response, code: &str, active: u64, limit: u64) -> Value {
    let body = assert_problem(response, 429, code);
    assert_eq!((body["current_active"].as_u64(), body["limit"].as_u64()), (Some(active), Some(limit)), "{body}");
    body
}

/// Admits `count` calls for `tenant` one after another; each must be admitted.
async fn admit_n(client: &mut Client, tenant: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(call_id(&admit(client, outbound(tenant)).await));
    }
    ids
}

/// Ends call `id`; the end must succeed (200).
async fn end_ok(client: &mut Client, id: &str) {
    let ended = end(client, id).await;
    assert_eq!(ended.status, 200, "end {id}: {}", ended.text());
}

/// Reports a provider rejection (a provider 429) for call `id`.
async fn reject(client: &mut Client, id: &str, body: &Value) -> Response {
    client.post(&format!("/v1/calls/{id}/provider-rejected"), body).await.expect("request")
}

/// Reports a provider rejection for call `id`; the report must be accepted (200). Returns the
/// call record it answers.
async fn reject_ok(client: &mut Client, id: &str, body: &Value) -> Value {
    let rejected = reject(client, id, body).await;
    assert_eq!(rejected.status, 200, "{}", rejected.text());
    rejected.json()
}

/// PATCHes `path` with `body`; the change must be accepted (200). Returns the answer.
async fn patch_ok(client: &mut Client, path: &str, body: Value) -> Value {
    let patched = client.patch(path, &body).await.expect("request");
    assert_eq!(patched.status, 200, "PATCH {path} {body}: {}", patched.text());
    patched.json()
}

/// The tenant's `active_calls` as `GET /v1/tenants/{tenant}` reports it.
async fn active_calls(client: &mut Client, tenant: &str) -> u64 {
    get_json(client, &format!("/v1/tenants/{tenant}")).await["active_calls"].as_u64().expect("active_calls")
}

/// The pool called `name` in a platform answer; it must be there.
fn pool_in<'a>(platform: &'a Value, name: &str) -> &'a Value {
    platform["pools"].as_array().expect("pools").iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no pool {name}"))
}

/// One pool of `GET /v1/platform`.
async fn pool(client: &mut Client, name: &str) -> Value {
    pool_in(&get_json(client, "/v1/platform").await, name).clone()
}

/// Polls a pool until `ready` holds (bounded by `PATIENCE`); returns the pool as it was then.
async fn pool_until(client: &mut Client, name: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let poll = async {
        loop {
            let current = pool(client, name).await;
            if ready(&current) {
                return current;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, poll).await.unwrap_or_else(|_| panic!("pool {name} never got to: {what}"))
}

/// Starts an admission on its own connection; the answer is the task's result.
async fn start_admission(server: &TestServer, body: Value) -> JoinHandle<Response> {
    let mut client = server.client().await;
    tokio::spawn(async move { admit(&mut client, body).await })
}

/// Starts a waiting admission and returns once the pool counts it as waiting.
async fn start_waiter(server: &TestServer, client: &mut Client, body: Value) -> JoinHandle<Response> {
    let before = pool(client, STANDARD_POOL).await["waiting"].as_u64().unwrap();
    let task = start_admission(server, body).await;
    pool_until(client, STANDARD_POOL, "one more waiter", |p| p["waiting"].as_u64() == Some(before + 1)).await;
    task
}

/// The answer of a started request; it must come within `PATIENCE`.
async fn answer(task: JoinHandle<Response>) -> Response {
    tokio::time::timeout(PATIENCE, task).await.expect("the admission is answered in time").expect("admission task")
}

/// Asserts that `GET /metrics` answers 200 and contains every one of `lines`.
async fn assert_metrics(client: &mut Client, lines: &[&str]) {
    let response = client.get("/metrics").await.expect("request");
    assert_eq!(response.status, 200);
    let metrics = response.text();
    for line in lines {
        assert!(metrics.contains(line), "missing {line}:\n{metrics}");
    }
}

/// The Retry-After header in seconds; it must be there.
fn retry_after(response: &Response) -> u64 {
    response.header("retry-after").expect("a Retry-After header").parse().expect("Retry-After in seconds")
}

/// Seed 000's checklist ("simulate 2 PRO customers calling simultaneously"), with the default
/// reservations: PRO is `priority`, which may not touch the 2 slots held for `premium`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pro_tenants_spiking_get_three_slots_and_enterprise_keeps_its_two() {
    let (_dir, server, mut client) = start(|_| {}).await;
    create_tenant(&mut client, "pro-a", "PRO", None).await;
    create_tenant(&mut client, "pro-b", "PRO", None).await;
    create_tenant(&mut client, "ent", "ENTERPRISE", None).await;

    let spike = (0..10).map(|n| outbound(if n % 2 == 0 { "pro-a" } else { "pro-b" })).collect();
    let mut admitted = 0;
    for response in post_at_once(&server, "/v1/calls", spike).await {
        if response.status == 201 {
            admitted += 1;
            let call = response.json();
            assert_eq!(
                (call["plan"].as_str(), call["class"].as_str(), call["pool"].as_str(), call["voice"].as_str()),
                (Some("PRO"), Some("priority"), Some(STANDARD_POOL), Some("standard")),
                "{call}"
            );
            assert_eq!(
                (call["over_limit"].as_bool(), call["fell_back"].as_bool(), call["waited_ms"].as_u64()),
                (Some(false), Some(false), Some(0))
            );
        } else {
            // 3 of 5 active; PRO may use 5 − 2 (held for premium) = 3.
            let body = assert_full(&response, "PLATFORM_CAPACITY_FULL_FOR_PLAN", 3, 3);
            assert_eq!(body["pool"], STANDARD_POOL);
            // A fail-fast request does not wait; `waited_ms` is the admission's own time.
            assert!(body["waited_ms"].as_u64().is_some_and(|ms| ms < 1_000), "{body}");
            assert_eq!(response.header("retry-after"), Some("2"));
        }
    }
    assert_eq!(admitted, 3, "priority stops where the premium headroom starts");
    let pro_calls = active_calls(&mut client, "pro-a").await + active_calls(&mut client, "pro-b").await;
    assert_eq!(pro_calls, 3, "denied requests released their tenant slots");

    // The headroom held for premium is still there for ENTERPRISE, and then the pool is full.
    for _ in 0..2 {
        assert_eq!(admitted_call(&admit(&mut client, outbound("ent")).await)["class"], "premium");
    }
    assert_full(&admit(&mut client, outbound("ent")).await, "PLATFORM_CAPACITY_FULL", 5, 5);

    let platform = get_json(&mut client, "/v1/platform").await;
    assert_eq!(platform["default_pool"], STANDARD_POOL);
    assert_eq!((platform["capacity"].as_u64(), platform["active"].as_u64(), platform["available"].as_u64()), (Some(5), Some(5), Some(0)));
    let names: Vec<&str> = platform["pools"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, [PREMIUM_POOL, STANDARD_POOL], "pools in name order");
    let standard = &platform["pools"][1];
    assert_eq!(standard["object"], "pool");
    assert_eq!(standard["active_by_class"], json!({"standard": 0, "priority": 3, "premium": 2}));
    assert_eq!(standard["reserved"], json!({"premium": 2, "priority": 3}));
    assert_eq!((standard["effective_capacity"].as_u64(), standard["learned_capacity"].is_null()), (Some(5), true));
    assert_eq!((standard["waiting"].as_u64(), standard["in_cooldown"].as_bool()), (Some(0), Some(false)));
    assert_eq!(platform["pools"][0]["active"], 0, "standard-voice calls stay off the premium pool");
    assert_metrics(
        &mut client,
        &[
            "switchboard_admissions_total{outcome=\"denied\",reason=\"PLATFORM_CAPACITY_FULL_FOR_PLAN\"} 7",
            "switchboard_admissions_total{outcome=\"denied\",reason=\"PLATFORM_CAPACITY_FULL\"} 1",
        ],
    )
    .await;
    finish(server).await;
}

/// A flood of PAYG tenants (one slot each) cannot take more than the unreserved 2 slots, and
/// what it leaves for PRO is the priority headroom. Note the nesting: the 3 slots held for
/// "priority and above" include the 2 held for premium, so PRO keeps all 3 of its slots only
/// when it holds them before the flood; with 2 PAYG calls up it can add 1 (2 + 3 + 2 > 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payg_flood_takes_at_most_the_unreserved_slots_and_leaves_pro_its_headroom() {
    let (_dir, server, mut client) = start(|_| {}).await;
    let payg: Vec<String> = (0..12).map(|n| format!("payg-{n:02}")).collect();
    for tenant in &payg {
        create_tenant(&mut client, tenant, "PAYG", None).await;
    }
    create_tenant(&mut client, "pro", "PRO", None).await;
    create_tenant(&mut client, "ent", "ENTERPRISE", None).await;
    let flood: Vec<Value> = payg.iter().map(|t| outbound(t)).collect();

    // 1. Everything at once: 12 PAYG requests and 5 PRO requests race.
    let race = flood.iter().cloned().chain((0..5).map(|_| outbound("pro"))).collect();
    let (mut standard, mut priority, mut ids) = (0, 0, Vec::new());
    for response in post_at_once(&server, "/v1/calls", race).await {
        if response.status == 201 {
            let call = response.json();
            match call["class"].as_str() {
                Some("standard") => standard += 1,
                Some("priority") => priority += 1,
                other => panic!("unexpected class {other:?}"),
            }
            ids.push(call["call_id"].as_str().unwrap().to_owned());
        } else {
            let body = assert_problem(&response, 429, "PLATFORM_CAPACITY_FULL_FOR_PLAN");
            let (active, limit) = (body["current_active"].as_u64().unwrap(), body["limit"].as_u64().unwrap());
            if limit == 2 {
                assert!((2..=3).contains(&active), "a standard denial at {active} active: {body}");
            } else {
                assert_eq!((active, limit), (3, 3), "a priority denial: {body}");
            }
        }
    }
    assert!(standard <= 2, "{standard} standard calls admitted; at most 2 slots are unreserved");
    assert!(priority >= 1, "the priority headroom above the premium reservation is PRO's");
    assert_eq!(standard + priority, 3, "standard and priority together stop where the premium headroom starts");
    assert_eq!(admit_n(&mut client, "ent", 2).await.len(), 2, "premium's 2 are untouched");
    assert_problem(&admit(&mut client, outbound("ent")).await, 429, "PLATFORM_CAPACITY_FULL");
    let by_class = pool(&mut client, STANDARD_POOL).await["active_by_class"].clone();
    assert_eq!(by_class, json!({"standard": standard, "priority": priority, "premium": 2}));
    let ent_ids: Vec<String> = get_json(&mut client, "/v1/calls?tenant_id=ent").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_owned())
        .collect();
    for id in ids.iter().chain(&ent_ids) {
        end_ok(&mut client, id).await;
    }

    // 2. PRO holds its 3 first; the flood then gets nothing.
    let pro_ids = admit_n(&mut client, "pro", 3).await;
    for response in post_at_once(&server, "/v1/calls", flood.clone()).await {
        assert_full(&response, "PLATFORM_CAPACITY_FULL_FOR_PLAN", 3, 2);
    }
    assert_problem(&admit(&mut client, outbound("pro")).await, 429, "PLATFORM_CAPACITY_FULL_FOR_PLAN");
    for id in &pro_ids {
        end_ok(&mut client, id).await;
    }

    // 3. The flood comes first: 2 PAYG calls, then PRO adds exactly 1, ENTERPRISE its 2.
    let mut admitted = 0;
    for response in post_at_once(&server, "/v1/calls", flood).await {
        if response.status == 201 {
            admitted += 1;
        } else {
            assert_full(&response, "PLATFORM_CAPACITY_FULL_FOR_PLAN", 2, 2);
        }
    }
    assert_eq!(admitted, 2, "with nothing else running, standard gets exactly the 2 unreserved slots");
    assert_eq!(admit(&mut client, outbound("pro")).await.status, 201);
    assert_full(&admit(&mut client, outbound("pro")).await, "PLATFORM_CAPACITY_FULL_FOR_PLAN", 3, 3);
    assert_eq!(admit_n(&mut client, "ent", 2).await.len(), 2);
    let standard_pool = pool(&mut client, STANDARD_POOL).await;
    assert_eq!(standard_pool["active_by_class"], json!({"standard": 2, "priority": 1, "premium": 2}));
    finish(server).await;
}

/// Seed 000 §9: the provider account grows from 5 to 10+; capacity and reservations change
/// live, a waiting request is granted by the raise, and requests denied before now fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_capacity_and_changing_reservations_live_grants_waiters_and_changes_who_fits() {
    let (_dir, server, mut client) = start(|_| {}).await;
    fill_standard_pool(&mut client).await;
    create_tenant(&mut client, "pro", "PRO", None).await;
    for tenant in ["payg-a", "payg-b", "payg-c"] {
        create_tenant(&mut client, tenant, "PAYG", None).await;
    }
    assert_full(&admit(&mut client, outbound("payg-a")).await, "PLATFORM_CAPACITY_FULL", 5, 5);

    let pro_waiter = start_waiter(&server, &mut client, waiting_outbound("pro", 5_000)).await;
    let raised = patch_ok(&mut client, "/v1/platform/pools/standard_voice", json!({"capacity": 10})).await;
    assert_eq!((raised["object"].as_str(), raised["name"].as_str()), (Some("pool"), Some(STANDARD_POOL)));
    assert_eq!((raised["capacity"].as_u64(), raised["effective_capacity"].as_u64()), (Some(10), Some(10)));
    assert_eq!(raised["reserved"], json!({"premium": 2, "priority": 3}), "a capacity PATCH keeps the reservations");
    // The raise grants the waiter.
    let granted = admitted_call(&answer(pro_waiter).await);
    assert_eq!((granted["class"].as_str(), granted["pool"].as_str()), (Some("priority"), Some(STANDARD_POOL)));
    assert!(granted["waited_ms"].as_u64().unwrap() > 0, "{granted}");

    // 6 of 10 active, 4 free: standard fits while more than 3 are free.
    assert_eq!(admit(&mut client, outbound("payg-a")).await.status, 201, "denied before the raise, admitted now");
    assert_full(&admit(&mut client, outbound("payg-b")).await, "PLATFORM_CAPACITY_FULL_FOR_PLAN", 7, 7);

    // Smaller reservations: standard now fits while more than 2 are free.
    let patched = patch_ok(&mut client, "/v1/platform/pools/standard_voice", json!({"reserved": {"premium": 1, "priority": 2}})).await;
    assert_eq!(patched["reserved"], json!({"premium": 1, "priority": 2}));
    assert_eq!(patched["capacity"], 10, "a reservations PATCH keeps the capacity");
    assert_eq!(admit(&mut client, outbound("payg-b")).await.status, 201);

    // Fill the pool, queue a PAYG waiter, and grant it with the older `PATCH /v1/platform`.
    admit_n(&mut client, "ent", 2).await;
    assert_eq!(pool(&mut client, STANDARD_POOL).await["active"], 10);
    let payg_waiter = start_waiter(&server, &mut client, waiting_outbound("payg-c", 5_000)).await;
    patch_ok(&mut client, "/v1/platform", json!({"capacity": 12})).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!payg_waiter.is_finished(), "12 − 10 = 2 free is not more than the 2 reserved above standard");
    assert_eq!(pool(&mut client, STANDARD_POOL).await["waiting"], 1);
    let platform = patch_ok(&mut client, "/v1/platform", json!({"capacity": 13})).await;
    assert_eq!(platform["capacity"], 13);
    let standard = pool_in(&platform, STANDARD_POOL);
    assert_eq!((standard["capacity"].as_u64(), standard["reserved"].clone()), (Some(13), json!({"premium": 1, "priority": 2})));
    assert_eq!(pool_in(&platform, PREMIUM_POOL)["capacity"], 5, "PATCH /v1/platform changes the default pool only");
    assert_eq!(admitted_call(&answer(payg_waiter).await)["class"], "standard");
    assert_eq!(pool(&mut client, STANDARD_POOL).await["active"], 11);
    finish(server).await;
}

/// Seed 000 §9 the other way: lowering capacity below the active count ends no call; the pool
/// admits nothing until enough calls end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_capacity_below_active_ends_nothing_and_admits_nothing_until_back_under() {
    let (_dir, server, mut client) = start(|_| {}).await;
    let ids = fill_standard_pool(&mut client).await;

    let lowered = patch_ok(&mut client, "/v1/platform/pools/standard_voice", json!({"capacity": 2})).await;
    assert_eq!(
        (lowered["capacity"].as_u64(), lowered["active"].as_u64(), lowered["available"].as_u64()),
        (Some(2), Some(5), Some(0)),
        "{lowered}"
    );
    assert_eq!(get_json(&mut client, "/v1/calls?tenant_id=ent").await["data"].as_array().unwrap().len(), 5, "no call ended");
    for id in &ids {
        assert_eq!(get_json(&mut client, &format!("/v1/calls/{id}")).await["status"], "active");
    }
    for (ended, active) in [(0, 5), (1, 4), (2, 3), (3, 2)] {
        if ended > 0 {
            end_ok(&mut client, &ids[ended - 1]).await;
        }
        assert_full(&admit(&mut client, outbound("ent")).await, "PLATFORM_CAPACITY_FULL", active, 2);
    }
    end_ok(&mut client, &ids[3]).await;
    assert_eq!(admit(&mut client, outbound("ent")).await.status, 201, "back under capacity, admissions resume");
    assert_problem(&admit(&mut client, outbound("ent")).await, 429, "PLATFORM_CAPACITY_FULL");
    assert_eq!(pool(&mut client, STANDARD_POOL).await["active"], 2);
    finish(server).await;
}

/// Seed 000 §2.2 and its checklist: an inbound call the provider already connected is recorded
/// on a full pool, flagged over the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_already_connected_on_a_full_pool_is_recorded_over_the_limit() {
    let (_dir, server, mut client) = start(|_| {}).await;
    fill_standard_pool(&mut client).await;
    create_tenant(&mut client, "payg", "PAYG", None).await;
    create_line(&mut client, "+14155550100", "payg", 2).await;

    let checked = json!({"tenant_id": "payg", "line_id": "+14155550100", "direction": "inbound"});
    assert_problem(&admit(&mut client, checked).await, 429, "PLATFORM_CAPACITY_FULL");
    let connected = json!({"tenant_id": "payg", "line_id": "+14155550100", "direction": "inbound", "already_connected": true});
    let call = admitted_call(&admit(&mut client, connected).await);
    assert_eq!(
        (call["over_limit"].as_bool(), call["pool"].as_str(), call["class"].as_str()),
        (Some(true), Some(STANDARD_POOL), Some("standard"))
    );
    let standard = pool(&mut client, STANDARD_POOL).await;
    assert_eq!((standard["active"].as_u64(), standard["available"].as_u64()), (Some(6), Some(0)));
    assert_eq!(standard["active_by_class"], json!({"standard": 1, "priority": 0, "premium": 5}));
    assert_metrics(&mut client, &["switchboard_inbound_over_limit_total 1"]).await;

    end_ok(&mut client, call["call_id"].as_str().unwrap()).await;
    assert_eq!(pool(&mut client, STANDARD_POOL).await["active"], 5);
    assert_problem(&admit(&mut client, outbound("ent")).await, 429, "PLATFORM_CAPACITY_FULL");
    finish(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_is_granted_when_a_call_ends() {
    let (_dir, server, mut client) = start(|_| {}).await;
    let ids = fill_standard_pool(&mut client).await;

    let waiter = start_waiter(&server, &mut client, waiting_outbound("ent", 5_000)).await;
    let waiting = pool(&mut client, STANDARD_POOL).await;
    assert_eq!(waiting["waiting_by_class"], json!({"standard": 0, "priority": 0, "premium": 1}));
    assert_eq!(active_calls(&mut client, "ent").await, 6, "a waiter holds its tenant slot");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "nothing frees, nothing is granted");

    end_ok(&mut client, &ids[0]).await;
    let call = admitted_call(&answer(waiter).await);
    assert_eq!(
        (call["status"].as_str(), call["class"].as_str(), call["pool"].as_str()),
        (Some("active"), Some("premium"), Some(STANDARD_POOL))
    );
    assert!(call["waited_ms"].as_u64().unwrap() > 0, "{call}");
    let standard = pool(&mut client, STANDARD_POOL).await;
    assert_eq!((standard["active"].as_u64(), standard["waiting"].as_u64()), (Some(5), Some(0)));
    assert_eq!(standard["waits"]["premium"], json!({"granted": 1, "timed_out": 0, "cancelled": 0, "cooldown": 0}));
    assert_metrics(&mut client, &["switchboard_admission_wait_seconds_count{class=\"premium\",outcome=\"granted\"} 1"]).await;
    finish(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_is_denied_with_the_pool_code_and_how_long_it_waited() {
    let (_dir, server, mut client) = start(|_| {}).await;
    fill_standard_pool(&mut client).await;
    create_tenant(&mut client, "pro", "PRO", None).await;

    let timed_out = admit(&mut client, waiting_outbound("ent", 300)).await;
    let body = assert_full(&timed_out, "PLATFORM_CAPACITY_FULL", 5, 5);
    assert!(body["waited_ms"].as_u64().unwrap() >= 300, "{body}");
    assert_eq!(body["pool"], STANDARD_POOL);
    assert_eq!(timed_out.header("retry-after"), Some("2"));

    // A class that only reserved headroom is left for times out with its own code.
    let end_one = get_json(&mut client, "/v1/calls?tenant_id=ent&limit=1").await["data"][0]["call_id"].as_str().unwrap().to_owned();
    end_ok(&mut client, &end_one).await;
    let for_plan = assert_full(&admit(&mut client, waiting_outbound("pro", 300)).await, "PLATFORM_CAPACITY_FULL_FOR_PLAN", 4, 3);
    assert!(for_plan["waited_ms"].as_u64().unwrap() >= 300, "{for_plan}");

    let standard = pool(&mut client, STANDARD_POOL).await;
    assert_eq!(standard["waiting"], 0);
    assert_eq!(standard["waits"]["premium"], json!({"granted": 0, "timed_out": 1, "cancelled": 0, "cooldown": 0}));
    assert_eq!(standard["waits"]["priority"]["timed_out"], 1);
    assert_eq!(active_calls(&mut client, "pro").await, 0, "the timed-out wait released its tenant slot");
    assert_eq!(active_calls(&mut client, "ent").await, 4);
    finish(server).await;
}

/// `wait_ms` beyond `arbitration.wait_ms_max` is capped, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_longer_than_the_configured_maximum_is_capped() {
    let (_dir, server, mut client) = start(|c| c.arbitration.wait_ms_max = 300).await;
    fill_standard_pool(&mut client).await;
    let capped = tokio::time::timeout(PATIENCE, admit(&mut client, waiting_outbound("ent", 600_000))).await.expect("answered at the cap");
    let body = assert_problem(&capped, 429, "PLATFORM_CAPACITY_FULL");
    let waited = body["waited_ms"].as_u64().unwrap();
    assert!((300..PATIENCE.as_millis() as u64).contains(&waited), "{body}");
    finish(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_class_queue_is_bounded_and_a_full_one_answers_queue_full_at_once() {
    let (_dir, server, mut client) = start(|c| c.arbitration.waiting_per_class_max = 1).await;
    let ids = fill_standard_pool(&mut client).await;
    create_tenant(&mut client, "ent-2", "ENTERPRISE", None).await;
    create_tenant(&mut client, "pro", "PRO", None).await;

    let first = start_waiter(&server, &mut client, waiting_outbound("ent", 5_000)).await;
    let refused = tokio::time::timeout(Duration::from_secs(2), admit(&mut client, waiting_outbound("ent-2", 5_000)))
        .await
        .expect("QUEUE_FULL does not wait");
    assert_eq!(assert_full(&refused, "QUEUE_FULL", 1, 1)["pool"], STANDARD_POOL);
    assert!(refused.header("retry-after").is_some());
    assert_eq!(active_calls(&mut client, "ent-2").await, 0, "the refusal released its tenant slot");
    // A fail-fast request is not queued, so the bound does not apply to it.
    assert_problem(&admit(&mut client, outbound("ent-2")).await, 429, "PLATFORM_CAPACITY_FULL");
    // The bound is per class: priority still has room to wait.
    let pro = start_waiter(&server, &mut client, waiting_outbound("pro", 5_000)).await;
    assert_eq!(pool(&mut client, STANDARD_POOL).await["waiting_by_class"], json!({"standard": 0, "priority": 1, "premium": 1}));

    end_ok(&mut client, &ids[0]).await;
    assert_eq!(admitted_call(&answer(first).await)["class"], "premium");
    for id in &ids[1..3] {
        end_ok(&mut client, id).await;
    }
    // 3 of 5 active, 2 free: priority needs more than the 2 held for premium.
    assert!(!pro.is_finished());
    end_ok(&mut client, &ids[3]).await;
    assert_eq!(admitted_call(&answer(pro).await)["class"], "priority");
    assert_eq!(pool(&mut client, STANDARD_POOL).await["waiting"], 0);
    finish(server).await;
}

/// A client that disconnects while its request waits leaves the queue: the wait is journaled
/// as cancelled, its tenant slot is released, and the next free slot is not granted to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_while_waiting_leaves_the_queue() {
    let (_dir, server, mut client) = start(|_| {}).await;
    let ids = fill_standard_pool(&mut client).await;

    let body = waiting_outbound("ent", 10_000).to_string();
    let address = server.running.address;
    let request = format!(
        "POST /v1/calls HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // A plain socket (the request is a few hundred bytes on loopback: the blocking write is
    // instant), so the disconnect is exactly a close of the connection.
    let mut raw = std::net::TcpStream::connect(address).expect("connect");
    raw.write_all(request.as_bytes()).expect("send the request");
    pool_until(&mut client, STANDARD_POOL, "the raw request waiting", |p| p["waiting"] == 1).await;
    assert_eq!(active_calls(&mut client, "ent").await, 6);
    drop(raw);

    let left = pool_until(&mut client, STANDARD_POOL, "the cancelled wait journaled", |p| {
        p["waiting"] == 0 && p["waits"]["premium"]["cancelled"] == 1
    })
    .await;
    assert_eq!(left["waits"]["premium"], json!({"granted": 0, "timed_out": 0, "cancelled": 1, "cooldown": 0}));
    // The tenant slot is released after the cancelled wait is journaled: poll for it too.
    let released = async {
        while active_calls(&mut client, "ent").await != 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, released).await.expect("the cancelled wait releases its tenant slot");

    end_ok(&mut client, &ids[0]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let standard = pool(&mut client, STANDARD_POOL).await;
    assert_eq!((standard["active"].as_u64(), standard["waiting"].as_u64()), (Some(4), Some(0)), "the freed slot went to nobody");
    assert_eq!(standard["waits"]["premium"]["granted"], 0);
    assert_eq!(get_json(&mut client, "/v1/calls?tenant_id=ent").await["data"].as_array().unwrap().len(), 4);
    // A fail-fast request gets the freed slot.
    assert_eq!(admitted_call(&admit(&mut client, outbound("ent")).await)["waited_ms"], 0);
    assert_eq!(pool(&mut client, STANDARD_POOL).await["active"], 5);
    finish(server).await;
}

/// Grant order over HTTP with one slot and no reservations: the highest class first, then
/// tenants take turns inside a class, each tenant's waiters in arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freed_slots_go_to_the_highest_class_then_round_robin_across_tenants() {
    let (_dir, server, mut client) = start(|c| {
        no_reservations(c);
        c.pools.get_mut(STANDARD_POOL).unwrap().capacity = 1;
        // Nobody ages during the test: pure class order and round-robin.
        c.arbitration.starvation_bound_ms = 600_000;
    })
    .await;
    create_tenant(&mut client, "holder", "PAYG", None).await;
    create_tenant(&mut client, "a", "PAYG", Some(5)).await;
    create_tenant(&mut client, "b", "PAYG", None).await;
    create_tenant(&mut client, "p", "PRO", None).await;
    let holder = call_id(&admit(&mut client, outbound("holder")).await);

    let waiter = |tenant: &str, to: &str| json!({"tenant_id": tenant, "direction": "outbound", "to": to, "wait_ms": 10_000});
    let mut tasks = vec![
        ("a1", start_waiter(&server, &mut client, waiter("a", "+14155550001")).await),
        ("a2", start_waiter(&server, &mut client, waiter("a", "+14155550002")).await),
        ("b1", start_waiter(&server, &mut client, waiter("b", "+14155550003")).await),
        ("p1", start_waiter(&server, &mut client, waiter("p", "+14155550004")).await),
    ];
    let standard = pool(&mut client, STANDARD_POOL).await;
    assert_eq!(standard["waiting_by_class"], json!({"standard": 3, "priority": 1, "premium": 0}));

    let mut freed = holder;
    let mut order = Vec::new();
    for expected in ["p1", "a1", "b1", "a2"] {
        end_ok(&mut client, &freed).await;
        let position = tasks.iter().position(|(name, _)| *name == expected).unwrap();
        let (name, task) = tasks.remove(position);
        let granted = answer(task).await;
        assert_eq!(granted.status, 201, "{name}: {}", granted.text());
        let call = granted.json();
        assert!(call["waited_ms"].as_u64().unwrap() > 0, "{call}");
        let to = call["to"].as_str().unwrap();
        order.push(match to {
            "+14155550001" => "a1",
            "+14155550002" => "a2",
            "+14155550003" => "b1",
            "+14155550004" => "p1",
            other => panic!("unknown waiter {other}"),
        });
        for (other, task) in &tasks {
            assert!(!task.is_finished(), "{other} was answered while the slot was {name}'s");
        }
        freed = call["call_id"].as_str().unwrap().to_owned();
    }
    assert_eq!(order, ["p1", "a1", "b1", "a2"], "priority first, then a and b take turns, a's waiters in arrival order");
    end_ok(&mut client, &freed).await;
    let standard = pool(&mut client, STANDARD_POOL).await;
    assert_eq!((standard["active"].as_u64(), standard["waiting"].as_u64()), (Some(0), Some(0)));
    assert_eq!(standard["waits"]["standard"]["granted"], 3);
    assert_eq!(standard["waits"]["priority"]["granted"], 1);
    finish(server).await;
}

/// Seed 000 §4.5: the provider answered 429 for an admitted call. The call ends, the pool cools
/// down (new requests and current waiters get 503), and it learns the capacity it really had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_rejection_ends_the_call_cools_the_pool_down_and_learns_its_capacity() {
    let (_dir, server, mut client) = start(|_| {}).await;
    let ids = fill_standard_pool(&mut client).await;
    let waiter = start_waiter(&server, &mut client, waiting_outbound("ent", 10_000)).await;

    let rejected = reject_ok(&mut client, &ids[4], &json!({"retry_after_s": 30})).await;
    assert_eq!(
        (rejected["call_id"].as_str(), rejected["status"].as_str(), rejected["outcome"].as_str()),
        (Some(ids[4].as_str()), Some("ended"), Some("provider_rejected"))
    );

    let turned_away = answer(waiter).await;
    let body = assert_problem(&turned_away, 503, "PLATFORM_CAPACITY_EXCEEDED");
    assert_eq!(body["pool"], STANDARD_POOL);
    assert!((28..=30).contains(&retry_after(&turned_away)), "{:?}", turned_away.header("retry-after"));

    let standard = pool(&mut client, STANDARD_POOL).await;
    assert_eq!((standard["in_cooldown"].as_bool(), standard["provider_rejections"].as_u64()), (Some(true), Some(1)), "{standard}");
    assert!(standard["cooldown_until"].is_string(), "{standard}");
    // 5 were active when the provider refused one: it really had room for the other 4.
    assert_eq!(
        (standard["capacity"].as_u64(), standard["learned_capacity"].as_u64(), standard["effective_capacity"].as_u64()),
        (Some(5), Some(4), Some(4))
    );
    assert_eq!((standard["active"].as_u64(), standard["waiting"].as_u64()), (Some(4), Some(0)), "the rejected call's slot is free");
    assert_eq!(standard["waits"]["premium"], json!({"granted": 0, "timed_out": 0, "cancelled": 0, "cooldown": 1}));
    assert_eq!(active_calls(&mut client, "ent").await, 4);
    let premium = pool(&mut client, PREMIUM_POOL).await;
    assert_eq!((premium["in_cooldown"].as_bool(), premium["provider_rejections"].as_u64()), (Some(false), Some(0)));

    for body in [outbound("ent"), waiting_outbound("ent", 5_000)] {
        let cooling = tokio::time::timeout(Duration::from_secs(2), admit(&mut client, body)).await.expect("a cooldown refuses at once");
        let problem = assert_problem(&cooling, 503, "PLATFORM_CAPACITY_EXCEEDED");
        let seconds = retry_after(&cooling);
        assert!((28..=30).contains(&seconds), "Retry-After {seconds}");
        assert_eq!(problem["retry_after_s"].as_u64(), Some(seconds));
        assert_eq!(problem["pool"], STANDARD_POOL);
    }
    assert_metrics(&mut client, &["switchboard_provider_rate_limits_total{pool=\"standard_voice\"} 1"]).await;

    // A repeat (webhook retry) answers the same record and counts nothing again.
    assert_eq!(reject_ok(&mut client, &ids[4], &json!({"retry_after_s": 30})).await, rejected);
    // A call that ended otherwise; an unknown call; a cooldown out of range.
    end_ok(&mut client, &ids[0]).await;
    let body = assert_problem(&reject(&mut client, &ids[0], &json!({})).await, 409, "CALL_ENDED");
    assert_eq!(body["call"]["outcome"], "completed");
    assert_problem(&reject(&mut client, "call_999999999999", &json!({})).await, 404, "NOT_FOUND");
    for bad in [json!({"retry_after_s": 0}), json!({"retry_after_s": 3601}), json!({"retry_after_s": "x"})] {
        let response = reject(&mut client, &ids[1], &bad).await;
        assert_eq!(assert_problem(&response, 422, "INVALID_FIELD")["field"], "retry_after_s", "{bad}");
    }
    assert_eq!(get_json(&mut client, &format!("/v1/calls/{}", ids[1])).await["status"], "active", "a refused report changes nothing");
    let standard = pool(&mut client, STANDARD_POOL).await;
    assert_eq!((standard["provider_rejections"].as_u64(), standard["active"].as_u64()), (Some(1), Some(3)));
    assert_metrics(&mut client, &["switchboard_provider_rate_limits_total{pool=\"standard_voice\"} 1"]).await;
    finish(server).await;
}

/// After a short cooldown admissions work again, and the learned capacity grows back one slot
/// per probe interval until it reaches the configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_cooldown_admissions_resume_and_the_learned_capacity_grows_back() {
    let (_dir, server, mut client) = start(|c| c.arbitration.capacity_probe_interval_ms = 700).await;
    create_tenant(&mut client, "ent", "ENTERPRISE", Some(20)).await;
    let ids = admit_n(&mut client, "ent", 3).await;
    reject_ok(&mut client, &ids[2], &json!({"retry_after_s": 1})).await;

    let learned = pool(&mut client, STANDARD_POOL).await;
    // Learned: the 2 others; at most a step or two may have grown back already on a slow machine.
    let first = learned["learned_capacity"].as_u64().unwrap_or_else(|| panic!("a learned capacity: {learned}"));
    assert!((2..=4).contains(&first), "{learned}");
    assert_eq!(learned["effective_capacity"].as_u64(), Some(first));
    let cooling = admit(&mut client, outbound("ent")).await;
    assert_problem(&cooling, 503, "PLATFORM_CAPACITY_EXCEEDED");
    assert_eq!(cooling.header("retry-after"), Some("1"));

    let mut effective = vec![first];
    let recovered = pool_until(&mut client, STANDARD_POOL, "the cooldown over", |p| p["in_cooldown"] == false).await;
    effective.push(recovered["effective_capacity"].as_u64().unwrap());
    let resumed = admit(&mut client, outbound("ent")).await;
    assert_eq!(resumed.status, 201, "after the cooldown: {}", resumed.text());
    let poll = async {
        loop {
            let current = pool(&mut client, STANDARD_POOL).await;
            effective.push(current["effective_capacity"].as_u64().unwrap());
            if current["learned_capacity"].is_null() {
                return current;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let grown = tokio::time::timeout(PATIENCE, poll).await.expect("the learned capacity grows back");
    assert_eq!((grown["capacity"].as_u64(), grown["effective_capacity"].as_u64()), (Some(5), Some(5)));
    assert!(effective.windows(2).all(|w| w[0] <= w[1]), "grows back, never down: {effective:?}");
    admit_n(&mut client, "ent", 2).await;
    assert_problem(&admit(&mut client, outbound("ent")).await, 429, "PLATFORM_CAPACITY_FULL");
    finish(server).await;
}

/// The config of both runs of the restart test: a long default cooldown and no capacity probe,
/// so neither ends while the server restarts.
fn restart_config(config: &mut Config) {
    config.arbitration.provider_cooldown_s_default = 600;
    config.arbitration.capacity_probe_interval_ms = 3_600_000;
}

/// PATCHed capacity and reservations, a cooldown, the learned capacity and the wait and
/// rejection counts all come back from the journal after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_state_survives_a_restart() {
    let (dir, server, mut client) = start(restart_config).await;
    create_tenant(&mut client, "ent", "ENTERPRISE", Some(20)).await;
    create_tenant(&mut client, "pro", "PRO", None).await;
    patch_ok(&mut client, "/v1/platform/pools/standard_voice", json!({"capacity": 7, "reserved": {"premium": 1, "priority": 2}})).await;
    let patched = patch_ok(&mut client, "/v1/platform/pools/premium_voice", json!({"reserved": {}})).await;
    assert_eq!(patched["reserved"], json!({}));
    let ids = admit_n(&mut client, "ent", 7).await;
    assert_problem(&admit(&mut client, waiting_outbound("pro", 200)).await, 429, "PLATFORM_CAPACITY_FULL");
    reject_ok(&mut client, &ids[6], &json!({})).await;

    let before = get_json(&mut client, "/v1/platform").await;
    let standard = &before["pools"][1];
    assert_eq!((standard["capacity"].as_u64(), standard["learned_capacity"].as_u64()), (Some(7), Some(6)), "{standard}");
    assert_eq!(standard["reserved"], json!({"premium": 1, "priority": 2}));
    assert_eq!((standard["in_cooldown"].as_bool(), standard["active"].as_u64()), (Some(true), Some(6)));
    assert_eq!(standard["waits"]["priority"]["timed_out"], 1);
    drop(client);
    server.stop().await;

    let server = start_in(dir.path(), restart_config).await;
    let mut client = server.client().await;
    let after = get_json(&mut client, "/v1/platform").await;
    assert_eq!(after, before, "every pool comes back as it was");
    let cooling = admit(&mut client, outbound("ent")).await;
    assert_problem(&cooling, 503, "PLATFORM_CAPACITY_EXCEEDED");
    assert!(retry_after(&cooling) > 500, "the default cooldown of 600 s is still running");
    finish(server).await;
}

/// Bad arbitration input gets a 4xx naming the field and changes nothing: no event, no slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arbitration_input_is_refused_and_changes_nothing() {
    let (_dir, server, mut client) = start(|_| {}).await;
    create_tenant(&mut client, "ent", "ENTERPRISE", None).await;
    let live = call_id(&admit(&mut client, outbound("ent")).await);
    let seq_before = server.system.inspect(|d| d.last_seq).await.unwrap();
    let platform_before = get_json(&mut client, "/v1/platform").await;

    let call = |extra: Value| {
        let mut body = outbound("ent");
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, field) in [
        (json!({"wait_ms": -1}), "wait_ms"),
        (json!({"wait_ms": "x"}), "wait_ms"),
        (json!({"wait_ms": 1.5}), "wait_ms"),
        (json!({"voice": "gold"}), "voice"),
        (json!({"fallback": "yes"}), "fallback"),
    ] {
        let response = admit(&mut client, call(extra.clone())).await;
        assert_eq!(assert_problem(&response, 422, "INVALID_FIELD")["field"], field, "{extra}");
    }
    for (body, field) in [
        (json!({"reserved": {"gold": 1}}), "reserved.gold"),
        (json!({"capacity": 0}), "capacity"),
        (json!({"capacity": "ten"}), "capacity"),
        (json!({}), "capacity"),
    ] {
        let response = client.patch("/v1/platform/pools/standard_voice", &body).await.unwrap();
        assert_eq!(assert_problem(&response, 422, "INVALID_FIELD")["field"], field, "{body}");
    }
    let response = client.patch("/v1/platform/pools/standard_voice", &json!({"reserved": {"premium": -1}})).await.unwrap();
    assert!(assert_problem(&response, 422, "INVALID_FIELD")["field"].as_str().unwrap().starts_with("reserved"), "{}", response.text());
    let response = client.patch("/v1/platform/pools/no_such_pool", &json!({"capacity": 3})).await.unwrap();
    assert_problem(&response, 404, "NOT_FOUND");
    let response = client.patch("/v1/platform", &json!({"capacity": 0})).await.unwrap();
    assert_eq!(assert_problem(&response, 422, "INVALID_FIELD")["field"], "capacity");
    let response = reject(&mut client, &live, &json!({"retry_after_s": 0})).await;
    assert_eq!(assert_problem(&response, 422, "INVALID_FIELD")["field"], "retry_after_s");

    assert_eq!(server.system.inspect(|d| d.last_seq).await.unwrap(), seq_before, "bad requests appended journal events");
    assert_eq!(get_json(&mut client, "/v1/platform").await, platform_before);
    assert_eq!(active_calls(&mut client, "ent").await, 1);
    finish(server).await;
}

/// Repeats of one report that arrive before the first has ended the call (a webhook retried on
/// a slow answer) count one rejection and all answer the same record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_of_a_provider_rejection_count_once() {
    let (_dir, server, mut client) = start(|_| {}).await;
    create_tenant(&mut client, "ent", "ENTERPRISE", Some(20)).await;
    let ids = admit_n(&mut client, "ent", 3).await;
    let mut answers = Vec::new();
    for id in &ids {
        let repeats = vec![json!({"retry_after_s": 30}); 4];
        answers.extend(post_at_once(&server, &format!("/v1/calls/{id}/provider-rejected"), repeats).await);
    }
    let standard = pool(&mut client, STANDARD_POOL).await;
    assert_eq!(standard["provider_rejections"], 3, "one rejection per rejected call, however often it is reported");
    assert_metrics(&mut client, &["switchboard_provider_rate_limits_total{pool=\"standard_voice\"} 3"]).await;
    for response in &answers {
        assert_eq!((response.status, response.json()["outcome"].as_str()), (200, Some("provider_rejected")), "{}", response.text());
    }
    finish(server).await;
}

/// A provider rejection racing the call's normal end is one or the other: rejected first (200
/// `provider_rejected`, and the end answers that record) or ended first (409 `CALL_ENDED`,
/// nothing counted), never a 200 that says "completed" beside a counted rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_rejection_racing_the_end_is_one_or_the_other() {
    for round in 0..10 {
        let (_dir, server, mut client) = start(|_| {}).await;
        create_tenant(&mut client, "ent", "ENTERPRISE", None).await;
        let id = call_id(&admit(&mut client, outbound("ent")).await);
        let (mut reporter, mut webhook) = (server.client().await, server.client().await);
        let (reject_path, end_path) = (format!("/v1/calls/{id}/provider-rejected"), format!("/v1/calls/{id}/end"));
        let reject = tokio::spawn(async move { reporter.post(&reject_path, &json!({"retry_after_s": 30})).await.expect("request") });
        let end = tokio::spawn(async move { webhook.post(&end_path, &json!({})).await.expect("request") });
        let (rejected, ended) = (answer(reject).await, answer(end).await);
        assert_eq!(ended.status, 200, "{}", ended.text());
        let outcome = get_json(&mut client, &format!("/v1/calls/{id}")).await["outcome"].as_str().unwrap().to_owned();
        let standard = pool(&mut client, STANDARD_POOL).await;
        let context =
            format!("round {round}: provider-rejected {} {}; final outcome {outcome}; pool {standard}", rejected.status, rejected.text());
        if rejected.status == 200 {
            assert_eq!(rejected.json()["outcome"], "provider_rejected", "{context}");
        }
        match outcome.as_str() {
            "provider_rejected" => assert_eq!(standard["provider_rejections"], 1, "{context}"),
            "completed" => {
                assert_ne!(rejected.status, 200, "{context}");
                assert_eq!(
                    (standard["provider_rejections"].as_u64(), standard["in_cooldown"].as_bool()),
                    (Some(0), Some(false)),
                    "{context}"
                );
            }
            other => panic!("unexpected outcome {other}: {context}"),
        }
        finish(server).await;
    }
}
