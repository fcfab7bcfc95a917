//! The task engine: durable submissions, a fair queue with a concurrency
//! limit, the lifecycle state machine, cancellation that stops work,
//! WAITING for input, restart recovery and per-task event streams.
//!
//! Every live (not yet final) task has an in-memory entry; every change to
//! it is checked against the state machine under one lock and queued to the
//! store in the same critical section, so a task's events are stored and
//! streamed in exactly the order they happened. An entry leaves memory once
//! its final event is on disk.

use crate::hub::{Hub, StreamState, next_event};
use crate::live::{Finished, Live, LiveTasks, input_bytes};
use crate::queue::Queue;
use crate::run::TaskRun;
use crate::store::{OnCommit, SqliteTaskStore, StoreError, StoredTask, TaskStore, Write};
use coderclaw_core::clock::now_ms;
use coderclaw_core::decision::{Decision, Subject};
use coderclaw_core::principal::Principal;
use coderclaw_core::task::{
    FailureCode, IllegalTransition, RuntimeMode, RuntimeStatus, SkillInfo, TaskEventKind, TaskFailure, TaskFilter,
    TaskState, TaskStatus, TaskSubmitRequest, TaskTarget, TaskUpdateEvent, UploadInfo, WorkspaceRef,
};
use coderclaw_core::task_link::BoxFuture;
use coderclaw_security::audit::{AuditEvent, AuditResult};
use futures_util::{FutureExt, Stream};
use serde_json::{Value, json};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::Instrument;

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No task with this id (or none this caller may see).
    #[error("no task {0}")]
    NotFound(String),
    /// The state machine does not allow the change.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// The request is malformed; the text says what to fix.
    #[error("{0}")]
    Invalid(String),
    /// The task's state does not allow this now (e.g. answering a task
    /// that is not WAITING, pausing one that already started).
    #[error("{0}")]
    Conflict(String),
    /// The submission could not be made durable; it was not acknowledged.
    #[error("the task was not stored: {0}")]
    NotStored(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The session holds as many unfinished tasks (or input bytes) as the
    /// engine allows one session.
    #[error("{0}")]
    Quota(String),
    /// The engine is shutting down and takes no new tasks.
    #[error("the server is shutting down and takes no new tasks: submit again once it is back")]
    ShuttingDown,
}

/// What [`TaskEngine::shutdown`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Started tasks that ended on their own within the grace period.
    pub finished: usize,
    /// Tasks still running at its end that were CANCELLED.
    pub cancelled: Vec<String>,
    /// Resumable tasks still running at its end: stopped, left unfinished,
    /// re-run from the start when the engine opens again.
    pub requeued: Vec<String>,
    /// Queued (PENDING) tasks, kept for the next start.
    pub queued: usize,
}

/// How long a shutdown waits, after the grace period, for outcomes being
/// recorded and cancellations to reach the disk.
const SHUTDOWN_SETTLE: Duration = Duration::from_secs(10);

/// How the engine runs. Defaults: 10 tasks at once, 10 minutes per task,
/// local-only, queued tasks started.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Start queued tasks. False gives an engine that answers queries,
    /// records cancellations and recovers after a crash but starts nothing:
    /// for a short-lived tool that only looks (`coderclaw task list`), so
    /// it does not begin runs it would abandon when it exits.
    pub run_queue: bool,
    /// Tasks in PLANNING, RUNNING or WAITING at once; the rest queue.
    pub max_concurrent_tasks: u32,
    /// A task still running after this long is FAILED.
    pub task_timeout: Duration,
    /// Reported by [`TaskEngine::status`].
    pub mode: RuntimeMode,
    /// Log, progress and capability events one task may store; past this
    /// (or [`EngineConfig::max_event_bytes_per_task`]) they are counted and
    /// dropped, and the task's history says how many ("truncated").
    pub max_events_per_task: u64,
    /// Bytes of event messages one task may store.
    pub max_event_bytes_per_task: u64,
    /// Unfinished tasks (queued, running, waiting, paused) one session may
    /// hold; a submission over it is refused.
    pub max_unfinished_per_session: usize,
    /// Bytes of input the unfinished tasks of one session may hold.
    pub max_input_bytes_per_session: u64,
    /// A task paused or WAITING for input longer than this fails with
    /// failure code `expired`.
    pub idle_expiry: Duration,
}

/// Longest message one event keeps.
pub const MAX_EVENT_MESSAGE_BYTES: usize = 16 * 1024;
/// Most events one page of a task's history holds.
pub const MAX_EVENTS_PAGE: u32 = 1000;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            run_queue: true,
            max_concurrent_tasks: 10,
            task_timeout: Duration::from_secs(600),
            mode: RuntimeMode::LocalOnly,
            max_events_per_task: 10_000,
            max_event_bytes_per_task: 4 << 20,
            max_unfinished_per_session: 1000,
            max_input_bytes_per_session: 64 << 20,
            idle_expiry: Duration::from_secs(3600),
        }
    }
}

