//! Identities, devices and sessions, stored in `identity.db` (SQLite, WAL)
//! in the state directory.
//!
//! - **Users** authenticate locally with a password (argon2id, salted) or a
//!   locally issued API token, or with an OIDC ID token (see [`crate::oidc`]).
//! - **Devices** have an id, a public key and a trust level. Unknown devices
//!   start `untrusted`; [`IdentityStore::set_device_trust`] raises or lowers it.
//! - **Sessions** are created for (user, device, roles, optional scope),
//!   expire, can be revoked, and are presented as a random bearer token of
//!   which only the SHA-256 is stored.
//!
//! Every authentication attempt, session creation or revocation and trust
//! change is written to the audit log by the caller ([`crate::security`]).
//! Passwords and tokens never are.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use coderclaw_core::Digest;
use coderclaw_core::TrustLevel;
use coderclaw_core::clock::now_ms;
use coderclaw_core::decision::SessionFacts;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use thiserror::Error;

/// Why an identity operation failed. Authentication failures are
/// deliberately vague to the caller about which part was wrong.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The SQLite database failed.
    #[error("identity database {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// Wrong user, password or token.
    #[error("authentication failed: unknown user or wrong credentials")]
    BadCredentials,
    /// The session token matches no session.
    #[error("the session token is not valid: it matches no session")]
    UnknownSession,
    /// A user with this name exists.
    #[error("user {0:?} already exists")]
    UserExists(String),
    /// No such user.
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    /// No such device.
    #[error("no device with id {0:?}")]
    NoSuchDevice(String),
    /// No such session.
    #[error("no session with id {0:?}")]
    NoSuchSession(String),
    /// No such API token.
    #[error("no API token with id {0:?}")]
    NoSuchToken(String),
    /// A name that cannot be a user name.
    #[error("{0:?} is not a user name: use letters, digits, `.`, `_`, `-` and `@` (at most 64)")]
    BadName(String),
    /// The session asks for a role the user does not hold.
    #[error("user {user:?} does not hold role `{role}` (their roles: {held})")]
    RoleNotHeld {
        /// The user.
        user: String,
        /// The role asked for.
        role: String,
        /// The roles held.
        held: String,
    },
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
    /// Password hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// A local user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Name.
    pub name: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Whether a password is set.
    pub has_password: bool,
    /// Created, Unix milliseconds.
    pub created_at_ms: u64,
}

/// A device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// Id (the key id of its public key).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Its public key, one-line form.
    pub public_key: String,
    /// Stored trust level.
    pub trust: TrustLevel,
    /// Whether this is the machine the state directory lives on.
    pub local: bool,
    /// Registered, Unix milliseconds.
    pub created_at_ms: u64,
}

/// A session as stored (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    /// Session id.
    pub id: String,
    /// User id.
    pub user: String,
    /// Device id.
    pub device: String,
    /// Roles held in the session.
    pub roles: Vec<String>,
    /// Directory the session is limited to.
    pub scope: Option<PathBuf>,
    /// How the user authenticated (`password`, `token`, `oidc:<issuer>`).
    pub method: String,
    /// Created, Unix milliseconds.
    pub created_at_ms: u64,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: u64,
    /// Revocation time, if revoked.
    pub revoked_at_ms: Option<u64>,
}

impl Session {
    /// `active`, `expired` or `revoked` at `now_ms`.
    pub fn state(&self, now_ms: u64) -> &'static str {
        if self.revoked_at_ms.is_some() {
            "revoked"
        } else if self.expires_at_ms <= now_ms {
            "expired"
        } else {
            "active"
        }
    }

    /// The facts the decision function needs.
    pub fn facts(&self) -> SessionFacts {
        SessionFacts {
            id: self.id.clone(),
            expires_at_ms: self.expires_at_ms,
            revoked: self.revoked_at_ms.is_some(),
            scope: self.scope.clone(),
        }
    }
}

/// A locally issued API token as stored (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    /// Token id (its prefix, shown in listings).
    pub id: String,
    /// Owner.
    pub user: String,
    /// Created, Unix milliseconds.
    pub created_at_ms: u64,
    /// Expiry, if any.
    pub expires_at_ms: Option<u64>,
    /// Revocation time, if revoked.
    pub revoked_at_ms: Option<u64>,
}

/// The store.
pub struct IdentityStore {
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

fn random_hex(bytes: usize) -> Result<String, IdentityError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| IdentityError::Random(e.to_string()))?;
    Ok(hex::encode(buf))
}

fn sha256_hex(s: &str) -> String {
    Digest::of(s.as_bytes()).to_hex()
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok { Ok(()) } else { Err(IdentityError::BadName(name.to_owned())) }
}

