//! RFC 9457 problem details: the one error type every handler returns.
//!
//! A problem names a stable `code`, the `field` at fault when there is one, and never leaks
//! internals. 4xx means the request was wrong and changed nothing; 5xx is reserved for faults
//! on our side, and 503 always carries `Retry-After`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The characters of an unknown id a 404 repeats in its detail.
pub const ECHOED_ID_CHARS_MAX: usize = 100;

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub field: Option<String>,
    pub retry_after_s: Option<u32>,
    pub extra: Map<String, Value>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem { status, code, detail: detail.into(), field: None, retry_after_s: None, extra: Map::new() }
    }

    /// 422: a well-formed request whose `field` has a value we cannot accept.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_FIELD", detail).with_field(field)
    }

    /// 404 for `what` named `id`. An id longer than `ECHOED_ID_CHARS_MAX` is shown cut, so a
    /// 60 KB path does not come back as a 60 KB answer.
    pub fn not_found(what: &str, id: &str) -> Problem {
        let shown = match id.char_indices().nth(ECHOED_ID_CHARS_MAX) {
            Some((cut, _)) => format!("{}… ({} bytes)", &id[..cut], id.len()),
            None => id.to_owned(),
        };
        Problem::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no {what} with id {shown}"))
    }

    /// 503: a transient condition on our side; the client should retry.
    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", detail).retry_after(1)
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Problem {
        self.field = Some(field.into());
        self
    }

    pub fn retry_after(mut self, seconds: u32) -> Problem {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Problem {
        self.extra.insert(key.to_owned(), value.into());
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("urn:switchboard:problem:{}", self.code.to_ascii_lowercase().replace('_', "-")),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        let object = body.as_object_mut().expect("a JSON object");
        if let Some(field) = self.field {
            object.insert("field".into(), field.into());
        }
        if let Some(seconds) = self.retry_after_s {
            object.insert("retry_after_s".into(), seconds.into());
        }
        object.extend(self.extra);
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_404_repeats_a_long_id_cut() {
        assert_eq!(Problem::not_found("call", "call_7").detail, "no call with id call_7");
        let long = "é".repeat(30_000);
        let detail = Problem::not_found("tenant", &long).detail;
        assert!(detail.len() < 300, "{} bytes", detail.len());
        assert!(detail.starts_with(&format!("no tenant with id {}…", "é".repeat(ECHOED_ID_CHARS_MAX))), "{detail}");
        assert!(detail.ends_with("(60000 bytes)"), "{detail}");
    }
}
