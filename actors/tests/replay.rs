//! Property: whatever happens — admissions (waiting or not, standard or premium voice), ends
//! with usage, heartbeats, limit, capacity and reservation changes, provider rejections,
//! flags and add-ons, crashed actors, time passing — the live actors, the journal writer's
//! durable state and a fresh replay of the stored journal are the same state. (Each limit holding at admission is
//! the slot table's own proptest and the HTTP concurrency tests.)
//! Runs the production actors on a current-thread runtime with the in-memory store.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use switchboard_actors::callback_queue::CampaignAction;
use switchboard_actors::clock::Clock;
use switchboard_actors::clock::ManualClock;
use switchboard_actors::context::Settings;
use switchboard_actors::core::call::EndReport;
use switchboard_actors::dialer::{DialFuture, DialOutcome, DialRequest, Dialer};
use switchboard_actors::journal::Entity;
use switchboard_actors::model::{
    Addon, AddonStatus, BillingStatus, CallId, CampaignId, CampaignRecord, Contact, Direction, LineRecord, MissedAttempt, MissedReason,
    OnBusy, TenantRecord, Voice,
};
use switchboard_actors::state::DurableState;
use switchboard_actors::store::{MemoryStore, Store, recover};
use switchboard_actors::system::CallbackFilter;
use switchboard_actors::system::{AdmitRequest, System};
use switchboard_actors::telemetry::NoTelemetry;
use switchboard_actors::tenant::TenantPatch;

const TENANTS: [(&str, &str); 3] = [("t0", "PRO"), ("t1", "PAYG"), ("t2", "STARTER")];
const LINES: [(&str, usize, u32); 2] = [("+14155550300", 0, 2), ("+14155550301", 1, 1)];

const PREMIUM_FEATURE: &str = "premium_voices";
const CALLERS: [&str; 4] = ["+14155550900", "+14155550901", "+14155550902", "+14155550903"];

/// Accepts, fails and rate-limits dial requests in turn.
struct CyclingDialer(std::sync::atomic::AtomicU64);

impl Dialer for CyclingDialer {
    fn dial(&self, _: DialRequest) -> DialFuture<'_> {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            match n % 3 {
                0 => DialOutcome::Accepted,
                1 => DialOutcome::Failed("test".into()),
                _ => DialOutcome::RateLimited { retry_after_s: Some(1) },
            }
        })
    }
}

