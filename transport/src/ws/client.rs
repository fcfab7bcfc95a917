//! [`WsTransport`]: the runtime interface over one WebSocket to
//! `coderclaw serve` (`ws://host:port` or `wss://…`; the path defaults to
//! `/v1/ws`). Calls are multiplexed by request id; each stream is a
//! subscription on the same socket. A socket that breaks fails what was in
//! flight with `unavailable`, and the next call opens a new one.

use super::{Op, Request, SUBPROTOCOL, ServerMessage};
use crate::runtime::{RuntimeFuture, Transport, UpdateStream, client_error};
use coderclaw_core::task::{
    RuntimeStatus, SkillInfo, TaskFilter, TaskState, TaskSubmitRequest, TaskUpdateEvent, UploadInfo,
};
use coderclaw_net::endpoint::{Endpoint, Schemes};
use coderclaw_tasks::{ErrorCode, RuntimeError};
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::ClientRequestBuilder;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The schemes of WebSocket URLs.
const WS_SCHEMES: Schemes = Schemes { plain: "ws", secure: "wss", plain_port: 80, secure_port: 443 };

/// Largest message read from the server.
const MAX_REPLY_BYTES: usize = 64 << 20;

/// Events one stream may hold unread before it is ended with an error
/// (the socket is shared: one stream nobody reads must not stall the rest).
const STREAM_BUFFER: usize = 4096;

/// The id of requests whose reply nobody waits for (unsubscribes); call
/// ids start at 1.
const UNANSWERED: u64 = 0;

/// Longest WebSocket handshake after the connection is open.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A socket from which nothing (not even the server's pings, every 15 s)
/// arrives for this long is taken as dead.
const SILENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Messages queued for the socket's writer.
const OUTBOUND: usize = 256;

/// A client of a `coderclaw serve` server over WebSocket.
#[derive(Clone)]
pub struct WsTransport {
    inner: Arc<Client>,
}

struct Client {
    endpoint: Endpoint,
    /// The same server's REST API: uploads go there (a snapshot is no
    /// socket message).
    http: crate::HttpTransport,
    token: Option<String>,
    socket: tokio::sync::Mutex<Option<Arc<Socket>>>,
    next_id: AtomicU64,
}

/// One open socket: what is waiting for an answer, and the live streams.
struct Socket {
    out: mpsc::Sender<Message>,
    waiting: Mutex<Option<Routes>>,
}

#[derive(Default)]
struct Routes {
    replies: HashMap<u64, oneshot::Sender<ServerMessage>>,
    streams: HashMap<u64, mpsc::Sender<Result<TaskUpdateEvent, RuntimeError>>>,
}

fn unavailable(message: impl Into<String>) -> RuntimeError {
    RuntimeError::new(ErrorCode::Unavailable, message)
}

impl WsTransport {
    /// A client of the server at `url` (`ws://127.0.0.1:7420`) acting with
    /// session `token`; `ca` is an extra PEM CA trusted for `wss://`.
    pub fn new(url: &str, token: Option<String>, ca: Option<&Path>) -> Result<Self, RuntimeError> {
        let mut endpoint = Endpoint::parse(url, WS_SCHEMES, ca, &[]).map_err(client_error)?;
        if token.is_some() {
            endpoint.check_credentials_allowed().map_err(client_error)?;
        }
        if endpoint.path.is_empty() {
            endpoint.path = "/v1/ws".into();
        }
        let scheme = if endpoint.is_tls() { "https" } else { "http" };
        let prefix = endpoint.path.strip_suffix("/v1/ws").unwrap_or("");
        let http =
            crate::HttpTransport::with_ca(&format!("{scheme}://{}{prefix}", endpoint.authority), token.clone(), ca)?;
        let next_id = AtomicU64::new(1);
        let client = Client { endpoint, http, token, socket: tokio::sync::Mutex::new(None), next_id };
        Ok(Self { inner: Arc::new(client) })
    }

    /// The open socket, or a new one.
    async fn socket(&self) -> Result<Arc<Socket>, RuntimeError> {
        let mut slot = self.inner.socket.lock().await;
        if let Some(socket) = slot.as_ref().filter(|s| s.is_open()) {
            return Ok(socket.clone());
        }
        let socket = self.open().await?;
        *slot = Some(socket.clone());
        Ok(socket)
    }

