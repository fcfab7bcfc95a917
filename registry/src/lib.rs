//! `coderclaw-registry`: the client side of the team registry.
//!
//! - [`api`]: the wire types and stable error codes, shared with the server
//!   (`coderclaw-registry-server`, which a client never links).
//! - [`client`]: the client, [`RegistryClient`].
//! - [`lockfile`]: reads and writes `.coderClaw/skills.lock`.
//! - [`cache`]: the client's offline cache and what it has seen (no rollback).
//! - [`registries`]: which registry a command talks to ([`Registry::choose`])
//!   and syncing the organisation policies it publishes.
//! - [`onboard`]: the keys a registry's namespaces publish, and confirming
//!   them by fingerprint before any is trusted.
//! - [`install`]: the secure install pipeline ([`Installer`]) into an
//!   [`InstallTarget`], the host's install gates.
//!
//! The registry is not trusted to vouch for itself: clients verify every
//! package's digest and signature against their own trust store.
//!
//! ```no_run
//! use coderclaw_registry::RegistryClient;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = RegistryClient::new("https://registry.example", None, None)?;
//! for hit in client.search("lint", None, None).await? {
//!     println!("{}", hit.id);
//! }
//! # Ok(()) }
//! ```

pub mod api;
pub mod cache;
pub mod client;
pub mod install;
pub mod lockfile;
pub mod onboard;
pub mod registries;

pub use api::{ApiError, ErrorCode};
pub use client::RegistryClient;
pub use install::{InstallError, InstallTarget, Installer};
pub use registries::Registry;
