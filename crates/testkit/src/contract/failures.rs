//! What every [`FailureCounter`] promises: each key counts its own
//! failures, in a window that opens at the first and is forgotten when it
//! ends; a clear forgets one key; concurrent failures are all counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use confab_ports::{FailureCount, FailureCounter};

use super::eventually;

/// The adapter under test, shared with the tasks a test spawns.
pub type Adapter = Arc<dyn FailureCounter>;

const MINUTE: Duration = Duration::from_secs(60);

/// `names`, made unique to this call: adapters on a shared store (Redis)
/// keep keys a while, and tests run side by side.
fn keys(names: &[&str]) -> Vec<String> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let run = format!("{since}-{}-{call}", std::process::id());
    names.iter().map(|n| format!("{run}:{n}")).collect()
}

async fn failures(counter: &dyn FailureCounter, keys: &[String]) -> Vec<u32> {
    counter
        .counts(keys)
        .await
        .expect("counts")
        .iter()
        .map(|c| c.failures)
        .collect()
}

/// A key never recorded has no failures and nothing to wait for.
pub async fn an_unknown_key_has_no_failures(counter: &dyn FailureCounter) {
    let k = keys(&["a", "b"]);
    assert_eq!(
        counter.counts(&k).await.expect("counts"),
        [FailureCount::default(); 2]
    );
    assert_eq!(counter.counts(&[]).await.expect("counts"), []);
}

/// Each record counts one more failure of every key given, and no other;
/// the time left is within the window that opened at the first.
pub async fn failures_are_counted_per_key_within_the_window(counter: &dyn FailureCounter) {
    let k = keys(&["a", "b", "c"]);
    counter.record(&k[..2], MINUTE).await.expect("record");
    counter.record(&k[..1], MINUTE).await.expect("record");
    // A later, longer window does not move the one already open.
    counter.record(&k[..1], MINUTE * 60).await.expect("record");
    assert_eq!(failures(counter, &k).await, [3, 1, 0]);
    let counts = counter.counts(&k).await.expect("counts");
    for count in &counts[..2] {
        assert!(
            count.resets_in > MINUTE - Duration::from_secs(10) && count.resets_in <= MINUTE,
            "{count:?}"
        );
    }
    assert_eq!(counts[2].resets_in, Duration::ZERO);
}

/// When its window ends a key's count is forgotten, and its next failure
/// opens a new window.
pub async fn a_window_ends_and_the_count_is_forgotten(counter: &dyn FailureCounter) {
    let k = keys(&["a"]);
    let short = Duration::from_millis(200);
    counter.record(&k, short).await.expect("record");
    counter.record(&k, short).await.expect("record");
    assert_eq!(failures(counter, &k).await, [2]);
    eventually("the window ends", async || {
        failures(counter, &k).await == [0]
    })
    .await;
    counter.record(&k, MINUTE).await.expect("record");
    assert_eq!(failures(counter, &k).await, [1]);
    let left = counter.counts(&k).await.expect("counts")[0].resets_in;
    assert!(left > Duration::from_secs(50), "a new window: {left:?}");
}

/// A clear forgets that key only.
pub async fn clear_forgets_one_key(counter: &dyn FailureCounter) {
    let k = keys(&["a", "b"]);
    counter.record(&k, MINUTE).await.expect("record");
    counter.clear(&k[0]).await.expect("clear");
    counter.clear(&keys(&["never"])[0]).await.expect("clear");
    assert_eq!(failures(counter, &k).await, [0, 1]);
}

/// Failures recorded at once, from many tasks, are all counted.
pub async fn concurrent_failures_are_all_counted(counter: &Adapter) {
    let k = keys(&["a"]);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let counter = Arc::clone(counter);
            let k = k.clone();
            tokio::spawn(async move { counter.record(&k, MINUTE).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("the task ran").expect("record");
    }
    assert_eq!(failures(&**counter, &k).await, [50]);
}
