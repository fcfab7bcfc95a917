//! The HTTP transport's client: the same [`Transport`] as the in-process
//! one, over the REST + SSE API. Connections are kept alive and reused;
//! https is verified against the web PKI roots plus, optionally, a CA file
//! (for a team server with its own certificate).

use super::runtime::{Transport, UpdateStream};
use super::service::{ErrorCode, RuntimeError};
use bytes::{Buf, Bytes, BytesMut};
use coderclaw_core::task::{RuntimeStatus, SkillInfo, TaskFilter, TaskState, TaskSubmitRequest, TaskUpdateEvent};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest JSON reply read.
const MAX_REPLY_BYTES: usize = 64 << 20;
/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of a `coderclaw serve` server.
#[derive(Clone)]
pub struct HttpTransport {
    inner: Arc<Client>,
}

struct Client {
    host: String,
    port: u16,
    authority: String,
    tls: Option<tokio_rustls::TlsConnector>,
    token: Option<String>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl HttpTransport {
    /// A client of the server at `url` (`http://127.0.0.1:7420`) acting
    /// with session `token`.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, RuntimeError> {
        Self::with_ca(url, token, None)
    }

    /// Like [`HttpTransport::new`], also trusting the CA certificates in
    /// the PEM file `ca` for https.
    pub fn with_ca(url: &str, token: Option<String>, ca: Option<&Path>) -> Result<Self, RuntimeError> {
        let bad = |m: String| RuntimeError::new(ErrorCode::InvalidRequest, m);
        let uri: http::Uri = url.parse().map_err(|e| bad(format!("`{url}` is not a URL: {e}")))?;
        let host = uri.host().ok_or_else(|| bad(format!("`{url}` has no host")))?.to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad(format!("`{url}`: use an http:// or https:// URL"))),
        };
        if !uri.path().trim_matches('/').is_empty() {
            return Err(bad(format!("`{url}`: give the server's base URL, without a path")));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https { Some(crate::tls::connector(ca).map_err(bad)?) } else { None };
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        let inner = Client { host, port, authority, tls, token, idle: Mutex::new(Vec::new()) };
        Ok(Self { inner: Arc::new(inner) })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, RuntimeError> {
        let c = &self.inner;
        let down = |e: String| {
            RuntimeError::new(ErrorCode::Unavailable, format!("cannot reach the server at {}: {e}", c.authority))
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((c.host.as_str(), c.port)))
            .await
            .map_err(|_| down("connect timed out".into()))?
            .map_err(|e| down(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let builder = hyper::client::conn::http1::Builder::new();
        let sender = match &c.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(c.host.clone()).map_err(|e| down(e.to_string()))?;
                let stream = tls.connect(name, tcp).await.map_err(|e| down(format!("TLS: {e}")))?;
                let (sender, conn) =
                    builder.handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| down(e.to_string()))?;
                tokio::spawn(conn);
                sender
            }
            None => {
                let (sender, conn) =
                    builder.handshake(hyper_util::rt::TokioIo::new(tcp)).await.map_err(|e| down(e.to_string()))?;
                tokio::spawn(conn);
                sender
            }
        };
        Ok(sender)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(http::response::Parts, Incoming, SendRequest<Full<Bytes>>), RuntimeError> {
        let c = &self.inner;
        let mut builder = Request::builder().method(method).uri(path).header(header::HOST, &c.authority);
        if let Some(t) = &c.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| RuntimeError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        let pooled = { c.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() };
        let reusable = match pooled {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let mut sender = match reusable {
            Some(s) => s,
            None => self.connect().await?,
        };
        let response = sender.send_request(request).await.map_err(|e| {
            RuntimeError::new(ErrorCode::Unavailable, format!("the server at {} did not answer: {e}", c.authority))
        })?;
        let (parts, body) = response.into_parts();
        Ok((parts, body, sender))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, RuntimeError> {
        let (parts, body, sender) = self.send(method, path, body).await?;
        let bytes = Limited::new(body, MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| RuntimeError::new(ErrorCode::Unavailable, format!("reading the reply: {e}")))?
            .to_bytes();
        // The reply was read to its end: the connection can carry the next.
        self.inner.idle.lock().unwrap_or_else(|p| p.into_inner()).push(sender);
        if !parts.status.is_success() {
            return Err(reply_error(parts.status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            RuntimeError::new(ErrorCode::Internal, format!("the server's reply is not what this client expects: {e}"))
        })
    }
}

fn reply_error(status: StatusCode, body: &[u8]) -> RuntimeError {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: RuntimeError,
    }
    serde_json::from_slice::<Envelope>(body).map(|e| e.error).unwrap_or_else(|_| {
        RuntimeError::new(ErrorCode::Internal, format!("HTTP {status}: {}", String::from_utf8_lossy(body)))
    })
}

fn task_path(id: &str, rest: &str) -> Result<String, RuntimeError> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(RuntimeError::new(ErrorCode::InvalidRequest, format!("`{id}` is not a task id (a UUID)")));
    }
    Ok(format!("/v1/tasks/{id}{rest}"))
}

