//! A bare HTTP/1.1 keep-alive connection for the load phase of `switchboard loadgen`.
//!
//! The load generator shares the CPU with the server it measures, so every microsecond it
//! spends per request is taken from the server. [`WireConn`] does what `wrk` does: one plain
//! [`TcpStream`] (`TCP_NODELAY`) read and written directly by the worker task that owns it,
//! no connection-driver task, no header maps. A request is assembled in a reusable buffer and
//! written with one `write_all`; the response is read into another reusable buffer and handed
//! back as status and body bytes.
//!
//! It speaks only the subset the switchboard server needs: `POST` with a JSON body, and
//! responses framed by `content-length` (which the server sends for all its JSON and
//! problem+json responses). A chunked or close-delimited response, a head over [`HEAD_MAX`],
//! a body over [`BODY_MAX`] or bytes after the response (requests are never pipelined, so
//! none may arrive) are errors, and after any error the connection is dropped. A response
//! with `connection: close` drops the connection after it; the next request then opens a
//! new one. A request is never re-sent.
//!
//! The general-purpose client (any method, full headers, transparent reconnects) is
//! [`crate::client::Client`].

use std::io::{self, Write as _};
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Largest response head (status line and headers, final blank line included) accepted.
pub const HEAD_MAX: usize = 16 * 1024;
/// Largest response body accepted (by its `content-length`).
pub const BODY_MAX: usize = 1024 * 1024;
/// Initial size of the response buffer: switchboard's responses are a few hundred bytes.
const BUF_INITIAL: usize = 4 * 1024;
/// A response buffer grown past this by a large response is shrunk back before the next one,
/// so one large response does not pin a megabyte per connection.
const BUF_KEEP: usize = 64 * 1024;

/// One response, borrowed from the connection's buffer until the next request.
#[derive(Debug, PartialEq, Eq)]
pub struct Response<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

/// One keep-alive HTTP/1.1 connection to `addr`, one request at a time.
pub struct WireConn {
    addr: SocketAddr,
    /// The `host`, `authorization`, `content-type` lines and the `content-length: ` name,
    /// identical in every request.
    fixed_headers: Box<[u8]>,
    /// `None` until connected, and again after an error or a `connection: close`. A request
    /// takes the stream out while it runs, so a request future dropped midway (a timeout)
    /// drops the connection with it.
    stream: Option<TcpStream>,
    request: Vec<u8>,
    response: ResponseBuf,
}

impl std::fmt::Debug for WireConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token (in `fixed_headers`) is deliberately not printed.
        f.debug_struct("WireConn").field("addr", &self.addr).field("connected", &self.stream.is_some()).finish()
    }
}

impl WireConn {
    /// A connection to `addr` that sends `authorization: Bearer <token>` unless `token` is
    /// empty. Does not connect yet ([`WireConn::connect`], or the first [`WireConn::post`]).
    /// A token that cannot be a header value (control characters) is an error.
    pub fn new(addr: SocketAddr, token: &str) -> io::Result<WireConn> {
        if token.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the token contains control characters"));
        }
        let mut fixed = format!("host: {addr}\r\n");
        if !token.is_empty() {
            fixed.push_str(&format!("authorization: Bearer {token}\r\n"));
        }
        fixed.push_str("content-type: application/json\r\ncontent-length: ");
        Ok(WireConn {
            addr,
            fixed_headers: fixed.into_bytes().into_boxed_slice(),
            stream: None,
            request: Vec::with_capacity(512),
            response: ResponseBuf::new(),
        })
    }

    /// The server address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether a connection is open (none before the first connect, after an error or after a
    /// `connection: close` response).
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Opens a new connection, replacing any current one.
    pub async fn connect(&mut self) -> io::Result<()> {
        self.stream = None;
        self.stream = Some(open(self.addr).await?);
        Ok(())
    }

    /// Sends `POST path` with the JSON `body` and reads the whole response, connecting first
    /// if not connected. On any error the connection is dropped.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> io::Result<Response<'_>> {
        if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid request path {path:?}")));
        }
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => open(self.addr).await?,
        };

        self.request.clear();
        self.request.extend_from_slice(b"POST ");
        self.request.extend_from_slice(path.as_bytes());
        self.request.extend_from_slice(b" HTTP/1.1\r\n");
        self.request.extend_from_slice(&self.fixed_headers);
        write!(self.request, "{}\r\n\r\n", body.len()).expect("writing to a Vec cannot fail");
        self.request.extend_from_slice(body);
        write_all(&stream, &self.request).await?;

        let head = self.response.read(&mut stream).await?;
        if !head.close {
            self.stream = Some(stream);
        }
        Ok(Response { status: head.status, body: self.response.body(&head) })
    }
}

