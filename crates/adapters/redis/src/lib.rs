//! Redis adapters for the ports that hold shared state, so that any number
//! of Confab instances on one Redis behave as one service: the cache
//! ([`RedisCache`]), the rate limiter ([`RedisLimiter`], one atomic script
//! on Redis's clock), the token blocklist ([`RedisBlocklist`]) and the
//! stream log of running answers ([`RedisStreamLog`], on Redis Streams,
//! with a stop flag any instance can set and a lease the generating
//! instance renews).
//!
//! Every adapter shares one [`RedisPool`] (deadpool-redis) and writes under
//! its own key prefix, so a test (or a second deployment) can use its own
//! namespace on the same Redis. A Redis that can't be reached is
//! [`DomainError::Unavailable`](confab_domain::DomainError) from every
//! call: what that means for a request is the caller's policy (see
//! docs/operations.md).

mod admission;
mod blocklist;
mod cache;
mod erasure;
mod failures;
mod idempotency;
mod limiter;
mod pool;
mod stream_log;

pub use admission::RedisAdmission;
pub use blocklist::RedisBlocklist;
pub use cache::RedisCache;
pub use erasure::RedisErasure;
pub use failures::RedisFailures;
pub use idempotency::RedisIdempotency;
pub use limiter::RedisLimiter;
pub use pool::{RedisError, RedisPool, RedisSettings};
pub use stream_log::{RedisStreamLog, RedisStreamLogOptions};
