//! The HTTP facade: one `app(state) -> App` (a gate in front of the router), problem+json for
//! every error, bearer auth on `/v1`, and load shedding in front of everything.
//!
//! The router answers from the moment the socket is bound: `/healthz` at once, `/readyz` and
//! `/v1` with 503 until the journal has been replayed and the actors are up.

pub mod callbacks;
pub mod calls;
pub mod campaigns;
pub mod credits;
pub mod extract;
pub mod features;
pub mod json;
pub mod platform;
pub mod problem;
pub mod simulations;
pub mod tenants;
pub mod validate;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::routing::{get, patch, post, put};
use serde_json::json;
use switchboard_actors::system::System;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::Service;

use crate::config::Config;
use crate::metrics::Metrics;
use problem::Problem;

pub struct AppState {
    system: OnceLock<Arc<System>>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    admin_token: String,
    in_flight: Arc<Semaphore>,
    /// `/v1/simulations`: its bounds, run slots and report store (opened at boot).
    pub simulations: simulations::Simulations,
}

impl AppState {
    pub fn new(config: Config, metrics: Arc<Metrics>, admin_token: String) -> Arc<AppState> {
        let in_flight = Arc::new(Semaphore::new(config.http.in_flight_max));
        let simulations = simulations::Simulations::new(config.simulations.clone());
        Arc::new(AppState { system: OnceLock::new(), config, metrics, admin_token, in_flight, simulations })
    }

    /// Publishes the booted system: from now on the service is ready.
    pub fn set_system(&self, system: Arc<System>) {
        assert!(self.system.set(system).is_ok(), "the system is published once");
    }

    pub fn system(&self) -> Result<&Arc<System>, Problem> {
        match self.system.get() {
            Some(system) if system.healthy() => Ok(system),
            Some(_) => Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "JOURNAL_FAILED",
                "the journal cannot write; the service refuses changes until restarted",
            )
            .retry_after(30)),
            None => Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY", "the journal is being replayed").retry_after(1)),
        }
    }
}

pub type AppStateRef = Arc<AppState>;

/// The service the server runs: the gate, then the router.
///
/// The gate wraps the router once, rather than each route as `Router::layer` does: a layer on
/// the router boxes every route's service and every request's future once more, and
/// `from_fn` boxes and clones again. Every admission and end is a request.
#[derive(Clone)]
pub struct App {
    state: AppStateRef,
    router: DefaultBodyLimitService<Router>,
}

type DefaultBodyLimitService<S> = <DefaultBodyLimit as tower::Layer<S>>::Service;

pub fn app(state: AppStateRef) -> App {
    let router = tower::Layer::layer(&DefaultBodyLimit::max(extract::BODY_BYTES_MAX), routes(Arc::clone(&state)));
    App { state, router }
}

fn routes(state: AppStateRef) -> Router {
    // Flat, not `nest`ed: a nested router adds a layer of routing, a path rewrite and a boxed
    // service clone to every request, and every admission and end is one.
    Router::new()
        .route("/v1/calls", post(calls::create).get(calls::list))
        .route("/v1/calls/{id}", get(calls::show))
        .route("/v1/calls/{id}/end", post(calls::end))
        .route("/v1/calls/{id}/heartbeat", post(calls::heartbeat))
        .route("/v1/calls/{id}/provider-rejected", post(calls::provider_rejected))
        .route("/v1/tenants", post(tenants::create))
        .route("/v1/tenants/{id}", get(tenants::show).patch(tenants::update))
        .route("/v1/tenants/{id}/flags/{name}", put(features::put_tenant_flag).delete(features::delete_tenant_flag))
        .route("/v1/tenants/{id}/addons/{addon_type}", put(features::put_addon))
        .route("/v1/tenants/{id}/features/{name}", get(features::feature))
        .route("/v1/tenants/{id}/usage", get(features::usage))
        .route("/v1/tenants/{id}/credits", get(credits::show).post(credits::adjust))
        .route("/v1/lines", post(tenants::create_line))
        .route("/v1/lines/{id}", get(tenants::show_line))
        .route("/v1/lines/{id}/missed-calls", post(callbacks::report))
        .route("/v1/campaigns", post(campaigns::create))
        .route("/v1/campaigns/{id}", get(campaigns::show))
        .route("/v1/campaigns/{id}/{action}", post(campaigns::control))
        .route("/v1/callbacks", get(callbacks::list))
        .route("/v1/callbacks/stats", get(callbacks::stats))
        .route("/v1/callbacks/{id}", get(callbacks::show).delete(callbacks::cancel))
        .route("/v1/callbacks/{id}/retry", post(callbacks::retry))
        .route("/v1/flags", get(features::list_flags))
        .route("/v1/flags/{name}", put(features::put_flag))
        .route("/v1/platform", get(platform::show).patch(platform::update))
        .route("/v1/platform/pools/{name}", patch(platform::update_pool))
        .route("/v1/simulations", post(simulations::create).get(simulations::list))
        .route("/v1/simulations/{id}", get(simulations::show))
        .route("/v1/simulations/{id}/chart.svg", get(simulations::chart))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") })
        .method_not_allowed_fallback(|| async {
            Problem::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "this route does not take that method")
        })
        .with_state(state)
}

