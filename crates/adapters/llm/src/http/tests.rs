// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use tokio::net::TcpListener;

/// A connection to a loopback server that writes `raw` in one go and
/// closes, and the server's view of what it received.
async fn answering(raw: &'static [u8]) -> (Conn, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        sock.write_all(raw).await.unwrap();
    });
    let conn = Conn::Plain(TcpStream::connect(addr).await.unwrap());
    (conn, server)
}

/// A response head read from `conn`, its connection never kept.
async fn head(conn: Conn) -> Result<Response, SendError> {
    let pool = Pool::new(PoolLimits {
        max_idle: 0,
        idle_timeout: Duration::from_secs(1),
    });
    Response::read_head(conn, &pool)
        .await
        .map_err(|(Exchange::Silent(e) | Exchange::Failed(e))| e)
}

/// The whole body, read to its end.
async fn body(response: &mut Response) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while response.read(|b| out.extend_from_slice(b)).await? {}
    Ok(out)
}

/// A response whose body bytes are fed to the decoder one at a time, as
/// if each came in a read of its own: the decoder must give the same
/// body for every split.
async fn decoded_byte_by_byte(
    framing: Framing,
    raw: &[u8],
) -> Result<(Vec<u8>, Framing), BodyError> {
    let (conn, server) = answering(b"").await;
    server.await.unwrap();
    let mut response = Response {
        status: 200,
        conn,
        buf: Vec::new(),
        pos: 0,
        framing,
        keep: None,
    };
    let mut out = Vec::new();
    for byte in raw {
        response.buf.push(*byte);
        response.decode(&mut |b: &[u8]| out.extend_from_slice(b))?;
    }
    Ok((out, response.framing))
}

const CHUNKED: &[u8] =
    b"5;ext=1\r\nhello\r\n1A\r\n abcdefghijklmnopqrstuvwxy\r\n0\r\nX-Trailer: t\r\n\r\n";

#[tokio::test]
async fn a_chunked_body_decodes_the_same_split_anywhere() {
    let (whole, framing) = decoded_byte_by_byte(Framing::Chunked(Chunk::Size), CHUNKED)
        .await
        .unwrap();
    assert_eq!(whole, b"hello abcdefghijklmnopqrstuvwxy");
    assert_eq!(framing, Framing::Done);

    // Bare `\n` line ends are taken too.
    let (whole, framing) = decoded_byte_by_byte(Framing::Chunked(Chunk::Size), b"3\nabc\n0\n\n")
        .await
        .unwrap();
    assert_eq!(whole, b"abc");
    assert_eq!(framing, Framing::Done);
}

#[tokio::test]
async fn the_body_before_a_framing_break_comes_first() {
    let (conn, server) = answering(b"").await;
    server.await.unwrap();
    let mut response = Response {
        status: 200,
        conn,
        buf: b"3\r\nabc\r\nzz\r\n".to_vec(),
        pos: 0,
        framing: Framing::Chunked(Chunk::Size),
        keep: None,
    };
    let mut out = Vec::new();
    assert!(response.read(|b| out.extend_from_slice(b)).await.unwrap());
    assert_eq!(out, b"abc");
    let result = response.read(|_| panic!("bytes after the break")).await;
    assert!(matches!(result, Err(BodyError::Framing(_))), "{result:?}");
}

#[tokio::test]
async fn a_length_body_stops_at_its_length() {
    let (whole, framing) = decoded_byte_by_byte(Framing::Length(4), b"data and more")
        .await
        .unwrap();
    assert_eq!(whole, b"data");
    assert_eq!(framing, Framing::Done);
}

#[tokio::test]
async fn broken_chunk_framing_is_an_error() {
    for raw in [
        &b"zz\r\nhello\r\n"[..],
        b"\r\n",
        b"5\r\nhelloX\r\n",
        b"10000000000000000\r\n",
    ] {
        let result = decoded_byte_by_byte(Framing::Chunked(Chunk::Size), raw).await;
        assert!(
            matches!(result, Err(BodyError::Framing(_))),
            "{:?}: {result:?}",
            String::from_utf8_lossy(raw)
        );
    }
    let endless = vec![b'1'; MAX_CHUNK_LINE_BYTES + 2];
    let result = decoded_byte_by_byte(Framing::Chunked(Chunk::Size), &endless).await;
    assert!(matches!(result, Err(BodyError::Framing(_))), "{result:?}");
}

