//! A bad scenario is refused with the file, the line and the reason, before anything runs.

use switchboard_simulations::{Scenario, ScenarioError};

const GOOD: &str = r#"name = "tiny"
duration = "10m"

[pools.standard_voice]
capacity = 5
reserved = { premium = 2, priority = 3 }

[[groups]]
name = "pro"
count = 2
plan = "PRO"

[[groups]]
name = "payg"
count = 3
plan = "PAYG"
traffic = { calls_per_hour = 10, inbound_share = 0.5 }

[[events]]
at = "1m"
burst = { group = "pro", tenant = 1, calls = 5 }
"#;

fn refuse(source: &str) -> ScenarioError {
    match Scenario::from_toml(source, "bad.toml") {
        Ok(_) => panic!("accepted:\n{source}"),
        Err(error) => error,
    }
}

/// Replaces the first occurrence of `from` in the good scenario.
fn with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn the_good_scenario_parses_and_json_says_the_same() {
    let scenario = Scenario::from_toml(GOOD, "good.toml").expect("good");
    assert_eq!(scenario.duration.0, 600_000);
    assert_eq!(scenario.groups[1].traffic.inbound_share.0, 0.5);
    let json = serde_json::to_value(&scenario).expect("json");
    assert_eq!(Scenario::from_json(json).expect("json scenario"), scenario);
}

#[test]
fn an_unknown_key_names_its_line() {
    let error = refuse(&with("plan = \"PRO\"", "plan = \"PRO\"\nplna = 3"));
    assert_eq!(error.line, Some(12), "{error}");
    assert!(error.reason.contains("plna"), "{error}");
    assert!(error.to_string().starts_with("bad.toml:12:"), "{error}");
}

#[test]
fn an_out_of_range_value_names_its_line_and_the_range() {
    let error = refuse(&with("capacity = 5", "capacity = 0"));
    assert_eq!(error.line, Some(5), "{error}");
    assert!(error.reason.contains("between 1 and"), "{error}");
    let error = refuse(&with("inbound_share = 0.5", "inbound_share = 1.5"));
    assert_eq!(error.line, Some(17), "{error}");
    assert!(error.reason.contains("share"), "{error}");
}

#[test]
fn a_bad_duration_says_how_to_write_one() {
    let error = refuse(&with("duration = \"10m\"", "duration = \"10 minutes\""));
    assert_eq!(error.line, Some(2), "{error}");
    assert!(error.reason.contains("unit"), "{error}");
    let error = refuse(&with("duration = \"10m\"", "duration = \"30d\""));
    assert!(error.reason.contains("at most 7d"), "{error}");
}

#[test]
fn cross_references_name_the_field_and_its_line() {
    let cases = [
        (with("plan = \"PAYG\"", "plan = \"GOLD\""), "groups[1].plan", 16, "unknown plan"),
        (with("tenant = 1, calls", "tenant = 2, calls"), "events[0].burst.group", 21, "has 2 tenants"),
        (with("group = \"pro\", tenant", "group = \"vip\", tenant"), "events[0].burst.group", 21, "no group"),
        (with("premium = 2, priority = 3", "premium = 2, gold = 3"), "pools.standard_voice.reserved.gold", 6, "unknown class"),
        (with("premium = 2, priority = 3", "premium = 9"), "pools.standard_voice.reserved.premium", 6, "more than the pool"),
        (with("at = \"1m\"", "at = \"11m\""), "events[0].at", 20, "after the scenario's duration"),
        (with("name = \"payg\"", "name = \"pro\""), "groups[1].name", 14, "already called"),
        (with("[[groups]]\nname = \"pro\"", "[plans.Pro]\nlimit = 9\n\n[[groups]]\nname = \"pro\""), "plans.Pro", 8, "no group uses plan"),
    ];
    for (source, field, line, reason) in cases {
        let error = refuse(&source);
        assert_eq!(error.field.as_deref(), Some(field), "{error}");
        assert_eq!(error.line, Some(line), "{error}");
        assert!(error.reason.contains(reason), "{error}");
    }
}

#[test]
fn missing_sections_and_impossible_combinations_are_refused() {
    let error = refuse(&GOOD.replace("[pools.standard_voice]", "[pools.premium_voice]"));
    assert_eq!(error.field.as_deref(), Some("pools"), "{error}");
    let error = refuse(&with("traffic = { calls_per_hour = 10", "traffic = { premium_share = 0.2, calls_per_hour = 10"));
    assert!(error.reason.contains("premium_voice"), "{error}");
    let error = refuse(&with(
        "burst = { group = \"pro\", tenant = 1, calls = 5 }",
        "webhook_loss = { share = 0.1 }\ncapacity = { pool = \"standard_voice\", capacity = 3 }",
    ));
    assert!(error.reason.contains("exactly one"), "{error}");
    let error = refuse("name = \"x\"");
    assert!(error.reason.contains("missing"), "{error}");
}

#[test]
fn json_errors_name_the_field() {
    let mut json = serde_json::to_value(Scenario::from_toml(GOOD, "good.toml").expect("good")).expect("json");
    json["groups"][0]["count"] = serde_json::json!(0);
    let error = Scenario::from_json(json).expect_err("count 0");
    assert!(error.reason.contains("between 1 and"), "{error}");
    let mut json = serde_json::to_value(Scenario::from_toml(GOOD, "good.toml").expect("good")).expect("json");
    json["groups"][1]["plan"] = serde_json::json!("GOLD");
    let error = Scenario::from_json(json).expect_err("unknown plan");
    assert_eq!(error.field.as_deref(), Some("groups[1].plan"));
}
