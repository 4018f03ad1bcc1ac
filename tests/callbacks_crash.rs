//! Crash test for callbacks (issue 5 §4): the real `switchboard` binary dials missed callers back
//! through a fake dialer this test runs, and is killed with SIGKILL at random moments while
//! clients report missed calls, turn inbound callers away busy, free channels and end the
//! callback calls; it is restarted on the same data dir every time.
//!
//! It proves that callbacks are dialled at most once, and that no acknowledged missed call is
//! lost:
//! - the fake dialer never sees two dial requests with the same `call_id`, nor two for the same
//!   `original_missed_call_id` (the test makes no explicit retries, so the bound is 1 + 0);
//! - when a dial request arrives, the entry is already durably `processing` with that request's
//!   `call_id` and not yet `dialed` (the dialer asks the server while it holds the request);
//! - after every restart no entry is left `processing` without `dialed` from before the kill:
//!   those are `failed` (`unknown_after_restart`), got at most one dial request, and their call
//!   is ended; an entry seen `processing` and `dialed` keeps waiting for its call's end, and
//!   then settles by that end's outcome (`completed` → `completed`, others → `failed` with the
//!   outcome as the reason): the server never ends a dialled callback call by itself;
//! - every acknowledged missed call (201/200 from `missed-calls`, or a `reject_busy` with a
//!   `missed_call_id`) is listed by `GET /v1/callbacks` with an explicit status and a
//!   `missed_count` at least the number of distinct attempts acknowledged on it;
//! - a retried attempt counts once: every missed call names its attempt (`provider_call_id`,
//!   and the `Idempotency-Key` on an inbound call), as a provider's webhook does. An attempt left
//!   unanswered by a kill is sent again after the restart, and some answered ones are sent again
//!   at once (a provider that lost the answer). When nothing else touched the caller in
//!   between, the repeat must answer the same entry with the same count. No entry may be
//!   acknowledged as new (`missed_count` 1) for two different attempts;
//! - once settled, `GET /v1/callbacks/stats` matches the list, and a clean restart keeps the list
//!   exactly.
//!
//! Environment:
//! - `SWITCHBOARD_CALLBACKS_CRASH_CYCLES`: kill cycles (default 8).
//! - `SWITCHBOARD_CALLBACKS_CRASH_SEED`: the PRNG seed (default: from the clock). It is printed
//!   first; it replays the choices (kill delays, requests, the dialer's answers), not the timing.
//! - `SWITCHBOARD_CALLBACKS_CRASH_KEEP=1`: keep the temp dir (journal + server log) on success.
//!   It is always kept, and its path printed, on failure.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::process::{Launcher, Server};
use serde_json::{Value, json};
use switchboard::client::{Client, Response};
use switchboard::http::validate::rfc3339;
use switchboard_actors::state::CALLBACKS_CLOSED_RETAINED_MAX;

// The seeded generator is shared with the other tests: `common::Rng`.
use common::Rng;

const TOKEN: &str = "callbacks-crash-token-0123456789";
const CYCLES_DEFAULT: u64 = 8;

const TENANTS: usize = 2;
const LINES_PER_TENANT: usize = 2;
/// Distinct callers per line: repeats count on the caller's open entry.
const CALLERS_PER_LINE: usize = 10;
const TENANT_LIMIT: u64 = 20;
const CAPACITY: u64 = 64;
/// Small, so full queues refuse missed calls too (those are not acknowledged).
const QUEUE_PER_LINE_MAX: u64 = 8;
/// The test makes no `POST /v1/callbacks/{id}/retry`: each entry may be dialled at most 1 + 0 times.
const EXPLICIT_RETRIES: usize = 0;

/// Percent of answered missed calls sent again at once, as a provider that lost the answer does.
const DUPLICATE_PERCENT: u64 = 15;

const WORKERS: usize = 2;
/// A worker stops after this many requests even if the kill never comes.
const WORKER_OPS_MAX: usize = 5_000;
const OP_PAUSE_MS: (u64, u64) = (0, 4);
const KILL_DELAY_MS: (u64, u64) = (150, 1_200);
const SNAPSHOT_EVERY_EVENTS: (u64, u64) = (100, 400);
/// Percent of callback-call ends with outcome `completed` (the rest: `no_answer`).
const END_COMPLETED_PERCENT: u64 = 70;

const BACKUP_SCAN_MS: u64 = 200;
const DIALER_TIMEOUT_MS: u64 = 500;
/// The fake dialer answers 2xx after this long, ...
const DIAL_DELAY_MS: (u64, u64) = (0, 50);
/// ... or 500 ...
const DIAL_FAIL_PERCENT: u64 = 12;
/// ... or too late (the server gives up after `DIALER_TIMEOUT_MS`).
const DIAL_SLOW_PERCENT: u64 = 3;
const DIAL_SLOW_MS: u64 = 700;
/// How long the fake dialer tries to read the entry back while it holds a dial request.
const DURABLE_CHECK_WITHIN: Duration = Duration::from_millis(250);

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const WORKERS_STOP_TIMEOUT: Duration = Duration::from_secs(15);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
const SETTLE_ROUNDS_MAX: usize = 400;
const SETTLE_POLL: Duration = Duration::from_millis(50);
/// The server keeps the `CALLBACKS_CLOSED_RETAINED_MAX` most recently closed entries; the model
/// forgets its earliest closed entries past this. The margin covers the model's order (when it
/// first saw an entry closed, at most a cycle late) differing from the server's (when it closed).
const CLOSED_KEPT_MAX: usize = CALLBACKS_CLOSED_RETAINED_MAX - 2_000;
const LIST_PAGE: usize = 200;
const LIST_PAGES_MAX: usize = 1_000;

const UNKNOWN_AFTER_RESTART: &str = "unknown_after_restart";

// ----------------------------------------------------------------------------------- fixtures

fn tenant_id(t: usize) -> String {
    format!("cbcrash-t{t}")
}

fn line_number(t: usize, j: usize) -> usize {
    t * LINES_PER_TENANT + j
}

fn line_id(t: usize, j: usize) -> String {
    format!("+1415555020{}", line_number(t, j))
}

fn agent_id(t: usize, j: usize) -> String {
    format!("agent-{}", line_number(t, j))
}

/// Line `j` of a tenant has 1 or 2 channels.
fn channels(j: usize) -> u64 {
    1 + (j % 2) as u64
}

fn caller_id(t: usize, j: usize, k: usize) -> String {
    format!("+1650555{:02}{k:02}", line_number(t, j))
}

