//! The cluster's shared trust: `trust add` and `trust revoke` on any node
//! publish the change, signed by that machine's device key, with its audit
//! record in the same transaction; every node applies the changes signed
//! by machines it accepts to its own trust store (see
//! `coderclaw_security::shared`).

use super::PgSharedState;
use super::audit::{AuditSql, append_once};
use coderclaw_core::clock::now_ms;
use coderclaw_security::audit::{AuditError, AuditEvent, AuditSigning};
use coderclaw_security::shared::{SharedTrust, SignedTrustChange};

/// The schema's trust table (migration 4): each change as signed (JSON).
/// `seq` is given under the audit log's lock, so changes become visible in
/// `seq` order and a node reading past its last `seq` misses none.
pub(super) const MIGRATION: &str = "
CREATE TABLE cluster_trust (
    seq BIGINT PRIMARY KEY,
    signed TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
";

/// Longest signed change read: a real one is a few hundred bytes.
const MAX_CHANGE: i32 = 8 << 10;

impl SharedTrust for PgSharedState {
    fn publish(
        &self,
        change: &SignedTrustChange,
        record: &AuditEvent,
        signing: &AuditSigning,
    ) -> Result<(), AuditError> {
        let signed = serde_json::to_string(change).map_err(|e| AuditError::Store {
            store: coderclaw_security::audit::AuditStore::name(self),
            message: format!("the trust change cannot be written: {e}"),
        })?;
        let (record, signing, batch) = (record.clone(), signing.clone(), uuid::Uuid::new_v4().to_string());
        self.run(move |c| {
            let (record, signing, batch, signed) = (record.clone(), signing.clone(), batch.clone(), signed.clone());
            Box::pin(async move {
                let sql = AuditSql::on(c).await?;
                let tx = c.client.transaction().await?;
                let (chained, fresh) = append_once(&tx, &sql, &[&record], &signing, &batch).await?;
                if fresh {
                    tx.execute(
                        "INSERT INTO cluster_trust (seq, signed, at_ms)
                         SELECT COALESCE(MAX(seq), 0) + 1, $1, $2 FROM cluster_trust",
                        &[&signed, &(now_ms() as i64)],
                    )
                    .await?;
                }
                // Else published by an attempt whose reply was lost.
                tx.commit().await?;
                signing.witness(&chained.heads);
                Ok(())
            })
        })
    }

    fn changes(&self, after: i64, limit: u32) -> Result<Vec<(i64, Result<SignedTrustChange, String>)>, AuditError> {
        let limit = i64::from(limit);
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT seq, CASE WHEN length(signed) <= $3 THEN signed END FROM cluster_trust WHERE seq > $1
                     ORDER BY seq LIMIT $2",
                    &[&after, &limit, &MAX_CHANGE],
                )
                .await
            })
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let change = match r.get::<_, Option<String>>(1) {
                    Some(text) => {
                        serde_json::from_str(&text).map_err(|e| format!("cluster_trust row {seq} is unreadable: {e}"))
                    }
                    None => Err(format!("cluster_trust row {seq} is longer than {MAX_CHANGE} bytes")),
                };
                (seq, change)
            })
            .collect())
    }
}
