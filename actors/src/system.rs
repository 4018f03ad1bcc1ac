//! The system: the facade that the HTTP layer drives, and the admission path itself.
//!
//! Admission is a short saga over single-owner actors, so no step has a check-then-act window:
//! the tenant reserves a plan slot, the line a channel, the platform a capacity slot (each
//! atomically, in its own mailbox); then one `CallAdmitted` event is appended and the caller is
//! answered only once it is durable. A denial at any step releases what the earlier steps
//! reserved. If an actor crashed mid-way, the journal refuses the stale append and the
//! admission is retried against the rebuilt actors (see `journal.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::{Semaphore, oneshot};

use crate::call::{CallError, CallMsg};
use crate::callback_queue::CallbackQueueMsg;
use crate::clock::Clock;
use crate::context::{Balance, Context, Settings};
use crate::core::call::{CallCore, EndReport};
use crate::core::features::{FeatureDecision, can_use};
use crate::core::pool::{PoolDenial, PoolView, Request};
use crate::core::slots::Full;
use crate::directory::{CallLookup, SharedDirectory, Slot};
use crate::event::{Event, IdempotencyStamp, WaitOutcome};
use crate::id_map;
use crate::journal::{AppendError, Entity, Guard, JournalMsg};
use crate::model::{
    CallId, CallRecord, CallbackId, CampaignId, CreditTx, Direction, EndedCall, LineId, LineRecord, Name, OUTCOME_PROVIDER_REJECTED,
    TenantId, TenantRecord, Voice, mask_phone,
};
use crate::phone_line::{LineMsg, LineView};
use crate::platform::{PlatformMsg, PoolAnswer, PoolError, Route};
use crate::state::{DurableState, IdempotencyRecord, Ledger, PoolRecord, StateDigest, UsageTotals};
use crate::store::Store;
use crate::supervisor::{CreateError, Supervisor, SupervisorMsg};
use crate::telemetry::{AdmissionOutcome, Telemetry};
use crate::tenant::{FeatureQuery, TenantError, TenantMsg, TenantPatch, TenantRefusal, TenantView};
use crate::{AskError, ask, ask_before};

mod callbacks;
mod campaigns;

pub use callbacks::{CallbackApiError, CallbackFilter, CallbackPage, MissedError};
pub use campaigns::{CampaignApiError, status_name as campaign_status_name};

/// Attempts at one admission when actors it reserved in were rebuilt under it.
const ADMISSION_ATTEMPTS_MAX: u32 = 3;
/// Idempotency keys being processed at once; past it a keyed request gets 503.
const IDEMPOTENCY_IN_FLIGHT_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenialCode {
    TenantLimitReached,
    LineBusy,
    PlatformCapacityFull,
    /// Slots are free, but only headroom reserved for higher classes.
    PlatformCapacityFullForPlan,
    /// The class's waiting queue is at its bound.
    QueueFull,
    /// The provider rate-limited the pool (503, not 429: it is the platform's trouble).
    PlatformCapacityExceeded,
}

impl DenialCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DenialCode::TenantLimitReached => "TENANT_LIMIT_REACHED",
            DenialCode::LineBusy => "LINE_BUSY",
            DenialCode::PlatformCapacityFull => "PLATFORM_CAPACITY_FULL",
            DenialCode::PlatformCapacityFullForPlan => "PLATFORM_CAPACITY_FULL_FOR_PLAN",
            DenialCode::QueueFull => "QUEUE_FULL",
            DenialCode::PlatformCapacityExceeded => "PLATFORM_CAPACITY_EXCEEDED",
        }
    }
}

/// Which limit bound, and how full it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub code: DenialCode,
    pub current_active: u32,
    pub limit: u32,
    pub retry_after_s: u32,
    /// The pool, for pool denials.
    pub pool: Option<String>,
    /// How long the request waited for a slot before this answer.
    pub waited_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmitRequest {
    pub tenant_id: TenantId,
    pub line_id: Option<LineId>,
    pub direction: Direction,
    /// Inbound only: the provider has already connected the call, so it is recorded whatever
    /// the limits say (seed 000 §2.2).
    pub already_connected: bool,
    pub provider_call_id: Option<String>,
    pub to: Option<String>,
    pub from: Option<String>,
    pub idempotency: Option<IdempotencyStamp>,
    pub voice: Voice,
    /// A premium call may go to the standard pool when premium is not available.
    pub fallback: bool,
    /// How long the request may wait for a pool slot (0: fail fast). Capped by config.
    pub wait_ms: u64,
    /// Set by the callback dispatcher: this call calls back a missed call.
    pub callback_id: Option<CallbackId>,
    /// Set by the dispatcher for a campaign's contact.
    pub campaign: Option<(CampaignId, u32)>,
}

