//! A tiny scripted HTTP/1.1 server on 127.0.0.1 for the adapter's tests.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// One step of the server's answer.
pub(crate) enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Wait this long.
    Wait(Duration),
    /// Keep the connection open until the client closes it, then report.
    HoldUntilClosed,
}

/// The request the server received.
pub(crate) struct Captured {
    /// The request line and headers, lower-cased.
    pub(crate) head: String,
    /// The JSON body (null when there is none).
    pub(crate) body: Value,
}

/// A running server and what it saw.
pub(crate) struct Server {
    /// `http://127.0.0.1:PORT/v1/`.
    pub(crate) base_url: String,
    requests: mpsc::UnboundedReceiver<Captured>,
    closed: mpsc::UnboundedReceiver<()>,
}

impl Server {
    /// The next request received.
    pub(crate) async fn request(&mut self) -> Captured {
        timeout(Duration::from_secs(2), self.requests.recv())
            .await
            .expect("no request in time")
            .expect("the server stopped")
    }

    /// Waits for the client to close a held connection.
    pub(crate) async fn client_closed(&mut self) {
        timeout(Duration::from_secs(2), self.closed.recv())
            .await
            .expect("the client kept the connection open")
            .expect("the server stopped");
    }
}

/// A server answering every connection with `steps`.
pub(crate) async fn serve(steps: Vec<Step>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (req_tx, requests) = mpsc::unbounded_channel();
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let steps = Arc::new(steps);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (req_tx, closed_tx, steps) = (req_tx.clone(), closed_tx.clone(), steps.clone());
            tokio::spawn(async move {
                let _ = req_tx.send(read_request(&mut sock).await);
                for step in steps.iter() {
                    match step {
                        Step::Send(bytes) => {
                            if sock.write_all(bytes).await.is_err() {
                                return;
                            }
                        }
                        Step::Wait(d) => tokio::time::sleep(*d).await,
                        Step::HoldUntilClosed => {
                            let mut buf = [0u8; 1024];
                            while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                            let _ = closed_tx.send(());
                        }
                    }
                }
            });
        }
    });
    Server {
        base_url: format!("http://{addr}/v1/"),
        requests,
        closed,
    }
}

async fn read_request(sock: &mut TcpStream) -> Captured {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut tmp).await.unwrap();
        assert!(n > 0, "the client closed before its request was whole");
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec())
        .unwrap()
        .to_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    while buf.len() < head_end + len {
        let n = sock.read(&mut tmp).await.unwrap();
        assert!(n > 0, "the client closed before its body was whole");
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    Captured { head, body }
}

/// A 200 head for an event stream, the connection closed after it.
pub(crate) const OK_HEAD: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

/// A step that writes `text`.
pub(crate) fn send(text: &str) -> Step {
    Step::Send(text.as_bytes().to_vec())
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
