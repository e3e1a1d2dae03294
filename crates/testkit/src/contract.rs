//! The contract suites: one module per port, one `pub async fn` per
//! behaviour the port promises. Each function panics (fails its test) when
//! the adapter breaks the promise; none measures how long anything takes
//! (a timeout only guards against a hang).

use std::time::{Duration, Instant};

pub mod admission;
pub mod blocklist;
pub mod cache;
pub mod failures;
pub mod idempotency;
pub mod limiter;
pub mod stream_log;

/// How long a test waits for something that should happen at once, or for
/// an expiry that is due, before it fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(5);

/// Polls `done` until it holds; fails the test, naming `what`, after
/// [`PATIENCE`].
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut done: F) {
    let deadline = Instant::now() + PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
