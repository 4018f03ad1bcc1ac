//! Journal events: every state change in switchboard is one of these, appended in order.
//!
//! Replaying them through `DurableState::apply` rebuilds exactly the live state.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use std::collections::BTreeMap;

use crate::core::pool::Learned;
use crate::model::{
    CallId, CallRecord, CallbackEntry, CallbackId, CallbackStatus, CampaignId, CampaignRecord, CampaignStatus, ContactState, LineRecord,
    MissedAttempt, TenantId, TenantRecord,
};

/// Ties an admission to its `Idempotency-Key`, so a retry after a restart replays the response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyStamp {
    pub key: String,
    /// FNV-1a of the request's canonical JSON: same key with another body is a 422.
    pub body_hash: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    TenantCreated(TenantRecord),
    /// The tenant's full record after a PATCH, a flag override or an add-on change.
    TenantUpdated(TenantRecord),
    LineCreated(LineRecord),
    /// A pool's limits: created at boot from config, or changed live.
    PoolConfigured {
        pool: String,
        capacity: u32,
        /// Headroom reserved per class (for that class and the ones above it).
        reserved: BTreeMap<String, u32>,
    },
    /// The provider refused to place `call` (429): the pool cools down and may learn a lower
    /// capacity. The call's own end follows as a `CallEnded`.
    PoolProviderRejected {
        pool: String,
        call: CallId,
        at_ms: u64,
        cooldown_until_ms: u64,
        learned: Option<Learned>,
    },
    /// An admission that waited for a pool slot left without one.
    WaitAbandoned {
        pool: String,
        class: String,
        tenant_id: TenantId,
        waited_ms: u64,
        outcome: WaitOutcome,
    },
    /// An administrator added (positive) or removed (negative) credits.
    CreditsAdjusted {
        tenant_id: TenantId,
        amount: i64,
        reason: String,
        at_ms: u64,
    },
    /// A missed call opened a callback entry.
    MissedCallRecorded(CallbackEntry),
    /// The same caller missed the line again while their entry was open.
    MissedCallRepeated {
        id: CallbackId,
        at_ms: u64,
        /// The attempt it counted, when the request named one (format 3).
        #[serde(deserialize_with = "crate::codec::since_v3")]
        attempt: Option<MissedAttempt>,
    },
    /// A callback entry moved on (dispatch, dial, the callback call's end, retry, cancel).
    CallbackUpdated {
        id: CallbackId,
        status: CallbackStatus,
        call_id: Option<CallId>,
        dialed: bool,
        failure_reason: Option<String>,
        at_ms: u64,
    },
    CampaignCreated(CampaignRecord),
    CampaignStatusSet {
        id: CampaignId,
        status: CampaignStatus,
        at_ms: u64,
    },
    /// A contact moved on. A contact going `calling` counts one call to its lead on `day`.
    CampaignContactSet {
        id: CampaignId,
        index: u32,
        state: ContactState,
        day: Option<u32>,
        at_ms: u64,
    },
    /// A global feature flag was created or changed.
    FlagSet {
        name: String,
        enabled: bool,
    },
    CallAdmitted {
        call: Arc<CallRecord>,
        idempotency: Option<IdempotencyStamp>,
    },
    CallHeartbeat {
        id: CallId,
        at_ms: u64,
    },
    CallEnded {
        id: CallId,
        ended_at_ms: u64,
        outcome: crate::model::Name,
        duration_s: u64,
        characters: u64,
        cost_cents: u64,
    },
}

/// How a wait for a pool slot ended without a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitOutcome {
    /// `wait_ms` passed.
    TimedOut,
    /// The client went away while waiting.
    Cancelled,
    /// The provider rate-limited the pool while the request waited.
    Cooldown,
}

impl WaitOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitOutcome::TimedOut => "timed_out",
            WaitOutcome::Cancelled => "cancelled",
            WaitOutcome::Cooldown => "cooldown",
        }
    }
}

impl Event {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::TenantCreated(_) => "tenant_created",
            Event::TenantUpdated(_) => "tenant_updated",
            Event::LineCreated(_) => "line_created",
            Event::PoolConfigured { .. } => "pool_configured",
            Event::PoolProviderRejected { .. } => "pool_provider_rejected",
            Event::WaitAbandoned { .. } => "wait_abandoned",
            Event::FlagSet { .. } => "flag_set",
            Event::CreditsAdjusted { .. } => "credits_adjusted",
            Event::MissedCallRecorded(_) => "missed_call_recorded",
            Event::MissedCallRepeated { .. } => "missed_call_repeated",
            Event::CallbackUpdated { .. } => "callback_updated",
            Event::CampaignCreated(_) => "campaign_created",
            Event::CampaignStatusSet { .. } => "campaign_status_set",
            Event::CampaignContactSet { .. } => "campaign_contact_set",
            Event::CallAdmitted { .. } => "call_admitted",
            Event::CallHeartbeat { .. } => "call_heartbeat",
            Event::CallEnded { .. } => "call_ended",
        }
    }
}

/// FNV-1a, 64 bit: stable across processes and versions (unlike `DefaultHasher`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME))
}
