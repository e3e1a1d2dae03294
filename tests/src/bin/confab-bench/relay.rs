//! The relay-overhead scenario: what Confab adds to a streamed answer over
//! calling the model's server directly.
//!
//! One OpenAI-compatible upstream (the harness's `FakeLlm`) streams every
//! answer as [`DELTAS`] text deltas [`SPACING`] apart, each stamped with the
//! instant it was written (`Step::Stamp`). At each of [`LEVELS`], rounds of that many streams
//! started at once go first straight to the upstream, then through a
//! release Confab server wired to it; the measured rounds follow an
//! unmeasured warm-up round of the same size, and each is capped in time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use confab_e2e::chat::MODEL;
use confab_e2e::fake_llm::{self, FakeLlm, Script, Step};
use confab_e2e::{spawn_app_with, spawn_app_with_redis};
use confab_sql::Backend;

use super::{cpu, percentile};
use probe::{Outcome, Target, stream};

mod probe;

/// Text deltas in every answer.
const DELTAS: usize = 20;
/// The upstream's pause between two deltas.
const SPACING: Duration = Duration::from_millis(20);
/// Concurrent streams per round, and measured rounds at that concurrency
/// (one stream at a time is repeated, so its percentiles have samples).
const LEVELS: [(usize, usize); 3] = [(1, 20), (100, 1), (1000, 1)];

/// The levels to run: [`LEVELS`], or for a profile or a quick run those
/// `CONFAB_BENCH_RELAY_LEVELS` names (comma-separated `concurrency` or
/// `concurrencyxrounds`, `100x30`: thirty measured rounds of 100).
fn levels() -> Vec<(usize, usize)> {
    let parse = |item: &str| -> Option<(usize, usize)> {
        let mut parts = item.trim().splitn(2, 'x');
        let concurrency = parts.next()?.parse().ok()?;
        let rounds = parts.next().map_or(Some(1), |r| r.parse().ok())?;
        Some((concurrency, rounds))
    };
    std::env::var("CONFAB_BENCH_RELAY_LEVELS")
        .ok()
        .map(|v| v.split(',').filter_map(parse).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| LEVELS.to_vec())
}

/// The longest a round runs; streams still open count as `timeout`.
const ROUND_CAP: Duration = Duration::from_secs(60);
/// What every stream asks.
const PROMPT: &str = "Tell me about caching.";

/// p50 and p99 of a sample, in ms.
type Quantiles = (f64, f64);

/// p50 and p99 of `samples`, in ms.
fn quantiles(mut samples: Vec<f64>) -> Quantiles {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.50), percentile(&samples, 0.99))
}

/// The figures of one path at one concurrency.
pub(super) struct Figures {
    /// `direct` or `through Confab`.
    path: &'static str,
    /// Streams started at once.
    concurrency: usize,
    /// Streams in all the rounds.
    streams: usize,
    /// Every stream's outcome, counted (`ok×1000`).
    outcomes: String,
    /// Mean wall time of a round.
    seconds: f64,
    /// Send to response head.
    head: Quantiles,
    /// Send to first text delta.
    first: Quantiles,
    /// Upstream write to arrival, every delta.
    delta: Quantiles,
    /// Upstream write to arrival, the first delta of each stream only.
    first_delta: Quantiles,
    /// Upstream write to arrival, the other deltas.
    later_deltas: Quantiles,
    /// Microseconds on a CPU per stream, by component, over the rounds.
    cpu: BTreeMap<&'static str, f64>,
}

