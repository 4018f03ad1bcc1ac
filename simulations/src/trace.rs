//! The simulation's journal store: the in-memory store, plus a watcher that reads every event
//! as the journal writer makes it durable. From the events alone (not the actors' own
//! counters) it keeps the digest of the trace, its own model of who holds what, the pools'
//! concurrency over time, and the invariants that must hold at each admission.
//!
//! The watching (decoding every event, hashing, the model) runs on a thread of its own, so a
//! run uses the machine's second core instead of slowing the actors' thread. It is still
//! deterministic: batches are watched in the order they were written, each with the virtual
//! time of its write, and every read of the store or the watcher first waits until everything
//! written so far has been watched.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use switchboard_actors::clock::Clock;
use switchboard_actors::codec;
use switchboard_actors::event::Event;
use switchboard_actors::model::{CallId, LineId, OUTCOME_PROVIDER_REJECTED, OUTCOME_RECLAIMED_STALE, PlanTable, TenantId};
use switchboard_actors::store::{MemoryStore, Store, StoreError, Visit, WriteBatch};

use crate::report::{ClassSeries, PoolStats, Timeline};

/// Buckets in the concurrency timeline; past it, neighbouring buckets merge (resolution halves).
pub const TIMELINE_BUCKETS_MAX: usize = 2_000;
/// Violations kept per invariant as examples (all are counted).
pub const VIOLATIONS_KEPT: usize = 5;
/// Events handed to the watcher thread at once: one wake-up per chunk, not per batch (a
/// wake-up per batch cost a fifth of the run in context switches).
pub const HANDOFF_EVENTS: usize = 8_192;
/// Chunks handed over and not yet watched; past it a write waits for the watcher.
pub const CHUNKS_IN_FLIGHT_MAX: usize = 16;

pub struct TraceStore {
    clock: Arc<dyn Clock>,
    shared: Arc<Shared>,
    sender: Mutex<Option<SyncSender<Vec<Written>>>>,
    /// Written batches not yet handed over, and their events.
    pending: Mutex<(Vec<Written>, usize)>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Shared {
    memory: MemoryStore,
    watcher: Mutex<Watcher>,
    progress: Mutex<Progress>,
    watched: Condvar,
}

#[derive(Default)]
struct Progress {
    written: u64,
    watched: u64,
    failed: Option<String>,
}

/// A batch as written, and when (virtual time).
struct Written {
    now_ms: u64,
    batch: WriteBatch,
}

impl TraceStore {
    pub fn new(clock: Arc<dyn Clock>, watcher: Watcher) -> TraceStore {
        let shared = Arc::new(Shared {
            memory: MemoryStore::default(),
            watcher: Mutex::new(watcher),
            progress: Mutex::new(Progress::default()),
            watched: Condvar::new(),
        });
        let (sender, receiver) = sync_channel(CHUNKS_IN_FLIGHT_MAX);
        let worker = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new().name("switchboard-sim-trace".into()).spawn(move || watch(&shared, &receiver))
        };
        let worker = worker.expect("start the trace watcher thread");
        TraceStore {
            clock,
            shared,
            sender: Mutex::new(Some(sender)),
            pending: Mutex::new((Vec::new(), 0)),
            worker: Mutex::new(Some(worker)),
        }
    }

    /// Hands the pending batches to the watcher thread.
    fn hand_over(&self) -> Result<(), StoreError> {
        let chunk = {
            let mut pending = self.pending.lock().expect("trace pending lock");
            pending.1 = 0;
            std::mem::take(&mut pending.0)
        };
        if chunk.is_empty() {
            return Ok(());
        }
        self.shared.progress.lock().expect("trace progress lock").written += chunk.len() as u64;
        let sender = self.sender.lock().expect("trace sender lock");
        let sender = sender.as_ref().ok_or_else(|| StoreError::Io("the trace store is closed".into()))?;
        sender.send(chunk).map_err(|_| StoreError::Io("the trace watcher stopped".into()))
    }

