//! Outbound campaigns (issue 5 §5; seed 002's campaign integration and its test scenario 3;
//! seed 001's per-lead daily cap) over real HTTP, a real sled journal, and a real HTTP fake
//! dialer on loopback that records every dial request and answers each from a script.
//!
//! What these tests prove:
//! - a running campaign dials its contacts through admission and the dialer, at most
//!   `concurrency` at once, as non-callback dials on live outbound calls; each call's end settles
//!   its contact (`completed`, or `failed` with the outcome), the next contact goes when one
//!   settles, and the campaign completes when every contact is final, with exact progress counts;
//! - a contact outside its local calling window (the default 09:00–21:00 in its IANA zone, or
//!   an explicit window, also one running past midnight) is skipped and never dialled; a lead
//!   called `max_calls_per_lead_per_day` times today by the tenant is skipped, within a campaign
//!   and across campaigns;
//! - seed 002 scenario 3: while a campaign runs, missed calls on its line are `on-hold` with
//!   priority `low`; completing, pausing or cancelling the campaign releases them to `pending`,
//!   and they are called back in FIFO order;
//! - a dialer 500 fails the contact and ends its call `dial_failed`; a dialer 429 cools the pool
//!   down and the contact waits pending, then is dialled on a new call;
//! - the lifecycle refuses wrong transitions (409), bad input names its field (422) and
//!   journals nothing, an unknown line in the body is 422 and an unknown campaign 404;
//! - a running campaign with a dialled contact survives a restart and completes after it.
//!
//! Windows use the real clock: each test picks windows at least two hours away from now.
//!
//! Two tests are regressions for bugs these tests found: a running campaign whose last pending
//! contact was skipped crashed its line's queue actor; a dial refused with 429 used up one of the
//! lead's daily calls.

mod common;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use common::dialer::{Answer, Dial, FakeDialer};
use common::*;
use serde_json::{Value, json};
use switchboard::client::{Client, Response};
use switchboard::config::Config;
use tokio::time::Instant;

const POOL: &str = "standard_voice";
const TENANT: &str = "acme";
const LINE: &str = "+14155550100";
const AGENT: &str = "agent-7";
const ALICE: &str = "+14155550001";
const BOB: &str = "+14155550002";
const CAROL: &str = "+14155550003";
const DAVE: &str = "+14155550004";
const ERIN: &str = "+14155550005";

// ---------------------------------------------------------------- the server and its API

/// Starts a server on `dir` with room for every test's calls in the default pool, no headroom
/// reserved per class, a backup scan every 50 ms (a 429's cooldown ends with no other trigger),
/// and the fake dialer.
async fn boot(dir: &Path, dialer: &FakeDialer) -> (TestServer, Client) {
    let url = dialer.url.clone();
    let server = start_in(dir, |config: &mut Config| {
        no_reservations(config);
        config.pools.get_mut(POOL).expect("the default pool").capacity = 100;
        config.callbacks.backup_scan_interval_ms = 50;
        config.dialer.url = Some(url);
    })
    .await;
    let client = server.client().await;
    (server, client)
}

async fn last_seq(server: &TestServer) -> u64 {
    server.system.inspect(|d| d.last_seq).await.expect("inspect the journal")
}

/// Waits (bounded) until no dispatch is handed over or running.
async fn settle(server: &TestServer) {
    let deadline = Instant::now() + PATIENCE;
    while !server.system.callbacks_settled() {
        assert!(Instant::now() < deadline, "dispatches still running after {PATIENCE:?}");
        tokio::time::sleep(POLL).await;
    }
}

async fn new_tenant(client: &mut Client, id: &str) {
    let body = json!({"id": id, "plan": "PRO", "concurrent_limit_override": 50});
    let response = client.post("/v1/tenants", &body).await.expect("request");
    assert_eq!(response.status, 201, "create tenant {id}: {}", response.text());
}

async fn callback_line(client: &mut Client, id: &str, channels: u32) {
    let body = json!({"id": id, "tenant_id": TENANT, "channels": channels, "on_busy": "callback", "agent_id": AGENT});
    let response = client.post("/v1/lines", &body).await.expect("request");
    assert_eq!(response.status, 201, "create line {id}: {}", response.text());
}

/// A tenant and a callback line with `channels` channels.
async fn setup(client: &mut Client, channels: u32) {
    new_tenant(client, TENANT).await;
    callback_line(client, LINE, channels).await;
}

// ---------------------------------------------------------------- windows from the real clock

/// The current UTC minute of the day.
fn utc_minute() -> i64 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    i64::try_from(secs % 86_400).expect("a minute") / 60
}

