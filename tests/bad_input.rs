//! Bad input gets a clear 4xx problem+json naming the field and the reason, and changes
//! nothing: no event is journaled, no slot is taken, no call exists.

mod common;
use common::*;

use serde_json::{Value, json};
use switchboard::client::{Client, Response};

const ACME_LINE: &str = "+14155550100";
const GLOBEX_LINE: &str = "+14155550199";
/// A well-formed E.164 number that no line has.
const NO_SUCH_LINE: &str = "+14155550142";
/// A well-formed call id that was never handed out.
const NO_SUCH_CALL: &str = "call_000000009999";

/// Everything a bad request could have changed, read through the API and the journal.
#[derive(Debug, PartialEq)]
struct Observed {
    last_seq: u64,
    platform: Value,
    tenants: Vec<Value>,
    lines: Vec<Value>,
    calls: Value,
}

/// A server with two tenants (`acme`, `globex`), one line each, and what it looked like
/// before the bad requests.
struct Fixture {
    _dir: tempfile::TempDir,
    server: TestServer,
    client: Client,
    before: Observed,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = temp_dir();
        let server = start_in(dir.path(), |_| {}).await;
        let mut client = server.client().await;
        create_tenant(&mut client, "acme", "PRO", None).await;
        create_tenant(&mut client, "globex", "PRO", None).await;
        create_line(&mut client, ACME_LINE, "acme", 2).await;
        create_line(&mut client, GLOBEX_LINE, "globex", 2).await;
        let before = observe(&server).await;
        assert_eq!(before.calls, json!([]), "the fixture starts without calls");
        Fixture { _dir: dir, server, client, before }
    }

    /// Asserts that nothing changed since `before`, that live and durable state agree, and
    /// stops the server.
    async fn assert_nothing_changed(self) {
        let after = observe(&self.server).await;
        assert_eq!(after.last_seq, self.before.last_seq, "bad requests appended journal events");
        assert_eq!(after.platform["capacity"], self.before.platform["capacity"]);
        assert_eq!(after.platform["active"], self.before.platform["active"]);
        for (before, after) in self.before.tenants.iter().zip(&after.tenants) {
            assert_eq!(after["active_calls"], before["active_calls"], "tenant {}", before["id"]);
        }
        assert_eq!(after, self.before);
        assert_live_equals_durable(&self.server.system).await;
        drop(self.client);
        self.server.stop().await;
    }
}

async fn observe(server: &TestServer) -> Observed {
    // A fresh connection: some tests leave theirs closed by the server (413).
    let mut client = server.client().await;
    let last_seq = server.system.inspect(|d| d.last_seq).await.expect("inspect the journal");
    let platform = get_json(&mut client, "/v1/platform").await;
    let mut tenants = Vec::new();
    for id in ["acme", "globex"] {
        tenants.push(get_json(&mut client, &format!("/v1/tenants/{id}")).await);
    }
    let mut lines = Vec::new();
    for id in [ACME_LINE, GLOBEX_LINE] {
        lines.push(get_json(&mut client, &format!("/v1/lines/{id}")).await);
    }
    let calls = get_json(&mut client, "/v1/calls").await["data"].clone();
    Observed { last_seq, platform, tenants, lines, calls }
}

async fn send_json(client: &mut Client, method: &str, path: &str, body: Value) -> Response {
    client.send(method, path, Some(&body), &[]).await.expect("request")
}

async fn send_bytes(client: &mut Client, method: &str, path: &str, body: &[u8], content_type: &str) -> Response {
    client.send_raw(method, path, body.to_vec(), &[("content-type", content_type)]).await.expect("request")
}

/// Asserts a 422 problem naming `field`; returns its body.
fn assert_invalid(response: &Response, code: &str, field: &str) -> Value {
    assert_eq!(response.status, 422, "expected a 422 naming {field:?}, got {}", response.text());
    let body = assert_problem(response, 422, code);
    assert_eq!(body["field"], field, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "a problem says why: {body}");
    body
}

