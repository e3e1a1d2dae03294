//! End-to-end tests over real HTTP against a spawned server. Every test
//! runs once on SQLite and once on PostgreSQL, each on its own database.
//! Tests are named for the behaviour (or attack) they prove.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

/// Declares `sqlite::name` and `postgres::name` for each async test fn
/// `name(backend)` in the calling module.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(confab_sql::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(confab_sql::Backend::Postgres).await;
                }
            )*
        }
    };
}

mod api_keys;
mod auth;
mod balancer;
mod chat_cli;
mod client;
mod cluster;
mod compression;
mod contract;
mod conversations;
mod deletion;
mod docs;
mod edges;
mod errors;
mod export;
mod fake_llm;
mod headers;
mod history;
mod http1;
mod idempotency;
mod load;
mod local_model;
mod operations;
mod recovery;
mod redis;
mod redis_failover;
mod redis_outage;
mod register;
mod rolling;
mod search;
mod sessions;
mod settings;
mod shutdown;
mod stream;
mod tree;
mod usage;
mod web;
