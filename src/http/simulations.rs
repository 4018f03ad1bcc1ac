//! `/v1/simulations`: runs a scenario on request with the `switchboard-simulations` engine (the
//! service's own actors on virtual time), keeps the report, and draws its chart. Operators use
//! it to ask "what would this traffic do to these limits?" without a checkout of the code.
//!
//! A run is CPU work on the machine that also admits calls, so every part of it is bounded by
//! `[simulations]` in the config, and each bound has its answer:
//! - runs at once (`runs_concurrent_max`): past it 503 `SIMULATIONS_BUSY` at once, never a queue;
//! - calls per run (`calls_per_run_max`) and tenants and lines per run
//!   (`tenants_and_lines_per_run_max`, which bounds a run's memory): 422 `SIMULATION_TOO_LARGE`
//!   before anything runs;
//! - wall time per run (`wall_time_ms_max`): the run stops, 503 `SIMULATION_TIMEOUT`;
//! - reports kept (`reports_stored_max`): storing one more drops the oldest;
//! - the request body: 64 KiB, as on every route (`extract::BODY_BYTES_MAX`).
//!
//! Reports live in a sled database of their own, `<data_dir>/simulations`, not in the journal's:
//! storing a report never takes the journal's lock nor lengthens its group commits, and deleting
//! that directory forgets the reports and nothing else. Tree `simulations`: key: the id's number
//! (big-endian u64, so sled's order is creation order); value: `RECORD_VERSION`, then the JSON
//! of a `StoredSimulation`. Ids are the last key plus one, so they only grow, across restarts
//! too (pruning always keeps the newest).

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_simulations::{Limits, Report, RunError, Scenario, ScenarioError, chart};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppStateRef;
use super::extract::{BODY_BYTES_MAX, QueryParams, parse_json};
use super::problem::Problem;
use super::validate::rfc3339;
use crate::config::SimulationsConfig;

/// The first byte of every stored record: a binary that finds another refuses to guess.
const RECORD_VERSION: u8 = 1;
/// sled's page cache for the reports: a hundred reports of tens of KiB fit with room to spare.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;
const LIST_LIMIT_DEFAULT: usize = 20;
const LIST_LIMIT_MAX: usize = 100;
/// How long a refused client should wait before trying again when every run slot is taken.
const BUSY_RETRY_AFTER_S: u32 = 5;
const ID_PREFIX: &str = "sim_";
const ID_DIGITS: usize = 12;

// ---------------------------------------------------------------- the bounds and the store

/// The runs' bounds, the run slots, and the report store once boot has opened it.
pub struct Simulations {
    bounds: SimulationsConfig,
    runs: Arc<Semaphore>,
    /// Unset while booting; `Err` (the reason, already logged) if the store could not be opened:
    /// simulations are then unavailable, and admission is not held back by them.
    store: OnceLock<Result<Arc<SimulationStore>, String>>,
}

impl Simulations {
    pub fn new(bounds: SimulationsConfig) -> Simulations {
        let runs = Arc::new(Semaphore::new(bounds.runs_concurrent_max));
        Simulations { bounds, runs, store: OnceLock::new() }
    }

    /// Publishes the opened store (or why it could not be opened); boot does this once.
    pub fn set_store(&self, store: Result<SimulationStore, String>) {
        assert!(self.store.set(store.map(Arc::new)).is_ok(), "the simulation store is published once");
    }

    /// Waits until no run is in progress (a run whose client went away still stores its
    /// report), at most a run's wall-time bound.
    pub async fn wait_for_runs(&self) {
        let runs = u32::try_from(self.bounds.runs_concurrent_max).unwrap_or(u32::MAX);
        let patience = Duration::from_millis(self.bounds.wall_time_ms_max).saturating_add(Duration::from_secs(1));
        if tokio::time::timeout(patience, self.runs.acquire_many(runs)).await.is_err() {
            tracing::warn!("shutting down with a simulation still running; its report is not stored");
        }
    }

