//! The general rate limit of the API: a token bucket per user when the
//! request carries a valid access token (sized by role), per client
//! address otherwise.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, ResponseError, web};
use confab_app::Accounts;
use confab_domain::Role;
use confab_ports::{RateLimiter, RatePolicy};

use crate::ApiError;
use crate::auth::{Authenticated, bearer};
use crate::client::client_key;
use crate::error::rate_limit_headers;

/// The general limits by kind of caller (app data).
#[derive(Debug, Clone)]
pub struct RateTiers {
    /// Callers without a valid token, per client address.
    pub anonymous: RatePolicy,
    /// Users, per user.
    pub user: RatePolicy,
    /// Admins, per user.
    pub admin: RatePolicy,
}

/// The rate limiter port (app data).
pub(crate) type Limiter = web::Data<dyn RateLimiter>;

pub(crate) async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let tiers = req.app_data::<web::Data<RateTiers>>().cloned();
    let limiter = req.app_data::<Limiter>().cloned();
    let accounts = req.app_data::<web::Data<Accounts>>().cloned();
    // Every route but the operations ones is limited, including paths no
    // route serves (scanning costs tokens too). The path as routed, so a
    // percent-encoded spelling can't step around it.
    let path = req.match_info().as_str();
    let exempt = matches!(path, "/healthz" | "/readyz" | "/docs") || path.starts_with("/docs/");
    let (Some(tiers), Some(limiter), Some(accounts), false) = (tiers, limiter, accounts, exempt)
    else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    // A token that does not verify is limited as anonymous; the route
    // itself then answers 401. One that does is kept for the route.
    let caller = match bearer(req.request()) {
        Some(token) => accounts.authenticate(&token).await.ok(),
        None => None,
    };
    if let Some(claims) = &caller {
        req.extensions_mut().insert(Authenticated(claims.clone()));
    }
    let (policy, key) = match caller {
        Some(c) if c.role == Role::Admin => (&tiers.admin, format!("user:{}", c.user_id)),
        Some(c) => (&tiers.user, format!("user:{}", c.user_id)),
        None => (
            &tiers.anonymous,
            format!("ip:{}", client_key(req.request())),
        ),
    };
    let decision = match limiter.check(policy, &key).await {
        Ok(d) => d,
        Err(e) => {
            // The limiter's store is down: serve rather than refuse everyone.
            tracing::warn!(error = %e, "rate limiter unavailable; request not limited");
            return next
                .call(req)
                .await
                .map(ServiceResponse::map_into_boxed_body);
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
