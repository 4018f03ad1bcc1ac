//! Scenario files: what a simulation runs. TOML on disk (`simulations/scenarios/*.toml`), TOML
//! or JSON over HTTP; both go through the same serde types, so the two cannot drift.
//!
//! Every value is checked while it is read, so an error names the file, the line and the
//! reason (`spike.toml:12:12: capacity: must be between 1 and 100000`). Unknown keys are
//! errors too: a typo must not silently become a default.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// Tenants in one scenario, over all groups.
pub const TENANTS_MAX: u32 = 100_000;
/// Phone lines per tenant.
pub const LINES_PER_TENANT_MAX: u32 = 100;
/// Capacity of one pool; also the largest reservation and channel count.
pub const CAPACITY_MAX: u32 = 100_000;
/// Timed events in one scenario.
pub const EVENTS_MAX: usize = 10_000;
/// Calls one `burst` event starts.
pub const BURST_CALLS_MAX: u32 = 100_000;
/// Groups in one scenario.
pub const GROUPS_MAX: usize = 64;
/// The longest simulated duration (a week).
pub const DURATION_MAX_MS: u64 = 7 * 24 * 3_600_000;
/// Arrivals per hour per tenant.
pub const RATE_MAX: f64 = 100_000.0;

pub const STANDARD_POOL: &str = "standard_voice";
pub const PREMIUM_POOL: &str = "premium_voice";

/// A parsed, checked scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// What the scenario proves, in a sentence (shown in reports).
    #[serde(default)]
    pub description: String,
    /// The seed a run uses unless told another.
    #[serde(default)]
    pub seed: u64,
    /// How long traffic arrives. Then arrivals stop and the run drains: every call ends or is
    /// reclaimed by the watchdog.
    pub duration: Millis,
    /// When the simulated day starts (Unix ms); the default is 2027-01-04T00:00:00Z.
    #[serde(default = "default_start")]
    pub start_ms: u64,
    /// No class waits longer than this while capacity turns over (the arbiter's aging).
    #[serde(default = "default_starvation_bound")]
    pub starvation_bound: Millis,
    /// `standard_voice` (required) and `premium_voice` (optional).
    pub pools: BTreeMap<String, PoolDef>,
    /// Plan overrides: a plan's limit and class. Plans not named keep the defaults (TRIAL,
    /// PAYG, STARTER 1 standard; PRO 5 priority; ENTERPRISE 5 premium).
    #[serde(default)]
    pub plans: BTreeMap<String, PlanDef>,
    #[serde(default)]
    pub watchdog: WatchdogDef,
    pub groups: Vec<Group>,
    #[serde(default)]
    pub events: Vec<TimedEvent>,
}

fn default_start() -> u64 {
    1_799_020_800_000
}

