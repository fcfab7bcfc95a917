//! What a cluster's nodes share through its database besides tasks,
//! identities and the audit log, each node applying the published changes
//! to its own state directory:
//!
//! - **trust**: a key trusted or revoked on any node is published, signed
//!   by that machine's device key, with its audit record in one
//!   transaction ([`crate::home::Home::sync_trust`]); each node applies
//!   only changes signed by the machines its `cluster.nodeKeys` lists (and
//!   its own), and verifies packages against its own trust store;
//! - **installed skills**: a skill installed or removed on any node is
//!   published with its package bytes ([`crate::home::Home::sync_skills`]);
//!   each node installs it only once the package verifies against its own
//!   trust.

use crate::audit::{AuditError, AuditEvent, AuditSigning};
use coderclaw_core::Digest;

pub use coderclaw_core::trust_change::{SignedTrustChange, TrustChange};

/// Where a cluster's trust changes are kept, in order.
pub trait SharedTrust: Send + Sync {
    /// Stores `change` and its audit record `record` (chained into the
    /// cluster's log, signed by `signing`) in one transaction, ordered
    /// after every change published before.
    fn publish(
        &self,
        change: &SignedTrustChange,
        record: &AuditEvent,
        signing: &AuditSigning,
    ) -> Result<(), AuditError>;
    /// The changes published after position `after` (0: all), in order,
    /// each with its position, or why the row there cannot be read; at
    /// most `limit`.
    #[allow(clippy::type_complexity)]
    fn changes(&self, after: i64, limit: u32) -> Result<Vec<(i64, Result<SignedTrustChange, String>)>, AuditError>;
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
