//! A lean HTTP/1.1 client for streamed `POST`s, its connections kept.
//!
//! The adapter needs one thing from HTTP: send a JSON body and read the
//! answer's body as it arrives, for as long as the model writes. A general
//! client (reqwest on hyper) spends, per open stream, a connection task and
//! the channels between it and the caller (each chunk crosses them, waking
//! two tasks), an 8 KiB read buffer and the request channel's first block:
//! about 26 KB of a held stream's memory and a task wake-up per chunk.
//! Here the task that reads the stream reads the socket itself, into one
//! small buffer taken when the socket is readable and let go once all it
//! held is decoded: a stream waiting for its model's next words holds no
//! read buffer at all.
//!
//! What it speaks: a request head written in one write with its body; a
//! response head parsed with `httparse` (interim `1xx` answers skipped); a
//! body framed by `Transfer-Encoding: chunked`, `Content-Length` or the
//! connection's close. A connection whose response body was read to its
//! exact end, and which the server did not close (`HTTP/1.1`, no
//! `Connection: close`, a framed body), goes back to a [`pool::Pool`] for
//! the next request: connecting costs each completion a TCP handshake and
//! its close, and over `https` a TLS handshake too. A stream dropped
//! before its end (a stop, the token cap, a failure) closes its
//! connection, which cancels the generation upstream, as before. A kept
//! connection that the server closed while it was idle is skipped when
//! taken; one it closes as the request goes out (nothing came back) is
//! replaced by a new connection, once, and the request sent again. With
//! the `tls` feature, `https` goes through rustls (*ring*),
//! the platform's verifier and ALPN `http/1.1`. No proxy (`HTTP_PROXY`
//! and the like are not read; the adapter warns when one is set), no
//! redirect (a `3xx` is an error status to the caller), no compression.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use url::{Host, Url};

use pool::Pool;
pub(crate) use pool::PoolLimits;

mod pool;

/// TCP keep-alive on every connection to the model: after 10 s with
/// nothing on it, a probe every 5 s, and the connection is dead after 3
/// unanswered. A server or a middlebox (a NAT, a load balancer) that lost
/// a kept connection without a `FIN` or `RST` is thereby found within
/// 25 s of idleness, before the pool's 30 s default would hand it to a
/// request that then waited for `first_token_timeout`; a reset found by a
/// probe is seen at once. The same probes find a server gone silent in
/// the middle of an answer.
const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(10))
    .with_interval(Duration::from_secs(5))
    .with_retries(3);

/// The most bytes of a response head (status line and headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most headers in a response head.
const MAX_HEADERS: usize = 64;
/// The most bytes of a chunk-size or trailer line.
const MAX_CHUNK_LINE_BYTES: usize = 4096;
/// The room a read makes in the buffer, at least: the buffer grows past
/// it only while a chunk line or a head is longer, and is let go whenever
/// all it holds is decoded.
const READ_BYTES: usize = 2048;
/// The most body bytes read after a stream's `[DONE]` before its
/// connection is kept: more, and it is closed instead.
const MAX_TRAILING_BYTES: usize = 4096;
/// How long the rest of a body may take to come after a stream's
/// `[DONE]` for its connection to be kept.
const TRAILING_WAIT: Duration = Duration::from_secs(1);

/// Why a request got no response head.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The host name did not resolve.
    Resolve,
    /// No connection within the connect timeout (TLS handshake included).
    ConnectTimeout,
    /// No address accepted a connection: the last error's kind.
    Connect(io::ErrorKind),
    /// The TLS handshake failed.
    #[cfg(feature = "tls")]
    Handshake(io::Error),
    /// Writing the request or reading the head failed.
    Io(io::Error),
    /// The connection closed before a whole head came.
    NoResponse,
    /// The head is not an HTTP/1.1 response head; what was wrong.
    Protocol(&'static str),
}

