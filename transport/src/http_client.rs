//! The HTTP transport's client: the same [`Transport`] as the in-process
//! one, over the REST + SSE API. Connections are kept alive and reused;
//! https is verified against the web PKI roots plus, optionally, a CA file
//! (for a team server with its own certificate).

use crate::runtime::{RuntimeFuture, Transport, UpdateStream, client_error};
use bytes::{Buf, Bytes, BytesMut};
use coderclaw_core::task::{
    RuntimeStatus, SkillInfo, TaskFilter, TaskState, TaskSubmitRequest, TaskUpdateEvent, UploadInfo,
};
use coderclaw_net::client::{HttpClient, Pending};
use coderclaw_tasks::{ErrorCode, RuntimeError};
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

/// Largest JSON reply read.
const MAX_REPLY_BYTES: usize = 64 << 20;

/// A client of a `coderclaw serve` server.
#[derive(Clone)]
pub struct HttpTransport {
    inner: Arc<Client>,
}

struct Client {
    http: HttpClient,
    token: Option<String>,
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
        let http = HttpClient::new(url, ca).map_err(client_error)?;
        if token.is_some() {
            http.check_credentials_allowed().map_err(client_error)?;
        }
        Ok(Self { inner: Arc::new(Client { http, token }) })
    }

    fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Request<Full<Bytes>>, RuntimeError> {
        let c = &self.inner;
        let mut builder = HttpClient::bearer(c.http.request(method, path), c.token.as_deref());
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| RuntimeError::new(ErrorCode::InvalidRequest, e.to_string()))
    }

    /// `POST /v1/uploads` with the tar as the body.
    pub(crate) async fn upload(&self, tar: Bytes) -> Result<UploadInfo, RuntimeError> {
        let c = &self.inner;
        let request = HttpClient::bearer(c.http.request(Method::POST, "/v1/uploads"), c.token.as_deref())
            .header(header::CONTENT_TYPE, "application/x-tar")
            .body(Full::new(tar))
            .map_err(|e| RuntimeError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        self.exchange(request).await
    }

    /// Sends a request whose reply body the caller reads (an event stream).
    async fn send(&self, method: Method, path: &str) -> Result<Pending, RuntimeError> {
        self.inner.http.send(self.request(method, path, None)?).await.map_err(client_error)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, RuntimeError> {
        self.exchange(self.request(method, path, body)?).await
    }

    /// Sends `request` and reads its JSON reply (or the server's error).
    async fn exchange<T: DeserializeOwned>(&self, request: Request<Full<Bytes>>) -> Result<T, RuntimeError> {
        let (parts, bytes) = self.inner.http.fetch(request, MAX_REPLY_BYTES).await.map_err(client_error)?;
        if !parts.status.is_success() {
            return Err(reply_error(&parts, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            RuntimeError::new(ErrorCode::Internal, format!("the server's reply is not what this client expects: {e}"))
        })
    }
}

/// The error a failed reply stands for: the server's own, with its
/// `Retry-After`.
pub(crate) fn reply_error(parts: &http::response::Parts, body: &[u8]) -> RuntimeError {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: RuntimeError,
    }
    let mut e = serde_json::from_slice::<Envelope>(body).map(|e| e.error).unwrap_or_else(|_| {
        RuntimeError::new(ErrorCode::Internal, format!("HTTP {}: {}", parts.status, String::from_utf8_lossy(body)))
    });
    let retry = parts.headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    e.retry_after_secs = e.retry_after_secs.or(retry);
    e
}

fn task_path(id: &str, rest: &str) -> Result<String, RuntimeError> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(RuntimeError::new(ErrorCode::InvalidRequest, format!("`{id}` is not a task id (a UUID)")));
    }
    Ok(format!("/v1/tasks/{id}{rest}"))
}

