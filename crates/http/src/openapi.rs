//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{
    Health, LoginRequest, ReadinessBody, RefreshRequest, RegisterRequest, TokenBody, UserBody,
    UserPage, UserPatch,
};

/// Declares the `bearer` security scheme the protected routes name.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The API description. Every route in [`crate::served_routes`] appears
/// here; a test keeps it that way.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Confab API",
        description = "REST + Server-Sent-Events backend for a chat assistant. \
                       Every error has the shape `{\"error\": {code, message, field?, request_id}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::routes::health::healthz,
        crate::routes::health::readyz,
        crate::routes::docs::openapi_json,
        crate::routes::auth::register,
        crate::routes::auth::login,
        crate::routes::auth::refresh,
        crate::routes::auth::logout,
        crate::routes::users::me,
        crate::routes::users::list,
        crate::routes::users::update,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, Health, ReadinessBody, RegisterRequest, LoginRequest, RefreshRequest,
        TokenBody, UserBody, UserPage, UserPatch,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "operations", description = "Liveness, readiness and this document."),
        (name = "auth", description = "Accounts and tokens."),
        (name = "users", description = "The caller's account."),
        (name = "admin", description = "Administration (role `admin`)."),
    ),
)]
pub struct ApiDoc;

/// The document as pretty-printed JSON (what `/api/v1/openapi.json` serves
/// and `confab openapi` prints).
///
/// # Errors
/// When serialisation fails (a programming error).
pub fn openapi_json() -> Result<String, serde_json::Error> {
    ApiDoc::openapi().to_pretty_json()
}
