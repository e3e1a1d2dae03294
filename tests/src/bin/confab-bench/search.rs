//! The search scenario (issue 15): `GET /api/v1/conversations?q=` over
//! [`MESSAGES`] messages.
//!
//! On SQLite and on PostgreSQL in turn, a release server starts in this
//! process; one user registers, and [`CONVERSATIONS`] conversations of
//! [`PER_CONVERSATION`] messages each (questions and answers of 30 to 60
//! words drawn from a vocabulary of [`VOCABULARY`] made-up words, a few
//! common, most rare, as in real text) are written straight into its
//! database in batches, so the database's own triggers index them. Then
//! each kind of query runs [`REQUESTS`] times from [`CLIENTS`] clients,
//! every request distinct (the query, its `limit` and its `order` vary), so
//! no request is answered from the list cache: each is the database's
//! search, ranking, the snippet of every result and the page rendered.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use confab_e2e::TestApp;
use confab_sql::Backend;
use confab_sql::testing::TestDatabase;

use super::relay::served_by;
use super::{percentile, sizes};

/// Conversations of the searching user.
const CONVERSATIONS: usize = 1_000;
/// Messages in each (questions and answers in turn).
const PER_CONVERSATION: usize = 100;
/// Messages in all.
const MESSAGES: usize = CONVERSATIONS * PER_CONVERSATION;
/// Words the messages are written with.
const VOCABULARY: usize = 20_000;
/// Requests of each kind of query.
const REQUESTS: usize = 400;
/// Concurrent clients.
const CLIENTS: usize = 8;
/// The longest one kind runs for.
const CAP: Duration = Duration::from_secs(60);

/// A deterministic generator (xorshift64*), so every run searches the same
/// text.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0.0..1.0`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A word's rank, `0..VOCABULARY`: low ranks far more often (the
    /// cube of a uniform number: the top 1 % of words make a fifth of the
    /// text, and most words are rare).
    fn rank(&mut self) -> usize {
        ((self.unit().powi(3) * VOCABULARY as f64) as usize).min(VOCABULARY - 1)
    }
}

/// The made-up word of rank `n`: syllables, so prefixes are shared as in a
/// real language (`kalo`, `kalomi`, …).
fn word(n: usize) -> String {
    const SYLLABLES: [&str; 24] = [
        "ka", "lo", "mi", "ren", "tus", "va", "po", "shi", "dre", "nu", "gal", "fi", "ro", "ze",
        "bun", "te", "qua", "lis", "mo", "har", "pe", "sto", "jin", "cla",
    ];
    let mut out = String::new();
    let mut rest = n + SYLLABLES.len();
    while rest > 0 {
        out.push_str(SYLLABLES[rest % SYLLABLES.len()]);
        rest /= SYLLABLES.len();
    }
    out
}

