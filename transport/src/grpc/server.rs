//! `coderclaw.v1.Runtime` on tonic, plus `grpc.health.v1.Health` and gRPC
//! server reflection (v1 and v1alpha), on a port of its own.
//!
//! Every call is authenticated from its `authorization: Bearer <token>`
//! metadata and its peer address by the same rule as REST
//! ([`crate::auth::authenticate`]) before any work, then goes through the
//! [`TaskService`]. Bounds: connections (one more is closed at once), the
//! TLS handshake time, streams per connection, the size of one request
//! (the REST body limit), and HTTP/2 keep-alive pings that drop dead
//! peers.

use super::convert::{event_to, filter_from, runtime_status_to, skill_to, submit_from, task_to};
use super::proto::runtime_server::{Runtime, RuntimeServer};
use super::{FILE_DESCRIPTOR_SET, proto, status_of};
use coderclaw_core::decision::Subject;
use coderclaw_core::task::RuntimeMode;
use coderclaw_net::RunningServer;
use coderclaw_net::endpoint::Connection;
use coderclaw_tasks::{ErrorCode, MAX_EVENTS_PAGE, RuntimeError, TaskService};
use futures_util::{Stream, StreamExt};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status};

/// How the gRPC server listens. Defaults: 127.0.0.1:7421, local-only, 1 MiB
/// requests, 1024 connections, 256 streams per connection, no TLS.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// local-only or remote-enabled.
    pub mode: RuntimeMode,
    /// Largest request message (RESOURCE_EXHAUSTED above).
    pub max_message_bytes: usize,
    /// Connections served at once; one more is closed at once.
    pub max_connections: usize,
    /// Concurrent calls (HTTP/2 streams) per connection.
    pub max_concurrent_streams: u32,
    /// PEM certificate chain and key: serve TLS (ALPN h2).
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7421)),
            mode: RuntimeMode::LocalOnly,
            max_message_bytes: 1 << 20,
            max_connections: 1024,
            max_concurrent_streams: 256,
            tls: None,
        }
    }
}

/// Largest reply message (a page of 1000 tasks with their outputs).
const MAX_REPLY_BYTES: usize = 64 << 20;

/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds and serves `service` over gRPC in the background.
pub async fn serve(
    service: Arc<TaskService>,
    config: GrpcConfig,
) -> Result<RunningServer, crate::http_server::ServerError> {
    use crate::http_server::ServerError;
    if config.mode == RuntimeMode::LocalOnly && !config.listen.ip().is_loopback() {
        return Err(ServerError::LocalOnlyBeyondLoopback(config.listen));
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(coderclaw_net::tls::acceptor_for(cert, key, &[b"h2"]).map_err(ServerError::Io)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServerError::Io(format!("cannot bind {}: {e}", config.listen)))?;
    let addr = listener.local_addr().map_err(|e| ServerError::Io(e.to_string()))?;
    let (running, mut stopped) = RunningServer::new(addr, tls.is_some());
    let (conns, incoming) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, config.max_connections, conns, stopped.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RuntimeServer<GrpcRuntime>>().await;
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| ServerError::Io(format!("gRPC reflection: {e}")))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| ServerError::Io(format!("gRPC reflection: {e}")))?;
    let runtime = RuntimeServer::new(GrpcRuntime { service, mode: config.mode })
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(MAX_REPLY_BYTES);
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(runtime);
    let incoming = futures_util::stream::unfold(incoming, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    tokio::spawn(async move {
        let stop = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::warn!(error = %e, "the gRPC server stopped");
        }
    });
    tracing::info!(%addr, max_connections = config.max_connections, "serving gRPC");
    Ok(running)
}

/// Accepts connections while under the cap, shakes hands (TLS) and hands
/// them to tonic with their slot.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
    conns: mpsc::Sender<Result<GrpcConnection, std::io::Error>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "gRPC connection closed: at the connection limit");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        let (tls, conns) = (tls.clone(), conns.clone());
        tokio::spawn(async move {
            let io: Box<dyn Connection> = match tls {
                None => Box::new(tcp),
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => Box::new(stream),
                    _ => {
                        tracing::debug!(%peer, "gRPC TLS handshake failed or timed out");
                        return;
                    }
                },
            };
            let first_byte = Some(Box::pin(tokio::time::sleep(HANDSHAKE_TIMEOUT)));
            let _ = conns
                .send(Ok(GrpcConnection {
                    io,
                    info: TcpConnectInfo { local_addr: local, remote_addr: Some(peer) },
                    first_byte,
                    preface_read: 0,
                    _slot: slot,
                }))
                .await;
        });
    }
}

/// A connection tonic serves, holding its slot until it closes.
struct GrpcConnection {
    io: Box<dyn Connection>,
    info: TcpConnectInfo,
    /// Until the client's HTTP/2 preface has arrived: a
    /// connection that says nothing gives its slot back when this fires,
    /// rather than holding it for ever (keepalive pings start only after
    /// the preface).
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes of the preface read so far: all of it must come in time, not
    /// just its first byte.
    preface_read: usize,
    _slot: OwnedSemaphorePermit,
}

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const HTTP2_PREFACE_BYTES: usize = 24;