fn roles_from(json: String) -> Vec<String> {
    serde_json::from_str(&json).unwrap_or_default()
}

impl IdentityStore {
    /// Opens (creating) `identity.db` in `dir`.
    pub fn open(dir: &Path) -> Result<IdentityStore, IdentityError> {
        let path = dir.join("identity.db");
        let err = |source| IdentityError::Db { path: path.clone(), source };
        let schema = format!("{SCHEMA}{}", crate::sqlite::generation_schema(GENERATION_TABLES));
        let db = crate::sqlite::open(&path, false, &schema).map_err(err)?;
        Ok(IdentityStore { path, db: Mutex::new(db), cache: Mutex::default() })
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

    // --- users ---

    /// Adds a user with `roles` and, optionally, a password.
    pub fn add_user(&self, name: &str, roles: &[String], password: Option<&str>) -> Result<User, IdentityError> {
        check_name(name)?;
        let hash = password.map(hash_password).transpose()?;
        let created = now_ms();
        let roles_json = serde_json::to_string(roles).unwrap_or_else(|_| "[]".into());
        let inserted = self.with_db(|db| {
            db.execute(
                "INSERT OR IGNORE INTO users (name, password_hash, roles, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![name, hash, roles_json, created as i64],
            )
        })?;
        if inserted == 0 {
            return Err(IdentityError::UserExists(name.to_owned()));
        }
        Ok(User { name: name.to_owned(), roles: roles.to_vec(), has_password: hash.is_some(), created_at_ms: created })
    }

    /// One user.
    pub fn user(&self, name: &str) -> Result<User, IdentityError> {
        self.with_db(|db| {
            db.query_row(
                "SELECT name, roles, password_hash IS NOT NULL, created_at_ms FROM users WHERE name = ?1",
                [name],
                |r| {
                    Ok(User {
                        name: r.get(0)?,
                        roles: roles_from(r.get(1)?),
                        has_password: r.get(2)?,
                        created_at_ms: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
            .optional()
        })?
        .ok_or_else(|| IdentityError::NoSuchUser(name.to_owned()))
    }

    /// Every user.
    pub fn users(&self) -> Result<Vec<User>, IdentityError> {
        self.with_db(|db| {
            let mut stmt =
                db.prepare("SELECT name, roles, password_hash IS NOT NULL, created_at_ms FROM users ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok(User {
                    name: r.get(0)?,
                    roles: roles_from(r.get(1)?),
                    has_password: r.get(2)?,
                    created_at_ms: r.get::<_, i64>(3)? as u64,
                })
            })?;
            rows.collect()
        })
    }

    /// Checks a password. Unknown users cost the same hashing work as known
    /// ones, so timing does not reveal which names exist.
    pub fn verify_password(&self, name: &str, password: &str) -> Result<User, IdentityError> {
        let stored: Option<Option<String>> = self.with_db(|db| {
            db.query_row("SELECT password_hash FROM users WHERE name = ?1", [name], |r| r.get(0)).optional()
        })?;
        let hash = match stored.flatten() {
            Some(h) => h,
            None => {
                let _ = hash_password(password);
                return Err(IdentityError::BadCredentials);
            }
        };
        let parsed = PasswordHash::new(&hash).map_err(|_| IdentityError::BadCredentials)?;
        Argon2::default().verify_password(password.as_bytes(), &parsed).map_err(|_| IdentityError::BadCredentials)?;
        self.user(name)
    }

    // --- API tokens ---

    /// Issues an API token for `user`; returns the stored record and the
    /// secret token (shown once, never stored).
    pub fn create_token(&self, user: &str, ttl: Option<Duration>) -> Result<(ApiToken, String), IdentityError> {
        self.user(user)?;
        let id = format!("cct_{}", random_hex(6)?);
        let token = format!("{id}_{}", random_hex(32)?);
        let created = now_ms();
        // A lifetime past what SQLite stores is "as far as it can go".
        let expires =
            ttl.map(|t| created.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)).min(i64::MAX as u64));
        self.with_db(|db| {
            db.execute(
                "INSERT INTO api_tokens (id, user, secret_hash, created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, user, sha256_hex(&token), created as i64, expires.map(|e| e as i64)],
            )
        })?;
        let record =
            ApiToken { id, user: user.to_owned(), created_at_ms: created, expires_at_ms: expires, revoked_at_ms: None };
        Ok((record, token))
    }

    /// Checks an API token presented by `user`: it must exist, belong to
    /// `user`, be unrevoked and unexpired.
    pub fn verify_token(&self, user: &str, token: &str) -> Result<User, IdentityError> {
        self.verify_token_until(user, token).map(|(u, _)| u)
    }

