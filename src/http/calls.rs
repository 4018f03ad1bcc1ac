//! `/v1/calls`: admission, end, heartbeat, and reading live and ended calls.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use switchboard_actors::core::call::EndReport;
use switchboard_actors::event::{IdempotencyStamp, fnv1a64};
use switchboard_actors::model::{CallId, CallRecord, Direction, EndedCall, OnBusy, Voice};
use switchboard_actors::system::{AdmitError, AdmitRequest, CallState, DenialCode, SystemError};

use super::AppStateRef;
use super::extract::{JsonBody, QueryParams, json_body};
use super::json::{self, JsonObject};
use super::problem::Problem;
use super::validate::{self, Rfc3339};

/// Page size bounds for `GET /v1/calls`.
const LIST_LIMIT_DEFAULT: usize = 50;
const LIST_LIMIT_MAX: usize = 200;
/// `Idempotency-Key` length bound (Stripe's is 255).
const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// A provider's call id is at most this long (Twilio's CallSid is 34 characters).
pub const PROVIDER_CALL_ID_CHARS_MAX: usize = 128;
/// A reported call duration beyond this is a typo, not a call.
const DURATION_S_MAX: u64 = 31 * 24 * 60 * 60;
/// Characters reported for one call beyond this are a typo.
const CHARACTERS_MAX: u64 = 1_000_000_000;
/// A provider cooldown beyond an hour is a typo.
const RETRY_AFTER_S_MAX: u64 = 3_600;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCall {
    tenant_id: switchboard_actors::model::TenantId,
    #[serde(default)]
    line_id: Option<switchboard_actors::model::LineId>,
    direction: Direction,
    #[serde(default)]
    already_connected: bool,
    #[serde(default)]
    provider_call_id: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    voice: Option<Voice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fallback: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wait_ms: Option<u64>,
}

