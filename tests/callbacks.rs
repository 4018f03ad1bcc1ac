//! Missed calls and automatic callbacks (issue 5 §2–§4 and §6; seed 002 FR1–FR4 and its test
//! scenarios 1, 2, 4 and 5) over real HTTP, a real sled journal, and a real HTTP fake dialer on
//! loopback that records every dial request and answers each from a script: 2xx, 429 with
//! `Retry-After`, 500, or nothing until long after the dialer's timeout.
//!
//! What these tests prove:
//! - a callback line whose channels are full turns an inbound caller away busy (200
//!   `reject_busy`) and queues one high-priority entry per caller, counting repeats, while a
//!   `track` line and an already-connected call keep the old behaviour;
//! - a channel freeing on the line (an event: the backup scan is a minute away) dials the
//!   earliest missed caller, once, with the line's agent and the missed call's id, on a live
//!   outbound call the callback was admitted as; that call's end settles the entry;
//! - single attempt: an unanswered callback, a dialer 500 and a silent dialer fail the entry
//!   (a failed dial ends its call `dial_failed`) and nothing redials it until an operator
//!   retries; a dialer 429 is the pool's provider-rejection path and the entry waits pending;
//! - a prepaid tenant at or below the minimum holds its callbacks (`insufficient_credits`) and a
//!   top-up above it releases and dials them with no other trigger;
//! - the queue bound refuses new callers (429, or `callback_refused` on a turned-away call), the
//!   list, stats, retry and cancel API answer as documented, and bad input journals nothing;
//! - queues and statuses survive a restart byte for byte, and a pending entry is dispatched
//!   after it when a channel frees;
//! - operators retrying one failed callback at once reopen and dial it once;
//! - under seeded random interleavings (replay with `SWITCHBOARD_CALLBACKS_SEED`) no missed call
//!   is lost or counted twice, every entry ends in an explicit status, no attempt is dialled
//!   twice and no call is dialled twice.
//!
//! Three tests are regressions for server bugs these tests found: a dialled callback whose call
//! is live did not survive a restart; a channel freeing during a dispatch that made no progress
//! was forgotten until the backup scan; a `CALLBACK_WRONG_STATUS` problem's `status` member was
//! not the HTTP status.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::dialer::{Answer, Dial, FakeDialer, Fallback};
use common::*;
use serde_json::{Value, json};
use switchboard::client::{Client, Response};
use switchboard::config::Config;
use tokio::time::Instant;

const POOL: &str = "standard_voice";
const TENANT: &str = "acme";
const LINE: &str = "+14155550100";
/// `LINE` in a query string (`+` would read as a space).
const LINE_QUERY: &str = "%2B14155550100";
const AGENT: &str = "agent-7";
const ALICE: &str = "+14155550001";
const BOB: &str = "+14155550002";
const CAROL: &str = "+14155550003";
const DAVE: &str = "+14155550004";

// ---------------------------------------------------------------- the server and its API

/// Starts a server on `dir` with room for every test's calls in the default pool, no headroom
/// reserved per class, and the fake dialer (without one, entries queue but are not dialled).
async fn boot(dir: &Path, dialer: Option<&FakeDialer>, tweak: impl FnOnce(&mut Config)) -> (TestServer, Client) {
    let url = dialer.map(|d| d.url.clone());
    let server = start_in(dir, |config| {
        no_reservations(config);
        config.pools.get_mut(POOL).expect("the default pool").capacity = 100;
        config.dialer.url = url;
        tweak(config);
    })
    .await;
    let client = server.client().await;
    (server, client)
}

async fn last_seq(server: &TestServer) -> u64 {
    server.system.inspect(|d| d.last_seq).await.expect("inspect the journal")
}

/// Waits (bounded) until no callback dispatch is handed over or running.
async fn settle(server: &TestServer) {
    let deadline = Instant::now() + PATIENCE;
    while !server.system.callbacks_settled() {
        assert!(Instant::now() < deadline, "callback dispatches still running after {PATIENCE:?}");
        tokio::time::sleep(POLL).await;
    }
}

async fn new_tenant(client: &mut Client, id: &str, prepaid: bool) {
    let body = json!({"id": id, "plan": "PRO", "concurrent_limit_override": 50, "prepaid": prepaid});
    let response = client.post("/v1/tenants", &body).await.expect("request");
    assert_eq!(response.status, 201, "create tenant {id}: {}", response.text());
}

async fn callback_line(client: &mut Client, id: &str, tenant: &str, channels: u32, agent: Option<&str>) {
    let mut body = json!({"id": id, "tenant_id": tenant, "channels": channels, "on_busy": "callback"});
    if let Some(agent) = agent {
        body["agent_id"] = agent.into();
    }
    let response = client.post("/v1/lines", &body).await.expect("request");
    assert_eq!(response.status, 201, "create line {id}: {}", response.text());
    let line = response.json();
    assert_eq!((line["on_busy"].as_str(), line["agent_id"].as_str()), (Some("callback"), agent), "{line}");
}

/// A number to occupy channels with.
fn filler(n: u32) -> String {
    format!("+1415555{:04}", 9000 + n)
}

async fn inbound(client: &mut Client, tenant: &str, line: &str, from: &str) -> Response {
    admit(client, json!({"tenant_id": tenant, "line_id": line, "direction": "inbound", "from": from})).await
}

/// An inbound call that must be connected; returns its id.
async fn connect(client: &mut Client, tenant: &str, line: &str, from: &str) -> String {
    let response = inbound(client, tenant, line, from).await;
    assert_eq!(response.status, 201, "inbound from {from} on {line}: {}", response.text());
    response.json()["call_id"].as_str().expect("call_id").to_owned()
}

/// An inbound call that must be turned away busy and recorded; returns the answer.
async fn turned_away(client: &mut Client, tenant: &str, line: &str, from: &str) -> Value {
    let body = json!({"tenant_id": tenant, "line_id": line, "direction": "inbound", "from": from});
    turned_away_by(client, &body, None).await
}

/// `turned_away` for any inbound admission body, with an `Idempotency-Key` if given.
async fn turned_away_by(client: &mut Client, body: &Value, key: Option<&str>) -> Value {
    let headers: Vec<(&str, &str)> = key.map(|key| ("idempotency-key", key)).into_iter().collect();
    let response = client.send("POST", "/v1/calls", Some(body), &headers).await.expect("request");
    let (line, from) = (body["line_id"].as_str().expect("line_id"), body["from"].as_str().expect("from"));
    assert_eq!(response.status, 200, "inbound from {from} on {line}: {}", response.text());
    let body = response.json();
    assert_eq!((body["object"].as_str(), body["action"].as_str()), (Some("missed_call"), Some("reject_busy")), "{body}");
    assert_eq!(body["line_id"], line, "{body}");
    let id = body["missed_call_id"].as_str().unwrap_or_else(|| panic!("no missed_call_id: {body}"));
    assert!(id.starts_with("cb_"), "{body}");
    let entry = &body["callback"];
    assert_eq!((entry["id"].as_str(), entry["caller"].as_str()), (Some(id), Some(from)), "{body}");
    assert_eq!(body["missed_count"], entry["missed_count"], "{body}");
    body
}

fn id_of(turned: &Value) -> String {
    turned["missed_call_id"].as_str().expect("missed_call_id").to_owned()
}

async fn report(client: &mut Client, line: &str, body: Value) -> Response {
    client.post(&format!("/v1/lines/{line}/missed-calls"), &body).await.expect("request")
}

/// Ends a call with this outcome; it must end (200).
async fn end_with(client: &mut Client, call: &str, outcome: &str) -> Value {
    let response = client.post(&format!("/v1/calls/{call}/end"), &json!({"outcome": outcome})).await.expect("request");
    assert_eq!(response.status, 200, "end {call}: {}", response.text());
    response.json()
}

async fn callback(client: &mut Client, id: &str) -> Value {
    get_object(client, "callback", id).await
}

/// Polls an entry (bounded) until `ready` holds; returns it as it was then.
async fn wait_callback(client: &mut Client, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    wait_object(client, "callback", id, what, ready).await
}

async fn wait_status(client: &mut Client, id: &str, status: &str) -> Value {
    wait_callback(client, id, status, |e| e["status"] == status).await
}

/// Waits until the entry is `processing` with its dial request accepted.
async fn wait_dialled(client: &mut Client, id: &str) -> Value {
    let entry = wait_callback(client, id, "processing and dialled", |e| e["status"] == "processing" && e["dialed"] == true).await;
    assert!(entry["call_id"].is_string() && entry["failure_reason"].is_null(), "{entry}");
    entry
}

async fn list(client: &mut Client, query: &str) -> Value {
    let page = get_json(client, &format!("/v1/callbacks{query}")).await;
    assert_eq!(page["object"], "list", "{page}");
    page
}