/// Runs what tasks ask for. The engine owns the lifecycle; the executor
/// resolves, authorises and runs.
pub trait TaskExecutor: Send + Sync + 'static {
    /// Whether `target` may be re-run from the start after a host restart.
    fn resumable(&self, target: &TaskTarget) -> bool;
    /// Runs `task`, which is PLANNING: resolve and authorise it, call
    /// [`TaskRun::running`] when execution starts, return the JSON output or
    /// why it failed.
    fn execute(&self, task: TaskState, run: TaskRun) -> BoxFuture<Result<Value, TaskFailure>>;
    /// What can be run.
    fn skills(&self) -> Vec<SkillInfo>;
    /// Organisation-required skills that are not installed.
    fn missing_required_skills(&self) -> Vec<String> {
        Vec::new()
    }
    /// Policy files kept at their last good version, and why.
    fn policy_warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// What running installed `id` as `subject` would be decided now,
    /// unrecorded; `None` when this executor cannot tell.
    fn preview(&self, subject: &Subject, id: &str) -> Option<Result<Decision, String>> {
        let _ = (subject, id);
        None
    }
    /// Whether `who` may run a task in `workspace` (checked at submission,
    /// before the task is stored). By default no workspace can be named.
    fn admit_workspace(&self, who: &Subject, workspace: &WorkspaceRef) -> Result<(), crate::RuntimeError> {
        let _ = who;
        Err(crate::RuntimeError::new(
            crate::ErrorCode::InvalidRequest,
            format!("this runtime offers no named workspaces or uploads: leave out `workspace` ({workspace})"),
        ))
    }
    /// Keeps `tar` as a workspace snapshot of `user`'s, on the blocking
    /// pool. By default uploads are refused.
    fn upload_workspace(&self, user: &str, tar: bytes::Bytes) -> BoxFuture<Result<UploadInfo, crate::RuntimeError>> {
        let _ = (user, tar);
        Box::pin(std::future::ready(Err(crate::RuntimeError::new(
            crate::ErrorCode::InvalidRequest,
            "this runtime does not take workspace uploads",
        ))))
    }
    /// The last unfinished task of `user` naming `workspace` finished (its
    /// final state is on disk): an upload can go. On the blocking pool.
    fn release_workspace(&self, user: &str, workspace: &WorkspaceRef) {
        let _ = (user, workspace);
    }
    /// Periodic housekeeping, on the blocking pool: `in_use` is what
    /// unfinished tasks name (with their user); anything else this executor
    /// keeps may go.
    fn sweep_workspaces(&self, in_use: &std::collections::HashSet<(String, WorkspaceRef)>) {
        let _ = in_use;
    }
}

/// Records engine-level audit events (task outcomes, recovery): queues the
/// record at once, in order; the future resolves once it is on disk, or
/// with why it could not be written.
pub type AuditHook = Arc<dyn Fn(AuditEvent) -> BoxFuture<Result<(), String>> + Send + Sync>;

/// Who a submission belongs to.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The session, and where the submission came from.
    pub principal: Principal,
    /// The session's user.
    pub user: String,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct TaskEngine {
    inner: Arc<Inner>,
}

/// The engine's shared state; [`TaskRun`] and open streams hold it too (the
/// writer's commit hook and the dispatcher only weakly).
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn TaskStore>,
    pub(crate) executor: Arc<dyn TaskExecutor>,
    pub(crate) config: EngineConfig,
    audit: Option<AuditHook>,
    live: Mutex<LiveTasks>,
    /// The tasks that finished last, as stored.
    finished: Mutex<Finished>,
    queue: Mutex<Queue>,
    pub(crate) wake: Notify,
    pub(crate) slots: Arc<Semaphore>,
    /// Tasks answered after WAITING (which gave up their slot), served
    /// before the queue.
    pub(crate) resumes: Mutex<std::collections::VecDeque<oneshot::Sender<OwnedSemaphorePermit>>>,
    pub(crate) hub: Arc<Hub>,
    started: Instant,
    /// Where work leaves the store's writer thread for.
    pub(crate) runtime: tokio::runtime::Handle,
    /// Shutting down: no submissions, no queued task started.
    draining: std::sync::atomic::AtomicBool,
    /// Cluster side: claims under way, the cluster left, streams to feed.
    pub(crate) node: crate::cluster::NodeState,
}

impl TaskEngine {
    /// Opens the task store in `dir`, recovers what a previous process
    /// left unfinished and starts the scheduler. Needs a tokio runtime.
    ///
    /// Recovery: PENDING tasks run; PLANNING, RUNNING and WAITING tasks are
    /// re-run from the start when their skill is resumable, and FAILED with
    /// `host restarted` otherwise.
    pub fn open(
        dir: &Path,
        executor: Arc<dyn TaskExecutor>,
        config: EngineConfig,
        audit: Option<AuditHook>,
    ) -> Result<TaskEngine, EngineError> {
        let open_store = |on_commit| Ok(SqliteTaskStore::open(dir, on_commit)? as Arc<dyn TaskStore>);
        TaskEngine::open_on(open_store, executor, config, audit)
    }

    /// [`TaskEngine::open`] on another [`TaskStore`]: `open_store` gets the
    /// hook its writer must call with each committed batch's events.
    pub fn open_on(
        open_store: impl FnOnce(Arc<OnCommit>) -> Result<Arc<dyn TaskStore>, StoreError>,
        executor: Arc<dyn TaskExecutor>,
        config: EngineConfig,
        audit: Option<AuditHook>,
    ) -> Result<TaskEngine, EngineError> {
        let hub = Arc::new(Hub::default());
        // The writer needs the engine (to forget finished tasks) and the
        // engine needs the store: the writer gets a slot filled below.
        let weak_slot: Arc<OnceLock<Weak<Inner>>> = Arc::new(OnceLock::new());
        let on_commit = {
            let weak_slot = weak_slot.clone();
            let hub = hub.clone();
            Arc::new(move |events: Vec<TaskUpdateEvent>, fenced: Vec<String>| {
                if let Some(inner) = weak_slot.get().and_then(Weak::upgrade) {
                    inner.committed(&events);
                    inner.fenced(&fenced);
                }
                hub.publish(events);
            })
        };
        let store = open_store(on_commit)?;
        let slots = Arc::new(Semaphore::new(config.max_concurrent_tasks.max(1) as usize));
        let run_queue = config.run_queue;
        let inner = Arc::new(Inner {
            store,
            executor,
            config,
            audit,
            live: Mutex::default(),
            finished: Mutex::default(),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            slots,
            resumes: Mutex::default(),
            hub,
            started: Instant::now(),
            runtime: tokio::runtime::Handle::current(),
            draining: Default::default(),
            node: Default::default(),
        });
        let _ = weak_slot.set(Arc::downgrade(&inner));
        match inner.store.cluster() {
            // A node recovers nothing itself: what it held before is
            // reclaimed as it joins, the queue is the cluster's.
            Some(cluster) => {
                let reclaimed = cluster.join(inner.config.max_concurrent_tasks)?;
                inner.reclaimed(reclaimed);
                let notices = cluster.notices();
                crate::cluster::start(&inner, notices, run_queue);
            }
            None => {
                inner.recover()?;
                if run_queue {
                    tokio::spawn(dispatch(Arc::downgrade(&inner)));
                }
            }
        }
        tokio::spawn(expire_idle(Arc::downgrade(&inner)));
        Ok(TaskEngine { inner })
    }