/// `HH:MM` of the UTC minute `now + offset_minutes` (mod a day).
fn hhmm(offset_minutes: i64) -> String {
    let minute = (utc_minute() + offset_minutes).rem_euclid(24 * 60);
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// A window containing now (UTC) with two hours either side.
fn window_around_now() -> Value {
    json!({"start": hhmm(-120), "end": hhmm(120)})
}

/// A window two hours from now at its nearest edge (UTC).
fn window_away_from_now() -> Value {
    json!({"start": hhmm(240), "end": hhmm(480)})
}

/// An IANA zone (`Etc/GMT±N`) where the local time now is `local_hour`:MM, mostly.
fn zone_where_it_is(local_hour: i64) -> String {
    let mut offset = local_hour - utc_minute() / 60;
    if offset < -12 {
        offset += 24;
    }
    if offset > 14 {
        offset -= 24;
    }
    // POSIX sign: Etc/GMT-3 is UTC+3.
    match offset {
        0 => "Etc/GMT".to_owned(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

// ---------------------------------------------------------------- campaigns

/// POSTs. (No 503 is expected: a line's queue used to crash when a skip completed its
/// campaign, and this helper used to retry around it.)
async fn post_campaign(client: &mut Client, path: &str, body: &Value) -> Response {
    client.post(path, body).await.expect("request")
}

async fn create(client: &mut Client, body: Value) -> Response {
    post_campaign(client, "/v1/campaigns", &body).await
}

/// Creates a campaign that must be created; returns it.
async fn create_ok(client: &mut Client, body: Value) -> Value {
    let response = create(client, body).await;
    assert_eq!(response.status, 201, "create a campaign: {}", response.text());
    let campaign = response.json();
    assert_eq!((campaign["object"].as_str(), campaign["status"].as_str()), (Some("campaign"), Some("draft")), "{campaign}");
    assert!(campaign["id"].as_str().is_some_and(|id| id.starts_with("cmp_")), "{campaign}");
    campaign
}

fn id(campaign: &Value) -> String {
    campaign["id"].as_str().expect("id").to_owned()
}

/// UTC contacts (`"timezone": "UTC"`) with these phones.
fn utc_contacts(phones: &[&str]) -> Value {
    phones.iter().map(|p| json!({"phone": p, "timezone": "UTC"})).collect()
}

async fn control(client: &mut Client, id: &str, action: &str) -> Response {
    post_campaign(client, &format!("/v1/campaigns/{id}/{action}"), &json!({})).await
}

/// A lifecycle action that must succeed; returns the campaign it answers.
async fn control_ok(client: &mut Client, id: &str, action: &str) -> Value {
    let response = control(client, id, action).await;
    assert_eq!(response.status, 200, "{action} {id}: {}", response.text());
    let campaign = response.json();
    assert_eq!(campaign["id"], id, "{campaign}");
    campaign
}

/// 409 `CAMPAIGN_WRONG_STATUS`.
async fn assert_refused(client: &mut Client, id: &str, action: &str) {
    let response = control(client, id, action).await;
    assert_problem(&response, 409, "CAMPAIGN_WRONG_STATUS");
}

async fn campaign(client: &mut Client, id: &str) -> Value {
    get_object(client, "campaign", id).await
}

/// Polls a campaign (bounded) until `ready` holds; returns it as it was then.
async fn wait_campaign(client: &mut Client, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    wait_object(client, "campaign", id, what, ready).await
}

async fn wait_campaign_status(client: &mut Client, id: &str, status: &str) -> Value {
    wait_campaign(client, id, status, |c| c["status"] == status).await
}

async fn wait_contact(client: &mut Client, id: &str, index: usize, status: &str) -> Value {
    let campaign = wait_campaign(client, id, &format!("contact {index} {status}"), |c| c["contacts"][index]["status"] == status).await;
    campaign["contacts"][index].clone()
}

fn statuses(campaign: &Value) -> Vec<&str> {
    campaign["contacts"].as_array().expect("contacts").iter().map(|c| c["status"].as_str().expect("status")).collect()
}

/// `[total, pending, dialled, completed, failed, skipped_outside_window, skipped_daily_cap]`.
fn progress(campaign: &Value) -> [u64; 7] {
    let p = &campaign["progress"];
    ["total", "pending", "dialled", "completed", "failed", "skipped_outside_window", "skipped_daily_cap"]
        .map(|k| p[k].as_u64().unwrap_or_else(|| panic!("progress.{k}: {campaign}")))
}

/// Checks a campaign contact's dial request; returns its `call_id`.
fn check_dial(dial: &Dial, phone: &str) -> String {
    let body = &dial.body;
    let expected = json!({
        "to": phone,
        "line_id": LINE,
        "tenant_id": TENANT,
        "agent_id": AGENT,
        "call_id": body["call_id"],
        "is_auto_callback": false,
        "original_missed_call_id": null,
    });
    assert_eq!(*body, expected, "the dial request for {phone}");
    dial.call_id()
}

/// Ends a call with this outcome; it must end (200).
async fn end_with(client: &mut Client, call: &str, outcome: &str) {
    let response = client.post(&format!("/v1/calls/{call}/end"), &json!({"outcome": outcome})).await.expect("request");
    assert_eq!(response.status, 200, "end {call}: {}", response.text());
}

async fn wait_call_ended(client: &mut Client, call: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let record = get_json(client, &format!("/v1/calls/{call}")).await;
        if record["status"] == "ended" {
            return record;
        }
        assert!(Instant::now() < deadline, "call {call} never ended: {record}");
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------- missed calls

async fn inbound(client: &mut Client, from: &str) -> Response {
    admit(client, json!({"tenant_id": TENANT, "line_id": LINE, "direction": "inbound", "from": from})).await
}

/// An inbound call turned away busy while a campaign runs: its entry waits on hold, low.
async fn turned_away_on_hold(client: &mut Client, from: &str) -> String {
    let response = inbound(client, from).await;
    assert_eq!(response.status, 200, "inbound from {from}: {}", response.text());
    let body = response.json();
    assert_eq!(body["action"], "reject_busy", "{body}");
    let entry = &body["callback"];
    assert_eq!(
        (entry["caller"].as_str(), entry["priority"].as_str(), entry["status"].as_str()),
        (Some(from), Some("low"), Some("on-hold")),
        "{body}"
    );
    body["missed_call_id"].as_str().expect("missed_call_id").to_owned()
}

async fn callback(client: &mut Client, id: &str) -> Value {
    get_json(client, &format!("/v1/callbacks/{id}")).await
}

async fn wait_callback_status(client: &mut Client, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let entry = callback(client, id).await;
        if entry["status"] == status {
            return entry;
        }
        assert!(Instant::now() < deadline, "callback {id} never got {status}: {entry}");
        tokio::time::sleep(POLL).await;
    }
}

/// Checks an automatic callback's dial request; returns its `call_id`.
fn check_callback_dial(dial: &Dial, id: &str, caller: &str) -> String {
    assert_eq!(
        (dial.to(), dial.body["is_auto_callback"].as_bool(), dial.body["original_missed_call_id"].as_str()),
        (caller, Some(true), Some(id)),
        "{dial:?}"
    );
    dial.call_id()
}

// ---------------------------------------------------------------- 1. the happy path

/// Three contacts, concurrency 2: two are dialled and the third waits; a call's end lets it go;
/// every end settles its contact and the campaign completes with exact counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_campaign_dials_at_most_its_concurrency_and_completes_when_every_contact_settles() {
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), &dialer).await;
    setup(&mut client, 10).await;

    let window = window_around_now();
    let contacts = json!([
        {"phone": ALICE, "name": "Alice", "timezone": "UTC"},
        {"phone": BOB, "timezone": "UTC"},
        {"phone": CAROL, "name": "Carol", "timezone": "UTC"},
    ]);
    let created = create_ok(&mut client, json!({"line_id": LINE, "contacts": contacts, "window": window})).await;
    let cmp = id(&created);
    let expected = json!({
        "object": "campaign",
        "id": cmp,
        "tenant_id": TENANT,
        "line_id": LINE,
        "status": "draft",
        "concurrency": 2,
        "max_calls_per_lead_per_day": 2,
        "window": window,
        "progress": {"total": 3, "pending": 3, "dialled": 0, "completed": 0, "failed": 0, "skipped_outside_window": 0, "skipped_daily_cap": 0},
        "contacts": [
            {"phone": ALICE, "name": "Alice", "timezone": "UTC", "status": "pending", "call_id": null, "failure_reason": null},
            {"phone": BOB, "name": null, "timezone": "UTC", "status": "pending", "call_id": null, "failure_reason": null},
            {"phone": CAROL, "name": "Carol", "timezone": "UTC", "status": "pending", "call_id": null, "failure_reason": null},
        ],
        "created_at": created["created_at"],
        "updated_at": created["created_at"],
    });
    assert_eq!(created, expected);
    assert_eq!(campaign(&mut client, &cmp).await, created, "the draft as GET shows it");
    settle(&server).await;
    assert!(dialer.dials().is_empty(), "a draft dials nobody");

    let started = control_ok(&mut client, &cmp, "start").await;
    assert_eq!(started["status"], "running", "{started}");
    let dials = dialer.wait_dials(2).await;
    let alice_call = check_dial(&dials[0], ALICE);
    let bob_call = check_dial(&dials[1], BOB);
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 2, "concurrency 2: the third contact waits");
    let running = wait_campaign(&mut client, &cmp, "two dialled", |c| c["progress"]["dialled"] == 2).await;
    assert_eq!(statuses(&running), ["dialled", "dialled", "pending"], "{running}");
    assert_eq!(progress(&running), [3, 1, 2, 0, 0, 0, 0], "{running}");
    assert_eq!(
        (running["contacts"][0]["call_id"].as_str(), running["contacts"][1]["call_id"].as_str()),
        (Some(&*alice_call), Some(&*bob_call))
    );
    for (call, phone) in [(&alice_call, ALICE), (&bob_call, BOB)] {
        let record = get_json(&mut client, &format!("/v1/calls/{call}")).await;
        assert_eq!(
            (record["status"].as_str(), record["direction"].as_str(), record["line_id"].as_str(), record["to"].as_str()),
            (Some("active"), Some("outbound"), Some(LINE), Some(phone)),
            "{record}"
        );
    }

    // One call ends: its contact is completed and the third contact goes.
    end_with(&mut client, &alice_call, "completed").await;
    let carol_call = check_dial(&dialer.wait_dials(3).await[2], CAROL);
    let alice = wait_contact(&mut client, &cmp, 0, "completed").await;
    assert_eq!((alice["call_id"].as_str(), alice["failure_reason"].clone()), (Some(&*alice_call), Value::Null), "{alice}");
    wait_contact(&mut client, &cmp, 2, "dialled").await;

    // Another outcome fails its contact, with the outcome as the reason.
    end_with(&mut client, &bob_call, "no_answer").await;
    let bob = wait_contact(&mut client, &cmp, 1, "failed").await;
    assert_eq!((bob["call_id"].as_str(), bob["failure_reason"].as_str()), (Some(&*bob_call), Some("no_answer")), "{bob}");
    let still = campaign(&mut client, &cmp).await;
    assert_eq!((still["status"].as_str(), progress(&still)), (Some("running"), [3, 0, 1, 1, 1, 0, 0]), "{still}");

    end_with(&mut client, &carol_call, "completed").await;
    let done = wait_campaign_status(&mut client, &cmp, "completed").await;
    assert_eq!(statuses(&done), ["completed", "failed", "completed"], "{done}");
    assert_eq!(progress(&done), [3, 0, 0, 2, 1, 0, 0], "{done}");
    let calls: Vec<_> = done["contacts"].as_array().expect("contacts").iter().map(|c| c["call_id"].as_str().expect("call_id")).collect();
    assert_eq!(calls, [alice_call.as_str(), bob_call.as_str(), carol_call.as_str()], "the contacts' calls are the dialled ones");
    assert!(done["updated_at"].as_str() >= done["created_at"].as_str(), "{done}");

    settle(&server).await;
    assert_eq!(dialer.dials().len(), 3, "every contact dialled once");
    for action in ["start", "pause", "resume", "cancel"] {
        assert_refused(&mut client, &cmp, action).await;
    }
    // The line's queue no longer holds a completed campaign; it answers by the journaled status.
    let refused = control(&mut client, &cmp, "pause").await.json();
    assert_eq!(refused["detail"], "cannot pause a completed campaign", "{refused}");
    assert_live_equals_durable(&server.system).await;
}

