//! Liveness and readiness.

use std::collections::BTreeMap;

use actix_web::HttpResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiError;
use crate::State;
use crate::error::ErrorBody;

/// How long `/readyz` waits for its dependencies.
const READINESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// Always `ok`: the process answers.
    #[schema(example = "ok")]
    status: String,
}

/// `GET /readyz` when ready.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReadinessBody {
    /// `ready`.
    #[schema(example = "ready")]
    status: String,
    /// Each dependency and its state (`ok`).
    #[schema(example = json!({"database": "ok"}))]
    checks: BTreeMap<String, String>,
}

/// Liveness: the process is up and serving HTTP. Checks no dependency.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process is alive.", body = Health)),
)]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".to_owned(),
    })
}

/// Readiness: the instance is not shutting down and every dependency (the
/// database) answers now.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Every dependency answers.", body = ReadinessBody),
        (status = 503, description = "The instance is shutting down (`not ready: shutting down`), or a dependency is down and the message names it.", body = ErrorBody),
    ),
)]
pub(crate) async fn readyz(state: State) -> Result<HttpResponse, ApiError> {
    let readiness = &state.readiness;
    // A balancer that sees this takes the instance out of rotation while
    // it still serves what it is sent (docs/operations.md, "Shutdown").
    if readiness.draining() {
        return Err(ApiError::unavailable("not ready: shutting down", 5));
    }
    // A hung dependency must not hang the probe that reports it.
    let Ok(report) = actix_web::rt::time::timeout(READINESS_TIMEOUT, readiness.check()).await
    else {
        return Err(ApiError::unavailable(
            "not ready: readiness checks timed out",
            5,
        ));
    };
    let down: Vec<&str> = report
        .dependencies
        .iter()
        .filter(|d| !d.ok)
        .map(|d| d.name)
        .collect();
    if !down.is_empty() {
        return Err(ApiError::unavailable(
            format!("not ready: {} unavailable", down.join(", ")),
            5,
        ));
    }
    let checks = report
        .dependencies
        .iter()
        .map(|d| (d.name.to_owned(), "ok".to_owned()))
        .collect();
    Ok(HttpResponse::Ok().json(ReadinessBody {
        status: "ready".to_owned(),
        checks,
    }))
}
