//! Chatting with a test server: a server wired to a fake model, users,
//! sending messages, and reading Server-Sent Events as a client would.

use std::time::Duration;

use confab_sql::Backend;
use serde_json::{Value, json};

use crate::fake_llm::FakeLlm;
use crate::{TestApp, spawn_app_with};

/// The password of every user made by [`TestApp::user`].
pub const PASSWORD: &str = "correct horse battery staple";

/// The default model of chat test servers.
pub const MODEL: &str = "fake-model";

/// How long a test waits for any one event before failing.
const EVENT_DEADLINE: Duration = Duration::from_secs(20);

/// Starts a server on `backend` whose model is `llm`, with short timeouts
/// and a quick keep-alive, plus `extra` variables.
///
/// # Panics
/// When the server can't start.
#[must_use]
pub fn spawn_chat(backend: Backend, llm: &FakeLlm, extra: &[(&str, &str)]) -> TestApp {
    let base = llm.base_url();
    let mut vars: Vec<(&str, &str)> = vec![
        ("CONFAB_LLM_PROVIDER", "openai"),
        ("CONFAB_LLM_BASE_URL", &base),
        ("CONFAB_LLM_MODEL", MODEL),
        ("CONFAB_LLM_API_KEY", "sk-test-upstream-key-0123456789"),
        ("CONFAB__LLM__MODELS", "other-model"),
        ("CONFAB__LLM__FIRST_TOKEN_TIMEOUT_MS", "3000"),
        ("CONFAB__LLM__IDLE_TIMEOUT_MS", "1500"),
        ("CONFAB__LLM__TITLE_TIMEOUT_MS", "3000"),
        ("CONFAB__GENERATION__KEEP_ALIVE_SECS", "1"),
        ("CONFAB__GENERATION__FLUSH_INTERVAL_MS", "50"),
        ("CONFAB__RATE_LIMIT__USER_PER_MINUTE", "100000"),
        ("CONFAB__GENERATION__PER_MINUTE", "100000"),
    ];
    vars.extend_from_slice(extra);
    spawn_app_with(backend, &vars)
}

/// As [`spawn_chat`], sharing state through the test Redis under a key
/// prefix of its own (its [`TestApp::sibling`]s share it).
///
/// # Panics
/// When the server can't start.
#[must_use]
pub fn spawn_chat_with_redis(backend: Backend, llm: &FakeLlm, extra: &[(&str, &str)]) -> TestApp {
    let url = crate::redis_url();
    let prefix = format!("confab-e2e:{}:", uuid::Uuid::new_v4());
    let mut vars = vec![
        ("REDIS_URL", url.as_str()),
        ("CONFAB__REDIS__KEY_PREFIX", prefix.as_str()),
    ];
    vars.extend_from_slice(extra);
    spawn_chat(backend, llm, &vars)
}

/// Whether `e` is a text delta: an `append` to the answer's text.
#[must_use]
pub fn is_append(e: &SseEvent) -> bool {
    e.event.as_deref() == Some("delta") && e.json()["v"][0]["o"] == "append"
}

/// The id of the conversation a stream's events name.
///
/// # Panics
/// When none of them names one.
#[must_use]
pub fn conversation_of(events: &[SseEvent]) -> String {
    events
        .iter()
        .find_map(|e| e.json()["conversation_id"].as_str().map(str::to_owned))
        .expect("a conversation id")
}