// ---------------------------------------------------------------- 2. windows and the daily cap

/// Contacts outside their local window are skipped, by the default window in their IANA zone
/// and by explicit windows (also ones running past midnight); a lead called as often as the
/// daily cap allows is skipped, within a campaign and across campaigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_outside_their_window_or_over_the_daily_cap_are_skipped_and_never_dialled() {
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), &dialer).await;
    setup(&mut client, 10).await;

    // The default window, 09:00-21:00 local: afternoon in one zone, night in another. Alice
    // twice with a cap of one: the second time is over the cap.
    let (afternoon, night) = (zone_where_it_is(15), zone_where_it_is(3));
    let contacts = json!([
        {"phone": ALICE, "timezone": afternoon},
        {"phone": BOB, "timezone": night},
        {"phone": ALICE, "timezone": afternoon},
    ]);
    let first = create_ok(&mut client, json!({"line_id": LINE, "contacts": contacts, "max_calls_per_lead_per_day": 1})).await;
    assert_eq!(first["window"], json!({"start": "09:00", "end": "21:00"}), "{first}");
    let first = id(&first);
    control_ok(&mut client, &first, "start").await;
    let alice_call = check_dial(&dialer.wait_dials(1).await[0], ALICE);
    let skipped = wait_campaign(&mut client, &first, "nothing pending", |c| c["progress"]["pending"] == 0).await;
    assert_eq!(statuses(&skipped), ["dialled", "skipped_outside_window", "skipped_daily_cap"], "{skipped}");
    assert_eq!(progress(&skipped), [3, 0, 1, 0, 0, 1, 1], "{skipped}");
    assert!(skipped["contacts"][1]["call_id"].is_null() && skipped["contacts"][2]["call_id"].is_null(), "{skipped}");
    end_with(&mut client, &alice_call, "completed").await;
    let done = wait_campaign_status(&mut client, &first, "completed").await;
    assert_eq!(progress(&done), [3, 0, 0, 1, 0, 1, 1], "{done}");

    // Across campaigns: the tenant called Alice today, the cap is one.
    let contacts = json!([{"phone": ALICE, "timezone": afternoon}]);
    let again = id(&create_ok(&mut client, json!({"line_id": LINE, "contacts": contacts, "max_calls_per_lead_per_day": 1})).await);
    control_ok(&mut client, &again, "start").await;
    let again = wait_campaign_status(&mut client, &again, "completed").await;
    assert_eq!((statuses(&again), progress(&again)), (vec!["skipped_daily_cap"], [1, 0, 0, 0, 0, 0, 1]), "{again}");
    // The default cap (two) lets her be called a second time.
    let contacts = json!([{"phone": ALICE, "timezone": afternoon}]);
    let second = id(&create_ok(&mut client, json!({"line_id": LINE, "contacts": contacts})).await);
    control_ok(&mut client, &second, "start").await;
    let second_call = check_dial(&dialer.wait_dials(2).await[1], ALICE);
    wait_contact(&mut client, &second, 0, "dialled").await;
    end_with(&mut client, &second_call, "completed").await;
    wait_campaign_status(&mut client, &second, "completed").await;

    // Explicit windows for UTC contacts (no zone is UTC): one two hours away from now, one
    // around now, and two that run past midnight (start after end) unless the clock is near it.
    let cases = [
        (window_away_from_now(), "skipped_outside_window"),
        (json!({"start": hhmm(120), "end": hhmm(-120)}), "skipped_outside_window"),
        (json!({"start": hhmm(-120), "end": hhmm(-240)}), "dialled"),
        (window_around_now(), "dialled"),
    ];
    let mut dialled = 2;
    for (n, (window, expected)) in cases.into_iter().enumerate() {
        let phone = [CAROL, DAVE, ERIN, BOB][n];
        let contacts = if n % 2 == 0 { json!([{"phone": phone}]) } else { utc_contacts(&[phone]) };
        let body = json!({"line_id": LINE, "contacts": contacts, "window": window});
        let cmp = id(&create_ok(&mut client, body).await);
        control_ok(&mut client, &cmp, "start").await;
        let contact = wait_contact(&mut client, &cmp, 0, expected).await;
        if expected == "dialled" {
            dialled += 1;
            let call = check_dial(&dialer.wait_dials(dialled).await[dialled - 1], phone);
            assert_eq!(contact["call_id"].as_str(), Some(&*call), "window {window}: {contact}");
            end_with(&mut client, &call, "completed").await;
        } else {
            assert!(contact["call_id"].is_null(), "window {window}: {contact}");
        }
        wait_campaign_status(&mut client, &cmp, "completed").await;
    }
    settle(&server).await;
    assert_eq!(dialer.dials().len(), dialled, "skipped contacts are never dialled: {:?}", dialer.dials());
    assert_live_equals_durable(&server.system).await;
}

