//! Bursts of sends: many streaming `POST /api/v1/conversations` started
//! together, each read to its end within one deadline and checked for
//! completeness, then checked in the database. Completeness only, never
//! timings: a slow machine is not a failure, a lost or broken answer is.
//! The e2e load tests and `confab-bench`'s "Concurrent sends" share it.
//!
//! The model is a [`FakeLlm`] whose default script is [`answer`]:
//! [`DELTAS`] text deltas [`SPACING`] apart, then `finish_reason: stop`
//! and `[DONE]`; every send starts a conversation of its own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use confab_domain::ConversationId;
use confab_sql::SqlStore;
use serde_json::Value;

use crate::TestApp;
use crate::chat::{MODEL, SseEvent, SseReader, message_body};
use crate::fake_llm::{FakeLlm, Script};

mod stored;

/// Text deltas in every answer.
pub const DELTAS: usize = 20;
/// The upstream's pause between two deltas.
pub const SPACING: Duration = Duration::from_millis(20);

/// The limits one user's burst would run into, lifted (generation slots
/// and buckets, request bucket, token allowances: set, so that each send
/// checks them, but out of reach), and title generation off: one upstream
/// call per send. A million per minute, not more: the Redis limiter counts
/// in whole microseconds and refuses a policy whose period (window /
/// quota) is under one, as an internal error on every request.
pub const BURST_LIMITS: [(&str, &str); 8] = [
    ("CONFAB__GENERATION__MAX_CONCURRENT_PER_USER", "100000"),
    ("CONFAB__GENERATION__MAX_READERS_PER_USER", "100000"),
    ("CONFAB__GENERATION__PER_MINUTE", "1000000"),
    ("CONFAB__RATE_LIMIT__USER_PER_MINUTE", "1000000"),
    ("CONFAB__RATE_LIMIT__API_KEY_PER_MINUTE", "1000000"),
    ("CONFAB__LLM__TITLE_GENERATION", "false"),
    // An allowance in force, never reached: every send's check runs.
    ("CONFAB__QUOTA__DAILY_TOKENS", "1000000000"),
    ("CONFAB__QUOTA__MONTHLY_TOKENS", "1000000000"),
];

/// The `k`-th (from 0) text delta of the answer.
fn piece(k: usize) -> String {
    format!("word{k} ")
}

/// The whole text of the answer.
#[must_use]
pub fn full_answer() -> String {
    (0..DELTAS).map(piece).collect()
}

/// The answer's script: [`DELTAS`] pieces [`SPACING`] apart, `stop`,
/// `[DONE]`.
#[must_use]
pub fn answer() -> Script {
    answer_paced(SPACING)
}

/// The answer's script with its deltas `spacing` apart: the same text as
/// [`answer`], taking longer.
#[must_use]
pub fn answer_paced(spacing: Duration) -> Script {
    let pieces: Vec<String> = (0..DELTAS).map(piece).collect();
    Script::paced(&pieces, spacing)
}

/// A fake model that answers every request with [`answer`].
#[must_use]
pub fn paced_llm() -> FakeLlm {
    let llm = FakeLlm::start();
    llm.set_default(answer());
    llm
}

/// [`BURST_LIMITS`] and the variables wiring a server to the model at
/// `base_url` (a [`FakeLlm::base_url`]).
#[must_use]
pub fn burst_vars(base_url: &str) -> Vec<(&str, &str)> {
    let mut vars = vec![
        ("CONFAB_LLM_PROVIDER", "openai"),
        ("CONFAB_LLM_BASE_URL", base_url),
        ("CONFAB_LLM_MODEL", MODEL),
        ("CONFAB_LLM_API_KEY", "sk-test-upstream-key-0123456789"),
    ];
    vars.extend(BURST_LIMITS);
    vars
}

/// How the read of one send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The body ended.
    Ended,
    /// The request or the body failed (the error).
    Broken(String),
    /// The burst's deadline passed first.
    TimedOut,
}

/// One send of a burst, as the client saw it.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The response's status; `None` when no response head arrived.
    pub status: Option<u16>,
    /// `"CODE (message)"` of a non-200 error body.
    pub code: Option<String>,
    /// Every event read.
    pub events: Vec<SseEvent>,
    /// How the read ended.
    pub end: End,
    /// From just before the request was sent to its first text delta.
    pub first_delta: Option<Duration>,
}

impl Sent {
    /// The conversation the stream names, if any.
    #[must_use]
    pub fn conversation(&self) -> Option<ConversationId> {
        self.events
            .iter()
            .find_map(|e| e.json()["conversation_id"].as_str()?.parse().ok())
    }

