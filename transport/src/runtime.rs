//! The runtime interface of the product text, as a Rust trait, and its
//! in-process transport. [`crate::tasks::HttpTransport`] implements the
//! same trait over HTTP, so
//! `CoderClawRuntime::new(HttpTransport::new(url, token)?)` and
//! `CoderClawRuntime::new(LocalTransport::new(service, token))` are used
//! the same way.

use bytes::Bytes;
use coderclaw_core::task::{
    RuntimeStatus, SkillInfo, TaskFilter, TaskState, TaskSubmitRequest, TaskUpdateEvent, UploadInfo,
};
use coderclaw_tasks::{RuntimeError, TaskService};
use futures_util::{Stream, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A task's live events; ends after the final status.
pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<TaskUpdateEvent, RuntimeError>> + Send>>;

/// What [`Transport::run_task`] reports, in this order: the
/// acknowledgement (the task is durable), the task's events, its final
/// state.
#[derive(Debug, Clone)]
pub enum RunUpdate {
    /// Submitted and stored.
    Accepted(TaskState),
    /// One of the task's events.
    Event(TaskUpdateEvent),
    /// The final state; nothing follows.
    Finished(TaskState),
}

/// A task run from submission to its final state.
pub type RunStream<'a> = Pin<Box<dyn Stream<Item = Result<RunUpdate, RuntimeError>> + Send + 'a>>;

/// What a runtime call returns.
pub type RuntimeFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RuntimeError>> + Send + 'a>>;

/// What a runtime offers, whatever carries it. Object-safe: a client can
/// hold an `Arc<dyn Transport>` and not care which transport it is.
pub trait Transport: Send + Sync {
    /// Submits a task; it is durable when this returns.
    fn submit_task<'a>(&'a self, req: TaskSubmitRequest) -> RuntimeFuture<'a, TaskState>;
    /// A task's state; `None` when there is no such task for this session.
    fn get_task_state<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, Option<TaskState>>;
    /// A task's events from the first, live until it finishes.
    fn stream_task_updates<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, UpdateStream>;
    /// Cancels a task; false when it had already finished.
    fn cancel_task<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, bool>;
    /// Gives up a task this session submitted, saying why (the submitting
    /// command was interrupted); needs no `task:cancel`, only the same
    /// session, and is audited as `task.abandon`. False when it had
    /// already finished.
    fn abandon_task<'a>(&'a self, id: &'a str, reason: &'a str) -> RuntimeFuture<'a, bool>;
    /// Tasks matching `filter`, newest first.
    fn list_tasks<'a>(&'a self, filter: TaskFilter) -> RuntimeFuture<'a, Vec<TaskState>>;
    /// A page of a task's history: events after seq `after`, at most
    /// `limit` (the server caps it at 1000). An empty page is the end.
    fn get_task_events<'a>(&'a self, id: &'a str, after: u64, limit: u32) -> RuntimeFuture<'a, Vec<TaskUpdateEvent>>;
    /// Answers a WAITING task's input request.
    fn respond<'a>(&'a self, id: &'a str, answer: &'a str) -> RuntimeFuture<'a, TaskState>;
    /// Installed agents.
    fn list_agents<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>>;
    /// Installed skills.
    fn list_skills<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>>;
    /// Health and load.
    fn get_status<'a>(&'a self) -> RuntimeFuture<'a, RuntimeStatus>;
    /// Holds a PENDING task in the queue (true) or releases it (false).
    fn set_paused<'a>(&'a self, id: &'a str, paused: bool) -> RuntimeFuture<'a, TaskState>;
    /// Sends a snapshot of a directory (an uncompressed tar) that a
    /// submission can then name as its workspace
    /// (`WorkspaceRef::Upload(info.digest)`).
    fn upload_workspace<'a>(&'a self, tar: Bytes) -> RuntimeFuture<'a, UploadInfo>;
    /// Submits a task and follows it to its end: [`RunUpdate::Accepted`],
    /// then its events, then [`RunUpdate::Finished`]. Needs `task:read`
    /// beside `task:submit`, as streaming does; without it the stream
    /// ends with that refusal after `Accepted`. Dropping the stream does
    /// not stop the task (so a client can detach): give it up with
    /// [`Transport::abandon_task`]. By default three calls (submit,
    /// stream, state); gRPC does it in one.
    fn run_task<'a>(&'a self, req: TaskSubmitRequest) -> RunStream<'a> {
        run_in_three_calls(self, req)
    }
}

