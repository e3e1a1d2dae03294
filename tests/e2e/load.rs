//! Bursts of concurrent sends (issue 11, "Redis mode collapses at 50
//! concurrent sends"): every send a new conversation of one user, the
//! model streaming 20 deltas 20 ms apart (`confab_e2e::load`). Each test
//! asserts completeness, never timings: every send a 200 whose stream
//! carries the whole text and ends `message_stream_complete`, `[DONE]`
//! with no `error`, and every answer saved `finished_successfully` with
//! that text. Each burst has a deadline that fails it (a stream still open
//! then counts as timed out), and the failure message counts what broke.
//!
//! In process: 100 sends to one server, on SQLite and PostgreSQL, with
//! and without Redis. As processes (`confab serve`, like `cluster.rs`),
//! two instances on one database, Redis and key prefix: 100 and 1,000
//! sends to one instance and 1,000 alternating between the two, on
//! PostgreSQL, and the 1,000 bursts also on one SQLite file. The bursts run
//! one at a time (they would only slow each other down on a small machine).

use std::sync::Arc;
use std::time::Duration;

use confab_e2e::fake_llm::FakeLlm;
use confab_e2e::load::{burst, burst_vars, paced_llm};
use confab_e2e::{TestApp, redis_url, spawn_app_with, spawn_app_with_redis, spawn_process};
use confab_sql::Backend;
use confab_sql::testing::TestDatabase;
use tokio::sync::Mutex;

/// Taken by every burst: one runs at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The longest a burst of 100 may take, start to last stream's end.
const CAP_100: Duration = Duration::from_secs(30);
/// The longest a burst of 1,000 may take.
const CAP_1000: Duration = Duration::from_secs(90);

on_both_backends!(
    a_hundred_sends_at_once_all_complete,
    a_hundred_sends_at_once_with_redis_all_complete,
);

/// 100 sends at once to one server, in process, with or without Redis.
async fn in_process(backend: Backend, redis: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let llm = paced_llm();
    let base = llm.base_url();
    let vars = burst_vars(&base);
    let app = if redis {
        spawn_app_with_redis(backend, &vars)
    } else {
        spawn_app_with(backend, &vars)
    };
    let token = app.user("ada").await;
    let sends = burst(&[&app], &token, 100, CAP_100).await;
    let what = format!("100 sends, in process, {backend:?}, Redis: {redis}");
    sends
        .assert_all_complete(&what, &app.db.store().await)
        .await;
}

async fn a_hundred_sends_at_once_all_complete(backend: Backend) {
    in_process(backend, false).await;
}

async fn a_hundred_sends_at_once_with_redis_all_complete(backend: Backend) {
    in_process(backend, true).await;
}

/// Instances A and B (`confab serve` processes) of one service on `db`,
/// one Redis and one key prefix, wired to `llm`.
async fn two_instances(db: TestDatabase, llm: &FakeLlm) -> (TestApp, TestApp) {
    let db = Arc::new(db);
    let prefix = format!("confab-load:{}:", uuid::Uuid::new_v4());
    let (base, url) = (llm.base_url(), redis_url());
    let mut vars = burst_vars(&base);
    vars.push(("REDIS_URL", url.as_str()));
    vars.push(("CONFAB__REDIS__KEY_PREFIX", prefix.as_str()));
    // A migrates first; B then finds the schema in place.
    let a = spawn_process(Arc::clone(&db), &vars).await;
    let b = spawn_process(db, &vars).await;
    (a, b)
}

/// `n` sends at once to a two-instance service on `db`: all to A, or
/// alternating A and B.
async fn on_two_instances(db: TestDatabase, n: usize, spread: bool, cap: Duration) {
    let _one = ONE_AT_A_TIME.lock().await;
    let backend = if db.url().starts_with("postgres") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    let llm = paced_llm();
    let (a, b) = two_instances(db, &llm).await;
    let token = a.user("ada").await;
    let targets: Vec<&TestApp> = if spread { vec![&a, &b] } else { vec![&a] };
    let sends = burst(&targets, &token, n, cap).await;
    let over = if spread { "A and B alternately" } else { "A" };
    let what = format!("{n} sends to {over} of two processes, {backend:?} + Redis");
    sends.assert_all_complete(&what, &a.db.store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_hundred_sends_to_one_instance_all_complete() {
    on_two_instances(TestDatabase::postgres(), 100, false, CAP_100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_thousand_sends_to_one_instance_all_complete() {
    on_two_instances(TestDatabase::postgres(), 1000, false, CAP_1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_thousand_sends_over_two_instances_all_complete() {
    on_two_instances(TestDatabase::postgres(), 1000, true, CAP_1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_thousand_sends_over_two_instances_on_one_sqlite_file_all_complete() {
    on_two_instances(TestDatabase::sqlite(), 1000, true, CAP_1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_thousand_sends_to_one_instance_on_one_sqlite_file_all_complete() {
    on_two_instances(TestDatabase::sqlite(), 1000, false, CAP_1000).await;
}
