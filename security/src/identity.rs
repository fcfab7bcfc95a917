//! Identities, devices and sessions, stored in `identity.db` (SQLite, WAL)
//! in the state directory, or in a cluster's database
//! ([`IdentityStore::use_backend`]).
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
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

mod sqlite;
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
    /// A shared store (a cluster's database) failed or could not be reached.
    #[error("identities in {store}: {message}")]
    Store {
        /// The store, its password hidden.
        store: String,
        /// What went wrong.
        message: String,
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

/// Where identities are kept: the state directory's `identity.db`, or
/// a cluster's database (every node sees the same users and sessions).
/// Rows only: hashing, checks and randomness are [`IdentityStore`]'s.
pub trait IdentityBackend: Send + Sync {
    /// The store as errors name it.
    fn name(&self) -> String;
    /// Whether several machines use it.
    fn shared(&self) -> bool {
        false
    }
    /// Inserts `user` unless the name is taken; whether it was inserted.
    fn insert_user(&self, user: &User, password_hash: Option<&str>) -> Result<bool, IdentityError>;
    /// One user.
    fn user(&self, name: &str) -> Result<Option<User>, IdentityError>;
    /// Every user, by name.
    fn users(&self) -> Result<Vec<User>, IdentityError>;
    /// Deletes a user and their API tokens, and revokes their sessions (at
    /// `at_ms`), in one transaction; whether the user existed.
    fn delete_user(&self, name: &str, at_ms: u64) -> Result<bool, IdentityError>;
    /// Sets a user's roles, or password hash (`Some(None)` clears it), and
    /// revokes their sessions (at `at_ms`), which hold the old ones, in one
    /// transaction; whether the user exists.
    fn update_user(
        &self,
        name: &str,
        roles: Option<&[String]>,
        password_hash: Option<Option<&str>>,
        at_ms: u64,
    ) -> Result<bool, IdentityError>;
    /// The user's password hash, if the user exists and has one.
    fn password_hash(&self, name: &str) -> Result<Option<String>, IdentityError>;
    /// Stores an API token by the hash of its secret.
    fn insert_token(&self, token: &ApiToken, secret_hash: &str) -> Result<(), IdentityError>;
    /// The token whose secret hashes to `secret_hash`.
    fn token_by_hash(&self, secret_hash: &str) -> Result<Option<ApiToken>, IdentityError>;
    /// Revokes an unrevoked token; whether one was.
    fn revoke_token(&self, id: &str, at_ms: u64) -> Result<bool, IdentityError>;
    /// Stores a device unless its id is known.
    fn insert_device(&self, device: &Device) -> Result<(), IdentityError>;
    /// One device.
    fn device(&self, id: &str) -> Result<Option<Device>, IdentityError>;
    /// Every device, by id.
    fn devices(&self) -> Result<Vec<Device>, IdentityError>;
    /// Sets a device's trust level.
    fn set_device_trust(&self, id: &str, level: TrustLevel) -> Result<(), IdentityError>;
    /// Stores a session by the hash of its token.
    fn insert_session(&self, session: &Session, token_hash: &str) -> Result<(), IdentityError>;
    /// The session whose token hashes to `hash`.
    fn session_by_token_hash(&self, hash: &str) -> Result<Option<Session>, IdentityError>;
    /// One session.
    fn session(&self, id: &str) -> Result<Option<Session>, IdentityError>;
    /// Every session, newest first.
    fn sessions(&self) -> Result<Vec<Session>, IdentityError>;
    /// Marks a session revoked (a second time keeps the first).
    fn revoke_session(&self, id: &str, at_ms: u64) -> Result<(), IdentityError>;
}

/// The store.
pub struct IdentityStore {
    backend: RwLock<Arc<dyn IdentityBackend>>,
    /// With a shared backend, this machine's device: the only one `local`
    /// (every node registers its own as local there).
    local_device: RwLock<Option<String>>,
}

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

pub(crate) fn roles_from(json: String) -> Vec<String> {
    serde_json::from_str(&json).unwrap_or_default()
}

impl IdentityStore {
    /// Opens (creating) `identity.db` in `dir`.
    pub fn open(dir: &Path) -> Result<IdentityStore, IdentityError> {
        let backend = sqlite::SqliteIdentities::open(dir)?;
        Ok(IdentityStore { backend: RwLock::new(Arc::new(backend)), local_device: RwLock::new(None) })
    }

    /// From now on, identities are `backend`'s (a cluster's database):
    /// users, tokens, devices and sessions in the state directory's file
    /// are no longer seen.
    /// `local_device` (this machine's device id) is the only device seen
    /// as local from then on.
    pub fn use_backend(&self, backend: Arc<dyn IdentityBackend>, local_device: &str) {
        tracing::info!(store = %backend.name(), "identities come from a shared store");
        *self.local_device.write().unwrap_or_else(|p| p.into_inner()) = Some(local_device.to_owned());
        *self.backend.write().unwrap_or_else(|p| p.into_inner()) = backend;
    }

    /// `d` as this machine sees it: in a shared store, only its own device
    /// is local.
    fn seen_here(&self, mut d: Device) -> Device {
        if let Some(local) = self.local_device.read().unwrap_or_else(|p| p.into_inner()).as_deref() {
            d.local = d.id == local;
        }
        d
    }

    /// Where identities are kept, as errors name it.
    pub fn store_name(&self) -> String {
        self.backend().name()
    }

    /// Whether several machines use the same identities.
    pub fn is_shared(&self) -> bool {
        self.backend().shared()
    }

    fn backend(&self) -> Arc<dyn IdentityBackend> {
        self.backend.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    // --- users ---

    /// Adds a user with `roles` and, optionally, a password.
    pub fn add_user(&self, name: &str, roles: &[String], password: Option<&str>) -> Result<User, IdentityError> {
        check_name(name)?;
        let hash = password.map(hash_password).transpose()?;
        let user = User {
            name: name.to_owned(),
            roles: roles.to_vec(),
            has_password: hash.is_some(),
            created_at_ms: now_ms(),
        };
        if !self.backend().insert_user(&user, hash.as_deref())? {
            return Err(IdentityError::UserExists(name.to_owned()));
        }
        Ok(user)
    }

    /// One user.
    pub fn user(&self, name: &str) -> Result<User, IdentityError> {
        self.backend().user(name)?.ok_or_else(|| IdentityError::NoSuchUser(name.to_owned()))
    }

    /// Every user.
    pub fn users(&self) -> Result<Vec<User>, IdentityError> {
        self.backend().users()
    }

    /// Removes a user: their API tokens are deleted and their sessions
    /// revoked with them.
    pub fn remove_user(&self, name: &str) -> Result<(), IdentityError> {
        if self.backend().delete_user(name, now_ms())? {
            Ok(())
        } else {
            Err(IdentityError::NoSuchUser(name.to_owned()))
        }
    }

    /// Gives a user these roles. Their sessions, which hold the old roles,
    /// are revoked: they log in again.
    pub fn set_roles(&self, name: &str, roles: &[String]) -> Result<User, IdentityError> {
        if !self.backend().update_user(name, Some(roles), None, now_ms())? {
            return Err(IdentityError::NoSuchUser(name.to_owned()));
        }
        self.user(name)
    }

    /// Sets a user's password (None: none, so they cannot log in with one).
    /// Their sessions are revoked.
    pub fn set_password(&self, name: &str, password: Option<&str>) -> Result<User, IdentityError> {
        let hash = password.map(hash_password).transpose()?;
        if !self.backend().update_user(name, None, Some(hash.as_deref()), now_ms())? {
            return Err(IdentityError::NoSuchUser(name.to_owned()));
        }
        self.user(name)
    }

    /// Checks a password. Unknown users cost the same hashing work as known
    /// ones, so timing does not reveal which names exist.
    pub fn verify_password(&self, name: &str, password: &str) -> Result<User, IdentityError> {
        let Some(hash) = self.backend().password_hash(name)? else {
            let _ = hash_password(password);
            return Err(IdentityError::BadCredentials);
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
        // A lifetime past what the store holds is "as far as it can go".
        let expires =
            ttl.map(|t| created.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)).min(i64::MAX as u64));
        let record =
            ApiToken { id, user: user.to_owned(), created_at_ms: created, expires_at_ms: expires, revoked_at_ms: None };
        self.backend().insert_token(&record, &sha256_hex(&token))?;
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
        match self.backend().token_by_hash(&sha256_hex(token))? {
            Some(t) if t.user == user && t.revoked_at_ms.is_none() && t.expires_at_ms.is_none_or(|e| e > now_ms()) => {
                Ok((self.user(user)?, t.expires_at_ms))
            }
            _ => Err(IdentityError::BadCredentials),
        }
    }

    /// Revokes an API token by id.
    pub fn revoke_token(&self, id: &str) -> Result<(), IdentityError> {
        if self.backend().revoke_token(id, now_ms())? { Ok(()) } else { Err(IdentityError::NoSuchToken(id.to_owned())) }
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
        let device = Device {
            id: id.to_owned(),
            name: name.to_owned(),
            public_key: public_key.to_owned(),
            trust: TrustLevel::Untrusted,
            local,
            created_at_ms: now_ms(),
        };
        self.backend().insert_device(&device)?;
        self.device(id)
    }

    /// One device.
    pub fn device(&self, id: &str) -> Result<Device, IdentityError> {
        let d = self.backend().device(id)?.ok_or_else(|| IdentityError::NoSuchDevice(id.to_owned()))?;
        Ok(self.seen_here(d))
    }

    /// Every device.
    pub fn devices(&self) -> Result<Vec<Device>, IdentityError> {
        Ok(self.backend().devices()?.into_iter().map(|d| self.seen_here(d)).collect())
    }

    /// Sets a device's trust level; returns the previous one.
    pub fn set_device_trust(&self, id: &str, level: TrustLevel) -> Result<TrustLevel, IdentityError> {
        let before = self.device(id)?.trust;
        self.backend().set_device_trust(id, level)?;
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
        let session = Session {
            id,
            user: user.to_owned(),
            device: device.to_owned(),
            roles: roles.to_vec(),
            scope: scope.map(Path::to_path_buf),
            method: method.to_owned(),
            created_at_ms: now_ms(),
            expires_at_ms,
            revoked_at_ms: None,
        };
        self.backend().insert_session(&session, &sha256_hex(&token))?;
        Ok((session, token))
    }

    /// The session a bearer token stands for, whatever its state (callers
    /// check expiry and revocation: `Security::subject` refuses them, and
    /// the decision function refuses them again for embedders that build a
    /// `Subject` themselves).
    pub fn session_by_token(&self, token: &str) -> Result<Session, IdentityError> {
        self.backend().session_by_token_hash(&sha256_hex(token))?.ok_or(IdentityError::UnknownSession)
    }

    /// Every session, newest first.
    pub fn sessions(&self) -> Result<Vec<Session>, IdentityError> {
        self.backend().sessions()
    }

    /// One session by id.
    pub fn session(&self, id: &str) -> Result<Session, IdentityError> {
        self.backend().session(id)?.ok_or_else(|| IdentityError::NoSuchSession(id.to_owned()))
    }

    /// Revokes a session by id (revoking it again keeps the first time).
    pub fn revoke_session(&self, id: &str) -> Result<Session, IdentityError> {
        self.backend().revoke_session(id, now_ms())?;
        self.session(id)
    }
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
