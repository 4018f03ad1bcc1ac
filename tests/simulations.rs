//! `/v1/simulations` over real HTTP, with the report store in a real sled database in the test's
//! data directory.
//!
//! What these tests prove:
//! - a TOML scenario runs and answers 201 with its report, `Location` and a `sim_` id; the
//!   report is the engine's (two PRO tenants × 5 calls on capacity 5: priority is admitted 3 of
//!   10), and `GET` and `chart.svg` serve it from the store;
//! - one scenario and one seed give one digest, run after run; the seed comes from the query,
//!   the JSON body or the scenario;
//! - reports survive a restart and ids keep growing after it; past `reports_stored_max` the
//!   oldest is dropped; the listing is newest first and pages;
//! - the JSON body takes a scenario object or TOML text;
//! - every bad input is a 4xx problem naming where: a TOML error by line and field, a JSON
//!   scenario by its path, a bad seed, a wrong content type, a missing token;
//! - a scenario past the calls bound or the tenants-and-lines bound is 422 before it runs; a run past the wall-time bound is
//!   503 with `Retry-After`; a second run while one runs is 503 `SIMULATIONS_BUSY` at once, and
//!   the slot frees when the first stops; a run whose client went away is still stored, and a
//!   shutdown waits for it; unknown ids are 404.
//!
//! Scenarios are tiny (a few calls on virtual time), so each run takes milliseconds.

mod common;

use common::*;
use serde_json::{Value, json};
use switchboard::client::{Client, Response};
use switchboard::config::Config;

/// Two PRO tenants start 5 calls each at once on capacity 5, of which PRO's class may use 3.
const TWO_BURSTS: &str = r#"name = "two-bursts"
duration = "10m"
[pools.standard_voice]
capacity = 5
reserved = { premium = 2, priority = 3 }
[[groups]]
name = "pro"
count = 2
plan = "PRO"
[[events]]
at = "1m"
burst = { group = "pro", tenant = 0, calls = 5, duration = "3m" }
[[events]]
at = "1m"
burst = { group = "pro", tenant = 1, calls = 5, duration = "3m" }
"#;

/// The same scenario, as the JSON body's `scenario` object.
fn two_bursts_json() -> Value {
    json!({
        "name": "two-bursts",
        "duration": "10m",
        "pools": {"standard_voice": {"capacity": 5, "reserved": {"premium": 2, "priority": 3}}},
        "groups": [{"name": "pro", "count": 2, "plan": "PRO"}],
        "events": [
            {"at": "1m", "burst": {"group": "pro", "tenant": 0, "calls": 5, "duration": "3m"}},
            {"at": "1m", "burst": {"group": "pro", "tenant": 1, "calls": 5, "duration": "3m"}},
        ],
    })
}

async fn post_toml(client: &mut Client, query: &str, toml: &str) -> Response {
    let headers = [("content-type", "application/toml")];
    client.send_raw("POST", &format!("/v1/simulations{query}"), toml.as_bytes().to_vec(), &headers).await.expect("request")
}

/// Posts a scenario that must run; returns the 201's body.
async fn simulate(client: &mut Client, query: &str, toml: &str) -> Value {
    let response = post_toml(client, query, toml).await;
    assert_eq!(response.status, 201, "{}", response.text());
    let body = response.json();
    let id = body["id"].as_str().expect("an id");
    assert_eq!(response.header("location"), Some(format!("/v1/simulations/{id}").as_str()));
    body
}

fn is_sim_id(id: &str) -> bool {
    id.strip_prefix("sim_").is_some_and(|digits| digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()))
}

#[tokio::test]
async fn a_toml_scenario_runs_and_its_report_is_served() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;

    let created = simulate(&mut client, "", TWO_BURSTS).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(is_sim_id(&id), "{id}");
    assert_eq!(created["object"], "simulation");
    assert_eq!(created["seed"], 0, "the scenario's own seed");
    let report = &created["report"];
    assert_eq!(report["scenario"], "two-bursts");
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(
        (report["classes"]["priority"]["offered"].as_u64(), report["classes"]["priority"]["admitted"].as_u64()),
        (Some(10), Some(3))
    );
    let digest = report["digest"].as_str().expect("a digest");
    assert!(digest.len() == 16 && digest.bytes().all(|b| b.is_ascii_hexdigit()), "{digest}");

    assert_eq!(get_json(&mut client, &format!("/v1/simulations/{id}")).await, created);
    let chart = client.get(&format!("/v1/simulations/{id}/chart.svg")).await.expect("request");
    assert_eq!((chart.status, chart.header("content-type")), (200, Some("image/svg+xml")));
    assert!(chart.text().starts_with("<svg"), "{}", chart.text());
    server.stop().await;
}