    /// Accepts a task: it is on disk before this returns.
    pub async fn submit(&self, req: TaskSubmitRequest, owner: &Owner) -> Result<TaskState, EngineError> {
        if self.inner.is_draining() {
            return Err(EngineError::ShuttingDown);
        }
        let target = req.target().map_err(EngineError::Invalid)?;
        let session_id = owner.principal.key.to_stored();
        if let Some(s) = &req.session_id
            && s != &session_id
        {
            return Err(EngineError::Invalid(format!(
                "sessionId `{s}` is not the session you are authenticated as: leave it out"
            )));
        }
        let resumable = self.inner.executor.resumable(&target);
        let state = TaskState {
            id: uuid::Uuid::new_v4().to_string(),
            description: req.description,
            status: TaskStatus::Pending,
            target,
            input: req.input,
            session_id,
            user: owner.user.clone(),
            remote: owner.principal.is_remote(),
            parent_task_id: req.parent_task_id,
            metadata: req.metadata,
            paused: req.paused,
            workspace: req.workspace,
            progress: None,
            prompt: None,
            output: None,
            error: None,
            created_at_ms: now_ms(),
            started_at_ms: None,
            completed_at_ms: None,
        };
        let id = state.id.clone();
        let event = event(&state, 1, TaskEventKind::Submitted, state.description.clone(), None);
        let stored = StoredTask { state: state.clone(), resumable, last_seq: 1, lease: Default::default() };
        if self.inner.store.cluster().is_some() {
            // Any node claims it; this one only stores it. The load is
            // read on the blocking pool; unreadable, nothing is stored (503).
            let (store, session) = (self.inner.store.clone(), state.session_id.clone());
            let load = tokio::task::spawn_blocking(move || store.cluster().map(|c| c.session_load(&session)))
                .await
                .map_err(|e| EngineError::NotStored(e.to_string()))?;
            let (count, bytes) = match load {
                Some(Ok(load)) => load,
                Some(Err(e)) => return Err(EngineError::NotStored(e.to_string())),
                None => return Err(EngineError::NotStored("the task store left the cluster".into())),
            };
            self.inner.check_quota(count as usize, bytes, &state)?;
            let ack = self.inner.store.queue_durable(Write::Task { task: Box::new(stored), event: Some(event) })?;
            let durable = ack
                .instrument(tracing::debug_span!("persist"))
                .await
                .unwrap_or_else(|_| Err("the task store's writer stopped".into()));
            return durable.map(|()| state).map_err(EngineError::NotStored);
        }
        let ack = {
            let mut live = self.inner.lock_live();
            let load = live.load(&state.session_id);
            self.inner.check_quota(load.tasks, load.input_bytes, &state)?;
            let ack =
                self.inner.store.queue_durable(Write::Task { task: Box::new(stored.clone()), event: Some(event) })?;
            live.insert(id.clone(), Live::submitted(stored));
            ack
        };
        let durable = ack
            .instrument(tracing::debug_span!("persist"))
            .await
            .unwrap_or_else(|_| Err("the task store's writer stopped".into()));
        if let Err(e) = durable {
            self.inner.lock_live().remove(&id);
            return Err(EngineError::NotStored(e));
        }
        if !state.paused {
            self.inner.enqueue(&state.session_id, id);
        }
        Ok(state)
    }

    /// What runs the tasks.
    pub(crate) fn executor(&self) -> &Arc<dyn TaskExecutor> {
        &self.inner.executor
    }

    /// A task's current state.
    pub fn get(&self, id: &str) -> Result<TaskState, EngineError> {
        self.inner.get(id).map(|t| t.state)
    }

    /// Tasks matching `filter`, newest first.
    pub fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskState>, EngineError> {
        let stored = self.inner.store.list(filter)?;
        let live = self.inner.lock_live();
        // Prefer the in-memory state: it may be ahead of the last commit.
        Ok(stored
            .into_iter()
            .map(|t| live.get(&t.state.id).map_or(t.state, |l| l.task.state.clone()))
            .filter(|t| filter.status.is_none_or(|s| s == t.status))
            .collect())
    }

    /// A page of a task's history: events with seq > `after`, in order,
    /// at most `limit` (capped at [`MAX_EVENTS_PAGE`]).
    pub fn events(&self, id: &str, after: u64, limit: u32) -> Result<Vec<TaskUpdateEvent>, EngineError> {
        self.inner.get(id)?;
        Ok(self.inner.store.events(id, after, limit.clamp(1, MAX_EVENTS_PAGE))?)
    }