impl AdmitRequest {
    /// The plainest admission: an outbound call for `tenant_id`, no line, no key, no wait.
    pub fn outbound(tenant_id: impl Into<TenantId>) -> AdmitRequest {
        AdmitRequest {
            tenant_id: tenant_id.into(),
            line_id: None,
            direction: Direction::Outbound,
            already_connected: false,
            provider_call_id: None,
            to: None,
            from: None,
            idempotency: None,
            voice: Voice::Standard,
            fallback: true,
            wait_ms: 0,
            callback_id: None,
            campaign: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub call: Arc<CallRecord>,
    /// True when this is a replay of an earlier request with the same idempotency key.
    pub replayed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("tenant {0} does not exist")]
    UnknownTenant(String),
    #[error("line {0} does not exist")]
    UnknownLine(String),
    #[error("line {line} belongs to tenant {owner}")]
    LineNotOwned { line: String, owner: String },
    #[error("denied: {}", .0.code.as_str())]
    Denied(Denial),
    #[error("a prepaid tenant has no credits left")]
    InsufficientCredits,
    #[error("premium voices are not available: {reason}")]
    PremiumNotAvailable { reason: &'static str, requires_upgrade: bool },
    #[error("the idempotency key was used with a different request body")]
    IdempotencyMismatch,
    #[error("a request with this idempotency key is still being processed")]
    IdempotencyInFlight,
    #[error("too many idempotency keys are remembered or in flight")]
    IdempotencyFull,
    #[error("the live-call bound ({0}) is reached")]
    LiveCallsMax(usize),
    #[error("too many admissions in progress")]
    Overloaded,
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl AdmitError {
    /// The code the API answers (`code` in its problem+json); the simulator reports the same.
    pub fn code(&self) -> &'static str {
        match self {
            AdmitError::UnknownTenant(_) => "UNKNOWN_TENANT",
            AdmitError::UnknownLine(_) => "UNKNOWN_LINE",
            AdmitError::LineNotOwned { .. } => "LINE_NOT_OWNED",
            AdmitError::Denied(denial) => denial.code.as_str(),
            AdmitError::InsufficientCredits => "INSUFFICIENT_CREDITS",
            AdmitError::PremiumNotAvailable { .. } => "PREMIUM_NOT_AVAILABLE",
            AdmitError::IdempotencyMismatch => "IDEMPOTENCY_KEY_REUSED",
            AdmitError::IdempotencyInFlight => "IDEMPOTENCY_KEY_IN_FLIGHT",
            AdmitError::IdempotencyFull => "IDEMPOTENCY_STORE_FULL",
            AdmitError::LiveCallsMax(_) => "LIVE_CALLS_MAX",
            AdmitError::Overloaded => "OVERLOADED",
            AdmitError::Unavailable(_) => "UNAVAILABLE",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SystemError {
    #[error("not found")]
    NotFound,
    #[error("the call has ended")]
    CallEnded(Box<EndedCall>),
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

/// A live call as the API shows it: either still live, or its final record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallState {
    Live(Arc<CallRecord>),
    Ended(EndedCall),
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlatformSummary {
    pub default_pool: String,
    pub sold_limits_total: u64,
    pub pools: BTreeMap<String, PoolSummary>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PoolSummary {
    pub view: PoolView,
    pub reserved: BTreeMap<String, u32>,
    /// Limits sold on this pool: every tenant on the default pool, tenants that may use premium
    /// voices on the premium pool.
    pub sold_limits: u64,
    /// The journal's record: provider rejections and how waits ended.
    pub record: PoolRecord,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TenantUpdateError {
    #[error("not found")]
    NotFound,
    #[error("a tenant has at most {max} {what}")]
    TooMany { what: &'static str, max: usize },
    #[error("the balance is {balance}; removing {amount} would take it below zero")]
    InsufficientBalance { balance: u64, amount: u64 },
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

pub struct System {
    context: Arc<Context>,
    store: Arc<dyn Store>,
    supervisor: ActorRef<SupervisorMsg>,
    next_call_number: AtomicU64,
    next_campaign_number: AtomicU64,
    idempotency_in_flight: Mutex<BTreeSet<String>>,
    /// Admissions in progress, each in its own task (`Settings::admissions_in_flight_max`).
    admissions: Arc<Semaphore>,
}

enum Attempt {
    Retry,
    Fail(AdmitError),
}

impl Attempt {
    fn into_error(self) -> AdmitError {
        match self {
            Attempt::Fail(error) => error,
            Attempt::Retry => AdmitError::Unavailable("actors were being rebuilt; retry".into()),
        }
    }
}

/// The actors an admission asks, as the directory had them when it looked.
struct References {
    tenant: Slot<TenantMsg>,
    line: Option<Slot<LineMsg>>,
    platform: Slot<PlatformMsg>,
    journal: ActorRef<JournalMsg>,
}

/// One admission, across its attempts.
struct Admission<'a> {
    id: CallId,
    request: &'a AdmitRequest,
    force: bool,
    started_ms: u64,
    /// Until when it may wait for a pool slot (by the service clock).
    deadline_ms: u64,
}

/// What the reservations granted.
struct Granted {
    plan: Name,
    class: Name,
    pool: Name,
    over_limit: bool,
    waited_ms: u64,
    fallback_reason: Option<&'static str>,
}

fn unanswered(error: AskError) -> Attempt {
    match error {
        AskError::Gone => Attempt::Retry,
        AskError::Timeout => Attempt::Fail(AdmitError::Unavailable("an actor did not answer in time".into())),
    }
}

/// Slots taken so far by one admission attempt, released if it does not complete.
#[derive(Default)]
struct Reserved {
    tenant: Option<ActorRef<TenantMsg>>,
    line: Option<ActorRef<LineMsg>>,
    platform: Option<ActorRef<PlatformMsg>>,
}

impl Reserved {
    fn release(&self, call: CallId) {
        if let Some(tenant) = &self.tenant {
            let _ = tenant.cast(TenantMsg::Release { call });
        }
        if let Some(line) = &self.line {
            let _ = line.cast(LineMsg::Release { call, ended: false });
        }
        if let Some(platform) = &self.platform {
            let _ = platform.cast(PlatformMsg::Release { call });
        }
    }
}

/// Removes a claimed idempotency key from the in-flight set, however the request ends.
struct KeyClaim<'a> {
    system: &'a System,
    key: String,
}

impl Drop for KeyClaim<'_> {
    fn drop(&mut self) {
        self.system.idempotency_in_flight.lock().expect("in-flight keys lock").remove(&self.key);
    }
}

impl System {
    /// Boots every actor from `durable` (the state recovered from `store`).
    pub async fn start(
        settings: Settings,
        store: Arc<dyn Store>,
        durable: DurableState,
        clock: Arc<dyn Clock>,
        telemetry: Arc<dyn Telemetry>,
    ) -> Result<System, ractor::SpawnErr> {
        let context = Arc::new(Context {
            settings,
            clock,
            telemetry,
            directory: SharedDirectory::default(),
            flags: Default::default(),
            balances: Arc::new(std::sync::RwLock::new(
                durable.ledgers.iter().map(|(t, l)| (t.clone(), Balance { accepted: l.balance, durable: l.balance })).collect(),
            )),
            next_callback_number: Arc::new(AtomicU64::new(durable.next_callback_number)),
            dispatcher: Default::default(),
            dispatches_in_flight: Default::default(),
            journal_alive: Arc::new(AtomicBool::new(true)),
        });
        let next_call_number = AtomicU64::new(durable.next_call_number);
        let next_campaign_number = AtomicU64::new(durable.campaigns.keys().next_back().map_or(1, |id| id.0 + 1));
        let supervisor = Supervisor { context: Arc::clone(&context), store: Arc::clone(&store) };
        let (supervisor, _) = Actor::spawn(None, supervisor, durable).await?;
        let admissions = Arc::new(Semaphore::new(context.settings.admissions_in_flight_max));
        Ok(System {
            context,
            store,
            supervisor,
            next_call_number,
            next_campaign_number,
            idempotency_in_flight: Mutex::new(BTreeSet::new()),
            admissions,
        })
    }

    /// Now, by the injected clock (the same one the actors use).
    pub fn now_ms(&self) -> u64 {
        self.context.clock.now_ms()
    }

    pub fn settings(&self) -> &Settings {
        &self.context.settings
    }

    /// False once the journal writer is gone: the service must say it is not ready.
    pub fn healthy(&self) -> bool {
        self.context.journal_alive()
    }

    fn timeout(&self) -> std::time::Duration {
        self.context.settings.actor_call_timeout
    }

    fn journal(&self) -> ActorRef<JournalMsg> {
        self.context.directory.read().journal()
    }

    // ---------------------------------------------------------------- admission

    /// Admits a call. The saga runs in its own task, so a caller that goes away (an HTTP client
    /// disconnecting drops the handler's future) cannot cut it short between a reservation and
    /// its release, or between a durable append and the call's actor. Only a wait for a pool
    /// slot notices the caller leaving: it leaves the queue. Admissions in progress are
    /// bounded; past the bound the answer is `Overloaded` at once.
    pub async fn admit(self: &Arc<Self>, request: AdmitRequest) -> Result<Admitted, AdmitError> {
        let permit = Arc::clone(&self.admissions).try_acquire_owned().map_err(|_| AdmitError::Overloaded)?;
        let system = Arc::clone(self);
        let (_caller_alive, caller_gone) = oneshot::channel::<()>();
        let admission = tokio::spawn(async move {
            let _permit = permit;
            // Boxed, so the task's own future is small: spawning copies it whole.
            Box::pin(system.admit_to_completion(request, caller_gone)).await
        });
        admission.await.unwrap_or_else(|failed| Err(AdmitError::Unavailable(format!("the admission failed: {failed}"))))
    }

    /// Admits a call in the caller's own task, under the same bound: for a caller that is
    /// never dropped midway (the simulator's call tasks), which `admit`'s extra task would only
    /// protect at the cost of a spawn per call.
    pub async fn admit_in_task(&self, request: AdmitRequest) -> Result<Admitted, AdmitError> {
        let _permit = self.admissions.try_acquire().map_err(|_| AdmitError::Overloaded)?;
        // Boxed, so the caller's future stays small (the saga's is kilobytes).
        Box::pin(self.admit_internal(request)).await
    }

    /// The dispatcher's admissions: already in a task of their own, with no caller to lose.
    async fn admit_internal(&self, request: AdmitRequest) -> Result<Admitted, AdmitError> {
        let (_caller_alive, caller_gone) = oneshot::channel::<()>();
        self.admit_to_completion(request, caller_gone).await
    }

    async fn admit_to_completion(&self, request: AdmitRequest, caller_gone: oneshot::Receiver<()>) -> Result<Admitted, AdmitError> {
        let Some(stamp) = request.idempotency.clone() else {
            return self.admit_new(request, caller_gone).await;
        };
        let _claim = self.claim_key(&stamp.key)?;
        let now_ms = self.context.clock.now_ms();
        let key = stamp.key.clone();
        let (remembered, has_room) = self
            .inspect(move |durable| (durable.idempotency.get(&key, now_ms).cloned(), durable.idempotency.has_room(now_ms)))
            .await
            .map_err(AdmitError::Unavailable)?;
        match remembered {
            Some(IdempotencyRecord { body_hash, call }) if body_hash == stamp.body_hash => {
                // The journal's state includes accepted events still being written: a replay
                // must not acknowledge what is not yet durable.
                self.sync().await.map_err(AdmitError::Unavailable)?;
                Ok(Admitted { call, replayed: true })
            }
            Some(_) => Err(AdmitError::IdempotencyMismatch),
            None if !has_room => Err(AdmitError::IdempotencyFull),
            None => self.admit_new(request, caller_gone).await,
        }
    }

    fn claim_key(&self, key: &str) -> Result<KeyClaim<'_>, AdmitError> {
        let mut in_flight = self.idempotency_in_flight.lock().expect("in-flight keys lock");
        if in_flight.contains(key) {
            return Err(AdmitError::IdempotencyInFlight);
        }
        if in_flight.len() >= IDEMPOTENCY_IN_FLIGHT_MAX {
            return Err(AdmitError::IdempotencyFull);
        }
        in_flight.insert(key.to_owned());
        Ok(KeyClaim { system: self, key: key.to_owned() })
    }

    async fn admit_new(&self, request: AdmitRequest, mut caller_gone: oneshot::Receiver<()>) -> Result<Admitted, AdmitError> {
        let mut references = Some(self.references(&request, true).map_err(Attempt::into_error)?);
        let force = request.direction == Direction::Inbound && request.already_connected;
        let id = CallId(self.next_call_number.fetch_add(1, Ordering::SeqCst));
        let started_ms = self.context.clock.now_ms();
        let wait_ms = request.wait_ms.min(self.context.settings.arbitration.wait_ms_max);
        let admission = Admission { id, request: &request, force, started_ms, deadline_ms: started_ms.saturating_add(wait_ms) };
        for _ in 0..ADMISSION_ATTEMPTS_MAX {
            // The first attempt uses the references just checked; a retry looks them up again.
            let attempt = match references.take().map_or_else(|| self.references(&request, false), Ok) {
                Ok(found) => self.try_admit(&admission, found, &mut caller_gone).await,
                Err(retry) => Err(retry),
            };
            match attempt {
                Ok(call) => return Ok(self.admitted(call).await),
                Err(Attempt::Retry) => tokio::task::yield_now().await,
                Err(Attempt::Fail(error)) => {
                    if let AdmitError::Denied(denial) = &error {
                        self.context.telemetry.admission(AdmissionOutcome::Denied(denial.code.as_str()), "");
                    }
                    return Err(error);
                }
            }
        }
        Err(Attempt::Retry.into_error())
    }

    /// The tenant's and line's actors, or why the request cannot be admitted. A reference
    /// missing on a later attempt is an actor being rebuilt (`Retry`); on the first it is the
    /// request's error.
    fn references(&self, request: &AdmitRequest, first: bool) -> Result<References, Attempt> {
        let directory = self.context.directory.read();
        let missing = |error: AdmitError| if first { Attempt::Fail(error) } else { Attempt::Retry };
        let tenant =
            directory.tenants.get(&request.tenant_id).ok_or_else(|| missing(AdmitError::UnknownTenant(request.tenant_id.to_string())))?;
        let line = match &request.line_id {
            None => None,
            Some(line_id) => {
                let line = directory.lines.get(line_id).ok_or_else(|| missing(AdmitError::UnknownLine(line_id.to_string())))?;
                if line.tenant_id != request.tenant_id {
                    return Err(Attempt::Fail(AdmitError::LineNotOwned { line: line_id.to_string(), owner: line.tenant_id.to_string() }));
                }
                Some(line.slot.clone())
            }
        };
        let live_calls_max = self.context.settings.live_calls_max;
        if first && directory.calls.len() >= live_calls_max {
            return Err(Attempt::Fail(AdmitError::LiveCallsMax(live_calls_max)));
        }
        Ok(References { tenant: tenant.clone(), line, platform: directory.platform(), journal: directory.journal() })
    }

    async fn try_admit(
        &self,
        admission: &Admission<'_>,
        references: References,
        caller_gone: &mut oneshot::Receiver<()>,
    ) -> Result<Arc<CallRecord>, Attempt> {
        let request = admission.request;
        let id = admission.id;
        let References { tenant, line, platform, journal } = references;
        let mut reserved = Reserved::default();
        let outcome =
            self.reserve_all(admission, &tenant.actor, line.as_ref().map(|l| &l.actor), &platform.actor, &mut reserved, caller_gone).await;
        let granted = match outcome {
            Ok(granted) => granted,
            Err(attempt) => {
                reserved.release(id);
                return Err(attempt);
            }
        };
        let now_ms = self.context.clock.now_ms();
        let call = Arc::new(CallRecord {
            id,
            tenant_id: request.tenant_id.clone(),
            line_id: request.line_id.clone(),
            direction: request.direction,
            provider_call_id: request.provider_call_id.clone(),
            to: request.to.clone(),
            from: request.from.clone(),
            over_limit: granted.over_limit,
            plan: granted.plan,
            class: granted.class,
            pool: granted.pool,
            voice: request.voice,
            fallback_reason: granted.fallback_reason.map(str::to_owned),
            waited_ms: granted.waited_ms,
            started_at_ms: now_ms,
            last_activity_at_ms: now_ms,
            callback_id: request.callback_id,
            campaign: request.campaign,
        });
        let guard = Guard {
            tenant: Some((request.tenant_id.clone(), tenant.generation)),
            line: line.as_ref().map(|l| (request.line_id.clone().expect("line slot implies line id"), l.generation)),
            platform: Some(platform.generation),
        };
        let event = Event::CallAdmitted { call: call.clone(), idempotency: request.idempotency.clone() };
        match crate::append(&journal, event, guard, self.context.settings.journal_timeout).await {
            Ok(_) => Ok(call),
            Err(AppendError::StaleGeneration) => {
                reserved.release(id);
                Err(Attempt::Retry)
            }
            Err(AppendError::Unknown) => self.settle_unknown(call, &reserved).await,
            Err(AppendError::IdempotencyFull) => {
                reserved.release(id);
                Err(Attempt::Fail(AdmitError::IdempotencyFull))
            }
            Err(error) => {
                reserved.release(id);
                Err(Attempt::Fail(AdmitError::Unavailable(error.to_string())))
            }
        }
    }

    /// The append timed out: it may still become durable. A `sync` is answered only after the
    /// journal has processed everything before it, our append included; then the durable
    /// state says which way it went. If even that fails the journal is broken: the
    /// reservations stay (a held slot is safe, freeing one whose call is durable is not).
    async fn settle_unknown(&self, call: Arc<CallRecord>, reserved: &Reserved) -> Result<Arc<CallRecord>, Attempt> {
        let id = call.id;
        if let Err(why) = self.sync().await {
            tracing::error!(call_id = %id, error = %why, "admission outcome unknown; keeping its reservations until restart");
            return Err(Attempt::Fail(AdmitError::Unavailable(why)));
        }
        match self.inspect(move |durable| durable.live_calls.contains_key(&id)).await {
            Ok(true) => Ok(call),
            Ok(false) => {
                reserved.release(id);
                Err(Attempt::Fail(AdmitError::Unavailable("the journal did not take the admission".into())))
            }
            Err(why) => Err(Attempt::Fail(AdmitError::Unavailable(why))),
        }
    }

    fn deny(&self, code: DenialCode, full: Full) -> Attempt {
        let retry_after_s = self.context.settings.retry_after_s;
        let denial = Denial { code, current_active: full.current_active, limit: full.limit, retry_after_s, pool: None, waited_ms: 0 };
        Attempt::Fail(AdmitError::Denied(denial))
    }

    /// Tenant, then line, then a pool slot. Returns what the call record needs from them.
    async fn reserve_all(
        &self,
        admission: &Admission<'_>,
        tenant: &ActorRef<TenantMsg>,
        line: Option<&ActorRef<LineMsg>>,
        platform: &ActorRef<PlatformMsg>,
        reserved: &mut Reserved,
        caller_gone: &mut oneshot::Receiver<()>,
    ) -> Result<Granted, Attempt> {
        let (call, force) = (admission.id, admission.force);
        // One deadline for the actors' answers (tenant, line, and a platform that is not
        // asked to queue): one timer per admission.
        let deadline = tokio::time::sleep(self.timeout());
        tokio::pin!(deadline);
        let arbitration = &self.context.settings.arbitration;
        let feature = (admission.request.voice == Voice::Premium).then(|| FeatureQuery {
            name: arbitration.premium_feature.clone(),
            global: self.context.flag(&arbitration.premium_feature),
            now_ms: admission.started_ms,
        });
        reserved.tenant = Some(tenant.clone());
        let outbound = admission.request.direction == Direction::Outbound;
        let tenant_grant = ask_before(tenant, |reply| TenantMsg::Reserve { call, force, outbound, feature, reply }, deadline.as_mut())
            .await
            .map_err(unanswered)?;
        let tenant_grant = tenant_grant.map_err(|refusal| match refusal {
            TenantRefusal::Full(full) => self.deny(DenialCode::TenantLimitReached, full),
            TenantRefusal::NoCredits => Attempt::Fail(AdmitError::InsufficientCredits),
        })?;
        let mut over_limit = tenant_grant.over_limit;
        if let Some(line) = line {
            reserved.line = Some(line.clone());
            let granted = ask_before(line, |reply| LineMsg::Reserve { call, force, reply }, deadline.as_mut()).await.map_err(unanswered)?;
            over_limit |= granted.map_err(|full| self.deny(DenialCode::LineBusy, full))?.over_limit;
        }
        let (route, fallback_reason) = self.route(admission.request, tenant_grant.feature)?;
        let class = arbitration.classes.rank(&tenant_grant.class);
        let pool_request = Request { call, tenant: admission.request.tenant_id.clone(), class, force, deadline_ms: admission.deadline_ms };
        reserved.platform = Some(platform.clone());
        let mut granted =
            self.reserve_pool(admission, platform, route, pool_request, &tenant_grant.class, deadline.as_mut(), caller_gone).await?;
        granted.over_limit |= over_limit;
        granted.fallback_reason = fallback_reason.or(granted.fallback_reason);
        granted.plan = tenant_grant.plan;
        granted.class = tenant_grant.class;
        Ok(granted)
    }

    /// Which pool a request may use, and why a premium call was moved off premium.
    fn route(&self, request: &AdmitRequest, feature: Option<FeatureDecision>) -> Result<(Route, Option<&'static str>), Attempt> {
        let arbitration = &self.context.settings.arbitration;
        let standard = Route::Pool(arbitration.default_pool.clone());
        if request.voice == Voice::Standard {
            return Ok((standard, None));
        }
        let decision = feature.expect("premium requests ask for the feature");
        let (fallback_reason, reason, requires_upgrade) = match (&arbitration.premium_pool, decision.allowed) {
            (Some(premium), true) => {
                let fallback = request.fallback.then(|| arbitration.default_pool.clone());
                return Ok((Route::Premium { premium: premium.clone(), fallback }, None));
            }
            // No premium pool: premium is never available, whatever the tenant's subscription.
            (None, _) => ("feature_not_available", crate::core::features::REASON_NOT_AVAILABLE, false),
            (Some(_), false) if decision.requires_upgrade => ("subscription_required", decision.reason, true),
            (Some(_), false) => ("feature_not_available", decision.reason, false),
        };
        if request.fallback {
            return Ok((standard, Some(fallback_reason)));
        }
        Err(Attempt::Fail(AdmitError::PremiumNotAvailable { reason, requires_upgrade }))
    }

    /// Asks the platform for a slot and, if the request may wait, waits for it until its
    /// deadline or until its caller goes away, whichever comes first; then it leaves the queue
    /// and the journal records how the wait ended. A request that may not wait gets its answer
    /// before `deadline` (the admission's); one that may is given its own.
    #[allow(clippy::too_many_arguments)]
    async fn reserve_pool(
        &self,
        admission: &Admission<'_>,
        platform: &ActorRef<PlatformMsg>,
        route: Route,
        request: Request,
        class: &str,
        mut deadline: std::pin::Pin<&mut tokio::time::Sleep>,
        caller_gone: &mut oneshot::Receiver<()>,
    ) -> Result<Granted, Attempt> {
        // A `Name` (copied inline when short): most admissions never wait, and only a wait needs it.
        let waiting_pool = route.waiting_pool().clone();
        let class_rank = request.class;
        let (answer, mut answered) = oneshot::channel();
        platform.cast(PlatformMsg::Request { route, request, answer }).map_err(|_| Attempt::Retry)?;
        let now_ms = self.context.clock.now_ms();
        let waits = admission.deadline_ms > now_ms;
        if waits {
            let patience = Duration::from_millis(admission.deadline_ms - now_ms);
            deadline.as_mut().reset(tokio::time::Instant::now() + patience);
        }
        let ended = tokio::select! {
            biased;
            answer = &mut answered => match answer {
                Ok(answer) => return self.pool_answer(admission, answer, class).await,
                Err(_) => return Err(Attempt::Retry),
            },
            () = deadline.as_mut() => {
                if waits { WaitOutcome::TimedOut } else {
                    return Err(Attempt::Fail(AdmitError::Unavailable("the platform actor did not answer in time".into())));
                }
            }
            _ = caller_gone, if waits => WaitOutcome::Cancelled,
        };
        // Whatever arrives from here on is refused by the closed channel (the platform then
        // frees the slot); an answer sent before the close is still taken.
        answered.close();
        if let Ok(answer) = answered.try_recv() {
            return self.pool_answer(admission, answer, class).await;
        }
        let timeout = self.timeout();
        let call = admission.id;
        let pool = waiting_pool.to_string();
        let denial =
            ask(platform, |reply| PlatformMsg::Leave { call, pool, class: class_rank, reply }, timeout).await.map_err(unanswered)?;
        let waited_ms = self.context.clock.now_ms().saturating_sub(admission.started_ms);
        self.record_wait_end(&waiting_pool, class, &admission.request.tenant_id, waited_ms, ended).await;
        Err(Attempt::Fail(AdmitError::Denied(self.pool_denial(waiting_pool.to_string(), denial, waited_ms))))
    }

    async fn pool_answer(&self, admission: &Admission<'_>, answer: PoolAnswer, class: &str) -> Result<Granted, Attempt> {
        match answer {
            PoolAnswer::Granted { pool, over_limit, waited_ms, fallback_reason } => {
                Ok(Granted { plan: Name::default(), class: class.into(), pool, over_limit, waited_ms, fallback_reason })
            }
            PoolAnswer::Denied { pool, denial, was_waiting } => {
                let waited_ms = self.context.clock.now_ms().saturating_sub(admission.started_ms);
                if was_waiting {
                    self.record_wait_end(&pool, class, &admission.request.tenant_id, waited_ms, WaitOutcome::Cooldown).await;
                }
                Err(Attempt::Fail(AdmitError::Denied(self.pool_denial(pool, denial, waited_ms))))
            }
        }
    }

    /// Journals how a wait ended without a slot. The denial is answered either way: if the
    /// record cannot be made durable, the journal is failing and says so on its own.
    async fn record_wait_end(&self, pool: &str, class: &str, tenant_id: &str, waited_ms: u64, outcome: WaitOutcome) {
        self.context.telemetry.wait_ended(class, outcome.as_str(), waited_ms as f64 / 1000.0);
        let event =
            Event::WaitAbandoned { pool: pool.to_owned(), class: class.to_owned(), tenant_id: tenant_id.into(), waited_ms, outcome };
        if let Err(error) = crate::append(&self.journal(), event, Guard::default(), self.context.settings.journal_timeout).await {
            tracing::error!(%error, outcome = outcome.as_str(), "could not journal the end of a wait");
        }
    }

    fn pool_denial(&self, pool: String, denial: PoolDenial, waited_ms: u64) -> Denial {
        let retry_after_s = self.context.settings.retry_after_s;
        let (code, current_active, limit, retry_after_s) = match denial {
            PoolDenial::Full { current_active, limit } => (DenialCode::PlatformCapacityFull, current_active, limit, retry_after_s),
            PoolDenial::FullForPlan { current_active, limit } => {
                (DenialCode::PlatformCapacityFullForPlan, current_active, limit, retry_after_s)
            }
            PoolDenial::QueueFull { waiting, limit } => (DenialCode::QueueFull, waiting, limit, retry_after_s),
            PoolDenial::Cooldown { until_ms } => {
                let remaining_s = until_ms.saturating_sub(self.context.clock.now_ms()).div_ceil(1000);
                (DenialCode::PlatformCapacityExceeded, 0, 0, u32::try_from(remaining_s).unwrap_or(u32::MAX).max(1))
            }
        };
        Denial { code, current_active, limit, retry_after_s, pool: Some(pool), waited_ms }
    }

    /// The call is durable: give it its actor, count it, and raise the alert if it is over.
    async fn admitted(&self, call: Arc<CallRecord>) -> Admitted {
        let telemetry = &self.context.telemetry;
        telemetry.active_calls(&call.plan, 1);
        if call.over_limit {
            telemetry.admission(AdmissionOutcome::ForcedOverLimit, &call.plan);
            tracing::warn!(
                alert = "INBOUND_OVER_LIMIT",
                call_id = %call.id,
                tenant_id = %call.tenant_id,
                line = call.line_id.as_deref().map(mask_phone).unwrap_or_default(),
                "inbound call already connected at the provider recorded over a limit"
            );
        } else {
            telemetry.admission(AdmissionOutcome::Admitted, &call.plan);
        }
        if call.waited_ms > 0 {
            telemetry.wait_ended(&call.class, "granted", call.waited_ms as f64 / 1000.0);
        }
        if let Some(reason) = &call.fallback_reason {
            telemetry.premium_fallback(reason);
        }
        if let Err(error) = self.context.spawn_call(self.supervisor.get_cell(), call.clone()).await {
            // The call is durable; the next start gives it an actor. Until then it holds its slots.
            tracing::error!(call_id = %call.id, %error, "could not start the call actor");
        }
        Admitted { call, replayed: false }
    }

    // ---------------------------------------------------------------- calls

    pub async fn end_call(&self, id: CallId, end: EndReport) -> Result<EndedCall, SystemError> {
        let lookup = self.context.directory.read().call(id);
        let ended = match lookup {
            CallLookup::Ended(ended) => return Ok(*ended),
            CallLookup::Unknown => return Err(SystemError::NotFound),
            CallLookup::Live(actor) => {
                match ask(&actor, |reply| CallMsg::End { end, reply }, self.context.settings.journal_timeout).await {
                    Ok(Ok(ended)) => ended,
                    Ok(Err(error)) => return Err(SystemError::Unavailable(error.to_string())),
                    Err(_) => return self.ended_meanwhile(id),
                }
            }
        };
        Ok(ended)
    }

    /// The provider answered 429 when the platform tried to place `id` (seed 000 §4.5): the
    /// pool cools down (and may learn a lower capacity), then the call ends and frees its
    /// slots. All of it runs in the call's actor, so a repeat answers the same record and a
    /// call that ended otherwise (a racing end webhook) is a `CallEnded` conflict.
    pub async fn provider_rejected(&self, id: CallId, cooldown_ms: u64) -> Result<EndedCall, SystemError> {
        let lookup = self.context.directory.read().call(id);
        let ended = match lookup {
            CallLookup::Ended(ended) => *ended,
            CallLookup::Unknown => return Err(SystemError::NotFound),
            CallLookup::Live(actor) => {
                let journal_timeout = self.context.settings.journal_timeout;
                match ask(&actor, |reply| CallMsg::ProviderRejected { cooldown_ms, reply }, journal_timeout).await {
                    Ok(Ok(ended)) => ended,
                    Ok(Err(error)) => return Err(SystemError::Unavailable(error.to_string())),
                    Err(_) => self.ended_meanwhile(id)?,
                }
            }
        };
        if ended.outcome == OUTCOME_PROVIDER_REJECTED { Ok(ended) } else { Err(SystemError::CallEnded(Box::new(ended))) }
    }

    fn restarting(&self, what: &str) -> SystemError {
        SystemError::Unavailable(format!("the {what} actor is restarting; retry"))
    }

    /// The call actor stopped while we asked it: it either ended (and is in the directory's
    /// ended calls) or crashed and is being rebuilt.
    fn ended_meanwhile(&self, id: CallId) -> Result<EndedCall, SystemError> {
        match self.context.directory.read().call(id) {
            CallLookup::Ended(ended) => Ok(*ended),
            _ => Err(SystemError::Unavailable("the call's actor is restarting; retry".into())),
        }
    }

    pub async fn heartbeat(&self, id: CallId) -> Result<Arc<CallRecord>, SystemError> {
        let lookup = self.context.directory.read().call(id);
        match lookup {
            CallLookup::Ended(ended) => Err(SystemError::CallEnded(ended)),
            CallLookup::Unknown => Err(SystemError::NotFound),
            CallLookup::Live(actor) => match ask(&actor, |reply| CallMsg::Heartbeat { reply }, self.context.settings.journal_timeout).await
            {
                Ok(Ok(record)) => Ok(record),
                Ok(Err(CallError::Ended(ended))) => Err(SystemError::CallEnded(ended)),
                Ok(Err(error @ (CallError::Journal(_) | CallError::Platform(_)))) => Err(SystemError::Unavailable(error.to_string())),
                Err(_) => Err(self.ended_meanwhile(id).map_or_else(|e| e, |ended| SystemError::CallEnded(Box::new(ended)))),
            },
        }
    }

    pub async fn get_call(&self, id: CallId) -> Result<CallState, SystemError> {
        let lookup = self.context.directory.read().call(id);
        match lookup {
            CallLookup::Ended(ended) => Ok(CallState::Ended(*ended)),
            CallLookup::Unknown => Err(SystemError::NotFound),
            CallLookup::Live(actor) => match ask(&actor, |reply| CallMsg::Get { reply }, self.timeout()).await {
                Ok(CallCore { ended: Some(ended), .. }) => Ok(CallState::Ended(ended)),
                Ok(core) => Ok(CallState::Live(core.record)),
                Err(_) => self.ended_meanwhile(id).map(CallState::Ended),
            },
        }
    }

    /// Live calls in id order, filtered, starting after `after`, at most `limit` (+1 to tell
    /// whether there are more). Records are as admitted (heartbeats are on `get_call`).
    pub fn list_calls(&self, tenant_id: Option<&str>, line_id: Option<&str>, after: Option<CallId>, limit: usize) -> Vec<Arc<CallRecord>> {
        let directory = self.context.directory.read();
        let start = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        directory
            .calls
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, live)| &live.record)
            .filter(|c| tenant_id.is_none_or(|t| c.tenant_id == t))
            .filter(|c| line_id.is_none_or(|l| c.line_id.as_deref() == Some(l)))
            .take(limit)
            .cloned()
            .collect()
    }

    // ---------------------------------------------------------------- tenants, lines, platform

    pub async fn create_tenant(&self, record: TenantRecord) -> Result<(), CreateError> {
        match ask(&self.supervisor, |reply| SupervisorMsg::CreateTenant { record, reply }, self.context.settings.journal_timeout).await {
            Ok(result) => result,
            Err(_) => Err(CreateError::Journal(AppendError::Unknown)),
        }
    }

    pub async fn create_line(&self, record: LineRecord) -> Result<(), CreateError> {
        match ask(&self.supervisor, |reply| SupervisorMsg::CreateLine { record, reply }, self.context.settings.journal_timeout).await {
            Ok(result) => result,
            Err(_) => Err(CreateError::Journal(AppendError::Unknown)),
        }
    }

    pub async fn get_tenant(&self, id: &str) -> Result<TenantView, SystemError> {
        let tenant = self.context.directory.read().tenants.get(id).cloned().ok_or(SystemError::NotFound)?;
        ask(&tenant.actor, |reply| TenantMsg::Get { reply }, self.timeout()).await.map_err(|_| self.restarting("tenant"))
    }

    /// Applies a PATCH, a flag override or an add-on change, durably.
    pub async fn update_tenant(&self, id: &str, patch: TenantPatch) -> Result<TenantView, TenantUpdateError> {
        let tenant = self.context.directory.read().tenants.get(id).cloned().ok_or(TenantUpdateError::NotFound)?;
        match ask(&tenant.actor, |reply| TenantMsg::Update { patch, reply }, self.context.settings.journal_timeout).await {
            Ok(Ok(view)) => Ok(view),
            Ok(Err(TenantError::TooMany { what, max })) => Err(TenantUpdateError::TooMany { what, max }),
            Ok(Err(TenantError::InsufficientBalance { balance, amount })) => {
                Err(TenantUpdateError::InsufficientBalance { balance, amount })
            }
            Ok(Err(TenantError::Journal(error))) => Err(TenantUpdateError::Unavailable(error.to_string())),
            Err(_) => Err(TenantUpdateError::Unavailable("the tenant actor is restarting; retry".into())),
        }
    }

    /// Adds (positive) or removes (negative) credits, durably. Returns the transaction as the
    /// ledger posted it, with the balance after it (`None` for an amount of zero).
    pub async fn credit(&self, tenant_id: &str, amount: i64, reason: String) -> Result<Option<CreditTx>, TenantUpdateError> {
        let tenant = self.context.directory.read().tenants.get(tenant_id).cloned().ok_or(TenantUpdateError::NotFound)?;
        let at_ms = self.now_ms();
        match ask(&tenant.actor, |reply| TenantMsg::Credit { amount, reason, at_ms, reply }, self.context.settings.journal_timeout).await {
            Ok(Ok(tx)) => {
                if amount > 0 {
                    self.credits_added(tenant_id, self.context.balance(tenant_id));
                }
                Ok(tx)
            }
            Ok(Err(TenantError::InsufficientBalance { balance, amount })) => {
                Err(TenantUpdateError::InsufficientBalance { balance, amount })
            }
            Ok(Err(error)) => Err(TenantUpdateError::Unavailable(error.to_string())),
            Err(_) => Err(TenantUpdateError::Unavailable("the tenant actor is restarting; retry".into())),
        }
    }

    /// A tenant's ledger as journaled: balance, opening balance and the kept transactions.
    pub async fn ledger(&self, tenant_id: &str) -> Result<Ledger, SystemError> {
        if !self.context.directory.read().tenants.contains_key(tenant_id) {
            return Err(SystemError::NotFound);
        }
        let id = tenant_id.to_owned();
        self.read_durable(move |durable| durable.ledgers.get(id.as_str()).cloned().unwrap_or_default())
            .await
            .map_err(SystemError::Unavailable)
    }

    /// Seed 004's `canUseFeature` for a tenant, by the service clock.
    pub async fn feature(&self, tenant_id: &str, name: &str) -> Result<FeatureDecision, SystemError> {
        let view = self.get_tenant(tenant_id).await?;
        let record = &view.record;
        Ok(can_use(self.context.flag(name), record.flags.get(name).copied(), record.addons.get(name), self.now_ms()))
    }

    /// Creates or changes a global feature flag.
    pub async fn set_flag(&self, name: String, enabled: bool) -> Result<(), CreateError> {
        match ask(&self.supervisor, |reply| SupervisorMsg::SetFlag { name, enabled, reply }, self.context.settings.journal_timeout).await {
            Ok(result) => result,
            Err(_) => Err(CreateError::Journal(AppendError::Unknown)),
        }
    }

    /// Global flags, by name.
    pub fn flags(&self) -> BTreeMap<String, bool> {
        self.context.flags.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// A tenant's usage in one month (`yyyymm`), per pool, and its add-ons.
    pub async fn usage(&self, tenant_id: &str, month: u32) -> Result<(BTreeMap<String, UsageTotals>, TenantRecord), SystemError> {
        let view = self.get_tenant(tenant_id).await?;
        let id = tenant_id.to_owned();
        let totals = self
            .read_durable(move |durable| durable.usage.get(id.as_str()).and_then(|months| months.get(&month)).cloned().unwrap_or_default())
            .await
            .map_err(SystemError::Unavailable)?;
        Ok((totals, view.record))
    }

    pub async fn get_line(&self, id: &str) -> Result<LineView, SystemError> {
        let line = self.context.directory.read().lines.get(id).cloned().ok_or(SystemError::NotFound)?;
        ask(&line.slot.actor, |reply| LineMsg::Get { reply }, self.timeout()).await.map_err(|_| self.restarting("line"))
    }

    /// Every pool as the platform actor holds it, and what is sold on each.
    pub async fn platform(&self) -> Result<PlatformSummary, SystemError> {
        let platform = self.context.directory.read().platform();
        let view =
            ask(&platform.actor, |reply| PlatformMsg::Get { reply }, self.timeout()).await.map_err(|_| self.restarting("platform"))?;
        let plans = Arc::clone(&self.context.settings.plans);
        let arbitration = Arc::clone(&self.context.settings.arbitration);
        let now_ms = self.now_ms();
        let flag = self.context.flag(&arbitration.premium_feature);
        let (sold_limits_total, sold_premium, stats) = self
            .read_durable(move |durable| {
                let mut total = 0u64;
                let mut premium = 0u64;
                // Sums: any order gives the same totals, so no sort of every tenant on the
                // journal writer, which every admission waits on.
                for tenant in durable.tenants.values() {
                    let limit = u64::from(plans.effective_limit(&tenant.plan, tenant.concurrent_limit_override));
                    total += limit;
                    let feature = &arbitration.premium_feature;
                    if can_use(flag, tenant.flags.get(feature).copied(), tenant.addons.get(feature), now_ms).allowed {
                        premium += limit;
                    }
                }
                (total, premium, durable.pools.iter().map(|(name, pool)| (name.clone(), pool.clone())).collect::<BTreeMap<_, _>>())
            })
            .await
            .map_err(SystemError::Unavailable)?;
        let arbitration = &self.context.settings.arbitration;
        let sold = |pool: &str| {
            if pool == arbitration.default_pool {
                sold_limits_total
            } else if arbitration.premium_pool.as_deref() == Some(pool) {
                sold_premium
            } else {
                0
            }
        };
        let pools = view
            .pools
            .into_iter()
            .map(|(name, pool)| {
                let summary = PoolSummary {
                    sold_limits: sold(&name),
                    reserved: view.reserved[&name].clone(),
                    record: stats.get(&name).cloned().unwrap_or_default(),
                    view: pool,
                };
                (name, summary)
            })
            .collect();
        Ok(PlatformSummary { default_pool: arbitration.default_pool.to_string(), sold_limits_total, pools })
    }

    /// Changes a pool's capacity and/or reservations live (journaled first).
    pub async fn configure_pool(
        &self,
        pool: &str,
        capacity: Option<u32>,
        reserved: Option<BTreeMap<String, u32>>,
    ) -> Result<(), SystemError> {
        let platform = self.context.directory.read().platform();
        let pool = pool.to_owned();
        match ask(
            &platform.actor,
            |reply| PlatformMsg::Configure { pool, capacity, reserved, reply },
            self.context.settings.journal_timeout,
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(PoolError::UnknownPool(_))) => Err(SystemError::NotFound),
            Ok(Err(error)) => Err(SystemError::Unavailable(error.to_string())),
            Err(_) => Err(self.restarting("platform")),
        }
    }

    /// The default pool's capacity (`PATCH /v1/platform`, kept from the single-pool days).
    pub async fn set_platform_capacity(&self, capacity: u32) -> Result<(), SystemError> {
        let pool = self.context.settings.arbitration.default_pool.clone();
        self.configure_pool(&pool, Some(capacity), None).await
    }

    // ---------------------------------------------------------------- state, faults, shutdown

    /// Runs `read` against the journal's durable state.
    pub async fn inspect<R: Send + 'static>(&self, read: impl FnOnce(&DurableState) -> R + Send + 'static) -> Result<R, String> {
        crate::read_journal(&self.journal(), read, self.timeout()).await.map_err(|error| match error {
            AskError::Gone => "the journal writer is gone".to_owned(),
            AskError::Timeout => "the journal did not answer in time".to_owned(),
        })
    }

    /// Like `inspect`, for what is shown to a client: answers only once everything the read saw
    /// is durable. (The journal's state includes accepted events still being written; showing
    /// one that a crash then loses would be acknowledging it early.)
    pub async fn read_durable<R: Send + 'static>(&self, read: impl FnOnce(&DurableState) -> R + Send + 'static) -> Result<R, String> {
        let value = self.inspect(read).await?;
        self.sync().await?;
        Ok(value)
    }

    /// Waits until everything accepted so far is durable.
    pub async fn sync(&self) -> Result<(), String> {
        match ask(&self.journal(), |reply| JournalMsg::Sync { reply }, self.context.settings.journal_timeout).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("the journal writer did not answer".into()),
        }
    }

    /// What the live actors hold, in the same shape as `DurableState::digest`.
    pub async fn live_digest(&self) -> Result<StateDigest, String> {
        let (tenants, lines, calls, ended) = {
            let directory = self.context.directory.read();
            let tenants: Vec<_> = id_map::sorted(&directory.tenants).into_iter().map(|(_, t)| t.actor.clone()).collect();
            let lines: Vec<_> = id_map::sorted(&directory.lines).into_iter().map(|(_, l)| l.slot.actor.clone()).collect();
            let calls: Vec<_> = directory.calls.values().map(|c| c.actor.clone()).collect();
            (tenants, lines, calls, directory.ended.clone())
        };
        let timeout = self.timeout();
        let gone = |_| "an actor did not answer".to_owned();
        let mut digest = StateDigest { ended_calls: ended, ..StateDigest::default() };
        for tenant in tenants {
            let view = ask(&tenant, |reply| TenantMsg::Get { reply }, timeout).await.map_err(gone)?;
            digest.tenants.insert(view.record.id.clone(), (view.record, view.active, view.balance));
        }
        for line in lines {
            let view = ask(&line, |reply| LineMsg::Get { reply }, timeout).await.map_err(gone)?;
            digest.lines.insert(view.record.id.clone(), (view.record, view.active));
        }
        for call in calls {
            let core = ask(&call, |reply| CallMsg::Get { reply }, timeout).await.map_err(gone)?;
            digest.live_calls.insert(core.record.id, core.record);
        }
        let platform = self.context.directory.read().platform();
        let view = ask(&platform.actor, |reply| PlatformMsg::Get { reply }, timeout).await.map_err(gone)?;
        digest.pools = view.digest();
        digest.flags = self.flags();
        (digest.callbacks, digest.campaigns) = self.live_callbacks().await?;
        Ok(digest)
    }

    /// Makes an entity's actor panic (the supervision tests' fault injection).
    pub fn inject_crash(&self, entity: &Entity) -> bool {
        let directory = self.context.directory.read();
        match entity {
            Entity::Tenant(id) => directory.tenants.get(id).is_some_and(|t| t.actor.cast(TenantMsg::Crash).is_ok()),
            Entity::Line(id) => directory.lines.get(id).is_some_and(|l| l.slot.actor.cast(LineMsg::Crash).is_ok()),
            Entity::Platform => directory.platform.as_ref().is_some_and(|p| p.actor.cast(PlatformMsg::Crash).is_ok()),
            Entity::Call(id) => directory.calls.get(id).is_some_and(|c| c.actor.cast(CallMsg::Crash).is_ok()),
            Entity::CallbackQueue(id) => directory.callback_queues.get(id).is_some_and(|q| q.cast(CallbackQueueMsg::Crash).is_ok()),
        }
    }

    /// Makes a call's actor journal its end and panic before releasing anything.
    pub fn inject_crash_mid_end(&self, id: CallId) -> bool {
        self.context.directory.read().calls.get(&id).is_some_and(|c| c.actor.cast(CallMsg::CrashMidEnd).is_ok())
    }

    /// The generation an entity's current actor runs at (tests: proof of a rebuild).
    pub fn generation(&self, entity: &Entity) -> Option<u32> {
        let directory = self.context.directory.read();
        match entity {
            Entity::Tenant(id) => directory.tenants.get(id).map(|t| t.generation),
            Entity::Line(id) => directory.lines.get(id).map(|l| l.slot.generation),
            Entity::Platform => directory.platform.as_ref().map(|p| p.generation),
            Entity::Call(_) | Entity::CallbackQueue(_) => None,
        }
    }

    /// Flushes the journal, stops every actor and closes the store (releasing its files).
    /// Nothing is rebuilt from here on.
    pub async fn shutdown(&self) -> Result<(), String> {
        let _ = ask(&self.supervisor, |reply| SupervisorMsg::Stopping { reply }, self.timeout()).await;
        let synced = self.sync().await;
        self.supervisor.stop_children_and_wait(None, Some(self.timeout())).await;
        let _ = self.supervisor.stop_and_wait(None, Some(self.timeout())).await;
        // Closing flushes and syncs a disk store: off the async workers.
        let store = Arc::clone(&self.store);
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        synced
    }
}