impl Figures {
    /// Counts `outcomes` and takes the percentiles of the complete ones.
    fn of(
        path: &'static str,
        concurrency: usize,
        outcomes: Vec<Outcome>,
        seconds: f64,
        cpu: BTreeMap<&'static str, f64>,
    ) -> Self {
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        let streams = outcomes.len();
        let mut counts = BTreeMap::<String, usize>::new();
        let (mut head, mut first, mut delta) = (Vec::new(), Vec::new(), Vec::new());
        let (mut first_delta, mut later_deltas) = (Vec::new(), Vec::new());
        for outcome in outcomes {
            let key = match outcome {
                Outcome::Complete(t) => {
                    head.push(ms(&t.head));
                    first.push(ms(&t.first));
                    delta.extend(t.deltas.iter().map(ms));
                    first_delta.extend(t.deltas.first().map(ms));
                    later_deltas.extend(t.deltas.iter().skip(1).map(ms));
                    "ok".to_owned()
                }
                Outcome::Status(status) => format!("HTTP {status}"),
                Outcome::Short => "short".to_owned(),
                Outcome::Timeout => "timeout".to_owned(),
                Outcome::Error => "error".to_owned(),
            };
            *counts.entry(key).or_default() += 1;
        }
        let outcomes = counts
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            path,
            concurrency,
            streams,
            outcomes,
            seconds,
            head: quantiles(head),
            first: quantiles(first),
            delta: quantiles(delta),
            first_delta: quantiles(first_delta),
            later_deltas: quantiles(later_deltas),
            cpu,
        }
    }

    /// Did every stream complete?
    pub(super) fn all_ok(&self) -> bool {
        self.outcomes == format!("ok×{}", self.streams)
    }

    /// Streams started at once.
    pub(super) const fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Every stream's outcome, counted (`ok×1000`).
    pub(super) fn outcomes(&self) -> &str {
        &self.outcomes
    }

    /// p99 of send to first text delta, in ms.
    pub(super) const fn first_p99(&self) -> f64 {
        self.first.1
    }

    /// p99 of upstream write to arrival over every delta, in ms.
    pub(super) const fn delta_p99(&self) -> f64 {
        self.delta.1
    }
}

/// Runs `rounds` rounds of `concurrency` streams to `target` started at
/// once, each round until its streams end or for `cap`.
async fn rounds(
    client: &reqwest::Client,
    target: &Target,
    (concurrency, rounds): (usize, usize),
    cap: Duration,
) -> Figures {
    let direct = matches!(target, Target::Direct(_));
    let before = cpu::snapshot();
    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(concurrency * rounds);
    for _ in 0..rounds {
        let deadline = tokio::time::Instant::now() + cap;
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| tokio::spawn(stream(target.request(client), direct, deadline)))
            .collect();
        for task in tasks {
            outcomes.push(task.await.expect("a stream task"));
        }
    }
    let seconds = started.elapsed().as_secs_f64() / rounds.max(1) as f64;
    let cpu = cpu::per_unit(&before, &cpu::snapshot(), outcomes.len());
    Figures::of(target.name(), concurrency, outcomes, seconds, cpu)
}

/// Prints one row as it is measured, with the per-delta latency of the
/// first delta and of the others apart.
fn print_row(setup: &str, f: &Figures) {
    println!(
        "relay {:<14} {setup:<18} c={:<4} head {:>8.3}/{:>8.3}  first delta {:>8.3}/{:>8.3}  per-delta {:>7.3}/{:>7.3} \
         (1st {:>7.3}/{:>7.3}, rest {:>7.3}/{:>7.3}) ms p50/p99  {:>5.2} s  [{}]",
        f.path,
        f.concurrency,
        f.head.0,
        f.head.1,
        f.first.0,
        f.first.1,
        f.delta.0,
        f.delta.1,
        f.first_delta.0,
        f.first_delta.1,
        f.later_deltas.0,
        f.later_deltas.1,
        f.seconds,
        f.outcomes
    );
}

/// Where the Confab side of the relay runs: a database, with or without
/// Redis for the shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SetUp {
    /// SQLite, in-process adapters (the single-machine default).
    Sqlite,
    /// PostgreSQL, in-process adapters.
    Postgres,
    /// PostgreSQL, with Redis for the stream logs, limits, caches and
    /// blocklist (the set-up for several instances).
    PostgresRedis,
}

impl SetUp {
    /// Every set-up, in the tables' order.
    pub(super) const ALL: [Self; 3] = [Self::Sqlite, Self::Postgres, Self::PostgresRedis];

    /// The tables' name of the set-up.
    pub(super) const fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
            Self::PostgresRedis => "PostgreSQL + Redis",
        }
    }

    /// Picks set-ups by name from `CONFAB_BENCH_SETUPS` (a comma-separated
    /// list of `sqlite`, `postgres`, `redis`), every one when unset.
    pub(super) fn chosen() -> Vec<Self> {
        let Ok(list) = std::env::var("CONFAB_BENCH_SETUPS") else {
            return Self::ALL.to_vec();
        };
        list.split(',')
            .map(|name| match name.trim() {
                "sqlite" => Self::Sqlite,
                "postgres" => Self::Postgres,
                "redis" => Self::PostgresRedis,
                other => panic!("CONFAB_BENCH_SETUPS: unknown set-up {other:?}"),
            })
            .collect()
    }

    /// Starts a release server of this set-up with `vars`.
    pub(super) fn spawn(self, vars: &[(&str, &str)]) -> confab_e2e::TestApp {
        match self {
            Self::Sqlite => spawn_app_with(Backend::Sqlite, vars),
            Self::Postgres => spawn_app_with(Backend::Postgres, vars),
            Self::PostgresRedis => spawn_app_with_redis(Backend::Postgres, vars),
        }
    }
}