    /// The task's events from the first, live until it reaches a final
    /// status; then the stream ends. Only committed events are streamed.
    pub fn stream(&self, id: &str) -> Result<impl Stream<Item = TaskUpdateEvent> + Send + 'static, EngineError> {
        self.stream_after(id, 0)
    }

    /// [`TaskEngine::stream`] from the event after seq `after` (a client
    /// resuming a stream, e.g. with SSE's `Last-Event-ID`).
    pub fn stream_after(
        &self,
        id: &str,
        after: u64,
    ) -> Result<impl Stream<Item = TaskUpdateEvent> + Send + 'static, EngineError> {
        let rx = self.inner.hub.subscribe(id);
        let task = self.inner.get(id)?;
        // Read after subscribing: whatever commits in between comes twice
        // and is dropped by seq. From the store bounded by the per-task
        // event budget.
        let backlog: std::collections::VecDeque<TaskUpdateEvent> = match self.inner.history(id) {
            Some(events) => events.into_iter().filter(|e| e.seq > after).collect(),
            None => self.inner.store.events(id, after, u32::MAX)?.into(),
        };
        // Finished, and the client has everything (a reconnect after the
        // final event): nothing more will come.
        // (A live task's final state may not be on disk yet: it streams on.)
        let done = task.state.status.is_terminal() && backlog.is_empty() && !self.inner.lock_live().contains(id);
        let state = StreamState {
            _engine: self.inner.clone(),
            hub: self.inner.hub.clone(),
            store: self.inner.store.clone(),
            id: id.to_owned(),
            rx: Some(rx),
            backlog,
            last: after,
            done,
        };
        Ok(futures_util::stream::unfold(state, next_event))
    }

    /// Stops for good, losing nothing: takes no more submissions and
    /// starts no queued task (an answered WAITING task still gets its slot
    /// back); lets started tasks end within `grace`, or until `hurry`
    /// resolves (a second signal); then stops the rest, resumable ones
    /// left unfinished so the next start re-runs them, the others
    /// CANCELLED saying why; and returns once all of it is on disk.
    pub async fn shutdown(
        &self,
        grace: Duration,
        hurry: impl std::future::Future<Output = ()>,
    ) -> Result<ShutdownReport, EngineError> {
        let inner = &self.inner;
        inner.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        let started = |live: &LiveTasks| -> Vec<String> {
            live.iter().filter(|(_, l)| is_started(l.task.state.status)).map(|(id, _)| id.clone()).collect()
        };
        let at_start = started(&inner.lock_live()).len();
        tracing::info!(running = at_start, ?grace, "shutting down");
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline, hurry);
        while !started(&inner.lock_live()).is_empty() {
            tokio::select! {
                _ = &mut deadline => break,
                _ = &mut hurry => break,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        let mut report = ShutdownReport::default();
        let mut outcomes = Vec::new();
        {
            let mut live = inner.lock_live();
            let grace_text = coderclaw_core::units::format_duration(grace);
            let message = format!("cancelled: the server shut down and the task was still running after {grace_text}");
            for id in started(&live) {
                let Some(entry) = live.get_mut(&id) else { continue };
                // Its outcome is being recorded: it stands.
                if entry.finishing {
                    continue;
                }
                if let Some(abort) = entry.abort.take() {
                    abort.abort();
                }
                entry.waiter = None;
                if entry.task.resumable {
                    if inner.store.cluster().is_some() {
                        // Another node takes it at once, without waiting for the lease to run out.
                        let note = "the node shut down: stopped; re-runs from the start on another node (resumable)";
                        inner.note(entry, TaskEventKind::Log, note.to_owned(), None);
                        let release = Write::Release { id: id.clone(), lease: entry.task.lease.clone() };
                        if let Err(e) = inner.store.queue(release) {
                            tracing::warn!(task = %id, error = %e, "not released: reclaimed once the lease runs out");
                        }
                    } else {
                        let note =
                            "the server shut down: stopped; re-runs from the start when it starts again (resumable)";
                        inner.note(entry, TaskEventKind::Log, note.to_owned(), None);
                    }
                    report.requeued.push(id);
                } else {
                    inner.change(entry, TaskStatus::Cancelled, TaskEventKind::Status, &message, None, |s| {
                        s.error = Some(TaskFailure::new(FailureCode::Cancelled, message.clone()));
                    })?;
                    outcomes.push(inner.audit_outcome(&entry.task.state));
                    report.cancelled.push(id);
                }
            }
        }
        for outcome in outcomes {
            outcome.await;
        }
        // Outcomes being recorded and the cancellations leave memory once
        // their final events are on disk.
        let settle = Instant::now() + SHUTDOWN_SETTLE;
        while started(&inner.lock_live()).iter().any(|id| !report.requeued.contains(id)) && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let flushed = inner.store.queue_durable(Write::Flush)?;
        flushed
            .await
            .map_err(|_| EngineError::NotStored("the task store stopped".into()))?
            .map_err(EngineError::NotStored)?;
        report.finished = at_start.saturating_sub(report.cancelled.len() + report.requeued.len());
        report.queued = inner.lock_live().iter().filter(|(_, l)| l.task.state.status == TaskStatus::Pending).count();
        if let Some(cluster) = inner.store.cluster() {
            // The queue is the cluster's; whatever this node still holds
            // goes to the others now.
            report.queued = 0;
            cluster.leave().await?;
            inner.node.left.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        tracing::info!(?report, "shut down");
        Ok(report)
    }

    /// Cancels a task that is not final: it ends CANCELLED, its run is
    /// stopped (the guest interrupted, shell children killed). Returns
    /// false when the task had already finished.
    pub fn cancel(&self, id: &str, reason: &str) -> Result<bool, EngineError> {
        if let Some(cluster) = self.inner.store.cluster()
            && !self.inner.lock_live().contains(id)
        {
            return self.inner.cancel_elsewhere(cluster, id, reason);
        }
        self.inner.cancel_here(id, reason)
    }

    /// Answers a WAITING task's input request; it goes back to RUNNING.
    pub fn respond(&self, id: &str, answer: String) -> Result<TaskState, EngineError> {
        if let Some(cluster) = self.inner.store.cluster()
            && !self.inner.lock_live().contains(id)
        {
            return self.inner.respond_elsewhere(cluster, id, answer);
        }
        self.inner.respond_here(id, answer)
    }
}

impl Inner {
    /// Cancels task `id`, live in this engine (or final).
    pub(crate) fn cancel_here(&self, id: &str, reason: &str) -> Result<bool, EngineError> {
        let (abort, cancelled) = {
            let mut live = self.lock_live();
            let Some(entry) = live.get_mut(id) else {
                drop(live);
                self.get(id)?;
                return Ok(false);
            };
            // Finishing: its outcome is being recorded and will stand.
            if entry.task.state.status.is_terminal() || entry.finishing {
                return Ok(false);
            }
            let message = cancel_message(reason);
            self.change(entry, TaskStatus::Cancelled, TaskEventKind::Status, &message, None, |s| {
                s.error = Some(TaskFailure::new(FailureCode::Cancelled, message.clone()));
            })?;
            entry.waiter = None;
            (entry.abort.take(), entry.task.state.clone())
        };
        if let Some(abort) = abort {
            abort.abort();
        }
        // Queued now, behind the run's own records; durable in the background.
        tokio::spawn(self.audit_outcome(&cancelled));
        Ok(true)
    }

    /// Answers task `id`, live in this engine (or not waiting).
    pub(crate) fn respond_here(&self, id: &str, answer: String) -> Result<TaskState, EngineError> {
        let mut live = self.lock_live();
        let Some(entry) = live.get_mut(id) else {
            drop(live);
            let t = self.get(id)?;
            return Err(EngineError::Conflict(format!("task {id} is {}, not waiting for input", t.state.status)));
        };
        if entry.task.state.status != TaskStatus::Waiting || entry.waiter.is_none() {
            return Err(EngineError::Conflict(format!(
                "task {id} is {}, not waiting for input",
                entry.task.state.status
            )));
        }
        let message = format!("input provided ({} bytes)", answer.len());
        self.change(entry, TaskStatus::Running, TaskEventKind::InputProvided, &message, None, |s| {
            s.prompt = None;
        })?;
        if let Some(w) = entry.waiter.take() {
            let _ = w.send(answer);
        }
        entry.idle_since = None;
        Ok(entry.task.state.clone())
    }
}

impl TaskEngine {
    /// Holds a PENDING task in the queue until [`TaskEngine::resume`].
    pub fn pause(&self, id: &str) -> Result<TaskState, EngineError> {
        self.set_paused(id, true)
    }

    /// Releases a paused PENDING task.
    pub fn resume(&self, id: &str) -> Result<TaskState, EngineError> {
        let state = self.set_paused(id, false)?;
        // In a cluster its node claims it (woken by the store).
        if self.inner.store.cluster().is_none() {
            self.inner.enqueue(&state.session_id, state.id.clone());
        }
        Ok(state)
    }

    fn set_paused(&self, id: &str, paused: bool) -> Result<TaskState, EngineError> {
        if self.inner.store.cluster().is_some() && !self.inner.lock_live().contains(id) {
            return self.inner.set_paused_elsewhere(id, paused);
        }
        let status = self.inner.get(id)?.state.status;
        let mut live = self.inner.lock_live();
        let entry = live.get_mut(id).filter(|_| status == TaskStatus::Pending).ok_or_else(|| {
            EngineError::Conflict(format!("task {id} is {status}: only PENDING tasks can be paused or resumed"))
        })?;
        if entry.task.state.paused == paused {
            let what = if paused { "paused" } else { "not paused" };
            return Err(EngineError::Conflict(format!("task {id} is already {what}")));
        }
        let kind = if paused { TaskEventKind::Paused } else { TaskEventKind::Resumed };
        self.inner.update(entry, kind, kind.as_str(), None, |s| s.paused = paused)?;
        entry.idle_since = paused.then(Instant::now);
        Ok(entry.task.state.clone())
    }

    /// What can be run.
    pub fn skills(&self) -> Vec<SkillInfo> {
        self.inner.executor.skills()
    }

    /// See [`TaskExecutor::preview`].
    pub fn preview(&self, subject: &Subject, id: &str) -> Option<Result<Decision, String>> {
        self.inner.executor.preview(subject, id)
    }

    /// Health and load.
    pub fn status(&self) -> RuntimeStatus {
        let counts = self.inner.store.counts();
        let (queued, active, total) = counts.as_ref().map_or((0, 0, 0), |c| *c);
        RuntimeStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.inner.started.elapsed().as_secs(),
            active_tasks: active,
            queued_tasks: queued,
            total_tasks: total,
            max_concurrent_tasks: self.inner.config.max_concurrent_tasks,
            mode: self.inner.config.mode,
            healthy: counts.is_ok(),
            missing_required_skills: self.inner.executor.missing_required_skills(),
            policy_warnings: self.inner.executor.policy_warnings(),
        }
    }
}