#[tokio::test]
async fn one_scenario_and_one_seed_give_one_digest() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;

    let first = simulate(&mut client, "?seed=7", TWO_BURSTS).await;
    let second = simulate(&mut client, "?seed=7", TWO_BURSTS).await;
    assert_eq!(first["seed"], 7);
    assert_eq!(first["report"]["digest"], second["report"]["digest"]);
    assert_eq!(first["report"], second["report"], "a report is a function of the scenario and the seed");
    assert!(second["id"].as_str() > first["id"].as_str(), "ids grow: {} then {}", first["id"], second["id"]);
    server.stop().await;
}

#[tokio::test]
async fn reports_survive_a_restart_and_ids_keep_growing() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let before = simulate(&mut client, "?seed=3", TWO_BURSTS).await;
    let id = before["id"].as_str().unwrap().to_owned();
    server.stop().await;

    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    assert_eq!(get_json(&mut client, &format!("/v1/simulations/{id}")).await, before);
    let after = simulate(&mut client, "", TWO_BURSTS).await;
    assert!(after["id"].as_str().unwrap() > id.as_str(), "{} after {id}", after["id"]);
    server.stop().await;
}

#[tokio::test]
async fn past_the_stored_bound_the_oldest_report_is_dropped() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |config: &mut Config| config.simulations.reports_stored_max = 2).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for seed in 1..=3 {
        ids.push(simulate(&mut client, &format!("?seed={seed}"), TWO_BURSTS).await["id"].as_str().unwrap().to_owned());
    }
    assert_problem(&client.get(&format!("/v1/simulations/{}", ids[0])).await.unwrap(), 404, "NOT_FOUND");

    let page = get_json(&mut client, "/v1/simulations?limit=1").await;
    assert_eq!((page["data"][0]["id"].as_str(), page["has_more"].as_bool()), (Some(ids[2].as_str()), Some(true)));
    assert_eq!(page["data"][0]["seed"], 3);
    assert_eq!(page["data"][0]["scenario"], "two-bursts");
    assert_eq!(page["data"][0]["passed"], true);
    let next = page["next_starting_after"].as_str().expect("a cursor");
    let rest = get_json(&mut client, &format!("/v1/simulations?limit=1&starting_after={next}")).await;
    assert_eq!((rest["data"][0]["id"].as_str(), rest["has_more"].as_bool()), (Some(ids[1].as_str()), Some(false)));
    let bad_limit = client.get("/v1/simulations?limit=101").await.unwrap();
    assert_eq!(assert_problem(&bad_limit, 400, "INVALID_QUERY")["field"], "limit");
    server.stop().await;
}

#[tokio::test]
async fn the_json_body_takes_a_scenario_object_or_toml_text() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;

    let from_object = client.post("/v1/simulations", &json!({"scenario": two_bursts_json(), "seed": 5})).await.unwrap();
    assert_eq!(from_object.status, 201, "{}", from_object.text());
    let from_text = client.post("/v1/simulations", &json!({"scenario_toml": TWO_BURSTS, "seed": 5})).await.unwrap();
    assert_eq!(from_text.status, 201, "{}", from_text.text());
    let from_toml = simulate(&mut client, "?seed=5", TWO_BURSTS).await;
    assert_eq!(from_object.json()["seed"], 5);
    assert_eq!(from_object.json()["report"], from_toml["report"]);
    assert_eq!(from_text.json()["report"], from_toml["report"]);

    let unknown = client.post("/v1/simulations", &json!({"scenario": two_bursts_json(), "sead": 5})).await.unwrap();
    assert_eq!(assert_problem(&unknown, 422, "INVALID_FIELD")["field"], "sead");
    let both = client.post("/v1/simulations", &json!({"scenario": two_bursts_json(), "scenario_toml": TWO_BURSTS})).await.unwrap();
    assert_eq!(assert_problem(&both, 422, "INVALID_FIELD")["field"], "scenario");
    let neither = client.post("/v1/simulations", &json!({"seed": 5})).await.unwrap();
    assert_eq!(assert_problem(&neither, 422, "INVALID_FIELD")["field"], "scenario");
    server.stop().await;
}

