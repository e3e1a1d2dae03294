//! Extractors: a JSON body that fails in the API's error shape.

use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::web::BytesMut;
use actix_web::{FromRequest, HttpRequest};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::ApiError;
use crate::State;

/// Limits on reading a request body (app data).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// The largest body a route accepts, in bytes (larger is 413).
    pub max_bytes: usize,
    /// The largest body of a message send, in bytes (larger is 413).
    pub max_send_bytes: usize,
    /// How long the whole body may take to arrive once the head is read
    /// (slower is 408), so a client can't hold a worker by trickling bytes.
    pub read_timeout: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024,
            max_send_bytes: 2 * 1024 * 1024,
            read_timeout: Duration::from_secs(10),
        }
    }
}

/// A JSON request body.
///
/// `Content-Type` must be `application/json` (or `…+json`), else 415; the
/// body must fit [`BodyLimits::max_bytes`], else 413 (refused from
/// `Content-Length` before reading, or as soon as the stream passes the
/// limit) and arrive within [`BodyLimits::read_timeout`], else 408; anything serde refuses (syntax, invalid UTF-8, nesting deeper
/// than 128, a missing or unknown field, a domain rule in a `TryFrom`) is
/// 400 `VALIDATION_ERROR` naming the field by its path.
#[derive(Debug)]
pub struct Json<T>(pub T);

fn is_json(req: &HttpRequest) -> bool {
    let Some(value) = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads a whole request body within `limits`: more than
/// [`BodyLimits::max_bytes`] is 413, slower than
/// [`BodyLimits::read_timeout`] is 408.
pub(crate) async fn read_limited(
    mut payload: Payload,
    limits: BodyLimits,
    declared: Option<usize>,
) -> Result<BytesMut, ApiError> {
    let limit = limits.max_bytes;
    let read = async {
        let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|_| ApiError::malformed(None, "the request body could not be read"))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::payload_too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    actix_web::rt::time::timeout(limits.read_timeout, read)
        .await
        .map_err(|_| ApiError::request_timeout())?
}

/// Reads a JSON body as [`Json`] does, without parsing it: `415` when the
/// content type is not JSON, `413` when it is (or is declared) too large,
/// `408` when it arrives too slowly.
///
/// # Errors
/// Those.
pub(crate) async fn read_json_body(
    req: &HttpRequest,
    payload: Payload,
    limits: BodyLimits,
) -> Result<BytesMut, ApiError> {
    if !is_json(req) {
        return Err(ApiError::unsupported_media_type());
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limits.max_bytes) {
        return Err(ApiError::payload_too_large(limits.max_bytes));
    }
    read_limited(payload, limits, declared).await
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let limits = req
                .app_data::<State>()
                .map(|state| state.body)
                .ok_or_else(|| ApiError::internal("the application state is not registered"))?;
            let body = read_json_body(&req, payload, limits).await?;
            parse(&body).map(Json)
        })
    }
}

/// An optional JSON body: absent (an empty body, or no `Content-Type` and
/// no length) or the JSON `null` is `None`; otherwise it is read exactly as
/// [`Json`].
#[derive(Debug)]
pub struct MaybeJson<T>(pub Option<T>);

impl<T: DeserializeOwned + 'static> FromRequest for MaybeJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let length = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let chunked = req
            .headers()
            .contains_key(actix_web::http::header::TRANSFER_ENCODING);
        // No length and no chunking is no body in HTTP/1.1, whatever the
        // content type (`fetch` sends `application/json` with none).
        if length.unwrap_or(0) == 0 && !chunked {
            return Box::pin(async { Ok(Self(None)) });
        }
        let json = Json::<Option<T>>::from_request(req, payload);
        Box::pin(async move { json.await.map(|Json(v)| Self(v)) })
    }
}

/// For an optional field that may be left out but not sent as `null`
/// (`#[serde(default, deserialize_with = "present")]`): the document
/// declares such a field non-nullable, and `null` is refused as it says.
///
/// # Errors
/// When the value is not a `T` (`null` included).
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Deserialises `bytes`, reporting the path of the first bad field.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        // Malformed JSON names no field: the document itself is broken.
        let field = match inner.classify() {
            serde_json::error::Category::Data => field_name(&path, &inner.to_string()),
            _ => None,
        };
        let message = describe(&inner);
        if breaks_a_rule(&inner) {
            ApiError::validation(field, message)
        } else {
            ApiError::malformed(field, message)
        }
    })?;
    de.end()
        .map_err(|e| ApiError::malformed(None, describe(&e)))?;
    Ok(value)
}