/// The settings of a bench server wired to the upstream at `base_url`, with
/// `workers` workers: one user sends everything from one address, so its
/// limits are lifted (the figures measure the paths, not the 429 path), and
/// title generation is off (one upstream call per send).
pub(super) fn served_by<'a>(base_url: &'a str, workers: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CONFAB_LLM_PROVIDER", "openai"),
        ("CONFAB_LLM_BASE_URL", base_url),
        ("CONFAB_LLM_MODEL", MODEL),
        ("CONFAB_LLM_API_KEY", "sk-bench-upstream-key-0123456789"),
        ("CONFAB__SERVER__WORKERS", workers),
        ("CONFAB__LOG__FILTER", "warn"),
        ("CONFAB__GENERATION__MAX_CONCURRENT_PER_USER", "2000"),
        ("CONFAB__GENERATION__PER_MINUTE", "100000000"),
        ("CONFAB__RATE_LIMIT__USER_PER_MINUTE", "100000000"),
        ("CONFAB__RATE_LIMIT__ANONYMOUS_PER_MINUTE", "100000000"),
        ("CONFAB__RATE_LIMIT__LOGIN_PER_MINUTE", "100000000"),
        ("CONFAB__RATE_LIMIT__REGISTER_PER_MINUTE", "100000000"),
        (
            "CONFAB__RATE_LIMIT__REGISTER_OVERALL_PER_MINUTE",
            "100000000",
        ),
        ("CONFAB__GENERATION__MAX_STREAMS", "20000"),
        ("CONFAB__LLM__TITLE_GENERATION", "false"),
    ]
}

/// One concurrency level: the direct figures, then each set-up's through
/// Confab.
pub(super) type Level = (Figures, Vec<(SetUp, Figures)>);

/// Runs the relay scenario on `runtime`, against servers with `cores`
/// workers: straight to the upstream, then through each of `setups`.
pub(super) fn measure(
    runtime: &tokio::runtime::Runtime,
    cores: usize,
    setups: &[SetUp],
) -> Vec<Level> {
    let upstream = FakeLlm::start();
    upstream.set_default(stamped());
    let base_url = upstream.base_url();
    let workers = cores.to_string();
    let vars = served_by(&base_url, &workers);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(2000)
        .build()
        .expect("client");
    let direct = Target::Direct(format!("{base_url}/chat/completions"));
    let mut levels: Vec<Level> = runtime.block_on(async {
        let mut levels = Vec::new();
        for (concurrency, measured) in self::levels() {
            let _ = rounds(&client, &direct, (concurrency, 1), ROUND_CAP).await;
            let figures = rounds(&client, &direct, (concurrency, measured), ROUND_CAP).await;
            print_row("", &figures);
            levels.push((figures, Vec::new()));
        }
        levels
    });
    for &setup in setups {
        let app = setup.spawn(&vars);
        runtime.block_on(async {
            let confab = Target::Confab {
                url: app.url("/api/v1/conversations"),
                token: app.user("relay").await,
            };
            for (level, (concurrency, measured)) in levels.iter_mut().zip(self::levels()) {
                let _ = rounds(&client, &confab, (concurrency, 1), ROUND_CAP).await;
                let figures = rounds(&client, &confab, (concurrency, measured), ROUND_CAP).await;
                print_row(setup.name(), &figures);
                level.1.push((setup, figures));
            }
        });
    }
    levels
}

/// The soft open-file limit of this process, from `/proc/self/limits`.
pub(super) fn open_file_limit() -> Option<String> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3).map(str::to_owned)
}

/// One row of the relay table.
fn write_row(md: &mut String, path: &str, f: &Figures) {
    let _ = writeln!(
        md,
        "| {} | {path} | {} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
        f.concurrency,
        f.outcomes,
        f.seconds,
        f.head.0,
        f.head.1,
        f.first.0,
        f.first.1,
        f.delta.0,
        f.delta.1
    );
}

