//! A scripted HTTP/1.1 server on `127.0.0.1:0`: each request gets the
//! reply the test's handler picks, byte for byte, as a server or a proxy
//! in front of one could send it. For what the real server can't be made
//! to do on cue (a stream interrupted by its log on the instance a client
//! reads from, a retry meeting its first attempt still running, a proxy's
//! HTML 502, a connection that goes silent), so that `confab-client` and
//! `confab chat` are tested over real HTTP against those answers, not
//! against a mock of themselves.
//!
//! Every response closes its connection (`Connection: close`): one
//! connection carries one request, so replies follow one another in the
//! order the requests came.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// The headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (lower-case), when sent.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not).
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// One step of a reply.
#[derive(Clone)]
pub enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Wait this long.
    Sleep(Duration),
    /// Wait until the test notifies.
    Wait(Arc<Notify>),
    /// Keep the connection open, silent, until the server is dropped.
    Hang,
}

/// What the server does with one request: its steps, then it closes the
/// connection. No steps: it closes the connection without a byte of
/// response, as a connection that breaks after the request went up.
#[derive(Clone, Default)]
pub struct Reply(pub Vec<Step>);

/// The text of one event, `id:`, `event:` (when given) and `data:`.
#[must_use]
pub fn sse_event(id: u32, event: Option<&str>, data: &str) -> String {
    let mut text = format!("id: {id}\n");
    if let Some(event) = event {
        text.push_str(&format!("event: {event}\n"));
    }
    text.push_str(&format!("data: {data}\n\n"));
    text
}

impl Reply {
    /// A connection closed before any response.
    #[must_use]
    pub fn broken() -> Reply {
        Reply(Vec::new())
    }

    /// The status line and `headers`, then the body to come (closed by the
    /// end of the connection unless `headers` has a `content-length`).
    #[must_use]
    pub fn head(status: u16, headers: &[(&str, &str)]) -> Reply {
        let mut text = format!("HTTP/1.1 {status} Scripted\r\nconnection: close\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        Reply(vec![Step::Send(text.into_bytes())])
    }

    /// A whole response: `status`, `headers` and `body`.
    #[must_use]
    pub fn body(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
        let length = body.len().to_string();
        let mut all = headers.to_vec();
        all.push(("content-length", &length));
        Reply::head(status, &all).send(body)
    }

    /// A JSON response.
    #[must_use]
    pub fn json(status: u16, headers: &[(&str, &str)], body: &serde_json::Value) -> Reply {
        let mut all = headers.to_vec();
        all.push(("content-type", "application/json"));
        Reply::body(status, &all, &body.to_string())
    }

    /// The API's error response.
    #[must_use]
    pub fn error(status: u16, code: &str, message: &str, headers: &[(&str, &str)]) -> Reply {
        let body = serde_json::json!({"error": {
            "code": code, "message": message, "request_id": "req_scripted"}});
        Reply::json(status, headers, &body)
    }

    /// An event stream's head, then `events` (the text of
    /// [`sse_event`]s), each written on its own.
    #[must_use]
    pub fn events(events: &[String]) -> Reply {
        let mut reply = Reply::head(
            200,
            &[
                ("content-type", "text/event-stream"),
                ("cache-control", "no-store"),
            ],
        );
        for event in events {
            reply = reply.send(event);
        }
        reply
    }

    /// Then writes `text`.
    #[must_use]
    pub fn send(mut self, text: &str) -> Reply {
        self.0.push(Step::Send(text.as_bytes().to_vec()));
        self
    }

    /// Then waits `duration`.
    #[must_use]
    pub fn sleep(mut self, duration: Duration) -> Reply {
        self.0.push(Step::Sleep(duration));
        self
    }

    /// Then waits for `notify`.
    #[must_use]
    pub fn wait(mut self, notify: &Arc<Notify>) -> Reply {
        self.0.push(Step::Wait(Arc::clone(notify)));
        self
    }

    /// Then stays silent with the connection open.
    #[must_use]
    pub fn hang(mut self) -> Reply {
        self.0.push(Step::Hang);
        self
    }
}

type Handler = dyn Fn(&Request, usize) -> Reply + Send + Sync;

/// The server. Dropping it closes every connection.
pub struct ScriptedServer {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    requests: Arc<Mutex<Vec<Request>>>,
    task: JoinHandle<()>,
}

impl ScriptedServer {
    /// Serves each request with `handler(request, n)`, `n` counting the
    /// requests before it (from 0).
    ///
    /// # Panics
    /// When it can't listen.
    pub async fn start(
        handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static,
    ) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the scripted server");
        let address = format!("http://{}", listener.local_addr().expect("its address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let handler = Arc::clone(&handler);
                let seen = Arc::clone(&seen);
                connections.spawn(serve(stream, handler, seen));
            }
        });
        ScriptedServer {
            address,
            requests,
            task,
        }
    }

    /// The requests received so far, in order.
    #[must_use]
    pub fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        // Its connections are in the task's set, dropped with it.
        self.task.abort();
    }
}

/// Reads one request from `stream` and plays the handler's reply.
async fn serve(mut stream: TcpStream, handler: Arc<Handler>, seen: Arc<Mutex<Vec<Request>>>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let reply = {
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        let reply = handler(&request, seen.len());
        seen.push(request);
        reply
    };
    for step in reply.0 {
        match step {
            Step::Send(bytes) => {
                if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
            Step::Sleep(duration) => tokio::time::sleep(duration).await,
            Step::Wait(notify) => notify.notified().await,
            Step::Hang => std::future::pending::<()>().await,
        }
    }
    let _ = stream.shutdown().await;
}

/// One request's head and (by `content-length`) body.
async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut bytes = Vec::new();
    let mut buf = [0_u8; 4096];
    let head_end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        bytes.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = bytes[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}
