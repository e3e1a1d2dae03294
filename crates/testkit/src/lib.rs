//! Test support for Confab: one contract suite per shared-state port,
//! written once and run against every adapter of that port (the in-process
//! one in `confab-memory`, the Redis one in `confab-redis`), so the adapters
//! cannot drift apart unnoticed.
//!
//! [`contract`] holds one module per port, with one `pub async fn` per
//! behaviour the port promises. Each port has a macro that expands to one
//! `#[tokio::test]` per behaviour, so every behaviour is a test of its own
//! name in each adapter's run:
//!
//! | port | macro | what it takes |
//! |---|---|---|
//! | `Cache` | [`cache_contract!`] | `|| async { adapter }` |
//! | `RateLimiter` | [`limiter_contract!`] | `|| async { adapter }` |
//! | `TokenBlocklist` | [`blocklist_contract!`] | `|| async { adapter }` |
//! | `IdempotencyStore` | [`idempotency_contract!`] | `|| async { adapter }` |
//! | `StreamLog` | [`stream_log_contract!`] | `|limits: Limits| async move { adapter }` |
//!
//! The closure is called once per test and must return a fresh adapter (a
//! Redis adapter on a key prefix of its own). The crate using a macro needs
//! `tokio` with its `macros` and `rt-multi-thread` features.
//!
//! For use-case tests that need no database and no model:
//!
//! - [`stores::MemoryStore`]: the store ports (users, conversations,
//!   messages, refresh tokens) in memory, with the semantics the SQL store
//!   is tested for;
//! - [`model::ScriptedModel`]: a `ChatModel` playing scripted replies
//!   (text pieces, an end, a failure, a pause, a hang) and recording its
//!   requests;
//! - [`clock::ManualClock`]: a `Clock` that moves when told;
//! - [`inert::Inert`]: the other ports of a state a test builds but never
//!   exercises.
//!
//! A dev-dependency only (the end-to-end harness, itself test code, is the
//! one exception): no crate may depend on it for its normal build
//! (`scripts/check-architecture.sh` checks that), and it depends on no
//! adapter.
//!
//! [`fake_llm`] is the project's one fake OpenAI-compatible chat-completions
//! server (real HTTP on 127.0.0.1, scripted per test), used by the
//! end-to-end harness, the LLM adapter's tests and the bench.

// A test kit: a broken promise fails the test that runs it, with a message
// saying which call failed.
#![allow(clippy::expect_used, clippy::panic)]

pub mod clock;
pub mod contract;
pub mod fake_llm;
pub mod inert;
pub mod model;
pub mod stores;

pub use clock::ManualClock;
pub use inert::Inert;
pub use model::{Reply, ScriptedModel, Step};
pub use stores::MemoryStore;

/// Expands to one test per behaviour of a port. Those of `$adapter` are
/// handed a fresh adapter (`&dyn Port`) made by calling `$make` with the
/// arguments `$args` (a parenthesised list); those of `$shared` the same,
/// shared (`&Arc<dyn Port>`, for tests that spawn tasks); those of
/// `$factory` `$make` itself (they make the adapters they need).
#[doc(hidden)]
#[macro_export]
macro_rules! __contract_tests {
    (
        $port:ident, $make:expr, $args:tt,
        adapter: [$($adapter:ident),* $(,)?],
        shared: [$($shared:ident),* $(,)?],
        factory: [$($factory:ident),* $(,)?] $(,)?
    ) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $adapter() {
                let make = $make;
                $crate::contract::$port::$adapter(&make $args .await).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $shared() {
                let make = $make;
                let adapter: $crate::contract::$port::Adapter =
                    ::std::sync::Arc::new(make $args .await);
                $crate::contract::$port::$shared(&adapter).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $factory() {
                $crate::contract::$port::$factory($make).await;
            }
        )*
    };
}

/// One test per behaviour of [`contract::failures`], each on a fresh
/// adapter made by `$make`, a closure `|| async { impl FailureCounter }`.
#[macro_export]
macro_rules! failure_counter_contract {
    ($make:expr $(,)?) => {
        $crate::__contract_tests!(
            failures, $make, (),
            adapter: [
                an_unknown_key_has_no_failures,
                failures_are_counted_per_key_within_the_window,
                a_window_ends_and_the_count_is_forgotten,
                clear_forgets_one_key,
            ],
            shared: [concurrent_failures_are_all_counted],
            factory: [],
        );
    };
}