/// Panics in the line's queue actor's campaign code, counted by a process-wide panic hook.
static QUEUE_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_queue_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.location().is_some_and(|l| l.file().contains("callback_queue")) {
                QUEUE_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// A running campaign whose last pending contact is skipped (outside its window, or over the
/// daily cap) completes; the line's queue must not crash doing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_whose_last_contact_is_skipped_completes_without_crashing_its_lines_queue() {
    count_queue_panics();
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), &dialer).await;
    setup(&mut client, 10).await;
    let body = json!({"line_id": LINE, "contacts": [{"phone": ALICE}], "window": window_away_from_now()});
    let cmp = id(&create_ok(&mut client, body).await);
    control_ok(&mut client, &cmp, "start").await;
    let done = wait_campaign_status(&mut client, &cmp, "completed").await;
    assert_eq!(statuses(&done), ["skipped_outside_window"], "{done}");
    settle(&server).await;
    assert_eq!(QUEUE_PANICS.load(std::sync::atomic::Ordering::SeqCst), 0, "the line's queue actor panicked");
    // And the line's queue answers at once (no restart window).
    let next = client.post("/v1/campaigns", &json!({"line_id": LINE, "contacts": [{"phone": BOB}]})).await.expect("request");
    assert_eq!(next.status, 201, "{}", next.text());
    assert!(dialer.dials().is_empty());
    assert_live_equals_durable(&server.system).await;
}

