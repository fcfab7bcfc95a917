//! The cluster's installed skills: a skill installed (or removed) on any
//! node is published here, its package bytes stored once by digest, and
//! every node installs it too, after verifying the package against its
//! own trust (see `coderclaw_security::shared`).

use super::PgSharedState;
use coderclaw_core::Digest;
use coderclaw_core::clock::now_ms;
use coderclaw_security::audit::{AuditError, AuditStore};
use coderclaw_security::shared::{SharedSkills, SkillChange};

/// Largest package read back (as the registry client's limit).
const MAX_PACKAGE: i32 = 256 << 20;

/// The schema's skill tables (migration 6). `seq` is given under an
/// advisory lock, so changes become visible in `seq` order.
pub(super) const MIGRATION: &str = "
CREATE TABLE cluster_packages (
    digest TEXT PRIMARY KEY,
    bytes BYTEA NOT NULL
);
CREATE TABLE cluster_skills (
    seq BIGINT PRIMARY KEY,
    change TEXT NOT NULL,
    skill_id TEXT NOT NULL,
    digest TEXT,
    at_ms BIGINT NOT NULL,
    batch TEXT NOT NULL UNIQUE
);
";

impl SharedSkills for PgSharedState {
    fn publish_skill(&self, change: &SkillChange, package: Option<&[u8]>) -> Result<(), AuditError> {
        let (kind, id, digest) = match change {
            SkillChange::Install { id, digest } => ("install", id.clone(), Some(digest.to_hex())),
            SkillChange::Remove { id } => ("remove", id.clone(), None),
        };
        let (bytes, batch) = (package.map(<[u8]>::to_vec), uuid::Uuid::new_v4().to_string());
        // Each attempt is whole, and stored once: the bytes by digest, the
        // change by its batch id (an attempt whose reply was lost is not
        // published again after a later change).
        self.run(move |c| {
            let (id, digest, bytes, batch) = (id.clone(), digest.clone(), bytes.clone(), batch.clone());
            Box::pin(async move {
                let tx = c.client.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock(7421003)", &[]).await?;
                if let (Some(digest), Some(bytes)) = (&digest, &bytes) {
                    tx.execute(
                        "INSERT INTO cluster_packages (digest, bytes) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
                        &[digest, bytes],
                    )
                    .await?;
                }
                tx.execute(
                    "INSERT INTO cluster_skills (seq, change, skill_id, digest, at_ms, batch)
                     SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3, $4, $5 FROM cluster_skills
                     ON CONFLICT (batch) DO NOTHING",
                    &[&kind, &id, &digest, &(now_ms() as i64), &batch],
                )
                .await?;
                tx.commit().await
            })
        })
    }

    fn skill_changes(&self, after: i64, limit: u32) -> Result<Vec<(i64, SkillChange)>, AuditError> {
        let limit = i64::from(limit);
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT seq, change, skill_id, digest FROM cluster_skills WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &limit],
                )
                .await
            })
        })?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let (kind, id, digest): (String, String, Option<String>) = (r.get(1), r.get(2), r.get(3));
                let bad = |problem: String| AuditError::Store {
                    store: self.name(),
                    message: format!("cluster_skills row {seq} is unreadable: {problem}"),
                };
                let change = match (kind.as_str(), digest) {
                    ("install", Some(hex)) => {
                        let digest = Digest::from_hex(&hex).ok_or_else(|| bad(format!("`{hex}` is not a digest")))?;
                        SkillChange::Install { id, digest }
                    }
                    ("remove", _) => SkillChange::Remove { id },
                    (other, _) => return Err(bad(format!("unknown change `{other}`"))),
                };
                Ok((seq, change))
            })
            .collect()
    }

    fn package(&self, digest: &Digest) -> Result<Option<Vec<u8>>, AuditError> {
        let hex = digest.to_hex();
        let found = self.read(move |c| {
            let hex = hex.clone();
            Box::pin(async move {
                let sql = "SELECT CASE WHEN length(bytes) <= $2 THEN bytes END FROM cluster_packages WHERE digest = $1";
                Ok(c.query_opt(sql, &[&hex, &MAX_PACKAGE]).await?.map(|r| r.get::<_, Option<Vec<u8>>>(0)))
            })
        })?;
        match found {
            Some(None) => Err(AuditError::Store {
                store: self.name(),
                message: format!("the cluster's package {digest} is larger than {MAX_PACKAGE} bytes: not read"),
            }),
            other => Ok(other.flatten()),
        }
    }
}
