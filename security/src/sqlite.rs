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
