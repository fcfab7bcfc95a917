//! The registry's storage: package files content-addressed by SHA-256 in
//! `blobs/`, and the index, namespaces, keys and tokens in SQLite
//! (`registry.db`, WAL, durable commits).
//!
//! ```text
//! DIR/registry.db            index, namespaces, keys, tokens, policies
//! DIR/blobs/<sha256>.ccpkg   package files, never rewritten
//! ```
//!
//! A version, once published, is never replaced or deleted: yanking only
//! marks it, so the same id and version can never name other bytes.
//! Tokens are stored as SHA-256 hashes (they are 256-bit random strings, so
//! a fast hash is enough); the token itself is shown once, at creation.

use coderclaw_core::Digest;
use coderclaw_core::audit_head::SignedHead;
use coderclaw_core::keys::{KeyId, PublicKey};
use coderclaw_core::manifest::{Kind, Manifest, SkillId};
use coderclaw_core::package::{KeyLookup, Package, TrustedKey, VerifiedPackage};
use coderclaw_core::signed_policy::SignedOrgPolicy;
use coderclaw_registry::api::{ApiError, ErrorCode, NamespaceKey, PackageInfo, PublishReply, SearchHit, VersionInfo};
use rusqlite::{Connection, OptionalExtension, params};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// What a token may do. Every scope also reads its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read (download, list) a private namespace.
    Read,
    /// Publish packages and the organisation policy.
    Publish,
    /// Yank versions.
    Yank,
}

impl Scope {
    /// Parses `read`, `publish` or `yank`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Scope::Read),
            "publish" => Ok(Scope::Publish),
            "yank" => Ok(Scope::Yank),
            other => Err(format!("unknown scope `{other}`: use publish, read or yank")),
        }
    }

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Publish => "publish",
            Scope::Yank => "yank",
        }
    }
}

/// A token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// Short id, for listing and revoking.
    pub id: String,
    /// The namespace it acts in.
    pub namespace: String,
    /// What it may do.
    pub scope: Scope,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds, if it expires.
    pub expires_at: Option<u64>,
    /// Unix seconds, if revoked.
    pub revoked_at: Option<u64>,
}

/// A namespace (a team).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    /// Its name.
    pub name: String,
    /// People who administer it.
    pub owners: Vec<String>,
    /// Whether anyone may read it without a token.
    pub public: bool,
    /// Unix seconds.
    pub created_at: u64,
}

