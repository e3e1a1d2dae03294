//! One span per request (named by route template, never the raw path),
//! one log line when it completes, and the request metrics.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use tracing::Instrument;

use crate::State;
use crate::middleware::RequestId;

/// The standard methods by name, any other as `OTHER`: a client must not
/// be able to mint label values (and memory) with made-up methods.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

pub(crate) async fn telemetry(
    state: State,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let start = Instant::now();
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default();
    // The template (`/api/v1/conversations/{id}`), so ids never become
    // label values or log fields; unknown paths share one label.
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method()).to_owned();
    let span =
        tracing::info_span!("http", request_id = %request_id, method = %method, route = %route);
    let res = next.call(req).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    let elapsed = start.elapsed();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(parent: &span, status, latency_ms, "request completed");
    } else {
        tracing::info!(parent: &span, status, latency_ms, "request completed");
    }
    state
        .metrics
        .observe(&route, &method, status, elapsed.as_secs_f64());
    Ok(res)
}
