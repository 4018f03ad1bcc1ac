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
use switchboard_actors::context::Settings;
use switchboard_actors::core::call::Watchdog;
use switchboard_actors::model::PlanTable;

/// Upper bounds that catch typos (an extra zero) before they reach production.
pub const CAPACITY_MAX: u32 = 1_000_000;
pub const CONCURRENT_LIMIT_MAX: u32 = 100_000;
pub const CHANNELS_MAX: u32 = 1_000;

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
    pub platform: PlatformConfig,
    pub lines: LinesConfig,
    pub calls: CallsConfig,
    pub journal: JournalConfig,
    pub http: HttpConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlansConfig {
    /// Plan name → default concurrent limit.
    pub limits: BTreeMap<String, u32>,
    pub fallback_limit: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformConfig {
    /// The provider account's concurrency, used on a fresh journal. Change it live with
    /// `PATCH /v1/platform`; the journaled value wins from then on.
    pub capacity: u32,
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
            platform: PlatformConfig { capacity: 5 },
            lines: LinesConfig { channels_default: 2 },
            calls: CallsConfig::default(),
            journal: JournalConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

impl Default for PlansConfig {
    fn default() -> Self {
        let table = PlanTable::default();
        PlansConfig { limits: table.limits, fallback_limit: table.fallback_limit }
    }
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig { capacity: 5 }
    }
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
        in_range("platform.capacity", self.platform.capacity.into(), 1, CAPACITY_MAX.into())?;
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
        if self.admin_token.as_ref().is_some_and(|t| t.chars().count() < crate::token::TOKEN_CHARS_MIN) {
            return Err(invalid("admin_token", format!("must be at least {} characters", crate::token::TOKEN_CHARS_MIN)));
        }
        Ok(())
    }

    pub fn settings(&self) -> Settings {
        Settings {
            plans: Arc::new(PlanTable { limits: self.plans.limits.clone(), fallback_limit: self.plans.fallback_limit }),
            platform_capacity_default: self.platform.capacity,
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
        assert_eq!(config.platform.capacity, 5);
        assert_eq!(config.plans.limits["PRO"], 5);
        assert_eq!(config.lines.channels_default, 2);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key() {
        let unknown: Result<Config, _> = toml::from_str("[platform]\ncapacty = 5\n");
        assert!(unknown.unwrap_err().to_string().contains("capacty"));
        let zero: Config = toml::from_str("[platform]\ncapacity = 0\n").unwrap();
        assert!(zero.validate().unwrap_err().to_string().starts_with("platform.capacity"));
    }
}