/// Appends the relay section (method and table) to `md`.
pub(super) fn write_markdown(md: &mut String, levels: &[Level], cores: usize) {
    let spacing = SPACING.as_millis();
    let cap = ROUND_CAP.as_secs();
    let single = LEVELS[0].1;
    let backlog = fake_llm::BACKLOG;
    let limit = open_file_limit().unwrap_or_else(|| "unknown".to_owned());
    let text = format!(
        "
## Relay overhead

What Confab adds to a streamed answer over calling the model's server directly.
The upstream is the harness's fake model (`FakeLlm` in
`crates/testkit/src/fake_llm.rs`: one thread in this process, a listen backlog
of {backlog}, connections kept open between answers, as most servers keep them, and
used again by both paths' clients); it streams every answer as {DELTAS} text deltas {spacing} ms apart
(paced from the request's arrival, so a late write doesn't delay the next),
then `finish_reason: stop` and `[DONE]`; each delta's text is the instant it
was written. At each
concurrency c, c streams start at once (one round at 100 and at 1,000; at 1,
{single} rounds one after the other), each way:

- **direct**: streaming `POST /v1/chat/completions` straight to the upstream;
- **Confab**: sends (`POST /api/v1/conversations`, each a new
  conversation of one user, over kept-alive connections) to a release Confab
  server in this process wired to the same upstream, on each set-up in turn:
  SQLite with the in-process adapters; PostgreSQL (the local server) with the
  in-process adapters; PostgreSQL with Redis (the local one) for the stream
  logs, limits, caches and blocklist. {cores} workers, title generation
  off, the user's generation and rate limits lifted, the production defaults
  otherwise (so these answers are saved once, at their end: the save interval
  is 1 s).

The measured rounds follow an unmeasured warm-up round of the same size, and
each round is capped at {cap} s: a stream still open then counts as `timeout`.
Only complete streams (every delta and `[DONE]`) give samples; the streams column
counts every outcome (`HTTP n`: another status; `short`: the body ended early;
`error`: the connection failed). A delta is timed when the chunk holding it
arrives.

- **head**, **first delta**: from just before the request is sent to the
  response head, and to the first text delta (direct: a `data:` chunk with
  `delta.content`; Confab: an `event: delta` appending to
  `/message/content/parts/0`). Through Confab the head comes once the send is
  authenticated and the conversation, both messages and the opening events are
  written; the first delta also waits for the upstream request.
- **per-delta**: from the upstream's write of a delta to its arrival at the
  client, over all {DELTAS} deltas of every complete stream. Direct, that is
  loopback and the client; through Confab, also Confab's read, parse, stream
  log and SSE write, and its second hop.
- **Confab − direct**: the difference of the two paths' percentiles (the streams
  are not paired, so this is not a percentile of per-stream differences).

The load generator, the upstream and the server share the {cores} cores: at
1,000 streams they compete for them, and the direct path pays that too. Direct
streams start in lockstep, so their deltas arrive in bursts of c; Confab's setup
spreads its streams out. Open-file limit (`ulimit -n`) of the run: {limit}.

| concurrency | path | streams | s per round | head p50 ms | head p99 ms | first delta p50 ms | first delta p99 ms | per-delta p50 ms | per-delta p99 ms |
|---:|---|---|---:|---:|---:|---:|---:|---:|---:|
"
    );
    md.push_str(&text);
    let diff =
        |c: Quantiles, d: Quantiles| format!("**{:+.3}** | **{:+.3}**", c.0 - d.0, c.1 - d.1);
    for (direct, confabs) in levels {
        write_row(md, "direct", direct);
        for (setup, confab) in confabs {
            write_row(md, &format!("Confab, {}", setup.name()), confab);
            let _ = writeln!(
                md,
                "| {} | **Confab, {} − direct** | | | {} | {} | {} |",
                direct.concurrency,
                setup.name(),
                diff(confab.head, direct.head),
                diff(confab.first, direct.first),
                diff(confab.delta, direct.delta),
            );
        }
    }
    let _ = writeln!(
        md,
        "\nPer-delta latency, p50 / p99 ms, of each stream's first delta and of the later ones:\n"
    );
    let pair = |q: Quantiles| format!("{:.3} / {:.3}", q.0, q.1);
    for (direct, confabs) in levels {
        let _ = writeln!(
            md,
            "- {}, direct: first delta {}, later deltas {}",
            direct.concurrency,
            pair(direct.first_delta),
            pair(direct.later_deltas),
        );
        for (setup, confab) in confabs {
            let _ = writeln!(
                md,
                "- {}, Confab on {}: first delta {}, later deltas {}",
                direct.concurrency,
                setup.name(),
                pair(confab.first_delta),
                pair(confab.later_deltas),
            );
        }
    }
    write_cpu(md, levels);
    // Only said when this run shows it.
    if levels
        .iter()
        .flat_map(|(_, c)| c)
        .any(|(_, c)| c.first_delta.0 >= 30.0 && c.later_deltas.0 < 5.0)
    {
        let _ = writeln!(
            md,
            "\nA first delta held about 40 ms (Linux's delayed-ACK timer) while the later ones pass at\n\
             once is the signature of Nagle's algorithm: the small write of the first delta waits for\n\
             the client to acknowledge the opening events. Check that the server's accepted sockets\n\
             have `TCP_NODELAY` (actix-web leaves the OS default, off, unless told)."
        );
    }
    let failed: Vec<String> = levels
        .iter()
        .flat_map(|(d, c)| std::iter::once(("", d)).chain(c.iter().map(|(s, f)| (s.name(), f))))
        .filter(|(_, f)| !f.all_ok())
        .map(|(setup, f)| format!("{} {setup} at {} ({})", f.path, f.concurrency, f.outcomes))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "\nNot every stream completed: {}. The percentiles cover the complete streams only.",
            failed.join("; ")
        );
    }
}

