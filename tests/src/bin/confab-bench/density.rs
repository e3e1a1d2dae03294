//! The stream-density scenario (issue 13): how much memory an open stream
//! costs a `confab serve` process, and how much the process takes idle.
//!
//! Every server is a release `confab serve` process (the binary next to
//! this one) on SQLite with the in-process adapters; its memory is its
//! resident set (`VmRSS` in `/proc/<pid>/status`). First an idle server
//! with no model configured; then, for each N of [`LEVELS`]
//! (`CONFAB_BENCH_DENSITY`, comma-separated, overrides them), a fresh server
//! wired to the harness's `FakeLlm`, whose every answer is one text delta
//! and then nothing for [`HOLD`]: N streaming sends are opened, and once
//! each has received its text delta (or [`OPEN_CAP`] has passed) the
//! resident set is read again. Then the clients go away, the upstream
//! stops and the server is stopped.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use confab_e2e::chat::{MODEL, message_body};
use confab_e2e::fake_llm::{FakeLlm, Script, Step};
use confab_e2e::{TestApp, spawn_process};
use confab_sql::testing::TestDatabase;
use tokio::sync::{Semaphore, watch};

use super::{sizes, thousands};

/// Streams held open at once, one server each.
const LEVELS: [usize; 2] = [1_000, 3_000];
/// How long the upstream holds every answer after its text delta.
const HOLD: Duration = Duration::from_secs(120);
/// The longest the streams of one level take to open; the resident set is
/// read then, whatever has opened.
const OPEN_CAP: Duration = Duration::from_secs(90);
/// Streams waiting for their text delta at once (the others wait to
/// start), so that opening thousands is not one burst of connections.
const OPENING: usize = 200;
/// The pause before each reading, for the server to finish what the last
/// request started.
const SETTLE: Duration = Duration::from_secs(1);
/// Sends answered at once before the first reading, to warm the server's
/// pools and caches.
const WARM_UP: usize = 4;
/// The goal: at least this many open streams per GB of resident memory.
pub(super) const GOAL_STREAMS_PER_GB: f64 = 50_000.0;
/// The goal: an idle server's resident set at most this many MB.
pub(super) const GOAL_IDLE_MB: f64 = 50.0;
/// What marks a text delta in the stream (its data is compact JSON).
const APPEND: &[u8] = br#""o":"append""#;
/// Bytes in a (decimal) GB.
const GB: f64 = 1e9;
/// Bytes in a (decimal) MB.
const MB: f64 = 1e6;

/// What one level measured.
pub(super) struct Row {
    /// Streams opened.
    pub(super) streams: usize,
    /// Streams that had their text delta and were still open at the
    /// reading.
    open: usize,
    /// How the others ended, counted (`HTTP 429×3`), empty when none did.
    failed: String,
    /// From the first send to the last stream's text delta (or the cap).
    seconds: f64,
    /// The resident set before the streams, in bytes.
    before: u64,
    /// The resident set with the streams open, in bytes.
    with_streams: u64,
}

impl Row {
    /// The resident memory each open stream added, in bytes (`None` when
    /// none was open, or the resident set did not grow).
    fn bytes_per_stream(&self) -> Option<f64> {
        let grown = self.with_streams.checked_sub(self.before)?;
        (self.open > 0 && grown > 0).then(|| grown as f64 / self.open as f64)
    }

    /// Open streams per GB of resident memory, at that cost per stream.
    pub(super) fn per_gb(&self) -> Option<f64> {
        self.bytes_per_stream().map(|bytes| GB / bytes)
    }

    /// Did every stream open and stay open?
    pub(super) fn all_open(&self) -> bool {
        self.open == self.streams
    }
}

/// What the section measured.
pub(super) struct Report {
    /// The idle server's resident set, in bytes (`None`: unreadable).
    idle: Option<u64>,
    /// Each level's figures.
    pub(super) rows: Vec<Row>,
}