    /// [`IdentityStore::verify_token`], with when the token expires (ms
    /// since the epoch), if it does: a session it starts ends no later.
    pub fn verify_token_until(&self, user: &str, token: &str) -> Result<(User, Option<u64>), IdentityError> {
        let row: Option<(String, Option<i64>, Option<i64>)> = self.with_db(|db| {
            db.query_row(
                "SELECT user, expires_at_ms, revoked_at_ms FROM api_tokens WHERE secret_hash = ?1",
                [sha256_hex(token)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })?;
        match row {
            Some((owner, expires, None)) if owner == user && expires.is_none_or(|e| (e as u64) > now_ms()) => {
                Ok((self.user(user)?, expires.map(|e| e as u64)))
            }
            _ => Err(IdentityError::BadCredentials),
        }
    }

    /// Revokes an API token by id.
    pub fn revoke_token(&self, id: &str) -> Result<(), IdentityError> {
        let n = self.with_db(|db| {
            db.execute(
                "UPDATE api_tokens SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
                params![id, now_ms() as i64],
            )
        })?;
        if n == 0 { Err(IdentityError::NoSuchToken(id.to_owned())) } else { Ok(()) }
    }

    // --- devices ---

    /// Registers a device (or returns it if its id is known). New devices
    /// start `untrusted`.
    pub fn register_device(
        &self,
        id: &str,
        name: &str,
        public_key: &str,
        local: bool,
    ) -> Result<Device, IdentityError> {
        self.with_db(|db| {
            db.execute(
                "INSERT OR IGNORE INTO devices (id, name, public_key, trust, local, created_at_ms)
                 VALUES (?1, ?2, ?3, 'untrusted', ?4, ?5)",
                params![id, name, public_key, local, now_ms() as i64],
            )
        })?;
        self.device(id)
    }

    /// One device.
    pub fn device(&self, id: &str) -> Result<Device, IdentityError> {
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
        })?
        .ok_or_else(|| IdentityError::NoSuchDevice(id.to_owned()))
    }

    /// Every device.
    pub fn devices(&self) -> Result<Vec<Device>, IdentityError> {
        self.with_db(|db| {
            let mut stmt =
                db.prepare("SELECT id, name, public_key, trust, local, created_at_ms FROM devices ORDER BY id")?;
            let rows = stmt.query_map([], device_row)?;
            rows.collect()
        })
    }

    /// Sets a device's trust level; returns the previous one.
    pub fn set_device_trust(&self, id: &str, level: TrustLevel) -> Result<TrustLevel, IdentityError> {
        let before = self.device(id)?.trust;
        self.with_db(|db| db.execute("UPDATE devices SET trust = ?2 WHERE id = ?1", params![id, level.as_str()]))?;
        Ok(before)
    }

    // --- sessions ---

    /// Creates a session; returns it and its bearer token (shown once).
    pub fn create_session(
        &self,
        user: &str,
        device: &str,
        roles: &[String],
        scope: Option<&Path>,
        method: &str,
        expires_at_ms: u64,
    ) -> Result<(Session, String), IdentityError> {
        let id = format!("ses_{}", random_hex(8)?);
        let token = format!("ccs_{}", random_hex(32)?);
        let created = now_ms();
        let session = Session {
            id,
            user: user.to_owned(),
            device: device.to_owned(),
            roles: roles.to_vec(),
            scope: scope.map(Path::to_path_buf),
            method: method.to_owned(),
            created_at_ms: created,
            expires_at_ms,
            revoked_at_ms: None,
        };
        self.with_db(|db| {
            db.execute(
                "INSERT INTO sessions (id, token_hash, user, device, roles, scope, method, created_at_ms, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    session.id,
                    sha256_hex(&token),
                    session.user,
                    session.device,
                    serde_json::to_string(&session.roles).unwrap_or_else(|_| "[]".into()),
                    session.scope.as_ref().map(|p| p.to_string_lossy().into_owned()),
                    session.method,
                    created as i64,
                    session.expires_at_ms as i64,
                ],
            )
        })?;
        Ok((session, token))
    }

    /// The session a bearer token stands for, whatever its state (callers
    /// check expiry and revocation: `Security::subject` refuses them, and
    /// the decision function refuses them again for embedders that build a
    /// `Subject` themselves).
    pub fn session_by_token(&self, token: &str) -> Result<Session, IdentityError> {
        let hash = sha256_hex(token);
        self.with_cache(|db, cache| {
            if let Some(s) = cache.by_token.get(&hash).and_then(|id| cache.sessions.get(id)) {
                return Ok(Some(s.clone()));
            }
            let session = db
                .prepare_cached(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = ?1"))?
                .query_row([&hash], session_row)
                .optional()?;
            if let Some(s) = &session {
                insert_bounded(&mut cache.by_token, hash, s.id.clone());
                insert_bounded(&mut cache.sessions, s.id.clone(), s.clone());
            }
            Ok(session)
        })?
        .ok_or(IdentityError::UnknownSession)
    }

    /// Every session, newest first.
    pub fn sessions(&self) -> Result<Vec<Session>, IdentityError> {
        self.with_db(|db| {
            let mut stmt =
                db.prepare(&format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_at_ms DESC, id"))?;
            let rows = stmt.query_map([], session_row)?;
            rows.collect()
        })
    }

    /// One session by id.
    pub fn session(&self, id: &str) -> Result<Session, IdentityError> {
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
        })?
        .ok_or_else(|| IdentityError::NoSuchSession(id.to_owned()))
    }

    /// Revokes a session by id (revoking it again keeps the first time).
    pub fn revoke_session(&self, id: &str) -> Result<Session, IdentityError> {
        self.with_db(|db| {
            db.execute(
                "UPDATE sessions SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
                params![id, now_ms() as i64],
            )
        })?;
        self.session(id)
    }
}

