//! The WebSocket endpoint of `coderclaw serve`: `GET /v1/ws` upgrades a
//! request the REST API has already authenticated, and each socket then
//! serves [`super::Op`]s for the holder of that session.
//!
//! Every call on the socket authenticates the session again (a session
//! revoked while the socket is open stops working at its next call) and
//! goes through the same [`TaskService`] as REST, so decisions, audit and
//! quotas are the same. Bounds per socket: requests in flight, live
//! subscriptions, the size of one message (the REST body limit), the time a
//! write may take (a slow reader is disconnected, not buffered), and the
//! time without a frame from the client (pinged meanwhile). Sockets are
//! bounded per server.

use super::{BEARER_SUBPROTOCOL_PREFIX, Op, SUBPROTOCOL, ServerMessage, parse_request};
use coderclaw_core::decision::Subject;
use coderclaw_net::Body;
use coderclaw_tasks::{ErrorCode, MAX_EVENTS_PAGE, RuntimeError, TaskService};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key};
use tracing::Instrument;

/// Bounds of the WebSocket endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsConfig {
    /// Largest request message answered; a larger one gets
    /// `payload_too_large` (the socket stays open). Messages over four
    /// times this close the socket (code 1009).
    pub max_message_bytes: usize,
    /// Requests one socket may have in flight; reading waits beyond.
    pub max_in_flight: usize,
    /// Live subscriptions per socket; one more is refused `quota_exceeded`.
    pub max_subscriptions: usize,
    /// Open sockets per server; one more upgrade gets `503`.
    pub max_sockets: usize,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// A socket with no frame from the client for this long is closed.
    pub idle_timeout: Duration,
    /// Longest wait to hand the client one message: a client that reads
    /// slower than its tasks produce is disconnected after it.
    pub send_timeout: Duration,
}

impl WsConfig {
    /// The defaults for a server taking `max_body_bytes` REST bodies: 64
    /// requests in flight, 1024 subscriptions, 1024 sockets, a ping every
    /// 15 s, 45 s idle, 10 s to take a message.
    pub fn for_body_limit(max_body_bytes: usize) -> Self {
        Self {
            max_message_bytes: max_body_bytes,
            max_in_flight: 64,
            max_subscriptions: 1024,
            max_sockets: 1024,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            send_timeout: Duration::from_secs(10),
        }
    }
}

/// How often a live subscription checks its session again.
const RECHECK: Duration = Duration::from_secs(1);

/// Messages queued for one socket's writer.
const OUTBOUND: usize = 256;

/// The endpoint: upgrades and the sockets it serves.
pub struct WsServer {
    service: Arc<TaskService>,
    config: WsConfig,
    sockets: Arc<Semaphore>,
}

/// Authenticates one call on a socket (again each time).
pub type Authenticator = Arc<dyn Fn(&TaskService) -> Result<Subject, RuntimeError> + Send + Sync>;

impl WsServer {
    /// The endpoint over `service`.
    pub fn new(service: Arc<TaskService>, config: WsConfig) -> Self {
        Self { service, sockets: Arc::new(Semaphore::new(config.max_sockets)), config }
    }

    /// The session token a browser offers as a subprotocol, when it does.
    pub fn token_from_subprotocols(headers: &HeaderMap) -> Option<String> {
        offered_protocols(headers).find_map(|p| p.strip_prefix(BEARER_SUBPROTOCOL_PREFIX).map(str::to_owned))
    }

