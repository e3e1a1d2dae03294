//! The cached-list scenario (issue 13): `GET /api/v1/conversations`, served
//! from the read cache, against `GET /healthz` on the same server.
//!
//! For each of [`SETUPS`] (in-process state on SQLite; PostgreSQL with
//! Redis), one release server starts in this process, one user makes
//! [`CONVERSATIONS`] conversations (each a streamed send to the harness's
//! `FakeLlm`, read to its end), and one list read warms the cache. Then
//! [`CLIENTS`] kept-alive clients send `/healthz`, then the list, each for
//! [`REQUESTS`] requests (`CONFAB_BENCH_LIST_REQUESTS` overrides it) after
//! an unmeasured warm-up, capped at [`CAP`]. The list's rate is reported
//! as a share of `/healthz`'s measured on the same server.

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
/// The goal: the cached list serves at least this share of `/healthz`'s
/// requests per second.
pub(super) const GOAL_PERCENT: f64 = 50.0;

/// What one set-up measured.
pub(super) struct Row {
    /// Where the server ran.
    pub(super) setup: SetUp,
    /// `GET /healthz`.
    healthz: Measured,
    /// `GET /api/v1/conversations`, served from the cache.
    list: Measured,
    /// Items in the warming read's page (the conversations made).
    items: usize,
}

impl Row {
    /// Requests per second of a run.
    fn rate(r: &Measured) -> f64 {
        r.requests as f64 / r.seconds
    }

    /// The list's requests per second, as a percentage of `/healthz`'s.
    pub(super) fn percent(&self) -> f64 {
        100.0 * Self::rate(&self.list) / Self::rate(&self.healthz)
    }

    /// `/healthz`'s and the list's requests per second.
    pub(super) fn rates(&self) -> (f64, f64) {
        (Self::rate(&self.healthz), Self::rate(&self.list))
    }

    /// Was every list response a 200?
    pub(super) fn list_all_ok(&self) -> bool {
        self.list.statuses == format!("200×{}", self.list.requests)
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
            Row {
                setup,
                healthz,
                list,
                items,
            }
        });
        println!(
            "list {:<18} cached list at {:.0} % of /healthz",
            setup.name(),
            row.percent()
        );
        drop(app);
        rows.push(row);
    }
    rows
}

/// One measured run's row of the table.
fn write_run(md: &mut String, setup: SetUp, r: &Measured, percent: &str) {
    let _ = writeln!(
        md,
        "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {percent} |",
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
{cap} s), after an unmeasured warm-up of 20 requests per client; `/healthz`
first, then the list (`GET /api/v1/conversations` with the user's bearer
token), on the same server. **list / healthz** is the ratio of their requests
per second. The load generator shares the {cores} cores with the server (and
with Redis), so both rates are a floor.

| set-up | request | requests | req/s | p50 ms | p99 ms | statuses | list / healthz |
|---|---|---:|---:|---:|---:|---|---:|
"
    );
    md.push_str(&text);
    for row in rows {
        write_run(md, row.setup, &row.healthz, "");
        write_run(
            md,
            row.setup,
            &row.list,
            &format!("**{:.0} %**", row.percent()),
        );
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
        .map(|r| format!("{} ({})", r.setup.name(), r.list.statuses))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "\nNot every list read was a 200: {}.",
            failed.join("; ")
        );
    }
}
