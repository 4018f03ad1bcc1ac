//! Crash test: the real `switchboard` binary, killed with SIGKILL at random moments while
//! concurrent clients admit, heartbeat and end calls, then restarted on the same data dir.
//!
//! After every restart it checks, against a model of what the clients were told:
//! - every acknowledged admission (201) exists, and is `active` unless its end was acknowledged;
//! - every acknowledged end (200) is `ended`; every acknowledged heartbeat is kept;
//! - nothing unacknowledged is half-applied: each tenant's and line's `active_calls` and the
//!   platform's `active` equal the calls listed for them, and every listed call the clients never
//!   heard of is explained by an admission that got no answer (keyed ones are re-sent with their
//!   `Idempotency-Key` and must replay the call that landed). Unanswered ends are resolved from the
//!   call's status. Anything unanswered that did not land by the restart must never appear later.
//!
//! The last cycle stops the server with SIGTERM instead, which must exit 0, and the data dir is
//! verified once more (every call, not just a window) after a final restart.
//!
//! Environment:
//! - `SWITCHBOARD_CRASH_CYCLES`: kill cycles (default 20; thousands for a soak run).
//! - `SWITCHBOARD_CRASH_SEED`: the PRNG seed (default: from the clock). It is printed first;
//!   it replays the choices (kill delays, requests), not the thread interleaving.
//! - `SWITCHBOARD_CRASH_KEEP=1`: keep the temp dir (journal + server log) even on success. It
//!   is always kept, and its path printed, on failure.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use common::process::{Launcher, Server};
use serde_json::{Value, json};
use switchboard::client::{Client, Response};
use switchboard_actors::state::{ENDED_CALLS_RETAINED_MAX, IDEMPOTENCY_KEYS_MAX};

const TOKEN: &str = "crash-test-admin-token-0123456789";
const CYCLES_DEFAULT: u64 = 20;

const TENANTS: usize = 4;
const LINES_PER_TENANT: usize = 2;
/// Limits tight enough that each of tenant, line and platform sometimes denies, so denials that
/// must release the slots reserved before them get killed mid-way too.
const TENANT_LIMIT: u64 = 20;
const LINE_CHANNELS: u64 = 6;
const CAPACITY: u64 = 64;
const WORKERS: usize = 8;
/// A worker stops after this many requests even if the kill never comes.
const WORKER_OPS_MAX: usize = 100_000;

const KILL_DELAY_MS: (u64, u64) = (20, 300);
/// Percent of cycles that also kill one extra start during boot (journal replay).
const BOOT_KILL_PERCENT: u64 = 15;
const BOOT_KILL_DELAY_MS: (u64, u64) = (0, 60);
/// The snapshot interval is drawn per start (100 is the minimum), so snapshots and the log
/// pruning behind them happen every few cycles and get killed too.
const SNAPSHOT_EVERY_EVENTS: (u64, u64) = (100, 400);

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const WORKERS_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Calls fetched one by one after each restart besides the ones touched in the last cycle
/// (a rolling window over all calls ever seen); the final verification fetches all.
const VERIFY_WINDOW: usize = 200;
/// The server keeps the `ENDED_CALLS_RETAINED_MAX` most recently ended calls; the model forgets
/// its oldest ended calls past this. The margin covers the model's end order differing from the
/// journal's: concurrent ends acknowledged out of order, and unanswered ends the model learns
/// of at the next restart (a cycle's ends are a few hundred).
const ENDED_KEPT_MAX: usize = ENDED_CALLS_RETAINED_MAX - 2_000;
/// The server keeps at most `IDEMPOTENCY_KEYS_MAX` keys of the last 24 h and refuses a new one
/// past it (503 `IDEMPOTENCY_STORE_FULL`). Half the admissions carry a fresh key, 30–60 a cycle
/// on the development machine, so a soak would reach the bound 1 700–3 000 cycles in. The model
/// stops sending fresh keys 10 % below it; keys of admissions a kill left unanswered are still
/// re-sent after the restart.
const FRESH_KEYS_MAX: u64 = IDEMPOTENCY_KEYS_MAX as u64 / 10 * 9;
const LIST_PAGE: usize = 200;
const LIST_PAGES_MAX: usize = 10_000;

