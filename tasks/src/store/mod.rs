//! The task store: tasks, their events and session memory, behind the
//! [`TaskStore`] trait the engine uses. `SqliteTaskStore` (`tasks.db`) is
//! the embedded default, opened only by the engine (one writer per file);
//! a cluster backend implements the same trait.
//!
//! The contract every backend keeps: writes are applied in the order they
//! were queued; a durable write's receiver resolves only once it (and
//! everything queued before it) is committed and synced; committed events
//! are handed to the `on_commit` hook in commit order, so streams only ever
//! show what is on disk.

mod cluster;
mod postgres;
mod sqlite;

pub use cluster::{ClusterStatus, ClusterStore, Command, NodeStatus, Notice, Reclaimed};
pub use postgres::{PgSharedState, PgTaskStore, SCHEMA_VERSION as PG_SCHEMA_VERSION, cluster_status, redact_url};
pub(crate) use sqlite::SqliteTaskStore;

use coderclaw_core::task::{TaskFilter, TaskState, TaskUpdateEvent};
use tokio::sync::oneshot;

/// A task store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused a read or write.
    #[error("task store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: String,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// PostgreSQL refused a read or write, or could not be reached.
    #[error("task store {url}: {message}")]
    Postgres {
        /// The database URL, its password hidden.
        url: String,
        /// What went wrong, and what to check.
        message: String,
    },
    /// The database was migrated by a newer coderclaw.
    #[error(
        "task store {url}: its schema is version {found}, newer than this coderclaw's {supported}: \
         upgrade coderclaw on this node"
    )]
    SchemaTooNew {
        /// The database URL, its password hidden.
        url: String,
        /// The database's schema version.
        found: i32,
        /// The newest this build knows.
        supported: i32,
    },
    /// Another running node has this node's name.
    #[error(
        "cluster {url}: node name `{node}` is in use by another running node: give this one another name, or \
         stop the other"
    )]
    NodeTaken {
        /// The database URL, its password hidden.
        url: String,
        /// The name.
        node: String,
    },
    /// The writer thread is gone (the engine is shutting down).
    #[error("the task store's writer has stopped")]
    WriterStopped,
    /// The writer thread could not be started.
    #[error("task store: cannot start the writer thread: {0}")]
    Thread(String),
}

/// A task row as stored: the state plus engine bookkeeping.
#[derive(Debug, Clone)]
pub struct StoredTask {
    /// The task as clients see it.
    pub state: TaskState,
    /// May be re-run from the start after a restart.
    pub resumable: bool,
    /// Seq of its last event.
    pub last_seq: u64,
    /// Which node holds it, and the fencing token of that hold (always
    /// unheld outside a cluster).
    pub lease: Lease,
}

/// Who may write a task in a cluster: the node holding it (None: no node;
/// the task is queued or being moved) and the fencing token, bumped by
/// every claim, reclaim and edit of an unheld task. A write whose lease
/// is no longer the row's is refused (fenced), so a node that lost a
/// task can never change it again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    /// The holding node.
    pub node: Option<String>,
    /// The fencing token.
    pub attempt: u64,
}

/// One queued write.
pub enum Write {
    /// Insert or update the task row, then append the event.
    Task {
        /// The row.
        task: Box<StoredTask>,
        /// Its event.
        event: Option<TaskUpdateEvent>,
    },
    /// Append an event without touching the row.
    Event {
        /// The event.
        event: TaskUpdateEvent,
        /// The task's lease when it was queued (fencing).
        lease: Lease,
    },
    /// Give a held task up (cluster): unheld, its fencing token bumped,
    /// so any node may claim it at once.
    Release {
        /// The task.
        id: String,
        /// The lease given up.
        lease: Lease,
    },
    /// Nothing: durable once everything queued before it is (a flush).
    Flush,
    /// Set (Some) or delete (None) a skill's memory key in a session.
    Memory {
        /// The session (as stored).
        session: String,
        /// The skill.
        skill: String,
        /// The key.
        key: String,
        /// The value, or None to delete.
        value: Option<String>,
        /// When.
        at_ms: u64,
    },
}

