//! CORS from a configured allowlist of origins.
//!
//! An allowed origin is echoed (never `*`, since credentials are allowed);
//! a preflight from it is answered here. An origin not on the list gets no
//! CORS header at all, so the browser blocks it. Every response carries
//! `Vary: Origin`, so no cache serves one origin's answer to another.
//! Origins compare case-insensitively (schemes and hosts are).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, HeaderValue, ORIGIN, VARY,
};
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse};

use crate::State;

const ALLOW_METHODS: &str = "GET, POST, PATCH, DELETE, OPTIONS";
const ALLOW_HEADERS: &str =
    "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Request-Id, X-Resume-Token";
const EXPOSE_HEADERS: &str =
    "X-Request-Id, Retry-After, RateLimit, RateLimit-Policy, ETag, Location, Idempotent-Replayed";

/// The origins allowed to call the API from a browser (app data).
#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    /// Exact origins, e.g. `https://chat.example.com`.
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer.
    pub max_age_secs: u32,
}

impl CorsPolicy {
    pub(crate) fn allows(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
    }
}

pub(crate) async fn cors(
    state: State,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let origin = req.headers().get(ORIGIN).cloned();
    let Some(origin) = origin else {
        let mut res = next.call(req).await?.map_into_boxed_body();
        res.headers_mut()
            .append(VARY, HeaderValue::from_static("Origin"));
        return Ok(res);
    };
    let policy = &state.cors;
    let allowed = origin.to_str().is_ok_and(|o| policy.allows(o));
    let preflight = req.method() == Method::OPTIONS
        && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    let mut res = if allowed && preflight {
        let max_age = policy.max_age_secs;
        let response = HttpResponse::NoContent()
            .insert_header((ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS))
            .insert_header((ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS))
            .insert_header((ACCESS_CONTROL_MAX_AGE, max_age.to_string()))
            .finish();
        req.into_response(response)
    } else {
        next.call(req).await?.map_into_boxed_body()
    };
    let headers = res.headers_mut();
    headers.append(VARY, HeaderValue::from_static("Origin"));
    if allowed {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    Ok(res)
}