fn ids(page: &Value) -> Vec<&str> {
    page["data"].as_array().expect("data").iter().map(|e| e["id"].as_str().expect("id")).collect()
}

async fn stats(client: &mut Client) -> Value {
    let stats = get_json(client, "/v1/callbacks/stats").await;
    assert_eq!(stats["object"], "callback_stats", "{stats}");
    let by_status = stats["by_status"].as_object().expect("by_status");
    let names: BTreeSet<&str> = by_status.keys().map(String::as_str).collect();
    let all = ["cancelled", "completed", "failed", "insufficient_credits", "on-hold", "pending", "processing"];
    assert_eq!(names, all.into_iter().collect(), "every status is counted: {stats}");
    assert_eq!(stats["total"].as_u64(), Some(by_status.values().map(|n| n.as_u64().expect("a count")).sum()), "{stats}");
    stats
}

async fn retry(client: &mut Client, id: &str) -> Response {
    client.post(&format!("/v1/callbacks/{id}/retry"), &json!({})).await.expect("request")
}

async fn cancel(client: &mut Client, id: &str) -> Response {
    client.send("DELETE", &format!("/v1/callbacks/{id}"), None, &[]).await.expect("request")
}

/// 409 `CALLBACK_WRONG_STATUS` naming the callback's status (`callback_status` and the detail).
fn assert_wrong_status(response: &Response, status: &str) {
    let body = assert_problem(response, 409, "CALLBACK_WRONG_STATUS");
    assert_eq!(body["callback_status"], status, "{body}");
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.starts_with(&format!("the callback is {status},")), "{body}");
}

async fn metrics(client: &mut Client) -> String {
    let response = client.get("/metrics").await.expect("request");
    assert_eq!(response.status, 200);
    response.text()
}

/// Polls the metrics (bounded) until `ready` holds; returns the text as it was then.
async fn wait_metrics(client: &mut Client, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = metrics(client).await;
        if ready(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "the metrics never showed {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// The value of one series in the metrics text (0 when it has not been created yet).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

fn events(text: &str, reason: &str) -> f64 {
    sample(text, &format!("switchboard_callback_events_total{{reason=\"{reason}\"}}"))
}

/// `(count, sum in seconds)` of the dispatch latency histogram.
fn dispatch_latency(text: &str) -> (f64, f64) {
    (sample(text, "switchboard_callback_dispatch_seconds_count"), sample(text, "switchboard_callback_dispatch_seconds_sum"))
}

/// Checks one dial request against the entry it calls back; returns its `call_id`.
fn check_dial(dial: &Dial, id: &str, caller: &str, line: &str, agent: Option<&str>) -> String {
    let body = &dial.body;
    let expected = json!({
        "to": caller,
        "line_id": line,
        "tenant_id": TENANT,
        "agent_id": agent,
        "call_id": body["call_id"],
        "is_auto_callback": true,
        "original_missed_call_id": id,
    });
    assert_eq!(*body, expected, "the dial request for {id}");
    body["call_id"].as_str().expect("call_id").to_owned()
}

// ---------------------------------------------------------------- seed 002 scenario 1

/// Scenario 1: 2 active inbound calls; a 3rd is turned away busy and logged as a missed call
/// with priority high; the same caller again counts on the same entry; another is a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_callback_line_turns_callers_away_busy_and_queues_one_entry_per_caller() {
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), Some(&dialer), |_| {}).await;
    new_tenant(&mut client, TENANT, false).await;
    callback_line(&mut client, LINE, TENANT, 2, Some(AGENT)).await;
    connect(&mut client, TENANT, LINE, &filler(1)).await;
    connect(&mut client, TENANT, LINE, &filler(2)).await;

    let turned = turned_away(&mut client, TENANT, LINE, ALICE).await;
    let alice = id_of(&turned);
    assert_eq!(turned["missed_count"], 1, "{turned}");
    let entry = turned["callback"].clone();
    let expected = json!({
        "object": "callback",
        "id": alice,
        "line_id": LINE,
        "tenant_id": TENANT,
        "caller": ALICE,
        "reason": "busy",
        "priority": "high",
        "status": "pending",
        "missed_at": entry["missed_at"],
        "last_missed_at": entry["missed_at"],
        "missed_count": 1,
        "call_id": null,
        "dialed": false,
        "failure_reason": null,
        "updated_at": entry["missed_at"],
    });
    assert_eq!(entry, expected);
    assert!(entry["missed_at"].as_str().is_some_and(|at| at.ends_with('Z')), "{entry}");
    assert_eq!(callback(&mut client, &alice).await, entry, "the entry as the API shows it");

    // The same caller again: the same entry counts a second missed attempt.
    let again = turned_away(&mut client, TENANT, LINE, ALICE).await;
    assert_eq!((id_of(&again), again["missed_count"].as_u64()), (alice.clone(), Some(2)), "{again}");
    let again = &again["callback"];
    assert_eq!((again["status"].as_str(), again["missed_at"].clone()), (Some("pending"), entry["missed_at"].clone()), "{again}");
    assert!(again["last_missed_at"].as_str() >= entry["missed_at"].as_str(), "{again}");
    // Reported by the platform (nobody answered): the same entry again, 200 rather than 201.
    let reported = report(&mut client, LINE, json!({"from": ALICE, "reason": "no_answer"})).await;
    assert_eq!(reported.status, 200, "{}", reported.text());
    assert_eq!((reported.json()["id"].as_str(), reported.json()["missed_count"].as_u64()), (Some(alice.as_str()), Some(3)));

    // Another caller: a new entry.
    let bob = id_of(&turned_away(&mut client, TENANT, LINE, BOB).await);
    assert_ne!(bob, alice);
    assert_eq!(callback(&mut client, &bob).await["missed_count"], 1);

    // A caller without a number cannot be called back: 422 naming `from`, nothing journaled.
    let before = last_seq(&server).await;
    let anonymous = admit(&mut client, json!({"tenant_id": TENANT, "line_id": LINE, "direction": "inbound"})).await;
    assert_eq!(assert_problem(&anonymous, 422, "INVALID_FIELD")["field"], "from");
    assert_eq!(last_seq(&server).await, before, "a refused call journals nothing");

    // A call that arrives already connected is recorded over the limit, as before: no entry.
    let connected = json!({"tenant_id": TENANT, "line_id": LINE, "direction": "inbound", "already_connected": true, "from": CAROL});
    let forced = admit(&mut client, connected).await;
    assert_eq!(forced.status, 201, "{}", forced.text());
    // A `track` line keeps the old answer to a full line: 429, no entry.
    let track = "+14155550200";
    let line = create_line(&mut client, track, TENANT, 1).await.json();
    assert_eq!((line["on_busy"].as_str(), line["agent_id"].clone()), (Some("track"), Value::Null), "{line}");
    connect(&mut client, TENANT, track, &filler(3)).await;
    assert_problem(&inbound(&mut client, TENANT, track, DAVE).await, 429, "LINE_BUSY");

    let page = list(&mut client, "").await;
    assert_eq!((ids(&page), page["total"].as_u64()), (vec![bob.as_str(), alice.as_str()], Some(2)), "newest first: {page}");
    assert_eq!(stats(&mut client).await["by_status"]["pending"], 2);
    let text = metrics(&mut client).await;
    assert_eq!((events(&text, "missed"), events(&text, "missed_again")), (2.0, 2.0));
    // The line is still full: nobody was dialled.
    settle(&server).await;
    assert!(dialer.dials().is_empty(), "a full line dials nobody: {:?}", dialer.dials());
    assert_live_equals_durable(&server.system).await;
}

