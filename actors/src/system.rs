//! The system: the facade that the HTTP layer drives, and the admission path itself.
//!
//! Admission is a short saga over single-owner actors, so no step has a check-then-act window:
//! the tenant reserves a plan slot, the line a channel, the platform a capacity slot (each
//! atomically, in its own mailbox); then one `CallAdmitted` event is appended and the caller is
//! answered only once it is durable. A denial at any step releases what the earlier steps
//! reserved. If an actor crashed mid-way, the journal refuses the stale append and the
//! admission is retried against the rebuilt actors (see `journal.rs`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, RpcReplyPort};
use tokio::sync::{Semaphore, oneshot};

use crate::call::{CallError, CallMsg};
use crate::clock::Clock;
use crate::context::{Context, Settings};
use crate::core::call::CallCore;
use crate::core::slots::Full;
use crate::directory::{CallLookup, SharedDirectory};
use crate::event::{Event, IdempotencyStamp};
use crate::journal::{AppendError, Entity, Guard, JournalMsg};
use crate::model::{CallId, CallRecord, Direction, EndedCall, LineRecord, TenantRecord, mask_phone};
use crate::phone_line::{LineMsg, LineView};
use crate::platform::{PlatformMsg, PlatformView};
use crate::state::{DurableState, IdempotencyRecord, StateDigest};
use crate::store::Store;
use crate::supervisor::{CreateError, Supervisor, SupervisorMsg};
use crate::telemetry::{AdmissionOutcome, Telemetry};
use crate::tenant::{TenantMsg, TenantPatch, TenantView};

/// Attempts at one admission when actors it reserved in were rebuilt under it.
const ADMISSION_ATTEMPTS_MAX: u32 = 3;
/// Idempotency keys being processed at once; past it a keyed request gets 503.
const IDEMPOTENCY_IN_FLIGHT_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenialCode {
    TenantLimitReached,
    LineBusy,
    PlatformCapacityFull,
}

impl DenialCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DenialCode::TenantLimitReached => "TENANT_LIMIT_REACHED",
            DenialCode::LineBusy => "LINE_BUSY",
            DenialCode::PlatformCapacityFull => "PLATFORM_CAPACITY_FULL",
        }
    }
}

/// Which limit bound, and how full it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial {
    pub code: DenialCode,
    pub current_active: u32,
    pub limit: u32,
    pub retry_after_s: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmitRequest {
    pub tenant_id: String,
    pub line_id: Option<String>,
    pub direction: Direction,
    /// Inbound only: the provider has already connected the call, so it is recorded whatever
    /// the limits say (seed 000 §2.2).
    pub already_connected: bool,
    pub provider_call_id: Option<String>,
    pub to: Option<String>,
    pub from: Option<String>,
    pub idempotency: Option<IdempotencyStamp>,
}

