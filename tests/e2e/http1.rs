//! HTTP/1.1 connection handling over a raw socket: the dispatcher Confab
//! runs is actix-http's, patched to hold no fixed buffers per connection
//! (it reads into the stack and keeps only what arrived; it lets a write
//! buffer larger than 1 KiB go once flushed). These prove the framing is
//! unchanged where the patch acts: a request in many small pieces after the
//! connection waited, pipelined requests, a large response and then a small
//! one on the same connection, a body larger than one read. The framing
//! does not depend on the database: they run on SQLite only.

use std::time::Duration;

use confab_sql::Backend;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read off the connection: status, head, body.
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one whole response (its body framed by `Content-Length`) from
/// `stream`, keeping in `buf` what came after it.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Response {
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(buf[..end].to_vec()).expect("a UTF-8 head");
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().expect("a length"))
                    })
                    .expect("a Content-Length");
                let start = end + 4;
                if buf.len() >= start + length {
                    let body = buf[start..start + length].to_vec();
                    buf.drain(..start + length);
                    let status = head[9..12].parse().expect("a status");
                    return Response { status, head, body };
                }
            }
            let mut chunk = [0_u8; 4096];
            let n = stream.read(&mut chunk).await.expect("a read");
            assert!(n > 0, "the connection closed mid-response: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("a response within 30 s")
}

/// The connection, once connected.
async fn connect(app: &confab_e2e::TestApp) -> TcpStream {
    let addr = app.address.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).await.expect("a connection");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
}

#[tokio::test]
async fn a_request_in_small_pieces_after_a_wait_is_read_whole() {
    let app = confab_e2e::spawn_app(Backend::Sqlite);
    let mut stream = connect(&app).await;
    let mut buf = Vec::new();
    // The connection waits with nothing to read first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A body far larger than one read (8 KiB), padded with JSON whitespace,
    // written a few bytes at a time at first and then in large pieces.
    let padding = " ".repeat(40_000);
    let body = format!(
        r#"{{"username":"pieces","email":"pieces@example.com",{padding}"password":"correct horse battery"}}"#
    );
    let request = format!(
        "POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let bytes = request.as_bytes();
    let (small, large) = bytes.split_at(300);
    for piece in small.chunks(7) {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for piece in large.chunks(10_000) {
        stream.write_all(piece).await.unwrap();
    }
    let res = read_response(&mut stream, &mut buf).await;
    assert_eq!(res.status, 201, "{}", res.head);
    let user: Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(user["username"], "pieces", "{user}");
    // The connection stays usable.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let res = read_response(&mut stream, &mut buf).await;
    assert_eq!(res.status, 200, "{}", res.head);
    assert!(buf.is_empty(), "bytes past the last response: {buf:?}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_after_a_large_response() {
    let app = confab_e2e::spawn_app(Backend::Sqlite);
    let mut stream = connect(&app).await;
    let mut buf = Vec::new();
    // A large response (the OpenAPI document, far over 1 KiB), then a small
    // one on the same connection: the write buffer the large one grew is let
    // go and a new one taken.
    stream
        .write_all(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let res = read_response(&mut stream, &mut buf).await;
    assert_eq!(res.status, 200, "{}", res.head);
    assert!(res.body.len() > 8 * 1024, "{} bytes", res.body.len());
    let doc: Value = serde_json::from_slice(&res.body).unwrap();
    assert!(doc["paths"]["/api/v1/conversations"].is_object());
    // Three requests in one write: a 404, the document again, a health check.
    stream
        .write_all(
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let first = read_response(&mut stream, &mut buf).await;
    assert_eq!(first.status, 404, "{}", first.head);
    let second = read_response(&mut stream, &mut buf).await;
    assert_eq!(second.status, 200, "{}", second.head);
    assert_eq!(second.body, res.body);
    let third = read_response(&mut stream, &mut buf).await;
    assert_eq!(third.status, 200, "{}", third.head);
    let health: Value = serde_json::from_slice(&third.body).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert!(buf.is_empty(), "bytes past the last response: {buf:?}");
}