impl SendError {
    /// The error's kind of I/O failure, if it is one.
    pub(crate) fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Self::Connect(kind) => Some(*kind),
            Self::Io(e) => Some(e.kind()),
            #[cfg(feature = "tls")]
            Self::Handshake(e) => Some(e.kind()),
            _ => None,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Resolve => f.write_str("the host name did not resolve"),
            Self::ConnectTimeout => f.write_str("the connect timeout passed"),
            Self::Connect(kind) => write!(f, "connect: {kind}"),
            #[cfg(feature = "tls")]
            Self::Handshake(e) => write!(f, "TLS handshake: {e}"),
            Self::Io(e) => write!(f, "{e}"),
            Self::NoResponse => f.write_str("the connection closed before a response"),
            Self::Protocol(what) => f.write_str(what),
        }
    }
}

/// Why a body could not be read on.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The socket failed.
    Io(io::Error),
    /// The connection closed before the body's announced end.
    Truncated,
    /// The chunked framing is broken; what was wrong.
    Framing(&'static str),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Truncated => f.write_str("the connection closed before the body's end"),
            Self::Framing(what) => f.write_str(what),
        }
    }
}

/// Where requests go and how to connect there: built once from the
/// endpoint.
pub(crate) struct Connector {
    /// The host to resolve (an IPv6 address without brackets).
    host: String,
    port: u16,
    /// The `Host` header's value.
    authority: String,
    /// The request target: the endpoint's path.
    path: String,
    /// `Basic …` from credentials in the URL, sent when no API key is.
    basic: Option<SecretString>,
    connect_timeout: Duration,
    /// The connections kept between requests.
    pool: Arc<Pool>,
    /// rustls' connector for `https`; `None` for `http`.
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Connector {
    /// A connector for `endpoint` (an http(s) URL with a host, already
    /// checked), keeping idle connections within `limits`.
    ///
    /// # Errors
    /// The reason, when `https` is asked for and rustls' configuration
    /// (the platform's verifier) can't be built.
    pub(crate) fn new(
        endpoint: &Url,
        connect_timeout: Duration,
        limits: PoolLimits,
    ) -> Result<Self, String> {
        let host = match endpoint.host() {
            Some(Host::Domain(name)) => name.to_owned(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            None => return Err("the URL has no host".to_owned()),
        };
        let port = endpoint
            .port_or_known_default()
            .ok_or_else(|| "the URL has no port".to_owned())?;
        let host_str = endpoint.host_str().unwrap_or_default();
        let authority = match endpoint.port() {
            Some(port) => format!("{host_str}:{port}"),
            None => host_str.to_owned(),
        };
        let basic = (!endpoint.username().is_empty()).then(|| {
            let user = percent_encoding::percent_decode_str(endpoint.username());
            let password =
                percent_encoding::percent_decode_str(endpoint.password().unwrap_or_default());
            let mut pair: Vec<u8> = user.collect();
            pair.push(b':');
            pair.extend(password);
            SecretString::from(format!("Basic {}", STANDARD.encode(pair)))
        });
        Ok(Self {
            #[cfg(feature = "tls")]
            tls: (endpoint.scheme() == "https")
                .then(tls_connector)
                .transpose()?,
            host,
            port,
            authority,
            path: endpoint.path().to_owned(),
            basic,
            connect_timeout,
            pool: Pool::new(limits),
        })
    }

    /// Sends `POST` with `body` (JSON), asking for an event stream, with
    /// `Authorization: Bearer {api_key}` when a key is given, and reads the
    /// response head: on a kept connection when there is one, else on a
    /// new one.
    ///
    /// # Errors
    /// [`SendError`]: why no head came.
    pub(crate) async fn post(
        &self,
        body: &[u8],
        api_key: Option<&SecretString>,
    ) -> Result<Response, SendError> {
        let mut request = Vec::with_capacity(256 + body.len());
        request.extend_from_slice(b"POST ");
        request.extend_from_slice(self.path.as_bytes());
        request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        request.extend_from_slice(self.authority.as_bytes());
        request.extend_from_slice(
            concat!(
                "\r\nUser-Agent: confab/",
                env!("CARGO_PKG_VERSION"),
                "\r\nAccept: text/event-stream\r\nContent-Type: application/json\r\n",
            )
            .as_bytes(),
        );
        if !self.pool.keeps() {
            request.extend_from_slice(b"Connection: close\r\n");
        }
        request.extend_from_slice(b"Content-Length: ");
        request.extend_from_slice(body.len().to_string().as_bytes());
        if let Some(key) = api_key {
            request.extend_from_slice(b"\r\nAuthorization: Bearer ");
            request.extend_from_slice(key.expose_secret().as_bytes());
        } else if let Some(basic) = &self.basic {
            request.extend_from_slice(b"\r\nAuthorization: ");
            request.extend_from_slice(basic.expose_secret().as_bytes());
        }
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(body);
        let sent = self.send(&request).await;
        // The request held the key: it goes now, not when the answer ends.
        drop(request);
        sent
    }

    /// Writes `request` and reads the response head: on a kept connection,
    /// and again on a new one when the kept one turns out closed (nothing
    /// came back, so the server read nothing of it); else on a new one.
    async fn send(&self, request: &[u8]) -> Result<Response, SendError> {
        if let Some(conn) = self.pool.take() {
            match self.exchange(conn, request).await {
                Ok(response) => return Ok(response),
                Err(Exchange::Silent(_)) => {}
                Err(Exchange::Failed(e)) => return Err(e),
            }
        }
        let conn = timeout(self.connect_timeout, self.connect())
            .await
            .map_err(|_| SendError::ConnectTimeout)??;
        match self.exchange(conn, request).await {
            Ok(response) => Ok(response),
            Err(Exchange::Silent(e) | Exchange::Failed(e)) => Err(e),
        }
    }

    /// Writes `request` on `conn` and reads the response head.
    async fn exchange(&self, mut conn: Conn, request: &[u8]) -> Result<Response, Exchange> {
        conn.write_all(request)
            .await
            .map_err(|e| Exchange::Silent(SendError::Io(e)))?;
        Response::read_head(conn, &self.pool).await
    }

    /// Resolves the host and connects to the first address that accepts,
    /// then shakes hands for `https`. Each address has its share of the
    /// connect timeout, so one that drops packets (a broken IPv6 route)
    /// leaves time for the next.
    async fn connect(&self) -> Result<Conn, SendError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|_| SendError::Resolve)?
            .collect();
        let share = self.connect_timeout / u32::try_from(addrs.len().max(1)).unwrap_or(u32::MAX);
        let mut last = Err(SendError::Connect(io::ErrorKind::AddrNotAvailable));
        for addr in addrs {
            match timeout(share, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    // Small writes (the request) go at once.
                    let _ = stream.set_nodelay(true);
                    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&KEEPALIVE);
                    return self.secure(stream).await;
                }
                Ok(Err(e)) => last = Err(SendError::Connect(e.kind())),
                Err(_) => last = Err(SendError::ConnectTimeout),
            }
        }
        last
    }

    /// The connection as the scheme wants it.
    #[cfg(feature = "tls")]
    async fn secure(&self, stream: TcpStream) -> Result<Conn, SendError> {
        let Some(tls) = &self.tls else {
            return Ok(Conn::Plain(stream));
        };
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|_| SendError::Protocol("the host is not a valid TLS server name"))?;
        let stream = tls
            .connect(name, stream)
            .await
            .map_err(SendError::Handshake)?;
        Ok(Conn::Tls(Box::new(stream)))
    }

    /// The connection as the scheme wants it.
    #[cfg(not(feature = "tls"))]
    async fn secure(&self, stream: TcpStream) -> Result<Conn, SendError> {
        Ok(Conn::Plain(stream))
    }
}

