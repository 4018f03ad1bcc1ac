//! The engine: production's actors on virtual time.
//!
//! A run gets its own OS thread with a current-thread tokio runtime whose clock is paused: time
//! jumps to the next timer whenever every task is idle, so a simulated day takes as long as
//! its work, not as its clock. The actors are `System`'s own, with the in-memory journal
//! (`TraceStore`) and a service clock that follows tokio's (`TokioClock`). Nothing here decides
//! admission: the driver only offers calls, ends them (or loses their end webhook), and
//! applies the scenario's timed events; the watchdog reclaims what is never ended, as in
//! production.
//!
//! Determinism: one thread, one seeded RNG consumed in the driver's order, ordered maps, tokio
//! time only; the run's thread mutes `tracing` so a simulation never writes into the service's
//! log.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_actors::clock::{Clock, TokioClock};
use switchboard_actors::context::{Arbitration, PoolSpec, Settings};
use switchboard_actors::core::call::{EndReport, Watchdog};
use switchboard_actors::journal::Entity;
use switchboard_actors::model::{Addon, AddonStatus, BillingStatus, LineId, LineRecord, TenantId, TenantRecord, Voice};
use switchboard_actors::state::DurableState;
use switchboard_actors::store::{Store, recover};
use switchboard_actors::system::{AdmitError, AdmitRequest, System, SystemError};
use switchboard_actors::telemetry::NoTelemetry;
use switchboard_actors::tenant::TenantPatch;

use crate::report::{Invariant, Outcomes, Percentiles, Report, Starvation, jain};
use crate::rng::Rng;
use crate::scenario::{CrashTarget, Distribution, PREMIUM_POOL, STANDARD_POOL, Scenario, TimedEvent};
use crate::trace::{TraceStore, Violations, Watcher};

/// What one run may use. Past a bound the run stops with an error, never a partial report.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Calls offered (arrivals and bursts). Checked before the run against the scenario's
    /// expected count, and during it against the real one.
    pub calls_max: u64,
    /// Wall-clock time for the run; `None`: unbounded (the CLI).
    pub wall_time_max: Option<Duration>,
}

impl Limits {
    /// `WallTimeExceeded` once a run started at `started` has used up its wall time.
    fn check_wall_time(&self, started: std::time::Instant) -> Result<(), RunError> {
        match self.wall_time_max {
            Some(limit) if started.elapsed() > limit => Err(RunError::WallTimeExceeded { limit_s: limit.as_secs() }),
            _ => Ok(()),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits { calls_max: 5_000_000, wall_time_max: None }
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RunError {
    #[error("the scenario offers about {expected} calls; a run may offer at most {max}")]
    TooManyCalls { expected: u64, max: u64 },
    #[error("the run took longer than its wall-time limit of {limit_s} s")]
    WallTimeExceeded { limit_s: u64 },
    #[error("the simulation failed: {0}")]
    Failed(String),
}

/// Runs `scenario` with `seed` on a thread of its own and returns its report.
pub fn run(scenario: &Scenario, seed: u64, limits: &Limits) -> Result<Report, RunError> {
    let expected = scenario.expected_calls().ceil() as u64;
    if expected > limits.calls_max {
        return Err(RunError::TooManyCalls { expected, max: limits.calls_max });
    }
    quiet_injected_panics();
    let scenario = scenario.clone();
    let limits = limits.clone();
    let thread = std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
        let _muted = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| RunError::Failed(format!("runtime: {e}")))?;
        runtime.block_on(Engine::run(scenario, seed, limits))
    });
    let thread = thread.map_err(|e| RunError::Failed(format!("could not start the simulation thread: {e}")))?;
    thread.join().unwrap_or_else(|_| Err(RunError::Failed("the simulation thread panicked".into())))
}

const THREAD_NAME: &str = "switchboard-simulation";
/// Times the driver retries an operator's change that found an actor being rebuilt.
const OPERATOR_RETRIES: u32 = 50;

/// Crash events make actors panic on purpose; their messages would only be noise. Anything
/// else still reaches the previous hook.
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info.payload().downcast_ref::<&str>().is_some_and(|m| m.starts_with("injected "));
            if injected && std::thread::current().name() == Some(THREAD_NAME) {
                return;
            }
            previous(info);
        }));
    });
}

