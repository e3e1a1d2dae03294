//! The concurrent-sends scenario (issue 11): bursts of sends arriving
//! together, each a new conversation of one user, against one service in
//! three set-ups: one instance with in-process shared state on SQLite, one
//! instance on PostgreSQL and Redis, and two instances on PostgreSQL and
//! Redis taking the sends alternately. Every instance is a release
//! `confab serve` process (the binary next to this one); the model is the
//! harness's `FakeLlm` answering [`DELTAS`] deltas [`SPACING`] apart.
//!
//! At each of [`LEVELS`], an unmeasured warm-up burst of the same size,
//! then the measured one; each capped at [`ROUND_CAP`]. The driver is the
//! e2e load tests' (`confab_e2e::load`): it counts complete streams (200,
//! every delta, `message_stream_complete` then `[DONE]`, no `error`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use confab_e2e::load::{Burst, DELTAS, SPACING, burst, burst_vars, paced_llm};
use confab_e2e::{TestApp, redis_url, spawn_process};
use confab_sql::testing::TestDatabase;

use super::percentile;

/// Sends started at once (`CONFAB_BENCH_SEND_LEVELS`, comma-separated,
/// overrides them: e.g. `20` to measure a build that can't hold 100).
const LEVELS: [usize; 2] = [100, 1000];

fn levels() -> Vec<usize> {
    std::env::var("CONFAB_BENCH_SEND_LEVELS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| LEVELS.to_vec())
}
/// The longest a burst runs; streams still open then are not complete.
const ROUND_CAP: Duration = Duration::from_secs(60);

/// One set-up of the service.
#[derive(Clone, Copy)]
enum Setup {
    /// One instance, SQLite, no Redis.
    InProcess,
    /// One instance, PostgreSQL and Redis.
    Redis,
    /// Two instances, PostgreSQL and Redis, sent to alternately.
    TwoInstances,
}

impl Setup {
    const ALL: [Setup; 3] = [Setup::InProcess, Setup::Redis, Setup::TwoInstances];

    const fn name(self) -> &'static str {
        match self {
            Self::InProcess => "in-process state, SQLite, 1 instance",
            Self::Redis => "Redis, PostgreSQL, 1 instance",
            Self::TwoInstances => "Redis, PostgreSQL, 2 instances",
        }
    }
}

/// Redis's own counters (`INFO`), to measure what a burst cost it.
#[derive(Clone, Copy, Default)]
struct RedisCounters {
    /// Commands run (`total_commands_processed`: the commands a script
    /// calls count too).
    calls: u64,
    /// Scripts run (`EVALSHA` and `EVAL` calls): most of the round trips.
    scripts: u64,
    /// Bytes received from and sent to clients.
    bytes: u64,
    /// Clients connected.
    clients: u64,
    /// CPU Redis used so far, user and system (µs).
    cpu_micros: u64,
}

/// Reads the counters with a plain RESP `INFO` on `url`'s Redis.
async fn redis_counters(url: &str) -> RedisCounters {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let host = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_owned();
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .expect("Redis for the counters");
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(b"*2\r\n$4\r\nINFO\r\n$10\r\neverything\r\n")
        .await
        .expect("INFO sent");
    let mut head = String::new();
    stream.read_line(&mut head).await.expect("INFO's length");
    let len: usize = head
        .trim()
        .trim_start_matches('$')
        .parse()
        .expect("a bulk reply");
    let mut body = vec![0; len + 2];
    stream.read_exact(&mut body).await.expect("INFO's body");
    let info = String::from_utf8_lossy(&body);
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
            .unwrap_or(0)
    };
    let calls = field("total_commands_processed");
    let scripts = ["cmdstat_evalsha", "cmdstat_eval"]
        .iter()
        .map(|name| {
            info.lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .strip_prefix(":calls=")?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        })
        .sum();
    let seconds = |name: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let cpu_micros = ((seconds("used_cpu_user") + seconds("used_cpu_sys")) * 1e6) as u64;
    RedisCounters {
        cpu_micros,
        calls,
        scripts,
        bytes: field("total_net_input_bytes") + field("total_net_output_bytes"),
        clients: field("connected_clients"),
    }
}