/// Appends the relay's CPU time per stream, by component, to `md`.
fn write_cpu(md: &mut String, levels: &[Level]) {
    let _ = write!(
        md,
        "
### CPU time per stream

Where the machine's time went, per stream of {DELTAS} deltas, in µs on a
CPU: each component's run time over the measured rounds (the kernel's
per-thread counters, `/proc/<pid>/task/<tid>/schedstat`; kernel time spent on
a thread's behalf, its system calls and their network stack, counts as
that thread's), divided by the streams. **Confab workers**: the server's
request workers (HTTP, the send, the model's stream read, the SSE write);
**Confab runtime**: the server's tokio runtime (the Redis client's tasks,
timers, the blocking pool); **Confab database threads**: its store's reader
and writer threads (diesel, SQLite itself); **PostgreSQL**, **Redis**: the
local servers' processes, whole, counted only for the set-ups that use them
(they include the servers' own timers: Redis's runs ten times a second
whatever its load, which at one stream at a time is most of its column);
**upstream**: the fake model's thread; **load generator**: this binary's
client runtime; **other**: the rest of this process (allocator threads, the
harness). Other processes on the machine are not counted. At one stream at
a time every delta wakes each thread for itself, so a stream costs several
times what it does when a hundred share the wake-ups.

| concurrency | path | {} | all |
|---:|---|{}---:|
",
        cpu::COMPONENTS.join(" | "),
        "---:|".repeat(cpu::COMPONENTS.len()),
    );
    // The servers a path uses: the direct path and SQLite neither.
    let uses = |setup: Option<SetUp>, component: &str| match component {
        "PostgreSQL" => matches!(setup, Some(SetUp::Postgres | SetUp::PostgresRedis)),
        "Redis" => matches!(setup, Some(SetUp::PostgresRedis)),
        _ => true,
    };
    let row = |md: &mut String, concurrency: usize, setup: Option<SetUp>, f: &Figures| {
        let mut all = 0.0;
        let cells: Vec<String> = cpu::COMPONENTS
            .iter()
            .map(|&c| {
                if !uses(setup, c) {
                    return "—".to_owned();
                }
                let us = f.cpu.get(c).copied().unwrap_or(0.0);
                all += us;
                format!("{us:.0}")
            })
            .collect();
        let path = setup.map_or_else(|| "direct".to_owned(), |s| format!("Confab, {}", s.name()));
        let _ = writeln!(
            md,
            "| {concurrency} | {path} | {} | {all:.0} |",
            cells.join(" | ")
        );
    };
    for (direct, confabs) in levels {
        row(md, direct.concurrency, None, direct);
        for (setup, confab) in confabs {
            row(md, direct.concurrency, Some(*setup), confab);
        }
    }
}

/// Every answer of the relay's upstream: [`DELTAS`] stamped deltas, the
/// k-th (from 0) written k × [`SPACING`] after the request arrived.
fn stamped() -> Script {
    let mut steps = Vec::with_capacity(DELTAS * 2 + 2);
    for k in 0..DELTAS {
        steps.push(Step::At(SPACING * u32::try_from(k).unwrap_or(u32::MAX)));
        steps.push(Step::Stamp);
    }
    steps.push(Step::Finish("stop"));
    steps.push(Step::Done);
    Script::Stream(steps)
}
