//! The tamper-evident audit log: every security-relevant action (install,
//! trust change, run decision, ...) is one record in SQLite (`audit.db` in
//! the state directory), committed durably before the action is reported.
//!
//! Each record stores the SHA-256 of the previous record's hash and of its
//! own fields, so editing, deleting or reordering any stored record breaks
//! the chain at that record, and [`AuditLog::verify`] names it.
//!
//! A chain alone cannot show that the newest records were deleted, or that
//! every record was rewritten and the chain recomputed. So the log is
//! checkpointed: every [`CHECKPOINT_EVERY`] records and after every trust,
//! policy, device or registry change, an `audit.checkpoint` record carries
//! the previous record's (seq, hash) signed with the device key
//! ([`SignedHead`]); and each signed head is witnessed outside the file (a
//! file the admin names, the team registry). [`AuditLog::verify_against`]
//! checks the chain, every checkpoint's signature and key, and the
//! witnessed heads: a witnessed head beyond the last record is truncation,
//! one whose hash differs is a rewrite, reported at that record.
//!
//! Secrets never enter the log: metadata values under keys that look like
//! credentials are replaced by `[redacted]`. Control characters in every
//! string are escaped, so a log line cannot forge another or move the cursor.

use coderclaw_core::audit_head::SignedHead;
use coderclaw_core::keys::SecretKey;
use rusqlite::{Connection, TransactionBehavior, params};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use thiserror::Error;
use tokio::sync::oneshot;

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
    /// Extra facts (JSON). Credential-like keys are redacted. Objects add
    /// to the facts already set (the caller's client, say).
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        match (&mut self.metadata, metadata) {
            (serde_json::Value::Object(have), serde_json::Value::Object(more)) => have.extend(more),
            (have, more) => *have = more,
        }
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
    /// The commit that carried this record failed without an answer.
    #[error("the audit record was not written: the commit carrying it failed unexpectedly")]
    Lost,
    /// The writer thread could not be started.
    #[error("audit log {}: cannot start its writer thread: {source}", path.display())]
    Thread {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Records a witness saw are gone.
    #[error("the audit log was cut short: {witness} saw record {witnessed}, the log ends at record {last}")]
    Truncated {
        /// Who saw it.
        witness: String,
        /// The record it saw.
        witnessed: u64,
        /// The last record present.
        last: u64,
    },
}

/// Records between two automatic checkpoints.
pub const CHECKPOINT_EVERY: i64 = 100;

/// Whether a record of `action` is followed by a checkpoint at once.
fn checkpoints_after(action: &str) -> bool {
    ["trust.", "policy.", "device.", "registry.", "key."].iter().any(|p| action.starts_with(p))
}

/// Whether `r` is followed by a checkpoint in the same transaction (when
/// checkpoints are enabled).
fn checkpoint_due(r: &AuditRecord) -> bool {
    r.action != "audit.checkpoint"
        && (r.seq % CHECKPOINT_EVERY == 0 || checkpoints_after(&r.action) || r.action == "audit.checkpoint.request")
}

/// What signs checkpoints, and where their heads are witnessed.
struct Checkpointer {
    key: SecretKey,
    device: String,
    witness_file: Option<PathBuf>,
}

/// The audit log of one state directory.
///
/// Appends go to one writer thread per handle that commits whatever is
/// queued in one transaction and one fsync (group commit), in queue order,
/// one chain; each caller learns its own record only once it is on disk.
pub struct AuditLog {
    log: Arc<Log>,
    /// None only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    _wal: crate::sqlite::WalCheckpointer,
}

impl Drop for AuditLog {
    /// Waits for the writer to commit what is queued and let go of the
    /// database, so that the file is closed (its WAL checkpointed) when the
    /// last handle is gone, as callers copying or replacing it expect.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// What the writer thread and the readers share.
struct Log {
    path: PathBuf,
    db: Mutex<Connection>,
    checkpoints: Mutex<Option<Checkpointer>>,
}

/// One record to append, and who waits for it.
struct Job {
    event: AuditEvent,
    reply: Reply,
}

enum Reply {
    /// A thread blocked in [`AuditLog::append`].
    Blocking(mpsc::SyncSender<Result<AuditRecord, AuditError>>),
    /// A future from [`AuditLog::append_durable`].
    Async(oneshot::Sender<Result<AuditRecord, AuditError>>),
}

impl Reply {
    fn send(self, result: Result<AuditRecord, AuditError>) {
        let _ = match self {
            Reply::Blocking(tx) => tx.send(result).map_err(|_| ()),
            Reply::Async(tx) => tx.send(result).map_err(|_| ()),
        };
    }
}

/// Most records committed in one transaction.
const MAX_BATCH: usize = 4096;

/// Commits what is queued, batch after batch, until every handle is gone.
/// A batch whose commit panics is answered with [`AuditError::Lost`]
/// (its senders dropped) and the writer goes on.
fn writer_loop(log: Arc<Log>, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let events: Vec<&AuditEvent> = batch.iter().map(|j| &j.event).collect();
        let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| log.commit_batch(&events)));
        drop(events);
        match committed {
            Ok(results) => batch.into_iter().zip(results).for_each(|(job, r)| job.reply.send(r)),
            Err(_) => tracing::error!(records = batch.len(), "audit commit panicked: its records are lost"),
        }
    }
}

