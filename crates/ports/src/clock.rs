//! The time of day, as the use cases read it.

use confab_domain::OffsetDateTime;

/// Where the use cases read the current time (the times they store:
/// creation and update times, closing times). Timers and timeouts are the
/// runtime's, not this.
pub trait Clock: Send + Sync + 'static {
    /// The current time, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}