    /// Waits until every batch written so far has been watched.
    fn settle(&self) -> Result<(), StoreError> {
        self.hand_over()?;
        let mut progress = self.shared.progress.lock().expect("trace progress lock");
        while progress.watched < progress.written && progress.failed.is_none() {
            let alive = self.worker.lock().expect("trace worker lock").as_ref().is_some_and(|w| !w.is_finished());
            if !alive {
                return Err(StoreError::Io("the trace watcher stopped".into()));
            }
            progress = self.shared.watched.wait_timeout(progress, Duration::from_millis(50)).expect("trace progress lock").0;
        }
        match &progress.failed {
            Some(why) => Err(StoreError::Io(why.clone())),
            None => Ok(()),
        }
    }

    /// The watcher, once it has seen everything written so far.
    pub fn watcher(&self) -> MutexGuard<'_, Watcher> {
        if let Err(error) = self.settle() {
            panic!("the trace watcher failed: {error}");
        }
        self.shared.watcher.lock().expect("trace watcher lock")
    }
}

impl Drop for TraceStore {
    fn drop(&mut self) {
        drop(self.sender.lock().expect("trace sender lock").take());
        if let Some(worker) = self.worker.lock().expect("trace worker lock").take() {
            let _ = worker.join();
        }
    }
}

/// The watcher thread: stores and watches each batch in the order written.
fn watch(shared: &Shared, receiver: &Receiver<Vec<Written>>) {
    while let Ok(chunk) = receiver.recv() {
        let mut failed = None;
        let watched = chunk.len() as u64;
        {
            let mut watcher = shared.watcher.lock().expect("trace watcher lock");
            for Written { now_ms, batch } in chunk {
                for (seq, bytes) in &batch.events {
                    match codec::decode::<Event>(bytes) {
                        Ok(event) => watcher.observe(now_ms, *seq, bytes, &event),
                        Err(error) => failed = Some(format!("journal record {seq}: {error}")),
                    }
                }
                if let Err(error) = shared.memory.write(batch) {
                    failed = Some(error.to_string());
                }
            }
        }
        let mut progress = shared.progress.lock().expect("trace progress lock");
        progress.watched += watched;
        if progress.failed.is_none() {
            progress.failed = failed;
        }
        shared.watched.notify_all();
    }
}

impl Store for TraceStore {
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let written = Written { now_ms: self.clock.now_ms(), batch };
        let full = {
            let mut pending = self.pending.lock().expect("trace pending lock");
            pending.1 += written.batch.events.len();
            pending.0.push(written);
            pending.1 >= HANDOFF_EVENTS
        };
        if full { self.hand_over() } else { Ok(()) }
    }

    fn blocks(&self) -> bool {
        false
    }

    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.settle()?;
        self.shared.memory.latest_snapshot()
    }

    fn scan_after(&self, seq: u64, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        self.settle()?;
        self.shared.memory.scan_after(seq, visit)
    }
}

/// One violated invariant: its count and the first few examples.
#[derive(Clone, Debug, Default)]
pub struct Violations {
    pub count: u64,
    pub examples: Vec<String>,
}

impl Violations {
    pub fn add(&mut self, example: impl FnOnce() -> String) {
        self.count += 1;
        if self.examples.len() < VIOLATIONS_KEPT {
            self.examples.push(example());
        }
    }
}

#[derive(Clone, Debug)]
struct LiveCall {
    pool: usize,
    class: usize,
    tenant: TenantId,
    line: Option<LineId>,
    /// Force-admitted over a limit: not counted against limits (see `Counts`).
    over_limit: bool,
}

/// Calls holding a slot: all of them, and those not force-admitted over a limit. A limit
/// bounds the second: an inbound call the provider already connected is recorded whatever
/// the limits say, and the admissions racing it were counted before it (the actors reserve
/// before the journal orders), so only the second count is the actors' promise.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    all: u32,
    regular: u32,
}

impl Counts {
    fn add(&mut self, over_limit: bool) {
        self.all += 1;
        self.regular += u32::from(!over_limit);
    }

    fn remove(&mut self, over_limit: bool) {
        self.all -= 1;
        self.regular -= u32::from(!over_limit);
    }
}

