//! Bearer-token auth on `/v1`: refused without or with a wrong token, open probes, optional
//! auth on `/metrics`, and the token generated on first start.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;
use switchboard::client::{Client, Response};
use switchboard::config::Config;
use switchboard::server::{Running, spawn};

async fn client_with(server: &TestServer, token: Option<&str>) -> Client {
    Client::connect(server.running.address, token.map(str::to_owned)).await.expect("connect")
}

fn assert_unauthorized(response: &Response) {
    let problem = assert_problem(response, 401, "UNAUTHORIZED");
    assert_eq!(response.header("www-authenticate"), Some("Bearer"), "{problem}");
    assert!(!problem.to_string().contains(TOKEN), "never echoes the token: {problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_without_a_token_is_401_with_www_authenticate_bearer() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut anonymous = client_with(&server, None).await;
    let requests = [
        ("GET", "/v1/platform", None),
        ("GET", "/v1/calls", None),
        ("GET", "/v1/calls/call_000000000001", None),
        ("GET", "/v1/tenants/acme", None),
        ("POST", "/v1/tenants", Some(json!({"id": "acme", "plan": "PRO"}))),
        ("POST", "/v1/calls", Some(json!({"tenant_id": "acme", "direction": "inbound"}))),
        ("PATCH", "/v1/platform", Some(json!({"capacity": 50}))),
        // Unknown routes under /v1 are not revealed to a caller without the token.
        ("GET", "/v1", None),
        ("GET", "/v1/no-such-route", None),
        ("DELETE", "/v1/platform", None),
    ];
    for (method, path, body) in &requests {
        let response = anonymous.send(method, path, body.as_ref(), &[]).await.expect("request");
        assert_unauthorized(&response);
    }
    // Auth comes before body parsing: a malformed body without a token is still a 401.
    let response =
        anonymous.send_raw("POST", "/v1/tenants", b"{oops".to_vec(), &[("content-type", "application/json")]).await.expect("request");
    assert_unauthorized(&response);

    // None of it changed anything.
    let mut admin = server.client().await;
    assert_problem(&admin.get("/v1/tenants/acme").await.expect("request"), 404, "NOT_FOUND");
    assert_eq!(get_json(&mut admin, "/v1/platform").await["capacity"], 5);
    assert_eq!(server.system.inspect(|d| d.last_seq).await.expect("inspect"), BOOT_EVENTS, "nothing was journaled after boot");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_with_a_wrong_token_is_401() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = client_with(&server, None).await;
    let almost = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let longer = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    let wrong = ["Bearer wrong-token-0123456789", almost.as_str(), longer.as_str(), "Bearer ", "Bearer", basic.as_str(), TOKEN];
    for authorization in wrong {
        let response = client.send("GET", "/v1/platform", None, &[("authorization", authorization)]).await.expect("request");
        assert_unauthorized(&response);
        let response = client
            .send("POST", "/v1/tenants", Some(&json!({"id": "acme", "plan": "PRO"})), &[("authorization", authorization)])
            .await
            .expect("request");
        assert_unauthorized(&response);
    }
    let mut wrong_client = client_with(&server, Some("another-token-of-some-length")).await;
    assert_unauthorized(&wrong_client.get("/v1/calls").await.expect("request"));
    assert_eq!(server.system.inspect(|d| d.last_seq).await.expect("inspect"), BOOT_EVENTS, "nothing was journaled after boot");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_with_the_right_token_works() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = client_with(&server, Some(TOKEN)).await;
    let platform = get_json(&mut client, "/v1/platform").await;
    assert_eq!(platform["object"], "platform");
    create_tenant(&mut client, "acme", "PRO", None).await;
    let admitted = admit(&mut client, json!({"tenant_id": "acme", "direction": "inbound"})).await;
    assert_eq!(admitted.status, 201, "{}", admitted.text());
    assert_eq!(get_json(&mut client, "/v1/calls").await["data"].as_array().map(Vec::len), Some(1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    // RFC 9110 §11.1: the auth-scheme is a case-insensitive token.
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = client_with(&server, None).await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let authorization = format!("{scheme} {TOKEN}");
        let response = client.send("GET", "/v1/platform", None, &[("authorization", authorization.as_str())]).await.expect("request");
        assert_eq!(response.status, 200, "{scheme}: {}", response.text());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_need_no_token() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut anonymous = client_with(&server, None).await;
    let health = anonymous.get("/healthz").await.expect("request");
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["status"], "ok");
    let ready = anonymous.get("/readyz").await.expect("request");
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["status"], "ready");
    let metrics = anonymous.get("/metrics").await.expect("request");
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    assert!(metrics.header("content-type").is_some_and(|c| c.starts_with("application/openmetrics-text")));
    // A wrong token on an open route does not turn it into a 401 either.
    let mut wrong = client_with(&server, Some("not-the-token-at-all")).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(wrong.get(path).await.expect("request").status, 200, "{path}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_require_auth_makes_metrics_need_the_token() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |config| config.metrics_require_auth = true).await;
    let mut anonymous = client_with(&server, None).await;
    assert_unauthorized(&anonymous.get("/metrics").await.expect("request"));
    let mut wrong = client_with(&server, Some("not-the-token-at-all")).await;
    assert_unauthorized(&wrong.get("/metrics").await.expect("request"));
    let mut admin = client_with(&server, Some(TOKEN)).await;
    let metrics = admin.get("/metrics").await.expect("request");
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    // The probes stay open: orchestrators call them without credentials.
    assert_eq!(anonymous.get("/healthz").await.expect("request").status, 200);
    assert_eq!(anonymous.get("/readyz").await.expect("request").status, 200);
    server.stop().await;
}

/// Starts a server with no token configured anywhere, so it must use or generate the file.
async fn start_without_token(data_dir: &Path) -> (Running, Client) {
    let config = Config { data_dir: data_dir.to_owned(), admin_token: None, ..Config::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let mut running = spawn(config, listener, None).await.expect("server starts");
    running.ready().await.expect("server boots");
    let client = Client::connect(running.address, Some(running.admin_token.clone())).await.expect("connect");
    (running, client)
}

fn read_token_file(data_dir: &Path) -> (String, u32) {
    let path = data_dir.join("admin_token");
    let token = std::fs::read_to_string(&path).expect("the admin_token file exists");
    let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
    (token, mode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_generated_on_first_start_stored_0600_and_accepted() {
    let dir = temp_dir();
    assert!(!dir.path().join("admin_token").exists());
    let (running, mut client) = start_without_token(dir.path()).await;

    let (stored, mode) = read_token_file(dir.path());
    assert_eq!(mode, 0o600, "the token file is private: {mode:o}");
    let token = stored.trim();
    assert!(token.len() >= 32, "long enough: {} chars", token.len());
    assert!(token.bytes().all(|b| b.is_ascii_graphic()), "usable in a header");
    assert_eq!(token, running.admin_token);

    let platform = client.get("/v1/platform").await.expect("request");
    assert_eq!(platform.status, 200, "{}", platform.text());
    let mut anonymous = Client::connect(running.address, None).await.expect("connect");
    assert_unauthorized(&anonymous.get("/v1/platform").await.expect("request"));
    let mut fixed = Client::connect(running.address, Some(TOKEN.to_owned())).await.expect("connect");
    assert_unauthorized(&fixed.get("/v1/platform").await.expect("request"));
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_token_is_reused_after_a_restart() {
    let dir = temp_dir();
    let (running, mut client) = start_without_token(dir.path()).await;
    let first = running.admin_token.clone();
    create_tenant(&mut client, "acme", "PRO", None).await;
    let (file_before, _) = read_token_file(dir.path());
    let modified_before = std::fs::metadata(dir.path().join("admin_token")).expect("metadata").modified().expect("mtime");
    drop(client);
    running.shutdown().await.expect("clean shutdown");

    let (running, mut client) = start_without_token(dir.path()).await;
    assert_eq!(running.admin_token, first, "the same token after a restart");
    let (file_after, mode) = read_token_file(dir.path());
    assert_eq!(file_after, file_before, "the file is unchanged");
    assert_eq!(mode, 0o600);
    let modified_after = std::fs::metadata(dir.path().join("admin_token")).expect("metadata").modified().expect("mtime");
    assert_eq!(modified_after, modified_before, "the file was not rewritten");
    // The old token still works, and so does the state made with it.
    let tenant = get_json(&mut client, "/v1/tenants/acme").await;
    assert_eq!(tenant["plan"], "PRO");
    running.shutdown().await.expect("clean shutdown");
}
