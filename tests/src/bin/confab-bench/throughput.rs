//! The sends-per-second scenario (issue 13): how many whole sends a server
//! completes per second when the model answers at once, and whether that
//! rate grows with the clients sending or queues (on the database pool, or
//! anywhere else).
//!
//! The model is the harness's `FakeLlm` answering every request with
//! [`ANSWER`] at once. On each chosen set-up (SQLite, PostgreSQL,
//! PostgreSQL + Redis, in-process servers), one user sends new
//! conversations from c clients, for each c of [`LEVELS`]
//! (`CONFAB_BENCH_THROUGHPUT_LEVELS` overrides them): [`SENDS`] sends
//! (`CONFAB_BENCH_THROUGHPUT_SENDS` overrides it) after an unmeasured
//! warm-up, no send starting after [`CAP`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use confab_e2e::chat::message_body;
use confab_e2e::fake_llm::{FakeLlm, Script};

use super::relay::{SetUp, served_by};
use super::{percentile, sizes};

/// Concurrent clients, each sending one send after another.
const LEVELS: [usize; 4] = [1, 16, 64, 256];
/// Sends of each measured run.
const SENDS: usize = 2_000;
/// No send starts after this long into a run.
const CAP: Duration = Duration::from_secs(20);
/// The longest one send may take before it counts as incomplete.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The text deltas of every answer.
const ANSWER: [&str; 2] = ["Sure", ", done."];
/// What every send asks.
const PROMPT: &str = "Say something short.";

/// What one run (one set-up, one concurrency) measured.
pub(super) struct Row {
    /// Where the server ran.
    pub(super) setup: SetUp,
    /// Clients sending at once.
    pub(super) concurrency: usize,
    /// Sends made.
    sends: usize,
    /// 200s read to `message_stream_complete` and `[DONE]`, with text and
    /// no `error` event.
    complete: usize,
    /// Sends answered with another status.
    non_200: usize,
    /// 200s that were not complete, and sends with no response (the
    /// connection failed, or [`SEND_TIMEOUT`] passed).
    incomplete: usize,
    /// From the first send to the end of the last.
    seconds: f64,
    /// p50 and p99 of a whole complete send (request to the end of its
    /// body), in ms.
    latency: (f64, f64),
    /// This process's CPU over the run, in cores (`None`: unreadable).
    cpu: Option<f64>,
}

impl Row {
    /// Complete sends per second.
    pub(super) fn rate(&self) -> f64 {
        self.complete as f64 / self.seconds
    }
}

/// How one send ended.
enum Outcome {
    /// Complete, in this time.
    Complete(Duration),
    /// Another status than 200.
    Status,
    /// Anything else.
    Incomplete,
}

