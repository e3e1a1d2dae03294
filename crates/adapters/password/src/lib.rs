//! PBKDF2-HMAC-SHA256 password hashing behind [`confab_ports::PasswordHasher`],
//! and API key secrets behind [`confab_ports::ApiKeySecrets`] ([`KeySecrets`]).
//!
//! Hashes are PHC strings: `$pbkdf2-sha256$i=600000,l=32$<salt>$<hash>`
//! (base64 without padding), with a 16-byte random salt per password. The
//! work runs on tokio's blocking pool, at most `max_concurrent` at once and
//! with at most `max_waiting` callers queued: beyond that the hasher
//! answers [`DomainError::Unavailable`] at once, so a login flood is turned
//! away quickly instead of stalling every other request.
//!
//! This crate is small and non-generic on purpose: the workspace builds it
//! (and the hash crates it instantiates) with `opt-level = 3` even in debug
//! builds, so tests hash at close to release speed without lowering the
//! iteration count production uses.

mod api_key;
mod phc;

use std::sync::Arc;

use async_trait::async_trait;
use confab_domain::{DomainError, Password, PasswordHash};
use confab_ports::{PasswordHasher, Verification};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

pub use api_key::KeySecrets;
pub use phc::derive;

/// The iteration count OWASP recommends for PBKDF2-HMAC-SHA256, and the
/// least a production configuration may use.
pub const MIN_ITERATIONS: u32 = 600_000;

/// Why the hasher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HasherError {
    /// No random bytes for the dummy hash's salt.
    #[error("the system random source failed: {0}")]
    Random(String),
}

/// Hasher tuning, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct HasherOptions {
    /// PBKDF2 iterations for new hashes.
    pub iterations: u32,
    /// Hashes computed at once (about the number of cores).
    pub max_concurrent: usize,
    /// Callers allowed to wait for a slot; more are refused at once.
    pub max_waiting: usize,
}

/// The PBKDF2 hasher. Cheap to clone.
#[derive(Clone)]
pub struct Pbkdf2Hasher {
    inner: Arc<Inner>,
}

struct Inner {
    iterations: u32,
    /// One permit per caller admitted (computing or queued); a caller that
    /// gets none is refused at once.
    admission: Arc<Semaphore>,
    /// One permit per hash computing now.
    running: Arc<Semaphore>,
    /// Verified against when the user is unknown, so that costs the same.
    dummy: phc::Phc,
}

impl Pbkdf2Hasher {
    /// Builds a hasher; computes one dummy hash (one hash's time).
    ///
    /// # Errors
    /// [`HasherError::Random`] when no salt can be drawn.
    pub fn new(options: HasherOptions) -> Result<Self, HasherError> {
        let dummy = phc::Phc::new(b"confab-dummy-password", options.iterations)
            .map_err(|e| HasherError::Random(e.to_string()))?;
        let running = options.max_concurrent.max(1);
        Ok(Self {
            inner: Arc::new(Inner {
                iterations: options.iterations,
                admission: Arc::new(Semaphore::new(running + options.max_waiting)),
                running: Arc::new(Semaphore::new(running)),
                dummy,
            }),
        })
    }

    /// Runs `work` on the blocking pool once a slot is free, or refuses at
    /// once when too many callers are already admitted.
    ///
    /// Both permits are owned: a caller cancelled while queued gives its
    /// place back, and a hash whose caller went away keeps its slot until
    /// the computation really ends, so the bound holds under cancellation.
    async fn bounded<T, F>(&self, work: F) -> Result<T, DomainError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> T + Send + 'static,
    {
        let Ok(admitted) = Arc::clone(&self.inner.admission).try_acquire_owned() else {
            tracing::warn!("password hashing capacity exhausted; refusing");
            return Err(DomainError::unavailable(
                "password hashing capacity exhausted",
            ));
        };
        let running = Arc::clone(&self.inner.running)
            .acquire_owned()
            .await
            .map_err(DomainError::internal)?;
        let inner = Arc::clone(&self.inner);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _permits = (admitted, running);
            let _entered = span.enter();
            work(&inner)
        })
        .await
        .map_err(DomainError::internal)
    }
}

#[async_trait]
impl PasswordHasher for Pbkdf2Hasher {
    async fn hash(&self, password: &Password) -> Result<PasswordHash, DomainError> {
        let secret = password.expose().as_bytes().to_vec();
        self.bounded(move |inner| phc::Phc::new(&secret, inner.iterations))
            .await?
            .map(|phc| PasswordHash::new(phc.to_string()))
            .map_err(|e| DomainError::internal(e.to_string()))
    }

