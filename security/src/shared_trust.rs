//! Trust shared by a cluster's nodes: a key trusted or revoked on any
//! node is published to the cluster's database with its audit record in
//! one transaction, and every node applies the published changes to its
//! own trust store ([`crate::home::Home::sync_trust`]), which is what it
//! verifies packages against.

use crate::audit::{AuditError, AuditEvent, AuditSigning};
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
