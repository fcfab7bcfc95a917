//! `coderclaw-transport`: the runtime interface clients use, and the
//! transports that carry it.
//!
//! - [`Transport`] / [`CoderClawRuntime`]: submit, get, stream, cancel,
//!   respond, pause, resume, list, events, skills and status; object-safe.
//! - [`LocalTransport`]: in-process, straight to a `TaskService`.
//! - [`HttpTransport`] and [`http_server`]: REST + SSE over hyper.
//! - [`WsTransport`] and [`ws`]: JSON messages over one WebSocket
//!   (`GET /v1/ws` on the HTTP server), many tasks per socket.
//! - [`GrpcTransport`] and [`grpc`]: `coderclaw.v1.Runtime` over tonic, on
//!   its own port, with the standard health and reflection services.
//! - [`mcp`]: installed skills as Model Context Protocol tools (stdio and
//!   Streamable HTTP).
//!
//! ```no_run
//! use coderclaw_transport::{CoderClawRuntime, HttpTransport};
//!
//! # async fn demo() -> Result<(), coderclaw_tasks::RuntimeError> {
//! let runtime = CoderClawRuntime::new(HttpTransport::new("http://127.0.0.1:7878", Some("token".into()))?);
//! println!("{:?}", runtime.get_status().await?);
//! # Ok(()) }
//! ```

mod auth;
pub mod grpc;
mod http_client;
pub mod http_server;
pub mod login;
pub mod mcp;
mod runtime;
pub mod ws;

/// The byte buffer uploads are sent in.
pub use bytes::Bytes;
pub use grpc::GrpcTransport;
pub use http_client::HttpTransport;
pub use login::{LoginReply, LoginRequest, login_remote};
pub use runtime::{
    CoderClawRuntime, LocalTransport, RunStream, RunUpdate, RuntimeFuture, Transport, UpdateStream, connect,
};
pub use ws::WsTransport;