impl Inner {
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn lock_live(&self) -> std::sync::MutexGuard<'_, LiveTasks> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, id: &str) -> Result<StoredTask, EngineError> {
        if let Some(l) = self.lock_live().get(id) {
            return Ok(l.task.clone());
        }
        if let Some(t) = self.finished.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(t.clone());
        }
        self.store.get(id)?.ok_or_else(|| EngineError::NotFound(id.to_owned()))
    }

    fn enqueue(&self, session: &str, id: String) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push(session, id);
        self.wake.notify_one();
    }

    /// Moves `entry` to `to` (checked), applies `f`, and queues the row and
    /// a status event. Call with the live lock held.
    pub(crate) fn change(
        &self,
        entry: &mut Live,
        to: TaskStatus,
        kind: TaskEventKind,
        message: &str,
        data: Option<Value>,
        f: impl FnOnce(&mut TaskState),
    ) -> Result<(), EngineError> {
        self.change_into(entry, to, kind, message, data, f, &mut |w| self.store.queue(w))
    }

    /// [`Inner::change`], handing the writes to `sink`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn change_into(
        &self,
        entry: &mut Live,
        to: TaskStatus,
        kind: TaskEventKind,
        message: &str,
        data: Option<Value>,
        f: impl FnOnce(&mut TaskState),
        sink: &mut dyn FnMut(Write) -> Result<(), StoreError>,
    ) -> Result<(), EngineError> {
        entry.task.state.status.transition(to)?;
        if to != TaskStatus::Waiting {
            // Running again (answered, or re-run after a restart): not idle.
            entry.idle_since = None;
        }
        if to.is_terminal() && entry.budget.dropped > 0 {
            let dropped = entry.budget.dropped;
            let data = json!({ "truncated": true, "dropped": dropped });
            self.note(entry, TaskEventKind::Log, format!("truncated: {dropped} events dropped"), Some(data));
        }
        self.update_into(
            entry,
            kind,
            message,
            data,
            |s| {
                s.status = to;
                let now = now_ms();
                if to == TaskStatus::Planning && s.started_at_ms.is_none() {
                    s.started_at_ms = Some(now);
                }
                if to.is_terminal() {
                    s.completed_at_ms = Some(now);
                    s.prompt = None;
                }
                f(s)
            },
            sink,
        )
    }

    /// Applies `f` and queues the row and one event. Live lock held.
    pub(crate) fn update(
        &self,
        entry: &mut Live,
        kind: TaskEventKind,
        message: &str,
        data: Option<Value>,
        f: impl FnOnce(&mut TaskState),
    ) -> Result<(), EngineError> {
        self.update_into(entry, kind, message, data, f, &mut |w| self.store.queue(w))
    }

    /// [`Inner::update`], handing the write to `sink`.
    pub(crate) fn update_into(
        &self,
        entry: &mut Live,
        kind: TaskEventKind,
        message: &str,
        data: Option<Value>,
        f: impl FnOnce(&mut TaskState),
        sink: &mut dyn FnMut(Write) -> Result<(), StoreError>,
    ) -> Result<(), EngineError> {
        let mut next = entry.task.clone();
        f(&mut next.state);
        next.last_seq += 1;
        let e = event(&next.state, next.last_seq, kind, message.to_owned(), data);
        let row = Box::new(next);
        // Only what was queued becomes the live state.
        sink(Write::Task { task: row.clone(), event: Some(e) })?;
        entry.task = *row;
        Ok(())
    }

    /// Refuses a submission that would take its session over its quotas,
    /// given its unfinished tasks and their input bytes.
    fn check_quota(&self, count: usize, bytes: u64, new: &TaskState) -> Result<(), EngineError> {
        let (max, max_bytes) = (self.config.max_unfinished_per_session, self.config.max_input_bytes_per_session);
        if count >= max {
            return Err(EngineError::Quota(format!(
                "this session has {count} unfinished tasks, the most one session may hold: wait for some to \
                 finish or cancel them"
            )));
        }
        if bytes + input_bytes(new) > max_bytes {
            return Err(EngineError::Quota(format!(
                "this session's unfinished tasks would hold more than {max_bytes} bytes of input: wait for some \
                 to finish or cancel them"
            )));
        }
        Ok(())
    }

    /// Fails tasks paused or WAITING for longer than `idle_expiry`.
    fn expire_idle(&self) {
        let expiry = self.config.idle_expiry;
        let expired: Vec<String> = self
            .lock_live()
            .iter()
            .filter(|(_, l)| l.idle_since.is_some_and(|t| t.elapsed() >= expiry))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let (abort, state) = {
                let mut live = self.lock_live();
                // Re-checked under the lock: answered or resumed meanwhile, it stays.
                let Some(entry) = live.get_mut(&id).filter(|l| l.idle_since.is_some_and(|t| t.elapsed() >= expiry))
                else {
                    continue;
                };
                let waiting = entry.task.state.status == TaskStatus::Waiting;
                let what = if waiting { "waiting for input" } else { "paused" };
                let message = format!("expired: {what} longer than {expiry:?}");
                let r = self.change(entry, TaskStatus::Failed, TaskEventKind::Status, &message, None, |s| {
                    s.error = Some(TaskFailure::new(FailureCode::Expired, message.clone()));
                    s.paused = false;
                });
                if r.is_err() {
                    continue;
                }
                entry.waiter = None;
                entry.idle_since = None;
                (entry.abort.take(), entry.task.state.clone())
            };
            if let Some(abort) = abort {
                abort.abort();
            }
            tokio::spawn(self.audit_outcome(&state));
        }
    }

    /// Whether one more run event of `bytes` fits the task's budget. The
    /// first refusal leaves a note saying why; the final one says how many
    /// were dropped. Live lock held.
    pub(crate) fn admit(&self, entry: &mut Live, bytes: usize) -> bool {
        let b = &mut entry.budget;
        let bytes = bytes as u64;
        if b.dropped == 0
            && b.events < self.config.max_events_per_task
            && b.bytes.saturating_add(bytes) <= self.config.max_event_bytes_per_task
        {
            b.events += 1;
            b.bytes += bytes;
            return true;
        }
        b.dropped += 1;
        if b.dropped == 1 {
            let (max, max_bytes) = (self.config.max_events_per_task, self.config.max_event_bytes_per_task);
            let message = format!(
                "event limit reached ({max} events or {max_bytes} bytes per task): \
                 further log, progress and capability events of this task are dropped"
            );
            self.note(entry, TaskEventKind::Log, message, Some(json!({ "truncated": true })));
        }
        false
    }

    /// Appends an event that does not change the row. Live lock held.
    pub(crate) fn note(&self, entry: &mut Live, kind: TaskEventKind, message: String, data: Option<Value>) {
        entry.task.last_seq += 1;
        let e = event(&entry.task.state, entry.task.last_seq, kind, message, data);
        if let Err(err) = self.store.queue(Write::Event { event: e, lease: entry.task.lease.clone() }) {
            tracing::warn!(error = %err, "task event dropped");
        }
    }

    /// Transitions task `id` if it is still live.
    fn transition(
        &self,
        id: &str,
        to: TaskStatus,
        message: &str,
        data: Option<Value>,
        f: impl FnOnce(&mut TaskState),
    ) -> Result<TaskState, EngineError> {
        let mut live = self.lock_live();
        let entry = live.get_mut(id).ok_or_else(|| EngineError::NotFound(id.to_owned()))?;
        self.change(entry, to, TaskEventKind::Status, message, data, f)?;
        Ok(entry.task.state.clone())
    }

    /// Called by the writer after each commit: forget tasks whose final
    /// event is now on disk.
    fn committed(&self, events: &[TaskUpdateEvent]) {
        let mut live = self.lock_live();
        let mut finals = Vec::new();
        for e in events {
            if e.event == TaskEventKind::Status && e.status.is_terminal() {
                finals.push(e.task_id.as_str());
            } else if let Some(entry) = live.get_mut(&e.task_id) {
                entry.committed(e);
            }
        }
        if finals.is_empty() {
            return;
        }
        let mut released = Vec::new();
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        for id in finals {
            if let Some(task) = live.remove(id) {
                if let Some(w @ WorkspaceRef::Upload(_)) = &task.task.state.workspace {
                    released.push((task.task.state.user.clone(), w.clone()));
                }
                finished.keep(task);
            }
        }
        // An upload goes with the last unfinished task that names it.
        released.retain(|(user, w)| {
            !live.iter().any(|(_, l)| l.task.state.workspace.as_ref() == Some(w) && &l.task.state.user == user)
        });
        drop((finished, live));
        for (user, w) in released {
            // On the store's writer thread: the deletion goes elsewhere.
            let executor = self.executor.clone();
            self.runtime.spawn_blocking(move || executor.release_workspace(&user, &w));
        }
    }

    /// Lets the executor drop what no unfinished task names.
    fn sweep_workspaces(&self) {
        // A node sees only the tasks it holds; a queued task naming an
        // upload on this node may be any node's. Uploads go with their
        // last task (`committed`), never by sweeping.
        if self.store.cluster().is_some() {
            return;
        }
        let in_use: std::collections::HashSet<(String, WorkspaceRef)> = self
            .lock_live()
            .iter()
            .filter_map(|(_, l)| Some((l.task.state.user.clone(), l.task.state.workspace.clone()?)))
            .collect();
        let executor = self.executor.clone();
        self.runtime.spawn_blocking(move || executor.sweep_workspaces(&in_use));
    }

    /// Every committed event of live task `id`, if all are in memory.
    pub(crate) fn history(&self, id: &str) -> Option<std::collections::VecDeque<TaskUpdateEvent>> {
        self.lock_live().get(id)?.history().map(|h| h.iter().cloned().collect())
    }

    /// Queues the record of a task's outcome; the future resolves once it
    /// is on disk. Nothing to do when the store records outcomes itself.
    pub(crate) fn audit_outcome(&self, t: &TaskState) -> BoxFuture<()> {
        let Some(audit) = self.audit.as_ref().filter(|_| !self.store.records_outcomes()) else {
            return Box::pin(std::future::ready(()));
        };
        // Already reported by the hook; the outcome was stored before.
        let record = audit(outcome_event(t, t.status, t.error.as_ref()));
        Box::pin(async move {
            let _ = record.await;
        })
    }

    fn recover(self: &Arc<Self>) -> Result<(), EngineError> {
        for stored in self.store.unfinished()? {
            let id = stored.state.id.clone();
            let session = stored.state.session_id.clone();
            let status = stored.state.status;
            let (paused, resumable) = (stored.state.paused, stored.resumable);
            let mut live = self.lock_live();
            let entry = live.insert(id.clone(), Live::new(stored));
            match status {
                TaskStatus::Pending => {
                    drop(live);
                    if !paused {
                        self.enqueue(&session, id);
                    }
                }
                _ if resumable => {
                    let msg = format!("host restarted while {status}: re-running from the start (resumable)");
                    self.note(entry, TaskEventKind::Recovered, msg.clone(), None);
                    if status == TaskStatus::Waiting {
                        self.change(entry, TaskStatus::Running, TaskEventKind::Status, &msg, None, |s| {
                            s.prompt = None;
                        })?;
                    }
                    drop(live);
                    self.enqueue(&session, id);
                }
                _ => {
                    self.change(entry, TaskStatus::Failed, TaskEventKind::Status, "host restarted", None, |s| {
                        s.error = Some(TaskFailure::new(FailureCode::HostRestarted, "host restarted"));
                    })?;
                    let state = entry.task.state.clone();
                    drop(live);
                    tokio::spawn(self.audit_outcome(&state));
                }
            }
        }
        Ok(())
    }

    /// Starts queued task `id` on a slot, unless it was cancelled or
    /// paused meanwhile.
    pub(crate) fn start(self: &Arc<Self>, id: String, permit: OwnedSemaphorePermit) {
        let mut live = self.lock_live();
        let Some(entry) = live.get_mut(&id) else { return };
        if entry.task.state.status.is_terminal() || entry.task.state.paused || entry.abort.is_some() {
            return;
        }
        let inner = self.clone();
        let task_id = id.clone();
        // Spawned under the lock: a cancel either sees the abort handle or
        // runs before the task starts (and then the run's first transition
        // fails).
        // The run holds its slot; WAITING gives it up (see `TaskRun`).
        let slot = Arc::new(Mutex::new(Some(permit)));
        let handle = tokio::spawn(async move {
            inner.run(task_id, slot).await;
        });
        entry.abort = Some(handle.abort_handle());
    }

    async fn run(self: Arc<Self>, id: String, slot: Arc<Mutex<Option<OwnedSemaphorePermit>>>) {
        let state = {
            let mut live = self.lock_live();
            let Some(entry) = live.get_mut(&id) else { return };
            if entry.task.state.status == TaskStatus::Pending
                && let Err(e) =
                    self.change(entry, TaskStatus::Planning, TaskEventKind::Status, "planning", None, |_| {})
            {
                tracing::debug!(task = %id, error = %e, "not started");
                return;
            }
            entry.task.state.clone()
        };
        let run = TaskRun { inner: self.clone(), task_id: id.clone(), principal: Principal::of_task(&state), slot };
        let work = self.executor.execute(state, run);
        let timeout = self.config.task_timeout;
        let outcome = match tokio::time::timeout(timeout, AssertUnwindSafe(work).catch_unwind()).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(TaskFailure::new(
                FailureCode::Internal,
                "internal error: the executor panicked (see the host's log)",
            )),
            Err(_) => Err(TaskFailure::new(
                FailureCode::Timeout,
                format!("timed out after {timeout:?} (deployment.taskTimeout)"),
            )),
        };
        // A skill that ran to its end but declared a failure verdict ends
        // FAILED and keeps its output (the findings are the point).
        let (mut outcome, mut kept_output) = match outcome {
            Ok(output) => match coderclaw_core::task::skill_verdict(&output) {
                Some(failure) => (Err(failure), Some(output)),
                None => (Ok(output), None),
            },
            failed => (failed, None),
        };
        // The outcome's record is on disk before the outcome is stored or
        // streamed: no client sees a result the audit log could lose. A
        // record that cannot be written fails the task instead.
        if let Some(record) = self.outcome_record(&id, &outcome)
            && let Err(e) = record.instrument(tracing::debug_span!("outcome.audit")).await
        {
            let message = format!("internal error: the outcome could not be recorded in the audit log ({e})");
            outcome = Err(TaskFailure::new(FailureCode::Internal, message));
            kept_output = None;
        }
        let done = match outcome {
            Ok(output) => self.transition(&id, TaskStatus::Completed, "completed", Some(output.clone()), |s| {
                s.output = Some(output);
                s.progress = Some(1.0);
            }),
            Err(error) => self.transition(&id, TaskStatus::Failed, &error.message, None, |s| {
                s.error = Some(error.clone());
                s.output = kept_output;
            }),
        };
        if let Err(e) = done {
            // Cancelled meanwhile: the cancellation stands.
            tracing::debug!(task = %id, error = %e, "outcome dropped");
        }
    }

    /// Queues the record of the outcome task `id` is about to get, unless
    /// it is no longer live or already final (cancelled meanwhile); from
    /// here on the task is finishing and a cancel no longer applies.
    fn outcome_record(&self, id: &str, outcome: &Result<Value, TaskFailure>) -> Option<BoxFuture<Result<(), String>>> {
        // A store that records outcomes does so in the transaction that
        // stores them: nothing to wait for here.
        let audit = self.audit.as_ref().filter(|_| !self.store.records_outcomes())?;
        let (status, error) = match outcome {
            Ok(_) => (TaskStatus::Completed, None),
            Err(error) => (TaskStatus::Failed, Some(error)),
        };
        let event = {
            let mut live = self.lock_live();
            let entry = live.get_mut(id).filter(|l| !l.task.state.status.is_terminal())?;
            entry.finishing = true;
            outcome_event(&entry.task.state, status, error)
        };
        Some(audit(event))
    }
}