    /// Flushes the store and releases its files (blocking). Runs still in progress fail to
    /// store their report.
    pub fn close(&self) {
        if let Some(Ok(store)) = self.store.get() {
            store.close();
        }
    }

    fn store(&self) -> Result<Arc<SimulationStore>, Problem> {
        match self.store.get() {
            Some(Ok(store)) => Ok(Arc::clone(store)),
            Some(Err(_)) => Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SIMULATIONS_UNAVAILABLE",
                "the simulation store could not be opened at start; see the server log",
            )
            .retry_after(60)),
            None => Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY", "the simulation store is being opened").retry_after(1)),
        }
    }

    /// A run slot, or 503 at once: a run waiting for a slot would hold its request for as long
    /// as the runs ahead of it.
    fn run_slot(&self) -> Result<OwnedSemaphorePermit, Problem> {
        Arc::clone(&self.runs).try_acquire_owned().map_err(|_| {
            let max = self.bounds.runs_concurrent_max;
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SIMULATIONS_BUSY",
                format!("{max} simulation(s) already running; at most {max} at once"),
            )
            .retry_after(BUSY_RETRY_AFTER_S)
            .with("runs_concurrent_max", max as u64)
        })
    }

    /// Refuses a scenario past the size bounds before it takes a run slot: a request that can
    /// never run gets its 422, not a 503 that invites a retry. The engine checks the calls
    /// again during the run, and its wall-time bound covers creating the tenants and lines; the
    /// bound here keeps their memory in check.
    fn check_size(&self, scenario: &Scenario) -> Result<(), Problem> {
        let expected = scenario.expected_calls().ceil() as u64;
        let calls_max = self.bounds.calls_per_run_max;
        if expected > calls_max {
            return Err(too_large(expected, calls_max));
        }
        let entities: u64 = scenario.groups.iter().map(|g| u64::from(g.count.0) * (1 + u64::from(g.lines.0))).sum();
        let entities_max = self.bounds.tenants_and_lines_per_run_max;
        if entities > entities_max {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "SIMULATION_TOO_LARGE",
                format!("the scenario creates {entities} tenants and lines; a run may create at most {entities_max}"),
            )
            .with_field("groups")
            .with("tenants_and_lines", entities)
            .with("tenants_and_lines_per_run_max", entities_max));
        }
        Ok(())
    }

    fn limits(&self) -> Limits {
        Limits { calls_max: self.bounds.calls_per_run_max, wall_time_max: Some(Duration::from_millis(self.bounds.wall_time_ms_max)) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimulationStoreError {
    #[error("simulation store: {0}")]
    Io(String),
    #[error("simulation record {number}: {reason}")]
    Corrupt { number: u64, reason: String },
    #[error("the simulation store is closed")]
    Closed,
}

fn io(error: impl std::fmt::Display) -> SimulationStoreError {
    SimulationStoreError::Io(error.to_string())
}

/// One stored run, as written in the tree. The report stays JSON: a report written by an older
/// binary is still served as it was, even if `Report` has grown a field since.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSimulation {
    id: String,
    created_at_ms: u64,
    report: Value,
}

pub struct SimulationStore {
    /// `None` once closed: every sled handle is dropped, which releases the files and the lock.
    inner: Mutex<Option<Inner>>,
    reports_stored_max: u64,
}

struct Inner {
    db: sled::Db,
    reports: sled::Tree,
    /// sled's log file, opened only to `fdatasync` it after each flush (see `journal.rs`: sled's
    /// own flush does not survive a power loss).
    log_file: File,
}

impl SimulationStore {
    /// Opens (or creates) `<data_dir>/simulations`. Blocking.
    pub fn open(data_dir: &Path, reports_stored_max: u64) -> Result<SimulationStore, SimulationStoreError> {
        assert!(reports_stored_max >= 1, "pruning keeps the newest report, so ids only grow");
        let path = data_dir.join("simulations");
        let db = sled::Config::new().path(&path).flush_every_ms(None).cache_capacity(CACHE_BYTES).open().map_err(io)?;
        let reports = db.open_tree("simulations").map_err(io)?;
        let log_file = File::open(path.join("db")).map_err(|e| io(format!("opening {}: {e}", path.join("db").display())))?;
        Ok(SimulationStore { inner: Mutex::new(Some(Inner { db, reports, log_file })), reports_stored_max })
    }

    pub fn close(&self) {
        if let Ok(mut guard) = self.inner.lock()
            && let Some(inner) = guard.take()
        {
            let _ = inner.db.flush();
            let _ = inner.log_file.sync_data();
        }
    }

    fn with<R>(&self, run: impl FnOnce(&Inner) -> Result<R, SimulationStoreError>) -> Result<R, SimulationStoreError> {
        let guard: MutexGuard<'_, Option<Inner>> = self.inner.lock().map_err(|_| io("lock poisoned"))?;
        run(guard.as_ref().ok_or(SimulationStoreError::Closed)?)
    }

    /// Stores a report under the next id, drops the oldest past `reports_stored_max`, and
    /// returns only once it is on disk. Blocking.
    fn insert(&self, created_at_ms: u64, report: &Report) -> Result<StoredSimulation, SimulationStoreError> {
        let report = serde_json::to_value(report).map_err(io)?;
        // Checked before writing: what is stored must read back (a NaN would come back null).
        Report::deserialize(&report).map_err(|e| io(format!("the report would not read back: {e}")))?;
        self.with(|inner| {
            let number = match inner.reports.last().map_err(io)? {
                Some((key, _)) => number_of(&key)? + 1,
                None => 1,
            };
            let stored = StoredSimulation { id: simulation_id(number), created_at_ms, report };
            let mut batch = sled::Batch::default();
            batch.insert(number.to_be_bytes().to_vec(), encode(&stored)?);
            let keep_from = (number + 1).saturating_sub(self.reports_stored_max);
            for entry in inner.reports.range(..keep_from.to_be_bytes()) {
                batch.remove(entry.map_err(io)?.0);
            }
            inner.reports.apply_batch(batch).map_err(io)?;
            inner.db.flush().map_err(io)?;
            inner.log_file.sync_data().map_err(|e| io(format!("fdatasync: {e}")))?;
            Ok(stored)
        })
    }

    fn get(&self, number: u64) -> Result<Option<StoredSimulation>, SimulationStoreError> {
        self.with(|inner| match inner.reports.get(number.to_be_bytes()).map_err(io)? {
            Some(bytes) => decode(number, &bytes).map(Some),
            None => Ok(None),
        })
    }

    /// Up to `limit` reports, newest first, older than `before` when given.
    fn list(&self, before: Option<u64>, limit: usize) -> Result<Vec<StoredSimulation>, SimulationStoreError> {
        self.with(|inner| {
            let end = before.unwrap_or(u64::MAX);
            let mut page = Vec::with_capacity(limit.min(LIST_LIMIT_MAX + 1));
            for entry in inner.reports.range(..end.to_be_bytes()).rev().take(limit) {
                let (key, bytes) = entry.map_err(io)?;
                page.push(decode(number_of(&key)?, &bytes)?);
            }
            Ok(page)
        })
    }
}

fn number_of(key: &[u8]) -> Result<u64, SimulationStoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| io(format!("a key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

fn encode(stored: &StoredSimulation) -> Result<Vec<u8>, SimulationStoreError> {
    let mut bytes = vec![RECORD_VERSION];
    serde_json::to_writer(&mut bytes, stored).map_err(io)?;
    Ok(bytes)
}

/// Reads a record back, checking its version and that it is the one its key names.
fn decode(number: u64, bytes: &[u8]) -> Result<StoredSimulation, SimulationStoreError> {
    let corrupt = |reason: String| SimulationStoreError::Corrupt { number, reason };
    match bytes.first() {
        Some(&RECORD_VERSION) => {}
        other => return Err(corrupt(format!("version {other:?}, this binary reads {RECORD_VERSION}"))),
    }
    let stored: StoredSimulation = serde_json::from_slice(&bytes[1..]).map_err(|e| corrupt(e.to_string()))?;
    if stored.id != simulation_id(number) {
        return Err(corrupt(format!("holds {}", stored.id)));
    }
    Ok(stored)
}

fn simulation_id(number: u64) -> String {
    format!("{ID_PREFIX}{number:0ID_DIGITS$}")
}

/// `sim_` and exactly twelve digits, not zero; anything else names no simulation.
fn parse_id(raw: &str) -> Option<u64> {
    let digits = raw.strip_prefix(ID_PREFIX)?;
    if digits.len() != ID_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

// ---------------------------------------------------------------- requests

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedQuery {
    seed: Option<u64>,
}

/// The JSON body: exactly one of `scenario` (the scenario as JSON) and `scenario_toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSimulation {
    #[serde(default)]
    scenario: Option<Value>,
    #[serde(default)]
    scenario_toml: Option<String>,
    #[serde(default)]
    seed: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSimulations {
    limit: Option<usize>,
    starting_after: Option<String>,
}

/// `POST /v1/simulations`: runs the scenario in the body with the seed given (in the query or
/// the JSON body) or the scenario's own, stores the report, answers 201 with it.
pub async fn create(
    State(state): State<AppStateRef>,
    QueryParams(query): QueryParams<SeedQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let body = body.map_err(body_problem)?;
    let (scenario, body_seed) = parse_scenario(&headers, &body)?;
    let seed = match (query.seed, body_seed) {
        (Some(_), Some(_)) => return Err(Problem::invalid("seed", "give the seed once: in the query or in the body")),
        (query_seed, body_seed) => query_seed.or(body_seed).unwrap_or(scenario.seed),
    };
    let simulations = &state.simulations;
    simulations.check_size(&scenario)?;
    let store = simulations.store()?;
    let slot = simulations.run_slot()?;
    let limits = simulations.limits();
    // The slot moves into the blocking task: it is held until the run really ends, even if the
    // client goes away and this future is dropped.
    let stored = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        run_and_store(&store, &scenario, seed, &limits)
    })
    .await
    .map_err(|error| {
        tracing::error!(%error, "simulation task failed");
        internal("SIMULATION_FAILED", "the simulation failed")
    })??;
    let location = format!("/v1/simulations/{}", stored.id);
    let mut response = (StatusCode::CREATED, axum::Json(simulation_json(stored))).into_response();
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&location).expect("an id is a valid header value"));
    Ok(response)
}

