//! Extractors that say, in a handler's signature, who may call it.

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use confab_app::{AppError, AuthFailure, ListVersion};
use confab_domain::Role;
use confab_ports::AccessClaims;
use futures_util::future::LocalBoxFuture;

use crate::ApiError;
use crate::State;

/// The bearer token of the request, if it has one.
pub(crate) fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Claims already verified for this request (by the rate limiter), so a
/// route does not verify the same token twice, and what else admission
/// read for the route.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated {
    pub(crate) claims: AccessClaims,
    /// The version of the caller's cached lists, when admission read it.
    pub(crate) list_version: Option<ListVersion>,
    /// The caller's account-state version, when admission read it.
    pub(crate) user_version: Option<u64>,
}

/// The version of the caller's cached lists that this request's admission
/// read, if it did.
pub(crate) fn list_version(req: &HttpRequest) -> Option<ListVersion> {
    req.extensions()
        .get::<Authenticated>()
        .and_then(|admitted| admitted.list_version)
}

/// The caller's account-state version that this request's admission read,
/// if it did.
pub(crate) fn account_version(req: &HttpRequest) -> Option<u64> {
    req.extensions()
        .get::<Authenticated>()
        .and_then(|admitted| admitted.user_version)
}

async fn authenticate(req: HttpRequest) -> Result<AccessClaims, ApiError> {
    let admitted = req
        .extensions()
        .get::<Authenticated>()
        .map(|admitted| admitted.claims.clone());
    if let Some(claims) = admitted {
        return Ok(claims);
    }
    let token = bearer(&req).ok_or(ApiError::unauthorized(AuthFailure::Missing))?;
    let state = req
        .app_data::<State>()
        .ok_or_else(|| ApiError::internal("the application state is not registered"))?;
    Ok(state.accounts.authenticate(&token).await?)
}

/// An authenticated caller (a valid, unrevoked access token). 401 otherwise.
#[derive(Debug, Clone)]
pub struct AuthUser(pub AccessClaims);

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { authenticate(req).await.map(AuthUser) })
    }
}

/// An authenticated caller with role `admin`. 401 without a valid token,
/// 403 with one of another role.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AccessClaims);

impl FromRequest for AdminUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let claims = authenticate(req).await?;
            if claims.role == Role::Admin {
                Ok(AdminUser(claims))
            } else {
                Err(AppError::Forbidden.into())
            }
        })
    }
}
