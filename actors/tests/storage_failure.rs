//! A failed journal write is fatal for the journal (TigerBeetle's rule): nothing in the batch
//! is acknowledged, every later change is refused, and the system reports itself unhealthy so
//! `/readyz` turns 503 until an operator restarts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use switchboard_actors::clock::ManualClock;
use switchboard_actors::context::Settings;
use switchboard_actors::core::call::EndReport;
use switchboard_actors::model::TenantRecord;
use switchboard_actors::state::DurableState;
use switchboard_actors::store::{MemoryStore, Store, StoreError, Visit, WriteBatch};
use switchboard_actors::system::{AdmitError, AdmitRequest, System};
use switchboard_actors::telemetry::NoTelemetry;

/// The in-memory store, with a switch that makes every write fail like a dying disk (or
/// panic, like a bug in the storage engine). A store that `blocks` is written on the
/// journal's own I/O thread, one that does not in the writer's turn: both are covered.
#[derive(Default)]
struct FailingStore {
    inner: MemoryStore,
    failing: AtomicBool,
    panics: bool,
    blocking: bool,
}

impl Store for FailingStore {
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            assert!(!self.panics, "injected: the storage engine panicked");
            return Err(StoreError::Io("injected: no space left on device".into()));
        }
        self.inner.write(batch)
    }
    fn blocks(&self) -> bool {
        self.blocking
    }
    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.latest_snapshot()
    }
    fn scan_after(&self, seq: u64, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        self.inner.scan_after(seq, visit)
    }
}

#[tokio::test]
async fn a_failed_write_acknowledges_nothing_and_turns_the_system_unhealthy() {
    a_failed_write_is_fatal(FailingStore::default()).await;
}

#[tokio::test]
async fn a_failed_write_on_the_journals_io_thread_is_fatal_too() {
    a_failed_write_is_fatal(FailingStore { blocking: true, ..FailingStore::default() }).await;
}

#[tokio::test]
async fn a_write_that_panics_on_the_journals_io_thread_fails_the_journal_rather_than_hanging_it() {
    a_failed_write_is_fatal(FailingStore { blocking: true, panics: true, ..FailingStore::default() }).await;
}

async fn a_failed_write_is_fatal(store: FailingStore) {
    let store = Arc::new(store);
    let shared: Arc<dyn Store> = store.clone();
    let system = System::start(Settings::default(), shared, DurableState::new(), ManualClock::new(0), Arc::new(NoTelemetry))
        .await
        .map(Arc::new)
        .unwrap();
    let tenant = TenantRecord::new("acme", "PRO", None, 0);
    system.create_tenant(tenant).await.unwrap();
    let first = system.admit(AdmitRequest::outbound("acme")).await.unwrap();
    assert!(system.healthy());
    let events_before = store.inner.event_count();

    store.failing.store(true, Ordering::SeqCst);
    let refused = system.admit(AdmitRequest::outbound("acme")).await;
    let injected = if store.panics { "injected: the storage engine panicked" } else { "injected: no space left on device" };
    assert!(matches!(&refused, Err(AdmitError::Unavailable(why)) if why.contains(injected)), "{refused:?}");
    assert!(!system.healthy(), "a failed write makes the system unhealthy");
    // Even once the disk recovers, nothing more is accepted until a restart replays the truth.
    store.failing.store(false, Ordering::SeqCst);
    assert!(matches!(system.admit(AdmitRequest::outbound("acme")).await, Err(AdmitError::Unavailable(_))));
    assert!(system.end_call(first.call.id, EndReport::outcome("completed")).await.is_err());
    assert_eq!(store.inner.event_count(), events_before, "nothing after the failure reached the store");
}

/// The in-memory store whose writes can be made slow (off the async workers, like a disk),
/// or held until released (a stalled disk; at most `HELD_MAX`).
#[derive(Default)]
struct SlowStore {
    inner: MemoryStore,
    delay_ms: std::sync::atomic::AtomicU64,
    held: AtomicBool,
    /// Writes fail (once released, for a held one).
    failing: AtomicBool,
}

