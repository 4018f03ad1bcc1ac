//! Property: whatever the scenario — pools, reservations, plans, lines, credits, traffic mixes,
//! waits, premium voices, bursts, capacity changes, provider 429 bursts, lost webhooks and
//! crashed actors — every invariant of the report holds, and the same seed replays the same
//! trace. CI runs 300 cases (`PROPTEST_CASES` to change); `switchboard simulate FILE --seeds
//! 1..10000` is the long sweep over one scenario.

use std::collections::BTreeMap;

use proptest::prelude::*;
use switchboard_simulations::scenario::{
    Bounded, Burst, CapacityChange, Crash, CrashTarget, Distribution, DurationDist, Group, Millis, PlanDef, PoolDef, Provider429, Rate,
    Scenario, Share, Sigma, TimedEvent, Traffic, WatchdogDef, WebhookLoss,
};
use switchboard_simulations::{Limits, run};

const PLANS: [&str; 5] = ["TRIAL", "PAYG", "STARTER", "PRO", "ENTERPRISE"];
const CLASSES: [&str; 3] = ["standard", "priority", "premium"];
const MINUTE: u64 = 60_000;

fn pool() -> impl Strategy<Value = PoolDef> {
    (1..8u32, proptest::collection::vec(0..3u32, 3)).prop_map(|(capacity, reserved)| PoolDef {
        capacity: Bounded(capacity),
        reserved: CLASSES.iter().zip(reserved).map(|(c, r)| (c.to_string(), Bounded(r.min(capacity)))).collect(),
    })
}

fn traffic(premium_pool: bool) -> impl Strategy<Value = Traffic> {
    (0..60u32, any::<bool>(), (1..300u64, 1..4u64), (0..=10u32, 0..=10u32), 0..5_000u64, 0..=5u32, proptest::option::of(1..10u64)).prop_map(
        move |(rate, log_normal, (mean_s, cap_factor), (inbound, connected), wait, premium, heartbeat_min)| Traffic {
            calls_per_hour: Rate(f64::from(rate)),
            duration: DurationDist {
                distribution: if log_normal { Distribution::LogNormal } else { Distribution::Exponential },
                mean: Millis(mean_s * 1_000),
                cap: Millis(mean_s * 1_000 * cap_factor),
                sigma: Sigma(0.8),
            },
            inbound_share: Share(f64::from(inbound) / 10.0),
            already_connected_share: Share(f64::from(connected) / 10.0),
            wait: Millis(wait),
            premium_share: Share(if premium_pool { f64::from(premium) / 10.0 } else { 0.0 }),
            heartbeat_every: heartbeat_min.map(|m| Millis(m * MINUTE)),
        },
    )
}

fn group(index: usize, premium_pool: bool) -> impl Strategy<Value = Group> {
    (
        (0..5usize, proptest::option::weighted(0.3, 1..6u32)),
        1..4u32,
        0..3u32,
        1..3u32,
        proptest::option::of(0..600u32),
        any::<bool>(),
        traffic(premium_pool),
    )
        .prop_map(move |((plan, limit_override), count, lines, channels, credits, premium_addon, traffic)| Group {
            name: format!("g{index}"),
            count: Bounded(count),
            plan: PLANS[plan].into(),
            limit_override: limit_override.map(Bounded),
            lines: Bounded(lines),
            channels: Bounded(channels),
            credits: credits.map(Bounded),
            premium_addon,
            traffic,
        })
}

/// Plan overrides: a built-in plan's limit and, sometimes, its class.
fn plans() -> impl Strategy<Value = BTreeMap<String, PlanDef>> {
    proptest::collection::btree_map(
        (0..5usize).prop_map(|p| PLANS[p].to_owned()),
        (proptest::option::of(1..6u32), proptest::option::of(0..3usize))
            .prop_map(|(limit, class)| PlanDef { limit: limit.map(Bounded), class: class.map(|c| CLASSES[c].to_owned()) }),
        0..3,
    )
}

#[derive(Clone, Debug)]
enum EventKind {
    Burst { group: usize, calls: u32, wait: u64 },
    Capacity { premium: bool, capacity: u32 },
    Provider429 { calls: u32, cooldown_s: u64 },
    Loss(u32),
    Crash(usize, usize),
}