impl Connected for GrpcConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for GrpcConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = &mut this.first_byte {
            match &read {
                Poll::Ready(Ok(())) => {
                    this.preface_read += buf.filled().len() - before;
                    if this.preface_read >= HTTP2_PREFACE_BYTES {
                        this.first_byte = None;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the handshake timeout",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl AsyncWrite for GrpcConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The `Runtime` service over the task service.
struct GrpcRuntime {
    service: Arc<TaskService>,
    mode: RuntimeMode,
}

fn token<T>(req: &Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = req.metadata().get("authorization") else { return Ok(None) };
    let text =
        value.to_str().map_err(|_| refuse(ErrorCode::Unauthenticated, "the authorization metadata is not text"))?;
    let token = text
        .strip_prefix("Bearer ")
        .ok_or_else(|| refuse(ErrorCode::Unauthenticated, "send the metadata `authorization: Bearer <token>`"))?;
    Ok(Some(token.trim().to_owned()))
}

fn refuse(code: ErrorCode, message: &str) -> Status {
    status_of(RuntimeError::new(code, message))
}

type Reply<T> = Result<Response<T>, Status>;

impl GrpcRuntime {
    fn who<T>(&self, req: &Request<T>) -> Result<Subject, Status> {
        let peer =
            req.remote_addr().ok_or_else(|| refuse(ErrorCode::Internal, "the connection has no peer address"))?;
        crate::auth::authenticate(&self.service, self.mode, peer, token(req)?.as_deref()).map_err(status_of)
    }
}

fn ok<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}

/// A task event stream as tonic sends it.
type EventStream = Pin<Box<dyn Stream<Item = Result<proto::TaskEvent, Status>> + Send>>;

/// A `RunTask` reply.
type RunStream = Pin<Box<dyn Stream<Item = Result<proto::RunTaskUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Runtime for GrpcRuntime {
    async fn submit_task(&self, req: Request<proto::SubmitTaskRequest>) -> Reply<proto::Task> {
        let who = self.who(&req)?;
        let submit = submit_from(req.into_inner()).map_err(status_of)?;
        ok(task_to(self.service.submit(&who, submit).await.map_err(status_of)?))
    }

    type RunTaskStream = RunStream;

    async fn run_task(&self, req: Request<proto::SubmitTaskRequest>) -> Reply<RunStream> {
        use futures_util::future::ready;
        use futures_util::stream::once;
        use proto::run_task_update::Update;
        let who = self.who(&req)?;
        // To authenticate again at the end, as a GetTask then would be.
        let (peer, bearer) = (req.remote_addr(), token(&req)?);
        let submit = submit_from(req.into_inner()).map_err(status_of)?;
        let task = self.service.submit(&who, submit).await.map_err(status_of)?;
        let id = task.id.clone();
        let accepted = once(ready(Ok(Update::Accepted(task_to(task)))));
        // Refused from here on (no task:read), the task still runs: the
        // client has its acknowledgement, then the refusal.
        let follow: Pin<Box<dyn Stream<Item = Result<Update, Status>> + Send>> = match self.service.stream(&who, &id) {
            Ok(events) => {
                let (service, mode) = (self.service.clone(), self.mode);
                let finished = once(async move {
                    // The session may have ended or lost task:read while the task ran.
                    let peer = peer.ok_or_else(|| refuse(ErrorCode::Internal, "the connection has no peer address"))?;
                    let who = crate::auth::authenticate(&service, mode, peer, bearer.as_deref()).map_err(status_of)?;
                    let task = service.get(&who, &id).map_err(status_of)?;
                    if !task.status.is_terminal() {
                        let early = "the task's stream ended before its final state: ask for it with GetTask";
                        return Err(refuse(ErrorCode::Unavailable, early));
                    }
                    Ok(Update::Finished(task_to(task)))
                });
                Box::pin(events.map(|e| Ok(Update::Event(event_to(e)))).chain(finished))
            }
            Err(e) => Box::pin(once(ready(Err(status_of(e))))),
        };
        ok(Box::pin(accepted.chain(follow).map(|u| u.map(|u| proto::RunTaskUpdate { update: Some(u) }))))
    }

    async fn get_task(&self, req: Request<proto::TaskRef>) -> Reply<proto::Task> {
        let who = self.who(&req)?;
        ok(task_to(self.service.get(&who, &req.get_ref().task_id).map_err(status_of)?))
    }

    async fn list_tasks(&self, req: Request<proto::ListTasksRequest>) -> Reply<proto::TaskList> {
        let who = self.who(&req)?;
        let filter = filter_from(req.into_inner()).map_err(status_of)?;
        let tasks = self.service.list(&who, filter).map_err(status_of)?;
        ok(proto::TaskList { tasks: tasks.into_iter().map(task_to).collect() })
    }

    type StreamTaskUpdatesStream = EventStream;

    async fn stream_task_updates(&self, req: Request<proto::TaskRef>) -> Reply<EventStream> {
        let who = self.who(&req)?;
        let stream = self.service.stream(&who, &req.get_ref().task_id).map_err(status_of)?;
        ok(Box::pin(stream.map(|e| Ok(event_to(e)))))
    }

    async fn get_task_events(&self, req: Request<proto::GetTaskEventsRequest>) -> Reply<proto::TaskEventPage> {
        let who = self.who(&req)?;
        let r = req.get_ref();
        let limit = if r.limit == 0 { MAX_EVENTS_PAGE } else { r.limit };
        if limit > MAX_EVENTS_PAGE {
            return Err(refuse(ErrorCode::InvalidRequest, &format!("limit {limit} is over {MAX_EVENTS_PAGE}")));
        }
        let events = self.service.events(&who, &r.task_id, r.after, limit).map_err(status_of)?;
        ok(proto::TaskEventPage { events: events.into_iter().map(event_to).collect() })
    }

    async fn cancel_task(&self, req: Request<proto::TaskRef>) -> Reply<proto::CancelTaskResponse> {
        let who = self.who(&req)?;
        let id = &req.get_ref().task_id;
        let cancelled = self.service.cancel(&who, id).map_err(status_of)?;
        let task = self.service.get(&who, id).map_err(status_of)?;
        ok(proto::CancelTaskResponse { cancelled, task: Some(task_to(task)) })
    }

    async fn abandon_task(&self, req: Request<proto::AbandonTaskRequest>) -> Reply<proto::AbandonTaskResponse> {
        let who = self.who(&req)?;
        let r = req.get_ref();
        let (abandoned, task) = self.service.abandon(&who, &r.task_id, &r.reason).map_err(status_of)?;
        ok(proto::AbandonTaskResponse { abandoned, task: Some(task_to(task)) })
    }

    async fn respond_to_task(&self, req: Request<proto::RespondRequest>) -> Reply<proto::Task> {
        let who = self.who(&req)?;
        let r = req.into_inner();
        ok(task_to(self.service.respond(&who, &r.task_id, r.answer).map_err(status_of)?))
    }

    async fn pause_task(&self, req: Request<proto::TaskRef>) -> Reply<proto::Task> {
        let who = self.who(&req)?;
        ok(task_to(self.service.set_paused(&who, &req.get_ref().task_id, true).map_err(status_of)?))
    }

    async fn resume_task(&self, req: Request<proto::TaskRef>) -> Reply<proto::Task> {
        let who = self.who(&req)?;
        ok(task_to(self.service.set_paused(&who, &req.get_ref().task_id, false).map_err(status_of)?))
    }

    async fn list_skills(&self, req: Request<proto::ListSkillsRequest>) -> Reply<proto::SkillList> {
        let who = self.who(&req)?;
        let skills = self.service.skills(&who).map_err(status_of)?;
        ok(proto::SkillList { skills: skills.into_iter().map(skill_to).collect() })
    }

    async fn list_agents(&self, req: Request<proto::ListSkillsRequest>) -> Reply<proto::SkillList> {
        let who = self.who(&req)?;
        let skills = self.service.agents(&who).map_err(status_of)?;
        ok(proto::SkillList { skills: skills.into_iter().map(skill_to).collect() })
    }

    async fn get_status(&self, req: Request<proto::GetStatusRequest>) -> Reply<proto::RuntimeStatus> {
        let who = self.who(&req)?;
        ok(runtime_status_to(self.service.status(&who)))
    }

    async fn upload_workspace(&self, req: Request<tonic::Streaming<proto::UploadChunk>>) -> Reply<proto::Upload> {
        let who = self.who(&req)?;
        let slot = self.service.begin_upload(&who).map_err(status_of)?;
        let limit = slot.max_bytes;
        let mut chunks = req.into_inner();
        let mut tar = bytes::BytesMut::new();
        let receive = async {
            while let Some(chunk) = chunks.message().await? {
                if (tar.len() + chunk.data.len()) as u64 > limit {
                    let size = coderclaw_core::units::format_size(limit);
                    return Err(status_of(RuntimeError::new(
                        ErrorCode::PayloadTooLarge,
                        format!("the snapshot is over this server's uploads.maxBytes ({size})"),
                    )));
                }
                tar.extend_from_slice(&chunk.data);
            }
            Ok(())
        };
        tokio::time::timeout(UPLOAD_TIME, receive).await.map_err(|_| {
            Status::deadline_exceeded(format!("an upload must arrive within {} s", UPLOAD_TIME.as_secs()))
        })??;
        let info = self.service.upload_workspace(&who, tar.freeze()).await.map_err(status_of)?;
        ok(proto::Upload { digest: info.digest, bytes: info.bytes, files: info.files })
    }
}

/// How long one upload may take to arrive.
const UPLOAD_TIME: Duration = Duration::from_secs(300);