    /// Answers an upgrade request whose caller `auth` authenticates (it has
    /// already succeeded once), and serves the socket in the background.
    pub fn upgrade(&self, req: Request<Incoming>, auth: Authenticator) -> Result<Response<Body>, RuntimeError> {
        let key = handshake_key(req.headers())?;
        let offered: Vec<String> = offered_protocols(req.headers()).map(str::to_owned).collect();
        if !offered.is_empty() && !offered.iter().any(|p| p == SUBPROTOCOL) {
            return Err(RuntimeError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "offer the subprotocol `{SUBPROTOCOL}` (with `{BEARER_SUBPROTOCOL_PREFIX}<token>` from a browser)"
                ),
            ));
        }
        let Ok(slot) = self.sockets.clone().try_acquire_owned() else {
            let mut e = RuntimeError::new(
                ErrorCode::Unavailable,
                "this server has as many WebSockets open as it serves; retry shortly",
            );
            e.retry_after_secs = Some(1);
            return Err(e);
        };
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, derive_accept_key(key.as_bytes()));
        if !offered.is_empty() {
            response = response.header(header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL);
        }
        let response = response
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .map_err(|e| RuntimeError::new(ErrorCode::Internal, e.to_string()))?;
        let socket = Socket { service: self.service.clone(), auth, config: self.config };
        let span = tracing::debug_span!("websocket");
        tokio::spawn(
            async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => socket.serve(TokioIo::new(upgraded)).await,
                    Err(e) => tracing::debug!(error = %e, "the upgrade did not complete"),
                }
                drop(slot);
            }
            .instrument(span),
        );
        Ok(response)
    }
}

fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// The client's `Sec-WebSocket-Key`, once the request is checked to be a
/// version 13 WebSocket upgrade.
fn handshake_key(headers: &HeaderMap) -> Result<String, RuntimeError> {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let refuse = |what: &str| {
        RuntimeError::new(ErrorCode::InvalidRequest, format!("/v1/ws speaks WebSocket: {what} (see docs/websocket.md)"))
    };
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
        return Err(refuse("send `Connection: Upgrade` and `Upgrade: websocket`"));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(refuse("only `Sec-WebSocket-Version: 13` is spoken"));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 64)
        .map(str::to_owned)
        .ok_or_else(|| refuse("the `Sec-WebSocket-Key` header is missing"))
}

/// One socket's session and bounds.
#[derive(Clone)]
struct Socket {
    service: Arc<TaskService>,
    auth: Authenticator,
    config: WsConfig,
}

/// Why a socket is closed by the server.
type Closing = watch::Sender<Option<CloseFrame>>;

fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    CloseFrame { code, reason: reason.into() }
}

