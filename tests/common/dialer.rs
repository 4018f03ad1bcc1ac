//! A real HTTP fake dialer on loopback: it records every dial request and answers each from a
//! script, then from a fallback once the script is used up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::Value;
use tokio::time::Instant;

use super::Rng;

/// Every wait for dial requests polls, at most this long.
use super::{PATIENCE, POLL};

/// How the fake dialer answers one dial request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 202: the platform is placing the call.
    Accept,
    /// 429 with `Retry-After` in seconds: the provider is rate-limiting.
    RateLimited(u64),
    /// Any other status.
    Status(u16),
    /// Nothing for this long (longer than the dialer's timeout), then 200 that nobody reads.
    Hang(Duration),
    /// Nothing for this long (shorter than the dialer's timeout), then 429 with `Retry-After: 0`.
    LateRateLimited(Duration),
}

/// How the fake dialer answers once its script is used up.
pub enum Fallback {
    Always(Answer),
    /// Mostly 202; some 500s and some 429s with `Retry-After: 0`, drawn from a seeded generator.
    Random(Rng),
}

/// One dial request, as received.
#[derive(Clone, Debug)]
pub struct Dial {
    pub at: Instant,
    pub body: Value,
    pub answer: Answer,
}

impl Dial {
    /// The number dialled.
    pub fn to(&self) -> &str {
        self.body["to"].as_str().expect("to")
    }

    /// The id of the call the dial is for.
    pub fn call_id(&self) -> String {
        self.body["call_id"].as_str().expect("call_id").to_owned()
    }
}

struct DialerState {
    script: VecDeque<Answer>,
    fallback: Fallback,
    dials: Vec<Dial>,
    /// More requests than `DIALS_MAX` arrived (a runaway redial loop): the tests fail.
    overflowed: bool,
}

/// The fake dialer keeps at most this many requests.
const DIALS_MAX: usize = 10_000;

/// An HTTP server on loopback standing in for the platform endpoint that places calls. Once
/// its script is used up it answers from its fallback: by default it accepts every request.
pub struct FakeDialer {
    pub url: String,
    state: Arc<Mutex<DialerState>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeDialer {
    /// Binds `127.0.0.1:0` and serves `POST /dial` until dropped.
    pub async fn start() -> FakeDialer {
        let state = Arc::new(Mutex::new(DialerState {
            script: VecDeque::new(),
            fallback: Fallback::Always(Answer::Accept),
            dials: Vec::new(),
            overflowed: false,
        }));
        let app = axum::Router::new().route("/dial", axum::routing::post(fake_dial)).with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake dialer");
        let url = format!("http://{}/dial", listener.local_addr().expect("the fake dialer's address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeDialer { url, state, task }
    }

    /// The next requests are answered like this, in order.
    pub fn script(&self, answers: &[Answer]) {
        self.state.lock().expect("dialer state").script.extend(answers.iter().copied());
    }

    /// Requests after the script is used up are answered like this.
    pub fn fallback(&self, fallback: Fallback) {
        self.state.lock().expect("dialer state").fallback = fallback;
    }

    /// Every dial request so far, in arrival order.
    pub fn dials(&self) -> Vec<Dial> {
        let state = self.state.lock().expect("dialer state");
        assert!(!state.overflowed, "the fake dialer got more than {DIALS_MAX} requests");
        state.dials.clone()
    }

    /// Waits (bounded) until at least `count` dial requests have arrived; returns all of them.
    pub async fn wait_dials(&self, count: usize) -> Vec<Dial> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let dials = self.dials();
            if dials.len() >= count {
                return dials;
            }
            assert!(Instant::now() < deadline, "{} dial requests after {PATIENCE:?}, expected {count}: {dials:?}", dials.len());
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for FakeDialer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_dial(State(state): State<Arc<Mutex<DialerState>>>, body: Bytes) -> axum::response::Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer = {
        let mut guard = state.lock().expect("dialer state");
        let state = &mut *guard;
        let answer = match state.script.pop_front() {
            Some(answer) => answer,
            None => match &mut state.fallback {
                Fallback::Always(answer) => *answer,
                Fallback::Random(rng) => match rng.below(100) {
                    0..80 => Answer::Accept,
                    80..90 => Answer::Status(500),
                    _ => Answer::RateLimited(0),
                },
            },
        };
        if state.dials.len() < DIALS_MAX {
            state.dials.push(Dial { at: Instant::now(), body, answer });
        } else {
            state.overflowed = true;
        }
        answer
    };
    match answer {
        Answer::Accept => (StatusCode::ACCEPTED, "{\"accepted\":true}").into_response(),
        Answer::RateLimited(seconds) => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", seconds.to_string())]).into_response(),
        Answer::Status(status) => StatusCode::from_u16(status).expect("a status").into_response(),
        Answer::Hang(duration) => {
            tokio::time::sleep(duration).await;
            StatusCode::OK.into_response()
        }
        Answer::LateRateLimited(duration) => {
            tokio::time::sleep(duration).await;
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "0")]).into_response()
        }
    }
}