/// A provider retries a webhook it got no answer to, with the same call, and a platform retries
/// with the same `Idempotency-Key`: each missed attempt counts once on the caller's entry, by
/// either endpoint, across a restart. A new attempt still counts, and a closed entry forgets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_missed_attempt_counts_once() {
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), None, |_| {}).await;
    new_tenant(&mut client, TENANT, false).await;
    callback_line(&mut client, LINE, TENANT, 1, None).await;
    connect(&mut client, TENANT, LINE, &filler(1)).await;
    let webhook =
        |call: &str| json!({"tenant_id": TENANT, "line_id": LINE, "direction": "inbound", "from": ALICE, "provider_call_id": call});

    let first = turned_away_by(&mut client, &webhook("CA1"), None).await;
    assert_eq!(first["missed_count"], 1, "{first}");
    let alice = id_of(&first);
    let before = last_seq(&server).await;
    let retried = turned_away_by(&mut client, &webhook("CA1"), None).await;
    assert_eq!(retried, first, "the retry answers what the first answered, word for word");
    assert_eq!(last_seq(&server).await, before, "a retry of a counted attempt journals nothing");

    let second = turned_away_by(&mut client, &webhook("CA2"), None).await;
    assert_eq!((id_of(&second), second["missed_count"].as_u64()), (alice.clone(), Some(2)), "a new call counts: {second}");
    // Without a provider call id, the key names the attempt.
    let keyed = json!({"tenant_id": TENANT, "line_id": LINE, "direction": "inbound", "from": ALICE});
    assert_eq!(turned_away_by(&mut client, &keyed, Some("wh-77")).await["missed_count"], 3);
    assert_eq!(turned_away_by(&mut client, &keyed, Some("wh-77")).await["missed_count"], 3);
    // The platform reporting a call the webhook already turned away: the same attempt.
    let reported = report(&mut client, LINE, json!({"from": ALICE, "provider_call_id": "CA2"})).await;
    assert_eq!((reported.status, reported.json()["missed_count"].as_u64()), (200, Some(3)), "{}", reported.text());
    let reported = report(&mut client, LINE, json!({"from": ALICE, "reason": "no_answer", "provider_call_id": "CA3"})).await;
    assert_eq!((reported.status, reported.json()["missed_count"].as_u64()), (200, Some(4)), "{}", reported.text());
    // Nothing names the attempt: it counts.
    assert_eq!(turned_away_by(&mut client, &keyed, None).await["missed_count"], 5);

    // A provider call id the API would refuse anywhere is refused here too, and changes nothing.
    let before = last_seq(&server).await;
    for bad in [json!(""), json!("x".repeat(129)), json!(7)] {
        let refused = report(&mut client, LINE, json!({"from": ALICE, "provider_call_id": bad})).await;
        assert_eq!(refused.json()["field"], "provider_call_id", "{}", refused.text());
        assert!(matches!(refused.status, 400 | 422), "{}", refused.text());
    }
    assert_eq!(last_seq(&server).await, before, "refused reports journal nothing");
    let text = metrics(&mut client).await;
    assert_eq!((events(&text, "missed"), events(&text, "missed_again"), events(&text, "missed_retried")), (1.0, 4.0, 3.0));
    assert_live_equals_durable(&server.system).await;

    // The entry remembers its attempts across a restart.
    server.stop().await;
    let (server, mut client) = boot(dir.path(), None, |_| {}).await;
    let after = turned_away_by(&mut client, &webhook("CA1"), None).await;
    assert_eq!((id_of(&after), after["missed_count"].as_u64()), (alice.clone(), Some(5)), "{after}");
    assert_eq!(report(&mut client, LINE, json!({"from": ALICE, "provider_call_id": "CA3"})).await.json()["missed_count"], 5);

    // Cancelled, the entry forgets: the same call again is a new missed call.
    let cancelled = client.send("DELETE", &format!("/v1/callbacks/{alice}"), None, &[]).await.expect("request");
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    let again = turned_away_by(&mut client, &webhook("CA1"), None).await;
    assert_ne!(id_of(&again), alice);
    assert_eq!(again["missed_count"], 1, "{again}");
    assert_live_equals_durable(&server.system).await;
}

// ---------------------------------------------------------------- seed 002 scenario 2

/// Scenario 2: a pending entry; an active call ends (a channel frees); the missed caller is
/// dialled once, on a live outbound call; that call's end settles the entry. The backup scan is
/// a minute away: the channel freeing is what dispatches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_channel_dials_the_missed_caller_once_and_the_callback_calls_end_settles_it() {
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), Some(&dialer), |_| {}).await;
    new_tenant(&mut client, TENANT, false).await;
    callback_line(&mut client, LINE, TENANT, 2, Some(AGENT)).await;
    let first = connect(&mut client, TENANT, LINE, &filler(1)).await;
    connect(&mut client, TENANT, LINE, &filler(2)).await;
    let alice = id_of(&turned_away(&mut client, TENANT, LINE, ALICE).await);
    settle(&server).await;
    assert!(dialer.dials().is_empty());

    let freed_at = Instant::now();
    end_with(&mut client, &first, "completed").await;
    let dials = dialer.wait_dials(1).await;
    let latency = dials[0].at.duration_since(freed_at);
    let call = check_dial(&dials[0], &alice, ALICE, LINE, Some(AGENT));

    // The callback is a live outbound call on the line, to the caller, from the line.
    let record = get_json(&mut client, &format!("/v1/calls/{call}")).await;
    let shape = |c: &Value| (c["status"].clone(), c["direction"].clone(), c["line_id"].clone(), c["to"].clone(), c["from"].clone());
    assert_eq!(shape(&record), shape(&json!({"status": "active", "direction": "outbound", "line_id": LINE, "to": ALICE, "from": LINE})));
    let entry = wait_dialled(&mut client, &alice).await;
    assert_eq!(entry["call_id"], call.as_str(), "{entry}");
    assert_eq!(get_json(&mut client, &format!("/v1/lines/{LINE}")).await["active_calls"], 2, "the callback holds the freed channel");

    // The callback call is answered and ends: the entry is completed.
    end_with(&mut client, &call, "completed").await;
    let done = wait_status(&mut client, &alice, "completed").await;
    assert_eq!((done["call_id"].as_str(), done["dialed"].as_bool()), (Some(call.as_str()), Some(true)), "{done}");
    assert_eq!(done["failure_reason"], Value::Null, "{done}");

    settle(&server).await;
    assert_eq!(dialer.dials().len(), 1, "exactly one dial request");
    // The queue counts the event just after the journal has the change the API shows.
    let text = wait_metrics(&mut client, "one completed event", |text| events(text, "completed") == 1.0).await;
    let (count, sum) = dispatch_latency(&text);
    assert_eq!(count, 1.0, "one dispatch measured");
    println!("dispatch latency: end request sent -> dial request received {latency:?}; server histogram {:.3} ms", sum * 1000.0);
    let stats = stats(&mut client).await;
    assert_eq!((stats["by_status"]["completed"].as_u64(), stats["total"].as_u64()), (Some(1), Some(1)), "{stats}");
    assert_live_equals_durable(&server.system).await;
}

// ---------------------------------------------------------------- FIFO

/// Each freed channel calls back the earliest missed caller first (first missed, not last: a
/// repeat does not move a caller back), one at a time on a one-channel line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freed_channels_call_back_the_earliest_missed_caller_first() {
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), Some(&dialer), |_| {}).await;
    new_tenant(&mut client, TENANT, false).await;
    callback_line(&mut client, LINE, TENANT, 1, None).await;
    let busy = connect(&mut client, TENANT, LINE, &filler(1)).await;
    let bob = id_of(&turned_away(&mut client, TENANT, LINE, BOB).await);
    let alice = id_of(&turned_away(&mut client, TENANT, LINE, ALICE).await);
    assert_eq!(id_of(&turned_away(&mut client, TENANT, LINE, BOB).await), bob);
    let carol = id_of(&turned_away(&mut client, TENANT, LINE, CAROL).await);

    let mut to_end = busy;
    for (n, (id, caller)) in [(&bob, BOB), (&alice, ALICE), (&carol, CAROL)].into_iter().enumerate() {
        let sent = Instant::now();
        end_with(&mut client, &to_end, "completed").await;
        let dials = dialer.wait_dials(n + 1).await;
        let dial = &dials[n];
        // Each dial follows the end that freed the only channel: one callback at a time.
        assert!(dial.at >= sent, "dial {n} came before the channel freed");
        to_end = check_dial(dial, id, caller, LINE, None);
        wait_dialled(&mut client, id).await;
        for waiting in [&bob, &alice, &carol].into_iter().skip(n + 1) {
            assert_eq!(callback(&mut client, waiting).await["status"], "pending", "{waiting} waits its turn");
        }
    }
    end_with(&mut client, &to_end, "completed").await;
    wait_status(&mut client, &carol, "completed").await;
    settle(&server).await;
    let order: Vec<String> = dialer.dials().iter().map(|d| d.body["to"].as_str().unwrap().to_owned()).collect();
    assert_eq!(order, [BOB, ALICE, CAROL], "FIFO by first missed time");
    for id in [&bob, &alice, &carol] {
        assert_eq!(callback(&mut client, id).await["status"], "completed");
    }
    assert_live_equals_durable(&server.system).await;
}

// ---------------------------------------------------------------- seed 002 scenario 4