#[derive(Clone, Debug, Default)]
struct PoolTrack {
    capacity: u32,
    active: Counts,
    since_ms: u64,
    stats: PoolStats,
    /// ∫ active dt and ∫ capacity dt over the traffic period (ms).
    active_area: f64,
    capacity_area: f64,
    /// The cooldown in progress (or the last one): from, until. Overlapping cooldowns merge.
    cooldown: Option<(u64, u64)>,
    /// A capacity cut at this virtual instant, and the capacity before it: grants the arbiter
    /// made before the cut reach the journal after it, at the same instant (nothing in an
    /// admission waits on time between its grant and its append).
    cut: Option<(u64, u32)>,
}

#[derive(Clone, Debug)]
struct TenantTrack {
    plan: String,
    limit_override: Option<u32>,
    active: Counts,
}

/// What the watcher learns from the journal.
pub struct Watcher {
    plans: PlanTable,
    classes: Vec<String>,
    pools: Vec<String>,
    traffic_end_ms: u64,
    start_ms: u64,
    digest: u64,
    pub events: u64,
    live: BTreeMap<CallId, LiveCall>,
    tenants: BTreeMap<TenantId, TenantTrack>,
    lines: BTreeMap<LineId, (u32, Counts)>,
    pool_tracks: Vec<PoolTrack>,
    /// Calls ended by an outcome that the report counts, by tenant.
    pub reclaimed_stale: BTreeMap<TenantId, u64>,
    pub provider_rejected: BTreeMap<TenantId, u64>,
    pub capacity_exceeded: Violations,
    pub tenant_limit_exceeded: Violations,
    pub line_channels_exceeded: Violations,
    pub unknown_call_ended: Violations,
    timeline: Timeline,
    /// Active calls per class now (all pools), for the timeline.
    class_active: Vec<u32>,
    bucket: usize,
}

impl Watcher {
    /// `start_ms`: the virtual time the run starts at.
    pub fn new(start_ms: u64, plans: PlanTable, classes: Vec<String>, pools: Vec<String>, traffic_ms: u64) -> Watcher {
        let bucket_ms = (traffic_ms / 200).max(1_000);
        let timeline = Timeline {
            bucket_ms,
            classes: classes.iter().map(|c| ClassSeries { class: c.clone(), peaks: vec![0] }).collect(),
            capacity: vec![0],
        };
        let pool_tracks = pools.iter().map(|_| PoolTrack { since_ms: start_ms, ..PoolTrack::default() }).collect();
        Watcher {
            plans,
            class_active: vec![0; classes.len()],
            classes,
            pools,
            traffic_end_ms: start_ms + traffic_ms,
            start_ms,
            digest: 0xcbf2_9ce4_8422_2325,
            events: 0,
            live: BTreeMap::new(),
            tenants: BTreeMap::new(),
            lines: BTreeMap::new(),
            pool_tracks,
            reclaimed_stale: BTreeMap::new(),
            provider_rejected: BTreeMap::new(),
            capacity_exceeded: Violations::default(),
            tenant_limit_exceeded: Violations::default(),
            line_channels_exceeded: Violations::default(),
            unknown_call_ended: Violations::default(),
            timeline,
            bucket: 0,
        }
    }

    fn hash(&mut self, bytes: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        for byte in bytes {
            self.digest = (self.digest ^ u64::from(*byte)).wrapping_mul(PRIME);
        }
    }

    pub fn digest(&self) -> String {
        format!("{:016x}", self.digest)
    }

    /// Live calls by the journal's account.
    pub fn live_calls(&self) -> usize {
        self.live.len()
    }

    /// The oldest live calls of `pool` (at most `n`).
    pub fn oldest_in_pool(&self, pool: &str, n: usize) -> Vec<CallId> {
        let Some(index) = self.pools.iter().position(|p| p == pool) else { return Vec::new() };
        self.live.iter().filter(|(_, call)| call.pool == index).map(|(id, _)| *id).take(n).collect()
    }

    pub fn oldest_call(&self) -> Option<CallId> {
        self.live.keys().next().copied()
    }