/// The record of task `t` ending `status` (with `error`).
pub(crate) fn outcome_event(t: &TaskState, status: TaskStatus, error: Option<&TaskFailure>) -> AuditEvent {
    let result = match status {
        TaskStatus::Completed => AuditResult::Allowed,
        _ => AuditResult::Error,
    };
    let mut e = AuditEvent::new(&format!("task.{}", status.as_str().to_ascii_lowercase()), result, "task", &t.id)
        .user(&t.user)
        .metadata(json!({ "target": t.target.id(), "kind": t.target.kind() }));
    if let Some(session) = Principal::of_task(t).key.session_id() {
        e = e.session(session);
    }
    if let Some(err) = error {
        e = e.reason(&err.message);
    }
    e
}

/// Planning, running or waiting for input: holding (or owed) a slot.
fn is_started(status: TaskStatus) -> bool {
    matches!(status, TaskStatus::Planning | TaskStatus::Running | TaskStatus::Waiting)
}

async fn dispatch(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let slots = inner.slots.clone();
        drop(inner);
        let Ok(mut permit) = slots.acquire_owned().await else { return };
        let id = loop {
            let Some(inner) = weak.upgrade() else { return };
            let notified = inner.wake.notified();
            // An answered task that gave up its slot while WAITING goes first.
            let resumed = inner.resumes.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            if let Some(tx) = resumed {
                match tx.send(permit) {
                    Ok(()) => break None,
                    // Cancelled meanwhile: the slot is still ours.
                    Err(back) => {
                        permit = back;
                        continue;
                    }
                }
            }
            // Shutting down: queued tasks stay queued, on disk, for the next start.
            let popped =
                if inner.is_draining() { None } else { inner.queue.lock().unwrap_or_else(|p| p.into_inner()).pop() };
            if let Some(id) = popped {
                break Some((id, permit));
            }
            // Wake up now and then to notice the engine was dropped.
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        };
        let Some((id, permit)) = id else { continue };
        let Some(inner) = weak.upgrade() else { return };
        inner.start(id, permit);
    }
}

/// Workspace housekeeping runs at start and this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Fails tasks idle (paused, WAITING) past `idle_expiry`, checking every
/// second or so until the engine is dropped; sweeps workspaces every
/// [`SWEEP_EVERY`].
async fn expire_idle(weak: Weak<Inner>) {
    let mut swept: Option<Instant> = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let every = (inner.config.idle_expiry / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        inner.expire_idle();
        if swept.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            inner.sweep_workspaces();
            swept = Some(Instant::now());
        }
        drop(inner);
        tokio::time::sleep(every).await;
    }
}

fn event(s: &TaskState, seq: u64, kind: TaskEventKind, message: String, data: Option<Value>) -> TaskUpdateEvent {
    TaskUpdateEvent {
        task_id: s.id.clone(),
        seq,
        timestamp_ms: now_ms(),
        event: kind,
        status: s.status,
        progress: s.progress,
        message,
        data,
    }
}

/// What a cancelled task's status event and error say.
pub(crate) fn cancel_message(reason: &str) -> String {
    if reason.is_empty() { "cancelled".to_owned() } else { format!("cancelled: {reason}") }
}
