//! `coderclaw-host`: the embeddable coderclaw skill host.
//!
//! Loads signed WebAssembly skill packages (verified against the trust store
//! before anything is compiled; raw components only behind
//! [`HostBuilder::dangerous_allow_unsigned`]) (WASI preview 2, the `coderclaw:skill`
//! WIT contract in `wit/`), compiles each once (with an optional on-disk
//! compiled-code cache keyed by SHA-256), and runs them under a
//! [`Grant`]: the WASI context and the coderclaw host imports are built
//! from the grant and nothing else, with hard memory and time limits.
//!
//! ```no_run
//! use coderclaw_host::{Access, Grant, Host};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let home = coderclaw_host::home::Home::open("/home/me/.coderclaw")?;
//! let host = Host::builder().compiled_cache(home.compiled_cache_dir()).build()?;
//! // Verified against the trust store before anything is compiled.
//! let scanner = host.load_verified(&home.load_installed("team/security-scanner")?)?;
//! let grant = Grant::builder().dir("./repo", ".", Access::Read).build()?;
//! let report = host.run(&scanner, r#"{"path": "."}"#, &grant).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! Runs need a tokio runtime (the multi-threaded one).

pub mod audit;
mod bindings;
mod caps;
mod compiled_cache;
mod engine;
mod error;
pub mod events;
pub mod home;
mod host;
pub mod identity;
pub mod oidc;
pub mod security;
mod sqlite;
mod state;
pub mod task_link;
pub mod tasks;

pub use coderclaw_core::package::VerifiedPackage;
pub use coderclaw_core::{Access, Digest, Grant, GrantBuilder, GrantError, HostPattern, Limits};
pub use engine::DEFAULT_MAX_MEMORY_BYTES;
pub use error::{Error, SkillError};
pub use events::{CollectEvents, DiscardEvents, EventKind, EventSink, LogLevel, RunEvent};
pub use host::{Host, HostBuilder, HostStats, LoadSource, Skill};
pub use task_link::{Caller, TaskLink};
