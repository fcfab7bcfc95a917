//! `coderclaw-sandbox`: runs WebAssembly skill components under a capability
//! grant, and nothing else.
//!
//! A [`Host`] compiles verified packages (WASI preview 2, the `coderclaw:skill`
//! WIT contract in `wit/`) once each, with an optional on-disk compiled-code
//! cache keyed by SHA-256, and runs them under a [`Grant`]: the WASI context
//! and the coderclaw host imports (`caps/`, one module per capability) are
//! built from the grant alone, with hard memory, time and stack limits.
//!
//! This crate decides nothing: whoever calls it chooses the grant. The
//! policy-aware path (signature, trust store, roles, repository and
//! organisation policy, audit) is the `coderclaw` facade; use this crate
//! directly only when you build the grant yourself.
//!
//! Core types: [`Host`] / [`HostBuilder`], [`Skill`], [`Error`] /
//! [`SkillError`], and the [`events`] a run emits.
//!
//! ```no_run
//! use coderclaw_sandbox::{Access, Grant, Host};
//!
//! # async fn demo(package: coderclaw_sandbox::VerifiedPackage) -> Result<(), Box<dyn std::error::Error>> {
//! let host = Host::builder().build()?;
//! // `package` was verified against a trust store; raw components only load
//! // behind `HostBuilder::dangerous_allow_unsigned`.
//! let scanner = host.load_verified(&package)?;
//! let grant = Grant::builder().dir("./repo", ".", Access::Read).build()?;
//! let report = host.run(&scanner, r#"{"path": "."}"#, &grant).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! Runs need a tokio runtime (the multi-threaded one).

mod bindings;
mod caps;
mod compiled_cache;
pub mod confine;
mod engine;
mod error;
mod host;
mod state;

pub use coderclaw_core::package::VerifiedPackage;
pub use coderclaw_core::{Access, Digest, Grant, GrantBuilder, GrantError, HostPattern, Limits};
pub use coderclaw_core::{events, task_link};
pub use engine::DEFAULT_MAX_MEMORY_BYTES;
pub use error::{Error, SkillError};
pub use events::{CollectEvents, DiscardEvents, EventKind, EventSink, LogLevel, RunEvent};
pub use host::{Host, HostBuilder, HostStats, LoadSource, Skill};
pub use task_link::{Caller, TaskLink};