/// What [`AuditLog::verify_against`] found in an intact log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records in the log.
    pub records: u64,
    /// Signed checkpoints among them.
    pub checkpoints: u64,
    /// The record the newest checkpoint signs.
    pub last_checkpoint: Option<u64>,
    /// The key the checkpoints are signed with.
    pub key: Option<String>,
    /// Witnessed heads checked, by witness: the newest record each saw.
    pub witnessed: Vec<(String, u64)>,
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
        let wal = crate::sqlite::WalCheckpointer::start(&path, &db, "coderclaw-audit").map_err(err)?;
        let log = Arc::new(Log { path, db: Mutex::new(db), checkpoints: Mutex::new(None) });
        let (jobs, queue) = mpsc::channel();
        let shared = log.clone();
        let writer = std::thread::Builder::new()
            .name("coderclaw-audit-writer".into())
            .spawn(move || writer_loop(shared, queue))
            .map_err(|e| AuditError::Thread { path: log.path.clone(), source: e })?;
        Ok(AuditLog { log, jobs: Some(jobs), writer: Some(writer), _wal: wal })
    }

    /// From now on, checkpoints are signed with `key` as device `device`.
    pub fn enable_checkpoints(&self, key: SecretKey, device: &str) {
        let mut c = self.log.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        let witness_file = c.take().and_then(|c| c.witness_file);
        *c = Some(Checkpointer { key, device: device.to_owned(), witness_file });
    }

    /// Appends each checkpoint's signed head, one JSON line, to `file`.
    pub fn set_witness_file(&self, file: Option<PathBuf>) {
        if let Some(c) = self.log.checkpoints.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            c.witness_file = file;
        }
    }

    /// The newest checkpoint's signed head, if any.
    pub fn latest_head(&self) -> Result<Option<SignedHead>, AuditError> {
        let db = self.log.db.lock().unwrap_or_else(|p| p.into_inner());
        let meta: Option<String> = db
            .query_row(
                "SELECT metadata FROM audit WHERE action = 'audit.checkpoint' ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
            .map_err(|e| self.db_err(e))?;
        Ok(meta.and_then(|m| serde_json::from_str(&m).ok()))
    }

    /// Writes a checkpoint now (the head of the log as it is).
    pub fn checkpoint(&self) -> Result<Option<SignedHead>, AuditError> {
        self.append(AuditEvent::new("audit.checkpoint.request", AuditResult::Allowed, "audit", "-"))?;
        self.latest_head()
    }

    /// Appends one record, chained to the last, and returns once it is on
    /// disk. Appends from several threads at once share one transaction
    /// and one fsync.
    pub fn append(&self, e: AuditEvent) -> Result<AuditRecord, AuditError> {
        let _span = tracing::debug_span!("audit.append").entered();
        let (tx, rx) = mpsc::sync_channel(1);
        self.queue(Job { event: e, reply: Reply::Blocking(tx) })?;
        rx.recv().unwrap_or(Err(AuditError::Lost))
    }

    /// [`AuditLog::append`] without blocking a thread: queued now, in
    /// order with every other append; the future resolves once the record
    /// is on disk.
    pub fn append_durable(
        &self,
        e: AuditEvent,
    ) -> impl std::future::Future<Output = Result<AuditRecord, AuditError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let queued = self.queue(Job { event: e, reply: Reply::Async(tx) });
        async move {
            queued?;
            rx.await.unwrap_or(Err(AuditError::Lost))
        }
    }

    fn queue(&self, job: Job) -> Result<(), AuditError> {
        self.jobs.as_ref().ok_or(AuditError::Lost)?.send(job).map_err(|_| AuditError::Lost)
    }

    fn db_err(&self, source: rusqlite::Error) -> AuditError {
        self.log.db_err(source)
    }
}

