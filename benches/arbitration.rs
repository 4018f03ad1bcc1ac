//! Arbitration under contention: `cargo bench --bench arbitration`.
//!
//! 1. The pool core alone: 1000 waiters from 100 tenants in 3 classes; each step ends one call
//!    and hands its slot to the next waiter (fair pick, reservations, aging). Reports the
//!    hand-off cost and fail-fast decisions per second.
//!    Then the noisy neighbour: one tenant's 2 000 waiters aged while 1 000 or 50 000 other
//!    tenants wait with fresh ones; reports the cost of each hand-off to the aged tenant.
//! 2. The whole admission path with the sled journal (fsync per group commit): 1000 clients
//!    that each admit with `wait_ms`, hold the call briefly and end it, on a pool of
//!    `CAPACITY` slots — so about 950 wait at any moment. Reports admissions per second and
//!    the time each admission took to be granted (its wait included), and the hand-off: from
//!    an end being acknowledged to the next waiter's grant.
//!
//! Bounded: part 2 runs `SWITCHBOARD_BENCH_SECONDS` (default 5, at most 120) seconds.

// The allocator the `switchboard` binary uses, so these figures are the product's.
#[global_allocator]
static ALLOCATOR: switchboard::alloc::Allocator = switchboard::alloc::Allocator;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard::journal::SledStore;
use switchboard::loadgen::Histogram;
use switchboard_actors::clock::SystemClock;
use switchboard_actors::context::{Arbitration, Settings};
use switchboard_actors::core::call::EndReport;
use switchboard_actors::core::pool::{Decision, PoolCore, PoolLimits, PoolTiming, Request};
use switchboard_actors::model::{CallId, TenantRecord};
use switchboard_actors::store::{Store, recover};
use switchboard_actors::system::{AdmitRequest, System};
use switchboard_actors::telemetry::NoTelemetry;

const WAITERS: usize = 1000;
const TENANTS: usize = 100;
const CAPACITY: u32 = 50;
const HANDOFFS: u64 = 200_000;
const SECONDS_MAX: u64 = 120;

fn main() {
    core_bench();
    for fresh_tenants in [1_000, 50_000] {
        noisy_neighbour_bench(fresh_tenants);
    }
    let seconds: u64 = std::env::var("SWITCHBOARD_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5).clamp(1, SECONDS_MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(system_bench(Duration::from_secs(seconds)));
}

fn core_bench() {
    let limits = PoolLimits { capacity: CAPACITY, reserved: vec![0, 3, 2] };
    let timing = PoolTiming { aging_ms: 5_000, probe_interval_ms: 60_000, waiting_per_class_max: WAITERS };
    let mut pool = PoolCore::new(limits, timing, 3, None, 0, BTreeMap::new());
    let mut next_call = 0u64;
    let mut held = std::collections::VecDeque::new();
    let mut now_ms = 0u64;
    let mut request = |pool: &mut PoolCore, now_ms: u64, wait: bool| {
        next_call += 1;
        let n = next_call as usize;
        let request = Request {
            call: CallId(next_call),
            tenant: format!("t{}", n % TENANTS).into(),
            class: n % 3,
            force: false,
            deadline_ms: if wait { now_ms + 3_600_000 } else { now_ms },
        };
        (CallId(next_call), pool.request(request, now_ms))
    };
    for _ in 0..(WAITERS + CAPACITY as usize) {
        let (call, (decision, others)) = request(&mut pool, now_ms, true);
        if matches!(decision, Decision::Granted { .. }) {
            held.push_back(call);
        }
        held.extend(others.iter().map(|g| g.call));
    }
    assert_eq!(pool.waiters(), WAITERS + CAPACITY as usize - held.len());
    let started = Instant::now();
    let mut handoffs = 0u64;
    while handoffs < HANDOFFS {
        now_ms += 1;
        let Some(call) = held.pop_front() else {
            panic!("no held call: core active {} waiters {} handoffs {handoffs} now {now_ms}", pool.active(), pool.waiters())
        };
        let grants = pool.release(call, now_ms);
        held.extend(grants.iter().map(|g| g.call));
        handoffs += grants.len() as u64;
        // Keep the queue at its size.
        while pool.waiters() < WAITERS {
            let (call, (decision, others)) = request(&mut pool, now_ms, true);
            if matches!(decision, Decision::Granted { .. }) {
                held.push_back(call);
            }
            held.extend(others.iter().map(|g| g.call));
            handoffs += others.len() as u64;
        }
    }
    let handoff_ns = started.elapsed().as_nanos() as f64 / handoffs as f64;
    let started = Instant::now();
    let decisions = 200_000u64;
    for _ in 0..decisions {
        let _ = request(&mut pool, now_ms, false);
    }
    let decisions_per_s = decisions as f64 / started.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"pool_core\",\"waiters\":{},\"tenants\":{TENANTS},\"capacity\":{CAPACITY},\"handoff_ns\":{handoff_ns:.0},\"fail_fast_decisions_per_s\":{decisions_per_s:.0}}}",
        pool.waiters()
    );
}