impl CreateCall {
    fn validate(&self) -> Result<(), Problem> {
        validate::id("tenant_id", &self.tenant_id)?;
        if let Some(line_id) = &self.line_id {
            validate::e164("line_id", line_id)?;
        }
        if self.already_connected && self.direction == Direction::Outbound {
            return Err(Problem::invalid("already_connected", "only inbound calls arrive already connected"));
        }
        if let Some(provider_call_id) = &self.provider_call_id {
            validate::text("provider_call_id", provider_call_id, PROVIDER_CALL_ID_CHARS_MAX)?;
        }
        if let Some(to) = &self.to {
            validate::e164("to", to)?;
        }
        if let Some(from) = &self.from {
            validate::e164("from", from)?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndCall {
    #[serde(default)]
    outcome: Option<switchboard_actors::model::Name>,
    #[serde(default)]
    duration_s: Option<u64>,
    #[serde(default)]
    characters: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderRejected {
    #[serde(default)]
    retry_after_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListCalls {
    tenant_id: Option<String>,
    line_id: Option<String>,
    limit: Option<usize>,
    starting_after: Option<String>,
}

/// A call as the API shows it. Serialised straight from borrowed fields: this is on every
/// admission and end, and building a `serde_json::Value` allocated for each of its keys.
#[derive(Serialize)]
pub struct CallView<'a> {
    object: &'static str,
    #[serde(serialize_with = "display")]
    call_id: CallId,
    tenant_id: &'a str,
    line_id: Option<&'a str>,
    direction: Direction,
    status: &'static str,
    over_limit: bool,
    plan: &'a str,
    class: &'a str,
    pool: &'a str,
    voice: Voice,
    fell_back: bool,
    fallback_reason: Option<&'a str>,
    waited_ms: u64,
    provider_call_id: Option<&'a str>,
    to: Option<&'a str>,
    from: Option<&'a str>,
    started_at: Rfc3339,
    last_activity_at: Rfc3339,
    ended_at: Option<Rfc3339>,
    outcome: Option<&'a str>,
    duration_s: Option<u64>,
    characters: Option<u64>,
    cost_cents: Option<u64>,
}

impl CallView<'_> {
    /// Exactly `serde_json::to_vec(self)` (a property test holds them equal), written the fast
    /// way: this is the body of every admission and every end.
    pub fn to_json(&self) -> Vec<u8> {
        let mut o = JsonObject::with_capacity(CALL_JSON_BYTES);
        o.str("object", self.object);
        o.ascii("call_id", self.call_id.text().as_str().as_bytes());
        o.str("tenant_id", self.tenant_id);
        o.opt_str("line_id", self.line_id);
        o.str("direction", self.direction.as_str());
        o.str("status", self.status);
        o.bool("over_limit", self.over_limit);
        o.str("plan", self.plan);
        o.str("class", self.class);
        o.str("pool", self.pool);
        o.str("voice", self.voice.as_str());
        o.bool("fell_back", self.fell_back);
        o.opt_str("fallback_reason", self.fallback_reason);
        o.u64("waited_ms", self.waited_ms);
        o.opt_str("provider_call_id", self.provider_call_id);
        o.opt_str("to", self.to);
        o.opt_str("from", self.from);
        o.instant("started_at", self.started_at);
        o.instant("last_activity_at", self.last_activity_at);
        o.opt_instant("ended_at", self.ended_at);
        o.opt_str("outcome", self.outcome);
        o.opt_u64("duration_s", self.duration_s);
        o.opt_u64("characters", self.characters);
        o.opt_u64("cost_cents", self.cost_cents);
        o.finish()
    }

    pub fn response(&self, status: StatusCode) -> Response {
        json::response(status, self.to_json())
    }
}

/// Where a call is found: the `Location` of a new one.
const CALLS_PATH: &str = "/v1/calls/";

/// Room for a typical call's view (about 600 bytes), so that writing one allocates once.
const CALL_JSON_BYTES: usize = 768;

/// Written through its `Display` straight into the response, without a `String` of its own.
fn display<S: serde::Serializer>(value: &impl std::fmt::Display, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

pub fn call_view<'a>(call: &'a CallRecord, ended: Option<&'a EndedCall>) -> CallView<'a> {
    CallView {
        object: "call",
        call_id: call.id,
        tenant_id: &call.tenant_id,
        line_id: call.line_id.as_deref(),
        direction: call.direction,
        status: if ended.is_some() { "ended" } else { "active" },
        over_limit: call.over_limit,
        plan: &call.plan,
        class: &call.class,
        pool: &call.pool,
        voice: call.voice,
        fell_back: call.fallback_reason.is_some(),
        fallback_reason: call.fallback_reason.as_deref(),
        waited_ms: call.waited_ms,
        provider_call_id: call.provider_call_id.as_deref(),
        to: call.to.as_deref(),
        from: call.from.as_deref(),
        started_at: Rfc3339(call.started_at_ms),
        last_activity_at: Rfc3339(call.last_activity_at_ms),
        ended_at: ended.map(|e| Rfc3339(e.ended_at_ms)),
        outcome: ended.map(|e| e.outcome.as_str()),
        duration_s: ended.map(|e| e.duration_s),
        characters: ended.map(|e| e.characters),
        cost_cents: ended.map(|e| e.cost_cents),
    }
}

#[derive(Serialize)]
struct ListView<'a> {
    object: &'static str,
    data: Vec<CallView<'a>>,
    has_more: bool,
    next_starting_after: Option<String>,
}

/// The `Idempotency-Key` header, read without cloning the request's whole header map.
pub struct IdempotencyKey(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        idempotency_key(&parts.headers).map(IdempotencyKey)
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key =
        value.to_str().ok().filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_BYTES_MAX && k.bytes().all(|b| b.is_ascii_graphic()));
    match key {
        Some(key) => Ok(Some(key.to_owned())),
        None => Err(Problem::invalid("Idempotency-Key", format!("must be 1-{IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"))),
    }
}

fn parse_call_id(raw: &str) -> Result<CallId, Problem> {
    raw.parse().map_err(|_| Problem::not_found("call", raw))
}

/// A request `App` serves ahead of the router: the two of every call's life. The router costs
/// each its route match, its path parameters and a boxed handler future (about 5 % of the
/// server's instructions per admit+end pair); the handlers and their extraction are the same.
#[derive(Debug, PartialEq, Eq)]
pub enum Hot {
    /// `POST /v1/calls`.
    Create,
    /// `POST /v1/calls/{id}/end`, with the raw id.
    End(String),
}

impl Hot {
    pub fn of(request: &axum::extract::Request) -> Option<Hot> {
        if request.method() != axum::http::Method::POST {
            return None;
        }
        let path = request.uri().path();
        if path == "/v1/calls" {
            return Some(Hot::Create);
        }
        let id = path.strip_prefix("/v1/calls/")?.strip_suffix("/end")?;
        // One non-empty segment, as the router's `{id}`; one with percent-escapes is left to
        // the router, which decodes it.
        (!id.is_empty() && !id.contains(['/', '%'])).then(|| Hot::End(id.to_owned()))
    }

    /// Extracts as the router's handlers do, in their order (headers, then the body), and runs
    /// the same handler.
    pub async fn serve(self, state: AppStateRef, request: axum::extract::Request) -> Response {
        self.run(state, request).await.into_response()
    }

    async fn run(self, state: AppStateRef, request: axum::extract::Request) -> Result<Response, Problem> {
        let (parts, body) = request.into_parts();
        match self {
            Hot::Create => {
                let key = idempotency_key(&parts.headers)?;
                create(State(state), IdempotencyKey(key), JsonBody(json_body(&parts.headers, body).await?)).await
            }
            Hot::End(id) => end(State(state), Path(id), JsonBody(json_body(&parts.headers, body).await?)).await,
        }
    }
}

pub async fn create(
    State(state): State<AppStateRef>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody<CreateCall>,
) -> Result<Response, Problem> {
    body.validate()?;
    let system = state.system()?;
    let idempotency = key.map(|key| {
        let canonical = serde_json::to_vec(&body).expect("a request serialises");
        IdempotencyStamp { key, body_hash: fnv1a64(&canonical) }
    });
    let request = AdmitRequest {
        tenant_id: body.tenant_id,
        line_id: body.line_id,
        direction: body.direction,
        already_connected: body.already_connected,
        provider_call_id: body.provider_call_id,
        to: body.to,
        from: body.from,
        idempotency,
        voice: body.voice.unwrap_or(Voice::Standard),
        fallback: body.fallback.unwrap_or(true),
        wait_ms: body.wait_ms.unwrap_or(0),
        callback_id: None,
        campaign: None,
    };
    // A line that answers before connecting turns a caller it cannot take away busy.
    let answers_first = request.direction == Direction::Inbound
        && !request.already_connected
        && request.line_id.as_deref().and_then(|l| system.line_on_busy(l)) == Some(OnBusy::Callback);
    if answers_first && request.from.is_none() {
        return Err(Problem::invalid("from", "this line calls missed callers back, so an inbound call needs the caller's number"));
    }
    let kept = answers_first.then(|| request.clone());
    let admitted = match system.admit(request).await {
        Ok(admitted) => admitted,
        Err(error) => {
            if let Some(request) = &kept
                && let Some(missed) = system.turn_away_busy(request, &error).await
            {
                return super::callbacks::rejected_busy(missed);
            }
            return Err(admit_problem(error));
        }
    };
    let mut response = call_view(&admitted.call, None).response(StatusCode::CREATED);
    let location = [CALLS_PATH, admitted.call.id.text().as_str()].concat();
    let location = HeaderValue::try_from(location).expect("call ids are ASCII");
    response.headers_mut().insert(header::LOCATION, location);
    if admitted.replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

fn admit_problem(error: AdmitError) -> Problem {
    let code = error.code();
    match error {
        AdmitError::UnknownTenant(id) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, format!("no tenant with id {id}")).with_field("tenant_id")
        }
        AdmitError::UnknownLine(id) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, format!("no line with id {id}")).with_field("line_id")
        }
        AdmitError::LineNotOwned { line, .. } => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, format!("line {line} belongs to another tenant")).with_field("line_id")
        }
        AdmitError::Denied(denial) => {
            let (status, detail) = match denial.code {
                DenialCode::PlatformCapacityExceeded => {
                    (StatusCode::SERVICE_UNAVAILABLE, "the provider is rate-limiting this pool; try again in a moment".to_owned())
                }
                DenialCode::QueueFull => {
                    (StatusCode::TOO_MANY_REQUESTS, format!("{} already waiting, the most this class may", denial.current_active))
                }
                _ => (StatusCode::TOO_MANY_REQUESTS, format!("{} active of a limit of {}", denial.current_active, denial.limit)),
            };
            let mut problem = Problem::new(status, code, detail)
                .retry_after(denial.retry_after_s)
                .with("current_active", denial.current_active)
                .with("limit", denial.limit)
                .with("waited_ms", denial.waited_ms);
            if let Some(pool) = denial.pool {
                problem = problem.with("pool", pool);
            }
            problem
        }
        AdmitError::InsufficientCredits => Problem::new(
            StatusCode::PAYMENT_REQUIRED,
            code,
            "this prepaid tenant has no credits left; add credits with POST /v1/tenants/{id}/credits",
        )
        .with("current_active", 0)
        .with("limit", 0),
        AdmitError::PremiumNotAvailable { reason, requires_upgrade } => {
            Problem::new(StatusCode::FORBIDDEN, code, format!("premium voices are not available: {reason}"))
                .with_field("voice")
                .with("reason", reason)
                .with("requires_upgrade", requires_upgrade)
        }
        AdmitError::IdempotencyMismatch => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, "this Idempotency-Key was used with a different request body")
                .with_field("Idempotency-Key")
        }
        AdmitError::IdempotencyInFlight => {
            Problem::new(StatusCode::CONFLICT, code, "a request with this Idempotency-Key is still being processed").retry_after(1)
        }
        AdmitError::IdempotencyFull => Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, error.to_string()).retry_after(60),
        AdmitError::LiveCallsMax(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, error.to_string()).retry_after(5),
        AdmitError::Overloaded => Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, error.to_string()).retry_after(1),
        AdmitError::Unavailable(why) => Problem::unavailable(why),
    }
}