const HELD_MAX: std::time::Duration = std::time::Duration::from_secs(20);

impl Store for SlowStore {
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        std::thread::sleep(std::time::Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)));
        let held_since = std::time::Instant::now();
        while self.held.load(Ordering::SeqCst) && held_since.elapsed() < HELD_MAX {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Io("injected: the stalled write failed".into()));
        }
        self.inner.write(batch)
    }
    fn blocks(&self) -> bool {
        true
    }
    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.latest_snapshot()
    }
    fn scan_after(&self, seq: u64, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        self.inner.scan_after(seq, visit)
    }
}

/// A journal timeout short enough for a test to outlive it.
const JOURNAL_TIMEOUT_SHORT: std::time::Duration = std::time::Duration::from_millis(100);

/// A system on a `SlowStore`, with this journal timeout.
async fn start_slow(journal_timeout: std::time::Duration) -> (Arc<SlowStore>, Arc<System>) {
    let store = Arc::new(SlowStore::default());
    let shared: Arc<dyn Store> = store.clone();
    let settings = Settings { journal_timeout, ..Settings::default() };
    let system = System::start(settings, shared, DurableState::new(), ManualClock::new(0), Arc::new(NoTelemetry)).await.unwrap();
    (store, Arc::new(system))
}

/// An append that outlives `journal_timeout` has an unknown outcome for its caller. The
/// admission settles it from the durable state; an actor (here: a call ending) answers 503
/// and is rebuilt from the journal, which by then knows how it went. Either way the live state
/// ends up equal to the journal's and nothing is left wedged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_with_unknown_outcomes_are_settled_from_the_journal() {
    std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    let (store, system) = start_slow(JOURNAL_TIMEOUT_SHORT).await;
    let tenant = TenantRecord::new("acme", "PRO", None, 0);
    system.create_tenant(tenant).await.unwrap();

    store.delay_ms.store(150, Ordering::SeqCst);
    let admitted =
        system.admit(AdmitRequest::outbound("acme")).await.expect("the slow admission became durable and is reported as admitted");
    let ended = system.end_call(admitted.call.id, EndReport::outcome("completed")).await;
    assert!(ended.is_err(), "the end's outcome was unknown when the caller was answered: {ended:?}");
    store.delay_ms.store(0, Ordering::SeqCst);

    let mut settled = false;
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        if matches!(system.get_call(admitted.call.id).await, Ok(switchboard_actors::system::CallState::Ended(_))) {
            settled = true;
            break;
        }
    }
    assert!(settled, "the call was neither ended nor rebuilt");
    system.sync().await.unwrap();
    assert_eq!(system.live_digest().await.unwrap(), system.inspect(|d| d.digest()).await.unwrap());
    assert!(system.live_digest().await.unwrap().tenants["acme"].1.is_empty(), "the tenant's slot is free");
    assert!(system.healthy());
}

