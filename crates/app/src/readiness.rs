//! Readiness: can this instance serve requests now?

use std::sync::Arc;

use confab_ports::HealthCheck;
use futures_util::future::join_all;

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

/// Checks every dependency concurrently. This use case sets no deadline of
/// its own (it has no timer); the HTTP probe bounds the whole check.
#[derive(Clone)]
pub struct Readiness {
    checks: Vec<Arc<dyn HealthCheck>>,
}

impl Readiness {
    /// Builds the use case over the dependencies to check.
    #[must_use]
    pub fn new(checks: Vec<Arc<dyn HealthCheck>>) -> Self {
        Self { checks }
    }

    /// Asks each dependency once; one that errs is reported not ok (and
    /// logged), never an error.
    pub async fn check(&self) -> ReadinessReport {
        let probes = self.checks.iter().map(|check| async move {
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
