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
//! Plain `http` works out of the box. `https` needs the `tls` feature,
//! which turns on reqwest's rustls backend with the *ring* crypto
//! provider; see `install_tls_provider` (with that feature) for what it
//! means for every other reqwest client in the same binary.

mod client;
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
/// one is installed already (then that one stays). [`OpenAiCompatible::new`]
/// calls it.
///
/// With the `tls` feature, reqwest is built with `rustls-no-provider`, and
/// Cargo unifies that feature for every crate in the build: **any**
/// `reqwest::Client` built in the same binary before a provider is
/// installed panics. A binary or test harness that builds its own reqwest
/// clients should call this first.
#[cfg(feature = "tls")]
pub fn install_tls_provider() {
    // An error means a provider is installed already; reqwest uses it.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