/// `GET /v1/simulations/{id}`: the stored run, as `POST` answered it.
pub async fn show(State(state): State<AppStateRef>, UrlPath(raw_id): UrlPath<String>) -> Result<Response, Problem> {
    let stored = load(&state, &raw_id).await?;
    Ok(axum::Json(simulation_json(stored)).into_response())
}

/// `GET /v1/simulations/{id}/chart.svg`: concurrency by class over time, drawn from the stored
/// report. The SVG holds no script; the headers keep a browser from running any anyway.
pub async fn chart(State(state): State<AppStateRef>, UrlPath(raw_id): UrlPath<String>) -> Result<Response, Problem> {
    let stored = load(&state, &raw_id).await?;
    let report = Report::deserialize(&stored.report).map_err(|error| {
        tracing::error!(id = %stored.id, %error, "a stored report does not read as this binary's report");
        internal("REPORT_UNREADABLE", "this report was stored by another version and cannot be drawn")
    })?;
    let svg = chart::svg(&report);
    let headers = [
        (header::CONTENT_TYPE, "image/svg+xml"),
        (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    Ok((headers, svg).into_response())
}

/// `GET /v1/simulations?limit=&starting_after=`: stored runs, newest first, without their
/// reports.
pub async fn list(State(state): State<AppStateRef>, QueryParams(query): QueryParams<ListSimulations>) -> Result<Response, Problem> {
    let bad = |field: &str, detail: String| Problem::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", detail).with_field(field);
    let limit = query.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(bad("limit", format!("limit must be 1-{LIST_LIMIT_MAX}")));
    }
    let before = match &query.starting_after {
        Some(raw) => Some(parse_id(raw).ok_or_else(|| bad("starting_after", "starting_after must be a simulation id".into()))?),
        None => None,
    };
    let store = state.simulations.store()?;
    let mut page = blocking(move || store.list(before, limit + 1)).await?;
    let has_more = page.len() > limit;
    page.truncate(limit);
    let next = if has_more { page.last().map(|s| s.id.clone()) } else { None };
    let data: Vec<Value> = page.iter().map(summary_json).collect();
    Ok(axum::Json(json!({"object": "list", "data": data, "has_more": has_more, "next_starting_after": next})).into_response())
}

// ---------------------------------------------------------------- parsing the scenario

/// The scenario and the body's seed, from TOML (`application/toml`, `text/plain`, …) or JSON.
fn parse_scenario(headers: &HeaderMap, body: &[u8]) -> Result<(Scenario, Option<u64>), Problem> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        return parse_json_request(body);
    }
    if ["application/toml", "application/x-toml", "text/toml", "text/x-toml", "text/plain"].contains(&essence.as_str()) {
        let text = std::str::from_utf8(body)
            .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "BODY_UNREADABLE", "a TOML scenario must be UTF-8 text"))?;
        let scenario = Scenario::from_toml(text, "request body").map_err(|e| toml_problem(e, text))?;
        return Ok((scenario, None));
    }
    Err(Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
        "send the scenario as application/toml, or as application/json {\"scenario\": {...}} or {\"scenario_toml\": \"...\"}",
    )
    .with_field("content-type"))
}

