//! The central path over real HTTP and a real journal: limits bind atomically, the code names
//! the limit that bound, denials release what earlier steps reserved, inbound calls already
//! connected are always tracked, ends release everything exactly once.

mod common;

use common::*;
use serde_json::json;
use switchboard::client::Client;

async fn clients(server: &TestServer, count: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(server.client().await);
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_for_a_limit_of_five_admit_exactly_five() {
    let dir = temp_dir();
    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "pro", "PRO", None).await;
    set_capacity(&mut client, 1000).await;
    let tasks: Vec<_> = clients(&server, 100)
        .await
        .into_iter()
        .map(|mut c| tokio::spawn(async move { admit(&mut c, json!({"tenant_id": "pro", "direction": "outbound"})).await }))
        .collect();
    let mut admitted = 0;
    for task in tasks {
        let response = task.await.unwrap();
        if response.status == 201 {
            admitted += 1;
        } else {
            let body = assert_problem(&response, 429, "TENANT_LIMIT_REACHED");
            assert_eq!((body["current_active"].as_u64(), body["limit"].as_u64()), (Some(5), Some(5)));
            assert_eq!(response.header("retry-after"), Some("2"));
            assert_eq!(body["retry_after_s"], 2);
        }
    }
    assert_eq!(admitted, 5);
    assert_eq!(get_json(&mut client, "/v1/tenants/pro").await["active_calls"], 5);
    assert_eq!(get_json(&mut client, "/v1/platform").await["active"], 5);
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

/// Seed 000's checklist: two PRO tenants start 5 calls each at once on a capacity of 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pro_tenants_spiking_on_capacity_five_get_five_calls_and_the_rest_name_the_platform() {
    let dir = temp_dir();
    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "pro-a", "PRO", None).await;
    create_tenant(&mut client, "pro-b", "PRO", None).await;
    let tasks: Vec<_> = clients(&server, 10)
        .await
        .into_iter()
        .enumerate()
        .map(|(n, mut c)| {
            let tenant = if n % 2 == 0 { "pro-a" } else { "pro-b" };
            tokio::spawn(async move { admit(&mut c, json!({"tenant_id": tenant, "direction": "outbound"})).await })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        let response = task.await.unwrap();
        if response.status == 201 {
            admitted += 1;
        } else {
            let body = assert_problem(&response, 429, "PLATFORM_CAPACITY_FULL");
            assert_eq!((body["current_active"].as_u64(), body["limit"].as_u64()), (Some(5), Some(5)));
        }
    }
    assert_eq!(admitted, 5);
    // The denied requests reserved tenant slots first; every one was released again.
    let a = get_json(&mut client, "/v1/tenants/pro-a").await["active_calls"].as_u64().unwrap();
    let b = get_json(&mut client, "/v1/tenants/pro-b").await["active_calls"].as_u64().unwrap();
    assert_eq!(a + b, 5);
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_denial_names_the_limit_that_bound() {
    let dir = temp_dir();
    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "trial", "TRIAL", None).await;
    create_tenant(&mut client, "pro", "PRO", None).await;
    create_line(&mut client, "+14155550100", "pro", 2).await;

    assert_eq!(admit(&mut client, json!({"tenant_id": "trial", "direction": "outbound"})).await.status, 201);
    let denied = admit(&mut client, json!({"tenant_id": "trial", "direction": "outbound"})).await;
    assert_problem(&denied, 429, "TENANT_LIMIT_REACHED");

    let on_line = json!({"tenant_id": "pro", "line_id": "+14155550100", "direction": "outbound"});
    assert_eq!(admit(&mut client, on_line.clone()).await.status, 201);
    assert_eq!(admit(&mut client, on_line.clone()).await.status, 201);
    let busy = assert_problem(&admit(&mut client, on_line).await, 429, "LINE_BUSY");
    assert_eq!((busy["current_active"].as_u64(), busy["limit"].as_u64()), (Some(2), Some(2)));
    // The line's denial released the tenant slot it had taken first.
    assert_eq!(get_json(&mut client, "/v1/tenants/pro").await["active_calls"], 2);

    assert_eq!(admit(&mut client, json!({"tenant_id": "pro", "direction": "outbound"})).await.status, 201);
    assert_eq!(admit(&mut client, json!({"tenant_id": "pro", "direction": "outbound"})).await.status, 201);
    let full =
        assert_problem(&admit(&mut client, json!({"tenant_id": "pro", "direction": "outbound"})).await, 429, "PLATFORM_CAPACITY_FULL");
    assert_eq!((full["current_active"].as_u64(), full["limit"].as_u64()), (Some(5), Some(5)));
    assert_eq!(get_json(&mut client, "/v1/tenants/pro").await["active_calls"], 4);

    let metrics = client.get("/metrics").await.unwrap().text();
    for reason in ["TENANT_LIMIT_REACHED", "LINE_BUSY", "PLATFORM_CAPACITY_FULL"] {
        assert!(metrics.contains(&format!("switchboard_admissions_total{{outcome=\"denied\",reason=\"{reason}\"}} 1")), "{metrics}");
    }
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

/// Seed 000 §2.2 and its checklist: an inbound call during a full platform is recorded anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_already_connected_is_recorded_over_every_limit_and_alerted() {
    let dir = temp_dir();
    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "payg", "PAYG", None).await;
    create_line(&mut client, "+14155550101", "payg", 1).await;
    set_capacity(&mut client, 1).await;
    let first = admit(&mut client, json!({"tenant_id": "payg", "line_id": "+14155550101", "direction": "outbound"})).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.json()["over_limit"], false);

    let checked_inbound = admit(&mut client, json!({"tenant_id": "payg", "line_id": "+14155550101", "direction": "inbound"})).await;
    assert_problem(&checked_inbound, 429, "TENANT_LIMIT_REACHED");

    let live_inbound = json!({"tenant_id": "payg", "line_id": "+14155550101", "direction": "inbound", "already_connected": true, "provider_call_id": "prov-1", "from": "+447700900123"});
    let forced = admit(&mut client, live_inbound).await;
    assert_eq!(forced.status, 201, "{}", forced.text());
    let call = forced.json();
    assert_eq!(call["over_limit"], true);
    assert_eq!(call["provider_call_id"], "prov-1");

    assert_eq!(get_json(&mut client, "/v1/tenants/payg").await["active_calls"], 2);
    assert_eq!(get_json(&mut client, "/v1/lines/+14155550101").await["active_calls"], 2);
    let platform = get_json(&mut client, "/v1/platform").await;
    assert_eq!((platform["active"].as_u64(), platform["capacity"].as_u64(), platform["available"].as_u64()), (Some(2), Some(1), Some(0)));
    let listed = get_json(&mut client, "/v1/calls?tenant_id=payg").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    let metrics = client.get("/metrics").await.unwrap().text();
    assert!(metrics.contains("switchboard_inbound_over_limit_total 1"), "{metrics}");

    // Ending the forced call brings every counter back under its limit.
    assert_eq!(end(&mut client, call["call_id"].as_str().unwrap()).await.status, 200);
    assert_eq!(get_json(&mut client, "/v1/platform").await["active"], 1);
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_releases_every_slot_once_and_duplicates_replay_the_final_record() {
    let dir = temp_dir();
    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "starter", "STARTER", None).await;
    create_line(&mut client, "+14155550102", "starter", 2).await;
    let body = json!({"tenant_id": "starter", "line_id": "+14155550102", "direction": "outbound", "to": "+14155550199"});
    let call = admit(&mut client, body.clone()).await.json();
    let id = call["call_id"].as_str().unwrap().to_owned();
    assert_eq!(call["status"], "active");

    let ended = client.post(&format!("/v1/calls/{id}/end"), &json!({"outcome": "completed", "duration_s": 42})).await.unwrap();
    assert_eq!(ended.status, 200);
    let ended = ended.json();
    assert_eq!(
        (ended["status"].as_str(), ended["outcome"].as_str(), ended["duration_s"].as_u64()),
        (Some("ended"), Some("completed"), Some(42))
    );

    // Webhooks are retried: a duplicate end changes nothing and answers the same record.
    let duplicate = client.post(&format!("/v1/calls/{id}/end"), &json!({"outcome": "failed"})).await.unwrap();
    assert_eq!(duplicate.status, 200);
    assert_eq!(duplicate.json(), ended);
    assert_eq!(get_json(&mut client, &format!("/v1/calls/{id}")).await, ended);
    for path in ["/v1/tenants/starter", "/v1/lines/+14155550102", "/v1/platform"] {
        let active = get_json(&mut client, path).await;
        assert_eq!(active.get("active_calls").or(active.get("active")).and_then(|v| v.as_u64()), Some(0), "{path}: {active}");
    }
    let heartbeat = client.post(&format!("/v1/calls/{id}/heartbeat"), &json!({})).await.unwrap();
    assert_problem(&heartbeat, 409, "CALL_ENDED");
    assert_problem(&end(&mut client, "call_999999999999").await, 404, "NOT_FOUND");

    // The slot is really free: the tenant's single slot admits again.
    assert_eq!(admit(&mut client, body).await.status, 201);
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

