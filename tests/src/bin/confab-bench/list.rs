//! The cached-list scenario (issue 13): `GET /api/v1/conversations`, served
//! from the read cache, against `GET /healthz` on the same server.
//!
//! For each of [`SETUPS`] (in-process state on SQLite; PostgreSQL with
//! Redis), one release server starts in this process, one user makes
//! [`CONVERSATIONS`] conversations (each a streamed send to the harness's
//! `FakeLlm`, read to its end), and one list read warms the cache. Then
//! [`CLIENTS`] kept-alive clients send `/healthz`, then the list, each for
//! [`REQUESTS`] requests (`CONFAB_BENCH_LIST_REQUESTS` overrides it) after
//! an unmeasured warm-up, capped at [`CAP`], and again, [`ROUNDS`] times in
//! all. Each round's list rate is a share of its `/healthz`'s, measured on
//! the same server a moment before; the median round's share is reported
//! (the share of one pair of runs, about a second each, ranged from 50 % to
//! 79 % over four runs of the bench on one build).

use std::fmt::Write as _;
use std::time::Duration;

use confab_e2e::fake_llm::{FakeLlm, Script};

use super::relay::{SetUp, served_by};
use super::{Result as Measured, Scenario, print_row, run, run_for, sizes};

/// The set-ups measured, when chosen (`CONFAB_BENCH_SETUPS`).
const SETUPS: [SetUp; 2] = [SetUp::Sqlite, SetUp::PostgresRedis];
/// Conversations the listing user has: the list's default page (20) full.
pub(super) const CONVERSATIONS: usize = 20;
/// Concurrent kept-alive clients.
const CLIENTS: usize = 50;
/// Requests of each measured run.
const REQUESTS: usize = 40_000;
/// The longest a measured run sends for.
const CAP: Duration = Duration::from_secs(30);
/// Pairs of runs (`/healthz`, then the list) on each set-up: an odd
/// number, so that one of them is the median.
const ROUNDS: usize = 3;
/// The goal: the cached list serves at least this share of `/healthz`'s
/// requests per second.
pub(super) const GOAL_PERCENT: f64 = 50.0;

/// One round: `/healthz`, then the list, on the same server.
struct Round {
    /// `GET /healthz`.
    healthz: Measured,
    /// `GET /api/v1/conversations`, served from the cache.
    list: Measured,
}

impl Round {
    /// Requests per second of a run.
    fn rate(r: &Measured) -> f64 {
        r.requests as f64 / r.seconds
    }

    /// The list's requests per second, as a percentage of `/healthz`'s.
    fn percent(&self) -> f64 {
        100.0 * Self::rate(&self.list) / Self::rate(&self.healthz)
    }

    /// Was every list response a 200?
    fn list_all_ok(&self) -> bool {
        self.list.statuses == format!("200×{}", self.list.requests)
    }
}

/// What one set-up measured.
pub(super) struct Row {
    /// Where the server ran.
    pub(super) setup: SetUp,
    /// The rounds, in the order they ran (at least one).
    rounds: Vec<Round>,
    /// Items in the warming read's page (the conversations made).
    items: usize,
}

impl Row {
    /// The index of the round whose share is the median of the rounds'.
    fn median(&self) -> usize {
        let mut order: Vec<usize> = (0..self.rounds.len()).collect();
        order.sort_by(|&a, &b| {
            self.rounds[a]
                .percent()
                .total_cmp(&self.rounds[b].percent())
        });
        order[order.len() / 2]
    }

    /// The median round's list rate, as a percentage of its `/healthz`'s.
    pub(super) fn percent(&self) -> f64 {
        self.rounds[self.median()].percent()
    }

    /// The median round's `/healthz` and list requests per second.
    pub(super) fn rates(&self) -> (f64, f64) {
        let round = &self.rounds[self.median()];
        (Round::rate(&round.healthz), Round::rate(&round.list))
    }

    /// Was every list response of every round a 200?
    pub(super) fn list_all_ok(&self) -> bool {
        self.rounds.iter().all(Round::list_all_ok)
    }
}

