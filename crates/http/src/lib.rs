//! Confab's HTTP layer on actix-web: routes, extractors, middleware, the
//! error shape and the OpenAPI document.
//!
//! Handlers see use cases (`confab-app`) and domain types, never an
//! adapter. [`app`] builds the whole application from an [`HttpState`];
//! the binary binds it to a listener.

mod auth;
mod client;
mod error;
mod extract;
mod fields;
mod metrics;
mod middleware;
mod negotiate;
mod openapi;
mod rendered;
mod routes;
mod sse;
mod stream_schema;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, web};
use confab_app::{Accounts, Conversations, Readiness};
use utoipa_swagger_ui::{Config, SwaggerUi};

pub use auth::{AdminUser, AuthUser};
pub use client::TrustedProxies;
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use extract::{BodyLimits, Json, MaybeJson};
pub use metrics::{Metrics, metrics_routes};
pub use middleware::{
    AllowedHosts, CorsPolicy, DeprecatedRoutes, DeprecationNotice, IdempotencyPolicy, RateTiers,
    RequestId, SecurityHeaders,
};
pub use openapi::{ApiDoc, openapi_json, served_openapi_json};
pub use routes::page::WebPage;
pub use routes::served_routes;
pub use sse::SseSettings;

/// Everything the HTTP layer needs, built by the binary. Cloned once per
/// worker thread.
#[derive(Clone)]
pub struct HttpState {
    /// Account use cases.
    pub accounts: Accounts,
    /// Conversation use cases.
    pub conversations: Conversations,
    /// Server-Sent Events settings.
    pub sse: SseSettings,
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
    /// The rate limiter.
    pub limiter: std::sync::Arc<dyn confab_ports::RateLimiter>,
    /// The general limits.
    pub rate_tiers: RateTiers,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// `Idempotency-Key`: where keys are kept and for how long.
    pub idempotency: IdempotencyPolicy,
    /// Route prefixes marked deprecated, and their notices.
    pub deprecated: DeprecatedRoutes,
    /// Whether the chat page is served at `/`.
    pub web: WebPage,
}

/// The one state of the application: what the binary built, and the class
/// of every path. Registered once; handlers and extractors take it as
/// [`State`], middlewares hold it.
pub(crate) struct AppState {
    /// What the binary built.
    pub(crate) http: HttpState,
    /// The class of every path, from the endpoint table.
    pub(crate) routes: routes::RouteClasses,
    /// This worker's rendered bodies of cached reads.
    pub(crate) rendered: rendered::RenderedBodies,
}

impl std::ops::Deref for AppState {
    type Target = HttpState;

    fn deref(&self) -> &HttpState {
        &self.http
    }
}

/// The application state as handlers extract it.
pub(crate) type State = web::Data<AppState>;

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
    let state = web::Data::new(AppState {
        http: state,
        routes: routes::RouteClasses::new(endpoints),
        rendered: rendered::RenderedBodies::default(),
    });
    // Each middleware holds the state itself: none can find it missing.
    let (idempotency, rate_limit, cors, deprecated, security, draining, telemetry, compress) = (
        state.clone(),
        state.clone(),
        state.clone(),
        state.clone(),
        state.clone(),
        state.clone(),
        state.clone(),
        state.clone(),
    );
    App::new()
        .app_data(state)
        .app_data(web::PathConfig::default().error_handler(|err, _| {
            ApiError::malformed(None, extract::describe_parameters("path", &err)).into()
        }))
        .app_data(web::QueryConfig::default().error_handler(|err, _| {
            ApiError::malformed(None, extract::describe_parameters("query", &err)).into()
        }))
        .configure(|cfg| routes::configure(cfg, endpoints))
        .service(SwaggerUi::new("/docs/{_:.*}").config(Config::new(["/api/v1/openapi.json"])))
        .default_service(web::to(routes::not_found))
        // Inside the rate limit: a replay costs a token too, and the
        // caller is known by then.
        .wrap(from_fn(move |req, next| {
            middleware::idempotency(idempotency.clone(), req, next)
        }))
        .wrap(from_fn(move |req, next| {
            middleware::rate_limit(rate_limit.clone(), req, next)
        }))
        .wrap(from_fn(move |req, next| {
            middleware::cors(cors.clone(), req, next)
        }))
        .wrap(from_fn(move |req, next| {
            middleware::deprecation(deprecated.clone(), req, next)
        }))
        .wrap(from_fn(move |req, next| {
            middleware::security_headers(security.clone(), req, next)
        }))
        .wrap(from_fn(move |req, next| {
            middleware::close_while_draining(draining.clone(), req, next)
        }))
        .wrap(from_fn(move |req, next| {
            middleware::telemetry(telemetry.clone(), req, next)
        }))
        .wrap(from_fn(middleware::request_id))
        // Outermost: it sees every body as finally sent, error shapes too.
        .wrap(from_fn(move |req, next| {
            middleware::compress(compress.clone(), req, next)
        }))
}

#[cfg(test)]
mod tests {
    //! The middleware stack around handlers the API doesn't have: one that
    //! panics, and a path with two methods.

    use std::sync::Arc;

    use actix_web::http::Method;
    use actix_web::test as http_test;
    use actix_web::{HttpResponse, web};
    use confab_app::{
        AccountPorts, AccountRules, Accounts, ConversationPorts, ConversationRules, LoginFailures,
        Readiness, SeparateAdmission,
    };
    use confab_domain::ModelSlug;
    use confab_ports::RatePolicy;
    use confab_testkit::{Inert, ManualClock, MemoryStore};

    use super::*;