async fn open(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    // Small request/response pairs: don't let Nagle add latency.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes all of `buf`: one `write` system call unless the socket buffer is full.
async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The one read operation the response reader needs: up to `buf.len()` bytes, 0 at end of
/// stream. A trait so the tests can deliver a response in arbitrary pieces.
trait ReadSome {
    async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

/// Through `AsyncRead`, not `readable` and `try_read`: tokio's `poll_read` takes a short read
/// as the socket drained and clears its readiness, so the next response's first read waits
/// for the kernel's event instead of making a `recvfrom` that can only fail with `EAGAIN`
/// (one wasted system call per request otherwise). This is `AsyncReadExt::read`, which needs
/// tokio's `io-util` feature that nothing else here uses.
impl ReadSome for TcpStream {
    async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = tokio::io::ReadBuf::new(buf);
        std::future::poll_fn(|cx| tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut *self), cx, &mut filled)).await?;
        Ok(filled.filled().len())
    }
}

/// What the head of a response says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    /// Bytes of the head, the blank line after the headers included.
    len: usize,
    content_length: usize,
    /// The connection must not be reused after this response.
    close: bool,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A reusable buffer that holds exactly one response.
struct ResponseBuf {
    buf: Vec<u8>,
    /// Bytes of `buf` received so far.
    filled: usize,
}

impl ResponseBuf {
    fn new() -> Self {
        ResponseBuf { buf: vec![0; BUF_INITIAL], filled: 0 }
    }

    /// The body of the response just read, described by `head`.
    fn body(&self, head: &Head) -> &[u8] {
        &self.buf[head.len..head.len + head.content_length]
    }

    /// Reads one response from `r`: first up to [`HEAD_MAX`] bytes until the head is complete,
    /// then exactly the rest of the body, never beyond it.
    async fn read(&mut self, r: &mut impl ReadSome) -> io::Result<Head> {
        if self.buf.len() > BUF_KEEP {
            self.buf.truncate(BUF_KEEP);
            self.buf.shrink_to_fit();
        }
        self.filled = 0;
        let mut scanned: usize = 0;
        let head = loop {
            // Resume the search for the blank line where the last one stopped (a CRLFCRLF can
            // straddle two reads).
            let from = scanned.saturating_sub(3);
            if let Some(i) = self.buf[from..self.filled].windows(4).position(|w| w == b"\r\n\r\n") {
                break parse_head(&self.buf[..from + i + 4])?;
            }
            scanned = self.filled;
            if self.filled >= HEAD_MAX {
                return Err(invalid(format!("response head exceeds {HEAD_MAX} bytes")));
            }
            if self.filled == self.buf.len() {
                self.buf.resize((self.buf.len() * 2).min(HEAD_MAX), 0);
            }
            let end = self.buf.len().min(HEAD_MAX);
            let n = r.read_some(&mut self.buf[self.filled..end]).await?;
            if n == 0 {
                return Err(if self.filled == 0 {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection before responding")
                } else {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection in the middle of the response head")
                });
            }
            self.filled += n;
        };

        let total = head.len + head.content_length;
        if self.filled > total {
            return Err(invalid(format!(
                "{} unexpected bytes after a complete HTTP {} response (no request was pipelined)",
                self.filled - total,
                head.status
            )));
        }
        if self.buf.len() < total {
            self.buf.resize(total, 0);
        }
        while self.filled < total {
            let n = r.read_some(&mut self.buf[self.filled..total]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the server closed the connection after {} of {} body bytes", self.filled - head.len, head.content_length),
                ));
            }
            self.filled += n;
        }
        Ok(head)
    }
}

