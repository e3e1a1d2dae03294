//! Security headers on every response, errors and streams included; and
//! the allowed `Host` names (seed `003`'s trusted hosts).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, HOST, HeaderName, HeaderValue, REFERRER_POLICY,
    STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError};

use crate::routes::RouteClass;
use crate::{ApiError, State};

/// An API response is data, never a document: it may load nothing.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
/// The bundled Swagger UI loads its own scripts, styles and images only.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                        img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

/// The chat page: its own scripts, styles and icon; fetches to this
/// origin only; no inline code of any kind, so nothing a model writes can
/// run even if it got past the sanitiser.
const WEB_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// Security header settings (app data).
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    /// `Strict-Transport-Security: max-age=…; includeSubDomains`.
    pub hsts_max_age_secs: u64,
    /// The host names requests may name.
    pub allowed_hosts: AllowedHosts,
}

/// The host names the service answers for: exact names, and `*.name` for
/// every subdomain of `name` (not `name` itself). Empty: any host.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    names: Vec<String>,
}

impl AllowedHosts {
    /// The list, compared case-insensitively.
    #[must_use]
    pub fn new(names: &[String]) -> Self {
        Self {
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether a request whose `Host` is `host` (a name or address, with
    /// or without a port) is answered.
    fn allows(&self, host: Option<&str>) -> bool {
        if self.names.is_empty() {
            return true;
        }
        let Some(host) = host else {
            return false;
        };
        let name = without_port(host).to_ascii_lowercase();
        self.names
            .iter()
            .any(|allowed| match allowed.strip_prefix("*.") {
                Some(parent) => name
                    .strip_suffix(parent)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => *allowed == name,
            })
    }
}

/// `host` without its `:port` (an IPv6 address keeps its brackets).
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// The host a request names: its `Host` header, or the authority of its
/// URI (HTTP/2). Never `X-Forwarded-Host`, which any client can set.
fn requested_host(req: &ServiceRequest) -> Option<&str> {
    match req.headers().get(HOST) {
        Some(value) => value.to_str().ok(),
        None => req
            .uri()
            .authority()
            .map(actix_web::http::uri::Authority::as_str),
    }
}

pub(crate) async fn security_headers(
    state: State,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let hsts = state.security.hsts_max_age_secs;
    // The path as routed (percent-decoded), so `/%61pi/…` is `/api/…`.
    let class = state.routes.of(req.match_info().as_str());
    let is_auth = class == RouteClass::Auth;
    let is_api = matches!(class, RouteClass::Api | RouteClass::Unrouted);
    // Probes answer any host: load balancers call them by address.
    let mut res = if class == RouteClass::Health
        || state.security.allowed_hosts.allows(requested_host(&req))
    {
        next.call(req).await?.map_into_boxed_body()
    } else {
        let refusal = ApiError::malformed(
            Some("Host".to_owned()),
            "this server does not answer for the host the request names",
        );
        req.into_response(refusal.error_response())
    };
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
        HeaderValue::from_static(match class {
            RouteClass::Docs => DOCS_CSP,
            RouteClass::Web => WEB_CSP,
            _ => API_CSP,
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_by_name_or_subdomain_whatever_the_port_or_case() {
        let hosts = AllowedHosts::new(&["chat.example.com".into(), "*.example.org".into()]);
        for ok in [
            "chat.example.com",
            "CHAT.Example.com:8443",
            "a.example.org",
            "a.b.example.org:80",
        ] {
            assert!(hosts.allows(Some(ok)), "{ok}");
        }
        for refused in [
            "example.com",
            "evil.com",
            "chat.example.com.evil.com",
            "example.org",
            "aexample.org",
            "",
        ] {
            assert!(!hosts.allows(Some(refused)), "{refused}");
        }
        assert!(!hosts.allows(None), "no host at all");
        assert!(AllowedHosts::default().allows(Some("anything")));
        assert!(AllowedHosts::default().allows(None));
        let v6 = AllowedHosts::new(&["[::1]".into()]);
        assert!(v6.allows(Some("[::1]:8080")));
        assert!(v6.allows(Some("[::1]")));
    }
}
