//! `Idempotency-Key` on `POST`, `PATCH` and `DELETE`: a retry gets the
//! first request's response instead of running it again.
//!
//! Keys are scoped to the signed-in caller (another user's key of the same
//! spelling is another key) and bound to the request: its method, path and
//! body (a SHA-256). The first request claims its key atomically; a retry
//! of the same request gets the stored status, headers and body with
//! `Idempotent-Replayed: true`; the same key on a different request is 422
//! `IDEMPOTENCY_KEY_REUSED`; a retry while the first still runs is 409. A
//! message send is recorded as its answer as soon as the message is stored
//! (whatever follows: the stream, a JSON answer, a model failure): a retry
//! re-attaches to that answer's stream (from the start, or after
//! `Last-Event-ID`) and never sends the message, or asks the model, a
//! second time. A 5xx, 406, 408, 409, 415 or 429 otherwise frees the key
//! instead of being recorded (a retry may well succeed). The auth routes
//! ignore the header: their responses hold tokens, which are never stored.
//!
//! The middleware keys every API route but the sends. A send claims its key
//! itself with [`claim`] and records the [`Started`](confab_app::Started)
//! the app returns with [`ClaimedKey::record_stream`] (or its refusal with
//! [`ClaimedKey::record`]): nothing passes between the two through the
//! request.

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{Error, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use confab_domain::{ConversationId, ErrorCode, MessageId};
use confab_ports::{AccessClaims, Claim, IdempotencyStore, StoredOutcome};
use sha2::{Digest, Sha256};

use crate::auth::Authenticated;
use crate::extract::read_limited;
use crate::negotiate::{Preferred, preferred};
use crate::routes::RouteClass;
use crate::routes::replayed_json;
use crate::sse;
use crate::{ApiError, State};

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// The longest key accepted.
pub(crate) const MAX_KEY_LEN: usize = 255;

/// The headers a replay carries (the rest are set again by the stack).
const KEPT_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::LOCATION,
    header::ETAG,
    header::CACHE_CONTROL,
];

/// The store and how long it keeps things (app data).
#[derive(Clone)]
pub struct IdempotencyPolicy {
    /// Where keys are kept.
    pub store: Arc<dyn IdempotencyStore>,
    /// How long a completed request's outcome is kept (24 h).
    pub ttl: Duration,
    /// How long a claim holds without an outcome before the key is free
    /// again (its instance died mid-request).
    pub in_flight_ttl: Duration,
    /// The live keys one user may hold (the store enforces it; named in
    /// the refusal).
    pub max_per_owner: usize,
}

/// A key the request holds: once the request has run,
/// [`ClaimedKey::record`] or [`ClaimedKey::record_stream`] says what a
/// retry gets.
pub(crate) struct ClaimedKey {
    policy: IdempotencyPolicy,
    owner: String,
    key: String,
    print: String,
}

/// What claiming a request's key found.
pub(crate) enum Keyed {
    /// The key is this request's: run it, then record what it answered.
    Run(ClaimedKey),
    /// Answer this instead of running the request: a replay, the stream of
    /// the answer a send started, or a refusal.
    Answer(HttpResponse),
}

impl ClaimedKey {
    /// Records the request as the answer `message` of `conversation`: a
    /// retry re-attaches to that answer's stream, whatever the request
    /// goes on to answer (a send records this the moment its message is
    /// stored: a JSON-mode send answers only when the answer is finished,
    /// and a retry meanwhile must re-attach, not get 409s).
    pub(crate) async fn record_stream(self, conversation: ConversationId, message: MessageId) {
        let outcome = StoredOutcome::Stream {
            conversation,
            message,
        };
        self.complete(outcome).await;
    }

