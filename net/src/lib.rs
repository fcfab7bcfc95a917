//! `coderclaw-net`: the HTTP plumbing the host's task API, the OIDC key
//! fetcher and the team registry share, so each of them only holds its own
//! routes and types.
//!
//! - [`tls`]: the one rustls configuration for clients (web PKI roots plus an
//!   optional CA file) and for servers (a PEM certificate and key).
//! - [`client`]: [`HttpClient`], an HTTP/1.1 client for one base URL that
//!   keeps connections alive.
//! - [`endpoint`]: [`Endpoint`], a server's address parsed from a URL of a
//!   protocol's schemes, and the one way clients connect (TCP, then TLS).
//! - [`server`]: [`serve`] (accept loop, TLS, graceful stop) and helpers for
//!   JSON replies, bounded bodies, bearer tokens and query strings.

pub mod client;
pub mod endpoint;
pub mod server;
pub mod throttle;
pub mod tls;

pub use client::{ClientError, HttpClient};
pub use endpoint::Endpoint;
pub use server::{Body, RunningServer, serve};
