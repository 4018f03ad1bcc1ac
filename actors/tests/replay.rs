//! Property: whatever happens — admissions, ends, heartbeats, limit and capacity changes,
//! crashed actors, time passing — the live actors, the journal writer's durable state and a
//! fresh replay of the stored journal are the same state. (Each limit holding at admission is
//! the slot table's own proptest and the HTTP concurrency tests.)
//! Runs the production actors on a current-thread runtime with the in-memory store.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use switchboard_actors::clock::ManualClock;
use switchboard_actors::context::{Arbitration, Settings};
use switchboard_actors::core::call::EndReport;
use switchboard_actors::journal::Entity;
use switchboard_actors::model::{CallId, Direction, LineRecord, TenantRecord, Voice};
use switchboard_actors::state::DurableState;
use switchboard_actors::store::{MemoryStore, Store, recover};
use switchboard_actors::system::{AdmitRequest, System};
use switchboard_actors::telemetry::NoTelemetry;
use switchboard_actors::tenant::TenantPatch;

const TENANTS: [(&str, &str); 3] = [("t0", "PRO"), ("t1", "PAYG"), ("t2", "STARTER")];
const LINES: [(&str, usize, u32); 2] = [("+14155550300", 0, 2), ("+14155550301", 1, 1)];

#[derive(Clone, Debug)]
enum Op {
    Admit { tenant: usize, line: Option<usize>, inbound: bool, connected: bool },
    End { pick: usize },
    Heartbeat { pick: usize },
    SetCapacity(u32),
    SetLimit { tenant: usize, limit: Option<u32> },
    Crash { target: usize },
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, proptest::option::of(0..2usize), any::<bool>(), any::<bool>())
            .prop_map(|(tenant, line, inbound, connected)| Op::Admit { tenant, line, inbound, connected }),
        4 => any::<usize>().prop_map(|pick| Op::End { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Heartbeat { pick }),
        1 => (1..6u32).prop_map(Op::SetCapacity),
        1 => (0..3usize, proptest::option::of(1..4u32)).prop_map(|(tenant, limit)| Op::SetLimit { tenant, limit }),
        1 => (0..5usize).prop_map(|target| Op::Crash { target }),
        1 => (1..5_000u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// Waits (bounded) until `entity` runs at a newer generation than `before`.
async fn rebuilt(system: &System, entity: &Entity, before: Option<u32>) {
    for _ in 0..2_000 {
        if system.generation(entity) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{entity:?} was not rebuilt");
}

async fn crash(system: &System, target: usize) {
    let entity = match target {
        0 => Entity::Tenant(TENANTS[0].0.into()),
        1 => Entity::Tenant(TENANTS[1].0.into()),
        2 => Entity::Line(LINES[0].0.into()),
        3 => Entity::Platform,
        _ => match system.list_calls(None, None, None, 1).first() {
            Some(call) => {
                system.inject_crash(&Entity::Call(call.id));
                // Settles once the rebuilt call actor answers again.
                for _ in 0..2_000 {
                    if system.get_call(call.id).await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                panic!("call actor was not rebuilt");
            }
            None => return,
        },
    };
    let before = system.generation(&entity);
    assert!(system.inject_crash(&entity));
    rebuilt(system, &entity, before).await;
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new(1_800_000_000_000);
    let store = Arc::new(MemoryStore::default());
    let settings = Settings { snapshot_every_events: 10, arbitration: Arc::new(Arbitration::single_pool(3)), ..Settings::default() };
    let shared: Arc<dyn Store> = store.clone();
    let system =
        System::start(settings, shared, DurableState::new(), clock.clone(), Arc::new(NoTelemetry)).await.map(Arc::new).expect("start");
    for (id, plan) in TENANTS {
        let record = TenantRecord::new(id, plan, None, 0);
        system.create_tenant(record).await.expect("tenant");
    }
    for (id, tenant, channels) in LINES {
        system
            .create_line(LineRecord { id: id.into(), tenant_id: TENANTS[tenant].0.into(), channels, created_at_ms: 0 })
            .await
            .expect("line");
    }
    let mut live: Vec<CallId> = Vec::new();
    for op in ops {
        match op {
            Op::Admit { tenant, line, inbound, connected } => {
                let (tenant, line_id) = match line {
                    Some(l) => (LINES[l].1, Some(LINES[l].0.to_owned())),
                    None => (tenant, None),
                };
                let request = AdmitRequest {
                    tenant_id: TENANTS[tenant].0.into(),
                    line_id,
                    direction: if inbound { Direction::Inbound } else { Direction::Outbound },
                    already_connected: inbound && connected,
                    provider_call_id: None,
                    to: None,
                    from: None,
                    idempotency: None,
                    voice: Voice::Standard,
                    fallback: true,
                    wait_ms: 0,
                };
                if let Ok(admitted) = system.admit(request).await {
                    live.push(admitted.call.id);
                }
            }
            Op::End { pick } if !live.is_empty() => {
                let id = live.swap_remove(pick % live.len());
                system.end_call(id, EndReport::outcome("completed")).await.expect("end");
            }
            Op::Heartbeat { pick } if !live.is_empty() => {
                let _ = system.heartbeat(live[pick % live.len()]).await;
            }
            Op::SetCapacity(capacity) => {
                system.set_platform_capacity(capacity).await.expect("capacity");
            }
            Op::SetLimit { tenant, limit } => {
                let patch = TenantPatch { concurrent_limit_override: Some(limit), ..TenantPatch::default() };
                system.update_tenant(TENANTS[tenant].0, patch).await.expect("patch");
            }
            Op::Crash { target } => crash(&system, target).await,
            Op::Advance { ms } => clock.advance_ms(ms),
            Op::End { .. } | Op::Heartbeat { .. } => {}
        }
    }
    system.sync().await.expect("sync");
    let live_state = system.live_digest().await.expect("live digest");
    let durable = system.inspect(|d| d.digest()).await.expect("durable digest");
    prop_assert_eq!(&live_state, &durable, "live actors differ from the journal writer");
    let replayed = recover(&*store).expect("replay").digest();
    prop_assert_eq!(&live_state, &replayed, "a fresh replay differs from the live state");
    system.shutdown().await.expect("shutdown");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn live_durable_and_replayed_state_agree(ops in proptest::collection::vec(op(), 1..60)) {
        std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(run(ops))?;
    }
}
