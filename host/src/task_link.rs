//! What a run started by the task engine can reach besides its grant:
//! someone to ask for input (the task goes WAITING) and the session's
//! key-value store. A direct [`crate::Host::run`] has neither.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Why a `memory` call failed; mirrors the WIT `memory-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryFault {
    /// No grant, or not in a task.
    Denied(String),
    /// Over a size limit.
    TooLarge(String),
    /// The store failed.
    Failed(String),
}

/// The task engine's side of a run.
pub trait TaskServices: Send + Sync + 'static {
    /// Moves the task to WAITING with `prompt` and resolves with the answer.
    fn request_input(&self, prompt: String) -> BoxFuture<Result<String, String>>;
    /// The session's value under `key`.
    fn memory_get(&self, key: String) -> BoxFuture<Result<Option<String>, MemoryFault>>;
    /// Stores (Some) or deletes (None) `key`; returns whether it existed.
    fn memory_put(&self, key: String, value: Option<String>) -> BoxFuture<Result<bool, MemoryFault>>;
}

/// The task a run belongs to, handed down to nested invocations.
#[derive(Clone)]
pub struct TaskLink {
    /// The task's id.
    pub task_id: String,
    /// The session the task runs under.
    pub session_id: String,
    /// The engine.
    pub services: Arc<dyn TaskServices>,
}

/// Who invokes a registered skill through `skills.invoke`: the calling
/// agent, and the task (and so the session) it runs in, if any.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The calling agent's name.
    pub agent: &'a str,
    /// The task's id, when the agent runs as a task.
    pub task_id: Option<&'a str>,
    /// The session the task runs under.
    pub session_id: Option<&'a str>,
}
