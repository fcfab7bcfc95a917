//! Turning events into chained records: sanitising them, hashing each
//! with the link to the one before, and signing the checkpoints due. The
//! same for every store, so a cluster's chain reads like a state
//! directory's.

use super::{AuditEvent, AuditRecord};
use coderclaw_core::audit_head::SignedHead;
use coderclaw_core::keys::SecretKey;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The `prev_hash` of the first record.
pub(super) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Records between two automatic checkpoints.
pub const CHECKPOINT_EVERY: i64 = 100;

/// Whether a record of `action` is followed by a checkpoint at once.
fn checkpoints_after(action: &str) -> bool {
    ["trust.", "policy.", "device.", "registry.", "key."].iter().any(|p| action.starts_with(p))
}

/// Whether `r` is followed by a checkpoint in the same transaction (when
/// checkpoints are enabled).
pub(super) fn checkpoint_due(r: &AuditRecord) -> bool {
    r.action != "audit.checkpoint"
        && (r.seq % CHECKPOINT_EVERY == 0 || checkpoints_after(&r.action) || r.action == "audit.checkpoint.request")
}

/// What signs checkpoints, and where their heads are witnessed.
struct Checkpointer {
    key: SecretKey,
    device: String,
    witness_file: Option<PathBuf>,
}

/// Who signs a log's checkpoints (none until a device key is set) and
/// where the signed heads are witnessed. Cheap to clone: every writer of
/// one log (its own writer thread, a cluster store appending in its own
/// transactions) shares one.
#[derive(Clone, Default)]
pub struct AuditSigning(Arc<Mutex<Option<Checkpointer>>>);

impl AuditSigning {
    /// From now on, checkpoints are signed with `key` as device `device`.
    pub(super) fn enable(&self, key: SecretKey, device: &str) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let witness_file = c.take().and_then(|c| c.witness_file);
        *c = Some(Checkpointer { key, device: device.to_owned(), witness_file });
    }

    /// Appends each checkpoint's signed head, one JSON line, to `file`.
    pub(super) fn set_witness_file(&self, file: Option<PathBuf>) {
        if let Some(c) = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            c.witness_file = file;
        }
    }

    /// The records `events` become after the record `last` (seq, hash;
    /// None for an empty log), each followed by its signed checkpoint
    /// when one is due. The caller stores `rows` in one transaction, in
    /// order, while no one else appends.
    pub fn chain(&self, last: Option<(i64, String)>, events: &[&AuditEvent], timestamp_ms: i64) -> Chained {
        let (mut seq, mut prev_hash) = match last {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, GENESIS.to_owned()),
        };
        let checkpoints = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Chained::default();
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
            prev_hash = record.hash.clone();
            seq += 1;
            out.rows.push(record.clone());
            // In the same transaction: the chain stays linear whoever
            // appends, and no change is stored without its checkpoint.
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
                prev_hash = cp.hash.clone();
                seq += 1;
                out.rows.push(cp);
                out.heads.push(head);
            }
            out.records.push(record);
        }
        out
    }

    /// Hands `heads` (just committed) to the witness file, if one is set.
    /// A head that cannot be written is logged: the records stand.
    pub fn witness(&self, heads: &[SignedHead]) {
        let file = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|c| c.witness_file.clone());
        let Some(file) = file else { return };
        for head in heads {
            if let Err(e) = witness_to_file(&file, head) {
                tracing::warn!(file = %file.display(), error = %e, "the audit head could not be witnessed to its file");
            }
        }
    }
}

/// What [`AuditSigning::chain`] made of some events.
#[derive(Debug, Default)]
pub struct Chained {
    /// Every row to store, in order: the events' records and checkpoints.
    pub rows: Vec<AuditRecord>,
    /// The events' own records, in the events' order.
    pub records: Vec<AuditRecord>,
    /// The heads the checkpoints among `rows` sign.
    pub heads: Vec<SignedHead>,
}

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

/// The record's hash: SHA-256 over the previous hash and every field,
/// each length-prefixed so no two field lists encode alike.
pub(super) fn record_hash(r: &AuditRecord) -> String {
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
