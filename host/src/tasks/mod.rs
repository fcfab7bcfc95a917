//! Tasks: the durable lifecycle every run goes through, the runtime
//! interface clients use, and its transports (in-process and HTTP).
//!
//! - [`TaskEngine`]: state machine, fair queue, cancel, WAITING, recovery,
//!   streams; persisted in `tasks.db` with group commit.
//! - [`SkillExecutor`]: runs installed skills and agents as tasks, decided
//!   by the security model.
//! - [`TaskService`]: the engine behind authentication and permissions.
//! - [`Transport`], [`CoderClawRuntime`], [`LocalTransport`],
//!   [`HttpTransport`], and the server in [`http_server`].

mod engine;
mod http_client;
pub mod http_server;
mod runtime;
mod service;
mod skill_executor;
mod store;

pub use engine::{AuditHook, EngineConfig, EngineError, Owner, TaskEngine, TaskExecutor, TaskRun};
pub use http_client::HttpTransport;
pub use runtime::{CoderClawRuntime, LocalTransport, Transport, UpdateStream};
pub use service::{ErrorCode, RuntimeError, TaskService};
pub use skill_executor::SkillExecutor;
pub use store::StoreError;