    async fn open(&self) -> Result<Arc<Socket>, RuntimeError> {
        let c = &self.inner;
        let scheme = if c.endpoint.is_tls() { "wss" } else { "ws" };
        let uri: http::Uri = format!("{scheme}://{}{}", c.endpoint.authority, c.endpoint.path)
            .parse()
            .map_err(|e| RuntimeError::new(ErrorCode::InvalidRequest, format!("not a WebSocket URL: {e}")))?;
        let mut request = ClientRequestBuilder::new(uri).with_sub_protocol(SUBPROTOCOL);
        if let Some(token) = &c.token {
            request = request.with_header("Authorization", format!("Bearer {token}"));
        }
        let io = c.endpoint.connect().await.map_err(client_error)?;
        let config =
            WebSocketConfig::default().max_message_size(Some(MAX_REPLY_BYTES)).max_frame_size(Some(MAX_REPLY_BYTES));
        let handshake = tokio_tungstenite::client_async_with_config(request, io, Some(config));
        let (ws, _) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| unavailable(format!("{} did not complete the WebSocket handshake", c.endpoint.authority)))?
            .map_err(|e| handshake_error(&c.endpoint.authority, e))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut queued) = mpsc::channel::<Message>(OUTBOUND);
        let socket = Arc::new(Socket { out, waiting: Mutex::new(Some(Routes::default())) });
        tokio::spawn(async move {
            while let Some(m) = queued.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let reader = socket.clone();
        tokio::spawn(async move {
            let why = loop {
                let Ok(next) = tokio::time::timeout(SILENCE_LIMIT, stream.next()).await else {
                    break format!("nothing from the server for {SILENCE_LIMIT:?}");
                };
                match next {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerMessage>(&text) {
                        Ok(m) => reader.route(m),
                        Err(e) => break format!("the server sent a message this client cannot read: {e}"),
                    },
                    Some(Ok(Message::Close(frame))) => {
                        break frame.map_or("the server closed the socket".into(), |f| {
                            format!("the server closed the socket: {} ({})", f.reason, u16::from(f.code))
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("the socket broke: {e}"),
                    None => break "the socket closed".into(),
                }
            };
            reader.fail_all(&why);
        });
        Ok(socket)
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `op` and waits for its reply.
    async fn call<T: DeserializeOwned>(&self, op: Op) -> Result<T, RuntimeError> {
        let socket = self.socket().await?;
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        socket.expect_reply(id, tx)?;
        socket.send(id, op).await?;
        match rx.await.map_err(|_| unavailable("the socket closed before the server answered"))? {
            ServerMessage::Result { result, .. } => serde_json::from_value(result).map_err(|e| {
                RuntimeError::new(
                    ErrorCode::Internal,
                    format!("the server's reply is not what this client expects: {e}"),
                )
            }),
            ServerMessage::Error { error, .. } => Err(error),
            other => Err(RuntimeError::new(ErrorCode::Internal, format!("unexpected reply {other:?}"))),
        }
    }
}

fn handshake_error(authority: &str, e: tokio_tungstenite::tungstenite::Error) -> RuntimeError {
    use tokio_tungstenite::tungstenite::Error;
    if let Error::Http(response) = &e {
        let body = response.body().as_deref().unwrap_or_default();
        #[derive(serde::Deserialize)]
        struct Envelope {
            error: RuntimeError,
        }
        if let Ok(envelope) = serde_json::from_slice::<Envelope>(body) {
            return envelope.error;
        }
        return unavailable(format!("{authority} refused the WebSocket: HTTP {}", response.status()));
    }
    unavailable(format!("cannot open a WebSocket to {authority}: {e}"))
}

impl Socket {
    /// Whether the socket still carries calls (its reader has not ended).
    fn is_open(&self) -> bool {
        !self.out.is_closed() && self.waiting.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn expect_reply(&self, id: u64, tx: oneshot::Sender<ServerMessage>) -> Result<(), RuntimeError> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let routes = waiting.as_mut().ok_or_else(|| unavailable("the socket closed"))?;
        routes.replies.insert(id, tx);
        Ok(())
    }

    async fn send(&self, id: u64, op: Op) -> Result<(), RuntimeError> {
        let text = serde_json::to_string(&Request { id: json!(id), op })
            .map_err(|e| RuntimeError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        self.out.send(Message::text(text)).await.map_err(|_| unavailable("the socket closed"))
    }

    fn route(&self, message: ServerMessage) {
        let key = |v: &Value| v.as_u64();
        match message {
            ServerMessage::Result { ref id, .. } | ServerMessage::Error { ref id, .. } => {
                let tx = key(id).and_then(|id| self.routes(|r| r.replies.remove(&id)).flatten());
                match tx {
                    Some(tx) => {
                        let _ = tx.send(message);
                    }
                    None => tracing::debug!(?message, "a reply nobody waits for"),
                }
            }
            ServerMessage::Event { subscription, event } => {
                let Some(id) = key(&subscription) else { return };
                let Some(tx) = self.routes(|r| r.streams.get(&id).cloned()).flatten() else { return };
                if tx.try_send(Ok(event)).is_err() {
                    // Full or dropped: either way this stream is over.
                    self.routes(|r| r.streams.remove(&id));
                    let _ = tx.try_send(Err(unavailable("the stream fell behind and was ended; read it again")));
                    self.unsubscribe(subscription);
                }
            }
            ServerMessage::End { subscription, error } => {
                let Some(id) = key(&subscription) else { return };
                if let Some(tx) = self.routes(|r| r.streams.remove(&id)).flatten()
                    && let Some(e) = error
                {
                    let _ = tx.try_send(Err(e));
                }
            }
        }
    }

    /// Asks the server to end `subscription`, without waiting (the reader
    /// must keep routing replies; a full queue means the socket is failing
    /// anyway). Nobody waits for the answer.
    fn unsubscribe(&self, subscription: Value) {
        let request = Request { id: json!(UNANSWERED), op: Op::Unsubscribe { subscription } };
        let _ = self.out.try_send(Message::text(serde_json::to_string(&request).unwrap_or_default()));
    }

    fn routes<T>(&self, f: impl FnOnce(&mut Routes) -> T) -> Option<T> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).as_mut().map(f)
    }

    /// Ends everything waiting on this socket with `why`.
    fn fail_all(&self, why: &str) {
        let Some(routes) = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        for (_, tx) in routes.replies {
            let _ = tx.send(ServerMessage::Error { id: Value::Null, error: unavailable(why) });
        }
        for (_, tx) in routes.streams {
            let _ = tx.try_send(Err(unavailable(why)));
        }
    }
}

impl Transport for WsTransport {
    fn submit_task<'a>(&'a self, req: TaskSubmitRequest) -> RuntimeFuture<'a, TaskState> {
        Box::pin(self.call(Op::Submit { task: req }))
    }

    fn get_task_state<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, Option<TaskState>> {
        Box::pin(async move {
            match self.call(Op::Get { task_id: id.to_owned() }).await {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.code == ErrorCode::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn stream_task_updates<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, UpdateStream> {
        Box::pin(async move {
            let socket = self.socket().await?;
            let sub = self.next_id();
            let (reply_tx, reply_rx) = oneshot::channel();
            let (events_tx, events_rx) = mpsc::channel(STREAM_BUFFER);
            socket.expect_reply(sub, reply_tx)?;
            socket.routes(|r| r.streams.insert(sub, events_tx));
            socket.send(sub, Op::Subscribe { task_id: id.to_owned() }).await?;
            match reply_rx.await.map_err(|_| unavailable("the socket closed before the server answered"))? {
                ServerMessage::Result { .. } => {}
                ServerMessage::Error { error, .. } => {
                    socket.routes(|r| r.streams.remove(&sub));
                    return Err(error);
                }
                other => return Err(RuntimeError::new(ErrorCode::Internal, format!("unexpected reply {other:?}"))),
            }
            let guard = Unsubscribe { socket, sub };
            let stream = futures_util::stream::unfold((events_rx, guard), |(mut rx, guard)| async move {
                rx.recv().await.map(|e| (e, (rx, guard)))
            });
            Ok(Box::pin(stream) as UpdateStream)
        })
    }

    fn cancel_task<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, bool> {
        Box::pin(async move {
            #[derive(serde::Deserialize)]
            struct Reply {
                cancelled: bool,
            }
            let r: Reply = self.call(Op::Cancel { task_id: id.to_owned() }).await?;
            Ok(r.cancelled)
        })
    }

    fn abandon_task<'a>(&'a self, id: &'a str, reason: &'a str) -> RuntimeFuture<'a, bool> {
        Box::pin(async move {
            #[derive(serde::Deserialize)]
            struct Reply {
                abandoned: bool,
            }
            let r: Reply = self.call(Op::Abandon { task_id: id.to_owned(), reason: reason.to_owned() }).await?;
            Ok(r.abandoned)
        })
    }

    fn list_tasks<'a>(&'a self, filter: TaskFilter) -> RuntimeFuture<'a, Vec<TaskState>> {
        Box::pin(self.call(Op::List { filter }))
    }

    fn get_task_events<'a>(&'a self, id: &'a str, after: u64, limit: u32) -> RuntimeFuture<'a, Vec<TaskUpdateEvent>> {
        Box::pin(self.call(Op::Events { task_id: id.to_owned(), after, limit: Some(limit) }))
    }

    fn respond<'a>(&'a self, id: &'a str, answer: &'a str) -> RuntimeFuture<'a, TaskState> {
        Box::pin(self.call(Op::Respond { task_id: id.to_owned(), answer: answer.to_owned() }))
    }

    fn list_agents<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>> {
        Box::pin(self.call(Op::Agents))
    }

    fn list_skills<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>> {
        Box::pin(self.call(Op::Skills))
    }

    fn get_status<'a>(&'a self) -> RuntimeFuture<'a, RuntimeStatus> {
        Box::pin(self.call(Op::Status))
    }

    fn set_paused<'a>(&'a self, id: &'a str, paused: bool) -> RuntimeFuture<'a, TaskState> {
        let task_id = id.to_owned();
        Box::pin(self.call(if paused { Op::Pause { task_id } } else { Op::Resume { task_id } }))
    }

    fn upload_workspace<'a>(&'a self, tar: bytes::Bytes) -> RuntimeFuture<'a, UploadInfo> {
        Box::pin(self.inner.http.upload(tar))
    }
}

/// Ends a subscription on the server when its stream is dropped early.
struct Unsubscribe {
    socket: Arc<Socket>,
    sub: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if self.socket.routes(|r| r.streams.remove(&self.sub)).flatten().is_some() {
            self.socket.unsubscribe(json!(self.sub));
        }
    }
}
