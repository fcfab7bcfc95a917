//! One way to open the state directory's SQLite files: WAL (readers never
//! block the writer), foreign keys on, and a busy timeout so two coderclaw
//! processes writing at once wait for each other instead of failing.

use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

/// How long a writer waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens (creating) `path` and applies `schema`. `durable` syncs every
/// commit to disk (`synchronous=FULL`) for records that must survive a
/// power cut once acknowledged.
pub fn open(path: &Path, durable: bool, schema: &str) -> rusqlite::Result<Connection> {
    // Owner-only whatever the umask or the directory's mode.
    coderclaw_core::fsutil::ensure_private_file(path).map_err(|e| {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN), Some(e.to_string()))
    })?;
    let db = Connection::open(path)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "foreign_keys", "ON")?;
    if durable {
        db.pragma_update(None, "synchronous", "FULL")?;
    }
    db.busy_timeout(BUSY_TIMEOUT)?;
    db.execute_batch(schema)?;
    Ok(db)
}

/// Schema for a generation counter over `tables`: one row that every
/// insert, update and delete on them bumps in the same transaction, by
/// triggers, so no writer (another process, an older binary, a direct
/// edit with the sqlite3 shell) can change them without bumping it. A
/// reader keeps what it derived from those tables for as long as the
/// counter reads the same, checking it with one cheap query.
pub fn generation_schema(tables: &[&str]) -> String {
    let mut schema = String::from(
        "CREATE TABLE IF NOT EXISTS generation (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
         INSERT OR IGNORE INTO generation (id, value) VALUES (1, 0);\n",
    );
    for table in tables {
        for op in ["INSERT", "UPDATE", "DELETE"] {
            schema.push_str(&format!(
                "CREATE TRIGGER IF NOT EXISTS {table}_{name}_generation AFTER {op} ON {table}
                 BEGIN UPDATE generation SET value = value + 1 WHERE id = 1; END;\n",
                name = op.to_ascii_lowercase()
            ));
        }
    }
    schema
}

/// The counter [`generation_schema`] keeps.
pub fn generation(db: &Connection) -> rusqlite::Result<i64> {
    db.prepare_cached("SELECT value FROM generation WHERE id = 1")?.query_row([], |r| r.get(0))
}

/// Log pages after which a writer checkpoints the WAL itself: a backstop
/// only, as a [`WalCheckpointer`] keeps the log far below it (64 MiB of
/// 4 KiB pages).
pub const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;

/// How often a [`WalCheckpointer`] moves committed pages: often enough
/// that one checkpoint stays small at full load, rarely enough that its
/// fsync seldom lands beside a commit of a lone task.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Moves the committed pages of a WAL database into its main file from a
/// thread and connection of its own (a passive checkpoint every 250 ms,
/// which never blocks a writer), so the database's writer does not stop
/// for it: done by the writer at SQLite's default threshold, checkpoints
/// took a fifth of the task store's writer time and made its slowest
/// commits ten times the median. Stops (and joins) when dropped.
pub struct WalCheckpointer {
    stop: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WalCheckpointer {
    /// Starts checkpointing `path`, whose writer connection is `writer`
    /// (its own automatic checkpoint is raised to the backstop).
    pub fn start(path: &Path, writer: &Connection, name: &str) -> rusqlite::Result<WalCheckpointer> {
        writer.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
        let db = open(path, true, "")?;
        let stop = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let signal = stop.clone();
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-checkpoint"))
            .spawn(move || {
                let (stopped, wake) = &*signal;
                let mut done = stopped.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                while !*done {
                    done = wake.wait_timeout(done, CHECKPOINT_EVERY).unwrap_or_else(|p| p.into_inner()).0;
                    if *done {
                        break;
                    }
                    let passive = db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0));
                    if let Err(e) = passive {
                        tracing::warn!(path = %shown, error = %e, "WAL checkpoint failed; the writer's backstop remains");
                    }
                }
            })
            .map_err(|e| {
                rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR), Some(e.to_string()))
            })?;
        Ok(WalCheckpointer { stop, thread: Some(thread) })
    }
}

impl Drop for WalCheckpointer {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