impl Socket {
    async fn serve<S>(self, io: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let frame_cap = self.config.max_message_bytes.saturating_mul(4).max(64 << 10);
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(frame_cap))
            .max_frame_size(Some(frame_cap))
            .read_buffer_size(16 << 10)
            .write_buffer_size(16 << 10);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
        let (sink, stream) = ws.split();
        let (out, queued) = mpsc::channel(OUTBOUND);
        let (closing, closed) = watch::channel(None);
        let writer = tokio::spawn(write_loop(sink, queued, closing.clone(), closed.clone(), self.config));
        self.read_loop(stream, out, closing, closed).await;
        let _ = writer.await;
    }

    async fn read_loop<S>(
        &self,
        mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
        out: mpsc::Sender<Message>,
        closing: Closing,
        mut closed: watch::Receiver<Option<CloseFrame>>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let in_flight = Arc::new(Semaphore::new(self.config.max_in_flight));
        let subscription_slots = Arc::new(Semaphore::new(self.config.max_subscriptions));
        let mut tasks = JoinSet::new();
        let mut subscriptions: HashMap<String, AbortHandle> = HashMap::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let frame = tokio::select! {
                frame = tokio::time::timeout(self.config.idle_timeout, stream.next()) => frame,
                _ = closed.changed() => break,
            };
            let text = match frame {
                Err(_) => {
                    let _ = closing.send(Some(close_frame(CloseCode::Away, "idle: no frame from the client")));
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, "the socket broke");
                    let frame = match e {
                        tokio_tungstenite::tungstenite::Error::Capacity(_) => {
                            close_frame(CloseCode::Size, "message over the size limit")
                        }
                        _ => close_frame(CloseCode::Protocol, "protocol error"),
                    };
                    let _ = closing.send(Some(frame));
                    break;
                }
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Binary(_)))) => {
                    let refusal =
                        error(Value::Null, ErrorCode::InvalidRequest, "send requests as text messages (JSON)");
                    if !queue(&out, &refusal, &closing, self.config.send_timeout).await {
                        break;
                    }
                    continue;
                }
                Ok(Some(Ok(Message::Close(_)))) => break,
                Ok(Some(Ok(_))) => continue,
            };
            if text.len() > self.config.max_message_bytes {
                let message = format!("the message is over the {}-byte limit", self.config.max_message_bytes);
                let id = super::request_id(&text);
                if !queue(&out, &error(id, ErrorCode::PayloadTooLarge, message), &closing, self.config.send_timeout)
                    .await
                {
                    break;
                }
                continue;
            }
            let (id, op) = parse_request(&text);
            let op = match op {
                Ok(op) => op,
                Err(message) => {
                    if !queue(&out, &error(id, ErrorCode::InvalidRequest, message), &closing, self.config.send_timeout)
                        .await
                    {
                        break;
                    }
                    continue;
                }
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
            let (socket, out, closing) = (self.clone(), out.clone(), closing.clone());
            match op {
                Op::Subscribe { task_id } => {
                    let key = id.to_string();
                    subscriptions.retain(|_, handle| !handle.is_finished());
                    if subscriptions.contains_key(&key) {
                        let message = "a live subscription already has this id: use another";
                        let _ =
                            queue(&out, &error(id, ErrorCode::Conflict, message), &closing, self.config.send_timeout)
                                .await;
                        continue;
                    }
                    let Ok(slot) = subscription_slots.clone().try_acquire_owned() else {
                        let message = format!(
                            "this socket follows {} tasks already: unsubscribe first",
                            self.config.max_subscriptions
                        );
                        let _ = queue(
                            &out,
                            &error(id, ErrorCode::QuotaExceeded, message),
                            &closing,
                            self.config.send_timeout,
                        )
                        .await;
                        continue;
                    };
                    let handle = tasks.spawn(async move {
                        drop(permit);
                        socket.follow(id, task_id, out, closing, slot).await;
                    });
                    subscriptions.insert(key, handle);
                }
                Op::Unsubscribe { subscription } => {
                    let ended = subscriptions.remove(&subscription.to_string()).is_some_and(|h| {
                        let live = !h.is_finished();
                        h.abort();
                        live
                    });
                    tasks.spawn(async move {
                        let mut reply = vec![reply(id, json!({ "unsubscribed": ended }))];
                        if ended {
                            reply.push(ServerMessage::End { subscription, error: None });
                        }
                        for message in &reply {
                            if !queue(&out, message, &closing, socket.config.send_timeout).await {
                                break;
                            }
                        }
                        drop(permit);
                    });
                }
                op => {
                    tasks.spawn(async move {
                        let message = match socket.answer(op).await {
                            Ok(result) => reply(id, result),
                            Err(e) => ServerMessage::Error { id, error: e },
                        };
                        queue(&out, &message, &closing, socket.config.send_timeout).await;
                        drop(permit);
                    });
                }
            }
        }
        // Dropping the tasks aborts them; the writer ends once every sender is gone.
        drop(tasks);
        drop(out);
    }

    fn who(&self) -> Result<Subject, RuntimeError> {
        (self.auth)(&self.service)
    }

    async fn answer(&self, op: Op) -> Result<Value, RuntimeError> {
        let s = &self.service;
        let who = self.who()?;
        let value = match op {
            Op::Submit { task } => to_value(&s.submit(&who, task).await?),
            Op::Get { task_id } => to_value(&s.get(&who, &task_id)?),
            Op::List { filter } => to_value(&s.list(&who, filter)?),
            Op::Events { task_id, after, limit } => {
                let limit = limit.unwrap_or(MAX_EVENTS_PAGE);
                if !(1..=MAX_EVENTS_PAGE).contains(&limit) {
                    return Err(RuntimeError::new(
                        ErrorCode::InvalidRequest,
                        format!("limit {limit} is not between 1 and {MAX_EVENTS_PAGE}"),
                    ));
                }
                to_value(&s.events(&who, &task_id, after, limit)?)
            }
            Op::Cancel { task_id } => {
                let cancelled = s.cancel(&who, &task_id)?;
                json!({ "cancelled": cancelled, "task": s.get(&who, &task_id)? })
            }
            Op::Abandon { task_id, reason } => {
                let (abandoned, task) = s.abandon(&who, &task_id, &reason)?;
                json!({ "abandoned": abandoned, "task": task })
            }
            Op::Respond { task_id, answer } => to_value(&s.respond(&who, &task_id, answer)?),
            Op::Pause { task_id } => to_value(&s.set_paused(&who, &task_id, true)?),
            Op::Resume { task_id } => to_value(&s.set_paused(&who, &task_id, false)?),
            Op::Skills => to_value(&s.skills(&who)?),
            Op::Agents => to_value(&s.agents(&who)?),
            Op::Status => to_value(&s.status(&who)),
            Op::Subscribe { .. } | Op::Unsubscribe { .. } => {
                return Err(RuntimeError::new(ErrorCode::Internal, "subscriptions are served by the socket"));
            }
        };
        Ok(value)
    }

    /// One subscription: the reply, then every event, then `end`.
    async fn follow(
        &self,
        id: Value,
        task_id: String,
        out: mpsc::Sender<Message>,
        closing: Closing,
        _slot: OwnedSemaphorePermit,
    ) {
        let timeout = self.config.send_timeout;
        let stream = match self.who() {
            Ok(who) => self.service.stream(&who, &task_id),
            Err(e) => Err(e),
        };
        let mut stream = match stream {
            Ok(stream) => Box::pin(stream),
            Err(e) => {
                queue(&out, &ServerMessage::Error { id, error: e }, &closing, timeout).await;
                return;
            }
        };
        if !queue(&out, &reply(id.clone(), json!({ "subscribed": task_id })), &closing, timeout).await {
            return;
        }
        // The session is checked again every second while the subscription
        // lives: a revoked or expired one ends it, saying why.
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
        loop {
            tokio::select! {
                next = stream.next() => {
                    let Some(event) = next else { break };
                    if !queue(&out, &ServerMessage::Event { subscription: id.clone(), event }, &closing, timeout).await {
                        return;
                    }
                }
                _ = recheck.tick() => {
                    if let Err(e) = self.who() {
                        queue(&out, &ServerMessage::End { subscription: id, error: Some(e) }, &closing, timeout).await;
                        return;
                    }
                }
            }
        }
        queue(&out, &ServerMessage::End { subscription: id, error: None }, &closing, timeout).await;
    }
}

