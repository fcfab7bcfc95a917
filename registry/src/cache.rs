//! The client's registry cache in the state directory: downloaded package
//! files (for offline installs), the newest metadata seen per package and
//! the newest organisation policy seen per namespace (so neither can be
//! rolled back by a registry or a stale mirror).
//!
//! ```text
//! <state>/registry/blobs/<sha256>.ccpkg
//! <state>/registry/index/<registry>/<namespace>/<name>.json
//! <state>/policy/org/<registry>/<namespace>.json     (state, not cache)
//! ```
//!
//! An accepted organisation policy is state: it lives beside the other
//! policies, not in the download cache, so clearing the cache does not lift
//! it (and the security layer remembers that it was seen, so its absence
//! stops the host until the registry restores it). Policies accepted by
//! older versions under `<state>/registry/policies/` are still read.
//!
//! `<registry>` is the configured name, or `url-` and a hash of the URL.

use crate::api::PackageInfo;
use coderclaw_core::Digest;
use coderclaw_core::signed_policy::SignedOrgPolicy;
use std::path::{Path, PathBuf};

/// Why the cache refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The registry answered with something older than this client has seen.
    #[error(
        "{what} from registry {registry} is older than what this client has seen (serial {got} < {seen}): the registry was rolled back or a stale copy answered; nothing was changed (if the registry was restored from a backup on purpose, delete {record} to accept it)"
    )]
    Rollback {
        /// What it was about.
        what: String,
        /// The registry.
        registry: String,
        /// Seen before.
        seen: u64,
        /// Received now.
        got: u64,
        /// The record of what was seen.
        record: PathBuf,
    },
    /// The registry's index contradicts what it said before about a version.
    #[error(
        "registry {registry} now lists {id} {version} {change}: published versions never change or disappear, so this index is refused (if the registry was rebuilt on purpose, delete {record} to accept it)"
    )]
    Rewritten {
        /// The registry.
        registry: String,
        /// The package.
        id: String,
        /// The version.
        version: String,
        /// What changed.
        change: &'static str,
        /// The record of what was seen.
        record: PathBuf,
    },
    /// A cached file does not parse.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The cache under `<state>/registry`.
pub struct ClientCache {
    root: PathBuf,
    policies: PathBuf,
}

/// The cache directory name for a registry given by name or URL.
pub fn registry_key(name_or_url: &str) -> String {
    if name_or_url.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') && !name_or_url.is_empty() {
        name_or_url.to_owned()
    } else {
        format!("url-{}", &Digest::of(name_or_url.as_bytes()).to_hex()[..16])
    }
}

impl ClientCache {
    /// The cache of the state directory `state`.
    pub fn new(state: &Path) -> Self {
        Self { root: state.join("registry"), policies: state.join("policy").join("org") }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
        move |source| CacheError::Io { path: path.into(), source }
    }

    fn write(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
        coderclaw_core::fsutil::write_durably(path, bytes).map_err(Self::io(path))
    }

    fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, CacheError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| CacheError::Corrupt { path: path.into(), message: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::Io { path: path.into(), source: e }),
        }
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{sha256}.ccpkg"))
    }

    /// The cached package file with this SHA-256, if present and intact.
    pub fn blob(&self, sha256: &str) -> Option<Vec<u8>> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let bytes = std::fs::read(self.blob_path(sha256)).ok()?;
        (Digest::of(&bytes).to_hex() == sha256).then_some(bytes)
    }

    /// Stores a package file under its SHA-256.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String, CacheError> {
        let sha = Digest::of(bytes).to_hex();
        Self::write(&self.blob_path(&sha), bytes)?;
        Ok(sha)
    }

    fn index_path(&self, registry: &str, id: &str) -> PathBuf {
        let (ns, name) = id.split_once('/').unwrap_or(("_", id));
        self.root.join("index").join(registry_key(registry)).join(ns).join(format!("{name}.json"))
    }

    /// The newest metadata of `id` seen from `registry`.
    pub fn metadata(&self, registry: &str, id: &str) -> Result<Option<PackageInfo>, CacheError> {
        Self::read_json(&self.index_path(registry, id))
    }

    /// Records `info` as seen, unless it is older than what was seen or
    /// drops or changes a version seen before (yanking is the only change a
    /// version may have). A cached copy that does not parse is replaced (it
    /// proves nothing); one that cannot be read is an error.
    pub fn accept_metadata(&self, registry: &str, info: &PackageInfo) -> Result<(), CacheError> {
        let record = self.index_path(registry, &info.id);
        if let Some(seen) = Self::seen::<PackageInfo>(&record)? {
            let what = || format!("the metadata of {}", info.id);
            Self::no_rollback(what, registry, seen.serial, info.serial, &record)?;
            for old in &seen.versions {
                let change = match info.exact(&old.version) {
                    None => "missing",
                    Some(new) if new.sha256 != old.sha256 || new.digest != old.digest => "with other bytes",
                    Some(new) if old.yanked && !new.yanked => "as not yanked any more",
                    Some(_) => continue,
                };
                return Err(CacheError::Rewritten {
                    registry: registry.to_owned(),
                    id: info.id.clone(),
                    version: old.version.to_string(),
                    change,
                    record,
                });
            }
        }
        Self::write(&record, &serde_json::to_vec_pretty(info).unwrap_or_default())
    }

    fn policy_path(&self, registry: &str, namespace: &str) -> PathBuf {
        self.policies.join(registry_key(registry)).join(format!("{namespace}.json"))
    }

    fn legacy_policy_path(&self, registry: &str, namespace: &str) -> PathBuf {
        self.root.join("policies").join(registry_key(registry)).join(format!("{namespace}.json"))
    }

    /// The files [`ClientCache::policy`] reads for `namespace` from
    /// `registry`: a change to either is a change of the policy in force.
    pub fn policy_files(&self, registry: &str, namespace: &str) -> [PathBuf; 2] {
        [self.policy_path(registry, namespace), self.legacy_policy_path(registry, namespace)]
    }

    /// The newest organisation policy of `namespace` seen from `registry`.
    pub fn policy(&self, registry: &str, namespace: &str) -> Result<Option<SignedOrgPolicy>, CacheError> {
        match Self::read_json(&self.policy_path(registry, namespace))? {
            Some(doc) => Ok(Some(doc)),
            None => Self::read_json(&self.legacy_policy_path(registry, namespace)),
        }
    }

    /// Records a verified policy as the one in force, unless it is older
    /// than the one seen. A cached copy that does not parse is replaced.
    pub fn accept_policy(&self, registry: &str, doc: &SignedOrgPolicy) -> Result<(), CacheError> {
        let record = self.policy_path(registry, &doc.namespace);
        let legacy = self.legacy_policy_path(registry, &doc.namespace);
        let seen = match Self::seen::<SignedOrgPolicy>(&record)? {
            Some(s) => Some(s),
            None => Self::seen::<SignedOrgPolicy>(&legacy)?,
        };
        if let Some(seen) = seen {
            let what = || format!("the organisation policy of `{}`", doc.namespace);
            Self::no_rollback(what, registry, seen.serial, doc.serial, &record)?;
        }
        Self::write(&record, &serde_json::to_vec_pretty(doc).unwrap_or_default())
    }

    /// What `record` holds; one that does not parse proves nothing and
    /// counts as none (one that cannot be read is an error).
    fn seen<T: serde::de::DeserializeOwned>(record: &Path) -> Result<Option<T>, CacheError> {
        match Self::read_json(record) {
            Err(CacheError::Corrupt { .. }) => Ok(None),
            other => other,
        }
    }

    fn no_rollback(
        what: impl FnOnce() -> String,
        registry: &str,
        seen: u64,
        got: u64,
        record: &Path,
    ) -> Result<(), CacheError> {
        if seen <= got {
            return Ok(());
        }
        Err(CacheError::Rollback { what: what(), registry: registry.to_owned(), seen, got, record: record.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coderclaw_core::keys::SecretKey;
    use coderclaw_core::manifest::Kind;
    use coderclaw_core::policy::OrgPolicy;

    #[test]
    fn older_metadata_and_policies_are_refused_newer_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ClientCache::new(dir.path());
        let info = |serial| PackageInfo { id: "team/x".into(), kind: Kind::Skill, serial, versions: vec![] };
        cache.accept_metadata("team-registry", &info(5)).unwrap();
        cache.accept_metadata("team-registry", &info(5)).unwrap();
        let e = cache.accept_metadata("team-registry", &info(4)).unwrap_err();
        assert!(matches!(e, CacheError::Rollback { seen: 5, got: 4, .. }), "{e}");
        assert_eq!(cache.metadata("team-registry", "team/x").unwrap().unwrap().serial, 5);
        // Another registry has its own history.
        cache.accept_metadata("http://other:7421", &info(1)).unwrap();

        // A version seen before may be yanked, never dropped or changed.
        let manifest = coderclaw_core::manifest::Manifest::from_toml(
            "id = \"team/x\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"d\"\n",
            "m",
        )
        .unwrap();
        let v = |sha: &str, yanked| crate::api::VersionInfo {
            version: "1.0.0".parse().unwrap(),
            digest: "d".into(),
            sha256: sha.into(),
            size: 1,
            signer: "k".into(),
            published_at: 0,
            yanked,
            yank_reason: None,
            manifest: manifest.clone(),
        };
        let with = |serial, versions| PackageInfo { id: "team/x".into(), kind: Kind::Skill, serial, versions };
        cache.accept_metadata("team-registry", &with(6, vec![v("a", false)])).unwrap();
        cache.accept_metadata("team-registry", &with(7, vec![v("a", true)])).unwrap();
        for (serial, versions) in [(8, vec![]), (8, vec![v("b", true)]), (8, vec![v("a", false)])] {
            let e = cache.accept_metadata("team-registry", &with(serial, versions)).unwrap_err();
            assert!(matches!(e, CacheError::Rewritten { .. }), "{e}");
        }

        let key = SecretKey::from_seed([1; 32]);
        let doc = |serial| SignedOrgPolicy::sign("team", serial, 0, OrgPolicy::default(), &key);
        cache.accept_policy("team-registry", &doc(3)).unwrap();
        assert!(matches!(cache.accept_policy("team-registry", &doc(2)), Err(CacheError::Rollback { .. })));
        assert_eq!(cache.policy("team-registry", "team").unwrap().unwrap().serial, 3);
    }

    #[test]
    fn blobs_are_returned_only_intact() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ClientCache::new(dir.path());
        let sha = cache.put_blob(b"package bytes").unwrap();
        assert_eq!(cache.blob(&sha).unwrap(), b"package bytes");
        std::fs::write(dir.path().join("registry/blobs").join(format!("{sha}.ccpkg")), b"other bytes").unwrap();
        assert!(cache.blob(&sha).is_none(), "a corrupted cached file is not used");
        assert_eq!(registry_key("team-registry"), "team-registry");
        assert!(registry_key("http://h:1/x").starts_with("url-"));
    }
}
