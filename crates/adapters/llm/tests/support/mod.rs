//! The adapter's tests script the harness's fake chat-completions server
//! (`confab_testkit::fake_llm::FakeLlm`) with raw responses: each test
//! writes the whole answer, head included, so it can break the protocol
//! anywhere.

use std::time::Duration;

use confab_testkit::fake_llm::{self, FakeLlm, Script};
use serde_json::{Value, json};

/// How long a test waits for the fake to see something.
const PATIENCE: Duration = Duration::from_secs(2);

/// One step of the server's answer.
pub(crate) enum Step {
    /// Write this text.
    Send(String),
    /// Wait this long.
    Wait(Duration),
    /// Keep the connection open until the client closes it.
    HoldUntilClosed,
}

/// A request the server received.
pub(crate) struct Captured {
    /// Its headers, names in lower case, in the order sent.
    pub(crate) headers: Vec<(String, String)>,
    /// The JSON body.
    pub(crate) body: Value,
}

impl Captured {
    /// The value of header `name` (lower case), if sent.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running server and what it saw.
pub(crate) struct Server {
    /// `http://127.0.0.1:PORT/v1/`.
    pub(crate) base_url: String,
    fake: FakeLlm,
    seen: usize,
}

impl Server {
    /// The next request received (the fake answers only
    /// `POST /v1/chat/completions` with a JSON body: anything else is a
    /// `404` or `400` the test sees as a failure).
    pub(crate) async fn request(&mut self) -> Captured {
        assert!(
            self.fake.wait_for_requests(self.seen + 1, PATIENCE).await,
            "no request in time"
        );
        let body = self.fake.requests()[self.seen].clone();
        self.seen += 1;
        Captured {
            headers: self.fake.headers_of_last(),
            body,
        }
    }

    /// Waits for the client to close a held connection.
    pub(crate) async fn client_closed(&mut self) {
        assert!(
            self.fake.wait_for_disconnect(PATIENCE).await,
            "the client kept the connection open"
        );
    }
}

/// A server answering every request with `steps`.
pub(crate) async fn serve(steps: Vec<Step>) -> Server {
    let fake = FakeLlm::start();
    let steps = steps
        .into_iter()
        .map(|step| match step {
            Step::Send(text) => fake_llm::Step::Raw(text),
            Step::Wait(pause) => fake_llm::Step::Delay(pause),
            Step::HoldUntilClosed => fake_llm::Step::Stall,
        })
        .collect();
    fake.set_default(Script::Raw(steps));
    Server {
        base_url: format!("{}/", fake.base_url()),
        fake,
        seen: 0,
    }
}

/// A 200 head for an event stream, the connection closed after it.
pub(crate) const OK_HEAD: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

/// A step that writes `text`.
pub(crate) fn send(text: &str) -> Step {
    Step::Send(text.to_owned())
}

/// `n` milliseconds.
pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A `data:` event carrying one text delta.
pub(crate) fn text(t: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"choices": [{"delta": {"content": t}}]})
    )
}

/// The end of the stream.
pub(crate) const DONE: &str = "data: [DONE]\n\n";