/// Called by the writer after each commit with the batch's stored events,
/// in order, and the tasks whose writes were fenced (their lease is gone).
pub type OnCommit = dyn Fn(Vec<TaskUpdateEvent>, Vec<String>) + Send + Sync;

/// Where the engine keeps tasks. Reads may run on any thread; writes are
/// queued to the backend's writer.
pub trait TaskStore: Send + Sync {
    /// Hands `queued` to the writer, behind everything queued before it.
    fn send(&self, queued: Queued) -> Result<(), StoreError>;
    /// Queues `write` behind everything queued before it.
    fn queue(&self, write: Write) -> Result<(), StoreError> {
        self.send(Queued { write, ack: None })
    }
    /// Queues `write` and returns a receiver that resolves once it is
    /// committed and synced.
    fn queue_durable(&self, write: Write) -> Result<oneshot::Receiver<Result<(), String>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Queued { write, ack: Some(tx) })?;
        Ok(rx)
    }
    /// One task.
    fn get(&self, id: &str) -> Result<Option<StoredTask>, StoreError>;
    /// Tasks matching `filter`, newest first.
    fn list(&self, filter: &TaskFilter) -> Result<Vec<StoredTask>, StoreError>;
    /// Tasks not in a final status (for recovery), oldest first.
    fn unfinished(&self) -> Result<Vec<StoredTask>, StoreError>;
    /// A task's events with seq > `after`, in order, at most `limit`.
    fn events(&self, id: &str, after: u64, limit: u32) -> Result<Vec<TaskUpdateEvent>, StoreError>;
    /// Counts by status: (queued, active, total).
    fn counts(&self) -> Result<(u64, u64, u64), StoreError>;
    /// A skill's memory value in a session.
    fn memory_get(&self, session: &str, skill: &str, key: &str) -> Result<Option<String>, StoreError>;
    /// How many keys a skill holds in a session.
    fn memory_len(&self, session: &str, skill: &str) -> Result<u64, StoreError>;
    /// The cluster this store is shared in, if any.
    fn cluster(&self) -> Option<&dyn ClusterStore> {
        None
    }
    /// Whether the store records each task's outcome in the audit log
    /// itself, in the transaction that stores the final state (a
    /// cluster's); otherwise the engine records it before storing it.
    fn records_outcomes(&self) -> bool {
        false
    }
}

/// A write waiting for the writer, and who waits for its commit.
pub struct Queued {
    /// The write.
    pub write: Write,
    /// Told the batch's outcome once it is committed (or failed).
    pub ack: Option<oneshot::Sender<Result<(), String>>>,
}

/// After a batch's commit: tells its durable writers the outcome and, if
/// it was stored, hands its events to `on_commit` in order, leaving out
/// those of fenced writes (`fenced`: their positions in the batch).
pub(crate) fn settle(batch: Vec<Queued>, result: Result<Vec<usize>, String>, on_commit: &OnCommit) {
    let (fenced, result): (std::collections::HashSet<usize>, _) = match result {
        Ok(f) => (f.into_iter().collect(), Ok(())),
        Err(e) => (Default::default(), Err(e)),
    };
    let mut events = Vec::new();
    let mut lost = Vec::new();
    for (i, q) in batch.into_iter().enumerate() {
        if let Some(ack) = q.ack {
            let _ = ack.send(result.clone());
        }
        if fenced.contains(&i) {
            match q.write {
                Write::Task { task, .. } => lost.push(task.state.id),
                Write::Event { event, .. } => lost.push(event.task_id),
                _ => {}
            }
            continue;
        }
        if result.is_ok() {
            match q.write {
                Write::Task { event: Some(e), .. } | Write::Event { event: e, .. } => events.push(e),
                _ => {}
            }
        }
    }
    lost.dedup();
    if !events.is_empty() || !lost.is_empty() {
        on_commit(events, lost);
    }
}
