//! Security headers on every response, errors and streams included.

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, HeaderName, HeaderValue, REFERRER_POLICY,
    STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use actix_web::middleware::Next;

use crate::State;
use crate::routes::RouteClass;

/// An API response is data, never a document: it may load nothing.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
/// The bundled Swagger UI loads its own scripts, styles and images only.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                        img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

/// Security header settings (app data).
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    /// `Strict-Transport-Security: max-age=…; includeSubDomains`.
    pub hsts_max_age_secs: u64,
}

pub(crate) async fn security_headers(
    state: State,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let hsts = state.security.hsts_max_age_secs;
    // The path as routed (percent-decoded), so `/%61pi/…` is `/api/…`.
    let class = state.routes.of(req.match_info().as_str());
    let is_docs = class == RouteClass::Docs;
    let is_auth = class == RouteClass::Auth;
    let is_api = matches!(class, RouteClass::Api | RouteClass::Unrouted);
    let mut res = next.call(req).await?;
    let headers = res.headers_mut();
    let mut set = |name: HeaderName, value: HeaderValue| {
        if !headers.contains_key(&name) {
            headers.insert(name, value);
        }
    };
    if let Ok(v) = HeaderValue::from_str(&format!("max-age={hsts}; includeSubDomains")) {
        set(STRICT_TRANSPORT_SECURITY, v);
    }
    set(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    set(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    set(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    set(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(if is_docs { DOCS_CSP } else { API_CSP }),
    );
    if is_auth {
        // Credentials and tokens must never be stored by a cache.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    } else if is_api {
        // Per-user data: nothing is cached unless a route says otherwise.
        set(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(res)
}
