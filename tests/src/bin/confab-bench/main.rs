//! `make bench`: measures the foundation's request paths against a release
//! server started in-process on loopback, then the overhead Confab's relay
//! adds to a streamed answer ([`relay`]), then the built-in model's speed
//! over the API, beside llama.cpp's server when one is named ([`model`]),
//! then the shared-state ports in-process and on Redis ([`shared_state`]),
//! then bursts of concurrent sends to one and two release `confab serve`
//! processes ([`sends`]; the `confab` binary must sit next to this one),
//! then the cached conversation list against `/healthz` ([`list`]), sends
//! per second with an instant model ([`throughput`]) and open streams per
//! GB of a `confab serve` process's memory ([`density`]), and writes the
//! figures, under a table of issue 13's goals ([`goals`]), to the file
//! named on the command line (docs/benchmarks.md).
//!
//! Every scenario is bounded in request count and time. The load generator
//! shares the machine's cores with the server, so the figures are a floor.

#![allow(clippy::print_stdout, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use confab_e2e::spawn_app_with;
use confab_sql::Backend;

/// The `confab` binary's allocator (`crates/server/src/main.rs`), so that
/// the servers this process starts allocate as the shipped one does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod cpu;
mod density;
mod goals;
mod list;
mod model;
mod relay;
mod search;
mod sends;
mod shared_state;
mod soak;
mod throughput;

/// One request-path scenario: a request sent `requests` times by
/// `concurrency` clients.
#[derive(Clone)]
struct Scenario {
    name: &'static str,
    method: reqwest::Method,
    path: &'static str,
    body: Option<fn(usize) -> String>,
    bearer: Option<String>,
    requests: usize,
    concurrency: usize,
}

impl Scenario {
    /// A `GET path` scenario.
    fn get(name: &'static str, path: &'static str, requests: usize, concurrency: usize) -> Self {
        Self {
            name,
            method: reqwest::Method::GET,
            path,
            body: None,
            bearer: None,
            requests,
            concurrency,
        }
    }

    /// A `POST path` scenario whose body `body(i)` makes for request `i`.
    fn post(
        name: &'static str,
        path: &'static str,
        body: fn(usize) -> String,
        requests: usize,
        concurrency: usize,
    ) -> Self {
        Self {
            name,
            method: reqwest::Method::POST,
            path,
            body: Some(body),
            bearer: None,
            requests,
            concurrency,
        }
    }
}

/// What one scenario measured.
struct Result {
    name: &'static str,
    concurrency: usize,
    requests: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    statuses: String,
}

/// Prints one scenario's figures.
fn print_row(r: &Result) {
    println!(
        "{:<45} c={:<3} {:>8.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  [{}]",
        r.name,
        r.concurrency,
        r.requests as f64 / r.seconds,
        r.p50_ms,
        r.p99_ms,
        r.statuses
    );
}

/// The `p` quantile (0..=1) of `sorted` (nearest rank), 0 when empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs `s` against the server at `app_url` (bounded by a 60 s cap).
async fn run(app_url: &str, client: &reqwest::Client, s: &Scenario) -> Result {
    run_for(app_url, client, s, Duration::from_secs(60)).await
}

