//! A lean HTTP/1.1 client for one streamed `POST` per connection.
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
//! What it speaks: a request head written in one write with
//! `Connection: close` (no connection is reused: a stream is read until
//! its `[DONE]` and then dropped, which hangs up); a response head parsed
//! with `httparse` (interim `1xx` answers skipped); a body framed by
//! `Transfer-Encoding: chunked`, `Content-Length` or the connection's
//! close. With the `tls` feature, `https` goes through rustls (*ring*),
//! the platform's verifier and ALPN `http/1.1`. No proxy (`HTTP_PROXY`
//! and the like are not read; the adapter warns when one is set), no
//! redirect (a `3xx` is an error status to the caller), no compression.

use std::io;
use std::net::SocketAddr;
#[cfg(feature = "tls")]
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
    /// rustls' connector for `https`; `None` for `http`.
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Connector {
    /// A connector for `endpoint` (an http(s) URL with a host, already
    /// checked).
    ///
    /// # Errors
    /// The reason, when `https` is asked for and rustls' configuration
    /// (the platform's verifier) can't be built.
    pub(crate) fn new(endpoint: &Url, connect_timeout: Duration) -> Result<Self, String> {
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
        })
    }

    /// Sends `POST` with `body` (JSON), asking for an event stream, with
    /// `Authorization: Bearer {api_key}` when a key is given, and reads the
    /// response head.
    ///
    /// # Errors
    /// [`SendError`]: why no head came.
    pub(crate) async fn post(
        &self,
        body: &[u8],
        api_key: Option<&SecretString>,
    ) -> Result<Response, SendError> {
        let mut conn = timeout(self.connect_timeout, self.connect())
            .await
            .map_err(|_| SendError::ConnectTimeout)??;
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
                "Connection: close\r\nContent-Length: "
            )
            .as_bytes(),
        );
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
        let written = conn.write_all(&request).await;
        // The request held the key: it goes now, not when the answer ends.
        drop(request);
        written.map_err(SendError::Io)?;
        Response::read_head(conn).await
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

/// An open connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
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
/// piece by piece. Dropping it closes the connection.
pub(crate) struct Response {
    status: u16,
    conn: Conn,
    /// Bytes read from the socket; those before `pos` are decoded.
    buf: Vec<u8>,
    pos: usize,
    framing: Framing,
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
    /// Reads a response head from `conn`, past any interim (`1xx`) ones.
    async fn read_head(mut conn: Conn) -> Result<Self, SendError> {
        let mut buf = Vec::new();
        loop {
            let parsed = parse_head(&buf)?;
            if let Some((len, status, framing)) = parsed {
                if (100..200).contains(&status) {
                    if status == 101 {
                        return Err(SendError::Protocol("the server switched protocols"));
                    }
                    buf.drain(..len);
                    continue;
                }
                return Ok(Self {
                    status,
                    conn,
                    buf,
                    pos: len,
                    framing,
                });
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(SendError::Protocol("the response head is too long"));
            }
            if conn.read_buf(&mut buf).await.map_err(SendError::Io)? == 0 {
                return Err(SendError::NoResponse);
            }
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
                self.buf = Vec::new();
                return Ok(false);
            }
            if self.pos == self.buf.len() {
                // All decoded: the buffer goes while the model thinks.
                self.buf = Vec::new();
                self.pos = 0;
            } else if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
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

/// The head's length, status and body framing once `buf` holds a whole
/// head; `None` until it does.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, u16, Framing)>, SendError> {
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
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
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
    Ok(Some((len, status, framing)))
}

#[cfg(test)]
mod tests;