fn to_value(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn reply(id: Value, result: Value) -> ServerMessage {
    ServerMessage::Result { id, result }
}

fn error(id: Value, code: ErrorCode, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error { id, error: RuntimeError::new(code, message) }
}

/// Hands a message to the writer; false (and the socket closing) when the
/// client has not taken messages for `timeout`, or the socket is gone.
async fn queue(out: &mpsc::Sender<Message>, message: &ServerMessage, closing: &Closing, timeout: Duration) -> bool {
    let text = serde_json::to_string(message).unwrap_or_default();
    match out.send_timeout(Message::text(text), timeout).await {
        Ok(()) => true,
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
            tracing::info!("a WebSocket client reads too slowly: disconnected");
            let _ = closing.send(Some(close_frame(CloseCode::Policy, "slow reader: messages were not taken in time")));
            false
        }
        Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
    }
}

/// Writes queued messages (a batch per flush) and pings; ends the socket on
/// a write that takes longer than the send timeout, or when asked to close.
async fn write_loop<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut queued: mpsc::Receiver<Message>,
    closing: Closing,
    mut closed: watch::Receiver<Option<CloseFrame>>,
    config: WsConfig,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + config.ping_interval, config.ping_interval);
    loop {
        let first = tokio::select! {
            m = queued.recv() => m,
            _ = ping.tick() => Some(Message::Ping(Default::default())),
            _ = closed.changed() => None,
        };
        let Some(first) = first else { break };
        let batch = async {
            sink.feed(first).await?;
            for _ in 0..64 {
                match queued.try_recv() {
                    Ok(m) => sink.feed(m).await?,
                    Err(_) => break,
                }
            }
            sink.flush().await
        };
        match tokio::time::timeout(config.send_timeout, batch).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "writing to the socket failed");
                let _ = closing.send(Some(close_frame(CloseCode::Error, "write failed")));
                return;
            }
            Err(_) => {
                tracing::info!("a WebSocket client reads too slowly: disconnected");
                let _ = closing.send(Some(close_frame(CloseCode::Policy, "slow reader")));
                return;
            }
        }
    }
    let frame = closed.borrow().clone();
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(frame))).await;
}