impl Report {
    /// The idle server's resident set, in MB.
    pub(super) fn idle_mb(&self) -> Option<f64> {
        self.idle.map(|bytes| bytes as f64 / MB)
    }
}

/// The resident set of process `pid`, in bytes (`VmRSS`, which `/proc`
/// gives in KiB).
pub(super) fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The resident set of `app`'s process, after [`SETTLE`].
async fn settled_rss(app: &TestApp) -> u64 {
    tokio::time::sleep(SETTLE).await;
    let pid = app.pid().expect("a confab serve process");
    rss(pid).unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

/// Every held answer: one text delta, then nothing until [`HOLD`] after
/// the request, then `finish_reason: stop` and `[DONE]`.
fn held() -> Script {
    Script::Stream(vec![
        Step::Text("Thinking".to_owned()),
        Step::At(HOLD),
        Step::Finish("stop"),
        Step::Done,
    ])
}

/// How one held stream ended.
enum End {
    /// It had its text delta and stayed open until told to close.
    Held,
    /// Its body ended, or broke, after its text delta.
    EndedEarly,
    /// Another status than 200.
    Status(u16),
    /// No text delta: the request failed, or the body ended first.
    NoDelta,
}

/// The counters the held streams share with the driver.
#[derive(Default)]
struct Counts {
    /// Streams that had their text delta.
    opened: AtomicUsize,
    /// Streams that had their text delta or ended without one.
    settled: AtomicUsize,
    /// Streams whose body ended after their text delta, before the close.
    ended_early: AtomicUsize,
}

/// Sends `request` once `gate` lets it, reads until its first text delta
/// (counted in `counts`), then holds the stream, reading what comes, until
/// `close` turns true (a stream still waiting then is not sent).
async fn hold(
    request: reqwest::RequestBuilder,
    gate: Arc<Semaphore>,
    counts: Arc<Counts>,
    mut close: watch::Receiver<bool>,
) -> End {
    let settle = || counts.settled.fetch_add(1, Ordering::Relaxed);
    // Closing the gate (at the close) fails the wait.
    let Ok(permit) = gate.acquire_owned().await else {
        return End::NoDelta;
    };
    let mut permit = Some(permit);
    let sent = tokio::select! {
        _ = close.wait_for(|close| *close) => None,
        sent = request.send() => Some(sent),
    };
    let Some(Ok(mut res)) = sent else {
        settle();
        return End::NoDelta;
    };
    if res.status() != 200 {
        settle();
        return End::Status(res.status().as_u16());
    }
    let mut head = Vec::new();
    loop {
        let opened = permit.is_none();
        tokio::select! {
            _ = close.wait_for(|close| *close) => {
                if !opened {
                    settle();
                }
                return if opened { End::Held } else { End::NoDelta };
            }
            chunk = res.chunk() => match chunk {
                Ok(Some(bytes)) if !opened => {
                    head.extend_from_slice(&bytes);
                    if head.windows(APPEND.len()).any(|w| w == APPEND) {
                        // Open: let the next stream start.
                        permit = None;
                        head = Vec::new();
                        counts.opened.fetch_add(1, Ordering::Relaxed);
                        settle();
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    if opened {
                        counts.ended_early.fetch_add(1, Ordering::Relaxed);
                        return End::EndedEarly;
                    }
                    settle();
                    return End::NoDelta;
                }
            }
        }
    }
}

/// Opens `n` held streams on a fresh server wired to a fresh upstream,
/// reads the resident set before and with them, and tears it all down.
async fn level(n: usize, workers: &str) -> Row {
    let upstream = FakeLlm::start();
    upstream.set_default(held());
    let base_url = upstream.base_url();
    let slots = (2 * n).max(10_000).to_string();
    let vars = [
        ("CONFAB_LLM_PROVIDER", "openai"),
        ("CONFAB_LLM_BASE_URL", base_url.as_str()),
        ("CONFAB_LLM_MODEL", MODEL),
        ("CONFAB_LLM_API_KEY", "sk-bench-upstream-key-0123456789"),
        ("CONFAB__SERVER__WORKERS", workers),
        // One user holds every stream: lift its limits.
        (
            "CONFAB__GENERATION__MAX_CONCURRENT_PER_USER",
            slots.as_str(),
        ),
        ("CONFAB__GENERATION__MAX_STREAMS", slots.as_str()),
        ("CONFAB__GENERATION__PER_MINUTE", "100000000"),
        ("CONFAB__RATE_LIMIT__USER_PER_MINUTE", "100000000"),
        ("CONFAB__LLM__TITLE_GENERATION", "false"),
        // The held answers stay silent longer than the default 30 s.
        ("CONFAB__LLM__IDLE_TIMEOUT_MS", "300000"),
    ];
    let app = spawn_process(Arc::new(TestDatabase::sqlite()), &vars).await;
    let token = app.user("density").await;
    for i in 0..WARM_UP {
        upstream.push(Script::reply(&["Warm", " up."]));
        let _ = app.chat(&token, &format!("Warm-up {i}.")).await;
    }
    let before = settled_rss(&app).await;

    let client = reqwest::Client::new();
    let gate = Arc::new(Semaphore::new(OPENING));
    let counts = Arc::new(Counts::default());
    let (close_tx, close) = watch::channel(false);
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let request = client
                .post(app.url("/api/v1/conversations"))
                .bearer_auth(&token)
                .header("accept", "text/event-stream")
                .json(&message_body(&format!("Hold on {i}.")));
            tokio::spawn(hold(
                request,
                Arc::clone(&gate),
                Arc::clone(&counts),
                close.clone(),
            ))
        })
        .collect();
    while counts.settled.load(Ordering::Relaxed) < n && started.elapsed() < OPEN_CAP {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let with_streams = settled_rss(&app).await;
    let open = counts
        .opened
        .load(Ordering::Relaxed)
        .saturating_sub(counts.ended_early.load(Ordering::Relaxed));

    // Close: the clients go away, then the upstream, then the server.
    let _ = close_tx.send(true);
    gate.close();
    let mut ends = std::collections::BTreeMap::<String, usize>::new();
    for task in tasks {
        let end = match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(End::Held)) => continue,
            Ok(Ok(End::EndedEarly)) => "ended early".to_owned(),
            Ok(Ok(End::Status(status))) => format!("HTTP {status}"),
            Ok(Ok(End::NoDelta)) => "no text delta".to_owned(),
            Ok(Err(_)) | Err(_) => "stuck".to_owned(),
        };
        *ends.entry(end).or_default() += 1;
    }
    drop(client);
    drop(upstream);
    drop(app);
    Row {
        streams: n,
        open,
        failed: ends
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(" "),
        seconds,
        before,
        with_streams,
    }
}