#[derive(Clone, Debug)]
enum Op {
    Admit {
        tenant: usize,
        line: Option<usize>,
        inbound: bool,
        connected: bool,
        premium: bool,
        fallback: bool,
    },
    /// An admission that may wait (real time, a few ms) runs in the background meanwhile.
    AdmitWaiting {
        tenant: usize,
        wait_ms: u64,
    },
    End {
        pick: usize,
        characters: Option<u64>,
    },
    Heartbeat {
        pick: usize,
    },
    ProviderRejected {
        pick: usize,
        cooldown_ms: u64,
    },
    SetCapacity(u32),
    SetPool {
        premium: bool,
        capacity: u32,
        reserved_priority: u32,
    },
    SetLimit {
        tenant: usize,
        limit: Option<u32>,
    },
    SetFlag(bool),
    SetTenantFlag {
        tenant: usize,
        enabled: Option<bool>,
    },
    SetAddon {
        tenant: usize,
        paid: bool,
    },
    Credit {
        tenant: usize,
        amount: i64,
    },
    Missed {
        line: usize,
        caller: usize,
        /// A provider call id out of a few, so retries of one attempt happen: `None` names none.
        attempt: Option<u8>,
    },
    CancelCallback {
        pick: usize,
    },
    RetryCallback {
        pick: usize,
    },
    /// A campaign of 1-3 of the callers on a line (windows and caps vary).
    CreateCampaign {
        line: usize,
        contacts: usize,
        concurrency: u32,
        narrow_window: bool,
    },
    ControlCampaign {
        pick: usize,
        action: usize,
    },
    SetPrepaid {
        tenant: usize,
        prepaid: bool,
    },
    Crash {
        target: usize,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, proptest::option::of(0..2usize), any::<bool>(), any::<bool>(), proptest::bool::weighted(0.3), any::<bool>())
            .prop_map(|(tenant, line, inbound, connected, premium, fallback)| Op::Admit { tenant, line, inbound, connected, premium, fallback }),
        2 => (0..3usize, 1..30u64).prop_map(|(tenant, wait_ms)| Op::AdmitWaiting { tenant, wait_ms }),
        4 => (any::<usize>(), proptest::option::of(0..5_000u64)).prop_map(|(pick, characters)| Op::End { pick, characters }),
        1 => any::<usize>().prop_map(|pick| Op::Heartbeat { pick }),
        1 => (any::<usize>(), 1..3_000u64).prop_map(|(pick, cooldown_ms)| Op::ProviderRejected { pick, cooldown_ms }),
        1 => (1..6u32).prop_map(Op::SetCapacity),
        1 => (any::<bool>(), 1..6u32, 0..4u32).prop_map(|(premium, capacity, reserved_priority)| Op::SetPool { premium, capacity, reserved_priority }),
        1 => (0..3usize, proptest::option::of(1..4u32)).prop_map(|(tenant, limit)| Op::SetLimit { tenant, limit }),
        1 => any::<bool>().prop_map(Op::SetFlag),
        1 => (0..3usize, proptest::option::of(any::<bool>())).prop_map(|(tenant, enabled)| Op::SetTenantFlag { tenant, enabled }),
        1 => (0..3usize, any::<bool>()).prop_map(|(tenant, paid)| Op::SetAddon { tenant, paid }),
        2 => (0..3usize, -30..60i64).prop_map(|(tenant, amount)| Op::Credit { tenant, amount }),
        2 => (0..2usize, 0..4usize, proptest::option::of(0..3u8)).prop_map(|(line, caller, attempt)| Op::Missed { line, caller, attempt }),
        1 => any::<usize>().prop_map(|pick| Op::CancelCallback { pick }),
        1 => any::<usize>().prop_map(|pick| Op::RetryCallback { pick }),
        1 => (0..2usize, 1..4usize, 1..3u32, proptest::bool::weighted(0.2))
            .prop_map(|(line, contacts, concurrency, narrow_window)| Op::CreateCampaign { line, contacts, concurrency, narrow_window }),
        2 => (any::<usize>(), 0..4usize).prop_map(|(pick, action)| Op::ControlCampaign { pick, action }),
        1 => (0..3usize, any::<bool>()).prop_map(|(tenant, prepaid)| Op::SetPrepaid { tenant, prepaid }),
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

fn request(tenant: usize, line: Option<usize>, direction: Direction, connected: bool) -> AdmitRequest {
    let (tenant, line_id) = match line {
        Some(l) => (LINES[l].1, Some(LINES[l].0.into())),
        None => (tenant, None),
    };
    AdmitRequest {
        line_id,
        direction,
        already_connected: direction == Direction::Inbound && connected,
        ..AdmitRequest::outbound(TENANTS[tenant].0)
    }
}

type Waiting = tokio::task::JoinSet<Result<switchboard_actors::system::Admitted, switchboard_actors::system::AdmitError>>;

async fn apply(system: &Arc<System>, clock: &ManualClock, live: &mut Vec<CallId>, waiting: &mut Waiting, op: Op) {
    match op {
        Op::Admit { tenant, line, inbound, connected, premium, fallback } => {
            let direction = if inbound { Direction::Inbound } else { Direction::Outbound };
            let voice = if premium { Voice::Premium } else { Voice::Standard };
            let request =
                AdmitRequest { voice, fallback, from: Some(CALLERS[tenant].into()), ..request(tenant, line, direction, connected) };
            match system.admit(request.clone()).await {
                Ok(admitted) => live.push(admitted.call.id),
                Err(error) => {
                    let _ = system.turn_away_busy(&request, &error).await;
                }
            }
        }
        Op::AdmitWaiting { tenant, wait_ms } => {
            let request = AdmitRequest { wait_ms, ..request(tenant, None, Direction::Outbound, false) };
            let system = Arc::clone(system);
            waiting.spawn(async move { system.admit(request).await });
        }
        Op::End { pick, characters } if !live.is_empty() => {
            let id = live.swap_remove(pick % live.len());
            let end = EndReport { characters, ..EndReport::outcome("completed") };
            system.end_call(id, end).await.expect("end");
        }
        Op::Heartbeat { pick } if !live.is_empty() => {
            let _ = system.heartbeat(live[pick % live.len()]).await;
        }
        Op::ProviderRejected { pick, cooldown_ms } if !live.is_empty() => {
            let id = live.swap_remove(pick % live.len());
            system.provider_rejected(id, cooldown_ms).await.expect("provider rejected");
        }
        Op::SetCapacity(capacity) => system.set_platform_capacity(capacity).await.expect("capacity"),
        Op::SetPool { premium, capacity, reserved_priority } => {
            let pool = if premium { "premium_voice" } else { "standard_voice" };
            let reserved = [("priority".to_owned(), reserved_priority)].into_iter().collect();
            system.configure_pool(pool, Some(capacity), Some(reserved)).await.expect("pool");
        }
        Op::SetLimit { tenant, limit } => {
            let patch = TenantPatch { concurrent_limit_override: Some(limit), ..TenantPatch::default() };
            system.update_tenant(TENANTS[tenant].0, patch).await.expect("patch");
        }
        Op::SetFlag(enabled) => system.set_flag(PREMIUM_FEATURE.into(), enabled).await.expect("flag"),
        Op::SetTenantFlag { tenant, enabled } => {
            let patch = TenantPatch { flag: Some((PREMIUM_FEATURE.into(), enabled)), ..TenantPatch::default() };
            system.update_tenant(TENANTS[tenant].0, patch).await.expect("tenant flag");
        }
        Op::SetAddon { tenant, paid } => {
            // A trial ends two seconds from now by the manual clock, so `Advance` crosses it.
            let (billing_status, trial_ends_at_ms) =
                if paid { (BillingStatus::Paid, None) } else { (BillingStatus::Trial, Some(clock.now_ms() + 2_000)) };
            let addon = Addon {
                status: AddonStatus::Active,
                billing_status,
                trial_ends_at_ms,
                monthly_character_limit: Some(3_000),
                updated_at_ms: clock.now_ms(),
            };
            let patch = TenantPatch { addon: Some((PREMIUM_FEATURE.into(), addon)), ..TenantPatch::default() };
            system.update_tenant(TENANTS[tenant].0, patch).await.expect("addon");
        }
        Op::Missed { line, caller, attempt } => {
            let attempt = attempt.map(|n| MissedAttempt::ProviderCall(format!("CA{n}")));
            let _ = system.record_missed(LINES[line].0, CALLERS[caller].into(), MissedReason::Busy, attempt).await;
        }
        Op::CreateCampaign { line, contacts, concurrency, narrow_window } => {
            // The manual clock starts at 2027-01-15T08:00Z: a 00:00-00:01 window excludes it.
            let (start, end) = if narrow_window { (0, 1) } else { (0, 24 * 60) };
            let record = CampaignRecord {
                id: CampaignId(0),
                tenant_id: TENANTS[LINES[line].1].0.into(),
                line_id: LINES[line].0.into(),
                contacts: CALLERS[..contacts].iter().map(|phone| Contact { phone: (*phone).into(), name: None, timezone: None }).collect(),
                concurrency,
                max_calls_per_lead_per_day: 2,
                window_start_minute: start,
                window_end_minute: end,
                created_at_ms: 0,
            };
            let _ = system.create_campaign(record).await;
        }
        Op::ControlCampaign { pick, action } => {
            let ids: Vec<CampaignId> = system.inspect(|d| d.campaigns.keys().copied().collect()).await.expect("campaigns");
            if let Some(id) = ids.get(pick % ids.len().max(1)) {
                let action = [CampaignAction::Start, CampaignAction::Pause, CampaignAction::Resume, CampaignAction::Cancel][action];
                let _ = system.control_campaign(*id, action).await;
            }
        }
        Op::CancelCallback { pick } | Op::RetryCallback { pick } => {
            let page = system.list_callbacks(CallbackFilter::default(), 0, 200).await.expect("callbacks");
            if let Some(entry) = page.entries.get(pick % page.entries.len().max(1)) {
                if matches!(op, Op::CancelCallback { .. }) {
                    let _ = system.cancel_callback(entry.id).await;
                } else {
                    let _ = system.retry_callback(entry.id).await;
                }
            }
        }
        Op::Credit { tenant, amount } => {
            // A removal past the balance is refused and changes nothing; anything else lands.
            let _ = system.credit(TENANTS[tenant].0, amount, "test".into()).await;
        }
        Op::SetPrepaid { tenant, prepaid } => {
            let patch = TenantPatch { prepaid: Some(prepaid), ..TenantPatch::default() };
            system.update_tenant(TENANTS[tenant].0, patch).await.expect("prepaid");
        }
        Op::Crash { target } => crash(system, target).await,
        Op::Advance { ms } => clock.advance_ms(ms),
        Op::End { .. } | Op::Heartbeat { .. } | Op::ProviderRejected { .. } => {}
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new(1_800_000_000_000);
    let store = Arc::new(MemoryStore::default());
    let settings = Settings { snapshot_every_events: 10, ..Settings::default() };
    let shared: Arc<dyn Store> = store.clone();
    let system =
        System::start(settings, shared, DurableState::new(), clock.clone(), Arc::new(NoTelemetry)).await.map(Arc::new).expect("start");
    for (id, plan) in TENANTS {
        let record = TenantRecord::new(id, plan, None, 0);
        system.create_tenant(record).await.expect("tenant");
    }
    for (id, tenant, channels) in LINES {
        system
            // Line 0 turns callers away busy and calls them back; line 1 tracks.
            .create_line(LineRecord {
                on_busy: if tenant == 0 { OnBusy::Callback } else { OnBusy::Track },
                ..LineRecord::new(id, TENANTS[tenant].0, channels, 0)
            })
            .await
            .expect("line");
    }
    system.start_dispatcher(Arc::new(CyclingDialer(Default::default()))).await;
    let mut live: Vec<CallId> = Vec::new();
    let mut waiting = Waiting::new();
    for op in ops {
        while let Some(joined) = waiting.try_join_next() {
            if let Ok(admitted) = joined.expect("waiting admission task") {
                live.push(admitted.call.id);
            }
        }
        apply(&system, &clock, &mut live, &mut waiting, op).await;
    }
    while let Some(joined) = waiting.join_next().await {
        if let Ok(admitted) = joined.expect("waiting admission task") {
            live.push(admitted.call.id);
        }
    }
    for _ in 0..5_000 {
        if system.callbacks_settled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if !system.callbacks_settled() {
        let page = system.list_callbacks(CallbackFilter::default(), 0, 200).await.expect("callbacks");
        let statuses: Vec<_> = page.entries.iter().map(|e| (e.id, e.status, e.call_id, e.dialed)).collect();
        panic!("callback dispatches did not settle: {statuses:?}");
    }
    system.sync().await.expect("sync");
    let live_state = system.live_digest().await.expect("live digest");
    let durable = system.inspect(|d| d.digest()).await.expect("durable digest");
    prop_assert_eq!(&live_state, &durable, "live actors differ from the journal writer");
    let replayed_state = recover(&*store).expect("replay");
    let replayed = replayed_state.digest();
    prop_assert_eq!(&live_state, &replayed, "a fresh replay differs from the live state");
    for (tenant, ledger) in &replayed_state.ledgers {
        prop_assert_eq!(ledger.replayed_balance(), i128::from(ledger.balance), "{}'s balance differs from its ledger", tenant);
    }
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