/// Scenario 4: a callback that is not answered fails, once: more freed channels and backup
/// scans never dial it again; only an operator's retry does. Retry is for failed entries only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_callback_fails_once_and_only_an_operator_retry_dials_it_again() {
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), Some(&dialer), |c| c.callbacks.backup_scan_interval_ms = 50).await;
    new_tenant(&mut client, TENANT, false).await;
    callback_line(&mut client, LINE, TENANT, 1, Some(AGENT)).await;
    let busy = connect(&mut client, TENANT, LINE, &filler(1)).await;
    let alice = id_of(&turned_away(&mut client, TENANT, LINE, ALICE).await);
    end_with(&mut client, &busy, "completed").await;
    let first_call = check_dial(&dialer.wait_dials(1).await[0], &alice, ALICE, LINE, Some(AGENT));
    wait_dialled(&mut client, &alice).await;

    // Nobody answers: failed, with the call's outcome as the reason.
    end_with(&mut client, &first_call, "no_answer").await;
    let failed = wait_status(&mut client, &alice, "failed").await;
    let settled = (failed["failure_reason"].as_str(), failed["call_id"].as_str(), failed["dialed"].as_bool());
    assert_eq!(settled, (Some("no_answer"), Some(first_call.as_str()), Some(true)), "{failed}");

    // More channels free and the backup scan runs every 50 ms: Bob, missed after Alice failed,
    // is dialled; Alice is not.
    let busy = connect(&mut client, TENANT, LINE, &filler(2)).await;
    let bob = id_of(&turned_away(&mut client, TENANT, LINE, BOB).await);
    end_with(&mut client, &busy, "completed").await;
    let bob_call = check_dial(&dialer.wait_dials(2).await[1], &bob, BOB, LINE, Some(AGENT));
    wait_dialled(&mut client, &bob).await;
    end_with(&mut client, &bob_call, "busy").await;
    assert_eq!(wait_status(&mut client, &bob, "failed").await["failure_reason"], "busy");
    // Let several backup scans go by with the line free and two failed entries in the queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 2, "a failed callback is never redialled on its own");
    assert_eq!(callback(&mut client, &alice).await, failed, "untouched since it failed");

    // An operator retries: pending, then dialled again on a new call.
    let retried = retry(&mut client, &alice).await;
    assert_eq!(retried.status, 200, "{}", retried.text());
    let reopened = retried.json();
    let fields =
        (reopened["status"].as_str(), reopened["call_id"].clone(), reopened["dialed"].as_bool(), reopened["failure_reason"].clone());
    assert_eq!(fields, (Some("pending"), Value::Null, Some(false), Value::Null), "{reopened}");
    let second_call = check_dial(&dialer.wait_dials(3).await[2], &alice, ALICE, LINE, Some(AGENT));
    assert_ne!(second_call, first_call, "a retry places a new call");
    wait_dialled(&mut client, &alice).await;

    // Retry is only for failed entries: processing, completed and pending are 409.
    assert_wrong_status(&retry(&mut client, &alice).await, "processing");
    end_with(&mut client, &second_call, "completed").await;
    wait_status(&mut client, &alice, "completed").await;
    assert_wrong_status(&retry(&mut client, &alice).await, "completed");
    assert_wrong_status(&cancel(&mut client, &alice).await, "completed");
    connect(&mut client, TENANT, LINE, &filler(3)).await;
    let carol = id_of(&turned_away(&mut client, TENANT, LINE, CAROL).await);
    assert_wrong_status(&retry(&mut client, &carol).await, "pending");
    assert_problem(&retry(&mut client, "cb_000000999999").await, 404, "NOT_FOUND");
    assert_problem(&retry(&mut client, "cb_x").await, 404, "NOT_FOUND");

    settle(&server).await;
    assert_eq!(dialer.dials().len(), 3, "one dial per attempt");
    assert_eq!(callback(&mut client, &carol).await["status"], "pending");
    assert_live_equals_durable(&server.system).await;
}

/// Scenario 4, the dialer's side: a 500 and a dialer that does not answer within
/// `dialer.timeout_ms` fail the entry with the reason, end the admitted call `dial_failed`
/// (which frees the channel for the next caller), and are never redialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_error_or_silence_fails_the_callback_and_ends_its_call_dial_failed() {
    let dialer = FakeDialer::start().await;
    dialer.script(&[Answer::Status(500), Answer::Hang(Duration::from_secs(3))]);
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), Some(&dialer), |c| {
        c.dialer.timeout_ms = 300;
        c.callbacks.backup_scan_interval_ms = 50;
    })
    .await;
    new_tenant(&mut client, TENANT, false).await;
    callback_line(&mut client, LINE, TENANT, 1, Some(AGENT)).await;
    let busy = connect(&mut client, TENANT, LINE, &filler(1)).await;
    let alice = id_of(&turned_away(&mut client, TENANT, LINE, ALICE).await);
    let bob = id_of(&turned_away(&mut client, TENANT, LINE, BOB).await);
    end_with(&mut client, &busy, "completed").await;

    for (n, (id, caller, reason)) in
        [(&alice, ALICE, "dialer answered 500"), (&bob, BOB, "dialer did not answer within 300 ms")].into_iter().enumerate()
    {
        let call = check_dial(&dialer.wait_dials(n + 1).await[n], id, caller, LINE, Some(AGENT));
        let failed = wait_status(&mut client, id, "failed").await;
        let settled = (failed["failure_reason"].as_str(), failed["call_id"].as_str(), failed["dialed"].as_bool());
        assert_eq!(settled, (Some(reason), Some(call.as_str()), Some(false)), "{failed}");
        let ended = get_json(&mut client, &format!("/v1/calls/{call}")).await;
        assert_eq!((ended["status"].as_str(), ended["outcome"].as_str()), (Some("ended"), Some("dial_failed")), "{ended}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 2, "no redial after a failed dial");
    assert_eq!(get_json(&mut client, &format!("/v1/lines/{LINE}")).await["active_calls"], 0);
    assert_eq!(events(&metrics(&mut client).await, "failed"), 2.0);
    assert_live_equals_durable(&server.system).await;
}

/// Scenario 4, a provider 429: the pool's provider-rejected path (cooldown, one rejection, the
/// admitted call ended `provider_rejected`); the entry returns to pending, and once the cooldown
/// is over the backup scan dials it again (the provider never placed the first call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_429_cools_the_pool_down_and_the_callback_waits_pending() {
    let dialer = FakeDialer::start().await;
    dialer.script(&[Answer::RateLimited(2)]);
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), Some(&dialer), |c| c.callbacks.backup_scan_interval_ms = 50).await;
    new_tenant(&mut client, TENANT, false).await;
    callback_line(&mut client, LINE, TENANT, 1, Some(AGENT)).await;
    let busy = connect(&mut client, TENANT, LINE, &filler(1)).await;
    let alice = id_of(&turned_away(&mut client, TENANT, LINE, ALICE).await);
    end_with(&mut client, &busy, "completed").await;
    let rejected_call = check_dial(&dialer.wait_dials(1).await[0], &alice, ALICE, LINE, Some(AGENT));

    let ended = {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let call = get_json(&mut client, &format!("/v1/calls/{rejected_call}")).await;
            if call["status"] == "ended" {
                break call;
            }
            assert!(Instant::now() < deadline, "the rate-limited call never ended: {call}");
            tokio::time::sleep(POLL).await;
        }
    };
    assert_eq!(ended["outcome"], "provider_rejected", "{ended}");
    let platform = get_json(&mut client, "/v1/platform").await;
    let pool = platform["pools"].as_array().expect("pools").iter().find(|p| p["name"] == POOL).expect("the pool").clone();
    assert_eq!((pool["provider_rejections"].as_u64(), pool["in_cooldown"].as_bool()), (Some(1), Some(true)), "{pool}");
    let waiting = wait_callback(&mut client, &alice, "pending again", |e| e["status"] == "pending").await;
    assert_eq!((waiting["call_id"].clone(), waiting["dialed"].as_bool()), (Value::Null, Some(false)), "{waiting}");

    // After the cooldown (2 s) a backup scan dispatches it again, on a new call.
    let deadline = Instant::now() + PATIENCE;
    let second = loop {
        let dials = dialer.dials();
        if dials.len() >= 2 {
            break dials[1].clone();
        }
        assert!(Instant::now() < deadline, "never redialled after the cooldown");
        tokio::time::sleep(POLL).await;
    };
    let call = check_dial(&second, &alice, ALICE, LINE, Some(AGENT));
    assert_ne!(call, rejected_call);
    wait_dialled(&mut client, &alice).await;
    end_with(&mut client, &call, "completed").await;
    wait_status(&mut client, &alice, "completed").await;
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 2);
    assert_live_equals_durable(&server.system).await;
}

// ---------------------------------------------------------------- seed 002 scenario 5

