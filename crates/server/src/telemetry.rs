//! One tracing subscriber for the process: JSON lines for machines,
//! readable lines on a terminal, always on stderr (stdout carries
//! `confab openapi`'s output), written in batches by a thread of their
//! own ([`LogSink`]).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

use crate::settings::{LogFormat, LogSettings};

mod json;
mod sink;

pub use json::{JsonLines, JsonSpanFields};
pub use sink::{LineWriter, LogSink};

/// The process's sink, once logging is set up: flushed at exit and after a
/// panic's line.
static SINK: OnceLock<LogSink> = OnceLock::new();

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter does not parse.
    #[error("invalid log filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A subscriber is already installed.
    #[error("logging is already initialised: {0}")]
    Init(#[from] tracing_subscriber::util::TryInitError),
    /// The log writer's thread could not start.
    #[error("the log writer could not start: {0}")]
    Writer(#[from] std::io::Error),
}

/// Installs the subscriber (`RUST_LOG` wins over `log.filter`) and a panic
/// hook that logs panics as events.
///
/// # Errors
/// [`TelemetryError`] when the filter is invalid or a subscriber exists.
pub fn init(settings: &LogSettings) -> Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => EnvFilter::try_new(value)?,
        _ => EnvFilter::try_new(&settings.filter)?,
    };
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let sink = LogSink::start(Box::new(std::io::stderr()))?;
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                fmt::layer()
                    .fmt_fields(JsonSpanFields)
                    .event_format(JsonLines)
                    .with_writer(sink.clone()),
            )
            .try_init()?;
    } else {
        registry
            .with(fmt::layer().with_writer(sink.clone()))
            .try_init()?;
    }
    let _ = SINK.set(sink);
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(ToString::to_string).unwrap_or_default();
        tracing::error!(location = %location, "panic: {}", panic_message(info));
        flush();
    }));
    Ok(())
}

/// Writes every log line still waiting (see [`LogSink`]): call before
/// the process exits.
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.flush();
    }
}

fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
