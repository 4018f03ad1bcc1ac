//! The journal on sled: the production `Store`.
//!
//! Two trees in one sled database under `<data_dir>/journal`:
//! - `events`: one record per group commit. Key: the sequence number of the batch's last event
//!   (big-endian u64, so sled's order is the log's order); value: the codec encoding of the
//!   batch's `(seq, event record)` pairs. One sled insert per batch instead of one per event:
//!   sled copies a leaf node on every insert, and that copying dominated the profile.
//! - `snapshots`: key: the sequence number the snapshot was taken at; value: the state.
//!
//! sled's background flush is disabled: nothing is durable until the journal writer's group
//! commit calls `write`, which inserts the batch, flushes sled, and then `fdatasync`s sled's log
//! file. The last step is ours: on Linux, sled 0.34's flush ends in `sync_file_range`, which
//! survives a killed process but neither flushes the drive's write cache nor the metadata of a
//! growing file, so it does not survive a power loss.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use switchboard_actors::codec;
use switchboard_actors::store::{Store, StoreError, Visit, WriteBatch};

/// One group commit as stored: consecutive `(seq, encoded event)` pairs.
type StoredBatch = Vec<(u64, Vec<u8>)>;

/// How long `open` waits for another holder of the database lock (a process still exiting).
const LOCK_WAIT_MS_MAX: u64 = 5_000;
const LOCK_POLL_MS: u64 = 20;

pub struct SledStore {
    /// `None` once closed: every sled handle is dropped, which releases the files and the lock.
    inner: Mutex<Option<Inner>>,
}

struct Inner {
    db: sled::Db,
    events: sled::Tree,
    snapshots: sled::Tree,
    /// sled's log file (`journal/db`), opened only to `fdatasync` it after each flush.
    log_file: std::fs::File,
}

fn io(error: sled::Error) -> StoreError {
    StoreError::Io(error.to_string())
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::Io(format!("journal key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

impl SledStore {
    pub fn open(data_dir: &Path) -> Result<SledStore, StoreError> {
        let config = sled::Config::new().path(data_dir.join("journal")).flush_every_ms(None).mode(sled::Mode::HighThroughput);
        let mut waited_ms = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(error)) if error.kind() == std::io::ErrorKind::WouldBlock && waited_ms < LOCK_WAIT_MS_MAX => {
                    std::thread::sleep(std::time::Duration::from_millis(LOCK_POLL_MS));
                    waited_ms += LOCK_POLL_MS;
                }
                Err(error) => return Err(io(error)),
            }
        };
        let events = db.open_tree("events").map_err(io)?;
        let snapshots = db.open_tree("snapshots").map_err(io)?;
        let log_path = data_dir.join("journal").join("db");
        let log_file = std::fs::File::open(&log_path).map_err(|e| StoreError::Io(format!("opening {}: {e}", log_path.display())))?;
        // The directory entries sled created or renamed while opening (`journal/` itself, its
        // log file, `blobs/`, its page-cache snapshot), and the data dir's own, are on disk
        // before anything is written, let alone acknowledged: syncing a file does not make its
        // name durable.
        let sync_dir = |dir: &Path| std::fs::File::open(dir).and_then(|handle| handle.sync_all());
        for dir in [data_dir.to_owned(), data_dir.join("journal")] {
            sync_dir(&dir).map_err(|e| StoreError::Io(format!("syncing the directory {}: {e}", dir.display())))?;
        }
        // The parent may not be ours to read (a data dir under a root-owned 0711 directory):
        // there a failed sync is reported, not fatal.
        let parent = data_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Err(error) = sync_dir(parent) {
            tracing::warn!(dir = %parent.display(), %error, "could not sync the data dir's parent directory; a new data dir's name may not survive a power cut");
        }
        Ok(SledStore { inner: Mutex::new(Some(Inner { db, events, snapshots, log_file })) })
    }

    fn with<R>(&self, run: impl FnOnce(&Inner) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let guard: MutexGuard<'_, Option<Inner>> = self.inner.lock().map_err(|_| StoreError::Io("journal store lock poisoned".into()))?;
        run(guard.as_ref().ok_or_else(|| StoreError::Io("the journal is closed".into()))?)
    }
}

impl Store for SledStore {
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.with(|inner| inner.write(&batch))
    }

    fn blocks(&self) -> bool {
        true
    }

    fn close(&self) {
        match self.inner.lock() {
            Ok(mut guard) => {
                if let Some(inner) = guard.take() {
                    let _ = inner.db.flush();
                    let _ = inner.log_file.sync_data();
                }
            }
            // A write panicked inside sled (the journal has failed, and a restart replays what
            // is on disk). sled's own drop would flush again and could wait forever on a buffer
            // the panic left half-written, so its handles are leaked instead; the process is
            // about to exit, which releases the files and the lock.
            Err(poisoned) => std::mem::forget(poisoned.into_inner().take()),
        }
    }

    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.with(|inner| match inner.snapshots.last().map_err(io)? {
            Some((key, value)) => Ok(Some((seq_of(&key)?, value.to_vec()))),
            None => Ok(None),
        })
    }

    fn scan_after(&self, seq: u64, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        self.with(|inner| {
            // Batches are keyed by their last seq: the first one at or after seq + 1 may start
            // before it, so events at or below `seq` are skipped.
            for entry in inner.events.range((seq + 1).to_be_bytes()..) {
                let (key, value) = entry.map_err(io)?;
                let last = seq_of(&key)?;
                let batch: StoredBatch = codec::decode(&value).map_err(|source| StoreError::Codec { seq: last, source })?;
                if batch.last().map(|(s, _)| *s) != Some(last) {
                    return Err(StoreError::Io(format!("journal batch {last} does not end at its key")));
                }
                for (event_seq, bytes) in batch.iter().filter(|(s, _)| *s > seq) {
                    visit(*event_seq, bytes)?;
                }
            }
            Ok(())
        })
    }
}

impl Inner {
    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        if let Some(last) = batch.last_seq() {
            let record = codec::encode(&batch.events).map_err(|source| StoreError::Codec { seq: last, source })?;
            self.events.insert(last.to_be_bytes(), record).map_err(io)?;
        }
        if let Some((seq, bytes)) = &batch.snapshot {
            self.snapshots.insert(seq.to_be_bytes(), bytes.as_slice()).map_err(io)?;
            // The snapshot must be durable before the log it replaces is dropped.
            self.make_durable()?;
            self.prune_before(*seq)?;
        }
        self.make_durable()
    }

    fn make_durable(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(io)?;
        self.log_file.sync_data().map_err(|e| StoreError::Io(format!("fdatasync of the journal: {e}")))
    }

    /// Drops the snapshot before `newest` and every batch it covers (a batch ends at or below
    /// that snapshot's seq).
    fn prune_before(&self, newest: u64) -> Result<(), StoreError> {
        let Some((key, _)) = self.snapshots.range(..newest.to_be_bytes()).next_back().transpose().map_err(io)? else {
            return Ok(());
        };
        let previous = seq_of(&key)?;
        let mut removals = sled::Batch::default();
        for entry in self.events.range(..=previous.to_be_bytes()) {
            removals.remove(entry.map_err(io)?.0);
        }
        self.events.apply_batch(removals).map_err(io)?;
        let mut old_snapshots = sled::Batch::default();
        for entry in self.snapshots.range(..newest.to_be_bytes()) {
            old_snapshots.remove(entry.map_err(io)?.0);
        }
        self.snapshots.apply_batch(old_snapshots).map_err(io)
    }
}