    /// Records `res` as what a retry gets, or frees the key for a status a
    /// retry may not get again; returns `res` (its body read once).
    ///
    /// # Errors
    /// When the body can't be read (the key is freed).
    pub(crate) async fn record(self, res: HttpResponse) -> Result<HttpResponse, Error> {
        if not_recorded(res.status()) {
            self.release().await;
            return Ok(res);
        }
        let (head, body) = res.into_parts();
        let bytes = match actix_web::body::to_bytes(body).await {
            Ok(bytes) => bytes,
            Err(e) => {
                self.release().await;
                return Err(e.into());
            }
        };
        let headers = KEPT_HEADERS
            .iter()
            .filter_map(|name| {
                let value = head.headers().get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect();
        let outcome = StoredOutcome::Response {
            status: head.status().as_u16(),
            headers,
            body: bytes.to_vec(),
        };
        self.complete(outcome).await;
        Ok(head.set_body(BoxBody::new(bytes)))
    }

    async fn complete(&self, outcome: StoredOutcome) {
        let policy = &self.policy;
        if let Err(e) = policy
            .store
            .complete(&self.owner, &self.key, &self.print, outcome, policy.ttl)
            .await
        {
            // The key stays claimed until its in-flight time runs out:
            // retries meanwhile get 409, never a second run.
            tracing::error!(error = %e, "could not record an idempotent request's outcome");
        }
    }

    /// Frees the key (the request failed in a way a retry may redo).
    pub(crate) async fn release(&self) {
        if let Err(e) = self
            .policy
            .store
            .release(&self.owner, &self.key, &self.print)
            .await
        {
            tracing::warn!(error = %e, "could not free an idempotency key");
        }
    }
}

/// The request's `Idempotency-Key`: `None` without one.
///
/// # Errors
/// 400 for a key that is not 1 to 255 printable ASCII characters with no
/// space at either end.
pub(crate) fn requested_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(raw) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match raw.to_str().ok().filter(|k| valid_key(k)) {
        Some(key) => Ok(Some(key.to_owned())),
        None => Err(ApiError::malformed(
            Some("Idempotency-Key".to_owned()),
            "must be 1 to 255 printable ASCII characters, with no space at either end",
        )),
    }
}

/// Claims `key` (scoped to `caller`) for the request `req` with `body`.
pub(crate) async fn claim(
    state: &State,
    req: &HttpRequest,
    caller: &AccessClaims,
    key: &str,
    body: &[u8],
) -> Keyed {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path().to_owned(), ToString::to_string);
    let print = fingerprint(req.method(), &path, body);
    let owner = caller.user_id.to_string();
    let policy = &state.idempotency;
    let claim = match policy
        .store
        .claim(&owner, key, &print, policy.in_flight_ttl)
        .await
    {
        Ok(claim) => claim,
        Err(e) => {
            tracing::warn!(error = %e, "idempotency store unavailable: request refused");
            // Running it without the key's protection could run it twice.
            let e = ApiError::unavailable("temporarily unavailable, retry shortly", 1);
            return Keyed::Answer(e.error_response());
        }
    };
    match claim {
        Claim::Claimed => Keyed::Run(ClaimedKey {
            policy: policy.clone(),
            owner,
            key: key.to_owned(),
            print,
        }),
        Claim::OwnerFull { retry_after } => {
            Keyed::Answer(owner_full(policy.max_per_owner, retry_after).error_response())
        }
        Claim::Mismatch => Keyed::Answer(reused().error_response()),
        Claim::InFlight => Keyed::Answer(in_flight().error_response()),
        Claim::Completed(StoredOutcome::Response {
            status,
            headers,
            body,
        }) => Keyed::Answer(replay(status, headers, body)),
        Claim::Completed(StoredOutcome::Stream {
            conversation,
            message,
        }) => {
            let created = crate::routes::starts_conversation(req.path(), body);
            let answer = Answered {
                conversation,
                message,
                created,
            };
            Keyed::Answer(reattach(state, req, caller, &answer).await)
        }
    }
}

/// Whether `key` is one we accept: 1 to 255 printable ASCII characters,
/// the first and last not a space (`fields::IDEMPOTENCY_KEY_PATTERN`).
fn valid_key(key: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&key.len())
        && key.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && !key.starts_with(' ')
        && !key.ends_with(' ')
}

