//! A running task's side of the engine: its lifecycle steps (RUNNING,
//! WAITING for input), the mapping of the run's events onto task events,
//! and what the guest reaches through the task.

use crate::engine::{Inner, MAX_EVENT_MESSAGE_BYTES};
use crate::memory::SessionMemory;
use coderclaw_core::events::{EventKind, EventSink, RunEvent, truncate};
use coderclaw_core::principal::Principal;
use coderclaw_core::task::{FailureCode, TaskEventKind, TaskFailure, TaskStatus};
use coderclaw_core::task_link::{BoxFuture, MemoryFault, TaskLink, TaskServices};
use serde_json::json;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

/// A running task's handle on the engine, given to the executor.
#[derive(Clone)]
pub struct TaskRun {
    pub(crate) inner: Arc<Inner>,
    pub(crate) task_id: String,
    pub(crate) principal: Principal,
    /// The run slot this task holds (none while WAITING).
    pub(crate) slot: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl TaskRun {
    /// PLANNING → RUNNING: authorisation passed, execution starts. A task
    /// re-run after a restart may already be RUNNING.
    pub fn running(&self) -> Result<(), TaskFailure> {
        let mut live = self.inner.lock_live();
        let entry = live
            .get_mut(&self.task_id)
            .ok_or_else(|| TaskFailure::new(FailureCode::Internal, "the task is no longer live"))?;
        if entry.task.state.status == TaskStatus::Running {
            return Ok(());
        }
        self.inner
            .change(entry, TaskStatus::Running, TaskEventKind::Status, "running", None, |_| {})
            .map_err(|e| TaskFailure::new(FailureCode::Internal, e.to_string()))
    }

    /// Where the run's log, progress and capability events go: into the
    /// task's history and streams.
    pub fn sink(&self) -> Arc<dyn EventSink> {
        let (inner, id) = (self.inner.clone(), self.task_id.clone());
        Arc::new(move |e: RunEvent| {
            let mut live = inner.lock_live();
            let Some(entry) = live.get_mut(&id) else { return };
            if entry.task.state.status.is_terminal() {
                return;
            }
            let size = match &e.kind {
                EventKind::Progress { message, .. } | EventKind::Log { message, .. } => message.len(),
                EventKind::Capability { target, detail, .. } => target.len() + detail.len(),
            };
            if !inner.admit(entry, size.min(MAX_EVENT_MESSAGE_BYTES)) {
                return;
            }
            let cut = |s: String| truncate(s, MAX_EVENT_MESSAGE_BYTES);
            let skill = json!({ "skill": &*e.skill, "depth": e.depth });
            match e.kind {
                EventKind::Progress { fraction, message } => {
                    let r = inner.update(entry, TaskEventKind::Progress, &cut(message), Some(skill), |s| {
                        s.progress = Some(fraction);
                    });
                    if let Err(err) = r {
                        tracing::warn!(error = %err, "progress dropped");
                    }
                }
                EventKind::Log { level, message } => {
                    let data = json!({ "skill": &*e.skill, "depth": e.depth, "level": level });
                    inner.note(entry, TaskEventKind::Log, cut(message), Some(data));
                }
                EventKind::Capability { capability, target, allowed, detail } => {
                    let verdict = if allowed { "allowed" } else { "denied" };
                    let target = cut(target);
                    let data = json!({ "skill": &*e.skill, "depth": e.depth, "capability": capability,
                                       "target": &target, "allowed": allowed });
                    inner.note(
                        entry,
                        TaskEventKind::Log,
                        cut(format!("{capability} {verdict}: {target}: {detail}")),
                        Some(data),
                    );
                }
            }
        })
    }

    /// What the guest reaches through the task: input requests and the
    /// session's memory.
    pub fn link(&self) -> TaskLink {
        TaskLink { task_id: self.task_id.clone(), principal: self.principal.clone(), services: Arc::new(self.clone()) }
    }
}

impl TaskServices for TaskRun {
    fn request_input(&self, prompt: String) -> BoxFuture<Result<String, String>> {
        let run = self.clone();
        Box::pin(async move {
            let rx = {
                let mut live = run.inner.lock_live();
                let entry = live.get_mut(&run.task_id).ok_or("the task is no longer live")?;
                run.inner
                    .change(entry, TaskStatus::Waiting, TaskEventKind::InputRequested, &prompt, None, |s| {
                        s.prompt = Some(prompt.clone());
                    })
                    .map_err(|e| e.to_string())?;
                let (tx, rx) = oneshot::channel();
                entry.waiter = Some(tx);
                entry.idle_since = Some(std::time::Instant::now());
                rx
            };
            // A task waiting for a person gives its slot to the queue...
            drop(run.slot.lock().unwrap_or_else(|p| p.into_inner()).take());
            let answer = rx.await.map_err(|_| "the task was cancelled while waiting for input".to_owned())?;
            // ...and takes one back, ahead of the queue, once answered.
            let (tx, back) = oneshot::channel();
            run.inner.resumes.lock().unwrap_or_else(|p| p.into_inner()).push_back(tx);
            run.inner.wake.notify_one();
            let permit = back.await.map_err(|_| "the task engine stopped".to_owned())?;
            *run.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(permit);
            Ok(answer)
        })
    }

    fn memory_get(&self, skill: String, key: String) -> BoxFuture<Result<Option<String>, MemoryFault>> {
        let memory = SessionMemory::new(self.inner.store.clone(), &self.principal);
        Box::pin(async move { memory.get(skill, key).await })
    }

    fn memory_put(&self, skill: String, key: String, value: Option<String>) -> BoxFuture<Result<bool, MemoryFault>> {
        let memory = SessionMemory::new(self.inner.store.clone(), &self.principal);
        Box::pin(async move { memory.put(skill, key, value).await })
    }
}
