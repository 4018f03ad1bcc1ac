//! The one place where switchboard encodes what it stores.
//!
//! Every stored record is `[format version byte][bincode 2 (standard config) of the value]`.
//! Records are written in [`FORMAT_VERSION`] and read back from [`FORMAT_VERSION_OLDEST`] on,
//! so a new binary starts on the data dir an older one left. A reader that meets a version it
//! does not know refuses the record instead of guessing, so an old binary never misreads a
//! newer journal.
//!
//! How a format grows: a field added in version N is marked `#[serde(deserialize_with =
//! "crate::codec::since_v3")]` (one such function per version), and reads as its `Default` from
//! a record older than N. New event kinds go at the end of `Event`, which leaves the older ones'
//! encodings as they were. Anything else (a field removed, retyped or moved between variants)
//! needs a converter from the old shape and a test that reads the old bytes.
//!
//! | Version | Change |
//! |---|---|
//! | 2 | pools and priority classes (commit c65cb22). Read as the last format-2 build wrote it (commit 4bacf62): development builds before it inserted event kinds and fields under the same version byte, and their journals are not supported |
//! | 3 | a callback entry remembers the attempts it counted: `CallbackEntry::attempts`, `MissedCallRepeated::attempt` |

use std::cell::Cell;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// The version this binary writes. Bump when the encoding of any stored type changes.
pub const FORMAT_VERSION: u8 = 3;
/// The oldest version this binary still reads.
pub const FORMAT_VERSION_OLDEST: u8 = 2;

thread_local! {
    /// The version of the record being decoded on this thread (decoding is synchronous).
    static READING: Cell<u8> = const { Cell::new(FORMAT_VERSION) };
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("record has format version {found}, this binary reads versions {FORMAT_VERSION_OLDEST} to {FORMAT_VERSION}")]
    UnknownVersion { found: u8 },
    #[error("record does not decode: {0}")]
    Decode(String),
    #[error("record has {0} trailing bytes")]
    Trailing(usize),
    #[error("value does not encode: {0}")]
    Encode(String),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard()).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if !(FORMAT_VERSION_OLDEST..=FORMAT_VERSION).contains(&version) {
        return Err(CodecError::UnknownVersion { found: version });
    }
    let (value, read) = {
        let _reading = Reading::version(version);
        bincode::serde::decode_from_slice(body, bincode::config::standard()).map_err(|e| CodecError::Decode(e.to_string()))?
    };
    if read != body.len() {
        return Err(CodecError::Trailing(body.len() - read));
    }
    Ok(value)
}

/// Sets the thread's reading version for one decode, and puts the previous one back after it
/// (also on a panic), so a decode nested in another reads its own record's version.
struct Reading(u8);

impl Reading {
    fn version(version: u8) -> Reading {
        Reading(READING.replace(version))
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        READING.set(self.0);
    }
}

