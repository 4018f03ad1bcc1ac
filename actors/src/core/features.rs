//! Feature flags and add-ons: seed 004's `canUseFeature`, as a pure function of the flags, the
//! tenant's add-on and the service clock (so a simulation can cross a trial's end).

use crate::model::{Addon, AddonStatus, BillingStatus};

/// The answer of `GET /v1/tenants/{id}/features/{name}`, with seed 004's exact reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureDecision {
    pub allowed: bool,
    pub reason: &'static str,
    pub requires_upgrade: bool,
}

pub const REASON_NOT_AVAILABLE: &str = "Feature not available";
pub const REASON_SUBSCRIPTION_REQUIRED: &str = "Subscription required";
pub const REASON_ACTIVE_SUBSCRIPTION: &str = "Active subscription";

/// A flag that does not exist is off; a tenant override beats the global value.
pub fn flag_enabled(global: Option<bool>, tenant_override: Option<bool>) -> bool {
    match global {
        None => false,
        Some(global) => tenant_override.unwrap_or(global),
    }
}

/// Active, and either in a trial that has not ended or paid (seed 004 `hasActiveSubscription`).
pub fn has_active_subscription(addon: Option<&Addon>, now_ms: u64) -> bool {
    let Some(addon) = addon.filter(|a| a.status == AddonStatus::Active) else {
        return false;
    };
    match (addon.billing_status, addon.trial_ends_at_ms) {
        (BillingStatus::Trial, Some(ends_at_ms)) => ends_at_ms > now_ms,
        (billing, _) => billing == BillingStatus::Paid,
    }
}

/// Flag first (off: not allowed, no upgrade helps), then the add-on (missing: upgrade).
pub fn can_use(global: Option<bool>, tenant_override: Option<bool>, addon: Option<&Addon>, now_ms: u64) -> FeatureDecision {
    if !flag_enabled(global, tenant_override) {
        return FeatureDecision { allowed: false, reason: REASON_NOT_AVAILABLE, requires_upgrade: false };
    }
    if !has_active_subscription(addon, now_ms) {
        return FeatureDecision { allowed: false, reason: REASON_SUBSCRIPTION_REQUIRED, requires_upgrade: true };
    }
    FeatureDecision { allowed: true, reason: REASON_ACTIVE_SUBSCRIPTION, requires_upgrade: false }
}

/// Where a tenant's monthly characters stand against its add-on's limit (seed 004 alerts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UsageAlert {
    Ok,
    /// 80 % or more.
    Warning,
    /// 95 % or more.
    Critical,
    /// 100 % or more.
    Exceeded,
}

impl UsageAlert {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageAlert::Ok => "ok",
            UsageAlert::Warning => "warning",
            UsageAlert::Critical => "critical",
            UsageAlert::Exceeded => "exceeded",
        }
    }
}

pub fn usage_alert(used: u64, limit: u64) -> UsageAlert {
    // Compared as used * 100 against limit * percent, so no rounding moves a threshold.
    let used = u128::from(used) * 100;
    let at = |percent: u128| used >= u128::from(limit) * percent;
    if at(100) {
        UsageAlert::Exceeded
    } else if at(95) {
        UsageAlert::Critical
    } else if at(80) {
        UsageAlert::Warning
    } else {
        UsageAlert::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addon(status: AddonStatus, billing_status: BillingStatus, trial_ends_at_ms: Option<u64>) -> Addon {
        Addon { status, billing_status, trial_ends_at_ms, monthly_character_limit: None, updated_at_ms: 0 }
    }

    #[test]
    fn follows_seed_004_can_use_feature() {
        let paid = addon(AddonStatus::Active, BillingStatus::Paid, None);
        assert_eq!(can_use(None, Some(true), Some(&paid), 0).reason, REASON_NOT_AVAILABLE, "a missing flag is off");
        assert_eq!(
            can_use(Some(false), None, Some(&paid), 0),
            FeatureDecision { allowed: false, reason: REASON_NOT_AVAILABLE, requires_upgrade: false }
        );
        assert!(can_use(Some(false), Some(true), Some(&paid), 0).allowed, "the tenant override beats the global flag");
        assert!(!can_use(Some(true), Some(false), Some(&paid), 0).allowed);
        assert_eq!(
            can_use(Some(true), None, None, 0),
            FeatureDecision { allowed: false, reason: REASON_SUBSCRIPTION_REQUIRED, requires_upgrade: true }
        );
        assert_eq!(
            can_use(Some(true), None, Some(&paid), 0),
            FeatureDecision { allowed: true, reason: REASON_ACTIVE_SUBSCRIPTION, requires_upgrade: false }
        );
    }

    #[test]
    fn usage_alerts_at_80_95_and_100_percent() {
        assert_eq!(usage_alert(799, 1_000), UsageAlert::Ok);
        assert_eq!(usage_alert(800, 1_000), UsageAlert::Warning);
        assert_eq!(usage_alert(949, 1_000), UsageAlert::Warning);
        assert_eq!(usage_alert(950, 1_000), UsageAlert::Critical);
        assert_eq!(usage_alert(1_000, 1_000), UsageAlert::Exceeded);
        assert_eq!(usage_alert(0, 0), UsageAlert::Exceeded);
    }

    #[test]
    fn trials_end_by_the_service_clock_and_only_active_paid_or_trial_counts() {
        let trial = addon(AddonStatus::Active, BillingStatus::Trial, Some(1_000));
        assert!(has_active_subscription(Some(&trial), 999));
        assert!(!has_active_subscription(Some(&trial), 1_000));
        assert!(!has_active_subscription(Some(&addon(AddonStatus::Active, BillingStatus::Trial, None)), 0));
        assert!(!has_active_subscription(Some(&addon(AddonStatus::Active, BillingStatus::Overdue, None)), 0));
        assert!(!has_active_subscription(Some(&addon(AddonStatus::Suspended, BillingStatus::Paid, None)), 0));
        assert!(!has_active_subscription(Some(&addon(AddonStatus::Cancelled, BillingStatus::Paid, None)), 0));
    }
}
