//! [`HttpClient`]: HTTP/1.1 to one server, connections kept alive and
//! reused. https is verified against the web PKI roots plus, optionally, a
//! CA file (see [`crate::tls::connector`]).

use crate::endpoint::{Endpoint, Schemes};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL cannot be used.
    #[error("`{url}`: {message}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The server could not be reached, or dropped the connection.
    #[error("cannot reach the server at {authority}: {message}")]
    Unreachable {
        /// host:port.
        authority: String,
        /// The cause.
        message: String,
    },
    /// The reply could not be read (or was larger than allowed).
    #[error("reading the reply from {authority}: {message}")]
    Reply {
        /// host:port.
        authority: String,
        /// The cause.
        message: String,
    },
}

/// A client of the server at one base URL.
pub struct HttpClient {
    endpoint: Endpoint,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    /// Limit on a whole [`HttpClient::fetch`] (request and reply).
    fetch_timeout: Option<Duration>,
}

/// Whether a reply says its connection closes after it.
fn closes(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| v.to_str().is_ok_and(|v| v.eq_ignore_ascii_case("close")))
}

/// The schemes of HTTP.
pub const HTTP_SCHEMES: Schemes = Schemes { plain: "http", secure: "https", plain_port: 80, secure_port: 443 };

/// A reply whose body has not been read yet; give it back with
/// [`HttpClient::release`] once the body is read to its end so the
/// connection carries the next request.
pub struct Pending {
    /// Status and headers.
    pub parts: http::response::Parts,
    /// The body.
    pub body: Incoming,
    /// The connection it came on.
    pub connection: SendRequest<Full<Bytes>>,
}

impl HttpClient {
    /// A client of `url` (`http://127.0.0.1:7420`, `https://host/prefix`);
    /// `ca` is an extra PEM CA file trusted for https.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Self, ClientError> {
        let endpoint = Endpoint::parse(url, HTTP_SCHEMES, ca, &[])?;
        Ok(Self { endpoint, idle: Mutex::new(Vec::new()), fetch_timeout: None })
    }

    /// Limits each [`HttpClient::fetch`] to `limit`, so a server that
    /// accepts the connection and then stalls counts as unreachable.
    pub fn with_fetch_timeout(mut self, limit: Duration) -> Self {
        self.fetch_timeout = Some(limit);
        self
    }

    /// Whether this client speaks https.
    pub fn is_https(&self) -> bool {
        self.endpoint.is_tls()
    }

    /// Whether the server is this machine (`localhost` or a loopback address).
    pub fn is_loopback(&self) -> bool {
        self.endpoint.is_loopback()
    }

    /// Refuses to carry a credential in clear text to another machine
    /// (see [`Endpoint::check_credentials_allowed`]).
    pub fn check_credentials_allowed(&self) -> Result<(), ClientError> {
        self.endpoint.check_credentials_allowed()
    }

    /// A request builder for `path` (below the base URL) with `Host` set.
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        let full = match (self.endpoint.path.as_str(), path) {
            ("", "") => "/".to_owned(),
            (base, p) => format!("{base}{p}"),
        };
        Request::builder().method(method).uri(full).header(header::HOST, &self.endpoint.authority)
    }

    /// Adds `Authorization: Bearer <token>` when there is a token.
    pub fn bearer(builder: http::request::Builder, token: Option<&str>) -> http::request::Builder {
        match token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
            Some(mut v) => {
                v.set_sensitive(true);
                builder.header(header::AUTHORIZATION, v)
            }
            None => builder,
        }
    }

    fn down(&self, message: String) -> ClientError {
        ClientError::Unreachable { authority: self.endpoint.authority.clone(), message }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let io = self.endpoint.connect().await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| self.down(e.to_string()))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// Sends `request` on an idle connection or a new one; the body of the
    /// reply is left to the caller.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Pending, ClientError> {
        let pooled = { self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() };
        let reusable = match pooled {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let reused = reusable.is_some();
        let mut connection = match reusable {
            Some(s) => s,
            None => self.connect().await?,
        };
        let answered = |e: &hyper::Error| self.down(format!("the server did not answer: {e}"));
        let response = match connection.try_send_request(request).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                // Never written: the server closed the idle connection
                // meanwhile. Safe to send on a new one, whatever the method.
                Some(request) if reused => {
                    connection = self.connect().await?;
                    connection.send_request(request).await.map_err(|e| answered(&e))?
                }
                _ => return Err(answered(e.error())),
            },
        };
        let (parts, body) = response.into_parts();
        Ok(Pending { parts, body, connection })
    }

    /// Returns a connection whose last reply was read to its end.
    pub fn release(&self, connection: SendRequest<Full<Bytes>>) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(connection);
    }

    /// Sends `request` and reads the whole reply, at most `max_reply` bytes
    /// (within the fetch timeout, if one is set).
    pub async fn fetch(
        &self,
        request: Request<Full<Bytes>>,
        max_reply: usize,
    ) -> Result<(http::response::Parts, Bytes), ClientError> {
        match self.fetch_timeout {
            Some(limit) => tokio::time::timeout(limit, self.fetch_unlimited(request, max_reply))
                .await
                .map_err(|_| self.down(format!("no complete answer within {limit:?}")))?,
            None => self.fetch_unlimited(request, max_reply).await,
        }
    }

    async fn fetch_unlimited(
        &self,
        request: Request<Full<Bytes>>,
        max_reply: usize,
    ) -> Result<(http::response::Parts, Bytes), ClientError> {
        let Pending { parts, body, connection } = self.send(request).await?;
        let bytes = Limited::new(body, max_reply)
            .collect()
            .await
            .map_err(|e| ClientError::Reply { authority: self.endpoint.authority.clone(), message: e.to_string() })?
            .to_bytes();
        // A server that answered without reading the request (a 413) closes
        // the connection after the reply: it cannot carry the next request.
        if !closes(&parts.headers) {
            self.release(connection);
        }
        Ok((parts, bytes))
    }
}
