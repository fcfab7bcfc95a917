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

/// Binds `listen` and serves every connection with `handler(peer, request)`
/// in the background, over TLS when `tls` is given.
pub async fn serve<H, F>(
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
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                },
                _ = stopped.changed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (handler, tls) = (handler.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(peer, req).await) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                let result = match tls {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(stream) => http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    },
                    None => http.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await,
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
            });
        }
    });
    tracing::info!(%addr, tls = is_tls, "serving");
    Ok(RunningServer { addr, tls: is_tls, stop })
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
}