/// Measures the idle server, then every level, on `runtime`, with `cores`
/// workers per server.
pub(super) fn measure(runtime: &tokio::runtime::Runtime, cores: usize) -> Report {
    let workers = cores.to_string();
    let levels = sizes("CONFAB_BENCH_DENSITY", &LEVELS);
    runtime.block_on(async {
        // The test configuration names no model (`CONFAB_LLM_PROVIDER=none`):
        // the built-in one is not loaded.
        let vars = [("CONFAB__SERVER__WORKERS", workers.as_str())];
        let app = spawn_process(Arc::new(TestDatabase::sqlite()), &vars).await;
        let idle = {
            tokio::time::sleep(SETTLE).await;
            app.pid().and_then(rss)
        };
        drop(app);
        let idle_mb = idle.map_or(f64::NAN, |b| b as f64 / MB);
        println!("density idle RSS {idle_mb:.1} MB");
        let mut rows = Vec::new();
        for n in levels {
            let row = level(n, &workers).await;
            println!(
                "density {:>5} streams: {} open in {:.1} s, RSS {:.1} → {:.1} MB, {:.1} KB per stream, \
                 {:.0} streams per GB{}",
                row.streams,
                row.open,
                row.seconds,
                row.before as f64 / MB,
                row.with_streams as f64 / MB,
                row.bytes_per_stream().unwrap_or(f64::NAN) / 1e3,
                row.per_gb().unwrap_or(f64::NAN),
                if row.failed.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", row.failed)
                }
            );
            rows.push(row);
        }
        Report { idle, rows }
    })
}

