//! Premium voices (seed 004) over real HTTP and a real journal: global feature flags and the
//! per-tenant overrides that beat them, add-ons, the `canUseFeature` answer with seed 004's exact
//! reasons (including a trial that ends by the service clock while the test watches), premium
//! admission with every fallback reason and the refusals without fallback, usage metering (cost
//! per pool, monthly totals, the add-on's 80 % / 95 % / 100 % alerts counted once per crossing),
//! bad input that names its field and journals nothing, and all of it surviving a restart.
//!
//! The two tests at the end are regressions for bugs these tests found (see their docs).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{Value, json};
use switchboard::client::{Client, Response};
use switchboard::http::validate::{parse_rfc3339, rfc3339};

const PREMIUM: &str = "premium_voices";
const PREMIUM_POOL: &str = "premium_voice";
const STANDARD_POOL: &str = "standard_voice";

async fn put(client: &mut Client, path: &str, body: &Value) -> Response {
    client.send("PUT", path, Some(body), &[]).await.expect("request")
}

async fn delete(client: &mut Client, path: &str) -> Response {
    client.send("DELETE", path, None, &[]).await.expect("request")
}

async fn set_flag(client: &mut Client, name: &str, enabled: bool) {
    let response = put(client, &format!("/v1/flags/{name}"), &json!({"enabled": enabled})).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), json!({"object": "flag", "name": name, "enabled": enabled}));
}

