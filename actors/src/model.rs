//! Domain records shared by the cores, the actors, the journal and the HTTP facade.
//!
//! Records are plain data: every field is owned, serialisable and ordered, so that the journal
//! can store them and the replay can rebuild them bit for bit.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A tenant's id as the platform names it (validated at the HTTP boundary).
pub type TenantId = smol_str::SmolStr;
/// A phone line's id: its E.164 number.
pub type LineId = smol_str::SmolStr;
/// A plan's, class's or pool's name: short, so copied inline rather than allocated.
pub type Name = smol_str::SmolStr;

/// An id numbered by a counter the journal persists, shown as a prefix and twelve digits
/// (`call_000000000042`) and parsed back strictly.
macro_rules! numbered_id {
    ($name:ident, $prefix:literal) => {
        impl $name {
            const PREFIX: &'static str = $prefix;
        }

        // The prefix and the 20 digits of `u64::MAX` fit in an `IdText`.
        const _: () = assert!($prefix.len() + 20 <= IdText::BYTES_MAX);

        impl $name {
            /// The id as text, formatted on the stack: every admission's and end's response
            /// shows one.
            pub fn text(&self) -> IdText {
                IdText::new(Self::PREFIX, self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.text().as_str())
            }
        }

        impl FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                let digits = s.strip_prefix(Self::PREFIX).ok_or(())?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                digits.parse().map($name).map_err(|_| ())
            }
        }
    };
}

/// A numbered id as text: its prefix, then its number in at least twelve digits.
#[derive(Clone, Copy)]
pub struct IdText {
    bytes: [u8; IdText::BYTES_MAX],
    len: u8,
}

impl IdText {
    /// The longest prefix (`call_`) and the 20 digits of `u64::MAX`, with room to spare.
    const BYTES_MAX: usize = 32;
    const DIGITS_MIN: usize = 12;

    fn new(prefix: &'static str, number: u64) -> IdText {
        let mut digits = [b'0'; 20];
        let (mut at, mut rest) = (digits.len(), number);
        while rest > 0 {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        let digits = &digits[at.min(digits.len() - Self::DIGITS_MIN)..];
        let mut bytes = [0; Self::BYTES_MAX];
        bytes[..prefix.len()].copy_from_slice(prefix.as_bytes());
        bytes[prefix.len()..prefix.len() + digits.len()].copy_from_slice(digits);
        IdText { bytes, len: (prefix.len() + digits.len()) as u8 }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("a prefix and digits are ASCII")
    }
}

/// A call's id. Numbers come from one counter that the journal persists, so they are unique,
/// increasing, and identical across simulation runs with the same seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CallId(pub u64);

numbered_id!(CallId, "call_");

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    /// The name serde gives it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Plans and their default concurrent limits (seed 000 §1.2). Lives in config, never in code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanTable {
    /// Plan name → default concurrent limit.
    pub limits: BTreeMap<String, u32>,
    /// Used when a plan has no limit configured (seed 000: "Fallback: 1").
    pub fallback_limit: u32,
}

impl Default for PlanTable {
    fn default() -> Self {
        let limits = [("TRIAL", 1), ("PAYG", 1), ("STARTER", 1), ("PRO", 5), ("ENTERPRISE", 5)]
            .into_iter()
            .map(|(name, limit)| (name.to_owned(), limit))
            .collect();
        PlanTable { limits, fallback_limit: 1 }
    }
}

impl PlanTable {
    /// The effective limit: `concurrent_limit_override ?? plan default ?? fallback`.
    pub fn effective_limit(&self, plan: &str, limit_override: Option<u32>) -> u32 {
        limit_override.or_else(|| self.limits.get(plan).copied()).unwrap_or(self.fallback_limit)
    }

    pub fn knows(&self, plan: &str) -> bool {
        self.limits.contains_key(plan)
    }
}

/// Priority classes and which plan belongs to which (config). Classes are ranked by their
/// position, lowest first; a plan with no class configured gets the lowest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassTable {
    pub classes: Vec<String>,
    pub plan_classes: BTreeMap<String, String>,
}