pub fn system_problem(error: SystemError, what: &str, id: &str) -> Problem {
    match error {
        SystemError::NotFound => Problem::not_found(what, id),
        SystemError::CallEnded(ended) => Problem::new(StatusCode::CONFLICT, "CALL_ENDED", "the call has already ended")
            .with("call", serde_json::to_value(call_view(&ended.call, Some(&ended))).expect("a call serialises")),
        SystemError::Unavailable(why) => Problem::unavailable(why),
    }
}

pub async fn end(
    State(state): State<AppStateRef>,
    Path(raw_id): Path<String>,
    JsonBody(body): JsonBody<EndCall>,
) -> Result<Response, Problem> {
    if let Some(outcome) = &body.outcome {
        let valid = (1..=32).contains(&outcome.len()) && outcome.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(Problem::invalid("outcome", "must be 1-32 characters of a-z, 0-9 and '_' (e.g. completed, no_answer)"));
        }
    }
    if let Some(duration_s) = body.duration_s {
        validate::range("duration_s", duration_s, 0, DURATION_S_MAX)?;
    }
    if let Some(characters) = body.characters {
        validate::range("characters", characters, 0, CHARACTERS_MAX)?;
    }
    let id = parse_call_id(&raw_id)?;
    let system = state.system()?;
    let end =
        EndReport { outcome: body.outcome.unwrap_or_else(|| "completed".into()), duration_s: body.duration_s, characters: body.characters };
    let ended = system.end_call(id, end).await.map_err(|e| system_problem(e, "call", &raw_id))?;
    Ok(call_view(&ended.call, Some(&ended)).response(StatusCode::OK))
}