/// What one burst measured.
pub(super) struct Row {
    setup: &'static str,
    sends: usize,
    complete: usize,
    /// Statuses and problems, as the driver sums them up.
    summary: String,
    /// Time to first delta, p50 and p99, in ms (complete sends).
    first: (f64, f64),
    /// From the start to the end of the last stream.
    wall: Duration,
    /// Redis scripts, commands and bytes per send, the most clients
    /// connected during the burst, and Redis's CPU per send in µs (`None`
    /// without Redis).
    redis: Option<(f64, f64, f64, u64, f64)>,
}

impl Row {
    fn of(setup: Setup, b: &Burst) -> Self {
        let ms: Vec<f64> = b
            .first_deltas()
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        Self {
            setup: setup.name(),
            sends: b.sends.len(),
            complete: b.complete(),
            summary: b.summary(),
            first: (percentile(&ms, 0.50), percentile(&ms, 0.99)),
            wall: b.wall,
            redis: None,
        }
    }
}

/// Starts `setup`'s instances with `cores` workers each.
async fn start(setup: Setup, base: &str, cores: &str) -> Vec<TestApp> {
    let db = Arc::new(match setup {
        Setup::InProcess => TestDatabase::sqlite(),
        Setup::Redis | Setup::TwoInstances => TestDatabase::postgres(),
    });
    let (url, prefix) = (
        redis_url(),
        format!("confab-bench:{}:", uuid::Uuid::new_v4()),
    );
    let mut vars = burst_vars(base);
    vars.push(("CONFAB__SERVER__WORKERS", cores));
    if !matches!(setup, Setup::InProcess) {
        vars.push(("REDIS_URL", url.as_str()));
        vars.push(("CONFAB__REDIS__KEY_PREFIX", prefix.as_str()));
    }
    let count = if matches!(setup, Setup::TwoInstances) {
        2
    } else {
        1
    };
    let mut apps = Vec::new();
    for _ in 0..count {
        apps.push(spawn_process(Arc::clone(&db), &vars).await);
    }
    apps
}

/// Runs every set-up at every level on `runtime`.
pub(super) fn measure(runtime: &tokio::runtime::Runtime, cores: usize) -> Vec<Row> {
    let cores = cores.to_string();
    let mut rows = Vec::new();
    for setup in Setup::ALL {
        let llm = paced_llm();
        let base = llm.base_url();
        runtime.block_on(async {
            let apps = start(setup, &base, &cores).await;
            let targets: Vec<&TestApp> = apps.iter().collect();
            let token = apps[0].user("bench").await;
            for sends in levels() {
                let _ = burst(&targets, &token, sends, ROUND_CAP).await;
                let with_redis = !matches!(setup, Setup::InProcess);
                let before = if with_redis {
                    redis_counters(&redis_url()).await
                } else {
                    RedisCounters::default()
                };
                let peak = Arc::new(AtomicU64::new(0));
                let sampler = with_redis.then(|| {
                    let peak = Arc::clone(&peak);
                    tokio::spawn(async move {
                        loop {
                            let now = redis_counters(&redis_url()).await.clients;
                            peak.fetch_max(now, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(25)).await;
                        }
                    })
                });
                let mut row = Row::of(setup, &burst(&targets, &token, sends, ROUND_CAP).await);
                if let Some(sampler) = sampler {
                    sampler.abort();
                }
                if with_redis {
                    let after = redis_counters(&redis_url()).await;
                    #[allow(clippy::cast_precision_loss)]
                    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / sends as f64;
                    row.redis = Some((
                        per(after.scripts, before.scripts),
                        per(after.calls, before.calls),
                        per(after.bytes, before.bytes),
                        peak.load(Ordering::Relaxed).max(after.clients),
                        per(after.cpu_micros, before.cpu_micros),
                    ));
                }
                println!(
                    "sends {:<38} c={:<4} first delta {:>8.3}/{:>8.3} ms p50/p99  {}",
                    row.setup, row.sends, row.first.0, row.first.1, row.summary
                );
                rows.push(row);
            }
        });
    }
    rows
}

/// The Redis design before issue 11, measured once with this bench at
/// commit b3ebc31 (its release `confab` beside this bench, same machine):
/// the code it measured is gone, so the figures are kept as text.
const BEFORE_AND_AFTER: &str = "
### Redis before and after