/// rustls with *ring*, the platform's certificate verifier, and only
/// HTTP/1.1 offered.
#[cfg(feature = "tls")]
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    use rustls_platform_verifier::BuilderVerifierExt as _;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_platform_verifier()
        .map_err(|e| e.to_string())?
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Why a request got no response head on a connection.
#[derive(Debug)]
enum Exchange {
    /// Nothing at all came back (the write failed, or the connection
    /// closed before a byte): on a kept connection, the server had closed
    /// it.
    Silent(SendError),
    /// Anything else.
    Failed(SendError),
}

/// An open connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    /// Whether an idle connection can carry a request: the server has
    /// neither closed it nor written anything since its last response (a
    /// readiness the runtime has not seen yet passes; the request then
    /// finds the connection closed and goes again on a new one).
    fn is_open_and_quiet(&self) -> bool {
        let socket = match self {
            Self::Plain(stream) => stream,
            #[cfg(feature = "tls")]
            Self::Tls(stream) => stream.get_ref().0,
        };
        let mut byte = [0_u8; 1];
        matches!(socket.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(stream) => stream.write_all(bytes).await,
            #[cfg(feature = "tls")]
            Self::Tls(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
        }
    }

    /// Reads onto the end of `buf`, making room for at least
    /// [`READ_BYTES`] first; 0 at the end. A plain connection makes the
    /// room only once the socket is readable, so a stream waiting for its
    /// model holds no buffer. Cancel-safe.
    ///
    /// The read itself is tokio's `AsyncRead`, which takes a read that
    /// filled less than the room as the socket drained and waits for the
    /// next readiness: one system call per piece the model sends, where
    /// `try_read` would make a second that finds nothing.
    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Self::Plain(stream) => {
                stream.readable().await?;
                buf.reserve(READ_BYTES);
                stream.read_buf(buf).await
            }
            #[cfg(feature = "tls")]
            Self::Tls(stream) => {
                buf.reserve(READ_BYTES);
                stream.read_buf(buf).await
            }
        }
    }
}