impl Default for ClassTable {
    fn default() -> Self {
        let plan_classes =
            [("TRIAL", "standard"), ("PAYG", "standard"), ("STARTER", "standard"), ("PRO", "priority"), ("ENTERPRISE", "premium")]
                .into_iter()
                .map(|(plan, class)| (plan.to_owned(), class.to_owned()))
                .collect();
        ClassTable { classes: vec!["standard".into(), "priority".into(), "premium".into()], plan_classes }
    }
}

impl ClassTable {
    /// A class's rank; an unknown name (a class dropped from config) ranks lowest.
    pub fn rank(&self, class: &str) -> usize {
        self.classes.iter().position(|c| c == class).unwrap_or(0)
    }

    pub fn class_of_plan(&self, plan: &str) -> &str {
        self.plan_classes.get(plan).map(String::as_str).unwrap_or(&self.classes[0])
    }

    pub fn knows(&self, class: &str) -> bool {
        self.classes.iter().any(|c| c == class)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddonStatus {
    Active,
    Suspended,
    Cancelled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BillingStatus {
    Paid,
    Trial,
    Overdue,
}

/// A tenant's subscription add-on (seed 004 `subscription_addons`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addon {
    pub status: AddonStatus,
    pub billing_status: BillingStatus,
    pub trial_ends_at_ms: Option<u64>,
    /// Characters a month the add-on includes (alerts at 80 % and 95 %).
    pub monthly_character_limit: Option<u64>,
    pub updated_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: TenantId,
    pub name: Option<String>,
    pub plan: String,
    pub concurrent_limit_override: Option<u32>,
    pub created_at_ms: u64,
    /// Gated by credits: an outbound admission needs a balance above zero.
    pub prepaid: bool,
    /// Feature-flag overrides: they beat the global flag.
    pub flags: BTreeMap<String, bool>,
    /// Add-ons by type.
    pub addons: BTreeMap<String, Addon>,
}

impl TenantRecord {
    /// A tenant with no name, no flag overrides and no add-ons.
    pub fn new(id: impl Into<TenantId>, plan: impl Into<String>, concurrent_limit_override: Option<u32>, created_at_ms: u64) -> Self {
        TenantRecord {
            id: id.into(),
            name: None,
            plan: plan.into(),
            concurrent_limit_override,
            created_at_ms,
            prepaid: false,
            flags: BTreeMap::new(),
            addons: BTreeMap::new(),
        }
    }
}

/// One entry of a tenant's credit ledger (1 credit = 1 second of calling).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditTx {
    /// Numbers a tenant's transactions from 1, in ledger order.
    pub number: u64,
    /// The journal event that made it.
    pub seq: u64,
    pub at_ms: u64,
    /// Positive adds, negative removes.
    pub amount: i64,
    pub reason: String,
    pub balance_after: u64,
    /// The call whose end charged this, if it was a charge.
    pub call_id: Option<CallId>,
}

/// Which voice a call asked for (seed 004): premium voices run on the premium pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Voice {
    Standard,
    Premium,
}

impl Voice {
    /// The name serde gives it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Voice::Standard => "standard",
            Voice::Premium => "premium",
        }
    }
}

/// What a line does with an inbound call when it is full (seed 002).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBusy {
    /// Inbound calls already connected are force-admitted and tracked over the limit.
    #[default]
    Track,
    /// The line answers before connecting: a full line turns the caller away busy and records a
    /// missed call, which the line's callback queue calls back when a channel frees.
    Callback,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRecord {
    pub id: LineId,
    pub tenant_id: TenantId,
    pub channels: u32,
    pub created_at_ms: u64,
    pub on_busy: OnBusy,
    /// The AI agent that answers this line (and calls back its missed callers).
    pub agent_id: Option<String>,
}

impl LineRecord {
    pub fn new(id: impl Into<LineId>, tenant_id: impl Into<TenantId>, channels: u32, created_at_ms: u64) -> Self {
        LineRecord { id: id.into(), tenant_id: tenant_id.into(), channels, created_at_ms, on_busy: OnBusy::Track, agent_id: None }
    }
}

/// A missed call's queue entry id, numbered by the journal like calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CallbackId(pub u64);

