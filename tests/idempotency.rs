//! `Idempotency-Key` on `POST /v1/calls`: a retried admission is answered with the original
//! response instead of admitting a second call, across restarts and after the call ended.

mod common;
use common::*;

use std::sync::Arc;

use serde_json::{Value, json};
use switchboard::client::{Client, Response};

fn call_body() -> Value {
    json!({"tenant_id": "acme", "direction": "outbound", "to": "+14155550123", "provider_call_id": "prov-1"})
}

async fn admit_with_key(client: &mut Client, body: &Value, key: &str) -> Response {
    client.send("POST", "/v1/calls", Some(body), &[("idempotency-key", key)]).await.expect("request")
}

fn call_id(response: &Response) -> String {
    response.json()["call_id"].as_str().unwrap_or_else(|| panic!("a call_id in {}", response.text())).to_owned()
}

fn assert_first_admission(response: &Response) {
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.header("idempotent-replayed"), None, "a first admission is not a replay");
}

fn assert_replay_of(response: &Response, original: &Response) {
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.header("idempotent-replayed"), Some("true"));
    assert_eq!(response.json(), original.json(), "the original body, replayed");
    assert_eq!(response.header("location"), original.header("location"));
}

async fn active_calls(client: &mut Client, tenant: &str) -> Value {
    get_json(client, &format!("/v1/tenants/{tenant}")).await["active_calls"].clone()
}

async fn listed_calls(client: &mut Client, tenant: &str) -> Vec<Value> {
    let list = get_json(client, &format!("/v1/calls?tenant_id={tenant}")).await;
    list["data"].as_array().expect("a data array").clone()
}

