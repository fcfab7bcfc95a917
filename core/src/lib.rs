//! Pure coderclaw types shared by the host, the CLI, the policy engine and
//! the registry: capability grants, resource limits, HTTP host patterns and
//! the units they are written in; the skill manifest, the signed package
//! format and signing keys; roles and permissions. Nothing here depends on
//! wasmtime.

pub mod audit_head;
pub mod clock;
pub mod config_edit;
pub mod decision;
pub mod digest;
pub mod events;
pub mod fsutil;
pub mod grant;
pub mod input_schema;
pub mod keys;
pub mod manifest;
pub mod package;
pub mod pattern;
pub mod policy;
pub mod principal;
pub mod rbac;
pub mod runtime_config;
pub mod shell_policy;
pub mod signed_policy;
pub mod task;
pub mod task_link;
pub mod trust;
pub mod trust_change;
pub mod units;

pub use digest::Digest;
pub use grant::{Access, DirGrant, Grant, GrantBuilder, GrantError, Limits};
pub use pattern::{HostPattern, PatternError};
pub use shell_policy::{Confinement, ProgramRule};
pub use trust::TrustLevel;