#[tokio::test]
async fn a_bad_scenario_is_422_naming_where() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;

    // An unknown key on line 5.
    let typo = TWO_BURSTS.replace("reserved = {", "reserverd = {");
    let problem = assert_problem(&post_toml(&mut client, "", &typo).await, 422, "INVALID_SCENARIO");
    assert_eq!((problem["line"].as_u64(), problem["field"].as_str()), (Some(5), Some("pools.standard_voice.reserverd")), "{problem}");
    assert!(problem["detail"].as_str().unwrap().starts_with("request body:5:1: unknown field `reserverd`"), "{problem}");
    assert!(problem["reason"].as_str().unwrap().starts_with("unknown field `reserverd`"), "{problem}");

    let zero = TWO_BURSTS.replace("capacity = 5", "capacity = 0");
    let problem = assert_problem(&post_toml(&mut client, "", &zero).await, 422, "INVALID_SCENARIO");
    assert_eq!((problem["line"].as_u64(), problem["field"].as_str()), (Some(4), Some("pools.standard_voice.capacity")), "{problem}");

    // A check across fields (a burst for a group that does not exist) names its path too.
    let no_group = TWO_BURSTS.replace(r#"group = "pro", tenant = 1"#, r#"group = "basic", tenant = 1"#);
    let problem = assert_problem(&post_toml(&mut client, "", &no_group).await, 422, "INVALID_SCENARIO");
    assert!(problem["field"].as_str().is_some_and(|f| f.starts_with("events[1].burst")), "{problem}");
    assert!(problem["line"].is_u64(), "{problem}");

    let mut zero_json = two_bursts_json();
    zero_json["pools"]["standard_voice"]["capacity"] = json!(0);
    let problem = assert_problem(&client.post("/v1/simulations", &json!({"scenario": zero_json})).await.unwrap(), 422, "INVALID_SCENARIO");
    assert_eq!(problem["field"], "scenario.pools.standard_voice.capacity", "{problem}");

    let mut typo_json = two_bursts_json();
    typo_json["groups"][0]["cont"] = json!(2);
    let problem = assert_problem(&client.post("/v1/simulations", &json!({"scenario": typo_json})).await.unwrap(), 422, "INVALID_SCENARIO");
    assert_eq!(problem["field"], "scenario.groups[0].cont", "{problem}");
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_are_4xx_problems() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;

    assert_problem(&post_toml(&mut client, "?seed=seven", TWO_BURSTS).await, 400, "INVALID_QUERY");
    assert_problem(&post_toml(&mut client, "?seed=-1", TWO_BURSTS).await, 400, "INVALID_QUERY");
    let twice = client.send("POST", "/v1/simulations?seed=1", Some(&json!({"scenario_toml": TWO_BURSTS, "seed": 2})), &[]).await.unwrap();
    assert_eq!(assert_problem(&twice, 422, "INVALID_FIELD")["field"], "seed");
    let bad_seed = client.post("/v1/simulations", &json!({"scenario_toml": TWO_BURSTS, "seed": "seven"})).await.unwrap();
    assert_eq!(assert_problem(&bad_seed, 422, "INVALID_FIELD")["field"], "seed");

    let yaml =
        client.send_raw("POST", "/v1/simulations", TWO_BURSTS.as_bytes().to_vec(), &[("content-type", "application/yaml")]).await.unwrap();
    assert_problem(&yaml, 415, "UNSUPPORTED_MEDIA_TYPE");
    let huge = format!("{TWO_BURSTS}\n# {}\n", "x".repeat(70 * 1024));
    assert_problem(&post_toml(&mut client, "", &huge).await, 413, "BODY_TOO_LARGE");

    let mut anonymous = Client::connect(server.running.address, None).await.unwrap();
    let headers = [("content-type", "application/toml")];
    let refused = anonymous.send_raw("POST", "/v1/simulations", TWO_BURSTS.as_bytes().to_vec(), &headers).await.unwrap();
    assert_problem(&refused, 401, "UNAUTHORIZED");
    assert_problem(&anonymous.get("/v1/simulations").await.unwrap(), 401, "UNAUTHORIZED");
    assert_eq!(get_json(&mut client, "/v1/simulations").await["data"], json!([]), "nothing was stored");
    server.stop().await;
}