impl Log {
    fn db_err(&self, source: rusqlite::Error) -> AuditError {
        AuditError::Db { path: self.path.clone(), source }
    }

    /// Commits `events` in one transaction. If that fails, each event is
    /// tried alone, so every caller gets its own record or its own error.
    fn commit_batch(&self, events: &[&AuditEvent]) -> Vec<Result<AuditRecord, AuditError>> {
        let _span = tracing::debug_span!("audit.commit", records = events.len()).entered();
        if events.len() > 1
            && let Ok(records) = self.write(events)
        {
            return records.into_iter().map(Ok).collect();
        }
        events.iter().map(|e| self.write(&[e]).map(|mut r| r.remove(0))).collect()
    }

    /// Chains and inserts `events` (each followed by its checkpoint when
    /// due) in one durable transaction; returns their records in order.
    fn write(&self, events: &[&AuditEvent]) -> Result<Vec<AuditRecord>, AuditError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.db_err(e))?;
        let last: Option<(i64, String)> = tx
            .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
            .map_err(|e| self.db_err(e))?;
        let (mut seq, mut prev_hash) = match last {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, GENESIS.to_owned()),
        };
        let timestamp_ms = coderclaw_core::clock::now_ms() as i64;
        let checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        let mut records = Vec::with_capacity(events.len());
        let mut heads = Vec::new();
        for e in events {
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
                metadata: sanitise(e.metadata.clone()).to_string(),
                prev_hash: std::mem::take(&mut prev_hash),
                hash: String::new(),
            };
            record.hash = record_hash(&record);
            insert(&tx, &record).map_err(|e| self.db_err(e))?;
            prev_hash = record.hash.clone();
            seq += 1;
            // A checkpoint in the same transaction: the chain stays linear
            // whoever appends, and no change is on disk without its checkpoint.
            if let Some(c) = checkpoints.as_ref().filter(|_| checkpoint_due(&record)) {
                let head = SignedHead::sign(&c.device, record.seq as u64, &record.hash, &c.key);
                let mut cp = AuditRecord {
                    seq,
                    timestamp_ms,
                    action: "audit.checkpoint".into(),
                    user: None,
                    device: Some(escape(&c.device)),
                    session: None,
                    resource_type: "audit".into(),
                    resource_id: escape(&c.device),
                    result: "allowed".into(),
                    reason: format!("signed head of record {}", record.seq),
                    metadata: serde_json::to_string(&head).unwrap_or_default(),
                    prev_hash: std::mem::take(&mut prev_hash),
                    hash: String::new(),
                };
                cp.hash = record_hash(&cp);
                insert(&tx, &cp).map_err(|e| self.db_err(e))?;
                prev_hash = cp.hash;
                seq += 1;
                heads.push(head);
            }
            records.push(record);
        }
        let witness_file = checkpoints.as_ref().and_then(|c| c.witness_file.clone());
        drop(checkpoints);
        tx.commit().map_err(|e| self.db_err(e))?;
        if let Some(file) = witness_file {
            for head in &heads {
                if let Err(e) = witness_to_file(&file, head) {
                    tracing::warn!(file = %file.display(), error = %e, "the audit head could not be witnessed to its file");
                }
            }
        }
        Ok(records)
    }
}

