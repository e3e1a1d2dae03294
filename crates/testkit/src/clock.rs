//! A clock a test sets by hand.

use std::sync::Mutex;
use std::time::Duration;

use confab_domain::OffsetDateTime;
use confab_ports::Clock;

/// A [`Clock`] that tells the time it was given: it moves only when a test
/// calls [`ManualClock::set`] or [`ManualClock::advance`].
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
}

impl ManualClock {
    /// 2025-01-01T00:00:00Z: where [`ManualClock::default`] starts.
    pub const START_UNIX: i64 = 1_735_689_600;

    /// A clock showing `at`.
    #[must_use]
    pub fn at(at: OffsetDateTime) -> Self {
        Self {
            now: Mutex::new(at),
        }
    }

    /// Shows `at` from now on.
    pub fn set(&self, at: OffsetDateTime) {
        *self.lock() = at;
    }

    /// Moves the time on by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        *now += by;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OffsetDateTime> {
        self.now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::at(
            OffsetDateTime::from_unix_timestamp(Self::START_UNIX)
                .expect("a fixed, valid timestamp"),
        )
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_moves_only_when_told() {
        let clock = ManualClock::default();
        let start = clock.now();
        assert_eq!(start.unix_timestamp(), ManualClock::START_UNIX);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now() - start, Duration::from_millis(1500));
        clock.set(start);
        assert_eq!(clock.now(), start);
    }
}