// ---------------------------------------------------------------- 3. seed 002 scenario 3

/// Scenario 3: a campaign runs with 2 concurrent calls on a 2-channel line; 3 incoming calls
/// are turned away busy and wait on hold, low; when the campaign completes they are pending and
/// called back in FIFO order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_calls_wait_on_hold_while_a_campaign_runs_and_are_called_back_in_order_when_it_completes() {
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), &dialer).await;
    setup(&mut client, 2).await;
    let body = json!({"line_id": LINE, "contacts": utc_contacts(&[DAVE, ERIN]), "window": window_around_now()});
    let cmp = id(&create_ok(&mut client, body).await);
    control_ok(&mut client, &cmp, "start").await;
    let dials = dialer.wait_dials(2).await;
    let (dave_call, erin_call) = (check_dial(&dials[0], DAVE), check_dial(&dials[1], ERIN));
    wait_campaign(&mut client, &cmp, "two dialled", |c| c["progress"]["dialled"] == 2).await;

    let mut held = Vec::new();
    for caller in [ALICE, BOB, CAROL] {
        held.push(turned_away_on_hold(&mut client, caller).await);
    }
    // A missed call reported by the platform waits too.
    let reported =
        client.post(&format!("/v1/lines/{LINE}/missed-calls"), &json!({"from": ALICE, "reason": "no_answer"})).await.expect("request");
    assert!(reported.status == 200 || reported.status == 201, "{}", reported.text());
    assert_eq!((reported.json()["id"].as_str(), reported.json()["status"].as_str()), (Some(&*held[0]), Some("on-hold")));

    // One campaign call ends: a channel frees, but the entries wait for the campaign.
    end_with(&mut client, &dave_call, "completed").await;
    wait_contact(&mut client, &cmp, 0, "completed").await;
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 2, "nobody on hold is dialled while the campaign runs");
    for id in &held {
        let entry = callback(&mut client, id).await;
        assert_eq!((entry["status"].as_str(), entry["priority"].as_str()), (Some("on-hold"), Some("low")), "{entry}");
    }

    // The campaign completes: the entries are pending and dialled first come, first served; two
    // channels, so the third waits for one to free.
    end_with(&mut client, &erin_call, "completed").await;
    let done = wait_campaign_status(&mut client, &cmp, "completed").await;
    assert_eq!(progress(&done), [2, 0, 0, 2, 0, 0, 0], "{done}");
    let dials = dialer.wait_dials(4).await;
    let alice_call = check_callback_dial(&dials[2], &held[0], ALICE);
    check_callback_dial(&dials[3], &held[1], BOB);
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 4, "the line is full: the third waits");
    assert_eq!(callback(&mut client, &held[2]).await["status"], "pending");
    end_with(&mut client, &alice_call, "completed").await;
    check_callback_dial(&dialer.wait_dials(5).await[4], &held[2], CAROL);
    wait_callback_status(&mut client, &held[0], "completed").await;
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 5);
    assert_live_equals_durable(&server.system).await;
}

