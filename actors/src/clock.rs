//! The injected wall clock. Cores take `now_ms` as an argument; actors read it from here, so a
//! simulation can substitute virtual time and a test can move time by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// Production: the operating system's clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("system clock is after 1970");
        u64::try_from(since_epoch.as_millis()).expect("milliseconds since 1970 fit in u64")
    }
}

/// Tests and simulations: time moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    pub fn new(now_ms: u64) -> Arc<Self> {
        Arc::new(ManualClock { now_ms: AtomicU64::new(now_ms) })
    }

    pub fn advance_ms(&self, by_ms: u64) {
        self.now_ms.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// Simulations: the service clock follows tokio's clock, so on a paused runtime the wall clock
/// the cores see and the timers the actors set move together, by virtual time only.
#[derive(Debug)]
pub struct TokioClock {
    epoch_ms: u64,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// Reads `epoch_ms` now; must be created inside the runtime whose clock it follows.
    pub fn new(epoch_ms: u64) -> Arc<Self> {
        Arc::new(TokioClock { epoch_ms, origin: tokio::time::Instant::now() })
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.origin);
        self.epoch_ms.saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }
}