/// `POST /v1/calls/{id}/provider-rejected`: the provider answered 429 when the platform tried
/// to place this admitted call. Ends it (outcome `provider_rejected`), cools its pool down.
pub async fn provider_rejected(
    State(state): State<AppStateRef>,
    Path(raw_id): Path<String>,
    JsonBody(body): JsonBody<ProviderRejected>,
) -> Result<Response, Problem> {
    if let Some(retry_after_s) = body.retry_after_s {
        validate::range("retry_after_s", retry_after_s, 1, RETRY_AFTER_S_MAX)?;
    }
    let id = parse_call_id(&raw_id)?;
    let system = state.system()?;
    let cooldown_ms = body.retry_after_s.map_or(system.settings().arbitration.provider_cooldown_ms_default, |s| s * 1000);
    let ended = system.provider_rejected(id, cooldown_ms).await.map_err(|e| system_problem(e, "call", &raw_id))?;
    Ok(call_view(&ended.call, Some(&ended)).response(StatusCode::OK))
}

pub async fn heartbeat(State(state): State<AppStateRef>, Path(raw_id): Path<String>) -> Result<Response, Problem> {
    let id = parse_call_id(&raw_id)?;
    let record = state.system()?.heartbeat(id).await.map_err(|e| system_problem(e, "call", &raw_id))?;
    Ok(call_view(&record, None).response(StatusCode::OK))
}

