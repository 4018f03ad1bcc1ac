//! Minimal keep-alive HTTP/1.1 JSON client.
//!
//! Used by the `switchboard loadgen` subcommand and by the integration tests
//! to talk to a running switchboard server. It is deliberately tiny (one
//! plain-HTTP connection, origin-form requests, whole-body responses) instead
//! of pulling `reqwest` and its dependency tree into the build: everything it
//! needs is already provided by `hyper`, which the server depends on anyway.
//!
//! A [`Client`] owns exactly one TCP connection and sends one request at a
//! time on it (`&mut self`). If the server closed the connection between two
//! requests (idle keep-alive timeout, restart, cancelled request), the next
//! request transparently reconnects once. A request that may already have
//! reached the server is never re-sent.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A single keep-alive HTTP/1.1 connection to one server.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is deliberately not printed.
        f.debug_struct("Client").field("addr", &self.addr).field("has_token", &self.token.is_some()).finish()
    }
}

/// A fully-read HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names are lower-case (as normalised by hyper); values that are
    /// not valid UTF-8 are converted lossily.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body parsed as JSON, or `Value::Null` if it is empty or not valid
    /// JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8 text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    /// Opens a TCP connection to `addr` and performs the HTTP/1.1 handshake.
    /// The hyper connection driver runs on a spawned tokio task that ends
    /// when the connection closes or the `Client` is dropped.
    pub async fn connect(addr: SocketAddr, token: Option<String>) -> Result<Client> {
        let sender = open(addr).await?;
        Ok(Client { sender, addr, token })
    }

    /// The server address this client talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops the current connection and opens a new one.
    pub async fn reconnect(&mut self) -> Result<()> {
        self.sender = open(self.addr).await?;
        Ok(())
    }

    /// Sends a request with an optional JSON body and returns the full
    /// response. Sets `host`, `authorization: Bearer <token>` (when a token
    /// is configured) and, when `body` is given, `content-type:
    /// application/json`. Extra `headers` are added after those.
    pub async fn send(&mut self, method: &str, path: &str, body: Option<&serde_json::Value>, headers: &[(&str, &str)]) -> Result<Response> {
        let (bytes, content_type) = match body {
            Some(v) => (serde_json::to_vec(v).context("serialising request body")?, Some("application/json")),
            None => (Vec::new(), None),
        };
        self.send_inner(method, path, bytes, content_type, headers).await
    }

    /// Sends `body` verbatim, without adding a `content-type` header (pass
    /// one in `headers` if wanted). For tests that need malformed bodies.
    pub async fn send_raw(&mut self, method: &str, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Result<Response> {
        self.send_inner(method, path, body, None, headers).await
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<Response> {
        self.send("GET", path, None, &[]).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&mut self, path: &str, body: &serde_json::Value) -> Result<Response> {
        self.send("POST", path, Some(body), &[]).await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&mut self, path: &str, body: &serde_json::Value) -> Result<Response> {
        self.send("PATCH", path, Some(body), &[]).await
    }

    async fn send_inner(
        &mut self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        let req = self.build_request(method, path, body, content_type, headers)?;

        // Connection already known to be dead (server closed it while idle,
        // or an earlier request future was dropped): reconnect up front.
        let mut reconnected = false;
        if self.sender.is_closed() || self.sender.ready().await.is_err() {
            self.reconnect().await?;
            reconnected = true;
        }

        let resp = match self.sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                // The request was never written, so re-sending it on a fresh
                // connection is safe even for non-idempotent methods.
                Some(req) if !reconnected => {
                    self.reconnect().await?;
                    self.sender.send_request(req).await.with_context(|| format!("{method} {path} to {}", self.addr))?
                }
                _ => {
                    return Err(anyhow!(e.into_error())).with_context(|| format!("{method} {path} to {}", self.addr));
                }
            },
        };

        let status = resp.status().as_u16();
        let headers =
            resp.headers().iter().map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
        let body =
            resp.into_body().collect().await.with_context(|| format!("reading response body of {method} {path}"))?.to_bytes().to_vec();
        Ok(Response { status, headers, body })
    }

    fn build_request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Request<Full<Bytes>>> {
        let method = Method::from_bytes(method.as_bytes()).with_context(|| format!("invalid HTTP method {method:?}"))?;
        if !path.starts_with('/') {
            bail!("request path must start with '/': {path:?}");
        }
        let mut b = Request::builder().method(method).uri(path).header(header::HOST, self.addr.to_string());
        if let Some(token) = &self.token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::from(body))).with_context(|| format!("building request {path:?}"))
    }
}

async fn open(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    // Small request/response pairs: don't let Nagle add latency.
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "client connection ended with error");
        }
    });
    Ok(sender)
}