/// One test per behaviour of [`contract::cache`], each on a fresh adapter
/// made by `$make`, a closure `|| async { impl Cache }`.
#[macro_export]
macro_rules! cache_contract {
    ($make:expr $(,)?) => {
        $crate::__contract_tests!(
            cache, $make, (),
            adapter: [
                a_missing_key_is_none,
                a_conversation_list_round_trips,
                a_history_round_trips,
                entries_expire_after_their_ttl,
                a_zero_ttl_stores_nothing_and_a_huge_one_is_honoured,
                versions_are_stable_until_bumped_then_grow,
                bump_all_moves_every_key_given,
            ],
            shared: [],
            factory: [],
        );
    };
}

/// One test per behaviour of [`contract::limiter`], each on a fresh
/// adapter made by `$make`, a closure `|| async { impl RateLimiter }`.
#[macro_export]
macro_rules! limiter_contract {
    ($make:expr $(,)?) => {
        $crate::__contract_tests!(
            limiter, $make, (),
            adapter: [
                a_bucket_empties_then_refuses_with_a_retry_time,
                keys_have_their_own_buckets,
                policies_with_different_names_have_their_own_buckets,
                a_bucket_refills_over_time,
                zero_quota_or_window_is_an_internal_error,
                a_quota_above_one_a_microsecond_limits_instead_of_failing,
            ],
            shared: [concurrent_checks_allow_exactly_the_quota],
            factory: [],
        );
    };
}

/// One test per behaviour of [`contract::blocklist`], each on a fresh
/// adapter made by `$make`, a closure `|| async { impl TokenBlocklist }`.
#[macro_export]
macro_rules! blocklist_contract {
    ($make:expr $(,)?) => {
        $crate::__contract_tests!(
            blocklist, $make, (),
            adapter: [
                a_blocked_token_is_refused_and_no_other,
                a_blocked_family_refuses_every_token_of_it,
                an_expiry_in_the_past_blocks_nothing,
                entries_lapse_when_their_tokens_expire,
                a_changed_user_has_a_new_version_and_no_other,
            ],
            shared: [],
            factory: [],
        );
    };
}

/// One test per behaviour of [`contract::idempotency`], each on a fresh
/// adapter made by `$make`, a closure `|| async { impl IdempotencyStore }`.
#[macro_export]
macro_rules! idempotency_contract {
    ($make:expr $(,)?) => {
        $crate::__contract_tests!(
            idempotency, $make, ($crate::contract::idempotency::STANDARD_CAP),
            adapter: [
                claim_complete_and_replay,
                both_outcomes_round_trip,
                another_fingerprint_is_a_mismatch,
                a_running_claim_is_in_flight,
                release_frees_the_key,
                a_lapsed_claim_can_be_claimed_again,
                a_lapsed_claim_cannot_be_completed,
                completed_outcomes_expire,
            ],
            shared: [concurrent_claims_have_one_winner],
            factory: [an_owner_at_the_cap_is_refused_and_nobody_else],
        );
    };
}

/// One test per behaviour of [`contract::stream_log`], each with adapters
/// made by `$make`, a closure
/// `|limits: confab_testkit::contract::stream_log::Limits| async move { impl StreamLog }`
/// that honours the limits it is given.
#[macro_export]
macro_rules! stream_log_contract {
    ($make:expr $(,)?) => {
        $crate::__contract_tests!(
            stream_log, $make, ($crate::contract::stream_log::Limits::STANDARD),
            adapter: [
                a_conversation_without_a_log_has_none,
                events_come_in_order_with_the_ids_append_gave,
                event_names_come_back_as_appended,
                append_all_appends_in_order,
                appending_needs_an_open_log,
                close_is_idempotent,
                opening_an_open_conversation_is_a_duplicate,
                ids_this_log_never_gave_are_refused,
                a_stop_reaches_only_its_own_log,
                a_reader_of_a_replaced_log_finishes_with_its_events,
            ],
            shared: [
                a_resumed_reader_gets_exactly_the_rest_then_live_events,
                many_concurrent_readers_each_see_everything,
                close_ends_waiting_readers,
                finish_closes_the_log_before_a_reader_has_its_last_events,
            ],
            factory: [
                closed_logs_expire_after_the_retention,
                open_logs_never_expire,
                a_full_log_refuses_more,
            ],
        );
    };
}
