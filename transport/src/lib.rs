//! `coderclaw-transport`: the runtime interface clients use, and the
//! transports that carry it.
//!
//! - [`Transport`] / [`CoderClawRuntime`]: submit, get, stream, cancel,
//!   respond, pause, resume, list, events, skills and status; object-safe.
//! - [`LocalTransport`]: in-process, straight to a `TaskService`.
//! - [`HttpTransport`] and [`http_server`]: REST + SSE over hyper.
//! - [`mcp`]: installed skills as Model Context Protocol tools (stdio).
//!
//! ```no_run
//! use coderclaw_transport::{CoderClawRuntime, HttpTransport};
//!
//! # async fn demo() -> Result<(), coderclaw_tasks::RuntimeError> {
//! let runtime = CoderClawRuntime::new(HttpTransport::new("http://127.0.0.1:7878", Some("token".into()))?);
//! println!("{:?}", runtime.get_status().await?);
//! # Ok(()) }
//! ```

mod http_client;
pub mod http_server;
pub mod mcp;
mod runtime;

pub use http_client::HttpTransport;
pub use runtime::{CoderClawRuntime, LocalTransport, RuntimeFuture, Transport, UpdateStream};
