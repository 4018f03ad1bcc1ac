//! The platform-capacity actor: the arbiter of every provider pool, owned in one place.
//!
//! Each pool is a `PoolCore` (capacity, reserved headroom per class, the fair queue, the
//! provider cooldown, the learned capacity). This actor turns admissions into core requests and
//! carries out what the cores return: it answers waiters when they get their slot, turns them
//! away when the provider cools the pool down, journals limit changes and provider rejections,
//! and wakes itself when time alone can free a slot (a cooldown ending, the learned capacity
//! growing back). A grant whose admission has gone away is released at once, so no slot is
//! ever granted to nobody.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::context::Arbitration;
use crate::core::pool::{ClassRank, Decision, Grant, PoolCore, PoolDenial, PoolLimits, PoolView, Request};
use crate::event::Event;
use crate::journal::{AppendError, Guard, JournalMsg, unknown_outcome};
use crate::model::{CallId, Name};
use crate::state::{PoolDigest, PoolRecord};
use crate::telemetry::Telemetry;

/// Where an admission may take its slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Pool(Name),
    /// A premium voice: the premium pool if it has room now; otherwise `fallback` (with the
    /// request's wait), or, without a fallback, the premium pool with the request's wait.
    Premium {
        premium: Name,
        fallback: Option<Name>,
    },
}

impl Route {
    /// The pool a waiting request of this route waits in.
    pub fn waiting_pool(&self) -> &Name {
        match self {
            Route::Pool(pool) | Route::Premium { fallback: Some(pool), .. } | Route::Premium { premium: pool, fallback: None } => pool,
        }
    }
}

/// Why a premium call went to the fallback pool.
pub const FALLBACK_PREMIUM_POOL_FULL: &str = "premium_pool_full";
pub const FALLBACK_PREMIUM_POOL_COOLDOWN: &str = "premium_pool_cooldown";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolAnswer {
    Granted {
        pool: Name,
        over_limit: bool,
        waited_ms: u64,
        fallback_reason: Option<&'static str>,
    },
    /// `was_waiting`: the request had been queued (a cooldown turned it away).
    Denied {
        pool: String,
        denial: PoolDenial,
        was_waiting: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("no pool named {0}")]
    UnknownPool(String),
    #[error(transparent)]
    Journal(#[from] AppendError),
}

/// Every pool as the actor holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformView {
    pub pools: BTreeMap<String, PoolView>,
    pub reserved: BTreeMap<String, BTreeMap<String, u32>>,
}

impl PlatformView {
    pub fn digest(&self) -> BTreeMap<String, PoolDigest> {
        self.pools
            .iter()
            .map(|(name, view)| {
                let digest = PoolDigest {
                    capacity: view.limits.capacity,
                    reserved: self.reserved[name].clone(),
                    learned: view.learned,
                    cooldown_until_ms: view.cooldown_until_ms,
                    held: view.held.keys().copied().collect(),
                };
                (name.clone(), digest)
            })
            .collect()
    }
}

pub enum PlatformMsg {
    /// An admission asks for a slot; `answer` gets the decision now or, if it waits, later.
    Request {
        route: Route,
        request: Request,
        answer: oneshot::Sender<PoolAnswer>,
    },
    /// A call ended (or its admission failed after the grant): its slot frees.
    Release {
        call: CallId,
    },
    /// A waiting admission gives up; the answer says why it had no slot in `pool`.
    Leave {
        call: CallId,
        pool: String,
        class: ClassRank,
        reply: RpcReplyPort<PoolDenial>,
    },
    /// `PATCH /v1/platform/pools/{name}`: journaled, then applied.
    Configure {
        pool: String,
        capacity: Option<u32>,
        reserved: Option<BTreeMap<String, u32>>,
        reply: RpcReplyPort<Result<(), PoolError>>,
    },
    /// The provider refused `call` with a 429: journaled, then the pool cools down.
    ProviderRejected {
        pool: String,
        call: CallId,
        cooldown_ms: u64,
        reply: RpcReplyPort<Result<(), PoolError>>,
    },
    /// Time passed: a cooldown may have ended, the learned capacity may have grown.
    Tick,
    Get {
        reply: RpcReplyPort<PlatformView>,
    },
    /// Fault injection for the supervision tests.
    Crash,
}