/// One Server-Sent Event as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Its `id:`.
    pub id: Option<String>,
    /// Its `event:` name.
    pub event: Option<String>,
    /// Its data lines joined by `\n`.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON (`Value::Null` for `[DONE]` or non-JSON).
    #[must_use]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }

    /// The data's `type` field, if any.
    #[must_use]
    pub fn kind(&self) -> Option<String> {
        self.json()
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

/// Reads an SSE response incrementally, as a browser's `EventSource` does.
pub struct SseReader {
    res: reqwest::Response,
    buf: Vec<u8>,
    /// Comment lines (`: keep-alive`) seen so far.
    pub comments: usize,
    done: bool,
}

impl SseReader {
    /// Starts reading `res`.
    #[must_use]
    pub fn new(res: reqwest::Response) -> Self {
        Self {
            res,
            buf: Vec::new(),
            comments: 0,
            done: false,
        }
    }

    /// Parses one complete event block out of the buffer, if there is one.
    fn take_event(&mut self) -> Option<Option<SseEvent>> {
        loop {
            let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8(block).expect("SSE is UTF-8");
            let mut event = SseEvent {
                id: None,
                event: None,
                data: String::new(),
            };
            let mut has_data = false;
            for line in text.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                } else if let Some(v) = line.strip_prefix("id: ") {
                    event.id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event.event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(v);
                    has_data = true;
                }
            }
            if has_data {
                return Some(Some(event));
            }
        }
    }

    /// The next event, `None` at the end of the stream.
    ///
    /// # Panics
    /// When no event arrives within the deadline, or the body breaks.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(Some(event)) = self.take_event() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            let chunk = tokio::time::timeout(EVENT_DEADLINE, self.res.chunk())
                .await
                .expect("an SSE event within the deadline")
                .expect("the SSE body reads");
            match chunk {
                Some(bytes) => self.buf.extend_from_slice(&bytes),
                None => self.done = true,
            }
        }
    }

    /// The next event, `Ok(None)` at the end of the stream, or the error
    /// that broke the body; with no deadline of its own (the caller sets
    /// one) and no panic.
    ///
    /// # Errors
    /// When the body can't be read to its end.
    pub async fn try_next(&mut self) -> Result<Option<SseEvent>, reqwest::Error> {
        loop {
            if let Some(Some(event)) = self.take_event() {
                return Ok(Some(event));
            }
            if self.done {
                return Ok(None);
            }
            match self.res.chunk().await? {
                Some(bytes) => self.buf.extend_from_slice(&bytes),
                None => self.done = true,
            }
        }
    }

    /// Every remaining event, to the end of the stream.
    pub async fn rest(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }

    /// Reads until an event satisfying `pred` (returned), keeping the rest.
    ///
    /// # Panics
    /// When the stream ends first.
    pub async fn until(&mut self, pred: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        loop {
            let e = self
                .next()
                .await
                .expect("the stream ended before the awaited event");
            let hit = pred(&e);
            seen.push(e);
            if hit {
                return seen;
            }
        }
    }
}

/// The message document the `delta` events of `events` build, with
/// Confab's domain applier.
///
/// # Panics
/// When a delta does not apply.
#[must_use]
pub fn replay(events: &[SseEvent]) -> Value {
    let mut applier = confab_domain::DeltaApplier::new();
    for e in events
        .iter()
        .filter(|e| e.event.as_deref() == Some("delta"))
    {
        applier.apply_json(&e.json()).expect("a delta that applies");
    }
    applier.into_document()
}

/// The ids of a history page's messages, in order.
///
/// # Panics
/// When `page` has no messages array or a message no id.
#[must_use]
pub fn message_ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// An answer of `text` that stops at the length cap
/// (`finished_partial_completion`): one a continue can go on with.
#[must_use]
pub fn cut_at_length(text: &str) -> crate::fake_llm::Script {
    use crate::fake_llm::{Script, Step};
    Script::Stream(vec![
        Step::Text(text.to_owned()),
        Step::Finish("length"),
        Step::Done,
    ])
}

/// An answer that sends `first`, then waits for [`crate::fake_llm::FakeLlm::release`]
/// before anything more.
#[must_use]
pub fn held_after(first: &str) -> crate::fake_llm::Script {
    held_between(first, " never sent")
}

/// An answer that sends `first`, waits for
/// [`crate::fake_llm::FakeLlm::release`], then sends `rest` and ends.
#[must_use]
pub fn held_between(first: &str, rest: &str) -> crate::fake_llm::Script {
    use crate::fake_llm::{Script, Step};
    Script::Stream(vec![
        Step::Text(first.to_owned()),
        Step::Hold,
        Step::Text(rest.to_owned()),
        Step::Finish("stop"),
        Step::Done,
    ])
}

/// A send body with one user message.
#[must_use]
pub fn message_body(text: &str) -> Value {
    json!({
        "messages": [{"role": "user", "content": {"content_type": "text", "parts": [text]}}]
    })
}

impl TestApp {
    /// Registers and logs in `name`; returns the access token.
    ///
    /// # Panics
    /// When either fails.
    pub async fn user(&self, name: &str) -> String {
        assert_eq!(self.register(name).await.status(), 201, "register {name}");
        let tokens = self.login(name, PASSWORD).await;
        tokens["access_token"]
            .as_str()
            .expect("an access token")
            .to_owned()
    }

