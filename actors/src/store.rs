//! Where the journal's bytes go. Production stores them in sled (`src/journal.rs`); tests and
//! simulations use `MemoryStore`, which starts no thread and so keeps paused time deterministic.
//!
//! Whatever the store: events in sequence-number order (the sled store keeps one record per
//! group commit, keyed by its last sequence number; the memory store one entry per event), and
//! at most two snapshots of the durable state. Writing snapshot N drops snapshot N-1's events
//! and snapshot N-1 itself, so the log on disk stays within about two snapshot intervals.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::codec;
use crate::event::Event;
use crate::state::{DurableState, ReplayError};

/// One group commit: events in order, and maybe a snapshot taken right after the last of them.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub events: Vec<(u64, Vec<u8>)>,
    pub snapshot: Option<(u64, Vec<u8>)>,
}

impl WriteBatch {
    /// The sequence number of its last event.
    pub fn last_seq(&self) -> Option<u64> {
        self.events.last().map(|(seq, _)| *seq)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Io(String),
    #[error("journal record {seq}: {source}")]
    Codec { seq: u64, source: codec::CodecError },
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Called for each stored event with its sequence number and bytes.
pub type Visit<'a> = dyn FnMut(u64, &[u8]) -> Result<(), StoreError> + 'a;

pub trait Store: Send + Sync + 'static {
    /// Writes the whole batch and makes it durable before returning. All or nothing: a batch
    /// that fails must not be acknowledged. The store takes the batch: a store that keeps the
    /// bytes keeps them without a copy.
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError>;
    /// True when `write` blocks on a disk: the journal writer then runs it off the async workers.
    fn blocks(&self) -> bool;
    /// The newest snapshot: its sequence number and bytes.
    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
    /// Releases the storage (files, locks) after the last write. Later writes fail.
    fn close(&self) {}
    /// Calls `visit` for every event after `seq`, in order. Stops at the first error.
    fn scan_after(&self, seq: u64, visit: &mut Visit<'_>) -> Result<(), StoreError>;
}

/// Rebuilds the durable state: the newest snapshot, then every event after it.
pub fn recover(store: &dyn Store) -> Result<DurableState, StoreError> {
    let mut state = match store.latest_snapshot()? {
        Some((seq, bytes)) => codec::decode::<DurableState>(&bytes).map_err(|source| StoreError::Codec { seq, source })?,
        None => DurableState::new(),
    };
    store.scan_after(state.last_seq, &mut |seq, bytes| {
        let event: Event = codec::decode(bytes).map_err(|source| StoreError::Codec { seq, source })?;
        state.apply(seq, &event)?;
        Ok(())
    })?;
    Ok(state)
}

/// An in-memory store for tests and simulations.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    events: BTreeMap<u64, Vec<u8>>,
    snapshots: BTreeMap<u64, Vec<u8>>,
}

impl MemoryStore {
    pub fn event_count(&self) -> usize {
        self.inner.lock().expect("memory store lock").events.len()
    }
}

impl Store for MemoryStore {
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().expect("memory store lock");
        inner.events.extend(batch.events);
        if let Some((seq, bytes)) = batch.snapshot {
            if let Some(previous) = inner.snapshots.keys().next_back().copied() {
                inner.events.retain(|event_seq, _| *event_seq > previous);
                inner.snapshots.retain(|snapshot_seq, _| *snapshot_seq >= previous);
            }
            inner.snapshots.insert(seq, bytes);
            while inner.snapshots.len() > 2 {
                inner.snapshots.pop_first();
            }
        }
        Ok(())
    }

    fn blocks(&self) -> bool {
        false
    }

    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let inner = self.inner.lock().expect("memory store lock");
        Ok(inner.snapshots.iter().next_back().map(|(seq, bytes)| (*seq, bytes.clone())))
    }

    fn scan_after(&self, seq: u64, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        let inner = self.inner.lock().expect("memory store lock");
        for (event_seq, bytes) in inner.events.range(seq + 1..) {
            visit(*event_seq, bytes)?;
        }
        Ok(())
    }
}
