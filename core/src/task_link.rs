//! What a run started by the task engine can reach besides its grant:
//! someone to ask for input (the task goes WAITING) and the session's
//! key-value store. A direct `Host::run` of the sandbox has neither.

use crate::principal::Principal;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Why a `memory` call failed; mirrors the WIT `memory-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryFault {
    /// Over a size limit.
    TooLarge(String),
    /// The store failed.
    Failed(String),
}

/// The task engine's side of a run.
pub trait TaskServices: Send + Sync + 'static {
    /// Moves the task to WAITING with `prompt` and resolves with the answer.
    fn request_input(&self, prompt: String) -> BoxFuture<Result<String, String>>;
    /// The value `skill` stored under `key` in this session. Each skill
    /// has its own keys: another skill of the same session (an agent's
    /// nested skill, say) never sees them.
    fn memory_get(&self, skill: String, key: String) -> BoxFuture<Result<Option<String>, MemoryFault>>;
    /// Stores (Some) or deletes (None) `skill`'s `key`; returns whether it existed.
    fn memory_put(&self, skill: String, key: String, value: Option<String>) -> BoxFuture<Result<bool, MemoryFault>>;
}

/// The task a run belongs to, handed down to nested invocations.
#[derive(Clone)]
pub struct TaskLink {
    /// The task's id.
    pub task_id: String,
    /// Who the task acts for: its session, and whether it was submitted
    /// from another machine (its nested calls are decided as from an
    /// untrusted device too).
    pub principal: Principal,
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
    /// Who the task acts for, when the agent runs as a task.
    pub principal: Option<&'a Principal>,
}