// ------------------------------------------------------------------------------------------ PRNG

// The seeded generator is shared with the other tests: `common::Rng`.
use common::Rng;

// ----------------------------------------------------------------------------------- fixtures

fn tenant_id(t: usize) -> String {
    format!("crash-t{t}")
}

fn line_id(t: usize, j: usize) -> String {
    format!("+1415555010{}", t * LINES_PER_TENANT + j)
}

/// `+` must be percent-encoded in a query string (it means space there).
fn query_escape(s: &str) -> String {
    s.replace('+', "%2B")
}

// ------------------------------------------------------------------------------------- model

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Admission acknowledged, no end sent (or the end was answered with an error).
    Live,
    /// End acknowledged.
    Ended,
    /// An end was sent and got no answer: either is fine until the next restart tells.
    EndUnknown,
}

#[derive(Clone, Debug)]
struct CallModel {
    tenant: String,
    line: Option<String>,
    status: Status,
    /// The newest `last_activity_at` an acknowledged heartbeat returned (RFC 3339, comparable
    /// as text).
    last_activity_min: Option<String>,
}

/// An admission as sent; kept when it got no answer.
#[derive(Clone, Debug)]
struct AdmitSpec {
    tenant: String,
    line: Option<String>,
    direction: &'static str,
    already_connected: bool,
    key: Option<String>,
}

impl AdmitSpec {
    fn body(&self) -> Value {
        let mut body = json!({"tenant_id": self.tenant, "direction": self.direction});
        if let Some(line) = &self.line {
            body["line_id"] = json!(line);
        }
        if self.already_connected {
            body["already_connected"] = json!(true);
        }
        body
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        self.key.as_deref().map(|k| ("idempotency-key", k)).into_iter().collect()
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    admitted: u64,
    admitted_over_limit: u64,
    denied: u64,
    denied_tenant: u64,
    denied_line: u64,
    denied_platform: u64,
    ended: u64,
    heartbeats: u64,
    unknown_admits: u64,
    unknown_ends: u64,
    unknown_heartbeats: u64,
    landed_unknown: u64,
    /// Admissions sent with a fresh `Idempotency-Key` (at most `FRESH_KEYS_MAX`); the last
    /// key's number.
    fresh_keys: u64,
    replayed_keys: u64,
    ends_resolved_ended: u64,
    kills: u64,
    boot_kills: u64,
}

#[derive(Default)]
struct Model {
    calls: BTreeMap<String, CallModel>,
    /// Call ids in the order first seen, for the rolling verification window.
    order: Vec<String>,
    cursor: usize,
    /// Live calls no worker is using right now.
    idle: Vec<String>,
    /// Calls whose admission, end or heartbeat was sent since the last verification.
    touched: BTreeSet<String>,
    /// Admissions sent since the last verification that got no answer.
    unknown_admits: Vec<AdmitSpec>,
    /// Ended calls, in the order the model learnt of their end.
    ended: VecDeque<String>,
    /// Answers that should never happen (a 404 for an acknowledged call, a 5xx, ...).
    anomalies: Vec<String>,
    stats: Stats,
}

fn lock(model: &Mutex<Model>) -> MutexGuard<'_, Model> {
    model.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

enum Op {
    Admit(AdmitSpec),
    End(String),
    Heartbeat(String),
}

impl Model {
    fn insert_live(&mut self, id: &str, tenant: String, line: Option<String>) {
        self.calls.insert(id.to_owned(), CallModel { tenant, line, status: Status::Live, last_activity_min: None });
        self.order.push(id.to_owned());
        self.idle.push(id.to_owned());
        self.touched.insert(id.to_owned());
    }