/// Whether serde refused a well-formed document for a value that breaks a
/// rule (422): a value of the right type but not an allowed one, or a
/// domain rule of a `TryFrom`. Malformed JSON, a value of the wrong type and
/// an unknown or missing field are the document's form (400).
fn breaks_a_rule(err: &serde_json::Error) -> bool {
    if err.classify() != serde_json::error::Category::Data {
        return false;
    }
    let text = err.to_string();
    !["invalid type", "unknown field", "missing field"]
        .iter()
        .any(|form| text.starts_with(form))
}

/// The field to name: the serde path, or for a missing or unknown field
/// (whose path is its parent) the name serde quotes in its message.
fn field_name(path: &str, message: &str) -> Option<String> {
    let quoted = message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("missing field") || message.starts_with("unknown field"));
    let path = if path == "." { "" } else { path };
    let last = path.rsplit('.').next().unwrap_or("");
    match quoted {
        // An unknown field's path already ends with it; a missing one's doesn't.
        Some(name) if last == name => Some(path.to_owned()),
        Some(name) if path.is_empty() => Some(name.to_owned()),
        Some(name) => Some(format!("{path}.{name}")),
        None if path.is_empty() => None,
        None => Some(path.to_owned()),
    }
}

/// A client-safe description: serde's message without its position and
/// without the offending value (which may be a password sent with the
/// wrong type), or a generic one for syntax errors.
fn describe(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax => format!(
            "malformed JSON at line {} column {}",
            err.line(),
            err.column()
        ),
        Category::Eof => "the JSON body ended early".to_owned(),
        Category::Io => "the request body could not be read".to_owned(),
        Category::Data => without_value(&err.to_string()),
    }
}

/// A client-safe description of a query string or path that does not
/// parse: what was expected, never the name or value sent (a client's
/// input is not echoed back).
pub(crate) fn describe_parameters(what: &str, err: &dyn std::fmt::Display) -> String {
    let text = err.to_string();
    let text = text.split_once("error: ").map_or(text.as_str(), |(_, t)| t);
    let expected = without_value(text);
    if expected.contains('`') && !expected.contains("expected") {
        // A message that quotes what was sent and says nothing expected.
        return format!("invalid {what}");
    }
    format!("invalid {what}: {expected}")
}

/// serde quotes the value it refused: `invalid type: integer `123`,
/// expected a string`. Keep what was expected, drop what was sent.
fn without_value(text: &str) -> String {
    let text = text.rfind(" at line ").map_or(text, |i| &text[..i]);
    let refused_value = [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
        "unknown field",
    ]
    .iter()
    .find(|kind| text.starts_with(*kind));
    match (refused_value, text.find("expected ")) {
        (Some(kind), Some(i)) => format!("{kind}: {}", &text[i..]),
        (Some(kind), None) => (*kind).to_owned(),
        (None, _) => text.to_owned(),
    }
}

#[cfg(test)]
mod properties {
    //! The JSON extractor's limits hold for any input: nesting up to 127
    //! levels parses (serde_json's limit), deeper is refused, and no byte
    //! string makes it panic.

    use proptest::prelude::*;

    use super::parse;