const SESSION_COLUMNS: &str = "id, user, device, roles, scope, method, created_at_ms, expires_at_ms, revoked_at_ms";

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

fn hash_password(password: &str) -> Result<String, IdentityError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| IdentityError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| IdentityError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IdentityError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The database and its write-ahead log, as bytes.
    fn stored_bytes(dir: &Path) -> Vec<u8> {
        ["identity.db", "identity.db-wal"].iter().filter_map(|f| std::fs::read(dir.join(f)).ok()).flatten().collect()
    }

    #[test]
    fn passwords_tokens_and_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityStore::open(dir.path()).unwrap();
        store.add_user("alice", &["developer".into()], Some("correct horse")).unwrap();
        store.add_user("bob", &["readonly".into()], None).unwrap();
        assert!(matches!(store.add_user("alice", &[], None), Err(IdentityError::UserExists(_))));
        assert!(matches!(store.add_user("a b", &[], None), Err(IdentityError::BadName(_))));

        assert_eq!(store.verify_password("alice", "correct horse").unwrap().roles, ["developer"]);
        assert!(matches!(store.verify_password("alice", "wrong"), Err(IdentityError::BadCredentials)));
        assert!(matches!(store.verify_password("nobody", "x"), Err(IdentityError::BadCredentials)));
        assert!(matches!(store.verify_password("bob", ""), Err(IdentityError::BadCredentials)));
        // The stored hash is argon2id, not the password.
        assert!(!stored_bytes(dir.path()).windows(13).any(|w| w == b"correct horse"));

        let (rec, token) = store.create_token("bob", None).unwrap();
        assert!(token.starts_with(&rec.id));
        assert_eq!(store.verify_token("bob", &token).unwrap().name, "bob");
        assert!(
            matches!(store.verify_token("alice", &token), Err(IdentityError::BadCredentials)),
            "another user's token"
        );
        assert!(matches!(store.verify_token("bob", &format!("{token}x")), Err(IdentityError::BadCredentials)));
        store.revoke_token(&rec.id).unwrap();
        assert!(matches!(store.verify_token("bob", &token), Err(IdentityError::BadCredentials)));
        let (_, expired) = store.create_token("bob", Some(Duration::ZERO)).unwrap();
        assert!(matches!(store.verify_token("bob", &expired), Err(IdentityError::BadCredentials)));

        let d = store.register_device("dev1", "laptop", "ed25519:abc", false).unwrap();
        assert_eq!(d.trust, TrustLevel::Untrusted);
        assert_eq!(store.set_device_trust("dev1", TrustLevel::Verified).unwrap(), TrustLevel::Untrusted);
        assert_eq!(store.register_device("dev1", "other", "k", false).unwrap().trust, TrustLevel::Verified);

        let (s, token) =
            store.create_session("alice", "dev1", &["developer".into()], None, "password", now_ms() + 60_000).unwrap();
        assert_eq!(store.session_by_token(&token).unwrap(), s);
        assert!(matches!(store.session_by_token("ccs_forged"), Err(IdentityError::UnknownSession)));
        let revoked = store.revoke_session(&s.id).unwrap();
        assert!(revoked.revoked_at_ms.is_some());
        assert!(store.session_by_token(&token).unwrap().facts().revoked);
        let raw = stored_bytes(dir.path());
        assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()), "only the hash of a token is stored");
    }
}
