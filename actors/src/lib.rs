//! switchboard's domain: deterministic cores and the ractor actors that run them.
//!
//! # Layout
//! - `model`: the records (tenants, lines, calls, plans) everything shares.
//! - `core`: pure state machines with an injected `now` (slot tables, the call watchdog).
//! - `event`, `codec`, `state`, `store`: the journal's events, their one encoding, the fold
//!   that replays them, and where their bytes go.
//! - `journal`: the journal-writer actor (sequencing, group commit, generations).
//! - `tenant`, `phone_line`, `platform`, `call`, `callback_queue`: one actor per entity (a
//!   callback queue per line).
//! - `dialer`: the trait the callback dispatcher places calls through.
//! - `supervisor`: boots and rebuilds the actors; `directory`: where each actor is.
//! - `context`: settings and spawn functions the actors share.
//! - `system`: the facade the HTTP layer (and later the simulator) drives: the admission path.
//! - `clock`, `telemetry`: the injected wall clock and the metrics sink.
//!
//! Determinism rules (DESIGN.md) hold throughout: ordered maps, or `IdMap`s iterated only in
//! key order, time only from the
//! injected clock and tokio time, no ractor registry lookups, no ActorIds in outputs.

pub mod call;
pub mod callback_queue;
pub mod clock;
pub mod codec;
pub mod context;
pub mod core;
pub mod dialer;
pub mod directory;
pub mod event;
pub mod id_map;
pub mod journal;
pub mod model;
pub mod phone_line;
pub mod platform;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod system;
pub mod telemetry;
pub mod tenant;

use std::future::Future;
use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use crate::event::Event;
use crate::journal::{AppendError, Guard, JournalMsg};

/// Why an actor asked something did not answer.
#[derive(Debug)]
pub(crate) enum AskError {
    /// It is gone (stopped or crashed) and dropped the question.
    Gone,
    Timeout,
}

/// Sends `actor` the message `build` makes around a reply port, now, and returns the wait for
/// the answer (at most `timeout`).
///
/// Unlike `ActorRef::call`, whose future also carries the message (and the closure that
/// builds it), the wait holds only the receiving end and its timer. Every future that awaits
/// one grows by its size, and actors' handler futures are moved whole as ractor runs them:
/// the lean wait took a tenth of the simulator's memory copying away.
pub(crate) fn ask<M, R, F>(
    actor: &ActorRef<M>,
    build: F,
    timeout: Duration,
) -> impl Future<Output = Result<R, AskError>> + Send + use<M, R, F>
where
    M: ractor::Message,
    R: Send + 'static,
    F: FnOnce(RpcReplyPort<R>) -> M,
{
    let answer = question(actor, build, timeout);
    async move {
        match tokio::time::timeout(timeout, answer?).await {
            Ok(answer) => answer.map_err(|_| AskError::Gone),
            Err(_) => Err(AskError::Timeout),
        }
    }
}

/// Like [`ask`], but the wait ends at `deadline`, a timer the caller shares between several
/// questions (an admission asks its tenant, line and platform before one deadline: one timer
/// registered per admission, not one per question).
pub(crate) fn ask_before<'d, M, R, F>(
    actor: &ActorRef<M>,
    build: F,
    mut deadline: std::pin::Pin<&'d mut tokio::time::Sleep>,
) -> impl Future<Output = Result<R, AskError>> + Send + use<'d, M, R, F>
where
    M: ractor::Message,
    R: Send + 'static,
    F: FnOnce(RpcReplyPort<R>) -> M,
{
    let patience = deadline.deadline().saturating_duration_since(tokio::time::Instant::now());
    let answer = question(actor, build, patience);
    async move {
        tokio::select! {
            biased;
            answer = answer? => answer.map_err(|_| AskError::Gone),
            () = deadline.as_mut() => Err(AskError::Timeout),
        }
    }
}

/// Sends the question; its answer's receiving end, or `Gone` if the actor is.
fn question<M, R, F>(actor: &ActorRef<M>, build: F, patience: Duration) -> Result<tokio::sync::oneshot::Receiver<R>, AskError>
where
    M: ractor::Message,
    F: FnOnce(RpcReplyPort<R>) -> M,
{
    let (port, answer) = tokio::sync::oneshot::channel();
    actor.cast(build((port, patience).into())).map(|()| answer).map_err(|_| AskError::Gone)
}

/// Runs `read` against the journal writer's state in its turn (every event accepted so far,
/// some perhaps not yet durable) and waits at most `timeout` for the result.
pub(crate) async fn read_journal<R: Send + 'static>(
    journal: &ActorRef<JournalMsg>,
    read: impl FnOnce(&state::DurableState) -> R + Send + 'static,
    timeout: Duration,
) -> Result<R, AskError> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let inspector: journal::Inspector = Box::new(move |durable| {
        let _ = sender.send(read(durable));
    });
    journal.cast(JournalMsg::Inspect(inspector)).map_err(|_| AskError::Gone)?;
    match tokio::time::timeout(timeout, receiver).await {
        Ok(answer) => answer.map_err(|_| AskError::Gone),
        Err(_) => Err(AskError::Timeout),
    }
}

/// Appends one event and waits until it is durable. Returns its sequence number.
///
/// A timeout leaves the outcome unknown (the event may still become durable), so callers must
/// not undo anything they reserved for it: keeping a slot until restart is safe, freeing a
/// slot whose call turns out durable is not.
pub fn append(
    journal: &ActorRef<JournalMsg>,
    event: Event,
    guard: Guard,
    timeout: Duration,
) -> impl Future<Output = Result<u64, AppendError>> + Send + use<> {
    ask_journal(journal, |reply| JournalMsg::Append { event, guard, reply }, timeout)
}

/// Sends the journal writer a message that appends, and waits for its answer. A timeout is
/// an unknown outcome, as for `append`.
pub(crate) fn ask_journal<R, F>(
    journal: &ActorRef<JournalMsg>,
    message: F,
    timeout: Duration,
) -> impl Future<Output = Result<R, AppendError>> + Send + use<R, F>
where
    R: Send + 'static,
    F: FnOnce(RpcReplyPort<Result<R, AppendError>>) -> JournalMsg,
{
    let answer = ask(journal, message, timeout);
    async move {
        match answer.await {
            Ok(result) => result,
            Err(AskError::Timeout) => Err(AppendError::Unknown),
            Err(AskError::Gone) => Err(AppendError::Failed("the journal writer is gone".into())),
        }
    }
}