fn parse_json_request(body: &[u8]) -> Result<(Scenario, Option<u64>), Problem> {
    let request: CreateSimulation = parse_json(body)?;
    let scenario = match (request.scenario, request.scenario_toml) {
        (Some(value), None) => scenario_from_json(value)?,
        (None, Some(text)) => Scenario::from_toml(&text, "scenario_toml").map_err(|e| toml_problem(e, &text))?,
        _ => return Err(Problem::invalid("scenario", "give exactly one of scenario (JSON) and scenario_toml (TOML text)")),
    };
    Ok((scenario, request.seed))
}

/// `Scenario::from_json` says what is wrong with a value but not where: the path is found
/// first, so the problem names `scenario.groups[0].count` as other routes name their fields.
fn scenario_from_json(value: Value) -> Result<Scenario, Problem> {
    if let Err(error) = serde_path_to_error::deserialize::<_, Scenario>(&value) {
        let path = error.path().to_string();
        let reason = error.into_inner().to_string();
        let inner = if path == "." { unknown_field(&reason) } else { Some(path) };
        let field = inner.map_or_else(|| "scenario".to_owned(), |inner| format!("scenario.{inner}"));
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_SCENARIO", format!("{field}: {reason}"))
            .with_field(field)
            .with("reason", reason));
    }
    Scenario::from_json(value).map_err(|e| scenario_problem(e, Some("scenario")))
}