/// [`Transport::run_task`] as submit, stream, then get the final state.
pub(crate) fn run_in_three_calls<'a, T: Transport + ?Sized>(transport: &'a T, req: TaskSubmitRequest) -> RunStream<'a> {
    enum Step {
        Submit(TaskSubmitRequest),
        Open(String),
        Follow(String, UpdateStream),
        Done,
    }
    let stream = futures_util::stream::unfold(Step::Submit(req), move |step| async move {
        let (id, mut events) = match step {
            Step::Submit(req) => {
                return Some(match transport.submit_task(req).await {
                    Ok(task) => {
                        let id = task.id.clone();
                        (Ok(RunUpdate::Accepted(task)), Step::Open(id))
                    }
                    Err(e) => (Err(e), Step::Done),
                });
            }
            Step::Open(id) => match transport.stream_task_updates(&id).await {
                Ok(events) => (id, events),
                Err(e) => return Some((Err(e), Step::Done)),
            },
            Step::Follow(id, events) => (id, events),
            Step::Done => return None,
        };
        Some(match events.next().await {
            Some(Ok(e)) => (Ok(RunUpdate::Event(e)), Step::Follow(id, events)),
            Some(Err(e)) => (Err(e), Step::Done),
            None => match transport.get_task_state(&id).await {
                Ok(Some(task)) if task.status.is_terminal() => (Ok(RunUpdate::Finished(task)), Step::Done),
                Ok(Some(_)) => {
                    let early = format!("task {id}'s stream ended before its final state: ask for its state again");
                    (Err(RuntimeError::new(coderclaw_tasks::ErrorCode::Unavailable, early)), Step::Done)
                }
                Ok(None) => {
                    (Err(RuntimeError::new(coderclaw_tasks::ErrorCode::NotFound, format!("no task {id}"))), Step::Done)
                }
                Err(e) => (Err(e), Step::Done),
            },
        })
    });
    Box::pin(stream)
}

/// A client's connection failure as a runtime error: a URL that cannot be
/// used is the caller's `invalid_request`, anything else `unavailable`.
pub(crate) fn client_error(e: coderclaw_net::ClientError) -> RuntimeError {
    let code = match e {
        coderclaw_net::ClientError::BadUrl { .. } => coderclaw_tasks::ErrorCode::InvalidRequest,
        _ => coderclaw_tasks::ErrorCode::Unavailable,
    };
    RuntimeError::new(code, e.to_string())
}

/// The transport a URL names: `http://`/`https://` (REST + SSE),
/// `ws://`/`wss://` (WebSocket) or `grpc://`/`grpcs://` (gRPC), acting with
/// session `token`; `ca` is an extra PEM CA trusted for TLS.
pub fn connect(
    url: &str,
    token: Option<String>,
    ca: Option<&std::path::Path>,
) -> Result<Arc<dyn Transport>, RuntimeError> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    Ok(match scheme {
        "http" | "https" => Arc::new(crate::HttpTransport::with_ca(url, token, ca)?),
        "ws" | "wss" => Arc::new(crate::WsTransport::new(url, token, ca)?),
        "grpc" | "grpcs" => Arc::new(crate::GrpcTransport::new(url, token, ca)?),
        _ => {
            return Err(RuntimeError::new(
                coderclaw_tasks::ErrorCode::InvalidRequest,
                format!("`{url}`: use an http(s)://, ws(s):// or grpc(s):// URL"),
            ));
        }
    })
}

