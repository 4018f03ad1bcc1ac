//! A JSON object writer for the responses on the admission path.
//!
//! Every admission and every end answers with a call's view. Through `axum::Json` (serde_json
//! into a growing `BytesMut`) it was a fifth of the server's instructions: each of its two
//! dozen keys went through the string escaper, each small write through the generic writer.
//! This writes the same bytes into one buffer sized up front, keys as the constants they are,
//! and escapes only values that need it (through serde_json, so escaping is serde_json's own).
//! Whoever writes a type with it holds it equal to `serde_json::to_vec` in a test.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use super::validate::Rfc3339;

/// Builds one JSON object, keys in the order they are written.
pub struct JsonObject {
    out: Vec<u8>,
    empty: bool,
}

impl JsonObject {
    /// `capacity`: the usual size of the object, so that writing it allocates once.
    pub fn with_capacity(capacity: usize) -> JsonObject {
        let mut out = Vec::with_capacity(capacity);
        out.push(b'{');
        JsonObject { out, empty: true }
    }

    /// Keys are constants in the code: plain ASCII that needs no escaping. Every writer is
    /// inlined into its call site, where the key's length is a constant: each key's copy is
    /// then a few moves rather than a call to `memcpy` (out of line, each field cost about 90
    /// instructions).
    #[inline(always)]
    fn key(&mut self, key: &'static str) {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{key}");
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    #[inline(always)]
    fn string(&mut self, value: &str) {
        if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            self.out.push(b'"');
            self.out.extend_from_slice(value.as_bytes());
            self.out.push(b'"');
        } else {
            serde_json::to_writer(&mut self.out, value).expect("writing to a Vec cannot fail");
        }
    }

    #[inline(always)]
    pub fn str(&mut self, key: &'static str, value: &str) {
        self.key(key);
        self.string(value);
    }

    #[inline(always)]
    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) {
        match value {
            Some(value) => self.str(key, value),
            None => self.null(key),
        }
    }

    /// A value that is shown as a string and never needs escaping (an id, an instant).
    #[inline(always)]
    pub fn plain(&mut self, key: &'static str, value: impl std::fmt::Display) {
        use std::io::Write;
        self.key(key);
        self.out.push(b'"');
        write!(self.out, "{value}").expect("writing to a Vec cannot fail");
        self.out.push(b'"');
    }

    /// A string of ASCII bytes that need no escaping, already formatted.
    #[inline(always)]
    pub fn ascii(&mut self, key: &'static str, value: &[u8]) {
        debug_assert!(value.iter().all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\'));
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(value);
        self.out.push(b'"');
    }

    #[inline(always)]
    pub fn instant(&mut self, key: &'static str, at: Rfc3339) {
        match at.bytes() {
            Some(bytes) => self.ascii(key, &bytes),
            None => self.plain(key, at),
        }
    }

    #[inline(always)]
    pub fn opt_instant(&mut self, key: &'static str, at: Option<Rfc3339>) {
        match at {
            Some(at) => self.instant(key, at),
            None => self.null(key),
        }
    }

    /// A number, formatted by serde_json (itoa).
    #[inline(always)]
    pub fn u64(&mut self, key: &'static str, value: u64) {
        self.serde(key, &value);
    }

    #[inline(always)]
    pub fn opt_u64(&mut self, key: &'static str, value: Option<u64>) {
        match value {
            Some(value) => self.u64(key, value),
            None => self.null(key),
        }
    }

    #[inline(always)]
    pub fn bool(&mut self, key: &'static str, value: bool) {
        self.key(key);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    #[inline(always)]
    pub fn null(&mut self, key: &'static str) {
        self.key(key);
        self.out.extend_from_slice(b"null");
    }

    /// Anything else (an enum's name, say) as serde writes it.
    #[inline(always)]
    pub fn serde(&mut self, key: &'static str, value: &impl Serialize) {
        self.key(key);
        serde_json::to_writer(&mut self.out, value).expect("a value serialises");
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }
}

/// A response with a JSON body, as `axum::Json` would make it.
pub fn response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_serde_json_writes() {
        let mut object = JsonObject::with_capacity(8);
        object.str("plain", "acme");
        object.str("escaped", "a \"quoted\"\\ line\n\u{1}é");
        object.opt_str("absent", None);
        object.u64("zero", 0);
        object.u64("max", u64::MAX);
        object.opt_u64("some", Some(42));
        object.bool("yes", true);
        object.bool("no", false);
        object.plain("shown", 7);
        object.ascii("ascii", b"2026-11-18T11:06:40.123Z");
        object.serde("list", &[1, 2]);
        let expected = serde_json::json!({
            "plain": "acme", "escaped": "a \"quoted\"\\ line\n\u{1}é", "absent": null, "zero": 0, "max": u64::MAX,
            "some": 42, "yes": true, "no": false, "shown": "7", "ascii": "2026-11-18T11:06:40.123Z", "list": [1, 2],
        });
        let written: serde_json::Value = serde_json::from_slice(&object.finish()).unwrap();
        assert_eq!(written, expected);
        assert_eq!(JsonObject::with_capacity(0).finish(), b"{}");
    }
}
