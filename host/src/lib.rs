//! `coderclaw`: the embeddable WebAssembly skill host.
//!
//! This is the crate an embedding tool uses. It assembles the layers below
//! it — the sandbox ([`coderclaw_sandbox`]), the security model
//! ([`coderclaw_security`]), the task engine ([`coderclaw_tasks`]) and the
//! runtime interface with its transports ([`coderclaw_transport`]) — and
//! re-exports what an embedder needs from each.
//!
//! ```no_run
//! use coderclaw::home::Home;
//! use coderclaw::{Access, Grant, Host};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let home = Home::open(std::env::var("CODERCLAW_HOME")?)?;
//! let host = Host::builder().compiled_cache(home.compiled_cache_dir()).build()?;
//! // Verified against the trust store before anything is compiled.
//! let scanner = host.load_verified(&*home.load_installed("team/security-scanner")?)?;
//! let grant = Grant::builder().dir("./repo", ".", Access::Read).build()?;
//! let report = host.run(&scanner, r#"{"path": "."}"#, &grant).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```

pub mod denial_audit;
mod install_target;
mod local_runtime;
mod plan;
mod skill_executor;
pub mod snapshot;
pub mod workspaces;

pub use install_target::GatedInstall;
pub use local_runtime::{LocalRuntime, LocalRuntimeBuilder, OpenError};
pub use plan::{NestedCaller, Planner, PreparedRun};

/// The team registry's client and its secure install pipeline.
pub use coderclaw_registry as registry;
pub use coderclaw_sandbox::confine;
pub use coderclaw_sandbox::{
    Access, Caller, CollectEvents, DEFAULT_MAX_MEMORY_BYTES, Digest, DiscardEvents, Error, EventKind, EventSink, Grant,
    GrantBuilder, GrantError, Host, HostBuilder, HostPattern, HostStats, Limits, LoadSource, LogLevel, RunEvent, Skill,
    SkillError, TaskLink, VerifiedPackage, events, task_link,
};
pub use coderclaw_security::{audit, home, identity, oidc, security, shared};

/// Tasks: the durable lifecycle every run goes through, the runtime
/// interface clients use, and its transports (in-process and HTTP).
pub mod tasks {
    pub use crate::skill_executor::SkillExecutor;
    pub use coderclaw_tasks::*;
    pub use coderclaw_transport::*;
}