impl Transport for HttpTransport {
    fn submit_task<'a>(&'a self, req: TaskSubmitRequest) -> RuntimeFuture<'a, TaskState> {
        Box::pin(async move {
            let body =
                serde_json::to_vec(&req).map_err(|e| RuntimeError::new(ErrorCode::InvalidRequest, e.to_string()))?;
            self.call(Method::POST, "/v1/tasks", Some(body)).await
        })
    }

    fn get_task_state<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, Option<TaskState>> {
        Box::pin(async move {
            match self.call(Method::GET, &task_path(id, "")?, None).await {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.code == ErrorCode::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn stream_task_updates<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, UpdateStream> {
        Box::pin(async move {
            let Pending { parts, body, .. } = self.send(Method::GET, &task_path(id, "/stream")?).await?;
            if !parts.status.is_success() {
                let bytes =
                    Limited::new(body, MAX_REPLY_BYTES).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                return Err(reply_error(&parts, &bytes));
            }
            let state = SseState { body, buf: BytesMut::new(), done: false };
            Ok(Box::pin(futures_util::stream::unfold(state, next_sse_event)) as UpdateStream)
        })
    }

    fn cancel_task<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, bool> {
        Box::pin(async move {
            #[derive(serde::Deserialize)]
            struct Reply {
                cancelled: bool,
            }
            let r: Reply = self.call(Method::POST, &task_path(id, "/cancel")?, Some(b"{}".to_vec())).await?;
            Ok(r.cancelled)
        })
    }

    fn abandon_task<'a>(&'a self, id: &'a str, reason: &'a str) -> RuntimeFuture<'a, bool> {
        Box::pin(async move {
            #[derive(serde::Deserialize)]
            struct Reply {
                abandoned: bool,
            }
            let body = json!({ "reason": reason }).to_string().into_bytes();
            let r: Reply = self.call(Method::POST, &task_path(id, "/abandon")?, Some(body)).await?;
            Ok(r.abandoned)
        })
    }

    fn list_tasks<'a>(&'a self, filter: TaskFilter) -> RuntimeFuture<'a, Vec<TaskState>> {
        Box::pin(async move {
            let mut query = Vec::new();
            if let Some(s) = filter.status {
                query.push(format!("status={s}"));
            }
            if let Some(s) = &filter.session {
                query.push(format!("session={}", coderclaw_net::server::percent_encode(s)));
            }
            if let Some(l) = filter.limit {
                query.push(format!("limit={l}"));
            }
            let path = if query.is_empty() { "/v1/tasks".to_owned() } else { format!("/v1/tasks?{}", query.join("&")) };
            self.call(Method::GET, &path, None).await
        })
    }

    fn get_task_events<'a>(&'a self, id: &'a str, after: u64, limit: u32) -> RuntimeFuture<'a, Vec<TaskUpdateEvent>> {
        Box::pin(async move {
            let path = format!("{}?after={after}&limit={limit}", task_path(id, "/events")?);
            self.call(Method::GET, &path, None).await
        })
    }

    fn respond<'a>(&'a self, id: &'a str, answer: &'a str) -> RuntimeFuture<'a, TaskState> {
        Box::pin(async move {
            let body = json!({ "answer": answer }).to_string().into_bytes();
            self.call(Method::POST, &task_path(id, "/input")?, Some(body)).await
        })
    }

    fn list_agents<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>> {
        Box::pin(async move { self.call(Method::GET, "/v1/agents", None).await })
    }

    fn list_skills<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>> {
        Box::pin(async move { self.call(Method::GET, "/v1/skills", None).await })
    }

    fn get_status<'a>(&'a self) -> RuntimeFuture<'a, RuntimeStatus> {
        Box::pin(async move { self.call(Method::GET, "/v1/status", None).await })
    }

    fn set_paused<'a>(&'a self, id: &'a str, paused: bool) -> RuntimeFuture<'a, TaskState> {
        let rest = if paused { "/pause" } else { "/resume" };
        Box::pin(async move { self.call(Method::POST, &task_path(id, rest)?, Some(b"{}".to_vec())).await })
    }

    fn upload_workspace<'a>(&'a self, tar: Bytes) -> RuntimeFuture<'a, UploadInfo> {
        Box::pin(self.upload(tar))
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