/// How the body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// Chunked, at this point of a chunk.
    Chunked(Chunk),
    /// When the server closes the connection.
    Close,
    /// It has ended.
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, before its line end.
    DataEnd,
    /// After the last chunk, in the trailer section.
    Trailer,
}

/// A response whose head has been read: its status, then its body read
/// piece by piece. Dropping it closes the connection;
/// [`Response::release`] keeps it when the body has ended.
pub(crate) struct Response {
    status: u16,
    conn: Conn,
    /// Bytes read from the socket; those before `pos` are decoded.
    buf: Vec<u8>,
    pos: usize,
    framing: Framing,
    /// Where the connection goes once the body has ended, when the server
    /// keeps it open.
    keep: Option<Arc<Pool>>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl Response {
    /// Reads a response head from `conn`, past any interim (`1xx`) ones;
    /// the connection goes back to `pool` after the body when the server
    /// keeps it open.
    async fn read_head(mut conn: Conn, pool: &Arc<Pool>) -> Result<Self, Exchange> {
        let mut buf = Vec::new();
        let mut silent = true;
        loop {
            let parsed = parse_head(&buf).map_err(Exchange::Failed)?;
            if let Some(head) = parsed {
                if (100..200).contains(&head.status) {
                    if head.status == 101 {
                        return Err(Exchange::Failed(SendError::Protocol(
                            "the server switched protocols",
                        )));
                    }
                    buf.drain(..head.len);
                    continue;
                }
                return Ok(Self {
                    status: head.status,
                    conn,
                    buf,
                    pos: head.len,
                    framing: head.framing,
                    keep: (head.keeps_open && pool.keeps()).then(|| pool.clone()),
                });
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(Exchange::Failed(SendError::Protocol(
                    "the response head is too long",
                )));
            }
            let read = conn.read_buf(&mut buf).await;
            let failed = match read {
                Ok(0) => SendError::NoResponse,
                Ok(_) => {
                    silent = false;
                    continue;
                }
                Err(e) => SendError::Io(e),
            };
            return Err(if silent {
                Exchange::Silent(failed)
            } else {
                Exchange::Failed(failed)
            });
        }
    }

    /// Done with a body whose stream has ended (`[DONE]`): the connection
    /// goes back to the pool once the rest of the body (its last chunk,
    /// at most [`MAX_TRAILING_BYTES`] more) has come, right away when it
    /// is here already, else from a task that waits [`TRAILING_WAIT`] for
    /// it. Closed instead when the server does not keep it, the body
    /// breaks or runs on, or anything follows it.
    pub(crate) fn release(mut self) {
        let Some(pool) = self.keep.take() else {
            return;
        };
        let mut trailing = 0;
        match self.ended_cleanly(&mut trailing) {
            Some(true) => pool.put(self.conn),
            Some(false) => {}
            None => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                runtime.spawn(async move {
                    let rest = async {
                        loop {
                            if let Some(clean) = self.ended_cleanly(&mut trailing) {
                                return clean;
                            }
                            self.compact();
                            match self.conn.read_buf(&mut self.buf).await {
                                Ok(0) | Err(_) => return false,
                                Ok(_) => {}
                            }
                        }
                    };
                    if matches!(timeout(TRAILING_WAIT, rest).await, Ok(true)) {
                        pool.put(self.conn);
                    }
                });
            }
        }
    }

