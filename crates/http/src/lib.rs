//! Confab's HTTP layer on actix-web: routes, extractors, middleware, the
//! error shape and the OpenAPI document.
//!
//! Handlers see use cases (`confab-app`) and domain types, never an
//! adapter. [`app`] builds the whole application from an [`HttpState`];
//! the binary binds it to a listener.

mod error;
mod extract;
mod metrics;
mod middleware;
mod openapi;
mod routes;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, web};
use confab_app::{Accounts, Readiness};
use utoipa_swagger_ui::{Config, SwaggerUi};

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use extract::{Json, JsonLimit};
pub use metrics::{Metrics, metrics_routes};
pub use middleware::{CorsPolicy, RequestId, SecurityHeaders};
pub use openapi::{ApiDoc, openapi_json};
pub use routes::served_routes;

/// Everything the HTTP layer needs, built by the binary. Cloned once per
/// worker thread.
#[derive(Clone)]
pub struct HttpState {
    /// Account use cases.
    pub accounts: Accounts,
    /// Readiness use case.
    pub readiness: Readiness,
    /// Request metrics (shared with the metrics listener).
    pub metrics: Metrics,
    /// Largest accepted JSON body, in bytes.
    pub json_limit: usize,
    /// Browser origins allowed to call the API.
    pub cors: CorsPolicy,
    /// Security header settings.
    pub security: SecurityHeaders,
    /// The rendered OpenAPI document.
    pub openapi: String,
}

/// The application: every route, the docs, and the middleware stack.
pub fn app(
    state: HttpState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    build(state, routes::ENDPOINTS)
}

/// The application over a given endpoint table (tests use their own).
fn build(
    state: HttpState,
    endpoints: &'static [routes::Endpoint],
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(state.accounts))
        .app_data(web::Data::new(state.readiness))
        .app_data(web::Data::new(state.metrics))
        .app_data(web::Data::new(state.cors))
        .app_data(web::Data::new(state.security))
        .app_data(web::Data::new(routes::OpenApiJson(state.openapi)))
        .app_data(JsonLimit(state.json_limit))
        .app_data(web::PathConfig::default().error_handler(|err, _| {
            ApiError::validation(None, format!("invalid path: {err}")).into()
        }))
        .app_data(web::QueryConfig::default().error_handler(|err, _| {
            ApiError::validation(None, format!("invalid query: {err}")).into()
        }))
        .configure(|cfg| routes::configure(cfg, endpoints))
        .service(SwaggerUi::new("/docs/{_:.*}").config(Config::new(["/api/v1/openapi.json"])))
        .default_service(web::to(routes::not_found))
        .wrap(from_fn(middleware::cors))
        .wrap(from_fn(middleware::security_headers))
        .wrap(from_fn(middleware::telemetry))
        .wrap(from_fn(middleware::request_id))
}