pub struct PlatformActor {
    pub journal: ActorRef<JournalMsg>,
    pub generation: u32,
    pub journal_timeout: Duration,
    pub telemetry: Arc<dyn Telemetry>,
    pub clock: Arc<dyn Clock>,
    pub arbitration: Arc<Arbitration>,
}

struct PoolSlot {
    core: PoolCore,
    /// The reservations by class name, as journaled.
    reserved: BTreeMap<String, u32>,
    /// What the gauges last said (capacity, active, waiting): only changes are sent. Kept with
    /// the pool, not in a map by name, because it is read after every message.
    reported: Option<(u32, u32, u32)>,
}

struct Waiting {
    pool: Name,
    answer: oneshot::Sender<PoolAnswer>,
    fallback_reason: Option<&'static str>,
}

pub struct PlatformState {
    pools: BTreeMap<String, PoolSlot>,
    /// Admissions waiting in some pool's queue, with where to answer them.
    waiting: BTreeMap<CallId, Waiting>,
    /// When the next `Tick` is due, if one is scheduled.
    tick_at_ms: Option<u64>,
}

impl Actor for PlatformActor {
    type Msg = PlatformMsg;
    type State = PlatformState;
    type Arguments = (BTreeMap<String, PoolRecord>, BTreeMap<CallId, (String, String)>);

    async fn pre_start(&self, _: ActorRef<PlatformMsg>, (records, held): Self::Arguments) -> Result<PlatformState, ActorProcessingErr> {
        let classes = &self.arbitration.classes;
        let pools = records
            .into_iter()
            .map(|(name, record)| {
                let held =
                    held.iter().filter(|(_, (pool, _))| *pool == name).map(|(call, (_, class))| (*call, classes.rank(class))).collect();
                let limits = PoolLimits { capacity: record.capacity, reserved: self.reserved_by_rank(&record.reserved) };
                let core =
                    PoolCore::new(limits, self.arbitration.timing, classes.classes.len(), record.learned, record.cooldown_until_ms, held);
                (name, PoolSlot { core, reserved: record.reserved, reported: None })
            })
            .collect();
        let mut state = PlatformState { pools, waiting: BTreeMap::new(), tick_at_ms: None };
        self.report(&mut state);
        Ok(state)
    }

    async fn handle(&self, myself: ActorRef<PlatformMsg>, msg: PlatformMsg, state: &mut PlatformState) -> Result<(), ActorProcessingErr> {
        let now_ms = self.clock.now_ms();
        match msg {
            PlatformMsg::Request { route, request, answer } => self.request(state, route, request, answer, now_ms),
            PlatformMsg::Release { call } => self.release(state, call, now_ms),
            PlatformMsg::Leave { call, pool, class, reply } => {
                state.waiting.remove(&call);
                let denial = match state.pools.get_mut(&pool) {
                    Some(slot) => slot.core.leave(call, now_ms).unwrap_or_else(|| slot.core.denial(class, now_ms)),
                    None => PoolDenial::Full { current_active: 0, limit: 0 },
                };
                let _ = reply.send(denial);
            }
            PlatformMsg::Configure { pool, capacity, reserved, reply } => {
                // Rare branches that wait on the journal are boxed: a handler's future is as large as
                // its largest branch, and ractor moves it whole for every message, the hot ones too.
                let result = Box::pin(self.configure(state, pool, capacity, reserved, now_ms)).await;
                let unknown = matches!(result, Err(PoolError::Journal(AppendError::Unknown)));
                let _ = reply.send(result);
                if unknown {
                    return Err(unknown_outcome());
                }
            }
            PlatformMsg::ProviderRejected { pool, call, cooldown_ms, reply } => {
                let result = Box::pin(self.provider_rejected(state, pool, call, cooldown_ms, now_ms)).await;
                let unknown = matches!(result, Err(PoolError::Journal(AppendError::Unknown)));
                let _ = reply.send(result);
                if unknown {
                    return Err(unknown_outcome());
                }
            }
            PlatformMsg::Tick => {
                state.tick_at_ms = None;
                let names: Vec<String> = state.pools.keys().cloned().collect();
                for pool in names {
                    let grants = state.pools.get_mut(&pool).expect("pool exists").core.tick(now_ms);
                    self.deliver(state, &pool, grants, now_ms);
                }
            }
            PlatformMsg::Get { reply } => {
                let view = PlatformView {
                    pools: state.pools.iter().map(|(name, slot)| (name.clone(), slot.core.view(now_ms))).collect(),
                    reserved: state.pools.iter().map(|(name, slot)| (name.clone(), slot.reserved.clone())).collect(),
                };
                let _ = reply.send(view);
            }
            PlatformMsg::Crash => panic!("injected platform crash"),
        }
        self.schedule_tick(&myself, state, now_ms);
        self.report(state);
        Ok(())
    }
}

