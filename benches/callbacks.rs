//! Callback dispatch latency: `cargo bench --bench callbacks`.
//!
//! The production actors and the fsync'd sled journal, one callback line with one channel and
//! `MISSED` missed calls queued. Each round ends the call on the line and times how long until
//! the dialer receives the callback's dial request (the target: 50 ms; seed 002 asks
//! for under 5 s). The dialer accepts at once; the callback call is then ended, which frees the
//! channel for the next round. Prints one JSON line with the percentiles.

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
use switchboard_actors::dialer::{DialFuture, DialOutcome, DialRequest, Dialer};
use switchboard_actors::model::{CallId, LineRecord, MissedReason, OnBusy, TenantRecord};
use switchboard_actors::store::{Store, recover};
use switchboard_actors::system::{AdmitRequest, System};
use switchboard_actors::telemetry::NoTelemetry;
use tokio::sync::mpsc;

const MISSED: usize = 500;
const LINE: &str = "+14155550123";

/// Accepts every dial and reports when (and for which call) it came.
struct TimingDialer(mpsc::UnboundedSender<(Instant, String)>);

impl Dialer for TimingDialer {
    fn dial(&self, request: DialRequest) -> DialFuture<'_> {
        let _ = self.0.send((Instant::now(), request.call_id));
        Box::pin(async { DialOutcome::Accepted })
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path()).expect("open journal");
    let settings = Settings { arbitration: Arc::new(Arbitration::single_pool(100)), ..Settings::default() };
    let durable = recover(&store).expect("recover");
    let store: Arc<dyn Store> = Arc::new(store);
    let system = Arc::new(System::start(settings, store, durable, Arc::new(SystemClock), Arc::new(NoTelemetry)).await.expect("start"));
    system.create_tenant(TenantRecord::new("t", "PRO", Some(1_000), 0)).await.expect("tenant");
    let line = LineRecord { on_busy: OnBusy::Callback, ..LineRecord::new(LINE, "t", 1, 0) };
    system.create_line(line).await.expect("line");
    let (dials, mut dialled) = mpsc::unbounded_channel();
    system.start_dispatcher(Arc::new(TimingDialer(dials))).await;
    let busy = AdmitRequest { line_id: Some(LINE.into()), ..AdmitRequest::outbound("t") };
    let mut on_line: CallId = system.admit(busy).await.expect("the line's first call").call.id;
    for n in 0..MISSED {
        system.record_missed(LINE, format!("+1415556{n:04}"), MissedReason::Busy, None).await.expect("missed");
    }
    let mut latency = Histogram::default();
    let started = Instant::now();
    for _ in 0..MISSED {
        let freed = Instant::now();
        system.end_call(on_line, EndReport::outcome("completed")).await.expect("end");
        let (at, call_id) = tokio::time::timeout(Duration::from_secs(5), dialled.recv()).await.expect("a dial within 5 s").expect("dialer");
        latency.record(at.duration_since(freed));
        on_line = call_id.parse().expect("a call id");
    }
    println!(
        "{{\"bench\":\"callback_dispatch\",\"callbacks\":{MISSED},\"per_s\":{:.0},\"channel_freed_to_dial_p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        MISSED as f64 / started.elapsed().as_secs_f64(),
        latency.percentile_ms(0.50),
        latency.percentile_ms(0.99),
        latency.max_ms()
    );
    system.shutdown().await.expect("shutdown");
}