    /// The text the stream's `append` deltas make, in order.
    #[must_use]
    pub fn text(&self) -> String {
        let mut text = String::new();
        for e in self
            .events
            .iter()
            .filter(|e| e.event.as_deref() == Some("delta"))
        {
            for op in e.json()["v"].as_array().into_iter().flatten() {
                if op["o"] == "append"
                    && op["p"] == "/message/content/parts/0"
                    && let Some(v) = op["v"].as_str()
                {
                    text.push_str(v);
                }
            }
        }
        text
    }

    /// Why this send is not a complete answer, `None` when it is: a 200
    /// with no `error` event whose body ended with `message_stream_complete`
    /// and `[DONE]`, and whose deltas make the whole text.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        match (self.status, &self.end) {
            (None, End::Broken(e)) => return Some(format!("no response: {e}")),
            (None, _) => return Some("no response head by the deadline".to_owned()),
            (Some(200), _) => {}
            (Some(status), _) => {
                let code = self.code.as_deref().unwrap_or("?");
                return Some(format!("HTTP {status} {code}"));
            }
        }
        if let Some(error) = self
            .events
            .iter()
            .find(|e| e.kind().as_deref() == Some("error"))
        {
            let error = &error.json()["error"];
            let code = error["code"].as_str().unwrap_or("?");
            let message = error["message"].as_str().unwrap_or_default();
            return Some(format!("error event {code} ({message})"));
        }
        match &self.end {
            End::Ended => {}
            End::Broken(_) => return Some("the body broke".to_owned()),
            End::TimedOut => return Some("still open at the deadline".to_owned()),
        }
        let n = self.events.len();
        let last = self.events.last().map(|e| e.data.as_str());
        let before = n.checked_sub(2).and_then(|i| self.events[i].kind());
        if last != Some("[DONE]") {
            let completed = self
                .events
                .iter()
                .any(|e| e.kind().as_deref() == Some("message_stream_complete"));
            let deltas = self
                .events
                .iter()
                .filter(|e| crate::chat::is_append(e))
                .count();
            let when = match (n, deltas) {
                _ if completed => "after message_stream_complete",
                (0, _) => "with no event",
                (_, 0) => "before the first delta",
                (_, DELTAS) => "after the last delta",
                _ => "mid-answer",
            };
            return Some(format!("ended {when}, without [DONE]"));
        }
        if before.as_deref() != Some("message_stream_complete") {
            return Some("[DONE] not right after message_stream_complete".to_owned());
        }
        if self.text() != full_answer() {
            return Some("complete, but the deltas make another text".to_owned());
        }
        if self.conversation().is_none() {
            return Some("no conversation id".to_owned());
        }
        None
    }
}

/// A burst of sends and what each gave.
#[derive(Debug)]
pub struct Burst {
    /// Every send, in the order they were made.
    pub sends: Vec<Sent>,
    /// From the start signal to the end of the last stream (or the
    /// deadline).
    pub wall: Duration,
}

/// Counts `keys` into `"{k: n, …}"`.
fn tally(keys: impl Iterator<Item = String>) -> String {
    let mut counts = BTreeMap::<String, usize>::new();
    for key in keys {
        *counts.entry(key).or_default() += 1;
    }
    let listed: Vec<String> = counts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", listed.join(", "))
}

impl Burst {
    /// How many sends were complete answers.
    #[must_use]
    pub fn complete(&self) -> usize {
        self.sends.iter().filter(|s| s.problem().is_none()).count()
    }

    /// `"93/100 complete; statuses {200: 100}; problems {…}; 12.3 s"`.
    #[must_use]
    pub fn summary(&self) -> String {
        let statuses = tally(self.sends.iter().map(|s| match s.status {
            Some(status) => status.to_string(),
            None => "none".to_owned(),
        }));
        let mut out = format!(
            "{}/{} complete; statuses {statuses}",
            self.complete(),
            self.sends.len()
        );
        let problems: Vec<String> = self.sends.iter().filter_map(Sent::problem).collect();
        if !problems.is_empty() {
            let _ = write!(out, "; problems {}", tally(problems.into_iter()));
        }
        let _ = write!(out, "; {:.1} s", self.wall.as_secs_f64());
        out
    }

    /// Each send's time to its first text delta, sorted (complete sends
    /// only).
    #[must_use]
    pub fn first_deltas(&self) -> Vec<Duration> {
        let mut times: Vec<Duration> = self
            .sends
            .iter()
            .filter(|s| s.problem().is_none())
            .filter_map(|s| s.first_delta)
            .collect();
        times.sort();
        times
    }