/// This process's CPU time so far, user and system, in seconds
/// (`/proc/self/stat` counts it in ticks of 1/100 s, Linux's `USER_HZ`).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, from the state (field 3).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Is `body` a whole answer: a text delta, `message_stream_complete` then
/// `[DONE]` last, and no `error` event? (The events' data is compact JSON.)
fn complete(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.ends_with("data: [DONE]\n\n")
        && text.contains(r#""o":"append""#)
        && text.contains(r#""type":"message_stream_complete""#)
        && !text.contains(r#""type":"error""#)
}

/// One streaming send of a new conversation, read to its end.
async fn send(client: &reqwest::Client, url: &str, token: &str) -> Outcome {
    let started = Instant::now();
    let read = async {
        let res = client
            .post(url)
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .json(&message_body(PROMPT))
            .send()
            .await
            .ok()?;
        if res.status() != 200 {
            let _ = res.bytes().await;
            return Some(Outcome::Status);
        }
        let body = res.bytes().await.ok()?;
        Some(if complete(&body) {
            Outcome::Complete(started.elapsed())
        } else {
            Outcome::Incomplete
        })
    };
    match tokio::time::timeout(SEND_TIMEOUT, read).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) | Err(_) => Outcome::Incomplete,
    }
}

/// `sends` sends from `concurrency` clients, none starting after [`CAP`].
async fn drive(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    setup: SetUp,
    (concurrency, sends): (usize, usize),
) -> Row {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let deadline = started + CAP;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next) = (client.clone(), Arc::clone(&next));
            let (url, token) = (url.to_owned(), token.to_owned());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < sends && Instant::now() < deadline {
                    outcomes.push(send(&client, &url, &token).await);
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(sends);
    for task in tasks {
        outcomes.extend(task.await.expect("a send task"));
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| (after - before) / seconds);
    let mut times = Vec::with_capacity(outcomes.len());
    let (mut non_200, mut incomplete) = (0, 0);
    for outcome in &outcomes {
        match outcome {
            Outcome::Complete(t) => times.push(t.as_secs_f64() * 1000.0),
            Outcome::Status => non_200 += 1,
            Outcome::Incomplete => incomplete += 1,
        }
    }
    times.sort_by(f64::total_cmp);
    Row {
        setup,
        concurrency,
        sends: outcomes.len(),
        complete: times.len(),
        non_200,
        incomplete,
        seconds,
        latency: (percentile(&times, 0.50), percentile(&times, 0.99)),
        cpu,
    }
}

/// Measures every set-up of `setups` at every concurrency, on `runtime`,
/// against servers with `cores` workers.
pub(super) fn measure(
    runtime: &tokio::runtime::Runtime,
    cores: usize,
    setups: &[SetUp],
) -> Vec<Row> {
    let sends = sizes("CONFAB_BENCH_THROUGHPUT_SENDS", &[SENDS])[0];
    let levels = sizes("CONFAB_BENCH_THROUGHPUT_LEVELS", &LEVELS);
    let upstream = FakeLlm::start();
    upstream.set_default(Script::reply(&ANSWER));
    let base_url = upstream.base_url();
    let workers = cores.to_string();
    let vars = served_by(&base_url, &workers);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("client");
    let mut rows = Vec::new();
    for &setup in setups {
        let app = setup.spawn(&vars);
        runtime.block_on(async {
            let url = app.url("/api/v1/conversations");
            let token = app.user("sender").await;
            for &concurrency in &levels {
                let warm = (concurrency, (concurrency * 2).max(20));
                let _ = drive(&client, &url, &token, setup, warm).await;
                let row = drive(&client, &url, &token, setup, (concurrency, sends)).await;
                println!(
                    "throughput {:<18} c={:<4} {:>7.1} sends/s  whole send {:>8.3}/{:>8.3} ms p50/p99  \
                     {}/{} complete, {} non-200, {} incomplete, {:.2} s, {:.2} cores",
                    setup.name(),
                    row.concurrency,
                    row.rate(),
                    row.latency.0,
                    row.latency.1,
                    row.complete,
                    row.sends,
                    row.non_200,
                    row.incomplete,
                    row.seconds,
                    row.cpu.unwrap_or(f64::NAN)
                );
                rows.push(row);
            }
        });
        drop(app);
    }
    rows
}

/// Appends, for each set-up, how the rate and the whole send's p50 moved
/// from the fewest clients to the most.
fn write_scaling(md: &mut String, rows: &[Row]) {
    let mut lines = Vec::new();
    for setup in SetUp::ALL {
        let runs: Vec<&Row> = rows.iter().filter(|r| r.setup == setup).collect();
        let (Some(first), Some(last)) = (runs.first(), runs.last()) else {
            continue;
        };
        let Some(best) = runs.iter().max_by(|a, b| a.rate().total_cmp(&b.rate())) else {
            continue;
        };
        lines.push(format!(
            "- {}: {:.0} sends/s with {} client(s), at most {:.0} (with {}, ×{:.1}); \
             whole send p50 {:.1} ms → {:.1} ms with {}.",
            setup.name(),
            first.rate(),
            first.concurrency,
            best.rate(),
            best.concurrency,
            best.rate() / first.rate(),
            first.latency.0,
            last.latency.0,
            last.concurrency,
        ));
    }
    if !lines.is_empty() {
        let _ = writeln!(
            md,
            "\nFrom the fewest clients to the most (past the point where the rate stops \
             growing, more clients only wait longer):\n\n{}",
            lines.join("\n")
        );
    }
}

/// Appends the sends-per-second section (method and table) to `md`.
pub(super) fn write_markdown(md: &mut String, rows: &[Row], cores: usize) {
    let sends = sizes("CONFAB_BENCH_THROUGHPUT_SENDS", &[SENDS])[0];
    let cap = CAP.as_secs();
    let timeout = SEND_TIMEOUT.as_secs();
    let deltas = ANSWER.len();
    let text = format!(
        "
## Sends per second

How many whole sends a server completes per second when the model answers at
once, and whether that grows with the clients sending or queues (on the
database pool, on the workers, anywhere). The model is the harness's `FakeLlm`
answering every request with {deltas} text deltas, `finish_reason: stop` and `[DONE]`,
no pause (one thread in the bench process, connections kept between answers, as
in the relay section). On each set-up in turn (SQLite, in-process adapters; PostgreSQL,
in-process adapters; PostgreSQL with Redis), a release Confab server starts in
this process ({cores} workers, title generation off, the user's generation and rate
limits lifted, the production defaults otherwise: `database.max_connections`
10, `database.acquire_timeout_ms` 5000).
One user sends from c clients at once, each sending one send after another:
streaming `POST /api/v1/conversations` (a new conversation each time: the
conversation, both messages and the stream's events written, the upstream
called, the answer saved), read to its end over a kept-alive connection.

Each row is {sends} sends (none starts after {cap} s), after an unmeasured warm-up of
2 sends per client (at least 20). **sends/s** counts complete sends only (a 200 whose
body has a text delta, then `message_stream_complete` and `[DONE]`, and no `error`
event) over the run's wall time; **whole send** is from just before the request
to the end of its body, complete sends only; **non-200** counts other statuses;
**incomplete** counts 200s that were not complete, and sends with no answer (the
connection failed, or {timeout} s passed). The load generator and the upstream share
the {cores} cores with the server (and PostgreSQL and Redis): the rates are a floor.
**CPU** is this process's CPU time over the run (server, load generator and
upstream together; PostgreSQL and Redis are processes of their own) over its wall
time, in cores: near {cores}, the cores are what the sends queue for; well below with
the rate flat, something else is (the database pool, the database, Redis).

| set-up | clients | sends | sends/s | whole send p50 ms | whole send p99 ms | non-200 | incomplete | s | CPU |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
"
    );
    md.push_str(&text);
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {:.3} | {:.3} | {} | {} | {:.2} | {} |",
            r.setup.name(),
            r.concurrency,
            r.sends,
            r.rate(),
            r.latency.0,
            r.latency.1,
            r.non_200,
            r.incomplete,
            r.seconds,
            r.cpu
                .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}")),
        );
    }
    write_scaling(md, rows);
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.complete < r.sends)
        .map(|r| {
            format!(
                "{} at {} clients ({} of {} complete)",
                r.setup.name(),
                r.concurrency,
                r.complete,
                r.sends
            )
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "\nNot every send completed: {}. The rates count complete sends only.",
            failed.join("; ")
        );
    }
}