#[tokio::test]
async fn interim_answers_are_skipped_and_the_body_read_over_the_socket() {
    let (conn, server) = answering(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          4\r\ndata\r\n0\r\n\r\n",
    )
    .await;
    let mut response = head(conn).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(body(&mut response).await.unwrap(), b"data");
    // Past its end, a body stays ended.
    assert!(
        !response
            .read(|_| panic!("bytes after the end"))
            .await
            .unwrap()
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_body_without_framing_ends_with_the_connection() {
    let (conn, server) = answering(b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\nlater").await;
    let mut response = head(conn).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(body(&mut response).await.unwrap(), b"later");
    server.await.unwrap();
}

#[tokio::test]
async fn a_body_cut_short_is_truncated() {
    let (conn, server) =
        answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nonly").await;
    let mut response = head(conn).await.unwrap();
    assert!(matches!(
        body(&mut response).await,
        Err(BodyError::Truncated)
    ));
    server.await.unwrap();

    let (conn, server) = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").await;
    let mut response = head(conn).await.unwrap();
    assert!(matches!(
        body(&mut response).await,
        Err(BodyError::Truncated)
    ));
    server.await.unwrap();
}

#[tokio::test]
async fn bad_heads_are_protocol_errors() {
    for raw in [
        &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ] {
        let (conn, server) = answering(raw).await;
        let result = head(conn).await;
        assert!(
            matches!(result, Err(SendError::Protocol(_))),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
        server.await.unwrap();
    }
    let (conn, server) = answering(b"HTTP/1.1 200 OK\r\nX: partial").await;
    assert!(matches!(head(conn).await, Err(SendError::NoResponse)));
    server.await.unwrap();
}

#[tokio::test]
async fn a_head_past_the_bound_is_refused() {
    // One header, longer than the bound (and so never a whole head).
    let mut raw = b"HTTP/1.1 200 OK\r\nX-Padding: ".to_vec();
    raw.resize(MAX_HEAD_BYTES + 16, b'a');
    let raw: &'static [u8] = raw.leak();
    let (conn, server) = answering(raw).await;
    let result = head(conn).await;
    assert!(matches!(result, Err(SendError::Protocol(_))), "{result:?}");
    drop(result);
    let _ = server.await;
}

/// How the test server answers one request on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A chunked event stream ending in `[DONE]`, the body's end in the
    /// same write; the connection stays open.
    Kept,
    /// The same body, its end written this long after `[DONE]`.
    EndLater(Duration),
    /// The same stream with `Connection: close`, ended by the close.
    Closing,
    /// As [`Answer::Kept`], then the connection closed.
    KeptThenClosed,
    /// The connection closed without a response (the request was read).
    Hangup,
}

/// A loopback server answering each connection's requests in turn with
/// its script (one script per connection, in accept order; a connection
/// past the scripts gets [`Answer::Kept`] for every request). Counts the
/// requests read and the connections accepted.
struct Server {
    addr: SocketAddr,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    /// How many connections the server saw closed by the client.
    closed_by_client: Arc<std::sync::atomic::AtomicUsize>,
    /// How many connections the server closed after an answer.
    closed_by_server: Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    async fn start(scripts: Vec<Vec<Answer>>) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let closed_by_server = Arc::new(AtomicUsize::new(0));
        let (r, a, c, s) = (
            requests.clone(),
            accepted.clone(),
            closed_by_client.clone(),
            closed_by_server.clone(),
        );
        tokio::spawn(async move {
            let mut scripts = scripts.into_iter();
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let script = scripts.next().unwrap_or_default();
                let (r, c, s) = (r.clone(), c.clone(), s.clone());
                tokio::spawn(async move {
                    let mut answers = script.into_iter();
                    loop {
                        if !read_request(&mut sock).await {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        let event = b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n";
                        let chunk =
                            [format!("{:x}\r\n", event.len()).as_bytes(), event, b"\r\n"].concat();
                        let chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
                        match answers.next().unwrap_or(Answer::Kept) {
                            Answer::Kept => {
                                let all = [&chunked[..], &chunk, b"0\r\n\r\n"].concat();
                                sock.write_all(&all).await.unwrap();
                            }
                            Answer::EndLater(wait) => {
                                sock.write_all(&[&chunked[..], &chunk].concat())
                                    .await
                                    .unwrap();
                                tokio::time::sleep(wait).await;
                                sock.write_all(b"0\r\n\r\n").await.unwrap();
                            }
                            Answer::Closing => {
                                let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
                                sock.write_all(&[&head[..], event].concat()).await.unwrap();
                                return;
                            }
                            Answer::KeptThenClosed => {
                                let all = [&chunked[..], &chunk, b"0\r\n\r\n"].concat();
                                sock.write_all(&all).await.unwrap();
                                drop(sock);
                                s.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Answer::Hangup => return,
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            accepted,
            closed_by_client,
            closed_by_server,
        }
    }

    fn connector(&self, limits: PoolLimits) -> Connector {
        let url = Url::parse(&format!("http://{}/v1/chat/completions", self.addr)).unwrap();
        Connector::new(&url, Duration::from_secs(2), limits).unwrap()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits (10 s at most) until `done` holds of the server.
    async fn wait_until(&self, done: impl Fn(&Self) -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !done(self) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
    }

    fn closed_by_server(&self) -> usize {
        self.closed_by_server
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn closed_by_client(&self) -> usize {
        self.closed_by_client
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Reads one request (head and `Content-Length` body); `false` when the
/// client closed the connection instead.
async fn read_request(sock: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + 4 + length {
                let mut more = [0_u8; 4096];
                let n = sock.read(&mut more).await.unwrap_or(0);
                if n == 0 {
                    return false;
                }
                buf.extend_from_slice(&more[..n]);
            }
            return true;
        }
        let mut more = [0_u8; 4096];
        let n = sock.read(&mut more).await.unwrap_or(0);
        if n == 0 {
            return false;
        }
        buf.extend_from_slice(&more[..n]);
    }
}

const KEEP: PoolLimits = PoolLimits {
    max_idle: 8,
    idle_timeout: Duration::from_secs(30),
};

/// One completion: posted, its body read to the end, released.
async fn complete(connector: &Connector) -> Vec<u8> {
    let mut response = connector.post(b"{}", None).await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = body(&mut response).await.unwrap();
    response.release();
    bytes
}

#[tokio::test]
async fn a_connection_whose_body_ended_carries_the_next_requests() {
    let server = Server::start(vec![]).await;
    let connector = server.connector(KEEP);
    for _ in 0..3 {
        assert!(complete(&connector).await.ends_with(b"data: [DONE]\n\n"));
    }
    assert_eq!(server.requests(), 3);
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn a_body_whose_end_comes_later_is_waited_for_and_its_connection_kept() {
    let server = Server::start(vec![vec![Answer::EndLater(Duration::from_millis(100))]]).await;
    let connector = server.connector(KEEP);
    // Released at [DONE], before the body's end has come.
    let mut response = connector.post(b"{}", None).await.unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"data: [DONE]\n\n") {
        assert!(response.read(|b| seen.extend_from_slice(b)).await.unwrap());
    }
    response.release();
    // Kept once the body's end has come (no sleep: under load it may
    // take a while).
    tokio::time::timeout(Duration::from_secs(10), async {
        while connector.pool.idle_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    complete(&connector).await;
    assert_eq!((server.requests(), server.accepted()), (2, 1));
}

#[tokio::test]
async fn a_connection_the_server_closes_is_not_kept() {
    let server = Server::start(vec![vec![Answer::Closing]]).await;
    let connector = server.connector(KEEP);
    complete(&connector).await;
    complete(&connector).await;
    assert_eq!((server.requests(), server.accepted()), (2, 2));
}

#[tokio::test]
async fn a_kept_connection_closed_while_idle_does_not_fail_the_next_request() {
    // The server closes the first connection right after its answer, as
    // one whose keep-alive ran out does.
    let server = Server::start(vec![vec![Answer::KeptThenClosed]]).await;
    let connector = server.connector(KEEP);
    complete(&connector).await;
    server.wait_until(|s| s.closed_by_server() >= 1).await;
    // Time for the runtime to see the close.
    tokio::time::sleep(Duration::from_millis(50)).await;
    complete(&connector).await;
    // No request went on the closed connection.
    assert_eq!((server.requests(), server.accepted()), (2, 2));
}

#[tokio::test]
async fn a_request_a_kept_connection_drops_goes_again_on_a_new_one() {
    let server = Server::start(vec![vec![Answer::Kept, Answer::Hangup]]).await;
    let connector = server.connector(KEEP);
    assert!(complete(&connector).await.ends_with(b"data: [DONE]\n\n"));
    // The kept connection reads the request and closes unanswered.
    assert!(complete(&connector).await.ends_with(b"data: [DONE]\n\n"));
    assert_eq!((server.requests(), server.accepted()), (3, 2));
}

#[tokio::test]
async fn a_stream_left_before_its_end_closes_its_connection() {
    let server = Server::start(vec![vec![Answer::EndLater(Duration::from_secs(5))]]).await;
    let connector = server.connector(KEEP);
    let response = connector.post(b"{}", None).await.unwrap();
    drop(response);
    complete(&connector).await;
    assert_eq!(server.accepted(), 2);
    server.wait_until(|s| s.closed_by_client() >= 1).await;
}

#[tokio::test]
async fn no_connection_is_kept_when_the_pool_keeps_none() {
    let server = Server::start(vec![]).await;
    let connector = server.connector(PoolLimits {
        max_idle: 0,
        idle_timeout: Duration::from_secs(30),
    });
    complete(&connector).await;
    complete(&connector).await;
    assert_eq!((server.requests(), server.accepted()), (2, 2));
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_its_timeout() {
    let server = Server::start(vec![]).await;
    let connector = server.connector(PoolLimits {
        max_idle: 8,
        idle_timeout: Duration::from_millis(100),
    });
    complete(&connector).await;
    // The reaper closes it: the server sees the client's close.
    server.wait_until(|s| s.closed_by_client() >= 1).await;
    complete(&connector).await;
    assert_eq!((server.requests(), server.accepted()), (2, 2));
}

#[tokio::test]
async fn the_pool_keeps_at_most_its_bound() {
    let server = Server::start(vec![]).await;
    let connector = server.connector(PoolLimits {
        max_idle: 2,
        idle_timeout: Duration::from_secs(30),
    });
    // Four at once: four connections, two kept.
    let mut responses = Vec::new();
    for _ in 0..4 {
        responses.push(connector.post(b"{}", None).await.unwrap());
    }
    for mut response in responses {
        body(&mut response).await.unwrap();
        response.release();
    }
    assert_eq!(server.accepted(), 4);
    server.wait_until(|s| s.closed_by_client() >= 2).await;
    for _ in 0..2 {
        complete(&connector).await;
    }
    assert_eq!(server.accepted(), 4);
}

/// The check a kept connection passes before it carries a request: open
/// and silent passes; closed by the server, or with bytes from it, fails.
#[tokio::test]
async fn an_idle_connection_is_checked_for_a_close_and_for_stray_bytes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let quiet = Conn::Plain(TcpStream::connect(addr).await.unwrap());
    let (_quiet_server, _) = listener.accept().await.unwrap();
    let closed = Conn::Plain(TcpStream::connect(addr).await.unwrap());
    drop(listener.accept().await.unwrap());
    let chatty = Conn::Plain(TcpStream::connect(addr).await.unwrap());
    let (mut chatty_server, _) = listener.accept().await.unwrap();
    chatty_server.write_all(b"\r\n").await.unwrap();
    // Time for the runtime to see the close and the bytes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(quiet.is_open_and_quiet());
    assert!(!closed.is_open_and_quiet());
    assert!(!chatty.is_open_and_quiet());
}

/// A connection to the model probes its peer when idle, soon enough for
/// one lost without a close to be found before the pool's idle timeout.
#[tokio::test]
async fn connections_to_the_model_probe_an_idle_peer() {
    let server = Server::start(vec![]).await;
    let connector = server.connector(KEEP);
    let Ok(Conn::Plain(stream)) = connector.connect().await else {
        panic!("no plain connection");
    };
    let socket = socket2::SockRef::from(&stream);
    assert!(socket.keepalive().unwrap());
    let probed_for = socket.tcp_keepalive_time().unwrap()
        + socket.tcp_keepalive_interval().unwrap() * socket.tcp_keepalive_retries().unwrap();
    assert_eq!(probed_for, Duration::from_secs(25));
    assert!(probed_for < KEEP.idle_timeout);
}