    fn next_op(&mut self, rng: &mut Rng) -> Op {
        let live = self.idle.len();
        let end_percent = match live {
            0..=20 => 25,
            21..=56 => 45,
            _ => 60,
        };
        let roll = rng.below(100);
        if live > 0 && roll < 10 {
            return Op::Heartbeat(self.idle.swap_remove(rng.index(live)));
        }
        if live > 0 && roll < 10 + end_percent {
            return Op::End(self.idle.swap_remove(rng.index(live)));
        }
        let t = rng.index(TENANTS);
        let line = rng.percent(50).then(|| line_id(t, rng.index(LINES_PER_TENANT)));
        let direction = if rng.percent(50) { "inbound" } else { "outbound" };
        let already_connected = direction == "inbound" && rng.percent(10);
        let key = (rng.percent(50) && self.stats.fresh_keys < FRESH_KEYS_MAX).then(|| {
            self.stats.fresh_keys += 1;
            format!("crash-{}", self.stats.fresh_keys)
        });
        Op::Admit(AdmitSpec { tenant: tenant_id(t), line, direction, already_connected, key })
    }

    /// Records an admission's answer; false when the connection died.
    fn admit_answered(&mut self, spec: AdmitSpec, answer: Result<Response>) -> bool {
        let response = match answer {
            Err(_) => {
                self.stats.unknown_admits += 1;
                self.unknown_admits.push(spec);
                return false;
            }
            Ok(response) => response,
        };
        match response.status {
            201 => {
                let body = response.json();
                let Some(id) = body["call_id"].as_str().map(str::to_owned) else {
                    self.anomalies.push(format!("201 without call_id: {body}"));
                    return true;
                };
                if body["tenant_id"] != json!(spec.tenant) || body["line_id"] != json!(spec.line) || body["status"] != "active" {
                    self.anomalies.push(format!("admission {} answered with {body}", spec.body()));
                }
                if response.header("idempotent-replayed").is_some() {
                    self.anomalies.push(format!("a fresh Idempotency-Key {:?} was answered as a replay: {body}", spec.key));
                }
                if self.calls.contains_key(&id) {
                    self.anomalies.push(format!("call id {id} handed out twice: {body} (first: {:?})", self.calls[&id]));
                    return true;
                }
                self.stats.admitted += 1;
                if body["over_limit"] == true {
                    self.stats.admitted_over_limit += 1;
                }
                self.insert_live(&id, spec.tenant, spec.line);
            }
            429 => {
                self.stats.denied += 1;
                match response.json()["code"].as_str() {
                    Some("TENANT_LIMIT_REACHED") => self.stats.denied_tenant += 1,
                    Some("LINE_BUSY") => self.stats.denied_line += 1,
                    Some("PLATFORM_CAPACITY_FULL") => self.stats.denied_platform += 1,
                    _ => self.anomalies.push(format!("POST /v1/calls {} denied with {}", spec.body(), response.text())),
                }
            }
            status => {
                self.anomalies.push(format!("POST /v1/calls {} answered {status}: {}", spec.body(), response.text()));
                self.stats.unknown_admits += 1;
                self.unknown_admits.push(spec);
            }
        }
        true
    }

    fn end_answered(&mut self, id: String, answer: Result<Response>) -> bool {
        self.touched.insert(id.clone());
        let call = self.calls.get_mut(&id).expect("workers end calls of the model");
        let response = match answer {
            Err(_) => {
                call.status = Status::EndUnknown;
                self.stats.unknown_ends += 1;
                return false;
            }
            Ok(response) => response,
        };
        let body = response.json();
        if response.status == 200 && body["status"] == "ended" && body["call_id"] == id.as_str() {
            call.status = Status::Ended;
            self.stats.ended += 1;
            self.ended.push_back(id);
        } else {
            call.status = Status::EndUnknown;
            self.anomalies.push(format!("POST /v1/calls/{id}/end answered {}: {}", response.status, response.text()));
        }
        true
    }

    fn heartbeat_answered(&mut self, id: String, answer: Result<Response>) -> bool {
        self.touched.insert(id.clone());
        let call = self.calls.get_mut(&id).expect("workers heartbeat calls of the model");
        self.idle.push(id.clone());
        let response = match answer {
            Err(_) => {
                self.stats.unknown_heartbeats += 1;
                return false;
            }
            Ok(response) => response,
        };
        let body = response.json();
        match (response.status, body["last_activity_at"].as_str()) {
            (200, Some(at)) if body["status"] == "active" => {
                call.last_activity_min = Some(at.to_owned());
                self.stats.heartbeats += 1;
            }
            _ => self.anomalies.push(format!("POST /v1/calls/{id}/heartbeat answered {}: {}", response.status, response.text())),
        }
        true
    }

