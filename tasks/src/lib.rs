//! `coderclaw-tasks`: the durable lifecycle every run goes through
//! (PENDING → PLANNING → RUNNING ⇄ WAITING → COMPLETED | FAILED | CANCELLED).
//!
//! - [`TaskEngine`] (`engine`): the state machine, cancel and pause,
//!   recovery after a restart; with the fair queue (`queue`), the stream hub
//!   (`hub`), the live tasks and session loads (`live`), a running task's side (`run`: [`TaskRun`], event mapping,
//!   WAITING) and session memory (`memory`).
//! - [`TaskStore`] ([`store`]): where tasks live; the SQLite store
//!   (`tasks.db`, group commit) is the embedded default.
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

mod cluster;
mod engine;
mod hub;
mod live;
mod memory;
mod queue;
mod run;
mod service;
pub mod store;

pub use engine::{
    AuditHook, EngineConfig, EngineError, MAX_EVENT_MESSAGE_BYTES, MAX_EVENTS_PAGE, Owner, ShutdownReport, TaskEngine,
    TaskExecutor,
};
pub use run::TaskRun;
pub use service::{ErrorCode, MAX_CONCURRENT_UPLOADS, Preview, RuntimeError, TaskService, UploadSlot};
pub use store::{StoreError, TaskStore};
