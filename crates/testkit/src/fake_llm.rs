//! A fake OpenAI-compatible chat-completions server, scripted per test.
//!
//! [`FakeLlm::start`] binds a real HTTP/1.1 server on `127.0.0.1:0`, on
//! its own thread and runtime (so it works from any test, whatever runtime
//! the test uses), and stops it when the [`FakeLlm`] is dropped. Confab's
//! real chat-model adapter is pointed at [`FakeLlm::base_url`] and runs
//! unchanged against it.
//!
//! Every `POST /v1/chat/completions` is answered by the next queued
//! [`Script`] ([`FakeLlm::push`], first in first out), or, when the queue
//! is empty, by the default script: a short stream (see
//! [`Script::default_reply`]) unless [`FakeLlm::set_default`] set another,
//! which then answers every request the queue doesn't (a load of identical
//! answers). Anything else is answered `404`.
//!
//! A request any of whose messages contains "a title for this
//! conversation" (in any case) is a *title* request: it leaves the queue
//! alone and is answered with the title set by [`FakeLlm::set_title`].
//!
//! A stream is `200` with `Content-Type: text/event-stream`, each event
//! flushed as it is written. As most servers do, the fake keeps the
//! connection open for the client's next request (HTTP/1.1 keep-alive):
//! the stream's body is chunked (each step's bytes one chunk, the last
//! chunk written with the last step) and the next request is read once
//! it ends. A request that says `Connection: close`, a script with a
//! [`Step::Close`], a [`Script::Status`] and a [`Script::Raw`] are
//! answered as before keep-alive: `Connection: close`, a stream's body
//! ended by the close. Requests are not pipelined: the next is read after
//! the answer. The listen backlog is [`BACKLOG`], so that a thousand
//! requests at once are queued rather than dropped (and retried by the
//! client a second later).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::ReadHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};

/// The origin of [`stamp`]s, shared by the fake and its clients.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The instant every [`stamp`] counts from (fixed at its first use).
#[must_use]
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// `at` as nanoseconds since [`epoch`] (what [`Step::Stamp`] writes).
#[must_use]
pub fn stamp(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// What makes a request a title request (compared in lower case).
const TITLE_PHRASE: &str = "a title for this conversation";
/// The longest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The longest request body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// The listen backlog (the kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: u32 = 4096;

/// One step of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// One content chunk:
    /// `data: {"id":"chatcmpl-N","object":"chat.completion.chunk","created":…,"model":…,
    /// "choices":[{"index":0,"delta":{"content":TEXT},"finish_reason":null}]}`.
    /// `model` echoes the request's `model` (`"fake-model"` when absent);
    /// `N` counts the chat requests the fake has received, from 1.
    Text(String),
    /// Wait this long before the next step.
    Delay(Duration),
    /// Wait until this long after the request arrived (pacing that does
    /// not drift: a late step doesn't push the next ones back).
    At(Duration),
    /// One content chunk whose text is the instant it was written, in
    /// nanoseconds since [`epoch`], and a space (see [`stamp`]): a client
    /// can time each delta from the upstream to itself.
    Stamp,
    /// Wait until the test calls [`FakeLlm::release`] (a release made
    /// before the stream gets here counts too).
    Hold,
    /// A chunk with an empty delta and this `finish_reason` (`"stop"`,
    /// `"length"`, …).
    Finish(&'static str),
    /// A chunk with `"choices":[]` and `"usage":{"prompt_tokens":P,
    /// "completion_tokens":C,"total_tokens":P+C}`.
    Usage(u32, u32),
    /// `data: [DONE]`.
    Done,
    /// These bytes, written as they are (e.g. `"data: {not json\n\n"`).
    Raw(String),
    /// Close the connection now (the script counts as finished).
    Close,
    /// Send nothing more, and keep the connection open until the client
    /// goes away (which counts as a disconnect).
    Stall,
}

/// How the fake answers one chat request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// `200 OK`, `text/event-stream`, then these steps in order; the
    /// connection is closed after the last one.
    Stream(Vec<Step>),
    /// This status with this body (`Content-Type: application/json` when
    /// the body parses as JSON, `text/plain` otherwise).
    Status(u16, String),
    /// These steps with no head written first: the script writes the whole
    /// response itself with [`Step::Raw`] (a protocol test's broken head
    /// or body).
    Raw(Vec<Step>),
}