/// One tenant's waiters are aged, `fresh_tenants` other tenants each have one young waiter
/// queued behind it in the turn order: every hand-off finds the aged tenant among them.
fn noisy_neighbour_bench(fresh_tenants: usize) {
    const AGED: u64 = 2_000;
    const HANDOFFS: u64 = 1_000;
    let limits = PoolLimits { capacity: CAPACITY, reserved: vec![0, 0, 0] };
    let timing = PoolTiming { aging_ms: 5_000, probe_interval_ms: 60_000, waiting_per_class_max: 100_000 };
    let held: BTreeMap<CallId, usize> = (0..u64::from(CAPACITY)).map(|n| (CallId(n), 0)).collect();
    let mut pool = PoolCore::new(limits, timing, 3, None, 0, held);
    let ask = |pool: &mut PoolCore, call: u64, tenant: String, now_ms: u64| {
        let request = Request { call: CallId(call), tenant: tenant.into(), class: 0, force: false, deadline_ms: 3_600_000 };
        assert_eq!(pool.request(request, now_ms).0, Decision::Queued);
    };
    for n in 0..AGED {
        ask(&mut pool, 1_000_000 + n, "heavy".to_owned(), 0);
    }
    for n in 0..fresh_tenants {
        ask(&mut pool, 2_000_000 + n as u64, format!("fresh{n}"), 5_500);
    }
    // The first hand-off serves the heavy tenant (aged at 5 600) and sends it behind the others.
    let mut held: std::collections::VecDeque<CallId> = (0..u64::from(CAPACITY)).map(CallId).collect();
    let first = held.pop_front().expect("held");
    held.extend(pool.release(first, 5_600).iter().map(|g| g.call));
    let now_ms = 6_000;
    let started = Instant::now();
    for _ in 0..HANDOFFS {
        let call = held.pop_front().expect("held");
        let grants = pool.release(call, now_ms);
        assert!(grants.len() == 1 && grants[0].call.0 < 2_000_000, "the aged tenant is served: {grants:?}");
        held.extend(grants.iter().map(|g| g.call));
        std::hint::black_box(pool.next_wakeup_ms(now_ms));
    }
    let handoff_ns = started.elapsed().as_nanos() as f64 / HANDOFFS as f64;
    println!(
        "{{\"bench\":\"pool_core_noisy_neighbour\",\"aged_waiters\":{AGED},\"fresh_tenants\":{fresh_tenants},\"handoff_ns\":{handoff_ns:.0}}}"
    );
}

async fn system_bench(duration: Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path()).expect("open journal");
    let settings = Settings { arbitration: Arc::new(Arbitration::single_pool(CAPACITY)), ..Settings::default() };
    let durable = recover(&store).expect("recover");
    let store: Arc<dyn Store> = Arc::new(store);
    let system = Arc::new(System::start(settings, store, durable, Arc::new(SystemClock), Arc::new(NoTelemetry)).await.expect("start"));
    for n in 0..TENANTS {
        system.create_tenant(TenantRecord::new(format!("t{n}"), "PRO", Some(100_000), 0)).await.expect("tenant");
    }
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    // When the latest end was acknowledged, in µs since `started`: the hand-off is measured from
    // there to the next grant (an approximation under concurrency: ends and grants interleave).
    let last_end_us = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..WAITERS {
        let system = Arc::clone(&system);
        let last_end_us = Arc::clone(&last_end_us);
        clients.push(tokio::spawn(async move {
            let (mut granted, mut handoff, mut admitted) = (Histogram::default(), Histogram::default(), 0u64);
            while Instant::now() < deadline {
                let request = AdmitRequest { wait_ms: 30_000, ..AdmitRequest::outbound(format!("t{}", client % TENANTS)) };
                let begun = Instant::now();
                let Ok(call) = system.admit(request).await else { continue };
                let now_us = started.elapsed().as_micros() as u64;
                granted.record(begun.elapsed());
                if call.call.waited_ms > 0 {
                    handoff.record(Duration::from_micros(now_us.saturating_sub(last_end_us.load(Ordering::Relaxed))));
                }
                admitted += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
                system.end_call(call.call.id, EndReport::outcome("completed")).await.expect("ended");
                last_end_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            (admitted, granted, handoff)
        }));
    }
    let (mut admitted, mut granted, mut handoff) = (0, Histogram::default(), Histogram::default());
    for client in clients {
        let (count, g, h) = client.await.expect("client");
        admitted += count;
        granted.merge(&g);
        handoff.merge(&h);
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"arbitration_contended\",\"clients\":{WAITERS},\"capacity\":{CAPACITY},\"admissions\":{admitted},\"admissions_per_s\":{:.0},\"time_to_grant_p50_ms\":{:.3},\"time_to_grant_p99_ms\":{:.3},\"handoff_p50_ms\":{:.3},\"handoff_p99_ms\":{:.3}}}",
        admitted as f64 / elapsed,
        granted.percentile_ms(0.50),
        granted.percentile_ms(0.99),
        handoff.percentile_ms(0.50),
        handoff.percentile_ms(0.99),
    );
    system.shutdown().await.expect("shutdown");
}