    fn conversations(store: &Arc<MemoryStore>) -> Conversations {
        Conversations::new(
            ConversationPorts {
                conversations: store.clone(),
                messages: store.clone(),
                model: None,
                log: Arc::new(Inert),
                cache: Arc::new(Inert),
                resume_tokens: Arc::new(Inert),
                limiter: Arc::new(Inert),
                clock: Arc::new(ManualClock::default()),
                usage: store.clone(),
                blocklist: Arc::new(Inert),
            },
            ConversationRules {
                default_model: ModelSlug::parse("m").unwrap(),
                allowed_models: vec![],
                max_tokens: 16,
                system_prompt: String::new(),
                prompt_budget_chars: 100,
                max_concurrent_per_user: 1,
                max_readers_per_user: 1,
                max_readers_per_answer: 1,
                generation_policy: policy("generation"),
                flush_interval: std::time::Duration::from_secs(1),
                title_generation: false,
                title_timeout: std::time::Duration::from_secs(1),
                cache_ttl: std::time::Duration::from_secs(1),
                stop_wait: std::time::Duration::from_secs(1),
                allowance: confab_domain::Allowance::default(),
            },
        )
    }

    fn policy(name: &str) -> RatePolicy {
        RatePolicy {
            name: name.into(),
            quota: 10,
            window: std::time::Duration::from_secs(60),
        }
    }

    fn state() -> HttpState {
        let store = Arc::new(MemoryStore::new());
        let ports = AccountPorts {
            users: store.clone(),
            hasher: Arc::new(Inert),
            tokens: Arc::new(Inert),
            refresh_tokens: store.clone(),
            blocklist: Arc::new(Inert),
            admission: Arc::new(SeparateAdmission::new(Arc::new(Inert), Arc::new(Inert))),
            limiter: Arc::new(Inert),
            failures: Arc::new(Inert),
            erasures: Vec::new(),
            usage: store.clone(),
            api_keys: Arc::new(Inert),
            key_secrets: Arc::new(Inert),
        };
        HttpState {
            conversations: conversations(&store),
            sse: SseSettings::default(),
            accounts: Accounts::new(
                ports,
                AccountRules {
                    per_ip: policy("login"),
                    login_failures: LoginFailures {
                        per_address: 5,
                        per_account: 20,
                        window: std::time::Duration::from_secs(60),
                    },
                    register_per_ip: policy("register"),
                    key_lookups: policy("api-key-lookups"),
                    register_overall: policy("register-all"),
                    refresh_reuse_grace: std::time::Duration::ZERO,
                },
            ),
            limiter: Arc::new(Inert),
            rate_tiers: RateTiers {
                anonymous: policy("anonymous"),
                user: policy("user"),
                admin: policy("admin"),
                api_key: policy("api-key"),
            },
            trusted_proxies: TrustedProxies::default(),
            idempotency: IdempotencyPolicy {
                store: Arc::new(Inert),
                ttl: std::time::Duration::from_secs(60),
                in_flight_ttl: std::time::Duration::from_secs(60),
                max_per_owner: 1,
            },
            readiness: Readiness::new(vec![store]),
            metrics: Metrics::new().unwrap(),
            body: BodyLimits::default(),
            cors: CorsPolicy::default(),
            security: SecurityHeaders {
                hsts_max_age_secs: 60,
                allowed_hosts: AllowedHosts::default(),
            },
            deprecated: DeprecatedRoutes::default(),
            web: WebPage { enabled: true },
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
            class: routes::RouteClass::Api,
            keys: routes::KeyUse::Refused,
            documented: true,
            keys_itself: false,
            produces: routes::Produces::Json,
            route: || web::route().to(boom),
        },
        routes::Endpoint {
            method: Method::GET,
            path: "/two",
            class: routes::RouteClass::Api,
            keys: routes::KeyUse::Refused,
            documented: true,
            keys_itself: false,
            produces: routes::Produces::Json,
            route: || web::route().to(ok),
        },
        routes::Endpoint {
            method: Method::PATCH,
            path: "/two",
            class: routes::RouteClass::Api,
            keys: routes::KeyUse::Refused,
            documented: true,
            keys_itself: false,
            produces: routes::Produces::Json,
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
        assert_eq!(res.headers().get("allow").unwrap(), "GET, HEAD, PATCH");
    }

    /// The `api_key` scheme is declared, and named with its scope on
    /// exactly the operations a key may call.
    #[test]
    fn the_document_names_the_api_key_scheme_where_a_key_may_call() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json().unwrap()).unwrap();
        let scheme = &doc["components"]["securitySchemes"]["api_key"];
        assert_eq!(scheme["scheme"], "bearer", "{scheme}");
        assert_eq!(
            doc["paths"]["/api/v1/models"]["get"]["security"],
            serde_json::json!([{"bearer": []}, {"api_key": ["models:read"]}])
        );
        assert_eq!(
            doc["paths"]["/backend-api/f/conversation"]["post"]["security"][1],
            serde_json::json!({"api_key": ["conversations:write"]})
        );
        assert!(doc["paths"]["/api/v1/models"]["get"]["responses"]["403"].is_object());
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let names_key = op["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|r| r.get("api_key").is_some()));
                let refused = path.starts_with("/api/v1/admin/")
                    || path.starts_with("/api/v1/auth/")
                    || path.starts_with("/api/v1/users/me/api-keys")
                    || path == "/api/v1/users/me"
                    || path == "/api/v1/users/me/password";
                if refused {
                    assert!(!names_key, "{method} {path} names the key scheme");
                } else if op["security"].is_array() {
                    assert!(names_key, "{method} {path} does not name the key scheme");
                }
            }
        }
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
