//! Configuration: a TOML file (`--config`), then environment variables, then flags.
//!
//! Every field has a default, so `switchboard` runs with no file at all. Unknown keys and
//! out-of-range values are refused at start with the key and the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use switchboard_actors::context::{Arbitration, CallbackSettings, PoolSpec, Settings};
use switchboard_actors::core::call::Watchdog;
use switchboard_actors::core::pool::PoolTiming;
use switchboard_actors::model::{ClassTable, PlanTable};

/// Upper bounds that catch typos (an extra zero) before they reach production.
pub const CAPACITY_MAX: u32 = 1_000_000;
pub const CONCURRENT_LIMIT_MAX: u32 = 100_000;
pub const CHANNELS_MAX: u32 = 1_000;
/// Priority classes at most (each has a queue per pool).
pub const CLASSES_MAX: usize = 8;
/// Provider pools at most.
pub const POOLS_MAX: usize = 32;
/// The longest wait a config may allow.
pub const WAIT_MS_MAX_MAX: u64 = 600_000;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Bearer token for `/v1`. Prefer `SWITCHBOARD_ADMIN_TOKEN`; if neither is set, one is
    /// generated on first start and kept in `<data_dir>/admin_token`.
    pub admin_token: Option<String>,
    /// Whether `/metrics` needs the admin token too (default: no, like most exporters).
    pub metrics_require_auth: bool,
    pub plans: PlansConfig,
    pub arbitration: ArbitrationConfig,
    /// Provider pools by name, one per upstream provider account.
    pub pools: BTreeMap<String, PoolConfig>,
    pub lines: LinesConfig,
    pub calls: CallsConfig,
    pub journal: JournalConfig,
    pub http: HttpConfig,
    pub callbacks: CallbacksConfig,
    pub dialer: DialerConfig,
    pub simulations: SimulationsConfig,
}