impl AdmitRequest {
    /// The plainest admission: an outbound call for `tenant_id`, no line, no key.
    pub fn outbound(tenant_id: impl Into<String>) -> AdmitRequest {
        AdmitRequest {
            tenant_id: tenant_id.into(),
            line_id: None,
            direction: Direction::Outbound,
            already_connected: false,
            provider_call_id: None,
            to: None,
            from: None,
            idempotency: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub call: CallRecord,
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
    Live(CallRecord),
    Ended(EndedCall),
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlatformSummary {
    pub capacity: u32,
    pub active: u32,
    pub sold_limits_total: u64,
}

pub struct System {
    context: Arc<Context>,
    store: Arc<dyn Store>,
    supervisor: ActorRef<SupervisorMsg>,
    next_call_number: AtomicU64,
    idempotency_in_flight: Mutex<BTreeSet<String>>,
    /// Admissions in progress, each in its own task (`Settings::admissions_in_flight_max`).
    admissions: Arc<Semaphore>,
}

enum Attempt {
    Retry,
    Fail(AdmitError),
}

/// Why an actor did not answer.
enum AskError {
    Gone,
    Timeout,
}

async fn ask<M, R, F>(actor: &ActorRef<M>, build: F, timeout: std::time::Duration) -> Result<R, AskError>
where
    M: ractor::Message,
    R: Send + 'static,
    F: FnOnce(RpcReplyPort<R>) -> M,
{
    match actor.call(build, Some(timeout)).await {
        Ok(CallResult::Success(answer)) => Ok(answer),
        Ok(CallResult::Timeout) => Err(AskError::Timeout),
        Ok(CallResult::SenderError) | Err(_) => Err(AskError::Gone),
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
            let _ = line.cast(LineMsg::Release { call });
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
            journal_alive: Arc::new(AtomicBool::new(true)),
        });
        let next_call_number = AtomicU64::new(durable.next_call_number);
        let supervisor = Supervisor { context: Arc::clone(&context), store: Arc::clone(&store) };
        let (supervisor, _) = Actor::spawn(None, supervisor, durable).await?;
        let admissions = Arc::new(Semaphore::new(context.settings.admissions_in_flight_max));
        Ok(System { context, store, supervisor, next_call_number, idempotency_in_flight: Mutex::new(BTreeSet::new()), admissions })
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
    /// its release, or between a durable append and the call's actor. Admissions in progress
    /// are bounded; past the bound the answer is `Overloaded` at once.
    pub async fn admit(self: &Arc<Self>, request: AdmitRequest) -> Result<Admitted, AdmitError> {
        let permit = Arc::clone(&self.admissions).try_acquire_owned().map_err(|_| AdmitError::Overloaded)?;
        let system = Arc::clone(self);
        let admission = tokio::spawn(async move {
            let _permit = permit;
            system.admit_to_completion(request).await
        });
        admission.await.unwrap_or_else(|failed| Err(AdmitError::Unavailable(format!("the admission failed: {failed}"))))
    }

    async fn admit_to_completion(&self, request: AdmitRequest) -> Result<Admitted, AdmitError> {
        let Some(stamp) = request.idempotency.clone() else {
            return self.admit_new(request).await;
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
            None => self.admit_new(request).await,
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

    async fn admit_new(&self, request: AdmitRequest) -> Result<Admitted, AdmitError> {
        self.check_references(&request)?;
        let force = request.direction == Direction::Inbound && request.already_connected;
        let id = CallId(self.next_call_number.fetch_add(1, Ordering::SeqCst));
        for _ in 0..ADMISSION_ATTEMPTS_MAX {
            match self.try_admit(id, &request, force).await {
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
        Err(AdmitError::Unavailable("actors were being rebuilt; retry".into()))
    }

    fn check_references(&self, request: &AdmitRequest) -> Result<(), AdmitError> {
        let directory = self.context.directory.read();
        if !directory.tenants.contains_key(&request.tenant_id) {
            return Err(AdmitError::UnknownTenant(request.tenant_id.clone()));
        }
        if let Some(line_id) = &request.line_id {
            let line = directory.lines.get(line_id).ok_or_else(|| AdmitError::UnknownLine(line_id.clone()))?;
            if line.tenant_id != request.tenant_id {
                return Err(AdmitError::LineNotOwned { line: line_id.clone(), owner: line.tenant_id.clone() });
            }
        }
        let live_calls_max = self.context.settings.live_calls_max;
        if directory.calls.len() >= live_calls_max {
            return Err(AdmitError::LiveCallsMax(live_calls_max));
        }
        Ok(())
    }

    async fn try_admit(&self, id: CallId, request: &AdmitRequest, force: bool) -> Result<CallRecord, Attempt> {
        let (tenant, line, platform, journal) = {
            let directory = self.context.directory.read();
            let tenant = directory.tenants.get(&request.tenant_id).cloned();
            let line = request.line_id.as_ref().and_then(|l| directory.lines.get(l)).map(|l| l.slot.clone());
            (tenant.ok_or(Attempt::Retry)?, line, directory.platform(), directory.journal())
        };
        if request.line_id.is_some() && line.is_none() {
            return Err(Attempt::Retry);
        }
        let mut reserved = Reserved::default();
        let outcome = self.reserve_all(id, force, &tenant.actor, line.as_ref().map(|l| &l.actor), &platform.actor, &mut reserved).await;
        let (plan, over_limit) = match outcome {
            Ok(granted) => granted,
            Err(attempt) => {
                reserved.release(id);
                return Err(attempt);
            }
        };
        let now_ms = self.context.clock.now_ms();
        let call = CallRecord {
            id,
            tenant_id: request.tenant_id.clone(),
            line_id: request.line_id.clone(),
            direction: request.direction,
            provider_call_id: request.provider_call_id.clone(),
            to: request.to.clone(),
            from: request.from.clone(),
            over_limit,
            plan,
            started_at_ms: now_ms,
            last_activity_at_ms: now_ms,
        };
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
    async fn settle_unknown(&self, call: CallRecord, reserved: &Reserved) -> Result<CallRecord, Attempt> {
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

    /// Tenant, then line, then platform. Returns the tenant's plan and whether any limit was
    /// exceeded by a forced (already connected inbound) admission.
    async fn reserve_all(
        &self,
        call: CallId,
        force: bool,
        tenant: &ActorRef<TenantMsg>,
        line: Option<&ActorRef<LineMsg>>,
        platform: &ActorRef<PlatformMsg>,
        reserved: &mut Reserved,
    ) -> Result<(String, bool), Attempt> {
        let timeout = self.timeout();
        let retry_after_s = self.context.settings.retry_after_s;
        let deny = |code: DenialCode, full: Full| {
            Attempt::Fail(AdmitError::Denied(Denial { code, current_active: full.current_active, limit: full.limit, retry_after_s }))
        };
        let unanswered = |error: AskError| match error {
            AskError::Gone => Attempt::Retry,
            AskError::Timeout => Attempt::Fail(AdmitError::Unavailable("an actor did not answer in time".into())),
        };
        reserved.tenant = Some(tenant.clone());
        let tenant_grant = ask(tenant, |reply| TenantMsg::Reserve { call, force, reply }, timeout).await.map_err(unanswered)?;
        let tenant_grant = tenant_grant.map_err(|full| deny(DenialCode::TenantLimitReached, full))?;
        let mut over_limit = tenant_grant.over_limit;
        if let Some(line) = line {
            reserved.line = Some(line.clone());
            let granted = ask(line, |reply| LineMsg::Reserve { call, force, reply }, timeout).await.map_err(unanswered)?;
            over_limit |= granted.map_err(|full| deny(DenialCode::LineBusy, full))?.over_limit;
        }
        reserved.platform = Some(platform.clone());
        let granted = ask(platform, |reply| PlatformMsg::Reserve { call, force, reply }, timeout).await.map_err(unanswered)?;
        over_limit |= granted.map_err(|full| deny(DenialCode::PlatformCapacityFull, full))?.over_limit;
        Ok((tenant_grant.plan, over_limit))
    }

    /// The call is durable: give it its actor, count it, and raise the alert if it is over.
    async fn admitted(&self, call: CallRecord) -> Admitted {
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
        if let Err(error) = self.context.spawn_call(self.supervisor.get_cell(), call.clone()).await {
            // The call is durable; the next start gives it an actor. Until then it holds its slots.
            tracing::error!(call_id = %call.id, %error, "could not start the call actor");
        }
        Admitted { call, replayed: false }
    }

    // ---------------------------------------------------------------- calls

    pub async fn end_call(&self, id: CallId, outcome: String, duration_s: Option<u64>) -> Result<EndedCall, SystemError> {
        let lookup = self.context.directory.read().call(id);
        match lookup {
            CallLookup::Ended(ended) => Ok(*ended),
            CallLookup::Unknown => Err(SystemError::NotFound),
            CallLookup::Live(actor) => {
                match ask(&actor, |reply| CallMsg::End { outcome, duration_s, reply }, self.context.settings.journal_timeout).await {
                    Ok(Ok(ended)) => Ok(ended),
                    Ok(Err(error)) => Err(SystemError::Unavailable(error.to_string())),
                    Err(_) => self.ended_meanwhile(id),
                }
            }
        }
    }

    /// The call actor stopped while we asked it: it either ended (and is in the directory's
    /// ended calls) or crashed and is being rebuilt.
    fn ended_meanwhile(&self, id: CallId) -> Result<EndedCall, SystemError> {
        match self.context.directory.read().call(id) {
            CallLookup::Ended(ended) => Ok(*ended),
            _ => Err(SystemError::Unavailable("the call's actor is restarting; retry".into())),
        }
    }

    pub async fn heartbeat(&self, id: CallId) -> Result<CallRecord, SystemError> {
        let lookup = self.context.directory.read().call(id);
        match lookup {
            CallLookup::Ended(ended) => Err(SystemError::CallEnded(ended)),
            CallLookup::Unknown => Err(SystemError::NotFound),
            CallLookup::Live(actor) => match ask(&actor, |reply| CallMsg::Heartbeat { reply }, self.context.settings.journal_timeout).await
            {
                Ok(Ok(record)) => Ok(record),
                Ok(Err(CallError::Ended(ended))) => Err(SystemError::CallEnded(ended)),
                Ok(Err(CallError::Journal(error))) => Err(SystemError::Unavailable(error.to_string())),
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
    pub fn list_calls(&self, tenant_id: Option<&str>, line_id: Option<&str>, after: Option<CallId>, limit: usize) -> Vec<CallRecord> {
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
        ask(&tenant.actor, |reply| TenantMsg::Get { reply }, self.timeout())
            .await
            .map_err(|_| SystemError::Unavailable("the tenant's actor is restarting; retry".into()))
    }

    pub async fn update_tenant(&self, id: &str, patch: TenantPatch) -> Result<TenantView, SystemError> {
        let tenant = self.context.directory.read().tenants.get(id).cloned().ok_or(SystemError::NotFound)?;
        match ask(&tenant.actor, |reply| TenantMsg::Update { patch, reply }, self.context.settings.journal_timeout).await {
            Ok(Ok(view)) => Ok(view),
            Ok(Err(error)) => Err(SystemError::Unavailable(error.to_string())),
            Err(_) => Err(SystemError::Unavailable("the tenant's actor is restarting; retry".into())),
        }
    }

    pub async fn get_line(&self, id: &str) -> Result<LineView, SystemError> {
        let line = self.context.directory.read().lines.get(id).cloned().ok_or(SystemError::NotFound)?;
        ask(&line.slot.actor, |reply| LineMsg::Get { reply }, self.timeout())
            .await
            .map_err(|_| SystemError::Unavailable("the line's actor is restarting; retry".into()))
    }

    pub async fn platform(&self) -> Result<PlatformSummary, SystemError> {
        let platform = self.context.directory.read().platform();
        let view = ask(&platform.actor, |reply| PlatformMsg::Get { reply }, self.timeout())
            .await
            .map_err(|_| SystemError::Unavailable("the platform actor is restarting; retry".into()))?;
        let plans = Arc::clone(&self.context.settings.plans);
        let sold_limits_total = self
            .inspect(move |durable| {
                durable.tenants.values().map(|t| u64::from(plans.effective_limit(&t.plan, t.concurrent_limit_override))).sum()
            })
            .await
            .map_err(SystemError::Unavailable)?;
        Ok(PlatformSummary { capacity: view.capacity, active: view.active.len() as u32, sold_limits_total })
    }

    pub async fn set_platform_capacity(&self, capacity: u32) -> Result<PlatformView, SystemError> {
        let platform = self.context.directory.read().platform();
        match ask(&platform.actor, |reply| PlatformMsg::SetCapacity { capacity, reply }, self.context.settings.journal_timeout).await {
            Ok(Ok(view)) => Ok(view),
            Ok(Err(error)) => Err(SystemError::Unavailable(error.to_string())),
            Err(_) => Err(SystemError::Unavailable("the platform actor is restarting; retry".into())),
        }
    }

    // ---------------------------------------------------------------- state, faults, shutdown

    /// Runs `read` against the journal's durable state.
    pub async fn inspect<R: Send + 'static>(&self, read: impl FnOnce(&DurableState) -> R + Send + 'static) -> Result<R, String> {
        let (sender, receiver) = oneshot::channel();
        let inspector = Box::new(move |durable: &DurableState| {
            let _ = sender.send(read(durable));
        });
        self.journal().cast(JournalMsg::Inspect(inspector)).map_err(|_| "the journal writer is gone".to_owned())?;
        tokio::time::timeout(self.timeout(), receiver)
            .await
            .map_err(|_| "the journal did not answer in time".to_owned())?
            .map_err(|_| "the journal writer is gone".to_owned())
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
            let tenants: Vec<_> = directory.tenants.values().map(|t| t.actor.clone()).collect();
            let lines: Vec<_> = directory.lines.values().map(|l| l.slot.actor.clone()).collect();
            let calls: Vec<_> = directory.calls.values().map(|c| c.actor.clone()).collect();
            (tenants, lines, calls, directory.ended.clone())
        };
        let timeout = self.timeout();
        let gone = |_| "an actor did not answer".to_owned();
        let mut digest = StateDigest { ended_calls: ended, ..StateDigest::default() };
        for tenant in tenants {
            let view = ask(&tenant, |reply| TenantMsg::Get { reply }, timeout).await.map_err(gone)?;
            digest.tenants.insert(view.record.id.clone(), (view.record, view.active));
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
        digest.platform = (view.capacity, view.active);
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
            Entity::Call(_) => None,
        }
    }

    /// Flushes the journal, stops every actor and closes the store (releasing its files).
    /// Nothing is rebuilt from here on.
    pub async fn shutdown(&self) -> Result<(), String> {
        let _ = ask(&self.supervisor, |reply| SupervisorMsg::Stopping { reply }, self.timeout()).await;
        let synced = self.sync().await;
        self.supervisor.stop_children_and_wait(None, Some(self.timeout())).await;
        let _ = self.supervisor.stop_and_wait(None, Some(self.timeout())).await;
        self.store.close();
        synced
    }
}
