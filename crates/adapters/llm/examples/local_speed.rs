//! Time to first token and tokens per second of the built-in model, with
//! the weights as stored (Q4_1) and re-quantized to Q8_0, on 1 and 2
//! threads, one generation alone and two at once.
//!
//! `cargo run --release -p confab-llm --example local_speed [-- MODEL.gguf]`
//!
//! candle sizes its thread pool once per process from the environment, so
//! each configuration runs in a child process started with
//! `RAYON_NUM_THREADS` (and `CANDLE_NUM_THREADS`) set.
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use confab_domain::ModelSlug;
use confab_llm::{LocalModel, LocalSettings};
use confab_ports::{ChatModel, CompletionRequest, LlmEvent, PromptRole, PromptTurn, Usage};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Tokens generated per measured completion.
const TOKENS: u32 = 128;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--child") => {
            let quant = args.next().ok_or("quantization")?;
            let model = args.next().ok_or("model")?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?
                .block_on(child(&quant, PathBuf::from(model)))
        }
        model => parent(model.map_or_else(default_model, PathBuf::from)),
    }
}

fn default_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Runs every configuration in a child process and prints a table.
fn parent(model: PathBuf) -> Result<()> {
    let exe = std::env::current_exe()?;
    let file = model.file_name().map_or_else(
        || model.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    println!("model file: `{file}`\n");
    println!(
        "| weights | threads | load | first token (short prompt) | tok/s alone, greedy | \
         tok/s alone, default sampling | tok/s 2 at once, greedy (total) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for quant in ["q4_1", "q8_0"] {
        for threads in ["1", "2"] {
            let output = Command::new(&exe)
                .arg("--child")
                .arg(quant)
                .arg(&model)
                .env("RAYON_NUM_THREADS", threads)
                .env("CANDLE_NUM_THREADS", threads)
                .output()?;
            if !output.status.success() {
                return Err(format!(
                    "{quant} on {threads} threads failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                )
                .into());
            }
            print!("{}", String::from_utf8_lossy(&output.stdout));
        }
    }
    Ok(())
}

/// A greedy request (temperature 0).
fn request(text: &str, max_tokens: u32) -> Result<CompletionRequest> {
    Ok(CompletionRequest {
        model: ModelSlug::parse("local")?,
        turns: vec![PromptTurn {
            role: PromptRole::User,
            text: text.to_owned(),
        }],
        temperature: Some(0.0),
        max_tokens,
    })
}

/// What one completion took.
struct Run {
    first_token: Duration,
    /// After the first token.
    rest: Duration,
    usage: Usage,
}

impl Run {
    /// Tokens per second after the first one.
    fn rate(&self) -> f64 {
        f64::from(self.usage.completion_tokens.saturating_sub(1)) / self.rest.as_secs_f64()
    }
}

async fn complete(model: &LocalModel, request: CompletionRequest) -> Result<Run> {
    let started = Instant::now();
    let mut stream = model.complete(request).await?;
    let mut first_token = None;
    loop {
        match stream.next().await?.ok_or("the stream ended early")? {
            LlmEvent::Text(_) => {
                first_token.get_or_insert_with(|| started.elapsed());
            }
            LlmEvent::Finished { usage, .. } => {
                let first_token = first_token.ok_or("no text")?;
                return Ok(Run {
                    first_token,
                    rest: started.elapsed() - first_token,
                    usage: usage.ok_or("no usage")?,
                });
            }
        }
    }
}

/// One configuration: this process's threads, `quant` weights.
async fn child(quant: &str, path: PathBuf) -> Result<()> {
    let mut settings = LocalSettings::new(path);
    settings.requantize_q8 = quant == "q8_0";
    settings.max_concurrent = 2;
    let started = Instant::now();
    let model = tokio::task::spawn_blocking(move || LocalModel::load(settings)).await??;
    let load = started.elapsed();
    let long = "Write a long story about a dragon who learns to bake bread.";

    // Warm up (first-use allocations, caches).
    complete(&model, request("Hi", 4)?).await?;
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(
            complete(&model, request("What is 2+2?", 1)?)
                .await?
                .first_token,
        );
    }
    first.sort();
    let first_token = first.get(first.len() / 2).copied().unwrap_or_default();

    let alone = complete(&model, request(long, TOKENS)?).await?;
    let mut sampled = request(long, TOKENS)?;
    sampled.temperature = None;
    let sampled = complete(&model, sampled).await?;

    let started = Instant::now();
    let (a, b) = tokio::join!(
        complete(&model, request(long, TOKENS)?),
        complete(
            &model,
            request("Explain how a rainbow forms, in detail.", TOKENS)?
        ),
    );
    let (a, b) = (a?, b?);
    let together = f64::from(a.usage.completion_tokens + b.usage.completion_tokens)
        / started.elapsed().as_secs_f64();

    println!(
        "| {quant} | {} | {:.2} s | {:.0} ms | {:.1} ({} tokens) | {:.1} ({} tokens) | {:.1} |",
        model.threads(),
        load.as_secs_f64(),
        first_token.as_secs_f64() * 1000.0,
        alone.rate(),
        alone.usage.completion_tokens,
        sampled.rate(),
        sampled.usage.completion_tokens,
        together,
    );
    Ok(())
}
