//! The state directory (`CODERCLAW_HOME`, default `~/.coderclaw`): signing
//! keys, the trust store, installed packages and the compiled-code cache.
//!
//! ```text
//! keys/<name>.key          secret keys, 0600, never printed
//! packages/<digest>.ccpkg  installed packages, content-addressed
//! cache/compiled/          compiled machine code by component digest
//! state.db                 SQLite (WAL): trusted keys, installed skills
//! audit.db                 SQLite (WAL): the hash-chained audit log
//! ```
//!
//! Every change here (key created, key trusted or revoked, package installed
//! or refused, installed package verified or refused on load) is recorded in
//! the audit log, attributed to the local OS user.
//!
//! Installed packages are verified again every time they are loaded, so a
//! key revoked after installation stops its packages from running.

use crate::audit::{AuditEvent, AuditLog, AuditResult};
use crate::shared::{SharedSkills, SharedTrust, SignedTrustChange, SkillChange, TrustChange};
use coderclaw_core::Digest;
use coderclaw_core::fsutil::FileIdentity;
use coderclaw_core::keys::{KeyError, KeyId, PublicKey, SecretKey};
use coderclaw_core::manifest::{Manifest, SkillId};
use coderclaw_core::package::{KeyLookup, Package, PackageError, TrustedKey, VerifiedPackage};
use rusqlite::{Connection, OptionalExtension, params};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use thiserror::Error;

/// What can go wrong with the state directory.
#[derive(Debug, Error)]
pub enum HomeError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The state directory is writable by other users.
    #[error("state directory {0}")]
    UnsafeDir(String),
    /// The SQLite database failed.
    #[error("state database {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// A key problem (permissions, corrupt file, bad public key...).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A package failed verification; nothing was installed.
    #[error("{0}")]
    Package(#[from] PackageError),
    /// No key with this name in `keys/`.
    #[error("no signing key named {0:?}")]
    NoSuchKey(String),
    /// A key with this name exists already.
    #[error("a signing key named {0:?} already exists: choose another name")]
    KeyExists(String),
    /// Key names are file names: keep them simple.
    #[error("{0:?} is not a key name: use letters, digits, `-` and `_`")]
    BadKeyName(String),
    /// The key id is not in the trust store.
    #[error("key {0} is not in the trust store")]
    UnknownKey(String),
    /// The namespace is not a valid namespace.
    #[error("{0:?} is not a namespace: use lowercase letters, digits and `-`")]
    BadNamespace(String),
    /// The audit log could not record an action; the action was not done.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The stored package file is not the one that was installed.
    #[error("the stored package of {id} was replaced (it now holds {found}): reinstall {id}")]
    StoredPackageMismatch {
        /// The installed id.
        id: String,
        /// What the file holds now.
        found: String,
    },
    /// A package published by another node of the cluster is older than
    /// the version installed here.
    #[error("{id}: the cluster's package is version {offered}, older than the {have} installed here: not installed")]
    ClusterDowngrade {
        /// The skill.
        id: String,
        /// The version installed here.
        have: semver::Version,
        /// The cluster's.
        offered: semver::Version,
    },
    /// `install_verified` was given bytes of another package than the one verified.
    #[error("the package file given for {0} is not the package that was verified: nothing was installed")]
    NotTheVerifiedPackage(String),
    /// No installed skill with this id.
    #[error("skill {0} is not installed")]
    NotInstalled(String),
}

/// A signing key in `keys/`: its name and its public key, or why the file is
/// unusable (bad permissions, corrupt).
pub type NamedKey = (String, Result<PublicKey, KeyError>);

/// One trusted key as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrustEntry {
    /// The key id.
    pub key_id: String,
    /// The public key (one-line form).
    pub public_key: String,
    /// Namespaces it may sign for.
    pub namespaces: Vec<String>,
    /// When it was added (Unix seconds).
    pub added_at: u64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<u64>,
}

/// One installed skill as recorded in the index.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InstalledSkill {
    /// `namespace/name`.
    pub id: String,
    /// Semantic version.
    pub version: semver::Version,
    /// The package digest the signature covers.
    pub digest: Digest,
    /// SHA-256 of the component.
    pub component_digest: Digest,
    /// Key id of the signer.
    pub signer: KeyId,
    /// When it was installed (Unix seconds).
    pub installed_at: u64,
    /// The manifest as signed.
    pub manifest: Manifest,
}

/// The opened state directory.
pub struct Home {
    root: PathBuf,
    db_path: PathBuf,
    db: Mutex<Connection>,
    audit: AuditLog,
    actor: String,
    /// Packages verified since the trust store and the installed skills
    /// last changed (by anyone: see [`crate::sqlite::generation_schema`]).
    verified: Mutex<VerifiedCache>,
    /// The cluster's trust, when this is a cluster node's.
    shared_trust: RwLock<Option<Arc<dyn SharedTrust>>>,
    /// The cluster's installed skills, when this is a cluster node's.
    shared_skills: RwLock<Option<Arc<dyn SharedSkills>>>,
}

/// Verified packages by skill id, valid while the generation of `state.db`
/// reads `generation` and each package file is the one that was read.
#[derive(Default)]
struct VerifiedCache {
    generation: i64,
    packages: std::collections::HashMap<String, (FileIdentity, Arc<VerifiedPackage>)>,
}

