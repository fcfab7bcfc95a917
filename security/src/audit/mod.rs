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
mod chain;
mod sqlite;

pub use chain::{AuditSigning, CHECKPOINT_EVERY, Chained};
use chain::{GENESIS, checkpoint_due, record_hash};
use serde::Serialize;
use sqlite::SqliteAuditStore;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, mpsc};
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
    /// As stored: `allowed`, `denied` or `error`.
    pub fn as_str(self) -> &'static str {
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
    /// A shared store (a cluster's database) failed or could not be reached.
    #[error("audit log in {store}: {message}")]
    Store {
        /// The store, its password hidden.
        store: String,
        /// What went wrong, and what to check.
        message: String,
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

/// Where a log's records are kept: a state directory's SQLite file, or
/// a cluster's database that every node appends to.
pub trait AuditStore: Send + Sync {
    /// The store as errors and reports name it (a path, or a database URL
    /// with its password hidden).
    fn name(&self) -> String;
    /// Whether several machines append to it, each signing checkpoints
    /// with its own device key.
    fn shared(&self) -> bool {
        false
    }
    /// Chains `events` after the last record (see [`AuditSigning::chain`])
    /// and stores them in one durable transaction, appending nothing
    /// else meanwhile; returns what was stored.
    fn append(&self, events: &[&AuditEvent], signing: &AuditSigning) -> Result<Chained, AuditError>;
    /// Records matching `filter`, oldest first.
    fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError>;
    /// Hands every record to `each` in seq order, stopping at its first
    /// error.
    fn scan(&self, each: &mut dyn FnMut(AuditRecord) -> Result<(), AuditError>) -> Result<(), AuditError>;
    /// The metadata of the newest checkpoint, if any.
    fn latest_checkpoint(&self) -> Result<Option<String>, AuditError>;
}

/// The audit log of one state directory, or of a cluster.
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
    store: RwLock<Arc<dyn AuditStore>>,
    signing: AuditSigning,
}

impl Log {
    fn store(&self) -> Arc<dyn AuditStore> {
        self.store.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Commits `events` in one transaction. If that fails, each event is
    /// tried alone, so every caller gets its own record or its own error.
    fn commit_batch(&self, events: &[&AuditEvent]) -> Vec<Result<AuditRecord, AuditError>> {
        let _span = tracing::debug_span!("audit.commit", records = events.len()).entered();
        let store = self.store();
        let write = |events: &[&AuditEvent]| {
            let chained = store.append(events, &self.signing)?;
            self.signing.witness(&chained.heads);
            Ok::<_, AuditError>(chained.records)
        };
        if events.len() > 1
            && let Ok(records) = write(events)
        {
            return records.into_iter().map(Ok).collect();
        }
        events.iter().map(|e| write(&[e]).map(|mut r| r.remove(0))).collect()
    }
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
    /// The key the checkpoints are signed with (the first's, in a shared log).
    pub key: Option<String>,
    /// The ids of the keys that signed checkpoints (devices; several in a
    /// cluster's log, one per node's machine).
    pub signers: Vec<String>,
    /// Witnessed heads checked, by witness: the newest record each saw.
    pub witnessed: Vec<(String, u64)>,
}

impl VerifyReport {
    /// Whether device (key id) `device` signed a checkpoint.
    pub fn signed_by(&self, device: &str) -> bool {
        self.signers.iter().any(|s| s == device)
    }
}

impl AuditRecord {
    /// The hash this record's fields (and its link to the previous record)
    /// give: what `hash` must be. For tools that check a log themselves.
    pub fn computed_hash(&self) -> String {
        record_hash(self)
    }
}

impl AuditLog {
    /// Opens (creating) the log at `path`. Several handles, in one process
    /// or several, may append at once: appends serialise on SQLite's write
    /// lock, so the chain stays linear.
    pub fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_path_buf();
        let (store, wal) = SqliteAuditStore::open(&path)?;
        let log = Arc::new(Log { store: RwLock::new(Arc::new(store)), signing: AuditSigning::default() });
        let (jobs, queue) = mpsc::channel();
        let shared = log.clone();
        let writer = std::thread::Builder::new()
            .name("coderclaw-audit-writer".into())
            .spawn(move || writer_loop(shared, queue))
            .map_err(|e| AuditError::Thread { path: path.clone(), source: e })?;
        Ok(AuditLog { log, jobs: Some(jobs), writer: Some(writer), _wal: wal })
    }

    /// From now on, records go to `store` (a cluster's database) instead
    /// of the state directory's file, chained there after whatever it
    /// holds; records appended before stay in the file.
    pub fn use_store(&self, store: Arc<dyn AuditStore>) {
        tracing::info!(store = %store.name(), "audit records go to a shared store");
        *self.log.store.write().unwrap_or_else(|p| p.into_inner()) = store;
    }

    /// Where records are kept, as errors name it.
    pub fn store_name(&self) -> String {
        self.log.store().name()
    }

    /// Whether several machines append to this log.
    pub fn is_shared(&self) -> bool {
        self.log.store().shared()
    }

    /// Who signs checkpoints, for a store that appends records in its own
    /// transactions (a cluster's task outcomes).
    pub fn signing(&self) -> AuditSigning {
        self.log.signing.clone()
    }

    /// From now on, checkpoints are signed with `key` as device `device`.
    pub fn enable_checkpoints(&self, key: SecretKey, device: &str) {
        self.log.signing.enable(key, device);
    }

