//! The OpenAPI document and the way to the interactive docs.

use actix_web::HttpResponse;
use actix_web::http::header::LOCATION;

use crate::State;

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json")),
)]
pub(crate) async fn openapi_json(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi.clone())
}

/// `/docs` → `/docs/`, where the bundled Swagger UI lives.
pub(crate) async fn docs_redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((LOCATION, "/docs/"))
        .finish()
}
