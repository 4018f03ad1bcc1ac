//! Journal events: every state change in switchboard is one of these, appended in order.
//!
//! Replaying them through `DurableState::apply` rebuilds exactly the live state.

use serde::{Deserialize, Serialize};

use crate::model::{CallId, CallRecord, LineRecord, TenantRecord};

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
    /// The tenant's full record after a PATCH.
    TenantUpdated(TenantRecord),
    LineCreated(LineRecord),
    PlatformCapacitySet {
        capacity: u32,
    },
    CallAdmitted {
        call: CallRecord,
        idempotency: Option<IdempotencyStamp>,
    },
    CallHeartbeat {
        id: CallId,
        at_ms: u64,
    },
    CallEnded {
        id: CallId,
        ended_at_ms: u64,
        outcome: String,
        duration_s: u64,
    },
}

impl Event {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::TenantCreated(_) => "tenant_created",
            Event::TenantUpdated(_) => "tenant_updated",
            Event::LineCreated(_) => "line_created",
            Event::PlatformCapacitySet { .. } => "platform_capacity_set",
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
