//! In-process adapters for the ports that hold shared state: the embedded
//! default, and the fallback when no Redis is configured. State lives in
//! this process only, so several instances do not share it.

mod blocklist;
mod cache;
mod failures;
mod idempotency;
mod limiter;
mod stream_log;

pub use blocklist::InMemoryBlocklist;
pub use cache::MemoryCache;
pub use failures::InMemoryFailures;
pub use idempotency::{InMemoryIdempotency, Limits as IdempotencyLimits};
pub use limiter::GovernorLimiter;
pub use stream_log::{MemoryStreamLog, StreamLogOptions};