fn event() -> impl Strategy<Value = (u64, EventKind)> {
    let kind = prop_oneof![
        (0..4usize, 1..12u32, 0..3_000u64).prop_map(|(group, calls, wait)| EventKind::Burst { group, calls, wait }),
        (any::<bool>(), 1..8u32).prop_map(|(premium, capacity)| EventKind::Capacity { premium, capacity }),
        (1..4u32, 1..90u64).prop_map(|(calls, cooldown_s)| EventKind::Provider429 { calls, cooldown_s }),
        (0..=5u32).prop_map(EventKind::Loss),
        (0..4usize, 0..4usize).prop_map(|(target, group)| EventKind::Crash(target, group)),
    ];
    (0..20u64, kind)
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (pool(), proptest::option::of(pool()), 5..20u64, 1..4usize).prop_flat_map(|(standard, premium, minutes, groups)| {
        let premium_pool = premium.is_some();
        let groups: Vec<_> = (0..groups).map(|i| group(i, premium_pool)).collect();
        (Just((standard, premium, minutes)), groups, proptest::collection::vec(event(), 0..6), plans()).prop_map(
            |((standard, premium, minutes), groups, events, plans)| {
                let mut pools = BTreeMap::from([("standard_voice".to_owned(), standard)]);
                if let Some(premium) = premium {
                    pools.insert("premium_voice".to_owned(), premium);
                }
                let events = events
                    .into_iter()
                    .filter_map(|(at_min, kind)| timed(&groups, &pools, Millis((at_min % minutes) * MINUTE), kind))
                    .collect();
                Scenario {
                    name: "random".into(),
                    description: String::new(),
                    seed: 0,
                    duration: Millis(minutes * MINUTE),
                    start_ms: 1_799_020_800_000,
                    starvation_bound: Millis(10_000),
                    pools,
                    plans,
                    watchdog: WatchdogDef {
                        stale_after: Millis(10 * MINUTE),
                        max_duration: Millis(30 * MINUTE),
                        sweep_interval: Millis(MINUTE),
                    },
                    groups,
                    events,
                }
            },
        )
    })
}

fn timed(groups: &[Group], pools: &BTreeMap<String, PoolDef>, at: Millis, kind: EventKind) -> Option<TimedEvent> {
    let empty = TimedEvent { at, burst: None, capacity: None, provider_429: None, webhook_loss: None, crash: None };
    let pool = |premium: bool| if premium && pools.contains_key("premium_voice") { "premium_voice" } else { "standard_voice" };
    Some(match kind {
        EventKind::Burst { group, calls, wait } => {
            let group = &groups[group % groups.len()];
            let burst = Burst { group: group.name.clone(), tenant: 0, calls: Bounded(calls), wait: Millis(wait), duration: None };
            TimedEvent { burst: Some(burst), ..empty }
        }
        EventKind::Capacity { premium, capacity } => {
            TimedEvent { capacity: Some(CapacityChange { pool: pool(premium).into(), capacity: Bounded(capacity) }), ..empty }
        }
        EventKind::Provider429 { calls, cooldown_s } => {
            let burst = Provider429 { pool: "standard_voice".into(), calls: Bounded(calls), cooldown: Millis(cooldown_s * 1_000) };
            TimedEvent { provider_429: Some(burst), ..empty }
        }
        EventKind::Loss(tenths) => TimedEvent { webhook_loss: Some(WebhookLoss { share: Share(f64::from(tenths) / 10.0) }), ..empty },
        EventKind::Crash(target, group) => {
            let group = &groups[group % groups.len()];
            let target = [CrashTarget::Platform, CrashTarget::Tenant, CrashTarget::Line, CrashTarget::Call][target];
            if target == CrashTarget::Line && group.lines.0 == 0 {
                return None;
            }
            let group = matches!(target, CrashTarget::Tenant | CrashTarget::Line).then(|| group.name.clone());
            TimedEvent { crash: Some(Crash { target, group, tenant: 0 }), ..empty }
        }
    })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(300)
}

proptest! {
    // 300 cases unless PROPTEST_CASES says otherwise (an explicit count would override it).
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    #[test]
    fn every_invariant_holds_and_a_seed_replays(scenario in scenario(), seed in any::<u64>()) {
        // The generated scenario is one a file could say: it passes the same checks.
        let json = serde_json::to_value(&scenario).expect("json");
        let scenario = Scenario::from_json(json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let report = run(&scenario, seed, &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let failed: Vec<_> = report.invariants.iter().filter(|i| !i.passed).collect();
        prop_assert!(failed.is_empty(), "invariants failed: {:#?}", failed);
        let again = run(&scenario, seed, &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&report.digest, &again.digest);
    }
}