#[tokio::test]
async fn a_scenario_past_the_size_bounds_is_refused_before_it_runs() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let huge = r#"name = "huge"
duration = "7d"
[pools.standard_voice]
capacity = 5
[[groups]]
name = "everyone"
count = 100000
plan = "PRO"
traffic = { calls_per_hour = 100000 }
"#;
    let problem = assert_problem(&post_toml(&mut client, "", huge).await, 422, "SIMULATION_TOO_LARGE");
    assert_eq!(problem["calls_per_run_max"], 2_000_000);
    assert!(problem["expected_calls"].as_u64().unwrap() > 1_000_000_000_000, "{problem}");

    // No calls at all, but 101,000 tenants and lines to create: the memory bound.
    let crowded = "name = \"crowded\"\nduration = \"1m\"\n[pools.standard_voice]\ncapacity = 5\n\
                   [[groups]]\nname = \"many\"\ncount = 1000\nplan = \"PRO\"\nlines = 100\n";
    let problem = assert_problem(&post_toml(&mut client, "", crowded).await, 422, "SIMULATION_TOO_LARGE");
    assert_eq!((problem["tenants_and_lines"].as_u64(), problem["tenants_and_lines_per_run_max"].as_u64()), (Some(101_000), Some(50_000)));
    assert_eq!(get_json(&mut client, "/v1/simulations").await["data"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn a_run_past_the_wall_time_bound_is_503_with_retry_after() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |config: &mut Config| config.simulations.wall_time_ms_max = 1).await;
    let mut client = server.client().await;
    // About 3,000 calls: far more work than a millisecond of wall time.
    let busy = r#"name = "busy"
duration = "1h"
[pools.standard_voice]
capacity = 50
[[groups]]
name = "pro"
count = 30
plan = "PRO"
traffic = { calls_per_hour = 100 }
"#;
    let response = post_toml(&mut client, "", busy).await;
    let problem = assert_problem(&response, 503, "SIMULATION_TIMEOUT");
    assert_eq!((problem["wall_time_ms_max"].as_u64(), response.header("retry-after")), (Some(1), Some("1")));
    assert_eq!(get_json(&mut client, "/v1/simulations").await["data"], json!([]));
    server.stop().await;
}

/// Posts `long` in a task of its own and waits (bounded) until it holds the run slot, which
/// is when a second run is refused: returns its task, a client, and that refusal.
async fn start_long_run(server: &TestServer, long: &'static str) -> (tokio::task::JoinHandle<Response>, Client, Response) {
    let mut first_client = server.client().await;
    let first = tokio::spawn(async move { post_toml(&mut first_client, "", long).await });
    let mut client = server.client().await;
    for _ in 0..100 {
        let response = post_toml(&mut client, "", TWO_BURSTS).await;
        if response.status == 503 {
            return (first, client, response);
        }
        assert_eq!(response.status, 201, "before the long run starts, a run may still go: {}", response.text());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the long run never held the slot");
}

#[tokio::test]
async fn a_second_run_while_one_runs_is_503_busy_at_once_and_the_slot_frees_after() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |config: &mut Config| config.simulations.wall_time_ms_max = 3_000).await;
    // Hundreds of thousands of calls: it holds the only run slot until its wall-time bound.
    let heavy = r#"name = "heavy"
duration = "2h"
[pools.standard_voice]
capacity = 500
[[groups]]
name = "pro"
count = 300
plan = "PRO"
traffic = { calls_per_hour = 1000 }
"#;
    let (first, mut client, busy) = start_long_run(&server, heavy).await;
    let problem = assert_problem(&busy, 503, "SIMULATIONS_BUSY");
    assert_eq!((problem["runs_concurrent_max"].as_u64(), busy.header("retry-after")), (Some(1), Some("5")));
    let first = first.await.expect("the first request");
    assert_problem(&first, 503, "SIMULATION_TIMEOUT");
    // The slot is free again once the first run has stopped.
    simulate(&mut client, "", TWO_BURSTS).await;
    server.stop().await;
}

#[tokio::test]
async fn a_run_whose_client_went_away_is_stored_before_the_server_stops() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    // About 15,000 calls: seconds of work, so it is still running when the client leaves.
    let medium = r#"name = "medium"
duration = "1h"
[pools.standard_voice]
capacity = 200
[[groups]]
name = "pro"
count = 50
plan = "PRO"
traffic = { calls_per_hour = 300 }
"#;
    let (first, _, _) = start_long_run(&server, medium).await;
    first.abort();
    server.stop().await;

    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let listed = get_json(&mut client, "/v1/simulations").await;
    let names: Vec<&str> = listed["data"].as_array().expect("a list").iter().filter_map(|s| s["scenario"].as_str()).collect();
    assert!(names.contains(&"medium"), "the run finished and was stored before the stop: {listed}");
    server.stop().await;
}

#[tokio::test]
async fn unknown_simulations_are_404() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    for path in
        ["/v1/simulations/sim_999999999999", "/v1/simulations/nope", "/v1/simulations/sim_1", "/v1/simulations/sim_999999999999/chart.svg"]
    {
        assert_problem(&client.get(path).await.unwrap(), 404, "NOT_FOUND");
    }
    server.stop().await;
}
