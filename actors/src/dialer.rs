//! The dialer: how switchboard asks the platform to place a call (a callback, later a campaign
//! call). The HTTP implementation lives in the server crate; tests use a fake on loopback.

use std::future::Future;
use std::pin::Pin;

/// What a dial request carries (seed 002: the agent can say "I see you called earlier").
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DialRequest {
    pub to: String,
    pub line_id: String,
    pub tenant_id: String,
    pub agent_id: Option<String>,
    /// The admitted call this dial places (its end arrives on `POST /v1/calls/{id}/end`).
    pub call_id: String,
    pub is_auto_callback: bool,
    pub original_missed_call_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialOutcome {
    /// The platform accepted the request (2xx): the call is being placed.
    Accepted,
    /// The provider is rate-limiting (429): the pool's provider-rate-limit path.
    RateLimited { retry_after_s: Option<u64> },
    /// A timeout, a refused connection or another status: the attempt failed.
    Failed(String),
}

pub type DialFuture<'a> = Pin<Box<dyn Future<Output = DialOutcome> + Send + 'a>>;

pub trait Dialer: Send + Sync + 'static {
    fn dial(&self, request: DialRequest) -> DialFuture<'_>;
}