    fn observe(&mut self, now_ms: u64, seq: u64, bytes: &[u8], event: &Event) {
        self.events += 1;
        self.hash(&seq.to_be_bytes());
        self.hash(bytes);
        // The timeline's buckets up to now take the levels from before this event.
        self.advance(now_ms);
        match event {
            Event::TenantCreated(record) | Event::TenantUpdated(record) => {
                let active = self.tenants.get(&record.id).map_or(Counts::default(), |t| t.active);
                let track = TenantTrack { plan: record.plan.clone(), limit_override: record.concurrent_limit_override, active };
                self.tenants.insert(record.id.clone(), track);
            }
            Event::LineCreated(record) => {
                self.lines.insert(record.id.clone(), (record.channels, Counts::default()));
            }
            Event::PoolConfigured { pool, capacity, .. } => {
                if let Some(index) = self.pools.iter().position(|p| p == pool) {
                    self.settle(index, now_ms);
                    let track = &mut self.pool_tracks[index];
                    if track.stats.capacity_start == 0 {
                        track.stats.capacity_start = *capacity;
                    } else if *capacity < track.capacity {
                        track.cut = Some((now_ms, track.capacity));
                    }
                    track.capacity = *capacity;
                    track.stats.capacity_end = *capacity;
                    self.record_peak();
                }
            }
            Event::PoolProviderRejected { pool, cooldown_until_ms, at_ms, .. } => {
                if let Some(index) = self.pools.iter().position(|p| p == pool) {
                    let track = &mut self.pool_tracks[index];
                    track.stats.provider_rejections += 1;
                    track.cooldown = match track.cooldown {
                        Some((from, until)) if *at_ms <= until => Some((from, until.max(*cooldown_until_ms))),
                        previous => {
                            if let Some((from, until)) = previous {
                                track.stats.cooldown_ms += until.saturating_sub(from);
                            }
                            Some((*at_ms, *cooldown_until_ms))
                        }
                    };
                }
            }
            Event::CallAdmitted { call, .. } => self.admitted(call, now_ms),
            Event::CallEnded { id, outcome, .. } => self.ended(*id, outcome, now_ms),
            _ => {}
        }
    }

    fn admitted(&mut self, call: &switchboard_actors::model::CallRecord, now_ms: u64) {
        let pool = self.pools.iter().position(|p| *p == call.pool).unwrap_or(0);
        let class = self.classes.iter().position(|c| *c == call.class).unwrap_or(0);
        self.settle(pool, now_ms);
        let track = &mut self.pool_tracks[pool];
        let over_limit = call.over_limit;
        track.active.add(over_limit);
        track.stats.peak = track.stats.peak.max(track.active.all);
        // Only a force-admitted inbound call may take a slot past a limit.
        let checked = !over_limit;
        let capacity = match track.cut {
            Some((at_ms, before)) if at_ms == now_ms => track.capacity.max(before),
            _ => track.capacity,
        };
        if checked && track.active.regular > capacity {
            let active = track.active.regular;
            self.capacity_exceeded.add(|| format!("{} admitted to {} as call {active} of capacity {capacity}", call.id, call.pool));
        }
        if let Some(tenant) = self.tenants.get_mut(&call.tenant_id) {
            tenant.active.add(over_limit);
            let limit = self.plans.effective_limit(&tenant.plan, tenant.limit_override);
            if checked && tenant.active.regular > limit {
                let active = tenant.active.regular;
                let direction = call.direction.as_str();
                self.tenant_limit_exceeded
                    .add(|| format!("{} ({direction}) made tenant {} hold {active} of limit {limit}", call.id, call.tenant_id));
            }
        }
        if let Some(line) = &call.line_id
            && let Some((channels, active)) = self.lines.get_mut(line)
        {
            active.add(over_limit);
            if checked && active.regular > *channels {
                let (active, channels) = (active.regular, *channels);
                self.line_channels_exceeded.add(|| format!("{} made a line hold {active} of {channels} channels", call.id));
            }
        }
        self.live.insert(call.id, LiveCall { pool, class, tenant: call.tenant_id.clone(), line: call.line_id.clone(), over_limit });
        self.class_active[class] += 1;
        self.record_peak();
    }

