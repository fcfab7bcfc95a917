//! The accept loop every coderclaw HTTP server shares ([`serve`]), and the
//! small helpers their routers use: JSON replies, bounded request bodies,
//! bearer tokens, query strings.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A reply body.
pub type Body = BoxBody<Bytes, Infallible>;

/// A running server; stops accepting when [`RunningServer::shutdown`] is
/// called or it is dropped.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Whether it serves https.
    pub tls: bool,
    stop: watch::Sender<bool>,
}

impl RunningServer {
    /// A server bound at `addr` that its accept loop (run by the caller)
    /// stops when the receiver sees `true`.
    pub fn new(addr: SocketAddr, tls: bool) -> (Self, watch::Receiver<bool>) {
        let (stop, stopped) = watch::channel(false);
        (Self { addr, tls, stop }, stopped)
    }

    /// The base URL, e.g. `http://127.0.0.1:7420`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Stops accepting connections.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the server is shut down (for a foreground `serve`).
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What one server allows its clients, so that slow, idle or too many
/// connections cannot stop it serving the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections served at once; one more is answered `503` (plain HTTP)
    /// or closed (TLS) at once, never left waiting.
    pub max_connections: usize,
    /// Longest wait for a request's headers, including the wait for the
    /// first request and between requests on a kept-alive connection.
    pub header_timeout: std::time::Duration,
    /// Longest TLS handshake.
    pub handshake_timeout: std::time::Duration,
}

impl Default for ServeLimits {
    /// 1024 connections, 10 s for headers and for the TLS handshake.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: std::time::Duration::from_secs(10),
            handshake_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Binds `listen` and serves every connection with `handler(peer, request)`
/// in the background, over TLS when `tls` is given, under the default
/// [`ServeLimits`].
pub async fn serve<H, F>(
    listen: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: H,
) -> Result<RunningServer, String>
where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_with(ServeLimits::default(), listen, tls, handler).await
}

/// [`serve`] under `limits`.
pub async fn serve_with<H, F>(
    limits: ServeLimits,
    listen: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: H,
) -> Result<RunningServer, String>
where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("cannot bind {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, mut stopped) = watch::channel(false);
    let is_tls = tls.is_some();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // Refusals are bounded too (each lives up to a second): past these, a
    // connection over the cap is just closed.
    let refusals = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS));
    tokio::spawn(async move {
        let mut backoff = AcceptBackoff::default();
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => { backoff.reset(); a }
                    Err(e) => { backoff.failed(&e).await; continue; }
                },
                _ = stopped.changed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                match refusals.clone().try_acquire_owned() {
                    Ok(refusal) => {
                        tokio::spawn(async move {
                            refuse_busy(tcp, peer, is_tls).await;
                            drop(refusal);
                        });
                    }
                    Err(_) => tracing::debug!(%peer, "connection closed: server at its connection limit"),
                }
                continue;
            };
            let (handler, tls) = (handler.clone(), tls.clone());
            tokio::spawn(async move {
                // Held while hyper serves the connection: an upgraded one
                // (WebSocket) leaves it, and its protocol bounds its sockets.
                let _slot = slot;
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(peer, req).await) }
                });
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
                let result = match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).with_upgrades().await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        }
                    }
                    None => http.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).with_upgrades().await,
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
            });
        }
    });
    tracing::info!(%addr, tls = is_tls, max_connections = limits.max_connections, "serving");
    Ok(RunningServer { addr, tls: is_tls, stop })
}

/// Connections over the cap answered at once; more are closed unanswered.
const MAX_REFUSALS: usize = 1024;

