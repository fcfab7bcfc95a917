//! `coderclaw-tasks`: the durable lifecycle every run goes through
//! (PENDING → PLANNING → RUNNING ⇄ WAITING → COMPLETED | FAILED | CANCELLED).
//!
//! - [`TaskEngine`]: the state machine, a fair queue, cancel and pause,
//!   WAITING for input, recovery after a restart, and live streams; persisted
//!   in `tasks.db` with group commit.
//! - [`TaskExecutor`]: what runs a task (the `coderclaw` facade provides the
//!   one that runs installed skills in the sandbox).
//! - [`TaskService`]: the engine behind authentication and permissions, the
//!   one door transports use.
//!
//! ```no_run
//! # async fn demo(service: coderclaw_tasks::TaskService, submit: coderclaw_core::task::TaskSubmitRequest, subject: &coderclaw_core::decision::Subject) -> Result<(), coderclaw_tasks::RuntimeError> {
//! let state = service.submit(subject, submit).await?;
//! println!("{} is {:?}", state.id, state.status);
//! # Ok(()) }
//! ```

mod engine;
mod service;
mod store;

pub use engine::{AuditHook, EngineConfig, EngineError, Owner, TaskEngine, TaskExecutor, TaskRun};
pub use service::{ErrorCode, RuntimeError, TaskService};
pub use store::StoreError;