/// Parses a base URL such as `http://127.0.0.1:8080` into a socket address.
///
/// Only `http` is supported; the host must be an IP literal (IPv6 in
/// brackets) or `localhost` (resolved to 127.0.0.1, no DNS). The port
/// defaults to 80. A trailing `/` is accepted; any other path, query,
/// fragment or user-info is rejected rather than silently ignored.
pub fn parse_http_url(url: &str) -> Result<SocketAddr> {
    let trimmed = url.trim();
    let rest = match trimmed.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => bail!("unsupported URL scheme {scheme:?} in {url:?} (only http)"),
        None => bail!("URL {url:?} must start with http://"),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        bail!("URL {url:?} has no host");
    }
    if authority.contains(['/', '?', '#', '@']) {
        bail!("URL {url:?} must be just http://HOST[:PORT] (no path, query or user-info)");
    }

    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let (host, tail) = after.split_once(']').with_context(|| format!("unterminated IPv6 literal in {url:?}"))?;
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':').with_context(|| format!("unexpected {t:?} after IPv6 literal in {url:?}"))?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };

    let port: u16 = match port {
        None => 80,
        Some(p) => p.parse().with_context(|| format!("invalid port {p:?} in {url:?}"))?,
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().with_context(|| format!("host {host:?} in {url:?} must be an IP literal or localhost"))?
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_url_accepts_ip_and_localhost() {
        let a = |s: &str| parse_http_url(s).unwrap().to_string();
        assert_eq!(a("http://127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(a("http://127.0.0.1:8080/"), "127.0.0.1:8080");
        assert_eq!(a("HTTP://10.0.0.1"), "10.0.0.1:80");
        assert_eq!(a("http://localhost:9"), "127.0.0.1:9");
        assert_eq!(a("http://[::1]:8080"), "[::1]:8080");
        assert_eq!(a("http://[::1]"), "[::1]:80");
    }

    #[test]
    fn parse_url_rejects_others() {
        for bad in [
            "",
            "127.0.0.1:8080",
            "https://127.0.0.1:8080",
            "http://",
            "http://example.com:80",
            "http://127.0.0.1:8080/v1",
            "http://127.0.0.1:99999",
            "http://127.0.0.1:",
            "http://u@127.0.0.1",
            "http://[::1",
            "http://[::1]x",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn response_helpers() {
        let r = Response { status: 200, headers: vec![("content-type".into(), "application/json".into())], body: br#"{"a":1}"#.to_vec() };
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.header("x-missing"), None);
        assert_eq!(r.json()["a"], 1);
        let empty = Response { status: 204, headers: vec![], body: vec![] };
        assert!(empty.json().is_null());
        let bad = Response { body: b"not json".to_vec(), ..empty };
        assert!(bad.json().is_null());
    }

    #[tokio::test]
    async fn sends_default_headers_and_raw_bodies() {
        use axum::{Router, http::HeaderMap, routing::post};

        async fn echo(headers: HeaderMap, body: axum::body::Bytes) -> axum::Json<serde_json::Value> {
            let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            axum::Json(serde_json::json!({
                "auth": h("authorization"),
                "ct": h("content-type"),
                "host": h("host"),
                "x": h("x-extra"),
                "body": String::from_utf8_lossy(&body),
            }))
        }

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/echo", post(echo));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let mut c = Client::connect(addr, Some("tok".into())).await.unwrap();
        let r = c.send("POST", "/echo", Some(&serde_json::json!({"k": 1})), &[("x-extra", "y")]).await.unwrap();
        assert_eq!(r.status, 200);
        let j = r.json();
        assert_eq!(j["auth"], "Bearer tok");
        assert_eq!(j["ct"], "application/json");
        assert_eq!(j["host"], addr.to_string());
        assert_eq!(j["x"], "y");
        assert_eq!(j["body"], r#"{"k":1}"#);

        let r = c.send_raw("POST", "/echo", b"{oops".to_vec(), &[]).await.unwrap();
        assert_eq!(r.json()["ct"], "");
        assert_eq!(r.json()["body"], "{oops");

        server.abort();
    }

    #[tokio::test]
    async fn reconnects_once_when_server_closed_idle_connection() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        // Answers exactly one request per connection, then closes it without
        // announcing `connection: close` (like an idle keep-alive timeout).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acc = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // Only tokio's `net` feature is guaranteed, so use the
                    // readiness API instead of AsyncRead/AsyncWrite ext traits.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        if s.readable().await.is_err() {
                            return;
                        }
                        match s.try_read(&mut chunk) {
                            Ok(0) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => return,
                        }
                    }
                    let mut out: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                    while !out.is_empty() {
                        if s.writable().await.is_err() {
                            return;
                        }
                        match s.try_write(out) {
                            Ok(n) => out = &out[n..],
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => return,
                        }
                    }
                    // Dropping `s` closes the connection.
                });
            }
        });

        let mut c = Client::connect(addr, None).await.unwrap();
        for _ in 0..3 {
            let r = c.get("/x").await.unwrap();
            assert_eq!(r.status, 200);
            assert!(r.json().is_object());
            // Let the client notice the close before the next request.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }
}