/// Measures each of [`SETUPS`] that `chosen` holds, on `runtime`, against
/// servers with `cores` workers.
pub(super) fn measure(
    runtime: &tokio::runtime::Runtime,
    cores: usize,
    chosen: &[SetUp],
) -> Vec<Row> {
    let requests = sizes("CONFAB_BENCH_LIST_REQUESTS", &[REQUESTS])[0];
    let upstream = FakeLlm::start();
    upstream.set_default(Script::reply(&["Sure", ", noted."]));
    let base_url = upstream.base_url();
    let workers = cores.to_string();
    let vars = served_by(&base_url, &workers);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");
    let mut rows = Vec::new();
    for setup in SETUPS.into_iter().filter(|s| chosen.contains(s)) {
        let app = setup.spawn(&vars);
        let row = runtime.block_on(async {
            let token = app.user("lister").await;
            for i in 0..CONVERSATIONS {
                let _ = app.chat(&token, &format!("Remember item {i}.")).await;
            }
            // The first read fills the cache; the measured ones hit it.
            let res = app.get_auth("/api/v1/conversations", &token).await;
            assert_eq!(res.status(), 200, "the warming list read");
            let page: serde_json::Value = res.json().await.expect("a list page");
            let items = page["items"].as_array().map_or(0, Vec::len);
            let healthz = Scenario::get("GET /healthz", "/healthz", requests, CLIENTS);
            let list = Scenario {
                bearer: Some(token),
                ..Scenario::get(
                    "GET /api/v1/conversations (cached)",
                    "/api/v1/conversations",
                    requests,
                    CLIENTS,
                )
            };
            let mut rounds = Vec::with_capacity(ROUNDS);
            for _ in 0..ROUNDS {
                let mut measured = Vec::new();
                for s in [&healthz, &list] {
                    let warm = Scenario {
                        requests: s.concurrency * 20,
                        ..s.clone()
                    };
                    let _ = run(&app.address, &client, &warm).await;
                    let r = run_for(&app.address, &client, s, CAP).await;
                    print!("list {:<18} ", setup.name());
                    print_row(&r);
                    measured.push(r);
                }
                let list = measured.pop().expect("the list's run");
                let healthz = measured.pop().expect("the /healthz run");
                rounds.push(Round { healthz, list });
            }
            Row {
                setup,
                rounds,
                items,
            }
        });
        let shares: Vec<String> = row
            .rounds
            .iter()
            .map(|r| format!("{:.0} %", r.percent()))
            .collect();
        println!(
            "list {:<18} cached list at {:.0} % of /healthz (median of {})",
            setup.name(),
            row.percent(),
            shares.join(", ")
        );
        drop(app);
        rows.push(row);
    }
    rows
}

/// One measured run's row of the table.
fn write_run(md: &mut String, setup: SetUp, round: usize, r: &Measured, percent: &str) {
    let _ = writeln!(
        md,
        "| {} | {round} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {percent} |",
        setup.name(),
        r.name,
        r.requests,
        r.requests as f64 / r.seconds,
        r.p50_ms,
        r.p99_ms,
        r.statuses,
    );
}