    /// Appends each checkpoint's signed head, one JSON line, to `file`.
    pub fn set_witness_file(&self, file: Option<PathBuf>) {
        self.log.signing.set_witness_file(file);
    }

    /// The newest checkpoint's signed head, if any.
    pub fn latest_head(&self) -> Result<Option<SignedHead>, AuditError> {
        let meta = self.log.store().latest_checkpoint()?;
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

    /// Records matching `filter`, oldest first.
    pub fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        self.log.store().query(filter)
    }

    /// Recomputes the whole chain. Returns the number of records, or the
    /// first record that does not match.
    pub fn verify(&self) -> Result<u64, AuditError> {
        self.verify_against(&[], Signers::Any).map(|r| r.records)
    }

    /// [`AuditLog::verify`], plus every checkpoint (its head must be the
    /// record before it, its signature valid, its key the first
    /// checkpoint's, and one `signers` allows), the
    /// checkpoint schedule (from the first checkpoint on, every record that
    /// is due one is followed by one: a rewrite of the log's tail cannot drop
    /// them) and the heads `witnessed` (by witness name): each must be
    /// present with the same hash. In a shared log (a cluster's) each node
    /// signs with its own key: the keys may differ (each must be one
    /// `signers` allows), and every one is listed in the report.
    pub fn verify_against(
        &self,
        witnessed: &[(String, SignedHead)],
        signers: Signers<'_>,
    ) -> Result<VerifyReport, AuditError> {
        let shared = self.is_shared();
        let mut pending: Vec<&(String, SignedHead)> = witnessed.iter().collect();
        pending.sort_by_key(|(_, h)| std::cmp::Reverse(h.seq));
        let mut report = VerifyReport {
            records: 0,
            checkpoints: 0,
            last_checkpoint: None,
            key: None,
            signers: vec![],
            witnessed: vec![],
        };
        for (name, h) in witnessed {
            if let Err(problem) = h.verify() {
                return Err(AuditError::Broken { seq: h.seq as i64, problem: format!("{name}: {problem}") });
            }
        }
        let mut prev: Option<AuditRecord> = None;
        let check = CheckpointRules { signers, shared };
        let last = self.walk(|r| {
            if r.action == "audit.checkpoint" {
                check.checkpoint(r, prev.as_ref(), &mut report)?;
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
        let mut expected_prev = GENESIS.to_owned();
        let mut expected_seq = 1;
        self.log.store().scan(&mut |r| {
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
            expected_prev = r.hash;
            expected_seq += 1;
            Ok(())
        })?;
        Ok(expected_seq as u64 - 1)
    }
}

/// Whose keys may sign a log's checkpoints.
#[derive(Debug, Clone, Copy)]
pub enum Signers<'a> {
    /// Any key (the chain and the signatures are still checked).
    Any,
    /// This device's (key id): a log of one machine.
    Device(&'a str),
    /// One of these devices (key ids): a cluster's log, each node signing
    /// with its own key.
    OneOf(&'a [String]),
}

/// How [`AuditLog::verify_against`] judges checkpoints' keys.
struct CheckpointRules<'a> {
    signers: Signers<'a>,
    /// Several machines sign (each with its own key); otherwise every
    /// checkpoint's key must be the first's.
    shared: bool,
}

impl CheckpointRules<'_> {
    /// A checkpoint must sign the record just before it, validly, with
    /// the key these rules allow.
    fn checkpoint(
        &self,
        r: &AuditRecord,
        prev: Option<&AuditRecord>,
        report: &mut VerifyReport,
    ) -> Result<(), AuditError> {
        let broken = |problem: String| AuditError::Broken { seq: r.seq, problem };
        let head: SignedHead =
            serde_json::from_str(&r.metadata).map_err(|e| broken(format!("the checkpoint is unreadable ({e})")))?;
        let key = head.verify().map_err(|p| broken(format!("checkpoint: {p}")))?;
        let Some(prev) = prev.filter(|p| p.seq as u64 == head.seq && p.hash == head.hash) else {
            return Err(broken(format!("the checkpoint signs record {}, which is not the record before it", head.seq)));
        };
        match self.signers {
            Signers::Device(device) if key.id().as_str() != device => {
                return Err(broken(format!(
                    "the checkpoint is signed by {key}, not by this machine's device key {device}: \
                     the log was rewritten with another key, or it belongs to another device"
                )));
            }
            Signers::OneOf(allowed) if !allowed.iter().any(|d| d == key.id().as_str()) => {
                return Err(broken(format!(
                    "the checkpoint is signed by {key}, which is neither this machine's device key nor in \
                     cluster.nodeKeys of config.yaml: the log was rewritten with another key, or a node is missing \
                     from cluster.nodeKeys"
                )));
            }
            _ => {}
        }
        let id = key.id().as_str().to_owned();
        let key = key.to_string();
        match &report.key {
            Some(first) if *first != key && !self.shared => {
                return Err(broken(format!("the checkpoint is signed by {key}, not by the log's key {first}")));
            }
            Some(_) => {}
            None => report.key = Some(key.clone()),
        }
        if !report.signers.contains(&id) {
            report.signers.push(id);
        }
        report.checkpoints += 1;
        report.last_checkpoint = Some(prev.seq as u64);
        Ok(())
    }
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