/// Reads a field added in format 3: a record of format 2 does not hold it, and reads it as its
/// default. Outside a decode (JSON, for one) the field is an ordinary one.
pub fn since_v3<'de, T: Deserialize<'de> + Default, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
    if READING.get() < 3 { Ok(T::default()) } else { T::deserialize(deserializer) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    #[test]
    fn round_trips_and_refuses_unknown_versions() {
        let event = Event::FlagSet { name: "premium_voices".into(), enabled: true };
        let bytes = encode(&event).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Event>(&bytes).unwrap(), event);
        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        assert!(matches!(decode::<Event>(&newer), Err(CodecError::UnknownVersion { .. })));
        let mut longer = bytes;
        longer.push(0);
        assert!(matches!(decode::<Event>(&longer), Err(CodecError::Trailing(1))));
        assert!(matches!(decode::<Event>(&[]), Err(CodecError::Empty)));
        let mut older = encode(&event).unwrap();
        older[0] = FORMAT_VERSION_OLDEST - 1;
        assert!(matches!(decode::<Event>(&older), Err(CodecError::UnknownVersion { found: 1 })));
    }

    /// Format 2's shapes, as that binary wrote them: `Event`'s first seven variants stand in as
    /// unit variants (bincode writes only a variant's index before its fields).
    mod v2 {
        use serde::Serialize;

        use crate::model::{CallId, CallbackId, CallbackPriority, CallbackStatus, MissedReason};

        #[derive(Serialize)]
        pub struct CallbackEntry {
            pub id: CallbackId,
            pub line_id: String,
            pub tenant_id: String,
            pub caller: String,
            pub reason: MissedReason,
            pub priority: CallbackPriority,
            pub status: CallbackStatus,
            pub missed_at_ms: u64,
            pub last_missed_at_ms: u64,
            pub missed_count: u32,
            pub call_id: Option<CallId>,
            pub dialed: bool,
            pub failure_reason: Option<String>,
            pub updated_at_ms: u64,
        }

        #[derive(Serialize)]
        #[allow(dead_code)]
        pub enum Event {
            TenantCreated,
            TenantUpdated,
            LineCreated,
            PoolConfigured,
            PoolProviderRejected,
            WaitAbandoned,
            CreditsAdjusted,
            MissedCallRecorded(CallbackEntry),
            MissedCallRepeated { id: CallbackId, at_ms: u64 },
        }

        /// The entry as format 2 held it: everything but its attempts.
        impl From<&crate::model::CallbackEntry> for CallbackEntry {
            fn from(entry: &crate::model::CallbackEntry) -> Self {
                CallbackEntry {
                    id: entry.id,
                    line_id: entry.line_id.to_string(),
                    tenant_id: entry.tenant_id.to_string(),
                    caller: entry.caller.clone(),
                    reason: entry.reason,
                    priority: entry.priority,
                    status: entry.status,
                    missed_at_ms: entry.missed_at_ms,
                    last_missed_at_ms: entry.last_missed_at_ms,
                    missed_count: entry.missed_count,
                    call_id: entry.call_id,
                    dialed: entry.dialed,
                    failure_reason: entry.failure_reason.clone(),
                    updated_at_ms: entry.updated_at_ms,
                }
            }
        }

        pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
            let mut out = vec![2];
            bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard()).unwrap();
            out
        }
    }

    #[test]
    fn format_2_records_read_with_no_attempts() {
        use crate::model::{CallId, CallbackEntry, CallbackId, CallbackPriority, CallbackStatus, MissedAttempt, MissedReason};
        let entry = CallbackEntry {
            id: CallbackId(7),
            line_id: "+14155550100".into(),
            tenant_id: "acme".into(),
            caller: "+14155550111".into(),
            reason: MissedReason::NoAnswer,
            priority: CallbackPriority::High,
            status: CallbackStatus::Processing,
            missed_at_ms: 1_000,
            last_missed_at_ms: 2_000,
            missed_count: 2,
            call_id: Some(CallId(9)),
            dialed: true,
            failure_reason: Some("busy".into()),
            updated_at_ms: 3_000,
            attempts: Vec::new(),
        };
        let old = v2::CallbackEntry::from(&entry);
        assert_eq!(decode::<CallbackEntry>(&v2::encode(&old)).unwrap(), entry);
        let recorded = v2::encode(&v2::Event::MissedCallRecorded(old));
        assert_eq!(decode::<Event>(&recorded).unwrap(), Event::MissedCallRecorded(entry.clone()));
        let repeated = v2::encode(&v2::Event::MissedCallRepeated { id: CallbackId(7), at_ms: 4_000 });
        assert_eq!(decode::<Event>(&repeated).unwrap(), Event::MissedCallRepeated { id: CallbackId(7), at_ms: 4_000, attempt: None });

        // Format 3 keeps what format 2 cannot hold, and a decode leaves the thread reading 3.
        let attempts = vec![MissedAttempt::ProviderCall("CA1".into()), MissedAttempt::IdempotencyKey("k".into())];
        let entry = CallbackEntry { attempts, ..entry };
        assert_eq!(decode::<CallbackEntry>(&encode(&entry).unwrap()).unwrap(), entry);
        let repeated = Event::MissedCallRepeated { id: CallbackId(7), at_ms: 5, attempt: Some(MissedAttempt::ProviderCall("CA2".into())) };
        assert_eq!(decode::<Event>(&encode(&repeated).unwrap()).unwrap(), repeated);
        assert_eq!(READING.get(), FORMAT_VERSION);
        // Format 3's bytes under format 2's label read as something else, or not at all: the
        // version byte is what tells them apart.
        let mut mislabelled = encode(&entry).unwrap();
        mislabelled[0] = 2;
        assert!(decode::<CallbackEntry>(&mislabelled).is_err());
    }
}
