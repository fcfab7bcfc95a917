//! What a cluster's nodes share through its database besides tasks,
//! identities and the audit log, each node applying the published changes
//! to its own state directory:
//!
//! - **trust**: a key trusted or revoked on any node is published with its
//!   audit record in one transaction ([`crate::home::Home::sync_trust`]);
//!   each node verifies packages against its own trust store;
//! - **installed skills**: a skill installed or removed on any node is
//!   published with its package bytes ([`crate::home::Home::sync_skills`]);
//!   each node installs it only once the package verifies against its own
//!   trust.

use crate::audit::{AuditError, AuditEvent, AuditSigning};
use coderclaw_core::Digest;
use coderclaw_core::keys::PublicKey;

/// One change to a cluster's trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustChange {
    /// `key` may sign packages of `namespace`.
    Add {
        /// The namespace.
        namespace: String,
        /// The key.
        key: PublicKey,
    },
    /// The key with this id is revoked: its signatures are refused.
    Revoke {
        /// The key's id.
        key_id: String,
    },
}

/// Where a cluster's trust changes are kept, in order.
pub trait SharedTrust: Send + Sync {
    /// Stores `change` and its audit record `record` (chained into the
    /// cluster's log, signed by `signing`) in one transaction, ordered
    /// after every change published before.
    fn publish(&self, change: &TrustChange, record: &AuditEvent, signing: &AuditSigning) -> Result<(), AuditError>;
    /// The changes published after position `after` (0: all), in order,
    /// each with its position; at most `limit`.
    fn changes(&self, after: i64, limit: u32) -> Result<Vec<(i64, TrustChange)>, AuditError>;
}

/// One change to a cluster's installed skills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkillChange {
    /// Skill `id` is the package with this digest (published with it).
    Install {
        /// The skill.
        id: String,
        /// Its package's digest.
        digest: Digest,
    },
    /// Skill `id` is removed.
    Remove {
        /// The skill.
        id: String,
    },
}

/// Where a cluster's installed skills are published, in order, with the
/// packages' bytes by digest.
pub trait SharedSkills: Send + Sync {
    /// Publishes `change`, with the package's bytes for an install,
    /// ordered after every change published before.
    fn publish_skill(&self, change: &SkillChange, package: Option<&[u8]>) -> Result<(), AuditError>;
    /// The changes published after position `after` (0: all), in order,
    /// each with its position; at most `limit`.
    fn skill_changes(&self, after: i64, limit: u32) -> Result<Vec<(i64, SkillChange)>, AuditError>;
    /// The bytes of the package with `digest`, if published.
    fn package(&self, digest: &Digest) -> Result<Option<Vec<u8>>, AuditError>;
}
