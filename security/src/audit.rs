//! The tamper-evident audit log: every security-relevant action (install,
//! trust change, run decision, ...) is one record in SQLite (`audit.db` in
//! the state directory), committed durably before the action is reported.
//!
//! Each record stores the SHA-256 of the previous record's hash and of its
//! own fields, so editing, deleting or reordering any stored record breaks
//! the chain at that record, and [`AuditLog::verify`] names it. Deleting
//! the newest records leaves a shorter chain that still verifies: catching
//! that needs the head (seq, hash) kept somewhere the attacker cannot write.
//!
//! Secrets never enter the log: metadata values under keys that look like
//! credentials are replaced by `[redacted]`. Control characters in every
//! string are escaped, so a log line cannot forge another or move the cursor.

use rusqlite::{Connection, TransactionBehavior, params};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditResult {
    /// Allowed and done.
    Allowed,
    /// Refused by a security decision.
    Denied,
    /// Failed for another reason.
    Error,
}

impl AuditResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }

    /// Parses `allowed`, `denied` or `error`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allowed" => Some(Self::Allowed),
            "denied" => Some(Self::Denied),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
}

/// An action to record. Build with [`AuditEvent::new`] and the setters.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    action: String,
    result: AuditResult,
    user: Option<String>,
    device: Option<String>,
    session: Option<String>,
    resource_type: String,
    resource_id: String,
    reason: String,
    metadata: serde_json::Value,
}

impl AuditEvent {
    /// `action` (e.g. `skill.install`) on a resource (e.g. `skill`, `team/x`).
    pub fn new(action: &str, result: AuditResult, resource_type: &str, resource_id: &str) -> Self {
        Self {
            action: action.to_owned(),
            result,
            user: None,
            device: None,
            session: None,
            resource_type: resource_type.to_owned(),
            resource_id: resource_id.to_owned(),
            reason: String::new(),
            metadata: serde_json::Value::Null,
        }
    }
    /// Who acted.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
    /// From which device.
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }
    /// In which session.
    pub fn session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }
    /// Why it was allowed, denied or failed.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }
    /// Extra facts (JSON). Credential-like keys are redacted.
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = metadata;
        self
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// What was done.
    pub action: String,
    /// Who.
    pub user: Option<String>,
    /// Device.
    pub device: Option<String>,
    /// Session.
    pub session: Option<String>,
    /// Kind of resource.
    pub resource_type: String,
    /// Which resource.
    pub resource_id: String,
    /// allowed | denied | error.
    pub result: String,
    /// Why.
    pub reason: String,
    /// Extra facts (JSON text).
    pub metadata: String,
    /// Hash of the previous record (hex; 64 zeros for the first).
    pub prev_hash: String,
    /// This record's hash (hex).
    pub hash: String,
}

/// Which records [`AuditLog::query`] returns.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this user.
    pub user: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only records at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only this result.
    pub result: Option<AuditResult>,
    /// At most this many (the newest).
    pub limit: Option<usize>,
}

/// Audit log failures.
#[derive(Debug, Error)]
pub enum AuditError {
    /// The database failed.
    #[error("audit log {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// The chain is broken at `seq`.
    #[error("audit record {seq} has been tampered with: {problem}")]
    Broken {
        /// The first bad record.
        seq: i64,
        /// What does not match.
        problem: String,
    },
}

/// The audit log of one state directory.
pub struct AuditLog {
    path: PathBuf,
    db: Mutex<Connection>,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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

/// Escapes control characters (including newlines and ESC) as `\u{..}`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["token", "password", "passwd", "secret", "private", "credential", "api_key", "apikey"]
        .iter()
        .any(|s| k.contains(s))
}

/// Redacts credential-like keys and escapes every string, recursively.
fn sanitise(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(escape(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(sanitise).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| {
                    let v = if looks_secret(&k) { Value::String("[redacted]".into()) } else { sanitise(v) };
                    (escape(&k), v)
                })
                .collect(),
        ),
        other => other,
    }
}

impl AuditRecord {
    /// The hash this record's fields (and its link to the previous record)
    /// give: what `hash` must be. For tools that check a log themselves.
    pub fn computed_hash(&self) -> String {
        record_hash(self)
    }
}

/// The record's hash: SHA-256 over the previous hash and every field,
/// each length-prefixed so no two field lists encode alike.
fn record_hash(r: &AuditRecord) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(r.prev_hash.as_bytes());
    field(&r.seq.to_le_bytes());
    field(&r.timestamp_ms.to_le_bytes());
    for s in [&r.action, &r.resource_type, &r.resource_id, &r.result, &r.reason, &r.metadata] {
        field(s.as_bytes());
    }
    for s in [&r.user, &r.device, &r.session] {
        match s {
            Some(s) => field(format!("+{s}").as_bytes()),
            None => field(b"-"),
        }
    }
    hex::encode(h.finalize())
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