/// The request's fingerprint: method, path with query, body.
fn fingerprint(method: &Method, path_and_query: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(method.as_str().as_bytes());
    hash.update(b"\n");
    hash.update(path_and_query.as_bytes());
    hash.update(b"\n");
    hash.update(body);
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn error_response(req: ServiceRequest, error: &ApiError) -> ServiceResponse<BoxBody> {
    req.into_response(error.error_response())
}

pub(crate) async fn idempotency(
    state: State,
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    // Keyed API routes only: not the auth routes (their responses hold
    // tokens), and by the path as routed (decoded), so a percent-encoded
    // spelling of an auth route can't get its tokens stored. A send claims
    // its key itself (it records its answer the moment its message is
    // stored). Checked cheapest first: a request without a key pays one
    // header lookup.
    let applies = req.headers().contains_key(IDEMPOTENCY_KEY)
        && matches!(*req.method(), Method::POST | Method::PATCH | Method::DELETE)
        && {
            let path = req.match_info().as_str();
            state.routes.of(path) == RouteClass::Api
                && state.routes.serves(req.method(), path)
                && !state.routes.keys_itself(req.method(), path)
        };
    // Without a signed-in caller the route answers 401 itself.
    let caller = applies
        .then(|| {
            req.extensions()
                .get::<Authenticated>()
                .map(|admitted| admitted.claims.clone())
        })
        .flatten();
    let keyed = match caller {
        Some(caller) => requested_key(req.request()).map(|key| key.map(|k| (caller, k))),
        None => Ok(None),
    };
    let (caller, key) = match keyed {
        Ok(Some(keyed)) => keyed,
        Ok(None) => {
            return next
                .call(req)
                .await
                .map(ServiceResponse::map_into_boxed_body);
        }
        Err(e) => return Ok(error_response(req, &e)),
    };
    let body = match read_body(&state, &mut req).await {
        Ok(body) => body,
        Err(e) => return Ok(error_response(req, &e)),
    };
    match claim(&state, req.request(), &caller, &key, &body).await {
        Keyed::Answer(res) => Ok(req.into_response(res)),
        Keyed::Run(claimed) => {
            let res = match next.call(req).await {
                Ok(res) => res.map_into_boxed_body(),
                Err(e) => {
                    claimed.release().await;
                    return Err(e);
                }
            };
            let (req, res) = res.into_parts();
            let res = claimed.record(res).await?;
            Ok(ServiceResponse::new(req, res))
        }
    }
}

/// 422: the key was used for a different request.
fn reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::IdempotencyKeyReused,
        "this Idempotency-Key was used for a different request",
    )
}

/// 429: the caller holds as many keys as one user may; the first lapses
/// in `retry_after`.
fn owner_full(max: usize, retry_after: Duration) -> ApiError {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    ApiError::too_many(
        format!(
            "you hold {max} Idempotency-Keys, as many as one user may: retry once the first expires, or without a key"
        ),
        secs,
    )
}

/// 409: the key's first request is still running.
fn in_flight() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::Conflict,
        "a request with this Idempotency-Key is still being processed: retry later",
    )
}

/// Reads the request's body within the body limits, and puts it back for
/// the route.
async fn read_body(state: &State, req: &mut ServiceRequest) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = read_limited(req.take_payload(), state.body, declared)
        .await?
        .freeze();
    req.set_payload(body.clone().into());
    Ok(body)
}

/// A completed request's recorded response, marked as a replay.
fn replay(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut res = HttpResponse::build(status);
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            res.insert_header((name, value));
        }
    }
    res.insert_header((REPLAYED, HeaderValue::from_static("true")));
    res.body(body)
}

/// A status a retry may well not get again: not recorded, the key is
/// freed (a 5xx; a timeout, a conflict with a running answer, a limit; a
/// refusal of the request's headers, which are not in its fingerprint:
/// `Accept`, `Content-Type`, `If-Match`).
fn not_recorded(status: StatusCode) -> bool {
    status.is_server_error()
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT
                | StatusCode::CONFLICT
                | StatusCode::PRECONDITION_FAILED
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::NOT_ACCEPTABLE
                | StatusCode::UNSUPPORTED_MEDIA_TYPE
        )
}