/// One tenant, as the driver needs it.
struct SimTenant {
    id: TenantId,
    group: usize,
    class: usize,
    lines: Vec<LineId>,
}

/// Every call's outcome, in the order they happen, by class, group and tenant.
#[derive(Default)]
struct Tally {
    classes: Vec<Outcomes>,
    groups: Vec<Outcomes>,
    class_waits: Vec<Vec<u64>>,
    group_waits: Vec<Vec<u64>>,
    /// Per tenant: (offered, admitted).
    tenants: Vec<(u64, u64)>,
    server_faults: Violations,
}

impl Tally {
    fn both(&mut self, tenant: &SimTenant, record: impl Fn(&mut Outcomes)) {
        record(&mut self.classes[tenant.class]);
        record(&mut self.groups[tenant.group]);
    }
}

/// One call the driver offers.
struct Offer {
    tenant: usize,
    request: AdmitRequest,
    duration_ms: u64,
    heartbeat_every_ms: Option<u64>,
    lose_end: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    /// The next Poisson arrival among a group's tenants.
    Arrival(usize),
    /// The scenario's timed event.
    Timed(usize),
}

struct Engine {
    scenario: Scenario,
    limits: Limits,
    rng: Rng,
    system: Arc<System>,
    store: Arc<TraceStore>,
    origin: tokio::time::Instant,
    tenants: Arc<Vec<SimTenant>>,
    tally: Arc<Mutex<Tally>>,
    /// Call tasks still running (admitting, talking, or about to end).
    in_flight: Arc<AtomicUsize>,
    /// Calls offered so far (the `calls_max` bound's counter).
    offered: u64,
    loss_share: f64,
    wall_started: std::time::Instant,
}

impl Engine {
    async fn run(scenario: Scenario, seed: u64, limits: Limits) -> Result<Report, RunError> {
        let wall_started = std::time::Instant::now();
        let mut engine = Engine::boot(scenario, seed, limits, wall_started).await?;
        engine.drive().await?;
        engine.drain().await?;
        engine.report(seed).await
    }

    fn settings(scenario: &Scenario) -> Settings {
        let classes = scenario.class_table();
        let pools = scenario
            .pools
            .iter()
            .map(|(name, def)| {
                let reserved = def.reserved.iter().map(|(class, slots)| (class.clone(), slots.0)).collect();
                let price = if name == PREMIUM_POOL { 30 } else { 0 };
                (name.clone(), PoolSpec { capacity: def.capacity.0, reserved, price_cents_per_1000_characters: price })
            })
            .collect();
        let defaults = Arbitration::default();
        let bound = scenario.starvation_bound.0;
        let arbitration = Arbitration {
            classes,
            pools,
            default_pool: STANDARD_POOL.into(),
            premium_pool: scenario.pools.contains_key(PREMIUM_POOL).then(|| PREMIUM_POOL.into()),
            timing: switchboard_actors::core::pool::PoolTiming { aging_ms: bound / 2, ..defaults.timing },
            starvation_bound_ms: bound,
            // The service's bound, or the scenario's longest wait if that is longer.
            wait_ms_max: defaults.wait_ms_max.max(scenario.longest_wait_ms()),
            ..defaults
        };
        let watchdog = &scenario.watchdog;
        Settings {
            plans: Arc::new(scenario.plan_table()),
            arbitration: Arc::new(arbitration),
            watchdog: Watchdog { max_duration_ms: watchdog.max_duration.0, stale_after_ms: watchdog.stale_after.0 },
            sweep_interval: Duration::from_millis(watchdog.sweep_interval.0),
            ..Settings::default()
        }
    }

