//! The soak run (issue 14): many streams at once, for a long time, against
//! one release `confab serve` process, counting every stream that did not
//! end as a whole answer and sampling the server's resident set, to show
//! that nothing fails and nothing leaks under a steady load.
//!
//! Each of [`STREAMS`] clients (`CONFAB_BENCH_SOAK_STREAMS`) sends a
//! streaming message, reads its answer to `[DONE]`, and sends the next, for
//! [`DURATION`] (`CONFAB_BENCH_SOAK_SECS`). Every answer is [`DELTAS`] text
//! deltas [`SPACING`] apart, so about [`STREAMS`] streams are open at any
//! moment. The resident set is read every [`SAMPLE`]; the baseline is the
//! first reading after a fifth of the run (the stream log's retention and
//! the caches have filled by then), and the run is flat when no later
//! reading passes it by more than [`FLAT`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use confab_e2e::chat::{MODEL, message_body};
use confab_e2e::fake_llm::{FakeLlm, Script};
use confab_e2e::spawn_process;
use confab_sql::testing::TestDatabase;
use tokio::sync::watch;

use super::density::rss;
use super::thousands;

/// Clients, each with one stream open at a time.
const STREAMS: usize = 1_000;
/// How long the run lasts.
const DURATION: Duration = Duration::from_secs(600);
/// Text deltas per answer.
const DELTAS: usize = 20;
/// The upstream's pause between two deltas.
const SPACING: Duration = Duration::from_millis(500);
/// How often the resident set is read.
const SAMPLE: Duration = Duration::from_secs(10);
/// The most a later reading may pass the baseline by.
const FLAT: f64 = 0.10;
/// Seconds a finished stream stays resumable in the soak (the default is
/// 300): the retained streams reach their steady state early in the run.
const RETENTION_SECS: &str = "60";
/// Bytes in a (decimal) MB.
const MB: f64 = 1e6;

/// What the run measured.
pub(super) struct Report {
    streams: usize,
    seconds: f64,
    /// Answers read whole: `message_stream_complete`, then `[DONE]`.
    completed: usize,
    /// Every other end, by kind (`HTTP 503`, `no [DONE]`, `error event`).
    failures: BTreeMap<String, usize>,
    /// (seconds since the start, resident bytes).
    samples: Vec<(f64, u64)>,
}

impl Report {
    /// The baseline reading: the first at or after a fifth of the run.
    fn baseline(&self) -> Option<(f64, u64)> {
        let from = self.seconds / 5.0;
        self.samples.iter().copied().find(|(at, _)| *at >= from)
    }

    /// How far the highest reading after the baseline passed it.
    fn growth(&self) -> Option<f64> {
        let (at, base) = self.baseline()?;
        let peak = self
            .samples
            .iter()
            .filter(|(t, _)| *t >= at)
            .map(|(_, b)| *b)
            .max()?;
        Some(peak as f64 / base as f64 - 1.0)
    }

    fn errors(&self) -> usize {
        self.failures.values().sum()
    }
}

/// How one answer ended.
fn judge(status: u16, body: &[u8]) -> Result<(), String> {
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    let text = String::from_utf8_lossy(body);
    if text.contains(r#""type":"error""#) {
        return Err("error event".to_owned());
    }
    if !text.contains("message_stream_complete") {
        return Err("no message_stream_complete".to_owned());
    }
    if !text.trim_end().ends_with("data: [DONE]") {
        return Err("no [DONE]".to_owned());
    }
    Ok(())
}

/// Sends answers one after the other until `stop`, counting their ends.
async fn client(
    client: reqwest::Client,
    url: String,
    token: String,
    mut stop: watch::Receiver<bool>,
    ends: Arc<Mutex<(usize, BTreeMap<String, usize>)>>,
) {
    let mut n = 0_usize;
    while !*stop.borrow() {
        n += 1;
        let request = client
            .post(&url)
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .json(&message_body(&format!("Soak {n}.")));
        let answer = async {
            let res = request.send().await.map_err(|_| "no response".to_owned())?;
            let status = res.status().as_u16();
            let body = res.bytes().await.map_err(|_| "broken body".to_owned())?;
            judge(status, &body)
        };
        let end = tokio::select! {
            // An answer cut by the end of the run is not counted.
            _ = stop.wait_for(|stop| *stop) => return,
            end = answer => end,
        };
        let mut ends = ends.lock().unwrap_or_else(PoisonError::into_inner);
        match end {
            Ok(()) => ends.0 += 1,
            Err(kind) => *ends.1.entry(kind).or_default() += 1,
        }
    }
}