    fn ended(&mut self, id: CallId, outcome: &str, now_ms: u64) {
        let Some(call) = self.live.remove(&id) else {
            self.unknown_call_ended.add(|| format!("{id} ended but was not live"));
            return;
        };
        self.settle(call.pool, now_ms);
        self.pool_tracks[call.pool].active.remove(call.over_limit);
        if let Some(tenant) = self.tenants.get_mut(&call.tenant) {
            tenant.active.remove(call.over_limit);
        }
        if let Some(line) = &call.line
            && let Some((_, active)) = self.lines.get_mut(line)
        {
            active.remove(call.over_limit);
        }
        self.class_active[call.class] -= 1;
        if outcome == OUTCOME_RECLAIMED_STALE {
            *self.reclaimed_stale.entry(call.tenant).or_default() += 1;
        } else if outcome == OUTCOME_PROVIDER_REJECTED {
            *self.provider_rejected.entry(call.tenant).or_default() += 1;
        }
        self.record_peak();
    }

    /// Adds the time since the pool's last change to its areas (traffic period only) and to
    /// its time at and over capacity (whole run).
    fn settle(&mut self, pool: usize, now_ms: u64) {
        let traffic_end_ms = self.traffic_end_ms;
        let track = &mut self.pool_tracks[pool];
        let elapsed = now_ms.saturating_sub(track.since_ms);
        if elapsed > 0 {
            let in_traffic = now_ms.min(traffic_end_ms).saturating_sub(track.since_ms.min(traffic_end_ms));
            let active = track.active.all;
            track.active_area += f64::from(active) * in_traffic as f64;
            track.capacity_area += f64::from(track.capacity) * in_traffic as f64;
            if track.capacity > 0 && active >= track.capacity {
                track.stats.at_capacity_ms += elapsed;
            }
            if active > track.capacity {
                track.stats.over_capacity_ms += elapsed;
            }
        }
        track.since_ms = now_ms;
    }

    /// Opens the timeline's buckets up to `now_ms`, each starting at the current levels (those
    /// before the event being observed).
    fn advance(&mut self, now_ms: u64) {
        let capacity: u32 = self.pool_tracks.iter().map(|t| t.capacity).sum();
        while self.bucket < (now_ms.saturating_sub(self.start_ms) / self.timeline.bucket_ms) as usize {
            self.bucket += 1;
            for (n, series) in self.timeline.classes.iter_mut().enumerate() {
                series.peaks.push(self.class_active[n]);
            }
            self.timeline.capacity.push(capacity);
            if self.timeline.capacity.len() > TIMELINE_BUCKETS_MAX {
                self.halve_timeline();
            }
        }
    }

    /// Records the levels after an event in the current bucket.
    fn record_peak(&mut self) {
        let capacity: u32 = self.pool_tracks.iter().map(|t| t.capacity).sum();
        // Each bucket keeps the class breakdown at its moment of highest total concurrency, so
        // the stacked chart's top is the true peak (per-class peaks could not be stacked).
        let total: u32 = self.class_active.iter().sum();
        let bucket_total = self.timeline.total(self.bucket);
        if total > bucket_total {
            for (n, series) in self.timeline.classes.iter_mut().enumerate() {
                *series.peaks.last_mut().expect("a series has a bucket") = self.class_active[n];
            }
        }
        let last = self.timeline.capacity.last_mut().expect("a series has a bucket");
        *last = (*last).max(capacity);
    }

    fn halve_timeline(&mut self) {
        // Of each pair of buckets, the one with the higher total keeps its breakdown.
        let len = self.timeline.capacity.len();
        let timeline = &self.timeline;
        let keep: Vec<usize> =
            (0..len).step_by(2).map(|b| if b + 1 < len && timeline.total(b + 1) > timeline.total(b) { b + 1 } else { b }).collect();
        for series in self.timeline.classes.iter_mut() {
            series.peaks = keep.iter().map(|b| series.peaks[*b]).collect();
        }
        let capacity = &mut self.timeline.capacity;
        *capacity = capacity.chunks(2).map(|pair| pair.iter().copied().max().unwrap_or(0)).collect();
        self.timeline.bucket_ms *= 2;
        self.bucket = self.timeline.capacity.len() - 1;
    }