    /// Decodes what has been read past the stream's end, counting its
    /// body bytes into `trailing`: `Some(true)` when the body ended with
    /// nothing after it, `Some(false)` when the connection can't be kept,
    /// `None` while more must be read.
    fn ended_cleanly(&mut self, trailing: &mut usize) -> Option<bool> {
        let decoded = self.decode(&mut |bytes: &[u8]| *trailing += bytes.len());
        if decoded.is_err() || *trailing > MAX_TRAILING_BYTES {
            return Some(false);
        }
        match self.framing {
            Framing::Done => Some(self.pos == self.buf.len()),
            Framing::Close => Some(false),
            Framing::Length(_) | Framing::Chunked(_) => None,
        }
    }

    /// Lets go of the decoded bytes before a read: all of the buffer when
    /// all of it is decoded.
    fn compact(&mut self) {
        if self.pos == self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        } else if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// The status code.
    pub(crate) const fn status(&self) -> u16 {
        self.status
    }

    /// Reads on until some of the body has come, and hands it to `sink`
    /// (in one or more pieces). `Ok(false)` once the body has ended.
    /// Cancel-safe: dropping the future loses no byte read.
    ///
    /// # Errors
    /// [`BodyError`] when the socket fails, the connection closes before
    /// the announced end, or the chunked framing is broken.
    pub(crate) async fn read(&mut self, mut sink: impl FnMut(&[u8])) -> Result<bool, BodyError> {
        loop {
            if self.decode(&mut sink)? {
                return Ok(true);
            }
            if self.framing == Framing::Done {
                // Bytes after the body: the connection can't be kept.
                if self.pos != self.buf.len() {
                    self.keep = None;
                }
                self.buf = Vec::new();
                self.pos = 0;
                return Ok(false);
            }
            // All decoded: the buffer goes while the model thinks.
            self.compact();
            if self
                .conn
                .read_buf(&mut self.buf)
                .await
                .map_err(BodyError::Io)?
                == 0
            {
                if self.framing == Framing::Close {
                    self.framing = Framing::Done;
                    continue;
                }
                return Err(BodyError::Truncated);
            }
        }
    }

    /// Decodes what has been read; whether any body bytes went to `sink`.
    /// A framing error after some bytes went is held back for the next
    /// call, so the body before the break is read first.
    fn decode(&mut self, sink: &mut impl FnMut(&[u8])) -> Result<bool, BodyError> {
        let mut produced = false;
        match self.decode_into(sink, &mut produced) {
            // The error comes again next time: its state was left as it was.
            Err(_) if produced => Ok(true),
            result => result,
        }
    }