async fn readyz(State(state): State<AppStateRef>) -> Response {
    match state.system() {
        Ok(_) => axum::Json(json!({"status": "ready"})).into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn metrics_text(State(state): State<AppStateRef>) -> Response {
    let mut response = state.metrics.encode().into_response();
    let content_type = HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    response
}

impl tower::Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = GateFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, request: Request) -> GateFuture {
        match gate(&self.state, &request) {
            Ok(permit) => match calls::Hot::of(&request) {
                Some(hot) => GateFuture::Hot { future: Box::pin(hot.serve(Arc::clone(&self.state), request)), _permit: permit },
                None => GateFuture::Routed { future: self.router.call(request), _permit: permit },
            },
            Err(refused) => GateFuture::Refused(Some(refused)),
        }
    }
}

/// In front of every request:
/// - refuses work past `http.in_flight_max` with 503 at once instead of queueing it without
///   bound (the permit is held until the response is ready);
/// - requires the admin bearer token on `/v1` (any path under it, so unknown routes are not
///   revealed) and on `/metrics` when `metrics_require_auth` is set.
// A refusal is rare and answered at once: not worth a box on every request.
#[allow(clippy::result_large_err)]
fn gate(state: &AppState, request: &Request) -> Result<OwnedSemaphorePermit, Response> {
    let Ok(permit) = Arc::clone(&state.in_flight).try_acquire_owned() else {
        return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED", "too many requests in flight")
            .retry_after(1)
            .into_response());
    };
    let path = request.uri().path();
    let needs_token = path == "/v1" || path.starts_with("/v1/") || (path == "/metrics" && state.config.metrics_require_auth);
    if needs_token && let Err(problem) = check_token(state, request.headers()) {
        return Err(problem.into_response());
    }
    Ok(permit)
}

/// A request the gate refused, or the router's answer with the in-flight permit held. Not
/// boxed: the router's future is every request's, and boxing it is what the gate saves.
#[allow(clippy::large_enum_variant)]
pub enum GateFuture {
    Refused(Option<Response>),
    /// An admission or an end, served without the router (`calls::Hot`).
    Hot {
        future: Pin<Box<dyn Future<Output = Response> + Send>>,
        _permit: OwnedSemaphorePermit,
    },
    Routed {
        future: RouteFuture<Infallible>,
        _permit: OwnedSemaphorePermit,
    },
}

impl Future for GateFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is `Unpin` (the router's future boxes what it runs).
        match self.get_mut() {
            GateFuture::Refused(refused) => Poll::Ready(Ok(refused.take().expect("a refusal is polled once"))),
            GateFuture::Hot { future, .. } => future.as_mut().poll(cx).map(Ok),
            GateFuture::Routed { future, .. } => Pin::new(future).poll(cx),
        }
    }
}

