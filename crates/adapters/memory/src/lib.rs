//! In-process adapters for the ports that hold shared state: the embedded
//! default, and the fallback when no Redis is configured. State lives in
//! this process only, so several instances do not share it.

mod blocklist;
mod limiter;

pub use blocklist::InMemoryBlocklist;
pub use limiter::GovernorLimiter;