fn default_starvation_bound() -> Millis {
    Millis(10_000)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDef {
    pub capacity: Bounded<1, CAPACITY_MAX>,
    /// Headroom per class that lower classes may not use (class name → slots).
    #[serde(default)]
    pub reserved: BTreeMap<String, Bounded<0, CAPACITY_MAX>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanDef {
    pub limit: Option<Bounded<1, CAPACITY_MAX>>,
    pub class: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogDef {
    #[serde(default = "default_stale_after")]
    pub stale_after: Millis,
    #[serde(default = "default_max_duration")]
    pub max_duration: Millis,
    #[serde(default = "default_sweep_interval")]
    pub sweep_interval: Millis,
}

impl Default for WatchdogDef {
    fn default() -> Self {
        WatchdogDef { stale_after: default_stale_after(), max_duration: default_max_duration(), sweep_interval: default_sweep_interval() }
    }
}

fn default_stale_after() -> Millis {
    Millis(30 * 60_000)
}

fn default_max_duration() -> Millis {
    Millis(2 * 3_600_000)
}

fn default_sweep_interval() -> Millis {
    Millis(60_000)
}

/// Tenants alike: same plan, lines and traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub count: Bounded<1, TENANTS_MAX>,
    pub plan: String,
    /// A per-tenant `concurrent_limit_override`.
    pub limit_override: Option<Bounded<1, CAPACITY_MAX>>,
    /// Phone lines per tenant; calls pick one at random. 0: calls use no line.
    #[serde(default)]
    pub lines: Bounded<0, LINES_PER_TENANT_MAX>,
    #[serde(default = "default_channels")]
    pub channels: Bounded<1, CAPACITY_MAX>,
    /// Prepaid credits per tenant (1 credit = 1 s); absent: not prepaid.
    pub credits: Option<Bounded<0, { u32::MAX }>>,
    /// Tenants hold a paid premium-voice add-on.
    #[serde(default)]
    pub premium_addon: bool,
    #[serde(default)]
    pub traffic: Traffic,
}

fn default_channels() -> Bounded<1, CAPACITY_MAX> {
    Bounded(2)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// Poisson arrivals per hour, per tenant. 0: only timed bursts.
    #[serde(default)]
    pub calls_per_hour: Rate,
    #[serde(default)]
    pub duration: DurationDist,
    /// Share of calls that are inbound (the rest are outbound).
    #[serde(default)]
    pub inbound_share: Share,
    /// Share of inbound calls the provider has already connected (force-admitted).
    #[serde(default)]
    pub already_connected_share: Share,
    /// How long an outbound request may wait for a pool slot.
    #[serde(default)]
    pub wait: Millis,
    /// Share of calls asking for a premium voice (with fallback to standard).
    #[serde(default)]
    pub premium_share: Share,
    /// Live calls send a heartbeat this often; absent: never (long calls go stale).
    pub heartbeat_every: Option<Millis>,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            calls_per_hour: Rate(0.0),
            duration: DurationDist::default(),
            inbound_share: Share(0.0),
            already_connected_share: Share(0.0),
            wait: Millis(0),
            premium_share: Share(0.0),
            heartbeat_every: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    Exponential,
    LogNormal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurationDist {
    pub distribution: Distribution,
    pub mean: Millis,
    /// No call lasts longer (the provider's own maximum).
    pub cap: Millis,
    /// Log-normal only: the spread of ln(duration).
    #[serde(default = "default_sigma")]
    pub sigma: Sigma,
}

fn default_sigma() -> Sigma {
    Sigma(1.0)
}

impl Default for DurationDist {
    fn default() -> Self {
        DurationDist { distribution: Distribution::Exponential, mean: Millis(180_000), cap: Millis(3_600_000), sigma: default_sigma() }
    }
}

/// Something that happens at one moment: exactly one of the kinds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimedEvent {
    pub at: Millis,
    pub burst: Option<Burst>,
    pub capacity: Option<CapacityChange>,
    pub provider_429: Option<Provider429>,
    pub webhook_loss: Option<WebhookLoss>,
    pub crash: Option<Crash>,
}

/// One tenant starts `calls` outbound calls at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    pub group: String,
    #[serde(default)]
    pub tenant: u32,
    pub calls: Bounded<1, BURST_CALLS_MAX>,
    /// How long each may wait for a pool slot.
    #[serde(default)]
    pub wait: Millis,
    /// How long each lasts once admitted; absent: the group's distribution.
    pub duration: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityChange {
    pub pool: String,
    pub capacity: Bounded<1, CAPACITY_MAX>,
}

/// The provider answers 429 for `calls` live calls of `pool` (oldest first).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider429 {
    pub pool: String,
    pub calls: Bounded<1, CAPACITY_MAX>,
    pub cooldown: Millis,
}

/// From now on, this share of calls never sends its end webhook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookLoss {
    pub share: Share,
}

/// An actor panics; its supervisor rebuilds it from the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    pub target: CrashTarget,
    /// For `tenant` and `line`: which group's tenant (its first line).
    pub group: Option<String>,
    #[serde(default)]
    pub tenant: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashTarget {
    Platform,
    Tenant,
    Line,
    /// The oldest live call.
    Call,
}

// ------------------------------------------------------------------ checked values

/// A whole number in `MIN..=MAX`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Bounded<const MIN: u32, const MAX: u32>(pub u32);

impl<'de, const MIN: u32, const MAX: u32> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        if value < i64::from(MIN) || value > i64::from(MAX) {
            return Err(de::Error::custom(format!("{value} is out of range: must be between {MIN} and {MAX}")));
        }
        Ok(Bounded(value as u32))
    }
}

/// A checked decimal: one line per kind, the range and the words of its error.
macro_rules! ranged_f64 {
    ($(#[$doc:meta])* $name:ident, $low:expr, $high:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub f64);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = f64::deserialize(deserializer)?;
                if !($low..=$high).contains(&value) {
                    return Err(de::Error::custom(format!(concat!("{} is not ", $what, ": must be between {} and {}"), value, $low, $high)));
                }
                Ok($name(value))
            }
        }
    };
}