/// Scenario 5: a prepaid tenant with 50 credits (the minimum is 100, to be exceeded): the entry
/// becomes `insufficient_credits` on dispatch and nobody is dialled; a top-up to exactly 100
/// changes nothing; one above it returns the entry to pending and dials it with no other trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepaid_tenant_below_the_minimum_holds_its_callbacks_until_a_top_up_releases_them() {
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), Some(&dialer), |_| {}).await;
    new_tenant(&mut client, TENANT, true).await;
    let top_up = async |client: &mut Client, amount: i64| -> u64 {
        let response = client.post(&format!("/v1/tenants/{TENANT}/credits"), &json!({"amount": amount, "reason": "top-up"})).await;
        let response = response.expect("request");
        assert_eq!(response.status, 201, "{}", response.text());
        response.json()["balance"].as_u64().expect("balance")
    };
    assert_eq!(top_up(&mut client, 50).await, 50);
    callback_line(&mut client, LINE, TENANT, 1, Some(AGENT)).await;
    let busy = connect(&mut client, TENANT, LINE, &filler(1)).await;
    let alice = id_of(&turned_away(&mut client, TENANT, LINE, ALICE).await);
    let ended = client.post(&format!("/v1/calls/{busy}/end"), &json!({"duration_s": 0})).await.expect("request");
    assert_eq!(ended.status, 200, "{}", ended.text());

    let held = wait_status(&mut client, &alice, "insufficient_credits").await;
    assert_eq!((held["call_id"].clone(), held["dialed"].as_bool()), (Value::Null, Some(false)), "{held}");
    // The same caller again counts on the held entry.
    let repeat = report(&mut client, LINE, json!({"from": ALICE})).await;
    assert_eq!(repeat.status, 200, "{}", repeat.text());
    assert_eq!((repeat.json()["id"].as_str(), repeat.json()["status"].as_str()), (Some(alice.as_str()), Some("insufficient_credits")));
    // Exactly the minimum is not enough.
    assert_eq!(top_up(&mut client, 50).await, 100);
    settle(&server).await;
    assert_eq!(callback(&mut client, &alice).await["status"], "insufficient_credits");
    assert!(dialer.dials().is_empty(), "no dial request without credits");
    assert_eq!(events(&metrics(&mut client).await, "insufficient_credits"), 1.0);

    // 200 more: above the minimum, the entry goes back to pending and is dialled.
    assert_eq!(top_up(&mut client, 200).await, 300);
    let call = check_dial(&dialer.wait_dials(1).await[0], &alice, ALICE, LINE, Some(AGENT));
    wait_dialled(&mut client, &alice).await;
    let text = metrics(&mut client).await;
    assert!(events(&text, "pending") >= 1.0, "back to pending first");
    let ended = client.post(&format!("/v1/calls/{call}/end"), &json!({"outcome": "completed", "duration_s": 30})).await.expect("request");
    assert_eq!(ended.status, 200, "{}", ended.text());
    wait_status(&mut client, &alice, "completed").await;
    let balance = get_json(&mut client, &format!("/v1/tenants/{TENANT}/credits?limit=1")).await["balance"].clone();
    assert_eq!(balance, 270, "the callback call is charged like any call");
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 1);
    assert_live_equals_durable(&server.system).await;
}

// ---------------------------------------------------------------- the queue bound and the API

/// The bound per line refuses new callers (never silently), the list filters, pages and counts,
/// stats count every status, cancel and retry answer 409 from the wrong status, unknown ids are
/// 404, and bad input is refused with nothing journaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_bound_refuses_new_callers_and_the_api_lists_counts_cancels_and_refuses_bad_input() {
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), None, |c| c.callbacks.queue_per_line_max = 2).await;
    new_tenant(&mut client, TENANT, false).await;
    new_tenant(&mut client, "other", false).await;
    let (line2, line3) = ("+14155550101", "+14155550102");
    callback_line(&mut client, LINE, TENANT, 1, None).await;
    callback_line(&mut client, line2, TENANT, 1, None).await;
    callback_line(&mut client, line3, "other", 1, None).await;
    connect(&mut client, TENANT, LINE, &filler(1)).await;

    let alice = id_of(&turned_away(&mut client, TENANT, LINE, ALICE).await);
    let reported = report(&mut client, LINE, json!({"from": BOB})).await;
    assert_eq!(reported.status, 201, "{}", reported.text());
    let bob_entry = reported.json();
    let bob = bob_entry["id"].as_str().expect("id").to_owned();
    assert_eq!((bob_entry["reason"].as_str(), bob_entry["priority"].as_str()), (Some("busy"), Some("high")), "{bob_entry}");

    // Full: a third caller is refused with an answer, never dropped silently.
    let full = report(&mut client, LINE, json!({"from": CAROL})).await;
    let problem = assert_problem(&full, 429, "CALLBACK_QUEUE_FULL");
    assert_eq!(full.header("retry-after"), Some("60"));
    assert_eq!(problem["current_active"], 2, "{problem}");
    let refused = inbound(&mut client, TENANT, LINE, CAROL).await;
    assert_eq!(refused.status, 200, "{}", refused.text());
    let refused = refused.json();
    let answer = (refused["action"].as_str(), refused["missed_call_id"].clone(), refused["callback_refused"].as_str());
    assert_eq!(answer, (Some("reject_busy"), Value::Null, Some("CALLBACK_QUEUE_FULL")), "{refused}");
    // A caller already queued still counts.
    let repeat = report(&mut client, LINE, json!({"from": ALICE, "reason": "network_error"})).await;
    assert_eq!((repeat.status, repeat.json()["missed_count"].as_u64()), (200, Some(2)), "{}", repeat.text());
    // The bound is per line.
    let on_line2 = report(&mut client, line2, json!({"from": ALICE, "reason": "no_answer"})).await;
    assert_eq!(on_line2.status, 201, "{}", on_line2.text());
    let on_line2 = on_line2.json();
    assert_eq!((on_line2["reason"].as_str(), on_line2["line_id"].as_str()), (Some("no_answer"), Some(line2)), "{on_line2}");
    let alice2 = on_line2["id"].as_str().expect("id").to_owned();
    let dave = report(&mut client, line3, json!({"from": DAVE, "reason": "network_error"})).await;
    assert_eq!(dave.status, 201, "{}", dave.text());
    let dave = dave.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(events(&metrics(&mut client).await, "queue_full"), 2.0);

    // The list: newest first, filtered, paged, with the total.
    let all = list(&mut client, "").await;
    assert_eq!(ids(&all), [dave.as_str(), alice2.as_str(), bob.as_str(), alice.as_str()]);
    assert_eq!((all["total"].as_u64(), all["limit"].as_u64(), all["offset"].as_u64()), (Some(4), Some(50), Some(0)));
    assert_eq!(all["data"][3], callback(&mut client, &alice).await);
    let on_line = list(&mut client, &format!("?line_id={LINE_QUERY}")).await;
    assert_eq!((ids(&on_line), on_line["total"].as_u64()), (vec![bob.as_str(), alice.as_str()], Some(2)));
    assert_eq!(ids(&list(&mut client, "?tenant_id=other").await), [dave.as_str()]);
    let pending = list(&mut client, "?status=pending&tenant_id=acme").await;
    assert_eq!((ids(&pending), pending["total"].as_u64()), (vec![alice2.as_str(), bob.as_str(), alice.as_str()], Some(3)));
    let page = list(&mut client, "?limit=1&offset=1").await;
    assert_eq!(
        (ids(&page), page["total"].as_u64(), page["limit"].as_u64(), page["offset"].as_u64()),
        (vec![alice2.as_str()], Some(4), Some(1), Some(1))
    );
    let past = list(&mut client, "?offset=10&limit=200").await;
    assert_eq!((ids(&past).len(), past["total"].as_u64()), (0, Some(4)));
    assert_eq!(list(&mut client, "?status=completed").await["total"], 0);
    let counts = stats(&mut client).await;
    assert_eq!((counts["by_status"]["pending"].as_u64(), counts["total"].as_u64()), (Some(4), Some(4)), "{counts}");

    // Cancel: pending → cancelled, which frees a place in the queue; the wrong status is 409.
    let cancelled = cancel(&mut client, &bob).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    assert_eq!(cancelled.json()["status"], "cancelled");
    assert_wrong_status(&cancel(&mut client, &bob).await, "cancelled");
    assert_wrong_status(&retry(&mut client, &bob).await, "cancelled");
    let carol = report(&mut client, LINE, json!({"from": CAROL})).await;
    assert_eq!(carol.status, 201, "a cancelled entry leaves the queue: {}", carol.text());
    // Bob calls again: his entry is closed, so he gets a new one (and the queue is full again).
    assert_problem(&report(&mut client, LINE, json!({"from": BOB})).await, 429, "CALLBACK_QUEUE_FULL");
    assert_eq!(ids(&list(&mut client, "?status=cancelled").await), [bob.as_str()]);
    let counts = stats(&mut client).await;
    let by_status = &counts["by_status"];
    assert_eq!((by_status["pending"].as_u64(), by_status["cancelled"].as_u64(), counts["total"].as_u64()), (Some(4), Some(1), Some(5)));

    // Unknown ids and lines: 404.
    for path in ["/v1/callbacks/cb_000000009999", "/v1/callbacks/nope", "/v1/callbacks/cb_"] {
        assert_problem(&client.get(path).await.expect("request"), 404, "NOT_FOUND");
    }
    assert_problem(&cancel(&mut client, "cb_000000009999").await, 404, "NOT_FOUND");
    assert_problem(&retry(&mut client, "cb_000000009999").await, 404, "NOT_FOUND");
    assert_problem(&report(&mut client, "+14155559999", json!({"from": ALICE})).await, 404, "NOT_FOUND");

    // Bad input changes nothing.
    let before = last_seq(&server).await;
    let stats_before = stats(&mut client).await;
    for (body, field) in [
        (json!({"from": "14155550005"}), "from"),
        (json!({"from": "+0123"}), "from"),
        (json!({"from": "+1415555000512345678"}), "from"),
        (json!({"from": ALICE, "reason": "angry"}), "reason"),
        (json!({}), "from"),
        (json!({"from": ALICE, "priority": "low"}), "priority"),
    ] {
        let response = report(&mut client, line2, body.clone()).await;
        assert_eq!(assert_problem(&response, 422, "INVALID_FIELD")["field"], field, "{body}");
    }
    for (query, field) in [
        ("?status=lost", Some("status")),
        ("?status=on_hold", Some("status")),
        ("?limit=0", Some("limit")),
        ("?limit=201", Some("limit")),
        ("?offset=2000000", Some("offset")),
        ("?limit=abc", None),
        ("?color=red", None),
    ] {
        let response = client.get(&format!("/v1/callbacks{query}")).await.expect("request");
        let problem = assert_problem(&response, 400, "INVALID_QUERY");
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{query}: {problem}");
        }
    }
    let anonymous = admit(&mut client, json!({"tenant_id": TENANT, "line_id": LINE, "direction": "inbound"})).await;
    assert_eq!(assert_problem(&anonymous, 422, "INVALID_FIELD")["field"], "from");
    assert_eq!(last_seq(&server).await, before, "bad input journals nothing");
    assert_eq!(stats(&mut client).await, stats_before);
    assert_live_equals_durable(&server.system).await;
}

