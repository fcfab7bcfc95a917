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