    /// `method path` with a bearer token and, when given, a JSON body.
    ///
    /// # Panics
    /// When the request can't be sent.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send().await.expect("request")
    }

    /// `POST path` with `body`, streaming (the default `Accept`).
    ///
    /// # Panics
    /// When the request can't be sent.
    pub async fn send_message(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// `GET path` (a stream route) with `token`, the stream's
    /// `resume_token` and, if given, `Last-Event-ID`.
    ///
    /// # Panics
    /// When the request can't be sent.
    pub async fn resume_stream(
        &self,
        path: &str,
        token: &str,
        resume_token: &str,
        last_id: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .header("x-resume-token", resume_token);
        if let Some(last) = last_id {
            req = req.header("last-event-id", last);
        }
        req.send().await.expect("resume request")
    }

    /// The id of the user of `token`, from `/api/v1/users/me`.
    ///
    /// # Panics
    /// When the request fails.
    pub async fn user_id(&self, token: &str) -> String {
        let me: Value = self
            .get_auth("/api/v1/users/me", token)
            .await
            .json()
            .await
            .expect("the caller's account");
        me["id"].as_str().expect("an id").to_owned()
    }

    /// Starts a conversation with `text` and reads its whole stream.
    /// Returns the conversation id and the events.
    ///
    /// # Panics
    /// When the send is not a 200 stream.
    pub async fn chat(&self, token: &str, text: &str) -> (String, Vec<SseEvent>) {
        let res = self
            .send_message("/api/v1/conversations", token, &message_body(text))
            .await;
        assert_eq!(res.status(), 200, "send");
        let events = SseReader::new(res).rest().await;
        let id = events
            .iter()
            .find_map(|e| e.json()["conversation_id"].as_str().map(str::to_owned))
            .expect("a conversation id in the stream");
        (id, events)
    }

    /// `PATCH /api/v1/conversations/{id}` with `body`.
    ///
    /// # Panics
    /// When the request can't be sent.
    pub async fn patch_conversation(
        &self,
        token: &str,
        id: &str,
        body: &Value,
    ) -> reqwest::Response {
        let path = format!("/api/v1/conversations/{id}");
        self.call(reqwest::Method::PATCH, &path, token, Some(body))
            .await
    }

    /// Sends `body` into conversation `id` and reads its stream to the end.
    ///
    /// # Panics
    /// When the send is not a 200 stream that completes.
    pub async fn send_to(&self, token: &str, id: &str, body: &Value) -> Vec<SseEvent> {
        let path = format!("/api/v1/conversations/{id}/messages");
        let res = self.send_message(&path, token, body).await;
        assert_eq!(res.status(), 200, "send {body}");
        let events = SseReader::new(res).rest().await;
        assert!(
            events
                .iter()
                .any(|e| e.data.contains("message_stream_complete")),
            "{body}: the answer completed"
        );
        events
    }

    /// `GET /api/v1/conversations/{id}` as JSON.
    ///
    /// # Panics
    /// When it is not a 200.
    pub async fn conversation(&self, token: &str, id: &str) -> Value {
        let res = self
            .get_auth(&format!("/api/v1/conversations/{id}"), token)
            .await;
        assert_eq!(res.status(), 200, "GET conversation");
        res.json().await.expect("conversation JSON")
    }
}

/// Registers `name` through the service at `base` (`http://host:port`, a
/// balancer's address included) and logs in; returns the access token.
///
/// # Panics
/// When either is refused.
pub async fn sign_up(client: &reqwest::Client, base: &str, name: &str) -> String {
    let res = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD}))
        .send()
        .await
        .expect("register");
    assert_eq!(res.status(), 201, "register {name}");
    let res = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await
        .expect("log in");
    assert_eq!(res.status(), 200, "log in {name}");
    let body: Value = res.json().await.expect("the login body");
    body["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

/// Asserts that `rest`, the events of a resume after `first` (the events
/// the client had), ends a stream whose generating instance died: the
/// answer closed with the text it had saved (`saved`), `failed`, an
/// `UNAVAILABLE` error event that says so, then `[DONE]`.
///
/// # Panics
/// When it does not.
pub fn assert_closed_as_saved(first: &[SseEvent], rest: &[SseEvent], saved: &str) {
    assert_eq!(rest.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let error = rest[rest.len() - 2].json();
    assert_eq!(error["error"]["code"], "UNAVAILABLE");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("closed with the text it had saved"),
        "{error}"
    );
    let whole: Vec<SseEvent> = first.iter().chain(rest).cloned().collect();
    let rebuilt = replay(&whole);
    assert_eq!(rebuilt["message"]["content"]["parts"][0], saved);
    assert_eq!(rebuilt["message"]["status"], "failed");
}