/// Bounds on `POST /v1/simulations`: a run is CPU work on the service's own machine, so its
/// size, its time and the runs at once are all capped.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulationsConfig {
    /// Runs at once (each takes a core for its whole length); past it 503 `SIMULATIONS_BUSY` at
    /// once, never a queue.
    pub runs_concurrent_max: usize,
    /// Calls one run may offer, checked against the scenario's expected count before it runs
    /// and against the real count while it runs; past it 422 `SIMULATION_TOO_LARGE`.
    pub calls_per_run_max: u64,
    /// Tenants and phone lines one run creates, checked before it runs; past it 422
    /// `SIMULATION_TOO_LARGE`. Each is a live actor with its journal events for the whole run
    /// (about 25 KB, measured on a debug build), created before the wall-time bound starts
    /// counting, so this bounds a run's memory: 50,000 is about 1.3 GB, and twice what the
    /// reference day creates.
    pub tenants_and_lines_per_run_max: u64,
    /// Wall time of one run; past it the run stops and the answer is 503 `SIMULATION_TIMEOUT`.
    pub wall_time_ms_max: u64,
    /// Reports kept; storing one more drops the oldest.
    pub reports_stored_max: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbacksConfig {
    /// Open missed-call entries per line; past it a missed call is refused with an alert.
    pub queue_per_line_max: usize,
    /// A prepaid tenant's credits must exceed this for a callback to be placed (seed 002: 100).
    pub min_credits: u64,
    /// Every queue looks for work this often, in case an event was missed.
    pub backup_scan_interval_ms: u64,
    /// Callback dispatches in progress at once.
    pub dispatch_concurrency_max: usize,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialerConfig {
    /// The platform endpoint that places calls (`SWITCHBOARD_DIALER_URL` wins). Without one,
    /// missed calls are queued but not called back.
    pub url: Option<String>,
    /// Sent as `Authorization: Bearer` to the dialer, if set.
    pub token: Option<String>,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlansConfig {
    /// Plan name → default concurrent limit.
    pub limits: BTreeMap<String, u32>,
    pub fallback_limit: u32,
    /// Plan name → priority class (a plan without one gets the lowest class).
    pub classes: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArbitrationConfig {
    /// Priority classes, lowest first.
    pub classes: Vec<String>,
    /// The pool standard-voice calls use (and `PATCH /v1/platform` changes).
    pub default_pool: String,
    /// The pool premium-voice calls use; absent: premium is never available.
    pub premium_pool: Option<String>,
    /// The feature flag and add-on type that unlock premium voices.
    pub premium_feature: String,
    /// The longest `wait_ms` honoured; longer asks are capped to it.
    pub wait_ms_max: u64,
    /// No class waits longer than this while capacity keeps turning over: a waiter is served
    /// ahead of younger higher-class ones from half of it on.
    pub starvation_bound_ms: u64,
    /// Waiting admissions per pool and class; past it `QUEUE_FULL`.
    pub waiting_per_class_max: usize,
    /// A capacity learned from a provider 429 grows back one slot per interval.
    pub capacity_probe_interval_ms: u64,
    /// Cooldown after a provider 429 that names no `retry_after_s`.
    pub provider_cooldown_s_default: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The provider account's concurrency, used when the pool is first created. Change it live
    /// with `PATCH /v1/platform/pools/{name}`; the journaled value wins from then on.
    pub capacity: u32,
    /// Headroom reserved for a class and the ones above it.
    #[serde(default)]
    pub reserved: BTreeMap<String, u32>,
    #[serde(default)]
    pub price_cents_per_1000_characters: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinesConfig {
    pub channels_default: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    pub max_duration_ms: u64,
    pub stale_after_ms: u64,
    pub watchdog_interval_ms: u64,
    pub live_calls_max: usize,
    pub retry_after_s: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    pub snapshot_every_events: u64,
    pub append_timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Requests being served at once; past it new ones get 503 at once (load shedding), which
    /// also bounds every actor mailbox behind them.
    pub in_flight_max: usize,
    pub actor_call_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            admin_token: None,
            metrics_require_auth: false,
            plans: PlansConfig::default(),
            arbitration: ArbitrationConfig::default(),
            pools: default_pools(),
            lines: LinesConfig { channels_default: 2 },
            calls: CallsConfig::default(),
            journal: JournalConfig::default(),
            http: HttpConfig::default(),
            callbacks: CallbacksConfig::default(),
            dialer: DialerConfig { timeout_ms: 5_000, ..DialerConfig::default() },
            simulations: SimulationsConfig::default(),
        }
    }
}

impl Default for SimulationsConfig {
    fn default() -> Self {
        // One run at once: the reference machine has 2 cores and admission keeps the other.
        SimulationsConfig {
            runs_concurrent_max: 1,
            calls_per_run_max: 2_000_000,
            tenants_and_lines_per_run_max: 50_000,
            wall_time_ms_max: 60_000,
            reports_stored_max: 100,
        }
    }
}

impl Default for PlansConfig {
    fn default() -> Self {
        let table = PlanTable::default();
        PlansConfig { limits: table.limits, fallback_limit: table.fallback_limit, classes: ClassTable::default().plan_classes }
    }
}

impl Default for CallbacksConfig {
    fn default() -> Self {
        let defaults = CallbackSettings::default();
        CallbacksConfig {
            queue_per_line_max: defaults.queue_per_line_max,
            min_credits: defaults.min_credits,
            backup_scan_interval_ms: defaults.backup_scan_interval.as_millis() as u64,
            dispatch_concurrency_max: defaults.dispatch_concurrency_max,
        }
    }
}

impl Default for ArbitrationConfig {
    fn default() -> Self {
        let defaults = Arbitration::default();
        ArbitrationConfig {
            classes: defaults.classes.classes,
            default_pool: defaults.default_pool.to_string(),
            premium_pool: defaults.premium_pool.map(|p| p.to_string()),
            premium_feature: defaults.premium_feature,
            wait_ms_max: defaults.wait_ms_max,
            starvation_bound_ms: defaults.starvation_bound_ms,
            waiting_per_class_max: defaults.timing.waiting_per_class_max,
            capacity_probe_interval_ms: defaults.timing.probe_interval_ms,
            provider_cooldown_s_default: defaults.provider_cooldown_ms_default / 1000,
        }
    }
}

fn default_pools() -> BTreeMap<String, PoolConfig> {
    Arbitration::default()
        .pools
        .into_iter()
        .map(|(name, spec)| {
            let pool = PoolConfig {
                capacity: spec.capacity,
                reserved: spec.reserved,
                price_cents_per_1000_characters: spec.price_cents_per_1000_characters,
            };
            (name, pool)
        })
        .collect()
}

impl Default for LinesConfig {
    fn default() -> Self {
        LinesConfig { channels_default: 2 }
    }
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            max_duration_ms: 2 * 60 * 60 * 1000,
            stale_after_ms: 30 * 60 * 1000,
            watchdog_interval_ms: 60 * 1000,
            live_calls_max: 1_000_000,
            retry_after_s: 2,
        }
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig { snapshot_every_events: 100_000, append_timeout_ms: 30_000 }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { in_flight_max: 4_096, actor_call_timeout_ms: 5_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.into() }
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let in_range = |key, value: u64, low: u64, high: u64| {
            if (low..=high).contains(&value) { Ok(()) } else { Err(invalid(key, format!("{value} is outside {low}..={high}"))) }
        };
        self.validate_arbitration()?;
        in_range("lines.channels_default", self.lines.channels_default.into(), 1, CHANNELS_MAX.into())?;
        in_range("plans.fallback_limit", self.plans.fallback_limit.into(), 1, CONCURRENT_LIMIT_MAX.into())?;
        for limit in self.plans.limits.values() {
            in_range("plans.limits", (*limit).into(), 1, CONCURRENT_LIMIT_MAX.into())?;
        }
        if self.plans.limits.is_empty() {
            return Err(invalid("plans.limits", "at least one plan is needed"));
        }
        const DAY_MS: u64 = 24 * 60 * 60 * 1000;
        in_range("calls.max_duration_ms", self.calls.max_duration_ms, 1_000, 7 * DAY_MS)?;
        in_range("calls.stale_after_ms", self.calls.stale_after_ms, 1_000, 7 * DAY_MS)?;
        in_range("calls.watchdog_interval_ms", self.calls.watchdog_interval_ms, 10, DAY_MS)?;
        in_range("calls.live_calls_max", self.calls.live_calls_max as u64, 1, 10_000_000)?;
        in_range("calls.retry_after_s", self.calls.retry_after_s.into(), 1, 3_600)?;
        in_range("journal.snapshot_every_events", self.journal.snapshot_every_events, 100, 10_000_000)?;
        in_range("journal.append_timeout_ms", self.journal.append_timeout_ms, 100, 600_000)?;
        in_range("http.in_flight_max", self.http.in_flight_max as u64, 1, 1_000_000)?;
        in_range("http.actor_call_timeout_ms", self.http.actor_call_timeout_ms, 10, 600_000)?;
        in_range("callbacks.queue_per_line_max", self.callbacks.queue_per_line_max as u64, 1, 1_000_000)?;
        in_range("callbacks.min_credits", self.callbacks.min_credits, 0, 1_000_000_000)?;
        in_range("callbacks.backup_scan_interval_ms", self.callbacks.backup_scan_interval_ms, 10, 24 * 60 * 60 * 1000)?;
        in_range("callbacks.dispatch_concurrency_max", self.callbacks.dispatch_concurrency_max as u64, 1, 10_000)?;
        in_range("dialer.timeout_ms", self.dialer.timeout_ms, 10, 600_000)?;
        in_range("simulations.runs_concurrent_max", self.simulations.runs_concurrent_max as u64, 1, 64)?;
        in_range("simulations.calls_per_run_max", self.simulations.calls_per_run_max, 1, 100_000_000)?;
        in_range("simulations.tenants_and_lines_per_run_max", self.simulations.tenants_and_lines_per_run_max, 1, 10_000_000)?;
        in_range("simulations.wall_time_ms_max", self.simulations.wall_time_ms_max, 1, 3_600_000)?;
        in_range("simulations.reports_stored_max", self.simulations.reports_stored_max, 1, 100_000)?;
        if let Some(url) = &self.dialer.url {
            crate::dialer::HttpDialer::new(url, None, Duration::from_millis(self.dialer.timeout_ms))
                .map_err(|e| invalid("dialer.url", e.to_string()))?;
        }
        if self.admin_token.as_ref().is_some_and(|t| t.chars().count() < crate::token::TOKEN_CHARS_MIN) {
            return Err(invalid("admin_token", format!("must be at least {} characters", crate::token::TOKEN_CHARS_MIN)));
        }
        Ok(())
    }

    fn validate_arbitration(&self) -> Result<(), ConfigError> {
        let a = &self.arbitration;
        let name_ok = |name: &str| {
            !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if a.classes.is_empty() || a.classes.len() > CLASSES_MAX {
            return Err(invalid("arbitration.classes", format!("needs 1..={CLASSES_MAX} classes")));
        }
        if let Some(bad) = a.classes.iter().find(|c| !name_ok(c)) {
            return Err(invalid("arbitration.classes", format!("{bad:?} is not a name of lowercase letters, digits and _")));
        }
        let unique: std::collections::BTreeSet<_> = a.classes.iter().collect();
        if unique.len() != a.classes.len() {
            return Err(invalid("arbitration.classes", "a class is listed twice"));
        }
        if let Some((plan, class)) = self.plans.classes.iter().find(|(_, class)| !a.classes.contains(class)) {
            return Err(invalid("plans.classes", format!("plan {plan} names class {class:?}, which is not in arbitration.classes")));
        }
        if self.pools.is_empty() || self.pools.len() > POOLS_MAX {
            return Err(invalid("pools", format!("needs 1..={POOLS_MAX} pools")));
        }
        for (name, pool) in &self.pools {
            if !name_ok(name) {
                return Err(invalid("pools", format!("{name:?} is not a name of lowercase letters, digits and _")));
            }
            if !(1..=CAPACITY_MAX).contains(&pool.capacity) {
                return Err(invalid("pools.capacity", format!("pool {name}: {} is outside 1..={CAPACITY_MAX}", pool.capacity)));
            }
            if let Some((class, _)) = pool.reserved.iter().find(|(class, _)| !a.classes.contains(class)) {
                return Err(invalid("pools.reserved", format!("pool {name}: {class:?} is not in arbitration.classes")));
            }
            if let Some((class, n)) = pool.reserved.iter().find(|(_, n)| **n > CAPACITY_MAX) {
                return Err(invalid("pools.reserved", format!("pool {name}: {class} = {n} is above {CAPACITY_MAX}")));
            }
        }
        if !self.pools.contains_key(&a.default_pool) {
            return Err(invalid("arbitration.default_pool", format!("{:?} is not a configured pool", a.default_pool)));
        }
        if let Some(premium) = a.premium_pool.as_ref().filter(|p| !self.pools.contains_key(*p)) {
            return Err(invalid("arbitration.premium_pool", format!("{premium:?} is not a configured pool")));
        }
        if !name_ok(&a.premium_feature) {
            return Err(invalid("arbitration.premium_feature", "must be lowercase letters, digits and _"));
        }
        let in_range = |key, value: u64, low: u64, high: u64| {
            if (low..=high).contains(&value) { Ok(()) } else { Err(invalid(key, format!("{value} is outside {low}..={high}"))) }
        };
        in_range("arbitration.wait_ms_max", a.wait_ms_max, 0, WAIT_MS_MAX_MAX)?;
        in_range("arbitration.starvation_bound_ms", a.starvation_bound_ms, 100, 3_600_000)?;
        in_range("arbitration.waiting_per_class_max", a.waiting_per_class_max as u64, 1, 100_000)?;
        in_range("arbitration.capacity_probe_interval_ms", a.capacity_probe_interval_ms, 100, 24 * 60 * 60 * 1000)?;
        in_range("arbitration.provider_cooldown_s_default", a.provider_cooldown_s_default, 1, 3_600)?;
        Ok(())
    }

    fn arbitration(&self) -> Arbitration {
        let a = &self.arbitration;
        let pools = self
            .pools
            .iter()
            .map(|(name, pool)| {
                let spec = PoolSpec {
                    capacity: pool.capacity,
                    reserved: pool.reserved.clone(),
                    price_cents_per_1000_characters: pool.price_cents_per_1000_characters,
                };
                (name.clone(), spec)
            })
            .collect();
        Arbitration {
            classes: ClassTable { classes: a.classes.clone(), plan_classes: self.plans.classes.clone() },
            pools,
            default_pool: a.default_pool.as_str().into(),
            premium_pool: a.premium_pool.as_deref().map(Into::into),
            premium_feature: a.premium_feature.clone(),
            timing: PoolTiming {
                aging_ms: a.starvation_bound_ms / 2,
                probe_interval_ms: a.capacity_probe_interval_ms,
                waiting_per_class_max: a.waiting_per_class_max,
            },
            starvation_bound_ms: a.starvation_bound_ms,
            wait_ms_max: a.wait_ms_max,
            provider_cooldown_ms_default: a.provider_cooldown_s_default * 1000,
        }
    }

    pub fn settings(&self) -> Settings {
        Settings {
            plans: Arc::new(PlanTable { limits: self.plans.limits.clone(), fallback_limit: self.plans.fallback_limit }),
            arbitration: Arc::new(self.arbitration()),
            callbacks: CallbackSettings {
                queue_per_line_max: self.callbacks.queue_per_line_max,
                min_credits: self.callbacks.min_credits,
                backup_scan_interval: Duration::from_millis(self.callbacks.backup_scan_interval_ms),
                dispatch_concurrency_max: self.callbacks.dispatch_concurrency_max,
            },
            watchdog: Watchdog { max_duration_ms: self.calls.max_duration_ms, stale_after_ms: self.calls.stale_after_ms },
            sweep_interval: Duration::from_millis(self.calls.watchdog_interval_ms),
            actor_call_timeout: Duration::from_millis(self.http.actor_call_timeout_ms),
            journal_timeout: Duration::from_millis(self.journal.append_timeout_ms),
            snapshot_every_events: self.journal.snapshot_every_events,
            live_calls_max: self.calls.live_calls_max,
            retry_after_s: self.calls.retry_after_s,
            admissions_in_flight_max: self.http.in_flight_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_seeds() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.pools["standard_voice"].capacity, 5);
        assert_eq!(config.pools["standard_voice"].reserved["priority"], 3);
        assert_eq!(config.plans.classes["PRO"], "priority");
        assert_eq!(config.plans.limits["PRO"], 5);
        assert_eq!(config.lines.channels_default, 2);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key() {
        let unknown: Result<Config, _> = toml::from_str("[pools.a]\ncapacty = 5\n");
        assert!(unknown.unwrap_err().to_string().contains("capacty"));
        let zero: Config = toml::from_str("[arbitration]\ndefault_pool = \"a\"\npremium_pool = \"a\"\n[pools.a]\ncapacity = 0\n").unwrap();
        assert!(zero.validate().unwrap_err().to_string().starts_with("pools.capacity"));
        let missing: Config = toml::from_str("[pools.a]\ncapacity = 5\n").unwrap();
        assert!(missing.validate().unwrap_err().to_string().starts_with("arbitration.default_pool"));
        let class: Config = toml::from_str("[plans.classes]\nPRO = \"gold\"\n").unwrap();
        assert!(class.validate().unwrap_err().to_string().starts_with("plans.classes"));
    }
}
