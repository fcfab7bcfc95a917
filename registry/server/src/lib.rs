//! `coderclaw-registry-server`: the team registry a team runs on one machine
//! (`coderclaw registry serve`).
//!
//! - [`store`]: [`RegistryStore`] holds namespaces, keys, scoped tokens, the
//!   package index (SQLite) and content-addressed package files.
//! - [`server`]: the HTTP API ([`server::serve`], [`server::RegistryConfig`]).
//!
//! The wire types and the client are in `coderclaw-registry`, so a client
//! never links this crate. The registry is not trusted to vouch for itself:
//! clients verify every package's digest and signature against their own
//! trust store.
//!
//! ```no_run
//! use coderclaw_registry_server::{RegistryStore, Scope};
//!
//! # fn demo() -> Result<(), coderclaw_registry::ApiError> {
//! let store = RegistryStore::open("registry-data".as_ref())?;
//! let (token, _info) = store.create_token("team", Scope::Read, None)?;
//! println!("{token}");
//! # Ok(()) }
//! ```

pub mod server;
pub mod store;

pub use store::{RegistryStore, Scope};