impl Script {
    /// A stream of one [`Step::Text`] per piece, then `Finish("stop")` and
    /// `Done`.
    #[must_use]
    pub fn reply(pieces: &[&str]) -> Script {
        let mut steps: Vec<Step> = pieces.iter().map(|p| Step::Text((*p).to_owned())).collect();
        steps.push(Step::Finish("stop"));
        steps.push(Step::Done);
        Script::Stream(steps)
    }

    /// A stream of one [`Step::Text`] per piece with a [`Step::Delay`] of
    /// `spacing` between two of them, then `Finish("stop")` and `Done`.
    #[must_use]
    pub fn paced<S: AsRef<str>>(pieces: &[S], spacing: Duration) -> Script {
        let mut steps = Vec::with_capacity(pieces.len() * 2 + 2);
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                steps.push(Step::Delay(spacing));
            }
            steps.push(Step::Text(piece.as_ref().to_owned()));
        }
        steps.push(Step::Finish("stop"));
        steps.push(Step::Done);
        Script::Stream(steps)
    }

    /// The default script of a new fake: `Hello`, ` there`, `!`,
    /// `Finish("stop")`, `Usage(5, 3)`, `Done`.
    #[must_use]
    pub fn default_reply() -> Script {
        Script::Stream(vec![
            Step::Text("Hello".to_owned()),
            Step::Text(" there".to_owned()),
            Step::Text("!".to_owned()),
            Step::Finish("stop"),
            Step::Usage(5, 3),
            Step::Done,
        ])
    }

    /// The answer to a title request.
    fn title(title: Option<&str>) -> Script {
        match title {
            Some(title) => Script::reply(&[title]),
            None => Script::Status(500, "{\"error\":\"no title\"}".to_owned()),
        }
    }
}

/// What the fake has been told and has seen.
struct State {
    queue: VecDeque<Script>,
    /// The answer when the queue is empty.
    default: Script,
    title: Option<String>,
    requests: Vec<Value>,
    title_requests: usize,
    last_headers: Vec<(String, String)>,
    disconnects: usize,
}

/// Shared between the [`FakeLlm`] handle and the server's connections.
struct Shared {
    /// Every change is published, so waits are on events.
    state: watch::Sender<State>,
    /// Permits for streams at [`Step::Hold`].
    permits: Semaphore,
    /// How many streams are waiting at [`Step::Hold`] right now.
    holding: AtomicUsize,
    /// How many connections have been accepted.
    connections: AtomicUsize,
}

