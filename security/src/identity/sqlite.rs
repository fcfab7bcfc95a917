//! The state directory's identities: `identity.db` (SQLite, WAL), with a
//! cache of sessions and devices kept while the file's generation
//! counter reads the same.

use super::{ApiToken, Device, IdentityBackend, IdentityError, Session, User, roles_from};
use coderclaw_core::TrustLevel;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub(super) struct SqliteIdentities {
    path: PathBuf,
    db: Mutex<Connection>,
    /// Sessions and devices read since `identity.db` last changed (by
    /// anyone: see [`crate::sqlite::generation_schema`]).
    cache: Mutex<IdentityCache>,
}

/// What was read from `identity.db` at one generation. Only rows that
/// exist are kept (an unknown token is looked up every time), at most
/// [`MAX_IDENTITY_CACHED`] of each.
#[derive(Default)]
struct IdentityCache {
    generation: i64,
    sessions: std::collections::HashMap<String, Session>,
    /// Session id by token hash.
    by_token: std::collections::HashMap<String, String>,
    devices: std::collections::HashMap<String, Device>,
}

const MAX_IDENTITY_CACHED: usize = 4096;

/// The tables whose changes invalidate the cache.
const GENERATION_TABLES: &[&str] = &["users", "api_tokens", "devices", "sessions"];

fn insert_bounded<V>(map: &mut std::collections::HashMap<String, V>, key: String, value: V) {
    if map.len() >= MAX_IDENTITY_CACHED {
        map.clear();
    }
    map.insert(key, value);
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT,
    roles         TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id            TEXT PRIMARY KEY,
    user          TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    secret_hash   TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS devices (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    public_key    TEXT NOT NULL,
    trust         TEXT NOT NULL,
    local         INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id            TEXT PRIMARY KEY,
    token_hash    TEXT NOT NULL UNIQUE,
    user          TEXT NOT NULL,
    device        TEXT NOT NULL,
    roles         TEXT NOT NULL,
    scope         TEXT,
    method        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
";

const SESSION_COLUMNS: &str = "id, user, device, roles, scope, method, created_at_ms, expires_at_ms, revoked_at_ms";

const USER_COLUMNS: &str = "name, roles, password_hash IS NOT NULL, created_at_ms";

impl SqliteIdentities {
    /// Opens (creating) `identity.db` in `dir`.
    pub(super) fn open(dir: &Path) -> Result<SqliteIdentities, IdentityError> {
        let path = dir.join("identity.db");
        let err = |source| IdentityError::Db { path: path.clone(), source };
        let schema = format!("{SCHEMA}{}", crate::sqlite::generation_schema(GENERATION_TABLES));
        let db = crate::sqlite::open(&path, false, &schema).map_err(err)?;
        Ok(SqliteIdentities { path, db: Mutex::new(db), cache: Mutex::default() })
    }

    /// The cache, emptied first if `identity.db` changed since it was
    /// filled; one query. The cache lock is taken under the database lock
    /// so a fill cannot interleave with a change being noticed.
    fn with_cache<T>(
        &self,
        f: impl FnOnce(&Connection, &mut IdentityCache) -> rusqlite::Result<T>,
    ) -> Result<T, IdentityError> {
        self.with_db(|db| {
            let generation = crate::sqlite::generation(db)?;
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.generation != generation {
                *cache = IdentityCache { generation, ..Default::default() };
            }
            f(db, &mut cache)
        })
    }

    fn with_db<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, IdentityError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        f(&db).map_err(|source| IdentityError::Db { path: self.path.clone(), source })
    }
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        name: r.get(0)?,
        roles: roles_from(r.get(1)?),
        has_password: r.get(2)?,
        created_at_ms: r.get::<_, i64>(3)? as u64,
    })
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: r.get(0)?,
        user: r.get(1)?,
        device: r.get(2)?,
        roles: roles_from(r.get(3)?),
        scope: r.get::<_, Option<String>>(4)?.map(PathBuf::from),
        method: r.get(5)?,
        created_at_ms: r.get::<_, i64>(6)? as u64,
        expires_at_ms: r.get::<_, i64>(7)? as u64,
        revoked_at_ms: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
    })
}

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    let trust: String = r.get(3)?;
    Ok(Device {
        id: r.get(0)?,
        name: r.get(1)?,
        public_key: r.get(2)?,
        // A value edited into something unknown counts as the lowest level.
        trust: TrustLevel::parse(&trust).unwrap_or(TrustLevel::Untrusted),
        local: r.get(4)?,
        created_at_ms: r.get::<_, i64>(5)? as u64,
    })
}

