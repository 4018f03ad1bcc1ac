//! In-process benchmark of the admission path without HTTP: `cargo bench --bench admission`.
//!
//! The same actors and the same sled journal (fsync per group commit) as production, driven by
//! `TASKS` concurrent tasks that each admit an outbound call and end it, round-robin over
//! `TENANTS` tenants. Prints one JSON line: pairs per second and per-pair latency percentiles.
//! Bounded: runs for `SWITCHBOARD_BENCH_SECONDS` (default 5, at most 120) seconds.

// The allocator the `switchboard` binary uses, so these figures are the product's.
#[global_allocator]
static ALLOCATOR: switchboard::alloc::Allocator = switchboard::alloc::Allocator;

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::journal::SledStore;
use switchboard::loadgen::Histogram;
use switchboard_actors::clock::SystemClock;
use switchboard_actors::context::{Arbitration, Settings};
use switchboard_actors::core::call::EndReport;
use switchboard_actors::model::TenantRecord;
use switchboard_actors::store::{Store, recover};
use switchboard_actors::system::{AdmitRequest, System};
use switchboard_actors::telemetry::NoTelemetry;

const TASKS: usize = 64;
const TENANTS: usize = 1000;
const SECONDS_MAX: u64 = 120;

fn main() {
    let seconds: u64 = std::env::var("SWITCHBOARD_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5).clamp(1, SECONDS_MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(Duration::from_secs(seconds)));
}

async fn run(duration: Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path()).expect("open journal");
    let settings = Settings { arbitration: Arc::new(Arbitration::single_pool(1_000_000)), ..Settings::default() };
    let durable = recover(&store).expect("recover");
    let store: Arc<dyn Store> = Arc::new(store);
    let system = Arc::new(System::start(settings, store, durable, Arc::new(SystemClock), Arc::new(NoTelemetry)).await.expect("start"));
    for n in 0..TENANTS {
        let record = TenantRecord::new(format!("t{n}"), "PRO", Some(100_000), 0);
        system.create_tenant(record).await.expect("tenant");
    }
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let system = Arc::clone(&system);
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::default();
            let mut pairs = 0u64;
            while Instant::now() < deadline {
                let tenant = format!("t{}", (task + pairs as usize * TASKS) % TENANTS);
                let request = AdmitRequest::outbound(tenant);
                let begun = Instant::now();
                let admitted = system.admit(request).await.expect("admitted");
                system.end_call(admitted.call.id, EndReport::outcome("completed")).await.expect("ended");
                histogram.record(begun.elapsed());
                pairs += 1;
            }
            (pairs, histogram)
        }));
    }
    let mut pairs = 0;
    let mut histogram = Histogram::default();
    for task in tasks {
        let (count, h) = task.await.expect("task");
        pairs += count;
        histogram.merge(&h);
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"admission_in_process\",\"tasks\":{TASKS},\"tenants\":{TENANTS},\"pairs\":{pairs},\"pairs_per_s\":{:.0},\"pair_p50_ms\":{:.3},\"pair_p99_ms\":{:.3}}}",
        pairs as f64 / elapsed,
        histogram.percentile_ms(0.50),
        histogram.percentile_ms(0.99)
    );
    system.shutdown().await.expect("shutdown");
}