    /// Closes the books at `now_ms`, the end of the run (a cooldown is counted up to it).
    pub fn finish(&mut self, now_ms: u64) -> (BTreeMap<String, PoolStats>, Timeline) {
        for pool in 0..self.pools.len() {
            self.settle(pool, now_ms);
            let track = &mut self.pool_tracks[pool];
            if let Some((from, until)) = track.cooldown.take() {
                track.stats.cooldown_ms += until.min(now_ms).saturating_sub(from);
            }
        }
        self.advance(now_ms);
        self.record_peak();
        let traffic_ms = self.traffic_end_ms.saturating_sub(self.start_ms).max(1) as f64;
        let stats = self
            .pools
            .iter()
            .zip(&self.pool_tracks)
            .map(|(name, track)| {
                let mut stats = track.stats.clone();
                stats.mean = track.active_area / traffic_ms;
                stats.utilization = if track.capacity_area > 0.0 { track.active_area / track.capacity_area } else { 0.0 };
                (name.clone(), stats)
            })
            .collect();
        (stats, self.timeline.clone())
    }
}

#[cfg(test)]
mod tests {
    use switchboard_actors::model::{CallRecord, Direction, TenantRecord, Voice};

    use super::*;

    fn admitted(id: u64, at_ms: u64) -> Event {
        let call = CallRecord {
            id: CallId(id),
            tenant_id: "t".into(),
            line_id: None,
            direction: Direction::Outbound,
            provider_call_id: None,
            to: None,
            from: None,
            over_limit: false,
            plan: "PAYG".into(),
            class: "standard".into(),
            pool: "standard_voice".into(),
            voice: Voice::Standard,
            fallback_reason: None,
            waited_ms: 0,
            started_at_ms: at_ms,
            last_activity_at_ms: at_ms,
            callback_id: None,
            campaign: None,
        };
        Event::CallAdmitted { call: call.into(), idempotency: None }
    }

    fn ended(id: u64, at_ms: u64) -> Event {
        Event::CallEnded { id: CallId(id), ended_at_ms: at_ms, outcome: "completed".into(), duration_s: 1, characters: 0, cost_cents: 0 }
    }

    /// A quiet stretch keeps the level from before the next event: a call admitted after a
    /// silence did not start early, and one that ended after it was live all along.
    #[test]
    fn quiet_buckets_keep_the_level_before_the_next_event() {
        let classes = vec!["standard".to_owned(), "priority".to_owned(), "premium".to_owned()];
        // 200 s of traffic: 1 s buckets.
        let mut watcher = Watcher::new(0, PlanTable::default(), classes, vec!["standard_voice".into()], 200_000);
        let mut seq = 0;
        let mut observe = |watcher: &mut Watcher, at_ms: u64, event: Event| {
            seq += 1;
            watcher.observe(at_ms, seq, &[], &event);
        };
        observe(&mut watcher, 0, Event::PoolConfigured { pool: "standard_voice".into(), capacity: 5, reserved: BTreeMap::new() });
        observe(&mut watcher, 0, Event::TenantCreated(TenantRecord::new("t", "PAYG", None, 0)));
        observe(&mut watcher, 0, admitted(1, 0));
        observe(&mut watcher, 10_000, ended(1, 10_000));
        observe(&mut watcher, 20_000, admitted(2, 20_000));
        let (pools, timeline) = watcher.finish(25_000);
        let standard = timeline.series("standard").expect("standard");
        assert!(standard[..=10].iter().all(|n| *n == 1), "live from 0 s to 10 s: {standard:?}");
        assert!(standard[11..20].iter().all(|n| *n == 0), "nothing live from 10 s to 20 s: {standard:?}");
        assert!(standard[20..=25].iter().all(|n| *n == 1), "live again from 20 s: {standard:?}");
        assert_eq!(timeline.capacity[..=25], [5; 26]);
        let pool = &pools["standard_voice"];
        assert_eq!((pool.peak, pool.at_capacity_ms, pool.over_capacity_ms), (1, 0, 0));
        // 1 call for 15 of the 25 s: a mean over the 200 s traffic period.
        assert!((pool.mean - 15_000.0 / 200_000.0).abs() < 1e-9, "{}", pool.mean);
    }
}