// ---------------------------------------------------------------- restart

/// Entries and their statuses (pending, completed, failed, cancelled) survive a restart byte
/// for byte; the restart dials nobody; after it, a channel freeing on the line dials the entry
/// still pending. (A callback left `processing` and dialled across a restart is
/// `a_dialled_callback_whose_call_is_live_survives_a_restart`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_and_statuses_survive_a_restart_and_a_pending_entry_is_dispatched_after_it() {
    let dialer = FakeDialer::start().await;
    dialer.script(&[Answer::Status(500)]);
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), Some(&dialer), |_| {}).await;
    new_tenant(&mut client, TENANT, false).await;
    callback_line(&mut client, LINE, TENANT, 1, Some(AGENT)).await;
    let busy = connect(&mut client, TENANT, LINE, &filler(1)).await;
    let alice = id_of(&turned_away(&mut client, TENANT, LINE, ALICE).await);
    let bob = id_of(&turned_away(&mut client, TENANT, LINE, BOB).await);
    let carol = id_of(&turned_away(&mut client, TENANT, LINE, CAROL).await);
    assert_eq!(cancel(&mut client, &bob).await.status, 200);
    // Alice's dial gets a 500 (failed; her call ends and frees the channel), then Carol is
    // dialled and her callback completes.
    end_with(&mut client, &busy, "completed").await;
    wait_status(&mut client, &alice, "failed").await;
    let carol_call = check_dial(&dialer.wait_dials(2).await[1], &carol, CAROL, LINE, Some(AGENT));
    wait_dialled(&mut client, &carol).await;
    end_with(&mut client, &carol_call, "completed").await;
    wait_status(&mut client, &carol, "completed").await;
    // Dave misses the line while it is busy again.
    let busy = connect(&mut client, TENANT, LINE, &filler(2)).await;
    let dave = id_of(&turned_away(&mut client, TENANT, LINE, DAVE).await);
    let repeat = report(&mut client, LINE, json!({"from": DAVE, "reason": "no_answer"})).await;
    assert_eq!(repeat.status, 200, "{}", repeat.text());
    settle(&server).await;
    let before = list(&mut client, "?limit=200").await;
    let stats_before = stats(&mut client).await;
    let by_status = &stats_before["by_status"];
    let four = [&by_status["pending"], &by_status["completed"], &by_status["failed"], &by_status["cancelled"]];
    assert_eq!(four, [1, 1, 1, 1], "{stats_before}");
    server.stop().await;

    let (server, mut client) = boot(dir.path(), Some(&dialer), |_| {}).await;
    assert_eq!(list(&mut client, "?limit=200").await, before, "every entry survives, byte for byte");
    assert_eq!(stats(&mut client).await, stats_before);
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 2, "a restart dials nobody");
    assert_live_equals_durable(&server.system).await;
    // The open entry is still in its line's queue: the same caller counts on it.
    let again = report(&mut client, LINE, json!({"from": DAVE})).await;
    assert_eq!((again.status, again.json()["id"].as_str()), (200, Some(dave.as_str())), "{}", again.text());
    assert_eq!(again.json()["missed_count"], 3);

    // A channel frees after the restart: Dave is dialled.
    end_with(&mut client, &busy, "completed").await;
    let dave_call = check_dial(&dialer.wait_dials(3).await[2], &dave, DAVE, LINE, Some(AGENT));
    wait_dialled(&mut client, &dave).await;
    end_with(&mut client, &dave_call, "completed").await;
    wait_status(&mut client, &dave, "completed").await;
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 3);
    assert_live_equals_durable(&server.system).await;
}

/// A callback whose dial was accepted and whose call is still live must stay `processing` across
/// a restart, its call untouched, and be settled by that call's end. Lines and restarts are
/// repeated because the failure depends on actor start order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialled_callback_whose_call_is_live_survives_a_restart() {
    const LINES: u32 = 4;
    const RESTARTS: usize = 3;
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (mut server, mut client) = boot(dir.path(), Some(&dialer), |_| {}).await;
    new_tenant(&mut client, TENANT, false).await;
    let mut dialled = Vec::new();
    for n in 0..LINES {
        let line = format!("+1415555020{n}");
        callback_line(&mut client, &line, TENANT, 1, Some(AGENT)).await;
        let busy = connect(&mut client, TENANT, &line, &filler(n)).await;
        let id = id_of(&turned_away(&mut client, TENANT, &line, ALICE).await);
        end_with(&mut client, &busy, "completed").await;
        let entry = wait_dialled(&mut client, &id).await;
        dialled.push((id, entry["call_id"].as_str().expect("call_id").to_owned()));
    }
    settle(&server).await;
    for restart in 0..RESTARTS {
        server.stop().await;
        (server, client) = boot(dir.path(), Some(&dialer), |_| {}).await;
        settle(&server).await;
        for (id, call) in &dialled {
            let entry = callback(&mut client, id).await;
            let record = get_json(&mut client, &format!("/v1/calls/{call}")).await;
            let context = format!("restart {restart}: {entry} / call {record}");
            assert_eq!((entry["status"].as_str(), entry["dialed"].as_bool()), (Some("processing"), Some(true)), "{context}");
            assert_eq!(record["status"], "active", "{context}");
        }
    }
    for (id, call) in &dialled {
        end_with(&mut client, call, "completed").await;
        wait_status(&mut client, id, "completed").await;
    }
    assert_eq!(dialer.dials().len(), LINES as usize, "nobody is dialled twice");
    assert_live_equals_durable(&server.system).await;
}

/// RFC 9457 (and every other problem this server sends): `status` is the HTTP status code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_status_problem_keeps_the_http_status_in_its_status_member() {
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), None, |_| {}).await;
    new_tenant(&mut client, TENANT, false).await;
    callback_line(&mut client, LINE, TENANT, 1, None).await;
    let reported = report(&mut client, LINE, json!({"from": ALICE})).await;
    let id = reported.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(cancel(&mut client, &id).await.status, 200);
    assert_problem(&cancel(&mut client, &id).await, 409, "CALLBACK_WRONG_STATUS");
    assert_problem(&retry(&mut client, &id).await, 409, "CALLBACK_WRONG_STATUS");
    server.stop().await;
}

// ---------------------------------------------------------------- the total-queue check

const RANDOM_OPS_PER_WORKER: usize = 100;
const RANDOM_WORKERS: u64 = 2;
const RANDOM_LINES: [(&str, &str, u32); 3] =
    [("+14155550100", "%2B14155550100", 1), ("+14155550101", "%2B14155550101", 2), ("+14155550102", "%2B14155550102", 2)];