impl IdentityBackend for SqliteIdentities {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn insert_user(&self, user: &User, password_hash: Option<&str>) -> Result<bool, IdentityError> {
        let roles = serde_json::to_string(&user.roles).unwrap_or_else(|_| "[]".into());
        let inserted = self.with_db(|db| {
            db.execute(
                "INSERT OR IGNORE INTO users (name, password_hash, roles, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![user.name, password_hash, roles, user.created_at_ms as i64],
            )
        })?;
        Ok(inserted == 1)
    }

    fn user(&self, name: &str) -> Result<Option<User>, IdentityError> {
        self.with_db(|db| {
            db.query_row(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1"), [name], user_row).optional()
        })
    }

    fn users(&self) -> Result<Vec<User>, IdentityError> {
        self.with_db(|db| {
            let mut stmt = db.prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))?;
            let rows = stmt.query_map([], user_row)?;
            rows.collect()
        })
    }

    fn delete_user(&self, name: &str, at_ms: u64) -> Result<bool, IdentityError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let err = |source| IdentityError::Db { path: self.path.clone(), source };
        let tx = db.unchecked_transaction().map_err(err)?;
        tx.execute(
            "UPDATE sessions SET revoked_at_ms = ?2 WHERE user = ?1 AND revoked_at_ms IS NULL",
            params![name, at_ms as i64],
        )
        .map_err(err)?;
        tx.execute("DELETE FROM api_tokens WHERE user = ?1", [name]).map_err(err)?;
        let deleted = tx.execute("DELETE FROM users WHERE name = ?1", [name]).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(deleted == 1)
    }

    fn update_user(
        &self,
        name: &str,
        roles: Option<&[String]>,
        password_hash: Option<Option<&str>>,
        at_ms: u64,
    ) -> Result<bool, IdentityError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let err = |source| IdentityError::Db { path: self.path.clone(), source };
        let tx = db.unchecked_transaction().map_err(err)?;
        let mut found =
            tx.query_row("SELECT COUNT(*) FROM users WHERE name = ?1", [name], |r| r.get::<_, i64>(0)).map_err(err)?
                == 1;
        if let Some(roles) = roles {
            let roles = serde_json::to_string(roles).unwrap_or_else(|_| "[]".into());
            found &= tx.execute("UPDATE users SET roles = ?2 WHERE name = ?1", params![name, roles]).map_err(err)? == 1;
        }
        if let Some(hash) = password_hash {
            found &=
                tx.execute("UPDATE users SET password_hash = ?2 WHERE name = ?1", params![name, hash]).map_err(err)?
                    == 1;
        }
        tx.execute(
            "UPDATE sessions SET revoked_at_ms = ?2 WHERE user = ?1 AND revoked_at_ms IS NULL",
            params![name, at_ms as i64],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(found)
    }

    fn password_hash(&self, name: &str) -> Result<Option<String>, IdentityError> {
        let stored: Option<Option<String>> = self.with_db(|db| {
            db.query_row("SELECT password_hash FROM users WHERE name = ?1", [name], |r| r.get(0)).optional()
        })?;
        Ok(stored.flatten())
    }

    fn insert_token(&self, token: &ApiToken, secret_hash: &str) -> Result<(), IdentityError> {
        self.with_db(|db| {
            db.execute(
                "INSERT INTO api_tokens (id, user, secret_hash, created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    token.id,
                    token.user,
                    secret_hash,
                    token.created_at_ms as i64,
                    token.expires_at_ms.map(|e| e as i64)
                ],
            )
        })?;
        Ok(())
    }

    fn token_by_hash(&self, secret_hash: &str) -> Result<Option<ApiToken>, IdentityError> {
        self.with_db(|db| {
            db.query_row(
                "SELECT id, user, created_at_ms, expires_at_ms, revoked_at_ms FROM api_tokens WHERE secret_hash = ?1",
                [secret_hash],
                |r| {
                    Ok(ApiToken {
                        id: r.get(0)?,
                        user: r.get(1)?,
                        created_at_ms: r.get::<_, i64>(2)? as u64,
                        expires_at_ms: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                        revoked_at_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                    })
                },
            )
            .optional()
        })
    }

    fn revoke_token(&self, id: &str, at_ms: u64) -> Result<bool, IdentityError> {
        let n = self.with_db(|db| {
            db.execute(
                "UPDATE api_tokens SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
                params![id, at_ms as i64],
            )
        })?;
        Ok(n == 1)
    }

    fn insert_device(&self, d: &Device) -> Result<(), IdentityError> {
        self.with_db(|db| {
            db.execute(
                "INSERT OR IGNORE INTO devices (id, name, public_key, trust, local, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![d.id, d.name, d.public_key, d.trust.as_str(), d.local, d.created_at_ms as i64],
            )
        })?;
        Ok(())
    }

    fn device(&self, id: &str) -> Result<Option<Device>, IdentityError> {
        self.with_cache(|db, cache| {
            if let Some(d) = cache.devices.get(id) {
                return Ok(Some(d.clone()));
            }
            let device = db
                .prepare_cached("SELECT id, name, public_key, trust, local, created_at_ms FROM devices WHERE id = ?1")?
                .query_row([id], device_row)
                .optional()?;
            if let Some(d) = &device {
                insert_bounded(&mut cache.devices, id.to_owned(), d.clone());
            }
            Ok(device)
        })
    }

    fn devices(&self) -> Result<Vec<Device>, IdentityError> {
        self.with_db(|db| {
            let mut stmt =
                db.prepare("SELECT id, name, public_key, trust, local, created_at_ms FROM devices ORDER BY id")?;
            let rows = stmt.query_map([], device_row)?;
            rows.collect()
        })
    }

    fn set_device_trust(&self, id: &str, level: TrustLevel) -> Result<(), IdentityError> {
        self.with_db(|db| db.execute("UPDATE devices SET trust = ?2 WHERE id = ?1", params![id, level.as_str()]))?;
        Ok(())
    }

    fn insert_session(&self, s: &Session, token_hash: &str) -> Result<(), IdentityError> {
        self.with_db(|db| {
            db.execute(
                "INSERT INTO sessions (id, token_hash, user, device, roles, scope, method, created_at_ms, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    s.id,
                    token_hash,
                    s.user,
                    s.device,
                    serde_json::to_string(&s.roles).unwrap_or_else(|_| "[]".into()),
                    s.scope.as_ref().map(|p| p.to_string_lossy().into_owned()),
                    s.method,
                    s.created_at_ms as i64,
                    s.expires_at_ms as i64,
                ],
            )
        })?;
        Ok(())
    }

    fn session_by_token_hash(&self, hash: &str) -> Result<Option<Session>, IdentityError> {
        self.with_cache(|db, cache| {
            if let Some(s) = cache.by_token.get(hash).and_then(|id| cache.sessions.get(id)) {
                return Ok(Some(s.clone()));
            }
            let session = db
                .prepare_cached(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = ?1"))?
                .query_row([hash], session_row)
                .optional()?;
            if let Some(s) = &session {
                insert_bounded(&mut cache.by_token, hash.to_owned(), s.id.clone());
                insert_bounded(&mut cache.sessions, s.id.clone(), s.clone());
            }
            Ok(session)
        })
    }

    fn session(&self, id: &str) -> Result<Option<Session>, IdentityError> {
        self.with_cache(|db, cache| {
            if let Some(s) = cache.sessions.get(id) {
                return Ok(Some(s.clone()));
            }
            let session = db
                .prepare_cached(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"))?
                .query_row([id], session_row)
                .optional()?;
            if let Some(s) = &session {
                insert_bounded(&mut cache.sessions, id.to_owned(), s.clone());
            }
            Ok(session)
        })
    }

    fn sessions(&self) -> Result<Vec<Session>, IdentityError> {
        self.with_db(|db| {
            let mut stmt =
                db.prepare(&format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_at_ms DESC, id"))?;
            let rows = stmt.query_map([], session_row)?;
            rows.collect()
        })
    }

    fn revoke_session(&self, id: &str, at_ms: u64) -> Result<(), IdentityError> {
        self.with_db(|db| {
            db.execute(
                "UPDATE sessions SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
                params![id, at_ms as i64],
            )
        })?;
        Ok(())
    }
}