/// Pausing releases the on-hold entries (they take the next free channel before any contact);
/// resuming holds new ones again; the campaign completes after; cancel works from draft,
/// running (releasing its entries) and paused, and a cancelled campaign refuses everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_cancel_release_the_on_hold_callbacks() {
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), &dialer).await;
    setup(&mut client, 1).await;
    let body = json!({"line_id": LINE, "contacts": utc_contacts(&[DAVE, ERIN]), "concurrency": 1, "window": window_around_now()});
    let cmp = id(&create_ok(&mut client, body).await);
    control_ok(&mut client, &cmp, "start").await;
    let dave_call = check_dial(&dialer.wait_dials(1).await[0], DAVE);
    wait_contact(&mut client, &cmp, 0, "dialled").await;
    let alice = turned_away_on_hold(&mut client, ALICE).await;

    // Pause: Alice is pending (the line is full: not dialled yet).
    let paused = control_ok(&mut client, &cmp, "pause").await;
    assert_eq!(paused["status"], "paused", "{paused}");
    let entry = wait_callback_status(&mut client, &alice, "pending").await;
    assert_eq!(entry["priority"], "low", "{entry}");
    // Dave's call ends: the freed channel calls Alice back, not the next contact.
    end_with(&mut client, &dave_call, "completed").await;
    let alice_call = check_callback_dial(&dialer.wait_dials(2).await[1], &alice, ALICE);
    let paused = wait_contact(&mut client, &cmp, 0, "completed").await;
    assert_eq!(paused["status"], "completed", "{paused}");
    settle(&server).await;
    let paused = campaign(&mut client, &cmp).await;
    assert_eq!((paused["status"].as_str(), statuses(&paused)), (Some("paused"), vec!["completed", "pending"]), "{paused}");
    assert_eq!(dialer.dials().len(), 2, "a paused campaign dials nobody");

    // Resume: the line is full (Alice's callback), so Erin waits; a new missed call waits on hold.
    assert_eq!(control_ok(&mut client, &cmp, "resume").await["status"], "running");
    let bob = turned_away_on_hold(&mut client, BOB).await;
    end_with(&mut client, &alice_call, "completed").await;
    let erin_call = check_dial(&dialer.wait_dials(3).await[2], ERIN);
    wait_contact(&mut client, &cmp, 1, "dialled").await;
    assert_eq!(callback(&mut client, &bob).await["status"], "on-hold");
    end_with(&mut client, &erin_call, "completed").await;
    wait_campaign_status(&mut client, &cmp, "completed").await;
    let bob_call = check_callback_dial(&dialer.wait_dials(4).await[3], &bob, BOB);
    end_with(&mut client, &bob_call, "completed").await;
    wait_callback_status(&mut client, &bob, "completed").await;

    // Cancel from draft.
    let draft = id(&create_ok(&mut client, json!({"line_id": LINE, "contacts": utc_contacts(&[DAVE])})).await);
    assert_eq!(control_ok(&mut client, &draft, "cancel").await["status"], "cancelled");
    // Cancel from running: its on-hold entry is released and called back.
    let body = json!({"line_id": LINE, "contacts": utc_contacts(&[DAVE, ERIN]), "concurrency": 1, "window": window_around_now()});
    let running = id(&create_ok(&mut client, body).await);
    control_ok(&mut client, &running, "start").await;
    let dave_again = check_dial(&dialer.wait_dials(5).await[4], DAVE);
    wait_contact(&mut client, &running, 0, "dialled").await;
    let carol = turned_away_on_hold(&mut client, CAROL).await;
    let cancelled = control_ok(&mut client, &running, "cancel").await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    wait_callback_status(&mut client, &carol, "pending").await;
    end_with(&mut client, &dave_again, "completed").await;
    let carol_call = check_callback_dial(&dialer.wait_dials(6).await[5], &carol, CAROL);
    end_with(&mut client, &carol_call, "completed").await;
    wait_callback_status(&mut client, &carol, "completed").await;
    // Cancel from paused: a contact in its window, dialled, then paused.
    let body = json!({"line_id": LINE, "contacts": utc_contacts(&[ERIN]), "window": window_around_now()});
    let paused = id(&create_ok(&mut client, body).await);
    control_ok(&mut client, &paused, "start").await;
    let erin_again = check_dial(&dialer.wait_dials(7).await[6], ERIN);
    wait_contact(&mut client, &paused, 0, "dialled").await;
    assert_eq!(control_ok(&mut client, &paused, "pause").await["status"], "paused");
    assert_eq!(control_ok(&mut client, &paused, "cancel").await["status"], "cancelled");
    end_with(&mut client, &erin_again, "completed").await;
    for cmp in [&draft, &running, &paused] {
        assert_eq!(campaign(&mut client, cmp).await["status"], "cancelled");
        for action in ["start", "pause", "resume", "cancel"] {
            assert_refused(&mut client, cmp, action).await;
        }
    }
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 7, "{:?}", dialer.dials());
    assert_live_equals_durable(&server.system).await;
}

// ---------------------------------------------------------------- 4. dialer failures

/// A dialer 500 fails the contact and ends its call `dial_failed`; a 429 (`Retry-After: 1`)
/// ends the call `provider_rejected`, cools the pool down, and the contact waits pending, then
/// is dialled again on a new call after the cooldown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_500_fails_the_contact_and_a_429_puts_it_back_until_the_cooldown_ends() {
    let dialer = FakeDialer::start().await;
    dialer.script(&[Answer::Status(500), Answer::RateLimited(1)]);
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), &dialer).await;
    setup(&mut client, 10).await;
    let body = json!({"line_id": LINE, "contacts": utc_contacts(&[ALICE, BOB, CAROL]), "concurrency": 1, "window": window_around_now()});
    let cmp = id(&create_ok(&mut client, body).await);
    control_ok(&mut client, &cmp, "start").await;

    let dials = dialer.wait_dials(2).await;
    let failed_call = check_dial(&dials[0], ALICE);
    let rejected_call = check_dial(&dials[1], BOB);
    let alice = wait_contact(&mut client, &cmp, 0, "failed").await;
    assert_eq!(alice["call_id"].as_str(), Some(&*failed_call), "{alice}");
    assert!(alice["failure_reason"].as_str().is_some_and(|r| !r.is_empty()), "{alice}");
    assert_eq!(wait_call_ended(&mut client, &failed_call).await["outcome"], "dial_failed");
    assert_eq!(wait_call_ended(&mut client, &rejected_call).await["outcome"], "provider_rejected");
    let platform = get_json(&mut client, "/v1/platform").await;
    let pool = platform["pools"].as_array().expect("pools").iter().find(|p| p["name"] == POOL).expect("the pool").clone();
    assert_eq!(pool["provider_rejections"].as_u64(), Some(1), "{pool}");

    // After the cooldown Bob is dialled again, on a new call; Carol waits (concurrency 1).
    let bob_call = check_dial(&dialer.wait_dials(3).await[2], BOB);
    assert_ne!(bob_call, rejected_call);
    let bob = wait_contact(&mut client, &cmp, 1, "dialled").await;
    assert_eq!(bob["call_id"].as_str(), Some(&*bob_call), "{bob}");
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 3);
    end_with(&mut client, &bob_call, "completed").await;
    let carol_call = check_dial(&dialer.wait_dials(4).await[3], CAROL);
    end_with(&mut client, &carol_call, "busy").await;
    let done = wait_campaign_status(&mut client, &cmp, "completed").await;
    assert_eq!((statuses(&done), progress(&done)), (vec!["failed", "completed", "failed"], [3, 0, 0, 1, 2, 0, 0]), "{done}");
    assert_eq!(done["contacts"][2]["failure_reason"], "busy", "{done}");
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 4);
    assert_live_equals_durable(&server.system).await;
}

