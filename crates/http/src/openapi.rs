//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::OpenApi;

use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{Health, ReadinessBody, RegisterRequest, UserBody};

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
    ),
    components(schemas(ErrorBody, ErrorDetail, Health, ReadinessBody, RegisterRequest, UserBody)),
    tags(
        (name = "operations", description = "Liveness, readiness and this document."),
        (name = "auth", description = "Accounts and tokens."),
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
