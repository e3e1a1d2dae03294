//! The general rate limit of the API: a token bucket per user when the
//! request carries a valid access token (sized by role), per key when it
//! carries a valid API key (which it may use only within its scopes), per
//! client address otherwise.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, ResponseError};
use confab_domain::{ApiKeyText, Role, Scopes};
use confab_ports::{AccessClaims, RatePolicy};

use crate::auth::{Authenticated, bearer};
use crate::client::client_key;
use crate::error::rate_limit_headers;
use crate::routes::{KeyUse, RouteClass};
use crate::{ApiError, State};

/// The general limits by kind of caller (app data).
#[derive(Debug, Clone)]
pub struct RateTiers {
    /// Callers without a valid token, per client address.
    pub anonymous: RatePolicy,
    /// Users, per user.
    pub user: RatePolicy,
    /// Admins, per user.
    pub admin: RatePolicy,
    /// API keys, per key.
    pub api_key: RatePolicy,
}

/// Why an API key with `scopes` may not call an endpoint that `used`
/// says it may be called so; `None` when it may.
fn key_refusal(used: KeyUse, scopes: Scopes) -> Option<ApiError> {
    match used {
        KeyUse::Open => None,
        KeyUse::Needs(scope) if scopes.contains(scope) => None,
        KeyUse::Needs(scope) => Some(ApiError::key_forbidden(format!(
            "this API key lacks the scope `{scope}` this route needs"
        ))),
        KeyUse::Refused => Some(ApiError::key_forbidden(
            "an API key can't be used on this route; log in instead",
        )),
    }
}

pub(crate) async fn rate_limit(
    state: State,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    // Every route but the health checks, the docs and the chat page (static
    // files, the same for everyone) is limited,
    // including paths no route serves (scanning costs tokens too). The
    // path as routed, so a percent-encoded spelling can't step around it.
    let class = state.routes.of(req.match_info().as_str());
    if matches!(
        class,
        RouteClass::Health | RouteClass::Docs | RouteClass::Web
    ) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let (tiers, limiter, accounts) = (&state.rate_tiers, &state.limiter, &state.accounts);
    let client = client_key(req.request(), &state.trusted_proxies);
    // A token that verifies and is not refused is charged to its user's
    // bucket (an API key to its own) in the same look-up as its standing
    // (one round trip on Redis), and kept for the route. Any other request
    // is limited as anonymous; the route itself then answers 401. A
    // refused API key is answered here (it was meant as a key: no route
    // serves it), charged to its address's key look-ups by the admission.
    let admitted = match bearer(req.request()) {
        Some(token) => {
            let admitted = accounts
                .admit(&token, &client, |c: &AccessClaims| match c.api_key {
                    Some(key) => (&tiers.api_key, format!("user:{}:key:{}", c.user_id, key.id)),
                    None if c.role == Role::Admin => (&tiers.admin, format!("user:{}", c.user_id)),
                    None => (&tiers.user, format!("user:{}", c.user_id)),
                })
                .await;
            match admitted {
                Ok(admitted) => Some(admitted),
                Err(e) if ApiKeyText::is_key(&token) => {
                    return Ok(req.into_response(ApiError::from(e).error_response()));
                }
                Err(_) => None,
            }
        }
        None => None,
    };
    // A key where no endpoint says it may go (a path or method no route
    // serves) is refused too: fail closed.
    if let Some(refusal) = admitted.as_ref().and_then(|a| {
        let grant = a.claims.api_key?;
        let used = state
            .routes
            .key_use(req.method(), req.match_info().as_str())
            .unwrap_or(KeyUse::Refused);
        key_refusal(used, grant.scopes)
    }) {
        return Ok(req.into_response(refusal.error_response()));
    }
    let (policy, decision) = match admitted {
        Some(admitted) => {
            req.extensions_mut().insert(Authenticated {
                claims: admitted.claims,
                list_version: admitted.list_version,
                user_version: Some(admitted.user_version),
            });
            (admitted.policy, admitted.decision)
        }
        None => {
            let key = format!("ip:{client}");
            match limiter.check(&tiers.anonymous, &key).await {
                Ok(d) => (&tiers.anonymous, d),
                Err(e) => {
                    // The limiter's store is down: serve rather than
                    // refuse everyone.
                    tracing::warn!(error = %e, "rate limiter unavailable; request not limited");
                    return next
                        .call(req)
                        .await
                        .map(ServiceResponse::map_into_boxed_body);
                }
            }
        }
    };
    if !decision.allowed {
        return Ok(req.into_response(ApiError::rate_limited(policy, &decision).error_response()));
    }
    let mut res = next.call(req).await?.map_into_boxed_body();
    let headers = res.headers_mut();
    for (name, value) in rate_limit_headers(policy, &decision) {
        // A stricter limit (login's) set by the handler stays.
        if !headers.contains_key(&name) {
            headers.insert(name, value);
        }
    }
    Ok(res)
}