impl Transport for HttpTransport {
    async fn submit_task(&self, req: TaskSubmitRequest) -> Result<TaskState, RuntimeError> {
        let body = serde_json::to_vec(&req).map_err(|e| RuntimeError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        self.call(Method::POST, "/v1/tasks", Some(body)).await
    }

    async fn get_task_state(&self, id: &str) -> Result<Option<TaskState>, RuntimeError> {
        match self.call(Method::GET, &task_path(id, "")?, None).await {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn stream_task_updates(&self, id: &str) -> Result<UpdateStream, RuntimeError> {
        let (parts, body, _sender) = self.send(Method::GET, &task_path(id, "/stream")?, None).await?;
        if !parts.status.is_success() {
            let bytes = Limited::new(body, MAX_REPLY_BYTES).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(reply_error(parts.status, &bytes));
        }
        let state = SseState { body, buf: BytesMut::new(), done: false };
        Ok(Box::pin(futures_util::stream::unfold(state, next_sse_event)))
    }

    async fn cancel_task(&self, id: &str) -> Result<bool, RuntimeError> {
        #[derive(serde::Deserialize)]
        struct Reply {
            cancelled: bool,
        }
        let r: Reply = self.call(Method::POST, &task_path(id, "/cancel")?, Some(b"{}".to_vec())).await?;
        Ok(r.cancelled)
    }

    async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<TaskState>, RuntimeError> {
        let mut query = Vec::new();
        if let Some(s) = filter.status {
            query.push(format!("status={s}"));
        }
        if let Some(s) = &filter.session {
            let encoded: String = s
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            query.push(format!("session={encoded}"));
        }
        if let Some(l) = filter.limit {
            query.push(format!("limit={l}"));
        }
        let path = if query.is_empty() { "/v1/tasks".to_owned() } else { format!("/v1/tasks?{}", query.join("&")) };
        self.call(Method::GET, &path, None).await
    }

    async fn get_task_events(&self, id: &str) -> Result<Vec<TaskUpdateEvent>, RuntimeError> {
        self.call(Method::GET, &task_path(id, "/events")?, None).await
    }

    async fn respond(&self, id: &str, answer: &str) -> Result<TaskState, RuntimeError> {
        let body = json!({ "answer": answer }).to_string().into_bytes();
        self.call(Method::POST, &task_path(id, "/input")?, Some(body)).await
    }

    async fn list_agents(&self) -> Result<Vec<SkillInfo>, RuntimeError> {
        self.call(Method::GET, "/v1/agents", None).await
    }

    async fn list_skills(&self) -> Result<Vec<SkillInfo>, RuntimeError> {
        self.call(Method::GET, "/v1/skills", None).await
    }

    async fn get_status(&self) -> Result<RuntimeStatus, RuntimeError> {
        self.call(Method::GET, "/v1/status", None).await
    }
}

struct SseState {
    body: Incoming,
    buf: BytesMut,
    done: bool,
}

/// Parses one `data:` event at a time from the SSE body.
async fn next_sse_event(mut s: SseState) -> Option<(Result<TaskUpdateEvent, RuntimeError>, SseState)> {
    loop {
        if let Some(end) = find_event_end(&s.buf) {
            let raw = s.buf.split_to(end + 2);
            let text = String::from_utf8_lossy(&raw);
            let data: String = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect::<Vec<_>>().join("\n");
            if data.is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<TaskUpdateEvent>(&data).map_err(|e| {
                RuntimeError::new(ErrorCode::Internal, format!("the server sent an event this client cannot read: {e}"))
            });
            return Some((parsed, s));
        }
        if s.done {
            return None;
        }
        match s.body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(mut data) = frame.into_data() {
                    while data.has_remaining() {
                        let chunk = data.chunk();
                        s.buf.extend_from_slice(chunk);
                        let n = chunk.len();
                        data.advance(n);
                    }
                }
            }
            Some(Err(e)) => {
                s.done = true;
                let e = RuntimeError::new(ErrorCode::Unavailable, format!("the event stream broke: {e}"));
                return Some((Err(e), s));
            }
            None => s.done = true,
        }
    }
}

fn find_event_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}