/// A connection over the cap: plain HTTP gets a `503` with `Retry-After`,
/// TLS is closed (answering would need a handshake); either way at once.
async fn refuse_busy(mut tcp: tokio::net::TcpStream, peer: SocketAddr, tls: bool) {
    use tokio::io::AsyncWriteExt;
    tracing::debug!(%peer, "connection refused: server at its connection limit");
    if !tls {
        let body =
            "{\"error\":{\"code\":\"busy\",\"message\":\"the server is at its connection limit; retry shortly\"}}";
        let reply = format!(
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        // Written, then the request read off (bounded) before closing, so
        // the client sees the answer rather than a reset.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            use tokio::io::AsyncReadExt;
            tcp.write_all(reply.as_bytes()).await?;
            tcp.shutdown().await?;
            let mut sink = [0u8; 4096];
            for _ in 0..16 {
                if tcp.read(&mut sink).await? == 0 {
                    break;
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    }
}

/// Accept failures: out of descriptors or memory means waiting (each
/// failure would otherwise return at once and spin, logging each time);
/// logged once per second with the count.
#[derive(Default)]
struct AcceptBackoff {
    failures: u64,
    logged: Option<std::time::Instant>,
}

impl AcceptBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }

    async fn failed(&mut self, e: &std::io::Error) {
        self.failures += 1;
        let now = std::time::Instant::now();
        if self.logged.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1)) {
            tracing::warn!(error = %e, failures = self.failures, "accept failed; backing off");
            self.logged = Some(now);
        }
        // EMFILE, ENFILE, ENOBUFS, ENOMEM: resources come back only when
        // connections close. Anything else: a short pause all the same.
        let exhausted = matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12));
        let pause = if exhausted { 100u64 } else { 10 } * self.failures.min(10);
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
}

/// A reply with `bytes` as its body.
pub fn bytes_response(status: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(bytes).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// A JSON reply.
pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    bytes_response(status, "application/json", Bytes::from(body))
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the limit.
    #[error("the request body is over {0} bytes")]
    TooLarge(usize),
    /// The connection failed while reading.
    #[error("cannot read the request body: {0}")]
    Read(String),
}

/// Reads a request body of at most `max` bytes.
pub async fn read_body(body: Incoming, max: usize) -> Result<Bytes, BodyError> {
    match Limited::new(body, max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(BodyError::TooLarge(max)),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

/// The bearer token of a request, if it sends one; an `Authorization`
/// header of another form is an error (the message says what to send).
pub fn bearer_token<B>(req: &Request<B>) -> Result<Option<String>, &'static str> {
    bearer_from(req.headers())
}

fn bearer_from(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let text = value.to_str().map_err(|_| "the Authorization header is not text")?;
    let token = text.strip_prefix("Bearer ").ok_or("use `Authorization: Bearer <token>`")?;
    Ok(Some(token.trim().to_owned()))
}

/// `k=v&k2=v2` as decoded pairs (a key without `=` has an empty value).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Percent-encodes everything but unreserved characters, for query values.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (space) in a query component.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trip() {
        let v = "a b&c=d/é%";
        let q = format!("x={}&flag", percent_encode(v));
        assert_eq!(query_pairs(&q), vec![("x".into(), v.into()), ("flag".into(), String::new())]);
    }

    #[test]
    fn bearer_forms() {
        let req = |v: &str| Request::builder().header(header::AUTHORIZATION, v).body(()).unwrap();
        assert_eq!(bearer_token(&req("Bearer abc ")).unwrap(), Some("abc".into()));
        assert!(bearer_token(&req("Basic abc")).is_err());
        assert_eq!(bearer_token(&Request::new(())).unwrap(), None);
    }

    /// One plain request on a new connection: the status code, or None if
    /// the server closed without answering.
    async fn status_of(addr: SocketAddr) -> Option<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.ok()?;
        let mut reply = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut reply)).await.ok()?.ok()?;
        String::from_utf8_lossy(&reply).split(' ').nth(1)?.parse().ok()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn idle_and_excess_connections_cannot_stop_a_legitimate_client() {
        let ms = std::time::Duration::from_millis;
        let limits = ServeLimits { max_connections: 8, header_timeout: ms(300), handshake_timeout: ms(300) };
        let server = serve_with(limits, "127.0.0.1:0".parse().unwrap(), None, |_, _| async {
            json_response(StatusCode::OK, &"ok")
        })
        .await
        .unwrap();
        assert_eq!(status_of(server.addr).await, Some(200));
        // 200 half-open connections that never send a byte.
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
        }
        tokio::time::sleep(ms(50)).await;
        // Over the cap: answered 503 at once, not left hanging.
        let started = std::time::Instant::now();
        assert_eq!(status_of(server.addr).await, Some(503));
        assert!(started.elapsed() < ms(250), "{:?}", started.elapsed());
        // The idle ones are closed at the header timeout; a client gets in.
        tokio::time::sleep(ms(500)).await;
        assert_eq!(status_of(server.addr).await, Some(200));
        drop(idle);
    }
}
