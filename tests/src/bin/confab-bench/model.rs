//! The built-in model through the HTTP API, and beside it llama.cpp's
//! server on the same model file when `LLAMA_SERVER_URL` names one (e.g.
//! `llama-server -m models/SmolLM2-135M-Instruct.Q4_1.gguf -t 2 --port
//! 8099` and `LLAMA_SERVER_URL=http://127.0.0.1:8099`).
//!
//! Both get the same conversation (SmolLM2's default system prompt and one
//! question), the same sampling (temperature 0.2, top-p 0.9, repeat penalty
//! 1.1 over 64 tokens, seed 42) and the same cap, one request at a time,
//! over loopback, and both are timed the same way, by the client: the time
//! to the first text from just before the request is sent, and the text
//! pieces after the first one divided by the time they took.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use confab_e2e::chat::message_body;
use confab_e2e::spawn_app_with;
use confab_sql::Backend;
use serde_json::{Value, json};

/// Tokens per measured answer.
const TOKENS: u32 = 128;
/// Short questions timed for the first token (the median is reported).
const FIRST_TOKEN_RUNS: usize = 5;
/// Long answers timed for tokens per second (the median is reported).
const RATE_RUNS: usize = 3;
/// The question whose first token is timed.
const SHORT: &str = "What is 2+2?";
/// The question whose answer runs to the cap.
const LONG: &str = "Write a long story about a dragon who learns to bake bread.";
/// SmolLM2's default system prompt, which Confab adds by itself.
const SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
/// The longest one answer may take.
const ANSWER_CAP: Duration = Duration::from_secs(120);

/// One server's figures.
pub(super) struct Figures {
    /// Which server.
    name: String,
    /// Median time to the first text of a short question, ms.
    first_token_ms: f64,
    /// Median text pieces per second after the first, long answers.
    rate: f64,
    /// Text pieces in each long answer.
    pieces: Vec<usize>,
}

/// One timed answer.
struct Answer {
    first: Duration,
    last: Duration,
    pieces: usize,
}

impl Answer {
    fn rate(&self) -> f64 {
        let span = (self.last - self.first).as_secs_f64();
        if self.pieces < 2 || span <= 0.0 {
            0.0
        } else {
            (self.pieces - 1) as f64 / span
        }
    }
}

/// Where the answers come from.
enum Server {
    /// Confab's send route, as a signed-in user.
    Confab { base: String, token: String },
    /// llama.cpp's OpenAI-compatible chat route.
    Llama { base: String },
}

impl Server {
    fn request(&self, client: &reqwest::Client, text: &str) -> reqwest::RequestBuilder {
        match self {
            Self::Confab { base, token } => client
                .post(format!("{base}/api/v1/conversations"))
                .bearer_auth(token)
                .json(&message_body(text)),
            Self::Llama { base } => {
                client
                    .post(format!("{base}/v1/chat/completions"))
                    .json(&json!({
                        "messages": [
                            {"role": "system", "content": SYSTEM},
                            {"role": "user", "content": text},
                        ],
                        "max_tokens": TOKENS,
                        "temperature": 0.2,
                        "top_p": 0.9,
                        "repeat_penalty": 1.1,
                        "repeat_last_n": 64,
                        "seed": 42,
                        "stream": true,
                    }))
            }
        }
    }

    /// The text in one SSE block, if it carries some.
    fn text(&self, block: &str) -> Option<String> {
        let mut event = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(name) = line.strip_prefix("event: ") {
                event = Some(name);
            } else if let Some(value) = line.strip_prefix("data: ") {
                data.push_str(value);
            }
        }
        let json: Value = serde_json::from_str(&data).ok()?;
        let text = match self {
            Self::Confab { .. } => {
                let op = &json["v"][0];
                let append = op["o"] == "append" && op["p"] == "/message/content/parts/0";
                (event == Some("delta") && append)
                    .then(|| op["v"].as_str())
                    .flatten()
            }
            Self::Llama { .. } => json["choices"][0]["delta"]["content"].as_str(),
        };
        text.filter(|t| !t.is_empty()).map(str::to_owned)
    }

    /// Sends `text` and reads the answer to its end.
    async fn answer(&self, client: &reqwest::Client, text: &str) -> Answer {
        let sent = Instant::now();
        let read = async {
            let mut res = self.request(client, text).send().await.expect("send");
            assert_eq!(
                res.status(),
                200,
                "{}",
                res.text().await.unwrap_or_default()
            );
            let (mut first, mut last, mut pieces) = (None, Duration::ZERO, 0);
            let mut buf = String::new();
            while let Some(bytes) = res.chunk().await.expect("read the stream") {
                let now = sent.elapsed();
                buf.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    if self.text(&block).is_some() {
                        first.get_or_insert(now);
                        last = now;
                        pieces += 1;
                    }
                }
            }
            Answer {
                first: first.expect("the answer had text"),
                last,
                pieces,
            }
        };
        tokio::time::timeout(ANSWER_CAP, read)
            .await
            .expect("an answer within the cap")
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

