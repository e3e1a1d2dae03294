//! The `confab` binary's library: configuration, the wiring of concrete
//! adapters into the use cases and the HTTP layer, and the server's life
//! cycle (bound listeners in, a shutdown future, graceful drain).
//!
//! This is the only crate that names concrete adapters.

mod application;
pub mod settings;
pub mod telemetry;
mod threads;
mod wiring;

pub use application::{Application, ShutdownSignals, StartupError, create_admin, migrate, serve};
pub use settings::{ConfigError, LlmProvider, LogFormat, RunEnvironment, Settings};

/// Installs the TLS crypto provider every HTTPS client in this binary uses
/// (the model client's, and any other `reqwest` client a test or tool
/// builds): call it before building one.
pub use confab_llm::install_tls_provider;
pub use threads::with_model_threads;