/// Sets a tenant override; returns the tenant.
async fn set_override(client: &mut Client, tenant: &str, name: &str, enabled: bool) -> Value {
    let response = put(client, &format!("/v1/tenants/{tenant}/flags/{name}"), &json!({"enabled": enabled})).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// Sets an add-on; returns it.
async fn set_addon(client: &mut Client, tenant: &str, addon_type: &str, body: Value) -> Value {
    let response = put(client, &format!("/v1/tenants/{tenant}/addons/{addon_type}"), &body).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let addon = response.json();
    assert_eq!((addon["object"].as_str(), addon["type"].as_str()), (Some("addon"), Some(addon_type)));
    addon
}

/// `canUseFeature` as `(allowed, reason, requires_upgrade)`.
async fn feature(client: &mut Client, tenant: &str, name: &str) -> (bool, String, bool) {
    let answer = get_json(client, &format!("/v1/tenants/{tenant}/features/{name}")).await;
    assert_eq!(
        (answer["object"].as_str(), answer["tenant_id"].as_str(), answer["name"].as_str()),
        (Some("feature"), Some(tenant), Some(name))
    );
    (answer["allowed"].as_bool().unwrap(), answer["reason"].as_str().unwrap().to_owned(), answer["requires_upgrade"].as_bool().unwrap())
}

fn allowed() -> (bool, String, bool) {
    (true, "Active subscription".to_owned(), false)
}

fn not_available() -> (bool, String, bool) {
    (false, "Feature not available".to_owned(), false)
}

fn subscription_required() -> (bool, String, bool) {
    (false, "Subscription required".to_owned(), true)
}

/// A premium-voice outbound call; `fallback: None` leaves the field out (default true).
async fn premium_call(client: &mut Client, tenant: &str, fallback: Option<bool>) -> Response {
    let mut body = json!({"tenant_id": tenant, "direction": "outbound", "voice": "premium"});
    if let Some(fallback) = fallback {
        body["fallback"] = fallback.into();
    }
    admit(client, body).await
}

/// Admits a call that must be created; returns it.
async fn admitted(response: Response) -> Value {
    assert_eq!(response.status, 201, "{}", response.text());
    response.json()
}

/// `(pool, fell_back, fallback_reason)` of an admitted call.
fn placement(call: &Value) -> (&str, bool, Option<&str>) {
    (call["pool"].as_str().unwrap(), call["fell_back"].as_bool().unwrap(), call["fallback_reason"].as_str())
}

fn id_of(call: &Value) -> String {
    call["call_id"].as_str().unwrap().to_owned()
}

/// Ends a call reporting characters and seconds; returns the ended call.
async fn end_with(client: &mut Client, call_id: &str, characters: u64, duration_s: u64) -> Value {
    let body = json!({"characters": characters, "duration_s": duration_s});
    let response = client.post(&format!("/v1/calls/{call_id}/end"), &body).await.expect("request");
    assert_eq!(response.status, 200, "{}", response.text());
    let ended = response.json();
    assert_eq!((ended["status"].as_str(), ended["characters"].as_u64()), (Some("ended"), Some(characters)));
    ended
}

/// `YYYY-MM` of an ended call (usage is booked in the month the call ended).
fn month_of(ended: &Value) -> String {
    ended["ended_at"].as_str().unwrap()[..7].to_owned()
}

fn totals(calls: u64, seconds: u64, characters: u64, cost_cents: u64) -> Value {
    json!({"calls": calls, "seconds": seconds, "characters": characters, "cost_cents": cost_cents})
}

/// A counter's value in the `/metrics` text (0 when the series does not exist yet).
fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

async fn metrics(client: &mut Client) -> String {
    let response = client.get("/metrics").await.expect("request");
    assert_eq!(response.status, 200);
    response.text()
}

fn fallbacks(metrics: &str, reason: &str) -> u64 {
    counter(metrics, &format!("switchboard_premium_fallbacks_total{{reason=\"{reason}\"}}"))
}

/// `(warning, critical, exceeded)` usage alerts counted so far.
fn usage_alerts(metrics: &str) -> (u64, u64, u64) {
    let level = |level: &str| counter(metrics, &format!("switchboard_usage_alerts_total{{level=\"{level}\"}}"));
    (level("warning"), level("critical"), level("exceeded"))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

/// Usage is booked by the month a call ends in (UTC). A test that adds several calls up waits
/// out the last minute of a month rather than straddle two.
async fn away_from_a_month_boundary() {
    let now = now_ms();
    let today = rfc3339(now);
    let (year, month): (u64, u64) = (today[..4].parse().unwrap(), today[5..7].parse().unwrap());
    let (year, month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    let next_month_ms = parse_rfc3339("next", &format!("{year:04}-{month:02}-01T00:00:00Z")).expect("a valid instant");
    let left_ms = next_month_ms - now;
    if left_ms < 60_000 {
        tokio::time::sleep(Duration::from_millis(left_ms + 1_000)).await;
    }
}

async fn last_seq(server: &TestServer) -> u64 {
    server.system.inspect(|d| d.last_seq).await.expect("inspect the journal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_resolve_tenant_override_first_then_global_and_a_missing_flag_is_off() {
    let dir = temp_dir();
    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "acme", "PRO", None).await;
    create_tenant(&mut client, "globex", "PRO", None).await;
    assert_eq!(get_json(&mut client, "/v1/flags").await, json!({"object": "list", "data": []}));
    // No add-on anywhere: "Subscription required" says the flag is on, "Feature not available" off.
    assert_eq!(feature(&mut client, "acme", PREMIUM).await, not_available(), "a flag that does not exist is off");

    set_flag(&mut client, PREMIUM, true).await;
    set_flag(&mut client, "beta_dashboard", false).await;
    let listed = get_json(&mut client, "/v1/flags").await;
    assert_eq!(
        listed["data"],
        json!([
            {"object": "flag", "name": "beta_dashboard", "enabled": false},
            {"object": "flag", "name": PREMIUM, "enabled": true},
        ])
    );
    assert_eq!(feature(&mut client, "acme", PREMIUM).await, subscription_required(), "global on");
    assert_eq!(feature(&mut client, "acme", "beta_dashboard").await, not_available(), "global off");

    // An override beats the global value, both ways, for its tenant only.
    let acme = set_override(&mut client, "acme", PREMIUM, false).await;
    assert_eq!((acme["object"].as_str(), acme["id"].as_str()), (Some("tenant"), Some("acme")));
    assert_eq!(acme["flags"], json!({PREMIUM: false}));
    assert_eq!(acme["addons"], json!({}));
    assert_eq!(acme["class"], "priority");
    let acme = set_override(&mut client, "acme", "beta_dashboard", true).await;
    assert_eq!(acme["flags"], json!({PREMIUM: false, "beta_dashboard": true}));
    assert_eq!(feature(&mut client, "acme", PREMIUM).await, not_available(), "override off beats global on");
    assert_eq!(feature(&mut client, "acme", "beta_dashboard").await, subscription_required(), "override on beats global off");
    assert_eq!(feature(&mut client, "globex", PREMIUM).await, subscription_required(), "globex has no override");
    assert_eq!(feature(&mut client, "globex", "beta_dashboard").await, not_available());

    // Flipping the global flag moves tenants without an override only.
    set_flag(&mut client, PREMIUM, false).await;
    set_flag(&mut client, "beta_dashboard", true).await;
    assert_eq!(get_json(&mut client, "/v1/flags").await["data"].as_array().unwrap().len(), 2, "a PUT changes, never duplicates");
    assert_eq!(feature(&mut client, "globex", PREMIUM).await, not_available());
    assert_eq!(feature(&mut client, "globex", "beta_dashboard").await, subscription_required());
    assert_eq!(feature(&mut client, "acme", PREMIUM).await, not_available());
    set_override(&mut client, "acme", PREMIUM, true).await;
    assert_eq!(feature(&mut client, "acme", PREMIUM).await, subscription_required(), "override on beats global off");

    // DELETE drops the override: the global value applies again.
    let deleted = delete(&mut client, &format!("/v1/tenants/acme/flags/{PREMIUM}")).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json()["flags"], json!({"beta_dashboard": true}));
    assert_eq!(feature(&mut client, "acme", PREMIUM).await, not_available(), "back to the global value (off)");
    let deleted = delete(&mut client, "/v1/tenants/acme/flags/beta_dashboard").await;
    assert_eq!(deleted.json()["flags"], json!({}));
    assert_eq!(feature(&mut client, "acme", "beta_dashboard").await, subscription_required(), "back to the global value (on)");
    assert_eq!(get_json(&mut client, "/v1/tenants/acme").await["flags"], json!({}));

    // An override needs the global flag to exist; refusing it changes nothing.
    let seq = last_seq(&server).await;
    let missing = put(&mut client, "/v1/tenants/acme/flags/no_such_flag", &json!({"enabled": true})).await;
    let problem = assert_problem(&missing, 404, "FLAG_NOT_FOUND");
    assert_eq!(problem["field"], "name");
    assert_problem(&put(&mut client, &format!("/v1/tenants/nobody/flags/{PREMIUM}"), &json!({"enabled": true})).await, 404, "NOT_FOUND");
    assert_problem(&delete(&mut client, &format!("/v1/tenants/nobody/flags/{PREMIUM}")).await, 404, "NOT_FOUND");
    assert_eq!(last_seq(&server).await, seq, "refused overrides journaled something");
    assert_eq!(get_json(&mut client, "/v1/tenants/acme").await["flags"], json!({}));
    assert_eq!(feature(&mut client, "acme", "no_such_flag").await, not_available());
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

/// Seed 004 milestone 6 (`FeatureFlagService` tests) and `hasActiveSubscription`, over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_use_feature_follows_seed_004_for_every_flag_and_subscription_state() {
    let dir = temp_dir();
    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    let paid = json!({"status": "active", "billing_status": "paid"});

    // "respects organization override": global off, override on, paid add-on → allowed.
    set_flag(&mut client, PREMIUM, false).await;
    create_tenant(&mut client, "org-override", "PRO", None).await;
    set_addon(&mut client, "org-override", PREMIUM, paid.clone()).await;
    assert_eq!(feature(&mut client, "org-override", PREMIUM).await, not_available(), "paid, but the flag is off");
    set_override(&mut client, "org-override", PREMIUM, true).await;
    assert_eq!(feature(&mut client, "org-override", PREMIUM).await, allowed());

    // "falls back to global when no override".
    create_tenant(&mut client, "org-global", "PRO", None).await;
    set_addon(&mut client, "org-global", PREMIUM, paid.clone()).await;
    assert_eq!(feature(&mut client, "org-global", PREMIUM).await, not_available());
    set_flag(&mut client, PREMIUM, true).await;
    assert_eq!(feature(&mut client, "org-global", PREMIUM).await, allowed());
    set_override(&mut client, "org-global", PREMIUM, false).await;
    assert_eq!(feature(&mut client, "org-global", PREMIUM).await, not_available(), "an override off beats a paid add-on too");

    // "requires active subscription": flag on, then each add-on state.
    let future = "2099-12-31T23:59:59Z";
    let active = |billing: &str| json!({"status": "active", "billing_status": billing});
    let trial_until = |ends: &str| json!({"status": "active", "billing_status": "trial", "trial_ends_at": ends});
    let cases = [
        ("no-addon", PREMIUM, None, subscription_required()),
        ("expired-trial", PREMIUM, Some(trial_until("2020-01-01T00:00:00Z")), subscription_required()),
        ("future-trial", PREMIUM, Some(trial_until(future)), allowed()),
        ("trial-no-end", PREMIUM, Some(active("trial")), subscription_required()),
        ("paid", PREMIUM, Some(active("paid")), allowed()),
        ("overdue", PREMIUM, Some(active("overdue")), subscription_required()),
        ("suspended", PREMIUM, Some(json!({"status": "suspended", "billing_status": "paid"})), subscription_required()),
        ("cancelled", PREMIUM, Some(json!({"status": "cancelled", "billing_status": "paid"})), subscription_required()),
        (
            "cancelled-trial",
            PREMIUM,
            Some(json!({"status": "cancelled", "billing_status": "trial", "trial_ends_at": future})),
            subscription_required(),
        ),
        // The add-on that counts is the feature's own type.
        ("other-addon", "advanced_analytics", Some(active("paid")), subscription_required()),
    ];
    for (tenant, addon_type, addon, expected) in cases {
        create_tenant(&mut client, tenant, "PRO", None).await;
        if let Some(addon) = addon {
            let stored = set_addon(&mut client, tenant, addon_type, addon.clone()).await;
            assert_eq!((&stored["status"], &stored["billing_status"]), (&addon["status"], &addon["billing_status"]), "{tenant}");
        }
        assert_eq!(feature(&mut client, tenant, PREMIUM).await, expected, "{tenant}");
    }
    let trial = get_json(&mut client, "/v1/tenants/future-trial").await["addons"][PREMIUM].clone();
    assert_eq!(trial["trial_ends_at"], "2099-12-31T23:59:59.000Z");
    assert_eq!(trial["monthly_character_limit"], Value::Null);

    // Changing an add-on changes the answer at once: reactivate the suspended one.
    set_addon(&mut client, "suspended", PREMIUM, paid.clone()).await;
    assert_eq!(feature(&mut client, "suspended", PREMIUM).await, allowed());

    // A trial ends by the service clock: allowed now, "Subscription required" once it is past,
    // and a premium call then falls back for that reason.
    create_tenant(&mut client, "ending-trial", "ENTERPRISE", None).await;
    let ends_at_ms = now_ms() + 3_000;
    let body = json!({"status": "active", "billing_status": "trial", "trial_ends_at": rfc3339(ends_at_ms)});
    set_addon(&mut client, "ending-trial", PREMIUM, body).await;
    assert_eq!(feature(&mut client, "ending-trial", PREMIUM).await, allowed(), "the trial has not ended yet");
    let deadline = Instant::now() + Duration::from_secs(10);
    while feature(&mut client, "ending-trial", PREMIUM).await.0 {
        assert!(Instant::now() < deadline, "the trial never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(now_ms() >= ends_at_ms, "the trial ended before its trial_ends_at");
    assert_eq!(feature(&mut client, "ending-trial", PREMIUM).await, subscription_required());
    let call = admitted(premium_call(&mut client, "ending-trial", None).await).await;
    assert_eq!(placement(&call), (STANDARD_POOL, true, Some("subscription_required")));

    assert_problem(&client.get(&format!("/v1/tenants/nobody/features/{PREMIUM}")).await.unwrap(), 404, "NOT_FOUND");
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn premium_calls_take_the_premium_pool_or_fall_back_with_a_reason_or_are_refused() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    // ENTERPRISE is the top class: no headroom in either pool is reserved above it.
    create_tenant(&mut client, "ent", "ENTERPRISE", Some(20)).await;

    // The flag does not exist: not available, no upgrade helps.
    let call = admitted(premium_call(&mut client, "ent", None).await).await;
    assert_eq!(placement(&call), (STANDARD_POOL, true, Some("feature_not_available")));
    assert_eq!(call["voice"], "premium");
    let refused = assert_problem(&premium_call(&mut client, "ent", Some(false)).await, 403, "PREMIUM_NOT_AVAILABLE");
    assert_eq!(
        (refused["field"].as_str(), refused["reason"].as_str(), refused["requires_upgrade"].as_bool()),
        (Some("voice"), Some("Feature not available"), Some(false))
    );

    // Flag on, no add-on: a subscription would help.
    set_flag(&mut client, PREMIUM, true).await;
    let call = admitted(premium_call(&mut client, "ent", Some(true)).await).await;
    assert_eq!(placement(&call), (STANDARD_POOL, true, Some("subscription_required")));
    let refused = assert_problem(&premium_call(&mut client, "ent", Some(false)).await, 403, "PREMIUM_NOT_AVAILABLE");
    assert_eq!(
        (refused["field"].as_str(), refused["reason"].as_str(), refused["requires_upgrade"].as_bool()),
        (Some("voice"), Some("Subscription required"), Some(true))
    );
    // An expired trial is the same as none (seed 004: "falls back to OpenAI when subscription expired").
    let expired = json!({"status": "active", "billing_status": "trial", "trial_ends_at": "2020-01-01T00:00:00Z"});
    set_addon(&mut client, "ent", PREMIUM, expired).await;
    let refused = assert_problem(&premium_call(&mut client, "ent", Some(false)).await, 403, "PREMIUM_NOT_AVAILABLE");
    assert_eq!(refused["requires_upgrade"], true);

    // Allowed: the premium pool, until it is full.
    set_addon(&mut client, "ent", PREMIUM, json!({"status": "active", "billing_status": "paid"})).await;
    let mut premium_ids = Vec::new();
    for n in 0..5 {
        let call = admitted(premium_call(&mut client, "ent", if n % 2 == 0 { None } else { Some(false) }).await).await;
        assert_eq!(placement(&call), (PREMIUM_POOL, false, None), "premium call {n}");
        premium_ids.push(id_of(&call));
    }
    let standard = admitted(admit(&mut client, json!({"tenant_id": "ent", "direction": "outbound"})).await).await;
    assert_eq!((placement(&standard), standard["voice"].as_str()), ((STANDARD_POOL, false, None), Some("standard")));
    let call = admitted(premium_call(&mut client, "ent", None).await).await;
    assert_eq!(placement(&call), (STANDARD_POOL, true, Some("premium_pool_full")));
    let full = assert_problem(&premium_call(&mut client, "ent", Some(false)).await, 429, "PLATFORM_CAPACITY_FULL");
    assert_eq!((full["pool"].as_str(), full["current_active"].as_u64(), full["limit"].as_u64()), (Some(PREMIUM_POOL), Some(5), Some(5)));

    // The provider rate-limits the premium pool: premium calls fall back, or get 503 without.
    let rejected = client.post(&format!("/v1/calls/{}/provider-rejected", premium_ids[0]), &json!({"retry_after_s": 60})).await.unwrap();
    assert_eq!(rejected.status, 200, "{}", rejected.text());
    assert_eq!((rejected.json()["status"].as_str(), rejected.json()["outcome"].as_str()), (Some("ended"), Some("provider_rejected")));
    let call = admitted(premium_call(&mut client, "ent", None).await).await;
    assert_eq!(placement(&call), (STANDARD_POOL, true, Some("premium_pool_cooldown")));
    let cooling = premium_call(&mut client, "ent", Some(false)).await;
    let problem = assert_problem(&cooling, 503, "PLATFORM_CAPACITY_EXCEEDED");
    assert_eq!(problem["pool"], PREMIUM_POOL);
    let retry_after: u64 = cooling.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let pools = get_json(&mut client, "/v1/platform").await["pools"].clone();
    let premium_pool = pools.as_array().unwrap().iter().find(|p| p["name"] == PREMIUM_POOL).unwrap().clone();
    assert_eq!((premium_pool["in_cooldown"].as_bool(), premium_pool["provider_rejections"].as_u64()), (Some(true), Some(1)));
    assert_eq!(premium_pool["active"], 4);

    // Standard: 4 fallbacks + 1 standard call. Premium: 4. Every refusal released its slots.
    assert_eq!(get_json(&mut client, "/v1/platform").await["active"], 5);
    assert_eq!(get_json(&mut client, "/v1/tenants/ent").await["active_calls"], 9);
    let text = metrics(&mut client).await;
    for reason in ["feature_not_available", "subscription_required", "premium_pool_full", "premium_pool_cooldown"] {
        assert_eq!(fallbacks(&text, reason), 1, "{reason}: {text}");
    }
    for (reason, count) in [("PLATFORM_CAPACITY_FULL", 1), ("PLATFORM_CAPACITY_EXCEEDED", 1)] {
        assert_eq!(counter(&text, &format!("switchboard_admissions_total{{outcome=\"denied\",reason=\"{reason}\"}}")), count, "{text}");
    }
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_metered_per_pool_and_month_and_alerts_once_per_level_crossed() {
    away_from_a_month_boundary().await;
    let dir = temp_dir();
    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    set_flag(&mut client, PREMIUM, true).await;
    create_tenant(&mut client, "bill", "ENTERPRISE", Some(20)).await;
    create_tenant(&mut client, "cap", "ENTERPRISE", Some(20)).await;
    set_addon(&mut client, "bill", PREMIUM, json!({"status": "active", "billing_status": "paid"})).await;
    let addon =
        set_addon(&mut client, "cap", PREMIUM, json!({"status": "active", "billing_status": "paid", "monthly_character_limit": 2000}))
            .await;
    assert_eq!(addon["monthly_character_limit"], 2000);

    // Cost: premium 30 cents per 1000 characters, rounded up per call; standard is free.
    let call = admitted(premium_call(&mut client, "bill", None).await).await;
    let ended = end_with(&mut client, &id_of(&call), 1500, 12).await;
    assert_eq!(
        (ended["pool"].as_str(), ended["cost_cents"].as_u64(), ended["duration_s"].as_u64()),
        (Some(PREMIUM_POOL), Some(45), Some(12))
    );
    let month = month_of(&ended);
    let call = admitted(premium_call(&mut client, "bill", None).await).await;
    assert_eq!(end_with(&mut client, &id_of(&call), 1001, 3).await["cost_cents"], 31, "30.03 cents round up");
    let call = admitted(admit(&mut client, json!({"tenant_id": "bill", "direction": "outbound"})).await).await;
    let ended = end_with(&mut client, &id_of(&call), 1200, 7).await;
    assert_eq!((ended["pool"].as_str(), ended["cost_cents"].as_u64()), (Some(STANDARD_POOL), Some(0)));
    // A call ended without characters costs nothing.
    let call = admitted(premium_call(&mut client, "bill", None).await).await;
    let ended = end(&mut client, &id_of(&call)).await.json();
    assert_eq!((ended["characters"].as_u64(), ended["cost_cents"].as_u64()), (Some(0), Some(0)));
    let seconds = ended["duration_s"].as_u64().unwrap();

    let usage = get_json(&mut client, &format!("/v1/tenants/bill/usage?month={month}")).await;
    assert_eq!(
        (usage["object"].as_str(), usage["tenant_id"].as_str(), usage["month"].as_str()),
        (Some("usage"), Some("bill"), Some(&*month))
    );
    assert_eq!(usage["pools"][PREMIUM_POOL], totals(3, 15 + seconds, 2501, 76));
    assert_eq!(usage["pools"][STANDARD_POOL], totals(1, 7, 1200, 0));
    assert_eq!(usage["total"], totals(4, 22 + seconds, 3701, 76));
    assert_eq!(usage["addons"], json!([]), "an add-on without a monthly limit has nothing to track");
    assert_eq!(get_json(&mut client, "/v1/tenants/bill/usage").await, usage, "the default month is the current one");
    let other = get_json(&mut client, "/v1/tenants/bill/usage?month=2001-01").await;
    assert_eq!(
        other,
        json!({"object": "usage", "tenant_id": "bill", "month": "2001-01", "pools": {}, "total": totals(0, 0, 0, 0), "addons": []})
    );
    assert_eq!(usage_alerts(&metrics(&mut client).await), (0, 0, 0), "no limit, no alert");

    // The add-on's limit of 2000: each step is one premium call; alerts fire on crossing only.
    let steps: [(u64, &str, (u64, u64, u64)); 8] = [
        (1000, "ok", (0, 0, 0)),
        (599, "ok", (0, 0, 0)),
        (1, "warning", (1, 0, 0)),
        (299, "warning", (1, 0, 0)),
        (1, "critical", (1, 1, 0)),
        (99, "critical", (1, 1, 0)),
        (1, "exceeded", (1, 1, 1)),
        (500, "exceeded", (1, 1, 1)),
    ];
    let mut used = 0;
    let mut last_call = String::new();
    for (characters, alert, counted) in steps {
        let call = admitted(premium_call(&mut client, "cap", None).await).await;
        assert_eq!(placement(&call), (PREMIUM_POOL, false, None));
        last_call = id_of(&call);
        let ended = end_with(&mut client, &last_call, characters, 1).await;
        used += characters;
        let usage = get_json(&mut client, &format!("/v1/tenants/cap/usage?month={}", month_of(&ended))).await;
        let tracked = &usage["addons"][0];
        assert_eq!(usage["addons"].as_array().unwrap().len(), 1, "{usage}");
        assert_eq!((tracked["type"].as_str(), tracked["monthly_character_limit"].as_u64()), (Some(PREMIUM), Some(2000)));
        assert_eq!(
            (tracked["characters_used"].as_u64(), tracked["remaining"].as_u64(), tracked["alert"].as_str()),
            (Some(used), Some(2000u64.saturating_sub(used)), Some(alert)),
            "after {used} characters: {usage}"
        );
        assert_eq!(usage["pools"][PREMIUM_POOL]["characters"], used);
        assert_eq!(usage_alerts(&metrics(&mut client).await), counted, "after {used} characters");
        if let Some(percent) = [(1000, 50.0), (1600, 80.0), (1900, 95.0), (2000, 100.0), (2500, 125.0)].iter().find(|(u, _)| *u == used) {
            assert_eq!(tracked["percent_used"].as_f64(), Some(percent.1), "after {used} characters");
        }
    }

    // Standard-voice characters do not count against the premium add-on; a duplicate end
    // (a retried webhook) counts nothing twice.
    let call = admitted(admit(&mut client, json!({"tenant_id": "cap", "direction": "outbound"})).await).await;
    end_with(&mut client, &id_of(&call), 5000, 1).await;
    let again = client.post(&format!("/v1/calls/{last_call}/end"), &json!({"characters": 9999})).await.unwrap();
    assert_eq!((again.status, again.json()["characters"].as_u64()), (200, Some(500)));
    let usage = get_json(&mut client, &format!("/v1/tenants/cap/usage?month={month}")).await;
    assert_eq!(usage["addons"][0]["characters_used"], 2500);
    assert_eq!(usage["pools"][STANDARD_POOL], totals(1, 1, 5000, 0));
    // Rounded up per call: 30 + 18 + 1 + 9 + 1 + 3 + 1 + 15, not 2500 × 0.03 = 75.
    assert_eq!(usage["pools"][PREMIUM_POOL], totals(8, 8, 2500, 78));
    assert_eq!(usage_alerts(&metrics(&mut client).await), (1, 1, 1));
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flag_addon_usage_and_call_input_names_the_field_and_journals_nothing() {
    let dir = temp_dir();
    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    set_flag(&mut client, PREMIUM, true).await;
    create_tenant(&mut client, "acme", "ENTERPRISE", Some(20)).await;
    set_addon(&mut client, "acme", PREMIUM, json!({"status": "active", "billing_status": "paid", "monthly_character_limit": 1000})).await;
    let live = id_of(&admitted(premium_call(&mut client, "acme", None).await).await);
    let seq = last_seq(&server).await;
    let before = snapshot(&mut client).await;

    let addon = "/v1/tenants/acme/addons/premium_voices";
    let long_name = "a".repeat(65);
    let cases: Vec<(&str, String, Option<Value>, &str)> = vec![
        ("PUT", addon.into(), Some(json!({"status": "paused", "billing_status": "paid"})), "status"),
        ("PUT", addon.into(), Some(json!({"status": "ACTIVE", "billing_status": "paid"})), "status"),
        ("PUT", addon.into(), Some(json!({"billing_status": "paid"})), "status"),
        ("PUT", addon.into(), Some(json!({"status": "active", "billing_status": "free"})), "billing_status"),
        ("PUT", addon.into(), Some(json!({"status": "active", "billing_status": null})), "billing_status"),
        ("PUT", addon.into(), Some(json!({"status": "active", "billing_status": "trial", "trial_ends_at": "next week"})), "trial_ends_at"),
        (
            "PUT",
            addon.into(),
            Some(json!({"status": "active", "billing_status": "trial", "trial_ends_at": "2027-02-30T00:00:00Z"})),
            "trial_ends_at",
        ),
        (
            "PUT",
            addon.into(),
            Some(json!({"status": "active", "billing_status": "trial", "trial_ends_at": "1969-12-31T23:59:59Z"})),
            "trial_ends_at",
        ),
        (
            "PUT",
            addon.into(),
            Some(json!({"status": "active", "billing_status": "trial", "trial_ends_at": 1_800_000_000})),
            "trial_ends_at",
        ),
        (
            "PUT",
            addon.into(),
            Some(json!({"status": "active", "billing_status": "paid", "monthly_character_limit": -1})),
            "monthly_character_limit",
        ),
        (
            "PUT",
            addon.into(),
            Some(json!({"status": "active", "billing_status": "paid", "monthly_character_limit": 1.5})),
            "monthly_character_limit",
        ),
        (
            "PUT",
            addon.into(),
            Some(json!({"status": "active", "billing_status": "paid", "monthly_character_limit": "lots"})),
            "monthly_character_limit",
        ),
        (
            "PUT",
            addon.into(),
            Some(json!({"status": "active", "billing_status": "paid", "monthly_character_limit": 1_000_000_000_001u64})),
            "monthly_character_limit",
        ),
        ("PUT", addon.into(), Some(json!({"status": "active", "billing_status": "paid", "limit": 5})), "limit"),
        ("PUT", "/v1/tenants/acme/addons/Premium".into(), Some(json!({"status": "active", "billing_status": "paid"})), "type"),
        ("PUT", "/v1/flags/Premium_Voices".into(), Some(json!({"enabled": true})), "name"),
        ("PUT", "/v1/flags/premium-voices".into(), Some(json!({"enabled": true})), "name"),
        ("PUT", format!("/v1/flags/{long_name}"), Some(json!({"enabled": true})), "name"),
        ("PUT", format!("/v1/flags/{PREMIUM}"), Some(json!({"enabled": "yes"})), "enabled"),
        ("PUT", format!("/v1/flags/{PREMIUM}"), Some(json!({"enabled": 0})), "enabled"),
        ("PUT", format!("/v1/flags/{PREMIUM}"), Some(json!({"enabled": null})), "enabled"),
        ("PUT", format!("/v1/flags/{PREMIUM}"), Some(json!({})), "enabled"),
        ("PUT", format!("/v1/flags/{PREMIUM}"), Some(json!({"enabled": false, "global": true})), "global"),
        ("PUT", "/v1/tenants/acme/flags/Premium_Voices".into(), Some(json!({"enabled": true})), "name"),
        ("PUT", format!("/v1/tenants/acme/flags/{long_name}"), Some(json!({"enabled": true})), "name"),
        ("PUT", format!("/v1/tenants/acme/flags/{PREMIUM}"), Some(json!({"enabled": "yes"})), "enabled"),
        ("DELETE", "/v1/tenants/acme/flags/Premium_Voices".into(), None, "name"),
        ("GET", "/v1/tenants/acme/features/Premium_Voices".into(), None, "name"),
        ("POST", "/v1/calls".into(), Some(json!({"tenant_id": "acme", "direction": "outbound", "voice": "ultra"})), "voice"),
        (
            "POST",
            "/v1/calls".into(),
            Some(json!({"tenant_id": "acme", "direction": "outbound", "voice": "premium", "fallback": "no"})),
            "fallback",
        ),
        ("POST", format!("/v1/calls/{live}/end"), Some(json!({"characters": -1})), "characters"),
        ("POST", format!("/v1/calls/{live}/end"), Some(json!({"characters": "many"})), "characters"),
        ("POST", format!("/v1/calls/{live}/end"), Some(json!({"characters": 1_000_000_001u64})), "characters"),
    ];
    for (method, path, body, field) in &cases {
        let response = client.send(method, path, body.as_ref(), &[]).await.expect("request");
        let problem = assert_problem(&response, 422, "INVALID_FIELD");
        assert_eq!(problem["field"], *field, "{method} {path} {body:?}: {problem}");
    }
    for month in ["2026-13", "2026-00", "2026-1", "26-01", "2026/01", "abcd-ef", "2026-01-01", "1969-12", "", "+026-01"] {
        let path = format!("/v1/tenants/acme/usage?month={month}");
        let problem = assert_problem(&client.get(&path).await.unwrap(), 400, "INVALID_QUERY");
        assert_eq!(problem["field"], "month", "{path}: {problem}");
    }
    assert_problem(&client.get("/v1/tenants/acme/usage?months=2026-01").await.unwrap(), 400, "INVALID_QUERY");

    // Well-formed requests about things that do not exist change nothing either.
    let paid = json!({"status": "active", "billing_status": "paid"});
    assert_problem(&put(&mut client, &format!("/v1/tenants/nobody/addons/{PREMIUM}"), &paid).await, 404, "NOT_FOUND");
    assert_problem(&client.get("/v1/tenants/nobody/usage").await.unwrap(), 404, "NOT_FOUND");
    assert_problem(&client.get(&format!("/v1/tenants/nobody/features/{PREMIUM}")).await.unwrap(), 404, "NOT_FOUND");
    let missing =
        assert_problem(&put(&mut client, "/v1/tenants/acme/flags/no_such_flag", &json!({"enabled": true})).await, 404, "FLAG_NOT_FOUND");
    assert_eq!(missing["field"], "name");

    assert_eq!(last_seq(&server).await, seq, "bad requests appended journal events");
    assert_eq!(snapshot(&mut client).await, before);
    assert_eq!(get_json(&mut client, &format!("/v1/calls/{live}")).await["status"], "active", "a bad end did not end the call");
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

/// What the bad requests could have changed, through the API.
async fn snapshot(client: &mut Client) -> Vec<Value> {
    let mut seen = Vec::new();
    for path in ["/v1/flags", "/v1/tenants/acme", "/v1/tenants/acme/usage", "/v1/calls", "/v1/platform"] {
        seen.push(get_json(client, path).await);
    }
    seen.push(get_json(client, &format!("/v1/tenants/acme/features/{PREMIUM}")).await);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_overrides_addons_and_usage_survive_a_restart() {
    away_from_a_month_boundary().await;
    let dir = temp_dir();
    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    set_flag(&mut client, PREMIUM, true).await;
    set_flag(&mut client, "beta_dashboard", false).await;
    create_tenant(&mut client, "paying", "ENTERPRISE", Some(20)).await;
    create_tenant(&mut client, "opted-out", "ENTERPRISE", Some(20)).await;
    set_override(&mut client, "paying", "beta_dashboard", true).await;
    set_override(&mut client, "opted-out", PREMIUM, false).await;
    let limit = json!({"status": "active", "billing_status": "paid", "monthly_character_limit": 2000});
    set_addon(&mut client, "paying", PREMIUM, limit).await;
    let trial = json!({"status": "active", "billing_status": "trial", "trial_ends_at": "2099-01-01T00:00:00Z"});
    set_addon(&mut client, "opted-out", PREMIUM, trial).await;
    set_addon(&mut client, "opted-out", "beta_dashboard", json!({"status": "suspended", "billing_status": "overdue"})).await;

    let call = admitted(premium_call(&mut client, "paying", None).await).await;
    let ended = end_with(&mut client, &id_of(&call), 1700, 20).await;
    let month = month_of(&ended);
    let call = admitted(admit(&mut client, json!({"tenant_id": "paying", "direction": "outbound"})).await).await;
    end_with(&mut client, &id_of(&call), 300, 5).await;
    let fell_back = admitted(premium_call(&mut client, "opted-out", None).await).await;
    assert_eq!(placement(&fell_back), (STANDARD_POOL, true, Some("feature_not_available")));
    let live = id_of(&admitted(premium_call(&mut client, "paying", None).await).await);

    let paths = [
        "/v1/flags".to_owned(),
        "/v1/tenants/paying".to_owned(),
        "/v1/tenants/opted-out".to_owned(),
        format!("/v1/tenants/paying/usage?month={month}"),
        format!("/v1/tenants/opted-out/usage?month={month}"),
        format!("/v1/tenants/paying/features/{PREMIUM}"),
        "/v1/tenants/paying/features/beta_dashboard".to_owned(),
        format!("/v1/tenants/opted-out/features/{PREMIUM}"),
        "/v1/tenants/opted-out/features/beta_dashboard".to_owned(),
        format!("/v1/calls/{live}"),
    ];
    let mut before = Vec::new();
    for path in &paths {
        before.push(get_json(&mut client, path).await);
    }
    assert_eq!(before[3]["addons"][0]["alert"], "warning", "1700 of 2000");
    assert_eq!((before[5]["allowed"].as_bool(), before[6]["allowed"].as_bool()), (Some(true), Some(false)));
    let seq = last_seq(&server).await;
    assert_live_equals_durable(&server.system).await;
    drop(client);
    server.stop().await;

    let server = start_in(dir.path(), no_reservations).await;
    let mut client = server.client().await;
    assert_eq!(last_seq(&server).await, seq, "the restart replayed everything and appended nothing");
    for (path, before) in paths.iter().zip(&before) {
        assert_eq!(&get_json(&mut client, path).await, before, "{path} after the restart");
    }
    assert_live_equals_durable(&server.system).await;

    // The replayed state keeps working: routing follows the replayed flags and add-ons, and
    // the call that was live across the restart is metered into the same month.
    let call = admitted(premium_call(&mut client, "opted-out", None).await).await;
    assert_eq!(placement(&call), (STANDARD_POOL, true, Some("feature_not_available")));
    assert_problem(&premium_call(&mut client, "opted-out", Some(false)).await, 403, "PREMIUM_NOT_AVAILABLE");
    let ended = end_with(&mut client, &live, 250, 30).await;
    assert_eq!((ended["pool"].as_str(), ended["cost_cents"].as_u64()), (Some(PREMIUM_POOL), Some(8)));
    assert_eq!(month_of(&ended), month);
    let usage = get_json(&mut client, &format!("/v1/tenants/paying/usage?month={month}")).await;
    assert_eq!(usage["pools"][PREMIUM_POOL], totals(2, 50, 1950, 59));
    assert_eq!(usage["addons"][0]["alert"], "critical", "1950 of 2000");
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

// ---------------------------------------------------------------- regressions

/// Regression (usage alerts under concurrency): alerts were computed after the end, from a total
/// that already held the other concurrent ends; the journal writer now sees each end in journal
/// order. 20 premium calls of 50 characters on a limit of
/// 1000, ended at once: whatever the order, the 16th crosses 80 %, the 19th 95 % and the 20th
/// 100 % (no call can skip a level), so the count must be `(1, 1, 1)`; the server counts
/// `(0, 0, n)` with n up to 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_alerts_count_each_crossing_once_when_calls_end_concurrently() {
    const CALLS: usize = 20;
    away_from_a_month_boundary().await;
    let dir = temp_dir();
    let server = start_in(dir.path(), |config| {
        no_reservations(config);
        config.pools.get_mut(PREMIUM_POOL).expect("the premium pool").capacity = 25;
    })
    .await;
    let mut client = server.client().await;
    set_flag(&mut client, PREMIUM, true).await;
    create_tenant(&mut client, "cap", "ENTERPRISE", Some(25)).await;
    set_addon(&mut client, "cap", PREMIUM, json!({"status": "active", "billing_status": "paid", "monthly_character_limit": 1000})).await;
    let mut ends = Vec::new();
    for _ in 0..CALLS {
        let call = id_of(&admitted(premium_call(&mut client, "cap", Some(false)).await).await);
        let mut own = server.client().await;
        ends.push(async move { end_with(&mut own, &call, 50, 1).await });
    }
    let ends: Vec<_> = ends.into_iter().map(tokio::spawn).collect();
    for ended in ends {
        ended.await.expect("end task");
    }
    let usage = get_json(&mut client, "/v1/tenants/cap/usage").await;
    assert_eq!((usage["addons"][0]["characters_used"].as_u64(), usage["addons"][0]["alert"].as_str()), (Some(1000), Some("exceeded")));
    assert_eq!(usage_alerts(&metrics(&mut client).await), (1, 1, 1), "each level crossed once, whatever the interleaving");
    server.stop().await;
}

/// Regression (refusal reason without a premium pool): with `arbitration.premium_pool` unset
/// ("premium is never available"), a tenant whose feature check passes is refused a premium
/// call without fallback with "Feature not available" (it used to say "Active subscription").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_premium_pool_a_refused_premium_call_says_feature_not_available() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |config| config.arbitration.premium_pool = None).await;
    let mut client = server.client().await;
    set_flag(&mut client, PREMIUM, true).await;
    create_tenant(&mut client, "ent", "ENTERPRISE", Some(20)).await;
    set_addon(&mut client, "ent", PREMIUM, json!({"status": "active", "billing_status": "paid"})).await;
    let call = admitted(premium_call(&mut client, "ent", None).await).await;
    assert_eq!(placement(&call), (STANDARD_POOL, true, Some("feature_not_available")));
    let refused = assert_problem(&premium_call(&mut client, "ent", Some(false)).await, 403, "PREMIUM_NOT_AVAILABLE");
    assert_eq!(
        (refused["field"].as_str(), refused["reason"].as_str(), refused["requires_upgrade"].as_bool()),
        (Some("voice"), Some("Feature not available"), Some(false)),
        "{refused}"
    );
    server.stop().await;
}

/// Every map a client can grow has a bound: one flag override past `TENANT_FLAGS_MAX` is a 422
/// `LIMIT_EXCEEDED` that changes nothing, while changing an existing override still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_has_a_bounded_number_of_flag_overrides() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "acme", "PRO", None).await;
    let max = switchboard_actors::tenant::TENANT_FLAGS_MAX;
    for n in 0..=max {
        set_flag(&mut client, &format!("f{n}"), true).await;
    }
    for n in 0..max {
        set_override(&mut client, "acme", &format!("f{n}"), false).await;
    }
    let before = last_seq(&server).await;
    let refused = put(&mut client, &format!("/v1/tenants/acme/flags/f{max}"), &json!({"enabled": false})).await;
    let body = assert_problem(&refused, 422, "LIMIT_EXCEEDED");
    assert_eq!(body["field"], "name");
    assert_eq!(last_seq(&server).await, before, "nothing was journaled");
    assert_eq!(get_json(&mut client, "/v1/tenants/acme").await["flags"].as_object().map(|f| f.len()), Some(max));
    set_override(&mut client, "acme", "f0", true).await;
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}