/// A shared or boxed transport is one too, so `CoderClawRuntime<Arc<dyn
/// Transport>>` holds whichever transport a URL named.
macro_rules! forward_transport {
    ($($ptr:ident),*) => {$(
        impl<T: Transport + ?Sized> Transport for $ptr<T> {
            fn submit_task<'a>(&'a self, req: TaskSubmitRequest) -> RuntimeFuture<'a, TaskState> {
                (**self).submit_task(req)
            }
            fn get_task_state<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, Option<TaskState>> {
                (**self).get_task_state(id)
            }
            fn stream_task_updates<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, UpdateStream> {
                (**self).stream_task_updates(id)
            }
            fn cancel_task<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, bool> {
                (**self).cancel_task(id)
            }
            fn abandon_task<'a>(&'a self, id: &'a str, reason: &'a str) -> RuntimeFuture<'a, bool> {
                (**self).abandon_task(id, reason)
            }
            fn list_tasks<'a>(&'a self, filter: TaskFilter) -> RuntimeFuture<'a, Vec<TaskState>> {
                (**self).list_tasks(filter)
            }
            fn get_task_events<'a>(&'a self, id: &'a str, after: u64, limit: u32) -> RuntimeFuture<'a, Vec<TaskUpdateEvent>> {
                (**self).get_task_events(id, after, limit)
            }
            fn respond<'a>(&'a self, id: &'a str, answer: &'a str) -> RuntimeFuture<'a, TaskState> {
                (**self).respond(id, answer)
            }
            fn list_agents<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>> {
                (**self).list_agents()
            }
            fn list_skills<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>> {
                (**self).list_skills()
            }
            fn get_status<'a>(&'a self) -> RuntimeFuture<'a, RuntimeStatus> {
                (**self).get_status()
            }
            fn set_paused<'a>(&'a self, id: &'a str, paused: bool) -> RuntimeFuture<'a, TaskState> {
                (**self).set_paused(id, paused)
            }
            fn upload_workspace<'a>(&'a self, tar: Bytes) -> RuntimeFuture<'a, UploadInfo> {
                (**self).upload_workspace(tar)
            }
            fn run_task<'a>(&'a self, req: TaskSubmitRequest) -> RunStream<'a> {
                (**self).run_task(req)
            }
        }
    )*};
}

forward_transport!(Arc, Box);

/// The runtime a client holds: a transport plus conveniences.
pub struct CoderClawRuntime<T: Transport> {
    transport: T,
}

impl<T: Transport> CoderClawRuntime<T> {
    /// A runtime over `transport`.
    pub fn new(transport: T) -> Self {
        Self { transport }
    }

    /// Submits a task.
    pub async fn submit_task(&self, req: TaskSubmitRequest) -> Result<TaskState, RuntimeError> {
        self.transport.submit_task(req).await
    }

    /// A task's state.
    pub async fn get_task_state(&self, id: &str) -> Result<Option<TaskState>, RuntimeError> {
        self.transport.get_task_state(id).await
    }

    /// A task's events, live until it finishes.
    pub async fn stream_task_updates(&self, id: &str) -> Result<UpdateStream, RuntimeError> {
        self.transport.stream_task_updates(id).await
    }

    /// Cancels a task.
    pub async fn cancel_task(&self, id: &str) -> Result<bool, RuntimeError> {
        self.transport.cancel_task(id).await
    }

    /// Gives up a task this session submitted (see [`Transport::abandon_task`]).
    pub async fn abandon_task(&self, id: &str, reason: &str) -> Result<bool, RuntimeError> {
        self.transport.abandon_task(id, reason).await
    }

    /// Tasks matching `filter`.
    pub async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<TaskState>, RuntimeError> {
        self.transport.list_tasks(filter).await
    }

    /// A page of a task's history (see [`Transport::get_task_events`]).
    pub async fn get_task_events(
        &self,
        id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<TaskUpdateEvent>, RuntimeError> {
        self.transport.get_task_events(id, after, limit).await
    }

    /// Answers a WAITING task.
    pub async fn respond(&self, id: &str, answer: &str) -> Result<TaskState, RuntimeError> {
        self.transport.respond(id, answer).await
    }

    /// Installed agents.
    pub async fn list_agents(&self) -> Result<Vec<SkillInfo>, RuntimeError> {
        self.transport.list_agents().await
    }

    /// Installed skills.
    pub async fn list_skills(&self) -> Result<Vec<SkillInfo>, RuntimeError> {
        self.transport.list_skills().await
    }

    /// Health and load.
    pub async fn get_status(&self) -> Result<RuntimeStatus, RuntimeError> {
        self.transport.get_status().await
    }

    /// Sends a directory snapshot (an uncompressed tar, e.g. from
    /// `coderclaw::snapshot::snapshot`) for a submission to name as its
    /// workspace.
    pub async fn upload_workspace(&self, tar: Bytes) -> Result<UploadInfo, RuntimeError> {
        self.transport.upload_workspace(tar).await
    }

    /// Holds a PENDING task in the queue.
    pub async fn pause_task(&self, id: &str) -> Result<TaskState, RuntimeError> {
        self.transport.set_paused(id, true).await
    }

    /// Releases a paused task.
    pub async fn resume_task(&self, id: &str) -> Result<TaskState, RuntimeError> {
        self.transport.set_paused(id, false).await
    }

    /// Submits a task and follows it to its end (see
    /// [`Transport::run_task`]).
    pub fn run_task(&self, req: TaskSubmitRequest) -> RunStream<'_> {
        self.transport.run_task(req)
    }