fn check_token(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), Problem> {
    // RFC 9110 §11.1: the scheme is case-insensitive ("bearer" and "Bearer" alike).
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) => Ok(()),
        Some(_) => Err(Problem::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "the bearer token is not valid").with_field("authorization")),
        None => {
            Err(Problem::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "send Authorization: Bearer <admin token>")
                .with_field("authorization"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;

    /// Before the journal is replayed the router already answers: alive, not ready, and `/v1`
    /// refuses with 503 rather than hanging or half-working.
    #[tokio::test]
    async fn until_the_system_is_published_only_liveness_answers_200() {
        let state = AppState::new(Config::default(), Arc::new(Metrics::default()), "a-token-for-this-test".into());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, axum::ServiceExt::into_make_service(app(state))).into_future());
        let mut client = Client::connect(address, Some("a-token-for-this-test".into())).await.unwrap();
        assert_eq!(client.get("/healthz").await.unwrap().status, 200);
        let ready = client.get("/readyz").await.unwrap();
        assert_eq!((ready.status, ready.json()["code"].as_str()), (503, Some("NOT_READY")));
        assert_eq!(ready.header("retry-after"), Some("1"));
        let tenants = client.get("/v1/tenants/acme").await.unwrap();
        assert_eq!((tenants.status, tenants.header("content-type")), (503, Some("application/problem+json")));
        server.abort();
    }

    /// Past `http.in_flight_max` requests whose responses are not ready, the next is refused
    /// at once with 503; a finished request gives its place back.
    #[tokio::test]
    async fn a_request_past_the_in_flight_bound_is_refused_until_one_finishes() {
        let mut config = Config::default();
        config.http.in_flight_max = 1;
        let mut app = app(AppState::new(config, Arc::new(Metrics::default()), "a-token-for-this-test".into()));
        let healthz = || Request::get("/healthz").body(axum::body::Body::empty()).unwrap();
        let first = app.call(healthz());
        let refused = app.call(healthz()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        let body = axum::body::to_bytes(refused.into_body(), 4096).await.unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["code"], "OVERLOADED");
        assert_eq!(first.await.unwrap().status(), StatusCode::OK);
        assert_eq!(app.call(healthz()).await.unwrap().status(), StatusCode::OK, "the finished request's place is free");
    }

    /// `App` serves admissions and ends without the router: every answer, refusals included,
    /// must be the router's on the wire (before the system is up, so a valid request meets the
    /// same 503 on both and nothing changes state).
    #[tokio::test]
    async fn the_hot_routes_answer_exactly_as_the_router_does() {
        async fn serve<S>(service: S) -> std::net::SocketAddr
        where
            S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
            S::Future: Send,
        {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            tokio::spawn(axum::serve(listener, axum::ServiceExt::into_make_service(service)).into_future());
            address
        }
        let token = "a-token-for-this-test";
        let state = AppState::new(Config::default(), Arc::new(Metrics::default()), token.into());
        let router = tower::Layer::layer(&DefaultBodyLimit::max(extract::BODY_BYTES_MAX), routes(Arc::clone(&state)));
        let mut hot = Client::connect(serve(app(state)).await, Some(token.into())).await.unwrap();
        let mut routed = Client::connect(serve(router).await, Some(token.into())).await.unwrap();
        let json = ("content-type", "application/json");
        let large = format!(r#"{{"tenant_id":"{}","direction":"outbound"}}"#, "t".repeat(extract::BODY_BYTES_MAX));
        type Headers<'a> = Vec<(&'a str, &'a str)>;
        let cases: Vec<(&str, Headers, String)> = vec![
            ("/v1/calls", vec![json], r#"{"tenant_id":"acme","direction":"outbound"}"#.into()),
            ("/v1/calls", vec![json, ("idempotency-key", "key-1")], r#"{"tenant_id":"acme","direction":"outbound"}"#.into()),
            ("/v1/calls", vec![json, ("idempotency-key", "bad key")], r#"{"tenant_id":"acme","direction":"sideways"}"#.into()),
            ("/v1/calls", vec![json], r#"{"tenant_id":"acme","direction":"sideways"}"#.into()),
            ("/v1/calls", vec![json], r#"{"tenant_id":"acme","direction":"outbound","colour":1}"#.into()),
            ("/v1/calls", vec![json], r#"{"tenant_id":"#.into()),
            ("/v1/calls", vec![("content-type", "text/plain")], r#"{"tenant_id":"acme","direction":"outbound"}"#.into()),
            ("/v1/calls", vec![], String::new()),
            ("/v1/calls", vec![json], large),
            ("/v1/calls/call_7/end", vec![], String::new()),
            ("/v1/calls/call_7/end", vec![json], r#"{"outcome":"Done!"}"#.into()),
            ("/v1/calls/call_7/end", vec![json], r#"{"duration_s":-1}"#.into()),
            ("/v1/calls/not-a-call/end", vec![json], r#"{"outcome":"completed"}"#.into()),
            ("/v1/calls/call%5F7/end", vec![], String::new()),
        ];
        for (path, headers, body) in cases {
            let mut answers = Vec::new();
            for client in [&mut hot, &mut routed] {
                let mut response = client.send_raw("POST", path, body.clone().into_bytes(), &headers).await.unwrap();
                response.headers.retain(|(name, _)| name != "date");
                let text = response.text();
                answers.push((response.status, response.headers, text));
            }
            assert!(answers[0].0 >= 400, "{path}: {:?}", answers[0]);
            assert_eq!(answers[0], answers[1], "{path} {headers:?}");
        }
    }

    #[test]
    fn the_hot_routes_are_the_posts_that_start_and_end_a_call() {
        let hot = |method: &str, path: &str| {
            calls::Hot::of(&Request::builder().method(method).uri(path).body(axum::body::Body::empty()).unwrap())
        };
        assert_eq!(hot("POST", "/v1/calls"), Some(calls::Hot::Create));
        assert_eq!(hot("POST", "/v1/calls?x=1"), Some(calls::Hot::Create));
        assert_eq!(hot("POST", "/v1/calls/call_7/end"), Some(calls::Hot::End("call_7".into())));
        for (method, path) in [
            ("GET", "/v1/calls"),
            ("PUT", "/v1/calls/call_7/end"),
            ("POST", "/v1/calls/"),
            ("POST", "/v1/calls//end"),
            ("POST", "/v1/calls/a/b/end"),
            ("POST", "/v1/calls/call%5F7/end"),
            ("POST", "/v1/calls/call_7/heartbeat"),
            ("POST", "/v1/calls/call_7/end/"),
        ] {
            assert_eq!(hot(method, path), None, "{method} {path}");
        }
    }

    #[test]
    fn token_comparison_is_exact() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
