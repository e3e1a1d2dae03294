//! The relay scenario's model server: an OpenAI-compatible streaming
//! `/chat/completions` whose text deltas carry the instant they were
//! written, so a client can time each delta from the upstream to itself.
//!
//! It answers every request alike, on one thread of its own (as the
//! harness's `FakeLlm` does), with the same chunks as `FakeLlm`'s
//! `Step::Text`, `Step::Finish("stop")` and `Step::Done`: [`DELTAS`] text
//! deltas, the k-th (from 0) written at k × [`SPACING`] after the request
//! arrived (scheduled against that start, so pauses do not add up), each
//! text being the nanoseconds since [`EPOCH`] at its write and a space.
//! Every answer carries `Connection: close`.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::Instant;

use confab_e2e::chat::MODEL;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

use super::{DELTAS, SPACING};

/// The listen backlog (the kernel caps it at `net.core.somaxconn`).
pub(super) const BACKLOG: u32 = 4096;

/// The origin of the stamps, shared by the upstream and the clients.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// `at` as nanoseconds since [`EPOCH`].
pub(super) fn stamp(at: Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// A running upstream; dropping it stops it and joins its thread.
pub(super) struct Upstream {
    /// `http://127.0.0.1:<port>/v1`.
    pub(super) base_url: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Starts the upstream on `127.0.0.1:0`, with a listen backlog of
    /// [`BACKLOG`] so that a thousand connections at once are not dropped
    /// (and retried a second later) for want of room.
    pub(super) fn start() -> Self {
        stamp(Instant::now());
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the upstream runtime");
            runtime.block_on(async move {
                let socket = TcpSocket::new_v4().expect("a socket");
                socket
                    .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .expect("bind the upstream");
                let listener = socket.listen(BACKLOG).expect("listen");
                let port = listener.local_addr().expect("the upstream address").port();
                let _ = port_tx.send(port);
                let accept = async {
                    loop {
                        if let Ok((socket, _)) = listener.accept().await {
                            tokio::spawn(answer(socket));
                        }
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        let port = port_rx.recv().expect("the upstream's port");
        Self {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One `data:` chunk in `FakeLlm`'s shape.
fn chunk(delta: &str, finish: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,\
         \"model\":\"{MODEL}\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
    )
}

/// Reads one request (head, then a `Content-Length` body) and streams the
/// answer.
async fn answer(mut socket: TcpStream) {
    let _ = socket.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut piece = [0_u8; 8192];
    let mut body_end = None;
    while body_end.is_none_or(|end| buf.len() < end) {
        match socket.read(&mut piece).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&piece[..n]),
        }
        if body_end.is_none()
            && let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            body_end = Some(at + 4 + length);
        }
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                Cache-Control: no-cache\r\nConnection: close\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let start = tokio::time::Instant::now();
    for k in 0..DELTAS {
        tokio::time::sleep_until(start + SPACING * u32::try_from(k).unwrap_or(u32::MAX)).await;
        let text = chunk(
            &format!("{{\"content\":\"{} \"}}", stamp(Instant::now())),
            "null",
        );
        if socket.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
    let end = chunk("{}", "\"stop\"") + "data: [DONE]\n\n";
    let _ = socket.write_all(end.as_bytes()).await;
    let _ = socket.shutdown().await;
}