pub async fn show(State(state): State<AppStateRef>, Path(raw_id): Path<String>) -> Result<Response, Problem> {
    let id = parse_call_id(&raw_id)?;
    let call = state.system()?.get_call(id).await.map_err(|e| system_problem(e, "call", &raw_id))?;
    let body = match &call {
        CallState::Live(record) => call_view(record, None),
        CallState::Ended(ended) => call_view(&ended.call, Some(ended)),
    };
    Ok(body.response(StatusCode::OK))
}

pub async fn list(State(state): State<AppStateRef>, QueryParams(query): QueryParams<ListCalls>) -> Result<Response, Problem> {
    let limit = query.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    validate::range("limit", limit, 1, LIST_LIMIT_MAX).map_err(|p| Problem {
        status: StatusCode::BAD_REQUEST,
        code: "INVALID_QUERY",
        ..p
    })?;
    let after = match &query.starting_after {
        Some(raw) => Some(raw.parse::<CallId>().map_err(|_| {
            Problem::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", "starting_after must be a call id").with_field("starting_after")
        })?),
        None => None,
    };
    let system = state.system()?;
    let mut calls = system.list_calls(query.tenant_id.as_deref(), query.line_id.as_deref(), after, limit + 1);
    let has_more = calls.len() > limit;
    calls.truncate(limit);
    let next = if has_more { calls.last().map(|c| c.id.to_string()) } else { None };
    let data = calls.iter().map(|c| call_view(c, None)).collect();
    Ok(axum::Json(ListView { object: "list", data, has_more, next_starting_after: next }).into_response())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Any string, with the characters JSON must escape (quotes, backslashes, controls) and
    /// some that it must not (non-ASCII) well represented.
    fn text() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z0-9_+\"\\\\\u{0}-\u{1f}\u{7f}é☎ ]{0,12}").expect("a valid pattern")
    }

    fn opt<T: std::fmt::Debug>(value: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
        proptest::option::of(value)
    }

    proptest! {
        /// The fast writer is byte for byte what serde_json makes of the same view.
        #[test]
        fn a_calls_json_is_serde_jsons(
            id in any::<u64>(),
            strings in proptest::collection::vec(text(), 5),
            optional in proptest::collection::vec(opt(text()), 5),
            flags in any::<(bool, bool, bool, bool)>(),
            times in (any::<u64>(), any::<u64>(), opt(0..400_000_000_000_000u64)),
            numbers in (any::<u64>(), opt(any::<u64>()), opt(any::<u64>()), opt(any::<u64>())),
        ) {
            let view = CallView {
                object: "call",
                call_id: CallId(id),
                tenant_id: &strings[0],
                line_id: optional[0].as_deref(),
                direction: if flags.0 { Direction::Inbound } else { Direction::Outbound },
                status: if flags.1 { "ended" } else { "active" },
                over_limit: flags.2,
                plan: &strings[1],
                class: &strings[2],
                pool: &strings[3],
                voice: if flags.3 { Voice::Premium } else { Voice::Standard },
                fell_back: optional[1].is_some(),
                fallback_reason: optional[1].as_deref(),
                waited_ms: numbers.0,
                provider_call_id: optional[2].as_deref(),
                to: optional[3].as_deref(),
                from: optional[4].as_deref(),
                started_at: Rfc3339(times.0 % 400_000_000_000_000),
                last_activity_at: Rfc3339(times.1 % 400_000_000_000_000),
                ended_at: times.2.map(Rfc3339),
                outcome: Some(strings[4].as_str()).filter(|_| flags.1),
                duration_s: numbers.1,
                characters: numbers.2,
                cost_cents: numbers.3,
            };
            let fast = view.to_json();
            let serde = serde_json::to_vec(&view).unwrap();
            prop_assert_eq!(fast, serde);
        }
    }
}