impl PlatformActor {
    fn reserved_by_rank(&self, reserved: &BTreeMap<String, u32>) -> Vec<u32> {
        let classes = &self.arbitration.classes;
        let mut by_rank = vec![0; classes.classes.len()];
        for (class, headroom) in reserved {
            if classes.knows(class) {
                by_rank[classes.rank(class)] = *headroom;
            }
        }
        by_rank
    }

    fn request(&self, state: &mut PlatformState, route: Route, request: Request, answer: oneshot::Sender<PoolAnswer>, now_ms: u64) {
        match route {
            Route::Pool(pool) | Route::Premium { premium: pool, fallback: None } => {
                self.ask_pool(state, pool, request, answer, None, now_ms)
            }
            Route::Premium { premium, fallback: Some(fallback) } => {
                let Some(slot) = state.pools.get_mut(premium.as_str()) else {
                    return self.ask_pool(state, fallback, request, answer, Some(FALLBACK_PREMIUM_POOL_FULL), now_ms);
                };
                let fail_fast = Request { deadline_ms: now_ms, ..request.clone() };
                let (decision, grants) = slot.core.request(fail_fast, now_ms);
                self.deliver(state, &premium, grants, now_ms);
                match decision {
                    Decision::Granted { over_limit } => {
                        let granted = PoolAnswer::Granted { pool: premium, over_limit, waited_ms: 0, fallback_reason: None };
                        self.answer(state, request.call, answer, granted, now_ms);
                    }
                    Decision::Denied(PoolDenial::Cooldown { .. }) => {
                        self.ask_pool(state, fallback, request, answer, Some(FALLBACK_PREMIUM_POOL_COOLDOWN), now_ms)
                    }
                    Decision::Denied(_) | Decision::Queued => {
                        self.ask_pool(state, fallback, request, answer, Some(FALLBACK_PREMIUM_POOL_FULL), now_ms)
                    }
                }
            }
        }
    }

    fn ask_pool(
        &self,
        state: &mut PlatformState,
        pool: Name,
        request: Request,
        answer: oneshot::Sender<PoolAnswer>,
        fallback_reason: Option<&'static str>,
        now_ms: u64,
    ) {
        let call = request.call;
        let Some(slot) = state.pools.get_mut(pool.as_str()) else {
            let _ = answer.send(PoolAnswer::Denied {
                pool: pool.to_string(),
                denial: PoolDenial::Full { current_active: 0, limit: 0 },
                was_waiting: false,
            });
            return;
        };
        let (decision, grants) = slot.core.request(request, now_ms);
        match decision {
            Decision::Granted { over_limit } => {
                let granted = PoolAnswer::Granted { pool: pool.clone(), over_limit, waited_ms: 0, fallback_reason };
                self.answer(state, call, answer, granted, now_ms);
            }
            Decision::Queued => {
                state.waiting.insert(call, Waiting { pool: pool.clone(), answer, fallback_reason });
            }
            Decision::Denied(denial) => {
                let _ = answer.send(PoolAnswer::Denied { pool: pool.to_string(), denial, was_waiting: false });
            }
        }
        self.deliver(state, &pool, grants, now_ms);
    }

    /// Sends a grant; if its admission has gone away the slot is released at once.
    fn answer(&self, state: &mut PlatformState, call: CallId, answer: oneshot::Sender<PoolAnswer>, granted: PoolAnswer, now_ms: u64) {
        if answer.send(granted).is_err() {
            self.release(state, call, now_ms);
        }
    }

    /// Frees `call`'s slot in whichever pool holds it and hands the slot on to its waiters.
    fn release(&self, state: &mut PlatformState, call: CallId, now_ms: u64) {
        let Some((pool, slot)) = state.pools.iter_mut().find(|(_, slot)| slot.core.holds(call)) else {
            return;
        };
        let grants = slot.core.release(call, now_ms);
        // Only a release that grants a waiter needs the pool's name past this borrow: most free
        // a slot nobody waits for, and copy nothing.
        if !grants.is_empty() {
            let pool = pool.clone();
            self.deliver(state, &pool, grants, now_ms);
        }
    }