/// `x` with one decimal, or `n/a`.
fn or_na(x: Option<f64>, scale: f64) -> String {
    x.map_or_else(|| "n/a".to_owned(), |x| format!("{:.1}", x / scale))
}

/// Appends the stream-density section (method and table) to `md`.
pub(super) fn write_markdown(md: &mut String, report: &Report, cores: usize) {
    let hold = HOLD.as_secs();
    let cap = OPEN_CAP.as_secs();
    let limit = super::relay::open_file_limit().unwrap_or_else(|| "unknown".to_owned());
    let idle = or_na(report.idle_mb(), 1.0);
    let goal = thousands(GOAL_STREAMS_PER_GB as usize);
    let text = format!(
        "
## Stream density

How much memory an open stream costs a server, and how much an idle one takes
(issue 13's goals: ≥ {goal} open streams per GB of resident memory, an
idle server ≤ {GOAL_IDLE_MB:.0} MB). Every server here is a release `confab serve` process
(the binary next to the bench) on its own SQLite database with the in-process
adapters, {cores} workers; its memory is its resident set, `VmRSS` in
`/proc/<pid>/status`. MB, KB and GB are decimal (10^6, 10^3 and 10^9 bytes;
`/proc` gives `VmRSS` in KiB, converted).

- **idle**: a server with no model configured (`CONFAB_LLM_PROVIDER=none`, so
  the built-in model is not loaded), read {SETTLE:?} after it first answered
  `/healthz`, having served nothing else.
- **streams**: for each N, a fresh server wired to the harness's `FakeLlm`,
  whose every answer is one text delta and then nothing for {hold} s (the
  server's upstream idle timeout raised above that), title generation off, one
  user's generation and rate limits lifted. After {WARM_UP} sends answered at once and
  a pause of {SETTLE:?}, the resident set is read (**before**); then N streaming sends
  (`POST /api/v1/conversations`, each a new conversation, each on its own
  connection) start, at most {OPENING} waiting for their text delta at once, and
  once every one has received it (or {cap} s have passed) and {SETTLE:?} more, it is
  read again (**with streams**). Each open stream is then a client connection,
  its conversation's generation, its in-memory stream log and an upstream
  connection. **KB per stream** is (with streams − before) / open streams;
  **streams per GB** is 10^9 bytes over that. The clients then close their
  streams, the upstream stops, and the server is stopped (SIGTERM).

The streams and the upstream run in the bench process, not the server's, so
they don't count in its resident set. Open-file limit (`ulimit -n`) of the
run: {limit} (the bench holds two sockets per stream, the server two).

Idle server: **{idle} MB** resident (goal ≤ {GOAL_IDLE_MB:.0} MB).

| streams | open at the reading | s to open | RSS before MB | RSS with streams MB | KB per stream | streams per GB | goal |
|---:|---:|---:|---:|---:|---:|---:|---|
"
    );
    md.push_str(&text);
    for r in &report.rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | ≥ {goal} |",
            thousands(r.streams),
            thousands(r.open),
            r.seconds,
            r.before as f64 / MB,
            r.with_streams as f64 / MB,
            or_na(r.bytes_per_stream(), 1e3),
            r.per_gb()
                .map_or_else(|| "n/a".to_owned(), |x| thousands(x.round() as usize)),
        );
    }
    let failed: Vec<String> = report
        .rows
        .iter()
        .filter(|r| !r.failed.is_empty())
        .map(|r| format!("{} streams: {}", r.streams, r.failed))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "\nNot every stream stayed open until the reading: {}. The figures per stream count \
             the open ones only.",
            failed.join("; ")
        );
    }
}