fn from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Runs the soak on `runtime` with `cores` workers.
pub(super) fn measure(runtime: &tokio::runtime::Runtime, cores: usize) -> Report {
    let streams = from_env("CONFAB_BENCH_SOAK_STREAMS", STREAMS);
    let duration =
        Duration::from_secs(from_env("CONFAB_BENCH_SOAK_SECS", DURATION.as_secs() as usize) as u64);
    runtime.block_on(async {
        let upstream = FakeLlm::start();
        let pieces: Vec<String> = (0..DELTAS).map(|k| format!("word{k} ")).collect();
        upstream.set_default(Script::paced(&pieces, SPACING));
        let base_url = upstream.base_url();
        let workers = cores.to_string();
        let slots = (4 * streams).max(10_000).to_string();
        let vars = [
            ("CONFAB_LLM_PROVIDER", "openai"),
            ("CONFAB_LLM_BASE_URL", base_url.as_str()),
            ("CONFAB_LLM_MODEL", MODEL),
            ("CONFAB_LLM_API_KEY", "sk-bench-upstream-key-0123456789"),
            ("CONFAB__SERVER__WORKERS", workers.as_str()),
            ("CONFAB__LOG__FILTER", "warn"),
            // One user holds every stream: lift its limits.
            (
                "CONFAB__GENERATION__MAX_CONCURRENT_PER_USER",
                slots.as_str(),
            ),
            ("CONFAB__GENERATION__MAX_STREAMS", slots.as_str()),
            ("CONFAB__GENERATION__PER_MINUTE", "100000000"),
            ("CONFAB__RATE_LIMIT__USER_PER_MINUTE", "100000000"),
            ("CONFAB__GENERATION__STREAM_RETENTION_SECS", RETENTION_SECS),
            ("CONFAB__LLM__TITLE_GENERATION", "false"),
        ];
        let app = spawn_process(Arc::new(TestDatabase::sqlite()), &vars).await;
        let token = app.user("soak").await;
        let pid = app.pid().expect("a confab serve process");
        let (stop_tx, stop) = watch::channel(false);
        let ends = Arc::new(Mutex::new((0, BTreeMap::new())));
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(streams)
            .build()
            .expect("an HTTP client");
        let started = Instant::now();
        let clients: Vec<_> = (0..streams)
            .map(|_| {
                tokio::spawn(client(
                    http.clone(),
                    app.url("/api/v1/conversations"),
                    token.clone(),
                    stop.clone(),
                    Arc::clone(&ends),
                ))
            })
            .collect();
        let mut samples = Vec::new();
        while started.elapsed() < duration {
            tokio::time::sleep(SAMPLE.min(duration.saturating_sub(started.elapsed()))).await;
            let at = started.elapsed().as_secs_f64();
            if let Some(bytes) = rss(pid) {
                println!("soak {at:.0} s: RSS {:.1} MB", bytes as f64 / MB);
                samples.push((at, bytes));
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let _ = stop_tx.send(true);
        for client in clients {
            let _ = tokio::time::timeout(Duration::from_secs(10), client).await;
        }
        let (completed, failures) =
            std::mem::take(&mut *ends.lock().unwrap_or_else(PoisonError::into_inner));
        drop(upstream);
        drop(app);
        Report {
            streams,
            seconds,
            completed,
            failures,
            samples,
        }
    })
}

/// Appends the soak section to `md`.
pub(super) fn write_markdown(md: &mut String, report: &Report, cores: usize) {
    let minutes = report.seconds / 60.0;
    let streams = thousands(report.streams);
    let spacing = SPACING.as_millis();
    let sample = SAMPLE.as_secs();
    let flat = FLAT * 100.0;
    let _ = write!(
        md,
        "
## Soak

{streams} clients against one release `confab serve` process (SQLite, in-process
adapters, {cores} workers) for {minutes:.1} minutes: each sends a streaming message,
reads its answer to `[DONE]` and sends the next, so about {streams} streams are open
at every moment. Every answer is {DELTAS} text deltas {spacing} ms apart from the
harness's `FakeLlm`. A finished stream stays resumable {RETENTION_SECS} s here (the
default is 300 s), so the retained streams reach their steady state early; the
resident set (`VmRSS`) is read every {sample} s, and the baseline is the first
reading after a fifth of the run. Goals (issue 14): no failed answer, and no later
reading more than {flat:.0}% above the baseline.
"
    );
    let errors = report.errors();
    let failures = if report.failures.is_empty() {
        "none".to_owned()
    } else {
        report
            .failures
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        md,
        "\n| answers read whole | failed | failures | baseline RSS MB | peak after it MB | growth | verdict |"
    );
    let _ = writeln!(md, "|---:|---:|---|---:|---:|---:|---|");
    let (base, peak, growth) = match (report.baseline(), report.growth()) {
        (Some((_, base)), Some(growth)) => (
            format!("{:.1}", base as f64 / MB),
            format!("{:.1}", base as f64 * (1.0 + growth) / MB),
            format!("{:+.1}%", growth * 100.0),
        ),
        _ => ("n/a".to_owned(), "n/a".to_owned(), "n/a".to_owned()),
    };
    let verdict = match report.growth() {
        Some(g) if errors == 0 && g <= FLAT => "met",
        Some(_) => "missed",
        None => "not measured",
    };
    let _ = writeln!(
        md,
        "| {} | {errors} | {failures} | {base} | {peak} | {growth} | {verdict} |",
        thousands(report.completed)
    );
    let _ = writeln!(md, "\nThe resident set, once a minute:\n");
    let _ = writeln!(md, "| minute | RSS MB |");
    let _ = writeln!(md, "|---:|---:|");
    let mut next = 0.0;
    for (at, bytes) in &report.samples {
        if *at >= next {
            let _ = writeln!(md, "| {:.0} | {:.1} |", at / 60.0, *bytes as f64 / MB);
            next += 60.0;
        }
    }
}