/// Parses a complete response head (ending in the blank line). Header names are matched
/// case-insensitively; only `content-length` framing is accepted.
fn parse_head(head: &[u8]) -> io::Result<Head> {
    let text = head.strip_suffix(b"\r\n\r\n").ok_or_else(|| invalid("response head does not end with a blank line"))?;
    let mut lines = text.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));

    // Status line: `HTTP/1.1 201 Created` (the reason phrase is optional and ignored).
    let status_line = lines.next().unwrap_or_default();
    let (http10, rest) = if let Some(rest) = status_line.strip_prefix(b"HTTP/1.1 ") {
        (false, rest)
    } else if let Some(rest) = status_line.strip_prefix(b"HTTP/1.0 ") {
        (true, rest)
    } else {
        return Err(invalid(format!("malformed status line {:?}", String::from_utf8_lossy(status_line))));
    };
    let code = rest.get(..3).filter(|c| c.iter().all(u8::is_ascii_digit) && matches!(rest.get(3), None | Some(b' ')));
    let status = match code {
        Some(c) => c.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0')),
        None => return Err(invalid(format!("malformed status line {:?}", String::from_utf8_lossy(status_line)))),
    };

    let mut content_length: Option<usize> = None;
    let mut close = false;
    let mut keep_alive = false;
    for line in lines {
        let colon = line.iter().position(|&b| b == b':');
        let (name, value) = match colon {
            Some(i) if i > 0 && !line[..i].iter().any(|b| b.is_ascii_whitespace()) => (&line[..i], line[i + 1..].trim_ascii()),
            _ => return Err(invalid(format!("malformed response header line {:?}", String::from_utf8_lossy(line)))),
        };
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(value).ok_or_else(|| invalid(format!("invalid content-length {:?}", String::from_utf8_lossy(value))))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(invalid("conflicting content-length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(invalid(format!(
                "HTTP {status} response uses transfer-encoding: {} (only content-length framing is supported)",
                String::from_utf8_lossy(value)
            )));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }

    let content_length = content_length
        .ok_or_else(|| invalid(format!("HTTP {status} response has no content-length (only content-length framing is supported)")))?;
    if content_length > BODY_MAX {
        return Err(invalid(format!("HTTP {status} response body of {content_length} bytes exceeds {BODY_MAX}")));
    }
    Ok(Head { status, len: head.len(), content_length, close: close || (http10 && !keep_alive) })
}

