//! The `confab` binary's library: configuration, the wiring of concrete
//! adapters into the use cases and the HTTP layer, and the server's life
//! cycle (bound listeners in, a shutdown future, graceful drain).
//!
//! This is the only crate that names concrete adapters.

mod application;
pub mod settings;
pub mod telemetry;
mod wiring;

pub use application::{Application, StartupError, create_admin, migrate, serve, shutdown_signal};
pub use settings::{ConfigError, Settings};
