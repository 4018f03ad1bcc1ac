//! A failed journal write is fatal for the journal (TigerBeetle's rule): nothing in the batch
//! is acknowledged, every later change is refused, and the system reports itself unhealthy so
//! `/readyz` turns 503 until an operator restarts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use switchboard_actors::clock::ManualClock;
use switchboard_actors::context::Settings;
use switchboard_actors::model::{Direction, TenantRecord};
use switchboard_actors::state::DurableState;
use switchboard_actors::store::{MemoryStore, Store, StoreError, Visit, WriteBatch};
use switchboard_actors::system::{AdmitError, AdmitRequest, System};
use switchboard_actors::telemetry::NoTelemetry;

/// The in-memory store, with a switch that makes every write fail like a dying disk.
#[derive(Default)]
struct FailingStore {
    inner: MemoryStore,
    failing: AtomicBool,
}

impl Store for FailingStore {
    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Io("injected: no space left on device".into()));
        }
        self.inner.write(batch)
    }
    fn blocks(&self) -> bool {
        false
    }
    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.latest_snapshot()
    }
    fn scan_after(&self, seq: u64, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        self.inner.scan_after(seq, visit)
    }
}

fn outbound(tenant: &str) -> AdmitRequest {
    AdmitRequest {
        tenant_id: tenant.into(),
        line_id: None,
        direction: Direction::Outbound,
        already_connected: false,
        provider_call_id: None,
        to: None,
        from: None,
        idempotency: None,
    }
}

#[tokio::test]
async fn a_failed_write_acknowledges_nothing_and_turns_the_system_unhealthy() {
    let store = Arc::new(FailingStore::default());
    let shared: Arc<dyn Store> = store.clone();
    let system = System::start(Settings::default(), shared, DurableState::new(5), ManualClock::new(0), Arc::new(NoTelemetry))
        .await
        .map(Arc::new)
        .unwrap();
    let tenant = TenantRecord { id: "acme".into(), name: None, plan: "PRO".into(), concurrent_limit_override: None, created_at_ms: 0 };
    system.create_tenant(tenant).await.unwrap();
    let first = system.admit(outbound("acme")).await.unwrap();
    assert!(system.healthy());
    let events_before = store.inner.event_count();

    store.failing.store(true, Ordering::SeqCst);
    let refused = system.admit(outbound("acme")).await;
    assert!(matches!(refused, Err(AdmitError::Unavailable(_))), "{refused:?}");
    assert!(!system.healthy(), "a failed write makes the system unhealthy");
    // Even once the disk recovers, nothing more is accepted until a restart replays the truth.
    store.failing.store(false, Ordering::SeqCst);
    assert!(matches!(system.admit(outbound("acme")).await, Err(AdmitError::Unavailable(_))));
    assert!(system.end_call(first.call.id, "completed".into(), None).await.is_err());
    assert_eq!(store.inner.event_count(), events_before, "nothing after the failure reached the store");
}