/// A TOML scenario's error; one found while parsing says where but not which field, so the
/// field is looked up at that place in the source.
fn toml_problem(mut error: ScenarioError, source: &str) -> Problem {
    if error.field.is_none()
        && let (Some(line), Some(column)) = (error.line, error.column)
    {
        error.field = toml_field_at(source, line, column);
    }
    scenario_problem(error, None)
}

/// The dotted path (`groups[0].count`) of the key or value at `line`:`column` (1-based,
/// columns in characters) of a TOML document.
fn toml_field_at(source: &str, line: usize, column: usize) -> Option<String> {
    let line_start = match line {
        0 => return None,
        1 => 0,
        _ => source.match_indices('\n').nth(line - 2)?.0 + 1,
    };
    let in_line: usize = source[line_start..].chars().take(column.saturating_sub(1)).map(char::len_utf8).sum();
    let offset = line_start + in_line;
    let document = toml::de::DeTable::parse(source).ok()?;
    let mut path = String::new();
    table_path_to(document.get_ref(), offset, &mut path).then_some(path)
}

/// Appends to `path` the key of `table` whose key or scalar value holds `offset`, and under it
/// the rest of the path; false (and `path` as it was) if none does.
fn table_path_to(table: &toml::de::DeTable<'_>, offset: usize, path: &mut String) -> bool {
    for (key, value) in table {
        let mark = path.len();
        if mark > 0 {
            path.push('.');
        }
        path.push_str(key.get_ref());
        if key.span().contains(&offset) || value_path_to(value, offset, path) {
            return true;
        }
        path.truncate(mark);
    }
    false
}