    /// Follows the task's stream to its final status (calling `each` on
    /// every event) and returns the final state.
    pub async fn wait(&self, id: &str, mut each: impl FnMut(&TaskUpdateEvent)) -> Result<TaskState, RuntimeError> {
        let mut stream = self.transport.stream_task_updates(id).await?;
        while let Some(e) = stream.next().await {
            each(&e?);
        }
        self.transport
            .get_task_state(id)
            .await?
            .ok_or_else(|| RuntimeError::new(coderclaw_tasks::ErrorCode::NotFound, format!("no task {id}")))
    }
}

/// The in-process transport: calls the task service directly, as the
/// holder of `token` (or the local owner without one).
#[derive(Clone)]
pub struct LocalTransport {
    service: Arc<TaskService>,
    token: Option<String>,
}

impl LocalTransport {
    /// Acts on `service` with session `token`.
    pub fn new(service: Arc<TaskService>, token: Option<String>) -> Self {
        Self { service, token }
    }

    fn who(&self) -> Result<coderclaw_core::decision::Subject, RuntimeError> {
        self.service.authenticate(self.token.as_deref())
    }
}

impl Transport for LocalTransport {
    fn submit_task<'a>(&'a self, req: TaskSubmitRequest) -> RuntimeFuture<'a, TaskState> {
        Box::pin(async move {
            let who = self.who()?;
            self.service.submit(&who, req).await
        })
    }

    fn get_task_state<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, Option<TaskState>> {
        Box::pin(async move {
            match self.service.get(&self.who()?, id) {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.code == coderclaw_tasks::ErrorCode::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn stream_task_updates<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, UpdateStream> {
        Box::pin(async move {
            let stream = self.service.stream(&self.who()?, id)?;
            Ok(Box::pin(stream.map(Ok)) as UpdateStream)
        })
    }

    fn cancel_task<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, bool> {
        Box::pin(async move { self.service.cancel(&self.who()?, id) })
    }

    fn abandon_task<'a>(&'a self, id: &'a str, reason: &'a str) -> RuntimeFuture<'a, bool> {
        Box::pin(async move { Ok(self.service.abandon(&self.who()?, id, reason)?.0) })
    }

    fn list_tasks<'a>(&'a self, filter: TaskFilter) -> RuntimeFuture<'a, Vec<TaskState>> {
        Box::pin(async move { self.service.list(&self.who()?, filter) })
    }

    fn get_task_events<'a>(&'a self, id: &'a str, after: u64, limit: u32) -> RuntimeFuture<'a, Vec<TaskUpdateEvent>> {
        Box::pin(async move { self.service.events(&self.who()?, id, after, limit) })
    }

    fn respond<'a>(&'a self, id: &'a str, answer: &'a str) -> RuntimeFuture<'a, TaskState> {
        Box::pin(async move { self.service.respond(&self.who()?, id, answer.to_owned()) })
    }

    fn list_agents<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>> {
        Box::pin(async move { self.service.agents(&self.who()?) })
    }

    fn list_skills<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>> {
        Box::pin(async move { self.service.skills(&self.who()?) })
    }

    fn get_status<'a>(&'a self) -> RuntimeFuture<'a, RuntimeStatus> {
        Box::pin(async move { Ok(self.service.status(&self.who()?)) })
    }

    fn set_paused<'a>(&'a self, id: &'a str, paused: bool) -> RuntimeFuture<'a, TaskState> {
        Box::pin(async move { self.service.set_paused(&self.who()?, id, paused) })
    }

    fn upload_workspace<'a>(&'a self, tar: Bytes) -> RuntimeFuture<'a, UploadInfo> {
        Box::pin(async move {
            let who = self.who()?;
            let slot = self.service.begin_upload(&who)?;
            let limit = slot.max_bytes;
            if tar.len() as u64 > limit {
                return Err(RuntimeError::new(
                    coderclaw_tasks::ErrorCode::PayloadTooLarge,
                    format!("the snapshot is over uploads.maxBytes ({limit} bytes)"),
                ));
            }
            self.service.upload_workspace(&who, tar).await
        })
    }
}