ranged_f64!(
    /// A share of calls, 0.0 to 1.0.
    Share, 0.0, 1.0, "a share"
);
ranged_f64!(
    /// Arrivals per hour per tenant.
    Rate, 0.0, RATE_MAX, "a rate of calls per hour"
);
ranged_f64!(
    /// The log-normal spread of ln(duration).
    Sigma, 0.01, 4.0, "a sigma"
);

/// A duration: `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"`, or a whole number of milliseconds.
/// Serialized as milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    pub fn parse(text: &str) -> Result<Millis, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration: expected a number and a unit, like \"30s\""))?;
        let scale = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => return Err(format!("{other:?} is not a duration unit: use ms, s, m, h or d")),
        };
        let ms = number.checked_mul(scale).filter(|ms| *ms <= DURATION_MAX_MS);
        ms.map(Millis).ok_or_else(|| format!("{text:?} is too long: at most 7d"))
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like \"30s\", or milliseconds")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Millis, E> {
                Millis::parse(text).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, ms: i64) -> Result<Millis, E> {
                u64::try_from(ms)
                    .ok()
                    .filter(|ms| *ms <= DURATION_MAX_MS)
                    .map(Millis)
                    .ok_or_else(|| E::custom(format!("{ms} ms is out of range: must be between 0 and {DURATION_MAX_MS} (7 days)")))
            }
            fn visit_u64<E: de::Error>(self, ms: u64) -> Result<Millis, E> {
                self.visit_i64(i64::try_from(ms).unwrap_or(i64::MAX))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

// ------------------------------------------------------------------ errors

/// Why a scenario was refused: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}{}: {reason}", location(*.line, *.column))]
pub struct ScenarioError {
    /// The file name (or `request body`).
    pub source_name: String,
    /// 1-based; `None` when the error is about the whole scenario.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The field, as a dotted path (`groups[1].traffic.inbound_share`), when known.
    pub field: Option<String>,
    pub reason: String,
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(":{line}:{column}"),
        (Some(line), None) => format!(":{line}"),
        _ => String::new(),
    }
}

