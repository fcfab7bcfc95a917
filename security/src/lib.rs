//! `coderclaw-security`: who is calling, what they may do, and the record of
//! what was decided.
//!
//! - [`identity`]: local users (argon2), API tokens, sessions and devices in
//!   `identity.db`; [`oidc`] verifies OIDC ID tokens against a JWKS.
//! - [`security`]: [`Security`], the one service, split by job: `authn`
//!   (subjects, logins, sessions), `authz` (decide, check, require), `admin`
//!   (users, tokens, devices, sessions: check + act + audit in one call),
//!   `install` (install gates), `policy_files` (the policies in force,
//!   keeping the last good version of a broken file) and `device` (this
//!   machine's device key).
//! - [`home`]: the state directory (keys, trust store, installed packages).
//! - [`audit`]: the hash-chained, append-only audit log.
//!
//! The decision itself is the pure function in `coderclaw_core::decision`;
//! this crate gathers the facts it needs and records what it said.
//!
//! ```no_run
//! use coderclaw_security::Security;
//! use coderclaw_security::home::Home;
//! use std::sync::Arc;
//!
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let home = Arc::new(Home::open(std::env::var("CODERCLAW_HOME")?)?);
//! // The configuration, the organisation policy and this repository's policy.
//! let security = Security::open(home, Some("./repo".as_ref()))?;
//! let caller = security.subject(None)?; // the local user, without a session
//! println!("{} acts with roles {:?}", caller.user, caller.roles);
//! # Ok(()) }
//! ```

mod admin;
pub mod audit;
mod authn;
mod authz;
mod device;
pub mod home;
pub mod identity;
mod install;
pub mod oidc;
mod policy_files;
pub mod security;
pub mod shared;
pub mod sqlite;

pub use authz::{Queued, QueuedCheck};
pub use security::{Security, SecurityError};