    /// Boots the actors and creates the tenants and lines (the wall-time bound covers this too).
    async fn boot(scenario: Scenario, seed: u64, limits: Limits, wall_started: std::time::Instant) -> Result<Engine, RunError> {
        let failed = |what: &'static str| move |e: String| RunError::Failed(format!("{what}: {e}"));
        let settings = Engine::settings(&scenario);
        let clock: Arc<dyn Clock> = TokioClock::new(scenario.start_ms);
        let class_table = scenario.class_table();
        let pools: Vec<String> = scenario.pools.keys().cloned().collect();
        let watcher = Watcher::new(clock.now_ms(), scenario.plan_table(), class_table.classes.clone(), pools, scenario.duration.0);
        let store = Arc::new(TraceStore::new(Arc::clone(&clock), watcher));
        let shared: Arc<dyn Store> = store.clone();
        let system = System::start(settings, shared, DurableState::new(), Arc::clone(&clock), Arc::new(NoTelemetry))
            .await
            .map_err(|e| RunError::Failed(format!("start: {e}")))?;
        let system = Arc::new(system);
        if scenario.pools.contains_key(PREMIUM_POOL) {
            let feature = system.settings().arbitration.premium_feature.clone();
            system.set_flag(feature, true).await.map_err(|e| e.to_string()).map_err(failed("flag"))?;
        }
        let mut tenants = Vec::new();
        for (g, group) in scenario.groups.iter().enumerate() {
            let class = class_table.rank(class_table.class_of_plan(&group.plan));
            for n in 0..group.count.0 {
                if n % 256 == 0 {
                    limits.check_wall_time(wall_started)?;
                }
                let id = format!("{}-{n}", group.name);
                let limit_override = group.limit_override.map(|l| l.0);
                system
                    .create_tenant(TenantRecord::new(&id, &group.plan, limit_override, clock.now_ms()))
                    .await
                    .map_err(|e| e.to_string())
                    .map_err(failed("tenant"))?;
                Engine::provision(&system, &id, group, clock.now_ms()).await.map_err(failed("tenant"))?;
                let mut lines = Vec::new();
                for l in 0..group.lines.0 {
                    let number = format!("+1555{g:02}{n:06}{l:02}");
                    let record = LineRecord::new(&number, &id, group.channels.0, clock.now_ms());
                    system.create_line(record).await.map_err(|e| e.to_string()).map_err(failed("line"))?;
                    lines.push(LineId::from(number));
                }
                tenants.push(SimTenant { id: id.into(), group: g, class, lines });
            }
        }
        let classes = class_table.classes.len();
        let tally = Tally {
            classes: vec![Outcomes::default(); classes],
            groups: vec![Outcomes::default(); scenario.groups.len()],
            class_waits: vec![Vec::new(); classes],
            group_waits: vec![Vec::new(); scenario.groups.len()],
            tenants: vec![(0, 0); tenants.len()],
            server_faults: Violations::default(),
        };
        Ok(Engine {
            rng: Rng::new(seed),
            scenario,
            limits,
            system,
            store,
            origin: tokio::time::Instant::now(),
            tenants: Arc::new(tenants),
            tally: Arc::new(Mutex::new(tally)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            offered: 0,
            loss_share: 0.0,
            wall_started,
        })
    }

    /// Prepaid credits and the premium add-on, as the group says.
    async fn provision(system: &System, id: &str, group: &crate::scenario::Group, now_ms: u64) -> Result<(), String> {
        if let Some(credits) = group.credits {
            let patch = TenantPatch { prepaid: Some(true), ..TenantPatch::default() };
            system.update_tenant(id, patch).await.map_err(|e| e.to_string())?;
            if credits.0 > 0 {
                system.credit(id, i64::from(credits.0), "simulation".into()).await.map_err(|e| e.to_string())?;
            }
        }
        if group.premium_addon {
            let addon = Addon {
                status: AddonStatus::Active,
                billing_status: BillingStatus::Paid,
                trial_ends_at_ms: None,
                monthly_character_limit: None,
                updated_at_ms: now_ms,
            };
            let feature = system.settings().arbitration.premium_feature.clone();
            let patch = TenantPatch { addon: Some((feature, addon)), ..TenantPatch::default() };
            system.update_tenant(id, patch).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn check_wall_time(&self) -> Result<(), RunError> {
        self.limits.check_wall_time(self.wall_started)
    }

    fn at(&self, ms: u64) -> tokio::time::Instant {
        self.origin + Duration::from_millis(ms)
    }

    /// The traffic period: Poisson arrivals and the timed events, in time order (ties: the
    /// order they were scheduled). Each tenant's calls arrive as a Poisson process at its
    /// group's rate. Together a group's tenants are one Poisson process at the summed rate whose
    /// arrivals go to a tenant drawn uniformly: the same traffic, with one agenda entry per group
    /// instead of one per tenant (ten thousand tenants made the agenda's heap a cost).
    async fn drive(&mut self) -> Result<(), RunError> {
        let duration_ms = self.scenario.duration.0;
        // (time, order, action): the order number makes ties deterministic.
        let mut agenda: BinaryHeap<Reverse<(u64, u64, Action)>> = BinaryHeap::new();
        let mut order = 0u64;
        for (index, event) in self.scenario.events.iter().enumerate() {
            agenda.push(Reverse((event.at.0, order, Action::Timed(index))));
            order += 1;
        }
        // Per group: its first tenant (they are contiguous) and its arrival clock, exact in ms.
        let firsts: Vec<usize> =
            (0..self.scenario.groups.len()).map(|g| self.tenants.iter().position(|t| t.group == g).expect("a group has tenants")).collect();
        let mut clocks = vec![0.0f64; self.scenario.groups.len()];
        for (group, clock) in clocks.iter_mut().enumerate() {
            if let Some(at) = self.next_arrival(group, clock) {
                agenda.push(Reverse((at, order, Action::Arrival(group))));
                order += 1;
            }
        }
        let mut steps = 0u64;
        while let Some(Reverse((at_ms, _, action))) = agenda.pop() {
            tokio::time::sleep_until(self.at(at_ms)).await;
            match action {
                Action::Arrival(group) => {
                    let count = u64::from(self.scenario.groups[group].count.0);
                    let tenant = firsts[group] + self.rng.below(count) as usize;
                    let offer = self.offer(tenant, None);
                    self.spawn(offer)?;
                    if let Some(next) = self.next_arrival(group, &mut clocks[group]) {
                        agenda.push(Reverse((next, order, Action::Arrival(group))));
                        order += 1;
                    }
                }
                Action::Timed(index) => {
                    let event = self.scenario.events[index].clone();
                    self.timed(&event).await?;
                }
            }
            steps += 1;
            if steps.is_multiple_of(1_024) {
                self.check_wall_time()?;
            }
        }
        tokio::time::sleep_until(self.at(duration_ms)).await;
        Ok(())
    }

    /// Advances `group`'s arrival clock (ms, unrounded, so gaps shorter than a millisecond
    /// add up) by one gap at the group's summed rate; the arrival, if before the end.
    fn next_arrival(&mut self, group: usize, clock_ms: &mut f64) -> Option<u64> {
        let group = &self.scenario.groups[group];
        let rate = group.traffic.calls_per_hour.0 * f64::from(group.count.0);
        if rate <= 0.0 {
            return None;
        }
        *clock_ms += self.rng.exponential(3_600_000.0 / rate);
        let at = clock_ms.round() as u64;
        (at < self.scenario.duration.0).then_some(at)
    }

    /// Draws one call of `tenant`'s traffic. A burst fixes the direction (outbound), its wait,
    /// and maybe its duration.
    fn offer(&mut self, tenant: usize, burst: Option<(u64, Option<u64>)>) -> Offer {
        let sim = &self.tenants[tenant];
        let traffic = &self.scenario.groups[sim.group].traffic;
        let inbound = burst.is_none() && self.rng.chance(traffic.inbound_share.0);
        let connected = inbound && self.rng.chance(traffic.already_connected_share.0);
        let premium = self.rng.chance(traffic.premium_share.0);
        let line = match sim.lines.len() {
            0 => None,
            n => Some(sim.lines[self.rng.below(n as u64) as usize].clone()),
        };
        let drawn = {
            let dist = &traffic.duration;
            let mean = dist.mean.0 as f64;
            let raw = match dist.distribution {
                Distribution::Exponential => self.rng.exponential(mean),
                Distribution::LogNormal => self.rng.log_normal(mean, dist.sigma.0),
            };
            (raw.round() as u64).clamp(1_000, dist.cap.0.max(1_000))
        };
        let lose_end = self.rng.chance(self.loss_share);
        let (wait_ms, duration_ms) = match burst {
            Some((wait, duration)) => (wait, duration.unwrap_or(drawn)),
            None => (if inbound { 0 } else { traffic.wait.0 }, drawn),
        };
        let request = AdmitRequest {
            line_id: line,
            direction: if inbound { switchboard_actors::model::Direction::Inbound } else { switchboard_actors::model::Direction::Outbound },
            already_connected: connected,
            voice: if premium { Voice::Premium } else { Voice::Standard },
            fallback: true,
            wait_ms,
            ..AdmitRequest::outbound(sim.id.clone())
        };
        Offer { tenant, request, duration_ms, heartbeat_every_ms: traffic.heartbeat_every.map(|h| h.0), lose_end }
    }

    /// Starts one call's life in a task of its own: admission, talk (with heartbeats), end.
    fn spawn(&mut self, offer: Offer) -> Result<(), RunError> {
        self.offered += 1;
        if self.offered > self.limits.calls_max {
            return Err(RunError::TooManyCalls { expected: self.offered, max: self.limits.calls_max });
        }
        let system = Arc::clone(&self.system);
        let tally = Arc::clone(&self.tally);
        let tenants = Arc::clone(&self.tenants);
        let in_flight = Arc::clone(&self.in_flight);
        in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            call_life(&system, &tally, &tenants[offer.tenant], offer).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(())
    }

    async fn timed(&mut self, event: &TimedEvent) -> Result<(), RunError> {
        let failed = |what: &'static str| move |e: String| RunError::Failed(format!("{what}: {e}"));
        if let Some(burst) = &event.burst {
            let tenant = self.tenant_index(&burst.group, burst.tenant);
            for n in 0..burst.calls.0 {
                if n % 1_024 == 1_023 {
                    self.check_wall_time()?;
                }
                let offer = self.offer(tenant, Some((burst.wait.0, burst.duration.map(|d| d.0))));
                self.spawn(offer)?;
            }
        }
        if let Some(change) = &event.capacity {
            // As an operator would: an arbiter being rebuilt (a crash just before) is retried.
            let mut attempts = 0;
            loop {
                match self.system.configure_pool(&change.pool, Some(change.capacity.0), None).await {
                    Ok(()) => break,
                    Err(SystemError::Unavailable(_)) if attempts < OPERATOR_RETRIES => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => return Err(failed("capacity")(error.to_string())),
                }
            }
        }
        if let Some(burst) = &event.provider_429 {
            let calls = self.store.watcher().oldest_in_pool(&burst.pool, burst.calls.0 as usize);
            for call in calls {
                // A call that ended meanwhile is simply not rejected.
                let _ = self.system.provider_rejected(call, burst.cooldown.0).await;
            }
        }
        if let Some(loss) = &event.webhook_loss {
            self.loss_share = loss.share.0;
        }
        if let Some(crash) = &event.crash {
            let entity = match crash.target {
                CrashTarget::Platform => Some(Entity::Platform),
                CrashTarget::Tenant => {
                    let index = self.tenant_index(crash.group.as_deref().unwrap_or_default(), crash.tenant);
                    Some(Entity::Tenant(self.tenants[index].id.clone()))
                }
                CrashTarget::Line => {
                    let index = self.tenant_index(crash.group.as_deref().unwrap_or_default(), crash.tenant);
                    self.tenants[index].lines.first().map(|line| Entity::Line(line.clone()))
                }
                CrashTarget::Call => self.store.watcher().oldest_call().map(Entity::Call),
            };
            if let Some(entity) = entity {
                self.system.inject_crash(&entity);
            }
        }
        Ok(())
    }

    fn tenant_index(&self, group: &str, tenant: u32) -> usize {
        let g = self.scenario.groups.iter().position(|g| g.name == group).expect("checked: the group exists");
        self.tenants.iter().position(|t| t.group == g).expect("a group has tenants") + tenant as usize
    }

    /// After the traffic: waits (in simulated time) until every call task is done and every
    /// call has ended or been reclaimed, or until no call could still be live.
    async fn drain(&mut self) -> Result<(), RunError> {
        let watchdog = &self.scenario.watchdog;
        let step = Duration::from_millis(watchdog.sweep_interval.0);
        let longest = self.scenario.groups.iter().map(|g| g.traffic.duration.cap.0).max().unwrap_or(0);
        let horizon_ms = self.scenario.duration.0
            + longest.max(watchdog.max_duration.0)
            + watchdog.stale_after.0
            + 3 * watchdog.sweep_interval.0
            + self.system.settings().arbitration.wait_ms_max;
        loop {
            let idle = self.in_flight.load(Ordering::SeqCst) == 0 && self.store.watcher().live_calls() == 0;
            if idle || tokio::time::Instant::now() >= self.at(horizon_ms) {
                return Ok(());
            }
            self.check_wall_time()?;
            tokio::time::sleep(step).await;
        }
    }

    async fn report(self, seed: u64) -> Result<Report, RunError> {
        let failed = |what: &'static str| move |e: String| RunError::Failed(format!("{what}: {e}"));
        self.system.sync().await.map_err(failed("sync"))?;
        let live = self.system.live_digest().await.map_err(failed("live state"))?;
        let durable = self.system.inspect(|d| d.digest()).await.map_err(failed("journal state"))?;
        let replayed = recover(&*self.store).map_err(|e| e.to_string()).map_err(failed("replay"))?.digest();
        // Live calls by the actors' directory, with a few as examples.
        let still_live = self.system.list_calls(None, None, None, usize::MAX);
        // The run ends here: the statistics and the simulated time do not count the shutdown.
        let end_ms = self.system.now_ms();
        let simulated_ms = tokio::time::Instant::now().saturating_duration_since(self.origin).as_millis() as u64;
        self.check_wall_time()?;
        self.system.shutdown().await.map_err(failed("shutdown"))?;

        let mut invariants = Vec::new();
        let mut watcher = self.store.watcher();
        let (pools, timeline) = watcher.finish(end_ms);
        let from = |name: &str, violations: &Violations, checked: &str| Invariant {
            name: name.into(),
            passed: violations.count == 0,
            violations: violations.count,
            detail: if violations.count == 0 { vec![checked.into()] } else { violations.examples.clone() },
        };
        invariants.push(from(
            "capacity_never_exceeded",
            &watcher.capacity_exceeded,
            "every admission not force-admitted fit the pool's configured capacity",
        ));
        invariants.push(from(
            "tenant_limits_respected",
            &watcher.tenant_limit_exceeded,
            "every admission not force-admitted fit its tenant's limit",
        ));
        invariants.push(from(
            "line_channels_respected",
            &watcher.line_channels_exceeded,
            "every admission not force-admitted fit its line's channels",
        ));
        let mut held_by_ended = Violations::default();
        let holders =
            live.tenants.values().flat_map(|(_, held, _)| held.iter()).chain(live.lines.values().flat_map(|(_, held)| held.iter()));
        let holders = holders.chain(live.pools.values().flat_map(|pool| pool.held.iter()));
        for call in holders {
            if !live.live_calls.contains_key(call) {
                held_by_ended.add(|| format!("{call} holds a slot but is not live"));
            }
        }
        invariants.push(from(
            "no_slot_held_by_an_ended_call",
            &held_by_ended,
            "every slot tenants, lines and pools hold belongs to a live call",
        ));
        let mut unended = Violations::default();
        for call in &still_live {
            unended.add(|| format!("{} is still live at the end of the run", call.id));
        }
        if watcher.live_calls() > 0 && still_live.is_empty() {
            unended.add(|| format!("the journal has {} calls live at the end of the run", watcher.live_calls()));
        }
        invariants.push(from("every_call_ended_or_reclaimed", &unended, "no call is live once the run has drained"));
        let mut replay = Violations::default();
        if live != durable {
            replay.add(|| "the live actors differ from the journal writer's state".into());
        }
        if live != replayed {
            replay.add(|| "a fresh replay of the journal differs from the live actors".into());
        }
        invariants.push(from("journal_replay_equals_live_state", &replay, "live actors, journal state and a fresh replay agree"));
        invariants.push(from("ended_calls_were_live", &watcher.unknown_call_ended, "every end in the journal ended a live call"));
        let tally = self.tally.lock().expect("tally lock");
        invariants.push(from("no_server_faults", &tally.server_faults, "no admission failed with a server fault (a 5xx)"));

        let class_table = self.scenario.class_table();
        let mut classes = BTreeMap::new();
        let mut groups = BTreeMap::new();
        let mut fairness = BTreeMap::new();
        let mut starvation = BTreeMap::new();
        let bound_ms = self.scenario.starvation_bound.0;
        let mut class_outcomes = tally.classes.clone();
        let mut group_outcomes = tally.groups.clone();
        for sim in self.tenants.iter() {
            let reclaimed = watcher.reclaimed_stale.get(&sim.id).copied().unwrap_or(0);
            let rejected = watcher.provider_rejected.get(&sim.id).copied().unwrap_or(0);
            for outcomes in [&mut class_outcomes[sim.class], &mut group_outcomes[sim.group]] {
                outcomes.reclaimed_stale += reclaimed;
                outcomes.provider_rejected += rejected;
            }
        }
        for (c, name) in class_table.classes.iter().enumerate() {
            let mut outcomes = class_outcomes[c].clone();
            let mut waits = tally.class_waits[c].clone();
            outcomes.wait_ms = Percentiles::of(&mut waits);
            let shares: Vec<f64> = self
                .tenants
                .iter()
                .enumerate()
                .filter(|(_, t)| t.class == c)
                .map(|(n, _)| tally.tenants[n])
                .filter(|(offered, _)| *offered > 0)
                .map(|(offered, admitted)| admitted as f64 / offered as f64)
                .collect();
            if outcomes.offered > 0 {
                fairness.insert(name.clone(), jain(&shares));
                let longest = outcomes.wait_ms.max;
                starvation.insert(name.clone(), Starvation { longest_wait_ms: longest, bound_ms, within_bound: longest <= bound_ms });
                classes.insert(name.clone(), outcomes);
            }
        }
        for (g, group) in self.scenario.groups.iter().enumerate() {
            let mut outcomes = group_outcomes[g].clone();
            let mut waits = tally.group_waits[g].clone();
            outcomes.wait_ms = Percentiles::of(&mut waits);
            groups.insert(group.name.clone(), outcomes);
        }
        Ok(Report {
            scenario: self.scenario.name.clone(),
            description: self.scenario.description.clone(),
            seed,
            digest: watcher.digest(),
            events: watcher.events,
            simulated_ms,
            traffic_ms: self.scenario.duration.0,
            starvation_bound_ms: bound_ms,
            passed: invariants.iter().all(|i| i.passed),
            invariants,
            classes,
            groups,
            pools,
            fairness,
            starvation,
            timeline,
        })
    }
}

/// One call: its admission, then (if admitted) its talk time with heartbeats, then its end
/// webhook, unless the scenario loses it.
async fn call_life(system: &Arc<System>, tally: &Mutex<Tally>, tenant: &SimTenant, offer: Offer) {
    let asked_to_wait = offer.request.wait_ms > 0;
    let connected = offer.request.already_connected;
    let result = system.admit_in_task(offer.request).await;
    {
        let mut tally = tally.lock().expect("tally lock");
        tally.tenants[offer.tenant].0 += 1;
        tally.both(tenant, |o| {
            o.offered += 1;
            o.connected_inbound_offered += u64::from(connected);
        });
        let waited_ms = match &result {
            Ok(admitted) => {
                tally.tenants[offer.tenant].1 += 1;
                let call = &admitted.call;
                tally.both(tenant, |o| {
                    o.admitted += 1;
                    o.connected_inbound_recorded += u64::from(connected);
                    o.fell_back += u64::from(call.fallback_reason.is_some());
                    o.over_limit_inbound += u64::from(call.over_limit);
                    o.lost_end_webhooks += u64::from(offer.lose_end);
                });
                call.waited_ms
            }
            Err(error) => {
                let (code, waited_ms) = denial_code(error);
                tally.both(tenant, |o| *o.denied.entry(code.to_owned()).or_default() += 1);
                if let AdmitError::Unavailable(why) = error {
                    tally.server_faults.add(|| format!("tenant {}: {why}", tenant.id));
                }
                waited_ms
            }
        };
        if asked_to_wait && waited_ms > 0 {
            tally.both(tenant, |o| o.waited += 1);
            tally.class_waits[tenant.class].push(waited_ms);
            tally.group_waits[tenant.group].push(waited_ms);
        }
    }
    let Ok(admitted) = result else { return };
    let id = admitted.call.id;
    let mut left_ms = offer.duration_ms;
    if let Some(every) = offer.heartbeat_every_ms {
        while left_ms > every {
            tokio::time::sleep(Duration::from_millis(every)).await;
            left_ms -= every;
            if system.heartbeat(id).await.is_err() {
                // Ended already (a provider 429, or reclaimed): nothing left to say.
                return;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(left_ms)).await;
    if offer.lose_end {
        return;
    }
    let end = EndReport { duration_s: Some(offer.duration_ms / 1_000), ..EndReport::outcome("completed") };
    let _ = system.end_call(id, end).await;
}

/// The code the HTTP API would answer, and how long the request waited first.
fn denial_code(error: &AdmitError) -> (&'static str, u64) {
    let waited_ms = match error {
        AdmitError::Denied(denial) => denial.waited_ms,
        _ => 0,
    };
    (error.code(), waited_ms)
}
