//! The general rate limit of the API: a token bucket per user when the
//! request carries a valid access token (sized by role), per client
//! address otherwise.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, ResponseError};
use confab_domain::Role;
use confab_ports::RatePolicy;

use crate::auth::{Authenticated, bearer};
use crate::client::client_key;
use crate::error::rate_limit_headers;
use crate::routes::RouteClass;
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
}

pub(crate) async fn rate_limit(
    state: State,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    // Every route but the health checks and the docs page is limited,
    // including paths no route serves (scanning costs tokens too). The
    // path as routed, so a percent-encoded spelling can't step around it.
    let class = state.routes.of(req.match_info().as_str());
    if matches!(class, RouteClass::Health | RouteClass::Docs) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let (tiers, limiter, accounts) = (&state.rate_tiers, &state.limiter, &state.accounts);
    // A token that verifies and is not refused is charged to its user's
    // bucket in the same look-up as its standing (one round trip on
    // Redis), and kept for the route. Any other request is limited as
    // anonymous; the route itself then answers 401.
    let admitted = match bearer(req.request()) {
        Some(token) => accounts
            .admit(&token, |c| {
                let policy = if c.role == Role::Admin {
                    &tiers.admin
                } else {
                    &tiers.user
                };
                (policy, format!("user:{}", c.user_id))
            })
            .await
            .ok(),
        None => None,
    };
    let (policy, decision) = match admitted {
        Some(admitted) => {
            req.extensions_mut().insert(Authenticated {
                claims: admitted.claims,
                list_version: admitted.list_version,
            });
            (admitted.policy, admitted.decision)
        }
        None => {
            let key = format!("ip:{}", client_key(req.request(), &state.trusted_proxies));
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