    /// Fails, with both summaries, unless every send was a complete
    /// answer and every answer is saved whole in `store`.
    ///
    /// # Panics
    /// When one was not.
    pub async fn assert_all_complete(&self, what: &str, store: &SqlStore) {
        let (saved, stored) = self.stored(store).await;
        let n = self.sends.len();
        let summary = format!("{what}: {}; {stored}", self.summary());
        eprintln!("{summary}");
        assert!(self.complete() == n && saved == n, "{summary}");
    }
}

/// Sends `n` streaming sends at once as `token`, the `i`-th to
/// `apps[i % apps.len()]`, each starting a conversation, and reads every
/// stream to its end or until `cap` has passed since the start.
///
/// # Panics
/// When `apps` is empty or a task panics.
pub async fn burst(apps: &[&TestApp], token: &str, n: usize, cap: Duration) -> Burst {
    burst_to(apps, token, n, cap, |i| {
        (
            "/api/v1/conversations".to_owned(),
            message_body(&format!("question {i}")),
        )
    })
    .await
}

/// As [`burst`], the `i`-th send continuing `conversations[i]` (one send
/// per conversation: a conversation runs one answer at a time).
///
/// # Panics
/// As [`burst`].
pub async fn burst_into(
    apps: &[&TestApp],
    token: &str,
    conversations: &[ConversationId],
    cap: Duration,
) -> Burst {
    burst_to(apps, token, conversations.len(), cap, |i| {
        (
            format!("/api/v1/conversations/{}/messages", conversations[i]),
            message_body(&format!("question {i}")),
        )
    })
    .await
}

/// As [`burst_into`], the `i`-th send following the message
/// `under[i].1` of conversation `under[i].0` (`parent_message_id`).
///
/// # Panics
/// When `apps` is empty or a task panics.
pub async fn burst_under(
    apps: &[&TestApp],
    token: &str,
    under: &[(ConversationId, String)],
    cap: Duration,
) -> Burst {
    burst_to(apps, token, under.len(), cap, |i| {
        let (conversation, parent) = &under[i];
        let mut body = message_body(&format!("question {i}"));
        body["parent_message_id"] = serde_json::Value::String(parent.clone());
        (
            format!("/api/v1/conversations/{conversation}/messages"),
            body,
        )
    })
    .await
}

/// `requests.len()` sends at once, the `i`-th `requests[i]` (a path and a
/// body) on `apps[i % apps.len()]`: regenerations, continues, any send.
///
/// # Panics
/// As [`burst`].
pub async fn burst_of(
    apps: &[&TestApp],
    token: &str,
    requests: &[(String, serde_json::Value)],
    cap: Duration,
) -> Burst {
    burst_to(apps, token, requests.len(), cap, |i| requests[i].clone()).await
}

/// `n` sends at once, the `i`-th the body and to the path `request(i)`
/// gives, on `apps[i % apps.len()]`.
async fn burst_to(
    apps: &[&TestApp],
    token: &str,
    n: usize,
    cap: Duration,
    request: impl Fn(usize) -> (String, serde_json::Value),
) -> Burst {
    assert!(!apps.is_empty(), "a burst needs a server");
    at_once(n, cap, |i, deadline| {
        let app = apps[i % apps.len()];
        let (path, body) = request(i);
        let request = app
            .client
            .post(app.url(&path))
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .json(&body);
        send_and_read(request, deadline)
    })
    .await
}

/// Runs the `n` clients `client(i, deadline)` makes at once (each starts
/// when all are ready), `deadline` being `cap` after the start.
async fn at_once<F>(
    n: usize,
    cap: Duration,
    client: impl Fn(usize, tokio::time::Instant) -> F,
) -> Burst
where
    F: std::future::Future<Output = Sent> + Send + 'static,
{
    let (go, start) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + cap;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client(i, deadline);
            let mut start = start.clone();
            tokio::spawn(async move {
                let _ = start.wait_for(|go| *go).await;
                client.await
            })
        })
        .collect();
    let _ = go.send(true);
    let mut sends = Vec::with_capacity(n);
    for task in tasks {
        sends.push(task.await.expect("a send task"));
    }
    Burst {
        sends,
        wall: started.elapsed(),
    }
}

/// Sends `request` (a send) and reads its answer until it ends or
/// `deadline`.
pub async fn send_and_read(
    request: reqwest::RequestBuilder,
    deadline: tokio::time::Instant,
) -> Sent {
    let sent_at = Instant::now();
    let mut sent = Sent::pending();
    let read = async {
        let mut reader = sent.open(request).await?;
        sent.read(&mut reader, sent_at, usize::MAX).await
    };
    sent.end = ended(tokio::time::timeout_at(deadline, read).await);
    sent
}