/// A running fake chat-completions server. Dropping it stops the server
/// (closing every connection still open) and joins its thread.
pub struct FakeLlm {
    port: u16,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeLlm {
    /// Starts a fake on `127.0.0.1:0`, with an empty queue, the default
    /// script [`Script::default_reply`] and the title `"Fake Title"`.
    ///
    /// # Panics
    /// When the port can't be bound or the runtime can't start.
    #[must_use]
    pub fn start() -> FakeLlm {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the fake LLM runtime");
        let listener: TcpListener = {
            let _entered = runtime.enter();
            let socket = TcpSocket::new_v4().expect("a fake LLM socket");
            socket
                .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .expect("bind the fake LLM port");
            socket.listen(BACKLOG).expect("listen on the fake LLM port")
        };
        let port = listener.local_addr().expect("the fake LLM address").port();
        let shared = Arc::new(Shared {
            state: watch::Sender::new(State {
                queue: VecDeque::new(),
                default: Script::default_reply(),
                title: Some("Fake Title".to_owned()),
                requests: Vec::new(),
                title_requests: 0,
                last_headers: Vec::new(),
                disconnects: 0,
            }),
            permits: Semaphore::new(0),
            holding: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let served = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-llm".to_owned())
            .spawn(move || {
                runtime.block_on(serve(listener, served, stop_rx));
                // Dropping the runtime here drops every open connection.
            })
            .expect("the fake LLM thread");
        FakeLlm {
            port,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>/v1`, the base URL an OpenAI client takes
    /// (requests arrive at `<base>/chat/completions`).
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Queues `script` as the answer to a coming (non-title) chat request;
    /// scripts are used first in, first out.
    pub fn push(&self, script: Script) {
        self.shared.state.send_modify(|s| s.queue.push_back(script));
    }

    /// Sets the script that answers every (non-title) chat request while
    /// the queue is empty, in place of [`Script::default_reply`].
    pub fn set_default(&self, script: Script) {
        self.shared.state.send_modify(|s| s.default = script);
    }

    /// Sets what title requests are answered with: a stream of this text,
    /// or, for `None`, `500` with `{"error":"no title"}`.
    pub fn set_title(&self, title: Option<String>) {
        self.shared.state.send_modify(|s| s.title = title);
    }

    /// Lets every stream waiting at [`Step::Hold`] go on. It adds one
    /// permit per stream waiting now that has none yet, and always at
    /// least one: a release with no stream waiting lets the next one to
    /// reach a `Hold` through without stopping.
    pub fn release(&self) {
        let holding = self.shared.holding.load(Ordering::SeqCst);
        let available = self.shared.permits.available_permits();
        self.shared
            .permits
            .add_permits(holding.saturating_sub(available).max(1));
    }

    /// The parsed JSON bodies of the non-title chat requests, in the order
    /// they arrived.
    #[must_use]
    pub fn requests(&self) -> Vec<Value> {
        self.shared.state.borrow().requests.clone()
    }

    /// How many title requests have arrived.
    #[must_use]
    pub fn title_requests(&self) -> usize {
        self.shared.state.borrow().title_requests
    }

    /// The headers (names in lower case, in the order sent) of the last
    /// request to `POST /v1/chat/completions`, title request or not; empty
    /// before the first.
    #[must_use]
    pub fn headers_of_last(&self) -> Vec<(String, String)> {
        self.shared.state.borrow().last_headers.clone()
    }

    /// How many connections the fake has accepted (a client that keeps
    /// its connections makes fewer than it makes requests).
    #[must_use]
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How many streams a client has dropped before their script finished.
    #[must_use]
    pub fn disconnects(&self) -> usize {
        self.shared.state.borrow().disconnects
    }

    /// Waits until at least `n` non-title chat requests have arrived;
    /// `false` when `deadline` passes first.
    pub async fn wait_for_requests(&self, n: usize, deadline: Duration) -> bool {
        self.wait_until(deadline, |s| s.requests.len() >= n).await
    }

    /// Waits until a client has dropped a stream before its script
    /// finished (at any time since the fake started); `false` when
    /// `deadline` passes first.
    pub async fn wait_for_disconnect(&self, deadline: Duration) -> bool {
        self.wait_until(deadline, |s| s.disconnects > 0).await
    }

    async fn wait_until(&self, deadline: Duration, done: impl FnMut(&State) -> bool) -> bool {
        let mut changes = self.shared.state.subscribe();
        matches!(
            tokio::time::timeout(deadline, async { changes.wait_for(done).await.is_ok() }).await,
            Ok(true)
        )
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    /// Records a chat request and picks its script.
    fn take_script(&self, headers: Vec<(String, String)>, body: Value) -> (Script, usize) {
        let title = is_title_request(&body);
        let mut picked = (Script::default_reply(), 0);
        self.state.send_modify(|s| {
            s.last_headers = headers;
            let script = if title {
                s.title_requests += 1;
                Script::title(s.title.as_deref())
            } else {
                s.requests.push(body);
                s.queue.pop_front().unwrap_or_else(|| s.default.clone())
            };
            picked = (script, s.requests.len() + s.title_requests);
        });
        picked
    }

    fn disconnected(&self) {
        self.state.send_modify(|s| s.disconnects += 1);
    }

    /// Waits for a release (see [`FakeLlm::release`]).
    async fn hold(&self) {
        /// Counts the stream out of `holding` however the wait ends.
        struct Holding<'a>(&'a AtomicUsize);
        impl Drop for Holding<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.holding.fetch_add(1, Ordering::SeqCst);
        let _holding = Holding(&self.holding);
        if let Ok(permit) = self.permits.acquire().await {
            permit.forget();
        }
    }
}

/// Does any message's content (a string, or text parts) ask for a title?
fn is_title_request(body: &Value) -> bool {
    let mentions = |text: &str| text.to_lowercase().contains(TITLE_PHRASE);
    body.get("messages")
        .and_then(Value::as_array)
        .is_some_and(|messages| {
            messages.iter().any(|message| match message.get("content") {
                Some(Value::String(text)) => mentions(text),
                Some(Value::Array(parts)) => parts.iter().any(|part| {
                    part.get("text")
                        .and_then(Value::as_str)
                        .is_some_and(mentions)
                }),
                _ => false,
            })
        })
}

/// Accepts connections until told to stop.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                if let Ok((socket, _)) = accepted {
                    tokio::spawn(handle(socket, shared.clone()));
                }
            }
        }
    }
}

/// Answers the requests of a connection, one after the other, until one
/// is answered with the connection's close or the client goes.
async fn handle(mut socket: TcpStream, shared: Arc<Shared>) {
    shared.connections.fetch_add(1, Ordering::SeqCst);
    let _ = socket.set_nodelay(true);
    while let Framing::Chunked = answer(&mut socket, &shared).await {}
}

/// How a stream's body is framed, and so whether the connection stays.
#[derive(Clone, Copy)]
enum Framing {
    /// Chunked: the connection stays open for the next request.
    Chunked,
    /// Ended by the connection's close.
    Close,
}

/// Reads one request and answers it; [`Framing::Chunked`] when the
/// connection stays open for the next.
async fn answer(socket: &mut TcpStream, shared: &Shared) -> Framing {
    let request = match read_request(socket).await {
        Ok(request) => request,
        Err(ReadError::Gone) => return Framing::Close,
        Err(ReadError::Bad(status, message)) => {
            let _ = write_status(socket, status, &error_body(message)).await;
            return Framing::Close;
        }
    };
    let path = request.target.split('?').next().unwrap_or_default();
    if request.method != "POST" || path != "/v1/chat/completions" {
        let _ = write_status(socket, 404, &error_body("no such route")).await;
        return Framing::Close;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
        let _ = write_status(socket, 400, &error_body("the body is not JSON")).await;
        return Framing::Close;
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake-model")
        .to_owned();
    let keep_alive = request.keeps_alive();
    match shared.take_script(request.headers, body) {
        (Script::Status(status, body), _) => {
            let _ = write_status(socket, status, &body).await;
            Framing::Close
        }
        (Script::Stream(steps), number) => {
            let framing = if keep_alive && !steps.contains(&Step::Close) {
                Framing::Chunked
            } else {
                Framing::Close
            };
            let chunks = Chunks::new(number, model);
            match stream(socket, shared, steps, &chunks, Some(framing)).await {
                Outcome::Continue => framing,
                Outcome::Gone | Outcome::Close => Framing::Close,
            }
        }
        (Script::Raw(steps), number) => {
            let chunks = Chunks::new(number, model);
            let _ = stream(socket, shared, steps, &chunks, None).await;
            Framing::Close
        }
    }
}

/// What happened to a stream at one step.
#[derive(Clone, Copy)]
enum Outcome {
    Continue,
    /// The client went away.
    Gone,
    /// The script closes the connection.
    Close,
}

/// Writes `steps` as an event stream, after a `200` head framed as
/// `head` says (none for a raw script), watching for the client to go
/// away. [`Outcome::Continue`] when the script ran to its end (a
/// chunked body then ended, the connection left open; any other closed).
async fn stream(
    socket: &mut TcpStream,
    shared: &Shared,
    steps: Vec<Step>,
    chunks: &Chunks,
    head: Option<Framing>,
) -> Outcome {
    let started = tokio::time::Instant::now();
    let (mut reader, mut writer) = socket.split();
    let head_bytes: &[u8] = match head {
        None => b"",
        Some(Framing::Close) => {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
              Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
        }
        Some(Framing::Chunked) => {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
              Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        }
    };
    if !head_bytes.is_empty()
        && let Outcome::Gone = send(&mut writer, head_bytes).await
    {
        shared.disconnected();
        return Outcome::Gone;
    }
    let mut body = Body {
        chunked: matches!(head, Some(Framing::Chunked)),
        last: false,
        ended: false,
        out: Vec::new(),
    };
    let count = steps.len();
    let mut gone = pin!(client_gone(&mut reader));
    for (i, step) in steps.into_iter().enumerate() {
        body.last = i + 1 == count;
        let outcome = tokio::select! {
            biased;
            () = &mut gone => Outcome::Gone,
            outcome = run_step(&mut writer, shared, chunks, step, started, &mut body) => outcome,
        };
        match outcome {
            Outcome::Continue => {}
            Outcome::Gone => {
                shared.disconnected();
                return Outcome::Gone;
            }
            Outcome::Close => return Outcome::Close,
        }
    }
    if body.chunked {
        // The body's end, unless the last step wrote it with its own bytes.
        if !body.ended {
            body.last = true;
            if let Outcome::Gone = body.send(&mut writer, b"").await {
                return Outcome::Gone;
            }
        }
        return Outcome::Continue;
    }
    let _ = writer.shutdown().await;
    Outcome::Continue
}

/// How a stream's bytes are written: as they are, or as chunks.
struct Body {
    chunked: bool,
    /// The step being written is the script's last: its chunk carries the
    /// body's end.
    last: bool,
    /// The body's end has been written.
    ended: bool,
    /// What the last write sent (its bytes are built here).
    out: Vec<u8>,
}

impl Body {
    /// Writes `bytes` (a chunk of them, and the body's end after the last
    /// step) and flushes.
    async fn send<W: AsyncWrite + Unpin>(&mut self, writer: &mut W, bytes: &[u8]) -> Outcome {
        if !self.chunked {
            return send(writer, bytes).await;
        }
        self.out.clear();
        if !bytes.is_empty() {
            self.out
                .extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
            self.out.extend_from_slice(bytes);
            self.out.extend_from_slice(b"\r\n");
        }
        if self.last {
            self.out.extend_from_slice(b"0\r\n\r\n");
            self.ended = true;
        }
        if self.out.is_empty() {
            return Outcome::Continue;
        }
        send(writer, &self.out).await
    }
}

async fn run_step<W: AsyncWrite + Unpin>(
    writer: &mut W,
    shared: &Shared,
    chunks: &Chunks,
    step: Step,
    started: tokio::time::Instant,
    body: &mut Body,
) -> Outcome {
    match step {
        Step::Text(text) => body.send(writer, chunks.content(&text).as_bytes()).await,
        Step::Stamp => {
            let text = format!("{} ", stamp(Instant::now()));
            body.send(writer, chunks.content(&text).as_bytes()).await
        }
        Step::Delay(delay) => {
            tokio::time::sleep(delay).await;
            Outcome::Continue
        }
        Step::At(offset) => {
            tokio::time::sleep_until(started + offset).await;
            Outcome::Continue
        }
        Step::Hold => {
            shared.hold().await;
            Outcome::Continue
        }
        Step::Finish(reason) => body.send(writer, chunks.finish(reason).as_bytes()).await,
        Step::Usage(prompt, completion) => {
            body.send(writer, chunks.usage(prompt, completion).as_bytes())
                .await
        }
        Step::Done => body.send(writer, b"data: [DONE]\n\n").await,
        Step::Raw(raw) => body.send(writer, raw.as_bytes()).await,
        Step::Close => Outcome::Close,
        Step::Stall => std::future::pending().await,
    }
}

/// Writes and flushes `bytes`; a failure means the client went away.
async fn send<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> Outcome {
    match writer.write_all(bytes).await {
        Ok(()) => match writer.flush().await {
            Ok(()) => Outcome::Continue,
            Err(_) => Outcome::Gone,
        },
        Err(_) => Outcome::Gone,
    }
}

/// Resolves when the client closes (or resets) its side of the
/// connection. It reads nothing: bytes from the client (its next request,
/// sent before this answer's end was seen here) stay for the next read,
/// and show the client is still there.
async fn client_gone(reader: &mut ReadHalf<'_>) {
    let mut byte = [0_u8; 1];
    match reader.peek(&mut byte).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Builds the `data:` events of one stream.
struct Chunks {
    id: String,
    created: u64,
    model: String,
}

impl Chunks {
    /// The chunks of the `number`th chat request, echoing `model`.
    fn new(number: usize, model: String) -> Self {
        Self {
            id: format!("chatcmpl-{number}"),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model,
        }
    }

    fn event(&self, choices: Value, usage: Option<Value>) -> String {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let (Some(usage), Some(fields)) = (usage, chunk.as_object_mut()) {
            fields.insert("usage".to_owned(), usage);
        }
        format!("data: {chunk}\n\n")
    }

    fn content(&self, text: &str) -> String {
        self.event(
            json!([{"index": 0, "delta": {"content": text}, "finish_reason": null}]),
            None,
        )
    }

    fn finish(&self, reason: &str) -> String {
        self.event(
            json!([{"index": 0, "delta": {}, "finish_reason": reason}]),
            None,
        )
    }

    fn usage(&self, prompt: u32, completion: u32) -> String {
        self.event(
            json!([]),
            Some(json!({
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": u64::from(prompt) + u64::from(completion),
            })),
        )
    }
}

/// `{"error":{"message":…}}`.
fn error_body(message: &str) -> String {
    json!({"error": {"message": message}}).to_string()
}

/// Writes a complete response with `Content-Length` and closes.
async fn write_status(socket: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let content_type = if serde_json::from_str::<Value>(body).is_ok() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        reason_phrase(status),
        body.len(),
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.flush().await?;
    socket.shutdown().await
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// One parsed HTTP/1.1 request.
struct Request {
    method: String,
    target: String,
    /// Names in lower case, in the order sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// `HTTP/1.1`, not `1.0`.
    http11: bool,
}

impl Request {
    /// Whether the client lets the connection stay open after the answer:
    /// `HTTP/1.1` without `Connection: close`.
    fn keeps_alive(&self) -> bool {
        self.http11
            && !self.headers.iter().any(|(name, value)| {
                name == "connection"
                    && value
                        .split(',')
                        .any(|token| token.trim().eq_ignore_ascii_case("close"))
            })
    }
}

enum ReadError {
    /// The client went away mid-request.
    Gone,
    /// The request is malformed: answer with this status.
    Bad(u16, &'static str),
}

/// Reads a request head and its body (by `Content-Length`, or chunked).
async fn read_request(socket: &mut TcpStream) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Bad(431, "the request head is too large"));
        }
        fill(socket, &mut buf).await?;
    };
    let rest = buf.split_off(head_end);
    let head = std::str::from_utf8(&buf)
        .map_err(|_| ReadError::Bad(400, "the request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) = (
        request_line.next(),
        request_line.next(),
        request_line.next(),
        request_line.next(),
    ) else {
        return Err(ReadError::Bad(400, "a malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad(400, "not HTTP/1.x"));
    }
    let mut headers = Vec::new();
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or(ReadError::Bad(400, "a malformed header"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let header = |wanted: &str| {
        headers
            .iter()
            .find(|(name, _)| name == wanted)
            .map(|(_, value)| value.as_str())
    };
    let body = if header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        read_chunked(socket, rest).await?
    } else {
        let length = match header("content-length") {
            Some(length) => length
                .parse::<usize>()
                .map_err(|_| ReadError::Bad(400, "a malformed Content-Length"))?,
            None => 0,
        };
        if length > MAX_BODY {
            return Err(ReadError::Bad(413, "the body is too large"));
        }
        let mut body = rest;
        while body.len() < length {
            fill(socket, &mut body).await?;
        }
        body.truncate(length);
        body
    };
    Ok(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body,
        http11: version == "HTTP/1.1",
    })
}

/// Decodes a chunked body; `raw` holds what was read past the head.
async fn read_chunked(socket: &mut TcpStream, mut raw: Vec<u8>) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let end = line_end(socket, &mut raw, at).await?;
        let size = std::str::from_utf8(&raw[at..end])
            .ok()
            .and_then(|line| line.split(';').next())
            .and_then(|size| usize::from_str_radix(size.trim(), 16).ok())
            .ok_or(ReadError::Bad(400, "a malformed chunk size"))?;
        at = end + 2;
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                let end = line_end(socket, &mut raw, at).await?;
                if end == at {
                    return Ok(body);
                }
                at = end + 2;
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(ReadError::Bad(413, "the body is too large"));
        }
        while raw.len() < at + size + 2 {
            fill(socket, &mut raw).await?;
        }
        body.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

/// Where the line starting at `from` ends (its `\r\n`), reading as needed.
async fn line_end(
    socket: &mut TcpStream,
    raw: &mut Vec<u8>,
    from: usize,
) -> Result<usize, ReadError> {
    loop {
        if let Some(at) = raw.get(from..).and_then(|rest| find(rest, b"\r\n")) {
            return Ok(from + at);
        }
        if raw.len().saturating_sub(from) > MAX_HEAD {
            return Err(ReadError::Bad(400, "a chunk line is too long"));
        }
        fill(socket, raw).await?;
    }
}

/// Reads more bytes onto `buf`.
async fn fill(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    let mut chunk = [0_u8; 8192];
    match socket.read(&mut chunk).await {
        Ok(0) | Err(_) => Err(ReadError::Gone),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