    /// Answers the waiters a pool granted. An undelivered grant frees its slot, which may grant
    /// the next waiter: a worklist, bounded by the waiters (each is granted at most once).
    fn deliver(&self, state: &mut PlatformState, pool: &str, grants: Vec<Grant>, now_ms: u64) {
        let mut pending = grants;
        while let Some(Grant { call, waited_ms }) = pending.pop() {
            let delivered = match state.waiting.remove(&call) {
                Some(waiting) => {
                    let granted =
                        PoolAnswer::Granted { pool: pool.into(), over_limit: false, waited_ms, fallback_reason: waiting.fallback_reason };
                    waiting.answer.send(granted).is_ok()
                }
                None => false,
            };
            if !delivered {
                let slot = state.pools.get_mut(pool).expect("granting pool exists");
                pending.extend(slot.core.release(call, now_ms));
            }
        }
    }

    async fn configure(
        &self,
        state: &mut PlatformState,
        pool: String,
        capacity: Option<u32>,
        reserved: Option<BTreeMap<String, u32>>,
        now_ms: u64,
    ) -> Result<(), PoolError> {
        let slot = state.pools.get(&pool).ok_or_else(|| PoolError::UnknownPool(pool.clone()))?;
        let capacity = capacity.unwrap_or(slot.core.limits().capacity);
        let reserved: BTreeMap<String, u32> =
            reserved.unwrap_or_else(|| slot.reserved.clone()).into_iter().filter(|(_, n)| *n > 0).collect();
        let event = Event::PoolConfigured { pool: pool.clone(), capacity, reserved: reserved.clone() };
        let guard = Guard { platform: Some(self.generation), ..Guard::default() };
        crate::append(&self.journal, event, guard, self.journal_timeout).await?;
        let limits = PoolLimits { capacity, reserved: self.reserved_by_rank(&reserved) };
        let slot = state.pools.get_mut(&pool).expect("checked above");
        slot.reserved = reserved;
        let grants = slot.core.set_limits(limits, now_ms);
        self.deliver(state, &pool, grants, now_ms);
        Ok(())
    }

    async fn provider_rejected(
        &self,
        state: &mut PlatformState,
        pool: String,
        call: CallId,
        cooldown_ms: u64,
        now_ms: u64,
    ) -> Result<(), PoolError> {
        let slot = state.pools.get(&pool).ok_or_else(|| PoolError::UnknownPool(pool.clone()))?;
        let (learned, cooldown_until_ms) = slot.core.rejection(call, now_ms, cooldown_ms);
        let event = Event::PoolProviderRejected { pool: pool.clone(), call, at_ms: now_ms, cooldown_until_ms, learned };
        let guard = Guard { platform: Some(self.generation), ..Guard::default() };
        crate::append(&self.journal, event, guard, self.journal_timeout).await?;
        self.telemetry.provider_rate_limited(&pool);
        let turned_away = state.pools.get_mut(&pool).expect("checked above").core.apply_rejection(learned, cooldown_until_ms);
        for waiter in turned_away {
            if let Some(waiting) = state.waiting.remove(&waiter) {
                let denial = PoolDenial::Cooldown { until_ms: cooldown_until_ms };
                let _ = waiting.answer.send(PoolAnswer::Denied { pool: waiting.pool.to_string(), denial, was_waiting: true });
            }
        }
        Ok(())
    }

    /// Wakes the actor when time alone can free a slot for someone waiting.
    fn schedule_tick(&self, myself: &ActorRef<PlatformMsg>, state: &mut PlatformState, now_ms: u64) {
        let Some(next_ms) = state.pools.values().filter_map(|slot| slot.core.next_wakeup_ms(now_ms)).min() else {
            return;
        };
        if state.tick_at_ms.is_some_and(|scheduled| scheduled <= next_ms) {
            return;
        }
        state.tick_at_ms = Some(next_ms);
        myself.send_after(Duration::from_millis(next_ms.saturating_sub(now_ms)), || PlatformMsg::Tick);
    }

    /// Sends the pools' gauges that changed (this runs after every message, on the hot path).
    fn report(&self, state: &mut PlatformState) {
        let now_ms = self.clock.now_ms();
        for (name, slot) in &mut state.pools {
            let now = (slot.core.effective_capacity(now_ms), slot.core.active(), slot.core.waiters() as u32);
            if slot.reported.replace(now) != Some(now) {
                self.telemetry.pool(name, now.0, now.1, now.2);
            }
        }
    }
}