/// `(tenant, agent)` of a line id.
fn line_owner(line: &str) -> Option<(String, String)> {
    (0..TENANTS)
        .flat_map(|t| (0..LINES_PER_TENANT).map(move |j| (t, j)))
        .find(|&(t, j)| line_id(t, j) == line)
        .map(|(t, j)| (tenant_id(t), agent_id(t, j)))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

// -------------------------------------------------------------------------------- fake dialer

/// What the fake dialer learnt by reading the entry back while it held the dial request.
#[derive(Clone, Debug)]
enum DurableCheck {
    /// Durably `processing` (or `failed`, after a restart) with this call, not `dialed`.
    Confirmed,
    /// The server did not answer in time (killed, booting).
    Inconclusive(String),
    Violated(String),
}

#[derive(Clone, Debug)]
struct DialRecord {
    body: Value,
    /// What the fake dialer answered (0: it was cut off before it decided).
    status: u16,
    check: Option<DurableCheck>,
}

/// The dialer endpoint the server POSTs to: records every request before anything else.
struct FakeDialer {
    records: Mutex<Vec<DialRecord>>,
    rng: Mutex<Rng>,
    /// The switchboard now running, for the durable-before-dial check.
    server: Mutex<Option<SocketAddr>>,
    /// Answers 500 or too late sometimes; otherwise 200 within a few ms.
    flaky: bool,
}

impl FakeDialer {
    async fn start(seed: u64, flaky: bool) -> Result<(Arc<FakeDialer>, SocketAddr)> {
        let dialer = Arc::new(FakeDialer { records: Mutex::default(), rng: Mutex::new(Rng(seed)), server: Mutex::default(), flaky });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the fake dialer")?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().route("/dial", axum::routing::post(dial)).with_state(Arc::clone(&dialer));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((dialer, addr))
    }

    fn records(&self) -> Vec<DialRecord> {
        lock(&self.records).clone()
    }
}

async fn dial(State(dialer): State<Arc<FakeDialer>>, body: axum::body::Bytes) -> axum::response::Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or_else(|_| json!({"unparsable": String::from_utf8_lossy(&body)}));
    let at = {
        let mut records = lock(&dialer.records);
        records.push(DialRecord { body: body.clone(), status: 0, check: None });
        records.len() - 1
    };
    let (delay_ms, status) = {
        let mut rng = lock(&dialer.rng);
        let roll = rng.below(100);
        if !dialer.flaky {
            (rng.between((0, 5)), 200)
        } else if roll < DIAL_FAIL_PERCENT {
            (rng.between(DIAL_DELAY_MS), 500)
        } else if roll < DIAL_FAIL_PERCENT + DIAL_SLOW_PERCENT {
            (DIAL_SLOW_MS, 200)
        } else {
            (rng.between(DIAL_DELAY_MS), if rng.percent(50) { 200 } else { 202 })
        }
    };
    let server = *lock(&dialer.server);
    let check = durable_check(server, &body).await;
    lock(&dialer.records)[at].check = Some(check);
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    lock(&dialer.records)[at].status = status;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({"accepted": status.is_success()}))).into_response()
}

/// Reads the entry back from the server while its dial request is held: it must already be
/// durably `processing` with this `call_id`, and not `dialed`.
async fn durable_check(server: Option<SocketAddr>, body: &Value) -> DurableCheck {
    let (Some(server), Some(callback), Some(call)) = (server, body["original_missed_call_id"].as_str(), body["call_id"].as_str()) else {
        return DurableCheck::Inconclusive(format!("no server running, or no ids in {body}"));
    };
    let path = format!("/v1/callbacks/{callback}");
    let deadline = Instant::now() + DURABLE_CHECK_WITHIN;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        let attempt = async {
            let mut client = Client::connect(server, Some(TOKEN.to_owned())).await?;
            client.get(&path).await
        };
        match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), attempt).await {
            Ok(Ok(response)) if response.status == 200 => {
                let entry = response.json();
                let status = text(&entry["status"]);
                let ok = entry["call_id"] == call && entry["dialed"] == false && (status == "processing" || status == "failed");
                return if ok {
                    DurableCheck::Confirmed
                } else {
                    DurableCheck::Violated(format!("dial request {body} arrived while the entry was {entry}"))
                };
            }
            Ok(Ok(response)) if response.status == 503 => last = "503 (booting)".to_owned(),
            Ok(Ok(response)) => {
                return DurableCheck::Violated(format!("dial request {body}: GET {path} answered {} {}", response.status, response.text()));
            }
            Ok(Err(error)) => last = format!("{error:#}"),
            Err(_) => last = "no answer in time".to_owned(),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    DurableCheck::Inconclusive(last)
}

// ------------------------------------------------------------------------------------- model

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    reports: u64,
    created: u64,
    repeated: u64,
    queue_full: u64,
    inbound_admitted: u64,
    turned_away: u64,
    turned_away_refused: u64,
    inbound_ended: u64,
    callback_ends: u64,
    callback_ends_completed: u64,
    unanswered: u64,
    /// Attempts sent again after a kill left them unanswered.
    retried: u64,
    /// Answered attempts sent again at once; `duplicates_checked` of them with nothing else
    /// touching the caller in between.
    duplicates: u64,
    duplicates_checked: u64,
    kills: u64,
}

/// What the acknowledgements of one entry said.
#[derive(Clone, Debug)]
struct Acked {
    line: String,
    caller: String,
    max_missed_count: u64,
    /// The distinct attempts acknowledged on this entry: it counts at least these.
    attempts: BTreeSet<String>,
    /// The attempts whose acknowledgement showed the entry new (`missed_count` 1): only the one
    /// that created it (and its retries) can.
    created_by: BTreeSet<String>,
    /// Seen closed (completed, failed, cancelled): in `Model::closed`.
    seen_closed: bool,
}

/// One missed call as a provider's webhook or the platform's report sends it. Its name is its
/// `provider_call_id`, which a retry repeats.
#[derive(Clone, Debug)]
struct Attempt {
    name: String,
    line: String,
    caller: String,
    /// `POST /v1/lines/{id}/missed-calls` (true) or an inbound call on the line (false).
    report: bool,
    /// Sent before: this is a retry.
    sent_before: bool,
}

/// Requests for one caller on one line.
#[derive(Clone, Copy, Debug, Default)]
struct Flights {
    sent: u64,
    in_flight: u64,
}

/// An end the clients sent for a callback call.
#[derive(Clone, Debug)]
struct SentEnd {
    callback: String,
    outcome: String,
    /// 200; false while unanswered (resolved from the call at the next restart).
    acked: bool,
}

#[derive(Default)]
struct Model {
    /// Acknowledged entries by id.
    acked: BTreeMap<String, Acked>,
    /// Inbound calls the clients admitted and did not end.
    inbound: Vec<String>,
    /// Entries seen durably `processing` and `dialed`: id → call id.
    dialed: BTreeMap<String, String>,
    /// Ends sent for callback calls: call id → end.
    ends: BTreeMap<String, SentEnd>,
    /// Broken rules and unexpected answers; any fails the test.
    problems: Vec<String>,
    stats: Stats,
    /// Attempts named so far (the next name's number).
    attempts_named: u64,
    /// Attempts a kill left unanswered, to send again after the restart.
    retries: Vec<Attempt>,
    /// Missed calls sent per (line, caller).
    flights: BTreeMap<(String, String), Flights>,
    /// Acknowledged entries seen closed, in the order the model first saw them so.
    closed: VecDeque<String>,
    /// Entries the model forgot (closed long enough ago that the server may have forgotten them
    /// too): dial requests and ends naming one are checked only while the server lists it. Like
    /// the fake dialer's log and `ends`, this grows with the run (one id per closed entry).
    forgotten: BTreeSet<String>,
}