/// How a read that had until a deadline ended.
fn ended(read: Result<Result<(), End>, tokio::time::error::Elapsed>) -> End {
    match read {
        Ok(Ok(())) => End::Ended,
        Ok(Err(end)) => end,
        Err(_) => End::TimedOut,
    }
}

impl Sent {
    /// A send not made yet.
    fn pending() -> Self {
        Self {
            status: None,
            code: None,
            events: Vec::new(),
            end: End::TimedOut,
            first_delta: None,
        }
    }

    /// Sends `request` and records its status: its events to read when it
    /// is a 200; else its error code, and how it ended.
    async fn open(&mut self, request: reqwest::RequestBuilder) -> Result<SseReader, End> {
        let res = request
            .send()
            .await
            .map_err(|e| End::Broken(e.to_string()))?;
        let status = res.status().as_u16();
        self.status = Some(status);
        if status == 200 {
            return Ok(SseReader::new(res));
        }
        if let Ok(body) = res.json::<Value>().await {
            let error = &body["error"];
            self.code = error["code"].as_str().map(|code| {
                let message = error["message"].as_str().unwrap_or_default();
                format!("{code} ({message})")
            });
        }
        Err(End::Ended)
    }

    /// Reads `reader`'s events until `deltas` text deltas were read (then
    /// `Ok`) or it ends, timing the first text delta from `sent_at`.
    async fn read(
        &mut self,
        reader: &mut SseReader,
        sent_at: Instant,
        deltas: usize,
    ) -> Result<(), End> {
        let mut seen = 0;
        while seen < deltas {
            match reader.try_next().await {
                Ok(Some(event)) => {
                    if crate::chat::is_append(&event) {
                        seen += 1;
                        self.first_delta.get_or_insert_with(|| sent_at.elapsed());
                    }
                    self.events.push(event);
                }
                Ok(None) => return Err(End::Ended),
                Err(e) => return Err(End::Broken(e.to_string())),
            }
        }
        Ok(())
    }
}

/// `n` sends at once to `from`, each read to its `after`-th text delta;
/// then, as a client whose connection dropped does, each resumes its
/// stream on `to` (its resume token, the id of the last event it had)
/// and reads it to its end or until `cap` has passed since the start.
/// Each [`Sent`] holds the events of both reads, and the status of the
/// resume once it was made.
///
/// # Panics
/// When a task panics.
pub async fn burst_resumed(
    from: &TestApp,
    to: &TestApp,
    token: &str,
    n: usize,
    after: usize,
    cap: Duration,
) -> Burst {
    at_once(n, cap, |i, deadline| {
        let request = from
            .client
            .post(from.url("/api/v1/conversations"))
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .json(&message_body(&format!("question {i}")));
        let (client, base, token) = (to.client.clone(), to.url(""), token.to_owned());
        let resume = move |conversation: ConversationId, resume_token: &str, last: &str| {
            client
                .get(format!("{base}/api/v1/conversations/{conversation}/stream"))
                .bearer_auth(&token)
                .header("x-resume-token", resume_token)
                .header("last-event-id", last)
        };
        send_then_resume(request, resume, after, deadline)
    })
    .await
}

/// Sends `request`, reads its stream to its `after`-th text delta, drops
/// it, and reads the rest from the request `resume` makes (for the
/// conversation, the resume token and the last event id), until it ends
/// or `deadline`.
async fn send_then_resume(
    request: reqwest::RequestBuilder,
    resume: impl FnOnce(ConversationId, &str, &str) -> reqwest::RequestBuilder,
    after: usize,
    deadline: tokio::time::Instant,
) -> Sent {
    let sent_at = Instant::now();
    let mut sent = Sent::pending();
    let read = async {
        let mut reader = sent.open(request).await?;
        sent.read(&mut reader, sent_at, after).await?;
        drop(reader);
        let resume_token = sent
            .events
            .iter()
            .find_map(|e| e.json()["token"].as_str().map(str::to_owned));
        let last = sent.events.last().and_then(|e| e.id.clone());
        let (Some(conversation), Some(resume_token), Some(last)) =
            (sent.conversation(), resume_token, last)
        else {
            return Err(End::Broken(
                "no conversation, resume token or event id to resume".into(),
            ));
        };
        let mut reader = sent
            .open(resume(conversation, &resume_token, &last))
            .await?;
        sent.read(&mut reader, sent_at, usize::MAX).await
    };
    sent.end = ended(tokio::time::timeout_at(deadline, read).await);
    sent
}
