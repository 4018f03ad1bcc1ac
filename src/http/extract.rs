//! Strict request extraction: JSON bodies that name the field at fault, bounded sizes, and
//! path and query parameters that fail as problems rather than as plain-text rejections.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::problem::Problem;

/// Request bodies larger than this are refused with 413 before they are parsed.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// A JSON body: `application/json`, at most `BODY_BYTES_MAX` (enforced here, not by the
/// router's `DefaultBodyLimit`, so the routes `App` serves without the router read bodies the
/// same way), no unknown fields (the target types say `deny_unknown_fields`).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, _: &S) -> Result<Self, Problem> {
        let (parts, body) = request.into_parts();
        json_body(&parts.headers, body).await.map(JsonBody)
    }
}

/// A request's body as `JsonBody` reads it, for the routes `App` serves ahead of the router.
pub async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, Problem> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let is_json = essence.eq_ignore_ascii_case("application/json") || essence.to_ascii_lowercase().ends_with("+json");
    let bytes = match Limited::new(body, BODY_BYTES_MAX).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BODY_TOO_LARGE",
                format!("request bodies are limited to {BODY_BYTES_MAX} bytes"),
            ));
        }
        Err(error) => {
            return Err(Problem::new(StatusCode::BAD_REQUEST, "BODY_UNREADABLE", format!("Failed to buffer the request body: {error}")));
        }
    };
    // Webhooks often end a call with no body at all: that means "no fields".
    if bytes.is_empty() {
        return parse_json(b"{}");
    }
    if !is_json {
        return Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE", "send the body as application/json")
            .with_field("content-type"));
    }
    parse_json(&bytes)
}