const RANDOM_CALLERS: [&str; 5] = [ALICE, BOB, CAROL, DAVE, "+14155550005"];
const OUTCOMES: [&str; 4] = ["completed", "completed", "no_answer", "busy"];

fn seed() -> u64 {
    let seed = std::env::var("SWITCHBOARD_CALLBACKS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    println!("seed {seed} (replay with SWITCHBOARD_CALLBACKS_SEED={seed})");
    seed
}

fn agent_of(line: &str) -> String {
    format!("agent-{}", &line[line.len() - 3..])
}

/// What the workers were told.
#[derive(Default)]
struct Model {
    /// Entry id → (line, caller, how many missed calls were acknowledged with this id).
    entries: BTreeMap<String, (String, String, u64)>,
    /// Entry id → retries answered 200.
    retries: BTreeMap<String, u64>,
    /// Entries whose cancel was answered 200.
    cancelled: BTreeSet<String>,
    answers: BTreeMap<String, u64>,
}

impl Model {
    fn missed(&mut self, id: &str, line: &str, caller: &str, count: u64, context: &str) {
        let entry = self.entries.entry(id.to_owned()).or_insert_with(|| (line.to_owned(), caller.to_owned(), 0));
        assert_eq!((entry.0.as_str(), entry.1.as_str()), (line, caller), "{context}: {id} is another caller's entry");
        entry.2 += 1;
        // Concurrent repeats may be acknowledged out of order; the count never exceeds ours.
        assert!(count <= entry.2 + RANDOM_WORKERS, "{context}: {id} counts {count} missed calls, {} acknowledged", entry.2);
    }

    fn note(&mut self, what: String) {
        *self.answers.entry(what).or_default() += 1;
    }

    fn known(&self, rng: &mut Rng) -> Option<String> {
        (!self.entries.is_empty()).then(|| self.entries.keys().nth(rng.index(self.entries.len())).expect("an entry").clone())
    }
}

async fn random_worker(server_client: Client, model: Arc<Mutex<Model>>, mut rng: Rng, worker: u64, seed: u64) {
    let mut client = server_client;
    for op in 0..RANDOM_OPS_PER_WORKER {
        let context = format!("seed {seed}, worker {worker}, op {op}");
        let (line, line_query, _) = RANDOM_LINES[rng.index(RANDOM_LINES.len())];
        let caller = RANDOM_CALLERS[rng.index(RANDOM_CALLERS.len())];
        let roll = rng.below(100);
        match roll {
            // An inbound call: connected, or turned away busy.
            0..25 => {
                let response = inbound(&mut client, TENANT, line, caller).await;
                let body = response.json();
                match response.status {
                    201 => model.lock().unwrap().note("inbound connected".into()),
                    200 => {
                        let id = body["missed_call_id"].as_str().unwrap_or_else(|| panic!("{context}: {body}"));
                        let count = body["missed_count"].as_u64().expect("missed_count");
                        let mut model = model.lock().unwrap();
                        model.missed(id, line, caller, count, &context);
                        model.note("inbound turned away".into());
                    }
                    status => panic!("{context}: inbound answered {status}: {body}"),
                }
            }
            // A missed call reported by the platform.
            25..40 => {
                let reason = ["busy", "no_answer", "network_error"][rng.index(3)];
                let response = report(&mut client, line, json!({"from": caller, "reason": reason})).await;
                let body = response.json();
                assert!(matches!(response.status, 200 | 201), "{context}: report answered {}: {body}", response.status);
                let id = body["id"].as_str().expect("id");
                let mut model = model.lock().unwrap();
                model.missed(id, line, caller, body["missed_count"].as_u64().expect("missed_count"), &context);
                model.note(format!("report {}", response.status));
            }
            // An outbound call on the line.
            40..50 => {
                let body = json!({"tenant_id": TENANT, "line_id": line, "direction": "outbound", "to": caller});
                let response = admit(&mut client, body).await;
                assert!(matches!(response.status, 201 | 429), "{context}: outbound answered {}", response.text());
                model.lock().unwrap().note(format!("outbound {}", response.status));
            }
            // End a live call on the line: ours, or a callback (dialled or not yet).
            50..70 => {
                let live = get_json(&mut client, &format!("/v1/calls?line_id={line_query}&limit=200")).await;
                let calls = live["data"].as_array().expect("data");
                if calls.is_empty() {
                    continue;
                }
                let call = calls[rng.index(calls.len())]["call_id"].as_str().expect("call_id").to_owned();
                let outcome = OUTCOMES[rng.index(OUTCOMES.len())];
                let response = client.post(&format!("/v1/calls/{call}/end"), &json!({"outcome": outcome})).await.expect("request");
                assert!(matches!(response.status, 200 | 409), "{context}: end answered {}", response.text());
                model.lock().unwrap().note(format!("end {}", response.status));
            }
            // An operator retries an entry.
            70..80 => {
                let Some(id) = model.lock().unwrap().known(&mut rng) else { continue };
                let response = retry(&mut client, &id).await;
                let mut model = model.lock().unwrap();
                match response.status {
                    200 => *model.retries.entry(id).or_default() += 1,
                    409 => {}
                    _ => panic!("{context}: retry {id} answered {}", response.text()),
                }
                model.note(format!("retry {}", response.status));
            }
            // An operator cancels an entry.
            80..90 => {
                let Some(id) = model.lock().unwrap().known(&mut rng) else { continue };
                let response = cancel(&mut client, &id).await;
                let mut model = model.lock().unwrap();
                match response.status {
                    200 => {
                        assert!(model.cancelled.insert(id.clone()), "{context}: {id} cancelled twice");
                    }
                    409 => {}
                    _ => panic!("{context}: cancel {id} answered {}", response.text()),
                }
                model.note(format!("cancel {}", response.status));
            }
            // Let the dispatcher run.
            _ => tokio::time::sleep(Duration::from_millis(rng.below(5))).await,
        }
    }
}

/// A Jepsen-style total-queue check: random missed calls, calls, ends with random outcomes,
/// random dialer answers, retries and cancels from two concurrent clients. Then everything is
/// drained, and: every acknowledged missed call is in exactly the entry it was acknowledged with
/// (none lost, none phantom, counts equal); every entry ends in an explicit status; each entry
/// was dialled at most once per attempt (1 + its successful retries, plus the redials after a
/// 429, where the provider placed nothing); no call was dialled twice; every dial is a real
/// outbound call to the caller on the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_random_interleavings_no_missed_call_is_lost_and_no_attempt_is_dialled_twice() {
    let seed = seed();
    let dialer = FakeDialer::start().await;
    dialer.fallback(Fallback::Random(Rng(seed ^ 0xD1A1_D1A1)));
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), Some(&dialer), |c| {
        c.callbacks.backup_scan_interval_ms = 100;
        c.arbitration.capacity_probe_interval_ms = 100;
    })
    .await;
    new_tenant(&mut client, TENANT, false).await;
    for (line, _, channels) in RANDOM_LINES {
        callback_line(&mut client, line, TENANT, channels, Some(&agent_of(line))).await;
    }

    let model = Arc::new(Mutex::new(Model::default()));
    let mut workers = Vec::new();
    for worker in 0..RANDOM_WORKERS {
        let worker_client = server.client().await;
        let rng = Rng(seed.wrapping_add(worker.wrapping_mul(0x9E37_79B9)));
        workers.push(tokio::spawn(random_worker(worker_client, Arc::clone(&model), rng, worker, seed)));
    }
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(20), worker).await.expect("the workload finishes").expect("a worker panicked");
    }

    // Drain: the dialer accepts everything now; end every live call until every entry is closed.
    dialer.fallback(Fallback::Always(Answer::Accept));
    let retry_ids: BTreeSet<String> = model.lock().unwrap().retries.keys().cloned().collect();
    let deadline = Instant::now() + 2 * PATIENCE;
    loop {
        let open = server.system.inspect(|d| d.callbacks.values().filter(|e| e.status.is_open()).count()).await.expect("inspect");
        if open == 0 && server.system.callbacks_settled() {
            break;
        }
        assert!(Instant::now() < deadline, "seed {seed}: {open} entries still open after draining");
        for (_, line_query, _) in RANDOM_LINES {
            let live = get_json(&mut client, &format!("/v1/calls?line_id={line_query}&limit=200")).await;
            for call in live["data"].as_array().expect("data") {
                let id = call["call_id"].as_str().expect("call_id");
                let response = client.post(&format!("/v1/calls/{id}/end"), &json!({"outcome": "completed"})).await.expect("request");
                assert!(matches!(response.status, 200 | 409), "seed {seed}: {}", response.text());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    settle(&server).await;

    // Every entry, through the API.
    let mut entries: BTreeMap<String, Value> = BTreeMap::new();
    let mut offset = 0;
    loop {
        let page = list(&mut client, &format!("?limit=200&offset={offset}")).await;
        let data = page["data"].as_array().expect("data");
        for entry in data {
            entries.insert(entry["id"].as_str().expect("id").to_owned(), entry.clone());
        }
        offset += data.len();
        if data.is_empty() || offset >= page["total"].as_u64().expect("total") as usize {
            break;
        }
    }
    // The workers are done: the model is ours alone.
    let model = Arc::try_unwrap(model).ok().expect("the workers have finished").into_inner().expect("the model");
    let context = format!("seed {seed}");
    assert_eq!(entries.keys().collect::<Vec<_>>(), model.entries.keys().collect::<Vec<_>>(), "{context}: no entry lost, none phantom");
    let dials = dialer.dials();
    let mut dials_by_entry: BTreeMap<&str, Vec<&Dial>> = BTreeMap::new();
    let mut call_ids = BTreeSet::new();
    for dial in &dials {
        let id = dial.body["original_missed_call_id"].as_str().expect("original_missed_call_id");
        dials_by_entry.entry(id).or_default().push(dial);
        let call = dial.body["call_id"].as_str().expect("call_id");
        assert!(call_ids.insert(call.to_owned()), "{context}: call {call} dialled twice");
    }
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for (id, entry) in &entries {
        let (line, caller, acknowledged) = &model.entries[id];
        assert_eq!((entry["line_id"].as_str(), entry["caller"].as_str()), (Some(line.as_str()), Some(caller.as_str())), "{context}");
        assert_eq!(entry["missed_count"].as_u64(), Some(*acknowledged), "{context}: {id} counts every missed call once: {entry}");
        let status = entry["status"].as_str().expect("status");
        assert!(matches!(status, "completed" | "failed" | "cancelled"), "{context}: {id} ends {status}");
        *statuses.entry(status.to_owned()).or_default() += 1;
        if status == "cancelled" {
            assert!(model.cancelled.contains(id), "{context}: {id} cancelled, but no cancel was acknowledged");
        }
        let dials = dials_by_entry.get(id.as_str()).cloned().unwrap_or_default();
        let attempts = dials.iter().filter(|d| !matches!(d.answer, Answer::RateLimited(_) | Answer::LateRateLimited(_))).count() as u64;
        let retries = model.retries.get(id).copied().unwrap_or(0);
        assert!(attempts <= 1 + retries, "{context}: {id} dialled {attempts} times with {retries} retries");
        for dial in &dials {
            check_dial(dial, id, caller, line, Some(&agent_of(line)));
        }
        match status {
            "completed" => {
                let last = dials.last().unwrap_or_else(|| panic!("{context}: {id} completed without a dial"));
                assert_eq!(last.answer, Answer::Accept, "{context}: {id}");
                assert_eq!(entry["call_id"], last.body["call_id"], "{context}: {id}");
                let call = get_json(&mut client, &format!("/v1/calls/{}", entry["call_id"].as_str().unwrap())).await;
                assert_eq!(call["outcome"], "completed", "{context}: {id}: {call}");
            }
            "failed" => {
                let reason = entry["failure_reason"].as_str().unwrap_or_else(|| panic!("{context}: {id} failed without a reason"));
                let call = entry["call_id"].as_str().unwrap_or_else(|| panic!("{context}: {id} failed without a call"));
                let call = get_json(&mut client, &format!("/v1/calls/{call}")).await;
                if entry["dialed"] == true {
                    assert_eq!(call["outcome"].as_str(), Some(reason), "{context}: {id} failed with its call's outcome");
                } else {
                    assert_eq!(reason, "dialer answered 500", "{context}: {id}");
                }
            }
            _ => {}
        }
    }
    // Every dial is a call that was admitted outbound on its line, and is over by now.
    for dial in &dials {
        let call = get_json(&mut client, &format!("/v1/calls/{}", dial.body["call_id"].as_str().unwrap())).await;
        assert_eq!((call["status"].as_str(), call["direction"].as_str()), (Some("ended"), Some("outbound")), "{context}: {call}");
        assert_eq!((call["to"].clone(), call["line_id"].clone()), (dial.body["to"].clone(), dial.body["line_id"].clone()), "{context}");
    }
    let text = metrics(&mut client).await;
    assert_eq!(dispatch_latency(&text).0, dials.len() as f64, "{context}: one measured dispatch per dial request");
    let counts = stats(&mut client).await;
    assert_eq!(counts["total"].as_u64(), Some(entries.len() as u64), "{context}");
    let (count, sum) = dispatch_latency(&text);
    let by_answer = dials.iter().fold(BTreeMap::<String, u64>::new(), |mut acc, d| {
        *acc.entry(format!("{:?}", d.answer)).or_default() += 1;
        acc
    });
    println!(
        "{context}: {} entries {statuses:?}; {} dials {by_answer:?}; retried entries {}; answers {:?}; mean dispatch latency {:.3} ms",
        entries.len(),
        dials.len(),
        retry_ids.len(),
        model.answers,
        if count > 0.0 { sum / count * 1000.0 } else { 0.0 },
    );
    assert_live_equals_durable(&server.system).await;
}

/// Operators retrying the same failed callback at once: it is reopened and dialled once per
/// round, however many retries race (the dialer answers 500, so each round ends failed again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_a_failed_callback_dial_it_once() {
    const ROUNDS: usize = 5;
    const OPERATORS: usize = 6;
    let dialer = FakeDialer::start().await;
    dialer.fallback(Fallback::Always(Answer::Status(500)));
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), Some(&dialer), |_| {}).await;
    new_tenant(&mut client, TENANT, false).await;
    callback_line(&mut client, LINE, TENANT, 1, None).await;
    let busy = connect(&mut client, TENANT, LINE, &filler(1)).await;
    let alice = id_of(&turned_away(&mut client, TENANT, LINE, ALICE).await);
    end_with(&mut client, &busy, "completed").await;
    wait_status(&mut client, &alice, "failed").await;
    let mut operators = Vec::new();
    for _ in 0..OPERATORS {
        operators.push(server.client().await);
    }
    for round in 1..=ROUNDS {
        settle(&server).await;
        let tasks: Vec<_> = operators
            .drain(..)
            .map(|mut operator| {
                let id = alice.clone();
                tokio::spawn(async move {
                    let status = retry(&mut operator, &id).await.status;
                    (operator, status)
                })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            let (operator, status) = task.await.expect("a retry task");
            operators.push(operator);
            answers.push(status);
        }
        assert!(answers.iter().all(|s| matches!(s, 200 | 409)), "round {round}: {answers:?}");
        assert!(answers.contains(&200), "round {round}: one retry at least reopens it: {answers:?}");
        // Failed again (the dialer answers 500): one dial this round.
        dialer.wait_dials(1 + round).await;
        wait_status(&mut client, &alice, "failed").await;
        settle(&server).await;
        assert_eq!(dialer.dials().len(), 1 + round, "round {round}: {answers:?}");
    }
    assert_live_equals_durable(&server.system).await;
}