    /// [`Self::decode`]'s work; `produced` says whether bytes went.
    fn decode_into(
        &mut self,
        sink: &mut impl FnMut(&[u8]),
        produced: &mut bool,
    ) -> Result<bool, BodyError> {
        loop {
            let rest = self.buf.get(self.pos..).unwrap_or_default();
            match self.framing {
                Framing::Done => return Ok(*produced),
                Framing::Length(0) => self.framing = Framing::Done,
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    if rest.is_empty() {
                        return Ok(*produced);
                    }
                    let take = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
                    sink(rest.get(..take).unwrap_or_default());
                    *produced = true;
                    self.pos += take;
                    let left = left - take as u64;
                    self.framing = match self.framing {
                        Framing::Length(_) => Framing::Length(left),
                        _ if left == 0 => Framing::Chunked(Chunk::DataEnd),
                        _ => Framing::Chunked(Chunk::Data(left)),
                    };
                }
                Framing::Close => {
                    if rest.is_empty() {
                        return Ok(*produced);
                    }
                    sink(rest);
                    *produced = true;
                    self.pos = self.buf.len();
                }
                Framing::Chunked(Chunk::DataEnd) => match rest {
                    [] | [b'\r'] => return Ok(*produced),
                    [b'\r', b'\n', ..] => {
                        self.pos += 2;
                        self.framing = Framing::Chunked(Chunk::Size);
                    }
                    [b'\n', ..] => {
                        self.pos += 1;
                        self.framing = Framing::Chunked(Chunk::Size);
                    }
                    _ => return Err(BodyError::Framing("a chunk is longer than its size")),
                },
                Framing::Chunked(state @ (Chunk::Size | Chunk::Trailer)) => {
                    let Some(end) = rest.iter().position(|b| *b == b'\n') else {
                        if rest.len() > MAX_CHUNK_LINE_BYTES {
                            return Err(BodyError::Framing("a chunk line is too long"));
                        }
                        return Ok(*produced);
                    };
                    let line = rest.get(..end).unwrap_or_default();
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    self.framing = if state == Chunk::Size {
                        match chunk_size(line)? {
                            0 => Framing::Chunked(Chunk::Trailer),
                            size => Framing::Chunked(Chunk::Data(size)),
                        }
                    } else if line.is_empty() {
                        Framing::Done
                    } else {
                        Framing::Chunked(Chunk::Trailer)
                    };
                    self.pos += end + 1;
                }
            }
        }
    }
}

/// A chunk-size line's size (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(BodyError::Framing("a chunk size is not a hex number"));
    }
    let mut size = 0_u64;
    for digit in digits {
        let value = char::from(*digit)
            .to_digit(16)
            .ok_or(BodyError::Framing("a chunk size is not a hex number"))?;
        size = size * 16 + u64::from(value);
    }
    Ok(size)
}

/// A response head, parsed.
struct Head {
    /// Its length in bytes.
    len: usize,
    status: u16,
    framing: Framing,
    /// The server keeps the connection open after the body: `HTTP/1.1`, no
    /// `Connection: close`, and a body that ends by its framing.
    keeps_open: bool,
}

/// The head once `buf` holds a whole one; `None` until it does.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, SendError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(SendError::Protocol("the response has too many headers"));
        }
        Err(_) => return Err(SendError::Protocol("the response head is not HTTP/1.x")),
    };
    let status = response
        .code
        .ok_or(SendError::Protocol("the response has no status"))?;
    let mut chunked = None;
    let mut length: Option<u64> = None;
    let mut close = response.version != Some(1);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("connection") {
            close |= header
                .value
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides: chunked, or read to the close.
            let last = header
                .value
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(SendError::Protocol(
                    "the response's Content-Length is not a number",
                ))?;
            if length.is_some_and(|l| l != value) {
                return Err(SendError::Protocol(
                    "the response has two different Content-Lengths",
                ));
            }
            length = Some(value);
        }
    }
    let framing = if status == 204 || status == 304 {
        Framing::Done
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked(Chunk::Size),
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(length)) => Framing::Length(length),
        }
    };
    Ok(Some(Head {
        len,
        status,
        framing,
        keeps_open: !close && framing != Framing::Close,
    }))
}

#[cfg(test)]
mod tests;