/// A dial the provider refused with 429 never reached the lead: it must not count against the
/// lead's daily cap, so with a cap of one the contact is still dialled after the cooldown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_dial_does_not_use_up_the_leads_daily_cap() {
    let dialer = FakeDialer::start().await;
    dialer.script(&[Answer::RateLimited(1)]);
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), &dialer).await;
    setup(&mut client, 10).await;
    let body = json!({"line_id": LINE, "contacts": utc_contacts(&[ALICE]), "max_calls_per_lead_per_day": 1, "window": window_around_now()});
    let cmp = id(&create_ok(&mut client, body).await);
    control_ok(&mut client, &cmp, "start").await;
    let rejected = check_dial(&dialer.wait_dials(1).await[0], ALICE);
    assert_eq!(wait_call_ended(&mut client, &rejected).await["outcome"], "provider_rejected");
    // After the cooldown (1 s) the contact leaves pending: dialled, or skipped over the cap.
    let deadline = Instant::now() + PATIENCE;
    let after = loop {
        let now = campaign(&mut client, &cmp).await;
        let status = now["contacts"][0]["status"].clone();
        if status == "dialled" || status == "skipped_daily_cap" {
            break now;
        }
        assert!(Instant::now() < deadline, "the contact never left pending: {now}");
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(after["contacts"][0]["status"], "dialled", "the 429 used up Alice's only call today: {after}");
    let call = check_dial(&dialer.wait_dials(2).await[1], ALICE);
    end_with(&mut client, &call, "completed").await;
    wait_campaign_status(&mut client, &cmp, "completed").await;
    settle(&server).await;
    assert_live_equals_durable(&server.system).await;
}

// ---------------------------------------------------------------- 5. lifecycle errors and bad input

/// Wrong transitions are 409 `CAMPAIGN_WRONG_STATUS`, one running or paused campaign per line;
/// bad input (an unknown line among it) is 422 naming the field and journals nothing; unknown
/// campaigns are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_refuses_wrong_transitions_and_bad_input_names_its_field_and_journals_nothing() {
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), &dialer).await;
    setup(&mut client, 10).await;
    let other_line = "+14155550200";
    callback_line(&mut client, other_line, 10).await;

    // Contacts in their window, concurrency 1: a running campaign waits on its dialled call and
    // cannot complete by itself while the lifecycle is exercised.
    let body = |line: &str, phones: &[&str]| json!({"line_id": line, "contacts": utc_contacts(phones), "concurrency": 1, "window": window_around_now()});
    let first = id(&create_ok(&mut client, body(LINE, &[ALICE, BOB])).await);
    let second = id(&create_ok(&mut client, body(LINE, &[CAROL])).await);
    let elsewhere = id(&create_ok(&mut client, body(other_line, &[DAVE])).await);
    assert_ne!(first, second);
    for action in ["pause", "resume"] {
        assert_refused(&mut client, &first, action).await;
    }
    assert_eq!(control_ok(&mut client, &first, "start").await["status"], "running");
    let alice_call = check_dial(&dialer.wait_dials(1).await[0], ALICE);
    assert_refused(&mut client, &first, "start").await;
    assert_refused(&mut client, &first, "resume").await;
    // One running or paused campaign per line; another line is independent.
    assert_refused(&mut client, &second, "start").await;
    assert_eq!(control_ok(&mut client, &elsewhere, "start").await["status"], "running");
    assert_eq!(control_ok(&mut client, &first, "pause").await["status"], "paused");
    assert_refused(&mut client, &first, "pause").await;
    assert_refused(&mut client, &first, "start").await;
    assert_refused(&mut client, &second, "start").await;
    assert_eq!(control_ok(&mut client, &first, "resume").await["status"], "running");
    assert_refused(&mut client, &second, "start").await;
    let cancelled = control_ok(&mut client, &first, "cancel").await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["progress"]["total"], 2, "the cancelled campaign as journaled: {cancelled}");
    for action in ["start", "pause", "resume", "cancel"] {
        assert_refused(&mut client, &first, action).await;
    }
    // A cancelled campaign frees its line.
    end_with(&mut client, &alice_call, "completed").await;
    assert_eq!(control_ok(&mut client, &second, "start").await["status"], "running");
    let dials = dialer.wait_dials(3).await;
    let mut to: Vec<&str> = dials[1..].iter().map(Dial::to).collect();
    to.sort_unstable();
    assert_eq!(to, [CAROL, DAVE], "{dials:?}");
    for dial in &dials[1..] {
        end_with(&mut client, &dial.call_id(), "completed").await;
    }
    for cmp in [&second, &elsewhere] {
        wait_campaign_status(&mut client, cmp, "completed").await;
        for action in ["start", "pause", "resume", "cancel"] {
            assert_refused(&mut client, cmp, action).await;
        }
    }
    let third = id(&create_ok(&mut client, body(other_line, &[ERIN])).await);

    // Unknown campaigns and actions: 404.
    for path in ["/v1/campaigns/cmp_999999", "/v1/campaigns/nonsense", "/v1/campaigns/42"] {
        let response = client.get(path).await.expect("request");
        assert_problem(&response, 404, "NOT_FOUND");
    }
    assert_problem(&control(&mut client, "cmp_999999", "start").await, 404, "NOT_FOUND");
    assert_eq!(control(&mut client, &third, "launch").await.status, 404);

    // Bad input: 422 naming the field, nothing journaled.
    settle(&server).await;
    let before = last_seq(&server).await;
    let ok_contacts = utc_contacts(&[ALICE]);
    let cases = [
        (json!({"line_id": LINE, "contacts": [{"phone": ALICE}, {"phone": "555-0100"}]}), "contacts[1].phone"),
        (json!({"line_id": LINE, "contacts": [{"phone": ALICE, "timezone": "Mars/Olympus"}]}), "contacts[0].timezone"),
        (json!({"line_id": LINE, "contacts": []}), "contacts"),
        (json!({"line_id": "not-a-number", "contacts": ok_contacts}), "line_id"),
        (json!({"line_id": LINE, "contacts": ok_contacts, "concurrency": 0}), "concurrency"),
        (json!({"line_id": LINE, "contacts": ok_contacts, "concurrency": 101}), "concurrency"),
        (json!({"line_id": LINE, "contacts": ok_contacts, "max_calls_per_lead_per_day": 0}), "max_calls_per_lead_per_day"),
        (json!({"line_id": LINE, "contacts": ok_contacts, "window": {"start": "25:00", "end": "10:00"}}), "window.start"),
        (json!({"line_id": LINE, "contacts": ok_contacts, "window": {"start": "9:00", "end": "10:00"}}), "window.start"),
        (json!({"line_id": LINE, "contacts": ok_contacts, "window": {"start": "09:00", "end": "10:60"}}), "window.end"),
        (json!({"line_id": LINE, "contacts": ok_contacts, "window": {"start": "10:00", "end": "10:00"}}), "window.end"),
        (json!({"line_id": LINE, "contacts": ok_contacts, "window": {"start": "+9:00", "end": "10:00"}}), "window.start"),
        // serde's derive would read these objects from arrays, field by field.
        (json!({"line_id": LINE, "contacts": ok_contacts, "window": ["09:00", "17:00"]}), "window"),
        (json!({"line_id": LINE, "contacts": [{"phone": ALICE}, [BOB]]}), "contacts[1]"),
    ];
    for (body, field) in cases {
        let response = create(&mut client, body.clone()).await;
        let problem = assert_problem(&response, 422, "INVALID_FIELD");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    // Malformed or unknown members are refused too.
    for body in [json!({"line_id": LINE}), json!({"line_id": LINE, "contacts": ok_contacts, "colour": "blue"})] {
        let response = create(&mut client, body.clone()).await;
        assert!(response.status == 400 || response.status == 422, "{body}: {}", response.text());
    }
    // An unknown line in the body: 422 naming it, as an admission does.
    let response = create(&mut client, json!({"line_id": "+14155550999", "contacts": ok_contacts})).await;
    assert_eq!(assert_problem(&response, 422, "UNKNOWN_LINE")["field"], "line_id");
    // Wrong transitions journal nothing either.
    assert_refused(&mut client, &third, "pause").await;
    assert_refused(&mut client, &first, "start").await;
    assert_eq!(last_seq(&server).await, before, "refused requests journal nothing");
    assert_live_equals_durable(&server.system).await;
}