/// A channel that frees while the line's one dispatch is in flight must not be forgotten: when
/// that dispatch ends without progress (here a 429 with `Retry-After: 0`, answered late), the
/// queue must look for work again at once, not at the next backup scan (a minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_freed_during_a_dispatch_is_not_forgotten() {
    let dialer = FakeDialer::start().await;
    dialer.script(&[Answer::LateRateLimited(Duration::from_millis(400))]);
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), Some(&dialer), |_| {}).await;
    new_tenant(&mut client, TENANT, false).await;
    callback_line(&mut client, LINE, TENANT, 2, Some(AGENT)).await;
    let first = connect(&mut client, TENANT, LINE, &filler(1)).await;
    let second = connect(&mut client, TENANT, LINE, &filler(2)).await;
    let alice = id_of(&turned_away(&mut client, TENANT, LINE, ALICE).await);
    turned_away(&mut client, TENANT, LINE, BOB).await;
    end_with(&mut client, &first, "completed").await;
    check_dial(&dialer.wait_dials(1).await[0], &alice, ALICE, LINE, Some(AGENT));
    // While the dialer takes its time, the other call ends: a channel frees, Bob is pending.
    end_with(&mut client, &second, "completed").await;
    // Then the 429: Alice is pending again with two free channels, Bob pending, no cooldown.
    // Somebody must be dialled again, at once.
    let dials = dialer.wait_dials(2).await;
    assert_eq!(dials[1].body["to"], ALICE, "the earliest missed caller first");
    wait_dialled(&mut client, &alice).await;
    settle(&server).await;
    assert_live_equals_durable(&server.system).await;
}