/// A rebuilt actor answers only from what is on disk. An append that outlives the journal
/// timeout fails its actor on purpose, and the supervisor rebuilds it from the journal. While
/// that write is still stalled, a retried request (a webhook's retried end, a PATCH sent again)
/// must not be acknowledged from the journal's accepted but not yet durable state: the write
/// may still fail, and the client would hold a 200 for a change a restart forgets. The entity
/// stays down (503) until the write lands, then answers from the durable state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_actor_acknowledges_nothing_that_is_not_yet_durable() {
    use switchboard_actors::tenant::TenantPatch;
    let (store, system) = start_slow(JOURNAL_TIMEOUT_SHORT).await;
    system.create_tenant(TenantRecord::new("acme", "PRO", None, 0)).await.unwrap();
    let call = system.admit(AdmitRequest::outbound("acme")).await.unwrap().call.id;
    let events_before = store.inner.event_count();
    let patch = || TenantPatch { name: Some(Some("Renamed".into())), ..TenantPatch::default() };

    store.held.store(true, Ordering::SeqCst);
    assert!(system.update_tenant("acme", patch()).await.is_err(), "the first PATCH's outcome was unknown");
    assert!(system.end_call(call, EndReport::outcome("completed")).await.is_err(), "the first end's outcome was unknown");
    // Time for both actors to fail and their rebuilds to ask the journal for their state.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let retried_patch = system.update_tenant("acme", patch()).await;
    let retried_end = system.end_call(call, EndReport::outcome("completed")).await;
    let tenant_seen = system.get_tenant("acme").await.map(|view| view.record.name);
    assert_eq!(store.inner.event_count(), events_before, "the store is still stalled");
    assert!(retried_patch.is_err(), "a retried PATCH was acknowledged before it was durable: {retried_patch:?}");
    assert!(retried_end.is_err(), "a retried end was acknowledged before it was durable: {retried_end:?}");
    assert!(!matches!(&tenant_seen, Ok(Some(_))), "a GET showed a change not yet durable: {tenant_seen:?}");

    store.held.store(false, Ordering::SeqCst);
    let mut renamed = None;
    for _ in 0..500 {
        if let Ok(view) = system.update_tenant("acme", patch()).await {
            renamed = Some(view);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(renamed.expect("the tenant came back once the write landed").record.name.as_deref(), Some("Renamed"));
    let ended = system.end_call(call, EndReport::outcome("completed")).await.expect("the call's end is durable and answered");
    assert_eq!(ended.outcome, "completed");
    system.sync().await.unwrap();
    assert_eq!(system.live_digest().await.unwrap(), system.inspect(|d| d.digest()).await.unwrap());
    assert!(system.healthy());
}

/// A call's end charges its duration; the balance clients see moves only once the charge is
/// on disk (a failed write would take it back), while the decisions that need the balance
/// already count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_shows_in_the_balance_only_once_it_is_durable() {
    let (store, system) = start_slow(Settings::default().journal_timeout).await;
    system.create_tenant(TenantRecord::new("acme", "PRO", None, 0)).await.unwrap();
    system.credit("acme", 1_000, "top-up".into()).await.unwrap();
    let call = system.admit(AdmitRequest::outbound("acme")).await.unwrap().call.id;

    store.held.store(true, Ordering::SeqCst);
    let ending = Arc::clone(&system);
    let end = tokio::spawn(async move {
        ending.end_call(call, EndReport { outcome: "completed".into(), duration_s: Some(100), characters: None }).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!end.is_finished(), "the end waits for its write");
    assert_eq!(system.get_tenant("acme").await.unwrap().balance, 1_000, "the charge is not on disk yet");
    store.held.store(false, Ordering::SeqCst);
    assert_eq!(end.await.unwrap().unwrap().outcome, "completed");
    assert_eq!(system.get_tenant("acme").await.unwrap().balance, 900, "shown as soon as the end is answered");
}

/// The stalled write then fails: the entity whose actor failed stays down (its state held an
/// event that never reached the disk), and nothing else is taken down with it. Reads of every
/// other entity keep working; writes are refused and the system reports itself unhealthy, until
/// an operator restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_journal_leaves_the_entity_in_doubt_down_and_the_others_up() {
    use switchboard_actors::tenant::TenantPatch;
    let (store, system) = start_slow(JOURNAL_TIMEOUT_SHORT).await;
    system.create_tenant(TenantRecord::new("acme", "PRO", None, 0)).await.unwrap();
    system.create_tenant(TenantRecord::new("other", "PRO", None, 0)).await.unwrap();

    store.held.store(true, Ordering::SeqCst);
    let patch = TenantPatch { name: Some(Some("Renamed".into())), ..TenantPatch::default() };
    assert!(system.update_tenant("acme", patch).await.is_err(), "the PATCH's outcome was unknown");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    store.failing.store(true, Ordering::SeqCst);
    store.held.store(false, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    assert!(!system.healthy(), "a failed write turns the system unhealthy");
    assert!(system.get_tenant("acme").await.is_err(), "acme's state held the failed event: it stays down");
    assert_eq!(system.get_tenant("other").await.expect("the other tenant still answers").record.id, "other");
    assert!(system.create_tenant(TenantRecord::new("later", "PRO", None, 0)).await.is_err(), "writes are refused");
}
