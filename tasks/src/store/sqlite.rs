//! `SqliteTaskStore`: tasks, their events and the skills' session memory
//! in `tasks.db` (SQLite, WAL), the embedded default.
//!
//! Writes go through one writer thread that commits them in batches: it
//! takes every write queued while the previous batch was being synced, runs
//! them in one transaction and syncs once (`synchronous=FULL`). A caller
//! that needs durability (a submission before it is acknowledged, a memory
//! write) waits for its batch's commit; everything else is queued in order
//! behind it: submissions that arrive together share one fsync.
//!
//! Committed events are handed to `on_commit` in commit order, so streams
//! only ever show what is on disk.

use super::{OnCommit, Queued, StoreError, StoredTask, TaskStore, Write, settle};
use coderclaw_core::task::{
    FailureCode, TaskEventKind, TaskFailure, TaskFilter, TaskState, TaskStatus, TaskTarget, TaskUpdateEvent,
};
use coderclaw_security::sqlite;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY NOT NULL,
    description TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    input TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user TEXT NOT NULL,
    parent_task_id TEXT,
    metadata TEXT NOT NULL,
    status TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    progress REAL,
    prompt TEXT,
    output TEXT,
    error TEXT,
    error_code TEXT,
    error_reasons TEXT,
    created_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER,
    completed_at_ms INTEGER,
    resumable INTEGER NOT NULL DEFAULT 0,
    remote INTEGER NOT NULL DEFAULT 0,
    workspace TEXT
);
CREATE INDEX IF NOT EXISTS tasks_by_session ON tasks (session_id, created_at_ms);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status);
CREATE TABLE IF NOT EXISTS task_events (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    event TEXT NOT NULL,
    status TEXT NOT NULL,
    progress REAL,
    message TEXT NOT NULL,
    data TEXT,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
-- Memory was once one store per session, shared by every skill in it;
-- those values cannot be attributed to a skill, so they are dropped.
DROP TABLE IF EXISTS session_memory;
CREATE TABLE IF NOT EXISTS skill_memory (
    session_id TEXT NOT NULL,
    skill_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (session_id, skill_id, key)
) WITHOUT ROWID;
";

/// The task database.
pub(crate) struct SqliteTaskStore {
    path: String,
    writes: Mutex<mpsc::Sender<Queued>>,
    reader: Mutex<Connection>,
}

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 4096;

impl SqliteTaskStore {
    /// Opens (creating) `<dir>/tasks.db` and starts the writer thread.
    pub(crate) fn open(dir: &Path, on_commit: Arc<OnCommit>) -> Result<Arc<SqliteTaskStore>, StoreError> {
        let file = dir.join("tasks.db");
        let path = file.display().to_string();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let writer = sqlite::open(&file, true, SCHEMA).map_err(err)?;
        add_missing_columns(&writer).map_err(err)?;
        let reader = sqlite::open(&file, false, "").map_err(err)?;
        let wal = sqlite::WalCheckpointer::start(&file, &writer, "coderclaw-tasks").map_err(err)?;
        let (tx, rx) = mpsc::channel::<Queued>();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("coderclaw-task-writer".into())
            .spawn(move || {
                writer_loop(writer, rx, &thread_path, &*on_commit);
                drop(wal);
            })
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        Ok(Arc::new(SqliteTaskStore { path, writes: Mutex::new(tx), reader: Mutex::new(reader) }))
    }

    fn enqueue(&self, q: Queued) -> Result<(), StoreError> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner()).send(q).map_err(|_| StoreError::WriterStopped)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let db = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&db).map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })
    }
}

impl TaskStore for SqliteTaskStore {
    fn send(&self, queued: Queued) -> Result<(), StoreError> {
        self.enqueue(queued)
    }

    fn get(&self, id: &str) -> Result<Option<StoredTask>, StoreError> {
        self.read(|db| {
            // Prepared once per connection: a client waiting for its task reads it at the end.
            static GET: std::sync::LazyLock<String> =
                std::sync::LazyLock::new(|| format!("SELECT {COLUMNS} FROM tasks t WHERE id = ?1"));
            db.prepare_cached(&GET)?.query_row([id], read_task).optional()
        })
    }

