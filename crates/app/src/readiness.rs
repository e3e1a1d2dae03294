//! Readiness: can this instance serve requests now?

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use confab_ports::HealthCheck;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, join_all};

/// One dependency's state in a readiness report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyStatus {
    /// The dependency's name (`database`).
    pub name: &'static str,
    /// Whether it answered in time.
    pub ok: bool,
}

/// The state of every dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessReport {
    /// One entry per dependency, in registration order.
    pub dependencies: Vec<DependencyStatus>,
}

impl ReadinessReport {
    /// True when every dependency is ok.
    #[must_use]
    pub fn ready(&self) -> bool {
        self.dependencies.iter().all(|d| d.ok)
    }
}

/// A check in flight, shared by every caller that asks meanwhile.
type Running = Shared<BoxFuture<'static, ReadinessReport>>;

/// Checks every dependency concurrently. This use case sets no deadline of
/// its own (it has no timer); the HTTP probe bounds the whole check.
///
/// Callers that ask while a check runs share it: however many probes
/// arrive at once, one check (one database connection, one Redis round
/// trip) is in flight.
///
/// Once [`Readiness::drain`] is called (the instance is shutting down), the
/// instance is not ready whatever its dependencies say, so that a load
/// balancer's health check takes it out of rotation while it still serves.
#[derive(Clone)]
pub struct Readiness {
    checks: Arc<[Arc<dyn HealthCheck>]>,
    running: Arc<Mutex<Option<Running>>>,
    draining: Arc<AtomicBool>,
}

impl Readiness {
    /// Builds the use case over the dependencies to check.
    #[must_use]
    pub fn new(checks: Vec<Arc<dyn HealthCheck>>) -> Self {
        Self {
            checks: checks.into(),
            running: Arc::new(Mutex::new(None)),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the instance as shutting down: from now on it is never ready.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether [`Readiness::drain`] was called.
    #[must_use]
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Asks each dependency once (or joins the check in flight); one that
    /// errs is reported not ok (and logged), never an error.
    pub async fn check(&self) -> ReadinessReport {
        let running = {
            let mut slot = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            match slot.as_ref() {
                // A finished check nobody collected is stale: start anew.
                Some(running) if running.peek().is_none() => running.clone(),
                _ => {
                    let running = Self::run(Arc::clone(&self.checks)).boxed().shared();
                    *slot = Some(running.clone());
                    running
                }
            }
        };
        let report = running.clone().await;
        let mut slot = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|r| r.ptr_eq(&running)) {
            *slot = None;
        }
        report
    }

    async fn run(checks: Arc<[Arc<dyn HealthCheck>]>) -> ReadinessReport {
        let probes = checks.iter().map(|check| async move {
            let ok = match check.check().await {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(dependency = check.name(), error = %err, "dependency not ready");
                    false
                }
            };
            DependencyStatus {
                name: check.name(),
                ok,
            }
        });
        ReadinessReport {
            dependencies: join_all(probes).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use confab_domain::DomainError;
    use tokio::sync::Notify;

    use super::*;

    /// A dependency whose checks wait until released, counted.
    #[derive(Default)]
    struct Held {
        started: AtomicUsize,
        release: Notify,
    }

    #[async_trait]
    impl HealthCheck for Held {
        fn name(&self) -> &'static str {
            "held"
        }

        async fn check(&self) -> Result<(), DomainError> {
            self.started.fetch_add(1, Ordering::SeqCst);
            self.release.notified().await;
            Ok(())
        }
    }

    #[test]
    fn a_draining_instance_says_so_and_every_clone_sees_it() {
        let readiness = Readiness::new(Vec::new());
        let probe = readiness.clone();
        assert!(!probe.draining());
        readiness.drain();
        assert!(probe.draining());
    }

    #[tokio::test]
    async fn callers_at_once_share_one_check_and_later_ones_check_again() {
        let held = Arc::new(Held::default());
        let readiness = Readiness::new(vec![held.clone()]);
        let callers: Vec<_> = (0..50)
            .map(|_| {
                let readiness = readiness.clone();
                tokio::spawn(async move { readiness.check().await })
            })
            .collect();
        while held.started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(held.started.load(Ordering::SeqCst), 1);
        held.release.notify_waiters();
        for caller in callers {
            assert!(caller.await.unwrap().ready());
        }
        // The next caller does not get the old answer: it checks again.
        let again = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.check().await }
        });
        while held.started.load(Ordering::SeqCst) == 1 {
            tokio::task::yield_now().await;
        }
        held.release.notify_waiters();
        assert!(again.await.unwrap().ready());
        assert_eq!(held.started.load(Ordering::SeqCst), 2);
    }
}