fn value_path_to(value: &toml::Spanned<toml::de::DeValue<'_>>, offset: usize, path: &mut String) -> bool {
    use toml::de::DeValue;
    match value.get_ref() {
        DeValue::Table(table) => table_path_to(table, offset, path),
        DeValue::Array(items) => items.iter().enumerate().any(|(index, item)| {
            let mark = path.len();
            path.push_str(&format!("[{index}]"));
            let found = value_path_to(item, offset, path);
            if !found {
                path.truncate(mark);
            }
            found
        }),
        _ => value.span().contains(&offset),
    }
}

/// 422 `INVALID_SCENARIO`: `field` (under `prefix` for a JSON scenario), `line` and `column`
/// (TOML), `reason`, and the whole error as `detail` (`request body:3:1: unknown field …`).
fn scenario_problem(error: ScenarioError, prefix: Option<&str>) -> Problem {
    let field = error.field.clone().or_else(|| unknown_field(&error.reason));
    let mut problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_SCENARIO", error.to_string()).with("reason", error.reason);
    if let Some(field) = field {
        problem = problem.with_field(prefix.map_or_else(|| field.clone(), |prefix| format!("{prefix}.{field}")));
    }
    if let Some(line) = error.line {
        problem = problem.with("line", line as u64);
    }
    if let Some(column) = error.column {
        problem = problem.with("column", column as u64);
    }
    problem
}

