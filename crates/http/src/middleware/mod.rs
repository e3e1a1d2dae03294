//! The middleware stack, outermost first: response compression, request id (and the error shape
//! of every response), telemetry, connection close while draining, security headers,
//! deprecation notices, CORS, rate limits, idempotency keys; and, around each resource,
//! panic catching.

mod compress;
mod cors;
mod deprecation;
mod drain;
mod idempotency;
mod panic;
mod rate_limit;
mod request_id;
mod security;
mod telemetry;

pub(crate) use compress::compress;
pub use cors::CorsPolicy;
pub(crate) use cors::cors;
pub(crate) use deprecation::deprecation;
pub use deprecation::{DeprecatedRoutes, DeprecationNotice};
pub(crate) use drain::close_while_draining;
pub use idempotency::IdempotencyPolicy;
pub(crate) use idempotency::{Keyed, MAX_KEY_LEN, claim, idempotency, requested_key};
pub(crate) use panic::catch_panic;
pub use rate_limit::RateTiers;
pub(crate) use rate_limit::rate_limit;
pub use request_id::RequestId;
pub(crate) use request_id::request_id;
pub(crate) use security::security_headers;
pub use security::{AllowedHosts, SecurityHeaders};
pub(crate) use telemetry::telemetry;