    fn list(&self, filter: &TaskFilter) -> Result<Vec<StoredTask>, StoreError> {
        let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
        let rows = self.read(|db| {
            let mut stmt = db.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks t
                 WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR session_id = ?2)
                 ORDER BY created_at_ms DESC, rowid DESC LIMIT ?3"
            ))?;
            let rows = stmt
                .query_map(params![filter.status.map(TaskStatus::as_str), filter.session, limit], read_task)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        Ok(rows)
    }

    fn unfinished(&self) -> Result<Vec<StoredTask>, StoreError> {
        let rows = self.read(|db| {
            let mut stmt = db.prepare(&format!(
                "SELECT {COLUMNS} FROM tasks t
                 WHERE status IN ('PENDING', 'PLANNING', 'RUNNING', 'WAITING') ORDER BY created_at_ms, rowid"
            ))?;
            let rows = stmt.query_map([], read_task)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        Ok(rows)
    }

    fn events(&self, id: &str, after: u64, limit: u32) -> Result<Vec<TaskUpdateEvent>, StoreError> {
        self.read(|db| {
            let mut stmt = db.prepare_cached(
                "SELECT task_id, seq, timestamp_ms, event, status, progress, message, data
                 FROM task_events WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows =
                stmt.query_map(params![id, after as i64, limit], read_event)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        self.read(|db| {
            db.query_row(
                "SELECT COALESCE(SUM(status = 'PENDING'), 0),
                        COALESCE(SUM(status IN ('PLANNING', 'RUNNING', 'WAITING')), 0), COUNT(*) FROM tasks",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)),
            )
        })
    }

    fn memory_get(&self, session: &str, skill: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|db| {
            db.query_row(
                "SELECT value FROM skill_memory WHERE session_id = ?1 AND skill_id = ?2 AND key = ?3",
                [session, skill, key],
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn memory_len(&self, session: &str, skill: &str) -> Result<u64, StoreError> {
        self.read(|db| {
            db.query_row(
                "SELECT COUNT(*) FROM skill_memory WHERE session_id = ?1 AND skill_id = ?2",
                [session, skill],
                |r| r.get::<_, i64>(0).map(|n| n as u64),
            )
        })
    }
}

const COLUMNS: &str = "id, description, target_kind, target_id, input, session_id, user, parent_task_id, metadata,
    status, paused, progress, prompt, output, error, error_code, error_reasons, created_at_ms, started_at_ms, completed_at_ms, resumable,
    remote, workspace, (SELECT COALESCE(MAX(seq), 0) FROM task_events e WHERE e.task_id = t.id) AS last_seq";

/// A stored value SQLite holds but this code cannot read back.
fn corrupt(column: &str, message: String) -> rusqlite::Error {
    let e: Box<dyn std::error::Error + Send + Sync> = format!("{column}: {message}").into();
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e)
}

fn json_column(r: &Row<'_>, column: &str) -> rusqlite::Result<Option<Value>> {
    let text: Option<String> = r.get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(column, e.to_string()))).transpose()
}

fn read_event(r: &Row<'_>) -> rusqlite::Result<TaskUpdateEvent> {
    let event: String = r.get("event")?;
    let status: String = r.get("status")?;
    Ok(TaskUpdateEvent {
        task_id: r.get("task_id")?,
        seq: r.get::<_, i64>("seq")? as u64,
        timestamp_ms: r.get::<_, i64>("timestamp_ms")? as u64,
        event: TaskEventKind::parse(&event).ok_or_else(|| corrupt("event", format!("unknown kind `{event}`")))?,
        status: TaskStatus::parse(&status).map_err(|e| corrupt("status", e))?,
        progress: r.get::<_, Option<f64>>("progress")?.map(|p| p as f32),
        message: r.get("message")?,
        data: json_column(r, "data")?,
    })
}

fn read_task(r: &Row<'_>) -> rusqlite::Result<StoredTask> {
    let target_id: String = r.get("target_id")?;
    let target = match r.get::<_, String>("target_kind")?.as_str() {
        "agent" => TaskTarget::Agent(target_id),
        _ => TaskTarget::Skill(target_id),
    };
    let status: String = r.get("status")?;
    let metadata = json_column(r, "metadata")?.unwrap_or_default();
    let state = TaskState {
        id: r.get("id")?,
        description: r.get("description")?,
        status: TaskStatus::parse(&status).map_err(|e| corrupt("status", e))?,
        target,
        input: json_column(r, "input")?.unwrap_or_default(),
        session_id: r.get("session_id")?,
        user: r.get("user")?,
        remote: r.get("remote")?,
        parent_task_id: r.get("parent_task_id")?,
        metadata: serde_json::from_value(metadata).map_err(|e| corrupt("metadata", e.to_string()))?,
        paused: r.get("paused")?,
        workspace: json_column(r, "workspace")?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| corrupt("workspace", e.to_string()))?,
        progress: r.get::<_, Option<f64>>("progress")?.map(|p| p as f32),
        prompt: r.get("prompt")?,
        output: json_column(r, "output")?,
        error: read_failure(r)?,
        created_at_ms: r.get::<_, i64>("created_at_ms")? as u64,
        started_at_ms: r.get::<_, Option<i64>>("started_at_ms")?.map(|v| v as u64),
        completed_at_ms: r.get::<_, Option<i64>>("completed_at_ms")?.map(|v| v as u64),
    };
    Ok(StoredTask {
        state,
        resumable: r.get("resumable")?,
        last_seq: r.get::<_, i64>("last_seq")? as u64,
        lease: Default::default(),
    })
}

/// Adds the columns a `tasks.db` made by an earlier version lacks: `remote`
/// (its rows read as local, as they were decided then), `error_code` (its
/// failures read as `internal`, but for the two the engine wrote with fixed
/// texts), `error_reasons` and `workspace` (its tasks ran in the default
/// workspace).
fn add_missing_columns(db: &Connection) -> rusqlite::Result<()> {
    let columns = [
        ("remote", "INTEGER NOT NULL DEFAULT 0"),
        ("error_code", "TEXT"),
        ("error_reasons", "TEXT"),
        ("workspace", "TEXT"),
    ];
    for (name, decl) in columns {
        let has: bool =
            db.query_row("SELECT EXISTS(SELECT 1 FROM pragma_table_info('tasks') WHERE name = ?1)", [name], |r| {
                r.get(0)
            })?;
        if !has {
            db.execute_batch(&format!("ALTER TABLE tasks ADD COLUMN {name} {decl}"))?;
        }
    }
    Ok(())
}

/// The failure stored in `error_code` and `error`.
fn read_failure(r: &Row<'_>) -> rusqlite::Result<Option<TaskFailure>> {
    let Some(message) = r.get::<_, Option<String>>("error")? else { return Ok(None) };
    let code = match r.get::<_, Option<String>>("error_code")? {
        Some(c) => FailureCode::parse(&c).ok_or_else(|| corrupt("error_code", format!("unknown code `{c}`")))?,
        None if message == "host restarted" => FailureCode::HostRestarted,
        None if message.starts_with("cancelled") => FailureCode::Cancelled,
        None => FailureCode::Internal,
    };
    let reasons = match json_column(r, "error_reasons")? {
        Some(v) => serde_json::from_value(v).map_err(|e| corrupt("error_reasons", e.to_string()))?,
        None => Vec::new(),
    };
    Ok(Some(TaskFailure { code, message, reasons }))
}

fn writer_loop(mut db: Connection, rx: mpsc::Receiver<Queued>, path: &str, on_commit: &OnCommit) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let result = tracing::debug_span!("tasks.commit", writes = batch.len()).in_scope(|| commit(&mut db, &batch));
        if let Err(e) = &result {
            tracing::error!(path, error = %e, writes = batch.len(), "task store commit failed");
        }
        // One writer per file: nothing is ever fenced.
        let result = result.map(|()| Vec::new()).map_err(|e| format!("task store {path}: {e}"));
        settle(batch, result, on_commit);
    }
}

fn commit(db: &mut Connection, batch: &[Queued]) -> Result<(), String> {
    // A task that changed several times within the batch (submitted,
    // planned, run and finished together) gets its row written once, as it
    // is last; every event is kept.
    let mut last_row: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, q) in batch.iter().enumerate() {
        if let Write::Task { task, .. } = &q.write {
            last_row.insert(&task.state.id, i);
        }
    }
    let tx = db.transaction().map_err(|e| e.to_string())?;
    for (i, q) in batch.iter().enumerate() {
        let row = match &q.write {
            Write::Task { task, .. } => last_row.get(task.state.id.as_str()) == Some(&i),
            _ => false,
        };
        apply(&tx, &q.write, row).map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

/// Applies `write`; a task row only when `row` (the task's last in the batch).
fn apply(db: &Connection, write: &Write, row: bool) -> rusqlite::Result<()> {
    match write {
        Write::Task { event: Some(e), .. } if !row => insert_event(db, e)?,
        Write::Task { event: None, .. } if !row => {}
        Write::Task { task, event } => {
            let s = &task.state;
            let json = |v: &Value| v.to_string();
            db.prepare_cached(
                "INSERT INTO tasks (id, description, target_kind, target_id, input, session_id, user, parent_task_id,
                    metadata, status, paused, progress, prompt, output, error, created_at_ms, started_at_ms,
                    completed_at_ms, resumable, remote, error_code, error_reasons, workspace)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21,
                    ?22, ?23)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, paused = excluded.paused,
                    progress = excluded.progress, prompt = excluded.prompt, output = excluded.output,
                    error = excluded.error, error_code = excluded.error_code,
                    error_reasons = excluded.error_reasons, started_at_ms = excluded.started_at_ms,
                    completed_at_ms = excluded.completed_at_ms",
            )?
            .execute(params![
                s.id,
                s.description,
                s.target.kind().as_str(),
                s.target.id(),
                json(&s.input),
                s.session_id,
                s.user,
                s.parent_task_id,
                serde_json::to_string(&s.metadata).unwrap_or_else(|_| "{}".into()),
                s.status.as_str(),
                s.paused,
                s.progress.map(f64::from),
                s.prompt,
                s.output.as_ref().map(json),
                s.error.as_ref().map(|f| f.message.as_str()),
                s.created_at_ms as i64,
                s.started_at_ms.map(|v| v as i64),
                s.completed_at_ms.map(|v| v as i64),
                task.resumable,
                s.remote,
                s.error.as_ref().map(|f| f.code.as_str()),
                s.error.as_ref().filter(|f| !f.reasons.is_empty()).map(|f| serde_json::json!(f.reasons).to_string()),
                s.workspace.as_ref().map(|w| serde_json::json!(w).to_string()),
            ])?;
            if let Some(e) = event {
                insert_event(db, e)?;
            }
        }
        Write::Event { event, .. } => insert_event(db, event)?,
        // Leases are the cluster's; this store is never shared.
        Write::Flush | Write::Release { .. } => {}
        Write::Memory { session, skill, key, value: Some(v), at_ms } => {
            db.prepare_cached(
                "INSERT INTO skill_memory (session_id, skill_id, key, value, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (session_id, skill_id, key) DO UPDATE SET value = excluded.value,
                     updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![session, skill, key, v, *at_ms as i64])?;
        }
        Write::Memory { session, skill, key, value: None, .. } => {
            db.prepare_cached("DELETE FROM skill_memory WHERE session_id = ?1 AND skill_id = ?2 AND key = ?3")?
                .execute(params![session, skill, key])?;
        }
    }
    Ok(())
}