    /// Forgets the earliest ended calls past `ENDED_KEPT_MAX`, as the server forgets them past
    /// its own larger bound, so soak runs stay bounded and never fetch a call the server was
    /// entitled to forget.
    fn prune_ended(&mut self) {
        if self.ended.len() <= ENDED_KEPT_MAX {
            return;
        }
        for id in self.ended.drain(..self.ended.len() - ENDED_KEPT_MAX) {
            self.calls.remove(&id);
        }
        let calls = &self.calls;
        self.order.retain(|id| calls.contains_key(id));
        self.cursor = 0;
    }
}

// ------------------------------------------------------------------------------------ client

async fn request(client: &mut Client, method: &str, path: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> Result<Response> {
    match tokio::time::timeout(REQUEST_TIMEOUT, client.send(method, path, body, headers)).await {
        Ok(answer) => answer,
        Err(_) => Err(anyhow!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

async fn get_json(client: &mut Client, path: &str) -> Result<Value> {
    let response = request(client, "GET", path, None, &[]).await?;
    ensure!(response.status == 200, "GET {path}: {} {}", response.status, response.text());
    Ok(response.json())
}

async fn send_ok(client: &mut Client, method: &str, path: &str, body: &Value, status: u16) -> Result<Value> {
    let response = request(client, method, path, Some(body), &[]).await?;
    ensure!(response.status == status, "{method} {path} {body}: {} {}", response.status, response.text());
    Ok(response.json())
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Listed {
    tenant: String,
    line: Option<String>,
    direction: String,
}

/// Every live call `GET /v1/calls?{filter}` lists, following `next_starting_after`.
async fn list_calls(client: &mut Client, filter: &str) -> Result<BTreeMap<String, Listed>> {
    let mut calls = BTreeMap::new();
    let mut after: Option<String> = None;
    for _ in 0..LIST_PAGES_MAX {
        let mut path = format!("/v1/calls?limit={LIST_PAGE}{filter}");
        if let Some(after) = &after {
            path.push_str(&format!("&starting_after={after}"));
        }
        let page = get_json(client, &path).await?;
        let data = page["data"].as_array().with_context(|| format!("GET {path}: no data in {page}"))?;
        ensure!(data.len() <= LIST_PAGE, "GET {path}: {} calls in a page", data.len());
        for call in data {
            let id = call["call_id"].as_str().with_context(|| format!("GET {path}: call without id: {call}"))?;
            ensure!(call["status"] == "active", "GET {path} lists a call that is not active: {call}");
            let listed = Listed {
                tenant: call["tenant_id"].as_str().unwrap_or_default().to_owned(),
                line: call["line_id"].as_str().map(str::to_owned),
                direction: call["direction"].as_str().unwrap_or_default().to_owned(),
            };
            ensure!(calls.insert(id.to_owned(), listed).is_none(), "GET {path}: {id} listed twice");
        }
        match (page["has_more"].as_bool(), page["next_starting_after"].as_str()) {
            (Some(false), _) => return Ok(calls),
            (Some(true), Some(next)) => {
                ensure!(after.as_deref() < Some(next), "GET {path}: pagination does not advance ({next})");
                after = Some(next.to_owned());
            }
            _ => bail!("GET {path}: bad pagination fields in {page}"),
        }
    }
    bail!("GET /v1/calls?{filter}: more than {LIST_PAGES_MAX} pages")
}

// ------------------------------------------------------------------------------------ server

/// Pools without reserved headroom: this test counts plain capacity (arbitration has its own).
const PLAIN_POOLS: &str = "[pools.standard_voice]\ncapacity = 5\n[pools.premium_voice]\ncapacity = 5\n";

/// Writes the config with a snapshot interval drawn from `rng`; returns the note for the log.
fn write_config(ctx: &Launcher, rng: &mut Rng) -> Result<String> {
    let snapshot_every = rng.between(SNAPSHOT_EVERY_EVENTS);
    std::fs::write(&ctx.config, format!("[journal]\nsnapshot_every_events = {snapshot_every}\n{PLAIN_POOLS}"))
        .context("writing the config")?;
    Ok(format!("snapshot_every_events {snapshot_every}"))
}

// ------------------------------------------------------------------------------------- setup

async fn setup(client: &mut Client) -> Result<()> {
    for t in 0..TENANTS {
        let body = json!({"id": tenant_id(t), "plan": "PRO", "concurrent_limit_override": TENANT_LIMIT});
        send_ok(client, "POST", "/v1/tenants", &body, 201).await?;
        for j in 0..LINES_PER_TENANT {
            let body = json!({"id": line_id(t, j), "tenant_id": tenant_id(t), "channels": LINE_CHANNELS});
            send_ok(client, "POST", "/v1/lines", &body, 201).await?;
        }
    }
    let platform = send_ok(client, "PATCH", "/v1/platform", &json!({"capacity": CAPACITY}), 200).await?;
    ensure!(platform["capacity"] == CAPACITY, "PATCH /v1/platform answered {platform}");
    Ok(())
}

// ------------------------------------------------------------------------------------ verify

/// Checks the restarted server against the model, then folds what the restart revealed
/// (unanswered ends and admissions) into it.
async fn verify(client: &mut Client, model: &mut Model, full: bool) -> Result<()> {
    // 1. Counts agree everywhere: no half-applied admission or end.
    let platform = get_json(client, "/v1/platform").await?;
    ensure!(platform["capacity"] == CAPACITY, "platform capacity not kept: {platform}");
    let all = list_calls(client, "").await?;
    ensure!(platform["active"] == all.len() as u64, "platform active is {} but {} calls are listed", platform["active"], all.len());
    ensure!(platform["available"] == CAPACITY.saturating_sub(all.len() as u64), "platform available is wrong: {platform}");
    let mut by_tenant = BTreeSet::new();
    let mut by_line = BTreeSet::new();
    for t in 0..TENANTS {
        let id = tenant_id(t);
        let tenant = get_json(client, &format!("/v1/tenants/{id}")).await?;
        ensure!(tenant["plan"] == "PRO" && tenant["concurrent_limit"] == TENANT_LIMIT, "tenant {id} not kept: {tenant}");
        let listed = list_calls(client, &format!("&tenant_id={id}")).await?;
        ensure!(
            tenant["active_calls"] == listed.len() as u64,
            "tenant {id} counts {} active calls but {} are listed: {:?}",
            tenant["active_calls"],
            listed.len(),
            listed.keys()
        );
        for (call, entry) in &listed {
            ensure!(
                entry.tenant == id && all.get(call) == Some(entry),
                "tenant {id}'s listing has {call} {entry:?}, the full listing {:?}",
                all.get(call)
            );
            by_tenant.insert(call.clone());
        }
        for j in 0..LINES_PER_TENANT {
            let lid = line_id(t, j);
            let line = get_json(client, &format!("/v1/lines/{lid}")).await?;
            ensure!(line["tenant_id"] == id.as_str() && line["channels"] == LINE_CHANNELS, "line {lid} not kept: {line}");
            let listed = list_calls(client, &format!("&line_id={}", query_escape(&lid))).await?;
            ensure!(
                line["active_calls"] == listed.len() as u64,
                "line {lid} counts {} active calls but {} are listed: {:?}",
                line["active_calls"],
                listed.len(),
                listed.keys()
            );
            for (call, entry) in &listed {
                ensure!(
                    entry.line.as_deref() == Some(lid.as_str()) && all.get(call) == Some(entry),
                    "line {lid}'s listing has {call} {entry:?}"
                );
                by_line.insert(call.clone());
            }
        }
    }
    ensure!(by_tenant.len() == all.len(), "{} calls listed, {} of them under a tenant", all.len(), by_tenant.len());
    for (call, entry) in &all {
        ensure!(entry.line.is_none() || by_line.contains(call), "{call} {entry:?} is missing from its line's listing");
    }

    // 2. Acknowledged admissions and ends are there; unanswered ends resolve.
    let mut fetch: BTreeSet<String> = std::mem::take(&mut model.touched);
    for (id, call) in model.calls.iter_mut() {
        let listed = all.get(id);
        match call.status {
            Status::Live => ensure!(
                listed.is_some(),
                "acknowledged admission {id} {call:?} is not live after the restart (its end was never acknowledged)"
            ),
            Status::Ended => ensure!(listed.is_none(), "acknowledged end of {id} {call:?} lost: the call is live again"),
            Status::EndUnknown => {
                call.status = if listed.is_some() { Status::Live } else { Status::Ended };
                if call.status == Status::Ended {
                    model.stats.ends_resolved_ended += 1;
                    model.ended.push_back(id.clone());
                }
                fetch.insert(id.clone());
            }
        }
        if let Some(entry) = listed {
            ensure!(entry.tenant == call.tenant && entry.line == call.line, "{id} is listed as {entry:?}, admitted as {call:?}");
        }
    }
    if full {
        fetch.extend(model.calls.keys().cloned());
    } else if !model.order.is_empty() {
        let len = model.order.len();
        for k in 0..VERIFY_WINDOW.min(len) {
            fetch.insert(model.order[(model.cursor + k) % len].clone());
        }
        model.cursor = (model.cursor + VERIFY_WINDOW) % len;
    }
    for id in &fetch {
        let Some(call) = model.calls.get(id) else { continue };
        let response = request(client, "GET", &format!("/v1/calls/{id}"), None, &[]).await?;
        ensure!(
            response.status == 200,
            "acknowledged admission {id} {call:?} is gone after the restart: {} {}",
            response.status,
            response.text()
        );
        let body = response.json();
        let expected = if call.status == Status::Live { "active" } else { "ended" };
        ensure!(body["status"] == expected, "{id} should be {expected} ({call:?}) but is {body}");
        ensure!(body["tenant_id"] == call.tenant.as_str() && body["line_id"] == json!(call.line), "{id} changed: {body} vs {call:?}");
        if let Some(min) = &call.last_activity_min {
            let at = body["last_activity_at"].as_str().unwrap_or_default();
            ensure!(at >= min.as_str(), "an acknowledged heartbeat of {id} is lost: last_activity_at {at} < {min}");
        }
    }

    // 3. Live calls nobody was told about must come from unanswered admissions.
    let mut unexplained: BTreeMap<String, Listed> =
        all.iter().filter(|(id, _)| !model.calls.contains_key(*id)).map(|(id, l)| (id.clone(), l.clone())).collect();
    let unknown = std::mem::take(&mut model.unknown_admits);
    let (keyed, mut unkeyed): (Vec<AdmitSpec>, Vec<AdmitSpec>) = unknown.into_iter().partition(|s| s.key.is_some());
    for spec in keyed {
        let body = spec.body();
        let response = request(client, "POST", "/v1/calls", Some(&body), &spec.headers()).await?;
        match response.status {
            201 => {
                let answer = response.json();
                let id = answer["call_id"].as_str().with_context(|| format!("201 without call_id: {answer}"))?.to_owned();
                if response.header("idempotent-replayed") == Some("true") {
                    ensure!(
                        unexplained.remove(&id).is_some(),
                        "re-sending {body} with key {:?} replayed {id}, which is not an unexplained live call: {answer}",
                        spec.key
                    );
                    model.stats.replayed_keys += 1;
                    model.stats.landed_unknown += 1;
                } else {
                    ensure!(!all.contains_key(&id) && !model.calls.contains_key(&id), "re-sent admission got a known id: {answer}");
                    model.stats.admitted += 1;
                }
                ensure!(
                    answer["tenant_id"] == spec.tenant.as_str() && answer["line_id"] == json!(spec.line),
                    "re-sent {body} answered {answer}"
                );
                model.insert_live(&id, spec.tenant, spec.line);
            }
            429 => model.stats.denied += 1,
            status => bail!("re-sending {body} with key {:?} answered {status}: {}", spec.key, response.text()),
        }
    }
    for (id, listed) in unexplained {
        let matching = unkeyed.iter().position(|s| s.tenant == listed.tenant && s.line == listed.line && s.direction == listed.direction);
        let Some(at) = matching else {
            bail!("live call {id} {listed:?} was never acknowledged and matches no unanswered admission (unanswered: {unkeyed:?})");
        };
        let spec = unkeyed.swap_remove(at);
        model.stats.landed_unknown += 1;
        model.insert_live(&id, spec.tenant, spec.line);
    }
    // What did not land by now never will: the model forgets it, so a later appearance fails.

    model.touched.clear();
    model.idle = model.calls.iter().filter(|(_, c)| c.status == Status::Live).map(|(id, _)| id.clone()).collect();
    model.prune_ended();
    Ok(())
}

// ----------------------------------------------------------------------------------- workers

async fn worker(addr: SocketAddr, model: Arc<Mutex<Model>>, stop: Arc<AtomicBool>, mut rng: Rng) {
    let Ok(Ok(mut client)) = tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(addr, Some(TOKEN.to_owned()))).await else {
        return;
    };
    for _ in 0..WORKER_OPS_MAX {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let op = lock(&model).next_op(&mut rng);
        let alive = match op {
            Op::Admit(spec) => {
                let answer = request(&mut client, "POST", "/v1/calls", Some(&spec.body()), &spec.headers()).await;
                lock(&model).admit_answered(spec, answer)
            }
            Op::End(id) => {
                let answer = request(&mut client, "POST", &format!("/v1/calls/{id}/end"), Some(&json!({})), &[]).await;
                lock(&model).end_answered(id, answer)
            }
            Op::Heartbeat(id) => {
                let answer = request(&mut client, "POST", &format!("/v1/calls/{id}/heartbeat"), None, &[]).await;
                lock(&model).heartbeat_answered(id, answer)
            }
        };
        if !alive {
            return;
        }
    }
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
        let cycles = var("SWITCHBOARD_CRASH_CYCLES")
            .map_or(CYCLES_DEFAULT, |v| v.trim().parse().expect("SWITCHBOARD_CRASH_CYCLES must be a number"));
        assert!(cycles >= 1, "SWITCHBOARD_CRASH_CYCLES must be at least 1");
        let seed = var("SWITCHBOARD_CRASH_SEED").map_or_else(
            || {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                Rng(now.as_nanos() as u64 ^ u64::from(std::process::id())).next_u64()
            },
            |v| v.trim().parse().expect("SWITCHBOARD_CRASH_SEED must be a u64"),
        );
        let keep = var("SWITCHBOARD_CRASH_KEEP").is_some_and(|v| v != "0");
        Settings { cycles, seed, keep }
    }
}

async fn run(settings: &Settings, ctx: &Launcher) -> Result<Stats> {
    let mut rng = Rng(settings.seed);
    let model = Arc::new(Mutex::new(Model::default()));
    for cycle in 0..settings.cycles {
        let last = cycle + 1 == settings.cycles;
        // Half the cycles run the server on one async worker, as in the README's benchmark, half
        // on one per core: different interleavings of the same actors.
        let ctx = &ctx.with_one_worker(rng.percent(50));
        let what = format!("cycle {cycle} ({})", ctx.runtime());

        // Sometimes kill a start during boot (sled recovery, journal replay) first.
        let mut boot_kill = String::new();
        if cycle > 0 && rng.percent(BOOT_KILL_PERCENT) {
            let mut server = Server::spawn(ctx, &format!("{what} boot kill"), |_| write_config(ctx, &mut rng))?;
            let after = rng.between(BOOT_KILL_DELAY_MS);
            tokio::time::sleep(Duration::from_millis(after)).await;
            match server.child.try_wait()? {
                None => server.sigkill()?,
                Some(status) => eprintln!("{what}: the start to kill during boot exited by itself first ({status}); see the server log"),
            }
            lock(&model).stats.boot_kills += 1;
            boot_kill = format!("a start SIGKILLed {after} ms into boot, then ");
        }

        let (mut server, mut client, boot) = Server::start(ctx, &what, |_| write_config(ctx, &mut rng)).await?;
        if cycle == 0 {
            setup(&mut client).await.context("setup")?;
        }
        let verify_started = Instant::now();
        let mut snapshot = std::mem::take(&mut *lock(&model));
        let verified = verify(&mut client, &mut snapshot, false).await;
        *lock(&model) = snapshot;
        verified.with_context(|| format!("{what}: verification after restart"))?;
        let verify_time = verify_started.elapsed();
        drop(client);

        let before = lock(&model).stats;
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> =
            (0..WORKERS).map(|_| tokio::spawn(worker(server.addr, Arc::clone(&model), Arc::clone(&stop), Rng(rng.next_u64())))).collect();
        let delay = rng.between(KILL_DELAY_MS);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let ending = if last {
            let took = server.sigterm().await.with_context(|| format!("{what}: graceful stop"))?;
            format!("SIGTERM after {delay} ms, exit 0 in {} ms", took.as_millis())
        } else {
            server.sigkill()?;
            lock(&model).stats.kills += 1;
            format!("SIGKILL after {delay} ms")
        };
        stop.store(true, Ordering::SeqCst);
        for handle in workers {
            tokio::time::timeout(WORKERS_STOP_TIMEOUT, handle)
                .await
                .with_context(|| format!("{what}: a worker did not stop"))?
                .context("worker panicked")?;
        }

        let m = lock(&model);
        if !m.anomalies.is_empty() {
            bail!("{what}: unexpected answers:\n  {}", m.anomalies.join("\n  "));
        }
        let s = m.stats;
        println!(
            "{what}: {boot_kill}boot {} ms, verify {} ms ({} calls known, {} live); +{} admitted, +{} denied (tenant/line/platform {}/{}/{}), +{} ended, +{} heartbeats, unanswered +{} admits/+{} ends/+{} heartbeats; {ending}",
            boot.as_millis(),
            verify_time.as_millis(),
            m.calls.len(),
            m.idle.len(),
            s.admitted - before.admitted,
            s.denied - before.denied,
            s.denied_tenant - before.denied_tenant,
            s.denied_line - before.denied_line,
            s.denied_platform - before.denied_platform,
            s.ended - before.ended,
            s.heartbeats - before.heartbeats,
            s.unknown_admits - before.unknown_admits,
            s.unknown_ends - before.unknown_ends,
            s.unknown_heartbeats - before.unknown_heartbeats,
        );
    }

    // After the graceful stop: one more start, check every call, and stop cleanly again.
    let (mut server, mut client, boot) = Server::start(ctx, "final", |_| write_config(ctx, &mut rng)).await?;
    let mut snapshot = std::mem::take(&mut *lock(&model));
    let started = Instant::now();
    verify(&mut client, &mut snapshot, true).await.context("final verification (every call)")?;
    println!("final: boot {} ms, full verify of {} calls in {} ms", boot.as_millis(), snapshot.calls.len(), started.elapsed().as_millis());
    drop(client);
    server.sigterm().await.context("final graceful stop")?;
    Ok(snapshot.stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_change() {
    let settings = Settings::from_env();
    println!("crash test: seed {} (replay with SWITCHBOARD_CRASH_SEED={}), {} cycles", settings.seed, settings.seed, settings.cycles);
    let mut dir = tempfile::Builder::new().prefix("switchboard-crash-").tempdir().expect("temp dir");
    let ctx = Launcher::new(dir.path(), TOKEN, &[]);
    let deadline = Duration::from_secs(60 + 5 * settings.cycles);
    let started = Instant::now();
    let outcome = match tokio::time::timeout(deadline, run(&settings, &ctx)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow!("the test did not finish within {deadline:?}")),
    };
    match outcome {
        Ok(stats) => {
            println!("crash test passed in {:.1} s (seed {}): {stats:?}", started.elapsed().as_secs_f64(), settings.seed);
            if settings.keep {
                dir.disable_cleanup(true);
                println!("kept {}", ctx.root.display());
            }
        }
        Err(error) => {
            dir.disable_cleanup(true);
            panic!(
                "crash test failed (seed {}; replay with SWITCHBOARD_CRASH_SEED={}): {error:#}\n\ndata dir and server log kept in {}\nlast server log lines:\n{}",
                settings.seed,
                settings.seed,
                ctx.root.display(),
                ctx.log_tail(40)
            );
        }
    }
}