/// A nested object read only from a JSON object: serde's derive also reads a struct from an
/// array, field by field in order (`"window": ["09:00", "17:00"]`).
#[derive(Debug)]
pub struct Obj<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = Obj<T>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// For a PATCH field that can be cleared (`#[serde(default, deserialize_with = "nullable")]`):
/// absent is `None`, `null` is `Some(None)`, a value is `Some(Some(_))`.
pub fn nullable<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(deserializer: D) -> Result<Option<Option<T>>, D::Error> {
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// For an optional field that cannot be cleared (`#[serde(default, deserialize_with =
/// "not_null")]`): absent is `None`, a value is `Some`, and `null` is refused naming the
/// field, where a plain `Option` would take it for absent and answer 200 for nothing done.
pub fn not_null<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// Parses JSON, reporting the path of the field that failed (`tenant_id`, `contacts[2].phone`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // Every body is an object. serde reads a struct from an array too, field by field in
    // order (`["acme", null, "outbound"]` would admit a call): refuse anything else first.
    let first = bytes.iter().find(|b| !b" \t\r\n".contains(b));
    if first.is_some_and(|b| *b != b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_FIELD",
            "the body must be a JSON object, not an array or a bare value",
        ));
    }
    // A valid body (nearly every one) is parsed without tracking the path; only a body that
    // fails is parsed again, with the tracking, to name the field at fault.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let value = result.map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        // serde_json reports a well-formed value of the wrong kind for an enum (`7`, `null`) as
        // a syntax error; only bytes that are not JSON at all are malformed.
        let well_formed = serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
        if (inner.is_syntax() || inner.is_eof()) && !well_formed {
            return Problem::new(StatusCode::BAD_REQUEST, "MALFORMED_JSON", format!("the body is not valid JSON: {inner}"));
        }
        let field = if path == "." { unknown_field_name(&inner.to_string()) } else { Some(path) };
        let problem = Problem::invalid("", strip_position(&inner.to_string()));
        Problem { field, ..problem }
    })?;
    deserializer.end().map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "MALFORMED_JSON", format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// serde names an unknown or missing field only in its message ("unknown field `foo`, …").
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `").or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next().map(str::to_owned)
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// Query parameters into a `deny_unknown_fields` struct, failing as a 400 problem.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded_like(query).map(QueryParams)
    }
}

fn serde_urlencoded_like<T: DeserializeOwned>(query: &str) -> Result<T, Problem> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", "the query string is malformed"))?;
    axum::extract::Query::<T>::try_from_uri(&uri).map(|axum::extract::Query(value)| value).map_err(|rejection| {
        let text = rejection.body_text();
        let problem = Problem::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", text.clone());
        match query_field(&text) {
            Some(field) => problem.with_field(field),
            None => problem,
        }
    })
}

/// The parameter a query rejection names: "…: limit: invalid digit found in string", or an
/// unknown, missing or repeated one ("unknown field `foo`, expected …").
fn query_field(text: &str) -> Option<String> {
    let message = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(text);
    if let Some(name) = unknown_field_name(message)
        .or_else(|| message.strip_prefix("duplicate field `").and_then(|r| r.split('`').next()).map(str::to_owned))
    {
        return Some(name);
    }
    let (name, _) = message.split_once(": ")?;
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        tenant_id: String,
        channels: Option<u32>,
    }

    #[test]
    fn names_the_field_at_fault() {
        let wrong_type = parse_json::<Body>(br#"{"tenant_id": "t", "channels": "two"}"#).unwrap_err();
        assert_eq!(wrong_type.field.as_deref(), Some("channels"));
        assert_eq!(wrong_type.status, StatusCode::UNPROCESSABLE_ENTITY);
        let unknown = parse_json::<Body>(br#"{"tenant_id": "t", "chanels": 2}"#).unwrap_err();
        assert_eq!(unknown.field.as_deref(), Some("chanels"));
        let missing = parse_json::<Body>(br#"{}"#).unwrap_err();
        assert_eq!(missing.field.as_deref(), Some("tenant_id"));
        let malformed = parse_json::<Body>(br#"{"tenant_id": "#).unwrap_err();
        assert_eq!(malformed.code, "MALFORMED_JSON");
        let wrong_kind = parse_json::<Body>(br#"{"tenant_id": 7}"#).unwrap_err();
        assert_eq!((wrong_kind.code, wrong_kind.field.as_deref()), ("INVALID_FIELD", Some("tenant_id")));
        let negative = parse_json::<Body>(br#"{"tenant_id": "t", "channels": -2}"#).unwrap_err();
        assert_eq!(negative.field.as_deref(), Some("channels"));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Page {
        limit: Option<u32>,
        status: Option<String>,
    }

    #[test]
    fn query_problems_name_the_parameter() {
        for (query, field) in [("limit=-1", "limit"), ("limit=abc", "limit"), ("foo=1", "foo"), ("limit=1&limit=2", "limit")] {
            let problem = serde_urlencoded_like::<Page>(query).unwrap_err();
            assert_eq!((problem.code, problem.field.as_deref()), ("INVALID_QUERY", Some(field)), "{query}: {}", problem.detail);
        }
        assert!(serde_urlencoded_like::<Page>("limit=5&status=pending").is_ok());
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nested {
        items: Vec<Obj<Body>>,
        #[serde(default)]
        one: Option<Obj<Body>>,
    }

    /// Nested objects too: an array in their place is refused, naming where it is, and a
    /// problem inside one still names its own field.
    #[test]
    fn a_nested_object_is_read_only_from_an_object() {
        let ok = parse_json::<Nested>(br#"{"items": [{"tenant_id": "a"}, {"tenant_id": "b", "channels": 2}], "one": null}"#).unwrap();
        assert_eq!((ok.items.len(), ok.items[1].0.channels), (2, Some(2)));
        for (body, field) in [
            (&br#"{"items": [{"tenant_id": "a"}, ["b", 2]]}"#[..], "items[1]"),
            (br#"{"items": [], "one": ["a"]}"#, "one"),
            (br#"{"items": [{"tenant_id": "a"}, {"tenant_id": "b", "channels": "x"}]}"#, "items[1].channels"),
            (br#"{"items": [{"tenant_id": "a", "colour": 1}]}"#, "items[0].colour"),
        ] {
            let problem = parse_json::<Nested>(body).unwrap_err();
            assert_eq!((problem.code, problem.field.as_deref()), ("INVALID_FIELD", Some(field)), "{}", problem.detail);
        }
    }

    /// serde reads a struct from an array, field by field: a body must be an object.
    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        assert!(parse_json::<Body>(br#"["t", 2]"#).is_err_and(|p| p.code == "INVALID_FIELD" && p.detail.contains("JSON object")));
        for bad in [&br#" ["t"]"#[..], b"\"t\"", b"7", b"null", b"true"] {
            let problem = parse_json::<Body>(bad).unwrap_err();
            assert_eq!((problem.status, problem.code), (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_FIELD"), "{bad:?}");
        }
        assert_eq!(parse_json::<Body>(b"[\"t\"").unwrap_err().code, "MALFORMED_JSON", "broken JSON stays malformed");
        assert!(parse_json::<Body>(b" \n{\"tenant_id\": \"t\"}").is_ok());
    }
}