/// serde names an unknown or missing field only in its message ("unknown field `foo`, …").
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `").or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next().map(str::to_owned)
}

fn body_problem(rejection: BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE", format!("request bodies are limited to {BODY_BYTES_MAX} bytes"))
    } else {
        Problem::new(StatusCode::BAD_REQUEST, "BODY_UNREADABLE", rejection.body_text())
    }
}

// ---------------------------------------------------------------- running and answering

/// Runs the scenario and stores its report. Blocking: the engine runs on a thread of its own
/// and this waits for it.
fn run_and_store(store: &SimulationStore, scenario: &Scenario, seed: u64, limits: &Limits) -> Result<StoredSimulation, Problem> {
    let started = Instant::now();
    let report = switchboard_simulations::run(scenario, seed, limits).map_err(|e| run_problem(e, limits))?;
    let stored = store.insert(now_ms(), &report).map_err(|error| {
        tracing::error!(%error, scenario = %report.scenario, seed, "storing a simulation report failed");
        internal("SIMULATION_STORE_FAILED", "the report could not be stored")
    })?;
    let wall_ms = started.elapsed().as_millis() as u64;
    tracing::info!(id = %stored.id, scenario = %report.scenario, seed, passed = report.passed, wall_ms, "simulation stored");
    Ok(stored)
}

fn run_problem(error: RunError, limits: &Limits) -> Problem {
    match error {
        RunError::TooManyCalls { expected, max } => too_large(expected, max),
        RunError::WallTimeExceeded { .. } => {
            let limit_ms = limits.wall_time_max.map_or(0, |d| d.as_millis() as u64);
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SIMULATION_TIMEOUT",
                format!(
                    "the run was stopped at this server's wall-time bound of {limit_ms} ms per run; the bound is the server's, \
                     not a fault in the scenario: a shorter duration or fewer tenants fits"
                ),
            )
            .retry_after(limit_ms.div_ceil(1000).max(1) as u32)
            .with("wall_time_ms_max", limit_ms)
        }
        RunError::Failed(why) => {
            tracing::error!(reason = %why, "simulation failed");
            internal("SIMULATION_FAILED", "the simulation failed; see the server log")
        }
    }
}

fn too_large(expected: u64, max: u64) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "SIMULATION_TOO_LARGE",
        format!("the scenario offers about {expected} calls; a run may offer at most {max}"),
    )
    .with("expected_calls", expected)
    .with("calls_per_run_max", max)
}

fn internal(code: &'static str, detail: &str) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, code, detail)
}

/// The stored run `raw_id` names, or 404 (also for an id that is not one).
async fn load(state: &AppStateRef, raw_id: &str) -> Result<StoredSimulation, Problem> {
    let number = parse_id(raw_id).ok_or_else(|| Problem::not_found("simulation", raw_id))?;
    let store = state.simulations.store()?;
    blocking(move || store.get(number)).await?.ok_or_else(|| Problem::not_found("simulation", raw_id))
}

/// A store read on the blocking pool (sled may read from disk).
async fn blocking<R: Send + 'static>(read: impl FnOnce() -> Result<R, SimulationStoreError> + Send + 'static) -> Result<R, Problem> {
    let result = tokio::task::spawn_blocking(read).await.map_err(|e| SimulationStoreError::Io(e.to_string())).and_then(|r| r);
    result.map_err(|error| {
        tracing::error!(%error, "reading the simulation store failed");
        internal("SIMULATION_STORE_FAILED", "the simulation store could not be read")
    })
}

fn simulation_json(stored: StoredSimulation) -> Value {
    json!({
        "object": "simulation",
        "id": stored.id,
        "created_at": rfc3339(stored.created_at_ms),
        "seed": stored.report["seed"],
        "report": stored.report,
    })
}

fn summary_json(stored: &StoredSimulation) -> Value {
    json!({
        "object": "simulation",
        "id": stored.id,
        "created_at": rfc3339(stored.created_at_ms),
        "scenario": stored.report["scenario"],
        "seed": stored.report["seed"],
        "digest": stored.report["digest"],
        "passed": stored.report["passed"],
    })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sim_and_twelve_digits() {
        assert_eq!(simulation_id(7), "sim_000000000007");
        assert_eq!(parse_id("sim_000000000007"), Some(7));
        for bad in ["sim_7", "sim_000000000000", "sim_00000000000x", "call_000000000007", "sim_+00000000007", "sim_0000000000007"] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn past_the_concurrent_runs_the_next_is_refused_at_once() {
        let simulations = Simulations::new(SimulationsConfig { runs_concurrent_max: 1, ..SimulationsConfig::default() });
        let running = simulations.run_slot().expect("a free slot");
        let busy = simulations.run_slot().unwrap_err();
        assert_eq!((busy.status, busy.code, busy.retry_after_s), (StatusCode::SERVICE_UNAVAILABLE, "SIMULATIONS_BUSY", Some(5)));
        drop(running);
        assert!(simulations.run_slot().is_ok(), "a finished run frees its slot");
    }

    #[test]
    fn a_record_of_another_version_or_another_key_is_refused() {
        let stored = StoredSimulation { id: simulation_id(3), created_at_ms: 1, report: json!({}) };
        let bytes = encode(&stored).unwrap();
        assert_eq!(decode(3, &bytes).unwrap().id, "sim_000000000003");
        assert!(matches!(decode(4, &bytes), Err(SimulationStoreError::Corrupt { number: 4, .. })));
        let mut other_version = bytes.clone();
        other_version[0] = RECORD_VERSION + 1;
        assert!(matches!(decode(3, &other_version), Err(SimulationStoreError::Corrupt { .. })));
    }
}