/// The opened registry data directory.
pub struct RegistryStore {
    blobs: PathBuf,
    db: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('serial', 0);
CREATE TABLE IF NOT EXISTS namespaces (
    name TEXT PRIMARY KEY, public INTEGER NOT NULL, created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS owners (
    namespace TEXT NOT NULL REFERENCES namespaces(name), owner TEXT NOT NULL,
    PRIMARY KEY (namespace, owner)
);
CREATE TABLE IF NOT EXISTS namespace_keys (
    namespace TEXT NOT NULL REFERENCES namespaces(name), key_id TEXT NOT NULL, public_key TEXT NOT NULL,
    admin INTEGER NOT NULL, added_at INTEGER NOT NULL, revoked_at INTEGER,
    PRIMARY KEY (namespace, key_id)
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL REFERENCES namespaces(name), scope TEXT NOT NULL,
    created_at INTEGER NOT NULL, expires_at INTEGER, revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS packages (
    id TEXT NOT NULL, version TEXT NOT NULL, namespace TEXT NOT NULL REFERENCES namespaces(name),
    kind TEXT NOT NULL, description TEXT NOT NULL, digest TEXT NOT NULL, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, signer TEXT NOT NULL, manifest TEXT NOT NULL, published_at INTEGER NOT NULL,
    yanked_at INTEGER, yank_reason TEXT, serial INTEGER NOT NULL,
    PRIMARY KEY (id, version)
);
CREATE TABLE IF NOT EXISTS org_policies (
    namespace TEXT PRIMARY KEY REFERENCES namespaces(name), serial INTEGER NOT NULL, document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_heads (
    namespace   TEXT NOT NULL REFERENCES namespaces(name),
    device      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    document    TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, device, seq)
);
";

/// Heads kept per device (the oldest are dropped past this).
pub const MAX_HEADS_PER_DEVICE: i64 = 1000;

/// Devices whose heads one namespace holds: a token holder cannot grow the
/// table without bound by signing heads with fresh keys.
pub const MAX_DEVICES_PER_NAMESPACE: i64 = 10_000;

fn now() -> u64 {
    coderclaw_core::clock::now_secs()
}

fn err(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    err(ErrorCode::Internal, format!("registry storage: {e}"))
}

/// The one answer for a namespace that does not exist and for a private
/// one the caller may not read: the two must look the same.
pub(crate) fn not_found_namespace(name: &str) -> ApiError {
    err(ErrorCode::NotFound, format!("no namespace `{name}` in this registry (or it is private: send a token of it)"))
}

fn valid_namespace(name: &str) -> Result<(), ApiError> {
    SkillId::parse(&format!("{name}/x")).map(|_| ()).map_err(|_| {
        err(ErrorCode::InvalidRequest, format!("`{name}` is not a namespace: use lowercase letters, digits and `-`"))
    })
}

/// The namespace keys that may sign packages, as the package verifier
/// looks them up.
struct NamespaceKeys(Vec<NamespaceKey>, String);

impl KeyLookup for NamespaceKeys {
    fn lookup(&self, id: &KeyId) -> Option<TrustedKey> {
        let k = self.0.iter().find(|k| k.key_id == id.as_str())?;
        Some(TrustedKey {
            key: PublicKey::parse(&k.public_key).ok()?,
            namespaces: vec![self.1.clone()],
            revoked: k.revoked_at.is_some(),
        })
    }
}

impl RegistryStore {
    /// Opens (creating) the data directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, ApiError> {
        // Owner-only: private namespaces' packages and the token hashes live here.
        let blobs = dir.join("blobs");
        for d in [dir, blobs.as_path()] {
            match coderclaw_core::fsutil::private_dir(d)
                .map_err(|p| internal(format!("registry data directory {p}")))?
            {
                coderclaw_core::fsutil::DirAccess::ReadableByOthers(mode) => tracing::warn!(
                    dir = %d.display(),
                    mode = format!("{mode:03o}"),
                    "the registry data directory is readable by other users; consider chmod 700"
                ),
                coderclaw_core::fsutil::DirAccess::Private => {}
            }
        }
        let path = dir.join("registry.db");
        coderclaw_core::fsutil::ensure_private_file(&path).map_err(|e| internal(format!("{}: {e}", path.display())))?;
        let open = || -> rusqlite::Result<Connection> {
            let db = Connection::open(&path)?;
            db.pragma_update(None, "journal_mode", "WAL")?;
            db.pragma_update(None, "foreign_keys", "ON")?;
            db.pragma_update(None, "synchronous", "FULL")?;
            db.busy_timeout(Duration::from_secs(30))?;
            db.execute_batch(SCHEMA)?;
            Ok(db)
        };
        let db = open().map_err(|e| internal(format!("{}: {e}", path.display())))?;
        Ok(Self { blobs, db: Mutex::new(db) })
    }

    fn with_db<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut db)
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.blobs.join(format!("{sha256}.ccpkg"))
    }

    // --- namespaces, keys, tokens (admin, local) ---