numbered_id!(CallbackId, "cb_");

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedReason {
    Busy,
    NoAnswer,
    NetworkError,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackPriority {
    High,
    Low,
}

/// Seed 002's statuses. `Completed`, `Failed` and `Cancelled` are final (a failed entry goes
/// back to pending only by an explicit retry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackStatus {
    Pending,
    Processing,
    Completed,
    Failed,
    InsufficientCredits,
    #[serde(rename = "on-hold")]
    OnHold,
    Cancelled,
}

impl CallbackStatus {
    pub const ALL: [CallbackStatus; 7] = [
        CallbackStatus::Pending,
        CallbackStatus::Processing,
        CallbackStatus::Completed,
        CallbackStatus::Failed,
        CallbackStatus::InsufficientCredits,
        CallbackStatus::OnHold,
        CallbackStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallbackStatus::Pending => "pending",
            CallbackStatus::Processing => "processing",
            CallbackStatus::Completed => "completed",
            CallbackStatus::Failed => "failed",
            CallbackStatus::InsufficientCredits => "insufficient_credits",
            CallbackStatus::OnHold => "on-hold",
            CallbackStatus::Cancelled => "cancelled",
        }
    }

    /// Still in its line's queue (counts against the queue's bound).
    pub fn is_open(self) -> bool {
        !matches!(self, CallbackStatus::Completed | CallbackStatus::Failed | CallbackStatus::Cancelled)
    }
}

/// A missed call waiting to be called back, or what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackEntry {
    pub id: CallbackId,
    pub line_id: LineId,
    pub tenant_id: TenantId,
    /// Who missed us: the number to call back.
    pub caller: String,
    pub reason: MissedReason,
    pub priority: CallbackPriority,
    pub status: CallbackStatus,
    pub missed_at_ms: u64,
    pub last_missed_at_ms: u64,
    /// How often this caller missed us while the entry was open.
    pub missed_count: u32,
    /// The callback's own call, once admitted.
    pub call_id: Option<CallId>,
    /// The dialer accepted the dial request (the call is placed; its end settles the entry).
    pub dialed: bool,
    pub failure_reason: Option<String>,
    pub updated_at_ms: u64,
    /// The attempts counted while the entry is open, oldest first: at most
    /// [`MISSED_ATTEMPTS_REMEMBERED_MAX`], the oldest forgotten past it. A retried webhook for
    /// one of them is not counted again. Emptied when the entry closes.
    #[serde(deserialize_with = "crate::codec::since_v3")]
    pub attempts: Vec<MissedAttempt>,
}

/// Attempts a callback entry remembers. Past it the oldest is forgotten, and a retry of that
/// attempt (after this many newer ones from the same caller) counts again.
pub const MISSED_ATTEMPTS_REMEMBERED_MAX: usize = 8;

/// Names one missed attempt, so that a retried webhook for it is recognised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MissedAttempt {
    /// The provider's id of the call that was turned away or missed (`provider_call_id`).
    ProviderCall(String),
    /// The `Idempotency-Key` of a turned-away admission that named no provider call.
    IdempotencyKey(String),
}

impl CallbackEntry {
    /// Whether this entry already counted the attempt.
    pub fn counted(&self, attempt: &MissedAttempt) -> bool {
        self.attempts.contains(attempt)
    }

    /// A callback's progress (`Event::CallbackUpdated`): a closed entry forgets its attempts.
    pub fn update(&mut self, status: CallbackStatus, call_id: Option<CallId>, dialed: bool, failure_reason: Option<String>, at_ms: u64) {
        self.status = status;
        self.call_id = call_id;
        self.dialed = dialed;
        self.failure_reason = failure_reason;
        self.updated_at_ms = at_ms;
        if !status.is_open() {
            self.attempts = Vec::new();
        }
    }

    /// The caller missed the line again while the entry was open.
    pub fn count_repeat(&mut self, at_ms: u64, attempt: Option<&MissedAttempt>) {
        self.missed_count += 1;
        self.last_missed_at_ms = at_ms;
        self.updated_at_ms = at_ms;
        if let Some(attempt) = attempt {
            if self.attempts.len() >= MISSED_ATTEMPTS_REMEMBERED_MAX {
                self.attempts.remove(0);
            }
            self.attempts.push(attempt.clone());
        }
    }
}