/// `1*DIGIT`, without the sign or whitespace that `str::parse` would accept.
fn parse_length(v: &[u8]) -> Option<usize> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// Delivers the given pieces one per read (a piece larger than the read buffer is split),
    /// then end of stream. Empty pieces are skipped (a read of 0 bytes is the end of stream).
    struct Pieces(VecDeque<Vec<u8>>);

    impl Pieces {
        fn new<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Self {
            Pieces(pieces.into_iter().filter(|p| !p.is_empty()).map(<[u8]>::to_vec).collect())
        }

        fn bytewise(data: &[u8]) -> Self {
            Pieces(data.iter().map(|&b| vec![b]).collect())
        }

        fn remaining(&self) -> usize {
            self.0.iter().map(Vec::len).sum()
        }
    }

    impl ReadSome for Pieces {
        async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(mut piece) = self.0.pop_front() else { return Ok(0) };
            let n = piece.len().min(buf.len());
            buf[..n].copy_from_slice(&piece[..n]);
            if n < piece.len() {
                self.0.push_front(piece.split_off(n));
            }
            Ok(n)
        }
    }

    const OK: &[u8] = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n{\"call_id\":\"c-1\"}";

    /// Reads one response and returns (status, body, close).
    async fn read(r: &mut Pieces) -> io::Result<(u16, Vec<u8>, bool)> {
        let mut buf = ResponseBuf::new();
        let head = buf.read(r).await?;
        Ok((head.status, buf.body(&head).to_vec(), head.close))
    }

    fn err(result: io::Result<(u16, Vec<u8>, bool)>) -> String {
        result.expect_err("should fail").to_string()
    }

    #[tokio::test]
    async fn reads_a_response_in_one_piece_and_byte_by_byte() {
        let want = (201, br#"{"call_id":"c-1"}"#.to_vec(), false);
        assert_eq!(read(&mut Pieces::new([OK])).await.unwrap(), want);
        let mut bytewise = Pieces::bytewise(OK);
        assert_eq!(read(&mut bytewise).await.unwrap(), want);
        assert_eq!(bytewise.remaining(), 0);
    }

    #[tokio::test]
    async fn reads_a_response_split_anywhere() {
        // Every split into three pieces, including splits inside the CRLFCRLF and the body.
        for i in 0..=OK.len() {
            for j in i..=OK.len() {
                let mut r = Pieces::new([&OK[..i], &OK[i..j], &OK[j..]]);
                assert_eq!(read(&mut r).await.unwrap().1, br#"{"call_id":"c-1"}"#, "split at {i}, {j}");
            }
        }
    }

    #[tokio::test]
    async fn never_reads_past_the_body_once_the_head_is_known() {
        // Head first, then the body and the next response in one piece: only the body is read.
        let body = br#"{"call_id":"c-1"}"#;
        let head_len = OK.len() - body.len();
        let mut next = body.to_vec();
        next.extend_from_slice(OK);
        let mut r = Pieces::new([&OK[..head_len], &next[..]]);
        assert_eq!(read(&mut r).await.unwrap().1, body);
        assert_eq!(r.remaining(), OK.len());
    }

    #[tokio::test]
    async fn rejects_bytes_after_the_response() {
        let mut data = OK.to_vec();
        data.extend_from_slice(b"HTTP/1.1");
        let msg = err(read(&mut Pieces::new([&data[..]])).await);
        assert!(msg.contains("8 unexpected bytes"), "{msg}");
    }

    #[tokio::test]
    async fn content_length_zero_and_mixed_case_names() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(read(&mut Pieces::bytewise(r)).await.unwrap(), (200, vec![], false));

        let r = b"HTTP/1.1 404 Not Found\r\nCONTENT-type: application/problem+json\r\ncOnTeNt-LeNgTh:2\r\nConnection: Keep-Alive\r\n\r\n{}";
        assert_eq!(read(&mut Pieces::new([&r[..]])).await.unwrap(), (404, b"{}".to_vec(), false));

        let r = b"HTTP/1.1 200\r\ncontent-length:   3  \r\n\r\nabc";
        assert_eq!(read(&mut Pieces::new([&r[..]])).await.unwrap(), (200, b"abc".to_vec(), false));
    }

    #[tokio::test]
    async fn notices_connection_close() {
        for r in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\nConnection: Upgrade, CLOSE\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}",
        ] {
            assert_eq!(read(&mut Pieces::new([r])).await.unwrap(), (200, b"{}".to_vec(), true), "{}", String::from_utf8_lossy(r));
        }
        let r = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n{}";
        assert!(!read(&mut Pieces::new([&r[..]])).await.unwrap().2);
    }

    #[tokio::test]
    async fn rejects_chunked_and_missing_length() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        let msg = err(read(&mut Pieces::new([&chunked[..]])).await);
        assert!(msg.contains("transfer-encoding: chunked"), "{msg}");
        // Even with a content-length beside it.
        let both = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n{}";
        assert!(err(read(&mut Pieces::new([&both[..]])).await).contains("transfer-encoding"));

        let close_delimited = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{}";
        let msg = err(read(&mut Pieces::new([&close_delimited[..]])).await);
        assert!(msg.contains("HTTP 200 response has no content-length"), "{msg}");
    }

    #[tokio::test]
    async fn rejects_malformed_heads() {
        for bad in [
            &b"HTTP/2 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 2000\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n folded\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        ] {
            let e = read(&mut Pieces::new([bad])).await.expect_err(&String::from_utf8_lossy(bad));
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
    }

    #[tokio::test]
    async fn bounds_the_head_and_the_body() {
        // A head of exactly HEAD_MAX bytes is accepted, one more byte is not, however it arrives.
        let head = |len: usize| {
            let mut h = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-pad: ".to_vec();
            h.resize(len - 4, b'a');
            h.extend_from_slice(b"\r\n\r\n");
            h
        };
        assert_eq!(read(&mut Pieces::new([&head(HEAD_MAX)[..]])).await.unwrap().0, 200);
        let msg = err(read(&mut Pieces::new([&head(HEAD_MAX + 1)[..]])).await);
        assert!(msg.contains("response head exceeds 16384 bytes"), "{msg}");
        let endless = vec![b'a'; 10 * HEAD_MAX];
        let mut r = Pieces::new([&b"HTTP/1.1 200 OK\r\nx-pad: "[..], &endless[..]]);
        assert!(err(read(&mut r).await).contains("exceeds"));
        assert!(r.remaining() >= 8 * HEAD_MAX, "stopped reading at the bound");

        // A body of exactly BODY_MAX bytes is accepted (and the buffer shrinks back afterwards),
        // one more byte is refused from the head alone.
        let mut big = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY_MAX}\r\n\r\n").into_bytes();
        big.resize(big.len() + BODY_MAX, b'x');
        let mut buf = ResponseBuf::new();
        let head = buf.read(&mut Pieces::new([&big[..]])).await.unwrap();
        assert_eq!(buf.body(&head).len(), BODY_MAX);
        let head = buf.read(&mut Pieces::new([OK])).await.unwrap();
        assert_eq!(buf.body(&head), br#"{"call_id":"c-1"}"#);
        assert!(buf.buf.len() <= BUF_KEEP);

        let over = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", BODY_MAX + 1);
        let msg = err(read(&mut Pieces::new([over.as_bytes()])).await);
        assert!(msg.contains("exceeds 1048576"), "{msg}");
    }

    #[tokio::test]
    async fn end_of_stream_is_an_error() {
        assert!(err(read(&mut Pieces::new([])).await).contains("before responding"));
        assert!(err(read(&mut Pieces::new([&OK[..10]])).await).contains("middle of the response head"));
        assert!(err(read(&mut Pieces::new([&OK[..OK.len() - 1]])).await).contains("after 16 of 17 body bytes"));
    }

    // ----- against a real socket -----

    /// A one-connection-at-a-time server: reads each request (head and `content-length` body),
    /// records it, and answers with the next canned response; after the last canned response
    /// it closes the connection. Returns the address and the (connection, request) log.
    async fn canned_server(responses: Vec<&'static [u8]>) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<(usize, Vec<u8>)>>>) {
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        tokio::spawn(async move {
            let mut responses = responses.into_iter();
            let mut conn = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                conn += 1;
                loop {
                    let mut req = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let complete = |req: &[u8]| {
                        let end = req.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
                        let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
                        let len: usize = head.split("content-length: ").nth(1)?.split("\r\n").next()?.parse().ok()?;
                        (req.len() >= end + len).then_some(())
                    };
                    while complete(&req).is_none() {
                        match s.read_some(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&chunk[..n]),
                        }
                    }
                    if complete(&req).is_none() {
                        break;
                    }
                    seen.lock().unwrap().push((conn, req));
                    let Some(resp) = responses.next() else { break };
                    if write_all(&s, resp).await.is_err() || resp.windows(17).any(|w| w.eq_ignore_ascii_case(b"connection: close")) {
                        break;
                    }
                }
            }
        });
        (addr, log)
    }

    #[tokio::test]
    async fn writes_the_exact_request_and_keeps_the_connection() {
        let (addr, log) =
            canned_server(vec![b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}", b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n[1]"])
                .await;
        let mut c = WireConn::new(addr, "tok").unwrap();
        assert!(!c.is_connected());
        let r = c.post("/v1/calls", br#"{"a":1}"#).await.unwrap();
        assert_eq!(r, Response { status: 201, body: b"{}" });
        assert!(c.is_connected());
        let r = c.post("/v1/calls/c%2F1/end", b"{}").await.unwrap();
        assert_eq!(r, Response { status: 200, body: b"[1]" });

        let log = log.lock().unwrap();
        let want = |path: &str, body: &str| {
            format!(
                "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer tok\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        assert_eq!(log.len(), 2);
        assert_eq!(String::from_utf8_lossy(&log[0].1), want("/v1/calls", r#"{"a":1}"#));
        assert_eq!(String::from_utf8_lossy(&log[1].1), want("/v1/calls/c%2F1/end", "{}"));
        assert_eq!((log[0].0, log[1].0), (1, 1), "one keep-alive connection");
    }

    #[tokio::test]
    async fn connection_close_drops_the_connection_and_the_next_request_reconnects() {
        let (addr, log) = canned_server(vec![
            b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
        ])
        .await;
        let mut c = WireConn::new(addr, "").unwrap();
        c.connect().await.unwrap();
        assert_eq!(c.post("/a", b"{}").await.unwrap().status, 200);
        assert!(!c.is_connected(), "dropped after connection: close");
        assert_eq!(c.post("/b", b"{}").await.unwrap().status, 200);
        assert!(c.is_connected());

        let log = log.lock().unwrap();
        assert_eq!(log.iter().map(|(conn, _)| *conn).collect::<Vec<_>>(), vec![1, 2]);
        assert!(!String::from_utf8_lossy(&log[0].1).contains("authorization"), "no token, no authorization header");
    }

    #[tokio::test]
    async fn an_error_drops_the_connection() {
        let (addr, _log) = canned_server(vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"]).await;
        let mut c = WireConn::new(addr, "t").unwrap();
        let e = c.post("/a", b"{}").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(!c.is_connected());
        // The server closes after its last canned response: a clean end of stream.
        let e = c.post("/a", b"{}").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn rejects_bad_tokens_and_paths() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(WireConn::new(addr, "a\r\nx-injected: 1").is_err());
        assert!(WireConn::new(addr, "ok token\twith tab").is_ok());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut c = WireConn::new(addr, "t").unwrap();
        for bad in ["v1/calls", "/a b", "/a\r\n"] {
            let e = rt.block_on(c.post(bad, b"{}")).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
