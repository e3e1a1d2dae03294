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
    let mut response = Response::read_head(conn).await.unwrap();
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
    let mut response = Response::read_head(conn).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(body(&mut response).await.unwrap(), b"later");
    server.await.unwrap();
}

#[tokio::test]
async fn a_body_cut_short_is_truncated() {
    let (conn, server) =
        answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nonly").await;
    let mut response = Response::read_head(conn).await.unwrap();
    assert!(matches!(
        body(&mut response).await,
        Err(BodyError::Truncated)
    ));
    server.await.unwrap();

    let (conn, server) = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").await;
    let mut response = Response::read_head(conn).await.unwrap();
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
        let result = Response::read_head(conn).await;
        assert!(
            matches!(result, Err(SendError::Protocol(_))),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
        server.await.unwrap();
    }
    let (conn, server) = answering(b"HTTP/1.1 200 OK\r\nX: partial").await;
    assert!(matches!(
        Response::read_head(conn).await,
        Err(SendError::NoResponse)
    ));
    server.await.unwrap();
}

#[tokio::test]
async fn a_head_past_the_bound_is_refused() {
    // One header, longer than the bound (and so never a whole head).
    let mut raw = b"HTTP/1.1 200 OK\r\nX-Padding: ".to_vec();
    raw.resize(MAX_HEAD_BYTES + 16, b'a');
    let raw: &'static [u8] = raw.leak();
    let (conn, server) = answering(raw).await;
    let result = Response::read_head(conn).await;
    assert!(matches!(result, Err(SendError::Protocol(_))), "{result:?}");
    drop(result);
    let _ = server.await;
}