    /// Creates a namespace.
    pub fn create_namespace(&self, name: &str, owners: &[String], public: bool) -> Result<Namespace, ApiError> {
        valid_namespace(name)?;
        let created_at = now();
        self.with_db(|db| {
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(internal)?;
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO namespaces (name, public, created_at) VALUES (?1, ?2, ?3)",
                    params![name, public, created_at as i64],
                )
                .map_err(internal)?;
            if inserted == 0 {
                return Err(err(ErrorCode::InvalidRequest, format!("namespace `{name}` exists already")));
            }
            for o in owners {
                tx.execute("INSERT OR IGNORE INTO owners (namespace, owner) VALUES (?1, ?2)", params![name, o])
                    .map_err(internal)?;
            }
            tx.commit().map_err(internal)
        })?;
        Ok(Namespace { name: name.to_owned(), owners: owners.to_vec(), public, created_at })
    }

    /// Every namespace.
    pub fn namespaces(&self) -> Result<Vec<Namespace>, ApiError> {
        self.with_db(|db| {
            let mut stmt = db
                .prepare(
                    "SELECT n.name, n.public, n.created_at, group_concat(o.owner, ' ') AS owners
                     FROM namespaces n LEFT JOIN owners o ON o.namespace = n.name GROUP BY n.name ORDER BY n.name",
                )
                .map_err(internal)?;
            let rows = stmt
                .query_map([], |r| {
                    let owners: Option<String> = r.get("owners")?;
                    Ok(Namespace {
                        name: r.get("name")?,
                        public: r.get("public")?,
                        created_at: r.get::<_, i64>("created_at")? as u64,
                        owners: owners.unwrap_or_default().split_whitespace().map(str::to_owned).collect(),
                    })
                })
                .map_err(internal)?;
            rows.collect::<Result<_, _>>().map_err(internal)
        })
    }

    /// Whether `name` is public; NotFound when it does not exist.
    pub fn namespace_is_public(&self, name: &str) -> Result<bool, ApiError> {
        self.with_db(|db| {
            db.query_row("SELECT public FROM namespaces WHERE name = ?1", [name], |r| r.get(0))
                .optional()
                .map_err(internal)?
                .ok_or_else(|| not_found_namespace(name))
        })
    }

    /// Authorises `key` to sign packages of `namespace` (and, if `admin`,
    /// its organisation policy).
    pub fn add_key(&self, namespace: &str, key: &PublicKey, admin: bool) -> Result<NamespaceKey, ApiError> {
        self.namespace_is_public(namespace)?;
        if self.keys(namespace)?.iter().any(|k| k.key_id == key.id().as_str() && k.revoked_at.is_some()) {
            return Err(err(
                ErrorCode::InvalidRequest,
                format!("key {} was revoked for `{namespace}`: revocation is permanent; use a new key", key.id()),
            ));
        }
        let k = NamespaceKey {
            key_id: key.id().to_string(),
            public_key: key.to_string(),
            admin,
            added_at: now(),
            revoked_at: None,
        };
        self.with_db(|db| {
            db.execute(
                "INSERT INTO namespace_keys (namespace, key_id, public_key, admin, added_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(namespace, key_id) DO UPDATE SET admin = ?4",
                params![namespace, k.key_id, k.public_key, admin, k.added_at as i64],
            )
            .map_err(internal)
        })?;
        Ok(k)
    }

    /// Revokes a namespace key: it signs nothing new for the namespace.
    pub fn revoke_key(&self, namespace: &str, key_id: &str) -> Result<NamespaceKey, ApiError> {
        let changed = self.with_db(|db| {
            db.execute(
                "UPDATE namespace_keys SET revoked_at = COALESCE(revoked_at, ?3) WHERE namespace = ?1 AND key_id = ?2",
                params![namespace, key_id, now() as i64],
            )
            .map_err(internal)
        })?;
        if changed == 0 {
            return Err(err(ErrorCode::NotFound, format!("key {key_id} is not a key of `{namespace}`")));
        }
        self.keys(namespace)?
            .into_iter()
            .find(|k| k.key_id == key_id)
            .ok_or_else(|| err(ErrorCode::NotFound, format!("key {key_id} is not a key of `{namespace}`")))
    }

    /// The keys of `namespace`, revoked ones included.
    pub fn keys(&self, namespace: &str) -> Result<Vec<NamespaceKey>, ApiError> {
        self.namespace_is_public(namespace)?;
        self.with_db(|db| {
            let mut stmt = db
                .prepare(
                    "SELECT key_id, public_key, admin, added_at, revoked_at FROM namespace_keys
                     WHERE namespace = ?1 ORDER BY added_at, key_id",
                )
                .map_err(internal)?;
            let rows = stmt
                .query_map([namespace], |r| {
                    Ok(NamespaceKey {
                        key_id: r.get("key_id")?,
                        public_key: r.get("public_key")?,
                        admin: r.get("admin")?,
                        added_at: r.get::<_, i64>("added_at")? as u64,
                        revoked_at: r.get::<_, Option<i64>>("revoked_at")?.map(|t| t as u64),
                    })
                })
                .map_err(internal)?;
            rows.collect::<Result<_, _>>().map_err(internal)
        })
    }

    /// Creates a token; returns the token (shown once) and its record.
    pub fn create_token(
        &self,
        namespace: &str,
        scope: Scope,
        expires_in: Option<Duration>,
    ) -> Result<(String, TokenInfo), ApiError> {
        self.namespace_is_public(namespace)?;
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| internal(format!("no randomness: {e}")))?;
        let token = format!("ccr_{}", hex::encode(raw));
        let hash = Digest::of(token.as_bytes()).to_hex();
        let created_at = now();
        let expires_at = match expires_in {
            Some(d) => Some(created_at.checked_add(d.as_secs()).filter(|t| *t < i64::MAX as u64).ok_or_else(|| {
                err(ErrorCode::InvalidRequest, "the expiry is too far in the future: give a shorter duration")
            })?),
            None => None,
        };
        let info = TokenInfo {
            id: hash[..12].to_owned(),
            namespace: namespace.to_owned(),
            scope,
            created_at,
            expires_at,
            revoked_at: None,
        };
        self.with_db(|db| {
            db.execute(
                "INSERT INTO tokens (id, token_hash, namespace, scope, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![info.id, hash, namespace, scope.as_str(), created_at as i64, info.expires_at.map(|t| t as i64)],
            )
            .map_err(internal)
        })?;
        Ok((token, info))
    }

    fn query_tokens(&self, filter: &str, value: &str) -> Result<Vec<TokenInfo>, ApiError> {
        self.with_db(|db| {
            let sql = format!(
                "SELECT id, namespace, scope, created_at, expires_at, revoked_at FROM tokens WHERE {filter} ORDER BY created_at, id"
            );
            let mut stmt = db.prepare(&sql).map_err(internal)?;
            let rows = stmt
                .query_map([value], |r| {
                    let scope: String = r.get("scope")?;
                    Ok(TokenInfo {
                        id: r.get("id")?,
                        namespace: r.get("namespace")?,
                        scope: Scope::parse(&scope).map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
                        })?,
                        created_at: r.get::<_, i64>("created_at")? as u64,
                        expires_at: r.get::<_, Option<i64>>("expires_at")?.map(|t| t as u64),
                        revoked_at: r.get::<_, Option<i64>>("revoked_at")?.map(|t| t as u64),
                    })
                })
                .map_err(internal)?;
            rows.collect::<Result<_, _>>().map_err(internal)
        })
    }

    /// The tokens of `namespace`.
    pub fn tokens(&self, namespace: &str) -> Result<Vec<TokenInfo>, ApiError> {
        self.query_tokens("namespace = ?1", namespace)
    }

    /// Revokes the token with id `id`.
    pub fn revoke_token(&self, id: &str) -> Result<TokenInfo, ApiError> {
        self.with_db(|db| {
            db.execute(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                params![id, now() as i64],
            )
            .map_err(internal)
        })?;
        self.query_tokens("id = ?1", id)?.pop().ok_or_else(|| {
            err(ErrorCode::NotFound, format!("no token with id {id}: see `coderclaw registry token list`"))
        })
    }

    /// The token's record if it is known, unexpired and unrevoked.
    pub fn authenticate(&self, token: &str) -> Result<TokenInfo, ApiError> {
        let hash = Digest::of(token.as_bytes()).to_hex();
        let info = self
            .query_tokens("token_hash = ?1", &hash)?
            .pop()
            .ok_or_else(|| err(ErrorCode::Unauthenticated, "this registry does not know the token"))?;
        if info.revoked_at.is_some() {
            return Err(err(ErrorCode::TokenRevoked, format!("token {} was revoked", info.id)));
        }
        if info.expires_at.is_some_and(|t| t <= now()) {
            return Err(err(ErrorCode::TokenExpired, format!("token {} expired: ask for a new one", info.id)));
        }
        Ok(info)
    }

    fn bump_serial(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<u64> {
        tx.query_row("UPDATE counters SET value = value + 1 WHERE name = 'serial' RETURNING value", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|v| v as u64)
    }

    // --- packages ---

    /// Publishes `bytes` as `who`: the token must be a publish token of the
    /// package's namespace and the package must be signed by one of the
    /// namespace's keys. A version is published once: the same bytes again
    /// are accepted as a no-op, other bytes are `version_exists` forever.
    pub fn publish(&self, who: &TokenInfo, bytes: &[u8]) -> Result<PublishReply, ApiError> {
        let (verified, namespace) = self.publishable(who, bytes)?;
        let sha256 = Digest::of(bytes).to_hex();
        let path = self.blob_path(&sha256);
        let fresh_blob = !path.exists();
        if fresh_blob {
            coderclaw_core::fsutil::write_durably_with_mode(&path, bytes, 0o600).map_err(internal)?;
        }
        let m = verified.manifest();
        let reply = PublishReply {
            id: m.id.to_string(),
            version: m.version.to_string(),
            digest: verified.digest().to_hex(),
            sha256: sha256.clone(),
            signer: verified.signer().to_string(),
            already_published: false,
        };
        let outcome = self.insert_version(&reply, m, &namespace, bytes.len());
        if outcome.is_err() && fresh_blob {
            // Remove the upload unless a concurrent publish of the same
            // bytes committed a row naming it meanwhile (checked under the lock).
            let _ = self.with_db(|db| {
                let named: bool = db
                    .query_row("SELECT EXISTS(SELECT 1 FROM packages WHERE sha256 = ?1)", [&sha256], |r| r.get(0))
                    .map_err(internal)?;
                if !named {
                    let _ = fs::remove_file(&path);
                }
                Ok(())
            });
        }
        outcome
    }

    /// Checks what `who` may publish: a publish token of the package's
    /// namespace, a plain or pre-release version, signed by one of the
    /// namespace's keys. Returns the verified package and its namespace.
    fn publishable(&self, who: &TokenInfo, bytes: &[u8]) -> Result<(VerifiedPackage, String), ApiError> {
        if who.scope != Scope::Publish {
            return Err(err(
                ErrorCode::InsufficientScope,
                format!("token {} has scope `{}`: publishing needs a `publish` token", who.id, who.scope.as_str()),
            ));
        }
        let package = Package::parse(bytes).map_err(|e| err(ErrorCode::BadPackage, e.to_string()))?;
        let manifest = package.manifest().map_err(|e| err(ErrorCode::BadPackage, e.to_string()))?;
        if !manifest.version.build.is_empty() {
            return Err(err(
                ErrorCode::BadPackage,
                format!(
                    "version {} has build metadata (`+{}`), which version requirements ignore: publish it as a plain or pre-release version",
                    manifest.version, manifest.version.build
                ),
            ));
        }
        let namespace = manifest.id.namespace().to_owned();
        if namespace != who.namespace {
            return Err(err(
                ErrorCode::WrongNamespace,
                format!("token {} publishes to `{}`, not to `{namespace}`", who.id, who.namespace),
            ));
        }
        let keys = NamespaceKeys(self.keys(&namespace)?, namespace.clone());
        let verified = package.verify(&keys).map_err(|e| {
            err(
                ErrorCode::SignatureRejected,
                format!("{e} (the registry accepts keys added with `registry key add {namespace}`)"),
            )
        })?;
        Ok((verified, namespace))
    }

    /// Records a new version (once: the same bytes again are a no-op, other
    /// bytes are `version_exists`), bumping the registry's serial.
    fn insert_version(
        &self,
        reply: &PublishReply,
        m: &Manifest,
        namespace: &str,
        size: usize,
    ) -> Result<PublishReply, ApiError> {
        self.with_db(|db| {
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(internal)?;
            let existing: Option<String> = tx
                .query_row(
                    "SELECT sha256 FROM packages WHERE id = ?1 AND version = ?2",
                    params![reply.id, reply.version],
                    |r| r.get(0),
                )
                .optional()
                .map_err(internal)?;
            match existing {
                Some(s) if s == reply.sha256 => return Ok(PublishReply { already_published: true, ..reply.clone() }),
                Some(_) => {
                    return Err(err(
                        ErrorCode::VersionExists,
                        format!(
                            "{} {} is already published with other bytes: versions are immutable (even yanked ones); publish a new version",
                            reply.id, reply.version
                        ),
                    ));
                }
                None => {}
            }
            let serial = Self::bump_serial(&tx).map_err(internal)?;
            tx.execute(
                "INSERT INTO packages (id, version, namespace, kind, description, digest, sha256, size, signer, manifest, published_at, serial)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    reply.id,
                    reply.version,
                    namespace,
                    m.kind.as_str(),
                    m.description,
                    reply.digest,
                    reply.sha256,
                    size as i64,
                    reply.signer,
                    serde_json::to_string(m).map_err(internal)?,
                    now() as i64,
                    serial as i64
                ],
            )
            .map_err(internal)?;
            tx.commit().map_err(internal)?;
            Ok(reply.clone())
        })
    }

    /// Marks `id` `version` yanked.
    pub fn yank(&self, who: &TokenInfo, id: &str, version: &str, reason: &str) -> Result<VersionInfo, ApiError> {
        if who.scope != Scope::Yank {
            return Err(err(
                ErrorCode::InsufficientScope,
                format!("token {} has scope `{}`: yanking needs a `yank` token", who.id, who.scope.as_str()),
            ));
        }
        let skill = SkillId::parse(id).map_err(|e| err(ErrorCode::InvalidRequest, e))?;
        if skill.namespace() != who.namespace {
            return Err(err(
                ErrorCode::WrongNamespace,
                format!("token {} yanks in `{}`, not in `{}`", who.id, who.namespace, skill.namespace()),
            ));
        }
        let changed = self.with_db(|db| {
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(internal)?;
            let serial = Self::bump_serial(&tx).map_err(internal)?;
            let n = tx
                .execute(
                    "UPDATE packages SET yanked_at = COALESCE(yanked_at, ?3), yank_reason = ?4, serial = ?5 WHERE id = ?1 AND version = ?2",
                    params![id, version, now() as i64, reason, serial as i64],
                )
                .map_err(internal)?;
            if n > 0 {
                tx.commit().map_err(internal)?;
            }
            Ok(n)
        })?;
        if changed == 0 {
            return Err(err(ErrorCode::NotFound, format!("{id} {version} is not published here")));
        }
        let v = semver::Version::parse(version).map_err(|e| err(ErrorCode::InvalidRequest, e.to_string()))?;
        self.package(id)?.exact(&v).cloned().ok_or_else(|| err(ErrorCode::NotFound, format!("{id} {version}")))
    }

    /// Every version of `id`.
    pub fn package(&self, id: &str) -> Result<PackageInfo, ApiError> {
        let versions = self.with_db(|db| {
            let mut stmt = db
                .prepare(
                    "SELECT version, digest, sha256, size, signer, manifest, published_at, yanked_at, yank_reason, serial
                     FROM packages WHERE id = ?1",
                )
                .map_err(internal)?;
            let rows = stmt
                .query_map([id], |r| {
                    let manifest: String = r.get("manifest")?;
                    let version: String = r.get("version")?;
                    let conv = |i: usize, e: Box<dyn std::error::Error + Send + Sync>| {
                        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e)
                    };
                    let yanked_at: Option<i64> = r.get("yanked_at")?;
                    Ok((
                        VersionInfo {
                            version: semver::Version::parse(&version).map_err(|e| conv(0, Box::new(e)))?,
                            digest: r.get("digest")?,
                            sha256: r.get("sha256")?,
                            size: r.get::<_, i64>("size")? as u64,
                            signer: r.get("signer")?,
                            published_at: r.get::<_, i64>("published_at")? as u64,
                            yanked: yanked_at.is_some(),
                            yank_reason: r.get("yank_reason")?,
                            manifest: serde_json::from_str::<Manifest>(&manifest).map_err(|e| conv(5, Box::new(e)))?,
                        },
                        r.get::<_, i64>("serial")? as u64,
                    ))
                })
                .map_err(internal)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(internal)
        })?;
        if versions.is_empty() {
            return Err(err(ErrorCode::NotFound, format!("{id} is not published in this registry")));
        }
        let serial = versions.iter().map(|(_, s)| *s).max().unwrap_or(0);
        let mut versions: Vec<VersionInfo> = versions.into_iter().map(|(v, _)| v).collect();
        versions.sort_by(|a, b| a.version.cmp(&b.version));
        let kind = versions.last().map(|v| v.manifest.kind).unwrap_or(Kind::Skill);
        Ok(PackageInfo { id: id.to_owned(), kind, serial, versions })
    }

    /// The SHA-256 of the file of `id` `version`.
    pub fn file_of(&self, id: &str, version: &semver::Version) -> Result<String, ApiError> {
        let sha: Option<String> = self.with_db(|db| {
            db.query_row(
                "SELECT sha256 FROM packages WHERE id = ?1 AND version = ?2",
                params![id, version.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(internal)
        })?;
        sha.ok_or_else(|| err(ErrorCode::NotFound, format!("{id} {version} is not published here")))
    }

    /// The stored file with this SHA-256.
    pub fn blob(&self, sha256: &str) -> Result<Vec<u8>, ApiError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(ErrorCode::InvalidRequest, "not a SHA-256"));
        }
        fs::read(self.blob_path(sha256)).map_err(|e| {
            internal(format!("the stored file {sha256}.ccpkg cannot be read ({e}): the registry's storage is damaged"))
        })
    }

    /// Packages whose id or description contains `query` (all when empty),
    /// of `kind` if given, in namespaces `readable` allows.
    pub fn search(
        &self,
        query: &str,
        kind: Option<Kind>,
        namespace: Option<&str>,
        readable: impl Fn(&str) -> bool,
    ) -> Result<Vec<SearchHit>, ApiError> {
        let ids: Vec<(String, String)> = self.with_db(|db| {
            let mut stmt = db
                .prepare(
                    "SELECT DISTINCT id, namespace FROM packages
                     WHERE (?1 = '' OR instr(lower(id), lower(?1)) > 0 OR instr(lower(description), lower(?1)) > 0)
                       AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR namespace = ?3) ORDER BY id",
                )
                .map_err(internal)?;
            let rows = stmt
                .query_map(params![query, kind.map(Kind::as_str), namespace], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(internal)?;
            rows.collect::<Result<_, _>>().map_err(internal)
        })?;
        let mut hits = Vec::new();
        for (id, _) in ids.into_iter().filter(|(_, ns)| readable(ns)) {
            let p = self.package(&id)?;
            let newest = p.versions.last().map(|v| v.manifest.description.clone()).unwrap_or_default();
            let resolved = p.resolve(&semver::VersionReq::STAR);
            let latest = resolved.map(|v| v.version.clone());
            let manifest = resolved.or(p.versions.last()).map(|v| &v.manifest);
            let capabilities = manifest.map(|m| m.capabilities.clone());
            let dangerous = manifest.is_some_and(|m| m.dangerous || !m.capabilities.shell.is_empty());
            hits.push(SearchHit { id, kind: p.kind, description: newest, latest, capabilities, dangerous });
        }
        Ok(hits)
    }

    // --- organisation policy ---

    /// The signed organisation policy of `namespace`, if one was published.
    pub fn org_policy(&self, namespace: &str) -> Result<Option<SignedOrgPolicy>, ApiError> {
        self.namespace_is_public(namespace)?;
        let doc: Option<String> = self.with_db(|db| {
            db.query_row("SELECT document FROM org_policies WHERE namespace = ?1", [namespace], |r| r.get(0))
                .optional()
                .map_err(internal)
        })?;
        doc.map(|d| serde_json::from_str(&d).map_err(internal)).transpose()
    }

    /// Witnesses a device's signed audit head, append-only: the head must be
    /// signed by the device's own key (the device id is that key's id), and
    /// extend the newest head this registry holds for the device (a higher
    /// record number; the same record with the same hash is accepted again).
    /// Any token of the namespace may witness.
    pub fn put_audit_head(&self, who: &TokenInfo, namespace: &str, head: &SignedHead) -> Result<(), ApiError> {
        if who.namespace != namespace {
            return Err(err(
                ErrorCode::WrongNamespace,
                format!("token {} acts in `{}`, not `{namespace}`", who.id, who.namespace),
            ));
        }
        let key = head.verify().map_err(|e| err(ErrorCode::SignatureRejected, e))?;
        if key.id().as_str() != head.device {
            return Err(err(
                ErrorCode::SignatureRejected,
                format!(
                    "the head is for device {} but signed by key {}: a device signs its own log",
                    head.device,
                    key.id()
                ),
            ));
        }
        let Ok(seq) = i64::try_from(head.seq) else {
            return Err(err(ErrorCode::InvalidRequest, format!("record number {} is out of range", head.seq)));
        };
        let text = serde_json::to_string(head).map_err(internal)?;
        self.with_db(|db| {
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(internal)?;
            let last: Option<(i64, String)> = tx
                .query_row(
                    "SELECT seq, document FROM audit_heads WHERE namespace = ?1 AND device = ?2 ORDER BY seq DESC LIMIT 1",
                    params![namespace, head.device],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(internal)?;
            if let Some((seq, doc)) = last {
                let seen: SignedHead = serde_json::from_str(&doc).map_err(internal)?;
                if seq as u64 == head.seq && seen.hash == head.hash {
                    return Ok(());
                }
                if seq as u64 >= head.seq {
                    return Err(err(
                        ErrorCode::StalePolicy,
                        format!(
                            "this registry witnessed record {seq} of device {}: a head must extend it \
                             (a lower or different head means the log was cut short or rewritten)",
                            head.device
                        ),
                    ));
                }
            } else {
                let devices: i64 = tx
                    .query_row(
                        "SELECT COUNT(DISTINCT device) FROM audit_heads WHERE namespace = ?1",
                        params![namespace],
                        |r| r.get(0),
                    )
                    .map_err(internal)?;
                if devices >= MAX_DEVICES_PER_NAMESPACE {
                    return Err(err(
                        ErrorCode::InvalidRequest,
                        format!(
                            "namespace `{namespace}` already holds the audit heads of {devices} devices, \
                             the most it keeps: a new device cannot be witnessed here"
                        ),
                    ));
                }
            }
            tx.execute(
                "INSERT INTO audit_heads (namespace, device, seq, document, received_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![namespace, head.device, seq, text, now() as i64],
            )
            .map_err(internal)?;
            tx.execute(
                "DELETE FROM audit_heads WHERE namespace = ?1 AND device = ?2 AND seq NOT IN
                 (SELECT seq FROM audit_heads WHERE namespace = ?1 AND device = ?2 ORDER BY seq DESC LIMIT ?3)",
                params![namespace, head.device, MAX_HEADS_PER_DEVICE],
            )
            .map_err(internal)?;
            tx.commit().map_err(internal)
        })
    }

    /// The newest head witnessed for `device` in `namespace`.
    pub fn audit_head(&self, namespace: &str, device: &str) -> Result<Option<SignedHead>, ApiError> {
        self.with_db(|db| {
            let doc: Option<String> = db
                .query_row(
                    "SELECT document FROM audit_heads WHERE namespace = ?1 AND device = ?2 ORDER BY seq DESC LIMIT 1",
                    params![namespace, device],
                    |r| r.get(0),
                )
                .optional()
                .map_err(internal)?;
            doc.map(|d| serde_json::from_str(&d).map_err(internal)).transpose()
        })
    }

    /// The heads witnessed for `device` in `namespace`, oldest first (at
    /// most [`MAX_HEADS_PER_DEVICE`]): a log rewritten by someone holding
    /// the device key, who then witnessed a new head, still contradicts the
    /// older ones.
    pub fn audit_head_history(&self, namespace: &str, device: &str) -> Result<Vec<SignedHead>, ApiError> {
        self.with_db(|db| {
            let mut stmt = db
                .prepare("SELECT document FROM audit_heads WHERE namespace = ?1 AND device = ?2 ORDER BY seq LIMIT ?3")
                .map_err(internal)?;
            let docs = stmt
                .query_map(params![namespace, device, MAX_HEADS_PER_DEVICE], |r| r.get::<_, String>(0))
                .map_err(internal)?;
            docs.map(|d| serde_json::from_str(&d.map_err(internal)?).map_err(internal)).collect()
        })
    }

    /// Stores a new organisation policy: a publish token of the namespace,
    /// a signature by one of its admin keys, and a serial above the stored one.
    pub fn put_org_policy(&self, who: &TokenInfo, doc: &SignedOrgPolicy) -> Result<(), ApiError> {
        if who.scope != Scope::Publish {
            return Err(err(
                ErrorCode::InsufficientScope,
                "publishing the organisation policy needs a `publish` token",
            ));
        }
        if doc.namespace != who.namespace {
            return Err(err(
                ErrorCode::WrongNamespace,
                format!("token {} acts in `{}`, not `{}`", who.id, who.namespace, doc.namespace),
            ));
        }
        let admins: Vec<PublicKey> = self
            .keys(&doc.namespace)?
            .into_iter()
            .filter(|k| k.admin && k.revoked_at.is_none())
            .filter_map(|k| PublicKey::parse(&k.public_key).ok())
            .collect();
        doc.verify(&doc.namespace, &admins).map_err(|e| err(ErrorCode::SignatureRejected, e.to_string()))?;
        let text = serde_json::to_string(doc).map_err(internal)?;
        self.with_db(|db| {
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(internal)?;
            let current: Option<i64> = tx
                .query_row("SELECT serial FROM org_policies WHERE namespace = ?1", [&doc.namespace], |r| r.get(0))
                .optional()
                .map_err(internal)?;
            if let Some(c) = current.filter(|c| *c as u64 >= doc.serial) {
                return Err(err(
                    ErrorCode::StalePolicy,
                    format!("the registry holds policy serial {c}: a new policy needs a higher serial than that"),
                ));
            }
            tx.execute(
                "INSERT INTO org_policies (namespace, serial, document) VALUES (?1, ?2, ?3)
                 ON CONFLICT(namespace) DO UPDATE SET serial = ?2, document = ?3",
                params![doc.namespace, doc.serial as i64, text],
            )
            .map_err(internal)?;
            tx.commit().map_err(internal)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coderclaw_core::keys::SecretKey;

    #[test]
    fn audit_heads_are_bounded_per_namespace_and_in_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegistryStore::open(dir.path()).unwrap();
        store.create_namespace("team", &["alice".into()], true).unwrap();
        let (_, who) = store.create_token("team", Scope::Read, None).unwrap();
        let key = SecretKey::from_seed([7; 32]);
        let device = key.public().id().as_str().to_owned();
        store.put_audit_head(&who, "team", &SignedHead::sign(&device, 10, &"a".repeat(64), &key)).unwrap();

        // Beyond i64: refused, not wrapped into a negative record number.
        let huge = SignedHead::sign(&device, u64::MAX, &"b".repeat(64), &key);
        let e = store.put_audit_head(&who, "team", &huge).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{}", e.message);

        // Fill the namespace with other devices' heads up to the cap.
        store
            .with_db(|db| {
                let tx = db.transaction().map_err(internal)?;
                for i in 1..MAX_DEVICES_PER_NAMESPACE {
                    tx.execute(
                        "INSERT INTO audit_heads (namespace, device, seq, document, received_at) VALUES ('team', ?1, 1, '{}', 0)",
                        params![format!("filler-{i}")],
                    )
                    .map_err(internal)?;
                }
                tx.commit().map_err(internal)
            })
            .unwrap();
        let fresh = SecretKey::from_seed([8; 32]);
        let head = SignedHead::sign(fresh.public().id().as_str(), 1, &"c".repeat(64), &fresh);
        let e = store.put_audit_head(&who, "team", &head).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("10000 devices"), "{}", e.message);
        // A device already witnessed goes on.
        store.put_audit_head(&who, "team", &SignedHead::sign(&device, 20, &"d".repeat(64), &key)).unwrap();
        let history = store.audit_head_history("team", &device).unwrap();
        assert_eq!(history.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![10, 20]);
    }
}