impl Model {
    /// Notes the acknowledged entries `entries` shows closed, then forgets the earliest closed
    /// past `CLOSED_KEPT_MAX`, as the server forgets them past its own larger bound: soak runs
    /// never look for an entry the server was entitled to forget.
    fn forget_closed(&mut self, entries: &BTreeMap<String, Value>) {
        for (id, acked) in &mut self.acked {
            let closed = entries.get(id).is_some_and(|entry| ["completed", "failed", "cancelled"].contains(&text(&entry["status"])));
            if closed && !acked.seen_closed {
                acked.seen_closed = true;
                self.closed.push_back(id.clone());
            }
        }
        while self.closed.len() > CLOSED_KEPT_MAX {
            let id = self.closed.pop_front().expect("longer than the bound");
            self.acked.remove(&id);
            self.dialed.remove(&id);
            self.forgotten.insert(id);
        }
    }

    /// Records an acknowledged missed call. `created`: 201 (new entry) or 200 (a repeat), if known.
    fn ack(&mut self, entry: &Value, attempt: &Attempt, created: Option<bool>, via: &str) {
        let (line, caller) = (attempt.line.as_str(), attempt.caller.as_str());
        let Some(id) = entry["id"].as_str() else {
            self.problems.push(format!("{via}: an acknowledged missed call without an entry id: {entry}"));
            return;
        };
        // A new or repeated missed call lands on a pending entry; a retry of an attempt already
        // counted is answered with its entry as it is, whose callback may be under way.
        let statuses: &[&str] = if attempt.sent_before { &["pending", "processing"] } else { &["pending"] };
        if entry["line_id"] != line || entry["caller"] != caller || !statuses.contains(&text(&entry["status"])) {
            self.problems.push(format!("{via} for {caller} on {line} answered with {entry}"));
        }
        let count = entry["missed_count"].as_u64().unwrap_or(0);
        match created {
            Some(true) => {
                self.stats.created += 1;
                if count != 1 {
                    self.problems.push(format!("{via}: 201 for an entry not new: {entry}"));
                }
            }
            Some(false) => self.stats.repeated += 1,
            None => {}
        }
        let acked = self.acked.entry(id.to_owned()).or_insert_with(|| Acked {
            line: line.to_owned(),
            caller: caller.to_owned(),
            max_missed_count: 0,
            attempts: BTreeSet::new(),
            created_by: BTreeSet::new(),
            seen_closed: false,
        });
        acked.max_missed_count = acked.max_missed_count.max(count);
        acked.attempts.insert(attempt.name.clone());
        // Whichever order the clients see their answers in (a repeat's 200 can reach the model
        // before the creation's 201), every acknowledgement after the creation counts at
        // least 2, except a retry of the creating attempt: a `missed_count` of 1 for a second
        // attempt is a second creation.
        if count == 1 {
            acked.created_by.insert(attempt.name.clone());
            if acked.created_by.len() > 1 {
                self.problems.push(format!("{via}: entry created twice, by {:?}: {entry}", acked.created_by));
            }
        }
    }

    /// An entry seen `processing` and `dialed` (durable state): its call may not change.
    fn see_dialed(&mut self, entry: &Value) {
        let (Some(id), Some(call)) = (entry["id"].as_str(), entry["call_id"].as_str()) else {
            self.problems.push(format!("a dialled entry without a call: {entry}"));
            return;
        };
        if let Some(seen) = self.dialed.insert(id.to_owned(), call.to_owned())
            && seen != call
        {
            self.problems.push(format!("entry {id} was dialled with call {seen}, now with {call}: {entry}"));
        }
    }
}

// ------------------------------------------------------------------------------------ client