/// Most verified packages kept in memory (one per installed skill used).
const MAX_VERIFIED_CACHED: usize = 1024;

/// The tables whose changes invalidate verified packages.
const GENERATION_TABLES: &[&str] = &["trusted_keys", "key_namespaces", "installed_skills"];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS trusted_keys (
    key_id      TEXT PRIMARY KEY,
    public_key  TEXT NOT NULL,
    added_at    INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE IF NOT EXISTS key_namespaces (
    key_id      TEXT NOT NULL REFERENCES trusted_keys(key_id),
    namespace   TEXT NOT NULL,
    PRIMARY KEY (key_id, namespace)
);
CREATE TABLE IF NOT EXISTS org_policies_seen (
    registry    TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    serial      INTEGER NOT NULL,
    PRIMARY KEY (registry, namespace)
);
CREATE TABLE IF NOT EXISTS cluster_sync (
    name        TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS installed_skills (
    id               TEXT PRIMARY KEY,
    version          TEXT NOT NULL,
    digest           TEXT NOT NULL,
    component_digest TEXT NOT NULL,
    signer           TEXT NOT NULL,
    installed_at     INTEGER NOT NULL,
    manifest         TEXT NOT NULL
);
";

fn now() -> u64 {
    coderclaw_core::clock::now_secs()
}

/// Whether `namespace` is one a skill id may have.
fn valid_namespace(namespace: &str) -> bool {
    SkillId::parse(&format!("{namespace}/x")).is_ok()
}

impl Home {
    /// Opens (creating if needed, 0700) the state directory at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Home, HomeError> {
        let root = root.into();
        match coderclaw_core::fsutil::private_dir(&root) {
            Err(problem) => return Err(HomeError::UnsafeDir(problem)),
            Ok(coderclaw_core::fsutil::DirAccess::ReadableByOthers(mode)) => tracing::warn!(
                dir = %root.display(),
                mode = format!("{mode:03o}"),
                "the state directory is readable by other users; its databases are not (0600), \
                 but consider chmod 700"
            ),
            Ok(_) => {}
        }
        for dir in [root.clone(), root.join("keys"), root.join("packages"), root.join("cache")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| HomeError::Io { path: dir.clone(), source })?;
        }
        let db_path = root.join("state.db");
        let db_err = |source| HomeError::Db { path: db_path.clone(), source };
        let schema = format!("{SCHEMA}{}", crate::sqlite::generation_schema(GENERATION_TABLES));
        let db = crate::sqlite::open(&db_path, false, &schema).map_err(db_err)?;
        let audit = AuditLog::open(root.join("audit.db"))?;
        // Every handle on a state directory that has a device signs its
        // checkpoints, not only those the security service opens: a record
        // due one and written without it would read as a removed checkpoint.
        // (A missing or unsafe key is the security service's to report.)
        if let Ok(key) = SecretKey::read(&root.join("device.key")) {
            let device = key.public().id();
            audit.enable_checkpoints(key, device.as_str());
        }
        Ok(Home {
            root,
            db_path,
            db: Mutex::new(db),
            audit,
            actor: local_user(),
            verified: Mutex::default(),
            shared_trust: RwLock::new(None),
            shared_skills: RwLock::new(None),
        })
    }

    /// The serial of the newest organisation policy of `namespace` from
    /// `registry` this state directory has enforced, if any.
    pub fn org_policy_seen(&self, registry: &str, namespace: &str) -> Result<Option<u64>, HomeError> {
        self.with_db(|db| {
            db.query_row(
                "SELECT serial FROM org_policies_seen WHERE registry = ?1 AND namespace = ?2",
                rusqlite::params![registry, namespace],
                |r| r.get::<_, i64>(0),
            )
            .optional()
        })
        .map(|s| s.map(|s| s as u64))
    }

    /// Remembers that an organisation policy was enforced, so that its
    /// stored copy going missing is noticed.
    pub fn record_org_policy_seen(&self, registry: &str, namespace: &str, serial: u64) -> Result<(), HomeError> {
        self.with_db(|db| {
            db.execute(
                "INSERT INTO org_policies_seen (registry, namespace, serial) VALUES (?1, ?2, ?3)
                 ON CONFLICT (registry, namespace) DO UPDATE SET serial = MAX(serial, excluded.serial)",
                rusqlite::params![registry, namespace, serial as i64],
            )
            .map(|_| ())
        })
    }

    /// The audit log of this state directory.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Records `outcome` of `action` on a resource, with the error as the
    /// reason when it failed, and passes the outcome through. An audit
    /// failure fails the action: nothing unrecorded is reported as done.
    fn audited<T>(
        &self,
        action: &str,
        resource: (&str, &str),
        outcome: Result<T, HomeError>,
        describe: impl FnOnce(&T) -> (String, serde_json::Value),
    ) -> Result<T, HomeError> {
        let event = match &outcome {
            Ok(v) => {
                let (reason, metadata) = describe(v);
                AuditEvent::new(action, AuditResult::Allowed, resource.0, resource.1).reason(reason).metadata(metadata)
            }
            Err(e) => {
                let result = match e {
                    HomeError::Package(_)
                    | HomeError::StoredPackageMismatch { .. }
                    | HomeError::NotTheVerifiedPackage(_)
                    | HomeError::Key(KeyError::Permissions { .. }) => AuditResult::Denied,
                    _ => AuditResult::Error,
                };
                AuditEvent::new(action, result, resource.0, resource.1).reason(e.to_string())
            }
        };
        self.audit.append(event.user(&self.actor))?;
        outcome
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where compiled machine code is cached.
    pub fn compiled_cache_dir(&self) -> PathBuf {
        self.root.join("cache").join("compiled")
    }

    fn with_db<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, HomeError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut db).map_err(|source| HomeError::Db { path: self.db_path.clone(), source })
    }

    // --- signing keys ---

    fn key_path(&self, name: &str) -> Result<PathBuf, HomeError> {
        let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(HomeError::BadKeyName(name.to_owned()));
        }
        Ok(self.root.join("keys").join(format!("{name}.key")))
    }

    /// Creates a new signing key; returns its public key.
    pub fn generate_key(&self, name: &str) -> Result<PublicKey, HomeError> {
        let outcome = self.generate_key_unaudited(name);
        self.audited("key.generate", ("key", name), outcome, |k| {
            (format!("key id {}", k.id()), serde_json::Value::Null)
        })
    }

    fn generate_key_unaudited(&self, name: &str) -> Result<PublicKey, HomeError> {
        let path = self.key_path(name)?;
        if path.exists() {
            return Err(HomeError::KeyExists(name.to_owned()));
        }
        let key = SecretKey::generate()?;
        key.write_new(&path)?;
        Ok(key.public())
    }

    /// Copies the secret key in `file` (which only its owner may read)
    /// into the state directory as `name`; returns its public key.
    pub fn import_key(&self, name: &str, file: &Path) -> Result<PublicKey, HomeError> {
        let outcome = (|| {
            let path = self.key_path(name)?;
            if path.exists() {
                return Err(HomeError::KeyExists(name.to_owned()));
            }
            let key = SecretKey::read(file)?;
            key.write_new(&path)?;
            Ok(key.public())
        })();
        self.audited("key.import", ("key", name), outcome, |k| {
            (format!("key id {}", k.id()), serde_json::json!({ "from": file.display().to_string() }))
        })
    }

    /// Deletes the signing key `name`; returns its public key. Trust in it
    /// is unchanged (revoke it with `trust_revoke` if it leaked).
    pub fn delete_key(&self, name: &str) -> Result<PublicKey, HomeError> {
        let outcome = (|| {
            let path = self.key_path(name)?;
            let public = SecretKey::read(&path)?.public();
            fs::remove_file(&path).map_err(|source| HomeError::Io { path: path.clone(), source })?;
            Ok(public)
        })();
        self.audited("key.delete", ("key", name), outcome, |k| (format!("key id {}", k.id()), serde_json::Value::Null))
    }

    /// Replaces the signing key `name` with a new one. The old one is kept
    /// as `name-<old key id>`, so it can still sign while skills are
    /// re-signed; each namespace this trust store trusts the old key for
    /// trusts the new one too (an overlap: revoke the old key once every
    /// skill is re-signed). Returns (old, new, the namespaces).
    pub fn rotate_key(&self, name: &str) -> Result<(PublicKey, PublicKey, Vec<String>), HomeError> {
        let outcome = (|| {
            let path = self.key_path(name)?;
            let old = SecretKey::read(&path)?.public();
            let kept = self.key_path(&format!("{name}-{}", old.id()))?;
            let fresh = self.key_path(&format!("{name}-new"))?;
            let new = SecretKey::generate()?;
            new.write_new(&fresh)?;
            let io = |path: &Path| {
                let path = path.to_path_buf();
                move |source| HomeError::Io { path, source }
            };
            // The old key is never lost: kept under its new name first.
            fs::hard_link(&path, &kept).map_err(io(&kept))?;
            fs::rename(&fresh, &path).map_err(io(&path))?;
            Ok((old, new.public()))
        })();
        let (old, new) = self.audited("key.rotate", ("key", name), outcome, |(old, new)| {
            (
                format!("key id {} replaces {} (kept as {name}-{})", new.id(), old.id(), old.id()),
                serde_json::Value::Null,
            )
        })?;
        let namespaces =
            self.trust_entry(&old.id())?.filter(|e| e.revoked_at.is_none()).map(|e| e.namespaces).unwrap_or_default();
        for namespace in &namespaces {
            self.trust_add(namespace, &new)?;
        }
        Ok((old, new, namespaces))
    }

    /// Reads a signing key by name (checks its permissions).
    pub fn secret_key(&self, name: &str) -> Result<SecretKey, HomeError> {
        let path = self.key_path(name)?;
        if !path.exists() {
            return Err(HomeError::NoSuchKey(name.to_owned()));
        }
        Ok(SecretKey::read(&path)?)
    }

    /// Every signing key, by name, with its public key or why it is unusable.
    pub fn keys(&self) -> Result<Vec<NamedKey>, HomeError> {
        let dir = self.root.join("keys");
        let entries = fs::read_dir(&dir).map_err(|source| HomeError::Io { path: dir.clone(), source })?;
        let mut out: Vec<_> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".key").map(str::to_owned))
            .map(|name| {
                let key = SecretKey::read(&dir.join(format!("{name}.key"))).map(|k| k.public());
                (name, key)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    // --- trust store ---

    /// From now on, trust changes made here are the cluster's `shared`
    /// (published there, signed by this machine's device key, and recorded
    /// in its audit log in the same transaction), and [`Home::sync_trust`]
    /// applies the cluster's changes here.
    pub fn share_trust(&self, shared: Arc<dyn SharedTrust>) {
        *self.shared_trust.write().unwrap_or_else(|p| p.into_inner()) = Some(shared);
    }

    /// Whether trust is the cluster's (see [`Home::share_trust`]).
    pub fn shares_trust(&self) -> bool {
        self.shared_trust().is_some()
    }

    fn shared_trust(&self) -> Option<Arc<dyn SharedTrust>> {
        self.shared_trust.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This machine's device key, which signs what it publishes.
    fn device_key(&self) -> Result<SecretKey, HomeError> {
        Ok(SecretKey::read(&self.root.join("device.key"))?)
    }

    /// Applies the cluster's trust changes published since the last call
    /// to this state directory's trust store: each only if its signature
    /// holds and its publisher is one of `publishers` (device key ids: this
    /// machine's and `cluster.nodeKeys`, as `Security::cluster_signers`). Each change was recorded in the
    /// cluster's audit log where it was made; one refused here is recorded
    /// (denied) and skipped, and so is one that cannot be read or applied.
    /// Where it got to is kept in the state directory, per set of
    /// publishers: listing another machine reads the changes again from
    /// the start. Returns how many changed something here; 0 outside a
    /// cluster.
    pub fn sync_trust(&self, publishers: &[String]) -> Result<usize, HomeError> {
        let Some(shared) = self.shared_trust() else { return Ok(0) };
        let mut allowed: Vec<&str> = publishers.iter().map(String::as_str).collect();
        allowed.sort_unstable();
        allowed.dedup();
        let position = format!("trust {} {}", self.audit.store_name(), allowed.join(","));
        let mut applied = 0;
        loop {
            let after = self.sync_position(&position)?;
            let changes = shared.changes(after, 500)?;
            let Some(last) = changes.last().map(|(seq, _)| *seq) else { return Ok(applied) };
            for (seq, change) in changes {
                match change.and_then(|c| self.apply_trust_change(&c, &allowed)) {
                    Ok(true) => applied += 1,
                    Ok(false) => {}
                    Err(problem) => {
                        tracing::warn!(change = seq, problem, "a trust change of the cluster was not applied here");
                        let record =
                            AuditEvent::new("trust.sync", AuditResult::Denied, "cluster-trust", &seq.to_string())
                                .reason(format!("not applied here: {problem}"))
                                .user(&self.actor);
                        self.audit.append(record)?;
                    }
                }
            }
            self.set_sync_position(&position, last)?;
        }
    }

    /// Applies one published trust change if its signature holds and its
    /// publisher is `allowed` (key ids). Whether it changed anything.
    fn apply_trust_change(&self, signed: &SignedTrustChange, allowed: &[&str]) -> Result<bool, String> {
        let publisher = signed.verify()?;
        if !allowed.contains(&publisher.id().as_str()) {
            return Err(format!(
                "published by {publisher}, which is neither this machine nor in cluster.nodeKeys of config.yaml"
            ));
        }
        match &signed.change {
            TrustChange::Add { namespace, key } => {
                let key = PublicKey::parse(key).map_err(|e| e.to_string())?;
                let before = self.trust_entry(&key.id()).map_err(|e| e.to_string())?;
                let after = self.trust_add_unaudited(namespace, &key).map_err(|e| e.to_string())?;
                Ok(before.as_ref() != Some(&after))
            }
            // A key this node never trusted has nothing to revoke.
            TrustChange::Revoke { key_id } => {
                let before = KeyId::parse(key_id).ok().and_then(|id| self.trust_entry(&id).ok().flatten());
                match self.trust_revoke_unaudited(key_id) {
                    Ok(after) => Ok(before.as_ref() != Some(&after)),
                    Err(HomeError::UnknownKey(_)) => Ok(false),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    /// Where the sync named `name` got to (0: nowhere yet).
    fn sync_position(&self, name: &str) -> Result<i64, HomeError> {
        self.with_db(|db| db.query_row("SELECT seq FROM cluster_sync WHERE name = ?1", [name], |r| r.get(0)).optional())
            .map(Option::unwrap_or_default)
    }

    fn set_sync_position(&self, name: &str, seq: i64) -> Result<(), HomeError> {
        self.with_db(|db| {
            db.execute(
                "INSERT INTO cluster_sync (name, seq) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                params![name, seq],
            )
            .map(|_| ())
        })
    }

    /// Trusts `key` to sign packages of `namespace` (adds the key if new).
    /// On a cluster node, every node's trust: published, signed by this
    /// machine's device key, and applied here.
    pub fn trust_add(&self, namespace: &str, key: &PublicKey) -> Result<TrustEntry, HomeError> {
        if let Some(shared) = self.shared_trust().filter(|_| valid_namespace(namespace)) {
            let record = AuditEvent::new("trust.add", AuditResult::Allowed, "key", key.id().as_str())
                .reason(format!("may sign for {namespace}, on every node of the cluster"))
                .metadata(serde_json::json!({ "namespace": namespace }))
                .user(&self.actor);
            let change = TrustChange::Add { namespace: namespace.to_owned(), key: key.to_string() };
            let signed = SignedTrustChange::sign(change, &self.device_key()?);
            shared.publish(&signed, &record, &self.audit.signing())?;
            return self.trust_add_unaudited(namespace, key);
        }
        let outcome = self.trust_add_unaudited(namespace, key);
        self.audited("trust.add", ("key", key.id().as_str()), outcome, |e| {
            (format!("may sign for {}", e.namespaces.join(", ")), serde_json::json!({ "namespace": namespace }))
        })
    }

    fn trust_add_unaudited(&self, namespace: &str, key: &PublicKey) -> Result<TrustEntry, HomeError> {
        if !valid_namespace(namespace) {
            return Err(HomeError::BadNamespace(namespace.to_owned()));
        }
        let id = key.id();
        self.with_db(|db| {
            let tx = db.transaction()?;
            tx.execute(
                "INSERT INTO trusted_keys (key_id, public_key, added_at) VALUES (?1, ?2, ?3) ON CONFLICT(key_id) DO NOTHING",
                params![id.as_str(), key.to_string(), now() as i64],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO key_namespaces (key_id, namespace) VALUES (?1, ?2)",
                params![id.as_str(), namespace],
            )?;
            tx.commit()
        })?;
        self.trust_entry(&id)?.ok_or_else(|| HomeError::UnknownKey(id.to_string()))
    }

    /// Marks a key revoked: its signatures are refused from now on,
    /// including for packages already installed. On a cluster node, on
    /// every node.
    pub fn trust_revoke(&self, key_id: &str) -> Result<TrustEntry, HomeError> {
        if let Some(shared) = self.shared_trust() {
            // Only a key this node knows: a typo is not published.
            let id = KeyId::parse(key_id)?;
            if self.trust_entry(&id)?.is_some() {
                let record = AuditEvent::new("trust.revoke", AuditResult::Allowed, "key", key_id)
                    .reason("revoked, on every node of the cluster")
                    .user(&self.actor);
                let revoke = TrustChange::Revoke { key_id: key_id.to_owned() };
                let published = self.device_key().and_then(|k| {
                    Ok(shared.publish(&SignedTrustChange::sign(revoke, &k), &record, &self.audit.signing())?)
                });
                let Err(e) = published else { return self.trust_revoke_unaudited(key_id) };
                // Revoked here whatever happens: refusing is the safe side.
                let outcome = self.trust_revoke_unaudited(key_id);
                self.audited("trust.revoke", ("key", key_id), outcome, |_| {
                    (format!("revoked on this node only: not published to the cluster ({e})"), serde_json::Value::Null)
                })?;
                return Err(e);
            }
        }
        let outcome = self.trust_revoke_unaudited(key_id);
        self.audited("trust.revoke", ("key", key_id), outcome, |_| ("revoked".into(), serde_json::Value::Null))
    }

    fn trust_revoke_unaudited(&self, key_id: &str) -> Result<TrustEntry, HomeError> {
        let id = KeyId::parse(key_id)?;
        let changed = self.with_db(|db| {
            db.execute(
                "UPDATE trusted_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE key_id = ?1",
                params![id.as_str(), now() as i64],
            )
        })?;
        if changed == 0 {
            return Err(HomeError::UnknownKey(key_id.to_owned()));
        }
        self.trust_entry(&id)?.ok_or_else(|| HomeError::UnknownKey(key_id.to_owned()))
    }

    /// One key's entry: a keyed query, since verification calls it on
    /// every run of an installed skill.
    fn trust_entry(&self, id: &KeyId) -> Result<Option<TrustEntry>, HomeError> {
        Ok(self.query_trust(Some(id.as_str()))?.pop())
    }

    /// Every trusted (or revoked) key.
    pub fn trust_list(&self) -> Result<Vec<TrustEntry>, HomeError> {
        self.query_trust(None)
    }

    /// Trust entries, all of them or the one with `key_id`.
    fn query_trust(&self, key_id: Option<&str>) -> Result<Vec<TrustEntry>, HomeError> {
        self.with_db(|db| {
            let mut stmt = db.prepare(
                "SELECT k.key_id, k.public_key, k.added_at, k.revoked_at, group_concat(n.namespace, ' ')
                 FROM trusted_keys k LEFT JOIN key_namespaces n ON n.key_id = k.key_id
                 WHERE ?1 IS NULL OR k.key_id = ?1
                 GROUP BY k.key_id ORDER BY k.added_at, k.key_id",
            )?;
            let rows = stmt.query_map([key_id], |r| {
                let namespaces: Option<String> = r.get(4)?;
                let mut namespaces: Vec<String> =
                    namespaces.unwrap_or_default().split_whitespace().map(str::to_owned).collect();
                namespaces.sort();
                Ok(TrustEntry {
                    key_id: r.get(0)?,
                    public_key: r.get(1)?,
                    added_at: r.get::<_, i64>(2)? as u64,
                    revoked_at: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
                    namespaces,
                })
            })?;
            rows.collect()
        })
    }

    // --- packages ---

    /// Verifies `bytes` against the trust store, stores the package by its
    /// digest and records it as the installed version of its id. Nothing is
    /// written unless verification passes. This SKIPS the install gates
    /// (denied skills, downgrades, capability increases): installs on a
    /// user's behalf go through `Security::install`.
    pub fn dangerous_install_ungated(&self, bytes: &[u8]) -> Result<InstalledSkill, HomeError> {
        let parsed = Package::parse(bytes);
        let claimed = parsed.as_ref().ok().and_then(|p| p.manifest().ok()).map(|m| m.id.to_string());
        let outcome = parsed.and_then(|p| p.verify(self)).map_err(HomeError::from).and_then(|v| self.store(&v, bytes));
        let installed = self.audit_install(claimed.as_deref().unwrap_or("(unreadable package)"), outcome)?;
        self.publish_install(&installed, bytes)?;
        Ok(installed)
    }

    /// Installs a package verified by the caller from `bytes` (checked to
    /// be the same package by digest, which is cheaper than verifying
    /// the signature again).
    pub fn install_verified(&self, verified: &VerifiedPackage, bytes: &[u8]) -> Result<InstalledSkill, HomeError> {
        let id = verified.manifest().id.to_string();
        let same = match Package::parse(bytes) {
            Ok(p) if p.digest() == verified.digest() => Ok(()),
            _ => Err(HomeError::NotTheVerifiedPackage(id.clone())),
        };
        let outcome = same.and_then(|()| self.store(verified, bytes));
        let installed = self.audit_install(&id, outcome)?;
        self.publish_install(&installed, bytes)?;
        Ok(installed)
    }

    /// On a cluster node, hands what was just installed here to every node.
    fn publish_install(&self, installed: &InstalledSkill, bytes: &[u8]) -> Result<(), HomeError> {
        if let Some(shared) = self.shared_skills() {
            let change = SkillChange::Install { id: installed.id.clone(), digest: installed.digest };
            shared.publish_skill(&change, Some(bytes))?;
        }
        Ok(())
    }

    /// From now on, skills installed or removed here are installed or
    /// removed on every node of the cluster `shared`, and
    /// [`Home::sync_skills`] applies the other nodes' changes here.
    pub fn share_skills(&self, shared: Arc<dyn SharedSkills>) {
        *self.shared_skills.write().unwrap_or_else(|p| p.into_inner()) = Some(shared);
    }

    /// Whether installed skills are the cluster's (see [`Home::share_skills`]).
    pub fn shares_skills(&self) -> bool {
        self.shared_skills().is_some()
    }

    fn shared_skills(&self) -> Option<Arc<dyn SharedSkills>> {
        self.shared_skills.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies the skills installed and removed on other nodes since the
    /// last call: each package is installed here only if it verifies
    /// against this node's trust store (every install and refusal audited,
    /// as `skill.install` from the cluster). Returns how many skills
    /// changed here; 0 outside a cluster.
    pub fn sync_skills(&self) -> Result<usize, HomeError> {
        let Some(shared) = self.shared_skills() else { return Ok(0) };
        let position = format!("skills {}", self.audit.store_name());
        let mut applied = 0;
        loop {
            let after = self.sync_position(&position)?;
            let changes = shared.skill_changes(after, 500)?;
            let Some(last) = changes.last().map(|(seq, _)| *seq) else { return Ok(applied) };
            // Only the newest change of each skill matters.
            let mut newest = std::collections::BTreeMap::new();
            for (_, change) in changes {
                let id = match &change {
                    SkillChange::Install { id, .. } | SkillChange::Remove { id } => id.clone(),
                };
                newest.insert(id, change);
            }
            for (id, change) in newest {
                let here = self.info(&id).ok().map(|s| s.digest);
                match change {
                    SkillChange::Install { digest, .. } if here != Some(digest) => {
                        applied += usize::from(self.install_from_cluster(&*shared, &id, digest)?);
                    }
                    SkillChange::Remove { .. } if here.is_some() => {
                        let outcome = self.remove_unaudited(&id);
                        self.audited("skill.remove", ("skill", &id), outcome, |s| {
                            (
                                format!("version {}, removed on another node of the cluster", s.version),
                                serde_json::Value::Null,
                            )
                        })?;
                        applied += 1;
                    }
                    _ => {}
                }
            }
            self.set_sync_position(&position, last)?;
        }
    }

    /// Installs skill `id` as the cluster's package `digest`, if it
    /// verifies against this node's trust (a refusal is audited and the
    /// skill left as it is here). Whether it was installed.
    fn install_from_cluster(&self, shared: &dyn SharedSkills, id: &str, digest: Digest) -> Result<bool, HomeError> {
        let Some(bytes) = shared.package(&digest)? else {
            tracing::warn!(skill = id, %digest, "a skill of the cluster has no package in its database: skipped");
            return Ok(false);
        };
        let installed_version = self.info(id).ok().map(|s| s.version);
        let outcome = Package::parse(&bytes).map_err(HomeError::from).and_then(|p| {
            let verified = p.verify(self)?;
            if verified.digest() != digest || verified.manifest().id.to_string() != id {
                return Err(HomeError::NotTheVerifiedPackage(id.to_owned()));
            }
            // An older signed package replayed into the database is not a
            // way to downgrade this node.
            if let Some(have) = installed_version.filter(|v| *v > verified.manifest().version) {
                let offered = verified.manifest().version.clone();
                return Err(HomeError::ClusterDowngrade { id: id.to_owned(), have, offered });
            }
            self.store(&verified, &bytes)
        });
        let refused = outcome.as_ref().err().map(ToString::to_string);
        let installed = self.audited("skill.install", ("skill", id), outcome, |s| {
            (
                format!("version {} signed by {}, installed on another node of the cluster", s.version, s.signer),
                serde_json::json!({ "digest": s.digest, "signer": s.signer, "version": s.version, "from": "cluster" }),
            )
        });
        match installed {
            Ok(_) => Ok(true),
            // Refused: this node does not take it (audited above).
            Err(
                HomeError::Package(_)
                | HomeError::NotTheVerifiedPackage(_)
                | HomeError::ClusterDowngrade { .. }
                | HomeError::Key(_),
            ) => {
                tracing::warn!(
                    skill = id,
                    reason = refused.as_deref().unwrap_or(""),
                    "a skill of the cluster was refused here"
                );
                Ok(false)
            }
            // Anything else (the disk, the database) is tried again next time.
            Err(e) => Err(e),
        }
    }

    fn audit_install(&self, id: &str, outcome: Result<InstalledSkill, HomeError>) -> Result<InstalledSkill, HomeError> {
        self.audited("skill.install", ("skill", id), outcome, |s| {
            (
                format!("version {} signed by {}", s.version, s.signer),
                serde_json::json!({ "digest": s.digest, "signer": s.signer, "version": s.version }),
            )
        })
    }

    /// Writes the package file (always: reinstalling repairs a file that
    /// was replaced or truncated) and records it as installed.
    fn store(&self, verified: &VerifiedPackage, bytes: &[u8]) -> Result<InstalledSkill, HomeError> {
        let path = self.package_path(&verified.digest());
        coderclaw_core::fsutil::write_durably_with_mode(&path, bytes, 0o600)
            .map_err(|source| HomeError::Io { path: path.clone(), source })?;
        let m = verified.manifest();
        let record = InstalledSkill {
            id: m.id.to_string(),
            version: m.version.clone(),
            digest: verified.digest(),
            component_digest: verified.component_digest(),
            signer: verified.signer().clone(),
            installed_at: now(),
            manifest: m.clone(),
        };
        let manifest_json = serde_json::to_string(&record.manifest).expect("manifests serialise");
        self.with_db(|db| {
            db.execute(
                "INSERT INTO installed_skills (id, version, digest, component_digest, signer, installed_at, manifest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(id) DO UPDATE SET version = ?2, digest = ?3, component_digest = ?4, signer = ?5,
                     installed_at = ?6, manifest = ?7",
                params![
                    record.id,
                    record.version.to_string(),
                    record.digest.to_hex(),
                    record.component_digest.to_hex(),
                    record.signer.to_string(),
                    record.installed_at as i64,
                    manifest_json
                ],
            )
        })?;
        Ok(record)
    }

    fn package_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("packages").join(format!("{}.ccpkg", digest.to_hex()))
    }

    /// A number that changes whenever the trust store or the installed
    /// skills change, by this process or any other: what a client that
    /// lists the installed skills watches to know when to list them again.
    pub fn generation(&self) -> Result<i64, HomeError> {
        self.with_db(|db| crate::sqlite::generation(db))
    }

    /// Every installed skill, by id.
    pub fn installed(&self) -> Result<Vec<InstalledSkill>, HomeError> {
        self.query_installed(None)
    }

    /// Installed skills, all of them or the one with `id`.
    fn query_installed(&self, id: Option<&str>) -> Result<Vec<InstalledSkill>, HomeError> {
        self.with_db(|db| {
            let mut stmt = db.prepare(
                "SELECT id, version, digest, component_digest, signer, installed_at, manifest
                 FROM installed_skills WHERE ?1 IS NULL OR id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([id], |r| {
                let manifest: String = r.get(6)?;
                let bad = |column: usize, message: String| {
                    let e: Box<dyn std::error::Error + Send + Sync> = message.into();
                    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e)
                };
                let digest = |column: usize| -> rusqlite::Result<Digest> {
                    let hex: String = r.get(column)?;
                    Digest::from_hex(&hex).ok_or_else(|| bad(column, format!("`{hex}` is not a SHA-256 digest")))
                };
                let version: String = r.get(1)?;
                let signer: String = r.get(4)?;
                Ok(InstalledSkill {
                    id: r.get(0)?,
                    version: semver::Version::parse(&version).map_err(|e| bad(1, e.to_string()))?,
                    digest: digest(2)?,
                    component_digest: digest(3)?,
                    signer: KeyId::parse(&signer).map_err(|e| bad(4, e.to_string()))?,
                    installed_at: r.get::<_, i64>(5)? as u64,
                    manifest: serde_json::from_str(&manifest).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
                    })?,
                })
            })?;
            rows.collect()
        })
    }

    /// The installed skill `id`.
    pub fn info(&self, id: &str) -> Result<InstalledSkill, HomeError> {
        self.query_installed(Some(id))?.pop().ok_or_else(|| HomeError::NotInstalled(id.to_owned()))
    }

    /// Uninstalls `id` and deletes its stored package. No other id can share
    /// the file: the package digest covers the manifest, which names the id.
    pub fn remove(&self, id: &str) -> Result<InstalledSkill, HomeError> {
        let outcome = self.remove_unaudited(id);
        let removed = self.audited("skill.remove", ("skill", id), outcome, |s| {
            (format!("version {}", s.version), serde_json::Value::Null)
        })?;
        if let Some(shared) = self.shared_skills() {
            shared.publish_skill(&SkillChange::Remove { id: id.to_owned() }, None)?;
        }
        Ok(removed)
    }

    fn remove_unaudited(&self, id: &str) -> Result<InstalledSkill, HomeError> {
        let skill = self.info(id)?;
        self.with_db(|db| db.execute("DELETE FROM installed_skills WHERE id = ?1", params![id]))?;
        let _ = fs::remove_file(self.package_path(&skill.digest));
        Ok(skill)
    }

    /// The installed package of `id`, verified against the trust store as
    /// it is now: a revocation, a trust change, a reinstall or a removal
    /// since the last verification (by this process or another) is seen at
    /// once, and so is a package file replaced on disk. Otherwise the
    /// package verified last time is returned without reading anything but
    /// the state's generation and the file's metadata. Each verification
    /// (and each refusal) is audited.
    pub fn load_installed(&self, id: &str) -> Result<Arc<VerifiedPackage>, HomeError> {
        let (cached, generation) = self.cached(id)?;
        if let Some(package) = cached {
            return Ok(package);
        }
        let outcome = self.load_installed_unaudited(id);
        let (file, package) = self.audited("skill.verify", ("skill", id), outcome, |(_, p)| {
            (
                format!("signature valid, signer {} trusted", p.signer()),
                serde_json::json!({ "digest": p.digest().to_hex() }),
            )
        })?;
        let package = Arc::new(package);
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        // Kept only if nothing changed while it was being verified.
        if cache.generation == generation {
            if cache.packages.len() >= MAX_VERIFIED_CACHED {
                cache.packages.clear();
            }
            cache.packages.insert(id.to_owned(), (file, package.clone()));
        }
        Ok(package)
    }

    /// [`Home::load_installed`] when it needs neither to read the package
    /// nor to verify it (nothing changed since the last verification): the
    /// same checks, one generation query and one `stat`, so it does not
    /// block. `None` when it would have to verify: call `load_installed`.
    pub fn cached_installed(&self, id: &str) -> Result<Option<Arc<VerifiedPackage>>, HomeError> {
        Ok(self.cached(id)?.0)
    }

    /// The package verified last time if it still holds, and the
    /// generation it was checked against.
    fn cached(&self, id: &str) -> Result<(Option<Arc<VerifiedPackage>>, i64), HomeError> {
        let generation = self.with_db(|db| crate::sqlite::generation(db))?;
        let cached = {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache.generation != generation {
                *cache = VerifiedCache { generation, packages: Default::default() };
            }
            cache.packages.get(id).map(|(file, package)| (*file, package.clone()))
        };
        let holds = cached.filter(|(file, package)| {
            fs::metadata(self.package_path(&package.digest())).is_ok_and(|m| FileIdentity::of(&m) == *file)
        });
        Ok((holds.map(|(_, package)| package), generation))
    }

    fn load_installed_unaudited(&self, id: &str) -> Result<(FileIdentity, VerifiedPackage), HomeError> {
        let read = tracing::debug_span!("skill.read").entered();
        let skill = self.info(id)?;
        let path = self.package_path(&skill.digest);
        let io = |source| HomeError::Io { path: path.clone(), source };
        let mut file = fs::File::open(&path).map_err(io)?;
        let identity = FileIdentity::of(&file.metadata().map_err(io)?);
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io)?;
        drop(read);
        let verified = tracing::debug_span!("skill.verify").in_scope(|| Package::parse(&bytes)?.verify(self))?;
        // A validly signed but different package (another skill, an older
        // version) swapped into the file is not what was installed.
        if verified.digest() != skill.digest || verified.manifest().id.as_str() != id {
            return Err(HomeError::StoredPackageMismatch {
                id: id.to_owned(),
                found: format!("{} {}", verified.manifest().id, verified.manifest().version),
            });
        }
        Ok((identity, verified))
    }
}

/// The local OS user, for attributing local actions until sessions exist.
pub(crate) fn local_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid:{}", nix::unistd::geteuid().as_raw()))
}

impl KeyLookup for Home {
    fn lookup(&self, id: &KeyId) -> Option<TrustedKey> {
        let entry = self.trust_entry(id).ok().flatten()?;
        Some(TrustedKey {
            key: PublicKey::parse(&entry.public_key).ok()?,
            namespaces: entry.namespaces,
            revoked: entry.revoked_at.is_some(),
        })
    }
}
