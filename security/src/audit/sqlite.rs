//! The state directory's log: `audit.db`, SQLite (WAL), every commit
//! synced.

use super::chain::{AuditSigning, Chained};
use super::{AuditError, AuditEvent, AuditFilter, AuditRecord, AuditStore};
use rusqlite::{Connection, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq           INTEGER PRIMARY KEY,
    timestamp_ms  INTEGER NOT NULL,
    action        TEXT NOT NULL,
    user          TEXT,
    device        TEXT,
    session       TEXT,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    result        TEXT NOT NULL,
    reason        TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_user ON audit(user);
CREATE INDEX IF NOT EXISTS audit_action ON audit(action);
";

const COLUMNS: &str = "seq, timestamp_ms, action, user, device, session, resource_type, resource_id, result, reason, metadata, prev_hash, hash";

/// A log in one SQLite file. Several handles, in one process or several,
/// may append at once: appends serialise on SQLite's write lock, so the
/// chain stays linear.
pub(super) struct SqliteAuditStore {
    path: PathBuf,
    db: Mutex<Connection>,
}

impl SqliteAuditStore {
    /// Opens (creating) the file; each commit is on disk before it returns.
    pub(super) fn open(path: &Path) -> Result<(SqliteAuditStore, crate::sqlite::WalCheckpointer), AuditError> {
        let err = |source| AuditError::Db { path: path.to_path_buf(), source };
        let db = crate::sqlite::open(path, true, SCHEMA).map_err(err)?;
        let wal = crate::sqlite::WalCheckpointer::start(path, &db, "coderclaw-audit").map_err(err)?;
        Ok((SqliteAuditStore { path: path.to_path_buf(), db: Mutex::new(db) }, wal))
    }

    fn err(&self, source: rusqlite::Error) -> AuditError {
        AuditError::Db { path: self.path.clone(), source }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        timestamp_ms: r.get(1)?,
        action: r.get(2)?,
        user: r.get(3)?,
        device: r.get(4)?,
        session: r.get(5)?,
        resource_type: r.get(6)?,
        resource_id: r.get(7)?,
        result: r.get(8)?,
        reason: r.get(9)?,
        metadata: r.get(10)?,
        prev_hash: r.get(11)?,
        hash: r.get(12)?,
    })
}

fn no_rows_is_none<T>(r: rusqlite::Result<T>) -> rusqlite::Result<Option<T>> {
    r.map(Some).or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
}

impl AuditStore for SqliteAuditStore {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn append(&self, events: &[&AuditEvent], signing: &AuditSigning) -> Result<Chained, AuditError> {
        let mut db = self.lock();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.err(e))?;
        let last =
            no_rows_is_none(tx.query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            }))
            .map_err(|e| self.err(e))?;
        let chained = signing.chain(last, events, coderclaw_core::clock::now_ms() as i64);
        let mut insert = tx
            .prepare_cached(&format!(
                "INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ))
            .map_err(|e| self.err(e))?;
        for r in &chained.rows {
            insert
                .execute(params![
                    r.seq,
                    r.timestamp_ms,
                    r.action,
                    r.user,
                    r.device,
                    r.session,
                    r.resource_type,
                    r.resource_id,
                    r.result,
                    r.reason,
                    r.metadata,
                    r.prev_hash,
                    r.hash
                ])
                .map_err(|e| self.err(e))?;
        }
        drop(insert);
        tx.commit().map_err(|e| self.err(e))?;
        Ok(chained)
    }

    fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        let db = self.lock();
        let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(u) = &filter.user {
            sql.push_str(" AND user = ?");
            args.push(u.clone().into());
        }
        if let Some(a) = &filter.action {
            sql.push_str(" AND action = ?");
            args.push(a.clone().into());
        }
        if let Some(t) = filter.since_ms {
            sql.push_str(" AND timestamp_ms >= ?");
            args.push(t.into());
        }
        if let Some(r) = filter.result {
            sql.push_str(" AND result = ?");
            args.push(r.as_str().to_owned().into());
        }
        sql.push_str(" ORDER BY seq DESC");
        if let Some(n) = filter.limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        let mut stmt = db.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), row_to_record).map_err(|e| self.err(e))?;
        let mut out: Vec<AuditRecord> = rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
        out.reverse();
        Ok(out)
    }

    fn scan(&self, each: &mut dyn FnMut(AuditRecord) -> Result<(), AuditError>) -> Result<(), AuditError> {
        let db = self.lock();
        let mut stmt = db.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq")).map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], row_to_record).map_err(|e| self.err(e))?;
        for row in rows {
            each(row.map_err(|e| self.err(e))?)?;
        }
        Ok(())
    }

    fn latest_checkpoint(&self) -> Result<Option<String>, AuditError> {
        let db = self.lock();
        no_rows_is_none(db.query_row(
            "SELECT metadata FROM audit WHERE action = 'audit.checkpoint' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        ))
        .map_err(|e| self.err(e))
    }
}