    async fn verify(
        &self,
        password: &Password,
        hash: Option<&PasswordHash>,
    ) -> Result<Verification, DomainError> {
        let secret = password.expose().as_bytes().to_vec();
        let stored = hash.map(|h| phc::Phc::parse(h.as_str()));
        self.bounded(move |inner| {
            let (phc, real) = match &stored {
                Some(Some(phc)) => (phc, true),
                // Unknown user or unreadable hash: spend the same time, fail.
                Some(None) | None => (&inner.dummy, false),
            };
            let computed = derive(&secret, phc.salt(), phc.iterations());
            let same: bool = computed.ct_eq(phc.hash()).into();
            match (real && same, phc.iterations() < inner.iterations) {
                (false, _) => Verification::Mismatch,
                (true, false) => Verification::Match,
                (true, true) => Verification::MatchNeedsRehash,
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hasher(iterations: u32) -> Pbkdf2Hasher {
        Pbkdf2Hasher::new(HasherOptions {
            iterations,
            max_concurrent: 2,
            max_waiting: 8,
        })
        .unwrap()
    }

    fn pw(s: &str) -> Password {
        Password::presented(s).unwrap()
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let h = hasher(MIN_ITERATIONS);
        let hash = h.hash(&pw("correct horse battery")).await.unwrap();
        assert!(hash.as_str().starts_with("$pbkdf2-sha256$i=600000,l=32$"));
        assert_eq!(
            h.verify(&pw("correct horse battery"), Some(&hash))
                .await
                .unwrap(),
            Verification::Match
        );
        assert_eq!(
            h.verify(&pw("correct horse batterY"), Some(&hash))
                .await
                .unwrap(),
            Verification::Mismatch
        );
    }

    #[tokio::test]
    async fn salts_differ() {
        let h = hasher(1_000);
        let a = h.hash(&pw("same password")).await.unwrap();
        let b = h.hash(&pw("same password")).await.unwrap();
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn older_parameters_ask_for_a_rehash() {
        let old = hasher(1_000).hash(&pw("long enough")).await.unwrap();
        let current = hasher(MIN_ITERATIONS);
        assert_eq!(
            current
                .verify(&pw("long enough"), Some(&old))
                .await
                .unwrap(),
            Verification::MatchNeedsRehash
        );
    }

    #[tokio::test]
    async fn unknown_user_and_garbage_hash_never_match() {
        let h = hasher(1_000);
        assert_eq!(
            h.verify(&pw("confab-dummy-password"), None).await.unwrap(),
            Verification::Mismatch
        );
        let garbage = PasswordHash::new("$2b$12$notpbkdf2".into());
        assert_eq!(
            h.verify(&pw("anything"), Some(&garbage)).await.unwrap(),
            Verification::Mismatch
        );
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let h = Pbkdf2Hasher::new(HasherOptions {
            iterations: MIN_ITERATIONS,
            max_concurrent: 1,
            max_waiting: 0,
        })
        .unwrap();
        let busy = h.clone();
        let first = tokio::spawn(async move { busy.hash(&pw("first password")).await });
        // Wait until the first hash holds the only slot.
        while h.inner.running.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let err = h.hash(&pw("second password")).await.unwrap_err();
        assert!(matches!(err, DomainError::Unavailable(_)));
        assert!(first.await.unwrap().is_ok());
    }

    async fn wait_for(cond: impl Fn() -> bool) {
        while !cond() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn a_cancelled_waiter_gives_its_place_back() {
        let h = Pbkdf2Hasher::new(HasherOptions {
            iterations: MIN_ITERATIONS,
            max_concurrent: 1,
            max_waiting: 1,
        })
        .unwrap();
        let first = tokio::spawn({
            let h = h.clone();
            async move { h.hash(&pw("first password")).await }
        });
        wait_for(|| h.inner.running.available_permits() == 0).await;
        let waiter = tokio::spawn({
            let h = h.clone();
            async move { h.hash(&pw("second password")).await }
        });
        wait_for(|| h.inner.admission.available_permits() == 0).await;
        waiter.abort();
        let _ = waiter.await;
        // The aborted waiter's place is free again: a new caller is queued, not refused.
        assert!(h.hash(&pw("third password")).await.is_ok());
        assert!(first.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_hash_whose_caller_left_keeps_its_slot_until_done() {
        let h = Pbkdf2Hasher::new(HasherOptions {
            iterations: MIN_ITERATIONS,
            max_concurrent: 1,
            max_waiting: 0,
        })
        .unwrap();
        let caller = tokio::spawn({
            let h = h.clone();
            async move { h.hash(&pw("abandoned password")).await }
        });
        wait_for(|| h.inner.running.available_permits() == 0).await;
        caller.abort();
        let _ = caller.await;
        // The computation still runs, so the bound still counts it.
        let err = h.hash(&pw("another password")).await.unwrap_err();
        assert!(matches!(err, DomainError::Unavailable(_)));
        wait_for(|| h.inner.running.available_permits() == 1).await;
        assert!(h.hash(&pw("another password")).await.is_ok());
    }
}