/// A call as admitted. Everything but `last_activity_at_ms` is fixed at admission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub id: CallId,
    pub tenant_id: TenantId,
    pub line_id: Option<LineId>,
    pub direction: Direction,
    pub provider_call_id: Option<String>,
    pub to: Option<String>,
    pub from: Option<String>,
    /// True when the call was force-admitted (inbound, already connected) over some limit.
    pub over_limit: bool,
    /// The tenant's plan at admission (the label its metrics carry until it ends).
    pub plan: Name,
    /// The plan's priority class at admission.
    pub class: Name,
    /// The provider pool the call holds a slot in.
    pub pool: Name,
    pub voice: Voice,
    /// A premium call placed on the standard pool instead, and why.
    pub fallback_reason: Option<String>,
    /// How long the admission waited for its pool slot.
    pub waited_ms: u64,
    pub started_at_ms: u64,
    /// Last heartbeat or status seen; the watchdog measures staleness from here.
    pub last_activity_at_ms: u64,
    /// Set when this call is an automatic callback of a missed call.
    pub callback_id: Option<CallbackId>,
    /// Set when this call dials a campaign's contact (the campaign and the contact's index).
    pub campaign: Option<(CampaignId, u32)>,
}

/// A campaign's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CampaignId(pub u64);

numbered_id!(CampaignId, "cmp_");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub phone: String,
    pub name: Option<String>,
    /// IANA time zone of the contact (the calling window is local to it); `None`: UTC.
    pub timezone: Option<String>,
}

/// A campaign as created. Its progress lives in `Campaign`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRecord {
    pub id: CampaignId,
    pub tenant_id: TenantId,
    pub line_id: LineId,
    pub contacts: Vec<Contact>,
    /// Campaign calls live at once.
    pub concurrency: u32,
    /// Calls to one lead (phone number) a day, across the tenant's campaigns (seed 001: 2).
    pub max_calls_per_lead_per_day: u32,
    /// The calling window in the contact's local time, minutes after midnight, `[start, end)`.
    pub window_start_minute: u16,
    pub window_end_minute: u16,
    pub created_at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignStatus {
    Draft,
    Running,
    Paused,
    Completed,
    Cancelled,
}

impl CampaignStatus {
    /// Still owned by its line (draft, running or paused).
    pub fn is_open(self) -> bool {
        matches!(self, CampaignStatus::Draft | CampaignStatus::Running | CampaignStatus::Paused)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactStatus {
    Pending,
    /// Admitted and durably recorded; the dial request is going out.
    Calling,
    /// The dialer accepted: the call's end settles it.
    Dialled,
    Completed,
    Failed,
    SkippedOutsideWindow,
    SkippedDailyCap,
}

impl ContactStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, ContactStatus::Pending | ContactStatus::Calling | ContactStatus::Dialled)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactState {
    pub status: ContactStatus,
    pub call_id: Option<CallId>,
    pub failure_reason: Option<String>,
}

/// A campaign and its progress, contact by contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    pub record: CampaignRecord,
    pub status: CampaignStatus,
    pub contacts: Vec<ContactState>,
    pub updated_at_ms: u64,
}

/// A call's final record. Ending is idempotent: a duplicate end returns this unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedCall {
    /// Shared, not copied: a call's record is held by its actor, the directory, the durable
    /// state and the caller at once. (Serialized exactly as a `CallRecord`.)
    pub call: Arc<CallRecord>,
    pub ended_at_ms: u64,
    pub outcome: Name,
    pub duration_s: u64,
    /// Characters synthesised, as reported by the end webhook (0 when not reported).
    pub characters: u64,
    /// What the call cost by its pool's price table.
    pub cost_cents: u64,
}

/// The outcome the watchdog records when it reclaims a stuck call.
pub const OUTCOME_RECLAIMED_STALE: &str = "reclaimed_stale";
/// The outcome of a call the provider refused to place (HTTP 429 upstream).
pub const OUTCOME_PROVIDER_REJECTED: &str = "provider_rejected";

