//! The cluster's shared trust: `trust add` and `trust revoke` on any node
//! publish the change here, with its audit record in the same
//! transaction, and every node applies what was published to its own
//! trust store (see `coderclaw_security::shared`).

use super::PgSharedState;
use super::audit::{AuditSql, append_once};
use coderclaw_core::clock::now_ms;
use coderclaw_core::keys::PublicKey;
use coderclaw_security::audit::{AuditError, AuditEvent, AuditSigning, AuditStore};
use coderclaw_security::shared::{SharedTrust, TrustChange};

/// The schema's trust table (migration 4). `seq` is given under the
/// audit log's lock, so changes become visible in `seq` order and a node
/// reading past its last `seq` misses none.
pub(super) const MIGRATION: &str = "
CREATE TABLE cluster_trust (
    seq BIGINT PRIMARY KEY,
    change TEXT NOT NULL,
    key_id TEXT NOT NULL,
    namespace TEXT,
    public_key TEXT,
    at_ms BIGINT NOT NULL
);
";

impl SharedTrust for PgSharedState {
    fn publish(&self, change: &TrustChange, record: &AuditEvent, signing: &AuditSigning) -> Result<(), AuditError> {
        let (kind, key_id, namespace, public_key) = match change {
            TrustChange::Add { namespace, key } => {
                ("add", key.id().to_string(), Some(namespace.clone()), Some(key.to_string()))
            }
            TrustChange::Revoke { key_id } => ("revoke", key_id.clone(), None, None),
        };
        let (record, signing, batch) = (record.clone(), signing.clone(), uuid::Uuid::new_v4().to_string());
        self.run(move |c| {
            let (record, signing, batch) = (record.clone(), signing.clone(), batch.clone());
            let (kind, key_id, namespace, public_key) = (kind, key_id.clone(), namespace.clone(), public_key.clone());
            Box::pin(async move {
                let sql = AuditSql::on(c).await?;
                let tx = c.client.transaction().await?;
                let (chained, fresh) = append_once(&tx, &sql, &[&record], &signing, &batch).await?;
                if !fresh {
                    // Published by an attempt whose reply was lost.
                    tx.commit().await?;
                    return Ok(());
                }
                tx.execute(
                    "INSERT INTO cluster_trust (seq, change, key_id, namespace, public_key, at_ms)
                     SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3, $4, $5 FROM cluster_trust",
                    &[&kind, &key_id, &namespace, &public_key, &(now_ms() as i64)],
                )
                .await?;
                tx.commit().await?;
                signing.witness(&chained.heads);
                Ok(())
            })
        })
    }

    fn changes(&self, after: i64, limit: u32) -> Result<Vec<(i64, TrustChange)>, AuditError> {
        let limit = i64::from(limit);
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT seq, change, key_id, namespace, public_key FROM cluster_trust WHERE seq > $1
                     ORDER BY seq LIMIT $2",
                    &[&after, &limit],
                )
                .await
            })
        })?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let (kind, key_id): (String, String) = (r.get(1), r.get(2));
                let (namespace, public_key): (Option<String>, Option<String>) = (r.get(3), r.get(4));
                let bad = |problem: String| AuditError::Store {
                    store: self.name(),
                    message: format!("cluster_trust row {seq} is unreadable: {problem}"),
                };
                let change = match (kind.as_str(), namespace, public_key) {
                    ("add", Some(namespace), Some(key)) => {
                        let key = PublicKey::parse(&key).map_err(|e| bad(e.to_string()))?;
                        if key.id().as_str() != key_id {
                            return Err(bad(format!("its key's id is {}, not {key_id}", key.id())));
                        }
                        TrustChange::Add { namespace, key }
                    }
                    ("revoke", ..) => TrustChange::Revoke { key_id },
                    (other, ..) => return Err(bad(format!("unknown change `{other}`"))),
                };
                Ok((seq, change))
            })
            .collect()
    }
}