const COLUMNS: &str = "seq, timestamp_ms, action, user, device, session, resource_type, resource_id, result, reason, metadata, prev_hash, hash";

impl AuditLog {
    /// Opens (creating) the log at `path`. Several handles, in one process
    /// or several, may append at once: appends serialise on SQLite's write
    /// lock, so the chain stays linear.
    pub fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_path_buf();
        let err = |source| AuditError::Db { path: path.clone(), source };
        // Durable: a record is on disk before `append` returns.
        let db = crate::sqlite::open(&path, true, SCHEMA).map_err(err)?;
        Ok(AuditLog { path, db: Mutex::new(db) })
    }

    fn db_err(&self, source: rusqlite::Error) -> AuditError {
        AuditError::Db { path: self.path.clone(), source }
    }

    /// Appends one record, chained to the last, and commits it durably.
    pub fn append(&self, e: AuditEvent) -> Result<AuditRecord, AuditError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.db_err(e))?;
        let last: Option<(i64, String)> = tx
            .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
            .map_err(|e| self.db_err(e))?;
        let (seq, prev_hash) = match last {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, GENESIS.to_owned()),
        };
        let timestamp_ms = coderclaw_core::clock::now_ms() as i64;
        let mut record = AuditRecord {
            seq,
            timestamp_ms,
            action: escape(&e.action),
            user: e.user.as_deref().map(escape),
            device: e.device.as_deref().map(escape),
            session: e.session.as_deref().map(escape),
            resource_type: escape(&e.resource_type),
            resource_id: escape(&e.resource_id),
            result: e.result.as_str().to_owned(),
            reason: escape(&e.reason),
            metadata: sanitise(e.metadata).to_string(),
            prev_hash,
            hash: String::new(),
        };
        record.hash = record_hash(&record);
        tx.execute(
            &format!("INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
            params![
                record.seq,
                record.timestamp_ms,
                record.action,
                record.user,
                record.device,
                record.session,
                record.resource_type,
                record.resource_id,
                record.result,
                record.reason,
                record.metadata,
                record.prev_hash,
                record.hash
            ],
        )
        .map_err(|e| self.db_err(e))?;
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(record)
    }

    /// Records matching `filter`, oldest first.
    pub fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut stmt = db.prepare(&sql).map_err(|e| self.db_err(e))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), row_to_record).map_err(|e| self.db_err(e))?;
        let mut out: Vec<AuditRecord> = rows.collect::<Result<_, _>>().map_err(|e| self.db_err(e))?;
        out.reverse();
        Ok(out)
    }

    /// Recomputes the whole chain. Returns the number of records, or the
    /// first record that does not match.
    pub fn verify(&self) -> Result<u64, AuditError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = db.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq")).map_err(|e| self.db_err(e))?;
        let rows = stmt.query_map([], row_to_record).map_err(|e| self.db_err(e))?;
        let mut expected_prev = GENESIS.to_owned();
        let mut count = 0;
        for (expected_seq, row) in (1..).zip(rows) {
            let r = row.map_err(|e| self.db_err(e))?;
            let broken = |problem: String| AuditError::Broken { seq: r.seq, problem };
            if r.seq != expected_seq {
                return Err(AuditError::Broken {
                    seq: expected_seq,
                    problem: format!("record {expected_seq} is missing (the next stored record is {})", r.seq),
                });
            }
            if r.prev_hash != expected_prev {
                return Err(broken("its link to the previous record does not match".into()));
            }
            if record_hash(&r) != r.hash {
                return Err(broken("its contents do not match its hash".into()));
            }
            expected_prev = r.hash.clone();
            count += 1;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_secrets_redacted() {
        let dir = std::env::temp_dir().join(format!("coderclaw-audit-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = AuditLog::open(dir.join("audit.db")).unwrap();
        let r = log
            .append(
                AuditEvent::new("skill.install", AuditResult::Denied, "skill", "team/x\n[fake] allowed")
                    .reason("bad \x1b[31mred\x1b[0m")
                    .metadata(serde_json::json!({"token": "ghp_secret", "nested": {"Password": "p"}, "ok": "a\tb"})),
            )
            .unwrap();
        assert_eq!(r.resource_id, "team/x\\u{a}[fake] allowed");
        assert_eq!(r.reason, "bad \\u{1b}[31mred\\u{1b}[0m");
        assert!(!r.metadata.contains("ghp_secret") && !r.metadata.contains("\"p\""), "{}", r.metadata);
        assert!(r.metadata.contains("a\\\\u{9}b"), "{}", r.metadata);
        assert_eq!(log.verify().unwrap(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