/// The calendar date (UTC) of a Unix time in ms: year, month (1-12) and day (1-31), by Howard
/// Hinnant's `civil_from_days`.
pub fn civil_date(ms: u64) -> (i64, u32, u32) {
    let days = (ms / 86_400_000) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// The calendar month (UTC) of a Unix time in ms, as `yyyymm`.
pub fn month_of_ms(ms: u64) -> u32 {
    let (year, month, _) = civil_date(ms);
    (year * 100 + i64::from(month)) as u32
}

/// A plain outbound PRO call of tenant `t`, for unit tests.
#[cfg(test)]
pub(crate) fn test_call(n: u64, at_ms: u64) -> Arc<CallRecord> {
    Arc::new(CallRecord {
        id: CallId(n),
        tenant_id: "t".into(),
        line_id: None,
        direction: Direction::Outbound,
        provider_call_id: None,
        to: None,
        from: None,
        over_limit: false,
        plan: "PRO".into(),
        class: "priority".into(),
        pool: "standard_voice".into(),
        voice: Voice::Standard,
        fallback_reason: None,
        waited_ms: 0,
        started_at_ms: at_ms,
        last_activity_at_ms: at_ms,
        callback_id: None,
        campaign: None,
    })
}

/// A PRO tenant with no overrides, for unit tests.
#[cfg(test)]
pub(crate) fn test_tenant(id: &str) -> TenantRecord {
    TenantRecord::new(id, "PRO", None, 0)
}

/// Masks a phone number for info-level logs: `+4915112345678` → `+491*******78`.
pub fn mask_phone(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    if chars.len() <= 6 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The stack formatting is the format it replaced, for every number.
        #[test]
        fn numbered_ids_are_prefix_and_twelve_digits(n in proptest::prelude::any::<u64>(), small in 0..1_000_000u64) {
            proptest::prop_assert_eq!(CallId(n).to_string(), format!("call_{n:012}"));
            proptest::prop_assert_eq!(CallbackId(small).to_string(), format!("cb_{small:012}"));
            let text = CampaignId(n).text();
            proptest::prop_assert_eq!(text.as_str(), format!("cmp_{n:012}"));
        }
    }

    #[test]
    fn call_id_round_trips_and_rejects_garbage() {
        assert_eq!(CallId(u64::MAX).to_string(), format!("call_{}", u64::MAX));
        assert_eq!(CallId(1_234_567_890_123).to_string(), "call_1234567890123");
        assert_eq!(CallId(0).to_string(), "call_000000000000");
        assert_eq!(CampaignId(7).to_string(), "cmp_000000000007");
        let id = CallId(42);
        assert_eq!(id.to_string(), "call_000000000042");
        assert_eq!("call_000000000042".parse::<CallId>(), Ok(id));
        assert!("call_".parse::<CallId>().is_err());
        assert!("call_-1".parse::<CallId>().is_err());
        assert!("42".parse::<CallId>().is_err());
        assert_eq!(CallbackId(7).to_string().parse::<CallbackId>(), Ok(CallbackId(7)));
        assert_eq!(CampaignId(7).to_string(), "cmp_000000000007");
        assert!("call_000000000007".parse::<CampaignId>().is_err(), "each id keeps its own prefix");
    }

    #[test]
    fn effective_limit_prefers_override_then_plan_then_fallback() {
        let plans = PlanTable::default();
        assert_eq!(plans.effective_limit("PRO", Some(9)), 9);
        assert_eq!(plans.effective_limit("PRO", None), 5);
        assert_eq!(plans.effective_limit("UNKNOWN", None), 1);
    }

    #[test]
    fn month_of_ms_follows_the_calendar() {
        assert_eq!(month_of_ms(0), 197001);
        assert_eq!(month_of_ms(951_782_400_000), 200002, "2000-02-29");
        assert_eq!(month_of_ms(951_868_800_000), 200003, "2000-03-01");
        assert_eq!(month_of_ms(1_798_761_599_999), 202612, "2026-12-31T23:59:59.999");
        assert_eq!(month_of_ms(1_798_761_600_000), 202701);
    }

    #[test]
    fn mask_phone_keeps_only_prefix_and_last_two_digits() {
        assert_eq!(mask_phone("+4915112345678"), "+491********78");
        assert_eq!(mask_phone("+123"), "****");
    }
}
