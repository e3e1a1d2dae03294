//! The OpenAPI document and the way to the interactive docs.

use actix_web::http::header::LOCATION;
use actix_web::{HttpResponse, web};

/// The rendered OpenAPI document (app data), built once at start-up.
#[derive(Debug, Clone)]
pub(crate) struct OpenApiJson(pub(crate) String);

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json")),
)]
pub(crate) async fn openapi_json(doc: web::Data<OpenApiJson>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}

/// `/docs` → `/docs/`, where the bundled Swagger UI lives.
pub(crate) async fn docs_redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((LOCATION, "/docs/"))
        .finish()
}