/// A retried message send: in the mode the retry asks for, the answer's
/// stream again (from the start or after `Last-Event-ID`), or in JSON mode
/// the finished answer as the first request answered.
/// The answer a completed send started, and whether the send started its
/// conversation.
struct Answered {
    conversation: ConversationId,
    message: MessageId,
    created: bool,
}

async fn reattach(
    state: &State,
    req: &HttpRequest,
    caller: &AccessClaims,
    answer: &Answered,
) -> HttpResponse {
    let (conversation, message) = (answer.conversation, &answer.message);
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let replayed = match preferred(accept) {
        None => Err(ApiError::not_acceptable()),
        Some(Preferred::Json) => {
            replayed_json(
                &state.conversations,
                caller,
                (conversation, message),
                answer.created,
            )
            .await
        }
        Some(Preferred::EventStream) => {
            Ok(reattach_stream(state, req, caller, conversation, message).await)
        }
    };
    let mut res = replayed.unwrap_or_else(|e| e.error_response());
    if res.status().is_success() {
        res.headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    res
}

/// A retried streaming send: the answer's stream again.
async fn reattach_stream(
    state: &State,
    req: &HttpRequest,
    caller: &AccessClaims,
    conversation: ConversationId,
    message: &MessageId,
) -> HttpResponse {
    let last = req
        .headers()
        .get(LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    match state
        .conversations
        .reattach(caller, conversation, message, last)
        .await
    {
        Ok(feed) => sse::response(feed, state.sse),
        Err(e) => ApiError::from(e).error_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_1_to_255_printable_ascii_characters() {
        assert!(valid_key("a"));
        assert!(valid_key("8e03978e-40d5-43e8-bc93-6894a57f9324"));
        assert!(valid_key(&"k".repeat(255)));
        assert!(!valid_key(""));
        assert!(!valid_key(&"k".repeat(256)));
        assert!(!valid_key("tab\there"));
        assert!(!valid_key("é"));
        assert!(!valid_key(" key"));
        assert!(!valid_key("key "));
        assert!(valid_key("a key"));
    }

    #[test]
    fn the_documented_pattern_is_the_rule() {
        let pattern = regex::Regex::new(crate::fields::IDEMPOTENCY_KEY_PATTERN).unwrap();
        let alphabet = ["a", " ", "~", "!", "\t", "é", "\u{7f}", "-"];
        let mut keys: Vec<String> = vec![String::new()];
        for _ in 0..3 {
            keys = keys
                .iter()
                .flat_map(|k| alphabet.iter().map(move |c| format!("{k}{c}")))
                .chain(keys.iter().cloned())
                .collect();
        }
        for len in [254, 255, 256] {
            keys.push("k".repeat(len));
            keys.push(format!("{} ", "k".repeat(len - 1)));
        }
        for key in &keys {
            assert_eq!(valid_key(key), pattern.is_match(key), "{key:?}");
        }
    }

    #[test]
    fn transient_failures_are_not_recorded() {
        for status in [500, 502, 503, 504, 408, 409, 412, 429, 406, 415] {
            assert!(
                not_recorded(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
        for status in [200, 201, 204, 400, 401, 403, 404, 413, 422] {
            assert!(
                !not_recorded(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
    }

    #[test]
    fn the_fingerprint_covers_method_path_and_body() {
        let base = fingerprint(&Method::POST, "/a", b"{}");
        assert_eq!(base, fingerprint(&Method::POST, "/a", b"{}"));
        assert_ne!(base, fingerprint(&Method::PATCH, "/a", b"{}"));
        assert_ne!(base, fingerprint(&Method::POST, "/b", b"{}"));
        assert_ne!(base, fingerprint(&Method::POST, "/a", b"{ }"));
        assert_eq!(base.len(), 64);
    }
}
