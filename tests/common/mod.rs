//! Shared by the integration tests: a real server on a loopback port with a real sled journal
//! in a temporary directory, and a real HTTP client.

#![allow(dead_code)] // Each test binary uses a different part of this module.

pub mod dialer;
pub mod process;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use switchboard::client::{Client, Response};
use switchboard::config::Config;
use switchboard::server::{Running, spawn};
use switchboard_actors::system::System;

/// Events a fresh journal gets at boot: one `PoolConfigured` per default pool.
pub const BOOT_EVENTS: u64 = 2;

pub const TOKEN: &str = "test-admin-token-0123456789";

pub struct TestServer {
    pub running: Running,
    pub system: Arc<System>,
    pub data_dir: PathBuf,
}

/// Starts a server on `127.0.0.1:0` with its journal in `data_dir`, and waits until ready.
pub async fn start_in(data_dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config { data_dir: data_dir.to_owned(), ..Config::default() };
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let mut running = spawn(config, listener, Some(TOKEN.to_owned())).await.expect("server starts");
    let system = running.ready().await.expect("server boots");
    TestServer { running, system, data_dir: data_dir.to_owned() }
}

impl TestServer {
    pub async fn client(&self) -> Client {
        Client::connect(self.running.address, Some(TOKEN.to_owned())).await.expect("connect")
    }

    pub async fn stop(self) {
        self.running.shutdown().await.expect("clean shutdown");
    }
}

/// Pools as plain counters: no headroom reserved for higher classes (the foundation's tests
/// count capacity; the arbitration tests use the default reservations).
pub fn no_reservations(config: &mut Config) {
    for pool in config.pools.values_mut() {
        pool.reserved.clear();
    }
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("switchboard-test-").tempdir().expect("temp dir")
}

pub async fn create_tenant(client: &mut Client, id: &str, plan: &str, limit_override: Option<u32>) -> Response {
    let mut body = json!({"id": id, "plan": plan});
    if let Some(limit) = limit_override {
        body["concurrent_limit_override"] = limit.into();
    }
    let response = client.post("/v1/tenants", &body).await.expect("request");
    assert_eq!(response.status, 201, "create tenant {id}: {}", response.text());
    response
}

pub async fn create_line(client: &mut Client, id: &str, tenant: &str, channels: u32) -> Response {
    let response = client.post("/v1/lines", &json!({"id": id, "tenant_id": tenant, "channels": channels})).await.expect("request");
    assert_eq!(response.status, 201, "create line {id}: {}", response.text());
    response
}

pub async fn set_capacity(client: &mut Client, capacity: u32) {
    let response = client.patch("/v1/platform", &json!({"capacity": capacity})).await.expect("request");
    assert_eq!(response.status, 200, "{}", response.text());
}

pub async fn admit(client: &mut Client, body: Value) -> Response {
    client.post("/v1/calls", &body).await.expect("request")
}

pub async fn end(client: &mut Client, call_id: &str) -> Response {
    client.post(&format!("/v1/calls/{call_id}/end"), &json!({})).await.expect("request")
}

pub async fn get_json(client: &mut Client, path: &str) -> Value {
    let response = client.get(path).await.expect("request");
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    response.json()
}

/// How long a test waits for something asynchronous, and how often it looks.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);
pub const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Polls `GET path` (bounded by `PATIENCE`) until `ready` holds; returns the body as it was then.
pub async fn poll_json(client: &mut Client, path: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let body = get_json(client, path).await;
        if ready(&body) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "{path} never got to: {what}; it is {body}");
        tokio::time::sleep(POLL).await;
    }
}

/// Checks that `value` is the API object `object` (`"callback"`, `"campaign"`, …) with this
/// id, and returns it.
pub fn is_object(value: Value, object: &str, id: &str) -> Value {
    assert_eq!((value["object"].as_str(), value["id"].as_str()), (Some(object), Some(id)), "{value}");
    value
}

/// `GET /v1/{object}s/{id}`, checked to be that object.
pub async fn get_object(client: &mut Client, object: &str, id: &str) -> Value {
    is_object(get_json(client, &format!("/v1/{object}s/{id}")).await, object, id)
}

/// Polls `/v1/{object}s/{id}` (bounded) until `ready` holds; returns it as it was then.
pub async fn wait_object(client: &mut Client, object: &str, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    is_object(poll_json(client, &format!("/v1/{object}s/{id}"), what, ready).await, object, id)
}

/// Asserts a problem+json response with this status and code; returns its body.
pub fn assert_problem(response: &Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    let body = response.json();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    body
}

/// The live actors' state equals the journal writer's durable state.
pub async fn assert_live_equals_durable(system: &System) {
    let live = system.live_digest().await.expect("live digest");
    let durable = system.inspect(|d| d.digest()).await.expect("durable digest");
    assert_eq!(live, durable, "live state differs from the journal's");
}

/// splitmix64: a tiny seeded generator; tests print the seed so a failure replays.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    /// Uniform in `0..len` (len > 0), for indexing.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
}