async fn figures(name: String, server: &Server) -> Figures {
    // A connection per request, for both: llama.cpp's server may close an
    // idle one that a pooled client would then reuse.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    // Warm up: first-use allocations, the cached system turn.
    let _ = server.answer(&client, "Hi").await;
    let mut first = Vec::new();
    for _ in 0..FIRST_TOKEN_RUNS {
        first.push(server.answer(&client, SHORT).await.first.as_secs_f64() * 1000.0);
    }
    let mut rates = Vec::new();
    let mut pieces = Vec::new();
    for _ in 0..RATE_RUNS {
        let a = server.answer(&client, LONG).await;
        rates.push(a.rate());
        pieces.push(a.pieces);
    }
    Figures {
        name,
        first_token_ms: median(first),
        rate: median(rates),
        pieces,
    }
}

/// Measures Confab's built-in model over its API and, when
/// `LLAMA_SERVER_URL` is set, llama.cpp's server.
pub(super) fn measure(runtime: &tokio::runtime::Runtime) -> Vec<Figures> {
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
    );
    let max_tokens = TOKENS.to_string();
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            ("CONFAB_LLM_PROVIDER", "local"),
            ("CONFAB__LLM__LOCAL__MODEL_PATH", model),
            ("CONFAB__LLM__MAX_TOKENS", max_tokens.as_str()),
            ("CONFAB__LLM__TITLE_GENERATION", "false"),
            ("CONFAB__LOG__FILTER", "warn"),
            ("CONFAB__GENERATION__PER_MINUTE", "100000"),
            ("CONFAB__RATE_LIMIT__USER_PER_MINUTE", "100000000"),
        ],
    );
    let threads = std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "?".to_owned());
    let mut all = Vec::new();
    runtime.block_on(async {
        let token = app.user("modelbench").await;
        let confab = Server::Confab {
            base: app.address.clone(),
            token,
        };
        all.push(
            figures(
                format!("Confab, built-in model (Q8_0 at load, {threads} threads)"),
                &confab,
            )
            .await,
        );
        if let Ok(base) = std::env::var("LLAMA_SERVER_URL") {
            let base = base.trim_end_matches('/').to_owned();
            // Its build, as it reports it, so the row can be reproduced.
            let props = match reqwest::get(format!("{base}/props")).await {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                _ => None,
            };
            let build = props
                .as_ref()
                .and_then(|p| p["build_info"].as_str())
                .unwrap_or("build unknown")
                .to_owned();
            let llama = Server::Llama { base };
            let name = format!("llama.cpp server {build} (Q4_1 as stored)");
            all.push(figures(name, &llama).await);
        }
    });
    for f in &all {
        println!(
            "{}: first token {:.0} ms, {:.1} tok/s {:?}",
            f.name, f.first_token_ms, f.rate, f.pieces
        );
    }
    all
}

/// The model section of docs/benchmarks.md.
pub(super) fn write_markdown(md: &mut String, figures: &[Figures]) {
    let _ = writeln!(md, "\n## The built-in model over the API\n");
    let _ = writeln!(
        md,
        "SmolLM2-135M-Instruct (`models/SmolLM2-135M-Instruct.Q4_1.gguf`) answering through\n\
         `POST /api/v1/conversations`, timed by the client: the first text of a short question\n\
         (median of {FIRST_TOKEN_RUNS}, a new conversation each) and text deltas per second after the first\n\
         over a {TOKENS}-token answer (median of {RATE_RUNS}); temperature 0.2, top-p 0.9, repeat\n\
         penalty 1.1, seed 42. With `LLAMA_SERVER_URL` set, llama.cpp's server on the same file\n\
         gets the same conversation (system prompt included) and sampling, timed the same way.\n\
         llama.cpp keeps the whole previous prompt's state and the short question repeats, so its\n\
         first token reuses all of it; Confab keeps the system turn's state only.\n"
    );
    let _ = writeln!(
        md,
        "| server | first token, short question | tokens/s | text pieces per answer |"
    );
    let _ = writeln!(md, "|---|---:|---:|---|");
    for f in figures {
        let pieces: Vec<String> = f.pieces.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            md,
            "| {} | {:.0} ms | {:.1} | {} |",
            f.name,
            f.first_token_ms,
            f.rate,
            pieces.join(", ")
        );
    }
    if figures.len() < 2 {
        let _ = writeln!(
            md,
            "\nllama.cpp was not measured in this run (set `LLAMA_SERVER_URL` to a llama.cpp\n\
             server started on the same file)."
        );
    }
}