impl AuditLog {
    /// Records matching `filter`, oldest first.
    pub fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        let db = self.log.db.lock().unwrap_or_else(|p| p.into_inner());
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
        self.verify_against(&[], None).map(|r| r.records)
    }

    /// [`AuditLog::verify`], plus every checkpoint (its head must be the
    /// record before it, its signature valid, its key the first
    /// checkpoint's, and that of device `expected_device` when given), the
    /// checkpoint schedule (from the first checkpoint on, every record that
    /// is due one is followed by one: a rewrite of the log's tail cannot drop
    /// them) and the heads `witnessed` (by witness name): each must be
    /// present with the same hash.
    pub fn verify_against(
        &self,
        witnessed: &[(String, SignedHead)],
        expected_device: Option<&str>,
    ) -> Result<VerifyReport, AuditError> {
        let mut pending: Vec<&(String, SignedHead)> = witnessed.iter().collect();
        pending.sort_by_key(|(_, h)| std::cmp::Reverse(h.seq));
        let mut report =
            VerifyReport { records: 0, checkpoints: 0, last_checkpoint: None, key: None, witnessed: vec![] };
        for (name, h) in witnessed {
            if let Err(problem) = h.verify() {
                return Err(AuditError::Broken { seq: h.seq as i64, problem: format!("{name}: {problem}") });
            }
        }
        let mut prev: Option<AuditRecord> = None;
        let last = self.walk(|r| {
            if r.action == "audit.checkpoint" {
                check_checkpoint(r, prev.as_ref(), expected_device, &mut report)?;
            } else if let Some(p) = prev.as_ref().filter(|p| report.checkpoints > 0 && checkpoint_due(p)) {
                return Err(AuditError::Broken {
                    seq: r.seq,
                    problem: format!("record {} is due a signed checkpoint, and this record is not one", p.seq),
                });
            }
            while let Some((name, h)) = pending.last().filter(|(_, h)| h.seq as i64 <= r.seq) {
                if h.seq as i64 == r.seq {
                    if h.hash != r.hash {
                        return Err(AuditError::Broken {
                            seq: r.seq,
                            problem: format!("it differs from the head {name} witnessed: the log was rewritten"),
                        });
                    }
                    report.witnessed.push((name.clone(), h.seq));
                }
                pending.pop();
            }
            prev = Some(r.clone());
            Ok(())
        })?;
        report.records = last;
        if let Some((name, h)) = pending.first() {
            return Err(AuditError::Truncated { witness: name.clone(), witnessed: h.seq, last });
        }
        if let Some(p) = prev.as_ref().filter(|p| report.checkpoints > 0 && checkpoint_due(p)) {
            return Err(AuditError::Broken {
                seq: p.seq,
                problem: "the log ends at a record that is due a signed checkpoint: its checkpoint was removed".into(),
            });
        }
        Ok(report)
    }

    /// Walks the chain in order, checking links and hashes, calling `each`
    /// on every good record. Returns the number of records.
    fn walk(&self, mut each: impl FnMut(&AuditRecord) -> Result<(), AuditError>) -> Result<u64, AuditError> {
        let db = self.log.db.lock().unwrap_or_else(|p| p.into_inner());
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
            each(&r)?;
            expected_prev = r.hash.clone();
            count += 1;
        }
        Ok(count)
    }
}

fn insert(tx: &rusqlite::Transaction<'_>, r: &AuditRecord) -> rusqlite::Result<()> {
    tx.execute(
        &format!("INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
        params![
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
        ],
    )
    .map(|_| ())
}

/// A checkpoint must sign the record just before it, validly, with the
/// key of the log's first checkpoint (and of `expected_device`, if given).
fn check_checkpoint(
    r: &AuditRecord,
    prev: Option<&AuditRecord>,
    expected_device: Option<&str>,
    report: &mut VerifyReport,
) -> Result<(), AuditError> {
    let broken = |problem: String| AuditError::Broken { seq: r.seq, problem };
    let head: SignedHead =
        serde_json::from_str(&r.metadata).map_err(|e| broken(format!("the checkpoint is unreadable ({e})")))?;
    let key = head.verify().map_err(|p| broken(format!("checkpoint: {p}")))?;
    let Some(prev) = prev.filter(|p| p.seq as u64 == head.seq && p.hash == head.hash) else {
        return Err(broken(format!("the checkpoint signs record {}, which is not the record before it", head.seq)));
    };
    if let Some(device) = expected_device.filter(|d| key.id().as_str() != *d) {
        return Err(broken(format!(
            "the checkpoint is signed by {key}, not by this machine's device key {device}: \
             the log was rewritten with another key, or it belongs to another device"
        )));
    }
    let key = key.to_string();
    match &report.key {
        Some(first) if *first != key => {
            return Err(broken(format!("the checkpoint is signed by {key}, not by the log's key {first}")));
        }
        Some(_) => {}
        None => report.key = Some(key),
    }
    report.checkpoints += 1;
    report.last_checkpoint = Some(prev.seq as u64);
    Ok(())
}

/// Appends `head` as one JSON line to `file`, durably.
fn witness_to_file(file: &Path, head: &SignedHead) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(file)?;
    let mut line = serde_json::to_vec(head).map_err(std::io::Error::other)?;
    line.push(b'\n');
    f.write_all(&line)?;
    f.sync_data()
}

/// The heads in a witness file (one JSON line each); unreadable lines are
/// reported by line number.
pub fn read_witness_file(file: &Path) -> Result<Vec<SignedHead>, String> {
    let text = coderclaw_core::fsutil::read_text_bounded(file, 256 << 20, coderclaw_core::fsutil::FinalLink::Follow)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: not a signed head ({e})", file.display(), i + 1))
        })
        .collect()
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