/// A server with tenant `acme` on plan PRO (limit 5).
async fn start_with_tenant(dir: &std::path::Path) -> (TestServer, Client) {
    let server = start_in(dir, |_| {}).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "acme", "PRO", None).await;
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_and_body_replays_the_original_response_without_a_second_call() {
    let dir = temp_dir();
    let (server, mut client) = start_with_tenant(dir.path()).await;
    let first = admit_with_key(&mut client, &call_body(), "order-42-attempt").await;
    assert_first_admission(&first);
    let seq_after_first = server.system.inspect(|d| d.last_seq).await.expect("inspect");

    for _ in 0..3 {
        let again = admit_with_key(&mut client, &call_body(), "order-42-attempt").await;
        assert_replay_of(&again, &first);
        assert_eq!(call_id(&again), call_id(&first));
    }
    assert_eq!(active_calls(&mut client, "acme").await, 1);
    assert_eq!(listed_calls(&mut client, "acme").await.len(), 1);
    assert_eq!(get_json(&mut client, "/v1/platform").await["active"], 1);
    assert_eq!(server.system.inspect(|d| d.last_seq).await.expect("inspect"), seq_after_first, "replays journal nothing");
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_request_spelled_differently_is_still_a_replay() {
    let dir = temp_dir();
    let (server, mut client) = start_with_tenant(dir.path()).await;
    let first = admit_with_key(&mut client, &call_body(), "k-spelling").await;
    assert_first_admission(&first);
    // Field order, whitespace and explicit defaults do not make it a different request.
    let respelled =
        br#"{ "provider_call_id":"prov-1", "to":"+14155550123", "already_connected": false, "direction":"outbound", "tenant_id":"acme" }"#;
    let again = client
        .send_raw("POST", "/v1/calls", respelled.to_vec(), &[("content-type", "application/json"), ("idempotency-key", "k-spelling")])
        .await
        .expect("request");
    assert_replay_of(&again, &first);
    assert_eq!(active_calls(&mut client, "acme").await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_works_after_a_restart() {
    let dir = temp_dir();
    let (server, mut client) = start_with_tenant(dir.path()).await;
    let first = admit_with_key(&mut client, &call_body(), "survives-restarts").await;
    assert_first_admission(&first);
    drop(client);
    server.stop().await;

    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let again = admit_with_key(&mut client, &call_body(), "survives-restarts").await;
    assert_replay_of(&again, &first);
    assert_eq!(call_id(&again), call_id(&first));
    assert_eq!(active_calls(&mut client, "acme").await, 1);
    assert_eq!(listed_calls(&mut client, "acme").await.len(), 1);
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_the_call_ended_returns_the_call_as_admitted() {
    let dir = temp_dir();
    let (server, mut client) = start_with_tenant(dir.path()).await;
    let first = admit_with_key(&mut client, &call_body(), "late-retry").await;
    assert_first_admission(&first);
    let id = call_id(&first);
    let ended = end(&mut client, &id).await;
    assert_eq!(ended.status, 200, "{}", ended.text());
    assert_eq!(ended.json()["status"], "ended");

    let again = admit_with_key(&mut client, &call_body(), "late-retry").await;
    assert_replay_of(&again, &first);
    assert_eq!(again.json()["status"], "active", "the 201 body as it was first sent");
    // The retry did not resurrect or re-admit anything.
    assert_eq!(get_json(&mut client, &format!("/v1/calls/{id}")).await["status"], "ended");
    assert_eq!(active_calls(&mut client, "acme").await, 0);
    assert!(listed_calls(&mut client, "acme").await.is_empty());
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_with_a_different_body_is_422_idempotency_key_reused() {
    let dir = temp_dir();
    let (server, mut client) = start_with_tenant(dir.path()).await;
    let first = admit_with_key(&mut client, &call_body(), "reused-key").await;
    assert_first_admission(&first);
    let seq_after_first = server.system.inspect(|d| d.last_seq).await.expect("inspect");

    let mut different_to = call_body();
    different_to["to"] = "+14155550999".into();
    let mut inbound = call_body();
    inbound["direction"] = "inbound".into();
    let mut without_provider_id = call_body();
    without_provider_id.as_object_mut().expect("object").remove("provider_call_id");
    for body in [different_to, inbound, without_provider_id] {
        let response = admit_with_key(&mut client, &body, "reused-key").await;
        let problem = assert_problem(&response, 422, "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(problem["field"], "Idempotency-Key", "{problem}");
    }
    assert_eq!(active_calls(&mut client, "acme").await, 1);
    assert_eq!(server.system.inspect(|d| d.last_seq).await.expect("inspect"), seq_after_first);
    // The original is still replayable.
    assert_replay_of(&admit_with_key(&mut client, &call_body(), "reused-key").await, &first);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_admit_exactly_one_call() {
    const REQUESTS: usize = 20;
    let dir = temp_dir();
    let (server, mut client) = start_with_tenant(dir.path()).await;
    // Separate connections, connected up front, released together.
    let mut clients = Vec::new();
    for _ in 0..REQUESTS {
        clients.push(server.client().await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(REQUESTS));
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            admit_with_key(&mut client, &call_body(), "stampede").await
        });
    }
    let responses = tasks.join_all().await;

    let mut admitted_ids = Vec::new();
    let mut in_flight = 0;
    for response in &responses {
        match response.status {
            201 => admitted_ids.push(call_id(response)),
            409 => {
                assert_problem(response, 409, "IDEMPOTENCY_KEY_IN_FLIGHT");
                assert!(response.header("retry-after").is_some(), "a 409 in flight says when to retry");
                in_flight += 1;
            }
            other => panic!("unexpected {other}: {}", response.text()),
        }
    }
    assert!(!admitted_ids.is_empty(), "at least one request was admitted ({in_flight} in flight)");
    admitted_ids.dedup();
    assert_eq!(admitted_ids.len(), 1, "every 201 names the same call: {admitted_ids:?}");
    let fresh = responses.iter().filter(|r| r.status == 201 && r.header("idempotent-replayed").is_none()).count();
    assert_eq!(fresh, 1, "exactly one response is the first admission");

    let calls = listed_calls(&mut client, "acme").await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["call_id"], admitted_ids[0].as_str());
    assert_eq!(active_calls(&mut client, "acme").await, 1);
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_key_is_422_naming_the_header() {
    let dir = temp_dir();
    let (server, mut client) = start_with_tenant(dir.path()).await;
    let seq_before = server.system.inspect(|d| d.last_seq).await.expect("inspect");
    let too_long = "k".repeat(256);
    for key in ["", too_long.as_str(), "clé-non-ascii", "has space", "tab\there"] {
        let response = admit_with_key(&mut client, &call_body(), key).await;
        let problem = assert_problem(&response, 422, "INVALID_FIELD");
        assert_eq!(problem["field"], "Idempotency-Key", "{key:?}: {problem}");
    }
    assert_eq!(active_calls(&mut client, "acme").await, 0);
    assert!(listed_calls(&mut client, "acme").await.is_empty());
    assert_eq!(server.system.inspect(|d| d.last_seq).await.expect("inspect"), seq_before, "nothing was journaled");

    // The bound itself is fine.
    let longest = "k".repeat(255);
    assert_first_admission(&admit_with_key(&mut client, &call_body(), &longest).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_admission_is_not_remembered() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "solo", "PRO", Some(1)).await;
    let blocking = admit(&mut client, json!({"tenant_id": "solo", "direction": "outbound"})).await;
    assert_eq!(blocking.status, 201, "{}", blocking.text());

    let body = json!({"tenant_id": "solo", "direction": "outbound", "to": "+14155550123"});
    let denied = admit_with_key(&mut client, &body, "retry-me").await;
    let problem = assert_problem(&denied, 429, "TENANT_LIMIT_REACHED");
    assert!(denied.header("retry-after").is_some(), "{problem}");

    // A denial is deliberately not remembered under the key: the client was told to come back
    // after Retry-After, like a provider retrying a webhook, and that retry must be judged on
    // the capacity available then, not answered with the stale 429.
    let ended = end(&mut client, &call_id(&blocking)).await;
    assert_eq!(ended.status, 200, "{}", ended.text());
    let retried = admit_with_key(&mut client, &body, "retry-me").await;
    assert_first_admission(&retried);
    // From now on the key is remembered, and a further retry is a replay.
    let replayed = admit_with_key(&mut client, &body, "retry-me").await;
    assert_replay_of(&replayed, &retried);
    assert_eq!(active_calls(&mut client, "solo").await, 1);
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}
