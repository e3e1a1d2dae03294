//! Confab's SQL store: users, conversations and messages on PostgreSQL or
//! SQLite through one diesel code path.
//!
//! The backend is chosen by the URL's scheme (`postgres://`, `postgresql://`
//! or `sqlite://`), never by trial: a refused PostgreSQL is a clear error,
//! not a silent new SQLite file. Diesel is synchronous, so every call runs on
//! the store's own threads (`executor`: readers, and one writer that
//! commits concurrent writes together), inside the caller's tracing span.

mod answer;
mod connection;
mod error;
mod executor;
mod migrate;
mod rows;
mod schema;
mod store;
mod target;
#[cfg(feature = "testing")]
pub mod testing;

pub use connection::PoolOptions;
pub use error::SqlError;
pub use store::SqlStore;
pub use target::{Backend, DatabaseTarget};