async fn request(client: &mut Client, method: &str, path: &str, body: Option<&Value>) -> Result<Response> {
    match tokio::time::timeout(REQUEST_TIMEOUT, client.send(method, path, body, &[])).await {
        Ok(answer) => answer,
        Err(_) => Err(anyhow!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

async fn get_json(client: &mut Client, path: &str) -> Result<Value> {
    let response = request(client, "GET", path, None).await?;
    ensure!(response.status == 200, "GET {path}: {} {}", response.status, response.text());
    Ok(response.json())
}

async fn send_ok(client: &mut Client, method: &str, path: &str, body: &Value, status: u16) -> Result<Value> {
    let response = request(client, method, path, Some(body)).await?;
    ensure!(response.status == status, "{method} {path} {body}: {} {}", response.status, response.text());
    Ok(response.json())
}

/// Every entry `GET /v1/callbacks` lists, by id (offset pages; entries are never removed here).
async fn list_callbacks(client: &mut Client) -> Result<BTreeMap<String, Value>> {
    let mut entries = BTreeMap::new();
    for page in 0..LIST_PAGES_MAX {
        let path = format!("/v1/callbacks?limit={LIST_PAGE}&offset={}", page * LIST_PAGE);
        let body = get_json(client, &path).await?;
        let data = body["data"].as_array().with_context(|| format!("GET {path}: no data in {body}"))?;
        let total = body["total"].as_u64().with_context(|| format!("GET {path}: no total in {body}"))? as usize;
        for entry in data {
            let id = entry["id"].as_str().with_context(|| format!("GET {path}: an entry without id: {entry}"))?;
            ensure!(entries.insert(id.to_owned(), entry.clone()).is_none(), "GET {path}: {id} listed twice");
        }
        if data.len() < LIST_PAGE {
            ensure!(entries.len() == total, "GET /v1/callbacks: total {total}, {} entries listed", entries.len());
            return Ok(entries);
        }
    }
    bail!("GET /v1/callbacks: more than {LIST_PAGES_MAX} pages")
}

/// Ids of the live inbound calls (`GET /v1/calls`, following `next_starting_after`).
async fn live_inbound_calls(client: &mut Client) -> Result<Vec<String>> {
    let mut calls = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..LIST_PAGES_MAX {
        let mut path = format!("/v1/calls?limit={LIST_PAGE}");
        if let Some(after) = &after {
            path.push_str(&format!("&starting_after={after}"));
        }
        let page = get_json(client, &path).await?;
        let data = page["data"].as_array().with_context(|| format!("GET {path}: no data in {page}"))?;
        calls.extend(data.iter().filter(|c| c["direction"] == "inbound").filter_map(|c| c["call_id"].as_str().map(str::to_owned)));
        match page["next_starting_after"].as_str() {
            Some(next) if page["has_more"] == true => after = Some(next.to_owned()),
            _ => return Ok(calls),
        }
    }
    bail!("GET /v1/calls: more than {LIST_PAGES_MAX} pages")
}

// ----------------------------------------------------------------------------------- workers

fn pick_line(rng: &mut Rng) -> (usize, usize, String, String) {
    let (t, j) = (rng.index(TENANTS), rng.index(LINES_PER_TENANT));
    (t, j, line_id(t, j), caller_id(t, j, rng.index(CALLERS_PER_LINE)))
}

/// A missed call: reported to `POST /v1/lines/{id}/missed-calls` (`report`), or an inbound call
/// on a callback line, admitted or turned away busy. A retry left by a kill goes first. Each op
/// returns false when the connection died.
async fn op_missed(client: &mut Client, model: &Mutex<Model>, rng: &mut Rng, report: bool) -> bool {
    let attempt = {
        let mut m = lock(model);
        match m.retries.pop() {
            Some(attempt) => {
                m.stats.retried += 1;
                attempt
            }
            None => {
                let (_, _, line, caller) = pick_line(rng);
                m.attempts_named += 1;
                Attempt { name: format!("CA-{}", m.attempts_named), line, caller, report, sent_before: false }
            }
        }
    };
    let Some((first, sent, alone)) = send_attempt(client, model, &attempt).await else {
        return false;
    };
    let Some((id, count)) = first.filter(|_| rng.percent(DUPLICATE_PERCENT)) else {
        return true;
    };
    // The provider lost the answer and sends the same attempt again.
    let attempt = Attempt { sent_before: true, ..attempt };
    let Some((again, _, _)) = send_attempt(client, model, &attempt).await else {
        return false;
    };
    let mut m = lock(model);
    m.stats.duplicates += 1;
    let untouched = alone && m.flights.get(&(attempt.line.clone(), attempt.caller.clone())).is_some_and(|f| f.sent == sent + 1);
    if let Some((again_id, again_count)) = again
        && untouched
        && again_id == id
    {
        m.stats.duplicates_checked += 1;
        if again_count != count {
            m.problems.push(format!("attempt {attempt:?} counted twice on {id}: missed_count {count}, then {again_count} for its retry"));
        }
    }
    true
}

/// Sends one attempt and models its answer. `None`: the connection died. Otherwise the
/// acknowledged entry's id and count, if any; the number of missed calls sent for this caller
/// with this one; and whether none was in flight when it was sent.
async fn send_attempt(client: &mut Client, model: &Mutex<Model>, attempt: &Attempt) -> Option<(Option<(String, u64)>, u64, bool)> {
    let key = (attempt.line.clone(), attempt.caller.clone());
    let (sent, alone) = {
        let mut m = lock(model);
        let flights = m.flights.entry(key.clone()).or_default();
        flights.sent += 1;
        flights.in_flight += 1;
        (flights.sent, flights.in_flight == 1)
    };
    let (path, body, headers) = if attempt.report {
        (format!("/v1/lines/{}/missed-calls", attempt.line), json!({"from": attempt.caller, "provider_call_id": attempt.name}), vec![])
    } else {
        let (tenant, _) = line_owner(&attempt.line).expect("a known line");
        let body = json!({"tenant_id": tenant, "line_id": attempt.line, "direction": "inbound", "from": attempt.caller, "provider_call_id": attempt.name});
        ("/v1/calls".to_owned(), body, vec![("idempotency-key", attempt.name.as_str())])
    };
    let answer = match tokio::time::timeout(REQUEST_TIMEOUT, client.send("POST", &path, Some(&body), &headers)).await {
        Ok(answer) => answer,
        Err(_) => Err(anyhow!("POST {path}: no answer within {REQUEST_TIMEOUT:?}")),
    };
    let mut m = lock(model);
    if let Some(flights) = m.flights.get_mut(&key) {
        flights.in_flight -= 1;
    }
    if attempt.report {
        m.stats.reports += 1;
    }
    let Ok(response) = answer else {
        m.stats.unanswered += 1;
        m.retries.push(Attempt { sent_before: true, ..attempt.clone() });
        return None;
    };
    let answer = response.json();
    let acked = match (attempt.report, response.status) {
        (true, 200 | 201) => {
            m.ack(&answer, attempt, Some(response.status == 201), &format!("POST {path}"));
            Some(&answer)
        }
        (true, 429) if answer["code"] == "CALLBACK_QUEUE_FULL" => {
            m.stats.queue_full += 1;
            None
        }
        (false, 201) => {
            match answer["call_id"].as_str() {
                Some(id) => {
                    m.stats.inbound_admitted += 1;
                    m.inbound.push(id.to_owned());
                }
                None => m.problems.push(format!("POST /v1/calls {body}: 201 without call_id: {answer}")),
            }
            None
        }
        (false, 200) if answer["action"] == "reject_busy" => {
            m.stats.turned_away += 1;
            match answer["missed_call_id"].as_str() {
                Some(id) => {
                    if answer["callback"]["id"] != id || answer["missed_count"] != answer["callback"]["missed_count"] {
                        m.problems.push(format!("POST /v1/calls {body}: reject_busy names another entry: {answer}"));
                    }
                    m.ack(&answer["callback"], attempt, None, "reject_busy");
                    Some(&answer["callback"])
                }
                None if answer["callback_refused"] == "CALLBACK_QUEUE_FULL" => {
                    m.stats.turned_away_refused += 1;
                    None
                }
                None => {
                    m.problems.push(format!("POST /v1/calls {body}: reject_busy without a missed call: {answer}"));
                    None
                }
            }
        }
        (_, status) => {
            m.problems.push(format!("POST {path} {body} answered {status}: {}", response.text()));
            None
        }
    };
    let acked = acked.and_then(|entry| Some((entry["id"].as_str()?.to_owned(), entry["missed_count"].as_u64()?)));
    Some((acked, sent, alone))
}

/// Ends one of the clients' inbound calls: a channel frees, which triggers a dispatch.
async fn op_end_inbound(client: &mut Client, model: &Mutex<Model>, rng: &mut Rng) -> bool {
    let id = {
        let mut m = lock(model);
        let len = m.inbound.len();
        if len == 0 {
            return true;
        }
        m.inbound.swap_remove(rng.index(len))
    };
    let path = format!("/v1/calls/{id}/end");
    let answer = request(client, "POST", &path, Some(&json!({}))).await;
    let mut m = lock(model);
    let Ok(response) = answer else {
        m.stats.unanswered += 1;
        return false;
    };
    if response.status == 200 && response.json()["status"] == "ended" {
        m.stats.inbound_ended += 1;
    } else {
        m.problems.push(format!("POST {path} answered {}: {}", response.status, response.text()));
    }
    true
}

/// Finds callbacks the dialer accepted (`processing`, `dialed`) and ends one of their calls,
/// as the platform would when the callback call hangs up.
async fn op_end_dialled(client: &mut Client, model: &Mutex<Model>, rng: &mut Rng) -> bool {
    let listed = match request(client, "GET", &format!("/v1/callbacks?status=processing&limit={LIST_PAGE}"), None).await {
        Ok(response) if response.status == 200 => response.json(),
        Ok(response) => {
            lock(model).problems.push(format!("GET /v1/callbacks?status=processing answered {}: {}", response.status, response.text()));
            return true;
        }
        Err(_) => return false,
    };
    let (call, callback, outcome) = {
        let mut m = lock(model);
        let mut candidates = Vec::new();
        for entry in listed["data"].as_array().into_iter().flatten().filter(|e| e["dialed"] == true) {
            m.see_dialed(entry);
            if let (Some(id), Some(call)) = (entry["id"].as_str(), entry["call_id"].as_str())
                && !m.ends.contains_key(call)
            {
                candidates.push((call.to_owned(), id.to_owned()));
            }
        }
        if candidates.is_empty() {
            return true;
        }
        let (call, callback) = candidates.swap_remove(rng.index(candidates.len()));
        let outcome = if rng.percent(END_COMPLETED_PERCENT) { "completed" } else { "no_answer" };
        m.ends.insert(call.clone(), SentEnd { callback: callback.clone(), outcome: outcome.to_owned(), acked: false });
        (call, callback, outcome)
    };
    let path = format!("/v1/calls/{call}/end");
    let answer = request(client, "POST", &path, Some(&json!({"outcome": outcome}))).await;
    let mut m = lock(model);
    let Ok(response) = answer else {
        m.stats.unanswered += 1;
        return false;
    };
    let body = response.json();
    match response.status {
        200 if body["status"] == "ended" && body["outcome"] == outcome => {
            m.stats.callback_ends += 1;
            if outcome == "completed" {
                m.stats.callback_ends_completed += 1;
            }
            if let Some(end) = m.ends.get_mut(&call) {
                end.acked = true;
            }
        }
        409 if body["code"] == "CALL_ENDED" => m.problems.push(format!(
            "the call {call} of dialled callback {callback} was ended by the server itself (outcome {}), not by its end",
            body["call"]["outcome"]
        )),
        status => m.problems.push(format!("POST {path} {{\"outcome\": {outcome:?}}} answered {status}: {}", response.text())),
    }
    true
}

async fn worker(addr: SocketAddr, model: Arc<Mutex<Model>>, stop: Arc<AtomicBool>, mut rng: Rng) {
    let Ok(Ok(mut client)) = tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(addr, Some(TOKEN.to_owned()))).await else {
        return;
    };
    for _ in 0..WORKER_OPS_MAX {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let roll = rng.below(100);
        let alive = if roll < 30 {
            op_missed(&mut client, &model, &mut rng, true).await
        } else if roll < 60 {
            op_missed(&mut client, &model, &mut rng, false).await
        } else if roll < 78 {
            op_end_inbound(&mut client, &model, &mut rng).await
        } else {
            op_end_dialled(&mut client, &model, &mut rng).await
        };
        if !alive {
            return;
        }
        tokio::time::sleep(Duration::from_millis(rng.between(OP_PAUSE_MS))).await;
    }
}

// ------------------------------------------------------------------------------------ server

/// Pools without reserved headroom: this test counts plain capacity.
const PLAIN_POOLS: &str = "[pools.standard_voice]\ncapacity = 5\n[pools.premium_voice]\ncapacity = 5\n";

/// The child servers' files, and the fake dialer's URL they are configured with.
struct Ctx {
    launcher: Launcher,
    dialer_url: String,
}

impl Ctx {
    fn new(root: &Path, dialer: SocketAddr) -> Ctx {
        Ctx { launcher: Launcher::new(root, TOKEN, &["SWITCHBOARD_DIALER_URL"]), dialer_url: format!("http://{dialer}/dial") }
    }
}

/// Writes the config for a server on `addr` (snapshot interval drawn from `rng`, callbacks and
/// the fake dialer); the fake dialer checks against `addr` from now on. Returns the log note.
fn configure(ctx: &Ctx, dialer: &FakeDialer, rng: &mut Rng, addr: SocketAddr) -> Result<String> {
    let snapshot_every = rng.between(SNAPSHOT_EVERY_EVENTS);
    let config = format!(
        "[journal]\nsnapshot_every_events = {snapshot_every}\n{PLAIN_POOLS}\
         [callbacks]\nbackup_scan_interval_ms = {BACKUP_SCAN_MS}\nqueue_per_line_max = {QUEUE_PER_LINE_MAX}\n\
         [dialer]\nurl = \"{}\"\ntimeout_ms = {DIALER_TIMEOUT_MS}\n",
        ctx.dialer_url
    );
    std::fs::write(&ctx.launcher.config, config).context("writing the config")?;
    *lock(&dialer.server) = Some(addr);
    Ok(format!("snapshot_every_events {snapshot_every}"))
}

// ------------------------------------------------------------------------------------- setup

async fn setup(client: &mut Client) -> Result<()> {
    for t in 0..TENANTS {
        let body = json!({"id": tenant_id(t), "plan": "PRO", "concurrent_limit_override": TENANT_LIMIT});
        send_ok(client, "POST", "/v1/tenants", &body, 201).await?;
        for j in 0..LINES_PER_TENANT {
            let body = json!({
                "id": line_id(t, j),
                "tenant_id": tenant_id(t),
                "channels": channels(j),
                "on_busy": "callback",
                "agent_id": agent_id(t, j),
            });
            let line = send_ok(client, "POST", "/v1/lines", &body, 201).await?;
            ensure!(line["on_busy"] == "callback", "POST /v1/lines {body} answered {line}");
        }
    }
    let platform = send_ok(client, "PATCH", "/v1/platform", &json!({"capacity": CAPACITY}), 200).await?;
    ensure!(platform["capacity"] == CAPACITY, "PATCH /v1/platform answered {platform}");
    Ok(())
}

// ------------------------------------------------------------------------------------ verify

/// Every acknowledged missed call is listed with an explicit status and at least its count.
fn check_acked(model: &mut Model, entries: &BTreeMap<String, Value>) {
    model.forget_closed(entries);
    for (id, acked) in &model.acked {
        let Some(entry) = entries.get(id) else {
            model.problems.push(format!("acknowledged missed call {id} ({acked:?}) is not listed by GET /v1/callbacks"));
            continue;
        };
        let known = ["pending", "processing", "completed", "failed", "insufficient_credits", "on-hold", "cancelled"];
        let count = entry["missed_count"].as_u64().unwrap_or(0);
        if entry["line_id"] != acked.line.as_str()
            || entry["caller"] != acked.caller.as_str()
            || !known.contains(&text(&entry["status"]))
            || count < acked.attempts.len() as u64
            || count < acked.max_missed_count
        {
            model.problems.push(format!("acknowledged missed call {id} ({acked:?}) is listed as {entry}"));
        }
    }
}

/// An entry seen `processing` and `dialed` with `call` waits for that call's end, then settles by
/// its outcome. `settled`: it must have settled by now.
fn check_dialled(model: &mut Model, entries: &BTreeMap<String, Value>, settled: bool, when: &str) {
    for (id, call) in model.dialed.clone() {
        let Some(entry) = entries.get(&id) else {
            model.problems.push(format!("{when}: dialled entry {id} is not listed"));
            continue;
        };
        let end = model.ends.get(&call);
        let status = text(&entry["status"]);
        let consistent = entry["call_id"] == call.as_str()
            && entry["dialed"] == true
            && match (status, end) {
                ("processing", _) => !settled,
                ("completed", Some(end)) => end.outcome == "completed",
                ("failed", Some(end)) => end.outcome != "completed" && entry["failure_reason"] == end.outcome.as_str(),
                _ => false,
            };
        if !consistent {
            model.problems.push(format!(
                "{when}: entry {id} was seen durably processing and dialed with call {call}; the end the clients sent for it: {end:?}; \
                 it is now {entry}"
            ));
        }
    }
}

/// After a restart: no entry is left `processing` without `dialed` from before the kill,
/// acknowledged missed calls are kept, dialled entries still wait for (or settled by) their
/// call's end; unanswered ends are resolved from the call, the inbound calls re-listed.
async fn check_after_restart(client: &mut Client, model: &mut Model, killed_at: Option<&str>) -> Result<()> {
    let entries = list_callbacks(client).await?;
    if let Some(killed_at) = killed_at {
        for entry in entries.values() {
            let left_over = entry["status"] == "processing" && entry["dialed"] == false && text(&entry["updated_at"]) <= killed_at;
            if left_over {
                model.problems.push(format!(
                    "after the restart, entry {} is still processing without a dial, from before the kill at {killed_at}: {entry}",
                    entry["id"]
                ));
            }
        }
    }
    check_acked(model, &entries);
    check_dialled(model, &entries, false, "after a restart");

    // Ends sent without an answer: landed (the call ended with that outcome) or not (live).
    let unanswered: Vec<(String, SentEnd)> = model.ends.iter().filter(|(_, e)| !e.acked).map(|(c, e)| (c.clone(), e.clone())).collect();
    for (call, end) in unanswered {
        let response = request(client, "GET", &format!("/v1/calls/{call}"), None).await?;
        let body = response.json();
        match (response.status, text(&body["status"])) {
            (200, "ended") if body["outcome"] == end.outcome.as_str() => {
                if let Some(end) = model.ends.get_mut(&call) {
                    end.acked = true;
                }
            }
            (200, "active") => {
                model.ends.remove(&call);
            }
            _ => model.problems.push(format!(
                "the unanswered end {end:?} of call {call}: the call is {} {}, neither live nor ended by that end",
                response.status,
                response.text()
            )),
        }
    }
    model.inbound = live_inbound_calls(client).await?;
    Ok(())
}

/// Frees every channel and ends every dialled callback call until no entry is pending or
/// processing (bounded).
async fn settle(client: &mut Client, model: &mut Model, rng: &mut Rng) -> Result<(usize, Duration)> {
    let started = Instant::now();
    for call in std::mem::take(&mut model.inbound) {
        send_ok(client, "POST", &format!("/v1/calls/{call}/end"), &json!({}), 200).await?;
        model.stats.inbound_ended += 1;
    }
    let mut open = Vec::new();
    for round in 0..SETTLE_ROUNDS_MAX {
        let entries = list_callbacks(client).await?;
        open = entries.values().filter(|e| e["status"] == "pending" || e["status"] == "processing").cloned().collect();
        if open.is_empty() {
            return Ok((round, started.elapsed()));
        }
        for entry in open.iter().filter(|e| e["status"] == "processing" && e["dialed"] == true) {
            model.see_dialed(entry);
            let (Some(id), Some(call)) = (entry["id"].as_str(), entry["call_id"].as_str()) else { continue };
            if model.ends.contains_key(call) {
                continue;
            }
            let outcome = if rng.percent(END_COMPLETED_PERCENT) { "completed" } else { "no_answer" };
            let ended = send_ok(client, "POST", &format!("/v1/calls/{call}/end"), &json!({"outcome": outcome}), 200)
                .await
                .with_context(|| format!("ending the call of dialled callback {id}"))?;
            ensure!(ended["outcome"] == outcome, "POST /v1/calls/{call}/end answered {ended}");
            model.ends.insert(call.to_owned(), SentEnd { callback: id.to_owned(), outcome: outcome.to_owned(), acked: true });
            model.stats.callback_ends += 1;
        }
        if started.elapsed() > SETTLE_TIMEOUT {
            break;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
    bail!("the callbacks did not settle within {SETTLE_TIMEOUT:?}: still open: {open:?}")
}

/// Once settled: at most one dial per call and per entry, each dial as the entry says, every
/// closed entry's dials and call as its status says, stats equal to the list.
async fn final_check(client: &mut Client, model: &mut Model, dials: &[DialRecord]) -> Result<BTreeMap<String, Value>> {
    let entries = list_callbacks(client).await?;
    check_acked(model, &entries);
    check_dialled(model, &entries, true, "settled");

    let stats = get_json(client, "/v1/callbacks/stats").await?;
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for entry in entries.values() {
        *by_status.entry(text(&entry["status"]).to_owned()).or_default() += 1;
    }
    for (status, count) in stats["by_status"].as_object().into_iter().flatten() {
        if count.as_u64() != Some(by_status.get(status).copied().unwrap_or(0)) {
            model.problems.push(format!("GET /v1/callbacks/stats says {status}: {count}, the list has {by_status:?}"));
        }
    }
    if by_status.keys().any(|s| stats["by_status"].get(s).is_none()) || stats["total"] != entries.len() as u64 {
        model.problems.push(format!("GET /v1/callbacks/stats {stats} does not match the list ({} entries: {by_status:?})", entries.len()));
    }

    // The dials.
    let mut per_call: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_entry: BTreeMap<&str, usize> = BTreeMap::new();
    for dial in dials {
        let body = &dial.body;
        let (call, callback) = (text(&body["call_id"]), text(&body["original_missed_call_id"]));
        *per_call.entry(call).or_default() += 1;
        *per_entry.entry(callback).or_default() += 1;
        if let Some(DurableCheck::Violated(why)) = &dial.check {
            model.problems.push(format!("not durably processing before the dial: {why}"));
        }
        let Some(entry) = entries.get(callback) else {
            if !model.forgotten.contains(callback) {
                model.problems.push(format!("dial request {body} names no listed entry"));
            }
            continue;
        };
        let owner = line_owner(text(&entry["line_id"]));
        let as_entry = body["is_auto_callback"] == true
            && call.starts_with("call_")
            && body["to"] == entry["caller"]
            && body["line_id"] == entry["line_id"]
            && body["tenant_id"] == entry["tenant_id"]
            && owner.is_some_and(|(tenant, agent)| entry["tenant_id"] == tenant.as_str() && body["agent_id"] == agent.as_str())
            && entry["call_id"] == call;
        if !as_entry {
            model.problems.push(format!("dial request {body} does not match its entry {entry}"));
        }
    }
    for (call, n) in per_call.iter().filter(|(_, n)| **n > 1) {
        model.problems.push(format!("call {call} was dialled {n} times"));
    }
    for (callback, n) in per_entry.iter().filter(|(_, n)| **n > 1 + EXPLICIT_RETRIES) {
        model.problems.push(format!("entry {callback} was dialled {n} times with {EXPLICIT_RETRIES} explicit retries"));
    }

    // The entries: dials and calls as their status says.
    for (id, entry) in &entries {
        let n = per_entry.get(id.as_str()).copied().unwrap_or(0);
        let reason = text(&entry["failure_reason"]);
        let (expected_dials, dialed) = match text(&entry["status"]) {
            "completed" => (1..=1, true),
            "failed" if reason == UNKNOWN_AFTER_RESTART => (0..=1, false),
            "failed" if reason == "dialer answered 500" => (1..=1, false),
            "failed" if reason.starts_with("dialer ") => (0..=1, false),
            "failed" => (1..=1, true),
            _ => {
                model.problems.push(format!("entry {id} is not settled: {entry}"));
                continue;
            }
        };
        if !expected_dials.contains(&n) || entry["dialed"] != dialed {
            model.problems.push(format!("entry {id} got {n} dial requests (expected {expected_dials:?}) and is {entry}"));
        }
        if let Some(call) = entry["call_id"].as_str() {
            let body = get_json(client, &format!("/v1/calls/{call}")).await?;
            let ended = body["status"] == "ended";
            // A dialled entry's call ends only by the end the clients sent.
            let by_us = !dialed || model.ends.get(call).is_some_and(|end| end.acked && body["outcome"] == end.outcome.as_str());
            if !ended || !by_us {
                model.problems.push(format!("the call of settled entry {entry} is {body}; the clients' end: {:?}", model.ends.get(call)));
            }
        } else if n > 0 || dialed {
            model.problems.push(format!("entry {id} was dialled but names no call: {entry}"));
        }
    }
    for (call, end) in &model.ends {
        let named = match entries.get(&end.callback) {
            Some(entry) => entry["call_id"] == call.as_str(),
            None => model.forgotten.contains(&end.callback),
        };
        if !named {
            model.problems.push(format!("the clients ended call {call} for {end:?}, which that entry does not name"));
        }
    }
    Ok(entries)
}

// --------------------------------------------------------------------------------------- run

struct Settings {
    cycles: u64,
    seed: u64,
    keep: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let cycles = var("SWITCHBOARD_CALLBACKS_CRASH_CYCLES")
            .map_or(CYCLES_DEFAULT, |v| v.trim().parse().expect("SWITCHBOARD_CALLBACKS_CRASH_CYCLES must be a number"));
        assert!(cycles >= 1, "SWITCHBOARD_CALLBACKS_CRASH_CYCLES must be at least 1");
        let seed = var("SWITCHBOARD_CALLBACKS_CRASH_SEED").map_or_else(
            || Rng(now_ms() ^ u64::from(std::process::id()).rotate_left(32)).next_u64(),
            |v| v.trim().parse().expect("SWITCHBOARD_CALLBACKS_CRASH_SEED must be a u64"),
        );
        let keep = var("SWITCHBOARD_CALLBACKS_CRASH_KEEP").is_some_and(|v| v != "0");
        Settings { cycles, seed, keep }
    }
}

fn bail_on_problems(model: &mut Model, what: &str) -> Result<()> {
    if model.problems.is_empty() {
        return Ok(());
    }
    bail!("{what}: {} problem(s):\n  {}", model.problems.len(), model.problems.join("\n  "))
}

fn dial_summary(dials: &[DialRecord]) -> String {
    let count = |f: &dyn Fn(&DialRecord) -> bool| dials.iter().filter(|d| f(d)).count();
    let why = dials.iter().find_map(|d| match &d.check {
        Some(DurableCheck::Inconclusive(why)) => Some(format!(", e.g. {why}")),
        _ => None,
    });
    format!(
        "{} dial requests ({} answered 2xx, {} answered 500, {} cut off; durable-before-dial confirmed {}, inconclusive {}{})",
        dials.len(),
        count(&|d| (200..300).contains(&d.status)),
        count(&|d| d.status == 500),
        count(&|d| d.status == 0),
        count(&|d| matches!(d.check, Some(DurableCheck::Confirmed))),
        count(&|d| matches!(d.check, Some(DurableCheck::Inconclusive(_)) | None)),
        why.unwrap_or_default(),
    )
}

async fn run(settings: &Settings, ctx: &Ctx, dialer: &FakeDialer) -> Result<String> {
    let mut rng = Rng(settings.seed);
    let model = Arc::new(Mutex::new(Model::default()));
    let mut killed_at: Option<String> = None;
    for cycle in 0..settings.cycles {
        // Half the cycles run the server on one async worker, as in the README's benchmark, half
        // on one per core: different interleavings of the same actors.
        let launcher = ctx.launcher.with_one_worker(rng.percent(50));
        let what = format!("cycle {cycle} ({})", launcher.runtime());
        let (mut server, mut client, boot) = Server::start(&launcher, &what, |addr| configure(ctx, dialer, &mut rng, addr)).await?;
        if cycle == 0 {
            setup(&mut client).await.context("setup")?;
        }
        let verify_started = Instant::now();
        let mut snapshot = std::mem::take(&mut *lock(&model));
        let verified = check_after_restart(&mut client, &mut snapshot, killed_at.as_deref()).await;
        let checked = verified.and_then(|()| bail_on_problems(&mut snapshot, &format!("{what}: after the restart")));
        *lock(&model) = snapshot;
        checked?;
        let verify_time = verify_started.elapsed();
        drop(client);

        let before = lock(&model).stats;
        let dials_before = dialer.records().len();
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> =
            (0..WORKERS).map(|_| tokio::spawn(worker(server.addr, Arc::clone(&model), Arc::clone(&stop), Rng(rng.next_u64())))).collect();
        let delay = rng.between(KILL_DELAY_MS);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.sigkill()?;
        killed_at = Some(rfc3339(now_ms()));
        stop.store(true, Ordering::SeqCst);
        for handle in workers {
            tokio::time::timeout(WORKERS_STOP_TIMEOUT, handle)
                .await
                .with_context(|| format!("{what}: a worker did not stop"))?
                .context("worker panicked")?;
        }

        let mut m = lock(&model);
        m.stats.kills += 1;
        bail_on_problems(&mut m, &what)?;
        let s = m.stats;
        println!(
            "{what}: boot {} ms, verify {} ms; +{} missed reports (+{} new, +{} repeats, +{} queue full), +{} inbound admitted, \
             +{} turned away busy (+{} refused), +{} inbound ended, +{} callback calls ended, +{} dial requests, {} entries acknowledged, \
             {} seen dialled; +{} attempts retried after the kill, +{} sent twice at once ({} checked); SIGKILL after {delay} ms",
            boot.as_millis(),
            verify_time.as_millis(),
            s.reports - before.reports,
            s.created - before.created,
            s.repeated - before.repeated,
            s.queue_full - before.queue_full,
            s.inbound_admitted - before.inbound_admitted,
            s.turned_away - before.turned_away,
            s.turned_away_refused - before.turned_away_refused,
            s.inbound_ended - before.inbound_ended,
            s.callback_ends - before.callback_ends,
            dialer.records().len() - dials_before,
            m.acked.len(),
            m.dialed.len(),
            s.retried - before.retried,
            s.duplicates - before.duplicates,
            s.duplicates_checked - before.duplicates_checked,
        );
    }

    // A final restart: check, settle, check everything; a clean stop and start keeps it all.
    let (mut server, mut client, boot) = Server::start(&ctx.launcher, "final", |addr| configure(ctx, dialer, &mut rng, addr)).await?;
    let mut model = std::mem::take(&mut *lock(&model));
    check_after_restart(&mut client, &mut model, killed_at.as_deref()).await.context("final: after the restart")?;
    bail_on_problems(&mut model, "final: after the restart")?;
    let (rounds, settle_time) = settle(&mut client, &mut model, &mut rng).await.context("final: settling")?;
    let dials = dialer.records();
    let entries = final_check(&mut client, &mut model, &dials).await.context("final check")?;
    bail_on_problems(&mut model, "final check")?;
    let stop_time = server.sigterm().await.context("final graceful stop")?;
    drop(client);

    let (mut server, mut client, _) =
        Server::start(&ctx.launcher, "after the final stop", |addr| configure(ctx, dialer, &mut rng, addr)).await?;
    let again = list_callbacks(&mut client).await?;
    ensure!(again == entries, "a clean restart changed the callbacks: before {entries:?}\nafter {again:?}");
    let stats = get_json(&mut client, "/v1/callbacks/stats").await?;
    drop(client);
    server.sigterm().await.context("last graceful stop")?;
    ensure!(dialer.records().len() == dials.len(), "dial requests after everything settled: {:?}", &dialer.records()[dials.len()..]);

    let failed_unknown = entries.values().filter(|e| e["failure_reason"] == UNKNOWN_AFTER_RESTART).count();
    let s = model.stats;
    Ok(format!(
        "{} cycles, {} kills; final boot {} ms, settled in {} rounds / {} ms, SIGTERM exit in {} ms; {} missed reports ({} new, {} repeats, \
         {} queue full), {} turned away busy ({} refused), {} inbound admitted, {} callback calls ended ({} completed), {} unanswered \
         requests; {} missed calls retried after a kill, {} sent twice at once ({} checked); {}; {} entries ({} acknowledged, {} seen dialled, {} failed {UNKNOWN_AFTER_RESTART}): {}",
        settings.cycles,
        s.kills,
        boot.as_millis(),
        rounds,
        settle_time.as_millis(),
        stop_time.as_millis(),
        s.reports,
        s.created,
        s.repeated,
        s.queue_full,
        s.turned_away,
        s.turned_away_refused,
        s.inbound_admitted,
        s.callback_ends,
        s.callback_ends_completed,
        s.unanswered,
        s.retried,
        s.duplicates,
        s.duplicates_checked,
        dial_summary(&dials),
        entries.len(),
        model.acked.len(),
        model.dialed.len(),
        failed_unknown,
        stats["by_status"],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_dispatch_dials_each_callback_at_most_once_and_loses_no_missed_call() {
    let settings = Settings::from_env();
    println!(
        "callbacks crash test: seed {} (replay with SWITCHBOARD_CALLBACKS_CRASH_SEED={}), {} cycles",
        settings.seed, settings.seed, settings.cycles
    );
    let mut dir = tempfile::Builder::new().prefix("switchboard-cbcrash-").tempdir().expect("temp dir");
    let (dialer, dialer_addr) = FakeDialer::start(Rng(settings.seed).next_u64(), true).await.expect("fake dialer");
    let ctx = Ctx::new(dir.path(), dialer_addr);
    let deadline = Duration::from_secs(60 + 5 * settings.cycles);
    let started = Instant::now();
    let outcome = match tokio::time::timeout(deadline, run(&settings, &ctx, &dialer)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow!("the test did not finish within {deadline:?}")),
    };
    match outcome {
        Ok(summary) => {
            println!("callbacks crash test passed in {:.1} s (seed {}): {summary}", started.elapsed().as_secs_f64(), settings.seed);
            if settings.keep {
                dir.disable_cleanup(true);
                println!("kept {}", ctx.launcher.root.display());
            }
        }
        Err(error) => {
            dir.disable_cleanup(true);
            panic!(
                "callbacks crash test failed (seed {}; replay with SWITCHBOARD_CALLBACKS_CRASH_SEED={}): {error:#}\n\n{}\n\
                 data dir and server log kept in {}\nlast server log lines:\n{}",
                settings.seed,
                settings.seed,
                dial_summary(&dialer.records()),
                ctx.launcher.root.display(),
                ctx.launcher.log_tail(40)
            );
        }
    }
}

// ------------------------------------------------------- regression: dialled across restarts

const REPRO_RESTARTS: usize = 5;
const REPRO_DIALLED_WITHIN: Duration = Duration::from_secs(5);
/// After ready, how long the queues get to (wrongly) settle before the entries are read.
const REPRO_GRACE: Duration = Duration::from_millis(300);

/// One missed call per line, dialled at once (the dialer accepts); their calls stay live. Clean
/// restarts (SIGTERM) must keep each entry `processing` and `dialed`, and its call live; then the
/// call's end settles the entry.
async fn repro_boot_race(ctx: &Ctx, dialer: &FakeDialer) -> Result<()> {
    let mut rng = Rng(1);
    let (mut server, mut client, _) = Server::start(&ctx.launcher, "repro", |addr| configure(ctx, dialer, &mut rng, addr)).await?;
    setup(&mut client).await.context("setup")?;
    let mut ids = Vec::new();
    for t in 0..TENANTS {
        for j in 0..LINES_PER_TENANT {
            let entry = send_ok(
                &mut client,
                "POST",
                &format!("/v1/lines/{}/missed-calls", line_id(t, j)),
                &json!({"from": caller_id(t, j, 0)}),
                201,
            )
            .await?;
            ids.push(entry["id"].as_str().context("an entry id")?.to_owned());
        }
    }
    let started = Instant::now();
    let mut dialled = BTreeMap::new();
    while dialled.len() < ids.len() {
        ensure!(started.elapsed() < REPRO_DIALLED_WITHIN, "not all of {ids:?} were dialled within {REPRO_DIALLED_WITHIN:?}: {dialled:?}");
        for id in &ids {
            let entry = get_json(&mut client, &format!("/v1/callbacks/{id}")).await?;
            if entry["status"] == "processing" && entry["dialed"] == true {
                dialled.insert(id.clone(), text(&entry["call_id"]).to_owned());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for restart in 1..=REPRO_RESTARTS {
        drop(client);
        server.sigterm().await.with_context(|| format!("restart {restart}: graceful stop"))?;
        (server, client, _) =
            Server::start(&ctx.launcher, &format!("repro restart {restart}"), |addr| configure(ctx, dialer, &mut rng, addr)).await?;
        tokio::time::sleep(REPRO_GRACE).await;
        for (id, call) in &dialled {
            let entry = get_json(&mut client, &format!("/v1/callbacks/{id}")).await?;
            let live = get_json(&mut client, &format!("/v1/calls/{call}")).await?;
            ensure!(
                entry["status"] == "processing"
                    && entry["dialed"] == true
                    && entry["call_id"] == call.as_str()
                    && live["status"] == "active",
                "clean restart {restart}: callback {id} was dialled and its call {call} was live; now the entry is {entry} and the call is \
                 {live}"
            );
        }
    }
    for (id, call) in &dialled {
        send_ok(&mut client, "POST", &format!("/v1/calls/{call}/end"), &json!({"outcome": "completed"}), 200).await?;
        let started = Instant::now();
        loop {
            let entry = get_json(&mut client, &format!("/v1/callbacks/{id}")).await?;
            if entry["status"] == "completed" {
                break;
            }
            ensure!(started.elapsed() < REPRO_DIALLED_WITHIN, "callback {id} did not complete when its call did: {entry}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    ensure!(dialer.records().len() == ids.len(), "{} dial requests for {} entries", dialer.records().len(), ids.len());
    drop(client);
    server.sigterm().await.context("final graceful stop")?;
    Ok(())
}

/// Regression: a dialled callback keeps waiting for its live call across clean restarts; the
/// queues used to start before the calls were in the directory. `Supervisor::boot_children` spawned
/// the callback queues before the live calls and `directory.ended`, and ractor runs `post_start` on
/// the actor's own task, so the first queues looked their dialled calls up, found them `Unknown`
/// and failed the entries `unknown_after_restart`; `settle_after_restart` then ended the live call
/// of a failed entry as an orphan (`dispatch_abandoned`). The queues now start last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialled_callback_keeps_waiting_for_its_live_call_across_clean_restarts() {
    let mut dir = tempfile::Builder::new().prefix("switchboard-cbrace-").tempdir().expect("temp dir");
    let (dialer, dialer_addr) = FakeDialer::start(1, false).await.expect("fake dialer");
    let ctx = Ctx::new(dir.path(), dialer_addr);
    let outcome = match tokio::time::timeout(Duration::from_secs(60), repro_boot_race(&ctx, &dialer)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow!("the test did not finish within 60 s")),
    };
    if let Err(error) = outcome {
        dir.disable_cleanup(true);
        panic!(
            "{error:#}\n\ndata dir and server log kept in {}\nlast server log lines:\n{}",
            ctx.launcher.root.display(),
            ctx.launcher.log_tail(20)
        );
    }
}
