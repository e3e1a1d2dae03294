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
pub use extract::{BodyLimits, Json};
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
    /// Request body size and read-time limits.
    pub body: BodyLimits,
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
        .app_data(state.body)
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

#[cfg(test)]
mod tests {
    //! The middleware stack around handlers the API doesn't have: one that
    //! panics, and a path with two methods.

    use std::sync::Arc;

    use actix_web::http::Method;
    use actix_web::test as http_test;
    use actix_web::{HttpResponse, web};
    use async_trait::async_trait;
    use confab_app::{Accounts, Readiness};
    use confab_domain::{
        DomainError, NewUser, OffsetDateTime, Page, PageRequest, Password, PasswordHash, User,
        UserId,
    };
    use confab_ports::{HealthCheck, PasswordHasher, UserStore, Verification};

    use super::*;

    struct Nobody;

    #[async_trait]
    impl UserStore for Nobody {
        async fn create(&self, _: NewUser) -> Result<User, DomainError> {
            Err(DomainError::NotFound)
        }
        async fn get(&self, _: UserId) -> Result<User, DomainError> {
            Err(DomainError::NotFound)
        }
        async fn find_credentials(
            &self,
            _: &str,
        ) -> Result<Option<(User, PasswordHash)>, DomainError> {
            Ok(None)
        }
        async fn list(&self, request: PageRequest) -> Result<Page<User>, DomainError> {
            Ok(Page {
                items: vec![],
                total: 0,
                request,
            })
        }
        async fn set_password_hash(
            &self,
            _: UserId,
            _: PasswordHash,
            _: OffsetDateTime,
        ) -> Result<(), DomainError> {
            Err(DomainError::NotFound)
        }
        async fn set_disabled(
            &self,
            _: UserId,
            _: bool,
            _: OffsetDateTime,
        ) -> Result<User, DomainError> {
            Err(DomainError::NotFound)
        }
    }

    #[async_trait]
    impl PasswordHasher for Nobody {
        async fn hash(&self, _: &Password) -> Result<PasswordHash, DomainError> {
            Err(DomainError::unavailable("no hasher in this test"))
        }
        async fn verify(
            &self,
            _: &Password,
            _: Option<&PasswordHash>,
        ) -> Result<Verification, DomainError> {
            Ok(Verification::Mismatch)
        }
    }

    #[async_trait]
    impl HealthCheck for Nobody {
        fn name(&self) -> &'static str {
            "database"
        }
        async fn check(&self) -> Result<(), DomainError> {
            Ok(())
        }
    }

    fn state() -> HttpState {
        HttpState {
            accounts: Accounts::new(Arc::new(Nobody), Arc::new(Nobody)),
            readiness: Readiness::new(vec![Arc::new(Nobody)]),
            metrics: Metrics::new().unwrap(),
            body: BodyLimits::default(),
            cors: CorsPolicy::default(),
            security: SecurityHeaders {
                hsts_max_age_secs: 60,
            },
            openapi: "{}".to_owned(),
        }
    }

    async fn boom() -> HttpResponse {
        panic!("secret-detail-from-a-panic");
    }

    async fn ok() -> HttpResponse {
        HttpResponse::Ok().finish()
    }

    static TEST_ENDPOINTS: &[routes::Endpoint] = &[
        routes::Endpoint {
            method: Method::GET,
            path: "/boom",
            documented: true,
            route: || web::route().to(boom),
        },
        routes::Endpoint {
            method: Method::GET,
            path: "/two",
            documented: true,
            route: || web::route().to(ok),
        },
        routes::Endpoint {
            method: Method::PATCH,
            path: "/two",
            documented: true,
            route: || web::route().to(ok),
        },
    ];

    #[actix_web::test]
    async fn a_panicking_handler_is_a_500_that_leaks_nothing() {
        let app = http_test::init_service(build(state(), TEST_ENDPOINTS)).await;
        let res = http_test::call_service(
            &app,
            http_test::TestRequest::get().uri("/boom").to_request(),
        )
        .await;
        assert_eq!(res.status(), 500);
        let id = res
            .headers()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(res.headers().get("x-frame-options").unwrap(), "DENY");
        let body: serde_json::Value = http_test::read_body_json(res).await;
        assert_eq!(body["error"]["code"], "INTERNAL_ERROR");
        assert_eq!(body["error"]["request_id"], id.as_str());
        assert!(!body.to_string().contains("secret-detail"), "{body}");
        // The worker survives: the next request is served.
        let res =
            http_test::call_service(&app, http_test::TestRequest::get().uri("/two").to_request())
                .await;
        assert_eq!(res.status(), 200);
    }

    #[actix_web::test]
    async fn allow_lists_every_method_of_the_path() {
        let app = http_test::init_service(build(state(), TEST_ENDPOINTS)).await;
        let res = http_test::call_service(
            &app,
            http_test::TestRequest::delete().uri("/two").to_request(),
        )
        .await;
        assert_eq!(res.status(), 405);
        assert_eq!(res.headers().get("allow").unwrap(), "GET, PATCH");
    }

    #[test]
    fn the_document_covers_every_served_route() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json().unwrap()).unwrap();
        for (method, path) in served_routes() {
            let op = &doc["paths"][path][method.as_str().to_lowercase()];
            assert!(
                op.is_object(),
                "{method} {path} is served but not documented"
            );
        }
    }
}