Measured once with this bench on the Redis design before issue 11 (commit
`b3ebc31`: a pool of 32 connections, one taken per command, one held per
follower, a stop-flag poll per running answer every 100 ms), release build,
same machine. The same bench on the current code, at the same sizes, gave
30 scripts, 140 commands, 18–23 KB and 4 clients (7 for two instances) per
send, every send complete.

| sends at once | set-up | complete | Redis scripts/send | Redis cmds/send | Redis bytes/send | Redis clients |
|---:|---|---:|---:|---:|---:|---:|
| 20 | 1 instance | 20/20 | 48.0 | 373.9 | 44111 | 51 |
| 50 | 1 instance | 50/50 | 48.0 | 373.2 | 39159 | 83 |
| 50 | 2 instances | 50/50 | 48.1 | 374.6 | 39405 | 106 |
| 100 | 1 instance | 0/100 (60 × 503, 40 × 429) | | | | 50 |
| 100 | 2 instances | 50/100 (streams ending without `[DONE]`) | | | | 165 |
| 1000 | 1 instance | 0/1000 (896 × 503, 104 streams ending without an event) | | | | 96 |
| 1000 | 2 instances | 60/1000 (937 × 429) | | | | 175 |
";

/// Appends the concurrent-sends section to `md`.
pub(super) fn write_markdown(md: &mut String, rows: &[Row], cores: usize) {
    let spacing = SPACING.as_millis();
    let cap = ROUND_CAP.as_secs();
    let text = format!(
        "
## Concurrent sends

Bursts of sends arriving together (issue 11): c streaming sends
(`POST /api/v1/conversations`, `Accept: text/event-stream`) started at once, each
a new conversation of one user, the model (the harness's `FakeLlm`) answering
each with {DELTAS} text deltas {spacing} ms apart, then `finish_reason: stop` and
`[DONE]`. Every instance is a release `confab serve` process with {cores} workers,
the user's generation and rate limits lifted, title generation off, the
production defaults otherwise (`redis.*` included); two instances share one
database, one Redis and one key prefix, and take the sends alternately. Each
measured burst follows an unmeasured warm-up burst of the same size, and is
capped at {cap} s.

- **complete**: streams that were a 200 carrying every delta, then
  `message_stream_complete` and `[DONE]`, and no `error` event (the e2e load
  tests, `tests/e2e/load.rs`, also check the database);
- **first delta**: from just before a send to its first text delta, over the
  complete streams;
- **wall**: from the start of the burst to the end of its last stream;
- **Redis scripts/send, cmds/send, bytes/send**: Redis's own counters
  (`INFO`: `EVALSHA` calls, which are most of the round trips;
  `total_commands_processed`, which counts the commands inside scripts too;
  network bytes in and out) over the measured burst divided by the sends
  (the counters are the whole Redis's, so anything else on it counts too);
  **Redis CPU µs/send**: the CPU time Redis used over the burst (`INFO`
  `used_cpu_user` + `used_cpu_sys`) divided by the sends: one Redis core
  serves about 1,000,000 / that many sends a second; **clients** is the most connected clients Redis reported
  during the burst (sampled every 25 ms; the bench's own connection
  included). Before the rework of issue 11 (a pooled connection per
  command), the Redis set-ups failed at 100 sends at once (release build;
  from 50 in debug builds); see
  the section on Redis before and after below.

| sends at once | set-up | complete | first delta p50 ms | first delta p99 ms | wall s | Redis scripts/send | Redis cmds/send | Redis bytes/send | Redis clients | Redis CPU µs/send |
|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
"
    );
    md.push_str(&text);
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {}/{} | {:.3} | {:.3} | {:.2} | {} |",
            r.sends,
            r.setup,
            r.complete,
            r.sends,
            r.first.0,
            r.first.1,
            r.wall.as_secs_f64(),
            r.redis.map_or_else(
                || "— | — | — | — | —".to_owned(),
                |(scripts, calls, bytes, clients, cpu)| {
                    format!("{scripts:.1} | {calls:.1} | {bytes:.0} | {clients} | {cpu:.0}")
                }
            )
        );
    }
    md.push_str(BEFORE_AND_AFTER);
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.complete < r.sends)
        .map(|r| format!("- {}, {} at once: {}", r.setup, r.sends, r.summary))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(md, "\nNot every send completed:\n\n{}", failed.join("\n"));
    }
}