fn insert_event(db: &Connection, e: &TaskUpdateEvent) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT INTO task_events (task_id, seq, timestamp_ms, event, status, progress, message, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        e.task_id,
        e.seq as i64,
        e.timestamp_ms as i64,
        e.event.as_str(),
        e.status.as_str(),
        e.progress.map(f64::from),
        e.message,
        e.data.as_ref().map(Value::to_string),
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `tasks` table as version 0.1 of `tasks.db` had it: no origin, no
    /// typed failure.
    const OLD_TASKS: &str = "CREATE TABLE tasks (
        id TEXT PRIMARY KEY NOT NULL, description TEXT NOT NULL, target_kind TEXT NOT NULL,
        target_id TEXT NOT NULL, input TEXT NOT NULL, session_id TEXT NOT NULL, user TEXT NOT NULL,
        parent_task_id TEXT, metadata TEXT NOT NULL, status TEXT NOT NULL, paused INTEGER NOT NULL DEFAULT 0,
        progress REAL, prompt TEXT, output TEXT, error TEXT, created_at_ms INTEGER NOT NULL,
        started_at_ms INTEGER, completed_at_ms INTEGER, resumable INTEGER NOT NULL DEFAULT 0)";

    #[test]
    fn an_older_task_store_opens_and_its_failures_read_with_codes() {
        let dir = tempfile::tempdir().unwrap();
        let old = Connection::open(dir.path().join("tasks.db")).unwrap();
        old.execute_batch(OLD_TASKS).unwrap();
        for (id, error) in [("a", "host restarted"), ("b", "cancelled: by alice"), ("c", "skill crashed")] {
            old.execute(
                "INSERT INTO tasks (id, description, target_kind, target_id, input, session_id, user, metadata,
                    status, error, created_at_ms) VALUES (?1, '', 'skill', 'team/echo', '{}', 'local:me', 'me', '{}',
                    'FAILED', ?2, 1)",
                params![id, error],
            )
            .unwrap();
        }
        drop(old);
        let store = SqliteTaskStore::open(dir.path(), Arc::new(|_, _| {})).unwrap();
        let code = |id: &str| store.get(id).unwrap().unwrap().state.error.unwrap().code;
        assert_eq!(code("a"), FailureCode::HostRestarted);
        assert_eq!(code("b"), FailureCode::Cancelled);
        assert_eq!(code("c"), FailureCode::Internal);
        assert!(!store.get("a").unwrap().unwrap().state.remote, "old rows read as local");
    }
}