/// A message's text: 30 to 60 words.
fn text(random: &mut Random) -> String {
    let words = 30 + (random.next() % 31) as usize;
    (0..words)
        .map(|_| word(random.rank()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes the searching user's conversations and messages into `db` in
/// batches of a thousand rows.
fn fill(db: &TestDatabase, owner: &str) {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let mut conversations = Vec::with_capacity(CONVERSATIONS);
    let mut batch = Vec::new();
    let flush = |batch: &mut Vec<String>| {
        if !batch.is_empty() {
            db.execute(&format!(
                "INSERT INTO messages (conversation_id, id, position, parent_id, role, content, \
                 status, model_slug, metadata, created_at, updated_at) VALUES {};",
                batch.join(", ")
            ));
            batch.clear();
        }
    };
    for c in 0..CONVERSATIONS {
        let id = uuid::Uuid::new_v4().to_string();
        let at = 1_700_000_000_000_000_i64 + c as i64 * 1_000_000;
        conversations.push(format!(
            "('{id}', '{owner}', 'chat {c} {}', NULL, FALSE, NULL, {at}, {at}, 'm{}')",
            word(random.rank()),
            PER_CONVERSATION - 1
        ));
        for m in 0..PER_CONVERSATION {
            let parent = if m == 0 {
                "NULL".to_owned()
            } else {
                format!("'m{}'", m - 1)
            };
            let role = if m % 2 == 0 { "user" } else { "assistant" };
            let content = serde_json::json!({"content_type": "text", "parts": [text(&mut random)]});
            batch.push(format!(
                "('{id}', 'm{m}', {m}, {parent}, '{role}', '{content}', 'finished_successfully', \
                 NULL, '{{}}', {at}, {at})"
            ));
            if batch.len() == 1_000 {
                if !conversations.is_empty() {
                    db.execute(&format!(
                        "INSERT INTO conversations (id, user_id, title, last_message, is_archived, \
                         deleted_at, created_at, updated_at, current_node) VALUES {};",
                        conversations.join(", ")
                    ));
                    conversations.clear();
                }
                flush(&mut batch);
            }
        }
    }
    if !conversations.is_empty() {
        db.execute(&format!(
            "INSERT INTO conversations (id, user_id, title, last_message, is_archived, \
             deleted_at, created_at, updated_at, current_node) VALUES {};",
            conversations.join(", ")
        ));
    }
    flush(&mut batch);
    // As the database's own statistics would be after a while.
    db.execute("ANALYZE;");
}

/// A kind of query, and the queries it sends.
struct Kind {
    name: &'static str,
    queries: fn(&mut Random) -> String,
}

const KINDS: [Kind; 5] = [
    Kind {
        name: "one common word",
        queries: |r| word((r.next() % 20) as usize),
    },
    Kind {
        name: "one rare word",
        queries: |r| word(5_000 + (r.next() % 15_000) as usize),
    },
    Kind {
        name: "two words",
        queries: |r| {
            format!(
                "{} {}",
                word((r.next() % 200) as usize),
                word((r.next() % 2_000) as usize)
            )
        },
    },
    Kind {
        name: "a word's start (3 letters)",
        queries: |r| word((r.next() % 2_000) as usize).chars().take(3).collect(),
    },
    Kind {
        name: "no match",
        queries: |r| format!("zzz{}", r.next() % 1_000),
    },
];

/// What the search section measured.
pub(super) struct Report {
    /// Each database's time to write and index the messages, in seconds.
    fills: Vec<(&'static str, f64)>,
    /// Each kind of query on each database.
    rows: Vec<Row>,
}

/// What one kind of query measured on one database.
struct Row {
    backend: &'static str,
    kind: &'static str,
    requests: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Results of the median request (its `total`).
    median_total: u64,
    failed: usize,
}

/// Sends `n` distinct searches of `kind` from [`CLIENTS`] clients.
async fn run(app: &TestApp, token: &str, kind: &Kind, n: usize, seed: u64) -> Row {
    let mut random = Random(seed);
    let requests: Arc<Vec<String>> = Arc::new(
        (0..n)
            .map(|i| {
                let q = (kind.queries)(&mut random);
                let order = if i % 2 == 0 { "updated" } else { "created" };
                // Every request's cache key differs.
                let limit = 20 + i % 80;
                format!(
                    "{}/api/v1/conversations?q={}&limit={limit}&order={order}",
                    app.address,
                    q.replace(' ', "%20")
                )
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + CAP;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, next, requests, token) = (
            client.clone(),
            Arc::clone(&next),
            Arc::clone(&requests),
            token.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests.len() || Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                let res = client.get(&requests[i]).bearer_auth(&token).send().await;
                let page = match res {
                    Ok(res) if res.status() == 200 => res.json::<serde_json::Value>().await.ok(),
                    _ => None,
                };
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                match page {
                    Some(page) => samples.push((ms, page["total"].as_u64().unwrap_or(0))),
                    None => failed += 1,
                }
            }
            (samples, failed)
        }));
    }
    let (mut samples, mut failed) = (Vec::new(), 0);
    for task in tasks {
        let (s, f) = task.await.expect("a search client");
        samples.extend(s);
        failed += f;
    }
    let seconds = start.elapsed().as_secs_f64();
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let times: Vec<f64> = samples.iter().map(|s| s.0).collect();
    Row {
        backend: "",
        kind: kind.name,
        requests: samples.len(),
        seconds,
        p50_ms: percentile(&times, 0.50),
        p99_ms: percentile(&times, 0.99),
        median_total: samples.get(samples.len() / 2).map_or(0, |s| s.1),
        failed,
    }
}

/// Measures every kind of query on SQLite and on PostgreSQL, on `runtime`,
/// against servers with `cores` workers.
pub(super) fn measure(runtime: &tokio::runtime::Runtime, cores: usize) -> Report {
    let requests = sizes("CONFAB_BENCH_SEARCH_REQUESTS", &[REQUESTS])[0];
    let upstream = confab_e2e::fake_llm::FakeLlm::start();
    let base_url = upstream.base_url();
    let workers = cores.to_string();
    let vars = served_by(&base_url, &workers);
    let (mut rows, mut fills) = (Vec::new(), Vec::new());
    for (backend, name) in [
        (Backend::Sqlite, "SQLite"),
        (Backend::Postgres, "PostgreSQL"),
    ] {
        let app = confab_e2e::spawn_app_with(backend, &vars);
        let (found, filled) = runtime.block_on(async {
            let token = app.user("searcher").await;
            let me: serde_json::Value = app
                .get_auth("/api/v1/users/me", &token)
                .await
                .json()
                .await
                .expect("the searcher");
            let owner = me["id"].as_str().expect("the searcher's id").to_owned();
            let started = Instant::now();
            let db = Arc::clone(&app.db);
            tokio::task::spawn_blocking(move || fill(&db, &owner))
                .await
                .expect("the fill");
            let filled = started.elapsed().as_secs_f64();
            println!("search {name:<12} {MESSAGES} messages written and indexed in {filled:.1} s");
            let mut found = Vec::new();
            for (n, kind) in KINDS.iter().enumerate() {
                // Unmeasured: the first requests warm the connections.
                let _ = run(&app, &token, kind, CLIENTS * 2, 7).await;
                let mut row = run(&app, &token, kind, requests, 1 + n as u64).await;
                row.backend = name;
                println!(
                    "search {name:<12} {:<28} {:>6.0} req/s  p50 {:>8.3} ms  p99 {:>8.3} ms  median total {}  failed {}",
                    row.kind,
                    row.requests as f64 / row.seconds,
                    row.p50_ms,
                    row.p99_ms,
                    row.median_total,
                    row.failed
                );
                found.push(row);
            }
            (found, filled)
        });
        drop(app);
        rows.extend(found);
        fills.push((name, filled));
    }
    Report { fills, rows }
}

/// Appends the search section (method and table) to `md`.
pub(super) fn write_markdown(md: &mut String, report: &Report, cores: usize) {
    let requests = sizes("CONFAB_BENCH_SEARCH_REQUESTS", &[REQUESTS])[0];
    let cap = CAP.as_secs();
    let text = format!(
        "
## Search over 100,000 messages

`GET /api/v1/conversations?q=` (issue 15). On SQLite (FTS5) and on PostgreSQL
(a GIN index over `tsvector`s) in turn, a release Confab server starts in this
process ({cores} workers, in-process adapters). One user has {CONVERSATIONS}
conversations of {PER_CONVERSATION} messages ({MESSAGES} in all), 30 to 60 words
each from a vocabulary of {VOCABULARY} made-up words (a word's frequency falls
steeply with its rank, so a few are in most conversations and most are rare),
written into the database in batches so its own triggers index them, then
`ANALYZE`d. Each kind of query is {requests} requests from {CLIENTS} clients (no
request starts after {cap} s) after a short warm-up; every request is distinct
(its words, `limit` 20–99 and `order` vary), so none is a cache hit: each is
the database's search and ranking, a snippet for every result on the page and
the page rendered. **results** is the `total` of the median request: how many
conversations matched.

| database | query | requests | req/s | p50 ms | p99 ms | results | failed |
|---|---|---:|---:|---:|---:|---:|---:|
"
    );
    md.push_str(&text);
    for r in &report.rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {} |",
            r.backend,
            r.kind,
            r.requests,
            r.requests as f64 / r.seconds,
            r.p50_ms,
            r.p99_ms,
            r.median_total,
            r.failed
        );
    }
    let fills: Vec<String> = report
        .fills
        .iter()
        .map(|(name, secs)| format!("{name} {secs:.1} s"))
        .collect();
    let _ = writeln!(
        md,
        "
Writing and indexing the {MESSAGES} messages (batches of 1,000 rows, the
triggers filling the index) took {}: about what migration `000006` costs
on a database of that size. A word in most conversations is the worst
case: every message holding it is ranked to find each conversation's best,
so its cost grows with the number of matching messages; a rare word, or two
words together, is found through the index in one step.",
        fills.join(", ")
    );
}