/// Seed 000 §9 and its checklist: capacity changes live; lowering it ends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_capacity_changes_live_without_ending_calls() {
    let dir = temp_dir();
    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "ent", "ENTERPRISE", Some(20)).await;
    create_tenant(&mut client, "payg", "PAYG", None).await;
    let outbound = json!({"tenant_id": "ent", "direction": "outbound"});
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(admit(&mut client, outbound.clone()).await.json()["call_id"].as_str().unwrap().to_owned());
    }
    assert_problem(&admit(&mut client, outbound.clone()).await, 429, "PLATFORM_CAPACITY_FULL");

    set_capacity(&mut client, 10).await;
    for _ in 0..5 {
        ids.push(admit(&mut client, outbound.clone()).await.json()["call_id"].as_str().unwrap().to_owned());
    }
    let platform = get_json(&mut client, "/v1/platform").await;
    assert_eq!((platform["capacity"].as_u64(), platform["active"].as_u64()), (Some(10), Some(10)));
    assert_eq!(platform["sold_limits_total"], 21);
    assert_eq!(platform["oversubscription_ratio"], 2.1);

    set_capacity(&mut client, 3).await;
    assert_eq!(get_json(&mut client, "/v1/platform").await["active"], 10, "lowering capacity ends no call");
    for id in &ids[..7] {
        assert_eq!(end(&mut client, id).await.status, 200);
    }
    assert_problem(&admit(&mut client, outbound.clone()).await, 429, "PLATFORM_CAPACITY_FULL");
    assert_eq!(end(&mut client, &ids[7]).await.status, 200);
    assert_eq!(admit(&mut client, outbound).await.status, 201, "back under capacity, admissions resume");
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_limits_follow_plan_and_override_changes() {
    let dir = temp_dir();
    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    let created = create_tenant(&mut client, "acme", "PAYG", None).await.json();
    assert_eq!((created["plan"].as_str(), created["concurrent_limit"].as_u64()), (Some("PAYG"), Some(1)));
    let patched = client.patch("/v1/tenants/acme", &json!({"plan": "PRO", "name": "Acme"})).await.unwrap().json();
    assert_eq!(
        (patched["plan"].as_str(), patched["concurrent_limit"].as_u64(), patched["name"].as_str()),
        (Some("PRO"), Some(5), Some("Acme"))
    );
    let patched = client.patch("/v1/tenants/acme", &json!({"concurrent_limit_override": 2})).await.unwrap().json();
    assert_eq!(patched["concurrent_limit"], 2);
    let outbound = json!({"tenant_id": "acme", "direction": "outbound"});
    assert_eq!(admit(&mut client, outbound.clone()).await.status, 201);
    assert_eq!(admit(&mut client, outbound.clone()).await.status, 201);
    assert_problem(&admit(&mut client, outbound.clone()).await, 429, "TENANT_LIMIT_REACHED");
    let cleared = client.patch("/v1/tenants/acme", &json!({"concurrent_limit_override": null, "name": null})).await.unwrap().json();
    assert_eq!(
        (cleared["concurrent_limit"].as_u64(), cleared["name"].is_null(), cleared["active_calls"].as_u64()),
        (Some(5), true, Some(2))
    );
    assert_eq!(admit(&mut client, outbound).await.status, 201);
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_calls_list_filters_and_paginates_in_id_order() {
    let dir = temp_dir();
    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "a", "PRO", Some(10)).await;
    create_tenant(&mut client, "b", "PRO", Some(10)).await;
    set_capacity(&mut client, 100).await;
    let mut a_ids = Vec::new();
    for n in 0..9 {
        let tenant = if n % 3 == 0 { "b" } else { "a" };
        let id =
            admit(&mut client, json!({"tenant_id": tenant, "direction": "outbound"})).await.json()["call_id"].as_str().unwrap().to_owned();
        if tenant == "a" {
            a_ids.push(id);
        }
    }
    let mut seen = Vec::new();
    let mut path = "/v1/calls?tenant_id=a&limit=4".to_owned();
    for _ in 0..10 {
        let page = get_json(&mut client, &path).await;
        seen.extend(page["data"].as_array().unwrap().iter().map(|c| c["call_id"].as_str().unwrap().to_owned()));
        if page["has_more"] == false {
            break;
        }
        path = format!("/v1/calls?tenant_id=a&limit=4&starting_after={}", page["next_starting_after"].as_str().unwrap());
    }
    assert_eq!(seen, a_ids);
    assert_eq!(get_json(&mut client, "/v1/calls?limit=200").await["data"].as_array().unwrap().len(), 9);
    server.stop().await;
}