/// Line and column (1-based) of a byte offset.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl Scenario {
    /// Parses and checks a TOML scenario. `source_name` is used in errors.
    pub fn from_toml(source: &str, source_name: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(source).map_err(|error| {
            let (line, column) = match error.span() {
                Some(span) => {
                    let (line, column) = line_column(source, span.start);
                    (Some(line), Some(column))
                }
                None => (None, None),
            };
            ScenarioError { source_name: source_name.to_owned(), line, column, field: None, reason: error.message().trim().to_owned() }
        })?;
        scenario.check().map_err(|(field, reason)| {
            // Points at the field's line: its key, searched for in the source.
            let line = locate(source, &field);
            ScenarioError { source_name: source_name.to_owned(), line, column: None, field: Some(field), reason }
        })?;
        Ok(scenario)
    }

    /// Parses and checks a JSON scenario (the HTTP API); errors name the field's path.
    pub fn from_json(value: serde_json::Value) -> Result<Scenario, ScenarioError> {
        let scenario = Scenario::deserialize(value).map_err(|error| ScenarioError {
            source_name: "scenario".into(),
            line: None,
            column: None,
            field: None,
            reason: error.to_string(),
        })?;
        scenario.check().map_err(|(field, reason)| ScenarioError {
            source_name: "scenario".into(),
            line: None,
            column: None,
            field: Some(field),
            reason,
        })?;
        Ok(scenario)
    }

    /// The checks that span several values: references between sections, totals.
    fn check(&self) -> Result<(), (String, String)> {
        let fail = |field: String, reason: String| Err((field, reason));
        if self.name.trim().is_empty() || self.name.len() > 100 {
            return fail("name".into(), "must be 1 to 100 characters".into());
        }
        if self.duration.0 == 0 {
            return fail("duration".into(), "must be longer than 0".into());
        }
        if self.starvation_bound.0 < 2 {
            return fail("starvation_bound".into(), "must be at least 2ms".into());
        }
        if !self.pools.contains_key(STANDARD_POOL) {
            return fail("pools".into(), format!("a scenario needs pools.{STANDARD_POOL}"));
        }
        for name in self.pools.keys() {
            if name != STANDARD_POOL && name != PREMIUM_POOL {
                return fail(format!("pools.{name}"), format!("unknown pool: use {STANDARD_POOL} and, optionally, {PREMIUM_POOL}"));
            }
        }
        let classes = self.classes();
        for (name, pool) in &self.pools {
            for (class, reserved) in &pool.reserved {
                if !classes.contains(class) {
                    return fail(
                        format!("pools.{name}.reserved.{class}"),
                        format!("unknown class: the classes are {}", classes.join(", ")),
                    );
                }
                if reserved.0 > pool.capacity.0 {
                    return fail(
                        format!("pools.{name}.reserved.{class}"),
                        format!("{} reserved is more than the pool's capacity {}", reserved.0, pool.capacity.0),
                    );
                }
            }
        }
        let builtin = switchboard_actors::model::PlanTable::default();
        for (plan, def) in &self.plans {
            // A new plan is fine if a group uses it; otherwise it is most likely a typo of a
            // built-in one (`[plans.Pro]`), which must not silently leave PRO as it was.
            if !builtin.knows(plan) && !self.groups.iter().any(|g| &g.plan == plan) {
                let known: Vec<&str> = builtin.limits.keys().map(String::as_str).collect();
                return fail(
                    format!("plans.{plan}"),
                    format!("no group uses plan {plan:?} and it is not a built-in plan ({})", known.join(", ")),
                );
            }
            if let Some(class) = &def.class
                && !classes.contains(class)
            {
                return fail(format!("plans.{plan}.class"), format!("unknown class {class:?}: the classes are {}", classes.join(", ")));
            }
        }
        let watchdog = &self.watchdog;
        for (field, value) in
            [("stale_after", watchdog.stale_after), ("max_duration", watchdog.max_duration), ("sweep_interval", watchdog.sweep_interval)]
        {
            if value.0 < 1_000 {
                return fail(format!("watchdog.{field}"), "must be at least 1s".into());
            }
        }
        if self.groups.is_empty() {
            return fail("groups".into(), "a scenario needs at least one group of tenants".into());
        }
        if self.groups.len() > GROUPS_MAX {
            return fail("groups".into(), format!("at most {GROUPS_MAX} groups"));
        }
        let plans = self.plan_table();
        let mut tenants = 0u32;
        let mut names = std::collections::BTreeSet::new();
        for (n, group) in self.groups.iter().enumerate() {
            let at = |field: &str| format!("groups[{n}].{field}");
            if group.name.is_empty()
                || group.name.len() > 32
                || !group.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return fail(at("name"), "must be 1 to 32 letters, digits, '-' or '_'".into());
            }
            if !names.insert(group.name.as_str()) {
                return fail(at("name"), format!("another group is already called {:?}", group.name));
            }
            if !plans.knows(&group.plan) {
                let known: Vec<&str> = plans.limits.keys().map(String::as_str).collect();
                return fail(at("plan"), format!("unknown plan {:?}: the plans are {}", group.plan, known.join(", ")));
            }
            tenants = tenants.saturating_add(group.count.0);
            let traffic = &group.traffic;
            let duration = &traffic.duration;
            if duration.mean.0 == 0 {
                return fail(at("traffic.duration.mean"), "must be longer than 0".into());
            }
            if duration.cap.0 < duration.mean.0 {
                return fail(at("traffic.duration.cap"), "must be at least the mean".into());
            }
            if traffic.premium_share.0 > 0.0 && !self.pools.contains_key(PREMIUM_POOL) {
                return fail(at("traffic.premium_share"), format!("premium calls need pools.{PREMIUM_POOL}"));
            }
            if let Some(every) = traffic.heartbeat_every
                && every.0 < 1_000
            {
                return fail(at("traffic.heartbeat_every"), "must be at least 1s".into());
            }
        }
        if tenants > TENANTS_MAX {
            return fail("groups".into(), format!("{tenants} tenants in all: at most {TENANTS_MAX}"));
        }
        if self.events.len() > EVENTS_MAX {
            return fail("events".into(), format!("at most {EVENTS_MAX} timed events"));
        }
        for (n, event) in self.events.iter().enumerate() {
            let at = |field: &str| format!("events[{n}].{field}");
            let kinds = [
                event.burst.is_some(),
                event.capacity.is_some(),
                event.provider_429.is_some(),
                event.webhook_loss.is_some(),
                event.crash.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return fail(at("at"), "an event has exactly one of burst, capacity, provider_429, webhook_loss, crash".into());
            }
            if event.at.0 > self.duration.0 {
                return fail(at("at"), "is after the scenario's duration".into());
            }
            let group = |name: &str, tenant: u32, field: &str| match self.groups.iter().find(|g| g.name == name) {
                None => fail(at(field), format!("no group is called {name:?}")),
                Some(g) if tenant >= g.count.0 => fail(at(field), format!("group {name:?} has {} tenants, numbered from 0", g.count.0)),
                Some(_) => Ok(()),
            };
            let pool = |name: &str, field: &str| match self.pools.contains_key(name) {
                true => Ok(()),
                false => fail(at(field), format!("no pool is called {name:?}")),
            };
            if let Some(burst) = &event.burst {
                group(&burst.group, burst.tenant, "burst.group")?;
            }
            if let Some(change) = &event.capacity {
                pool(&change.pool, "capacity.pool")?;
            }
            if let Some(burst) = &event.provider_429 {
                pool(&burst.pool, "provider_429.pool")?;
            }
            if let Some(crash) = &event.crash
                && !matches!(crash.target, CrashTarget::Tenant | CrashTarget::Line)
                && (crash.group.is_some() || crash.tenant != 0)
            {
                return fail(at("crash.group"), "only a tenant or line crash names a group and tenant".into());
            }
            if let Some(crash) = &event.crash
                && matches!(crash.target, CrashTarget::Tenant | CrashTarget::Line)
            {
                let Some(name) = &crash.group else {
                    return fail(at("crash.group"), "a tenant or line crash names its group".into());
                };
                group(name, crash.tenant, "crash.group")?;
                if crash.target == CrashTarget::Line && self.groups.iter().any(|g| &g.name == name && g.lines.0 == 0) {
                    return fail(at("crash.target"), format!("group {name:?} has no lines"));
                }
            }
        }
        Ok(())
    }

    /// Class names, lowest first.
    pub fn classes(&self) -> Vec<String> {
        switchboard_actors::model::ClassTable::default().classes
    }

    /// The plan table the scenario runs with: the defaults and the scenario's overrides.
    pub fn plan_table(&self) -> switchboard_actors::model::PlanTable {
        let mut table = switchboard_actors::model::PlanTable::default();
        for (plan, def) in &self.plans {
            let default = table.limits.get(plan).copied().unwrap_or(table.fallback_limit);
            table.limits.insert(plan.clone(), def.limit.map_or(default, |l| l.0));
        }
        table
    }

    /// The class table: the defaults and the scenario's plan classes.
    pub fn class_table(&self) -> switchboard_actors::model::ClassTable {
        let mut table = switchboard_actors::model::ClassTable::default();
        for (plan, def) in &self.plans {
            if let Some(class) = &def.class {
                table.plan_classes.insert(plan.clone(), class.clone());
            }
        }
        table
    }

    /// The longest `wait` any call of the scenario asks for.
    pub fn longest_wait_ms(&self) -> u64 {
        let traffic = self.groups.iter().map(|g| g.traffic.wait.0);
        traffic.chain(self.events.iter().filter_map(|e| e.burst.as_ref()).map(|b| b.wait.0)).max().unwrap_or(0)
    }

    /// Calls the scenario is expected to offer: Poisson means plus bursts.
    pub fn expected_calls(&self) -> f64 {
        let hours = self.duration.0 as f64 / 3_600_000.0;
        let arrivals: f64 = self.groups.iter().map(|g| g.traffic.calls_per_hour.0 * f64::from(g.count.0) * hours).sum();
        let bursts: f64 = self.events.iter().filter_map(|e| e.burst.as_ref()).map(|b| f64::from(b.calls.0)).sum();
        arrivals + bursts
    }
}

/// The line of a dotted field path (`groups[1].traffic.inbound_share`): the deepest part of
/// the path the TOML document has (a defaulted field points at its table).
fn locate(source: &str, field: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let document = DeTable::parse(source).ok()?;
    let mut span = document.span();
    let mut table: &DeTable<'_> = document.get_ref();
    for part in field.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((name, found)) = table.iter().find(|(name, _)| name.get_ref() == key) else { break };
        span = name.span();
        let mut value = found.get_ref();
        if let (Some(index), DeValue::Array(items)) = (index, found.get_ref())
            && let Some(item) = items.get(index)
        {
            span = item.span();
            value = item.get_ref();
        }
        match value {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    Some(line_column(source, span.start).0)
}