    proptest! {
        #[test]
        fn nesting_up_to_the_limit_parses_and_deeper_is_refused(
            depth in 1_usize..200,
            objects in any::<bool>(),
        ) {
            let (open, close) = if objects { ("{\"a\":", "}") } else { ("[", "]") };
            let body = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            let parsed = parse::<serde_json::Value>(body.as_bytes());
            prop_assert_eq!(parsed.is_ok(), depth <= 127, "depth {}", depth);
        }

        #[test]
        fn any_bytes_are_an_answer_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse::<serde_json::Value>(&bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use actix_web::ResponseError;

    #[test]
    fn parameter_errors_never_echo_what_was_sent() {
        let cases = [
            (
                "Query deserialize error: unknown field `<script>`, expected one of `q`, `limit`",
                "invalid query: unknown field: expected one of `q`, `limit`",
            ),
            (
                "Query deserialize error: unknown variant `hunter2`, expected `asc` or `desc`",
                "invalid query: unknown variant: expected `asc` or `desc`",
            ),
            (
                "Query deserialize error: invalid digit found in string",
                "invalid query: invalid digit found in string",
            ),
            ("Path deserialize error: weird `sent`", "invalid query"),
        ];
        for (raw, said) in cases {
            assert_eq!(super::describe_parameters("query", &raw), said);
        }
    }
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        parts: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        items: Vec<Inner>,
    }

    fn field_of(json: &str) -> Option<String> {
        let err = parse::<Outer>(json.as_bytes()).unwrap_err();
        let v: serde_json::Value = serde_json::from_slice(&err.body_for_tests()).unwrap();
        v["error"]["field"].as_str().map(str::to_owned)
    }

    #[test]
    fn names_the_field() {
        assert_eq!(field_of(r#"{"items":[]}"#).as_deref(), Some("name"));
        assert_eq!(
            field_of(r#"{"name":1,"items":[]}"#).as_deref(),
            Some("name")
        );
        assert_eq!(
            field_of(r#"{"name":"n","items":[{"parts":[1]}]}"#).as_deref(),
            Some("items[0].parts[0]")
        );
        assert_eq!(
            field_of(r#"{"name":"n","items":[],"role":"admin"}"#).as_deref(),
            Some("role")
        );
        assert_eq!(
            field_of(r#"{"name":"n","items":[{"parts":[],"x":1}]}"#).as_deref(),
            Some("items[0].x")
        );
        assert_eq!(field_of(r#"{"name": "#), None);
    }

    #[test]
    fn refused_values_are_not_echoed() {
        let err = parse::<Outer>(br#"{"name":12345678,"items":[]}"#).unwrap_err();
        let text = String::from_utf8(err.body_for_tests()).unwrap();
        assert!(!text.contains("12345678"), "{text}");
        assert!(text.contains("expected a string"), "{text}");
        assert_eq!(
            without_value("missing field `name` at line 1 column 2"),
            "missing field `name`"
        );
        assert_eq!(
            without_value("unknown variant `hunter2`, expected `a` or `b` at line 1 column 9"),
            "unknown variant: expected `a` or `b`"
        );
    }

    fn status_of(json: &str) -> u16 {
        parse::<Outer>(json.as_bytes())
            .unwrap_err()
            .status_code()
            .as_u16()
    }

    #[test]
    fn the_form_is_400_and_a_broken_rule_422() {
        // Not JSON, the wrong type, an unknown or a missing field: 400.
        assert_eq!(status_of(r#"{"name": "#), 400);
        assert_eq!(status_of(r#"{"name":1,"items":[]}"#), 400);
        assert_eq!(status_of(r#"{"name":"n","items":[],"role":"admin"}"#), 400);
        assert_eq!(status_of(r#"{"items":[]}"#), 400);
        assert_eq!(status_of(r#"{"name":"n","items":[]} x"#), 400);
        // A value of the right type that breaks a rule (a `TryFrom`'s or an
        // enum's): 422.
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        enum Kind {
            A,
        }
        let err = parse::<Kind>(br#""B""#).unwrap_err();
        assert_eq!(err.status_code().as_u16(), 422);
        #[derive(Debug, Deserialize)]
        #[serde(try_from = "String")]
        struct Short;
        impl TryFrom<String> for Short {
            type Error = &'static str;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                if value.len() < 3 {
                    Ok(Self)
                } else {
                    Err("is too long")
                }
            }
        }
        assert_eq!(
            parse::<Short>(br#""long""#)
                .unwrap_err()
                .status_code()
                .as_u16(),
            422
        );
        assert!(parse::<Short>(br#""ok""#).is_ok());
    }

    #[test]
    fn refuses_trailing_garbage_and_deep_nesting() {
        assert!(parse::<serde_json::Value>(br#"{"a":1} x"#).is_err());
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse::<serde_json::Value>(deep.as_bytes()).is_err());
        assert!(parse::<serde_json::Value>(b"\"\xff\xfe\"").is_err());
    }
}
