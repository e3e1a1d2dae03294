//! A panicking handler answers 500 in the error shape instead of dropping
//! the connection; the panic is logged with the request's span.
//!
//! It wraps each resource rather than the whole app: a clone of the request
//! (needed to answer after a panic) may only be taken once routing is done.

use std::panic::AssertUnwindSafe;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError};
use futures_util::FutureExt;

use crate::ApiError;

pub(crate) async fn catch_panic(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let http_req = req.request().clone();
    match AssertUnwindSafe(next.call(req)).catch_unwind().await {
        Ok(res) => res.map(ServiceResponse::map_into_boxed_body),
        Err(_) => {
            // The panic hook has logged the message and location already.
            let error = ApiError::internal("handler panicked");
            Ok(ServiceResponse::new(http_req, error.error_response()))
        }
    }
}