// ---------------------------------------------------------------- 6. restart

/// A running campaign with a dialled contact and a pending one survives a restart: nothing is
/// redialled, the concurrency still holds, and ending the call afterwards settles the contact,
/// dials the next one and completes the campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_campaign_with_a_dialled_contact_survives_a_restart_and_completes_after_it() {
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (mut server, mut client) = boot(dir.path(), &dialer).await;
    setup(&mut client, 10).await;
    let body = json!({"line_id": LINE, "contacts": utc_contacts(&[ALICE, BOB]), "concurrency": 1, "window": window_around_now()});
    let cmp = id(&create_ok(&mut client, body).await);
    control_ok(&mut client, &cmp, "start").await;
    let alice_call = check_dial(&dialer.wait_dials(1).await[0], ALICE);
    wait_contact(&mut client, &cmp, 0, "dialled").await;
    settle(&server).await;
    let before = campaign(&mut client, &cmp).await;

    for restart in 0..2 {
        server.stop().await;
        (server, client) = boot(dir.path(), &dialer).await;
        settle(&server).await;
        let after = campaign(&mut client, &cmp).await;
        assert_eq!(after, before, "restart {restart}: the campaign as it was");
        let record = get_json(&mut client, &format!("/v1/calls/{alice_call}")).await;
        assert_eq!(record["status"], "active", "restart {restart}: {record}");
        assert_eq!(dialer.dials().len(), 1, "restart {restart}: nobody redialled, Bob still waits");
        assert_live_equals_durable(&server.system).await;
    }

    end_with(&mut client, &alice_call, "completed").await;
    let bob_call = check_dial(&dialer.wait_dials(2).await[1], BOB);
    wait_contact(&mut client, &cmp, 0, "completed").await;
    wait_contact(&mut client, &cmp, 1, "dialled").await;
    end_with(&mut client, &bob_call, "completed").await;
    let done = wait_campaign_status(&mut client, &cmp, "completed").await;
    assert_eq!(progress(&done), [2, 0, 0, 2, 0, 0, 0], "{done}");
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 2);
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

/// A cancelled campaign still settles the calls it had in progress: their ends complete or fail
/// their contacts, nothing else is dialled, and the campaign stays cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_campaign_settles_the_calls_it_had_in_progress() {
    let dialer = FakeDialer::start().await;
    let dir = temp_dir();
    let (server, mut client) = boot(dir.path(), &dialer).await;
    setup(&mut client, 10).await;
    let body = json!({"line_id": LINE, "contacts": utc_contacts(&[ALICE, BOB, CAROL]), "window": window_around_now(), "concurrency": 1});
    let cmp = id(&create_ok(&mut client, body).await);
    control_ok(&mut client, &cmp, "start").await;
    let dials = dialer.wait_dials(1).await;
    let alice_call = check_dial(&dials[0], ALICE);
    wait_contact(&mut client, &cmp, 0, "dialled").await;
    let cancelled = control_ok(&mut client, &cmp, "cancel").await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    end_with(&mut client, &alice_call, "completed").await;
    wait_contact(&mut client, &cmp, 0, "completed").await;
    let settled = campaign(&mut client, &cmp).await;
    assert_eq!(settled["status"], "cancelled", "{settled}");
    assert_eq!(statuses(&settled), ["completed", "pending", "pending"], "{settled}");
    settle(&server).await;
    assert_eq!(dialer.dials().len(), 1, "a cancelled campaign dials nobody else");
    assert_refused(&mut client, &cmp, "start").await;
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}