/// Appends the cached-list section (method and table) to `md`.
pub(super) fn write_markdown(md: &mut String, rows: &[Row], cores: usize) {
    let requests = sizes("CONFAB_BENCH_LIST_REQUESTS", &[REQUESTS])[0];
    let cap = CAP.as_secs();
    let text = format!(
        "
## Cached conversation list vs /healthz

What an authenticated read served from the read cache costs beside the
cheapest route (issue 13's goal: the list at ≥ {GOAL_PERCENT:.0} % of `/healthz`'s
requests per second). On each set-up in turn (SQLite with the in-process
adapters, so the cache is in the server's memory; PostgreSQL with Redis, so the
cache, the rate limits and the token blocklist are Redis round trips), a
release Confab server starts in this process ({cores} workers, every rate limit
lifted, title generation off, the production defaults otherwise: a cached list
lives 10 min). One user makes {CONVERSATIONS} conversations (a streamed send each, to the
harness's `FakeLlm`, read to its end), so the list's default page (20 items) is
full, and the warm-up's reads fill the cache and each worker's rendered
bodies: every measured read is a hit (the access token checked and the
user's rate limit taken in one look-up, the cache version read, and the
body the worker rendered for that version sent with its `ETag`).

Each row is {requests} requests from {CLIENTS} kept-alive clients (no request starts after
{cap} s), after an unmeasured warm-up of 20 requests per client. A round is
`/healthz` first, then the list (`GET /api/v1/conversations` with the user's
bearer token), on the same server; **list / healthz** is the ratio of their
requests per second. Each set-up runs {ROUNDS} rounds one after the other, and
the goal's figure is the median round's ratio (in bold): one pair of runs
about a second long each is at the mercy of what else the two cores do in
that second (in one session its ratio ranged from 50 % to 79 % over four
runs of the bench on one build). The load generator shares the {cores} cores
with the server (and with Redis), so both rates are a floor.

| set-up | round | request | requests | req/s | p50 ms | p99 ms | statuses | list / healthz |
|---|---:|---|---:|---:|---:|---:|---|---:|
"
    );
    md.push_str(&text);
    for row in rows {
        let median = row.median();
        for (n, round) in row.rounds.iter().enumerate() {
            let share = format!("{:.0} %", round.percent());
            write_run(md, row.setup, n + 1, &round.healthz, "");
            write_run(
                md,
                row.setup,
                n + 1,
                &round.list,
                &if n == median {
                    format!("**{share}**")
                } else {
                    share
                },
            );
        }
    }
    let short: Vec<String> = rows
        .iter()
        .filter(|r| r.items != CONVERSATIONS)
        .map(|r| format!("{}: {} items", r.setup.name(), r.items))
        .collect();
    if !short.is_empty() {
        let _ = writeln!(
            md,
            "\nThe warming read did not list every conversation: {}.",
            short.join("; ")
        );
    }
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.list_all_ok())
        .map(|r| {
            let statuses: Vec<&str> = r.rounds.iter().map(|x| x.list.statuses.as_str()).collect();
            format!("{} ({})", r.setup.name(), statuses.join(", "))
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "\nNot every list read was a 200: {}.",
            failed.join("; ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `requests` in `seconds`, all 200.
    fn run(requests: usize, seconds: f64) -> Measured {
        Measured {
            name: "run",
            concurrency: CLIENTS,
            requests,
            seconds,
            p50_ms: 1.0,
            p99_ms: 2.0,
            statuses: format!("200×{requests}"),
        }
    }

    /// A round whose list ran at `percent` of `/healthz`'s 1,000 req/s.
    fn round(percent: usize) -> Round {
        Round {
            healthz: run(1_000, 1.0),
            list: run(percent * 10, 1.0),
        }
    }

    #[test]
    fn the_figure_is_the_median_rounds_share_and_rates() {
        let row = Row {
            setup: SetUp::Sqlite,
            rounds: vec![round(79), round(47), round(55)],
            items: CONVERSATIONS,
        };
        assert_eq!(row.median(), 2);
        assert!((row.percent() - 55.0).abs() < 1e-9);
        let (healthz, list) = row.rates();
        assert!((healthz - 1_000.0).abs() < 1e-9 && (list - 550.0).abs() < 1e-9);
        assert!(row.list_all_ok());
    }

    #[test]
    fn one_round_with_a_failed_read_fails_the_set_up() {
        let mut failed = round(60);
        failed.list.statuses = "200×599, 503×1".into();
        let row = Row {
            setup: SetUp::PostgresRedis,
            rounds: vec![round(58), failed, round(61)],
            items: CONVERSATIONS,
        };
        assert!(!row.list_all_ok());
        let mut md = String::new();
        write_markdown(&mut md, &[row], 2);
        assert!(
            md.contains("| PostgreSQL + Redis | 2 | run | 600 |"),
            "{md}"
        );
        assert!(md.contains("**60 %**"), "the median round in bold: {md}");
        assert!(md.contains("Not every list read was a 200"), "{md}");
    }
}