/// Asserts a problem+json response with this status whatever its code; returns its body.
fn assert_problem_status(response: &Response, status: u16) -> Value {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    let body = response.json();
    assert_eq!(body["status"], status, "{body}");
    assert!(body["code"].as_str().is_some_and(|c| !c.is_empty()), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_malformed_json_and_changes_nothing() {
    let mut f = Fixture::new().await;
    let cases: [(&str, &str, &[u8]); 8] = [
        ("POST", "/v1/tenants", br#"{"id": "#),
        ("POST", "/v1/tenants", br#"{"id": "x", "plan": "PRO",}"#),
        ("POST", "/v1/tenants", b"not json at all"),
        ("POST", "/v1/tenants", br#"{"id": "x", "plan": "PRO"} trailing"#),
        ("POST", "/v1/lines", br#"{"id": "+14155550111", "tenant_id": 'acme'}"#),
        ("POST", "/v1/calls", br#"{"tenant_id": "acme", "direction": "inbound""#),
        ("PATCH", "/v1/platform", br#"{capacity: 3}"#),
        ("PATCH", "/v1/tenants/acme", b"\xff\xfe{}"),
    ];
    for (method, path, body) in cases {
        let response = send_bytes(&mut f.client, method, path, body, "application/json").await;
        let problem = assert_problem(&response, 400, "MALFORMED_JSON");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("not valid JSON")), "{method} {path}: {problem}");
    }
    f.assert_nothing_changed().await;
}

/// serde reads a struct from a JSON array, field by field in order: `["acme", null,
/// "outbound"]` admitted a call and `[]` ended one. A body must be an object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_json_but_not_an_object_is_422_and_changes_nothing() {
    let mut f = Fixture::new().await;
    let cases: [(&str, &str, &[u8]); 7] = [
        ("POST", "/v1/calls", br#"["acme", null, "outbound"]"#),
        ("POST", "/v1/tenants", br#"["arr", null, "PRO", null, false]"#),
        ("POST", "/v1/lines", br#"["+14155550111", "acme"]"#),
        ("PATCH", "/v1/platform", b"[6]"),
        ("PATCH", "/v1/tenants/acme", br#"[null, "ENTERPRISE"]"#),
        ("POST", "/v1/tenants/acme/credits", br#"[5, "arr"]"#),
        ("POST", "/v1/tenants", b"\"acme\""),
    ];
    for (method, path, body) in cases {
        let response = send_bytes(&mut f.client, method, path, body, "application/json").await;
        let problem = assert_problem(&response, 422, "INVALID_FIELD");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("JSON object")), "{method} {path}: {problem}");
    }
    f.assert_nothing_changed().await;
}

/// `null` clears a field that can be cleared (a tenant's name, its limit override); on one
/// that cannot it is refused, naming the field, not taken for "absent" with a 200 for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_for_a_field_that_cannot_be_cleared_is_422_naming_it() {
    let mut f = Fixture::new().await;
    for (path, body, field) in [
        ("/v1/tenants/acme", json!({"plan": null}), "plan"),
        ("/v1/tenants/acme", json!({"prepaid": null}), "prepaid"),
        ("/v1/platform/pools/standard_voice", json!({"capacity": null}), "capacity"),
        ("/v1/platform/pools/standard_voice", json!({"reserved": null}), "reserved"),
    ] {
        let response = send_json(&mut f.client, "PATCH", path, body).await;
        assert_invalid(&response, "INVALID_FIELD", field);
    }
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_422_naming_the_field() {
    let mut f = Fixture::new().await;
    let cases = [
        ("POST", "/v1/tenants", json!({"id": "initech", "plan": "PRO", "colour": "red"}), "colour"),
        ("POST", "/v1/lines", json!({"id": "+14155550111", "tenant_id": "acme", "chanels": 2}), "chanels"),
        ("POST", "/v1/calls", json!({"tenant_id": "acme", "direction": "inbound", "priority": 1}), "priority"),
        ("PATCH", "/v1/platform", json!({"capacity": 3, "region": "eu"}), "region"),
        ("PATCH", "/v1/tenants/acme", json!({"limit": 3}), "limit"),
    ];
    for (method, path, body, field) in cases {
        let response = send_json(&mut f.client, method, path, body).await;
        let problem = assert_invalid(&response, "INVALID_FIELD", field);
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("unknown field")), "{problem}");
    }
    // An unknown field on end is refused before the call is even looked up.
    let response = send_json(&mut f.client, "POST", &format!("/v1/calls/{NO_SUCH_CALL}/end"), json!({"reason": "x"})).await;
    assert_invalid(&response, "INVALID_FIELD", "reason");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_are_422_naming_the_field() {
    let mut f = Fixture::new().await;
    let cases = [
        ("POST", "/v1/tenants", json!({"id": 5, "plan": "PRO"}), "id"),
        ("POST", "/v1/tenants", json!({"id": "initech", "plan": ["PRO"]}), "plan"),
        ("POST", "/v1/tenants", json!({"id": "initech", "plan": "PRO", "concurrent_limit_override": "3"}), "concurrent_limit_override"),
        ("POST", "/v1/lines", json!({"id": "+14155550111", "tenant_id": "acme", "channels": "two"}), "channels"),
        ("POST", "/v1/lines", json!({"id": "+14155550111", "tenant_id": "acme", "channels": 1.5}), "channels"),
        ("POST", "/v1/calls", json!({"tenant_id": "acme", "direction": "sideways"}), "direction"),
        ("POST", "/v1/calls", json!({"tenant_id": "acme", "direction": "inbound", "already_connected": "yes"}), "already_connected"),
        ("POST", "/v1/calls", json!({"tenant_id": "acme", "direction": "inbound", "to": 14155550123_u64}), "to"),
        ("PATCH", "/v1/platform", json!({"capacity": "big"}), "capacity"),
        ("PATCH", "/v1/tenants/acme", json!({"plan": 3}), "plan"),
    ];
    for (method, path, body, field) in cases {
        let response = send_json(&mut f.client, method, path, body).await;
        assert_invalid(&response, "INVALID_FIELD", field);
    }
    let response = send_json(&mut f.client, "POST", &format!("/v1/calls/{NO_SUCH_CALL}/end"), json!({"duration_s": "long"})).await;
    assert_invalid(&response, "INVALID_FIELD", "duration_s");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_string_enum_value_is_422_naming_the_field_not_malformed_json() {
    // The body is valid JSON; only `direction` has the wrong type. serde_json reports a
    // non-string, non-object enum value as a syntax-class error ("expected value"), which must
    // not be mistaken for a malformed body.
    let mut f = Fixture::new().await;
    for direction in [json!(7), json!(null), json!(true), json!(["inbound"])] {
        let response = admit(&mut f.client, json!({"tenant_id": "acme", "direction": direction})).await;
        assert_invalid(&response, "INVALID_FIELD", "direction");
    }
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_required_fields_are_422_naming_the_field() {
    let mut f = Fixture::new().await;
    let cases = [
        ("POST", "/v1/tenants", json!({"plan": "PRO"}), "id"),
        ("POST", "/v1/tenants", json!({"id": "initech"}), "plan"),
        ("POST", "/v1/lines", json!({"id": "+14155550111"}), "tenant_id"),
        ("POST", "/v1/lines", json!({"tenant_id": "acme"}), "id"),
        ("POST", "/v1/calls", json!({"tenant_id": "acme"}), "direction"),
        ("POST", "/v1/calls", json!({"direction": "inbound"}), "tenant_id"),
        ("PATCH", "/v1/platform", json!({}), "capacity"),
    ];
    for (method, path, body, field) in cases {
        let response = send_json(&mut f.client, method, path, body).await;
        let problem = assert_invalid(&response, "INVALID_FIELD", field);
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("missing field")), "{problem}");
    }
    // No body at all reads as `{}`: still the first required field is named.
    let response = f.client.send_raw("POST", "/v1/tenants", Vec::new(), &[]).await.expect("request");
    assert_invalid(&response, "INVALID_FIELD", "id");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_e164_numbers_are_422_naming_the_field() {
    let mut f = Fixture::new().await;
    for bad in ["14155550123", "+0123456789", "+1", "+1234567890123456", "+1 415 555 0123", "+1415555012a", ""] {
        let response = send_json(&mut f.client, "POST", "/v1/lines", json!({"id": bad, "tenant_id": "acme"})).await;
        let problem = assert_invalid(&response, "INVALID_FIELD", "id");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("E.164")), "{problem}");
        for field in ["line_id", "to", "from"] {
            let mut body = json!({"tenant_id": "acme", "direction": "inbound"});
            body[field] = bad.into();
            let response = admit(&mut f.client, body).await;
            assert_invalid(&response, "INVALID_FIELD", field);
        }
    }
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ids_and_text_are_422_naming_the_field() {
    let mut f = Fixture::new().await;
    let long_id = "a".repeat(65);
    let long_name = "n".repeat(201);
    let cases = [
        ("POST", "/v1/tenants", json!({"id": "", "plan": "PRO"}), "id"),
        ("POST", "/v1/tenants", json!({"id": "has space", "plan": "PRO"}), "id"),
        ("POST", "/v1/tenants", json!({"id": "-leading-dash", "plan": "PRO"}), "id"),
        ("POST", "/v1/tenants", json!({"id": long_id, "plan": "PRO"}), "id"),
        ("POST", "/v1/tenants", json!({"id": "initech", "plan": "PRO", "name": ""}), "name"),
        ("POST", "/v1/tenants", json!({"id": "initech", "plan": "PRO", "name": long_name}), "name"),
        ("POST", "/v1/tenants", json!({"id": "initech", "plan": "PRO", "name": "bell\u{7}"}), "name"),
        ("PATCH", "/v1/tenants/acme", json!({"name": "tab\there"}), "name"),
        ("POST", "/v1/lines", json!({"id": "+14155550111", "tenant_id": "no/slash"}), "tenant_id"),
        ("POST", "/v1/calls", json!({"tenant_id": "acme!", "direction": "inbound"}), "tenant_id"),
        ("POST", "/v1/calls", json!({"tenant_id": "acme", "direction": "inbound", "provider_call_id": ""}), "provider_call_id"),
    ];
    for (method, path, body, field) in cases {
        let response = send_json(&mut f.client, method, path, body).await;
        assert_invalid(&response, "INVALID_FIELD", field);
    }
    let response = send_json(&mut f.client, "POST", &format!("/v1/calls/{NO_SUCH_CALL}/end"), json!({"outcome": "Hung Up!"})).await;
    assert_invalid(&response, "INVALID_FIELD", "outcome");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_negative_and_absurd_numbers_are_422_naming_the_field() {
    let mut f = Fixture::new().await;
    let line = |channels: Value| json!({"id": "+14155550111", "tenant_id": "acme", "channels": channels});
    let tenant = |limit: Value| json!({"id": "initech", "plan": "PRO", "concurrent_limit_override": limit});
    let cases = [
        ("POST", "/v1/lines", line(json!(0)), "channels"),
        ("POST", "/v1/lines", line(json!(-1)), "channels"),
        ("POST", "/v1/lines", line(json!(1_000_000)), "channels"),
        ("POST", "/v1/lines", line(json!(1_001)), "channels"),
        ("POST", "/v1/lines", line(json!(u64::MAX)), "channels"),
        ("PATCH", "/v1/platform", json!({"capacity": 0}), "capacity"),
        ("PATCH", "/v1/platform", json!({"capacity": -3}), "capacity"),
        ("PATCH", "/v1/platform", json!({"capacity": 1_000_000_000}), "capacity"),
        ("POST", "/v1/tenants", tenant(json!(0)), "concurrent_limit_override"),
        ("POST", "/v1/tenants", tenant(json!(-1)), "concurrent_limit_override"),
        ("POST", "/v1/tenants", tenant(json!(1_000_000)), "concurrent_limit_override"),
        ("PATCH", "/v1/tenants/acme", json!({"concurrent_limit_override": 0}), "concurrent_limit_override"),
        ("PATCH", "/v1/tenants/acme", json!({"concurrent_limit_override": 1_000_000_000}), "concurrent_limit_override"),
    ];
    for (method, path, body, field) in cases {
        let response = send_json(&mut f.client, method, path, body.clone()).await;
        assert_invalid(&response, "INVALID_FIELD", field);
    }
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_end_fields_are_422_and_the_call_stays_active() {
    let mut f = Fixture::new().await;
    let admitted = admit(&mut f.client, json!({"tenant_id": "acme", "line_id": ACME_LINE, "direction": "inbound"})).await;
    assert_eq!(admitted.status, 201, "{}", admitted.text());
    let call_id = admitted.json()["call_id"].as_str().expect("call_id").to_owned();
    f.before = observe(&f.server).await;
    let path = format!("/v1/calls/{call_id}/end");
    for duration in [json!(100 * 365 * 24 * 3600_u64), json!(u64::MAX), json!(-1), json!(31 * 24 * 3600 + 1)] {
        let response = send_json(&mut f.client, "POST", &path, json!({"duration_s": duration})).await;
        assert_invalid(&response, "INVALID_FIELD", "duration_s");
    }
    for outcome in ["", "UPPER", "with space", &"x".repeat(33)] {
        let response = send_json(&mut f.client, "POST", &path, json!({"outcome": outcome})).await;
        assert_invalid(&response, "INVALID_FIELD", "outcome");
    }
    let call = get_json(&mut f.client, &format!("/v1/calls/{call_id}")).await;
    assert_eq!(call["status"], "active", "{call}");
    assert_eq!(f.before.calls.as_array().map(Vec::len), Some(1));
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_plan_is_422_field_plan() {
    let mut f = Fixture::new().await;
    for plan in ["GOLD", "pro", ""] {
        let response = send_json(&mut f.client, "POST", "/v1/tenants", json!({"id": "initech", "plan": plan})).await;
        let problem = assert_invalid(&response, "INVALID_FIELD", "plan");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("PRO")), "names the configured plans: {problem}");
        let response = send_json(&mut f.client, "PATCH", "/v1/tenants/acme", json!({"plan": plan})).await;
        assert_invalid(&response, "INVALID_FIELD", "plan");
    }
    let response = f.client.get("/v1/tenants/initech").await.expect("request");
    assert_problem(&response, 404, "NOT_FOUND");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_for_an_unknown_tenant_is_422_unknown_tenant() {
    let mut f = Fixture::new().await;
    let response = admit(&mut f.client, json!({"tenant_id": "nobody", "direction": "outbound"})).await;
    assert_invalid(&response, "UNKNOWN_TENANT", "tenant_id");
    // Even an already connected inbound call, which bypasses the limits, needs a real tenant.
    let response = admit(&mut f.client, json!({"tenant_id": "nobody", "direction": "inbound", "already_connected": true})).await;
    assert_invalid(&response, "UNKNOWN_TENANT", "tenant_id");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_for_an_unknown_tenant_is_422_unknown_tenant() {
    let mut f = Fixture::new().await;
    let response = send_json(&mut f.client, "POST", "/v1/lines", json!({"id": "+14155550111", "tenant_id": "nobody"})).await;
    assert_invalid(&response, "UNKNOWN_TENANT", "tenant_id");
    let response = f.client.get("/v1/lines/+14155550111").await.expect("request");
    assert_problem(&response, 404, "NOT_FOUND");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_on_an_unknown_line_is_422_unknown_line() {
    let mut f = Fixture::new().await;
    let response = admit(&mut f.client, json!({"tenant_id": "acme", "line_id": NO_SUCH_LINE, "direction": "inbound"})).await;
    assert_invalid(&response, "UNKNOWN_LINE", "line_id");
    let response =
        admit(&mut f.client, json!({"tenant_id": "acme", "line_id": NO_SUCH_LINE, "direction": "inbound", "already_connected": true}))
            .await;
    assert_invalid(&response, "UNKNOWN_LINE", "line_id");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_on_another_tenants_line_is_422_line_not_owned() {
    let mut f = Fixture::new().await;
    let response = admit(&mut f.client, json!({"tenant_id": "acme", "line_id": GLOBEX_LINE, "direction": "outbound"})).await;
    let problem = assert_invalid(&response, "LINE_NOT_OWNED", "line_id");
    assert!(!problem.to_string().contains("globex"), "does not reveal the owner: {problem}");
    let response =
        admit(&mut f.client, json!({"tenant_id": "acme", "line_id": GLOBEX_LINE, "direction": "inbound", "already_connected": true})).await;
    assert_invalid(&response, "LINE_NOT_OWNED", "line_id");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_connected_outbound_call_is_422() {
    let mut f = Fixture::new().await;
    let response =
        admit(&mut f.client, json!({"tenant_id": "acme", "line_id": ACME_LINE, "direction": "outbound", "already_connected": true})).await;
    let problem = assert_invalid(&response, "INVALID_FIELD", "already_connected");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("inbound")), "{problem}");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_64_kib_is_413_body_too_large() {
    let mut f = Fixture::new().await;
    const LIMIT: usize = 64 * 1024;
    // Valid JSON with a valid shape, just too big: the size alone is refused.
    let filler = "n".repeat(LIMIT);
    let body = serde_json::to_vec(&json!({"id": "initech", "plan": "PRO", "name": filler})).expect("serialise");
    assert!(body.len() > LIMIT);
    let response = send_bytes(&mut f.client, "POST", "/v1/tenants", &body, "application/json").await;
    let problem = assert_problem(&response, 413, "BODY_TOO_LARGE");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("65536")), "{problem}");

    // One byte over the limit, on a call admission, on a fresh connection.
    let mut client = f.server.client().await;
    let mut body = serde_json::to_vec(&json!({"tenant_id": "acme", "direction": "inbound", "provider_call_id": "p"})).expect("serialise");
    let padding = LIMIT + 1 - body.len();
    body.splice(1..1, std::iter::repeat_n(b' ', padding));
    assert_eq!(body.len(), LIMIT + 1);
    let response = send_bytes(&mut client, "POST", "/v1/calls", &body, "application/json").await;
    assert_problem(&response, 413, "BODY_TOO_LARGE");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_is_415() {
    let mut f = Fixture::new().await;
    let tenant = br#"{"id": "initech", "plan": "PRO"}"#;
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "application/xml", "multipart/form-data; boundary=x"] {
        let response = send_bytes(&mut f.client, "POST", "/v1/tenants", tenant, content_type).await;
        let problem = assert_problem(&response, 415, "UNSUPPORTED_MEDIA_TYPE");
        assert_eq!(problem["field"], "content-type", "{problem}");
    }
    // No content-type at all, with a body.
    let response = f.client.send_raw("POST", "/v1/tenants", tenant.to_vec(), &[]).await.expect("request");
    assert_problem(&response, 415, "UNSUPPORTED_MEDIA_TYPE");
    let call = br#"{"tenant_id": "acme", "direction": "inbound"}"#;
    let response = send_bytes(&mut f.client, "POST", "/v1/calls", call, "text/plain").await;
    assert_problem(&response, 415, "UNSUPPORTED_MEDIA_TYPE");
    let response = send_bytes(&mut f.client, "PATCH", "/v1/platform", br#"{"capacity": 9}"#, "text/json").await;
    assert_problem(&response, 415, "UNSUPPORTED_MEDIA_TYPE");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_404_on_end_heartbeat_and_get() {
    let mut f = Fixture::new().await;
    for id in [NO_SUCH_CALL, "call_", "call_12x", "banana", "call_99999999999999999999999"] {
        let response = end(&mut f.client, id).await;
        assert_problem(&response, 404, "NOT_FOUND");
        let response = f.client.send("POST", &format!("/v1/calls/{id}/end"), None, &[]).await.expect("request");
        assert_problem(&response, 404, "NOT_FOUND");
        let response = f.client.send("POST", &format!("/v1/calls/{id}/heartbeat"), None, &[]).await.expect("request");
        assert_problem(&response, 404, "NOT_FOUND");
        let response = f.client.get(&format!("/v1/calls/{id}")).await.expect("request");
        let problem = assert_problem(&response, 404, "NOT_FOUND");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains(id)), "{problem}");
    }
    let response = f.client.get("/v1/tenants/nobody").await.expect("request");
    assert_problem(&response, 404, "NOT_FOUND");
    let response = send_json(&mut f.client, "PATCH", "/v1/tenants/nobody", json!({"plan": "PRO"})).await;
    assert_problem(&response, 404, "NOT_FOUND");
    let response = f.client.get(&format!("/v1/lines/{NO_SUCH_LINE}")).await.expect("request");
    assert_problem(&response, 404, "NOT_FOUND");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_are_409_already_exists() {
    let mut f = Fixture::new().await;
    // Same id, same body: still a conflict, and the original is untouched.
    let response = send_json(&mut f.client, "POST", "/v1/tenants", json!({"id": "acme", "plan": "PRO"})).await;
    let problem = assert_problem(&response, 409, "ALREADY_EXISTS");
    assert_eq!(problem["field"], "id");
    let response = send_json(&mut f.client, "POST", "/v1/tenants", json!({"id": "acme", "plan": "TRIAL", "name": "Imposter"})).await;
    assert_problem(&response, 409, "ALREADY_EXISTS");
    let response = send_json(&mut f.client, "POST", "/v1/lines", json!({"id": ACME_LINE, "tenant_id": "globex", "channels": 5})).await;
    let problem = assert_problem(&response, 409, "ALREADY_EXISTS");
    assert_eq!(problem["field"], "id");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_list_query_parameters_are_400() {
    let mut f = Fixture::new().await;
    for (query, field) in [("limit=0", "limit"), ("limit=1000", "limit"), ("limit=201", "limit")] {
        let response = f.client.get(&format!("/v1/calls?{query}")).await.expect("request");
        let problem = assert_problem_status(&response, 400);
        assert_eq!(problem["field"], field, "{query}: {problem}");
    }
    let response = f.client.get("/v1/calls?starting_after=garbage").await.expect("request");
    let problem = assert_problem(&response, 400, "INVALID_QUERY");
    assert_eq!(problem["field"], "starting_after");
    for (query, field) in
        [("limit=-1", "limit"), ("limit=ten", "limit"), ("limit=", "limit"), ("colour=red", "colour"), ("limit=5&limit=6", "limit")]
    {
        let response = f.client.get(&format!("/v1/calls?{query}")).await.expect("request");
        let problem = assert_problem(&response, 400, "INVALID_QUERY");
        assert_eq!(problem["field"], field, "{query}: {problem}");
    }
    // The bounds themselves are fine.
    for query in ["limit=1", "limit=200", "starting_after=call_000000000001"] {
        let response = f.client.get(&format!("/v1/calls?{query}")).await.expect("request");
        assert_eq!(response.status, 200, "{query}: {}", response.text());
    }
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_problem() {
    let mut f = Fixture::new().await;
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/v1/nope"),
        ("GET", "/v2/calls"),
        ("POST", "/v1/calls/call_000000000001/explode"),
        ("GET", "/v1/tenants/acme/lines"),
    ] {
        let response = f.client.send(method, path, None, &[]).await.expect("request");
        assert_problem(&response, 404, "NOT_FOUND");
    }
    let response = send_json(&mut f.client, "POST", "/v1/tenant", json!({"id": "initech", "plan": "PRO"})).await;
    assert_problem(&response, 404, "NOT_FOUND");
    f.assert_nothing_changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_405_problem() {
    let mut f = Fixture::new().await;
    let cases = [
        ("DELETE", "/v1/tenants/acme"),
        ("PUT", "/v1/platform"),
        ("DELETE", "/v1/calls"),
        ("GET", "/v1/calls/call_000000000001/end"),
        ("GET", "/v1/tenants"),
        ("PATCH", "/v1/lines/+14155550100"),
        ("POST", "/healthz"),
        ("POST", "/metrics"),
    ];
    for (method, path) in cases {
        let response = f.client.send(method, path, Some(&json!({})), &[]).await.expect("request");
        assert_problem(&response, 405, "METHOD_NOT_ALLOWED");
    }
    f.assert_nothing_changed().await;
}
