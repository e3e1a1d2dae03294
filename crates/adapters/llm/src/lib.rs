//! Chat models behind [`confab_ports::ChatModel`]: a streaming client for
//! any server that speaks OpenAI's `POST /chat/completions` with
//! `stream: true` — OpenAI itself, vLLM, llama.cpp's server, Ollama
//! (`http://127.0.0.1:11434/v1`) and the like — and, with the default
//! `local` feature, `LocalModel`: a small GGUF model (SmolLM2) run
//! in-process on the CPU (see its module for how).
//!
//! [`OpenAiCompatible`] sends the prompt as chat `messages` with
//! `max_tokens`, the temperature when one is set, and
//! `stream_options.include_usage`, then reads the server-sent events as
//! they arrive: each `data:` chunk's `choices[0].delta.content` becomes an
//! [`LlmEvent::Text`](confab_ports::LlmEvent::Text), and `data: [DONE]`
//! ends the completion with one
//! [`LlmEvent::Finished`](confab_ports::LlmEvent::Finished) carrying the
//! finish reason and the usage the server reported. The adapter also
//! enforces `max_tokens` itself, counting one token per text delta, and
//! drops the response when it is reached. Dropping the stream drops the
//! response, which closes the connection and so cancels the generation
//! upstream.
//!
//! Four timeouts bound a completion ([`OpenAiSettings`]): opening the
//! connection (`connect`), from sending the request to the first text
//! delta (`first token`), the gap between two reads once text streams
//! (`between tokens`), and the whole completion (`total`). Each surfaces
//! as [`LlmError::Timeout`](confab_ports::LlmError::Timeout) with that
//! name.
//!
//! Upstream text is logged, never relayed: an error status's body (at most
//! 4 KiB, control characters escaped) and an `{"error": …}` object in the
//! stream go to a `tracing` warning, and the caller gets only
//! [`LlmError::Upstream`](confab_ports::LlmError::Upstream) with the
//! status (0 for an error in the stream). Protocol errors describe what was
//! wrong without quoting the upstream; the API key is never logged or
//! printed, nor are credentials in the base URL.
//!
//! The client is the crate's own lean HTTP/1.1 client (`http`): a
//! completion's connection is read by the task that reads the stream, with
//! a small buffer (see ADR 0005, tenth pass, for why not reqwest), and
//! once its body has ended it is kept for the next completion when the
//! server keeps it open ([`OpenAiSettings::pool_max_idle`]). Plain
//! `http` works out of the box. `https` needs the `tls` feature: rustls with
//! the *ring* provider and the platform's certificate verifier. Credentials
//! in the base URL are sent as `Basic` authorization when no API key is set.

mod client;
mod http;
#[cfg(feature = "local")]
mod local;
mod settings;
mod sse;
mod stream;

pub use client::OpenAiCompatible;
#[cfg(feature = "local")]
pub use local::{LoadingModel, LocalError, LocalModel, LocalSettings, default_threads};
pub use settings::{LlmSetupError, OpenAiSettings};

/// Installs rustls' *ring* crypto provider as the process default, unless
/// one is installed already (then that one stays).
///
/// [`OpenAiCompatible`] names its provider itself and needs no default. A
/// binary that also builds reqwest clients with `rustls-no-provider` (as
/// the server does, for `confab chat`) needs one installed before the
/// first: Cargo unifies that feature for every crate in the build, and a
/// `reqwest::Client` built without a default provider panics.
#[cfg(feature = "tls")]
pub fn install_tls_provider() {
    // An error means a provider is installed already; reqwest uses it.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
