//! `coderclaw-registry`: the team registry. A small hyper service a team
//! runs on one machine (`coderclaw registry serve`), its client, and the
//! client-side pieces the CLI installs with: the lockfile and the cache.
//!
//! - [`store`] holds namespaces, keys, scoped tokens, the package index
//!   (SQLite) and content-addressed package files.
//! - [`server`] is the HTTP API.
//! - [`client`] holds [`RegistryClient`].
//! - [`lockfile`] reads and writes `.coderClaw/skills.lock`.
//! - [`cache`] is the client's offline cache and what it has seen (no rollback).
//!
//! The registry is not trusted to vouch for itself: clients verify every
//! package's digest and signature against their own trust store.

pub mod api;
pub mod cache;
pub mod client;
pub mod lockfile;
pub mod server;
pub mod store;

pub use api::{ApiError, ErrorCode};
pub use client::RegistryClient;
pub use store::{RegistryStore, Scope};