/// Runs `s` against the server at `app_url`: no request starts once `cap`
/// has passed.
async fn run_for(app_url: &str, client: &reqwest::Client, s: &Scenario, cap: Duration) -> Result {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + cap;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..s.concurrency {
        let (client, next, url) = (client.clone(), next.clone(), format!("{app_url}{}", s.path));
        let (method, body, total, bearer) =
            (s.method.clone(), s.body, s.requests, s.bearer.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() > deadline {
                    break;
                }
                let mut req = client.request(method.clone(), &url);
                if let Some(make) = body {
                    req = req.header("content-type", "application/json").body(make(i));
                }
                if let Some(token) = &bearer {
                    req = req.bearer_auth(token);
                }
                let t = Instant::now();
                let res = req.send().await.expect("request");
                let status = res.status().as_u16();
                let _ = res.bytes().await;
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
                *statuses.entry(status).or_default() += 1;
            }
            (samples, statuses)
        }));
    }
    let mut samples = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for t in tasks {
        let (s, st) = t.await.expect("task");
        samples.extend(s);
        for (k, v) in st {
            *statuses.entry(k).or_default() += v;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    samples.sort_by(f64::total_cmp);
    Result {
        name: s.name,
        concurrency: s.concurrency,
        requests: samples.len(),
        seconds,
        p50_ms: percentile(&samples, 0.50),
        p99_ms: percentile(&samples, 0.99),
        statuses: statuses
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Sizes from the environment variable `var` (comma-separated numbers, for
/// a short run), else `default`.
fn sizes(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// `n` with a comma between thousands (`1,000`).
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A multi-threaded runtime for the measurements.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-load")
        .enable_all()
        .build()
        .expect("runtime")
}

/// The body of the login scenarios' account.
fn login_body(_: usize) -> String {
    r#"{"username":"benchlogin","password":"correct horse battery staple"}"#.to_owned()
}

/// A fresh account each call (warm-up included), so every measured
/// registration does the full work instead of stopping at a conflict.
fn register_body(_: usize) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        r#"{{"username":"bench{n}","email":"bench{n}@example.com","password":"correct horse battery staple"}}"#
    )
}

/// An access token of the login scenarios' account.
async fn login_token(client: &reqwest::Client, base: &str) -> String {
    let res = client
        .post(format!("{base}/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body(login_body(0))
        .send()
        .await
        .expect("login");
    let body: serde_json::Value = res.json().await.expect("token body");
    match body["access_token"].as_str() {
        Some(token) => token.to_owned(),
        None => panic!("login for the /users/me scenario failed: {body}"),
    }
}

/// Runs the section a `--<name>-only` flag names, prints its markdown and,
/// where the section feeds the goals table, that table (the other rows
/// "not measured"); nothing is written. `false` for any other argument.
fn only(flag: &str, cores: usize) -> bool {
    let mut md = String::new();
    match flag {
        // The model section alone, printed: for comparing settings
        // (threads, llama.cpp's) quickly.
        "--model-only" => {
            let _ = model::measure(&runtime());
            return true;
        }
        "--sends-only" => {
            let rows = sends::measure(&runtime(), cores);
            sends::write_markdown(&mut md, &rows, cores);
        }
        "--relay-only" => {
            let levels = relay::measure(&runtime(), cores, &relay::SetUp::chosen());
            relay::write_markdown(&mut md, &levels, cores);
            goals::write_markdown(
                &mut md,
                &goals::Measured {
                    relay: Some(&levels),
                    ..goals::Measured::default()
                },
            );
        }
        "--list-only" => {
            let rows = list::measure(&runtime(), cores, &relay::SetUp::chosen());
            list::write_markdown(&mut md, &rows, cores);
            goals::write_markdown(
                &mut md,
                &goals::Measured {
                    list: Some(&rows),
                    ..goals::Measured::default()
                },
            );
        }
        "--throughput-only" => {
            let rows = throughput::measure(&runtime(), cores, &relay::SetUp::chosen());
            throughput::write_markdown(&mut md, &rows, cores);
            goals::write_markdown(
                &mut md,
                &goals::Measured {
                    throughput: Some(&rows),
                    ..goals::Measured::default()
                },
            );
        }
        "--density-only" => {
            let report = density::measure(&runtime(), cores);
            density::write_markdown(&mut md, &report, cores);
            goals::write_markdown(
                &mut md,
                &goals::Measured {
                    density: Some(&report),
                    ..goals::Measured::default()
                },
            );
        }
        "--search-only" => {
            let rows = search::measure(&runtime(), cores);
            search::write_markdown(&mut md, &rows, cores);
        }
        "--soak-only" => {
            let report = soak::measure(&runtime(), cores);
            soak::write_markdown(&mut md, &report, cores);
        }
        _ => return false,
    }
    println!("{md}");
    true
}

/// Measures every section and writes the markdown to the file named first
/// (default docs/benchmarks.md). A `--<name>-only` flag instead measures one
/// section and prints its markdown: `--model-only` (the built-in model's
/// figures alone, printed), `--relay-only`, `--sends-only`, `--list-only`
/// (the cached conversation list against `/healthz`), `--throughput-only`
/// (sends per second), `--density-only` (open streams per GB of RSS),
/// `--search-only` (searches over 100,000 messages on SQLite and
/// PostgreSQL) and `--soak-only` (1,000 streams for 10 minutes, failures
/// and RSS).
///
/// Smaller sizes for a quick run, from the environment: `CONFAB_BENCH_SETUPS`
/// (the in-process set-ups: `sqlite,postgres,redis`),
/// `CONFAB_BENCH_SEND_LEVELS`, `CONFAB_BENCH_RELAY_LEVELS`, `CONFAB_BENCH_LIST_REQUESTS`,
/// `CONFAB_BENCH_THROUGHPUT_SENDS`, `CONFAB_BENCH_THROUGHPUT_LEVELS`,
/// `CONFAB_BENCH_DENSITY`, `CONFAB_BENCH_SEARCH_REQUESTS`,
/// `CONFAB_BENCH_SOAK_STREAMS` and
/// `CONFAB_BENCH_SOAK_SECS` (see each section).
fn main() {
    // The built-in model's threads, as `confab serve` sets them.
    if let Some(e) = confab_server::with_model_threads(0) {
        panic!("cannot restart with the model's threads in the environment: {e}");
    }
    // The TLS backend of every HTTP client here (reqwest is built without
    // one): install it before the first client, whichever section runs.
    confab_server::install_tls_provider();
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "docs/benchmarks.md".to_owned());
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    if only(&out, cores) {
        return;
    }
    let workers = cores.to_string();
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            ("CONFAB__SERVER__WORKERS", workers.as_str()),
            ("CONFAB__LOG__FILTER", "warn"),
            // One client address sends everything: lift the limits so the
            // figures measure the request paths, not the 429 path.
            ("CONFAB__RATE_LIMIT__ANONYMOUS_PER_MINUTE", "100000000"),
            ("CONFAB__RATE_LIMIT__USER_PER_MINUTE", "100000000"),
            ("CONFAB__RATE_LIMIT__LOGIN_PER_MINUTE", "100000000"),
            ("CONFAB__RATE_LIMIT__REGISTER_PER_MINUTE", "100000000"),
            (
                "CONFAB__RATE_LIMIT__REGISTER_OVERALL_PER_MINUTE",
                "100000000",
            ),
            // Queue every login so throughput, not refusals, is measured.
            ("CONFAB__AUTH__MAX_WAITING_HASHES", "100000"),
        ],
    );
    let runtime = runtime();
    runtime.block_on(async {
        let body = r#"{"username":"benchlogin","email":"benchlogin@example.com","password":"correct horse battery staple"}"#;
        let res = reqwest::Client::new()
            .post(format!("{}/api/v1/auth/register", app.address))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("register the login account");
        assert_eq!(res.status(), 201, "register the login account");
    });
    let scenarios = [
        Scenario::get("GET /healthz", "/healthz", 20_000, 1),
        Scenario::get("GET /healthz", "/healthz", 40_000, 64),
        Scenario::get("GET /readyz (SQLite round trip)", "/readyz", 20_000, 64),
        Scenario::get("GET unknown route (404 error path)", "/nope", 20_000, 64),
        Scenario::post(
            "POST /api/v1/auth/register (PBKDF2 600k)",
            "/api/v1/auth/register",
            register_body,
            120,
            8,
        ),
        Scenario::post(
            "POST /api/v1/auth/login (PBKDF2 600k)",
            "/api/v1/auth/login",
            login_body,
            120,
            8,
        ),
    ];
    let results: Vec<Result> = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("client");
        let mut results = Vec::new();
        for s in &scenarios {
            // Warm up connections and caches.
            let warm = Scenario {
                requests: s.concurrency * 4,
                ..s.clone()
            };
            let _ = run(&app.address, &client, &warm).await;
            let r = run(&app.address, &client, s).await;
            print_row(&r);
            results.push(r);
        }
        // GET /users/me alone, then while 16 clients flood the login route.
        let token = login_token(&client, &app.address).await;
        let me = Scenario {
            bearer: Some(token),
            ..Scenario::get("GET /api/v1/users/me", "/api/v1/users/me", 4_000, 4)
        };
        results.push(run(&app.address, &client, &me).await);
        let during_flood = Scenario {
            name: "GET /api/v1/users/me during a login flood",
            ..me.clone()
        };
        let flood = Scenario::post(
            "(login flood, 16 clients)",
            "/api/v1/auth/login",
            login_body,
            200,
            16,
        );
        let (during, flooded) = tokio::join!(
            run(&app.address, &client, &during_flood),
            run(&app.address, &client, &flood),
        );
        results.push(during);
        results.push(flooded);
        for r in &results[results.len() - 3..] {
            print_row(r);
        }
        results
    });
    let hash_ms = {
        let start = Instant::now();
        let _ = confab_password::derive(
            b"correct horse battery staple",
            b"0123456789abcdef",
            confab_password::MIN_ITERATIONS,
        );
        start.elapsed().as_secs_f64() * 1000.0
    };
    drop(app);
    let relay = relay::measure(&runtime, cores, &relay::SetUp::chosen());
    let model = model::measure(&runtime);
    let shared_state = shared_state::measure(&runtime);
    let sends = sends::measure(&runtime, cores);
    let list = list::measure(&runtime, cores, &relay::SetUp::chosen());
    let throughput = throughput::measure(&runtime, cores, &relay::SetUp::chosen());
    let density = density::measure(&runtime, cores);
    let search = search::measure(&runtime, cores);
    let soak = soak::measure(&runtime, cores);

    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    // Figures of a tree whose tracked files differ from its commit say so
    // (this file, which the run rewrites, aside). An untracked file is not
    // built unless a tracked one changed to name it.
    let changed = std::process::Command::new("git")
        .args([
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!docs/benchmarks.md",
        ])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    let commit = if changed {
        format!("commit `{commit}` with uncommitted changes")
    } else {
        format!("commit `{commit}`")
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `make bench` (`tests/src/bin/confab-bench/`); do not edit by hand.\n"
    );
    let _ = writeln!(
        md,
        "- {commit}, {cores} cores, release build, SQLite, {cores} workers"
    );
    let _ = writeln!(
        md,
        "- the load generator (reqwest, keep-alive) runs in the same process on the same cores,"
    );
    let _ = writeln!(
        md,
        "  over loopback: the figures are a floor, not the server's ceiling"
    );
    let _ = writeln!(
        md,
        "- the servers started in this process allocate with jemalloc, as the `confab` binary does"
    );
    let _ = writeln!(
        md,
        "- they log at `info` as the `confab` binary does (its JSON lines), into memory, not stderr"
    );
    let _ = writeln!(
        md,
        "- every scenario is bounded (request count, 60 s cap), after a short warm-up"
    );
    let _ = writeln!(
        md,
        "- one run on a shared 2-core machine: expect tens of percent between runs; compare"
    );
    let _ = writeln!(
        md,
        "  figures from the same machine and commit range only\n"
    );
    goals::write_markdown(
        &mut md,
        &goals::Measured {
            relay: Some(&relay),
            list: Some(&list),
            throughput: Some(&throughput),
            density: Some(&density),
        },
    );
    let _ = writeln!(md, "\n## Request paths\n");
    let _ = writeln!(
        md,
        "| scenario | concurrency | requests | req/s | p50 ms | p99 ms | statuses |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|");
    for r in &results {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {} |",
            r.name,
            r.concurrency,
            r.requests,
            r.requests as f64 / r.seconds,
            r.p50_ms,
            r.p99_ms,
            r.statuses
        );
    }
    let _ = writeln!(
        md,
        "\nRegister and login are bounded by password hashing by design: at most one hash per"
    );
    let _ = writeln!(
        md,
        "core runs at once (`auth.max_concurrent_hashes`). One 600,000-iteration"
    );
    let _ = writeln!(
        md,
        "PBKDF2-HMAC-SHA256 hash took {hash_ms:.1} ms here, so the bound is {cores} / {hash_ms:.1} ms = {:.0} logins/s.",
        cores as f64 * 1000.0 / hash_ms
    );
    let _ = writeln!(
        md,
        "The `/users/me` rows show what the rest of the API pays while logins saturate the"
    );
    let _ = writeln!(
        md,
        "hashing threads: hashes run on the blocking pool, not on the request workers."
    );
    list::write_markdown(&mut md, &list, cores);
    relay::write_markdown(&mut md, &relay, cores);
    throughput::write_markdown(&mut md, &throughput, cores);
    model::write_markdown(&mut md, &model);
    shared_state::write_markdown(&mut md, &shared_state, cores);
    sends::write_markdown(&mut md, &sends, cores);
    density::write_markdown(&mut md, &density, cores);
    search::write_markdown(&mut md, &search, cores);
    soak::write_markdown(&mut md, &soak, cores);
    std::fs::write(&out, md).unwrap_or_else(|e| panic!("cannot write {out}: {e}"));
    println!("wrote {out}");
}
